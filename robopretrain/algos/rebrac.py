"""ReBRAC (Tarasov et al. 2023, "Revisiting the minimalist approach to offline reinforcement learning").

TD3+BC (:mod:`robopretrain.algos.td3_bc`) with the design choices the paper found to matter: deeper networks (3 hidden
layers of 256), LayerNorm in the critics (``Linear -> ReLU -> LayerNorm``), a large batch (1024), lr ``1e-3``, and the
behaviour-cloning penalty in the actor **and** in the critic target. The math (REFERENCE.md; CORL
``algorithms/offline/rebrac.py``, the authors' code):

* target: ``y = r + gamma * (1 - done) * (min_e Q'_e(s', a') - beta_critic * sum_i (a'_i - a'_data,i)^2)`` with the
  smoothed target-policy action ``a' = clip(pi'(s') + clip(0.2 eps, -0.5, 0.5), -1, 1)`` and the data's next
  action ``a'_data`` (batch key ``next_actions``);
* critics (2): ``sum_e mean_b (Q_e(s, a) - y)^2``;
* actor, every ``policy_freq = 2`` updates: ``mean_b [beta_actor * sum_i (pi(s)_i - a_i)^2 - lambda * min_e
  Q_e(s, pi(s))]`` with ``lambda = 1 / mean_b |min_e Q_e(s, pi(s))|`` (no gradient) when ``normalize_q``, else 1;
* targets (actor and critics) by Polyak averaging with ``tau = 0.005`` on actor updates.

Choices: CORL's ``Config`` defaults (``actor_bc_coef = critic_bc_coef = 1.0``; its per-dataset files tune them, e.g.
Adroit ``0.01-0.05`` / ``0.1-0.5``, and lower the lr to 3e-4 and the batch to 256 there). As in
:mod:`~robopretrain.algos.td3_bc`, both losses see the same (pre-step) critic, one backward pass, and the actor
updates on updates ``2, 4, ...`` (CORL's ReBRAC updates it on ``1, 3, ...``); rewards ``x10 - 5``; initialisation is
this toolkit's (CORL uses PyTorch-style uniform kernels, bias 0.1 and small final layers). The data's next action at
the last step of an episode is the step's own action (:func:`robopretrain.data.replay.next_actions_of`); a true
terminal masks it, a truncated episode's last step uses it (D4RL's loader drops those steps instead).

Clean-data check (``benchmarks/results/recipe_offline_family.json``; Reach, 50 clean expert demos, privileged state,
seed 0, 50 episodes, batch 1024): success 0.92 at 1000 and 1.00 at 2500 updates.

Agreement with CORL (``algorithms/offline/rebrac.py`` at commit 6afec90, JAX): its ``DetActor``, ``EnsembleCritic``,
``update_critic`` and ``update_actor`` (extracted from the file) on our weights in float64 (targets perturbed, LayerNorm
affines non-trivial, ``actor_bc_coef 0.7``, ``critic_bc_coef 0.3``), batch 64, 17-D states, 4-D actions, CORL's
target noise fed to ours; gradients read off an SGD(lr 1) step (``benchmarks/corl_agreement/rebrac_*.py``, jax 0.10.2
in a separate venv): max |difference| critic loss 0.0 (loss 161.7), actor loss 2.2e-16 (1.64), critic gradients
5.7e-14 (largest 49), actor gradients 8.3e-17. The LayerNorm epsilon is flax's 1e-6 (with torch's 1e-5 the critic
loss differed by 1.3e-2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from robopretrain.algos.cql import bellman_loss, require_keys
from robopretrain.algos.td3_bc import TD3BC
from robopretrain.data.keys import NEXT_ACTIONS
from robopretrain.nets.critic import EnsembleCritic

# --------------------------------------------------------------------------- loss functions


def bc_penalty(actions: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``sum_i (a_i - a_ref,i)^2`` per row, ``(B,)``, for ``(B, A)`` actions (ReBRAC's penalty; a sum, not a mean)."""
    return (actions - reference).square().sum(dim=-1)


def rebrac_target(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    next_q: torch.Tensor,
    next_action: torch.Tensor,
    next_data_action: torch.Tensor,
    beta: float,
    discount: float,
) -> torch.Tensor:
    """``r + gamma * (1 - done) * (Q'(s', a') - beta * ||a' - a'_data||^2)``, ``(B,)``, without gradient.

    ``next_q (B,)`` is the min over target critics at the smoothed target action ``next_action (B, A)``;
    ``next_data_action (B, A)`` is the data's action at ``s'``; ``dones`` marks true terminals only.
    """
    value = next_q - beta * bc_penalty(next_action, next_data_action)
    return (rewards + (1.0 - dones) * discount * value).detach()


def rebrac_actor_loss(
    q_pi: torch.Tensor, pi: torch.Tensor, actions: torch.Tensor, beta: float, normalize_q: bool = True
) -> torch.Tensor:
    """``mean_b [beta * ||pi(s) - a||^2 - lambda * Q(s, pi(s))]``, ``lambda = 1 / mean|Q|`` (detached) or 1.

    ``q_pi (B,)`` is the min over critics at the policy action, ``pi`` and ``actions`` are ``(B, A)``.
    """
    lmbda = 1.0 / q_pi.abs().mean().detach() if normalize_q else 1.0
    return (beta * bc_penalty(pi, actions) - lmbda * q_pi).mean()


# --------------------------------------------------------------------------- agent


@dataclass
class ReBRACConfig:
    """ReBRAC hyper-parameters: CORL ``rebrac.py``'s ``Config`` defaults, with the toolkit's sparse reward transform."""

    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    num_critics: int = 2
    activation: str = "relu"
    orthogonal_init: bool = False
    critic_layer_norm: bool = True  # LayerNorm after each hidden activation of the critics
    policy_lr: float = 1e-3
    qf_lr: float = 1e-3
    batch_size: int = 1024
    discount: float = 0.99
    tau: float = 5e-3  # Polyak rate of the target actor and critics (on actor updates)
    policy_noise: float = 0.2  # std of the target policy smoothing noise
    noise_clip: float = 0.5  # the smoothing noise is clipped to +-noise_clip
    policy_freq: int = 2  # the actor and the targets update every policy_freq updates
    actor_bc_coef: float = 1.0  # beta of the actor's BC penalty
    critic_bc_coef: float = 1.0  # beta of the BC penalty in the critic target
    normalize_q: bool = True  # divide the actor's Q term by mean|Q| (no gradient)
    expl_noise: float = 0.1  # std of the Gaussian exploration noise online (stage 3)
    reward_scale: float = 10.0  # sparse {0, 1} -> {-5, +5}, the Cal-QL transform, so Q is in the same units
    reward_bias: float = -5.0
    sparse_reward: bool = True


class ReBRAC(TD3BC):
    """ReBRAC agent; the API of :class:`~robopretrain.algos.td3_bc.TD3BC`, and batches also carry ``next_actions``."""

    name = "rebrac"

    @classmethod
    def config_class(cls) -> type:
        return ReBRACConfig

    def _make_critic(self) -> EnsembleCritic:
        cfg = self.cfg
        critic = EnsembleCritic(self.obs_dim, self.act_dim, cfg.critic_hidden, cfg.num_critics,
                                activation=cfg.activation, layer_norm=cfg.critic_layer_norm,
                                norm_after_activation=True, orthogonal_init=cfg.orthogonal_init)
        for norm in critic.norms:  # flax's LayerNorm epsilon (CORL's ReBRAC), not torch's 1e-5
            if hasattr(norm, "eps"):
                norm.eps = 1e-6
        return critic

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The critic loss and, on actor updates, the actor loss (each with gradients for its own network only)."""
        cfg = self.cfg
        require_keys(batch, [NEXT_ACTIONS], "ReBRAC")
        obs, actions = batch["observations"], batch["actions"]
        next_action = self._next_action(batch)
        with torch.no_grad():
            next_q = self.target_critic(batch["next_observations"], next_action).min(dim=0).values
            target = rebrac_target(batch["rewards"], batch["dones"], next_q, next_action, batch[NEXT_ACTIONS],
                                   cfg.critic_bc_coef, cfg.discount)
        q_data = self.critic(obs, actions)
        critic_loss = bellman_loss(q_data, target).sum()
        losses = {"critic": critic_loss}
        actor_step = self.actor_step()
        metrics: dict[str, torch.Tensor] = {}
        if actor_step or with_metrics:
            with torch.set_grad_enabled(actor_step and torch.is_grad_enabled()):
                pi = self.actor(batch.get("actor_observations", obs))
                q_pi = self.critic(obs.detach(), pi, detach_params=True).min(dim=0).values
                actor_loss = rebrac_actor_loss(q_pi, pi, actions, cfg.actor_bc_coef, cfg.normalize_q)
            if actor_step:
                losses["actor"] = actor_loss
        if with_metrics:
            metrics = {"critic_loss": critic_loss, "actor_loss": actor_loss, "q_data": q_data.mean(),
                       "q_policy": q_pi.mean(), "target_q": target.mean(),
                       "bc_mse_policy": bc_penalty(pi, actions).mean(),
                       "critic_bc_penalty": bc_penalty(next_action, batch[NEXT_ACTIONS]).mean()}
            metrics = {k: v.detach() for k, v in metrics.items()}
        return losses, metrics
