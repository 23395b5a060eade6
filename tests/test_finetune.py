"""Stage-3 online fine-tuning: the online loop, its metrics, the online returns-to-go, checkpoint checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from finetune.train import finetune_online
from robopretrain.checkpoint import CheckpointError, checkpoint_name, load_checkpoint, load_latest
from robopretrain.metrics import read_jsonl
from _compare import Killed, assert_same, die_after_first_checkpoint, returns_by_hand

ROOT = Path(__file__).resolve().parents[1]
GAMMA = 0.99


@pytest.fixture(scope="module")
def reach_hdf5(tmp_path_factory) -> Path:
    from sim_envs.collect import collect

    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    out = tmp_path_factory.mktemp("data") / "reach.hdf5"
    cfg.merge_with({"tasks": ["Reach", "PressButton"], "episodes_per_task": 2, "render_images": False,
                    "output": str(out)})
    return collect(cfg, progress=False)


def finetune_cfg(data: Path, out: Path, extra: list[str] = ()):
    overrides = [
        "task=Reach", f"data.path={data}", "data.generate=false", f"output_dir={out}", "num_threads=1",
        "algo.actor_hidden=[32,32]", "algo.critic_hidden=[32,32]", "algo.batch_size=32",
        "offline.steps=10", "offline.eval_episodes=1", "offline.progress=false", "offline.calibration_batch=64",
        "online.env_steps=120", "online.eval_every=60", "online.eval_episodes=1", "online.log_every=20",
        "online.checkpoint_every=50", "online.calibration_batch=64", "online.progress=false", *extra,
    ]
    if "algo=iql" not in extra:
        overrides.append("algo.n_actions=2")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("finetune", overrides=overrides)


@pytest.fixture(scope="module")
def finetuned(reach_hdf5, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    return out, finetune_online(finetune_cfg(reach_hdf5, out))


def test_online_loop_logs_calibration_and_regret(finetuned):
    out, result = finetuned
    hist = result["history"]
    assert [h["env_steps"] for h in hist] == [0, 60, 120]
    for key in ("eval/success", "eval/return", "calib/offline_q_policy", "calib/offline_mc_return",
                "calib/offline_gap_policy", "train/cumulative_regret"):
        assert all(h.get(key) is not None for h in hist), key
    assert hist[0]["train/cumulative_regret"] == 0.0  # no training episode yet
    assert "calib/online_gap_policy" in hist[-1] and "calib/online_mc_return" in hist[-1]
    assert 0.0 <= hist[-1]["train/cumulative_regret"] <= 1.0
    rows = read_jsonl(out / "metrics.jsonl")
    assert any("train/critic_loss" in r for r in rows)
    assert (out / "learning_curve.png").stat().st_size > 0
    assert (out / "offline" / "checkpoints" / "latest").is_file()


def test_online_buffer_returns_match_hand_computation(finetuned):
    out, result = finetuned
    ckpt = load_latest(out / "checkpoints")
    assert ckpt.step == 120 and ckpt.meta["stage"] == "online"
    online = ckpt.state["sampler"]["online"]
    n = int(online["size"])
    assert n > 0
    rewards = online["data"]["rewards"].numpy()[:n]
    dones = online["data"]["dones"].numpy()[:n]
    mc = online["data"]["mc_returns"].numpy()[:n]
    assert set(np.unique(rewards)) <= {-5.0, 5.0}  # sparse reward after Cal-QL's x10 - 5
    # the first episode ends at its first terminal, or by truncation at Reach's 50-step limit
    end = int(np.flatnonzero(dones)[0]) + 1 if dones[:50].any() else 50
    np.testing.assert_allclose(mc[:end], returns_by_hand(rewards[:end], dones[:end], -5.0, GAMMA), rtol=1e-5)
    # the episodes counted by the regret are in the buffer
    assert int(online["num_episodes"]) == len(ckpt.state["online"]["successes"])


def test_checkpoint_of_another_algorithm_is_rejected(reach_hdf5, finetuned, tmp_path):
    out, result = finetuned
    cfg = finetune_cfg(reach_hdf5, tmp_path / "iql", [f"checkpoint={result['pretrained_from']}", "algo=iql"])
    with pytest.raises(CheckpointError, match="algo: checkpoint has 'calql', this config needs 'iql'"):
        finetune_online(cfg)


def parallel_cfg(data: Path, checkpoint: str, out: Path, asynchronous: bool):
    return finetune_cfg(data, out, [f"checkpoint={checkpoint}", "online.num_envs=2", "online.utd=2",
                                    f"online.asynchronous={str(asynchronous).lower()}", "online.eval_every=100000",
                                    "online.checkpoint_every=40", "online.tensorboard=false", "dr=none"])


def test_parallel_envs_count_updates_per_env_step_and_resume_exactly(reach_hdf5, finetuned, tmp_path, monkeypatch):
    """Two envs, UTD 2: workers and in-process envs give the same run, and a run killed after its first
    checkpoint resumes to exactly the same weights (the checkpoint waits until both envs finished an episode)."""
    from robopretrain.algos.cql import CQL

    start = finetuned[1]["pretrained_from"]
    workers = finetune_online(parallel_cfg(reach_hdf5, start, tmp_path / "workers", asynchronous=True))
    inproc = finetune_online(parallel_cfg(reach_hdf5, start, tmp_path / "inproc", asynchronous=False))
    a, b = load_latest(tmp_path / "workers" / "checkpoints"), load_latest(tmp_path / "inproc" / "checkpoints")
    assert a.step == b.step == 120
    before = load_checkpoint(start).weights["num_updates"]  # the offline updates
    assert a.weights["num_updates"] - before == 2 * 120  # utd x env steps
    assert_same(a.weights, b.weights)
    assert workers["history"] == inproc["history"]

    real_update = die_after_first_checkpoint(monkeypatch, CQL, tmp_path / "killed" / "checkpoints", updates=7)
    with pytest.raises(Killed):
        finetune_online(parallel_cfg(reach_hdf5, start, tmp_path / "killed", asynchronous=False))
    assert 40 <= load_latest(tmp_path / "killed" / "checkpoints").step < 120
    monkeypatch.setattr(CQL, "update", real_update)
    resumed = finetune_online(parallel_cfg(reach_hdf5, start, tmp_path / "killed", asynchronous=False))
    c = load_latest(tmp_path / "killed" / "checkpoints")
    assert c.step == 120
    assert_same(c.weights, b.weights)
    assert_same(c.state["online"], b.state["online"], "online counters")
    assert resumed["history"] == inproc["history"]


def test_nan_loss_stops_before_the_checkpoint(reach_hdf5, finetuned, tmp_path, monkeypatch):
    """Once a first checkpoint exists, every update's loss is NaN: the next metrics request (a log or checkpoint
    round) raises, naming the loss and env step, and no checkpoint is written after the good one."""
    from robopretrain.algos.cql import CQL
    from robopretrain.guards import NonFiniteLossError

    real_update = CQL.update
    root = tmp_path / "nan" / "checkpoints"

    def nan_after_first_checkpoint(self, batch, with_metrics=True):
        metrics = real_update(self, batch, with_metrics)
        if with_metrics and load_latest(root) is not None:
            metrics["critic_loss"] = float("nan")
        return metrics

    monkeypatch.setattr(CQL, "update", nan_after_first_checkpoint)
    cfg = finetune_cfg(reach_hdf5, tmp_path / "nan", [f"checkpoint={finetuned[1]['pretrained_from']}",
                                                      "online.num_envs=1", "online.tensorboard=false"])
    with pytest.raises(NonFiniteLossError, match=r"loss 'critic_loss' is nan at step \d+") as err:
        finetune_online(cfg)
    good = load_latest(root).step
    assert good < err.value.step <= good + 20  # metrics are requested at least every log_every=20 env steps
    assert [p.name for p in root.glob("ckpt_*")] == [checkpoint_name(good)]


