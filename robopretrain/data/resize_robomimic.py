"""A robomimic HDF5 file with its cameras at one square size: a copy in which everything else is kept as stored.

The agent trains on square frames of one size. Robomimic files written by other robots often hold frames of
another shape (robomimic's own real-robot datasets store 120 x 160 frames; a phone or webcam records 480 x 640;
some writers store channels first or floats in [0, 1]). With ``data.image_size=S`` (``convert --image-size S``)
:func:`robopretrain.data.convert.as_robomimic` writes, once, into the conversion cache, a copy whose camera datasets
(``obs/<camera>`` and ``next_obs/<camera>`` of every demo) are uint8 ``(N, S, S, 3)``: each frame made uint8
channels-last RGB by :func:`robopretrain.data.episodes.to_uint8_hwc` (channels first moved last, grey repeated,
alpha dropped, floats in [0, 1] scaled), then resized by :func:`robopretrain.data.episodes.resize_frames` (the
function that resizes an env's frames for the agent, so training and acting see one view; a non-square frame is
stretched). Every other dataset (actions, rewards, dones, low-dim parts, states), every attribute and every mask is
copied unchanged, so the copy's demos, tasks, success flags and action units are the source's. ``env_args`` gains
``source`` (the source's absolute path), ``image_size`` and ``source_image_sizes`` (each camera's stored (H, W)),
the keys a converted copy of another format carries.

A per-step array is a camera here when :func:`robopretrain.data.episodes.image_layout` reads it as a picture
(``(H, W, C)`` or ``(C, H, W)`` with C in 1, 3, 4 and sides >= 8, or uint8 ``(H, W)``), the rule the other
formats' converters use, and is uint8 or float (16-bit and other integer frames are no colour camera). A float
camera whose values are not colour in [0, 1] or [0, 255] (a depth map in metres) is copied as stored, warned once
and listed in ``env_args["kept_as_stored"]``: the stages read it only if ``obs.rgb`` names it, and then refuse it.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from robopretrain.data.episodes import ConversionError, NotColourError, image_layout, resize_frames, to_uint8_hwc

log = logging.getLogger(__name__)

OBS_GROUPS = ("obs", "next_obs")
CHUNK_FRAMES = 16  # frames per chunk of a resized camera stored chunked in the source


def _demos(data: h5py.Group) -> Iterator[tuple[str, h5py.Group]]:
    for name, item in data.items():
        if isinstance(item, h5py.Group):
            yield name, item


def is_camera(ds: h5py.Dataset) -> bool:
    """Whether an ``(N, ...)`` dataset of an ``obs`` group is a colour picture per step to resize (module
    docstring)."""
    colour = ds.dtype == np.uint8 or np.issubdtype(ds.dtype, np.floating)
    return colour and ds.ndim >= 3 and image_layout(ds.shape[1:], ds.dtype) is not None


def needs_resize(path: str | os.PathLike, image_size: int) -> bool:
    """Whether some camera of ``path`` is not already uint8 ``(image_size, image_size, 3)`` in some demo."""
    size = int(image_size)
    with h5py.File(path, "r") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            return False
        for _, demo in _demos(data):
            for group in OBS_GROUPS:
                obs = demo.get(group)
                if not isinstance(obs, h5py.Group):
                    continue
                for ds in obs.values():
                    if isinstance(ds, h5py.Dataset) and is_camera(ds) and (
                            ds.dtype != np.uint8 or tuple(ds.shape[1:]) != (size, size, 3)):
                        return True
    return False


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value


def _resized_camera(ds: h5py.Dataset, out: h5py.Group, key: str, image_size: int, where: str) -> tuple[int, int]:
    """``ds``'s frames as uint8 ``(N, S, S, 3)`` in ``out[key]``; returns the source frames' (H, W)."""
    frames = to_uint8_hwc(ds[()], where)
    hw = (int(frames.shape[1]), int(frames.shape[2]))
    frames = resize_frames(frames, image_size)
    chunks = (max(1, min(CHUNK_FRAMES, len(frames))), image_size, image_size, 3) if ds.chunks and len(frames) else None
    out.create_dataset(key, data=frames, chunks=chunks, compression=ds.compression if chunks else None,
                       compression_opts=ds.compression_opts if chunks else None)
    _copy_attrs(ds, out[key])
    return hw


def write_resized(src: str | os.PathLike, dst: str | os.PathLike, image_size: int) -> Path:
    """Copy the robomimic file ``src`` to ``dst`` with every camera at ``image_size x image_size`` (module docstring).
    Written to ``<dst>.<pid>.tmp`` and renamed at the end. Returns ``dst``. Raises :class:`ConversionError` for a file
    without ``data``; a camera that turns out not to be colour is copied as stored (module docstring)."""
    src, dst = Path(src).expanduser(), Path(dst)
    size = int(image_size)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
    source_sizes: dict[str, list[int]] = {}
    kept: list[str] = []  # float cameras that are not colour (depth): copied as stored
    try:
        with h5py.File(src, "r") as fin, h5py.File(tmp, "w") as fout:
            data = fin.get("data")
            if not isinstance(data, h5py.Group):
                raise ConversionError(f"{src}: no 'data' group; not a robomimic HDF5 file")
            _copy_attrs(fin, fout)
            for name, item in fin.items():
                if name != "data":
                    fin.copy(item, fout, name=name)
            out_data = fout.create_group("data")
            _copy_attrs(data, out_data)
            for name, item in data.items():
                if not isinstance(item, h5py.Group):
                    data.copy(item, out_data, name=name)
                    continue
                demo = out_data.create_group(name)
                _copy_attrs(item, demo)
                for child_name, child in item.items():
                    if child_name not in OBS_GROUPS or not isinstance(child, h5py.Group):
                        item.copy(child, demo, name=child_name)
                        continue
                    group = demo.create_group(child_name)
                    _copy_attrs(child, group)
                    for key, ds in child.items():
                        where = f"{src}: data/{name}/{child_name}/{key}"
                        if isinstance(ds, h5py.Dataset) and is_camera(ds) and key not in kept:
                            try:
                                hw = _resized_camera(ds, group, key, size, where)
                                source_sizes.setdefault(key, list(hw))
                                continue
                            except NotColourError as err:
                                if key in source_sizes:  # resized in an earlier demo: the demos would disagree
                                    raise
                                kept.append(key)
                                log.warning("%s; camera %r is copied as stored (not resized): not 8-bit colour",
                                            err, key)
                        child.copy(ds, group, name=key)
            env_args: dict[str, Any] = {}
            raw = data.attrs.get("env_args")
            if raw is not None:
                try:
                    env_args = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
                except ValueError:
                    env_args = {}
            if isinstance(env_args, dict):
                env_args.update(source=str(src.resolve()), image_size=size, source_image_sizes=source_sizes)
                if kept:
                    env_args["kept_as_stored"] = kept
                out_data.attrs["env_args"] = json.dumps(env_args)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    sizes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in source_sizes.items())
    log.info("%s -> %s: cameras (%s) resized to %dx%d; everything else copied", src, dst, sizes or "none", size, size)
    return dst


__all__ = ["is_camera", "needs_resize", "write_resized"]
