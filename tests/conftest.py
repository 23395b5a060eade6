"""Test-session settings: one torch thread (tiny networks run fastest that way, and a loaded shared CPU otherwise
makes a few CQL tests 10x slower), the ``slow`` marker, and the tests folder on ``sys.path`` for the helpers
(``_compare``, ``_fake_envs``, ``_robosuite_like``) that spawned workers import by module name."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses (CLI runs, spawned workers) inherit it
torch.set_num_threads(1)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: an end-to-end run of several stages (part of the default run; "
                                       "deselect with -m 'not slow')")
