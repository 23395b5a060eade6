"""Benchmark stage 1 (V-PTR): ICVF vs VIP vs TCN vs random init, pretrained on human-hand video only,
diagnosed on robot trajectories of the target tasks the encoders never saw.

    python benchmarks/video_pretrain.py                      # CPU-sized default (~15 min on 2 idle cores)
    python benchmarks/video_pretrain.py --steps 20000 --batch-size 64 --clips 450 --device cuda --work /data/vptr

1. collects human-hand videos of the 9 pretraining tasks (``sim_envs.collect_videos``: other embodiment,
   other camera viewpoints, randomized lighting/colours/textures) and clean robot demonstrations of the two
   target tasks (``sim_envs.collect tasks=target``, agentview camera, no randomization);
2. trains one encoder per objective on the hand videos with the same budget (steps x batch size, same
   encoder, augmentation, optimizer), via ``python -m video_pretrain.train``; ``none`` saves the random init;
3. runs ``video_pretrain.diagnose`` on the robot trajectories (goal = last frame) and writes
   ``benchmarks/results/video_pretrain.json`` (every number, training facts, the commands) and
   ``docs/video_pretrain_values.png``, and prints a markdown table.

Generated data and runs go to ``--work`` (default ``outputs/benchmarks/video_pretrain``) and are reused
when already there (pass ``--fresh`` to redo everything).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from video_pretrain import diagnose as diag  # noqa: E402

OBJECTIVES = ("icvf", "vip", "tcn", "none")


def collect_data(work: Path, clips: int, episodes: int, seed: int) -> tuple[Path, Path]:
    """Hand videos of the pretraining tasks and clean robot episodes of the target tasks (reused if present)."""
    from sim_envs.collect import collect
    from sim_envs.collect_videos import collect_videos

    videos = work / "hand_videos"
    if not (videos / "manifest.csv").is_file():
        cfg = OmegaConf.load(REPO / "configs" / "collect_videos.yaml")
        cfg.merge_with({"tasks": "pretrain", "num_clips": clips, "image_size": 64, "seed": seed,
                        "output": str(videos), "overwrite": True})
        collect_videos(cfg)
    robot = work / "robot_target.hdf5"
    if not robot.is_file():
        cfg = OmegaConf.load(REPO / "configs" / "collect.yaml")
        cfg.merge_with({"tasks": "target", "episodes_per_task": episodes, "image_size": 64, "seed": seed + 1,
                        "kinds": {"clean": {"fraction": 1.0}, "noisy": {"fraction": 0.0}, "failing": {"fraction": 0.0}},
                        "output": str(robot), "overwrite": True})
        collect(cfg)
    return videos, robot


def train_objective(objective: str, videos: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) one encoder with ``python -m video_pretrain.train``; returns its facts."""
    run = work / "runs" / objective
    overrides = [f"objective={objective}", f"data.path={videos}", f"steps={args.steps}",
                 f"batch_size={args.batch_size}", f"lr={args.lr}", f"seed={args.seed}", f"device={args.device}",
                 f"num_workers={args.num_workers}", f"output_dir={run}", f"hydra.run.dir={run / 'hydra'}",
                 "progress=false", "eval_every=100"]
    command = [sys.executable, "-m", "video_pretrain.train", *overrides]
    start = time.perf_counter()
    done = (run / "metrics.json").is_file() and json.loads((run / "metrics.json").read_text()).get("steps") == (
        0 if objective == "none" else args.steps)
    if not done:
        print(f"[video_pretrain benchmark] training {objective}: {' '.join(overrides)}", flush=True)
        proc = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                              capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"training {objective} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    valid = metrics.get("history", {}).get("valid", [])
    return {"encoder": str(run / "encoder"), "command": "python -m video_pretrain.train " + " ".join(overrides),
            "steps": metrics["steps"], "train_seconds": metrics.get("seconds_this_run"),
            "steps_per_second": metrics.get("steps_per_second"), "reused": done,
            "valid_loss_start": valid[0]["loss"] if valid else None, "valid_loss_end": valid[-1]["loss"] if valid else None,
            "wall_seconds_here": time.perf_counter() - start}


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=90, help="human-hand clips (10 per pretraining task)")
    p.add_argument("--episodes", type=int, default=25, help="clean robot episodes per target task")
    p.add_argument("--steps", type=int, default=3000, help="training steps per objective")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--work", default=str(REPO / "outputs" / "benchmarks" / "video_pretrain"))
    p.add_argument("--fresh", action="store_true", help="delete --work first")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "video_pretrain.json"))
    p.add_argument("--png", default=str(REPO / "docs" / "video_pretrain_values.png"))
    args = p.parse_args()

    work = Path(args.work)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    videos, robot = collect_data(work, args.clips, args.episodes, args.seed)
    t_data = time.perf_counter() - t0
    training = {obj: train_objective(obj, videos, work, args) for obj in OBJECTIVES}

    diag_args = diag.build_parser().parse_args(
        ["--data", str(robot), "--encoders", *[training[o]["encoder"] for o in OBJECTIVES],
         "--labels", "ICVF", "VIP", "TCN", "random init", "--out", str(work / "diagnose"), "--device", args.device,
         "--seed", str(args.seed), "--no-progress"])
    report = diag.run(diag_args)
    png = diag.plot_values(report["encoders"], Path(args.png), num_curves=4,
                           title="stage 1: values on held-out robot trajectories of the target tasks "
                                 "(encoders trained on human-hand video only)")
    for entry in report["encoders"].values():
        entry.pop("curves", None)
    result = {
        "benchmark": "video_pretrain",
        "command": "python benchmarks/video_pretrain.py " + " ".join(sys.argv[1:]),
        "setup": {"clips": args.clips, "episodes_per_target_task": args.episodes, "steps": args.steps,
                  "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "encoder": "small_conv",
                  "image_size": 64, "pretraining_data": "human-hand videos of the 9 pretraining tasks",
                  "evaluation_data": "clean robot episodes of the target tasks (PlaceInBowl, OpenDoorRight)"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "data_seconds": t_data,
        "training": training,
        "diagnostics": report,
        "figure": str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png),
        "total_seconds": time.perf_counter() - t0,
    }
    atomic_write(Path(args.json), json.dumps(result, indent=1))
    print()
    print(diag.format_table(report["encoders"]))
    print()
    print(diag.format_task_table(report["encoders"]))
    print(f"\nwrote {args.json} and {png}")


if __name__ == "__main__":
    main()
