"""benchmarks/claims.py (issue 12, claims 2 and 3): which runs it makes, what it copies between them, how it reads
a run's regret and how it turns per-seed outcomes into the table's differences and verdicts.

The run folders and metrics here are written by hand, so a script that reads the wrong stage's checkpoint, places
an evaluation at the wrong step, flips a difference's sign or copies a stage the variant must recompute fails. The
last test measures a real (tiny) pipeline run end to end.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def claims():
    # loaded from its file (benchmarks/ on sys.path would shadow the video_pretrain package)
    yield _load("claims_benchmark", "claims.py")
    for name in ("bench_utils", "claims_metrics"):
        sys.modules.pop(name, None)


def test_full_runs_are_the_testbed_pixel_runs_so_a_shared_work_folder_reuses_them(claims, tmp_path):
    testbed = _load("testbed_benchmark_for_claims", "testbed.py")
    for seed in (0, 2):
        assert claims.run_dir(tmp_path, "full", "PressLitButton", seed) == \
            testbed.run_dir(tmp_path, "pixel", "PressLitButton", seed)
    assert claims.run_dir(tmp_path, "scratch", "PressLitButton", 1) == tmp_path / "scratch" / "PressLitButton" / "seed1"
    # the full variant is the testbed's pixel command: same preset, no extra override
    cmd = claims.pipeline_command("full", "PressLitButton", 1, tmp_path)
    assert cmd[1:] == testbed.pipeline_command(
        type("A", (), {"preset": "testbed", "work_dir": tmp_path, "override": []})(), "pixel", "PressLitButton", 1)[1:]


def test_target_only_gets_the_full_pipelines_offline_updates_and_no_stage2(claims, tmp_path):
    """'Same budget' (protocol): stage 2's updates plus the adaptation's, read from the preset itself, so a preset
    change that leaves the variant's number behind fails here."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        preset = compose(config_name="testbed")
        variant = compose(config_name="testbed", overrides=claims.VARIANTS["target_only"][0])
        short = compose(config_name="testbed", overrides=claims.VARIANTS["target_only_short"][0])
    assert variant.adapt.steps == preset.stage2.steps + preset.adapt.steps
    assert not variant.stage2.enabled and not short.stage2.enabled
    assert short.adapt.steps == preset.adapt.steps
    for name in ("target_only", "target_only_short"):  # the rest of the pipeline is the full one's
        v = compose_with(claims.VARIANTS[name][0])
        assert v.stage3 == preset.stage3 and v.stage1 == preset.stage1 and v.encoder == preset.encoder
    cmd = claims.pipeline_command("scratch", "OpenDoorRight", 2, tmp_path, ["stage3.env_steps=10"])
    assert cmd[-3:] == ["stage1.enabled=false", "encoder.mode=scratch", "stage3.env_steps=10"]
    assert "seed=2" in cmd and "targets=[OpenDoorRight]" in cmd and "--config-name=testbed" in cmd
    assert claims.stage3_eval_every([]) == preset.stage3.eval_every
    assert claims.stage3_eval_every(["stage3.eval_every=250"]) == 250


def compose_with(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="testbed", overrides=list(overrides))


def _stage(folder: Path, done: bool = True, files: dict[str, str] | None = None) -> None:
    folder.mkdir(parents=True)
    if done:
        (folder / "done.json").write_text("{}")
    for name, text in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_variants_copy_the_full_runs_data_and_only_the_stage1_they_share(claims, tmp_path):
    full = claims.run_dir(tmp_path, "full", "T", 0)
    _stage(full / "data", files={"prior_demos.hdf5": "p", "prior_demos.hdf5.frames/0.npy": "cache"})
    _stage(full / "stage1", files={"encoder/meta.json": "{}"})
    _stage(full / "stage2", files={"x": "y"})
    assert claims.share_stages(tmp_path, "target_only", "T", 0) == ["data", "stage1"]
    dst = claims.run_dir(tmp_path, "target_only", "T", 0)
    assert (dst / "data" / "prior_demos.hdf5").read_text() == "p" and (dst / "data" / "done.json").is_file()
    assert not (dst / "data" / "prior_demos.hdf5.frames").exists()  # the cache is rebuilt, not copied
    assert (dst / "stage1" / "encoder" / "meta.json").is_file() and not (dst / "stage2").exists()
    # scratch and vip train their own stage 1 (or none): data only
    assert claims.share_stages(tmp_path, "scratch", "T", 0) == ["data"]
    assert claims.share_stages(tmp_path, "vip", "T", 0) == ["data"]
    assert not (claims.run_dir(tmp_path, "vip", "T", 0) / "stage1").exists()
    # a stage already there is kept; another seed's full run is not used; an unfinished stage is not copied
    (dst / "data" / "prior_demos.hdf5").write_text("mine")
    assert claims.share_stages(tmp_path, "target_only", "T", 0) == []
    assert (dst / "data" / "prior_demos.hdf5").read_text() == "mine"
    assert claims.share_stages(tmp_path, "target_only", "T", 1) == []
    _stage(claims.run_dir(tmp_path, "full", "U", 0) / "data", done=False)
    assert claims.share_stages(tmp_path, "target_only", "U", 0) == []
    assert claims.share_stages(tmp_path, "full", "T", 0) == []


def test_a_target_demo_count_labels_the_runs_and_reuses_the_full_runs_stage2(claims, tmp_path):
    assert claims.label("full", None) == "full" and claims.label("target_only_short", 5) == "target_only_short_demos5"
    assert claims.split_label("target_only_short_demos5") == ("target_only_short", 5)
    assert claims.split_label("full") == ("full", None) and claims.split_label("full_demos10") == ("full", 10)
    for bad in ("fullish", "full_demosX", "nope_demos5"):
        with pytest.raises(ValueError):
            claims.split_label(bad)
    assert claims.run_overrides("target_only_short_demos5") == ["stage2.enabled=false", "data.target_demos=5"]
    assert claims.run_overrides("full_demos5") == ["data.target_demos=5"] and claims.run_overrides("full") == []
    # its own folder, not the testbed's pixel runs
    assert claims.run_dir(tmp_path, "full_demos5", "T", 0) == tmp_path / "full_demos5" / "T" / "seed0"
    full = claims.run_dir(tmp_path, "full", "T", 0)
    for stage in ("data", "stage1", "stage2", "adapt"):
        _stage(full / stage)
    # the full pipeline with N demos: stage 2 reads no target data, so it is the full run's; adapt is redone
    assert claims.share_stages(tmp_path, "full_demos5", "T", 0) == ["data", "stage1", "stage2"]
    assert claims.share_stages(tmp_path, "target_only_short_demos5", "T", 0) == ["data", "stage1"]
    assert claims.share_stages(tmp_path, "scratch_demos5", "T", 0) == ["data"]
    # a variant is compared with the full pipeline of its own count
    runs = {f"full/T/seed{s}": _run(45, 40, 0.1) for s in range(3)}
    runs |= {f"full_demos5/T/seed{s}": _run(20, 10, 0.6) for s in range(3)}
    runs |= {f"target_only_short_demos5/T/seed{s}": _run(10, 0, 0.8) for s in range(3)}
    runs |= {f"target_only_short/T/seed{s}": _run(45, 45, 0.1) for s in range(3)}
    rows = claims.summarize(runs, ["T"])
    assert [(r["variant"], r["target_demos"]) for r in rows] == [("target_only_short", None), ("target_only_short", 5)]
    assert rows[1]["final"]["difference"] == pytest.approx(0.2) and rows[1]["offline"]["difference"] == pytest.approx(0.2)
    assert rows[0]["final"]["difference"] == pytest.approx(0.0)
    assert "| 3 | T | 5 | target_only_short | 3 / 3 | 0.40 vs 0.20: +0.20" in claims.table(rows)


def test_regret_places_each_evaluation_at_its_planned_step(claims, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "env_steps": 0, "eval/success": 0.2}, {"step": 100, "train/critic_loss": 1.0},
            {"step": 200, "env_steps": 500, "eval/success": 0.4}, {"env_steps": 1001, "eval/success": 0.9},
            {"env_steps": 1001, "eval/success": 0.5},  # a resume rewrote this evaluation: the last one counts
            {"env_steps": 1501, "eval/success": 0.3}, {"env_steps": 2000, "eval/success": 0.4}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows))
    got = claims.stage3_eval_rows(metrics)
    assert [r["env_steps"] for r in got] == [0, 500, 1001, 1501, 2000] and got[2]["eval/success"] == 0.5
    regret = claims.planned_regret(got, 500)
    assert regret["evaluations"] == 5 and regret["spacing"] == 500
    assert regret["mean_regret"] == pytest.approx((0.8 + 0.6 + 0.5 + 0.7 + 0.6) / 5)
    with pytest.raises(ValueError):  # two evaluations at one planned step: not equally spaced
        claims.planned_regret([{"env_steps": 0, "eval/success": 0.0}, {"env_steps": 100, "eval/success": 0.0}], 500)


def _run(final: int, offline: int, regret: float, episodes: int = 50) -> dict:
    return {"measured": {"final": {"successes": final, "episodes": episodes},
                         "offline": {"successes": offline, "episodes": episodes},
                         "regret": {"mean_regret": regret}}}


def test_table_rows_difference_signs_and_verdicts(claims):
    runs = {f"full/T/seed{s}": _run(45, 30, 0.2) for s in range(3)}
    runs |= {f"target_only_short/T/seed{s}": _run(10, 5, 0.7) for s in range(3)}  # clearly worse
    runs |= {f"scratch/T/seed{s}": _run(50, 50, 0.0) for s in range(3)}  # clearly better than full
    runs |= {f"vip/T/seed{s}": _run(f, 30, 0.2) for s, f in enumerate((40, 50, 45))}  # the same on average
    runs["target_only/T/seed0"] = {"error": "unfinished"}  # no measurement: no row
    runs["full/Other/seed0"] = _run(0, 0, 1.0)  # another target's run does not enter T's rows
    rows = {r["variant"]: r for r in claims.summarize(runs, ["T"])}
    assert set(rows) == {"target_only_short", "scratch", "vip"}
    short = rows["target_only_short"]
    assert short["claim"] == 3 and rows["scratch"]["claim"] == 2
    assert short["final"]["full"] == pytest.approx(0.9) and short["final"]["target_only_short"] == pytest.approx(0.2)
    assert short["final"]["difference"] == pytest.approx(0.7) and short["final"]["interval"][0] > 0
    assert short["offline"]["difference"] == pytest.approx(0.5)
    # regret: variant - full, so a worse variant is positive too
    assert short["regret"]["difference"] == pytest.approx(0.5) and short["regret"]["interval"][0] > 0
    assert short["verdict"] == "reproduced"
    assert rows["scratch"]["final"]["difference"] == pytest.approx(-0.1) and rows["scratch"]["verdict"] == "reversed"
    assert rows["scratch"]["regret"]["difference"] == pytest.approx(-0.2)
    vip = rows["vip"]
    assert vip["final"]["difference"] == pytest.approx(0.0) and vip["verdict"] == "not shown"
    assert vip["final"]["per_seed"]["vip"] == pytest.approx([0.8, 1.0, 0.9])
    assert vip["seeds"] == {"full": [0, 1, 2], "vip": [0, 1, 2]}
    table = claims.table(claims.summarize(runs, ["T"]))
    assert "| 3 | T | preset | target_only_short | 3 / 3 | 0.90 vs 0.20: +0.70" in table
    # the cells in the header's order: final, offline, regret
    line = next(x for x in table.splitlines() if "target_only_short" in x)
    assert line.index("0.90 vs 0.20") < line.index("0.60 vs 0.10") < line.index("0.20 vs 0.70")
    assert claims.summarize(runs, ["Missing"]) == []


def test_verdict_reads_the_interval(claims):
    assert claims.verdict(0.01, 0.3) == "reproduced"
    assert claims.verdict(-0.3, -0.01) == "reversed"
    assert claims.verdict(-0.01, 0.3) == claims.verdict(0.0, 0.3) == "not shown"


@pytest.mark.slow
def test_measure_a_finished_tiny_pipeline_run(claims, tmp_path):
    """Wiring: 'final' is the stage-3 agent and 'offline' the adapted one, each on the same nominal episodes, and the
    regret comes from stage 3's evaluations."""
    import _fake_envs as fake
    from test_pipeline import tiny_pipeline_config

    from robopretrain.checkpoint import load_agent
    from robopretrain.envs.target import as_target
    from robopretrain.evaluation import evaluate
    from robopretrain.pipeline import run_pipeline

    demos = fake.write_robosuite_demos(tmp_path / "arm_demos.hdf5", 3, tasks=(("Arm", 11),), image_size=32,
                                       act_dim=4, eef_dim=7)
    cfg = tiny_pipeline_config(tmp_path / "run", demos)
    cfg.evaluate.blind = []
    cfg.evaluate.video = False
    run_pipeline(cfg)
    run = tmp_path / "run"
    got = claims.measure(run, "Arm", 3, int(cfg.stage3.eval_every))
    target = as_target(OmegaConf.to_container(cfg.targets[0], resolve=True))
    for key, stage in (("final", "stage3"), ("offline", "adapt")):
        agent, ckpt = load_agent(run / stage / "Arm")
        assert got[key]["checkpoint"] == str(ckpt.path)
        assert got[key]["successes"] == evaluate(agent, target, 3)["successes"] and got[key]["episodes"] == 3
    assert got["final"]["checkpoint"] != got["offline"]["checkpoint"]
    assert [s for s, _ in got["curve"]] == [0, 6, 12] and got["regret"]["evaluations"] == 3
    with pytest.raises(ValueError, match="not 'Other'"):
        (run / "stage3" / "Other").symlink_to(run / "stage3" / "Arm")
        (run / "adapt" / "Other").symlink_to(run / "adapt" / "Arm")
        claims.measure(run, "Other", 1, 6)
    with pytest.raises(FileNotFoundError):
        claims.measure(tmp_path / "nothing", "Arm", 1, 6)


def test_a_verdict_is_read_from_final_success_and_says_when_seeds_are_missing(claims):
    """The verdict reads final success, not offline success; on fewer seeds than the protocol's it says how many."""
    runs = {f"full/U/seed{s}": _run(40, 40, 0.2) for s in range(3)}
    runs |= {f"target_only/U/seed{s}": _run(40, 5, 0.2) for s in range(3)}  # offline clearly worse, final the same
    (row,) = claims.summarize(runs, ["U"])
    assert row["offline"]["interval"][0] > 0 and row["verdict"] == "not shown"
    one = {"full/U/seed0": _run(45, 40, 0.2), "scratch/U/seed0": _run(5, 5, 0.9)}
    (row,) = claims.summarize(one, ["U"])
    assert row["verdict"] == "reproduced (1 of 3 seeds)"
    assert row["regret"]["interval"] == pytest.approx([0.7, 0.7])  # one value per side: no spread to bootstrap


def test_measure_reads_the_regret_before_evaluating_and_errors_in_one_line(claims, tmp_path):
    """A stage 3 that logged no evaluation fails before the 2 x 50 episodes (no checkpoint is loaded here), and the
    measure sub-command reports a user's mistake as one ``error:`` line."""
    run = tmp_path / "run"
    _stage(run / "adapt" / "T")
    _stage(run / "stage3" / "T", files={"metrics.jsonl": json.dumps({"step": 1, "train/critic_loss": 1.0})})
    with pytest.raises(ValueError, match="no stage-3 evaluation rows"):
        claims.measure(run, "T", 50, 500)
    for folder, target in ((run, "T"), (tmp_path / "nothing", "T")):
        with pytest.raises(SystemExit, match="^error: .*(no stage-3 evaluation|stage not finished)"):
            claims.main(["measure", "--folder", str(folder), "--target", target, "--eval-every", "500"])
    assert not (run / claims.MEASURE_FILE).exists()


def test_pretraining_runs_fulls_first_skips_measured_runs_and_retries_unfinished_ones(claims, tmp_path, monkeypatch):
    """The driver with the pipeline and the measurement replaced: full runs before the variants, a rerun runs only
    the unmeasured run, the preset is composed once in the main thread (hydra's global state is not thread-safe)."""
    import threading

    calls, unfinished = [], {"target_only_short/T/seed1"}

    def fake_run_logged(cmd, folder, cwd):
        key = "/".join(Path(folder).parts[-3:]).replace("pixel/", "full/")
        calls.append(("measure" if "measure" in cmd else "pipeline", key))
        ok = "measure" not in cmd or key not in unfinished
        if "measure" in cmd and ok:
            m = _run(40, 30, 0.2)["measured"]
            m["final"]["success"], m["offline"]["success"] = 0.8, 0.6
            (Path(folder) / claims.MEASURE_FILE).write_text(json.dumps(m))
        return {"command": " ".join(cmd[1:]), "returncode": 0 if ok else 1, "call_seconds": 0.0}

    def eval_every(overrides):
        assert threading.current_thread() is threading.main_thread()
        return 500

    monkeypatch.setattr(claims, "run_logged", fake_run_logged)
    monkeypatch.setattr(claims, "stage3_eval_every", eval_every)
    monkeypatch.setattr(claims, "plot", lambda *a: None)
    out = tmp_path / "claims.json"
    argv = ["--targets", "T", "--seeds", "0", "1", "--variants", "target_only_short", "full", "--jobs", "2",
            "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    claims.pretraining(argv)
    pipelines = [k for kind, k in calls if kind == "pipeline"]
    assert sorted(pipelines[:2]) == ["full/T/seed0", "full/T/seed1"] and len(pipelines) == 4
    runs = json.loads(out.read_text())["runs"]
    assert "error" in runs["target_only_short/T/seed1"] and "measured" not in runs["target_only_short/T/seed1"]
    assert all("measured" in runs[k] for k in ("full/T/seed0", "full/T/seed1", "target_only_short/T/seed0"))
    calls.clear()
    unfinished.clear()
    claims.pretraining(argv)
    assert calls == [("pipeline", "target_only_short/T/seed1"), ("measure", "target_only_short/T/seed1")]
    assert "measured" in json.loads(out.read_text())["runs"]["target_only_short/T/seed1"]
    # the same runs asked with other overrides are another experiment: refused before anything runs
    calls.clear()
    with pytest.raises(SystemExit, match="^error: full/T/seed0 .* measured with overrides \\[\\], not "):
        claims.pretraining([*argv, "--override", "stage3.env_steps=10"])
    assert calls == []
    # ... and with other episodes (the table printed "5 ep." for runs measured over 2)
    with pytest.raises(SystemExit, match=r"^error: full/T/seed0 .* measured with --episodes 50, not 5"):
        claims.pretraining([*argv, "--episodes", "5"])
    # ... and into another --out on the same work folder: its runs' pipelines would skip their finished stages
    # whatever the overrides, and the new JSON recorded them as measured with them (a user's session)
    other = [a if a != str(out) else str(tmp_path / "other.json") for a in argv]
    with pytest.raises(SystemExit, match=r"^error: .*pixel/T/seed0 was run by claims.py with .*'overrides': \[\]"):
        claims.pretraining([*other, "--override", "stage3.env_steps=10"])
    assert calls == [] and not (tmp_path / "other.json").exists()


def test_summarize_only_refuses_a_missing_or_foreign_json(claims, tmp_path):
    with pytest.raises(SystemExit, match="^error: .*no results"):
        claims.pretraining(["--summarize-only", "--out", str(tmp_path / "none.json")])
    assert not (tmp_path / "none.json").exists()
    foreign = tmp_path / "testbed.json"
    foreign.write_text(json.dumps({"protocol": "benchmarks/protocols/testbed.md", "runs": {}}))
    with pytest.raises(SystemExit, match="^error: .*not this benchmark's results"):
        claims.pretraining(["--summarize-only", "--out", str(foreign)])
    assert json.loads(foreign.read_text()) == {"protocol": "benchmarks/protocols/testbed.md", "runs": {}}


def test_a_target_with_its_own_testbed_preset_is_refused(claims, tmp_path):
    """The variants' budgets (target_only's 11,000 adaptation updates, the adaptation's mix) are the testbed
    preset's: CloseDrawerPressButton's full runs use testbed_combination, so comparing them would mix presets."""
    out = tmp_path / "c.json"
    with pytest.raises(SystemExit, match="^error: \\['CloseDrawerPressButton'\\] run with their own testbed preset"):
        claims.pretraining(["--targets", "CloseDrawerPressButton", "--work-dir", str(tmp_path), "--out", str(out)])
    assert not out.exists()


def test_the_adaptation_mix_variants_reuse_the_full_runs_stage2_and_change_only_the_mix(claims, tmp_path):
    """full_prior0 / full_prior50 (stop 28's amendment): the full pipeline's stage 1 and stage 2, the adaptation with
    0% / 50% prior batches instead of 90%; nothing else differs from the full pipeline."""
    full = claims.run_dir(tmp_path, "full", "T", 0)
    for stage in ("data", "stage1", "stage2", "adapt"):
        _stage(full / stage)
    assert claims.share_stages(tmp_path, "full_prior0", "T", 0) == ["data", "stage1", "stage2"]
    assert claims.share_stages(tmp_path, "full_prior50_demos5", "T", 0) == ["data", "stage1", "stage2"]
    assert claims.split_label("full_prior0_demos5") == ("full_prior0", 5)
    preset = compose_with([])
    for name, fraction in (("full_prior0", 0.0), ("full_prior50", 0.5)):
        v = compose_with(claims.VARIANTS[name][0])
        assert v.adapt.prior_fraction == fraction != preset.adapt.prior_fraction
        v.adapt.prior_fraction = preset.adapt.prior_fraction
        assert v == preset
