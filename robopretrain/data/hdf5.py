"""Reader for robomimic-format HDF5 robot datasets, with validation.

Implements the "Robot dataset: robomimic HDF5" contract of ARCHITECTURE.md::

    data/            attrs: total (int), env_args (JSON)
      demo_<i>/      attrs: num_samples (int), task (str), task_id (int), ep_meta (JSON, optional)
                     (a file without task / task_id, as robomimic's own datasets: one task named by env_args'
                     env_name, else the file's stem, in slot 0)
        obs/<key>, next_obs/<key>   (N, ...)  images uint8 (N, H, W, 3) (grey (N, H, W, 1) or (N, H, W): read
                                    as RGB by the stages), low-dim numeric (N, d) (float, or int / bool / uint8
                                    as the converters cast them: read as float32); a key is read as a camera when it
                                    is named *_image, of shape (N, H, W, C) or uint8 (N, H, W), unless the caller
                                    lists it as low-dim (obs.low_dim; load_transitions' low_dim)
        actions (N, A) float in [-1, 1];  rewards (N,), optional (see below);  dones (N,) in {0, 1}
    mask/<name>      demo names as bytes: train, valid, one per task

:func:`read_info` reads only attributes and dataset shapes (no array data). :func:`load_transitions` reads
the chosen observation keys of the chosen demos (a mask name, a list of task names, or explicit demo
names) into flat, preallocated numpy arrays with an episode id and task id per transition; keys not asked
for are never read. Every problem raises :class:`DatasetError` naming the file, the HDF5 key and what
was expected. Demos are sorted numerically (``demo_2`` before ``demo_10``).

A demo without ``rewards`` (a recording that never wrote them: human teleoperation, a reward-free dataset) is read
with zero rewards and listed by :meth:`DatasetInfo.unrewarded`; what needs rewards refuses it there
(:func:`robopretrain.data.dataset.load_offline_dataset`: BC does not, ``data.rewards_from_success`` rebuilds them, the
preference reward model writes them).

Returns-to-go (REFERENCE.md Stage 3) are not computed here; see :mod:`robopretrain.data.returns`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from robopretrain.envs.camera_frames import image_layout

log = logging.getLogger(__name__)
DEMO_RE = re.compile(r"^demo_(\d+)$")
IMAGE_SUFFIX = "_image"
# env_args entry of a file whose rewards a learned reward wrote (robopretrain.reward_model.relabel): its source file
# and normalisation; the stages warn where a method reads rewards in the env's units too (the Decision Transformer)
LEARNED_REWARD_KEY = "learned_reward"


class DatasetError(ValueError):
    """A dataset file does not follow the robomimic HDF5 contract."""


@dataclass
class DemoInfo:
    """Attributes of one ``data/demo_<i>`` group."""

    name: str
    num_samples: int
    task: str
    task_id: int
    ep_meta: dict[str, Any] = field(default_factory=dict)
    has_rewards: bool = True  # False: no ``rewards`` dataset (read as zeros)


@dataclass
class DatasetInfo:
    """File-level metadata; obtained without reading any array data."""

    path: str
    total: int
    env_args: dict[str, Any]
    demos: list[DemoInfo]
    masks: dict[str, list[str]]
    tasks: dict[str, int]
    obs_specs: dict[str, tuple[tuple[int, ...], np.dtype]]
    action_dim: int
    stale_masks: dict[str, list[str]] = field(default_factory=dict)  # mask -> names it lists that no demo has
    nested_obs: list[str] = field(default_factory=list)  # datasets in groups under obs/ ("arm/pos"): not read
    unreadable_masks: dict[str, str] = field(default_factory=dict)  # entry under mask/ that lists no names -> why

    def demo(self, name: str) -> DemoInfo:
        for d in self.demos:
            if d.name == name:
                return d
        raise DatasetError(f"{self.path}: no demo named {name!r} under data/")

    def unrewarded(self, names: Sequence[str] | None = None) -> list[str]:
        """The demos (of ``names``; all when None) stored without a ``rewards`` dataset."""
        chosen = self.demos if names is None else [self.demo(n) for n in names]
        return [d.name for d in chosen if not d.has_rewards]

    @property
    def learned_reward(self) -> dict[str, Any] | None:
        """What :func:`robopretrain.reward_model.relabel` recorded when a learned reward wrote this file's rewards
        (``env_args['learned_reward']``: source, normalize, offset, scale, model_digest); None for the env's own."""
        record = (self.env_args or {}).get(LEARNED_REWARD_KEY)
        return record if record else None


@dataclass
class Transitions:
    """Flat transition arrays of the selected demos, in numeric demo order.

    ``episode_ids[i]`` indexes ``demo_names``; ``task_ids[i]`` is the demo's ``task_id`` attribute.
    """

    path: str
    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    episode_ids: np.ndarray
    task_ids: np.ndarray
    demo_names: list[str]
    episode_tasks: list[str]
    ep_meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.actions)


_STALE_TOTAL_SAID: set[str] = set()  # files whose stale data.attrs["total"] was warned about


def source_format(env_args: Mapping[str, Any] | None) -> str | None:
    """The format a converted file came from (``env_args["format"]``: ``d4rl``, ``ogbench``, ...; copies converted
    before it was recorded there kept it in robomimic's ``type``, which robomimic reads as an integer env type),
    None for a file written as robomimic HDF5."""
    args = env_args or {}
    fmt = args.get("format", args.get("type"))
    return fmt if isinstance(fmt, str) else None


def _err(path: str, key: str, msg: str) -> DatasetError:
    return DatasetError(f"{path}: {key}: {msg}")


def _open(path: str | os.PathLike) -> h5py.File:
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DatasetError(f"{p}: file not found")
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise DatasetError(f"{p}: {open_failure(e)}") from None


def open_failure(exc: OSError) -> str:
    """Why ``h5py.File`` could not open a file, for a message: held by a writer (HDF5's file lock: another process
    has it open for writing, which was reported as a corrupt file; a new user's finding), else not readable."""
    text = str(exc)
    if "unable to lock file" in text and "errno = 11" in text:  # EAGAIN: the lock is held
        return (f"another process has it open for writing ({exc}); wait until that process closes it (a file being "
                "written is read inconsistently), or give a copy")
    if "unable to lock file" in text:  # a filesystem without locks (NFS without lockd: errno 37, Lustre: 38)
        return (f"HDF5 cannot lock it on this filesystem ({exc}); set HDF5_USE_FILE_LOCKING=FALSE in the "
                "environment to read it without a lock")
    return f"not a readable HDF5 file (truncated or corrupt?): {exc}"


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.shape == ():
        return _decode(value[()])
    return value


def _attr(path: str, obj: h5py.HLObject, key: str, name: str, kind: type) -> Any:
    if name not in obj.attrs:
        raise _err(path, key, f"missing attribute {name!r} (expected {kind.__name__})")
    value = _decode(obj.attrs[name])
    if kind is int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise _err(path, key, f"attribute {name!r} must be an int, got {value!r}")
        return int(value)
    if kind is str:
        if not isinstance(value, str):
            raise _err(path, key, f"attribute {name!r} must be a string, got {value!r}")
        return value
    raise TypeError(kind)


def _json_attr(path: str, obj: h5py.HLObject, key: str, name: str, required: bool) -> dict[str, Any]:
    if name not in obj.attrs:
        if required:
            raise _err(path, key, f"missing attribute {name!r} (expected a JSON object)")
        return {}
    text = _decode(obj.attrs[name])
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise _err(path, key, f"attribute {name!r} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise _err(path, key, f"attribute {name!r} must be a JSON object, got {type(value).__name__}")
    return value


def _demo_names(path: str, data: h5py.Group) -> list[str]:
    names = []
    for name in data.keys():
        if not DEMO_RE.match(name):
            raise _err(path, f"data/{name}", "unexpected entry; every entry under data/ must be named demo_<int>")
        if not isinstance(data[name], h5py.Group):
            raise _err(path, f"data/{name}", "expected a group")
        names.append(name)
    return sorted(names, key=lambda n: int(DEMO_RE.match(n).group(1)))


def _read_masks(path: str, f: h5py.File,
                demo_set: set[str]) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str]]:
    """The masks' demo names; per mask the names no demo has (a demo deleted from the file); and per entry under
    ``mask/`` that is no list of demo names (``mask/train_indices``, an int array) what is wrong with it. Both are
    refused only when that mask is used, by :func:`select_demos`, as robomimic reads only the filter key it is
    given (an unused entry made the whole file unreadable: a new user's finding)."""
    masks: dict[str, list[str]] = {}
    stale: dict[str, list[str]] = {}
    unreadable: dict[str, str] = {}
    if "mask" not in f:
        return masks, stale, unreadable
    for name, ds in f["mask"].items():
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind not in "SOU":
            what = f"{ds.dtype} {ds.shape}" if isinstance(ds, h5py.Dataset) else "a group"
            unreadable[name] = f"expected a 1-D array of demo names as bytes, got {what}"
            continue
        try:
            entries = [_decode(x) for x in ds[()]]
        except OSError as e:
            unreadable[name] = f"cannot be read (truncated file?): {e}"
            continue
        unknown = [e for e in entries if e not in demo_set]
        if unknown:
            stale[name] = unknown
        masks[name] = entries
    return masks, stale, unreadable


def _is_image_key(key: str, shape: tuple[int, ...], low_dim: Sequence[str] = (), dtype: Any = None) -> bool:
    """Whether ``key`` (stored shape ``(N, ...)``, ``dtype`` when known) is a camera: not listed in ``low_dim``, and
    named ``*_image``, of shape ``(N, H, W, C)``, or uint8 ``(N, H, W)`` (grey; module docstring)."""
    grey = dtype is not None and np.dtype(dtype) == np.uint8 and len(shape) == 3
    return key not in low_dim and (key.endswith(IMAGE_SUFFIX) or len(shape) == 4 or grey)


# where the reader refuses a camera the cached copy of data.image_size would read (robopretrain.data.resize_robomimic)
RESIZE_HINT = ("; data.image_size=S (the stages; python -m robopretrain.data.convert SRC DST --image-size S) reads a "
               "cached copy with every demo's frames at S x S, {what}")


def converted_as_camera(key: str, shape: tuple[int, ...], dtype: Any) -> bool:
    """Whether stored frames of ``shape`` ``(N, ...)`` are a camera the cached copy of ``data.image_size`` (and
    ``python -m robopretrain.data.convert --image-size``) rewrites as uint8 ``(S, S, 3)``: a picture's layout
    (:func:`robopretrain.envs.camera_frames.image_layout`), and uint8, or float under a key named ``*_image`` (a
    float array of another name, e.g. ``(8, 8, 3)`` features, is copied as stored: rename a float camera
    ``<key>_image`` to have it converted)."""
    if len(shape) < 3 or image_layout(shape[1:], dtype) is None:
        return False
    return np.dtype(dtype) == np.uint8 or (np.issubdtype(dtype, np.floating) and key.endswith(IMAGE_SUFFIX))


def _check_obs_dataset(path: str, key: str, ds: h5py.Dataset, obs_key: str, n: int,
                       low_dim: Sequence[str] = ()) -> None:
    shape = ds.shape
    if _is_image_key(obs_key, shape, low_dim, ds.dtype):
        if ds.dtype != np.uint8 or not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))):
            hint = (f" (a key named *{IMAGE_SUFFIX} is read as a camera unless listed as a low-dim part: "
                    f"obs.low_dim=[..., {obs_key}], or load_transitions(..., low_dim=[{obs_key!r}]))"
                    if len(shape) == 2 and ds.dtype.kind == "f" else "")
            if not hint and converted_as_camera(obs_key, shape, ds.dtype):
                hint = RESIZE_HINT.format(what="uint8 RGB channels last (alpha dropped, floats in [0, 1] scaled)")
            raise _err(path, key, f"expected an image array uint8 (N, H, W, 3), or grey (N, H, W, 1) / (N, H, W), got "
                                  f"{ds.dtype} {shape}{hint}")
    elif ds.dtype.kind not in "fiub" or len(shape) != 2:
        scalar = "; a scalar per step: store it as (N, 1), values[:, None]" if len(shape) == 1 else ""
        raise _err(path, key, f"expected a low-dim numeric array (N, d), got {ds.dtype} {shape}{scalar}")
    if shape[0] != n:
        actions = ds.parent.parent.get("actions")  # the demo's (obs and next_obs groups sit in it)
        attested = isinstance(actions, h5py.Dataset) and actions.ndim >= 1 and actions.shape[0] == n
        raise _err(path, key, _rows_problem(shape[0], n, attested))


# what to write when a demo lacks one of the datasets every transition needs (docs/targets.md, "Your data")
MISSING_HINTS = {
    "next_obs": " (each demo needs next_obs/<key> beside obs/<key>: the observation after each action; the stages, "
                "and python -m robopretrain.data.convert SRC DST, read a file that lacks it through a copy with "
                "next_obs derived: obs[1:] followed by the last observation again)",
    "dones": " (each demo needs dones (N,): 1 where the episode ends by success or failure, else 0; a recording "
             "cut by a time limit keeps 0 at its last step)",
}
PROGRESS_MIN_DEMOS = 64  # a long data step (an index build, a resized copy) over this many demos shows progress


def _dataset(path: str, demo: h5py.Group, base: str, rel: str) -> h5py.Dataset:
    """The dataset ``rel`` inside the group at ``base``, or a DatasetError naming ``base/rel``."""
    obj = demo.get(rel)
    if obj is None:
        raise _err(path, f"{base}/{rel}", "missing" + MISSING_HINTS.get(rel.split("/")[0], ""))
    if not isinstance(obj, h5py.Dataset):
        raise _err(path, f"{base}/{rel}", "expected a dataset, found a group")
    return obj


def check_lengths(path: str, demos: Sequence[DemoInfo]) -> None:
    """Raise :class:`DatasetError` for the first demo of fewer than 2 steps (the contract's minimum), saying how to
    leave it out."""
    for d in demos:
        if d.num_samples < 2:
            raise _err(path, f"data/{d.name}", f"episode has {d.num_samples} step(s); expected at least 2 (empty or "
                       "one-step episode): leave such demos out with a mask of the other demos (mask/<name> in the file, "
                       "data.mask=<name>), or with data.skip_short_demos=true (stages 2 and 3, robopretrain.reward_model)")


def _check_demo(path: str, demo: h5py.Group, info: DemoInfo, obs_keys: Sequence[str], act_dim: int | None,
                low_dim: Sequence[str] = ()) -> int:
    """Validate shapes/dtypes of one demo without reading its data (``low_dim``: keys checked as low-dim whatever
    their name); returns its action dim."""
    n = info.num_samples
    base = f"data/{info.name}"
    check_lengths(path, [info])
    for sub in ("obs", "next_obs"):
        for k in obs_keys:
            _check_obs_dataset(path, f"{base}/{sub}/{k}", _dataset(path, demo, base, f"{sub}/{k}"), k, n, low_dim)
    act_dim = _check_actions(path, demo, info, act_dim)
    for name in ("rewards", "dones"):
        if name == "rewards" and name not in demo:  # optional: read as zeros, refused where rewards are needed
            continue
        ds = _dataset(path, demo, base, name)
        if ds.shape != (n,) or ds.dtype.kind not in "fiub":
            raise _err(path, f"{base}/{name}", f"expected a numeric array of shape ({n},), got {ds.dtype} {ds.shape}")
    return act_dim


def _rows_problem(rows: int, num_samples: int, attested: bool = False) -> str:
    """What to say of an array of ``rows`` rows in a demo of ``num_samples``; ``attested``: the demo's actions have
    ``num_samples`` rows too, so this array is the one to rewrite (a writer that left out a step's observation)."""
    if attested:
        return (f"{rows} rows, but the demo's num_samples attribute and its actions say {num_samples}: every array "
                "of a demo has one row per step; write this one with a row for each step")
    return (f"{rows} rows, but the demo's num_samples attribute says {num_samples}: every array of a demo has "
            "num_samples rows (set the attribute to the demo's length, and data's total to their sum)")


def _check_actions(path: str, demo: h5py.Group, info: DemoInfo, act_dim: int | None) -> int:
    """Validate one demo's ``actions`` (float ``(num_samples, A)``, ``A`` equal to ``act_dim``, the earlier demos',
    when given) without reading them; returns ``A``. Raises :class:`DatasetError` naming the file and
    ``data/<demo>/actions``."""
    n, key = info.num_samples, f"data/{info.name}/actions"
    acts = _dataset(path, demo, f"data/{info.name}", "actions")
    if acts.dtype.kind == "f" and acts.ndim == 2 and acts.shape[0] != n:  # the rows or the attribute is wrong
        raise _err(path, key, _rows_problem(acts.shape[0], n))
    if acts.dtype.kind != "f" or acts.ndim != 2:
        flat = f"; one action dimension: store it as ({n}, 1), actions[:, None]" if acts.shape == (n,) else ""
        raise _err(path, key, f"expected float actions ({n}, A), got {acts.dtype} {acts.shape}{flat}")
    if act_dim is not None and acts.shape[1] != act_dim:
        raise _err(path, "data/*/actions", _action_sizes_problem(demo.parent))
    return int(acts.shape[1])


def mixed_action_sizes(path: str | os.PathLike) -> str | None:
    """What training says of a robomimic file whose demos' actions differ in size (:func:`_action_sizes_problem`:
    the sizes with their demos, the odd ones to rewrite or delete); None when they agree, or when the file's layout
    is not one to tell from (the reader names that problem itself)."""
    try:
        with _open(os.fspath(path)) as f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                return None
            sizes = {int(acts.shape[1]) for name in _demo_names(os.fspath(path), data)
                     for acts in (data[name].get("actions"),) if isinstance(acts, h5py.Dataset) and acts.ndim == 2}
            return _action_sizes_problem(data) if len(sizes) > 1 else None
    except (DatasetError, OSError):
        return None


def _action_sizes_problem(data: h5py.Group) -> str:
    """What to say of a file whose demos' actions differ in size: each size with its demos, the most common first,
    and the demos of the other sizes to rewrite or delete (the odd ones, not merely those after the first demo)."""
    by_size: dict[int, list[str]] = {}
    for name in _demo_names(data.file.filename, data):
        acts = data[name].get("actions")
        if isinstance(acts, h5py.Dataset) and acts.ndim == 2:
            by_size.setdefault(int(acts.shape[1]), []).append(name)
    ranked = sorted(by_size.items(), key=lambda kv: -len(kv[1]))
    sizes = "; ".join(f"{size}-D in {len(names)} demo(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                      for size, names in ranked)
    odd = [n for _, names in ranked[1:] for n in names]
    return (f"the demos' actions differ in size: {sizes}; every demo's actions must have one size: rewrite or delete "
            f"the demo(s) of the other size ({', '.join(odd[:5])}{', ...' if len(odd) > 5 else ''}), or leave them "
            "out with a mask")


def action_bounds(path: str | os.PathLike, info: DatasetInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension min and max of every demo's finite actions, ``(A,)`` each (reads only the action arrays): the
    file's units, the same whichever demos a run selects. Empty demos and NaN / inf values are skipped (the reader
    refuses them where a run selects them, naming demo and row). Raises :class:`DatasetError` for a dimension with
    no finite value, and, as :func:`load_transitions` does, for a demo whose actions are missing, not float
    ``(num_samples, A)``, or of another size ``A`` than the earlier demos' (every demo counts here)."""
    info = info or read_info(path)
    low = high = None
    act_dim: int | None = None
    with _open(os.fspath(path)) as f:
        for d in info.demos:
            if d.num_samples == 0:
                continue
            act_dim = _check_actions(info.path, f["data"][d.name], d, act_dim)
            a = np.asarray(f["data"][d.name]["actions"][()], dtype=np.float64)
            finite = np.isfinite(a)
            lo, hi = np.where(finite, a, np.inf).min(0), np.where(finite, a, -np.inf).max(0)
            low = lo if low is None else np.minimum(low, lo)
            high = hi if high is None else np.maximum(high, hi)
    if low is None or not np.isfinite(low).all():  # a dimension's low is finite exactly when its high is
        raise DatasetError(f"{info.path}: actions: some dimension has no finite value in any demo")
    return low, high


def read_info(path: str | os.PathLike) -> DatasetInfo:
    """Read and validate the file's metadata (attributes, masks, obs keys and shapes: the first demo's with steps),
    no array data."""
    p = os.fspath(path)
    with _open(p) as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise _err(p, "data", "missing group (expected data/demo_<i>/...)")
        data = f["data"]
        # robomimic's readers never read data's total: a file without it, or with a stale one, is read as they read
        # it (it was refused; a new user's finding), the demos' own num_samples deciding
        total = _attr(p, data, "data", "total", int) if "total" in data.attrs else None
        env_args = _json_attr(p, data, "data", "env_args", required=True)
        names = _demo_names(p, data)
        if not names:
            raise _err(p, "data", "contains no demos")
        default_task = default_task_name(p, env_args)
        demos = [_demo_info(p, data[n], n, default_task) for n in names]
        counted = sum(d.num_samples for d in demos)
        if total is not None and counted != total:
            for d in demos:  # a demo whose num_samples disagrees with its own actions is the likelier fault
                acts = data[d.name].get("actions")
                if isinstance(acts, h5py.Dataset) and acts.ndim >= 1 and acts.shape[0] != d.num_samples:
                    raise _err(p, f"data/{d.name}/actions", _rows_problem(acts.shape[0], d.num_samples))
            if p not in _STALE_TOTAL_SAID:  # once per file (read_info runs several times a run)
                _STALE_TOTAL_SAID.add(p)
                log.warning("%s: data's attribute 'total' is %d but the demos' num_samples sum to %d; read as "
                            "robomimic reads it, by the demos (set total to %d to silence this)", p, total, counted,
                            counted)
        total = counted
        tasks = _task_ids(p, demos)
        masks, stale, unreadable = _read_masks(p, f, set(names))
        # the parts and action size from the first demo with steps: an empty one is often written with flat (0,)
        # arrays, and data.skip_short_demos or a mask leaves it out (it was taken for the file's, refusing the file)
        at = next((i for i, d in enumerate(demos) if d.num_samples > 0), 0)
        first = data[names[at]]
        obs_specs = _obs_specs(p, first, f"data/{names[at]}/obs")
        nested = nested_obs(first["obs"])
        action_dim = _check_actions(p, first, demos[at], None)  # (n, A) float, or refused here naming the demo
    return DatasetInfo(p, total, env_args, demos, masks, tasks, obs_specs, action_dim, stale, nested, unreadable)


def nested_obs(obs: h5py.Group) -> list[str]:
    """The datasets inside groups under a demo's ``obs`` group (``obs/arm/pos``: ``"arm/pos"``), sorted: what h5py
    makes of a key ``"arm/pos"`` or of a nested dict saved as groups. The stages read only datasets directly under
    ``obs/``."""
    found: list[str] = []
    for key, item in obs.items():
        if isinstance(item, h5py.Group):
            item.visititems(lambda rel, obj, key=key: found.append(f"{key}/{rel}")
                            if isinstance(obj, h5py.Dataset) else None)
    return sorted(found)


def default_task_name(path: str, env_args: Mapping[str, Any]) -> str:
    """The task of a demo without ``task`` / ``task_id`` attributes (a robomimic file; slot 0): ``env_args``'s
    ``env_name``, else the file's name without its extension."""
    return str(env_args.get("env_name") or os.path.splitext(os.path.basename(path))[0])


SUCCESS_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def success_flag(value: Any, where: str) -> bool | None:
    """An ``ep_meta`` ``success`` value as a bool: JSON true / false, 0 / 1, or the words true / false / yes / no /
    1 / 0 (any case: a recorder that wrote ``str(flag)``; ``bool("False")`` read such a failure as a success);
    None when absent. Raises :class:`DatasetError` naming ``where`` for anything else."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in SUCCESS_WORDS:
        return SUCCESS_WORDS[value.strip().lower()]
    raise DatasetError(f"{where}: ep_meta success={value!r}; expected true or false (or 1 / 0)")


def ends_in_terminal(path: str | os.PathLike, names: Sequence[str]) -> dict[str, bool]:
    """Whether each demo of ``names`` ends in a terminal: its last ``dones`` entry is nonzero (a demo without
    ``dones``, or with none, reads as not). Reads one value per demo."""
    with _open(path) as f:
        out = {}
        for name in names:
            dones = f["data"][name].get("dones")
            out[name] = bool(isinstance(dones, h5py.Dataset) and dones.shape and dones.shape[0] and dones[-1])
    return out


def _demo_info(path: str, demo: h5py.Group, name: str, default_task: str) -> DemoInfo:
    """One demo's attributes; ``task`` / ``task_id`` default to ``default_task`` / 0 when the demo has neither (a
    robomimic dataset); one without the other is an error."""
    key = f"data/{name}"
    has_task, has_id = "task" in demo.attrs, "task_id" in demo.attrs
    if has_task != has_id:
        missing = "task_id" if has_task else "task"
        raise _err(path, key, f"missing attribute {missing!r} (give both task and task_id, or neither: one task)")
    task_id = _attr(path, demo, key, "task_id", int) if has_id else 0
    if task_id < 0:  # a one-hot has no slot below 0: a single-task file of task_id -1 trained with no one-hot at all
        raise _err(path, key, f"task_id {task_id}: expected a slot of the task one-hot, 0 or above (demos of one task "
                   "may leave out both task and task_id)")
    ep_meta = _json_attr(path, demo, key, "ep_meta", required=False)
    if "success" in ep_meta:  # one reading of the flag for every consumer (all of them test it with bool())
        ep_meta["success"] = success_flag(ep_meta["success"], f"{path}: {key}")
    return DemoInfo(
        name=name,
        num_samples=_attr(path, demo, key, "num_samples", int),
        task=_attr(path, demo, key, "task", str) if has_task else default_task,
        task_id=task_id,
        ep_meta=ep_meta,
        has_rewards="rewards" in demo,
    )


def _task_ids(path: str, demos: list[DemoInfo]) -> dict[str, int]:
    tasks: dict[str, int] = {}
    for d in demos:
        if tasks.setdefault(d.task, d.task_id) != d.task_id:
            raise _err(
                path, f"data/{d.name}", f"task {d.task!r} has task_id {d.task_id} here but {tasks[d.task]} elsewhere"
            )
    return tasks


def _obs_specs(path: str, demo: h5py.Group, key: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if "obs" not in demo or not isinstance(demo["obs"], h5py.Group):
        raise _err(path, key, "missing group")
    return {k: (tuple(v.shape[1:]), v.dtype) for k, v in demo["obs"].items() if isinstance(v, h5py.Dataset)}


def select_demos(
    info: DatasetInfo,
    *,
    mask: str | None = None,
    tasks: Sequence[str] | None = None,
    demos: Sequence[str] | None = None,
) -> list[str]:
    """Demo names (numeric order) in ``mask`` AND of one of ``tasks`` AND in ``demos`` (each optional)."""
    selected = [d.name for d in info.demos]
    if mask is not None:
        if mask in info.unreadable_masks:
            raise _err(info.path, f"mask/{mask}", info.unreadable_masks[mask])
        if mask not in info.masks:
            raise _err(info.path, f"mask/{mask}", f"unknown mask; available masks: {sorted(info.masks)}")
        if info.stale_masks.get(mask):
            raise _err(info.path, f"mask/{mask}", f"lists demos that are not under data/: {info.stale_masks[mask][:5]} "
                                                  "(deleted from the file?); rewrite the mask without them")
        keep = set(info.masks[mask])
        selected = [n for n in selected if n in keep]
    if tasks is not None:
        if isinstance(tasks, str):
            tasks = [tasks]
        unknown = [t for t in tasks if t not in info.tasks]
        if unknown:
            raise _err(info.path, "data/*/task", f"unknown task(s) {unknown}; tasks in this file: {sorted(info.tasks)}")
        wanted = set(tasks)
        selected = [d.name for d in info.demos if d.name in set(selected) and d.task in wanted]
    if demos is not None:
        if isinstance(demos, str):  # one name, as tasks takes one (it was read letter by letter)
            demos = [demos]
        known = {d.name for d in info.demos}
        unknown = [n for n in demos if n not in known]
        if unknown:
            raise _err(info.path, "data", f"unknown demo(s) {unknown[:5]}")
        wanted = set(demos)
        selected = [n for n in selected if n in wanted]
    if not selected:
        raise DatasetError(f"{info.path}: the selection (mask={mask}, tasks={tasks}) contains no demos")
    return selected


def _read_into(path: str, ds: h5py.Dataset, key: str, out: np.ndarray, lo: int, hi: int, finite: bool = True
               ) -> None:
    """Read ``ds`` into ``out[lo:hi]`` (in place when dtypes match) and reject NaN/inf (unless not ``finite``), and
    finite values too large for ``out``'s dtype (a float64 1e39 became inf in float32 and was called "NaN or inf",
    which the file does not hold; a new user's finding)."""
    raw = None
    try:
        if ds.dtype == out.dtype:
            ds.read_direct(out, dest_sel=np.s_[lo:hi])
        else:
            raw = np.asarray(ds[()])
    except (OSError, TypeError, ValueError) as e:
        raise _err(path, key, f"cannot be read as {out.dtype} (truncated or corrupt file?): {e}") from None
    if raw is not None:
        if out.dtype.kind == "f" and raw.dtype.kind == "f" and np.finfo(raw.dtype).max > np.finfo(out.dtype).max:
            _reject_too_large(path, key, raw, out.dtype)
        try:
            with np.errstate(over="ignore"):  # (what overflows was refused above; inf stays inf)
                out[lo:hi] = raw
        except (TypeError, ValueError) as e:
            raise _err(path, key, f"cannot be read as {out.dtype} (truncated or corrupt file?): {e}") from None
    part = out[lo:hi]
    if finite and part.dtype.kind == "f":
        _reject_non_finite(path, key, part)


def _reject_too_large(path: str, key: str, rows: np.ndarray, dtype: np.dtype) -> None:
    """Raise :class:`DatasetError` naming the first row of ``rows`` holding a finite value beyond ``dtype``'s range."""
    rows = np.atleast_1d(rows)
    with np.errstate(over="ignore", invalid="ignore"):  # what the cast makes infinite, no more (nor the inf in it)
        over = np.isfinite(rows) & ~np.isfinite(rows.astype(dtype))
    if over.any():
        flat = over.reshape(len(rows), -1)
        bad = int(np.argwhere(flat)[0, 0])
        value = rows.reshape(len(rows), -1)[bad][flat[bad]][0]
        raise _err(path, key, f"holds {value:.6g} (first at row {bad}), beyond {np.dtype(dtype)}'s range "
                              f"(+-{np.finfo(dtype).max:.6g}) the toolkit reads it in; rescale the values")


def _reject_non_finite(path: str, key: str, rows: np.ndarray) -> None:
    """Raise :class:`DatasetError` naming the first row of ``rows`` (N, ...) holding a NaN or inf."""
    if not np.isfinite(rows).all():
        bad = int(np.argwhere(~np.isfinite(rows.reshape(len(rows), -1)))[0, 0])
        raise _err(path, key, f"contains NaN or inf (first at row {bad}); expected finite values")


DONES_VALUES = "expected values in {0, 1}"


def check_finite_transitions(trans: Transitions) -> None:
    """:func:`load_transitions`' value refusals for arrays read another way (the frame index, which stores every
    demo whatever a run selects): raise :class:`DatasetError` naming the first demo, key and row (within the demo)
    that holds NaN / inf, or the first demo whose dones are not all 0 or 1."""
    parts = [*((f"obs/{k}", v) for k, v in trans.obs.items()),
             *((f"next_obs/{k}", v) for k, v in trans.next_obs.items()),
             ("actions", trans.actions), ("rewards", trans.rewards), ("dones", trans.dones)]
    for key, arr in parts:
        if arr.dtype.kind != "f" or np.isfinite(arr).all():
            continue
        row = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))[0])
        episode = int(trans.episode_ids[row])
        start = int(np.flatnonzero(trans.episode_ids == episode)[0])
        raise _err(trans.path, f"data/{trans.demo_names[episode]}/{key}",
                   f"contains NaN or inf (first at row {row - start}); expected finite values")
    odd = ~np.isin(trans.dones, (0.0, 1.0))
    if odd.any():
        raise _err(trans.path, f"data/{trans.demo_names[int(trans.episode_ids[np.flatnonzero(odd)[0]])]}/dones",
                   DONES_VALUES)


def _allocate(specs: dict[str, tuple[tuple[int, ...], np.dtype]], keys: Sequence[str], n: int) -> dict[str, np.ndarray]:
    out = {}
    for k in keys:
        shape, dtype = specs[k]
        image = dtype == np.uint8 and len(shape) >= 2  # a uint8 (d,) step is a low-dim part (flags), read as float32
        out[k] = np.empty((n, *shape), dtype=np.uint8 if image else np.float32)
    return out


def check_layout(path: str | os.PathLike, obs_keys: Sequence[str] = ()) -> DatasetInfo:
    """Validate the whole file as the stages' reader does, without reading array data: its metadata
    (:func:`read_info`), then every demo's action, reward and done datasets and its ``obs_keys`` (shapes, dtypes, the
    same shapes in every demo; none by default: a stage checks only the parts it reads). Demos of fewer than 2 steps
    are skipped (a mask or ``data.skip_short_demos`` leaves them out). Returns the file's :class:`DatasetInfo`;
    raises :class:`DatasetError` at the first problem, naming it (what ``robopretrain.data.inspect`` reports)."""
    info = read_info(path)
    keys = list(obs_keys)
    with _open(info.path) as f:
        act_dim: int | None = None
        for d in info.demos:
            if d.num_samples < 2:
                continue
            act_dim = _check_demo(info.path, f["data"][d.name], d, keys, act_dim)
            _check_consistent_obs(info.path, f["data"][d.name], d.name, keys, info.obs_specs)
    return info


def load_transitions(
    path: str | os.PathLike,
    obs_keys: Sequence[str],
    *,
    mask: str | None = None,
    tasks: Sequence[str] | None = None,
    demos: Sequence[str] | None = None,
    images: bool = True,
    action_range: bool = True,
    check_finite: bool = True,
    low_dim: Sequence[str] = (),
    info: DatasetInfo | None = None,
) -> Transitions:
    """Load ``obs_keys`` (and next_obs, actions, rewards, dones) of the selected demos into flat arrays.

    Low-dim observations, actions, rewards and dones are returned as float32, images as uint8. With
    ``images=False`` image keys are validated (shapes, dtypes) but not read and left out of ``obs`` / ``next_obs``
    (the disk-backed dataset, :mod:`robopretrain.data.disk`, reads them on demand). ``action_range=False`` reads
    actions outside ``[-1, 1]`` as they are (a caller that rescales them, :mod:`robopretrain.data.dataset`);
    ``check_finite=False`` leaves NaN / inf and dones other than 0 / 1 in place (the frame index, which stores every
    demo and is checked per selection by :func:`check_finite_transitions`). ``low_dim``: keys (of ``obs_keys``)
    that are low-dim parts
    whatever their name: checked and read as float ``(N, d)`` even when named ``*_image`` (the name rule, module
    docstring, decides only for keys not listed). ``info``: the file's :func:`read_info`, when the caller has it
    (read here otherwise: a file of many small demos takes seconds). Raises :class:`DatasetError` on any contract
    violation (see the module docstring).
    """
    info = info if info is not None else read_info(path)
    p = info.path
    if not obs_keys:
        raise DatasetError(f"{p}: no observation keys requested")
    missing = [k for k in obs_keys if k not in info.obs_specs]
    if missing:
        available = sorted(info.obs_specs)
        shown = next((d.name for d in info.demos if d.num_samples > 0), info.demos[0].name)  # read_info's
        raise _err(p, f"data/{shown}/obs", f"missing key(s) {missing}; available: {available}")
    names = select_demos(info, mask=mask, tasks=tasks, demos=demos)
    chosen = [info.demo(n) for n in names]
    with _open(p) as f:
        act_dim: int | None = None
        for d in chosen:
            act_dim = _check_demo(p, f["data"][d.name], d, obs_keys, act_dim, low_dim)
            _check_consistent_obs(p, f["data"][d.name], d.name, obs_keys, info.obs_specs)
        n_total = sum(d.num_samples for d in chosen)
        read_keys = [k for k in obs_keys if images or not _is_image_key(k, (0,) + info.obs_specs[k][0], low_dim,
                                                                         info.obs_specs[k][1])]
        obs = _allocate(info.obs_specs, read_keys, n_total)
        next_obs = _allocate(info.obs_specs, read_keys, n_total)
        actions = np.empty((n_total, act_dim), dtype=np.float32)
        rewards = np.empty(n_total, dtype=np.float32)
        dones = np.empty(n_total, dtype=np.float32)
        episode_ids = np.empty(n_total, dtype=np.int64)
        task_ids = np.empty(n_total, dtype=np.int64)
        lo = 0
        for i, d in enumerate(chosen):
            hi = lo + d.num_samples
            _read_demo(p, f["data"][d.name], d.name, read_keys, obs, next_obs, actions, rewards, dones, lo, hi,
                       action_range, check_finite)
            episode_ids[lo:hi] = i
            task_ids[lo:hi] = d.task_id
            lo = hi
    return Transitions(
        path=p,
        obs=obs,
        next_obs=next_obs,
        actions=actions,
        rewards=rewards,
        dones=dones,
        episode_ids=episode_ids,
        task_ids=task_ids,
        demo_names=names,
        episode_tasks=[d.task for d in chosen],
        ep_meta=[d.ep_meta for d in chosen],
    )


def _check_consistent_obs(
    path: str, demo: h5py.Group, name: str, obs_keys: Sequence[str], specs: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> None:
    for sub in ("obs", "next_obs"):
        for k in obs_keys:
            ds = demo[f"{sub}/{k}"]
            shape, dtype = specs[k]
            if tuple(ds.shape[1:]) != shape or (ds.dtype == np.uint8) != (dtype == np.uint8):
                cameras = converted_as_camera(k, (0, *shape), dtype) and converted_as_camera(k, ds.shape, ds.dtype)
                raise _err(
                    path,
                    f"data/{name}/{sub}/{k}",
                    f"expected per-step shape {shape} ({dtype}) as in the first demo, got {ds.shape[1:]} ({ds.dtype})"
                    + (RESIZE_HINT.format(what="one size for all") if cameras else ""),
                )


def _read_demo(
    path: str,
    demo: h5py.Group,
    name: str,
    obs_keys: Sequence[str],
    obs: dict[str, np.ndarray],
    next_obs: dict[str, np.ndarray],
    actions: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    lo: int,
    hi: int,
    action_range: bool = True,
    finite: bool = True,
) -> None:
    base = f"data/{name}"
    for k in obs_keys:
        _read_into(path, demo[f"obs/{k}"], f"{base}/obs/{k}", obs[k], lo, hi, finite)
        _read_into(path, demo[f"next_obs/{k}"], f"{base}/next_obs/{k}", next_obs[k], lo, hi, finite)
    _read_into(path, demo["actions"], f"{base}/actions", actions, lo, hi, finite)
    if action_range and np.abs(actions[lo:hi]).max() > 1.0 + 1e-6:
        raise _err(path, f"{base}/actions", f"values outside [-1, 1] (max |a| = {np.abs(actions[lo:hi]).max():.4g}; "
                   "load_transitions(..., action_range=False) reads them as stored; the stages rescale them)")
    if "rewards" in demo:
        _read_into(path, demo["rewards"], f"{base}/rewards", rewards, lo, hi, finite)
    else:
        rewards[lo:hi] = 0.0
    _read_into(path, demo["dones"], f"{base}/dones", dones, lo, hi, finite)
    if finite and not np.isin(dones[lo:hi], (0.0, 1.0)).all():  # else checked per selection (the frame index)
        raise _err(path, f"{base}/dones", DONES_VALUES)
