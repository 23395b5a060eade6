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


def test_a_joblib_job_that_would_start_processes_of_its_own_is_refused_in_one_line(tmp_path):
    """Inside a joblib (loky) worker a job's own spawned processes cannot start ('cannot find context for loky', or
    a pickling error for a ``python -m`` entry point's functions): a traceback, or a worker death blamed on memory.
    Now one line naming the in-process settings; the same sweep with num_workers=0 runs."""
    common = [sys.executable, "-m", "sim_envs.collect", "-m", "seed=0,1", "tasks=[Reach]", "episodes_per_task=2",
              f"output={tmp_path}/d" + "${seed}.hdf5", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
              f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run([*common, "num_workers=2"], cwd=REPO, capture_output=True, text=True, timeout=240)
    last = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last and "this job runs in a joblib worker process" in last[-1] and "num_workers=0" in last[-1]
    proc = subprocess.run([*common, "num_workers=0"], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "d0.hdf5").is_file() and (tmp_path / "d1.hdf5").is_file()
