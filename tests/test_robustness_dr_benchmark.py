"""benchmarks/robustness_dr.py's reuse of finished work: an evaluation is reused only for the same episodes and
factors, and a work folder only for the same target and overrides (finished stages are skipped whatever they are)."""
from __future__ import annotations

import json

import pytest

from _benchmarks import load_benchmark


@pytest.fixture(scope="module")
def rdr():
    return load_benchmark("robustness_dr_bookkeeping", "robustness_dr.py")


def test_an_evaluation_is_reused_only_for_the_same_episodes_and_factors(rdr, tmp_path, monkeypatch):
    import robopretrain.evaluate

    calls = []
    monkeypatch.setattr(robopretrain.evaluate, "evaluate_robustness", lambda cfg: calls.append(list(cfg.select)) or
                        {"episodes_per_condition": cfg.episodes, "factors": {f: {} for f in cfg.select}})
    args = rdr.parse_args(["--work-dir", str(tmp_path), "--episodes", "4", "--select", "friction"])
    (tmp_path / "dr" / "robustness").mkdir(parents=True)
    wilson = {"method": "wilson", "resamples": 2000, "confidence": 0.95, "seed": 0}
    info = {"episodes_per_condition": 4, "factors": {"friction": {}}, "bootstrap": wilson}
    (tmp_path / "dr" / "robustness" / "eval_info.json").write_text(json.dumps(info))
    assert rdr.evaluate_variant(args, tmp_path / "dr")["factors"] == {"friction": {}} and calls == []  # reused
    rdr.evaluate_variant(args, tmp_path / "dr", select=["nominal", "friction"])  # nominal is always run: reused
    assert calls == []
    rdr.evaluate_variant(args, tmp_path / "dr", select=["camera"])  # another selection: evaluated (it was reused)
    assert calls == [["camera"]]
    # an evaluation with another interval (percentile bootstrap, evaluate's default before stop 35): evaluated again,
    # it sat in the table and the plot as a Wilson one; the variant's record names the interval
    (tmp_path / "dr" / "robustness" / "eval_info.json").write_text(json.dumps(
        {**info, "bootstrap": {**wilson, "method": "percentile"}}))
    rdr.evaluate_variant(args, tmp_path / "dr")
    assert calls == [["camera"], ["friction"]]
    assert rdr.interval_name(info) == "95% Wilson"


def test_a_work_folder_of_other_overrides_or_target_is_refused(rdr, tmp_path, monkeypatch):
    class Ran(Exception):
        pass

    def stage(*args):
        raise Ran  # past the check (the stand-in stops there)

    monkeypatch.setattr(rdr, "pipeline_config", lambda args, *a: {})
    monkeypatch.setattr(rdr, "run_stage", stage)
    with pytest.raises(Ran):
        rdr.run(rdr.parse_args(["--work-dir", str(tmp_path), "--overrides", "stage2.steps=8"]))
    with pytest.raises(SystemExit, match="was run by robustness_dr.py with"):
        rdr.run(rdr.parse_args(["--work-dir", str(tmp_path), "--overrides", "stage2.steps=16"]))
    with pytest.raises(Ran):  # the same settings again: it goes on (the stages it finished are skipped)
        rdr.run(rdr.parse_args(["--work-dir", str(tmp_path), "--overrides", "stage2.steps=8"]))
