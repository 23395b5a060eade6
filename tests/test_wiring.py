"""One observation path, wired end to end: stage 2 (``robopretrain.train.run``) then stage 3 (``finetune.train.run``)
for every observation spec {low-dim only, 1 camera, 2 cameras} x every algorithm {cql, calql, iql, bc}, on a robot
that is not ours.

The robot is :class:`_fake_envs.RobosuiteLikeEnv`: robosuite's keys (``robot0_eef_pos`` (3),
``robot0_gripper_qpos`` (2), cameras ``agentview_image`` and ``robot0_eye_in_hand_image``), 7-D actions, a dense
reward of its own and ``info["success"]``. Its demos are written by the test with the toolkit's own writer
(``sim_envs.hdf5_writer``); the configs map our part names onto its keys (``obs_map``) and name it as a target by
entry point (``Target(env_id="module:Class", task_id=...)``). Every size comes from the data and the env: the
checkpoints record them, and the agent rebuilt by ``load_agent`` from the folder alone acts exactly as the agent
that was trained.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import _fake_envs as fake
from _stages import stage2_config, stage3_config
from robopretrain.checkpoint import load_agent, load_checkpoint, load_latest
from robopretrain.envs.target import as_target
from robopretrain.evaluate import default_target
from robopretrain.evaluation import agent_env
from robopretrain.metrics import read_jsonl

pytestmark = pytest.mark.slow

OBS_MAP = {"eef_pos": fake.EEF, "gripper_qpos": fake.GRIPPER, "eye_in_hand_image": fake.EYE_IN_HAND}
LOW_DIM = ["eef_pos", "gripper_qpos"]
CAMERAS = {0: [], 1: ["agentview_image"], 2: ["agentview_image", "eye_in_hand_image"]}
NUM_TASKS = 3  # prior tasks 0 and 1, the held-out target 2


def target(demos: Path, **extra) -> dict:
    return {"name": "reach_c", "env_id": "_fake_envs:RobosuiteLikeEnv", "task_id": 2, "max_episode_steps": 10,
            "obs_map": OBS_MAP, "demos": str(demos), **extra}


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("robosuite_like")
    return {"prior": fake.write_robosuite_demos(tmp / "prior.hdf5", 3, tasks=(("reach_a", 0), ("reach_b", 1))),
            "target": fake.write_robosuite_demos(tmp / "target.hdf5", 2, tasks=(("reach_c", 2),), seed=1)}


class Captured:
    """Keeps the agent a stage trains (the argument of its loop), to compare with the one rebuilt from disk."""

    def __init__(self, monkeypatch, module, name: str) -> None:
        self.agent = None
        real = getattr(module, name)

        def spy(agent, *args, **kwargs):
            self.agent = agent
            return real(agent, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)


def env_observations(agent, tgt: dict, n: int = 3) -> dict[str, np.ndarray]:
    """A batch of ``n`` start observations from the target's env, as evaluation sees them."""
    env = agent_env(agent, as_target(tgt))
    try:
        rows = [env.reset(seed=100 + i)[0] for i in range(n)]
    finally:
        env.close()
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def assert_same_agent(rebuilt, trained, obs: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(rebuilt.act(obs), trained.act(obs))
    if trained.has_q:
        acts = torch.as_tensor(trained.act(obs))
        torch.testing.assert_close(rebuilt.q_values(obs, acts), trained.q_values(obs, acts), rtol=0, atol=0)


@pytest.mark.parametrize("algo", ["cql", "calql", "iql", "bc"])
@pytest.mark.parametrize("cams", [0, 1, 2], ids=["low_dim", "1cam", "2cams"])
def test_stage2_then_stage3_on_a_robosuite_like_robot(demos, tmp_path, monkeypatch, algo, cams):
    import finetune.train
    import robopretrain.train

    tgt = target(demos["target"])
    obs = {"low_dim": LOW_DIM, "rgb": CAMERAS[cams], "num_tasks": NUM_TASKS}
    s2 = Captured(monkeypatch, robopretrain.train, "train_offline")
    ckpt2 = robopretrain.train.run(stage2_config(demos["prior"], tmp_path / "s2", algo=algo, obs=obs,
                                                 data_cfg={"obs_map": OBS_MAP}, train={"eval_targets": [tgt]}))
    meta = json.loads((ckpt2 / "meta.json").read_text())
    assert meta["act_dim"] == fake.ROBOSUITE_ACT_DIM and meta["algo"] == algo
    assert meta["obs_spec"] == {"low_dim": [["eef_pos", 3], ["gripper_qpos", 2]],
                                "rgb": [[k, [16, 16, 3]] for k in CAMERAS[cams]], "num_tasks": NUM_TASKS}
    assert meta["task_names"] == ["reach_a", "reach_b"]
    # robopretrain.evaluate without target=: the gym target the run evaluated, not "reach_a is not a sim_envs task"
    assert default_target(load_checkpoint(ckpt2)) == as_target(tgt)
    evals = [r for r in read_jsonl(tmp_path / "s2" / "metrics.jsonl") if "eval/success" in r]
    assert [r["step"] for r in evals] == [4] and evals[0]["eval/length"] >= 1  # evaluated on the gym target
    rebuilt2, _ = load_agent(ckpt2)
    assert_same_agent(rebuilt2, s2.agent, env_observations(rebuilt2, tgt))

    s3 = Captured(monkeypatch, finetune.train, "run_online")
    out = finetune.train.run(stage3_config(ckpt2, tmp_path / "s3", tgt, algo=algo))
    assert [h["env_steps"] for h in out["history"]] == [0, 12]
    ckpt3 = load_latest(tmp_path / "s3" / "checkpoints")
    assert ckpt3.step == 12 and ckpt3.meta["stage"] == "online" and ckpt3.meta["pretrained_from"] == str(ckpt2)
    assert ckpt3.meta["obs_spec"] == meta["obs_spec"] and ckpt3.meta["act_dim"] == fake.ROBOSUITE_ACT_DIM
    online = ckpt3.state["sampler"]["online"]
    n = int(online["size"])
    assert n > 0 and online["data"]["actions"].shape[1:] == (fake.ROBOSUITE_ACT_DIM,)
    stored = online["data"]["observations"]
    assert set(stored) == {"eef_pos", "gripper_qpos", *CAMERAS[cams], "task_id"}
    assert set(stored["task_id"][:n].tolist()) == {2}  # the target's slot of the one-hot
    if algo != "bc":  # sparse success reward x10 - 5, whatever the env's own (dense) reward was
        assert set(np.unique(online["data"]["rewards"][:n].numpy())) <= {-5.0, 5.0}
    rebuilt3, _ = load_agent(tmp_path / "s3")
    trained = s3.agent
    assert trained.core.num_updates > s2.agent.core.num_updates  # stage 3 continued the stage-2 weights
    assert_same_agent(rebuilt3, trained, env_observations(rebuilt3, tgt))


def test_other_robot_sizes_come_from_the_data_and_the_env(tmp_path):
    """5-D actions and a 4-D end-effector part: the same commands, no size written anywhere but in the data."""
    from finetune.train import run as stage3
    from robopretrain.train import run as stage2

    prior = fake.write_robosuite_demos(tmp_path / "prior.hdf5", 2, act_dim=5, eef_dim=4)
    tgt = target(prior, task_id=0, env_kwargs={"act_dim": 5, "eef_dim": 4})
    ckpt = stage2(stage2_config(prior, tmp_path / "s2", obs={"low_dim": LOW_DIM, "rgb": []},
                                data_cfg={"obs_map": OBS_MAP}))
    agent, saved = load_agent(ckpt)
    assert saved.meta["act_dim"] == 5 and saved.meta["obs_spec"]["low_dim"] == [["eef_pos", 4], ["gripper_qpos", 2]]
    stage3(stage3_config(ckpt, tmp_path / "s3", tgt, env_steps=6))
    agent, _ = load_agent(tmp_path / "s3")
    assert agent.act(env_observations(agent, tgt)).shape == (3, 5)
