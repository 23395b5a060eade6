"""Stage 3 with a preference-learned reward online (``reward_model=``, ``finetune/learned_reward.py``): the online
steps enter the buffer with the learned reward, in the offline file's relabelled units, and every mismatch between
the model, the agent and the data is refused before any online step."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _stages import collect_sim, stage2_config, stage3_config
from finetune.learned_reward import OnlineLearnedReward, load_online_reward
from finetune.train import run as finetune
from robopretrain.build import compose
from robopretrain.checkpoint import load_latest
from robopretrain.data.hdf5 import load_transitions, read_info
from robopretrain.data.keys import TASK_ID
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.action_units import ActionNormalization
from robopretrain.reward_model import RewardEnsemble, load_reward_model, model_digest
from robopretrain.reward_model import run as learn_reward
from robopretrain.train import run as stage2

DENSE = {"reward_scale": 1.0, "reward_bias": 0.0, "sparse_reward": False}  # the learned reward is dense
OBS = {"low_dim": ["proprio", "object"], "rgb": []}


def reward_run(data: Path, out: Path, seed: int = 0, normalize: str = "standard") -> dict:
    cfg = compose("reward_model", overrides={
        "seed": seed, "num_threads": 1, "output_dir": str(out), "data": {"path": str(data)},
        "teacher": {"num_pairs": 60, "segment_length": 5},
        "model": {"ensemble": 2, "hidden": [16], "steps": 20, "batch_size": 16}, "relabel": {"normalize": normalize}})
    return learn_reward(cfg, out)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """Reach demos, a reward model learned on them (scripted teacher) with its standard-normalised relabelled copy,
    and a CQL agent trained on that copy (dense rewards, 10 updates)."""
    root = tmp_path_factory.mktemp("learned")
    demos = collect_sim(root / "reach.hdf5", ["Reach"])
    report = reward_run(demos, root / "rm")
    relabelled = Path(report["relabelled"])
    agent = stage2(stage2_config(relabelled, root / "s2", algo="cql", steps=10, obs=OBS, width=32, algo_cfg=DENSE))
    return SimpleNamespace(root=root, demos=demos, model=root / "rm" / "reward_model.pt", relabelled=relabelled,
                           agent=agent)


def online_cfg(learned, out: Path, **top):
    return stage3_config(learned.agent, out, "Reach", env_steps=60, width=32, algo_cfg=DENSE,
                         data_cfg={"path": str(top.pop("data", learned.relabelled))},
                         online={"calibration_batch": 32}, **top)


def test_online_steps_enter_the_buffer_with_the_learned_reward_in_the_offline_files_units(learned, tmp_path):
    finetune(online_cfg(learned, tmp_path / "s3", reward_model=str(learned.model)))
    ckpt = load_latest(tmp_path / "s3" / "checkpoints")
    assert ckpt.meta["reward_model"] == str(learned.model)
    assert ckpt.meta["fingerprint"]["inputs"]["reward_model"] is not None  # another model's file: not resumed
    online = ckpt.state["sampler"]["online"]
    n = int(online["size"])
    assert n >= 40  # whole episodes (a truncated 50-step one, or more shorter ones)
    obs = {k: v.numpy()[:n] for k, v in online["data"]["observations"].items()}
    actions = online["data"]["actions"].numpy()[:n]
    stored = online["data"]["rewards"].numpy()[:n]
    # by hand: the ensemble mean, then the file's recorded standardisation (reward_scale 1, bias 0 after it)
    model, spec = load_reward_model(learned.model)
    record = read_info(learned.relabelled).env_args["learned_reward"]
    assert record["normalize"] == "standard" and record["scale"] != 1.0 and record["offset"] != 0.0
    with torch.no_grad():
        raw = model({k: torch.from_numpy(obs[k]).float() for k in ("proprio", "object")} |
                    {TASK_ID: torch.from_numpy(obs[TASK_ID]).long()}, torch.from_numpy(actions)).mean(0).numpy()
    np.testing.assert_allclose(stored, (raw - record["offset"]) / record["scale"], rtol=1e-5, atol=1e-5)
    assert len(np.unique(stored)) > 10  # not the env's sparse {0, 1}

    # the same function as the relabelled file's: the online reward of the file's own steps is its stored reward
    trans = load_transitions(learned.relabelled, ["proprio", "object"], low_dim=["proprio", "object"])
    rewarder = load_online_reward(learned.model, SimpleNamespace(
        stored_spec=lambda: spec, act_dim=model.act_dim, action_normalization=None), read_info(learned.relabelled))
    np.testing.assert_allclose(rewarder({**trans.obs, TASK_ID: np.asarray(trans.task_ids)}, trans.actions),
                               trans.rewards, rtol=1e-5, atol=1e-5)


def test_two_reward_functions_in_one_batch_are_refused(learned, tmp_path):
    """The env-reward file beside learned online rewards, and a file relabelled by another model."""
    with pytest.raises(ValueError, match=r"reach.hdf5: its rewards are the env's own \(.*\), while stage 3 "
                                         r"rewards its online steps with the learned reward .*offline_ratio=0.5 every batch would mix"):
        finetune(online_cfg(learned, tmp_path / "a", reward_model=str(learned.model), data=learned.demos))
    other = reward_run(learned.demos, tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match=r"reward_model=.*other.* is not the model that relabelled the offline data"):
        finetune(online_cfg(learned, tmp_path / "b", reward_model=str(tmp_path / "other")))  # its run folder
    with pytest.raises(ValueError, match=r"reward_model=.*nowhere.pt: no such file"):
        finetune(online_cfg(learned, tmp_path / "c", reward_model=str(tmp_path / "nowhere.pt")))
    assert not any((tmp_path / d / "checkpoints").exists() for d in "abc")
    assert Path(other["relabelled"]).is_file()


def test_stage2_refuses_a_mix_of_the_env_reward_and_a_learned_one(learned, tmp_path):
    """data.path with the env's rewards beside a data.mix copy relabelled by a reward model (the pipeline's
    adaptation of a relabelled target) trained on two reward functions in every batch without a word (a new user's
    finding); stage 3 refused the same mix. BC reads no rewards: not refused."""
    mix = {"mix": {"path": str(learned.relabelled), "fraction": 0.5}}
    with pytest.raises(ValueError, match=r"data.path=.*reach.hdf5 holds the env's own rewards, data.mix.path=.*"
                                         r"relabelled.hdf5 a learned reward \(model [0-9a-f]{12}, normalize standard"):
        stage2(stage2_config(learned.demos, tmp_path / "cql", algo="cql", steps=2, obs=OBS, data_cfg=mix))
    assert not (tmp_path / "cql" / "checkpoints").exists()
    stage2(stage2_config(learned.demos, tmp_path / "bc", algo="bc", steps=2, obs=OBS, data_cfg=mix))
    alone = {"mix": {"path": str(learned.relabelled), "fraction": 1.0}}  # every batch from the mix: one function
    stage2(stage2_config(learned.demos, tmp_path / "alone", algo="cql", steps=2, obs=OBS, data_cfg=alone,
                         algo_cfg=DENSE))
    same = {"mix": {"path": str(learned.relabelled), "fraction": 0.5}}  # one model's copy on both sides: one function
    stage2(stage2_config(learned.relabelled, tmp_path / "same", algo="cql", steps=2, obs=OBS, data_cfg=same,
                         algo_cfg=DENSE))


def fake_agent(spec: ObsSpec, act_dim: int = 2, units: ActionNormalization | None = None) -> SimpleNamespace:
    return SimpleNamespace(stored_spec=lambda: spec, act_dim=act_dim, action_normalization=units)


def saved_model(path: Path, spec: ObsSpec, act_dim: int = 2, units: ActionNormalization | None = None,
                slots: list[int] | None = None) -> Path:
    model = RewardEnsemble(spec, act_dim, ensemble=2, hidden=(8,))
    torch.save({"state_dict": model.state_dict(), "spec": spec.to_dict(), "act_dim": act_dim,
                "settings": {"ensemble": 2, "hidden": [8]},
                "action_normalization": None if units is None else units.to_dict(),
                **({"task_slots": slots} if slots is not None else {})}, path)
    return path


def test_online_steps_are_scored_in_the_task_slot_the_model_learnt(tmp_path, learned):
    """A reward model learnt on a file without task ids (slot 0, as it relabelled the offline copy) scored the
    online steps of an agent acting in slot 13 in slot 13, an input it never saw: the online and offline halves of
    every batch came from two reward functions (a new user's finding). One slot learnt: the steps are scored in it;
    several, not the agent's: refused; a model from before slots were recorded: the steps' own."""
    assert load_reward_model(learned.model)[0].task_slots == [0]  # Reach's demos: recorded by the run
    spec = ObsSpec(low_dim=(("x", 2),), num_tasks=14)
    rng = np.random.default_rng(0)
    obs = {"x": rng.normal(size=(5, 2)).astype(np.float32), TASK_ID: np.full(5, 13)}
    actions = rng.uniform(-1, 1, (5, 2)).astype(np.float32)

    def scored(slots, slot):
        model = load_online_reward(saved_model(tmp_path / f"m{slots}.pt", spec, slots=slots), fake_agent(spec),
                                   slot=slot)
        return model(obs, actions), model

    own, model = scored([0], 13)
    in_slot = {**obs, TASK_ID: np.zeros(5, np.int64)}
    np.testing.assert_allclose(own, OnlineLearnedReward(model.model, model.path)(in_slot, actions), rtol=1e-6)
    assert not np.allclose(own, OnlineLearnedReward(model.model, model.path)(obs, actions))  # slot 13's differ
    assert scored([0, 13], 13)[1].slot is None and scored(None, 13)[1].slot is None  # the steps' own slot
    with pytest.raises(ValueError, match=r"learnt rewards in task slots \[0, 2\], the agent acts in slot 13"):
        scored([0, 2], 13)
    # with the offline file it relabelled: the slot that file's demos of the target's task were relabelled in
    from robopretrain.data.hdf5 import DatasetInfo

    relabelled = DatasetInfo("r.hdf5", total=0, env_args={"learned_reward": {"normalize": "none"}}, demos=[],
                             masks={}, tasks={"A": 0, "B": 5}, obs_specs={}, action_dim=2)
    path = saved_model(tmp_path / "masked.pt", spec, slots=[0])  # learnt on task A's demos alone (data.tasks)
    assert load_online_reward(path, fake_agent(spec), relabelled, slot=13, task="B").slot == 5
    assert load_online_reward(path, fake_agent(spec), relabelled, slot=5, task="B").slot is None  # its own
    assert load_online_reward(path, fake_agent(spec), None, slot=13, task="B").slot == 0  # no file: the model's


def test_a_model_that_does_not_fit_the_agent_is_refused_by_name(tmp_path):
    spec = ObsSpec(low_dim=(("proprio", 3), ("object", 2)), num_tasks=4)
    path = saved_model(tmp_path / "m.pt", spec)
    load_online_reward(path, fake_agent(ObsSpec(low_dim=(("object", 2), ("proprio", 3), ("extra", 1)), num_tasks=4)))
    cases = [(fake_agent(ObsSpec(low_dim=(("proprio", 3),), num_tasks=4)), r"reads low-dim part\(s\) \['object'\], "
              r"which the agent does not observe"),
             (fake_agent(ObsSpec(low_dim=(("proprio", 3), ("object", 3)), num_tasks=4)), r"object: model 2, agent 3"),
             (fake_agent(ObsSpec(low_dim=(("proprio", 3), ("object", 2)), num_tasks=5)), r"task one-hot has 4 slots, "
              r"the agent's 5"),
             (fake_agent(spec, act_dim=3), r"scores 2-dim actions, the agent acts in 3")]
    for agent, message in cases:
        with pytest.raises(ValueError, match=message):
            load_online_reward(path, agent)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk.pt: not a reward model"):
        load_online_reward(tmp_path / "junk.pt", fake_agent(spec))


def test_the_agents_actions_are_scored_in_the_models_units(tmp_path):
    """A model trained on actions converted from [0, 8] scores an agent acting in [2, 6]'s units after
    re-expressing them: the same robot action, the same reward."""
    spec = ObsSpec(low_dim=(("x", 1),))
    wide, narrow = ActionNormalization((0.0,), (8.0,)), ActionNormalization((2.0,), (6.0,))
    rewarder = load_online_reward(saved_model(tmp_path / "m.pt", spec, 1, wide), fake_agent(spec, 1, narrow))
    obs = {"x": np.zeros((3, 1), np.float32)}
    agent_actions = np.array([[-1.0], [0.0], [1.0]], np.float32)  # robot actions 2, 4, 6
    model_actions = np.array([[-0.5], [0.0], [0.5]], np.float32)  # the same in [0, 8]'s units
    same_units = OnlineLearnedReward(model=rewarder.model, path=rewarder.path, agent_units=wide)  # taken as given
    np.testing.assert_allclose(rewarder(obs, agent_actions), same_units(obs, model_actions), rtol=1e-6)
    assert not np.allclose(rewarder(obs, agent_actions), same_units(obs, agent_actions))


def test_a_relabelled_file_without_its_constants_or_by_another_model_is_refused(tmp_path):
    spec = ObsSpec(low_dim=(("x", 1),))
    path = saved_model(tmp_path / "m.pt", spec)
    digest = model_digest(load_reward_model(path)[0])

    def info(record):
        return _info("r.hdf5", {"learned_reward": record})

    rewarder = load_online_reward(path, fake_agent(spec), info({"normalize": "standard", "offset": 2.0, "scale": 4.0,
                                                               "model_digest": digest}))
    assert (rewarder.offset, rewarder.scale) == (2.0, 4.0)
    obs, actions = {"x": np.ones((2, 1), np.float32)}, np.zeros((2, 2), np.float32)
    raw = OnlineLearnedReward(rewarder.model, path)(obs, actions)
    np.testing.assert_allclose(rewarder(obs, actions), (raw - 2) / 4, rtol=1e-6)
    with pytest.raises(ValueError, match=r"is not the model that relabelled the offline data r.hdf5"):
        load_online_reward(path, fake_agent(spec), info({"normalize": "none", "offset": 0.0, "scale": 1.0,
                                                         "model_digest": "0" * 64}))
    with pytest.raises(ValueError, match=r"r.hdf5: its learned rewards were normalised \(relabel.normalize=minmax\) "
                                         r"with constants it does not record"):
        load_online_reward(path, fake_agent(spec), info({"normalize": "minmax", "model_digest": digest}))
    with pytest.raises(ValueError, match=r"normalised \(relabel.normalize=standard\) with constants it does not "
                                         r"record"):  # half of them is none of them
        load_online_reward(path, fake_agent(spec), info({"normalize": "standard", "offset": 1.0,
                                                         "model_digest": digest}))


def test_what_an_older_file_or_model_cannot_say_is_warned(tmp_path, caplog):
    """A file relabelled before the digest was recorded, and a model saved before its action units were: both are
    used (the rewards as they are, the actions as the agent's) with a warning; a current pair is not warned about."""
    import logging

    spec = ObsSpec(low_dim=(("x", 1),))
    path = saved_model(tmp_path / "m.pt", spec)
    digest = model_digest(load_reward_model(path)[0])
    current = _info("r.hdf5", {"learned_reward": {"normalize": "none", "offset": 0.0,
                                                                          "scale": 1.0, "model_digest": digest}})
    with caplog.at_level(logging.WARNING, logger="finetune.learned_reward"):
        load_online_reward(path, fake_agent(spec), current)
    assert caplog.text == ""
    older = _info("r.hdf5", {"learned_reward": {"normalize": "none"}})
    with caplog.at_level(logging.WARNING, logger="finetune.learned_reward"):
        plain = load_online_reward(path, fake_agent(spec), older)  # an older file, not normalised
    assert (plain.offset, plain.scale) == (0.0, 1.0)
    assert "r.hdf5: its learned rewards record no model digest" in caplog.text and "action units" not in caplog.text
    caplog.clear()
    saved = torch.load(path, weights_only=True)
    del saved["action_normalization"]  # a model saved before the units were recorded
    torch.save(saved, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING, logger="finetune.learned_reward"):
        load_online_reward(tmp_path / "old.pt", fake_agent(spec), current)
    assert "records no action units" in caplog.text and "digest" not in caplog.text


def test_the_digest_names_the_weights(tmp_path):
    spec = ObsSpec(low_dim=(("x", 1),))
    torch.manual_seed(0)
    a = RewardEnsemble(spec, 2, ensemble=2, hidden=(8,))
    loaded, _ = load_reward_model(saved_model(tmp_path / "m.pt", spec))
    loaded.load_state_dict(a.state_dict())
    assert model_digest(loaded) == model_digest(a)
    with torch.no_grad():
        next(a.nets[1].parameters()).view(-1)[0] += 1e-6
    assert model_digest(loaded) != model_digest(a)


def _info(path: str, env_args: dict):
    """A file's metadata as read_info gives it, for the parts these checks read (path, env_args)."""
    from robopretrain.data.hdf5 import DatasetInfo

    return DatasetInfo(path, total=0, env_args=env_args, demos=[], masks={}, tasks={}, obs_specs={}, action_dim=1)
