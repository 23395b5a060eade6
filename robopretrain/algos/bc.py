"""Behaviour cloning: maximise the log-likelihood of data actions under a Gaussian policy.

Loss: ``-mean(log pi(a | s))`` with :class:`robopretrain.nets.actor.GaussianActor` (mean ``tanh(MLP(s))``,
one learned log-std vector), the policy of IQL's AWR step without the weights; with a state-independent std this
is a per-dimension weighted MSE to the data actions (robomimic's and CORL's BC regress actions by MSE). The
tanh-squashed density of the SAC actor is not used here: on expert data saturated at +-1 it does not imitate (see
:mod:`robopretrain.nets.actor`). Same ``update / act / state_dict`` API as the RL agents, so a BC policy drops
into evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from robopretrain.algos.base import OfflineAlgorithm
from robopretrain.nets.actor import GaussianActor


def bc_loss(log_prob: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the data actions."""
    return -log_prob.mean()


@dataclass
class BCConfig:
    actor_hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    orthogonal_init: bool = False
    lr: float = 3e-4
    batch_size: int = 256


class BC(OfflineAlgorithm):
    """Behaviour-cloning agent; ``update`` ignores rewards and next observations."""

    name = "bc"

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: BCConfig | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg = cfg = cfg or BCConfig()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.actor = GaussianActor(
            obs_dim, act_dim, cfg.actor_hidden, activation=cfg.activation, orthogonal_init=cfg.orthogonal_init
        ).to(self.device)
        self._init_optimizer([(self.actor, cfg.lr)])

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        log_prob = self.actor.log_prob(batch["observations"], batch["actions"])
        loss = bc_loss(log_prob)
        metrics = {"bc_loss": loss.detach()} if with_metrics else {}
        return {"actor": loss}, metrics
