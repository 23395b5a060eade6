"""One whole update (losses, backward, optimiser step, target update) captured as a CUDA graph and replayed.

On a GPU the small networks of offline RL leave the device idle while Python and the dispatcher issue hundreds of
kernels per update; replaying a captured graph issues them all at once. This is the same technique as
``torch.compile(mode="reduce-overhead")`` applied to the whole step instead of the loss alone (the optimiser step and
the Polyak update are captured too): PyTorch's "whole network capture" (PyTorch docs, CUDA semantics, "CUDA Graphs").

:class:`CUDAGraphUpdate` is a drop-in for ``learner.update``: every call is one update on its own batch. The first
``warmup`` x period calls run eagerly on a side stream (they train as usual, and create the optimiser state and
library handles a capture needs); the next call captures one graph per phase (the capture itself runs nothing) and
then replays; later calls copy their batch into the captured buffers and replay.

Contract (what makes a learner capturable): its ``step_tensors`` does only device work (no ``.item()``, no host
branching on values), and its Python behaviour depends on the update count only through ``cuda_graph_period()``
(TD3+BC and ReBRAC train the actor every ``policy_freq`` updates: one graph per phase). Random numbers drawn inside
the step come from the device's graph-safe generator, so each replay draws fresh ones, and a graphed run equals an
eager run with the same seed exactly for learners that draw none (IQL, BC: ``benchmarks/gpu_check.sh`` checks it,
max abs parameter difference 0.0 on an H200); an :class:`~robopretrain.agent.Agent`'s image shifts move from its
host generator to the device's default generator at the capture. The optimisers are switched to
``capturable=True`` (Adam's step count lives on the device), which leaves their arithmetic unchanged.

Errors: ValueError when the learner is not on a CUDA device or cannot be captured (the Decision Transformer, whose
learning-rate warm-up depends on the update count at every step), and when a later batch differs in keys, shape or
dtype from the captured one (a graph replays one batch size).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from robopretrain.algos.base import metrics_to_floats


def _static_copy(batch: Any) -> Any:
    """A device copy of a (nested) batch that the graph reads its inputs from."""
    if isinstance(batch, Mapping):
        return {k: _static_copy(v) for k, v in batch.items()}
    return batch.clone() if isinstance(batch, torch.Tensor) else batch


def _copy_into(static: Any, batch: Any, path: str = "batch") -> None:
    """Copy ``batch`` into the captured buffers; raises ValueError on a different key set, shape or dtype."""
    if isinstance(static, Mapping):
        if not isinstance(batch, Mapping) or set(batch) != set(static):
            raise ValueError(f"CUDAGraphUpdate: {path} has keys {sorted(batch) if isinstance(batch, Mapping) else '-'}"
                             f"; the graph was captured with {sorted(static)}")
        for k in static:
            _copy_into(static[k], batch[k], f"{path}[{k!r}]")
        return
    if isinstance(static, torch.Tensor):
        if tuple(batch.shape) != tuple(static.shape) or batch.dtype != static.dtype:
            raise ValueError(f"CUDAGraphUpdate: {path} is {tuple(batch.shape)} {batch.dtype}; the graph was captured "
                             f"with {tuple(static.shape)} {static.dtype} (a graph replays one batch size)")
        static.copy_(batch, non_blocking=True)


class CUDAGraphUpdate:
    """``CUDAGraphUpdate(learner)(batch, with_metrics)``: ``learner.update`` by graph replay (module docstring).

    ``learner``: an :class:`~robopretrain.algos.base.OfflineAlgorithm` or a :class:`robopretrain.agent.Agent`, on
    CUDA. Each call counts one update (``num_updates``) and returns the metrics as floats when ``with_metrics`` (one
    host sync), else ``{}`` without waiting for the device.
    """

    def __init__(self, learner: Any, warmup: int = 3) -> None:
        core = getattr(learner, "core", learner)
        if not getattr(core, "CUDA_GRAPHS", False) or getattr(learner, "algo", None) == "dt":
            raise ValueError(f"CUDAGraphUpdate: {type(core).__name__} cannot be captured (its step depends on the "
                             "update count at every step, or it has no step_tensors)")
        if getattr(learner, "auxiliary", None):
            raise ValueError("CUDAGraphUpdate: the agent has auxiliary losses (e.g. the domain classifier of "
                             "finetune.transfer.dann), which draw their batches on the host: set cuda_graph=false")
        self.device = torch.device(core.device)
        if self.device.type != "cuda":
            raise ValueError(f"CUDAGraphUpdate: the learner is on {self.device}; CUDA graphs need a CUDA device")
        self.learner, self.core = learner, core
        self.period = int(core.cuda_graph_period())
        self.warmup_left = max(int(warmup), 1) * self.period
        for opt in learner.optimizers():
            for group in opt.param_groups:
                group["capturable"] = True
        self.static: Any = None
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # by num_updates % period at capture
        self.metrics: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def captured(self) -> bool:
        return bool(self.graphs)

    def _eager(self, batch: Mapping[str, Any], with_metrics: bool) -> dict[str, float]:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            metrics = self.learner.step_tensors(batch, with_metrics)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.core.num_updates += 1
        self.warmup_left -= 1
        return metrics_to_floats(metrics) if with_metrics else {}

    def _capture(self, batch: Mapping[str, Any]) -> None:
        self.static = _static_copy(batch)
        if hasattr(self.learner, "shifts_on_device"):
            self.learner.shifts_on_device = True  # a host generator's draw would be frozen into the graph
        start = self.core.num_updates
        for n in range(start, start + self.period):  # the Python-side phase (e.g. TD3's actor step) fixed per graph
            self.core.num_updates = n
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.metrics[n % self.period] = self.learner.step_tensors(self.static, True)
            self.graphs[n % self.period] = graph
        self.core.num_updates = start  # the capture recorded kernels without running them: nothing was trained

    def __call__(self, batch: Mapping[str, Any], with_metrics: bool = True) -> dict[str, float]:
        if self.warmup_left > 0 or self.core.num_updates < self.core.eager_updates():
            return self._eager(batch, with_metrics)
        if not self.captured:
            self._capture(batch)
        _copy_into(self.static, batch)
        phase = self.core.num_updates % self.period
        self.graphs[phase].replay()
        self.core.num_updates += 1
        return metrics_to_floats(self.metrics[phase]) if with_metrics else {}
