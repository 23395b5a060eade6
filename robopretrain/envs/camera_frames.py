"""A gym env's camera frames in the toolkit's image contract: upright uint8 ``(H, W, 3)`` at the agent's size.

Envs render in many layouts. :func:`to_agent_frame` takes one frame, a uint8 array of 2 or 3 dimensions, and
returns it as the agent sees images in its data:

* channels last: ``(C, H, W)`` with ``C`` in {1, 3, 4} and a last dimension not in {1, 3, 4} is transposed
  (pixel-based envs written for PyTorch often return channels first);
* three channels: grey ``(H, W)`` (gymnasium's ``GrayscaleObservation``) or ``C = 1`` is repeated, RGBA ``C = 4``
  loses its alpha channel. The layout is read from the shape alone: a stack of four grey frames ``(4, H, W)`` or
  ``(H, W, 4)`` is taken for RGBA (its last frame dropped), so give the agent one frame per camera part;
* upright: flipped vertically when the target says its env renders upside down (OpenGL's origin);
* the agent's size: resized to ``(size, size)`` when its height or width differ, with Pillow's box filter when
  shrinking (the area average, no aliasing) and its bilinear filter when enlarging. A non-square frame is resized
  to a square one (its aspect ratio changes; crop in the env if that matters for the task).

:func:`agent_frame_shape` gives the shape of the result, for the observation space. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CHANNELS = (1, 3, 4)  # grey, RGB, RGBA


def is_camera(arr: np.ndarray) -> bool:
    """Whether an array can be a camera frame: uint8 with 2 (grey) or 3 dimensions."""
    return arr.dtype == np.uint8 and arr.ndim in (2, 3)


def _channels_first(shape: tuple[int, ...]) -> bool:
    return shape[0] in CHANNELS and shape[-1] not in CHANNELS


def frame_geometry(shape: Sequence[int]) -> tuple[int, int, int]:
    """A camera frame's ``(H, W, C)`` as stored (``shape``: ``(H, W)`` grey, ``(H, W, C)`` or ``(C, H, W)``, C in
    {1, 3, 4}): what :func:`to_agent_frame` stretches to the agent's square and turns into RGB. Raises
    ``ValueError`` for another shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:  # grey without a channel dimension
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ValueError(f"a camera frame has 2 or 3 dimensions, got shape {shape}")
    h, w, c = (shape[1], shape[2], shape[0]) if _channels_first(shape) else shape
    if c not in CHANNELS:
        raise ValueError(f"camera frame of shape {shape}: expected (H, W, C) or (C, H, W) with C in {list(CHANNELS)}")
    return h, w, c


def agent_frame_shape(shape: tuple[int, ...], size: int | None = None) -> tuple[int, int, int]:
    """The ``(H, W, 3)`` shape :func:`to_agent_frame` returns for a frame of ``shape`` (``size``: the agent's image
    size, or None to keep the env's). Raises ``ValueError`` when ``shape`` has no channel dimension in {1, 3, 4}."""
    h, w, _ = frame_geometry(shape)
    return (int(size), int(size), 3) if size else (h, w, 3)


def to_agent_frame(frame: np.ndarray, size: int | None = None, flip: bool = False) -> np.ndarray:
    """``frame`` (uint8, ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``, C in {1, 3, 4}) as a contiguous upright uint8
    ``(size, size, 3)`` array (``(H, W, 3)`` when ``size`` is None). See the module docstring for each step.
    Raises ``ValueError`` for another shape or a dtype other than uint8 (a float frame's scale is unknown)."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise ValueError(f"camera frame of dtype {arr.dtype}: expected uint8 (0-255)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    out_shape = agent_frame_shape(arr.shape, size)
    if _channels_first(arr.shape):
        arr = arr.transpose(1, 2, 0)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if flip:
        arr = arr[::-1]
    if arr.shape[:2] != out_shape[:2]:
        arr = resize_rgb(arr, *out_shape[:2])
    return np.ascontiguousarray(arr, dtype=np.uint8)


def resize_rgb(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` as ``(height, width, 3)``: the area average (Pillow's box filter) where it shrinks, bilinear
    where it enlarges. The one resize of camera frames in every stage: an env's frames for the agent, a converted
    copy's cameras, stage 1's videos (which resized with torch's antialiased bilinear: its encoder saw other
    pixels than stage 2 gave it, up to 45 grey levels at edges; a new user's finding)."""
    from PIL import Image

    shrink = height <= frame.shape[0] and width <= frame.shape[1]
    image = Image.fromarray(np.ascontiguousarray(frame))
    # np.array copies: np.asarray of a Pillow image is read-only, and torch.from_numpy warns on every frame
    return np.array(image.resize((width, height), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR))



def image_layout(step_shape: Sequence[int], dtype: Any) -> str | None:
    """How a per-step array of ``step_shape`` and ``dtype`` is a picture: ``"channels_last"`` (H, W, C) or
    ``"channels_first"`` (C, H, W) with C in 1, 3, 4 and H, W >= 8 (channels last wins when both fit), ``"grey"``
    for uint8 (H, W) with H, W >= 8 (gymnasium's ``GrayscaleObservation``; a uint8 grid of that size is read as a
    picture too), else None. The one rule the converters (:func:`robopretrain.data.episodes.is_image`), ``inspect`` and a target env's
    observation parts (:class:`robopretrain.envs.target.TargetEnv`) read cameras by."""
    s = tuple(int(n) for n in step_shape)
    if len(s) == 2:
        try:
            grey = np.dtype(dtype) == np.uint8
        except TypeError:  # a dtype name numpy does not know: not a picture
            grey = False
        return "grey" if grey and min(s) >= 8 else None
    if len(s) != 3:
        return None
    if s[-1] in (1, 3, 4) and min(s[0], s[1]) >= 8:
        return "channels_last"
    if s[0] in (1, 3, 4) and min(s[1], s[2]) >= 8:
        return "channels_first"
    return None


__all__ = ["agent_frame_shape", "frame_geometry", "image_layout", "is_camera", "to_agent_frame"]
