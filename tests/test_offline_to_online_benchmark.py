"""benchmarks/offline_to_online.py's bookkeeping on hand-made results: a run in parts keeps the earlier parts, a
results file of other settings is refused, and --diagnose keeps only variants measured with the same settings."""
from __future__ import annotations

import json

import pytest

from _benchmarks import load_benchmark


@pytest.fixture(scope="module")
def o2o():
    return load_benchmark("offline_to_online_bookkeeping", "offline_to_online.py")


def _run(task: str, method: str, seed: int) -> dict:
    history = [{"env_steps": 0, "eval/success": 0.2, "train/cumulative_regret": None},
               {"env_steps": 10, "eval/success": 0.6, "train/cumulative_regret": 0.5}]
    return {"task": task, "method": method, "seed": seed, "wall_s": 1.0, "history": history,
            "offline_history": [], "run_dir": "x"}


def test_a_run_in_parts_keeps_the_earlier_parts_and_refuses_another_experiments_file(o2o, tmp_path):
    """--seeds 0, then --seeds 1 on one --results: the second call started from no runs and rewrote the file with
    seed 1 alone."""
    first = o2o.parse_args(["--results", str(tmp_path / "r.json"), "--seeds", "0", "--methods", "iql"])
    o2o.save_results(first, [_run("Reach", "iql", 0)])
    second = o2o.parse_args(["--results", str(tmp_path / "r.json"), "--seeds", "1", "--methods", "iql"])
    earlier = o2o.earlier_runs(second)
    keys = lambda runs: [(r["task"], r["method"], r["seed"]) for r in runs]  # noqa: E731
    assert keys(o2o.with_earlier(earlier, [_run("Reach", "iql", 1)])) == [("Reach", "iql", 0), ("Reach", "iql", 1)]
    again = o2o.with_earlier(earlier, [_run("Reach", "iql", 0)])  # a part run again replaces its row: none twice
    assert keys(again) == [("Reach", "iql", 0)] and again[0]["history"][-1]["eval/success"] == 0.6
    assert keys(o2o.with_earlier(earlier, [])) == [("Reach", "iql", 0)]  # a call killed before re-measuring: kept
    other = o2o.parse_args(["--results", str(tmp_path / "r.json"), "--seeds", "1", "--batch-size", "64"])
    with pytest.raises(SystemExit, match=r"holds runs made with other settings .*'batch_size': \(128, 64\)"):
        o2o.earlier_runs(other)
    assert o2o.earlier_runs(o2o.parse_args(["--results", str(tmp_path / "none.json")])) == []


def test_the_committed_results_are_extended_by_a_call_with_their_settings(o2o, tmp_path):
    """The committed file predates --offline-eval-every, --dr and --extra: a call with its settings (the defaults)
    was refused as another experiment ("'extra': (None, [])"). Absent, they are what those runs used."""
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "offline_to_online.json"
    stored = json.loads(committed.read_text())
    assert not {"offline_eval_every", "dr", "extra"} & set(stored["config"])
    copy = tmp_path / "o2o.json"
    copy.write_text(committed.read_text())
    assert len(o2o.earlier_runs(o2o.parse_args(["--results", str(copy)]))) == len(stored["runs"]) > 0
    with pytest.raises(SystemExit, match=r"other settings .*\{'dr': \('train', 'none'\)\}"):
        o2o.earlier_runs(o2o.parse_args(["--results", str(copy), "--dr", "none"]))


def test_diagnose_keeps_only_variants_measured_with_the_same_settings(o2o, tmp_path, capsys, monkeypatch):
    """A second --diagnose at another batch size kept the first's variants under a header of the new settings."""
    class Measured(Exception):
        pass

    def measure(*args, **kwargs):
        raise Measured  # the variant would be trained again (the stand-in stops there)

    monkeypatch.setattr(o2o, "stage_configs", measure)
    path = tmp_path / "diag.json"
    argv = ["--diagnose", "--diagnose-results", str(path), "--diagnose-variants", "cql_alpha5", "--seeds", "0",
            "--tasks", "Reach", "--diagnose-steps", "10"]
    measured = {"task": "Reach", "seed": 0, "batch_size": 128, "n_actions": 4, "steps": [10], "extra": [],
                "variants": {"cql_alpha5": {"rows": []}}}
    path.write_text(json.dumps(measured))
    assert o2o.diagnose(o2o.parse_args(argv))["variants"] == measured["variants"]  # the same settings: kept
    for other in (["--batch-size", "16"], ["--extra", "algo.tau=0.01"]):
        with pytest.raises(Measured):
            o2o.diagnose(o2o.parse_args([*argv, *other]))
        assert "were measured with other settings" in capsys.readouterr().out


def test_the_pool_workers_end_with_the_benchmark(o2o, tmp_path, monkeypatch):
    """Its workers ignored Ctrl-C only (killed outright, the benchmark left them training): they are started by
    bench_utils.pool_worker_start with this process's pid."""
    import os

    made = []

    class Context:
        def Pool(self, workers, **kw):  # noqa: N802 (multiprocessing's name)
            made.append(kw)
            raise RuntimeError("stop here")

    monkeypatch.setattr(o2o, "get_context", lambda method: Context())
    monkeypatch.setattr(o2o, "make_data", lambda args, tasks: None)
    args = o2o.parse_args(["--results", str(tmp_path / "r.json"), "--work-dir", str(tmp_path), "--methods", "iql"])
    with pytest.raises(RuntimeError, match="stop here"):
        o2o.run_experiment(args, ["Reach"])
    assert made[0]["initializer"].__name__ == "pool_worker_start" and made[0]["initargs"] == (os.getpid(),)
