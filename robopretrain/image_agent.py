"""RL on pixels: an image encoder in front of a state-based agent (CQL / Cal-QL, IQL, BC), with encoder transfer modes.

The algorithm's math stays in :mod:`robopretrain.algos` (:mod:`~robopretrain.algos.cql`, :mod:`~robopretrain.algos.iql`,
:mod:`~robopretrain.algos.bc`); this module only turns observations into the state vector that agent consumes::

    state = encoder(image_1) ++ ... ++ encoder(image_k) ++ low_dim        (low_dim = proprio ++ task one-hot)
    Q(s, a) = critic(state, a)  [V(s) = value(state)]   pi(a | s) = actor(state')   (state' from the actor's encoder)

Observations handled here are dicts ``{image_key: uint8 (B, H, W, 3), "state": float32 (B, D)}`` (every image key
goes through the same encoder; their features are concatenated), or, in ``frozen_cached`` mode, flat float32
vectors ``(B, F)`` holding the features already computed (:meth:`ImageAgent.to_features`).

Encoder transfer modes (``mode``), from a stage-1 checkpoint (:func:`robopretrain.nets.encoder_io.load_encoder`):

``finetune``       initialise from the checkpoint and train on with the critic loss (V-PTR's default);
``frozen``         initialise from the checkpoint; weights never change (no gradient, eval mode), frames are
                   encoded at every update;
``frozen_cached``  as ``frozen``, but the features of every dataset frame are computed once and RL runs on
                   vectors (the fast CPU path); online frames are encoded as they arrive;
``scratch``        the same architecture, randomly initialised, trained with the critic loss (PTR).

Where an encoder trains (``finetune``/``scratch``), images get DrQ random-shift augmentation (``augment_pad``).
Actor and critic have separate encoders (PTR) unless ``shared_encoder``; a shared encoder is trained by the critic
loss only and the actor sees its features detached (DrQ's convention). The critic encoder is used for the target
values too (under ``no_grad``), as in DrQ.

Which loss trains which encoder, per algorithm (all losses of one update are back-propagated together):

``cql`` / ``calql``  critic encoder: the critic loss (TD + conservative penalty [+ DR3]); actor encoder: the SAC
                     actor loss;
``iql``              critic encoder: the value (expectile) and critic (TD) losses, next states encoded without
                     gradient (they only enter the target); actor encoder: the AWR loss;
``bc``               one encoder (there is no critic; ``shared_encoder`` is implied), trained by the BC loss.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from robopretrain.algos import AGENT_NAMES, Agent, make_agent
from robopretrain.algos.cql import make_adam, metrics_to_floats, soft_update_
from robopretrain.nets.augment import random_shift
from robopretrain.nets.encoder_io import load_encoder
from robopretrain.nets.encoders import make_encoder, to_float_images

ENCODER_MODES = ("finetune", "frozen", "frozen_cached", "scratch")
STATE_KEY = "state"

ImageObs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


@dataclass
class ImageObsConfig:
    """What the image agent sees and how its encoder is obtained."""

    image_keys: tuple[str, ...] = ("agentview_image",)
    mode: str = "frozen_cached"
    encoder_checkpoint: str | None = None  # a stage-1 encoder folder (required except for scratch)
    encoder_name: str = "small_conv"  # scratch without a checkpoint: make_encoder(encoder_name, image_size, **kwargs)
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    shared_encoder: bool = False
    augment_pad: int = 4
    encoder_lr: float = 3e-4
    feature_batch: int = 512  # frames per forward pass when caching features

    def __post_init__(self) -> None:
        if self.mode not in ENCODER_MODES:
            raise ValueError(f"encoder mode {self.mode!r} unknown; expected one of {list(ENCODER_MODES)}")
        if self.mode != "scratch" and not self.encoder_checkpoint:
            raise ValueError(f"encoder mode {self.mode!r} needs encoder_checkpoint (a stage-1 encoder folder)")
        if not self.image_keys:
            raise ValueError("image_keys is empty; give at least one image observation key")
        self.image_keys = tuple(self.image_keys)

    @property
    def trains_encoder(self) -> bool:
        return self.mode in ("finetune", "scratch")

    @property
    def cached(self) -> bool:
        return self.mode == "frozen_cached"


def image_obs_config(cfg: Mapping[str, Any]) -> ImageObsConfig:
    """An :class:`ImageObsConfig` from a plain mapping (unknown keys raise, naming the valid ones)."""
    valid = set(ImageObsConfig.__dataclass_fields__)
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"unknown image config key(s) {unknown}; valid keys: {sorted(valid)}")
    kwargs = dict(cfg)
    if "image_keys" in kwargs:
        kwargs["image_keys"] = tuple(kwargs["image_keys"])
    if "encoder_kwargs" in kwargs:
        kwargs["encoder_kwargs"] = dict(kwargs["encoder_kwargs"] or {})
    return ImageObsConfig(**kwargs)


def build_encoder(cfg: ImageObsConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder the mode asks for and a description of where its weights came from.

    With a checkpoint, ``scratch`` rebuilds the checkpoint's architecture with fresh random weights.
    """
    if cfg.encoder_checkpoint:
        encoder, meta = load_encoder(cfg.encoder_checkpoint)
        if cfg.mode == "scratch":
            encoder = make_encoder(meta["encoder"], meta["image_size"], meta["in_channels"], **meta["kwargs"])
            return encoder, {"source": "scratch", "architecture_from": str(cfg.encoder_checkpoint)}
        return encoder, {"source": str(Path(cfg.encoder_checkpoint).resolve()), "meta_extra": meta.get("extra", {})}
    encoder = make_encoder(cfg.encoder_name, cfg.image_size, **cfg.encoder_kwargs)
    return encoder, {"source": "scratch"}


def image_size_of(encoder: nn.Module) -> int:
    return int(encoder.input_spec["image_size"])


class ImageAgent:
    """A CQL / Cal-QL / IQL / BC agent on ``encoder(images) ++ state``; same ``update/act/q_values/state_dict`` API."""

    def __init__(
        self,
        cfg: ImageObsConfig,
        state_dim: int,
        act_dim: int,
        algo: str = "calql",
        algo_cfg: Any = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        encoder: nn.Module | None = None,
    ) -> None:
        """``encoder``: use this module (its weights as they are) instead of :func:`build_encoder`; how an agent
        is rebuilt from its own checkpoint (:mod:`robopretrain.image_checkpoint`), whose weights replace them."""
        self.cfg = cfg
        self.device = torch.device(device)
        self.state_dim, self.act_dim, self.algo = int(state_dim), int(act_dim), algo
        self.algo_cfg = algo_cfg
        if encoder is None:
            encoder, self.encoder_source = build_encoder(cfg)
        else:
            self.encoder_source = {"source": "given"}
        if algo not in AGENT_NAMES:
            raise ValueError(f"unknown agent {algo!r}; expected one of {list(AGENT_NAMES)}")
        self.critic_encoder = encoder.to(self.device)
        # frozen copies are identical: one is enough; BC has no critic: its one encoder is the policy's
        shared = cfg.shared_encoder or not cfg.trains_encoder or algo == "bc"
        self.actor_encoder = self.critic_encoder if shared else copy.deepcopy(encoder).to(self.device)
        self.feature_dim = int(encoder.out_dim) * len(cfg.image_keys)
        self.obs_dim = self.feature_dim + self.state_dim
        self.agent: Agent = make_agent(algo, self.obs_dim, act_dim, algo_cfg, device=self.device)
        self.encoder_optimizer: torch.optim.Optimizer | None = None
        if cfg.trains_encoder:
            params = list(self.critic_encoder.parameters())
            if self.actor_encoder is not self.critic_encoder:
                params += list(self.actor_encoder.parameters())
            self.encoder_optimizer = make_adam([{"params": params, "lr": cfg.encoder_lr}])
        else:
            for enc in self.encoders():
                enc.requires_grad_(False)
                enc.eval()
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))

    @property
    def has_q(self) -> bool:
        """Whether the agent has a Q-function (every algorithm but BC)."""
        return hasattr(self.agent, "q_values")

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser an update steps (the agent's, and the encoders' when they train)."""
        return [self.agent.optimizer] + ([self.encoder_optimizer] if self.encoder_optimizer is not None else [])

    # ------------------------------------------------------------------ encoding

    def encoders(self) -> list[nn.Module]:
        return [self.critic_encoder] if self.actor_encoder is self.critic_encoder else [self.critic_encoder,
                                                                                         self.actor_encoder]

    def _image_features(self, images: torch.Tensor, encoder: nn.Module, augment: bool) -> torch.Tensor:
        x = to_float_images(images.to(self.device))
        if augment and self.cfg.augment_pad > 0:
            x = random_shift(x, self.cfg.augment_pad, generator=self.generator)
        return encoder(x)

    def encode(self, obs: Mapping[str, torch.Tensor], encoder: nn.Module, augment: bool = False) -> torch.Tensor:
        """``encoder(image_1) ++ ... ++ state`` for a batch of dict observations (gradients as the caller allows)."""
        missing = [k for k in (*self.cfg.image_keys, STATE_KEY) if k not in obs]
        if missing:
            raise KeyError(f"image agent: observation is missing {missing}; it has {sorted(obs)}")
        feats = [self._image_features(obs[k], encoder, augment) for k in self.cfg.image_keys]
        return torch.cat([*feats, obs[STATE_KEY].to(self.device, torch.float32)], dim=-1)

    @torch.no_grad()
    def to_features(self, obs: Mapping[str, np.ndarray | torch.Tensor], batch_size: int | None = None) -> np.ndarray:
        """Flat float32 features ``(N, obs_dim)`` of dict observations with the (frozen) critic encoder.

        Used for ``frozen_cached``: the dataset once, and each online frame as it arrives.
        """
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in obs.items() if k in (*self.cfg.image_keys, STATE_KEY)}
        n = len(tensors[STATE_KEY])
        step = batch_size or self.cfg.feature_batch
        out = np.empty((n, self.obs_dim), dtype=np.float32)
        for lo in range(0, n, step):
            part = {k: v[lo: lo + step] for k, v in tensors.items()}
            out[lo: lo + step] = self.encode(part, self.critic_encoder).cpu().numpy()
        return out

    def _flat(self, obs: ImageObs, encoder: nn.Module) -> torch.Tensor:
        if isinstance(obs, Mapping):
            return self.encode(obs, encoder)
        return obs.to(self.device, torch.float32)

    # ------------------------------------------------------------------ training

    def update(self, batch: Mapping[str, Any], with_metrics: bool = True) -> dict[str, float]:
        """One update. Cached/frozen: the agent's own update on features; trained encoders: joint step."""
        if self.cfg.cached:
            return self.agent.update(batch, with_metrics=with_metrics)
        if not self.cfg.trains_encoder:
            with torch.no_grad():
                flat = {**batch, "observations": self.encode(batch["observations"], self.critic_encoder)}
                if self.algo != "bc":  # BC ignores next states
                    flat["next_observations"] = self.encode(batch["next_observations"], self.critic_encoder)
            return self.agent.update(flat, with_metrics=with_metrics)
        return self._joint_update(batch, with_metrics)

    def _encoded_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch with features in place of images, with gradients to the encoders each loss may train."""
        obs = batch["observations"]
        if self.algo == "bc":  # one encoder, trained by the BC loss
            return {**batch, "observations": self.encode(obs, self.critic_encoder, augment=True)}
        critic_obs = self.encode(obs, self.critic_encoder, augment=True)
        if self.algo == "iql":  # s' only enters the TD target V(s'), computed without gradient
            with torch.no_grad():
                critic_next = self.encode(batch["next_observations"], self.critic_encoder, augment=True)
        else:  # CQL scores policy actions at s' and DR3 uses the critic's features at s': keep the gradient
            critic_next = self.encode(batch["next_observations"], self.critic_encoder, augment=True)
        flat = {**batch, "observations": critic_obs, "next_observations": critic_next}
        if self.actor_encoder is self.critic_encoder:
            flat["actor_observations"] = critic_obs.detach()
            if self.algo != "iql":
                flat["actor_next_observations"] = critic_next.detach()
        else:
            flat["actor_observations"] = self.encode(obs, self.actor_encoder, augment=True)
            if self.algo != "iql":  # IQL's policy loss (AWR) only looks at s
                flat["actor_next_observations"] = self.encode(batch["next_observations"], self.actor_encoder,
                                                              augment=True)
        return flat

    def _joint_update(self, batch: Mapping[str, Any], with_metrics: bool) -> dict[str, float]:
        """One step of the agent's parameters and the encoders on the sum of the agent's losses."""
        flat = self._encoded_batch(batch)
        agent = self.agent
        loss_fn = getattr(agent, "_loss_fn", agent.compute_losses)
        losses, metrics = loss_fn(flat, with_metrics)
        assert self.encoder_optimizer is not None
        agent.optimizer.zero_grad(set_to_none=True)
        self.encoder_optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        agent.optimizer.step()
        self.encoder_optimizer.step()
        target = getattr(agent, "target_critic", None)
        if target is not None:
            soft_update_(target, agent.critic, agent.cfg.tau)
        agent.num_updates += 1
        return metrics_to_floats(metrics)

    # ------------------------------------------------------------------ acting and evaluation

    @torch.no_grad()
    def act(self, obs: ImageObs | Mapping[str, np.ndarray] | np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Action(s) for one observation or a batch (dict of images + state, or cached feature vectors)."""
        if isinstance(obs, Mapping):
            tens = {k: torch.as_tensor(np.asarray(v)) for k, v in obs.items()}
            single = tens[STATE_KEY].dim() == 1
            if single:
                tens = {k: v.unsqueeze(0) for k, v in tens.items()}
            action = self.agent.act(self.encode(tens, self.actor_encoder), deterministic)
            return action[0] if single else action
        return self.agent.act(torch.as_tensor(np.asarray(obs) if not torch.is_tensor(obs) else obs,
                                              dtype=torch.float32, device=self.device), deterministic)

    @torch.no_grad()
    def q_values(self, obs: ImageObs, actions: torch.Tensor) -> torch.Tensor:
        """``min_e Q_e(s, a)`` ``(B,)`` for dict observations or cached feature vectors (not for BC)."""
        if not self.has_q:
            raise ValueError(f"image agent: {self.algo!r} has no Q-function")
        return self.agent.q_values(self._flat(obs, self.critic_encoder), actions)

    def train_mode(self, training: bool) -> None:
        """Trained encoders follow ``training``; frozen ones stay in eval mode."""
        if self.cfg.trains_encoder:
            for enc in self.encoders():
                enc.train(training)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        state = {"agent": self.agent.state_dict(), "critic_encoder": self.critic_encoder.state_dict(),
                 "mode": self.cfg.mode, "obs_dim": self.obs_dim}
        if self.actor_encoder is not self.critic_encoder:
            state["actor_encoder"] = self.actor_encoder.state_dict()
        if self.encoder_optimizer is not None:
            state["encoder_optimizer"] = self.encoder_optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any], with_optimizer: bool = True) -> None:
        """Load weights; the agent optimiser state is loaded when ``with_optimizer``."""
        if int(state["obs_dim"]) != self.obs_dim:
            raise ValueError(f"image agent state has obs_dim {state['obs_dim']}, this agent {self.obs_dim} "
                             f"(encoder features {self.feature_dim} + state {self.state_dim})")
        agent_state = dict(state["agent"])
        if not with_optimizer:
            agent_state["optimizer"] = self.agent.optimizer.state_dict()
        self.agent.load_state_dict(agent_state)
        self.critic_encoder.load_state_dict(state["critic_encoder"])
        if self.actor_encoder is not self.critic_encoder:
            self.actor_encoder.load_state_dict(state.get("actor_encoder", state["critic_encoder"]))
        if with_optimizer and self.encoder_optimizer is not None and "encoder_optimizer" in state:
            self.encoder_optimizer.load_state_dict(state["encoder_optimizer"])


__all__ = ["ENCODER_MODES", "ImageAgent", "ImageObsConfig", "STATE_KEY", "build_encoder", "image_obs_config",
           "image_size_of"]
