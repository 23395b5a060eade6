"""Helpers shared by tests: exact comparison of nested checkpoint contents, returns-to-go computed by hand."""
from __future__ import annotations

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
