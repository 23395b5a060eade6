"""Stage 2 (``python -m robopretrain.train`` / ``robopretrain.train.run``) for every observation spec: self-describing
checkpoints, per-task evaluation in sim, exact resumption, encoder modes, NaN guard, clear errors; data of another
robot (7-D actions, 9-D proprio: case 10's kind) trains and always keeps its checkpoint, evaluation or not."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import _fake_envs as fake
from test_loggers import tensorboard_events
from _stages import collect_sim, stage2_config
from robopretrain.checkpoint import CheckpointError, list_checkpoints, load_agent, load_latest
from robopretrain.metrics import read_jsonl
from robopretrain.nets.encoder_io import save_encoder
from robopretrain.nets.encoders import make_encoder
from robopretrain.train import run

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
TINY_ALGO = ["algo.actor_hidden=[32,32]", "algo.critic_hidden=[32,32]", "algo.n_actions=2", "algo.batch_size=32"]
STATE_OBS = {"low_dim": ["proprio", "object"], "rgb": []}
CAMERAS = {"1cam": {"low_dim": ["proprio"], "rgb": ["agentview_image"]},
           "2cams": {"low_dim": ["proprio"], "rgb": ["agentview_image", "eye_in_hand_image"]}}
EVAL_BOTH = {"eval_targets": None, "eval_every": 2}  # the data's own tasks (Reach, PressButton) in sim


@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory) -> Path:
    """2 tasks x 2 state-only episodes collected by sim_envs.collect."""
    return collect_sim(tmp_path_factory.mktemp("data") / "tiny.hdf5", ["Reach", "PressButton"])


@pytest.fixture(scope="module")
def image_hdf5(tmp_path_factory) -> Path:
    """2 tasks x 2 episodes with 32 px agentview and eye-in-hand images."""
    return collect_sim(tmp_path_factory.mktemp("data") / "images.hdf5", ["Reach", "PressButton"], images=True,
                       image_size=SIZE, eye_in_hand=True)


@pytest.fixture(scope="module")
def stage1_encoder(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(11)
    enc = make_encoder("small_conv", SIZE, channels=4, out_dim=8)
    path = save_encoder(tmp_path_factory.mktemp("stage1") / "encoder", enc, "small_conv", {"test": True})
    return path, {k: v.clone() for k, v in enc.state_dict().items()}


def offline_overrides(data: Path, out: Path, steps: int) -> list[str]:
    return [f"data.path={data}", f"output_dir={out}", f"hydra.run.dir={out}/hydra", f"train.steps={steps}",
            "train.eval_every=10", "train.eval_episodes=1", "train.checkpoint_every=10", "train.log_every=5",
            "train.calibration_batch=64", "train.progress=false", "num_threads=1", *TINY_ALGO]


def run_cli(overrides: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "robopretrain.train", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_writes_checkpoint_and_resumes(tiny_hdf5, tmp_path):
    out = tmp_path / "run"
    run_cli(offline_overrides(tiny_hdf5, out, 10))
    ckpt = load_latest(out / "checkpoints")
    assert ckpt.step == 10 and ckpt.meta["act_dim"] == 4 and ckpt.meta["algo"] == "calql"
    import sim_envs

    assert ckpt.meta["obs_spec"] == {"low_dim": [["proprio", 7], ["object", 18]], "rgb": [],
                                     "num_tasks": len(sim_envs.TASKS)}
    assert ckpt.meta["task_names"] == ["PressButton", "Reach"] and ckpt.meta["stage"] == "offline"
    assert ckpt.meta["encoder_mode"] == "none" and ckpt.meta["data_path"] == str(tiny_hdf5)
    assert ckpt.config.train.steps == 10 and ckpt.config.algo.name == "calql"
    assert set(ckpt.state) >= {"optimizer", "rng", "sampler", "step"}

    proc = run_cli(offline_overrides(tiny_hdf5, out, 20))  # same command, more steps: continues from step 10
    assert "resumed from" in proc.stdout + proc.stderr
    ckpt = load_latest(out / "checkpoints")
    assert ckpt.step == 20 and ckpt.weights["core"]["num_updates"] == 20
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["ckpt_00000020", "ckpt_00000010"]
    rows = read_jsonl(out / "metrics.jsonl")
    evals = [r for r in rows if "eval/success" in r]
    assert [r["step"] for r in evals] == [10, 20]
    for key in ("eval/Reach/success", "eval/PressButton/success", "calib/offline_q_policy",
                "calib/offline_mc_return", "calib/offline_gap_policy"):
        assert key in evals[-1], key
    assert evals[-1]["eval/episodes"] == 1 and evals[-1]["eval/Reach/episodes"] == 1  # the report prints "(1 ep)"
    assert any("train/critic_loss" in r for r in rows)
    assert (out / "tb").is_dir()


def all_tensors(tree, prefix=""):
    if torch.is_tensor(tree):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from all_tensors(v, f"{prefix}/{k}")


@pytest.mark.parametrize("spec_name", ["low_dim", "1cam", "2cams"])
def test_resumed_run_matches_uninterrupted_run(tiny_hdf5, image_hdf5, stage1_encoder, tmp_path, spec_name):
    """4 updates straight, or 2 then the same command with 4: the same weights, optimiser states and augmentation
    RNG; with cameras the stage-1 encoder is fine-tuned (1 camera) or one is trained from scratch (2 cameras) and
    each prior task is evaluated in sim on rendered images."""
    data = tiny_hdf5 if spec_name == "low_dim" else image_hdf5
    extra = {"obs": STATE_OBS if spec_name == "low_dim" else CAMERAS[spec_name], "algo": "cql", "train": EVAL_BOTH}
    if spec_name == "1cam":
        extra["encoder"] = {"checkpoint": str(stage1_encoder[0])}
    straight = run(stage2_config(data, tmp_path / "a", steps=4, **extra))
    run(stage2_config(data, tmp_path / "b", steps=2, **extra))
    resumed = run(stage2_config(data, tmp_path / "b", steps=4, **extra))  # continues from step 2

    a, b = load_latest(straight.parent), load_latest(resumed.parent)
    assert a.step == b.step == 4 and a.meta["algo"] == "cql"
    assert a.meta["encoder_mode"] == {"low_dim": "none", "1cam": "finetune", "2cams": "scratch"}[spec_name]
    assert [k for k, _ in a.meta["obs_spec"]["rgb"]] == extra["obs"]["rgb"]
    assert a.meta["parallel"] == b.meta["parallel"] == {  # a resume at the same size: one entry
        "world_size": 1, "batch_size_per_process": 8, "effective_batch_size": 8,
        "history": [{"from_step": 0, "world_size": 1, "effective_batch_size": 8}]}
    assert "augment" in a.state["rng"]
    wa, wb = dict(all_tensors(a.weights)), dict(all_tensors(b.weights))
    sa, sb = dict(all_tensors(a.state)), dict(all_tensors(b.state))
    assert wa.keys() == wb.keys() and sa.keys() == sb.keys()
    if spec_name != "low_dim":
        assert any(k.startswith("/critic_encoder/image_encoder") for k in wa)
        assert any(k.startswith("/actor_encoder/image_encoder") for k in wa)
        assert any(k.startswith("/encoder_optimizer/") for k in sa)  # optimiser states are part of the round trip
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"state {k} differs after resume"

    evals = [r for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if "eval/success" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for key in ("eval/Reach/success", "eval/PressButton/success", "eval/Reach/length", "calib/offline_q_policy"):
        assert key in evals[-1], key
    agent, _ = load_agent(tmp_path / "b")  # stage 3 / evaluate rebuild the agent from the folder alone
    other, _ = load_agent(tmp_path / "a")
    obs = {"proprio": np.zeros((3, 7), np.float32), "object": np.zeros((3, 18), np.float32),
           "agentview_image": np.zeros((3, SIZE, SIZE, 3), np.uint8),
           "eye_in_hand_image": np.zeros((3, SIZE, SIZE, 3), np.uint8), "task_id": np.array([0, 1, 2])}
    np.testing.assert_array_equal(agent.act(obs), other.act(obs))


@pytest.mark.parametrize("algo, mode", [("iql", "frozen_cached"), ("bc", "frozen"), ("calql", "frozen")])
def test_frozen_encoder_runs_keep_the_stage1_weights(image_hdf5, stage1_encoder, tmp_path, algo, mode, caplog):
    enc_path, weights = stage1_encoder
    with caplog.at_level(logging.INFO, logger="robopretrain.loops.offline"):
        path = run(stage2_config(image_hdf5, tmp_path / "run", algo=algo, steps=2, obs=CAMERAS["1cam"],
                                 encoder={"checkpoint": str(enc_path), "mode": mode},
                                 train={"eval_targets": ["Reach"]}))
    assert "step 2: evaluation success " in caplog.text  # on the console, not only in metrics.jsonl
    agent, ckpt = load_agent(path)
    assert ckpt.meta["algo"] == algo and ckpt.meta["encoder_mode"] == mode and agent.core.num_updates == 2
    enc = agent.feature_encoder if mode == "frozen_cached" else agent.critic_encoder
    for k, v in weights.items():
        assert torch.equal(enc.image_encoder.state_dict()[k], v), k
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["step"] == 2 and "eval/success" in rows[-1]
    if algo == "bc":
        assert not any(k.startswith("calib/") for k in rows[-1])  # BC has no Q-function to calibrate
        assert any("train/bc_loss" in r for r in rows)
    else:
        assert "calib/offline_q_data" in rows[-1]


def test_scratch_without_checkpoint_and_shared_encoder(image_hdf5, tmp_path):
    path = run(stage2_config(image_hdf5, tmp_path / "run", steps=2, obs=CAMERAS["2cams"], encoder={"shared": True}))
    agent, ckpt = load_agent(path)
    assert ckpt.meta["encoder_mode"] == "scratch"  # mode null without a checkpoint
    assert agent.actor_encoder is agent.critic_encoder and ckpt.meta["image_encoder"]["name"] == "small_conv"


def test_resume_with_other_parts_or_another_encoder_mode_is_a_clear_error(tiny_hdf5, image_hdf5, stage1_encoder,
                                                                          tmp_path):
    run(stage2_config(tiny_hdf5, tmp_path / "s", steps=2, obs=STATE_OBS))
    with pytest.raises(CheckpointError, match=r"checkpoint does not fit this config.*low_dim part 'object' is in the "
                                              r"checkpoint but not in this config") as err:
        run(stage2_config(tiny_hdf5, tmp_path / "s", steps=4, obs={"low_dim": ["proprio"]}))
    assert str(err.value).count("does not fit this config") == 1  # said once, not nested
    assert '; the run that wrote it also differs in: obs.low_dim: ["proprio", "object"] -> ["proprio"]' in str(err.value)
    run(stage2_config(image_hdf5, tmp_path / "i", steps=2, obs=CAMERAS["1cam"]))
    with pytest.raises(CheckpointError, match=r"encoder_mode: checkpoint has 'scratch', this config needs 'frozen'"):
        run(stage2_config(image_hdf5, tmp_path / "i", steps=4, obs=CAMERAS["1cam"],
                          encoder={"checkpoint": str(stage1_encoder[0]), "mode": "frozen"}))


def test_a_stage1_encoder_retrained_in_place_refuses_the_resume_and_its_folder_named_two_ways_does_not(
        image_hdf5, stage1_encoder, tmp_path):
    """Stage 2 compared only encoder.checkpoint's path: a stage-1 encoder retrained in place was resumed on (its
    frozen_cached features the new encoder's, the agent's encoder the old one's), while the same encoder named as
    its run folder was refused. The encoder folder's content is the input now."""
    import shutil

    from robopretrain.run_fingerprint import ResumeMismatchError

    run_folder = tmp_path / "stage1_run"  # a stage-1 run folder holding the encoder
    shutil.copytree(stage1_encoder[0], run_folder / "encoder")
    enc = {"checkpoint": str(run_folder / "encoder"), "mode": "frozen"}
    run(stage2_config(image_hdf5, tmp_path / "s", steps=2, obs=CAMERAS["1cam"], encoder=enc))
    run(stage2_config(image_hdf5, tmp_path / "s", steps=4, obs=CAMERAS["1cam"],
                      encoder={**enc, "checkpoint": str(run_folder)}))  # the run folder: the same encoder, resumed
    torch.manual_seed(12)  # stage 1 run again into the same folder: other weights
    save_encoder(run_folder / "encoder", make_encoder("small_conv", SIZE, channels=4, out_dim=8), "small_conv",
                 {"test": True})
    with pytest.raises(ResumeMismatchError, match=r"encoder .*stage1_run/encoder"):
        run(stage2_config(image_hdf5, tmp_path / "s", steps=6, obs=CAMERAS["1cam"], encoder=enc))


def test_bad_configs_name_the_problem(image_hdf5, tiny_hdf5, tmp_path):
    from robopretrain.data.hdf5 import DatasetError

    with pytest.raises(ValueError, match=r"encoder.mode=frozen needs encoder.checkpoint"):
        run(stage2_config(image_hdf5, tmp_path / "a", obs=CAMERAS["1cam"], encoder={"mode": "frozen"}))
    with pytest.raises(ValueError, match=r"encoder.augment_pad=-1; expected an integer >= 0"):
        run(stage2_config(image_hdf5, tmp_path / "b", obs=CAMERAS["1cam"], encoder={"augment_pad": -1}))
    with pytest.raises(ValueError, match=r"observation key 'agentview_image' \(rgb part 'agentview_image'\) not found"):
        run(stage2_config(tiny_hdf5, tmp_path / "c", obs=CAMERAS["1cam"]))
    with pytest.raises(ValueError, match=r"rgb part 'proprio' is float32 \(7,\); expected uint8 images"):
        run(stage2_config(image_hdf5, tmp_path / "d", obs={"low_dim": [], "rgb": ["proprio"]}))
    with pytest.raises(ValueError, match=r"target 'NoSuchTask' is not a sim_envs task"):
        run(stage2_config(tiny_hdf5, tmp_path / "e", obs=STATE_OBS, train={"eval_targets": ["NoSuchTask"]}))
    with pytest.raises(ValueError, match=r"obs.low_dim=\[\] and obs.rgb=\[\]; expected at least one observation part"):
        run(stage2_config(tiny_hdf5, tmp_path / "f", obs={"low_dim": [], "rgb": []}))
    assert not any((tmp_path / x / "checkpoints").exists() for x in "abcdef")
    assert issubclass(DatasetError, ValueError)


def test_a_malformed_dr_entry_is_refused_before_data_collection_builds_an_env(tmp_path, monkeypatch):
    from robopretrain import build

    def collect(*args, **kwargs):
        raise AssertionError("data collection started before dr was checked")

    monkeypatch.setattr(build, "resolve_data_path", collect)
    cfg = stage2_config(tmp_path / "demos.hdf5", tmp_path / "run", data_cfg={"generate": True},
                        dr={"level": "train", "factor": ["friction"]})  # misspelt 'factors'
    with pytest.raises(ValueError, match=r"^dr=.*unknown key\(s\) \['factor'\]"):
        run(cfg)


def test_nan_loss_stops_before_the_checkpoint_is_written(tiny_hdf5, tmp_path):
    """A reward scale of 1e38 makes the Cal-QL critic loss inf: the run stops at the first metrics step (log_every 2)
    before any checkpoint exists."""
    from robopretrain.guards import NonFiniteLossError

    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"loss 'critic_loss' is (inf|nan) at step 2"):
        run(stage2_config(tiny_hdf5, out, steps=20, obs=STATE_OBS, algo="calql",
                          train={"checkpoint_every": 10}, algo_cfg={"reward_scale": 1e38}))
    assert load_latest(out / "checkpoints") is None


def test_metrics_are_computed_on_checkpoint_steps_between_log_steps(tiny_hdf5, tmp_path, monkeypatch):
    """with_metrics is on for log, evaluation and checkpoint steps, so the NaN guard runs before every checkpoint."""
    from robopretrain.agent import Agent

    seen = []
    update = Agent.update

    def spy(self, batch, with_metrics=True):
        seen.append(with_metrics)
        return update(self, batch, with_metrics)

    monkeypatch.setattr(Agent, "update", spy)
    from robopretrain.metrics import MetricsLogger

    closed = []
    close = MetricsLogger.close
    monkeypatch.setattr(MetricsLogger, "close", lambda self: closed.append(self.run_dir) or close(self))
    run(stage2_config(tiny_hdf5, tmp_path / "m", steps=7, obs=STATE_OBS,
                      train={"log_every": 4, "checkpoint_every": 3, "eval_every": 100}))
    assert [i + 1 for i, m in enumerate(seen) if m] == [3, 4, 6, 7]  # ckpt 3, log 4, ckpt 6, last step 7
    assert closed == [tmp_path / "m"]  # the logger is closed (TensorBoard flushed) when training ends
    rows = read_jsonl(tmp_path / "m" / "metrics.jsonl")
    # update metrics at log steps and the last (a run shorter than log_every logged none: a blank report Q plot)
    assert [r["step"] for r in rows if any(k.startswith("train/") for k in r)] == [4, 7]


def test_a_run_resumed_from_an_older_checkpoint_drops_the_later_metrics_rows(tiny_hdf5, tmp_path, caplog):
    """Killed after logging steps past its newest checkpoint, a run resumes at that checkpoint, drops the rows logged
    after it and logs them again once; the evaluation at the start (here: the calibration row at step 0) belongs to
    the fresh run only."""
    from robopretrain.checkpoint import LATEST_FILE, checkpoint_name

    out = tmp_path / "r"
    cfg = dict(steps=4, obs=STATE_OBS, train={"log_every": 1, "checkpoint_every": 2, "eval_every": 100,
                                              "eval_at_start": True, "tensorboard": True})
    run(stage2_config(tiny_hdf5, out, **cfg))
    text = (out / "checkpoints" / checkpoint_name(2) / "meta.json").read_text()  # Cal-QL's clip range is +-inf
    meta = json.loads(text, parse_constant=lambda token: pytest.fail(f"meta.json is not standard JSON: {token}"))
    assert meta["fingerprint"]["config"]["algo.cql_clip_diff_max"] == "Infinity"
    uninterrupted = [row["step"] for row in read_jsonl(out / "metrics.jsonl")]
    assert uninterrupted == [0, 1, 2, 3, 4, 4]  # calibration at the start; training rows; calibration at the end
    shutil.rmtree(out / "checkpoints" / checkpoint_name(4))  # as if it died after logging 3 and 4
    (out / "checkpoints" / LATEST_FILE).write_text(checkpoint_name(2) + "\n")
    with caplog.at_level(logging.INFO, logger="robopretrain"):
        run(stage2_config(tiny_hdf5, out, **cfg))
    assert "(step 2)" in caplog.text and "resumed from" in caplog.text  # its recorded infinite settings compared
    assert "written by a run with" not in caplog.text  # same process count: no data-stream warning
    assert "nothing to train" not in caplog.text  # 2 of 4 updates done: not past train.steps
    assert [row["step"] for row in read_jsonl(out / "metrics.jsonl")] == uninterrupted
    assert any("calib/offline_q_data" in row for row in read_jsonl(out / "metrics.jsonl") if row["step"] == 0)
    events = tensorboard_events(out / "tb")  # TensorBoard hides the killed session's steps 3 and 4: each once
    assert [e.step for e in events.Scalars("train/critic_loss")] == [1, 2, 3, 4]
    early = tmp_path / "early"  # killed before its first checkpoint: the rerun starts over, step 0 included
    run(stage2_config(tiny_hdf5, early, **cfg))
    shutil.rmtree(early / "checkpoints")
    run(stage2_config(tiny_hdf5, early, **cfg))
    assert [row["step"] for row in read_jsonl(early / "metrics.jsonl")] == uninterrupted  # step 0 was there twice
    calibrated = [e.step for e in tensorboard_events(early / "tb").Scalars("calib/offline_q_data")]
    assert calibrated == [0, 4]
    caplog.clear()  # a rerun asking for fewer updates than the run has: its checkpoint is the result, said aloud
    with caplog.at_level(logging.WARNING, logger="robopretrain"):
        final = run(stage2_config(tiny_hdf5, out, **{**cfg, "steps": 3}))
    assert final.name == checkpoint_name(4)
    assert "last checkpoint is at update 4, past train.steps=3: nothing to train" in caplog.text


def test_meta_keeps_every_sessions_world_size_not_only_the_last(tiny_hdf5, tmp_path):
    """A run resumed under another process count keeps its earlier sessions' sizes in ``meta.json``
    (``parallel.history``); a resume at the same size adds nothing. Here the first session's checkpoint is edited
    to read as a 2-process one (the torchrun test covers real ranks)."""
    from robopretrain.checkpoint import META_FILE

    out = tmp_path / "w"
    cfg = dict(obs=STATE_OBS, train={"checkpoint_every": 2, "eval_every": 100})
    run(stage2_config(tiny_hdf5, out, steps=2, **cfg))
    first = load_latest(out / "checkpoints", with_state=False)
    batch = first.meta["parallel"]["batch_size_per_process"]
    assert first.meta["parallel"]["history"] == [{"from_step": 0, "world_size": 1, "effective_batch_size": batch}]
    run(stage2_config(tiny_hdf5, out, steps=4, **cfg))  # the same size: one entry still
    assert load_latest(out / "checkpoints", with_state=False).meta["parallel"]["history"] == \
        first.meta["parallel"]["history"]
    for older in (True, False):  # a checkpoint with the record, and one written before it (its size alone)
        run_dir = tmp_path / f"older{older}"
        run(stage2_config(tiny_hdf5, run_dir, steps=2, **cfg))
        path = load_latest(run_dir / "checkpoints", with_state=False).path / META_FILE
        meta = json.loads(path.read_text())
        meta["parallel"] = {"world_size": 2, "batch_size_per_process": batch, "effective_batch_size": 2 * batch}
        earlier = [{"from_step": 0, "world_size": 2, "effective_batch_size": 2 * batch}]
        if not older:  # three sessions: 1 process, then 2 from update 1, then 1 again
            earlier = [{"from_step": 0, "world_size": 1, "effective_batch_size": batch},
                       {"from_step": 1, "world_size": 2, "effective_batch_size": 2 * batch}]
            meta["parallel"]["history"] = earlier
        path.write_text(json.dumps(meta))
        run(stage2_config(tiny_hdf5, run_dir, steps=4, **cfg))
        last = load_latest(run_dir / "checkpoints", with_state=False)
        assert last.step == 4 and last.meta["parallel"]["world_size"] == 1
        assert last.meta["parallel"]["history"] == earlier + [
            {"from_step": 2, "world_size": 1, "effective_batch_size": batch}]


@pytest.mark.parametrize("algo,cfg", [("dt", {"warmup_steps": 100, "lr": 1e-3}), ("cql", {"bc_steps": 3})])
def test_a_run_from_init_counts_its_updates_from_zero_as_its_optimiser_starts_fresh(tiny_hdf5, tmp_path, algo, cfg,
                                                                                   monkeypatch):
    """init= took the checkpoint's update count with its weights: DT's warm-up was skipped (full learning rate
    from the first update) and CQL's bc_steps warm start ran 0 of its updates. A resume keeps the count."""
    first = run(stage2_config(tiny_hdf5, tmp_path / "first", algo=algo, steps=4, obs=STATE_OBS, algo_cfg=cfg))
    assert load_agent(first, with_optimizer=True)[0].core.num_updates == 4
    assert load_agent(first, algo="calql" if algo == "cql" else None)[0].core.num_updates == 4  # stage 3 keeps it
    second = run(stage2_config(tiny_hdf5, tmp_path / "second", algo=algo, steps=2, obs=STATE_OBS, algo_cfg=cfg,
                               init=str(first)))
    assert load_agent(second, with_optimizer=True)[0].core.num_updates == 2
    if algo == "dt":  # update 2 of a 100-update warm-up: 2 % of the rate (it was the full rate)
        rows = [r for r in read_jsonl(tmp_path / "second" / "metrics.jsonl") if "train/lr" in r]
        assert rows[0]["step"] == 2 and rows[0]["train/lr"] == pytest.approx(1e-3 * 2 / 100)
    else:  # the BC warm start's updates: bc_phase is set before each update's losses
        from robopretrain.algos.cql import CQL

        seen, losses = [], CQL._losses

        def spy(self, *args):
            out = losses(self, *args)
            seen.append(self.bc_phase)
            return out

        monkeypatch.setattr(CQL, "_losses", spy)
        run(stage2_config(tiny_hdf5, tmp_path / "third", algo=algo, steps=4, obs=STATE_OBS, algo_cfg=cfg,
                          init=str(first)))
        assert seen == [True, True, True, False]


def test_a_dt_trained_on_negative_returns_is_warned_about_on_a_sparse_target(tiny_hdf5, tmp_path, caplog):
    """-distance-like rewards (every step negative) and the data's sim tasks as targets (reward: sparse): the DT would
    count its return-to-go down with {0, 1} rewards at evaluation; said per target, by stage 2 and by evaluate."""
    dense = tmp_path / "dense.hdf5"
    shutil.copy(tiny_hdf5, dense)
    with h5py.File(dense, "r+") as f:
        for demo in f["data"].values():
            demo["rewards"][...] = demo["rewards"][()] - 1.0  # -1 per step, 0 on success
    cfg = {"obs": STATE_OBS, "algo_cfg": {"target_return": -5.0},
           "train": {**EVAL_BOTH, "eval_every": 2, "eval_episodes": 1}}
    with caplog.at_level(logging.WARNING, logger="robopretrain"):
        ckpt = run(stage2_config(dense, tmp_path / "dt", algo="dt", steps=2, **cfg))
    warned = [r.getMessage() for r in caplog.records if "reward: sparse (float(success)" in r.getMessage()]
    assert sorted(m.split("'")[1] for m in warned) == ["PressButton", "Reach"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain"):
        run(stage2_config(tiny_hdf5, tmp_path / "sparse", algo="dt", steps=2, obs=STATE_OBS,
                          train={**EVAL_BOTH, "eval_episodes": 1}))
    assert "reward: sparse (float(success)" not in caplog.text  # the data's own {0, 1} rewards: nothing to say
    from hydra import compose, initialize_config_dir

    from robopretrain.evaluate import evaluate_robustness

    def evaluate(reward: str) -> str:
        caplog.clear()
        overrides = [f"checkpoint={ckpt}", f"output_dir={tmp_path / reward}", "episodes=1", "progress=false",
                     "select=[nominal]", "workers=0", "video.enabled=false",
                     f"target={{name: Reach, reward: {reward}}}"]
        with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
            cfg = compose("evaluate", overrides=overrides)
        with caplog.at_level(logging.WARNING, logger="robopretrain"):
            evaluate_robustness(cfg)
        return caplog.text

    said = evaluate("sparse")
    assert "target 'Reach': reward: sparse (float(success)" in said
    assert "this episode has reached step" not in said  # evaluate resets every episode: a long one is the env's
    assert "reward: sparse (float(success)" not in evaluate("dense")


def test_a_newest_checkpoint_without_its_state_is_passed_over_for_an_exact_resume(tiny_hdf5, tmp_path, caplog):
    """state.pt of the newest checkpoint not copied with the weights: the resume took it silently, with fresh
    optimisers and data stream (25 of 27 tensors off the uninterrupted run). It now resumes from the previous
    checkpoint, which has its state, exactly; with no state anywhere it says the resume is not exact."""
    from robopretrain.checkpoint import STATE_FILE, checkpoint_name

    cfg = dict(obs=STATE_OBS, train={"checkpoint_every": 1, "eval_every": 100})
    straight = load_latest(run(stage2_config(tiny_hdf5, tmp_path / "a", steps=4, **cfg)).parent)
    run(stage2_config(tiny_hdf5, tmp_path / "b", steps=2, **cfg))
    (tmp_path / "b" / "checkpoints" / checkpoint_name(2) / STATE_FILE).unlink()
    with pytest.warns(UserWarning, match="has no state.pt .* falling back to the previous one"):
        resumed = load_latest(run(stage2_config(tiny_hdf5, tmp_path / "b", steps=4, **cfg)).parent)
    for part in ("actor", "critic"):
        for k, v in straight.weights["core"][part].items():
            assert torch.equal(v, resumed.weights["core"][part][k]), f"{part}.{k}"
    run(stage2_config(tiny_hdf5, tmp_path / "c", steps=1, **cfg))
    (tmp_path / "c" / "checkpoints" / checkpoint_name(1) / STATE_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        run(stage2_config(tiny_hdf5, tmp_path / "c", steps=2, **cfg))
    assert "has no state.pt (optimisers, RNG, data stream) and no earlier checkpoint has one" in caplog.text


def _counted_evaluations(monkeypatch) -> list[int]:
    """Stage 2's evaluation replaced by a constant result; the returned list grows by one per call."""
    import robopretrain.train as stage2

    calls: list[int] = []
    monkeypatch.setattr(stage2, "evaluate", lambda *a, **k: calls.append(1) or {"success": 0.5, "return": 1.0,
                                                                                 "length": 3.0})
    return calls


def _evaluated_steps(metrics: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(metrics) if "eval/success" in r]


def _drop_evaluation(metrics: Path, step: int) -> None:
    """A run killed after its checkpoint at ``step`` and before that step's evaluation row."""
    rows = [r for r in read_jsonl(metrics) if not (r["step"] == step and "eval/success" in r)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_run_killed_between_its_checkpoint_and_that_steps_evaluation_evaluates_on_the_rerun(tiny_hdf5, tmp_path,
                                                                                             caplog, monkeypatch):
    """Checkpoints come before evaluations, so a kill in between (a long final evaluation) left a finished run with
    no evaluation at its last step, and the rerun resumed past it (the pipeline's report then dropped the stage's
    success table). The rerun makes it up, once; a run whose evaluation was logged is not evaluated again."""
    calls = _counted_evaluations(monkeypatch)
    cfg = stage2_config(tiny_hdf5, tmp_path / "run", steps=4, obs=STATE_OBS,
                        train={"eval_targets": ["Reach"], "eval_every": 2, "checkpoint_every": 2})
    run(cfg)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert _evaluated_steps(metrics) == [2, 4] and len(calls) == 2
    _drop_evaluation(metrics, 4)
    with caplog.at_level(logging.INFO, logger="robopretrain.loops.offline"):
        run(cfg)
    assert "the evaluation at update 4 (its checkpoint's) was not logged before the run stopped" in caplog.text
    assert _evaluated_steps(metrics) == [2, 4] and len(calls) == 3
    run(cfg)  # finished and evaluated: nothing to do
    assert _evaluated_steps(metrics) == [2, 4] and len(calls) == 3
    metrics.unlink()  # killed before anything was logged: no metrics file at all
    run(cfg)
    assert _evaluated_steps(metrics) == [4] and len(calls) == 4
    from robopretrain.checkpoint import LATEST_FILE, checkpoint_name

    mid = tmp_path / "mid"  # killed after an earlier checkpoint (2 of 4) before its evaluation: made up, then 4
    cfg = stage2_config(tiny_hdf5, mid, steps=4, obs=STATE_OBS,
                        train={"eval_targets": ["Reach"], "eval_every": 2, "checkpoint_every": 2})
    run(cfg)
    shutil.rmtree(mid / "checkpoints" / checkpoint_name(4))
    (mid / "checkpoints" / LATEST_FILE).write_text(checkpoint_name(2) + "\n")
    _drop_evaluation(mid / "metrics.jsonl", 2)
    run(cfg)
    assert _evaluated_steps(mid / "metrics.jsonl") == [2, 4] and len(calls) == 8


def test_a_final_update_off_the_evaluation_period_killed_before_its_evaluation_evaluates_on_the_rerun(
        tiny_hdf5, tmp_path, monkeypatch):
    """The last update is evaluated whether or not ``eval_every`` divides it; its evaluation is made up for too."""
    calls = _counted_evaluations(monkeypatch)
    cfg = stage2_config(tiny_hdf5, tmp_path / "run", steps=5, obs=STATE_OBS,
                        train={"eval_targets": ["Reach"], "eval_every": 2, "checkpoint_every": 5})
    run(cfg)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert _evaluated_steps(metrics) == [2, 4, 5] and len(calls) == 3
    _drop_evaluation(metrics, 5)
    run(cfg)
    assert _evaluated_steps(metrics) == [2, 4, 5] and len(calls) == 4


@pytest.mark.parametrize("progress", [False, True])
def test_the_progress_bar_shows_only_when_asked(tiny_hdf5, tmp_path, capsys, progress):
    run(stage2_config(tiny_hdf5, tmp_path / "p", steps=2, obs=STATE_OBS, train={"progress": progress}))
    err = capsys.readouterr().err
    assert ("upd" in err) == progress  # tqdm's "2/2 [..., ...upd/s]" on stderr
    assert ("2/2" in err) == progress  # the bar counts every update


# --------------------------------------------------------------------------- another robot's data (case 10)


@pytest.mark.parametrize("algo", ["calql", "iql", "bc"])
def test_7d_actions_of_an_unknown_robot_train_and_skip_evaluation_with_one_log_line(tmp_path, caplog, algo):
    data = fake.write_robosuite_demos(tmp_path / "robosuite.hdf5", 3)
    with caplog.at_level(logging.INFO, logger="robopretrain.build"):
        ckpt = run(stage2_config(data, tmp_path / "run", algo=algo, obs={"low_dim": [fake.EEF, fake.GRIPPER]},
                                 train={"eval_targets": None}))
    skipped = [r.getMessage() for r in caplog.records if "no evaluation in sim" in r.getMessage()]
    assert len(skipped) == 1 and "'reach'" in skipped[0] and "RobosuiteLike" in skipped[0]
    agent, saved = load_agent(ckpt)
    assert saved.meta["act_dim"] == 7 and agent.act_dim == 7
    assert saved.meta["obs_spec"]["low_dim"] == [[fake.EEF, 3], [fake.GRIPPER, 2]]
    assert not [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval/success" in r]


def with_9d_proprio(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose ``proprio`` has two more (zero) dimensions; env_args still name our sim."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for demo in f["data"].values():
            for part in ("obs", "next_obs"):
                old = demo[part]["proprio"][()]
                del demo[part]["proprio"]
                demo[part].create_dataset("proprio", data=np.concatenate([old, np.zeros((len(old), 2), old.dtype)], 1))
    return dst


def test_an_evaluation_that_fails_never_costs_the_checkpoint(tiny_hdf5, tmp_path, caplog, monkeypatch):
    """An evaluation that raises during training (here: the sim breaks at every episode) is a warning, training goes
    on, and every checkpoint is written (checkpoints come before evaluations)."""
    import robopretrain.train as stage2

    def broken(*args, **kwargs):
        raise RuntimeError("the simulator broke")

    monkeypatch.setattr(stage2, "evaluate", broken)
    with caplog.at_level(logging.WARNING, logger="robopretrain.loops.offline"):
        ckpt = run(stage2_config(tiny_hdf5, tmp_path / "run", steps=4, obs=STATE_OBS,
                                 train={"eval_targets": ["Reach"], "eval_every": 2, "checkpoint_every": 2}))
    failed = [r.getMessage() for r in caplog.records if "evaluation at step" in r.getMessage()]
    assert len(failed) == 2 and failed[0].startswith("evaluation at step 2 failed, training goes on")
    assert "the simulator broke" in failed[0]
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["ckpt_00000004", "ckpt_00000002"]
    assert load_latest(tmp_path / "run" / "checkpoints").path == ckpt
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert not [r for r in rows if "eval/success" in r] and [r for r in rows if "calib/offline_q_data" in r]


def test_the_datas_own_target_that_does_not_fit_is_skipped_and_a_named_one_is_refused(tiny_hdf5, tmp_path, caplog):
    """9-D proprio in a file that names our sim: the data's own Reach (7-D proprio) cannot be evaluated; by default
    that is one warning and no evaluation (every checkpoint written); named in train.eval_targets it is refused at
    start with the part and both sizes."""
    data = with_9d_proprio(tiny_hdf5, tmp_path / "proprio9.hdf5")
    with caplog.at_level(logging.INFO, logger="robopretrain.build"):
        ckpt = run(stage2_config(data, tmp_path / "run", steps=4, obs=STATE_OBS,
                                 train={"eval_targets": None, "eval_every": 2, "checkpoint_every": 2}))
    assert any("no evaluation on Reach" in r.getMessage() and "size 7, the agent has 9" in r.getMessage()
               and r.levelno == logging.WARNING for r in caplog.records)
    assert load_agent(ckpt)[1].meta["obs_spec"]["low_dim"][0] == ["proprio", 9]
    assert not [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval/success" in r]
    with pytest.raises(ValueError, match="low_dim part 'proprio'.*size 7, the agent has 9"):
        run(stage2_config(data, tmp_path / "named", steps=4, obs=STATE_OBS, train={"eval_targets": ["Reach"]}))


def test_the_nan_guard_stops_every_rank_when_one_ranks_loss_is_not_finite(monkeypatch):
    """Under torchrun a rank whose own losses are finite must stop too when another rank's are not (else the
    ranks' collectives hang); a rank with its own NaN names its own loss."""
    from robopretrain.distributed import DistInfo
    from robopretrain.guards import NonFiniteLossError
    from robopretrain.loops import offline

    dinfo = DistInfo(rank=1, world_size=2)
    monkeypatch.setattr(offline, "any_rank", lambda flag, d: True)  # another rank saw a NaN
    with pytest.raises(NonFiniteLossError, match="on another rank"):
        offline._guard(5, {"critic_loss": 1.0, "q": 2.0}, dinfo)
    monkeypatch.setattr(offline, "any_rank", lambda flag, d: flag)  # only this rank's own values
    out = offline._guard(5, {"critic_loss": 1.0, "q": float("nan")}, dinfo)  # a NaN outside the losses: goes on
    assert out["critic_loss"] == 1.0 and np.isnan(out["q"])
    with pytest.raises(NonFiniteLossError, match="critic_loss") as err:
        offline._guard(5, {"critic_loss": float("nan")}, dinfo)
    assert "another rank" not in str(err.value)


def test_a_relative_data_path_is_recorded_absolute_and_init_names_the_obs_it_ignores(image_hdf5, tmp_path, caplog,
                                                                                     monkeypatch):
    """Stage 3 reads the checkpoint's data from any folder (a relative data.path was stored as typed); device=auto is
    this machine's device; one name alone is a list of it. An init run says that the obs.low_dim / obs.rgb it was
    given take no effect (the checkpoint's parts are trained, silently before), and says nothing of the defaults."""
    monkeypatch.chdir(image_hdf5.parent)
    first = Path(run(stage2_config(Path(image_hdf5.name), tmp_path / "first", steps=2, device="auto",
                                   obs={"low_dim": "proprio", "rgb": "agentview_image"}, data_cfg={"tasks": "Reach"})))
    agent, ckpt = load_agent(first)
    assert ckpt.meta["data_path"] == str(image_hdf5.resolve())
    assert agent.spec.low_dim_keys == ("proprio",) and agent.spec.rgb_keys == ("agentview_image",)
    assert ckpt.meta["task_names"] == ["Reach"]
    caplog.set_level("WARNING")
    run(stage2_config(image_hdf5, tmp_path / "init", steps=2, obs={"low_dim": ["object"], "rgb": []},
                      init=str(first)))
    warned = [r.getMessage() for r in caplog.records if "take(s) no effect" in r.getMessage()]
    assert len(warned) == 1 and "obs.low_dim=['object'] (the checkpoint's: ['proprio'])" in warned[0]
    assert "obs.rgb" not in warned[0]  # [] is the config file's default: the user set nothing
    caplog.clear()
    run(stage2_config(image_hdf5, tmp_path / "init_defaults", steps=2, init=str(first)))
    assert not [r for r in caplog.records if "take(s) no effect" in r.getMessage()]


def test_each_rank_resumes_its_own_data_stream_from_a_data_parallel_checkpoint(tmp_path):
    """A checkpoint of a 2-process run holds every rank's RNG and sampler state; rank 1 of a 2-process rerun takes
    its own (the DistInfo it is given, not a default single-process one)."""
    from robopretrain.agent import Agent, EncoderSettings
    from robopretrain.checkpoint import save_agent
    from robopretrain.data.spec import ObsSpec
    from robopretrain.distributed import DistInfo
    from robopretrain.loops.offline import resume, rng_states

    agent = Agent(ObsSpec(low_dim=(("proprio", 3),)), 2, "bc", {"batch_size": 4}, EncoderSettings(mode="scratch"))
    ranks = [{"rng": rng_states(agent), "sampler": {"rank": r}} for r in range(2)]
    save_agent(tmp_path / "ckpt", 6, {"algo": {"name": "bc"}}, agent, {},
               {"rng": ranks[0]["rng"], "sampler": ranks[0]["sampler"], "step": 6, "world_size": 2, "ranks": ranks})

    class Sampler:
        loaded = None

        def load_state_dict(self, state):
            Sampler.loaded = state

    step, _ = resume(agent, Sampler(), tmp_path / "ckpt", DistInfo(rank=1, world_size=2))
    assert step == 6 and Sampler.loaded == {"rank": 1}
