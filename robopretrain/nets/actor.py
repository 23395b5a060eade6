"""Policies: the tanh-squashed Gaussian of SAC (CQL / Cal-QL) and the tanh-mean Gaussian of BC / AWR (IQL).

:class:`TanhGaussianActor` (trained by the SAC actor loss, never by the likelihood of data actions) follows the Cal-QL/JaxCQL ``TanhGaussianPolicy`` (REFERENCE.md, Stage 3: CQL(H) on SAC): an MLP maps
the state to ``2 * act_dim`` numbers, split into the pre-tanh mean and log-std; the log-std is
``log_std_multiplier * raw + log_std_offset`` (1.0 and -1.0 as in the Cal-QL code) clamped to
``[log_std_min, log_std_max] = [-20, 2]``. Actions are ``tanh(u)`` with ``u ~ N(mean, std)``
(reparameterised), and the change of variables is computed stably as

    log pi(a|s) = sum_i [ log N(u_i; mean_i, std_i) - 2 (log 2 - u_i - softplus(-2 u_i)) ]

since ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``. ``sample(obs, n)`` draws ``n`` actions per
state in one pass and returns ``(B, n, A)`` actions with ``(B, n)`` log-probs.

:class:`GaussianActor` is the policy of the IQL authors' code (``NormalTanhPolicy`` with
``tanh_squash_distribution=False, state_dependent_std=False``; CORL's ``iql.py`` ``GaussianPolicy``): a Gaussian
*in action space* whose mean is ``tanh(MLP(s))`` and whose log-std is one learned vector, clamped to ``[-5, 2]``.
Policies trained by the likelihood of data actions (BC, IQL's AWR) use it, because the tanh-squashed density is
ill-conditioned for data at the bounds: scripted experts (and most real data: grippers at +-1) saturate actions at
+-1, where ``atanh`` maps ``1 - 1e-4`` to 4.95 and ``0.99`` to 2.65, and a state-dependent std lets the fit give up
on the hard, unsaturated steps (large std) while driving the NLL down on the saturated ones (tiny std). Measured on
50 clean Reach demos with normalised inputs, 3000 updates: the tanh-squashed NLL imitates 0.03-0.33 of the episodes,
this Gaussian 0.97-1.00 (``tests/test_learning.py`` pins a small version).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robopretrain.nets.mlp import FINAL_GAIN, build_mlp

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def tanh_log_det_jacobian(u: torch.Tensor) -> torch.Tensor:
    """``log(1 - tanh(u)^2)`` per element, computed without cancellation for large ``|u|``."""
    return 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))


def squashed_gaussian_sample(
    mean: torch.Tensor, log_std: torch.Tensor, n: int | None = None, deterministic: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``tanh(mean + std * eps)`` and its log-density from given distribution parameters.

    ``mean``/``log_std`` are ``(B, A)``. With ``n=None`` returns ``(B, A)`` actions and ``(B,)``
    log-probs; with an int ``n`` returns ``(B, n, A)`` and ``(B, n)``. ``deterministic`` uses
    ``eps = 0`` (the mode of the pre-tanh Gaussian) and still returns its log-density.
    """
    if n is not None:
        mean = mean.unsqueeze(-2).expand(*mean.shape[:-1], n, mean.shape[-1])
        log_std = log_std.unsqueeze(-2).expand_as(mean)
    if deterministic:
        eps = torch.zeros_like(mean)
    else:
        eps = torch.randn_like(mean)
    u = mean + log_std.exp() * eps
    log_prob = (-0.5 * eps.square() - log_std - _LOG_SQRT_2PI - tanh_log_det_jacobian(u)).sum(-1)
    return torch.tanh(u), log_prob


def squashed_gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor,
                               clip_eps: float = 1e-4) -> torch.Tensor:
    """Log-density of given actions under ``tanh(N(mean, exp(log_std)^2))``: ``(B,)`` for actions ``(B, A)``,
    ``(B, n)`` for ``(B, n, A)`` (``mean`` / ``log_std`` ``(B, A)``). Actions are clipped to
    ``[-1 + clip_eps, 1 - clip_eps]`` before ``atanh`` so data actions at the bounds stay finite."""
    if actions.dim() == mean.dim() + 1:
        mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
    u = torch.atanh(actions.clamp(-1.0 + clip_eps, 1.0 - clip_eps))
    z = (u - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI - tanh_log_det_jacobian(u)).sum(-1)


class _StochasticPolicy(nn.Module):
    """Sizes, the log-std bounds and ``act`` shared by the policies; subclasses define ``sample``."""

    def __init__(self, obs_dim: int, act_dim: int, log_std_min: float, log_std_max: float) -> None:
        super().__init__()
        if log_std_min >= log_std_max:
            raise ValueError(f"log_std_min ({log_std_min}) must be below log_std_max ({log_std_max})")
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """Actions for a single state ``(S,)`` or a batch ``(B, S)`` as a float32 numpy array."""
        device = next(self.parameters()).device
        x = torch.as_tensor(obs, dtype=torch.float32, device=device)
        single = x.dim() == 1
        actions, _ = self.sample(x.unsqueeze(0) if single else x, deterministic=deterministic)
        out = actions[0] if single else actions
        return out.cpu().numpy()


class TanhGaussianActor(_StochasticPolicy):
    """State -> tanh-Gaussian policy over actions in ``(-1, 1)^act_dim``."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        activation: str = "relu",
        layer_norm: bool = False,
        orthogonal_init: bool = False,
        final_gain: float = FINAL_GAIN,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        log_std_multiplier: float = 1.0,
        log_std_offset: float = -1.0,
    ) -> None:
        super().__init__(obs_dim, act_dim, log_std_min, log_std_max)
        self.log_std_multiplier = log_std_multiplier
        self.log_std_offset = log_std_offset
        self.net = build_mlp(
            obs_dim,
            2 * act_dim,
            hidden,
            activation=activation,
            layer_norm=layer_norm,
            orthogonal_init=orthogonal_init,
            final_gain=final_gain,
        )

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the pre-tanh ``mean`` and clamped ``log_std``, each ``(B, A)``."""
        mean, raw_log_std = self.net(obs).chunk(2, dim=-1)
        log_std = self.log_std_multiplier * raw_log_std + self.log_std_offset
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(
        self, obs: torch.Tensor, n: int | None = None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised actions and log-probs: ``(B, A), (B,)`` or ``(B, n, A), (B, n)``."""
        mean, log_std = self(obs)
        return squashed_gaussian_sample(mean, log_std, n, deterministic)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, clip_eps: float = 1e-4) -> torch.Tensor:
        """Log-density of given actions ``(B, A)`` or ``(B, n, A)``; actions are clipped to
        ``[-1 + clip_eps, 1 - clip_eps]`` before ``atanh`` so data actions at the bounds stay finite."""
        mean, log_std = self(obs)
        return squashed_gaussian_log_prob(mean, log_std, actions, clip_eps)



class GaussianActor(_StochasticPolicy):
    """State -> Gaussian over actions with mean ``tanh(MLP(s))`` and a state-independent learned std.

    ``log_prob(obs, actions)`` is the diagonal Gaussian density of the (unclipped) data actions, ``(B,)`` or
    ``(B, n)``; ``sample`` draws ``mean + std * eps`` clipped to ``[-1, 1]`` (the IQL authors' ``sample_actions``
    clips the same way); ``act(deterministic=True)`` returns the mean. Source: IQL (Kostrikov et al. 2021), the
    authors' ``learner.py`` (``log_std_min=-5``, ``log_stds`` initialised to 0) and CORL ``iql.py``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        activation: str = "relu",
        layer_norm: bool = False,
        orthogonal_init: bool = False,
        final_gain: float = FINAL_GAIN,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__(obs_dim, act_dim, log_std_min, log_std_max)
        self.net = build_mlp(obs_dim, act_dim, hidden, activation=activation, layer_norm=layer_norm,
                             orthogonal_init=orthogonal_init, final_gain=final_gain)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the action-space ``mean = tanh(MLP(s))`` ``(B, A)`` and the clamped ``log_std`` ``(B, A)``."""
        mean = torch.tanh(self.net(obs))
        return mean, self.log_std.clamp(self.log_std_min, self.log_std_max).expand_as(mean)

    def sample(
        self, obs: torch.Tensor, n: int | None = None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions clipped to ``[-1, 1]`` and the Gaussian log-density of the unclipped draw."""
        mean, log_std = self(obs)
        if n is not None:
            mean = mean.unsqueeze(-2).expand(*mean.shape[:-1], n, mean.shape[-1])
            log_std = log_std.unsqueeze(-2).expand_as(mean)
        eps = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
        log_prob = (-0.5 * eps.square() - log_std - _LOG_SQRT_2PI).sum(-1)
        return (mean + log_std.exp() * eps).clamp(-1.0, 1.0), log_prob

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, clip_eps: float = 0.0) -> torch.Tensor:
        """Log-density of data actions ``(B, A)`` or ``(B, n, A)``; ``clip_eps`` is accepted for API parity and
        ignored (the density is finite at the bounds)."""
        mean, log_std = self(obs)
        if actions.dim() == mean.dim() + 1:
            mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)


class DeterministicActor(nn.Module):
    """State -> action ``tanh(MLP(s))`` in ``(-1, 1)^act_dim``: the TD3 actor (TD3+BC, ReBRAC).

    ``act(deterministic=False)`` adds TD3's Gaussian exploration noise ``N(0, expl_noise^2)`` and clips to
    ``[-1, 1]`` (Fujimoto et al. 2018, ``expl_noise = 0.1``; used by stage 3's collection). Source: the TD3+BC
    authors' ``Actor`` (CORL ``td3_bc.py``: Linear-ReLU x2, Linear, tanh; ``max_action = 1`` here) and CORL
    ``rebrac.py`` ``DetActor`` (3 hidden layers).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        activation: str = "relu",
        orthogonal_init: bool = False,
        final_gain: float = FINAL_GAIN,
        expl_noise: float = 0.1,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.expl_noise = obs_dim, act_dim, float(expl_noise)
        self.net = build_mlp(obs_dim, act_dim, hidden, activation=activation, orthogonal_init=orthogonal_init,
                             final_gain=final_gain)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions ``(B, A)`` for states ``(B, S)``."""
        return torch.tanh(self.net(obs))

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """Actions for a single state ``(S,)`` or a batch ``(B, S)`` as a float32 numpy array."""
        device = next(self.parameters()).device
        x = torch.as_tensor(obs, dtype=torch.float32, device=device)
        single = x.dim() == 1
        actions = self(x.unsqueeze(0) if single else x)
        if not deterministic and self.expl_noise > 0.0:
            actions = (actions + self.expl_noise * torch.randn_like(actions)).clamp(-1.0, 1.0)
        out = actions[0] if single else actions
        return out.cpu().numpy()
