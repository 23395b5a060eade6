"""Tiny deterministic gymnasium envs for the collector tests (only gymnasium and numpy: spawned workers import this)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


class CountEnv(gym.Env):
    """Observation = (reset seed, step t). Episode length 2 + seed % 4; it succeeds (reward 1, terminated) when the
    seed is even, else it is truncated."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.ep_seed, self.t = -1, 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"x": np.array([self.ep_seed, self.t], np.float32)}

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        self.ep_seed = -1 if seed is None else int(seed)  # unseeded resets are marked -1
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        end = self.t >= 2 + self.ep_seed % 4
        success = end and self.ep_seed % 2 == 0
        return self._obs(), float(success), success, end and not success, {"success": success}
