"""Robustness evaluation (``robopretrain.evaluate``) of any agent checkpoint: eval_info.json structure, bootstrap
intervals, reproducibility whatever the number of workers, distractor counts; camera agents see their env through
the same observation path as in training; targets outside sim_envs run nominal only; the pipeline's short sweep."""

from __future__ import annotations

import json
import os
import pickle
import logging
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import _fake_envs as fake
from _stages import collect_sim, stage2_config
from robopretrain.evaluate import bootstrap_ci, build_conditions, evaluate_robustness

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A Cal-QL agent trained for 5 steps on 2 state-only Reach episodes by stage 2; returns its run folder."""
    from robopretrain.train import run

    tmp = tmp_path_factory.mktemp("eval")
    data = collect_sim(tmp / "d.hdf5", ["Reach"])
    run(stage2_config(data, tmp / "run", steps=5, obs={"low_dim": ["proprio", "object"]}, width=32))
    return tmp / "run"


def eval_config(checkpoint: Path, out: Path, **extra):
    overrides = [f"checkpoint={checkpoint}", f"output_dir={out}", "episodes=3", "progress=false",
                 "select=[distractors,friction]", "video.max_frames=10", "video.size=64"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("evaluate", overrides=overrides)


@pytest.fixture(scope="module")
def parallel_run(tiny_checkpoint, tmp_path_factory) -> dict:
    return evaluate_robustness(eval_config(tiny_checkpoint, tmp_path_factory.mktemp("out") / "a", workers=2))


def test_eval_info_structure_and_files(parallel_run):
    out = Path(parallel_run["output_dir"])
    info = json.loads((out / "eval_info.json").read_text())
    assert info["task"] == "Reach" and info["algo"] == "calql" and info["step"] == 5
    assert info["episodes_per_condition"] == 3
    assert set(info["factors"]) == {"distractors", "friction"}
    assert list(info["factors"]["distractors"]) == ["0", "2", "4", "6"]
    assert list(info["factors"]["friction"]) == ["train", "eval_easy", "eval_hard"]
    rows = [info["nominal"]] + [r for lv in info["factors"].values() for r in lv.values()]
    for r in rows:
        assert r["episodes"] == 3
        assert 0.0 <= r["ci_low"] <= r["success"] <= r["ci_high"] <= 1.0
        assert r["drop_vs_nominal"] == pytest.approx(info["nominal"]["success"] - r["success"])
    assert len(info["episodes"]) == 3 * (1 + 4 + 3)
    assert {(e["factor"], e["level"], e["episode"]) for e in info["episodes"]} >= {("nominal", "none", 0),
                                                                                 ("friction", "eval_hard", 2)}
    assert all(e["seed"] == info["eval_seed"] + e["episode"] for e in info["episodes"])
    assert (out / "success_per_factor.png").stat().st_size > 0
    assert set(info["videos"]) == {"nominal", "distractors", "friction"}
    for v in info["videos"].values():
        assert Path(v["path"]).stat().st_size > 0
    assert info["videos"]["distractors"]["level"] == "6"


def test_distractor_levels_place_that_many_distractors(parallel_run):
    for e in parallel_run["episodes"]:
        if e["factor"] == "distractors":
            assert e["num_distractors"] == int(e["level"]), e
        if e["factor"] in ("nominal", "friction"):
            assert e["num_distractors"] == 0, e


def test_rerun_gives_identical_numbers(parallel_run, tiny_checkpoint, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tiny_checkpoint.parent)  # the checkpoint given relative to the working folder: recorded whole
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        again = evaluate_robustness(eval_config(Path(tiny_checkpoint.name), tmp_path / "b", workers=0,
                                                **{"video.enabled": "false"}))
        assert torch.get_num_threads() == 2  # the caller's thread count, given back (it was left at 1)
    finally:
        torch.set_num_threads(threads)
    recorded = json.loads((tmp_path / "b" / "eval_info.json").read_text())["checkpoint"]
    assert os.path.isabs(recorded) and Path(recorded).parent.parent == tiny_checkpoint.resolve()
    assert again["episodes"] == parallel_run["episodes"]
    assert again["nominal"] == parallel_run["nominal"] and again["factors"] == parallel_run["factors"]


def test_a_rerun_stopped_during_its_episodes_leaves_the_earlier_results_whole(parallel_run, tiny_checkpoint,
                                                                               tmp_path, monkeypatch):
    """The earlier evaluation's record, plot and videos went at the rerun's start: a Ctrl-C during the episodes
    left the folder without results. They are replaced only once the new episodes are done."""
    import shutil

    import robopretrain.evaluate as ev

    out = tmp_path / "a"
    shutil.copytree(parallel_run["output_dir"], out)
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert Path("eval_info.json") in before and Path("success_per_factor.png") in before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "run_all_episodes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_robustness(eval_config(tiny_checkpoint, out, workers=0))
    after = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert [p for p in after if p.suffix != ".log"] == [p for p in before if p.suffix != ".log"]


def test_evaluation_seeds_where_training_episodes_start_are_warned(caplog):
    """eval_seed=0 ran without a word, although seeds 0.. are stage 3's seed-0 training episodes' starts."""
    from robopretrain.collector import episode_seed
    from robopretrain.evaluate import warn_training_seeds

    with caplog.at_level(logging.WARNING):
        assert not warn_training_seeds(1_000_000, 20) and not warn_training_seeds(1_999_990, 10)
        assert "eval_seed" not in caplog.text
        assert warn_training_seeds(0, 20) and warn_training_seeds(1_999_995, 10)
    assert "eval_seed=0: episodes reset with seeds 0..19, outside [1000000, 2000000)" in caplog.text
    assert episode_seed(0, 3) in range(0, 20)  # the overlap the warning is about


def test_bootstrap_ci_contains_mean_and_is_reproducible():
    values = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0] * 5
    lo, hi = bootstrap_ci(values, resamples=2000, confidence=0.95, seed=3)
    assert 0.0 <= lo < np.mean(values) < hi <= 1.0
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.6 * 0.4 / 50), abs=0.06)  # close to the normal interval
    assert bootstrap_ci(values, 2000, 0.95, 3) == (lo, hi)
    assert bootstrap_ci([1, 1, 1], 100) == (1.0, 1.0)
    with pytest.raises(ValueError, match="1-D sequence of finite numbers, got shape \\(3,\\) with 1 NaN"):
        bootstrap_ci([1.0, np.nan, 0.0])  # was (nan, nan)
    with pytest.raises(ValueError, match="got shape \\(2, 2\\)"):
        bootstrap_ci([[1.0, 0.0], [0.0, 1.0]])  # was an IndexError


def test_bad_factor_configs_are_named(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown factor"):
        build_conditions(eval_config(tiny_checkpoint, tmp_path, select="[wind]"))
    cfg = eval_config(tiny_checkpoint, tmp_path)
    cfg.factors.friction.levels = [3]
    with pytest.raises(ValueError, match="distractor count"):
        build_conditions(cfg)
    cfg = eval_config(tiny_checkpoint, tmp_path)
    cfg.factors.distractors.levels = [9]
    with pytest.raises(ValueError, match="0..6"):
        build_conditions(cfg)
    cfg = eval_config(tiny_checkpoint, tmp_path)
    cfg.factors.friction.randomize = []  # ran nominal episodes reported as friction's
    with pytest.raises(ValueError, match=r"factors.friction.randomize is empty"):
        build_conditions(cfg)
    # an empty selection is nominal only (it ran every factor, like select=null; the pipeline's sweep with no
    # levels left passes [])
    assert [c.factor for c in build_conditions(eval_config(tiny_checkpoint, tmp_path, select="[]"))] == ["nominal"]
    one = eval_config(tiny_checkpoint, tmp_path, select="[friction, distractors]")
    one.factors.friction.levels, one.factors.distractors.levels = "eval_hard", 4  # one level, not its letters
    assert [(c.factor, c.level) for c in build_conditions(one)] == [("nominal", "none"), ("friction", "eval_hard"),
                                                                    ("distractors", "4")]


# --------------------------------------------------------------------------- camera agents

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def tiny_camera_checkpoint(tmp_path_factory) -> Path:
    """A scratch small_conv Cal-QL agent (32 px agentview, proprio, 12-slot task one-hot) saved as stage 3 saves."""
    import torch

    from robopretrain.agent import Agent, EncoderSettings
    from robopretrain.checkpoint import save_agent
    from robopretrain.data.spec import ObsSpec

    spec = ObsSpec(low_dim=(("proprio", 7),), rgb=(("agentview_image", (IMAGE_SIZE, IMAGE_SIZE, 3)),), num_tasks=12)
    torch.manual_seed(1)
    agent = Agent(spec, 4, "calql", {"n_actions": 2, "critic_hidden": [32, 32], "actor_hidden": [32, 32]},
                  EncoderSettings(mode="scratch"), stats={"proprio": {"mean": [0.1] * 7, "std": [0.5] * 7}}, seed=1)
    with torch.no_grad():  # a policy whose action depends on the pixels, not only on the biases
        for p in agent.actor_encoder.parameters():
            p.mul_(3.0)
    root = tmp_path_factory.mktemp("img") / "run"
    save_agent(root / "checkpoints", 11, {"seed": 0}, agent,
               {"stage": "online", "task": "Reach", "target": {"name": "Reach"}, "task_names": ["Reach"]})
    return root


def camera_eval(checkpoint: Path, out: Path, workers: int, video: bool):
    return evaluate_robustness(eval_config(checkpoint, out, workers=workers, episodes=2, select="[lighting]",
                                           **{"factors.lighting.levels": "[eval_hard]",
                                              "video.enabled": str(video).lower(), "video.max_frames": 5}))


def first_obs(agent, randomization: dict) -> dict:
    from robopretrain.envs.target import as_target
    from robopretrain.evaluate import make_env

    env = make_env(agent, as_target("Reach"), randomization)
    try:
        return env.reset(seed=0)[0]
    finally:
        env.close()


def test_camera_agent_sees_the_env_through_its_own_spec(tiny_camera_checkpoint):
    import sim_envs
    import torch

    from robopretrain.evaluate import PolicySpec, load_policy, open_checkpoint

    ckpt = open_checkpoint(tiny_camera_checkpoint)
    policy = load_policy(PolicySpec(str(ckpt.path), {"name": "Reach"}, "cpu"))
    assert policy.spec.rgb_keys == ("agentview_image",) and policy.spec.image_size == IMAGE_SIZE
    assert policy.spec.low_dim_keys == ("proprio",) and policy.spec.num_tasks == 12
    obs = first_obs(policy, {"level": "none", "num_distractors": 0})
    assert obs["agentview_image"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and obs["agentview_image"].dtype == np.uint8
    assert obs["proprio"].shape == (7,) and obs["task_id"] == sim_envs.tasks.TASK_IDS["Reach"]
    # what the policy computes from it: image features, the proprio normalised by the stored statistics, one-hot
    feats = policy.actor_encoder({k: torch.as_tensor(np.asarray(v))[None] for k, v in obs.items()})[0]
    n_img = policy.actor_encoder.image_encoder.out_dim
    torch.testing.assert_close(feats[n_img:n_img + 7], (torch.as_tensor(obs["proprio"]) - 0.1) / 0.5)
    one_hot = torch.zeros(12)
    one_hot[sim_envs.tasks.TASK_IDS["Reach"]] = 1.0
    assert torch.equal(feats[n_img + 7:], one_hot)
    # the pixels reach the policy: the same start under the held-out dark lighting changes image and action
    dark = first_obs(policy, {"level": "eval_hard", "factors": ["lighting"]})
    np.testing.assert_array_equal(dark["proprio"], obs["proprio"])
    assert dark["agentview_image"].mean() < obs["agentview_image"].mean()
    assert np.abs(policy.act(dark) - policy.act(obs)).max() > 1e-6


def test_camera_checkpoint_evaluates_identically_twice(tiny_camera_checkpoint, tmp_path):
    a = camera_eval(tiny_camera_checkpoint, tmp_path / "a", workers=2, video=True)
    b = camera_eval(tiny_camera_checkpoint, tmp_path / "b", workers=0, video=False)
    assert a["cameras"] == ["agentview_image"] and a["task"] == "Reach" and a["step"] == 11 and a["stage"] == "online"
    assert len(a["episodes"]) == 2 * 2 and a["episodes"] == b["episodes"]
    assert a["nominal"] == b["nominal"] and a["factors"] == b["factors"]
    info = json.loads((Path(a["output_dir"]) / "eval_info.json").read_text())
    assert info["factors"]["lighting"]["eval_hard"]["episodes"] == 2
    assert set(info["videos"]) == {"nominal", "lighting"}
    assert all(Path(v["path"]).stat().st_size > 0 for v in info["videos"].values())


def test_a_foreign_task_named_like_a_sim_envs_task_is_not_evaluated_in_sim_envs(tmp_path, tiny_checkpoint):
    """robosuite's ``Lift`` is not our ``Lift``: a stage-2 checkpoint of such a file without a recorded target asks
    for one (it built our Lift and failed on the missing observation key); a sim_envs file's task still defaults."""
    from robopretrain.checkpoint import CheckpointError
    from robopretrain.evaluate import default_target, open_checkpoint
    from robopretrain.train import run

    demos = fake.write_robosuite_demos(tmp_path / "lift.hdf5", 2, tasks=(("Lift", 0),))
    run(stage2_config(demos, tmp_path / "s2", steps=1, obs={"low_dim": [fake.EEF]}))
    with pytest.raises(CheckpointError, match=r"its task 'Lift' is not a sim_envs task \(a file of another env "
                                              r"family uses its name\) and the run recorded 0 evaluation targets"):
        default_target(open_checkpoint(tmp_path / "s2"))
    assert default_target(open_checkpoint(tiny_checkpoint)).name == "Reach"  # a sim_envs file's task


def test_a_target_in_a_slot_no_task_was_trained_in_is_warned_and_the_slot_recorded(tiny_checkpoint, tmp_path,
                                                                                   caplog):
    """Evaluating Reach in slot 5 of an agent trained on Reach in slot 0 ran silently with an untrained task code,
    and eval_info said task_id null (the sim task's own id was not recorded)."""
    import logging

    with caplog.at_level(logging.WARNING, logger="robopretrain.evaluate"):
        own = evaluate_robustness(eval_config(tiny_checkpoint, tmp_path / "own", select="[nominal]", episodes=1,
                                              workers=0, **{"video.enabled": "false"}))
    assert own["task_slot"] == 0 and "no task of this checkpoint was trained in" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="robopretrain.evaluate"):
        other = evaluate_robustness(eval_config(tiny_checkpoint, tmp_path / "other", select="[nominal]", episodes=1,
                                                workers=0, target="{name: Reach, task_id: 5}",
                                                **{"video.enabled": "false"}))
    assert other["task_slot"] == 5
    assert "acts in slot 5 of the task one-hot, which no task of this checkpoint was trained in" in caplog.text
    assert "'Reach': 0" in caplog.text


def test_a_target_in_another_tasks_slot_or_its_task_in_another_slot_is_warned(tiny_checkpoint, tmp_path, caplog):
    """An explicit task_id that contradicts the slots the agent learnt ran silently (a helper evaluated g3 in g0's
    slot): both disagreements are named."""
    import logging

    from robopretrain.envs.target import slot_note

    learnt = {"g0": 0, "g1": 1}
    assert slot_note("g0", 0, learnt) is None and slot_note("g5", 6, learnt) is None  # agree; a free slot
    assert "but the agent learnt 'g0' in slot 0" in slot_note("g0", 1, learnt)
    assert "where the agent learnt task(s) ['g1']: the agent takes it for that task" in slot_note("g3", 1, learnt)
    assert slot_note("my_reach", 0, {"demos_d4rl": 0}, label_only=True) is None  # a gym target of a one-slot agent
    assert slot_note("my_reach", 0, {"demos_d4rl": 0}) is not None
    with caplog.at_level(logging.WARNING, logger="robopretrain.evaluate"):  # PressButton in Reach's slot 0
        evaluate_robustness(eval_config(tiny_checkpoint, tmp_path / "pb", select="[nominal]", episodes=1, workers=0,
                                        target="{name: PressButton, task_id: 0}", **{"video.enabled": "false"}))
    assert "target 'PressButton' acts in slot 0 of the task one-hot, where the agent learnt task(s) ['Reach']" \
        in caplog.text


def test_a_target_outside_sim_envs_runs_nominal_only(tmp_path):
    """A custom gymnasium target: nominal episodes and a video from the agent's own camera; factors that shift our
    sim are refused with one line naming them when selected, left out when select is unset."""
    from robopretrain.train import run

    demos = fake.write_robosuite_demos(tmp_path / "demos.hdf5", 2)
    run(stage2_config(demos, tmp_path / "s2", steps=2, obs={"low_dim": [fake.EEF], "rgb": ["agentview_image"]}))
    target = ("{name: reach, env_id: '_fake_envs:RobosuiteLikeEnv', task_id: 0, max_episode_steps: 8}")
    with pytest.raises(ValueError, match=r"target 'reach' \(gym\) has no randomization or distractors; factors "
                                         r"\['distractors', 'friction'\] apply to sim_envs targets only"):
        evaluate_robustness(eval_config(tmp_path / "s2", tmp_path / "x", target=target))
    info = evaluate_robustness(eval_config(tmp_path / "s2", tmp_path / "ok", target=target, select="[nominal]",
                                           workers=0))
    assert info["target"]["env_id"] == "_fake_envs:RobosuiteLikeEnv" and not info["factors"]
    assert info["nominal"]["episodes"] == 3 and info["nominal"]["mean_length"] <= 8
    # a gym target without task_id acts in the one slot the agent was trained in (was: "task_id is required")
    unnamed = evaluate_robustness(eval_config(tmp_path / "s2", tmp_path / "slot", target=target.replace(
        "task_id: 0, ", ""), select="[nominal]", workers=0, **{"video.enabled": "false"}))
    assert unnamed["target"]["task_id"] == 0 and unnamed["task_slot"] == 0
    assert [e["success"] for e in unnamed["episodes"]] == [e["success"] for e in info["episodes"]]
    import av

    with av.open(info["videos"]["nominal"]["path"]) as video:  # the 16 px camera filmed at video.size=64
        frame = next(video.decode(video=0))
    assert (frame.height, frame.width) == (64, 64)
    every = evaluate_robustness(eval_config(tmp_path / "s2", tmp_path / "all", target=target, select="null",
                                            workers=0, **{"video.enabled": "false"}))  # select unset: nominal only
    assert every["nominal"]["episodes"] == 3 and not every["factors"]
    with pytest.raises(ValueError, match=r"factors \['gap'\] apply to sim_envs targets only: remove the gap"):
        evaluate_robustness(eval_config(tmp_path / "s2", tmp_path / "gap", target=target, select="null",
                                        workers=0, gap="friction_low"))
    wider = target.replace("max_episode_steps: 8", "max_episode_steps: 8, env_kwargs: {eef_dim: 4}")
    with pytest.raises(ValueError, match="low_dim part 'robot0_eef_pos'.*size 4, the agent has 3"):  # before episodes
        evaluate_robustness(eval_config(tmp_path / "s2", tmp_path / "w", target=wider, select="[nominal]", workers=0))
    from robopretrain.checkpoint import load_agent
    from robopretrain.envs.target import TargetEnv, as_target
    from robopretrain.evaluation import agent_env, agent_env_factory

    agent = load_agent(tmp_path / "s2")[0]
    reach = as_target(OmegaConf.to_container(OmegaConf.create(target)))
    for env in (agent_env(agent, reach), agent_env_factory(agent, reach)()):
        while not isinstance(env, TargetEnv):  # the agent's vector parts are the ones checked at every step
            env = env.env
        assert env.checked == {fake.EEF}
    # every env the evaluation opens is closed again, serial and in worker processes (the workers' were never)
    for workers in (0, 2):
        log = tmp_path / f"envs{workers}.log"
        closing = target.replace("_fake_envs:RobosuiteLikeEnv", "_fake_envs:ClosingRobosuiteLikeEnv").replace(
            "max_episode_steps: 8", f"max_episode_steps: 8, env_kwargs: {{log: '{log}'}}")
        evaluate_robustness(eval_config(tmp_path / "s2", tmp_path / f"c{workers}", target=closing,
                                        select="[nominal]", workers=workers, **{"video.enabled": "false"}))
        lines = log.read_text().split()
        assert lines.count("open") >= 2 and lines.count("open") == lines.count("close"), (workers, lines)
    # a state-only agent on an env that renders nothing: the episodes are kept, the video skipped with a warning
    run(stage2_config(demos, tmp_path / "s2s", steps=2, obs={"low_dim": [fake.EEF]}))
    blind = evaluate_robustness(eval_config(tmp_path / "s2s", tmp_path / "b", target=target, select="[nominal]",
                                            workers=0))
    assert blind["nominal"]["episodes"] == 3 and blind["videos"] == {}
    assert json.loads((tmp_path / "b" / "eval_info.json").read_text())["nominal"]["episodes"] == 3


def test_pipeline_robustness_sweep_and_report(tiny_camera_checkpoint, tmp_path):
    """The pipeline's short sweep: its factors and levels only, rows in order, the report table."""
    from robopretrain import pipeline, report
    from robopretrain.envs.target import as_target

    cfg = OmegaConf.load(ROOT / "configs" / "pipeline.yaml")
    cfg.pop("hydra")
    cfg.progress = False
    cfg.evaluate.robustness.episodes = 1
    cfg.evaluate.robustness.workers = 0
    cfg.evaluate.robustness.levels = {"distractors": [2], "lighting": ["eval_hard"]}
    out = tmp_path / "evaluate" / "robustness" / "Reach"
    info = evaluate_robustness(pipeline.robustness_config(cfg, tiny_camera_checkpoint, as_target("Reach"), out))
    rows = report.robustness_rows(info)
    assert [(r["factor"], r["level"], r["episodes"]) for r in rows] == [
        ("nominal", "none", 1), ("distractors", "2", 1), ("lighting", "eval_hard", 1)]
    saved = json.loads((out / "eval_info.json").read_text())
    assert saved["cameras"] == ["agentview_image"] and saved["episodes"][1]["num_distractors"] == 2
    assert saved["videos"] == {}
    for r in rows:
        assert r["drop_vs_nominal"] == pytest.approx(rows[0]["success"] - r["success"])
    pipeline.write_json(tmp_path / "evaluate" / "robustness.json",
                        {"Reach": {"eval_info": str(out / "eval_info.json"), "plot": info["plot"], "rows": rows}})
    lines = "\n".join(report.robustness_lines(tmp_path))
    s = rows[2]["success"]
    assert "**Reach** (`evaluate/robustness/Reach/eval_info.json`)" in lines
    assert f"| lighting | eval_hard | {s:.2f} |" in lines
    assert "](evaluate/robustness/Reach/success_per_factor.png)" in lines
    assert "| factor | level | success | 95% Wilson CI |" in lines  # the interval evaluate computed, named
    import shutil  # a run folder moved after an older pipeline wrote absolute paths: re-rooted at the new place

    shutil.move(tmp_path / "evaluate", tmp_path / "moved" / "evaluate")
    moved = "\n".join(report.robustness_lines(tmp_path / "moved"))
    assert "**Reach** (`evaluate/robustness/Reach/eval_info.json`)" in moved and "95% Wilson CI" in moved

    cfg.evaluate.robustness.levels = {"wind": ["eval_hard"]}
    with pytest.raises(ValueError, match=r"evaluate.robustness.levels: unknown factor\(s\) \['wind'\]"):
        pipeline.robustness_config(cfg, tiny_camera_checkpoint, as_target("Reach"), tmp_path / "x")


def test_the_reports_settings_are_those_the_stages_ran_with():
    """After a rerun of the later stages with another encoder mode the header said the first stage's alone."""
    from robopretrain.report import recorded_setting

    cfg = OmegaConf.create({"encoder": {"mode": "scratch"}, "obs": {"rgb": ["agentview_image"]}})
    done = {"stage2": {"settings": {"encoder.mode": "frozen"}}, "adapt": {"settings": {"encoder.mode": "finetune"}},
            "stage3": {"settings": {"encoder.mode": "finetune"}}}
    assert recorded_setting(done, cfg, "encoder.mode") == "frozen (stage2); finetune (adapt, stage3)"
    assert recorded_setting({"stage2": done["stage2"]}, cfg, "encoder.mode") == "frozen"  # not this invocation's
    assert recorded_setting({}, cfg, "encoder.mode") == "scratch"  # nothing recorded yet
    assert recorded_setting({}, cfg, "obs.rgb") == '["agentview_image"]'


def test_report_names_the_single_prior_task_of_stage_2():
    """With one prior task stage 2 logs ``eval/success`` without a task key; the report's per-task table still has
    its row (it was empty), and several tasks keep their own rows without the mean."""
    from robopretrain import report

    cfg = OmegaConf.create({"prior_tasks": ["PressButton"]})
    row = {"step": 4, "eval/success": 0.25, "eval/return": 1.0}
    assert report.prior_task_success(row, cfg) == {"PressButton": 0.25}
    cfg = OmegaConf.create({"prior_tasks": ["Reach", "PressButton"]})
    row = {"eval/Reach/success": 1.0, "eval/PressButton/success": 0.5, "eval/success": 0.75}
    assert report.prior_task_success(row, cfg) == {"Reach": 1.0, "PressButton": 0.5}
    assert report.prior_task_success({"eval/success": 0.75}, cfg) == {}  # which task is unknown: no row


def test_pipeline_evaluate_stage_runs_the_sweep_of_each_sim_target_into_its_folder(tiny_camera_checkpoint, tmp_path):
    """stage_evaluate: the nominal setting, then the robustness sweep of <run>/stage3/<target> written under
    <run>/evaluate/robustness/<target>, listed in evaluate/robustness.json."""
    import shutil

    from robopretrain import pipeline

    run = tmp_path / "run"
    shutil.copytree(tiny_camera_checkpoint, run / "stage3" / "Reach")
    cfg = OmegaConf.load(ROOT / "configs" / "pipeline.yaml")
    cfg.pop("hydra")
    cfg.merge_with({"targets": ["Reach"], "progress": False, "device": "cpu",
                    "evaluate": {"episodes": 1, "video": False, "blind": [],
                                 "robustness": {"episodes": 1, "workers": 0}}})
    cfg.evaluate.settings = {"nominal": "none"}  # replace the preset's entries (merge_with would keep them)
    cfg.evaluate.robustness.levels = {"distractors": [2]}
    results = pipeline.stage_evaluate(cfg, run)
    assert set(results["Reach"]) == {"nominal"}
    saved = json.loads((run / "evaluate" / "robustness.json").read_text())
    folder = run / "evaluate" / "robustness" / "Reach"
    assert saved["Reach"]["eval_info"] == "evaluate/robustness/Reach/eval_info.json"  # relative: the folder can move
    assert (folder / "eval_info.json").is_file()
    assert saved["Reach"]["plot"] == "evaluate/robustness/Reach/success_per_factor.png"
    assert [(r["factor"], r["level"]) for r in saved["Reach"]["rows"]] == [("nominal", "none"), ("distractors", "2")]
    from robopretrain import report

    shutil.move(run, tmp_path / "moved")  # the report of the moved folder (it raised ValueError: not under run_dir)
    lines = "\n".join(report.robustness_lines(tmp_path / "moved"))
    assert "(`evaluate/robustness/Reach/eval_info.json`)" in lines and "| distractors | 2 |" in lines


def test_pool_workers_ignore_ctrl_c_and_the_serial_run_keeps_it(tiny_checkpoint):
    """Ctrl-C stops an evaluation through its parent alone (one line, exit 130, tests/test_interrupts.py): the pool's
    workers ignore SIGINT, while ``workers=0`` (the initializer run in this process) leaves the handler alone."""
    import signal

    from robopretrain.evaluate import PolicySpec, _init_worker, default_target, open_checkpoint

    ckpt = open_checkpoint(tiny_checkpoint)
    spec = PolicySpec(str(ckpt.path), default_target(ckpt).to_dict(), "cpu")
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(fake.sigint_ignored_after, (_init_worker, spec))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background run inherits SIGINT ignored
    try:
        _init_worker(spec)
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_wilson_intervals_contain_every_rate_and_all_fail_or_all_succeed_rows_plot(tmp_path):
    """At 0/n and n/n rounding put the Wilson bound 1e-17 on the wrong side of the rate for 103 values of n <= 200,
    and the figure then refused the negative error bar after every episode had run."""
    from robopretrain.evaluate import plot_success, wilson_ci

    for n in range(1, 201):
        for k in {0, 1, n - 1, n}:
            lo, hi = wilson_ci(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n)
    for counts in ((1.5, 3), (2, 2.5), (True, 3)):  # an interval of counts no episode gives, or a flag
        with pytest.raises(ValueError, match="expected whole counts"):
            wilson_ci(*counts)
    assert wilson_ci(np.int64(3), np.int64(4)) == wilson_ci(3, 4)
    row = lambda k, n: {"success": k / n, "ci_low": wilson_ci(k, n)[0], "ci_high": wilson_ci(k, n)[1]}  # noqa: E731
    stats = {"nominal": {"none": row(0, 10)}, "friction": {"eval_hard": row(13, 13)}}
    assert plot_success(stats, tmp_path / "s.png", "t").is_file()


def test_success_intervals_are_wilson_score_intervals_by_default(parallel_run):
    from scipy import stats

    from robopretrain.evaluate import wilson_ci

    for k, n in [(0, 4), (3, 3), (30, 50), (20, 20), (7, 10)]:
        ref = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_ci(k, n) == pytest.approx((ref.low, ref.high))
    assert wilson_ci(20, 20)[0] == pytest.approx(0.8389, abs=1e-4)  # the bootstrap gave [1, 1] here
    with pytest.raises(ValueError, match="5 successes of 4"):
        wilson_ci(5, 4)
    rows = [parallel_run["nominal"]] + [r for lv in parallel_run["factors"].values() for r in lv.values()]
    for row in rows:  # the sweep's rows: 3 episodes each
        k = round(row["success"] * row["episodes"])
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_ci(k, row["episodes"]))


def test_the_printed_table_names_the_intervals_confidence_and_method():
    """The header said "95% CI" whatever bootstrap.confidence was (a 50% interval printed as a 95% one)."""
    from robopretrain.evaluate import summary_lines

    row = {"success": 0.2, "ci_low": 0.13, "ci_high": 0.30, "drop_vs_nominal": 0.0}
    info = {"nominal": row, "factors": {"friction": {"eval_hard": {**row, "drop_vs_nominal": 0.1}}},
            "bootstrap": {"method": "wilson", "confidence": 0.5}}
    lines = summary_lines(info)
    assert "50% CI (wilson)" in lines[0] and "95%" not in lines[0]
    assert lines[1].split()[:5] == ["nominal", "none", "0.20", "[0.13,", "0.30]"] and lines[2].endswith("0.10")


def test_a_second_evaluation_writing_the_same_folder_is_refused(tiny_checkpoint, tmp_path):
    """README: one process writes a run folder at a time. Two evaluations on one output_dir both ran to the end and
    the second printed an eval_info.json that held the first one's results (a new user's session)."""
    from robopretrain.files import RunFolderBusy, run_folder_lock

    out = tmp_path / "e"
    with run_folder_lock(out):  # another process's evaluation, still running
        with pytest.raises(RunFolderBusy, match=r"another process is writing this run folder now .*rerun the command "
                                                r"then: it starts over, replacing that run's results"):  # no resume
            evaluate_robustness(eval_config(tiny_checkpoint, out, select="[]", **{"video.enabled": "false"}))
    assert not (out / "eval_info.json").exists()


def test_a_reused_folder_keeps_no_plot_or_video_of_the_earlier_evaluation(tiny_checkpoint, tmp_path):
    """A second evaluation into the same output_dir without plot or videos left the first one's
    success_per_factor.png and videos/ beside its own eval_info.json (stop 60's note); a user's own file stays."""
    out = tmp_path / "e"
    first = evaluate_robustness(eval_config(tiny_checkpoint, out, episodes=1, select="[]", **{"video.max_frames": 3}))
    assert Path(first["plot"]).is_file() and set(first["videos"]) == {"nominal"}
    (out / "videos" / "mine.txt").write_text("a user's file")
    second = evaluate_robustness(eval_config(tiny_checkpoint, out, episodes=1, select="[]", plot="false",
                                             **{"video.enabled": "false"}))
    assert second["plot"] is None and second["videos"] == {}
    assert not Path(first["plot"]).exists() and not Path(first["videos"]["nominal"]["path"]).exists()
    assert (out / "videos" / "mine.txt").read_text() == "a user's file"
    assert json.loads((out / "eval_info.json").read_text())["plot"] is None
    # a folder moved after its evaluation: its record's paths name the old place; the files here still go
    evaluate_robustness(eval_config(tiny_checkpoint, tmp_path / "a", episodes=1, select="[]",
                                    **{"video.max_frames": 3}))
    (tmp_path / "a").rename(tmp_path / "b")
    evaluate_robustness(eval_config(tiny_checkpoint, tmp_path / "b", episodes=1, select="[]", plot="false",
                                    **{"video.enabled": "false"}))
    assert sorted(p.name for p in (tmp_path / "b").rglob("*") if p.is_file() and not p.name.startswith(".")) == \
        ["eval_info.json"]


def test_a_run_stopped_while_filming_keeps_its_results_and_lists_its_videos(tiny_checkpoint, tmp_path, monkeypatch):
    """Ctrl-C in the video phase left the plot without eval_info.json: the episodes' results were lost."""
    import robopretrain.evaluate as evaluate

    filmed = []
    real = evaluate.record_video

    def stop_at_the_second(spec, condition, *args):
        if filmed:
            raise KeyboardInterrupt
        filmed.append(condition.factor)
        return real(spec, condition, *args)

    monkeypatch.setattr(evaluate, "record_video", stop_at_the_second)
    out = tmp_path / "e"
    with pytest.raises(KeyboardInterrupt):
        evaluate_robustness(eval_config(tiny_checkpoint, out, episodes=1, select="[friction]",
                                        **{"factors.friction.levels": "[eval_hard]", "video.max_frames": 3}))
    info = json.loads((out / "eval_info.json").read_text())
    assert info["nominal"]["episodes"] == 1 and info["factors"]["friction"]["eval_hard"]["episodes"] == 1
    assert filmed == ["nominal"] and list(info["videos"]) == ["nominal"]
    assert Path(info["videos"]["nominal"]["path"]).is_file()


def test_an_offline_q_plot_with_nothing_to_draw_says_why(tmp_path, monkeypatch):
    """The report's "Offline stages" plot was blank, without a word, for stages whose algorithm has no critic."""
    import matplotlib.axes

    from robopretrain.report import plot_curves

    (tmp_path / "stage2").mkdir()
    (tmp_path / "stage2" / "metrics.jsonl").write_text(json.dumps({"step": 4, "train/bc_loss": 0.1}) + "\n")
    said = []
    text = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, x, y, s, *a, **k: said.append(s) or
                        text(self, x, y, s, *a, **k))
    plot_curves(tmp_path, tmp_path / "evaluate")
    assert len(said) == 1 and said[0].startswith("no Q(s, a_data) logged")
    (tmp_path / "stage2" / "metrics.jsonl").write_text(json.dumps({"step": 4, "train/q_data": -3.0}) + "\n")
    said.clear()
    plot_curves(tmp_path, tmp_path / "evaluate")
    assert said == []


def test_evaluation_workers_start_knowing_the_env_warnings_their_parent_gave(tiny_checkpoint, monkeypatch):
    """An env warning said once per process (the action-range one) was said again, bare on stderr, by each spawned
    worker: the pool's workers get the parent's memory of them (process_map's initargs) and take it on."""
    import robopretrain.envs.target as target_module
    from robopretrain import evaluate as ev

    monkeypatch.setattr(target_module, "_NARROW_WARNED", {"said by the parent"})
    passed = {}

    def fake_map(fn, jobs, workers, *, initializer, initargs, **kwargs):
        passed.update(initializer=initializer, initargs=initargs)
        return iter(())

    monkeypatch.setattr(ev, "process_map", fake_map)
    spec = ev.PolicySpec(str(tiny_checkpoint), {"name": "Reach"}, "cpu")
    assert ev.run_all_episodes(spec, [], 1, 0, workers=1, progress=False) == []
    assert passed["initializer"] is ev._init_worker and passed["initargs"][0] == spec
    monkeypatch.setattr(target_module, "_NARROW_WARNED", set())  # the worker: a fresh process
    try:
        passed["initializer"](*pickle.loads(pickle.dumps(passed["initargs"])))
    finally:
        ev._close_worker_envs()
        ev._WORKER.clear()
    assert target_module._NARROW_WARNED == {"said by the parent"}
