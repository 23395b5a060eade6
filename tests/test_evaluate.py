"""Robustness evaluation: eval_info.json structure, bootstrap intervals, reproducibility, distractor counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from robopretrain.evaluate import bootstrap_ci, build_conditions, evaluate_robustness

ROOT = Path(__file__).resolve().parents[1]
TINY_ALGO = ["algo.actor_hidden=[32,32]", "algo.critic_hidden=[32,32]", "algo.n_actions=2", "algo.batch_size=32"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A Cal-QL agent trained for 5 steps on 2 state-only Reach episodes; returns its run folder."""
    from sim_envs.collect import collect

    from robopretrain.train import train_offline

    tmp = tmp_path_factory.mktemp("eval")
    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": ["Reach"], "episodes_per_task": 2, "render_images": False, "output": str(tmp / "d.hdf5")})
    data = collect(cfg, progress=False)
    overrides = [f"data.path={data}", f"output_dir={tmp / 'run'}", "train.steps=5", "train.eval_every=100",
                 "train.eval_episodes=1", "train.checkpoint_every=5", "train.calibration_batch=32",
                 "train.progress=false", "train.tensorboard=false", "num_threads=1", *TINY_ALGO]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        train_offline(compose("robopretrain", overrides=overrides))
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


def test_rerun_gives_identical_numbers(parallel_run, tiny_checkpoint, tmp_path):
    again = evaluate_robustness(eval_config(tiny_checkpoint, tmp_path / "b", workers=0, **{"video.enabled": "false"}))
    assert again["episodes"] == parallel_run["episodes"]
    assert again["nominal"] == parallel_run["nominal"] and again["factors"] == parallel_run["factors"]


def test_bootstrap_ci_contains_mean_and_is_reproducible():
    values = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0] * 5
    lo, hi = bootstrap_ci(values, resamples=2000, confidence=0.95, seed=3)
    assert 0.0 <= lo < np.mean(values) < hi <= 1.0
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.6 * 0.4 / 50), abs=0.06)  # close to the normal interval
    assert bootstrap_ci(values, 2000, 0.95, 3) == (lo, hi)
    assert bootstrap_ci([1, 1, 1], 100) == (1.0, 1.0)


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


# --------------------------------------------------------------------------- image checkpoints

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def tiny_image_checkpoint(tmp_path_factory) -> Path:
    """A scratch small_conv image agent (32 px, proprio + 12-slot task one-hot) saved as an image checkpoint."""
    import torch

    from robopretrain.image_agent import ImageAgent, image_obs_config
    from robopretrain.image_checkpoint import image_agent_meta, save_image_checkpoint

    cfg = image_obs_config({"image_keys": ["agentview_image"], "mode": "scratch", "encoder_name": "small_conv",
                            "image_size": IMAGE_SIZE})
    agent = ImageAgent(cfg, 7 + 12, 4, "calql", {"n_actions": 2, "critic_hidden": [32, 32],
                                                 "actor_hidden": [32, 32]}, seed=1)
    with torch.no_grad():  # a policy whose action depends on the pixels, not only on the biases
        for p in agent.actor_encoder.parameters():
            p.mul_(3.0)
    root = tmp_path_factory.mktemp("img") / "run"
    meta = image_agent_meta(agent, state_keys=["proprio"], num_tasks=12, stage="stage3", task="Reach")
    save_image_checkpoint(root / "checkpoints", 11, {"seed": 0}, agent, meta)
    return root


def image_eval(checkpoint: Path, out: Path, workers: int, video: bool):
    return evaluate_robustness(eval_config(checkpoint, out, workers=workers, episodes=2, select="[lighting]",
                                           **{"factors.lighting.levels": "[eval_hard]",
                                              "video.enabled": str(video).lower(), "video.max_frames": 5}))


def _first_obs(spec, randomization: dict) -> tuple[dict, dict]:
    from robopretrain.evaluate import make_env, policy_obs

    env = make_env(spec, "Reach", randomization)
    try:
        obs, _ = env.reset(seed=0)
        return obs, policy_obs(spec, "Reach", obs)
    finally:
        env.close()


def test_image_observation_has_the_agents_shape(tiny_image_checkpoint):
    import sim_envs

    from robopretrain.evaluate import load_policy, open_checkpoint, policy_spec

    spec = policy_spec(open_checkpoint(tiny_image_checkpoint), "cpu")
    assert spec.obs_type == "image" and spec.image_keys == ("agentview_image",) and spec.image_size == IMAGE_SIZE
    assert spec.obs_keys == ("proprio",) and spec.num_tasks == 12
    obs, x = _first_obs(spec, {"level": "none", "num_distractors": 0})
    assert set(x) == {"agentview_image", "state"}
    assert x["agentview_image"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and x["agentview_image"].dtype == np.uint8
    assert x["state"].shape == (7 + 12,) and x["state"].dtype == np.float32
    np.testing.assert_array_equal(x["state"][:7], obs["proprio"])
    one_hot = np.zeros(12, np.float32)
    one_hot[sim_envs.tasks.TASK_IDS["Reach"]] = 1.0
    np.testing.assert_array_equal(x["state"][7:], one_hot)
    # the pixels reach the policy: the same start under the held-out dark lighting changes image and action
    _, dark = _first_obs(spec, {"level": "eval_hard", "factors": ["lighting"]})
    np.testing.assert_array_equal(dark["state"], x["state"])
    assert dark["agentview_image"].mean() < x["agentview_image"].mean()
    policy = load_policy(spec)
    assert np.abs(policy.act(dark) - policy.act(x)).max() > 1e-6


def test_image_checkpoint_evaluates_identically_twice(tiny_image_checkpoint, tmp_path):
    a = image_eval(tiny_image_checkpoint, tmp_path / "a", workers=2, video=True)
    b = image_eval(tiny_image_checkpoint, tmp_path / "b", workers=0, video=False)
    assert a["obs_type"] == "image" and a["image_size"] == IMAGE_SIZE and a["task"] == "Reach" and a["step"] == 11
    assert len(a["episodes"]) == 2 * 2 and a["episodes"] == b["episodes"]
    assert a["nominal"] == b["nominal"] and a["factors"] == b["factors"]
    info = json.loads((Path(a["output_dir"]) / "eval_info.json").read_text())
    assert info["factors"]["lighting"]["eval_hard"]["episodes"] == 2
    assert set(info["videos"]) == {"nominal", "lighting"}
    assert all(Path(v["path"]).stat().st_size > 0 for v in info["videos"].values())


def test_pipeline_robustness_sweep_and_report(tiny_image_checkpoint, tmp_path):
    """The pipeline's short sweep: its factors and levels only, rows in order, the report table."""
    from robopretrain import pipeline

    cfg = OmegaConf.load(ROOT / "configs" / "pipeline.yaml")
    cfg.pop("hydra")
    cfg.progress = False
    cfg.evaluate.robustness.episodes = 1
    cfg.evaluate.robustness.workers = 0
    cfg.evaluate.robustness.levels = {"distractors": [2], "lighting": ["eval_hard"]}
    entry = pipeline.run_robustness(cfg, tiny_image_checkpoint, "Reach", tmp_path / "evaluate" / "robustness" / "Reach")
    assert [(r["factor"], r["level"], r["episodes"]) for r in entry["rows"]] == [
        ("nominal", "none", 1), ("distractors", "2", 1), ("lighting", "eval_hard", 1)]
    info = json.loads(Path(entry["eval_info"]).read_text())
    assert info["obs_type"] == "image" and info["episodes"][1]["num_distractors"] == 2 and info["videos"] == {}
    for r in entry["rows"]:
        assert r["drop_vs_nominal"] == pytest.approx(entry["rows"][0]["success"] - r["success"])
    pipeline.write_json(tmp_path / "evaluate" / "robustness.json", {"Reach": entry})
    report = "\n".join(pipeline.robustness_report_lines(cfg, tmp_path))
    s = entry["rows"][2]["success"]
    assert "**Reach** (`evaluate/robustness/Reach/eval_info.json`)" in report
    assert f"| lighting | eval_hard | {s:.2f} |" in report
    assert "](evaluate/robustness/Reach/success_per_factor.png)" in report

    cfg.evaluate.robustness.levels = {"wind": ["eval_hard"]}
    with pytest.raises(ValueError, match=r"evaluate.robustness.levels: unknown factor\(s\) \['wind'\]"):
        pipeline.robustness_config(cfg, tiny_image_checkpoint, "Reach", tmp_path / "x")
