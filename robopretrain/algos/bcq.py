"""BCQ, continuous (Fujimoto, Meger & Precup 2019, "Off-policy deep RL without exploration").

A generative model of the data's actions, a small perturbation of its samples, and soft clipped double Q-learning
over those samples only, so the policy never leaves the data's support by much. The math (REFERENCE.md; the authors'
code sfujim/BCQ ``continuous_BCQ/BCQ.py``):

* conditional VAE ``G(a | s)``: encoder ``(s, a) -> (mu, log sigma)`` (log sigma clamped to ``[-4, 15]``), latent
  ``2|A|``, decoder ``(s, z) -> tanh(...)``; loss ``mean (a_hat - a)^2 + 0.5 * KL`` with ``KL = -0.5 * mean(1 +
  log sigma^2 - mu^2 - sigma^2)``; sampling draws ``z ~ N(0, 1)`` clipped to ``[-0.5, 0.5]``;
* perturbation ``xi(s, a) = Phi * tanh(MLP(s, a))``, ``Phi = 0.05``; the policy's action is ``clip(a + xi, -1, 1)``;
* critics (2): ``sum_e mean_b (Q_e(s, a) - y)^2`` with ``y = r + gamma * (1 - done) * max_j [lambda * min_e
  Q'_e(s', a'_j) + (1 - lambda) * max_e Q'_e(s', a'_j)]`` over ``n = 10`` VAE samples ``a'_j`` at ``s'`` perturbed
  by the target perturbation net, ``lambda = 0.75``;
* actor: ``-mean Q_1(s, clip(a_G + xi(s, a_G), -1, 1))`` with ``a_G ~ G(. | s)`` (not trained by this loss);
* targets (perturbation net and critics) by Polyak averaging with ``tau = 0.005`` every update; Adam lr ``1e-3`` for
  all three, networks ``(400, 300)`` for actor and critics and ``(750, 750)`` for the VAE, batch 100 (authors).
* acting: ``n_act = 100`` VAE samples per state, perturbed, and the one with the largest ``Q_1``.

Choices: one backward pass for the three losses at the same parameters (the authors step VAE, critic, actor in turn);
the VAE's samples in the actor loss are detached (the authors' actor loss leaves gradients on the VAE that the next
VAE step clears); rewards ``x10 - 5`` as the other agents. Image agents: the VAE and the perturbation net read the
actor encoder's features (trained by the VAE and actor losses), the critics the critic encoder's. BCQ has no online
version; stage 3 runs it but nothing here is tuned for it.

Clean-data check (``benchmarks/results/recipe_offline_family.json``; Reach, 50 clean expert demos, privileged state,
seed 0, 50 episodes, batch 100): success 1.00 at 1000 and at 2500 updates.

Agreement with the authors' code (sfujim/BCQ ``continuous_BCQ/BCQ.py``; CORL has no BCQ): its ``Actor``, ``Critic``,
``VAE`` and one ``BCQ.train`` iteration on our weights (target networks perturbed), float64, batch 64, 17-D states, 4-D
actions, the same random draws, optimisers replaced by gradient recorders (``python benchmarks/corl_agreement/bcq.py``):
max |difference| of the three losses 1.8e-15 (VAE 0.33, critic 15.5, actor -0.21), gradients VAE 2.5e-21, critic
2.8e-16, actor 8.7e-19.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robopretrain.algos.base import OfflineAlgorithm, soft_update_
from robopretrain.algos.cql import bellman_loss, td_target
from robopretrain.nets.critic import EnsembleCritic
from robopretrain.nets.mlp import build_mlp

# --------------------------------------------------------------------------- loss functions


def vae_loss(recon: torch.Tensor, actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             kl_weight: float = 0.5) -> torch.Tensor:
    """``mean (a_hat - a)^2 + kl_weight * KL``, ``KL = -0.5 * mean(1 + log std^2 - mean^2 - std^2)`` (all elements)."""
    kl = -0.5 * (1.0 + torch.log(std.square()) - mean.square() - std.square()).mean()
    return (recon - actions).square().mean() + kl_weight * kl


def soft_clipped_double_q(target_q: torch.Tensor, lmbda: float) -> torch.Tensor:
    """``lambda * min_e Q'_e + (1 - lambda) * max_e Q'_e`` over the critic axis 0 of ``(E, ...)``."""
    return lmbda * target_q.min(dim=0).values + (1.0 - lmbda) * target_q.max(dim=0).values


def bcq_target(rewards: torch.Tensor, dones: torch.Tensor, target_q: torch.Tensor, lmbda: float,
               discount: float) -> torch.Tensor:
    """``r + gamma * (1 - done) * max_j softclip(Q'(s', a'_j))`` for ``target_q (E, B, n)``; ``(B,)``, no gradient."""
    value = soft_clipped_double_q(target_q, lmbda).max(dim=-1).values
    return td_target(rewards, dones, value, discount)


# --------------------------------------------------------------------------- networks


class ConditionalVAE(nn.Module):
    """``G(a | s)``: encoder ``(s, a) -> (mu, log sigma)``, decoder ``(s, z) -> tanh(.)`` (the authors' VAE)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], latent_dim: int, **kw: Any) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = build_mlp(obs_dim + act_dim, 2 * latent_dim, hidden, **kw)
        self.decoder = build_mlp(obs_dim + latent_dim, act_dim, hidden, **kw)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction ``(B, A)``, latent mean and std ``(B, L)`` (reparameterised draw)."""
        mean, log_std = self.encoder(torch.cat([obs, actions], dim=-1)).chunk(2, dim=-1)
        std = log_std.clamp(-4.0, 15.0).exp()
        z = mean + std * torch.randn_like(std)
        return self.decode(obs, z), mean, std

    def decode(self, obs: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Actions ``(B, A)``; without ``z``, ``z ~ N(0, 1)`` clipped to ``[-0.5, 0.5]``."""
        if z is None:
            z = torch.randn(obs.shape[0], self.latent_dim, device=obs.device, dtype=obs.dtype).clamp(-0.5, 0.5)
        return torch.tanh(self.decoder(torch.cat([obs, z], dim=-1)))


class Perturbation(nn.Module):
    """``clip(a + Phi * tanh(MLP(s, a)), -1, 1)``: BCQ's actor."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], phi: float, **kw: Any) -> None:
        super().__init__()
        self.phi = float(phi)
        self.net = build_mlp(obs_dim + act_dim, act_dim, hidden, **kw)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        xi = self.phi * torch.tanh(self.net(torch.cat([obs, actions], dim=-1)))
        return (actions + xi).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------- agent


@dataclass
class BCQConfig:
    """BCQ hyper-parameters: the authors' defaults (continuous_BCQ), with the toolkit's sparse reward transform."""

    actor_hidden: tuple[int, ...] = (400, 300)
    critic_hidden: tuple[int, ...] = (400, 300)
    vae_hidden: tuple[int, ...] = (750, 750)
    num_critics: int = 2
    activation: str = "relu"
    orthogonal_init: bool = False
    policy_lr: float = 1e-3
    qf_lr: float = 1e-3
    vae_lr: float = 1e-3
    batch_size: int = 100
    discount: float = 0.99
    tau: float = 5e-3
    phi: float = 0.05  # largest perturbation of a VAE action, per dimension
    lmbda: float = 0.75  # weight of the min in the soft clipped double-Q target
    n_target_samples: int = 10  # VAE samples at s' for the target (max over them)
    n_act_samples: int = 100  # VAE samples per state when acting (argmax Q_1)
    kl_weight: float = 0.5
    reward_scale: float = 10.0  # sparse {0, 1} -> {-5, +5}, the Cal-QL transform, so Q is in the same units
    reward_bias: float = -5.0
    sparse_reward: bool = True


class BCQ(OfflineAlgorithm):
    """BCQ agent: ``update(batch) -> metrics``, ``act(obs)``, ``q_values``, ``state_dict()``."""

    name = "bcq"
    STATE_MODULES = ("actor", "target_actor", "critic", "target_critic", "vae")
    actor_reads_next_obs = True  # the VAE and the target perturbation act at s' (without gradient)
    next_obs_needs_grad = False

    def __init__(self, obs_dim: int, act_dim: int, cfg: BCQConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.cfg = cfg = cfg or BCQConfig()
        for key in ("n_target_samples", "n_act_samples"):
            if int(getattr(cfg, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        kw = {"activation": cfg.activation, "orthogonal_init": cfg.orthogonal_init}
        self.actor = Perturbation(obs_dim, act_dim, cfg.actor_hidden, cfg.phi, **kw).to(self.device)
        self.target_actor = Perturbation(obs_dim, act_dim, cfg.actor_hidden, cfg.phi, **kw).to(self.device)
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.target_actor.requires_grad_(False)
        self.critic = EnsembleCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics, **kw).to(self.device)
        self.target_critic = EnsembleCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics, **kw).to(self.device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.vae = ConditionalVAE(obs_dim, act_dim, cfg.vae_hidden, 2 * act_dim, **kw).to(self.device)
        self._init_optimizer([(self.actor, cfg.policy_lr), (self.critic, cfg.qf_lr), (self.vae, cfg.vae_lr)])

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """VAE, critic and actor losses (each with gradients for its own network only) and detached metrics."""
        cfg, n = self.cfg, int(self.cfg.n_target_samples)
        obs, actions = batch["observations"], batch["actions"]
        actor_obs = batch.get("actor_observations", obs)
        recon, mean, std = self.vae(actor_obs, actions)
        loss_vae = vae_loss(recon, actions, mean, std, cfg.kl_weight)
        with torch.no_grad():
            nxt = batch["next_observations"].repeat_interleave(n, dim=0)
            actor_nxt = batch.get("actor_next_observations", batch["next_observations"]).repeat_interleave(n, dim=0)
            next_action = self.target_actor(actor_nxt, self.vae.decode(actor_nxt))
            target_q = self.target_critic(nxt, next_action).view(cfg.num_critics, -1, n)
            target = bcq_target(batch["rewards"], batch["dones"], target_q, cfg.lmbda, cfg.discount)
        q_data = self.critic(obs, actions)
        critic_loss = bellman_loss(q_data, target).sum()
        with torch.no_grad():
            sampled = self.vae.decode(actor_obs.detach())
        pi = self.actor(actor_obs, sampled)
        actor_loss = -self.critic(obs.detach(), pi, detach_params=True)[0].mean()
        losses = {"vae": loss_vae, "critic": critic_loss, "actor": actor_loss}
        metrics: dict[str, torch.Tensor] = {}
        if with_metrics:
            metrics = {"vae_loss": loss_vae, "critic_loss": critic_loss, "actor_loss": actor_loss,
                       "q_data": q_data.mean(), "target_q": target.mean(),
                       "perturbation": (pi - sampled).abs().mean()}
            metrics = {k: v.detach() for k, v in metrics.items()}
        return losses, metrics

    def update_targets(self) -> None:
        """Polyak-average the target perturbation net and critics (every update)."""
        soft_update_(self.target_critic, self.critic, self.cfg.tau)
        soft_update_(self.target_actor, self.actor, self.cfg.tau)

    def _greedy_latents(self, n: int) -> torch.Tensor:
        """``(n, latent_dim)`` clipped ``N(0, 1)`` latents drawn once with seed 0 (the deterministic policy's)."""
        cached = getattr(self, "_greedy_z", None)
        if cached is None or cached.shape[0] != n or cached.device != self.device:
            gen = torch.Generator().manual_seed(0)
            cached = torch.randn(n, self.vae.latent_dim, generator=gen).clamp(-0.5, 0.5).to(self.device)
            self._greedy_z = cached
        return cached

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """Per state, the perturbed VAE sample (of ``n_act_samples``) with the largest ``Q_1``; ``(A,)`` or ``(B, A)``.

        The critic scores the same features the actor reads (an image agent acts on its actor encoder's features).
        The candidates' latents are BCQ's clipped ``N(0, 1)`` draws: fresh from torch's RNG when ``deterministic`` is
        False (the authors' ``select_action``), else one fixed set of ``n_act_samples`` latents (seed 0) shared by
        every state and call, so the greedy policy is a function of the state (evaluations repeat exactly, whatever
        the batch or the worker).
        """
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x
        n = int(self.cfg.n_act_samples)
        rep = x.repeat_interleave(n, dim=0)
        z = self._greedy_latents(n).repeat(x.shape[0], 1) if deterministic else None
        cand = self.actor(rep, self.vae.decode(rep, z)).view(x.shape[0], n, self.act_dim)
        q1 = self.critic(x, cand)[0]  # (B, n)
        best = cand[torch.arange(x.shape[0]), q1.argmax(dim=-1)]
        out = best[0] if single else best
        return out.cpu().numpy()
