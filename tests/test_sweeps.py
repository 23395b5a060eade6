"""Hydra multirun sweeps with the parallel local launcher (joblib), as docs/scaling.md shows them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_parallel_sweep_with_the_joblib_launcher(tmp_path):
    """``-m seed=0,1 hydra/launcher=joblib hydra.launcher.n_jobs=2``: both jobs run at once in worker processes,
    each writes its own folder, and the seeds give different weights."""
    cmd = [sys.executable, "-m", "video_pretrain.train", "-m", "objective=none", "seed=0,1", "image_size=32",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}",
           "hydra.sweep.subdir=seed${seed}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    a = torch.load(tmp_path / "seed0" / "encoder" / "encoder.pt", weights_only=True)
    b = torch.load(tmp_path / "seed1" / "encoder" / "encoder.pt", weights_only=True)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_shipped_slurm_launcher_config_names_the_submitit_plugin():
    cfg = yaml.safe_load((REPO / "configs" / "hydra" / "launcher" / "slurm.yaml").read_text())
    assert cfg["defaults"] == ["submitit_slurm"]
    assert cfg["tasks_per_node"] >= 1 and cfg["timeout_min"] > 0
