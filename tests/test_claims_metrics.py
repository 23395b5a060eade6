"""benchmarks/claims_metrics.py on hand-made inputs: the bootstrap interval of a difference (seeds, then episodes),
the performance dip at the offline -> online switch and cumulative regret with its evaluation spacing."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cm():
    # loaded from its file (benchmarks/ on sys.path would shadow the video_pretrain package); it appends its own
    # folder for bench_utils
    spec = importlib.util.spec_from_file_location("claims_metrics", ROOT / "benchmarks" / "claims_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_utils", None)


# ------------------------------------------------------------------------------------------ difference of means
def test_difference_weighs_seeds_equally_and_has_the_sign_a_minus_b(cm):
    a = [[1.0], [0.0, 0.0, 0.0]]  # seed means 1 and 0: mean 0.5 (pooled episodes would give 0.25)
    b = [[0.0, 0.0], [0.0]]
    diff, lo, hi = cm.difference_ci(a, b, resamples=400)
    assert diff == 0.5
    back, lo_b, hi_b = cm.difference_ci(b, a, resamples=400)
    assert back == -0.5 and lo_b <= -0.5 <= hi_b


def test_interval_resamples_seeds(cm):
    """Episodes agree within each seed, seeds disagree: only resampling seeds gives width. Resampled means of a lie
    in {0, 0.5, 1} with probabilities 1/4, 1/2, 1/4, so the 2.5/97.5 percentiles are 0 and 1."""
    diff, lo, hi = cm.difference_ci([[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0]], resamples=2000)
    assert (diff, lo, hi) == (0.5, 0.0, 1.0)


def test_interval_resamples_episodes_within_a_seed(cm):
    """One seed per method: only resampling episodes gives width (a resampled mean of [1, 0] is 0, 0.5 or 1)."""
    diff, lo, hi = cm.difference_ci([[1.0, 0.0]], [[0.25, 0.25]], resamples=2000)
    assert (diff, lo, hi) == (0.25, -0.25, 0.75)


def test_interval_of_identical_methods_is_a_point_and_narrows_with_confidence(cm):
    assert cm.difference_ci([[1.0, 1.0]] * 3, [[0.0, 0.0]] * 3, resamples=50) == (1.0, 1.0, 1.0)
    data_a, data_b = [[1, 0, 1, 1], [0, 1, 1], [1, 1, 1, 0, 1]], [[0, 0, 1], [1, 0, 0, 0], [0, 1]]
    _, lo95, hi95 = cm.difference_ci(data_a, data_b, confidence=0.95)
    _, lo50, hi50 = cm.difference_ci(data_a, data_b, confidence=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_interval_is_the_central_percentiles_of_the_bootstrap_differences(cm):
    """Outcomes with many distinct resampled means (returns), so that each percentile is its own number: the interval
    is the 2.5 / 97.5 (at 95%) or 25 / 75 (at 50%) percentile of the bootstrap differences, drawn a then b."""
    bench_utils = sys.modules["bench_utils"]  # loaded by claims_metrics
    a, b = [[0.1, 0.7, 0.3, 0.9], [0.2, 0.8], [0.5, 0.6, 0.4]], [[0.3, 0.1], [0.6, 0.2, 0.0]]
    for confidence, percentiles in ((0.95, [2.5, 97.5]), (0.5, [25.0, 75.0])):
        _, lo, hi = cm.difference_ci(a, b, resamples=500, confidence=confidence, seed=3)
        rng = np.random.default_rng(3)
        diffs = (bench_utils.seeds_then_episodes_means(bench_utils.seed_arrays(a), 500, rng)
                 - bench_utils.seeds_then_episodes_means(bench_utils.seed_arrays(b), 500, rng))
        assert [lo, hi] == pytest.approx(np.percentile(diffs, percentiles).tolist(), rel=1e-9, abs=1e-12)
        assert np.percentile(diffs, 0.5 * percentiles[0]) < lo  # not a wider tail


def test_difference_refuses_empty_input(cm):
    with pytest.raises(ValueError, match=r"difference_ci \(b\): need at least one seed"):
        cm.difference_ci([[1.0]], [[1.0], []])
    with pytest.raises(ValueError, match="confidence"):
        cm.difference_ci([[1.0]], [[1.0]], confidence=95)
    # a NaN outcome (a diverged run) gave (nan, nan, nan) and the verdict "not shown" without a word
    with pytest.raises(ValueError, match=r"difference_ci \(a\): seed\(s\) \[1\] hold a non-finite outcome \(\[nan\]\)"):
        cm.difference_ci([[1.0], [0.0, float("nan")]], [[1.0]])
    with pytest.raises(ValueError, match=r"welch_ci \(b\): seed\(s\) \[0\] hold a non-finite outcome \(\[inf\]\)"):
        cm.welch_ci([[1.0], [0.5]], [[float("inf")], [0.5]])


# ------------------------------------------------------------------------------------------------------ the dip
def test_dip_is_the_largest_fall_below_the_switch_value_within_the_window(cm):
    steps, success = [1000, 1010, 1020, 1030, 1040], [0.8, 0.5, 0.3, 0.9, 0.0]
    assert cm.performance_dip(steps, success, window=20) == pytest.approx(0.5)  # steps 1010, 1020 (relative)
    assert cm.performance_dip(steps, success, window=10) == pytest.approx(0.3)  # step 1010 only
    assert cm.performance_dip(steps, success, window=40) == pytest.approx(0.8)
    assert cm.performance_dip(steps, success, window=5) == 0.0  # no evaluation in the window
    assert cm.performance_dip([0, 10, 20], [0.2, 0.4, 0.9], window=20) == 0.0  # never below the switch value
    with pytest.raises(ValueError, match="increase"):
        cm.performance_dip([0, 10, 10], [0.2, 0.4, 0.9], window=20)
    # evaluations one env step apart, a window of one step: the next evaluation is inside it
    assert cm.performance_dip([0, 1, 2], [0.6, 0.1, 0.0], window=1) == pytest.approx(0.5)
    # a missing (NaN) evaluation in the window made the dip 0.0 (max(0, nan)), hiding the 0.8 fall before it
    for values in ([1.0, 0.2, np.nan], [np.nan, 0.2, 0.4]):
        with pytest.raises(ValueError, match=r"values must be finite; evaluation\(s\) \[[02]\]"):
            cm.performance_dip([0, 10, 20], values, window=20)


# ------------------------------------------------------------------------------------------------------- regret
def test_regret_accepts_spacing_equal_to_the_documented_1e9_relative_tolerance(cm):
    """Evaluation steps logged as floats: gaps within 1e-9 (relative) count as equal, 2e-9 apart do not."""
    assert cm.cumulative_regret([0.0, 1e6, 2e6 + 7e-4], [0.0, 0.5, 1.0])["evaluations"] == 3  # 7e-10 relative
    with pytest.raises(ValueError, match="not equally spaced"):
        cm.cumulative_regret([0.0, 1e6, 2e6 + 2e-3], [0.0, 0.5, 1.0])  # 2e-9 relative


def test_regret_sums_one_minus_success_and_states_the_spacing(cm):
    out = cm.cumulative_regret([0, 5000, 10000], [0.5, 1.0, 0.25])
    assert out == {"regret": 1.25, "mean_regret": pytest.approx(1.25 / 3), "evaluations": 3, "spacing": 5000.0}
    assert cm.cumulative_regret([0, 5000], [1.0, 1.0])["regret"] == 0.0
    with pytest.raises(ValueError, match="not equally spaced"):
        cm.cumulative_regret([0, 5000, 15000], [0.5, 1.0, 0.25])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cm.cumulative_regret([0, 5000], [0.5, 25.0])  # a percentage passed as a rate
    with pytest.raises(ValueError, match="finite"):
        cm.cumulative_regret([0, 5000, 10000], [0.5, np.nan, 1.0])  # was a regret of nan
    with pytest.raises(ValueError, match="not equally spaced"):
        cm.cumulative_regret([0, 10, 21], [0.5, 1.0, 0.25])  # an evaluation one env step late
    assert cm.cumulative_regret([0], [0.25]) == {"regret": 0.75, "mean_regret": 0.75, "evaluations": 1,
                                                  "spacing": 0.0}  # the switch alone


# ------------------------------------------------------------------------------- Welch's t on seed means
def test_welch_interval_by_hand_and_the_verdict_needing_both(cm):
    a = [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]  # seed means 0.5, 0.75, 0.25
    b = [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]  # 0, 0.5, 0.25
    diff, lo, hi, p = cm.welch_ci(a, b)
    va, vb = np.var([0.5, 0.75, 0.25], ddof=1) / 3, np.var([0.0, 0.5, 0.25], ddof=1) / 3
    se, dof = np.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)  # Welch-Satterthwaite: here 4.0
    from scipy import stats

    half = stats.t.ppf(0.975, dof) * se
    assert diff == pytest.approx(0.25) and (lo, hi) == pytest.approx((0.25 - half, 0.25 + half))
    assert p == pytest.approx(2 * stats.t.sf(0.25 / se, dof))
    assert cm.welch_ci([[1.0], [1.0]], [[0.0], [0.0, 0.0]])[1:] == (1.0, 1.0, 0.0)  # no spread: a point
    with pytest.raises(ValueError, match="at least 2 per side"):
        cm.welch_ci([[1.0]], b)
    assert cm.seed_level_verdict((0.01, 0.2), (0.02, 0.3)) == "reproduced"
    assert cm.seed_level_verdict((0.01, 0.2), (-0.1, 0.3)) == "not shown"  # the bootstrap alone is not enough
    assert cm.seed_level_verdict((-0.2, -0.01), (-0.3, -0.02)) == "reversed"
    assert cm.seed_level_verdict((-0.2, 0.1), (0.02, 0.3)) == "not shown"
