"""Guards that stop a training run cleanly when its numbers go bad.

:func:`check_finite` is called by the training loops with the step's losses: stage 1 every step, *before* the
optimiser applies it; stages 2 and 3 after the update of every logged, evaluated or checkpointed step (the only ones
that compute metrics), before the checkpoint is written. A NaN or inf raises :class:`NonFiniteLossError` naming the
loss and the step (and the last step checked finite), so the newest checkpoint on disk stays the last good one and a
rerun resumes from it.
The entry points report the error on one line (:mod:`robopretrain.cli`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; names the loss and the training step."""

    def __init__(self, name: str, value: float, step: int, hint: str = "", since: int | None = None) -> None:
        self.name, self.value, self.step = name, value, int(step)
        self._args = (name, value, int(step), hint, since)
        after = "the start" if since is not None and int(since) == 0 else f"step {since}, where they were last finite"
        when = (f" (losses are checked only at logged, evaluated and checkpointed steps: it went bad after {after})"
                if since is not None and int(since) < int(step) - 1 else "")
        msg = (f"loss {name!r} is {value} at step {step}{when}; the run stopped before checkpointing it, so a rerun "
               "resumes from the newest checkpoint if the run wrote one (lower the learning rate, set gradient "
               "clipping, or check the data for extreme values)")
        super().__init__(msg + (f"; {hint}" if hint else ""))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return type(self), self._args  # as ResumeRefusal: picklable to and from worker processes


def _as_float(value: Any) -> float:
    if hasattr(value, "detach"):  # a torch tensor: one host sync per checked value
        value = value.detach()
        if value.numel() != 1:
            value = value.float().sum()  # NaN/inf anywhere propagates into the sum
        return float(value.item())
    return float(value)


def check_finite(losses: Mapping[str, Any], step: int, hint: str = "", since: int | None = None) -> None:
    """Raise :class:`NonFiniteLossError` for the first loss in ``losses`` that is NaN or inf.

    ``losses`` maps names to floats or tensors (scalars, or arrays checked elementwise via their sum); ``since``:
    the last step whose losses were checked finite (named in the error when steps between went unchecked).
    """
    for name, value in losses.items():
        v = _as_float(value)
        if not math.isfinite(v):
            raise NonFiniteLossError(str(name), v, step, hint, since)


def finite_metrics_hook(step: int, metrics: Mapping[str, Any], since: int | None = None) -> Mapping[str, Any]:
    """The stage-2/3 hook: check the ``*loss*`` entries of an agent's update metrics, return them unchanged.

    Call it on the metrics ``agent.update`` returns (``metrics = finite_metrics_hook(step, agent.update(...))``).
    Updates without metrics (``with_metrics=False``) return an empty dict and are not checked; ``since`` as
    :func:`check_finite`'s.
    """
    check_finite({k: v for k, v in metrics.items() if "loss" in k}, step, since=since)
    return metrics
