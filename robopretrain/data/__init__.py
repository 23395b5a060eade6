"""Data: robomimic HDF5 reading (:mod:`.hdf5`), returns-to-go (:mod:`.returns`), replay buffers (:mod:`.replay`)."""

from robopretrain.data.hdf5 import DatasetError, DatasetInfo, Transitions, load_transitions, read_info, select_demos
from robopretrain.data.replay import (
    BATCH_KEYS,
    MixedSampler,
    OfflineDataset,
    ReplayBuffer,
    append_task_one_hot,
    flatten_obs,
    task_one_hot,
)
from robopretrain.data.returns import episode_returns_to_go, returns_to_go, scale_rewards, sparse_negative_reward

__all__ = [
    "BATCH_KEYS",
    "DatasetError",
    "DatasetInfo",
    "MixedSampler",
    "OfflineDataset",
    "ReplayBuffer",
    "Transitions",
    "append_task_one_hot",
    "episode_returns_to_go",
    "flatten_obs",
    "load_transitions",
    "read_info",
    "returns_to_go",
    "scale_rewards",
    "select_demos",
    "sparse_negative_reward",
    "task_one_hot",
]
