"""Data: robomimic HDF5 reading (:mod:`.hdf5`), observation specs (:mod:`.spec`), offline datasets from files
(:mod:`.dataset`; in memory, or disk-backed: :mod:`.disk` over the frame index of :mod:`.frames`), returns-to-go
(:mod:`.returns`), replay buffers and samplers (:mod:`.replay`), key names (:mod:`.keys`); other formats (LeRobot v3,
Minari, D4RL-style HDF5, OGBench npz) converted to robomimic HDF5 by :mod:`.convert` (readers :mod:`.read_lerobot`,
:mod:`.read_minari`, :mod:`.read_d4rl`, :mod:`.read_ogbench`; writer :mod:`.episodes`)."""

from robopretrain.data.dataset import RewardSettings, data_action_units, load_offline_dataset, spec_of_data
from robopretrain.data.disk import DiskDataset
from robopretrain.data.hdf5 import DatasetError, DatasetInfo, Transitions, load_transitions, read_info, select_demos
from robopretrain.data.keys import BATCH_KEYS
from robopretrain.data.replay import MixedSampler, OfflineDataset, ReplayBuffer
from robopretrain.data.returns import episode_returns_to_go, returns_to_go, scale_rewards, sparse_negative_reward
from robopretrain.data.spec import ObsSpec, SpecMismatchError

__all__ = [
    "BATCH_KEYS",
    "DatasetError",
    "DatasetInfo",
    "DiskDataset",
    "MixedSampler",
    "ObsSpec",
    "OfflineDataset",
    "ReplayBuffer",
    "RewardSettings",
    "SpecMismatchError",
    "Transitions",
    "data_action_units",
    "episode_returns_to_go",
    "load_offline_dataset",
    "load_transitions",
    "read_info",
    "returns_to_go",
    "scale_rewards",
    "select_demos",
    "sparse_negative_reward",
    "spec_of_data",
]
