"""EPOpt-style worst-case episode selection (Rajeswaran et al. 2017, "EPOpt: Learning Robust Neural Network Policies
Using Model Ensembles", Algorithm 1).

Per iteration EPOpt samples N physics parameter sets, rolls out one episode in each, and trains only on the episodes
whose return is at or below the epsilon-quantile of the batch's returns: the sample estimate of the conditional
value at risk CVaR_epsilon (the mean return of the worst epsilon fraction). For the first iterations it trains on
every episode (the paper's warm-up, so the policy first learns the task at all). The paper's default is
epsilon = 0.1 (REFERENCE.md, "Transfer under a gap").

Here the "iteration" is a batch of ``batch_episodes`` finished online episodes of stage 3, and "train on" means
"enter Cal-QL's replay buffer": the first ``warmup_batches`` batches are stored whole; afterwards only the
``ceil(epsilon * N)`` lowest-return episodes of each batch are (:func:`cvar_select`). Ties at the cut are broken by
episode order (the earlier episode first), so a selection is a pure function of the returns. The paper's policy
gradient uses the worst-episode set as its whole batch; with an off-policy learner the kept episodes join the buffer
and the offline data, which is the closest analogue (weighting instead of dropping is not built).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class EPOptSettings:
    """``transfer.epopt`` of ``configs/finetune.yaml``."""

    enabled: bool = False
    epsilon: float = 0.1  # keep the worst epsilon fraction of each batch (the paper's default 0.1)
    batch_episodes: int = 10  # finished episodes per selection batch (the paper's N)
    warmup_batches: int = 2  # first batches stored whole (the paper: all episodes in the first iterations)
    env_draws_physics: bool = False  # the env draws its own physics each reset (a user's env; reset info dr_params)

    def __post_init__(self) -> None:
        if not isinstance(self.env_draws_physics, bool):
            raise ValueError(f"finetune config: transfer.epopt.env_draws_physics={self.env_draws_physics!r}; "
                             "expected true or false")
        if isinstance(self.epsilon, bool) or not 0.0 < float(self.epsilon) <= 1.0:
            raise ValueError(f"finetune config: transfer.epopt.epsilon={self.epsilon!r}; expected a number in (0, 1]")
        for key in ("batch_episodes", "warmup_batches"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "batch_episodes" else 0):
                raise ValueError(f"finetune config: transfer.epopt.{key}={value!r}; expected an integer "
                                 f">= {1 if key == 'batch_episodes' else 0}")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> EPOptSettings:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown transfer.epopt key(s) {unknown}; valid keys: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


def cvar_select(returns: Sequence[float], epsilon: float) -> np.ndarray:
    """Indices of the ``ceil(epsilon * N)`` lowest returns (the worst-epsilon set whose mean is CVaR_epsilon).

    ``returns``: ``(N,)`` episode returns, N >= 1. Returns sorted indices ``(k,)``, ``k = max(1, ceil(epsilon N))``;
    ties are broken by index (a stable sort). Raises ``ValueError`` for an empty batch, a non-finite return or
    ``epsilon`` outside (0, 1]. Source: EPOpt Algorithm 1 (Rajeswaran et al. 2017), "select trajectories with
    return <= the epsilon-percentile".
    """
    r = np.asarray(returns, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("cvar_select: no returns")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"cvar_select: non-finite return in {r.tolist()}")
    if not 0.0 < float(epsilon) <= 1.0:
        raise ValueError(f"cvar_select: epsilon={epsilon!r}; expected a number in (0, 1]")
    k = max(1, math.ceil(float(epsilon) * r.size - 1e-9))
    return np.sort(np.argsort(r, kind="stable")[:k])


def cvar(returns: Sequence[float], epsilon: float) -> float:
    """CVaR_epsilon of a batch of returns: the mean of the worst ``ceil(epsilon * N)`` (:func:`cvar_select`)."""
    r = np.asarray(returns, dtype=np.float64).reshape(-1)
    return float(r[cvar_select(r, epsilon)].mean())


class EPOptFilter:
    """Holds finished episodes until a batch is full, then says which enter the replay buffer.

    ``add(item, episode_return)`` queues one; once ``batch_episodes`` are queued the batch is decided: warm-up
    batches keep everything, later ones :func:`cvar_select`. Returns ``[(item, kept)]`` in arrival order for every
    item decided (empty while the batch fills). A batch may span stage-3 checkpoints: :attr:`pending` is saved with
    :attr:`batches_done`, and a filter built from both decides as the uninterrupted one would. Episodes still
    pending when the run ends are never decided (no update would follow them).
    """

    def __init__(self, settings: EPOptSettings, batches_done: int = 0,
                 pending: Sequence[tuple[Any, float]] = ()) -> None:
        self.settings = settings
        self.batches_done = int(batches_done)
        self._pending: list[tuple[Any, float]] = [(item, float(r)) for item, r in pending]
        if len(self._pending) >= settings.batch_episodes:
            raise ValueError(f"EPOptFilter: {len(self._pending)} pending episodes; a batch holds fewer than "
                             f"batch_episodes={settings.batch_episodes} until it is decided")

    @property
    def pending(self) -> list[tuple[Any, float]]:
        """The queued ``(item, return)`` pairs of the batch being filled, in arrival order."""
        return list(self._pending)

    def add(self, item: Any, episode_return: float) -> list[tuple[Any, bool]]:
        self._pending.append((item, float(episode_return)))
        if len(self._pending) < self.settings.batch_episodes:
            return []
        batch, self._pending = self._pending, []
        if self.batches_done < self.settings.warmup_batches:
            keep = np.ones(len(batch), dtype=bool)
        else:
            keep = np.zeros(len(batch), dtype=bool)
            keep[cvar_select([r for _, r in batch], self.settings.epsilon)] = True
        self.batches_done += 1
        return [(item, bool(k)) for (item, _), k in zip(batch, keep)]


__all__ = ["EPOptFilter", "EPOptSettings", "cvar", "cvar_select"]
