"""Picture of the whole task suite: docs/task_grid.png, one column per task, one row per randomization level.

Rows: the robot's agentview at randomization levels ``none``, ``train`` and ``eval_hard`` (every factor,
distractors included), then the human hand as the action-free videos see it (``embodiment="hand"``, one of
the ``video_*`` cameras, visual randomization at ``train``). Each column uses the same seed in every row, so
the task layout is the same and only the randomization differs. Every image is rendered after the scripted
expert has run a few steps, so the gripper (or hand) is at work near the object. Target tasks are marked.

    python benchmarks/task_grid.py                          # docs/task_grid.png, 128 px per image
    python benchmarks/task_grid.py --size 96 --out /tmp/grid.png
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sim_envs  # noqa: E402  (first: it picks the headless GL backend before mujoco is imported)
import gymnasium as gym  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sim_envs.experts import make_expert  # noqa: E402
from sim_envs.scene import VIDEO_CAMERAS  # noqa: E402

VISUAL_FACTORS = ["lighting", "colors", "textures", "camera"]
# Expert steps before the picture: until the approach phase is over, plus a few, at most MAX_STEPS.
EXTRA_STEPS, MAX_STEPS = 4, 30
# Reach has one phase (fly to the sphere): stop half-way so the goal is still visible.
REACH_STEPS = 6


@dataclass(frozen=True)
class Row:
    """One row of the grid: how to make the env and which camera to show."""

    label: str
    embodiment: str
    randomization: Any
    camera: str | None  # None: cycle through the video cameras, one per column


ROWS = (
    Row("none", "robot", "none", "agentview"),
    Row("train", "robot", "train", "agentview"),
    Row("eval_hard", "robot", "eval_hard", "agentview"),
    Row("hand video\n(train visuals)", "hand", {"level": "train", "factors": VISUAL_FACTORS}, None),
)


def advance_expert(env: gym.Env, obs: dict[str, Any], seed: int) -> None:
    """Run the clean expert until it has approached the object: a few steps past its first phase, or, for the
    memory-free experts (no phases), past the first step with the gripper within 5 cm (horizontally) of the main
    object."""
    expert = make_expert(env, noise=0.0, rng=np.random.default_rng(seed))
    limit = REACH_STEPS if env.unwrapped.task.name == "Reach" else MAX_STEPS
    extra = None
    for _ in range(limit):
        obs, _, terminated, truncated, _ = env.step(expert.act(obs))
        if terminated or truncated:
            return
        near = np.linalg.norm(obs["proprio"][:2] - obs["object"][:2]) < 0.05 and np.any(obs["object"][:3])
        if extra is None and (expert.phase >= 1 or near):
            extra = EXTRA_STEPS
        if extra is not None:
            extra -= 1
            if extra <= 0:
                return


def render_cell(task: str, row: Row, column: int, size: int, seed: int) -> tuple[np.ndarray, str]:
    camera = row.camera or list(VIDEO_CAMERAS)[column % len(VIDEO_CAMERAS)]
    env = gym.make(sim_envs.env_id(task), render_images=False, image_size=size, embodiment=row.embodiment,
                   randomization=row.randomization, video_cameras=row.camera is None, terminate_on_success=False)
    obs, _ = env.reset(seed=seed)
    advance_expert(env, obs, seed)
    image = env.unwrapped.render_camera(camera, size)
    env.close()
    return image, camera


def draw_grid(tasks: Sequence[str], size: int, seed: int) -> plt.Figure:
    cell = 1.25
    fig, axes = plt.subplots(len(ROWS), len(tasks), figsize=(cell * len(tasks) + 0.9, cell * len(ROWS) + 0.6),
                             squeeze=False)
    jobs = [(r, c) for r in range(len(ROWS)) for c in range(len(tasks))]
    for r, c in tqdm(jobs, desc="rendering task grid"):
        task, row = tasks[c], ROWS[r]
        image, camera = render_cell(task, row, c, size, seed + c)
        ax = axes[r, c]
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if row.camera is None:
            ax.text(0.03, 0.04, camera.replace("video_", ""), transform=ax.transAxes, fontsize=5.5, color="white",
                    bbox={"facecolor": "black", "alpha": 0.45, "pad": 1, "linewidth": 0})
        if r == 0:
            target = sim_envs.TASKS[task].target
            ax.set_title(f"{task}\n(target)" if target else task, fontsize=7,
                         color="#b03000" if target else "black", fontweight="bold" if target else "normal")
        if c == 0:
            ax.set_ylabel(row.label, fontsize=7.5)
    fig.suptitle("sim_envs tasks: robot agentview at randomization levels none / train / eval_hard, "
                 "and the human hand as the videos see it", fontsize=8.5)
    fig.tight_layout(pad=0.3, h_pad=0.25, w_pad=0.15)
    return fig


def save_atomic(fig: plt.Figure, path: Path, dpi: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--size", type=int, default=128, help="pixels per rendered image (16..256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first column (column c uses seed + c)")
    parser.add_argument("--tasks", nargs="+", default=list(sim_envs.TASKS), help="task names (default: all)")
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("docs/task_grid.png"))
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks if t not in sim_envs.TASKS]
    if unknown:
        parser.error(f"--tasks: unknown task(s) {unknown}; known tasks: {', '.join(sim_envs.TASKS)}")
    if not 16 <= args.size <= 256:
        parser.error(f"--size {args.size}: expected 16..256")
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    fig = draw_grid(args.tasks, args.size, args.seed)
    save_atomic(fig, args.out, args.dpi)
    plt.close(fig)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
