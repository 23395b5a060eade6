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
formats' converters use, and is uint8, or float under a key named ``*_image`` (a float array of another name, e.g.
``(8, 8, 3)`` features, and 16-bit frames are copied as stored). A float camera whose values are not colour in
[0, 1] or [0, 255] in some demo (a depth map in metres) is copied as stored in every demo, warned once and listed in
``env_args["kept_as_stored"]``: the stages read it only if ``obs.rgb`` names it, and then refuse it. A copy written
here at size S asks for no further copy at S (:func:`needs_resize`).

A file whose demos lack ``next_obs`` (robomimic's ``dataset_states_to_obs.py --exclude-next-obs``, which halves
an image file) gets the same kind of copy, at its stored size unless ``image_size`` is given
(:func:`lacks_next_obs`): each missing ``next_obs/<key>`` is derived from the copy's ``obs/<key>`` as
``obs[t + 1]``, the last step repeating its own observation. Exact wherever the episode goes on; at a last step
that ends on ``done = 1`` the backup does not read it; at a time-limit end (``done = 0``) the TD target bootstraps
from the last observation instead of the unseen next one. ``env_args["derived_next_obs"]`` lists the keys derived.
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
from tqdm import tqdm

from robopretrain.data.episodes import ConversionError, NotColourError, resize_frames, to_uint8_hwc
from robopretrain.data.hdf5 import MISSING_HINTS, PROGRESS_MIN_DEMOS, converted_as_camera
from sim_envs.hdf5_writer import remove_abandoned_partials

log = logging.getLogger(__name__)

OBS_GROUPS = ("obs", "next_obs")
CHUNK_FRAMES = 16  # frames per chunk of a resized camera stored chunked in the source


def _demos(data: h5py.Group) -> Iterator[tuple[str, h5py.Group]]:
    for name, item in data.items():
        if isinstance(item, h5py.Group):
            yield name, item


def is_camera(key: str, ds: h5py.Dataset) -> bool:
    """Whether the ``(N, ...)`` dataset ``key`` of an ``obs`` group is a picture per step to resize (module
    docstring; :func:`robopretrain.data.hdf5.converted_as_camera`)."""
    return converted_as_camera(key, tuple(ds.shape), ds.dtype)


def _env_args(data: h5py.Group) -> dict[str, Any] | None:
    """``data``'s ``env_args`` as a dict, or None when missing or not a JSON object."""
    raw = data.attrs.get("env_args")
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def lacks_next_obs(path: str | os.PathLike) -> bool:
    """Whether some demo of ``path`` has an ``obs`` key without its ``next_obs`` twin (reads no arrays)."""
    with h5py.File(path, "r") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            return False
        for _, demo in _demos(data):
            obs, nxt = demo.get("obs"), demo.get("next_obs")
            if isinstance(obs, h5py.Group) and any(
                    isinstance(ds, h5py.Dataset) and not (isinstance(nxt, h5py.Group) and key in nxt)
                    for key, ds in obs.items()):
                return True
    return False


def needs_resize(path: str | os.PathLike, image_size: int) -> bool:
    """Whether some camera of ``path`` is not already uint8 ``(image_size, image_size, 3)`` in some demo. A copy this
    module wrote at ``image_size`` never does (its cameras kept as stored, a depth map, would otherwise ask for a
    copy of the copy)."""
    size = int(image_size)
    with h5py.File(path, "r") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            return False
        env_args = _env_args(data) or {}
        if env_args.get("image_size") == size and "source_image_sizes" in env_args:
            return False
        for _, demo in _demos(data):
            for group in OBS_GROUPS:
                obs = demo.get(group)
                if not isinstance(obs, h5py.Group):
                    continue
                for key, ds in obs.items():
                    if isinstance(ds, h5py.Dataset) and is_camera(key, ds) and (
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


def write_resized(src: str | os.PathLike, dst: str | os.PathLike, image_size: int | None) -> Path:
    """Copy the robomimic file ``src`` to ``dst`` with every camera at ``image_size x image_size`` (None: cameras as
    stored) and every missing ``next_obs`` part derived (module docstring). Written to ``<dst>.<pid>.tmp`` and
    renamed at the end. Returns ``dst``. Raises :class:`ConversionError` for a file without ``data``. A camera that
    is not colour in some demo (a depth map) is copied as stored in every demo, whichever demo shows it (the copy is
    written again without resizing it when an earlier demo looked like colour)."""
    src, dst = Path(src).expanduser(), Path(dst)
    size = int(image_size) if image_size is not None else None
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(dst)  # a copy killed outright left its partial file
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
    kept: list[str] = []  # cameras that are not colour (depth): copied as stored
    try:
        while True:
            late = _write_once(src, tmp, size, kept)
            if late is None:
                break
            kept.append(late)  # colour in an earlier demo only: again, with it as stored everywhere
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    if size is not None:
        log.info("%s -> %s: cameras resized to %dx%d%s; everything else copied", src, dst, size, size,
                 f" (kept as stored, not colour: {', '.join(kept)})" if kept else "")
    with h5py.File(dst, "r") as f:
        derived = (_env_args(f["data"]) or {}).get("derived_next_obs")
        no_dones = [name for name, demo in f["data"].items() if isinstance(demo, h5py.Group) and "dones" not in demo]
    if no_dones:  # nothing to derive them from: the copy keeps the gap, and the stages refuse a demo they select
        log.warning("%s -> %s: %d demo(s) have no dones (%s%s), copied as they are: the stages refuse a selection "
                    "holding them%s", src, dst, len(no_dones), ", ".join(no_dones[:3]), ", ..." if len(no_dones) > 3
                    else "", MISSING_HINTS["dones"])
    if derived:
        log.warning("%s -> %s: next_obs derived for %s (obs[t + 1]; a demo's last step repeats its own observation, "
                    "which a time-limit end bootstraps from)", src, dst, ", ".join(derived))
    return dst


def _write_once(src: Path, tmp: Path, size: int | None, kept: list[str]) -> str | None:
    """One pass of :func:`write_resized` into ``tmp``; returns the camera to keep as stored and start again for (one
    resized in an earlier demo that turns out not to be colour), else None when ``tmp`` is complete. Appends the
    cameras found not colour in their first demo to ``kept``."""
    source_sizes: dict[str, list[int]] = {}
    derived: set[str] = set()
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
        for name, item in tqdm(data.items(), total=len(data), desc=f"resizing {src.name}", unit="demo",
                               disable=len(data) < PROGRESS_MIN_DEMOS, leave=False):
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
                    if size is not None and isinstance(ds, h5py.Dataset) and is_camera(key, ds) and key not in kept:
                        try:
                            hw = _resized_camera(ds, group, key, size, f"{src}: data/{name}/{child_name}/{key}")
                        except NotColourError as err:
                            log.warning("%s; camera %r is copied as stored (not resized, in every demo): not 8-bit "
                                        "colour", err, key)
                            if key in source_sizes:  # resized in an earlier demo: start again
                                return key
                            kept.append(key)
                        else:
                            if child_name == "obs" or key not in source_sizes:  # the obs frames' size wins
                                source_sizes[key] = list(hw)
                            continue
                    child.copy(ds, group, name=key)
            derived.update(_derive_next_obs(demo))
        # data's total is the demos' sum (a source without it, or with a stale one, is read by its demos); demos
        # whose num_samples is not a whole number are copied as they are, for the reader to name
        counts = [g.attrs.get("num_samples") for g in out_data.values() if isinstance(g, h5py.Group)]
        if all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in counts):
            out_data.attrs["total"] = int(sum(counts))
        env_args = _env_args(data)
        if env_args is not None:
            env_args.update(source=str(src.resolve()), image_size=size, source_image_sizes=source_sizes)
            if derived:
                env_args["derived_next_obs"] = sorted(derived)
            if kept:
                env_args["kept_as_stored"] = list(kept)
            out_data.attrs["env_args"] = json.dumps(env_args)
    return None


def _derive_next_obs(demo: h5py.Group) -> list[str]:
    """Write the ``next_obs/<key>`` the copied ``demo`` lacks from its ``obs/<key>``: ``obs[t + 1]``, the last step
    its own observation again (module docstring). Returns the keys derived."""
    obs = demo.get("obs")
    if not isinstance(obs, h5py.Group):
        return []
    nxt = demo.require_group("next_obs")
    out = []
    for key, ds in obs.items():
        if isinstance(ds, h5py.Dataset) and key not in nxt and ds.ndim >= 1 and len(ds):
            values = ds[()]
            nxt.create_dataset(key, data=np.concatenate([values[1:], values[-1:]]), chunks=ds.chunks,
                               compression=ds.compression, compression_opts=ds.compression_opts)
            _copy_attrs(ds, nxt[key])
            out.append(key)
    return out


__all__ = ["is_camera", "lacks_next_obs", "needs_resize", "write_resized"]
