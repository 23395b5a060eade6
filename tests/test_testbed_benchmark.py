"""benchmarks/testbed.py reads the right numbers from pipeline run folders and applies the protocol's thresholds;
the ``testbed`` preset composes to the stage configs the protocol describes.

The run folders here are written by hand in the pipeline's layout (evaluate/results.json, stage2/metrics.jsonl,
<stage>/done.json), so a benchmark that reads the blind numbers from the sighted entry, the prior success from the
aggregate instead of per task, or compares with the wrong threshold fails.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from robopretrain import pipeline
from robopretrain.envs.target import as_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def testbed():
    # loaded from its file (benchmarks/ on sys.path would shadow the video_pretrain package); it appends its own
    # folder for bench_utils
    spec = importlib.util.spec_from_file_location("testbed_benchmark", ROOT / "benchmarks" / "testbed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_utils", None)


def write_run(folder: Path, target: str, nominal: int, black: int, other: int, prior: dict[str, float],
              seconds: dict[str, float], episodes: int = 20) -> None:
    (folder / "evaluate").mkdir(parents=True)
    entry = lambda k: {"success": k / episodes, "successes": k, "episodes": episodes, "return": 0.0}  # noqa: E731
    (folder / "evaluate" / "results.json").write_text(json.dumps({target: {
        "nominal": entry(nominal), "randomized": entry(0), "blind_black": entry(black),
        "blind_other_episode": entry(other)}}))
    (folder / "stage2").mkdir()
    rows = [{"step": 100, "loss": 1.0},
            {"step": 250, "eval/success": 0.0, **{f"eval/{t}/success": 0.0 for t in prior}},
            {"step": 500, "eval/success": 0.99, "eval/return": 0.99,  # the aggregate must not be read as a task
             **{f"eval/{t}/success": v for t, v in prior.items()}, **{f"eval/{t}/length": 50.0 for t in prior}},
            {"step": 501, "loss": 0.5}]
    (folder / "stage2" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for stage, s in seconds.items():
        (folder / stage).mkdir(exist_ok=True)
        (folder / stage / "done.json").write_text(json.dumps({"stage": stage, "seconds": s}))


def test_criteria_read_from_run_folders(testbed, tmp_path):
    target = "PressLitButton"
    pixel, oracle = [], []
    for seed, (nom, black, other) in enumerate([(16, 1, 2), (14, 0, 3), (12, 2, 2)]):
        folder = tmp_path / f"pixel{seed}"
        write_run(folder, target, nom, black, other, {"Reach": 0.8, "PushBlock": 0.4}, {"data": 60, "stage2": 1800})
        pixel.append(testbed.read_run(folder, target))
        folder = tmp_path / f"oracle{seed}"
        write_run(folder, target, 18, 18, 18, {}, {"stage3": 600})
        oracle.append(testbed.read_run(folder, target))
    assert pixel[0]["prior_tasks"] == {"Reach": 0.8, "PushBlock": 0.4}
    assert pixel[0]["minutes"] == pytest.approx(31.0)
    rows = {r["criterion"]: r for r in testbed.criteria(target, {"success": 1.0}, pixel, oracle)}
    assert rows["1 expert"]["met"] is True
    assert rows["2 oracle (state)"]["mean"] == pytest.approx(0.9) and rows["2 oracle (state)"]["met"] is True
    sighted = rows["3 sighted pixel"]
    assert sighted["per_seed"] == pytest.approx([0.8, 0.7, 0.6]) and sighted["met"] is True
    assert sighted["ci95"][0] < 0.7 < sighted["ci95"][1]
    assert rows["4 blind (black)"]["mean"] == pytest.approx(0.05) and rows["4 blind (black)"]["met"] is True
    other = rows["4 blind (other_episode)"]
    assert other["mean"] == pytest.approx(7 / 60)  # above 0.1, but sighted - blind = 0.58 >= 0.5
    assert other["met"] is True
    assert rows["5 stage-2 prior tasks (mean)"]["mean"] == pytest.approx(0.6)
    assert rows["6 minutes per pixel run"]["met"] is True
    assert "| PressLitButton | 3 sighted pixel | >= 0.6 | 0.70 |" in testbed.table(list(rows.values()))


def test_criteria_fail_where_the_protocol_says(testbed, tmp_path):
    target = "OpenDoorRight"
    folder = tmp_path / "pixel"
    write_run(folder, target, 11, 4, 1, {"Reach": 0.5, "Lift": 0.3}, {"stage2": 3000, "stage3": 1000})
    run = testbed.read_run(folder, target)
    rows = {r["criterion"]: r for r in testbed.criteria(target, {"success": 0.9}, [run], [])}
    assert rows["1 expert"]["met"] is False  # 0.9 < 0.95
    assert rows["2 oracle (state)"]["met"] is None  # not run
    assert rows["3 sighted pixel"]["met"] is False  # 0.55 < 0.6
    assert rows["4 blind (black)"]["met"] is False  # 0.2 > 0.1 and 0.55 - 0.2 < 0.5
    assert rows["4 blind (other_episode)"]["met"] is True  # 0.05
    assert rows["5 stage-2 prior tasks (mean)"]["met"] is False  # 0.4
    assert rows["6 minutes per pixel run"]["met"] is False  # 66.7 min
    lines = {line.split(" | ")[1]: line for line in testbed.table(list(rows.values())).splitlines()[2:]}
    assert lines["4 blind (other_episode)"].endswith("| yes (1 of 3 seeds) |")  # one seed of three: the table says so
    assert lines["3 sighted pixel"].endswith("| **no** (1 of 3 seeds) |")
    assert lines["1 expert"].endswith("| **no** |") and lines["2 oracle (state)"].endswith("|  |")  # no seeds; not run


def test_oracle_variant_and_preset_compose(testbed, tmp_path):
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("testbed", overrides=list(testbed.VARIANTS["oracle"]) + ["targets=[PlaceInBowl]"])
        pixel = compose("testbed")
    assert list(cfg.obs.rgb) == [] and list(cfg.obs.low_dim) == ["proprio", "object"] and not cfg.stage1.enabled
    s2 = pipeline.stage2_config(cfg, tmp_path)
    assert list(s2.obs.rgb) == [] and s2.encoder.mode == "scratch"
    assert list(pixel.obs.rgb) == ["agentview_image", "eye_in_hand_image"]
    assert pixel.stage2.eval_episodes == 20 and pixel.evaluate.episodes == 20  # the protocol's episode counts
    assert list(pixel.evaluate.blind) == list(testbed.BLIND)
    pixel.encoder.mode = "scratch"  # stage 2 would take the stage-1 encoder from <run>/stage1/encoder
    s2 = pipeline.stage2_config(pixel, tmp_path)
    assert s2.encoder.kwargs.pool == "spatial_softmax" and s2.train.eval_episodes == 20
    s3 = pipeline.stage3_config(pixel, tmp_path, as_target("PressLitButton"))
    assert s3.algo.name == "calql"
    cmd = testbed.pipeline_command(testbed.parse_args(["--work-dir", str(tmp_path)]), "oracle", "PlaceInBowl", 2)
    assert "--config-name=testbed" in cmd and "seed=2" in cmd and "obs.rgb=[]" in cmd
    assert f"run_dir={tmp_path / 'oracle' / 'PlaceInBowl' / 'seed2'}" in cmd


def test_combination_target_runs_with_its_own_preset(testbed, tmp_path):
    """Version 5: CloseDrawerPressButton's runs compose testbed_combination (100 demos, half-target batches, 3000
    adaptation updates) and nothing else changes; --preset still forces one preset for every target."""
    args = testbed.parse_args(["--work-dir", str(tmp_path)])
    assert "--config-name=testbed_combination" in testbed.pipeline_command(args, "pixel", "CloseDrawerPressButton", 0)
    assert "--config-name=testbed" in testbed.pipeline_command(args, "pixel", "PressLitButton", 0)
    forced = testbed.parse_args(["--work-dir", str(tmp_path), "--preset", "testbed"])
    assert "--config-name=testbed" in testbed.pipeline_command(forced, "oracle", "CloseDrawerPressButton", 0)
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        combo = compose("testbed_combination")
        base = compose("testbed")
    assert combo.data.target_demos == 100 and combo.adapt.prior_fraction == 0.5 and combo.adapt.steps == 3000
    assert list(combo.targets) == ["CloseDrawerPressButton"]
    combo, base = (OmegaConf.to_container(c) for c in (combo, base))
    for c in (combo, base):
        del c["data"]["target_demos"], c["adapt"]["prior_fraction"], c["adapt"]["steps"], c["targets"], c["name"]
    assert combo == base  # every other setting is the testbed preset's


def test_a_rerun_with_other_overrides_is_refused_not_reported_as_the_old_run(testbed, tmp_path, monkeypatch):
    """A rerun into the same --out with another --override kept the measured run and reported it under the new
    settings (and rewrote the file's preset); into a new --out on the same work folder, the pipeline skipped the
    finished stages whatever the overrides (a user's session)."""
    calls = []

    def fake_pipeline(args, variant, target, seed):
        calls.append((variant, target, seed, tuple(args.override)))
        return {"command": "pipeline", "returncode": 0}

    monkeypatch.setattr(testbed, "run_pipeline", fake_pipeline)
    monkeypatch.setattr(testbed, "read_run", lambda folder, target: {"nominal": {"success": 1.0}})
    monkeypatch.setattr(testbed, "expert_success", lambda task, episodes: {"success": 1.0})
    monkeypatch.setattr(testbed, "summarize", lambda results, targets: {})
    monkeypatch.setattr(testbed, "table", lambda summary: "")
    base = ["--targets", "Reach", "--seeds", "0", "--variants", "pixel", "--work-dir", str(tmp_path / "w")]
    out = tmp_path / "t.json"
    testbed.main([*base, "--out", str(out)])
    testbed.main([*base, "--out", str(out)])  # measured: skipped
    assert calls == [("pixel", "Reach", 0, ())]
    before = out.read_text()
    with pytest.raises(SystemExit, match=r"pixel/Reach/seed0 in .* was measured with preset 'testbed' and overrides "
                                         r"\[\], not 'testbed' and \['stage3.env_steps=8'\]"):
        testbed.main([*base, "--out", str(out), "--override", "stage3.env_steps=8"])
    assert out.read_text() == before
    with pytest.raises(SystemExit, match=r"pixel/Reach/seed0 was run by testbed.py with .*'overrides': \[\]"):
        testbed.main([*base, "--out", str(tmp_path / "new.json"), "--override", "stage3.env_steps=8"])
    assert len(calls) == 1
    with pytest.raises(SystemExit, match=r"--targets \['Nope'\]: no sim_envs task"):
        testbed.main(["--targets", "Nope", "--out", str(tmp_path / "n.json")])
