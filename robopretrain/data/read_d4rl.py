"""D4RL-style flat HDF5 (or ``.npz``) -> :class:`~robopretrain.data.episodes.Episode` s.

The layout D4RL publishes (``d4rl.qlearning_dataset`` reads the same keys), one row per step, episodes laid end to
end, in an HDF5 file or the same arrays in an ``.npz`` (``np.savez(..., timeouts=...)``; an ``.npz`` with
``timeouts`` is read as D4RL, one without as OGBench's layout unless ``format=d4rl`` says otherwise: OGBench's
``terminals`` marks a trajectory's last row, which holds only its final observation, D4RL's a termination)::

    observations (N, ...)   actions (N, A)   rewards (N,)   terminals (N,)   timeouts (N,) (optional)
    next_observations (N, ...) (optional)    infos/<name> (N, ...) (optional; infos/success or is_success is used)

* An episode ends on a row with ``terminals`` or ``timeouts`` set (or at the end of the file). A file with
  ``next_observations`` also ends one where a row's next observation is not the following row's observation and
  the row is not marked (a reset: a time-out the file does not mark, also one whose ``timeouts`` are all zeros;
  logged with the count), unless that holds for
  more than half the rows (next observations stored another way: then a warning, and no split).
* ``terminals`` is the true-termination flag, carried as ``dones``; ``timeouts`` is a truncation.
* A file with neither ``timeouts`` nor ``next_observations`` (D4RL's v0 layout) ends episodes at terminations
  only; a warning says so, as a time limit that cut episodes is not seen (its steps across resets are read as steps).
* Without ``next_observations``, the next observation of row ``t`` is row ``t + 1`` of the same episode. The last
  row of an episode has none in the file: after a termination it is not needed (``dones = 1``: no bootstrap) and
  the row's own observation stands in; after a time-out (or at the end of the file) the row is dropped, as
  ``d4rl.qlearning_dataset`` drops it (``terminate_on_end=False``).
* ``success`` (``ep_meta``): any ``infos/success`` (else ``infos/is_success``) of the episode when the file has that
  key, else not recorded.

Observations keep the file's key ``observations`` (images become uint8 HWC, see :mod:`.episodes`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from robopretrain.data.episodes import SUCCESS_INFO_KEYS, ConversionError, Episode, split_by_ends

REQUIRED = ("observations", "actions", "rewards", "terminals")
log = logging.getLogger(__name__)


def unmarked_resets(obs: np.ndarray, nxt: np.ndarray, terminals: np.ndarray, where: str,
                    timeouts: bool = False) -> np.ndarray:
    """Rows ``t`` (bool ``(N,)``) whose next observation is not row ``t + 1``'s observation and that end no episode
    already (``terminals``: the rows marked): the resets the file does not mark, with ``timeouts`` (the file has
    that array, which ``terminals`` then includes) among its marks. None of them when that holds for more than half
    the rows (next observations stored otherwise, e.g. rounded), with a warning naming ``where``."""
    n = len(obs)
    ends = np.zeros(n, bool)
    if n < 2:
        return ends
    same = (nxt[:-1] == obs[1:]).reshape(n - 1, -1).all(axis=1)
    ends[:-1] = ~same & ~terminals[:-1]
    marks = "terminals and timeouts" if timeouts else "terminals"
    if ends.sum() > (n - 1) / 2:
        log.warning("%s: %s; next_observations differs from the next row's observations at %d of %d rows unmarked: "
                    "not read as episode ends (only %s end episodes)%s", where,
                    "timeouts set at no such row" if timeouts else "no timeouts", int(ends.sum()), n - 1, marks,
                    "" if timeouts else "; add a timeouts dataset if episodes were cut by a time limit")
        return np.zeros(n, bool)
    if ends.any():
        log.warning("%s: %s; %d row(s) whose next_observations is not the next row's observation end an episode "
                    "there (read as time-outs)", where, "its timeouts miss resets" if timeouts else "no timeouts",
                    int(ends.sum()))
    return ends


def is_d4rl(path: str | os.PathLike) -> bool:
    """True for an HDF5 file with top-level ``observations`` and ``actions`` datasets (no robomimic ``data/``), or an
    ``.npz`` with D4RL's arrays (:data:`REQUIRED`) and ``timeouts``, which OGBench's files never have."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                return all(k in z.files for k in (*REQUIRED, "timeouts"))
        except (OSError, ValueError):
            return False
    if not p.is_file() or not h5py.is_hdf5(p):
        return False
    try:
        with h5py.File(p, "r") as f:
            return all(isinstance(f.get(k), h5py.Dataset) for k in ("observations", "actions")) and "data" not in f
    except OSError:  # truncated or corrupt
        return False


@contextlib.contextmanager
def _arrays(p: Path) -> Iterator[Callable[[str], np.ndarray | None]]:
    """``get(key)``: the file's array ``key`` read whole, or None when it has none (HDF5 datasets, ``.npz`` arrays)."""
    if p.suffix.lower() == ".npz":
        try:
            z = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{p}: not a readable .npz ({exc})") from None

        def get(k: str) -> np.ndarray | None:
            if k not in z.files:
                return None
            try:
                return z[k]
            except ValueError as exc:  # a pickled (object) array: not read, as np.load(allow_pickle=False) says
                raise ConversionError(f"{p}: array {k!r} cannot be read ({exc})") from None

        with z:
            yield get
        return
    if not h5py.is_hdf5(p):
        raise ConversionError(f"{p}: not an HDF5 file (a D4RL-style dataset is one HDF5 file, or an .npz)")
    with h5py.File(p, "r") as f:
        yield lambda k: f[k][()] if isinstance(f.get(k), h5py.Dataset) else None


def read_d4rl(path: str | os.PathLike) -> Iterator[Episode]:
    """The episodes of a D4RL-style file (module docstring). Raises :class:`ConversionError` naming the key."""
    p = Path(path)
    with _arrays(p) as get:
        arr = {k: get(k) for k in (*REQUIRED, "timeouts", "next_observations")}
        missing = [k for k in REQUIRED if arr[k] is None]
        if missing:
            raise ConversionError(f"{p}: missing dataset(s) {missing} (D4RL layout: {', '.join(REQUIRED)}, "
                                  "optional timeouts, next_observations)")
        success_key = next((f"infos/{k}" for k in SUCCESS_INFO_KEYS if get(f"infos/{k}") is not None), None)
        arr["success"] = get(success_key) if success_key else None
    scalars = [k for k, v in arr.items() if v is not None and np.ndim(v) == 0]
    if scalars:
        raise ConversionError(f"{p}: {scalars} hold one value, not one row per step")
    n = len(arr["actions"])
    for k, v in arr.items():
        if v is not None and len(v) != n:
            raise ConversionError(f"{p}: {success_key if k == 'success' else k} has {len(v)} rows, expected {n} "
                                  "like actions")
    obs, nxt, actions = arr["observations"], arr["next_observations"], arr["actions"]
    rewards = arr["rewards"].reshape(n).astype(np.float32)
    terminals = arr["terminals"].reshape(n).astype(bool)
    if arr["timeouts"] is not None:
        timeouts = arr["timeouts"].reshape(n).astype(bool)
        if nxt is not None:  # resets the timeouts miss (all zeros, say) glued episodes together
            timeouts |= unmarked_resets(obs, nxt, terminals | timeouts, str(p), timeouts=True)
    elif nxt is not None:
        timeouts = unmarked_resets(obs, nxt, terminals, str(p))
    else:
        timeouts = np.zeros(n, bool)
        log.warning("%s: no timeouts and no next_observations: an episode ends only at a terminals row (%d of %d "
                    "rows), so episodes cut by a time limit run on into the next (their resets read as steps); add "
                    "a timeouts array if the data has a time limit", p, int(terminals.sum()), n)
    success = arr["success"].reshape(n).astype(bool) if success_key else None
    for i, (a, b) in enumerate(split_by_ends(terminals | timeouts)):
        terminated = bool(terminals[b - 1])
        if nxt is not None:
            o, no, stop = obs[a:b], nxt[a:b], b
        else:
            stop = b if terminated else b - 1  # a time-out's last row has no next observation in the file
            o = obs[a:stop]
            no = np.concatenate([obs[a + 1:stop], obs[b - 1:b]]) if terminated else obs[a + 1:b]
        yield Episode(obs={"observations": o}, next_obs={"observations": no}, actions=actions[a:stop],
                      rewards=rewards[a:stop], terminations=terminals[a:stop].astype(np.uint8),
                      truncated=not terminated, task=p.stem,
                      success=None if success is None else bool(success[a:b].any()),
                      meta={"source_episode": i, "source_rows": [int(a), int(b)]})


__all__ = ["is_d4rl", "read_d4rl"]
