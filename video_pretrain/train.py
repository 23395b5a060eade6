"""Stage 1 entry point: pretrain an image encoder on action-free video (V-PTR).

``python -m video_pretrain.train`` (Hydra, ``configs/video_pretrain.yaml``; ``objective=icvf|vip|tcn|none``)
trains the encoder named by ``encoder.name`` with the objective's loss on frames of a video source (a
``manifest.csv`` folder, a folder of video files and frame folders, one video file, or robot HDF5 image keys), and
saves it with
:func:`robopretrain.nets.encoder_io.save_encoder` for stages 2 and 3 to load by path. The run folder
(``output_dir``, by default the Hydra run folder) holds::

    encoder/              the encoder checkpoint (or ``output``): encoder.pt, meta.json (extra: objective,
                          steps, data), config.yaml; for ICVF also value_heads.pt (read by diagnose)
    checkpoints/last.pt   the training checkpoint: objective (encoder, heads, target), optimizer, torch RNG,
                          step, the clips found unreadable so far, and the run's fingerprint
                          (:mod:`robopretrain.run_fingerprint`: the listing of the clips read and the manifest's
                          hash (other files in the video folder are not data), the config minus harmless keys);
                          written atomically. A
                          rerun with resume=true continues from it only when its fingerprint is the same
                          (``steps`` may grow); otherwise it stops with one line naming what changed
                          (start fresh with resume=false, or another output_dir; resume=false first removes
                          the previous run's checkpoints/, tb/, metrics.json and default encoder/)
    tb/                   TensorBoard scalars: train loss and diagnostics, validation loss, steps/s
    metrics.json          loss history, validation history, timing, data facts (``data.videos`` / ``frames``: the
                          clips used; ``bad_videos``, ``short_videos_skipped``: the clips left out, by name,
                          ``bad_videos`` also those found unreadable only when decoded during the run)
    videos/               generated human-hand videos (data.generate with no data.path)

Batches come from :class:`video_pretrain.sampling.FrameBatchStream` through a DataLoader (``num_workers``, started
from a clean process: :func:`video_pretrain.sampling.batch_loader`);
batch ``k`` and the random shift of step ``k`` depend only on (seed, k), so a resumed run continues the
same data stream. The validation loss is computed on fixed batches of held-out videos (split by video)
without augmentation. ``objective=none`` trains nothing and saves the seeded random initialisation.

Faults and scale: a NaN or inf loss stops the run with :class:`robopretrain.guards.NonFiniteLossError` naming
the loss and step, before the step is applied (the last checkpoint stays the last good one); bad input is
reported on one line with exit code 2 (:mod:`robopretrain.cli`). Under ``torchrun`` the run is data-parallel
(:mod:`robopretrain.distributed`: DDP, NCCL on GPUs, gloo on CPU): each rank draws its own batches, so the
effective batch size is ``batch_size * world_size`` (logged and saved in metrics.json and the encoder's
meta); only rank 0 writes logs and checkpoints, and a rerun under torchrun resumes from them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from robopretrain import config_checks, cpu_settings
from robopretrain import distributed as dist_utils
from robopretrain import run_fingerprint
from robopretrain.agent_parallel import gather_objects
from robopretrain.checkpoint import STAGE1_CHECKPOINT, clear_previous_run, kill_after_checkpoint, refuse_other_stage
from robopretrain.cli import CONFIG_DIR, friendly_errors, run_hydra
from robopretrain.data.video import VideoDatasetError
from robopretrain.distributed import DistInfo
from robopretrain.files import (atomic_file, check_replaceable, remove_leftovers, replace_folder, run_folder_lock,
                                temp_folder, torch_load_problem, torch_save, write_json_atomic)
from robopretrain.guards import NonFiniteLossError, check_finite
from robopretrain.loggers import WANDB_ID_FILE, make_logger, plain_config
from robopretrain.nets.encoder_io import load_encoder, resolve_encoder_dir, save_encoder
from robopretrain.nets.encoders import make_encoder
from video_pretrain.data import HDF5_SUFFIXES, SubsetSource, cropped_sizes, open_frame_source, split_by_video
from video_pretrain.objectives import OBJECTIVES, ICVFHeads, make_objective
from video_pretrain.sampling import FrameBatchStream, augment, batch_loader, check_sampling, long_enough

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "video_pretrain.train_checkpoint"
HEADS_FILE = "value_heads.pt"
VALID_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes: its folder, training checkpoint, encoder checkpoint, TensorBoard logs, metrics."""

    run_dir: Path
    checkpoint: Path
    encoder: Path
    tensorboard: Path
    metrics: Path

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: str | os.PathLike) -> "RunPaths":
        root = Path(cfg.output_dir or run_dir).expanduser()
        encoder = Path(cfg.output).expanduser() if cfg.get("output") else root / "encoder"
        return cls(root, root / "checkpoints" / STAGE1_CHECKPOINT, encoder, root / "tb", root / "metrics.json")


@dataclass
class Pretrained:
    """A stage-1 result loaded from its encoder folder: the encoder, its meta.json, ICVF value heads if any."""

    encoder: nn.Module
    meta: dict[str, Any]
    heads: ICVFHeads | None

    @property
    def objective(self) -> str:
        return str(self.meta.get("extra", {}).get("objective", "unknown"))


# --------------------------------------------------------------------------------------------- config
STAGE1_CHECKS = {**{k: config_checks.AT_LEAST_0 for k in ("steps", "valid_batches", "num_workers", "augment_pad")},
                 **{k: config_checks.AT_LEAST_1 for k in ("batch_size", "log_every", "eval_every", "checkpoint_every",
                                                          "image_size")},
                 "lr": config_checks.POSITIVE, "adam_eps": config_checks.POSITIVE,
                 "grad_clip": (config_checks.POSITIVE[0], "a positive number or null")}
DATA_CHECKS = {"stride": config_checks.AT_LEAST_1, "max_cache_mb": config_checks.NON_NEGATIVE,
               "valid_fraction": (lambda v: config_checks.NON_NEGATIVE[0](v) and v < 1, "a number in [0, 1)")}


def validate_config(cfg: DictConfig) -> None:
    """Check the config before any data loads; ``ValueError`` naming the key and what was expected (``augment_pad``
    below half of ``image_size``; ``objective.options``: :func:`robopretrain.config_checks.validate_objective_options`)."""
    def fail(key: str, value: Any, expected: str) -> None:
        raise ValueError(f"video_pretrain config: {key}={value!r}; expected {expected}")

    config_checks.one_name_as_list(cfg, ("data.tasks",))
    config_checks.check_top_level_keys(cfg, "video_pretrain")  # +bogus=1 or a misspelt section: refused, not ignored
    if cfg.objective.name not in OBJECTIVES:
        fail("objective.name", cfg.objective.name, f"one of {', '.join(OBJECTIVES)} (pick with objective=<name>)")
    config_checks.check_section(cfg, None, STAGE1_CHECKS, "video_pretrain")  # types too: steps=abc named, not int()'s
    config_checks.check_section(cfg, "data", DATA_CHECKS, "video_pretrain")
    pad, size = int(cfg.augment_pad), int(cfg.image_size)
    if 2 * pad >= size and cfg.objective.name != "none":  # a shift by half the frame or more: the rest is border
        fail("augment_pad", cfg.augment_pad, f"a shift smaller than half the {size} px frame (image_size), i.e. at most "
             f"{(size - 1) // 2} px (DrQ shifts 4 px at 84 px; 0: off)")
    config_checks.validate_objective_options(cfg, "video_pretrain")
    try:  # a misspelt ICVF sampling key trained with the default; a bad mix was refused after the clips loaded
        sampling = cfg.objective.get("sampling")
        check_sampling(str(cfg.objective.name), OmegaConf.to_container(sampling, resolve=True)
                       if OmegaConf.is_config(sampling) else sampling)
    except ValueError as exc:
        raise ValueError(f"video_pretrain config: {exc}") from None
    if cfg.objective.name == "tcn" and int(cfg.batch_size) < 2:
        fail("batch_size", cfg.batch_size, ">= 2 for tcn (other samples are the negatives)")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as given (an unavailable device is an error:
    :func:`robopretrain.config_checks.resolve_device`)."""
    return torch.device(config_checks.resolve_device(name, "video_pretrain"))


# what a resumed run may change: besides logging, devices and where outputs go, the step count (to train
# further), validation batches, and how clips are cached or checked; data.path is the fingerprinted input
RESUMABLE_CHANGES = (*run_fingerprint.HARMLESS_KEYS, "steps", "valid_batches", "data.max_cache_mb", "data.strict",
                     "data.path")


def fingerprint(cfg: DictConfig, data_path: Path, home: Path | None = None) -> dict[str, Any]:
    """The run's fingerprint: the data at ``data_path`` (of a video folder, the files it reads: :func:`read_files`;
    of a manifest file, also the clips it lists, as input ``clips``; clips a walk of the folder does not reach, each
    as an input of its own: :func:`outside_clips`) and the config minus :data:`RESUMABLE_CHANGES`; ``home``: the
    run folder (a moved one resumes, :func:`robopretrain.run_fingerprint.relocation`)."""
    inputs: dict[str, Path | None] = {"data": data_path}
    only: dict[str, list[str]] = {}
    folder = data_path if data_path.is_dir() else data_path.parent if data_path.suffix.lower() == ".csv" else None
    clips = _clip_paths(data_path) if folder is not None else None  # the clip list read once for both below
    if clips is not None:  # a manifest given as a file (data.path=<folder>/manifest.csv): its clips' folder too
        only["data" if data_path.is_dir() else "clips"] = read_files(data_path, clips)
        if not data_path.is_dir():
            inputs["clips"] = folder
        inputs.update({f"clip {name}": path for name, path in outside_clips(data_path, clips).items()})
    return run_fingerprint.fingerprint(cfg, inputs, ignore=RESUMABLE_CHANGES, home=home, only=only)


def _clip_paths(source: Path) -> list[Path] | None:
    """The clips (video files, frame folders) at ``source`` (a folder or a manifest), as the manifest names them
    (absolute, links not resolved); None when the reader refuses the clip list (it then names the problem)."""
    from robopretrain.data.video import clip_entries

    try:
        return [Path(os.path.abspath(e.path)) for e in clip_entries(source)]
    except VideoDatasetError:
        return None


def read_files(source: Path, clips: Sequence[Path] | None = None) -> list[str] | None:
    """The paths, relative to the video folder ``source`` (or a manifest's folder), that training reads: its
    ``manifest.csv`` when there is one and the clips (video files, frame folders) it lists or, without it, those
    found there (:func:`robopretrain.data.video.clip_entries`); a file added beside them (notes, an inspection's
    contact sheet) is not data, so a run resumes past it. None (every file) when the reader refuses the folder's clip
    list (it then names the problem). Clips are named as the manifest reaches them (a symlinked clip by its link:
    its target's path, outside the folder, matched no file of the folder, so the clip was no input at all).
    ``clips``: :func:`_clip_paths` of ``source`` when the caller has read them."""
    from robopretrain.data.video import MANIFEST_NAME

    folder = source if source.is_dir() else source.parent
    clips = _clip_paths(source) if clips is None else clips
    if clips is None:
        return None
    base = os.path.abspath(folder)
    manifest = [source.name] if not source.is_dir() else [MANIFEST_NAME] if (folder / MANIFEST_NAME).is_file() else []
    return manifest + [Path(os.path.relpath(c, base)).as_posix() for c in clips]


def outside_clips(source: Path, clips: Sequence[Path] | None = None) -> dict[str, Path]:
    """The clips of ``source`` that a walk of its folder does not reach, by their name there: a symlinked frame
    folder, or a clip inside a symlinked folder (a walk does not follow links; a manifest's paths may not leave its
    folder): each becomes an input of the fingerprint of its own. ``clips``: as :func:`read_files`."""
    folder = Path(os.path.abspath(source if source.is_dir() else source.parent))
    out = {}
    for clip in (_clip_paths(source) if clips is None else clips) or []:
        rel = os.path.relpath(clip, folder)
        inside = not rel.startswith("..") and os.path.realpath(clip.parent) == os.path.join(
            os.path.realpath(folder), os.path.dirname(rel)).rstrip(os.sep)
        if not inside or (clip.is_dir() and clip.is_symlink()):
            out[Path(rel).as_posix()] = clip
    return out


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The settings a training checkpoint must share with the run that resumes it (checked for checkpoints
    written before run fingerprints; newer ones compare :func:`fingerprint`)."""
    return {"objective": str(cfg.objective.name), "encoder": str(cfg.encoder.name),
            "encoder_kwargs": OmegaConf.to_container(cfg.encoder.kwargs, resolve=True),
            "image_size": int(cfg.image_size),
            "objective_options": OmegaConf.to_container(cfg.objective.options, resolve=True)}


# --------------------------------------------------------------------------------------------- data
def resolve_data_path(cfg: DictConfig, run_dir: Path, keep: Sequence[str] = ()) -> Path:
    """``data.path``, or (``data.generate``) human-hand videos collected into ``<run>/videos`` (reused if there).
    ``keep``: converted copies a new conversion must not remove although stale (:func:`recorded_data`)."""
    if cfg.data.path:
        path = Path(str(cfg.data.path)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data.path={path}: not found; expected a video folder (with manifest.csv, or "
                                    "video files and frame folders), a video file, a robomimic HDF5 file "
                                    f"({', '.join(HDF5_SUFFIXES)}) or a dataset of another format "
                                    "robopretrain.data.convert reads")
        return frames_path(path, cfg, keep)
    if not cfg.data.generate:
        raise ValueError("video_pretrain config: data.path is not set and data.generate=false; give a video folder "
                         "(manifest.csv, or video files), a video file, a robomimic HDF5 file, or set "
                         "data.generate=true")
    out = run_dir / "videos"
    if (out / "manifest.csv").is_file():
        log.info("reusing generated videos %s", out)
        return out
    from sim_envs.collect_videos import collect_videos

    collect_cfg = OmegaConf.load(CONFIG_DIR / "collect_videos.yaml")
    collect_cfg.merge_with(OmegaConf.create(OmegaConf.to_container(cfg.data.collect or {}, resolve=True)))
    collect_cfg.output = str(out)
    collect_cfg.overwrite = True
    return Path(collect_videos(collect_cfg, progress=bool(cfg.progress)))


def recorded_data(checkpoint: Path) -> list[str]:
    """The data path a stage-1 training checkpoint's fingerprint names (a converted copy, often), which a new
    conversion keeps while the run may resume on it; empty when there is no readable checkpoint."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        data = (json.loads(state.get("fingerprint") or "null") or {}).get("inputs", {}).get("data") or {}
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: the resume itself names it
        return []
    return [str(data["path"])] if data.get("path") else []


def frames_path(path: Path, cfg: DictConfig, keep: Sequence[str] = ()) -> Path:
    """``path`` itself for a video manifest (folder or .csv), a video file or folder, or a robomimic HDF5 file (or
    anything of no recognised format: its reader names the problem), else the cached robomimic conversion of a D4RL / OGBench / LeRobot / Minari
    dataset (:func:`robopretrain.data.convert.as_robomimic`, cameras resized to ``image_size`` while converting; the
    same copy stages 2 and 3 read; ``data.cache_dir`` as theirs), whose image key keeps the dataset's own name."""
    from robopretrain.data.convert import ConversionError, as_robomimic, detect_format

    if (path / "manifest.csv").is_file() or path.suffix.lower() == ".csv":
        return path
    try:
        fmt = detect_format(path)
    except ConversionError:
        return path
    if fmt == "robomimic":
        return path
    copy = as_robomimic(path, fmt=fmt, cache_dir=cfg.data.get("cache_dir"), image_size=int(cfg.image_size),
                        keep=keep)
    if not bool(cfg.data.get("stretch", False)):
        from robopretrain.data.hdf5 import read_info

        sizes = dict(read_info(copy).env_args.get("source_image_sizes") or {})
        wide = {k: f"{h}x{w}" for k, (h, w) in sizes.items() if h != w}
        if wide:  # the crop cannot apply: the copy's frames are square already
            log.warning("data.stretch=false (crop non-square clips to their central square) does not apply to this "
                        "%s dataset: its frames (%s) were stretched to %d x %d while converting, the copy stages 2 "
                        "and 3 read too; data.stretch=true says so quietly", fmt,
                        ", ".join(f"{k} {v}" for k, v in sorted(wide.items())), int(cfg.image_size),
                        int(cfg.image_size))
    return copy


def open_sources(cfg: DictConfig, path: Path) -> tuple[Any, Any | None, dict[str, Any]]:
    """(train source, valid source or None, facts) for the data at ``path``, split by video. ``facts``: ``videos``
    and ``frames`` count the clips used (train and valid); ``bad_videos`` (unreadable) and ``short_videos`` (too short
    for the objective, :func:`video_pretrain.sampling.long_enough`, HDF5 demos of 0 steps first) name the clips left
    out."""
    kwargs: dict[str, Any] = {"max_cache_bytes": int(float(cfg.data.max_cache_mb) * 2**20), "strict": bool(cfg.data.strict),
                              "center_crop": not bool(cfg.data.get("stretch", False))}
    if path.suffix.lower() in HDF5_SUFFIXES:
        kwargs.update(key=str(cfg.data.key), mask=cfg.data.mask,
                      tasks=list(cfg.data.tasks) if cfg.data.tasks is not None else None)
    source = open_frame_source(path, int(cfg.image_size), stride=int(cfg.data.stride), **kwargs)
    # clips too short for the objective are left out before the split (one warning), so none lands in validation
    # (a 1-frame clip drawn there stopped the run with "every clip is shorter")
    lengths = np.array([source.video_length(i) for i in range(source.num_videos)], dtype=np.int64)
    usable = long_enough(source, str(cfg.objective.name), lengths)
    short = np.setdiff1d(np.arange(source.num_videos), usable)
    facts: dict[str, Any] = {"path": str(path), "videos": len(usable), "frames": int(lengths[usable].sum()),
                             "bad_videos": list(source.bad_videos), "cropped_sizes": cropped_sizes(source),
                             "short_videos": [*getattr(source, "empty_videos", []),
                                              *(source.video_name(int(i)) for i in short)]}
    fraction = float(cfg.data.valid_fraction)
    if fraction > 0 and len(usable) < 2:
        log.warning("data: %d usable video(s): too few to hold one out for validation, so none is (data."
                    "valid_fraction=%g ignored; set data.valid_fraction=0 to silence this)", len(usable), fraction)
        fraction = 0.0
    if fraction == 0:
        facts.update(train_videos=len(usable), valid_videos=0)
        return SubsetSource(source, usable), None, facts
    train_ids, valid_ids = split_by_video(SubsetSource(source, usable), fraction, int(cfg.data.split_seed))
    facts.update(train_videos=len(train_ids), valid_videos=len(valid_ids))
    return SubsetSource(source, usable[train_ids]), SubsetSource(source, usable[valid_ids]), facts


def without_unreadable(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` without the stream's ``unreadable`` entry (its bookkeeping, not an input of the objective)."""
    batch.pop("unreadable", None)
    return batch


def count_unreadable_found(facts: dict[str, Any], found: Sequence[tuple[Any, Sequence[int], str]]) -> list[str]:
    """Move the clips found unreadable while training from the counts of clips used to ``facts["bad_videos"]``.

    ``found``: per split, (its :class:`~video_pretrain.sampling.FrameBatchStream`, the ids of the stream's source
    found unreadable, the ``facts`` key counting the split's clips). :func:`open_sources` counts a clip as
    used when its cheap check at the start passes; one that fails only when decoded (a truncated JPEG, a broken
    packet) was never in a batch, so ``videos``, ``frames`` and the split's count lose it. Returns the names that
    are new to ``bad_videos``."""
    names: list[str] = []
    for stream, ids, split_key in found:
        for i in ids:
            name = stream.source.video_name(int(i))
            if name in facts["bad_videos"] or name in names:
                continue
            names.append(name)
            facts["videos"] -= 1
            facts[split_key] -= 1
            facts["frames"] -= int(stream.lengths[int(i)])
    facts["bad_videos"] = [*facts["bad_videos"], *names]
    return names


# --------------------------------------------------------------------------------------------- saving
def save_pretrained(path: Path, encoder: nn.Module, objective: nn.Module | None, cfg: DictConfig,
                    steps: int, extra: Mapping[str, Any] | None = None) -> Path:
    """Save the encoder (``save_encoder``) plus, for ICVF, its value heads, as one folder, atomically."""
    name = str(cfg.objective.name)
    info: dict[str, Any] = {"objective": name, "steps": int(steps),
                            "objective_options": OmegaConf.to_container(cfg.objective.options, resolve=True),
                            **dict(extra or {})}
    modules = objective.export_modules() if objective is not None else {}
    if "heads" in modules:
        info["value_heads"] = {"file": HEADS_FILE, "config": objective.export_config()}
    staging = temp_folder(path, suffix=".stage")
    try:
        staged = save_encoder(staging / path.name, encoder, str(cfg.encoder.name), cfg, extra=info)
        if "heads" in modules:
            torch_save({k: v.detach().cpu() for k, v in modules["heads"].state_dict().items()}, staged / HEADS_FILE)
        replace_folder(staged, path, _holds_an_encoder, kind=ENCODER_KIND)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Pretrained:
    """Load an encoder folder written by :func:`save_pretrained`, with its ICVF value heads when it has them."""
    encoder, meta = load_encoder(path, map_location=map_location)
    spec = meta.get("extra", {}).get("value_heads")
    if not spec:
        return Pretrained(encoder, meta, None)
    folder = resolve_encoder_dir(path)  # a stage-1 run folder: its encoder folder (the heads lie beside meta.json)
    file = folder / spec["file"]
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; {folder / 'meta.json'} says this ICVF encoder has value heads there")
    conf = spec["config"]
    heads = ICVFHeads(int(conf["feature_dim"]), tuple(conf["hidden"]), int(conf["num_heads"]))
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated files, foreign pickles: a traceback before
        raise ValueError(f"{file}: {torch_load_problem(exc)}") from None
    try:
        heads.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{file}: does not fit the value heads described in meta.json ({conf}): {exc}") from exc
    return Pretrained(encoder, meta, heads.to(map_location).eval())


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch_save(obj, tmp)


def save_checkpoint(path: Path, step: int, objective: nn.Module, optimizer: torch.optim.Optimizer,
                    cfg: DictConfig, history: Mapping[str, Any], world_size: int = 1,
                    run_print: Mapping[str, Any] | None = None,
                    world_sizes: Sequence[Mapping[str, int]] | None = None,
                    unreadable: Sequence[Iterable[int]] = ()) -> None:
    """Write the training checkpoint (everything a resumed run needs, and the run's fingerprint) atomically;
    ``world_sizes``: the run's process counts by session (:func:`robopretrain.distributed.world_size_history`);
    ``unreadable``: per rank, the training clips (ids) it found unreadable so far, which its resumed stream leaves out
    from its start as the uninterrupted one did from when it found them (:func:`rank_unreadable`)."""
    _atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": int(step), "objective": objective.state_dict(),
                        "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                        "identity": json.dumps(identity(cfg), sort_keys=True), "history": json.dumps(history),
                        "world_size": int(world_size), "fingerprint": json.dumps(run_print),
                        "world_sizes": json.dumps(list(world_sizes or [])),
                        "unreadable": json.dumps([sorted(int(v) for v in ids) for ids in unreadable])}, path)
    kill_after_checkpoint(step)  # a test hook; nothing unless ROBOPRETRAIN_KILL_AFTER_CHECKPOINT is set


def load_checkpoint(path: Path, objective: nn.Module, optimizer: torch.optim.Optimizer, cfg: DictConfig,
                    device: torch.device, run_print: Mapping[str, Any] | None = None
                    ) -> tuple[int, dict[str, Any], list[dict[str, int]], list[list[int]]]:
    """Restore a training checkpoint into ``objective`` and ``optimizer``; returns (step, history, world sizes,
    unreadable): the world sizes are the run's process counts by session
    (:func:`robopretrain.distributed.world_size_history`; for a checkpoint written before that record, the count of
    the session that wrote it, standing for every step before); ``unreadable``: per rank, the training clip ids
    found unreadable before the checkpoint (empty for one written before that record).

    Refuses (:class:`~robopretrain.run_fingerprint.ResumeMismatchError`, one line) a checkpoint whose
    fingerprint differs from ``run_print``, this run's."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated files, foreign pickles
        raise ValueError(f"{path}: training checkpoint {torch_load_problem(exc)}; delete it or set resume=false"
                         ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a video_pretrain training checkpoint (format {state.get('format')!r})")
    saved_print = json.loads(state.get("fingerprint") or "null")
    saved, now = json.loads(state["identity"]), identity(cfg)
    if saved_print is None and saved != now:
        diff = {k: (saved.get(k), now[k]) for k in now if saved.get(k) != now[k]}
        raise ValueError(f"{path}: was written by a run with other settings {diff} (saved, now); set resume=false, "
                         "or another output_dir, to start a new run")
    if run_print is not None:
        run_fingerprint.check_resume(saved_print, run_print, path)  # a checkpoint without one: a warning
    try:
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: its weights do not fit this model ({str(exc).splitlines()[0]}); set resume=false, "
                         "or another output_dir, to start a new run") from None
    torch.set_rng_state(state["torch_rng"].cpu())
    saved_world = int(state.get("world_size", 1))
    if saved_world != world_size():
        log.warning("%s was written by a run with %d process(es), this run has %d: the data stream continues "
                    "differently (the effective batch size changes)", path, saved_world, world_size())
    sizes = json.loads(state.get("world_sizes") or "[]")
    sizes = dist_utils.world_size_history(sizes, saved_world, int(state["step"]), saved_world, int(cfg.batch_size))
    saved_bad = json.loads(state.get("unreadable") or "[]")
    if saved_bad and not isinstance(saved_bad[0], list):  # one list: this stop's first format, rank 0's
        saved_bad = [saved_bad]
    return int(state["step"]), json.loads(state["history"]), sizes, saved_bad


def rank_unreadable(saved: Sequence[Sequence[int]], rank: int, world: int) -> list[int]:
    """The clip ids rank ``rank`` of ``world`` leaves out from a resume's start: its own from the checkpoint when the
    run had as many processes (each rank samples every clip with its own seed and found its own), else every
    rank's (another split of the data stream, not exact either way)."""
    if len(saved) == world:
        return sorted(int(v) for v in saved[rank])
    return sorted({int(v) for ids in saved for v in ids})


def world_size() -> int:
    """The number of data-parallel processes of this run (torchrun's WORLD_SIZE, else 1)."""
    return dist_utils.env_world()[1]


# --------------------------------------------------------------------------------------------- training
def _step_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return gen


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class LossModule(nn.Module):
    """The objective's loss as ``forward``, so DistributedDataParallel can wrap it and average gradients."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, images: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective.compute_loss(images, batch)


def guard_losses(losses: Mapping[str, torch.Tensor], step: int, info: DistInfo) -> None:
    """:func:`check_finite` on every rank's losses; under DDP every rank stops when one rank's loss is bad."""
    if info.enabled:
        bad = torch.tensor([0.0 if all(bool(torch.isfinite(v).all()) for v in losses.values()) else 1.0])
        if info.backend == "nccl":
            bad = bad.cuda()
        torch.distributed.all_reduce(bad)
        if float(bad.item()) > 0 and all(bool(torch.isfinite(v).all()) for v in losses.values()):
            raise NonFiniteLossError(next(iter(losses)), float("nan"), step, "the non-finite value was on another rank")
    check_finite(losses, step, hint="lower lr or set grad_clip")


def train_step(objective: nn.Module, optimizer: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor],
               pad: int, generator: torch.Generator, grad_clip: float | None, step: int = 0,
               model: nn.Module | None = None, dist_info: DistInfo = DistInfo()) -> dict[str, float]:
    """One optimizer step on one batch of uint8 frames; returns the loss and the objective's diagnostics.

    ``model`` is the (DDP-wrapped) :class:`LossModule` under torchrun; a NaN / inf loss raises
    :class:`NonFiniteLossError` before the step is applied.
    """
    images = augment(batch["frames"], pad, generator)
    objective.train()
    loss, info = model(images, batch) if model is not None else objective.compute_loss(images, batch)
    guard_losses({"total_loss": loss.detach(),
                  **{k: v.detach() for k, v in info.items() if "loss" in k and torch.is_tensor(v)}}, step, dist_info)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        info["grad_norm"] = torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], float(grad_clip))
    optimizer.step()
    objective.after_step()
    return {"loss": loss.item(), **{k: float(v) for k, v in info.items()}}


@torch.no_grad()
def evaluate(objective: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean loss and diagnostics over fixed batches, without augmentation."""
    objective.eval()
    totals: dict[str, float] = {}
    for batch in batches:
        loss, info = objective.compute_loss(augment(batch["frames"], 0), batch)
        for k, v in {"loss": loss, **info}.items():
            totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
    return totals


def _log_scalars(writer: Any, prefix: str, values: Mapping[str, float], step: int) -> None:
    if writer is not None:
        writer.scalars(step, {f"{prefix}/{k}": v for k, v in values.items() if k != "step"})


def train(cfg: DictConfig, run_dir: str | os.PathLike) -> Path:
    """Run stage 1 as ``cfg`` says; returns the encoder checkpoint folder (data-parallel under torchrun)."""
    validate_config(cfg)
    return dist_utils.run_on_ranks(lambda dinfo, device: _train_holding(cfg, run_dir, dinfo, device),
                                   resolve_device(str(cfg.device)))


def _train_holding(cfg: DictConfig, run_dir: str | os.PathLike, dinfo: DistInfo, device: torch.device) -> Path:
    """:func:`_train` with rank 0 holding the run folder's writer lock (a second process refused, not resuming too)."""
    paths = RunPaths.from_config(cfg, run_dir)
    with contextlib.ExitStack() as locks:
        locks.enter_context(run_folder_lock(paths.run_dir, active=dinfo.is_main))
        if cfg.get("output"):  # an encoder written outside the run folder: two runs given one output= replaced it
            locks.enter_context(run_folder_lock(paths.encoder.parent, active=dinfo.is_main,
                                                lock_name=f".{paths.encoder.name}.writer.lock",
                                                what=str(paths.encoder)))
        return _train(cfg, run_dir, dinfo, device)


ENCODER_KIND = "an encoder checkpoint"


def _holds_an_encoder(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def _train(cfg: DictConfig, run_dir: str | os.PathLike, dinfo: DistInfo, device: torch.device) -> Path:
    paths = RunPaths.from_config(cfg, run_dir)
    if dinfo.is_main:  # an encoder place it may not replace, or another stage's run folder: refused before training
        check_replaceable(paths.encoder, _holds_an_encoder, kind=ENCODER_KIND)
        refuse_other_stage(paths.run_dir, "pretrain")
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        left = remove_leftovers(paths.checkpoint) + remove_leftovers(paths.encoder)  # of a run killed mid-write
        if left:
            log.info("removed what a killed run left half-written: %s", ", ".join(left))
    cpu_settings.apply_from_config(cfg)
    torch.manual_seed(int(cfg.seed))
    encoder = make_encoder(str(cfg.encoder.name), int(cfg.image_size),
                           **OmegaConf.to_container(cfg.encoder.kwargs, resolve=True))
    name = str(cfg.objective.name)
    if name == "none":
        if not dinfo.is_main:
            return paths.encoder
        path = save_pretrained(paths.encoder, encoder, None, cfg, steps=0)
        write_json_atomic(paths.metrics, {"objective": "none", "steps": 0, "encoder_path": str(path)})
        log.info("objective=none: saved the random initialisation to %s", path)
        return path

    with dist_utils.main_first(dinfo):  # rank 0 generates the videos, the others then reuse them
        kept = recorded_data(paths.checkpoint) if cfg.resume else []  # a refused resume keeps the copy it names
        data_path = resolve_data_path(cfg, paths.run_dir, kept)
    train_source, valid_source, facts = open_sources(cfg, data_path)
    left_out = [f"{len(facts[k])} {what}" for k, what in (("bad_videos", "unreadable"), ("short_videos", "too short"))
                if facts[k]]
    log.info("data %s: %d videos used (%d train, %d valid), %d frames%s", data_path, facts["videos"],
             facts["train_videos"], facts["valid_videos"], facts["frames"],
             f"; left out: {', '.join(left_out)} (metrics.json lists them)" if left_out else "")
    objective = make_objective(name, encoder, OmegaConf.to_container(cfg.objective.options, resolve=True)).to(device)
    model = dist_utils.wrap_ddp(LossModule(objective), dinfo, device) if dinfo.enabled else None
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(cfg.lr), eps=float(cfg.adam_eps), weight_decay=float(cfg.weight_decay),
                                 foreach=True)
    steps = int(cfg.steps)
    effective_batch = int(cfg.batch_size) * dinfo.world_size
    parallel = {"world_size": dinfo.world_size, "backend": dinfo.backend, "batch_size_per_process": int(cfg.batch_size),
                "effective_batch_size": effective_batch}
    if dinfo.enabled:
        log.info("data-parallel over %d processes (%s): effective batch size %d = %d x %d", dinfo.world_size,
                 dinfo.backend, effective_batch, int(cfg.batch_size), dinfo.world_size)
    start, history, world_sizes, unreadable = 0, {"train": [], "valid": []}, [], []
    run_print = fingerprint(cfg, data_path, run_fingerprint.run_home(cfg, paths.run_dir))
    if cfg.resume and paths.checkpoint.is_file():
        start, history, world_sizes, unreadable = load_checkpoint(paths.checkpoint, objective, optimizer, cfg, device,
                                                                  run_print)
        log.info("resumed from %s at step %d", paths.checkpoint, start)
        if start > steps and dinfo.is_main:  # as stage 2 says it (robopretrain.loops.offline)
            log.warning("%s: its checkpoint is at step %d, past steps=%d: nothing to train, and the encoder saved is "
                        "that checkpoint's (not one at step %d); a fresh output_dir trains to %d", paths.checkpoint,
                        start, steps, steps, steps)
    elif not cfg.resume and dinfo.is_main:  # a fresh run: the old run's files are not mixed with this one's
        previous = ["checkpoints", paths.tensorboard.name, paths.metrics.name, WANDB_ID_FILE]
        if paths.encoder.parent == paths.run_dir:  # the default encoder folder (an ``output`` elsewhere is replaced
            previous.append(paths.encoder.name)   # at the end, as before)
        clear_previous_run(paths.run_dir, tuple(previous))
    # every session's size, not the last one's only (metrics.json and the encoder's meta.json: parallel.history)
    parallel["history"] = dist_utils.world_size_history(world_sizes, None, start, dinfo.world_size, int(cfg.batch_size))
    own_unreadable = rank_unreadable(unreadable, dinfo.rank, dinfo.world_size)
    data_seed = dist_utils.rank_seed(int(cfg.seed), dinfo)
    sampling = OmegaConf.to_container(cfg.objective.sampling, resolve=True)
    stream = FrameBatchStream(train_source, name, int(cfg.batch_size), seed=data_seed, sampling=sampling,
                              start_batch=start, num_batches=max(steps - start, 0), unreadable=own_unreadable)
    loader = batch_loader(stream, int(cfg.num_workers), pin_memory=device.type == "cuda")
    valid_batches, valid_stream = [], None
    if dinfo.is_main and valid_source is not None and int(cfg.valid_batches) > 0:
        valid_stream = FrameBatchStream(valid_source, name, int(cfg.batch_size), seed=int(cfg.seed) + VALID_SEED_OFFSET,
                                        sampling=sampling)
        try:
            valid_batches = [_to_device(without_unreadable(valid_stream.batch(k)), device)
                             for k in range(int(cfg.valid_batches))]
        except VideoDatasetError as err:  # training clips may still be fine: train without validation
            if bool(cfg.data.strict):  # data.strict: a corrupt clip is an error, in validation too
                raise
            log.warning("validation clips: %s; training without validation (another data.split_seed draws other "
                        "clips)", err)
            valid_batches = []

    writer = None
    if dinfo.is_main:  # the logger group (TensorBoard by default, robopretrain.loggers); tensorboard=false: none
        writer = make_logger(cfg.get("logger"), paths.run_dir, config=plain_config(cfg),
                             tensorboard=bool(cfg.tensorboard), tensorboard_dir=paths.tensorboard,
                             purge_step=start + 1 if start else 0)  # what an earlier session logged after it
    if valid_batches and start == 0:
        history["valid"].append({"step": 0, **evaluate(objective, valid_batches)})
        _log_scalars(writer, "valid", history["valid"][-1], 0)

    pad, clip = int(cfg.augment_pad), (float(cfg.grad_clip) if cfg.grad_clip is not None else None)
    window: dict[str, float] = {}
    window_n, t0, t_window = 0, time.perf_counter(), time.perf_counter()
    step = start
    # ids (of train_source) this rank's stream workers found unreadable while training, earlier sessions' included;
    # every rank's at each checkpoint (for metrics.json: every rank's)
    found_unreadable: set[int] = set(own_unreadable)
    every_rank = [sorted(v) for v in unreadable] or [sorted(found_unreadable)]
    bar = tqdm(total=steps, initial=start, desc=f"stage1 {name}", unit="step",
               disable=not cfg.progress or not dinfo.is_main, dynamic_ncols=True)
    try:
        for step, batch in enumerate(loader, start=start + 1):
            found_unreadable.update(batch.pop("unreadable").tolist())  # what this batch's worker dropped so far
            out = train_step(objective, optimizer, _to_device(batch, device), pad,
                             _step_generator(device, data_seed, step), clip, step=step, model=model, dist_info=dinfo)
            for k, v in out.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            bar.update(1)
            if step % int(cfg.log_every) == 0 or step == steps:
                means = dist_utils.mean_over_ranks({k: v / window_n for k, v in window.items()}, dinfo)
                now = time.perf_counter()
                means["steps_per_s"] = window_n / max(now - t_window, 1e-9)
                history["train"].append({"step": step, **means})
                _log_scalars(writer, "train", means, step)
                bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
                window, window_n, t_window = {}, 0, now
            if valid_batches and (step % int(cfg.eval_every) == 0 or step == steps):
                history["valid"].append({"step": step, **evaluate(objective, valid_batches)})
                _log_scalars(writer, "valid", history["valid"][-1], step)
                bar.set_postfix(loss=f"{history['train'][-1]['loss'] if history['train'] else float('nan'):.4g}",
                                valid=f"{history['valid'][-1]['loss']:.4g}", refresh=False)
            if step % int(cfg.checkpoint_every) == 0 or step == steps:  # (every rank: the gather)
                every_rank = gather_objects(sorted(found_unreadable), dinfo) if dinfo.enabled else \
                    [sorted(found_unreadable)]
                if dinfo.is_main:
                    save_checkpoint(paths.checkpoint, step, objective, optimizer, cfg, history, dinfo.world_size,
                                    run_print, parallel["history"], every_rank)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - t0
    trained = step - start
    parallel["replica_max_abs_diff"] = dist_utils.replica_max_abs_diff(objective, dinfo)
    if not dinfo.is_main:
        return paths.encoder
    left_out_now = [(stream, sorted({v for ids in every_rank for v in ids} | found_unreadable), "train_videos")]
    if valid_stream is not None:  # (also when every validation clip failed and the run trained without validation)
        left_out_now.append((valid_stream, sorted(valid_stream.unreadable), "valid_videos"))
    newly_bad = count_unreadable_found(facts, left_out_now)
    if newly_bad:
        log.warning("data: %d clip(s) turned out unreadable only when decoded and were left out: %s (metrics.json "
                    "lists them in data.bad_videos)", len(newly_bad), ", ".join(newly_bad))
    data_extra = {"data": {k: facts[k] for k in ("path", "videos", "train_videos", "valid_videos", "frames",
                                                 "cropped_sizes")},
                  "image_key": str(cfg.data.key) if data_path.suffix.lower() in HDF5_SUFFIXES else None,
                  "parallel": {k: v for k, v in parallel.items() if k != "replica_max_abs_diff"}}
    path = save_pretrained(paths.encoder, objective.encoder, objective, cfg, steps=step, extra=data_extra)
    summary = {"objective": name, "steps": step, "trained_steps_this_run": trained, "seconds_this_run": elapsed,
               "steps_per_second": trained / elapsed if trained and elapsed > 0 else None,
               "encoder_path": str(path), "data": facts, "bad_videos": list(facts["bad_videos"]),
               "short_videos_skipped": facts["short_videos"],
               "fingerprint": run_print,
               "parallel": parallel, "history": history,
               "final_valid_loss": history["valid"][-1]["loss"] if history["valid"] else None}
    write_json_atomic(paths.metrics, summary)
    rate = f"{trained / elapsed:.2f} steps/s" if trained else "nothing left to train"
    log.info("trained %s for %d steps this run (%s, %.1f s, effective batch size %d); encoder saved to %s", name,
             trained, rate, elapsed, effective_batch, path)
    return path


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="video_pretrain")
@friendly_errors
def main(cfg: DictConfig) -> None:
    path = train(cfg, HydraConfig.get().runtime.output_dir)
    if dist_utils.env_world()[0] == 0:
        print(f"encoder: {path}")


def cli_main() -> None:
    """``python -m video_pretrain.train`` and its console script: one-line config errors, then Hydra."""
    run_hydra(main, "video_pretrain")
    dist_utils.exit_finished_worker()  # a torchrun worker whose run returned: exit 0 now (see its docstring)


if __name__ == "__main__":
    cli_main()
