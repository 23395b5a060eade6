"""Policy evaluation in simulation and Q-value calibration on stored data.

* :func:`evaluate_policy` runs ``agent.act(obs, deterministic=True)`` for N episodes of one task. Episode
  ``i`` is reset with seed ``eval_seed + i``: the same fixed evaluation seeds for every call and every
  method, far from the training seeds (:func:`train_episode_seed`), so evaluation episodes are never
  training episodes. Returns success rate, mean return and mean length.
* :func:`state_vector` builds the state-based observation exactly as the training data does: the chosen
  low-dim keys concatenated (:func:`robopretrain.data.replay.flatten_obs`) plus the task one-hot
  (:func:`robopretrain.data.replay.append_task_one_hot`).
* :func:`calibration` measures the calibration gap on a batch of stored transitions: the average
  ``min_e Q(s, a_data)`` and ``min_e Q(s, pi(s))`` (deterministic policy action) next to the average
  Monte-Carlo return-to-go of the same transitions (in the algorithm's reward units).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from robopretrain.collector import sim_env
from robopretrain.data.replay import append_task_one_hot, flatten_obs

EVAL_SEED = 1_000_000  # evaluation episodes use seeds EVAL_SEED + i; training seeds stay far below it


def train_episode_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode ``episode`` of a run with seed ``seed`` (disjoint from eval seeds)."""
    return int(seed) * 100_000 + int(episode)


def state_vector(obs: Mapping[str, Any], obs_keys: Sequence[str], num_tasks: int | None) -> np.ndarray:
    """Flat float32 state: ``obs_keys`` concatenated, plus the one-hot of ``obs["task_id"]`` when ``num_tasks``."""
    flat = flatten_obs(obs, obs_keys)
    if num_tasks:
        flat = append_task_one_hot(flat, int(obs["task_id"]), num_tasks)
    return np.asarray(flat, dtype=np.float32)


# a state-only env of a task, terminating on success: one definition, in the torch-free collector module
make_state_env = sim_env


def evaluate_policy(
    agent: Any,
    task: str,
    num_episodes: int,
    *,
    obs_keys: Sequence[str],
    num_tasks: int | None,
    randomization: Any = "none",
    eval_seed: int = EVAL_SEED,
    env: gym.Env | None = None,
) -> dict[str, float]:
    """Success rate, mean return and mean length of the deterministic policy over ``num_episodes`` episodes."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    own_env = env is None
    env = make_state_env(task, randomization) if own_env else env
    successes, returns, lengths = [], [], []
    try:
        for i in range(num_episodes):
            obs, _ = env.reset(seed=eval_seed + i)
            done, ret, length, success = False, 0.0, 0, False
            while not done:
                action = agent.act(state_vector(obs, obs_keys, num_tasks), deterministic=True)
                obs, reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
                ret += float(reward)
                length += 1
                success = success or bool(info.get("success", False))
                done = terminated or truncated
            successes.append(success)
            returns.append(ret)
            lengths.append(length)
    finally:
        if own_env:
            env.close()
    return {"success": float(np.mean(successes)), "return": float(np.mean(returns)), "length": float(np.mean(lengths))}


@torch.no_grad()
def calibration(agent: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Average Q on data actions and on policy actions at the batch's states, and their average MC return.

    ``gap_policy = q_policy - mc_return``: negative means the Q-function under-estimates the value of the
    behaviour data (CQL's over-conservatism); Cal-QL keeps it at or above 0. Agents without Q-functions
    (BC) return an empty dict.
    """
    if not hasattr(agent, "q_values"):
        return {}
    obs = batch["observations"]
    q_data = agent.q_values(obs, batch["actions"])
    pi = torch.as_tensor(agent.act(obs, deterministic=True), dtype=obs.dtype, device=obs.device)
    q_pi = agent.q_values(obs, pi)
    mc = batch["mc_returns"].float()
    return {
        "q_data": float(q_data.mean()),
        "q_policy": float(q_pi.mean()),
        "mc_return": float(mc.mean()),
        "gap_data": float((q_data - mc).mean()),
        "gap_policy": float((q_pi - mc).mean()),
    }
