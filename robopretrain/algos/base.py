"""What every stage-2/3 learner shares: one optimiser step over the sum of its losses, the soft target update,
acting, and a checkpoint of named networks and tensors.

A learner (:class:`robopretrain.algos.bc.BC`, :class:`~robopretrain.algos.iql.IQL`,
:class:`~robopretrain.algos.cql.CQL`, ...) subclasses :class:`OfflineAlgorithm`, builds its networks and ONE optimiser
(parameter groups per network) in ``__init__``, and implements ``compute_losses(batch, with_metrics) -> (losses,
metrics)`` where every loss only has gradients for its own network (targets detached). ``update`` then takes one
backward pass of the sum, one optimiser step, and Polyak-averages ``target_critic`` toward ``critic`` when the
learner has both. ``STATE_MODULES`` / ``STATE_TENSORS`` name what ``state_dict`` saves besides the config, the sizes,
the optimiser and the update count.

The helpers below (:func:`make_adam`, :func:`soft_update_`, :func:`metrics_to_floats`, :func:`require_keys`) are the
same for every learner and for :class:`robopretrain.agent.Agent`, which runs the same step with its encoders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def make_adam(groups: list[dict[str, Any]]) -> torch.optim.Adam:
    """One Adam over parameter groups; fused kernels where this torch build supports them."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups)  # torch picks foreach kernels where available


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a saved optimizer state (Adam's moments and step counts) into ``optimizer`` while keeping its param
    groups' hyperparameters (learning rate, betas, fused, ...): the agent's config sets them, not the checkpoint's.
    ``torch.optim.Optimizer.load_state_dict`` alone restores the saved groups' learning rates, so stage 3 keeping
    stage 2's optimizer (``online.keep_optimizer``) trained at stage 2's rates while its config and meta.json
    named its own. An exact resume (the same config) is unchanged; a resume given another learning rate trains at
    the given one."""
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, hyper in zip(optimizer.param_groups, configured):
        group.update(hyper)


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- (1 - tau) * target + tau * source`` in one foreach op."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def metrics_to_floats(metrics: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Convert scalar tensors to floats with one device sync."""
    if not metrics:
        return {}
    values = torch.stack([m.detach().float().reshape(()) for m in metrics.values()]).tolist()
    return dict(zip(metrics.keys(), values))


def require_keys(batch: Mapping[str, Any], keys: Iterable[str], who: str) -> None:
    """Raise a KeyError naming the missing batch keys."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{who}.update: batch is missing {missing}; it has {sorted(batch)}")


class OfflineAlgorithm:
    """Base of the learners: ``update / update_targets / compile / act / q_values / state_dict / load_state_dict``.

    Subclasses set ``self.cfg`` (a dataclass), ``self.obs_dim``, ``self.act_dim``, ``self.device``, ``self.actor``,
    ``self.optimizer`` and ``self.num_updates = 0``, and implement :meth:`compute_losses` and :meth:`algo_name`.
    """

    STATE_MODULES: ClassVar[tuple[str, ...]] = ("actor",)  # nn.Module attributes saved by name
    STATE_TENSORS: ClassVar[tuple[str, ...]] = ()  # tensor / nn.Parameter attributes saved by name

    cfg: Any
    obs_dim: int
    act_dim: int
    device: torch.device
    actor: nn.Module
    optimizer: torch.optim.Optimizer
    num_updates: int

    name: ClassVar[str] = ""  # the registry name, where one class is one algorithm
    CUDA_GRAPHS: ClassVar[bool] = True  # step_tensors does device work only (robopretrain.algos.cuda_graph)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A learner must compute its losses and name itself (``name``, or an ``algo_name`` override as CQL's)."""
        super().__init_subclass__(**kwargs)
        if not callable(getattr(cls, "compute_losses", None)):
            raise TypeError(f"{cls.__name__}: a learner defines compute_losses(batch, with_metrics) -> (losses, "
                            "metrics)")
        if not cls.name and cls.algo_name is OfflineAlgorithm.algo_name:
            raise TypeError(f"{cls.__name__}: a learner sets its registry name (class attribute name)")

    def _init_optimizer(self, groups: list[tuple[Any, float]]) -> None:
        """``self.optimizer``: one Adam (:func:`make_adam`) over ``(module or parameters, learning rate)`` groups in
        the given order; the update count starts at 0."""
        self.optimizer = make_adam([{"params": list(p.parameters()) if isinstance(p, nn.Module) else list(p), "lr": lr}
                                    for p, lr in groups])
        self.num_updates = 0

    def algo_name(self) -> str:
        """The registry name stored in checkpoints (``"bc"``, ``"iql"``, ``"cql"``, ``"calql"``, ...)."""
        return self.name

    def _losses(self, batch: Mapping[str, torch.Tensor], with_metrics: bool):
        return getattr(self, "_loss_fn", self.compute_losses)(batch, with_metrics)

    def update(self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True) -> dict[str, float]:
        """One gradient step on every parameter group, then the soft target update; returns float metrics."""
        metrics = self.step_tensors(batch, with_metrics)
        self.num_updates += 1
        return metrics_to_floats(metrics)

    def step_tensors(self, batch: Mapping[str, torch.Tensor], with_metrics: bool) -> dict[str, torch.Tensor]:
        """The update's device work and nothing else: losses, one backward, one optimiser step, the target update;
        returns the metrics as tensors (no host sync, no counter), so that it can be captured in a CUDA graph
        (:mod:`robopretrain.algos.cuda_graph`)."""
        losses, metrics = self._losses(batch, with_metrics)
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()
        self.update_targets()
        return metrics

    def cuda_graph_period(self) -> int:
        """How many consecutive updates differ in what Python does (1: every update runs the same kernels); a
        CUDA-graphed update (:mod:`robopretrain.algos.cuda_graph`) captures one graph per phase."""
        return 1

    def eager_updates(self) -> int:
        """How many first updates run other kernels than the rest (CQL's BC warm start): a CUDA-graphed update runs
        them eagerly and captures after them. 0 for most learners."""
        return 0

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser an update steps."""
        return [self.optimizer]

    def update_targets(self) -> None:
        """After each step (before ``num_updates`` grows): Polyak-average ``target_critic`` toward ``critic`` when the
        learner has one; learners with other targets (TD3's delayed actor and critics) override this."""
        target = getattr(self, "target_critic", None)
        if target is not None:
            soft_update_(target, self.critic, self.cfg.tau)

    def compile(self, fallback: bool = True, **kwargs: Any) -> None:
        """Compute the losses with ``torch.compile(compute_losses, **kwargs)`` (TorchInductor: fused C++ kernels on
        a CPU, Triton on a GPU; the backward is compiled with it). The same math: measured equal to eager to 0.0
        for IQL on CPU (``benchmarks/peers.py --compile``); learners that draw random numbers inside the loss (CQL's
        sampled actions) draw other ones. Compiling takes tens of seconds at the first update (and again at the
        first one with the other ``with_metrics``); inductor's cache makes later runs faster.

        ``fallback``: if compiling fails at the first call (no C++ compiler on the machine, an op inductor cannot
        compile), log a warning and compute the losses eagerly from then on; ``False`` raises instead."""
        compiled = torch.compile(self.compute_losses, **kwargs)
        if not fallback:
            self._loss_fn = compiled
            return

        def losses(batch: Mapping[str, torch.Tensor], with_metrics: bool):
            try:
                return compiled(batch, with_metrics)
            except Exception as exc:  # noqa: BLE001 - any compile failure: the eager losses are the same math
                log.warning("%s: torch.compile failed (%s: %s); computing the losses eagerly", self.algo_name(),
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self._loss_fn = self.compute_losses
                return self.compute_losses(batch, with_metrics)

        self._loss_fn = losses

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """Action(s) ``(A,)`` or ``(B, A)`` in [-1, 1] for one state ``(S,)`` or a batch ``(B, S)``."""
        return self.actor.act(obs, deterministic)

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``min_e Q_e(s, a)`` ``(B,)`` for evaluation; raises AttributeError for a learner without a critic."""
        return self.critic(obs.to(self.device), actions.to(self.device)).min(dim=0).values

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser state and config; loadable with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {
            "algo": self.algo_name(), "config": asdict(self.cfg), "obs_dim": self.obs_dim, "act_dim": self.act_dim,
        }
        state.update({name: getattr(self, name).state_dict() for name in self.STATE_MODULES})
        state.update({name: getattr(self, name).detach().clone() for name in self.STATE_TENSORS})
        state["optimizer"] = self.optimizer.state_dict()
        state["num_updates"] = self.num_updates
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; raises ValueError when it was saved for other sizes."""
        if (int(state["obs_dim"]), int(state["act_dim"])) != (self.obs_dim, self.act_dim):
            raise ValueError(
                f"checkpoint is for obs_dim={state['obs_dim']}, act_dim={state['act_dim']}; "
                f"this agent has {self.obs_dim}, {self.act_dim}"
            )
        for name in self.STATE_MODULES:
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            for name in self.STATE_TENSORS:
                getattr(self, name).copy_(state[name])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.num_updates = int(state["num_updates"])
