"""Domain-invariant encoder features (DANN: Ganin et al. 2016, "Domain-Adversarial Training of Neural Networks").

A domain classifier ``D`` reads the critic encoder's image features ``f`` of source frames (label 0: the batch the
critic trains on) and of unlabeled target-domain frames (label 1: frames rendered under the gap's target settings,
:mod:`finetune.transfer.gap`). Between ``f`` and ``D`` sits the gradient-reversal layer ``R_lambda`` (Ganin et al.
2016, Sec. 3.2, eq. 18-19): identity forward, gradient times ``-lambda`` backward. The loss added to the critic's
loss is the domain cross-entropy

    L_d = BCE(D(R_lambda(f_src)), 0) + BCE(D(R_lambda(f_tgt)), 1)    (mean over the 2B rows, Ganin eq. 9-10)

so one backward pass gives ``D`` the gradient of ``L_d`` (it learns to tell the domains apart) and the encoder
``-lambda`` times it (it learns features ``D`` cannot tell apart): the saddle point of Ganin's eq. 10. ``lambda`` is
the coefficient (``transfer.dann.coef``, constant; the paper's ramp ``2 / (1 + exp(-10 p)) - 1`` is not built).

The lecture's caveat (REFERENCE.md, "Transfer under a gap"): invariance must not erase what the value depends on;
stage 3 logs the calibration gap (Q vs Monte-Carlo return) with and without this option, and ``dann/accuracy``
(the classifier's accuracy on the batch; 0.5 is chance, i.e. features that are invariant to the classifier).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robopretrain.data.keys import OBS


@dataclass
class DANNSettings:
    """``transfer.dann`` of ``configs/finetune.yaml``."""

    enabled: bool = False
    coef: float = 0.1  # lambda: the gradient-reversal coefficient (how hard the encoder is pushed to invariance)
    hidden: Sequence[int] = field(default_factory=lambda: [64])  # domain classifier hidden widths (ReLU)
    lr: float = 3e-4  # the classifier's Adam learning rate
    target_batch: int = 0  # target frames per update (0: the source batch size)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.coef) < float("inf"):
            raise ValueError(f"finetune config: transfer.dann.coef={self.coef!r}; expected a finite number >= 0")
        if not float(self.lr) > 0.0:
            raise ValueError(f"finetune config: transfer.dann.lr={self.lr!r}; expected a number > 0")
        if not isinstance(self.target_batch, int) or isinstance(self.target_batch, bool) or self.target_batch < 0:
            raise ValueError(f"finetune config: transfer.dann.target_batch={self.target_batch!r}; expected an integer "
                             ">= 0 (0: the source batch size)")
        widths = self.hidden
        try:
            widths = [self.hidden] if isinstance(self.hidden, (int, float, str)) else list(self.hidden)
            self.hidden = [int(h) for h in widths]
        except (TypeError, ValueError):
            self.hidden = []
        if (not self.hidden or min(self.hidden) < 1 or any(isinstance(h, bool) for h in widths)
                or any(isinstance(h, float) and h != int(h) for h in widths)):
            raise ValueError(f"finetune config: transfer.dann.hidden={widths!r}; expected a list of layer widths "
                             ">= 1, e.g. [64] (a width of 0 gives a classifier that outputs 0.5 whatever it sees: "
                             "perfect-looking invariance)")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> DANNSettings:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown transfer.dann key(s) {unknown}; valid keys: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


class GradientReversal(torch.autograd.Function):
    """``R_lambda(x) = x`` forward; ``dL/dx = -lambda * dL/dR`` backward (Ganin et al. 2016, eq. 18-19)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coef: float) -> torch.Tensor:
        ctx.coef = float(coef)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coef * grad, None


def reverse_gradient(x: torch.Tensor, coef: float = 1.0) -> torch.Tensor:
    """:class:`GradientReversal` applied to ``x`` (any shape)."""
    return GradientReversal.apply(x, coef)


class DomainClassifier(nn.Module):
    """``D``: features ``(N, F)`` -> one logit ``(N,)`` of "target domain" (an MLP with ReLU hidden layers)."""

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = int(feature_dim)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def domain_adversarial_loss(classifier: nn.Module, source: torch.Tensor, target: torch.Tensor,
                            coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_d, accuracy)`` of the module docstring for source features ``(N, F)`` and target features ``(M, F)``.

    ``L_d``: the mean binary cross-entropy over the ``N + M`` rows (source label 0, target label 1), computed behind
    the gradient reversal with coefficient ``coef``; ``accuracy``: the share of rows the classifier gets right (no
    gradient). Raises ``ValueError`` when the feature sizes differ.
    """
    if source.shape[-1] != target.shape[-1]:
        raise ValueError(f"domain_adversarial_loss: source features {tuple(source.shape)} and target "
                         f"{tuple(target.shape)} differ in size")
    feats = reverse_gradient(torch.cat([source, target]), coef)
    logits = classifier(feats)
    labels = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(logits)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    with torch.no_grad():
        accuracy = ((logits > 0).to(labels) == labels).float().mean()
    return loss, accuracy


class DomainAdversary:
    """The DANN term as an extra loss of an :class:`~robopretrain.agent.Agent` whose image encoder trains.

    Set as ``agent.auxiliary = [adversary]``: each update the agent calls it with the batch's critic features (the
    image part, with gradient) and adds the returned loss to the critic's; the adversary encodes ``target_batch``
    of its target frames with the same critic encoder (random-shift augmented like the source) and steps its own
    classifier optimiser with the agent's. ``frames``: ``{camera: (N, H, W, 3) uint8}`` for every camera of the agent.
    """

    name = "dann"

    def __init__(self, agent: Any, frames: Mapping[str, np.ndarray], settings: DANNSettings, seed: int) -> None:
        if not agent.trains_encoder or not agent.spec.rgb:
            raise ValueError("transfer.dann needs an agent whose image encoder trains (cameras and encoder mode "
                             f"finetune or scratch); this one has mode {agent.mode!r}")
        missing = [k for k in agent.spec.rgb_keys if k not in frames]
        if missing:
            raise ValueError(f"transfer.dann: target frames lack camera(s) {missing}")
        self.settings = settings
        self.cameras = list(agent.spec.rgb_keys)
        self.frames = {k: torch.from_numpy(np.ascontiguousarray(frames[k])) for k in self.cameras}
        self.num_frames = int(len(self.frames[self.cameras[0]]))
        if self.num_frames < 1:
            raise ValueError("transfer.dann: no target frames (gap.target_frames must be >= 1)")
        self.feature_dim = int(agent.critic_encoder.image_encoder.out_dim)
        with torch.random.fork_rng(devices=[]):  # its own initialisation: the agent's random draws stay as they were
            torch.manual_seed(int(seed))
            self.classifier = DomainClassifier(self.feature_dim, settings.hidden).to(agent.device)
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=float(settings.lr))
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def __call__(self, agent: Any, flat: Mapping[str, Any], with_metrics: bool) -> tuple[dict[str, torch.Tensor],
                                                                                          dict[str, Any]]:
        """``({"loss_dann": L_d}, {"dann/accuracy", "dann/loss"})`` for one update of ``agent`` on ``flat``."""
        from robopretrain.nets.augment import random_shifts, shift_frames

        enc = agent.critic_encoder
        batch = len(flat[OBS])
        n_cam = len(self.cameras)
        source = flat[OBS][:, : self.feature_dim * n_cam].reshape(batch * n_cam, self.feature_dim)
        m = int(self.settings.target_batch) or batch
        rows = torch.randint(0, self.num_frames, (m,), generator=self.generator)
        frames = torch.cat([self.frames[k][rows] for k in self.cameras]).to(agent.device)
        if enc.augment_pad > 0:  # as the encoder augments its source frames (ObsEncoder.forward), pad included
            frames = shift_frames(frames, random_shifts(frames.shape[0], enc.augment_pad, self.generator,
                                                        frames.device), enc.augment_pad)
        target = enc.image_features(frames)
        loss, accuracy = domain_adversarial_loss(self.classifier, source, target, self.settings.coef)
        metrics = {"dann/loss": loss.detach(), "dann/accuracy": accuracy} if with_metrics else {}
        return {"loss_dann": loss}, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


__all__ = ["DANNSettings", "DomainAdversary", "DomainClassifier", "GradientReversal", "domain_adversarial_loss",
           "reverse_gradient"]
