"""A frame index beside a robomimic HDF5 file: each camera's frames once, in one flat file read row by row.

Random minibatches from the HDF5 file itself need one chunk read and decompression per row (robomimic files store
images in compressed chunks); a one-time ``index`` step (:func:`build_index`) writes, next to ``<file>.hdf5``, a
folder ``<file>.hdf5.frames/`` with, per camera key ``k`` of the file:

* ``k.u8``: the camera's distinct frames, uint8 ``(M, H, W, 3)`` raw (C order, no header; memory-mappable with
  ``np.memmap``); per demo of ``L`` steps the ``L`` frames of ``obs/k`` then the frames of ``next_obs/k`` that differ
  from the following ``obs/k`` (always the last one): ``next_obs[t]`` equal to ``obs[t + 1]`` is not stored twice;
* ``k.rows.npy``: int64 ``(2, N)`` (N: transitions of the file, demos in numeric order): the frame row of ``obs`` and
  of ``next_obs`` of every transition;
* ``k.crc.npy``: uint32 ``(M,)`` CRC-32 of every frame row, checked on every read (a corrupt chunk is named, not
  trained on);
* ``transitions/``: everything else of every demo, read and validated once with
  :func:`~robopretrain.data.hdf5.load_transitions` (images validated, not read): ``actions.npy``, ``rewards.npy``,
  ``dones.npy`` and ``obs.<key>.npy`` / ``next_obs.<key>.npy`` per low-dim key, so that a later run reads no
  per-demo HDF5 data (10,000 demos cost minutes of HDF5 calls, a few arrays a second);
* ``meta.json`` (written last: a folder without it is an interrupted build): the source file's size, modification
  and change times and SHA-256 (a changed file is indexed again; one only touched, or copied over itself with the same
  bytes, keeps its index: its hash tells, once: the index takes the new times, or where ``meta.json`` cannot be
  written, a record in the cache does, :func:`verified_stamp_path`), the demos, their first transition and, per key,
  their first frame row.

The index is built in ``<file>.hdf5.frames.tmp<pid>/`` and renamed into place; the builder holds an exclusive
``flock`` on its ``.building`` file meanwhile, so the next build of that file removes the folder of a build killed
outright (lock free) and leaves a running one's (:func:`remove_abandoned_builds`).

:class:`FrameStore` reads rows with ``os.pread`` (no memory map: the pages stay in the page cache and out of the
process's resident memory, so a 12 GB frame file costs the reader no RSS) and checks sizes at open (a truncated file
fails before training) and CRCs at read (:class:`~robopretrain.data.hdf5.DatasetError`, one line: file, demo, key).
The same store holds per-frame features of a frozen encoder (:func:`write_rows`, float32 rows; written to
``<file>.tmp<pid>`` under its writer's ``flock`` and renamed, so the next writer of that file removes a killed
writer's partial file the same way).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from robopretrain.data.hdf5 import (PROGRESS_MIN_DEMOS, DatasetError, DatasetInfo, Transitions, load_transitions,
                                    read_info)
from robopretrain.data.spec import as_rgb, stored_camera_shape
from robopretrain.files import sha256_of, write_json_atomic

log = logging.getLogger(__name__)

INDEX_SUFFIX = ".frames"
INDEX_VERSION = 2
BUILDING = ".building"  # in a folder being built: its builder holds an exclusive flock on it
ABANDONED_AFTER_S = 60.0  # a build folder without the lock file this old (or a replaced index's .old) is abandoned


def index_dir(path: str | os.PathLike) -> Path:
    """The index folder of an HDF5 file: ``<file>.frames`` beside it."""
    p = Path(path)
    return p.with_name(p.name + INDEX_SUFFIX)


def cache_index_dir(path: str | os.PathLike) -> Path:
    """Where the index of a file whose folder cannot be written goes (a shared read-only dataset):
    ``<cache>/frames/<file>.<16 hex of its absolute path>.frames``, the cache being ``$ROBOPRETRAIN_CACHE_DIR``, else
    ``~/.cache/robopretrain`` (converted copies go to its ``datasets/``)."""
    import hashlib

    from robopretrain.data.convert import default_cache_dir

    p = Path(path).expanduser().resolve()
    key = hashlib.sha256(str(p).encode()).hexdigest()[:16]
    return default_cache_dir().parent / "frames" / f"{p.name}.{key}{INDEX_SUFFIX}"


def verified_stamp_path(folder: str | os.PathLike) -> Path:
    """Where the times of a source found unchanged in content are kept when its index at ``folder`` cannot take them
    (``meta.json`` in a read-only folder, or on a volume that a ``chmod`` / ``chown`` of the file or an fsGroup mount
    moved the change time of): ``<cache>/frames/verified/<16 hex of the folder's absolute path>.json``, so that the
    next run does not hash the whole file again (about a minute per 12 GB, on every DDP rank)."""
    import hashlib

    from robopretrain.data.convert import default_cache_dir

    key = hashlib.sha256(str(Path(folder).expanduser().resolve()).encode()).hexdigest()[:16]
    return default_cache_dir().parent / "frames" / "verified" / f"{key}.json"


def _source_stamp(path: Path) -> dict[str, int]:
    """The file's size, modification time and inode change time: the change time moves with every write and no
    tool sets it back (``cp -p``, ``rsync -t`` and ``os.utime`` restore the modification time of an edited file)."""
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "ctime_ns": int(st.st_ctime_ns)}


def _row_crcs(rows: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(rows).reshape(len(rows), -1)
    return np.fromiter((zlib.crc32(r) for r in flat), dtype=np.uint32, count=len(flat))


@dataclass
class FrameIndex:
    """An opened index: the per-key stores and the row arrays of every transition of the file."""

    folder: Path
    meta: dict[str, Any]
    rows: dict[str, np.ndarray]  # key -> int64 (2, N): frame row of obs and of next_obs per transition

    def demo_starts(self) -> dict[str, int]:
        """Demo name -> its first transition in file order."""
        return {d: int(s) for d, s in zip(self.meta["demos"], self.meta["demo_starts"])}

    def transitions(self, info: DatasetInfo, demos: Sequence[str], obs_keys: Sequence[str]) -> Transitions:
        """The non-image data of ``demos`` (in this order) for low-dim ``obs_keys``, as
        :func:`~robopretrain.data.hdf5.load_transitions` gives it with ``images=False``."""
        folder = self.folder / "transitions"
        starts = self.demo_starts()
        chosen = [info.demo(d) for d in demos]
        sel = np.concatenate([starts[d.name] + np.arange(d.num_samples) for d in chosen])

        def load(name: str) -> np.ndarray:
            try:
                arr = np.load(folder / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DatasetError(f"{folder / (name + '.npy')}: cannot be read (truncated or corrupt?): {e}; "
                                   f"delete {self.folder} to index again") from None
            return np.ascontiguousarray(arr[sel])

        return Transitions(
            path=info.path, obs={k: load(f"obs.{k}") for k in obs_keys},
            next_obs={k: load(f"next_obs.{k}") for k in obs_keys}, actions=load("actions"), rewards=load("rewards"),
            dones=load("dones"),
            episode_ids=np.repeat(np.arange(len(chosen)), [d.num_samples for d in chosen]).astype(np.int64),
            task_ids=np.repeat([d.task_id for d in chosen], [d.num_samples for d in chosen]).astype(np.int64),
            demo_names=list(demos), episode_tasks=[d.task for d in chosen], ep_meta=[d.ep_meta for d in chosen])

    def store(self, key: str) -> FrameStore:
        m = self.meta["keys"][key]
        return FrameStore(self.folder / f"{key}.u8", tuple(m["shape"]), np.uint8, self.folder / f"{key}.crc.npy",
                          demos=self.meta["demos"], demo_rows=m["demo_rows"], key=key)


def _index_is_current(folder: Path, source: Path, keys: Sequence[str]) -> bool:
    """Whether ``folder`` holds a finished index of ``keys`` of ``source`` as it is now: same size, modification and
    change times (:func:`_source_stamp`), or (a file touched, copied, written again with the same bytes, or edited
    with its modification time set back) same size and SHA-256, after which the index takes the new times so that
    the next check hashes nothing."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get("version") != INDEX_VERSION or not all(k in meta.get("keys", {}) for k in keys):
        return False
    stamp, indexed = _source_stamp(source), meta.get("source")
    if not isinstance(indexed, dict) or indexed.get("size") != stamp["size"]:
        return False
    if indexed.get("mtime_ns") == stamp["mtime_ns"] and indexed.get("ctime_ns") == stamp["ctime_ns"]:
        return True
    verified, record = {"sha256": indexed.get("sha256"), "source": stamp}, None
    try:  # hashed before at these times, where meta.json could not take them
        record = verified_stamp_path(folder)
        if json.loads(record.read_text()) == verified:
            return True
    except (OSError, ValueError, RuntimeError):  # (RuntimeError: no home folder for the cache)
        pass
    if indexed.get("sha256") is None or sha256_of(source) != indexed["sha256"]:
        return False
    if "ctime_ns" not in indexed:  # an index of an older version: hashed once, the times recorded below
        log.info("%s: its frame index, of an older version, recorded no change time; its content is checked the same: "
                 "using that index", source)
    else:
        log.info("%s: modified since its frame index was built, but its content is the same; using that index",
                 source)
    try:
        write_json_atomic(meta_path, {**meta, "source": {**indexed, **stamp}}, indent=None)
    except OSError:  # a read-only folder: the cache keeps the times the content was verified at
        try:
            if record is not None:  # (None: no cache folder to keep it in)
                record.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(record, verified, indent=None)
        except OSError:  # the cache cannot be written either: hashed again next time
            pass
    return True


def _indexed_keys(folder: Path) -> list[str]:
    """The camera keys a (maybe stale) index at ``folder`` holds; empty when there is none or it is unreadable."""
    try:
        keys = json.loads((folder / "meta.json").read_text()).get("keys")
    except (OSError, ValueError, AttributeError):
        return []
    return [str(k) for k in keys] if isinstance(keys, dict) else []


def open_index(path: str | os.PathLike, keys: Sequence[str], *, info: DatasetInfo | None = None,
               build: bool = True) -> FrameIndex:
    """The frame index of ``path`` for camera ``keys``; built first (:func:`build_index`) when missing or stale and
    ``build``. Removes the folders builds killed outright left beside it (:func:`remove_abandoned_builds`: a build
    rerun at once found them too young, and the runs after it build nothing). Raises :class:`DatasetError` when it is
    missing and ``build`` is False."""
    source = Path(path)
    folder = index_dir(source)
    if not _index_is_current(folder, source, keys):
        cached = cache_index_dir(source)
        if _index_is_current(cached, source, keys):  # built there: the file's folder could not be written
            folder = cached
        elif not build:
            raise DatasetError(f"{source}: no current frame index at {folder} (data.storage=disk builds it)")
        else:  # with the cameras an earlier index held: runs on other cameras of the file do not rebuild it in turn
            info = info or read_info(source)
            earlier = [k for k in _indexed_keys(folder) + _indexed_keys(cached) if k in info.obs_specs]
            folder = build_index(source, list(dict.fromkeys([*keys, *earlier])), info=info)
    remove_abandoned_builds(folder)  # a build killed outright and rerun at once: its folder was too young then
    meta = json.loads((folder / "meta.json").read_text())
    rows = {}
    for k in keys:
        try:
            rows[k] = np.load(folder / f"{k}.rows.npy")
        except (OSError, ValueError) as e:
            raise DatasetError(f"{folder / (k + '.rows.npy')}: cannot be read (truncated or corrupt?): {e}") from None
        if rows[k].shape != (2, int(meta["num_transitions"])):
            raise DatasetError(f"{folder / (k + '.rows.npy')}: expected shape (2, {meta['num_transitions']}), got "
                               f"{rows[k].shape}; delete {folder} to index again")
    return FrameIndex(folder, meta, rows)


def build_index(path: str | os.PathLike, keys: Sequence[str], *, info: DatasetInfo | None = None) -> Path:
    """Write the frame index of camera ``keys`` of every demo of ``path`` (see the module docstring); returns its
    folder: beside the file, or (a folder that cannot be written) :func:`cache_index_dir`. Written to a temporary
    folder and renamed, so an interrupted build leaves no index."""
    source = Path(path)
    info = info or read_info(source)
    folder = index_dir(source)
    try:
        return _build_at(source, info, keys, folder)
    except _Unwritable as beside:
        cached = cache_index_dir(source)
        log.info("%s: its folder cannot be written (%s): the frame index goes to the cache, %s", source, beside,
                 cached)
        try:
            return _build_at(source, info, keys, cached)
        except _Unwritable as there:
            raise DatasetError(f"{source}: cannot write its frame index beside it ({beside}) nor in the cache "
                               f"({there}); set ROBOPRETRAIN_CACHE_DIR to a writable folder, or data.storage=memory"
                               ) from None


class _Unwritable(Exception):
    """The index folder's place cannot be written (read-only, no permission, not a folder)."""


def _build_at(source: Path, info: DatasetInfo, keys: Sequence[str], folder: Path) -> Path:
    """:func:`build_index` at ``folder``; raises :class:`_Unwritable` when its temporary folder cannot be made."""
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    remove_abandoned_builds(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        building = open(tmp / BUILDING, "wb")  # noqa: SIM115 (held until the index is in place)
    except OSError as e:
        raise _Unwritable(e.strerror or str(e)) from None
    with building:
        fcntl.flock(building, fcntl.LOCK_EX)
        need = index_bytes(info, keys)
        free = shutil.disk_usage(tmp).free
        if need > free:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(_no_space(source, folder, need, free, memory_bytes(info, keys)))
        try:
            return _build_holding(source, info, keys, folder, tmp)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # (the estimate fell short: other writers, or next_obs breaks)
            raise DatasetError(_no_space(source, folder, need, free, memory_bytes(info, keys), midway=True)) from None


def index_bytes(info: DatasetInfo, keys: Sequence[str]) -> int:
    """The frame index's size for camera ``keys`` at least: each camera's frames of every transition plus each
    demo's last next_obs frame, as stored, with their CRCs (the next_obs frames that break the stream inside a
    demo, and the non-image arrays, come on top)."""
    demos = [d.num_samples for d in info.demos if d.num_samples >= 2]
    frames = sum(demos) + len(demos)
    return int(sum(frames * (int(np.prod(info.obs_specs[k][0])) + 4) for k in keys if k in info.obs_specs))


def memory_bytes(info: DatasetInfo, keys: Sequence[str], demos: Sequence[str] | None = None) -> int:
    """The bytes camera ``keys``' frames of ``demos`` (None: every demo of 2 steps or more) take on the in-memory
    path (``obs`` and ``next_obs`` each held whole, as RGB: twice the index, which stores each frame once)."""
    steps = (sum(d.num_samples for d in info.demos if d.num_samples >= 2) if demos is None
             else sum(info.demo(d).num_samples for d in demos))
    return 2 * steps * sum(int(np.prod(info.obs_specs[k][0][:2])) * 3 for k in keys if k in info.obs_specs)


def _no_space(source: Path, folder: Path, need: int, free: int, memory: int, midway: bool = False) -> str:
    state = "ran out of room writing" if midway else "no room for"
    return (f"{source}: {state} its frame index {folder} (data.storage=disk): it takes at least {need / 1e9:.2f} "
            f"GB and {free / 1e9:.2f} GB were free on that filesystem when it started; free space there, or set "
            f"data.storage=memory (its frames then take about {memory / 1e9:.2f} GB of memory: obs and next_obs "
            "each held whole)")


def _abandoned(marker: Path) -> bool:
    """True when no process holds an exclusive ``flock`` on ``marker`` (its writer holds one while it runs) and it
    was last modified over ``ABANDONED_AFTER_S`` s ago (a file just made, not yet locked, is young); raises OSError
    when it cannot be opened."""
    with open(marker, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its writer runs
            return False
        return time.time() - marker.stat().st_mtime > ABANDONED_AFTER_S


def remove_abandoned_rows(path: Path) -> list[Path]:
    """Remove the partial files of :func:`write_rows` into ``path`` that writers killed outright left beside it
    (``<path>.tmp<pid>`` whose lock no process holds, over ``ABANDONED_AFTER_S`` s old); a running writer's is kept.
    Returns the files removed."""
    removed = []
    for leftover in path.parent.glob(f"{path.name}.tmp*"):
        if not leftover.name[len(path.name) + 4:].isdigit():  # <path>.tmp<pid> only
            continue
        try:
            if not leftover.is_file() or not _abandoned(leftover):
                continue
            leftover.unlink()
        except OSError:
            continue
        removed.append(leftover)
        log.info("removed %s, the partial file of a writer that was killed", leftover)
    return removed


def remove_abandoned_builds(folder: Path) -> list[Path]:
    """Remove the build folders of index ``folder`` that builders killed outright left beside it: ``<folder>.tmp<pid>``
    whose ``.building`` lock no process holds and was made over ``ABANDONED_AFTER_S`` s ago (one without the file, and
    a replaced index's ``<folder>.old<pid>``: last modified that long ago). A running build's folder is kept. Returns
    the folders removed."""
    removed = []
    for leftover in folder.parent.glob(f"{folder.name}.*"):
        kind, pid = leftover.name[len(folder.name) + 1:][:3], leftover.name[len(folder.name) + 4:]
        if kind not in ("tmp", "old") or not pid.isdigit():  # <folder>.tmp<pid> / <folder>.old<pid> only
            continue
        try:
            if not leftover.is_dir():
                continue
            marker = leftover / BUILDING
            if marker.is_file():
                if not _abandoned(marker):
                    continue
                shutil.rmtree(leftover)
            elif time.time() - leftover.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(leftover)
            else:
                continue
        except OSError:
            continue
        removed.append(leftover)
        log.info("removed %s, the partial frame index of a build that was killed", leftover)
    return removed


def _build_holding(source: Path, info: DatasetInfo, keys: Sequence[str], folder: Path, tmp: Path) -> Path:
    """:func:`build_index`'s copy into ``tmp`` and rename onto ``folder``, while holding ``tmp``'s lock."""
    # every demo a selection can hold (a shorter one is refused before any index is read), NaN / inf and odd dones
    # left as they are: a selection that holds one is refused by robopretrain.data.hdf5.check_finite_transitions
    demos = [d.name for d in info.demos if d.num_samples >= 2]
    lengths = [info.demo(d).num_samples for d in demos]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n = int(sum(lengths))
    # the file's stamp and content as indexed: a later change of its time alone is told from one of its bytes. The
    # hash reads the whole file once more; a thread does it while the frames are copied (hashlib and file reads
    # release the GIL), so the build waits for it only if it is the slower of the two
    stamp = _source_stamp(source)
    log.info("indexing the frames of %s (%d transitions, cameras %s) into %s", source, n, list(keys), folder)
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="index-sha256") as hasher:
        digest = hasher.submit(sha256_of, source, stop=stop)
        try:
            meta = _write_index(source, info, keys, demos, starts, n, tmp)
        except BaseException:  # a failed or interrupted copy: the hash is not waited for, the partial index goes
            stop.set()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        meta["source"] = {**stamp, "sha256": digest.result()}
    (tmp / "meta.json").write_text(json.dumps(meta))
    old = folder.with_name(f"{folder.name}.old{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    try:
        tmp.rename(folder)
        (folder / BUILDING).unlink(missing_ok=True)
    except OSError:  # another process finished the same index first
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _write_index(source: Path, info: DatasetInfo, keys: Sequence[str], demos: list[str], starts: np.ndarray, n: int,
                 tmp: Path) -> dict[str, Any]:
    """The index's files in ``tmp`` (non-image arrays, then each camera's frames); returns meta.json's content
    without the source's stamp."""
    meta: dict[str, Any] = {"version": INDEX_VERSION, "demos": demos, "demo_starts": starts.tolist(),
                            "num_transitions": n, "keys": {}}
    # actions as stored: the dataset loader re-expresses them in the agent's units and checks their range; the
    # other keys of numeric (d,) steps are low-dim parts whatever their name (a 12-D goal_image), as obs.low_dim
    # reads them; keys of no part (a (4, 4) height map, float features of a picture's shape, other cameras) are
    # left out, as a run in memory leaves the keys it does not read
    low_dim = [k for k, (shape, dtype) in info.obs_specs.items() if k not in keys and len(shape) == 1
               and np.dtype(dtype).kind in "fiub"]
    trans = load_transitions(source, low_dim, demos=demos, images=False, action_range=False, check_finite=False,
                             low_dim=low_dim, info=info)
    (tmp / "transitions").mkdir()
    for name, arr in [("actions", trans.actions), ("rewards", trans.rewards), ("dones", trans.dones),
                      *[(f"obs.{k}", v) for k, v in trans.obs.items()],
                      *[(f"next_obs.{k}", v) for k, v in trans.next_obs.items()]]:
        np.save(tmp / "transitions" / f"{name}.npy", arr)
    del trans
    with h5py.File(source, "r") as f:
        for key in keys:
            meta["keys"][key] = _index_key(f, str(source), key, demos, starts, n, tmp)
    return meta


def _index_key(f: h5py.File, path: str, key: str, demos: Sequence[str], starts: np.ndarray, n: int,
               out: Path) -> dict[str, Any]:
    rows = np.empty((2, n), dtype=np.int64)
    crcs: list[np.ndarray] = []
    demo_rows: list[int] = []
    shape: tuple[int, ...] | None = None
    m = 0
    with open(out / f"{key}.u8", "wb") as fh:
        for name, lo in tqdm(zip(demos, starts.tolist()), total=len(demos), desc=f"indexing {key}", unit="demo",
                             disable=len(demos) < PROGRESS_MIN_DEMOS, leave=False):
            base = f"data/{name}"
            try:
                obs = f[f"{base}/obs/{key}"][()]
                nxt = f[f"{base}/next_obs/{key}"][()]
            except KeyError:
                raise DatasetError(f"{path}: {base}/obs/{key}: missing") from None
            except OSError as e:
                raise DatasetError(f"{path}: {base}/obs/{key}: cannot be read (truncated or corrupt?): {e}") from None
            if stored_camera_shape(obs.shape[1:], obs.dtype) is None or nxt.shape != obs.shape:
                raise DatasetError(f"{path}: {base}/obs/{key}: expected uint8 (N, H, W, 3) frames (or grey (N, H, W, "
                                   f"1) / (N, H, W)) in obs and next_obs, got {obs.dtype} {obs.shape} and {nxt.dtype} "
                                   f"{nxt.shape}")
            if shape is None:
                shape = tuple(obs.shape[1:])
            elif tuple(obs.shape[1:]) != shape:
                raise DatasetError(f"{path}: {base}/obs/{key}: frames of shape {obs.shape[1:]}, first demo {shape}")
            length = len(obs)
            same = np.zeros(length, dtype=bool)  # next_obs[t] == obs[t + 1] (never for the last step)
            same[:-1] = (nxt[:-1] == obs[1:]).reshape(length - 1, -1).all(axis=1)
            extra = np.flatnonzero(~same)
            demo_rows.append(m)
            rows[0, lo: lo + length] = m + np.arange(length)
            nrow = m + np.arange(1, length + 1)
            nrow[extra] = m + length + np.arange(len(extra))
            rows[1, lo: lo + length] = nrow
            block = np.concatenate([obs, nxt[extra]])
            fh.write(np.ascontiguousarray(block).tobytes())
            crcs.append(_row_crcs(block))
            m += len(block)
    np.save(out / f"{key}.rows.npy", rows)
    np.save(out / f"{key}.crc.npy", np.concatenate(crcs).astype(np.uint32))
    return {"shape": [m, *shape], "demo_rows": demo_rows}


def write_rows(path: Path, chunks: Iterable[np.ndarray]) -> tuple[int, ...]:
    """Write row chunks (same trailing shape and dtype) to a raw file and its ``.crc.npy``; returns the full shape.

    Used for the frozen-feature cache: features are computed and written chunk by chunk, never all in memory. Written
    to ``<path>.tmp<pid>`` under an exclusive ``flock`` and renamed; a killed writer's partial file is removed here
    (:func:`remove_abandoned_rows`)."""
    path = Path(path)
    remove_abandoned_rows(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    crcs: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    total = 0
    with open(tmp, "wb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # held until the file is in place
        for chunk in chunks:
            c = np.ascontiguousarray(chunk)
            shape = shape or tuple(c.shape[1:])
            fh.write(c.tobytes())
            crcs.append(_row_crcs(c))
            total += len(c)
        fh.flush()
        np.save(path.with_name(path.name + ".crc.npy"), np.concatenate(crcs).astype(np.uint32))
        os.replace(tmp, path)
    return (total, *(shape or ()))


class FrameStore:
    """Rows of one raw array file, read with ``os.pread`` and checked against their CRC-32.

    ``shape`` is the full ``(M, ...)`` shape; ``demos`` / ``demo_rows`` (first row of each demo) name the demo of a
    bad row in errors. Picklable (the file is reopened in each process)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, crc_path: Path, *,
                 demos: Sequence[str] = (), demo_rows: Sequence[int] = (), key: str = "") -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.demos = list(demos)
        self.demo_rows = np.asarray(demo_rows, dtype=np.int64)
        self.key = key
        # a grey camera's frames (uint8 (H, W) or (H, W, 1)) are read as RGB, as the in-memory path reads them
        self.grey = stored_camera_shape(self.shape[1:], self.dtype) is not None and (
            len(self.shape) == 3 or self.shape[3] == 1)
        try:
            self.crc = np.load(crc_path)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{crc_path}: cannot be read (truncated or corrupt?): {e}") from None
        if self.crc.shape != (self.shape[0],):
            raise DatasetError(f"{crc_path}: {len(self.crc)} checksums for {self.shape[0]} rows; delete the folder to "
                               "index again")
        expected = self.shape[0] * self.row_bytes
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: missing ({expected} bytes expected); delete the folder to index again")
        size = self.path.stat().st_size
        if size != expected:
            first_bad = size // self.row_bytes
            raise DatasetError(f"{self.path}: {self._where(first_bad)}: file has {size} bytes, expected {expected} "
                               "(truncated?); delete the folder to index again")
        self._fd: int | None = os.open(self.path, os.O_RDONLY)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _where(self, row: int) -> str:
        if not self.demos:
            return f"{self.key} row {row}"
        i = int(np.searchsorted(self.demo_rows, row, side="right")) - 1
        i = min(max(i, 0), len(self.demos) - 1)
        return f"demo {self.demos[i]} key {self.key} (frame row {row})"

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (int ``(B,)``) as an array ``(B, *shape[1:])`` (a grey camera's as ``(B, H, W, 3)``,
        :func:`~robopretrain.data.spec.as_rgb`); DatasetError on a short read or a checksum mismatch (one line:
        file, demo, key)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        rb = self.row_bytes
        for i, r in enumerate(rows.tolist()):
            buf = os.pread(self._fd, rb, r * rb)
            if len(buf) != rb:
                raise DatasetError(f"{self.path}: {self._where(r)}: short read ({len(buf)} of {rb} bytes; file "
                                   "truncated during training?)")
            if zlib.crc32(buf) != int(self.crc[r]):
                raise DatasetError(f"{self.path}: {self._where(r)}: checksum mismatch (corrupt chunk); delete the "
                                   "folder to index again, or check the disk")
            flat[i] = np.frombuffer(buf, dtype=np.uint8)
        return as_rgb(out, self.shape[1:]) if self.grey else out


__all__ = ["FrameIndex", "FrameStore", "INDEX_SUFFIX", "build_index", "index_dir", "open_index",
           "remove_abandoned_rows", "write_rows"]
