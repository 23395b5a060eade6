"""LeRobot v3 datasets (parquet + mp4) -> :class:`~robopretrain.data.episodes.Episode` s, with pyarrow and PyAV.

The ``LeRobotDataset`` v3.0 layout (Hugging Face LeRobot, ``CODEBASE_VERSION = "v3.0"``)::

    meta/info.json                     codebase_version, fps, features {name: {dtype, shape, names}},
                                       data_path / video_path templates ({chunk_index}, {file_index}, {video_key})
    meta/tasks.parquet                 task string <-> task_index
    meta/episodes/chunk-*/file-*.parquet   one row per episode: episode_index, length, data/chunk_index,
                                       data/file_index, videos/<key>/{chunk_index,file_index,from_timestamp,
                                       to_timestamp}
    data/chunk-*/file-*.parquet        one row per frame: the features (observation.*, action, next.reward,
                                       next.done, next.success), timestamp, frame_index, episode_index, index,
                                       task_index
    videos/<key>/chunk-*/file-*.mp4    camera <key>; many episodes end to end, episode e's frame t at time
                                       from_timestamp(e) + timestamp(t) of its file

Conversion (a frame ``t`` holds the observation at ``t`` and the action taken there):

* observation parts: every feature whose name starts with ``observation`` (``observation.state``,
  ``observation.images.<cam>``, ...), names kept. ``video`` features are decoded from the mp4 with PyAV at
  ``from_timestamp + timestamp`` (nearest frame; more than half a frame period away is an error), ``image``
  features from their PNG/JPEG bytes, both to uint8 (H, W, 3).
* ``next_obs[t] = obs[t + 1]`` of the same episode. The last frame has no next frame: when it terminates the episode
  it is kept with its own observation standing in (``dones = 1``: never bootstrapped); otherwise (a recording that
  just stopped, or a time limit: truncation) it is dropped.
* Which last frames terminate: LeRobot's own converters and recorders set ``next.done`` on the last frame of *every*
  episode, whether the task ended or time ran out (``done[-1] = True`` in its pusht, xarm and aloha converters;
  ``terminated or truncated`` in its gym recorder), so ``next.done`` alone cannot tell a termination from a time
  limit. When the dataset records ``next.success``, a last frame terminates only when it is a success (the
  absorbing goal state of a sparse task); a ``next.done`` last frame that is not a success is a truncation.
  Without ``next.success``, ``next.done`` on the last frame is read as a termination (nothing else says otherwise;
  a dataset whose episodes end by a time limit should record ``next.success`` or leave ``next.done`` unset).
* ``rewards = next.reward`` (none written when the dataset has none: a reward-free recording), ``dones =
  next.done`` per frame before the last (0 when absent), the last frame's as above; ``success`` = any ``next.success`` of the episode when present, else not
  recorded.
* ``task`` = the task string of the episode's first frame (``task_index`` in ``meta/tasks.parquet``).

Only v3.x is read; a v2.x dataset is refused with the command that upgrades it (LeRobot's own converter).
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from robopretrain.data.episodes import ConversionError, Episode

INFO = Path("meta") / "info.json"
FOLDERS = ("meta", "data", "videos")  # all the reader reads (a cached copy's key: robopretrain.data.convert)
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def is_lerobot(path: str | os.PathLike) -> bool:
    """True for a folder holding ``meta/info.json`` (any LeRobot version; :func:`read_lerobot` checks v3)."""
    return (Path(path) / INFO).is_file()


def _pq() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConversionError("reading LeRobot datasets needs pyarrow: pip install 'robopretrain[datasets]'") from None
    return pq


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """``meta/info.json`` of a LeRobot v3 dataset; :class:`ConversionError` for another version or no file."""
    p = Path(path)
    try:
        info = json.loads((p / INFO).read_text())
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{p / INFO}: cannot read ({exc})") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ConversionError(f"{p / INFO}: codebase_version {version!r}; only LeRobot v3.x is read (upgrade with "
                              "LeRobot's converter: python -m lerobot.datasets.v30.convert_dataset_v21_to_v30)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise ConversionError(f"{p / INFO}: missing {key!r}")
    return info


def _table(files: list[Path]) -> list[dict[str, Any]]:
    pq = _pq()
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def read_episodes(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``meta/episodes/**/*.parquet``, sorted by ``episode_index``."""
    files = sorted((Path(path) / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ConversionError(f"{path}: no meta/episodes/chunk-*/file-*.parquet (LeRobot v3 layout)")
    return sorted(_table(files), key=lambda r: int(r["episode_index"]))


def read_tasks(path: str | os.PathLike) -> dict[int, str]:
    """``task_index -> task`` from ``meta/tasks.parquet`` (the task string is its pandas index or a column)."""
    f = Path(path) / "meta" / "tasks.parquet"
    if not f.is_file():
        return {}
    out = {}
    for row in _table([f]):
        text = next((v for k, v in row.items() if k != "task_index" and isinstance(v, str)), None)
        out[int(row["task_index"])] = text if text is not None else str(row["task_index"])
    return out


def _decode_image(value: Any, where: str, root: Path) -> np.ndarray:
    """One ``image`` cell: its bytes, or the file its ``path`` names (relative to the dataset folder ``root``)."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None and isinstance(value, dict) and value.get("path"):
        image = root / Path(value["path"]).expanduser()  # an absolute path stays as it is
        if not image.is_file():
            raise ConversionError(f"{where}: image file {image} not found (a cell without bytes names its file, "
                                  "relative to the dataset folder)")
        data = image.read_bytes()
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as exc:  # PIL raises many types for bad bytes
        raise ConversionError(f"{where}: cannot decode the image ({exc})") from None


def decode_video_frames(video: Path, times: np.ndarray, fps: float) -> np.ndarray:
    """Frames of ``video`` nearest to ``times`` (seconds, ascending) as uint8 (T, H, W, 3), decoded with PyAV.

    Seeks to the keyframe before ``times[0]`` and decodes to ``times[-1]``. Raises :class:`ConversionError` when a
    wanted time has no frame within half a frame period (``0.5 / fps``).
    """
    try:
        container = av.open(str(video))
    except (av.FFmpegError, OSError) as exc:
        raise ConversionError(f"{video}: cannot open the video ({exc})") from None
    tol = 0.5 / fps
    got_t: list[float] = []
    got_f: list[np.ndarray] = []
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if times[0] > tol and stream.time_base is not None:
            container.seek(int(max(times[0] - 1.0, 0.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = float(frame.time if frame.time is not None else frame.pts * stream.time_base)
            if t < times[0] - tol:
                continue
            if t > times[-1] + tol:
                break
            got_t.append(t)
            got_f.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as exc:
        raise ConversionError(f"{video}: decoding failed ({exc})") from None
    finally:
        container.close()
    if not got_t:
        raise ConversionError(f"{video}: no frame between {times[0]:.3f} s and {times[-1]:.3f} s")
    at = np.asarray(got_t)
    idx = np.abs(at[None, :] - times[:, None]).argmin(1)
    gap = np.abs(at[idx] - times)
    if gap.max() > tol:
        bad = int(gap.argmax())
        raise ConversionError(f"{video}: no frame within {tol:.4f} s of {times[bad]:.4f} s (nearest "
                              f"{at[idx[bad]]:.4f} s)")
    return np.stack([got_f[i] for i in idx])


class _DataFile:
    """One ``data/chunk-*/file-*.parquet``: numeric columns as numpy arrays (read once per column), the rows of each
    episode in ``frame_index`` order, image cells on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table = _pq().read_table(path)
        self.names = set(self.table.column_names)
        if "episode_index" not in self.names:
            raise ConversionError(f"{path}: no episode_index column")
        self.episode = self.table.column("episode_index").to_numpy()
        self.frame = self.table.column("frame_index").to_numpy() if "frame_index" in self.names else None
        self._cache: dict[str, np.ndarray] = {}

    def rows(self, episode: int) -> np.ndarray:
        idx = np.flatnonzero(self.episode == episode)
        return idx[np.argsort(self.frame[idx], kind="stable")] if self.frame is not None else idx

    def numeric(self, key: str, idx: np.ndarray) -> np.ndarray:
        """float32 (len(idx), d) of column ``key`` (scalars, or fixed-length lists as LeRobot stores vectors)."""
        if key not in self._cache:
            import pyarrow.types as pat

            col = self.table.column(key).combine_chunks()
            try:
                if pat.is_list(col.type) or pat.is_large_list(col.type) or pat.is_fixed_size_list(col.type):
                    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
                    values = flat.reshape(len(col), -1)
                else:
                    values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), -1)
            except (ValueError, TypeError) as exc:
                raise ConversionError(f"{self.path}: column {key!r} cannot be read as numbers ({exc})") from None
            self._cache[key] = values
        return self._cache[key][idx]

    def cells(self, key: str, idx: np.ndarray) -> list[Any]:
        col = self.table.column(key)
        return [col[int(i)].as_py() for i in idx]


def read_lerobot(path: str | os.PathLike) -> Iterator[Episode]:
    """The episodes of a LeRobot v3 dataset folder (module docstring). Raises :class:`ConversionError`."""
    root = Path(path)
    info = read_info(root)
    fps = float(info["fps"])
    features: dict[str, dict[str, Any]] = info["features"]
    if "action" not in features:
        raise ConversionError(f"{root / INFO}: no 'action' feature (a dataset without actions cannot train stage 2)")
    obs_keys = [k for k in features if k.startswith("observation")]
    if not obs_keys:
        raise ConversionError(f"{root / INFO}: no observation.* feature")
    tasks = read_tasks(root)
    current: tuple[tuple[int, int], _DataFile] | None = None  # one data file in memory at a time
    for ep in read_episodes(root):
        e = int(ep["episode_index"])
        where = f"{root}: episode {e}"
        key = (int(ep.get("data/chunk_index", 0)), int(ep.get("data/file_index", 0)))
        if current is None or current[0] != key:
            f = root / info["data_path"].format(chunk_index=key[0], file_index=key[1], episode_index=e)
            if not f.is_file():
                raise ConversionError(f"{where}: data file {f} not found")
            current = (key, _DataFile(f))
        data = current[1]
        idx = data.rows(e)
        if "length" in ep and len(idx) != int(ep["length"]):
            raise ConversionError(f"{where}: {len(idx)} frames in the data file, meta/episodes says {ep['length']}")
        if len(idx):
            yield _episode(root, info, features, obs_keys, ep, data, idx, tasks, fps, where)
        else:  # no frames: passed on empty, so the writer names it as skipped and keeps the later demos' names
            yield Episode(obs={}, next_obs={}, actions=np.zeros((0, 1), np.float32), rewards=None,
                          terminations=np.zeros(0, np.uint8), truncated=False, task="", meta={"source_episode": e})


def _episode(root: Path, info: dict[str, Any], features: dict[str, dict[str, Any]], obs_keys: list[str],
             ep: dict[str, Any], data: _DataFile, idx: np.ndarray, tasks: dict[int, str], fps: float,
             where: str) -> Episode:
    n = len(idx)
    ts = data.numeric("timestamp", idx).reshape(n).astype(np.float64) if "timestamp" in data.names \
        else np.arange(n) / fps
    obs: dict[str, np.ndarray] = {}
    for k in obs_keys:
        dtype = features[k].get("dtype")
        if dtype == "video":
            if not isinstance(info.get("video_path"), str):
                raise ConversionError(f"{root}/meta/info.json: feature {k!r} is a video, but the file has no "
                                      "video_path template (e.g. videos/{video_key}/chunk-{chunk_index:03d}/"
                                      "file-{file_index:03d}.mp4)")
            vid = root / info["video_path"].format(video_key=k, chunk_index=int(ep[f"videos/{k}/chunk_index"]),
                                                   file_index=int(ep[f"videos/{k}/file_index"]),
                                                   episode_index=int(ep["episode_index"]))
            if not vid.is_file():
                raise ConversionError(f"{where}: video {vid} not found")
            obs[k] = decode_video_frames(vid, float(ep.get(f"videos/{k}/from_timestamp", 0.0)) + ts, fps)
        elif k not in data.names:
            raise ConversionError(f"{where}: feature {k!r} ({dtype}) is not a column of {data.path}")
        elif dtype == "image":
            obs[k] = np.stack([_decode_image(c, f"{where} {k}", root) for c in data.cells(k, idx)])
        else:
            obs[k] = data.numeric(k, idx)
    actions = data.numeric("action", idx)
    has = data.names.__contains__
    rewards = data.numeric("next.reward", idx).reshape(n) if has("next.reward") else None  # a reward-free recording
    done = data.numeric("next.done", idx).reshape(n) > 0 if has("next.done") else np.zeros(n, bool)
    succeeded = data.numeric("next.success", idx).reshape(n) > 0 if has("next.success") else None
    success = bool(succeeded.any()) if succeeded is not None else None
    # next.done marks the end of every LeRobot episode (time limits too): with next.success recorded, only a
    # successful last frame terminates (module docstring)
    terminated = bool(done[-1]) and (succeeded is None or bool(succeeded[-1]))
    done[-1] = terminated
    stop = n if terminated else n - 1  # the last frame has no next frame: kept only when it terminates
    take = np.r_[np.arange(1, n), n - 1]
    task_index = int(data.numeric("task_index", idx[:1])[0, 0]) if has("task_index") else 0
    return Episode(obs={k: v[:stop] for k, v in obs.items()}, next_obs={k: v[take][:stop] for k, v in obs.items()},
                   actions=actions[:stop], rewards=None if rewards is None else rewards[:stop],
                   terminations=done[:stop].astype(np.uint8),
                   truncated=not terminated, task=tasks.get(task_index, str(task_index)), success=success,
                   meta={"source_episode": int(ep["episode_index"]), "fps": fps})


__all__ = ["FOLDERS", "decode_video_frames", "is_lerobot", "read_episodes", "read_info", "read_lerobot", "read_tasks"]
