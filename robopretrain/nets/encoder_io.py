"""Saving and loading a trained image encoder as a self-describing checkpoint folder.

Stage 1 saves the encoder it trained; stages 2 and 3 load it by path. The folder holds::

    encoder.pt    the encoder's state_dict (torch.save; loaded with torch.load(weights_only=True))
    meta.json     format, encoder name and constructor arguments (image_size, in_channels, kwargs),
                  out_dim, input_spec (image size, channels, normalization, layout), parameter count,
                  versions of python/torch/torchvision/timm/numpy/robopretrain, and ``extra``
                  (e.g. the objective and the number of training steps)
    config.yaml   the full resolved config of the run that produced it

:func:`save_encoder` writes the folder under a temporary name next to the target and renames it into
place, so no half-written checkpoint is ever visible (an existing encoder checkpoint at the same path is
replaced; any other non-empty folder there is refused). :func:`load_encoder` rebuilds the encoder with
:func:`robopretrain.nets.encoders.make_encoder` from meta.json and loads the weights; every problem
raises :class:`EncoderCheckpointError` naming the file and what was expected.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from robopretrain.files import replace_folder, temp_folder, torch_load_problem, torch_save
from robopretrain.nets.encoders import make_encoder, num_parameters

log = logging.getLogger(__name__)

WEIGHTS_FILE = "encoder.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
FORMAT = "robopretrain.encoder"
FORMAT_VERSION = 1
REQUIRED_META_KEYS = ("format", "format_version", "encoder", "image_size", "in_channels", "kwargs", "out_dim")


class EncoderCheckpointError(ValueError):
    """An encoder checkpoint folder is missing, unreadable, or does not match the encoder it describes."""


def _versions() -> dict[str, str]:
    import numpy as np
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__}
    try:
        import timm

        versions["timm"] = timm.__version__
    except ImportError:
        versions["timm"] = "not installed"
    try:
        from importlib.metadata import version

        versions["robopretrain"] = version("robopretrain")
    except Exception:  # noqa: BLE001 - a source checkout that is not installed as a distribution
        versions["robopretrain"] = "source"
    return versions


def _config_yaml(config: Mapping[str, Any] | DictConfig) -> str:
    if isinstance(config, DictConfig):
        return OmegaConf.to_yaml(config, resolve=True)
    return OmegaConf.to_yaml(OmegaConf.create(dict(config)))


def _json_text(obj: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_encoder: {what} must be JSON-serializable (numbers, strings, lists, dicts): {exc}") from exc


def encoder_meta(encoder: nn.Module, name: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The meta.json content for ``encoder`` (built by make_encoder under ``name``)."""
    build_args = getattr(encoder, "build_args", None)
    if not isinstance(build_args, dict):
        raise TypeError(f"save_encoder: {type(encoder).__name__} has no build_args; build encoders with "
                        f"robopretrain.nets.encoders.make_encoder so they can be rebuilt from meta.json")
    if build_args["name"] != name:
        raise ValueError(f"save_encoder: name {name!r} differs from the encoder's own name {build_args['name']!r}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": name,
        "image_size": build_args["image_size"],
        "in_channels": build_args["in_channels"],
        "kwargs": build_args["kwargs"],
        "out_dim": int(encoder.out_dim),
        "input_spec": encoder.input_spec,
        "num_parameters": num_parameters(encoder),
        "versions": _versions(),
        "extra": dict(extra or {}),
    }


def _is_encoder_checkpoint(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` folder to ``final``, replacing an older encoder checkpoint there."""
    try:
        replace_folder(tmp, final, _is_encoder_checkpoint, kind="an encoder checkpoint")
    except FileExistsError as e:
        raise EncoderCheckpointError(str(e)) from None


def save_encoder(dir_path: str | os.PathLike, encoder: nn.Module, name: str,
                 config: Mapping[str, Any] | DictConfig, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``encoder`` (from ``make_encoder(name, ...)``) to the folder ``dir_path`` atomically; returns it.

    ``config`` is the run's full config (a dict or an OmegaConf DictConfig, resolved on writing);
    ``extra`` (JSON-serializable) is stored in meta.json under ``"extra"``.
    """
    final = Path(dir_path)
    meta_text = _json_text(encoder_meta(encoder, name, extra), "meta (extra)")
    config_text = _config_yaml(config)
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    tmp = temp_folder(final)
    try:
        torch_save(state, tmp / WEIGHTS_FILE)
        (tmp / META_FILE).write_text(meta_text)
        (tmp / CONFIG_FILE).write_text(config_text)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


RUN_SUBFOLDER = "encoder"  # where stage 1 saves its encoder inside its run folder


def resolve_encoder_dir(dir_path: str | os.PathLike) -> Path:
    """The encoder checkpoint folder ``dir_path`` names: itself, or, for a stage-1 run folder (no meta.json of its
    own), its ``encoder`` folder, or the one its ``metrics.json`` records (``encoder_path``: a run whose ``output=``
    wrote it elsewhere) (logged)."""
    folder = Path(dir_path)
    inner = folder / RUN_SUBFOLDER
    if not (folder / META_FILE).is_file() and (inner / META_FILE).is_file():
        log.info("%s: a stage-1 run folder; its encoder is %s", folder, inner)
        return inner
    recorded = _recorded_encoder(folder) if not (folder / META_FILE).is_file() else None
    if recorded is not None:  # a finished run that wrote its encoder elsewhere (stage 1's output=)
        log.info("%s: a stage-1 run folder whose encoder was written to %s (its metrics.json)", folder, recorded)
        return recorded
    return folder


def _recorded_encoder(run: Path) -> Path | None:
    """The encoder folder a finished stage-1 run's ``metrics.json`` records (``encoder_path``) when it holds one."""
    try:
        path = json.loads((run / "metrics.json").read_text()).get("encoder_path")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(path) if path and (Path(path) / META_FILE).is_file() else None


def read_encoder_meta(dir_path: str | os.PathLike) -> dict[str, Any]:
    """Read and check meta.json of an encoder checkpoint folder or a stage-1 run folder (:func:`resolve_encoder_dir`;
    no weights are read)."""
    folder = resolve_encoder_dir(dir_path)
    if not folder.is_dir():
        raise EncoderCheckpointError(f"{folder}: no such encoder checkpoint folder")
    path = folder / META_FILE
    if not path.is_file():
        # stage 1's training checkpoint (video_pretrain.train: <run>/checkpoints/last.pt), before its encoder is saved
        unfinished = (folder / "checkpoints" / "last.pt").is_file()
        agent_run = not unfinished and ((folder / "checkpoints").is_dir() or (folder / "latest").is_file())
        raise EncoderCheckpointError(
            f"{path}: missing; expected an encoder checkpoint folder written by save_encoder (stage 1's <run>/encoder)"
            + ("; this is a stage-1 run that has not saved its encoder yet (stopped, or still training): rerun stage 1 "
               "with the same settings to finish it (it resumes from checkpoints/last.pt), then give this folder"
               if unfinished else "; this is an agent run: init=<folder> starts stage 2 from its agent, encoders "
               "included" if agent_run else ""))
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EncoderCheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise EncoderCheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META_KEYS if k not in meta]
    if missing:
        raise EncoderCheckpointError(f"{path}: missing key(s) {missing}; expected {list(REQUIRED_META_KEYS)}")
    if meta["format"] != FORMAT or meta["format_version"] != FORMAT_VERSION:
        raise EncoderCheckpointError(f"{path}: format {meta['format']!r} version {meta['format_version']!r}; "
                                     f"expected {FORMAT!r} version {FORMAT_VERSION}")
    if not isinstance(meta["kwargs"], dict):
        raise EncoderCheckpointError(f"{path}: 'kwargs' must be an object, got {meta['kwargs']!r}")
    return meta


def _rebuild(meta: dict[str, Any], meta_path: Path) -> nn.Module:
    try:
        return make_encoder(meta["encoder"], meta["image_size"], meta["in_channels"], **meta["kwargs"])
    except (ValueError, TypeError) as exc:
        raise EncoderCheckpointError(f"{meta_path}: cannot build encoder {meta['encoder']!r} with image_size="
                                     f"{meta['image_size']}, in_channels={meta['in_channels']}, kwargs="
                                     f"{meta['kwargs']}: {exc}") from exc


def _check_state_dict(state: Any, expected: dict[str, torch.Tensor], path: Path) -> None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderCheckpointError(f"{path}: expected a state_dict (a dict of tensors)")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: saved {tuple(state[k].shape)}, encoder has {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append(f"shape mismatch {wrong[:5]}{' ...' if len(wrong) > 5 else ''}")
    if problems:
        raise EncoderCheckpointError(f"{path}: weights do not fit the encoder described in {META_FILE}: "
                                     + "; ".join(problems))


def load_encoder(dir_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the encoder saved in ``dir_path`` (an encoder folder or a stage-1 run folder,
    :func:`resolve_encoder_dir`) and load its weights; returns (encoder, meta).

    The encoder is returned in eval mode (call ``.train()`` to fine-tune it). ``meta`` is meta.json's
    content; the run's config is in ``dir_path / "config.yaml"``.
    """
    folder = resolve_encoder_dir(dir_path)
    meta = read_encoder_meta(folder)
    encoder = _rebuild(meta, folder / META_FILE)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise EncoderCheckpointError(f"{weights_path}: missing; expected the encoder's state_dict")
    try:
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, unpickling errors, ...
        raise EncoderCheckpointError(f"{weights_path}: {torch_load_problem(exc)}") from None
    _check_state_dict(state, encoder.state_dict(), weights_path)
    encoder.load_state_dict(state)
    if int(meta["out_dim"]) != encoder.out_dim:
        raise EncoderCheckpointError(f"{folder / META_FILE}: out_dim {meta['out_dim']} but the rebuilt encoder has "
                                     f"{encoder.out_dim} (different library versions?)")
    return encoder.to(map_location).eval(), meta
