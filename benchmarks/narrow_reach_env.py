"""A 2-D point reach whose actions live in a narrow box inside ``[-1, 1]``: the env of
``benchmarks/action_bounds.py`` (protocol: ``benchmarks/protocols/action_bounds.md``).

Observation (a plain vector): position (2), goal (2). Action: the position's change per step, in ``[-0.05, 0.05]^2``
(clipped there, as a delta controller in metres would be). Start and goal uniform in ``[-0.3, 0.3]^2``, at least 0.15
apart; success within 0.02 of the goal (``info["success"]``); reward ``-distance`` (the toolkit's target makes it
the sparse success reward); never terminates by itself."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

LIMIT = 0.05  # the action box's half-width
SUCCESS_RADIUS = 0.02


class NarrowReach(gym.Env):
    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = gym.spaces.Box(-LIMIT, LIMIT, (2,), np.float32)
        self.pos, self.goal = np.zeros(2), np.zeros(2)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.3, 0.3, 2)
        self.goal = self.np_random.uniform(-0.3, 0.3, 2)
        while np.linalg.norm(self.goal - self.pos) < 0.15:
            self.goal = self.np_random.uniform(-0.3, 0.3, 2)
        return self._obs(), {"success": False}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.pos = self.pos + np.clip(np.asarray(action, np.float64), -LIMIT, LIMIT)
        dist = float(np.linalg.norm(self.goal - self.pos))
        return self._obs(), -dist, False, False, {"success": dist < SUCCESS_RADIUS}


def expert(obs: np.ndarray) -> np.ndarray:
    """Straight to the goal at full speed, the last step exact."""
    obs = np.asarray(obs, np.float64)
    return np.clip(obs[2:4] - obs[:2], -LIMIT, LIMIT).astype(np.float32)


def write_demos(path: Any, episodes: int = 100, max_steps: int = 40) -> Any:
    """A D4RL-style HDF5 of :func:`expert` episodes (seeds 0 .. episodes - 1): sparse reward 1 and a terminal on the
    success step. Returns ``path``."""
    from bench_utils import write_expert_demos

    return write_expert_demos(NarrowReach(), expert, path, episodes, max_steps)
