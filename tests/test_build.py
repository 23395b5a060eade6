"""robopretrain/build.py, the wiring stages 2 and 3 share: seeds of a run, the env's randomization argument from a
config, where the data file comes from (given, or collected once into the run folder and reused)."""
from __future__ import annotations

import logging
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robopretrain import build
from robopretrain.agent import Agent
from robopretrain.data.dataset import RewardSettings
from robopretrain.data.replay import OfflineDataset
from robopretrain.data.sequences import SequenceSampler
from robopretrain.data.spec import ObsSpec


def test_setup_torch_seeds_torch_and_numpy_with_any_integer_seed():
    threads = torch.get_num_threads()
    try:
        assert build.setup_torch(OmegaConf.create({"seed": 2**32 + 5})) == torch.device("cpu")
        drawn_np, drawn_torch = np.random.random(3), torch.rand(3)
    finally:
        torch.set_num_threads(threads)
    np.random.seed(5)  # numpy's global seed is the run's seed modulo 2**32 (numpy refuses larger ones)
    torch.manual_seed(2**32 + 5)
    assert np.array_equal(drawn_np, np.random.random(3)) and torch.equal(drawn_torch, torch.rand(3))


def test_plain_resolves_interpolations_and_passes_other_values_through():
    """A config section's ${...} interpolations are resolved (a stage reading ``plain(cfg.data)`` got the text
    "${...}" otherwise); values that are no config pass unchanged."""
    cfg = OmegaConf.create({"size": 64, "data": {"image_size": "${size}", "keys": ["a"]}})
    assert build.plain(cfg.data) == {"image_size": 64, "keys": ["a"]}
    assert build.plain([1, "${size}"]) == [1, "${size}"] and build.plain(None) is None


@pytest.mark.parametrize("node,expected", [
    (None, "none"),
    ("train", "train"),
    ({"level": "none"}, "none"),
    ({"level": "none", "num_distractors": 0}, "none"),
    ({"level": "none", "num_distractors": 3}, {"level": "none", "num_distractors": 3}),  # distractors alone
    ({"level": "train", "factors": None, "num_distractors": None}, {"level": "train"}),
    # one factor randomized by factor_levels on a level-none entry: not "none" (it was dropped)
    ({"level": "none", "factor_levels": {"friction": "train"}}, {"level": "none", "factor_levels": {"friction": "train"}}),
    ({"level": "train", "factors": []}, "none"),  # no factor chosen: nothing randomized
])
def test_randomization_argument_from_a_dr_entry(node, expected):
    assert build.randomization(OmegaConf.create(node) if isinstance(node, dict) else node) == expected


@pytest.mark.parametrize("node,match", [
    ({"level": "none", "bogus": 1}, r"unknown key\(s\) \['bogus'\]"),  # was ignored on a level-none entry
    ({"level": "train", "factors": ["friction"], "levle": "x"}, r"unknown key\(s\) \['levle'\]"),  # TypeError in the env
    ("trian", "unknown randomization level 'trian'"),
    ({"level": "train", "factors": ["fricton"]}, "unknown randomization factor 'fricton'"),
    ({"level": "none", "ranges": {"friction": [[0.4, 0.5]]}}, "is given a range but is not randomized"),
    ({"level": "train", "bogus": None}, r"unknown key\(s\) \['bogus'\]"),  # a null value hid the misspelt key
    ({"level": "train", "factors": "friction"}, r"factors='friction': expected a list"),  # was "factor 'f'"
    ({"level": "train", "num_distractors": -2}, r"num_distractors=-2: expected an integer >= 0"),
    ({"level": "train", "num_distractors": "3"}, r"num_distractors='3': expected an integer >= 0"),
])
def test_randomization_entry_is_checked_before_an_env_is_built(node, match):
    with pytest.raises(ValueError, match=match):
        build.randomization(OmegaConf.create(node) if isinstance(node, dict) else node)


def test_a_randomization_error_names_the_key_the_entry_came_from():
    with pytest.raises(ValueError, match=r"^eval_randomization=\{'level': 'eval_hard', 'factor'"):
        build.randomization(OmegaConf.create({"level": "eval_hard", "factor": ["friction"]}), where="eval_randomization")
    with pytest.raises(ValueError, match=r"^dr="):
        build.randomization("trian")
    # a gap side's form, given where sim_envs randomization goes (a new user's finding: "unknown key(s) ['env_kwargs']"
    # neither said it never applies to a gym target nor where constructor arguments go)
    with pytest.raises(ValueError, match=r"^eval_randomization=.*never applied to a gym target.*'gap.target=\{env_kw"):
        build.randomization(OmegaConf.create({"env_kwargs": {"mass": 2.0}}), where="eval_randomization")


def test_generated_data_is_collected_into_the_run_folder_once_and_reused(tmp_path, monkeypatch):
    calls = []

    def fake_collect(cfg, progress=True):  # a file with the record of its collection, as sim_envs.collect writes
        import h5py  # (its Hydra command line records no hydra section, nor keys added after it ran: seed here)

        calls.append(cfg.output)
        record = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("hydra", "seed")}
        with h5py.File(cfg.output, "w") as f:
            f.create_group("data").attrs["collection"] = json.dumps({"config": record})
        return cfg.output

    import sim_envs.collect

    monkeypatch.setattr(sim_envs.collect, "collect", fake_collect)
    data = OmegaConf.create({"generate": True, "path": None})
    first = build.resolve_data_path(data, tmp_path / "run")
    assert first == tmp_path / "run" / "robot_demos.hdf5" and calls == [str(first)]
    assert build.resolve_data_path(data, tmp_path / "run") == first and len(calls) == 1  # reused, not collected
    again = OmegaConf.create({"generate": True, "path": None, "regenerate": True})
    assert build.resolve_data_path(again, tmp_path / "run") == first and len(calls) == 2
    named = build.resolve_data_path(data, tmp_path / "run", default_name="target.hdf5")
    assert named == tmp_path / "run" / "target.hdf5" and calls[-1] == str(named)
    # a file collected with other settings was reused whatever data.generate asked for (PressButton demos asked
    # for, the Reach file trained on): refused naming them; another tool's file (no record) is used as it is
    other = OmegaConf.create({"generate": True, "path": None, "collect": {"tasks": ["PressButton"]}})
    with pytest.raises(ValueError, match=r"robot_demos.hdf5: collected with other settings than data.generate asks "
                                         r"for now \(tasks: \"all\" -> \["):
        build.resolve_data_path(other, tmp_path / "run")
    assert len(calls) == 3
    import h5py

    with h5py.File(first, "a") as f:
        del f["data"].attrs["collection"]
    assert build.resolve_data_path(other, tmp_path / "run") == first and len(calls) == 3


def test_load_data_passes_the_selection_the_stage_asked_for(tmp_path, monkeypatch):
    """An explicit ``task_id`` / ``tasks`` (stage 3's target) wins over the data group's; BC needs no rewards."""
    seen = []
    monkeypatch.setattr(build, "converted", lambda path, cfg, default_image_size=None: path)
    monkeypatch.setattr(build, "load_offline_dataset", lambda path, spec, reward, **kw: seen.append(kw))
    spec, reward = ObsSpec(low_dim=(("x", 1),)), RewardSettings()
    data = OmegaConf.create({"tasks": ["A"], "task_id": 4})
    build.load_data(tmp_path / "d.hdf5", spec, data, reward, algo="bc", act_dim=2, seed=0, device=torch.device("cpu"))
    build.load_data(tmp_path / "d.hdf5", spec, data, reward, algo="iql", act_dim=2, seed=0,
                    device=torch.device("cpu"), tasks=["B"], task_id=1)
    assert [(kw["tasks"], kw["task_id"], kw["rewards_needed"]) for kw in seen] == [(["A"], 4, False), (["B"], 1, True)]
    assert seen[0]["storage"] == "auto" and seen[0]["workers"] == 0
    assert (seen[0]["rank"], seen[0]["world_size"]) == (0, 1)  # one process by default: the whole data, unsharded
    assert seen[0]["rewards_from_success"] is False  # unset in the data group: the file's own rewards
    assert seen[0]["skip_short"] is False
    build.load_data(tmp_path / "d.hdf5", spec, OmegaConf.merge(data, {"skip_short_demos": True}), reward, algo="bc",
                    act_dim=2, seed=0, device=torch.device("cpu"))
    assert seen[-1]["skip_short"] is True


def test_converted_gives_the_data_the_agents_image_size_unless_the_config_says(tmp_path, monkeypatch):
    """``default_image_size`` (stage 3's target demos, a mix) applies when data.image_size is unset, to a robomimic
    file too (as_robomimic copies it only where a camera differs); data.image_size wins."""
    import _formats as F
    import robopretrain.data.convert as convert

    asked = []
    monkeypatch.setattr(convert, "as_robomimic", lambda path, **kw: asked.append(kw["image_size"]) or path)
    foreign = F.write_d4rl(tmp_path / "walker.hdf5")
    native = convert.convert(foreign, tmp_path / "native.hdf5")
    build.converted(foreign, {}, 16)
    build.converted(native, {}, 16)
    build.converted(foreign, {"image_size": 8}, 16)
    build.converted(foreign, {})
    build.converted(foreign, {"format": "d4rl"}, 16)
    truncated = tmp_path / "cut.hdf5"
    truncated.write_bytes(native.read_bytes()[:2000])  # no recognised format: left to the robomimic reader's message
    build.converted(truncated, {}, 16)
    monkeypatch.setenv("HOME", str(tmp_path))
    build.converted(Path("~/walker.hdf5"), {}, 16)  # a mix path with ~ (bash leaves it in key=~/x)
    assert asked == [16, 16, 8, None, 16, 16, 16]


def test_check_image_size_names_the_agents_cameras_of_another_size_only(tmp_path):
    cams = ObsSpec(low_dim=(("x", 1),), rgb=(("front", (16, 16, 3)), ("wrist", (16, 16, 3))))
    build.check_image_size(cams, 16, tmp_path / "d.hdf5")  # the size asked for
    build.check_image_size(cams, None, tmp_path / "d.hdf5")  # not asked
    build.check_image_size(ObsSpec(low_dim=(("x", 1),)), 8, tmp_path / "d.hdf5")  # no cameras: nothing to check
    with pytest.raises(ValueError, match=r"data.image_size=8 but .*d.hdf5 holds front 16x16, wrist 16x16: the "
                                         r"resize did not reach these cameras.*or leave data.image_size unset"):
        build.check_image_size(cams, 8, tmp_path / "d.hdf5")
    mixed = ObsSpec(low_dim=(("x", 1),), rgb=(("front", (8, 8, 3)), ("wrist", (16, 16, 3))))  # unset fails too
    with pytest.raises(ValueError, match=r"holds wrist 16x16.*must all have one square size") as err:
        build.check_image_size(mixed, 8, tmp_path / "d.hdf5")
    assert "unset" not in str(err.value)


def test_feature_statistics_rows_are_every_row_or_evenly_spaced_ones_inside_the_data():
    np.testing.assert_array_equal(build.feature_stat_rows(5, limit=10), np.arange(5))
    rows = build.feature_stat_rows(25_000)
    assert len(rows) == build.FEATURE_STATS_ROWS and rows[0] == 0 and rows[-1] == 24_999
    assert (np.diff(rows) > 0).all()


def tiny_dataset(n: int = 6) -> OfflineDataset:
    x = np.arange(n, dtype=np.float32)[:, None]
    dones = np.zeros(n, np.float32)
    dones[2] = 1.0
    return OfflineDataset({"x": x}, np.zeros((n, 2), np.float32), np.zeros(n, np.float32), {"x": x + 1}, dones)


def test_training_sampler_windows_the_data_for_the_decision_transformer_only():
    spec, data = ObsSpec(low_dim=(("x", 1),)), tiny_dataset()
    assert build.training_sampler(Agent(spec, 2, "iql", {}), data, seed=0) is data
    dt = Agent(spec, 2, "dt", {"context_len": 3, "embed_dim": 8, "num_layers": 1})
    sampler = build.training_sampler(dt, data, seed=7)
    assert isinstance(sampler, SequenceSampler) and sampler.dataset is data and sampler.K == 3
    torch.testing.assert_close(sampler.sample(4), SequenceSampler(data, 3, seed=7).sample(4))  # seeded by the stage


def demo_file(path: Path, tasks: list[str]) -> Path:
    """One 3-step successful state episode per entry of ``tasks`` (in that order), the tasks' sim_envs ids."""
    from sim_envs.hdf5_writer import RobomimicWriter, make_env_args
    from sim_envs.tasks import TASK_IDS

    with RobomimicWriter(path, make_env_args("sim_envs/TabletopEnv", "0", {}), valid_fraction=0.0) as writer:
        for task in tasks:
            x = np.arange(4, dtype=np.float32)[:, None]
            writer.add_episode(task=task, task_id=TASK_IDS[task], obs={"proprio": x[:3]}, next_obs={"proprio": x[1:]},
                               actions=np.zeros((3, 4), np.float32), rewards=np.array([0, 0, 1], np.float32),
                               dones=np.array([0, 0, 1], np.uint8), ep_meta={"success": True})
    return path


def test_the_tasks_trained_and_evaluated_are_those_loaded_in_the_slots_loaded(tmp_path):
    """data.max_demos cuts tasks out of training, so out of evaluation; data.task_id moves the slot the transitions
    carry, so the evaluation env must give the agent that slot too."""
    from robopretrain.data.hdf5 import read_info
    from sim_envs.tasks import TASK_IDS

    path = demo_file(tmp_path / "d.hdf5", ["Reach", "Reach", "PressButton"])
    info = read_info(path)
    spec = ObsSpec(low_dim=(("proprio", 1),), num_tasks=12)
    for data, expected in [({}, {"PressButton": TASK_IDS["PressButton"], "Reach": TASK_IDS["Reach"]}),
                           ({"max_demos": 2}, {"Reach": TASK_IDS["Reach"]}),
                           ({"tasks": ["PressButton"]}, {"PressButton": TASK_IDS["PressButton"]}),
                           ({"task_id": 5, "tasks": ["Reach"]}, {"Reach": 5})]:
        cfg = OmegaConf.create(data)
        ids = build.data_task_ids(info, cfg)
        assert ids == expected, data
        loaded = build.load_data(path, spec, cfg, RewardSettings(), algo="bc", act_dim=None, seed=0,
                                 device=torch.device("cpu"))
        assert set(loaded.arrays()["observations"]["task_id"].tolist()) == set(ids.values()), data
        targets = build.eval_targets(None, info, ids)
        assert [(t.name, t.resolved_task_id()) for t in targets] == list(ids.items()), data
    # listed gym targets without task_id: the slot of the trained task of their name (the mix's among them), else
    # refused before training when the agent has several tasks
    listed = [{"name": "Reach", "env_id": "_fake_envs:RobosuiteLikeEnv"},
              {"name": "Door", "env_id": "_fake_envs:RobosuiteLikeEnv"}]
    ids = {"Reach": 0, "PressButton": 3}
    got = build.eval_targets(listed, info, ids, 12, {**ids, "Door": 7})
    assert [t.task_id for t in got] == [0, 7]
    with pytest.raises(ValueError, match="target 'Door': a gym target of a multi-task agent needs task_id"):
        build.eval_targets(listed, info, ids, 12)
    # one name twice (a task in its own slot and another's): its results were logged under one key, the last
    with pytest.raises(ValueError, match=r"train.eval_targets names \['Reach'\] more than once"):
        build.eval_targets(["Reach", "PressButton", {"name": "Reach", "task_id": 6}], info, ids, 13)


def test_mixed_data_that_gives_one_slot_to_two_tasks_is_refused(caplog):
    build.check_task_slots({"Reach": 0, "Lift": 1}, "prior.hdf5", {"Lift": 1, "Door": 7}, "target.hdf5")  # agree
    with pytest.raises(ValueError, match=r"slot 0 is task 'Reach' in prior.hdf5 and task 'stack_cups' in "
                                         r"mine.hdf5.*data.mix.task_id \(e.g. 2; with obs.num_tasks > 2\)"):
        build.check_task_slots({"Reach": 0, "Lift": 1}, "prior.hdf5", {"stack_cups": 0}, "mine.hdf5")
    # the user set data.mix.task_id to the slot: one task under two names (two converted files of one task), said
    # at info level (only an init checkpoint's slot trained over is a warning)
    with caplog.at_level(logging.WARNING):
        build.check_task_slots({"pendulum_a": 0}, "a.hdf5", {"pendulum_b": 0}, "b.hdf5", explicit=True)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        build.check_task_slots({"pendulum_a": 0}, "a.hdf5", {"pendulum_b": 0}, "b.hdf5", explicit=True,
                               overwrite=True)
    assert "this run trains over what the agent learnt there" in caplog.text
    # one task name in two slots (two numberings): trained in both, evaluated in one; refused naming its first slot
    with pytest.raises(ValueError, match=r"task 'Lift' is in slot 1 in prior.hdf5 and in slot 2 in mine.hdf5.*"
                                         r"set data.mix.task_id=1"):
        build.check_task_slots({"Reach": 0, "Lift": 1}, "prior.hdf5", {"Lift": 2}, "mine.hdf5")
    # the user moved the second file's task there (data.mix.task_id): two files' generic names ("task 0"), allowed
    build.check_task_slots({"task 0": 0}, "a.hdf5", {"task 0": 1}, "b.hdf5", second_set=True)
    # the free slot advised is none the agent knows (taken: an init checkpoint's), and within its one-hot
    with pytest.raises(ValueError, match=r"e.g. 3; the agent's one-hot has 8 slots"):
        build.check_task_slots({"Reach": 0}, "prior.hdf5", {"stack": 0}, "mine.hdf5", num_tasks=8, taken=[1, 2])
    with pytest.raises(ValueError, match=r"none is free in the agent's 2 slots: train stage 2 with a larger"):
        build.check_task_slots({"Reach": 0, "Lift": 1}, "the init checkpoint", {"stack": 0}, "mine.hdf5",
                               num_tasks=2, setting="data.task_id")


def test_a_slot_an_init_checkpoint_learnt_is_refused_to_other_data_and_kept_in_the_new_checkpoint(tmp_path, caplog):
    """Stage 2 from init= on a file whose task is numbered 0, as converters number, trained it over the init agent's
    task 0 without a word, and the new checkpoint forgot the init's tasks (so a prior task later resolved to the
    target's slot, "the agent's only task"). Refused naming a free slot; with it, the new checkpoint keeps both."""
    from _stages import stage2_config
    from robopretrain.checkpoint import load_agent
    from robopretrain.train import run as stage2

    import _fake_envs as fake

    prior = fake.write_robosuite_demos(tmp_path / "prior.hdf5", episodes=4, tasks=(("reach", 0), ("lift", 1)))
    target = fake.write_robosuite_demos(tmp_path / "target.hdf5", episodes=2, tasks=(("stack", 0),))
    obs = {"low_dim": ["robot0_eef_pos"], "rgb": [], "num_tasks": 4}
    first = stage2(stage2_config(prior, tmp_path / "prior", algo="bc", steps=2, obs=obs))
    assert load_agent(first)[1].meta["task_ids"] == {"reach": 0, "lift": 1}
    with pytest.raises(ValueError, match=r"slot 0 is task 'reach' in the init checkpoint .* and task 'stack' in "
                                         r".*target.hdf5.*data.task_id \(e.g. 2; the agent's one-hot has 4 slots\)"):
        stage2(stage2_config(target, tmp_path / "adapt", algo="bc", steps=2, obs=obs, init=str(first)))
    adapted = stage2(stage2_config(target, tmp_path / "adapt2", algo="bc", steps=2, obs=obs, init=str(first),
                                   data_cfg={"task_id": 2}))
    assert load_agent(adapted)[1].meta["task_ids"] == {"reach": 0, "lift": 1, "stack": 2}
    lift = fake.write_robosuite_demos(tmp_path / "lift.hdf5", episodes=2, tasks=(("lift", 1),))
    with pytest.raises(ValueError, match=r"slot 0 is task 'reach' in the init checkpoint .* and task 'stack' in "
                                         r".*target.hdf5.*data.mix.task_id \(e.g. 2"):  # the PTR mix: the same
        stage2(stage2_config(lift, tmp_path / "mix", algo="bc", steps=2, obs=obs, init=str(first),
                             data_cfg={"mix": {"path": str(target)}}))
    with caplog.at_level(logging.WARNING):  # the slot given knowingly: trained over, said as a warning
        stage2(stage2_config(target, tmp_path / "over", algo="bc", steps=2, obs=obs, init=str(first),
                             data_cfg={"task_id": 0}))
    assert "this run trains over what the agent learnt there" in caplog.text
    caplog.clear()  # an evaluation target given reach's name in lift's slot: said (evaluate and stage 3 say it too)
    wrong = {"name": "reach", "env_id": "_fake_envs:RobosuiteLikeEnv", "task_id": 1, "max_episode_steps": 4}
    with caplog.at_level(logging.WARNING):
        stage2(stage2_config(prior, tmp_path / "evals", algo="bc", steps=2, obs=obs,
                             train={"eval_targets": [wrong], "eval_episodes": 1}))
    assert "train.eval_targets: target 'reach' acts in slot 1 of the task one-hot, but the agent learnt 'reach' in " \
        "slot 0" in caplog.text
    big = fake.write_robosuite_demos(tmp_path / "big.hdf5", episodes=2, tasks=(("stack", 6),))
    fixed = r"do not fit a task one-hot of size 4 \(the one-hot's size is the init checkpoint's .*: put the data in "
    with pytest.raises(ValueError, match=fixed + r"one of its slots with data.task_id, or train without init="):
        stage2(stage2_config(big, tmp_path / "big", algo="bc", steps=2, obs=obs, init=str(first)))
    with pytest.raises(ValueError, match=fixed + r"one of its slots with data.mix.task_id, or train without init="):
        stage2(stage2_config(lift, tmp_path / "bigmix", algo="bc", steps=2, obs=obs, init=str(first),
                             data_cfg={"mix": {"path": str(big)}}))
    with pytest.raises(ValueError, match=r"size 4 \(the mix file's task_id attributes: set obs.num_tasks above them, "
                                         r"or data.mix.task_id"):  # no init: the mix's own settings
        stage2(stage2_config(prior, tmp_path / "bigmix2", algo="bc", steps=2, obs=obs,
                             data_cfg={"mix": {"path": str(big)}}))
    caplog.clear()  # no one-hot for two tasks: one policy, said; a one-hot size given with init=: ignored, said
    with caplog.at_level(logging.WARNING):
        stage2(stage2_config(prior, tmp_path / "none", algo="bc", steps=2, obs={**obs, "num_tasks": 0}))
        stage2(stage2_config(lift, tmp_path / "grow", algo="bc", steps=2, obs={**obs, "num_tasks": 12},
                             init=str(first)))
    assert "holds 2 tasks (lift, reach), but the agent has no task one-hot (obs.num_tasks=0)" in caplog.text
    assert "obs.num_tasks=12 (the checkpoint's: 4) take(s) no effect" in caplog.text
    from robopretrain.envs.target import as_target

    with pytest.raises(ValueError, match=r"target=\['g0', 'g5'\]: expected one task name or one mapping"):
        as_target(["g0", "g5"])  # was dict()'s "dictionary update sequence element #0 has length 2"


def test_one_file_that_gives_one_slot_to_two_tasks_is_refused_unless_the_slot_is_set(tmp_path):
    """Two tasks of one file with one task_id (pick and stack both 0, or demos without task attributes beside a
    named task 0) would train as one task silently: refused naming both and the ways out; data.task_id puts them in
    one slot knowingly, data.tasks selects one."""
    import h5py

    from robopretrain.data.hdf5 import read_info

    path = demo_file(tmp_path / "d.hdf5", ["Reach", "PressButton", "Reach"])
    with h5py.File(path, "a") as f:
        f["data/demo_1"].attrs["task_id"] = f["data/demo_0"].attrs["task_id"]
    info, slot = read_info(path), int(read_info(path).tasks["Reach"])
    with pytest.raises(ValueError, match=rf"d.hdf5: tasks 'PressButton', 'Reach' all have task_id {slot}: .*"
                                         rf"data.tasks=\[PressButton\], or set data.task_id={slot}"):
        build.data_task_ids(info, OmegaConf.create({}))
    assert build.data_task_ids(info, OmegaConf.create({"task_id": slot})) == {"PressButton": slot, "Reach": slot}
    assert build.data_task_ids(info, OmegaConf.create({"tasks": ["Reach"]})) == {"Reach": slot}
    # a demo without task attributes is the env_name's task in slot 0, beside a named task in slot 0
    with h5py.File(path, "a") as f:
        for demo in ("demo_0", "demo_2"):
            f[f"data/{demo}"].attrs["task_id"] = 0
        del f["data/demo_1"].attrs["task"], f["data/demo_1"].attrs["task_id"]
    with pytest.raises(ValueError, match=r"demos without task / task_id attributes are task 'sim_envs/TabletopEnv' "
                                         r"in slot 0"):
        build.data_task_ids(read_info(path), OmegaConf.create({}))


def test_an_agent_trained_in_a_moved_slot_is_evaluated_there_by_default(tmp_path):
    from types import SimpleNamespace

    from robopretrain.evaluate import default_target
    from sim_envs.tasks import TASK_IDS

    moved = SimpleNamespace(path=tmp_path, meta={"task_names": ["Reach"], "task_ids": {"Reach": 5}})
    assert default_target(moved).resolved_task_id() == 5
    plain_ckpt = SimpleNamespace(path=tmp_path, meta={"task_names": ["Reach"]})  # an older meta.json: the name's id
    assert default_target(plain_ckpt).resolved_task_id() == TASK_IDS["Reach"]
    # a multi-task run: the first task it evaluated (it was the first by name, CloseDrawer, not the Reach it reported)
    multi = SimpleNamespace(path=tmp_path, meta={"task_names": ["CloseDrawer", "Reach"],
                                                 "eval_targets": [{"name": "Reach"}, {"name": "CloseDrawer"}]})
    assert default_target(multi).name == "Reach"
    multi.meta["eval_targets"] = []
    assert default_target(multi).name == "CloseDrawer"


def test_a_stage2_agent_of_another_env_defaults_to_the_target_it_was_evaluated_on(tmp_path):
    """Not a sim_envs task: the evaluation target of its name, else the run's only one; else a CheckpointError
    saying to pass target= (formerly: "'pendulum' is not a sim_envs task")."""
    from types import SimpleNamespace

    from robopretrain.checkpoint import CheckpointError
    from robopretrain.evaluate import default_target

    gym_a = {"name": "pendulum", "env_id": "Pendulum-v1", "task_id": 3}
    gym_b = {"name": "other", "env_id": "MountainCarContinuous-v0", "task_id": 0}
    named = SimpleNamespace(path=tmp_path, meta={"task_names": ["pendulum"], "eval_targets": [gym_b, gym_a]})
    assert default_target(named).env_id == "Pendulum-v1" and default_target(named).task_id == 3
    only = SimpleNamespace(path=tmp_path, meta={"task_names": ["hopper-medium"], "eval_targets": [gym_b]})
    assert default_target(only).name == "other"
    for evaluated in ([], [gym_a, gym_b]):
        ckpt = SimpleNamespace(path=tmp_path, meta={"task_names": ["hopper-medium"], "eval_targets": evaluated})
        with pytest.raises(CheckpointError, match="'hopper-medium' is not a sim_envs task.*pass target="):
            default_target(ckpt)
    sim = SimpleNamespace(path=tmp_path, meta={"task_names": ["Reach"], "eval_targets": [gym_b]})
    assert default_target(sim).name == "Reach"  # a sim_envs task stays itself
    # an adaptation (mix task g5 in slot 6) that evaluated prior task g1 only: g5 was evaluated as g1, in slot 1;
    # now refused, its example in g5's own slot
    adapted = SimpleNamespace(path=tmp_path, meta={
        "task_names": ["g1", "g5"], "task_ids": {"g1": 1, "g5": 6}, "mix_task_names": ["g5"],
        "eval_targets": [{"name": "g1", "env_id": "Pendulum-v1", "task_id": 1}]})
    with pytest.raises(CheckpointError, match=r"its task 'g5' is not a sim_envs task.*task_id: 6\}' \(task_id: its "
                                              r"slot in the agent's task one-hot, where 'g5' was trained\)"):
        default_target(adapted)
    # the run evaluated its task in another slot than it trained it in: the trained slot, with a warning
    moved = SimpleNamespace(path=tmp_path, meta={"task_names": ["pendulum"], "task_ids": {"pendulum": 3},
                                                 "eval_targets": [{**gym_a, "task_id": 0}]})
    assert default_target(moved).task_id == 3


def test_warn_action_range_only_for_finite_boxes_other_than_minus_one_one() -> None:
    """Unbounded or non-box spaces say nothing about units; a box off [-1, 1] on either side is warned."""
    import gymnasium as gym

    box = lambda lo, hi: gym.spaces.Box(np.float32(lo), np.float32(hi), (2,), np.float32)  # noqa: E731
    assert not build.warn_action_range(box(-1, 1), "t") and not build.warn_action_range(box(-np.inf, np.inf), "t")
    assert not build.warn_action_range(gym.spaces.Discrete(3), "t")
    assert build.warn_action_range(box(-1, 2), "t") and build.warn_action_range(box(-2, 1), "t")
    assert build.warn_action_range(box(0, 8), "t")
    noisy = gym.spaces.Box(np.float64(-1 - 8e-7), np.float64(1 + 8e-7), (2,), np.float64)  # a converter's rounding
    assert not build.warn_action_range(noisy, "t")
    assert build.warn_action_range(gym.spaces.Box(np.float64(-1 - 2e-6), np.float64(1.0), (2,), np.float64), "t")
    half_open = gym.spaces.Box(np.array([0.0, 0.0], np.float32), np.array([np.inf, 8.0], np.float32))
    assert not build.warn_action_range(half_open, "t")  # a bound that is not finite says nothing of the units


def test_the_action_range_warning_says_which_way_the_box_differs(caplog) -> None:
    """A [0, 1] env was warned "part of the range is out of reach", while the agent reaches all of it and it is the
    agent's actions below 0 that leave the env's range (clipped there)."""
    import gymnasium as gym

    low, high = np.array([0.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32)
    with caplog.at_level(logging.WARNING):
        assert build.warn_action_range(gym.spaces.Box(low, high), "t")
    assert "out of the agent's reach beyond [-1, 1] in dimension(s) [1]" in caplog.text
    assert "clipped to it in dimension(s) [0]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build.warn_action_range(gym.spaces.Box(np.float32(0.0), np.float32(1.0), (2,)), "t")
    assert "clipped to it in dimension(s) [0, 1]" in caplog.text and "reach beyond" not in caplog.text
    # a box of 0.08 (a helper's env whose demos were stored in its own units): exploration noise spans 25x of it
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build.warn_action_range(gym.spaces.Box(np.float32([-0.06, -0.02]), np.float32([0.02, 0.08])), "t")
    assert "spans up to 25x the env's range there" in caplog.text
    assert "If the data's actions are in the env's own units, train stage 2 again with data.action_bounds=" \
        "'{low: [-0.06, -0.02], high: [0.02, 0.08]}'" in caplog.text  # the box, as a command line takes it


def test_a_bound_within_rounding_of_one_is_not_called_wider(caplog) -> None:
    """The tolerance of the "wider" side is the one the [-1, 1] check uses: a converter's rounding (8e-7 past 1) in
    one dimension is not named out of reach beside another dimension that is narrower."""
    import gymnasium as gym

    space = gym.spaces.Box(np.array([0.0, -1.0]), np.array([1.0, 1.0 + 8e-7]), dtype=np.float64)
    with caplog.at_level(logging.WARNING):
        assert build.warn_action_range(space, "t")
    assert "clipped to it in dimension(s) [0]" in caplog.text and "reach beyond" not in caplog.text
    caplog.clear()  # the low side too (8e-7 below -1), and a high of 0.8: narrower there, not wider
    space = gym.spaces.Box(np.array([-1.0 - 8e-7, -1.0]), np.array([1.0, 0.8]), dtype=np.float64)
    with caplog.at_level(logging.WARNING):
        assert build.warn_action_range(space, "t")
    assert "clipped to it in dimension(s) [1]" in caplog.text and "reach beyond" not in caplog.text
    caplog.clear()  # a low of -0.8: narrower on that side
    with caplog.at_level(logging.WARNING):
        assert build.warn_action_range(gym.spaces.Box(np.array([-0.8, -1.0]), np.array([1.0, 1.0]), dtype=np.float64),
                                       "t")
    assert "clipped to it in dimension(s) [0]" in caplog.text


def test_the_probe_action_of_a_space_that_is_not_the_agents_size_is_zeros() -> None:
    """A Discrete space, or a Box of another size (refused later, naming the sizes), probes with the agent's zero."""
    import gymnasium as gym

    from types import SimpleNamespace

    half = SimpleNamespace(low=np.array([0.0, 0.0]))  # a space of the user's with bounds below but none above
    for space in (gym.spaces.Discrete(3), gym.spaces.Box(-2.0, 2.0, (3,), np.float32), half):
        action = build.probe_action(space, 2)
        assert action.dtype == np.float32 and action.tolist() == [0.0, 0.0]


CONFIG_NAMES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "robopretrain" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_compose_gives_what_hydra_composes_for_every_config_the_presets_too(name):
    """compose() is "the same configs" as the command line (docs/pipeline.md, From Python); the presets, whose
    defaults start with another config (paper, testbed: pipeline), failed with "dictionary update sequence element
    #0 has length 1" (a new user's finding)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from robopretrain.build import compose
    from robopretrain.cli import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        theirs = OmegaConf.to_container(hydra_compose(name), resolve=False)
    theirs.pop("hydra", None)
    assert OmegaConf.to_container(compose(name), resolve=False) == theirs


def test_compose_refuses_a_group_given_as_a_string_in_overrides():
    """``overrides={"algo": "iql"}`` (the command line's spelling) replaced the algo group by the string "iql" and
    training failed with an AttributeError deep inside; ``groups`` picks the option. A dr entry may be a level name."""
    from robopretrain.build import compose

    with pytest.raises(ValueError, match=r"would replace config group 'algo' by a string; pick its option with "
                                         r"groups=\{'algo': 'iql'\}"):
        compose("robopretrain", overrides={"algo": "iql"})
    assert compose("robopretrain", {"algo": "iql"}).algo.name == "iql"
    assert compose("finetune", overrides={"dr": "train"}).dr == "train"


def test_an_envs_float_camera_gets_the_envs_advice_from_check_env_fits(monkeypatch):
    """check_env_fits reads the env's shapes as an env's (spec_from_shapes(env=True)): a float camera is told what
    the env should return, not a data file's rewrite (a 4-axis transpose, data.image_size)."""
    from types import SimpleNamespace

    from robopretrain import evaluation
    from robopretrain.envs.target import Target

    class FloatCameraEnv:
        def reset(self, seed=None):
            return {"cam": np.zeros((3, 16, 16), np.float32), "task_id": 0}, {}

        def close(self):
            pass

    monkeypatch.setattr(evaluation, "agent_env", lambda *args: FloatCameraEnv())
    agent = SimpleNamespace(spec=SimpleNamespace(low_dim_keys=(), rgb_keys=("cam",), num_tasks=0), act_dim=2)
    with pytest.raises(ValueError, match=r"target 'Reach': rgb part 'cam' is float32 \(3, 16, 16\).*; return uint8 "
                                         r"frames \(0-255\) from the env") as err:
        build.check_env_fits(agent, Target(name="Reach", task_id=0))
    assert "transpose" not in str(err.value)


def test_stage_3_batches_hold_one_reward_function(caplog):
    """Offline data rewarded by a learned reward and online steps by the env's (or the reverse) are refused when the
    offline data enters the batches, warned at offline_ratio 0, and fine when both are the same function; the
    pipeline's call (no model online) is the env's reward online."""
    import logging

    env_data = _info("env.hdf5", {"env_name": "Reach"})
    learned = _info("rel.hdf5", {"learned_reward": {"source": "src.hdf5", "normalize": "none"}})
    assert build.refuse_learned_reward_online(env_data, 0.5) is None  # the pipeline's call: env reward both ways
    assert build.refuse_learned_reward_online(learned, 0.5, online_model=True) is None
    with pytest.raises(ValueError, match=r"rel.hdf5: its rewards were written by a learned reward .*from src.hdf5.* "
                                         r"online.offline_ratio=0.5 every batch would mix"):
        build.refuse_learned_reward_online(learned, 0.5)
    with pytest.raises(ValueError, match=r"env.hdf5: its rewards are the env's own \(it records no learned "
                                         r"reward; a copy relabelled by an older robopretrain.reward_model records "
                                         r"none either: relabel it again with this version\), while stage 3 rewards "
                                         r"its online steps with the learned reward .*stage3.offline_ratio=0.25 every batch"):
        build.refuse_learned_reward_online(env_data, 0.25, "stage3.offline_ratio", online_model=True)
    with caplog.at_level(logging.WARNING, logger="robopretrain.build"):
        said = build.refuse_learned_reward_online(env_data, 0.0, online_model=True)
    assert "only the critic's start comes from the env's reward" in said and said in caplog.text
    assert "from the learned reward" in build.refuse_learned_reward_online(learned, 0.0)


def _info(path: str, env_args: dict):
    """A file's metadata as read_info gives it, for the parts these checks read (path, env_args)."""
    from robopretrain.data.hdf5 import DatasetInfo

    return DatasetInfo(path, total=0, env_args=env_args, demos=[], masks={}, tasks={}, obs_specs={}, action_dim=1)


def test_new_agent_reads_obs_normalize_and_min_std_from_the_config(caplog):
    """obs.normalize=false leaves the low-dim parts as they are (mean 0, std 1 buffers); by default the data's mean and
    std are used, each std at least obs.min_std (a setting read from the config, whose other obs keys may be absent)."""
    spec = ObsSpec(low_dim=(("proprio", 2),))
    obs = np.stack([np.linspace(10.0, 20.0, 50), np.full(50, 3.0)], 1).astype(np.float32)
    data = OfflineDataset({"proprio": obs}, np.zeros((50, 1)), np.zeros(50), {"proprio": obs}, np.zeros(50), seed=0)

    def encoder(obs_cfg: dict) -> torch.nn.Module:
        cfg = OmegaConf.create({"algo": {"name": "bc"}, "encoder": {}, "obs": obs_cfg, "seed": 0})
        return build.new_agent(cfg, spec, 1, data, torch.device("cpu")).critic_encoder

    import logging

    with caplog.at_level(logging.WARNING, logger="robopretrain.build"):
        encoder({"normalize": False})  # no floor asked: nothing to say
    assert "min_std" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="robopretrain.build"):
        off = encoder({"normalize": False, "min_std": 0.5})
    assert "obs.min_std=0.5 takes no effect with obs.normalize=false" in caplog.text
    assert off.mean.tolist() == [0.0, 0.0] and off.std.tolist() == [1.0, 1.0]
    floored = encoder({"min_std": 2.0})  # normalize: the default, on
    assert floored.mean.tolist() == pytest.approx([15.0, 3.0])
    from robopretrain.nets.obs_encoder import STD_EPS

    # (the constant dimension: centred with std 1, or the floor where it is above that)
    assert floored.std.tolist() == pytest.approx([float(obs[:, 0].std()) + STD_EPS, 2.0 + STD_EPS], abs=1e-5)


def test_a_data_task_whose_env_does_not_fit_the_agent_is_left_out_of_the_evaluation_with_a_warning(caplog):
    """Stage 2 evaluates the data's own tasks where their env fits; one that does not is dropped (False), said once,
    not evaluated into a crash."""
    import logging

    fits = Agent(ObsSpec(low_dim=(("proprio", 7), ("object", 18))), 4, "bc")
    other = Agent(ObsSpec(low_dim=(("proprio", 3),)), 4, "bc")  # a 3-D proprio: another robot's data
    with caplog.at_level(logging.WARNING):
        assert build.env_fits_or_log(fits, build.as_target("Reach")) is True
        assert not caplog.records
        assert build.env_fits_or_log(other, build.as_target("Reach")) is False
    assert "no evaluation on Reach, the data's own task: its env does not fit the agent" in caplog.text


@pytest.mark.parametrize("low, high, units, sent", [
    (0.0, 1.0, None, 0.5),  # unmapped: the agent's zero was the Box's low end (a user's session)
    (-2.0, 2.0, None, 0.0),
    (0.0, 3.0, {"low": [0.0] * 4, "high": [3.0] * 4}, 1.5),  # rescaled: the agent's zero, the middle already
])
def test_the_probe_step_sends_the_middle_of_the_envs_action_range(low, high, units, sent):
    import _fake_envs as fake

    from robopretrain.agent import Agent
    from robopretrain.build import check_env_fits
    from robopretrain.data.spec import ObsSpec
    from robopretrain.envs.target import as_target

    target = {"name": "box", "env_id": "_fake_envs:BoxActionsEnv", "task_id": 0,
              "env_kwargs": {"low": low, "high": high}, **({"action_normalization": units} if units else {})}
    agent = Agent(ObsSpec(low_dim=(("x", 2),)), 4, "bc", {"actor_hidden": [8]})
    fake.BoxActionsEnv.received.clear()
    check_env_fits(agent, as_target(target))
    assert len(fake.BoxActionsEnv.received) == 1
    np.testing.assert_allclose(fake.BoxActionsEnv.received[0], [sent] * 4, atol=1e-6)


@pytest.mark.parametrize("units", [None, {"low": [0.0], "high": [3.0]}])
def test_an_env_whose_one_action_is_a_scalar_box_takes_the_agents_1d_actions(units):
    """Box(0, 3, shape=()) was refused as "an agent of another robot" (shape () against (1,)); the agent's one
    action dimension reaches it as a scalar, in the env's units."""
    import _fake_envs as fake

    from robopretrain.agent import Agent
    from robopretrain.build import check_env_fits
    from robopretrain.data.spec import ObsSpec
    from robopretrain.envs.target import as_target, make_env

    target = as_target({"name": "scalar", "env_id": "_fake_envs:ScalarActionEnv", "task_id": 0,
                        **({"action_normalization": units} if units else {})})
    fake.ScalarActionEnv.received.clear()
    check_env_fits(Agent(ObsSpec(low_dim=(("x", 2),)), 1, "bc", {"actor_hidden": [8]}), target)
    env = make_env(target)
    assert env.action_space.shape == (1,)
    env.reset(seed=0)
    env.step(np.array([0.5], np.float32))  # the agent's units: 2.25 of [0, 3] when rescaled, else 0.5 as it is
    assert fake.ScalarActionEnv.received == pytest.approx([1.5, 2.25 if units else 0.5])  # the probe: the middle


@pytest.mark.parametrize("num_tasks, noted", [(1, False), (2, True)])
def test_stage2_says_nothing_of_a_one_slot_agents_gym_target_by_another_name(tmp_path, caplog, num_tasks, noted):
    """A one-slot agent's gym target named by the user ('my_reach') shares slot 0 with the data's task ('reach')
    as a rule: no note. With two slots the same target, given the only task's slot, is said to act as that task."""
    from _stages import stage2_config
    from robopretrain.train import run as stage2

    import _fake_envs as fake

    data = fake.write_robosuite_demos(tmp_path / "reach.hdf5", episodes=2, tasks=(("reach", 0),))
    mine = {"name": "my_reach", "env_id": "_fake_envs:RobosuiteLikeEnv", "max_episode_steps": 4}
    with caplog.at_level(logging.WARNING):
        stage2(stage2_config(data, tmp_path / "run", algo="bc", steps=2,
                             obs={"low_dim": ["robot0_eef_pos"], "rgb": [], "num_tasks": num_tasks},
                             train={"eval_targets": [mine], "eval_episodes": 1}))
    said = "train.eval_targets: target 'my_reach' acts in slot 0 of the task one-hot, where the agent learnt task(s) " \
        "['reach']"
    assert (said in caplog.text) == noted


@pytest.mark.parametrize("dr, said", [("none", False), ("train", True)])
def test_stage2_says_its_randomization_does_not_reach_a_gym_targets_evaluations(tmp_path, caplog, dr, said):
    """dr randomizes sim_envs targets only: a user env named in train.eval_targets is evaluated nominal, and said."""
    from _stages import stage2_config
    from robopretrain.train import run as stage2

    import _fake_envs as fake

    data = fake.write_robosuite_demos(tmp_path / "reach.hdf5", episodes=2, tasks=(("reach", 0),))
    mine = {"name": "my_reach", "env_id": "_fake_envs:RobosuiteLikeEnv", "max_episode_steps": 4}
    with caplog.at_level(logging.WARNING):
        stage2(stage2_config(data, tmp_path / "run", algo="bc", steps=2, dr=dr,
                             obs={"low_dim": ["robot0_eef_pos"], "rgb": []},
                             train={"eval_targets": [mine], "eval_episodes": 1}))
    assert ("sim_envs targets only; stage 2's evaluations of 'my_reach' run nominal" in caplog.text) == said


def test_stage2_dann_renders_the_users_env_of_the_datas_task_or_transfer_dann_task(tmp_path):
    """DANN's target frames come from the evaluation target named as the data's task, or from transfer.dann.task
    (a gym target without task_id, slotted as stage 3 does); else the refusal names transfer.dann.task."""
    from _stages import stage2_config
    from robopretrain.train import run as stage2

    import _fake_envs as fake

    data = fake.write_robosuite_demos(tmp_path / "mine.hdf5", episodes=2, tasks=(("my_reach", 0),))
    mine = {"name": "my_reach", "env_id": "_fake_envs:RobosuiteLikeEnv", "max_episode_steps": 4}
    gap = {"name": "goal_gap", "source": {"env_kwargs": {"goal": [0.0, 0.0, 0.0]}},
           "target": {"env_kwargs": {"goal": [0.2, 0.2, 0.2]}}, "target_frames": 4}
    obs = {"low_dim": ["robot0_eef_pos"], "rgb": ["agentview_image"]}

    def run(name, eval_targets, dann):
        return stage2(stage2_config(data, tmp_path / name, algo="cql", steps=2, obs=obs, gap=gap,
                                    train={"eval_targets": eval_targets, "eval_episodes": 1},
                                    transfer={"dann": {"enabled": True, **dann}}))

    for name, eval_targets, dann in (("named", [mine], {}), ("task", [], {"task": mine})):
        run(name, eval_targets, dann)
        with np.load(tmp_path / name / "transfer" / "dann_target.npz") as z:
            assert z["observations/agentview_image"].shape[0] == 4, name
    with pytest.raises(ValueError, match=r"transfer.dann.task is not set, so DANN renders the data's first task "
                                         r"'my_reach', which is neither a sim_envs task nor a target in "
                                         r"train.eval_targets: .*set transfer.dann.task to a sim_envs task name or "
                                         r"to your env as a target"):
        run("none", [], {})
    from robopretrain.train import dann_target  # a multi-task agent: the user's entry lacks its slot, said so

    with pytest.raises(ValueError, match=r"^transfer.dann.task=\{.*\}: target 'my_reach': a gym target of a "
                                         r"multi-task agent needs task_id"):
        dann_target(mine, "a", [], {"a": 0, "b": 1}, 2)


def test_obs_map_entries_for_parts_the_agent_does_not_observe_are_warned(caplog):
    from robopretrain.data.spec import ObsSpec

    spec = ObsSpec(low_dim=(("proprio", 3),), rgb=(("agentview_image", (16, 16, 3)),), num_tasks=0)
    with caplog.at_level(logging.WARNING):
        build.warn_unused_obs_map({"proprio": "joint_pos", "agentview_image": "cam"}, spec)
        build.warn_unused_obs_map(None, spec)
        assert not caplog.records
        build.warn_unused_obs_map({"propio": "joint_pos", "proprio": "q"}, spec, "target.obs_map")
    assert "target.obs_map names part(s) ['propio'] that the agent does not observe (its parts: ['proprio', " \
        "'agentview_image'])" in caplog.text


def test_frozen_feature_statistics_cover_every_batch_of_rows():
    """The statistics are taken over feature_batch rows at a time: every batch counts, not the first only."""
    from types import SimpleNamespace

    rows = torch.stack([torch.arange(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)], 1)
    seen = {}
    agent = SimpleNamespace(normalizes_features=True, settings=SimpleNamespace(feature_batch=3),
                            frozen_features=lambda obs: obs["x"],
                            set_feature_normalization=lambda mean, std: seen.update(mean=mean, std=std))
    data = type("Data", (), {"__len__": lambda self: 10,
                             "get": lambda self, idx: {"observations": {"x": rows[torch.as_tensor(idx)]}}})()
    assert build.fit_feature_normalization(agent, data)
    assert seen["mean"].tolist() == [4.5, 0.0]
    assert seen["std"][0] == pytest.approx(float(rows[:, 0].std(unbiased=False)), 1e-3)
    assert seen["std"][1] == 1.0  # a feature never active (a dead ReLU): centred, not scaled 1000x


def test_a_slot_shared_on_purpose_names_each_task_with_its_own_file(caplog):
    with caplog.at_level(logging.INFO, logger="robopretrain.build"):
        build.check_task_slots({"reach": 0}, "prior.hdf5", {"stack": 0}, "mine.hdf5", explicit=True, num_tasks=4)
    assert "task one-hot slot 0: task 'reach' of prior.hdf5 and task 'stack' of mine.hdf5 are one task to the " \
        "agent" in caplog.text


def test_the_decision_transformer_alone_is_warned_of_a_learned_reward_in_its_data():
    """DT learns to reach returns of the file's reward and is evaluated with the env's: warned for a relabelled file
    only, and only for DT (the value-based learners use the learned reward alone)."""
    from types import SimpleNamespace

    learned = SimpleNamespace(path="r.hdf5", learned_reward={"source": "d.hdf5"})
    env = SimpleNamespace(path="d.hdf5", learned_reward=None)
    assert build.warn_learned_reward("dt", learned) and not build.warn_learned_reward("dt", env)
    assert not build.warn_learned_reward("iql", learned)


def test_a_files_shared_task_slot_is_refused_naming_a_free_slot_above_its_tasks():
    """Two tasks of one file in one slot: refused, with a free slot above every task's as the way out (not one below
    the largest, which another task holds)."""
    with pytest.raises(ValueError, match=r"f.hdf5: tasks 'a', 'b' all have task_id 0: .* \(e.g. 6, with "
                                         r"obs.num_tasks > 6\), select one with data.tasks=\[a\], or set "
                                         r"data.task_id=0"):
        build.check_file_task_slots("f.hdf5", {"a": 0, "b": 0, "c": 5})
    build.check_file_task_slots("f.hdf5", {"a": 0, "c": 5})  # a slot each: nothing to say


def test_the_task_slots_are_read_from_a_quiet_demo_selection(monkeypatch):
    """data_task_ids selects the demos as the loader will, without saying what it leaves out: the loader says it
    (said twice otherwise)."""
    from types import SimpleNamespace

    seen: dict = {}
    monkeypatch.setattr(build, "selected_demos", lambda info, **kw: seen.update(kw) or [])
    info = SimpleNamespace(path="f.hdf5", env_args={}, tasks={})
    assert build.data_task_ids(info, OmegaConf.create({"skip_short_demos": True})) == {}
    assert seen["quiet"] is True and seen["skip_short"] is True
