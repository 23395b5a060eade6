"""Stage 2: offline (multi-task) training of CQL / Cal-QL / IQL / BC / TD3+BC / AWAC / ReBRAC on robomimic HDF5, for
any observation spec.

``python -m robopretrain.train`` (Hydra, ``configs/robopretrain.yaml``), or :func:`run` from Python;
``torchrun --nproc_per_node=N -m robopretrain.train ...`` trains data-parallel.

* Data: ``data.path`` (an HDF5 file), or collected first with :func:`sim_envs.collect.collect` when
  ``data.generate=true``. ``data.mask`` / ``data.tasks`` / ``data.max_demos`` pick demos; ``data.obs_map`` maps our
  part names to the file's keys (robosuite's ``robot0_eef_pos``, ...).
* Observations: the ``obs`` group names the parts (``obs.low_dim``, ``obs.rgb`` cameras); their sizes, the action size
  and the task one-hot size (``obs.num_tasks: null``: from the data) come from the file. Low-dim parts are normalised
  by the data's statistics (``obs.normalize``), stored in the checkpoint. Cameras go through the ``encoder`` group's
  image encoder (transfer modes from a stage-1 checkpoint: finetune / frozen / frozen_cached / scratch).
* ``init``: continue from a checkpoint's weights (its networks and normalisation; e.g. PTR's target adaptation after
  multi-task pretraining), with ``data.mix`` mixing a second dataset into every batch (``data.mix.fraction`` of each
  batch: 0.1 for PTR's 90% prior / 10% target).
* Rewards: the sparse {0, 1} reward times ``algo.reward_scale`` plus ``algo.reward_bias`` (Cal-QL: x10 - 5), before
  the Monte-Carlo returns-to-go (REFERENCE.md, Stage 3).
* Evaluation (optional, ``train.eval_targets``): success / return / length on fixed evaluation episodes of each
  target in sim; by default the data's own tasks when its ``env_args`` name a known env family (sim_envs, Meta-World),
  none otherwise, ``[]`` for none. The calibration gap is logged next to it. Checkpoints are written before each
  evaluation and a failed evaluation is a warning, so it never costs the run its checkpoint.
* The loop is :func:`robopretrain.loops.offline.train_offline`: NaN guard, data-parallel under torchrun,
  self-describing resumable checkpoints (``<run>/checkpoints``), ``metrics.jsonl`` and TensorBoard (``<run>/tb``).
  Rerunning the same command resumes; a run folder written with other data or settings (another file at the same
  path, another algorithm or observation spec; :mod:`robopretrain.run_fingerprint`) is refused with one line
  naming what changed (``resume=false`` starts fresh).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from robopretrain import build, run_fingerprint
from robopretrain import distributed as dist_utils
from robopretrain.agent import EncoderSettings
from robopretrain.agent_parallel import average_gradients, broadcast_agent, gather_results
from robopretrain.checkpoint import (CheckpointError, check_agent_fits, clear_previous_run, load_agent, load_latest,
                                     recorded_data_files, refuse_other_stage, refuse_source_in_run, save_agent)
from robopretrain.cli import CONFIG_DIR, config_folder, friendly_errors, run_hydra
from robopretrain.config_checks import resolve_device, validate_offline_config
from robopretrain.data.dataset import data_action_units, warn_ignored_action_bounds
from robopretrain.data.hdf5 import read_info
from robopretrain.data.replay import MixedSampler
from robopretrain.distributed import DistInfo
from robopretrain.envs.action_units import describe as describe_units
from robopretrain.envs.target import GYM, Target, as_target, slot_note, with_task_slot
from robopretrain.nets.encoder_io import resolve_encoder_dir
from robopretrain.files import run_folder_lock
from robopretrain.evaluation import DEMO_UNITS, calibration, demo_action_units, demo_units_entry, evaluate
from robopretrain.loops.offline import OfflineSettings, calibration_rows, resume, train_offline

log = logging.getLogger(__name__)

# settings a resumed run may change (they do not change what is computed, or a resumed run may extend them)
RESUMABLE_CHANGES = (*run_fingerprint.HARMLESS_KEYS, "steps", "data.storage", "data.workers", "data.mix.storage",
                     "data.mix.workers", "eval_episodes", "eval_targets", "eval_at_start",
                     "keep_checkpoints", "calibration_batch", "dr", "data.generate", "data.regenerate", "data.collect",
                     # the return a Decision Transformer is asked for: its evaluations only, not its training
                     "algo.target_return",
                     # the setting as given (a stage-1 run folder, or its encoder folder): the encoder folder it
                     # resolves to is compared instead, content included (the fingerprint's inputs)
                     "encoder.checkpoint")


def summarize(per_target: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{target}/{metric}`` for every target (when there are several), the means over targets, and ``episodes``:
    the fewest episodes any target ran (each runs ``eval_episodes``), which the pipeline's report prints beside the
    success."""
    out: dict[str, float] = {}
    if len(per_target) > 1:
        for name, res in per_target.items():
            out.update({f"{name}/{k}": v for k, v in res.items()})
    for k in ("success", "return", "length"):
        out[k] = float(np.mean([r[k] for r in per_target.values()]))
    if all("episodes" in r for r in per_target.values()):
        out["episodes"] = int(min(r["episodes"] for r in per_target.values()))
    return out


def fixed_one_hot(setting: str, init: Any) -> str | None:
    """What a refusal of task ids outside the one-hot advises when an init checkpoint fixed its size (None: stage 2's
    own advice, ``obs.num_tasks`` included, applies)."""
    if init is None:
        return None
    return (f"the one-hot's size is the init checkpoint's ({init.path}): put the data in one of its slots with "
            f"{setting}, or train without init= and a larger obs.num_tasks")


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """Train offline as ``cfg`` says; returns the folder of the final checkpoint. Resumes when it can.

    Under torchrun (``WORLD_SIZE`` > 1) it trains data-parallel (NCCL on GPUs, gloo on CPU); rank 0 writes.
    """
    validate_offline_config(cfg)
    build.randomization(cfg.get("dr"))  # the evaluation envs' entry, checked before data collection builds any env
    if (cfg.get("obs") or {}).get("rgb") and not cfg.get("init"):  # the encoder settings, before any data is read
        EncoderSettings.from_mapping(build.plain(cfg.get("encoder")) or {}).resolved_mode()
    run_dir = Path(run_dir) if run_dir is not None else config_folder(cfg, "output_dir")
    return dist_utils.run_on_ranks(lambda dinfo, device: _run_holding(cfg, run_dir, dinfo, device),
                                   torch.device(resolve_device(cfg.get("device", "cpu"), "robopretrain")))


def _run_holding(cfg: DictConfig, run_dir: Path, dinfo: DistInfo, device: torch.device) -> Path:
    """:func:`_run` with rank 0 holding the run folder's writer lock (a second process refused, not resuming too)."""
    with run_folder_lock(run_dir, active=dinfo.is_main):
        return _run(cfg, run_dir, dinfo, device)


def mix_action_units(agent_units: Any, eval_targets: Any, path: Path, info: Any, tasks: Mapping[str, int]) -> Any:
    """The units the mixed-in data are read in: the agent's own, else those its evaluation targets of the mix's
    tasks (all of them where none is named so) declare (PTR's adaptation: the target, whose demos the mix is), by
    :func:`robopretrain.evaluation.demo_action_units`; targets that declare different units are warned about.
    ``tasks``: the mix's task names (to their slots, :func:`robopretrain.build.data_task_ids`)."""
    entries = build.plain(eval_targets)
    entries = [entries] if isinstance(entries, (str, Mapping)) else list(entries or [])
    targets = [as_target(e) for e in entries]
    matching = [t for t in targets if t.name in tasks] or targets
    declared = {describe_units(t.action_units) for t in matching if t.action_units is not None}
    if agent_units is None and len(declared) > 1:
        log.warning("data.mix.path=%s: the evaluation targets declare different action units (%s): the mix is read "
                    "in the env's own units; name one target of its tasks in train.eval_targets", path,
                    "; ".join(sorted(declared)))
    return demo_action_units(agent_units, matching, path, info)


def _run(cfg: DictConfig, run_dir: Path, dinfo: DistInfo, device: torch.device) -> Path:
    refuse_other_stage(run_dir, "offline")  # a stage-3 run's folder: its checkpoints are not this run's to replace
    if dinfo.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    build.setup_torch(cfg)
    ckpt_root = run_dir / "checkpoints"
    # the converted copies this run's checkpoints name outlive an edit of their source: a resume refused on the
    # edited source works again once it is restored
    kept = recorded_data_files(ckpt_root) if cfg.get("resume", True) else []
    with dist_utils.main_first(dinfo):  # rank 0 generates the data, the others then reuse it
        data_path = build.resolve_data_path(cfg.data, run_dir, keep=kept, prune=not cfg.get("resume", True))
    info = read_info(data_path)
    seed = dist_utils.rank_seed(int(cfg.seed), dinfo)
    settings = OfflineSettings.from_mapping(build.plain(cfg.train))
    algo = str(cfg.algo.name)
    obs_map = build.plain(cfg.data.get("obs_map")) or None
    init = None
    if cfg.get("init"):
        agent, init = load_agent(str(cfg.init), algo=algo, algo_cfg=build.algo_overrides(cfg.algo), device=device,
                                 seed=int(cfg.seed))
        # a new run on the checkpoint's weights: its optimiser starts fresh, and so does the update count that its
        # schedules read (with the checkpoint's, DT's learning-rate warm-up was skipped and CQL's bc_steps warm start
        # ran 0 of its updates)
        agent.core.num_updates = 0
        spec = agent.spec
        asked = {part: [str(k) for k in ((cfg.get("obs") or {}).get(part) or [])] for part in ("low_dim", "rgb")}
        have = {"low_dim": list(spec.low_dim_keys), "rgb": list(spec.rgb_keys)}
        defaults = OmegaConf.load(CONFIG_DIR / "robopretrain.yaml").obs  # not set by the user: nothing to say
        ignored = [f"obs.{p}={asked[p]} (the checkpoint's: {have[p]})" for p in asked
                   if asked[p] != have[p] and asked[p] != list(defaults[p])]
        slots = (cfg.get("obs") or {}).get("num_tasks")
        if slots is not None and int(slots) != spec.num_tasks:  # the one-hot's size is the checkpoint's too
            ignored.append(f"obs.num_tasks={slots} (the checkpoint's: {spec.num_tasks})")
        if ignored:
            log.warning("init=%s: the agent's observation parts come from the checkpoint, so %s take(s) no effect; "
                        "to train on other parts, start without init", init.path, ", ".join(ignored))
        build.data_spec({"low_dim": spec.low_dim_keys, "rgb": spec.rgb_keys, "num_tasks": spec.num_tasks},
                        data_path, obs_map=obs_map, info=info, parts_settable=False).check_fits(
            spec, mine=f"the data {data_path}", theirs=f"the init checkpoint {init.path}")
    else:
        spec = build.data_spec(cfg.obs, data_path, obs_map=obs_map, info=info)
    build.check_image_size(spec, cfg.data.get("image_size"), data_path)
    if init is None and spec.rgb_keys and cfg.encoder.get("checkpoint") and cfg.encoder.get("mode") != "scratch" \
            and dinfo.is_main:  # a stage-1 encoder the agent loads
        build.warn_encoder_geometry(resolve_encoder_dir(cfg.encoder.checkpoint), info, spec.rgb_keys, obs_map)
    build.warn_unused_obs_map(obs_map, spec)
    reward = build.reward_settings(cfg.algo)
    build.warn_learned_reward(algo, info)
    # the agent's action units: the init checkpoint's, else this data's (recorded, or its bounds if outside [-1, 1])
    declared = build.plain(cfg.data.get("action_bounds"))
    if init is not None:
        warn_ignored_action_bounds(declared, agent.action_normalization, f"init={init.path}")
    action_units = (agent.action_normalization if init is not None
                    else data_action_units(data_path, info, str(cfg.data.get("actions") or "auto"), declared))
    task_ids = build.data_task_ids(info, cfg.data)  # task name -> its slot of the task one-hot, as trained
    if not spec.num_tasks and len(task_ids) > 1:
        log.warning("%s holds %d tasks (%s), but the agent has no task one-hot (obs.num_tasks=0%s): they train as one "
                    "policy that tells them apart only by what it observes", data_path, len(task_ids),
                    ", ".join(sorted(task_ids)), ", the init checkpoint's" if init is not None else "")
    # what the init checkpoint learnt where: this run's data may not take its tasks' slots silently (PTR's adaptation
    # on a target file numbered from 0 trained it over prior task 0), and the new checkpoint keeps them
    init_ids = {str(k): int(v) for k, v in dict(init.meta.get("task_ids") or {}).items()} if init else {}
    if init_ids and agent.spec.num_tasks > 1:  # (one slot: every task is in it, as the init's data was)
        build.check_task_slots(init_ids, f"the init checkpoint {init.path}", task_ids, str(data_path),
                               explicit=cfg.data.get("task_id") is not None, setting="data.task_id",
                               num_tasks=agent.spec.num_tasks, overwrite=True,
                               second_set=cfg.data.get("task_id") is not None)
    with dist_utils.main_first(dinfo):  # rank 0 builds the frame index of a disk-backed dataset, the others reuse it
        dataset = build.load_data(data_path, spec, cfg.data, reward, algo=algo, act_dim=None, seed=seed,
                                  device=device, rank=dinfo.rank, world_size=dinfo.world_size,
                                  action_units=action_units, units_fixed=init is not None,
                                  slot_advice=fixed_one_hot("data.task_id", init))
    if dinfo.is_main:
        build.report_success_filter(cfg.algo, dataset, str(data_path), tasks=task_ids)
        build.warn_two_valued_actions(cfg.algo, dataset, str(data_path))
    if init is None:
        agent = build.new_agent(cfg, spec, info.action_dim, dataset, device)
        agent.action_normalization = action_units
        agent.camera_sources = build.data_camera_sources(info, spec.rgb_keys, obs_map)
    elif agent.camera_sources is None:  # an init checkpoint written before the record: this data's cameras
        agent.camera_sources = build.data_camera_sources(info, spec.rgb_keys, obs_map)
    if init is not None and info.action_dim != agent.act_dim:
        raise CheckpointError(f"{init.path}: the agent has {agent.act_dim}-D actions, the data {data_path} "
                              f"{info.action_dim}-D")
    dataset = build.prepared(agent, dataset, seed)
    latest = load_latest(ckpt_root, with_state=False) if cfg.get("resume", True) else None
    if init is None and latest is None:  # frozen features standardised by this data (an init checkpoint, or the
        build.fit_feature_normalization(agent, dataset)  # checkpoint resumed below, brings its own statistics)
    sampler: Any = build.training_sampler(agent, dataset, seed)
    if agent.algo == "dt":
        build.warn_short_warmup(agent.algo_cfg, settings.steps)
    mix = cfg.data.get("mix")
    mix_ids: dict[str, int] = {}  # the mixed-in data's tasks (PTR's target adaptation: the target)
    mix_units = None
    data_ids = task_ids  # the tasks this run trains on from data.path (none when no batch row comes from it)
    if mix is not None and mix.get("path"):
        n_main, n_mix = MixedSampler.split(agent.batch_size, 1.0 - float(mix.fraction))  # rows of each batch
        with dist_utils.main_first(dinfo):  # rank 0 converts the mix (another format) once, the others reuse it
            mix_map = build.plain(mix.get("obs_map")) or None
            build.warn_unused_obs_map(mix_map, spec, "data.mix.obs_map")
            mix_file = build.converted(Path(str(mix.path)), mix, spec.image_size, keep=kept)
            build.check_data_fits(spec, mix_file, mix_map, "the mixed-in data (data.mix.path)",
                                  map_setting="data.mix.obs_map")
            mix_info = read_info(mix_file)
            if algo != "bc" and n_main and n_mix:  # both in every batch (BC reads no rewards)
                build.refuse_mixed_reward_functions(info, mix_info)
            mix_ids = build.data_task_ids(mix_info, mix)  # (mix_info: another format's cached conversion, cameras
            # at the agent's size)
            mix_units = mix_action_units(agent.action_normalization, settings.eval_targets, mix_file, mix_info,
                                         mix_ids)
            mix_data = build.load_data(Path(str(mix.path)), spec, mix, reward, algo=algo, act_dim=agent.act_dim,
                                       seed=seed + 1, device=device, rank=dinfo.rank, world_size=dinfo.world_size,
                                       action_units=mix_units, default_image_size=spec.image_size,
                                       units_fixed=True, slot_advice=fixed_one_hot("data.mix.task_id", init) or (
                                           "the mix file's task_id attributes: set obs.num_tasks above them, or "
                                           "data.mix.task_id to put its data in one slot"))
        same_slot = mix.get("task_id") is not None and cfg.data.get("task_id") is not None and int(
            mix.task_id) == int(cfg.data.task_id)  # both files' tasks put in one slot by the user: one task
        build.check_task_slots(task_ids, str(data_path), mix_ids, str(mix.path), explicit=same_slot,
                               num_tasks=agent.spec.num_tasks, taken=list(init_ids.values()),
                               second_set=mix.get("task_id") is not None,
                               same_task="data.task_id={slot} data.mix.task_id={slot}")
        if init_ids and agent.spec.num_tasks > 1:
            build.check_task_slots({**init_ids, **task_ids}, f"the init checkpoint {init.path}", mix_ids,
                                   str(mix.path), explicit=mix.get("task_id") is not None,
                                   num_tasks=agent.spec.num_tasks, overwrite=True,
                                   second_set=mix.get("task_id") is not None)
        if dinfo.is_main:
            build.report_success_filter(cfg.algo, mix_data, str(mix.path))
        sampler = MixedSampler(sampler, build.training_sampler(agent, build.prepared(agent, mix_data, seed + 1),
                                                               seed + 1), 1.0 - float(mix.fraction))
        log.info("batches: %.0f%% from %s, %.0f%% from %s", 100 * (1 - float(mix.fraction)), data_path,
                 100 * float(mix.fraction), mix.path)
        for rows, setting, path, ids in ((n_mix, "data.mix.path", mix.path, mix_ids),
                                         (n_main, "data.path", data_path, task_ids)):
            if not rows:  # a file no batch draws from: its tasks are not trained (nor recorded, nor evaluated as such)
                log.log(logging.INFO if set(ids) <= set(init_ids) else logging.WARNING,  # (init trained them)
                        "data.mix.fraction=%s: no row of a batch of %d comes from %s=%s; its tasks %s are not trained "
                        "by this run", mix.fraction, agent.batch_size, setting, path, sorted(ids))
        if not n_mix:
            mix_ids = {}
        if not n_main:
            data_ids = {}
    tasks = sorted({**data_ids, **mix_ids})
    dr = build.randomization(cfg.get("dr"))
    trained = {**init_ids, **data_ids, **mix_ids}  # every task's learnt slot, as the checkpoint records it
    targets = build.eval_targets(settings.eval_targets, info, task_ids, agent.spec.num_tasks, trained,
                                 obs_map=obs_map)
    if settings.eval_targets is None and task_ids and not data_ids:  # data.path's tasks only where init trained them,
        targets = [replace(t, task_id=init_ids[t.name]) for t in targets if t.name in init_ids]  # in init's slots
    if settings.eval_targets is None and mix_ids:  # and the mixed-in data's own tasks
        named = {t.name for t in targets}
        targets += [t for t in build.targets_of_data(mix_info, mix_ids, build.plain(mix.get("obs_map")) or None)
                    if t.name not in named]
    for target in targets if agent.spec.num_tasks else []:  # a slot given in train.eval_targets against the data's
        note = slot_note(target.name, target.resolved_task_id(), trained,
                         label_only=agent.spec.num_tasks == 1 and target.family == GYM)
        if note:
            log.warning("train.eval_targets: %s", note)
    if settings.eval_targets is None:  # the data's own tasks: evaluated where the env fits the agent, else skipped
        targets = [t for t in targets if build.env_fits_or_log(agent, t, dr if t.randomizable else "none")]
    else:  # targets the config names must fit
        for target in targets:
            build.check_env_fits(agent, target, dr if target.randomizable else "none")
    if algo == "dt" and dinfo.is_main:
        build.warn_dt_return_scale(agent.algo_cfg, build.return_range(sampler))
    if settings.eval_episodes > 0:  # evaluations that run
        build.warn_unrandomized_targets(dr, targets, "stage 2's evaluations")
        if algo == "dt" and dinfo.is_main:
            build.warn_dt_sparse_target(agent.algo_cfg, build.return_range(sampler), targets)
    fingerprint = run_fingerprint.fingerprint(
        cfg, derived={f"data.mix: {DEMO_UNITS}": demo_units_entry(agent.action_normalization, mix_units)},
        inputs={"data": data_path, "mix": mix.path if mix is not None and mix.get("path") else None,
                "init": init.path if init is not None else None,
                # a stage-1 encoder retrained in place was resumed on: its cached features the new encoder's, the
                # agent's encoder the old one's
                "encoder": resolve_encoder_dir(cfg.encoder.checkpoint) if init is None and spec.rgb_keys
                and cfg.encoder.get("checkpoint") else None}, ignore=RESUMABLE_CHANGES,
        home=run_fingerprint.run_home(cfg, run_dir))
    meta = {"stage": "offline", "fingerprint": fingerprint, "data_path": os.path.abspath(data_path),  # any cwd
            "obs_map": obs_map,
            "task_names": tasks, "eval_targets": [t.to_dict() for t in targets],  # robopretrain.evaluate's default
            "task_ids": trained, "mix_task_names": sorted(mix_ids),
            "mix_path": os.path.abspath(mix_info.path) if mix_ids else None,  # (converted) file of the mix tasks
            "num_transitions": len(dataset), "reward": reward.__dict__, "init": str(init.path) if init else None,
            "episode_returns": build.return_range(sampler),  # DT: evaluate's target_return is checked against it
            "parallel": {"world_size": dinfo.world_size, "batch_size_per_process": agent.batch_size,
                         "effective_batch_size": agent.batch_size * dinfo.world_size}}
    if dinfo.enabled:
        broadcast_agent(agent, dinfo)
        average_gradients(agent, dinfo)
        log.info("data-parallel over %d processes (%s): effective batch size %d = %d x %d", dinfo.world_size,
                 dinfo.backend, agent.batch_size * dinfo.world_size, agent.batch_size, dinfo.world_size)
        if dinfo.rank:  # the model is built from the shared seed; each rank's own randomness differs from here on
            torch.manual_seed(seed)
            agent.generator.manual_seed(seed)
    if not cfg.get("resume", True):  # a fresh run in a used folder, after every check (a refusal keeps the old run)
        if cfg.get("init"):
            refuse_source_in_run(str(cfg.init), run_dir, "init")
        if dinfo.is_main:
            clear_previous_run(run_dir)
        dist_utils.barrier(dinfo)
    adversary = stage2_adversary(cfg, agent, tasks, run_dir, dinfo, targets, trained)
    start = 0
    if latest is not None:
        saved = latest.meta.get("fingerprint")  # what else changed: another data file shows only as other units
        diffs = run_fingerprint.differences(saved, fingerprint) if saved else []
        check_agent_fits(latest.meta, agent, where=str(latest.path),
                         also=[run_fingerprint.listed(diffs)] if diffs else [])
        fresh = run_fingerprint.FRESH + (f"; to go on training this checkpoint's agent on the changed data: "
                                         f"init={latest.path} with another output_dir"
                                         if any(d.startswith(("data", "mix")) for d in diffs) else "")
        run_fingerprint.check_resume(latest.meta.get("fingerprint"), fingerprint, where=latest.path, fresh=fresh)
        start, resumed = resume(agent, sampler, ckpt_root, dinfo)
        if adversary is not None and resumed is not None and resumed.state is not None:
            adversary.load_state_dict(resumed.state["transfer"]["dann"])
    saved_parallel = dict(latest.meta.get("parallel") or {}) if latest is not None else {}
    meta["parallel"]["history"] = dist_utils.world_size_history(  # every session's size, not the last one's only
        saved_parallel.get("history"), saved_parallel.get("world_size"), start, dinfo.world_size, agent.batch_size)
    calib = dataset.get(calibration_rows(len(dataset), settings.calibration_batch))

    def evaluate_all() -> dict[str, float]:  # each rank its share of the targets; a failure on any fails all
        parts = gather_results(lambda: {t.name: evaluate(agent, t, settings.eval_episodes, randomization=dr if
                                                          t.randomizable else "none")
                                        for t in targets[dinfo.rank::dinfo.world_size]}, dinfo)
        per = {name: r for part in parts for name, r in part.items()}
        return summarize({t.name: per[t.name] for t in targets})

    last = train_offline(
        agent, sampler, settings, run_dir, desc=f"offline {algo}", start=start, dinfo=dinfo,
        experiment_logger=build.plain(cfg.get("logger")), config=cfg,
        save=lambda step, state: save_agent(ckpt_root, step, cfg, agent, meta, with_adversary(state, adversary),
                                            keep=settings.keep_checkpoints),
        evaluate=evaluate_all if targets else None,
        calibrate=(lambda: calibration(agent, calib)) if agent.has_q else None)
    if last is not None and dinfo.is_main:
        build.warn_actor_far_from_data(agent, calib)
    if last is None:  # already finished before this call
        latest = load_latest(ckpt_root, with_state=False)
        if latest is None:
            raise RuntimeError(f"{run_dir}: train.steps={settings.steps} produced no checkpoint")
        last = latest.path
    return last


def stage2_adversary(cfg: DictConfig, agent: Any, tasks: list[str], run_dir: Path, dinfo: DistInfo,
                     targets: Sequence[Target] = (), task_ids: Mapping[str, int] | None = None) -> Any:
    """``transfer.dann`` of stage 2 (:mod:`finetune.transfer.dann`), set as the agent's auxiliary loss; None when off.

    Its unlabeled target frames: ``gap.target_frames`` frames of ``transfer.dann.task`` (:func:`dann_target`)
    rendered under ``gap.target`` by the agent's initial stochastic policy, cached in
    ``<run>/transfer/dann_target.npz``."""
    node = build.plain((cfg.get("transfer") or {}).get("dann")) or {}
    node = dict(node)
    task = node.pop("task", None)
    from finetune.transfer.dann import DANNSettings, DomainAdversary

    from finetune.transfer.gap import Gap

    settings = DANNSettings.from_mapping(node)
    gap = Gap.from_mapping(build.plain(cfg.get("gap")))
    if not settings.enabled:
        if gap.enabled and dinfo.is_main:  # recorded with the run, and nothing else reads it
            log.warning("gap=%s: stage 2 uses a gap only for transfer.dann's target frames, which is off: the gap "
                        "has no effect here (stage 3 and robopretrain.evaluate apply it)", gap.name)
        return None
    from finetune.transfer.target_data import cached_target_data

    if not gap.enabled or gap.target_frames < 1:
        raise ValueError(f"transfer.dann needs a gap with target_frames >= 1 (e.g. gap=visual_textures); got "
                         f"gap={gap.name!r}")
    if dinfo.enabled:
        raise ValueError("transfer.dann is not available under torchrun (its classifier is not averaged over ranks)")
    if not agent.trains_encoder or not agent.spec.rgb:
        raise ValueError("transfer.dann needs an agent whose image encoder trains (cameras and encoder mode "
                         f"finetune or scratch); this one has mode {agent.mode!r}")
    target = dann_target(task, tasks[0], targets, task_ids or {}, agent.spec.num_tasks)
    build.check_env_fits(agent, target, gap.target, side="gap.target")
    frames = cached_target_data(run_dir / "transfer" / "dann_target.npz", agent, target, gap.target,
                                gap.target_frames, seed=int(cfg.seed))
    adversary = DomainAdversary(agent, frames["observations"], settings, seed=int(cfg.seed) + 11)
    agent.auxiliary = [*agent.auxiliary, adversary]
    return adversary


def dann_target(task: Any, first_task: str, targets: Sequence[Target], task_ids: Mapping[str, int],
                num_tasks: int) -> Target:
    """The env stage 2's DANN renders its target frames in: ``transfer.dann.task`` (a sim_envs task name or a target
    mapping; a gym target without ``task_id`` takes its slot from ``task_ids`` as stage 3 does), else the data's
    first task: the evaluation target of that name (``targets``, e.g. the user's env in ``train.eval_targets``), else
    the sim_envs task of that name. Raises ``ValueError`` naming ``transfer.dann.task`` when it cannot be built."""
    if task is None:
        named = [t for t in targets if t.name == first_task]
        if named:
            return named[0]
    try:
        return with_task_slot(build.target_config(first_task if task is None else task), task_ids, num_tasks)
    except ValueError as exc:
        if task is not None:  # the user's own entry: what is wrong with it (a multi-task agent's missing task_id)
            raise ValueError(f"transfer.dann.task={task!r}: {exc}") from None
        raise ValueError(f"transfer.dann.task is not set, so DANN renders the data's first task {first_task!r}, "
                         f"which is neither a sim_envs task nor a target in train.eval_targets: {exc}; set "
                         "transfer.dann.task to a sim_envs task name or to your env as a target "
                         "('transfer.dann.task={name: my_env, env_id: my_pkg.envs:MyEnv}')") from None


def with_adversary(state: Any, adversary: Any) -> Any:
    """The checkpoint state with the DANN classifier's (when there is one)."""
    if adversary is None or state is None:
        return state
    return {**dict(state), "transfer": {"dann": adversary.state_dict()}}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="robopretrain")
@friendly_errors
def main(cfg: DictConfig) -> None:
    path = run(cfg)
    if dist_utils.env_world()[0] == 0:
        print(f"checkpoint: {path}")


def cli_main() -> None:
    """``python -m robopretrain.train`` and its console script: one-line config errors, then Hydra."""
    run_hydra(main, "robopretrain")
    dist_utils.exit_finished_worker()  # a torchrun worker whose run returned: exit 0 now (see its docstring)


if __name__ == "__main__":
    cli_main()
