"""benchmarks/stage2_pixels.py: the stage-2 config it runs per budget, the evaluation it reads back, its inputs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("stage2_pixels_benchmark", ROOT / "benchmarks" / "stage2_pixels.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_each_budget_is_the_pipelines_stage2_at_that_budget_in_the_work_folder(tmp_path):
    args = bench.parse_args(["--from-run", str(tmp_path / "src"), "--work-dir", str(tmp_path / "w"),
                             "--budgets", "3000", "6000", "--override", "encoder.mode=scratch",
                             "+stage2.algo_overrides.actor_bc_weight=40"])
    c = bench.stage2_run_config(args, 6000)
    assert c.train.steps == 6000 and c.train.eval_every == 6000  # evaluated once, at the budget
    assert c.train.eval_episodes == 20  # the testbed protocol's episodes per prior task
    assert Path(c.output_dir) == tmp_path / "w" / "run" / "stage2"
    assert Path(c.data.path) == tmp_path / "w" / "run" / "data" / "prior_demos.hdf5"
    assert list(c.obs.rgb) == ["agentview_image", "eye_in_hand_image"]  # the pixel preset, not the oracle
    assert c.algo.actor_bc_weight == 40 and c.algo.actor_bc_filter == "success"  # overrides over the preset's


def test_budgets_must_ascend(tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--from-run", "x", "--work-dir", str(tmp_path), "--budgets", "6000", "3000"])


def test_evaluation_at_reads_the_per_task_row_of_that_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 3000, "eval/success": 0.3, "eval/Reach/success": 0.5, "eval/Reach/successes": 10},
            {"step": 3000, "train/loss": 1.0},
            {"step": 6000, "eval/success": 0.4, "eval/Reach/success": 0.6, "eval/Reach/successes": 12,
             "eval/Lift/success": 0.2}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert bench.evaluation_at(metrics, 6000) == {"mean": 0.4, "per_task": {"Reach": 0.6, "Lift": 0.2}}
    assert bench.evaluation_at(metrics, 3000) == {"mean": 0.3, "per_task": {"Reach": 0.5}}
    assert bench.evaluation_at(metrics, 9000) is None
    assert bench.evaluation_at(tmp_path / "none.jsonl", 3000) is None


def test_inputs_are_linked_only_from_finished_stages(tmp_path):
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "stage1").mkdir()
    (src / "data" / "done.json").write_text("{}")
    with pytest.raises(SystemExit, match="stage1: not a finished stage"):
        bench.link_inputs(src, tmp_path / "run")
    (src / "stage1" / "done.json").write_text("{}")
    bench.link_inputs(src, tmp_path / "run")
    assert (tmp_path / "run" / "stage1").resolve() == (src / "stage1").resolve()
    assert (tmp_path / "run" / "data" / "done.json").is_file()
