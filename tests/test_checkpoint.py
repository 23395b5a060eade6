"""Checkpoints: identical outputs after reload, atomic writes, fallback from a corrupt newest one, config checks."""

from __future__ import annotations

import json

import pytest
import torch

from robopretrain.algos import make_agent
from robopretrain.checkpoint import (
    CheckpointError,
    check_compatible,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
    split_agent_state,
)
from robopretrain.train import restore_agent

TINY = {"actor_hidden": [16, 16], "critic_hidden": [16, 16], "n_actions": 2, "batch_size": 8}
META = {"algo": "calql", "obs_dim": 6, "act_dim": 4, "obs_keys": ["proprio"], "task_names": ["Reach"]}


def tiny_agent(seed: int = 0):
    torch.manual_seed(seed)
    return make_agent("calql", 6, 4, TINY)


def train_a_bit(agent, steps: int = 3) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = {
            "observations": torch.randn(8, 6, generator=g), "actions": torch.rand(8, 4, generator=g) * 2 - 1,
            "rewards": torch.randn(8, generator=g), "next_observations": torch.randn(8, 6, generator=g),
            "dones": torch.zeros(8), "mc_returns": torch.randn(8, generator=g),
        }
        agent.update(batch)


def save_agent(root, step, agent, meta=META):
    weights, optim = split_agent_state(agent.state_dict())
    return save_checkpoint(root, step, {"algo": {"name": "calql"}, "seed": 0}, weights, meta, {**optim, "step": step})


def test_reload_gives_identical_outputs(tmp_path):
    agent = tiny_agent(0)
    train_a_bit(agent)
    path = save_agent(tmp_path, 3, agent)
    other = tiny_agent(123)
    restore_agent(other, load_checkpoint(path))
    obs = torch.randn(5, 6)
    act = torch.rand(5, 4) * 2 - 1
    assert (agent.act(obs.numpy()) == other.act(obs.numpy())).all()
    assert torch.equal(agent.q_values(obs, act), other.q_values(obs, act))
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 3 and meta["obs_dim"] == 6 and {"torch", "mujoco", "robopretrain"} <= set(meta["versions"])
    assert (path / "config.yaml").read_text().startswith("algo:")
    # the optimiser continues identically too: one more update (same RNG) on both gives the same weights
    torch.manual_seed(7)
    train_a_bit(agent, 1)
    torch.manual_seed(7)
    train_a_bit(other, 1)
    for a, b in zip(agent.actor.parameters(), other.actor.parameters()):
        assert torch.equal(a, b)


def test_write_is_atomic_and_keeps_previous(tmp_path):
    agent = tiny_agent()
    save_agent(tmp_path, 1, agent)
    weights, _ = split_agent_state(agent.state_dict())
    with pytest.raises(Exception):
        save_checkpoint(tmp_path, 2, {"a": 1}, {**weights, "bad": lambda x: x}, META)  # unpicklable -> fails
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000001"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    assert (tmp_path / "latest").read_text().strip() == "ckpt_00000001"
    assert load_latest(tmp_path).step == 1


def test_keeps_newest_two(tmp_path):
    agent = tiny_agent()
    for step in (1, 2, 3):
        save_agent(tmp_path, step, agent)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000003", "ckpt_00000002"]


def test_corrupt_newest_falls_back_with_warning(tmp_path):
    agent = tiny_agent()
    save_agent(tmp_path, 1, agent)
    newest = save_agent(tmp_path, 2, agent)
    (newest / "weights.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="falling back"):
        ckpt = load_latest(tmp_path)
    assert ckpt.step == 1
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_checkpoint(newest)


def test_incompatible_config_is_a_clear_error(tmp_path):
    path = save_agent(tmp_path, 1, tiny_agent())
    meta = load_checkpoint(path).meta
    check_compatible(meta, obs_dim=6, act_dim=4, algo="calql")
    with pytest.raises(CheckpointError, match=r"obs_dim: checkpoint has 6, this config needs 9"):
        check_compatible(meta, obs_dim=9, act_dim=4, algo="calql")
    with pytest.raises(CheckpointError, match=r"algo: checkpoint has 'calql', this config needs 'iql'"):
        check_compatible(meta, obs_dim=6, act_dim=4, algo="iql")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
