"""OGBench ``.npz`` -> :class:`~robopretrain.data.episodes.Episode` s.

OGBench (Park et al. 2024, ``ogbench.utils.load_dataset``) ships each dataset as one ``.npz`` of flat arrays:

* **compact** (the files as downloaded): ``observations (N, ...)``, ``actions (N, A)``, ``terminals (N,)``, where
  ``terminals = 1`` marks the *last row of each trajectory*. That row is only the final observation: OGBench's
  loader keeps rows with ``terminals = 0`` as transitions and takes each one's next observation from the row after
  it. The trajectory end is a time limit (OGBench's data are fixed-length), so it is a truncation here.
  A compact file whose last row is not marked (cut mid-trajectory) has no next observation for that row: it ends the
  last trajectory as its final observation (with a warning), never as a transition onto itself.
* **regular** (``next_observations`` present, e.g. saved after ``load_dataset(compact_dataset=False)``): every row
  is a transition, ``terminals = 1`` on the last transition of each trajectory (again a truncation).
* optional ``rewards`` and ``masks`` (single-task datasets relabelled with a task's reward; ``masks = 0`` where the
  task is done, OGBench's convention): ``dones = 1 - masks`` per step as given (OGBench's trajectories go on after
  the task is done; the returns-to-go restart after each such step), ``success`` = the trajectory has such a step,
  and the reward is the contract's sparse success ``1 - masks`` ({0, 1}; OGBench's own relabelled ``rewards`` are
  ``success - 1``, {-1, 0}, which under Cal-QL's x10 - 5 would make every step of a failure -15, not -5).
  Without ``masks`` no step terminates, ``success`` is not recorded and ``rewards`` are kept as given;
  without either the demos have no rewards (written without a ``rewards`` dataset: behaviour cloning trains on
  them; other learners refuse them until a reward is written, e.g. by ``robopretrain.reward_model``).

Other arrays of the file (``qpos``, ``qvel``, ``button_states``, ...) are not observations and are not carried.
Observations keep the key ``observations`` (OGBench's visual datasets: uint8 (N, 64, 64, 3), kept as images).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from robopretrain.data.episodes import ConversionError, Episode, split_by_ends

log = logging.getLogger(__name__)

REQUIRED = ("observations", "actions", "terminals")


def is_ogbench(path: str | os.PathLike) -> bool:
    """True for an ``.npz`` holding ``observations``, ``actions`` and ``terminals``."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".npz":
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            return all(k in z.files for k in REQUIRED)
    except (OSError, ValueError):
        return False


def read_ogbench(path: str | os.PathLike) -> Iterator[Episode]:
    """The trajectories of an OGBench ``.npz`` (module docstring). Raises :class:`ConversionError`."""
    p = Path(path)
    try:  # the arrays read, no others (qpos, qvel, ... can be as large as the frames)
        with np.load(p, allow_pickle=False) as f:
            z = {k: f[k] for k in (*REQUIRED, "next_observations", "rewards", "masks") if k in f.files}
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{p}: not a readable .npz ({exc})") from None
    missing = [k for k in REQUIRED if k not in z]
    if missing:
        raise ConversionError(f"{p}: missing array(s) {missing} (OGBench layout: {', '.join(REQUIRED)}, optional "
                              "next_observations, rewards, masks)")
    n = len(z["actions"])
    for k in ("observations", "terminals", "next_observations", "rewards", "masks"):
        if k in z and len(z[k]) != n:
            raise ConversionError(f"{p}: {k} has {len(z[k])} rows, expected {n} like actions")
    obs, actions = z["observations"], z["actions"]
    ends = z["terminals"].reshape(n).astype(bool)
    done = (1.0 - z["masks"].reshape(n).astype(np.float32)) > 0.5 if "masks" in z else np.zeros(n, bool)
    # OGBench's relabelled rewards are success - 1 ({-1, 0}); the contract's sparse reward is success itself ({0, 1})
    rewards = (done.astype(np.float32) if "masks" in z
               else z["rewards"].reshape(n).astype(np.float32) if "rewards" in z else None)
    if "rewards" in z and "masks" not in z:  # OGBench relabels with both; a D4RL-style file has rewards alone
        log.warning("%s: rewards without masks: read as OGBench's layout (terminals marks a trajectory's last row, "
                    "which holds only its final observation); if its terminals mark terminations, as D4RL's do, "
                    "convert it with format d4rl (data.format=d4rl)", p)
    compact = "next_observations" not in z
    if compact:
        keep = ~ends  # transitions; a trajectory's last row is only its final observation
        if n and not ends[-1]:  # a file cut mid-trajectory: its last row has no next row, so it is no transition
            keep[-1] = False
            log.warning("%s: the last row is not marked by terminals (a file cut mid-trajectory?); it is read as "
                        "the final observation of an unfinished trajectory", p)
        nxt = None  # each kept row's next observation is the row after it (no shifted copy of the frames)
    else:
        keep = np.ones(n, bool)
        nxt = z["next_observations"]
    rows = np.flatnonzero(keep)
    # a trajectory ends at its last transition: in compact data the row before a terminals row
    traj_end = np.r_[ends[1:], True][rows] if compact else ends[rows]
    i = 0
    for a, b in split_by_ends(traj_end):
        r = rows[a:b]
        terminated = bool(done[r[-1]])
        following = obs[r + 1] if nxt is None else nxt[r]
        yield Episode(obs={"observations": obs[r]}, next_obs={"observations": following}, actions=actions[r],
                      rewards=None if rewards is None else rewards[r], terminations=done[r].astype(np.uint8),
                      truncated=not terminated,
                      task=p.stem, success=bool(done[r].any()) if "masks" in z else None,
                      meta={"source_episode": i, "source_rows": [int(r[0]), int(r[-1]) + 1]})
        i += 1


__all__ = ["is_ogbench", "read_ogbench"]
