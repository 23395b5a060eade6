"""Learners learn what their data teaches: imitation on clean scripted-expert data reaches the expert's success.

The first wave's BC succeeded 0/30 on 50 clean Reach demos with the goal in its state (a plain MSE regressor: 30/30):
the tanh-squashed likelihood cannot fit expert actions saturated at +-1 (the cause; measured with the same inputs:
0.03-0.33 with it, 0.97-1.00 with the Gaussian of :class:`robopretrain.nets.actor.GaussianActor`), and the inputs
were not normalised (which matters at small learning rates: at lr 1e-4, 1500 updates, 0.28 raw vs 1.00). These
tests run the real stage-2 entry point (:func:`robopretrain.train.run`) at a small budget and measure success in
sim, so any regression of the recipe (actor density, normalisation, learning rate, which observation reaches the
policy at evaluation) makes them fail. The full per-algorithm, per-task measurement is ``benchmarks/recipe.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from robopretrain.build import compose
from robopretrain.checkpoint import load_agent
from robopretrain.envs.target import Target
from robopretrain.evaluation import evaluate


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sim_envs.collect import collect

    path = tmp_path_factory.mktemp("recipe") / "reach_clean.hdf5"
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": ["Reach"], "episodes_per_task": 50, "render_images": False, "output": str(path),
                    "overwrite": True, "kinds": {"clean": {"fraction": 1.0, "noise": 0.0, "stop": None},
                                                 "noisy": {"fraction": 0.0, "noise": 0.3, "stop": None},
                                                 "failing": {"fraction": 0.0, "noise": 1.0, "stop": [0.1, 0.5]}}})
    return Path(collect(cfg, progress=False))


def stage2(data: Path, out: Path, algo: str, steps: int, **obs: object):
    from robopretrain.train import run

    torch.set_num_threads(1)
    cfg = compose("robopretrain", {"algo": algo}, {
        "output_dir": str(out), "data": {"path": str(data)}, "obs": {"low_dim": ["proprio", "object"], **obs},
        "train": {"steps": steps, "eval_every": steps, "eval_episodes": 1, "eval_targets": [],
                  "checkpoint_every": steps, "progress": False, "tensorboard": False}})
    return load_agent(run(cfg))[0]


@pytest.mark.parametrize("algo, steps", [("bc", 1500), ("iql", 1000)])
def test_imitation_on_clean_reach_demos_reaches_the_experts_success(reach_demos: Path, tmp_path: Path, algo: str,
                                                                      steps: int) -> None:
    agent = stage2(reach_demos, tmp_path / algo, algo, steps)
    result = evaluate(agent, Target("Reach"), 20)
    assert result["success"] >= 0.9, f"{algo} after {steps} updates on 50 clean Reach demos: {result}"
