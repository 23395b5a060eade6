"""Which CPU kernel path runs the critic and MLP products: measured on this machine, cached, overridable.

The fastest way to issue the same fp32 products differs between CPUs and thread counts (on an AMD EPYC
oneDNN's inner products ran 2x PyTorch's default MKL ones, because MKL's sgemm skips AVX-512 there; on an Intel
Xeon the same oneDNN path was slower than MKL). So the choice is never made from the vendor's name: the first
time a product shape is used, every candidate path runs interleaved timed passes on random data of that shape (at
least 4 rounds, up to 50 for cheap passes within about half a second; a private random generator, so training's
random stream is untouched), the fastest (minimum over the passes, which discards passes slowed by other
processes) is used, and the result is cached in
``~/.cache/robopretrain/kernels.json`` (``ROBOPRETRAIN_CACHE_DIR`` moves it) under the key
``"<CPU model> (<torch's vector instruction set>) | torch <version> | <n> threads"``, so later runs on the
machine skip the probe. A probe costs
0.5-2 s per pass shape (a handful per agent); passes below :data:`PROBE_MIN_FLOPS` are not probed. The choice
costs one dict lookup per call after that.

Paths (every one computes the same function; results agree to fp32 rounding, see ``tests/test_kernels.py``):

* critic (:class:`robopretrain.nets.critic.EnsembleCritic`, ReLU without LayerNorm): ``"mm"``, ``"mm_par"``
  (with 2+ threads: members on parallel threads), ``"bmm"`` or ``"onednn"`` (:mod:`robopretrain.nets.ensemble_kernels`);
* MLP layers (:class:`robopretrain.nets.mlp.Linear`): ``"aten"`` (``F.linear``, MKL on x86) or ``"onednn"``.

``ROBOPRETRAIN_KERNEL`` = ``mm`` | ``mm_par`` | ``bmm`` | ``onednn`` | ``aten`` | ``auto`` (default) forces a
path (``mm``/``mm_par``/``bmm`` force the critic and leave the MLP layers on ``aten``; ``onednn`` forces both);
the older ``ROBOPRETRAIN_ONEDNN=0`` removes oneDNN from the candidates.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from robopretrain.files import write_text_atomic
from robopretrain.nets import ensemble_kernels as ek
from robopretrain.nets.mlp import DenseFn, onednn_allowed

ENV_KERNEL = "ROBOPRETRAIN_KERNEL"
ENV_CACHE_DIR = "ROBOPRETRAIN_CACHE_DIR"
CRITIC_PATHS = ("mm", "mm_par", "bmm", "onednn")
LINEAR_PATHS = ("aten", "onednn")
PROBE_MIN_FLOPS = 2e7  # smaller passes are overhead-bound on any path: "mm" / "aten" without probing
PROBE_ROUNDS = 4
PROBE_BUDGET_S = 0.5

_choices: dict[tuple[str, str], str] = {}
_linear_memo: dict[tuple[int, int, int, int, bool], str] = {}  # per call site shape: no string building per call
_probe_log: dict[tuple[str, str], dict] = {}


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here (``torch.backends.cpu.get_cpu_capability()``:
    ``DEFAULT``, ``AVX2``, ``AVX512``, ...). Machines of one model name differ in it (a hypervisor may hide AVX-512:
    two "AMD EPYC" sessions of this project ran AVX-512 and AVX2), and it changes speed and the rounding of results."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def cpu_label() -> str:
    """The CPU model with torch's vector instruction set, e.g. ``AMD EPYC (AVX2)``: what says which machine
    computed a number (the model name alone does not)."""
    return f"{cpu_model()} ({cpu_capability()})"


def machine_key() -> str:
    """Cache key of the machine: :func:`cpu_label`, torch version, torch thread count."""
    return f"{cpu_label()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def machine_record() -> dict[str, object]:
    """Where a run's numbers were computed, for its records: CPU model, torch's vector instruction set, torch
    version, thread count, and the kernel path this process chose for each product shape so far. Two runs agree to
    the bit only where all of these do (the paths compute the same functions, with different rounding)."""
    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "kernels": {k.split(" || ", 1)[1]: v["choice"] for k, v in choices_made().items()}}


def cache_path() -> Path:
    root = os.environ.get(ENV_CACHE_DIR) or str(Path.home() / ".cache" / "robopretrain")
    return Path(root) / "kernels.json"


def forced_path() -> str | None:
    """The path named by ``ROBOPRETRAIN_KERNEL``, or None for the measured choice."""
    value = os.environ.get(ENV_KERNEL, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in {*CRITIC_PATHS, *LINEAR_PATHS}:
        raise ValueError(f"{ENV_KERNEL}={value!r}; expected auto, {', '.join(sorted({*CRITIC_PATHS, *LINEAR_PATHS}))}")
    return value


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(machine: str, key: str, entry: dict) -> None:
    path = cache_path()
    try:
        data = _read_cache()
        data.setdefault(machine, {})[key] = entry
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home only costs a probe per process


def time_candidates(
    candidates: dict[str, Callable[[], object]], rounds: int = PROBE_ROUNDS, budget_s: float = PROBE_BUDGET_S
) -> dict[str, float]:
    """Milliseconds per call of each candidate: one warm-up call each, then interleaved timed calls, minimum.

    At least ``rounds`` rounds, more for cheap candidates (until about ``budget_s`` seconds are spent, at most 50
    rounds), so that the minimum of a small pass is not one lucky or unlucky sample on a loaded machine.
    """
    best = {name: math.inf for name in candidates}
    start = time.perf_counter()
    for fn in candidates.values():
        fn()
    per_round = max(time.perf_counter() - start, 1e-6)
    for _ in range(max(rounds, min(50, int(budget_s / per_round)))):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], 1000.0 * (time.perf_counter() - t0))
    return best


def choose(
    key: str, paths: list[str] | tuple[str, ...], make_candidates: Callable[[], dict[str, Callable[[], object]]]
) -> str:
    """The fastest of ``paths`` for ``key`` on this machine: from memory, the cache file, or a probe.

    ``make_candidates`` builds ``{path: one representative call}``; it is called only when a probe runs.
    """
    machine = machine_key()
    memo = (machine, key)
    choice = _choices.get(memo)
    if choice is not None:
        return choice
    entry = _read_cache().get(machine, {}).get(key)
    if not (isinstance(entry, dict) and entry.get("choice") in paths):
        candidates = make_candidates()
        with torch.enable_grad():
            timings = time_candidates(candidates)
        entry = {
            "choice": min(timings, key=timings.__getitem__),
            "ms": {k: round(v, 3) for k, v in timings.items()},
            "probed": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write_cache(machine, key, entry)
    _choices[memo] = entry["choice"]
    _probe_log[memo] = entry
    return entry["choice"]


def choices_made() -> dict[str, dict]:
    """Every choice this process made, ``{"<machine> || <shape key>": {"choice", "ms", "probed"}}`` (for reports)."""
    return {f"{m} || {k}": v for (m, k), v in _probe_log.items()}


def _rows_bucket(rows: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(rows, 1))))


def critic_kernel(critic: torch.nn.Module, rows: int, grad: bool) -> str:
    """Kernel path for a pass of ``critic`` (an ``EnsembleCritic``) over ``rows`` rows, with or without backward."""
    forced = forced_path()
    if forced in CRITIC_PATHS:
        return forced
    if forced is not None:  # "aten": the MLP layers only
        return "mm"
    memo = critic.__dict__.setdefault("_kernel_memo", {})  # per critic: the per-call cost is one dict lookup
    memo_key = (rows, grad, torch.get_num_threads(), onednn_allowed())
    choice = memo.get(memo_key)
    if choice is None:
        choice = memo[memo_key] = _critic_choice(critic, rows, grad)
    return choice


def _critic_choice(critic: torch.nn.Module, rows: int, grad: bool) -> str:
    sizes = [critic.obs_dim + critic.act_dim, *[layer.out_features for layer in critic.hidden], 1]
    flops = 2 * critic.num_critics * rows * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if flops < PROBE_MIN_FLOPS:
        return "mm"
    bucket = _rows_bucket(rows)
    key = (f"critic E{critic.num_critics} in {critic.obs_dim}+{critic.act_dim} "
           f"hidden {'x'.join(map(str, sizes[1:-1]))} rows<={bucket} {'fwd+bwd' if grad else 'fwd'}")
    paths = [p for p in CRITIC_PATHS
             if (p != "onednn" or onednn_allowed()) and (p != "mm_par" or torch.get_num_threads() > 1)]
    return choose(key, paths, lambda: {p: _critic_probe(critic, bucket, grad, p) for p in paths})


def _critic_probe(critic: torch.nn.Module, rows: int, grad: bool, path: str) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for layer in [*critic.hidden, critic.head]:
        params += [layer.weight.detach().clone().requires_grad_(grad), layer.bias.detach().clone().requires_grad_(grad)]
    batch = min(rows, 256)
    n = max(1, rows // batch)
    obs = torch.randn(batch, critic.obs_dim, generator=gen)
    acts = torch.rand(batch, n, critic.act_dim, generator=gen) * 2 - 1
    ws = ek.Workspace()

    def run() -> None:
        if path == "onednn":
            if grad:
                ek.DnnReluEnsembleMLP.apply(obs, acts, False, *params).sum().backward()
            else:
                with torch.no_grad():
                    x = ek.state_action_input(obs, acts)
                    [ek.dnn_member_forward(x, params, e) for e in range(critic.num_critics)]
        elif path in ("mm", "mm_par"):
            par = path == "mm_par"
            if grad:
                ek.ChunkedReluEnsembleMLP.apply(obs, acts, ws, False, ek.CHUNK_ROWS, par, *params).sum().backward()
            else:
                with torch.no_grad():
                    ek.chunked_forward(obs, acts, params, ws, "nograd_", False, ek.CHUNK_ROWS, par)
        elif grad:
            ek.ReluEnsembleMLP.apply(obs, acts, ws, False, *params).sum().backward()
        else:
            with torch.no_grad():
                ek.relu_mlp_forward(obs, acts, params, ws, "nograd_")
        for p in params:
            p.grad = None

    return run


def linear_kernel(in_features: int, out_features: int, rows: int) -> str:
    """Kernel path for an MLP layer ``(rows, in) -> (rows, out)`` with backward: ``"aten"`` or ``"onednn"``."""
    forced = forced_path()
    if forced is not None:
        return "onednn" if forced == "onednn" and onednn_allowed() else "aten"
    if not onednn_allowed() or 6 * rows * in_features * out_features < PROBE_MIN_FLOPS:
        return "aten"
    memo_key = (in_features, out_features, rows, torch.get_num_threads(), True)
    choice = _linear_memo.get(memo_key)
    if choice is None:
        bucket = _rows_bucket(rows)
        key = f"linear {in_features}->{out_features} rows<={bucket} fwd+bwd"
        choice = choose(key, LINEAR_PATHS, lambda: _linear_probes(in_features, out_features, bucket))
        _linear_memo[memo_key] = choice
    return choice


def _linear_probes(in_features: int, out_features: int, rows: int) -> dict[str, Callable[[], None]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=gen).requires_grad_(True)
    w = torch.randn(out_features, in_features, generator=gen).requires_grad_(True)
    b = torch.zeros(out_features, requires_grad=True)

    def run(fn: Callable) -> Callable[[], None]:
        def step() -> None:
            fn(x, w, b).sum().backward()
            x.grad = w.grad = b.grad = None

        return step

    return {"aten": run(F.linear), "onednn": run(DenseFn.apply)}


__all__ = [
    "CRITIC_PATHS",
    "LINEAR_PATHS",
    "cache_path",
    "choices_made",
    "choose",
    "cpu_capability",
    "cpu_label",
    "cpu_model",
    "critic_kernel",
    "forced_path",
    "linear_kernel",
    "machine_key",
    "machine_record",
    "time_candidates",
]
