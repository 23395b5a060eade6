"""Speed of the sim_envs tabletop envs, the agentview camera's resolution, the quality of the scripted experts
and whether each task needs vision ("blind replay"), measured in one run.

Throughput (one process, one core's worth of Python): env steps per second physics-only
(``render_images=False``) and with the agentview image rendered at 64 and 84 px. The steps are driven by
the task's expert with action noise (so contacts and grasps happen as in data collection) across every
selected task; only ``env.step`` and ``env.reset`` are timed, the expert's own time is not. Each figure
comes with the number of steps timed.

Camera: pixels per centimetre of table (along x and along y) in the 64 px agentview, over the part of the
table where things are placed, and whether the whole workspace (the table box and the Reach goals) is in view.

Expert quality: success rate (with a 95% Wilson interval) and mean episode length of the clean expert
(noise 0) over ``--episodes`` seeded episodes per task for the robot, and over ``--hand-episodes`` for the
human hand, whose rollouts become the action-free videos.

Blind replay (does the task need vision?): the clean expert's actions are recorded on ``--episodes`` other
seeds; then, on the evaluation seeds, (a) the average action sequence of those recordings and (b) one
recording of another episode (seed i gets the recording of donor seed i) are replayed open loop. A policy
that does not look succeeds about as often as these; every target task must stay <= 0.1.

Prints markdown tables (quotable in the README) and writes JSON (default benchmarks/results/envs.json).
Targets on the 2-core development machine: >= 500 rendered steps/s at 64 px, >= 2000 physics-only steps/s,
expert success >= 95% on every task, blind replay <= 0.1 on every target.

    python benchmarks/envs.py                      # 100 robot, 100 blind-replay and 20 hand episodes per task
    python benchmarks/envs.py --episodes 10 --tasks PushBlock Lift
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sim_envs  # noqa: E402  (first: it picks the headless GL backend before mujoco is imported)
import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
from sim_envs.experts import blind_replay, make_expert  # noqa: E402
from bench_utils import cpu_model  # noqa: E402  (this script's own folder is on sys.path)
from robopretrain.files import write_text_atomic  # noqa: E402

TARGETS = {"physics_steps_per_s": 2000.0, "render_64_steps_per_s": 500.0, "expert_success": 0.95,
           "target_blind_replay_success": 0.1}
DONOR_SEED = 100_000  # blind replay: the expert's actions are recorded on seeds DONOR_SEED + i
RENDER_SIZES = (64, 84)
DRIVER_NOISE = 0.3  # action noise of the expert that drives the throughput runs


# ----------------------------------------------------------------------------- throughput
def time_env_steps(task: str, steps: int, render_size: int | None, seed: int) -> tuple[int, float]:
    """Step ``task`` for ``steps`` steps under a noisy expert; return (steps, seconds spent in step/reset).

    The env is made and reset once before timing, so model compilation and renderer creation are excluded.
    """
    kwargs: dict[str, Any] = {"render_images": render_size is not None}
    if render_size is not None:
        kwargs["image_size"] = render_size
    env = gym.make(sim_envs.env_id(task), **kwargs)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, noise=DRIVER_NOISE, rng=rng)
    elapsed, episode = 0.0, 0
    for _ in range(steps):
        action = expert.act(obs)
        start = time.perf_counter()
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
            elapsed += time.perf_counter() - start
            expert = make_expert(env, noise=DRIVER_NOISE, rng=rng)
        else:
            elapsed += time.perf_counter() - start
    env.close()
    return steps, elapsed


def measure_throughput(tasks: Sequence[str], physics_steps: int, render_steps: int, seed: int) -> dict[str, Any]:
    """Steps/s physics-only and rendered at each of RENDER_SIZES, summed over ``tasks``."""
    modes: list[tuple[str, int | None, int]] = [("physics", None, physics_steps)]
    modes += [(f"render_{size}", size, render_steps) for size in RENDER_SIZES]
    out: dict[str, Any] = {}
    for name, size, steps in modes:
        total_steps, total_s = 0, 0.0
        for task in tqdm(tasks, desc=f"throughput {name}", leave=False):
            n, s = time_env_steps(task, steps, size, seed)
            total_steps += n
            total_s += s
        out[name] = {"steps": total_steps, "seconds": round(total_s, 3),
                     "steps_per_s": round(total_steps / total_s, 1),
                     "image_size": size, "tasks": len(tasks)}
    return out


# ----------------------------------------------------------------------------- expert quality
def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def run_expert_episode(env: gym.Env, seed: int) -> tuple[bool, int]:
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, noise=0.0, rng=np.random.default_rng(seed))
    steps, info = 0, {"success": False}
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        steps += 1
        if terminated or truncated:
            return bool(info["success"]), steps


def measure_expert(task: str, embodiment: str, episodes: int) -> dict[str, Any]:
    """Clean-expert success over seeds 0..episodes-1, physics only."""
    env = gym.make(sim_envs.env_id(task), render_images=False, embodiment=embodiment)
    results = [run_expert_episode(env, seed) for seed in range(episodes)]
    env.close()
    successes = sum(ok for ok, _ in results)
    lo, hi = wilson_interval(successes, episodes)
    success_lengths = [n for ok, n in results if ok]
    return {"episodes": episodes, "success": successes / episodes, "success_ci95": [round(lo, 3), round(hi, 3)],
            "mean_length": round(float(np.mean([n for _, n in results])), 1),
            "mean_success_length": round(float(np.mean(success_lengths)), 1) if success_lengths else None,
            "max_steps": sim_envs.TASKS[task].max_steps,
            "failed_seeds": [seed for seed, (ok, _) in enumerate(results) if not ok]}


def measure_experts(tasks: Sequence[str], embodiment: str, episodes: int) -> dict[str, Any]:
    out = {}
    for task in tqdm(tasks, desc=f"expert {embodiment} ({episodes} episodes/task)"):
        out[task] = measure_expert(task, embodiment, episodes)
    return out


# ----------------------------------------------------------------------------- blind replay
def measure_blind(task: str, episodes: int) -> dict[str, Any]:
    """Success of the average expert action sequence and of another episode's actions, replayed open loop."""
    env = gym.make(sim_envs.env_id(task), render_images=False)
    outcomes = blind_replay(env, episodes, donor_seed=DONOR_SEED)
    env.close()
    out: dict[str, Any] = {"episodes": episodes}
    for name, ok in outcomes.items():
        out[name] = float(np.mean(ok))
        out[f"{name}_ci95"] = [round(v, 3) for v in wilson_interval(sum(ok), episodes)]
    return out


def measure_blind_all(tasks: Sequence[str], episodes: int) -> dict[str, Any]:
    return {task: measure_blind(task, episodes) for task in tqdm(tasks, desc=f"blind replay ({episodes} episodes/task)")}


# ----------------------------------------------------------------------------- camera
def camera_resolution(size: int = 64) -> dict[str, Any]:
    """Pixels per cm of the nominal agentview at ``size`` px over the table where things are placed, and
    whether the workspace's corners project inside the image."""
    from sim_envs.scene import AGENTVIEW_POS, AGENTVIEW_TARGET, AGENTVIEW_FOVY, lookat_xyaxes

    axes = lookat_xyaxes(AGENTVIEW_POS, AGENTVIEW_TARGET)
    rot = np.stack([axes[:3], axes[3:], np.cross(axes[:3], axes[3:])], axis=1)
    focal = size / 2 / np.tan(np.deg2rad(AGENTVIEW_FOVY / 2))

    def project(point: np.ndarray) -> np.ndarray:
        v = rot.T @ (np.asarray(point, float) - AGENTVIEW_POS)
        return np.array([size / 2 + focal * v[0] / -v[2], size / 2 - focal * v[1] / -v[2]])

    xs, ys = np.linspace(-0.2, 0.2, 9), np.linspace(-0.15, 0.22, 9)  # the placement ranges of sim_envs.tasks
    per_x, per_y = [], []
    for x in xs:
        for y in ys:
            p = np.array([x, y, 0.0])
            per_x.append(np.linalg.norm(project(p + [0.01, 0, 0]) - project(p)))
            per_y.append(np.linalg.norm(project(p + [0, 0.01, 0]) - project(p)))
    corners = [np.array(c) for c in np.array(np.meshgrid((-0.25, 0.25), (-0.2, 0.28), (0.0, 0.12))).T.reshape(-1, 3)]
    corners += [np.array(c) for c in np.array(np.meshgrid((-0.2, 0.2), (-0.15, 0.22), (0.0, 0.22))).T.reshape(-1, 3)]
    pix = np.array([project(c) for c in corners])
    return {"image_size": size, "px_per_cm_x": {"min": round(min(per_x), 2), "mean": round(float(np.mean(per_x)), 2),
                                                "max": round(max(per_x), 2)},
            "px_per_cm_y": {"min": round(min(per_y), 2), "mean": round(float(np.mean(per_y)), 2), "max": round(max(per_y), 2)},
            "workspace_in_view": bool(pix.min() >= 0 and pix.max() <= size),
            "workspace_pixel_range": [round(float(pix.min()), 1), round(float(pix.max()), 1)]}


# ----------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(), "mujoco": mujoco.__version__, "gymnasium": gym.__version__,
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
            # other processes compete for the cores: the 1-minute load average when the run started
            "load_average_1min": round(os.getloadavg()[0], 2)}


def check_targets(result: dict[str, Any]) -> dict[str, bool]:
    tp, experts = result["throughput"], result["experts"]["robot"]
    checks = {"physics_steps_per_s": tp["physics"]["steps_per_s"] >= TARGETS["physics_steps_per_s"],
              "render_64_steps_per_s": tp["render_64"]["steps_per_s"] >= TARGETS["render_64_steps_per_s"]}
    for task, r in experts.items():
        checks[f"expert_success/{task}"] = r["success"] >= TARGETS["expert_success"]
    for task, r in result.get("blind", {}).items():
        if sim_envs.TASKS[task].target:
            checks[f"blind_replay/{task}"] = max(r["mean_actions"], r["other_episode"]) <= TARGETS["target_blind_replay_success"]
    if "camera" in result:
        checks["camera/workspace_in_view"] = result["camera"]["workspace_in_view"]
    return checks


def markdown_tables(result: dict[str, Any]) -> str:
    tp = result["throughput"]
    lines = ["| mode | steps timed | steps/s | target |", "|---|---:|---:|---:|"]
    labels = {"physics": ("physics only", f">= {TARGETS['physics_steps_per_s']:.0f}"),
              "render_64": ("rendered 64 px", f">= {TARGETS['render_64_steps_per_s']:.0f}"),
              "render_84": ("rendered 84 px", "")}
    for key, (label, target) in labels.items():
        lines.append(f"| {label} | {tp[key]['steps']} | {tp[key]['steps_per_s']:.0f} | {target} |")
    cam = result.get("camera")
    if cam:
        lines += ["", f"agentview at {cam['image_size']} px, over the placement area: {cam['px_per_cm_x']['min']}-"
                      f"{cam['px_per_cm_x']['max']} px/cm along x (mean {cam['px_per_cm_x']['mean']}), "
                      f"{cam['px_per_cm_y']['min']}-{cam['px_per_cm_y']['max']} along y (mean {cam['px_per_cm_y']['mean']}); "
                      f"workspace in view: {'yes' if cam['workspace_in_view'] else 'NO'}"]
    robot, hand = result["experts"]["robot"], result["experts"].get("hand", {})
    blind = result.get("blind", {})
    n_robot = next(iter(robot.values()))["episodes"] if robot else 0
    n_hand = next(iter(hand.values()))["episodes"] if hand else 0
    n_blind = next(iter(blind.values()))["episodes"] if blind else 0
    lines += ["", f"| task | id | kind | time limit | robot success (n={n_robot}) | robot mean length "
                  f"| blind: mean actions (n={n_blind}) | blind: other episode | hand success (n={n_hand}) | hand mean length |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task, r in robot.items():
        spec = sim_envs.TASKS[task]
        kind = f"target: {spec.kind}" if spec.target else "prior"
        h, b = hand.get(task), blind.get(task)
        hand_cells = f"{h['success']:.0%} | {h['mean_length']:.0f}" if h else "- | -"
        blind_cells = f"{b['mean_actions']:.2f} | {b['other_episode']:.2f}" if b else "- | -"
        lines.append(f"| {task} | {sim_envs.tasks.TASK_IDS[task]} | {kind} | {r['max_steps']} | {r['success']:.0%} "
                     f"| {r['mean_length']:.0f} | {blind_cells} | {hand_cells} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--episodes", type=int, default=100, help="robot expert episodes per task")
    parser.add_argument("--hand-episodes", type=int, default=20, help="hand expert episodes per task (0: skip)")
    parser.add_argument("--blind-episodes", type=int, default=100, help="blind-replay episodes per task (0: skip)")
    parser.add_argument("--tasks", nargs="+", default=list(sim_envs.TASKS), help="task names (default: all)")
    parser.add_argument("--physics-steps", type=int, default=2000, help="physics-only steps timed per task")
    parser.add_argument("--render-steps", type=int, default=400, help="rendered steps timed per task and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/envs.json"))
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks if t not in sim_envs.TASKS]
    if unknown:
        parser.error(f"--tasks: unknown task(s) {unknown}; known tasks: {', '.join(sim_envs.TASKS)}")
    if args.episodes < 1 or args.hand_episodes < 0 or args.blind_episodes < 0 or args.physics_steps < 1 \
            or args.render_steps < 1:
        parser.error("--episodes, --physics-steps and --render-steps must be >= 1, --hand-episodes and "
                     "--blind-episodes >= 0")
    return args


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` as JSON written atomically, indented by 2 with a final newline (the committed results' format)."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.time()
    result: dict[str, Any] = {"benchmark": "sim_envs envs", "machine": machine_info(), "tasks": args.tasks,
                              "targets": TARGETS, "driver_noise": DRIVER_NOISE}
    result["throughput"] = measure_throughput(args.tasks, args.physics_steps, args.render_steps, args.seed)
    result["camera"] = camera_resolution(64)
    result["experts"] = {"robot": measure_experts(args.tasks, "robot", args.episodes)}
    if args.blind_episodes:
        result["blind"] = measure_blind_all(args.tasks, args.blind_episodes)
    if args.hand_episodes:
        result["experts"]["hand"] = measure_experts(args.tasks, "hand", args.hand_episodes)
    result["meets_targets"] = check_targets(result)
    result["wall_seconds"] = round(time.time() - started, 1)
    write_json_atomic(args.out, result)
    print(markdown_tables(result))
    missed = [name for name, ok in result["meets_targets"].items() if not ok]
    print(f"\ntargets missed: {', '.join(missed)}" if missed else "\nall targets met")
    print(f"wrote {args.out} ({result['wall_seconds']} s)")
    return result


if __name__ == "__main__":
    main()
