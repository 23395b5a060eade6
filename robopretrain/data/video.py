"""Reading the video dataset: ``manifest.csv`` plus clips (mp4 files or folders of frames).

Implements the "Video dataset" contract of ARCHITECTURE.md, the layout R3M/VIP/Ego4D-style loaders use::

    videos/
      manifest.csv        columns path,num_frames,text (path required; extra columns are ignored)
      clip_00000.mp4      a video file (.mp4; .webm/.mkv/.mov/.avi are decoded the same way)
      episode_7/          or a folder of frames 000000.jpg|png, 000001.jpg|png, ... (or frame_0000.png, ...)

``path`` is relative to the manifest's folder and may not leave it (no absolute paths, no ``..``). ``num_frames``
and ``text`` may be left out, or left empty in a row: such a clip's frames are counted (as stage 1 counts every clip's
anyway) and its text is empty. The manifest is UTF-8, with or without a byte-order mark (as Excel and other Windows
tools save it), LF or CRLF line ends.

Without a manifest (:func:`clip_entries`), a single video file is a source of one clip, and a folder without
``manifest.csv`` is read directly: its video files and frame folders (sub-folders of numbered frames), in name order,
with no text; or, when it holds numbered frames itself, the folder is one clip. A manifest chooses the clips, their
order and their texts (``sim_envs.collect_videos`` writes one).

Frame folders are read in the order of their numbers, as consecutive steps: numbering with gaps (000002 then 000005,
frames left out when the clip was saved) is warned once per clip, naming it and the gap.

A video file's clip is its first video stream, unless that is a picture: a cover picture or thumbnail stored as a
video stream (phones, cameras and editors add one, sometimes as the first stream) is not a clip, and the longest
other stream is read; a file with several streams of more than one frame (a multi-camera or depth recording) is
warned about once, naming the stream it reads.

Frames come out as they are meant to be seen:

- **Display rotation.** A video whose container carries a display matrix (phone videos: pixels stored
  landscape, "rotate 90" in the track header) is turned upright, as players show it: the frames are rotated
  and/or mirrored by the matrix (multiples of 90 degrees; any other angle is left as stored, with a warning).
- **16-bit PNG frames** (depth, IR and machine-vision cameras; grayscale or RGB), and videos of grayscale deeper
  than 8 bits (gray10/12/16, e.g. FFV1 in .mkv), are scaled to 8 bit by the bit depth the clip uses: ``b`` = the
  number of bits of the clip's largest value (8 to 16; e.g. 12 for values up to 4095),
  ``v8 = round(v * 255 / (2**b - 1))``, one scale for every frame of the clip (so its frames stay comparable),
  logged once per clip. Grayscale becomes 3 equal channels, alpha is dropped.

API: :func:`read_manifest` parses and validates a manifest into :class:`VideoEntry` rows; :func:`clip_entries`
lists the clips of a manifest, a video file or a folder without a manifest;
:func:`read_frames` decodes a clip (all frames, or only chosen indices) to a uint8 (T, H, W, 3) array;
:func:`count_frames` counts a clip's frames without decoding pixels; :func:`frame_size` reads a clip's frame size
from its header. Every problem raises
:class:`VideoDatasetError` naming the file (and manifest line) and what was expected.
"""
from __future__ import annotations

import csv
import enum
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Sequence

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "num_frames", "text")
MANIFEST_REQUIRED = ("path",)  # num_frames (counted when missing) and text (empty) are optional
# FFmpeg's AV_DISPOSITION_* flags of a video stream that holds a picture, not a clip: attached_pic (cover art,
# thumbnails), timed_thumbnails, still_image
_PICTURE_DISPOSITIONS = (1 << 10) | (1 << 11) | (1 << 20)
_STREAM_CHOICE_LOGGED: set[str] = set()
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")
EXIF_ORIENTATION = 0x0112  # the EXIF tag of a photo's display rotation / mirroring (1: as stored)
# files that look like clips or frames but are none the reader takes (said when a folder without a manifest holds
# them; notes and data files beside the clips are not)
MEDIA_SUFFIXES = (".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv", ".png", ".jpg", ".jpeg", ".bmp",
                  ".tif", ".tiff", ".webp")
_LEFT_WARNED: set[str] = set()  # folders whose unread media were warned about (once per process)
_BROKEN_WARNED: set[str] = set()  # folders whose links to nothing were warned about (once per process)
FRAME_FILE_RE = re.compile(r"^(.*?)(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)  # prefix, number (000012, frame_0012)


class VideoDatasetError(ValueError):
    """A video dataset (manifest or clip) does not follow the contract, or a clip cannot be decoded."""


@dataclass(frozen=True)
class VideoEntry:
    """One row of a manifest: ``path`` (absolute), ``relpath`` (as written), ``num_frames``, ``text``. A clip found
    without a manifest (:func:`clip_entries`), or a row without a count, has ``num_frames`` None (not listed: count
    it); a clip without text has an empty one."""

    path: Path
    relpath: str
    num_frames: int | None
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

    Checks the columns (``path`` is required), that every path stays inside the manifest's folder and exists as a
    video file or a frame folder, and that ``num_frames``, where given, is a positive integer (an empty cell or no
    such column: None, count it). With ``check_counts``, also counts every clip's frames (demuxing, no pixel
    decoding) and requires them to equal ``num_frames`` where given.
    """
    mpath = manifest_path(path)
    root = mpath.parent
    try:
        with open(mpath, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (Excel) is not part of "path"
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in MANIFEST_REQUIRED if c not in columns]
            if missing:
                raise VideoDatasetError(f"{mpath}: missing column(s) {', '.join(missing)}; expected a header "
                                        f"with {','.join(MANIFEST_COLUMNS)} (num_frames and text optional), got "
                                        f"{','.join(columns) or 'nothing'}")
            absent = [c for c in MANIFEST_COLUMNS if c not in columns]
            unread = [c for c in columns if c not in MANIFEST_COLUMNS]
            if absent and unread:  # "caption" for text, "frames" for num_frames: said, not silently dropped
                logger.warning("%s: no column %s; column(s) %s are not read (the manifest's columns are %s: rename "
                               "one if it holds that)", mpath, " or ".join(absent), ", ".join(unread),
                               ",".join(MANIFEST_COLUMNS))
            entries = [_parse_row(mpath, root, reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise VideoDatasetError(f"{mpath}: not a readable UTF-8 CSV manifest ({exc})") from exc
    if not entries:
        raise VideoDatasetError(f"{mpath}: the manifest lists no clips")
    seen: dict[str, str] = {}
    for e in entries:  # one clip listed twice ("a.mp4", "./a.mp4") trained twice and landed in both splits
        real = os.path.realpath(e.path)
        if real in seen:
            raise VideoDatasetError(f"{mpath}: {e.relpath!r} and {seen[real]!r} are one clip listed twice; list "
                                    "each clip once")
        seen[real] = e.relpath
    if check_counts:
        for e in entries:
            actual = count_frames(e.path)
            if e.num_frames is not None and actual != e.num_frames:
                raise VideoDatasetError(f"{mpath}: {e.relpath} has {actual} frames but the manifest says {e.num_frames}")
    return entries


def clip_entries(path: str | os.PathLike) -> list[VideoEntry]:
    """The clips at ``path``: the rows of its manifest (``manifest.csv``, or a folder holding one, as
    :func:`read_manifest`); else a video file (``.mp4``, ...) as one clip; else, for a folder without a manifest,
    its video files and frame folders (sub-folders holding numbered frames) in name order, or the folder itself as
    one clip when it holds numbered frames. Clips found without a manifest have ``num_frames`` None and no text.

    Raises :class:`VideoDatasetError` for a file that is neither a manifest nor a video, and for a folder without a
    manifest that holds no clips, or both numbered frames and other clips (saying how to write a manifest)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
        return [VideoEntry(path=p, relpath=p.name, num_frames=None, text="")]
    if not p.is_dir() or (p / MANIFEST_NAME).is_file():
        if p.is_file() and p.suffix.lower() != ".csv":
            raise VideoDatasetError(f"{p}: neither a video file ({', '.join(VIDEO_SUFFIXES)}) nor a manifest (.csv); "
                                    f"give a video file, a folder of clips, or a {MANIFEST_NAME}")
        return read_manifest(p)
    clips = sorted(c for c in p.iterdir() if not c.name.startswith(".") and (
        (c.is_file() and c.suffix.lower() in VIDEO_SUFFIXES) or (c.is_dir() and _frame_folder(c))))
    frames_here = bool(_numbered_frames(p))
    how = (f"write {p / MANIFEST_NAME} (header {','.join(MANIFEST_COLUMNS)}, one row per clip: a video file or a "
           "folder of frames 000000.png, ..., relative to it; sim_envs.collect_videos writes one)")
    if frames_here and clips:
        raise VideoDatasetError(f"{p}: holds both numbered frames and other clips ({clips[0].name}, ...), and no "
                                f"{MANIFEST_NAME} says which are the clips; {how}")
    if frames_here:
        return [VideoEntry(path=p, relpath=p.name, num_frames=None, text="")]
    if not clips:
        raise VideoDatasetError(f"{p}: no {MANIFEST_NAME}, no video files ({', '.join(VIDEO_SUFFIXES)}) and no folders "
                                f"of numbered frames; {how}")
    logger.info("%s: no %s; reading its %d video file(s) and frame folder(s) as clips, in name order, without texts "
                "(a manifest chooses the clips, their order and texts)", p, MANIFEST_NAME, len(clips))
    left = sorted(c.name + ("/" if c.is_dir() else "") for c in p.iterdir() if not c.name.startswith(".")
                  and c not in clips and (_holds_media(c) if c.is_dir() else c.suffix.lower() in MEDIA_SUFFIXES))
    if left and str(p) not in _LEFT_WARNED:  # media the reader does not take, dropped without a word before
        _LEFT_WARNED.add(str(p))
        logger.warning("%s: %d file(s) or folder(s) that look like clips are not read: %s (clips are video files %s "
                       "and folders of numbered frames 000000.png, ...; convert others, or move a camera's frames "
                       "up to a folder of their own)", p, len(left), ", ".join(left[:5]) + (", ..." if len(left) > 5
                                                                                            else ""),
                       "/".join(VIDEO_SUFFIXES))
    broken = sorted(c for c in p.iterdir() if not c.name.startswith(".") and c.is_symlink() and not c.exists())
    if broken and str(p) not in _BROKEN_WARNED:  # a disk not mounted: half the clips gone without a word before
        _BROKEN_WARNED.add(str(p))
        logger.warning("%s: %d link(s) lead to nothing and are not read: %s (is the disk they point to mounted?)", p,
                       len(broken), ", ".join(f"{c.name} -> {os.readlink(c)}" for c in broken[:5])
                       + (", ..." if len(broken) > 5 else ""))
    return [VideoEntry(path=c, relpath=c.name, num_frames=None, text="") for c in clips]


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
        num_frames = int(raw) if raw else None  # empty or no column: counted where the clip is read
    except ValueError:
        raise VideoDatasetError(f"{where}: num_frames {raw!r} is not an integer (or leave it empty: counted)") from None
    if num_frames is not None and num_frames < 1:
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


def _frame_folder(folder: Path) -> bool:
    """Whether a sub-folder of a clip folder without manifest is a clip (holds numbered frames); one whose numbered
    images are ambiguous (:func:`_numbered_frames` refuses them) is not, said in a warning."""
    try:
        return bool(_numbered_frames(folder))
    except VideoDatasetError as exc:
        logger.warning("%s; not read as a clip", exc)
        return False


def _holds_media(folder: Path, depth: int = 2) -> bool:
    """Whether ``folder`` holds video or image files within ``depth`` levels (a camera's frames one folder down)."""
    try:
        items = [c for c in folder.iterdir() if not c.name.startswith(".")]
    except OSError:
        return False
    return any(c.suffix.lower() in (*VIDEO_SUFFIXES, *MEDIA_SUFFIXES) for c in items if c.is_file()) or (
        depth > 1 and any(_holds_media(c, depth - 1) for c in items if c.is_dir()))


def _numbered_frames(folder: Path) -> list[tuple[int, Path]]:
    """(number, file) of the frame images of ``folder`` (``000000.jpg|png``, or with one prefix before the number,
    ``frame_0000.png`` ...), in numeric order; hidden files (``._000000.png`` of a macOS copy) aside, and, where
    bare numbers are among them, only those (``mask_000000.png`` beside ``000000.png`` are not frames). Raises
    :class:`VideoDatasetError` when the numbered images have several prefixes and none is bare (two cameras' frames
    in one folder would be read interleaved)."""
    found = [(m.group(1), int(m.group(2)), p) for p in folder.iterdir()
             if not p.name.startswith(".") and (m := FRAME_FILE_RE.match(p.name))]
    prefixes = sorted({prefix for prefix, _, _ in found})
    if "" in prefixes:
        found, prefixes = [f for f in found if not f[0]], [""]
    if len(prefixes) > 1:
        names = ", ".join(repr(x + "N") for x in prefixes[:4]) + (", ..." if len(prefixes) > 4 else "")
        raise VideoDatasetError(f"{folder}: numbered images of {len(prefixes)} sequences ({names}); a frame folder is "
                                "one clip: put each sequence (camera) in a folder of its own")
    frames = sorted((number, p) for _, number, p in found)
    twice = [(n, a, b) for (n, a), (m, b) in zip(frames, frames[1:]) if n == m]
    if twice:  # 000000.png beside 000000.jpg (or 9.png beside 000009.png): every step read twice, time halved
        number, first, second = twice[0]
        raise VideoDatasetError(f"{folder}: frame number {number} is given by {first.name} and {second.name} "
                                f"({len(twice)} number(s) twice); a frame folder holds each frame once: remove or "
                                "move the duplicates")
    return frames


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frame images of a frame folder (``000000.jpg|png`` or ``frame_0000.png`` ..., :func:`_numbered_frames`),
    in numeric order."""
    folder = Path(folder)
    files = _numbered_frames(folder)
    if not files:
        raise VideoDatasetError(f"{folder}: a frame folder without frames (expected 000000.jpg|png, ... or "
                                "frame_0000.png, ...: numbered, one prefix)")
    return [p for _, p in files]


_GAPS_LOGGED: set[str] = set()


def _warn_numbering_gaps(folder: Path, numbers: Sequence[int]) -> None:
    """Warn once per folder when its frame numbers skip some (its frames are still read as consecutive steps).
    Numbers that never step by one (time stamps, ``20231107153011033333.png``, or a stride) are no frame indices to
    miss: read in their order without a word. Python integers: a 20-digit stamp overflowed int64."""
    steps = np.array([b - a for a, b in zip(numbers[:-1], numbers[1:])], dtype=object)
    gaps = np.flatnonzero(steps > 1)
    if gaps.size == 0 or gaps.size == steps.size or str(folder) in _GAPS_LOGGED:
        return
    _GAPS_LOGGED.add(str(folder))
    first = int(gaps[0])
    more = f" ({gaps.size - 1} more gap{'s' if gaps.size > 2 else ''})" if gaps.size > 1 else ""
    logger.warning("%s: frame numbers jump from %d to %d%s, %d number(s) missing in all: its %d frames are read as "
                   "consecutive steps (time-contrastive and value objectives take them as such); renumber the frames "
                   "without gaps, or split the clip at the gaps", folder, numbers[first], numbers[first + 1], more,
                   int((steps[gaps] - 1).sum()), len(numbers))


def count_frames(clip: VideoEntry | str | os.PathLike) -> int:
    """Number of frames of a clip: frame files in a folder, or video packets of a video (no pixel decoding). A frame
    folder whose numbering has gaps is warned about, once per folder.

    Packets the container marks as discarded are not counted: a clip trimmed by stream copy (``ffmpeg -ss 0.5 -i
    in.mp4 -c copy out.mp4``) keeps the packets from the keyframe before its cut, and its edit list tells the decoder
    to drop those frames, so they are never decoded (counting them overstated such a clip and left it out as
    unreadable)."""
    path = _as_path(clip)
    if path.is_dir():
        files = frame_files(path)
        _warn_numbering_gaps(path, [int(FRAME_FILE_RE.match(f.name).group(2)) for f in files])
        return len(files)
    container = _open_video(path)
    try:
        stream = video_stream(container, path)
        return sum(1 for packet in container.demux(stream) if packet.size > 0 and not packet.is_discard)
    except av.FFmpegError as exc:
        raise VideoDatasetError(f"{path}: corrupt or unreadable video ({exc})") from exc
    finally:
        container.close()


def frame_size(clip: VideoEntry | str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a clip's frames as :func:`read_frames` gives them (upright): a frame folder's first image's
    header, a video's first decoded frame (its display matrix: a rotation of 90 degrees swaps the stored sizes).
    :class:`VideoDatasetError` when unreadable."""
    path = _as_path(clip)
    if path.is_dir():
        first = frame_files(path)[0]
        try:
            with Image.open(first) as im:  # upright, as _read_image turns it (an EXIF orientation of 5-8 swaps them)
                turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
                return (int(im.width), int(im.height)) if turned else (int(im.height), int(im.width))
        except (UnidentifiedImageError, OSError) as exc:
            raise VideoDatasetError(f"{first}: corrupt or unreadable image ({exc})") from exc
    container = _open_video(path)
    try:
        stream = video_stream(container, path)
        for frame in container.decode(stream):
            shown = display_orientation(frame, path, report=False)(np.empty((frame.height, frame.width, 0), np.uint8))
            return int(shown.shape[0]), int(shown.shape[1])
        raise VideoDatasetError(f"{path}: the video has no decodable frames")
    except av.FFmpegError as exc:
        raise VideoDatasetError(f"{path}: corrupt or unreadable video ({exc})") from exc
    finally:
        container.close()


def read_frames(clip: VideoEntry | str | os.PathLike, indices: Sequence[int] | np.ndarray | None = None,
                each: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Decode a clip to uint8 (T, H, W, 3) RGB: every frame, or the frames at ``indices`` in that order.

    ``each``: applied to every frame kept (uint8 (H, W, 3), upright, 8-bit) as soon as it is decoded, before the
    frames are stacked: a resize, so that a long clip of large frames never sits in memory at full size (a phone's
    10 s of 1080x1920 took 7.5 GB decoded whole). Frames of different sizes are refused either way.

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
        return _read_frame_folder(path, idx, each)
    if not path.exists():
        raise VideoDatasetError(f"{path}: no such video file")
    return _read_video(path, idx, each)


class _SameSize:
    """Applies ``each`` to frames after checking that they all have the first one's shape."""

    def __init__(self, source: Path, each: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.source, self.each, self.shape = source, each, None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            raise VideoDatasetError(f"{self.source}: frames of different sizes {sorted({self.shape, frame.shape})}")
        return frame if self.each is None else self.each(frame)


def _read_frame_folder(folder: Path, idx: np.ndarray | None,
                       each: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    files = frame_files(folder)
    if idx is not None and idx.max() >= len(files):
        raise VideoDatasetError(f"{folder}: frame index {int(idx.max())} out of range, the clip has {len(files)} frames")
    chosen = files if idx is None else [files[i] for i in idx]
    fit = _SameSize(folder, each)
    frames = []
    for file in chosen:  # 8-bit frames fitted as read; 16-bit ones once the clip's peak is known
        image = _read_image(file)
        frames.append(fit(image) if image.dtype == np.uint8 else image)
    if any(f.dtype == np.uint16 for f in frames):
        read_all = idx is None or len(set(idx.tolist())) == len(files)
        peak = _peak(frames) if read_all else _clip_peak(folder, files)
        frames = [fit(_to_8bit(f, peak, folder)) if f.dtype == np.uint16 else f for f in frames]
    return _stack(frames, folder)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_bit_depth(path: Path) -> int:
    """The bit depth a PNG file's header declares (8 for anything that is not a PNG)."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" else 8


def _read_image(path: Path) -> np.ndarray:
    """One frame file as RGB: uint8 (H, W, 3), or uint16 (H, W, 3) for a 16-bit PNG (scaled later, per clip)."""
    try:
        if path.suffix.lower() == ".png" and _png_bit_depth(path) == 16:
            return _read_png16(path)
        with Image.open(path) as im:
            if im.mode in ("I", "F") or im.mode.startswith("I;"):
                raise VideoDatasetError(f"{path}: unsupported {im.mode} image; expected 8-bit JPEG/PNG or 16-bit PNG frames")
            # as it is meant to be seen: a phone's JPEG frames are stored sideways with an EXIF orientation tag, as
            # a display-rotated video is turned upright
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, av.FFmpegError) as exc:
        raise VideoDatasetError(f"{path}: corrupt or unreadable image ({exc})") from exc


def _read_png16(path: Path) -> np.ndarray:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA) as uint16 (H, W, 3); gray -> 3 channels, alpha dropped.
    Pillow would clip 16-bit gray to 255 and truncate 16-bit RGB to its high byte, so PyAV's PNG decoder reads it."""
    with av.open(str(path), mode="r") as container:
        frame = next(container.decode(video=0))
    if frame.format.name in ("gray16be", "gray16le", "rgb48be", "rgb48le", "rgba64be", "rgba64le"):
        arr = frame.to_ndarray()
    else:
        arr = frame.reformat(format="rgb48le").to_ndarray()
    arr = np.asarray(arr, dtype=np.uint16)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def _peak(frames: Sequence[np.ndarray]) -> int:
    return max(int(f.max()) for f in frames if f.dtype == np.uint16)


_PEAKS: dict[tuple, int] = {}


def _clip_peak(folder: Path, files: Sequence[Path]) -> int:
    """The largest value of a clip's 16-bit frames (every frame read once; remembered while the files are unchanged)."""
    key = (str(folder), tuple((f.name, st.st_size, st.st_mtime_ns) for f in files for st in (f.stat(),)))
    if key not in _PEAKS:
        if len(_PEAKS) >= 4096:
            _PEAKS.clear()
        _PEAKS[key] = _peak([_read_image(f) for f in files])
    return _PEAKS[key]


_SCALE_LOGGED: set[str] = set()


def _to_8bit(frame: np.ndarray, peak: int, folder: Path) -> np.ndarray:
    """A 16-bit frame scaled by the bit depth its clip uses (see the module docstring); 8-bit frames as they are."""
    if frame.dtype == np.uint8:
        return frame
    bits = min(16, max(8, int(peak).bit_length()))
    full = 2**bits - 1
    if str(folder) not in _SCALE_LOGGED:
        _SCALE_LOGGED.add(str(folder))
        logger.info("%s: 16-bit frames (largest value %d): scaled to 8 bit as %d-bit values, v * 255 / %d",
                    folder, peak, bits, full)
    return np.round(frame.astype(np.float32) * (255.0 / full)).clip(0, 255).astype(np.uint8)


def _open_video(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError) as exc:
        raise VideoDatasetError(f"{path}: corrupt or unreadable video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoDatasetError(f"{path}: no video stream in the file")
    return container


def video_stream(container: av.container.InputContainer, path: Path | str = "") -> av.video.stream.VideoStream:
    """The stream of ``container`` that is the clip: its first video stream, as before, unless that one is a picture
    (marked as cover art, a thumbnail or a still image) or holds one frame by its header while another does not (a
    thumbnail stored as an unmarked stream): then the longest other one by the header's frame count, then duration.
    Several streams of more than one frame (a multi-camera or depth recording) are warned about once per file,
    naming each and how to read another (extract it first). :class:`VideoDatasetError` when every video stream is a
    picture."""
    streams = [s for s in container.streams.video if not int(getattr(s, "disposition", 0)) & _PICTURE_DISPOSITIONS]
    if not streams:
        raise VideoDatasetError(f"{path}: its only video stream(s) hold a picture (cover art or a thumbnail), not a "
                                "clip")
    if len(streams) == 1:
        return streams[0]

    def length(s: av.video.stream.VideoStream) -> tuple[int, float]:
        return int(s.frames or 0), float(s.duration * s.time_base) if s.duration and s.time_base else 0.0

    def one_frame(s: av.video.stream.VideoStream) -> bool:
        return int(s.frames or 0) == 1

    chosen, why = streams[0], "the first"
    clips = [s for s in streams if not one_frame(s)]
    if one_frame(chosen) and clips:
        chosen = max(clips, key=length)  # max keeps the first of equals
        why = f"the longest: stream {streams[0].index} holds one frame, a thumbnail"
    if str(path) not in _STREAM_CHOICE_LOGGED:
        _STREAM_CHOICE_LOGGED.add(str(path))
        listed = "; ".join(f"{s.index}: {s.codec_context.width}x{s.codec_context.height}, {int(s.frames or 0)} "
                           "frames" for s in streams)
        say = logger.warning if len(clips) > 1 else logger.info
        say("%s: %d video streams (%s); reading stream %d, %s%s", path, len(streams), listed, chosen.index, why,
            "; to read another, extract it first (ffmpeg -i IN -map 0:<stream> -c copy OUT)" if len(clips) > 1
            else "")
    return chosen


def _read_video(path: Path, idx: np.ndarray | None, each: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> np.ndarray:
    container = _open_video(path)
    fit = _SameSize(path, each)
    wanted = None if idx is None else set(int(i) for i in idx)
    last = None if idx is None else int(idx.max())
    decoded: dict[int, np.ndarray] = {}
    frames: list[np.ndarray] = []
    upright = None
    peak = None  # a grayscale stream of more than 8 bits: the clip's largest value (its scale, one pass first)
    n = 0
    try:
        stream = video_stream(container, path)
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if upright is None:
                upright = display_orientation(frame, path)
                peak = _video_peak(path) if _deep_gray(frame) else None
            if wanted is None or n in wanted:
                image = fit(upright(frame.to_ndarray(format="rgb24")) if peak is None else
                            _to_8bit(upright(_gray16(frame)), peak, path))
                if wanted is None:
                    frames.append(image)
                else:
                    decoded[n] = image
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


def _deep_gray(frame: av.VideoFrame) -> bool:
    """Whether a decoded frame is grayscale of more than 8 bits (gray10/12/16: depth and IR cameras' archives, e.g.
    FFV1 in .mkv), scaled to 8 bit by the clip's bit depth as 16-bit PNG frames are: converted to RGB as FFmpeg
    does, a 12-bit depth clip kept only its high byte (values 0-11 of 255, a near-black clip)."""
    return DEEP_GRAY.fullmatch(frame.format.name) is not None


DEEP_GRAY = re.compile(r"gray(9|10|12|14|16)(le|be)")  # integer grayscale deeper than 8 bits (not grayf32)


def _gray16(frame: av.VideoFrame) -> np.ndarray:
    """A deep grayscale frame as uint16 (H, W, 3) of its own values (a 12-bit frame's 0-4095), three equal
    channels; any other frame of such a clip (a format changing mid-stream) is converted to 16-bit grayscale."""
    arr = None
    if DEEP_GRAY.fullmatch(frame.format.name):
        try:
            arr = frame.to_ndarray()
        except (ValueError, TypeError, NotImplementedError):  # a PyAV without arrays of this format
            arr = None
    if arr is None or arr.ndim != 2:
        arr = frame.reformat(format="gray16le").to_ndarray()
    arr = np.asarray(arr, dtype=np.uint16)
    return np.ascontiguousarray(np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2))


def _video_peak(path: Path) -> int:
    """The largest value of a deep grayscale video (every frame decoded once; remembered while the file is
    unchanged)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _PEAKS:
        if len(_PEAKS) >= 4096:
            _PEAKS.clear()
        container = _open_video(path)
        try:
            stream = video_stream(container, path)
            stream.thread_type = "AUTO"
            _PEAKS[key] = max(int(_gray16(f).max()) for f in container.decode(stream))
        except av.FFmpegError as exc:
            raise VideoDatasetError(f"{path}: corrupt or unreadable video ({exc})") from exc
        finally:
            container.close()
    return _PEAKS[key]


def _as_stored(frame: np.ndarray) -> np.ndarray:
    return frame


def display_matrix(frame: av.VideoFrame) -> tuple[int, int, int, int] | None:
    """The 2x2 part (a, b, c, d) of a decoded frame's display matrix, or None when it has none.

    The container's 3x3 matrix (FFmpeg's ``AV_FRAME_DATA_DISPLAYMATRIX``, QuickTime's ``tkhd`` matrix) maps
    a stored pixel (x, y) to its displayed place x' = a x + c y + tx, y' = b x + d y + ty. PyAV versions
    without frame side data give only ``frame.rotation`` (counter-clockwise degrees), turned into a, b, c, d.
    """
    side_data = getattr(frame, "side_data", None)
    try:
        for entry in side_data or ():
            # PyAV 18.1.1 iterates the container's keys (side data types), earlier versions its items: a mirrored
            # clip then fell back to frame.rotation, which holds no mirroring, and was read upside down
            item = side_data[entry] if isinstance(entry, enum.Enum) else entry
            if getattr(getattr(item, "type", None), "name", "") == "DISPLAYMATRIX":
                m = np.frombuffer(bytes(item), dtype=np.int32)
                return int(m[0]), int(m[1]), int(m[3]), int(m[4])
    except (TypeError, ValueError):
        pass
    degrees = getattr(frame, "rotation", 0) or 0
    if degrees == 0:
        return None
    # frame.rotation is av_display_rotation_get(M), which returns minus the angle av_display_rotation_set(M, angle)
    # was given, and _set's matrix is (cos r, -sin r, sin r, cos r) at r = -angle: here r = +rotation
    rad = np.deg2rad(degrees)
    cos, sin = np.cos(rad) * 65536, np.sin(rad) * 65536
    return int(round(cos)), int(round(-sin)), int(round(sin)), int(round(cos))


_ODD_ROTATION_LOGGED: set[str] = set()
_ROTATION_REPORTED = False


def display_orientation(frame: av.VideoFrame, path: Path | str = "", report: bool = True
                        ) -> Callable[[np.ndarray], np.ndarray]:
    """A function turning decoded (H, W, C) frames upright as players display them (identity when stored so).

    Handles the 8 right-angle rotations and mirrorings; a display matrix of any other angle (rare, e.g. a
    slightly tilted screen capture) is left as stored, with one warning per file. ``report``: log the first rotated
    clip of the process (reading its frames does; asking its size does not).
    """
    m = display_matrix(frame)
    if m is None:
        return _as_stored
    a, b, c, d = (int(np.sign(v)) if abs(v) * 64 >= max(map(abs, m)) else 0 for v in m)
    if b == 0 and c == 0 and a and d:
        transpose, flip_rows, flip_cols = False, d < 0, a < 0
    elif a == 0 and d == 0 and b and c:
        transpose, flip_rows, flip_cols = True, b < 0, c < 0  # after transposing, rows follow x and columns y
    else:
        if str(path) not in _ODD_ROTATION_LOGGED:
            _ODD_ROTATION_LOGGED.add(str(path))
            logger.warning("%s: display matrix %s is not a multiple of 90 degrees; frames are used as stored", path, m)
        return _as_stored
    if not (transpose or flip_rows or flip_cols):
        return _as_stored
    global _ROTATION_REPORTED
    if report and not _ROTATION_REPORTED:
        _ROTATION_REPORTED = True
        logger.info("%s: its display matrix %s rotates/mirrors the stored frames; turning them upright as players show "
                    "them (reported for the first such clip only)", path, m)

    def upright(img: np.ndarray) -> np.ndarray:
        if transpose:
            img = img.transpose(1, 0, 2)
        if flip_rows:
            img = img[::-1]
        if flip_cols:
            img = img[:, ::-1]
        return np.ascontiguousarray(img)

    return upright


def _stack(frames: list[np.ndarray], source: Path) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VideoDatasetError(f"{source}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames).astype(np.uint8, copy=False)
