"""Ensemble of Q-functions evaluated in one batched pass.

REFERENCE.md, Stage 2/3: CQL and Cal-QL use 2 critics (min for the target) scored on data, uniform and
policy-sampled actions; DR3 needs the penultimate critic features phi(s, a). Instead of a Python loop over
critics, every layer is a :class:`VectorizedLinear` whose weight is ``(E, in, out)`` and whose forward is
one ``torch.baddbmm`` over the ensemble dimension.

The critic takes states ``(B, S)`` and either actions ``(B, A)`` (returns ``(E, B)``) or a set of ``n``
actions per state ``(B, n, A)`` (returns ``(E, B, n)``). The first layer acts on the concatenation
``[s, a]``; it is evaluated as ``s @ W_s + a @ W_a`` so the state half is computed once per state rather
than once per (state, action) pair -- the same function, fewer FLOPs when ``n`` is large.

CPU fast paths (same math), for ReLU critics without LayerNorm, fp32, outside ``torch.compile``; off on
CUDA; ``fast_path=False`` turns them off. Three kernel paths (:mod:`robopretrain.nets.ensemble_kernels`):
``"mm"`` (per member, chunks of rows kept in cache, 2-D GEMMs into reused buffers), ``"bmm"`` (batched GEMMs
over the members into reused buffers) and ``"onednn"`` (oneDNN inner products with fused bias and ReLU). With
``kernel = "auto"`` (the default) the path is the one measured fastest on this machine for the pass's size
(:mod:`robopretrain.nets.kernels`; cached per CPU model, torch version and thread count); setting
``critic.kernel`` (or ``ROBOPRETRAIN_KERNEL``) forces one. The oneDNN path allocates fresh activations and
calls :func:`robopretrain.nets.mlp.retain_freed_memory` once per process (a glibc ``mallopt``) so that freed
activations are reused instead of being page-faulted in anew every update. Passes with detached parameters
(the actor loss) use the generic path unless oneDNN is chosen, so they never share the buffered paths' buffers
with a pass of the same size in the same graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robopretrain.nets.ensemble_kernels import (
    CHUNK_ROWS,
    ChunkedReluEnsembleMLP,
    DnnReluEnsembleMLP,
    ReluEnsembleMLP,
    Workspace,
    chunked_forward,
    dnn_member_forward,
    is_compiling,
    relu_mlp_forward,
    state_action_input,
)
from robopretrain.nets.kernels import critic_kernel
from robopretrain.nets.mlp import (
    FINAL_GAIN,
    HIDDEN_GAIN,
    init_linear_,
    make_activation,
    retain_freed_memory_once,
    use_onednn,
)


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
        norm_after_activation: bool = False,
        orthogonal_init: bool = False,
        final_gain: float = FINAL_GAIN,
        fast_path: bool = True,
    ) -> None:
        """``norm_after_activation`` places each LayerNorm after the activation (``Linear -> ReLU -> LayerNorm``,
        ReBRAC's critic) instead of before it (``Linear -> LayerNorm -> ReLU``)."""
        super().__init__()
        self.norm_after_activation = norm_after_activation
        if not hidden:
            raise ValueError("EnsembleCritic needs at least one hidden layer")
        # the buffer-reusing CPU path exists for ReLU without LayerNorm (see the module docstring)
        self.fast_path = fast_path and activation.lower() == "relu" and not layer_norm
        # within the fast path: "auto" (measured per machine, see nets/kernels.py), or "mm", "bmm", "onednn"
        self.kernel = "auto"
        self._workspace = Workspace()
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
        if self._use_fast_path(obs, batch * n, detach_params):
            q, h = self._fast_forward(obs, acts, return_features, detach_params)
        else:
            q, h = self._generic_forward(obs, acts, detach_params)
        q = q.view(self.num_critics, batch, n)
        if single:
            q = q.squeeze(-1)
        if not return_features:
            return q
        feats = h.view(self.num_critics, batch, n, -1)
        return q, (feats.squeeze(2) if single else feats)

    @property
    def use_onednn(self) -> bool:
        """Compatibility switch: True selects the oneDNN kernel path, False the buffer-reusing BLAS path "mm"."""
        return self.kernel == "onednn"

    @use_onednn.setter
    def use_onednn(self, value: bool) -> None:
        self.kernel = "onednn" if value else "mm"

    def _kernel_for(self, obs: torch.Tensor, rows: int, grad: bool) -> str:
        """The kernel path for a fast pass over ``rows`` (state, action) rows: ``self.kernel`` or the measured one."""
        kernel = self.kernel if self.kernel != "auto" else critic_kernel(self, rows, grad)
        return "mm" if kernel == "onednn" and not use_onednn(obs) else kernel

    def _use_fast_path(self, obs: torch.Tensor, rows: int, detach_params: bool) -> bool:
        if not self.fast_path or obs.device.type != "cpu" or obs.dtype != torch.float32 or is_compiling():
            return False
        return not detach_params or self._kernel_for(obs, rows, torch.is_grad_enabled()) == "onednn"

    def _params(self) -> list[torch.Tensor]:
        params: list[torch.Tensor] = []
        for layer in [*self.hidden, self.head]:
            params += [layer.weight, layer.bias]
        return params

    def _fast_forward(
        self, obs: torch.Tensor, acts: torch.Tensor, return_features: bool, detach_params: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = self._params()
        if detach_params:
            params = [p.detach() for p in params]
        needs_grad = torch.is_grad_enabled() and (
            obs.requires_grad or acts.requires_grad or any(p.requires_grad for p in params)
        )
        kernel = self._kernel_for(obs, acts.shape[0] * acts.shape[1], needs_grad)
        if kernel == "onednn":
            retain_freed_memory_once()
        if needs_grad:
            if kernel == "onednn":
                out = DnnReluEnsembleMLP.apply(obs, acts.contiguous(), return_features, *params)
            elif kernel in ("mm", "mm_par"):
                out = ChunkedReluEnsembleMLP.apply(
                    obs, acts, self._workspace, return_features, CHUNK_ROWS, kernel == "mm_par", *params
                )
            else:
                out = ReluEnsembleMLP.apply(obs, acts, self._workspace, return_features, *params)
            return out if return_features else (out, None)
        with torch.no_grad():
            if kernel == "onednn":
                x = state_action_input(obs, acts)
                per_member = [dnn_member_forward(x, params, e) for e in range(self.num_critics)]
                q = torch.stack([q for _, q in per_member]).unsqueeze(-1)
                return q, (torch.stack([a[-1] for a, _ in per_member]) if return_features else None)
            if kernel in ("mm", "mm_par"):
                hidden, q = chunked_forward(
                    obs, acts, params, self._workspace, "nograd_", return_features, CHUNK_ROWS, kernel == "mm_par"
                )
                return q, (hidden[-1].clone() if return_features else None)
            hidden, q = relu_mlp_forward(obs, acts, params, self._workspace, "nograd_")
        return q, (hidden[-1].clone() if return_features else None)

    def _generic_forward(
        self, obs: torch.Tensor, acts: torch.Tensor, detach_params: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._first_layer(obs, acts, detach_params)
        for i, (layer, norm) in enumerate(zip(self.hidden, self.norms)):
            if i > 0:
                h = layer(h, detach_params)
            if isinstance(norm, VectorizedLayerNorm) and not self.norm_after_activation:
                h = norm(h, detach_params)
            h = self.activation(h)
            if isinstance(norm, VectorizedLayerNorm) and self.norm_after_activation:
                h = norm(h, detach_params)
        return self.head(h, detach_params), h
