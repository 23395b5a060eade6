"""Robustness evaluation: success of a policy checkpoint under distractors, physics and visual shifts.

``python -m robopretrain.evaluate checkpoint=<ckpt or run folder>`` (Hydra, ``configs/evaluate.yaml``), or
:func:`evaluate_robustness` from Python. Any agent checkpoint of stage 2, stage 3 or the pipeline is accepted: the
agent is rebuilt from the folder alone (:func:`robopretrain.checkpoint.load_agent`) and its env renders exactly its
cameras at their size (:func:`robopretrain.evaluation.agent_env`); episodes run the deterministic policy on the
``target`` (default: the checkpoint's own target, else the task its stage-2 run adapted to or first evaluated; a stage-2 run on another env's data:
the evaluation target of that name, or its only one, :func:`default_target`). Targets outside sim_envs (Meta-World,
any gymnasium env) have no randomization or distractors: only ``select=[nominal]`` runs there, other factors are
refused with one line; a ``gap`` whose sides are the env's constructor arguments (``{env_kwargs: {...}}``) runs its
two conditions there too.

* Conditions: ``nominal`` (no randomization, no distractors), then every factor of ``cfg.factors`` at each of
  its levels: integer levels place exactly that many distractors; ``train`` / ``eval_easy`` / ``eval_hard``
  draw the factor from the training range or from the held-out evaluation ranges of
  :mod:`sim_envs.randomization` (disjoint from training); ``all`` shifts every factor at once.
* Episode ``i`` of every condition is reset with seed ``eval_seed + i``, so conditions share their initial
  states and two runs of the same checkpoint give identical numbers, whatever the number of workers.
* Per condition: success rate, its confidence interval (``bootstrap.confidence``; ``bootstrap.method``: ``wilson``,
  the Wilson score interval of a binomial proportion, by default, or ``percentile``, a bootstrap over episodes with a
  fixed resampling seed, which collapses to a point at 0/n and n/n), the drop relative to nominal, mean return and
  length, the randomization and the env's constructor arguments (``env_kwargs``: the target's own with a gap
  side's merged over them).
* Output folder (``output_dir`` or the Hydra run folder): ``eval_info.json`` (per episode and aggregated),
  ``success_per_factor.png`` and ``videos/<factor>.mp4`` (the factor's last level, episode 0, agentview).
  A run on a folder that holds an earlier evaluation's results removes the files that evaluation's
  ``eval_info.json`` lists (and the record itself) once its own episodes are done, before writing its own, so no
  plot or video of another run stays beside the new record and a run stopped during its episodes leaves the
  earlier results whole; ``eval_info.json`` is written before the videos and again after each, so a run stopped
  while filming keeps its episodes' results.
* ``gap=<name>`` (``configs/gap/``, :mod:`finetune.transfer.gap`) adds the conditions ``gap/source`` and
  ``gap/target``: the settings a stage-3 run with that gap trained in and is judged in (``select=[nominal]`` runs
  only those beside nominal).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import multiprocessing.util
import math
import numbers
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from robopretrain.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_agent,
    load_checkpoint_at,
    recorded_file,
)
from robopretrain.build import warn_dt_sparse_target, warn_target_return
from robopretrain.cli import CONFIG_DIR, RERUN_STARTS_OVER, config_folder, friendly_errors, run_hydra
from robopretrain.config_checks import (AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT_OPEN, check_section,
                                        check_top_level_keys, one_name_as_list, resolve_device)
from robopretrain.envs.target import (GYM, Target, as_target, said_once, slot_note, split_env_kwargs,
                                      warn_unmapped_renames, with_task_slot)
from robopretrain.files import atomic_file, run_folder_lock, write_text_atomic
from robopretrain.workers import process_map

log = logging.getLogger(__name__)

NOMINAL = "nominal"
GAP = "gap"  # the factor name of a gap's source and target conditions (``gap=<name>``)
LEVEL_NAMES = ("train", "eval_easy", "eval_hard")
PARKED_BELOW_Z = -0.3  # unused distractor slots are parked under the table (sim_envs.scene.PARK_POS)


@dataclass(frozen=True)
class Condition:
    """One (factor, level) setting: the env's ``randomization`` argument for it."""

    factor: str
    level: str
    randomization: Any

    @property
    def key(self) -> str:
        return f"{self.factor}/{self.level}"


# --------------------------------------------------------------------------- conditions


def build_conditions(cfg: DictConfig) -> list[Condition]:
    """Nominal first, then each selected factor at each of its levels; errors name the bad key."""
    factors = OmegaConf.to_container(cfg.factors, resolve=True)
    selected = list(cfg.select) if cfg.get("select") is not None else list(factors)  # []: nominal only
    unknown = [name for name in selected if name not in factors and name != NOMINAL]
    if unknown:
        raise ValueError(f"evaluate config: select={selected} names unknown factor(s) {unknown}; "
                         f"expected some of {[NOMINAL, *factors]}")
    twice = sorted({name for name in selected if selected.count(name) > 1})
    if twice:  # each was run twice, its records doubled under one row's episode count
        raise ValueError(f"evaluate config: select={selected} names {', '.join(twice)} more than once; name each "
                         "factor once")
    for name, spec in factors.items():  # a misspelt key (+factors.friction.levles=[...]) ran the default levels
        extra = sorted(set(spec) - {"randomize", "levels"}) if isinstance(spec, Mapping) else []
        if extra:
            raise ValueError(f"evaluate config: factors.{name} has key(s) {extra} that no factor reads; expected "
                             "randomize and levels")
    out = [Condition(NOMINAL, "none", {"level": "none", "num_distractors": 0})]
    for name in selected:
        if name == NOMINAL:
            continue
        spec = factors[name]
        if not isinstance(spec, Mapping) or "randomize" not in spec or "levels" not in spec:
            raise ValueError(f"evaluate config: factors.{name} must be a mapping with keys 'randomize' and 'levels'")
        if not spec["levels"]:
            raise ValueError(f"evaluate config: factors.{name}.levels is empty; expected at least one level")
        levels = [spec["levels"]] if isinstance(spec["levels"], (str, int)) else list(spec["levels"])  # one level
        if len(set(map(str, levels))) < len(levels):
            raise ValueError(f"evaluate config: factors.{name}.levels={levels} names a level more than once; name "
                             "each level once")
        for level in levels:  # levels=eval_hard was read a letter at a time ('e' is no level)
            out.append(Condition(name, str(level), condition_randomization(name, list(spec["randomize"]), level)))
    return out + gap_conditions(cfg.get("gap"))


def gap_applies_to_any_env(node: Any) -> bool:
    """Whether a ``gap`` config sets only constructor arguments (``{env_kwargs: {...}}``), so any env can run it."""
    from finetune.transfer.gap import Gap

    gap = Gap.from_mapping(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
    return gap.enabled and gap.any_env


def gap_conditions(node: Any) -> list[Condition]:
    """``gap/source`` and ``gap/target`` of a ``gap`` config (:class:`finetune.transfer.gap.Gap`); none without one."""
    from finetune.transfer.gap import Gap

    gap = Gap.from_mapping(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
    if not gap.enabled:
        return []

    def as_mapping(value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            return {"level": value, "num_distractors": 0} if value == "none" else {"level": value}
        return dict(value)

    return [Condition(GAP, "source", as_mapping(gap.source)), Condition(GAP, "target", as_mapping(gap.target))]


def condition_randomization(name: str, randomize: Sequence[str], level: Any) -> dict[str, Any]:
    """The randomization dict of one level: an integer is a distractor count, a name a range level."""
    from sim_envs.randomization import FACTORS

    bad = [f for f in randomize if f not in FACTORS]
    if not randomize:  # the level's factors: none would run nominal episodes under the factor's name
        raise ValueError(f"evaluate config: factors.{name}.randomize is empty; expected some of {FACTORS}")
    if bad:
        raise ValueError(f"evaluate config: factors.{name}.randomize has unknown factor(s) {bad}; expected some of {FACTORS}")
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise ValueError(f"evaluate config: factors.{name}.levels has {level!r}; expected an int or one of {LEVEL_NAMES}")
    if isinstance(level, int) or str(level).isdigit():
        count = int(level)
        if randomize != ["distractors"]:
            raise ValueError(f"evaluate config: factors.{name}: integer level {count} is a distractor count; "
                             "only a factor with randomize: [distractors] takes integer levels")
        from sim_envs.scene import MAX_DISTRACTORS

        if not 0 <= count <= MAX_DISTRACTORS:
            raise ValueError(f"evaluate config: factors.{name}.levels has {count}; expected 0..{MAX_DISTRACTORS}")
        return {"level": "none", "num_distractors": count}
    if level not in LEVEL_NAMES:
        raise ValueError(f"evaluate config: factors.{name}.levels has {level!r}; expected an int or one of {LEVEL_NAMES}")
    return {"level": str(level), "factors": list(randomize)}


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class PolicySpec:
    """What a worker needs to rebuild the policy and its env: the checkpoint folder, the target, the device."""

    checkpoint: str
    target: dict[str, Any]
    device: str
    target_return: float | None = None  # a Decision Transformer's evaluation return (None: the checkpoint's)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``path`` (a ``ckpt_*`` folder, or a run folder holding ``checkpoints/``), without state."""
    ckpt = load_checkpoint_at(path, with_state=False)
    for key in ("algo", "obs_spec", "act_dim"):
        if key not in ckpt.meta:
            raise CheckpointError(f"{ckpt.path / 'meta.json'}: missing key {key!r}; expected an agent checkpoint "
                                  "written by robopretrain.train, finetune.train or the pipeline")
    return ckpt


def _task_file(ckpt: Checkpoint, name: str) -> str | None:
    """The stage-2 run's file holding its task ``name``: the ``data.mix`` file for a mix task (meta's ``mix_path``;
    older checkpoints did not record it), else the data file; under a moved run folder's new place when it moved
    with the run (:func:`robopretrain.checkpoint.recorded_file`)."""
    mixed = name in (ckpt.meta.get("mix_task_names") or [])
    return recorded_file(ckpt, "mix_path" if mixed else "data_path")


def _data_info(ckpt: Checkpoint, name: str) -> Any:
    """The :class:`~robopretrain.data.hdf5.DatasetInfo` of the stage-2 run's file holding task ``name``
    (:func:`_task_file`); None when the checkpoint names none or it cannot be read (moved, deleted)."""
    from robopretrain.data.hdf5 import DatasetError, read_info

    path = _task_file(ckpt, name)
    if not path:
        return None
    try:
        return read_info(path)
    except (DatasetError, OSError):
        return None


def _foreign_task(ckpt: Checkpoint, name: str) -> bool:
    """Whether the stage-2 task ``name`` comes from a data file whose ``env_args`` name another env family than
    sim_envs (robosuite's ``Lift`` is not our ``Lift``); False when the file cannot be read (moved, deleted)."""
    from robopretrain.envs.target import target_of_data

    info = _data_info(ckpt, name)
    return info is not None and name in info.tasks and target_of_data(info.env_args, name, int(info.tasks[name])) is None


def _data_target(ckpt: Checkpoint, name: str, slot: int | None) -> Target | None:
    """The target the stage-2 data file's ``env_args`` describe for its task ``name`` (a Meta-World file: the task,
    with the limit and reward its demos were recorded with), in the one-hot ``slot``; None when the file is gone,
    lacks the task or names no env family we can build."""
    from robopretrain.envs.target import target_of_data

    info = _data_info(ckpt, name)
    if info is None or name not in info.tasks:
        return None
    mix = name in (ckpt.meta.get("mix_task_names") or [])  # its file was read through data.mix.obs_map
    return target_of_data(info.env_args, name, int(info.tasks[name]) if slot is None else int(slot),
                          None if mix else ckpt.meta.get("obs_map"))


def trained_slots(ckpt: Checkpoint) -> dict[str, int]:
    """Task name -> slot of the task one-hot of every task ``ckpt`` was trained on (meta's ``task_ids``: a stage-2
    run's; a stage-3 run's holds stage 2's and its target's). Empty when the meta records none (stage-3 checkpoints
    written before it did)."""
    return {str(k): int(v) for k, v in dict(ckpt.meta.get("task_ids") or {}).items()}


def default_target(ckpt: Checkpoint) -> Target:
    """The checkpoint's own target (stage 3), else the task a stage-2 run adapted to (the first of its ``data.mix``
    tasks, PTR's target adaptation), else the first trained task the stage-2 run evaluated (``train.eval_targets`` in
    its order; by default the data's tasks by name), else its first trained task by name; in the slot of the task
    one-hot it was trained in (meta's ``task_ids``: a ``data.task_id`` override moves it). A task that is not a
    sim_envs task (or has a sim_envs task's name in a file of another env family) is the stage-2 run's evaluation
    target of that name (``train.eval_targets``, recorded in meta's
    ``eval_targets``), else its only evaluation target. Raises :class:`CheckpointError` when none fits."""
    if ckpt.meta.get("target"):
        return as_target(ckpt.meta["target"])
    trained = list(ckpt.meta.get("task_names") or [])
    evaluated_tasks = [str(t.get("name")) for t in ckpt.meta.get("eval_targets") or [] if t.get("name") in trained]
    names = ckpt.meta.get("mix_task_names") or evaluated_tasks or trained
    if not names:
        raise CheckpointError(f"{ckpt.path / 'meta.json'}: names no task; pass target=<name or mapping>")
    name = str(names[0])
    slot = dict(ckpt.meta.get("task_ids") or {}).get(name)
    evaluated = [dict(t) for t in ckpt.meta.get("eval_targets") or []]
    import sim_envs.tasks as tasks  # torch-free

    if name in tasks.TASKS and not _foreign_task(ckpt, name):
        named = [t for t in evaluated if t.get("name") == name]
        if named:  # as the run evaluated it: with the env keys its data's obs_map names (build.targets_of_data)
            target = as_target(named[0])
        else:
            renamed = {k: v for k, v in dict(ckpt.meta.get("obs_map") or {}).items() if k != v}
            mix = name in (ckpt.meta.get("mix_task_names") or [])
            target = dataclasses.replace(as_target(name), obs_map={} if mix else renamed)
    else:
        named = [t for t in evaluated if t.get("name") == name]
        # the run's only evaluation target stands in for a task of another name, never for another trained task
        # (an adaptation that evaluated prior task g1 only: its target g5 was evaluated as g1)
        only = [t for t in evaluated if t.get("name") not in trained_slots(ckpt)] if len(evaluated) == 1 else []
        from_data = _data_target(ckpt, name, slot) if not named and not only else None
        if from_data is not None:  # stage 2 evaluated nothing (eval_targets=[]); its data file names the env
            return from_data
        if not named and not only:
            if name.endswith(("-v1", "-v2", "-v3")):  # a Meta-World task whose data file is gone
                raise CheckpointError(
                    f"{ckpt.path / 'meta.json'}: its task {name!r} is not a sim_envs task and the run recorded no "
                    "evaluation target of it (train.eval_targets) and " + (
                        f"its data file {_task_file(ckpt, name)} cannot be read" if _task_file(ckpt, name) else
                        "it records no data file of it (a data.mix task of a run older than mix_path)") + "; for a Meta-World task pass "
                    f"'target={{name: {name}, family: metaworld, max_episode_steps: <the demos\' limit>"
                    f"{'' if slot is None else f', task_id: {slot}'}}}'")
            raise CheckpointError(
                f"{ckpt.path / 'meta.json'}: its task {name!r} is not a sim_envs task"
                f"{' (a file of another env family uses its name)' if name in tasks.TASKS else ''} and the run "
                "recorded "
                f"{len(evaluated)} evaluation targets (train.eval_targets), none named so; pass target=<mapping>, e.g. "
                f"'target={{name: {name}, env_id: MyEnv-v0, task_id: {0 if slot is None else slot}}}' (task_id: its "
                "slot in the agent's task one-hot" + (f", where {name!r} was trained" if slot is not None else
                                                      "; 0 without one") + ")")
        target = as_target((named or only)[0])  # as the run evaluated it, in the slot the task was trained in
        if named and slot is not None and target.task_id is not None and int(target.task_id) != int(slot):
            log.warning("the run evaluated %r with task_id %d, but trained it in slot %d: evaluated in slot %d",
                        name, int(target.task_id), int(slot), int(slot))
            return dataclasses.replace(target, task_id=int(slot))
        return target
    return target if slot is None else dataclasses.replace(target, task_id=int(slot))


def _evaluated_as(ckpt: Checkpoint, target: Target) -> Target | None:
    """The stage-2 run's evaluation target of ``target``'s name and env family (meta's ``eval_targets``), or None."""
    for recorded in ckpt.meta.get("eval_targets") or []:
        if dict(recorded).get("name") != target.name:
            continue
        try:
            own = as_target(dict(recorded))
        except (ValueError, TypeError):
            continue
        if own.family == target.family:
            return own
    return None


def limit_change_note(target: Target, ckpt: Checkpoint, env_limit: int | None = None) -> str | None:
    """A warning when a ``target=`` given for the checkpoint's own task (same name and env family: its
    :func:`default_target`, or any task its stage-2 run evaluated) runs episodes under another time limit than the
    run's, e.g. Meta-World's 500 steps for a policy trained and
    evaluated under 120: its success is then not comparable with the run's evaluations. ``env_limit``: the limit the
    given target's env enforces (:func:`robopretrain.envs.target.env_time_limit`, what
    :func:`robopretrain.build.check_env_fits` returns); without it the configs' limits are compared. A side whose
    config sets none runs to its env's own limit, read from the env. None otherwise."""
    from robopretrain.envs.target import episode_limit

    try:
        own = default_target(ckpt)
    except (CheckpointError, ValueError, TypeError):  # no target of its own, or one that no longer parses: the
        own = None                                   # given target= is the way around it, not to be refused
    if own is None or (own.name, own.family) != (target.name, target.family):
        own = _evaluated_as(ckpt, target)  # another task the run trained and evaluated (its first was compared only)
        if own is None:
            return None
    if episode_limit(own) == episode_limit(target):  # the same setting (or none on both) of the same env
        return None
    given = env_limit if env_limit is not None else episode_limit(target)
    run = _own_env_limit(own)  # what the run's env enforced: its setting or the env's own limit, the tighter
    run = run if run is not None else episode_limit(own)
    if given == run:
        return None

    def said(limit: int | None, configured: int | None) -> str:
        return ("the env's own limit" if limit is None else f"{limit} steps" if configured is not None
                else f"the env's own limit ({limit} steps)")

    fix = (f"set target.max_episode_steps={episode_limit(own)}" if episode_limit(own) is not None
           else "leave max_episode_steps unset")
    return (f"target {target.name!r}: episodes run to {said(given, episode_limit(target))} here, the checkpoint's run "
            f"used {said(run, episode_limit(own))}; success is not comparable with its evaluations: {fix} to "
            "evaluate as it did")


def _own_env_limit(target: Target) -> int | None:
    """The time limit the env ``target`` builds enforces (:func:`robopretrain.envs.target.env_time_limit`); None when
    it cannot be built here."""
    from robopretrain.envs.target import env_time_limit, make_env

    try:
        env = make_env(target)
    except Exception:  # noqa: BLE001 (the checkpoint's env may not be importable here: the limit is then unknown)
        return None
    try:
        return env_time_limit(env)
    finally:
        env.close()


def load_policy(spec: PolicySpec, warn: bool = True) -> Any:
    """The agent of the checkpoint, its weights loaded, in eval mode, ready for ``act(obs, deterministic=True)``.
    ``warn=False``: without the target-return warning (said once, by the command's own load, not per worker)."""
    agent, ckpt = load_agent(spec.checkpoint, device=spec.device)
    agent.train_mode(False)
    if spec.target_return is not None:  # the return asked for, in the env's reward units (DT conditions on it)
        if agent.algo != "dt":
            raise ValueError(f"evaluate config: target_return={spec.target_return} conditions a Decision Transformer; "
                             f"{spec.checkpoint} is a {agent.algo} checkpoint (leave target_return null)")
        agent.algo_cfg.target_return = float(spec.target_return)
        seen = ckpt.meta.get("episode_returns")  # the training data's, recorded by stage 2 (older checkpoints: none)
        if seen and warn:
            warn_target_return(agent.algo_cfg, np.asarray(seen, dtype=np.float64), setting="target_return")
    return agent


def make_env(agent: Any, target: Target, randomization: Mapping[str, Any]) -> Any:
    """The evaluation env: the target's, rendering the agent's cameras at their size (and sim_envs' video cameras)."""
    from robopretrain.evaluation import agent_env

    return agent_env(agent, target, dict(randomization))


# --------------------------------------------------------------------------- episodes (run in workers)

_WORKER: dict[str, Any] = {}
CLOSE_TIMEOUT_S = 60  # how long the worker processes may take to close their envs and exit


def _init_worker(spec: PolicySpec, said: Mapping[str, Any] | None = None) -> None:
    """A worker's policy and env cache; ``said``: the parent's once-per-process env warnings (not repeated here)."""
    from robopretrain.cpu_settings import apply_cpu_settings
    from robopretrain.envs.target import remember_said

    remember_said(said)

    if mp.parent_process() is not None:  # a pool worker: Ctrl-C is the parent's to handle (it stops the pool)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    apply_cpu_settings(num_threads=1)
    _WORKER.clear()
    _WORKER.update(policy=load_policy(spec, warn=False), target=as_target(spec.target), envs={})
    if mp.parent_process() is not None:  # a pool worker: its envs are closed when it exits (after the last job)
        multiprocessing.util.Finalize(None, _close_worker_envs, exitpriority=10)


def _close_worker_envs() -> None:
    """Close every env this process built (a user's env may hold a robot connection or a simulator process)."""
    for env in _WORKER.get("envs", {}).values():
        try:
            env.close()
        except Exception as exc:  # one env failing to close does not keep the others open
            log.warning("closing the evaluation env failed: %s", exc)
    _WORKER.get("envs", {}).clear()


def _env_for(randomization: Mapping[str, Any]) -> Any:
    key = json.dumps(randomization, sort_keys=True)
    envs = _WORKER["envs"]
    if key not in envs:
        envs[key] = make_env(_WORKER["policy"], _WORKER["target"], randomization)
    return envs[key]


def placed_distractors(env: Any) -> int:
    """How many distractor bodies stand on the table (not parked below it) in ``env`` right now (0 off sim_envs)."""
    sim = env.unwrapped
    randomizer = getattr(sim, "randomizer", None)
    if randomizer is None:
        return 0
    z = [sim.data.qpos[adr + 2] for adr in randomizer.distractor_qpos]
    return int(sum(1 for v in z if v > PARKED_BELOW_Z))


def run_episode(job: tuple[int, dict[str, Any], int]) -> dict[str, Any]:
    """One deterministic episode of condition ``job[0]`` with reset seed ``job[2]``."""
    from robopretrain.evaluation import run_episodes

    index, randomization, seed = job
    env = _env_for(randomization)
    res = run_episodes(_WORKER["policy"], env, 1, eval_seed=seed)
    return {"condition": index, "seed": int(seed), "success": bool(res["success"]), "return": res["return"],
            "length": int(res["length"]), "num_distractors": placed_distractors(env)}


def run_all_episodes(spec: PolicySpec, conditions: Sequence[Condition], episodes: int, eval_seed: int,
                     workers: int, progress: bool) -> list[dict[str, Any]]:
    """Every episode of every condition, in a fixed order (condition, episode), serial or in a process pool."""
    import torch

    jobs = [(c, dict(cond.randomization), eval_seed + i) for c, cond in enumerate(conditions) for i in range(episodes)]
    bar = tqdm(total=len(jobs), desc=f"robustness {spec.target['name']}", unit="ep", dynamic_ncols=True,
               disable=not progress)
    results: list[dict[str, Any]] = []
    threads = torch.get_num_threads()  # in this process, the episodes run on one thread as a worker's do; the
    try:  # caller's count is given back after (it was left at 1)
        if workers <= 0:
            _init_worker(spec)
            for job in jobs:
                results.append(run_episode(job))
                bar.update(1)
        else:  # spawned: fresh interpreters, no forked MuJoCo/EGL or torch thread state; a dead worker is an error
            # the workers close their envs as they exit; one whose close() blocks (a robot that does not answer) is
            # terminated after CLOSE_TIMEOUT_S
            for res in process_map(run_episode, jobs, workers, what="the evaluation's worker processes",
                                   initializer=_init_worker, initargs=(spec, said_once()),
                                   close_timeout=CLOSE_TIMEOUT_S,
                                   chunksize=max(1, min(8, len(jobs) // (4 * workers) or 1))):
                results.append(res)
                bar.update(1)
    finally:
        bar.close()
        _close_worker_envs()
        _WORKER.clear()
        torch.set_num_threads(threads)
    for res, (c, _, seed) in zip(results, jobs):
        res["episode"] = seed - eval_seed
        res["factor"], res["level"] = conditions[c].factor, conditions[c].level
    return results


# --------------------------------------------------------------------------- statistics


def wilson_ci(successes: int, episodes: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a success rate ``successes / episodes`` (Wilson 1927; recommended over the normal and
    bootstrap intervals for small n by Brown, Cai & DasGupta 2001). Unlike a percentile bootstrap it does not collapse
    at 0/n or n/n (20/20 gives [0.84, 1]). Raises ValueError when ``episodes`` < 1, ``successes`` is outside
    [0, episodes] or either is not a whole number (a bool or 1.5 included), or ``confidence`` is not in (0, 1)."""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in (successes, episodes)):
        raise ValueError(f"wilson_ci: {successes!r} successes of {episodes!r} episodes; expected whole counts")
    if episodes < 1 or not 0 <= successes <= episodes:
        raise ValueError(f"wilson_ci: {successes} successes of {episodes} episodes")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, n = successes / episodes, float(episodes)
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the interval contains p exactly; clamped so rounding cannot leave 0/n or n/n outside it (2.8e-17 > 0 at 0/10)
    return min(p, max(0.0, center - half)), max(p, min(1.0, center + half))


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (fixed resampling seed: reproducible). Raises
    ValueError when ``values`` is empty, not 1-D or not finite, ``confidence`` is not in (0, 1) or ``resamples``
    < 1."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if x.ndim != 1 or not np.isfinite(x).all():
        raise ValueError(f"bootstrap_ci: values must be a 1-D sequence of finite numbers, got shape {x.shape}"
                         + ("" if x.ndim != 1 else f" with {int((~np.isfinite(x)).sum())} NaN / inf"))
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(int(resamples), x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    mean = float(x.mean())
    return float(min(lo, mean)), float(max(hi, mean))


def aggregate(conditions: Sequence[Condition], episodes: Sequence[Mapping[str, Any]],
              boot: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{factor: {level: stats}}`` with success, CI, drop vs nominal, mean return / length / distractors."""
    by_cond: dict[int, list[Mapping[str, Any]]] = {}
    for ep in episodes:
        by_cond.setdefault(int(ep["condition"]), []).append(ep)
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    nominal = None
    for c, cond in enumerate(conditions):
        eps = by_cond.get(c, [])
        succ = [float(e["success"]) for e in eps]
        if str(boot.get("method", "wilson")) == "wilson":
            lo, hi = wilson_ci(int(sum(s > 0 for s in succ)), len(succ), float(boot["confidence"]))
        else:
            lo, hi = bootstrap_ci(succ, int(boot["resamples"]), float(boot["confidence"]), int(boot["seed"]))
        row = {"success": float(np.mean(succ)), "ci_low": lo, "ci_high": hi, "episodes": len(eps),
               "mean_return": float(np.mean([e["return"] for e in eps])),
               "mean_length": float(np.mean([e["length"] for e in eps])),
               "mean_distractors": float(np.mean([e["num_distractors"] for e in eps])),
               "randomization": cond.randomization}
        if cond.factor == NOMINAL:
            nominal = row["success"]
        row["drop_vs_nominal"] = float(nominal - row["success"]) if nominal is not None else 0.0
        stats.setdefault(cond.factor, {})[cond.level] = row
    return stats


# --------------------------------------------------------------------------- plot and videos


def plot_success(stats: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path, title: str) -> Path:
    """One panel per factor: success per level (nominal first) with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nominal = stats[NOMINAL]["none"]
    factors = [f for f in stats if f != NOMINAL] or [NOMINAL]
    cols = min(3, len(factors))
    rows = (len(factors) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False, sharey=True)
    for ax, factor in zip(axes.flat, factors):
        levels = ["nominal"] + ([] if factor == NOMINAL else list(stats[factor]))
        rows_ = [nominal] + ([] if factor == NOMINAL else [stats[factor][lv] for lv in stats[factor]])
        y = np.array([r["success"] for r in rows_])
        err = np.clip([[r["success"] - r["ci_low"] for r in rows_], [r["ci_high"] - r["success"] for r in rows_]],
                      0.0, None)  # matplotlib refuses a negative error bar
        x = np.arange(len(levels))
        ax.bar(x, y, yerr=err, capsize=3, color=["0.6"] + ["tab:blue"] * (len(levels) - 1))
        ax.set_xticks(x, levels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(factor)
    for ax in list(axes.flat)[len(factors):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("success")
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path


def record_video(spec: PolicySpec, condition: Condition, seed: int, path: Path, size: int, max_frames: int,
                 fps: float) -> Path:
    """An mp4 of the deterministic policy in one episode of ``condition`` (at most ``max_frames``): sim_envs'
    agentview at ``size`` px (its own renderer of the same model and randomization); outside sim_envs the agent's
    first camera (or ``env.render()``) resized to ``size`` px high (:func:`robopretrain.evaluation.video_size_frame`:
    a 64 px camera is upscaled, no detail is added)."""
    from robopretrain.evaluation import video_frame
    from sim_envs.video_writer import write_mp4

    policy = load_policy(spec, warn=False)
    target = as_target(spec.target)
    env = make_env(policy, target, condition.randomization)
    sim = env.unwrapped
    renderer = None
    if target.randomizable:
        from sim_envs.rendering import CameraRenderer

        limit = int(sim.model.vis.global_.offwidth)
        if int(size) > limit:
            env.close()
            raise ValueError(f"evaluate config: video.size={size}; at most {limit} for this env")
        renderer = CameraRenderer(sim.model, int(size), int(size))

    def frame(obs: Mapping[str, Any]) -> np.ndarray:
        if renderer is not None:
            return renderer.render(sim.data, "agentview")
        return video_frame(env, obs, target, policy.spec.rgb_keys, size=int(size))

    try:
        obs, _ = env.reset(seed=seed)
        if hasattr(policy, "reset_episode"):  # a policy with a history (DT), as in evaluation.run_episodes
            policy.reset_episode(managed=True)
        frames = [frame(obs)]
        done = False
        while not done and len(frames) < max_frames:
            action = policy.act(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(np.asarray(action, dtype=np.float32))
            if hasattr(policy, "observe_reward"):
                policy.observe_reward(float(reward))
            frames.append(frame(obs))
            done = terminated or truncated
    finally:
        if renderer is not None:
            renderer.close()
        env.close()
    write_mp4(path, frames, fps=fps)
    return path


# --------------------------------------------------------------------------- entry points


def validate_config(cfg: DictConfig) -> None:
    """Range checks of the evaluate config; errors name the key and what was expected."""
    def fail(key: str, expected: str) -> None:
        raise ValueError(f"evaluate config: {key}={OmegaConf.select(cfg, key)!r}; expected {expected}")

    check_top_level_keys(cfg, "evaluate")
    one_name_as_list(cfg)
    resolve_device(cfg.device, "evaluate")
    check_section(cfg, None, {"episodes": AT_LEAST_1,
                              "workers": (AT_LEAST_0[0], "an integer >= 0 (0: run in this process)")}, "evaluate")
    if isinstance(cfg.eval_seed, bool) or not isinstance(cfg.eval_seed, int) or not (
            0 <= cfg.eval_seed and cfg.eval_seed + int(cfg.episodes) <= 2 ** 32):  # env seeds: numpy's [0, 2**32)
        fail("eval_seed", "an integer in [0, 2**32 - episodes] (episode i is reset with seed eval_seed + i)")
    if str(cfg.bootstrap.get("method", "wilson")) not in ("wilson", "percentile"):
        fail("bootstrap.method", "wilson or percentile")
    # each checked with its type and null refused: the interval is computed after every episode has run (a
    # bootstrap.seed of -1, abc or null failed only then, without naming the key: a new user's finding); the
    # resampling's settings only where it runs (wilson reads neither)
    checks = {"confidence": UNIT_OPEN}
    if str(cfg.bootstrap.get("method", "wilson")) == "percentile":
        checks.update(resamples=AT_LEAST_1, seed=AT_LEAST_0)
    for key, (ok, expected) in checks.items():
        if cfg.bootstrap.get(key) is None or not ok(cfg.bootstrap[key]):
            fail(f"bootstrap.{key}", expected)
    given = cfg.get("target_return")
    if given is not None and (isinstance(given, bool) or not isinstance(given, (int, float))
                              or not np.isfinite(float(given))):
        fail("target_return", "a finite number (a Decision Transformer's return to ask for) or null")
    if cfg.video.enabled:
        video_size = (lambda v: AT_LEAST_1[0](v) and 16 <= v <= 512, "an integer in [16, 512]")
        for key, (ok, expected) in {"size": video_size, "max_frames": AT_LEAST_1, "fps": POSITIVE}.items():
            if cfg.video.get(key) is None or not ok(cfg.video[key]):
                fail(f"video.{key}", expected)
    if OmegaConf.is_config(cfg.get("factors")):
        build_conditions(cfg)  # factors, levels and select named once each, before any env or checkpoint


def resolve_output_dir(cfg: DictConfig) -> Path:
    return config_folder(cfg, "output_dir", "evaluate")


def warn_training_seeds(eval_seed: int, episodes: int) -> bool:
    """Warn (and return True) when the episodes' reset seeds ``eval_seed .. eval_seed + episodes - 1`` leave the
    evaluation's range ``[1_000_000, 2_000_000)``, which no training episode uses
    (:func:`robopretrain.collector.episode_seed`): below it they are the starts stage 3's training episodes had
    (seed s, episode e: ``s * 100_000 + e``), so the evaluation may replay what the agent trained on."""
    from robopretrain.collector import EVAL_SEEDS_END, EVAL_SEEDS_START

    if EVAL_SEEDS_START <= eval_seed and eval_seed + episodes <= EVAL_SEEDS_END:
        return False
    log.warning("eval_seed=%d: episodes reset with seeds %d..%d, outside [%d, %d) where no training episode starts "
                "(stage 3's episode e of seed s starts at s * 100000 + e): the evaluation may replay training "
                "episodes; the default %d avoids them", eval_seed, eval_seed, eval_seed + episodes - 1,
                EVAL_SEEDS_START, EVAL_SEEDS_END, EVAL_SEEDS_START)
    return True


def evaluate_robustness(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Run the robustness evaluation ``cfg`` describes (see ``configs/evaluate.yaml``); returns eval_info."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    validate_config(cfg)  # first: an unknown or mistyped key is named before the missing checkpoint
    warn_training_seeds(int(cfg.eval_seed), int(cfg.episodes))
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise ValueError("evaluate config: checkpoint is not set; give checkpoint=<checkpoint or run folder>")
    ckpt = open_checkpoint(str(cfg.checkpoint))
    target = as_target(OmegaConf.to_container(cfg.target, resolve=True) if OmegaConf.is_config(cfg.get("target"))
                       else cfg.target) if cfg.get("target") else default_target(ckpt)
    if cfg.get("target") and not ckpt.meta.get("target"):  # a stage-3 checkpoint's agent read its own target's keys
        warn_unmapped_renames(ckpt.meta, target)
    num_tasks = int(ckpt.meta["obs_spec"].get("num_tasks") or 0)
    trained = trained_slots(ckpt)
    target = with_task_slot(target, trained, num_tasks)
    slot = target.resolved_task_id() if num_tasks else None
    if slot is not None and trained and slot not in trained.values():
        log.warning("target %r acts in slot %d of the task one-hot, which no task of this checkpoint was trained in "
                    "(its tasks' slots: %s): the agent's behaviour there is untrained; set the target's task_id",
                    target.name, slot, trained)
    elif slot is not None and (note := slot_note(target.name, slot, trained,
                                                 label_only=num_tasks == 1 and target.family == GYM)):
        log.warning(note)
    conditions = build_conditions(cfg)
    any_env_gap = gap_applies_to_any_env(cfg.get("gap"))  # its conditions set constructor arguments
    if not target.randomizable and cfg.get("select") is None:  # every factor of a target that has none (a gap
        conditions = [c for c in conditions if c.factor not in cfg.factors]  # asked for is still refused below)
        log.info("target %r (%s) has no randomization or distractors: nominal episodes only%s", target.name,
                 target.family, " and the gap's two sides" if any_env_gap else "")
    if not target.randomizable and len([c for c in conditions if not (any_env_gap and c.factor == GAP)]) > 1:
        shifted = sorted({c.factor for c in conditions if c.factor != NOMINAL})
        fix = ("remove the gap (gap=none), or give its source and target as the env's constructor arguments "
               "('gap.source={env_kwargs: {...}}', docs/transfer.md)") if shifted == [GAP] else "use select=[nominal]"
        raise ValueError(f"evaluate config: target {target.name!r} ({target.family}) has no randomization or "
                         f"distractors; factors {shifted} apply to sim_envs targets only: {fix}")
    given = cfg.get("target_return")
    spec = PolicySpec(str(ckpt.path), target.to_dict(), resolve_device(cfg.device, "evaluate"),
                      None if given is None else float(given))
    from robopretrain.build import check_env_fits

    policy = load_policy(spec)
    env_limit = check_env_fits(policy, target)  # one line naming the part and both sizes, before any episode
    if policy.algo == "dt":
        warn_dt_sparse_target(policy.algo_cfg, ckpt.meta.get("episode_returns"), [target])
    note = limit_change_note(target, ckpt, env_limit) if cfg.get("target") else None
    if note:
        log.warning(note)
    for cond in conditions:  # a gap's sides build other envs (their constructor arguments): checked before any too
        if cond.factor == GAP:
            check_env_fits(policy, target, cond.randomization, side=f"gap.{cond.level}")
    out_dir = resolve_output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a second evaluate writing this folder now is refused (its results were lost)
    with run_folder_lock(out_dir, resumes=False):
        return _measure(cfg, spec, policy, ckpt, target, conditions, slot, out_dir)


def remove_previous_results(out_dir: Path) -> list[Path]:
    """Remove an earlier evaluation's results from ``out_dir``: the plot and videos its ``eval_info.json`` lists
    (only files inside ``out_dir``) and the record itself; returns the files removed. Anything else in the folder
    is left as it is. A record that cannot be read is removed alone, with a warning."""
    record = out_dir / "eval_info.json"
    if not record.is_file():
        return []
    root = out_dir.resolve()
    try:  # each where this command writes it (the record's paths may be of a moved folder, or relative to its cwd)
        old = json.loads(record.read_text())
        listed = [root / Path(old["plot"]).name] if old.get("plot") else []
        listed += [root / "videos" / Path(v["path"]).name for v in (old.get("videos") or {}).values()]
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        log.warning("%s is unreadable (%s): removed; files an earlier run wrote beside it may remain", record, exc)
        listed = []
    removed = []
    for path in listed:
        if path.is_file():
            path.unlink()
            removed.append(path)
    record.unlink()
    removed.append(record)
    log.info("%s held an earlier evaluation's results: replaced by this run's (%d files removed)", out_dir,
             len(removed))
    return removed


def _measure(cfg: DictConfig, spec: PolicySpec, policy: Any, ckpt: Any, target: Target,
             conditions: Sequence[Condition], slot: Any, out_dir: Path) -> dict[str, Any]:
    """:func:`evaluate_robustness`'s episodes, plot, videos and ``eval_info.json``, once ``out_dir`` is its."""
    from robopretrain.evaluation import NothingToFilm, agent_target

    task = target.name
    start = time.perf_counter()
    episodes = run_all_episodes(spec, conditions, int(cfg.episodes), int(cfg.eval_seed), int(cfg.workers),
                                bool(cfg.progress))
    episode_seconds = time.perf_counter() - start
    stats = aggregate(conditions, episodes, cfg.bootstrap)
    for cond in conditions:  # the constructor arguments each condition's env was built with (a gap's side merged)
        stats[cond.factor][cond.level]["env_kwargs"] = {**target.env_kwargs, **split_env_kwargs(cond.randomization)[1]}
    remove_previous_results(out_dir)  # only now: a run stopped during its episodes leaves the earlier results whole
    info: dict[str, Any] = {
        "checkpoint": os.path.abspath(ckpt.path), "step": ckpt.step, "algo": ckpt.meta["algo"],  # any cwd
        "stage": ckpt.meta.get("stage"),
        "target_return": spec.target_return,
        "cameras": [k for k, _ in ckpt.meta["obs_spec"].get("rgb", [])],
        "target": agent_target(policy, target).to_dict(),  # with the action units the episodes acted through
        "task": task, "task_slot": slot, "episodes_per_condition": int(cfg.episodes), "eval_seed": int(cfg.eval_seed),
        "bootstrap": OmegaConf.to_container(cfg.bootstrap, resolve=True),
        "nominal": stats[NOMINAL]["none"], "factors": {k: v for k, v in stats.items() if k != NOMINAL},
        "episodes": episodes, "plot": None, "videos": {},
        "wall_seconds": {"episodes": episode_seconds, "workers": int(cfg.workers)},
    }
    if cfg.plot:
        info["plot"] = str(plot_success(stats, out_dir / "success_per_factor.png", f"{task}: {ckpt.meta['algo']} "
                                        f"step {ckpt.step}"))
    write_text_atomic(out_dir / "eval_info.json", json.dumps(info, indent=2))  # the episodes' results, before filming
    if cfg.video.enabled:
        last = {}
        for cond in conditions:
            last[cond.factor] = cond  # each factor's last (hardest) level
        for factor, cond in tqdm(last.items(), desc="videos", disable=not cfg.progress):
            try:
                path = record_video(spec, cond, int(cfg.eval_seed), out_dir / "videos" / f"{factor}.mp4",
                                    int(cfg.video.size), int(cfg.video.max_frames), float(cfg.video.fps))
            except NothingToFilm as exc:  # a state-only agent on a gym env without render_mode
                log.warning("no video of %s: %s", factor, exc)
                break
            info["videos"][factor] = {"path": str(path), "level": cond.level, "episode": 0}
            write_text_atomic(out_dir / "eval_info.json", json.dumps(info, indent=2))  # every file it wrote listed
        info["wall_seconds"]["videos"] = time.perf_counter() - start - episode_seconds
        write_text_atomic(out_dir / "eval_info.json", json.dumps(info, indent=2))
    info["output_dir"] = str(out_dir)
    log.info("robustness of %s on %s: nominal success %.2f; results in %s", ckpt.path, task,
             info["nominal"]["success"], out_dir)
    return info


def _interval(row: Mapping[str, Any]) -> str:
    return f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def summary_lines(info: Mapping[str, Any]) -> list[str]:
    """A plain-text table: factor, level, success [CI at ``info['bootstrap']``'s confidence and method], drop vs
    nominal."""
    nom = info["nominal"]
    boot = info.get("bootstrap") or {}
    ci = f"{100 * float(boot.get('confidence', 0.95)):g}% CI ({boot.get('method', 'wilson')})"
    lines = [f"{'factor':<16}{'level':<11}{'success':>8}  {ci:<20}{'drop':>7}",
             f"{'nominal':<16}{'none':<11}{nom['success']:>8.2f}  {_interval(nom):<20}{0.0:>7.2f}"]
    for factor, levels in info["factors"].items():
        for level, r in levels.items():
            lines.append(f"{factor:<16}{level:<11}{r['success']:>8.2f}  {_interval(r):<20}{r['drop_vs_nominal']:>7.2f}")
    return lines


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@friendly_errors(rerun=RERUN_STARTS_OVER)
def main(cfg: DictConfig) -> None:
    info = evaluate_robustness(cfg)
    print("\n".join(summary_lines(info)))
    print(f"eval_info: {Path(info['output_dir']) / 'eval_info.json'}")


def cli_main() -> None:
    """``python -m robopretrain.evaluate`` and its console script: one-line config errors, then Hydra."""
    run_hydra(main, "evaluate")


if __name__ == "__main__":
    cli_main()
