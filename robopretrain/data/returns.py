"""Monte-Carlo returns-to-go, the V_mu(s) lower bound of Cal-QL.

Follows REFERENCE.md, Stage 3 ("Returns-to-go per episode") and Cal-QL's ``calc_return_to_go``:

* ``G_t = r_t + gamma * G_{t+1} * (1 - terminal_t)`` inside an episode;
* an episode that ends by truncation contributes 0 after its last step (no bootstrap);
* sparse all-failure rule: if every reward of an episode equals the negative reward ``r_neg`` (the episode
  never succeeded), every step gets ``r_neg / (1 - gamma)``, the value of failing forever;
* episode boundaries come from an episode-id array (a file's demos) and from terminals; only data without episode
  ids (a flat D4RL-style array, as Cal-QL's ``calc_return_to_go`` reads it) also splits where
  ``obs[t + 1] != next_obs[t]`` (a transition that does not continue the previous one starts a new episode). With ids
  the observations are not compared: a robot that logs ``next_obs`` apart from the next ``obs`` (sensor noise) would
  otherwise cut every demo into one-step episodes, each a failure forever under the sparse rule.

Reward scale and bias are applied by the caller, per algorithm config, *before* calling these functions;
:func:`scale_rewards` does it. Cal-QL's default for sparse {0, 1} rewards is ``reward * 10 - 5``, so the
negative reward passed as ``sparse_negative_reward`` is then ``0 * 10 - 5 = -5`` (see
:func:`sparse_negative_reward`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ObsLike = np.ndarray | Mapping[str, np.ndarray]


def scale_rewards(rewards: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """``rewards * scale + bias`` as float32 (the algorithm config's reward transform)."""
    return (np.asarray(rewards, dtype=np.float64) * scale + bias).astype(np.float32)


def is_sparse_success_reward(rewards: np.ndarray) -> bool:
    """Whether every reward in ``rewards`` (any shape) is 0 or 1: the sparse success reward of the data contract."""
    return bool(np.isin(np.asarray(rewards), (0.0, 1.0)).all())


def has_success_signal(rewards: np.ndarray) -> bool:
    """Whether an episode's rewards ``(T,)`` can tell success from failure: some reward > 0, or not all equal
    (OGBench's -1 per step and 0 at the goal). The rule of :func:`unrewarded_successes`, per episode."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    return bool(r.size and (np.any(r > 0) or np.ptp(r) > 0))


def sparse_negative_reward(scale: float, bias: float, raw_negative: float = 0.0) -> float:
    """The transformed reward of a failing step for sparse rewards (raw 0 by default): ``raw * scale + bias``."""
    return float(raw_negative * scale + bias)


def never_succeeds_return(scale: float, bias: float, discount: float) -> float:
    """Every step's return-to-go in a sparse-reward episode that never succeeds (the all-failure rule):
    ``sparse_negative_reward(scale, bias) / (1 - discount)``; ``-inf`` at ``discount >= 1`` (no such value)."""
    if discount >= 1.0:
        return -float("inf")
    return sparse_negative_reward(scale, bias) / (1.0 - discount)


def sparse_return_range(scale: float, bias: float, discount: float) -> tuple[float, float]:
    """The discounted returns any sparse {0, 1}-reward episode can have after the transform ``r * scale + bias``:
    every step's reward lies in ``[r_lo, r_hi]`` (the transformed 0 and 1), so a return lies in
    ``[min(0, r_lo) / (1 - discount), max(0, r_hi) / (1 - discount)]`` (Cal-QL's ``r * 10 - 5`` at discount 0.99:
    [-500, 500]). A Q-value outside it is extrapolation, not value. ``(-inf, inf)`` at ``discount >= 1``."""
    if discount >= 1.0:
        return -float("inf"), float("inf")
    lo, hi = sorted((sparse_negative_reward(scale, bias), sparse_negative_reward(scale, bias, 1.0)))
    return min(0.0, lo) / (1.0 - discount), max(0.0, hi) / (1.0 - discount)


def unrewarded_successes(rewards: np.ndarray, ep_meta: Sequence[Mapping[str, Any]]) -> int:
    """How many episodes ``ep_meta`` marks successful (``"success": true``) when the raw ``rewards`` ``(N,)`` carry no
    success signal at all (one constant, never positive: a recorder that never wrote the success reward); 0 when the
    rewards carry a signal (OGBench's -1/0 rewards do) or no episode is marked successful."""
    r = np.asarray(rewards)
    if r.size == 0 or np.any(r > 0) or not np.all(r == r.flat[0]):
        return 0
    return sum(bool(m.get("success", False)) for m in ep_meta)


def breaks_inside_episodes(obs: ObsLike, next_obs: ObsLike, episode_ids: np.ndarray, atol: float = 1e-6) -> int:
    """How many steps ``t`` of the same episode (``episode_ids[t] == episode_ids[t + 1]``) have ``obs[t + 1]`` apart
    from ``next_obs[t]`` by more than ``atol``: 0 for demos whose ``next_obs`` is the next ``obs`` shifted. Such breaks
    do not split an episode (module docstring); a caller reports them."""
    ids = np.asarray(episode_ids).reshape(-1)
    if len(ids) < 2:
        return 0
    return int(np.count_nonzero(_obs_mismatch(obs, next_obs, atol) & (ids[1:] == ids[:-1])))


def copies_of_obs(obs: ObsLike, next_obs: ObsLike, atol: float = 1e-6) -> int:
    """How many rows ``t`` have ``next_obs[t]`` within ``atol`` of ``obs[t]`` itself (every part): a file whose
    ``next_obs`` was written from the same step instead of the next one has (nearly) all of them."""
    return int(np.count_nonzero(~_rows_differ(obs, next_obs, atol)))


def _obs_mismatch(obs: ObsLike, next_obs: ObsLike, atol: float) -> np.ndarray:
    """Boolean ``(N - 1,)``: True where ``obs[t + 1]`` differs from ``next_obs[t]``."""
    return _rows_differ(_rows(obs, slice(1, None)), _rows(next_obs, slice(None, -1)), atol)


def _rows(x: ObsLike, rows: slice) -> ObsLike:
    """``x[rows]`` of an array or of every part of a dict."""
    return {k: np.asarray(v)[rows] for k, v in x.items()} if isinstance(x, Mapping) else np.asarray(x)[rows]


def _rows_differ(a: ObsLike, b: ObsLike, atol: float) -> np.ndarray:
    """Boolean ``(N,)``: True where row ``a[t]`` differs from ``b[t]`` by more than ``atol`` in any part
    (integer arrays such as images: any difference, compared without float64 copies)."""
    if isinstance(a, Mapping):
        if not isinstance(b, Mapping) or set(a) != set(b) or not a:
            raise ValueError("obs and next_obs must both be arrays or dicts with the same keys (at least one)")
        return np.logical_or.reduce([_rows_differ(a[k], b[k], atol) for k in sorted(a)])
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"obs {a.shape} and next_obs {b.shape} must have the same shape")
    if a.dtype.kind in "biu" and b.dtype.kind in "biu" and atol < 1:  # images: exact, without float64 copies (8x)
        return np.any((a != b).reshape(len(a), -1), axis=1)
    diff = np.abs(a.reshape(len(a), -1).astype(np.float64) - b.reshape(len(b), -1).astype(np.float64))
    return np.any(diff > atol, axis=1)


def episode_starts(
    n: int,
    *,
    episode_ids: np.ndarray | None = None,
    terminals: np.ndarray | None = None,
    obs: ObsLike | None = None,
    next_obs: ObsLike | None = None,
    atol: float = 1e-6,
) -> np.ndarray:
    """Boolean ``(n,)`` marking the first step of each episode.

    A step ``t + 1`` starts a new episode when the episode id changes, when step ``t`` is terminal, or
    (when ``obs`` and ``next_obs`` are given and ``episode_ids`` is not) when ``obs[t + 1]`` differs from
    ``next_obs[t]`` by more than ``atol`` (module docstring).
    """
    starts = np.zeros(n, dtype=bool)
    if n == 0:
        return starts
    starts[0] = True
    if episode_ids is not None:
        ids = np.asarray(episode_ids)
        if ids.shape != (n,):
            raise ValueError(f"episode_ids must have shape ({n},), got {ids.shape}")
        starts[1:] |= ids[1:] != ids[:-1]
    if terminals is not None:
        starts[1:] |= np.asarray(terminals).reshape(n)[:-1] > 0
    if obs is not None and next_obs is not None and n > 1 and episode_ids is None:
        starts[1:] |= _obs_mismatch(obs, next_obs, atol)
    return starts


def next_actions_of(actions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The data's next action per transition, ``(N, A)``: ``actions[t + 1]`` inside an episode, the step's own action
    at an episode's last step (``starts``: :func:`episode_starts`). ReBRAC's critic penalty reads it; at a true
    terminal the target masks it, at a truncation it stands in for the unseen next action."""
    a = np.asarray(actions)
    out = a.copy()
    if len(a) > 1:
        inside = ~np.asarray(starts, dtype=bool)[1:]  # step t + 1 continues step t
        out[:-1][inside] = a[1:][inside]
    return out


def episode_returns_to_go(
    rewards: np.ndarray,
    terminals: np.ndarray,
    gamma: float,
    sparse_negative_reward: float | None = None,
) -> np.ndarray:
    """Returns-to-go of ONE episode (rewards already scaled/biased); float32 ``(T,)``.

    With ``sparse_negative_reward`` set, an episode whose rewards all equal it gets
    ``sparse_negative_reward / (1 - gamma)`` at every step (requires ``gamma < 1``). "Equal" allows the float32
    round-off of :func:`scale_rewards` (a relative 1e-6, and 1e-6 near 0): a bias such as -100.3 is stored
    3e-6 away from itself, which an absolute 1e-6 alone missed, giving such episodes the plain discounted sum.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    d = np.asarray(terminals, dtype=np.float64).reshape(-1)
    if r.shape != d.shape:
        raise ValueError(f"rewards {r.shape} and terminals {d.shape} must have the same length")
    if len(r) == 0:
        return np.zeros(0, dtype=np.float32)
    if sparse_negative_reward is not None and np.allclose(r, sparse_negative_reward, rtol=1e-6, atol=1e-6):
        if not gamma < 1.0:
            raise ValueError(f"the all-failure rule r_neg / (1 - gamma) needs gamma < 1, got gamma={gamma}")
        return np.full(len(r), sparse_negative_reward / (1.0 - gamma), dtype=np.float32)
    out = np.empty(len(r), dtype=np.float64)
    running = 0.0  # truncation (or the end of the data) contributes 0 after the last step
    rl, dl = r.tolist(), d.tolist()
    for t in range(len(rl) - 1, -1, -1):
        running = rl[t] + gamma * running * (1.0 - dl[t])
        out[t] = running
    return out.astype(np.float32)


def returns_to_go(
    rewards: np.ndarray,
    terminals: np.ndarray,
    gamma: float,
    *,
    episode_ids: np.ndarray | None = None,
    obs: ObsLike | None = None,
    next_obs: ObsLike | None = None,
    sparse_negative_reward: float | None = None,
    atol: float = 1e-6,
) -> np.ndarray:
    """Returns-to-go for a flat array of transitions made of consecutive episodes; float32 ``(N,)``.

    Boundaries are found with :func:`episode_starts`; each episode is handled by
    :func:`episode_returns_to_go`. Rewards must already carry the algorithm's scale and bias. Raises ``ValueError``
    when ``rewards`` and ``terminals`` differ in length.
    """
    r = np.asarray(rewards).reshape(-1)
    if np.size(terminals) != len(r):
        raise ValueError(f"returns_to_go: rewards ({len(r)},) and terminals ({np.size(terminals)},) must have the "
                         "same length")
    starts = episode_starts(len(r), episode_ids=episode_ids, terminals=terminals, obs=obs, next_obs=next_obs, atol=atol)
    bounds = np.append(np.flatnonzero(starts), len(r))
    d = np.asarray(terminals).reshape(-1)
    out = np.empty(len(r), dtype=np.float32)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out[lo:hi] = episode_returns_to_go(r[lo:hi], d[lo:hi], gamma, sparse_negative_reward)
    return out
