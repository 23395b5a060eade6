"""Episodes of any source format, and the writer that turns them into the toolkit's robomimic HDF5 contract.

Every reader of a foreign format (:mod:`.read_lerobot`, :mod:`.read_minari`, :mod:`.read_d4rl`,
:mod:`.read_ogbench`) yields :class:`Episode` objects; :func:`write_robomimic` writes them as::

    data/            attrs: total, env_args (JSON: env_name "<format>/<name>", source format and path, num_tasks,
                            action_normalization when actions were rescaled)
      demo_<i>/      attrs: num_samples, task, task_id, ep_meta (JSON: terminated, truncated, success when the
                            source says, source_episode)
        obs/<key>, next_obs/<key>, actions, rewards, dones

What is carried over exactly:

* **Episode boundaries**: one source episode is one ``demo_<i>``, in source order.
* **Termination vs truncation**: ``dones`` is the source's true-termination flag per step (``terminations`` /
  ``terminals`` / ``next.done``); a truncated episode (time limit, ``timeouts``, ``truncations``) ends with
  ``dones = 0`` on its last step, so returns-to-go bootstrap through it. ``ep_meta`` records both flags of the
  last step.
* **Success**: ``ep_meta["success"]`` when the source records it (LeRobot ``next.success``, Minari/D4RL
  ``infos/success``, OGBench: the episode ends in a true termination); absent when it does not.
* **Images** (channels last or first, grey with or without a channel) become uint8 ``(N, H, W, 3)``
  (:func:`to_uint8_hwc`); low-dim parts float32 ``(N, d)``. With
  ``image_size=S`` every camera frame whose height or width is not ``S`` is resized to ``(S, S)`` by
  :func:`robopretrain.envs.camera_frames.to_agent_frame`, the function that gives an env's frames to the agent (area
  average when shrinking; a non-square frame is stretched, its aspect ratio changed): a policy trained on the file
  then sees an env's camera as it saw the data's. ``env_args`` records ``image_size`` and each camera's source size.
  Without it images keep the source's size (the agent trains at the data's size, which must be square).
* **Actions** must lie in ``[-1, 1]`` for the toolkit's tanh policies. With ``actions="auto"`` (the default) a
  source whose actions leave that range is rescaled per dimension to ``[-1, 1]``: a dimension that leaves it by its
  min/max over the whole dataset, ``a' = 2 (a - low) / (high - low) - 1`` (a constant one becomes 0, with a
  warning), a dimension already inside it with ``low = -1, high = 1`` (unchanged), and ``low``/``high`` are
  stored in ``env_args["action_normalization"]``; an agent trained on the file records them and every env it acts
  in maps its actions back, ``a = low + (a' + 1) (high - low) / 2`` (:mod:`robopretrain.envs.action_units`); other
  files are re-expressed in the agent's units when it trains on them; ``actions="keep"`` writes them unchanged (the reader then refuses values outside ``[-1, 1]``).

Episodes with fewer than 2 steps are skipped (the contract needs 2; each skip is counted and logged, successes among
them named). Demo ``i`` is the ``i``-th episode the reader gives (its source episode, in order): a skipped episode
leaves a gap in the names instead of renumbering the rest, so ``demo_<i>`` stays source episode ``i`` (the human label
format names demos; ``ep_meta.source_episode`` holds the reader's own episode id where it has one).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from robopretrain.envs.action_units import ENV_ARGS_KEY as ACTION_UNITS_KEY
from robopretrain.envs.action_units import (ActionNormalization, add_whole_values, auto_bounds,
                                            warn_constant_dimensions, warn_index_actions)
from robopretrain.envs.camera_frames import image_layout, to_agent_frame  # image_layout: re-exported
from sim_envs.hdf5_writer import ROBOMIMIC_GYM_TYPE, remove_abandoned_partials

log = logging.getLogger(__name__)

ACTION_MODES = ("auto", "keep")
# info keys that record task success, in order of preference: ``success`` (D4RL, robosuite, our envs) and
# ``is_success`` (gymnasium-robotics' Fetch / Shadow Hand, Stable-Baselines' HER convention)
SUCCESS_INFO_KEYS = ("success", "is_success")


class ConversionError(ValueError):
    """A source dataset cannot be converted; the message names the file and what was expected."""


@dataclass
class Episode:
    """One episode of ``N`` transitions: ``obs[k][t]``, ``actions[t]``, ``rewards[t]``, ``next_obs[k][t]``.

    ``terminations[t]`` is 1 where the step ended the episode by a true terminal state (no bootstrap);
    ``truncated`` says the episode was cut (time limit) rather than terminated. ``success`` is None when the
    source does not record it. 1-D ``actions`` ``(N,)`` (a one-dimensional action space stored flat) become
    ``(N, 1)``.
    """

    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray | None  # None: the source records no reward (written without a rewards dataset)
    terminations: np.ndarray
    truncated: bool
    task: str
    success: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions)
        if self.actions.ndim == 1:
            self.actions = self.actions.reshape(-1, 1)

    def __len__(self) -> int:
        return len(self.actions)


def to_uint8_hwc(frames: np.ndarray, where: str) -> np.ndarray:
    """Images ``(N, H, W, C)`` or ``(N, C, H, W)`` (C in 1, 3, 4; uint8, or float in [0, 1] or [0, 255]) or grey
    uint8 ``(N, H, W)`` as uint8 ``(N, H, W, 3)``: channels-first is moved last, grey is repeated to 3 channels,
    alpha dropped, float in [0, 1] scaled by 255 (:func:`_colour_to_uint8`). Raises :class:`ConversionError` for any
    other shape, or for values that are not 8-bit colour (16-bit, depth, normalised frames)."""
    a = np.asarray(frames)
    if a.ndim == 3 and a.dtype == np.uint8:  # grey frames without a channel (gymnasium's GrayscaleObservation)
        a = a[..., None]
    if a.ndim != 4:
        raise ConversionError(f"{where}: expected images (N, H, W, C) or (N, C, H, W), got shape {a.shape}")
    if a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):
        a = np.moveaxis(a, 1, -1)
    if a.shape[-1] not in (1, 3, 4):
        raise ConversionError(f"{where}: expected 1, 3 or 4 image channels, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = _colour_to_uint8(a, where)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


class NotColourError(ConversionError):
    """A camera part whose values are not 8-bit colour (:func:`_colour_to_uint8`)."""

    rule = "a camera part must be 8-bit colour"


class TextPartError(ConversionError):
    """A part of text (a ``Text`` space's mission string) or other objects, not numbers (:func:`as_part`)."""

    rule = "a part must hold numbers; an env's Text parts are left out likewise"


UNIT_SCALE_MAX = 2.0  # float frames up to this are on the [0, 1] scale (a resize or colour jitter overshoots 1)
OVERSHOOT_SHARE = 0.01  # ... if at most this share of their values lies above 1.05: a depth map in metres (0.3-1.8 m)
DARK_SCALE_MAX = 16.0  # float frames whose largest value lies in (UNIT_SCALE_MAX, this) are on neither colour scale


def _colour_to_uint8(a: np.ndarray, where: str) -> np.ndarray:
    """Non-uint8 colour frames as uint8. Integers must lie in [0, 255]; floats on the [0, 1] scale (largest value
    <= :data:`UNIT_SCALE_MAX` with at most :data:`OVERSHOOT_SHARE` of the values above 1.05: scaled by 255, overshoot
    clipped) or the [0, 255] one (largest >= :data:`DARK_SCALE_MAX`).
    Anything else is not an 8-bit colour picture (a 16-bit camera, a depth map in mm or m, normalised frames) and
    raises :class:`ConversionError`: clipping it to uint8 made a saturated or black camera silently. The scale is
    read per episode; with these bounds two episodes of one camera cannot be read on different scales unless one of
    them is black."""
    if a.size == 0:
        return a.astype(np.uint8)
    if a.dtype.kind in "iub":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise NotColourError(f"{where}: {a.dtype} frames with values in [{lo}, {hi}], outside the 8-bit colour "
                                  "range [0, 255] (a 16-bit camera or a depth map?); the contract's cameras are uint8 "
                                  "colour: convert them first (16-bit colour: frames >> 8)")
        return a.astype(np.uint8)
    f = a.astype(np.float32)
    if not np.all(np.isfinite(f)):
        raise NotColourError(f"{where}: {a.dtype} frames hold NaN or inf values")
    lo, hi = float(f.min()), float(f.max())
    if lo < -0.05 or hi > 255.0 or UNIT_SCALE_MAX < hi < DARK_SCALE_MAX:
        raise NotColourError(f"{where}: {a.dtype} frames with values in [{lo:.4g}, {hi:.4g}]: neither colour on "
                              "[0, 1] nor on [0, 255] (a depth map, normalised or mean-subtracted frames?); the "
                              "contract's cameras are uint8 colour: convert them first")
    if hi <= UNIT_SCALE_MAX:
        over = float(np.mean(f > 1.05))
        if over > OVERSHOOT_SHARE:  # overshoot is a few edge pixels; a depth map in metres is above 1 in large parts
            raise NotColourError(f"{where}: {a.dtype} frames with values in [{lo:.4g}, {hi:.4g}], {over:.0%} of them "
                                  "above 1: not colour on [0, 1] (a depth map in metres?); the contract's cameras are "
                                  "uint8 colour: convert them first")
        f = f * 255.0
    return np.clip(np.round(f), 0, 255).astype(np.uint8)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 frames ``(N, H, W, 3)`` as ``(N, size, size, 3)``, each by
    :func:`robopretrain.envs.camera_frames.to_agent_frame` (the env frames' resize); unchanged when already that size."""
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([to_agent_frame(f, size) for f in frames]) if len(frames) else \
        np.zeros((0, size, size, 3), np.uint8)


def check_image_size(image_size: int | None) -> int | None:
    """``image_size`` as an int >= 8 (the smallest side :func:`is_image` calls a picture), or None; raises
    :class:`ConversionError` otherwise."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ConversionError(f"image_size={image_size!r}: expected an integer >= 8 (the side of the square frames "
                              "to write) or null to keep the source's size")
    return int(image_size)


def is_image(array: np.ndarray) -> bool:
    """A per-step array (N, ...) that is a picture by :func:`image_layout`."""
    return array.ndim in (3, 4) and image_layout(array.shape[1:], array.dtype) is not None


def as_part(array: np.ndarray, where: str) -> np.ndarray:
    """One observation part in the contract's form: images uint8 (N, H, W, 3), anything else float32 (N, d)
    (a scalar per step becomes (N, 1); more dimensions are flattened)."""
    a = np.asarray(array)
    if is_image(a):
        return to_uint8_hwc(a, where)
    if a.ndim >= 1 and (a.dtype.kind in "US" or a.dtype.kind == "O" and a.size
                        and all(isinstance(x, (str, bytes)) for x in a.flat)):
        raise TextPartError(f"{where}: holds {a.dtype} values, not numbers")
    if a.ndim == 0 or a.dtype.kind not in "fiub":
        raise ConversionError(f"{where}: expected a numeric array per step, got {a.dtype} {a.shape}")
    return a.reshape(len(a), -1).astype(np.float32)


def flatten_obs(obs: Any, where: str, prefix: str = "", plain: str = "observations") -> dict[str, np.ndarray]:
    """A nested dict/tuple of per-step arrays (gymnasium Dict/Tuple spaces) as ``{dotted key: array}``; a plain
    array is ``{plain: array}`` (the source's own name, ``observations``)."""
    if isinstance(obs, (Mapping, tuple)):
        out: dict[str, np.ndarray] = {}
        for k, v in (obs.items() if isinstance(obs, Mapping) else enumerate(obs)):
            for key, arr in flatten_obs(v, where, f"{prefix}{k}.", plain).items():
                if key in out:  # {"arm": {"pos": ...}, "arm.pos": ...}: one replaced the other unseen
                    raise ConversionError(f"{where}: two observation parts flatten to the key {key!r} (a nested "
                                          "part and a key with dots of its own); rename one")
                out[key] = arr
        return out
    return {prefix[:-1] or plain: np.asarray(obs)}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _check_episode(ep: Episode, where: str) -> None:
    n = len(ep)
    if ep.actions.ndim != 2:
        raise ConversionError(f"{where}: expected actions (N, A), got shape {ep.actions.shape}")
    for name, arr in (("rewards", ep.rewards), ("terminations", ep.terminations)):
        if arr is not None and arr.shape != (n,):
            raise ConversionError(f"{where}: {name} has shape {arr.shape}, expected ({n},) like the actions")
    for part in ("obs", "next_obs"):
        for k, v in getattr(ep, part).items():
            if len(v) != n:
                raise ConversionError(f"{where}: {part} {k!r} has {len(v)} rows, expected {n} like the actions")
    if not np.isfinite(ep.actions).all():
        raise ConversionError(f"{where}: actions contain NaN or inf")


def _action_units(low: np.ndarray, high: np.ndarray, bounds: tuple[Sequence[float], Sequence[float]] | None,
                  source: str) -> Any:
    """``auto`` action units: the source's declared bounds (an action space) when finite, not all [-1, 1] and holding
    the data, else the data's per-dimension min / max (:func:`auto_bounds`). The declared ones keep the agent's
    reach over the whole space: the data's min / max capped stage 3's actions at what the demos happened to use."""
    if bounds is not None:
        b_low, b_high = (np.asarray(b, dtype=np.float64).reshape(-1) for b in bounds)
        if b_low.shape == low.shape == b_high.shape and np.all(np.isfinite(b_low)) and np.all(np.isfinite(b_high)) \
                and np.all(b_high > b_low):
            if np.all(low >= b_low - 1e-6) and np.all(high <= b_high + 1e-6):
                one = np.isclose(b_low, -1.0) & np.isclose(b_high, 1.0)
                if one.all():
                    return auto_bounds(low, high)  # [-1, 1] declared: the data's values are the agent's already
                return ActionNormalization(tuple(np.where(one, -1.0, b_low).tolist()),
                                           tuple(np.where(one, 1.0, b_high).tolist()))
            log.warning("%s: actions (min %s, max %s) leave the declared action space [%s, %s]; rescaled by the "
                        "data's min / max instead", source, np.round(low, 4).tolist(), np.round(high, 4).tolist(),
                        b_low.tolist(), b_high.tolist())
    return auto_bounds(low, high)


def write_robomimic(path: str | os.PathLike, episodes: Iterable[Episode], *, source: str, fmt: str,
                    env_name: str | None = None, actions: str = "auto", extra_env_args: Mapping[str, Any] | None = None,
                    image_size: int | None = None,
                    action_bounds: tuple[Sequence[float], Sequence[float]] | None = None) -> Path:
    """Write ``episodes`` to ``path`` in the robomimic HDF5 contract (module docstring); returns ``path``.

    Written to ``<path>.<pid>.tmp`` and renamed at the end, so an interrupted conversion leaves no half file.
    ``actions``: ``auto`` (rescale to [-1, 1] by the data's min/max when outside, or by ``action_bounds``, the
    source's declared ``(low, high)``, when given: :func:`_action_units`) or ``keep``. ``image_size``:
    resize every camera frame to that square side (module docstring), or None to keep the source's size.
    A camera part whose first episode is not 8-bit colour (a depth map, a 16-bit camera), or a part of text (a
    ``Text`` space's instruction), is left out with a warning and listed in ``env_args["dropped_parts"]``; one that
    turns so in a later episode raises.
    Raises :class:`ConversionError` when no episode of 2 or more steps remains, or shapes disagree.
    """
    if actions not in ACTION_MODES:
        raise ConversionError(f"actions={actions!r}: expected one of {ACTION_MODES}")
    image_size = check_image_size(image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(path)  # a conversion killed outright left its partial file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: ranks converting at once do not collide
    tasks: dict[str, int] = {}
    total = 0
    skipped: list[str] = []  # the source episodes left out (fewer than 2 steps), successes marked
    names: list[str] = []  # the demos written, demo_<i> for the reader's i-th episode
    low = high = None
    keys: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
    source_sizes: dict[str, list[int]] = {}  # each camera's frame size in the source (the first episode's)
    dropped: list[str] = []  # parts left out: cameras whose first episode is not 8-bit colour
    whole: set[float] | None = set()  # the actions' values while all are a few whole numbers (discrete indices?)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            for i, ep in enumerate(episodes):
                where = f"{source}: episode {ep.meta.get('source_episode', i)}"
                if len(ep) < 2:
                    skipped.append(f"{ep.meta.get('source_episode', i)}{' (a success)' if ep.success else ''}")
                    continue
                _check_episode(ep, where)
                obs = {}
                for k, v in ep.obs.items():
                    if k in dropped:
                        continue
                    try:
                        obs[k] = as_part(v, f"{where} obs {k!r}")
                    except (NotColourError, TextPartError) as err:
                        if keys is not None:  # written in earlier episodes: the file's parts would differ
                            raise
                        dropped.append(k)  # not 8-bit colour (or text) in the first episode: left out of the file
                        if len(dropped) == len(ep.obs):
                            raise ConversionError(f"{err}; no observation part is left to write") from None
                        log.warning("%s; part %r is not written (%s)", err, k, err.rule)
                nxt = {k: as_part(v, f"{where} next obs {k!r}") for k, v in ep.next_obs.items() if k not in dropped}
                if image_size is not None:
                    for k in [k for k, v in obs.items() if v.ndim == 4]:
                        source_sizes.setdefault(k, [int(s) for s in obs[k].shape[1:3]])
                        obs[k] = resize_frames(obs[k], image_size)
                        nxt[k] = resize_frames(nxt[k], image_size)
                shapes = {k: (v.shape[1:], v.dtype) for k, v in obs.items()}
                if keys is None:
                    keys = shapes
                elif shapes != keys:
                    raise ConversionError(f"{where}: observation parts {_describe(shapes)} differ from the first "
                                          f"episode's {_describe(keys)}")
                a = ep.actions.astype(np.float32)
                whole = add_whole_values(whole, ep.actions)
                low = a.min(0) if low is None else np.minimum(low, a.min(0))
                high = a.max(0) if high is None else np.maximum(high, a.max(0))
                names.append(f"demo_{i}")
                demo = data.create_group(names[-1])
                for k in obs:
                    demo.create_dataset(f"obs/{k}", data=obs[k])
                    demo.create_dataset(f"next_obs/{k}", data=nxt[k])
                demo.create_dataset("actions", data=a)
                if ep.rewards is not None:  # a reward-free source stays reward-free (hdf5.py: read as zeros)
                    demo.create_dataset("rewards", data=ep.rewards.astype(np.float32))
                dones = (np.asarray(ep.terminations) > 0).astype(np.uint8)
                demo.create_dataset("dones", data=dones)
                task_id = tasks.setdefault(ep.task, len(tasks))
                meta = {**ep.meta, "terminated": bool(dones[-1]), "truncated": bool(ep.truncated)}
                if ep.success is not None:
                    meta["success"] = bool(ep.success)
                demo.attrs.update(num_samples=len(ep), task=ep.task, task_id=task_id, ep_meta=_json(meta))
                total += len(ep)
            if not names:
                raise ConversionError(f"{source}: no episode with at least 2 steps to convert"
                                      + (f" ({len(skipped)} shorter skipped)" if skipped else ""))
            # robomimic's env type is an integer (EnvType: 2 = gym; its env utilities fail on a string); the
            # source's format goes under its own key (source_format() reads both)
            env_args: dict[str, Any] = {"env_name": env_name or f"{fmt}/{Path(source).stem}",
                                        "type": ROBOMIMIC_GYM_TYPE, "format": fmt,
                                        "source": str(source), "num_tasks": len(tasks),
                                        "env_kwargs": {}, **dict(extra_env_args or {})}
            if image_size is not None:
                env_args.update(image_size=image_size, source_image_sizes=source_sizes)
            if dropped:
                env_args["dropped_parts"] = dropped
            warn_index_actions(source, whole)
            units = _action_units(low, high, action_bounds, source) if actions == "auto" else None
            if units is not None:
                warn_constant_dimensions(units, source)
                _rescale_actions(data, names, units)
                env_args[ACTION_UNITS_KEY] = units.to_dict()
                log.warning("%s: actions (min %s, max %s) rescaled per dimension to [-1, 1] from low %s, high %s (%s); "
                            "low/high are in env_args['action_normalization']", source,
                            np.round(low, 4).tolist(), np.round(high, 4).tolist(), list(units.low), list(units.high),
                            "the declared action space" if units != auto_bounds(low, high) else "the data's range")
            data.attrs["total"] = total
            data.attrs["env_args"] = _json(env_args)
            f.create_dataset("mask/train", data=np.array([n.encode() for n in names]))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if skipped:
        log.warning("%s: %d episode(s) with fewer than 2 steps skipped (source episode %s%s; the contract needs 2 steps "
                    "per demo); demo names keep the source's episode numbers, so they have gaps there", source,
                    len(skipped), ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
    log.info("%s -> %s: %d episodes, %d transitions, %d task(s)", source, path, len(names), total, len(tasks))
    return path


def _describe(shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> str:
    return ", ".join(f"{k} {tuple(s)} {np.dtype(d).name}" for k, (s, d) in shapes.items())


def _rescale_actions(data: h5py.Group, names: Sequence[str], units: ActionNormalization) -> None:
    for name in names:
        ds = data[f"{name}/actions"]
        ds[...] = units.to_agent(ds[()]).clip(-1.0, 1.0)


def split_by_ends(ends: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the episodes of a flat array whose ``ends[t]`` is true on each episode's last row
    (rows after the last end form a final, unfinished episode)."""
    stops = np.flatnonzero(np.asarray(ends, dtype=bool)) + 1
    bounds = [0, *stops.tolist()]
    if bounds[-1] < len(ends):
        bounds.append(len(ends))
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


__all__ = ["ACTION_MODES", "SUCCESS_INFO_KEYS", "ConversionError", "Episode", "as_part", "flatten_obs", "image_layout", "is_image",
           "resize_frames", "split_by_ends", "to_uint8_hwc", "write_robomimic", "NotColourError"]
