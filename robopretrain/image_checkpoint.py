"""Self-describing checkpoints of image agents: save one, and rebuild the agent from it with no other file.

An image agent (:class:`~robopretrain.image_agent.ImageAgent`) is saved with :func:`save_image_checkpoint`, a
:func:`robopretrain.checkpoint.save_checkpoint` folder (atomic, ``latest`` pointer, newest ``keep`` kept) whose
``meta.json`` holds everything needed to rebuild it::

    {"obs_type": "image", "algo": ..., "algo_cfg": {...}, "obs_dim": ..., "act_dim": ..., "state_dim": ...,
     "state_keys": [...], "num_tasks": ..., "image_obs": {ImageObsConfig fields}, "encoder": {make_encoder args},
     "stage": ..., plus the caller's facts}

:func:`load_image_agent` reads such a folder (or a run folder holding ``checkpoints/``) and returns the agent with
the saved weights: the encoder is rebuilt from its recorded architecture (``make_encoder`` arguments), so the
stage-1 encoder file the agent was initialised from need not exist any more. Everything is loaded with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from robopretrain.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from robopretrain.image_agent import ImageAgent, image_obs_config
from robopretrain.nets.encoders import make_encoder

OBS_TYPE = "image"


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def image_agent_meta(agent: ImageAgent, *, state_keys: list[str] | tuple[str, ...], num_tasks: int, stage: str,
                     **facts: Any) -> dict[str, Any]:
    """The ``meta.json`` content describing ``agent`` (JSON-serialisable); ``facts`` are added as they are."""
    build_args = getattr(agent.critic_encoder, "build_args", None)
    if not isinstance(build_args, dict):
        raise TypeError("image checkpoint: the agent's encoder has no build_args; build it with make_encoder")
    return {
        "obs_type": OBS_TYPE,
        "stage": stage,
        "algo": agent.algo,
        "algo_cfg": _plain(agent.algo_cfg) if agent.algo_cfg is not None else {},
        "obs_dim": int(agent.obs_dim),
        "act_dim": int(agent.act_dim),
        "state_dim": int(agent.state_dim),
        "state_keys": [str(k) for k in state_keys],
        "num_tasks": int(num_tasks),
        "image_obs": _plain(dataclasses.asdict(agent.cfg)),
        "encoder": _plain(build_args),
        **_plain(facts),
    }


def save_image_checkpoint(root: str | os.PathLike, step: int, config: DictConfig | Mapping[str, Any],
                          agent: ImageAgent, meta: Mapping[str, Any], state: Mapping[str, Any] | None = None,
                          keep: int = 2) -> Path:
    """Write ``agent.state_dict()`` and ``meta`` (from :func:`image_agent_meta`) as checkpoint ``ckpt_<step>``."""
    if meta.get("obs_type") != OBS_TYPE:
        raise ValueError("save_image_checkpoint: meta must come from image_agent_meta (obs_type 'image')")
    return save_checkpoint(root, step, config, agent.state_dict(), meta, state=state, keep=keep)


def is_image_checkpoint(ckpt: Checkpoint) -> bool:
    return ckpt.meta.get("obs_type") == OBS_TYPE


def agent_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu", with_optimizer: bool = False,
                          seed: int = 0) -> ImageAgent:
    """Rebuild the image agent a checkpoint describes and load its weights (and optimiser state when asked)."""
    if not is_image_checkpoint(ckpt):
        raise CheckpointError(f"{ckpt.path}: not an image-agent checkpoint (meta obs_type is "
                              f"{ckpt.meta.get('obs_type', 'missing')!r}); state-based agents load with "
                              f"robopretrain.train.restore_agent")
    meta = ckpt.meta
    try:
        enc = meta["encoder"]
        encoder = make_encoder(enc["name"], int(enc["image_size"]), int(enc["in_channels"]), **dict(enc["kwargs"]))
        obs_cfg = image_obs_config(meta["image_obs"])
        agent = ImageAgent(obs_cfg, int(meta["state_dim"]), int(meta["act_dim"]), str(meta["algo"]),
                           meta.get("algo_cfg") or None, device=device, seed=seed, encoder=encoder)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path / 'meta.json'}: cannot rebuild the image agent: {exc}") from exc
    try:
        agent.load_state_dict(ckpt.weights, with_optimizer=with_optimizer)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the agent its meta.json describes: {exc}") from exc
    return agent


def load_image_agent(path: str | os.PathLike, device: str | torch.device = "cpu",
                     with_optimizer: bool = False) -> tuple[ImageAgent, Checkpoint]:
    """The agent of the newest good checkpoint under ``path`` (a checkpoint folder, a ``checkpoints/`` folder or
    a run folder holding one), and that checkpoint."""
    ckpt = load_checkpoint(resolve_checkpoint_dir(path), with_state=with_optimizer)
    return agent_from_checkpoint(ckpt, device=device, with_optimizer=with_optimizer), ckpt

__all__ = ["OBS_TYPE", "agent_from_checkpoint", "image_agent_meta", "is_image_checkpoint", "load_image_agent",
           "save_image_checkpoint"]
