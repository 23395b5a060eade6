"""A robomimic file -> an offline dataset of observation dicts: rewards scaled and returns-to-go by hand, key maps,
task ids and one-hot sizes, sizes checked; and rewards that disagree with the episodes' success (case 07's kind):
refused for reward-based learning, rebuilt on request, ignored by BC, reported by ``robopretrain.data.inspect``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import _fake_envs as fake
from _stages import stage2_config
from robopretrain.data.dataset import (RewardSettings, default_num_tasks, load_offline_dataset, spec_of_data,
                                       warn_sparse_data_for_dense_target)
from robopretrain.data.hdf5 import DatasetError, read_info
from robopretrain.data.spec import ObsSpec
from sim_envs.hdf5_writer import RobomimicWriter, make_env_args

CAL_QL = RewardSettings(discount=0.5, scale=10.0, bias=-5.0, sparse=True)


def write_file(path: Path, zero_rewards: bool = False, env_args: dict | None = None, done_at_ends: bool = False) -> Path:
    """Two 3-step episodes of a 1-D ``proprio``: task a (id 0) succeeds on its last step, task b (id 1) fails;
    ``done_at_ends``: both end on done=1 (robomimic's done_mode 2)."""
    with RobomimicWriter(path, env_args or make_env_args("Toy", "0", {}), valid_fraction=0.0) as w:
        for i, (task, success) in enumerate([("a", True), ("b", False)]):
            x = np.arange(3 * i, 3 * i + 3, dtype=np.float32)[:, None]
            rewards = np.array([0, 0, float(success and not zero_rewards)], np.float32)
            w.add_episode(task=task, task_id=i, obs={"proprio": x}, next_obs={"proprio": x + 1},
                          actions=np.full((3, 4), 0.1 * (i + 1), np.float32), rewards=rewards,
                          dones=np.array([0, 0, 1], np.uint8) if done_at_ends else (rewards > 0).astype(np.uint8),
                          ep_meta={"success": success})
    return path


def test_failed_episodes_ending_on_done_are_reported(tmp_path, caplog):
    from robopretrain.data.dataset import warn_failed_terminals

    path = write_file(tmp_path / "mode2.hdf5", done_at_ends=True)
    spec = spec_of_data(path, ["proprio"], [], None)
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(path, spec, CAL_QL)
        load_offline_dataset(write_file(tmp_path / "ours.hdf5"), spec, CAL_QL)
    assert caplog.text.count("episodes end on done=1") == 1
    assert "mode2.hdf5: 1 of 2 episodes end on done=1 without success" in caplog.text
    ids, dones = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 1.0])
    assert warn_failed_terminals("x", np.array([0, 0, 0, 0, 1.0]), dones, ids, [False, False, False]) == 2  # 2: r > 0
    assert warn_failed_terminals("x", np.zeros(5), dones, ids, [True, False, True]) == 1  # flagged successes
    assert warn_failed_terminals("x", np.zeros(5), np.zeros(5), ids, [False] * 3) == 0
    assert warn_failed_terminals("x", np.zeros(5), dones, ids, [False] * 3, [True, False, True]) == 2  # unknown: 1
    # a file stored without rewards and without success flags (BC's data): its done=1 ends are not called failures
    with h5py.File(path, "r+") as f:
        for demo in f["data"].values():
            del demo["rewards"]
            demo.attrs["ep_meta"] = json.dumps({})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(path, spec, RewardSettings.of_algo({}), rewards_needed=False)
    assert "end on done=1" not in caplog.text
    with h5py.File(path, "r+") as f:  # one flagged failure among them is still said
        f["data/demo_1"].attrs["ep_meta"] = json.dumps({"success": False})
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(path, spec, RewardSettings.of_algo({}), rewards_needed=False)
    assert "mode2.hdf5: 1 of 2 episodes end on done=1 without success" in caplog.text


def test_successful_episodes_ending_on_done_0_are_reported(tmp_path, caplog):
    """ep_meta says success but the last done is 0: the backup runs past the success (a target stops there)."""
    from robopretrain.data.dataset import warn_open_successes

    path = write_file(tmp_path / "open.hdf5")
    spec = spec_of_data(path, ["proprio"], [], None)
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(path, spec, CAL_QL)  # done=1 at the success: nothing said
        with h5py.File(path, "r+") as f:
            f["data/demo_0/dones"][...] = 0
        load_offline_dataset(path, spec, CAL_QL)
    assert caplog.text.count("marked successful in ep_meta end on done=0") == 1
    assert "open.hdf5: 1 of 2 episodes marked successful" in caplog.text
    caplog.clear()

    ids, dones = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 0, 0.0])
    with caplog.at_level(logging.WARNING):
        assert warn_open_successes("x.hdf5", dones, ids, [True, True, True]) == 2  # episodes 1 and 2
    assert "x.hdf5: 2 of 3 episodes marked successful in ep_meta end on done=0" in caplog.text
    assert warn_open_successes("x", dones, ids, [True, False, False]) == 0  # the success ends on done=1
    assert warn_open_successes("x", dones, ids, [True]) == 0  # flags that do not fit the episodes: nothing said
    # no ep_meta (robomimic's own files): sparse rewards say which episodes succeeded
    rewards = np.array([0, 1, 0, 1, 0.0])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert warn_open_successes("r.hdf5", dones, ids, [], rewards) == 1  # episode 1 (episode 2 failed)
    assert "r.hdf5: 1 of 3 episodes successful (reward 1 on their last step) end on done=0" in caplog.text
    assert warn_open_successes("r", dones, ids, [], rewards * 0.5 + 0.25) == 0  # dense rewards: not a success
    assert warn_open_successes("r", dones, ids, [False, False, True], rewards) == 2  # both sources count


def test_a_done_inside_an_episode_is_reported_with_its_demo_and_step(tmp_path, caplog):
    """dones=1 before a demo's last step (a success marker, or a broken file): kept as a terminal (the TD backup stops,
    returns-to-go restart after it), with a warning naming the demo and the step; none for a clean file, nor for an
    OGBench conversion (its task-done steps are marked so by design)."""
    from robopretrain.data.dataset import warn_inner_terminals

    def mid_done(path):
        with h5py.File(path, "r+") as f:
            f["data/demo_1/dones"][1] = 1
        return path

    path = mid_done(write_file(tmp_path / "mid.hdf5"))
    spec = spec_of_data(path, ["proprio"], [], None)
    with caplog.at_level(logging.WARNING):
        arrays = load_offline_dataset(path, spec, CAL_QL).arrays()
    assert f"{path}: dones=1 before the last step at 1 step(s) of 1 demo(s) (data/demo_1 step 1 of 3)" in caplog.text
    assert "read as a terminal" in caplog.text and "rewrite those dones to 0" in caplog.text
    np.testing.assert_array_equal(arrays["dones"], [0, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(arrays["mc_returns"][3:], [-10, -10, -10])  # two all-failure segments
    caplog.clear()
    ogbench = mid_done(write_file(tmp_path / "og.hdf5", env_args={**make_env_args("Toy", "0", {}), "type": "ogbench"}))
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(write_file(tmp_path / "clean.hdf5"), spec, CAL_QL)
        load_offline_dataset(ogbench, spec, CAL_QL)
    assert "before the last step" not in caplog.text
    ids = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    assert warn_inner_terminals("x", np.array([1, 0, 1, 1, 1, 1, 1, 1.0]), ids, ["demo_0", "demo_7"]) == 5
    assert "data/demo_0 step 0 of 3; data/demo_7 steps 0, 1, 2, ... of 5" in caplog.text
    assert warn_inner_terminals("x", np.array([0, 0, 1, 0, 0, 0, 0, 1.0]), ids, ["demo_0", "demo_7"]) == 0
    assert warn_inner_terminals("x", np.array([]), np.array([]), []) == 0  # nothing to say of no steps
    assert warn_inner_terminals("x", np.array([1, 0, 1.0]), np.array([0, 0, 0]), ["d"], {"type": "ogbench"}) == 0
    ogbench_now = {"type": 2, "format": "ogbench"}  # converter 9 on: robomimic's integer type, the format beside it
    assert warn_inner_terminals("x", np.array([1, 0, 1.0]), np.array([0, 0, 0]), ["d"], ogbench_now) == 0
    caplog.clear()  # four demos: the first three named, then "..."
    four = np.repeat(np.arange(4), 2)
    assert warn_inner_terminals("y", np.tile([1, 1.0], 4), four, ["a", "b", "c", "d"]) == 4
    assert "at 4 step(s) of 4 demo(s) (data/a step 0 of 2; data/b step 0 of 2; data/c step 0 of 2; ...)" in caplog.text


def test_rewards_are_scaled_and_returns_computed_by_hand(tmp_path):
    path = write_file(tmp_path / "toy.hdf5")
    spec = spec_of_data(path, ["proprio"], [], None)
    assert spec == ObsSpec(low_dim=(("proprio", 1),), num_tasks=2)  # an unknown env: largest task id + 1
    arrays = load_offline_dataset(path, spec, CAL_QL).arrays()
    assert set(arrays["observations"]) == {"proprio", "task_id"}
    np.testing.assert_array_equal(arrays["observations"]["proprio"][:, 0], np.arange(6))
    np.testing.assert_array_equal(arrays["next_observations"]["proprio"][:, 0], np.arange(6) + 1)
    np.testing.assert_array_equal(arrays["observations"]["task_id"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(arrays["rewards"], [-5, -5, 5, -5, -5, -5])
    np.testing.assert_array_equal(arrays["dones"], [0, 0, 1, 0, 0, 0])
    # episode a: 5, -5 + 0.5 * 5, -5 + 0.5 * -2.5; episode b never succeeds: the all-failure value -5 / (1 - 0.5)
    np.testing.assert_allclose(arrays["mc_returns"], [-6.25, -2.5, 5, -10, -10, -10])
    dense = load_offline_dataset(path, spec, RewardSettings(0.5, 10.0, -5.0, sparse=False)).arrays()
    np.testing.assert_allclose(dense["mc_returns"][3:], [-5 - 2.5 - 1.25, -5 - 2.5, -5])  # truncated, no rule


def test_a_load_reads_the_files_metadata_once(tmp_path, monkeypatch):
    """The metadata (every demo's attributes) was read twice per load, once more by load_transitions: seconds on a
    file of thousands of small demos (a new user's finding)."""
    import robopretrain.data.hdf5 as hdf5_mod

    path = write_file(tmp_path / "toy.hdf5")
    spec = spec_of_data(path, ["proprio"], [], None)
    calls = []
    monkeypatch.setattr(hdf5_mod, "_demo_info", lambda *a, real=hdf5_mod._demo_info: calls.append(a[2]) or real(*a))
    load_offline_dataset(path, spec, CAL_QL)
    assert sorted(calls) == ["demo_0", "demo_1"]


def test_next_obs_logged_apart_from_the_next_obs_does_not_split_demos(tmp_path, caplog):
    """A robot that logs next_obs separately (1e-3 sensor noise): every step's next_obs differs from the next obs.
    Each demo was cut into one-step episodes, so a successful demo's steps got the never-succeeds return (-10 here)
    and ReBRAC's next actions and DT's windows stopped at every step."""
    from robopretrain.data.sequences import SequenceSampler

    clean = write_file(tmp_path / "clean.hdf5")
    noisy = tmp_path / "noisy.hdf5"
    noisy.write_bytes(clean.read_bytes())
    with h5py.File(noisy, "r+") as f:
        for i, demo in enumerate(("demo_0", "demo_1")):
            f[f"data/{demo}/next_obs/proprio"][...] += np.float32(1e-3) * (1 + np.arange(3, dtype=np.float32))[:, None]
            f[f"data/{demo}/actions"][...] = np.arange(4 * i, 4 * i + 3, dtype=np.float32)[:, None] / 10
            for shift, group in enumerate(("obs", "next_obs")):  # a second part whose next_obs is the next obs
                f[f"data/{demo}/{group}/gripper"] = np.arange(shift, 3 + shift, dtype=np.float32)[:, None]  # (unnamed)
    spec = spec_of_data(clean, ["proprio"], [], None)
    with caplog.at_level(logging.WARNING):
        data = load_offline_dataset(noisy, spec_of_data(noisy, ["proprio", "gripper"], [], None), CAL_QL)
    arrays = data.arrays()
    np.testing.assert_allclose(arrays["mc_returns"], [-6.25, -2.5, 5, -10, -10, -10])  # as the clean file's
    np.testing.assert_allclose(arrays["next_actions"][:, 0], [0.1, 0.2, 0.2, 0.5, 0.6, 0.6])  # within each demo
    assert "noisy.hdf5: at 4 steps inside a demo the next_obs is not the next step's obs" in caplog.text
    assert "steps per part: proprio at 4)" in caplog.text and "gripper" not in caplog.text
    assert "off by one" not in caplog.text  # noise, not a copy of obs
    sampler = SequenceSampler(data, 3)
    assert sampler.num_episodes == 2 and sampler.timesteps.tolist() == [0, 1, 2, 0, 1, 2]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(clean, spec, CAL_QL)
    assert "inside a demo" not in caplog.text
    copied = tmp_path / "copied.hdf5"  # next_obs written from the same step (a common off-by-one)
    copied.write_bytes(clean.read_bytes())
    with h5py.File(copied, "r+") as f:
        for demo in ("demo_0", "demo_1"):
            f[f"data/{demo}/next_obs/proprio"][...] = f[f"data/{demo}/obs/proprio"][()]
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(copied, spec, CAL_QL)
    assert "next_obs equals obs itself at 6 of 6 steps: written from the same step, not the next one (off by " \
        "one)?" in caplog.text
    caplog.clear()  # half the steps copied (one demo of two written wrong) is enough to say so
    with h5py.File(copied, "r+") as f:
        f["data/demo_1/next_obs/proprio"][...] = f["data/demo_1/obs/proprio"][()] + 1
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(copied, spec, CAL_QL)
    assert "next_obs equals obs itself at 3 of 6 steps" in caplog.text


def test_key_maps_task_ids_and_sizes_are_checked(tmp_path, caplog):
    path = write_file(tmp_path / "toy.hdf5")
    spec = spec_of_data(path, ["state"], [], 4, obs_map={"state": "proprio"})
    ds = load_offline_dataset(path, spec, CAL_QL, obs_map={"state": "proprio"}, task_id=3, tasks=["b"])
    assert len(ds) == 3 and set(ds.arrays()["observations"]) == {"state", "task_id"}
    np.testing.assert_array_equal(ds.arrays()["observations"]["task_id"], [3, 3, 3])  # one id for a foreign file
    # stored as the spec (and the online buffer) keep it: int64, in memory, from disk and through from_transitions
    from robopretrain.data import OfflineDataset, load_transitions

    trans = load_transitions(path, ["proprio"])
    held = OfflineDataset.from_transitions(trans, gamma=0.99, flat_obs_keys=["proprio"], num_tasks=4)
    for data in (ds, load_offline_dataset(path, spec, CAL_QL, obs_map={"state": "proprio"}, storage="disk"), held):
        batch = data.sample(4)
        for part in ("observations", "next_observations"):
            assert batch[part]["task_id"].dtype == torch.int64, (type(data).__name__, part)
    assert spec.storage()["task_id"][1] == np.int64
    # a spec whose sizes are not the file's (written by hand, or another file's) loaded without a word
    from robopretrain.data.spec import ObsSpec

    with pytest.raises(DatasetError, match=r"toy.hdf5 does not fit the observation spec it is loaded for: "
                                          r"low_dim part 'state': .*toy.hdf5 has size 1, the observation spec .* 5"):
        load_offline_dataset(path, ObsSpec(low_dim=(("state", 5),), num_tasks=4), CAL_QL, obs_map={"state": "proprio"})
    with pytest.raises(DatasetError, match=r"toy.hdf5: task ids \[5\] do not fit a task one-hot of size 4 \(the slot "
                                          r"given for the data: data.task_id in stage 2"):  # (it named a target)
        load_offline_dataset(path, spec, CAL_QL, obs_map={"state": "proprio"}, task_id=5)
    negative = write_file(tmp_path / "negative.hdf5")  # one demo's id below the one-hot, the others inside it
    with h5py.File(negative, "r+") as f:
        f["data/demo_0"].attrs["task_id"] = -1
    with pytest.raises(DatasetError, match=r"negative.hdf5: data/demo_0: task_id -1: expected a slot of the task "
                                          r"one-hot, 0 or above"):  # read as no one-hot for a single-task file
        load_offline_dataset(negative, spec, CAL_QL, obs_map={"state": "proprio"})
    declared = write_file(tmp_path / "declared_small.hdf5", env_args={**make_env_args("Toy", "0", {}), "num_tasks": 1})
    with caplog.at_level(logging.WARNING):  # declared below its ids: a larger one-hot, said once
        assert default_num_tasks(read_info(declared)) == 2 and default_num_tasks(read_info(declared)) == 2
    assert caplog.text.count("env_args num_tasks=1, but its demos use task ids up to 1: the one-hot gets 2 slots") == 1
    with pytest.raises(DatasetError, match=r"toy.hdf5: actions have 4 dims; the agent has 7"):
        load_offline_dataset(path, spec, CAL_QL, obs_map={"state": "proprio"}, act_dim=7)
    with pytest.raises(ValueError, match=r"observation key 'robot0_eef_pos' \(low_dim part 'state'\) not found"):
        spec_of_data(path, ["state"], [], None, obs_map={"state": "robot0_eef_pos"})
    assert default_num_tasks(read_info(write_file(tmp_path / "declared.hdf5", env_args={
        **make_env_args("Toy", "0", {}), "num_tasks": 6}))) == 6
    import sim_envs

    ours = read_info(write_file(tmp_path / "ours.hdf5", env_args=make_env_args("sim_envs/Reach-v0", "0", {})))
    assert default_num_tasks(ours) == len(sim_envs.TASKS)  # slots for every sim_envs task (held-out targets)


# --------------------------------------------------------------------------- case 07: rewards never written


def test_zero_rewards_with_successful_episodes_are_refused_rebuilt_on_request_and_ignored_by_bc(tmp_path, caplog):
    path = write_file(tmp_path / "zero.hdf5", zero_rewards=True)
    spec = spec_of_data(path, ["proprio"], [], None)
    with pytest.raises(DatasetError, match=r"zero.hdf5: no positive reward in the selected data although 1 of 2 "
                                           r"episodes are marked successful in ep_meta.*rewards_from_success=true"):
        load_offline_dataset(path, spec, CAL_QL)
    with caplog.at_level(logging.WARNING):
        rebuilt = load_offline_dataset(path, spec, CAL_QL, rewards_from_success=True).arrays()
    assert "rewards rebuilt from ep_meta success (1 successful episodes)" in caplog.text
    fine = load_offline_dataset(write_file(tmp_path / "fine.hdf5"), spec, CAL_QL).arrays()
    for key in ("rewards", "dones", "mc_returns"):  # exactly the file whose recorder wrote the reward
        np.testing.assert_array_equal(rebuilt[key], fine[key])
    caplog.clear()  # on a file whose rewards are fine the option does nothing: said so (it was silent)
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(write_file(tmp_path / "fine2.hdf5"), spec, CAL_QL, rewards_from_success=True)
    assert "fine2.hdf5: data.rewards_from_success=true takes no effect: the file stores rewards that can tell " \
        "success from failure (some positive, or not all equal" in caplog.text
    bc = load_offline_dataset(path, spec, RewardSettings(), rewards_needed=False).arrays()
    np.testing.assert_array_equal(bc["rewards"], np.zeros(6))  # BC never looks at rewards
    ended = write_file(tmp_path / "failed_terminal.hdf5", zero_rewards=True)  # the failed episode ends done = 1
    with h5py.File(ended, "r+") as f:
        failed = [d for d in f["data"].values() if not json.loads(d.attrs["ep_meta"]).get("success")]
        failed[0]["dones"][-1] = 1
        meta = json.loads(failed[0].attrs["ep_meta"])  # and says nothing of success: not a success either
        failed[0].attrs["ep_meta"] = json.dumps({k: v for k, v in meta.items() if k != "success"})
    with caplog.at_level(logging.WARNING):
        kept = load_offline_dataset(ended, spec, CAL_QL, rewards_from_success=True).arrays()
    assert (kept["rewards"] > 0).sum() == 1 and kept["dones"].sum() == 2  # its own terminal kept, no reward for it


def test_a_file_without_rewards_datasets_trains_bc_and_is_refused_or_rebuilt_for_rl(tmp_path, caplog, capsys):
    """A recording that never wrote ``rewards`` (the contract's reward-free case): read as zeros for BC; a learner
    that needs rewards is told what to do; ``rewards_from_success`` rebuilds them from ep_meta, exactly as for the
    file whose recorder wrote them (it was 'data/demo_0/rewards: missing' for all three)."""
    path = write_file(tmp_path / "free.hdf5")
    with h5py.File(path, "r+") as f:
        for demo in f["data"].values():
            del demo["rewards"]
    assert read_info(path).unrewarded() == ["demo_0", "demo_1"]
    from robopretrain.data.inspect import main

    assert main([str(path)]) == 0
    assert "note: 2 of 2 demos have no rewards dataset (read as zeros)" in capsys.readouterr().out
    spec = spec_of_data(path, ["proprio"], [], None)
    bc = load_offline_dataset(path, spec, RewardSettings(), rewards_needed=False).arrays()
    np.testing.assert_array_equal(bc["rewards"], np.zeros(6))
    with pytest.raises(DatasetError, match=r"free.hdf5: 2 of 2 selected demos have no rewards dataset \(demo_0, "
                                           r"demo_1\); this learner needs rewards: set data.rewards_from_success"):
        load_offline_dataset(path, spec, CAL_QL)
    with caplog.at_level(logging.WARNING):
        rebuilt = load_offline_dataset(path, spec, CAL_QL, rewards_from_success=True).arrays()
    assert "2 of 2 episodes have no rewards; every episode's rewards rebuilt from ep_meta success (1 successful " \
           "episodes; 0 stored reward sequences replaced)" in caplog.text
    fine = load_offline_dataset(write_file(tmp_path / "fine.hdf5"), spec, CAL_QL).arrays()
    for key in ("rewards", "dones", "mc_returns"):
        np.testing.assert_array_equal(rebuilt[key], fine[key])
    with h5py.File(path, "r+") as f:  # an episode without a success flag: nothing to rebuild its reward from
        f["data/demo_1"].attrs["ep_meta"] = json.dumps({})
    with pytest.raises(DatasetError, match=r"needs every selected episode's ep_meta 'success' flag; 1 of 2 have none"):
        load_offline_dataset(path, spec, CAL_QL, rewards_from_success=True)
    # so the first refusal does not offer rewards_from_success where it would be refused next (OGBench files)
    with pytest.raises(DatasetError, match=r"this learner needs rewards: \(data.rewards_from_success needs ep_meta "
                                           r"success flags: 1 of 2 have none\) write a reward learned"):
        load_offline_dataset(path, spec, CAL_QL)


def test_dense_rewards_warn_the_learners_that_transform_them_not_dt(tmp_path, caplog):
    """The dense-reward warning's advice (algo.sparse_reward=false) is for learners with the sparse transform; DT
    sums the rewards as given and has no such setting, so it is not warned."""
    import torch
    from omegaconf import OmegaConf

    from robopretrain.build import load_data

    path = write_file(tmp_path / "dense.hdf5")
    with h5py.File(path, "r+") as f:
        for demo in f["data"].values():
            demo["rewards"][...] = np.array([0.3, -0.2, 0.5], np.float32)
    spec = spec_of_data(path, ["proprio"], [], None)
    for algo, warned in (("iql", True), ("dt", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            load_data(path, spec, OmegaConf.create({}), CAL_QL, algo=algo, act_dim=None, seed=0,
                      device=torch.device("cpu"))
        assert ("rewards are not sparse {0, 1}" in caplog.text) is warned, algo


def test_inspect_says_the_rewards_disagree_with_ep_meta(tmp_path, capsys):
    from robopretrain.data.inspect import main

    assert main([str(write_file(tmp_path / "zero.hdf5", zero_rewards=True))]) == 0
    out = capsys.readouterr().out
    assert "warning: the rewards disagree with ep_meta: 1 of 1 episodes marked successful have no positive reward" \
        in out
    assert main([str(write_file(tmp_path / "fine.hdf5"))]) == 0
    assert "disagree" not in capsys.readouterr().out
    shifted = write_file(tmp_path / "ogbench_style.hdf5")  # rewards -1 per step, 0 at the goal: a signal
    with h5py.File(shifted, "r+") as f:
        for demo in f["data"].values():
            demo["rewards"][...] = demo["rewards"][()] - 1.0
    assert main([str(shifted)]) == 0
    assert "disagree" not in capsys.readouterr().out


def test_episodes_whose_rewards_and_success_flag_disagree_are_named_by_training_and_inspect(tmp_path, caplog,
                                                                                           capsys):
    """Some (not all) successes without a positive reward, and a failure whose sparse reward ends on 1: stage 2
    trains on the rewards as stored but names those demos; inspect says the same (not that stage 2 refuses it)."""
    from robopretrain.data.dataset import warn_success_disagreement
    from robopretrain.data.inspect import main

    path = write_file(tmp_path / "mixed.hdf5")
    with h5py.File(path, "r+") as f:  # demo_0 stays a rewarded success; demo_1 a failure that ends on reward 1
        f["data/demo_1/rewards"][-1] = 1.0
    spec = spec_of_data(path, ["proprio"], [], None)
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(path, spec, CAL_QL)
    assert ("mixed.hdf5: 1 of 2 episodes (data/demo_1) are marked failed in ep_meta but end with reward 1"
            in caplog.text)
    assert "marked successful in ep_meta but have no positive reward" not in caplog.text
    assert main([str(path)]) == 0
    assert "1 of 1 episodes marked failed end with reward 1" in capsys.readouterr().out
    ids, meta, names = np.array([0, 0, 1, 1, 2, 2]), [{"success": True}] * 2 + [{}], ["d0", "d1", "d2"]
    assert warn_success_disagreement("x", np.array([0, 1, 0, 0, 0, 1.0]), ids, meta, names) == (1, 0)
    assert warn_success_disagreement("x", np.array([0, 1, 0, 1, 0, 0.0]), ids, meta, names) == (0, 0)
    assert warn_success_disagreement("x", np.array([0, 1, 0, 1, 0, 0.0]), ids, meta[:2], names) == (0, 0)  # misfit
    not_sparse = [{"success": False}, {"success": True}, {}]  # rewards 2 at the end: not the sparse contract
    assert warn_success_disagreement("x", np.array([0, 2, 0, 2, 0, 0.0]), ids, not_sparse, names) == (0, 0)
    assert warn_success_disagreement("x", np.array([0, 1, 0, 1, 0, 0.0]), ids, not_sparse, names) == (0, 1)
    assert warn_success_disagreement("x", np.array([0, 1, 0, 1, 0, 0.0]), ids, not_sparse[:1] * 3, names) == (0, 2)
    with h5py.File(path, "r+") as f:  # a success without a reward beside a rewarded one: warned, not refused
        f["data/demo_1/rewards"][-1] = 0.0
        f["data/demo_1"].attrs["ep_meta"] = json.dumps({"success": True})
        f["data/demo_0/rewards"][-1] = 0.0
        f["data/demo_0/rewards"][0] = 1.0
        f["data/demo_0"].attrs["ep_meta"] = json.dumps({"success": True})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(path, spec, CAL_QL)
    assert "1 of 2 episodes (data/demo_1) are marked successful in ep_meta but have no positive reward" in caplog.text
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 episodes marked successful have no positive reward" in out and "stage 2 warns" in out


@pytest.mark.parametrize("algo, extra", [("cql", {"rewards_from_success": True}), ("bc", {})])
def test_stage2_trains_on_zero_rewards_when_told_or_when_it_needs_no_reward(tmp_path, algo, extra):
    """(The refusal without the setting is a one-line CLI error: tests/test_bad_input.py.)"""
    from robopretrain.checkpoint import load_latest
    from robopretrain.train import run

    data = fake.write_robosuite_demos(tmp_path / "zero.hdf5", 3, zero_rewards=True)
    ckpt = run(stage2_config(data, tmp_path / "run", algo=algo, obs={"low_dim": [fake.EEF, fake.GRIPPER]},
                             data_cfg=extra))
    assert load_latest(tmp_path / "run" / "checkpoints").path == ckpt
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["algo"] == algo and meta["num_transitions"] > 0


def test_reward_settings_of_an_algorithm_config_and_of_bc():
    assert RewardSettings.of_algo({}) == RewardSettings(discount=0.99, scale=1.0, bias=0.0, sparse=True)  # BC
    cfg = {"discount": 0.9, "reward_scale": 10.0, "reward_bias": -5.0, "sparse_reward": False}
    assert RewardSettings.of_algo(cfg) == RewardSettings(discount=0.9, scale=10.0, bias=-5.0, sparse=False)


def test_constant_positive_rewards_are_a_reward_signal_not_a_missing_one(tmp_path):
    """The zero-reward check fires only when no reward is positive: a file whose every step is rewarded 1 (a
    dense 'alive' reward) with successful episodes loads as it is."""
    path = tmp_path / "ones.hdf5"
    with RobomimicWriter(path, make_env_args("Toy", "0", {}), valid_fraction=0.0) as w:
        for i in range(2):
            x = np.arange(3 * i, 3 * i + 3, dtype=np.float32)[:, None]
            w.add_episode(task="a", task_id=0, obs={"proprio": x}, next_obs={"proprio": x + 1},
                          actions=np.zeros((3, 4), np.float32), rewards=np.ones(3, np.float32),
                          dones=np.array([0, 0, 1], np.uint8), ep_meta={"success": True})
    spec = spec_of_data(path, ["proprio"], [], None)
    arrays = load_offline_dataset(path, spec, CAL_QL).arrays()
    np.testing.assert_allclose(arrays["rewards"], np.full(6, 5.0))


def test_dense_rewards_under_sparse_settings_are_named(tmp_path, caplog):
    """Pendulum-like rewards in [-16, 0] under Cal-QL's sparse x10 - 5: one warning naming the file, the range and
    the settings to change; sparse files, sparse_reward=false and BC stay quiet."""
    path = tmp_path / "dense.hdf5"
    with RobomimicWriter(path, make_env_args("Toy", "0", {}), valid_fraction=0.0) as w:
        x = np.arange(4, dtype=np.float32)[:, None]
        w.add_episode(task="a", task_id=0, obs={"proprio": x}, next_obs={"proprio": x + 1},
                      actions=np.zeros((4, 4), np.float32), rewards=np.array([-16.0, -9.5, -2.0, 0.0], np.float32),
                      dones=np.zeros(4, np.uint8), ep_meta={})
    spec = spec_of_data(path, ["proprio"], [], None)
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(path, spec, CAL_QL)
    assert "dense.hdf5: rewards are not sparse {0, 1} (4 distinct values in [-16, 0])" in caplog.text
    assert "algo.sparse_reward=false" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_offline_dataset(path, spec, RewardSettings(0.99, 1.0, 0.0, sparse=False))
        load_offline_dataset(path, spec, CAL_QL, rewards_needed=False)
        load_offline_dataset(write_file(tmp_path / "toy.hdf5"), spec_of_data(tmp_path / "toy.hdf5", ["proprio"], [],
                                                                             None), CAL_QL)
    assert "not sparse" not in caplog.text
    from robopretrain.data.dataset import warn_dense_rewards

    assert warn_dense_rewards("x", np.array([-16.0, 0.0]), CAL_QL) is True
    assert warn_dense_rewards("x", np.array([0.0, 1.0]), CAL_QL) is False


def test_short_demos_are_left_out_only_when_told_and_a_grey_camera_is_rgb_in_next_obs_too(tmp_path, caplog):
    """selected_demos with skip_short drops exactly the demos of fewer than 2 steps (refused when none is left);
    a grey camera reads as (H, W, 3) in obs and next_obs; the default seed is seed 0."""
    from robopretrain.data.dataset import selected_demos

    path = tmp_path / "grey.hdf5"
    rng = np.random.default_rng(0)
    with RobomimicWriter(path, make_env_args("Toy", "0", {}), valid_fraction=0.0) as w:
        for n in (3, 1, 4):
            grey = rng.integers(0, 256, (n + 1, 8, 8, 1), dtype=np.uint8)
            w.add_episode(task="a", task_id=0, obs={"side_image": grey[:-1]}, next_obs={"side_image": grey[1:]},
                          actions=np.zeros((n, 4), np.float32), rewards=np.eye(n, dtype=np.float32)[-1],
                          dones=np.eye(n, dtype=np.uint8)[-1], ep_meta={"success": True})
    info = read_info(path)
    assert selected_demos(info, skip_short=True, quiet=True) == ["demo_0", "demo_2"]
    assert selected_demos(info) == ["demo_0", "demo_1", "demo_2"]
    assert selected_demos(info, max_demos=1) == ["demo_0"]
    assert selected_demos(info, max_demos=2.0) == ["demo_0", "demo_1"]
    for bad in (0, -1, 1.5, True):  # a negative slice dropped demos from the end; True was 1
        with pytest.raises(ValueError, match=rf"max_demos={bad!r}; expected an integer >= 1"):
            selected_demos(info, max_demos=bad)
    with pytest.raises(DatasetError, match="every selected demo has fewer than 2 steps"):
        selected_demos(read_info(_only_short(path, tmp_path / "short.hdf5")), skip_short=True, quiet=True)
    spec = spec_of_data(path, [], ["side_image"], None)
    data = load_offline_dataset(path, spec, CAL_QL, skip_short=True)
    arrays = data.arrays()
    assert arrays["observations"]["side_image"].shape[1:] == (8, 8, 3)
    assert arrays["next_observations"]["side_image"].shape[1:] == (8, 8, 3)
    again = load_offline_dataset(path, spec, CAL_QL, skip_short=True, seed=0)
    torch.testing.assert_close(data.sample(4), again.sample(4))
    with pytest.raises(DatasetError, match="demo_1"):  # left out only when told: by default the file is refused
        load_offline_dataset(path, spec, CAL_QL)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # said once, by the loader; quiet callers (a task-slot check) say nothing
        selected_demos(info, skip_short=True, quiet=True)
        assert caplog.text == ""
        selected_demos(info, skip_short=True)
    assert "1 demo(s) of fewer than 2 steps left out (data.skip_short_demos=true): demo_1" in caplog.text


def _only_short(src: Path, dst: Path) -> Path:
    """A copy of ``src`` holding only its one-step demo (demo_1)."""
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for name in ("demo_0", "demo_2"):
            del f[f"data/{name}"]
        f["data"].attrs["total"] = 1
        for mask in list(f.get("mask", {})):
            del f[f"mask/{mask}"]
    return dst


# --------------------------------------------------------------------------- transitions held in memory


def test_from_transitions_builds_what_the_file_loader_builds_and_warns_on_unrewarded_successes(tmp_path):
    """``OfflineDataset.from_transitions`` (case 07's call: transitions already in memory) gives the arrays
    ``load_offline_dataset`` gives for the same demos (rewards x10 - 5, returns-to-go, next actions, task ids), checks
    the parts and task ids it is given, and warns when the rewards carry no success that ep_meta records."""
    from robopretrain.data.hdf5 import load_transitions
    from robopretrain.data.replay import OfflineDataset

    path = write_file(tmp_path / "toy.hdf5")
    want = load_offline_dataset(path, spec_of_data(path, ["proprio"], [], None), CAL_QL).arrays()
    trans = load_transitions(path, ["proprio"])
    got = OfflineDataset.from_transitions(trans, gamma=0.5, reward_scale=10.0, reward_bias=-5.0, sparse_reward=True,
                                          flat_obs_keys=["proprio"], num_tasks=2).arrays()
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, dict):
            assert set(got[key]) == set(value) == {"proprio", "task_id"}
            for part in value:
                np.testing.assert_array_equal(got[key][part], value[part])
                assert got[key][part].dtype == value[part].dtype
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)
    np.testing.assert_allclose(got["mc_returns"], [-6.25, -2.5, 5, -10, -10, -10])  # by hand, as above
    with pytest.raises(ValueError, match=r"task ids \[0, 1\] do not fit a task one-hot of size num_tasks=1"):
        OfflineDataset.from_transitions(trans, gamma=0.5, num_tasks=1)
    with pytest.raises(KeyError, match=r"no observation part\(s\) \['object'\]"):
        OfflineDataset.from_transitions(trans, gamma=0.5, flat_obs_keys=["object"])
    zero = load_transitions(write_file(tmp_path / "zero.hdf5", zero_rewards=True), ["proprio"])
    with pytest.warns(UserWarning, match=r"zero.hdf5: no positive reward in the transitions although 1 of 2 "
                                         r"episodes are marked successful"):
        ds = OfflineDataset.from_transitions(zero, gamma=0.5, reward_scale=10.0, reward_bias=-5.0)
    np.testing.assert_allclose(ds.arrays()["mc_returns"], np.full(6, -10.0))  # the all-failure value everywhere
    assert set(ds.arrays()["observations"]) == {"proprio"}  # every part, no task id without num_tasks


def test_a_dense_reward_target_refuses_the_success_filter_of_the_actor_bc_term():
    """``actor_bc_filter=success`` reads success from sparse returns-to-go; a target declaring a dense reward (its
    returns carry no never-succeeds value) is refused with the fix, and accepted without the filter."""
    from robopretrain import build
    from robopretrain.envs.target import Target

    dense = Target(name="Dense", env_id="sim_envs:TabletopEnv", reward="dense")
    with pytest.raises(ValueError, match="actor_bc_filter=none"):
        build.reward_settings({"name": "calql", "actor_bc_filter": "success", "actor_bc_weight": 4.0}, dense)
    assert build.reward_settings({"name": "calql", "actor_bc_filter": "none"}, dense).sparse is False
    assert build.reward_settings({"name": "calql", "actor_bc_filter": "success"}).sparse is True


def test_the_action_range_check_names_the_offending_demo_and_allows_rounding(tmp_path):
    """Actions at exactly 1, one float32 step above it (rescaling's rounding) and 8e-7 above it (within the stated
    1e-6) load; 1.5 in the second demo is refused naming that demo, not the first demo's 1.0."""
    path = write_file(tmp_path / "edge.hdf5")
    spec = spec_of_data(path, ["proprio"], [], None)
    with h5py.File(path, "r+") as f:
        f["data/demo_0/actions"][0] = [1.0, -1.0, np.nextafter(np.float32(1), np.float32(2)), -1.0 - 8e-7]
    assert np.abs(load_offline_dataset(path, spec, CAL_QL).arrays()["actions"]).max() > 1.0
    with h5py.File(path, "r+") as f:
        f["data/demo_1/actions"][1] = [1.5, 0.0, 0.0, 0.0]
    with pytest.raises(DatasetError, match=r"edge.hdf5: data/demo_1/actions: values outside \[-1, 1\].*"
                                           r"data.actions=auto"):
        load_offline_dataset(path, spec, CAL_QL)
    # a file that records its rescaling but holds actions in the robot's units: the record is named, not the
    # data.actions=auto advice (auto takes the record at its word)
    with h5py.File(path, "r+") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        env_args["action_normalization"] = {"low": [-2.0] * 4, "high": [2.0] * 4}
        f["data"].attrs["env_args"] = json.dumps(env_args)
    with pytest.raises(DatasetError, match=r"values outside \[-1, 1\].*records env_args\['action_normalization'\] "
                                           r"\(low=\[-2.0, -2.0, -2.0, -2.0\].*or remove the record") as err:
        load_offline_dataset(path, spec, CAL_QL)
    assert "data.actions=auto (the stage scripts' default)" not in str(err.value)


def test_sparse_demos_under_a_dense_target_are_named(caplog):
    """Stage 3 with a dense-reward target mixes the env's own reward with the demos' stored rewards: 0/1 success
    rewards there (stored as scale * r + bias) are named; dense rewards, or sparse settings, are not."""
    dense = RewardSettings(discount=0.99, scale=10.0, bias=-5.0, sparse=False)
    with caplog.at_level(logging.WARNING):
        assert warn_sparse_data_for_dense_target("d.hdf5", np.array([-5.0, -5.0, 5.0]), dense, "reach-v3")
    assert "target reach-v3 declares a dense reward" in caplog.text
    assert not warn_sparse_data_for_dense_target("d.hdf5", np.array([-5.0, 0.3, 5.0]), dense, "t")  # dense data
    assert not warn_sparse_data_for_dense_target("d.hdf5", np.array([-5.0, -5.0]), dense, "t")  # no success at all
    stored = RewardSettings(discount=0.99, scale=0.1, bias=0.05, sparse=False)  # float32 storage: 1.00000006
    assert warn_sparse_data_for_dense_target("d.hdf5", np.array([0.05, 0.15], np.float32), stored, "t")
    sparse = RewardSettings(discount=0.99, scale=10.0, bias=-5.0, sparse=True)
    assert not warn_sparse_data_for_dense_target("d.hdf5", np.array([-5.0, 5.0]), sparse, "t")
