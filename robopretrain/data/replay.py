"""Offline transition dataset, online replay buffer, and the offline/online mixed sampler.

Follows REFERENCE.md, Stage 3 (Cal-QL online fine-tuning):

* every transition carries its Monte-Carlo return-to-go ``mc_returns`` (the Cal-QL lower bound V_mu(s));
  the online buffer computes it for each episode when the episode ends and keeps calibration on online
  (as the official code does; the CORL port stores 0 instead, a known deviation we do not copy);
* each batch mixes offline and online data: exactly ``round(offline_ratio * batch_size)`` rows come from
  the offline dataset and the rest from the online buffer (0.5 by default). While the online buffer is
  still empty the whole batch is offline. Python's ``round`` is used (ties go to the even number).

Rewards are stored as given: the caller applies the algorithm's reward scale/bias first (see
:mod:`robopretrain.data.returns`; :func:`robopretrain.data.dataset.load_offline_dataset` does it for files,
:meth:`OfflineDataset.from_transitions` for transitions held in memory).
Observations are dicts of named parts (:mod:`robopretrain.data.spec`: low-dim float32, images uint8, the int64
``task_id``) or plain arrays.

Batches are dicts with the keys of :data:`robopretrain.data.keys.BATCH_KEYS` holding torch tensors on the buffer's device
(``observations``/``next_observations`` are dicts of tensors for dict observations). Storage is
preallocated numpy; indices come from one ``np.random.Generator`` per buffer. ``state_dict()`` returns
only tensors, ints and strings, so it can be saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from robopretrain.data.keys import NEXT_ACTIONS, OBS_FIELDS, TASK_ID
from robopretrain.data.returns import (episode_returns_to_go, next_actions_of, returns_to_go, scale_rewards,
                                       sparse_negative_reward, unrewarded_successes)
from robopretrain.data.returns import episode_starts as find_episode_starts

if TYPE_CHECKING:
    from robopretrain.data.hdf5 import Transitions

Obs = Union[np.ndarray, Mapping[str, np.ndarray]]
TensorTree = Union[torch.Tensor, dict[str, torch.Tensor]]
Batch = dict[str, TensorTree]
ObsSpec = Union[int, Sequence[int], Mapping[str, tuple[Sequence[int], Any]]]


# --------------------------------------------------------------------------- array trees (array or dict)


def _tree_map(fn, tree):
    if isinstance(tree, Mapping):
        return {k: fn(v) for k, v in tree.items()}
    return fn(tree)


def _tree_len(tree) -> int:
    if isinstance(tree, Mapping):
        lens = {len(v) for v in tree.values()}
        if len(lens) != 1:
            raise ValueError(f"all observation keys must have the same length, got {sorted(lens)}")
        return lens.pop()
    return len(tree)


def _as_storage(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    return np.ascontiguousarray(a if a.dtype == np.uint8 else a.astype(np.float32, copy=False))


def _obs_storage(tree: Obs) -> Obs:
    """An observation tree as stored: ``task_id`` int64 (as :meth:`ObsSpec.storage` and the online buffer keep it),
    cameras uint8, the rest float32."""
    if isinstance(tree, Mapping):
        return {k: (np.ascontiguousarray(np.asarray(v), dtype=np.int64) if k == TASK_ID else _as_storage(v))
                for k, v in tree.items()}
    return _as_storage(tree)


def _to_torch(tree, device: torch.device):
    return _tree_map(lambda a: torch.from_numpy(a).to(device, non_blocking=True), tree)


def _cat_trees(a: TensorTree, b: TensorTree) -> TensorTree:
    if isinstance(a, Mapping):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


def concat_batches(first: Batch, second: Batch) -> Batch:
    """Concatenate two batches with the same keys along the batch dimension."""
    if set(first) != set(second):
        raise ValueError(f"batches have different keys: {sorted(first)} vs {sorted(second)}")
    return {k: _cat_trees(first[k], second[k]) for k in first}


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def _set_rng_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    rng.bit_generator.state = dict(state)


# --------------------------------------------------------------------------- offline dataset


class OfflineDataset:
    """A fixed set of transitions; ``sample(n)`` draws ``n`` uniform indices with replacement."""

    def __init__(
        self,
        observations: Obs,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_observations: Obs,
        dones: np.ndarray,
        mc_returns: np.ndarray | None = None,
        *,
        next_actions: np.ndarray | None = None,
        episode_starts: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        """``episode_starts``: bool ``(N,)``, True at each episode's first row (a file's demos; None: from the rows'
        order, a step continuing the previous one where ``observations[t + 1] == next_observations[t]`` and it is not
        terminal; :func:`~robopretrain.data.returns.episode_starts`). ``next_actions``: the data's action at ``s'``
        (None: from ``episode_starts``; :func:`~robopretrain.data.returns.next_actions_of`)."""
        n = len(actions)
        fields = {
            "observations": _obs_storage(observations),
            "actions": _as_storage(actions),
            "rewards": _as_storage(np.reshape(rewards, (n,))),
            "next_observations": _obs_storage(next_observations),
            "dones": _as_storage(np.reshape(dones, (n,))),
        }
        if mc_returns is not None:  # without them batches carry no "mc_returns" and Cal-QL refuses them
            fields["mc_returns"] = _as_storage(np.reshape(mc_returns, (n,)))
        for k in OBS_FIELDS:
            if _tree_len(fields[k]) != n:
                raise ValueError(f"{k} has {_tree_len(fields[k])} rows but actions have {n}")
        if n == 0:
            raise ValueError("an offline dataset needs at least one transition")
        if episode_starts is None:
            episode_starts = find_episode_starts(n, terminals=fields["dones"], obs=fields["observations"],
                                                 next_obs=fields["next_observations"])
        episode_starts = np.asarray(episode_starts, dtype=bool).reshape(-1)
        if episode_starts.shape != (n,) or not episode_starts[0]:
            raise ValueError(f"episode_starts must be a bool ({n},) array starting with True, got "
                             f"{episode_starts.shape}")
        self.episode_starts = episode_starts
        if next_actions is None:
            next_actions = next_actions_of(fields["actions"], episode_starts)
        if np.shape(next_actions) != np.shape(fields["actions"]):
            raise ValueError(f"next_actions {np.shape(next_actions)} must have the shape of actions "
                             f"{np.shape(fields['actions'])}")
        fields[NEXT_ACTIONS] = _as_storage(next_actions)
        self._fields = fields
        self.size = n
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_transitions(
        cls,
        transitions: Transitions,
        *,
        gamma: float,
        reward_scale: float = 1.0,
        reward_bias: float = 0.0,
        sparse_reward: bool = True,
        flat_obs_keys: Sequence[str] | None = None,
        num_tasks: int | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> OfflineDataset:
        """A dataset of transitions held in memory (:class:`~robopretrain.data.hdf5.Transitions`, e.g. from
        :func:`~robopretrain.data.hdf5.load_transitions`), prepared as
        :func:`~robopretrain.data.dataset.load_offline_dataset` prepares a file's demos.

        Rewards become ``r * reward_scale + reward_bias`` (Cal-QL: x10 - 5); ``mc_returns`` are the Monte-Carlo
        returns-to-go with discount ``gamma`` (episodes are ``episode_ids``' runs, cut at terminals: a ``next_obs[t]``
        that differs from ``obs[t + 1]`` inside an episode does not split it; with
        ``sparse_reward`` an episode that never succeeds gets ``(0 * scale + bias) / (1 - gamma)`` at every step);
        ``next_actions`` the data's next action within an episode. Observations are dicts of the parts
        ``flat_obs_keys`` (None: every part of ``transitions.obs``), the low-dim vectors an agent's observation encoder
        normalises and concatenates, plus, with ``num_tasks``, the int64 part ``task_id`` from
        ``transitions.task_ids`` (the agent's one-hot). Warns (``UserWarning``) when the rewards carry no success
        signal although ``ep_meta`` marks successes (a file with such rewards is refused by the file loader unless
        ``rewards_from_success``). Raises KeyError for a part ``transitions`` lacks, ValueError for task ids outside
        ``[0, num_tasks)``.
        """
        keys = list(transitions.obs) if flat_obs_keys is None else [str(k) for k in flat_obs_keys]
        missing = [k for k in keys if k not in transitions.obs or k not in transitions.next_obs]
        if missing:
            raise KeyError(f"from_transitions: the transitions have no observation part(s) {missing}; they have "
                           f"{sorted(transitions.obs)}")
        n_success = unrewarded_successes(transitions.rewards, transitions.ep_meta)
        if n_success:
            warnings.warn(f"{transitions.path}: no positive reward in the transitions although {n_success} of "
                          f"{len(transitions.ep_meta)} episodes are marked successful in ep_meta (a recorder that "
                          "never wrote the success reward?); sparse-reward RL sees no success at all: every "
                          "return-to-go is the all-failure value", UserWarning, stacklevel=2)

        def parts(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = {k: obs[k] for k in keys}
            if num_tasks is not None:
                out[TASK_ID] = np.asarray(transitions.task_ids, dtype=np.int64)
            return out

        ids = np.asarray(transitions.task_ids)
        if num_tasks is not None and len(ids) and (ids.min() < 0 or ids.max() >= int(num_tasks)):
            raise ValueError(f"from_transitions: task ids {sorted(set(ids.tolist()))} do not fit a task one-hot of "
                             f"size num_tasks={num_tasks}")
        rewards = scale_rewards(transitions.rewards, reward_scale, reward_bias)
        dones = np.asarray(transitions.dones, dtype=np.float32)
        mc = returns_to_go(rewards, dones, gamma, episode_ids=transitions.episode_ids, obs=transitions.obs,
                           next_obs=transitions.next_obs,
                           sparse_negative_reward=sparse_negative_reward(reward_scale, reward_bias)
                           if sparse_reward else None)
        starts = find_episode_starts(len(rewards), episode_ids=transitions.episode_ids, terminals=dones)
        return cls(parts(transitions.obs), transitions.actions, rewards, parts(transitions.next_obs), dones, mc,
                   next_actions=next_actions_of(transitions.actions, starts), episode_starts=starts, device=device,
                   seed=seed)

    def __len__(self) -> int:
        return self.size

    def arrays(self) -> dict[str, Any]:
        """The stored numpy arrays (read-only use)."""
        return self._fields

    def get(self, idx: np.ndarray) -> Batch:
        """The transitions at integer indices ``idx`` as a batch of tensors on ``self.device``."""
        return {k: _to_torch(_tree_map(lambda a: a[idx], v), self.device) for k, v in self._fields.items()}

    def sample(self, batch_size: int) -> Batch:
        return self.get(self.rng.integers(0, self.size, size=batch_size))

    def map_observations(self, fn: Any, seed: int | None = None) -> OfflineDataset:
        """The same transitions with ``fn`` applied to the observations and next observations (e.g. an agent's
        :meth:`~robopretrain.agent.Agent.prepare`: frozen features in place of images); a new sampling RNG."""
        f = self._fields
        return OfflineDataset(fn(f["observations"]), f["actions"], f["rewards"], fn(f["next_observations"]),
                              f["dones"], f.get("mc_returns"), next_actions=f[NEXT_ACTIONS],
                              episode_starts=self.episode_starts, device=self.device,
                              seed=int(self.rng.integers(2**31)) if seed is None else seed)

    def state_dict(self) -> dict[str, Any]:
        """The sampling RNG state (the data itself is reloaded from its source file)."""
        return {"size": self.size, "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"state is for a dataset of {state['size']} transitions, this one has {self.size}")
        _set_rng_state(self.rng, state["rng"])


# --------------------------------------------------------------------------- online replay buffer


def _normalise_spec(obs_spec: ObsSpec) -> Any:
    """``(shape, dtype)`` for a flat spec, or ``{key: (shape, dtype)}`` for a dict spec."""
    if isinstance(obs_spec, Mapping):
        return {k: (tuple(int(s) for s in shape), np.dtype(dtype)) for k, (shape, dtype) in obs_spec.items()}
    shape = (int(obs_spec),) if isinstance(obs_spec, (int, np.integer)) else tuple(int(s) for s in obs_spec)
    return shape, np.dtype(np.float32)


def _alloc(spec, capacity: int):
    if isinstance(spec, dict):
        return {k: np.zeros((capacity, *shape), dtype=dtype) for k, (shape, dtype) in spec.items()}
    shape, dtype = spec
    return np.zeros((capacity, *shape), dtype=dtype)


class ReplayBuffer:
    """Ring buffer of online transitions, filled by whole episodes.

    ``add_step`` accumulates the current episode and writes it when ``terminated`` or ``truncated``;
    ``add_episode`` writes a whole episode at once. On write, the episode's returns-to-go are computed
    (truncation contributes 0 after the end; the sparse all-failure rule applies when
    ``sparse_negative_reward`` is set). When full, the oldest transitions are overwritten.
    """

    def __init__(
        self,
        capacity: int,
        obs_spec: ObsSpec,
        act_dim: int,
        *,
        gamma: float,
        sparse_negative_reward: float | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.act_dim = act_dim
        self.gamma = gamma
        self.sparse_negative_reward = sparse_negative_reward
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self._spec = _normalise_spec(obs_spec)
        self._fields: dict[str, Any] = {
            "observations": _alloc(self._spec, capacity),
            "actions": np.zeros((capacity, act_dim), dtype=np.float32),
            "rewards": np.zeros(capacity, dtype=np.float32),
            "next_observations": _alloc(self._spec, capacity),
            "dones": np.zeros(capacity, dtype=np.float32),
            "mc_returns": np.zeros(capacity, dtype=np.float32),
            NEXT_ACTIONS: np.zeros((capacity, act_dim), dtype=np.float32),
        }
        self.ptr = 0
        self.size = 0
        self.num_episodes = 0
        self._pending: list[tuple[Obs, np.ndarray, float, Obs, float]] = []

    def __len__(self) -> int:
        return self.size

    @property
    def pending_steps(self) -> int:
        """Steps of the current, unfinished episode (not yet sampleable)."""
        return len(self._pending)

    def add_step(
        self, obs: Obs, action: np.ndarray, reward: float, next_obs: Obs, terminated: bool, truncated: bool
    ) -> None:
        """Add one environment step; the episode is written when it terminates or is truncated."""
        self._pending.append((obs, np.asarray(action, dtype=np.float32), float(reward), next_obs, float(terminated)))
        if terminated or truncated:
            self._flush_pending()

    def _flush_pending(self) -> None:
        steps, self._pending = self._pending, []
        stack = _stack_obs
        self.add_episode(
            stack([s[0] for s in steps]),
            np.stack([s[1] for s in steps]),
            np.array([s[2] for s in steps], dtype=np.float32),
            stack([s[3] for s in steps]),
            np.array([s[4] for s in steps], dtype=np.float32),
        )

    def add_episode(
        self, observations: Obs, actions: np.ndarray, rewards: np.ndarray, next_observations: Obs, terminals: np.ndarray
    ) -> None:
        """Write one complete episode (rewards already scaled) and its returns-to-go."""
        n = len(actions)
        if n == 0:
            return
        if np.shape(actions) != (n, self.act_dim):
            raise ValueError(f"actions must be ({n}, {self.act_dim}), got {np.shape(actions)}")
        mc = episode_returns_to_go(rewards, terminals, self.gamma, self.sparse_negative_reward)
        values = {
            "observations": observations,
            "actions": actions,
            "rewards": np.reshape(rewards, (n,)),
            "next_observations": next_observations,
            "dones": np.reshape(terminals, (n,)),
            "mc_returns": mc,
            NEXT_ACTIONS: next_actions_of(actions, np.r_[True, np.zeros(n - 1, dtype=bool)]),
        }
        keep = slice(max(0, n - self.capacity), n)  # an episode longer than the buffer keeps its tail
        idx = (self.ptr + np.arange(keep.stop - keep.start)) % self.capacity
        for key, value in values.items():
            self._write(key, value, keep, idx)
        self.ptr = int((self.ptr + len(idx)) % self.capacity)
        self.size = int(min(self.capacity, self.size + len(idx)))
        self.num_episodes += 1

    def _write(self, key: str, value: Any, keep: slice, idx: np.ndarray) -> None:
        store = self._fields[key]
        if isinstance(store, dict):
            if not isinstance(value, Mapping) or set(value) != set(store):
                raise ValueError(f"{key} must be a dict with keys {sorted(store)}")
            for k, arr in store.items():
                arr[idx] = np.asarray(value[k])[keep]
        else:
            store[idx] = np.asarray(value)[keep]

    def get(self, idx: np.ndarray) -> Batch:
        return {k: _to_torch(_tree_map(lambda a: a[idx], v), self.device) for k, v in self._fields.items()}

    def newest_indices(self, n: int) -> np.ndarray:
        """Storage indices of the ``min(n, len(self))`` most recently stored rows, newest first (int64)."""
        count = min(int(n), len(self))
        return (self.ptr - 1 - np.arange(count)) % self.capacity

    def sample(self, batch_size: int) -> Batch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.get(self.rng.integers(0, self.size, size=batch_size))

    def state_dict(self) -> dict[str, Any]:
        """Stored transitions (first ``size`` rows), pointers, RNG and the unfinished episode, as tensors."""
        data = {k: _tree_map(lambda a: torch.from_numpy(a[: self.size].copy()), v) for k, v in self._fields.items()}
        pending = None
        if self._pending:
            steps = self._pending
            pending = {
                "observations": _tree_map(torch.from_numpy, _stack_obs([s[0] for s in steps])),
                "actions": torch.from_numpy(np.stack([s[1] for s in steps])),
                "rewards": torch.tensor([s[2] for s in steps], dtype=torch.float32),
                "next_observations": _tree_map(torch.from_numpy, _stack_obs([s[3] for s in steps])),
                "dones": torch.tensor([s[4] for s in steps], dtype=torch.float32),
            }
        return {
            "capacity": self.capacity,
            "ptr": self.ptr,
            "size": self.size,
            "num_episodes": self.num_episodes,
            "rng": _rng_state(self.rng),
            "data": data,
            "pending": pending,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"state is for capacity {state['capacity']}, this buffer has {self.capacity}")
        size = int(state["size"])
        for key, store in self._fields.items():
            src = state["data"].get(key)
            if src is None and key == NEXT_ACTIONS:  # written before next actions were stored: their own actions
                src = state["data"]["actions"]
            if isinstance(store, dict):
                for k, arr in store.items():
                    arr[:size] = src[k].numpy()
            else:
                store[:size] = src.numpy()
        self.ptr, self.size = int(state["ptr"]), size
        self.num_episodes = int(state["num_episodes"])
        _set_rng_state(self.rng, state["rng"])
        self._pending = []
        pending = state.get("pending")
        if pending is not None:
            obs = _tree_map(lambda t: t.numpy(), pending["observations"])
            nxt = _tree_map(lambda t: t.numpy(), pending["next_observations"])
            for i in range(len(pending["actions"])):
                self._pending.append(
                    (
                        _tree_map(lambda a: a[i], obs),
                        pending["actions"][i].numpy(),
                        float(pending["rewards"][i]),
                        _tree_map(lambda a: a[i], nxt),
                        float(pending["dones"][i]),
                    )
                )


def _stack_obs(items: list[Obs]) -> Obs:
    if isinstance(items[0], Mapping):
        return {k: np.stack([np.asarray(o[k]) for o in items]) for k in items[0]}
    return np.stack([np.asarray(o, dtype=np.float32) for o in items])


# --------------------------------------------------------------------------- mixed sampler


class MixedSampler:
    """Draw ``round(offline_ratio * B)`` rows from the offline dataset and the rest from the online buffer."""

    def __init__(self, offline: OfflineDataset, online: ReplayBuffer, offline_ratio: float = 0.5) -> None:
        if not 0.0 <= offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must lie in [0, 1], got {offline_ratio}")
        self.offline = offline
        self.online = online
        self.offline_ratio = offline_ratio

    @staticmethod
    def split(batch_size: int, offline_ratio: float) -> tuple[int, int]:
        """``(n_offline, n_online)`` rows of a batch of ``batch_size`` once the online buffer holds data: the
        offline share rounded to whole rows (a ratio within ``0.5 / batch_size`` of 0 or 1 draws every row from one
        side)."""
        n_off = int(round(offline_ratio * batch_size))
        return n_off, batch_size - n_off

    def counts(self, batch_size: int) -> tuple[int, int]:
        """``(n_offline, n_online)`` for one batch (:meth:`split`); all offline while the online buffer is empty."""
        if len(self.online) == 0:
            return batch_size, 0
        return self.split(batch_size, self.offline_ratio)

    def sample(self, batch_size: int) -> Batch:
        n_off, n_on = self.counts(batch_size)
        if n_on == 0:
            return self.offline.sample(n_off)
        if n_off == 0:
            return self.online.sample(n_on)
        return concat_batches(self.offline.sample(n_off), self.online.sample(n_on))

    def state_dict(self) -> dict[str, Any]:
        return {
            "offline": self.offline.state_dict(),
            "online": self.online.state_dict(),
            "offline_ratio": self.offline_ratio,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.offline.load_state_dict(state["offline"])
        self.online.load_state_dict(state["online"])
        self.offline_ratio = float(state["offline_ratio"])
