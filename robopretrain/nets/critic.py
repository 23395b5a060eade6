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
CUDA; ``fast_path=False`` turns both off:

* oneDNN (default where the probe in :mod:`robopretrain.nets.mlp` succeeds; ``critic.use_onednn``):
  :class:`_DnnReluEnsembleMLP` runs each member's forward and backward with oneDNN inner products on
  ``[s, a]`` rows (bias and ReLU fused into the forward products). On this project's AMD CPU, PyTorch's
  default fp32 matmul (MKL) does not use AVX-512 and oneDNN does: ~2x faster forward and input-gradient
  products, ~1.4x faster weight gradients. Each pass allocates its own activations; the first oneDNN pass
  calls :func:`robopretrain.nets.mlp.retain_freed_memory` (once per process, a glibc ``mallopt``) so that
  freed activations are reused instead of being page-faulted in anew every update (which otherwise costs
  about as much as the oneDNN speed-up gains).
* BLAS with reused buffers (``use_onednn = False``, or no oneDNN): :class:`_ReluEnsembleMLP` runs forward
  and backward with hand-written ``baddbmm``/``bmm`` calls that write into buffers kept between calls, so
  no fresh activation-sized tensor (16 MB for 256 states x 31 actions x 256 units x 2 critics) is mapped
  and page-faulted anew. Buffers are kept per pass size and tagged with a generation counter, so a backward
  whose activations were overwritten by a later forward of the same size raises instead of returning wrong
  gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robopretrain.nets.mlp import (
    FINAL_GAIN,
    HIDDEN_GAIN,
    dense,
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


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


class _Workspace:
    """Named buffers reused between calls, and generation counters for the activations they hold.

    Buffers are keyed by name and shape, so passes with different numbers of rows never share them;
    ``generations[rows]`` counts the differentiable forward passes that wrote the activations of that size.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self.generations: dict[int, int] = {}

    def bump(self, rows: int) -> int:
        self.generations[rows] = self.generations.get(rows, 0) + 1
        return self.generations[rows]

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        key = (name, shape)
        buf = self.buffers.get(key)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device:
            if len(self.buffers) >= 32:  # many different batch shapes: start afresh rather than grow
                self.buffers.clear()
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self.buffers[key] = buf
        return buf


def _relu_mlp_forward(
    obs: torch.Tensor, actions: torch.Tensor, params: Sequence[torch.Tensor], ws: _Workspace, prefix: str
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Ensemble ReLU MLP on ``[s, a]`` writing activations into ``ws``; returns (activations, q (E, M, 1))."""
    weights, biases = params[0::2], params[1::2]
    obs_dim = obs.shape[-1]
    num, (batch, n, act_dim) = weights[0].shape[0], actions.shape
    m = batch * n
    h = ws.get(f"{prefix}h0", (num, m, weights[0].shape[-1]), obs)
    torch.bmm(actions.reshape(1, m, act_dim).expand(num, m, act_dim), weights[0][:, obs_dim:], out=h)
    state_part = torch.baddbmm(biases[0], obs.unsqueeze(0).expand(num, batch, obs_dim), weights[0][:, :obs_dim])
    h.view(num, batch, n, -1).add_(state_part.unsqueeze(2)).relu_()
    acts = [h]
    for i, (w, b) in enumerate(zip(weights[1:-1], biases[1:-1]), start=1):
        h = torch.baddbmm(b, h, w, out=ws.get(f"{prefix}h{i}", (num, m, w.shape[-1]), obs)).relu_()
        acts.append(h)
    return acts, _head_forward(h, weights[-1], biases[-1])


def _head_forward(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h (E, M, H) @ weight (E, H, 1) + bias`` as one matrix-vector product per member.

    A batched GEMM with a single output column is ~10x slower than GEMV on CPU, so the output layer
    (and only it) runs member by member; the hidden layers stay batched.
    """
    q = torch.stack([torch.mv(h[e], weight[e, :, 0]) for e in range(h.shape[0])])
    return q.unsqueeze(-1).add_(bias)



def _state_action_input(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``[s, a]`` rows ``(B * n, S + A)`` for ``obs (B, S)`` and ``actions (B, n, A)``."""
    batch, n, act_dim = actions.shape
    x = torch.cat([obs.unsqueeze(1).expand(batch, n, obs.shape[-1]), actions], dim=-1)
    return x.view(batch * n, -1)


def _dnn_member_forward(
    x: torch.Tensor, params: Sequence[torch.Tensor], e: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Member ``e`` of the ReLU ensemble MLP on rows ``x (M, in)`` with oneDNN; (activations, q (M,))."""
    weights, biases = params[0::2], params[1::2]
    h, acts = x, []
    for w, b in zip(weights[:-1], biases[:-1]):
        h = dense(h, w[e].t().contiguous(), b[e, 0], relu=True)  # bias and ReLU fused into the product
        acts.append(h)
    return acts, torch.addmv(biases[-1][e, 0], h, weights[-1][e, :, 0])


class _DnnReluEnsembleMLP(torch.autograd.Function):
    """Forward/backward of the ReLU ensemble MLP with oneDNN products, member by member (CPU fp32).

    Every product runs on oneDNN (the weight gradients ``inp^T @ g`` with transposed views, which oneDNN
    packs itself: still ~1.4x faster than BLAS here). Every pass allocates its own activations, so graphs
    never share buffers (see :func:`robopretrain.nets.mlp.retain_freed_memory` for the page-fault cost).
    """

    @staticmethod
    def forward(ctx, obs, actions, want_features, *params):  # type: ignore[override]
        x = _state_action_input(obs, actions)
        per_member = [_dnn_member_forward(x, params, e) for e in range(params[0].shape[0])]
        acts = [a for a, _ in per_member]
        q = torch.stack([q for _, q in per_member]).unsqueeze(-1)
        ctx.save_for_backward(obs, actions, x, *[h for a in acts for h in a], *params)
        ctx.num_members, ctx.depth = len(acts), len(acts[0])
        if want_features:
            return q, torch.stack([a[-1] for a in acts])
        return q

    @staticmethod
    def backward(ctx, grad_q, grad_features=None):  # type: ignore[override]
        num, depth = ctx.num_members, ctx.depth
        obs, actions, x, *rest = ctx.saved_tensors
        flat_acts, params = rest[: num * depth], rest[num * depth :]
        acts = [flat_acts[e * depth : (e + 1) * depth] for e in range(num)]
        weights = params[0::2]
        (batch, n, act_dim), obs_dim = actions.shape, obs.shape[-1]
        grad_q = grad_q.contiguous()
        grads: list[list[torch.Tensor]] = [[] for _ in params]
        grad_x = None
        for e in range(num):
            gq = grad_q[e, :, 0]
            if ctx.needs_input_grad[-2]:
                grads[-2].append(torch.mv(acts[e][-1].t(), gq).unsqueeze(-1))
                grads[-1].append(gq.sum().view(1, 1))
            g = torch.outer(gq, weights[-1][e, :, 0])
            if grad_features is not None:
                g.add_(grad_features[e])
            for i in range(depth - 1, -1, -1):
                torch.ops.aten.threshold_backward.grad_input(g, acts[e][i], 0, grad_input=g)  # ReLU mask, in place
                if ctx.needs_input_grad[3 + 2 * i]:
                    inp = acts[e][i - 1] if i > 0 else x
                    grads[2 * i].append(dense(inp.t(), g.t()))  # inp^T @ g, (in, out)
                    grads[2 * i + 1].append(g.sum(0, keepdim=True))
                if i > 0:
                    g = dense(g, weights[i][e])  # g @ W_i^T
                elif ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                    gx = dense(g, weights[0][e])
                    grad_x = gx if grad_x is None else grad_x.add_(gx)
        grad_obs = grad_actions = None
        if grad_x is not None:
            grad_x = grad_x.view(batch, n, -1)
            if ctx.needs_input_grad[0]:
                grad_obs = grad_x[..., :obs_dim].sum(1)
            if ctx.needs_input_grad[1]:
                grad_actions = grad_x[..., obs_dim:].contiguous()
        return (grad_obs, grad_actions, None, *[torch.stack(g) if g else None for g in grads])


class _ReluEnsembleMLP(torch.autograd.Function):
    """Forward/backward of the ReLU ensemble MLP with reused activation and gradient buffers."""

    @staticmethod
    def forward(ctx, obs, actions, ws, want_features, *params):  # type: ignore[override]
        acts, q = _relu_mlp_forward(obs, actions, params, ws, "grad_")
        ctx.rows, ctx.ws = acts[0].shape[1], ws
        ctx.generation = ws.bump(ctx.rows)
        ctx.save_for_backward(obs, actions, *params)
        if want_features:
            return q, acts[-1].clone()
        return q

    @staticmethod
    def backward(ctx, grad_q, grad_features=None):  # type: ignore[override]
        ws: _Workspace = ctx.ws
        if ws.generations.get(ctx.rows) != ctx.generation:
            raise RuntimeError(
                "EnsembleCritic fast path: another forward pass reused the activation buffers before this "
                "backward; call backward before the next forward, or build the critic with fast_path=False"
            )
        obs, actions, *params = ctx.saved_tensors
        weights = params[0::2]
        num, (batch, n, act_dim), obs_dim = weights[0].shape[0], actions.shape, obs.shape[-1]
        m = batch * n
        acts = [ws.get(f"grad_h{i}", (num, m, w.shape[-1]), obs) for i, w in enumerate(weights[:-1])]
        grads: list[torch.Tensor | None] = [None] * len(params)
        grad_q = grad_q.contiguous()
        grads[-2] = torch.stack([torch.mv(acts[-1][e].t(), grad_q[e, :, 0]) for e in range(num)]).unsqueeze(-1)
        grads[-1] = grad_q.sum(dim=1, keepdim=True)
        g = torch.mul(grad_q, weights[-1].transpose(1, 2), out=ws.get(f"g{len(acts) - 1}", acts[-1].shape, obs))
        if grad_features is not None:
            g.add_(grad_features)
        for i in range(len(acts) - 1, -1, -1):
            torch.ops.aten.threshold_backward.grad_input(g, acts[i], 0, grad_input=g)  # ReLU mask, in place
            if i == 0:
                break
            grads[2 * i] = torch.bmm(acts[i - 1].transpose(1, 2), g)
            grads[2 * i + 1] = g.sum(dim=1, keepdim=True)
            g = torch.bmm(g, weights[i].transpose(1, 2), out=ws.get(f"g{i - 1}", acts[i - 1].shape, obs))
        g_states = g.view(num, batch, n, -1).sum(dim=2)
        acts_e = actions.reshape(1, m, act_dim).expand(num, m, act_dim)
        grad_w_state = torch.bmm(obs.t().unsqueeze(0).expand(num, obs_dim, batch), g_states)
        grads[0] = torch.cat([grad_w_state, torch.bmm(acts_e.transpose(1, 2), g)], dim=1)
        grads[1] = g_states.sum(dim=1, keepdim=True)
        grad_obs = grad_actions = None
        if ctx.needs_input_grad[0]:
            grad_obs = torch.bmm(g_states, weights[0][:, :obs_dim].transpose(1, 2)).sum(0)
        if ctx.needs_input_grad[1]:
            grad_actions = torch.bmm(g, weights[0][:, obs_dim:].transpose(1, 2)).sum(0).view(batch, n, act_dim)
        return (grad_obs, grad_actions, None, None, *grads)


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
        fast_path: bool = True,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("EnsembleCritic needs at least one hidden layer")
        # the buffer-reusing CPU path exists for ReLU without LayerNorm (see the module docstring)
        self.fast_path = fast_path and activation.lower() == "relu" and not layer_norm
        self.use_onednn = True  # within the fast path: oneDNN products where available (see nets/mlp.py)
        self._workspace = _Workspace()
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
        if self._use_fast_path(obs, detach_params):
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

    def _use_fast_path(self, obs: torch.Tensor, detach_params: bool) -> bool:
        if not self.fast_path or obs.device.type != "cpu" or obs.dtype != torch.float32 or _is_compiling():
            return False
        return self.use_onednn and use_onednn(obs) or not detach_params

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
        onednn = self.use_onednn and use_onednn(obs)
        if onednn:
            retain_freed_memory_once()
        if needs_grad:
            if onednn:
                out = _DnnReluEnsembleMLP.apply(obs, acts.contiguous(), return_features, *params)
            else:
                out = _ReluEnsembleMLP.apply(obs, acts, self._workspace, return_features, *params)
            return out if return_features else (out, None)
        with torch.no_grad():
            if onednn:
                x = _state_action_input(obs, acts)
                per_member = [_dnn_member_forward(x, params, e) for e in range(self.num_critics)]
                q = torch.stack([q for _, q in per_member]).unsqueeze(-1)
                return q, (torch.stack([a[-1] for a, _ in per_member]) if return_features else None)
            hidden, q = _relu_mlp_forward(obs, acts, params, self._workspace, "nograd_")
        return q, (hidden[-1].clone() if return_features else None)

    def _generic_forward(
        self, obs: torch.Tensor, acts: torch.Tensor, detach_params: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._first_layer(obs, acts, detach_params)
        for i, (layer, norm) in enumerate(zip(self.hidden, self.norms)):
            if i > 0:
                h = layer(h, detach_params)
            h = self.activation(norm(h, detach_params) if isinstance(norm, VectorizedLayerNorm) else h)
        return self.head(h, detach_params), h
