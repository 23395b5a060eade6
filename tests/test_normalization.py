"""Observation normalisation, one place for every stage: the encoder's buffers are the training data's mean and
std (+1e-3), a checkpoint carries them, and an observation from the env (evaluation, stage 3) reaches the networks
exactly as the same state's row of the dataset does, task one-hot included."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _stages import collect_sim, stage2_config
from robopretrain.checkpoint import load_agent
from robopretrain.data.dataset import RewardSettings, load_offline_dataset
from robopretrain.data.hdf5 import load_transitions, read_info
from robopretrain.envs.target import Target
from robopretrain.evaluation import agent_env, run_episodes

SIZE = 32
OBS = {"low_dim": {"low_dim": ["proprio", "object"], "rgb": []},
       "1cam": {"low_dim": ["proprio", "object"], "rgb": ["agentview_image"]}}


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    return collect_sim(tmp_path_factory.mktemp("data") / "demos.hdf5", ["Reach", "PressButton"], images=True,
                       image_size=SIZE)


@pytest.fixture(scope="module")
def trained(demos, tmp_path_factory):
    """Stage 2 (2 updates) per observation spec: the agent it trained and the one rebuilt from its checkpoint."""
    import robopretrain.train

    out = {}
    for name, obs in OBS.items():
        captured = {}
        real = robopretrain.train.train_offline

        def spy(agent, *args, **kwargs):
            captured["agent"] = agent
            return real(agent, *args, **kwargs)

        robopretrain.train.train_offline = spy
        try:
            ckpt = robopretrain.train.run(stage2_config(demos, tmp_path_factory.mktemp(name) / "run", steps=2, obs=obs))
        finally:
            robopretrain.train.train_offline = real
        out[name] = (captured["agent"], load_agent(ckpt)[0])
    return out


@pytest.mark.parametrize("name", list(OBS))
def test_encoder_buffers_are_the_data_mean_and_std_and_travel_in_the_checkpoint(demos, trained, name):
    agent, rebuilt = trained[name]
    tr = load_transitions(demos, ["proprio", "object"])
    rows = np.concatenate([tr.obs["proprio"], tr.obs["object"]], axis=1).astype(np.float64)
    for enc in {id(e): e for e in (agent.critic_encoder, agent.actor_encoder)}.values():
        np.testing.assert_allclose(enc.mean.numpy(), rows.mean(0), rtol=1e-5, atol=1e-6)
        constant = rows.std(0) == 0  # (empty object slots of these tasks: centred, not scaled)
        assert constant.any() and not constant.all()
        np.testing.assert_allclose(enc.std.numpy(), np.where(constant, 1.0, rows.std(0) + 1e-3), rtol=1e-5, atol=1e-6)
    for mine, theirs in ((rebuilt.critic_encoder, agent.critic_encoder), (rebuilt.actor_encoder, agent.actor_encoder)):
        assert torch.equal(mine.mean, theirs.mean) and torch.equal(mine.std, theirs.std)
    assert not torch.equal(agent.critic_encoder.std, torch.ones_like(agent.critic_encoder.std))


def test_normalize_false_leaves_the_parts_as_they_are(demos, tmp_path):
    from robopretrain.train import run

    agent, _ = load_agent(run(stage2_config(demos, tmp_path / "run", steps=2, obs={**OBS["low_dim"],
                                                                                   "normalize": False})))
    assert torch.equal(agent.critic_encoder.mean, torch.zeros(25))
    assert torch.equal(agent.critic_encoder.std, torch.ones(25))


class Recorder:
    """Stands in for the agent in the evaluation loop and keeps the observations it is given."""

    def __init__(self, agent) -> None:
        self.agent, self.spec, self.seen = agent, agent.spec, []

    def act(self, obs, deterministic=True):
        self.seen.append(obs)
        return self.agent.act(obs, deterministic)


@pytest.mark.parametrize("name", list(OBS))
def test_an_env_observation_and_the_same_states_data_row_give_the_same_features(demos, trained, name):
    """Reset the env with a demo's recorded seed: the first observation the evaluation loop hands the agent and the
    demo's first row of the training data are the same state; both go through the same encoder to the same features
    (normalised low-dim parts, camera features, the task's one-hot)."""
    _, agent = trained[name]
    info = read_info(demos)
    demo = next(d for d in info.demos if d.task == "PressButton")
    first = sum(d.num_samples for d in info.demos if int(d.name.split("_")[1]) < int(demo.name.split("_")[1]))
    data = load_offline_dataset(demos, agent.spec, RewardSettings.of_algo(agent.algo_cfg))
    row = data.get(np.array([first]))["observations"]
    recorder = Recorder(agent)
    env = agent_env(agent, Target("PressButton"))
    try:
        run_episodes(recorder, env, 1, eval_seed=int(demo.ep_meta["seed"]))
    finally:
        env.close()
    seen = {k: torch.as_tensor(np.asarray(v))[None] for k, v in recorder.seen[0].items()}
    assert int(seen["task_id"][0]) == int(row["task_id"][0]) == demo.task_id
    for key in agent.spec.storage_keys():
        np.testing.assert_array_equal(seen[key].numpy(), row[key].numpy(), err_msg=key)
    with torch.no_grad():
        for enc in (agent.critic_encoder, agent.actor_encoder):
            torch.testing.assert_close(enc(seen), enc(row), rtol=0, atol=0)
        features = agent.critic_encoder(seen)[0]
    one_hot = features[-agent.spec.num_tasks:]
    assert one_hot.sum() == 1 and int(one_hot.argmax()) == demo.task_id
    np.testing.assert_array_equal(agent.act(recorder.seen[0]), agent.act(row)[0])
