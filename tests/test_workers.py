"""robopretrain.workers.process_map: spawned workers answer in job order, and a worker that dies is an error.

multiprocessing.Pool.imap, which the evaluation and the collectors used, waited forever for a dead worker's job
(a script calling the evaluation without a main guard hung the same way, its spawned workers failing to start)."""
from __future__ import annotations

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
