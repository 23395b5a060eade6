"""VIP: value-implicit pretraining (Ma et al. 2022), a goal-conditioned value that is a distance.

The value of reaching goal g from o is V(o; g) = -||phi(o) - phi(g)||_2 with phi the encoder's output.
With frames from :class:`~video_pretrain.sampling.VIPSampler` (initial o_0, goal g, o_t, o_t+1 of one
video) and reward r = -1, the dual objective of REFERENCE.md, Stage 1 is::

    L = (1 - gamma) * E[-V(o_0; g)] + log E[exp(-(r + gamma * V(o_t+1; g) - V(o_t; g)))]
        + l1_weight * E||phi||_1 + l2_weight * E||phi||_2

(gamma 0.98, both weights 1e-3, norms over all embeddings of the batch). The log-mean-exp is computed
stably with logsumexp (VIP's code adds 1e-8 inside the log instead; the difference is below float
precision for any non-degenerate batch).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn


def vip_value(embedding: torch.Tensor, goal_embedding: torch.Tensor) -> torch.Tensor:
    """V(o; g) = -||phi(o) - phi(g)||_2 along the last dimension."""
    return -torch.linalg.vector_norm(embedding - goal_embedding, ord=2, dim=-1)


def log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    """log(mean(exp(x))) over all elements, computed stably."""
    return torch.logsumexp(x.reshape(-1), dim=0) - math.log(x.numel())


def vip_loss(
    e_initial: torch.Tensor,
    e_goal: torch.Tensor,
    e_obs: torch.Tensor,
    e_next: torch.Tensor,
    reward: torch.Tensor | float = -1.0,
    gamma: float = 0.98,
    l1_weight: float = 1e-3,
    l2_weight: float = 1e-3,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The VIP loss from embeddings (B, D) of o_0, g, o_t and o_t+1; ``reward`` (B,) or a number."""
    v0 = vip_value(e_initial, e_goal)
    v = vip_value(e_obs, e_goal)
    v_next = vip_value(e_next, e_goal)
    value_term = (1.0 - gamma) * (-v0.mean())
    contrast_term = log_mean_exp(-(reward + gamma * v_next - v))
    everything = torch.cat([e_initial, e_goal, e_obs, e_next])
    l1 = torch.linalg.vector_norm(everything, ord=1, dim=-1).mean()
    l2 = torch.linalg.vector_norm(everything, ord=2, dim=-1).mean()
    vip = value_term + contrast_term
    loss = vip + l1_weight * l1 + l2_weight * l2
    info = {"vip_loss": vip.detach(), "value_term": value_term.detach(), "contrast_term": contrast_term.detach(),
            "l1": l1.detach(), "l2": l2.detach(), "v0_mean": v0.detach().mean(),
            "v_step_gain": (v_next - v).detach().mean()}
    return loss, info


class VIPObjective(nn.Module):
    """VIP on an image encoder: roles ``initial, goal, obs, next_obs``; the embedding is the encoder output."""

    name = "vip"
    roles = ("initial", "goal", "obs", "next_obs")

    def __init__(self, encoder: nn.Module, gamma: float = 0.98, l1_weight: float = 1e-3, l2_weight: float = 1e-3):
        super().__init__()
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"VIPObjective: gamma={gamma}; expected a number in (0, 1)")
        self.encoder = encoder
        self.gamma, self.l1_weight, self.l2_weight = float(gamma), float(l1_weight), float(l2_weight)

    def compute_loss(self, images: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``images`` (B, 4, C, H, W) float in the order of :attr:`roles`; ``batch["reward"]`` (B,)."""
        n, k = images.shape[:2]
        e = self.encoder(images.flatten(0, 1)).view(n, k, -1)
        return vip_loss(e[:, 0], e[:, 1], e[:, 2], e[:, 3], batch["reward"], self.gamma, self.l1_weight, self.l2_weight)

    def after_step(self) -> None:
        """VIP has no target network."""

    def export_modules(self) -> dict[str, nn.Module]:
        return {}

    def export_config(self) -> dict:
        return {"gamma": self.gamma, "l1_weight": self.l1_weight, "l2_weight": self.l2_weight}
