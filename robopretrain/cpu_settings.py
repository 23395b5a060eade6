"""Process-wide CPU math settings of a run: torch's thread count and flushing subnormal floats to zero.

**Why subnormals matter here.** A float32 below 1.18e-38 in magnitude is *subnormal*; on Intel CPUs every
multiply that reads or writes one takes a microcode assist of ~100 cycles, so a matrix product whose inputs hold
many subnormals runs up to ~100 times slower (measured here: a 4096x512 @ 512x512 product of subnormal inputs, 1.15 s
instead of 7 ms on a 2-core Xeon). CQL's and Cal-QL's penalty makes them every update: the gradient of
``logsumexp`` over the 3N + 1 sampled actions is a softmax, whose weights underflow to subnormals where one Q-value
leads the others by more than ~87; the critic's backward pass then multiplies those rows through every layer. On
the Cal-QL update of ``benchmarks/peers.py`` (Intel Xeon, 1 thread, ``benchmarks/results/peers.json``) flushing
took robopretrain from 11.0 to 16.4 updates/s and CORL's from 7.4 to 8.9; IQL (no logsumexp) is unchanged.

**What flushing changes.** ``torch.set_flush_denormal(True)`` sets the x86 FTZ and DAZ bits: subnormal results
become 0 and subnormal inputs read as 0. Every other value is computed exactly as before, so a loss or gradient
changes by at most the subnormal range (|x| < 1.18e-38 in float32, 2.2e-308 in float64) per element before
accumulation, below float32 resolution of any sum that also holds a normal value. TensorFlow and XLA run their
CPU kernels this way by default. On CPUs without FTZ/DAZ (not x86 with SSE3) torch reports it unsupported and
nothing changes.

**Threads inherit it at creation.** The bits are per thread; a new thread copies its creator's (POSIX
``pthread_create``), so this must run before torch's intra-op (OpenMP) threads start, i.e. before the first
multi-threaded torch op of the process. The entry points call :func:`apply_cpu_settings` first thing;
robopretrain's own member thread (the ``mm_par`` kernel path) is updated here explicitly.
"""

from __future__ import annotations

from typing import Any

import torch

from robopretrain.nets import ensemble_kernels

_flush_denormal: bool | None = None  # the last setting applied by this module (None: never applied)


def flush_denormal_active() -> bool | None:
    """Whether :func:`apply_cpu_settings` last turned flushing on (None if it never ran in this process)."""
    return _flush_denormal


def apply_cpu_settings(num_threads: int | None = None, flush_denormal: bool = True) -> bool:
    """Set flushing of subnormal floats (``flush_denormal``) then torch's thread count (``num_threads``; None or 0
    leaves torch's default). Returns whether flushing is on (False where the CPU cannot flush)."""
    global _flush_denormal
    supported = torch.set_flush_denormal(bool(flush_denormal))
    _flush_denormal = bool(flush_denormal) and supported
    ensemble_kernels.set_member_thread_flush(bool(flush_denormal))
    if num_threads:
        torch.set_num_threads(int(num_threads))
    return _flush_denormal


def apply_from_config(cfg: Any) -> bool:
    """:func:`apply_cpu_settings` from a run config's ``num_threads`` and ``flush_denormal`` (default true)."""
    flush = cfg.get("flush_denormal")
    return apply_cpu_settings(cfg.get("num_threads"), True if flush is None else bool(flush))
