"""Write video datasets with PyAV, atomically: mp4 clips, folders of PNG frames, the manifest.

``write_mp4(path, frames, fps)`` encodes a list or an iterator of (H, W, 3) uint8 frames with libx264
(MPEG-4 Part 2 when PyAV's bundled ffmpeg has no libx264), pixel format yuv420p so every player reads it.
yuv420p needs even sizes, so odd heights or widths are padded by one row or column repeating the edge
(documented, never silent cropping). ``display_rotation`` (and ``mirror``) store a display matrix in the
container, as phones do for portrait video: the pixels are stored as given and players show them rotated
(needs PyAV >= 14). The file is encoded to a temporary name in the same folder and ``os.replace``d onto
``path`` at the end, so a crash or bad input never leaves a half-written clip behind.

``write_frame_folder(folder, frames)`` writes a clip as ``000000.png, 000001.png, ...``: uint8 (H, W, 3) RGB
or (H, W) gray frames as 8-bit PNGs, uint16 ones as 16-bit PNGs (what depth, IR and machine-vision cameras
give). ``write_manifest(folder, rows)`` writes ``manifest.csv`` (``path,num_frames,text``, UTF-8, LF).
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np

PIX_FMT = "yuv420p"
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "num_frames", "text")


def pick_codec() -> str:
    """``libx264`` when PyAV's ffmpeg has it, else ``mpeg4``."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row and/or column so that height and width are even (yuv420p needs it)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _check_frame(frame: np.ndarray, index: int, shape: tuple[int, ...] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index}: expected a uint8 (H, W, 3) RGB array, got {frame.dtype} {frame.shape}")
    if shape is not None and frame.shape != shape:
        raise ValueError(f"frame {index}: shape {frame.shape} differs from the first frame's {shape}")
    return np.ascontiguousarray(frame)


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 20.0, codec: str | None = None,
              crf: int = 20, display_rotation: int = 0, mirror: bool = False) -> int:
    """Encode ``frames`` to the mp4 at ``path`` (written atomically) and return the number of frames.

    ``fps`` may be fractional. ``crf`` sets libx264's quality (0 lossless ... 51 worst; 17-23 look clean);
    for ``mpeg4`` a matching fixed quantizer is used. ``display_rotation`` (degrees counter-clockwise, a
    multiple of 90) and ``mirror`` (left-right, after the rotation) go into the container's display matrix.
    Raises ``ValueError`` for no frames or bad frames.
    """
    if display_rotation % 90:
        raise ValueError(f"display_rotation must be a multiple of 90 degrees, got {display_rotation}")
    path = Path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    codec = codec or pick_codec()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = None
            shape = None
            for frame in frames:
                frame = _check_frame(frame, count, shape)
                if stream is None:
                    shape = frame.shape
                    stream = _add_stream(container, codec, fps, crf, pad_to_even(frame).shape)
                    if display_rotation % 360 or mirror:
                        _set_display_rotation(stream, int(display_rotation), bool(mirror))
                video_frame = av.VideoFrame.from_ndarray(pad_to_even(frame), format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"no frames to write to {path}")
            for packet in stream.encode(None):
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def _add_stream(container: av.container.OutputContainer, codec: str, fps: float, crf: int,
                shape: tuple[int, ...]) -> av.video.stream.VideoStream:
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = int(shape[0]), int(shape[1])
    stream.pix_fmt = PIX_FMT
    if codec == "libx264":
        # no macroblock-tree rate control: with it, libx264 encoded the same frames to different streams depending
        # on what the process had encoded before (3 different clip_00039.mp4 in 4 identical collections, one decoding
        # to other pixels; the cause inside libx264 not traced: rc-lookahead=0 or asm=0 remove it too), which made
        # stage 1 irreproducible (tests/test_video_writer.py); without it the bytes depend only on the frames
        stream.options = {"crf": str(int(crf)), "x264-params": "no-mbtree=1"}
    else:  # mpeg4 has no crf: give it a generous bit rate (about 1.5 bits per pixel at crf 20)
        bits_per_pixel = 1.5 * 2.0 ** ((20 - crf) / 6)
        stream.bit_rate = int(shape[0] * shape[1] * fps * bits_per_pixel)
    return stream


def _set_display_rotation(stream: av.video.stream.VideoStream, degrees: int, mirror: bool) -> None:
    if not hasattr(stream, "set_display_rotation"):
        raise ValueError(f"display_rotation needs PyAV >= 14 (VideoStream.set_display_rotation); this is {av.__version__}")
    stream.set_display_rotation(degrees, hflip=mirror)


# ---------------------------------------------------------------------------------------------- frame folders
PNG_FORMATS = {(np.dtype(np.uint8), 3): ("rgb24", "rgb24"), (np.dtype(np.uint8), 1): ("gray", "gray"),
               (np.dtype(np.uint16), 3): ("rgb48le", "rgb48be"), (np.dtype(np.uint16), 1): ("gray16le", "gray16be")}


def encode_png(frame: np.ndarray) -> bytes:
    """A PNG file's bytes for uint8 or uint16 frames, (H, W, 3) RGB or (H, W) gray, at their bit depth."""
    frame = np.asarray(frame)
    channels = 1 if frame.ndim == 2 else frame.shape[-1] if frame.ndim == 3 else 0
    formats = PNG_FORMATS.get((frame.dtype, channels))
    if formats is None:
        raise ValueError(f"expected a uint8 or uint16 (H, W, 3) RGB or (H, W) gray frame, got {frame.dtype} {frame.shape}")
    given, stored = formats
    codec = av.codec.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], stored
    codec.time_base = Fraction(1, 1)
    image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("<"))), format=given)
    if given != stored:
        image = image.reformat(format=stored)
    return b"".join(bytes(p) for p in [*codec.encode(image), *codec.encode(None)])


def write_frame_folder(folder: str | os.PathLike, frames: Iterable[np.ndarray]) -> int:
    """Write a clip as a folder of PNG frames ``000000.png ...`` (see :func:`encode_png`) and return the count.

    The folder is filled under a temporary name and renamed at the end (an existing folder is replaced)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")  # mkdir's usual mode (tempfile.mkdtemp's is 0700)
    shutil.rmtree(tmp, ignore_errors=True)  # a killed writer's leftover of this process id
    tmp.mkdir()
    try:
        count = 0
        for count, frame in enumerate(frames, start=1):
            (tmp / f"{count - 1:06d}.png").write_bytes(encode_png(frame))
        if count == 0:
            raise ValueError(f"no frames to write to {folder}")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


# ---------------------------------------------------------------------------------------------- manifest
def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` through a temporary file in the same folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def manifest_text(rows: Sequence[tuple[str, int, str]]) -> str:
    """``manifest.csv`` content for rows (path relative to the manifest, num_frames, text)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def write_manifest(folder: str | os.PathLike, rows: Sequence[tuple[str, int, str]]) -> Path:
    """Write ``folder/manifest.csv`` for ``rows`` atomically; returns its path."""
    path = Path(folder) / MANIFEST_NAME
    write_text_atomic(path, manifest_text(rows))
    return path
