"""Self-describing, atomically written, resumable checkpoints (ARCHITECTURE.md, "Checkpoints").

A run keeps its checkpoints in one folder::

    <root>/ckpt_00001000/   config.yaml   the full resolved config
                            weights.pt    state dicts of the model (torch.save; loaded with weights_only=True),
                                          the observation normalisation statistics among them (the encoders'
                                          ``mean`` / ``std`` buffers, so they cannot drift from the weights)
                            meta.json     obs keys and shapes, action dim, task names and one-hot slots, whether
                                          observations are normalised (encoder settings), algorithm, step,
                                          versions of torch / mujoco / robopretrain; standard JSON (an
                                          infinite setting as the string "Infinity": files.standard_json)
                            state.pt      (resumable runs) optimiser, RNG states, replay/sampler state, counters
    <root>/latest           text file naming the newest complete checkpoint (written atomically)

Every checkpoint is written into a temporary folder next to its final name and renamed when complete, so a
crash never leaves a half-written ``ckpt_*``; only the newest ``keep`` checkpoints are kept. When the newest
checkpoint cannot be read (corrupt or missing files), :func:`load_latest` warns and falls back to the
previous one. :func:`check_agent_fits` turns a checkpoint from another configuration (observation spec,
action dim, algorithm, encoder mode) into a :class:`CheckpointError` that names what differs. Agents are saved with
:func:`save_agent` and rebuilt from the folder alone with :func:`load_agent`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from robopretrain.files import (from_standard_json, replace_folder, standard_json, temp_folder, torch_load_problem,
                                torch_save, write_text_atomic)
from robopretrain.run_fingerprint import ResumeRefusal, moved_file

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.pt"
META_FILE = "meta.json"
STATE_FILE = "state.pt"
LATEST_FILE = "latest"
KILL_AFTER_CHECKPOINT_ENV = "ROBOPRETRAIN_KILL_AFTER_CHECKPOINT"  # test hook: see kill_after_checkpoint
PREFIX = "ckpt_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the current configuration."""


class CheckpointMismatchError(ResumeRefusal, CheckpointError):
    """The checkpoint a rerun would resume is of another kind of agent (:func:`check_agent_fits`)."""

    def text(self) -> str:
        return f"{self.where}: checkpoint does not fit this config ({self.changes}). {self.fresh[:1].upper()}" \
               f"{self.fresh[1:].rstrip('.')}."


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, config, meta data, weights and (optional) training state."""

    path: Path
    config: DictConfig
    meta: dict[str, Any]
    weights: dict[str, Any]
    state: dict[str, Any] | None

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def library_versions() -> dict[str, str]:
    """Versions of torch, mujoco, numpy and this package, for ``meta.json``."""
    import numpy as np

    versions = {"torch": torch.__version__, "numpy": np.__version__}
    try:
        import mujoco

        versions["mujoco"] = mujoco.__version__
    except ImportError:  # a pure-offline install without the simulator
        versions["mujoco"] = "not installed"
    try:
        from importlib.metadata import version

        versions["robopretrain"] = version("robopretrain")
    except Exception:  # noqa: BLE001 - not installed as a distribution (source checkout)
        versions["robopretrain"] = "source"
    return versions


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{int(step):08d}"


def _to_yaml(config: DictConfig | Mapping[str, Any]) -> str:
    if isinstance(config, DictConfig):
        return OmegaConf.to_yaml(config, resolve=True)
    return OmegaConf.to_yaml(OmegaConf.create(dict(config)))


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    config: DictConfig | Mapping[str, Any],
    weights: Mapping[str, Any],
    meta: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``ckpt_<step>`` under ``root`` atomically, point ``latest`` at it, prune old ones.

    ``weights`` and ``state`` must hold only tensors, numbers, strings and containers of them (what
    ``torch.load(weights_only=True)`` accepts); ``meta`` must be JSON-serialisable. Returns the folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = temp_folder(final)
    try:
        (tmp / CONFIG_FILE).write_text(_to_yaml(config))
        full_meta = {**dict(meta), "step": int(step), "versions": library_versions()}
        (tmp / META_FILE).write_text(json.dumps(standard_json(full_meta), indent=2, sort_keys=True, allow_nan=False))
        torch_save(dict(weights), tmp / WEIGHTS_FILE)
        if state is not None:
            torch_save(dict(state), tmp / STATE_FILE)
        replace_folder(tmp, final, kind="a checkpoint")  # a fresh run re-reaching a step replaces the old one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST_FILE, final.name + "\n")
    prune_checkpoints(root, keep, written=final)
    kill_after_checkpoint(step)
    return final


def kill_after_checkpoint(step: int) -> None:
    """Test hook: with ``ROBOPRETRAIN_KILL_AFTER_CHECKPOINT=N`` in the environment, the process SIGKILLs itself right
    after writing the checkpoint of a step ``>= N`` (stages 1-3 call this once their checkpoint is complete), so
    tests/test_kill_resume.py kills a run at a known checkpoint without depending on timing. Unset: does nothing."""
    at = os.environ.get(KILL_AFTER_CHECKPOINT_ENV)
    if at and int(step) >= int(at):
        os.kill(os.getpid(), signal.SIGKILL)


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders under ``root``, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            found.append((int(p.name[len(PREFIX):]), p))
    return [p for _, p in sorted(found, reverse=True)]


def prune_checkpoints(root: str | os.PathLike, keep: int, written: Path | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints (by step) and leftover temporary folders; ``written``, the
    checkpoint just saved, is always among those kept (a run saving a lower step than the folder's others, as one's
    own loop rerun in a used folder does, deleted what it had just written, and ``latest`` named nothing)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root)
    found = list_checkpoints(root)
    kept = ([written] if written is not None and written in found else [])
    kept += [c for c in found if c not in kept][:keep - len(kept)]
    for old in found:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(f".{PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike, with_state: bool = True) -> Checkpoint:
    """Load one checkpoint folder; raises :class:`CheckpointError` naming the file that is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder does not exist")
    _refuse_encoder_folder(path)
    for name in (CONFIG_FILE, META_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing; expected a complete checkpoint folder")
    try:
        config = OmegaConf.load(path / CONFIG_FILE)
    except Exception as e:  # noqa: BLE001 - yaml errors come in several types
        raise CheckpointError(f"{path / CONFIG_FILE}: cannot be parsed as YAML: {e}") from None
    try:
        meta = from_standard_json(json.loads((path / META_FILE).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / META_FILE}: not valid JSON: {e}") from None
    weights = _torch_load(path / WEIGHTS_FILE)
    state = None
    if with_state and (path / STATE_FILE).is_file():
        state = _torch_load(path / STATE_FILE)
    return Checkpoint(path=path, config=config, meta=meta, weights=weights, state=state)


def recorded_file(ckpt: Checkpoint, key: str) -> str | None:
    """The file a checkpoint's meta names under ``key`` (``data_path``, ``mix_path``), or, when no file is there and
    the run folder holding it moved with the checkpoint (a copied runs folder, a renamed run), the same file under
    its new place (:func:`robopretrain.run_fingerprint.moved_file`: same place relative to the run folder, same size
    and content hash as recorded); None when meta names none. A file found so is logged."""
    path = ckpt.meta.get(key)
    if not path or os.path.exists(str(path)):
        return path
    moved = moved_file(str(path), ckpt.meta.get("fingerprint"), ckpt.path)
    if moved is None:
        return str(path)
    log.info("%s: its %s %s is not there; read at the run folder's new place, %s", ckpt.path, key, path, moved)
    return moved


def recorded_data_files(root: str | os.PathLike, keys: Sequence[str] = ("data_path", "mix_path")) -> list[str]:
    """The data files the checkpoints under ``root`` name in their meta (``data_path``, ``mix_path``: often
    converted copies in the cache), read from each ``meta.json`` alone (no weights loaded; an unreadable one is
    skipped): a conversion keeps them although stale while the run may resume on them. Empty without checkpoints."""
    out: list[str] = []
    for folder in list_checkpoints(root):
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError):
            continue
        out += [str(meta[k]) for k in keys if isinstance(meta, dict) and meta.get(k) and str(meta[k]) not in out]
    return out


def _torch_load(file: Path) -> dict[str, Any]:
    """A checkpoint file's state dicts, loaded safely (``weights_only=True``); CheckpointError for a file that cannot
    be read so (:func:`robopretrain.files.torch_load_problem`)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle errors, ...
        raise CheckpointError(f"{file}: {torch_load_problem(e)}") from None


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a checkpoint folder, else the newest readable one under it (``latest``); the
    ``latest`` pointer file itself stands for its folder (what a shell's tab completion often gives); ``~`` is the
    home folder, as in the data paths (``checkpoint='~/runs/s2'`` was "no such file or folder")."""
    path = Path(path).expanduser()
    if path.name == LATEST_FILE and path.is_file():
        path = path.parent
    if (path / META_FILE).is_file():
        return path
    for candidate in (path, path / "checkpoints"):
        found = _latest_candidates(candidate)
        if found:
            return found[0]
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; give a run folder (its checkpoints/ holds ckpt_* "
                              "checkpoints), its checkpoints/ folder or one ckpt_* folder")
    if path.is_dir() and path.name.startswith(PREFIX):
        missing = [name for name in (META_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        raise CheckpointError(f"{path}: a checkpoint folder without {' and '.join(missing)} (damaged, or cut short "
                              f"while written); give its run folder ({run}) to use the newest readable "
                              "checkpoint there")
    _refuse_encoder_folder(path)
    runs = _runs_below(path)
    raise CheckpointError(f"{path}: neither a checkpoint folder nor a folder holding ckpt_* checkpoints"
                          + (f"; run folders below it: {', '.join(runs[:4])}{', ...' if len(runs) > 4 else ''}"
                             if runs else ""))


def _runs_below(path: Path, depth: int = 2) -> list[str]:
    """The run folders (holding ``checkpoints/ckpt_*``) up to ``depth`` levels below ``path`` (a pipeline run folder:
    ``stage2``, ``adapt/<target>``, ``stage3/<target>``), as paths; empty when there are none or ``path`` is no
    folder."""
    if not path.is_dir():
        return []
    found: list[str] = []
    level = [path]
    for _ in range(depth):
        level = sorted(c for p in level for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))
        found += [str(c) for c in level if list_checkpoints(c / "checkpoints")]
    return found


ENCODER_FILE = "encoder.pt"  # robopretrain.nets.encoder_io's weights file (a stage-1 encoder folder holds it)


def load_checkpoint_at(path: str | os.PathLike, with_state: bool = True) -> Checkpoint:
    """:func:`load_checkpoint` of :func:`resolve_checkpoint_dir` ``(path)``. When ``path`` names a run (not one
    ``ckpt_*`` folder) and its newest checkpoint cannot be read, the :class:`CheckpointError` names the newest one
    that can: an older checkpoint is not taken in its place silently (an evaluation or a stage-3 start would report
    or start from another one than asked), but it is one setting away. A newest checkpoint that a run still writing
    removes while it is read (its rotation keeps the last few) is looked up again."""
    asked = (Path(path).expanduser() / META_FILE).is_file()  # this very checkpoint was asked for
    for attempt in range(3):
        chosen = resolve_checkpoint_dir(path)
        try:
            return load_checkpoint(chosen, with_state=with_state)
        except (CheckpointError, FileNotFoundError) as exc:
            if not asked and not chosen.exists() and attempt < 2:
                continue  # rotated away by the run meanwhile: its newest again
            if isinstance(exc, FileNotFoundError):  # a file of it missing, or the folder removed meanwhile
                exc = CheckpointError(f"{chosen}: {exc.filename} is missing" + (
                    " (removed while it was read: a run still writing checkpoints rotates old ones away; give the "
                    "run folder to read its newest)" if not chosen.exists() else ""))
            if asked:
                raise exc from None
            failure = exc
            break
    for older in _latest_candidates(chosen.parent):
        if older == chosen:
            continue
        try:
            load_checkpoint(older, with_state=with_state)
        except (CheckpointError, FileNotFoundError):  # (rotated away meanwhile too)
            continue
        raise CheckpointError(f"{failure}; the newest readable checkpoint of {path} is {older}: pass it (checkpoint="
                              f"{older}) to use it") from None
    raise failure


def _refuse_encoder_folder(path: Path) -> None:
    """Raise :class:`CheckpointError` saying what ``path`` is when it is a stage-1 encoder folder or a stage-1 run
    folder (its ``encoder`` inside): an image encoder, not an agent (it read as a corrupt agent checkpoint)."""
    for folder in (path, path / "encoder"):
        if (folder / ENCODER_FILE).is_file() and not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{path}: a stage-1 (video pretraining) image encoder, not an agent: an agent's "
                                  "checkpoint is a stage-2 or stage-3 run folder; the encoder starts stage 2 as "
                                  f"encoder.checkpoint={folder}")


_DANGLING_SAID: set[str] = set()  # ``latest`` pointers already warned about as naming no checkpoint (per process)


def _latest_candidates(root: Path) -> list[Path]:
    """Checkpoint folders to try, in order: the one ``latest`` names, then the others, newest first. A ``latest``
    that names no checkpoint folder there (damaged, or its folder deleted) is ignored, with one warning: it was tried
    first and warned about as "unreadable; falling back to the previous one" while the newest was then used, and
    refused by an evaluation."""
    ordered = list_checkpoints(root)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        named = root / name if name and "/" not in name else None
        if named is not None and named in ordered:
            ordered.remove(named)
            ordered.insert(0, named)
        elif ordered and str(pointer) not in _DANGLING_SAID:
            _DANGLING_SAID.add(str(pointer))
            log.warning("%s names %r, which is no checkpoint folder there; the newest one, %s, is used (the next "
                        "checkpoint written rewrites the pointer)", pointer, name, ordered[0].name)
    return ordered


# what a run writes in its folder (wandb_run_id: a fresh run would log into the old wandb run)
PREVIOUS_RUN = ("checkpoints", "transfer", "epopt_episodes.jsonl", "metrics.jsonl", "tb", "wandb_run_id")


def clear_previous_run(run_dir: str | os.PathLike, parts: tuple[str, ...] = PREVIOUS_RUN) -> list[str]:
    """``resume=false``: remove what an earlier run left in ``run_dir`` (``parts`` of :data:`PREVIOUS_RUN`: its
    checkpoints, transfer caches, EPOpt episode log, metrics, TensorBoard files and wandb run id; the config Hydra just
    wrote and generated data stay), so the fresh run's files are not mixed with the old ones (keeping the two newest
    checkpoints by update count pruned the fresh run's own, and a cache collected by another agent was reused).
    Callers clear after their start-up checks (a refused config leaves the old run in place). Returns the names
    removed."""
    run_dir = Path(run_dir)
    removed = [name for name in parts if (run_dir / name).exists()]
    for name in removed:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
        log.warning("resume=false: removed the previous run's %s from %s", ", ".join(removed), run_dir)
    return removed


# the "stage" a run's checkpoints record in their meta.json, and the command that writes them
STAGE_COMMANDS = {"pretrain": "stage 1 (video_pretrain.train)", "offline": "stage 2 (robopretrain.train)",
                  "online": "stage 3 (finetune.train)"}
STAGE1_CHECKPOINT = "last.pt"  # stage 1's training checkpoint in its run folder's checkpoints/ (video_pretrain.train)


def refuse_other_stage(run_dir: str | os.PathLike, stage: str, key: str = "output_dir") -> None:
    """Refuse to run ``stage`` (a key of :data:`STAGE_COMMANDS`) in ``run_dir`` when its newest checkpoint with a
    readable ``meta.json`` was written by another stage: stage 3 given a stage-2 run folder as its ``output_dir``
    started a fresh run there, emptied its metrics.jsonl and pruned (and overwrote) the stage-2 checkpoints, with
    no word. Stage 1's run folder (``checkpoints/last.pt``) is another stage's for stages 2 and 3, and theirs for
    stage 1 (``stage="pretrain"``). Raises ``ValueError`` naming ``key``, the checkpoint and the stage that wrote
    it."""
    stage1 = Path(run_dir) / "checkpoints" / STAGE1_CHECKPOINT
    if stage != "pretrain" and stage1.is_file():
        raise ValueError(f"{key}={run_dir} is a run folder of {STAGE_COMMANDS['pretrain']} ({stage1.name} is its "
                         f"checkpoint); {STAGE_COMMANDS.get(stage, stage)} would mix its checkpoints, logs and "
                         f"metrics with that run's: give this run its own {key}")
    for path in list_checkpoints(Path(run_dir) / "checkpoints"):
        try:
            theirs = json.loads((path / META_FILE).read_text()).get("stage")
        except (OSError, ValueError, AttributeError):
            continue
        if theirs and theirs != stage:
            raise ValueError(f"{key}={run_dir} is a run folder of {STAGE_COMMANDS.get(theirs, repr(theirs))} "
                             f"({path.name} is its checkpoint); {STAGE_COMMANDS.get(stage, stage)} would replace "
                             f"that run's checkpoints and metrics: give this run its own {key}")
        return


def refuse_source_in_run(source: str | os.PathLike, run_dir: str | os.PathLike, key: str) -> None:
    """``resume=false`` clears ``run_dir``'s checkpoints: refuse a ``source`` checkpoint (``init``, ``checkpoint``)
    that lies among them (``ValueError`` naming ``key``)."""
    ckpts = Path(run_dir).expanduser().resolve() / "checkpoints"
    src = Path(source).expanduser().resolve()  # (~ as the checkpoint is loaded: the guard missed it)
    if src == ckpts.parent or src == ckpts or ckpts in src.parents:
        raise ValueError(f"{key}={source} lies in this run folder ({run_dir}), whose checkpoints resume=false "
                         f"removes; write the new run to another output_dir")


def load_latest(root: str | os.PathLike, with_state: bool = True, resuming: bool = False) -> Checkpoint | None:
    """The newest readable checkpoint under ``root``; ``None`` when there is none.

    A newest checkpoint that cannot be read produces a warning and the previous one is used. ``resuming`` (a run
    continuing its own checkpoints): one without ``state.pt`` (optimisers, RNG, data stream; stage 3's replay buffer:
    not copied with the weights, say) is passed over the same way for an earlier one that has it, and is returned
    only when none has (a resume then cannot be exact: its caller says so); it was taken silently.
    """
    root = Path(root)
    errors: list[str] = []
    stateless: Checkpoint | None = None
    candidates = _latest_candidates(root)
    for i, candidate in enumerate(candidates):
        try:
            ckpt = load_checkpoint(candidate, with_state=with_state)
        except CheckpointError as e:
            errors.append(str(e))
            fallback = "falling back to the previous one" if i + 1 < len(candidates) else "no earlier one is kept"
            warnings.warn(f"checkpoint {candidate} is unreadable ({e}); {fallback}", stacklevel=2)
            continue
        if resuming and with_state and ckpt.state is None:
            stateless = stateless or ckpt
            continue
        if stateless is not None:  # said once an earlier checkpoint with its state is found (else the caller says)
            warnings.warn(f"checkpoint {stateless.path} has no {STATE_FILE} (optimisers, RNG, data stream, replay "
                          f"buffer), which a resume needs; falling back to the previous one, {ckpt.path}",
                          stacklevel=2)
        return ckpt
    if stateless is not None:
        return stateless
    if errors:
        raise CheckpointError(f"{root}: no readable checkpoint; errors: {errors}")
    return None


def check_agent_fits(meta: Mapping[str, Any], agent: Any, where: str = "", also: Sequence[str] = ()) -> None:
    """Raise :class:`CheckpointError` when a checkpoint (its ``meta``) is not of ``agent``'s kind: another
    algorithm, action size, action units, encoder mode or observation spec (each difference named, with both
    values), followed by ``also`` (what else differs, e.g. the run fingerprint's differences: another data file
    shows here only as other action units)."""
    from robopretrain.data.spec import ObsSpec, SpecMismatchError
    from robopretrain.agent import recorded_action_units
    from robopretrain.envs.action_units import describe as describe_units
    from robopretrain.envs.action_units import same_units

    problems = []
    mine = agent.describe()
    for key in ("algo", "act_dim", "encoder_mode"):
        if meta.get(key) != mine[key]:
            problems.append(f"{key}: checkpoint has {meta.get(key)!r}, this config needs {mine[key]!r}")
    if mine["encoder_mode"] in ("frozen", "frozen_cached"):  # feature statistics are in one checkpoint, not the other
        theirs = bool(dict(meta.get("encoder_settings") or {}).get("normalize_features", False))
        needed = bool(mine["encoder_settings"].get("normalize_features", False))
        if theirs != needed:
            problems.append(f"encoder.normalize_features: checkpoint has {theirs}, this config needs {needed}")
    theirs_units = recorded_action_units(meta)
    mine_units = getattr(agent, "action_normalization", None)
    if not same_units(theirs_units, mine_units):
        problems.append(f"action units: checkpoint has {describe_units(theirs_units)}, this config's data "
                        f"{describe_units(mine_units)}")
    if "obs_spec" not in meta:
        problems.append("obs_spec: missing from the checkpoint (written by an older robopretrain?)")
    else:
        try:
            ObsSpec.from_dict(meta["obs_spec"]).check_fits(agent.spec, mine="the checkpoint", theirs="this config")
        except SpecMismatchError as exc:  # its parts, without the sentence this message already says
            problems.append(str(exc).removeprefix("the checkpoint does not fit this config: "))
    if problems:
        if also:
            problems.append(f"the run that wrote it also differs in: {'; '.join(also)}")
        raise CheckpointMismatchError(where or "the run folder", "; ".join(problems),
                                      "use another output_dir, or resume=false to start a fresh run")


def rng_state() -> dict[str, Any]:
    """Torch's global CPU RNG state (and CUDA's when present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --------------------------------------------------------------------------- agents


def split_agent_state(agent_state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an :class:`~robopretrain.agent.Agent` ``state_dict`` into weights and optimiser states."""
    weights = {k: v for k, v in agent_state.items() if k != "encoder_optimizer"}
    weights["core"] = {k: v for k, v in agent_state["core"].items() if k != "optimizer"}
    optim = {"optimizer": agent_state["core"]["optimizer"]}
    if "encoder_optimizer" in agent_state:
        optim["encoder_optimizer"] = agent_state["encoder_optimizer"]
    return weights, optim


def join_agent_state(weights: Mapping[str, Any], state: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inverse of :func:`split_agent_state` (optimiser states taken from ``state`` when it has them)."""
    out = dict(weights)
    out["core"] = dict(weights["core"])
    if state is not None and "optimizer" in state:
        out["core"]["optimizer"] = state["optimizer"]
        if "encoder_optimizer" in state:
            out["encoder_optimizer"] = state["encoder_optimizer"]
    return out


def save_agent(root: str | os.PathLike, step: int, config: DictConfig | Mapping[str, Any], agent: Any,
               meta: Mapping[str, Any], state: Mapping[str, Any] | None = None, keep: int = 2) -> Path:
    """Checkpoint ``ckpt_<step>`` of ``agent``: weights, ``meta.json`` = the agent's own description
    (:meth:`robopretrain.agent.Agent.describe`: algorithm, observation spec, action size, encoder) plus ``meta``, and
    ``state.pt`` with the optimisers and ``state`` (RNG, sampler, counters) when ``state`` is given."""
    weights, optim = split_agent_state(agent.state_dict())
    full_state = None if state is None else {**optim, **dict(state)}
    return save_checkpoint(root, step, config, weights, {**dict(meta), **agent.describe()}, full_state, keep=keep)


def agent_from_checkpoint(ckpt: Checkpoint, *, device: str | Any = "cpu", with_optimizer: bool = False,
                          algo: str | None = None, algo_cfg: Any = None, seed: int = 0) -> Any:
    """Rebuild the agent a checkpoint describes and load its weights (and optimiser states when asked and saved).

    ``algo`` / ``algo_cfg`` continue training with another algorithm of the same networks (e.g. CQL -> Cal-QL).
    Raises :class:`CheckpointError` when the meta data cannot rebuild an agent or the weights do not fit it.
    """
    from robopretrain.agent import Agent

    saved = ckpt.meta.get("algo")
    families = ({"cql", "calql"}, {"iql"}, {"bc"}, {"td3_bc"}, {"awac"}, {"rebrac"}, {"bcq"}, {"por"}, {"dt"})
    if algo is not None and saved is not None and not any(algo in f and saved in f for f in families):
        article = "an" if saved[0] in "aeiou" else "a"
        raise CheckpointError(f"{ckpt.path}: {article} {saved} checkpoint cannot continue as {algo} (different "
                              f"networks); use algo={saved}"
                              + (" (CQL and Cal-QL share networks)" if saved in ("cql", "calql") else ""))
    meta = ckpt.meta if "action_normalization" in ckpt.meta else {  # older: units from the data file, wherever now
        **ckpt.meta, "data_path": recorded_file(ckpt, "data_path")}
    try:
        agent = Agent.from_description(meta, algo=algo, algo_cfg=algo_cfg, device=device, seed=seed)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path / META_FILE}: cannot rebuild the agent: {exc}") from None
    same_algo = algo is None or algo == ckpt.meta.get("algo")
    state = ckpt.state if (with_optimizer and same_algo) else None
    try:
        agent.load_state_dict(join_agent_state(ckpt.weights, state), with_optimizer=state is not None)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the agent its meta.json describes: {exc}") from None
    return agent


def load_agent(path: str | os.PathLike, *, device: str | Any = "cpu", with_optimizer: bool = False,
               algo: str | None = None, algo_cfg: Any = None, seed: int = 0) -> tuple[Any, Checkpoint]:
    """The agent of the newest checkpoint under ``path`` (a ``ckpt_*`` folder, a ``checkpoints/`` folder or a
    run folder holding one) and that checkpoint; nothing else is needed (no stage-1 file, no config). An unreadable
    newest one is an error naming the newest readable one (:func:`load_checkpoint_at`). ``device``: as a config's
    (``auto``, ``cpu``, ``cuda``...), checked as the configs check it
    (:func:`robopretrain.config_checks.resolve_device`: ``auto`` was torch's error, ``cuda`` on a CPU machine a driver
    error)."""
    from robopretrain.config_checks import resolve_device

    if isinstance(device, str):
        device = resolve_device(device, "load_agent")
    ckpt = load_checkpoint_at(path, with_state=with_optimizer)
    if "obs_spec" not in ckpt.meta:
        raise CheckpointError(f"{ckpt.path / META_FILE}: no obs_spec; expected an agent checkpoint written by "
                              "robopretrain.train, finetune.train or the pipeline")
    agent = agent_from_checkpoint(ckpt, device=device, with_optimizer=with_optimizer, algo=algo, algo_cfg=algo_cfg,
                                  seed=seed)
    return agent, ckpt
