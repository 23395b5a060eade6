"""MLP builder and the weight-initialisation conventions shared by actors, critics and value nets.

Follows REFERENCE.md, Stage 3 ("orthogonal init" among the official Cal-QL defaults): with
``orthogonal_init`` every hidden Linear gets an orthogonal matrix with gain sqrt(2) and zero bias, and
the output layer gets an orthogonal matrix with a small gain (``final_gain``, 1e-2), as the
Cal-QL/JaxCQL ``FullyConnectedNetwork`` does. Without it, hidden layers keep PyTorch's default init
and the output layer uses variance scaling with scale ``final_gain`` (fan-in, uniform), which is
JaxCQL's non-orthogonal choice.

Layer order of one hidden block: Linear -> [LayerNorm] -> activation -> [Dropout].

The layers are :class:`Linear` (an ``nn.Linear`` with the same parameters and state dict) whose CPU fp32
products run on the path measured fastest on this machine (``F.linear`` or oneDNN) -- see the section "oneDNN
dense products on CPU" below and :mod:`robopretrain.nets.kernels`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}

HIDDEN_GAIN = math.sqrt(2.0)
FINAL_GAIN = 1e-2


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module from its name (relu, tanh, elu, gelu, silu/swish, leaky_relu)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


def init_linear_(
    weight: torch.Tensor, bias: torch.Tensor | None, *, orthogonal: bool, gain: float, final: bool
) -> None:
    """Initialise one (possibly ensemble-batched) linear layer in place.

    ``weight`` is either a Linear weight ``(out, in)`` or a stack ``(E, in, out)`` of ensemble
    weights; in the latter case each member is initialised as if it were ``nn.Linear(in, out)``.
    """
    with torch.no_grad():
        members = [weight] if weight.dim() == 2 else [w.t() for w in weight]  # views as (out, in)
        fan_in = weight.shape[1]  # (out, in) and (E, in, out) both keep fan-in at dim 1
        for w in members:
            tmp = torch.empty(w.shape, dtype=w.dtype, device=w.device)
            if orthogonal:
                nn.init.orthogonal_(tmp, gain=gain)
            elif final:
                limit = math.sqrt(3.0 * gain / fan_in)  # variance scaling: Var = gain / fan_in
                nn.init.uniform_(tmp, -limit, limit)
            else:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(tmp, -bound, bound)
            w.copy_(tmp)
        if bias is not None:
            if orthogonal or final:
                bias.zero_()
            else:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(bias, -bound, bound)


def build_mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (256, 256),
    *,
    activation: str = "relu",
    layer_norm: bool = False,
    orthogonal_init: bool = False,
    final_gain: float = FINAL_GAIN,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Build ``in_dim -> hidden... -> out_dim`` as an ``nn.Sequential`` (no output activation)."""
    if in_dim <= 0 or out_dim <= 0 or any(h <= 0 for h in hidden):
        raise ValueError(f"MLP sizes must be positive, got in={in_dim}, hidden={list(hidden)}, out={out_dim}")
    layers: list[nn.Module] = []
    prev = in_dim
    for size in hidden:
        linear = Linear(prev, size)
        init_linear_(linear.weight, linear.bias, orthogonal=orthogonal_init, gain=HIDDEN_GAIN, final=False)
        layers.append(linear)
        if layer_norm:
            layers.append(nn.LayerNorm(size))
        layers.append(make_activation(activation))
        if dropout > 0.0:
            layers.append(nn.Dropout(dropout))
        prev = size
    head = Linear(prev, out_dim)
    init_linear_(head.weight, head.bias, orthogonal=orthogonal_init, gain=final_gain, final=True)
    layers.append(head)
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- oneDNN dense products on CPU
#
# oneDNN's inner-product kernel (``torch.ops.mkldnn._linear_pointwise``, the op Inductor emits for CPU linears)
# is one of the candidate paths for the products on CPU: on an AMD EPYC with AVX-512, where PyTorch's fp32
# matmul goes to MKL and MKL's sgemm skips AVX-512, it ran the critic's products 2-2.5x faster; on an Intel Xeon
# it was slower than MKL. Which path runs is measured per machine (robopretrain.nets.kernels); same math in
# fp32 (only the summation order differs, as between any two BLAS libraries). ``ROBOPRETRAIN_ONEDNN=0`` removes
# it from the candidates.


def _probe_onednn() -> bool:
    if os.environ.get("ROBOPRETRAIN_ONEDNN", "1") == "0":
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w, b = torch.randn(5, 3), torch.randn(4, 3), torch.randn(4)
        ok = torch.allclose(op(x, w, b, "relu", [], ""), torch.relu(x @ w.t() + b), atol=1e-5)
        return bool(ok and torch.backends.mkldnn.is_available())
    except (AttributeError, RuntimeError):
        return False


ONEDNN_AVAILABLE = _probe_onednn()
_onednn_enabled = True


@contextlib.contextmanager
def onednn_disabled() -> Iterator[None]:
    """Within this block every product runs on PyTorch's default (BLAS) kernels; for comparisons."""
    global _onednn_enabled
    previous, _onednn_enabled = _onednn_enabled, False
    try:
        yield
    finally:
        _onednn_enabled = previous


def onednn_allowed() -> bool:
    """oneDNN kernels are in this torch build, not turned off by the environment nor by :func:`onednn_disabled`."""
    return ONEDNN_AVAILABLE and _onednn_enabled


def use_onednn(x: torch.Tensor) -> bool:
    """Whether the oneDNN dense kernels can apply to ``x`` (fp32 on CPU, outside ``torch.compile``)."""
    if not (onednn_allowed() and x.device.type == "cpu" and x.dtype == torch.float32):
        return False
    compiler = getattr(torch, "compiler", None)
    return not bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``x (M, in) @ weight.T + bias`` (``weight`` is ``(out, in)``), optionally followed by ReLU, via oneDNN.

    No autograd: callers write their own backward (see :class:`DenseFn` and the critic's fast path).
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")


class DenseFn(torch.autograd.Function):
    """``F.linear`` with every product (forward, input and weight gradients) on oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return dense(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = dense(grad, weight.t().contiguous()) if ctx.needs_input_grad[0] else None
        grad_w = dense(grad.t(), x.t()) if ctx.needs_input_grad[1] else None  # grad^T @ x, (out, in)
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose CPU fp32 products run on the measured fastest path.

    The path (``F.linear`` or oneDNN, :func:`robopretrain.nets.kernels.linear_kernel`) is chosen per layer shape
    and row count on first use.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not use_onednn(x):
            return super().forward(x)
        from robopretrain.nets.kernels import linear_kernel  # noqa: PLC0415 (kernels imports this module)

        rows = x.numel() // self.in_features
        if linear_kernel(self.in_features, self.out_features, rows) != "onednn":
            return super().forward(x)
        lead = x.shape[:-1]
        out = DenseFn.apply(x.reshape(-1, self.in_features).contiguous(), self.weight, self.bias)
        return out.view(*lead, self.out_features)


def retain_freed_memory(max_bytes: int = 1 << 30) -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS (process-wide; Linux).

    Fresh activation-sized CPU tensors (8 MB for one critic's 7936 x 256 activations) are otherwise mapped
    anew and page-faulted on first touch, which costs about a third as much as the matrix products that
    fill them. This sets ``M_MMAP_THRESHOLD`` to 256 MB and ``M_TRIM_THRESHOLD`` to ``max_bytes``; it
    changes no result. Returns False where glibc's ``mallopt`` is unavailable.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 256 << 20)) and bool(mallopt(m_trim_threshold, int(max_bytes)))


_retain_requested = False


def retain_freed_memory_once() -> None:
    """:func:`retain_freed_memory` the first time it is called in this process (the oneDNN fast paths call it)."""
    global _retain_requested
    if not _retain_requested:
        _retain_requested = True
        retain_freed_memory()
