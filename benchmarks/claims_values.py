"""Claim 1 of issue 12 (V-PTR): does ICVF's value rise toward goals on robot trajectories it never saw?

    python benchmarks/claims.py values --jobs 2                 # every run of the protocol (resumable)
    python benchmarks/claims.py values --runs base_seed0 base_seed1 base_seed2   # some of them
    python benchmarks/claims.py values --summarize-only         # table and plot from the saved JSON

Protocol: ``benchmarks/protocols/claims_values.md``. Each run is one ``python benchmarks/video_pretrain.py`` call
(a subprocess, its own log) into ``<work>/<run>/``, writing ``<work>/<run>.json``; a run whose JSON exists is not
run again (``video_pretrain.py`` itself reuses the data and trained encoders in its work folder). The base runs
(seeds 0, 1, 2) come first; the seed-0 sweeps then share the seed-0 data (links to its hand videos and robot
episodes, except the data variants, which collect their own hand videos) and the budget run continues the seed-0
ICVF run in its own folder (so it waits for ``base_seed0``).

Output: ``benchmarks/results/claims_values.json`` (the runs' commands, setups and rows; the summary) and
``docs/claims_values.png``; markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils; appended so benchmarks/ shadows no package
from bench_utils import (cpu_model, ended_with_this, git_commit, save_figure,  # noqa: E402
                         seeds_then_episodes_ci, write_json_atomic)
from claims_metrics import difference_ci, verdict  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "claims_values.json"
PLOT = ROOT / "docs" / "claims_values.png"
PROTOCOL = "benchmarks/protocols/claims_values.md"
ICVF, PIXELS, RANDOM = "ICVF", "raw pixels", "random init"
ROWS = (ICVF, "ICVF:features", "VIP", "TCN", RANDOM, PIXELS)
BUDGETS = (9000, 30000)
SEEDS = (0, 1, 2)
_ICVF_ONLY = ["--objectives", "icvf"]
_GOAL_MIX_EGO4D = ["objective.sampling.goal_mix.random=0.1", "objective.sampling.goal_mix.future=0.8",
                   "objective.sampling.goal_mix.current=0.1"]
# run -> (seed, extra video_pretrain.py arguments, what it shares with base_seed0: "all" | "robot" | "work")
RUNS: dict[str, tuple[int, list[str], str | None]] = {
    **{f"base_seed{s}": (s, [], None) for s in SEEDS},
    "lr_1e-4": (0, [*_ICVF_ONLY, "--lr", "1e-4"], "all"),
    "lr_1e-3": (0, [*_ICVF_ONLY, "--lr", "1e-3"], "all"),
    "expectile_0.7": (0, [*_ICVF_ONLY, "--train-overrides", "objective.options.expectile=0.7"], "all"),
    "expectile_0.5": (0, [*_ICVF_ONLY, "--train-overrides", "objective.options.expectile=0.5"], "all"),
    "goal_mix_ego4d": (0, [*_ICVF_ONLY, "--train-overrides", *_GOAL_MIX_EGO4D], "all"),
    "videos_no_randomization": (0, [*_ICVF_ONLY, "--video-overrides", "randomization=none"], "robot"),
    "videos_one_camera": (0, [*_ICVF_ONLY, "--video-overrides", "cameras=[video_left]"], "robot"),
    "videos_3x_clips": (0, [*_ICVF_ONLY, "--clips", "270"], "robot"),
    "budgets": (0, [*_ICVF_ONLY, "--icvf-budgets", *map(str, BUDGETS)], "work"),  # the longest: last
}
BASE0 = "base_seed0"


def command(run: str, work: Path) -> list[str]:
    """The ``video_pretrain.py`` command of ``run`` (its work folder, JSON and figure under ``work``)."""
    seed, extra, share = RUNS[run]
    folder = work / (BASE0 if share == "work" else run)
    return [sys.executable, str(ROOT / "benchmarks" / "video_pretrain.py"), "--seed", str(seed), "--work", str(folder),
            "--json", str(work / f"{run}.json"), "--png", str(work / f"{run}.png"), *extra]


def link_shared_data(run: str, work: Path) -> list[str]:
    """Link the seed-0 base run's data into ``run``'s work folder where the protocol shares them (before it starts);
    returns the names linked. Data the base folder does not hold (a work folder on another machine, where only the
    results JSON came along) are not linked: the run then collects them itself, from the same seed."""
    share = RUNS[run][2]
    names = {"all": ["hand_videos", "robot_target.hdf5"], "robot": ["robot_target.hdf5"]}.get(share or "", [])
    linked = []
    for name in names:
        src, dst = work / BASE0 / name, work / run / name
        if src.exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
            linked.append(name)
    return linked


def execute(run: str, work: Path, measured: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``run`` unless its JSON exists or it is among ``measured`` (runs already in the results JSON); returns
    how (skipped, seconds)."""
    out = work / f"{run}.json"
    cmd = command(run, work)
    if out.is_file() or run in measured:
        return {"run": run, "skipped": True}
    link_shared_data(run, work)
    log = work / f"{run}.log"
    start = time.perf_counter()
    print(f"[claims values] {run}: {' '.join(cmd[1:])}", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**ended_with_this()})
    if proc.returncode != 0:
        raise RuntimeError(f"{run} failed (exit {proc.returncode}); see {log}")
    seconds = time.perf_counter() - start
    print(f"[claims values] {run} done in {seconds / 60:.1f} min", flush=True)
    return {"run": run, "skipped": False, "seconds": seconds}


# --------------------------------------------------------------------------- reading a run's JSON


def robot_rows(result: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per row label: the per-trajectory Spearman rho and fraction increasing on the robot trajectories."""
    return {label: {"spearman": [float(t["spearman"]) for t in e["per_trajectory"]],
                    "increasing": [float(t["increasing"]) for t in e["per_trajectory"]],
                    "value_range": [float(t["value_range"]) for t in e["per_trajectory"]]}
            for label, e in result["diagnostics"]["encoders"].items()}


def hand_rho(result: dict[str, Any]) -> dict[str, float]:
    """Per row label: the mean Spearman rho on the held-out hand clips."""
    return {label: float(e["mean"]["spearman"]) for label, e in result["in_domain"]["held_out"]["encoders"].items()}


# --------------------------------------------------------------------------- summary


def run_record(run: str, result: dict[str, Any], work: Path) -> dict[str, Any]:
    """What the results JSON keeps of one run's ``video_pretrain.py`` JSON (enough to summarize it again)."""
    cmd = command(run, work)
    return {"command": " ".join(["python", "benchmarks/video_pretrain.py", *cmd[2:]]), "commit": result.get("commit"),
            "setup": result.get("setup"),
            "training": result.get("training"), "robot": robot_rows(result), "hand_held_out": hand_rho(result),
            "icvf_budgets": result.get("icvf_budgets") or None, "seconds": result.get("total_seconds")}


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The base comparison over the seeds present and the seed-0 sweeps, from the runs' records
    (:func:`run_record`, ``run -> record``)."""
    base = {int(r.rsplit("seed", 1)[1]): runs[r]["robot"] for r in runs if r.startswith("base_seed")}
    summary: dict[str, Any] = {"seeds": sorted(base), "rows": {}, "differences": {}, "sweeps": {}}
    if base:
        labels = [lab for lab in ROWS if all(lab in rows for rows in base.values())]
        per_seed = {lab: [base[s][lab]["spearman"] for s in sorted(base)] for lab in labels}
        for lab in labels:
            lo, hi = seeds_then_episodes_ci(per_seed[lab])
            inc = [base[s][lab]["increasing"] for s in sorted(base)]
            summary["rows"][lab] = {"spearman": float(np.mean([np.mean(x) for x in per_seed[lab]])), "ci": [lo, hi],
                                    "per_seed": [float(np.mean(x)) for x in per_seed[lab]],
                                    "increasing": float(np.mean([np.mean(x) for x in inc])),
                                    "hand_held_out": float(np.mean([runs[f"base_seed{s}"]["hand_held_out"][lab]
                                                                    for s in sorted(base)]))}
        if ICVF in per_seed:
            for lab in labels:
                if lab != ICVF:
                    d, lo, hi = difference_ci(per_seed[ICVF], per_seed[lab])
                    summary["differences"][lab] = {"difference": d, "ci": [lo, hi], "verdict": verdict(lo, hi)}
            untrained = [lab for lab in (RANDOM, PIXELS) if lab in summary["differences"]]
            if untrained:
                strongest = max(untrained, key=lambda lab: summary["rows"][lab]["spearman"])
                summary["verdict"] = {"against": strongest, **summary["differences"][strongest]}
    def trajectory_rows(rows: dict[str, Any]) -> dict[str, Any]:
        """ICVF, its features and raw pixels of one run, intervals over its trajectories only."""
        entry: dict[str, Any] = {}
        for lab in (ICVF, "ICVF:features", PIXELS):
            if lab in rows:
                lo, hi = seeds_then_episodes_ci([rows[lab]["spearman"]])
                entry[lab] = {"spearman": float(np.mean(rows[lab]["spearman"])), "ci": [lo, hi],
                              "increasing": float(np.mean(rows[lab]["increasing"])),
                              "value_range": float(np.mean(rows[lab]["value_range"]))}
        return entry

    # the protocol's reference for the sweeps: the seed-0 base run, read the same way (trajectories only)
    reference = trajectory_rows(runs[BASE0]["robot"]).get(ICVF) if BASE0 in runs else None
    if reference is not None:
        summary["sweep_reference"] = {"run": BASE0, **reference}
    for run, record in runs.items():
        if run.startswith("base_seed"):
            continue
        entry = trajectory_rows(record["robot"])
        if reference is not None and ICVF in entry:  # "moves" only where the intervals do not overlap
            lo, hi = entry[ICVF]["ci"]
            entry[ICVF]["moves"] = ("up" if lo > reference["ci"][1] else "down" if hi < reference["ci"][0]
                                    else "no")
        for steps, b in (record.get("icvf_budgets") or {}).items():
            entry[f"{ICVF} @ {steps} steps"] = {"spearman": b["robot"]["value"]["spearman"], "ci": None,
                                                "increasing": b["robot"]["value"]["increasing"],
                                                "value_range": b["robot"]["value"]["value_range"],
                                                "features_spearman": b["robot"]["features"]["spearman"]}
        summary["sweeps"][run] = entry
    return summary


def table(summary: dict[str, Any]) -> str:
    n = len(summary["seeds"])
    lines = [f"Base comparison ({n} seed{'s' if n != 1 else ''}; rho = Spearman of value vs time on unseen robot "
             "trajectories)", "", "| row | rho | 95% interval | per seed | frac. increasing | held-out hand rho | "
             "ICVF - row [95% interval] | verdict |", "|---|---|---|---|---|---|---|---|"]
    for lab, r in summary["rows"].items():
        d = summary["differences"].get(lab)
        diff = f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d else ""
        lines.append(f"| {lab} | {r['spearman']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                     f"{', '.join(f'{v:.3f}' for v in r['per_seed'])} | {r['increasing']:.3f} | "
                     f"{r['hand_held_out']:.3f} | {diff} | {d['verdict'] if d else ''} |")
    if summary.get("verdict"):
        v = summary["verdict"]
        lines += ["", f"Claim 1 verdict (ICVF value vs {v['against']}, the stronger untrained baseline): "
                      f"**{v['verdict']}** ({v['difference']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}])"]
    if summary["sweeps"]:
        lines += ["", "Sweeps (seed 0, one change each; interval over trajectories only; 'moves': the ICVF interval "
                      "does not overlap the seed-0 base run's)", "",
                  "| run | row | rho | 95% interval | frac. increasing | value range | moves |", "|---|---|---|---|---|---|---|"]
        ref = summary.get("sweep_reference")
        if ref:
            lines.append(f"| {ref['run']} (reference) | {ICVF} | {ref['spearman']:.3f} | [{ref['ci'][0]:.3f}, "
                         f"{ref['ci'][1]:.3f}] | {ref['increasing']:.3f} | {ref['value_range']:.3g} | |")
        for run, entry in summary["sweeps"].items():
            for lab, r in entry.items():
                ci = f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["ci"] else "n/a"
                lines.append(f"| {run} | {lab} | {r['spearman']:.3f} | {ci} | {r['increasing']:.3f} | "
                             f"{r['value_range']:.3g} | {r.get('moves', '')} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path | None:
    if not summary["rows"] and not summary["sweeps"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1.6]})
    labs = list(summary["rows"])
    means = [summary["rows"][lab]["spearman"] for lab in labs]
    err = np.array([[m - summary["rows"][lab]["ci"][0], summary["rows"][lab]["ci"][1] - m]
                    for lab, m in zip(labs, means)]).T.reshape(2, -1)
    a.bar(range(len(labs)), means, yerr=err, capsize=3, color=["C3" if lab == ICVF else "C0" for lab in labs])
    a.set_xticks(range(len(labs)), labs, rotation=30, ha="right")
    a.set_ylabel("Spearman rho (value vs time)")
    a.set_title(f"base: {len(summary['seeds'])} seed(s), 95% CI")
    a.set_ylim(-0.2, 1.0)
    names, vals, errs = [], [], []
    base0 = summary["rows"].get(ICVF, {}).get("per_seed", [None])[0] if summary["seeds"][:1] == [0] else None
    for run, entry in summary["sweeps"].items():
        for lab, r in entry.items():
            if lab.startswith(ICVF) and lab != "ICVF:features":
                names.append(f"{run}" + ("" if lab == ICVF else f" ({lab.split('@ ')[1]})"))
                vals.append(r["spearman"])
                errs.append([r["spearman"] - r["ci"][0], r["ci"][1] - r["spearman"]] if r["ci"] else [0.0, 0.0])
    if names:
        b.bar(range(len(names)), vals, yerr=np.array(errs).T, capsize=3, color="C3")
        b.set_xticks(range(len(names)), names, rotation=30, ha="right")
        if base0 is not None:
            b.axhline(base0, color="k", ls="--", lw=1, label="ICVF value, base seed 0")
            b.legend(fontsize=8)
        b.set_ylim(-0.2, 1.0)
        b.set_title("ICVF value head: sweeps (seed 0)")
    else:
        b.axis("off")
        b.text(0.5, 0.5, "sweeps (seed 0): not run yet", ha="center", va="center", transform=b.transAxes)
    fig.suptitle("claim 1: does ICVF's value rise toward the goal on unseen robot trajectories?")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="claims.py values", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each one torch thread)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "claims_values")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--plot", type=Path, default=PLOT)
    p.add_argument("--summarize-only", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = args.work_dir.resolve()
    if not args.summarize_only:
        work.mkdir(parents=True, exist_ok=True)
    executed: list[dict[str, Any]] = []
    # runs measured earlier (perhaps on another machine, whose work folder is gone) are kept and not run again
    stored = json.loads(args.out.read_text())["runs"] if args.out.is_file() else {}
    if not args.summarize_only:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # each run one thread, --jobs runs at a time
        base = [r for r in args.runs if r.startswith("base_seed")]
        rest = [r for r in args.runs if r not in base]
        if rest and BASE0 not in base and not (work / f"{BASE0}.json").is_file() and BASE0 not in stored:
            base.insert(0, BASE0)  # every sweep shares the seed-0 base run's data or folder
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            executed += list(pool.map(lambda r: execute(r, work, list(stored)), base))
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            executed += list(pool.map(lambda r: execute(r, work, list(stored)), rest))
    if args.summarize_only:
        out = json.loads(args.out.read_text())
        out["summary"] = summarize(out["runs"])
    else:
        fresh = {r: run_record(r, json.loads((work / f"{r}.json").read_text()), work)
                 for r in RUNS if (work / f"{r}.json").is_file()}
        runs = {r: fresh.get(r, stored.get(r)) for r in RUNS if r in fresh or r in stored}
        out = {"benchmark": "claims values (claim 1)", "protocol": PROTOCOL, "commit": git_commit(ROOT),
               "cpu": cpu_model(), "work_dir": str(work), "summary": summarize(runs), "runs": runs,
               "executed_this_call": executed}
        write_json_atomic(args.out, out)
    summary = out["summary"]
    print(table(summary))
    figure = plot(summary, args.plot)
    print(f"results: {args.out}" + (f"; figure: {figure}" if figure else ""))
    return out


if __name__ == "__main__":  # run by itself it did nothing and exited 0
    raise SystemExit("error: claims_values.py is claims.py's 'values' sub-command: "
                     "run python benchmarks/claims.py values (--help for its options)")
