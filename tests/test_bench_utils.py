"""benchmarks/bench_utils.py: the seeds-then-episodes bootstrap interval every benchmark's success interval comes from,
atomic JSON, the logged subprocess runs of the claims scripts, figures and load averages."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from _benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bu():
    return load_benchmark("bench_utils", "bench_utils.py")


def test_interval_is_the_2_5_and_97_5_percentiles_of_the_seeds_then_episodes_means(bu):
    """Continuous outcomes (0/1 data cannot tell a 2.5% tail from nearby ones): the defaults are a 95% interval from
    2000 resamples of generator seed 0, and ``confidence`` sets the tails."""
    rng = np.random.default_rng(3)
    per_seed = [rng.normal(loc, 1.0, size=n) for loc, n in ((0.0, 15), (0.5, 20), (1.0, 10))]
    means = bu.seeds_then_episodes_means(bu.seed_arrays(per_seed), 2000, np.random.default_rng(0))
    # (1 - 0.95) is not exactly 0.05 in floating point: equal to 1e-12
    np.testing.assert_allclose(bu.seeds_then_episodes_ci(per_seed), np.percentile(means, [2.5, 97.5]), rtol=1e-12)
    means = bu.seeds_then_episodes_means(bu.seed_arrays(per_seed), 300, np.random.default_rng(5))
    lo, hi = bu.seeds_then_episodes_ci(per_seed, resamples=300, confidence=0.8, seed=5)
    np.testing.assert_allclose([lo, hi], np.percentile(means, [10, 90]), rtol=1e-12)


def test_write_json_atomic_leaves_the_old_file_when_killed_before_the_rename(bu, tmp_path, monkeypatch):
    path = tmp_path / "new" / "folder" / "results.json"
    bu.write_json_atomic(path, {"a": np.float32(0.5)})  # folders made; numpy scalars written as floats
    assert json.loads(path.read_text()) == {"a": 0.5}
    bu.write_json_atomic(path, {"a": 1})  # the folder exists now

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bu.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        bu.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}


def test_run_logged_appends_output_with_one_thread_and_reports_the_command(bu, tmp_path):
    folder = tmp_path / "runs" / "seed0"  # made, parents too
    code = "import os; print('threads', os.environ['OMP_NUM_THREADS'])"
    for _ in range(2):
        out = bu.run_logged([sys.executable, "-c", code], folder, tmp_path)
    assert (folder / "benchmark.log").read_text().splitlines() == ["threads 1", "threads 1"]
    assert out["command"] == f"-c {code}" and out["returncode"] == 0 and out["call_seconds"] > 0
    failed = bu.run_logged([sys.executable, "-c", "raise SystemExit(3)"], folder, tmp_path)
    assert failed["returncode"] == 3
    slept = bu.run_logged([sys.executable, "-c", "import time; time.sleep(0.3)"], folder, tmp_path)
    assert 0.3 <= slept["call_seconds"] < 600  # this call's duration, not a clock reading


def test_load_average_rounds_to_hundredths(bu, monkeypatch):
    monkeypatch.setattr(bu.os, "getloadavg", lambda: (0.123456, 1.5, 2.0049))
    assert bu.load_average() == [0.12, 1.5, 2.0]

    def none():
        raise OSError("no load average here")

    monkeypatch.setattr(bu.os, "getloadavg", none)
    assert bu.load_average() == []


def test_save_figure_makes_folders_overwrites_and_closes(bu, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "plots" / "a" / "curve.png"
    for _ in range(2):  # the folder exists the second time
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        assert bu.save_figure(fig, path) == path
        assert not plt.fignum_exists(fig.number)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000


def test_run_settings_are_recorded_per_script_and_other_ones_refused(bu, tmp_path):
    """A rerun with other settings was recorded as measured with them (stop 61); claims.py reuses testbed.py's runs
    in the same folder, so another script's record with the same overrides is kept beside its own."""
    bench = bu
    folder = tmp_path / "run"  # not made yet: the first record makes it
    testbed = {"overrides": ["stage3.steps=10"], "preset": "testbed"}
    bench.check_run_settings(folder, testbed, "testbed.py")
    path = folder / bench.RUN_SETTINGS
    assert json.loads(path.read_text()) == {"testbed.py": testbed}
    bench.check_run_settings(folder, dict(testbed), "testbed.py")  # the same settings again: nothing changes
    claims = {"overrides": ["stage3.steps=10"], "episodes": 5}
    bench.check_run_settings(folder, claims, "claims.py")  # the folder exists now
    assert json.loads(path.read_text()) == {"testbed.py": testbed, "claims.py": claims}
    with pytest.raises(SystemExit, match="was run by testbed.py with"):
        bench.check_run_settings(folder, {**testbed, "preset": "testbed_combination"}, "testbed.py")
    with pytest.raises(SystemExit, match="was run by testbed.py with"):  # another script's runs, other overrides
        bench.check_run_settings(folder, {"overrides": ["stage3.steps=20"], "episodes": 5}, "claims.py")
    assert json.loads(path.read_text()) == {"testbed.py": testbed, "claims.py": claims}
    # another script's runs made under another preset (testbed.py --preset pipeline) are not claims.py's testbed runs
    other = tmp_path / "other"
    bench.check_run_settings(other, {**testbed, "preset": "pipeline"}, "testbed.py")
    with pytest.raises(SystemExit, match="was run by testbed.py with"):
        bench.check_run_settings(other, {**claims, "preset": "testbed"}, "claims.py")
    bench.check_run_settings(other, claims, "claims.py")  # a record without a preset (older) is compared on the rest
    bench.check_run_settings(other, {**claims, "preset": "pipeline"}, "claims.py")  # its own older record: preset added
    assert json.loads((other / bench.RUN_SETTINGS).read_text())["claims.py"] == {**claims, "preset": "pipeline"}
    with pytest.raises(SystemExit, match="was run by claims.py with"):
        bench.check_run_settings(other, {**claims, "episodes": 7, "preset": "pipeline"}, "claims.py")
    older = tmp_path / "older"  # claims.py's record from before it recorded its preset stands for the testbed's
    bench.check_run_settings(older, claims, "claims.py")
    with pytest.raises(SystemExit, match="was run by claims.py with"):
        bench.check_run_settings(older, {**testbed, "preset": "pipeline"}, "testbed.py")
    bench.check_run_settings(older, testbed, "testbed.py")


@pytest.mark.parametrize("script, option", [("offline_to_online.py", "--results"), ("testbed.py", "--out"),
                                            ("claims.py pretraining", "--out")])
def test_a_second_call_on_a_results_file_in_use_is_refused(bu, tmp_path, script, option):
    """Two calls on one results file each rewrote it from the copy they read at start: a finished run was lost."""
    import subprocess
    from pathlib import Path

    out = tmp_path / "results.json"
    root = Path(__file__).resolve().parents[1]
    with bu.results_lock(out):
        proc = subprocess.run([sys.executable, str(root / "benchmarks" / script.split()[0]), *script.split()[1:],
                               option, str(out), "--summarize-only"], capture_output=True, text=True, cwd=tmp_path,
                              timeout=300)
    assert proc.returncode != 0 and "another process is writing it now" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr



def test_transfer_summarizes_a_results_file_another_call_is_writing(bu, tmp_path):
    """--summarize-only reads the file and writes none: a long run's results can be looked at while it runs."""
    import subprocess
    from pathlib import Path

    out = tmp_path / "results.json"
    root = Path(__file__).resolve().parents[1]
    with bu.results_lock(out):
        proc = subprocess.run([sys.executable, str(root / "benchmarks" / "transfer.py"), "--results", str(out),
                               "--summarize-only"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "another process is writing" not in proc.stderr and "no such results file" in proc.stderr


@pytest.mark.parametrize("signum, code, word", [(2, 130, "interrupted"), (15, 143, "terminated")])
def test_a_benchmark_stops_at_once_on_ctrl_c_or_sigterm_with_one_line(signum, code, word):
    """Ctrl-C waited for the running child run to finish (hours at full budgets), then printed a traceback."""
    import subprocess
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    script = (f"import sys, threading, time; sys.path.insert(0, {str(bench)!r}); import bench_utils\n"
              "bench_utils.exit_on_signals('suite'); t = threading.Thread(target=time.sleep, args=(60,))\n"
              "t.start(); print('ready', flush=True); t.join()\n")  # the main thread waits as on a pool's run
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and err.strip() == (f"suite: {word}; finished runs are in the results file, a "
                                                       "rerun continues from them")


def test_expert_demos_are_written_as_d4rl_rows_and_a_failing_expert_is_refused(bu, tmp_path):
    """benchmarks/grip_reach_env.py's and narrow_reach_env.py's clean data: one row per step, reward 1 and a terminal
    on the success step, the episode ended there; an expert that fails an episode (or takes no step) is refused."""
    import h5py

    class Line:  # x starts at the seed, +action per step; success at x >= 3
        def reset(self, seed: int = 0):
            self.x = float(seed)
            return np.array([self.x], np.float32), {}

        def step(self, action):
            self.x += float(action[0])
            return np.array([self.x], np.float32), 0.0, False, False, {"success": self.x >= 3}

    path = bu.write_expert_demos(Line(), lambda obs: np.ones(1, np.float32), tmp_path / "d.hdf5", 2, 5)
    with h5py.File(path, "r") as f:
        rows = {k: f[k][()] for k in f}
    assert rows["observations"][:, 0].tolist() == [0, 1, 2, 1, 2]  # seed 0: 3 steps; seed 1: 2 steps
    assert rows["rewards"].tolist() == [0, 0, 1, 0, 1] and rows["terminals"].tolist() == [0, 0, 1, 0, 1]
    assert not rows["timeouts"].any() and rows["actions"].shape == (5, 1)
    with pytest.raises(RuntimeError, match="the expert failed episode 0"):
        bu.write_expert_demos(Line(), lambda obs: np.zeros(1, np.float32), tmp_path / "e.hdf5", 1, 4)
    with pytest.raises(RuntimeError, match="the expert failed episode 0"):
        bu.write_expert_demos(Line(), lambda obs: np.ones(1, np.float32), tmp_path / "f.hdf5", 1, 0)


def test_a_pool_worker_ends_with_the_benchmark_killed_outright():
    """offline_to_online.py's pool workers ignored Ctrl-C only: the benchmark killed (SIGKILL), they trained on for
    hours, writing the run folders its rerun was then refused. A worker busy for two minutes ends within seconds."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    from robopretrain.workers import process_ended

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    script = (f"import os, sys, time; sys.path.insert(0, {str(bench)!r}); import bench_utils\n"
              "from multiprocessing import get_context\n"
              "pool = get_context('spawn').Pool(1, initializer=bench_utils.pool_worker_start,\n"
              "                                 initargs=(os.getpid(),))\n"
              "worker = pool.apply(os.getpid); pool.apply_async(time.sleep, (120,))\n"
              "print(worker, flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    time.sleep(1.0)  # the worker has taken the two-minute task
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while not process_ended(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    ended = process_ended(worker)
    if not ended:
        os.kill(worker, signal.SIGKILL)
    assert ended
