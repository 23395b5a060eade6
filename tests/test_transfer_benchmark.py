"""benchmarks/transfer.py's summary and the merge of per-process results JSONs, on hand-made runs.

The runs are written by hand in the benchmark's run format (per gap, per condition, the 0/1 outcome of each
episode), so a summary that averages episodes across seeds instead of per seed, reads another method's or gap's
outcomes, or a merge that drops, duplicates or silently mixes runs of other settings fails.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from _benchmarks import load_benchmark



@pytest.fixture(scope="module")
def transfer():
    return load_benchmark("transfer_benchmark", "transfer.py")


def _run(seed: int, method: str, gaps: dict[str, dict[str, list[float]]]) -> dict:
    return {"seed": seed, "method": method, "gap": "none", "final": {"eval/success": 0.5},
            "seconds": 1.0, "classifiers": {}, "epopt": None, "checkpoint": "x", "evaluations": gaps}


def _args(transfer, tmp_path: Path, **kw) -> argparse.Namespace:
    return transfer.parse_args(["--work-dir", str(tmp_path), "--results", str(tmp_path / "r.json"),
                                *kw.get("argv", [])])


def _write(transfer, tmp_path: Path, name: str, runs: list[dict], **config) -> Path:
    args = _args(transfer, tmp_path)
    for k, v in config.items():
        setattr(args, k, v)
    path = tmp_path / name
    path.write_text(json.dumps(transfer.summarize(args, runs)))
    return path


def test_summary_is_a_mean_over_seeds_of_per_seed_means(transfer, tmp_path):
    # seed 0: 1 of 2 episodes at target; seed 1: 4 of 4 -> per seed 0.5, 1.0; mean 0.75 (pooled episodes: 0.83)
    runs = [_run(0, "dr", {"visual_textures": {"nominal": [1, 1], "target": [1, 0]}}),
            _run(1, "dr", {"visual_textures": {"nominal": [1, 1], "target": [1, 1, 1, 1]}}),
            _run(0, "darc_on", {"friction_low": {"target": [0, 0, 0, 1]}})]
    out = transfer.summarize(_args(transfer, tmp_path), runs)
    entry = out["summary"]["dr"]["success"]["visual_textures/target"]
    assert entry["per_seed"] == [0.5, 1.0]
    assert entry["mean"] == pytest.approx(0.75)
    assert entry["ci_low"] <= 0.75 <= entry["ci_high"]
    assert out["summary"]["dr"]["success"]["visual_textures/nominal"]["mean"] == 1.0
    assert "friction_low/target" not in out["summary"]["dr"]["success"]
    assert out["summary"]["darc_on"]["success"]["friction_low/target"]["per_seed"] == [0.25]
    assert "versus" not in out["summary"]["darc_on"]  # its baseline darc_off has no run here


def test_methods_are_compared_with_their_baseline_at_the_gaps_target(transfer, tmp_path):
    runs = [_run(0, "dr", {"visual_textures": {"target": [0, 0, 0, 0]}, "physics_heldout": {"target": [1, 1]}}),
            _run(0, "dann", {"visual_textures": {"target": [1, 1, 1, 0]}, "physics_heldout": {"target": [1, 0]}}),
            _run(0, "darc_off", {"friction_low": {"target": [1, 1]}}),
            _run(0, "darc_on", {"friction_low": {"target": [0, 1]}})]
    out = transfer.summarize(_args(transfer, tmp_path), runs)
    v = out["summary"]["dann"]["versus"]
    assert v["visual_textures/target"]["difference"] == pytest.approx(0.75)
    assert v["visual_textures/target"]["baseline"] == "dr"
    assert v["physics_heldout/target"]["difference"] == pytest.approx(-0.5)
    assert out["summary"]["darc_on"]["versus"]["friction_low/target"]["baseline"] == "darc_off"
    assert out["summary"]["darc_on"]["versus"]["friction_low/target"]["difference"] == pytest.approx(-0.5)
    assert "versus" not in out["summary"]["dr"]
    assert "| dann | visual_textures/target | +0.75 vs dr" in transfer.markdown(out)


def test_merge_combines_processes_and_refuses_mixed_or_repeated_runs(transfer, tmp_path):
    a = _write(transfer, tmp_path, "a.json", [_run(1, "epopt", {"physics_heldout": {"target": [0, 1]}}),
                                              _run(1, "dr", {"physics_heldout": {"target": [0, 0]}})], seeds=[1])
    b = _write(transfer, tmp_path, "b.json", [_run(0, "dr", {"physics_heldout": {"target": [1, 1]}})], seeds=[0])
    args = _args(transfer, tmp_path)
    out = transfer.merge(args, [a, b])
    assert [(r["seed"], r["method"]) for r in out["runs"]] == [(0, "dr"), (1, "dr"), (1, "epopt")]
    assert out["config"]["seeds"] == [0, 1] and out["config"]["methods"] == ["dr", "epopt"]
    assert [m["runs"] for m in out["merged_from"]] == [["seed1/epopt", "seed1/dr"], ["seed0/dr"]]
    assert out["summary"]["dr"]["success"]["physics_heldout/target"]["per_seed"] == [1.0, 0.0]
    assert out["summary"]["epopt"]["success"]["physics_heldout/target"]["per_seed"] == [0.5]

    with pytest.raises(ValueError, match="seed 1 method epopt is also"):
        transfer.merge(_args(transfer, tmp_path), [a, a])
    c = _write(transfer, tmp_path, "c.json", [_run(2, "dr", {"physics_heldout": {"target": [1]}})], seeds=[2],
               episodes=20)
    with pytest.raises(ValueError, match="other settings"):
        transfer.merge(_args(transfer, tmp_path), [a, c])


def test_merge_through_the_command_line_writes_results(transfer, tmp_path, capsys):
    a = _write(transfer, tmp_path, "a.json", [_run(0, "dr", {"visual_textures": {"target": [1, 0, 0, 0]}})])
    b = _write(transfer, tmp_path, "b.json", [_run(1, "dr", {"visual_textures": {"target": [1, 1, 0, 0]}})])
    out_path = tmp_path / "merged.json"
    transfer.main(["--merge", str(a), str(b), "--results", str(out_path), "--figure", str(tmp_path / "f.png")])
    merged = json.loads(out_path.read_text())
    assert merged["summary"]["dr"]["success"]["visual_textures/target"]["mean"] == pytest.approx(np.mean([.25, .5]))
    assert "| dr | visual_textures/target | 0.38 |" in capsys.readouterr().out
    assert (tmp_path / "f.png").is_file()


def test_darc_gap_moves_darc_runs_and_their_judgement_to_that_gap(transfer, tmp_path):
    args = _args(transfer, tmp_path, argv=["--darc-gap", "physics_hard"])
    assert transfer.method_gaps(args, "darc_on") == ("physics_hard", ("physics_hard",))
    assert transfer.method_gaps(args, "darc_off") == ("physics_hard", ("physics_hard",))
    assert transfer.method_gaps(args, "dr") == ("none", ("visual_textures", "physics_heldout"))  # untouched
    assert transfer.gap_config(args, "physics_hard")["target"]["factors"] == ["friction", "mass", "damping",
                                                                             "gripper_force"]
    runs = [_run(0, "darc_off", {"physics_hard": {"target": [1, 1, 1, 1]}}),
            _run(0, "darc_on", {"physics_hard": {"target": [1, 0, 1, 0]}})]
    out = transfer.summarize(args, runs)
    assert out["config"]["darc_gap"] == "physics_hard"
    assert out["summary"]["darc_on"]["versus"]["physics_hard/target"]["difference"] == pytest.approx(-0.5)
    assert out["summary"]["darc_off"]["success"]["physics_hard/target"]["per_seed"] == [1.0]


def test_darc_gap_refuses_gaps_darc_cannot_use(transfer, tmp_path, capsys):
    for bad, why in (("visual_textures", "kind='visual'"), ("physics_heldout", "source="), ("nope", "known gaps")):
        with pytest.raises(SystemExit):  # argparse's one line (it was a ValueError traceback)
            _args(transfer, tmp_path, argv=["--darc-gap", bad])
        assert why in capsys.readouterr().err
    with pytest.raises(ValueError, match="known gaps"):  # the check itself, for callers of their own
        transfer.check_darc_gap("nope")


def test_merge_refuses_runs_of_another_darc_gap_and_reads_old_results_as_friction_low(transfer, tmp_path):
    a = _write(transfer, tmp_path, "a.json", [_run(0, "darc_off", {"friction_low": {"target": [1]}})])
    old = json.loads(a.read_text())
    del old["config"]["darc_gap"]  # a result made before --darc-gap
    (tmp_path / "old.json").write_text(json.dumps(old))
    b = _write(transfer, tmp_path, "b.json", [_run(1, "darc_off", {"physics_hard": {"target": [0]}})],
               darc_gap="physics_hard")
    with pytest.raises(ValueError, match="darc_gap"):
        transfer.merge(_args(transfer, tmp_path), [a, b])
    merged = transfer.merge(_args(transfer, tmp_path), [tmp_path / "old.json"])
    assert merged["config"]["darc_gap"] == "friction_low"
    assert merged["summary"]["darc_off"]["success"]["friction_low/target"]["per_seed"] == [1.0]


def test_stage3_configs_carry_each_methods_gap_and_options(transfer, tmp_path):
    args = _args(transfer, tmp_path, argv=["--smoke", "--darc-gap", "physics_hard"])
    cfg = transfer.pipeline_config(args, 0)
    base = tmp_path / "base"
    c = {m: transfer.stage3_config(args, cfg, base, m, tmp_path / m) for m in ("dr", "dann", "darc_on", "darc_off")}
    assert c["darc_on"].gap.name == c["darc_off"].gap.name == "physics_hard"
    assert c["darc_on"].gap.target_transitions == 20  # the smoke's data size reaches the gap
    assert c["darc_on"].transfer.darc.enabled and not c["darc_off"].transfer.darc.enabled
    assert c["dann"].gap.name == "visual_textures" and c["dann"].transfer.dann.enabled
    assert c["dr"].gap.name == "none" and c["dr"].checkpoint == str(base / "adapt" / "PressButton")
    assert all(v.eval_randomization == "none" and v.output_dir == str(tmp_path / m) for m, v in c.items())


def test_jobs_runs_each_seed_in_its_own_process_and_merges_them(transfer, tmp_path, monkeypatch, capsys):
    calls = []

    class Done:
        def __init__(self, code):
            self.returncode = code

    real_run = transfer.subprocess.run

    def fake_run(cmd, stdout=None, stderr=None, cwd=None, **kw):
        if cmd[0] == "git":  # the summary's commit
            return real_run(cmd, stdout=stdout, stderr=stderr, cwd=cwd, **kw)
        child = transfer.parse_args(cmd[2:])
        calls.append((child.seeds, child.jobs, child.darc_gap, child.results))
        if child.seeds == [2] and fail:
            return Done(1)
        outcome = [1, 0] if child.seeds == [0] else [1, 1]
        child.results.write_text(json.dumps(transfer.summarize(child, [
            _run(child.seeds[0], "darc_off", {"physics_hard": {"target": outcome}})])))
        return Done(0)

    monkeypatch.setattr(transfer.subprocess, "run", fake_run)
    argv = ["--work-dir", str(tmp_path), "--results", str(tmp_path / "all.json"), "--figure", str(tmp_path / "f.png"),
            "--seeds", "0", "1", "--jobs", "2", "--darc-gap", "physics_hard", "--methods", "darc_off"]
    fail = False
    transfer.main(argv)
    assert sorted(c[0] for c in calls) == [[0], [1]] and all(c[1:3] == (1, "physics_hard") for c in calls)
    assert {c[3] for c in calls} == {tmp_path / "results_seed0.json", tmp_path / "results_seed1.json"}
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["summary"]["darc_off"]["success"]["physics_hard/target"]["per_seed"] == [0.5, 1.0]
    assert [m["file"] for m in merged["merged_from"]] == ["results_seed0.json", "results_seed1.json"]
    fail = True
    with pytest.raises(RuntimeError, match=r"seed\(s\) 2 failed; see .*seed2.log"):
        transfer.main([*argv, "--seeds", "1", "2"])


def test_epopt_warmup_option_reaches_only_epopt_and_a_finished_run_of_other_options_is_refused(transfer, tmp_path):
    import torch

    from robopretrain.checkpoint import save_checkpoint

    args = _args(transfer, tmp_path, argv=["--smoke", "--epopt-warmup-batches", "0"])
    assert transfer.transfer_overrides(args, "epopt")["epopt"]["warmup_batches"] == 0  # the option beats the smoke's 1
    assert "epopt" not in transfer.transfer_overrides(args, "dann")
    cfg = transfer.pipeline_config(args, 0)
    out = tmp_path / "seed0" / "epopt" / "stage3"
    made = transfer.stage3_config(args, cfg, tmp_path / "base", "epopt", out)
    transfer.check_finished_run(out, made)  # nothing there yet: nothing to check
    save_checkpoint(out / "checkpoints", 10, made, {"w": torch.zeros(1)}, {})
    (out / "done.json").write_text("{}")
    transfer.check_finished_run(out, made)  # the same options: reused
    other = transfer.stage3_config(_args(transfer, tmp_path, argv=["--smoke"]), cfg, tmp_path / "base", "epopt", out)
    with pytest.raises(ValueError, match="a finished run made with transfer="):
        transfer.check_finished_run(out, other)
    with pytest.raises(ValueError, match="a finished run made with gap="):
        transfer.check_finished_run(out, transfer.stage3_config(args, cfg, tmp_path / "base", "dann", out))


def test_a_run_in_parts_keeps_the_earlier_parts_and_refuses_other_settings(transfer, tmp_path, monkeypatch):
    """--seeds 0, then --seeds 1 on one --results: the second call rewrote the file with seed 1 alone; a rerun with
    other --overrides reused the finished runs (stages are skipped when done) and recorded them as made with the new
    ones. The pipeline work is replaced by stand-ins here: only the bookkeeping is under test."""
    monkeypatch.setattr(transfer, "pipeline_config", lambda args, seed: {"seed": seed})
    monkeypatch.setattr(transfer, "run_base", lambda cfg, base: None)
    monkeypatch.setattr(transfer, "run_stage3", lambda args, cfg, base, method, folder: {
        "final": {"eval/success": 0.5}, "seconds": 1.0, "classifiers": {}, "epopt": None, "checkpoint": str(folder)})
    monkeypatch.setattr(transfer, "evaluate_run", lambda args, cfg, folder, gap: {
        "episodes": [{"factor": "gap", "level": "target", "success": float(cfg["seed"] == 1)}]})

    def call(*argv: str) -> dict:
        return transfer.run(_args(transfer, tmp_path, argv=["--methods", "dr", *argv]))

    call("--seeds", "0")
    out = call("--seeds", "1")
    assert [(r["seed"], r["method"]) for r in out["runs"]] == [(0, "dr"), (1, "dr")]
    assert json.loads((tmp_path / "r.json").read_text())["config"]["seeds"] == [0, 1]
    per_seed = out["summary"]["dr"]["success"]["physics_heldout/target"]["per_seed"]
    assert per_seed == [0.0, 1.0]
    assert len(call("--seeds", "1")["runs"]) == 2  # a rerun of a part replaces its runs, no duplicate
    stage3 = transfer.run_stage3

    def fails_for_seed_1(args, cfg, base, method, folder):
        if cfg["seed"] == 1:
            raise RuntimeError("killed")
        return stage3(args, cfg, base, method, folder)

    monkeypatch.setattr(transfer, "run_stage3", fails_for_seed_1)
    with pytest.raises(RuntimeError, match="killed"):  # seed 0 measured again, then the call dies at seed 1
        call("--seeds", "0", "1")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [(r["seed"], r["method"]) for r in saved["runs"]] == [(0, "dr"), (1, "dr")]  # seed 1's earlier row kept
    monkeypatch.setattr(transfer, "run_stage3", stage3)
    passed = []  # --jobs 2: the seeds it does not run are merged back (they were dropped)
    monkeypatch.setattr(transfer, "run_parallel", lambda args, argv, earlier=None: passed.append(earlier) or
                        transfer.summarize(args, earlier or []))
    transfer.measure_transfer(_args(transfer, tmp_path, argv=["--methods", "dr", "--seeds", "1", "2", "--jobs", "2",
                                                              "--figure", str(tmp_path / "f.png")]), [])
    assert [(r["seed"], r["method"]) for r in passed[0]] == [(0, "dr")]
    with pytest.raises(SystemExit, match="holds runs made with other settings"):
        call("--seeds", "2", "--overrides", "stage2.steps=8")
    with pytest.raises(SystemExit, match="was run by transfer.py with"):  # another --results, the same run folders
        transfer.run(transfer.parse_args(["--work-dir", str(tmp_path), "--results", str(tmp_path / "other.json"),
                                          "--methods", "dr", "--seeds", "0", "--overrides", "stage2.steps=8"]))


def test_each_seeds_process_ends_with_the_call_that_started_it(transfer, tmp_path, monkeypatch):
    """--jobs 2 ran each seed in a process that lived on when the call was killed outright, training into the
    folders the rerun used: the seeds' processes get this process's pid to end with, and main watches it."""
    import os
    import subprocess

    import robopretrain.workers

    envs, watched = [], []

    def fake_run(cmd, **kw):
        envs.append(kw["env"])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(transfer.subprocess, "run", fake_run)
    monkeypatch.setattr(transfer, "merge", lambda args, files: files)
    args = _args(transfer, tmp_path, argv=["--methods", "dr", "--seeds", "0", "1", "--jobs", "2"])
    transfer.run_parallel(args, [])
    assert [e["ROBOPRETRAIN_END_WITH_PARENT"] for e in envs] == [str(os.getpid())] * 2
    monkeypatch.setattr(robopretrain.workers, "end_with_launcher", lambda: watched.append(1))
    with pytest.raises(SystemExit, match="no such results file"):
        transfer.main(["--results", str(tmp_path / "none.json"), "--summarize-only"])
    assert watched == [1]
