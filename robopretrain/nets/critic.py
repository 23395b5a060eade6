"""Ensemble of Q-functions evaluated in one batched pass.

REFERENCE.md, Stage 2/3: CQL and Cal-QL use 2 critics (min for the target) scored on data, uniform and
policy-sampled actions; DR3 needs the penultimate critic features phi(s, a). Instead of a Python loop over
critics, every layer is a :class:`VectorizedLinear` whose weight is ``(E, in, out)`` and whose forward is
one ``torch.baddbmm`` over the ensemble dimension.

The critic takes states ``(B, S)`` and either actions ``(B, A)`` (returns ``(E, B)``) or a set of ``n``
actions per state ``(B, n, A)`` (returns ``(E, B, n)``). The first layer acts on the concatenation
``[s, a]``; it is evaluated as ``s @ W_s + a @ W_a`` so the state half is computed once per state rather
than once per (state, action) pair -- the same function, fewer FLOPs when ``n`` is large.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robopretrain.nets.mlp import FINAL_GAIN, HIDDEN_GAIN, init_linear_, make_activation


class VectorizedLinear(nn.Module):
    """``E`` independent linear layers: ``x (E, M, in) -> (E, M, out)`` in one ``baddbmm``."""

    def __init__(self, in_features: int, out_features: int, ensemble_size: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.ensemble_size = ensemble_size
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self, *, orthogonal: bool = False, gain: float = 1.0, final: bool = False) -> None:
        """Initialise each member like ``nn.Linear`` (or orthogonally with ``gain``)."""
        init_linear_(self.weight, self.bias, orthogonal=orthogonal, gain=gain, final=final)

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        weight, bias = (self.weight.detach(), self.bias.detach()) if detach_params else (self.weight, self.bias)
        return torch.baddbmm(bias, x, weight)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, ensemble={self.ensemble_size}"


class VectorizedLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate affine transform per ensemble member."""

    def __init__(self, features: int, ensemble_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        weight, bias = (self.weight.detach(), self.bias.detach()) if detach_params else (self.weight, self.bias)
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=self.eps), weight)


class EnsembleCritic(nn.Module):
    """``E`` Q-networks ``Q_e(s, a)`` with hidden sizes ``hidden``, evaluated together."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        num_critics: int = 2,
        *,
        activation: str = "relu",
        layer_norm: bool = False,
        orthogonal_init: bool = False,
        final_gain: float = FINAL_GAIN,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("EnsembleCritic needs at least one hidden layer")
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.num_critics = num_critics
        sizes = [obs_dim + act_dim, *hidden]
        self.hidden = nn.ModuleList(VectorizedLinear(i, o, num_critics) for i, o in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(
            VectorizedLayerNorm(o, num_critics) if layer_norm else nn.Identity() for o in hidden
        )
        self.head = VectorizedLinear(hidden[-1], 1, num_critics)
        self.activation = make_activation(activation)
        for layer in self.hidden:
            layer.reset_parameters(orthogonal=orthogonal_init, gain=HIDDEN_GAIN)
        self.head.reset_parameters(orthogonal=orthogonal_init, gain=final_gain, final=True)

    def _first_layer(self, obs: torch.Tensor, actions: torch.Tensor, detach_params: bool) -> torch.Tensor:
        """``[s, a] @ W + b`` for ``obs (B, S)`` and ``actions (B, n, A)`` -> ``(E, B * n, H)``."""
        layer = self.hidden[0]
        weight, bias = (layer.weight.detach(), layer.bias.detach()) if detach_params else (layer.weight, layer.bias)
        batch, n, act_dim = actions.shape
        state_part = torch.baddbmm(bias, obs.unsqueeze(0).expand(self.num_critics, -1, -1), weight[:, : self.obs_dim])
        action_part = torch.matmul(actions.reshape(batch * n, act_dim), weight[:, self.obs_dim :])
        out = action_part.view(self.num_critics, batch, n, -1) + state_part.unsqueeze(2)
        return out.view(self.num_critics, batch * n, -1)

    def forward(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        *,
        return_features: bool = False,
        detach_params: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Q-values ``(E, B)`` for actions ``(B, A)`` or ``(E, B, n)`` for actions ``(B, n, A)``.

        ``return_features`` also returns the penultimate activations ``(E, B[, n], H)`` (for DR3).
        ``detach_params`` evaluates with detached weights, so gradients reach the inputs (actions)
        but not the critic parameters (used for the actor loss).
        """
        if obs.dim() != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"critic expects obs (B, {self.obs_dim}), got {tuple(obs.shape)}")
        single = actions.dim() == 2
        acts = actions.unsqueeze(1) if single else actions
        if acts.dim() != 3 or acts.shape[0] != obs.shape[0] or acts.shape[-1] != self.act_dim:
            raise ValueError(
                f"critic expects actions (B, {self.act_dim}) or (B, n, {self.act_dim}) with B={obs.shape[0]}, "
                f"got {tuple(actions.shape)}"
            )
        batch, n = acts.shape[:2]
        h = self._first_layer(obs, acts, detach_params)
        for i, (layer, norm) in enumerate(zip(self.hidden, self.norms)):
            if i > 0:
                h = layer(h, detach_params)
            h = self.activation(norm(h, detach_params) if isinstance(norm, VectorizedLayerNorm) else h)
        q = self.head(h, detach_params).view(self.num_critics, batch, n)
        if single:
            q = q.squeeze(-1)
        if not return_features:
            return q
        feats = h.view(self.num_critics, batch, n, -1)
        return q, (feats.squeeze(2) if single else feats)
