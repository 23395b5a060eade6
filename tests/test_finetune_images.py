"""``python -m finetune.train`` with an image-agent checkpoint: Cal-QL on pixels with parallel envs, resumable.

Tiny sizes throughout (32 px images, a small_conv encoder trained from scratch, 32-unit networks). The stage-2
checkpoint is made here with :func:`robopretrain.image_checkpoint.save_image_checkpoint`, as the stage-2 command
writes them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from finetune.train import finetune_online
from robopretrain.checkpoint import CheckpointError, load_latest
from robopretrain.data.hdf5 import DatasetError
from robopretrain.image_agent import ImageAgent, image_obs_config
from robopretrain.image_checkpoint import image_agent_meta, is_image_checkpoint, load_image_agent, save_image_checkpoint
from robopretrain.metrics import read_jsonl
from _compare import Killed, assert_same, die_after_first_checkpoint, returns_by_hand

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
GAMMA = 0.99
EPISODE = 20  # Reach's time limit shortened from 50 steps (TargetSpec.env_kwargs go to gym.make)
# a gymnasium env that is not a sim_envs task, with other observation keys (tests/test_pipeline_images.py)
DOT_TARGET = ("{name: Dot, env_id: 'test_pipeline_images:DotEnv', task_id: 11, max_episode_steps: 12, "
              "obs_map: {agentview_image: rgb_image, proprio: robot_state}}")
STAGE2_ALGO = {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "n_actions": 2, "batch_size": 16}


def collect_reach(path: Path, images: bool) -> Path:
    from sim_envs.collect import collect

    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": ["Reach"], "episodes_per_task": 2, "render_images": images, "image_size": SIZE,
                    "output": str(path)})
    return collect(cfg, progress=False)


def stage2_image_checkpoint(root: Path, num_tasks: int) -> Path:
    """An image-agent CQL checkpoint (scratch small_conv encoder), as stage 2 would write it."""
    torch.manual_seed(0)
    cfg = image_obs_config({"image_keys": ["agentview_image"], "mode": "scratch", "encoder_name": "small_conv",
                            "encoder_kwargs": {"channels": 8, "out_dim": 16}, "image_size": SIZE, "augment_pad": 2})
    agent = ImageAgent(cfg, 7 + num_tasks, 4, "cql", STAGE2_ALGO, seed=0)
    meta = image_agent_meta(agent, state_keys=["proprio"], num_tasks=num_tasks, stage="stage2")
    save_image_checkpoint(root / "checkpoints", 5, {"stage": 2}, agent, meta)
    return root


@pytest.fixture(scope="module")
def reach_images(tmp_path_factory) -> Path:
    return collect_reach(tmp_path_factory.mktemp("data") / "reach_images.hdf5", images=True)


@pytest.fixture(scope="module")
def stage2_11(tmp_path_factory) -> Path:
    return stage2_image_checkpoint(tmp_path_factory.mktemp("stage2"), num_tasks=11)


def finetune_cfg(checkpoint: Path, data: Path, out: Path, extra: list[str] = ()):
    overrides = [
        f"checkpoint={checkpoint}", "task=Reach", f"data.path={data}", "data.generate=false", f"output_dir={out}",
        "num_threads=1", "algo.batch_size=16", *([] if "algo=iql" in extra else ["algo.n_actions=2"]),
        "online.env_steps=120", "online.num_envs=2", "online.eval_every=60", "online.eval_episodes=1",
        "online.log_every=20", "online.checkpoint_every=40", "online.calibration_batch=16", "online.progress=false",
        "online.buffer_capacity=2000", *extra,
    ]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("finetune", overrides=overrides)


@pytest.fixture(scope="module")
def reach_run(reach_images, stage2_11, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_images") / "run"
    cfg = finetune_cfg(stage2_11, reach_images, out, [
        "online.asynchronous=true", f"image.target={{name: Reach, env_kwargs: {{max_episode_steps: {EPISODE}}}}}",
        "online.env_steps=60", "online.eval_every=30", "online.log_every=10", "online.checkpoint_every=20"])
    return out, cfg, finetune_online(cfg)


def test_image_checkpoint_runs_calql_online_with_worker_envs(reach_run):
    out, _, result = reach_run
    assert result["obs_type"] == "image"
    hist = result["history"]
    assert [h["env_steps"] for h in hist] == [0, 30, 60]
    for key in ("eval/success", "calib/offline_q_policy", "calib/offline_mc_return"):
        assert all(h.get(key) is not None for h in hist), key
    assert "calib/online_gap_policy" in hist[-1] and 0.0 <= hist[-1]["train/cumulative_regret"] <= 1.0
    rows = read_jsonl(out / "metrics.jsonl")
    logged = [r["step"] for r in rows if "train/critic_loss" in r]  # rounds of 2 (1 while draining) env steps
    assert len(logged) == 6 and all(m <= s <= m + 1 for m, s in zip(range(10, 61, 10), logged))
    assert [r["step"] for r in rows if "eval/success" in r] == [0, 30, 60]
    assert any((out / "tb").iterdir()) and (out / "learning_curve.png").stat().st_size > 0

    ckpt = load_latest(out / "checkpoints")
    assert is_image_checkpoint(ckpt) and ckpt.step == 60
    meta = ckpt.meta
    assert (meta["stage"], meta["algo"], meta["pretrained_algo"], meta["task"]) == ("online", "calql", "cql", "Reach")
    assert meta["randomization"] == {"level": "train", "factors": ["friction", "mass", "damping", "gripper_force",
                                                                   "lighting", "colors", "textures", "camera"]}
    assert meta["algo_cfg"]["critic_hidden"] == [32, 32]  # the network comes from the stage-2 checkpoint
    # mid-run checkpoints wait until both envs end their episode (success or the time limit) after env step 20
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("ckpt_*"))
    assert steps[-1] == 60 and len(steps) == 2 and 20 <= steps[0] <= 40
    online = ckpt.state["sampler"]["online"]
    assert int(online["num_episodes"]) == hist[-1]["episodes"] >= 2
    n = int(online["size"])
    rewards, dones = online["data"]["rewards"].numpy()[:n], online["data"]["dones"].numpy()[:n]
    mc = online["data"]["mc_returns"].numpy()[:n]
    assert online["data"]["observations"]["agentview_image"].shape[1:] == (SIZE, SIZE, 3)
    start = 0  # episodes are stored whole: each ends at its terminal or at the time limit
    while start < n:
        end = start + EPISODE
        if dones[start:end].any():
            end = start + int(np.flatnonzero(dones[start:end])[0]) + 1
        np.testing.assert_allclose(mc[start:end], returns_by_hand(rewards[start:end], dones[start:end], -5.0, GAMMA),
                                   rtol=1e-5)
        start = end
    agent, _ = load_image_agent(out)  # the output is a self-describing image checkpoint
    assert agent.algo == "calql" and agent.cfg.mode == "scratch"


def test_rerun_resumes_the_finished_run(reach_run):
    out, cfg, result = reach_run
    rows_before = read_jsonl(out / "metrics.jsonl")
    again = finetune_online(cfg)
    assert again["history"] == result["history"]
    assert read_jsonl(out / "metrics.jsonl") == rows_before


def test_killed_image_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A custom gymnasium target (keys mapped by obs_map), two envs; killed after its first checkpoint."""
    from test_pipeline_images import write_dot_demos

    demos = write_dot_demos(tmp_path / "dot.hdf5", episodes=3)
    stage2 = stage2_image_checkpoint(tmp_path / "stage2", num_tasks=12)
    extra = [f"image.target={DOT_TARGET}", "online.asynchronous=false", "online.env_steps=48",
             "online.checkpoint_every=12", "online.eval_every=24", "online.log_every=8", "online.tensorboard=false"]
    clean = finetune_online(finetune_cfg(stage2, demos, tmp_path / "clean", extra))

    real_update = die_after_first_checkpoint(monkeypatch, ImageAgent, tmp_path / "killed" / "checkpoints", updates=5)
    with pytest.raises(Killed):
        finetune_online(finetune_cfg(stage2, demos, tmp_path / "killed", extra))
    at_kill = load_latest(tmp_path / "killed" / "checkpoints").step
    assert 12 <= at_kill < 48
    monkeypatch.setattr(ImageAgent, "update", real_update)
    resumed = finetune_online(finetune_cfg(stage2, demos, tmp_path / "killed", extra))

    a, b = load_latest(tmp_path / "killed" / "checkpoints"), load_latest(tmp_path / "clean" / "checkpoints")
    assert a.step == b.step == 48 and a.meta["target"]["env_id"] == "test_pipeline_images:DotEnv"
    assert_same(a.weights, b.weights)
    assert_same(a.state["online"], b.state["online"], "online counters")
    assert resumed["history"] == clean["history"]


def test_image_checkpoint_with_state_only_data_or_other_algo_is_refused(stage2_11, tmp_path):
    state_only = collect_reach(tmp_path / "state_only.hdf5", images=False)
    with pytest.raises(DatasetError, match="agentview_image"):
        finetune_online(finetune_cfg(stage2_11, state_only, tmp_path / "a"))
    with pytest.raises(CheckpointError, match="checkpoint does not fit this config.*'iql'"):
        finetune_online(finetune_cfg(stage2_11, state_only, tmp_path / "b", ["algo=iql"]))


@pytest.mark.parametrize("mode", ["frozen_cached", "frozen", "finetune"])
def test_every_encoder_mode_fine_tunes_online(mode, tmp_path):
    """Pretrained-encoder modes rebuild from the checkpoint; frozen_cached stores encoder features online."""
    from test_pipeline_images import write_dot_demos

    from robopretrain.nets.encoder_io import save_encoder
    from robopretrain.nets.encoders import make_encoder

    demos = write_dot_demos(tmp_path / "dot.hdf5", episodes=3)
    enc = save_encoder(tmp_path / "enc", make_encoder("small_conv", SIZE, channels=8, out_dim=16), "small_conv", {})
    cfg = image_obs_config({"image_keys": ["agentview_image"], "mode": mode, "encoder_checkpoint": str(enc),
                            "image_size": SIZE})
    agent = ImageAgent(cfg, 7 + 12, 4, "cql", STAGE2_ALGO, seed=0)
    save_image_checkpoint(tmp_path / "s2" / "checkpoints", 1, {}, agent,
                          image_agent_meta(agent, state_keys=["proprio"], num_tasks=12, stage="stage2"))
    extra = [f"image.target={DOT_TARGET}", "online.asynchronous=false", "online.env_steps=24",
             "online.checkpoint_every=12", "online.eval_every=12", "online.log_every=6", "online.tensorboard=false"]
    out = finetune_online(finetune_cfg(tmp_path / "s2", demos, tmp_path / "run", extra))
    assert out["history"][-1]["env_steps"] == 24
    ckpt = load_latest(tmp_path / "run" / "checkpoints")
    stored = ckpt.state["sampler"]["online"]["data"]["observations"]
    if mode == "frozen_cached":
        assert tuple(stored.shape[1:]) == (16 + 7 + 12,)  # features ++ state
    else:
        assert tuple(stored["agentview_image"].shape[1:]) == (SIZE, SIZE, 3)
    loaded, _ = load_image_agent(tmp_path / "run")
    assert loaded.cfg.mode == mode and loaded.algo == "calql"
