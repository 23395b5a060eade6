"""Does each offline learner learn what clean expert data teaches? BC / IQL / CQL / Cal-QL on clean scripted-expert
demos of single tasks, with privileged state; success measured in sim. Protocol: ``benchmarks/protocols/recipe.md``.

    python benchmarks/recipe.py                         # the protocol: 4 tasks x 4 learners x 3 seeds x 5000 updates
    python benchmarks/recipe.py --jobs 2                # two runs at a time (one torch thread each)
    python benchmarks/recipe.py --summarize-only        # table from the saved JSON
    python benchmarks/recipe.py --tasks Reach --algos td3_bc awac rebrac --seeds 0 --updates 1000 2500 \
        --out benchmarks/results/recipe_offline_family.json   # issue 15's learners (protocol addendum in recipe.md)
    python benchmarks/recipe.py --tasks Reach --algos dt --seeds 0 --updates 1000 2500 \
        --out benchmarks/results/recipe_dt.json          # the Decision Transformer addendum (protocol's last section)

Each run is ``robopretrain.train`` (stage 2's own entry point, as a subprocess) on one task's file, with checkpoints
every 500 updates (or the budgets' common divisor); the checkpoints at the protocol's budgets are then evaluated on 50
fixed episodes (per-episode outcomes kept for the bootstrap). A rerun skips finished runs and evaluations, and refuses
to add runs of other ``--demos`` / ``--episodes`` to the same ``--out``. Output:
``benchmarks/results/recipe.json`` and a markdown table on stdout (mean success over seeds, each seed, 95% bootstrap
interval over seeds and episodes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils; appended so benchmarks/ shadows no package
from bench_utils import cpu_model, ended_with_this, seeds_then_episodes_ci, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "recipe.json"
ALGOS = ("bc", "iql", "cql", "calql", "td3_bc", "awac", "rebrac", "bcq", "por")  # every learner the benchmark can run
PROTOCOL_ALGOS = ("bc", "iql", "cql", "calql")  # the protocol's default set
TASKS = ("Reach", "PushBlock", "OpenDrawer", "PressButton")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--algos", nargs="+", default=list(PROTOCOL_ALGOS), choices=ALGOS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--updates", nargs="+", type=int, default=[1000, 2500, 5000], help="budgets evaluated")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per checkpoint")
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_recipe"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra robopretrain.train overrides for every run (e.g. obs.min_std=0.05); they are part of "
                        "the learner's label in the JSON and the table, and of its run folder")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--evaluate-only", action="store_true",
                   help="no training: evaluate the budgets whose checkpoints exist (a run still going or cut short)")
    return p.parse_args(argv)


def collect_data(task: str, demos: int, work: Path) -> Path:
    from omegaconf import OmegaConf

    from sim_envs.collect import collect

    path = work / "data" / f"{task}_clean{demos}.hdf5"
    if path.is_file():
        return path
    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": [task], "episodes_per_task": demos, "render_images": False, "output": str(path),
                    "overwrite": True, "seed": 0,
                    "kinds": {"clean": {"fraction": 1.0, "noise": 0.0, "stop": None},
                              "noisy": {"fraction": 0.0, "noise": 0.3, "stop": None},
                              "failing": {"fraction": 0.0, "noise": 1.0, "stop": [0.1, 0.5]}}})
    return Path(collect(cfg, progress=False))


def label(algo: str, overrides: list[str]) -> str:
    """The learner's name in the results: ``bc``, or ``bc [obs.min_std=0.05]`` with extra overrides."""
    return f"{algo} [{','.join(overrides)}]" if overrides else algo


MAX_CHECKPOINTS = 200  # kept per run: every budget's checkpoint must survive until it is evaluated


def checkpoint_period(budgets: list[int]) -> int:
    """Updates between a run's checkpoints: the largest period that lands on every budget (500 for the protocol's
    1000 / 2500 / 5000; a fixed 500 missed budgets such as 10 and 20, and the evaluation ended in a traceback).
    Raises SystemExit when the budgets would need more than :data:`MAX_CHECKPOINTS` checkpoints."""
    import math

    if any(u < 1 for u in budgets):
        raise SystemExit(f"recipe: --updates {budgets}; expected integers >= 1")
    common = math.gcd(*budgets)
    period = 500 if common % 500 == 0 else common  # the protocol's budgets keep their checkpoints every 500
    if max(budgets) // period > MAX_CHECKPOINTS:
        raise SystemExit(f"recipe: --updates {budgets} share no checkpoint period with at most {MAX_CHECKPOINTS} "
                         "checkpoints per run; choose budgets with a larger common divisor")
    return period


def train_run(data: Path, out: Path, algo: str, seed: int, budgets: list[int], overrides: list[str] = ()) -> float:
    """Stage 2 as a subprocess (resumes when killed) up to the largest of ``budgets``, with a checkpoint at each
    (:func:`checkpoint_period`); returns its wall time (0 when it had already finished). ``overrides``: extra
    ``KEY=VALUE`` arguments (``+KEY=VALUE`` for a key the config does not have)."""
    steps, period = max(budgets), checkpoint_period(budgets)
    if (out / "checkpoints" / f"ckpt_{steps:08d}").is_dir():
        return 0.0
    cmd = [sys.executable, "-m", "robopretrain.train", f"algo={algo}", f"data.path={data}", f"seed={seed}",
           f"output_dir={out}", f"hydra.run.dir={out}/hydra", "num_threads=1", f"train.steps={steps}",
           "train.eval_targets=[]", f"train.checkpoint_every={period}", f"train.keep_checkpoints={MAX_CHECKPOINTS}",
           "train.progress=false",
           "train.tensorboard=false", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ended_with_this(), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def evaluate_checkpoint(ckpt: Path, task: str, episodes: int) -> list[bool]:
    """Per-episode success of the deterministic policy on the fixed evaluation seeds."""
    import torch

    from robopretrain.checkpoint import load_agent
    from robopretrain.envs.target import Target
    from robopretrain.evaluation import EVAL_SEED, agent_env, run_episodes

    torch.set_num_threads(1)
    agent, _ = load_agent(ckpt)
    env = agent_env(agent, Target(task))
    try:
        return [bool(run_episodes(agent, env, 1, eval_seed=EVAL_SEED + i)["success"]) for i in range(episodes)]
    finally:
        env.close()


def one(args: argparse.Namespace, results: dict[str, Any], task: str, algo: str, seed: int) -> None:
    name = label(algo, args.set)
    key = f"{task}/{name}/seed{seed}"
    entry = results.setdefault(key, {"task": task, "algo": name, "seed": seed, "demos": args.demos, "success": {}})
    check_same_settings(key, entry, args)
    if all(str(u) in entry["success"] for u in args.updates):
        return
    data = collect_data(task, args.demos, args.work_dir)
    out = (args.work_dir / "runs" / task / re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
           / (f"seed{seed}" if args.demos == 50 else f"seed{seed}_demos{args.demos}"))  # the protocol's 50: as before
    if not args.evaluate_only:
        seconds = train_run(data, out, algo, seed, list(args.updates), args.set)
        if seconds:
            entry["train_seconds"] = seconds
    for u in args.updates:
        ckpt = out / "checkpoints" / f"ckpt_{u:08d}"
        if str(u) not in entry["success"] and (ckpt.is_dir() or not args.evaluate_only):
            entry["success"][str(u)] = evaluate_checkpoint(ckpt, task, args.episodes)
    print(f"{key}: " + ", ".join(f"{u}: {np.mean(entry['success'][str(u)]):.2f}" if str(u) in entry["success"]
                                 else f"{u}: not trained" for u in args.updates), flush=True)


def check_same_settings(key: str, entry: dict[str, Any], args: argparse.Namespace) -> None:
    """Refuse (SystemExit) to add to a result measured with other ``--demos`` or ``--episodes``: a rerun with more
    seeds, demos and episodes pooled seed 0 (3 demos, 2 episodes) with seed 1 (6 demos, 4 episodes) in one row.
    Entries written before the demos were recorded are taken as the protocol's."""
    demos = entry.get("demos", 50)
    episodes = {len(v) for v in entry["success"].values()}
    if demos != args.demos or episodes - {args.episodes}:
        raise SystemExit(f"recipe: {key} in {args.out} was measured with --demos {demos} --episodes "
                         f"{'/'.join(map(str, sorted(episodes))) or args.episodes}; this run asks --demos {args.demos} "
                         f"--episodes {args.episodes}: use another --out (or the same settings)")


def summarize(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rows = {}
    for entry in results.values():
        for u, outcomes in entry["success"].items():
            rows.setdefault((entry["task"], entry["algo"], int(u)), []).append((entry["seed"], outcomes))
    summary = []
    for (task, algo, u), per in sorted(rows.items()):
        per.sort()
        lo, hi = seeds_then_episodes_ci([o for _, o in per])
        summary.append({"task": task, "algo": algo, "updates": u, "mean": float(np.mean([np.mean(o) for _, o in per])),
                        "per_seed": {s: float(np.mean(o)) for s, o in per}, "ci95": [lo, hi],
                        "episodes": len(per[0][1])})
    return {"summary": summary}


def table(summary: list[dict[str, Any]], budget: int) -> str:
    present = {r["algo"] for r in summary}  # the protocol's learners, then any other measured (e.g. dt)
    algos = [a for a in ALGOS if a in present] + sorted(present - set(ALGOS))
    lines = [f"success at {budget} updates (mean over seeds [95% CI]; seeds)", "",
             "| task | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    tasks = sorted({r["task"] for r in summary})
    for task in tasks:
        cells = []
        for algo in algos:
            r = next((r for r in summary if r["task"] == task and r["algo"] == algo and r["updates"] == budget), None)
            cells.append("-" if r is None else f"{r['mean']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]; "
                         + " / ".join(f"{v:.2f}" for v in r["per_seed"].values()))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    if args.summarize_only and not args.out.is_file():  # it wrote an empty results file there
        raise SystemExit(f"recipe: no results at {args.out} to summarize")
    results: dict[str, Any] = json.loads(args.out.read_text()).get("runs", {}) if args.out.is_file() else {}
    if not args.summarize_only:
        import threading

        lock = threading.Lock()
        jobs = [(t, a, s) for t in args.tasks for a in args.algos for s in args.seeds]
        for task in args.tasks:  # data first, once per task
            collect_data(task, args.demos, args.work_dir)

        def work(job: tuple[str, str, int]) -> None:
            one(args, results, *job)
            with lock:
                save(args, results)

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(work, jobs))
    out = save(args, results)
    for budget in args.updates:
        print(table(out["summary"], budget))
        print()


def save(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    out = {"protocol": "benchmarks/protocols/recipe.md", "command": " ".join(sys.argv), "cpu": cpu_model(),
           "runs": results, **summarize(results, args)}
    write_json_atomic(args.out, out)
    return out


if __name__ == "__main__":
    main()
