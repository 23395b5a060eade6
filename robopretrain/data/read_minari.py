"""Minari datasets -> :class:`~robopretrain.data.episodes.Episode` s, read with the ``minari`` package itself.

A Minari dataset (Farama; the maintained successor of D4RL) is a folder ``<root>/<dataset_id>/data/`` holding
``metadata.json`` and the episodes (``main_data.hdf5``, or Arrow files), one per episode with
``observations`` (``N + 1`` rows: the reset observation and one after every step; a dict observation space is a
group of such arrays), ``actions``, ``rewards``, ``terminations``, ``truncations`` (``N`` rows) and ``infos``.
:class:`minari.MinariDataset` reads either storage; it is installed with ``pip install 'robopretrain[datasets]'``.

* the action space must be a Box: another (``Discrete``, ``MultiBinary``, ...) is refused, since the agents act in a
  continuous Box and would learn the indices as one continuous action.
* actions are rescaled from the declared Box action space (``actions=auto``) whenever it is finite, not [-1, 1] and
  holds the data, even where the data themselves stay inside [-1, 1] (a Box(-2, 2) action of 0.5 is stored as 0.25):
  the agent then reaches the whole declared range; otherwise by the data's range, as the other readers do.
* ``obs[t] = observations[t]``, ``next_obs[t] = observations[t + 1]`` (exact, no row dropped).
* ``dones = terminations`` per step; ``truncations`` on the last step marks a truncated episode.
* ``success`` (``ep_meta``): any ``infos["success"]`` (else ``infos["is_success"]``, gymnasium-robotics' key) of the
  episode when the dataset logs it, else not recorded.
* a Box observation keeps the name ``observations``; a Dict space gives one part per key (nested keys joined
  with ``.``, e.g. ``observation``, ``desired_goal``).

* images as minari stored them: a dataset whose ``metadata.json`` says ``jpeg_encoding: true`` (minari 0.5's
  default when recording) holds JPEG-compressed, lossy frames of its image parts (by minari's rule: uint8 Boxes of
  0..255, at least 32 x 32; smaller ones are exact); the reader warns once when such a dataset has such parts,
  since the agent then trains on compressed frames and acts on the env's raw ones.

``path`` may be the ``data/`` folder, the dataset folder above it, or either's ``metadata.json``.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from robopretrain.data.episodes import SUCCESS_INFO_KEYS, ConversionError, Episode, flatten_obs

METADATA = "metadata.json"
log = logging.getLogger(__name__)


def data_dir(path: str | os.PathLike) -> Path | None:
    """The Minari ``data/`` folder (the one holding ``metadata.json`` with ``minari_version``) at ``path``."""
    p = Path(path)
    if p.is_file() and p.name == METADATA:
        p = p.parent
    for cand in (p, p / "data"):
        meta = cand / METADATA
        if meta.is_file():
            try:
                if "minari_version" in json.loads(meta.read_text()) or "dataset_id" in json.loads(meta.read_text()):
                    return cand
            except (OSError, ValueError):
                return None
    return None


def is_minari(path: str | os.PathLike) -> bool:
    """True for a Minari dataset folder (or its ``data/`` folder, or its ``metadata.json``)."""
    return data_dir(path) is not None


def _open(path: str | os.PathLike) -> Any:
    d = data_dir(path)
    if d is None:
        raise ConversionError(f"{path}: not a Minari dataset (expected a folder holding data/{METADATA})")
    try:
        import minari
    except ImportError:
        raise ConversionError(f"{path}: reading Minari datasets needs the minari package: "
                              "pip install 'robopretrain[datasets]'") from None
    try:
        return minari.MinariDataset(d)
    except KeyError as exc:  # minari reads entries of metadata.json without checking for them
        raise ConversionError(f"{d / METADATA}: has no {exc} entry, which minari needs to read the dataset "
                              "(a dataset written by minari has it)") from None
    except (ValueError, OSError) as exc:
        raise ConversionError(f"{d}: minari cannot read this dataset ({exc})") from None


def _metadata(path: str | os.PathLike) -> dict[str, Any]:
    d = data_dir(path)
    try:
        return json.loads((d / METADATA).read_text()) if d is not None else {}
    except (OSError, ValueError):
        return {}


def dataset_id(path: str | os.PathLike) -> str:
    """The dataset's id from its metadata (e.g. ``D4RL/door/human-v2``)."""
    return str(_metadata(path).get("dataset_id", Path(path).name))


def _rows(x: Any, lo: int, hi: int) -> Any:
    if isinstance(x, dict):
        return {k: _rows(v, lo, hi) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_rows(v, lo, hi) for v in x)
    return np.asarray(x)[lo:hi]


def declared_action_bounds(path: str | os.PathLike) -> tuple[list[float], list[float]] | None:
    """The dataset's declared Box action space as ``(low, high)`` (the rescaling of ``actions=auto`` uses it: see
    :func:`robopretrain.data.episodes.write_robomimic`); None for another space."""
    space = getattr(_open(path), "action_space", None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None:
        return None
    return np.asarray(low, np.float64).reshape(-1).tolist(), np.asarray(high, np.float64).reshape(-1).tolist()


def jpeg_parts(space: Any, prefix: str = "") -> list[str] | None:
    """The parts (dotted names, as :func:`robopretrain.data.episodes.flatten_obs` gives them) of observations of
    ``space`` that minari JPEG-encodes when ``jpeg_encoding`` is on, by its own rule
    (``minari.dataset.minari_storage.is_image_space``: a uint8 Box of bounds 0 and 255, at least 32 x 32; a smaller
    camera is stored exactly); None where minari has no such rule to ask (then any picture may be JPEG)."""
    try:
        from minari.dataset.minari_storage import is_image_space
    except ImportError:
        return None
    if isinstance(space, gym.spaces.Dict):
        return [p for k, sub in space.spaces.items() for p in jpeg_parts(sub, f"{prefix}{k}.") or []]
    if isinstance(space, gym.spaces.Tuple):
        return [p for k, sub in enumerate(space.spaces) for p in jpeg_parts(sub, f"{prefix}{k}.") or []]
    encoded = isinstance(space, gym.spaces.Space) and bool(is_image_space(space))
    return [prefix[:-1] or "observations"] if encoded else []


def _episodes(ds: Any, path: str | os.PathLike) -> Iterator[Any]:
    """``ds.iterate_episodes()``, with what minari raises while reading one (an Arrow dataset of per-step scalar
    infos fails inside minari with "invalid literal for int()") as a :class:`ConversionError` naming the dataset."""
    episodes = iter(ds.iterate_episodes())
    done = 0
    while True:
        try:
            ep = next(episodes)
        except StopIteration:
            return
        except Exception as exc:  # whatever minari's storage raises
            raise ConversionError(f"{path}: minari fails reading its episodes ({done} read; "
                                  f"{type(exc).__name__}: {exc})") from exc
        done += 1
        yield ep


def read_minari(path: str | os.PathLike) -> Iterator[Episode]:
    """The episodes of a Minari dataset (module docstring). Raises :class:`ConversionError`."""
    ds = _open(path)
    task = dataset_id(path)
    space = getattr(ds, "action_space", None)
    if space is not None and not isinstance(space, gym.spaces.Box):
        raise ConversionError(f"{path}: action space {space}: only Box (continuous) action spaces are supported (the "
                              "agents act in a continuous Box): map each action to a continuous one in the data and "
                              "the env (an ActionWrapper)")
    jpeg = bool(_metadata(path).get("jpeg_encoding"))
    encoded = jpeg_parts(getattr(ds, "observation_space", None)) if jpeg else []
    for ep in _episodes(ds, path):
        n = len(ep.rewards)
        where = f"{path}: episode {ep.id}"
        actions = np.asarray(ep.actions)
        if isinstance(ep.actions, (dict, tuple)) or actions.dtype.kind not in "fiu":
            raise ConversionError(f"{where}: only Box (continuous) action spaces are supported")
        obs = flatten_obs(_rows(ep.observations, 0, n), where)
        nxt = flatten_obs(_rows(ep.observations, 1, n + 1), where)
        images = [k for k, v in obs.items()
                  if v.ndim >= 3 and v.dtype == np.uint8 and (encoded is None or k in encoded)]
        if jpeg and images:
            log.warning("%s: metadata.json says jpeg_encoding: true, so its frames (%s) were stored as lossy JPEG: "
                        "the agent trains on compressed frames and acts on the env's raw ones (record with "
                        "minari's DataCollector(..., jpeg_encoding=False) for exact frames)", path, ", ".join(images))
            jpeg = False  # once per dataset
        for k, v in obs.items():
            if len(nxt[k]) != n:
                raise ConversionError(f"{where}: observations {k!r} have fewer than {n + 1} rows (N + 1 expected)")
        term = np.asarray(ep.terminations).reshape(n).astype(bool)
        trunc = np.asarray(ep.truncations).reshape(n).astype(bool)
        infos = ep.infos if isinstance(ep.infos, dict) else {}
        success = next((infos[k] for k in SUCCESS_INFO_KEYS if k in infos), None)
        yield Episode(obs=obs, next_obs=nxt, actions=actions.reshape(n, -1), rewards=np.asarray(ep.rewards,
                      np.float32).reshape(n), terminations=term.astype(np.uint8),
                      truncated=bool(trunc[-1]) if n else False, task=task,
                      success=None if success is None else bool(np.asarray(success).any()),
                      meta={"source_episode": int(ep.id)})


__all__ = ["data_dir", "dataset_id", "declared_action_bounds", "is_minari", "jpeg_parts", "read_minari"]
