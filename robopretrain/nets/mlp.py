"""MLP builder and the weight-initialisation conventions shared by actors, critics and value nets.

Follows REFERENCE.md, Stage 3 ("orthogonal init" among the official Cal-QL defaults): with
``orthogonal_init`` every hidden Linear gets an orthogonal matrix with gain sqrt(2) and zero bias, and
the output layer gets an orthogonal matrix with a small gain (``final_gain``, 1e-2), as the
Cal-QL/JaxCQL ``FullyConnectedNetwork`` does. Without it, hidden layers keep PyTorch's default init
and the output layer uses variance scaling with scale ``final_gain`` (fan-in, uniform), which is
JaxCQL's non-orthogonal choice.

Layer order of one hidden block: Linear -> [LayerNorm] -> activation -> [Dropout].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
        linear = nn.Linear(prev, size)
        init_linear_(linear.weight, linear.bias, orthogonal=orthogonal_init, gain=HIDDEN_GAIN, final=False)
        layers.append(linear)
        if layer_norm:
            layers.append(nn.LayerNorm(size))
        layers.append(make_activation(activation))
        if dropout > 0.0:
            layers.append(nn.Dropout(dropout))
        prev = size
    head = nn.Linear(prev, out_dim)
    init_linear_(head.weight, head.bias, orthogonal=orthogonal_init, gain=final_gain, final=True)
    layers.append(head)
    return nn.Sequential(*layers)
