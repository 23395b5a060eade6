"""Test-session settings: one torch thread per process (tiny networks run fastest that way, and a loaded shared CPU
otherwise makes a few CQL tests 10x slower; pyproject's ``-n auto`` runs one pytest-xdist worker per core, each
loading this file), the ``slow`` marker, and the tests folder on ``sys.path`` for the helpers
(``_compare``, ``_fake_envs``, ``_robosuite_like``) that spawned workers import by module name."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# before torch (and numpy's BLAS) load, and inherited by every subprocess (CLI runs, spawned env and data workers,
# which read them when their torch starts): one thread, whatever the shell exports
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import torch  # noqa: E402

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
torch.set_num_threads(1)  # this process (torch may have been imported before this file by a plugin)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: an end-to-end run of several stages (part of the default run; "
                                       "deselect with -m 'not slow')")
