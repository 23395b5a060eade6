"""The image pipeline: encoder transfer modes, cached features, 90/10 mixing, and a tiny end-to-end run.

The end-to-end run uses a target task that is not a sim_envs task: a gymnasium env defined here, with its demos in
a robomimic HDF5 whose observation keys differ from ours (mapped by config).
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robopretrain.data.replay import MixedSampler, OfflineDataset
from robopretrain.image_agent import STATE_KEY, ImageAgent, image_obs_config
from robopretrain.image_rl import cache_features
from robopretrain.nets.encoder_io import save_encoder
from robopretrain.nets.encoders import make_encoder

SIZE = 32
STATE_DIM = 7 + 12
ALGO = {"batch_size": 16, "actor_hidden": [32, 32], "critic_hidden": [32, 32], "n_actions": 2}


@pytest.fixture(scope="module")
def stage1_encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    enc = make_encoder("small_conv", SIZE, channels=8, out_dim=16)
    with torch.no_grad():  # weights unlike any fresh initialisation
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = save_encoder(tmp_path_factory.mktemp("stage1") / "encoder", enc, "small_conv", {"test": True})
    return path, {k: v.clone() for k, v in enc.state_dict().items()}


def make_agent(path: Path, mode: str, shared: bool = False, seed: int = 0) -> ImageAgent:
    cfg = image_obs_config({"mode": mode, "encoder_checkpoint": str(path), "image_size": SIZE,
                            "shared_encoder": shared, "augment_pad": 2})
    torch.manual_seed(seed)
    return ImageAgent(cfg, STATE_DIM, 4, "calql", ALGO, seed=seed)


def image_dataset(n: int = 64, seed: int = 0, marker: float = 0.0) -> OfflineDataset:
    rng = np.random.default_rng(seed)

    def obs() -> dict[str, np.ndarray]:
        state = rng.normal(size=(n, STATE_DIM)).astype(np.float32)
        state[:, 0] = marker
        return {"agentview_image": rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8), STATE_KEY: state}

    return OfflineDataset(obs(), rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
                          rng.choice([-5.0, 5.0], size=n).astype(np.float32), obs(), np.zeros(n, np.float32),
                          rng.normal(size=n).astype(np.float32), seed=seed)


def assert_same_weights(module: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert torch.equal(state[k].cpu(), v), k


@pytest.mark.parametrize("mode", ["finetune", "frozen", "frozen_cached"])
def test_pretrained_modes_load_the_stage1_weights(stage1_encoder, mode):
    path, weights = stage1_encoder
    agent = make_agent(path, mode)
    assert_same_weights(agent.critic_encoder, weights)
    assert_same_weights(agent.actor_encoder, weights)
    assert agent.encoder_source["source"] == str(path.resolve())


def test_scratch_has_the_architecture_but_not_the_weights(stage1_encoder):
    path, weights = stage1_encoder
    agent = make_agent(path, "scratch")
    state = agent.critic_encoder.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in weights.items()}
    trainable = [k for k, v in agent.critic_encoder.named_parameters()]
    assert any(not torch.equal(state[k], weights[k]) for k in trainable)
    assert agent.encoder_source["source"] == "scratch"


def test_frozen_keeps_encoder_fixed_while_finetune_trains_it(stage1_encoder):
    path, weights = stage1_encoder
    data = image_dataset()
    frozen = make_agent(path, "frozen")
    critic_before = {k: v.clone() for k, v in frozen.agent.critic.state_dict().items()}
    for _ in range(3):
        frozen.update(data.sample(16))
    assert_same_weights(frozen.critic_encoder, weights)
    assert any(not torch.equal(v, critic_before[k]) for k, v in frozen.agent.critic.state_dict().items())
    assert all(not p.requires_grad for p in frozen.critic_encoder.parameters())

    tuned = make_agent(path, "finetune")
    for _ in range(3):
        tuned.update(data.sample(16))
    for enc in (tuned.critic_encoder, tuned.actor_encoder):
        state = enc.state_dict()
        assert any(not torch.equal(state[k], weights[k]) for k, _ in enc.named_parameters())
    # separate encoders: the actor's trains on the actor loss, so the two drift apart
    assert any(not torch.equal(a, b) for a, b in zip(tuned.critic_encoder.parameters(),
                                                      tuned.actor_encoder.parameters()))


def test_shared_finetuned_encoder_gets_no_actor_gradient(stage1_encoder):
    path, _ = stage1_encoder
    agent = make_agent(path, "finetune", shared=True)
    batch = image_dataset().sample(16)
    agent.update(batch)  # populate optimiser state; then compare the encoder gradient with and without the actor
    obs = agent.encode(batch["observations"], agent.critic_encoder)
    flat = {**batch, "observations": obs, "next_observations": agent.encode(batch["next_observations"],
                                                                            agent.critic_encoder),
            "actor_observations": obs.detach(), "actor_next_observations": obs.detach()}
    losses, _ = agent.agent.compute_losses(flat, with_metrics=False)
    grads_actor = torch.autograd.grad(losses["actor"], list(agent.critic_encoder.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads_actor)


def test_cached_features_give_the_same_q_values(stage1_encoder):
    path, _ = stage1_encoder
    data = image_dataset(40)
    cached_agent = make_agent(path, "frozen_cached", seed=5)
    plain_agent = make_agent(path, "frozen", seed=6)
    plain_agent.load_state_dict(cached_agent.state_dict())
    cached = cache_features(data, cached_agent)
    idx = np.arange(40)
    raw, feat = data.get(idx), cached.get(idx)
    assert feat["observations"].shape == (40, cached_agent.obs_dim)
    q_cached = cached_agent.q_values(feat["observations"], raw["actions"])
    q_plain = plain_agent.q_values(raw["observations"], raw["actions"])
    torch.testing.assert_close(q_cached, q_plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached_agent.act(feat["observations"]), plain_agent.act(raw["observations"]),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feat["mc_returns"], raw["mc_returns"])


@pytest.mark.parametrize("prior_fraction, batch", [(0.9, 50), (0.9, 256), (0.75, 64)])
def test_prior_target_mixing_holds_over_many_batches(prior_fraction, batch):
    prior, target = image_dataset(200, seed=1, marker=1.0), image_dataset(30, seed=2, marker=2.0)
    sampler = MixedSampler(prior, target, prior_fraction)
    n_prior = n_target = 0
    for _ in range(300):
        marks = sampler.sample(batch)["observations"][STATE_KEY][:, 0]
        p, t = int((marks == 1.0).sum()), int((marks == 2.0).sum())
        assert p + t == batch
        assert p == round(prior_fraction * batch)
        n_prior += p
        n_target += t
    assert n_target / (n_prior + n_target) == pytest.approx(1 - prior_fraction, abs=0.5 / batch)


# --------------------------------------------------------------------------- a target task that is not ours


class DotEnv(gym.Env):
    """Move a dot to the centre of a tiny image. Observation keys unlike ours: ``rgb_image``, ``robot_state``."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.observation_space = gym.spaces.Dict({
            "rgb_image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
            "robot_state": gym.spaces.Box(-np.inf, np.inf, (7,), np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.pos = np.zeros(2, np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        img = np.zeros((self.size, self.size, 3), np.uint8)
        r, c = ((self.pos + 1) / 2 * (self.size - 1)).astype(int)
        img[r, c] = 255
        state = np.zeros(7, np.float32)
        state[:2] = self.pos
        return {"rgb_image": img, "robot_state": state}

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        angle = self.np_random.uniform(0, 2 * np.pi)
        self.pos = (0.8 * np.array([np.cos(angle), np.sin(angle)])).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.1 * np.asarray(action[:2], np.float32), -1, 1)
        success = bool(np.linalg.norm(self.pos) < 0.15)
        return self._obs(), float(success), success, False, {"success": success}


def write_dot_demos(path: Path, episodes: int = 4) -> Path:
    from sim_envs.hdf5_writer import RobomimicWriter, make_env_args

    env = gym.wrappers.TimeLimit(DotEnv(), 12)
    with RobomimicWriter(path, make_env_args("DotEnv", "0", {}), valid_fraction=0.0) as w:
        for ep in range(episodes):
            obs, _ = env.reset(seed=ep)
            steps = []
            done = False
            while not done:
                action = np.zeros(4, np.float32)
                action[:2] = np.clip(-obs["robot_state"][:2] / 0.1, -1, 1)
                nxt, r, term, trunc, _ = env.step(action)
                steps.append((obs, action, r, nxt, term))
                obs, done = nxt, term or trunc
            stack = lambda i: {k: np.stack([s[i][k] for s in steps]) for k in steps[0][i]}  # noqa: E731
            w.add_episode(task="DotEnv", task_id=11, obs=stack(0), next_obs=stack(3),
                          actions=np.stack([s[1] for s in steps]), rewards=np.array([s[2] for s in steps], np.float32),
                          dones=np.array([s[4] for s in steps], np.uint8), ep_meta={"success": bool(steps[-1][4])})
    return path


def tiny_pipeline_config(run_dir: Path, demos: Path) -> OmegaConf:
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "pipeline.yaml")
    cfg.pop("hydra")
    cfg.merge_with({
        "run_dir": str(run_dir), "image_size": SIZE, "progress": False, "prior_tasks": ["Reach"],
        "targets": [{"name": "Dot", "env_id": f"{__name__}:DotEnv", "demos": str(demos), "task_id": 11,
                     "max_episode_steps": 12, "obs_map": {"agentview_image": "rgb_image", "proprio": "robot_state"}}],
        "data": {"prior_episodes_per_task": 2, "target_demos": 3, "num_workers": 1,
                 "videos": {"num_clips": 3, "play_fraction": 0.0}},
        "stage1": {"steps": 2, "batch_size": 4, "encoder_kwargs": {"channels": 8, "out_dim": 16}},
        "encoder": {"mode": "finetune"},
        "algo_overrides": {"batch_size": 16, "actor_hidden": [32, 32], "critic_hidden": [32, 32], "n_actions": 2},
        "stage2": {"steps": 4, "eval_episodes": 0, "checkpoint_every": 2},
        "adapt": {"steps": 4, "checkpoint_every": 2},
        "stage3": {"env_steps": 12, "num_envs": 2, "asynchronous": False, "eval_every": 6, "eval_episodes": 1,
                   "checkpoint_every": 6},
        "evaluate": {"episodes": 2},
    })
    return cfg


def test_tiny_pipeline_runs_every_stage_then_skips_them(tmp_path):
    from robopretrain.pipeline import STAGES, run_pipeline

    demos = write_dot_demos(tmp_path / "dot_demos.hdf5")
    cfg = tiny_pipeline_config(tmp_path / "run", demos)
    first = run_pipeline(cfg)
    assert list(first["stages"]) == list(STAGES)
    assert all(isinstance(v, float) for v in first["stages"].values()), first["stages"]
    run = tmp_path / "run"
    for stage in STAGES:
        assert (run / stage / "done.json").is_file()
    assert (run / "stage1" / "encoder" / "meta.json").is_file()
    assert (run / "data" / "prior_demos.hdf5").is_file()
    assert not (run / "data" / "target_demos.hdf5").exists()  # the custom target brings its own demos
    results = json.loads((run / "evaluate" / "results.json").read_text())
    assert set(results) == {"Dot"} and 0.0 <= results["Dot"]["nominal"]["success"] <= 1.0
    s3 = json.loads((run / "stage3" / "Dot" / "summary.json").read_text())
    assert s3["history"][-1]["env_steps"] == 12 and s3["history"][0]["env_steps"] == 0
    report = (run / "report.md").read_text()
    assert "Dot" in report and "rollout_Dot.gif" in report
    assert (run / "evaluate" / "rollout_Dot.gif").stat().st_size > 0
    mtimes = {s: (run / s / "done.json").stat().st_mtime_ns for s in STAGES}

    second = run_pipeline(cfg)
    assert second["stages"] == {s: "skipped" for s in STAGES}
    assert {s: (run / s / "done.json").stat().st_mtime_ns for s in STAGES} == mtimes
