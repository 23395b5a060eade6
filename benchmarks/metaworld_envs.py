"""Meta-World adapter (``robopretrain.envs.metaworld``): scripted-expert success and env speed, measured in one run.

Expert success: Meta-World's scripted policy of each MT10 task over seeds 0..``--episodes``-1, with Gaussian
action noise of each ``--noise`` std (clipped to [-1, 1]), physics only. Episodes end at success or at
Meta-World's own limit of 500 steps; an episode that succeeds by step T would have succeeded with a time limit
of T too (the steps before are the same), so success within each ``--limits`` comes from the same runs.

Throughput (one process): env steps per second physics-only and with the ``corner`` camera rendered as
``agentview_image`` at 64 px (with the adapter's simplified render meshes, and with Meta-World's full ones),
over whole episodes of the expert with noise 0.3 (time limit 200) of each task;
only ``env.reset`` and ``env.step`` are timed (a reset costs 500 physics steps and one render), by the wall
clock and by this process's CPU time (all its threads: the software renderer's too), which other processes
on a shared machine do not inflate.

Prints markdown tables and writes JSON (default benchmarks/results/metaworld_envs.json).

    python benchmarks/metaworld_envs.py                          # 50 episodes x 3 noise levels x MT10
    python benchmarks/metaworld_envs.py --episodes 5 --tasks drawer-open reach --render-steps 100
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from envs import machine_info, wilson_interval, write_json_atomic  # noqa: E402  (benchmarks/envs.py)
from robopretrain.envs.metaworld import MAX_PATH_LENGTH, MESH_CELL, MT10_TASKS, MetaWorldEnv, task_name  # noqa: E402
from robopretrain.envs.metaworld_collect import ScriptedExpert  # noqa: E402

DRIVER_NOISE = 0.3  # action noise of the expert that drives the throughput runs


def expert_episode(env: MetaWorldEnv, task: str, noise: float, seed: int,
                   timings: list[tuple[float, float]] | None = None) -> tuple[bool, int]:
    """(success, steps) of one expert episode from seed ``seed`` (ends at success or the env's limit); the
    (wall, CPU) seconds spent in ``env.reset``/``env.step`` are appended to ``timings``."""
    wall, cpu = time.perf_counter(), time.process_time()
    obs, _ = env.reset(seed=seed)
    spent = [time.perf_counter() - wall, time.process_time() - cpu]
    expert = ScriptedExpert(task, noise, np.random.default_rng(seed))
    steps, done, info = 0, False, {}
    while not done:
        action = expert.act(obs)
        wall, cpu = time.perf_counter(), time.process_time()
        obs, _, terminated, truncated, info = env.step(action)
        spent[0] += time.perf_counter() - wall
        spent[1] += time.process_time() - cpu
        steps, done = steps + 1, terminated or truncated
    if timings is not None:
        timings.append((spent[0], spent[1]))
    return bool(info["success"]), steps


def measure_expert(task: str, noise: float, episodes: int, limits: Sequence[int]) -> dict[str, Any]:
    env = MetaWorldEnv(task, render_images=False, max_episode_steps=max(limits))
    runs = [expert_episode(env, task, noise, seed) for seed in range(episodes)]
    env.close()
    out: dict[str, Any] = {"episodes": episodes, "noise": noise}
    for limit in limits:
        wins = sum(ok and n <= limit for ok, n in runs)
        lo, hi = wilson_interval(wins, episodes)
        out[f"success@{limit}"] = wins / episodes
        out[f"success@{limit}_ci95"] = [round(lo, 3), round(hi, 3)]
    lengths = [n for ok, n in runs if ok]
    out["success_length_mean"] = round(float(np.mean(lengths)), 1) if lengths else None
    out["success_length_p95"] = int(np.percentile(lengths, 95)) if lengths else None
    return out


def measure_throughput(tasks: Sequence[str], physics_steps: int, render_steps: int, seed: int) -> dict[str, Any]:
    """Env steps/s over whole expert episodes (noise DRIVER_NOISE) of each task, until ``*_steps`` per task."""
    out = {}
    modes = (("physics", False, physics_steps, MESH_CELL), ("render_64", True, render_steps, MESH_CELL),
             ("render_64_full_meshes", True, render_steps, 0.0))
    for name, render, budget, cell in modes:
        steps, timings = 0, []
        for task in tqdm(tasks, desc=f"throughput {name}", leave=False):
            env = MetaWorldEnv(task, render_images=render, image_size=64, max_episode_steps=200, mesh_cell=cell)
            env.reset(seed=seed)  # builds the renderer: not timed
            done = 0
            while done < budget:
                done += expert_episode(env, task, DRIVER_NOISE, seed + done, timings)[1]
            steps += done
            env.close()
        wall, cpu = (sum(t[i] for t in timings) for i in (0, 1))
        out[name] = {"steps": steps, "seconds": round(wall, 3), "steps_per_s": round(steps / wall, 1),
                     "cpu_seconds": round(cpu, 3), "steps_per_cpu_s": round(steps / cpu, 1), "tasks": len(tasks)}
    return out


def markdown_tables(result: dict[str, Any]) -> str:
    tp, limits, noises = result["throughput"], result["limits"], result["noise"]
    lines = ["| mode | steps timed | steps/s (wall) | steps per CPU-second |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {tp[k]['steps']} | {tp[k]['steps_per_s']:.0f} | {tp[k]['steps_per_cpu_s']:.0f} |"
              for k, label in (("physics", "physics only"), ("render_64", "rendered 64 px (corner)"),
                               ("render_64_full_meshes", "rendered 64 px, mesh_cell=0 (Meta-World's full meshes)"))]
    n = result["episodes"]
    head = " | ".join(f"noise {z:g}: @{'/@'.join(map(str, limits))}" for z in noises)
    lines += ["", f"Expert success over {n} seeds (within each time limit), mean length of successes:", "",
              f"| task | {head} | mean len (noise {noises[0]:g}) |", "|---|" + "---:|" * (len(noises) + 1)]
    for task, per_noise in result["experts"].items():
        cells = [" / ".join(f"{r[f'success@{lim}']:.2f}" for lim in limits) for r in per_noise]
        lines.append(f"| {task} | {' | '.join(cells)} | {per_noise[0]['success_length_mean']} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--episodes", type=int, default=50, help="expert episodes per task and noise level")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3], help="action noise std levels")
    parser.add_argument("--limits", type=int, nargs="+", default=[150, 200, MAX_PATH_LENGTH],
                        help="time limits to report success within (the runs go to the largest)")
    parser.add_argument("--tasks", nargs="+", default=list(MT10_TASKS), help="Meta-World tasks (default: MT10)")
    parser.add_argument("--physics-steps", type=int, default=1000, help="physics-only steps timed per task")
    parser.add_argument("--render-steps", type=int, default=200, help="rendered steps timed per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metaworld_envs.json"))
    args = parser.parse_args(argv)
    try:
        args.tasks = [task_name(t) for t in args.tasks]
    except ValueError as exc:
        parser.error(f"--tasks: {exc}")
    if args.episodes < 1 or args.physics_steps < 1 or args.render_steps < 1 or min(args.limits) < 1:
        parser.error("--episodes, --limits, --physics-steps and --render-steps must be >= 1")
    args.limits = sorted(set(args.limits))
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.time()
    from importlib import metadata

    result: dict[str, Any] = {"benchmark": "metaworld envs", "machine": machine_info(),
                              "metaworld": metadata.version("metaworld"), "tasks": args.tasks,
                              "episodes": args.episodes, "noise": args.noise, "limits": args.limits,
                              "driver_noise": DRIVER_NOISE}
    result["throughput"] = measure_throughput(args.tasks, args.physics_steps, args.render_steps, args.seed)
    result["experts"] = {task: [measure_expert(task, z, args.episodes, args.limits) for z in args.noise]
                         for task in tqdm(args.tasks, desc="experts")}
    result["wall_seconds"] = round(time.time() - started, 1)
    write_json_atomic(args.out, result)
    print(markdown_tables(result))
    print(f"wrote {args.out} ({result['wall_seconds']} s)")
    return result


if __name__ == "__main__":
    main()
