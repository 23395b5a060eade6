"""Inspect a dataset: a summary table and a contact-sheet PNG, for robot HDF5 files and video folders.

``python -m robopretrain.data.inspect FILE_OR_FOLDER [--out PNG] [--frames N] [--per-task K] [--clips C]``

- robomimic HDF5 (the "Robot dataset" contract): per task the episode count, success rate (``ep_meta``
  JSON ``success``, else sparse rewards whose last step is 1, said in a note; a warning when episodes marked
  successful have no positive reward), mean/min/max length and transitions; the observation keys with their per-step
  shapes
  and dtypes, and the actions' (a warning naming the demos whose action size differs from the first demo's: training
  refuses such a file); a warning naming the demos and steps where ``dones`` is 1 before the last step (training
  reads each as a terminal); the masks with their sizes. Contact sheet: ``--per-task`` episodes per task as rows (labelled
  task / demo / outcome), ``--frames`` frames evenly spaced in time as columns.
- LeRobot v3 folders, Minari folders, D4RL-style HDF5 and OGBench ``.npz``: summarized (and sheeted) through
  the converted copy :func:`robopretrain.data.convert.as_robomimic` makes (the same one training reads), with a
  first line naming the format and that copy.
- video folder with ``manifest.csv`` (the "Video dataset" contract), a folder of clips without one or a single
  video file (as stage 1 reads them, frames counted): clip count, frames per clip, the texts and how often each
  occurs; ``--verify`` also counts every clip's frames against the manifest. Contact
  sheet: ``--clips`` clips spread over the manifest as rows, labelled with their text.

The PNG goes to ``--out`` or next to the input as ``<name>_contact_sheet.png`` (written atomically).
Bad input (no such path, not an HDF5 file, a truncated file, no ``data/`` group, a folder without a
manifest) ends with one line naming the file and what was expected, and exit code 2.

HDF5 files are read with h5py directly (attributes and shapes, then only the frames the sheet shows).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from robopretrain.data.convert import as_robomimic, detect_format
from robopretrain.data.episodes import ConversionError, image_layout
from robopretrain.data.hdf5 import DatasetError, check_layout, nested_obs, open_failure, source_format, success_flag
from robopretrain.data.returns import has_success_signal, is_sparse_success_reward
from robopretrain.data.video import (MANIFEST_NAME, VIDEO_SUFFIXES, VideoDatasetError, VideoEntry, clip_entries,
                                     count_frames, read_frames)
from robopretrain.files import atomic_file

DEMO_RE = re.compile(r"^demo_(\d+)$")
DEFAULT_IMAGE_KEY = "agentview_image"
SMALL_ACTIONS = 0.25  # a dimension whose actions never leave +-this may be in an env's own narrow units (a note)


class InspectError(ValueError):
    """The input is not a dataset this tool understands; the message names the file and what was expected."""


# ----------------------------------------------------------------------------- robot HDF5

@dataclass
class TaskStats:
    """Per-task episode statistics of a robot dataset."""

    demos: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[bool | None] = field(default_factory=list)
    # a success signal in the episode's rewards: any reward > 0, or rewards that are not one constant (OGBench's
    # -1 per step and 0 at the goal); None: no rewards stored. The same rule as the refusal in data/dataset.py
    rewarded: list[bool | None] = field(default_factory=list)
    # success read from sparse rewards (every reward 0 or 1: the last one is 1) where ep_meta has no flag (robomimic's
    # own files have none); None where ep_meta has one, no rewards are stored or they are not sparse
    reward_successes: list[bool | None] = field(default_factory=list)
    # where the rewards are sparse (every reward 0 or 1): whether the last one is 1, whatever ep_meta says; else None
    sparse_ends: list[bool | None] = field(default_factory=list)
    # ep_meta.source_episode: the episode id in the file a converter read (robopretrain.data.convert), else None
    source_episodes: list[Any] = field(default_factory=list)

    @property
    def unrewarded_successes(self) -> int:
        """Episodes of 2 steps or more marked successful in ``ep_meta`` whose stored rewards carry no success signal
        (one constant, never positive). A one-step episode's one reward is "one constant" whatever the rewards mean
        (dense -distance rewards were counted), and stage 2 trains on no such episode (refused, or skipped with
        ``data.skip_short_demos``), so it is left out, as stage 2 leaves it out of the same check."""
        return sum(1 for s, r, n in zip(self.successes, self.rewarded, self.lengths) if s and r is False and n >= 2)

    @property
    def rewarded_failures(self) -> int:
        """Episodes marked failed in ``ep_meta`` whose sparse rewards end on 1 (RL reads them as successes)."""
        return sum(1 for s, end in zip(self.successes, self.sparse_ends) if s is False and end)

    @property
    def success_rate(self) -> float | None:
        """The share of successful episodes: ep_meta's flag, else what sparse rewards say; None when neither does."""
        known = self.known_successes
        return float(np.mean(known)) if known else None

    @property
    def known_successes(self) -> list[bool]:
        return [s if s is not None else r for s, r in zip(self.successes, self.reward_successes)
                if s is not None or r is not None]


@dataclass
class Hdf5Summary:
    """What ``summarize_hdf5`` found in a robomimic file."""

    path: Path
    tasks: dict[str, TaskStats]
    obs: dict[str, tuple[tuple[int, ...], str]]  # key -> (per-step shape, dtype); shape () when it varies
    actions: tuple[tuple[int, ...], str] | None
    masks: dict[str, int]
    total_attr: int | None
    env_name: str | None
    inconsistent_obs: list[str]
    # "obs/<key>" or "actions" -> where its first NaN or inf is ("demo_3 row 4"), low-dim parts and actions only
    non_finite: dict[str, str] = field(default_factory=dict)
    stale_masks: dict[str, list[str]] = field(default_factory=dict)  # mask -> demo names it lists that data/ lacks
    # demo -> its per-step action shape, for the demos whose actions differ in shape from most demos' (``actions``)
    odd_actions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # demo -> the steps before its last where dones is 1 (the contract: 1 only where the episode truly ended)
    inner_dones: dict[str, list[int]] = field(default_factory=dict)
    # demo -> the one of task / task_id it lacks, for demos that hold the other (training refuses them)
    half_task: dict[str, str] = field(default_factory=dict)
    # demo -> (its num_samples attribute, the row counts its arrays hold), where they disagree (training refuses it)
    wrong_rows: dict[str, tuple[int, list[int]]] = field(default_factory=dict)
    # task_id -> the task names of the demos that hold it, where there are several (training refuses such a file
    # unless data.task_id puts every task in one slot: robopretrain.build.check_file_task_slots)
    shared_slots: dict[int, list[str]] = field(default_factory=dict)
    # obs key -> the demos whose next_obs lacks it (the stages read a copy with it derived: resize_robomimic)
    missing_next: dict[str, list[str]] = field(default_factory=dict)
    # datasets inside groups under obs/ (obs/arm/pos: "arm/pos"), which the stages do not read
    nested_obs: list[str] = field(default_factory=list)
    # entry under mask/ that is no 1-D array of demo names -> what it is (refused only when selected)
    unnamed_masks: dict[str, str] = field(default_factory=dict)
    # the stages' reader's first refusal of the file (robopretrain.data.hdf5.check_layout), None when it reads it
    layout_problem: str | None = None
    # per-dimension min and max of every demo's finite actions (None: no actions read)
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    # env_args["action_normalization"] as recorded (None: none), and why training refuses it (None: it reads it)
    action_units: dict[str, Any] | None = None
    units_problem: str | None = None
    # demos that end on done=1 without success (ep_meta's flag, else a last reward <= 0): the warning training gives
    failed_terminals: list[str] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        return int(sum(sum(s.lengths) for s in self.tasks.values()))


def _demo_names(group: h5py.Group) -> list[str]:
    return sorted((k for k in group.keys() if DEMO_RE.match(k)), key=lambda k: int(DEMO_RE.match(k).group(1)))


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value.item())
    return str(value)


def _ep_meta(demo: h5py.Group, path: Path) -> dict[str, Any] | None:
    raw = demo.attrs.get("ep_meta")
    if raw is None:
        return None
    try:
        meta = json.loads(_as_str(raw))
    except json.JSONDecodeError as exc:
        raise InspectError(f"{path}: {demo.name} attribute ep_meta is not JSON ({exc})") from exc
    return meta if isinstance(meta, dict) else None


def _success(meta: dict[str, Any] | None, demo: h5py.Group, path: Path) -> bool | None:
    if meta is None:
        return None
    try:
        return success_flag(meta.get("success"), f"{path}: {demo.name}")
    except DatasetError as exc:
        raise InspectError(str(exc)) from None


def open_hdf5(path: Path) -> h5py.File:
    """Open a robot dataset for reading, turning every failure into one clear ``InspectError``."""
    if not h5py.is_hdf5(path):
        raise InspectError(f"{path}: not an HDF5 file (expected a robomimic HDF5 dataset or a video folder "
                           f"with {MANIFEST_NAME})")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InspectError(f"{path}: {open_failure(exc)}") from exc
    if "data" not in f or not isinstance(f["data"], h5py.Group):
        f.close()
        raise InspectError(f"{path}: no 'data' group (expected the robomimic layout data/demo_<i>/...)")
    return f


def summarize_hdf5(path: str | os.PathLike) -> Hdf5Summary:
    """Per-task counts, success rates and lengths, observation keys, masks (attributes and shapes; of the data only
    the low-dim parts and actions are read, for NaN / inf)."""
    path = Path(path)
    with open_hdf5(path) as f:
        try:
            summary = _summarize_open_file(f, path)
        except (OSError, KeyError, RuntimeError) as exc:
            raise InspectError(f"{path}: unreadable part of the file, it may be truncated or corrupt ({exc})") from exc
    try:
        check_layout(path)
    except DatasetError as exc:
        summary.layout_problem = str(exc)
    return summary


def _summarize_open_file(f: h5py.File, path: Path) -> Hdf5Summary:
    data = f["data"]
    demos = _demo_names(data)
    if not demos:
        raise InspectError(f"{path}: no data/demo_<i> groups (expected the robomimic layout data/demo_<i>/...)")
    tasks: dict[str, TaskStats] = {}
    obs: dict[str, tuple[tuple[int, ...], str]] = {}
    inconsistent: set[str] = set()
    non_finite: dict[str, str] = {}
    odd_actions: dict[str, tuple[int, ...]] = {}
    inner_dones: dict[str, list[int]] = {}
    half_task: dict[str, str] = {}
    slots: dict[int, set[str]] = {}  # task_id -> task names (demos without both attributes: slot 0)
    wrong_rows: dict[str, tuple[int, list[int]]] = {}
    action_shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    missing_next: dict[str, list[str]] = {}
    nested: set[str] = set()
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    failed_terminals: list[str] = []
    for name in demos:
        demo = data[name]
        if ("task" in demo.attrs) != ("task_id" in demo.attrs):  # as the reader refuses it (hdf5._demo_info)
            half_task[name] = "task_id" if "task" in demo.attrs else "task"
        task = _as_str(demo.attrs["task"]) if "task" in demo.attrs else "(no task attr)"
        slot = (0 if name not in half_task and "task" not in demo.attrs  # neither attribute: slot 0
                else _int_attr(demo.attrs["task_id"]) if name not in half_task else None)
        if slot is not None:
            slots.setdefault(slot, set()).add(task)
        stats = tasks.setdefault(task, TaskStats())
        stats.demos.append(name)
        if "num_samples" in demo.attrs:
            length = int(demo.attrs["num_samples"])
        elif "actions" in demo:
            length = int(demo["actions"].shape[0])
        else:
            raise InspectError(f"{path}: data/{name} has neither a num_samples attribute nor actions")
        stats.lengths.append(length)
        rows = sorted({int(ds.shape[0]) for ds in _per_step_datasets(demo)})
        if "num_samples" in demo.attrs and rows and rows != [length]:
            wrong_rows[name] = (length, rows)
        meta = _ep_meta(demo, path)
        stats.successes.append(_success(meta, demo, path))
        stats.source_episodes.append(meta.get("source_episode") if meta is not None else None)
        rewards = demo.get("rewards")
        values = np.asarray(rewards[()], np.float64).reshape(-1) if isinstance(rewards, h5py.Dataset) else None
        stats.rewarded.append(has_success_signal(values) if values is not None else None)
        sparse = values is not None and values.size > 0 and is_sparse_success_reward(values)
        stats.reward_successes.append(bool(values[-1] > 0) if sparse and stats.successes[-1] is None else None)
        stats.sparse_ends.append(bool(values[-1] > 0) if sparse else None)
        if "obs" in demo:
            for key, ds in demo["obs"].items():
                if not isinstance(ds, h5py.Dataset):  # a group: what h5py makes of a key "arm/pos"
                    continue
                spec = (tuple(ds.shape[1:]), str(ds.dtype))
                if key in obs and obs[key] != spec:
                    inconsistent.add(key)
                obs.setdefault(key, spec)
        if isinstance(demo.get("obs"), h5py.Group):
            nested.update(nested_obs(demo["obs"]))
            nxt = demo.get("next_obs")
            for key, ds in demo["obs"].items():
                if isinstance(ds, h5py.Dataset) and (not isinstance(nxt, h5py.Group) or key not in nxt):
                    missing_next.setdefault(key, []).append(name)
        if isinstance(demo.get("actions"), h5py.Dataset):
            action_shapes[name] = (tuple(demo["actions"].shape[1:]), str(demo["actions"].dtype))
            acts = demo["actions"]
            if acts.ndim == 2 and acts.shape[0] and acts.dtype.kind == "f":
                a = np.asarray(acts[()], np.float64)
                lows.append(np.where(np.isfinite(a), a, np.inf).min(0))
                highs.append(np.where(np.isfinite(a), a, -np.inf).max(0))
        for group in ("obs", "next_obs"):
            for key, ds in (demo[group].items() if isinstance(demo.get(group), h5py.Group) else []):
                if isinstance(ds, h5py.Dataset):  # (a group's datasets are not read: said as nested_obs)
                    _find_non_finite(ds, f"{group}/{key}", name, non_finite)
        for key in ("actions", "rewards"):
            if isinstance(demo.get(key), h5py.Dataset):
                _find_non_finite(demo[key], key, name, non_finite)
        dones = demo.get("dones")
        if isinstance(dones, h5py.Dataset) and dones.ndim == 1 and dones.dtype.kind in "fiub":
            inner = np.flatnonzero(np.asarray(dones[()])[:-1] > 0)  # as the loader reads them (warn_inner_terminals)
            if inner.size:
                inner_dones[name] = inner.tolist()
            # as the loader's warn_failed_terminals: an outcome known (a flag, or rewards) that is no success
            last_done = dones.shape[0] and float(dones[-1]) > 0
            flag = stats.successes[-1]
            failed = flag is False or (flag is None and values is not None and values.size and values[-1] <= 0)
            if last_done and failed:
                failed_terminals.append(name)
    masks, stale, no_names = {}, {}, {}
    if "mask" in f:
        for name, ds in f["mask"].items():
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind not in "SOU":  # as the loader reads
                no_names[name] = f"{ds.dtype} {ds.shape}" if isinstance(ds, h5py.Dataset) else "a group"
                continue
            masks[name] = int(ds.shape[0])
            gone = sorted({_as_str(x) for x in ds[()]} - set(data.keys()))
            if gone:
                stale[name] = gone
    total = int(data.attrs["total"]) if "total" in data.attrs else None
    env_name = None
    if "env_args" in data.attrs:
        try:
            env_args = json.loads(_as_str(data.attrs["env_args"]))
            env_name = env_args.get("env_name")
            if source_format(env_args) == "ogbench":  # task-done steps marked by design (read_ogbench), not a defect
                inner_dones = {}
        except (json.JSONDecodeError, AttributeError):
            env_name = "(env_args is not JSON)"
    shared = {slot: sorted(names) for slot, names in sorted(slots.items()) if len(names) > 1}
    units, units_problem = _recorded_action_units(data, action_shapes)
    actions = None
    if action_shapes:  # the most common shape (the first demo's among equals); the others are the odd demos
        counts = Counter(shape for shape, _ in action_shapes.values())
        common = max(counts, key=lambda shape: counts[shape])
        actions = next(spec for spec in action_shapes.values() if spec[0] == common)
        odd_actions = {name: shape for name, (shape, _) in action_shapes.items() if shape != common}
    return Hdf5Summary(path, tasks, obs, actions, masks, total, env_name, sorted(inconsistent), non_finite, stale,
                       odd_actions, inner_dones, half_task, wrong_rows, shared_slots=shared, missing_next=missing_next,
                       action_low=_bounds(lows, np.minimum), action_high=_bounds(highs, np.maximum),
                       action_units=units, units_problem=units_problem, failed_terminals=failed_terminals,
                       nested_obs=sorted(nested), unnamed_masks=no_names)


def _bounds(parts: list[np.ndarray], combine: Any) -> list[float] | None:
    """The per-dimension extreme of per-demo ``parts`` (all of one size), None when there are none or they differ."""
    if not parts or len({p.shape for p in parts}) != 1:
        return None
    return [float(x) for x in combine.reduce(np.stack(parts))]


def _recorded_action_units(data: h5py.Group, shapes: dict[str, tuple[tuple[int, ...], str]]
                           ) -> tuple[dict[str, Any] | None, str | None]:
    """``env_args["action_normalization"]`` and training's refusal of it (robopretrain.data.dataset.file_action_units:
    malformed, or of another size than the actions), or None."""
    from robopretrain.envs.action_units import ENV_ARGS_KEY, of_env_args

    try:
        env_args = json.loads(_as_str(data.attrs["env_args"]))
    except (KeyError, json.JSONDecodeError, AttributeError, TypeError):
        return None, None
    if not isinstance(env_args, dict) or env_args.get(ENV_ARGS_KEY) is None:
        return None, None
    try:
        units = of_env_args(env_args)
    except ValueError as exc:
        return env_args[ENV_ARGS_KEY], f"env_args: {exc}"
    dims = {shape[0] for shape, _ in shapes.values() if len(shape) == 1}
    if units is not None and dims and units.dim not in dims:
        return env_args[ENV_ARGS_KEY], f"env_args action_normalization has {units.dim} dims, the actions {min(dims)}"
    return env_args[ENV_ARGS_KEY], None


def _int_attr(value: Any) -> int | None:
    """A ``task_id`` attribute as an int; None when it is not a whole number (the reader names that)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _per_step_datasets(demo: h5py.Group) -> list[h5py.Dataset]:
    """A demo's arrays of one row per step (obs and next_obs parts, actions, rewards, dones), as far as present."""
    found = [demo.get(k) for k in ("actions", "rewards", "dones")]
    for group in ("obs", "next_obs"):
        if isinstance(demo.get(group), h5py.Group):
            found += list(demo[group].values())
    return [ds for ds in found if isinstance(ds, h5py.Dataset) and ds.ndim >= 1]


def _find_non_finite(ds: h5py.Dataset, key: str, demo: str, found: dict[str, str]) -> None:
    """Record in ``found[key]`` the first row of a float dataset of 1 or 2 dimensions (low-dim parts, actions,
    rewards; frames are not read) holding a NaN or inf."""
    if key in found or ds.dtype.kind != "f" or ds.ndim > 2 or (ds.ndim and ds.shape[0] == 0):
        return  # frames, other types, or an empty demo's rows
    rows = ds[()].reshape(ds.shape[0], -1) if ds.ndim else ds[()].reshape(1, 1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        found[key] = f"{demo} row {int(bad[0])}"


def layout_note(shape: tuple[int, ...], dtype: str, key: str = "") -> str:
    """What the toolkit's camera contract (uint8 ``(H, W, 3)``, square) says of a per-step shape that looks like a
    picture (:func:`robopretrain.data.episodes.image_layout`'s rule) stored under ``key``, or "" when nothing."""
    layout = image_layout(shape, dtype)
    if layout is None:
        return ""
    not_square = "not square: training needs square frames (data.image_size=S resizes them, in a cached copy)"
    grey = "grey frames: a camera of the stages, read as RGB (grey in each channel)"
    if layout == "grey":
        return grey + (f"; {not_square}" if shape[0] != shape[1] else "")
    if dtype != "uint8":
        channels = shape[0] if layout == "channels_first" else shape[2]
        if channels == 1:
            return f"{dtype} frames of one channel (a depth map?): no colour camera; leave it out of obs.rgb"
        if key.endswith("_image"):
            return (f"an image of dtype {dtype}: cameras are read as uint8 (0-255); data.image_size=S reads a cached "
                    "copy with it as uint8 (float colour in [0, 1])")
        return (f"an image of dtype {dtype}: cameras are read as uint8 (0-255); write it uint8 (data.image_size "
                f"converts float frames only of keys named *_image: rename it '{key}_image')")
    if layout == "channels_first":
        return "channels first? cameras are read as (H, W, 3): write the frames channels last, or data.image_size=S"
    h, w, c = shape
    if c == 1:
        return grey + (f"; {not_square}" if h != w else "")
    if c != 3:
        return f"{c} channel(s): cameras are read as (H, W, 3) RGB; write them RGB"
    return not_square if h != w else ""


_FLAG = {True: "yes", False: "no", None: "-"}


def _rounded(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def format_demo_table(s: Hdf5Summary) -> str:
    """One line per demo, in the file's order: name, task, steps, success (ep_meta; ``yes*`` / ``no*`` read from
    sparse rewards where ep_meta has no flag; ``-`` neither), whether its rewards carry a success signal (``-``: no
    rewards stored; ``- (1 step)``: one reward, which cannot tell) and, for a converted file, the source's episode
    id (ep_meta ``source_episode``): what a label file (``robopretrain.reward_model``) or a mask needs to name demos
    and segments, and where each demo came from."""
    rows = [(name, task, n, ok if ok is not None else (None if by_rw is None else f"{_FLAG[by_rw]}*"), rw, src)
            for task, st in s.tasks.items()
            for name, n, ok, by_rw, rw, src in zip(st.demos, st.lengths, st.successes, st.reward_successes, st.rewarded,
                                                   st.source_episodes)]
    rows.sort(key=lambda r: int(DEMO_RE.match(r[0]).group(1)))
    width = max(len("demo"), *(len(r[0]) for r in rows))
    twidth = max(len("task"), *(len(r[1]) for r in rows))
    sourced = any(r[5] is not None for r in rows)
    lines = [f"{'demo':<{width}}  {'task':<{twidth}}  {'steps':>5}  success  reward signal"
             + ("  source episode" if sourced else "")]
    lines += [f"{name:<{width}}  {task:<{twidth}}  {n:>5}  {_FLAG.get(ok, ok):<7}  "
              f"{_FLAG[rw] if n >= 2 or rw is None else '- (1 step)':<13}"
              + (f"  {'-' if src is None else src}" if sourced else "")
              for name, task, n, ok, rw, src in rows]
    if any(isinstance(r[3], str) for r in rows):
        lines.append("* success read from the demo's sparse rewards (last reward 1), ep_meta has no flag")
    return "\n".join(line.rstrip() for line in lines)


def format_hdf5_summary(s: Hdf5Summary) -> str:
    """The summary as printable tables."""
    header = f"{'task':<16}{'episodes':>9}{'success':>9}{'len_mean':>10}{'len_min':>9}{'len_max':>9}{'transitions':>13}"
    lines = [f"robot dataset {s.path}" + (f" (env {s.env_name})" if s.env_name else ""), header, "-" * len(header)]
    for task, t in s.tasks.items():
        rate = "n/a" if t.success_rate is None else f"{t.success_rate:.2f}"
        lines.append(f"{task:<16}{len(t.demos):>9}{rate:>9}{np.mean(t.lengths):>10.1f}{min(t.lengths):>9}"
                     f"{max(t.lengths):>9}{sum(t.lengths):>13}")
    lines.append("-" * len(header))
    all_success = [x for t in s.tasks.values() for x in t.known_successes]
    rate = f"{np.mean(all_success):.2f}" if all_success else "n/a"
    n_demos = sum(len(t.demos) for t in s.tasks.values())
    lines.append(f"{'total':<16}{n_demos:>9}{rate:>9}{'':>28}{s.transitions:>13}")
    from_rewards = sum(1 for t in s.tasks.values() for r in t.reward_successes if r is not None)
    if from_rewards:
        lines.append(f"note: success of {from_rewards} of {n_demos} demos read from their sparse rewards (no ep_meta "
                     "success flag; every reward 0 or 1: successful when the last one is 1)")
    unrewarded = sum(t.unrewarded_successes for t in s.tasks.values())
    if unrewarded:  # as stage 2 reads them (robopretrain.data.dataset: unrewarded_successes, warn_success_disagreement)
        marked = sum(1 for t in s.tasks.values() for x in t.successes if x)
        signal = any(r for t in s.tasks.values() for r in t.rewarded)
        lines.append(f"warning: the rewards disagree with ep_meta: {unrewarded} of {marked} episodes marked successful "
                     "have no positive reward (sparse-reward RL reads them as failures; " + (
                         "stage 2 warns and trains on the rewards as stored)" if signal else
                         "no episode's rewards mark a success, so stage 2 refuses the file for CQL/Cal-QL/IQL unless "
                         "data.rewards_from_success=true)"))
    failures = sum(t.rewarded_failures for t in s.tasks.values())
    if failures:
        marked = sum(1 for t in s.tasks.values() for x in t.successes if x is False)
        lines.append(f"warning: the rewards disagree with ep_meta: {failures} of {marked} episodes marked failed end "
                     "with reward 1 (RL reads them as successes, the success counts here as failures; stage 2 warns "
                     "and trains on the rewards as stored)")
    reward_free = sum(1 for t in s.tasks.values() for r in t.rewarded if r is None)
    if reward_free:
        lines.append(f"note: {reward_free} of {n_demos} demos have no rewards dataset (read as zeros): BC trains on "
                     "them; other learners need data.rewards_from_success=true (ep_meta success flags) or a reward "
                     "written by python -m robopretrain.reward_model from preference labels")
    short = [d for t in s.tasks.values() for d, n in zip(t.demos, t.lengths) if n < 2]
    if short:
        lines.append(f"warning: {len(short)} demo(s) of fewer than 2 steps ({', '.join(short[:3])}"
                     f"{', ...' if len(short) > 3 else ''}): training refuses them; data.skip_short_demos=true leaves "
                     "them out (or a mask of the other demos)")
    if s.wrong_rows:
        named = [f"{d}: num_samples {n}, arrays of {' / '.join(map(str, rows))} rows"
                 for d, (n, rows) in list(s.wrong_rows.items())[:3]]
        lines.append(f"warning: the num_samples attribute disagrees with the arrays' rows in {len(s.wrong_rows)} "
                     f"demo(s) ({'; '.join(named)}{'; ...' if len(s.wrong_rows) > 3 else ''}): training refuses "
                     "them; set each demo's num_samples to its length (and data's total to their sum), or leave the "
                     "demo out with a mask")
    wrong_total = s.total_attr is not None and s.total_attr != s.transitions
    if wrong_total:
        lines.append(f"warning: data.attrs['total'] = {s.total_attr} but the demos hold {s.transitions} transitions "
                     f"(robomimic never reads it; training reads the demos, with a warning); set data's total to "
                     f"{s.transitions}")
    lines.append("")
    lines.append("observations (per step):")
    width = max([26] + [len(f"obs/{key}") + 1 for key in s.obs])  # long keys (LeRobot's) keep the columns aligned
    for key, (shape, dtype) in s.obs.items():
        notes = [n for n in ("differs between demos" if key in s.inconsistent_obs else "",
                             layout_note(shape, dtype, key)) if n]
        lines.append(f"  {'obs/' + key:<{width}}{str(shape):<16}{dtype}" + "".join(f"  ({n})" for n in notes))
    if s.actions is not None:
        span = (f"  range {_rounded(s.action_low)} .. {_rounded(s.action_high)}" if s.action_low is not None else "")
        lines.append(f"  {'actions':<{width}}{str(s.actions[0]):<16}{s.actions[1]}"
                     + ("  (differs between demos)" if s.odd_actions else span))
    if s.units_problem:
        lines.append(f"warning: training refuses the file: {s.units_problem}")
    elif s.action_units is not None:
        lines.append(f"note: actions recorded as rescaled to [-1, 1] from the robot's units {s.action_units} "
                     "(env_args['action_normalization']): every env the agent acts in maps them back")
    elif s.action_low is not None and (min(s.action_low) < -1.0 - 1e-6 or max(s.action_high) > 1.0 + 1e-6):
        lines.append("note: actions leave [-1, 1] and the file records no units: stage 2 (data.actions=auto) "
                     "rescales each dimension by its min and max and records those units (data.actions=keep "
                     "refuses them)")
    if not s.units_problem and s.action_low is not None and not s.odd_actions:
        # dimensions training takes as [-1, 1] actions (no record, or a record that keeps them: -1, 1) that stay
        # small: the env's own narrow units? (a conversion rescales only the dimensions that leave [-1, 1])
        kept = np.ones(len(s.action_low), bool) if s.action_units is None else (
            np.isclose(s.action_units["low"], -1.0) & np.isclose(s.action_units["high"], 1.0))
        reach = np.maximum(np.abs(s.action_low), np.abs(s.action_high))
        small = np.flatnonzero(kept & (reach <= SMALL_ACTIONS)).tolist()
        if small:
            lines.append(f"note: actions of dimension(s) {small} stay within +-{_rounded(reach[small].tolist())} "
                         "and the file records no rescaling of them, so training takes them as [-1, 1] actions: if "
                         "they are in the env's own units (an action box narrower than [-1, 1], e.g. a delta in "
                         "metres), give stage 2 that box as data.action_bounds={low: [...], high: [...]} so the "
                         "agent acts and explores in it (docs/targets.md)")
    if s.failed_terminals:
        named = ", ".join(s.failed_terminals[:3]) + (", ..." if len(s.failed_terminals) > 3 else "")
        lines.append(f"warning: {len(s.failed_terminals)} episode(s) end on done=1 without success ({named}): "
                     "training reads each end as a terminal (no bootstrap from its last state); if they are time "
                     "limits (robomimic's done_mode 2 marks every end), rewrite dones to 1 only where the task "
                     "succeeded")
    if s.odd_actions:
        odd = list(s.odd_actions.items())
        lines.append(f"warning: actions of {len(odd)} demo(s) differ in size from the other demos' {s.actions[0]} "
                     f"({', '.join(f'{d} {shape}' for d, shape in odd[:3])}{', ...' if len(odd) > 3 else ''}): "
                     "training refuses the file; rewrite those demos' actions or delete the demos")
    for key, where in s.non_finite.items():
        lines.append(f"warning: {key} holds NaN or inf (first at {where}): training refuses a selection holding "
                     "that demo (leave it out with a mask)")
    if s.half_task:
        lacking = sorted(set(s.half_task.values()))
        lines.append(f"warning: {len(s.half_task)} demo(s) lack the attribute {' / '.join(map(repr, lacking))} but "
                     f"hold the other ({', '.join(list(s.half_task)[:3])}{', ...' if len(s.half_task) > 3 else ''}): "
                     "training refuses them; give each demo both task (its name) and task_id (its slot in the task "
                     "one-hot), or neither (one task)")
    if s.nested_obs:
        flat = s.nested_obs[0].replace("/", ".")
        lines.append(f"warning: obs/ holds groups, whose datasets ({', '.join(s.nested_obs[:4])}"
                     f"{', ...' if len(s.nested_obs) > 4 else ''}) the stages do not read: store each directly under "
                     f"obs/ with a flat name (e.g. obs/{flat}, the name an env's nested Dict part gets; h5py writes a "
                     "key 'a/b' as a group a holding b)")
    if s.missing_next:
        keys = sorted(s.missing_next)
        demos = sorted({d for names in s.missing_next.values() for d in names}, key=lambda d: int(d.split("_")[1]))
        lines.append(f"note: next_obs lacks {', '.join(keys)} in {len(demos)} demo(s) ({', '.join(demos[:3])}"
                     f"{', ...' if len(demos) > 3 else ''}): the stages read the file through a cached copy with "
                     "next_obs derived (obs[t + 1]; a demo's last step repeats its own observation, which a "
                     "time-limit end bootstraps from)")
    for slot, names in s.shared_slots.items():
        lines.append(f"warning: tasks {', '.join(map(repr, names))} all have task_id {slot}"
                     + (" (demos without task attributes take slot 0)" if "(no task attr)" in names else "")
                     + ": the agent could not tell them apart, so training refuses the file; give each task its own "
                     f"task_id, select one with data.tasks, or set data.task_id={slot} to train them as one task")
    if s.inner_dones:
        named = [f"{d} step{'s' if len(t) > 1 else ''} {', '.join(map(str, t[:3]))}{', ...' if len(t) > 3 else ''}"
                 for d, t in list(s.inner_dones.items())[:3]]
        lines.append(f"warning: dones=1 before the last step in {len(s.inner_dones)} demo(s) ({'; '.join(named)}"
                     f"{'; ...' if len(s.inner_dones) > 3 else ''}): training reads each as a terminal (the TD backup "
                     "stops there, returns-to-go restart after it); if those episodes went on, rewrite those dones "
                     "to 0")
    # the reader's own first refusal, unless one of the refusals above already says it (the reader skips short demos
    # and reads no values, so those warnings above never say its problem: a demo without dones beside a short one)
    said = s.wrong_rows or s.odd_actions or s.half_task or wrong_total
    if s.layout_problem and not said:
        lines.append(f"warning: training refuses the file: {s.layout_problem}")
    lines.append("masks: " + (", ".join(f"{k} ({v})" for k, v in s.masks.items()) if s.masks else "none"))
    for name, gone in s.stale_masks.items():
        lines.append(f"  mask/{name} lists {len(gone)} demo(s) not under data/ ({', '.join(gone[:3])}"
                     f"{', ...' if len(gone) > 3 else ''}): training with data.mask={name} is refused until it is "
                     "rewritten")
    for name, what in s.unnamed_masks.items():
        lines.append(f"  mask/{name} is no list of demo names ({what}): training with data.mask={name} is refused; "
                     "the other masks are read")
    return "\n".join(lines)


def _evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (first and last included; repeats when n < k)."""
    return [int(round(x)) for x in np.linspace(0, n - 1, k)] if n > 0 else []


def _read_hdf5_frames(ds: h5py.Dataset, indices: Sequence[int]) -> np.ndarray:
    unique = sorted(set(indices))
    block = ds[unique]
    where = {i: j for j, i in enumerate(unique)}
    return block[[where[i] for i in indices]]


def hdf5_sheet_rows(path: str | os.PathLike, frames: int, per_task: int,
                    image_key: str | None = None) -> tuple[list[tuple[str, np.ndarray]], str | None]:
    """Rows of the contact sheet: (label, (frames, H, W, 3) images) for ``per_task`` demos of each task.

    Demos are spread over each task's list; the image key is ``image_key``, else ``agentview_image``, else the first
    ``*_image`` key, else the first uint8 (H, W, 3) key (LeRobot's ``observation.images.<cam>``), else the first other
    uint8 picture (channels first, grey). Frames are shown as the env path gives them to the agent
    (:func:`robopretrain.envs.camera_frames.to_agent_frame`: channels last, grey repeated, alpha dropped). Returns no
    rows (and None) when the file has no uint8 image observations.
    """
    from robopretrain.envs.camera_frames import agent_frame_shape, to_agent_frame

    def picture(shape: tuple[int, ...], dtype: str) -> bool:
        try:
            return dtype == "uint8" and min(agent_frame_shape(shape)[:2]) >= 8
        except ValueError:
            return False

    path = Path(path)
    summary = summarize_hdf5(path)
    uint8 = {k for k, (_, dtype) in summary.obs.items() if dtype == "uint8"}
    key = image_key or (DEFAULT_IMAGE_KEY if DEFAULT_IMAGE_KEY in uint8
                        else next((k for k in summary.obs if k.endswith("_image") and k in uint8), None)
                        or next((k for k, (shape, dtype) in summary.obs.items()
                                 if len(shape) == 3 and shape[-1] == 3 and dtype == "uint8"), None)
                        or next((k for k, (shape, dtype) in summary.obs.items() if picture(shape, dtype)), None))
    if key is None:
        return [], None
    if key not in summary.obs:
        raise InspectError(f"{path}: no observation key obs/{key}; the file has {', '.join(summary.obs)}")
    if not picture(*summary.obs[key]):
        raise InspectError(f"{path}: obs/{key} is {summary.obs[key][1]} {summary.obs[key][0]}, not a uint8 camera "
                           "frame (H, W, C), (C, H, W) or (H, W) to draw")
    rows = []
    with open_hdf5(path) as f:
        for task, stats in summary.tasks.items():
            picks = sorted(set(_evenly_spaced(len(stats.demos), min(per_task, len(stats.demos)))))
            for i in picks:
                name = stats.demos[i]
                ds = f["data"][name]["obs"][key]
                picks_t = _evenly_spaced(ds.shape[0], frames)
                if not picks_t:  # an empty demo: nothing to draw
                    continue
                images = np.stack([to_agent_frame(f) for f in _read_hdf5_frames(ds, picks_t)])
                known = stats.successes[i] if stats.successes[i] is not None else stats.reward_successes[i]
                outcome = {True: "success", False: "failure", None: "?"}[known]
                rows.append((f"{task}\n{name} ({outcome}, {stats.lengths[i]} steps)", images))
    return rows, key


# ----------------------------------------------------------------------------- video folder
@dataclass
class VideoSummary:
    """What ``summarize_videos`` found in a video folder."""

    folder: Path
    entries: list[VideoEntry]
    texts: Counter
    mismatches: list[str]
    manifest: bool = True  # the clips are a manifest's rows (else found as stage 1 finds them, frames counted)
    counted: bool = True  # the frame counts were counted in the clips (else the manifest's, unchecked)

    @property
    def frame_counts(self) -> np.ndarray:
        return np.array([e.num_frames for e in self.entries])


def summarize_videos(folder: str | os.PathLike, verify: bool = False) -> VideoSummary:
    """Clip count, frame counts and texts of a video folder (with ``manifest.csv``, or without: its clips as stage 1
    finds them, :func:`~robopretrain.data.video.clip_entries`, their frames counted) or of one video file; with
    ``verify``, a manifest's frame counts checked, a clip whose count differs from the manifest's summarised
    (and drawn) with its counted frames, as stage 1 uses it, and an unreadable clip listed in ``mismatches`` and
    left out of the counts (stage 1 skips it). Raises VideoDatasetError when no clip is readable."""
    folder = Path(folder)
    entries = clip_entries(folder)
    from_manifest = folder.suffix.lower() == ".csv" or (folder / MANIFEST_NAME).is_file()
    given = {e.relpath for e in entries if e.num_frames is not None}  # rows whose count the manifest gives
    mismatches = []
    for i, e in enumerate(entries):
        if e.num_frames is None:  # a clip found without a manifest, or a row without a count: counted, as stage 1 does
            try:
                entries[i] = dataclasses.replace(e, num_frames=count_frames(e.path))
            except VideoDatasetError as err:
                mismatches.append(f"{e.relpath}: unreadable ({err})")
    entries = [e for e in entries if e.num_frames is not None]
    if not entries:
        raise VideoDatasetError(f"{folder}: no readable clip ({mismatches[0]})")
    if verify and given:
        readable = []
        for e in entries:
            if e.relpath not in given:  # counted above
                readable.append(e)
                continue
            try:
                actual = count_frames(e.path)
            except VideoDatasetError as err:  # listed and left out of the counts, as stage 1 skips it
                mismatches.append(f"{e.relpath}: unreadable ({err})")
                continue
            if actual != e.num_frames:
                mismatches.append(f"{e.relpath}: {actual} frames, manifest says {e.num_frames}")
                e = dataclasses.replace(e, num_frames=actual)
            readable.append(e)
        if not readable:
            raise VideoDatasetError(f"{folder}: no readable clip ({mismatches[0]})")
        entries = readable
    return VideoSummary(folder, entries, Counter(e.text for e in entries), mismatches, manifest=from_manifest,
                        counted=verify or not given)


STAGE1_MIN_FRAMES = 3  # the longest of stage 1's samplers' minimum clip lengths (video_pretrain/sampling.py)


def format_video_summary(s: VideoSummary, verified: bool = False, top: int = 15) -> str:
    n = s.frame_counts
    kinds = Counter("frame folder" if e.is_frame_folder else e.path.suffix.lower() for e in s.entries)
    lines = [f"video dataset {s.folder}",
             f"clips: {len(s.entries)} ({', '.join(f'{v} {k}' for k, v in kinds.items())})",
             f"frames per clip: mean {n.mean():.1f}, min {n.min()}, max {n.max()}; total {n.sum()}"
             + ("" if s.counted else f" (as {MANIFEST_NAME} says; --verify counts them)")]
    short = [e for e in s.entries if e.num_frames < STAGE1_MIN_FRAMES]
    if short:  # stage 1 leaves them out (video_pretrain/sampling.py: ICVF needs 2 frames, VIP and TCN 3)
        named = ", ".join(f"{e.path.name} ({e.num_frames})" for e in short[:5]) + (
            f", ... ({len(short) - 5} more)" if len(short) > 5 else "")
        lines.append(f"clips under {STAGE1_MIN_FRAMES} frames (stage 1's VIP and TCN skip them; ICVF uses those of 2): "
                     f"{len(short)}: {named}")
    lines.append(f"texts: {len(s.texts)} distinct")
    width = min(max(len(t) for t in s.texts), 70)
    for text, count in s.texts.most_common(top):
        shown = text if len(text) <= width else text[:width - 3] + "..."
        lines.append(f"  {count:>5}  {shown or '(empty)'}")
    if len(s.texts) > top:
        lines.append(f"  ... and {len(s.texts) - top} more")
    if not s.manifest:
        lines.append(f"no {MANIFEST_NAME}: the clips stage 1 reads, in name order, frames counted, without texts")
    if (verified and s.manifest) or s.mismatches:
        lines.append("frame counts: all match the manifest" if not s.mismatches else
                     "frame count mismatches and unreadable clips:\n  " + "\n  ".join(s.mismatches))
    return "\n".join(lines)


def video_sheet_rows(summary: VideoSummary, frames: int, clips: int, unreadable: list[str] | None = None,
                     recounted: list[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """Rows of the contact sheet: ``clips`` clips spread over the manifest, ``frames`` frames each. A clip that
    cannot be decoded is left out (stage 1 skips it too) and its message appended to ``unreadable``; one that holds
    fewer frames than its manifest row says is drawn with the frames it has, as stage 1 uses it, and named in
    ``recounted``."""
    picks = sorted(set(_evenly_spaced(len(summary.entries), min(clips, len(summary.entries)))))
    rows = []
    for i in picks:
        e = summary.entries[i]
        try:
            images = read_frames(e, _evenly_spaced(e.num_frames, frames))
        except VideoDatasetError as err:
            try:  # a manifest that overstates the clip: stage 1 counts its frames and goes on with them
                actual = count_frames(e.path)
                if not 0 < actual < e.num_frames:
                    raise err
                images = read_frames(dataclasses.replace(e, num_frames=actual), _evenly_spaced(actual, frames))
            except VideoDatasetError as final:
                if unreadable is not None:
                    unreadable.append(str(final))
                continue
            if recounted is not None:
                recounted.append(f"{e.relpath}: {actual} frames, manifest says {e.num_frames}")
            e = dataclasses.replace(e, num_frames=actual)
        rows.append((f"{e.relpath} ({e.num_frames} frames)\n{e.text}", images))
    return rows


# ----------------------------------------------------------------------------- contact sheet
def save_contact_sheet(rows: Sequence[tuple[str, np.ndarray]], out: str | os.PathLike, title: str) -> Path:
    """Draw rows of frames (one labelled row each) with matplotlib and save the PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    ncols = max(len(images) for _, images in rows)
    cell, label_w, title_h = 1.1, 2.6, 0.45  # inches
    height = title_h + cell * len(rows) + 0.1
    fig = Figure(figsize=(label_w + cell * ncols, height))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), ncols + 1, width_ratios=[label_w / cell] + [1] * ncols,
                            left=0.01, right=0.99, top=1 - title_h / height, bottom=0.1 / height,
                            wspace=0.04, hspace=0.08)
    for r, (label, images) in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        ax.axis("off")
        ax.text(0.98, 0.5, _wrap(label), ha="right", va="center", fontsize=7, transform=ax.transAxes)
        for c, image in enumerate(images):
            ax = fig.add_subplot(grid[r, c + 1])
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9, y=1 - 0.12 / height, va="top")
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def _wrap(label: str, width: int = 40) -> str:
    lines = []
    for part in label.split("\n"):
        while len(part) > width:
            cut = part.rfind(" ", 0, width)
            cut = width if cut <= 0 else cut
            lines.append(part[:cut])
            part = part[cut:].lstrip()
        lines.append(part)
    return "\n".join(lines)


def default_sheet_path(path: Path) -> Path:
    """``<name>_contact_sheet.png`` next to the input (a file's stem, a folder's name)."""
    path = path.resolve()
    stem = path.name if path.is_dir() else path.stem
    return path.parent / f"{stem}_contact_sheet.png"


# ----------------------------------------------------------------------------- CLI
def inspect(path: str | os.PathLike, out: str | os.PathLike | None = None, frames: int = 8, per_task: int = 2,
            clips: int = 8, verify: bool = False, image_key: str | None = None,
            demos: bool = False) -> tuple[str, Path | None]:
    """Summarize the dataset at ``path`` and write its contact sheet; returns (summary text, PNG path or None).
    ``demos``: a robot file's summary ends with one line per demo (:func:`format_demo_table`)."""
    path = Path(path)
    if not path.exists():
        raise InspectError(f"{path}: no such file or folder (expected a robomimic HDF5 file, a video folder or a "
                           "video file)")
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    out_path = Path(out) if out is not None else default_sheet_path(path)
    note = ""
    videos = path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()
    if not videos and not (path.is_dir() and (path / MANIFEST_NAME).is_file()):
        try:
            fmt = detect_format(path)
        except ConversionError:
            fmt = None  # reported below as the robomimic / video-folder error
        if fmt not in (None, "robomimic"):
            converted = as_robomimic(path, fmt=fmt)
            note = f"format: {fmt} (read through its converted copy {converted})\n"
            path = converted
    if path.is_dir() or videos:  # a video folder (with or without manifest.csv, as stage 1 reads it) or one video
        summary = summarize_videos(path, verify=verify)
        text = format_video_summary(summary, verified=verify)
        unreadable: list[str] = []
        recounted: list[str] = []
        rows = video_sheet_rows(summary, frames, clips, unreadable, recounted)
        if unreadable and not rows:
            hint = "" if verify or "out of range" not in unreadable[0] else (
                "; the manifest's num_frames may overstate the clips: --verify counts every clip's frames")
            raise InspectError(f"{path}: no clip drawn for the contact sheet can be decoded: {unreadable[0]}"
                               + (f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else "") + hint)
        if unreadable:  # of the clips drawn for the sheet; --verify reads every clip
            text += "\nunreadable clips (left out of the sheet; stage 1 skips them):\n  " + "\n  ".join(unreadable)
        if recounted:
            text += ("\nclips shorter than the manifest says (drawn with their frames; stage 1 uses those, with a "
                     "warning; --verify counts every clip):\n  " + "\n  ".join(recounted))
        title = f"{path.name}: {len(rows)} of {len(summary.entries)} clips, {frames} frames each"
    else:
        summary_h5 = summarize_hdf5(path)
        text = note + format_hdf5_summary(summary_h5)
        if demos:
            text += "\n\n" + format_demo_table(summary_h5)
        try:
            rows, key = hdf5_sheet_rows(path, frames, per_task, image_key)
        except (OSError, KeyError) as exc:
            raise InspectError(f"{path}: cannot read the images, the file may be truncated or corrupt ({exc})") from exc
        title = f"{path.name}: obs/{key}, {per_task} episode(s) per task, {frames} frames each"
    if not rows:
        return text + "\ncontact sheet: skipped (no image observations)", None
    try:
        return text, save_contact_sheet(rows, out_path, title)
    except OSError as exc:  # a read-only data folder: the summary still stands
        return text + (f"\ncontact sheet: not written, {Path(out_path).parent} cannot be written "
                       f"({exc.strerror or exc}); --out /a/writable/sheet.png puts it elsewhere"), None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m robopretrain.data.inspect",
                                description="Summarize a robomimic HDF5 file or a video folder or file "
                                            "and write a contact-sheet PNG.")
    p.add_argument("path", help="robomimic .hdf5 file, a video folder (with manifest.csv or not) or video file, "
                                "a LeRobot v3 / Minari folder, D4RL-style .hdf5 or OGBench .npz")
    p.add_argument("--out", default=None, help="contact sheet PNG (default: <name>_contact_sheet.png next to the input)")
    p.add_argument("--frames", type=int, default=8, help="frames per row, evenly spaced in time (default 8)")
    p.add_argument("--per-task", type=int, default=2, help="HDF5: episodes shown per task (default 2)")
    p.add_argument("--clips", type=int, default=8, help="videos: clips shown (default 8)")
    p.add_argument("--image-key", default=None, help="HDF5: obs key to show (default agentview_image)")
    p.add_argument("--verify", action="store_true", help="videos: count every clip's frames against the manifest")
    p.add_argument("--demos", action="store_true", help="HDF5: also one line per demo (name, task, steps, success, "
                                                        "reward signal), e.g. to write preference labels")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("frames", "per_task", "clips"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    try:
        text, png = inspect(args.path, args.out, frames=args.frames, per_task=args.per_task, clips=args.clips,
                            verify=args.verify, image_key=args.image_key, demos=args.demos)
    except (InspectError, VideoDatasetError, ConversionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        print(text)
        if png is not None:
            print(f"contact sheet -> {png}")
        sys.stdout.flush()
    except BrokenPipeError:  # inspect ... | head: the reader stopped; no traceback (Python's docs, signal module)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit goes nowhere, quietly
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
