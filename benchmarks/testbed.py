"""Is the testbed valid? The six criteria of ``benchmarks/protocols/testbed.md`` per target and seed, from pipeline
runs of the ``testbed`` preset (pixel agent) and its privileged-state variant (oracle).

    python benchmarks/testbed.py                                  # 4 targets x 3 seeds x {pixel, oracle}
    python benchmarks/testbed.py --targets PressLitButton --seeds 0 --jobs 2
    python benchmarks/testbed.py --summarize-only                 # table from the saved JSON

Each run is ``python -m robopretrain.pipeline --config-name <preset> targets=[T] seed=S run_dir=...`` as a
subprocess (one torch thread); a rerun resumes unfinished runs and skips finished ones (the pipeline's own
``done.json`` files). Output: ``benchmarks/results/testbed.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils; appended so benchmarks/ shadows no package
from bench_utils import (  # noqa: E402
    DEFAULT_PRESET,
    TARGET_PRESETS,
    check_run_settings,
    cpu_model,
    git_commit,
    outcomes,
    results_lock,
    run_logged,
    seeds_then_episodes_ci,
    write_json_atomic,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "testbed.json"
TARGETS = ("PlaceInBowl", "OpenDoorRight", "CloseDrawerPressButton", "PressLitButton")
VARIANTS = {
    "pixel": [],
    "oracle": ["obs.rgb=[]", "obs.low_dim=[proprio,object]", "stage1.enabled=false", "encoder.mode=scratch",
               "evaluate.blind=[]", "evaluate.robustness.enabled=false"],
}
BLIND = ("black", "other_episode")
THRESHOLDS = {"expert": 0.95, "oracle": 0.8, "sighted": 0.6, "blind": 0.1, "blind_margin": 0.5, "prior": 0.5,
              "minutes": 60.0}
EXPERT_SEED = 2_000_000
PROTOCOL_SEEDS = 3  # criteria are met by the mean over seeds 0, 1, 2 (benchmarks/protocols/testbed.md)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--targets", nargs="+", default=list(TARGETS), help="sim_envs target tasks (default: all four)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(PROTOCOL_SEEDS)),
                   help="pipeline seeds (the protocol's: %(default)s)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="pixel: the camera agent; oracle: its privileged-state variant (default: both)")
    p.add_argument("--preset", default=None,
                   help="the pipeline config name (configs/<preset>.yaml) for every target; default: "
                        f"{DEFAULT_PRESET!r}, or the target's own preset ({TARGET_PRESETS})")
    p.add_argument("--override", nargs="*", default=[], help="extra pipeline overrides for every run (recorded)")
    p.add_argument("--expert-episodes", type=int, default=100,
                   help="episodes of the scripted expert per target (criterion 1; default %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="pipeline runs at a time (one torch thread each)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_testbed"),
                   help="the pipeline runs' folders (a rerun skips what finished; default %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default %(default)s)")
    p.add_argument("--summarize-only", action="store_true",
                   help="print the criteria table from --out, running nothing")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- measuring


def expert_success(task: str, episodes: int) -> dict[str, Any]:
    """Criterion 1: the noiseless scripted expert on ``episodes`` seeded episodes, no rendering."""
    import gymnasium as gym

    import sim_envs
    from sim_envs.experts import make_expert

    env = gym.make(sim_envs.env_id(task), render_images=False)
    wins = 0
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=EXPERT_SEED + i)
            expert = make_expert(env, noise=0.0, rng=np.random.default_rng(i))
            done, info = False, {}
            while not done:
                obs, _, terminated, truncated, info = env.step(expert.act(obs))
                done = terminated or truncated
            wins += bool(info.get("success", False))
    finally:
        env.close()
    return {"success": wins / episodes, "successes": wins, "episodes": episodes}


def run_dir(work: Path, variant: str, target: str, seed: int) -> Path:
    return work / variant / target / f"seed{seed}"


def preset_for(args: argparse.Namespace, target: str) -> str:
    """The pipeline preset a target's runs use: ``--preset`` if given, else the target's own or the default."""
    return args.preset or TARGET_PRESETS.get(target, DEFAULT_PRESET)


def pipeline_command(args: argparse.Namespace, variant: str, target: str, seed: int) -> list[str]:
    return [sys.executable, "-m", "robopretrain.pipeline", f"--config-name={preset_for(args, target)}",
            f"targets=[{target}]",
            f"seed={seed}", f"run_dir={run_dir(args.work_dir, variant, target, seed)}", "num_threads=1",
            "progress=false", *VARIANTS[variant], *args.override]


def run_pipeline(args: argparse.Namespace, variant: str, target: str, seed: int) -> dict[str, Any]:
    """Run (or resume) one pipeline run; returns the command, wall seconds of this call and load averages."""
    return run_logged(pipeline_command(args, variant, target, seed), run_dir(args.work_dir, variant, target, seed), ROOT)


def read_run(folder: Path, target: str) -> dict[str, Any]:
    """Criteria 2-6 inputs of one finished pipeline run folder: final success sighted and blind, the stage-2
    per-prior-task success, and the stages' wall times. Raises FileNotFoundError for an unfinished run."""
    results = json.loads((folder / "evaluate" / "results.json").read_text())[target]
    out: dict[str, Any] = {"nominal": _counts(results["nominal"])}
    for mode in BLIND:
        if f"blind_{mode}" in results:
            out[f"blind_{mode}"] = _counts(results[f"blind_{mode}"])
    out["prior_tasks"] = stage2_prior_success(folder / "stage2" / "metrics.jsonl")
    out["stage_seconds"] = {p.parent.name: json.loads(p.read_text())["seconds"]
                            for p in sorted(folder.glob("*/done.json"))}
    out["minutes"] = sum(out["stage_seconds"].values()) / 60.0
    return out


def _counts(r: dict[str, Any]) -> dict[str, Any]:
    return {"success": float(r["success"]), "successes": int(r["successes"]), "episodes": int(r["episodes"])}


def stage2_prior_success(metrics: Path) -> dict[str, float]:
    """``{task: success}`` from the last line of stage 2's ``metrics.jsonl`` that holds per-task evaluations."""
    if not metrics.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if any(k.startswith("eval/") and k.endswith("/success") and k.count("/") == 2 for k in row):
            last = row
    return {k.split("/")[1]: float(v) for k, v in last.items() if k.startswith("eval/") and k.endswith("/success")
            and k.count("/") == 2}


# --------------------------------------------------------------------------- criteria


def _mean_ci(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    values = [c["success"] for c in per_seed]
    lo, hi = seeds_then_episodes_ci([outcomes(c["successes"], c["episodes"]) for c in per_seed])
    return {"mean": float(np.mean(values)), "per_seed": values, "ci95": [lo, hi]}


def criteria(target: str, expert: dict[str, Any] | None, pixel: list[dict[str, Any]],
             oracle: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The protocol's rows for one target from its runs (lists over seeds; missing runs give ``met: None``)."""
    t = THRESHOLDS
    rows: list[dict[str, Any]] = []

    def row(name: str, stats: dict[str, Any] | None, met: bool | None, threshold: str) -> None:
        rows.append({"target": target, "criterion": name, "threshold": threshold, **(stats or {}), "met": met})

    row("1 expert", {"mean": expert["success"], "per_seed": []} if expert else None,
        expert["success"] >= t["expert"] if expert else None, f">= {t['expert']}")
    o = _mean_ci([r["nominal"] for r in oracle]) if oracle else None
    row("2 oracle (state)", o, o["mean"] >= t["oracle"] if o else None, f">= {t['oracle']}")
    s = _mean_ci([r["nominal"] for r in pixel]) if pixel else None
    row("3 sighted pixel", s, s["mean"] >= t["sighted"] if s else None, f">= {t['sighted']}")
    for mode in BLIND:
        b = _mean_ci([r[f"blind_{mode}"] for r in pixel]) if pixel and all(f"blind_{mode}" in r for r in pixel) else None
        met = None if (b is None or s is None) else (b["mean"] <= t["blind"] or s["mean"] - b["mean"] >= t["blind_margin"])
        row(f"4 blind ({mode})", b, met, f"<= {t['blind']} or sighted - blind >= {t['blind_margin']}")
    prior = [float(np.mean(list(r["prior_tasks"].values()))) for r in pixel if r["prior_tasks"]]
    p = {"mean": float(np.mean(prior)), "per_seed": prior} if prior else None
    row("5 stage-2 prior tasks (mean)", p, p["mean"] >= t["prior"] if p else None, f">= {t['prior']}")
    minutes = [r["minutes"] for r in pixel]
    m = {"mean": float(np.mean(minutes)), "per_seed": minutes} if minutes else None
    row("6 minutes per pixel run", m, m["mean"] <= t["minutes"] if m else None, f"<= {t['minutes']:g}")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | criterion | threshold | mean | per seed | 95% CI | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mean = f"{r['mean']:.2f}" if "mean" in r else "not run"
        seeds = ", ".join(f"{v:.2f}" for v in r.get("per_seed", []))
        ci = "[{:.2f}, {:.2f}]".format(*r["ci95"]) if "ci95" in r else ""
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        n = len(r.get("per_seed", []))
        if r["met"] is not None and 0 < n < PROTOCOL_SEEDS:  # the protocol's "met" is over its three seeds
            met += f" ({n} of {PROTOCOL_SEEDS} seeds)"
        lines.append(f"| {r['target']} | {r['criterion']} | {r['threshold']} | {mean} | {seeds} | {ci} | {met} |")
    return "\n".join(lines)


def summarize(results: dict[str, Any], targets: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for target in targets:
        runs = results["runs"]
        pick = lambda variant: [r["measured"] for k, r in sorted(runs.items())  # noqa: E731
                                if k.startswith(f"{variant}/{target}/") and "measured" in r]
        rows += criteria(target, results["expert"].get(target), pick("pixel"), pick("oracle"))
    return rows


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with results_lock(args.out):  # a second call on one --out is refused (each rewrote it from its own copy)
        measure_testbed(args)


def measure_testbed(args: argparse.Namespace) -> None:
    """The runs still to do, then the criteria table and figure (``main`` holds the results file's lock)."""
    from sim_envs.tasks import TASKS

    unknown = [t for t in args.targets if t not in TASKS]
    if unknown:  # was a KeyError traceback
        raise SystemExit(f"error: --targets {unknown}: no sim_envs task (the testbed's targets: {list(TARGETS)})")
    if args.summarize_only and not args.out.is_file():  # (it wrote a file of "not run" rows)
        raise SystemExit(f"error: {args.out}: no such results file (--summarize-only reads one; give --out)")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("runs", {})
    results.setdefault("expert", {})
    presets = results.get("preset") if isinstance(results.get("preset"), dict) else {}
    results.update({"protocol": "benchmarks/protocols/testbed.md", "cpu": cpu_model(),
                    "preset": {**presets, **{t: preset_for(args, t) for t in args.targets}}})
    if not args.summarize_only:
        for target in args.targets:
            if target not in results["expert"]:
                results["expert"][target] = expert_success(target, args.expert_episodes)
                print(f"expert {target}: {results['expert'][target]['success']:.2f}", flush=True)
        jobs = [(v, t, s) for t in args.targets for s in args.seeds for v in args.variants]

        def work(job: tuple[str, str, int]) -> None:
            variant, target, seed = job
            key = f"{variant}/{target}/seed{seed}"
            folder = run_dir(args.work_dir, variant, target, seed)
            if key in results["runs"] and "measured" in results["runs"][key]:
                done = results["runs"][key]  # kept: a run of other settings is another experiment
                if done.get("preset", preset_for(args, target)) != preset_for(args, target) or \
                        done.get("overrides", list(args.override)) != list(args.override):
                    raise SystemExit(f"error: {key} in {args.out} was measured with preset "
                                     f"{done.get('preset')!r} and overrides {done.get('overrides')}, not "
                                     f"{preset_for(args, target)!r} and {list(args.override)}; use another --out and "
                                     "--work-dir")
                return
            check_run_settings(folder, {"preset": preset_for(args, target), "variant": list(VARIANTS[variant]),
                                        "overrides": list(args.override)}, "testbed.py")
            info = run_pipeline(args, variant, target, seed)
            info.update(preset=preset_for(args, target), overrides=list(args.override))
            try:
                info["measured"] = read_run(folder, target)
            except FileNotFoundError as e:
                info["error"] = f"unfinished: {e}"
            info["commit"] = git_commit(ROOT)
            info["cpu"] = cpu_model()  # per run: one file holds runs of several machines
            results["runs"][key] = info
            write_json_atomic(args.out, results)
            print(f"{key}: {info.get('measured', {}).get('nominal', info.get('error'))}", flush=True)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(work, jobs))
    results["summary"] = summarize(results, args.targets)
    write_json_atomic(args.out, results)
    print(table(results["summary"]))


if __name__ == "__main__":
    main()
