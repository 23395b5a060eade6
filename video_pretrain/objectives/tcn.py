"""Time-contrastive (TCN / R3M-style) baseline: frames close in time embed close together.

Three ordered frames s0 < s1 < s2 of one video (:class:`~video_pretrain.sampling.TCNSampler`), similarity
= negative L2 distance of the encoder's embeddings (divided by ``temperature``, 1 by default). Two InfoNCE
terms, each a cross-entropy over one positive and several negatives (REFERENCE.md, Stage 1):

- anchor s2_i, positive s1_i; negatives s0_i (earlier in the same video) and the s1 frames of the other
  samples of the batch that come from other videos;
- anchor s0_i, positive s1_i; negatives s2_i (later in the same video) and the s1 frames of the other
  samples of the batch that come from other videos.

The middle frame is the positive of both ends, as in R3M's trainer (``r3m/trainer.py``: ``sim_1_2`` over
``sim_0_2``, then ``sim_0_1`` over ``sim_0_2``): each end must be closer to s1 than to the other end. R3M
draws the other videos' negatives from the anchor's own role (s2 with shuffled s2, s0 with shuffled s0); here
they are the other samples' positives (s1), which are frames of other videos all the same.

Logits of anchor i are laid out as ``[sim(a_i, p_0), ..., sim(a_i, p_{B-1}), sim(a_i, n_i)]``: column i is
the positive, column B the in-video negative; columns j != i of samples from the same video as i are
masked out (-inf), since a frame of the same video is not a negative. The loss is the mean of both terms.
R3M's language term needs a text model and is left out.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def neg_l2_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """-||a - b||_2 along the last dimension (broadcasting)."""
    return -torch.linalg.vector_norm(a - b, ord=2, dim=-1)


def tcn_logits(anchor: torch.Tensor, positive: torch.Tensor, in_video_negative: torch.Tensor,
               video: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """(B, B + 1) logits for embeddings (B, D): column j < B is sim(anchor_i, positive_j), column B is
    sim(anchor_i, in_video_negative_i); other samples from the same ``video`` (B,) as i are -inf."""
    n = anchor.shape[0]
    cross = neg_l2_similarity(anchor[:, None, :], positive[None, :, :])
    if video is not None:
        same = (video[:, None] == video[None, :]) & ~torch.eye(n, dtype=torch.bool, device=anchor.device)
        cross = cross.masked_fill(same, float("-inf"))
    own = neg_l2_similarity(anchor, in_video_negative)[:, None]
    return torch.cat([cross, own], dim=1) / temperature


def tcn_loss(e0: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, video: torch.Tensor | None = None,
             temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The TCN loss from embeddings (B, D) of s0 < s1 < s2; ``video`` (B,) ids mask same-video negatives."""
    n = e0.shape[0]
    target = torch.arange(n, device=e0.device)
    logits_2 = tcn_logits(e2, e1, e0, video, temperature)  # anchor s2: s1 positive, s0 negative
    logits_0 = tcn_logits(e0, e1, e2, video, temperature)  # anchor s0: s1 positive, s2 negative
    loss_2 = F.cross_entropy(logits_2, target)
    loss_0 = F.cross_entropy(logits_0, target)
    loss = 0.5 * (loss_0 + loss_2)
    with torch.no_grad():
        sim_02, sim_12, sim_01 = (neg_l2_similarity(e2, e0), neg_l2_similarity(e2, e1), neg_l2_similarity(e1, e0))
        aligned = ((sim_02 < sim_12) & (sim_01 > sim_02)).float().mean()
        accuracy = 0.5 * ((logits_2.argmax(1) == target).float().mean() + (logits_0.argmax(1) == target).float().mean())
    info = {"tcn_loss": loss.detach(), "aligned": aligned, "accuracy": accuracy}
    return loss, info


class TCNObjective(nn.Module):
    """The time-contrastive objective on an image encoder: roles ``s0, s1, s2``."""

    name = "tcn"
    roles = ("s0", "s1", "s2")

    def __init__(self, encoder: nn.Module, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"TCNObjective: temperature={temperature}; expected > 0")
        self.encoder = encoder
        self.temperature = float(temperature)

    def compute_loss(self, images: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``images`` (B, 3, C, H, W) float; ``batch["video"]`` (B, 3) video ids (negatives must be other videos)."""
        n, k = images.shape[:2]
        e = self.encoder(images.flatten(0, 1)).view(n, k, -1)
        video = batch["video"][:, 0] if "video" in batch else None
        return tcn_loss(e[:, 0], e[:, 1], e[:, 2], video, self.temperature)

    def after_step(self) -> None:
        """TCN has no target network."""

    def export_modules(self) -> dict[str, nn.Module]:
        return {}

    def export_config(self) -> dict:
        return {"temperature": self.temperature}
