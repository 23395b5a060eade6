"""Stage-3 collection throughput: env steps per second of the collector with 1, 2 and 4 envs, in this process or in
spawned worker processes (:mod:`robopretrain.collector`).

Only collection is timed (random actions stand in for the policy, so the figure is the envs' and the transport's
cost): the state path (physics only, ``dr=train``) and the image path (64 px agentview rendered, physics + visual
randomization at level train) on PlaceInBowl. Each configuration starts its envs (not timed), runs a few warm-up
rounds, then times ``--steps`` env steps. Next to each figure: the share of wall time collection would take in a
synchronous collect-then-update loop at UTD 1 with the CPU Cal-QL update time of benchmarks/results/update_speed.json
(state path), which says whether parallel envs can speed a run up at all.

Prints a markdown table and writes JSON (default benchmarks/results/stage3_collection.json).

    python benchmarks/stage3_collection.py                 # 400 env steps per configuration
    python benchmarks/stage3_collection.py --steps 1000 --envs 1 2 4 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sim_envs  # noqa: E402,F401  (first: it picks the headless GL backend before mujoco is imported)
from robopretrain.collector import VectorCollector  # noqa: E402
from robopretrain.envs.target import Target, env_factory as target_factory  # noqa: E402

TASK = "PlaceInBowl"
PHYSICS = {"level": "train", "factors": ["friction", "mass", "damping", "gripper_force"]}
VISUAL = {"level": "train", "factors": ["friction", "mass", "damping", "gripper_force", "lighting", "colors",
                                        "textures", "camera"]}
ROOT = Path(__file__).resolve().parents[1]


def env_factory(kind: str):
    if kind == "state":
        return target_factory(Target(TASK), (), None, PHYSICS)
    return target_factory(Target(TASK), ("agentview_image",), 64, VISUAL)


def convert_of(kind: str):
    keys = ("proprio", "object", "task_id") if kind == "state" else ("agentview_image", "proprio", "task_id")
    return lambda obs: {k: np.asarray(obs[k]) for k in keys}


def measure(kind: str, num_envs: int, asynchronous: bool, steps: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    c = VectorCollector(env_factory(kind), num_envs, convert=convert_of(kind), seed=seed, asynchronous=asynchronous)

    def policy(obs: Any) -> np.ndarray:
        return rng.uniform(-1, 1, size=(num_envs, 4)).astype(np.float32)

    try:
        t0 = time.perf_counter()
        c.start(0)
        startup = time.perf_counter() - t0
        for _ in range(5):
            c.step(policy, budget=10**9)
        counted, episodes = 0, 0
        t0 = time.perf_counter()
        while counted < steps:
            out = c.step(policy, budget=10**9)
            counted += out.transitions
            episodes += len(out.episodes)
        seconds = time.perf_counter() - t0
    finally:
        c.close()
    return {"kind": kind, "num_envs": num_envs, "asynchronous": asynchronous and num_envs > 1,
            "env_steps": counted, "episodes_finished": episodes, "seconds": seconds,
            "steps_per_s": counted / seconds, "startup_s": startup}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--kinds", nargs="+", default=["state", "image"], choices=["state", "image"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stage3_collection.json"))
    args = parser.parse_args(argv)
    update_ms = None
    speed = ROOT / "benchmarks" / "results" / "update_speed.json"
    if speed.is_file():
        update_ms = json.loads(speed.read_text())["devices"]["cpu"]["results"]["robopretrain"]["ms_per_update_median"]
    load_before = os.getloadavg()[0]
    rows = []
    for kind in args.kinds:
        for n in args.envs:
            for asynchronous in ([False] if n == 1 else [False, True]):
                row = measure(kind, n, asynchronous, args.steps)
                if update_ms is not None and kind == "state":
                    ms_step = 1000.0 / row["steps_per_s"]
                    row["collect_share_at_utd1"] = ms_step / (ms_step + update_ms)
                rows.append(row)
                print(f"{kind:5s} envs={n} {'workers ' if row['asynchronous'] else 'in-proc '}"
                      f"{row['steps_per_s']:8.1f} steps/s (start {row['startup_s']:.1f} s)", flush=True)
    print()
    print("| obs | envs | where | env steps/s | start (s) | collection share at UTD 1 (CPU Cal-QL update) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        share = f"{100 * r['collect_share_at_utd1']:.1f}%" if "collect_share_at_utd1" in r else "-"
        print(f"| {r['kind']} | {r['num_envs']} | {'worker processes' if r['asynchronous'] else 'learner process'} "
              f"| {r['steps_per_s']:.0f} | {r['startup_s']:.1f} | {share} |")
    out = {"task": TASK, "steps_per_configuration": args.steps, "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
           "cpu_calql_update_ms": update_ms, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
