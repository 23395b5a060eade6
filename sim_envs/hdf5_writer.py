"""Write robot episodes into a robomimic-format HDF5 file (the "Robot dataset" contract of ARCHITECTURE.md).

Layout written by :class:`RobomimicWriter`::

    data/            attrs: total (int, transitions), env_args (JSON: env_name, env_version, type, env_kwargs)
      demo_<i>/      attrs: num_samples (int), task (str), task_id (int), ep_meta (JSON)
        obs/<key>      (N, ...)  images uint8 (N, H, W, C) compressed and chunked per block of frames,
        next_obs/<key> (N, ...)  low-dim float32 (N, d)
        actions (N, A) float32 in [-1, 1];  rewards (N,) float32;  dones (N,) uint8, 1 only on a true terminal
    mask/train, mask/valid, mask/<Task>   demo names as bytes (dtype "S")

The file is written under a temporary name in the destination folder and ``os.replace()``d onto the final
path by :meth:`RobomimicWriter.close`; an exception inside the ``with`` block (or :meth:`abort`) deletes the
temporary file, so an interrupted collection never leaves a broken file at the final path; the partial file of a
collection killed outright (SIGKILL, power loss) is removed by the next writer of that path
(:func:`remove_abandoned_partials`). Every episode
is validated before anything is written; a bad one raises :class:`EpisodeError` naming the key and what
was expected. Observation keys ending in ``_image`` are images; every other key is low-dim.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIX = "_image"
ABANDONED_AFTER_S = 60.0  # a partial file this old and locked by no process is abandoned (see below)
SPACE_MARGIN = 256 << 10  # bytes kept free beyond an episode's arrays: the file's metadata, masks and attributes


def remove_abandoned_partials(path: str | os.PathLike, before: float | None = None) -> list[Path]:
    """Remove the partial HDF5 files that writers of ``path`` killed outright left beside it: ``.<name>.*.tmp``
    (:class:`RobomimicWriter`) and ``<name>.*.tmp`` (``robopretrain.data`` conversions). A partial is removed only
    when no process holds it open for writing (the HDF5 library holds an exclusive ``flock`` on a file it writes,
    tested with a non-blocking lock) and it was last modified over ``ABANDONED_AFTER_S`` s ago, or before the time
    ``before`` (a writer's own start, at its end: a writer alive then has long since opened its file; the age
    covers the moment between a file's creation and the library opening it); a writer that is alive keeps its
    file. With the library's locking off
    (``HDF5_USE_FILE_LOCKING=FALSE``, common on network file systems) no writer can be told from a dead one, and
    nothing is removed. Returns the files removed."""
    path = Path(path)
    removed: list[Path] = []
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() in ("FALSE", "0"):
        return removed
    for partial in [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f"{path.name}.*.tmp")]:
        try:
            modified = partial.stat().st_mtime
            if not partial.is_file() or (time.time() - modified < ABANDONED_AFTER_S
                                         and (before is None or modified >= before)):
                continue
            with open(partial, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError while a writer holds it
                size = partial.stat().st_size
                partial.unlink()
        except OSError:
            continue
        removed.append(partial)
        log.info("removed %s (%.1f MB), the partial file of a writer of %s that was killed", partial, size / 2**20,
                 path)
    return removed

# robomimic's EnvType: 1 robosuite, 2 gym, 3 iGibson MoMaRT.
ROBOMIMIC_GYM_TYPE = 2
COMPRESSIONS = ("gzip", "lzf", None)


class EpisodeError(ValueError):
    """An episode handed to the writer does not follow the dataset contract."""


def is_image_key(key: str) -> bool:
    """Whether the observation ``key`` holds images (robomimic's naming: ``*_image``)."""
    return key.endswith(IMAGE_SUFFIX)


def make_env_args(env_name: str, env_version: str, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data.attrs["env_args"]`` dict robomimic expects, for a gym-type environment."""
    return {"env_name": env_name, "env_version": env_version, "type": ROBOMIMIC_GYM_TYPE,
            "env_kwargs": dict(env_kwargs)}


def split_train_valid(demos_by_task: Mapping[str, Sequence[str]], valid_fraction: float,
                      seed: int) -> tuple[list[str], list[str]]:
    """Split demo names into (train, valid) by episode, stratified per task and seeded.

    Each task with at least two demos gives ``round(valid_fraction * n)`` demos to valid, at least one when
    ``valid_fraction > 0`` and at most ``n - 1``, so every task keeps training data. Both lists are sorted
    numerically (``demo_2`` before ``demo_10``).
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction={valid_fraction}; expected a number in [0, 1)")
    rng = np.random.default_rng(seed)
    train: list[str] = []
    valid: list[str] = []
    for task in sorted(demos_by_task):
        names = list(demos_by_task[task])
        n = len(names)
        n_valid = int(round(valid_fraction * n))
        if valid_fraction > 0 and n >= 2:
            n_valid = min(max(n_valid, 1), n - 1)
        elif n < 2:
            n_valid = 0
        chosen = set(rng.permutation(n)[:n_valid].tolist())
        for i, name in enumerate(names):
            (valid if i in chosen else train).append(name)
    return _sorted_demos(train), _sorted_demos(valid)


def _sorted_demos(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda n: int(n.split("_")[-1]))


def check_image_storage(compression: str | None, compression_level: int, chunk_frames: int) -> None:
    """Raise ValueError naming the setting when the image datasets' ``compression`` (one of ``COMPRESSIONS``), its
    gzip ``compression_level`` (0-9; h5py says so only at the first frame) or ``chunk_frames`` (>= 1) is invalid."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression={compression!r}; expected one of {COMPRESSIONS}")
    if compression == "gzip" and not 0 <= int(compression_level) <= 9:
        raise ValueError(f"compression_level={compression_level}; expected 0-9 for gzip")
    if int(chunk_frames) < 1:
        raise ValueError(f"chunk_frames={chunk_frames}; expected >= 1")


class RobomimicWriter:
    """Context manager writing episodes to a robomimic HDF5 file, atomically.

    Usage::

        with RobomimicWriter(path, env_args, valid_fraction=0.1, split_seed=0) as w:
            w.add_episode(task="PushBlock", task_id=1, obs=..., next_obs=..., actions=..., rewards=...,
                          dones=..., ep_meta={...})
        # the file exists at ``path`` only now

    ``compression`` ("gzip", "lzf" or None) and ``chunk_frames`` apply to image datasets, chunked as
    (chunk_frames, H, W, C) so reading a frame decompresses only its block. ``info`` (JSON-serializable,
    e.g. the collection config and library versions) is stored as ``data.attrs["collection"]``.
    """

    def __init__(self, path: str | os.PathLike, env_args: Mapping[str, Any], *, action_dim: int = 4,
                 valid_fraction: float = 0.1, split_seed: int = 0, compression: str | None = "lzf",
                 compression_level: int = 4, chunk_frames: int = 16, overwrite: bool = False,
                 info: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        check_image_storage(compression, compression_level, chunk_frames)
        if not 0.0 <= valid_fraction < 1.0:
            raise ValueError(f"valid_fraction={valid_fraction}; expected a number in [0, 1)")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: already exists; pass overwrite=True (collect config: "
                                  "overwrite=true) to replace it")
        env_json = _json_text("env_args", env_args)
        info_json = None if info is None else _json_text("info", info)
        missing = [k for k in ("env_name", "env_version", "type", "env_kwargs") if k not in env_args]
        if missing:
            raise ValueError(f"env_args: missing keys {missing} (expected env_name, env_version, type, env_kwargs)")
        self.action_dim = int(action_dim)
        self.valid_fraction = float(valid_fraction)
        self.split_seed = int(split_seed)
        self.compression = compression
        self.compression_level = int(compression_level)
        self.chunk_frames = int(chunk_frames)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        remove_abandoned_partials(self.path)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as e:  # (it named the hidden temporary file, not the output the user gave)
            raise OSError(e.errno, f"{self.path}: cannot write in {self.path.parent} ({e.strerror or e})") from None
        os.close(fd)
        self.tmp_path = Path(tmp)
        os.chmod(self.tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
        try:
            self._file: h5py.File | None = h5py.File(self.tmp_path, "w")
        except OSError:
            self.tmp_path.unlink(missing_ok=True)
            raise
        self._data = self._file.create_group("data")
        self._data.attrs["env_args"] = env_json
        if info_json is not None:
            self._data.attrs["collection"] = info_json
        self._total = 0
        self._demos_by_task: dict[str, list[str]] = {}
        self._obs_specs: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "RobomimicWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def num_episodes(self) -> int:
        return sum(len(v) for v in self._demos_by_task.values())

    @property
    def total(self) -> int:
        return self._total

    # ------------------------------------------------------------------ writing
    def add_episode(self, *, task: str, task_id: int, obs: Mapping[str, np.ndarray],
                    next_obs: Mapping[str, np.ndarray], actions: np.ndarray, rewards: np.ndarray,
                    dones: np.ndarray, ep_meta: Mapping[str, Any]) -> str:
        """Validate one episode and write it as the next ``data/demo_<i>``; returns the demo name."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        name = f"demo_{self.num_episodes}"
        episode = self._validated(name, task, task_id, obs, next_obs, actions, rewards, dones, ep_meta)
        self._check_space(episode)
        group = self._data.create_group(name)
        n = len(episode["actions"])
        group.attrs["num_samples"] = n
        group.attrs["task"] = task
        group.attrs["task_id"] = int(task_id)
        group.attrs["ep_meta"] = episode["ep_meta"]
        for part in ("obs", "next_obs"):
            sub = group.create_group(part)
            for key in sorted(episode[part]):
                self._write_obs(sub, key, episode[part][key])
        group.create_dataset("actions", data=episode["actions"])
        group.create_dataset("rewards", data=episode["rewards"])
        group.create_dataset("dones", data=episode["dones"])
        self._total += n
        self._demos_by_task.setdefault(task, []).append(name)
        if self._obs_specs is None:
            self._obs_specs = {key: (arr.shape[1:], arr.dtype) for key, arr in episode["obs"].items()}
        self._file.flush()  # on disk now: the next episode's space check sees it
        return name

    def _check_space(self, episode: Mapping[str, Any]) -> None:
        """OSError (ENOSPC) naming the output before an episode the disk cannot hold is written: its arrays as
        they are, an image key's padded to whole chunks of ``chunk_frames`` (HDF5 stores the last chunk whole;
        compression may add a few bytes per chunk, gzip on noise, which the margin holds) and ``SPACE_MARGIN``
        for the file's metadata and masks. The HDF5 library, left to run out of space, raised inside h5py's object
        deallocation (a hundred ignored tracebacks), then crashed the process (a segmentation fault) and left the
        partial file filling the disk."""
        need = SPACE_MARGIN + sum(np.asarray(episode[k]).nbytes for k in ("actions", "rewards", "dones"))
        for part in ("obs", "next_obs"):
            for key, value in episode[part].items():
                rows = max(len(value), 1)
                chunk = min(self.chunk_frames, rows) if is_image_key(key) else rows  # (as _write_obs chunks them)
                need += math.ceil(rows / chunk) * chunk * (np.asarray(value).nbytes // rows)
        try:
            free = shutil.disk_usage(self.tmp_path.parent).free
        except OSError:
            return
        if need > free:
            raise OSError(errno.ENOSPC, f"No space left on device for {self.path}: episode {self.num_episodes} "
                                        f"needs up to {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free in "
                                        f"{self.tmp_path.parent} (the partial file is removed)")

    def close(self) -> Path:
        """Write ``total`` and the masks, close the file and move it onto the final path; then remove the partial
        files of killed writers last written before this one started (a rerun started within the minute after a
        kill kept that run's partial at its start, and at its end too, till the minute had passed)."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: writer already closed")
        try:
            if self.num_episodes == 0:
                raise EpisodeError(f"{self.path}: no episodes were added; refusing to write an empty dataset")
            self._data.attrs["total"] = self._total
            self._write_masks()
            self._file.close()
            self._file = None
            if self.overwrite:
                os.replace(self.tmp_path, self.path)
            else:
                self._move_without_replacing()
        except BaseException:
            self.abort()
            raise
        remove_abandoned_partials(self.path, before=self._started)  # again: a run killed just before this one
        return self.path

    def _move_without_replacing(self) -> None:
        """Move the finished file onto ``path`` unless a file appeared there while this one was written (another
        collection into the same output, started after this one checked): that one is kept, this one is kept beside
        it under a free name (``<stem>.<pid>[-k]<suffix>``; never over a file already there, a pid being reused),
        and :class:`FileExistsError` says both (a second writer replaced the first's file without a word)."""
        if self._place_at(self.path):
            return
        for k in range(1000):
            kept = self.path.with_name(f"{self.path.stem}.{os.getpid()}{f'-{k}' if k else ''}{self.path.suffix}")
            if self._place_at(kept):
                raise FileExistsError(f"{self.path}: written by another process while this one collected (overwrite="
                                      f"false keeps it); this run's data is kept as {kept}: rename it, or rerun with "
                                      "another output (or overwrite=true)")
        raise FileExistsError(f"{self.path}: written by another process while this one collected, and no free name "
                              "beside it keeps this run's data")

    def _place_at(self, dst: Path) -> bool:
        """Move the finished file to ``dst`` unless a file is there (False): a hard link, which fails atomically if
        one is; on a file system without them, checked, then moved (a narrow window remains)."""
        try:
            os.link(self.tmp_path, dst)
        except FileExistsError:
            return False
        except OSError:
            if dst.exists():
                return False
            os.replace(self.tmp_path, dst)
            return True
        self.tmp_path.unlink()
        return True

    def abort(self) -> None:
        """Close and delete the temporary file; nothing is left at the final path."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        self.tmp_path.unlink(missing_ok=True)

    def _write_obs(self, group: h5py.Group, key: str, value: np.ndarray) -> None:
        if is_image_key(key):
            chunks = (min(self.chunk_frames, len(value)),) + value.shape[1:]
            opts = self.compression_level if self.compression == "gzip" else None
            group.create_dataset(key, data=value, chunks=chunks, compression=self.compression,
                                 compression_opts=opts)
        else:
            group.create_dataset(key, data=value)

    def _write_masks(self) -> None:
        assert self._file is not None
        mask = self._file.create_group("mask")
        train, valid = split_train_valid(self._demos_by_task, self.valid_fraction, self.split_seed)
        groups = {"train": train, "valid": valid}
        for task, names in self._demos_by_task.items():
            if task in groups:
                raise EpisodeError(f"{self.path}: task name {task!r} collides with the mask/{task} split name")
            groups[task] = names
        for name, demos in groups.items():
            mask.create_dataset(name, data=np.array(demos, dtype="S"))

    # ------------------------------------------------------------------ validation
    def _validated(self, name: str, task: str, task_id: int, obs: Mapping[str, np.ndarray],
                   next_obs: Mapping[str, np.ndarray], actions: np.ndarray, rewards: np.ndarray,
                   dones: np.ndarray, ep_meta: Mapping[str, Any]) -> dict[str, Any]:
        where = f"{self.path}: data/{name}"
        if not isinstance(task, str) or not task or task in ("train", "valid"):
            raise EpisodeError(f"{where}: attribute 'task' must be a non-empty task name other than "
                               f"'train'/'valid', got {task!r}")
        if isinstance(task_id, (bool, np.bool_)) or not isinstance(task_id, (int, np.integer)):
            raise EpisodeError(f"{where}: attribute 'task_id' must be an int, got {task_id!r}")
        acts = _as_array(where, "actions", actions)
        if acts.ndim != 2 or acts.shape[1] != self.action_dim or acts.shape[0] < 1:
            raise EpisodeError(f"{where}/actions: expected shape (N>=1, {self.action_dim}), got {acts.shape}")
        n = acts.shape[0]
        acts = _finite_float(where, "actions", acts)
        if np.abs(acts).max() > 1.0:
            raise EpisodeError(f"{where}/actions: expected values in [-1, 1], got range "
                               f"[{acts.min():.4g}, {acts.max():.4g}]")
        rews = _finite_float(where, "rewards", _vector(where, "rewards", rewards, n))
        dns = _vector(where, "dones", dones, n)
        if dns.dtype.kind not in "biu" or not np.isin(dns, (0, 1)).all():
            raise EpisodeError(f"{where}/dones: expected integers in {{0, 1}}, got {dns.dtype} values "
                               f"{np.unique(dns)[:5]}")
        if dns[:-1].any():
            raise EpisodeError(f"{where}/dones: 1 before the last step (index {int(np.argmax(dns))} of {n}); "
                               "a terminal must end the episode")
        if set(obs) != set(next_obs):
            raise EpisodeError(f"{where}: next_obs keys {sorted(next_obs)} differ from obs keys {sorted(obs)}")
        obs_arrays = self._validated_obs(where, "obs", obs, n)
        next_arrays = self._validated_obs(where, "next_obs", next_obs, n)
        specs = {key: (arr.shape[1:], arr.dtype) for key, arr in obs_arrays.items()}
        for key, arr in next_arrays.items():
            if (arr.shape[1:], arr.dtype) != specs[key]:
                raise EpisodeError(f"{where}/next_obs/{key}: per-step shape {arr.shape[1:]} {arr.dtype} differs from "
                                   f"obs/{key}'s {specs[key][0]} {specs[key][1]}")
        self._check_consistent_specs(where, specs)
        try:
            meta_json = json.dumps(dict(ep_meta), sort_keys=True)
        except (TypeError, ValueError) as e:
            raise EpisodeError(f"{where}: attribute 'ep_meta' must be JSON-serializable: {e}") from None
        return {"obs": obs_arrays, "next_obs": next_arrays, "actions": acts.astype(np.float32),
                "rewards": rews.astype(np.float32), "dones": dns.astype(np.uint8), "ep_meta": meta_json}

    def _validated_obs(self, where: str, part: str, obs: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        if not obs:
            raise EpisodeError(f"{where}/{part}: expected at least one observation key")
        out: dict[str, np.ndarray] = {}
        for key, value in obs.items():
            k = f"{part}/{key}"
            arr = _as_array(where, k, value)
            if arr.shape[:1] != (n,):
                raise EpisodeError(f"{where}/{k}: expected {n} rows (one per action), got shape {arr.shape}")
            if is_image_key(key):
                if arr.dtype != np.uint8:
                    raise EpisodeError(f"{where}/{k}: expected an image array of dtype uint8, got {arr.dtype}")
                if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
                    raise EpisodeError(f"{where}/{k}: expected images (N, H, W, C) with C in 1/3/4 (channels "
                                       f"last), got shape {arr.shape}")
            else:
                if arr.ndim != 2:
                    raise EpisodeError(f"{where}/{k}: expected a low-dim array (N, d), got shape {arr.shape}")
                arr = _finite_float(where, k, arr).astype(np.float32)
            out[key] = arr
        return out

    def _check_consistent_specs(self, where: str, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        """Every episode must have the keys, per-step shapes and dtypes of the first one written."""
        if self._obs_specs is None:
            return
        if set(specs) != set(self._obs_specs):
            raise EpisodeError(f"{where}/obs: keys {sorted(specs)} differ from earlier episodes' "
                               f"{sorted(self._obs_specs)}")
        for key, (shape, dtype) in specs.items():
            if (shape, dtype) != self._obs_specs[key]:
                want_shape, want_dtype = self._obs_specs[key]
                raise EpisodeError(f"{where}/obs/{key}: per-step shape {shape} {dtype} differs from earlier "
                                   f"episodes' {want_shape} {want_dtype}")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_text(name: str, value: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: must be a JSON-serializable mapping: {e}") from None


def _as_array(where: str, key: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as e:
        raise EpisodeError(f"{where}/{key}: cannot be converted to an array: {e}") from None


def _vector(where: str, key: str, value: Any, n: int) -> np.ndarray:
    arr = _as_array(where, key, value)
    if arr.shape != (n,):
        raise EpisodeError(f"{where}/{key}: expected shape ({n},) (one per action), got {arr.shape}")
    return arr


def _finite_float(where: str, key: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "fiub":
        raise EpisodeError(f"{where}/{key}: expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False) if arr.dtype.kind != "f" else arr
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise EpisodeError(f"{where}/{key}: expected finite values, found NaN or inf at row {bad}")
    return arr

