"""AWAC (Nair et al. 2020, "AWAC: accelerating online reinforcement learning with offline datasets").

An actor-critic whose policy is fit by advantage-weighted maximum likelihood of the data actions, so it stays close
to the data offline and keeps improving online. The math (REFERENCE.md; CORL ``algorithms/offline/awac.py`` and
``algorithms/finetune/awac.py``, which share it):

* critics (2): ``sum_e mean_b (Q_e(s, a) - y)^2`` with ``y = r + gamma * (1 - done) * min_e Q'_e(s', a')``,
  ``a' ~ pi(.|s')`` clipped to ``[-1, 1]`` (no entropy term);
* actor: ``-mean_b [w * log pi(a | s)]`` with ``w = min(exp(A / lambda), 100)``, ``A = min_e Q_e(s, a) - min_e
  Q_e(s, a_pi)``, ``a_pi ~ pi(.|s)`` (one sample, clipped) standing in for ``V(s)``; the weights carry no gradient;
* targets (critics only) by Polyak averaging with ``tau = 0.005`` after every update; Adam lr ``3e-4``, batch 256,
  3 hidden layers of 256 for actor and critics (CORL's ``hidden_dim`` with three hidden layers).

Choices: the policy is :class:`~robopretrain.nets.actor.GaussianActor` (a Gaussian in action space with a
state-independent learned std, as CORL's AWAC actor) but with the toolkit's ``tanh``-bounded mean (CORL's mean is
unbounded); log-std clamped to ``[-20, 2]`` as CORL. ``lambda = 1`` on the toolkit's ``x10 - 5`` rewards weighs
advantages as CORL's sparse-task setting ``awac_lambda = 0.1`` does on unit rewards (its AntMaze and Adroit configs).
Both losses see the same (pre-step) critic and one backward pass computes every gradient (CORL steps the critic
first); the Q-values in the weights come from the current critics, as CORL's.

Clean-data check (``benchmarks/results/recipe_offline_family.json``; Reach, 50 clean expert demos, privileged state,
seed 0, 50 episodes): success 0.94 at 1000 and 1.00 at 2500 updates.

Agreement with CORL (``algorithms/offline/awac.py`` at commit 6afec90): its ``Actor`` (with our tanh-bounded mean
plugged into its ``_mlp``), ``Critic`` and ``AdvantageWeightedActorCritic.update`` on our weights (target critics
perturbed), float64, batch 64, 17-D states, 4-D actions, the same policy samples (same torch seed), ``lambda = 1e-4``
so that 45% of the weights clip at 100, optimisers replaced by gradient recorders
(``python benchmarks/corl_agreement/td3_bc_awac.py``): max |difference| critic loss 0.0 (loss 15.7), actor loss
2.8e-14 (236), critic gradients 2.2e-16, actor gradients 2.1e-14 (relative 1e-16).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from robopretrain.algos.base import OfflineAlgorithm
from robopretrain.algos.cql import bellman_loss, td_target
from robopretrain.nets.actor import GaussianActor
from robopretrain.nets.critic import EnsembleCritic

# --------------------------------------------------------------------------- loss functions


def awac_weights(
    q_data: torch.Tensor, v_pi: torch.Tensor, awac_lambda: float, max_weight: float = 100.0
) -> torch.Tensor:
    """``min(exp((Q(s, a) - V(s)) / lambda), max_weight)``, ``(B,)``, detached; ``V(s) = Q(s, a_pi)``."""
    return torch.exp((q_data - v_pi).detach() / awac_lambda).clamp(max=max_weight)


def awac_actor_loss(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Advantage-weighted likelihood: ``-mean_b [w * log pi(a | s)]`` for ``(B,)`` log-probs and weights."""
    return -(weights.detach() * log_prob).mean()


def awac_critic_loss(q_data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_e mean_b (Q_e(s, a) - y)^2`` for ``q_data (E, B)`` and ``y (B,)`` (no gradient through ``y``)."""
    return bellman_loss(q_data, target.detach()).sum()


# --------------------------------------------------------------------------- agent


@dataclass
class AWACConfig:
    """AWAC hyper-parameters: CORL's defaults (3 x 256 networks, lr 3e-4), its sparse-task temperature in the
    toolkit's reward units."""

    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    num_critics: int = 2
    activation: str = "relu"
    orthogonal_init: bool = False
    policy_lr: float = 3e-4
    qf_lr: float = 3e-4
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 5e-3
    awac_lambda: float = 1.0  # advantage temperature; with rewards x10 this is CORL's 0.1 on unit rewards
    max_weight: float = 100.0  # CORL's exp_adv_max
    log_std_min: float = -20.0  # clamp of the policy's learned log-std (CORL's AWAC actor)
    log_std_max: float = 2.0
    reward_scale: float = 10.0  # sparse {0, 1} -> {-5, +5}, the Cal-QL transform, so Q is in the same units
    reward_bias: float = -5.0
    sparse_reward: bool = True


class AWAC(OfflineAlgorithm):
    """AWAC agent: ``update(batch) -> metrics``, ``act(obs)``, ``q_values``, ``state_dict()``.

    ``batch`` holds ``observations``, ``actions``, ``rewards``, ``next_observations`` and ``dones``; image agents may
    add the actor encoder's features as ``actor_observations`` / ``actor_next_observations`` (the policy samples
    ``a'`` at ``s'`` without gradient).
    """

    name = "awac"
    STATE_MODULES = ("actor", "critic", "target_critic")
    actor_reads_next_obs = True  # the policy samples a' at s' for the critic target (without gradient)
    next_obs_needs_grad = False  # s' enters the losses only through the target (no gradient)

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: AWACConfig | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg = cfg = cfg or AWACConfig()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        kw = {"activation": cfg.activation, "orthogonal_init": cfg.orthogonal_init}
        self.actor = GaussianActor(obs_dim, act_dim, cfg.actor_hidden, log_std_min=cfg.log_std_min,
                                   log_std_max=cfg.log_std_max, **kw).to(self.device)
        self.critic = EnsembleCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics, **kw).to(self.device)
        self.target_critic = EnsembleCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics, **kw).to(self.device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self._init_optimizer([(self.actor, cfg.policy_lr), (self.critic, cfg.qf_lr)])

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Critic and actor losses (each with gradients for its own network only) and detached metrics."""
        cfg = self.cfg
        obs, actions = batch["observations"], batch["actions"]
        actor_obs = batch.get("actor_observations", obs)
        with torch.no_grad():
            next_action, _ = self.actor.sample(batch.get("actor_next_observations", batch["next_observations"]))
            next_q = self.target_critic(batch["next_observations"], next_action).min(dim=0).values
            target = td_target(batch["rewards"], batch["dones"], next_q, cfg.discount)
            pi_action, _ = self.actor.sample(actor_obs.detach())
            # Q(s, a) and V(s) = Q(s, a_pi) of the current critics in one pass, for the weights only
            q_both = self.critic(obs.detach(), torch.stack([actions, pi_action], dim=1)).min(dim=0).values
            weights = awac_weights(q_both[:, 0], q_both[:, 1], cfg.awac_lambda, cfg.max_weight)
        q_data = self.critic(obs, actions)
        critic_loss = awac_critic_loss(q_data, target)
        log_prob = self.actor.log_prob(actor_obs, actions)
        actor_loss = awac_actor_loss(log_prob, weights)
        losses = {"critic": critic_loss, "actor": actor_loss}
        metrics: dict[str, torch.Tensor] = {}
        if with_metrics:
            metrics = {"critic_loss": critic_loss, "actor_loss": actor_loss, "q_data": q_data.mean(),
                       "target_q": target.mean(), "advantage": (q_both[:, 0] - q_both[:, 1]).mean(),
                       "weight": weights.mean(), "weight_clipped": (weights >= cfg.max_weight).float().mean(),
                       "log_prob": log_prob.mean()}
            metrics = {k: v.detach() for k, v in metrics.items()}
        return losses, metrics
