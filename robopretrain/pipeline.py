"""The whole pipeline, one command: data -> stage 1 -> stage 2 -> adaptation -> stage 3 -> evaluation.

``python -m robopretrain.pipeline`` (Hydra, ``configs/pipeline.yaml``; ``--config-name paper`` for the GPU preset),
or :func:`run_pipeline` from Python. Each stage is the stage's own public ``run`` (stage 2 and the adaptation
``robopretrain.train.run``, stage 3 ``finetune.train.run``, ``robopretrain.evaluate.evaluate_robustness``) called with
a config composed from that stage's config file (:func:`robopretrain.build.compose`), so the pipeline is exactly the
standalone commands in a row. Everything lands under one run folder::

    <run>/data/      prior_demos.hdf5 (prior tasks), target_demos.hdf5 (demos per sim_envs target), videos/
    <run>/stage1/    video pretraining (ICVF by default): encoder/ (the stage-1 encoder checkpoint)
    <run>/stage2/    multi-task offline RL over the prior tasks (task-ID conditioned, PTR): checkpoints/, metrics.jsonl
    <run>/adapt/<target>/   offline on batches of 90% prior / 10% target data, from stage 2's weights
    <run>/stage3/<target>/  Cal-QL online with randomization, parallel envs (checkpoints/ with the replay buffer)
    <run>/evaluate/  results.json (nominal, randomized and blind-camera success per target), rollout GIFs, plots,
                     robustness/<target>/eval_info.json;  <run>/report.md (:mod:`robopretrain.report`)

Every stage folder's ``checkpoints/`` holds self-describing agent checkpoints that ``python -m robopretrain.evaluate
checkpoint=<folder>`` and :func:`robopretrain.checkpoint.load_agent` rebuild without any other file. Each stage
writes ``done.json`` (with its wall time) when it finishes; a later run skips finished stages and an interrupted
one resumes from its own checkpoints.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from robopretrain import cpu_settings
from robopretrain.build import (collect_changes, compose, plain, randomization, refuse_learned_reward_online,
                                reward_settings, success_filtered_bc, warn_success_termination)
from robopretrain.cli import CONFIG_DIR, config_folder, friendly_errors, run_hydra
from robopretrain.config_checks import (PIPELINE_CHECKS, check_section, check_top_level_keys, one_name_as_list,
                                        resolve_device)
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.target import SIM_ENVS, Target, as_target
from robopretrain.files import refuse_busy_folder, run_folder_lock, write_text_atomic
from robopretrain.metrics import read_jsonl
from robopretrain.nets.kernels import machine_record
from robopretrain.run_fingerprint import ResumeRefusal

log = logging.getLogger(__name__)

STAGES = ("data", "stage1", "stage2", "adapt", "stage3", "evaluate")
DONE = "done.json"


# --------------------------------------------------------------------------- small helpers


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=float))


def read_json(path: Path) -> Any:
    """A stage's record ``path`` (``done.json``, ``results.json``); ValueError naming it, and how to redo its stage,
    when it is not JSON (a truncated or hand-edited file said only "Expecting ',' delimiter: line 1 column 14")."""
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # (JSONDecodeError, UnicodeDecodeError)
        raise ValueError(f"{path}: damaged, not JSON ({e}); remove {path.parent} and the later stages' folders to "
                         "run that stage again") from None


def is_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def targets_of(cfg: DictConfig) -> list[Target]:
    targets = [as_target(plain(t)) for t in cfg.targets]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"targets: names must be unique, got {names}")
    return targets


def prior_task_names(cfg: DictConfig) -> list[str]:
    import sim_envs

    spec = plain(cfg.prior_tasks)
    if spec == "pretrain":
        return list(sim_envs.PRETRAIN_TASKS)
    return [spec] if isinstance(spec, str) else list(spec)


def data_paths(run_dir: Path) -> dict[str, Path]:
    d = run_dir / "data"
    return {"prior": d / "prior_demos.hdf5", "target": d / "target_demos.hdf5", "videos": d / "videos"}


def encoder_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "stage1" / "encoder"
    return path if (path / "meta.json").is_file() else None


def stage_logger(cfg: DictConfig, label: str) -> dict[str, Any] | None:
    """The pipeline's ``logger`` group for one stage folder ``label`` (``stage2``, ``stage3/<target>``): a wandb run
    named ``label``, grouped under the pipeline's ``name`` unless ``logger.group`` / ``logger.run_name`` say
    otherwise. ``None`` when the config has no logger group (the stages' default, TensorBoard)."""
    spec = plain(cfg.get("logger"))
    if spec is None:
        return None
    spec = dict(spec)
    if spec.get("name") == "wandb":
        spec["group"] = spec.get("group") or str(cfg.get("name") or "pipeline")
        spec["run_name"] = f"{spec['run_name']}/{label}" if spec.get("run_name") else label
    return spec


def common(cfg: DictConfig, run_dir: Path, label: str) -> dict[str, Any]:
    """Keys every stage config takes from the pipeline config, for the stage folder ``run_dir / label``."""
    out = {"seed": int(cfg.seed), "device": str(cfg.device), "num_threads": cfg.get("num_threads"),
           "flush_denormal": cfg.get("flush_denormal", True), "output_dir": str(run_dir / label), "resume": True,
           "run_root": str(run_dir)}
    logger = stage_logger(cfg, label)
    return {**out, "logger": logger} if logger is not None else out


def stage_algo(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The ``algo`` overrides of one RL stage (``stage2`` | ``adapt`` | ``stage3``): the pipeline's
    ``algo_overrides`` that the stage's algorithm has (``configs/algo/<stage.algo>.yaml``: e.g. CQL's ``n_actions``
    and its actor's BC term are dropped for ``stage2.algo=iql``), then the stage's own ``<stage>.algo_overrides``
    over them, all of them (an unknown key there is an error of the algorithm's config)."""
    section = cfg.get(stage)
    own = section.get("algo_overrides") if section is not None else None
    common = plain(cfg.algo_overrides) or {}
    if section is not None and section.get("algo"):
        known = set(OmegaConf.load(CONFIG_DIR / "algo" / f"{section.algo}.yaml"))
        common = {k: v for k, v in common.items() if k in known}
    return {**common, **(plain(own) or {})}


RL_STAGES = ("stage2", "adapt", "stage3")
# free-form parts of the pipeline config (their own readers check them): collect_videos overrides, each RL stage's
# algorithm overrides, randomization entries, the robustness sweep's levels per factor
PIPELINE_FREE_KEYS = {"data": ("videos",), "stage2": ("algo_overrides",), "adapt": ("algo_overrides",),
                      "stage3": ("algo_overrides", "randomization"), "evaluate": ("settings", "robustness.levels")}


def check_algo_overrides(cfg: DictConfig) -> None:
    """Refuse at start, before any stage runs, what :func:`stage_algo` would otherwise pass on silently or leave to
    fail minutes later: a key of ``<stage>.algo_overrides`` that the stage's algorithm does not have, a key of the
    common ``algo_overrides`` that no algorithm has (a typo there was dropped by every stage), and a value out of
    range (:data:`robopretrain.config_checks.ALGO_CHECKS`)."""
    from robopretrain.config_checks import ALGO_CHECKS, check_section

    algos = {stage: str(cfg[stage].algo) for stage in RL_STAGES
             if cfg.get(stage) is not None and cfg[stage].get("algo")}
    options = sorted(p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml"))
    for stage, algo in algos.items():
        if algo not in options:
            raise ValueError(f"{stage}.algo={algo}: no such algorithm (robopretrain/configs/algo/: "
                             f"{', '.join(options)})")
    known = {stage: set(OmegaConf.load(CONFIG_DIR / "algo" / f"{algo}.yaml")) - {"name"}
             for stage, algo in algos.items()}
    for stage, keys in known.items():
        own = plain(cfg[stage].get("algo_overrides")) or {}
        unknown = sorted(set(own) - keys)
        if unknown:
            raise ValueError(f"{stage}.algo_overrides: {', '.join(unknown)} is not a setting of {stage}.algo="
                             f"{algos[stage]} (robopretrain/configs/algo/{algos[stage]}.yaml; its settings: "
                             f"{', '.join(sorted(keys))})")
    common = plain(cfg.algo_overrides) or {}
    anywhere = set().union(*(set(OmegaConf.load(p)) for p in (CONFIG_DIR / "algo").glob("*.yaml")))
    unknown = sorted(set(common) - anywhere)
    if unknown:
        raise ValueError(f"algo_overrides: {', '.join(unknown)} is a setting of no algorithm "
                         f"(robopretrain/configs/algo/*.yaml); the stages run "
                         f"{', '.join(f'{stage}.algo={algo}' for stage, algo in algos.items())}")
    check_section(cfg, "algo_overrides", ALGO_CHECKS, "pipeline")
    for stage in known:
        check_section(cfg, f"{stage}.algo_overrides", ALGO_CHECKS, "pipeline")


# The pipeline keys each stage reads (besides its algorithm settings, which changed_algo compares): a done stage rerun
# with other values is skipped, so the difference is named. Keys that cannot change a stage's result (process counts,
# checkpoint spacing, progress bars) are left out.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "data": ("seed", "image_size", "obs.rgb", "prior_tasks", "targets", "data"),
    "stage1": ("seed", "image_size", "data.videos", "stage1"),
    "stage2": ("seed", "obs", "prior_tasks", "encoder", "stage2"),
    "adapt": ("seed", "obs", "targets", "encoder", "adapt"),
    "stage3": ("seed", "obs", "targets", "encoder", "stage3"),
    "evaluate": ("seed", "targets", "evaluate"),
}
_NO_EFFECT = ("num_workers", "workers", "checkpoint_every", "progress", "algo_overrides")  # algo_overrides: changed_algo
# Stage 3 with several envs checkpoints when every env's episode has ended and restarts them all, so its spacing
# decides which episodes are collected (finetune.train.resumable_changes): there it is a setting like any other.
_SPACING = "stage3.checkpoint_every"


def _spacing_counts(cfg: DictConfig) -> bool:
    return int(OmegaConf.select(cfg, "stage3.num_envs", default=1) or 1) > 1


def stage_settings(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The values of :data:`STAGE_INPUTS` ``[stage]`` in ``cfg`` as ``{dotted key: value}`` (mappings flattened, lists
    kept whole), for ``done.json``; keys absent from ``cfg`` are left out, and those no result depends on
    (``_NO_EFFECT``; ``stage3.checkpoint_every`` counts with ``stage3.num_envs`` > 1)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if prefix.rsplit(".", 1)[-1] in _NO_EFFECT and not (prefix == _SPACING and _spacing_counts(cfg)):
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for key in STAGE_INPUTS.get(stage, ()):
        node = OmegaConf.select(cfg, key, default=None)
        if node is not None:
            walk(key, plain(node))
    if stage == "data" and "targets" in flat:
        flat["targets"] = collected_targets(flat["targets"])
    return flat


def collected_targets(entries: Any) -> Any:
    """The names of the targets (entries of ``targets``, as given or recorded) the data stage collects demos of:
    sim_envs targets without demos of their own. The others it does not read: a setting of a foreign target
    changed since a run was named as the data stage's, whose folder the advice then deleted for nothing (a new
    user's finding). An entry that is no target now stays as it is."""
    if not isinstance(entries, list):
        return entries
    out = []
    for entry in entries:
        try:
            target = as_target(entry)
        except (TypeError, ValueError):
            out.append(entry)
            continue
        if target.family == SIM_ENVS and not target.demos:
            out.append(target.name)
    return out


def changed_settings(cfg: DictConfig, stage: str, done: dict[str, Any], run_dir: Path | None = None) -> str:
    """How the pipeline keys a stage reads (:func:`stage_settings`) now differ from those its ``done.json``
    recorded (``key: old -> new``, ``; ``-joined); empty when they agree and for records without them. Paths under
    the run folder the record was written in (its ``run_dir``) count as moved with it to ``run_dir``."""
    if not isinstance(done.get("settings"), dict):
        return ""
    old, new = done["settings"], stage_settings(cfg, stage)
    if stage == "data" and "targets" in old:  # a record of before collected_targets: its whole entries
        old = {**old, "targets": collected_targets(old["targets"])}
    if run_dir is not None and done.get("run_dir") and done["run_dir"] != str(run_dir):
        from robopretrain.run_fingerprint import relocated

        old = relocated(old, [(str(done["run_dir"]), str(run_dir))])
    if _SPACING not in old or _SPACING not in new:  # recorded before it counted, or one env on either side (whose
        old, new = dict(old), dict(new)  # num_envs difference is named): nothing to compare
        old.pop(_SPACING, None)
        new.pop(_SPACING, None)
    return "; ".join(f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}"
                     for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


FILE_STAGES = ("adapt", "stage3")  # the stages that read the targets' own demo files (the data stage skips them)


def stage_input_files(cfg: DictConfig, stage: str, run_dir: Path) -> dict[str, Any] | None:
    """A run fingerprint (:func:`robopretrain.run_fingerprint.fingerprint`: size, times and content hash; paths under
    ``run_dir`` follow the run folder when it moves) of the user's files ``stage`` reads, each target's ``demos``, for
    ``done.json``; None when it reads none. A demo file rewritten at its path after the stage finished left the
    stage's results standing without a word."""
    from robopretrain import run_fingerprint

    files = {f"targets.{t.name}.demos": str(Path(t.demos).expanduser()) for t in targets_of(cfg)
             if t.demos and stage in FILE_STAGES}
    return run_fingerprint.fingerprint({}, files, home=run_dir) if files else None


def changed_input_files(cfg: DictConfig, stage: str, done: dict[str, Any], run_dir: Path) -> str:
    """How the files a finished stage read (its ``done.json``'s ``inputs``) now differ (``; ``-joined phrases of
    :func:`robopretrain.run_fingerprint.differences`); empty when they agree and for records without them."""
    from robopretrain import run_fingerprint

    if not isinstance(done.get("inputs"), dict):
        return ""
    now = stage_input_files(cfg, stage, run_dir) or run_fingerprint.fingerprint({}, {}, home=run_dir)
    return "; ".join(run_fingerprint.differences(done["inputs"], now))


def changed_algo(cfg: DictConfig, stage: str, done: dict[str, Any]) -> str:
    """How an RL stage's algorithm and overrides now differ from those its ``done.json`` recorded
    (``key: old -> new``, ``; ``-joined); empty when they agree, for other stages and for records without them."""
    if stage not in RL_STAGES or not isinstance(done.get("algo"), dict):
        return ""
    old, new = done["algo"], {"name": str(cfg[stage].algo), **stage_algo(cfg, stage)}
    return "; ".join(f"{k}: {old.get(k, '(default)')} -> {new.get(k, '(default)')}"
                     for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def target_demo_info(target: Target, cfg: DictConfig | None = None) -> Any:
    """The :class:`~robopretrain.data.hdf5.DatasetInfo` of ``target``'s own demos: a robomimic HDF5 file's, or (with
    ``cfg``) that of another format's cached conversion, made now as the adaptation makes it (so its parts, units and
    rewards are checked before any stage: they were only at the adaptation, after stage 2, a new user's finding);
    None for collected demos, and for another format without ``cfg``. Raises
    :class:`~robopretrain.data.episodes.ConversionError` for a source that cannot be converted."""
    path = Path(target.demos).expanduser() if target.demos else None
    if path is None or not path.exists():
        return None
    if cfg is not None and not (path.is_file() and path.suffix.lower() in (".hdf5", ".h5") and _is_robomimic(path)):
        from robopretrain.build import converted

        size = int(cfg.image_size) if list(cfg.obs.rgb) else None  # the agent's, as the adaptation converts it
        path = converted(path, OmegaConf.create(target_data(cfg, Path("."), target)), size)
    if not path.is_file() or path.suffix.lower() not in (".hdf5", ".h5"):
        return None
    stat = path.stat()  # the start-up checks read it several times: once per version of the file
    return _read_demo_info(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _is_robomimic(path: Path) -> bool:
    from robopretrain.data.convert import detect_format
    from robopretrain.data.episodes import ConversionError

    try:
        return detect_format(path) == "robomimic"
    except ConversionError:  # no format it knows: read as robomimic, whose reader names the problem
        return True


@functools.lru_cache(maxsize=8)
def _read_demo_info(path: str, mtime_ns: int, size: int) -> Any:
    from robopretrain.data.hdf5 import DatasetError, read_info

    try:
        return read_info(Path(path))
    except (DatasetError, OSError):
        return None


def target_task_names(cfg: DictConfig, target: Target) -> list[str]:
    """The task names the adaptation mixes in for ``target``: those of the demos it selects from the target's own
    robomimic HDF5 (:func:`robopretrain.build.data_task_ids`, as ``robopretrain.train`` reads the mix), else the
    target's name (the data stage collects sim_envs demos under it; other formats are named at their conversion)."""
    from robopretrain.build import data_task_ids

    info = target_demo_info(target, cfg)
    return [target.name] if info is None else list(data_task_ids(info, target_data(cfg, Path("."), target)))


def reward_free_demos(cfg: DictConfig, target: Target) -> list[str]:
    """The demos of ``target``'s own robomimic file that the adaptation selects and that have no ``rewards`` dataset
    (:meth:`robopretrain.data.hdf5.DatasetInfo.unrewarded`); empty for other formats and collected demos."""
    from robopretrain.build import selected_demos

    info = target_demo_info(target)  # another format: source_has_rewards says it in its own terms
    return [] if info is None else info.unrewarded(selected_demos(info, max_demos=int(cfg.data.target_demos)))


def check_target_sizes(cfg: DictConfig, target: Target) -> None:
    """Refuse, before any stage runs, a target the agent stage 2 trains on the prior (sim_envs) data cannot act on,
    which the adaptation found only after stage 2 (hours in): its slot outside the task one-hot (``obs.num_tasks``,
    else every sim_envs task); an ``obs.low_dim`` part the prior data lacks (it gives ``proprio`` and ``object``);
    and, for its own robomimic demos, a part they lack or a low-dim part of another size than the prior data's
    (``proprio`` 7, ``object`` 18: a Meta-World target's 4-D ``proprio``). Their cameras may be of any size: the
    adaptation and stage 3 read them resized to ``image_size`` (:func:`robopretrain.build.converted`). Actions: the
    target's robomimic demos and, for a target outside sim_envs, its env (built and reset once, its first
    observation checked for the agent's parts at the prior data's sizes; stepped once where sparse; not built for a
    target with ``probe_step: false``) must have the prior robot's action size (4), which the agent keeps from stage
    2 on."""
    import sim_envs.tasks as sim_tasks
    from sim_envs.env import ACTION_DIM, PROPRIO_DIM
    from sim_envs.tasks import OBJECT_DIM

    prior = {"proprio": PROPRIO_DIM, "object": OBJECT_DIM}
    wrong = [f"{part!r} is not in the prior (sim_envs) data, which has {sorted(prior)}"
             for part in list(cfg.obs.low_dim) if part not in prior]
    own_slot = target.family != SIM_ENVS or target.task_id is not None or bool(target.demos)
    slots = int(cfg.obs.num_tasks) if cfg.obs.get("num_tasks") else len(sim_tasks.TASKS)
    if own_slot and not 0 <= target.resolved_task_id() < slots:
        raise ValueError(f"target {target.name!r} ({target.family}): task slot {target.resolved_task_id()} is outside "
                         f"the agent's task one-hot of {slots} (obs.num_tasks, else every sim_envs task): set "
                         f"obs.num_tasks above {target.resolved_task_id()}")
    info = target_demo_info(target, cfg)
    if info is not None:
        for part in list(cfg.obs.low_dim):
            key = str(dict(target.obs_map).get(part, part))
            if key not in info.obs_specs:
                wrong.append(f"{part!r} is not in its demos ({key}; they have {sorted(info.obs_specs)})")
            elif part in prior and int(np.prod(info.obs_specs[key][0])) != prior[part]:
                wrong.append(f"{part!r} has size {int(np.prod(info.obs_specs[key][0]))} in its demos ({key}), "
                             f"{prior[part]} in the prior (sim_envs) data")
    if wrong:
        raise ValueError(f"target {target.name!r} ({target.family}): low-dim part {'; '.join(wrong)}; one agent "
                         "cannot read both: leave the part out (obs.low_dim without it, e.g. obs.low_dim=[] to act "
                         "from the cameras), or pretrain on data of the target's robot (python -m robopretrain.train "
                         "on its files, then python -m finetune.train)")
    for part in list(cfg.obs.rgb) if info is not None else []:
        key = str(dict(target.obs_map).get(part, part))
        if key not in info.obs_specs:
            raise ValueError(f"target {target.name!r}: camera {part!r} is not in its demos ({key}; they have "
                             f"{sorted(info.obs_specs)}): give demos with the agent's cameras, or map the part to "
                             "theirs (the target's obs_map)")
    sizes = [] if info is None else [(f"its demos ({target.demos})", int(info.action_dim))]
    if target.family != SIM_ENVS and target.probe_step:  # probe_step: false, a robot not to be touched before stage 3
        size = int(cfg.image_size)
        parts = ObsSpec(low_dim=tuple((p, prior[p]) for p in cfg.obs.low_dim),
                        rgb=tuple((c, (size, size, 3)) for c in cfg.obs.rgb), num_tasks=slots)
        sizes.append(("its env", target_action_dim(target, parts)))
    for what, dim in sizes:
        if dim != ACTION_DIM:
            raise ValueError(f"target {target.name!r} ({target.family}): {what}: {dim} action dims, the prior "
                             f"(sim_envs) robot's {ACTION_DIM}; the pipeline's agent keeps its action size from "
                             "stage 2 on: pretrain on data of the target's robot instead (python -m robopretrain.train "
                             "on its files, then python -m finetune.train)")


def target_action_dim(target: Target, parts: ObsSpec | None = None) -> int:
    """The number of action dimensions of ``target``'s env (built once and closed); a sparse target's env also
    takes one probe step, whose info must hold its ``success_key`` (:func:`robopretrain.build.probe_success_key`):
    a misspelt key was refused by stage 3's own check, after the data stage, stage 1 and stage 2 (a new user's
    finding). ``parts``: the observation parts the pipeline's agent reads (the prior data's sizes, its cameras at
    its image size), which the env's first observation must hold through the target's ``obs_map``, as stage 3
    checks (:func:`robopretrain.build.check_env_fits`; a ``ValueError`` naming the part). Called only where the
    target's ``probe_step`` allows stepping."""
    from robopretrain.build import probe_success_key
    from robopretrain.data.spec import SpecMismatchError, spec_from_shapes
    from robopretrain.envs.target import make_env

    env = make_env(target, parts.rgb_keys if parts else (), parts.image_size if parts else None,
                   checked=parts.low_dim_keys if parts else ())
    try:
        dim = int(np.prod(env.action_space.shape))
        if parts is not None:
            obs, _ = env.reset(seed=0)
            shapes = {k: (np.shape(v), np.asarray(v).dtype) for k, v in obs.items() if k != "task_id"}
            where = f"target {target.name!r}"
            try:
                spec_from_shapes(shapes, parts.low_dim_keys, parts.rgb_keys, parts.num_tasks, where=where,
                                 map_setting="target.obs_map", env=True).check_fits(
                    parts, mine=f"the env of {where}", theirs="the agent stage 2 trains on the prior data")
            except SpecMismatchError as exc:
                raise ValueError(str(exc)) from None
        if target.sparse:
            if parts is None:
                env.reset(seed=0)
            probe_success_key(env, target, dim, f"target {target.name!r}")
        return dim
    finally:
        env.close()


def check_target_demo_units(target: Target, info: Any) -> None:
    """Refuse, before any stage, a target whose demos are not in ``[-1, 1]`` units its agent acts in: stage 2's agent
    (trained on the prior sim_envs data) has no units of its own, so it acts on the target in the units the target
    declares (``action_normalization``), else in the env's own. Demos that record a rescaling (a converted file's
    ``env_args["action_normalization"]``), or whose actions leave ``[-1, 1]``, with no units declared by the target,
    were read back in the env's units and clipped (2/3 of them, a new user's finding) or refused at the adaptation,
    after stage 2."""
    if target.action_units is not None:  # read in the target's units (robopretrain.evaluation.acting_units)
        return
    from robopretrain.data.dataset import file_action_units
    from robopretrain.data.hdf5 import action_bounds
    from robopretrain.envs.action_units import auto_bounds

    recorded = file_action_units(info)
    if recorded is not None and auto_bounds(np.asarray(recorded.low), np.asarray(recorded.high)) is None:
        return  # recorded bounds inside [-1, 1] (a Minari Box of [-0.5, 0.5]): read in the env's units, nothing lost
    outside = None if recorded is not None else auto_bounds(*action_bounds(info.path, info))
    if recorded is None and outside is None:
        return
    units = recorded or outside
    said = ("record that their actions were rescaled to [-1, 1] from" if recorded is not None else
            "have actions outside [-1, 1], the robot's own units (low/high of the data:")
    copy = "" if str(info.path) == str(Path(str(target.demos)).expanduser()) else f" (their copy {info.path})"
    raise ValueError(f"target {target.name!r}: its demos {target.demos}{copy} {said} low={list(units.low)}, high="
                     f"{list(units.high)}{'' if recorded is not None else ')'}, but the target declares no "
                     "action_normalization: the agent, trained on the prior (sim_envs) data, would act in the env's "
                     "own units and read the demos mapped back to them and clipped; set the target's "
                     "action_normalization to the robot's action range {low: [...], high: [...]} (the file's: "
                     f"{{low: {list(units.low)}, high: {list(units.high)}}}), through which its env then takes the "
                     "agent's actions")


def check_targets(cfg: DictConfig) -> None:
    """Fail early on a bad target entry (its demos missing), or one stage 3's algorithm cannot train on (a dense
    reward with the BC term kept to successful episodes); warn where the adaptation's success filter meets a
    dense-reward target's demos."""
    import sim_envs.tasks as sim_tasks

    prior_slots = {sim_tasks.TASK_IDS[n]: n for n in prior_task_names(cfg) if n in sim_tasks.TASK_IDS}
    for target in targets_of(cfg):
        reward_settings(stage_algo(cfg, "stage3"), target)
        # before the data stage collects the prior demos (minutes): the target's own demos must be there
        if target.demos and not Path(target.demos).expanduser().exists():
            raise FileNotFoundError(f"target {target.name!r}: demos={target.demos} not found (a robomimic HDF5, or "
                                    "a LeRobot / Minari folder, D4RL HDF5 or OGBench .npz)")
        # a sim_envs target's collected demos carry its own name; its own demos go in its slot (target_data)
        own_slot = target.family != SIM_ENVS or target.task_id is not None or bool(target.demos)
        slot = target.resolved_task_id() if own_slot else None
        if bool(cfg.stage2.enabled) and slot in prior_slots:  # the adaptation mixes prior data only after stage 2
            other = [n for n in target_task_names(cfg, target) if n != prior_slots[slot]]
            if other:  # the adaptation's check (build.check_task_slots) would refuse it, after stage 2
                raise ValueError(
                    f"target {target.name!r} ({target.family}) takes task slot {slot} of the agent's one-hot, which "
                    f"prior task {prior_slots[slot]!r} holds (the target's demos are task {other[0]!r}); give the "
                    f"target a free slot (its task_id: {len(sim_tasks.TASKS)} or above, with obs.num_tasks above it)")
        if bool(cfg.stage2.enabled):
            check_target_sizes(cfg, target)
        info = target_demo_info(target, cfg)
        if info is not None and bool(cfg.stage2.enabled):  # refused or clipped at the adaptation, after stage 2
            check_target_demo_units(target, info)
        if info is not None:  # said in stage 3 too, hours later
            warn_success_termination(target, info)
        if info is not None and str(cfg.stage3.algo) != "bc":
            # stage 3 refuses a learned reward in its batches (its online steps get the env's reward): say so now
            refuse_learned_reward_online(info, float(cfg.stage3.offline_ratio), "stage3.offline_ratio")
        if info is not None and info.learned_reward and bool(cfg.stage2.enabled) and \
                str(cfg.adapt.algo) != "bc" and float(cfg.adapt.prior_fraction) > 0:  # stage 2 refuses it then
            raise ValueError(f"target {target.name!r}: its demos {info.path} hold a learned reward "
                             "(robopretrain.reward_model), and the adaptation mixes them with the prior data, whose "
                             "rewards are the env's: two reward functions in every batch; set adapt.prior_fraction=0 "
                             "(the target's demos alone) or adapt.algo=bc, or give demos with the env's rewards")
        free = reward_free_demos(cfg, target)
        if free and any(str(a) != "bc" for a in (cfg.adapt.algo, cfg.stage3.algo)):  # BC needs no reward
            raise ValueError(f"target {target.name!r}: {len(free)} of its demos ({', '.join(free[:3])}"
                             f"{', ...' if len(free) > 3 else ''}) have no rewards dataset, which the adaptation "
                             f"({cfg.adapt.algo}) and stage 3 ({cfg.stage3.algo}) need; write rewards into a copy "
                             "first (rewards from ep_meta success; or a reward learned from preference labels, "
                             "python -m robopretrain.reward_model data.path=... labels.path=<your labels>, which "
                             "stage 3 takes only with stage3.offline_ratio=0: its online steps get the env's reward) "
                             "and give that copy as the target's demos")
        if target.demos and any(str(a) != "bc" for a in (cfg.adapt.algo, cfg.stage3.algo)):
            from robopretrain.data.convert import source_has_rewards

            if source_has_rewards(Path(target.demos).expanduser()) is False:  # converted after stage 2 (hours)
                raise ValueError(f"target {target.name!r}: its demos {target.demos} record no rewards (a LeRobot "
                                 "dataset without next.reward, an OGBench file without rewards or masks), which the "
                                 f"adaptation ({cfg.adapt.algo}) and stage 3 ({cfg.stage3.algo}) need; convert it "
                                 "(python -m robopretrain.data.convert), write rewards into the copy (python -m "
                                 "robopretrain.reward_model, or rewards from ep_meta success) and give that copy")
        if target.family != SIM_ENVS and not target.demos:
            raise ValueError(f"target {target.name!r} ({target.family}): give its demos (target.demos: a robomimic "
                             "HDF5 or another format); the data stage collects demos of sim_envs targets only")
        if not target.sparse and success_filtered_bc(stage_algo(cfg, "adapt")):
            log.warning("adapt: target %s declares a dense reward, but the adaptation's BC term is kept to successful "
                        "episodes (actor_bc_filter: success, read from sparse-reward returns-to-go): on its demos, "
                        "whose dense returns do not mark success, what it keeps is not their successes; "
                        "+adapt.algo_overrides.actor_bc_filter=none imitates all the data (the prior data's failures "
                        "too)", target.name)


def log_stage_algos(cfg: DictConfig) -> None:
    """Log what each RL stage's algorithm gets from the overrides, and which common keys it lacks and so does not
    get (``--cfg job`` shows only the pipeline's own config)."""
    common_keys = set(plain(cfg.algo_overrides) or {})
    for stage in RL_STAGES:
        if not bool(cfg[stage].get("enabled", True)):  # stage2.enabled=false: it runs no algorithm
            continue
        algo = stage_algo(cfg, stage)
        dropped = sorted(common_keys - set(algo))
        log.info("%s (algo=%s): algo overrides %s%s", stage, cfg[stage].algo, algo,
                 f"; not its settings, so not passed: {', '.join(dropped)}" if dropped else "")


def check_encoder(cfg: DictConfig) -> None:
    """Refuse at start an ``encoder.mode``, ``encoder.precision`` or image encoder (``stage1.encoder`` and its
    ``encoder_kwargs``, built once here) the stages would refuse only once data and stage 1 have run."""
    from robopretrain.agent import ENCODER_MODES, EncoderSettings

    mode = str(cfg.encoder.mode)
    if mode not in ENCODER_MODES:
        raise ValueError(f"encoder.mode={mode!r}; expected one of {list(ENCODER_MODES)}")
    EncoderSettings(precision=str(cfg.encoder.get("precision", "float32")))
    if list(cfg.obs.rgb):  # the image encoder as the stages will build it (stage1.encoder=foo failed after the data)
        from robopretrain.nets.encoders import make_encoder

        name, kwargs = str(cfg.stage1.encoder), plain(cfg.stage1.encoder_kwargs) or {}
        try:
            make_encoder(name, int(cfg.image_size), **kwargs)
        except ValueError as exc:
            raise ValueError(f"stage1.encoder={name!r} with stage1.encoder_kwargs={kwargs}: {exc}") from None


def check_randomizations(cfg: DictConfig) -> None:
    """Refuse at start a malformed ``stage3.randomization`` or ``evaluate.settings`` entry (unknown key, level,
    factor or range) or robustness sweep factor, which stage 3 and the evaluation would refuse only after the earlier
    stages have run."""
    randomization(cfg.stage3.get("randomization"), where="stage3.randomization")
    for name, entry in dict(plain(cfg.evaluate.get("settings")) or {}).items():
        randomization(entry, where=f"evaluate.settings.{name}")
    if bool(cfg.evaluate.robustness.enabled):
        robustness_levels(cfg, compose("evaluate").factors)


def check_stage_configs(cfg: DictConfig, run_dir: Path) -> None:
    """Make every enabled stage's config as the stage will get it (for each target) and run that stage's own range
    checks at start: a value out of range (``stage2.steps=-1``, ``stage3.utd=0``, a robustness level
    ``evaluate.robustness.levels.distractors=[99]``) fails before the data stage, not after the stages before it have
    run. Each error names the pipeline section it comes from."""
    from robopretrain.config_checks import validate_offline_config, validate_online_config
    from robopretrain.evaluate import build_conditions
    from robopretrain.evaluate import validate_config as validate_evaluate_config
    from video_pretrain.train import validate_config as validate_stage1_config

    def check(section: str, validate: Callable[[DictConfig], Any], make: Callable[[], DictConfig]) -> None:
        try:
            validate(make())
        except ValueError as exc:
            raise ValueError(f"{exc} (in the stage config the pipeline makes from its {section} keys)") from None

    if bool(cfg.stage1.enabled):
        from sim_envs.collect_videos import validate_config as validate_videos_config

        check("data.videos", validate_videos_config, lambda: videos_config(cfg, run_dir))  # (after the demos, it was)
        check("stage1", validate_stage1_config, lambda: stage1_config(cfg, run_dir))
    if bool(cfg.stage2.enabled):
        from sim_envs.collect import validate_config as validate_collect_config

        check("data.prior_*", validate_collect_config, lambda: prior_collect_config(cfg, run_dir))
        check("stage2", validate_offline_config, lambda: stage2_config(cfg, run_dir, planned=True))
    for target in targets_of(cfg):
        check("stage3", validate_online_config, lambda: stage3_config(cfg, run_dir, target))  # first: the adaptation
        check("adapt", validate_offline_config, lambda: adapt_config(cfg, run_dir, target, planned=True))  # reads
        #                                                                            stage3.eval_episodes too
    if bool(cfg.evaluate.robustness.enabled):
        target = next(iter(targets_of(cfg)), None)
        if target is not None:  # its amounts (episodes, workers) and conditions (each level an int of distractors
            check("evaluate.robustness", lambda c: (validate_evaluate_config(c), build_conditions(c)),  # or a name)
                  lambda: robustness_config(cfg, run_dir / "stage3" / target.name, target, run_dir / "evaluate"))


def check_stage1_encoder(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse at start an ``encoder.mode`` that needs the stage-1 encoder when the run has none and will not train one:
    ``stage1.enabled=false``, or a stage 1 that finished disabled (stage 2 refused it only after the data stage, and
    the data stage skipped the videos)."""
    mode = str(cfg.encoder.mode)
    if mode == "scratch" or not list(cfg.obs.rgb) or encoder_checkpoint(run_dir):
        return
    if all(is_done(run_dir / s) for s in ("stage2", "adapt", "stage3")):
        return  # nothing left to run reads an encoder
    if is_done(run_dir / "stage1"):
        raise ValueError(f"pipeline config: encoder.mode={mode} starts from the stage-1 encoder, but this run's stage 1"
                         f" finished without one (stage1.enabled=false then); delete {run_dir / 'stage1'} and the "
                         "later stages' folders and run with stage1.enabled=true to train it now (the videos are "
                         "collected then), or use encoder.mode=scratch")
    if not bool(cfg.stage1.enabled):
        raise ValueError(f"pipeline config: encoder.mode={mode} starts from the stage-1 encoder, which "
                         "stage1.enabled=false does not train; use encoder.mode=scratch (an encoder trained from "
                         "random weights on the robot data) or stage1.enabled=true")


def encoder_group(cfg: DictConfig, run_dir: Path, planned: bool = False) -> dict[str, Any]:
    """The ``encoder`` keys of stages 2 and adapt; ``planned``: for a start-up check, the stage-1 encoder where
    stage 1 will write it when it has not run yet."""
    ckpt = encoder_checkpoint(run_dir)
    mode = str(cfg.encoder.mode)
    if ckpt is None and planned and bool(cfg.stage1.enabled):
        ckpt = run_dir / "stage1" / "encoder"
    if ckpt is None and mode != "scratch" and list(cfg.obs.rgb):
        raise ValueError(f"encoder.mode={mode} needs the stage-1 encoder at {run_dir / 'stage1' / 'encoder'}; run "
                         "stage 1 (stage1.enabled=true) or use encoder.mode=scratch")
    return {"mode": mode, "checkpoint": str(ckpt) if ckpt else None, "name": str(cfg.stage1.encoder),
            "kwargs": plain(cfg.stage1.encoder_kwargs) or {}, "shared": bool(cfg.encoder.shared),
            "augment_pad": int(cfg.encoder.augment_pad), "lr": float(cfg.encoder.lr),
            "precision": str(cfg.encoder.get("precision", "float32"))}


def target_data(cfg: DictConfig, run_dir: Path, target: Target) -> dict[str, Any]:
    """The ``data`` keys selecting a target's demos: its own file, or its task in the collected target file."""
    if target.demos:
        return {"path": str(target.demos), "max_demos": int(cfg.data.target_demos), "obs_map": dict(target.obs_map),
                "task_id": target.resolved_task_id()}
    return {"path": str(data_paths(run_dir)["target"]), "tasks": [target.name], "max_demos": int(cfg.data.target_demos)}


# --------------------------------------------------------------------------- stages


def collect_base(cfg: DictConfig) -> dict[str, Any]:
    """The collection settings every demo file of the data stage shares."""
    rgb = list(cfg.obs.rgb)
    return {"image_size": int(cfg.image_size), "render_images": bool(rgb), "num_workers": int(cfg.data.num_workers),
            "eye_in_hand": "eye_in_hand_image" in rgb, "seed": int(cfg.seed), "overwrite": True}


def prior_collect_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """``configs/collect.yaml`` as the data stage collects the prior tasks' demos (``data.prior_*`` keys)."""
    c = OmegaConf.load(CONFIG_DIR / "collect.yaml")
    c.merge_with({**collect_base(cfg), "tasks": prior_task_names(cfg),
                  "episodes_per_task": cfg.data.prior_episodes_per_task, "output": str(data_paths(run_dir)["prior"])})
    c.kinds = OmegaConf.create(plain(cfg.data.prior_kinds))
    return c


def stage_data(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Robot demos of the prior tasks, a handful of demos per sim_envs target, human-hand videos. A demo file an
    unfinished data stage already wrote is kept when it was collected with these settings, else refused
    (:func:`reuse_collected`)."""
    from sim_envs.collect import collect

    paths = data_paths(run_dir)
    base = collect_base(cfg)
    if bool(cfg.stage2.enabled):
        c = prior_collect_config(cfg, run_dir)
        if not reuse_collected(paths["prior"], c):
            collect(c, progress=bool(cfg.progress))
    sim_targets = [t.name for t in targets_of(cfg) if t.family == SIM_ENVS and not t.demos]
    if sim_targets:
        c = OmegaConf.load(CONFIG_DIR / "collect.yaml")
        c.merge_with({**base, "tasks": sim_targets, "episodes_per_task": int(cfg.data.target_demos),
                      "output": str(paths["target"]), "seed": int(cfg.seed) + 7})
        c.kinds = OmegaConf.create({"clean": {"fraction": 1.0, "noise": float(cfg.data.target_noise), "stop": None},
                                    "noisy": {"fraction": 0.0, "noise": 0.0, "stop": None},
                                    "failing": {"fraction": 0.0, "noise": 0.0, "stop": None}})
        if not reuse_collected(paths["target"], c):
            collect(c, progress=bool(cfg.progress))
    if bool(cfg.stage1.enabled):
        collect_human_videos(cfg, run_dir)
    return {k: str(v) for k, v in paths.items() if v.exists()}


def reuse_collected(path: Path, planned: DictConfig) -> bool:
    """Whether the data stage keeps the demo file ``path`` an earlier, unfinished session of it wrote (False: there is
    none, collect it). The file's own record of its collect config (``data.attrs["collection"]``) must equal
    ``planned`` but for the keys that leave its content as it is (:func:`robopretrain.build.collect_changes`);
    otherwise :class:`ValueError` names the settings that differ (a rerun with ``data.prior_episodes_per_task=3`` kept
    the 2-episode file and recorded 3 in ``done.json``). A file without the record is kept as it is."""
    if not path.is_file():
        return False
    changed = collect_changes(path, planned)
    if changed:
        raise ValueError(f"pipeline: {path} was collected by an earlier, unfinished data stage with other settings "
                         f"({'; '.join(changed)}); delete it to collect it with these, or run with the settings it "
                         "was collected with")
    if changed is not None:
        log.info("data: %s was collected by an earlier session with these settings: kept", path)
    return True


def collect_human_videos(cfg: DictConfig, run_dir: Path) -> None:
    """The human-hand videos for stage 1 into ``<run>/data/videos`` unless their manifest is there: the data stage
    collects them, and stage 1 does when the data stage ran with stage 1 disabled (enabled later in the same run)."""
    from sim_envs.collect_videos import collect_videos

    if (data_paths(run_dir)["videos"] / "manifest.csv").is_file():
        return
    collect_videos(videos_config(cfg, run_dir), progress=bool(cfg.progress))


# collect_videos keys the pipeline sets itself, and what sets them (data.videos may not: it would take no effect)
VIDEOS_SET_BY_PIPELINE = {"image_size": "image_size", "output": "run_dir: <run_dir>/data/videos",
                          "overwrite": "true", "seed": "seed"}


def videos_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The ``configs/collect_videos.yaml`` run of :func:`collect_human_videos` (``data.videos`` merged in, but for
    :data:`VIDEOS_SET_BY_PIPELINE`)."""
    c = OmegaConf.load(CONFIG_DIR / "collect_videos.yaml")
    c.merge_with({**(plain(cfg.data.videos) or {}), "image_size": int(cfg.image_size),
                  "output": str(data_paths(run_dir)["videos"]), "overwrite": True, "seed": int(cfg.seed)})
    return c


def stage1_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    c = OmegaConf.load(CONFIG_DIR / "video_pretrain.yaml")
    c.pop("defaults", None)
    c.pop("hydra", None)
    c.objective = OmegaConf.load(CONFIG_DIR / "objective" / f"{cfg.stage1.objective}.yaml")
    c.merge_with({
        "data": {"path": str(data_paths(run_dir)["videos"]), "generate": False},
        "encoder": {"name": str(cfg.stage1.encoder), "kwargs": plain(cfg.stage1.encoder_kwargs) or {}},
        "image_size": int(cfg.image_size), "steps": int(cfg.stage1.steps), "batch_size": int(cfg.stage1.batch_size),
        "lr": float(cfg.stage1.lr), "device": str(cfg.device), "seed": int(cfg.seed), "progress": bool(cfg.progress),
        "num_threads": cfg.get("num_threads"), "flush_denormal": cfg.get("flush_denormal", True),
        "output_dir": str(run_dir / "stage1"), "output": str(run_dir / "stage1" / "encoder"), "run_root": str(run_dir),
        "eval_every": max(1, int(cfg.stage1.steps) // 3), "checkpoint_every": max(1, int(cfg.stage1.steps) // 3),
    })
    logger = stage_logger(cfg, "stage1")
    if logger is not None:
        c.logger = logger
    return c


def stage_stage1(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Video pretraining of the encoder (skipped, with nothing saved, when ``stage1.enabled`` is false)."""
    if not bool(cfg.stage1.enabled):
        return {"encoder": None, "skipped": "stage1.enabled=false (no video pretraining)"}
    collect_human_videos(cfg, run_dir)
    from video_pretrain.train import train

    path = train(stage1_config(cfg, run_dir), run_dir / "stage1")
    return {"encoder": str(path), "objective": str(cfg.stage1.objective)}


def stage2_config(cfg: DictConfig, run_dir: Path, planned: bool = False) -> DictConfig:
    """Stage 2's ``configs/robopretrain.yaml`` run (``planned``: :func:`encoder_group`'s)."""
    s = cfg.stage2
    episodes = int(s.eval_episodes)
    return compose("robopretrain", {"algo": str(s.algo)}, {
        **common(cfg, run_dir, "stage2"), "algo": stage_algo(cfg, "stage2"), "obs": plain(cfg.obs),
        "encoder": encoder_group(cfg, run_dir, planned), "data": {"path": str(data_paths(run_dir)["prior"])},
        "train": {"steps": int(s.steps), "eval_every": int(s.eval_every) or int(s.steps),
                  "eval_episodes": episodes, "eval_targets": None if episodes > 0 else [],
                  "checkpoint_every": int(s.checkpoint_every), "progress": bool(cfg.progress),
                  "cuda_graph": bool(cfg.cuda_graph),
                  "compile": bool(cfg.compile)}})


def stage_stage2(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Task-ID conditioned multi-task offline RL on the prior tasks; per-task success in sim at the end."""
    if not bool(cfg.stage2.enabled):
        return {"skipped": "stage2.enabled=false (no multi-task pretraining)"}
    from robopretrain.train import run

    return {"checkpoint": str(run(stage2_config(cfg, run_dir)))}


def adapt_config(cfg: DictConfig, run_dir: Path, target: Target, planned: bool = False) -> DictConfig:
    """The adaptation's ``configs/robopretrain.yaml`` run for ``target`` (``planned``: :func:`encoder_group`'s)."""
    a = cfg.adapt
    data = target_data(cfg, run_dir, target)
    overrides: dict[str, Any] = {
        **common(cfg, run_dir, f"adapt/{target.name}"), "algo": stage_algo(cfg, "adapt"), "obs": plain(cfg.obs),
        "encoder": encoder_group(cfg, run_dir, planned),
        "train": {"steps": int(a.steps), "eval_every": int(a.steps), "eval_episodes": int(cfg.stage3.eval_episodes),
                  "eval_targets": [target.to_dict()], "checkpoint_every": int(a.checkpoint_every),
                  "progress": bool(cfg.progress), "cuda_graph": bool(cfg.cuda_graph),
                  "compile": bool(cfg.compile)}}
    if bool(cfg.stage2.enabled):
        overrides["init"] = str(run_dir / "stage2")
        overrides["data"] = {"path": str(data_paths(run_dir)["prior"]),
                             "mix": {**data, "fraction": 1.0 - float(a.prior_fraction)}}
    else:
        overrides["data"] = data
    return compose("robopretrain", {"algo": str(a.algo)}, overrides)


def stage_adapt(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Per target: continue offline on ``prior_fraction`` prior / the rest target data (target only without stage 2)."""
    from robopretrain.train import run

    out = {}
    for target in targets_of(cfg):
        folder = run_dir / "adapt" / target.name
        if not is_done(folder):
            t0 = time.perf_counter()
            write_json(folder / DONE, {"checkpoint": str(run(adapt_config(cfg, run_dir, target))),
                                       "seconds": time.perf_counter() - t0})
        out[target.name] = read_json(folder / DONE)
    return out


def stage3_config(cfg: DictConfig, run_dir: Path, target: Target) -> DictConfig:
    s = cfg.stage3
    online = {k: s[k] for k in ("env_steps", "num_envs", "asynchronous", "utd", "offline_ratio", "buffer_capacity",
                                "eval_every", "eval_episodes", "checkpoint_every")}
    return compose("finetune", {"algo": str(s.algo)}, {
        **common(cfg, run_dir, f"stage3/{target.name}"), "algo": stage_algo(cfg, "stage3"),
        "checkpoint": str(run_dir / "adapt" / target.name), "target": target.to_dict(),
        "data": target_data(cfg, run_dir, target), "dr": plain(s.randomization),
        "online": {**plain(online), "progress": bool(cfg.progress), "cuda_graph": bool(cfg.cuda_graph),
                  "compile": bool(cfg.compile)}})


def stage_stage3(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Per target: Cal-QL online with randomization, ``num_envs`` envs in parallel, from the adapted agent."""
    from finetune.train import run

    out = {}
    for target in targets_of(cfg):
        folder = run_dir / "stage3" / target.name
        if not is_done(folder):
            t0 = time.perf_counter()
            res = run(stage3_config(cfg, run_dir, target))
            last = res["history"][-1]
            write_json(folder / DONE, {"final_success": last["eval/success"],
                                       "cumulative_regret": last.get("train/cumulative_regret"),
                                       "seconds": time.perf_counter() - t0})
        out[target.name] = read_json(folder / DONE)
    return out


def robustness_levels(cfg: DictConfig, factors: Any) -> dict[str, list]:
    """``evaluate.robustness.levels`` narrowed to ``evaluate.robustness.select`` (when set): ``{factor: [level,
    ...]}``; :class:`ValueError` for a factor outside ``factors`` (configs/evaluate.yaml's) or ``levels``."""
    rob = cfg.evaluate.robustness
    levels = dict(plain(rob.levels) or {})
    unknown = [f for f in levels if f not in factors]
    if not levels or unknown:
        raise ValueError(f"evaluate.robustness.levels: {'unknown factor(s) ' + str(unknown) if unknown else 'empty'}; "
                         f"expected a mapping of some of {list(factors)} to their levels")
    select = plain(rob.get("select"))
    if select is not None:
        select = [select] if isinstance(select, str) else list(select)
        if not select or any(f not in levels for f in select):
            raise ValueError(f"evaluate.robustness.select={select}; expected some of the factors of "
                             f"evaluate.robustness.levels: {list(levels)}")
        levels = {f: levels[f] for f in select}
    return {f: list(lv) if isinstance(lv, (list, tuple)) else [lv] for f, lv in levels.items()}


def robustness_config(cfg: DictConfig, checkpoint: Path, target: Target, out_dir: Path) -> DictConfig:
    """The ``configs/evaluate.yaml`` run of ``evaluate.robustness``: its factors at its levels, its episodes."""
    rob = cfg.evaluate.robustness
    c = compose("evaluate")
    levels = robustness_levels(cfg, c.factors)
    for factor, lv in levels.items():
        c.factors[factor].levels = lv
    c.merge_with({"checkpoint": str(checkpoint), "target": target.to_dict(), "output_dir": str(out_dir),
                  "episodes": int(rob.episodes), "workers": int(rob.workers), "device": str(cfg.device),
                  "progress": bool(cfg.progress), "select": list(levels), "video": {"enabled": bool(rob.video)}})
    return c


def stage_evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Per target: success of the fine-tuned policy in each ``evaluate.settings`` randomization, and with its cameras
    blinded (``evaluate.blind``: black frames, a frame of another episode) on the same nominal episodes; a rollout GIF;
    a short robustness sweep (``evaluate.robustness``) of each sim_envs target's stage-3 checkpoint."""
    from robopretrain.checkpoint import load_agent
    from robopretrain.evaluate import evaluate_robustness
    from robopretrain.evaluation import evaluate

    out_dir = run_dir / "evaluate"
    ev = cfg.evaluate
    results: dict[str, Any] = {}
    robustness: dict[str, Any] = {}
    for target in targets_of(cfg):
        folder = run_dir / "stage3" / target.name
        agent, _ = load_agent(folder, device=str(cfg.device))
        per: dict[str, Any] = {}
        for setting, rand in dict(plain(ev.settings)).items():
            if not target.randomizable and rand != "none":
                continue
            # the first setting evaluated for this target is filmed (the first listed was: a Meta-World or gym
            # target, which skips a randomized one, got no GIF when that came first)
            video = out_dir / f"rollout_{target.name}.gif" if (not per and bool(ev.video)) else None
            per[setting] = evaluate(agent, target, int(ev.episodes), randomization=rand, video_path=video)
        if agent.spec.rgb:
            for mode in list(ev.get("blind") or []):
                per[f"blind_{mode}"] = evaluate(agent, target, int(ev.episodes), blind=str(mode))
        results[target.name] = per
        rob = ev.get("robustness")
        if rob is not None and bool(rob.enabled) and target.randomizable:
            from robopretrain.report import robustness_rows

            info = evaluate_robustness(robustness_config(cfg, folder, target, out_dir / "robustness" / target.name))
            plot = Path(info["plot"]).resolve() if info.get("plot") else None  # paths relative to the run folder:
            robustness[target.name] = {  # a moved run folder still reports and resumes
                "eval_info": (Path("evaluate") / "robustness" / target.name / "eval_info.json").as_posix(),
                "plot": plot.relative_to(run_dir.resolve()).as_posix() if plot is not None else None,
                "rows": robustness_rows(info)}
    write_json(out_dir / "results.json", results)
    write_json(out_dir / "robustness.json", robustness)
    return results


# --------------------------------------------------------------------------- driver


SESSIONS = "sessions.jsonl"


def record_session(folder: Path) -> list[dict[str, Any]]:
    """Append this start of a stage to ``<folder>/sessions.jsonl``; returns every start recorded (oldest first). A
    stage killed and rerun resumes from its checkpoints: ``done.json`` then counts its sessions, because its
    ``seconds`` are the last session's alone."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / SESSIONS, "a") as f:
        f.write(json.dumps({"started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    return read_jsonl(folder / SESSIONS)


def refused_folder(run_dir: Path, stage: str, where: str) -> Path:
    """The folder of the run that refused to resume: ``<run>/<stage>``, or ``<run>/<stage>/<target>`` for the
    per-target stages (the checkpoint ``where`` lies under it), so that the other targets' finished runs are kept."""
    folder = run_dir / stage
    try:
        parts = Path(where).resolve().relative_to(folder.resolve()).parts
    except ValueError:
        return folder
    return folder / parts[0] if stage in ("adapt", "stage3") and len(parts) > 1 else folder


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the half-written ``.<name>.<...>.tmp`` files and folders a killed session left under ``folder`` (a demo
    file's writer, a JSON record, a checkpoint folder: each writes a hidden temporary and renames it when complete);
    returns them. Only the pipeline's own stage runs in its folder meanwhile (one pipeline per run folder)."""
    stale = sorted(folder.rglob(".*.tmp"))
    stale = [p for p in stale if not any(q in p.parents for q in stale)]  # a partial folder's own contents aside
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        log.info("%s: removed %d partial file(s) of an interrupted session: %s", folder, len(stale),
                 ", ".join(p.name for p in stale[:3]) + (", ..." if len(stale) > 3 else ""))
    return stale


def prepare_config(cfg: DictConfig) -> None:
    """In place, before the data stage (the paper preset's is hours of collection): one name given alone where a
    list is expected becomes a list of it (``targets=Reach``), ``device`` the device it names on this machine
    (``auto`` -> cpu or cuda: every stage gets that), and the amounts later stages read are checked."""
    one_name_as_list(cfg)
    for section, checks in PIPELINE_CHECKS.items():  # types first: the stages read these with int() / bool()
        check_section(cfg, section, checks, "pipeline")
    objectives = sorted(p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml"))
    if str(cfg.stage1.objective) not in objectives:  # was: "[Errno 2] No such file or directory: .../icvff.yaml"
        raise ValueError(f"pipeline config: stage1.objective={cfg.stage1.objective!r}; expected one of {objectives}")
    cfg.device = resolve_device(cfg.device, "pipeline")
    check_amounts(cfg)


def check_amounts(cfg: DictConfig) -> None:
    """``data.target_demos`` (an integer >= 1), ``adapt.prior_fraction`` (in [0, 1]), ``evaluate.episodes`` (an
    integer >= 1) and ``evaluate.blind`` (a list of blind modes; one mode alone is made a list by
    :func:`prepare_config`) at start: the stages that read them (the target's collection, the adaptation, the
    evaluation) come after the prior data and stage 2 (the evaluation's failed after every training stage had run)."""
    from sim_envs.wrappers import BLIND_MODES

    episodes = cfg.evaluate.get("episodes")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"evaluate.episodes={episodes!r}; expected an integer >= 1 (episodes per target and setting)")
    blind = plain(cfg.evaluate.get("blind")) or []
    if not isinstance(blind, list) or any(m not in BLIND_MODES for m in blind):
        raise ValueError(f"evaluate.blind={blind!r}; expected a list of {list(BLIND_MODES)} (or [] for none)")
    demos = cfg.data.get("target_demos")
    if isinstance(demos, bool) or not isinstance(demos, int) or demos < 1:
        raise ValueError(f"pipeline config: data.target_demos={demos!r}; expected an integer >= 1 (the target's "
                         "demos for the adaptation)")
    fraction = cfg.adapt.get("prior_fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"pipeline config: adapt.prior_fraction={fraction!r}; expected a number in [0, 1] (the share "
                         "of each adaptation batch from the prior data)")


def check_stage_order(run_dir: Path) -> None:
    """Refuse a run folder where a stage is unfinished but a later one finished (:class:`ValueError`, naming the
    folders to delete). The rerun would run the earlier stage again and skip the later ones, so the report would mix
    the new stage's results with later stages' results computed from its earlier run (a user who deleted only
    ``stage3/`` got stage 3 retrained and its old evaluation reported beside it)."""
    unfinished = next((s for s in STAGES if not is_done(run_dir / s)), None)
    if unfinished is None:
        return
    later = [s for s in STAGES[STAGES.index(unfinished) + 1:] if is_done(run_dir / s)]
    if later:
        raise ValueError(f"pipeline: stage {unfinished} of {run_dir} is not finished but the later stage(s) "
                         f"{', '.join(later)} are: running {unfinished} again would leave their results from its "
                         "earlier run, and the report would mix both. Delete "
                         f"{', '.join(str(run_dir / s) for s in later)} too, or choose another run_dir")


def run_pipeline(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run every unfinished stage in order; returns ``{stage: "skipped" | seconds}`` and the report path."""
    cpu_settings.apply_from_config(cfg)
    # keys no stage reads (+stage3.transfer..., +gap=..., a typo) were dropped silently and shown in the report
    check_top_level_keys(cfg, "pipeline", free=PIPELINE_FREE_KEYS)
    prepare_config(cfg)
    videos = set(plain(cfg.data.get("videos")) or {})  # overrides of configs/collect_videos.yaml: its keys only
    known = set(OmegaConf.load(CONFIG_DIR / "collect_videos.yaml")) - {"defaults", "hydra"}
    if videos - known:
        bad = ", ".join(f"data.videos.{k}" for k in sorted(videos - known))
        raise ValueError(f"pipeline config: unknown key(s) {bad}; valid keys: {', '.join(sorted(known))} "
                         "(robopretrain/configs/collect_videos.yaml)")
    if videos & set(VIDEOS_SET_BY_PIPELINE):  # replaced by the pipeline's own (videos_config): no effect, silently
        bad = ", ".join(f"data.videos.{k} (the pipeline's {VIDEOS_SET_BY_PIPELINE[k]})"
                        for k in sorted(videos & set(VIDEOS_SET_BY_PIPELINE)))
        raise ValueError(f"pipeline config: {bad} cannot be set here: the pipeline sets them for the videos it "
                         "collects; set those pipeline keys instead")
    check_algo_overrides(cfg)  # every start-up check before the run folder exists: a refused config leaves none
    check_encoder(cfg)
    check_randomizations(cfg)
    log_stage_algos(cfg)
    run_dir = Path(run_dir) if run_dir is not None else config_folder(cfg, "run_dir")
    run_dir = Path(os.path.abspath(run_dir))  # the stages' configs name paths under it: absolute, so a moved
    #                                             folder maps them (run_fingerprint.relocation)
    refuse_busy_folder(run_dir)  # before the targets' checks step their envs (a robot, maybe) and convert demos
    check_targets(cfg)
    check_stage1_encoder(cfg, run_dir)  # reads what the run folder holds, so only now; still before it is made
    check_stage_configs(cfg, run_dir)
    check_stage_order(run_dir)
    with run_folder_lock(run_dir):  # a second pipeline in this run folder is refused, not resuming its stages too
        return _run_stages(cfg, run_dir)


def _run_stages(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """:func:`run_pipeline`'s stages in order, once its checks passed and its run folder is this process's."""
    from robopretrain.report import REPORT, log_report, write_report

    steps: dict[str, Callable[[], Any]] = {
        "data": lambda: stage_data(cfg, run_dir),
        "stage1": lambda: stage_stage1(cfg, run_dir),
        "stage2": lambda: stage_stage2(cfg, run_dir),
        "adapt": lambda: stage_adapt(cfg, run_dir),
        "stage3": lambda: stage_stage3(cfg, run_dir),
        "evaluate": lambda: stage_evaluate(cfg, run_dir),
    }
    ran: dict[str, Any] = {}
    for stage in STAGES:
        if is_done(run_dir / stage):
            log.info("stage %s: already done (%s), skipped", stage, run_dir / stage / DONE)
            done = read_json(run_dir / stage / DONE)
            changed = "; ".join(c for c in (changed_algo(cfg, stage, done), changed_settings(cfg, stage, done, run_dir),
                                            changed_input_files(cfg, stage, done, run_dir)) if c)
            if changed:
                log.warning("stage %s: already done with other settings or files (%s), so these take no effect; "
                            "to run it again with them, delete %s (and the later stages' folders) or choose another "
                            "run_dir", stage, changed, run_dir / stage)
            elif not isinstance(done.get("settings"), dict):  # a record written before stages recorded them
                log.warning("stage %s: already done by an older version that did not record the settings it ran "
                            "with, so whether these differ cannot be checked; to run it with these, delete %s (and "
                            "the later stages' folders) or choose another run_dir", stage, run_dir / stage)
            ran[stage] = "skipped"
            continue
        report = run_dir / REPORT
        if report.is_file():  # its figures are the earlier stages' (deleted to redo, or unfinished): not this run's
            report.unlink()
            log.info("stage %s runs: removed the earlier %s (a new one is written when every stage is done)", stage,
                     report)
        torch.manual_seed(int(cfg.seed) + STAGES.index(stage))
        np.random.seed(int(cfg.seed) + STAGES.index(stage))
        start = time.perf_counter()
        sessions = record_session(run_dir / stage)
        if len(sessions) > 1:
            remove_partial_files(run_dir / stage)
        log.info("stage %s: running%s", stage, f" (session {len(sessions)}: resumes where the last one stopped)"
                 if len(sessions) > 1 else "")
        try:
            result = steps[stage]()
        except ResumeRefusal as err:  # the stage's advice (resume=false, output_dir) is not the pipeline's
            folder = refused_folder(run_dir, stage, err.where)
            raise err.advising(f"the pipeline resumes every stage it finds begun: to run {folder.relative_to(run_dir)}"
                               f" afresh with these settings, delete {folder} (and the later stages' folders), or "
                               "choose another run_dir") from None
        seconds = time.perf_counter() - start
        algo = {"algo": {"name": str(cfg[stage].algo), **stage_algo(cfg, stage)}} if stage in RL_STAGES else {}
        write_json(run_dir / stage / DONE, {"stage": stage, "seconds": seconds, "result": result,
                                            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **algo,
                                            "sessions": len(sessions), "first_started": sessions[0]["started"],
                                            "settings": stage_settings(cfg, stage), "machine": machine_record(),
                                            "run_dir": str(run_dir), "inputs": stage_input_files(cfg, stage, run_dir)})
        ran[stage] = seconds
        skipped = result.get("skipped") if isinstance(result, dict) else None
        print(f"[pipeline] {stage} " + (f"skipped: {skipped}" if skipped else f"done in {seconds:.1f} s"), flush=True)
    report = write_report(cfg, run_dir)
    log_report(cfg, run_dir, stage_logger(cfg, "report"))
    return {"stages": ran, "report": str(report), "run_dir": str(run_dir)}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pipeline")
@friendly_errors
def main(cfg: DictConfig) -> None:
    out = run_pipeline(cfg)
    results = read_json(Path(out["run_dir"]) / "evaluate" / "results.json")
    for name, per in results.items():
        print(f"target {name}: " + ", ".join(f"{k} success {v['success']:.2f}" for k, v in per.items()))
    print(f"report: {out['report']}")


def cli_main() -> None:
    """``python -m robopretrain.pipeline`` and its console script: one-line config errors, then Hydra."""
    run_hydra(main, "pipeline")


if __name__ == "__main__":
    cli_main()
