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
