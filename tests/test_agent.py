"""The one agent on observation dicts: the observation spec and encoder (concatenation, normalisation, task one-hot),
encoder transfer modes from a stage-1 checkpoint, which loss trains which encoder, and every algorithm on every
observation spec (no cameras, 1, 2)."""
from __future__ import annotations


import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robopretrain.agent import Agent, EncoderSettings
from robopretrain.data.spec import ObsSpec, SpecMismatchError, spec_from_shapes
from robopretrain.nets.encoder_io import save_encoder
from robopretrain.nets.encoders import make_encoder
from robopretrain.nets.obs_encoder import STD_EPS, ObsEncoder, normalization_stats

SIZE = 16
CAM = ("agentview_image", (SIZE, SIZE, 3))
HAND = ("eye_in_hand_image", (SIZE, SIZE, 3))
SPECS = {"low_dim": ObsSpec(low_dim=(("proprio", 7), ("object", 4)), num_tasks=11),
         "1cam": ObsSpec(low_dim=(("proprio", 7),), rgb=(CAM,), num_tasks=11),
         "2cams": ObsSpec(low_dim=(("proprio", 7),), rgb=(CAM, HAND), num_tasks=11)}
ALGO = {"cql": {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2, "batch_size": 8},
        "calql": {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2, "batch_size": 8},
        "iql": {"actor_hidden": [16], "critic_hidden": [16], "value_hidden": [16], "batch_size": 8},
        "bc": {"actor_hidden": [16], "batch_size": 8, "lr": 1e-3},
        "td3_bc": {"actor_hidden": [16], "critic_hidden": [16], "batch_size": 8},
        "awac": {"actor_hidden": [16], "critic_hidden": [16], "batch_size": 8},
        "rebrac": {"actor_hidden": [16], "critic_hidden": [16], "batch_size": 8},
        "bcq": {"actor_hidden": [16], "critic_hidden": [16], "vae_hidden": [16], "batch_size": 8},
        "por": {"actor_hidden": [16], "value_hidden": [16], "guide_hidden": [16], "batch_size": 8}}


# --------------------------------------------------------------------------- spec and encoder


def test_encoder_concatenates_normalises_and_one_hots_in_spec_order():
    spec = ObsSpec(low_dim=(("b", 1), ("a", 2)), num_tasks=3)
    stats = {"a": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}, "b": {"mean": [10.0], "std": [5.0]}}
    enc = ObsEncoder(spec, stats=stats)
    obs = {"a": torch.tensor([[3.0, 6.0], [1.0, 2.0]]), "b": torch.tensor([[20.0], [0.0]]),
           "task_id": torch.tensor([2, 0]), "ignored": torch.zeros(2, 5)}
    expected = torch.tensor([[2.0, 1.0, 1.0, 0, 0, 1], [-2.0, 0.0, 0.0, 1, 0, 0]])  # b, a, one-hot(3)
    torch.testing.assert_close(enc(obs), expected)
    assert enc.out_dim == 6 and not enc.has_parameters
    assert enc.augment_pad == 0  # no random shift unless asked for
    assert torch.equal(enc.mean, torch.tensor([10.0, 1.0, 2.0])) and torch.equal(enc.std, torch.tensor([5.0, 2.0, 4.0]))
    torch.testing.assert_close(ObsEncoder(spec)(obs)[:, :3], torch.tensor([[20.0, 3.0, 6.0], [0.0, 1.0, 2.0]]))
    with pytest.raises(KeyError, match=r"observation is missing \['task_id'\]"):
        enc({"a": obs["a"], "b": obs["b"]})
    with pytest.raises(KeyError, match="no normalisation statistics for low_dim part 'b'"):
        ObsEncoder(spec, stats={"a": stats["a"]})
    for name in ("mean", "std"):  # one value for a 2-wide part was broadcast over it
        short = {**stats, "a": {**stats["a"], name: [1.0]}}
        with pytest.raises(ValueError, match=f"normalisation {name} of low_dim part 'a' has 1 values; the part has 2"):
            ObsEncoder(spec, stats=short)


def test_normalization_stats_are_the_data_mean_and_std_plus_eps():
    spec = ObsSpec(low_dim=(("x", 2), ("features", 3)))
    rng = np.random.default_rng(0)
    parts = {"x": rng.normal(3.0, 2.0, (500, 2)).astype(np.float32), "features": rng.normal(size=(500, 3))}
    stats = normalization_stats(parts, spec, skip=("features",))
    np.testing.assert_allclose(stats["x"]["mean"], parts["x"].astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["x"]["std"], parts["x"].astype(np.float64).std(0) + STD_EPS, rtol=1e-12)
    assert STD_EPS == 1e-3 and stats["features"] == {"mean": [0.0] * 3, "std": [1.0] * 3}


def test_min_std_floors_only_the_dimensions_that_barely_vary():
    spec = ObsSpec(low_dim=(("x", 3),))
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0.0, 0.2, 400), rng.normal(0.0, 1e-4, 400), np.full(400, 0.12)], 1)
    plain_std = np.asarray(normalization_stats({"x": x}, spec)["x"]["std"])
    floored = normalization_stats({"x": x}, spec, min_std=0.05)["x"]
    np.testing.assert_allclose(floored["std"], [plain_std[0], 0.05 + STD_EPS, 1.0], rtol=1e-12)  # (2: constant)
    np.testing.assert_allclose(floored["mean"], x.mean(0), rtol=1e-12)
    assert plain_std[1] < 2e-3  # without the floor a 0.05 change there is a > 25-sigma input
    with pytest.raises(ValueError, match="min_std=-0.1"):
        normalization_stats({"x": x}, spec, min_std=-0.1)


def test_dimensions_that_barely_vary_are_named_unless_floored(caplog):
    spec = ObsSpec(low_dim=(("x", 3),))
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0.0, 0.2, 400), rng.normal(0.0, 1e-4, 400), np.full(400, 0.12)], 1)
    with caplog.at_level("INFO", logger="robopretrain.nets.obs_encoder"):
        stats = normalization_stats({"x": x}, spec)
    assert "x dimension(s) [1] barely vary" in caplog.text and "obs.min_std" in caplog.text
    # a constant one is centred, not scaled: every data row reads 0 there, and a value the data never showed reaches
    # the networks in the data's units, not 1000x (the warning named it, which a user could not act on: a review)
    assert "x dimension(s) [2] are constant in the data: centred, not scaled" in caplog.text
    assert stats["x"]["std"][2] == 1.0 and stats["x"]["mean"][2] == pytest.approx(0.12)
    for floor, std in ((1e-9, 1.0), (0.05, 1.0), (2.0, 2.0 + STD_EPS)):  # a small floor does not scale it up (a review)
        assert normalization_stats({"x": x}, spec, min_std=floor)["x"]["std"][2] == pytest.approx(std)
    caplog.clear()
    with caplog.at_level("WARNING", logger="robopretrain.nets.obs_encoder"):
        normalization_stats({"x": x}, spec, min_std=0.05)
    assert "barely vary" not in caplog.text


def test_a_new_agent_takes_obs_min_std_from_its_config(caplog):
    import logging

    from omegaconf import OmegaConf

    from robopretrain.build import new_agent

    spec = ObsSpec(low_dim=(("x", 2),))
    x = np.stack([np.linspace(-1.0, 1.0, 64), np.zeros(64)], 1).astype(np.float32)

    class Rows:  # the one method new_agent reads of a dataset
        def arrays(self):
            return {"observations": {"x": x}}

    def std_of(obs: dict) -> torch.Tensor:
        cfg = OmegaConf.create({"algo": {"name": "bc"}, "encoder": {}, "seed": 0, "obs": obs})
        return new_agent(cfg, spec, 2, Rows(), torch.device("cpu")).critic_encoder.std

    torch.testing.assert_close(std_of({"min_std": 2.0})[1], torch.tensor(2.0 + STD_EPS))  # (a floor above 1)
    torch.testing.assert_close(std_of({})[0], torch.tensor(float(np.std(x[:, 0])) + STD_EPS))  # the data's + eps
    torch.testing.assert_close(std_of({})[1], torch.tensor(1.0))  # constant in the data: centred, not scaled
    assert "takes no effect" not in caplog.text
    with caplog.at_level(logging.WARNING):  # without normalisation it takes no effect: said (it was silent)
        torch.testing.assert_close(std_of({"normalize": False, "min_std": 0.5}), torch.ones(2))
    assert "obs.min_std=0.5 takes no effect with obs.normalize=false" in caplog.text


def test_camera_features_come_first_one_encoder_pass_for_every_camera():
    img = make_encoder("small_conv", SIZE, channels=4, out_dim=8)
    spec = ObsSpec(low_dim=(("proprio", 2),), rgb=(CAM, HAND), num_tasks=2)
    enc = ObsEncoder(spec, img)
    rng = np.random.default_rng(1)
    obs = {CAM[0]: torch.from_numpy(rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)),
           HAND[0]: torch.from_numpy(rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)),
           "proprio": torch.ones(3, 2), "task_id": torch.tensor([1, 1, 0])}
    out = enc(obs)
    from robopretrain.nets.encoders import to_float_images

    with torch.no_grad():
        torch.testing.assert_close(out[:, :8], img(to_float_images(obs[CAM[0]])))
        torch.testing.assert_close(out[:, 8:16], img(to_float_images(obs[HAND[0]])))
    assert enc.out_dim == 8 + 8 + 2 + 2 and torch.equal(out[:, 16:18], torch.ones(3, 2))


def test_random_shifts_only_when_asked_and_any_image_network_is_accepted():
    """augment=False gives the unshifted features even with a pad (evaluation, targets); an image network that is not
    one of ours (a user's module with ``out_dim``) is called on float images in [0, 1], channels first."""
    from robopretrain.nets.encoders import to_float_images

    img = make_encoder("small_conv", SIZE, channels=4, out_dim=8)
    spec = ObsSpec(rgb=(CAM,))
    frames = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8))
    with torch.no_grad():
        plain = img(to_float_images(frames))
        padded = ObsEncoder(spec, img, augment_pad=4)
        torch.testing.assert_close(padded({CAM[0]: frames}), plain)
        g = torch.Generator().manual_seed(0)
        assert not torch.allclose(padded({CAM[0]: frames}, augment=True, generator=g), plain)  # shifted when asked

    class UserNet(torch.nn.Module):  # e.g. a timm backbone behind a linear head
        out_dim = 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x.mean(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)), x[:, 0].mean(dim=(1, 2))], dim=-1)

    with torch.no_grad():
        got = ObsEncoder(spec, UserNet())({CAM[0]: frames})
        torch.testing.assert_close(got, UserNet()(to_float_images(frames)))


def test_spec_errors_name_the_key_and_sizes():
    with pytest.raises(ValueError, match="keys must be distinct"):
        ObsSpec(low_dim=(("a", 1),), rgb=(("a", (8, 8, 3)),))
    with pytest.raises(ValueError, match="'task_id' is reserved"):
        ObsSpec(low_dim=(("task_id", 1),))
    with pytest.raises(ValueError, match=r"rgb part 'cam' has shape \(8, 8\); expected \(H, W, 3\)"):
        ObsSpec(rgb=(("cam", (8, 8)),))
    with pytest.raises(ValueError, match=r"rgb part 'cam' has shape \(0, 8, 3\)"):
        ObsSpec(rgb=(("cam", (0, 8, 3)),))
    with pytest.raises(ValueError, match=r"low_dim part 'a' has size 0; expected >= 1"):
        ObsSpec(low_dim=(("a", 0),))
    with pytest.raises(ValueError, match="no observation parts"):
        ObsSpec()
    with pytest.raises(ValueError, match=r"got front \(48, 64, 3\), wrist \(32, 32, 3\):"):  # each with its size
        ObsSpec(rgb=(("front", (48, 64, 3)), ("wrist", (32, 32, 3)))).image_size
    assert ObsSpec(num_tasks=1).num_tasks == 1  # the task one-hot alone is an input (a blind, task-only policy)
    assert ObsSpec(rgb=(("cam", (1, 1, 3)),)).image_size == 1 and ObsSpec(low_dim=(("a", 1),)).low_dim_size == 1
    assert ObsSpec.from_dict({"low_dim": [["a", 2]]}) == ObsSpec(low_dim=(("a", 2),))  # no task one-hot unless saved
    shapes = {"proprio": ((9,), np.float32), "agentview_image": ((16, 16, 3), np.uint8)}
    with pytest.raises(ValueError, match=r"f.hdf5: observation key 'robot0_eef_pos' \(low_dim part 'eef'\) not found"):
        spec_from_shapes(shapes, ["eef"], [], 0, where="f.hdf5", key_map={"eef": "robot0_eef_pos"})
    # a missing part's message says how to use the keys there of its kind (no hint without a setting to name)
    with pytest.raises(ValueError, match=r"available: \['agentview_image', 'proprio'\]$"):
        spec_from_shapes(shapes, ["eef"], [], 0, where="f.hdf5")
    with pytest.raises(ValueError, match=r"not found; available: \['agentview_image', 'proprio'\]; map the part to a "
                                         r"key there with data.obs_map=\{eef: proprio\}, or use those keys as the "
                                         r"parts: obs.low_dim=\[proprio\]$"):
        spec_from_shapes(shapes, ["eef"], [], 0, where="f.hdf5", map_setting="data.obs_map", parts_settable=True)
    two_cams = {**shapes, "wrist": ((16, 16), np.uint8)}
    with pytest.raises(ValueError, match=r"\(rgb part 'front'\) not found; .*; map the part to a key there with "
                                         r"target.obs_map=\{front: KEY\} \(rgb candidates: \['agentview_image', "
                                         r"'wrist'\]\)$"):
        spec_from_shapes(two_cams, [], ["front"], 0, where="env", map_setting="target.obs_map")
    with pytest.raises(ValueError, match=r"rgb part 'proprio' is float32 \(9,\); expected uint8 images \(H, W, 3\) or "
                                         r"grey \(H, W, 1\) / \(H, W\)$"):
        spec_from_shapes(shapes, [], ["proprio"], 0, where="f.hdf5")
    # cameras stored in another layout: the refusal says how to rewrite them (the env side converts such frames);
    # grey ones are read as RGB (robopretrain.data.spec.as_rgb)
    # (a float one-channel array, a depth map, is no colour camera: no colour rewrite is suggested for it, and the
    # cached copy of data.image_size is suggested only for the arrays it converts: uint8, float keys named *_image)
    size_hint = r"; or set data.image_size=S: .*"
    for key, shape, dtype, hint in (
            ("cam", (3, 16, 16), np.uint8, r"channels first: write frames.transpose\(0, 2, 3, 1\)" + size_hint),
            ("cam", (16, 16, 3), np.float32, r"float: write \(frames \* 255\)[^;]* \(data.image_size converts float "
                                             r"frames only of keys named \*_image: rename 'cam' to 'cam_image' to "
                                             r"have it converted\)$"),
            ("cam_image", (16, 16, 3), np.float32, r"float: write \(frames \* 255\)[^;]*" + size_hint),
            ("depth_image", (16, 16, 1), np.float32, r"a float array of one channel \(a depth map\?\) is no colour "
                                                     r"camera: .* leave it out of obs.rgb [^;]*$"),
            ("depth", (1, 16, 16), np.float32, r"a float array of one channel \(a depth map\?\)[^;]*$"),
            ("depth", (16, 16), np.float64, r"a float array of one channel \(a depth map\?\)[^;]*$"),
            # a last axis of 1 is a channel, whatever the first: one channel of 3 x 16, not three of 16 x 1
            ("depth", (3, 16, 1), np.float32, r"a float array of one channel \(a depth map\?\)[^;]*$")):
        with pytest.raises(ValueError, match=rf"rgb part '{key}' is .*expected uint8 images \(H, W, 3\) .*/ \(H, W\); "
                                             + hint):
            spec_from_shapes({key: (shape, dtype)}, [], [key], 0, where="f.hdf5")
    # an env's float camera: what the env should return (its uint8 frames of any layout are converted), not how to
    # rewrite a data file (a 4-axis transpose, data.image_size)
    with pytest.raises(ValueError, match=r"rgb part 'cam' is float32 \(3, 16, 16\); .*; return uint8 frames \(0-255\) "
                                         r"from the env, \(H, W, C\) or \(C, H, W\) .*ObservationWrapper$") as err:
        spec_from_shapes({"cam": ((3, 16, 16), np.float32)}, [], ["cam"], 0, where="target 'T'", env=True)
    assert "transpose" not in str(err.value) and "data.image_size" not in str(err.value)
    for grey in ((16, 16, 1), (16, 16)):
        assert spec_from_shapes({"cam": (grey, np.uint8)}, [], ["cam"], 0, where="f.hdf5").rgb == (("cam", (16, 16, 3)),)
    with pytest.raises(ValueError, match=r"low_dim part 'speed' is float32 \(\); expected a numeric vector \(d,\) .*; a "
                                         r"scalar per step: store it as \(N, 1\), values\[:, None\]$"):
        spec_from_shapes({"speed": ((), np.float32)}, ["speed"], [], 0, where="f.hdf5")
    with pytest.raises(ValueError, match=r"low_dim part 'agentview_image' is uint8 \(16, 16, 3\); expected a numeric"):
        spec_from_shapes(shapes, ["agentview_image"], [], 0, where="f.hdf5")
    data = spec_from_shapes(shapes, ["proprio"], ["agentview_image"], 11, where="f.hdf5")
    assert ObsSpec.from_dict(data.to_dict()) == data and data.image_size == 16
    with pytest.raises(SpecMismatchError, match=r"low_dim part 'proprio': the data has size 9, the agent has 7"):
        data.check_fits(SPECS["1cam"], mine="the data", theirs="the agent")
    assert data.cached(32).low_dim == (("features", 32), ("proprio", 9)) and not data.cached(32).rgb


# --------------------------------------------------------------------------- encoder transfer modes


@pytest.fixture(scope="module")
def stage1_encoder(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    enc = make_encoder("small_conv", SIZE, channels=4, out_dim=8)
    with torch.no_grad():  # weights unlike any fresh initialisation
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = save_encoder(tmp_path_factory.mktemp("stage1") / "encoder", enc, "small_conv", {"test": True})
    return path, {k: v.clone() for k, v in enc.state_dict().items()}


def make_agent(spec: ObsSpec, algo: str = "calql", mode: str | None = None, path: Path | None = None,
               shared: bool = False, seed: int = 0) -> Agent:
    settings = EncoderSettings(mode=mode, checkpoint=str(path) if path else None, shared=shared, augment_pad=2,
                               kwargs={"channels": 4, "out_dim": 8})
    torch.manual_seed(seed)
    stats = {k: {"mean": [0.1] * d, "std": [1.5] * d} for k, d in spec.low_dim}
    return Agent(spec, 4, algo, ALGO[algo], settings, stats=stats, seed=seed)


def raw_batch(spec: ObsSpec, n: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def obs():
        out = {k: torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)) for k, d in spec.low_dim}
        out.update({k: torch.from_numpy(rng.integers(0, 256, (n, *s), dtype=np.uint8)) for k, s in spec.rgb})
        out["task_id"] = torch.from_numpy(rng.integers(0, spec.num_tasks, n))
        return out

    return {"observations": obs(), "next_observations": obs(),
            "actions": torch.from_numpy(rng.uniform(-1, 1, (n, 4)).astype(np.float32)),
            "rewards": torch.from_numpy(rng.choice([-5.0, 5.0], n).astype(np.float32)),
            "dones": torch.zeros(n), "mc_returns": torch.from_numpy(rng.normal(size=n).astype(np.float32)),
            "next_actions": torch.from_numpy(rng.uniform(-1, 1, (n, 4)).astype(np.float32))}


def prepared_batch(agent: Agent, n: int = 8, seed: int = 0) -> dict:
    """A batch as the agent trains on it (frozen_cached: the cameras replaced by features, computed once)."""
    b = raw_batch(agent.spec, n, seed)
    for key in ("observations", "next_observations"):
        b[key] = {k: torch.as_tensor(v) for k, v in agent.prepare({k: v.numpy() for k, v in b[key].items()}).items()}
    return b


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def image_weights(encoder) -> dict[str, torch.Tensor]:
    return {k: v for k, v in encoder.image_encoder.state_dict().items()}


def as_float64(batch: dict) -> dict:
    return {k: as_float64(v) if isinstance(v, dict) else v.double() if v.is_floating_point() else v
            for k, v in batch.items()}


@pytest.mark.parametrize("algo", ["bc", "bcq", "dt"])
def test_an_empty_batch_of_observations_gives_no_actions(algo):
    """``act`` on a batch of 0 observations: (0, A) as for any B, where BCQ failed with "max() arg is an empty
    sequence" and the Decision Transformer with a reshape error (a new user's finding)."""
    spec = SPECS["low_dim"]
    agent = (Agent(spec, 4, "dt", {"context_len": 2, "embed_dim": 8, "num_layers": 1}) if algo == "dt"
             else Agent(spec, 4, algo, ALGO[algo]))
    agent.reset_episode()
    empty = {"proprio": np.zeros((0, 7), np.float32), "object": np.zeros((0, 4), np.float32), "task_id": 0}
    for env_units in (False, True):
        actions = agent.act(empty, env_units=env_units)
        assert actions.shape == (0, 4) and actions.dtype == np.float32
    with pytest.raises(ValueError, match="proprio"):  # still checked
        agent.act({**empty, "proprio": np.zeros((0, 6), np.float32)})


@pytest.mark.parametrize("algo", ["calql", "iql", "bcq", "dt"])
def test_agents_stay_float32_under_a_float64_default_and_train_on_float64_batches(algo):
    """Under ``torch.set_default_dtype(torch.float64)`` the agent (and one rebuilt from its description) was built
    in float64 and failed on float32 observations ("mat1 and mat2 must have the same dtype"); a batch made from
    float64 arrays failed the update. The caller's default is theirs again after each call."""
    was = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        if algo == "dt":
            agent = Agent(SPECS["1cam"], 4, "dt", {"context_len": 2, "embed_dim": 8, "num_layers": 1},
                          EncoderSettings(kwargs={"channels": 4, "out_dim": 8}))
        else:
            agent = make_agent(SPECS["1cam"], algo)
            batch = as_float64(raw_batch(agent.spec))
            agent.update(batch)
            agent.step_tensors(raw_batch(agent.spec), with_metrics=True)  # what a CUDA graph captures, called alone
            assert agent.q_values(batch["observations"], batch["actions"]).dtype == torch.float32
        obs = {k: v[0].numpy() for k, v in raw_batch(agent.spec)["observations"].items()}
        rebuilt = Agent.from_description(agent.describe())
        for a in (agent, rebuilt):
            a.reset_episode()
            assert a.act(obs).dtype == np.float32
            a.observe_reward(1.0)  # the Decision Transformer's returns-to-go; nothing for the others
            assert a.act({**obs, "proprio": obs["proprio"].astype(np.float64)}).shape == (4,)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(was)
    assert {p.dtype for a in (agent, rebuilt) for m in a.modules() for p in m.parameters()} == {torch.float32}


@pytest.mark.parametrize("mode", ["finetune", "frozen", "frozen_cached"])
def test_pretrained_modes_load_the_stage1_weights(stage1_encoder, mode):
    path, expected = stage1_encoder
    agent = make_agent(SPECS["2cams"], mode=mode, path=path)
    encoders = [agent.feature_encoder] if mode == "frozen_cached" else [agent.critic_encoder, agent.actor_encoder]
    for enc in encoders:
        got = image_weights(enc)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items())
    assert agent.encoder_source["source"] == str(path.resolve()) and agent.mode == mode
    rebuilt = Agent.from_description(agent.describe())  # a checkpoint's agent keeps where its encoder came from
    assert rebuilt.encoder_source == agent.encoder_source and rebuilt.describe() == agent.describe()
    if mode == "frozen_cached":  # RL runs on vectors: the features are a low-dim part
        assert agent.train_spec.low_dim_keys == ("features", "proprio") and not agent.train_spec.rgb
        assert agent.critic_encoder.image_encoder is None
    # what data-parallel replicas broadcast and check: the frozen feature encoder too, and modules only
    mods = agent.modules()
    assert all(isinstance(m, torch.nn.Module) for m in mods) and agent.core.critic in mods
    assert any(m is agent.feature_encoder for m in mods) == (mode == "frozen_cached")


def test_an_encoder_name_or_kwargs_beside_a_checkpoint_are_named_as_ignored(stage1_encoder, caplog):
    """encoder.name=resnet18 with encoder.checkpoint trained the checkpoint's small_conv without a word."""
    import logging

    from robopretrain.agent import EncoderSettings, build_image_encoder

    path, _ = stage1_encoder
    with caplog.at_level(logging.WARNING):
        build_image_encoder(EncoderSettings(checkpoint=str(path)), SIZE)  # the defaults: nothing asked
        build_image_encoder(EncoderSettings(checkpoint=str(path), name="small_conv",
                                            kwargs={"channels": 4, "out_dim": 8}), SIZE)  # the checkpoint's own
        build_image_encoder(EncoderSettings(checkpoint=str(path), kwargs={"out_dim": 8}), SIZE)  # part of them
        assert "ignored" not in caplog.text
        encoder, _ = build_image_encoder(EncoderSettings(checkpoint=str(path), name="resnet18",
                                                         kwargs={"channels": 8}), SIZE)
    assert "sets the architecture (small_conv" in caplog.text and "name=resnet18, kwargs={'channels': 8}" in caplog.text
    assert encoder.out_dim == 8


def test_scratch_has_the_architecture_but_not_the_weights(stage1_encoder):
    path, expected = stage1_encoder
    agent = make_agent(SPECS["1cam"], mode="scratch", path=path)
    state = image_weights(agent.critic_encoder)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
    assert any(not torch.equal(state[k], expected[k]) for k, _ in agent.critic_encoder.image_encoder.named_parameters())
    assert agent.encoder_source["source"] == "scratch"
    assert make_agent(SPECS["1cam"]).mode == "scratch"  # no checkpoint: scratch with encoder.name
    with pytest.raises(ValueError, match="encoder.mode=frozen needs encoder.checkpoint"):
        make_agent(SPECS["1cam"], mode="frozen")


def test_scratch_builds_the_checkpoints_architecture_at_the_cameras_size(stage1_encoder, caplog):
    """encoder.mode=scratch borrows only the architecture: a checkpoint trained at another image size was refused
    (its weights are not used); the modes that load its weights still refuse, naming scratch."""
    import logging

    from robopretrain.agent import EncoderSettings, build_image_encoder

    path, _ = stage1_encoder
    with caplog.at_level(logging.INFO):
        encoder, source = build_image_encoder(EncoderSettings(mode="scratch", checkpoint=str(path)), 2 * SIZE)
    assert encoder.input_spec["image_size"] == 2 * SIZE and source["architecture_from"] == str(path)
    assert encoder.build_args["kwargs"] == {"channels": 4, "out_dim": 8} and encoder.out_dim == 8
    assert f"built for the cameras' {2 * SIZE} px (it was trained at {SIZE} px)" in caplog.text
    with torch.no_grad():
        assert encoder(torch.zeros(2, 3, 2 * SIZE, 2 * SIZE)).shape == (2, 8)
    for mode in ("finetune", "frozen"):
        with pytest.raises(ValueError, match=f"takes {SIZE} px images but the cameras give {2 * SIZE} px; "
                                             f"data.image_size={SIZE} reads the data.*encoder.mode=scratch"):
            build_image_encoder(EncoderSettings(mode=mode, checkpoint=str(path)), 2 * SIZE)


def test_a_frozen_encoder_is_never_shifted_or_put_in_training_mode_and_the_description_keeps_the_mode(
        stage1_encoder):
    """Random shifts and train mode only for encoders the agent trains; every network a replica must share is listed;
    an agent rebuilt from its description has the mode it ran in (auto mode resolved: finetune from a checkpoint)."""
    path, _ = stage1_encoder
    frozen, auto = make_agent(SPECS["1cam"], mode="frozen", path=path), make_agent(SPECS["1cam"], path=path)
    assert [e.augment_pad for e in frozen.encoders()] == [0] and {e.augment_pad for e in auto.encoders()} == {2}
    frozen.train_mode(True)
    auto.train_mode(True)
    assert not any(e.training for e in frozen.encoders()) and all(e.training for e in auto.encoders())
    mods = frozen.modules()
    for name in ("actor", "critic", "target_critic"):
        assert any(m is getattr(frozen.core, name) for m in mods), name
    assert auto.mode == "finetune" and Agent.from_description(auto.describe()).mode == "finetune"
    # auto mode without a checkpoint resolves to scratch; its recorded settings alone would rebuild as finetune
    blank = make_agent(SPECS["1cam"])
    assert blank.settings.mode is None and blank.mode == "scratch"
    assert Agent.from_description(blank.describe()).describe()["encoder_mode"] == "scratch"


def test_frozen_keeps_the_encoder_fixed_while_finetune_trains_separate_ones(stage1_encoder):
    path, expected = stage1_encoder
    data = raw_batch(SPECS["1cam"])
    frozen = make_agent(SPECS["1cam"], mode="frozen", path=path)
    critic_before = weights(frozen.core.critic)
    for _ in range(3):
        frozen.update(data)
    assert not changed(frozen.critic_encoder.image_encoder, expected) and changed(frozen.core.critic, critic_before)
    assert all(not p.requires_grad for p in frozen.critic_encoder.parameters())

    tuned = make_agent(SPECS["1cam"], mode="finetune", path=path)
    for _ in range(3):
        tuned.update(data)
    for enc in (tuned.critic_encoder, tuned.actor_encoder):
        assert changed(enc.image_encoder, expected)
    # separate encoders: the actor's trains on the actor loss, so the two drift apart
    assert any(not torch.equal(a, b) for a, b in zip(tuned.critic_encoder.parameters(),
                                                      tuned.actor_encoder.parameters()))


def test_a_shared_encoder_gets_no_actor_gradient(stage1_encoder):
    path, _ = stage1_encoder
    agent = make_agent(SPECS["2cams"], mode="finetune", path=path, shared=True)
    assert agent.actor_encoder is agent.critic_encoder
    batch = raw_batch(agent.spec)
    agent.update(batch)  # populate optimiser state; then the actor loss must not reach the shared encoder
    losses, _ = agent.core.compute_losses(agent._encoded_batch(batch), with_metrics=False)
    grads = torch.autograd.grad(losses["actor"], list(agent.critic_encoder.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_cached_features_give_the_q_values_and_actions_of_the_frozen_encoder(stage1_encoder):
    path, _ = stage1_encoder
    cached = make_agent(SPECS["2cams"], mode="frozen_cached", path=path, seed=5)
    plain = make_agent(SPECS["2cams"], mode="frozen", path=path, seed=6)
    plain.core.load_state_dict(cached.core.state_dict())
    raw = raw_batch(SPECS["2cams"], n=12)["observations"]
    feats = {k: torch.as_tensor(v) for k, v in cached.prepare({k: v.numpy() for k, v in raw.items()}).items()}
    assert feats["features"].shape == (12, 2 * 8) and "agentview_image" not in feats
    acts = torch.rand(12, 4) * 2 - 1
    torch.testing.assert_close(cached.q_values(feats, acts), plain.q_values(raw, acts), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached.act(feats), plain.act(raw), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached.act(raw), plain.act(raw), rtol=1e-5, atol=1e-5)  # raw env observations too


# --------------------------------------------------------------------------- every algorithm, every spec


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("algo", ["cql", "calql", "iql", "bc", "td3_bc", "awac", "rebrac", "bcq", "por"])
def test_every_algorithm_trains_on_every_observation_spec(stage1_encoder, spec_name, algo):
    spec = SPECS[spec_name]
    agent = make_agent(spec, algo)
    assert agent.mode == ("none" if spec_name == "low_dim" else "scratch")
    enc_before = weights(agent.critic_encoder)
    actor_before = weights(agent.core.actor)
    batch = raw_batch(spec)
    for _ in range(3):
        metrics = agent.update(batch)
    loss_key = {"iql": "q_loss", "bc": "bc_loss", "por": "value_loss"}.get(algo, "critic_loss")
    assert math.isfinite(metrics[loss_key]) and agent.core.num_updates == 3
    assert changed(agent.core.actor, actor_before)
    if spec.rgb:
        assert changed(agent.critic_encoder, enc_before)  # scratch trains the encoder with the algorithm's loss
        assert agent.critic_encoder.has_parameters
    else:  # no cameras: the encoder only concatenates, normalises and one-hots
        assert not agent.critic_encoder.has_parameters and agent.encoder_optimizer is None
        assert agent.actor_encoder is agent.critic_encoder
    assert agent.feature_dim == 8 * len(spec.rgb) + spec.low_dim_size + spec.num_tasks
    single = {k: v[0].numpy() for k, v in batch["observations"].items()}
    assert agent.act(single).shape == (4,) and agent.act(batch["observations"]).shape == (8, 4)
    if algo in ("bc", "por"):
        assert (agent.actor_encoder is agent.critic_encoder) == (algo == "bc" or not spec.rgb) and not agent.has_q
        with pytest.raises(ValueError, match="has no Q-function"):
            agent.q_values(batch["observations"], batch["actions"])


@pytest.mark.parametrize("algo", ["iql", "bc"])
@pytest.mark.parametrize("mode", ["frozen", "frozen_cached"])
def test_iql_and_bc_never_change_a_frozen_encoder(stage1_encoder, algo, mode):
    path, expected = stage1_encoder
    agent = make_agent(SPECS["1cam"], algo, mode=mode, path=path)
    actor_before = weights(agent.core.actor)
    batch = prepared_batch(agent)
    for _ in range(3):
        agent.update(batch)
    enc = agent.feature_encoder if mode == "frozen_cached" else agent.critic_encoder
    assert not changed(enc.image_encoder, expected) and changed(agent.core.actor, actor_before)
    assert all(not p.requires_grad for p in enc.parameters())


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [g for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            if g is not None and torch.count_nonzero(g) > 0]


@pytest.mark.parametrize("algo", ["cql", "iql", "td3_bc", "awac", "rebrac", "bcq", "por"])
def test_each_loss_trains_only_its_own_encoder(stage1_encoder, algo):
    """Separate encoders: the critic-side losses reach only the critic encoder, the policy loss only the actor's."""
    path, _ = stage1_encoder
    agent = make_agent(SPECS["2cams"], algo, mode="finetune", path=path)
    agent.core.num_updates = 1  # TD3 family: an update with an actor loss
    losses, _ = agent.core.compute_losses(agent._encoded_batch(raw_batch(agent.spec)), with_metrics=False)
    critic_params = list(agent.critic_encoder.parameters())
    actor_params = list(agent.actor_encoder.parameters())
    critic_losses = {"iql": ("value", "critic"), "por": ("value",)}.get(algo, ("critic",))
    if algo == "bcq":  # the VAE reads the actor encoder's features, like the perturbation net
        assert grads(losses["vae"], actor_params) and not grads(losses["vae"], critic_params)
    if algo == "por":  # the guide reads the actor encoder's features; its target (critic features of s') is detached
        assert grads(losses["guide"], actor_params) and not grads(losses["guide"], critic_params)
    for name in critic_losses:
        assert grads(losses[name], critic_params) and not grads(losses[name], actor_params), name
    assert grads(losses["actor"], actor_params) and not grads(losses["actor"], critic_params)


@pytest.mark.parametrize("algo", ["cql", "td3_bc", "awac", "bcq", "iql", "por"])
def test_a_separate_actor_encoder_gives_the_policy_its_own_features_of_s_and_s_prime(algo):
    """The policy's s and s' features come from the actor encoder (the losses fall back to the critic's features
    when a key is missing, so a dropped key would train silently on the wrong features); s' only where the
    algorithm's policy reads it. Draws replayed in the documented order: critic s, critic s', actor s, actor s'."""
    agent = make_agent(SPECS["2cams"], algo)
    assert agent.actor_encoder is not agent.critic_encoder
    batch = raw_batch(agent.spec)
    state = agent.generator.get_state()
    flat = agent._encoded_batch(batch)
    agent.generator.set_state(state)
    with torch.no_grad():
        for key in ("observations", "next_observations"):
            agent._encode(agent.critic_encoder, batch[key])
        actor_s = agent._encode(agent.actor_encoder, batch["observations"])
        actor_next = agent._encode(agent.actor_encoder, batch["next_observations"])
    torch.testing.assert_close(flat["actor_observations"], actor_s, rtol=0, atol=0)
    if algo in ("iql", "por"):  # their policies read s only
        assert "actor_next_observations" not in flat
    else:
        torch.testing.assert_close(flat["actor_next_observations"], actor_next, rtol=0, atol=0)


def test_load_state_dict_restores_the_optimizers_unless_told_not_to():
    """The default restores Adam's moments and step counts (what a resume needs); with_optimizer=False keeps the
    receiving agent's own."""
    trained = make_agent(SPECS["low_dim"], "iql")
    trained.update(raw_batch(trained.spec), with_metrics=False)
    saved = trained.core.optimizer.state_dict()["state"]
    fresh = make_agent(SPECS["low_dim"], "iql", seed=1)
    fresh.load_state_dict(trained.state_dict())
    loaded = fresh.core.optimizer.state_dict()["state"]
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[i]["exp_avg"], saved[i]["exp_avg"]) for i in saved)
    other = make_agent(SPECS["low_dim"], "iql", seed=1)
    other.load_state_dict(trained.state_dict(), with_optimizer=False)
    assert other.core.optimizer.state_dict()["state"] == {}


def test_bc_loss_trains_its_one_encoder():
    agent = make_agent(SPECS["2cams"], "bc")
    assert agent.actor_encoder is agent.critic_encoder and agent.trains_encoder
    losses, _ = agent.core.compute_losses(agent._encoded_batch(raw_batch(agent.spec)), with_metrics=False)
    assert grads(losses["actor"], list(agent.critic_encoder.parameters()))


@pytest.mark.parametrize("mode", ["scratch", None])
def test_an_agent_ends_cqls_bc_warm_start_after_bc_steps_updates(mode):
    """The image agent computes the learner's losses itself: it must go through the learner's per-update phase (else
    the warm start never ends, or never starts)."""
    spec = SPECS["1cam"] if mode else SPECS["low_dim"]
    settings = EncoderSettings(mode=mode, augment_pad=2, kwargs={"channels": 4, "out_dim": 8})
    torch.manual_seed(0)
    agent = Agent(spec, 4, "cql", {**ALGO["cql"], "bc_steps": 1}, settings, seed=0)
    batch = raw_batch(spec)
    phases = []
    for _ in range(3):
        agent.update(batch)
        phases.append(agent.core.bc_phase)
    assert phases == [True, False, False] and agent.core.num_updates == 3


def test_an_augmentation_shift_past_a_quarter_of_the_frame_is_warned_and_a_negative_one_refused(caplog):
    """encoder.augment_pad=100 on 48 px frames was accepted silently (the shifted frame is mostly border)."""
    import logging

    spec = SPECS["1cam"]
    for pad, warned in ((spec.image_size // 4, False), (spec.image_size // 4 + 1, True)):
        caplog.clear()
        settings = EncoderSettings(mode="scratch", augment_pad=pad, kwargs={"channels": 4, "out_dim": 8})
        with caplog.at_level(logging.WARNING, logger="robopretrain.agent"):
            Agent(spec, 4, "bc", ALGO["bc"], settings, seed=0)
        assert ("mostly border pixels" in caplog.text) == warned, pad
    with pytest.raises(ValueError, match=r"encoder.augment_pad=-1; expected a shift in pixels >= 0"):
        Agent(spec, 4, "bc", ALGO["bc"], EncoderSettings(mode="scratch", augment_pad=-1), seed=0)
    # half the frame or more: a new stage-2 agent is refused, as stage 1 refuses it (stage 2 only warned); a saved
    # agent with such a shift still rebuilds (evaluate, stage 3)
    from omegaconf import OmegaConf

    from robopretrain.build import new_agent

    half = {"mode": "scratch", "augment_pad": spec.image_size // 2, "kwargs": {"channels": 4, "out_dim": 8}}
    cfg = OmegaConf.create({"algo": {"name": "bc", **ALGO["bc"]}, "encoder": half, "seed": 0,
                            "obs": {"normalize": False}})
    data = SimpleNamespace(arrays=lambda: {"observations": {}})
    with pytest.raises(ValueError, match=rf"augment_pad={spec.image_size // 2} on {spec.image_size} px frames; "
                                         rf"expected a shift smaller than half the frame, at most "
                                         rf"{(spec.image_size - 1) // 2} px"):
        new_agent(cfg, spec, 4, data, torch.device("cpu"))
    cfg.encoder.augment_pad = (spec.image_size - 1) // 2
    new_agent(cfg, spec, 4, data, torch.device("cpu"))
    saved = Agent(spec, 4, "bc", ALGO["bc"], EncoderSettings(**half), seed=0)
    assert Agent.from_description(saved.describe()).settings.augment_pad == spec.image_size // 2


def test_act_checks_each_part_of_the_observation_against_the_spec():
    """Parts of the wrong sizes whose total matched were concatenated silently (a wrong action); a channels-first
    frame, float frames, an out-of-range or float task id or a list failed deep in torch or not at all."""
    spec = ObsSpec(low_dim=(("joint_state", 12), ("ee_pos", 3)), rgb=(CAM,), num_tasks=2)
    agent = make_agent(spec, "bc")
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    good = {"joint_state": np.zeros(12), "ee_pos": [0.1, 0.2, 0.3], "agentview_image": frame, "task_id": 1}
    assert agent.act(good).shape == (4,)  # a list for a low-dim part is taken as an array
    batch = {"joint_state": np.zeros((3, 12)), "ee_pos": np.zeros((3, 3)), "agentview_image": np.stack([frame] * 3),
             "task_id": np.array([0, 1, 1])}
    assert agent.act(batch).shape == (3, 4)
    assert agent.act({**good, "task_id": 1.0}).shape == (4,)  # stored batches hold whole-number floats
    rng = np.random.default_rng(0)
    seen = {**good, "agentview_image": rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)}
    for listed in (seen["agentview_image"].tolist(), torch.as_tensor(seen["agentview_image"], dtype=torch.int64)):
        # a frame as nested lists (int64, as documented) was refused as if it were floats
        assert np.array_equal(agent.act({**seen, "agentview_image": listed}), agent.act(seen))
    cases = {
        "swapped sizes": ({**good, "joint_state": np.zeros(3), "ee_pos": np.zeros(12)},
                          r"'joint_state' has shape \(3,\); the agent expects \(12,\) per observation"),
        "batch sizes differ": ({**batch, "ee_pos": np.zeros((2, 3))}, r"'ee_pos' has shape \(2, 3\).*of B = 3"),
        "channels first": ({**good, "agentview_image": np.zeros((3, SIZE, SIZE), np.uint8)},
                           r"channels first: pass np.moveaxis\(agentview_image, -3, -1\)"),
        "float frames": ({**good, "agentview_image": frame.astype(np.float32)}, r"is float32; .* uint8 frames"),
        "another frame size": ({**good, "agentview_image": np.zeros((SIZE + 4, SIZE + 8, 3), np.uint8)},
                               rf"camera_frames.to_agent_frame\(frame, {SIZE}\) makes it the agent's RGB frame"),
        # a grey frame the stages read as RGB: the hint named resizing alone
        "grey frame": ({**good, "agentview_image": np.zeros((SIZE, SIZE, 1), np.uint8)},
                       r"another size or layout \(grey, channels first, RGBA\): .*to_agent_frame"),
        "task id too large": ({**good, "task_id": 2}, r"task_id 2; expected integers in \[0, 2\)"),
        "negative task id": ({**batch, "task_id": np.array([0, -1, 1])}, r"task_id values -1..1"),
        "fractional task id": ({**good, "task_id": 0.5}, r"task_id not whole numbers"),
        # a name for a slot failed in numpy's rint, a bool was slot 0 / 1
        "task name for an id": ({**good, "task_id": "1"}, r"task_id is <U1; expected integers in \[0, 2\)"),
        "bool task id": ({**good, "task_id": True}, r"task_id is bool; expected integers"),
        "bool task id tensor": ({**good, "task_id": torch.tensor(True)}, r"task_id is torch.bool; expected integers"),
        "frame beyond 255": ({**good, "agentview_image": np.arange(SIZE * SIZE * 3).reshape(SIZE, SIZE, 3)},
                             r"is int64; .* uint8 frames"),
        "channels-first batch": ({**batch, "agentview_image": np.zeros((3, 3, SIZE, SIZE), np.uint8)},
                                 r"channels first: pass np.moveaxis\(agentview_image, -3, -1\)"),
        "negative frame": ({**good, "agentview_image": np.full((SIZE, SIZE, 3), -1)}, r"is int64; .* uint8 frames"),
        "NaN reading": ({**good, "ee_pos": [0.1, np.nan, 0.3]}, r"'ee_pos' holds NaN or inf \(at index \[\[1\]\]\)"),
        "inf in a batch": ({**batch, "joint_state": np.full((3, 12), np.inf)},
                           r"'joint_state' holds NaN or inf \(at index \[\[0, 0\], \[0, 1\], \[0, 2\]\], \.\.\.\)"),
        "NaN tensor": ({**good, "joint_state": torch.full((12,), float("nan"))}, r"'joint_state' holds NaN"),
    }
    for name, (obs, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            agent.act(obs)
    with pytest.raises(KeyError, match=r"missing \['task_id'\].*an integer in \[0, 2\): a stage-2 checkpoint's"):
        agent.act({k: v for k, v in good.items() if k != "task_id"})
    scalar = agent.act({**batch, "task_id": 1})  # one id for the whole batch
    assert np.array_equal(scalar, agent.act({**batch, "task_id": np.ones(3, int)}))
    one_task = make_agent(ObsSpec(low_dim=(("joint_state", 12),), num_tasks=1), "bc")  # a file without task ids
    assert np.array_equal(one_task.act({"joint_state": np.ones(12)}),
                          one_task.act({"joint_state": np.ones(12), "task_id": 0}))
    assert one_task.act({"joint_state": np.ones((2, 12))}).shape == (2, 4)
    nested = make_agent(ObsSpec(low_dim=(("arm.pos", 3),), num_tasks=1), "bc")  # an env's raw nested Dict
    with pytest.raises(KeyError, match=r"missing \['arm.pos'\]; it has \['arm'\]; nested parts are read by "
                                       r"their dotted names .*flatten_obs\(obs, 'step'\)"):  # its keys: no task_id
        nested.act({"arm": {"pos": np.zeros(3)}})
    from robopretrain.data.episodes import flatten_obs

    assert nested.act(flatten_obs({"arm": {"pos": np.zeros(3)}}, "step")).shape == (4,)
    with pytest.raises(TypeError, match="expected an observation dict"):
        agent.act([good])


def test_act_in_env_units_maps_the_agents_actions_back_to_the_robots():
    """An agent trained on rescaled actions acts in [-1, 1]; ``env_units=True`` gives the robot's units."""
    from robopretrain.envs.action_units import ActionNormalization

    spec = ObsSpec(low_dim=(("proprio", 7),))
    agent = make_agent(spec, "bc")
    obs = {"proprio": np.linspace(-1, 1, 7)}
    assert np.array_equal(agent.act(obs, env_units=True), agent.act(obs))  # the env's own units: unchanged
    agent.action_normalization = ActionNormalization(low=(-2.0, 0.0, 0.0, -1.0), high=(4.0, 1.0, 0.5, 1.0))
    raw = agent.act(obs)
    assert np.allclose(agent.act(obs, env_units=True), [-2 + (raw[0] + 1) * 3, (raw[1] + 1) / 2,
                                                        (raw[2] + 1) / 4, raw[3]], atol=1e-6)
    assert agent.act({"proprio": np.zeros((2, 7))}, env_units=True).shape == (2, 4)


def test_acting_on_a_read_only_frame_gives_no_torch_warning():
    """np.asarray(PIL.Image) is read-only: torch warned that a tensor on it was undefined behaviour."""
    import warnings

    agent = Agent(SPECS["1cam"], 3, "bc", ALGO["bc"])
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    frame.flags.writeable = False
    obs = {"proprio": np.zeros(7, np.float32), CAM[0]: frame, "task_id": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        action = agent.act(obs, deterministic=True)
    assert action.shape == (3,) and not frame.flags.writeable  # the caller's array is left as it was
