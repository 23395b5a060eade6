"""CQL(H) on SAC, with the Cal-QL lower bound and the optional DR3 regulariser.

All of the math is in the plain loss functions at the top of this module; :class:`CQL` only owns the
networks and the optimiser and wires the functions together. It follows REFERENCE.md, "Stage 3: Cal-QL"
(and "Stage 2" for CQL and DR3), which describes the official Cal-QL/JaxCQL code:

* per state, ``N`` uniform actions in ``[-1, 1]^A`` (log-density ``A * log 0.5``), ``N`` policy actions at
  ``s`` and ``N`` policy actions at ``s'``, all scored by ``Q(s, .)``;
* Cal-QL: **policy-sampled** Q-values (current and next) are replaced by ``max(Q, V_mu(s))`` with ``V_mu``
  the Monte-Carlo return-to-go of the stored transition, *before* importance sampling; uniform actions
  are never bounded;
* importance-sampled penalty ``T * logsumexp([Q_rand - log 0.5^A, Q_next - log pi(a'|s'),
  Q_cur - log pi(a|s)] / T) - Q(s, a_data)``, weighted by a fixed ``cql_alpha`` or a Lagrange multiplier
  (``log alpha'`` initialised to 1.0, target action gap);
* max-target backup: ``N`` actions sampled at ``s'``, min over the 2 target critics, then max over the
  samples; no entropy term in the backup by default;
* SAC actor ``E[alpha log pi - min_e Q_e]`` with automatic entropy tuning to target ``-|A|``; during the first
  ``bc_steps`` updates (0 by default) the actor instead imitates the data, ``E[alpha log pi - log pi(a_data|s)]``
  (CORL ``cql.py``'s ``bc_steps``, the original CQL code's ``policy_eval_start``, a warm start the CQL paper used
  on AntMaze); the critic and the temperature train as usual meanwhile;
* optional BC term in the actor after the warm start (``actor_bc_weight`` w, 0 by default, so off):
  ``E[alpha log pi - min_e Q_e] / mean|Q| + w * mean_d (tanh(mu(s)) - a_data)^2``, TD3+BC's form (Fujimoto & Gu
  2021: the Q term divided by the batch's mean ``|Q|``, detached, so w does not depend on the reward scale;
  w = 1 / 2.5 is TD3+BC's alpha 2.5) on the SAC actor; ``actor_bc_filter="success"`` keeps the BC term to
  transitions of successful episodes (their Monte-Carlo return beats the never-succeeds value: filtered BC). Not in CQL / PTR / Cal-QL: a deviation for narrow
  demonstration data at small update budgets (README, "Why stage 2 does not learn its prior tasks");
* DR3: ``c * mean_b sum_k phi(s, a)_k phi(s', a')_k`` over penultimate critic features (off by default);
* soft target update with ``tau = 5e-3``; official defaults in :class:`CQLConfig`.

Implementation notes (same math, organised for speed):

* all losses come from ONE backward pass of their sum, with every loss touching only its own parameters
  (sampled actions are detached for the critic, the critic's weights are detached for the actor, log-probs
  are detached for the temperature). This reproduces JaxCQL exactly, which also takes every gradient at the
  same parameters and then applies them; a single Adam over four parameter groups then steps them;
* the actor runs once on ``[s; s']``; the critic runs once on ``(B, 1 + 3N, A)`` actions (data, uniform,
  current, next); the target critic runs once on the ``N`` backup actions.

Choices that differ from (or are not fixed by) REFERENCE.md:

* the backup actions at ``s'`` are drawn independently of the CQL "next" actions (as in JaxCQL);
* ``alpha`` without automatic tuning is ``alpha_multiplier`` (JaxCQL's convention);
* the temperature is optimised with ``alpha_lr`` (default: the policy lr) and ``log alpha'`` with
  ``alpha_prime_lr`` (default: the Q lr), as JaxCQL does;
* ``reward_scale``/``reward_bias`` (10, -5) are carried in the config for the data pipeline, which applies
  them; the agent never rescales rewards itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from robopretrain.algos.base import OfflineAlgorithm, require_keys
from robopretrain.data.returns import never_succeeds_return, sparse_return_range
from robopretrain.nets.actor import TanhGaussianActor, squashed_gaussian_log_prob, squashed_gaussian_sample
from robopretrain.nets.critic import EnsembleCritic

# --------------------------------------------------------------------------- loss functions


def uniform_log_density(action_dim: int) -> float:
    """Log-density of the uniform distribution on ``[-1, 1]^A``: ``log(0.5^A)``."""
    return action_dim * math.log(0.5)


def calql_lower_bound(q_policy: torch.Tensor, mc_returns: torch.Tensor) -> torch.Tensor:
    """Cal-QL: ``max(Q, V_mu(s))`` for policy-sampled Q-values ``(E, B, N)`` and returns-to-go ``(B,)``."""
    return torch.maximum(q_policy, mc_returns.view(1, -1, 1))


def cql_conservative_penalty(
    q_rand: torch.Tensor,
    q_cur: torch.Tensor,
    q_next: torch.Tensor,
    logp_cur: torch.Tensor,
    logp_next: torch.Tensor,
    q_data: torch.Tensor,
    temp: float = 1.0,
    calql_bound: torch.Tensor | None = None,
    *,
    action_dim: int,
    importance_sample: bool = True,
    clip_diff_min: float = -math.inf,
    clip_diff_max: float = math.inf,
) -> torch.Tensor:
    """CQL(H) gap per critic, ``(E,)``: ``mean_b[T * logsumexp(cat / T) - Q(s, a_data)]``.

    Shapes: ``q_rand, q_cur, q_next`` are ``(E, B, N)`` (uniform, policy-at-s, policy-at-s' actions, all
    scored at ``s``); ``logp_cur, logp_next`` are ``(B, N)``; ``q_data`` is ``(E, B)``. With
    ``calql_bound`` (``(B,)`` returns-to-go) the policy-sampled Q-values are lifted to the bound first;
    ``q_rand`` is never bounded. With ``importance_sample`` the terms are divided by their sampling
    densities (uniform ``0.5^A`` with ``A = action_dim``, policy ``pi``); otherwise ``Q(s, a_data)`` joins
    the logsumexp (JaxCQL).
    """
    if calql_bound is not None:
        q_cur = calql_lower_bound(q_cur, calql_bound)
        q_next = calql_lower_bound(q_next, calql_bound)
    if importance_sample:
        rand_term = q_rand - uniform_log_density(action_dim)
        cat = torch.cat([rand_term, q_next - logp_next.unsqueeze(0), q_cur - logp_cur.unsqueeze(0)], dim=-1)
    else:
        cat = torch.cat([q_rand, q_data.unsqueeze(-1), q_next, q_cur], dim=-1)
    ood = torch.logsumexp(cat / temp, dim=-1) * temp
    return (ood - q_data).clamp(clip_diff_min, clip_diff_max).mean(dim=-1)


def max_target_q(target_q: torch.Tensor, next_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max-target backup: min over critics of ``target_q (E, B, N)``, then max over the ``N`` samples.

    Returns the backed-up values ``(B,)``, the log-probs of the chosen actions ``(B,)`` and their index.
    """
    q_min = target_q.min(dim=0).values
    q, idx = q_min.max(dim=-1)
    return q, next_logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1), idx


def td_target(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    next_q: torch.Tensor,
    discount: float,
    next_logp: torch.Tensor | None = None,
    alpha: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """``r + gamma * (1 - done) * (Q'(s', a') [- alpha * log pi(a'|s')])``, without gradient.

    ``dones`` marks true terminals only (truncation is not termination). The entropy term is used only
    when ``next_logp`` is given (``backup_entropy``; off by default in Cal-QL).
    """
    value = next_q if next_logp is None else next_q - alpha * next_logp
    return (rewards + (1.0 - dones) * discount * value).detach()


def bellman_loss(q_data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error per critic, ``(E,)``, for ``q_data (E, B)`` and ``target (B,)``."""
    return (q_data - target.unsqueeze(0)).square().mean(dim=-1)


def sac_actor_loss(q_pi: torch.Tensor, logp_pi: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """SAC policy loss ``mean(alpha * log pi - min_e Q_e(s, a_pi))``; ``q_pi`` is ``(E, B)`` or ``(B,)``."""
    q = q_pi.min(dim=0).values if q_pi.dim() == 2 else q_pi
    return (alpha * logp_pi - q).mean()


def bc_warm_start_actor_loss(logp_pi: torch.Tensor, logp_data: torch.Tensor, alpha: torch.Tensor | float
                              ) -> torch.Tensor:
    """``mean(alpha * log pi(a~pi|s) - log pi(a_data|s))``: the actor loss of CQL's BC warm start (CORL ``cql.py``
    ``_policy_loss`` while ``total_it <= bc_steps``). ``logp_pi``, ``logp_data`` ``(B,)``."""
    return (alpha * logp_pi - logp_data).mean()


def bc_regularized_actor_loss(q_pi: torch.Tensor, logp_pi: torch.Tensor, alpha: torch.Tensor | float,
                              mean_action: torch.Tensor, data_actions: torch.Tensor, bc_weight: float,
                              bc_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SAC actor loss with TD3+BC's normalisation and behaviour-cloning term:
    ``mean(alpha * log pi - min_e Q_e) / mean|min_e Q_e|.detach() + bc_weight * mean((mean_action - a_data)^2)``.

    TD3+BC (Fujimoto & Gu 2021, ``lambda = alpha / mean|Q|``; CORL ``td3_bc.py``) with its deterministic action
    replaced by the SAC actor's: the Q part is divided by its batch mean magnitude, so ``bc_weight`` is free of the
    reward scale (``1 / 2.5`` is TD3+BC's ``alpha = 2.5``). ``q_pi`` ``(E, B)`` or ``(B,)``; ``logp_pi`` ``(B,)``;
    ``mean_action`` (the squashed mean, ``tanh(mu)``) and ``data_actions`` ``(B, A)`` in ``[-1, 1]``. ``bc_mask``
    ``(B,)`` of 0 / 1 (optional): the BC term is the mean over the rows it keeps only (filtered BC, Chen et al. 2021;
    0 when it keeps none).
    """
    q = q_pi.min(dim=0).values if q_pi.dim() == 2 else q_pi
    scale = q.abs().mean().detach().clamp_min(1e-6)
    per_row = (mean_action - data_actions).square().mean(dim=-1)
    if bc_mask is None:
        bc = per_row.mean()
    else:
        bc = (per_row * bc_mask).sum() / bc_mask.sum().clamp_min(1.0)
    return (alpha * logp_pi - q).mean() / scale + bc_weight * bc


def successful_episode_mask(mc_returns: torch.Tensor, never_succeeds_return: float) -> torch.Tensor:
    """``(B,)`` float 0 / 1: 1 where a transition's Monte-Carlo return-to-go exceeds the value every step of an
    episode that never succeeds gets under the sparse-reward rule (REFERENCE.md, Stage 3: ``r_neg / (1 - gamma)``),
    i.e. the transition belongs to a successful episode. The margin is 1e-4 of that value's magnitude."""
    margin = 1e-4 * max(abs(never_succeeds_return), 1.0)
    return (mc_returns > never_succeeds_return + margin).to(mc_returns.dtype)


def entropy_temperature_loss(log_alpha: torch.Tensor, logp_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Automatic entropy tuning: ``-mean(log_alpha * (log pi + target_entropy))`` (log-probs detached)."""
    return -(log_alpha * (logp_pi.detach() + target_entropy)).mean()


def lagrange_alpha_prime_loss(
    log_alpha_prime: torch.Tensor, cql_gap: torch.Tensor, cql_alpha: float, target_action_gap: float
) -> torch.Tensor:
    """Lagrange CQL: maximise ``alpha' * w * (gap - target)`` over ``alpha'``; ``cql_gap`` is ``(E,)``."""
    alpha_prime = log_alpha_prime.exp().clamp(0.0, 1e6)
    return -(alpha_prime * cql_alpha * (cql_gap.detach() - target_action_gap)).mean()


def dr3_penalty(phi: torch.Tensor, phi_next: torch.Tensor, coef: float = 1.0) -> torch.Tensor:
    """DR3 per critic, ``(E,)``: ``coef * mean_b sum_k phi(s, a)_k * phi(s', a')_k`` for features ``(E, B, H)``."""
    return coef * (phi * phi_next).sum(dim=-1).mean(dim=-1)


# --------------------------------------------------------------------------- helpers shared by the agents


# --------------------------------------------------------------------------- agent


@dataclass
class CQLConfig:
    """Hyper-parameters; the defaults are the official Cal-QL ones (REFERENCE.md, Stage 3)."""

    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    activation: str = "relu"
    orthogonal_init: bool = True
    critic_layer_norm: bool = False
    policy_log_std_multiplier: float = 1.0
    policy_log_std_offset: float = -1.0
    policy_lr: float = 1e-4
    qf_lr: float = 3e-4
    alpha_lr: float | None = None
    alpha_prime_lr: float | None = None
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 5e-3
    use_automatic_entropy_tuning: bool = True
    target_entropy: float | None = None
    alpha_multiplier: float = 1.0
    log_alpha_init: float = 0.0
    backup_entropy: bool = False
    max_target_backup: bool = True
    n_actions: int = 10
    cql_alpha: float = 5.0
    cql_temp: float = 1.0
    cql_importance_sample: bool = True
    cql_lagrange: bool = False
    cql_target_action_gap: float = 0.8
    log_alpha_prime_init: float = 1.0
    cql_clip_diff_min: float = -math.inf
    cql_clip_diff_max: float = math.inf
    use_calql: bool = False
    dr3_coef: float = 0.0
    reward_scale: float = 10.0
    reward_bias: float = -5.0
    sparse_reward: bool = True
    bc_steps: int = 0  # the first bc_steps updates train the actor by BC on the data's actions (CORL's bc_steps)
    actor_bc_weight: float = 0.0  # w > 0: TD3+BC-normalised actor loss + w * MSE to the data's actions (0: plain SAC)
    actor_bc_filter: str = "none"  # "success": the BC term on transitions of successful episodes only (sparse rewards)


class CQL(OfflineAlgorithm):
    """CQL / Cal-QL agent: ``update(batch) -> metrics``, ``act(obs)``, ``state_dict()``.

    ``batch`` holds ``observations (B, S)``, ``actions (B, A)``, ``rewards (B,)``,
    ``next_observations (B, S)``, ``dones (B,)`` and, for Cal-QL, ``mc_returns (B,)``.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: CQLConfig | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg = cfg = cfg or CQLConfig()
        if cfg.n_actions < 1:
            raise ValueError(f"n_actions must be >= 1, got {cfg.n_actions}")
        if int(cfg.bc_steps) < 0:
            raise ValueError(f"bc_steps must be >= 0, got {cfg.bc_steps}")
        if not float(cfg.actor_bc_weight) >= 0.0:
            raise ValueError(f"actor_bc_weight must be >= 0, got {cfg.actor_bc_weight}")
        if cfg.actor_bc_filter not in ("none", "success"):
            raise ValueError(f"actor_bc_filter must be 'none' or 'success', got {cfg.actor_bc_filter!r}")
        if cfg.actor_bc_filter == "success" and not cfg.sparse_reward and float(cfg.actor_bc_weight) > 0:
            # the filter acts only on the BC term: with actor_bc_weight 0 it does nothing, and is not refused
            raise ValueError("actor_bc_filter='success' needs sparse_reward=true (success is read from the "
                             "Monte-Carlo return of the sparse {0, 1} reward)")
        # every step's return-to-go in an episode that never succeeds (sparse rule): (0 * scale + bias) / (1 - gamma);
        # undefined at discount 1 (the filter is refused there; without it the value is unused)
        if float(cfg.discount) >= 1.0 and cfg.actor_bc_filter == "success" and float(cfg.actor_bc_weight) > 0:
            raise ValueError(f"actor_bc_filter='success' needs discount < 1 (the never-succeeds return "
                             f"reward_bias / (1 - discount)), got discount={cfg.discount}")
        self.never_succeeds_return = never_succeeds_return(float(cfg.reward_scale), float(cfg.reward_bias),
                                                           float(cfg.discount))
        # the returns a sparse-reward episode can have: Q(s, a) outside them is logged (q_outside_returns)
        self.return_range = (sparse_return_range(float(cfg.reward_scale), float(cfg.reward_bias), float(cfg.discount))
                             if cfg.sparse_reward else None)
        self.bc_phase = int(cfg.bc_steps) > 0  # whether the coming update is a BC warm-start one (set per update)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.target_entropy = -float(act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        self.actor = TanhGaussianActor(
            obs_dim,
            act_dim,
            cfg.actor_hidden,
            activation=cfg.activation,
            orthogonal_init=cfg.orthogonal_init,
            log_std_multiplier=cfg.policy_log_std_multiplier,
            log_std_offset=cfg.policy_log_std_offset,
        ).to(self.device)
        self.critic = EnsembleCritic(
            obs_dim,
            act_dim,
            cfg.critic_hidden,
            cfg.num_critics,
            activation=cfg.activation,
            layer_norm=cfg.critic_layer_norm,
            orthogonal_init=cfg.orthogonal_init,
        ).to(self.device)
        self.target_critic = EnsembleCritic(
            obs_dim, act_dim, cfg.critic_hidden, cfg.num_critics, activation=cfg.activation,
            layer_norm=cfg.critic_layer_norm,
        ).to(self.device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(cfg.log_alpha_init, device=self.device))
        self.log_alpha_prime = nn.Parameter(torch.tensor(cfg.log_alpha_prime_init, device=self.device))
        self.log_alpha.requires_grad_(cfg.use_automatic_entropy_tuning)
        self.log_alpha_prime.requires_grad_(cfg.cql_lagrange)
        self._init_optimizer([(self.actor, cfg.policy_lr), (self.critic, cfg.qf_lr),
                              ([self.log_alpha], cfg.alpha_lr or cfg.policy_lr),
                              ([self.log_alpha_prime], cfg.alpha_prime_lr or cfg.qf_lr)])

    # ------------------------------------------------------------------ losses

    def alpha(self) -> torch.Tensor:
        """Current SAC temperature (a tensor, with gradient to ``log_alpha``)."""
        if self.cfg.use_automatic_entropy_tuning:
            return self.log_alpha.exp() * self.cfg.alpha_multiplier
        return torch.full((), self.cfg.alpha_multiplier, device=self.device)

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-parameter-group losses (critic, actor, alpha, alpha_prime) and detached metric tensors.

        Each loss has gradients only for its own parameters, so their sum can be back-propagated once.
        """
        cfg, n = self.cfg, self.cfg.n_actions
        obs, actions = batch["observations"], batch["actions"]
        rewards, next_obs, dones = batch["rewards"], batch["next_observations"], batch["dones"]
        b = obs.shape[0]
        n_target = n if cfg.max_target_backup else 1

        # one actor pass on [s; s'], one draw of every action set needed. Image agents may give the actor its own
        # encoder's features (``actor_observations``); the critic's input is detached in the actor loss so the
        # actor loss never trains the critic's encoder (a no-op for plain state vectors).
        actor_obs = batch.get("actor_observations", obs)
        actor_next_obs = batch.get("actor_next_observations", next_obs)
        mean, log_std = self.actor(torch.cat([actor_obs, actor_next_obs]))
        sampled, logp = squashed_gaussian_sample(mean, log_std, max(1 + n, n + n_target))
        pi_action, pi_logp = sampled[:b, 0], logp[:b, 0]
        cur_actions, cur_logp = sampled[:b, 1 : 1 + n].detach(), logp[:b, 1 : 1 + n].detach()
        next_actions, next_logp = sampled[b:, :n].detach(), logp[b:, :n].detach()
        tgt_actions, tgt_logp = sampled[b:, n : n + n_target].detach(), logp[b:, n : n + n_target].detach()

        alpha = self.alpha()
        zero = torch.zeros((), device=obs.device)
        bc_metrics: dict[str, torch.Tensor] = {}
        alpha_loss = zero
        if cfg.use_automatic_entropy_tuning:
            alpha_loss = entropy_temperature_loss(self.log_alpha, pi_logp, self.target_entropy)
        if self.bc_phase:  # BC warm start: the data's actions, scored by the same actor pass
            policy_loss = bc_warm_start_actor_loss(
                pi_logp, squashed_gaussian_log_prob(mean[:b], log_std[:b], actions), alpha.detach())
        else:
            q_pi = self.critic(obs.detach(), pi_action, detach_params=True)
            if cfg.actor_bc_weight > 0:
                mask = None
                if cfg.actor_bc_filter == "success":
                    require_keys(batch, ["mc_returns"], "actor_bc_filter='success'")
                    mask = successful_episode_mask(batch["mc_returns"], self.never_succeeds_return)
                policy_loss = bc_regularized_actor_loss(q_pi, pi_logp, alpha.detach(), torch.tanh(mean[:b]), actions,
                                                        float(cfg.actor_bc_weight), mask)
                if with_metrics:  # what the BC term sees: its rows' share of the batch (the filter) and their MSE
                    keep = torch.ones(b, device=obs.device) if mask is None else mask
                    row_mse = (torch.tanh(mean[:b]) - actions).square().mean(dim=-1)
                    bc_metrics = {"actor_bc_rows": keep.mean(),
                                  "actor_bc_mse": (row_mse * keep).sum() / keep.sum().clamp_min(1.0)}
            else:
                policy_loss = sac_actor_loss(q_pi, pi_logp, alpha.detach())

        with torch.no_grad():
            target_q = self.target_critic(next_obs, tgt_actions)
            next_q, next_q_logp, idx = max_target_q(target_q, tgt_logp)
            target = td_target(
                rewards, dones, next_q, cfg.discount, next_q_logp if cfg.backup_entropy else None, alpha.detach()
            )

        # one critic pass on data, uniform, current and next actions
        rand_actions = torch.empty(b, n, self.act_dim, device=obs.device).uniform_(-1.0, 1.0)
        all_actions = torch.cat([actions.unsqueeze(1), rand_actions, cur_actions, next_actions], dim=1)
        if cfg.dr3_coef > 0.0:
            q_all, feats = self.critic(obs, all_actions, return_features=True)
        else:
            q_all = self.critic(obs, all_actions)
        q_data, q_rand = q_all[..., 0], q_all[..., 1 : 1 + n]
        q_cur, q_next = q_all[..., 1 + n : 1 + 2 * n], q_all[..., 1 + 2 * n :]

        td_loss = bellman_loss(q_data, target)
        bound = None
        if cfg.use_calql:
            require_keys(batch, ["mc_returns"], "Cal-QL")
            bound = batch["mc_returns"]
        gap = cql_conservative_penalty(
            q_rand, q_cur, q_next, cur_logp, next_logp, q_data, cfg.cql_temp, bound,
            action_dim=self.act_dim,
            importance_sample=cfg.cql_importance_sample,
            clip_diff_min=cfg.cql_clip_diff_min, clip_diff_max=cfg.cql_clip_diff_max,
        )
        if cfg.cql_lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6).detach()
            cql_loss = alpha_prime * cfg.cql_alpha * (gap - cfg.cql_target_action_gap)
            alpha_prime_loss = lagrange_alpha_prime_loss(
                self.log_alpha_prime, gap, cfg.cql_alpha, cfg.cql_target_action_gap
            )
        else:
            cql_loss = cfg.cql_alpha * gap
            alpha_prime_loss = zero
        critic_loss = (td_loss + cql_loss).sum()
        dr3 = zero
        if cfg.dr3_coef > 0.0:
            chosen = tgt_actions.gather(1, idx.view(b, 1, 1).expand(b, 1, self.act_dim)).squeeze(1)
            _, feats_next = self.critic(next_obs, chosen, return_features=True)
            dr3 = dr3_penalty(feats[:, :, 0], feats_next, cfg.dr3_coef).sum()
            critic_loss = critic_loss + dr3

        losses = {"critic": critic_loss, "actor": policy_loss, "alpha": alpha_loss, "alpha_prime": alpha_prime_loss}
        metrics: dict[str, torch.Tensor] = {}
        if with_metrics:
            metrics = {
                "critic_loss": critic_loss,
                "bellman_loss": td_loss.mean(),
                "cql_gap": gap.mean(),
                "cql_loss": cql_loss.mean(),
                "q_data": q_data.mean(),
                "q_rand": q_rand.mean(),
                "q_cur": q_cur.mean(),
                "q_next": q_next.mean(),
                "target_q": target.mean(),
                "policy_loss": policy_loss,
                "entropy": -pi_logp.mean(),
                "alpha": alpha,
                "alpha_loss": alpha_loss,
                "alpha_prime": self.log_alpha_prime.exp(),
                "dr3": dr3,
                **bc_metrics,
            }
            if "mc_returns" in batch:
                mc = batch["mc_returns"].view(1, -1, 1)
                metrics["mc_return"] = batch["mc_returns"].mean()
                metrics["bound_rate_cur"] = (q_cur < mc).float().mean()
                metrics["bound_rate_next"] = (q_next < mc).float().mean()
            if self.return_range is not None:  # extrapolated values: the share of Q(s, a_data) no return can have
                low, high = self.return_range
                metrics["q_data_min"] = q_data.min()
                metrics["q_outside_returns"] = ((q_data < low) | (q_data > high)).float().mean()
            metrics = {k: v.detach() for k, v in metrics.items()}
        return losses, metrics

    def _losses(self, batch: Mapping[str, torch.Tensor], with_metrics: bool):
        # the phase is a bool read by compute_losses (a compiled compute_losses then specialises on two values, not
        # on every update count)
        self.bc_phase = self.num_updates < int(self.cfg.bc_steps)
        return super()._losses(batch, with_metrics)

    def eager_updates(self) -> int:
        """Updates before which a CUDA-graphed update must not capture (the BC warm start runs other kernels)."""
        return int(self.cfg.bc_steps)

    # ------------------------------------------------------------------ checkpoint

    STATE_MODULES = ("actor", "critic", "target_critic")
    actor_reads_next_obs = True  # policy samples at s' for the backup and the CQL term (detached)

    @property
    def next_obs_needs_grad(self) -> bool:
        """Only DR3's critic features phi(s', a') carry a gradient through s'."""
        return float(self.cfg.dr3_coef) > 0.0

    STATE_TENSORS = ("log_alpha", "log_alpha_prime")

    def algo_name(self) -> str:
        return "calql" if self.cfg.use_calql else "cql"
