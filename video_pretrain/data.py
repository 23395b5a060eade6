"""Frame sources for stage 1: videos as indexable frames, resized, strided and cached in a bounded way.

A *frame source* (the :class:`FrameSource` protocol) holds ``num_videos`` videos; ``video_length(i)``
counts the frames of video ``i`` after the frame stride and ``frames(i, indices)`` returns those frames
as uint8 (T, image_size, image_size, 3) RGB. Indices are in the strided space: with ``stride = s``, frame
``k`` is raw frame ``k * s`` and a clip of ``n`` raw frames has ``ceil(n / s)`` frames.

- :class:`ManifestSource`: a video folder with ``manifest.csv`` (mp4 files or frame folders, see
  :mod:`robopretrain.data.video`), e.g. the human-hand videos of ``sim_envs.collect_videos``; also a single video
  file (one clip) or a folder without a manifest (its video files and frame folders,
  :func:`robopretrain.data.video.clip_entries`).
- :class:`HDF5ImageSource`: robot trajectories of a robomimic HDF5 file used as action-free video, one
  video per demo: the image key's ``obs`` frames plus, by default, the last ``next_obs`` frame (the state
  the final action reached, e.g. the success) when it differs from the last ``obs`` frame. Demos are chosen by
  mask, task and/or demo names.
- :class:`SubsetSource` (what :func:`split_by_video` ids select) and :func:`open_frame_source` (picks the
  source type from the path).

Frames are resized to ``image_size`` as stages 2 and 3 resize a camera (area average; bilinear enlarging), after
cropping the central square when a clip is not square (``center_crop=True``; ``False`` stretches instead), each
frame as it is
decoded (a clip is never held at its stored size, and the C heap is trimmed as large frames go by: a phone's 10 s of
1080x1920 took 7.5 GB resident decoded whole, 0.8 GB so). Each source logs, once at construction, the frame sizes it
resizes from (one info line).

**Cache.** Each source keeps an LRU cache (:class:`ClipCache`) of whole decoded clips (strided and
resized), bounded by ``max_cache_bytes``. A clip that fits is decoded whole on first use; one that does not
(or with ``max_cache_bytes=0``) is decoded up to the last frame asked for, every time. The cache is
thread-safe. Sources are picklable and open files lazily in each process, so every DataLoader worker gets
its own (empty) cache and its own HDF5 handle.

**Bad clips.** At construction, every clip is checked cheaply (mp4 frames counted by demuxing, frame
folders listed, HDF5 datasets' dtype and shape checked): a clip that fails is logged once by name, listed
in ``bad_videos`` and left out (it gets no video id); an HDF5 demo of 0 steps is listed in ``empty_videos``
instead (an empty episode, not a broken one; no warning, not an error under ``strict``). A clip that only fails when decoded is logged once,
added to ``bad_videos`` and ``frames()`` raises :class:`SkippedVideoError` for it from then on; callers
that sample videos catch that and draw again. With ``strict=True`` any bad clip raises
:class:`~robopretrain.data.video.VideoDatasetError` naming the file instead. Each process reports
its own bad clips (workers do not share ``bad_videos``; stage 1 learns of those its DataLoader workers find
through the ``unreadable`` entry of :class:`~video_pretrain.sampling.FrameBatchStream`'s batches).
"""
from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from robopretrain.data.hdf5 import DatasetError, converted_as_camera, read_info, select_demos
from robopretrain.data.spec import as_rgb, image_layout_hint, stored_camera_shape
from robopretrain.envs.camera_frames import resize_rgb
from robopretrain.data.video import VideoDatasetError, VideoEntry, clip_entries, count_frames, frame_size, read_frames

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 256 * 1024**2
HDF5_SUFFIXES = (".hdf5", ".h5")


class SkippedVideoError(VideoDatasetError):
    """A video turned out to be unreadable when decoded and is skipped (listed in ``source.bad_videos``)."""


class FrameSource(Protocol):
    """Videos as indexable frames: what stage-1 samplers and datasets read."""

    @property
    def num_videos(self) -> int: ...

    def video_length(self, i: int) -> int: ...

    def frames(self, i: int, indices: Sequence[int] | np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------- cache
class ClipCache:
    """Thread-safe LRU cache of arrays keyed by video id, holding at most ``max_bytes`` bytes in total.

    An array larger than ``max_bytes`` is not stored. Pickling keeps only the bound (a copy starts empty).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"ClipCache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._init_state()

    def _init_state(self) -> None:
        self._items: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._items

    def fits(self, nbytes: int) -> bool:
        return 0 < nbytes <= self.max_bytes

    def get(self, key: int) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: int, value: np.ndarray) -> bool:
        """Store ``value`` (evicting least recently used clips as needed); False when it cannot fit."""
        if not self.fits(value.nbytes):
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            while self._items and self.nbytes + value.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes
            self._items[key] = value
            self.nbytes += value.nbytes
        return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.max_bytes = state["max_bytes"]
        self._init_state()


# ----------------------------------------------------------------------------- resizing
def center_square(frames: np.ndarray) -> np.ndarray:
    """The central square of frames (T, H, W, C)."""
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frames[:, top:top + side, left:left + side]


def resize_frames(frames: np.ndarray, image_size: int, center_crop: bool = True) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, image_size, image_size, 3), each frame as stages 2 and 3 resize a camera
    (:func:`robopretrain.envs.camera_frames.resize_rgb`: area average shrinking, bilinear enlarging)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or min(frames.shape[1:3]) < 1:
        raise ValueError(f"resize_frames: expected uint8 RGB frames (T, H, W, 3), got {frames.dtype} "
                         f"{tuple(frames.shape)} (the sources read cameras as RGB: robopretrain.data.spec.as_rgb)")
    if center_crop:
        frames = center_square(frames)
    if frames.shape[1] == image_size and frames.shape[2] == image_size:
        return np.ascontiguousarray(frames)
    if not len(frames):
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.stack([resize_rgb(f, image_size, image_size) for f in frames])


TRIM_FRAME_BYTES = 2**20  # decoded frames at least this large (about 600x600 RGB) trim the heap as they are fitted
TRIM_EVERY = 8  # ... once per this many of them


def trim_heap() -> bool:
    """Give the C heap's freed memory back to the system (glibc's ``malloc_trim(0)``); False where there is none
    (another C library). Returns whether it ran."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _MALLOC_TRIM = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", False)
        except OSError:
            _MALLOC_TRIM = False
    if not _MALLOC_TRIM:
        return False
    _MALLOC_TRIM(0)
    return True


_MALLOC_TRIM: Any = None  # glibc's malloc_trim, False where it is missing; looked up on first use


def strided_length(raw_length: int, stride: int) -> int:
    """Frames kept from a clip of ``raw_length`` frames with ``stride``: ceil(raw_length / stride)."""
    return (raw_length + stride - 1) // stride


# ----------------------------------------------------------------------------- shared source logic
class ClipSource(ABC):
    """Shared logic: index checks, stride, resize, cache, bad-clip handling. Subclasses decode raw frames."""

    def __init__(self, image_size: int, stride: int, max_cache_bytes: int, strict: bool, center_crop: bool) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.image_size = int(image_size)
        self.stride = int(stride)
        self.strict = bool(strict)
        self.center_crop = bool(center_crop)
        self._crop_said = False  # whether the crop of non-square frames was warned
        self.frame_sizes: list[tuple[int, int]] | None = []  # the clips' (H, W) as read (upright); None: not all known
        self.cache = ClipCache(max_cache_bytes)
        self.bad_videos: list[str] = []
        self.empty_videos: list[str] = []  # HDF5 demos of 0 steps: nothing to read, left out without a warning
        self._names: list[str] = []
        self._raw_lengths: list[int] = []
        self._skipped: dict[int, str] = {}

    # --- what subclasses provide
    @abstractmethod
    def _read_raw(self, i: int, raw_indices: np.ndarray,
                  each: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Raw uint8 (T, H, W, 3) frames of video ``i`` at ``raw_indices`` (sorted, unique, in range); ``each``
        (:meth:`_fitting`) applied to every frame as it is decoded, where frames can be large (video files and
        frame folders; a source of small frames may leave it to the resize of the stack, which then gives the
        same)."""

    @abstractmethod
    def _describe(self, i: int) -> str:
        """Where video ``i`` lives (file, and key for HDF5), for error messages."""

    # --- the FrameSource interface
    @property
    def num_videos(self) -> int:
        return len(self._names)

    def video_length(self, i: int) -> int:
        return strided_length(self._raw_lengths[self._check_video(i)], self.stride)

    @property
    def lengths(self) -> np.ndarray:
        """Length (after stride) of every video, int64 (num_videos,)."""
        return np.array([strided_length(n, self.stride) for n in self._raw_lengths], dtype=np.int64)

    def video_name(self, i: int) -> str:
        return self._names[self._check_video(i)]

    def frames(self, i: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (len(indices), image_size, image_size, 3) frames of video ``i`` (strided indices, any order)."""
        i = self._check_video(i)
        idx = self._check_indices(i, indices)
        if i in self._skipped:
            raise SkippedVideoError(f"{self._describe(i)}: skipped, unreadable ({self._skipped[i]})")
        clip = self.cache.get(i)
        if clip is not None:
            return clip[idx]
        try:
            if self.cache.fits(self.video_length(i) * self.image_size**2 * 3):
                clip = self._decode_whole(i)
                self.cache.put(i, clip)
                return clip[idx]
            return self._decode_some(i, idx)
        except (VideoDatasetError, DatasetError, OSError, KeyError) as exc:
            self._skip(i, exc)
            raise SkippedVideoError(f"{self._describe(i)}: skipped, unreadable ({exc})") from exc

    # --- helpers
    def _check_video(self, i: int) -> int:
        if not 0 <= int(i) < self.num_videos:
            raise IndexError(f"{type(self).__name__}: video id {i} out of range (0 .. {self.num_videos - 1})")
        return int(i)

    def _check_indices(self, i: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError(f"{self._describe(i)}: no frame indices given")
        length = self.video_length(i)
        if idx.min() < 0 or idx.max() >= length:
            raise IndexError(f"{self._describe(i)}: frame index out of range [0, {length}) "
                             f"(got {int(idx.min())} .. {int(idx.max())}; stride {self.stride})")
        return idx

    def _resize(self, i: int, raw: np.ndarray) -> np.ndarray:
        if self.center_crop and raw.shape[1] != raw.shape[2] and not self._crop_said:
            self._crop_said = True  # once per source (per worker process)
            logger.warning("%s: %dx%d frames are centre-cropped to square, as are those of every other non-square "
                           "clip (said once), while stages 2 and 3 stretch a non-square env camera to square; "
                           "data.stretch=true stretches here too", self._describe(i), raw.shape[1], raw.shape[2])
        return resize_frames(raw, self.image_size, self.center_crop)

    def _fitting(self, i: int) -> Callable[[np.ndarray], np.ndarray]:
        """One decoded frame (H, W, 3) of video ``i`` -> (image_size, image_size, 3), as :meth:`_resize` makes it.
        Every :data:`TRIM_EVERY` frames of at least :data:`TRIM_FRAME_BYTES` the C heap's freed memory goes back to
        the system (:func:`trim_heap`): the resize's temporaries, freed at once, stayed with the process through the
        heap's fragmentation (a 1080x1920 phone clip: 3-4 GB resident, 0.7 GB trimmed, the same time)."""
        seen = [0]

        def fit(frame: np.ndarray) -> np.ndarray:
            out = self._resize(i, frame[None])[0]
            if frame.nbytes >= TRIM_FRAME_BYTES:
                seen[0] += 1
                if seen[0] % TRIM_EVERY == 0:
                    trim_heap()
            return out

        return fit

    def _decode_whole(self, i: int) -> np.ndarray:
        raw = np.arange(0, self._raw_lengths[i], self.stride)
        return self._resize(i, self._read_raw(i, raw, self._fitting(i)))  # (the stack's resize: a no-op then)

    def _decode_some(self, i: int, idx: np.ndarray) -> np.ndarray:
        wanted, inverse = np.unique(idx, return_inverse=True)
        return self._resize(i, self._read_raw(i, wanted * self.stride, self._fitting(i)))[inverse.reshape(-1)]

    def _skip(self, i: int, exc: Exception) -> None:
        """A clip failed to decode: raise under strict, else report it once and skip it from now on."""
        if self.strict:
            raise exc if isinstance(exc, VideoDatasetError) else VideoDatasetError(f"{self._describe(i)}: {exc}")
        self._skipped[i] = str(exc)
        self._report_bad(self._names[i], str(exc))

    def _report_bad(self, name: str, reason: str) -> None:
        if name not in self.bad_videos:
            self.bad_videos.append(name)
            logger.warning("skipping bad video %s: %s", name, reason)

    def _reject(self, name: str, reason: str) -> None:
        """A clip failed the construction check: raise under strict, else report it (it gets no video id)."""
        if self.strict:
            raise VideoDatasetError(reason)
        self._report_bad(name, reason)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.num_videos} videos, image_size={self.image_size}, stride={self.stride}, "
                f"{len(self.bad_videos)} bad)")


# ----------------------------------------------------------------------------- manifest (mp4 / frame folders)
class ManifestSource(ClipSource):
    """Videos listed in a ``manifest.csv`` (mp4 files or frame folders), see :mod:`robopretrain.data.video`.

    ``path`` is the manifest or its folder, or a single video file, or a folder without a manifest (its video files
    and frame folders: :func:`robopretrain.data.video.clip_entries`). Manifest problems (bad columns, a listed path
    that does not exist) and a path holding no clips raise :class:`VideoDatasetError`. With ``check_clips``
    (default) every clip's frames are counted at construction (demuxing only) and the count found is used when it
    differs from the manifest's ``num_frames`` (logged), and the frame sizes read from the clips' headers are logged
    (one info line, when they differ from ``image_size``); without it the manifest's counts are trusted (clips it
    does not list are counted).
    """

    def __init__(self, path: str | os.PathLike, image_size: int, stride: int = 1,
                 max_cache_bytes: int = DEFAULT_CACHE_BYTES, strict: bool = False, check_clips: bool = True,
                 center_crop: bool = True) -> None:
        super().__init__(image_size, stride, max_cache_bytes, strict, center_crop)
        self.path = Path(path)
        self.entries: list[VideoEntry] = []
        listed = clip_entries(self.path)
        sizes: dict[tuple[int, int], int] = {}
        unsized = 0  # clips used whose frame size is not known here
        for entry in tqdm(listed, desc="checking clips", unit="clip", disable=not check_clips or len(listed) < 64,
                          leave=False):
            if check_clips or entry.num_frames is None:  # a clip found without a manifest is counted
                checked = self._checked_clip(entry)
                length = None if checked is None else checked[0]
            else:
                checked, length = None, entry.num_frames
            if length is not None:
                self.entries.append(entry)
                self._names.append(entry.relpath)
                self._raw_lengths.append(length)
                if checked is not None and checked[1] is not None:
                    sizes[checked[1]] = sizes.get(checked[1], 0) + 1
                else:  # counted by the manifest, or a header without its size
                    unsized += 1
        if not self.entries:
            raise VideoDatasetError(f"{self.path}: no readable clips (bad: {self.bad_videos})")
        self.frame_sizes = None if unsized else sorted(sizes)
        self._log_sizes(sizes)

    def _checked_clip(self, entry: VideoEntry) -> tuple[int, tuple[int, int] | None] | None:
        """(frames, (height, width) or None when the header does not say) of a readable clip, else None (rejected)."""
        try:
            n = count_frames(entry)
        except VideoDatasetError as exc:
            self._reject(entry.relpath, str(exc))
            return None
        if n < 1:
            self._reject(entry.relpath, f"{entry.path}: no frames")
            return None
        if entry.num_frames is not None and n != entry.num_frames:
            logger.warning("%s: has %d frames but the manifest says %d; using %d", entry.path, n, entry.num_frames, n)
        try:
            size: tuple[int, int] | None = frame_size(entry)
        except VideoDatasetError:  # decoding says what is wrong, if anything
            size = None
        return n, size

    def _log_sizes(self, sizes: dict[tuple[int, int], int]) -> None:
        """One info line: the clips' frame sizes (most common first) and the size they are resized to, as
        :class:`HDF5ImageSource` says it for its image key; nothing when every clip already has that size."""
        if not sizes or set(sizes) == {(self.image_size, self.image_size)}:
            return
        ranked = sorted(sizes.items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{h}x{w} ({n} clip{'s' if n > 1 else ''})" for (h, w), n in ranked[:4])
        more = f", {len(ranked) - 4} other sizes" if len(ranked) > 4 else ""
        crop = self.center_crop and any(h != w for h, w in sizes)
        (h, w), whose = ranked[0][0], "their" if len(ranked) == 1 else "the most common clips'"
        if h == w:
            keep = f" (image_size={h} trains at {whose} size)"
        elif self.center_crop:
            keep = f" (image_size={min(h, w)} keeps {whose} resolution: the central {min(h, w)}x{min(h, w)} square)"
        else:
            keep = ""  # stretched to a square: every size resamples
        logger.info("%s: frames of %s%s, resized to image_size=%d%s; an encoder trained on them takes %d px cameras in "
                    "stage 2%s", self.path, listed, more, self.image_size,
                    " (the central square of non-square ones)" if crop else "", self.image_size, keep)

    def video_text(self, i: int) -> str:
        """The manifest's ``text`` of video ``i``."""
        return self.entries[self._check_video(i)].text

    def _describe(self, i: int) -> str:
        return str(self.entries[i].path)

    def _read_raw(self, i: int, raw_indices: np.ndarray,
                  each: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        # mp4: one forward decode up to the last index, only kept frames converted to RGB (and fitted, by each);
        # frame folders: only the kept files are read.
        return read_frames(self.entries[i], raw_indices, each)



# ----------------------------------------------------------------------------- robot HDF5 as video
class HDF5ImageSource(ClipSource):
    """Robot trajectories of a robomimic HDF5 file as action-free video: one video per demo.

    Video ``i`` is ``data/<demo>/obs/<key>`` (N frames) followed, with ``include_final`` (default), by the
    last frame of ``next_obs/<key>`` (N + 1 frames: the state the last action reached) unless it equals the last
    ``obs`` frame (a terminated episode's stand-in next observation in a converted file). Demos are those
    in ``mask`` AND of one of ``tasks`` AND in ``demos`` (each optional; numeric order), see
    :func:`robopretrain.data.hdf5.select_demos`. File-level problems (not a robomimic file, unknown mask,
    task or key) raise :class:`~robopretrain.data.hdf5.DatasetError`; a demo whose image dataset is
    missing or malformed is a bad clip. The file is opened lazily, once per process.
    """

    def __init__(self, path: str | os.PathLike, image_size: int, key: str = "agentview_image", stride: int = 1,
                 mask: str | None = None, demos: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                 include_final: bool = True, max_cache_bytes: int = DEFAULT_CACHE_BYTES, strict: bool = False,
                 center_crop: bool = True) -> None:
        super().__init__(image_size, stride, max_cache_bytes, strict, center_crop)
        self.path = Path(path)
        self.key = key
        self.include_final = bool(include_final)
        info = read_info(self.path)
        self._check_key(info.obs_specs)
        self.demo_names: list[str] = []
        self.video_tasks: list[str] = []
        self._has_final: list[bool] = []
        with h5py.File(self.path, "r") as f:
            for name in select_demos(info, mask=mask, tasks=tasks, demos=demos):
                demo = info.demo(name)
                n = self._checked_length(f, name, demo.num_samples)
                if n is not None:
                    has_final = self.include_final and self._final_frame_ok(f, name, n)
                    self.demo_names.append(name)
                    self.video_tasks.append(demo.task)
                    self._names.append(name)
                    self._raw_lengths.append(n + int(has_final))
                    self._has_final.append(has_final)
        if not self.demo_names:
            raise VideoDatasetError(f"{self.path}: no readable demos with images {key!r} (bad: {self.bad_videos})")
        self._file: h5py.File | None = None
        self._file_pid: int | None = None
        self._file_lock = threading.Lock()

    def _check_key(self, obs_specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        if self.key not in obs_specs:
            raise DatasetError(f"{self.path}: data/*/obs/{self.key}: no such observation key; "
                               f"available: {sorted(obs_specs)}")
        shape, dtype = obs_specs[self.key]
        if stored_camera_shape(shape, dtype) is None:  # grey (H, W) / (H, W, 1) is read as RGB, as stages 2-3 do
            hint = image_layout_hint(tuple(shape), dtype, self.key, cached_copy=False)
            if hint and converted_as_camera(self.key, (0, *shape), dtype):  # a copy would read: say how to make it
                hint += " (python -m robopretrain.data.convert SRC DST --image-size S writes such a copy)"
            elif hint and converted_as_camera(f"{self.key}_image", (0, *shape), dtype) and shape[-1] != 1 \
                    and shape[0] != 1:  # float colour under another name: the copy keeps it as stored
                hint += (f" (python -m robopretrain.data.convert --image-size S converts float frames only of keys "
                         f"named *_image: rename {self.key!r} to '{self.key}_image' first)")
            raise DatasetError(f"{self.path}: data/*/obs/{self.key}: expected uint8 images (N, H, W, 3), or grey "
                               f"(N, H, W) / (N, H, W, 1), got {dtype} (N, {', '.join(map(str, shape))}){hint}")
        self._stored = tuple(int(n) for n in shape)  # per-step shape of the stored frames (as_rgb reads it)
        self.frame_sizes = [(self._stored[0], self._stored[1])]
        if tuple(shape[:2]) != (self.image_size, self.image_size):  # said: stage 2 takes the encoder at one size
            same = (f"image_size={shape[0]} trains at the file's size" if shape[0] == shape[1] else
                    "a non-square frame is centre-cropped to a square first, or stretched with data.stretch=true as "
                    "stages 2 and 3 do")
            logger.info("%s: obs/%s frames are %dx%d, resized to image_size=%d; an encoder trained on them takes "
                        "%d px cameras in stage 2 (%s)", self.path, self.key, shape[0], shape[1], self.image_size,
                        self.image_size, same)

    def _dataset_problem(self, f: h5py.File, where: str, n: int) -> str | None:
        ds = f.get(where)
        if not isinstance(ds, h5py.Dataset):
            return "missing"
        step = tuple(ds.shape[1:])  # any size, the first demo's layout (RGB, grey (H, W) or (H, W, 1))
        if (stored_camera_shape(step, ds.dtype) is None or len(step) != len(self._stored)
                or step[2:] != self._stored[2:]):
            layout = "H, W" + "".join(f", {c}" for c in self._stored[2:])
            return f"expected uint8 images (N, {layout}) as the first demo's, got {ds.dtype} {ds.shape}"
        if ds.shape[0] != n:
            return f"expected {n} frames (num_samples), got {ds.shape[0]}"
        return None

    def _checked_length(self, f: h5py.File, name: str, n: int) -> int | None:
        where = f"data/{name}/obs/{self.key}"
        if n < 1:  # an empty episode is not a broken one: listed apart (stage 1 counts it as too short)
            self.empty_videos.append(name)
            logger.info("%s: data/%s has num_samples 0: left out", self.path, name)
            return None
        problem = self._dataset_problem(f, where, n)
        if problem is not None:
            self._reject(name, f"{self.path}: {where}: {problem}")
            return None
        return n

    def _final_frame_ok(self, f: h5py.File, name: str, n: int) -> bool:
        where = f"data/{name}/next_obs/{self.key}"
        problem = self._dataset_problem(f, where, n)
        frames = f[f"data/{name}/obs/{self.key}"].shape[1:3]
        if problem is None and f[where].shape[1:3] != frames:  # its last frame joins the obs frames of one clip
            problem = f"frames of {f[where].shape[1]}x{f[where].shape[2]}, obs/{self.key}'s {frames[0]}x{frames[1]}"
        if problem is not None and problem != "missing":
            logger.warning("%s: %s: %s; using obs frames only", self.path, where, problem)
        # a terminated episode's next observation is often its last one again (the converters' stand-in where the
        # source has none): a repeat would end the clip on two equal frames, so only a new frame is added
        return problem is None and not np.array_equal(f[where][n - 1], f[f"data/{name}/obs/{self.key}"][n - 1])

    def _describe(self, i: int) -> str:
        return f"{self.path}: data/{self.demo_names[i]}/obs/{self.key}"

    def _h5(self) -> h5py.File:
        """This process's handle on the file (a forked or unpickled copy opens its own)."""
        with self._file_lock:
            if self._file is None or self._file_pid != os.getpid():
                self._file = h5py.File(self.path, "r")
                self._file_pid = os.getpid()
            return self._file

    def _read_raw(self, i: int, raw_indices: np.ndarray,
                  each: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        f = self._h5()  # (a robot camera's small frames: resized as a stack by the caller, each left unused)
        name = self.demo_names[i]
        ds = f[f"data/{name}/obs/{self.key}"]
        n_obs = ds.shape[0]
        from_obs = raw_indices[raw_indices < n_obs]
        parts = [_read_rows(ds, from_obs)] if from_obs.size else []
        if raw_indices[-1] >= n_obs:  # the final next_obs frame (sorted indices: only the last can be)
            parts.append(f[f"data/{name}/next_obs/{self.key}"][n_obs - 1:n_obs])
        return as_rgb(np.concatenate(parts) if len(parts) > 1 else parts[0], self._stored)

    def close(self) -> None:
        """Close this process's file handle (reopened on the next read)."""
        with self._file_lock:
            if self._file is not None and self._file_pid == os.getpid():
                self._file.close()
            self._file = None
            self._file_pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_file=None, _file_pid=None, _file_lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file_lock = threading.Lock()


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted, unique) of an HDF5 dataset: one slice when they are evenly spaced, else a point selection."""
    if rows.size == 1 or np.all(np.diff(rows) == rows[1] - rows[0]):
        step = int(rows[1] - rows[0]) if rows.size > 1 else 1
        return ds[int(rows[0]):int(rows[-1]) + 1:step]
    return ds[rows.tolist()]


# ----------------------------------------------------------------------------- subsets, splits, opening
class SubsetSource:
    """The videos ``ids`` of ``source`` as a frame source of their own (video ``k`` is ``source``'s ``ids[k]``)."""

    def __init__(self, source: FrameSource, ids: Sequence[int] | np.ndarray) -> None:
        self.source = source
        self.ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= source.num_videos):
            raise IndexError(f"SubsetSource: ids must lie in [0, {source.num_videos}), got {self.ids.min()} .. "
                             f"{self.ids.max()}")

    @property
    def num_videos(self) -> int:
        return int(self.ids.size)

    def video_length(self, i: int) -> int:
        return self.source.video_length(int(self.ids[i]))

    @property
    def lengths(self) -> np.ndarray:
        return np.array([self.video_length(i) for i in range(self.num_videos)], dtype=np.int64)

    def frames(self, i: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.source.frames(int(self.ids[i]), indices)

    def video_name(self, i: int) -> str:
        return self.source.video_name(int(self.ids[i]))  # type: ignore[attr-defined]

    @property
    def bad_videos(self) -> list[str]:
        return getattr(self.source, "bad_videos", [])

    def __repr__(self) -> str:
        return f"SubsetSource({self.num_videos} of {self.source!r})"


def split_by_video(source: FrameSource, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the video ids into (train_ids, valid_ids), each sorted int64, disjoint and covering.

    ``round(valid_fraction * num_videos)`` videos go to valid, at least one when ``valid_fraction > 0``,
    and at least one video always stays in train.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"split_by_video: valid_fraction must be in [0, 1), got {valid_fraction}")
    n = source.num_videos
    n_valid = 0 if valid_fraction == 0 else max(1, int(round(valid_fraction * n)))
    if n_valid > n - 1:
        raise ValueError(f"{n} video(s) cannot be split with data.valid_fraction={valid_fraction} (at least one "
                         f"video must stay in train and one go to validation): lower it, or set it to 0")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_valid:]).astype(np.int64), np.sort(order[:n_valid]).astype(np.int64)


def cropped_sizes(source: Any) -> list[str] | None:
    """The non-square frame sizes (``"HxW"``, upright as read) ``source`` centre-crops to a square (none when it
    stretches; None when its clips' sizes are not all known, e.g. counted by the manifest without opening them):
    recorded with a stage-1 encoder, so that stage 2, whose cached copies stretch a non-square camera, can say the
    encoder learnt another geometry."""
    if not getattr(source, "center_crop", False):
        return []
    sizes = getattr(source, "frame_sizes", [])
    return None if sizes is None else [f"{h}x{w}" for h, w in sizes if h != w]


def open_frame_source(path: str | os.PathLike, image_size: int, stride: int = 1, **kwargs: Any) -> ClipSource:
    """An :class:`HDF5ImageSource` for ``.hdf5``/``.h5`` files, else a :class:`ManifestSource`; kwargs go to it."""
    if Path(path).suffix.lower() in HDF5_SUFFIXES:
        return HDF5ImageSource(path, image_size, stride=stride, **kwargs)
    return ManifestSource(path, image_size, stride=stride, **kwargs)
