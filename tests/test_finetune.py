"""Stage 3 (``finetune.train.run``) from stage-2 checkpoints, for every kind of agent: the online loop, its metrics and
online returns-to-go, parallel envs in workers or in process, exact resumption after a kill, the NaN guard, camera
agents in every encoder mode, a custom gymnasium target, and checkpoints that do not fit.

Every stage-2 checkpoint here is written by stage 2 itself (``robopretrain.train.run``, a few updates)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import _fake_envs as fake
from _compare import Killed, assert_same, die_after_first_checkpoint, returns_by_hand
from _stages import collect_sim, stage2_config, stage3_config
from test_loggers import tensorboard_events
from finetune.train import run as finetune
from robopretrain.agent import Agent
from robopretrain.checkpoint import CheckpointError, checkpoint_name, load_agent, load_checkpoint, load_latest
from robopretrain.data.hdf5 import DatasetError
from robopretrain.metrics import read_jsonl
from robopretrain.train import run as stage2

GAMMA = 0.99
SIZE = 32
EPISODE = 20  # Reach's time limit shortened from 50 steps for the camera runs
STATE_OBS = {"low_dim": ["proprio", "object"], "rgb": []}
CAMERA_OBS = {"low_dim": ["proprio"], "rgb": ["agentview_image"]}
OBS_MAP = {"eef_pos": fake.EEF, "gripper_qpos": fake.GRIPPER}
ROBOSUITE_TARGET = {"name": "reach", "env_id": "_fake_envs:RobosuiteLikeEnv", "task_id": 0, "max_episode_steps": 10,
                    "obs_map": OBS_MAP}


@pytest.fixture(scope="module")
def reach_hdf5(tmp_path_factory) -> Path:
    return collect_sim(tmp_path_factory.mktemp("data") / "reach.hdf5", ["Reach", "PressButton"])


@pytest.fixture(scope="module")
def stage2_state(reach_hdf5, tmp_path_factory) -> Path:
    """A CQL agent on proprio + object (10 updates), as stage 2 writes it."""
    return stage2(stage2_config(reach_hdf5, tmp_path_factory.mktemp("s2") / "run", algo="cql", steps=10,
                                obs=STATE_OBS, width=32))


def state_cfg(stage2_ckpt: Path, data: Path, out: Path, **extra):
    """Cal-QL from the CQL checkpoint on Reach (the file's Reach demos as offline data), 120 env steps."""
    online = {"eval_every": 60, "log_every": 20, "checkpoint_every": 50, "calibration_batch": 64,
              **extra.pop("online", {})}
    return stage3_config(stage2_ckpt, out, "Reach", env_steps=120, data_cfg={"path": str(data)}, online=online,
                         width=32, **{"dr": "train_all", **extra})


@pytest.fixture(scope="module")
def finetuned(reach_hdf5, stage2_state, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    return out, finetune(state_cfg(stage2_state, reach_hdf5, out))


def test_resume_false_in_a_used_folder_starts_a_really_fresh_run(reach_hdf5, stage2_state, tmp_path, caplog):
    """resume=false says the folder is overwritten; it kept the old run's checkpoints, and keeping the two newest
    by env step pruned the fresh run's own (its latest file then named a deleted folder). Stage 2 alike."""
    import logging

    from robopretrain.checkpoint import checkpoint_name, load_latest
    from robopretrain.train import run as train

    out = tmp_path / "s3"
    finetune(state_cfg(stage2_state, reach_hdf5, out, online={"checkpoint_every": 30}))  # ckpts at 90 and 120
    (out / "transfer").mkdir()  # a cache another agent collected
    with caplog.at_level(logging.WARNING, logger="robopretrain"):
        finetune(state_cfg(stage2_state, reach_hdf5, out, resume=False,
                           online={"checkpoint_every": 30, "eval_every": 60, "env_steps": 60}))
    assert "resume=false: removed the previous run's transfer" in caplog.text  # before the caches are collected
    assert "resume=false: removed the previous run's checkpoints, metrics.jsonl" in caplog.text
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("ckpt_*"))
    assert steps[-1] == 60 and len(steps) == 2 and not (out / "transfer").exists()  # the fresh run's only
    assert load_latest(out / "checkpoints").step == 60
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("env_steps", r.get("step", 0)) for r in rows) == 60  # no row of the old run's 120 steps

    s2 = tmp_path / "s2"
    train(stage2_config(reach_hdf5, s2, algo="cql", steps=4, obs=STATE_OBS, width=32, train={"checkpoint_every": 2}))
    train(stage2_config(reach_hdf5, s2, algo="cql", steps=2, obs=STATE_OBS, width=32, train={"checkpoint_every": 2},
                        resume=False))
    assert sorted(p.name for p in (s2 / "checkpoints").glob("ckpt_*")) == [checkpoint_name(2)]
    # cleared only after the start-up checks: a refused fresh run leaves the old one in place
    with pytest.raises(ValueError, match="unknown key"):
        train(stage2_config(reach_hdf5, s2, algo="cql", steps=2, obs=STATE_OBS, width=32, resume=False,
                            train={"checkpoint_every": 2, "eval_targets": [{"name": "Reach", "typo": 1}]}))
    assert sorted(p.name for p in (s2 / "checkpoints").glob("ckpt_*")) == [checkpoint_name(2)]
    # a source checkpoint inside the folder a fresh run clears is refused, not deleted before it is read (a stage-2
    # folder is refused as another stage's before that)
    with pytest.raises(ValueError, match=r"is a run folder of stage 2"):
        finetune(state_cfg(s2, reach_hdf5, s2, resume=False))
    assert sorted(p.name for p in (s2 / "checkpoints").glob("ckpt_*")) == [checkpoint_name(2)]
    with pytest.raises(ValueError, match=r"checkpoint=.* lies in this run folder .* resume=false removes"):
        finetune(state_cfg(out, reach_hdf5, out, resume=False))
    assert load_latest(out / "checkpoints").step == 60


def test_offline_data_that_does_not_fit_the_agent_is_refused_before_any_online_step(reach_hdf5, stage2_state,
                                                                                      tmp_path):
    """A file whose proprio is one dimension shorter than the agent's: one SpecMismatchError naming the file and the
    part, before the env runs (it failed at the first update, deep in the encoder)."""
    import shutil

    import h5py

    from robopretrain.data.spec import SpecMismatchError

    short = Path(shutil.copy(reach_hdf5, tmp_path / "short.hdf5"))
    with h5py.File(short, "r+") as f:
        for demo in f["data"].values():
            for group in ("obs", "next_obs"):
                cut = demo[group]["proprio"][:, :-1]
                del demo[group]["proprio"]
                demo[group]["proprio"] = cut
    with pytest.raises(SpecMismatchError, match=r"the offline data .*short.hdf5 does not fit the agent: low_dim part "
                                                r"'proprio'"):
        finetune(state_cfg(stage2_state, short, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_online_loop_logs_calibration_and_regret(finetuned, stage2_state):
    out, result = finetuned
    hist = result["history"]
    assert [h["env_steps"] for h in hist] == [0, 60, 120]
    for key in ("eval/success", "eval/return", "calib/offline_q_policy", "calib/offline_mc_return",
                "calib/offline_gap_policy"):
        assert all(h.get(key) is not None for h in hist), key
    assert hist[0]["train/cumulative_regret"] is None and hist[0]["episodes"] == 0  # no training episode yet
    assert "calib/online_gap_policy" in hist[-1] and "calib/online_mc_return" in hist[-1]
    assert 0.0 <= hist[-1]["train/cumulative_regret"] <= 1.0
    # regret and recent success are those of the finished training episodes the checkpoint counted
    successes = json.loads(load_latest(out / "checkpoints").state["online"]["successes"])
    assert hist[-1]["episodes"] == len(successes) > 0
    assert hist[-1]["train/cumulative_regret"] == pytest.approx(float(np.mean([1.0 - s for s in successes])))
    assert hist[-1]["train/episode_success"] == pytest.approx(float(np.mean(successes[-10:])))
    rows = read_jsonl(out / "metrics.jsonl")
    assert any("train/critic_loss" in r for r in rows)
    assert (out / "learning_curve.png").stat().st_size > 0
    saved = load_latest(out / "checkpoints").config  # the run's own config, written with each checkpoint
    assert saved.online.env_steps == 120 and saved.checkpoint == str(stage2_state)
    meta = load_latest(out / "checkpoints").meta
    assert meta["pretrained_from"] == str(stage2_state) and result["pretrained_from"] == str(stage2_state)
    assert (meta["algo"], meta["pretrained_algo"], meta["task"]) == ("calql", "cql", "Reach")
    assert meta["algo_cfg"]["use_calql"] and meta["algo_cfg"]["critic_hidden"] == [32]  # Cal-QL on CQL's networks
    assert meta["randomization"]["level"] == "train"
    assert meta["eval_randomization"] == meta["randomization"]  # no eval_randomization given: judged as trained


def test_the_progress_bar_counts_training_episodes_as_they_end(reach_hdf5, stage2_state, tmp_path, monkeypatch):
    """The bar showed the last evaluation's episode count and success between evaluations (episodes=0 after two
    had ended); it now says each training episode as it ends, beside the last evaluation's success, each named."""
    from tqdm import tqdm

    shown: list[dict] = []
    monkeypatch.setattr(tqdm, "set_postfix", lambda self, figures=None, refresh=True, **kw: shown.append(
        dict(figures or {}, **kw)))
    finetune(state_cfg(stage2_state, reach_hdf5, tmp_path / "bar", online={"eval_every": 120}))
    assert shown[0] == {"eval_success": shown[0]["eval_success"], "episodes": 0}  # the evaluation at step 0
    ended = [f for f in shown if "train_success" in f]  # (the evaluation at the end repeats the last count)
    assert [f["episodes"] for f in ended][:2] == [1, 2]
    assert ended[0]["eval_success"] == shown[0]["eval_success"]  # the last evaluation's, kept beside


def test_a_checkpoint_without_its_state_is_passed_over_and_none_with_state_is_refused(reach_hdf5, stage2_state,
                                                                                       tmp_path, caplog):
    """The replay buffer's state.pt not archived with the weights: stage 3 started over silently from env step 0
    (and its rotation then deleted the checkpoint it could have resumed from). It resumes from an earlier checkpoint
    that has its state, and refuses when none has."""
    from robopretrain.checkpoint import STATE_FILE, list_checkpoints

    out = tmp_path / "run"
    finetune(state_cfg(stage2_state, reach_hdf5, out, online={"env_steps": 120, "checkpoint_every": 50}))
    newest, previous = list_checkpoints(out / "checkpoints")[:2]
    (newest / STATE_FILE).unlink()
    with pytest.warns(UserWarning, match="has no state.pt .* falling back to the previous one"), \
            caplog.at_level(logging.INFO, logger="finetune"):
        result = finetune(state_cfg(stage2_state, reach_hdf5, out, online={"env_steps": 180, "checkpoint_every": 50}))
    assert f"resumed from {previous}" in caplog.text and result["history"][-1]["env_steps"] == 180
    for ckpt in list_checkpoints(out / "checkpoints"):
        (ckpt / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no state.pt .* restore it, or start over with resume=false"):
        finetune(state_cfg(stage2_state, reach_hdf5, out, online={"env_steps": 240, "checkpoint_every": 50}))


def test_offline_ratio_0_trains_on_no_offline_batch_and_a_run_without_an_ended_episode_says_so(
        reach_hdf5, stage2_state, tmp_path, caplog, monkeypatch):
    """online.offline_ratio=0 (the documented way to keep another reward function's data out of the batches) still
    trained on offline batches until the first episode ended; a run shorter than one episode ended with an empty
    buffer, every update offline, and no word."""
    from robopretrain.data.replay import MixedSampler

    drawn = []
    sample = MixedSampler.sample
    monkeypatch.setattr(MixedSampler, "sample", lambda self, n: drawn.append(self.counts(n)) or sample(self, n))
    with caplog.at_level(logging.WARNING, logger="finetune"):
        finetune(stage3_config(stage2_state, tmp_path / "short", {"name": "Reach", "max_episode_steps": 30},
                               env_steps=20, data_cfg={"path": str(reach_hdf5)}, width=32,
                               online={"offline_ratio": 0.0, "eval_every": 20, "checkpoint_every": 20}))
    assert drawn == []  # no update drew a batch: no episode had ended
    rows = read_jsonl(tmp_path / "short" / "metrics.jsonl")  # and no row of update metrics was logged for them
    assert rows and not [r for r in rows if not any(k.startswith(("eval/", "calib/", "train/")) for k in r)]
    assert not [r for r in rows if any(k.startswith("train/") and k not in ("train/cumulative_regret",
                                                                           "train/episode_success") for k in r)]
    assert "no training episode ended within online.env_steps=20" in caplog.text and "made no update" in caplog.text
    finetune(stage3_config(stage2_state, tmp_path / "long", {"name": "Reach", "max_episode_steps": 10,
                                                               "terminate_on_success": False},
                           env_steps=60, data_cfg={"path": str(reach_hdf5)}, width=32,
                           online={"offline_ratio": 0.0, "eval_every": 60, "checkpoint_every": 60}))
    assert drawn and all(n_off == 0 for n_off, _ in drawn)  # online batches alone, from the first ended episode


def test_online_buffer_returns_match_hand_computation(finetuned):
    out, _ = finetuned
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
    np.testing.assert_allclose(mc[:end], returns_by_hand(rewards[:end], dones[:end], -5.0, GAMMA), rtol=1e-5)
    assert int(online["num_episodes"]) == len(json.loads(ckpt.state["online"]["successes"]))


def test_a_checkpoint_of_another_algorithm_family_is_refused(reach_hdf5, stage2_state, tmp_path):
    with pytest.raises(CheckpointError, match="a cql checkpoint cannot continue as iql"):
        finetune(state_cfg(stage2_state, reach_hdf5, tmp_path / "iql", algo="iql"))
    assert not (tmp_path / "iql" / "checkpoints").exists()


def test_rewards_in_other_units_than_the_checkpoints_are_refused(reach_hdf5, stage2_state, tmp_path):
    """Stage 2 recorded its reward transform and discount (x10 - 5, 0.99 here); fine-tuning the critic in others (a
    stage-2 run at scale 1 on dense or learned rewards, then calql.yaml's defaults) went on silently. The same units
    are accepted (the fixture ``finetuned`` runs them)."""
    cfg = state_cfg(stage2_state, reach_hdf5, tmp_path / "units", algo_cfg={"reward_scale": 1.0, "discount": 0.9})
    with pytest.raises(ValueError, match=r"rewards are not in the units its agent learned in: algo.reward_scale=1 "
                                         r"\(the checkpoint's 10\), algo.discount=0.9 \(the checkpoint's 0.99\); .*so "
                                         r"pass algo.reward_scale=10 algo.discount=0.99$"):
        finetune(cfg)
    assert not (tmp_path / "units" / "checkpoints").exists()


def test_offline_data_with_a_learned_reward_is_refused_in_the_online_batches(reach_hdf5, stage2_state, tmp_path):
    """A relabelled copy (robopretrain.reward_model) beside online steps rewarded by the env: the critic learned two
    reward functions at once, silently (a new user's review). Refused with offline_ratio > 0; warned at 0."""
    import h5py

    from robopretrain.build import refuse_learned_reward_online
    from robopretrain.data.hdf5 import LEARNED_REWARD_KEY, read_info

    relabelled = tmp_path / "relabelled.hdf5"
    shutil.copyfile(reach_hdf5, relabelled)
    with h5py.File(relabelled, "r+") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        env_args[LEARNED_REWARD_KEY] = {"source": str(reach_hdf5), "normalize": "none"}
        f["data"].attrs["env_args"] = json.dumps(env_args)
    with pytest.raises(ValueError, match=r"relabelled.hdf5: its rewards were written by a learned reward .*from "
                                         r".*reach.hdf5.*online.offline_ratio=0.5 every batch would mix"):
        finetune(state_cfg(stage2_state, relabelled, tmp_path / "learned"))
    assert not (tmp_path / "learned" / "checkpoints").exists()
    assert "only the critic's start" in refuse_learned_reward_online(read_info(relabelled), 0.0)
    assert refuse_learned_reward_online(read_info(reach_hdf5), 0.5) is None  # the env's own rewards


def test_a_malformed_eval_randomization_is_refused_before_the_checkpoint_or_an_env(tmp_path, monkeypatch):
    from finetune import train as stage3

    def load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before eval_randomization was checked")

    monkeypatch.setattr(stage3, "load_agent", load)
    cfg = stage3_config(tmp_path / "ckpt", tmp_path / "run", "Reach", eval_randomization={"level": "eval_hrad"})
    with pytest.raises(ValueError, match=r"^eval_randomization=.*unknown randomization level 'eval_hrad'"):
        finetune(cfg)


def parallel_cfg(data: Path, checkpoint: Path, out: Path, asynchronous: bool):
    return state_cfg(checkpoint, data, out, dr="none", online={
        "num_envs": 2, "utd": 2, "asynchronous": asynchronous, "eval_every": 100000, "checkpoint_every": 40,
        "tensorboard": False})


def test_parallel_envs_count_updates_per_env_step_and_resume_exactly(reach_hdf5, stage2_state, tmp_path,
                                                                     monkeypatch):
    """Two envs, UTD 2: workers and in-process envs give the same run, and a run killed after its first
    checkpoint resumes to exactly the same weights (the checkpoint waits until both envs finished an episode)."""
    workers = finetune(parallel_cfg(reach_hdf5, stage2_state, tmp_path / "workers", asynchronous=True))
    inproc = finetune(parallel_cfg(reach_hdf5, stage2_state, tmp_path / "inproc", asynchronous=False))
    a, b = load_latest(tmp_path / "workers" / "checkpoints"), load_latest(tmp_path / "inproc" / "checkpoints")
    assert a.step == b.step == 120
    before = load_checkpoint(stage2_state).weights["core"]["num_updates"]  # the offline updates
    assert a.weights["core"]["num_updates"] - before == 2 * 120  # utd x env steps
    assert_same(a.weights, b.weights)
    assert workers["history"] == inproc["history"]

    real_update = die_after_first_checkpoint(monkeypatch, Agent, tmp_path / "killed" / "checkpoints", updates=7)
    with pytest.raises(Killed):
        finetune(parallel_cfg(reach_hdf5, stage2_state, tmp_path / "killed", asynchronous=False))
    assert 40 <= load_latest(tmp_path / "killed" / "checkpoints").step < 120
    monkeypatch.setattr(Agent, "update", real_update)
    resumed = finetune(parallel_cfg(reach_hdf5, stage2_state, tmp_path / "killed", asynchronous=False))
    c = load_latest(tmp_path / "killed" / "checkpoints")
    assert c.step == 120
    assert_same(c.weights, b.weights)
    assert_same(c.state["online"], b.state["online"], "online counters")
    assert resumed["history"] == inproc["history"]
    # with several envs the checkpoints' spacing decides which episodes are collected (each waits for every env's
    # episode to end and restarts them all): a resume with another spacing is refused (it went on silently)
    from robopretrain.run_fingerprint import ResumeMismatchError

    other = parallel_cfg(reach_hdf5, stage2_state, tmp_path / "killed", asynchronous=False)
    other.online.checkpoint_every = 60
    with pytest.raises(ResumeMismatchError, match=r"online\.checkpoint_every: 40 -> 60"):
        finetune(other)


def test_a_multi_env_checkpoint_written_before_the_spacing_counted_still_resumes():
    """Checkpoints of several envs written before online.checkpoint_every counted recorded no spacing to compare:
    they keep it ignored (a resume of them is not refused); new ones compare it; one env never does."""
    from finetune.online import OnlineSettings
    from finetune.train import RESUMABLE_CHANGES, resumable_changes

    two = OnlineSettings(num_envs=2)
    assert "checkpoint_every" not in resumable_changes(two) and "env_steps" in resumable_changes(two)
    new = {"config": {"online.checkpoint_every": 40, "online.utd": 1}, "ignored": ["env_steps"]}
    assert "checkpoint_every" not in resumable_changes(two, new)
    for old in ({"config": {"online.utd": 1}, "ignored": list(RESUMABLE_CHANGES)},  # with an ignored list
                {"config": {"online.utd": 1}}):  # and from before fingerprints recorded one
        assert resumable_changes(two, old) == RESUMABLE_CHANGES
    assert resumable_changes(OnlineSettings(num_envs=1)) == RESUMABLE_CHANGES


def test_nan_loss_stops_before_the_checkpoint(reach_hdf5, stage2_state, tmp_path, monkeypatch):
    """Once a first checkpoint exists, every update's loss is NaN: the next metrics request (a log or checkpoint
    round) raises, naming the loss and env step, and no checkpoint is written after the good one."""
    from robopretrain.guards import NonFiniteLossError

    real_update = Agent.update
    root = tmp_path / "nan" / "checkpoints"

    def nan_after_first_checkpoint(self, batch, with_metrics=True):
        metrics = real_update(self, batch, with_metrics)
        if with_metrics and load_latest(root) is not None:
            metrics["critic_loss"] = float("nan")
        return metrics

    monkeypatch.setattr(Agent, "update", nan_after_first_checkpoint)
    cfg = state_cfg(stage2_state, reach_hdf5, tmp_path / "nan", online={"tensorboard": False})
    with pytest.raises(NonFiniteLossError, match=r"loss 'critic_loss' is nan at step \d+") as err:
        finetune(cfg)
    good = load_latest(root).step
    assert good < err.value.step <= good + 20  # metrics are requested at least every log_every=20 env steps
    assert [p.name for p in root.glob("ckpt_*")] == [checkpoint_name(good)]


# --------------------------------------------------------------------------- camera agents


@pytest.fixture(scope="module")
def reach_images(tmp_path_factory) -> Path:
    return collect_sim(tmp_path_factory.mktemp("data") / "reach_images.hdf5", ["Reach"], images=True,
                       image_size=SIZE)


@pytest.fixture(scope="module")
def stage2_camera(reach_images, tmp_path_factory) -> Path:
    """A CQL agent with a scratch small_conv on 32 px agentview + proprio (2 updates)."""
    return stage2(stage2_config(reach_images, tmp_path_factory.mktemp("s2cam") / "run", algo="cql", steps=2,
                                obs=CAMERA_OBS))


def camera_cfg(checkpoint: Path, data: Path, out: Path, **extra):
    online = {"env_steps": 120, "num_envs": 2, "eval_every": 60, "log_every": 20, "checkpoint_every": 40,
              "calibration_batch": 16, "buffer_capacity": 2000, **extra.pop("online", {})}
    return stage3_config(checkpoint, out, extra.pop("target", "Reach"), env_steps=online.pop("env_steps"),
                         data_cfg={"path": str(data)}, online=online, **{"dr": "train_all", **extra})


@pytest.fixture(scope="module")
def reach_run(reach_images, stage2_camera, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_images") / "run"
    cfg = camera_cfg(stage2_camera, reach_images, out, target={"name": "Reach", "max_episode_steps": EPISODE},
                     online={"asynchronous": True, "env_steps": 60, "eval_every": 30, "log_every": 10,
                             "checkpoint_every": 20, "tensorboard": True})
    return out, cfg, finetune(cfg)


def test_camera_agent_runs_calql_online_with_worker_envs(reach_run):
    out, _, result = reach_run
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
    assert ckpt.step == 60 and ckpt.meta["obs_spec"]["rgb"] == [["agentview_image", [SIZE, SIZE, 3]]]
    meta = ckpt.meta
    assert (meta["stage"], meta["algo"], meta["pretrained_algo"], meta["task"]) == ("online", "calql", "cql", "Reach")
    assert meta["randomization"] == {"level": "train", "factors": ["friction", "mass", "damping", "gripper_force",
                                                                   "lighting", "colors", "textures", "camera"]}
    assert meta["algo_cfg"]["critic_hidden"] == [16]  # the networks come from the stage-2 checkpoint
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
    agent, _ = load_agent(out)  # the output is a self-describing agent checkpoint
    assert agent.algo == "calql" and agent.mode == "scratch"


def test_rerun_resumes_the_finished_run(reach_run):
    out, cfg, result = reach_run
    rows_before = read_jsonl(out / "metrics.jsonl")
    again = finetune(cfg)
    assert again["history"] == result["history"]
    assert read_jsonl(out / "metrics.jsonl") == rows_before


def test_a_run_resumes_after_its_stage2_folder_got_a_newer_checkpoint(reach_hdf5, tmp_path, caplog):
    """Stage 2 went on in its folder after stage 3 started from it: the same stage-3 command resumes (it was refused:
    the folder now resolved to the newer checkpoint), and so does the command pinned to the checkpoint it started
    from (refused too: the setting as given had changed); a fresh run takes the newer one."""
    s2 = tmp_path / "s2"
    stage2(stage2_config(reach_hdf5, s2, algo="cql", steps=2, obs=STATE_OBS, width=32))
    out = tmp_path / "s3"
    cfg = stage3_config(s2, out, "Reach", env_steps=12, data_cfg={"path": str(reach_hdf5)}, width=32)
    first = finetune(cfg)
    assert first["pretrained_from"].endswith("ckpt_00000002")
    stage2(stage2_config(reach_hdf5, s2, algo="cql", steps=4, obs=STATE_OBS, width=32))  # the same run, extended
    with caplog.at_level(logging.INFO):
        again = finetune(cfg)
    assert again["history"] == first["history"] and again["pretrained_from"] == first["pretrained_from"]
    assert "now holds a newer ckpt_00000004" in caplog.text
    pinned = stage3_config(s2 / "checkpoints" / "ckpt_00000002", out, "Reach", env_steps=12,
                           data_cfg={"path": str(reach_hdf5)}, width=32)
    assert finetune(pinned)["history"] == first["history"]
    fresh = finetune(stage3_config(s2, tmp_path / "fresh", "Reach", env_steps=12, data_cfg={"path": str(reach_hdf5)},
                                   width=32))
    assert fresh["pretrained_from"].endswith("ckpt_00000004")
    shutil.rmtree(s2 / "checkpoints" / "ckpt_00000002")  # stage 2 went on and pruned it (it keeps the newest two)
    with pytest.raises(CheckpointError, match="ckpt_00000002, is gone.*resume=false"):
        finetune(cfg)


def test_a_camera_checkpoint_with_state_only_data_or_another_algorithm_is_refused(reach_hdf5, stage2_camera,
                                                                                  tmp_path):
    with pytest.raises(DatasetError, match="agentview_image"):
        finetune(camera_cfg(stage2_camera, reach_hdf5, tmp_path / "a", dr="none"))
    with pytest.raises(CheckpointError, match="a cql checkpoint cannot continue as iql"):
        finetune(camera_cfg(stage2_camera, reach_hdf5, tmp_path / "b", algo="iql"))


@pytest.fixture(scope="module")
def robosuite_demos(tmp_path_factory) -> Path:
    return fake.write_robosuite_demos(tmp_path_factory.mktemp("rs") / "demos.hdf5", 3)


def robosuite_stage2(demos: Path, out: Path, **encoder) -> Path:
    return stage2(stage2_config(demos, out, algo="cql", steps=2, data_cfg={"obs_map": OBS_MAP},
                                obs={"low_dim": ["eef_pos", "gripper_qpos"], "rgb": ["agentview_image"]},
                                encoder=encoder))


def test_killed_run_on_a_custom_target_resumes_to_the_same_weights(robosuite_demos, tmp_path, monkeypatch):
    """A gymnasium target by entry point (keys mapped by obs_map, a camera), two envs; killed after its first
    checkpoint, the same command ends with the weights of an uninterrupted run."""
    ckpt = robosuite_stage2(robosuite_demos, tmp_path / "s2")
    tgt = {**ROBOSUITE_TARGET, "demos": str(robosuite_demos)}

    def cfg(out, target=tgt):
        return stage3_config(ckpt, out, target, env_steps=48, online={"num_envs": 2, "checkpoint_every": 12,
                                                                      "eval_every": 24, "log_every": 4,
                                                                      "tensorboard": True})

    # the uninterrupted run's target names no task_id: it takes the one slot stage 2 trained (was: refused)
    clean = finetune(cfg(tmp_path / "clean", {k: v for k, v in tgt.items() if k != "task_id"}))

    def die_at_once(self, batch, with_metrics=True):
        raise Killed

    real_update = Agent.update
    monkeypatch.setattr(Agent, "update", die_at_once)  # killed before its first checkpoint, after the step-0 eval
    with pytest.raises(Killed):
        finetune(cfg(tmp_path / "killed"))
    assert load_latest(tmp_path / "killed" / "checkpoints") is None
    monkeypatch.setattr(Agent, "update", real_update)
    die_after_first_checkpoint(monkeypatch, Agent, tmp_path / "killed" / "checkpoints", updates=5)
    with pytest.raises(Killed):
        finetune(cfg(tmp_path / "killed"))
    assert 12 <= load_latest(tmp_path / "killed" / "checkpoints").step < 48
    monkeypatch.setattr(Agent, "update", real_update)
    resumed = finetune(cfg(tmp_path / "killed"))

    a, b = load_latest(tmp_path / "killed" / "checkpoints"), load_latest(tmp_path / "clean" / "checkpoints")
    assert a.step == b.step == 48 and a.meta["target"]["env_id"] == "_fake_envs:RobosuiteLikeEnv"
    assert b.meta["target"]["task_id"] == 0
    assert b.meta["task_ids"] == {**load_checkpoint(ckpt).meta["task_ids"], "reach": 0}
    assert_same(a.weights, b.weights)
    assert_same(a.state["online"], b.state["online"], "online counters")
    assert resumed["history"] == clean["history"]
    def logged(run):  # the metrics file: each evaluation once (the killed run's step-0 row was there twice)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["env_steps"] for r in rows if "eval/success" in r]

    assert logged(tmp_path / "killed") == logged(tmp_path / "clean") == [0, 24, 48]
    shown = [e.step for e in tensorboard_events(tmp_path / "killed" / "tb").Scalars("eval/success")]
    assert shown == [0, 24, 48]  # TensorBoard hides what the killed sessions logged, as the metrics file drops it
    def logged_steps(run):  # every scalar once, at the uninterrupted run's steps (the checkpoint's step too)
        events = tensorboard_events(run / "tb")
        return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    steps = logged_steps(tmp_path / "killed")
    assert steps == logged_steps(tmp_path / "clean") and any(len(v) > 3 for v in steps.values())


def test_randomization_on_a_target_that_has_none_is_said_not_applied(robosuite_demos, tmp_path, caplog):
    """The default dr (train_all) on a gym target: nominal episodes, and the run says so (it was silent)."""
    ckpt = robosuite_stage2(robosuite_demos, tmp_path / "s2")
    with caplog.at_level(logging.WARNING, logger="finetune.train"):
        finetune(stage3_config(ckpt, tmp_path / "run", {**ROBOSUITE_TARGET, "demos": str(robosuite_demos)},
                               env_steps=4, dr="train_all"))
    warned = [r.getMessage() for r in caplog.records if "sim_envs targets only" in r.getMessage()]
    assert len(warned) == 1 and "'reach' (gym)" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finetune.train"):
        finetune(stage3_config(ckpt, tmp_path / "quiet", {**ROBOSUITE_TARGET, "demos": str(robosuite_demos)},
                               env_steps=4, dr="none"))
    assert not [r for r in caplog.records if "sim_envs targets only" in r.getMessage()]


def test_a_dense_target_ending_at_success_where_its_demos_ran_on_is_said(robosuite_demos, tmp_path, caplog):
    """A dense-reward gym target ends episodes at the first success by default; demos recorded by an env that ran on
    after success (no terminal) then disagree with the env stage 3 collects from: 1-2-step episodes and terminals
    the data never has, without a word (helper U, F03)."""

    import h5py

    ckpt = robosuite_stage2(robosuite_demos, tmp_path / "s2")
    ran_on = tmp_path / "ran_on.hdf5"
    shutil.copy(robosuite_demos, ran_on)
    with h5py.File(ran_on, "r+") as f:
        for demo in f["data"].values():
            demo["dones"][...] = 0
    dense = {**ROBOSUITE_TARGET, "reward": "dense"}

    def warned(target, demos, out):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="finetune.train"):
            finetune(stage3_config(ckpt, tmp_path / out, {**target, "demos": str(demos)}, env_steps=4, dr="none"))
        return [r.getMessage() for r in caplog.records if "terminate_on_success" in r.getMessage()]

    (said,) = warned(dense, ran_on, "ran_on")
    assert said.startswith("target 'reach' ends an episode at its first success") and "demos (3) ends" in said
    assert "write done=1 at each demo's success step" in said and "terminate_on_success: false" in said
    assert warned(dense, robosuite_demos, "terminal") == []  # its successful demos end done = 1
    assert warned({**dense, "terminate_on_success": False}, ran_on, "told") == []
    assert warned(ROBOSUITE_TARGET, ran_on, "sparse") == []  # success is a sparse target's reward and its end
    unflagged = tmp_path / "unflagged.hdf5"  # an env that reports no success (Pendulum): the setting never acts
    shutil.copy(ran_on, unflagged)
    with h5py.File(unflagged, "r+") as f:
        for demo in f["data"].values():
            demo.attrs["ep_meta"] = json.dumps({"seed": 0})
    assert warned(dense, unflagged, "unflagged") == []
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):  # the pipeline says it at its start
        cfg = compose("pipeline", overrides=[
            f"targets=[{{name: reach, env_id: '_fake_envs:RobosuiteLikeEnv', reward: dense, task_id: 13, demos: "
            f"{ran_on}}}]", "obs.num_tasks=14", "+stage3.algo_overrides.actor_bc_filter=none", "stage2.enabled=false"])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipeline.check_targets(cfg)
    assert [r.getMessage() for r in caplog.records if "terminate_on_success" in r.getMessage()] == [said]


def test_the_success_termination_note_counts_what_it_checked():
    from robopretrain.envs.target import Target, success_termination_note

    dense = Target(name="reach", env_id="_fake_envs:RobosuiteLikeEnv", reward="dense")
    ends = {f"demo_{i}": False for i in range(200)}
    assert "demos (200 checked of 1000) ends" in success_termination_note(dense, ends, 1000)
    assert "demos (200) ends" in success_termination_note(dense, ends)
    assert success_termination_note(dense, {**ends, "demo_7": True}, 1000) is None  # one ends in a terminal
    assert success_termination_note(dense, {}, 0) is None


@pytest.mark.parametrize("keep_env_key", [False, True], ids=["moved", "both_columns"])
def test_stage_twos_obs_map_reads_its_data_file_again_in_stage_3(robosuite_demos, tmp_path, monkeypatch,
                                                                  keep_env_key, caplog):
    """A data file recorded under other keys than the env's (stage 2 mapped them with data.obs_map): stage 3 falls back
    to the checkpoint's data file for the target's demos and maps it the way stage 2 did, without being told again
    (the target's obs_map names the env's keys, which the file lacks); also where the file holds the env's key too
    (stage 2 learned from eef_recorded, so stage 3's offline data must be read from it as well)."""
    import shutil

    import h5py

    import finetune.train as stage3

    demos = Path(shutil.copy(robosuite_demos, tmp_path / "recorded.hdf5"))
    with h5py.File(demos, "r+") as f:
        for demo in f["data"].values():
            for group in ("obs", "next_obs"):
                if keep_env_key:
                    demo[group].copy(fake.EEF, "eef_recorded")
                else:
                    demo[group].move(fake.EEF, "eef_recorded")
    ckpt = stage2(stage2_config(demos, tmp_path / "s2", algo="cql", steps=2,
                                data_cfg={"obs_map": {**OBS_MAP, "eef_pos": "eef_recorded"}},
                                obs={"low_dim": ["eef_pos", "gripper_qpos"], "rgb": ["agentview_image"]}))
    assert load_checkpoint(ckpt).meta["obs_map"]["eef_pos"] == "eef_recorded"
    read_with = []
    real = stage3.build.load_data
    monkeypatch.setattr(stage3.build, "load_data", lambda path, spec, data_cfg, *a, **kw: (
        read_with.append(dict(data_cfg.get("obs_map") or {})), real(path, spec, data_cfg, *a, **kw))[1])
    with caplog.at_level(logging.INFO, logger="finetune.train"):
        out = finetune(stage3_config(ckpt, tmp_path / "run", ROBOSUITE_TARGET, env_steps=12))
    assert out["history"][-1]["env_steps"] == 12
    assert read_with and read_with[0]["eef_pos"] == "eef_recorded"
    assert f"offline data: {demos.resolve()}, the checkpoint's own data file (data.path and target.demos are not " \
        "set)" in caplog.text  # which file it read is said (it was only in meta.json)


def test_stage_3_reads_the_data_file_of_a_moved_stage_2_run_at_its_new_place(robosuite_demos, tmp_path):
    """A stage-2 run folder holding its data file (data.generate writes it there), moved: stage 3 without data.path
    said "the checkpoint's data file is not available (no file at <old path>)"."""
    import shutil

    old = tmp_path / "old"
    old.mkdir()
    demos = Path(shutil.copy(robosuite_demos, old / "demos.hdf5"))
    stage2(stage2_config(demos, old, algo="cql", steps=2, data_cfg={"obs_map": OBS_MAP},
                         obs={"low_dim": ["eef_pos", "gripper_qpos"], "rgb": ["agentview_image"]}))
    old.rename(tmp_path / "moved")
    out = finetune(stage3_config(tmp_path / "moved", tmp_path / "run", ROBOSUITE_TARGET, env_steps=12))
    assert out["history"][-1]["env_steps"] == 12
    assert load_latest(tmp_path / "run" / "checkpoints").meta["data_path"] == str(tmp_path / "moved" / "demos.hdf5")


def test_stage_3_names_an_obs_map_entry_for_a_part_the_agent_does_not_observe(robosuite_demos, tmp_path, caplog):
    """Stage 2 warned about data.obs_map entries under names no part has (a typo); stage 3 took them silently."""
    obs = {"low_dim": ["eef_pos", "gripper_qpos"], "rgb": ["agentview_image"]}
    ckpt = stage2(stage2_config(robosuite_demos, tmp_path / "s2", algo="cql", steps=2, data_cfg={"obs_map": OBS_MAP},
                                obs=obs))
    with caplog.at_level(logging.WARNING):
        finetune(stage3_config(ckpt, tmp_path / "run", ROBOSUITE_TARGET, env_steps=4,
                               data_cfg={"obs_map": {**OBS_MAP, "eef_poss": fake.EEF}}))
    assert "data.obs_map names part(s) ['eef_poss'] that the agent does not observe" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        finetune(stage3_config(ckpt, tmp_path / "ok", ROBOSUITE_TARGET, env_steps=4, data_cfg={"obs_map": OBS_MAP}))
    assert "does not observe" not in caplog.text


def test_stage_twos_obs_map_applies_to_its_own_file_even_where_the_file_has_the_parts_name():
    """Stage 2 read eef_pos from eef_filtered on a file holding both: stage 3 on that file must too (it read the raw
    eef_pos, silently); on another file the part's own column wins as before; the target fills unmapped parts."""
    from types import SimpleNamespace

    from finetune.train import demo_obs_map
    from robopretrain.envs.target import Target

    info = SimpleNamespace(obs_specs={"eef_pos": None, "eef_filtered": None, "gripper_qpos": None, "cam": None})
    target = Target(name="reach", env_id="_fake_envs:RobosuiteLikeEnv", task_id=0,
                    obs_map={"eef_pos": "eef_raw", "agentview_image": "cam"})
    stage2 = {"eef_pos": "eef_filtered"}
    assert demo_obs_map(target, info, stage2, stage2_file=True) == {"eef_pos": "eef_filtered",
                                                                    "agentview_image": "cam"}
    assert demo_obs_map(target, info, stage2) == {"agentview_image": "cam"}


@pytest.mark.parametrize("mode", ["frozen_cached", "frozen", "finetune"])
def test_every_encoder_mode_fine_tunes_online(robosuite_demos, tmp_path, mode):
    """Pretrained-encoder modes rebuild from the checkpoint; frozen_cached stores encoder features online."""
    from robopretrain.nets.encoder_io import save_encoder
    from robopretrain.nets.encoders import make_encoder

    enc = save_encoder(tmp_path / "enc", make_encoder("small_conv", 16, channels=4, out_dim=8), "small_conv", {})
    ckpt = robosuite_stage2(robosuite_demos, tmp_path / "s2", checkpoint=str(enc), mode=mode)
    out = finetune(stage3_config(ckpt, tmp_path / "run", {**ROBOSUITE_TARGET, "demos": str(robosuite_demos)},
                                 env_steps=24))
    assert out["history"][-1]["env_steps"] == 24
    stored = load_latest(tmp_path / "run" / "checkpoints").state["sampler"]["online"]["data"]["observations"]
    if mode == "frozen_cached":
        assert set(stored) == {"features", "eef_pos", "gripper_qpos", "task_id"}
        assert tuple(stored["features"].shape[1:]) == (8,)
    else:
        assert tuple(stored["agentview_image"].shape[1:]) == (16, 16, 3)
    loaded, _ = load_agent(tmp_path / "run")
    assert loaded.mode == mode and loaded.algo == "calql"


def test_training_regret_and_online_settings_by_hand():
    from finetune.online import OnlineSettings, recent_success, training_regret

    assert training_regret([]) is None  # before the first training episode ends
    # train/episode_success: the last 10 training episodes (11 here: the first, a failure, is out of the window)
    assert recent_success([0.0] + [1.0] * 10) == 1.0 and recent_success([0.0, 1.0]) == 0.5
    assert recent_success([]) is None
    assert training_regret([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.25)
    assert training_regret([0.0, 0.0]) == 1.0 and training_regret([1.0]) == 0.0
    assert OnlineSettings(num_envs=1, utd=1).num_envs == 1  # 1 is the smallest valid count
    defaults = OnlineSettings()
    assert not defaults.cuda_graph and not defaults.compile  # a CPU user's direct call must not need a GPU
    for key in ("num_envs", "utd", "eval_episodes", "calibration_batch"):
        with pytest.raises(ValueError, match=f"online.{key}=0"):
            OnlineSettings(**{key: 0})
    with pytest.raises(ValueError, match="online.utd=True"):
        OnlineSettings(utd=True)


def test_a_rerun_with_other_settings_is_refused_before_any_step(finetuned, reach_hdf5, stage2_state):
    """The online loop compares the run folder's fingerprint with the rerun's (saved -> now, in that order)."""
    from robopretrain.run_fingerprint import ResumeMismatchError

    out, _ = finetuned
    rows = read_jsonl(out / "metrics.jsonl")
    with pytest.raises(ResumeMismatchError, match=r"online\.utd: 1 -> 2"):
        finetune(state_cfg(stage2_state, reach_hdf5, out, online={"utd": 2}))
    assert read_jsonl(out / "metrics.jsonl") == rows  # nothing trained, nothing logged
    finetune(state_cfg(stage2_state, reach_hdf5, out, online={"checkpoint_every": 7}))  # one env: no change


def test_online_batches_are_on_the_agents_device():
    """The online buffer's batches join the offline half (on the agent's device) in one tensor: on a GPU a buffer
    left on the CPU fails at the first mixed batch ('meta' stands in for 'cuda' here)."""
    import torch

    from finetune.online import online_buffer
    from robopretrain.data.dataset import RewardSettings
    from robopretrain.data.spec import ObsSpec

    spec = ObsSpec(low_dim=(("proprio", 3),))
    agent = type("FakeAgent", (), {"device": torch.device("meta"), "act_dim": 2, "stored_spec": lambda self: spec})()
    buffer = online_buffer(agent, RewardSettings(), capacity=10, seed=0)
    obs = {"proprio": np.zeros(3, np.float32)}
    buffer.add_step(obs, np.zeros(2), 1.0, obs, True, False)
    batch = buffer.sample(2)
    tensors = [t for v in batch.values() for t in (v.values() if isinstance(v, dict) else [v])]
    assert len(tensors) >= 7 and {t.device.type for t in tensors} == {"meta"}


def test_the_checkpoints_data_file_stands_in_only_when_it_has_the_targets_demos(reach_hdf5, stage2_state, tmp_path):
    """Without data.path the checkpoint's own data file is the offline data: for a task it holds (Reach) its
    demos of that task; for one it lacks, a refusal (its prior demos would all carry the target's one-hot)."""
    from finetune.train import offline_data_path
    from robopretrain.envs.target import as_target

    meta = load_agent(stage2_state)[1].meta
    cfg = stage3_config(stage2_state, tmp_path / "x", "Reach", data_cfg={})
    assert offline_data_path(cfg, tmp_path, as_target("Reach"), None, meta) == reach_hdf5
    with pytest.raises(ValueError, match="has no demos of target 'OpenDrawer' \\(its tasks: PressButton, Reach\\)"):
        offline_data_path(cfg, tmp_path, as_target("OpenDrawer"), None, meta)


def test_a_conversion_in_stage_3_keeps_the_copies_both_runs_checkpoints_name(finetuned, stage2_state, reach_hdf5,
                                                                             tmp_path, monkeypatch):
    """The target data's conversion keeps (although stale) the stage-2 checkpoint's data file and those the stage-3
    run's own checkpoints name, so an edited source refuses the resume without deleting what it resumes on; with
    resume=false the run's own are not kept."""
    import finetune.train as ft

    seen, pruned = [], []

    def stop(*args, keep=(), prune=False, **kwargs):
        seen.append(list(keep))
        pruned.append(prune)  # a fresh run removes the stale copies even when it reuses the current one
        raise KeyboardInterrupt  # the data path is all this test needs

    out, _ = finetuned
    own = tmp_path / "run"
    shutil.copytree(out, own)
    monkeypatch.setattr(ft, "offline_data_path", stop)
    for resume in (True, False):
        with pytest.raises(KeyboardInterrupt):
            finetune(state_cfg(stage2_state, reach_hdf5, own, resume=resume))
    s2_data = load_agent(stage2_state)[1].meta["data_path"]
    assert pruned == [False, True]
    assert s2_data == str(reach_hdf5) and seen[1] == [s2_data] and seen[0][0] == s2_data
    assert seen[0][1:] == [str(reach_hdf5)] and len(seen[0]) == 2  # the stage-3 run's own checkpoints' data_path


def test_a_network_size_set_for_stage_3_is_said_to_take_no_effect_and_blocks_no_resume(reach_hdf5, stage2_state,
                                                                                       tmp_path, caplog):
    """Stage 3 continues the checkpoint's networks: algo.actor_hidden=[16, 16] was built as the checkpoint's
    [32] without a word, recorded in the fingerprint, and the same command without it was refused to resume."""
    import logging

    out = tmp_path / "s3"
    online = {"env_steps": 20, "eval_every": 20, "checkpoint_every": 10, "log_every": 10}
    with caplog.at_level(logging.WARNING):
        finetune(state_cfg(stage2_state, reach_hdf5, out, online=online, algo_cfg={"actor_hidden": [16, 16]}))
    assert "stage 3 continues the checkpoint's networks, so algo.actor_hidden=[16, 16] (the checkpoint's: [32]) " \
           "take(s) no effect" in caplog.text
    assert list(load_agent(out / "checkpoints" / checkpoint_name(20))[0].algo_cfg.actor_hidden) == [32]
    from finetune.train import warn_ignored_networks

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="finetune.train"):  # learner settings of its own are said, not warned
        warn_ignored_networks({"algo_cfg": {"batch_size": 64, "n_actions": 4, "actor_hidden": [32]}},
                              {"batch_size": 256, "n_actions": 4, "actor_hidden": [32]}, "calql")
    assert "its own settings where they differ from the checkpoint's: batch_size 256 (the checkpoint's: 64)" \
        in caplog.text and "n_actions" not in caplog.text and "no effect" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        finetune(state_cfg(stage2_state, reach_hdf5, out, online={**online, "env_steps": 30}))  # resumes at 20
    assert "take(s) no effect" not in caplog.text
    assert load_latest(out / "checkpoints").step == 30


def test_generated_target_demos_render_the_cameras_the_agent_maps_to_the_sim(tmp_path, monkeypatch):
    """data.generate with agent cameras named front_cam / wrist_cam (obs_map -> the sim's): the collector was asked
    for no wrist camera (it tested the agent's names), and the offline data then lacked it."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    import finetune.train as ft
    from robopretrain.envs.target import Target

    asked = []
    monkeypatch.setattr(ft.build, "resolve_data_path", lambda data, run_dir, **kw: asked.append(kw["collect"]))
    agent = SimpleNamespace(spec=SimpleNamespace(rgb=(("front_cam", (32, 32, 3)), ("wrist_cam", (32, 32, 3))),
                                                 rgb_keys=["front_cam", "wrist_cam"], image_size=32))
    target = Target(name="Reach", task_id=0, obs_map={"front_cam": "agentview_image", "wrist_cam": "eye_in_hand_image"})
    ft.offline_data_path(OmegaConf.create({"data": {"generate": True}}), tmp_path, target, agent, {})
    assert asked == [{"tasks": ["Reach"], "render_images": True, "eye_in_hand": True, "image_size": 32}]


def test_an_obs_map_entry_for_a_part_the_agent_does_not_observe_is_named(tmp_path, caplog):
    """data.obs_map={joints: proprio} with obs.low_dim=[proprio, object] (the part is named proprio): the entry
    took no effect without a word."""
    data = collect_sim(tmp_path / "d.hdf5", ["Reach"])
    cfg = stage2_config(data, tmp_path / "s2", algo="bc", steps=2, obs={"low_dim": ["proprio", "object"]},
                        data_cfg={"obs_map": {"joints": "proprio"}})
    with caplog.at_level(logging.WARNING):
        stage2(cfg)
    assert "data.obs_map names part(s) ['joints'] that the agent does not observe" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        stage2(stage2_config(data, tmp_path / "ok", algo="bc", steps=2, obs={"low_dim": ["joints", "object"]},
                             data_cfg={"obs_map": {"joints": "proprio"}}))
    assert "does not observe" not in caplog.text


@pytest.mark.parametrize("algo, warned", [("bc", True), ("calql", False), ("iql", False)])
def test_stage3_says_that_online_bc_clones_its_own_failures(tmp_path, monkeypatch, caplog, algo, warned):
    """Stage 3 with algo=bc clones every online episode, failed ones included: said before the agent loads."""
    import finetune.train as ft

    class Loaded(Exception):
        pass

    def load_agent(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(ft, "load_agent", load_agent)
    with caplog.at_level(logging.WARNING, logger="finetune.train"), pytest.raises(Loaded):
        ft.run(stage3_config(tmp_path / "s2", tmp_path / "run", "Reach", algo=algo))
    assert ("imitates its own failures" in caplog.text) is warned, caplog.text
    if warned:  # its advice is one that works: a BC checkpoint is continued by no RL learner (checkpoint families)
        assert "train stage 2 with a learner that has an online version" in caplog.text
        assert "so only algo=bc continues it" in caplog.text and "fine-tune the BC checkpoint with" not in caplog.text


def test_a_run_left_at_the_default_target_outside_the_agents_tasks_says_target_is_not_set():
    """A one-task agent of the user's robot, no target= given: the default sim_envs task has no slot; the refusal
    says the target was not set (the general one said to set a task_id, which leads to the wrong env)."""
    from finetune.train import refuse_default_target_outside
    from robopretrain.envs.target import as_target, with_task_slot

    default = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml").target
    cfg = OmegaConf.create({"target": default})
    for slotted in (as_target(default), with_task_slot(as_target(default), {"PointReach": 0}, 1)):  # as stage 3 does
        with pytest.raises(ValueError, match=rf"^target is not set, so it is the default '{default}' "
                                             r"\(robopretrain/configs/finetune\.yaml\), .* one-hot of size 1 "
                                             r"\(trained on PointReach\); name the env"):
            refuse_default_target_outside(cfg, slotted, 1, ["PointReach"])
    refuse_default_target_outside(cfg, as_target(default), 13, ["Reach"])  # the testbed's held-out target: fits
    refuse_default_target_outside(cfg, as_target(default), 0, [])  # no task one-hot
    other = OmegaConf.create({"target": "Reach"})  # chosen by the user: the general check speaks
    refuse_default_target_outside(other, as_target("Reach"), 1, ["PointReach"])


def test_the_no_demos_error_offers_data_generate_only_where_it_collects(tmp_path):
    """data.generate collects sim_envs demos only: advised for those, not for a gym target (it was, and then refused)."""
    from omegaconf import OmegaConf

    from finetune.train import offline_data_path
    from robopretrain.envs.target import Target

    cfg = OmegaConf.create({"data": {}})
    gym_target = Target(name="MyTask", family="gym", env_id="x", task_id=0)
    with pytest.raises(ValueError, match=r"give the target demos \(data.path=/path/to/target_demos.hdf5\)$"):
        offline_data_path(cfg, tmp_path, gym_target, None, {})
    with pytest.raises(ValueError, match=r"target_demos.hdf5\) or data.generate=true$"):
        offline_data_path(cfg, tmp_path, Target(name="Reach", task_id=0), None, {})


def test_a_misspelt_success_key_of_a_stage2_eval_target_is_refused_before_training(robosuite_demos, tmp_path):
    """Stage 2 checked a named evaluation target's sizes at start but not its success key: every evaluation of the
    run then failed with a warning and the run ended with none. A sparse target now takes one probe step."""
    from robopretrain.envs.target import EnvContractError

    cfg = stage2_config(robosuite_demos, tmp_path / "s2", algo="cql", steps=2, data_cfg={"obs_map": OBS_MAP},
                        obs={"low_dim": ["eef_pos", "gripper_qpos"], "rgb": []},
                        train={"eval_targets": [{**ROBOSUITE_TARGET, "success_key": "is_succes"}]})
    with pytest.raises(EnvContractError, match="target 'reach': info has no 'is_succes'"):
        stage2(cfg)
    assert not (tmp_path / "s2" / "checkpoints").exists()
    # probe_step: false (a robot that must not move before the policy acts): no step at start, so the run starts
    cfg.train.eval_targets[0].probe_step = False
    cfg.output_dir = str(tmp_path / "unprobed")
    assert Path(stage2(cfg)).is_dir()


def test_a_run_folder_of_the_other_stage_is_refused_and_left_as_it_is(finetuned, reach_hdf5, stage2_state):
    """Stage 3 given a stage-2 run folder as output_dir started a fresh run there: it emptied metrics.jsonl, pruned
    stage 2's checkpoints and wrote its own over one of the same name, with rc 0 and no word (a new user's kill and
    resume session). Either way round, and with resume=false, the folder is now refused before anything is written."""
    s2_run = stage2_state.parent.parent  # <run>/checkpoints/ckpt_N
    assert (s2_run / "checkpoints").is_dir()

    def listing(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
                and p.name != ".writer.lock"}

    before = listing(s2_run)
    for resume in (True, False):
        with pytest.raises(ValueError, match=r"is a run folder of stage 2 \(robopretrain.train\) \(ckpt_\d+ is its "
                                             r"checkpoint\); stage 3 \(finetune.train\) would replace"):
            finetune(state_cfg(stage2_state, reach_hdf5, s2_run, resume=resume))
    assert listing(s2_run) == before
    out, _ = finetuned
    before = listing(out)
    with pytest.raises(ValueError, match=r"is a run folder of stage 3 \(finetune.train\)"):
        stage2(stage2_config(reach_hdf5, out, algo="cql", steps=10, obs=STATE_OBS, width=32))
    assert listing(out) == before


def test_extending_a_finished_run_says_that_its_cut_episodes_restart(finetuned, reach_hdf5, stage2_state, tmp_path,
                                                                     caplog):
    """online.env_steps raised on a finished run resumed from its final checkpoint, written mid-episode: the envs
    restarted, so the continuation differed from one longer run (4 episodes where it had 6) with no word."""
    import logging
    import shutil

    out, _ = finetuned
    final = load_latest(out / "checkpoints")
    cut = int(final.state["online"]["episodes_in_flight"])
    assert final.state["online"]["env_steps"] == 120 and cut >= 1  # 120 env steps end inside an episode here
    longer = tmp_path / "run"
    shutil.copytree(out, longer)
    with caplog.at_level(logging.WARNING, logger="finetune"):
        finetune(state_cfg(stage2_state, reach_hdf5, longer, online={"env_steps": 130}))
    assert (f"extending a finished run from its final checkpoint (env step 120), written with {cut} episode(s) "
            "unfinished (running, or cut by the step budget)") in caplog.text


def test_a_cuda_graph_on_a_cpu_agent_is_refused_for_the_cpu_not_as_torchrun(reach_hdf5, stage2_state, tmp_path):
    """Stage 3 runs in one process: online.cuda_graph=true on a CPU agent is refused because the agent is on the CPU
    (a GPU run would capture the graph), never as a torchrun run."""
    with pytest.raises(ValueError, match="CUDA device") as refused:
        finetune(state_cfg(stage2_state, reach_hdf5, tmp_path / "g", online={"cuda_graph": True}))
    assert "torchrun" not in str(refused.value)


def test_a_file_of_tasks_the_agent_learnt_elsewhere_is_not_read_as_the_target(reach_hdf5, stage2_state, tmp_path,
                                                                               caplog):
    """data.path holding no demo of the target: every demo was read as the target's, in its slot, also those of
    tasks the agent learnt in their own slots (Reach, PressButton here): refused naming them; a file of other named
    tasks is warned about; demos without task attributes (the rule's case) are read silently. data.task_id, which
    stage 3 never applies, is said to take no effect."""
    import logging

    from finetune.train import check_other_tasks
    from robopretrain.data.hdf5 import read_info
    from robopretrain.envs.target import as_target

    with pytest.raises(ValueError, match=r"reach.hdf5: holds no demos of target 'OpenDrawer' but demos of task\(s\) "
                                         r"\['PressButton', 'Reach'\], which the agent learnt in slot\(s\)"):
        finetune(stage3_config(stage2_state, tmp_path / "s3", "OpenDrawer", data_cfg={"path": str(reach_hdf5)},
                               width=32))
    slots = load_agent(stage2_state)[1].meta["task_ids"]
    import _fake_envs as fake

    named = fake.write_robosuite_demos(tmp_path / "named.hdf5", episodes=1, tasks=(("stack", 3),))
    with caplog.at_level(logging.WARNING):
        check_other_tasks(read_info(named), as_target("OpenDrawer"), slots)
    assert "holds no task named 'OpenDrawer'; its demos of task(s) ['stack'] are read as the target's" in caplog.text
    unnamed = fake.write_robosuite_demos(tmp_path / "unnamed.hdf5", episodes=1)
    import h5py

    with h5py.File(unnamed, "r+") as f:  # a recording without task attributes: the file's default task
        for demo in f["data"].values():
            for key in ("task", "task_id"):
                demo.attrs.pop(key, None)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_other_tasks(read_info(unnamed), as_target("OpenDrawer"), slots)
    assert caplog.text == ""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        finetune(stage3_config(stage2_state, tmp_path / "tid", "Reach", env_steps=10, width=32,
                               data_cfg={"path": str(reach_hdf5), "task_id": 9}))
    assert "data.task_id=9 takes no effect in stage 3" in caplog.text
    caplog.clear()  # Reach fine-tuned in PressButton's slot: said, as stage 3 then records it there
    with caplog.at_level(logging.WARNING):
        finetune(stage3_config(stage2_state, tmp_path / "moved", {"name": "Reach", "task_id": slots["PressButton"]},
                               env_steps=10, width=32, data_cfg={"path": str(reach_hdf5)}))
    assert (f"target 'Reach' acts in slot {slots['PressButton']} of the task one-hot, but the agent learnt 'Reach' in "
            f"slot {slots['Reach']}") in caplog.text and "stage 3 fine-tunes it there" in caplog.text
