"""Offline dataset, online ring buffer with returns-to-go, mixed sampler, dict observations, checkpoints.

(Reading a file into a dataset: tests/test_dataset.py; concatenating parts and the task one-hot: the observation
encoder, tests/test_agent.py.)"""

import io

import numpy as np
import pytest
import torch

from robopretrain.data.replay import MixedSampler, OfflineDataset, ReplayBuffer


def _offline(n=50, obs_dim=3, act_dim=2, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return OfflineDataset(
        obs, rng.uniform(-1, 1, (n, act_dim)), np.zeros(n), obs + 1, np.zeros(n), np.full(n, -7.0), seed=seed
    )


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_offline_sample_shapes_dtypes():
    ds = _offline()
    batch = ds.sample(8)
    assert set(batch) == {"observations", "actions", "rewards", "next_observations", "dones", "mc_returns",
                          "next_actions"}
    assert batch["observations"].shape == (8, 3) and batch["observations"].dtype == torch.float32
    assert batch["rewards"].shape == (8,) and torch.all(batch["mc_returns"] == -7.0)
    torch.testing.assert_close(batch["next_observations"], batch["observations"] + 1)


def test_offline_sampling_draws_every_transition_including_the_first():
    one = _offline(n=1)
    torch.testing.assert_close(one.sample(4)["actions"], one.get(np.zeros(4, dtype=np.int64))["actions"])
    two = _offline(n=2, seed=1)
    firsts = (two.sample(200)["observations"][:, 0] == two.get(np.array([0]))["observations"][0, 0]).sum().item()
    assert 50 < firsts < 150  # index 0 and index 1 both drawn, about evenly


def test_online_buffer_computes_returns_when_episode_ends():
    buf = ReplayBuffer(10, 2, 1, gamma=0.5, sparse_negative_reward=-1.0)
    for t in range(3):  # a success: -1, -1, +1 then terminal
        r = 1.0 if t == 2 else -1.0
        buf.add_step(np.full(2, t), [0.1], r, np.full(2, t + 1), terminated=t == 2, truncated=False)
        assert len(buf) == (3 if t == 2 else 0)  # not sampleable before the episode ends
    for t in range(2):  # a failure, truncated: all-failure rule
        buf.add_step(np.full(2, 10 + t), [0.2], -1.0, np.full(2, 11 + t), terminated=False, truncated=t == 1)
    data = buf.get(np.arange(5))
    torch.testing.assert_close(data["mc_returns"], torch.tensor([-1.25, -0.5, 1.0, -2.0, -2.0]))
    torch.testing.assert_close(data["dones"], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))


def test_ring_buffer_overwrites_oldest():
    buf = ReplayBuffer(5, 1, 1, gamma=0.9)
    for ep in range(3):
        n = 2
        buf.add_episode(np.full((n, 1), ep), np.zeros((n, 1)), np.ones(n), np.full((n, 1), ep), np.zeros(n))
    assert len(buf) == 5 and buf.ptr == 1
    stored = sorted(buf.get(np.arange(5))["observations"].view(-1).tolist())
    assert stored == [0.0, 1.0, 1.0, 2.0, 2.0]  # the first step of episode 0 was overwritten
    long_ep = np.arange(8, dtype=np.float32)[:, None]
    buf.add_episode(long_ep, np.zeros((8, 1)), np.ones(8), long_ep, np.zeros(8))
    assert sorted(buf.get(np.arange(5))["observations"].view(-1).tolist()) == [3, 4, 5, 6, 7]


def test_newest_indices_follow_the_ring_newest_first():
    buf = ReplayBuffer(5, 1, 1, gamma=0.9)
    assert buf.newest_indices(3).tolist() == []  # empty buffer
    buf.add_episode(np.arange(3.0)[:, None], np.zeros((3, 1)), np.ones(3), np.arange(3.0)[:, None], np.zeros(3))
    assert buf.newest_indices(2).tolist() == [2, 1] and buf.newest_indices(10).tolist() == [2, 1, 0]
    buf.add_episode(np.arange(3.0, 7.0)[:, None], np.zeros((4, 1)), np.ones(4), np.arange(3.0, 7.0)[:, None],
                    np.zeros(4))  # wraps: rows 5, 6 overwrite slots 0, 1
    idx = buf.newest_indices(4)
    assert idx.tolist() == [1, 0, 4, 3]
    assert buf.get(idx)["observations"].view(-1).tolist() == [6.0, 5.0, 4.0, 3.0]


def test_mixed_sampler_exact_counts_and_ratio_over_many_batches():
    off = _offline(n=40)
    on = ReplayBuffer(100, 3, 2, gamma=0.99)
    mixed = MixedSampler(off, on, offline_ratio=0.3)
    assert mixed.counts(10) == (10, 0)  # online still empty: all offline
    on.add_episode(np.full((20, 3), 99.0), np.zeros((20, 2)), np.ones(20), np.full((20, 3), 99.0), np.zeros(20))
    for batch_size, expected in [(10, (3, 7)), (256, (77, 179)), (7, (2, 5))]:
        assert mixed.counts(batch_size) == expected
        batch = mixed.sample(batch_size)
        is_online = batch["observations"][:, 0] == 99.0
        assert int(is_online.sum()) == expected[1] and batch["actions"].shape == (batch_size, 2)
    total_online = sum(int((mixed.sample(64)["observations"][:, 0] == 99.0).sum()) for _ in range(100))
    assert total_online == 100 * (64 - round(0.3 * 64))
    assert MixedSampler(off, on, 1.0).counts(8) == (8, 0)
    assert MixedSampler(off, on, 0.0).counts(8) == (0, 8)


def test_dict_observations_keep_their_dtypes_and_map_to_prepared_parts():
    spec = {"proprio": ((2,), np.float32), "agentview_image": ((4, 4, 3), np.uint8), "task_id": ((), np.int64)}
    buf = ReplayBuffer(8, spec, 1, gamma=0.9)
    obs = {"proprio": np.ones((3, 2)), "agentview_image": np.full((3, 4, 4, 3), 7, np.uint8),
           "task_id": np.full(3, 5, np.int64)}
    buf.add_episode(obs, np.zeros((3, 1)), np.zeros(3), obs, np.zeros(3))
    batch = buf.sample(4)
    assert batch["observations"]["agentview_image"].dtype == torch.uint8
    assert batch["observations"]["proprio"].shape == (4, 2) and batch["observations"]["proprio"].dtype == torch.float32
    task_ids = batch["observations"]["task_id"]
    assert task_ids.dtype == torch.int64 and set(task_ids.tolist()) == {5}
    data = OfflineDataset(obs, np.zeros((3, 1)), np.zeros(3), obs, np.zeros(3), np.zeros(3), seed=0)

    def features(parts):  # what a frozen_cached agent's prepare does: cameras -> a low-dim "features" part
        return {"features": parts["agentview_image"].reshape(len(parts["proprio"]), -1)[:, :2].astype(np.float32),
                "proprio": parts["proprio"], "task_id": parts["task_id"]}

    mapped = data.map_observations(features, seed=1)
    got = mapped.get(np.arange(3))
    assert set(got["observations"]) == {"features", "proprio", "task_id"}
    assert torch.equal(got["observations"]["features"], torch.full((3, 2), 7.0))
    torch.testing.assert_close(got["mc_returns"], data.get(np.arange(3))["mc_returns"])


def _marked(n: int, marker: float, seed: int) -> OfflineDataset:
    rng = np.random.default_rng(seed)

    def obs():
        return {"proprio": np.full((n, 2), marker, np.float32),
                "agentview_image": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)}

    return OfflineDataset(obs(), rng.uniform(-1, 1, (n, 2)), np.zeros(n), obs(), np.zeros(n), np.zeros(n), seed=seed)


@pytest.mark.parametrize("prior_fraction, batch", [(0.9, 50), (0.9, 256), (0.75, 64)])
def test_prior_target_mixing_holds_over_many_batches(prior_fraction, batch):
    """PTR's target adaptation: exactly round(fraction * batch) prior rows in every batch (two offline datasets)."""
    sampler = MixedSampler(_marked(200, 1.0, 1), _marked(30, 2.0, 2), prior_fraction)
    n_prior = n_target = 0
    for _ in range(300):
        marks = sampler.sample(batch)["observations"]["proprio"][:, 0]
        p, t = int((marks == 1.0).sum()), int((marks == 2.0).sum())
        assert p + t == batch and p == round(prior_fraction * batch)
        n_prior += p
        n_target += t
    assert n_target / (n_prior + n_target) == pytest.approx(1 - prior_fraction, abs=0.5 / batch)


def test_state_dicts_round_trip_with_weights_only():
    off = _offline(n=30)
    on = ReplayBuffer(6, 3, 2, gamma=0.9, seed=3)
    on.add_episode(np.ones((4, 3)), np.zeros((4, 2)), np.ones(4), np.ones((4, 3)), np.zeros(4))
    on.add_step(np.zeros(3), np.zeros(2), 0.5, np.ones(3), terminated=False, truncated=False)  # unfinished
    mixed = MixedSampler(off, on, 0.5)
    state = _roundtrip(mixed.state_dict())
    expected = mixed.sample(16)
    off2 = _offline(n=30, seed=9)
    off2._fields = off._fields
    on2 = ReplayBuffer(6, 3, 2, gamma=0.9, seed=4)
    mixed2 = MixedSampler(off2, on2, 0.1)
    mixed2.load_state_dict(state)
    assert on2.pending_steps == 1 and len(on2) == 4 and mixed2.offline_ratio == 0.5
    got = mixed2.sample(16)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)
    on2.add_step(np.zeros(3), np.zeros(2), 0.5, np.ones(3), terminated=True, truncated=False)
    assert len(on2) == 6


def test_offline_dataset_finds_episode_ends_from_observation_continuity():
    """Without ``next_actions`` the dataset derives them: ``actions[t + 1]`` where row t + 1 continues row t
    (``observations[t + 1] == next_observations[t]``), the own action at an episode's last row."""
    obs = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], dtype=np.float32)
    nxt = obs + 1.0  # row 2 ends an episode by truncation: row 3 starts at 10, not at 3
    actions = np.array([[0.1], [0.2], [0.3], [0.4], [0.5]], dtype=np.float32)
    ds = OfflineDataset(obs, actions, np.zeros(5), nxt, np.zeros(5))
    got = ds.get(np.arange(5))["next_actions"].view(-1).tolist()
    assert got == pytest.approx([0.2, 0.3, 0.3, 0.5, 0.5])


def test_a_files_demos_stay_the_episodes_through_from_transitions_and_map_observations():
    """Noisy next_obs (a real robot's log) inside two demos: from_transitions keeps the demos as the episodes (its
    next_actions and episode_starts), and map_observations (DT on frozen features) keeps them too; before, each
    rebuilt the boundaries from the observations and cut every row into its own episode. A starts array that does
    not start with True is refused."""
    from robopretrain.data.hdf5 import Transitions
    from robopretrain.data.sequences import SequenceSampler

    obs = np.arange(6, dtype=np.float32).reshape(6, 1)
    trans = Transitions("log.hdf5", {"x": obs}, {"x": obs + 1.3}, np.arange(6, dtype=np.float32).reshape(6, 1) / 10,
                        np.array([0, 0, 1, 0, 0, 1], np.float32), np.zeros(6, np.float32),
                        np.array([0, 0, 0, 1, 1, 1]), np.zeros(6, np.int64), ["demo_0", "demo_1"], ["t", "t"],
                        [{}, {}])
    ds = OfflineDataset.from_transitions(trans, gamma=1.0, reward_scale=1.0, reward_bias=0.0)
    assert ds.episode_starts.tolist() == [True, False, False, True, False, False]
    assert ds.get(np.arange(6))["next_actions"].view(-1).tolist() == pytest.approx([0.1, 0.2, 0.2, 0.4, 0.5, 0.5])
    mapped = ds.map_observations(lambda o: {"f": o["x"] * 2})
    assert mapped.episode_starts.tolist() == ds.episode_starts.tolist()
    before, after = ds.get(np.arange(6)), mapped.get(np.arange(6))
    for field in ("actions", "rewards", "dones", "mc_returns", "next_actions"):  # only the observations change
        torch.testing.assert_close(after[field], before[field])
    torch.testing.assert_close(after["next_observations"]["f"], before["next_observations"]["x"] * 2)
    window = SequenceSampler(mapped, 3, seed=0)  # DT's windows and returns-to-go over the demos
    assert window.num_episodes == 2 and window.timesteps.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="starting with True"):
        OfflineDataset(obs, obs, np.zeros(6), obs, np.zeros(6), episode_starts=np.zeros(6, bool))
    no_next = Transitions(trans.path, {"x": obs, "y": obs}, {"x": obs + 1.3}, *list(vars(trans).values())[3:])
    with pytest.raises(KeyError, match=r"no observation part\(s\) \['y'\]"):  # in obs, not in next_obs
        OfflineDataset.from_transitions(no_next, gamma=1.0, reward_scale=1.0, reward_bias=0.0)


def test_a_one_step_episode_is_stored_and_a_one_row_buffer_samples():
    buf = ReplayBuffer(10, 2, 1, gamma=0.9, sparse_negative_reward=0.0)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(2)
    buf.add_step(np.zeros(2), [0.5], 1.0, np.ones(2), terminated=True, truncated=False)
    assert len(buf) == 1 and buf.num_episodes == 1
    batch = buf.sample(3)
    torch.testing.assert_close(batch["actions"], torch.full((3, 1), 0.5))
    torch.testing.assert_close(batch["mc_returns"], torch.ones(3))


def test_replay_stores_next_observations_and_resumes_a_half_finished_episode():
    buf = ReplayBuffer(10, 1, 1, gamma=0.9, seed=3)
    t = np.arange(3, dtype=np.float32)[:, None]
    buf.add_episode(t, 0.1 * t, np.ones(3), t + 100.0, np.array([0.0, 0.0, 1.0]))
    assert buf.get(np.arange(3))["next_observations"].view(-1).tolist() == [100.0, 101.0, 102.0]
    assert buf.num_episodes == 1
    for i in range(2):  # two steps of an unfinished episode: not sampleable, but part of the state
        buf.add_step(np.array([50.0 + i]), [0.5], 0.0, np.array([150.0 + i]), terminated=False, truncated=False)
    state = buf.state_dict()
    resumed = ReplayBuffer(10, 1, 1, gamma=0.9)
    resumed.load_state_dict(_roundtrip(state))
    for b in (buf, resumed):
        b.add_step(np.array([52.0]), [0.5], 1.0, np.array([152.0]), terminated=True, truncated=False)
    a, b = buf.get(np.arange(6)), resumed.get(np.arange(6))
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert b["next_observations"].view(-1).tolist()[3:] == [150.0, 151.0, 152.0]
    assert b["observations"].view(-1).tolist()[3:] == [50.0, 51.0, 52.0]  # add_step keeps s apart from s'
    assert resumed.num_episodes == buf.num_episodes == 2
    old = _roundtrip(state)  # a state written before next actions were stored: their own actions stand in
    del old["data"]["next_actions"]
    legacy = ReplayBuffer(10, 1, 1, gamma=0.9)
    legacy.load_state_dict(old)
    torch.testing.assert_close(legacy.get(np.arange(3))["next_actions"], legacy.get(np.arange(3))["actions"])


def test_replay_capacity_and_dict_observation_keys_are_checked():
    ReplayBuffer(1, 1, 1, gamma=0.9)  # the smallest buffer
    with pytest.raises(ValueError, match="capacity must be positive"):
        ReplayBuffer(0, 1, 1, gamma=0.9)
    spec = {"proprio": ((2,), np.float32), "rgb": ((4, 4, 3), np.uint8)}
    buf = ReplayBuffer(5, spec, 1, gamma=0.9)
    obs = {"proprio": np.zeros((2, 2), np.float32), "rgb": np.zeros((2, 4, 4, 3), np.uint8)}
    with pytest.raises(ValueError, match="must be a dict with keys"):
        buf.add_episode({"proprio": obs["proprio"]}, np.zeros((2, 1)), np.zeros(2), obs, np.zeros(2))
    with pytest.raises(ValueError, match="must be a dict with keys"):
        buf.add_episode(obs["proprio"], np.zeros((2, 1)), np.zeros(2), obs, np.zeros(2))
