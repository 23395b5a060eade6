"""A 3-D reach that ends by closing a gripper: the env of ``benchmarks/binary_actions.py`` (protocol:
``benchmarks/protocols/binary_actions.md``).

Observation (a plain vector of 7): end-effector position (3), goal (3), gripper opening (1: +1 open, -1 closed).
Action in ``[-1, 1]^4``: the position's change per step in units of ``STEP`` metres (3), and the gripper command,
added to the opening (clipped to ``[-1, 1]``), so a command of -1 closes an open gripper in two steps. Start and goal
uniform in ``[-0.4, 0.4]^3``, at least 0.3 apart, the gripper open. Success: within ``SUCCESS_RADIUS`` of the goal
with the opening below -0.5 (``info["success"]``); reward ``-distance`` (the toolkit's target makes it the sparse
success reward); never terminates by itself.

The scripted expert moves straight to the goal at full speed and commands the gripper +1 (open) until it is within
``CLOSE_RADIUS`` of the goal, then -1: its gripper actions take only the two values +-1, as most real grippers' do.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

STEP = 0.05  # metres per unit of the position command
SUCCESS_RADIUS = 0.05
CLOSE_RADIUS = 0.08  # the expert's gripper closes inside this distance
LIMIT = 0.5  # the workspace's half-width


class GripReach(gym.Env):
    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (7,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.pos, self.goal, self.opening = np.zeros(3), np.zeros(3), 1.0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal, [self.opening]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.4, 0.4, 3)
        self.goal = self.np_random.uniform(-0.4, 0.4, 3)
        while np.linalg.norm(self.goal - self.pos) < 0.3:
            self.goal = self.np_random.uniform(-0.4, 0.4, 3)
        self.opening = 1.0
        return self._obs(), {"success": False}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        self.pos = np.clip(self.pos + STEP * a[:3], -LIMIT, LIMIT)
        self.opening = float(np.clip(self.opening + a[3], -1.0, 1.0))
        dist = float(np.linalg.norm(self.goal - self.pos))
        return self._obs(), -dist, False, False, {"success": dist < SUCCESS_RADIUS and self.opening < -0.5}


def expert(obs: np.ndarray) -> np.ndarray:
    """Straight to the goal at full speed; the gripper commanded +1 until within ``CLOSE_RADIUS``, then -1."""
    obs = np.asarray(obs, np.float64)
    delta = obs[3:6] - obs[:3]
    grip = -1.0 if np.linalg.norm(delta) < CLOSE_RADIUS else 1.0
    return np.concatenate([np.clip(delta / STEP, -1.0, 1.0), [grip]]).astype(np.float32)


def write_demos(path: Any, episodes: int = 100, max_steps: int = 50) -> Any:
    """A D4RL-style HDF5 of :func:`expert` episodes (seeds 0 .. episodes - 1): sparse reward 1 and a terminal on the
    success step. Returns ``path``."""
    from bench_utils import write_expert_demos

    return write_expert_demos(GripReach(), expert, path, episodes, max_steps)


def goal_states(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 7)`` observations at the goal (within 0.01 of it on each axis) with the gripper open: where the
    expert's next actions close the gripper, and where a policy that reached the goal must close it to succeed."""
    rng = np.random.default_rng(seed)
    goal = rng.uniform(-0.4, 0.4, (count, 3))
    pos = goal + rng.uniform(-0.01, 0.01, (count, 3))
    return np.concatenate([pos, goal, np.ones((count, 1))], axis=1).astype(np.float32)
