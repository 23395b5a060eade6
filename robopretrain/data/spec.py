"""What an agent observes: :class:`ObsSpec`, a named list of observation parts with their modality and size.

One observation path (STYLE.md rule 1, robomimic's modality -> encoder mapping): an observation is a dict of
named parts. ``low_dim`` parts are float vectors ``(d,)``, concatenated (and normalised) by the observation
encoder; ``rgb`` parts are uint8 camera images ``(H, W, 3)``, each passed through the image encoder; with
``num_tasks > 0`` the part ``task_id`` (an integer) becomes the PTR task one-hot of that size. An agent without
cameras is the spec with no ``rgb`` parts, not a second code path.

Sizes always come from the data (:func:`spec_from_data`) or the env, are stored in every checkpoint
(:meth:`ObsSpec.to_dict`), and are checked against each other before training (:meth:`ObsSpec.check_fits`), so a
7-D action or a 9-D proprio vector works and a mismatch is one error naming the key and both sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopretrain.data.keys import FEATURES, TASK_ID

LOW_DIM, RGB = "low_dim", "rgb"


class SpecMismatchError(ValueError):
    """Two descriptions of the same observation (data, env, checkpoint) disagree."""


@dataclass(frozen=True)
class ObsSpec:
    """Ordered observation parts: ``low_dim`` ``((key, size), ...)``, ``rgb`` ``((key, (H, W, 3)), ...)``, and the
    size of the task one-hot (0: no task conditioning)."""

    low_dim: tuple[tuple[str, int], ...] = ()
    rgb: tuple[tuple[str, tuple[int, int, int]], ...] = ()
    num_tasks: int = 0

    def __post_init__(self) -> None:
        keys = [k for k, _ in self.low_dim] + [k for k, _ in self.rgb]
        if len(set(keys)) != len(keys):
            raise ValueError(f"observation spec: keys must be distinct, got {keys}")
        if not keys and self.num_tasks <= 0:
            raise ValueError("observation spec: no observation parts (give low_dim or rgb keys)")
        if TASK_ID in keys:
            raise ValueError(f"observation spec: {TASK_ID!r} is reserved for the task id (set num_tasks instead)")
        for key, shape in self.rgb:
            if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
                raise ValueError(f"observation spec: rgb part {key!r} has shape {tuple(shape)}; expected (H, W, 3)")
        for key, size in self.low_dim:
            if int(size) < 1:
                raise ValueError(f"observation spec: low_dim part {key!r} has size {size}; expected >= 1")

    # ------------------------------------------------------------------ views

    @property
    def low_dim_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.low_dim)

    @property
    def rgb_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.rgb)

    @property
    def low_dim_size(self) -> int:
        return int(sum(size for _, size in self.low_dim))

    @property
    def image_size(self) -> int | None:
        """The side of the (square) camera images; None without cameras. Raises if cameras differ in size."""
        shapes = {tuple(shape) for _, shape in self.rgb}
        if not shapes:
            return None
        if len(shapes) != 1 or next(iter(shapes))[0] != next(iter(shapes))[1]:
            sizes = ", ".join(f"{k} {tuple(shape)}" for k, shape in self.rgb)  # each camera with its own size
            raise ValueError(f"observation spec: cameras must be square and of one size, got {sizes}: the data's frames are used as stored (an env's frames are "
                             "resized to the agent's size, robopretrain.envs.camera_frames); set data.image_size=S "
                             "(convert: --image-size S): another format is resized while converting, a robomimic "
                             "file gets a cached copy with its cameras at S x S")
        return int(next(iter(shapes))[0])

    def storage(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """How each stored part looks per transition: ``{key: (shape, dtype)}`` (``task_id``: int64 scalar)."""
        out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for key, shape in self.rgb:
            out[key] = (tuple(int(s) for s in shape), np.dtype(np.uint8))
        for key, size in self.low_dim:
            out[key] = ((int(size),), np.dtype(np.float32))
        if self.num_tasks:
            out[TASK_ID] = ((), np.dtype(np.int64))
        return out

    def storage_keys(self) -> tuple[str, ...]:
        return tuple(self.storage())

    def cached(self, feature_dim: int) -> ObsSpec:
        """The spec after frozen features replace the cameras: ``features`` first among the low-dim parts."""
        return ObsSpec(low_dim=((FEATURES, int(feature_dim)), *self.low_dim), rgb=(), num_tasks=self.num_tasks)

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return {LOW_DIM: [[k, int(s)] for k, s in self.low_dim], RGB: [[k, [int(x) for x in s]] for k, s in self.rgb],
                "num_tasks": int(self.num_tasks)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObsSpec:
        return cls(low_dim=tuple((str(k), int(s)) for k, s in d.get(LOW_DIM, [])),
                   rgb=tuple((str(k), tuple(int(x) for x in s)) for k, s in d.get(RGB, [])),
                   num_tasks=int(d.get("num_tasks", 0)))

    # ------------------------------------------------------------------ checks

    def check_fits(self, other: ObsSpec, *, mine: str, theirs: str) -> None:
        """Raise :class:`SpecMismatchError` naming every key whose presence or size differs between the two."""
        problems = []
        for kind, a, b in ((LOW_DIM, dict(self.low_dim), dict(other.low_dim)), (RGB, dict(self.rgb), dict(other.rgb))):
            for key in list(a) + [k for k in b if k not in a]:
                if key not in b:
                    problems.append(f"{kind} part {key!r} is in {mine} but not in {theirs}")
                elif key not in a:
                    problems.append(f"{kind} part {key!r} is in {theirs} but not in {mine}")
                elif tuple(np.atleast_1d(a[key])) != tuple(np.atleast_1d(b[key])):
                    problems.append(f"{kind} part {key!r}: {mine} has size {a[key]}, {theirs} has {b[key]}")
        if [k for k, _ in self.low_dim] != [k for k, _ in other.low_dim] and not problems:
            problems.append(f"low_dim order: {mine} {list(self.low_dim_keys)}, {theirs} {list(other.low_dim_keys)}")
        if self.num_tasks != other.num_tasks:
            problems.append(f"task one-hot size: {mine} has {self.num_tasks}, {theirs} has {other.num_tasks}")
        if problems:
            raise SpecMismatchError(f"{mine} does not fit {theirs}: " + "; ".join(problems))


def spec_from_shapes(shapes: Mapping[str, tuple[Sequence[int], Any]], low_dim: Sequence[str], rgb: Sequence[str],
                     num_tasks: int, *, where: str, key_map: Mapping[str, str] | None = None,
                     map_setting: str | None = None, parts_settable: bool = False, env: bool = False) -> ObsSpec:
    """The spec of parts ``low_dim`` and ``rgb`` given ``{source key: (shape, dtype)}`` (a data file's or an env's).

    ``key_map`` maps our part names to the source's keys. Raises ``ValueError`` naming ``where``, the key, its
    shape and dtype, and what is available, when a part is missing or of the wrong kind; a missing part's message
    says how to name the source's key for it with ``map_setting`` (e.g. ``"data.obs_map"``) and, when
    ``parts_settable``, how to list the source's own keys as the parts (``obs.low_dim`` / ``obs.rgb``). ``env``: the
    shapes are an env's observation (one step), whose frames are converted as they come where they are uint8: a
    camera of another dtype gets that advice, not a data file's.
    """
    key_map = dict(key_map or {})
    low, cams = [], []
    shared = shared_source_key([*low_dim, *rgb], key_map, map_setting)
    if shared:
        raise ValueError(f"{where}: {shared}")
    read = {str(key_map.get(p, p)) for p in [*low_dim, *rgb]}

    def lookup(key: str, kind: str) -> tuple[str, Sequence[int], Any]:
        src = key_map.get(key, key)
        if src not in shapes:
            free = {k: v for k, v in shapes.items() if k not in read}  # keys no other part reads
            raise ValueError(f"{where}: observation key {src!r} ({kind} part {key!r}) not found; available: "
                             f"{sorted(shapes)}{_missing_part_hint(free, key, kind, map_setting, parts_settable)}")
        return (src, *shapes[src])

    for key in low_dim:
        src, shape, dtype = lookup(key, "low_dim")
        if len(shape) != 1 or np.dtype(dtype).kind not in "fiub":  # ints and flags are read as float32
            scalar = ("; a scalar per step: store it as (N, 1), values[:, None]" if len(shape) == 0 else
                      "; an array per step: store it flat as (N, d), values.reshape(len(values), -1) (an env's "
                      "Box of that shape is flattened so)" if len(shape) == 2 and np.dtype(dtype).kind in "fib"
                      else "")
            raise ValueError(f"{where}: low_dim part {src!r} is {np.dtype(dtype)} {tuple(shape)}; expected a numeric "
                             f"vector (d,) (images go in the rgb list){scalar}")
        low.append((key, int(shape[0])))
    for key in rgb:
        src, shape, dtype = lookup(key, "rgb")
        read_as = stored_camera_shape(tuple(shape), dtype)
        if read_as is None:
            hint = (ENV_FRAME_HINT if env and np.dtype(dtype) != np.uint8 else
                    image_layout_hint(tuple(shape), np.dtype(dtype), src))
            raise ValueError(f"{where}: rgb part {src!r} is {np.dtype(dtype)} {tuple(shape)}; expected uint8 images "
                             f"(H, W, 3) or grey (H, W, 1) / (H, W){hint}")
        cams.append((key, read_as))
    return ObsSpec(low_dim=tuple(low), rgb=tuple(cams), num_tasks=int(num_tasks))


def shared_source_key(parts: Sequence[str], key_map: Mapping[str, str], map_setting: str | None = None) -> str | None:
    """A phrase naming two ``parts`` that read one source key, each through ``key_map`` or by its own name (a
    half-written swap ``{front_image: wrist_image}`` fed the wrist camera to both parts and never read the front
    one, silently; a new user's finding), or None when each part reads a key of its own."""
    by_source: dict[str, list[str]] = {}
    for part in dict.fromkeys(parts):
        by_source.setdefault(str(key_map.get(part, part)), []).append(part)
    for src, readers in by_source.items():
        if len(readers) > 1:
            setting = map_setting or "the observation mapping"
            how = " and ".join(f"{p!r} ({'through ' + setting if p in key_map else 'by its own name'})"
                               for p in readers)
            a, b = readers[:2]
            return (f"parts {how} both read the key {src!r}: one key cannot feed two parts; map each part to a key "
                    f"of its own (to swap two keys, map both: {setting}={{{a}: {b}, {b}: {a}}})")
    return None


def _missing_part_hint(shapes: Mapping[str, tuple[Sequence[int], Any]], key: str, kind: str,
                       map_setting: str | None, parts_settable: bool) -> str:
    """How to use the source's keys of ``kind`` for a missing part ``key``: ``""`` without a setting to name, else a
    hint starting with ``"; "`` that names the candidate keys (a float vector for ``low_dim``, a camera for ``rgb``)."""
    if kind == LOW_DIM:
        fits = [k for k, (shape, dtype) in shapes.items() if len(shape) == 1 and np.dtype(dtype).kind in "fiub"]
    else:
        fits = [k for k, (shape, dtype) in shapes.items() if len(shape) in (2, 3)]
    if not fits or (map_setting is None and not parts_settable):
        return ""
    fits = sorted(fits)
    ways = []
    if map_setting is not None:
        ways.append(f"map the part to a key there with {map_setting}={{{key}: "
                    f"{fits[0] if len(fits) == 1 else 'KEY'}}}")
    if parts_settable:
        ways.append(f"use those keys as the parts: obs.{kind}=[{', '.join(fits)}]")
    return "; " + ", or ".join(ways) + ("" if len(fits) == 1 else f" ({kind} candidates: {fits})")


def stored_camera_shape(shape: Sequence[int], dtype: Any) -> tuple[int, int, int] | None:
    """The ``(H, W, 3)`` frames a stored camera of per-step ``shape`` and ``dtype`` are read as: uint8 RGB as they
    are, uint8 grey ``(H, W)`` or ``(H, W, 1)`` with the grey repeated in three channels (:func:`as_rgb`; an env's
    grey frames are converted the same way, :mod:`robopretrain.envs.camera_frames`); None for any other layout
    (channels first, float, RGBA: :func:`image_layout_hint` says how to rewrite them)."""
    shape = tuple(int(s) for s in shape)
    if np.dtype(dtype) != np.uint8 or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        return None
    return shape[0], shape[1], 3


def as_rgb(frames: np.ndarray, stored: Sequence[int]) -> np.ndarray:
    """``frames`` (``(..., *stored)``, a camera stored with per-step shape ``stored``) as ``(..., H, W, 3)``: grey
    ``(H, W)`` / ``(H, W, 1)`` repeated in three channels, RGB unchanged (the same array)."""
    stored = tuple(int(s) for s in stored)
    if len(stored) == 3 and stored[2] == 3:
        return frames
    grey = frames if len(stored) == 2 else frames[..., 0]
    return np.repeat(grey[..., None], 3, axis=-1)


# an env's camera of another dtype (its uint8 frames of any layout are converted: robopretrain.envs.camera_frames)
ENV_FRAME_HINT = ("; return uint8 frames (0-255) from the env, (H, W, C) or (C, H, W) with C in 1, 3, 4 (converted as "
                  "they come), e.g. (frame * 255).round().astype(np.uint8) for float frames in [0, 1], in the env or "
                  "a gymnasium ObservationWrapper")


def image_layout_hint(shape: tuple[int, ...], dtype: np.dtype, key: str | None = None,
                      cached_copy: bool = True) -> str:
    """How to rewrite a stored camera ``key`` of another layout as uint8 ``(H, W, 3)`` (the data is used as stored;
    an env's frames of these layouts are converted, robopretrain.envs.camera_frames): a hint starting with ``"; "``,
    or ``""``. A float array of one channel (a depth map, most likely) is no colour camera, and the cached copy
    ``data.image_size`` makes converts float frames only of keys named ``*_image``
    (:func:`robopretrain.data.resize_robomimic.is_camera`): neither is suggested where it does not apply;
    ``cached_copy=False`` leaves ``data.image_size`` out (a reader that has no such setting, stage 1's)."""
    if len(shape) not in (2, 3):  # not an image at all (a vector listed as a camera)
        return ""
    first = len(shape) == 3 and shape[0] in (1, 3) and shape[2] not in (1, 3)
    channels = shape[0] if first else (shape[2] if len(shape) == 3 else 1)
    floating = bool(np.issubdtype(dtype, np.floating))
    if floating and channels == 1:
        return ("; a float array of one channel (a depth map?) is no colour camera: the cameras (obs.rgb) take uint8 "
                "colour or grey frames, so leave it out of obs.rgb (data.image_size keeps it as stored)")
    fixes: list[str] = []
    if first:
        fixes.append("channels first: write frames.transpose(0, 2, 3, 1)")
    if floating:
        fixes.append("float: write (frames * 255).round().astype(np.uint8) for frames in [0, 1]")
    if not fixes:
        return ""
    if not cached_copy:
        return f"; {', '.join(fixes)}"
    if floating and key is not None and not key.endswith("_image"):
        return (f"; {', '.join(fixes)} (data.image_size converts float frames only of keys named *_image: rename "
                f"{key!r} to '{key}_image' to have it converted)")
    return (f"; {', '.join(fixes)}; or set data.image_size=S: the stages then read a cached copy of the file whose "
            "uint8 frames, and float colour frames in [0, 1] of keys named *_image, are uint8 (S, S, 3) "
            "(robopretrain.data.resize_robomimic)")


__all__ = ["LOW_DIM", "RGB", "ObsSpec", "SpecMismatchError", "as_rgb", "image_layout_hint", "shared_source_key",
           "spec_from_shapes", "stored_camera_shape"]
