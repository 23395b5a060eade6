"""Robomimic HDF5 -> offline dataset of observation dicts, for any observation spec (one path for states and pixels).

:func:`spec_of_data` reads the observation spec a config asks for from a file's shapes (sizes always from the data);
:func:`load_offline_dataset` reads the selected demos into an :class:`~robopretrain.data.replay.OfflineDataset`
whose observations are dicts ``{low-dim part: float32 (N, d), camera: uint8 (N, H, W, 3), task_id: int64 (N,)}``
with rewards transformed and Monte-Carlo returns-to-go computed (REFERENCE.md, Stage 3):

* rewards: ``r * scale + bias`` (Cal-QL: x10 - 5) before the returns-to-go; with ``sparse`` the all-failure rule
  uses ``0 * scale + bias``;
* a file whose rewards are all zero although its episode metadata marks successes (a recorder that never wrote the
  success reward) is refused with :class:`~robopretrain.data.hdf5.DatasetError` for reward-based learning, unless
  ``rewards_from_success`` rebuilds the sparse reward (1 on the last step of each successful episode, which then
  also terminates); behaviour cloning ignores rewards;
* ``obs_map`` maps our part names to the file's keys (robosuite's ``robot0_eef_pos``, ...); ``task_id`` gives every
  transition one task id (a foreign file), else each demo's ``task_id`` attribute is used; ids must be below
  the spec's one-hot size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robopretrain.data.hdf5 import DatasetError, DatasetInfo, load_transitions, read_info, select_demos
from robopretrain.data.keys import TASK_ID
from robopretrain.data.replay import OfflineDataset
from robopretrain.data.returns import (
    episode_starts,
    next_actions_of,
    returns_to_go,
    scale_rewards,
    sparse_negative_reward,
)
from robopretrain.data.spec import ObsSpec, spec_from_shapes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardSettings:
    """How stored rewards become training rewards and returns-to-go."""

    discount: float = 0.99
    scale: float = 1.0
    bias: float = 0.0
    sparse: bool = True  # {0, 1} success rewards: the all-failure rule applies to episodes that never succeed

    @classmethod
    def of_algo(cls, algo_cfg: Any) -> RewardSettings:
        """The reward settings an algorithm config carries (BC has none: discount 0.99, scale 1, bias 0)."""
        get = (lambda k, d: getattr(algo_cfg, k, d)) if not isinstance(algo_cfg, Mapping) else algo_cfg.get
        return cls(discount=float(get("discount", 0.99)), scale=float(get("reward_scale", 1.0)),
                   bias=float(get("reward_bias", 0.0)), sparse=bool(get("sparse_reward", True)))


def default_num_tasks(info: DatasetInfo) -> int:
    """The task one-hot size for a file: ``num_tasks`` of its ``env_args`` when given, the size of its task family
    when the ``env_name`` is ours (sim_envs: every sim_envs task; Meta-World: its 50 v3 tasks), so that stage-2
    agents keep slots for held-out targets; else the largest task id + 1."""
    declared = info.env_args.get("num_tasks")
    largest = max(d.task_id for d in info.demos) + 1
    if isinstance(declared, int) and declared >= largest:
        return int(declared)
    env_name = str(info.env_args.get("env_name", ""))
    if "sim_envs/" in env_name:
        import sim_envs

        return max(len(sim_envs.TASKS), largest)
    if env_name.startswith("robopretrain/MetaWorld"):
        from robopretrain.envs.metaworld import TASK_IDS

        return max(len(TASK_IDS), largest)
    return largest


def spec_of_data(path: str | os.PathLike, low_dim: Sequence[str], rgb: Sequence[str], num_tasks: int | None, *,
                 obs_map: Mapping[str, str] | None = None, info: DatasetInfo | None = None) -> ObsSpec:
    """The observation spec of ``low_dim`` and ``rgb`` parts of the file (``num_tasks`` None: from the file)."""
    info = info or read_info(path)
    n = default_num_tasks(info) if num_tasks is None else int(num_tasks)
    return spec_from_shapes(info.obs_specs, low_dim, rgb, n, where=str(info.path), key_map=obs_map)


def _rewards_from_success(rewards: np.ndarray, dones: np.ndarray, episode_ids: np.ndarray,
                          success: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Sparse rewards rebuilt from episode success: 1 (and done) on the last step of each successful episode."""
    rewards, dones = np.zeros_like(rewards), dones.copy()
    last = np.flatnonzero(np.r_[episode_ids[1:] != episode_ids[:-1], True])
    for i in last:
        if success[int(episode_ids[i])]:
            rewards[i], dones[i] = 1.0, 1.0
    return rewards, dones


def load_offline_dataset(
    path: str | os.PathLike,
    spec: ObsSpec,
    reward: RewardSettings,
    *,
    obs_map: Mapping[str, str] | None = None,
    tasks: Sequence[str] | None = None,
    mask: str | None = None,
    max_demos: int | None = None,
    task_id: int | None = None,
    rewards_needed: bool = True,
    rewards_from_success: bool = False,
    act_dim: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> OfflineDataset:
    """The selected demos of ``path`` as an offline dataset of observation dicts (see the module docstring).

    ``max_demos`` keeps the first demos of the selection. ``act_dim`` (when given) must equal the file's action
    size. Raises :class:`DatasetError` naming the file and key for every contract violation.
    """
    info = read_info(path)
    key_map = dict(obs_map or {})
    if act_dim is not None and info.action_dim != int(act_dim):
        raise DatasetError(f"{info.path}: actions have {info.action_dim} dims; the agent has {act_dim}")
    demos = select_demos(info, mask=mask, tasks=tasks)
    if max_demos is not None:
        demos = demos[: int(max_demos)]
    ours = [*spec.rgb_keys, *spec.low_dim_keys]
    file_keys = [key_map.get(k, k) for k in ours]
    trans = load_transitions(path, file_keys, demos=demos)
    ids = np.full(len(trans), int(task_id), dtype=np.int64) if task_id is not None else trans.task_ids
    if spec.num_tasks and (ids.min() < 0 or ids.max() >= spec.num_tasks):
        raise DatasetError(f"{info.path}: task ids {sorted(set(ids.tolist()))} do not fit a task one-hot of size "
                           f"{spec.num_tasks} (set obs.num_tasks, or the target's task_id)")
    rewards, dones = trans.rewards, trans.dones
    success = [bool(m.get("success", False)) for m in trans.ep_meta]
    if rewards_needed and not np.any(rewards > 0) and any(success):
        if not rewards_from_success:
            raise DatasetError(
                f"{info.path}: no positive reward in the selected data although {sum(success)} of {len(success)} "
                "episodes are marked successful in ep_meta (a recorder that never wrote the success reward?); "
                "sparse-reward RL would see no success at all. Set data.rewards_from_success=true to rebuild the "
                "reward from ep_meta, or fix the file")
        rewards, dones = _rewards_from_success(rewards, dones, trans.episode_ids, success)
        log.warning("%s: rewards rebuilt from ep_meta success (%d successful episodes)", info.path, sum(success))

    def parts(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: obs[key_map.get(k, k)] for k in ours}
        if spec.num_tasks:
            out[TASK_ID] = ids
        return out

    scaled = scale_rewards(rewards, reward.scale, reward.bias)
    r_neg = sparse_negative_reward(reward.scale, reward.bias) if reward.sparse else None
    mc = returns_to_go(scaled, dones, reward.discount, episode_ids=trans.episode_ids, obs=trans.obs,
                       next_obs=trans.next_obs, sparse_negative_reward=r_neg)
    starts = episode_starts(len(trans), episode_ids=trans.episode_ids, terminals=dones)
    return OfflineDataset(parts(trans.obs), trans.actions, scaled, parts(trans.next_obs), dones, mc,
                          next_actions=next_actions_of(trans.actions, starts), device=device, seed=seed)


__all__ = ["RewardSettings", "default_num_tasks", "load_offline_dataset", "spec_of_data"]
