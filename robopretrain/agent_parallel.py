"""Data-parallel training of the agents (CQL / Cal-QL, IQL, BC; with or without cameras) under ``torchrun``.

The agents own several parameter groups and optimisers (CQL: actor, critic, temperature, Lagrange multiplier in
one Adam; trained image encoders add the encoders' Adam) and take one ``backward`` of their summed losses per update, so
wrapping single modules in ``DistributedDataParallel`` does not fit. Instead every optimiser gets a *step pre-hook*
(:func:`average_gradients`) that all-reduces the gradients of all its parameters and divides by the number of
processes right before ``step()``: each rank computes its gradients on its own batch, every rank then applies the
same averaged gradient, so replicas that start identical stay identical (same parameters, same Adam moments, same
target networks). The agents' code is unchanged, and with one process nothing is registered.

* every rank builds the agent from the same seed (identical initial weights; :func:`broadcast_agent` makes sure),
  then draws batches from its own data seed, so the effective batch size is ``batch_size * world_size``;
* :func:`agent_replica_max_abs_diff` compares every tensor of the agent's state (weights, target networks,
  optimiser moments) with rank 0's: 0.0 when the replicas are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.utils.hooks import RemovableHandle

from robopretrain.distributed import DistInfo


def agent_optimizers(agent: Any) -> list[torch.optim.Optimizer]:
    """The optimisers one ``agent.update`` steps (:meth:`robopretrain.agent.Agent.optimizers`; a bare algorithm's
    ``optimizer``)."""
    if hasattr(agent, "optimizers"):
        return list(agent.optimizers())
    return [agent.optimizer]


def _comm_device(info: DistInfo, fallback: torch.device) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else fallback


def average_gradients(agent: Any, info: DistInfo) -> list[RemovableHandle]:
    """Register on each optimiser of ``agent`` a step pre-hook that averages its gradients over the ranks.

    One flat all-reduce per optimiser step (parameters without a gradient are skipped; which ones have none is the
    same on every rank). Returns the hook handles (``handle.remove()`` undoes it); none when not distributed.
    """
    if not info.enabled:
        return []
    world = float(info.world_size)

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault((g.dtype, g.device), []).append(g)
        for group in by_dtype.values():
            flat = _flatten_dense_tensors(group)
            dist.all_reduce(flat)
            flat.div_(world)
            for g, avg in zip(group, _unflatten_dense_tensors(flat, group)):
                g.copy_(avg)

    return [opt.register_step_pre_hook(hook) for opt in agent_optimizers(agent)]


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested state dict, in a fixed order (sorted keys)."""
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, Mapping):
        for k in sorted(tree, key=str):
            yield from _tensors(tree[k])
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


def _agent_modules(agent: Any) -> list[torch.nn.Module]:
    """The agent's modules (networks, target networks, encoders) for broadcasting in place."""
    if hasattr(agent, "modules") and callable(agent.modules) and not isinstance(agent, torch.nn.Module):
        return list(agent.modules())
    return [m for name in ("actor", "critic", "target_critic", "value")
            if isinstance(m := getattr(agent, name, None), torch.nn.Module)]


@torch.no_grad()
def broadcast_agent(agent: Any, info: DistInfo) -> None:
    """Copy rank 0's weights (modules, buffers, ``log_alpha``-style free parameters) to every rank."""
    if not info.enabled:
        return
    inner = getattr(agent, "core", agent)
    tensors = [t for m in _agent_modules(agent) for t in [*m.parameters(), *m.buffers()]]
    tensors += [p for name in ("log_alpha", "log_alpha_prime") if isinstance(p := getattr(inner, name, None),
                                                                            torch.Tensor)]
    for t in tensors:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def agent_replica_max_abs_diff(agent: Any, info: DistInfo) -> float:
    """Largest absolute difference between this rank's agent state (weights, targets, optimiser state) and rank 0's.

    Every rank must call it (a collective); 0.0 when not distributed.
    """
    if not info.enabled:
        return 0.0
    device = _comm_device(info, torch.device("cpu"))
    parts = [t.detach().reshape(-1).to(device, torch.float64) for t in _tensors(agent.state_dict())
             if t.is_floating_point() or t.dtype in (torch.int64, torch.int32)]
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max() if flat.numel() else torch.zeros((), dtype=torch.float64, device=device)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class RankFailed(RuntimeError):
    """A rank's part of a collective computation (:func:`gather_results`) raised; the message names each rank's."""


def gather_results(compute: Callable[[], Any], info: DistInfo) -> list[Any]:
    """``[compute() of rank 0, of rank 1, ...]`` on every rank, as :func:`gather_objects`; when ``compute`` raised on
    any rank, every rank raises :class:`RankFailed` naming each failed rank's exception, after the gather. A rank
    whose part failed used to skip the gather while the others waited in it: the job hung (a user env raising in
    stage 2's evaluation on one rank, whose warning said training goes on). ``KeyboardInterrupt`` and other
    ``BaseException`` pass through."""
    try:
        mine: Any = (True, compute())
    except Exception as exc:  # noqa: BLE001 - reported on every rank below
        mine = (False, f"rank {info.rank}: {type(exc).__name__}: {exc}")
    parts = gather_objects(mine, info)
    failed = [value for ok, value in parts if not ok]
    if failed:
        raise RankFailed("; ".join(failed))
    return [value for _, value in parts]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on at least one rank (a collective; ``flag`` itself when not distributed)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device(info, torch.device("cpu")))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


__all__ = ["RankFailed", "agent_optimizers", "agent_replica_max_abs_diff", "any_rank", "average_gradients",
           "broadcast_agent", "gather_objects", "gather_results"]
