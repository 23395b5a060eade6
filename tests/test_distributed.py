"""Data-parallel stage 1 under torchrun with 2 CPU processes (gloo): replicas stay identical, resume works."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from robopretrain.distributed import DistInfo, rank_seed, replica_max_abs_diff
from sim_envs.video_writer import write_mp4

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def write_videos(root: Path, n: int = 4) -> Path:
    """``n`` tiny clips of a square sliding right, with their manifest.csv."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,num_frames,text"]
    for i in range(n):
        frames = np.full((16, SIZE, SIZE, 3), 40, dtype=np.uint8)
        for t in range(16):
            x = min(SIZE - 8, i + t)
            frames[t, 12:20, x:x + 8] = (200, 60 + 30 * i, 60)
        write_mp4(root / f"clip_{i}.mp4", frames, fps=20)
        rows.append(f"clip_{i}.mp4,16,a square slides")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def torchrun(*overrides: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "video_pretrain.train", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_two_gloo_ranks_keep_identical_weights_and_resume(tmp_path):
    videos = write_videos(tmp_path / "videos")
    out = tmp_path / "run"
    common = [f"data.path={videos}", f"output_dir={out}", f"hydra.run.dir={out}", "device=cpu", "num_threads=1",
              "batch_size=4", f"image_size={SIZE}", "encoder.name=small_conv", "progress=false", "valid_batches=1",
              "eval_every=3", "log_every=1", "checkpoint_every=3", "data.valid_fraction=0.25", "tensorboard=false"]
    torchrun(*common, "steps=3")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parallel"]["world_size"] == 2 and metrics["parallel"]["backend"] == "gloo"
    assert metrics["parallel"]["effective_batch_size"] == 8
    assert metrics["parallel"]["replica_max_abs_diff"] == 0.0
    first = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert first["step"] == 3 and first["world_size"] == 2

    proc = torchrun(*common, "steps=6")  # the same command with more steps continues from step 3
    assert "resumed from" in proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["trained_steps_this_run"] == 3
    assert metrics["parallel"]["replica_max_abs_diff"] == 0.0
    enc_meta = json.loads((out / "encoder" / "meta.json").read_text())
    assert enc_meta["extra"]["parallel"]["effective_batch_size"] == 8
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    changed = [k for k in first["objective"] if not torch.equal(first["objective"][k], last["objective"][k])]
    assert changed  # training went on after the resume


def test_single_process_is_unchanged():
    info = DistInfo()
    assert not info.enabled and info.is_main
    assert rank_seed(5, info) == 5 and rank_seed(5, DistInfo(rank=1, world_size=2)) != 5
    assert replica_max_abs_diff(torch.nn.Linear(2, 2), info) == 0.0


def test_multirun_sweep_with_the_basic_launcher(tmp_path):
    """``-m seed=0,1``: Hydra's basic launcher runs one job per seed, each in its own sweep sub-folder."""
    cmd = [sys.executable, "-m", "video_pretrain.train", "-m", "objective=none", "seed=0,1", "image_size=32",
           f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=seed${seed}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "seed0" / "encoder" / "encoder.pt", weights_only=True)
    b = torch.load(tmp_path / "seed1" / "encoder" / "encoder.pt", weights_only=True)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # different seeds, different inits
