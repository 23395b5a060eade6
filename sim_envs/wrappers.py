"""Gymnasium wrappers for sim_envs: the blind-camera ablation.

``BlindCamera`` takes the sight out of a policy's camera input while leaving everything else (state keys,
rewards, the episode itself) untouched, so "sighted minus blind" measures how much a policy uses vision:

- ``mode="black"``: every image is all zeros;
- ``mode="other_episode"``: every image is the first frame of another episode (the same env reset with
  another seed): a real-looking picture of the wrong scene, which carries nothing about this episode.

A task needs vision when a good policy's success drops to chance (<= 0.1 for the sim_envs targets) under
either mode. Works on any gymnasium env with dict observations; images are the ``Dict`` space's keys ending in ``_image``
unless ``keys`` names them (then checked on each observation)::

    env = BlindCamera(gym.make("sim_envs/PressLitButton-v0", image_size=64), mode="black")
"""
from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

BLIND_MODES = ("black", "other_episode")
# The donor episode of reset(seed=s) in "other_episode" mode is reset with seed s + DONOR_OFFSET.
DONOR_OFFSET = 1_000_003


class BlindCamera(gym.Wrapper):
    """Replace the camera images of every observation by black frames or by a frame of another episode."""

    def __init__(self, env: gym.Env, mode: str = "black", keys: Sequence[str] | None = None) -> None:
        super().__init__(env)
        if mode not in BLIND_MODES:
            raise ValueError(f"BlindCamera: mode={mode!r}; expected one of {BLIND_MODES}")
        space = env.observation_space
        if keys is None:  # the images of the observation space
            if not isinstance(space, spaces.Dict):
                raise TypeError(f"BlindCamera needs a Dict observation space (or keys), got {type(space).__name__}")
            chosen = [k for k in space.spaces if k.endswith("_image")]
            if not chosen:
                raise ValueError(f"BlindCamera: the observation space has no image keys (*_image): "
                                 f"{sorted(space.spaces)}")
        else:  # named keys, checked on the first observation (wrapped envs may rename their space's keys)
            chosen = list(keys)
            if not chosen:
                raise ValueError("BlindCamera: keys is empty; name the camera keys to blind")
        self.mode = mode
        self.keys = tuple(chosen)
        self._frames: dict[str, np.ndarray] = {}
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self.mode == "black":
            obs, info = self.env.reset(seed=seed, options=options)
            self._frames = {k: np.zeros_like(obs[k]) for k in self.keys if k in obs}
            return self._blind(obs), info
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        # The donor episode: the same env reset with another seed; only its first frame is kept.
        donor_seed = (seed + DONOR_OFFSET) if seed is not None else int(self._rng.integers(2**31))
        donor, _ = self.env.reset(seed=donor_seed, options=options)
        self._frames = {k: np.array(donor[k], copy=True) for k in self.keys if k in donor}
        episode_seed = seed if seed is not None else int(self._rng.integers(2**31))
        obs, info = self.env.reset(seed=episode_seed, options=options)
        return self._blind(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._blind(obs), reward, terminated, truncated, info

    def _blind(self, obs: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"BlindCamera: keys {missing} are not in the observation (it has {sorted(obs)})")
        out = dict(obs)
        for k in self.keys:
            out[k] = self._frames[k].copy()
        return out
