"""Policy evaluation on a target and Q-value calibration on stored data, for every agent.

* :func:`evaluate` runs ``agent.act(obs, deterministic=True)`` for N episodes of a
  :class:`~robopretrain.envs.target.Target`, its env rendering the agent's cameras at their size. Episode ``i`` is
  reset with seed ``eval_seed + i``: the same fixed evaluation seeds for every call and every method, far from the
  training seeds (:func:`train_episode_seed`), so evaluation episodes are never training episodes. Returns success
  rate, mean return and mean length; optionally writes the first episode as a GIF.
* :func:`calibration` measures the calibration gap on a batch of stored transitions: the average
  ``min_e Q(s, a_data)`` and ``min_e Q(s, pi(s))`` (deterministic policy action) next to the average Monte-Carlo
  return-to-go of the same transitions (in the algorithm's reward units).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from robopretrain.collector import EVAL_SEEDS_START, episode_seed
from robopretrain.data.keys import ACTIONS, MC_RETURNS, OBS
from robopretrain.envs.action_units import describe as describe_units
from robopretrain.envs.action_units import same_units
from robopretrain.envs.target import SIM_ENVS, Target, env_factory, make_env
from robopretrain.files import atomic_file

log = logging.getLogger(__name__)

EVAL_SEED = EVAL_SEEDS_START  # evaluation episodes use seeds EVAL_SEED + i; training seeds avoid [1e6, 2e6)


def train_episode_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode ``episode`` of a run with seed ``seed`` (disjoint from eval seeds)."""
    return episode_seed(seed, episode)


def agent_target(agent: Any, target: Target) -> Target:
    """``target`` taking the agent's actions in the agent's units: its ``action_normalization`` set from the agent's
    when the agent has one (from the data it trained on). A target's own setting stands for an agent without one
    (data rescaled outside the toolkit); both set and different is a ``ValueError`` naming both."""
    mine = getattr(agent, "action_normalization", None)
    if mine is None:
        return target
    theirs = target.action_units
    if theirs is None:
        return dataclasses.replace(target, action_normalization=mine.to_dict())
    if not same_units(theirs, mine):
        raise ValueError(f"target {target.name!r}: action_normalization {describe_units(theirs)} differs from the "
                         f"agent's {describe_units(mine)} (from the data it was trained on); drop the target's "
                         "setting to use the agent's")
    return target


def acting_units(agent_units: Any, targets: Sequence[Target]) -> Any:
    """The units of the agent's ``[-1, 1]`` actions where it acts on ``targets`` (what :func:`agent_target` maps
    them through): its own (``agent_units``, from its stage-2 data) when set, else the targets'
    ``action_normalization`` when every one declares the same (data rescaled outside the toolkit), else None (each
    env's own units)."""
    if agent_units is not None:
        return agent_units
    declared = [t.action_units for t in targets]
    if declared and all(u is not None and same_units(u, declared[0]) for u in declared):
        return declared[0]
    return None


def demo_action_units(agent_units: Any, targets: Sequence[Target], path: Any, info: Any) -> Any:
    """The units to read a target's demo file ``path`` (``info``: its ``read_info``) in, for an agent that acts on
    ``targets``: the agent's own when it has them; else, where the targets declare units (:func:`acting_units`),
    those for a file that records a rescaling (re-expressed from it) or whose actions leave ``[-1, 1]`` (the
    robot's units), and None (as stored) for a file in ``[-1, 1]`` without a record (rescaled outside the toolkit by
    those very units, as the agent's own data was). Read in the agent's None, a file recording the target's units
    was mapped back to the robot's and clipped, teaching actions its env runs otherwise (a new user's finding)."""
    if agent_units is not None:
        return agent_units
    units = acting_units(None, targets)
    if units is None:
        return None
    from robopretrain.data.dataset import file_action_units
    from robopretrain.data.hdf5 import action_bounds
    from robopretrain.envs.action_units import auto_bounds

    if file_action_units(info) is not None or auto_bounds(*action_bounds(path, info)) is not None:
        return units
    return None


DEMO_UNITS = "demo actions read in the target's declared units"  # a run fingerprint's derived entry


def demo_units_entry(agent_units: Any, units: Any) -> str | None:
    """A run fingerprint's :data:`DEMO_UNITS` entry: the target's declared units a run reads its demos in
    (``units``: :func:`demo_action_units`' answer) where the agent has none of its own, else None (the agent's
    units, as runs did before targets' units were read). A run started while demos were read in the agent's units
    and resumed after, or one whose target declares other units since, is refused rather than trained on actions
    read two ways (a review's finding)."""
    from robopretrain.envs.action_units import describe

    return describe(units) if agent_units is None and units is not None else None


def agent_env(agent: Any, target: Target, randomization: Any = "none", **sim_kwargs: Any) -> gym.Env:
    """The env of ``target`` rendering exactly the cameras the agent sees, at their size, taking actions in the
    agent's units (:func:`agent_target`)."""
    return make_env(agent_target(agent, target), agent.spec.rgb_keys, agent.spec.image_size, randomization,
                    checked=agent.spec.low_dim_keys, **sim_kwargs)


def agent_env_factory(agent: Any, target: Target, randomization: Any = "none") -> Any:
    """A picklable zero-argument factory of :func:`agent_env` (what a vector collector's workers call)."""
    return env_factory(agent_target(agent, target), agent.spec.rgb_keys, agent.spec.image_size, randomization,
                       checked=agent.spec.low_dim_keys)


def _episode_reset(agent: Any) -> Callable[[], None] | None:
    """``agent.reset_episode`` told that this loop resets at every episode's start (``managed=True``, so a long
    episode is not taken for a forgotten reset) when it takes that argument; an agent of one's own without it as it
    is; None for an agent without a history."""
    reset = getattr(agent, "reset_episode", None)
    if reset is None:
        return None
    try:
        managed = "managed" in inspect.signature(reset).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        managed = False
    return functools.partial(reset, managed=True) if managed else reset


def run_episodes(agent: Any, env: gym.Env, num_episodes: int, *, eval_seed: int = EVAL_SEED,
                 frames: list[np.ndarray] | None = None, frame_fn: Any = None) -> dict[str, float]:
    """Success rate, mean return and mean length of the deterministic policy in ``env``, and the counts
    (``successes``, ``episodes``) for intervals; with ``frames`` the first episode's frames (``frame_fn(env, obs)``)
    are appended to it."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    successes, returns, lengths = [], [], []
    # a policy with a history (the Decision Transformer) is told where episodes start and what each step earned
    reset_episode = _episode_reset(agent)
    observe_reward = getattr(agent, "observe_reward", None)
    for i in range(num_episodes):
        obs, _ = env.reset(seed=eval_seed + i)
        if reset_episode is not None:
            reset_episode()
        done, ret, length, success = False, 0.0, 0, False
        while not done:
            if frames is not None and i == 0:
                frames.append(frame_fn(env, obs))
            action = agent.act(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
            if observe_reward is not None:
                observe_reward(float(reward))
            ret += float(reward)
            length += 1
            success = success or bool(info.get("success", False))
            done = terminated or truncated
        if frames is not None and i == 0:
            frames.append(frame_fn(env, obs))
        successes.append(success)
        returns.append(ret)
        lengths.append(length)
    return {"success": float(np.mean(successes)), "return": float(np.mean(returns)), "length": float(np.mean(lengths)),
            "successes": int(np.sum(successes)), "episodes": len(successes)}


def evaluate(agent: Any, target: Target, num_episodes: int, *, randomization: Any = "none",
             eval_seed: int = EVAL_SEED, video_path: Path | None = None, blind: str | None = None) -> dict[str, float]:
    """:func:`run_episodes` of ``agent`` on ``target`` (a fresh env, closed after); a GIF of episode 0 when asked.

    ``blind`` (``black`` or ``other_episode``) replaces the agent's camera frames by black frames or by the first
    frame of another episode (:class:`sim_envs.wrappers.BlindCamera`) on the same episodes: the ablation that says
    whether a policy uses vision.
    """
    env = agent_env(agent, target, randomization)
    if blind is not None:
        from sim_envs.wrappers import BlindCamera

        if not agent.spec.rgb:
            raise ValueError("blind evaluation needs an agent with cameras")
        env = BlindCamera(env, mode=blind, keys=agent.spec.rgb_keys)
    train_mode = getattr(agent, "train_mode", None)
    if train_mode is not None:
        train_mode(False)
    frames: list[np.ndarray] | None = [] if video_path is not None else None
    unfilmed: list[str] = []  # why no video (said once): the episodes go on without one

    def frame_or_none(e: gym.Env, o: Mapping[str, Any]) -> np.ndarray | None:
        if unfilmed:
            return None
        try:
            return video_frame(e, o, target, agent.spec.rgb_keys)
        except NothingToFilm as exc:
            unfilmed.append(str(exc))
            log.warning("no video %s: %s", video_path, exc)
            return None

    try:
        result = run_episodes(agent, env, num_episodes, eval_seed=eval_seed, frames=frames, frame_fn=frame_or_none)
    finally:
        env.close()
        if train_mode is not None:
            train_mode(True)
    if video_path is not None and frames and not unfilmed:
        write_gif(video_path, frames)
    return result


class NothingToFilm(ValueError):
    """The agent has no camera and the env renders nothing: no video can be made."""


VIDEO_SIZE = 128  # px: the height of a rollout video's frames


def video_frame(env: gym.Env, obs: Mapping[str, Any], target: Target, cameras: Sequence[str],
                size: int | None = VIDEO_SIZE) -> np.ndarray:
    """A ``size`` px agentview frame for sim_envs targets (rendered at that size), else the agent's first camera (or
    the env's render) resized to ``size`` px high (:func:`video_size_frame`; None: as it is: a foreign target's
    rollout GIF was the agent's 32 px camera, where sim_envs targets get 128 px, a new user's finding); raises
    :class:`NothingToFilm` when there is none."""
    render = getattr(env.unwrapped, "render_camera", None)
    if target.family == SIM_ENVS and render is not None:
        return np.asarray(render("agentview", size=size or VIDEO_SIZE), dtype=np.uint8)
    if cameras:
        return _sized(np.asarray(obs[cameras[0]], dtype=np.uint8), size)
    try:
        frame = env.render()
    except NotImplementedError:  # gymnasium's default for an env without rendering
        frame = None
    except Exception as exc:  # noqa: BLE001 - the env's own render (no display, a missing pygame): no video only
        raise NothingToFilm(f"target {target.name!r}: env.render() failed ({type(exc).__name__}: {exc}); the "
                            "episodes are evaluated without a video (video.enabled=false says so quietly)") from None
    if frame is None:
        raise NothingToFilm(f"target {target.name!r}: no camera to film (the agent has none and env.render() gives "
                            "nothing: a gymnasium env renders frames only when made with render_mode='rgb_array', "
                            "the target's env_kwargs: {render_mode: rgb_array}); or disable the video")
    return _sized(np.asarray(frame, dtype=np.uint8), size)


def _sized(frame: np.ndarray, size: int | None) -> np.ndarray:
    """``frame`` through :func:`video_size_frame` at ``size`` (None: unchanged)."""
    return frame if size is None else video_size_frame(frame, int(size))


def video_size_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """``frame`` (H, W, 3) uint8 resized to ``size`` px high, the width scaled alike and rounded to an even number
    (what H.264 needs); bilinear. Returned unchanged when it already has that height."""
    from PIL import Image

    h, w = frame.shape[:2]
    if h == size:
        return frame
    width = max(2, 2 * round(w * size / h / 2))
    return np.asarray(Image.fromarray(frame).resize((width, size), Image.BILINEAR))


def write_gif(path: Path, frames: Sequence[np.ndarray], fps: float = 20.0) -> Path:
    """An animated GIF of uint8 (H, W, 3) frames, written atomically."""
    from PIL import Image

    path = Path(path)
    images = [Image.fromarray(f) for f in frames]
    with atomic_file(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


@torch.no_grad()
def calibration(agent: Any, batch: Mapping[str, Any]) -> dict[str, float]:
    """Average Q on data actions and on policy actions at the batch's states, and their average MC return.

    ``gap_policy = q_policy - mc_return``: negative means the Q-function under-estimates the value of the
    behaviour data (CQL's over-conservatism); Cal-QL keeps it at or above 0. Agents without Q-functions (BC)
    return an empty dict.
    """
    if not getattr(agent, "has_q", False):
        return {}
    obs = batch[OBS]
    q_data = agent.q_values(obs, batch[ACTIONS])
    pi = torch.as_tensor(agent.act(obs, deterministic=True), dtype=torch.float32)
    q_pi = agent.q_values(obs, pi)
    mc = batch[MC_RETURNS].float().to(q_pi.device)
    return {"q_data": float(q_data.mean()), "q_policy": float(q_pi.mean()), "mc_return": float(mc.mean()),
            "gap_data": float((q_data - mc).mean()), "gap_policy": float((q_pi - mc).mean())}


__all__ = ["DEMO_UNITS", "EVAL_SEED", "NothingToFilm", "acting_units", "agent_env", "agent_env_factory",
           "agent_target", "calibration", "demo_action_units", "demo_units_entry", "evaluate", "run_episodes",
           "train_episode_seed", "VIDEO_SIZE", "video_frame", "video_size_frame", "write_gif"]
