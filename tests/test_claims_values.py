"""Claim 1's harness (benchmarks/claims_values.py) and the stage-1 benchmark options it drives
(benchmarks/video_pretrain.py --objectives / --train-overrides / --video-overrides), on hand-made inputs.

Which bugs these catch: a summary that pools trajectories across seeds or takes the verdict against the weaker
baseline; a sweep run that does not get its one change, or gets the wrong data links; overrides that never reach the
training command; hand videos of other settings silently reused; a default run's setup that no longer equals a
JSON written before the options existed (``--only`` would refuse every old result).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from _benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cv():
    return load_benchmark("claims_values_benchmark", "claims_values.py")


@pytest.fixture(scope="module")
def vp():
    return load_benchmark("video_pretrain_benchmark", "video_pretrain.py")


def _record(rhos: dict[str, list[float]], hand: float = 0.5) -> dict:
    return {"robot": {lab: {"spearman": v, "increasing": [0.5] * len(v), "value_range": [1.0] * len(v)}
                      for lab, v in rhos.items()},
            "hand_held_out": {lab: hand for lab in rhos}, "icvf_budgets": None}


def test_summary_means_per_seed_and_verdict_against_the_stronger_untrained_row(cv):
    runs = {
        # seed 0: ICVF 0.2 (two trajectories 0.0 and 0.4), pixels 0.9, random 0.6; seed 1 with three trajectories
        "base_seed0": _record({"ICVF": [0.0, 0.4], "random init": [0.6, 0.6], "raw pixels": [0.9, 0.9],
                               "VIP": [0.7, 0.7]}),
        "base_seed1": _record({"ICVF": [0.3, 0.3, 0.3], "random init": [0.6, 0.6, 0.6], "raw pixels": [0.8] * 3,
                               "VIP": [0.7] * 3}),
        "lr_1e-3": _record({"ICVF": [0.9, 0.8, 0.7], "raw pixels": [0.9, 0.9, 0.9]}),
    }
    s = cv.summarize(runs)
    assert s["seeds"] == [0, 1]
    assert s["rows"]["ICVF"]["per_seed"] == pytest.approx([0.2, 0.3])
    assert s["rows"]["ICVF"]["spearman"] == pytest.approx(0.25)  # per-seed means averaged (pooled: 0.26)
    assert s["differences"]["raw pixels"]["difference"] == pytest.approx(0.25 - 0.85)
    assert s["differences"]["random init"]["difference"] == pytest.approx(0.25 - 0.6)
    assert s["verdict"]["against"] == "raw pixels" and s["verdict"]["verdict"] == "reversed"
    assert "ICVF" not in s["differences"]
    sweep = s["sweeps"]["lr_1e-3"]["ICVF"]
    assert sweep["spearman"] == pytest.approx(0.8) and sweep["ci"][0] <= 0.8 <= sweep["ci"][1]
    assert "base_seed0" not in s["sweeps"]
    assert s["sweep_reference"]["run"] == "base_seed0" and s["sweep_reference"]["spearman"] == pytest.approx(0.2)
    assert sweep["moves"] == "up" and "moves" not in s["sweeps"]["lr_1e-3"]["raw pixels"]  # [0.7, 0.9] vs [0, 0.4]
    text = cv.table(s)
    assert "| ICVF | 0.250 |" in text and "**reversed**" in text and "| lr_1e-3 | ICVF | 0.800 |" in text
    assert "| base_seed0 (reference) | ICVF | 0.200 |" in text and text.count("| up |") == 1
    for rhos, moves in (([0.1, 0.3], "no"), ([-0.5, -0.6, -0.7], "down")):
        runs["lr_1e-4"] = _record({"ICVF": rhos})
        assert cv.summarize(runs)["sweeps"]["lr_1e-4"]["ICVF"]["moves"] == moves


def test_each_sweep_run_gets_its_one_change_and_its_data(cv, tmp_path):
    def args_of(run):
        return cv.command(run, tmp_path)[2:]

    base = args_of("base_seed1")
    assert base[base.index("--seed") + 1] == "1" and "--objectives" not in base
    assert args_of("lr_1e-4")[args_of("lr_1e-4").index("--lr") + 1] == "1e-4"
    assert "objective.options.expectile=0.5" in args_of("expectile_0.5")
    assert "randomization=none" in args_of("videos_no_randomization")
    assert args_of("videos_3x_clips")[args_of("videos_3x_clips").index("--clips") + 1] == "270"
    budgets = args_of("budgets")
    assert budgets[budgets.index("--work") + 1] == str(tmp_path / "base_seed0")  # continues the seed-0 ICVF run
    assert budgets[budgets.index("--json") + 1] == str(tmp_path / "budgets.json")  # not the base run's JSON
    for run in cv.RUNS:
        a = args_of(run)
        assert a[a.index("--seed") + 1] == str(cv.RUNS[run][0])
        if not run.startswith("base"):
            assert a[a.index("--objectives") + 1] == "icvf" and cv.RUNS[run][0] == 0

    assert cv.link_shared_data("lr_1e-3", tmp_path) == []  # nothing to share yet: the run collects its own
    (tmp_path / "base_seed0" / "hand_videos").mkdir(parents=True)
    (tmp_path / "base_seed0" / "robot_target.hdf5").write_text("x")
    assert cv.link_shared_data("lr_1e-3", tmp_path) == ["hand_videos", "robot_target.hdf5"]
    assert (tmp_path / "lr_1e-3" / "hand_videos").resolve() == (tmp_path / "base_seed0" / "hand_videos").resolve()
    assert cv.link_shared_data("videos_one_camera", tmp_path) == ["robot_target.hdf5"]  # collects its own videos
    assert not (tmp_path / "videos_one_camera" / "hand_videos").exists()


def test_train_overrides_reach_the_training_command(vp, tmp_path, monkeypatch):
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        out = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("output_dir=")))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"steps": 7, "history": {"valid": []}}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(vp.subprocess, "run", fake_run)
    args = SimpleNamespace(steps=7, batch_size=4, lr=1e-3, seed=0, device="cpu", num_workers=0,
                           train_overrides=["objective.options.expectile=0.7"])
    vp.train_objective("icvf", tmp_path / "videos", tmp_path, args)
    assert seen and seen[0][-1] == "objective.options.expectile=0.7" and "objective=icvf" in seen[0]


def test_hand_videos_of_other_settings_are_refused(vp, tmp_path):
    videos = tmp_path / "hand_videos"
    videos.mkdir()
    (videos / "info.json").write_text(json.dumps({"config": {"cameras": ["video_left"], "randomization": "none",
                                                             "num_clips": 9}}))
    vp.check_video_settings(videos, OmegaConf.from_dotlist(["randomization=none", "cameras=[video_left]"]))
    vp.check_video_settings(videos, OmegaConf.from_dotlist([]))
    with pytest.raises(SystemExit, match="randomization"):
        vp.check_video_settings(videos, OmegaConf.from_dotlist(["randomization=train"]))
    with pytest.raises(SystemExit, match="num_clips"):  # reusing videos of another --clips
        vp.check_video_settings(videos, OmegaConf.create({"num_clips": 90}))
    with pytest.raises(SystemExit, match="cameras"):
        vp.check_video_settings(videos, OmegaConf.from_dotlist(["cameras=[video_left,video_high]"]))


def test_default_setup_matches_results_written_before_the_options(vp):
    stored = json.loads((ROOT / "benchmarks" / "results" / "video_pretrain.json").read_text())["setup"]
    args = SimpleNamespace(clips=90, episodes=25, steps=3000, batch_size=32, lr=3e-4, seed=0, train_overrides=[],
                           video_overrides=[])
    now = vp.setup_of(args)
    assert set(now) == set(stored)  # no new keys when no override is given
    args.train_overrides = ["objective.options.expectile=0.7"]
    assert vp.setup_of(args)["train_overrides"] == ["objective.options.expectile=0.7"]


def test_claims_dispatches_values(cv, tmp_path, capsys):
    claims = load_benchmark("claims_benchmark_dispatch", "claims.py")
    out = tmp_path / "claims_values.json"
    out.write_text(json.dumps({"runs": {"base_seed0": _record({"ICVF": [0.1, 0.3], "raw pixels": [0.9, 0.7]})}}))
    claims.main(["values", "--summarize-only", "--out", str(out), "--plot", str(tmp_path / "p.png"),
                 "--work-dir", str(tmp_path / "w")])
    text = capsys.readouterr().out
    assert "| ICVF | 0.200 |" in text and "| raw pixels | 0.800 |" in text
    assert (tmp_path / "p.png").is_file() and not (tmp_path / "w").exists()
    assert np.isfinite(json.loads(out.read_text())["runs"]["base_seed0"]["robot"]["ICVF"]["spearman"][0])
    assert sys.modules.get("claims_values") is not None


def test_runs_in_the_results_json_are_kept_and_not_run_again(cv, tmp_path, monkeypatch):
    # a results JSON from an earlier machine holds base_seed0; the work folder is empty: nothing may run again
    out = tmp_path / "claims_values.json"
    out.write_text(json.dumps({"runs": {"base_seed0": _record({"ICVF": [0.1, 0.3], "raw pixels": [0.9, 0.7]})}}))
    started, real_run = [], subprocess.run

    def run(cmd, **kw):  # git (the commit) runs; a video_pretrain.py run is recorded, not started
        if any(str(c).endswith("video_pretrain.py") for c in cmd):
            started.append(cmd)
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, **kw)

    monkeypatch.setattr(cv.subprocess, "run", run)
    res = cv.main(["--runs", "base_seed0", "--work-dir", str(tmp_path / "w"), "--out", str(out), "--plot",
                   str(tmp_path / "p.png")])
    assert started == [] and res["executed_this_call"] == [{"run": "base_seed0", "skipped": True}]
    assert json.loads(out.read_text())["runs"]["base_seed0"]["robot"]["ICVF"]["spearman"] == [0.1, 0.3]
