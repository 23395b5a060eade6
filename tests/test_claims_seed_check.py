"""benchmarks/claims_seed_check.py on hand-made results files: which per-seed values feed each side of the Welch
interval, the sign of each comparison, and that the stored bootstrap verdict is kept beside the seed-level one.

Which bugs these catch: a side's per-seed values taken from the other method, a metric read from the wrong key,
the LayerNorm rows labelled with the generic reading (lower regret is 'helps'), one-seed rows crashing the check."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from _benchmarks import load_benchmark


@pytest.fixture(scope="module")
def sc():
    load_benchmark("claims_metrics", "claims_metrics.py", register=True)
    return load_benchmark("claims_seed_check", "claims_seed_check.py", register=True)


def welch(a, b):
    return stats.ttest_ind(a, b, equal_var=False).confidence_interval()


def test_every_claims_file_feeds_the_right_sides(sc, tmp_path):
    (tmp_path / "claims_values.json").write_text(json.dumps({"summary": {
        "rows": {"ICVF": {"per_seed": [0.1, -0.1, 0.0]}, "VIP": {"per_seed": [0.5, 0.6, 0.55]}},
        "differences": {"VIP": {"ci": [-0.6, -0.5], "verdict": "reversed"}}}}))
    (tmp_path / "claims_pretraining.json").write_text(json.dumps({"rows": [
        {"claim": 3, "target": "T", "variant": "target_only", "target_demos": 5, "verdict": "reversed",
         "final": {"per_seed": {"full": [0.5, 0.4, 0.3], "target_only": [0.9, 0.8, 0.85]}, "interval": [-0.6, -0.3]}},
        {"claim": 2, "target": "T", "variant": "vip", "verdict": "not shown (1 of 3 seeds)",
         "final": {"per_seed": {"full": [0.5], "vip": [0.4]}, "interval": [-0.1, 0.2]}}]}))
    per = lambda *r: {str(s): {"dip": x, "regret": y} for s, (x, y) in enumerate(r)}  # noqa: E731
    (tmp_path / "claims_calibration.json").write_text(json.dumps({"summary": {"D": {
        "methods": {"cql": {"per_seed": per((0.1, 0.5), (0.2, 0.6), (0.3, 0.4))},
                    "calql": {"per_seed": per((0.4, 0.7), (0.3, 0.8), (0.5, 0.75))}},
        "comparisons": [{"claimed": "cql", "baseline": "calql", "metric": "regret", "ci": [-0.3, -0.1],
                         "verdict": "reversed"}]}}}))
    (tmp_path / "claims_calibration_ln.json").write_text(json.dumps({
        "summary": {"D": {"methods": {"calql": {"per_seed": per((0.1, 0.2), (0.12, 0.22), (0.11, 0.21))}}}},
        "against_plain": [{"task": "D", "method": "calql", "dip": {"ci": [-0.4, -0.2]},
                           "regret": {"ci": [-0.6, -0.5]}}]}))
    rows = {r["comparison"]: r for r in sc.check(tmp_path)}
    assert len(rows) == 5  # the one-seed claim-2 row has no seed-level test
    vip = rows["ICVF value head - VIP (Spearman rho)"]
    assert vip["welch_ci"] == pytest.approx(welch([0.1, -0.1, 0.0], [0.5, 0.6, 0.55]))
    assert vip["protocol_verdict"] == "reversed" and vip["verdict_both"] == "reversed"
    three = rows["T, 5 demos: full - target_only (final success; Intel runs)"]
    assert three["difference"] == pytest.approx(0.4 - 0.85) and three["bootstrap_ci"] == [-0.6, -0.3]
    assert three["welch_ci"] == pytest.approx(welch([0.5, 0.4, 0.3], [0.9, 0.8, 0.85]))
    four = rows["D: cql - calql (regret)"]
    assert four["welch_ci"] == pytest.approx(welch([0.5, 0.6, 0.4], [0.7, 0.8, 0.75]))
    ln = rows["D: calql with LayerNorm critics - plain (regret)"]
    assert ln["difference"] == pytest.approx(0.21 - 0.75) and ln["verdict_both"] == "helps"
    assert rows["D: calql with LayerNorm critics - plain (dip)"]["difference"] == pytest.approx(0.11 - 0.4)
    text = sc.table(list(rows.values()))
    assert "| 3 | T, 5 demos: full - target_only" in text and np.isfinite(ln["welch_p"])
