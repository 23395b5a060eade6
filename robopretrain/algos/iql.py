"""Implicit Q-Learning (Kostrikov et al. 2021): the slow-but-steady baseline of REFERENCE.md, Stage 3.

Losses (plain functions below):

* value: expectile regression of ``V(s)`` towards ``min_e Q_target_e(s, a)``:
  ``mean(|tau - 1(u < 0)| * u^2)`` with ``u = Q - V`` and ``tau = 0.9``;
* critics: ``sum_e mean_batch (Q_e(s, a) - (r + gamma * (1 - done) * V(s')))^2`` (a sum over the critics, as the
  authors' ``(q1 - y)^2 + (q2 - y)^2``; CORL divides it by their number, which halves this loss's scale);
* policy (AWR): ``-mean(min(exp(beta * (Q - V)), 100) * log pi(a|s))`` with ``beta = 1`` (rewards x10).

As in :mod:`robopretrain.algos.cql`, every loss touches only its own parameters and one backward pass of
their sum computes all gradients at the same parameters. Choices: the policy is the authors' Gaussian with a
tanh-squashed mean and a state-independent std (:class:`robopretrain.nets.actor.GaussianActor`; the tanh-squashed
density cannot fit expert data saturated at +-1); V(s') comes from the current (pre-step) value network, as in the CORL port; no learning-rate
schedule.

Image agents (:mod:`robopretrain.image_agent`) may pass the policy its own encoder's features as
``actor_observations``; the value and critic losses use ``observations`` (the critic encoder's features), so the
AWR loss never trains the critic's encoder. Plain state vectors need no such key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from robopretrain.algos.base import OfflineAlgorithm
from robopretrain.nets.actor import GaussianActor
from robopretrain.nets.critic import EnsembleCritic
from robopretrain.nets.mlp import build_mlp


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``mean(|tau - 1(diff < 0)| * diff^2)``; ``diff = Q - V``, ``tau = expectile``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def iql_q_loss(
    q_data: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor, next_v: torch.Tensor, discount: float
) -> torch.Tensor:
    """Sum over critics of the MSE to ``r + gamma * (1 - done) * V(s')`` (target without gradient)."""
    target = (rewards + discount * (1.0 - dones) * next_v).detach()
    return (q_data - target.unsqueeze(0)).square().mean(dim=-1).sum()


def awr_weights(advantage: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """``min(exp(beta * A), max_weight)``, detached."""
    return torch.exp(beta * advantage.detach()).clamp(max=max_weight)


def awr_policy_loss(
    log_prob: torch.Tensor, advantage: torch.Tensor, beta: float, max_weight: float = 100.0
) -> torch.Tensor:
    """Advantage-weighted regression: ``-mean(w * log pi(a|s))``."""
    return -(awr_weights(advantage, beta, max_weight) * log_prob).mean()


@dataclass
class IQLConfig:
    """IQL hyper-parameters: the paper's AntMaze (sparse reward) settings, expectile 0.9, with the Cal-QL reward
    transform x10 - 5 (so beta 1 on these rewards weighs advantages as beta 10 does on unit rewards)."""

    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    value_hidden: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    activation: str = "relu"
    orthogonal_init: bool = False
    actor_lr: float = 3e-4
    qf_lr: float = 3e-4
    vf_lr: float = 3e-4
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 5e-3
    expectile: float = 0.9  # tau of the value's expectile regression (the IQL paper's AntMaze setting)
    beta: float = 1.0  # inverse temperature of AWR; with rewards x10 this plays AntMaze's beta 10 on unit rewards
    max_weight: float = 100.0
    reward_scale: float = 10.0  # sparse {0, 1} -> {-5, +5}, the Cal-QL transform, so Q is in the same units
    reward_bias: float = -5.0
    sparse_reward: bool = True


class IQL(OfflineAlgorithm):
    """IQL agent with the ``update / act / state_dict`` API of :class:`robopretrain.algos.cql.CQL`."""

    name = "iql"

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: IQLConfig | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg = cfg = cfg or IQLConfig()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        kw = {"activation": cfg.activation, "orthogonal_init": cfg.orthogonal_init}
        self.actor = GaussianActor(obs_dim, act_dim, cfg.actor_hidden, **kw).to(self.device)
        self.critic = EnsembleCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics, **kw).to(self.device)
        self.target_critic = EnsembleCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics, **kw).to(self.device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.value = build_mlp(obs_dim, 1, cfg.value_hidden, **kw).to(self.device)
        self._init_optimizer([(self.actor, cfg.actor_lr), (self.critic, cfg.qf_lr), (self.value, cfg.vf_lr)])

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Value, critic and actor losses (each with gradients for its own network only) and metrics."""
        cfg = self.cfg
        obs, actions = batch["observations"], batch["actions"]
        with torch.no_grad():
            target_q = self.target_critic(obs, actions).min(dim=0).values
            next_v = self.value(batch["next_observations"]).squeeze(-1)
        v = self.value(obs).squeeze(-1)
        adv = target_q - v
        value_loss = expectile_loss(adv, cfg.expectile)
        q_data = self.critic(obs, actions)
        q_loss = iql_q_loss(q_data, batch["rewards"], batch["dones"], next_v, cfg.discount)
        log_prob = self.actor.log_prob(batch.get("actor_observations", obs), actions)
        policy_loss = awr_policy_loss(log_prob, adv, cfg.beta, cfg.max_weight)
        losses = {"value": value_loss, "critic": q_loss, "actor": policy_loss}
        metrics: dict[str, torch.Tensor] = {}
        if with_metrics:
            metrics = {
                "value_loss": value_loss,
                "q_loss": q_loss,
                "policy_loss": policy_loss,
                "v": v.mean(),
                "q_data": q_data.mean(),
                "advantage": adv.mean(),
                "log_prob": log_prob.mean(),
            }
            metrics = {k: t.detach() for k, t in metrics.items()}
        return losses, metrics

    STATE_MODULES = ("actor", "critic", "target_critic", "value")
    actor_reads_next_obs = False  # AWR looks at s only
    next_obs_needs_grad = False  # s' only enters the TD target V(s'), without gradient
