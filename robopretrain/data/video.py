"""Reading the video dataset: ``manifest.csv`` plus clips (mp4 files or folders of frames).

Implements the "Video dataset" contract of ARCHITECTURE.md, the layout R3M/VIP/Ego4D-style loaders use::

    videos/
      manifest.csv        columns path,num_frames,text (extra columns are ignored)
      clip_00000.mp4      a video file (.mp4; .webm/.mkv/.mov/.avi are decoded the same way)
      episode_7/          or a folder of frames 000000.jpg|png, 000001.jpg|png, ...

``path`` is relative to the manifest's folder and may not leave it (no absolute paths, no ``..``).

API: :func:`read_manifest` parses and validates a manifest into :class:`VideoEntry` rows;
:func:`read_frames` decodes a clip (all frames, or only chosen indices) to a uint8 (T, H, W, 3) array;
:func:`count_frames` counts a clip's frames without decoding pixels. Every problem raises
:class:`VideoDatasetError` naming the file (and manifest line) and what was expected.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "num_frames", "text")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")
FRAME_FILE_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


class VideoDatasetError(ValueError):
    """A video dataset (manifest or clip) does not follow the contract, or a clip cannot be decoded."""


@dataclass(frozen=True)
class VideoEntry:
    """One row of a manifest: ``path`` (absolute), ``relpath`` (as written), ``num_frames``, ``text``."""

    path: Path
    relpath: str
    num_frames: int
    text: str

    @property
    def is_frame_folder(self) -> bool:
        return self.path.is_dir()


# ----------------------------------------------------------------------------- manifest
def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest file for ``path``: the file itself, or ``manifest.csv`` inside a folder."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise VideoDatasetError(f"{p}: no such manifest (expected a video folder with {MANIFEST_NAME}, "
                                f"columns {','.join(MANIFEST_COLUMNS)})")
    return p


def read_manifest(path: str | os.PathLike, check_counts: bool = False) -> list[VideoEntry]:
    """Parse and validate a manifest (``path`` is ``manifest.csv`` or the folder holding it).

    Checks the columns, that every path stays inside the manifest's folder and exists as a video file or
    a frame folder, and that ``num_frames`` is a positive integer. With ``check_counts``, also counts
    every clip's frames (demuxing, no pixel decoding) and requires them to equal ``num_frames``.
    """
    mpath = manifest_path(path)
    root = mpath.parent
    try:
        with open(mpath, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in MANIFEST_COLUMNS if c not in columns]
            if missing:
                raise VideoDatasetError(f"{mpath}: missing column(s) {', '.join(missing)}; expected a header "
                                        f"with {','.join(MANIFEST_COLUMNS)}, got {','.join(columns) or 'nothing'}")
            entries = [_parse_row(mpath, root, reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise VideoDatasetError(f"{mpath}: not a readable UTF-8 CSV manifest ({exc})") from exc
    if not entries:
        raise VideoDatasetError(f"{mpath}: the manifest lists no clips")
    if check_counts:
        for e in entries:
            actual = count_frames(e.path)
            if actual != e.num_frames:
                raise VideoDatasetError(f"{mpath}: {e.relpath} has {actual} frames but the manifest says {e.num_frames}")
    return entries


def _parse_row(mpath: Path, root: Path, line: int, row: dict[str, str | None]) -> VideoEntry:
    where = f"{mpath}, line {line}"
    rel = (row.get("path") or "").strip()
    if not rel:
        raise VideoDatasetError(f"{where}: empty path")
    target = root / _safe_relative(rel, where)
    if not target.exists():
        raise VideoDatasetError(f"{where}: {rel!r} does not exist (looked for {target})")
    if target.is_file() and target.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoDatasetError(f"{where}: {rel!r} is neither a video file ({', '.join(VIDEO_SUFFIXES)}) "
                                f"nor a folder of frames")
    raw = (row.get("num_frames") or "").strip()
    try:
        num_frames = int(raw)
    except ValueError:
        raise VideoDatasetError(f"{where}: num_frames {raw!r} is not an integer") from None
    if num_frames < 1:
        raise VideoDatasetError(f"{where}: num_frames must be >= 1, got {num_frames}")
    return VideoEntry(path=target, relpath=rel, num_frames=num_frames, text=(row.get("text") or "").strip())


def _safe_relative(rel: str, where: str) -> PurePosixPath:
    """``rel`` as a relative path that cannot leave the manifest's folder."""
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(rel).drive or PureWindowsPath(rel).is_absolute():
        raise VideoDatasetError(f"{where}: path {rel!r} is absolute; paths must be relative to the manifest's folder")
    if ".." in posix.parts:
        raise VideoDatasetError(f"{where}: path {rel!r} leaves the manifest's folder (contains '..')")
    return posix


# ----------------------------------------------------------------------------- frames
def _as_path(clip: VideoEntry | str | os.PathLike) -> Path:
    return clip.path if isinstance(clip, VideoEntry) else Path(clip)


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frame images of a frame folder (``000000.jpg|png`` ...), in numeric order."""
    folder = Path(folder)
    files = [(int(m.group(1)), p) for p in folder.iterdir() if (m := FRAME_FILE_RE.match(p.name))]
    if not files:
        raise VideoDatasetError(f"{folder}: a frame folder without frames (expected 000000.jpg|png, ...)")
    return [p for _, p in sorted(files)]


def count_frames(clip: VideoEntry | str | os.PathLike) -> int:
    """Number of frames of a clip: frame files in a folder, or video packets of a video (no pixel decoding)."""
    path = _as_path(clip)
    if path.is_dir():
        return len(frame_files(path))
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as exc:
        raise VideoDatasetError(f"{path}: corrupt or unreadable video ({exc})") from exc
    finally:
        container.close()


def read_frames(clip: VideoEntry | str | os.PathLike, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Decode a clip to uint8 (T, H, W, 3) RGB: every frame, or the frames at ``indices`` in that order.

    Indices are 0-based, may repeat and come in any order (an empty selection is a ``ValueError``). Videos are decoded in one forward pass that
    stops after the last index asked for, converting only the frames asked for to RGB; frame folders read
    only the files asked for.
    """
    path = _as_path(clip)
    idx = None if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx is not None and idx.size == 0:
        raise ValueError(f"{path}: no frame indices given (pass None for every frame)")
    if idx is not None and idx.min() < 0:
        raise VideoDatasetError(f"{path}: negative frame index {int(idx.min())}")
    if path.is_dir():
        return _read_frame_folder(path, idx)
    if not path.exists():
        raise VideoDatasetError(f"{path}: no such video file")
    return _read_video(path, idx)


def _read_frame_folder(folder: Path, idx: np.ndarray | None) -> np.ndarray:
    files = frame_files(folder)
    if idx is not None and idx.max() >= len(files):
        raise VideoDatasetError(f"{folder}: frame index {int(idx.max())} out of range, the clip has {len(files)} frames")
    chosen = files if idx is None else [files[i] for i in idx]
    frames = []
    for f in chosen:
        try:
            with Image.open(f) as im:
                frames.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as exc:
            raise VideoDatasetError(f"{f}: corrupt or unreadable image ({exc})") from exc
    return _stack(frames, folder)


def _open_video(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError) as exc:
        raise VideoDatasetError(f"{path}: corrupt or unreadable video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoDatasetError(f"{path}: no video stream in the file")
    return container


def _read_video(path: Path, idx: np.ndarray | None) -> np.ndarray:
    container = _open_video(path)
    wanted = None if idx is None else set(int(i) for i in idx)
    last = None if idx is None else int(idx.max())
    decoded: dict[int, np.ndarray] = {}
    frames: list[np.ndarray] = []
    n = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if wanted is None:
                frames.append(frame.to_ndarray(format="rgb24"))
            elif n in wanted:
                decoded[n] = frame.to_ndarray(format="rgb24")
            n += 1
            if last is not None and n > last:
                break
    except av.FFmpegError as exc:
        raise VideoDatasetError(f"{path}: corrupt or unreadable video ({exc})") from exc
    finally:
        container.close()
    if idx is None:
        if not frames:
            raise VideoDatasetError(f"{path}: the video has no decodable frames")
        return _stack(frames, path)
    if last >= n:
        raise VideoDatasetError(f"{path}: frame index {last} out of range, the clip has {n} frames")
    return _stack([decoded[int(i)] for i in idx], path)


def _stack(frames: list[np.ndarray], source: Path) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VideoDatasetError(f"{source}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames).astype(np.uint8, copy=False)
