"""The statistics of the claims table (issue 12): a difference of means with a hierarchical bootstrap interval, the
performance dip at the offline -> online switch, and cumulative regret over evaluations.

It lives in ``benchmarks/`` next to :mod:`bench_utils` because only the benchmark scripts use it (the installed
package logs per-evaluation success; statistics over seeds and methods are a benchmark's job) and it builds on
``bench_utils``' two-level bootstrap (:func:`bench_utils.seeds_then_episodes_means`) rather than a second copy.
Scripts run as ``python benchmarks/<name>.py`` import it from their own folder.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils; appended so benchmarks/ shadows no package
from bench_utils import seed_arrays, seeds_then_episodes_means  # noqa: E402


def difference_ci(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], resamples: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Difference of means ``mean(a) - mean(b)`` and its percentile bootstrap interval over seeds and episodes.

    ``a``, ``b``: one sequence of per-episode outcomes (0/1 success, or a return) per seed, for two methods whose
    seeds are independent runs (unpaired). The mean of a method is the mean over seeds of each seed's episode mean
    (every seed weighs the same, however many episodes it has). Each resample draws, in each method separately, the
    seeds with replacement and then the episodes within each drawn seed (two-level bootstrap for hierarchical data,
    Davison & Hinkley 1997, sec. 3.8), and takes the difference of the two resampled means; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of those differences.

    Returns ``(difference, low, high)``. Raises ValueError when a method has no seed, a seed has no episode or
    ``confidence`` is not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"difference_ci: confidence={confidence}; expected in (0, 1)")
    arrays_a, arrays_b = seed_arrays(a, "difference_ci (a)"), seed_arrays(b, "difference_ci (b)")
    rng = np.random.default_rng(seed)
    diffs = seeds_then_episodes_means(arrays_a, resamples, rng) - seeds_then_episodes_means(arrays_b, resamples, rng)
    diff = float(np.mean([x.mean() for x in arrays_a]) - np.mean([x.mean() for x in arrays_b]))
    tail = 100 * (1 - confidence) / 2
    return diff, float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail))


def welch_ci(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]],
             confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Welch's t interval of ``mean(a) - mean(b)`` on the per-seed means (each seed's episode mean is one
    observation): a seed-level check of :func:`difference_ci`, whose percentile bootstrap over as few as 3 seeds per
    side is anti-conservative (claims_encoder_shifts protocol, amendment 2). Degrees of freedom by
    Welch-Satterthwaite, quantiles from ``scipy.stats.t`` (equal to ``scipy.stats.ttest_ind(equal_var=False)``).

    ``a``, ``b``: per seed, its per-episode outcomes (as :func:`difference_ci`). Returns ``(difference, low, high,
    p)``, two-sided p; when both sides' seed means are constant the interval is the difference itself (p 0 or 1).
    Raises ValueError when a side has fewer than 2 seeds (no between-seed variance) or a seed has no episode.
    """
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"welch_ci: confidence={confidence}; expected in (0, 1)")
    ma = np.array([x.mean() for x in seed_arrays(a, "welch_ci (a)")])
    mb = np.array([x.mean() for x in seed_arrays(b, "welch_ci (b)")])
    if len(ma) < 2 or len(mb) < 2:
        raise ValueError(f"welch_ci: {len(ma)} and {len(mb)} seeds; needs at least 2 per side")
    diff = float(ma.mean() - mb.mean())
    va, vb = ma.var(ddof=1) / len(ma), mb.var(ddof=1) / len(mb)  # squared standard errors of the two means
    if va + vb <= 1e-24:  # no between-seed spread on either side: no t statistic, the difference is exact
        return diff, diff, diff, float(diff == 0)
    dof = (va + vb) ** 2 / (va ** 2 / (len(ma) - 1) + vb ** 2 / (len(mb) - 1))  # Welch-Satterthwaite
    se = float(np.sqrt(va + vb))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return diff, diff - half, diff + half, float(2 * stats.t.sf(abs(diff) / se, dof))


def seed_level_verdict(ci: Sequence[float], welch: Sequence[float]) -> str:
    """The verdict when both the bootstrap interval ``ci`` and the Welch interval ``welch`` must exclude 0 on the
    same side (claims_encoder_shifts protocol, amendment 2): "reproduced", "reversed" or "not shown"."""
    first, second = verdict(*ci), verdict(*welch)
    return first if first == second else "not shown"


def _curve(env_steps: Sequence[float], values: Sequence[float], who: str) -> tuple[np.ndarray, np.ndarray]:
    steps, vals = np.asarray(env_steps, dtype=float), np.asarray(values, dtype=float)
    if steps.ndim != 1 or steps.shape != vals.shape or steps.size == 0:
        raise ValueError(f"{who}: env_steps {steps.shape} and values {vals.shape} must be equal-length, non-empty 1-D")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"{who}: env_steps must increase strictly")
    if not np.all(np.isfinite(vals)):  # a missing evaluation: min() and sums would hide or spread it
        raise ValueError(f"{who}: values must be finite; evaluation(s) {np.flatnonzero(~np.isfinite(vals)).tolist()} "
                         "are not (a missing evaluation? leave it out with its env step)")
    return steps, vals


def performance_dip(env_steps: Sequence[float], values: Sequence[float], window: float) -> float:
    """How far success (or return) falls below its value at the switch within the first ``window`` env steps.

    The unlearning the Cal-QL paper (Nakamoto et al. 2023, its motivating section) shows for CQL: the value at the
    switch ``v_0`` is the evaluation at the first entry of ``env_steps`` (the offline policy, before any online
    step); the dip is ``max(0, v_0 - min{v_k : 0 < env_steps[k] - env_steps[0] <= window})``, in the units of
    ``values`` (a success rate, or a return). 0 when no evaluation falls below ``v_0`` or none lies in the window.

    ``env_steps`` (K,) strictly increasing, ``values`` (K,) finite. Raises ValueError on mismatched shapes,
    non-increasing steps, a value that is not finite (a NaN evaluation hid the dip) or ``window <= 0``.
    """
    if window <= 0:
        raise ValueError(f"performance_dip: window={window}; expected > 0 env steps")
    steps, vals = _curve(env_steps, values, "performance_dip")
    since_switch = steps - steps[0]
    inside = (since_switch > 0) & (since_switch <= window)
    if not inside.any():
        return 0.0
    return float(max(0.0, vals[0] - vals[inside].min()))


def cumulative_regret(env_steps: Sequence[float], success: Sequence[float]) -> dict[str, float]:
    """Cumulative regret ``sum_k (1 - success_k)`` over the evaluations of a fine-tuning run, and their spacing.

    Evaluation-based, after the Cal-QL paper's fine-tuning regret (Nakamoto et al. 2023; lower is better, an agent
    at success 1 from the start has regret 0; ``mean_regret`` is the average over the evaluations). The paper and
    CORL average ``1 - success`` over the *training* episodes (``finetune.online.training_regret``); this one
    averages the periodic evaluations, including the one at the switch (the offline policy, before any online
    step), which weighs ``1 / evaluations``. A sum over evaluations depends on how often one evaluates, so the
    evaluations must be equally spaced and the spacing is returned with it: with evaluations at both ends of a run
    of length T = (K - 1) * spacing, ``regret * spacing`` is a Riemann sum over K points, not the integral
    ``integral_0^T (1 - success) d(env steps)`` (at success 0 throughout it gives K * spacing, the integral T).

    ``env_steps`` (K,) strictly increasing and equally spaced (to 1e-9 relative), ``success`` (K,) success rates in
    [0, 1]. Returns ``{"regret", "mean_regret", "evaluations", "spacing"}`` (spacing in env steps; 0 for K = 1).
    Raises ValueError on mismatched shapes, non-increasing or unequal spacing, or a success rate outside [0, 1]
    (NaN included).
    """
    steps, succ = _curve(env_steps, success, "cumulative_regret")
    if np.any((succ < 0) | (succ > 1)):
        raise ValueError("cumulative_regret: success rates must lie in [0, 1]")
    gaps = np.diff(steps)
    if gaps.size and not np.allclose(gaps, gaps[0], rtol=1e-9, atol=0.0):
        raise ValueError(f"cumulative_regret: evaluations are not equally spaced (gaps {sorted(set(gaps.tolist()))}); "
                         "the sum over evaluations would weigh them unevenly")
    regret = float(np.sum(1.0 - succ))
    return {"regret": regret, "mean_regret": regret / succ.size, "evaluations": int(succ.size),
            "spacing": float(gaps[0]) if gaps.size else 0.0}


def verdict(low: float, high: float) -> str:
    """The claims protocols' reading of a 95% interval ``[low, high]`` of a difference ``claimed - baseline``:
    "reproduced" when it lies above 0, "reversed" when below 0, otherwise "not shown"."""
    if low > 0:
        return "reproduced"
    if high < 0:
        return "reversed"
    return "not shown"


if __name__ == "__main__":  # run by itself it did nothing and exited 0
    raise SystemExit("error: claims_metrics.py holds the claims table's statistics, used by benchmarks/claims.py: "
                     "run python benchmarks/claims.py --help")
