"""Data-parallel training under ``torchrun``: process-group setup, the DDP wrapper, rank-0-only side effects.

``torchrun --nproc_per_node=N -m video_pretrain.train ...`` starts N processes; each reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (:func:`init_distributed`). The process group uses
NCCL when the run's device is CUDA (one GPU per process, ``cuda:<LOCAL_RANK>``) and gloo on CPU. Without
``torchrun`` (``WORLD_SIZE`` unset or 1) everything here is a no-op and a run is exactly a one-process run.

Conventions the training loops follow:

* every rank builds the same model from the same seed; DDP broadcasts rank 0's weights at wrap time and
  averages gradients in ``backward``, so the replicas stay identical (:func:`replica_max_abs_diff` checks);
* each rank draws its own batches (its data seed is offset by the rank), so the effective batch size is
  ``batch_size * world_size``;
* only rank 0 (:attr:`DistInfo.is_main`) writes logs, metrics and checkpoints; every rank reads the same
  checkpoint when resuming, so a run killed under torchrun resumes under torchrun with the same command.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: its rank, the number of processes, the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment variables (0, 1, 0 without torchrun)."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun): {exc}") from None


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group (NCCL for CUDA, gloo for CPU); returns the info and this rank's device."""
    rank, world, local = env_world()
    if world <= 1:
        return DistInfo(), device
    if device.type == "cuda":
        if torch.cuda.device_count() <= local:
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                             "start at most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, backend), device


def shutdown(info: DistInfo) -> None:
    """Leave the process group (after a final barrier so no rank exits while others still communicate)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_finished_worker() -> None:
    """Under torchrun (``WORLD_SIZE`` > 1), end this worker now with exit code 0: its run returned, its group is left
    and its files are written. Output streams and logging handlers are flushed first; atexit handlers are skipped.

    Why: at interpreter teardown gloo's worker threads can still hold work objects whose destruction aborts the
    process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch PR 179291 describes it), which
    torchrun reports as a failed job after the work succeeded. Seen on the 2-core CPUs here about once in tens of runs.
    Without torchrun this returns and the process exits normally."""
    if env_world()[1] <= 1:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(0)


def run_on_ranks(body: Callable[[DistInfo, torch.device], T], device: torch.device) -> T:
    """Join the process group (a no-op without torchrun), run ``body(info, device)``, leave the group.

    Ranks other than 0 log warnings only (rank 0 speaks for the job), each line tagged ``[rank N]``. When ``body``
    raises, the group is torn down without the final barrier (the other ranks may never reach it) and the error
    propagates.
    """
    info, device = init_distributed(device)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
        tag_rank_logs(info.rank)
    try:
        out = body(info, device)
    except BaseException:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()
        raise
    shutdown(info)
    return out


class _RankTag(logging.Filter):
    """Prefixes ``[rank N] `` to each record's message, once however many handlers pass it on."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "rank_tagged", False):
            record.msg, record.rank_tagged = f"[rank {self.rank}] {record.msg}", True
        return True


def tag_rank_logs(rank: int, logger: logging.Logger | None = None) -> None:
    """Tag what this process logs through ``logger``'s handlers (the root logger's: Hydra's console and file) with
    ``[rank N]``: a warning each rank gives (a data check, a changed world size) then reads as N lines of N ranks,
    not as one message repeated."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, _RankTag) for f in handler.filters):
            handler.addFilter(_RankTag(rank))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Run the block on rank 0 first (e.g. generating or downloading data), then on the others."""
    if not info.is_main:
        barrier(info)
    try:
        yield
    finally:
        if info.is_main:
            barrier(info)


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when distributed, else ``module`` itself."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, output_device=ids[0] if ids else None,
               find_unused_parameters=find_unused_parameters)


def rank_seed(seed: int, info: DistInfo, stride: int = 7919) -> int:
    """The data seed of this rank: ``seed`` on rank 0 (one-process runs unchanged), offset on the others."""
    return int(seed) + stride * info.rank


def mean_over_ranks(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Each value averaged over the ranks (for logging); unchanged when not distributed."""
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if info.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.cpu().tolist())}


@torch.no_grad()
def replica_max_abs_diff(module: nn.Module, info: DistInfo) -> float:
    """Largest absolute difference between this rank's parameters and rank 0's (0.0 when not distributed)."""
    if not info.enabled:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max() if flat.numel() else torch.zeros((), dtype=torch.float64, device=flat.device)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())


def world_size_history(previous: Sequence[Mapping[str, int]] | None, saved_world: int | None, start: int,
                       world_size: int, batch_size_per_process: int) -> list[dict[str, int]]:
    """The run's data-parallel sizes, one entry per change: ``[{"from_step", "world_size", "effective_batch_size"}]``.

    ``previous`` is the list a resumed checkpoint holds (None for a fresh run, or a checkpoint written before this
    record: then ``saved_world``, its last session's process count, stands for every step before ``start``).
    This session's entry (from ``start``) is added when its world size differs from the last entry's; a resumed
    run with other sizes per session (the data stream and the effective batch size changed at each) can so be
    told from one that ran at one size (a record of the last session alone could not)."""
    entries = [dict(e) for e in previous] if previous else []
    if not entries and start > 0 and saved_world is not None:
        entries = [{"from_step": 0, "world_size": int(saved_world),
                    "effective_batch_size": int(saved_world) * batch_size_per_process}]
    if not entries or entries[-1]["world_size"] != world_size:
        entries.append({"from_step": int(start), "world_size": int(world_size),
                        "effective_batch_size": int(world_size) * batch_size_per_process})
    return entries
