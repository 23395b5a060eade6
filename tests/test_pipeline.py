"""The whole pipeline, tiny: data -> stage 1 -> stage 2 -> adaptation -> stage 3 -> evaluation -> report, then a
rerun that skips every finished stage.

The target is not a sim_envs task: :class:`_fake_envs.RobosuiteLikeEnv` named by entry point, with its own demos in
a robomimic file whose keys differ from ours (``obs_map``) and a free slot in the task one-hot (``task_id`` 11 of
12). Its proprio part has the prior data's size (7) and its actions the same 4 dims, so one agent spans both."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import _fake_envs as fake

pytestmark = pytest.mark.slow

SIZE = 32
ROOT = Path(__file__).resolve().parents[1]


def tiny_pipeline_config(run_dir: Path, demos: Path):
    cfg = OmegaConf.load(ROOT / "configs" / "pipeline.yaml")
    cfg.pop("hydra")
    cfg.merge_with({
        "run_dir": str(run_dir), "image_size": SIZE, "progress": False, "prior_tasks": ["Reach"],
        "obs": {"num_tasks": 12},
        "targets": [{"name": "Arm", "env_id": "_fake_envs:RobosuiteLikeEnv", "demos": str(demos), "task_id": 11,
                     "max_episode_steps": 10, "env_kwargs": {"image_size": SIZE, "act_dim": 4, "eef_dim": 7},
                     "obs_map": {"proprio": fake.EEF}}],
        "data": {"prior_episodes_per_task": 2, "target_demos": 3, "num_workers": 1,
                 "videos": {"num_clips": 3, "play_fraction": 0.0}},
        "stage1": {"steps": 2, "batch_size": 4, "encoder_kwargs": {"channels": 8, "out_dim": 16}},
        "encoder": {"mode": "finetune"},
        "algo_overrides": {"batch_size": 16, "actor_hidden": [32, 32], "critic_hidden": [32, 32], "n_actions": 2},
        "stage2": {"steps": 4, "eval_episodes": 0, "checkpoint_every": 2},
        "adapt": {"steps": 4, "checkpoint_every": 2},
        "stage3": {"env_steps": 12, "num_envs": 2, "asynchronous": False, "eval_every": 6, "eval_episodes": 1,
                   "checkpoint_every": 6},
        "evaluate": {"episodes": 2},
    })
    return cfg


def test_tiny_pipeline_runs_every_stage_then_skips_them(tmp_path, caplog):
    from robopretrain.checkpoint import load_agent
    from robopretrain.pipeline import STAGES, run_pipeline

    demos = fake.write_robosuite_demos(tmp_path / "arm_demos.hdf5", 3, tasks=(("Arm", 11),), image_size=SIZE,
                                       act_dim=4, eef_dim=7)
    cfg = tiny_pipeline_config(tmp_path / "run", demos)
    first = run_pipeline(cfg)
    assert list(first["stages"]) == list(STAGES)
    assert all(isinstance(v, float) for v in first["stages"].values()), first["stages"]
    run = tmp_path / "run"
    for stage in STAGES:
        assert (run / stage / "done.json").is_file()
    encoder_meta = json.loads((run / "stage1" / "encoder" / "meta.json").read_text())
    assert encoder_meta["kwargs"]["channels"] == 8 and encoder_meta["out_dim"] == 16  # stage1.encoder_kwargs used
    assert (run / "data" / "prior_demos.hdf5").is_file()
    assert not (run / "data" / "target_demos.hdf5").exists()  # the custom target brings its own demos
    for folder in (run / "stage2", run / "adapt" / "Arm", run / "stage3" / "Arm"):  # every stage: checkpoints/
        agent, ckpt = load_agent(folder)
        assert ckpt.meta["obs_spec"]["num_tasks"] == 12 and agent.mode == "finetune"
    adapt = load_agent(run / "adapt" / "Arm")[1].meta
    assert adapt["init"].startswith(str(run / "stage2")) and adapt["task_names"] == ["Arm", "Reach"]
    assert adapt["mix_task_names"] == ["Arm"]  # the target's demos, mixed into the prior data
    results = json.loads((run / "evaluate" / "results.json").read_text())
    assert set(results) == {"Arm"}
    # no randomization outside sim_envs: nominal, plus the blind-camera rows on the same nominal episodes
    assert set(results["Arm"]) == {"nominal", "blind_black", "blind_other_episode"}
    assert all(0.0 <= r["success"] <= 1.0 for r in results["Arm"].values())
    s3 = json.loads((run / "stage3" / "Arm" / "done.json").read_text())
    assert 0.0 <= s3["final_success"] <= 1.0
    from robopretrain.nets import kernels

    machine = json.loads((run / "stage3" / "done.json").read_text())["machine"]  # where the numbers were computed
    assert machine["cpu_capability"] == kernels.cpu_capability() and machine["cpu"] == kernels.cpu_model()
    assert isinstance(machine["kernels"], dict)
    rows = [json.loads(x) for x in (run / "stage3" / "Arm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows if "eval/success" in r] == [0, 6, 12]
    report = (run / "report.md").read_text()
    assert "Arm" in report and "rollout_Arm.gif" in report and "blind_black" in report
    # the adaptation's and stage 3's success with their episode counts (stage3.eval_episodes=1 for both)
    row = next(line for line in report.splitlines() if line.startswith("| Arm |"))
    assert row.split(" | ")[1].endswith("(1 ep)") and row.split(" | ")[2].endswith("(1 ep)"), row
    assert (run / "evaluate" / "rollout_Arm.gif").stat().st_size > 0
    mtimes = {s: (run / s / "done.json").stat().st_mtime_ns for s in STAGES}

    with caplog.at_level(logging.WARNING, logger="robopretrain.pipeline"):
        second = run_pipeline(cfg)
    assert second["stages"] == {s: "skipped" for s in STAGES}
    assert {s: (run / s / "done.json").stat().st_mtime_ns for s in STAGES} == mtimes
    assert not [r for r in caplog.records if "already done with other settings" in r.getMessage()]
    # a rerun with another budget skips the finished stage, and says the new value takes no effect
    cfg.stage2.steps = 8
    with caplog.at_level(logging.WARNING, logger="robopretrain.pipeline"):
        third = run_pipeline(cfg)
    assert third["stages"] == {s: "skipped" for s in STAGES}
    warned = [r.getMessage() for r in caplog.records if "already done with other settings" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("stage stage2:") and "stage2.steps: 4 -> 8" in warned[0]
    cfg.stage3.algo = "cql"  # another algorithm for a finished RL stage: said too (changed_algo's part)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.pipeline"):
        run_pipeline(cfg)
    warned = [r.getMessage() for r in caplog.records if "already done with other settings" in r.getMessage()]
    assert any(w.startswith("stage stage3:") and "name: calql -> cql" in w for w in warned), warned
    cfg.stage3.algo = "calql"
    # ... and so does the report, whose figures are the recorded settings' (it printed "(5 ep)" for 2 episodes)
    cfg.evaluate.episodes = 5
    run_pipeline(cfg)
    report = (run / "report.md").read_text()
    assert "(2 ep)" in report and "(5 ep)" not in report
    from robopretrain.evaluate import wilson_ci  # final success with its interval (it was the rate alone)

    for per in json.loads((run / "evaluate" / "results.json").read_text()).values():
        for r in per.values():
            low, high = wilson_ci(round(r["success"] * r["episodes"]), r["episodes"])
            assert f"| {r['success']:.2f} [{low:.2f}, {high:.2f}] ({r['episodes']} ep) |" in report
    assert "| **total of these sessions** |" in report
    assert "| evaluate | evaluate.episodes: 2 -> 5 |" in report and "stage2.steps: 4 -> 8" in report
    # a record of an older version, without the settings (or algorithm) it ran with, was skipped without a word
    record = (run / "stage2" / "done.json").read_text()
    older = {k: v for k, v in json.loads(record).items() if k not in ("settings", "algo")}
    (run / "stage2" / "done.json").write_text(json.dumps(older))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.pipeline"):
        run_pipeline(cfg)
    warned = [r.getMessage() for r in caplog.records if "did not record the settings" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("stage stage2: already done by an older version"), warned
    (run / "stage2" / "done.json").write_text(record)
    # the target's demo file rewritten at its path: every finished stage that read it was reused without a word
    import shutil

    shutil.copy(demos, tmp_path / "kept.hdf5")
    other = fake.write_robosuite_demos(tmp_path / "other.hdf5", 4, tasks=(("Arm", 11),), image_size=SIZE, act_dim=4,
                                       eef_dim=7)
    shutil.copy(other, demos)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.pipeline"):
        run_pipeline(cfg)
    warned = [r.getMessage() for r in caplog.records if "targets.Arm.demos" in r.getMessage()]
    assert sorted(w.split(":")[0] for w in warned) == ["stage adapt", "stage stage3"]  # those that read it
    assert all("already done with other settings or files" in w for w in warned), warned
    assert f"| adapt | targets.Arm.demos {demos}: size " in (run / "report.md").read_text()
    shutil.copy(tmp_path / "kept.hdf5", demos)  # the same bytes again: no change

    # the run folder moved whole; stage 3 killed before it finished: it resumes from its checkpoint at the new place
    # (its fingerprint's paths into the old folder refused the resume)
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    for marker in (moved / "stage3" / "done.json", moved / "stage3" / "Arm" / "done.json",
                   moved / "evaluate" / "done.json"):
        marker.unlink()
    cfg.run_dir = str(moved)
    cfg.evaluate.episodes, cfg.stage2.steps = 2, 4
    partial = moved / "stage3" / ".metrics.json.k1ll3d.tmp"  # what the killed session left half-written
    partial.write_text("half")
    with caplog.at_level(logging.INFO):
        fourth = run_pipeline(cfg)
    assert [s for s, v in fourth["stages"].items() if v != "skipped"] == ["stage3", "evaluate"]
    assert not partial.exists()  # removed as its stage's second session began
    assert "resuming a run folder moved from" in caplog.text
    assert json.loads((moved / "stage3" / "done.json").read_text())["sessions"] == 2
    assert "| stage3 |" in (moved / "report.md").read_text()
    # a resume the stage refuses names the pipeline's way to start it afresh, not the stage's resume=false
    for marker in (moved / "stage3" / "done.json", moved / "stage3" / "Arm" / "done.json",
                   moved / "evaluate" / "done.json"):
        marker.unlink()
    cfg.stage3.algo_overrides = {"policy_lr": 0.001}
    from robopretrain.run_fingerprint import ResumeMismatchError

    with pytest.raises(ResumeMismatchError, match=r"policy_lr.*to run stage3/Arm afresh with these settings, delete "
                                                  + str(moved / "stage3" / "Arm") + " ") as err:
        run_pipeline(cfg)  # the target's folder: the other targets' finished runs are kept
    assert "resume=false" not in str(err.value)
    # the report of the stages deleted to redo them went with them (it stayed, linking plots no longer there)
    assert not (moved / "report.md").exists()
    cfg.stage3.algo_overrides = {}
    cfg.stage3.algo = "cql"  # another kind of agent: refused by the agent check, with the same advice
    from robopretrain.checkpoint import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match=r"algo: checkpoint has 'calql'.*delete " + str(moved)) as err:
        run_pipeline(cfg)
    assert "resume=false" not in str(err.value) and "output_dir" not in str(err.value)


def test_a_sim_target_gets_its_own_clean_expert_demos(tmp_path):
    """The data stage's target demos of a sim_envs target (the default pipeline's): target_demos episodes of the
    expert with target_noise, all clean (no test ran this path: a noisy kind's fraction of 1 made every default run
    refuse its config, a kind's noise changed, unseen)."""
    import json

    import h5py

    from robopretrain.pipeline import data_paths, stage_data

    run = tmp_path / "run"
    cfg = tiny_pipeline_config(run, tmp_path / "unused.hdf5")
    cfg.targets = ["Reach"]
    cfg.stage1.enabled = cfg.stage2.enabled = False  # no prior demos, no videos: the target's demos alone
    cfg.obs.rgb = []
    cfg.data.target_demos, cfg.data.target_noise = 3, 0.05
    stage_data(cfg, run)
    with h5py.File(data_paths(run)["target"]) as f:
        metas = [json.loads(f["data"][d].attrs["ep_meta"]) for d in f["data"]]
        assert {f["data"][d].attrs["task"] for d in f["data"]} == {"Reach"}
    assert len(metas) == 3 and {m["kind"] for m in metas} == {"clean"}
    assert {m["expert_noise"] for m in metas} == {0.05} and {m["stop_step"] for m in metas} == {None}
    assert {m["seed_entropy"][0] for m in metas} == {int(cfg.seed) + 7}  # not the prior demos' seeds
    assert not data_paths(run)["prior"].exists() and not data_paths(run)["videos"].exists()


def test_each_rl_stage_takes_its_own_algo_overrides_over_the_common_ones(tmp_path):
    """``<stage>.algo_overrides`` reach that stage only, over ``algo_overrides``, which reach all three (e.g. the
    actor's BC term switched off in the online stage alone)."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.envs.target import as_target

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["encoder.mode=scratch", "algo_overrides.batch_size=16",
                                             "+stage2.algo_overrides.actor_bc_weight=2.0",
                                             "+stage3.algo_overrides.actor_bc_weight=0.0",
                                             "+adapt.algo_overrides.batch_size=8", "encoder.precision=bfloat16"])
    target = as_target(cfg.targets[0])
    s2 = pipeline.stage2_config(cfg, tmp_path).algo
    ad = pipeline.adapt_config(cfg, tmp_path, target).algo
    s3 = pipeline.stage3_config(cfg, tmp_path, target).algo
    assert (s2.actor_bc_weight, s2.batch_size) == (2.0, 16)
    assert (ad.actor_bc_weight, ad.batch_size, ad.actor_bc_filter) == (4.0, 8, "success")  # the pipeline's default
    assert (s3.actor_bc_weight, s3.batch_size, s3.name) == (0.0, 16, "calql")
    # the pipeline's encoder precision reaches the offline stages (stage 3 takes it from the adapted checkpoint)
    assert pipeline.stage2_config(cfg, tmp_path).encoder.precision == "bfloat16"
    assert pipeline.adapt_config(cfg, tmp_path, target).encoder.precision == "bfloat16"


def test_a_dense_reward_target_with_the_success_filter_stops_before_any_stage(tmp_path):
    """The pipeline's default offline recipe filters its BC term by sparse success; a target declaring a dense
    reward is refused before the data stage, with the override that fixes it."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    dense = "targets=[{name: Dense, env_id: 'sim_envs:TabletopEnv', reward: dense, task_id: 0}]"
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[dense, "encoder.mode=scratch"])
    with pytest.raises(ValueError, match="actor_bc_filter=none"):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()


@pytest.mark.parametrize("override,unknown", [
    ("+stage3.transfer.epopt.enabled=true", "stage3.transfer"),  # stage 3's transfer options: not the pipeline's
    ("+gap=friction_low", "gap"),
    ("+stage3.env_stepz=1", "stage3.env_stepz"),  # a typo
    ("+data.videos.num_clipz=5", "data.videos.num_clipz"),  # checked against configs/collect_videos.yaml
    ("+data.videos.hydra.run.dir=x", "data.videos.hydra"),  # that file's Hydra section is none of its settings
])
def test_keys_no_stage_reads_stop_the_pipeline_before_any_stage(tmp_path, override, unknown):
    """They ran silently without effect, and the report's config dump showed them as if used; the free-form parts
    (each stage's algo_overrides, randomization entries, collect_videos overrides) stay open."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.config_checks import check_top_level_keys

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[override, "encoder.mode=scratch"])
        fine = compose("pipeline", overrides=["+stage2.algo_overrides.actor_bc_weight=2.0", "+data.videos.fps=5",
                                              "+evaluate.settings.hard={level: eval_hard}"])
    with pytest.raises(ValueError, match=rf"pipeline config: unknown key\(s\) {unknown}[;( ]"):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    check_top_level_keys(fine, "pipeline", free=pipeline.PIPELINE_FREE_KEYS)


@pytest.mark.parametrize("key,instead", [("output", "run_dir"), ("image_size", "image_size"), ("seed", "seed"),
                                         ("overwrite", "true")])
def test_video_settings_the_pipeline_sets_itself_are_refused_under_data_videos(tmp_path, key, instead):
    """+data.videos.output=..., .image_size=48, .seed=5 were taken and replaced by the pipeline's own without a word:
    the videos went to <run>/data/videos at the pipeline's size and seed (a new user's finding)."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[f"+data.videos.{key}=5", "encoder.mode=scratch"])
    with pytest.raises(ValueError, match=rf"data.videos.{key} \(the pipeline's {instead}.*cannot be set here"):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,where", [
    ("+stage3.randomization.factor=[friction]", "stage3.randomization"),  # misspelt 'factors'
    ("+evaluate.settings.hard={level: eval_hrad}", "evaluate.settings.hard"),
    ("evaluate.robustness.select=[frction]", "evaluate.robustness.select"),
    ("+evaluate.robustness.levels.wind=[eval_hard]", "evaluate.robustness.levels"),
    ("evaluate.blind=[white]", "evaluate.blind"),  # these two failed after every training stage had run
    ("evaluate.episodes=0", "evaluate.episodes"),
    ("evaluate.episodes=abc", "evaluate.episodes"),
    ("stage1.encoder=foo", "stage1.encoder"),  # after the data stage, before
    ("+stage1.encoder_kwargs.out_dim=0", "stage1.encoder"),
])
def test_a_malformed_randomization_entry_stops_the_pipeline_before_any_stage(tmp_path, override, where):
    """Stage 3's and the evaluation's entries are read hours into a run: refused at start, naming the key.
    ``evaluate.blind=black`` (one mode) is the list of it, as other one-name lists are."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[override, "encoder.mode=scratch"])
    with pytest.raises(ValueError, match=rf"^{where}[=:]"):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        one = compose("pipeline", overrides=["evaluate.blind=black"])
    pipeline.prepare_config(one)
    assert list(one.evaluate.blind) == ["black"]


@pytest.mark.parametrize("overrides,error", [
    (["stage2.steps=-1"], r"robopretrain config: train.steps=-1; .* from its stage2 keys\)$"),
    (["stage1.steps=-2"], r"video_pretrain config: steps=-2; .* from its stage1 keys\)$"),
    (["adapt.checkpoint_every=0"], r"robopretrain config: train.checkpoint_every=0; .* from its adapt keys\)$"),
    (["stage3.utd=0"], r"finetune config: online.utd=0; .* from its stage3 keys\)$"),
    (["stage3.env_steps=0"], r"finetune config: online.env_steps=0; .* from its stage3 keys\)$"),
    # the prior demos' amounts failed only as the data stage started (a new user's session)
    (["data.prior_episodes_per_task=-3"], r"collect config: episodes_per_task=-3; .* from its data.prior_\* keys\)$"),
    (["data.prior_kinds.clean.fraction=0.9"], r"kinds.\*.fraction sum to 1.4; expected 1 .* data.prior_\* keys\)$"),
    (["stage3.eval_episodes=0"], r"finetune config: online.eval_episodes=0; .* from its stage3 keys\)$"),
    (["stage2.eval_episodes=-1"], r"train.eval_episodes=-1; expected an integer >= 0 .* from its stage2 keys\)$"),
    (["+evaluate.robustness.levels.distractors=[99]"], r"factors.distractors.levels has 99; .* evaluate.robustness"),
    (["evaluate.robustness.levels.friction=[eval_hrad]"], r"levels has 'eval_hrad'; .* evaluate.robustness keys"),
    # the sweep's amounts: refused only at the last stage, after every other had run (a new user's session)
    (["evaluate.robustness.episodes=0"], r"evaluate config: episodes=0; .* from its evaluate.robustness keys\)$"),
    (["evaluate.robustness.workers=-1"], r"evaluate config: workers=-1; .* from its evaluate.robustness keys\)$"),
    # the default encoder mode needs stage 1's encoder, which the start-up check takes from where stage 1 writes it
    (["stage2.steps=-1", "encoder.mode=finetune"], r"train.steps=-1; .* from its stage2 keys\)$"),
])
def test_a_stage_setting_out_of_range_stops_the_pipeline_before_the_data_stage(tmp_path, overrides, error):
    """Each stage checked its own config when it started: after the data stage and every stage before it (hours
    with the paper preset). The pipeline makes every stage's config at start and runs the stage's checks."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=overrides)
    with pytest.raises(ValueError, match=error):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,error", [
    ("device=gpu", r"pipeline config: device='gpu' is not a device name"),  # the paper preset collected for minutes
    ("data.target_demos=0", r"pipeline config: data.target_demos=0; expected an integer >= 1"),
    ("adapt.prior_fraction=1.2", r"pipeline config: adapt.prior_fraction=1.2; expected a number in \[0, 1\]"),
    # a flag given as "no" ran the stage it switches off, a float budget was truncated (a user's session)
    ("stage2.enabled=no", r"pipeline config: stage2.enabled='no'; expected true or false"),
    ("compile=off", r"pipeline config: compile='off'; expected true or false"),
    ("stage2.steps=1.5", r"pipeline config: stage2.steps=1.5; expected an integer$"),
    ("stage2.steps=abc", r"pipeline config: stage2.steps='abc'; expected an integer$"),
    ("evaluate.robustness.video=yes", r"pipeline config: evaluate.robustness.video='yes'; expected true or false"),
    # refused after every offline stage (num_envs), after the demos (the videos' settings), with "[Errno 2] No such
    # file or directory: .../icvff.yaml" (the objective)
    ("stage3.num_envs=0", r"finetune config: online.num_envs=0; expected an integer >= 1 .* from its stage3 keys"),
    ("+data.videos.play_fraction=2", r"collect_videos config: play_fraction=2; expected a number in \[0, 1\] \(in "
                                     r"the stage config the pipeline makes from its data.videos keys\)"),
    ("image_size=33", r"collect_videos config: image_size=33; expected an even number"),
    ("stage1.objective=icvff", r"pipeline config: stage1.objective='icvff'; expected one of \['icvf', 'none', 'tcn', "
                               r"'vip'\]"),
])
def test_a_bad_device_or_amount_stops_the_pipeline_before_the_data_stage(tmp_path, override, error):
    """Each was found by the stage that reads it (stage 1 for the device, the adaptation for the amounts): after
    minutes to hours of data collection and stage 2."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[override, "encoder.mode=scratch"])
    with pytest.raises(ValueError, match=error):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_finished_stage_after_an_unfinished_one_is_refused_before_any_stage(tmp_path):
    """Deleting only stage3/ of a finished run retrained stage 3, skipped the finished evaluation and reported its
    numbers (computed from the old stage 3) beside the new ones (stop 60's note)."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    run = tmp_path / "run"
    for stage in ("data", "stage1", "stage2", "adapt", "evaluate"):  # stage3 deleted by the user
        (run / stage).mkdir(parents=True)
        (run / stage / "done.json").write_text("{}")
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["encoder.mode=scratch"])
    with pytest.raises(ValueError, match=r"stage stage3 of .* is not finished but the later stage\(s\) evaluate are.*"
                                         r"Delete " + str(run / "evaluate") + " too"):
        pipeline.run_pipeline(cfg, run)
    assert sorted(p.name for p in run.iterdir()) == ["adapt", "data", "evaluate", "stage1", "stage2"]
    assert [p.name for p in (run / "evaluate").iterdir()] == ["done.json"]
    pipeline.check_stage_order(run.parent / "empty")  # nothing finished, or every stage: no refusal
    (run / "stage3").mkdir()
    (run / "stage3" / "done.json").write_text("{}")
    pipeline.check_stage_order(run)


def test_an_encoder_mode_without_a_stage1_encoder_stops_before_the_data_stage(tmp_path):
    """stage1.enabled=false with the default encoder.mode=finetune failed in stage 2, after the data stage (which then
    skipped the videos, so enabling stage 1 later failed too); a state-only run (no camera) needs no encoder."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["stage1.enabled=false", "image_size=32", "prior_tasks=[Reach]",
                                             "data.prior_episodes_per_task=1", "data.target_demos=1"])  # if it ran
    with pytest.raises(ValueError, match=r"encoder.mode=finetune starts from the stage-1 encoder, which "
                                         r"stage1.enabled=false does not train; use encoder.mode=scratch"):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    run = tmp_path / "run"
    states = OmegaConf.merge(cfg, {"obs": {"rgb": []}})
    pipeline.check_stage1_encoder(states, run)
    assert pipeline.stage2_config(states, run).encoder.checkpoint is None  # stage 2 builds without an encoder
    pipeline.check_stage1_encoder(OmegaConf.merge(cfg, {"encoder": {"mode": "scratch"}}), run)
    enabled = OmegaConf.merge(cfg, {"stage1": {"enabled": True}})
    pipeline.check_stage1_encoder(enabled, run)  # stage 1 will train it
    pipeline.write_json(run / "stage1" / pipeline.DONE, {"stage": "stage1", "result": {"encoder": None}})
    for config in (enabled, cfg):  # refused the same way whichever stage1.enabled the rerun has
        with pytest.raises(ValueError, match=r"this run's stage 1 finished without one.*delete .*stage1 and the "
                                             r"later stages' folders and run with stage1.enabled=true"):
            pipeline.check_stage1_encoder(config, run)
    (run / "stage1" / "encoder").mkdir()  # a rerun of a run whose stage 1 trained the encoder
    (run / "stage1" / "encoder" / "meta.json").write_text("{}")
    pipeline.check_stage1_encoder(cfg, run)
    (run / "stage1" / "encoder" / "meta.json").unlink()
    for stage in ("stage2", "adapt", "stage3"):  # nothing left that reads an encoder
        pipeline.write_json(run / stage / pipeline.DONE, {"stage": stage})
    pipeline.check_stage1_encoder(enabled, run)
    pipeline.check_stage1_encoder(cfg, run)


def test_stage1_collects_the_videos_the_data_stage_skipped(tmp_path, monkeypatch):
    """A run whose data stage ran with stage 1 disabled has no videos: stage 1, enabled later, collects them into
    <run>/data/videos before training on them (it trained on a missing folder)."""
    from hydra import compose, initialize_config_dir

    import sim_envs.collect_videos
    import video_pretrain.train
    from robopretrain import pipeline

    calls = []

    def collect(c, progress=True):
        calls.append(("collect", c.output))
        (Path(c.output) / "manifest.csv").parent.mkdir(parents=True)
        (Path(c.output) / "manifest.csv").write_text("path,num_frames,text\n")

    def train(c, run_dir):
        calls.append(("train", c.data.path))
        return run_dir / "encoder"

    monkeypatch.setattr(sim_envs.collect_videos, "collect_videos", collect)
    monkeypatch.setattr(video_pretrain.train, "train", train)
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline")
    videos = str(tmp_path / "data" / "videos")
    pipeline.stage_stage1(cfg, tmp_path)
    pipeline.stage_stage1(cfg, tmp_path)  # the manifest is there: not collected again
    assert calls == [("collect", videos), ("train", videos), ("train", videos)]


def test_a_demo_file_inside_a_moved_run_folder_is_no_change(tmp_path):
    """A run folder holding its target's demos, moved whole: the recorded file is the moved one, not a change (the
    rerun said the finished stages took no effect); the file rewritten at its new place is one."""
    import shutil

    from robopretrain.pipeline import changed_input_files, stage_input_files

    (tmp_path / "a").mkdir()
    demos = fake.write_robosuite_demos(tmp_path / "a" / "arm.hdf5", 2, tasks=(("Arm", 11),), image_size=SIZE,
                                       act_dim=4, eef_dim=7)
    done = {"inputs": stage_input_files(tiny_pipeline_config(tmp_path / "a", demos), "adapt", tmp_path / "a")}
    assert stage_input_files(tiny_pipeline_config(tmp_path / "a", demos), "data", tmp_path / "a") is None
    shutil.move(tmp_path / "a", tmp_path / "b")
    cfg = tiny_pipeline_config(tmp_path / "b", tmp_path / "b" / "arm.hdf5")
    assert changed_input_files(cfg, "adapt", done, tmp_path / "b") == ""
    other = fake.write_robosuite_demos(tmp_path / "other.hdf5", 3, tasks=(("Arm", 11),), image_size=SIZE, act_dim=4,
                                       eef_dim=7)
    shutil.copy(other, tmp_path / "b" / "arm.hdf5")
    assert "content changed" in changed_input_files(cfg, "adapt", done, tmp_path / "b")


def test_the_report_marks_a_disabled_stage_and_has_no_empty_rollouts_section(tmp_path):
    """report.md listed a stage its config disabled as run (0.0 s), and a "## Rollouts" heading with nothing under it
    when evaluate.video=false."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.report import write_report

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["stage1.enabled=false", "encoder.mode=scratch"])
    pipeline.write_json(tmp_path / "stage1" / pipeline.DONE, {"stage": "stage1", "seconds": 0.0, "finished": "now",
                                                             "result": pipeline.stage_stage1(cfg, tmp_path)})
    pipeline.write_json(tmp_path / "data" / pipeline.DONE, {"stage": "data", "seconds": 3.0, "finished": "now",
                                                           "result": {"prior": "p.hdf5"}})
    report = write_report(cfg, tmp_path).read_text()
    assert "| stage1 (skipped: stage1.enabled=false (no video pretraining)) | 0.0 |" in report
    assert "| data | 3.0 |" in report and "## Rollouts" not in report
    (tmp_path / "evaluate" / "rollout_Reach.gif").write_bytes(b"GIF89a")
    assert "## Rollouts\n\n![rollout_Reach](evaluate/rollout_Reach.gif)" in write_report(cfg, tmp_path).read_text()
    # stage 2's per-task success says over how many episodes (stage2.eval_episodes); a row without the count (a run
    # before counts were logged) prints none
    (tmp_path / "stage2").mkdir()
    row = {"step": 40, "eval/success": 0.5, "eval/episodes": 7}
    (tmp_path / "stage2" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    assert "Each task's success over 7 episodes (stage 2's last evaluation, update 40)." in \
        write_report(cfg, tmp_path).read_text()
    del row["eval/episodes"]
    (tmp_path / "stage2" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    assert "episodes (stage 2's" not in write_report(cfg, tmp_path).read_text()
    # the header of a run with cameras names its encoder; a state-only run's named one it did not have
    assert "encoder mode `scratch`, stage-1 objective `none`, encoder `small_conv` at 64 px, cameras [" in \
        write_report(cfg, tmp_path).read_text()
    cfg.obs.rgb = []
    assert f"Run folder `{tmp_path}`; no cameras (no image encoder), low-dim parts" in \
        write_report(cfg, tmp_path).read_text()
    row["eval/episodes"] = 1
    (tmp_path / "stage2" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    assert "Each task's success over 1 episode (stage 2's" in write_report(cfg, tmp_path).read_text()
    # stage 3's cumulative regret: the mean of 1 - success over its finished training episodes, their count beside
    (tmp_path / "evaluate" / "results.json").write_text(json.dumps({"Reach": {"nominal": {"success": 0.3,
                                                                                         "episodes": 20}}}))
    (tmp_path / "stage3" / "Reach").mkdir(parents=True)
    pipeline.write_json(tmp_path / "stage3" / "Reach" / pipeline.DONE, {"final_success": 0.5, "cumulative_regret": 0.9})
    (tmp_path / "stage3" / "Reach" / "metrics.jsonl").write_text(json.dumps(
        {"env_steps": 600, "episodes": 10, "eval/success": 0.5, "eval/episodes": 4}) + "\n")
    row = [line for line in write_report(cfg, tmp_path).read_text().splitlines() if line.startswith("| Reach |")]
    assert row == ["| Reach | n/a | 0.50 (4 ep) | 0.90 (10 ep) | 0.30 [0.15, 0.52] (20 ep) |"]


def test_a_disabled_stage_2_logs_no_algorithm_overrides(caplog):
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["stage2.enabled=false", "encoder.mode=scratch"])
    with caplog.at_level(logging.INFO, logger="robopretrain.pipeline"):
        pipeline.log_stage_algos(cfg)
    logged = [r.getMessage().split(" ")[0] for r in caplog.records if "algo overrides" in r.getMessage()]
    assert logged == ["adapt", "stage3"]


def test_the_robustness_sweep_runs_the_selected_factors_only():
    """A levels={friction: [...]} override merges into the default mapping (Hydra), so a shorter sweep had no way:
    evaluate.robustness.select names the factors."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["evaluate.robustness.select=[friction,camera]",
                                             "evaluate.robustness.levels.camera=[eval_easy,eval_hard]"])
        c = pipeline.robustness_config(cfg, Path("ckpt"), pipeline.as_target("Reach"), Path("out"))
    assert list(c.select) == ["friction", "camera"] and list(c.factors.camera.levels) == ["eval_easy", "eval_hard"]
    assert pipeline.robustness_levels(OmegaConf.merge(cfg, {"evaluate": {"robustness": {"select": "mass"}}}),
                                      c.factors) == {"mass": ["eval_hard"]}
    off = OmegaConf.merge(cfg, {"evaluate": {"robustness": {"enabled": False, "select": ["wind"]}}})
    pipeline.check_randomizations(off)  # a sweep that does not run is not checked
    with pytest.raises(ValueError, match="evaluate.robustness.select"):
        pipeline.check_randomizations(OmegaConf.merge(off, {"evaluate": {"robustness": {"enabled": True}}}))


def test_device_auto_and_one_target_alone_reach_every_stage_as_names():
    """device=auto is resolved once (each stage got the literal 'auto', which torch refuses); targets=Reach is a list
    of one target (targets_of iterated the string's letters)."""
    import torch
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["device=auto", "targets=Reach", "encoder.mode=scratch"])
    pipeline.prepare_config(cfg)
    assert cfg.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [t.name for t in pipeline.targets_of(cfg)] == ["Reach"]
    assert pipeline.stage1_config(cfg, Path("/tmp/r"))["device"] == cfg.device


@pytest.mark.parametrize("target,error", [
    ("{name: Arm, env_id: '_fake_envs:RobosuiteLikeEnv', task_id: 11, env_kwargs: {act_dim: 4, eef_dim: 7}, "
     "obs_map: {proprio: robot0_eef_pos}}", r"\(gym\): give its demos"),
    ("{name: Arm, env_id: '_fake_envs:RobosuiteLikeEnv', task_id: 11, demos: /no/such/demos.hdf5}",
     r"demos=/no/such/demos.hdf5 not found"),
    ("{name: reach-v3, family: metaworld}", r"takes task slot 0 of the agent's one-hot, which prior task 'Reach'"),
])
def test_a_target_without_its_demos_stops_the_pipeline_before_the_data_stage(tmp_path, target, error):
    """Found only after the prior demos were collected (minutes), or after stage 2 (a Meta-World target's default
    task slot is a prior task's); now before any stage."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[f"targets=[{target}]", "encoder.mode=scratch", "prior_tasks=[Reach]"])
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_target_whose_demos_give_a_part_another_size_stops_before_the_data_stage(tmp_path):
    """A 4-D proprio (Meta-World's hand and gripper) beside sim_envs's 7-D: refused at start, naming both sizes and
    the way out; it was found by the adaptation, after stage 2. Leaving the part out is accepted."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    demos = fake.write_robosuite_demos(tmp_path / "arm.hdf5", 2, tasks=(("Arm", 11),), act_dim=4, eef_dim=4)
    target = (f"targets=[{{name: Arm, env_id: '_fake_envs:RobosuiteLikeEnv', task_id: 11, demos: {demos}, "
              f"obs_map: {{proprio: {fake.EEF}}}, env_kwargs: {{act_dim: 4, eef_dim: 4}}}}]")
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[target, "encoder.mode=scratch", "prior_tasks=[Reach]", "obs.num_tasks=12",
                                             "obs.low_dim=[proprio]"])
    with pytest.raises(ValueError, match=r"target 'Arm' \(gym\): low-dim part 'proprio' has size 4 in its demos "
                                         rf"\({fake.EEF}\), 7 in the prior \(sim_envs\) data; .*obs.low_dim=\[\]"):
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # what else the adaptation found only after stage 2: a part its demos or the prior data lack, a camera they lack,
    # a slot outside the one-hot
    for low_dim, said in ((["object"], r"'object' is not in its demos \(object; they have \['agentview_image', "),
                          (["goal"], r"'goal' is not in the prior \(sim_envs\) data, which has \['object', "
                                     r"'proprio'\]")):
        cfg.obs.low_dim = low_dim
        with pytest.raises(ValueError, match=said):
            pipeline.check_targets(cfg)
    cfg.obs.low_dim = []
    pipeline.check_targets(cfg)  # without the part: nothing to refuse (16 px demos are read resized to 64)
    cfg.obs.rgb = ["wrist_image"]
    with pytest.raises(ValueError, match=r"camera 'wrist_image' is not in its demos \(wrist_image; they have "):
        pipeline.check_targets(cfg)
    cfg.obs.rgb = ["agentview_image"]
    cfg.obs.num_tasks = 11
    with pytest.raises(ValueError, match=r"task slot 11 is outside the agent's task one-hot of 11 .*set obs.num_tasks "
                                         r"above 11"):
        pipeline.check_targets(cfg)
    cfg.obs.num_tasks = 12
    # an action size other than the prior robot's 4: the adaptation refused the demos after stage 2 (a new user's
    # 3-D robot), or stage 3 the env
    cfg.targets[0].env_kwargs.act_dim = 3
    with pytest.raises(ValueError, match=r"target 'Arm' \(gym\): its env: 3 action dims, the prior "
                                         r"\(sim_envs\) robot's 4; .*pretrain on data of the target's robot"):
        pipeline.check_targets(cfg)
    cfg.targets[0].env_kwargs.act_dim = 4
    cfg.targets[0].demos = str(fake.write_robosuite_demos(tmp_path / "arm7.hdf5", 2, tasks=(("Arm", 11),), eef_dim=4))
    with pytest.raises(ValueError, match=r"its demos \(.*arm7.hdf5\): 7 action dims"):
        pipeline.check_targets(cfg)


def test_a_metaworld_targets_default_slot_is_free_without_stage_2(tmp_path, monkeypatch):
    """Without stage 2 the adaptation trains on the target's demos alone: no prior task shares its slot. A demos
    folder is accepted at start (converted there, as the adaptation converts it: an empty folder is refused now, not
    after stage 2)."""
    from hydra import compose, initialize_config_dir

    import _formats as F
    from robopretrain import pipeline
    from robopretrain.data.episodes import ConversionError

    (tmp_path / "empty").mkdir()
    F.write_lerobot(tmp_path / "mw_lerobot")  # demos in a folder format (LeRobot, Minari): found (is_file refused it)
    target = "targets=[{name: reach-v3, family: metaworld, demos: %s}]"
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg, empty = (compose("pipeline", overrides=[target % (tmp_path / folder), "encoder.mode=scratch",
                                                     "prior_tasks=[Reach]", "stage2.enabled=false"])
                      for folder in ("mw_lerobot", "empty"))
    monkeypatch.setenv("ROBOPRETRAIN_CACHE_DIR", str(tmp_path / "cache"))  # where the start converts the demos
    pipeline.check_targets(cfg)  # no refusal
    with pytest.raises(ConversionError, match="format not recognised"):
        pipeline.check_targets(empty)
    cfg.stage2.enabled = True
    with pytest.raises(ValueError, match="takes task slot 0"):
        pipeline.check_targets(cfg)


@pytest.mark.parametrize("name,file_task,refused", [("Reach", "Arm", True), ("MyReach", "Reach", False)])
def test_the_slot_check_reads_the_task_names_of_the_targets_demos(tmp_path, name, file_task, refused):
    """The adaptation refuses a slot whose prior task and mixed-in task have different names in their files
    (build.check_task_slots); the start-up check compares the same names: a target called Reach whose demos are
    another task is refused before any stage (it passed, and failed after stage 2), and a target with another name
    whose demos are Reach's is accepted (it was refused, though the adaptation takes it)."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    demos = fake.write_robosuite_demos(tmp_path / "d.hdf5", 2, tasks=((file_task, 0),), image_size=SIZE, act_dim=4)
    target = (f"targets=[{{name: {name}, env_id: '_fake_envs:RobosuiteLikeEnv', task_id: 0, demos: {demos}, "
              "env_kwargs: {act_dim: 4}}]")
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[target, "encoder.mode=scratch", "prior_tasks=[Reach]",
                                             "obs.low_dim=[]", f"image_size={SIZE}"])  # what its demos give
    assert pipeline.target_task_names(cfg, pipeline.targets_of(cfg)[0]) == [file_task]
    if refused:
        with pytest.raises(ValueError, match=r"takes task slot 0 .* prior task 'Reach' holds \(the target's demos "
                                             r"are task 'Arm'\)"):
            pipeline.check_targets(cfg)
    else:
        pipeline.check_targets(cfg)


def test_a_sim_envs_target_with_its_own_demos_and_reward_free_demos_are_refused_at_start(tmp_path, monkeypatch):
    """A sim_envs target with its own demos file goes in its task's slot (the adaptation puts it there): a file of
    another task in a prior task's slot was refused only after stage 2. A target demos file without rewards, which
    the adaptation's CQL and stage 3's Cal-QL need, was refused after stage 2 with advice (data.rewards_from_success)
    the pipeline has no key for."""
    import h5py
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    monkeypatch.setenv("ROBOPRETRAIN_CACHE_DIR", str(tmp_path / "cache"))  # the start converts other formats
    other = fake.write_robosuite_demos(tmp_path / "arm.hdf5", 2, tasks=(("Arm", 0),), image_size=SIZE)
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[f"targets=[{{name: Reach, demos: {other}}}]", "encoder.mode=scratch",
                                             "prior_tasks=[Reach]"])
    with pytest.raises(ValueError, match=r"target 'Reach' \(sim_envs\) takes task slot 0 .* demos are task 'Arm'"):
        pipeline.check_targets(cfg)
    free = fake.write_robosuite_demos(tmp_path / "free.hdf5", 2, tasks=(("Arm", 11),), image_size=SIZE, act_dim=4)
    with h5py.File(free, "r+") as f:
        del f["data/demo_1/rewards"]
    target = (f"targets=[{{name: Arm, env_id: '_fake_envs:RobosuiteLikeEnv', task_id: 11, demos: {free}, "
              "env_kwargs: {act_dim: 4}}]")
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[target, "encoder.mode=scratch", "prior_tasks=[Reach]",
                                             "obs.num_tasks=12", "obs.low_dim=[]", f"image_size={SIZE}"])
    with pytest.raises(ValueError, match=r"target 'Arm': 1 of its demos \(demo_1\) have no rewards dataset, which "
                                         r"the adaptation \(cql\) and stage 3 \(calql\) need"):
        pipeline.check_targets(cfg)
    cfg.data.target_demos = 1  # the adaptation selects demo_0 only: rewarded
    pipeline.check_targets(cfg)
    # a copy rewarded by a learned reward: stage 3 refuses it in its batches (online steps get the env's reward),
    # which the pipeline found after stage 2; now at start, naming the pipeline's key
    with h5py.File(free, "r+") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        f["data"].attrs["env_args"] = json.dumps({**env_args, "learned_reward": {"source": "x.hdf5"}})
    with pytest.raises(ValueError, match=r"learned reward .* with stage3.offline_ratio=0.5 every batch would mix .* "
                                         r"or stage3.offline_ratio=0 to train on online steps alone"):
        pipeline.check_targets(cfg)
    cfg.stage3.offline_ratio = 0.0
    # ... and the adaptation would mix it with the prior data's env rewards (stage 2 refuses that, after stage 2)
    with pytest.raises(ValueError, match=r"target 'Arm': its demos .* hold a learned reward .* the adaptation mixes "
                                         r"them with the prior data, whose rewards are the env's"):
        pipeline.check_targets(cfg)
    cfg.adapt.prior_fraction = 0.0  # the target's demos alone
    pipeline.check_targets(cfg)
    cfg.adapt.prior_fraction, cfg.adapt.algo = 0.9, "bc"  # BC reads no rewards
    pipeline.check_targets(cfg)
    # another format without rewards (converted only after stage 2, where it was refused hours in)
    from _formats import write_lerobot, write_ogbench

    for name, src in (("ogbench", write_ogbench(tmp_path / "free.npz")),
                      ("lerobot", write_lerobot(tmp_path / "free_lerobot", rewards=False)),
                      (None, write_ogbench(tmp_path / "rewarded.npz", masks=True))):
        with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
            cfg = compose("pipeline", overrides=[target.replace(str(free), str(src)), "encoder.mode=scratch",
                                                 "prior_tasks=[Reach]", "obs.num_tasks=12", "obs.low_dim=[]",
                                                 f"image_size={SIZE}", "stage2.enabled=false"])
            # (without stage 2: these sources have no camera, which the start now finds in their conversion)
        if name is None:
            pipeline.check_targets(cfg)
            continue
        with pytest.raises(ValueError, match=rf"target 'Arm': its demos {src} record no rewards .* the adaptation "
                                             r"\(cql\) and stage 3 \(calql\) need"):
            pipeline.check_targets(cfg)
        cfg.adapt.algo = cfg.stage3.algo = "bc"  # behaviour cloning needs none
        pipeline.check_targets(cfg)


def test_common_algo_overrides_reach_only_the_algorithms_that_have_them(tmp_path):
    """``algo_overrides`` holds CQL keys (``n_actions``, the actor's BC term); a stage running IQL or BC gets only
    the keys its config has, so ``stage2.algo=iql`` builds an agent instead of failing on ``n_actions``."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.algos import make_config

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["stage2.algo=iql", "encoder.mode=scratch"])
    algo = pipeline.stage2_config(cfg, tmp_path).algo
    assert algo.name == "iql" and algo.batch_size == 32 and "n_actions" not in algo and "actor_bc_weight" not in algo
    make_config("iql", {k: v for k, v in algo.items() if k != "name"})  # raises on an unknown key


@pytest.mark.parametrize("preset", ["pipeline", "testbed"])
def test_every_rl_stage_of_the_presets_gets_the_success_filtered_bc_term(tmp_path, preset):
    """The recipe that made stage 2 learn its prior tasks and kept stage 3 from unlearning the adapted agent (testbed
    versions 2 -> 3: without the term in stage 3 the oracle fell from 1.00 to 0.45) reaches all three RL stages."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.envs.target import as_target

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose(preset, overrides=["encoder.mode=scratch"])
    target = as_target(cfg.targets[0])
    for algo in (pipeline.stage2_config(cfg, tmp_path).algo, pipeline.adapt_config(cfg, tmp_path, target).algo,
                 pipeline.stage3_config(cfg, tmp_path, target).algo):
        assert (algo.actor_bc_weight, algo.actor_bc_filter, algo.policy_lr) == (4.0, "success", 3e-4), algo.name


def test_stage_configs_evaluate_and_checkpoint_where_the_pipeline_says(tmp_path):
    """Stage 1 evaluates and checkpoints three times per run (at least every step); stage 2 evaluates its prior tasks
    with ``eval_episodes`` episodes, even one, and not at all with zero."""
    from robopretrain.pipeline import stage1_config, stage2_config

    cfg = tiny_pipeline_config(tmp_path / "run", tmp_path / "demos.hdf5")
    cfg.stage1.steps = 10
    s1 = stage1_config(cfg, tmp_path / "run")
    assert (s1.eval_every, s1.checkpoint_every) == (3, 3)
    cfg.stage1.steps = 2
    assert stage1_config(cfg, tmp_path / "run").checkpoint_every == 1
    cfg.encoder.mode = "scratch"  # no stage-1 encoder in this folder
    for episodes, targets in ((1, None), (0, [])):
        cfg.stage2.eval_episodes = episodes
        train = stage2_config(cfg, tmp_path / "run").train
        assert train.eval_targets == targets and train.eval_episodes == episodes, (episodes, train.eval_targets)


def test_a_rerun_removes_the_partial_files_a_killed_session_left(tmp_path):
    """A data stage killed mid-write left ``.prior_demos.hdf5.<random>.tmp`` beside the run's files for good."""
    from robopretrain.pipeline import remove_partial_files

    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    keep = [data / "prior_demos.hdf5", data / "videos" / "manifest.csv", data / "notes.tmp"]
    for path in keep:
        path.write_text("x")
    stale = [data / ".prior_demos.hdf5.ab12cd.tmp", data / "videos" / ".manifest.csv.77.tmp"]
    for path in stale:
        path.write_text("half")
    (data / ".ckpt_00000004.x1.tmp").mkdir()  # a half-written checkpoint folder, with its files
    (data / ".ckpt_00000004.x1.tmp" / ".weights.pt.y.tmp").write_text("half")
    stale.append(data / ".ckpt_00000004.x1.tmp")
    assert sorted(remove_partial_files(data)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_a_moved_run_folders_paths_are_not_settings_that_changed(tmp_path):
    """Demos kept inside the run folder: after ``mv`` the rerun listed the targets' demo paths as settings of the
    adaptation that took no effect (report and log), though only the folder's place had changed."""
    from robopretrain.pipeline import changed_settings, stage_settings

    old, new = tmp_path / "run", tmp_path / "moved"
    done = {"settings": stage_settings(tiny_pipeline_config(old, old / "arm.hdf5"), "adapt"), "run_dir": str(old)}
    cfg = tiny_pipeline_config(new, new / "arm.hdf5")
    assert changed_settings(cfg, "adapt", done, new) == ""
    assert "arm.hdf5" in changed_settings(cfg, "adapt", done)  # without the new place: a path that changed
    cfg.adapt.steps = 8
    assert changed_settings(cfg, "adapt", done, new) == "adapt.steps: 4 -> 8"


def test_the_start_up_checks_read_a_target_files_metadata_once_per_version(tmp_path, monkeypatch):
    """check_targets read the target's robomimic metadata three to four times (sizes, task names, rewards, learned
    reward): every demo's attributes of a user's file, each time. Once now; a rewritten file is read again."""
    import os

    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.data import hdf5

    demos = fake.write_robosuite_demos(tmp_path / "arm.hdf5", 2, tasks=(("Arm", 11),), act_dim=4, eef_dim=7)
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[
            f"targets=[{{name: Arm, env_id: '_fake_envs:RobosuiteLikeEnv', task_id: 11, demos: {demos}, "
            f"obs_map: {{proprio: {fake.EEF}}}, env_kwargs: {{act_dim: 4, eef_dim: 7}}}}]", "encoder.mode=scratch",
            "prior_tasks=[Reach]", "obs.num_tasks=12", "obs.low_dim=[proprio]"])
    reads = []
    real = hdf5.read_info
    monkeypatch.setattr(hdf5, "read_info", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    pipeline._read_demo_info.cache_clear()
    pipeline.check_targets(cfg)
    assert len(reads) == 1
    pipeline.check_targets(cfg)
    assert len(reads) == 1
    stat = os.stat(demos)
    os.utime(demos, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the user rewrote it
    pipeline.check_targets(cfg)
    assert len(reads) == 2


def test_the_command_prints_each_targets_success_and_the_report(tmp_path, monkeypatch, capsys):
    """``python -m robopretrain.pipeline``'s last lines: per target, each condition's success, then the report."""
    import robopretrain.pipeline as pipeline

    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "results.json").write_text(json.dumps(
        {"Arm": {"nominal": {"success": 0.5}, "blind_black": {"success": 0.0}}}))
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: {"run_dir": str(tmp_path), "stages": {},
                                                                "report": str(tmp_path / "report.md")})
    pipeline.main.__wrapped__(OmegaConf.create({}))  # the task under Hydra's decorator
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["target Arm: nominal success 0.50, blind_black success 0.00", f"report: {tmp_path / 'report.md'}"]


def test_an_unfinished_data_stage_keeps_its_files_only_for_the_same_settings(tmp_path):
    """A data stage that failed after its demos were collected was rerun with data.prior_episodes_per_task=3: it kept
    the 2-episode file and recorded 3 in done.json, so no later rerun could tell (a user's session)."""
    import h5py

    from robopretrain import pipeline

    cfg = tiny_pipeline_config(tmp_path / "run", tmp_path / "unused.hdf5")
    cfg.targets = ["Reach"]
    cfg.stage1.enabled = False
    cfg.data.num_workers = 0
    run = tmp_path / "run"
    pipeline.stage_data(cfg, run)
    prior, target = pipeline.data_paths(run)["prior"], pipeline.data_paths(run)["target"]
    stamps = {p: p.stat().st_mtime_ns for p in (prior, target)}
    cfg.data.num_workers = 2  # no effect on the files' content: kept
    pipeline.stage_data(cfg, run)
    assert {p: p.stat().st_mtime_ns for p in (prior, target)} == stamps
    cfg.data.prior_episodes_per_task = 3
    with pytest.raises(ValueError, match=r"prior_demos.hdf5 was collected by an earlier, unfinished data stage with "
                                         r"other settings \(episodes_per_task: 2 -> 3\); delete it"):
        pipeline.stage_data(cfg, run)
    cfg.data.prior_episodes_per_task = 2
    cfg.data.target_demos = 4
    with pytest.raises(ValueError, match=r"target_demos.hdf5 was collected .* \(episodes_per_task: 3 -> 4\)"):
        pipeline.stage_data(cfg, run)
    with h5py.File(prior, "r") as f:
        assert len([k for k in f["data"] if k.startswith("demo_")]) == 2


def test_a_sim_envs_targets_own_task_id_outside_the_one_hot_is_refused():
    """A sim_envs target without demos keeps its task's slot, but a task_id of its own is checked like a gym
    target's (one of family, task_id, demos is enough to give it its own slot)."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.envs.target import as_target

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline")
    pipeline.check_target_sizes(cfg, as_target({"name": "PressLitButton", "task_id": 3}))
    with pytest.raises(ValueError, match=r"target 'PressLitButton' \(sim_envs\): task slot 99 is outside"):
        pipeline.check_target_sizes(cfg, as_target({"name": "PressLitButton", "task_id": 99}))


def test_a_gym_targets_env_observation_is_checked_at_the_start_against_the_parts_the_agent_reads():
    """The start checked a target's demos against the prior data's parts, not its env: an env whose part (through
    the target's obs_map) is missing or of another size than the prior robot's was refused by stage 3, after the
    data stage, stage 1 and stage 2 (a new user's finding). Not built at all with probe_step: false."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.envs.target import EnvContractError, as_target

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["obs.num_tasks=40"])

    def target(eef_dim: int, key: str = "robot0_eef_pos", **more):
        return as_target({"name": "robo", "env_id": "_fake_envs:RobosuiteLikeEnv", "task_id": 30,
                          "max_episode_steps": 20, "env_kwargs": {"eef_dim": eef_dim, "act_dim": 4},
                          "obs_map": {"proprio": key}, **more})

    pipeline.check_target_sizes(cfg, target(7))  # the prior's 7-D proprio, its camera: fits
    with pytest.raises(ValueError, match=r"low_dim part 'proprio': the env of target 'robo' has size 3, the agent "
                                         r"stage 2 trains on the prior data has 7"):
        pipeline.check_target_sizes(cfg, target(3))
    with pytest.raises(EnvContractError, match=r"target 'robo': obs_map=.*no key 'robot0_eef_poss'"):
        pipeline.check_target_sizes(cfg, target(7, "robot0_eef_poss"))
    cfg.obs.rgb = ["wrist_image"]
    with pytest.raises((ValueError, EnvContractError), match=r"target 'robo'.*wrist_image"):
        pipeline.check_target_sizes(cfg, target(7))
    pipeline.check_target_sizes(cfg, target(3, probe_step=False))  # a robot not to be touched: not built


def test_without_stage_2_the_adaptation_trains_on_the_target_data_alone(tmp_path):
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline
    from robopretrain.envs.target import as_target

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["stage2.enabled=false", "encoder.mode=scratch"])
    target = as_target(cfg.targets[0])
    adapt = pipeline.adapt_config(cfg, tmp_path, target)
    assert adapt.data.path == str(pipeline.data_paths(tmp_path)["target"]) and list(adapt.data.tasks) == [target.name]
    assert adapt.data.mix.path is None and adapt.get("init") is None  # no prior data, no stage-2 checkpoint


def test_stage_3_records_the_last_evaluation_and_its_own_duration(tmp_path, monkeypatch):
    """done.json holds the final evaluation's success and regret (not the step-0 row's), and the seconds of this
    stage's run (read from a fake clock: its two readings 7.5 s apart)."""
    from types import SimpleNamespace

    import finetune.train
    from robopretrain import pipeline
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline")
    history = [{"eval/success": 0.1, "train/cumulative_regret": None},
               {"eval/success": 0.7, "train/cumulative_regret": 0.25}]
    monkeypatch.setattr(finetune.train, "run", lambda c: {"history": history})
    monkeypatch.setattr(pipeline, "stage3_config", lambda *a: None)
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(perf_counter=iter([100.0, 107.5]).__next__))
    out = pipeline.stage_stage3(cfg, tmp_path)
    name = pipeline.targets_of(cfg)[0].name
    assert out[name]["final_success"] == 0.7 and out[name]["cumulative_regret"] == 0.25
    assert out[name]["seconds"] == 7.5  # this run's duration, not the clock's reading
    assert pipeline.read_json(tmp_path / "stage3" / name / pipeline.DONE) == out[name]


def test_a_damaged_stage_record_is_named_with_how_to_redo_its_stage(tmp_path):
    """A truncated done.json stopped the pipeline with "error: Expecting ',' delimiter: line 1 column 14 (char 13)"
    and no file named (breaker PP F02)."""
    from robopretrain import pipeline
    from robopretrain.cli import known_errors

    done = tmp_path / "stage2" / pipeline.DONE
    pipeline.write_json(done, {"checkpoint": "c", "seconds": 1.0})
    assert pipeline.read_json(done) == {"checkpoint": "c", "seconds": 1.0}
    done.write_text('{"seconds": 1')
    with pytest.raises(known_errors()) as err:
        pipeline.read_json(done)
    assert str(err.value).startswith(f"{done}: damaged, not JSON (") and \
        str(err.value).endswith(f"; remove {tmp_path / 'stage2'} and the later stages' folders to run that stage again")
    done.write_bytes(b'{"seconds": \xff}')
    with pytest.raises(known_errors(), match="damaged, not JSON"):
        pipeline.read_json(done)


def test_the_data_stage_renders_the_wrist_camera_only_when_the_agent_reads_it(tmp_path):
    """collect_base's eye_in_hand follows obs.rgb (mutation testing: 'in' -> 'not in' survived)."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    for rgb, wrist in (("[agentview_image]", False), ("[agentview_image,eye_in_hand_image]", True), ("[]", False)):
        with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
            cfg = compose("pipeline", overrides=[f"obs.rgb={rgb}"])
        base = pipeline.collect_base(cfg)
        assert base["eye_in_hand"] is wrist and base["render_images"] is (rgb != "[]"), rgb
        assert pipeline.prior_collect_config(cfg, tmp_path).eye_in_hand is wrist


def test_the_evaluate_stage_films_the_first_setting_each_target_is_evaluated_in(tmp_path, monkeypatch):
    """A Meta-World (not randomizable) target got no rollout GIF when evaluate.settings listed a randomized setting
    first: the GIF was tied to the first setting listed, which such a target skips (breaker QQ F01)."""
    import types

    from omegaconf import OmegaConf

    import robopretrain.checkpoint as checkpoint
    import robopretrain.evaluation as evaluation
    from robopretrain import pipeline
    from robopretrain.build import compose

    calls = []

    def fake_evaluate(agent, target, n, randomization="none", video_path=None, blind=None, **kwargs):
        calls.append((target.name, randomization, video_path))
        return {"success": 0.0, "return": 0.0, "length": 1.0, "successes": 0, "episodes": n}

    agent = types.SimpleNamespace(spec=types.SimpleNamespace(rgb=()))
    monkeypatch.setattr(checkpoint, "load_agent", lambda *a, **k: (agent, None))
    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    cfg = compose("pipeline", overrides={
        "run_dir": str(tmp_path), "obs": {"low_dim": [], "num_tasks": 14},
        "targets": [{"name": "reach-v3", "family": "metaworld", "demos": "/nonexistent.hdf5", "task_id": 13},
                    "Reach"],
        "evaluate": {"episodes": 1, "blind": [], "robustness": {"enabled": False}}})
    cfg.evaluate.settings = OmegaConf.create({"randomized": {"level": "train", "factors": ["friction"]},
                                              "nominal": "none"})
    pipeline.stage_evaluate(cfg, tmp_path)
    filmed = [(name, rand["level"] if isinstance(rand, dict) else rand) for name, rand, video in calls if video]
    assert filmed == [("reach-v3", "none"), ("Reach", "train")]  # each target's first evaluated setting
    assert [(c[0], c[2].name) for c in calls if c[2]] == [("reach-v3", "rollout_reach-v3.gif"),
                                                          ("Reach", "rollout_Reach.gif")]
