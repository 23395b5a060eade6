"""POR (Xu, Zhan, Yin & Zhan 2022, "A Policy-Guided Imitation Approach for Offline Reinforcement Learning").

Offline RL without a Q-function: a state value learned in-sample, a *guide* policy that proposes the next state to
reach, and an *execute* policy (inverse dynamics) that finds the action reaching it. The math is the authors' residual
variant POR-r (github ryanxhr/POR, ``por.py`` ``por_residual_update``; REFERENCE.md's offline family):

* value (twin ``V_1, V_2``): expectile regression toward ``y = r + gamma * (1 - done) * V'(s')``, ``V' = min_e
  V'_e`` the Polyak-averaged target twin: ``mean_e mean_b |tau - 1(u < 0)| * u^2`` with ``u = y - V_e(s)``,
  expectile ``tau = 0.9``;
* guide ``g(s' | s)``: a Gaussian over next states (mean ``MLP(s)``, unbounded; one learned log-std vector clamped to
  ``[-5, 2]``) fit by advantage-weighted regression ``-mean_b [w * log g(s' | s)]``, ``w = min(exp(alpha * (y -
  min_e V_e(s))), 100)`` (no gradient through ``w``);
* execute ``pi(a | s, s')``: a Gaussian over actions on the concatenation ``[s, s']``, fit by likelihood of the data's
  actions ``-mean_b log pi(a | s, s')`` (plain inverse dynamics: every transition counts, good or bad);
* target value by Polyak averaging with rate ``0.005`` after every update (the authors' ``beta``);
* acting: ``a = pi(s, g(s))``, the means when deterministic, samples of both otherwise.

Defaults are the authors' AntMaze (sparse-reward) settings: expectile 0.9, ``alpha = 10`` on unit rewards, batch 256,
value and guide ``2 x 256``, execute ``2 x 1024``, Adam lr ``1e-4`` for the value and ``1e-3`` for the guide and
execute policies (the authors' AntMaze-umaze and MuJoCo policy rate; their AntMaze medium/large runs use ``1e-4``,
which does not imitate clean demos here: see the clean-data check below). Rewards use the
toolkit's ``x10 - 5`` transform (as IQL / CQL here; the authors use ``r - 1``), so ``alpha = 1`` weighs advantages as
the authors' 10 does on unit rewards.

Choices: one backward pass for the three losses at the same parameters (the authors step the value first, so their
guide weights see the value after its step; the IQL port here does the same); no cosine learning-rate schedule on the
two policies (the authors anneal over the full run; stage 2's budget is the caller's); the execute policy's mean is
``tanh``-bounded (:class:`~robopretrain.nets.actor.GaussianActor`, as the toolkit's other likelihood-trained
policies; the authors' is unbounded; actions live in ``[-1, 1]``). The authors' other variant POR-q (a guide trained
by maximising V under a pretrained behaviour guide) is not built.

What the guide predicts (one observation path, :mod:`robopretrain.agent`): the next state *as the value sees it*, the
critic encoder's features ``phi_c(s')``. With states these are the normalised low-dim vector (and task one-hot), the
same for every encoder, so POR is the paper's method. With cameras ``phi_c`` is the image encoder trained by the value
loss only (``observations`` in the batch); the guide and execute policies read the actor encoder's features of ``s``
(``actor_observations``, trained by the guide and execute losses) and the guide's target and the execute policy's
second input are ``phi_c(s')`` *detached* (``next_observations``; a moving target as the value trains ``phi_c``, never
a loss that reshapes ``phi_c`` to be easy to predict). Acting needs only the actor encoder: ``a = pi(phi_a(s),
g(phi_a(s)))``, where ``g`` outputs a point in ``phi_c``'s space, the space ``pi`` saw ``s'`` in.

Clean-data check (Reach, 50 clean expert demos, privileged state, 50 episodes): with policy rates ``1e-4`` (the
protocol's run, ``benchmarks/results/recipe_offline_family.json``, seed 0) 0.52 at 1000 and 0.68 at 2500 updates,
below the 0.9 criterion; with ``guide_lr = actor_lr = 1e-3`` (``benchmarks/results/recipe_explore.json``,
exploratory, after that run) 0.72 / 0.78 / 0.72 at 1000 and 0.94 / 1.00 / 0.92 at 2500 updates on seeds 0 / 1 / 2,
which made ``1e-3`` the default.

Agreement with the authors' code (ryanxhr/POR at e692bb3; ``python benchmarks/corl_agreement/por.py``): its ``TwinV``,
``GaussianPolicy`` (guide; execute with our ``tanh`` appended to its mean network) and one
``POR.por_residual_update`` on our weights (target twin perturbed), float64, batch 64, 17-D states, 4-D actions,
rewards ``3 N(0, 1)``, ``alpha = 1`` (8% of the guide weights clip at 100), optimisers replaced by gradient recorders:
max |difference| of the losses value 3.5e-8 (loss 4.41), guide 1.4e-7 (326), execute 0.0 (4.84); gradients value
5.4e-8, guide 1.0e-8, execute 1.7e-16; target value after the Polyak step 5.6e-17. The 1e-8-relative residue is the
authors' two float32 casts (the expectile weight ``(u < 0).float()`` and ``terminals.float()``, which rounds the
discount to float32): with those two made float64 (in memory, by the same script) the losses differ by 0.0, 5.7e-14,
0.0 and the gradients by 0.0, 1.8e-14, 1.7e-16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from robopretrain.algos.base import OfflineAlgorithm, soft_update_
from robopretrain.algos.iql import expectile_loss
from robopretrain.nets.actor import GaussianActor
from robopretrain.nets.mlp import build_mlp

_LOG_SQRT_2PI = 0.5 * float(np.log(2.0 * np.pi))

# --------------------------------------------------------------------------- loss functions


def por_value_target(rewards: torch.Tensor, dones: torch.Tensor, next_v: torch.Tensor, discount: float) -> torch.Tensor:
    """``y = r + gamma * (1 - done) * V'(s')`` ``(B,)``, detached; ``next_v``: ``min_e V'_e(s')`` of the target
    twin."""
    return (rewards + discount * (1.0 - dones) * next_v).detach()


def por_value_loss(v: torch.Tensor, target: torch.Tensor, expectile: float) -> torch.Tensor:
    """``mean_e mean_b |tau - 1(u < 0)| u^2``, ``u = y - V_e(s)``, for ``v (E, B)`` and ``target (B,)``."""
    return torch.stack([expectile_loss(target.detach() - v_e, expectile) for v_e in v]).mean()


def por_guide_weights(target: torch.Tensor, v: torch.Tensor, alpha: float, max_weight: float = 100.0) -> torch.Tensor:
    """``min(exp(alpha * (y - V(s))), max_weight)`` ``(B,)``, detached; ``v`` is ``min_e V_e(s)``."""
    return torch.exp(alpha * (target - v).detach()).clamp(max=max_weight)


def por_guide_loss(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Advantage-weighted regression of next states: ``-mean_b [w * log g(s' | s)]``."""
    return -(weights.detach() * log_prob).mean()


def por_execute_loss(log_prob: torch.Tensor) -> torch.Tensor:
    """Inverse dynamics by likelihood: ``-mean_b log pi(a | s, s')``."""
    return -log_prob.mean()


# --------------------------------------------------------------------------- networks


class TwinValue(nn.Module):
    """``E`` independent MLPs ``s -> V_e(s)``; ``forward`` gives ``(E, B)`` (the authors' ``TwinV`` for ``E = 2``)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int], num_values: int = 2, *, activation: str = "relu",
                 layer_norm: bool = False, orthogonal_init: bool = False) -> None:
        super().__init__()
        if num_values < 1:
            raise ValueError(f"num_values must be >= 1, got {num_values}")
        self.nets = nn.ModuleList(build_mlp(obs_dim, 1, hidden, activation=activation, layer_norm=layer_norm,
                                            orthogonal_init=orthogonal_init) for _ in range(num_values))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(obs).squeeze(-1) for net in self.nets])


class NextStateGuide(nn.Module):
    """``s -> N(MLP(s), diag(std^2))`` over next states (``obs_dim``), with one learned log-std vector clamped to
    ``[log_std_min, log_std_max]`` and an unbounded mean (states are not bounded); the authors' ``GaussianPolicy``."""

    def __init__(self, obs_dim: int, hidden: Sequence[int], *, activation: str = "relu", orthogonal_init: bool = False,
                 log_std_min: float = -5.0, log_std_max: float = 2.0) -> None:
        super().__init__()
        if log_std_min >= log_std_max:
            raise ValueError(f"log_std_min ({log_std_min}) must be below log_std_max ({log_std_max})")
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.net = build_mlp(obs_dim, obs_dim, hidden, activation=activation, orthogonal_init=orthogonal_init)
        self.log_std = nn.Parameter(torch.zeros(obs_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(B, S)`` and clamped log-std ``(B, S)``."""
        mean = self.net(obs)
        return mean, self.log_std.clamp(self.log_std_min, self.log_std_max).expand_as(mean)

    def log_prob(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """``log g(s' | s)`` ``(B,)``: the diagonal Gaussian density summed over the state's dimensions."""
        mean, log_std = self(obs)
        z = (next_obs - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """A proposed next state ``(B, S)``: the mean, or one draw."""
        mean, log_std = self(obs)
        return mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)


# --------------------------------------------------------------------------- agent


@dataclass
class PORConfig:
    """POR-r hyper-parameters: the authors' AntMaze settings, ``alpha`` in the toolkit's reward units."""

    value_hidden: tuple[int, ...] = (256, 256)
    guide_hidden: tuple[int, ...] = (256, 256)
    actor_hidden: tuple[int, ...] = (1024, 1024)  # the execute policy (the authors' 2 x 1024)
    num_values: int = 2  # twin V, the min in targets and weights
    activation: str = "relu"
    value_layer_norm: bool = False  # the authors use it for MuJoCo locomotion, not AntMaze
    orthogonal_init: bool = False
    vf_lr: float = 1e-4
    guide_lr: float = 1e-3
    actor_lr: float = 1e-3
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 5e-3  # Polyak rate of the target value (the authors' beta)
    expectile: float = 0.9
    alpha: float = 1.0  # inverse temperature of the guide's AWR; with rewards x10 the authors' 10 on unit rewards
    max_weight: float = 100.0
    log_std_min: float = -5.0  # the authors' GaussianPolicy clamp, guide and execute
    log_std_max: float = 2.0
    reward_scale: float = 10.0  # sparse {0, 1} -> {-5, +5}, the Cal-QL transform, as the other agents
    reward_bias: float = -5.0
    sparse_reward: bool = True


class POR(OfflineAlgorithm):
    """POR agent: ``update(batch) -> metrics``, ``act(obs)``, ``state_dict()``; no Q-function.

    ``batch``: ``observations``, ``actions``, ``rewards``, ``next_observations``, ``dones``; image agents add the actor
    encoder's features of ``s`` as ``actor_observations`` (the guide's and execute policy's input).
    """

    name = "por"
    STATE_MODULES = ("actor", "guide", "value", "target_value")
    actor_reads_next_obs = False  # the policies read s from the actor encoder; s' is the value's features
    next_obs_needs_grad = False  # s' enters the value target and, detached, the guide's target and pi's input

    def __init__(self, obs_dim: int, act_dim: int, cfg: PORConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.cfg = cfg = cfg or PORConfig()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        kw = {"activation": cfg.activation, "orthogonal_init": cfg.orthogonal_init}
        self.value = TwinValue(obs_dim, cfg.value_hidden, cfg.num_values, layer_norm=cfg.value_layer_norm,
                               **kw).to(self.device)
        self.target_value = TwinValue(obs_dim, cfg.value_hidden, cfg.num_values, layer_norm=cfg.value_layer_norm,
                                      **kw).to(self.device)
        self.target_value.load_state_dict(self.value.state_dict())
        self.target_value.requires_grad_(False)
        self.guide = NextStateGuide(obs_dim, cfg.guide_hidden, log_std_min=cfg.log_std_min,
                                    log_std_max=cfg.log_std_max, **kw).to(self.device)
        self.actor = GaussianActor(2 * obs_dim, act_dim, cfg.actor_hidden, log_std_min=cfg.log_std_min,
                                   log_std_max=cfg.log_std_max, **kw).to(self.device)
        self._init_optimizer([(self.value, cfg.vf_lr), (self.guide, cfg.guide_lr), (self.actor, cfg.actor_lr)])

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Value, guide and execute losses (each with gradients for its own network only) and detached metrics."""
        cfg = self.cfg
        obs, next_obs = batch["observations"], batch["next_observations"].detach()
        policy_obs = batch.get("actor_observations", obs)
        with torch.no_grad():
            next_v = self.target_value(next_obs).min(dim=0).values
            target = por_value_target(batch["rewards"], batch["dones"], next_v, cfg.discount)
        v = self.value(obs)
        value_loss = por_value_loss(v, target, cfg.expectile)
        weights = por_guide_weights(target, v.detach().min(dim=0).values, cfg.alpha, cfg.max_weight)
        guide_log_prob = self.guide.log_prob(policy_obs, next_obs)
        guide_loss = por_guide_loss(guide_log_prob, weights)
        log_prob = self.actor.log_prob(torch.cat([policy_obs, next_obs], dim=-1), batch["actions"])
        actor_loss = por_execute_loss(log_prob)
        losses = {"value": value_loss, "guide": guide_loss, "actor": actor_loss}
        metrics: dict[str, torch.Tensor] = {}
        if with_metrics:
            with torch.no_grad():
                guide_error = (self.guide.sample(policy_obs, deterministic=True) - next_obs).square().sum(-1).mean()
            metrics = {"value_loss": value_loss, "guide_loss": guide_loss, "actor_loss": actor_loss, "v": v.mean(),
                       "target_v": target.mean(), "advantage": (target - v.min(dim=0).values).mean(),
                       "weight": weights.mean(), "weight_clipped": (weights >= cfg.max_weight).float().mean(),
                       "guide_log_prob": guide_log_prob.mean(), "guide_sq_error": guide_error,
                       "log_prob": log_prob.mean()}
            metrics = {k: t.detach() for k, t in metrics.items()}
        return losses, metrics

    def update_targets(self) -> None:
        """Polyak-average the target value twin toward the value (every update)."""
        soft_update_(self.target_value, self.value, self.cfg.tau)

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """``a = pi(s, g(s))`` ``(A,)`` or ``(B, A)`` in ``[-1, 1]`` for features ``(S,)`` or ``(B, S)``: the guide's
        and the execute policy's means when ``deterministic``, a draw of each otherwise."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x
        goal = self.guide.sample(x, deterministic=deterministic)
        actions = self.actor.act(torch.cat([x, goal], dim=-1), deterministic)
        return actions[0] if single else actions
