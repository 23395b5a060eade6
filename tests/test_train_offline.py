"""Stage-2 offline training: the Hydra entry point writes a self-describing checkpoint and resumes from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from robopretrain.checkpoint import CheckpointError, list_checkpoints, load_latest
from robopretrain.metrics import read_jsonl
from robopretrain.train import train_offline

ROOT = Path(__file__).resolve().parents[1]
TINY_ALGO = ["algo.actor_hidden=[32,32]", "algo.critic_hidden=[32,32]", "algo.n_actions=2", "algo.batch_size=32"]


@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory) -> Path:
    """2 tasks x 2 state-only episodes collected by sim_envs.collect."""
    from sim_envs.collect import collect

    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    out = tmp_path_factory.mktemp("data") / "tiny.hdf5"
    cfg.merge_with({"tasks": ["Reach", "PressButton"], "episodes_per_task": 2, "render_images": False,
                    "output": str(out)})
    return collect(cfg, progress=False)


def offline_overrides(data: Path, out: Path, steps: int) -> list[str]:
    return [f"data.path={data}", f"output_dir={out}", f"hydra.run.dir={out}/hydra", f"train.steps={steps}",
            "train.eval_every=10", "train.eval_episodes=1", "train.checkpoint_every=10", "train.log_every=5",
            "train.calibration_batch=64", "train.progress=false", "num_threads=1", *TINY_ALGO]


def run_cli(overrides: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "robopretrain.train", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_writes_checkpoint_and_resumes(tiny_hdf5, tmp_path):
    out = tmp_path / "run"
    run_cli(offline_overrides(tiny_hdf5, out, 10))
    ckpt = load_latest(out / "checkpoints")
    assert ckpt.step == 10
    assert ckpt.meta["obs_dim"] == 7 + 18 + 11 and ckpt.meta["act_dim"] == 4 and ckpt.meta["algo"] == "calql"
    assert ckpt.meta["task_names"] == ["PressButton", "Reach"]
    assert ckpt.meta["obs_shapes"] == {"proprio": [7], "object": [18]}
    assert ckpt.config.train.steps == 10 and ckpt.config.algo.name == "calql"
    assert set(ckpt.state) >= {"optimizer", "rng", "dataset"}

    proc = run_cli(offline_overrides(tiny_hdf5, out, 20))  # same command, more steps: continues from step 10
    assert "resumed from" in proc.stdout + proc.stderr
    ckpt = load_latest(out / "checkpoints")
    assert ckpt.step == 20 and ckpt.weights["num_updates"] == 20
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["ckpt_00000020", "ckpt_00000010"]
    rows = read_jsonl(out / "metrics.jsonl")
    evals = [r for r in rows if "eval/success" in r]
    assert [r["step"] for r in evals] == [10, 20]
    for key in ("eval/Reach/success", "eval/PressButton/success", "calib/offline_q_policy",
                "calib/offline_mc_return", "calib/offline_gap_policy"):
        assert key in evals[-1], key
    assert any("train/critic_loss" in r for r in rows)
    assert (out / "tb").is_dir()


def compose_offline(data: Path, out: Path, steps: int, extra: list[str] = ()):
    overrides = [o for o in offline_overrides(data, out, steps) if not o.startswith("hydra.")] + list(extra)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("robopretrain", overrides=overrides)


def test_resumed_run_matches_uninterrupted_run(tiny_hdf5, tmp_path):
    straight = train_offline(compose_offline(tiny_hdf5, tmp_path / "a", 20))
    train_offline(compose_offline(tiny_hdf5, tmp_path / "b", 10))
    resumed = train_offline(compose_offline(tiny_hdf5, tmp_path / "b", 20))
    wa = torch.load(straight / "weights.pt", weights_only=True)
    wb = torch.load(resumed / "weights.pt", weights_only=True)
    for name in ("actor", "critic"):
        for k in wa[name]:
            assert torch.equal(wa[name][k], wb[name][k]), f"{name}.{k} differs after resume"
    meta = json.loads((resumed / "meta.json").read_text())
    assert meta["step"] == 20


def test_resume_with_other_obs_keys_is_a_clear_error(tiny_hdf5, tmp_path):
    train_offline(compose_offline(tiny_hdf5, tmp_path / "c", 10))
    with pytest.raises(CheckpointError, match="obs_dim"):
        train_offline(compose_offline(tiny_hdf5, tmp_path / "c", 20, ["obs_keys=[proprio]"]))


def test_nan_loss_stops_before_the_checkpoint_is_written(tiny_hdf5, tmp_path):
    """A reward scale of 1e38 makes the Cal-QL critic loss inf: the run stops at the first metrics step (the
    checkpoint step 10, log_every 5 -> step 5) before any checkpoint exists."""
    from robopretrain.guards import NonFiniteLossError

    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"loss 'critic_loss' is (inf|nan) at step 5"):
        train_offline(compose_offline(tiny_hdf5, out, 20, ["algo.reward_scale=1e38"]))
    assert load_latest(out / "checkpoints") is None


def test_metrics_are_computed_on_checkpoint_steps_between_log_steps(tiny_hdf5, tmp_path, monkeypatch):
    """with_metrics is on for log, evaluation and checkpoint steps, so the NaN guard runs before every checkpoint."""
    from robopretrain.algos.cql import CQL

    seen = []
    update = CQL.update

    def spy(self, batch, with_metrics=True):
        seen.append(with_metrics)
        return update(self, batch, with_metrics)

    monkeypatch.setattr(CQL, "update", spy)
    train_offline(compose_offline(tiny_hdf5, tmp_path / "m", 7, ["train.log_every=4", "train.checkpoint_every=3",
                                                                 "train.eval_every=100"]))
    assert [i + 1 for i, m in enumerate(seen) if m] == [3, 4, 6, 7]  # ckpt 3, log 4, ckpt 6, last step 7
