"""Ctrl-C: worker processes ignore SIGINT (the parent alone handles it and stops them, instead of one traceback per
worker), the same initializers leave the parent's handler alone when they run in-process (``workers=0``, gymnasium's
spaces env), and the entry points turn the interrupt into one line and exit code 130."""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

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
    from robopretrain.cli import TRACEBACK_OFF
    from sim_envs.rendering import TRACEBACK_OFF as RENDERING_OFF

    assert RENDERING_OFF == TRACEBACK_OFF  # sim_envs keeps its own copy (it imports nothing of robopretrain)
    for off in ("0", "false", "OFF", ""):  # said off: as unset
        monkeypatch.setenv("ROBOPRETRAIN_TRACEBACK", off)
        with pytest.raises(SystemExit):
            task()
    monkeypatch.setenv("ROBOPRETRAIN_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt):
        task()


def test_the_error_classes_an_entry_point_reports_are_looked_up_without_importing_torch():
    """``except known_errors()`` is evaluated while any error propagates, Ctrl-C included: its imports loaded torch
    into the collectors (seconds before the interrupt's line; a second Ctrl-C then gave a traceback: a new user's
    finding). It imports nothing, and each class is there once its module is."""
    repo = Path(__file__).resolve().parents[1]
    child = ("import sys\nfrom robopretrain.cli import KNOWN_ERRORS, known_errors\nknown_errors()\n"
             "print('torch' in sys.modules, sum(m in sys.modules for m, _ in KNOWN_ERRORS))\n")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.stdout.split() == ["False", "0"], proc.stderr[-2000:]
    from robopretrain.cli import KNOWN_ERRORS, known_errors

    classes = [getattr(importlib.import_module(module), name) for module, name in KNOWN_ERRORS]
    assert all(isinstance(c, type) and issubclass(c, Exception) for c in classes)
    assert set(classes) <= set(known_errors())  # (every module imported now)


def test_the_interrupt_line_says_whether_a_rerun_resumes(capsys, monkeypatch):
    """Entry points without checkpoints (the reward model, evaluate, the collectors) say a rerun starts over; the
    training stages say it resumes, also when launched through ``python -m robopretrain.cli <module>``."""
    import robopretrain.cli as cli
    from robopretrain.evaluate import main as evaluate_main
    from robopretrain.reward_model import main as reward_model_main

    monkeypatch.delenv("ROBOPRETRAIN_TRACEBACK", raising=False)

    def stop(cfg=None) -> None:
        raise KeyboardInterrupt

    def line(task) -> str:
        with pytest.raises(SystemExit):
            task()
        return capsys.readouterr().err

    assert "resumes from its last checkpoint" in line(friendly_errors(stop))
    assert line(friendly_errors(rerun=cli.RERUN_STARTS_OVER)(stop)).endswith("a rerun starts it over\n")
    for entry in (evaluate_main, reward_model_main):  # the decorator each module applies, on the stand-in task
        wrapper = entry.__wrapped__  # hydra.main's wrapped function: friendly_errors' wrapper
        assert wrapper.__closure__ is not None
        rerun = next(c.cell_contents for c in wrapper.__closure__ if isinstance(c.cell_contents, str))
        assert rerun == cli.RERUN_STARTS_OVER
    import hydra

    monkeypatch.setattr(cli, "run_hydra", lambda main, name, argv: main())  # no config composed: the task alone
    monkeypatch.setattr(hydra, "main", lambda **kw: (lambda f: f))
    for module, says in (("robopretrain.reward_model", "starts it over"), ("robopretrain.train", "resumes")):
        monkeypatch.setattr(importlib.import_module(module).main, "__wrapped__", stop)
        with pytest.raises(SystemExit):
            cli.launch(module, [])
        assert says in capsys.readouterr().err


def blocks_sigint(pid: int) -> bool:
    """Whether process ``pid`` holds SIGINT blocked (its main thread's mask, /proc/<pid>/status ``SigBlk``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    raise AssertionError(f"no SigBlk in /proc/{pid}/status")


def test_workers_started_under_the_block_never_take_ctrl_c_and_the_parent_still_does(parent_handler):
    """A spawned worker imports for seconds before its own code ignores Ctrl-C; started under the block it holds
    SIGINT blocked from its first instruction (the mask is inherited through fork and exec), as does a worker the
    pool starts later in place of one that exited. The parent's mask is
    restored after the block, and a Ctrl-C sent to it meanwhile still interrupts it."""
    from _fake_envs import sigint_blocked
    from robopretrain.workers import sigint_blocked_for_workers

    # in a fresh interpreter: its first spawn starts multiprocessing's resource tracker, whose start unblocks SIGINT
    script = ("import multiprocessing as mp\n"
              "from _fake_envs import sigint_blocked\n"
              "from robopretrain.workers import sigint_blocked_for_workers\n"
              "if __name__ == '__main__':\n"
              "    ctx = mp.get_context('spawn')\n"
              "    with sigint_blocked_for_workers():\n"
              "        pool = ctx.Pool(1, maxtasksperchild=1)\n"
              "    with pool:\n"
              "        inside = pool.apply(sigint_blocked)\n"
              "        replaced = pool.apply(sigint_blocked)\n"
              "    with ctx.Pool(1) as pool:\n"
              "        outside = pool.apply(sigint_blocked)\n"
              "    print(inside, replaced, outside, sigint_blocked())\n")
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    # a worker the pool starts later to replace one (here after each task) is blocked too: the pool's thread that
    # starts it was made under the block and a thread inherits its maker's mask; the parent's mask is restored
    assert out.stdout.split() == ["True", "True", "False", "False"], out.stderr[-2000:]
    with pytest.raises(KeyboardInterrupt):
        with sigint_blocked_for_workers():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # delivered here through another thread, or else when the block ends
                sum(range(1000))
    assert not sigint_blocked()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_vector_env_workers_ignore_ctrl_c_and_the_parent_keeps_it(parent_handler):
    venv = make_vector_env(SigintProbeEnv, 2, asynchronous=True)  # builds one env here for its spaces
    try:
        assert all(blocks_sigint(proc.pid) for proc in venv.processes)  # from their start, while importing
        assert not blocks_sigint(os.getpid())
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


def test_only_the_first_vector_env_worker_says_the_envs_warnings(capfd):
    """Every worker builds the same env, so its once-per-process warnings were printed once per worker (3 times with
    3 workers); errors still come from every worker."""
    from _fake_envs import WarningEnv

    venv = make_vector_env(WarningEnv, 3, asynchronous=True)
    try:
        venv.reset(seed=[0, 1, 2])
    finally:
        venv.close()
    err = capfd.readouterr().err
    assert err.count("built-warning") == 1 and err.count("built-error") == 3, err


def test_collection_pool_workers_ignore_ctrl_c(parent_handler):
    from robopretrain.envs.metaworld_collect import _init_env_cache
    from sim_envs.collect import _worker_init

    assert in_spawned_worker(_worker_init, {})
    assert in_spawned_worker(_init_env_cache, {})
    _init_env_cache({})  # Meta-World's serial collection runs the initializer in this process
    assert signal.getsignal(signal.SIGINT) == parent_handler


def test_benchmark_workers_ignore_ctrl_c_may_start_pools_and_report_failures(parent_handler):
    """claims_robustness._pooled's workers: fresh non-daemon processes (a run's data collection starts a pool of its
    own, which a daemonic pool worker may not), Ctrl-C ignored there and not here, a worker's exception re-raised
    here with its traceback."""
    from multiprocessing.pool import RemoteTraceback

    import claims_robustness
    from _fake_envs import pool_inside, raise_value_error

    got = sorted(claims_robustness._pooled(pool_inside, [(1,), (2,), (3,)], jobs=2))
    assert got == [(1, 1, True), (2, 2, True), (3, 3, True)]
    assert signal.getsignal(signal.SIGINT) == parent_handler
    assert list(claims_robustness._pooled(pool_inside, [(4,)], jobs=1)) == [(4, 4, False)]  # jobs=1: in this process
    with pytest.raises(ValueError, match="stage 3 failed") as exc:
        list(claims_robustness._pooled(raise_value_error, [("stage 3 failed",)], jobs=2))
    assert isinstance(exc.value.__cause__, RemoteTraceback) and "raise_value_error" in str(exc.value.__cause__)


def test_a_benchmark_failure_starts_no_further_run_stops_the_running_one_and_keeps_its_message(tmp_path):
    """After one run fails, the queued runs never start (a freed thread took the next one before the parent could
    cancel it, and the parent then waited for it to finish) and the running one is stopped; an exception that does not
    unpickle (one whose constructor takes more than its message) arrives as its text, not as a TypeError from the
    pipe."""
    import claims_robustness
    from _fake_envs import fail_or_sleep, raise_non_finite

    tasks = [("fail", str(tmp_path), "a"), *[("sleep", str(tmp_path), n) for n in "bcd"]]
    with pytest.raises(ValueError, match="a failed"):
        list(claims_robustness._pooled(fail_or_sleep, tasks, jobs=2))
    assert sorted(p.name for p in tmp_path.glob("*.started")) == ["a.started", "b.started"]
    assert not list(tmp_path.glob("*.finished"))  # b was stopped, not waited for
    # the failed run's process is slow to exit: a thread freed meanwhile (b done after 1 s) must not start d
    slow = tmp_path / "slow"
    slow.mkdir()
    tasks = [("fail_slow_exit", str(slow), "a", 3), ("quick", str(slow), "b"), *[("sleep", str(slow), n) for n in "cd"]]
    with pytest.raises(ValueError, match="a failed"):
        list(claims_robustness._pooled(fail_or_sleep, tasks, jobs=3))
    assert sorted(p.name for p in slow.glob("*.started")) == ["a.started", "b.started", "c.started"]
    with pytest.raises(RuntimeError, match="_TwoArgumentError: loss 'critic' is nan at step 17"):
        list(claims_robustness._pooled(raise_non_finite, [()], jobs=2))
    # the thread whose task failed has already stopped the call when it could take the next task: none starts
    from _fake_envs import pool_inside, raise_value_error

    workers = claims_robustness._Workers()
    with pytest.raises(ValueError, match="x"):
        claims_robustness._in_fresh_process(raise_value_error, ("x",), workers)
    assert workers.stopping
    with pytest.raises(claims_robustness._NotStarted):
        claims_robustness._in_fresh_process(pool_inside, (1,), workers)


def test_stopping_a_benchmark_run_stops_the_pool_it_started(tmp_path):
    """A stopped run's data-collection pool went on (orphaned, holding a core and the terminal) until its task ended."""
    import multiprocessing as mp
    import os
    import time

    import claims_robustness
    from _fake_envs import sleepy_pool

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    pid_file = tmp_path / "pool_worker.pid"
    proc = ctx.Process(target=claims_robustness._child, args=(sleepy_pool, (str(pid_file),), send, os.getpid()))
    workers = claims_robustness._Workers()
    assert workers.start(proc)
    for _ in range(600):  # the run is up when its pool worker has written its pid (bounded: 60 s)
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.1)
    pool_pid = int(pid_file.read_text())
    workers.stop()
    proc.join(30)
    receive.close()
    for _ in range(100):  # the pool worker goes with it (bounded: 10 s)
        try:
            os.kill(pool_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pool_pid, 9)
        pytest.fail("the stopped run's pool worker is still running")


def test_the_toolkits_refusals_survive_the_trip_to_and_from_a_worker_process():
    """A resume refusal raised in a multiprocessing worker (benchmarks/offline_to_online.py's pool) could not be
    rebuilt from the message pickle passes (its constructor takes three arguments): the pool's result thread died
    and the caller waited forever. Each is rebuilt whole, in a real pool too."""
    import multiprocessing
    import pickle

    from robopretrain.checkpoint import CheckpointMismatchError
    from robopretrain.guards import NonFiniteLossError
    from robopretrain.run_fingerprint import ResumeMismatchError

    errors = [ResumeMismatchError("run/ckpt", "lr: 1 -> 2", "set resume=false"),
              CheckpointMismatchError("run/ckpt_4", "obs parts differ", "use another output_dir"),
              NonFiniteLossError("critic_loss", float("nan"), 7, hint="lower lr", since=5)]
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
    assert pickle.loads(pickle.dumps(errors[0])).changes == "lr: 1 -> 2"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply_async(_raise_refusal)
        with pytest.raises(ResumeMismatchError, match="cannot resume, it was written by a run with other settings"):
            result.get(timeout=120)


def _raise_refusal() -> None:
    from robopretrain.run_fingerprint import ResumeMismatchError

    raise ResumeMismatchError("run/ckpt", "batch_size: 256 -> 64", "set resume=false")
