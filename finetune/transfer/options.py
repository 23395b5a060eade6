"""Stage 3's ``transfer`` block and ``gap`` group -> the parts :func:`finetune.online.run_online` applies.

Every option is off by default; with all off :func:`build_transfer` returns an empty :class:`TransferParts` and the
online loop runs exactly as without this module (same losses on the same seed: ``tests/test_transfer.py``).

* ``transfer.epopt.enabled``: :class:`~finetune.transfer.epopt.EPOptFilter` on the finished episodes; needs
  physics randomization of the training episodes (``dr`` or the gap's ``source``);
* ``transfer.dann.enabled``: :class:`~finetune.transfer.dann.DomainAdversary` on the critic encoder, fed
  ``gap.target_frames`` frames rendered under ``gap.target``; needs a gap and an agent whose image encoder trains;
* ``transfer.darc.enabled``: :class:`~finetune.transfer.darc.RewardCorrection`, fed ``gap.target_transitions``
  transitions collected under ``gap.target``; needs a gap and low-dim observation parts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.transfer.dann import DANNSettings, DomainAdversary
from finetune.transfer.darc import DARCSettings, RewardCorrection
from finetune.transfer.epopt import EPOptSettings
from finetune.transfer.gap import Gap
from finetune.transfer.target_data import cached_target_data

log = logging.getLogger(__name__)
from sim_envs.randomization import PHYSICS_FACTORS


@dataclass
class TransferSettings:
    """``transfer`` of ``configs/finetune.yaml``: one block per method."""

    epopt: EPOptSettings = field(default_factory=EPOptSettings)
    dann: DANNSettings = field(default_factory=DANNSettings)
    darc: DARCSettings = field(default_factory=DARCSettings)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> TransferSettings:
        d = dict(d or {})
        unknown = sorted(set(d) - {"epopt", "dann", "darc"})
        if unknown:
            raise ValueError(f"unknown transfer config key(s) {unknown}; valid keys: ['dann', 'darc', 'epopt']")
        return cls(EPOptSettings.from_mapping(d.get("epopt")), DANNSettings.from_mapping(d.get("dann")),
                   DARCSettings.from_mapping(d.get("darc")))


@dataclass
class TransferParts:
    """What the online loop applies: ``epopt`` (settings of the episode filter), ``adversary`` (already set as the
    agent's auxiliary loss), ``correction`` (applied to each sampled batch). None: off."""

    epopt: EPOptSettings | None = None
    adversary: DomainAdversary | None = None
    correction: RewardCorrection | None = None

    @property
    def modules(self) -> dict[str, Any]:
        """The stateful parts by name (their state goes into stage 3's checkpoints)."""
        return {k: v for k, v in (("dann", self.adversary), ("darc", self.correction)) if v is not None}


def randomizes_physics(randomization: Any) -> bool:
    """Whether a randomization argument draws some physics factor (EPOpt needs one)."""
    from robopretrain.envs.target import split_env_kwargs
    from sim_envs.env import as_randomization

    randomization, _ = split_env_kwargs(randomization)  # constructor arguments are one fixed setting: no draw
    if randomization in (None, "none"):
        return False
    levels = as_randomization(randomization).levels()
    return any(levels[f] != "none" for f in PHYSICS_FACTORS)


def build_transfer(settings: TransferSettings, gap: Gap, agent: Any, target: Any, randomization: Any, run_dir: Path,
                   *, reward_scale: float, seed: int) -> TransferParts:
    """The parts of the enabled options (module docstring); a missing prerequisite raises ``ValueError``."""
    parts = TransferParts()
    if settings.epopt.enabled:
        if not settings.epopt.env_draws_physics and not randomizes_physics(randomization):
            where = "" if getattr(target, "randomizable", True) else (
                f"; target {target.name!r} is {target.family}, whose physics the toolkit does not draw (dr applies "
                "to sim_envs targets only, and a gap's env_kwargs fix one setting): if the env draws its own at "
                "each reset, set transfer.epopt.env_draws_physics=true")
            raise ValueError(f"transfer.epopt needs physics randomization of the training episodes (friction, mass, "
                             f"damping or gripper_force, drawn by dr or a gap's source); they use "
                             f"{randomization!r}{where}")
        parts.epopt = settings.epopt
    for name, on, need in (("dann", settings.dann.enabled, gap.target_frames),
                           ("darc", settings.darc.enabled, gap.target_transitions)):
        if on and (not gap.enabled or need < 1):
            what = "target_frames" if name == "dann" else "target_transitions"
            example = ("gap=visual_textures" if name == "dann" else "gap=friction_low")
            if not getattr(target, "randomizable", True):
                example = (f"on target {target.name!r} ({target.family}) a gap of its constructor arguments: "
                           "gap.name=my_gap 'gap.source={env_kwargs: {...}}' 'gap.target={env_kwargs: {...}}' "
                           f"gap.{what}=N, docs/transfer.md")
            raise ValueError(f"transfer.{name} needs a gap with {what} >= 1 (e.g. {example}); got gap={gap.name!r}")
    if settings.dann.enabled:
        if not agent.trains_encoder or not agent.spec.rgb:
            raise ValueError("transfer.dann needs an agent whose image encoder trains (cameras and encoder mode "
                             f"finetune or scratch); this one has mode {agent.mode!r}")
        frames = cached_target_data(run_dir / "transfer" / "dann_target.npz", agent, target, gap.target,
                                    gap.target_frames, seed=seed)
        parts.adversary = DomainAdversary(agent, frames["observations"], settings.dann, seed=seed + 11)
        agent.auxiliary = [*agent.auxiliary, parts.adversary]
    if settings.darc.enabled:
        if not agent.spec.low_dim_keys:
            raise ValueError("transfer.darc needs low-dim observation parts (obs.low_dim) for its classifiers; this "
                             "agent has cameras only")
        if agent.mode == "frozen_cached":  # its encoder's statistics start with the cached features' block
            raise ValueError("transfer.darc does not support encoder.mode=frozen_cached (its classifiers would "
                             "normalise the low-dim parts with the cached features' statistics); use frozen")
        if getattr(agent, "algo", None) == "calql":
            log.warning("transfer.darc with Cal-QL: the returns-to-go of its lower bound are the uncorrected "
                        "rewards', so the bound can sit above the corrected values where DARC charges (docs/transfer.md)")
        data = cached_target_data(run_dir / "transfer" / "darc_target.npz", agent, target, gap.target,
                                  gap.target_transitions, seed=seed + 1)
        parts.correction = RewardCorrection(agent, data, settings.darc, reward_scale=reward_scale, seed=seed + 13)
    return parts


__all__ = ["TransferParts", "TransferSettings", "build_transfer", "randomizes_physics"]
