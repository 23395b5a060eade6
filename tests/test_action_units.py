"""Action units: an agent trained on a converted file whose actions were rescaled to [-1, 1] acts in the env's units
(the env maps them back), other files are re-expressed in the agent's units, and the units travel in checkpoints.

The end-to-end test is a robot whose actions live in [0, 8] (``_fake_envs.UnitsReachEnv``): BC on its converted
expert demos reaches the expert's success only when every env it acts in maps its actions back."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import _fake_envs as fake
from _stages import stage2_config, stage3_config
from finetune.train import run as finetune
from robopretrain.agent import Agent
from robopretrain.checkpoint import CheckpointError, check_agent_fits, load_agent, load_latest
from robopretrain.data.convert import convert
from robopretrain.data.dataset import RewardSettings, load_offline_dataset
from robopretrain.data.hdf5 import DatasetError
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.action_units import ActionNormalization, describe, reexpress
from robopretrain.envs.target import Target, make_env
from robopretrain.evaluation import DEMO_UNITS, acting_units, agent_env, agent_env_factory, agent_target
from robopretrain.metrics import read_jsonl
from robopretrain.run_fingerprint import ResumeMismatchError
from robopretrain.train import run as stage2

UNITS = ActionNormalization((0.0, -2.0, 1.0), (8.0, 2.0, 1.0))  # the last dimension constant
TARGET = {"name": "units_reach", "env_id": "_fake_envs:UnitsReachEnv", "task_id": 0, "max_episode_steps": 40,
          "obs_map": {"observations": "observation"}}


def test_the_two_maps_by_hand() -> None:
    np.testing.assert_allclose(UNITS.to_env(np.array([-1.0, 0.0, 0.3])), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(UNITS.to_env(np.array([[1.0, 0.5, -1.0]])), [[8.0, 1.0, 1.0]])
    np.testing.assert_allclose(UNITS.to_agent(np.array([2.0, 1.0, 1.0])), [-0.5, 0.5, 0.0])  # constant dim -> 0
    a = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    a[:, 2] = 0.0
    np.testing.assert_allclose(UNITS.to_agent(UNITS.to_env(a)), a, atol=1e-6)
    for low, high in (((0.0,), (1.0, 2.0)), ((1.0,), (0.0,)), ((), ()), ((np.nan,), (1.0,))):
        with pytest.raises(ValueError):
            ActionNormalization(low, high)
    assert ActionNormalization.from_mapping(UNITS.to_dict()) == UNITS and ActionNormalization.from_mapping(None) is None
    with pytest.raises(ValueError, match=r"action_normalization: low and high must be lists of numbers.*'b'"):
        ActionNormalization.from_mapping({"low": [0, 0], "high": [1, "b"]})  # numpy's words named neither
    # same(): to float32 precision, relative (1e-6) and absolute (1e-6)
    big = ActionNormalization((1000.0,), (2000.0,))
    assert big.same(ActionNormalization((1000.0008,), (2000.0,)))  # 8e-4 within 1e-6 + 1e-6 * 1000
    assert not big.same(ActionNormalization((1000.0015,), (2000.0,)))
    assert ActionNormalization((0.0,), (1.0,)).same(ActionNormalization((8e-7,), (1.0,)))
    assert not ActionNormalization((0.0,), (1.0,)).same(ActionNormalization((3e-6,), (1.0,)))
    assert ActionNormalization((-1.0,), (0.0,)).same(ActionNormalization((-1.0,), (8e-7,)))  # the high side too
    with pytest.raises(ValueError, match="must be a mapping with low and high lists"):
        ActionNormalization.from_mapping({"low": [0.0]})  # a KeyError with one of them missing
    narrow = ActionNormalization((0.0, -0.1), (0.5, 0.1))  # spans below 1 are divided by, like any other
    np.testing.assert_allclose(narrow.to_agent(np.array([0.25, 0.05])), [0.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(narrow.to_env(np.array([1.0, -1.0])), [0.5, -0.1], atol=1e-6)


def test_auto_bounds_rescale_only_dimensions_outside_and_name_constant_ones(caplog) -> None:
    """auto_bounds by hand at the edges: [-0.9, 0.95] and exactly [-1, 1] are inside (kept), [-1, 1.2] and a
    constant 5 are outside; all inside is None. The constant dimension is warned about, the others are not."""
    from robopretrain.envs.action_units import auto_bounds, warn_constant_dimensions

    units = auto_bounds(np.array([-0.9, -1.0, -1.0, 5.0]), np.array([0.95, 1.0, 1.2, 5.0]))
    assert units.low == (-1.0, -1.0, -1.0, 5.0) and units.high == (1.0, 1.0, 1.2, 5.0)
    assert auto_bounds(np.array([-0.9, -1.0]), np.array([0.95, 1.0])) is None
    assert auto_bounds(np.array([-1.0]), np.array([1.0 + 5e-7])) is None  # a converter's rounding is inside
    with caplog.at_level(logging.WARNING):
        assert warn_constant_dimensions(units, "arm.hdf5") and "dimension(s) [3]" in caplog.text
        caplog.clear()
        assert not warn_constant_dimensions(ActionNormalization((0.0,), (8.0,)), "arm.hdf5")
    assert caplog.text == ""


def test_whole_number_actions_outside_the_box_are_said_to_look_like_indices(tmp_path, caplog) -> None:
    """Discrete(5) indices stored as (N, 1) trained as one continuous dimension with only the rescaling warning."""
    from robopretrain.data.dataset import data_action_units
    from robopretrain.data.hdf5 import read_info

    def write(name: str, actions: np.ndarray) -> Path:
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            data = f.create_group("data")
            data.attrs["total"] = len(actions)
            data.attrs["env_args"] = json.dumps({"env_name": "x", "env_version": "0", "type": 1, "env_kwargs": {}})
            demo = data.create_group("demo_0")
            demo.attrs["num_samples"] = len(actions)
            for group in ("obs", "next_obs"):
                demo[f"{group}/x"] = np.zeros((len(actions), 2), np.float32)
            demo["actions"] = actions.astype(np.float32)
            demo["rewards"] = demo["dones"] = np.zeros(len(actions), np.float32)
        return path

    indices = write("d.hdf5", np.array([[0], [4], [2], [1], [3], [4]]))
    with caplog.at_level(logging.WARNING):
        data_action_units(indices, read_info(indices))
        assert "every action is a whole number (5 distinct values: 0, 1, 2, 3, 4): the indices of a discrete" \
            in caplog.text
        caplog.clear()
        for name, actions in (("m.hdf5", np.array([[0.0], [4.5], [2.0]])),  # robot units: not indices
                              ("g.hdf5", np.array([[-1.0, 3.0], [1.0, 2.5], [1.0, 0.0]]))):
            data_action_units(write(name, actions), read_info(tmp_path / name))
        assert "whole number" not in caplog.text


def test_the_index_rule_gathers_at_most_32_whole_values_and_says_whether_it_warned(caplog) -> None:
    """The rule the converters and stage 2 share (add_whole_values, warn_index_actions): whole finite values,
    at most INDEX_VALUES_MOST = 32 distinct, some outside [-1, 1]."""
    from robopretrain.envs.action_units import INDEX_VALUES_MOST, add_whole_values, warn_index_actions

    assert INDEX_VALUES_MOST == 32
    assert add_whole_values(set(), np.arange(32.0)) == set(range(32))
    assert add_whole_values(add_whole_values(set(), np.arange(20)), np.arange(12, 32)) == set(range(32))
    assert add_whole_values(set(), np.arange(33)) is None  # 33 distinct: a continuous action
    for not_whole in (np.array([0.0, 2.5]), np.array([1.0, np.nan]), np.array([2.0, np.inf])):
        assert add_whole_values(set(), not_whole) is None
    assert add_whole_values(None, np.arange(3)) is None  # once not, never again
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.action_units"):
        assert warn_index_actions("w", {0.0, 1.0, 2.0}) is True and "w: every action is a whole number" in caplog.text
        caplog.clear()
        assert warn_index_actions("w", {-1.0, 0.0, 1.0}) is False and warn_index_actions("w", None) is False
        assert warn_index_actions("w", set()) is False and not caplog.text


def test_reexpress_goes_through_env_units_and_clips_what_the_agent_cannot_hold(caplog) -> None:
    other = ActionNormalization((2.0, -1.0, 1.0), (6.0, 1.0, 1.0))
    file_actions = np.array([[-1.0, 1.0, 0.0], [1.0, -1.0, 0.0]], np.float32)  # env: (2, 1, 1), (6, -1, 1)
    np.testing.assert_allclose(reexpress(file_actions, other, UNITS, "f"), [[-0.5, 0.5, 0.0], [0.5, -0.5, 0.0]])
    env_units = np.array([[4.0, 0.0, 1.0]], np.float32)  # a file in env units (no normalization) into the agent's
    np.testing.assert_allclose(reexpress(env_units, None, UNITS, "f"), [[0.0, 0.0, 0.0]])
    np.testing.assert_allclose(reexpress(file_actions, UNITS, None, "f"), np.clip(UNITS.to_env(file_actions), -1, 1))
    same = reexpress(file_actions, UNITS, ActionNormalization(UNITS.low, UNITS.high), "f")
    np.testing.assert_array_equal(same, file_actions)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # 0.8 in the agent's units is inside its [-1, 1]: no clipping warning
        np.testing.assert_allclose(reexpress(np.array([[7.2, 1.6, 1.0]], np.float32), None, UNITS, "f"),
                                   [[0.8, 0.8, 0.0]], atol=1e-6)
    assert "outside" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # 8e-6 past the agent's 1 (rounding): within the stated 1e-5, no warning
        reexpress(np.array([[8.0 + 4 * 8e-6, 0.0, 1.0]], np.float32), None, UNITS, "f")
    assert "outside" not in caplog.text
    with caplog.at_level(logging.WARNING):  # a constant dimension whose values differ by 8e-6 (rounding): one value
        reexpress(np.array([[4.0, 0.0, 0.5], [4.0, 0.0, 0.5 + 8e-6]], np.float32), None, UNITS, "f")
    assert "hold other values here (2: is 0.5)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):  # whose units, in the messages; quiet: no info line (every episode's call)
        reexpress(np.array([[4.0, 0.0, 1.0]], np.float32), None, UNITS, "f", into="the reward model's")
        assert "f: actions re-expressed from env units (no normalization) to the reward model's [-1, 1]" in caplog.text
        caplog.clear()
        reexpress(np.array([[4.0, 0.0, 1.0]], np.float32), None, UNITS, "f", quiet=True)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):  # on the bounds (a saturated expert's actions) is inside: no warning
        np.testing.assert_allclose(reexpress(np.array([[8.0, -2.0, 1.0], [0.0, 2.0, 1.0]], np.float32), None, UNITS,
                                             "f"), [[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])
    assert "outside" not in caplog.text
    with caplog.at_level(logging.WARNING):
        out = reexpress(np.array([[10.0, 0.0, 1.0]], np.float32), None, UNITS, "wide.hdf5")
    assert out[0, 0] == 1.0 and "wide.hdf5" in caplog.text and "33.33%" in caplog.text
    with pytest.raises(ValueError, match="3 dims, the actions 2"):
        reexpress(np.zeros((1, 2), np.float32), None, UNITS, "f")
    for shape in ((3,), (2, 1, 3)):  # numpy broadcast (3,), or named neither the file nor the sizes
        with pytest.raises(ValueError, match=rf"f: actions of shape \({shape[0]},.*expected \(N, 3\)"):
            reexpress(np.zeros(shape, np.float32), None, UNITS, "f")
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the agent's constant last dimension (1) cannot hold this file's 0.5
        out = reexpress(np.array([[4.0, 0.0, 1.0], [4.0, 0.0, 0.5]], np.float32), None, UNITS, "gripper.hdf5")
    assert out[:, 2].tolist() == [0.0, 0.0] and "dimension(s) [2]" in caplog.text and "gripper.hdf5" in caplog.text
    assert "hold other values here (2: varies)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # another constant (0, not 1): said as such, not "varies"
        reexpress(np.array([[4.0, 0.0, 0.0], [4.0, 0.5, 0.0]], np.float32), None, UNITS, "wide.hdf5")
    assert "the env always gets [1.0] there) and hold other values here (2: is 0)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        reexpress(np.array([[4.0, 0.0, 1.0]], np.float32), None, UNITS, "f")
    assert "dimension(s)" not in caplog.text


def test_the_env_takes_actions_in_the_agents_units(caplog, monkeypatch) -> None:
    """make_env maps [-1, 1] to the target's action_normalization, for any family; a wrong size is refused."""
    import robopretrain.envs.target as target_module

    monkeypatch.setattr(target_module, "_NARROW_WARNED", set())  # warnings given earlier in this process
    fake.UnitsReachEnv.received.clear()
    units = {"low": [0.0, 0.0], "high": [8.0, 8.0]}
    env = make_env(Target(**TARGET, action_normalization=units))
    env.reset(seed=3)
    env.step(np.array([-1.0, 0.5], np.float32))
    env.step(np.array([2.0, 0.0], np.float32))  # outside [-1, 1]: clipped first
    assert env.action_space.low.tolist() == [-1.0, -1.0] and env.action_space.high.tolist() == [1.0, 1.0]
    np.testing.assert_allclose([a for _, a in fake.UnitsReachEnv.received], [[0.0, 6.0], [8.0, 4.0]])
    with pytest.raises(ValueError, match=r"the env takes actions of shape \(2,\), the agent gives \(3,\)"):
        make_env(Target(**TARGET, action_normalization=UNITS.to_dict()))
    with pytest.raises(ValueError, match="high < low"):
        Target(**TARGET, action_normalization={"low": [1.0, 1.0], "high": [0.0, 2.0]})
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # said once per process (stage 3 and evaluate build an env per worker)
            sim = make_env(Target("Reach", action_normalization={"low": [-2.0] * 4, "high": [2.0] * 4}))
    assert sim.action_space.high.tolist() == [1.0] * 4  # a sim_envs target is wrapped too
    assert caplog.text.count("beyond the env's own action range in dimension(s) [0, 1, 2, 3]") == 1  # vs [-1, 1]
    assert "taken as already normalised (data.actions=auto)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_env(Target(**TARGET, action_normalization=units))
    assert "beyond" not in caplog.text and "reach only" not in caplog.text  # the env's whole [0, 8]
    # units wider than the env's Box (data in [0, 1] taken as already normalised: low -1): the env was given actions
    # outside its range, which it need not clip, while the warning said it clips
    fake.UnitsReachEnv.received.clear()
    with caplog.at_level(logging.WARNING):
        wide = make_env(Target(**TARGET, action_normalization={"low": [-1.0, 0.0], "high": [8.0, 10.0]}))
    assert "its actions are clipped to the env's range there" in caplog.text and "the env clips" not in caplog.text
    wide.reset(seed=0)
    wide.step(np.array([-1.0, 1.0], np.float32))  # -1 -> -1.0, 1 -> 10.0 in env units: clipped to [0, 8]
    wide.step(np.array([0.0, 0.0], np.float32))   # 3.5, 5.0: inside, unchanged
    np.testing.assert_allclose([a for _, a in fake.UnitsReachEnv.received], [[0.0, 8.0], [3.5, 5.0]])
    # beyond the env's range on one side and short of it on the other (a scripted policy's raw, env-clipped outputs,
    # rescaled by their min / max): both said, with what to do about raw outputs
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_env(Target(**TARGET, action_normalization={"low": [-2.0, 0.0], "high": [5.0, 8.0]})).close()
    assert "beyond the env's own action range in dimension(s) [0]" in caplog.text
    assert "clip them to the env's range in the file" in caplog.text
    assert "reach only low [0.0], high [5.0] of the env's [0.0], [8.0] in dimension(s) [0]" in caplog.text
    caplog.clear()  # wholly outside the env's range in one dimension: "beyond" says it, no inverted "reach only"
    with caplog.at_level(logging.WARNING):
        make_env(Target(**TARGET, action_normalization={"low": [9.0, 0.0], "high": [12.0, 8.0]})).close()
    assert "beyond the env's own action range in dimension(s) [0]" in caplog.text and "reach only" not in caplog.text
    # units narrower than the env's range (the demos' min / max in one dimension): the agent could never leave
    # them, silently; said once per process
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            make_env(Target(**TARGET, action_normalization={"low": [2.0, 0.0], "high": [6.0, 8.0]})).close()
    assert caplog.text.count("the agent's actions reach only low [2.0], high [6.0] of the env's [0.0], [8.0] in "
                             "dimension(s) [0]") == 1
    caplog.clear()  # within 1% of the env's span (8 * 0.01 = 0.08) is the whole range; 2% short at either end is not
    with caplog.at_level(logging.WARNING):
        make_env(Target(**TARGET, action_normalization={"low": [0.06, 0.0], "high": [7.94, 8.0]})).close()
    assert "reach only" not in caplog.text
    for low, high in (([0.16, 0.0], [8.0, 8.0]), ([0.0, 0.0], [7.84, 8.0])):
        with caplog.at_level(logging.WARNING):
            make_env(Target(**TARGET, action_normalization={"low": low, "high": high})).close()
    assert "reach only low [0.16], high [8.0]" in caplog.text and "reach only low [0.0], high [7.84]" in caplog.text
    # what to do names where the units come from (it said "set the target's action_normalization before stage 2":
    # a target's units that contradict the agent's are refused)
    assert "fixed by its stage-2 data" in caplog.text and "target's action_normalization" not in caplog.text
    # no units (the data recorded none, its actions already inside [-1, 1]): the agent's actions reach the env as
    # they are, and what lies outside the env's Box (here below its low 0) was given to the env, which need not clip
    fake.UnitsReachEnv.received.clear()
    plain = make_env(Target(**TARGET))
    plain.reset(seed=0)
    plain.step(np.array([-0.5, 0.5], np.float32))
    np.testing.assert_allclose([a for _, a in fake.UnitsReachEnv.received], [[0.0, 0.5]])
    assert plain.action_space.low.tolist() == [0.0, 0.0]  # the env's own Box, kept
    assert not isinstance(make_env(Target("Reach")), target_module.ClipToEnvBox)  # [-1, 1]: nothing to clip


def _agent(units: ActionNormalization | None) -> Agent:
    agent = Agent(ObsSpec(low_dim=(("observations", 4),)), 2, "bc", {"actor_hidden": [8]})
    agent.action_normalization = units
    return agent


def test_agent_target_uses_the_agents_units_and_refuses_a_conflict() -> None:
    units = ActionNormalization((0.0, 0.0), (8.0, 8.0))
    plain = Target(**TARGET)
    assert agent_target(_agent(None), plain) is plain
    assert agent_target(_agent(units), plain).action_units == units
    declared = Target(**TARGET, action_normalization={"low": [1.0, 1.0], "high": [2.0, 2.0]})
    assert agent_target(_agent(None), declared) is declared  # data rescaled outside the toolkit: the user says
    with pytest.raises(ValueError, match="differs from the agent's"):
        agent_target(_agent(units), declared)
    fake.UnitsReachEnv.received.clear()
    for env in (agent_env(_agent(units), plain), agent_env_factory(_agent(units), plain)()):
        env.reset(seed=0)
        env.step(np.array([0.0, 1.0], np.float32))
    np.testing.assert_allclose([a for _, a in fake.UnitsReachEnv.received], [[4.0, 8.0]] * 2)


def test_the_units_an_agent_acts_in_are_its_own_else_its_targets() -> None:
    units, other = ActionNormalization((0.0, 0.0), (8.0, 8.0)), ActionNormalization((1.0, 1.0), (2.0, 2.0))
    plain, declared = Target(**TARGET), Target(**TARGET, action_normalization=units.to_dict())
    assert acting_units(other, [declared]) == other  # the agent's own first (agent_target refuses a conflict)
    assert acting_units(None, [declared]) == units and acting_units(None, [declared, declared]) == units
    assert acting_units(None, [plain]) is None and acting_units(None, []) is None
    assert acting_units(None, [declared, plain]) is None  # targets that disagree: none to choose
    assert acting_units(None, [declared, Target(**TARGET, action_normalization=other.to_dict())]) is None


def test_an_env_whose_range_the_agent_cannot_reach_is_named_at_start(caplog) -> None:
    from robopretrain.build import check_env_fits

    with caplog.at_level(logging.WARNING):
        check_env_fits(_agent(None), Target(**TARGET))  # [0, 8] actions, agent unmapped: warned
    assert "units_reach" in caplog.text and "low [0.0, 0.0] to high [8.0, 8.0]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_env_fits(_agent(ActionNormalization((0.0, 0.0), (8.0, 8.0))), Target(**TARGET))  # mapped: quiet
        check_env_fits(Agent(ObsSpec(low_dim=(("proprio", 7), ("object", 18))), 4, "bc"), Target("Reach"))
    assert "action_normalization" not in caplog.text


def test_the_units_travel_in_the_checkpoint_and_a_resume_with_others_is_refused() -> None:
    units = ActionNormalization((0.0, 0.0), (8.0, 8.0))
    agent = _agent(units)
    rebuilt = Agent.from_description(agent.describe())
    assert rebuilt.action_normalization == units
    assert Agent.from_description({**agent.describe(), "action_normalization": None}).action_normalization is None
    check_agent_fits(agent.describe(), rebuilt)
    with pytest.raises(CheckpointError, match="action units"):
        check_agent_fits(agent.describe(), _agent(None))
    with pytest.raises(CheckpointError, match="action units"):
        check_agent_fits(_agent(ActionNormalization((0.0, 0.0), (4.0, 8.0))).describe(), rebuilt)


def test_the_loader_re_expresses_a_files_actions_in_the_agents_units(tmp_path) -> None:
    data = convert(fake.write_units_d4rl(tmp_path / "u.hdf5", episodes=4), tmp_path / "u_conv.hdf5")
    spec = ObsSpec(low_dim=(("observations", 4),))
    as_file = load_offline_dataset(data, spec, RewardSettings()).arrays()["actions"]
    assert as_file.min() == -1.0 and as_file.max() == 1.0  # the converted file's [-1, 1]
    agent_units = ActionNormalization((-4.0, 0.0), (12.0, 8.0))
    mine = load_offline_dataset(data, spec, RewardSettings(), action_units=agent_units).arrays()["actions"]
    np.testing.assert_allclose(mine, agent_units.to_agent((as_file + 1.0) * 4.0), atol=1e-6)
    raw = load_offline_dataset(data, spec, RewardSettings(), action_units=None).arrays()["actions"]
    np.testing.assert_allclose(raw, np.clip((as_file + 1.0) * 4.0, -1.0, 1.0), atol=1e-6)  # env units, clipped
    for bad in ({"low": 1.0, "high": 2.0}, {"low": [0.0], "high": [8.0]}):  # malformed; another size
        with h5py.File(data, "r+") as f:
            env_args = {**json.loads(f["data"].attrs["env_args"]), "action_normalization": bad}
            f["data"].attrs["env_args"] = json.dumps(env_args)
        with pytest.raises(DatasetError, match="u_conv.hdf5: env_args"):
            load_offline_dataset(data, spec, RewardSettings(), action_units=agent_units)


@pytest.fixture(scope="module")
def units_bc(tmp_path_factory) -> tuple[Path, Path]:
    """Stage 2 BC (800 updates) on 30 converted expert episodes of UnitsReachEnv, evaluated there over 20 episodes."""
    tmp = tmp_path_factory.mktemp("units")
    src = fake.write_units_d4rl(tmp / "expert.hdf5", episodes=30)
    cfg = stage2_config(src, tmp / "s2", algo="bc", steps=800, width=64, obs={"low_dim": ["observations"]},
                        data_cfg={"cache_dir": str(tmp / "cache")}, algo_cfg={"batch_size": 64},
                        train={"eval_targets": [TARGET], "eval_episodes": 20, "eval_every": 800, "log_every": 400})
    return src, Path(stage2(cfg))


def test_bc_on_rescaled_demos_reaches_the_experts_success_in_the_robots_units(units_bc) -> None:
    """The converted file holds [0, 8] actions as [-1, 1]; the agent records the bounds and stage 2's evaluation env
    maps its actions back. Without that the robot drifts toward (0, 0) units (velocity -0.2 .. -0.1) and fails."""
    _, ckpt = units_bc
    agent, saved = load_agent(ckpt)
    assert saved.meta["action_normalization"]["low"] == [0.0, 0.0]
    assert saved.meta["action_normalization"]["high"] == [8.0, 8.0]
    evals = [r for r in read_jsonl(Path(ckpt).parents[1] / "metrics.jsonl") if "eval/success" in r]
    assert evals[-1]["eval/success"] >= 0.9, evals[-1]


def test_evaluate_records_the_units_its_episodes_acted_through(units_bc, tmp_path) -> None:
    """eval_info's target is the one the episodes ran: with the agent's action units (it said null while the agent's
    [0, 8] units were applied)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from robopretrain.evaluate import evaluate_robustness

    _, ckpt = units_bc
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"checkpoint={ckpt}", f"output_dir={tmp_path / 'ev'}", "episodes=2",
                                             "workers=0", "progress=false", "plot=false", "video.enabled=false"])
    cfg.target = OmegaConf.create(TARGET)
    info = evaluate_robustness(cfg)
    assert info["target"]["action_normalization"] == {"low": [0.0, 0.0], "high": [8.0, 8.0]}


def test_a_checkpoint_written_before_units_were_recorded_takes_its_data_files(units_bc, tmp_path) -> None:
    """meta.json without action_normalization (older robopretrain): the units of its data file when readable, so the
    agent still acts in the robot's units and its run resumes; no readable data file: the env's own."""
    _, ckpt = units_bc
    old = tmp_path / "old_ckpt"
    shutil.copytree(ckpt, old)
    meta = json.loads((old / "meta.json").read_text())
    units = ActionNormalization.from_mapping(meta.pop("action_normalization"))
    (old / "meta.json").write_text(json.dumps(meta))
    agent, _ = load_agent(old)
    assert agent.action_normalization == units
    check_agent_fits(meta, agent)  # a resume of that run is not refused
    (old / "meta.json").write_text(json.dumps({**meta, "data_path": str(tmp_path / "gone.hdf5")}))
    assert load_agent(old)[0].action_normalization is None
    from robopretrain import run_fingerprint  # its run folder, data file inside, moved: the file at its new place

    run = tmp_path / "run"
    shutil.copytree(old, run / "checkpoints" / "ckpt_1")
    shutil.copy(meta["data_path"], run / "demos.hdf5")
    moved_meta = {**meta, "data_path": str(run / "demos.hdf5"),
                  "fingerprint": run_fingerprint.fingerprint({}, {"data": run / "demos.hdf5"}, home=run)}
    (run / "checkpoints" / "ckpt_1" / "meta.json").write_text(json.dumps(moved_meta))
    run.rename(tmp_path / "moved")
    assert load_agent(tmp_path / "moved")[0].action_normalization == units


def test_a_robomimic_file_in_the_robots_own_units_is_rescaled_when_loaded(units_bc, tmp_path) -> None:
    """The same expert demos kept in [0, 8] in robomimic format (no record): stage 2 takes per-dimension bounds from
    the data, records them, and BC reaches the expert's success as on the converted file; data.actions=keep refuses
    the file with one line."""
    src, _ = units_bc
    raw = convert(src, tmp_path / "raw.hdf5", actions="keep")  # robomimic layout, actions as the robot takes them
    cfg = stage2_config(raw, tmp_path / "s2", algo="bc", steps=800, width=64, obs={"low_dim": ["observations"]},
                        algo_cfg={"batch_size": 64},
                        train={"eval_targets": [TARGET], "eval_episodes": 20, "eval_every": 800, "log_every": 400})
    ckpt = Path(stage2(cfg))
    assert load_agent(ckpt)[1].meta["action_normalization"]["high"] == [8.0, 8.0]
    evals = [r for r in read_jsonl(ckpt.parents[1] / "metrics.jsonl") if "eval/success" in r]
    assert evals[-1]["eval/success"] >= 0.9, evals[-1]
    cfg.data.actions, cfg.output_dir = "keep", str(tmp_path / "keep")
    with pytest.raises(DatasetError, match=r"raw.hdf5: data/demo_0/actions: values outside \[-1, 1\].*"
                                           r"with data.actions=auto .* rescaled"):
        stage2(cfg)  # the first file of a fresh agent: auto is the advice
    # from Python: the refusal names the call that rescales, and that call does what data.actions=auto does
    from robopretrain.data import data_action_units, read_info

    spec = ObsSpec(low_dim=(("observations", 4),))
    with pytest.raises(DatasetError, match=r"action_units=data_action_units\(path, read_info\(path\)\)"):
        load_offline_dataset(raw, spec, RewardSettings())
    ds = load_offline_dataset(raw, spec, RewardSettings(), action_units=data_action_units(raw, read_info(raw)))
    assert np.abs(ds.arrays()["actions"]).max() <= 1.0
    # read for an agent in env units (its first data lay in [-1, 1]): auto cannot rescale it, and the advice says so
    with pytest.raises(DatasetError, match=r"records no action units.*the agent acts in env units") as err:
        load_offline_dataset(raw, spec, RewardSettings(), action_units=None, units_fixed=True)
    assert "data.actions=auto" not in str(err.value)


def test_stage3_acts_and_stores_in_the_agents_units(units_bc, tmp_path, monkeypatch) -> None:
    """Fine-tuning from a checkpoint of a units agent (CQL, 4 updates): the online env receives env-unit actions, the
    replay buffer keeps the agent's [-1, 1] ones, and target demos converted with other bounds are re-expressed in the agent's units."""
    import h5py

    from robopretrain import build

    src, _ = units_bc
    ckpt = stage2(stage2_config(src, tmp_path / "s2", algo="cql", steps=4, obs={"low_dim": ["observations"]},
                                data_cfg={"cache_dir": str(tmp_path / "cache")}))
    narrow = tmp_path / "narrow.hdf5"  # the same demos with actions squeezed into [2, 6]: other bounds when converted
    with h5py.File(src, "r") as f, h5py.File(narrow, "w") as g:
        for k in ("observations", "rewards", "terminals", "timeouts", "infos/success"):
            g[k] = f[k][()]
        g["actions"] = 4.0 + 0.5 * (f["actions"][()] - 4.0)
    loaded = []
    real_load = build.load_data

    def load_data(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(build, "load_data", load_data)
    fake.UnitsReachEnv.received.clear()
    out = tmp_path / "s3"
    finetune(stage3_config(ckpt, out, {**TARGET, "demos": str(narrow)}, algo="calql", env_steps=48,
                           data_cfg={"cache_dir": str(tmp_path / "cache")}))
    probe, *online = [a for seed, a in fake.UnitsReachEnv.received if seed < 1_000_000]  # training episodes
    np.testing.assert_allclose(probe, [4.0, 4.0])  # check_env_fits' probe step: the agent's 0 in the env's [0, 8]
    online = np.array(online)
    assert len(online) == 48 and online.min() >= 0.0 and online.max() <= 8.0 and np.abs(online).max() > 1.0
    stored = np.asarray(load_latest(out / "checkpoints").state["sampler"]["online"]["data"]["actions"])
    assert len(stored) == 40  # the one finished episode (episodes are stored whole)
    np.testing.assert_allclose((stored + 1.0) * 4.0, online[:40], atol=1e-5)  # stored in the agent's units
    (offline,) = loaded
    actions = np.asarray(offline.arrays()["actions"])
    assert np.abs(actions).max() == pytest.approx(0.5, abs=1e-5)  # [2, 6] in the agent's [0, 8] units: [-0.5, 0.5]


def test_stage3_reads_the_target_demos_in_the_targets_units_for_an_agent_without_its_own(units_bc, tmp_path,
                                                                                         monkeypatch) -> None:
    """An agent trained on data rescaled outside the toolkit (no units recorded) acts through the target's declared
    action_normalization; the target's demos, rescaled by the same bounds and recording them, were read in the
    agent's (none: the env's own), so 2/3 of their values were clipped and a 'stand still' action became full speed
    (a new user's finding). They are read in the target's units: as stored."""
    from robopretrain import build
    from robopretrain.data.convert import as_robomimic

    src, _ = units_bc
    recorded = as_robomimic(src, cache_dir=tmp_path / "cache")  # [0, 8] rescaled to [-1, 1], the units recorded
    bare = tmp_path / "bare.hdf5"  # the same without the record: rescaled outside the toolkit
    shutil.copy(recorded, bare)
    with h5py.File(bare, "r+") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        units = env_args.pop("action_normalization")
        f["data"].attrs["env_args"] = json.dumps(env_args)
    ckpt = stage2(stage2_config(bare, tmp_path / "s2", algo="cql", steps=4, obs={"low_dim": ["observations"]}))
    assert load_agent(ckpt)[0].action_normalization is None
    loaded = []
    real_load = build.load_data
    monkeypatch.setattr(build, "load_data", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    fake.UnitsReachEnv.received.clear()
    finetune(stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(recorded), "action_normalization": units},
                           algo="calql", env_steps=8, data_cfg={"cache_dir": str(tmp_path / "cache")}))
    with h5py.File(recorded, "r") as f:
        stored = np.concatenate([f[f"data/{d}/actions"][()] for d in f["data"]])
    (offline,) = loaded
    np.testing.assert_allclose(np.sort(np.asarray(offline.arrays()["actions"]), 0), np.sort(stored, 0), atol=1e-6)
    acted = np.array([a for _, a in fake.UnitsReachEnv.received])
    assert acted.min() >= 0.0 and acted.max() <= 8.0
    # the units are part of the run's fingerprint: a run begun while these demos were read in the agent's units
    # (no entry) is not resumed on actions read another way (a reviewer's finding); an unchanged one resumes
    s3 = load_latest(tmp_path / "s3" / "checkpoints", with_state=False).path
    meta = json.loads((s3 / "meta.json").read_text())
    assert meta["fingerprint"]["config"][DEMO_UNITS] == describe(ActionNormalization.from_mapping(units))
    again = stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(recorded), "action_normalization": units},
                          algo="calql", env_steps=16, data_cfg={"cache_dir": str(tmp_path / "cache")})
    del meta["fingerprint"]["config"][DEMO_UNITS]
    (s3 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ResumeMismatchError, match=f"{DEMO_UNITS}: \\(unset\\) -> "):
        finetune(again)
    meta["fingerprint"]["config"][DEMO_UNITS] = describe(ActionNormalization.from_mapping(units))
    (s3 / "meta.json").write_text(json.dumps(meta))
    finetune(again)
    assert load_latest(tmp_path / "s3" / "checkpoints", with_state=False).meta["step"] == 16
    # the agent's own file (in [-1, 1], no record) is read as stored, not rescaled again by the target's units (a
    # reviewer's finding on the first version), and one in the robot's units is re-expressed in them
    raw = tmp_path / "raw.hdf5"
    convert(src, raw, actions="keep")
    for demos, out in ((bare, "s3_bare"), (raw, "s3_raw")):
        loaded.clear()
        finetune(stage3_config(ckpt, tmp_path / out, {**TARGET, "demos": str(demos), "action_normalization": units},
                               algo="calql", env_steps=8, data_cfg={"cache_dir": str(tmp_path / "cache")}))
        np.testing.assert_allclose(np.sort(np.asarray(loaded[0].arrays()["actions"]), 0), np.sort(stored, 0),
                                   atol=1e-5)
    # PTR's adaptation (stage 2 from the checkpoint, the target's demos mixed in, evaluated on the target) alike;
    # one target given as a mapping, not a list (the first version iterated its keys)
    loaded.clear()
    stage2(stage2_config(bare, tmp_path / "adapt", algo="cql", steps=2, obs={"low_dim": ["observations"]},
                         init=str(ckpt), data_cfg={"cache_dir": str(tmp_path / "cache"),
                                   "mix": {"path": str(recorded), "fraction": 0.5}},
                         train={"eval_targets": {**TARGET, "action_normalization": units}, "eval_episodes": 1}))
    np.testing.assert_allclose(np.sort(np.asarray(loaded[1].arrays()["actions"]), 0), np.sort(stored, 0), atol=1e-6)
    adapted = load_latest(tmp_path / "adapt" / "checkpoints", with_state=False).meta["fingerprint"]["config"]
    assert adapted[f"data.mix: {DEMO_UNITS}"] == describe(ActionNormalization.from_mapping(units))


def test_the_pipeline_refuses_at_start_target_demos_in_units_the_target_does_not_declare(units_bc, tmp_path,
                                                                                          monkeypatch) -> None:
    """Demos in the robot's own units, or recording a rescaling, for a target that declares no action_normalization:
    accepted at the pipeline's start, then refused at the adaptation or read back in the env's units and clipped,
    after the data stage, stage 1 and stage 2 (a new user's finding). Declaring the units makes both readable."""
    from robopretrain.data.convert import as_robomimic
    from robopretrain.data.hdf5 import read_info
    from robopretrain.pipeline import check_target_demo_units

    src, _ = units_bc
    recorded = as_robomimic(src, cache_dir=tmp_path / "cache")
    raw = tmp_path / "raw.hdf5"  # the robot's [0, 8] units, no record
    convert(src, raw, actions="keep")
    plain = Target(**TARGET)
    with pytest.raises(ValueError, match=r"record that their actions were rescaled to \[-1, 1\] from low=\[0.0, 0.0\], "
                                         r"high=\[8.0, 8.0\], but the target declares no action_normalization"):
        check_target_demo_units(plain, read_info(recorded))
    with pytest.raises(ValueError, match=r"have actions outside \[-1, 1\], the robot's own units .*set the target's "
                                         r"action_normalization"):
        check_target_demo_units(plain, read_info(raw))
    declared = Target(**TARGET, action_normalization={"low": [0.0, 0.0], "high": [8.0, 8.0]})
    for path in (recorded, raw):
        check_target_demo_units(declared, read_info(path))
    narrow = tmp_path / "narrow.hdf5"  # recorded bounds inside [-1, 1]: read in the env's units, nothing clipped
    shutil.copy(recorded, narrow)
    with h5py.File(narrow, "r+") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        env_args["action_normalization"] = {"low": [-0.5, -0.5], "high": [0.5, 0.5]}
        f["data"].attrs["env_args"] = json.dumps(env_args)
    check_target_demo_units(plain, read_info(narrow))
    inside = tmp_path / "inside.hdf5"  # [-1, 1] with no record: the env's own units, as the agent's
    shutil.copy(raw, inside)
    with h5py.File(inside, "r+") as f:
        for demo in f["data"].values():
            demo["actions"][...] = demo["actions"][()] / 8.0
    check_target_demo_units(plain, read_info(inside))
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):  # the pipeline's start runs it
        cfg = compose("pipeline", overrides=[
            f"targets=[{{name: units_reach, env_id: '_fake_envs:UnitsReachEnv', task_id: 13, demos: {recorded}}}]",
            "obs.num_tasks=14"])
    # a misspelt success_key: refused when the env is built at the start (it came after stage 2)
    from robopretrain.envs.target import EnvContractError

    assert pipeline.target_action_dim(plain) == 2
    with pytest.raises(EnvContractError, match="target 'units_reach': info has no 'sucess' at the first step"):
        pipeline.target_action_dim(Target(**{**TARGET, "success_key": "sucess"}))
    monkeypatch.setattr(pipeline, "check_target_sizes", lambda *a: None)  # (the prior's parts: not this test's)
    with pytest.raises(ValueError, match="but the target declares no action_normalization"):
        pipeline.check_targets(cfg)
    # demos of another format (src: D4RL in [0, 8]) are converted at the start, as the adaptation converts them, and
    # checked the same way (they passed the start and were clipped at the adaptation: a reviewer's finding)
    monkeypatch.setenv("ROBOPRETRAIN_CACHE_DIR", str(tmp_path / "start_cache"))
    cfg.targets[0].demos = str(src)
    with pytest.raises(ValueError, match=rf"its demos {src} \(their copy .*start_cache.*\) record that their "
                                         r"actions were rescaled"):
        pipeline.check_targets(cfg)


def test_units_within_rounding_of_the_envs_range_are_not_called_beyond_it(caplog, monkeypatch) -> None:
    """A recorded range a float32 rounding past the env's own bound (low -5e-7 for an env's 0) is the env's range."""
    import robopretrain.envs.target as target_module

    monkeypatch.setattr(target_module, "_NARROW_WARNED", set())
    with caplog.at_level(logging.WARNING):
        make_env(Target(**TARGET, action_normalization={"low": [-5e-7, 0.0], "high": [8.0, 8.0 + 5e-7]}))
    assert "beyond the env's own action range" not in caplog.text
    with caplog.at_level(logging.WARNING):
        make_env(Target(**TARGET, action_normalization={"low": [-1e-3, 0.0], "high": [8.0, 8.0]}))
    assert "beyond the env's own action range in dimension(s) [0]" in caplog.text


NARROW_TARGET = {**TARGET, "name": "narrow_reach", "env_id": "_fake_envs:NarrowUnitsReachEnv"}
BOX = {"low": [-0.1, -0.1], "high": [0.1, 0.1]}  # NarrowUnitsReachEnv's action box


def test_declared_action_bounds_are_the_agents_units_and_must_hold_the_data(tmp_path, caplog) -> None:
    """Demos in the env's own units inside [-1, 1] (a +-0.1 box): auto keeps them, data.action_bounds makes the box
    the agent's units (actions / 0.1 when loaded), whatever data.actions says; bounds that leave out some of the
    data, of another size, empty or malformed are refused by name. A file with its own record (converted from
    [0, 8]) is re-expressed through the env's units."""
    from robopretrain.data import data_action_units, read_info
    from robopretrain.data.dataset import declared_action_units

    src = fake.write_units_d4rl(tmp_path / "n.hdf5", episodes=4, env_cls=fake.NarrowUnitsReachEnv)
    raw = convert(src, tmp_path / "n_conv.hdf5")  # inside [-1, 1]: copied as stored, no record
    info = read_info(raw)
    assert data_action_units(raw, info) is None
    box = ActionNormalization((-0.1, -0.1), (0.1, 0.1))
    for mode in ("auto", "keep"):
        assert data_action_units(raw, info, mode, BOX) == box
    spec = ObsSpec(low_dim=(("observations", 4),))
    with h5py.File(src, "r") as f:
        stored = f["actions"][()]
    assert np.abs(stored).max() == pytest.approx(0.1)  # the expert saturates: the data spans the box
    loaded = load_offline_dataset(raw, spec, RewardSettings(), action_units=box).arrays()["actions"]
    np.testing.assert_allclose(np.sort(loaded.ravel()), np.sort(stored.ravel() / 0.1), atol=1e-5)
    with pytest.raises(DatasetError, match=r"n_conv.hdf5: actions reach .* in dimension\(s\) \[1\], outside "
                                           r"data.action_bounds"):
        declared_action_units(raw, info, {"low": [-0.1, -0.05], "high": [0.1, 0.1]})
    with pytest.raises(DatasetError, match=r"dimension\(s\) \[0\], outside"):  # 1e-5 past: beyond 1e-5 of the span
        declared_action_units(raw, info, {"low": [-0.1, -0.1], "high": [0.09999, 0.1]})
    declared_action_units(raw, info, {"low": [-0.1, -0.1], "high": [0.1 - 1e-7, 0.1]})  # within it: rounding
    declared_action_units(raw, info, {"low": [-0.1, -0.1], "high": [0.1 - 1.5e-6, 0.1]})  # 1e-5 of the span, 2e-6
    # (not of the bound itself: 1e-6 here)
    for bad, said in (({"low": [-0.1] * 3, "high": [0.1] * 3}, r"has 3 value\(s\) per bound, but the actions are 2-D"),
                      ({"low": [-0.1, 0.1], "high": [0.1, 0.1]}, r"high must be above low .* dimension\(s\) \[1\]"),
                      ({"low": -0.1, "high": 0.1}, "^data.action_bounds: low and high must be lists of numbers"),
                      ({"low": [], "high": []}, "^data.action_bounds: low and high must be equal-length"),
                      ({"high": [0.1, 0.1]}, "mapping of exactly low and high lists"),
                      ({**BOX, "units": "m"}, "mapping of exactly low and high lists")):  # extra keys were ignored
        with pytest.raises(ValueError, match=said):
            declared_action_units(raw, info, bad)
    with caplog.at_level(logging.WARNING):  # the box of the stored [-1, 1], not the env's: the data spans 10% of it
        declared_action_units(raw, info, {"low": [-1.0, -1.0], "high": [1.0, 1.0]})
    assert "actions span only ['10%', '10%'] of data.action_bounds in dimension(s) [0, 1]" in caplog.text
    # read for an agent whose units came first (init=, data.mix, stage 3): a file without a record whose actions
    # leave them is refused; it was clipped into them with a warning while the loader's hint said refused
    half = ActionNormalization((-0.05, -0.05), (0.05, 0.05))
    with pytest.raises(DatasetError, match=r"n_conv.hdf5: data/demo_0/actions: .*% of the values lie outside the "
                                           r"agent's action range \(low \[-0.05, -0.05\].*records no action units"):
        load_offline_dataset(raw, spec, RewardSettings(), action_units=half, units_fixed=True)
    assert np.abs(load_offline_dataset(raw, spec, RewardSettings(), action_units=box,
                                       units_fixed=True).arrays()["actions"]).max() == pytest.approx(1.0)
    recorded = convert(fake.write_units_d4rl(tmp_path / "u.hdf5", episodes=4), tmp_path / "u_conv.hdf5")
    wide = {"low": [-2.0, -2.0], "high": [10.0, 10.0]}  # the robot's [0, 8] inside a wider declared box
    units = data_action_units(recorded, read_info(recorded), "auto", wide)
    got = load_offline_dataset(recorded, spec, RewardSettings(), action_units=units).arrays()["actions"]
    as_file = load_offline_dataset(recorded, spec, RewardSettings()).arrays()["actions"]  # [0, 8] as [-1, 1]
    np.testing.assert_allclose(got, ((as_file + 1.0) * 4.0 + 2.0) / 6.0 - 1.0, atol=1e-5)
    with pytest.raises(DatasetError, match=r"dimension\(s\) \[0, 1\], outside data.action_bounds"):
        declared_action_units(recorded, read_info(recorded), {"low": [1.0, 1.0], "high": [8.0, 8.0]})
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a box far wider than the recorded units: said in which units it is
        declared_action_units(recorded, read_info(recorded), {"low": [-100.0, -100.0], "high": [100.0, 100.0]})
    assert "this file stores its actions rescaled from low [0.0, 0.0], high [8.0, 8.0]" in caplog.text


def test_stage2_with_declared_bounds_records_them_and_its_agent_reaches_the_experts_success(tmp_path, caplog) -> None:
    """BC (1,600 updates) on the +-0.1 demos with data.action_bounds: the checkpoint records the box, the evaluation
    env receives actions in the env's units, and the agent succeeds as the expert does. A later stage with the
    setting (init=, stage 3) keeps the checkpoint's units and says the setting takes no effect; stage 3 resumes
    without it."""
    src = fake.write_units_d4rl(tmp_path / "n.hdf5", episodes=30, env_cls=fake.NarrowUnitsReachEnv)
    fake.UnitsReachEnv.received.clear()
    cfg = stage2_config(src, tmp_path / "s2", algo="bc", steps=1600, width=64, obs={"low_dim": ["observations"]},
                        data_cfg={"cache_dir": str(tmp_path / "cache"), "action_bounds": BOX},
                        algo_cfg={"batch_size": 64},
                        train={"eval_targets": [NARROW_TARGET], "eval_episodes": 20, "eval_every": 1600,
                               "log_every": 400})
    ckpt = Path(stage2(cfg))
    assert {k: load_agent(ckpt)[1].meta["action_normalization"][k] for k in BOX} == BOX
    evals = [r for r in read_jsonl(ckpt.parents[1] / "metrics.jsonl") if "eval/success" in r]
    assert evals[-1]["eval/success"] >= 0.9, evals[-1]
    received = np.array([a for _, a in fake.UnitsReachEnv.received])
    assert np.abs(received).max() <= 0.1 + 1e-6 and np.abs(received).max() > 0.09  # the box's units, all of it
    other = {"low": [-0.2, -0.2], "high": [0.2, 0.2]}
    with caplog.at_level(logging.WARNING):
        again = stage2(stage2_config(src, tmp_path / "init", algo="bc", steps=2, obs={"low_dim": ["observations"]},
                                     data_cfg={"cache_dir": str(tmp_path / "cache"), "action_bounds": other},
                                     init=str(ckpt)))
    assert "data.action_bounds (low [-0.2, -0.2], high [0.2, 0.2]) takes no effect" in caplog.text
    assert load_agent(again)[0].action_normalization == ActionNormalization.from_mapping(BOX)
    from robopretrain.data.dataset import warn_ignored_action_bounds

    units = ActionNormalization.from_mapping(BOX)  # nothing set, or the agent's own box: nothing said
    assert warn_ignored_action_bounds(None, units, "x") is False
    assert warn_ignored_action_bounds(BOX, units, "x") is False
    assert warn_ignored_action_bounds(other, units, "x") is True
    wide = tmp_path / "wide.hdf5"  # the same demos 1.5x wider: outside the agent's box, clipped without a refusal
    with h5py.File(src, "r") as f, h5py.File(wide, "w") as g:
        for k in f:
            f.copy(f[k], g, name=k)
        g["actions"][...] = 1.5 * f["actions"][()]
    with pytest.raises(DatasetError, match=r"wide.*: data/demo_0/actions: .*outside the agent's action range"):
        stage2(stage2_config(wide, tmp_path / "init_wide", algo="bc", steps=2, obs={"low_dim": ["observations"]},
                             data_cfg={"cache_dir": str(tmp_path / "cache")}, init=str(ckpt)))
    caplog.clear()
    s3 = stage3_config(ckpt, tmp_path / "s3", NARROW_TARGET, algo="bc", env_steps=8,
                       data_cfg={"cache_dir": str(tmp_path / "cache"), "path": str(src), "action_bounds": other})
    with caplog.at_level(logging.WARNING):
        finetune(s3)
    assert "data.action_bounds (low [-0.2, -0.2], high [0.2, 0.2]) takes no effect" in caplog.text
    s3.data.action_bounds, s3.online.env_steps = None, 16
    finetune(s3)  # resumed, not refused over a setting that never took effect
    assert load_latest(tmp_path / "s3" / "checkpoints").meta["step"] >= 16
