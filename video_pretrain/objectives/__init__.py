"""Stage-1 objectives, one module each: :mod:`.icvf` (ICVF, the V-PTR objective), :mod:`.vip` (VIP),
:mod:`.tcn` (time-contrastive baseline); ``none`` means a randomly initialised encoder, not trained.

Every objective is an ``nn.Module`` that owns the encoder and whatever it trains besides (ICVF: value
heads and a target network) and follows :class:`Objective`: ``roles`` names the frames of one sample,
``compute_loss(images, batch)`` returns (loss, detached diagnostics), ``after_step()`` runs after each
optimizer step (target updates), ``export_modules()`` / ``export_config()`` say what is saved next to
the encoder for later use (ICVF's value heads, read by ``video_pretrain.diagnose``).
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch
from torch import nn

from video_pretrain.objectives.icvf import ICVFHeads, ICVFObjective, icvf_loss
from video_pretrain.objectives.tcn import TCNObjective, tcn_logits, tcn_loss
from video_pretrain.objectives.vip import VIPObjective, vip_loss, vip_value

OBJECTIVES = ("icvf", "vip", "tcn", "none")


class Objective(Protocol):
    """What ``video_pretrain.train`` needs from an objective (an ``nn.Module``)."""

    name: str
    roles: tuple[str, ...]
    encoder: nn.Module

    def compute_loss(self, images: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def after_step(self) -> None: ...

    def export_modules(self) -> dict[str, nn.Module]: ...

    def export_config(self) -> dict: ...


def make_objective(name: str, encoder: nn.Module, cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """Build objective ``name`` (icvf | vip | tcn) around ``encoder`` with its options from ``cfg``.

    ICVF options: hidden, num_heads, gamma, expectile, target_update_rate; VIP: gamma, l1_weight, l2_weight;
    TCN: temperature. Unknown options are an error (a typo would otherwise silently change nothing).
    """
    cfg = dict(cfg or {})
    allowed = {
        "icvf": {"hidden", "num_heads", "gamma", "expectile", "target_update_rate"},
        "vip": {"gamma", "l1_weight", "l2_weight"},
        "tcn": {"temperature"},
    }
    if name not in allowed:
        raise ValueError(f"make_objective: unknown objective {name!r}; expected one of icvf, vip, tcn "
                         "(none means no training and builds no objective)")
    unknown = set(cfg) - allowed[name]
    if unknown:
        raise ValueError(f"make_objective: option(s) {sorted(unknown)} do not apply to {name}; expected some of "
                         f"{sorted(allowed[name])}")
    if name == "icvf":
        if "hidden" in cfg:
            cfg["hidden"] = tuple(int(h) for h in cfg["hidden"])
        return ICVFObjective(encoder, **cfg)
    if name == "vip":
        return VIPObjective(encoder, **cfg)
    return TCNObjective(encoder, **cfg)


__all__ = ["OBJECTIVES", "ICVFHeads", "ICVFObjective", "Objective", "TCNObjective", "VIPObjective", "icvf_loss",
           "make_objective", "tcn_logits", "tcn_loss", "vip_loss", "vip_value"]
