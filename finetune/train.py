"""Stage 3 entry point: online fine-tuning (Cal-QL by default) of a stage-2 agent on a target, for any agent.

``python -m finetune.train checkpoint=<stage-2 run or checkpoint> target=PlaceInBowl`` (Hydra,
``configs/finetune.yaml``), or :func:`run` from Python. Bad input (a checkpoint that does not fit, a bad data file,
a value out of range, an env whose sizes differ from the agent's) ends with one ``error: ...`` line and exit code 2
(:mod:`robopretrain.cli`).

* ``checkpoint``: the agent is rebuilt from the checkpoint alone (cameras and encoder, observation parts and their
  normalisation, task one-hot, network sizes) and trained with ``algo``'s settings (Cal-QL by default; a CQL
  checkpoint continues as Cal-QL; the optimiser state is kept for the same algorithm when ``online.keep_optimizer``).
  ``algo=dt`` is refused (no online Decision Transformer here); ``algo=bc`` runs with a warning, since behaviour
  cloning has no online version and clones every online episode, failed ones included.
* ``target``: a sim_envs task name, or any env as a mapping of :class:`robopretrain.envs.target.Target` fields
  (a Meta-World task, a gymnasium id or ``"module:Class"``, with its observation key map, task id, success signal
  and reward convention). Its env is built once at start and its observation sizes and action size are checked
  against the agent's.
* Offline data mixed into every batch: the target's ``demos``, else ``data.path`` (or collected now for a sim_envs
  target with ``data.generate=true``, rendering the agent's cameras), else the checkpoint's own data file.
* Training episodes use the ``dr`` randomization (sim_envs targets; physics and visuals by default), evaluation
  episodes ``eval_randomization`` (null: the same). With a ``gap`` (``configs/gap/``, :mod:`finetune.transfer.gap`)
  training episodes use its ``source`` instead of ``dr`` and evaluation its ``target`` (unless
  ``eval_randomization`` is set). ``transfer.epopt`` / ``transfer.dann`` / ``transfer.darc`` (all off by default):
  :mod:`finetune.transfer.options`. The loop is :func:`finetune.online.run_online`; after the run
  ``<run>/learning_curve.png`` is drawn.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from finetune.online import OnlineSettings, run_online
from finetune.transfer.gap import Gap
from finetune.transfer.options import TransferSettings, build_transfer
from robopretrain import build, run_fingerprint
from robopretrain.agent import NETWORK_KEYS
from robopretrain.algos import AGENT_NAMES
from robopretrain.checkpoint import (META_FILE, PREVIOUS_RUN, CheckpointError, check_agent_fits, clear_previous_run,
                                     list_checkpoints, load_agent, load_latest, recorded_data_files, recorded_file,
                                     refuse_other_stage, refuse_source_in_run, resolve_checkpoint_dir)
from robopretrain.cli import CONFIG_DIR, config_folder, friendly_errors, run_hydra
from robopretrain.config_checks import validate_online_config
from robopretrain.data.dataset import warn_ignored_action_bounds, warn_sparse_data_for_dense_target
from robopretrain.data.hdf5 import DatasetInfo, default_task_name, read_info
from robopretrain.envs.target import (GYM, METAWORLD, SIM_ENVS, Target, slot_note, time_limit_note,
                                      warn_unmapped_renames, with_task_slot)
from robopretrain.evaluation import DEMO_UNITS, acting_units, demo_action_units, demo_units_entry
from robopretrain.files import run_folder_lock
from robopretrain.metrics import plot_learning_curve

log = logging.getLogger(__name__)

# settings a resumed run may change (they do not change what is computed, or a resumed run may extend them)
RESUMABLE_CHANGES = (*run_fingerprint.HARMLESS_KEYS, "env_steps", "eval_episodes", "keep_checkpoints",
                     "calibration_batch", "data.generate", "data.regenerate", "data.collect",
                     "data.storage", "data.workers",
                     # the setting as given (a run folder, or the checkpoint in it the run started from): the
                     # checkpoint it resolves to is compared instead (the fingerprint's inputs)
                     "checkpoint",
                     # the networks' sizes come from that checkpoint whatever these say (warn_ignored_networks)
                     *(f"algo.{key}" for key in NETWORK_KEYS),
                     # the agent's action units come from the checkpoint too (warn_ignored_action_bounds)
                     "data.action_bounds")


def resumable_changes(settings: OnlineSettings, saved: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """:data:`RESUMABLE_CHANGES` for this run: with several envs not ``checkpoint_every``, whose checkpoints wait for
    every env's episode to end and restart them all, so their spacing decides which episodes are collected (a resume
    with another spacing went on silently to what neither spacing's uninterrupted run computes; a user's finding).
    ``saved``: the fingerprint of the checkpoint a resume continues; one whose config lacks the spacing (written
    before this rule, with or without an ``ignored`` list) keeps it ignored, so that run resumes, with a warning that
    its spacing goes unchecked (its fingerprint holds none to compare; the checkpoints it writes carry on so)."""
    if settings.num_envs <= 1:
        return RESUMABLE_CHANGES
    if saved is not None and "online.checkpoint_every" not in (saved.get("config") or {}):
        log.warning("resuming a run checkpointed before its online.checkpoint_every was checked: with %d envs the "
                    "spacing decides which episodes are collected, so it must stay what the run used (%s); this "
                    "run's resumes cannot check it", settings.num_envs, settings.checkpoint_every)
        return RESUMABLE_CHANGES
    return tuple(k for k in RESUMABLE_CHANGES if k != "checkpoint_every")


def check_other_tasks(info: DatasetInfo, target: Target, trained: Mapping[str, Any]) -> None:
    """Stage 3 reads every demo of a file without the target's task as the target's (its slot): refuse a file whose
    tasks include one the agent learnt in another slot (``trained``: the checkpoint's task name -> slot), whose demos
    would be trained as the target without a word, and warn when it names other tasks (demos without task
    attributes, the file's default task, are what the rule is for)."""
    slot = target.resolved_task_id()
    named = sorted(t for t in info.tasks if t != default_task_name(str(info.path), info.env_args))
    known = {t: int(trained[t]) for t in named if t in trained and int(trained[t]) != slot}
    if known:
        raise ValueError(f"{info.path}: holds no demos of target {target.name!r} but demos of task(s) "
                         f"{sorted(known)}, which the agent learnt in slot(s) {sorted(set(known.values()))}: stage 3 "
                         f"would train them as the target, in its slot {slot}; give the target's own demos "
                         "(target.demos or data.path), or pick demos with data.tasks=[...] knowingly")
    if named:
        log.warning("%s: holds no task named %r; its demos of task(s) %s are read as the target's, in slot %d "
                    "(data.tasks=[...] selects some)", info.path, target.name, named, slot)


def offline_data_path(cfg: DictConfig, run_dir: Path, target: Target, agent: Any, ckpt_meta: dict[str, Any],
                      keep: Sequence[str] = (), prune: bool = False) -> Path:
    """The offline data: the target's demos (another format converted first, by ``data.format`` / ``data.cache_dir`` /
    ``data.actions``), ``data.path`` (collected first when ``data.generate``), or the
    checkpoint's own data file when it holds demos of the target (else ValueError: every demo would be taken as the
    target's). ``keep``: converted copies a new conversion must not remove although stale (those the stage-2
    checkpoint and this run's checkpoints name: :func:`robopretrain.build.converted`); ``prune``: a fresh run's
    (the other stale copies are removed even when the current one is reused)."""
    if target.demos:
        path = Path(str(target.demos)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"target {target.name!r}: demos={path} not found; expected a robomimic HDF5 (or a "
                                    "LeRobot v3 / Minari folder, a D4RL-style HDF5 or an OGBench .npz)")
        # another format: converted like data.path, its cameras at the agent's size unless data.image_size says
        return build.converted(path, cfg.data, agent.spec.image_size, keep=keep, prune=prune)
    if cfg.data.get("generate", False):
        if target.family != SIM_ENVS:
            raise ValueError(f"target {target.name!r} ({target.family}): data.generate collects sim_envs demos only; "
                             "give the target's demos (target.demos or data.path" + (
                                 "; python -m robopretrain.envs.metaworld_collect writes Meta-World demos)"
                                 if target.family == METAWORLD else ")"))
        sim_cameras = {target.obs_map.get(k, k) for k in agent.spec.rgb_keys}  # the agent may name them its way
        collect = {"tasks": [target.name], "render_images": bool(agent.spec.rgb),
                   "eye_in_hand": "eye_in_hand_image" in sim_cameras}
        if agent.spec.image_size:
            collect["image_size"] = int(agent.spec.image_size)
        return build.resolve_data_path(cfg.data, run_dir, default_name="target_demos.hdf5", collect=collect)
    if cfg.data.get("path"):  # another format converted with its cameras at the agent's size, as target.demos
        return build.resolve_data_path(cfg.data, run_dir, default_image_size=agent.spec.image_size, keep=keep,
                                       prune=prune)
    if ckpt_meta.get("data_path") and Path(ckpt_meta["data_path"]).is_file():
        path = Path(ckpt_meta["data_path"])
        tasks = read_info(path).tasks
        if target.name not in tasks:  # its demos would all be labelled as the target's
            raise ValueError(f"data.path is not set and the checkpoint's data file {path} has no demos of target "
                             f"{target.name!r} (its tasks: {', '.join(sorted(tasks))}); give the "
                             "target's demos (data.path=/path/to/target_demos.hdf5, or target.demos)"
                             + _generate_advice(target))
        log.info("offline data: %s, the checkpoint's own data file (data.path and target.demos are not set): its %s "
                 "demos", path, target.name)
        return path
    recorded = ckpt_meta.get("data_path")
    raise ValueError("config key data.path is not set and the checkpoint's data file is not available"
                     + (f" (no file at {recorded}; a converted copy is removed when its source changes)" if recorded
                        else "") + "; give the target demos (data.path=/path/to/target_demos.hdf5)"
                     + _generate_advice(target))


def _generate_advice(target: Target) -> str:
    """How else a target's demos can be had: collected for sim_envs targets, Meta-World's collector, else none."""
    if target.family == SIM_ENVS:
        return " or data.generate=true"
    if target.family == METAWORLD:
        return " (python -m robopretrain.envs.metaworld_collect writes Meta-World demos)"
    return ""


def demo_obs_map(target: Target, info: Any, pretrained: Mapping[str, str] | None = None,
                 stage2_file: bool = False) -> dict[str, str]:
    """The ``obs_map`` for stage 3's offline file when ``data.obs_map`` is not set: the entries of stage 2's
    ``data.obs_map`` (``pretrained``, recorded in the checkpoint) and of the target's ``obs_map`` (which wins where
    both name a part) that apply to the file: those whose source key the file has and whose part name it lacks (a file
    recorded in the env has the env's keys; a converted one, e.g. D4RL's ``observations`` for a gym env's unnamed
    ``observation``, may already have the agent's names).

    ``stage2_file``: the file is the one stage 2 trained on; then stage 2's entries whose source key the file has
    apply as they did there, even where the file also has the part's own name (``{eef_pos: eef_filtered}`` on a file
    with both: the agent learned from ``eef_filtered``), and the target's entries fill only the parts stage 2 left
    unmapped."""
    keys = set(info.obs_specs)
    out: dict[str, str] = {}
    if stage2_file:
        out = {ours: theirs for ours, theirs in (pretrained or {}).items() if theirs in keys}
        out.update({ours: theirs for ours, theirs in target.obs_map.items()
                    if theirs in keys and ours not in keys and ours not in out})
        return out
    for mapping in (pretrained or {}, target.obs_map):
        out.update({ours: theirs for ours, theirs in mapping.items() if theirs in keys and ours not in keys})
    return out


def refuse_decision_transformer(algo: str, checkpoint: Any) -> None:
    """Online fine-tuning of the Decision Transformer (``algo=dt`` or a DT checkpoint) is not built: one clear
    :class:`CheckpointError` (an unreadable checkpoint is left to :func:`load_agent` to report)."""
    saved = None
    try:
        saved = json.loads((resolve_checkpoint_dir(str(checkpoint)) / META_FILE).read_text()).get("algo")
    except (CheckpointError, OSError, ValueError, AttributeError):
        pass
    if "dt" in (algo, saved):
        raise CheckpointError(f"{checkpoint}: online fine-tuning of the Decision Transformer (algo=dt) is not "
                              "available; evaluate a DT checkpoint with robopretrain.evaluate, or fine-tune a "
                              f"checkpoint of another learner ({' / '.join(n for n in AGENT_NAMES if n != 'dt')})")


def refuse_default_target_outside(cfg: DictConfig, target: Target, num_tasks: int, trained: list[str]) -> None:
    """Refuse, naming the setting, a run left at the config's default target (a sim_envs task) when that task has
    no slot in the agent's task one-hot: the user (an agent of their own robot, a one-task agent) never chose it,
    and the general refusal ("set the target's task_id") would lead them to fine-tune on the wrong env."""
    default = OmegaConf.load(CONFIG_DIR / "finetune.yaml").get("target")
    if build.plain(cfg.get("target")) != default or not num_tasks or 0 <= target.resolved_task_id() < num_tasks:
        return
    raise ValueError(f"target is not set, so it is the default {default!r} (robopretrain/configs/finetune.yaml), a "
                     f"sim_envs task outside this agent's task one-hot of size {num_tasks}"
                     + (f" (trained on {', '.join(map(str, trained))})" if trained else "")
                     + "; name the env to fine-tune on: target=<a task name> or 'target={name: MyTask, env_id: "
                       "\"my_pkg.envs:MyEnv\"}' (docs/targets.md)")


def warn_online_behaviour_cloning(algo: str) -> str | None:
    """Warn (and return the message) for ``algo=bc`` in stage 3: behaviour cloning has no online version; stage 3
    trains it on batches that mix the offline data with every online episode, its own failed ones included
    (``online.offline_ratio``), so it imitates its failures as much as its successes."""
    if algo != "bc":
        return None
    message = ("algo=bc: behaviour cloning has no online version; stage 3 clones batches that mix the offline data "
               "with every online episode, failed ones included, so it imitates its own failures too. To improve "
               "online, train stage 2 with a learner that has an online version (algo=calql, iql, awac, td3_bc or "
               "rebrac) and fine-tune that checkpoint: a BC checkpoint holds no critic, so only algo=bc continues it")
    log.warning(message)
    return message


def warn_dropped_bc_term(ckpt_meta: dict[str, Any], algo_cfg: Any) -> str | None:
    """Warn (and return the message) when the checkpoint's actor was trained with the actor's BC term
    (``actor_bc_weight > 0``, CQL / Cal-QL) but this fine-tuning runs without it: the testbed measured a plain
    Cal-QL actor unlearning a target its BC-term offline phase had solved (1.00 -> 0.45, README "Why stage 2 does not
    learn its prior tasks"). The pipeline carries the term into stage 3 itself; a direct ``finetune.train`` run
    takes ``configs/algo/calql.yaml``, where it is off."""
    saved = dict(ckpt_meta.get("algo_cfg") or {})
    before = float(saved.get("actor_bc_weight") or 0.0)
    now = float(getattr(algo_cfg, "actor_bc_weight", 0.0) or 0.0)
    if before <= 0.0 or now > 0.0:
        return None
    keep = f"algo.actor_bc_weight={before:g}"
    if saved.get("actor_bc_filter", "none") != "none":
        keep += f" algo.actor_bc_filter={saved['actor_bc_filter']}"
    message = (f"the checkpoint's actor was trained with a BC term (actor_bc_weight={before:g}, actor_bc_filter="
               f"{saved.get('actor_bc_filter', 'none')}) and this fine-tuning runs without it; a plain Cal-QL actor "
               f"can unlearn what that term taught (the testbed: 1.00 -> 0.45). To keep it, pass {keep}")
    log.warning(message)
    return message


def warn_ignored_networks(ckpt_meta: Mapping[str, Any], algo_cfg: Any, algo: str) -> list[str]:
    """Warn (and return the settings) where the config sets a network size (:data:`robopretrain.agent.NETWORK_KEYS`:
    ``algo.actor_hidden``, ...) away from ``configs/algo/<algo>.yaml``'s default and from the checkpoint's: stage 3
    continues the checkpoint's networks, so the setting takes no effect (a user's ``algo.actor_hidden=[128]`` was
    built as the checkpoint's [64, 64] without a word). The fingerprint ignores these keys, so no resume is refused
    over a value never used. The learner settings that differ from the checkpoint's (``batch_size``, ``n_actions``,
    ...: stage 3's own, from its config) are logged at info level."""
    saved = dict(ckpt_meta.get("algo_cfg") or {})
    path = CONFIG_DIR / "algo" / f"{algo}.yaml"
    defaults = OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.is_file() else {}
    given = OmegaConf.to_container(algo_cfg, resolve=True) if OmegaConf.is_config(algo_cfg) else dict(algo_cfg or {})
    ignored = [f"algo.{k}={json.dumps(given[k])} (the checkpoint's: {json.dumps(saved[k])})" for k in NETWORK_KEYS
               if k in given and k in saved and given[k] != saved[k] and given[k] != defaults.get(k)]
    if ignored:
        log.warning("stage 3 continues the checkpoint's networks, so %s take(s) no effect; to train networks of "
                    "other sizes, train stage 2 with them", ", ".join(ignored))
    learner = [f"{k} {json.dumps(given[k])} (the checkpoint's: {json.dumps(saved[k])})" for k in sorted(given)
               if k in saved and k not in NETWORK_KEYS and k != "name" and given[k] != saved[k]]
    if learner:  # its own config's learner settings (a direct run takes configs/algo/<algo>.yaml), said once
        log.info("stage 3 learns with its own settings where they differ from the checkpoint's: %s", ", ".join(learner))
    return ignored


# the reward transform and discount a critic's values are in: (setting, RewardSettings field)
REWARD_UNITS = (("algo.reward_scale", "scale"), ("algo.reward_bias", "bias"), ("algo.discount", "discount"))


def refuse_reward_change(ckpt_meta: Mapping[str, Any], reward: Any, algo: str, checkpoint: Any) -> None:
    """Raise ``ValueError`` when this fine-tuning's reward scale, bias or discount differ from those the checkpoint's
    agent learned with (its ``meta.json`` ``reward``): its critic's values, and the optimiser state kept with them,
    are in those units, and fine-tuning in others (e.g. ``configs/algo/calql.yaml``'s x10 - 5 after a stage 2 run at
    scale 1 on a dense or learned reward) goes on silently from a wrong critic. Nothing to check for BC (no critic)
    or a checkpoint without the record."""
    saved = ckpt_meta.get("reward")
    if algo == "bc" or not isinstance(saved, Mapping):
        return
    changed = [(name, float(saved[field]), float(getattr(reward, field))) for name, field in REWARD_UNITS
               if field in saved and abs(float(saved[field]) - float(getattr(reward, field))) > 1e-9]
    if changed:
        said = ", ".join(f"{name}={now:g} (the checkpoint's {was:g})" for name, was, now in changed)
        keep = " ".join(f"{name}={was:g}" for name, was, _ in changed)
        raise ValueError(f"checkpoint={checkpoint}: this fine-tuning's rewards are not in the units its agent learned "
                         f"in: {said}; its critic's values are in the checkpoint's units, so pass {keep}")


def resumed_start(checkpoint: Any, run_dir: Path, resume: bool) -> str:
    """The checkpoint to start from: ``checkpoint`` as given, except when this run folder holds a stage-3 checkpoint
    (a resume) that started from a checkpoint inside ``checkpoint``'s run folder, which now holds a newer one (stage 2
    went on meanwhile): that recorded start, so the same command still resumes (the agent's weights then come from
    this run's own checkpoint anyway).

    Raises:
        CheckpointError: the resume's recorded start is gone (stage 2 pruned it, keeping its newest
            ``train.keep_checkpoints``, or it was deleted): what to restore, or ``resume=false``.
    """
    if not resume:
        return str(checkpoint)
    ours = list_checkpoints(run_dir / "checkpoints")
    try:
        started = json.loads((ours[0] / META_FILE).read_text()).get("pretrained_from") if ours else None
    except (OSError, ValueError):
        return str(checkpoint)
    if started and not Path(started).exists() and Path(started).parent.is_dir():  # pruned, not moved with its run
        raise CheckpointError(
            f"{run_dir} resumes from its own checkpoint {ours[0].name}, but the stage-2 checkpoint it started from, "
            f"{started}, is gone (stage 2 keeps its newest train.keep_checkpoints checkpoints and prunes the rest; "
            "a stage 2 that went on after this run started may have pruned it): restore that folder to resume, or "
            "start over with resume=false or another output_dir")
    try:
        given = resolve_checkpoint_dir(str(checkpoint))
    except (OSError, ValueError, CheckpointError):
        return str(checkpoint)
    if not started or not Path(started).is_dir() or Path(started).resolve() == given.resolve():
        return str(checkpoint)
    folder = Path(str(checkpoint)).expanduser().resolve()
    if folder not in Path(started).resolve().parents:
        return str(checkpoint)
    log.info("resuming from this run's own checkpoint; it started from %s (%s now holds a newer %s, which a fresh run "
             "would start from: resume=false)", started, checkpoint, given.name)
    return str(started)


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Stage-2 checkpoint -> online fine-tuning on ``cfg.target``; returns the history and where things are."""
    validate_online_config(cfg)  # first: an unknown or mistyped key is named before the missing checkpoint
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.get("checkpoint"):
        raise ValueError("finetune config: checkpoint is not set; give checkpoint=<a stage-2 run folder or checkpoint> "
                         "(python -m robopretrain.train writes one)")
    # both entries checked once, before any env is built (a target's probe included)
    dr_rand = build.randomization(cfg.get("dr"))
    eval_spec = cfg.get("eval_randomization")  # None: as training
    eval_checked = None if eval_spec is None else build.randomization(eval_spec, where="eval_randomization")
    settings = OnlineSettings.from_mapping(build.plain(cfg.online))
    run_dir = Path(run_dir) if run_dir is not None else config_folder(cfg, "output_dir")
    with run_folder_lock(run_dir):  # a second process writing this folder is refused, not resuming too
        return _fine_tune(cfg, run_dir, settings, dr_rand, eval_checked)


def _fine_tune(cfg: DictConfig, run_dir: Path, settings: OnlineSettings, dr_rand: Any, eval_checked: Any
               ) -> dict[str, Any]:
    """:func:`run`'s work once its run folder is this process's."""
    refuse_other_stage(run_dir, "online")  # a stage-2 run's folder: its checkpoints are not this run's to replace
    device = build.setup_torch(cfg)
    target = build.target_config(cfg.target)
    algo = str(cfg.algo.name)
    refuse_decision_transformer(algo, cfg.checkpoint)
    warn_online_behaviour_cloning(algo)
    start = resumed_start(cfg.checkpoint, run_dir, bool(cfg.get("resume", True)))
    agent, ckpt = load_agent(start, device=device, with_optimizer=settings.keep_optimizer, algo=algo,
                             algo_cfg=build.algo_overrides(cfg.algo), seed=int(cfg.seed))
    warn_dropped_bc_term(ckpt.meta, getattr(agent, "algo_cfg", None))
    warn_ignored_networks(ckpt.meta, cfg.algo, algo)
    target = with_task_slot(target, ckpt.meta.get("task_ids") or {}, agent.spec.num_tasks)
    note = slot_note(target.name, target.resolved_task_id(), ckpt.meta.get("task_ids") or {},
                     label_only=agent.spec.num_tasks == 1 and target.family == GYM) if agent.spec.num_tasks else None
    if note:  # stage 3 trains it there and records it so
        log.warning("%s; stage 3 fine-tunes it there and records it so", note)
    refuse_default_target_outside(cfg, target, agent.spec.num_tasks, ckpt.meta.get("task_names") or [])
    if not ckpt.meta.get("target"):  # from stage 2: its data's renamed parts (a stage-3 start read its own target's)
        warn_unmapped_renames(ckpt.meta, target)
    gap = Gap.from_mapping(build.plain(cfg.get("gap")))
    transfer_settings = TransferSettings.from_mapping(build.plain(cfg.get("transfer")))
    if gap.enabled and not target.randomizable and not gap.any_env:
        if gap.sets_env_kwargs:
            raise ValueError(f"gap={gap.name}: a side mixes sim_envs randomization with env_kwargs (source "
                             f"{gap.source!r}, target {gap.target!r}); target {target.name!r} is {target.family}, "
                             "where only env_kwargs apply: drop the other keys (level, factors, ranges, "
                             "num_distractors)")
        raise ValueError(f"gap={gap.name}: its sides are randomization settings of sim_envs targets, and target "
                         f"{target.name!r} is {target.family}: give the gap's source and target as the env's "
                         "constructor arguments instead, e.g. 'gap={name: my_gap, source: {env_kwargs: {friction: "
                         "1.0}}, target: {env_kwargs: {friction: 0.4}}, target_transitions: 500}' (docs/transfer.md)")
    if gap.enabled and gap.source == gap.target:
        log.warning("gap=%s: its source and target are the same (%r): training and judging run the same env, so there "
                    "is no gap to transfer across", gap.name, gap.source)
    rand = dr_rand if target.randomizable else "none"
    if not target.randomizable and (dr_rand != "none" or eval_checked not in (None, "none")):
        episodes = (f"training episodes use gap={gap.name}'s source, evaluation episodes its target" if gap.enabled
                    else "the env draws its own physics (transfer.epopt.env_draws_physics)"
                    if transfer_settings.epopt.enabled and transfer_settings.epopt.env_draws_physics
                    else "every episode is nominal (dr=none says so quietly)")
        log.warning("target %r (%s): physics / visual randomization and distractors exist for sim_envs targets only; "
                    "dr and eval_randomization are not applied, %s", target.name, target.family, episodes)
    # (on a target without randomization, eval_randomization is not applied: a gap's target still judges)
    eval_rand = None if eval_checked is None or not target.randomizable else eval_checked
    if gap.enabled:  # the gap's source replaces dr; its target judges, unless eval_randomization says otherwise
        rand = gap.source
        eval_rand = gap.target if eval_rand is None else eval_rand
    env_limit = build.check_env_fits(agent, target, rand, side="gap.source" if gap.enabled else "")
    if gap.enabled and eval_rand != rand:  # a misspelt constructor argument of the judged side, named before training
        build.check_env_fits(agent, target, eval_rand,
                             side="gap.target" if eval_rand is gap.target else "eval_randomization")
    stage2_path = recorded_file(ckpt, "data_path")  # at a moved run folder's new place when it moved with the run
    kept = [str(ckpt.meta[k]) for k in ("data_path", "mix_path") if ckpt.meta.get(k)]  # outlive a source edit
    kept += recorded_data_files(run_dir / "checkpoints") if cfg.get("resume", True) else []
    data_path = offline_data_path(cfg, run_dir, target, agent, {**ckpt.meta, "data_path": stage2_path}, keep=kept,
                                  prune=not cfg.get("resume", True))
    info = read_info(data_path)
    learned = None
    if cfg.get("reward_model"):
        from finetune.learned_reward import load_online_reward

        learned = load_online_reward(cfg.reward_model, agent, info, task=target.name,
                                     slot=target.resolved_task_id() if agent.spec.num_tasks else None,
                                     agent_units=acting_units(agent.action_normalization, [target]))
    build.refuse_learned_reward_online(info, settings.offline_ratio, "online.offline_ratio",
                                       online_model=learned is not None)
    note = time_limit_note(target, info.env_args, info.demos, env_limit)
    if note:
        log.warning(note)
    build.warn_success_termination(target, info)
    reward = build.reward_settings(cfg.algo, target)
    refuse_reward_change(ckpt.meta, reward, algo, cfg.checkpoint)
    tasks = cfg.data.get("tasks") or ([target.name] if target.name in info.tasks else None)
    if agent.spec.num_tasks:
        if tasks is None:  # every demo becomes the target's: not those of tasks the agent learnt elsewhere
            check_other_tasks(info, target, ckpt.meta.get("task_ids") or {})
        if cfg.data.get("task_id") is not None and int(cfg.data.task_id) != target.resolved_task_id():
            log.warning("data.task_id=%s takes no effect in stage 3: the demos go in the target's slot %d (set the "
                        "target's task_id to move it)", cfg.data.task_id, target.resolved_task_id())
    data_cfg = cfg.data
    same_file = bool(stage2_path) and os.path.realpath(str(stage2_path)) == os.path.realpath(str(data_path))
    mapped = demo_obs_map(target, info, ckpt.meta.get("obs_map"), stage2_file=same_file)
    build.warn_unused_obs_map(build.plain(cfg.data.get("obs_map")) or None, agent.spec)  # the user's own entries
    if not data_cfg.get("obs_map") and mapped:
        data_cfg = OmegaConf.create({**build.plain(cfg.data), "obs_map": mapped})
    build.check_data_fits(agent.spec, data_path, build.plain(data_cfg.get("obs_map")) or None, "the offline data")
    warn_ignored_action_bounds(build.plain(cfg.data.get("action_bounds")), agent.action_normalization,
                               f"checkpoint={ckpt.path}")
    demo_units = demo_action_units(agent.action_normalization, [target], data_path, info)
    offline = build.load_data(data_path, agent.spec, data_cfg, reward, algo=algo, act_dim=agent.act_dim,
                              seed=int(cfg.seed) + 2, device=device, tasks=tasks,
                              task_id=target.resolved_task_id() if agent.spec.num_tasks else None,
                              action_units=demo_units, units_fixed=True)
    build.report_success_filter(cfg.algo, offline, str(data_path), online=True)
    build.warn_two_valued_actions(cfg.algo, offline, str(data_path))
    if not target.sparse:
        warn_sparse_data_for_dense_target(str(data_path), offline.arrays()["rewards"], reward, target.name)
    offline = build.prepared(agent, offline, int(cfg.seed) + 2)
    meta = {"pretrained_from": str(ckpt.path), "pretrained_algo": ckpt.meta.get("algo"),
            "data_path": os.path.abspath(data_path),
            "task_names": [target.name], "reward": reward.__dict__, "gap": gap.to_dict(),
            "reward_model": str(learned.path) if learned else None,
            # every task the agent was trained on and its slot: stage 2's, then this target's (evaluate's warning)
            "task_ids": {**dict(ckpt.meta.get("task_ids") or {}),
                         **({target.name: target.resolved_task_id()} if agent.spec.num_tasks else {})}}
    fresh = not bool(cfg.get("resume", True))  # a fresh run in a used folder, after every check: its transfer caches
    resumed = None if fresh else load_latest(run_dir / "checkpoints", with_state=False)
    saved = resumed.meta.get("fingerprint") if resumed is not None and resumed.meta.get("stage") == "online" else None
    fingerprint = run_fingerprint.fingerprint(cfg, {"data": data_path, "checkpoint": ckpt.path,
                                                    **({"reward_model": learned.path} if learned else {})},
                                              ignore=resumable_changes(settings, saved),
                                              home=run_fingerprint.run_home(cfg, run_dir),
                                              derived={DEMO_UNITS: demo_units_entry(agent.action_normalization,
                                                                                    demo_units)})
    if fresh:  # first (another agent collected them), the rest once the transfer options are accepted too
        refuse_source_in_run(str(cfg.checkpoint), run_dir, "checkpoint")
        clear_previous_run(run_dir, ("transfer",))
    if saved:  # a resume refused for changed settings is refused before the transfer options collect target data
        check_agent_fits(resumed.meta, agent, where=str(resumed.path))  # (a real target's, maybe) or replace them,
        run_fingerprint.check_resume(saved, fingerprint, where=resumed.path, say=False)  # as run_online checks them
    transfer = build_transfer(transfer_settings, gap, agent, target, rand, run_dir, reward_scale=reward.scale,
                              seed=int(cfg.seed))
    if fresh:
        clear_previous_run(run_dir, tuple(p for p in PREVIOUS_RUN if p != "transfer"))
    history = run_online(agent, offline, target, settings, run_dir, reward=reward, seed=int(cfg.seed),
                         randomization=rand, eval_randomization=eval_rand, config=cfg, meta=meta,
                         resume=bool(cfg.get("resume", True)), fingerprint=fingerprint, transfer=transfer,
                         learned_reward=learned)
    curve = plot_learning_curve(history, run_dir / "learning_curve.png",
                                title=f"{algo} on {target.name} (seed {cfg.seed})")
    return {"history": history, "run_dir": str(run_dir), "pretrained_from": str(ckpt.path),
            "learning_curve": str(curve), "checkpoints": str(run_dir / "checkpoints")}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="finetune")
@friendly_errors
def main(cfg: DictConfig) -> None:
    out = run(cfg)
    last = out["history"][-1]
    regret = last.get("train/cumulative_regret")
    print(f"final success {last['eval/success']:.2f}, cumulative regret "
          f"{'n/a' if regret is None else f'{regret:.3f}'}; run folder {out['run_dir']}")


def cli_main() -> None:
    """``python -m finetune.train`` and its console script: one-line config errors, then Hydra."""
    run_hydra(main, "finetune")


if __name__ == "__main__":
    cli_main()
