"""Windows of K consecutive steps of one episode from an offline dataset, for sequence models (Decision Transformer).

:class:`SequenceSampler` wraps an :class:`~robopretrain.data.replay.OfflineDataset` (the same files and transforms as
every other algorithm). Episodes are the dataset's own (:attr:`OfflineDataset.episode_starts`: a file's demos, split
at terminals); for rows without them, as for the Monte-Carlo returns (:func:`robopretrain.data.returns.
episode_starts`): a terminal ends one, and so does a transition whose successor does not continue it
(``obs[t + 1] != next_obs[t]``: a time-out or the next demo).

``sample(B)`` draws B end steps ``e`` uniformly over all stored steps and returns the window ``[e - K + 1, e]`` of
e's episode; steps before the episode's start are padding (zeros, ``mask`` 0) at the *start* of the window, the form
the model sees while acting in the first K steps of an episode. Batch keys (tensors on the dataset's device):

    observations   dict of (B, K, ...) parts (as stored)        actions   (B, K, A)
    returns_to_go  (B, K) undiscounted sum of the episode's stored rewards from that step on (DT's R_t)
    timesteps      (B, K) int64 step index inside the episode   mask      (B, K) float32, 1 real / 0 padding

(CORL's DT draws a trajectory with probability proportional to its length and a uniform start inside it, so each
step is equally likely to *start* a window, and pads at the end; here each step is equally likely to *end* one.)
``state_dict`` holds the sampling RNG only, like the dataset's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from robopretrain.data.keys import ACTIONS, DONES, NEXT_OBS, OBS, REWARDS
from robopretrain.data.replay import OfflineDataset
from robopretrain.data.returns import episode_starts, returns_to_go

RETURNS_TO_GO = "returns_to_go"
TIMESTEPS = "timesteps"
MASK = "mask"


def _map(fn: Any, tree: Any) -> Any:
    return {k: fn(v) for k, v in tree.items()} if isinstance(tree, Mapping) else fn(tree)


class SequenceSampler:
    """K-step windows of an offline dataset (module docstring)."""

    def __init__(self, dataset: OfflineDataset, context_len: int, *, seed: int = 0) -> None:
        if int(context_len) < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        self.dataset, self.K = dataset, int(context_len)
        f = dataset.arrays()
        n = len(dataset)
        starts = getattr(dataset, "episode_starts", None)  # a file's demos; else from the rows' order
        if starts is None:
            starts = episode_starts(n, terminals=f[DONES], obs=f[OBS], next_obs=f[NEXT_OBS])
        first = np.flatnonzero(starts)
        self.episode_start = first[np.cumsum(starts) - 1]  # (N,) index of each step's episode start
        self.timesteps = np.arange(n) - self.episode_start
        self.rtg = returns_to_go(f[REWARDS], f[DONES], 1.0, episode_ids=np.cumsum(starts))
        self.num_episodes = len(first)
        self.episode_returns = self.rtg[first]  # (E,) each episode's undiscounted return (its first step's R)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def windows(self, ends: np.ndarray) -> dict[str, Any]:
        """The windows ending at steps ``ends`` ``(B,)`` as a batch (module docstring)."""
        ends = np.asarray(ends, dtype=np.int64)
        idx = ends[:, None] + np.arange(1 - self.K, 1)[None, :]  # (B, K)
        real = idx >= self.episode_start[ends][:, None]
        safe = np.where(real, idx, ends[:, None])
        f = self.dataset.arrays()

        def take(a: np.ndarray) -> np.ndarray:
            out = a[safe]
            out[~real] = 0
            return out

        batch = {OBS: _map(take, f[OBS]), ACTIONS: take(f[ACTIONS]), RETURNS_TO_GO: take(self.rtg),
                 TIMESTEPS: take(self.timesteps), MASK: real.astype(np.float32)}
        device = self.dataset.device
        return {k: _map(lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device), v) for k, v in batch.items()}

    def sample(self, batch_size: int) -> dict[str, Any]:
        return self.windows(self.rng.integers(0, len(self.dataset), size=batch_size))

    def state_dict(self) -> dict[str, Any]:
        return {"size": len(self.dataset), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["size"]) != len(self.dataset):
            raise ValueError(f"state is for a dataset of {state['size']} transitions, this one has "
                             f"{len(self.dataset)}")
        self.rng.bit_generator.state = dict(state["rng"])


__all__ = ["MASK", "RETURNS_TO_GO", "SequenceSampler", "TIMESTEPS"]
