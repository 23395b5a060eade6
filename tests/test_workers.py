"""robopretrain.workers.process_map: spawned workers answer in job order, and a worker that dies is an error.

multiprocessing.Pool.imap, which the evaluation and the collectors used, waited forever for a dead worker's job
(a script calling the evaluation without a main guard hung the same way, its spawned workers failing to start)."""
from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from _fake_envs import failing_initializer, raise_value_error, square_and_blocked, square_or_exit
from robopretrain.workers import WorkerProcessDied, process_map


def bounded(run: Any, seconds: float = 120.0) -> Any:
    """``run()`` in a thread; fails the test if it has not returned within ``seconds`` (a hang), else its result or
    exception."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = run()
        except BaseException as exc:  # re-raised below, in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_results_come_in_job_order_from_workers_that_hold_ctrl_c_blocked():
    out = list(process_map(square_and_blocked, range(7), 2, what="the test's workers", chunksize=2))
    assert [x for x, _ in out] == [x * x for x in range(7)]
    assert all(blocked for _, blocked in out)  # started under sigint_blocked_for_workers (main thread)
    from _fake_envs import sigint_blocked

    read = [sigint_blocked() for _ in process_map(abs, range(3), 1, what="the test's workers")]
    assert read == [False] * 3  # the results are read after the block: Ctrl-C is the parent's again


def test_each_result_is_let_go_once_handed_out():
    """The pool kept every result until the generator ended: a collector writing each episode as it came held all
    of them in memory (672 MB against 132 MB for 30 results of 20 MB)."""
    import gc
    import weakref

    from _fake_envs import payload

    handed: list[weakref.ref] = []
    for result in process_map(payload, range(7), 2, what="the test's workers", chunksize=2):  # (no enumerate: its
        assert result.value == len(handed)  # reused tuple holds the last item)
        handed.append(weakref.ref(result))
        del result
        gc.collect()
        assert [ref() is None for ref in handed] == [True] * len(handed)


def test_a_worker_that_dies_is_an_error_naming_the_pool_and_the_main_guard():
    with pytest.raises(WorkerProcessDied, match=r"^the test's workers: a worker process died before answering .*"
                                                r"if __name__ == \"__main__\":"):
        bounded(lambda: list(process_map(square_or_exit, range(6), 2, what="the test's workers")))


def test_a_failing_initializer_is_an_error_not_a_retry_forever():
    with pytest.raises(WorkerProcessDied, match="the test's workers"):
        bounded(lambda: list(process_map(abs, range(4), 2, what="the test's workers",
                                         initializer=failing_initializer)))


def test_an_exception_raised_by_the_job_reaches_the_caller_as_it_is():
    with pytest.raises(ValueError, match="job-failed"):
        bounded(lambda: list(process_map(raise_value_error, ["job-failed"], 1, what="the test's workers")))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    from pathlib import Path

    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _start_parent(tmp_path: Any, source: str, stderr: Any) -> tuple[Any, list[int]]:
    """Run the script ``source`` with a folder its two workers write their pids into; returns the process and the
    workers' pids once both have started (each alive)."""
    import os
    import subprocess
    import time
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    script = tmp_path / "parent.py"
    script.write_text(source)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    env.pop("ROBOPRETRAIN_TRACEBACK", None)
    proc = subprocess.Popen([sys.executable, str(script), str(pids)], env=env, stderr=stderr, text=True)
    deadline = time.monotonic() + 120
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == 2 and all(alive(w) for w in workers)
    return proc, workers


def _left_alive(pids: list[int], seconds: float) -> list[int]:
    """The processes of ``pids`` still alive after up to ``seconds``; each is then killed (nothing outlives a test)."""
    import os
    import signal
    import time

    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left


PARENT = """
import sys
from _fake_envs import record_pid_and_sleep
from robopretrain.cli import friendly_errors
from robopretrain.workers import process_map

@friendly_errors
def run():
    list(process_map(record_pid_and_sleep, [sys.argv[1]] * 2, 2, what="the test's workers"))

if __name__ == "__main__":
    run()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_workers_do_not_outlive_a_parent_that_is_killed_or_terminated(tmp_path, sig):
    """SIGTERM ended an entry point at once (no handler) and SIGKILL always does: their spawned workers lived on as
    orphans holding memory (a minute later, in a new user's session). SIGTERM now stops the run as Ctrl-C does (one
    line, exit code 143, the workers shut down); after SIGKILL each worker gets SIGTERM from the kernel."""
    import signal
    import subprocess

    proc, workers = _start_parent(tmp_path, PARENT, subprocess.PIPE)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    left = _left_alive(workers, 20)
    assert not left, f"workers {left} outlived their parent ({sig})"
    if sig == "SIGTERM":
        assert proc.returncode == 143 and err.strip().splitlines()[-1].startswith("terminated (SIGTERM)"), err


LAUNCHER = """
import os, subprocess, sys
RANK = (
    "import os, sys, time\\n"
    "from robopretrain.cli import friendly_errors\\n"
    "@friendly_errors\\n"
    "def run():\\n"
    "    open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\\n"
    "    time.sleep(120)\\n"
    "run()\\n")

if __name__ == "__main__":  # torchrun's part: two ranks of one entry point, then it waits for them
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, sys.argv[1]], env={
        **os.environ, "WORLD_SIZE": "2", "RANK": str(r), "TORCHELASTIC_RUN_ID": "test"}) for r in range(2)]
    for rank in ranks:
        rank.wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_torchrun_ranks_do_not_outlive_a_launcher_that_is_killed(tmp_path):
    """torchrun (or a joblib sweep's parent) SIGKILLed: its ranks trained on as orphans, holding the run folder's
    lock (a rerun was refused naming them); now each ends within a second of its launcher."""
    import signal

    proc, ranks = _start_parent(tmp_path, LAUNCHER, None)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not _left_alive(ranks, 20), "ranks outlived their launcher"


def test_only_a_launched_process_with_a_parent_watches_it(monkeypatch):
    """WORLD_SIZE alone may be a cluster script's (ranks it started itself, by hand or srun), and a container's
    pid 1 has no parent (ppid 0, which reads as ended: the watcher killed every rank at once)."""
    import os

    import robopretrain.workers as workers

    started = []
    monkeypatch.setattr(workers, "_LAUNCHER_WATCHED", [])
    monkeypatch.setattr(workers, "exit_with", lambda pid: started.append(pid))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not workers.end_with_launcher() and started == []
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setattr(os, "getppid", lambda: 0)
    assert not workers.end_with_launcher() and started == []
    monkeypatch.setattr(os, "getppid", lambda: 4242)
    assert workers.end_with_launcher() and started == [4242]
    assert workers.end_with_launcher() and started == [4242]  # once per process


LOADER_PARENT = """
import sys
from _fake_envs import PidRecordingStream
from video_pretrain.sampling import batch_loader

if __name__ == "__main__":
    next(iter(batch_loader(PidRecordingStream(sys.argv[1]), num_workers=2)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_stage_ones_data_workers_do_not_outlive_a_killed_stage_one(tmp_path):
    """Stage 1's DataLoader workers start from a fork server, their parent, which outlived a stage 1 killed with
    SIGKILL (its workers hold its alive pipe): workers and fork server lived on, 1.2 GB (helper W)."""
    import signal
    import subprocess
    from pathlib import Path

    proc, workers = _start_parent(tmp_path, LOADER_PARENT, subprocess.DEVNULL)
    server = {int(Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[1]) for w in workers}
    assert len(server) == 1 and server != {proc.pid}  # a fork server started them
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    left = _left_alive([*workers, *server], 30)
    assert not left, f"processes {left} outlived the killed stage 1"


class _Pool:
    """A stand-in for the executor: its processes, and shutdown calls that do nothing."""

    def __init__(self, *processes: Any) -> None:
        self._processes = {p.pid: p for p in processes}

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


INTERRUPTED_MAP = """
import time
from robopretrain.workers import process_map

try:  # the first job's result comes when both workers run; then a Ctrl-C, with jobs running and others waiting
    for _ in process_map(time.sleep, [0.0] + [60.0] * 7, 2, what="the test's workers"):
        raise KeyboardInterrupt
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_a_ctrl_c_while_workers_run_jobs_prints_nothing_from_the_executor():
    """Ctrl-C with jobs running and others waiting: the workers are terminated, and on Python 3.11 the executor's
    thread then failed the waiting jobs that Executor.map's iterator had cancelled (``InvalidStateError:
    CANCELLED``, or an ``OSError`` at exit), a traceback before the one ``interrupted`` line."""
    import os
    import subprocess

    out = subprocess.run([sys.executable, "-c", INTERRUPTED_MAP], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0 and out.stdout == "interrupted\n", out.stderr[-2000:]
    assert out.stderr == ""


def test_a_worker_reaped_by_the_executors_own_join_counts_as_exited(caplog):
    """The executor's thread joins the workers too; one it reaped first read as alive to is_alive() (waitpid fails
    here), so a run whose workers had exited warned they 'did not exit within 60 s' and terminated them. An exited
    worker is told by its sentinel; one that is still running is terminated after the timeout, with the warning."""
    import logging
    import multiprocessing as mp
    import os
    import time

    from robopretrain.workers import _shut_down

    spawn = mp.get_context("spawn")
    done, stuck = spawn.Process(target=abs, args=(0,)), spawn.Process(target=time.sleep, args=(60,))
    done.start()
    stuck.start()
    os.waitpid(done.pid, 0)  # reaped behind the Process object's back, as the executor's join does in the race
    # (CPython's is_alive() then reads True: its waitpid fails with ECHILD, which it takes for "still running")
    with caplog.at_level(logging.WARNING, logger="robopretrain.workers"):
        _shut_down(_Pool(done), 30.0)
        assert not caplog.records
        _shut_down(_Pool(stuck), 0.5)
    stuck.join(10)
    assert stuck.exitcode is not None and stuck.exitcode != 0  # terminated (a 60 s sleep that ran out exits 0)
    assert "did not exit within 0.5 s" in caplog.text


def test_a_benchmarks_child_run_ends_with_the_benchmark_killed_outright(tmp_path):
    """A benchmark (offline_suite.py) killed with SIGTERM or SIGKILL left its robopretrain.train child training on
    as an orphan, writing the run folder its rerun used: the child's environment (bench_utils.child_env) makes it
    watch the benchmark, through a wrapper (timeout, sh -c) too."""
    import os
    import signal
    import subprocess
    from pathlib import Path

    child = ("import os, time\nfrom robopretrain.workers import end_with_launcher\n"
             "print(end_with_launcher(), os.getpid(), flush=True)\ntime.sleep(120)\n")
    parent = (f"import os, subprocess, sys, time\n"
              f"env = {{**os.environ, 'ROBOPRETRAIN_END_WITH_PARENT': str(os.getpid())}}\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], env=env, stdout=subprocess.PIPE, text=True)\n"
              f"print(p.stdout.readline().strip(), flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    watched, pid = proc.stdout.readline().split()
    assert watched == "True"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not _left_alive([int(pid)], 20), "the child outlived the benchmark"
    # a benchmark killed before its child got to the check: the child, adopted, ends at once
    code = "from robopretrain.workers import end_with_launcher; print(end_with_launcher(), flush=True)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    late = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, "ROBOPRETRAIN_END_WITH_PARENT": "999999999"})
    assert late.returncode == 1 and late.stdout == "" and "has ended; stopping" in late.stderr
    wrapped = subprocess.run(["timeout", "100", sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, env={**env, "ROBOPRETRAIN_END_WITH_PARENT": str(os.getpid())})
    assert wrapped.returncode == 0 and wrapped.stdout.strip() == "True"  # its parent is timeout: it goes on
