"""Claim 4 of issue 12 (Cal-QL): does CQL unlearn at the switch from offline to online, and Cal-QL not?

    python benchmarks/claims.py calibration --jobs 2          # every run of the protocol (resumable)
    python benchmarks/claims.py calibration --tasks OpenDoorRight --seeds 0
    python benchmarks/claims.py calibration --summarize-only  # tables and plot from the saved JSONs
    python benchmarks/claims.py calibration --critic-layer-norm --tasks CloseDrawerPressButton --methods calql
    #   amendment 1: Cal-QL with LayerNorm critics, its own JSONs, compared with the plain runs

Protocol: ``benchmarks/protocols/claims_calibration.md``. The runs are ``benchmarks/offline_to_online.py``'s (stage 2
on a task's noisy state data, then stage 3 with the same algorithm), with the protocol's budgets (:data:`SETTINGS`);
that script resumes each run from its checkpoints, so a rerun continues where a stop left it. Its results JSON
(``--runs-json``) holds every run's evaluation history; this script reads it and writes the claim's JSON: per run
the success at the switch and at the end, the dip (:func:`claims_metrics.performance_dip`), the regret
(:func:`claims_metrics.cumulative_regret`), Q against the Monte-Carlo return at the switch and whether the offline
critic converged; per task the differences of the protocol with their intervals and verdicts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages before this folder's same-named scripts
sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils, offline_to_online; appended: shadows nothing
from bench_utils import cpu_model, git_commit, save_figure, write_json_atomic  # noqa: E402
from claims_metrics import cumulative_regret, difference_ci, performance_dip, verdict  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "claims_calibration.json"
RUNS = ROOT / "benchmarks" / "results" / "claims_calibration_runs.json"
PLOT = ROOT / "docs" / "claims_calibration.png"
PROTOCOL = "benchmarks/protocols/claims_calibration.md"
# amendment 1: Cal-QL with LayerNorm critics, compared with the plain runs above
LN_RUNS = ROOT / "benchmarks" / "results" / "claims_calibration_ln_runs.json"
LN_RESULTS = ROOT / "benchmarks" / "results" / "claims_calibration_ln.json"
LN_EXTRA = ("algo.critic_layer_norm=true",)
TASKS = ("OpenDoorRight", "CloseDrawerPressButton")
METHODS = ("cql", "calql", "iql")
SEEDS = (0, 1, 2)
# the protocol's budgets, as benchmarks/offline_to_online.py options
SETTINGS = {"offline_steps": 20000, "offline_eval_every": 5000, "online_steps": 10000, "eval_every": 500,
            "eval_episodes": 50, "online_checkpoint_every": 2500, "batch_size": 128, "n_actions": 4, "dr": "none"}
DIP_WINDOW = 5000  # env steps after the switch in which the dip is looked for
CONVERGED = 0.10  # relative change of offline Q(s, pi(s)) over the last offline evaluation interval
ROOM = (0.1, 0.2)  # CQL's switch success >= 0.1, and >= 0.2 below the best final success: a task counts
# (claimed method, baseline, metric): the protocol's comparisons, the first is the verdict
COMPARISONS = (("cql", "calql", "dip"), ("cql", "calql", "regret"), ("iql", "calql", "regret"))


def runs_argv(tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int], jobs: int, work: Path,
              runs_json: Path, figure: Path, extra: Sequence[str] = ()) -> list[str]:
    """The ``benchmarks/offline_to_online.py`` command line of the protocol's runs (``extra``: Hydra overrides of
    every run, amendment 1's LayerNorm arm)."""
    argv = ["--tasks", *tasks, "--methods", *methods, "--seeds", *map(str, seeds), "--workers", str(jobs),
            "--work-dir", str(work), "--results", str(runs_json), "--figure", str(figure)]
    for key, value in SETTINGS.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    if extra:
        argv += ["--extra", *extra]
    return argv


def against_plain(variant: dict[str, Any], plain: dict[str, Any]) -> list[dict[str, Any]]:
    """Amendment 1: per task and method of the ``variant`` summary (:func:`summarize` of its runs), the dip and the
    regret of the variant - the plain runs' (:func:`summarize` of the protocol's runs), difference of means over
    seeds with its 95% bootstrap interval; "helps" when the regret difference's interval lies below 0 (None, no
    verdict, while either side has fewer than the protocol's seeds: a one-seed interval is a point)."""
    out = []
    for task, entry in variant.items():
        for method, mine in entry["methods"].items():
            base = plain.get(task, {}).get("methods", {}).get(method)
            if base is None:
                continue
            row: dict[str, Any] = {"task": task, "method": method, "seeds": mine["seeds"], "plain_seeds": base["seeds"]}
            for metric in ("dip", "regret"):
                a = [[mine["per_seed"][s][metric]] for s in mine["seeds"]]
                b = [[base["per_seed"][s][metric]] for s in base["seeds"]]
                d, lo, hi = difference_ci(a, b)
                row[metric] = {"difference": d, "ci": [lo, hi]}
            full = min(len(mine["seeds"]), len(base["seeds"])) >= len(SEEDS)
            row["helps"] = bool(row["regret"]["ci"][1] < 0) if full else None
            out.append(row)
    return out


def merge_runs(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of earlier invocations with this one's: one run per (task, method, seed), the new one where it
    differs (a resumed run), the old one where both hold the same evaluations (a finished run returned again keeps
    its first wall time). Ordered by task, method, seed."""
    key = lambda r: (r["task"], r["method"], int(r["seed"]))  # noqa: E731
    merged = {key(r): r for r in old}
    for r in new:
        before = merged.get(key(r))
        same = (before is not None and before["history"] == r["history"]
                and before.get("offline_history") == r.get("offline_history"))
        merged[key(r)] = before if same else r
    order = lambda k: (TASKS.index(k[0]) if k[0] in TASKS else len(TASKS), k[0], METHODS.index(k[1]), k[2])  # noqa: E731
    return [merged[k] for k in sorted(merged, key=order)]


def run_metrics(run: dict[str, Any]) -> dict[str, Any]:
    """The protocol's metrics of one offline-to-online run (its ``history`` and ``offline_history`` rows).

    Raises ValueError when the run has no online evaluation, or its evaluations are not equally spaced."""
    hist = run["history"]
    if not hist:
        raise ValueError(f"{run.get('task')}/{run.get('method')}/seed{run.get('seed')}: no online evaluation")
    steps = [float(h["env_steps"]) for h in hist]
    success = [float(h["eval/success"]) for h in hist]
    first = hist[0]
    q, mc = first.get("calib/offline_q_policy"), first.get("calib/offline_mc_return")
    offline_q = [float(r["calib/offline_q_policy"]) for r in run.get("offline_history", [])
                 if r.get("calib/offline_q_policy") is not None]
    change = (abs(offline_q[-1] - offline_q[-2]) / max(abs(offline_q[-1]), 1e-8)) if len(offline_q) >= 2 else None
    return {"success_switch": success[0], "success_final": success[-1],
            "dip": performance_dip(steps, success, DIP_WINDOW),
            "regret": cumulative_regret(steps, success)["mean_regret"],
            "q_policy_switch": q, "mc_return_switch": mc,
            "gap_switch": None if q is None or mc is None else float(q) - float(mc),
            "offline_q": offline_q, "offline_q_change": change,
            "converged": None if change is None else bool(change < CONVERGED),
            "env_steps": steps[-1], "curve": [[s, v] for s, v in zip(steps, success)],
            "gap_curve": [[float(h["env_steps"]), h.get("calib/online_gap_policy")] for h in hist]}


def summarize(runs: Sequence[dict[str, Any]], online_steps: int = SETTINGS["online_steps"]) -> dict[str, Any]:
    """Per task: per method the per-seed metrics and their means, the room check and the comparisons.

    Only finished runs count (their last evaluation at ``online_steps``); a comparison needs both methods on at
    least one seed; with fewer than the protocol's seeds its verdict (and the task's, unless the room check already
    withholds it: "no room") reads "partial (n of 3 seeds)",
    as claims.py and claims_robustness.py withhold theirs (each seed gives one number: one seed's interval is a
    point, which read "reproduced")."""
    out: dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        methods: dict[str, Any] = {}
        for method in METHODS:
            mine = sorted((r for r in runs if r["task"] == task and r["method"] == method and r["history"]
                           and r["history"][-1]["env_steps"] >= online_steps), key=lambda r: r["seed"])
            if not mine:
                continue
            per_seed = {int(r["seed"]): run_metrics(r) for r in mine}
            mean = {k: float(np.mean([m[k] for m in per_seed.values()]))
                    for k in ("success_switch", "success_final", "dip", "regret")}
            gaps = [m["gap_switch"] for m in per_seed.values() if m["gap_switch"] is not None]
            mean["gap_switch"] = float(np.mean(gaps)) if gaps else None
            mean["converged"] = all(m["converged"] for m in per_seed.values())
            methods[method] = {"seeds": sorted(per_seed), "per_seed": per_seed, "mean": mean}
        if not methods:
            continue
        entry: dict[str, Any] = {"methods": methods, "comparisons": []}
        if "cql" in methods:
            best = max(m["mean"]["success_final"] for m in methods.values())
            s0 = methods["cql"]["mean"]["success_switch"]
            entry["room"] = {"cql_switch": s0, "best_final": best, "ok": bool(s0 >= ROOM[0] and best - s0 >= ROOM[1])}
        for claimed, base, metric in COMPARISONS:
            if claimed not in methods or base not in methods:
                continue
            a = [[methods[claimed]["per_seed"][s][metric]] for s in methods[claimed]["seeds"]]
            b = [[methods[base]["per_seed"][s][metric]] for s in methods[base]["seeds"]]
            d, lo, hi = difference_ci(a, b)
            n = min(len(a), len(b))
            entry["comparisons"].append({"claimed": claimed, "baseline": base, "metric": metric, "difference": d,
                                         "ci": [lo, hi], "seeds": n, "verdict": verdict(lo, hi) if n >= len(SEEDS)
                                         else f"partial ({n} of {len(SEEDS)} seeds)"})
        primary = next((c for c in entry["comparisons"] if c["metric"] == "dip"), None)
        cql = methods.get("cql", {}).get("mean", {})
        entry["verdict"] = (None if primary is None else "no room" if not entry.get("room", {}).get("ok")
                            else primary["verdict"])
        entry["mechanism"] = {"cql_converged": cql.get("converged"), "cql_gap_switch": cql.get("gap_switch"),
                              "cql_underestimates": None if cql.get("gap_switch") is None
                              else bool(cql["gap_switch"] < 0)}
        out[task] = entry
    return out


def table(summary: dict[str, Any]) -> str:
    fmt = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["| task | method | seeds | success at switch | final | dip | regret | Q - MC return at switch | "
             "offline Q converged |", "|---|---|---|---|---|---|---|---|---|"]
    for task, entry in summary.items():
        for method, m in entry["methods"].items():
            mean = m["mean"]
            lines.append(f"| {task} | {method} | {len(m['seeds'])} | {fmt(mean['success_switch'])} | "
                         f"{fmt(mean['success_final'])} | {fmt(mean['dip'])} | {fmt(mean['regret'])} | "
                         f"{fmt(mean['gap_switch'], 1)} | {'yes' if mean['converged'] else 'no'} |")
    lines += ["", "| task | comparison | difference [95% interval] | seeds | verdict |", "|---|---|---|---|---|"]
    for task, entry in summary.items():
        for c in entry["comparisons"]:
            lines.append(f"| {task} | {c['metric']}: {c['claimed']} - {c['baseline']} | {c['difference']:+.2f} "
                         f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] | {c['seeds']} | {c['verdict']} |")
        room = entry.get("room")
        if room is not None:
            lines.append(f"| {task} | claim (dip) | room: CQL at switch {room['cql_switch']:.2f}, best final "
                         f"{room['best_final']:.2f} | | **{entry['verdict']}** |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path | None:
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 6.4), squeeze=False)
    for col, task in enumerate(tasks):
        for method, m in summary[task]["methods"].items():
            curves = [np.asarray(s["curve"], dtype=float) for s in m["per_seed"].values()]
            n = min(len(c) for c in curves)
            x, y = curves[0][:n, 0], np.stack([c[:n, 1] for c in curves])
            axes[0, col].plot(x, y.mean(0), marker=".", label=f"{method} (n={len(curves)})")
            axes[0, col].fill_between(x, y.min(0), y.max(0), alpha=0.2)
            gaps = [[np.nan if g is None else g for _, g in s["gap_curve"]] for s in m["per_seed"].values()]
            g = np.array([row[:n] for row in gaps], dtype=float)  # nan at the switch: no online data yet
            seen = np.isfinite(g).any(0)
            if seen.any():
                axes[1, col].plot(x[seen], np.nanmean(g[:, seen], 0), marker=".", label=method)
        axes[0, col].axvspan(0, DIP_WINDOW, color="0.9", zorder=0)
        axes[0, col].set(title=f"{task} (verdict: {summary[task]['verdict']})", ylim=(-0.05, 1.05),
                         ylabel="success (mean, min-max over seeds)")
        axes[1, col].axhline(0, color="k", lw=0.8)
        axes[1, col].set(xlabel="online env steps (0 = the switch)", ylabel="Q(s, pi(s)) - MC return, online data")
        for ax in axes[:, col]:
            ax.legend(fontsize=7)
    fig.suptitle("claim 4: the offline -> online switch (shaded: dip window)", fontsize=10)
    return save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="claims.py calibration", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each one torch thread)")
    p.add_argument("--critic-layer-norm", action="store_true",
                   help="amendment 1's arm: the runs with LayerNorm critics (their own work dir and JSONs), "
                        "compared with the plain runs of --plain-runs-json")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="default outputs/claims_calibration (outputs/claims_calibration_ln with --critic-layer-norm)")
    p.add_argument("--runs-json", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--plain-runs-json", type=Path, default=RUNS, help="the plain runs (with --critic-layer-norm)")
    p.add_argument("--summarize-only", action="store_true")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: expected >= 1")
    ln = args.critic_layer_norm
    args.work_dir = args.work_dir or ROOT / "outputs" / ("claims_calibration_ln" if ln else "claims_calibration")
    args.runs_json = args.runs_json or (LN_RUNS if ln else RUNS)
    args.out = args.out or (LN_RESULTS if ln else RESULTS)
    args.plot = args.plot or (args.work_dir / "claims_calibration_ln.png" if ln else PLOT)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.summarize_only:
        import offline_to_online  # benchmarks/offline_to_online.py: the runs themselves

        latest = args.work_dir / "offline_to_online.json"  # this invocation's runs (a finished run returns at once)
        offline_to_online.main(runs_argv(args.tasks, args.methods, args.seeds, args.jobs, args.work_dir, latest,
                                         args.work_dir / "offline_to_online.png",
                                         LN_EXTRA if args.critic_layer_norm else ()))
        old = json.loads(args.runs_json.read_text())["runs"] if args.runs_json.is_file() else []
        write_json_atomic(args.runs_json, {"protocol": PROTOCOL, "settings": SETTINGS,
                                           "extra": list(LN_EXTRA) if args.critic_layer_norm else [],
                                           "runs": merge_runs(old, json.loads(latest.read_text())["runs"])})
    runs = json.loads(args.runs_json.read_text())["runs"]
    summary = summarize(runs)
    result = {"claim": 4, "protocol": PROTOCOL, "commit": git_commit(ROOT), "cpu": cpu_model(), "settings": SETTINGS,
              "dip_window": DIP_WINDOW, "runs_json": str(args.runs_json), "summary": summary}
    if args.critic_layer_norm:
        result["extra"] = list(LN_EXTRA)
        result["against_plain"] = against_plain(summary, summarize(json.loads(args.plain_runs_json.read_text())["runs"]))
        for row in result["against_plain"]:
            print(f"{row['task']} {row['method']} + LayerNorm - plain ({len(row['seeds'])} / {len(row['plain_seeds'])}"
                  f" seeds): dip {row['dip']['difference']:+.2f} [{row['dip']['ci'][0]:+.2f}, "
                  f"{row['dip']['ci'][1]:+.2f}], regret {row['regret']['difference']:+.2f} [{row['regret']['ci'][0]:+.2f},"
                  f" {row['regret']['ci'][1]:+.2f}]{' (helps)' if row['helps'] else ''}"
                  f"{' (partial: no verdict)' if row['helps'] is None else ''}")
    write_json_atomic(args.out, result)
    print(table(summary))
    drawn = plot(summary, args.plot)
    if drawn is not None:
        print(f"plot: {drawn}")
    return result


if __name__ == "__main__":
    main()
