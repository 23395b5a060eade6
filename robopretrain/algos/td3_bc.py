"""TD3+BC (Fujimoto & Gu 2021, "A minimalist approach to offline reinforcement learning").

TD3 with a behaviour-cloning term in the actor loss; the math is in the plain functions below (REFERENCE.md, "The
lectures' offline RL family"; the authors' code sfujim/TD3_BC and CORL ``algorithms/offline/td3_bc.py``):

* target policy smoothing: ``a' = clip(pi'(s') + clip(eps * sigma, -c, c), -1, 1)``, ``eps ~ N(0, 1)``,
  ``sigma = 0.2``, ``c = 0.5``, with the target actor ``pi'``;
* critics (2): ``sum_e mean_b (Q_e(s, a) - y)^2``, ``y = r + gamma * (1 - done) * min_e Q'_e(s', a')``;
* actor, every ``policy_freq = 2`` updates: ``-lambda * mean Q_1(s, pi(s)) + mean_{b, i} (pi(s)_i - a_i)^2`` with
  ``lambda = alpha / mean|Q_1(s, pi(s))|`` (no gradient through ``lambda``), ``alpha = 2.5``; the first critic, as
  the authors do;
* targets (actor and critics) move by Polyak averaging, ``tau = 0.005``, on the actor's updates only (as the
  authors' and CORL's code do); Adam, lr ``3e-4``, batch 256. Observations are normalised by the data's mean and std
  (the agent's :class:`~robopretrain.nets.obs_encoder.ObsEncoder` does it, eps 1e-3 as the authors).

Implementation notes: every loss touches only its own parameters (the actor's Q term runs the critic with detached
weights on detached critic features), so one backward pass of their sum gives each network's gradient at the same
parameters and one Adam steps both (the optimiser skips the actor on the updates without an actor loss). CORL steps
the critic first and then computes the actor loss with the *updated* critic; here both losses see the pre-step
critic (the convention of :mod:`robopretrain.algos.cql`, JaxCQL's). Rewards: the same ``x10 - 5`` sparse transform as
CQL / IQL so Q-values are in the same units (``lambda`` normalises the actor's Q term whatever the scale). The actor is
:class:`~robopretrain.nets.actor.DeterministicActor` (``tanh`` head), the critics an
:class:`~robopretrain.nets.critic.EnsembleCritic`; initialisation is this toolkit's (final layer gain 1e-2), not
PyTorch's default.

Clean-data check (``benchmarks/results/recipe_offline_family.json``; Reach, 50 clean expert demos, privileged state,
seed 0, 50 episodes): success 0.00 at 1000 and 0.02 at 2500 updates with the default ``alpha = 2.5`` -- the actor
follows the critic's extrapolation (Q at the policy's actions about -1.9 against -6.8 at the data's, BC MSE 0.73);
with ``alpha = 0`` the same actor imitates (BC MSE 0.02 after 600 updates). Exploratory, after the protocol run
(``benchmarks/recipe_explore.py td3_bc --set algo.alpha=...``): ``alpha = 0.25`` 0.96 / 0.72, ``alpha = 0.1`` 0.96 / 0.96. On 629 sparse-reward
transitions the BC term needs more weight than on D4RL locomotion.

Online (stage 3): TD3's exploration ``a = clip(pi(s) + N(0, 0.1^2), -1, 1)`` when acting non-deterministically.

Agreement with CORL (``algorithms/offline/td3_bc.py`` at commit 6afec90): its ``Actor``, ``Critic`` and ``TD3_BC.train``
run on our weights (target networks perturbed away from the online ones), float64, batch 64, 17-D states, 4-D
actions, the same target noise (same torch seed), an actor update, optimisers replaced by gradient recorders
(``python benchmarks/corl_agreement/td3_bc_awac.py``): max |difference| critic loss 4.4e-16 (loss 1.67), actor loss
2.2e-16 (1.62), critic gradients 6.9e-17, actor gradients 0.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from robopretrain.algos.base import OfflineAlgorithm, soft_update_
from robopretrain.algos.cql import bellman_loss, td_target
from robopretrain.nets.actor import DeterministicActor
from robopretrain.nets.critic import EnsembleCritic

# --------------------------------------------------------------------------- loss functions


def smoothed_target_action(
    target_action: torch.Tensor, eps: torch.Tensor, policy_noise: float, noise_clip: float
) -> torch.Tensor:
    """TD3's target policy smoothing: ``clip(pi'(s') + clip(eps * sigma, -c, c), -1, 1)``; all ``(B, A)``.

    ``eps`` is standard normal noise (given, so the function is deterministic); ``sigma = policy_noise``,
    ``c = noise_clip`` (Fujimoto et al. 2018, eq. 14).
    """
    noise = (eps * policy_noise).clamp(-noise_clip, noise_clip)
    return (target_action + noise).clamp(-1.0, 1.0)


def td3_critic_loss(q_data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_e mean_b (Q_e(s, a) - y)^2`` for ``q_data (E, B)`` and the target ``y (B,)`` (no gradient)."""
    return bellman_loss(q_data, target.detach()).sum()


def td3_bc_actor_loss(q_pi: torch.Tensor, pi: torch.Tensor, actions: torch.Tensor, alpha: float) -> torch.Tensor:
    """TD3+BC's actor loss ``-lambda * mean Q(s, pi(s)) + mean (pi(s) - a)^2`` with ``lambda = alpha / mean|Q|``.

    ``q_pi (B,)`` is one critic's value of the policy action, ``pi`` and ``actions`` are ``(B, A)``; the MSE averages
    over the batch and the action dimensions (``F.mse_loss``); ``lambda`` carries no gradient (Fujimoto & Gu 2021,
    eq. 3-4).
    """
    lmbda = alpha / q_pi.abs().mean().detach()
    return -lmbda * q_pi.mean() + (pi - actions).square().mean()


# --------------------------------------------------------------------------- agent


@dataclass
class TD3BCConfig:
    """TD3+BC hyper-parameters: the authors' (and CORL's) defaults, with the toolkit's sparse reward transform."""

    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    activation: str = "relu"
    orthogonal_init: bool = False
    policy_lr: float = 3e-4
    qf_lr: float = 3e-4
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 5e-3  # Polyak rate of the target actor and critics (on actor updates)
    policy_noise: float = 0.2  # std of the target policy smoothing noise
    noise_clip: float = 0.5  # the smoothing noise is clipped to +-noise_clip
    policy_freq: int = 2  # the actor and the targets update every policy_freq updates
    alpha: float = 2.5  # weight of the Q term relative to the BC term (lambda = alpha / mean|Q|)
    expl_noise: float = 0.1  # std of the Gaussian exploration noise online (stage 3)
    reward_scale: float = 10.0  # sparse {0, 1} -> {-5, +5}, the Cal-QL transform, so Q is in the same units
    reward_bias: float = -5.0
    sparse_reward: bool = True


class TD3BC(OfflineAlgorithm):
    """TD3+BC agent: ``update(batch) -> metrics``, ``act(obs)``, ``q_values``, ``state_dict()``.

    ``batch`` holds ``observations (B, S)``, ``actions (B, A)``, ``rewards (B,)``, ``next_observations (B, S)`` and
    ``dones (B,)``; image agents may add the actor encoder's features as ``actor_observations`` /
    ``actor_next_observations`` (the target actor reads them at ``s'``).
    """

    name = "td3_bc"
    STATE_MODULES = ("actor", "target_actor", "critic", "target_critic")
    actor_reads_next_obs = True  # the target actor acts at s' (without gradient)
    next_obs_needs_grad = False  # s' enters the losses only through the targets (no gradient)

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: TD3BCConfig | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg = cfg = cfg or self.config_class()()
        if int(cfg.policy_freq) < 1:
            raise ValueError(f"policy_freq must be >= 1, got {cfg.policy_freq}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.actor = self._make_actor().to(self.device)
        self.target_actor = self._make_actor().to(self.device)
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.target_actor.requires_grad_(False)
        self.critic = self._make_critic().to(self.device)
        self.target_critic = self._make_critic().to(self.device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self._init_optimizer([(self.actor, cfg.policy_lr), (self.critic, cfg.qf_lr)])

    @classmethod
    def config_class(cls) -> type:
        return TD3BCConfig

    def _make_actor(self) -> DeterministicActor:
        cfg = self.cfg
        return DeterministicActor(self.obs_dim, self.act_dim, cfg.actor_hidden, activation=cfg.activation,
                                  orthogonal_init=cfg.orthogonal_init, expl_noise=cfg.expl_noise)

    def _make_critic(self) -> EnsembleCritic:
        cfg = self.cfg
        return EnsembleCritic(self.obs_dim, self.act_dim, cfg.critic_hidden, cfg.num_critics,
                              activation=cfg.activation, orthogonal_init=cfg.orthogonal_init)

    def cuda_graph_period(self) -> int:
        """The actor and the targets move every ``policy_freq`` updates: that many distinct steps."""
        return int(self.cfg.policy_freq)

    def actor_step(self) -> bool:
        """Whether the coming update (number ``num_updates + 1``) trains the actor and moves the targets."""
        return (self.num_updates + 1) % int(self.cfg.policy_freq) == 0

    def _next_action(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The smoothed target-policy action at ``s'`` (no gradient)."""
        with torch.no_grad():
            next_pi = self.target_actor(batch.get("actor_next_observations", batch["next_observations"]))
            eps = torch.randn_like(next_pi)
            return smoothed_target_action(next_pi, eps, self.cfg.policy_noise, self.cfg.noise_clip)

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The critic loss and, on actor updates, the actor loss (each with gradients for its own network only)."""
        cfg = self.cfg
        obs, actions = batch["observations"], batch["actions"]
        next_action = self._next_action(batch)
        with torch.no_grad():
            next_q = self.target_critic(batch["next_observations"], next_action).min(dim=0).values
            target = td_target(batch["rewards"], batch["dones"], next_q, cfg.discount)
        q_data = self.critic(obs, actions)
        critic_loss = td3_critic_loss(q_data, target)
        losses = {"critic": critic_loss}
        actor_step = self.actor_step()
        metrics: dict[str, torch.Tensor] = {}
        if actor_step or with_metrics:
            with torch.set_grad_enabled(actor_step and torch.is_grad_enabled()):
                pi = self.actor(batch.get("actor_observations", obs))
                q_pi = self.critic(obs.detach(), pi, detach_params=True)[0]
                actor_loss = td3_bc_actor_loss(q_pi, pi, actions, cfg.alpha)
            if actor_step:
                losses["actor"] = actor_loss
        if with_metrics:
            metrics = {"critic_loss": critic_loss, "actor_loss": actor_loss, "q_data": q_data.mean(),
                       "q_policy": q_pi.mean(), "target_q": target.mean(),
                       "bc_mse": (pi - actions).square().mean()}
            metrics = {k: v.detach() for k, v in metrics.items()}
        return losses, metrics

    def update_targets(self) -> None:
        """Polyak-average the target actor and critics on actor updates (call before ``num_updates`` grows)."""
        if self.actor_step():
            soft_update_(self.target_critic, self.critic, self.cfg.tau)
            soft_update_(self.target_actor, self.actor, self.cfg.tau)
