"""Worker processes that leave Ctrl-C to the parent from their first instruction.

The toolkit's workers (stage 3's env workers, the evaluation pool, Meta-World collection) ignore SIGINT once their
own code runs, so that a Ctrl-C stops the run with the parent's one ``interrupted`` line. A ``spawn`` worker first
imports the toolkit (torch, MuJoCo: seconds), and a Ctrl-C in that time (the terminal sends it to every process of
the group) raised ``KeyboardInterrupt`` inside the import and printed the worker's traceback.
:func:`sigint_blocked_for_workers` blocks SIGINT in the calling thread while the workers start: a process inherits
its signal mask through ``fork`` and ``exec``, so every worker started then holds SIGINT blocked for its whole
life (pending, never delivered). A ``multiprocessing.Pool`` made in the block also starts its later replacement
workers blocked: the pool's thread that starts them was made there, and a thread inherits its maker's mask. The parent is unaffected: a Ctrl-C in that time reaches it through any other of
its threads at once, or when the block ends.

:func:`process_map` runs jobs in such workers (each dies with its parent: :func:`die_with_parent`), results in job
order, and raises :class:`WorkerProcessDied` when a worker dies: ``multiprocessing.Pool.imap`` waited forever for
the lost job's answer (and restarted a failing initializer forever), which is also how a script calling the toolkit
without ``if __name__ == "__main__":`` hung.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import resource_tracker
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

MAIN_GUARD_HINT = ("a script that calls the toolkit must do so under `if __name__ == \"__main__\":` (worker "
                   "processes are started with spawn, which imports the script again in each of them)")


class WorkerProcessDied(RuntimeError):
    """A worker process of :func:`process_map` died before answering: killed (out of memory), a crash in native code
    (a simulator, a renderer), ``os._exit``, an initializer that raised, or a script without a main guard."""


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int | None = None) -> bool:
    """In a worker process: have the kernel send it SIGTERM when the process that started it dies (Linux's
    ``prctl(PR_SET_PDEATHSIG)``), so that a parent killed outright (SIGKILL, the OOM killer) leaves no orphaned
    workers holding memory; seen: collection workers and stage 1's data workers alive a minute after their parent
    was killed. ``parent_pid``: the parent's pid as the parent knew it; when the worker's parent is already
    another process (it died before this call), the worker exits at once. Returns whether the request was made
    (False off Linux, or where libc cannot be loaded)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        made = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # orphaned before the request: nobody will read this worker's results
    return made


_LAUNCHER_WATCHED: list[int] = []  # the launcher this process ends with (end_with_launcher), once set


# the pid of the process that started this one: an entry point ends with it (a benchmark's runs)
END_WITH_PARENT = "ROBOPRETRAIN_END_WITH_PARENT"


def end_with_launcher() -> bool:
    """In a process a launcher started to run one of the entry points (a ``torchrun`` rank: torchrun's
    ``TORCHELASTIC_RUN_ID`` is set; a joblib sweep's loky worker; a benchmark's run, whose environment sets
    :data:`END_WITH_PARENT` to its own pid: a benchmark killed left its runs training on, writing the folders its
    rerun used): end it within a second of its parent ending, or of that pid's (:func:`exit_with`; a run whose
    benchmark ended before it got here ends now). A launcher killed outright (SIGKILL) left its ranks training on as
    orphans, holding the run folder's lock (the rerun was refused naming them) and memory; a sweep's idle workers
    lived on for half an hour.
    Ranks a cluster starts without torchrun (``WORLD_SIZE`` alone), a process whose parent is none (pid 1 in a
    container) or already gone are not watched. Once per process; returns whether it watches its launcher."""
    if _LAUNCHER_WATCHED:
        return True
    starter = os.environ.pop(END_WITH_PARENT, "")  # (this process's own children are not the benchmark's runs)
    if starter.isdigit() and int(starter) > 1:  # a benchmark's run, maybe through a wrapper (timeout, sh -c)
        if process_ended(int(starter)):  # it ended before this run got here
            print(f"robopretrain: the process that started this run ({starter}) has ended; stopping",
                  file=sys.stderr, flush=True)
            os._exit(1)
        _LAUNCHER_WATCHED.append(int(starter))
        exit_with(int(starter))
        return True
    launched = "TORCHELASTIC_RUN_ID" in os.environ or mp.get_start_method(allow_none=True) == "loky"
    if not launched or os.getppid() <= 1:
        return False
    _LAUNCHER_WATCHED.append(os.getppid())
    exit_with(_LAUNCHER_WATCHED[0])
    return True


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie (killed, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False


def exit_with(pid: int, period: float = 1.0) -> threading.Thread:
    """In a worker whose parent is not the process it serves (a fork server's child, where ``PR_SET_PDEATHSIG``
    watches the fork server, which lives as long as its children: each holds its alive pipe): end this process
    (``os._exit(1)``) within ``period`` s of process ``pid`` ending, from a daemon thread. Returns the thread."""
    def watch() -> None:
        while not process_ended(pid):
            time.sleep(period)
        os._exit(1)

    thread = threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True)
    thread.start()
    return thread


def _start_worker(parent_pid: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    """:func:`process_map`'s worker initializer: :func:`die_with_parent`, then the caller's own initializer."""
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def sigint_blocked_for_workers() -> Iterator[None]:
    """Block SIGINT in this thread for the ``with`` block (where ``spawn`` worker processes are started); the
    thread's mask is restored after it. Starts multiprocessing's resource tracker first (as the first spawned
    process would), since its start unblocks SIGINT. Does nothing off the main thread or where
    ``signal.pthread_sigmask`` is missing (Windows)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    # started first: spawning it (done at the first spawn) unblocks SIGINT in this thread afterwards, which would
    # undo the block for the workers started after it
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class NoWorkerProcesses(WorkerProcessDied):
    """This process cannot start worker processes of its own: it is a joblib (loky) worker, as Hydra's joblib
    launcher runs each job (:func:`refuse_in_loky_worker`)."""


IN_PROCESS_SETTINGS = ("evaluate: workers=0; stage 3: online.num_envs=1 or online.asynchronous=false; collection: "
                       "num_workers=0")


def refuse_in_loky_worker(what: str) -> None:
    """Raise :class:`NoWorkerProcesses` naming ``what`` (the pool about to start) when this process is a joblib (loky)
    worker: spawned children of such a worker inherit its start method 'loky', which they cannot find (``ValueError:
    cannot find context for 'loky'``), and functions of a ``python -m`` entry point (its ``__main__``) cannot be
    pickled to them; both ended a ``hydra/launcher=joblib`` job with a traceback."""
    if mp.get_start_method(allow_none=True) == "loky":
        raise NoWorkerProcesses(f"{what}: this job runs in a joblib worker process (hydra/launcher=joblib), where "
                                "processes of its own cannot start; run them in the job's process "
                                f"({IN_PROCESS_SETTINGS}), or sweep with Hydra's basic launcher (the default: one job "
                                "after another)")


def process_map(fn: Callable[[T], R], jobs: Iterable[T], workers: int, *, what: str,
                initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = (), chunksize: int = 1,
                close_timeout: float | None = None) -> Iterator[R]:
    """``fn(job)`` for each of ``jobs`` in ``workers`` spawned processes (each first running ``initializer(*initargs)``),
    yielded in job order as ``multiprocessing.Pool.imap`` does; ``chunksize`` consecutive jobs go to one worker.

    An exception raised by ``fn`` reaches the caller as it is. A worker that dies raises :class:`WorkerProcessDied`
    naming ``what`` (the pool) and the main-guard hint (:data:`MAIN_GUARD_HINT`, for a caller's own script). All
    jobs are submitted at once (the workers start then, Ctrl-C blocked). After the last result the workers exit
    (running their ``multiprocessing.util.Finalize`` callbacks, e.g. closing envs); with ``close_timeout`` (seconds)
    they are terminated if they have not exited by then, with a warning, and the generator closing early (the caller
    stopped, or failed) cancels the jobs not started and terminates the workers."""
    refuse_in_loky_worker(what)
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, tuple(initargs)))
    finished = False
    futures: deque[Future] = deque()  # the chunks not yet handed out, in job order
    size = max(1, int(chunksize))
    try:
        with sigint_blocked_for_workers():  # the workers start as the jobs are submitted: all of them, here
            pending = list(jobs)
            for i in range(0, len(pending), size):
                futures.append(pool.submit(_run_chunk, fn, pending[i: i + size]))
        while futures:  # each result let go once handed out (a collector's episodes stay in memory one at a time)
            chunk = futures[0].result()
            futures.popleft()
            chunk.reverse()
            while chunk:
                yield chunk.pop()
        finished = True
    except BrokenProcessPool:
        raise WorkerProcessDied(f"{what}: a worker process died before answering (killed, e.g. out of memory; a "
                                "crash in native code such as a simulator or renderer; an error while it started, "
                                f"printed above); if you called this from your own script: {MAIN_GUARD_HINT}"
                                ) from None
    finally:
        _shut_down(pool, close_timeout if finished else 0.0)


def _run_chunk(fn: Callable[[T], R], jobs: list[T]) -> list[R]:
    """A worker's share of :func:`process_map`: ``fn`` over ``chunksize`` consecutive jobs."""
    return [fn(job) for job in jobs]


def _shut_down(pool: ProcessPoolExecutor, timeout: float | None) -> None:
    """Shut ``pool`` down, waiting for its workers to exit at most ``timeout`` seconds (None: as long as they take)
    before terminating the ones left (``shutdown(cancel_futures=True)``: the executor's own thread cancels the jobs
    not started).

    :func:`process_map` submits its jobs itself rather than through ``Executor.map``, whose iterator cancels its jobs
    when closed: a worker terminated then made the executor's thread fail those cancelled jobs, and on Python 3.11
    it died printing ``InvalidStateError: CANCELLED`` (and an ``OSError`` at exit) before a Ctrl-C's one
    ``interrupted`` line (CPython gh-105169, fixed in 3.12). The executor's thread removes the jobs it cancels.

    A worker counts as exited when its sentinel is ready (the process ended), not by ``is_alive()``: the executor's
    own thread joins the same processes, and when it reaps one first, ``waitpid`` here fails and ``is_alive()``
    reads the exited worker as alive (the "did not exit within 60 s" warning 2 s after the results, which a helper
    saw in 2 of 20 evaluations)."""
    from multiprocessing.connection import wait

    processes = list(getattr(pool, "_processes", {}).values())  # the executor keeps no public handle on them
    running = {p.sentinel: p for p in processes}  # taken before shutting down, while each process is open
    pool.shutdown(wait=False, cancel_futures=True)
    if timeout is not None:
        deadline = time.monotonic() + timeout
        while running:
            ready = wait(list(running), max(0.0, deadline - time.monotonic()))
            for sentinel in ready:
                running.pop(sentinel)
            if not ready:  # the time is up
                break
        if running:
            if timeout > 0:
                log.warning("worker processes did not exit within %g s of the last result (an env's close() "
                            "blocking?); terminating them", timeout)
            for p in running.values():
                p.terminate()
    pool.shutdown(wait=True)


__all__ = ["MAIN_GUARD_HINT", "WorkerProcessDied", "die_with_parent", "end_with_launcher", "exit_with", "process_map",
           "sigint_blocked_for_workers"]
