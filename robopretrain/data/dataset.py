"""Robomimic HDF5 -> offline dataset of observation dicts, for any observation spec (one path for states and pixels).

:func:`spec_of_data` reads the observation spec a config asks for from a file's shapes (sizes always from the data);
:func:`load_offline_dataset` reads the selected demos into an :class:`~robopretrain.data.replay.OfflineDataset`
whose observations are dicts ``{low-dim part: float32 (N, d), camera: uint8 (N, H, W, 3), task_id: int64 (N,)}``
with rewards transformed and Monte-Carlo returns-to-go computed (REFERENCE.md, Stage 3):

* rewards: ``r * scale + bias`` (Cal-QL: x10 - 5) before the returns-to-go; with ``sparse`` the all-failure rule
  uses ``0 * scale + bias``;
* a file whose rewards are all zero (one constant, never positive) although its episode metadata marks successes (a
  recorder that never wrote the success reward; OGBench's -1/0 rewards carry a signal and pass) is refused with
  :class:`~robopretrain.data.hdf5.DatasetError` for reward-based learning, unless
  ``rewards_from_success`` rebuilds the sparse reward (1 on the last step of each successful episode, which then
  also terminates); behaviour cloning ignores rewards;
* ``dones``: as stored, each 1 a terminal; a 1 before a demo's last step (the contract has 1 only where the episode
  truly ended) is kept, with a warning naming the demos and steps (:func:`warn_inner_terminals`; not for an OGBench
  conversion, whose task-done steps are marked so by design);
* ``obs_map`` maps our part names to the file's keys (robosuite's ``robot0_eef_pos``, ...); ``task_id`` gives every
  transition one task id (a foreign file), else each demo's ``task_id`` attribute is used; ids must be below
  the spec's one-hot size;
* actions: in the file's units, or with ``action_units`` re-expressed in the agent's (a file converted with
  rescaled actions records them in ``env_args["action_normalization"]``; :mod:`robopretrain.envs.action_units`).

Storage (``storage``): ``memory`` reads every selected frame into the dataset (twice: ``obs`` and ``next_obs``);
``disk`` returns a :class:`~robopretrain.data.disk.DiskDataset` that keeps everything but the images in memory and
reads frames on demand from the file's frame index (:mod:`robopretrain.data.frames`, built beside the file on first
use); ``auto`` picks ``disk`` when the selection's frames would take more than :data:`MEMORY_LIMIT_BYTES` in memory
(``obs`` + ``next_obs``), else ``memory``. Both give the same batches for the same seed (one process).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robopretrain.data.hdf5 import (DatasetError, DatasetInfo, Transitions, action_bounds, check_finite_transitions,
                                    check_lengths, load_transitions, read_info, select_demos, source_format)
from robopretrain.data.disk import DiskDataset
from robopretrain.data.frames import memory_bytes, open_index
from robopretrain.data.keys import NEXT_ACTIONS, TASK_ID
from robopretrain.data.replay import OfflineDataset
from robopretrain.data.returns import (
    breaks_inside_episodes,
    copies_of_obs,
    episode_starts,
    has_success_signal,
    is_sparse_success_reward,
    next_actions_of,
    returns_to_go,
    scale_rewards,
    sparse_negative_reward,
    unrewarded_successes,
)
from robopretrain.data.spec import ObsSpec, as_rgb, spec_from_shapes
from robopretrain.envs.action_units import ActionNormalization, auto_bounds, declared_bounds, of_env_args, reexpress
from robopretrain.envs.action_units import describe as describe_units
from robopretrain.envs.action_units import INDEX_VALUES_MOST, add_whole_values, warn_constant_dimensions
from robopretrain.envs.action_units import warn_index_actions as index_actions_warning

log = logging.getLogger(__name__)

STORAGES = ("auto", "memory", "disk")
FILE_UNITS = "file"  # load_offline_dataset: keep the file's action units
MEMORY_LIMIT_BYTES = 2 * 2**30  # auto: frames (obs + next_obs) above 2 GiB are read from disk


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


_SMALL_DECLARED: set[str] = set()  # files whose env_args num_tasks below their task ids was warned about


def default_num_tasks(info: DatasetInfo) -> int:
    """The task one-hot size for a file: ``num_tasks`` of its ``env_args`` when given, the size of its task family
    when the ``env_name`` is ours (sim_envs: every sim_envs task; Meta-World: its 50 v3 tasks), so that stage-2
    agents keep slots for held-out targets; else the largest task id + 1."""
    declared = info.env_args.get("num_tasks")
    largest = max(d.task_id for d in info.demos) + 1
    if isinstance(declared, int) and declared >= largest:
        return int(declared)
    if isinstance(declared, int) and str(info.path) not in _SMALL_DECLARED:  # once per file
        _SMALL_DECLARED.add(str(info.path))
        log.warning("%s: env_args num_tasks=%d, but its demos use task ids up to %d: the one-hot gets %d slots (set "
                    "obs.num_tasks, or correct env_args' num_tasks)", info.path, declared, largest - 1, largest)
    env_name = str(info.env_args.get("env_name", ""))
    if "sim_envs/" in env_name:
        import sim_envs

        return max(len(sim_envs.TASKS), largest)
    if env_name.startswith("robopretrain/MetaWorld"):
        from robopretrain.envs.metaworld import TASK_IDS

        return max(len(TASK_IDS), largest)
    return largest


def spec_of_data(path: str | os.PathLike, low_dim: Sequence[str], rgb: Sequence[str], num_tasks: int | None, *,
                 obs_map: Mapping[str, str] | None = None, info: DatasetInfo | None = None,
                 map_setting: str | None = None, parts_settable: bool = False) -> ObsSpec:
    """The observation spec of ``low_dim`` and ``rgb`` parts of the file (``num_tasks`` None: from the file); a
    missing part's ``ValueError`` hints at ``map_setting`` (and the obs parts when ``parts_settable``), see
    :func:`robopretrain.data.spec.spec_from_shapes`."""
    info = info or read_info(path)
    n = default_num_tasks(info) if num_tasks is None else int(num_tasks)
    try:
        return spec_from_shapes(info.obs_specs, low_dim, rgb, n, where=str(info.path), key_map=obs_map,
                                map_setting=map_setting, parts_settable=parts_settable)
    except ValueError as exc:
        if not info.nested_obs or "not found" not in str(exc):
            raise
        flat = info.nested_obs[0].replace("/", ".")  # the part may be one of them, which the reader cannot see
        raise ValueError(f"{exc}; obs/ also holds groups, whose datasets ({', '.join(info.nested_obs[:4])}"
                         f"{', ...' if len(info.nested_obs) > 4 else ''}) are not read: store each directly under "
                         f"obs/ with a flat name (e.g. obs/{flat}; h5py writes a key 'a/b' as a group a holding b)"
                         ) from None


def check_reward_free(where: str, unrewarded: Sequence[str], selected: int, ep_meta: Sequence[Mapping[str, Any]],
                      rewards_from_success: bool) -> None:
    """Refuse demos stored without ``rewards`` (``unrewarded``, of ``selected`` demos) for a learner that needs them,
    unless ``data.rewards_from_success`` rebuilds them from ``ep_meta`` success flags, which then must be there.
    Raises :class:`DatasetError` saying what to do (BC needs no reward; a reward can be learned from preferences)."""
    head = (f"{where}: {len(unrewarded)} of {selected} selected demos have no rewards dataset "
            f"({', '.join(unrewarded[:3])}{', ...' if len(unrewarded) > 3 else ''})")
    flagged = sum("success" in m for m in ep_meta)
    if not rewards_from_success:
        # rewards_from_success is offered only where every selected episode has its success flag (an OGBench
        # goal-conditioned file has none: following the hint was refused next)
        flags = ("set data.rewards_from_success=true (sparse rewards from each episode's ep_meta success flag), "
                 if flagged == len(ep_meta) else
                 f"(data.rewards_from_success needs ep_meta success flags: {len(ep_meta) - flagged} of "
                 f"{len(ep_meta)} have none) ")
        raise DatasetError(f"{head}; this learner needs rewards: {flags}write a reward learned from preference "
                           "labels (python -m robopretrain.reward_model, which saves a rewarded copy), or train "
                           "algo=bc")
    if flagged < len(ep_meta):
        raise DatasetError(f"{head}, and data.rewards_from_success=true needs every selected episode's ep_meta "
                           f"'success' flag; {len(ep_meta) - flagged} of {len(ep_meta)} have none")


def _episode_ends(episode_ids: np.ndarray) -> np.ndarray:
    """Indices of each episode's last row in ``episode_ids`` ``(N,)`` (rows of an episode are consecutive)."""
    return np.flatnonzero(np.r_[episode_ids[1:] != episode_ids[:-1], True])


def _rewards_from_success(rewards: np.ndarray, dones: np.ndarray, episode_ids: np.ndarray,
                          success: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Sparse rewards rebuilt from episode success: 1 (and done) on the last step of each successful episode."""
    rewards, dones = np.zeros_like(rewards), dones.copy()
    last = _episode_ends(episode_ids)
    for i in last:
        if success[int(episode_ids[i])]:
            rewards[i], dones[i] = 1.0, 1.0
    return rewards, dones


def warn_failed_terminals(where: str, rewards: np.ndarray, dones: np.ndarray, episode_ids: np.ndarray,
                          success: Sequence[bool], known: Sequence[bool] | None = None) -> int:
    """Warn when episodes that did not succeed end on ``done = 1``: a terminal there means no bootstrap from the
    last state, right for a true failure terminal but wrong for a time-limit end, which robomimic's
    ``dataset_states_to_obs.py --done_mode 2`` (its recommended mode) also marks done. Our collectors write
    ``done = 1`` only where the env terminated (success). ``success``: ep_meta's flag per episode (in order of first
    appearance in ``episode_ids``); an episode counts as failed when unflagged and its last reward is <= 0.
    ``known`` (per episode; None: all): whether its outcome is known at all (an episode stored without rewards and
    without an ep_meta flag is not a failure, nor its done=1 a wrong one). Returns the number of such episodes."""
    if not len(dones):
        return 0
    last = _episode_ends(episode_ids)
    flagged = np.asarray(list(success), dtype=bool) if len(success) == len(last) else np.zeros(len(last), bool)
    failed_done = (dones[last] > 0) & (rewards[last] <= 0) & ~flagged
    if known is not None and len(known) == len(last):
        failed_done &= np.asarray(list(known), dtype=bool)
    count = int(failed_done.sum())
    if count:
        log.warning("%s: %d of %d episodes end on done=1 without success. done=1 stops the TD backup there (a "
                    "terminal); if these ends are time limits (robomimic's done_mode 2 marks every episode end), "
                    "rewrite dones to 1 only where the task succeeded (docs/targets.md, 'Your data')", where, count, len(last))
    return count


def warn_success_disagreement(where: str, rewards: np.ndarray, episode_ids: np.ndarray,
                              ep_meta: Sequence[Mapping[str, Any]], demo_names: Sequence[str]) -> tuple[int, int]:
    """Warn when an episode's ``ep_meta`` success flag and its stored ``rewards`` ``(N,)`` disagree, naming the first
    demos: (a) marked successful but its rewards carry no success signal (one constant, never positive:
    :func:`~robopretrain.data.returns.has_success_signal`), so sparse-reward RL reads it as a failure; (b) marked
    failed (``"success": false``) in a file of sparse rewards (every reward 0 or 1) whose last reward is 1, so RL
    reads it as a success while ``ep_meta`` (the success filter, rewards rebuilt from success) says it failed.
    ``ep_meta`` is per episode in order of appearance in ``episode_ids``, which index ``demo_names``. A selection
    with no success signal at all is refused before this (:func:`~robopretrain.data.returns.unrewarded_successes`).
    Returns the counts (a, b)."""
    ids = np.asarray(episode_ids)
    if not len(ids) or len(ep_meta) != len(_episode_ends(ids)):
        return 0, 0
    r = np.asarray(rewards)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    bounds = zip(starts.tolist(), np.r_[starts[1:], len(ids)].tolist())
    sparse = is_sparse_success_reward(r)
    unrewarded, rewarded_failures = [], []
    for meta, (lo, hi) in zip(ep_meta, bounds):
        flag = meta.get("success")
        name = f"data/{demo_names[int(ids[lo])]}"
        if flag is True and not has_success_signal(r[lo:hi]):
            unrewarded.append(name)
        elif flag is False and sparse and r[hi - 1] > 0:
            rewarded_failures.append(name)
    for demos, what in ((unrewarded, "are marked successful in ep_meta but have no positive reward, so RL reads "
                         "them as failures"),
                        (rewarded_failures, "are marked failed in ep_meta but end with reward 1, so RL reads them as "
                         "successes")):
        if demos:
            log.warning("%s: %d of %d episodes (%s%s) %s: the rewards and ep_meta's success flag disagree; fix "
                        "whichever is wrong (python -m robopretrain.data.inspect FILE --demos lists both)", where,
                        len(demos), len(ep_meta), ", ".join(demos[:3]), ", ..." if len(demos) > 3 else "", what)
    return len(unrewarded), len(rewarded_failures)


def warn_open_successes(where: str, dones: np.ndarray, episode_ids: np.ndarray, success: Sequence[bool],
                        rewards: np.ndarray | None = None) -> int:
    """Warn when successful episodes end on ``done = 0``: the TD backup then bootstraps past the success from a next
    state no data follows, while a target that ends its episodes on success (``terminate_on_success``, the default)
    never does; the toolkit's collectors write ``done = 1`` there. An episode is successful when ep_meta flags it
    (``success`` as in :func:`warn_failed_terminals`) or, in a file whose ``rewards`` ``(N,)`` are sparse (every
    reward 0 or 1, as robomimic's), when its last reward is 1 (robomimic's own files have no ep_meta). Returns the
    number of such episodes."""
    if not len(dones):
        return 0
    last = _episode_ends(episode_ids)
    flagged = np.asarray(list(success), dtype=bool) if len(success) == len(last) else np.zeros(len(last), bool)
    rewarded = np.zeros(len(last), bool)
    if rewards is not None and len(rewards) == len(dones) and is_sparse_success_reward(rewards):
        rewarded = np.asarray(rewards)[last] > 0
    open_ends = dones[last] <= 0
    count = int(((flagged | rewarded) & open_ends).sum())
    if count:
        how = ("marked successful in ep_meta" if not (rewarded & ~flagged & open_ends).any() else
               "successful (reward 1 on their last step)" if not (flagged & open_ends).any() else
               "successful (in ep_meta, or by a reward of 1 on their last step)")
        log.warning("%s: %d of %d episodes %s end on done=0: the TD backup goes on past their success "
                    "(bootstrapped from a state no data follows), where a target that ends episodes on success stops; "
                    "write done=1 at a success's last step (docs/targets.md, 'Your data')", where, count, len(last),
                    how)
    return count


def warn_inner_terminals(where: str, dones: np.ndarray, episode_ids: np.ndarray, demo_names: Sequence[str],
                         env_args: Mapping[str, Any] | None = None) -> int:
    """Warn when ``dones`` ``(N,)`` is 1 before the last step of a demo (``episode_ids`` ``(N,)`` index
    ``demo_names``), naming the first demos and steps: the loader reads each such step as a terminal (the TD backup
    stops there, no bootstrap from its ``next_obs``; returns-to-go and next actions restart after it, as if a new
    episode began), right only where the episode truly ended (ARCHITECTURE.md: 1 only on a true terminal). A
    converter that marks success steps of an episode that goes on (robomimic's ``--done_mode 0`` / ``2`` mark every
    success step) writes such dones. Nothing is said of an OGBench conversion (``env_args`` of type ``ogbench``), whose
    converter marks the task-done steps so by design (:mod:`robopretrain.data.read_ogbench`). Returns the number of
    such steps (0 when not warned)."""
    if not len(dones) or source_format(env_args) == "ogbench":
        return 0
    ids = np.asarray(episode_ids)
    last = np.r_[ids[1:] != ids[:-1], True]
    inner = np.flatnonzero((np.asarray(dones) > 0) & ~last)
    if not inner.size:
        return 0
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    lengths = np.diff(np.r_[starts, len(ids)])
    by_demo: dict[int, list[int]] = {}
    for row in inner.tolist():
        e = int(np.searchsorted(starts, row, side="right") - 1)
        by_demo.setdefault(e, []).append(row - int(starts[e]))
    named = [f"data/{demo_names[int(ids[starts[e]])]} step{'s' if len(steps) > 1 else ''} "
             f"{', '.join(map(str, steps[:3]))}{', ...' if len(steps) > 3 else ''} of {int(lengths[e])}"
             for e, steps in list(by_demo.items())[:3]]
    log.warning("%s: dones=1 before the last step at %d step(s) of %d demo(s) (%s%s): each is read as a terminal "
                "(the TD backup stops there and returns-to-go restart after it, as if a new episode began); if those "
                "episodes went on, rewrite those dones to 0 (dones is 1 only where the episode truly ended; docs/"
                "targets.md, 'Your data')", where, inner.size, len(by_demo), "; ".join(named),
                "; ..." if len(by_demo) > 3 else "")
    return int(inner.size)


def selected_demos(info: DatasetInfo, *, tasks: Sequence[str] | None = None, mask: str | None = None,
                   max_demos: int | None = None, skip_short: bool = False, quiet: bool = False) -> list[str]:
    """The demos :func:`load_offline_dataset` reads with these settings: ``select_demos``'s (mask AND tasks, numeric
    order), without those of fewer than 2 steps when ``skip_short`` (logged unless ``quiet``; else the reader
    refuses them, the data contract's minimum), the first ``max_demos`` of them. Raises ``ValueError`` for a
    ``max_demos`` below 1 (a negative slice would drop demos from the end), :class:`DatasetError` when
    ``skip_short`` leaves none."""
    if max_demos is not None and (isinstance(max_demos, bool) or int(max_demos) != max_demos or int(max_demos) < 1):
        raise ValueError(f"max_demos={max_demos!r}; expected an integer >= 1 (the first demos kept) or null (all)")
    demos = select_demos(info, mask=mask, tasks=tasks)
    if skip_short:
        short = [d for d in demos if info.demo(d).num_samples < 2]
        if short:
            demos = [d for d in demos if d not in set(short)]
            if not quiet:  # said once per file, by the loader
                log.warning("%s: %d demo(s) of fewer than 2 steps left out (data.skip_short_demos=true): %s", info.path,
                            len(short), ", ".join(short[:5]) + (", ..." if len(short) > 5 else ""))
        if not demos:
            raise DatasetError(f"{info.path}: every selected demo has fewer than 2 steps")
    return demos if max_demos is None else demos[: int(max_demos)]


def file_action_units(info: DatasetInfo) -> ActionNormalization | None:
    """The action units a file records (``env_args["action_normalization"]``; None: the env's own). Raises
    :class:`DatasetError` naming the file when the record is malformed or its size is not the actions'."""
    try:
        units = of_env_args(info.env_args)
    except ValueError as exc:
        raise DatasetError(f"{info.path}: env_args: {exc}") from None
    if units is not None and units.dim != info.action_dim:
        raise DatasetError(f"{info.path}: env_args action_normalization has {units.dim} dims, the actions "
                           f"{info.action_dim}")
    return units


def warn_dense_rewards(where: str, rewards: np.ndarray, reward: RewardSettings) -> bool:
    """Warn (and return True) when rewards are not the sparse {0, 1} success rewards the settings assume
    (``sparse``): the sparse transform (e.g. Cal-QL's x10 - 5) and the all-failure rule would then distort them."""
    values = np.unique(np.asarray(rewards))
    if not reward.sparse or is_sparse_success_reward(values):
        return False
    log.warning("%s: rewards are not sparse {0, 1} (%d distinct values in [%.4g, %.4g]) but the algorithm's reward "
                "settings assume so (x %g %+g, the all-failure rule); for a dense reward set algo.sparse_reward=false "
                "and algo.reward_scale / algo.reward_bias (e.g. 1 and 0)", where, len(values), float(values.min()),
                float(values.max()), reward.scale, reward.bias)
    return True


def warn_sparse_data_for_dense_target(where: str, scaled_rewards: np.ndarray, reward: RewardSettings,
                                      target: str) -> bool:
    """Warn (and return True) when a dense-reward ``target``'s offline data carries sparse {0, 1} success rewards
    (``scaled_rewards``: as stored, ``scale * r + bias``): stage 3's replay would mix the env's own dense reward with
    the demos' 0/1 on one scale, and no update could tell them apart."""
    raw = (np.asarray(scaled_rewards, np.float64) - reward.bias) / (reward.scale or 1.0)
    values = np.unique(np.round(raw, 6))
    if reward.sparse or not len(values) or not is_sparse_success_reward(values) or 1.0 not in values:
        return False
    log.warning("%s: rewards are sparse {0, 1} success rewards, but target %s declares a dense reward: its online "
                "episodes give the env's own reward, so the replay mixes two reward kinds on one scale (x %g %+g); "
                "relabel the demos with the env's reward, or declare the target's reward: sparse", where, target,
                reward.scale, reward.bias)
    return True


AGENT_UNITS = "the agent records these units and every env it acts in maps its actions back"


def data_action_units(path: str | os.PathLike, info: DatasetInfo, mode: str = "auto",
                      bounds: Mapping[str, Any] | None = None, user: str = AGENT_UNITS) -> ActionNormalization | None:
    """The action units of a fresh agent trained on ``path``: ``bounds`` when given (``data.action_bounds``:
    :func:`declared_action_units`); else those the file records; else, with ``mode="auto"``, per-dimension bounds
    from its actions when they leave ``[-1, 1]`` (:func:`robopretrain.envs.action_units.auto_bounds`: a robomimic
    file in the robot's own units, rescaled when loaded and mapped back by every env the agent acts in); None (the
    env's own) otherwise. ``mode="keep"``: the record only (actions outside ``[-1, 1]`` are then refused when
    loaded). ``user``: what the log line about ``bounds`` says becomes of the units (the reward model's own text)."""
    if mode not in ("auto", "keep"):
        raise ValueError(f"data.actions={mode!r}; expected auto or keep")
    if bounds is not None:
        return declared_action_units(path, info, bounds, user)
    recorded = file_action_units(info)
    if recorded is not None or mode == "keep":
        return recorded
    units = auto_bounds(*action_bounds(path, info))
    if units is not None:
        warn_index_actions(path, info)
        warn_constant_dimensions(units, str(info.path))
        log.warning("%s: actions leave [-1, 1] (low %s, high %s): rescaled per dimension when loaded; the agent "
                    "records these units and every env it acts in maps its actions back (data.actions=keep refuses "
                    "them instead)", info.path, list(units.low), list(units.high))
    return units


def warn_index_actions(path: str | os.PathLike, info: DatasetInfo, most: int = INDEX_VALUES_MOST) -> bool:
    """Warn (and return True) when every action of the file is a whole number, with at most ``most`` distinct values
    and some outside ``[-1, 1]``: the indices of a discrete action space (``Discrete(5)`` stored as ``(N, 1)``), which
    stage 2 would learn as one continuous dimension (a checkpoint is written; only an env of a ``Discrete`` space is
    refused, at evaluation). The converters warn the same way (:func:`robopretrain.data.episodes.write_robomimic`)."""
    import h5py

    values: set[float] | None = set()
    with h5py.File(path, "r") as f:
        for d in info.demos:
            values = add_whole_values(values, f["data"][d.name]["actions"][()], most)
            if values is None:
                return False
    return index_actions_warning(str(info.path), values)


def declared_action_units(path: str | os.PathLike, info: DatasetInfo, bounds: Mapping[str, Any],
                          user: str = AGENT_UNITS) -> ActionNormalization:
    """``data.action_bounds`` (``{low: [...], high: [...]}``, the env's action box in the env's own units: those the
    file's actions are stored in, or, for a file that records its rescaling, the units it was rescaled from) as the
    agent's action units: the actions are rescaled to ``[-1, 1]`` by them when loaded, and every env the agent acts
    in maps its actions back. For demos stored in the env's own units inside ``[-1, 1]`` (a box of +-0.05), which
    ``data.actions=auto`` takes as normalised already, so that the agent's exploration noise spans the whole
    ``[-1, 1]`` (docs/targets.md). Warns when the data spans under a quarter of the box in some dimension (a box
    given in the stored units of a rescaled file, or another robot's).

    Raises ``ValueError`` naming ``data.action_bounds`` for malformed bounds
    (:func:`robopretrain.envs.action_units.declared_bounds`) or a size other than the actions';
    :class:`DatasetError` naming the dimensions when the file's actions leave the box (by more than 1e-5 of its
    span): the box must hold the data."""
    units = declared_bounds(bounds)
    assert units is not None
    if units.dim != info.action_dim:
        raise ValueError(f"data.action_bounds has {units.dim} value(s) per bound, but the actions are "
                         f"{info.action_dim}-D ({info.path})")
    low, high = np.asarray(units.low, np.float64), np.asarray(units.high, np.float64)
    lo, hi = action_bounds(path, info)  # as stored; in the env's units through the file's record, if any
    recorded = file_action_units(info)
    if recorded is not None:
        lo, hi = (recorded.to_env(v).astype(np.float64) for v in (lo, hi))
    slack = 1e-5 * (high - low)
    out = np.flatnonzero((lo < low - slack) | (hi > high + slack))
    if out.size:
        raise DatasetError(f"{info.path}: actions reach low {np.round(lo[out], 4).tolist()}, high "
                           f"{np.round(hi[out], 4).tolist()} in dimension(s) {out.tolist()}, outside "
                           f"data.action_bounds (low {low[out].tolist()}, high {high[out].tolist()}) there: the "
                           "bounds are the env's action box in the env's units and must hold the actions (another "
                           "robot's or controller's units? dimensions in another order? or raw outputs of a policy "
                           "whose env clips them, as Meta-World's scripted policies give: clip them to the box in the "
                           "file, as the env executed them)")
    share = (hi - lo) / (high - low)
    thin = np.flatnonzero(share < 0.25)
    if thin.size:
        stored = (f"; this file stores its actions rescaled from low {list(recorded.low)}, high "
                  f"{list(recorded.high)} (env_args['action_normalization']): the box is in those units"
                  if recorded is not None else "")
        log.warning("%s: the actions span only %s of data.action_bounds in dimension(s) %s, so the agent's actions "
                    "there use that share of [-1, 1] and its exploration noise spans the rest%s", info.path,
                    [f"{v:.0%}" for v in share[thin]], thin.tolist(), stored)
    log.info("%s: actions rescaled to [-1, 1] by data.action_bounds (low %s, high %s); %s", info.path,
             list(units.low), list(units.high), user)
    return units


def warn_ignored_action_bounds(bounds: Mapping[str, Any] | None, units: ActionNormalization | None,
                               where: str) -> bool:
    """Warn (and return True) when ``data.action_bounds`` is set for a run whose agent's action units are fixed
    already (``units``: from a checkpoint, :func:`robopretrain.envs.action_units.describe`) and differ from them:
    the setting takes no effect there. The agent's units are chosen once, by stage 2's data (train it again with the
    setting); a file's actions are re-expressed in them through the file's own record. Raises ``ValueError`` for
    malformed bounds (:func:`robopretrain.envs.action_units.declared_bounds`)."""
    declared = declared_bounds(bounds)
    if declared is None or declared.same(units):
        return False
    log.warning("%s: data.action_bounds (low %s, high %s) takes no effect: the agent's action units were fixed by "
                "the data it was first trained on (%s); to act in the declared units, train a fresh stage 2 (no "
                "init=) with data.action_bounds set", where, list(declared.low), list(declared.high),
                describe_units(units))
    return True


ACTION_RANGE_HINT = ("with data.actions=auto (the stage scripts' default) such actions are rescaled per dimension and "
                     "every env maps them back; from Python, load_offline_dataset(path, ..., action_units="
                     "data_action_units(path, read_info(path))) does the same")


def check_action_range(trans: Transitions, where: str, hint: str = ACTION_RANGE_HINT,
                       units: ActionNormalization | None = None) -> None:
    """Raise :class:`DatasetError` naming the first demo whose actions leave ``[-1, 1]`` (tolerance 1e-6) and
    ``hint`` (what the caller's user can do): the toolkit's policies and models act in ``[-1, 1]``; call it after the
    actions are re-expressed in the agent's units. With ``units`` (env units, the agent's), env-unit actions are
    checked against that box instead (before :func:`robopretrain.envs.action_units.reexpress` clips them)."""
    scaled = trans.actions if units is None else units.to_agent(trans.actions)
    if scaled.size and np.abs(scaled).max() > 1.0 + 1e-6:
        row = int(np.flatnonzero(np.abs(scaled).max(1) > 1.0 + 1e-6)[0])
        where_demo = f"{where}: data/{trans.demo_names[trans.episode_ids[row]]}/actions"
        if units is not None:
            share = float((np.abs(scaled) > 1.0 + 1e-6).mean())
            raise DatasetError(f"{where_demo}: {share:.2%} of the values lie outside the agent's action range (low "
                               f"{list(units.low)}, high {list(units.high)}): {hint}")
        raise DatasetError(f"{where_demo}: values outside [-1, 1] (max |a| = {np.abs(scaled).max():.4g}); the "
                           f"toolkit's policies act in [-1, 1]: {hint}")


def load_offline_dataset(
    path: str | os.PathLike,
    spec: ObsSpec,
    reward: RewardSettings,
    *,
    obs_map: Mapping[str, str] | None = None,
    tasks: Sequence[str] | None = None,
    mask: str | None = None,
    max_demos: int | None = None,
    skip_short: bool = False,
    task_id: int | None = None,
    rewards_needed: bool = True,
    rewards_from_success: bool = False,
    act_dim: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    storage: str = "memory",
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    action_units: ActionNormalization | None | str = FILE_UNITS,
    units_fixed: bool = False,
    slot_advice: str | None = None,
) -> OfflineDataset | DiskDataset:
    """The selected demos of ``path`` as an offline dataset of observation dicts (see the module docstring).

    ``max_demos`` keeps the first demos of the selection; ``skip_short`` leaves out demos of fewer than 2 steps
    (:func:`selected_demos`). ``act_dim`` (when given) must equal the file's action
    size. ``action_units``: the agent's action units, the actions re-expressed in them from the file's
    (``env_args["action_normalization"]``; :func:`robopretrain.envs.action_units.reexpress`); ``"file"`` (the
    default) keeps the file's; ``units_fixed``: those units were fixed before this file (by other data or a
    checkpoint), so a file without a record whose actions leave them is refused saying to record them (else the
    advice is ``data.actions=auto``). ``slot_advice``: what to do when the task ids do not fit the one-hot, said
    by a caller that knows which settings apply (a size fixed by a checkpoint; the mix's own settings); the default
    names stage 2's ``obs.num_tasks`` and ``data.task_id``. ``storage``: ``auto`` | ``memory`` | ``disk``;
    ``workers`` (disk): prefetch threads; ``rank`` / ``world_size`` (disk): this process samples its shard only.
    Raises :class:`DatasetError` naming the file and key for every contract violation.
    """
    if storage not in STORAGES:
        raise ValueError(f"data.storage={storage!r}; expected one of {STORAGES}")
    info = read_info(path)
    key_map = dict(obs_map or {})
    try:  # the spec's sizes are the file's (a spec of another file, or one written by hand, loaded silently)
        spec_of_data(path, spec.low_dim_keys, spec.rgb_keys, spec.num_tasks, obs_map=key_map, info=info).check_fits(
            spec, mine=str(info.path), theirs="the observation spec it is loaded for")
    except ValueError as exc:  # a size that differs, or a part the file lacks
        raise DatasetError(str(exc)) from None
    if act_dim is not None and info.action_dim != int(act_dim):
        raise DatasetError(f"{info.path}: actions have {info.action_dim} dims; the agent has {act_dim}")
    demos = selected_demos(info, tasks=tasks, mask=mask, max_demos=max_demos, skip_short=skip_short)
    ours = [*spec.rgb_keys, *spec.low_dim_keys]
    file_keys = [key_map.get(k, k) for k in ours]
    if storage == "auto":
        storage = choose_storage(info, demos, [key_map.get(k, k) for k in spec.rgb_keys])
    on_disk = storage == "disk" and bool(spec.rgb_keys)
    if storage == "disk" and not on_disk:  # (it was dropped without a word; under torchrun no rank got a shard)
        log.warning("%s: data.storage=disk reads camera frames from a frame index, and the agent reads no camera: "
                    "the data is held in memory, where every torchrun rank samples all of it", info.path)
    if on_disk:  # the index holds the non-image data too: no per-demo HDF5 reads
        check_lengths(str(info.path), [info.demo(d) for d in demos])
        index = open_index(path, [key_map.get(k, k) for k in spec.rgb_keys], info=info)
        trans = index.transitions(info, demos, [key_map.get(k, k) for k in spec.low_dim_keys])
        check_finite_transitions(trans)
    else:
        trans = load_transitions(path, file_keys, demos=demos, action_range=False,
                                 low_dim=[key_map.get(k, k) for k in spec.low_dim_keys], info=info)
        for src in {key_map.get(k, k) for k in spec.rgb_keys}:  # grey cameras read as RGB (spec_from_shapes)
            stored = info.obs_specs[src][0]
            trans.obs[src] = as_rgb(trans.obs[src], stored)
            if src in trans.next_obs:
                trans.next_obs[src] = as_rgb(trans.next_obs[src], stored)
    ids = np.full(len(trans), int(task_id), dtype=np.int64) if task_id is not None else trans.task_ids
    if spec.num_tasks and (ids.min() < 0 or ids.max() >= spec.num_tasks):
        if slot_advice is None:
            slot_advice = ("the slot given for the data: data.task_id in stage 2, the target's task_id in stage 3; "
                           "or a larger obs.num_tasks in stage 2" if task_id is not None
                           else "the file's task_id attributes: set obs.num_tasks above them in stage 2, or "
                           "data.task_id to put the data in one slot")
        raise DatasetError(f"{info.path}: task ids {sorted(set(ids.tolist()))} do not fit a task one-hot of size "
                           f"{spec.num_tasks} ({slot_advice})")
    hint = ACTION_RANGE_HINT
    file_units = file_action_units(info)
    if file_units is not None:  # data.actions=auto takes the record at its word: the advice above would not help
        hint = (f"the file records env_args['action_normalization'] (low={list(file_units.low)}, high="
                f"{list(file_units.high)}), which says its "
                "actions are already rescaled from those units to [-1, 1], and they are not: rescale them "
                "(2 (a - low) / (high - low) - 1) or remove the record (data.actions=auto then rescales them itself)")
    if action_units != FILE_UNITS:
        if file_units is None and units_fixed:  # the agent's units came first: data.actions=auto cannot rescale it
            hint = (f"this file records no action units, so its actions are read as the env's own; the agent acts "
                    f"in {describe_units(action_units)}, fixed by the data it was first trained on. If this file is "
                    "in the robot's own units and that data was rescaled to [-1, 1], record the rescaling in the "
                    "rescaled file (env_args['action_normalization'] = {'low': [...], 'high': [...]}, README 'Bring "
                    "your data'), so each is mapped through the env's units; files of another robot cannot be mixed")
            if action_units is not None:  # refused before reexpress would clip them into the agent's range
                check_action_range(trans, str(info.path), hint, units=action_units)
        trans.actions = reexpress(trans.actions, file_units, action_units, str(info.path))
    check_action_range(trans, str(info.path), hint)
    rewards, dones = trans.rewards, trans.dones
    warn_inner_terminals(str(info.path), dones, trans.episode_ids, trans.demo_names, info.env_args)
    success = [bool(m.get("success", False)) for m in trans.ep_meta]
    unrewarded = info.unrewarded(demos)
    if rewards_needed and unrewarded:  # stored without rewards: read as zeros
        check_reward_free(str(info.path), unrewarded, len(demos), trans.ep_meta, rewards_from_success)
        rewards, dones = _rewards_from_success(rewards, dones, trans.episode_ids, success)
        log.warning("%s: %d of %d episodes have no rewards; every episode's rewards rebuilt from ep_meta success "
                    "(%d successful episodes; %d stored reward sequences replaced)", info.path, len(unrewarded),
                    len(demos), sum(success), len(demos) - len(unrewarded))
    elif rewards_needed and unrewarded_successes(rewards, trans.ep_meta):
        if not rewards_from_success:
            raise DatasetError(
                f"{info.path}: no positive reward in the selected data although {sum(success)} of {len(success)} "
                "episodes are marked successful in ep_meta (a recorder that never wrote the success reward?); "
                "sparse-reward RL would see no success at all. Set data.rewards_from_success=true to rebuild the "
                "reward from ep_meta, or fix the file")
        rewards, dones = _rewards_from_success(rewards, dones, trans.episode_ids, success)
        log.warning("%s: rewards rebuilt from ep_meta success (%d successful episodes)", info.path, sum(success))
    elif rewards_needed and rewards_from_success:  # a rescue for missing or all-zero rewards, not a reward choice
        log.warning("%s: data.rewards_from_success=true takes no effect: the file stores rewards that can tell "
                    "success from failure (some positive, or not all equal, as -distance or OGBench's -1/0 rewards), "
                    "and they are used (the option rebuilds rewards only where they are missing, or one constant "
                    "that is never positive)", info.path)
    stored = set(info.unrewarded(demos)) if not rewards_needed else set()  # read as zeros: outcome unknown
    known = ["success" in m or name not in stored for m, name in zip(trans.ep_meta, trans.demo_names)]
    warn_failed_terminals(str(info.path), rewards, dones, trans.episode_ids, success, known)
    if rewards_needed:
        warn_success_disagreement(str(info.path), rewards, trans.episode_ids, trans.ep_meta, trans.demo_names)
        warn_open_successes(str(info.path), dones, trans.episode_ids, success, rewards)
        warn_dense_rewards(str(info.path), rewards, reward)

    memory_keys = [k for k in ours if not (on_disk and k in spec.rgb_keys)]

    def parts(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: obs[key_map.get(k, k)] for k in memory_keys}
        if spec.num_tasks:
            out[TASK_ID] = ids
        return out

    scaled = scale_rewards(rewards, reward.scale, reward.bias)
    r_neg = sparse_negative_reward(reward.scale, reward.bias) if reward.sparse else None
    # the data's action at s' (ReBRAC's critic penalty): the next row's action inside an episode, else its own
    # episodes are the demos (and terminals): returns-to-go and ReBRAC's next actions stay inside them
    starts = episode_starts(len(trans), episode_ids=trans.episode_ids, terminals=dones)
    low_dim = [k for k in spec.low_dim_keys if k in trans.obs and k in trans.next_obs]
    breaks = breaks_inside_episodes({k: trans.obs[k] for k in low_dim}, {k: trans.next_obs[k] for k in low_dim},
                                    trans.episode_ids) if low_dim else 0
    if breaks:
        same = copies_of_obs({k: trans.obs[k] for k in low_dim}, {k: trans.next_obs[k] for k in low_dim})
        copied = (f"; next_obs equals obs itself at {same} of {len(trans)} steps: written from the same step, not the "
                  "next one (off by one)?" if same * 2 >= len(trans) else "")
        per_key = {k: breaks_inside_episodes(trans.obs[k], trans.next_obs[k], trans.episode_ids) for k in low_dim}
        which = ", ".join(f"{k} at {n}" for k, n in per_key.items() if n)  # the parts that break, not every part
        log.warning("%s: at %d steps inside a demo the next_obs is not the next step's obs (> 1e-6 apart: logged "
                    "separately, noise, or several episodes in one demo; steps per part: %s); episodes are the demos, "
                    "so returns-to-go run through them; split a demo that holds several episodes%s", info.path,
                    breaks, which, copied)
    next_actions = next_actions_of(trans.actions, starts)
    mc = returns_to_go(scaled, dones, reward.discount, episode_ids=trans.episode_ids, sparse_negative_reward=r_neg)
    if not on_disk:  # said as the disk path says it: a wrong mask or task filter shows in the counts
        log.info("%s: %d transitions of %d demos, in memory%s", info.path, len(trans), len(demos),
                 f" (frames of {list(spec.rgb_keys)})" if spec.rgb_keys else "")
        return OfflineDataset(parts(trans.obs), trans.actions, scaled, parts(trans.next_obs), dones, mc,
                              next_actions=next_actions, episode_starts=starts, device=device, seed=seed)
    sel = _selected_transitions(index.demo_starts(), info, trans)
    rows = {k: index.rows[key_map.get(k, k)][:, sel] for k in spec.rgb_keys}
    fields = {"observations": parts(trans.obs), "actions": trans.actions, "rewards": scaled,
              "next_observations": parts(trans.next_obs), "dones": dones, "mc_returns": mc,
              NEXT_ACTIONS: next_actions}
    stores = {k: index.store(key_map.get(k, k)) for k in spec.rgb_keys}
    order = [*spec.rgb_keys, *spec.low_dim_keys] + ([TASK_ID] if spec.num_tasks else [])
    log.info("%s: %d transitions of %d demos, frames of %s read from %s (%d prefetch threads)", info.path,
             len(trans), len(demos), list(spec.rgb_keys), index.folder, workers)
    return DiskDataset(fields, stores, rows, order, device=device, seed=seed, workers=workers, rank=rank,
                       world_size=world_size, cache_dir=index.folder)


def frame_bytes(info: DatasetInfo, demos: Sequence[str], camera_keys: Sequence[str]) -> int:
    """Bytes the selected demos' frames take in memory on the in-memory path (``obs`` and ``next_obs``; RGB):
    :func:`robopretrain.data.frames.memory_bytes` of the selection."""
    return memory_bytes(info, camera_keys, demos)


def choose_storage(info: DatasetInfo, demos: Sequence[str], camera_keys: Sequence[str]) -> str:
    """``disk`` when the selection's frames exceed :data:`MEMORY_LIMIT_BYTES` in memory, else ``memory``."""
    size = frame_bytes(info, demos, camera_keys)
    choice = "disk" if size > MEMORY_LIMIT_BYTES else "memory"
    log.info("data.storage=auto: frames take %.2f GB in memory (limit %.2f GB): %s", size / 1e9,
             MEMORY_LIMIT_BYTES / 1e9, choice)
    return choice


def _selected_transitions(demo_starts: Mapping[str, int], info: DatasetInfo, trans: Transitions) -> np.ndarray:
    """File-order transition indices of the selected demos, in the order of ``trans``."""
    return np.concatenate([demo_starts[d] + np.arange(info.demo(d).num_samples) for d in trans.demo_names])


__all__ = ["MEMORY_LIMIT_BYTES", "STORAGES", "RewardSettings", "choose_storage", "default_num_tasks", "frame_bytes",
           "load_offline_dataset", "spec_of_data"]
