"""Helpers shared by tests: exact comparison of nested checkpoint contents, returns-to-go computed by hand,
tiny video clips, and a run "killed" between two checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def assert_same(a: Any, b: Any, where: str = "weights") -> None:
    """``a`` and ``b`` (nested dicts / lists of tensors and numbers) are exactly equal; ``where`` names the path."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for k in b:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(b):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def returns_by_hand(rewards: np.ndarray, dones: np.ndarray, r_neg: float, gamma: float) -> np.ndarray:
    """Monte-Carlo returns-to-go of one episode, with the all-failure rule r_neg / (1 - gamma)."""
    if np.all(rewards == r_neg):
        return np.full(len(rewards), r_neg / (1 - gamma))
    out, g = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        g = rewards[t] + gamma * g * (1 - dones[t])
        out[t] = g
    return out


def write_sliding_square_videos(root: Path, n: int = 4, size: int = 32) -> Path:
    """``n`` tiny mp4 clips (16 frames) of a square sliding right, with their manifest.csv; returns ``root``."""
    from sim_envs.video_writer import write_mp4

    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,num_frames,text"]
    for i in range(n):
        frames = np.full((16, size, size, 3), 40, dtype=np.uint8)
        for t in range(16):
            x = min(size - 8, i + t)
            frames[t, 12:20, x:x + 8] = (200, 60 + 30 * i, 60)
        write_mp4(root / f"clip_{i}.mp4", frames, fps=20)
        rows.append(f"clip_{i}.mp4,16,a square slides")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


class Killed(Exception):
    """Stands in for SIGKILL inside one process (see :func:`die_after_first_checkpoint`)."""


def die_after_first_checkpoint(monkeypatch: Any, cls: type, checkpoints: Path, updates: int) -> Any:
    """Make ``cls.update`` raise :class:`Killed` ``updates`` updates after the first checkpoint under
    ``checkpoints`` exists: a run killed between two checkpoints, whose rerun must resume from the first.
    Returns the real ``cls.update`` (to put back before the rerun)."""
    from robopretrain.checkpoint import load_latest

    real_update = cls.update
    calls = {"n": 0}

    def update_then_die(self: Any, batch: Any, with_metrics: bool = True) -> Any:
        if load_latest(checkpoints) is not None:
            calls["n"] += 1
            if calls["n"] > updates:
                raise Killed
        return real_update(self, batch, with_metrics)

    monkeypatch.setattr(cls, "update", update_then_die)
    return real_update
