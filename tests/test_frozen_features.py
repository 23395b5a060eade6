"""The frozen-encoder paths (``encoder.mode=frozen`` and ``frozen_cached``) give the policy the same input for the same
dataset row, and the evaluation env gives it the input of the data's row for the same state (same camera, frame,
image size, channel order, low-dim normalisation and concatenation order); the frozen features are standardised by
the data's statistics (``encoder.normalize_features``), which travel with the checkpoint.

The data path is the one ``python -m robopretrain.train`` takes (``build.load_data`` -> ``build.new_agent`` ->
``build.prepared`` -> ``build.fit_feature_normalization``); the env is the one evaluation builds
(``evaluation.agent_env``), replayed from each recorded episode's seed with the recorded actions.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from _stages import collect_sim
from robopretrain import build
from robopretrain.checkpoint import load_agent, save_agent
from robopretrain.data.keys import OBS
from robopretrain.envs.target import as_target
from robopretrain.evaluation import agent_env
from robopretrain.nets.encoder_io import save_encoder
from robopretrain.nets.encoders import make_encoder
from robopretrain.nets.obs_encoder import STD_EPS

SIZE = 32
CLEAN = {"kinds": {"clean": {"fraction": 1.0, "noise": 0.0, "stop": None},
                   "noisy": {"fraction": 0.0, "noise": 0.0, "stop": None},
                   "failing": {"fraction": 0.0, "noise": 0.0, "stop": None}}, "valid_fraction": 0.0}
MODES = ("frozen", "frozen_cached")


@pytest.fixture(scope="module")
def reach(tmp_path_factory) -> tuple[Path, Path]:
    """Three clean Reach episodes with 32 px agentview images, and a stage-1 encoder (random weights, perturbed so
    that no fresh initialisation equals them)."""
    tmp = tmp_path_factory.mktemp("frozen")
    data = collect_sim(tmp / "reach.hdf5", ["Reach"], episodes=3, images=True, image_size=SIZE, **CLEAN)
    torch.manual_seed(3)
    enc = make_encoder("small_conv", SIZE, channels=4, out_dim=8)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return data, save_encoder(tmp / "encoder", enc, "small_conv", {"test": True})


def stage2_parts(data: Path, encoder: Path, mode: str, normalize_features: bool = True):
    """The agent and the dataset (in the agent's form) as ``robopretrain.train`` builds them for BC on images."""
    cfg = build.compose("robopretrain", {"algo": "bc"}, {
        "seed": 0, "data": {"path": str(data)}, "algo": {"actor_hidden": [16], "batch_size": 8},
        "obs": {"rgb": ["agentview_image"], "low_dim": ["proprio"]},
        "encoder": {"mode": mode, "checkpoint": str(encoder), "normalize_features": normalize_features}})
    spec = build.data_spec(cfg.obs, data)
    raw = build.load_data(data, spec, cfg.data, build.reward_settings(cfg.algo), algo="bc", act_dim=None, seed=0,
                          device=torch.device("cpu"))
    agent = build.new_agent(cfg, spec, 4, raw, torch.device("cpu"))
    dataset = build.prepared(agent, raw, 0)
    assert build.fit_feature_normalization(agent, dataset) == normalize_features
    return agent, dataset


def actor_inputs(agent, obs) -> torch.Tensor:
    with torch.no_grad():
        return agent.actor_encoder({k: torch.as_tensor(v) for k, v in obs.items()})


@pytest.fixture(scope="module")
def agents(reach):
    data, encoder = reach
    out = {mode: stage2_parts(data, encoder, mode) for mode in MODES}
    frozen, cached = out["frozen"][0], out["frozen_cached"][0]
    cached.core.load_state_dict(frozen.core.state_dict())  # one policy: only the observation path differs
    return out


def test_frozen_and_cached_give_the_policy_the_same_standardised_input_for_every_row(agents):
    rows = {mode: ds.get(np.arange(len(ds)))[OBS] for mode, (_, ds) in agents.items()}
    assert "agentview_image" in rows["frozen"] and "agentview_image" not in rows["frozen_cached"]
    x = {mode: actor_inputs(agents[mode][0], rows[mode]) for mode in MODES}
    assert x["frozen"].shape == x["frozen_cached"].shape == (len(rows["frozen"]["proprio"]), 8 + 7 + 13)
    torch.testing.assert_close(x["frozen"], x["frozen_cached"], rtol=0, atol=1e-5)
    feats = x["frozen"][:, :8].double()  # the image features come first, standardised over the data
    torch.testing.assert_close(feats.mean(0), torch.zeros(8, dtype=torch.float64), rtol=0, atol=1e-5)
    raw_std = agents["frozen"][0].frozen_features(rows["frozen"]).double().std(0, unbiased=False)
    torch.testing.assert_close(feats.std(0, unbiased=False), raw_std / (raw_std + STD_EPS), rtol=0, atol=1e-4)
    proprio = x["frozen"][:, 8:15].double()  # then the low-dim part, normalised by its own statistics
    torch.testing.assert_close(proprio.mean(0), torch.zeros(7, dtype=torch.float64), rtol=0, atol=1e-4)
    assert torch.equal(x["frozen"][:, 15:], torch.nn.functional.one_hot(torch.zeros(len(feats), dtype=torch.long),
                                                                           13).float())  # Reach's task one-hot


def test_the_evaluation_env_gives_the_input_of_the_data_row_for_the_same_state(reach, agents):
    """Each recorded episode replayed in the env evaluation builds: the agent's input from the env's observation
    equals its input from the dataset's row, step by step, in both modes."""
    data, _ = reach
    inputs = {mode: actor_inputs(agent, ds.get(np.arange(len(ds)))[OBS]) for mode, (agent, ds) in agents.items()}
    cached = agents["frozen_cached"][0]
    env = agent_env(cached, as_target("Reach"))
    row = 0
    with h5py.File(data) as f:
        for name in sorted(f["data"], key=lambda s: int(s.split("_")[1])):
            demo = f["data"][name]
            obs, _ = env.reset(seed=int(json.loads(demo.attrs["ep_meta"])["seed"]))
            for t in range(int(demo.attrs["num_samples"])):
                assert np.array_equal(obs["agentview_image"], demo["obs/agentview_image"][t])  # same camera, frame
                for mode, (agent, _) in agents.items():
                    stored = agent.prepare({k: np.asarray(v)[None] for k, v in obs.items()})  # what act() stores
                    torch.testing.assert_close(actor_inputs(agent, stored)[0], inputs[mode][row + t], rtol=0,
                                               atol=1e-5)
                np.testing.assert_allclose(cached.act(obs), agents["frozen"][0].act(obs), rtol=0, atol=1e-5)
                obs, *_ = env.step(demo["actions"][t])
            row += int(demo.attrs["num_samples"])
    env.close()
    assert row == len(agents["frozen"][1])


@pytest.mark.parametrize("mode", MODES)
def test_feature_statistics_of_another_size_are_refused(agents, mode):
    """Either the mean or the std of the wrong size is named (both modes' checks)."""
    agent, _ = agents[mode]
    for mean, std in ((np.zeros(8), np.ones(7)), (np.zeros(7), np.ones(8))):
        with pytest.raises(ValueError, match=f"of size {mean.size} / {std.size}"):
            agent.set_feature_normalization(mean, std)


@pytest.mark.parametrize("mode", MODES)
def test_feature_statistics_travel_with_the_checkpoint(tmp_path, agents, mode):
    agent, ds = agents[mode]
    obs = ds.get(np.arange(6))[OBS]
    save_agent(tmp_path / "run", 1, {"algo": {"name": "bc"}}, agent, {})
    loaded, _ = load_agent(tmp_path / "run")
    assert loaded.settings.normalize_features and loaded.normalizes_features
    torch.testing.assert_close(actor_inputs(loaded, obs), actor_inputs(agent, obs), rtol=0, atol=0)


def test_normalize_features_false_leaves_the_frozen_features_as_the_encoder_gives_them(reach, agents):
    data, encoder = reach
    plain, ds = stage2_parts(data, encoder, "frozen_cached", normalize_features=False)
    obs = ds.get(np.arange(len(ds)))[OBS]
    torch.testing.assert_close(actor_inputs(plain, obs)[:, :8], torch.as_tensor(obs["features"]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="feature normalisation needs a frozen encoder"):
        plain.set_feature_normalization(np.zeros(8), np.ones(8))


def test_a_run_is_not_resumed_across_a_change_of_normalize_features(tmp_path, reach, agents):
    from robopretrain.checkpoint import CheckpointError, check_agent_fits

    data, encoder = reach
    meta = agents["frozen"][0].describe()
    plain, _ = stage2_parts(data, encoder, "frozen", normalize_features=False)
    check_agent_fits(meta, agents["frozen"][0])
    with pytest.raises(CheckpointError, match="encoder.normalize_features: checkpoint has True, this config needs "
                                              "False"):
        check_agent_fits(meta, plain)


def test_a_resumed_run_takes_the_feature_statistics_from_its_checkpoint_without_a_pass_over_the_data(
        tmp_path, reach, monkeypatch):
    """``robopretrain.train`` fits the frozen features' statistics on a fresh run only: a rerun that resumes gets them
    from the checkpoint (the pass over the data would be overwritten anyway)."""
    from robopretrain.checkpoint import load_latest
    from robopretrain.train import run

    data, encoder = reach
    fitted = []
    fit = build.fit_feature_normalization
    monkeypatch.setattr(build, "fit_feature_normalization", lambda agent, ds: fitted.append(1) or fit(agent, ds))

    def train(steps: int) -> None:
        run(build.compose("robopretrain", {"algo": "bc"}, {
            "seed": 0, "num_threads": 1, "data": {"path": str(data)}, "algo": {"actor_hidden": [16], "batch_size": 8},
            "obs": {"rgb": ["agentview_image"], "low_dim": ["proprio"]},
            "encoder": {"mode": "frozen", "checkpoint": str(encoder)},
            "train": {"steps": steps, "checkpoint_every": 2, "log_every": 2, "eval_targets": [], "progress": False,
                      "tensorboard": False, "calibration_batch": 8}}), tmp_path)

    def stats(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        enc = load_agent(path)[0].critic_encoder
        return enc.feature_mean, enc.feature_std

    train(2)
    first = load_latest(tmp_path / "checkpoints", with_state=False)
    assert len(fitted) == 1 and first.step == 2
    mean, std = stats(first.path)
    assert not torch.equal(std, torch.ones_like(std))  # fitted, not the buffers' initial values
    train(4)
    assert len(fitted) == 1  # the resumed run made no pass over the data
    last = load_latest(tmp_path / "checkpoints", with_state=False)
    assert last.step == 4
    for resumed, saved in zip(stats(last.path), (mean, std)):
        torch.testing.assert_close(resumed, saved, rtol=0, atol=0)
