"""The evaluation loop on policies whose outcome is known: the scripted Reach expert succeeds in every episode, a
policy that never moves in none; the counts, returns and lengths equal those of a plain loop over the same seeds; and
the calibration numbers by hand. (tests/test_normalization.py checks that the observation the loop hands the agent is
the training row of the same state.)"""
import logging
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from robopretrain import evaluation
from robopretrain.envs.target import Target
from robopretrain.evaluation import EVAL_SEED, calibration, evaluate
from sim_envs.experts import make_expert

EPISODES = 3


class ExpertAgent:
    """The clean scripted expert behind the agent interface (it reads the simulator state of the env it is bound to)."""

    spec = SimpleNamespace(rgb_keys=(), low_dim_keys=("proprio", "object"), image_size=None, rgb=False)

    def __init__(self) -> None:
        self.expert, self.env, self.resets = None, None, 0

    def bind(self, env) -> None:
        self.env = env

    def reset_episode(self) -> None:
        self.resets += 1
        self.expert = make_expert(self.env.unwrapped, noise=0.0, rng=np.random.default_rng(0))

    def act(self, obs, deterministic=True):
        assert deterministic
        return self.expert.act(obs)


class StillAgent:
    """Never moves (and keeps the gripper as it is); records the train/eval mode it acts in."""

    spec = SimpleNamespace(rgb_keys=(), low_dim_keys=("proprio", "object"), image_size=None, rgb=False)

    def __init__(self) -> None:
        self.training, self.modes_seen = True, set()

    def bind(self, env) -> None:
        self.act_dim = env.action_space.shape[0]

    def train_mode(self, training: bool) -> None:
        self.training = training

    def act(self, obs, deterministic=True):
        self.modes_seen.add(self.training)
        return np.zeros(self.act_dim, np.float32)


def plain_loop(agent, n: int) -> dict:
    """The same episodes by hand: seeds 1_000_000 + i (fixed: every published evaluation used them), success if any
    step's info says so."""
    env = evaluation.make_env(Target("Reach"))
    agent.bind(env)
    out = {"success": [], "return": [], "length": []}
    try:
        for i in range(n):
            obs, _ = env.reset(seed=1_000_000 + i)  # the documented evaluation seeds (EVAL_SEED + i)
            if hasattr(agent, "reset_episode"):
                agent.reset_episode()
            ret, steps, success, done = 0.0, 0, False, False
            while not done:
                obs, r, term, trunc, info = env.step(agent.act(obs))
                ret, steps, success, done = ret + r, steps + 1, success or info["success"], term or trunc
            out["success"].append(success)
            out["return"].append(ret)
            out["length"].append(steps)
    finally:
        env.close()
    return {k: float(np.mean(v)) for k, v in out.items()}


def evaluate_bound(agent, monkeypatch, **kwargs) -> dict:
    real = evaluation.agent_env

    def bound_env(a, target, *args, **kwargs):
        env = real(a, target, *args, **kwargs)
        a.bind(env)
        return env

    monkeypatch.setattr(evaluation, "agent_env", bound_env)
    return evaluate(agent, Target("Reach"), EPISODES, **kwargs)


def test_the_scripted_expert_succeeds_in_every_episode(monkeypatch):
    agent = ExpertAgent()
    got = evaluate_bound(agent, monkeypatch)
    assert agent.resets == EPISODES
    assert got["success"] == 1.0 and got["successes"] == EPISODES and got["episodes"] == EPISODES
    assert 1 < got["length"] < 50  # it stops at success, well before Reach's 50-step limit
    assert got["return"] >= 1.0  # sparse reward: 1 at the successful step
    ref = plain_loop(ExpertAgent(), EPISODES)
    assert {k: got[k] for k in ref} == pytest.approx(ref)
    assert EVAL_SEED == 1_000_000


def test_a_policy_that_never_moves_never_succeeds(monkeypatch, tmp_path):
    agent, written = StillAgent(), []
    real_write = evaluation.write_gif
    monkeypatch.setattr(evaluation, "write_gif", lambda path, frames: written.append(frames) or real_write(path, frames))
    got = evaluate_bound(agent, monkeypatch, video_path=tmp_path / "ep0.gif")
    assert got["success"] == 0.0 and got["successes"] == 0 and got["episodes"] == EPISODES
    assert got["length"] == 50.0 and got["return"] == 0.0  # truncated at the time limit, no reward
    assert agent.modes_seen == {False} and agent.training  # acted in evaluation mode, left in training mode
    # the GIF of episode 0 only: its first observation and one frame per step, 128 px agentview
    assert (tmp_path / "ep0.gif").stat().st_size > 0 and len(written) == 1
    assert len(written[0]) == 51 and {f.shape for f in written[0]} == {(128, 128, 3)}
    with pytest.raises(ValueError, match="num_episodes"):
        evaluate(StillAgent(), Target("Reach"), 0)
    with pytest.raises(ValueError, match="blind evaluation needs an agent with cameras"):
        evaluate(StillAgent(), Target("Reach"), 1, blind="black")


class FixedQ:
    """Q(s, a) = s_0 + 2 a_0; the policy's action is s_1 (so every number below is known by hand)."""

    has_q = True

    def q_values(self, obs, actions):
        return obs[:, 0] + 2 * actions[:, 0]

    def act(self, obs, deterministic=True):
        assert deterministic
        return obs[:, 1:2].numpy()


def test_calibration_by_hand():
    batch = {"observations": torch.tensor([[1.0, 0.5], [3.0, -1.0]]), "actions": torch.tensor([[0.0], [1.0]]),
             "mc_returns": torch.tensor([2.0, 1.0])}
    got = calibration(FixedQ(), batch)
    q_data, q_pi, mc = (1.0 + 5.0) / 2, (2.0 + 1.0) / 2, 1.5  # Q(s, a_data) = [1, 5]; Q(s, pi(s)) = [2, 1]
    assert got == pytest.approx({"q_data": q_data, "q_policy": q_pi, "mc_return": mc, "gap_data": q_data - mc,
                                 "gap_policy": q_pi - mc})
    assert calibration(SimpleNamespace(has_q=False), batch) == {}


class SeedEnv(gym.Env):
    """Episodes of ``1 + seed % 3`` steps; no ``success`` in ``info``; ``render()`` gives a frame (or None)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, frame: bool = True) -> None:
        self.frame, self.seeds = frame, []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seeds.append(seed)
        self.t, self.horizon = 0, 1 + seed % 3
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t, np.float32), 0.5, False, self.t >= self.horizon, {}

    def render(self):
        return np.full((4, 4, 3), 7, np.uint8) if self.frame else None

    def render_camera(self, name, size):  # what a sim_envs env films with; not used for other families
        return np.zeros((size, size, 3), np.uint8)


def test_episodes_use_the_evaluation_seeds_and_film_the_first_episode_only():
    env, frames, agent = SeedEnv(), [], StillAgent()
    agent.bind(env)
    got = evaluation.run_episodes(agent, env, 3, eval_seed=10, frames=frames, frame_fn=lambda e, o: o.copy())
    assert env.seeds == [10, 11, 12]
    lengths = [1 + s % 3 for s in (10, 11, 12)]  # 2, 3, 1
    assert got == {"success": 0.0, "return": pytest.approx(np.mean([0.5 * n for n in lengths])),
                   "length": pytest.approx(np.mean(lengths)), "successes": 0, "episodes": 3}  # no success key: 0
    # episode 0 only: its first observation and the one after each of its 2 steps
    assert [float(f[0]) for f in frames] == [0.0, 1.0, 2.0]


def test_video_frames_of_targets_outside_sim_envs():
    target = Target(name="Toy", env_id="test_evaluation:SeedEnv", task_id=0)
    obs = {"front_image": np.full((5, 5, 3), 3, np.uint8)}
    assert evaluation.video_frame(SeedEnv(), obs, target, ["front_image"], size=None).tolist() == \
        obs["front_image"].tolist()
    frame = evaluation.video_frame(SeedEnv(), obs, target, [], size=None)  # no camera of the agent: the env's render
    assert frame.shape == (4, 4, 3) and frame.dtype == np.uint8 and (frame == 7).all()
    # by default a rollout video's frames are 128 px high, as sim_envs targets' (the agent's 32 px camera was the
    # pipeline report's GIF of a foreign target: a new user's finding)
    frame = evaluation.video_frame(SeedEnv(), obs, target, ["front_image"])
    assert frame.shape == (128, 128, 3) and (frame == 3).all()
    assert evaluation.video_frame(SeedEnv(), obs, target, []).shape == (128, 128, 3)
    with pytest.raises(ValueError, match="no camera to film"):
        evaluation.video_frame(SeedEnv(frame=False), obs, target, [])


class NoDisplayEnv(SeedEnv):
    """``render()`` fails as a headless renderer without a display does."""

    def render(self):
        raise RuntimeError("cannot open display")


def test_an_env_whose_render_fails_is_evaluated_without_a_video(tmp_path, monkeypatch, caplog):
    """env.render() raising (no display, pygame missing) stopped the evaluation with a traceback after its episodes
    had run; now: no video, one warning, the results."""
    target = Target(name="Toy", env_id="test_evaluation:SeedEnv", task_id=0)
    with pytest.raises(evaluation.NothingToFilm, match=r"env.render\(\) failed \(RuntimeError: cannot open display\)"):
        evaluation.video_frame(NoDisplayEnv(), {}, target, [])
    env, agent = NoDisplayEnv(), StillAgent()
    agent.bind(env)
    monkeypatch.setattr(evaluation, "agent_env", lambda *args: env)
    with caplog.at_level(logging.WARNING):
        got = evaluation.evaluate(agent, target, 3, video_path=tmp_path / "v.gif")
    assert got["episodes"] == 3 and env.seeds == [EVAL_SEED, EVAL_SEED + 1, EVAL_SEED + 2]
    assert not (tmp_path / "v.gif").exists() and caplog.text.count("cannot open display") == 1


def test_gif_frames_timing_and_loop(tmp_path):
    from PIL import Image

    frames = [np.full((6, 6, 3), 40 * k, np.uint8) for k in range(3)]
    path = evaluation.write_gif(tmp_path / "new" / "dir" / "a.gif", frames)
    evaluation.write_gif(path, frames)  # again into the existing folder (replaces it)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.info["duration"] == 50 and gif.info["loop"] == 0  # 20 fps, forever
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.gif"]  # no temporary file left
