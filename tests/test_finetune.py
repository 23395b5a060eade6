"""Stage-3 online fine-tuning: the online loop, its metrics, the online returns-to-go, checkpoint checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from finetune.train import finetune_online
from robopretrain.checkpoint import CheckpointError, load_latest
from robopretrain.metrics import read_jsonl

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


def returns_by_hand(rewards: np.ndarray, dones: np.ndarray, r_neg: float) -> np.ndarray:
    if np.all(rewards == r_neg):
        return np.full(len(rewards), r_neg / (1 - GAMMA))
    out, g = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        g = rewards[t] + GAMMA * g * (1 - dones[t])
        out[t] = g
    return out


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
    np.testing.assert_allclose(mc[:end], returns_by_hand(rewards[:end], dones[:end], -5.0), rtol=1e-5)
    # the episodes counted by the regret are in the buffer
    assert int(online["num_episodes"]) == len(ckpt.state["online"]["successes"])


def test_checkpoint_of_another_algorithm_is_rejected(reach_hdf5, finetuned, tmp_path):
    out, result = finetuned
    cfg = finetune_cfg(reach_hdf5, tmp_path / "iql", [f"checkpoint={result['pretrained_from']}", "algo=iql"])
    with pytest.raises(CheckpointError, match="algo: checkpoint has 'calql', this config needs 'iql'"):
        finetune_online(cfg)
