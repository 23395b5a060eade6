"""A seed-level check of every verdict in the claims table: Welch's t interval on the per-seed means beside the
protocols' two-level bootstrap interval.

    python benchmarks/claims_seed_check.py            # reads benchmarks/results/claims_*.json, prints, writes JSON

Why: the protocols' statistic (``claims_metrics.difference_ci``: seeds, then episodes, percentile bootstrap) is
anti-conservative with three seeds per side (simulated false verdicts in 6.5-14.7% of null experiments at a
between-seed spread of 0.03-0.08; claims_encoder_shifts protocol, amendment 2). Claims 2b and 5 now need both
intervals for a verdict; the claims measured before that rule keep their protocols' verdicts, and this script
reports how each verdict that is not "not shown" fares at the seed level (``claims_metrics.welch_ci``). It reads the
results files only (no run); a comparison whose file is missing is skipped.

Output: a markdown table and ``benchmarks/results/claims_seed_check.json`` (per comparison: claim, what is compared,
difference, the stored bootstrap interval and verdict, Welch's interval, p and the verdict under both intervals).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils, claims_metrics; appended: shadows nothing
from bench_utils import write_json_atomic  # noqa: E402
from claims_metrics import seed_level_verdict, welch_ci  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _row(claim: str, what: str, a: Sequence[float], b: Sequence[float], ci: Sequence[float],
         stored_verdict: str) -> dict[str, Any] | None:
    """One comparison ``mean(a) - mean(b)`` of per-seed values (each seed one observation); None with fewer than two
    seeds on a side (no between-seed variance to test)."""
    if min(len(a), len(b)) < 2:
        return None
    diff, low, high, p = welch_ci([[x] for x in a], [[x] for x in b])
    return {"claim": claim, "comparison": what, "seeds": [len(a), len(b)], "difference": diff,
            "bootstrap_ci": [float(ci[0]), float(ci[1])], "protocol_verdict": stored_verdict,
            "welch_ci": [low, high], "welch_p": p, "verdict_both": seed_level_verdict(ci, (low, high))}


def values_rows(d: dict[str, Any]) -> Iterator[dict[str, Any] | None]:
    """Claim 1: ICVF's value head against each other value, Spearman rho per seed."""
    rows = d["summary"]["rows"]
    for label, diff in d["summary"]["differences"].items():
        yield _row("1", f"ICVF value head - {label} (Spearman rho)", rows["ICVF"]["per_seed"], rows[label]["per_seed"],
                   diff["ci"], diff["verdict"])


def pretraining_rows(d: dict[str, Any], source: str) -> Iterator[dict[str, Any] | None]:
    """Claims 2 and 3: full pipeline against each variant, final success per seed."""
    for r in d["rows"]:
        per = r["final"]["per_seed"]
        demos = "" if r.get("target_demos") is None else f", {r['target_demos']} demos"
        yield _row(str(r["claim"]), f"{r['target']}{demos}: full - {r['variant']} (final success; {source})",
                   per["full"], per[r["variant"]], r["final"]["interval"], r["verdict"])


def calibration_rows(d: dict[str, Any], ln: dict[str, Any] | None) -> Iterator[dict[str, Any] | None]:
    """Claim 4: each method comparison's dip or regret per seed; with LayerNorm critics against plain ones."""
    for task, s in d["summary"].items():
        methods = s["methods"]
        for c in s["comparisons"]:
            a = [v[c["metric"]] for _, v in sorted(methods[c["claimed"]]["per_seed"].items())]
            b = [v[c["metric"]] for _, v in sorted(methods[c["baseline"]]["per_seed"].items())]
            yield _row("4", f"{task}: {c['claimed']} - {c['baseline']} ({c['metric']})", a, b, c["ci"], c["verdict"])
    for c in (ln or {}).get("against_plain", []):
        task, method = c["task"], c["method"]
        mine = ln["summary"][task]["methods"][method]["per_seed"]
        plain = d["summary"][task]["methods"][method]["per_seed"]
        for metric in ("dip", "regret"):  # lower is better: both intervals below 0 means LayerNorm helps
            row = _row("4 (LayerNorm)", f"{task}: {method} with LayerNorm critics - plain ({metric})",
                       [v[metric] for _, v in sorted(mine.items())], [v[metric] for _, v in sorted(plain.items())],
                       c[metric]["ci"], "helps" if c[metric]["ci"][1] < 0 else "not shown")
            if row is not None:
                row["verdict_both"] = {"reversed": "helps", "reproduced": "hurts"}.get(row["verdict_both"], "not shown")
            yield row


def check(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every comparison of the claims' results files in ``folder`` with its seed-level check."""
    rows: list[dict[str, Any] | None] = []
    if (d := _load(folder, "claims_values.json")) is not None:
        rows += values_rows(d)
    for name, source in (("claims_pretraining_amd.json", "AMD runs"), ("claims_pretraining.json", "Intel runs")):
        if (d := _load(folder, name)) is not None:
            rows += pretraining_rows(d, source)
    if (d := _load(folder, "claims_calibration.json")) is not None:
        rows += calibration_rows(d, _load(folder, "claims_calibration_ln.json"))
    return [r for r in rows if r is not None]


def table(rows: Sequence[dict[str, Any]], all_rows: bool = False) -> str:
    lines = ["| claim | comparison | seeds | difference | bootstrap 95% CI: protocol verdict | Welch 95% CI, p | "
             "verdict with both |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not all_rows and r["protocol_verdict"] == "not shown":
            continue
        lines.append(f"| {r['claim']} | {r['comparison']} | {r['seeds'][0]} / {r['seeds'][1]} | {r['difference']:+.2f} | "
                     f"[{r['bootstrap_ci'][0]:+.2f}, {r['bootstrap_ci'][1]:+.2f}]: {r['protocol_verdict']} | "
                     f"[{r['welch_ci'][0]:+.2f}, {r['welch_ci'][1]:+.2f}], p = {r['welch_p']:.3f} | "
                     f"{r['verdict_both']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the claims' results JSON files")
    p.add_argument("--out", type=Path, default=RESULTS / "claims_seed_check.json")
    p.add_argument("--all", action="store_true", help="also print the comparisons whose verdict is 'not shown'")
    args = p.parse_args(argv)
    rows = check(args.results)
    write_json_atomic(args.out, {"rows": rows})
    print(table(rows, args.all))
    print(f"results: {args.out}")
    return rows


if __name__ == "__main__":
    main()
