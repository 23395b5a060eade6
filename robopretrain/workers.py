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
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker


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


__all__ = ["sigint_blocked_for_workers"]
