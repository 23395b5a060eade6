"""Ctrl-C: worker processes ignore SIGINT (the parent alone handles it and stops them, instead of one traceback per
worker), the same initializers leave the parent's handler alone when they run in-process (``workers=0``, gymnasium's
spaces env), and the entry points turn the interrupt into one line and exit code 130."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from _fake_envs import SigintProbeEnv, sigint_ignored_after  # light: spawned workers import it
from robopretrain.cli import EXIT_INTERRUPTED, friendly_errors
from robopretrain.collector import make_vector_env

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))


def in_spawned_worker(initializer, *args) -> bool:
    """Whether a spawned pool worker ignores Ctrl-C after ``initializer(*args)``."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(sigint_ignored_after, (initializer, *args))


@pytest.fixture
def parent_handler():
    """Python's own Ctrl-C handler installed for the test (a run started in the background inherits SIGINT ignored),
    the process's previous handler restored after it whatever the test did."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield signal.default_int_handler
    signal.signal(signal.SIGINT, before)


def test_an_interrupted_entry_point_prints_one_line_and_exits_130(capsys, monkeypatch):
    @friendly_errors
    def task() -> None:
        raise KeyboardInterrupt

    monkeypatch.delenv("ROBOPRETRAIN_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exc:
        task()
    assert exc.value.code == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted (Ctrl-C)") and err.count("\n") == 1
    monkeypatch.setenv("ROBOPRETRAIN_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt):
        task()


def test_vector_env_workers_ignore_ctrl_c_and_the_parent_keeps_it(parent_handler):
    venv = make_vector_env(SigintProbeEnv, 2, asynchronous=True)  # builds one env here for its spaces
    try:
        obs, _ = venv.reset(seed=[0, 1])
        np.testing.assert_array_equal(obs["x"][:, 0], [1.0, 1.0])
        for proc in venv.processes:  # a real Ctrl-C reaches every worker; they go on
            os.kill(proc.pid, signal.SIGINT)
        obs, *_ = venv.step(np.zeros((2, 4), np.float32))
        np.testing.assert_array_equal(obs["x"][:, 0], [1.0, 1.0])
    finally:
        venv.close()
    assert signal.getsignal(signal.SIGINT) == parent_handler
    sync = make_vector_env(SigintProbeEnv, 2, asynchronous=False)  # in this process: Ctrl-C stays ours
    np.testing.assert_array_equal(sync.reset(seed=[0, 1])[0]["x"][:, 0], [0.0, 0.0])
    sync.close()


def test_collection_pool_workers_ignore_ctrl_c(parent_handler):
    from robopretrain.envs.metaworld_collect import _init_env_cache
    from sim_envs.collect import _worker_init

    assert in_spawned_worker(_worker_init, {})
    assert in_spawned_worker(_init_env_cache, {})
    _init_env_cache({})  # Meta-World's serial collection runs the initializer in this process
    assert signal.getsignal(signal.SIGINT) == parent_handler


def test_benchmark_pools_start_workers_that_ignore_ctrl_c(monkeypatch):
    import claims_robustness

    seen = {}

    class FakePool:  # records how _pooled starts its pool, then runs the initializer as a worker would
        def __init__(self, jobs, initializer=None, initargs=(), maxtasksperchild=None):
            seen.update(jobs=jobs, initializer=initializer, initargs=initargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def imap_unordered(self, fn, jobs):
            return map(fn, jobs)

    class Context:
        Pool = FakePool

    monkeypatch.setattr(claims_robustness, "mp", SimpleNamespace(get_context=lambda method: Context()))
    assert list(claims_robustness._pooled(max, [(1, 2)], jobs=2)) == [2]
    assert in_spawned_worker(seen["initializer"], *seen["initargs"])
