"""Small helpers the benchmark scripts share: CPU model, load average, atomic JSON, hierarchical bootstrap.

Scripts run as ``python benchmarks/<name>.py`` import this module from their own folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


# benchmarks/testbed.py's presets: the target's own where it has one (testbed protocol, version 5), else "testbed"
DEFAULT_PRESET = "testbed"
TARGET_PRESETS = {"CloseDrawerPressButton": "testbed_combination"}


def cpu_model() -> str:
    """The CPU's model name with the vector instruction set torch runs with, e.g. ``AMD EPYC (AVX2)``: the model name
    alone does not say which machine computed a number (two "AMD EPYC" sessions ran AVX-512 and AVX2)."""
    from robopretrain.nets.kernels import cpu_label

    return cpu_label()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (a killed run leaves the old file; numpy numbers as floats)."""
    from robopretrain.files import write_json_atomic as write

    write(path, obj, indent=1, default=float)


def seed_arrays(per_seed: Sequence[Sequence[float]], who: str = "seeds_then_episodes_ci") -> list[np.ndarray]:
    """``per_seed`` as float arrays, one per seed. Raises ValueError when there is no seed, a seed has no episode,
    or an outcome is not finite (a NaN made every interval NaN and the verdict "not shown", without a word)."""
    arrays = [np.asarray(s, dtype=float) for s in per_seed]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError(f"{who}: need at least one seed, each with at least one episode")
    bad = [i for i, a in enumerate(arrays) if not np.isfinite(a).all()]
    if bad:
        first = arrays[bad[0]][~np.isfinite(arrays[bad[0]])][:3].tolist()
        raise ValueError(f"{who}: seed(s) {bad} hold a non-finite outcome ({first}); a diverged run's numbers cannot "
                         "enter an interval")
    return arrays


def seeds_then_episodes_means(arrays: Sequence[np.ndarray], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples,) bootstrap means over seeds of per-episode outcomes: each resample draws the seeds with
    replacement, then the episodes within each drawn seed (a two-level bootstrap; Davison & Hinkley 1997, sec. 3.8)."""
    means = np.empty(resamples)
    for r in range(resamples):
        picked = rng.integers(0, len(arrays), len(arrays))
        means[r] = np.mean([rng.choice(arrays[i], arrays[i].size).mean() for i in picked])
    return means


def seeds_then_episodes_ci(per_seed: Sequence[Sequence[float]], resamples: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds of per-episode outcomes: each resample draws the seeds
    with replacement, then the episodes within each drawn seed. ``per_seed``: one sequence of outcomes (0/1 success
    or any score) per seed. Raises ValueError when there is no seed or a seed has no episode."""
    means = seeds_then_episodes_means(seed_arrays(per_seed), resamples, np.random.default_rng(seed))
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def outcomes(successes: int, episodes: int) -> list[float]:
    """Per-episode 0/1 outcomes from a success count (order does not matter to the bootstrap)."""
    if not 0 <= successes <= episodes:
        raise ValueError(f"outcomes: {successes} successes out of {episodes} episodes")
    return [1.0] * successes + [0.0] * (episodes - successes)


def git_commit(root: Path) -> str:
    """The checked-out commit of the repository at ``root`` ('' outside a git checkout)."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip()


RUN_SETTINGS = "benchmark_settings.json"


@contextlib.contextmanager
def results_lock(path: Path) -> Iterator[None]:
    """Hold the writer lock of a benchmark's results file ``path`` (``.<name>.lock`` beside it) for the ``with``
    block, or exit with one line when another call holds it: each call reads the file, adds its runs and writes it
    whole, so two at once on one file lost the first one's runs. Released by the operating system however the
    holder ends (:func:`robopretrain.files.run_folder_lock`)."""
    from robopretrain.files import RunFolderBusy, run_folder_lock

    path = Path(path)
    try:
        with run_folder_lock(path.parent, lock_name=f".{path.name}.lock", what=str(path)):
            yield
    except RunFolderBusy as busy:
        raise SystemExit(f"error: {busy}") from None


SHARED_SETTINGS = ("preset", "overrides")  # what makes two scripts' pipeline runs the same runs
# what a script's record written before it recorded a shared setting stands for (claims.py ran the testbed preset)
RECORDED_BEFORE = {"claims.py": {"preset": "testbed"}}


def check_run_settings(folder: Path, settings: dict[str, Any], script: str) -> None:
    """Record the settings a benchmark runs ``folder`` with (``<folder>/benchmark_settings.json``, under ``script``'s
    name), or refuse (SystemExit) to run it with other ones: the pipeline skips a finished stage whatever its new
    settings (it only warns, in the run's log), so a rerun with another ``--override`` was recorded as measured with
    it. Other scripts' records in the same folder are kept (claims.py reuses testbed.py's runs); their
    :data:`SHARED_SETTINGS` must agree where both record them (a run of testbed.py's ``--preset pipeline`` was taken
    as claims.py's testbed-preset run)."""
    path = folder / RUN_SETTINGS
    records = json.loads(path.read_text()) if path.is_file() else {}
    for other, record in records.items():  # its own record whole; another script's shared keys (the same runs)
        if other != script:
            record = {**RECORDED_BEFORE.get(other, {}), **record}
        shared = [k for k in SHARED_SETTINGS if k in record and k in settings]
        # (a shared key an older record of its own lacks is added, not refused: claims.py's had no preset)
        own = {k: v for k, v in settings.items() if k in record or k not in SHARED_SETTINGS}
        if record != own if other == script else any(record[k] != settings[k] for k in shared):
            raise SystemExit(f"error: {folder} was run by {other} with {record}, not {settings}; use another "
                             "--work-dir (or the same settings)")
    if records.get(script) != settings:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**records, script: settings})


def ended_with_this() -> dict[str, str]:
    """This process's environment for a child that ends with this process (killed, its runs went on writing the
    run folders its rerun used): the child's entry point calls robopretrain.workers.end_with_launcher (the stage
    scripts do)."""
    return {**os.environ, "ROBOPRETRAIN_END_WITH_PARENT": str(os.getpid())}


def child_env() -> dict[str, str]:
    """The environment of a benchmark's child runs: one OpenMP thread each, and they end with this process
    (:func:`ended_with_this`)."""
    return {**ended_with_this(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def pool_worker_start(parent_pid: int) -> None:
    """A benchmark's pool worker's initializer (``initargs=(os.getpid(),)``): Ctrl-C ignored (the parent alone handles
    it, stopping the pool without a traceback per worker), and the worker ended within a second of ``parent_pid``
    ending (:func:`robopretrain.workers.exit_with`): a benchmark killed outright left its workers training for hours,
    writing the run folders its rerun was then refused (their locks held)."""
    import signal

    from robopretrain.workers import exit_with

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with(parent_pid)


def exit_on_signals(what: str) -> None:
    """Ctrl-C or SIGTERM ends this benchmark at once with one line and 130 / 143 (its child runs, started with
    :func:`child_env`, end within a second): it waited for the running child to finish (hours at full budgets), then
    printed a traceback. What finished is in the results file already (written after each run)."""
    import signal
    import sys

    def stop(signum: int, frame: Any) -> None:
        name = "interrupted" if signum == signal.SIGINT else "terminated"
        print(f"{what}: {name}; finished runs are in the results file, a rerun continues from them", file=sys.stderr,
              flush=True)
        os._exit(130 if signum == signal.SIGINT else 143)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def run_logged(cmd: Sequence[str], folder: Path, cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` with one OpenMP thread, appending its output to ``folder/benchmark.log``; returns the command
    (without the interpreter), its return code, the wall seconds of this call and the load averages around it."""
    folder.mkdir(parents=True, exist_ok=True)
    load_before, start = load_average(), time.perf_counter()
    with open(folder / "benchmark.log", "a") as log:
        proc = subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=child_env())
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "call_seconds": time.perf_counter() - start,
            "load_before": load_before, "load_after": load_average()}


def write_expert_demos(env: Any, policy: Any, path: Any, episodes: int, max_steps: int) -> Any:
    """A D4RL-style HDF5 (``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``) of ``policy``'s
    episodes in ``env`` (a gymnasium env with a flat observation and ``info["success"]``; seeds 0 .. episodes - 1):
    sparse reward 1 and a terminal on the success step, a timeout on step ``max_steps``. Raises ``RuntimeError`` when
    an episode does not succeed (the data are meant to be clean). Returns ``path``."""
    import h5py

    rows: dict[str, list[Any]] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        done = False
        for t in range(max_steps):
            action = policy(obs)
            nxt, _, _, _, info = env.step(action)
            done = bool(info["success"])
            for k, v in (("observations", obs), ("actions", action), ("rewards", float(done)),
                         ("terminals", done), ("timeouts", not done and t == max_steps - 1)):
                rows[k].append(v)
            obs = nxt
            if done:
                break
        if not done:
            raise RuntimeError(f"the expert failed episode {ep}")
    with h5py.File(path, "w") as f:
        for k, v in rows.items():
            f[k] = np.asarray(v)
    return path


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` (folders made) and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
