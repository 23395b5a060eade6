"""Claim 2b of issue 12 (V-PTR): does the video-pretrained encoder make the target policy robust to visual shifts?

    python benchmarks/claims.py shifts --work-dir W --jobs 2          # every agent of the protocol (resumable)
    python benchmarks/claims.py shifts --work-dir W --seeds 3 4 5 --variants full scratch   # the confirmatory seeds
    python benchmarks/claims.py shifts --summarize-only                # table and plot from the saved JSON

Protocol: ``benchmarks/protocols/claims_encoder_shifts.md``. ``W`` is the work folder of ``claims.py pretraining``
(claim 2): each variant's final stage-3 checkpoint ``<W>/<pixel|scratch|vip>/<target>/seed<S>/stage3/<target>`` is
evaluated by ``robopretrain.evaluate`` over claim 5's factors (physics and visual, levels ``train``, ``eval_easy``,
``eval_hard``) and nominal, into ``.../seed<S>/eval_shifts`` (``eval_shifts_<N>ep`` for another episode count than
the protocol's 50); nothing is trained here. Each agent is evaluated in a fresh spawned process (``--jobs`` at a time,
one torch thread each); an agent already in the results JSON is not evaluated again, nor one whose evaluation folder
holds an evaluation of its checkpoint's current step with the same episodes and reset seeds over every condition.
A run folder that is unfinished or damaged is reported and skipped; the others go on (exit status 1 at the end).

The primary statistic is ``full - scratch`` on the six held-out visual conditions pooled, with the 95% bootstrap over
seeds, then episodes (``claims_metrics.difference_ci``); seeds 0-2 are the exploratory test, 3-5 the confirmatory one.

Output: ``benchmarks/results/claims_encoder_shifts.json`` and ``docs/claims_encoder_shifts.png``; markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages before this folder's same-named scripts
sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils, claims, claims_robustness
from bench_utils import cpu_model, git_commit, save_figure, seeds_then_episodes_ci, write_json_atomic  # noqa: E402
from claims_metrics import difference_ci, seed_level_verdict, verdict, welch_ci  # noqa: E402
from claims_robustness import FACTORS, LEVELS, _pooled, condition_outcomes, evaluate_factors  # noqa: E402

from robopretrain.checkpoint import CheckpointError  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "claims_encoder_shifts.json"
PLOT = ROOT / "docs" / "claims_encoder_shifts.png"
PROTOCOL = "benchmarks/protocols/claims_encoder_shifts.md"
VARIANTS = ("full", "scratch", "vip")  # claims.py pretraining's variants of claim 2
VISUAL = ("lighting", "colors_textures", "camera")  # robopretrain.evaluate's visual factor names
HELD_OUT_VISUAL = tuple(f"{f}/{lv}" for f in VISUAL for lv in ("eval_easy", "eval_hard"))  # the primary's pool
TRAIN_VISUAL = tuple(f"{f}/train" for f in VISUAL)
POOLS = {"held_out_visual": HELD_OUT_VISUAL, "train_visual": TRAIN_VISUAL}
GROUPS = {"exploratory": (0, 1, 2), "confirmatory": (3, 4, 5)}
POOLED = "every seed"  # the comparisons over all seeds evaluated: reported without a verdict
PRIMARY = ("full", "scratch")
COMPARISONS = (PRIMARY, ("vip", "scratch"), ("full", "vip"))
EPISODES = 50  # per condition: the protocol's
EVAL_FOLDER = "eval_shifts"  # in the run folder; "eval_shifts_<N>ep" for another episode count (a quick check)


def eval_folder(episodes: int) -> str:
    """The evaluation folder's name for ``episodes`` per condition: the protocol's count has the bare name, any
    other its own folder, so a short trial never replaces the protocol's evaluation."""
    return EVAL_FOLDER if episodes == EPISODES else f"{EVAL_FOLDER}_{int(episodes)}ep"


def run_key(variant: str, seed: int) -> str:
    return f"{variant}/seed{seed}"


def stage3_folder(work: Path, variant: str, target: str, seed: int) -> Path:
    """The claim-2 run's stage-3 folder of ``target`` (``claims.py``'s run folder layout)."""
    import claims  # benchmarks/claims.py: the run-folder layout of claim 2's runs

    return claims.run_dir(work, variant, target, seed) / "stage3" / target


def evaluate_agent(work: Path, variant: str, target: str, seed: int, episodes: int) -> dict[str, Any]:
    """Evaluate one claim-2 agent over the factors and nominal. Raises FileNotFoundError when its stage 3 is not
    finished, ValueError when its checkpoint's target is not ``target``."""
    import torch

    torch.set_num_threads(1)
    stage3 = stage3_folder(work, variant, target, seed)
    if not (stage3 / "done.json").is_file():
        raise FileNotFoundError(f"{stage3}: stage 3 not finished (run claims.py pretraining first)")
    info = evaluate_factors(stage3, stage3.parents[1] / eval_folder(episodes), episodes)
    if info["target"]["name"] != target:
        raise ValueError(f"{stage3}: the checkpoint's target is {info['target']['name']!r}, not {target!r}")
    return {"variant": variant, "seed": seed, "target": target, "commit": git_commit(ROOT),
            "checkpoint": info["checkpoint"], "step": info["step"],
            "seconds": info["wall_seconds"]["episodes"], "outcomes": condition_outcomes(info)}


def _try_evaluate(work: Path, variant: str, target: str, seed: int, episodes: int) -> dict[str, Any]:
    try:
        return evaluate_agent(work, variant, target, seed, episodes)
    except (OSError, ValueError, CheckpointError) as e:  # an unfinished, damaged or foreign run: the rest go on
        return {"variant": variant, "seed": seed, "error": str(e)}


# --------------------------------------------------------------------------- summary


def pooled(outcomes: Mapping[str, Sequence[float]], conditions: Sequence[str]) -> list[float]:
    """One agent's per-episode outcomes over ``conditions``, concatenated. Raises KeyError naming a missing one."""
    missing = [c for c in conditions if c not in outcomes]
    if missing:
        raise KeyError(f"conditions not evaluated: {missing}")
    return [float(x) for c in conditions for x in outcomes[c]]


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per variant: success per condition and per pool (mean over seeds, interval, per-seed means) and the drop from
    nominal to the held-out visual pool; per seed group and comparison ``a - b`` on each pool: the difference of means
    with its interval and verdict (``comparisons[group][pool]["a - b"]``); per condition ``full - scratch`` over every
    seed. A comparison needs both variants in the group."""
    by: dict[str, dict[int, Mapping[str, Sequence[float]]]] = {}
    for r in runs:
        by.setdefault(r["variant"], {})[int(r["seed"])] = r["outcomes"]

    def per_seed(variant: str, seeds: Sequence[int] | None, conditions: Sequence[str]) -> list[list[float]]:
        got = by.get(variant, {})
        return [pooled(got[s], conditions) for s in sorted(got) if seeds is None or s in seeds]

    def stats(per: list[list[float]], seeds: list[int]) -> dict[str, Any]:
        lo, hi = seeds_then_episodes_ci(per)
        means = [float(np.mean(x)) for x in per]
        return {"mean": float(np.mean(means)), "ci": [lo, hi], "per_seed": means, "seeds": seeds}

    success: dict[str, dict[str, Any]] = {}
    for v in (v for v in VARIANTS if v in by):
        seeds = sorted(by[v])
        conds = dict.fromkeys(c for s in seeds for c in by[v][s])
        success[v] = {c: stats(per_seed(v, None, [c]), seeds) for c in conds
                      if all(c in by[v][s] for s in seeds)}
        for name, conditions in POOLS.items():
            success[v][name] = stats(per_seed(v, None, conditions), seeds)
        success[v]["drop_held_out_visual"] = success[v]["nominal"]["mean"] - success[v]["held_out_visual"]["mean"]

    def diff(a: str, b: str, seeds: Sequence[int] | None, conditions: Sequence[str]) -> dict[str, Any] | None:
        xa, xb = per_seed(a, seeds, conditions), per_seed(b, seeds, conditions)
        if not xa or not xb:
            return None
        d, lo, hi = difference_ci(xa, xb)
        out = {"difference": d, "ci": [lo, hi], "verdict": verdict(lo, hi), "seeds": [len(xa), len(xb)]}
        if min(len(xa), len(xb)) >= 2:  # amendment 2: Welch's t on seed means beside it; a verdict needs both
            _, wlo, whi, p = welch_ci(xa, xb)
            out.update(welch_ci=[wlo, whi], welch_p=p, verdict_bootstrap_only=out["verdict"],
                       verdict=seed_level_verdict((lo, hi), (wlo, whi)))
        return out

    comparisons: dict[str, dict[str, dict[str, Any]]] = {}
    for group, seeds in (*GROUPS.items(), (POOLED, None)):
        for pool, conditions in POOLS.items():
            for a, b in COMPARISONS:
                d = diff(a, b, seeds, conditions)
                if d is None:
                    continue
                if seeds is None:  # every seed together: reported, the protocol gives it no verdict
                    d["verdict"] = None
                elif min(d["seeds"]) < len(seeds):  # amendment 1: a group's verdict waits for all its seeds
                    d["verdict"] = f"partial ({min(d['seeds'])} of {len(seeds)} seeds)"
                comparisons.setdefault(group, {}).setdefault(pool, {})[f"{a} - {b}"] = d
    conditions = ["nominal", *(f"{f}/{lv}" for f in FACTORS for lv in LEVELS)]
    per_condition = {c: {**d, "verdict": None} for c in conditions if all(c in success.get(v, {}) for v in PRIMARY)
                     and (d := diff(*PRIMARY, None, [c])) is not None}  # secondary: no verdict
    return {"success": success, "comparisons": comparisons, "full - scratch per condition": per_condition,
            "verdict": {g: comparisons[g]["held_out_visual"][" - ".join(PRIMARY)]["verdict"]
                        for g in GROUPS if " - ".join(PRIMARY) in comparisons.get(g, {}).get("held_out_visual", {})}}


def _fmt(d: Mapping[str, Any]) -> str:
    text = f"{d['difference']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
    return f"{text} {d['verdict']}" if d.get("verdict") else text


def _welch(d: Mapping[str, Any]) -> str:
    if "welch_ci" not in d:
        return ""
    text = f"[{d['welch_ci'][0]:+.2f}, {d['welch_ci'][1]:+.2f}], p = {d['welch_p']:.2f}"
    return f"{text} (bootstrap alone: {d['verdict_bootstrap_only']})" if d.get("verdict") else text


def table(summary: Mapping[str, Any]) -> str:
    variants = [v for v in VARIANTS if v in summary["success"]]
    rows = ["nominal", *POOLS, *(f"{f}/{lv}" for f in FACTORS for lv in LEVELS)]
    rows = [c for c in rows if any(c in summary["success"][v] for v in variants)]
    cell = lambda s: f"{s['mean']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]" if s else ""  # noqa: E731
    lines = ["| condition | " + " | ".join(variants) + " | full - scratch |", "|---" * (len(variants) + 2) + "|"]
    per_condition = summary["full - scratch per condition"]
    for c in rows:
        d = per_condition.get(c) or summary["comparisons"].get(POOLED, {}).get(c, {}).get("full - scratch")
        lines.append(f"| {c} | " + " | ".join(cell(summary["success"][v].get(c)) for v in variants)
                     + f" | {_fmt({**d, 'verdict': None}) if d else ''} |")  # over every seed: no verdict
    lines += ["", "| seeds | pool | comparison | seeds per side | difference [95% bootstrap CI] verdict (both "
              "intervals) | Welch's t on seed means [95% CI] |", "|---|---|---|---|---|---|"]
    for group, pools in summary["comparisons"].items():
        label = f"{group} ({', '.join(map(str, GROUPS[group]))})" if group in GROUPS else group
        for pool, comps in pools.items():
            lines += [f"| {label} | {pool} | {name} | {d['seeds'][0]} / {d['seeds'][1]} | {_fmt(d)} | {_welch(d)} |"
                      for name, d in comps.items()]
    if not summary["comparisons"]:
        lines.append("| (none: a comparison needs agents of both its variants) | | | | | |")
    return "\n".join(lines)


def plot(summary: Mapping[str, Any], path: Path, target: str) -> Path | None:
    """Success per visual condition (and nominal, and the held-out pool) per variant, mean over seeds with its
    interval, each seed a dot."""
    variants = [v for v in VARIANTS if v in summary["success"]]
    if not variants:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = ["nominal", *(f"{f}/{lv}" for f in VISUAL for lv in LEVELS), "held_out_visual"]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        rows = [summary["success"][v][c] for c in conds]  # summarize() gives every variant all of them
        x = np.arange(len(conds)) + i * width
        err = np.array([[r["mean"] - r["ci"][0], r["ci"][1] - r["mean"]] for r in rows]).T
        ax.bar(x, [r["mean"] for r in rows], width, yerr=err, capsize=1.5, ecolor="0.4", label=v)
        for xi, r in zip(x, rows):  # each seed a dot beside its bar's error bar
            ax.plot([xi + width * 0.25] * len(r["per_seed"]), r["per_seed"], "o", ms=2.5, mfc="k", mec="w", mew=0.4,
                    zorder=3)
    ax.set_xticks(np.arange(len(conds)) + width * (len(variants) - 1) / 2,
                  [c.replace("colors_textures", "col+tex").replace("/", "\n") for c in conds], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (mean over seeds, 95% CI)")
    ax.legend(fontsize=7)
    seeds = sorted({s for v in variants for s in summary["success"][v]["nominal"]["seeds"]})
    ax.set_title(f"claim 2b: the target policy under visual shifts, by encoder ({target}; seeds "
                 f"{', '.join(map(str, seeds))}; dots: seeds)", fontsize=9)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="claims.py shifts", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_testbed"),
                   help="claims.py pretraining's work folder: the agents of <dir>/<pixel (the full variant)|scratch|"
                        "vip>/<target>/seed<S>/stage3/<target>")
    p.add_argument("--target", default="PressLitButton")
    p.add_argument("--seeds", nargs="+", type=int, default=list(GROUPS["exploratory"]),
                   help=f"seeds to evaluate (groups: {GROUPS})")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--episodes", type=int, default=None,
                   help=f"evaluation episodes per condition (default: {EPISODES}, or the results file's count with "
                        "--summarize-only)")
    p.add_argument("--jobs", type=int, default=2, help="agents evaluated at a time, each its own process")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (agents already in it are kept)")
    p.add_argument("--plot", type=Path, default=PLOT)
    p.add_argument("--summarize-only", action="store_true",
                   help="table and plot of every agent in --out (--seeds and --variants are not read)")
    return p.parse_args(argv)


def result(runs: Mapping[str, Mapping[str, Any]], target: str, episodes: int, cpu: str) -> dict[str, Any]:
    ordered = [runs[k] for k in sorted(runs, key=lambda k: (int(runs[k]["seed"]), VARIANTS.index(runs[k]["variant"])))]
    return {"benchmark": "claims encoder shifts (claim 2b)", "protocol": PROTOCOL, "summary_commit": git_commit(ROOT),
            "cpu": cpu, "target": target, "episodes": episodes, "summary": summarize(ordered), "runs": ordered}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        sys.exit(f"error: --episodes {args.episodes}: expected >= 1")
    if args.out.is_dir() or args.plot.is_dir():
        sys.exit(f"error: --out {args.out} and --plot {args.plot} must be file paths, not folders")
    if args.summarize_only and not args.out.is_file():
        sys.exit(f"error: {args.out}: no results to summarize (run without --summarize-only first)")
    try:
        stored = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": [], "protocol": PROTOCOL}
    except json.JSONDecodeError as e:
        sys.exit(f"error: {args.out}: not JSON ({e})")
    if not isinstance(stored, dict) or stored.get("protocol") != PROTOCOL:
        sys.exit(f"error: {args.out}: not this benchmark's results (protocol "
                 f"{stored.get('protocol') if isinstance(stored, dict) else None!r}, expected {PROTOCOL!r})")
    stored.setdefault("runs", [])
    if args.summarize_only and args.episodes is None:
        args.episodes = stored.get("episodes", EPISODES)
    args.episodes = EPISODES if args.episodes is None else args.episodes
    if stored["runs"] and (stored.get("episodes"), stored.get("target")) != (args.episodes, args.target):
        sys.exit(f"error: {args.out} holds {stored.get('target')} agents evaluated on {stored.get('episodes')} "
                 f"episodes per condition, not {args.target} on {args.episodes}; use another --out")
    unknown = sorted({str(r.get("variant")) for r in stored["runs"]} - set(VARIANTS))
    if unknown:
        sys.exit(f"error: {args.out}: runs of unknown variants {unknown} (expected {list(VARIANTS)})")
    runs = {run_key(r["variant"], int(r["seed"])): r for r in stored["runs"]}  # measured earlier: kept
    cpu = stored.get("cpu", cpu_model())
    failed = []
    if not args.summarize_only:
        cpu = cpu_model()
        work = args.work_dir.resolve()
        if not work.is_dir():
            sys.exit(f"error: --work-dir {work}: no such folder (claims.py pretraining's work folder)")
        todo = [(work, v, args.target, s, args.episodes) for s in dict.fromkeys(args.seeds)
                for v in dict.fromkeys(args.variants) if run_key(v, s) not in runs]
        for r in _pooled(_try_evaluate, todo, args.jobs):
            if "error" in r:
                failed.append(r)
                print(f"[claims shifts] {r['variant']} seed {r['seed']}: {r['error']}", file=sys.stderr, flush=True)
                continue
            runs[run_key(r["variant"], r["seed"])] = r
            write_json_atomic(args.out, result(runs, args.target, args.episodes, cpu))  # a stop keeps what finished
            print(f"[claims shifts] {r['variant']} seed {r['seed']}: nominal {np.mean(r['outcomes']['nominal']):.2f},"
                  f" held-out visual {np.mean(pooled(r['outcomes'], HELD_OUT_VISUAL)):.2f}", flush=True)
    if not runs:
        sys.exit("error: no agent evaluated" + (f" ({len(failed)} not finished)" if failed else ""))
    out = result(runs, args.target, args.episodes, cpu)
    write_json_atomic(args.out, out)  # --summarize-only too: the summary of this code (each run keeps its commit)
    print(table(out["summary"]))
    figure = plot(out["summary"], args.plot, args.target)
    print(f"results: {args.out}" + (f"; figure: {figure}" if figure else ""))
    if failed:
        sys.exit(f"error: {len(failed)} agent(s) not evaluated (above)")
    return out


if __name__ == "__main__":  # run by itself it did nothing and exited 0
    raise SystemExit("error: claims_encoder_shifts.py is claims.py's 'shifts' sub-command: "
                     "run python benchmarks/claims.py shifts (--help for its options)")
