"""Runs that survive SIGKILL: stages 1, 2 and 3 are killed right after a checkpoint, rerun with the same command,
resume from that checkpoint's step (read from the rerun's own log) and end with exactly the weights of an
uninterrupted run (CPU, same seed). The kill does not depend on timing: the run is told through
``ROBOPRETRAIN_KILL_AFTER_CHECKPOINT`` (:func:`robopretrain.checkpoint.kill_after_checkpoint`) to SIGKILL itself
once the checkpoint of a given step is written."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from _compare import assert_same, write_sliding_square_videos
from robopretrain.checkpoint import KILL_AFTER_CHECKPOINT_ENV, load_latest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENV = {**{k: v for k, v in os.environ.items() if k != KILL_AFTER_CHECKPOINT_ENV}, "OMP_NUM_THREADS": "1"}


def run_to_end(module: str, overrides: list[str]) -> str:
    """Run the command to its end; returns its output (stdout and stderr)."""
    proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def resumed_step(output: str) -> int:
    """The step a rerun says it resumed from (``resumed from <checkpoint> (step N)`` / ``at step N`` / ``at env step
    N``); fails when it did not resume."""
    found = re.findall(r"resumed from \S+ (?:\(step|at step|at env step) (\d+)", output)
    assert len(found) == 1, f"the rerun did not say once which step it resumed from:\n{output[-3000:]}"
    return int(found[0])


def start_reference(module: str, overrides: list[str]) -> subprocess.Popen:
    """The uninterrupted run, in the background (it runs while the other one is killed and resumed)."""
    return subprocess.Popen([sys.executable, "-m", module, *overrides], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_reference(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-4000:]


def kill_after_checkpoint(module: str, overrides: list[str], step: int) -> None:
    """Run the command until it has written the checkpoint of ``step`` (or the first one after it), where it SIGKILLs
    itself (the test hook of :mod:`robopretrain.checkpoint`)."""
    proc = subprocess.Popen([sys.executable, "-m", module, *overrides], cwd=REPO,
                            env={**ENV, KILL_AFTER_CHECKPOINT_ENV: str(step)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any worker it left behind
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{module} was not killed at its checkpoint (rc {proc.returncode}):\n" \
                                               f"{err[-3000:]}"


# ------------------------------------------------------------------------------------------ stage 1
def stage1_overrides(videos: Path, out: Path) -> list[str]:
    return [f"data.path={videos}", f"output_dir={out}", f"hydra.run.dir={out}", "device=cpu", "num_threads=1",
            "batch_size=4", "image_size=32", "progress=false", "valid_batches=1", "eval_every=10", "log_every=5",
            "checkpoint_every=4", "steps=40", "data.valid_fraction=0.25", "tensorboard=false"]


def test_stage1_killed_and_rerun_matches_uninterrupted(tmp_path):
    videos = write_sliding_square_videos(tmp_path / "videos")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    reference = start_reference("video_pretrain.train", stage1_overrides(videos, clean))
    kill_after_checkpoint("video_pretrain.train", stage1_overrides(videos, killed), 8)
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["step"] == 8
    assert resumed_step(run_to_end("video_pretrain.train", stage1_overrides(videos, killed))) == 8
    wait_reference(reference)
    a = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(clean / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 40
    assert a["objective"].keys() == b["objective"].keys()
    for k in b["objective"]:
        assert torch.equal(a["objective"][k], b["objective"][k]), k


# ------------------------------------------------------------------------------------------ stage 2
@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory) -> Path:
    from sim_envs.collect import collect

    cfg = OmegaConf.load(REPO / "configs" / "collect.yaml")
    out = tmp_path_factory.mktemp("data") / "tiny.hdf5"
    cfg.merge_with({"tasks": ["Reach"], "episodes_per_task": 2, "render_images": False, "output": str(out)})
    return collect(cfg, progress=False)


def stage2_overrides(data: Path, out: Path) -> list[str]:
    return [f"data.path={data}", f"output_dir={out}", f"hydra.run.dir={out}/hydra", "train.steps=200",
            "train.eval_every=100000", "train.eval_episodes=1", "train.checkpoint_every=20", "train.log_every=20",
            "train.calibration_batch=32", "train.progress=false", "train.tensorboard=false", "num_threads=1",
            "algo.actor_hidden=[32,32]", "algo.critic_hidden=[32,32]", "algo.n_actions=2", "algo.batch_size=32"]


def test_stage2_killed_and_rerun_matches_uninterrupted(tiny_hdf5, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    reference = start_reference("robopretrain.train", stage2_overrides(tiny_hdf5, clean))
    kill_after_checkpoint("robopretrain.train", stage2_overrides(tiny_hdf5, killed), 40)
    assert load_latest(killed / "checkpoints").step == 40
    assert resumed_step(run_to_end("robopretrain.train", stage2_overrides(tiny_hdf5, killed))) == 40
    wait_reference(reference)
    a, b = load_latest(killed / "checkpoints"), load_latest(clean / "checkpoints")
    assert a.step == b.step == 200
    assert_same(a.weights, b.weights)


# ------------------------------------------------------------------------------------------ stage 3
@pytest.fixture(scope="module")
def stage2_run(tiny_hdf5, tmp_path_factory) -> Path:
    """A stage-2 checkpoint (5 updates) to fine-tune from."""
    from hydra import compose, initialize_config_dir

    from robopretrain.train import run

    out = tmp_path_factory.mktemp("stage2")
    overrides = [o for o in stage2_overrides(tiny_hdf5, out) if not o.startswith(("hydra.", "train.steps"))]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        run(compose("robopretrain", overrides=[*overrides, "train.steps=5"]))
    return out


def stage3_overrides(data: Path, stage2: Path, out: Path) -> list[str]:
    return [f"checkpoint={stage2}", "target=Reach", f"data.path={data}", f"output_dir={out}", f"hydra.run.dir={out}/h",
            "dr=none", "online.env_steps=120", "online.checkpoint_every=30", "online.eval_every=100000",
            "online.asynchronous=false", "online.eval_episodes=1", "online.log_every=20", "online.calibration_batch=16", "online.progress=false",
            "online.tensorboard=false", "num_threads=1", "algo.actor_hidden=[32,32]", "algo.critic_hidden=[32,32]",
            "algo.n_actions=2", "algo.batch_size=32"]


def test_stage3_killed_and_rerun_matches_uninterrupted(tiny_hdf5, stage2_run, tmp_path):
    """Stage 3 checkpoints at episode ends with its replay buffer; the resumed run ends with the same weights (two
    envs in process: tests/test_finetune.py checks that worker envs give the same run)."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    reference = start_reference("finetune.train", stage3_overrides(tiny_hdf5, stage2_run, clean))
    kill_after_checkpoint("finetune.train", stage3_overrides(tiny_hdf5, stage2_run, killed), 30)
    at_kill = load_latest(killed / "checkpoints")
    assert 30 <= at_kill.step < 120 and at_kill.state["sampler"]["online"]  # the replay buffer is in the checkpoint
    assert resumed_step(run_to_end("finetune.train", stage3_overrides(tiny_hdf5, stage2_run, killed))) == at_kill.step
    wait_reference(reference)
    a, b = load_latest(killed / "checkpoints"), load_latest(clean / "checkpoints")
    assert a.step == b.step == 120
    assert_same(a.weights, b.weights)
    assert_same(a.state["online"], b.state["online"], "online counters")
