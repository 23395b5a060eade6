"""ICVF: intention-conditioned value functions learned from passive video (Ghosh et al. 2023; V-PTR).

The value of reaching outcome g when acting with intent z, from frame s, is multilinear in three
representations of the encoder's features (REFERENCE.md, Stage 1)::

    V(s, g, z) = < A(T(z) * phi(s)), B(T(z) * psi(g)) >

phi, psi and T are MLPs [256, 256] with ReLU after every layer (the intent z is encoded by psi, like
outcomes), A and B dense layers: a low-rank form of phi(s)^T T(z) psi(g). There are two value heads on
one shared encoder, and a target copy of encoder + heads updated by Polyak averaging (0.005 per step).

Temporal-difference target, reward 0 at the goal else -1, mask 0 at the goal::

    q_i = r + gamma * mask * V_target_i(s', g, z)
    A   = r_z + gamma * mask_z * min_i V_target_i(s', z, z) - mean_i V_target_i(s, z, z)
    loss = sum_i mean[ w * (q_i - V_i(s, g, z))^2 ],   w = tau if A >= 0 else 1 - tau

The expectile weight depends on the sign of the *intent advantage* A (is s -> s' a step toward z?), not on
the TD error: the value regresses toward what happens when the video acts as if it pursued z.
:func:`icvf_loss` is that formula on plain tensors; :class:`ICVFObjective` runs it on frames.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

DEFAULT_HIDDEN = (256, 256)


def expectile_weights(advantage: torch.Tensor, expectile: float) -> torch.Tensor:
    """``expectile`` where the advantage is >= 0, else ``1 - expectile``."""
    return torch.where(advantage >= 0, torch.full_like(advantage, expectile), torch.full_like(advantage, 1.0 - expectile))


def icvf_loss(
    v: torch.Tensor,
    next_v_target: torch.Tensor,
    next_v_zz_target: torch.Tensor,
    v_zz_target: torch.Tensor,
    reward: torch.Tensor,
    mask: torch.Tensor,
    intent_reward: torch.Tensor,
    intent_mask: torch.Tensor,
    gamma: float = 0.99,
    expectile: float = 0.9,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ICVF loss from values of every head.

    Shapes: ``v`` = V_i(s, g, z), ``next_v_target`` = V_target_i(s', g, z), ``next_v_zz_target`` =
    V_target_i(s', z, z) and ``v_zz_target`` = V_target_i(s, z, z) are (E, B) for E heads; rewards and
    masks are (B,). Target values are detached here. Returns the loss (a scalar) and detached diagnostics.
    """
    if v.dim() != 2 or next_v_target.shape != v.shape or next_v_zz_target.shape != v.shape or v_zz_target.shape != v.shape:
        raise ValueError(f"icvf_loss: value tensors must all be (heads, batch); got v {tuple(v.shape)}, next_v_target "
                         f"{tuple(next_v_target.shape)}, next_v_zz_target {tuple(next_v_zz_target.shape)}, "
                         f"v_zz_target {tuple(v_zz_target.shape)}")
    next_v_target, next_v_zz_target, v_zz_target = (t.detach() for t in (next_v_target, next_v_zz_target, v_zz_target))
    q = reward + gamma * mask * next_v_target
    advantage = intent_reward + gamma * intent_mask * next_v_zz_target.min(dim=0).values - v_zz_target.mean(dim=0)
    weight = expectile_weights(advantage, expectile)
    per_head = (weight * (q - v) ** 2).mean(dim=1)
    loss = per_head.sum()
    info = {
        "value_loss": loss.detach(),
        "v_mean": v.detach().mean(),
        "q_mean": q.mean(),
        "abs_td": (q - v.detach()).abs().mean(),
        "adv_mean": advantage.mean(),
        "adv_positive": (advantage >= 0).float().mean(),
        "reward_mean": reward.mean(),
    }
    return loss, info


def _mlp(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """Dense -> ReLU for every size in ``hidden`` (ReLU after the last layer too, as ICVF's MLP does)."""
    layers: list[nn.Module] = []
    for size in hidden:
        linear = nn.Linear(in_dim, size)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
        in_dim = size
    return nn.Sequential(*layers)


class MultilinearValue(nn.Module):
    """One ICVF value head on encoder features: V = <A(T(psi(z)) * phi(s)), B(T(psi(z)) * psi(g))>."""

    def __init__(self, feature_dim: int, hidden: Sequence[int] = DEFAULT_HIDDEN):
        super().__init__()
        if not hidden:
            raise ValueError("MultilinearValue: hidden must list at least one layer size")
        width = int(hidden[-1])
        self.phi = _mlp(feature_dim, hidden)
        self.psi = _mlp(feature_dim, hidden)
        self.T = _mlp(width, hidden)
        self.A = nn.Linear(width, width)
        self.B = nn.Linear(width, width)
        for layer in (self.A, self.B):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, feat_s: torch.Tensor, feat_g: torch.Tensor, feat_z: torch.Tensor) -> torch.Tensor:
        tz = self.T(self.psi(feat_z))
        return (self.A(tz * self.phi(feat_s)) * self.B(tz * self.psi(feat_g))).sum(dim=-1)


class ICVFHeads(nn.Module):
    """An ensemble of :class:`MultilinearValue` heads; ``forward`` returns (num_heads, B) values."""

    def __init__(self, feature_dim: int, hidden: Sequence[int] = DEFAULT_HIDDEN, num_heads: int = 2):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"ICVFHeads: num_heads={num_heads}; expected >= 1")
        self.config = {"feature_dim": int(feature_dim), "hidden": [int(h) for h in hidden], "num_heads": int(num_heads)}
        self.heads = nn.ModuleList(MultilinearValue(feature_dim, hidden) for _ in range(num_heads))

    def forward(self, feat_s: torch.Tensor, feat_g: torch.Tensor, feat_z: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(feat_s, feat_g, feat_z) for head in self.heads])


class ICVFObjective(nn.Module):
    """ICVF on an image encoder: roles ``obs, next_obs, goal, intent`` (see :class:`~video_pretrain.sampling.ICVFSampler`).

    The target encoder and heads run in the module's mode: during training a backbone with BatchNorm (a ``timm:``
    encoder; the built-in ones use LayerNorm / GroupNorm, which have no batch statistics) normalises the target's
    batch of 4B images by that batch's statistics, as BYOL's target network does, and its running statistics are
    replaced by the online network's at every :meth:`after_step` (buffers are copied, parameters averaged). The
    authors' encoders (IMPALA, ResNet with GroupNorm) have no BatchNorm, so they make no choice here to follow.
    """

    name = "icvf"
    roles = ("obs", "next_obs", "goal", "intent")

    def __init__(self, encoder: nn.Module, hidden: Sequence[int] = DEFAULT_HIDDEN, num_heads: int = 2,
                 gamma: float = 0.99, expectile: float = 0.9, target_update_rate: float = 0.005):
        super().__init__()
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"ICVFObjective: gamma={gamma}; expected a discount in (0, 1)")
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"ICVFObjective: expectile={expectile}; expected a number in (0, 1)")
        if not 0.0 < target_update_rate <= 1.0:
            raise ValueError(f"ICVFObjective: target_update_rate={target_update_rate}; expected a number in (0, 1]")
        self.encoder = encoder
        self.heads = ICVFHeads(int(encoder.out_dim), hidden, num_heads)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_heads = copy.deepcopy(self.heads).requires_grad_(False)
        self.gamma = float(gamma)
        self.expectile = float(expectile)
        self.target_update_rate = float(target_update_rate)

    def compute_loss(self, images: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``images`` (B, 4, C, H, W) float in the order of :attr:`roles`; ``batch`` holds the rewards and masks."""
        n = images.shape[0]
        s, s_next, g, z = images.unbind(dim=1)
        feat_s, feat_g, feat_z = self.encoder(torch.cat([s, g, z])).split(n)
        v = self.heads(feat_s, feat_g, feat_z)
        with torch.no_grad():
            t_s, t_next, t_g, t_z = self.target_encoder(torch.cat([s, s_next, g, z])).split(n)
            # V_target(s', g, z), V_target(s', z, z), V_target(s, z, z) in one batched call
            next_v, next_v_zz, v_zz = self.target_heads(torch.cat([t_next, t_next, t_s]), torch.cat([t_g, t_z, t_z]),
                                                        torch.cat([t_z, t_z, t_z])).split(n, dim=1)
        return icvf_loss(v, next_v, next_v_zz, v_zz, batch["reward"], batch["mask"], batch["intent_reward"],
                         batch["intent_mask"], gamma=self.gamma, expectile=self.expectile)

    @torch.no_grad()
    def after_step(self) -> None:
        """Polyak update of the target network: target <- (1 - rate) * target + rate * online."""
        for online, target in ((self.encoder, self.target_encoder), (self.heads, self.target_heads)):
            t_params = list(target.parameters())
            torch._foreach_lerp_(t_params, list(online.parameters()), self.target_update_rate)
            for b_online, b_target in zip(online.buffers(), target.buffers()):
                b_target.copy_(b_online)

    def export_modules(self) -> dict[str, nn.Module]:
        """Modules saved next to the encoder so diagnostics can evaluate V(s, g, z): the value heads."""
        return {"heads": self.heads}

    def export_config(self) -> dict:
        return {**self.heads.config, "gamma": self.gamma, "expectile": self.expectile,
                "target_update_rate": self.target_update_rate}

    @torch.no_grad()
    def value(self, images_s: torch.Tensor, images_g: torch.Tensor, images_z: torch.Tensor) -> torch.Tensor:
        """V(s, g, z) averaged over the heads, for float images (B, C, H, W)."""
        return self.heads(self.encoder(images_s), self.encoder(images_g), self.encoder(images_z)).mean(dim=0)
