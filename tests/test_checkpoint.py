"""Agent checkpoints: rebuilt from the folder alone with identical outputs (every observation spec and encoder mode),
atomic writes, fallback from a corrupt newest one, and a checkpoint of another configuration named precisely."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from robopretrain.agent import Agent, EncoderSettings
from robopretrain.checkpoint import (
    CheckpointError,
    agent_from_checkpoint,
    check_agent_fits,
    list_checkpoints,
    load_agent,
    load_checkpoint,
    load_latest,
    resolve_checkpoint_dir,
    save_agent,
    save_checkpoint,
    split_agent_state,
)
from robopretrain.data.spec import ObsSpec

TINY = {"actor_hidden": [16, 16], "critic_hidden": [16, 16], "n_actions": 2, "batch_size": 8}
SIZE = 16
SPECS = {
    "low_dim": ObsSpec(low_dim=(("proprio", 7), ("object", 5)), num_tasks=3),
    "1cam": ObsSpec(low_dim=(("proprio", 7),), rgb=(("agentview_image", (SIZE, SIZE, 3)),), num_tasks=3),
    "2cams": ObsSpec(low_dim=(("proprio", 7),), rgb=(("agentview_image", (SIZE, SIZE, 3)),
                                                     ("eye_in_hand_image", (SIZE, SIZE, 3))), num_tasks=3),
}
CONFIG = {"algo": {"name": "calql"}, "seed": 0}


def observations(spec: ObsSpec, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: rng.normal(size=(n, d)).astype(np.float32) for k, d in spec.low_dim}
    out.update({k: rng.integers(0, 256, (n, *shape), dtype=np.uint8) for k, shape in spec.rgb})
    if spec.num_tasks:
        out["task_id"] = rng.integers(0, spec.num_tasks, n)
    return out


def batch(agent: Agent, n: int = 8, seed: int = 0) -> dict:
    """Random transitions as the agent trains on them (prepared: frozen features for frozen_cached)."""
    rng = np.random.default_rng(seed + 1)
    t = torch.from_numpy
    return {"observations": {k: t(v) for k, v in agent.prepare(observations(agent.spec, n, seed)).items()},
            "next_observations": {k: t(v) for k, v in agent.prepare(observations(agent.spec, n, seed + 7)).items()},
            "actions": t(rng.uniform(-1, 1, (n, 4)).astype(np.float32)),
            "rewards": t(rng.choice([-5.0, 5.0], n).astype(np.float32)), "dones": torch.zeros(n),
            "mc_returns": t(rng.normal(size=n).astype(np.float32))}


def stats_of(spec: ObsSpec) -> dict:
    return {k: {"mean": [0.5] * d, "std": [2.0] * d} for k, d in spec.low_dim}


def tiny_agent(spec: ObsSpec = SPECS["low_dim"], seed: int = 0, algo: str = "calql", **settings) -> Agent:
    torch.manual_seed(seed)
    enc = EncoderSettings(**{"kwargs": {"channels": 4, "out_dim": 8}, "augment_pad": 1, **settings})
    return Agent(spec, 4, algo, TINY if algo != "iql" else {"actor_hidden": [16], "critic_hidden": [16],
                                                            "value_hidden": [16]},
                 enc, stats=stats_of(spec), seed=seed)


def train_a_bit(agent: Agent, steps: int = 3, seed: int = 1) -> None:
    for i in range(steps):
        agent.update(batch(agent, seed=seed + i))


def test_reload_gives_identical_outputs_and_continues_identically(tmp_path):
    agent = tiny_agent()
    train_a_bit(agent)
    path = save_agent(tmp_path / "run" / "checkpoints", 3, CONFIG, agent, {"stage": "test"}, state={"step": 3})
    for where in (path, tmp_path / "run" / "checkpoints", tmp_path / "run"):  # a ckpt, its folder, the run folder
        other, ckpt = load_agent(where, with_optimizer=True)
        assert ckpt.path == path
    obs = observations(agent.spec, 5, seed=3)
    act = torch.rand(5, 4) * 2 - 1
    np.testing.assert_array_equal(agent.act(obs), other.act(obs))
    assert torch.equal(agent.q_values(obs, act), other.q_values(obs, act))
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 3 and meta["stage"] == "test" and meta["algo"] == "calql" and meta["act_dim"] == 4
    assert ObsSpec.from_dict(meta["obs_spec"]) == agent.spec
    assert {"torch", "mujoco", "robopretrain"} <= set(meta["versions"])
    assert (path / "config.yaml").read_text().startswith("algo:")
    nonfinite = {"clip": [float("inf"), -float("inf")], "nested": {"nan": float("nan")}, "name": "inf"}
    path = save_agent(tmp_path / "other", 1, CONFIG, agent, {"stage": "test", "fingerprint": nonfinite})
    strict = json.loads((path / "meta.json").read_text(), parse_constant=lambda token: pytest.fail(token))
    assert strict["fingerprint"] == {"clip": ["Infinity", "-Infinity"], "nested": {"nan": "NaN"}, "name": "inf"}
    back = load_checkpoint(path).meta["fingerprint"]  # read back as the floats they were
    assert back["clip"] == [float("inf"), -float("inf")] and np.isnan(back["nested"]["nan"]) and back["name"] == "inf"
    # the optimiser continues identically too: one more update (same RNG) on both gives the same weights
    torch.manual_seed(7)
    train_a_bit(agent, 1, seed=50)
    torch.manual_seed(7)
    train_a_bit(other, 1, seed=50)
    for a, b in zip(agent.core.actor.parameters(), other.core.actor.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec_name", ["1cam", "2cams"])
@pytest.mark.parametrize("mode", ["finetune", "frozen", "frozen_cached", "scratch"])
def test_camera_agents_round_trip_without_the_stage1_file(tmp_path, spec_name, mode):
    from robopretrain.nets.encoder_io import save_encoder
    from robopretrain.nets.encoders import make_encoder

    enc_dir = tmp_path / "stage1"
    save_encoder(enc_dir, make_encoder("small_conv", SIZE, channels=4, out_dim=8), "small_conv", {"test": True})
    agent = tiny_agent(SPECS[spec_name], seed=3, mode=mode, checkpoint=str(enc_dir))
    with torch.no_grad():  # make the weights differ from any fresh build
        for p in agent.critic_encoder.parameters():
            p.add_(0.01)
    train_a_bit(agent, 2)
    save_agent(tmp_path / "run" / "checkpoints", 7, CONFIG, agent, {"task_names": ["Reach"]})
    shutil.rmtree(enc_dir)  # the rebuilt agent must not need the stage-1 file

    loaded, ckpt = load_agent(tmp_path / "run")
    assert ckpt.step == 7 and ckpt.meta["task_names"] == ["Reach"] and loaded.mode == mode
    assert loaded.trains_encoder == (mode in ("finetune", "scratch"))
    obs = observations(agent.spec, 5, seed=9)
    np.testing.assert_array_equal(loaded.act(obs), agent.act(obs))
    stored = {k: torch.as_tensor(v) for k, v in agent.prepare(obs).items()}  # what buffers hold (features if cached)
    acts = torch.zeros(5, 4)
    torch.testing.assert_close(loaded.q_values(stored, acts), agent.q_values(stored, acts), rtol=0, atol=0)


def test_write_is_atomic_and_keeps_previous(tmp_path):
    agent = tiny_agent()
    save_agent(tmp_path, 1, CONFIG, agent, {})
    weights, _ = split_agent_state(agent.state_dict())
    with pytest.raises(Exception):
        save_checkpoint(tmp_path, 2, {"a": 1}, {**weights, "bad": lambda x: x}, {})  # unpicklable -> fails
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000001"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    assert (tmp_path / "latest").read_text().strip() == "ckpt_00000001"
    assert load_latest(tmp_path).step == 1


def test_a_run_folder_its_checkpoints_folder_and_the_latest_file_name_the_latest_checkpoint(tmp_path):
    agent = tiny_agent()
    first = save_agent(tmp_path / "checkpoints", 1, CONFIG, agent, {})
    newest = save_agent(tmp_path / "checkpoints", 2, CONFIG, agent, {})
    for given in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "latest", newest):
        assert resolve_checkpoint_dir(given) == newest
    assert resolve_checkpoint_dir(first) == first
    (tmp_path / "checkpoints" / "latest").write_text(first.name)  # latest names what it names, not the newest step
    assert resolve_checkpoint_dir(tmp_path / "checkpoints" / "latest") == first
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        resolve_checkpoint_dir(tmp_path / "checkpoints" / "ckpt_00000001" / "meta.json")
    # a mistyped path and a damaged ckpt_* folder say so (both read "neither a checkpoint folder ...")
    with pytest.raises(CheckpointError, match=r"checkpoints_typo: no such file or folder; give a run folder"):
        resolve_checkpoint_dir(tmp_path / "checkpoints_typo")
    (first / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=rf"{first}: a checkpoint folder without meta.json \(damaged.*give its "
                                              rf"run folder \({tmp_path}\)"):
        resolve_checkpoint_dir(first)
    # a pipeline run folder, or its stage3/: the run folders below it are named (its stage3/<target>)
    pipeline_run = tmp_path / "pipe"
    for run in ("stage2", "stage3/Reach", "stage3/PressButton"):
        save_agent(pipeline_run / run / "checkpoints", 1, CONFIG, agent, {})
    (pipeline_run / "data").mkdir()
    with pytest.raises(CheckpointError, match=rf"{pipeline_run}: neither .*; run folders below it: "
                                              rf"{pipeline_run / 'stage2'}, {pipeline_run / 'stage3' / 'PressButton'}, "
                                              rf"{pipeline_run / 'stage3' / 'Reach'}$"):
        resolve_checkpoint_dir(pipeline_run)
    with pytest.raises(CheckpointError, match=r"run folders below it: .*stage3/PressButton, .*stage3/Reach$"):
        resolve_checkpoint_dir(pipeline_run / "stage3")


@pytest.mark.parametrize("pointer", ["garbage", "ckpt_00000009", "", "../elsewhere"])
def test_a_latest_pointer_naming_no_checkpoint_is_ignored_with_one_warning(tmp_path, caplog, pointer):
    """A damaged ``latest`` (a name that is no checkpoint there) was tried first and warned about as "unreadable;
    falling back to the previous one" (three times in one stage-2 rerun) while the newest was loaded, and an
    evaluation of the run refused it."""
    import logging

    import robopretrain.checkpoint as checkpoint_module
    from robopretrain.checkpoint import load_agent

    agent = tiny_agent()
    save_agent(tmp_path / "checkpoints", 1, CONFIG, agent, {})
    newest = save_agent(tmp_path / "checkpoints", 2, CONFIG, agent, {})
    (tmp_path / "checkpoints" / "latest").write_text(pointer + "\n")
    checkpoint_module._DANGLING_SAID.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.checkpoint"):
        assert resolve_checkpoint_dir(tmp_path) == newest
        assert load_latest(tmp_path / "checkpoints").step == 2
        assert load_agent(tmp_path) is not None  # an evaluation of the run
    said = [r.getMessage() for r in caplog.records if "no checkpoint folder there" in r.getMessage()]
    assert len(said) == 1 and "the newest one, ckpt_00000002, is used" in said[0]


def test_a_kept_optimizer_trains_at_the_configured_learning_rates_with_the_saved_moments(tmp_path):
    """Stage 3 with online.keep_optimizer: Adam's moments come from the checkpoint, the learning rates from the new
    config (torch's load_state_dict alone would bring back the checkpoint's rates)."""
    agent = tiny_agent()
    train_a_bit(agent)
    path = save_agent(tmp_path, 3, CONFIG, agent, {}, state={"step": 3})  # state: the optimisers are saved
    saved = agent.core.optimizer.state_dict()
    new_cfg = {**agent.core.cfg.__dict__, "policy_lr": 1e-5, "qf_lr": 2e-5, "alpha_lr": 3e-5, "alpha_prime_lr": 4e-5}
    kept = agent_from_checkpoint(load_checkpoint(path, with_state=True), with_optimizer=True, algo="calql",
                                 algo_cfg=new_cfg)
    assert [g["lr"] for g in kept.core.optimizer.param_groups] == [1e-5, 2e-5, 3e-5, 4e-5]
    assert kept.core.cfg.policy_lr == 1e-5
    moments = kept.core.optimizer.state_dict()["state"]
    assert len(moments) == len(saved["state"]) > 0
    for mine, theirs in zip(moments.values(), saved["state"].values()):
        assert torch.equal(mine["exp_avg"], theirs["exp_avg"]) and torch.equal(mine["step"], theirs["step"])
    same = agent_from_checkpoint(load_checkpoint(path, with_state=True), with_optimizer=True)  # a resume: the saved rates
    assert [g["lr"] for g in same.core.optimizer.param_groups] == [g["lr"] for g in saved["param_groups"]]


def test_keeps_newest_two(tmp_path):
    agent = tiny_agent()
    for step in (1, 2, 3):
        save_agent(tmp_path, step, CONFIG, agent, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000003", "ckpt_00000002"]
    # a lower step saved into the folder (one's own loop rerun there): kept, and latest names it
    low = save_agent(tmp_path, 1, CONFIG, agent, {})
    assert low.is_dir() and [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000003", "ckpt_00000001"]
    assert load_latest(tmp_path).step == 1


def test_corrupt_newest_falls_back_with_warning(tmp_path):
    agent = tiny_agent()
    save_agent(tmp_path, 1, CONFIG, agent, {})
    newest = save_agent(tmp_path, 2, CONFIG, agent, {})
    (newest / "weights.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="falling back"):
        ckpt = load_latest(tmp_path)
    assert ckpt.step == 1
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_checkpoint(newest)
    # an agent asked of the run (evaluate, a stage-3 start) is not silently an older one: the error names it
    from robopretrain.checkpoint import load_agent

    older = tmp_path / "ckpt_00000001"
    for given in (tmp_path, tmp_path / "latest"):
        with pytest.raises(CheckpointError, match=rf"(?s)weights.pt: unreadable .*; the newest readable checkpoint "
                                                  rf"of {given} is {older}: pass it \(checkpoint={older}\)"):
            load_agent(given)
    with pytest.raises(CheckpointError) as named:  # the broken folder itself asked for: its error alone
        load_agent(newest)
    assert "newest readable" not in str(named.value)
    assert load_agent(older)[1].step == 1
    # text where the pickle is: PyTorch's message advised weights_only=False and filing an issue, over lines; and
    # with no earlier checkpoint the warning said it fell back to one (a new user's findings)
    (newest / "weights.pt").write_text("garbage\n")
    (older / "weights.pt").write_text("garbage\n")
    with pytest.raises(CheckpointError) as pickled:
        load_checkpoint(newest)
    message = str(pickled.value)
    assert message.startswith(f"{newest / 'weights.pt'}: unreadable (corrupt, truncated, or not a file the toolkit "
                              "wrote): Unsupported operand") and "\n" not in message
    assert "weights_only" not in message and "file an issue" not in message
    with pytest.warns(UserWarning) as said, pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_latest(tmp_path)
    assert [str(w.message).rsplit("; ", 1)[1] for w in said] == ["falling back to the previous one",
                                                                "no earlier one is kept"]


def test_a_checkpoint_rotated_away_while_it_is_read_is_looked_up_again(tmp_path, monkeypatch):
    """load_agent on a run still writing checkpoints: the newest, chosen, was rotated away before it was read, a raw
    FileNotFoundError of its meta.json (1 load in 386 in a helper's loop)."""
    import robopretrain.checkpoint as ck

    agent = tiny_agent()
    save_agent(tmp_path, 1, CONFIG, agent, {})
    chosen = save_agent(tmp_path, 2, CONFIG, agent, {})
    real = ck.load_checkpoint

    def rotated(path, with_state=True):
        if path == chosen and chosen.exists():  # the writer saves step 3 and removes step 2 meanwhile
            save_agent(tmp_path, 3, CONFIG, agent, {})
            shutil.rmtree(chosen)
            raise FileNotFoundError(2, "No such file or directory", str(chosen / "meta.json"))
        return real(path, with_state=with_state)

    monkeypatch.setattr(ck, "load_checkpoint", rotated)
    assert ck.load_agent(tmp_path)[1].step == 3
    gone = tmp_path / "ckpt_00000009"  # a checkpoint asked for by its folder that vanishes: said in one line
    monkeypatch.setattr(ck, "load_checkpoint", lambda path, with_state=True: (_ for _ in ()).throw(
        FileNotFoundError(2, "No such file or directory", str(gone / "meta.json"))))
    monkeypatch.setattr(ck, "resolve_checkpoint_dir", lambda path: gone)
    with pytest.raises(CheckpointError, match=r"ckpt_00000009: .*meta.json is missing \(removed while it was read: a "
                                              r"run still writing checkpoints rotates old ones away; give the run"):
        ck.load_checkpoint_at(tmp_path)


def test_another_configuration_is_named_with_both_values(tmp_path):
    path = save_agent(tmp_path, 1, CONFIG, tiny_agent(), {})
    meta = load_checkpoint(path).meta
    check_agent_fits(meta, tiny_agent())
    wider = ObsSpec(low_dim=(("proprio", 9), ("object", 5)), num_tasks=3)
    with pytest.raises(CheckpointError, match=r"low_dim part 'proprio': the checkpoint has size 7, this config has 9"):
        check_agent_fits(meta, tiny_agent(wider))
    with pytest.raises(CheckpointError, match=r"task one-hot size: the checkpoint has 3, this config has 4"):
        check_agent_fits(meta, tiny_agent(ObsSpec(low_dim=(("proprio", 7), ("object", 5)), num_tasks=4)))
    with pytest.raises(CheckpointError, match=r"algo: checkpoint has 'calql', this config needs 'iql'"):
        check_agent_fits(meta, tiny_agent(algo="iql"))
    camera = tiny_agent(SPECS["1cam"])
    with pytest.raises(CheckpointError,
                       match=r"rgb part 'agentview_image' is in this config but not in the checkpoint"):
        check_agent_fits(meta, camera)
    with pytest.raises(CheckpointError, match=r"encoder_mode: checkpoint has 'none', this config needs 'scratch'"):
        check_agent_fits(meta, camera)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_a_checkpoint_that_is_not_an_agent_or_continues_as_another_algorithm_is_refused(tmp_path):
    save_checkpoint(tmp_path / "other", 1, {"a": 1}, {"w": torch.zeros(1)}, {"algo": "cql"})
    with pytest.raises(CheckpointError, match="no obs_spec; expected an agent checkpoint"):
        load_agent(tmp_path / "other")
    save_agent(tmp_path / "cql", 1, CONFIG, tiny_agent(algo="cql"), {})
    with pytest.raises(CheckpointError, match="a cql checkpoint cannot continue as iql"):
        load_agent(tmp_path / "cql", algo="iql")
    save_agent(tmp_path / "iql", 1, CONFIG, tiny_agent(algo="iql"), {})
    with pytest.raises(CheckpointError, match="an iql checkpoint cannot continue as calql .*; use algo=iql$"):
        load_agent(tmp_path / "iql", algo="calql")
    # CQL -> Cal-QL keeps the checkpoint's networks even when the new algo config asks for other sizes
    agent, _ = load_agent(tmp_path / "cql", algo="calql", algo_cfg={"critic_hidden": [64], "cql_alpha": 1.0})
    assert agent.algo == "calql" and agent.algo_cfg.use_calql and agent.algo_cfg.critic_hidden == (16, 16)
    assert agent.algo_cfg.cql_alpha == 1.0


def test_a_checkpoint_path_with_a_tilde_and_load_agents_device_read_as_the_configs_do(tmp_path, monkeypatch):
    """checkpoint='~/runs/s2' (as data.path takes it) was "no such file or folder"; load_agent(device='auto') was
    torch's error, device='cuda' on a machine without CUDA a driver error."""
    import torch

    import robopretrain.checkpoint as ck
    from robopretrain.evaluate import open_checkpoint

    monkeypatch.setenv("HOME", str(tmp_path))
    saved = save_agent(tmp_path / "runs" / "s2" / "checkpoints", 3, CONFIG, tiny_agent(), {})
    assert ck.load_checkpoint_at("~/runs/s2").path == saved and open_checkpoint("~/runs/s2").step == 3
    agent, ckpt = ck.load_agent("~/runs/s2", device="auto")
    assert ckpt.step == 3 and str(agent.device) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' but CUDA is not available on this machine"):
            ck.load_agent("~/runs/s2", device="cuda")
    with pytest.raises(ValueError, match="init=~/runs/s2 lies in this run folder"):  # resume=false would delete it
        ck.refuse_source_in_run("~/runs/s2", "~/runs/s2", "init")


# --------------------------------------------------------------------------- run folders (mutation survivors)
def test_another_stages_run_folder_and_a_stage1_encoder_are_named(tmp_path):
    from robopretrain.checkpoint import refuse_other_stage

    run = tmp_path / "s2"
    save_agent(run / "checkpoints", 1, CONFIG, tiny_agent(), {"stage": "offline"})
    refuse_other_stage(run, "offline")  # its own stage: no word
    with pytest.raises(ValueError, match=r"output_dir=.*s2 is a run folder of stage 2 \(robopretrain.train\) "
                                         r"\(ckpt_00000001 is its checkpoint\); stage 3 \(finetune.train\)"):
        refuse_other_stage(run, "online")
    stage1 = tmp_path / "s1"
    (stage1 / "checkpoints").mkdir(parents=True)
    (stage1 / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is a run folder of stage 1 \(video_pretrain.train\) \(last.pt"):
        refuse_other_stage(stage1, "offline")
    refuse_other_stage(stage1, "pretrain")
    (stage1 / "encoder").mkdir()
    (stage1 / "encoder" / "encoder.pt").write_bytes(b"x")
    for folder in (stage1, stage1 / "encoder"):  # a stage-1 run folder or its encoder: not an agent
        with pytest.raises(CheckpointError, match=r"a stage-1 \(video pretraining\) image encoder, not an agent.*"
                                                  r"encoder.checkpoint=.*s1/encoder$"):
            load_checkpoint(folder)


def test_clear_previous_run_removes_the_old_runs_parts_only(tmp_path):
    from robopretrain.checkpoint import clear_previous_run

    run = tmp_path / "run"
    (run / "checkpoints" / "ckpt_00000001").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / ".hydra").mkdir()
    (run / "notes.txt").write_text("mine")
    assert clear_previous_run(run) == ["checkpoints", "metrics.jsonl"]
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "notes.txt"]
    assert clear_previous_run(run) == []


def test_a_resume_passes_over_a_newest_checkpoint_without_its_state(tmp_path):
    from robopretrain.checkpoint import STATE_FILE, load_checkpoint_at

    root = tmp_path / "checkpoints"
    save_agent(root, 1, CONFIG, tiny_agent(), {}, state={"step": 1})
    newest = save_agent(root, 2, CONFIG, tiny_agent(), {}, state={"step": 2})
    assert load_latest(root).state["step"] == 2 and load_checkpoint_at(root).state["step"] == 2  # state by default
    (newest / STATE_FILE).unlink()
    assert load_latest(root).path == newest and load_latest(root).state is None
    with pytest.warns(UserWarning, match=f"checkpoint {newest} has no {STATE_FILE}"):
        assert load_latest(root, resuming=True).state["step"] == 1


def test_frozen_encoders_feature_statistics_must_match_the_checkpoint(tmp_path):
    """A frozen encoder standardises its features (normalize_features) or not: one checkpoint's buffers do not fit
    the other kind."""
    from robopretrain.nets.encoder_io import save_encoder
    from robopretrain.nets.encoders import make_encoder

    stage1_weights = tmp_path / "stage1"
    save_encoder(stage1_weights, make_encoder("small_conv", SIZE, channels=4, out_dim=8), "small_conv", {})
    agent = tiny_agent(SPECS["1cam"], mode="frozen", checkpoint=str(stage1_weights), normalize_features=True)
    meta = load_checkpoint(save_agent(tmp_path, 1, CONFIG, agent, {})).meta
    check_agent_fits(meta, agent)
    plain = tiny_agent(SPECS["1cam"], mode="frozen", checkpoint=str(stage1_weights), normalize_features=False)
    with pytest.raises(CheckpointError, match="encoder.normalize_features: checkpoint has True, this config needs "
                                              "False"):
        check_agent_fits(meta, plain)


def test_the_data_files_a_run_folders_checkpoints_name_are_listed_once(tmp_path):
    from robopretrain.checkpoint import recorded_data_files, recorded_file

    root = tmp_path / "checkpoints"
    data = tmp_path / "d.hdf5"
    data.write_bytes(b"x")
    save_agent(root, 1, CONFIG, tiny_agent(), {"data_path": str(data), "mix_path": None}, keep=3)
    save_agent(root, 2, CONFIG, tiny_agent(), {"data_path": str(data), "mix_path": str(tmp_path / "m.hdf5")}, keep=3)
    assert recorded_data_files(root) == [str(data), str(tmp_path / "m.hdf5")]  # newest first, each once
    ckpt = load_latest(root)
    assert recorded_file(ckpt, "data_path") == str(data)  # there: as recorded
    assert recorded_file(ckpt, "mix_path") == str(tmp_path / "m.hdf5")  # gone, and its run did not move: as recorded
    assert recorded_file(load_checkpoint(root / "ckpt_00000001"), "mix_path") is None


def test_a_folder_without_checkpoints_names_the_runs_two_levels_below(tmp_path):
    for run in ("a/stage2", "a/adapt/T", "a/deep/er/run"):
        save_agent(tmp_path / run / "checkpoints", 1, CONFIG, tiny_agent(), {})
    with pytest.raises(CheckpointError) as refused:
        resolve_checkpoint_dir(tmp_path / "a")
    assert str(refused.value).endswith(f"run folders below it: {tmp_path / 'a/stage2'}, {tmp_path / 'a/adapt/T'}")
    assert "er/run" not in str(refused.value)  # three levels down: not searched
