"""``train.compile`` / ``online.compile``: the option reaches the learner, the compiled losses are the ones an update
uses, and a machine where compiling fails (no C++ compiler) trains on with the eager losses and a warning.

Compiling for real takes tens of seconds on a CPU, so ``torch.compile`` is replaced here by a stand-in that either
passes through (counting calls) or fails; that compiled IQL losses equal eager ones (0.0 difference) and how much
faster they run is measured by ``benchmarks/peers.py --compile``.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from robopretrain import pipeline
from robopretrain.agent import Agent, EncoderSettings
from robopretrain.algos.iql import IQL, IQLConfig
from robopretrain.data.replay import OfflineDataset
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.target import as_target
from robopretrain.loops.offline import OfflineSettings, train_offline
from robopretrain.metrics import read_jsonl


def _batch(n: int = 8, obs: int = 5, act: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"observations": torch.randn(n, obs, generator=g), "actions": torch.rand(n, act, generator=g) * 2 - 1,
            "rewards": torch.randn(n, generator=g), "next_observations": torch.randn(n, obs, generator=g),
            "dones": torch.zeros(n)}


class _Counting:
    """Stands in for ``torch.compile``: returns the function wrapped in a call counter."""

    def __init__(self) -> None:
        self.calls = 0
        self.compiled: list = []

    def __call__(self, fn, **kwargs):
        self.compiled.append(fn)

        def run(*args, **kw):
            self.calls += 1
            return fn(*args, **kw)
        return run


def test_compiled_losses_drive_the_update(monkeypatch):
    counting = _Counting()
    monkeypatch.setattr(torch, "compile", counting)
    iql = IQL(5, 2, IQLConfig(batch_size=8))
    iql.compile()
    assert counting.compiled == [iql.compute_losses]
    before = [p.detach().clone() for p in iql.critic.parameters()]
    iql.update(_batch())
    iql.update(_batch(), with_metrics=False)
    assert counting.calls == 2 and iql.num_updates == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, iql.critic.parameters()))  # the step still happened


def test_a_failed_compile_falls_back_to_the_eager_losses(monkeypatch, caplog):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    reference, iql = IQL(5, 2, IQLConfig(batch_size=8)), IQL(5, 2, IQLConfig(batch_size=8))
    iql.load_state_dict(reference.state_dict())
    iql.compile()
    with caplog.at_level(logging.WARNING):
        metrics = iql.update(_batch())
    assert "torch.compile failed (RuntimeError: InductorError: no working C++ compiler found)" in caplog.text
    assert iql._loss_fn == iql.compute_losses  # eager from then on: no retry every update
    assert metrics == pytest.approx(reference.update(_batch()))  # the same step as an uncompiled learner's

    strict = IQL(5, 2, IQLConfig(batch_size=8))
    strict.compile(fallback=False)
    with pytest.raises(RuntimeError, match="no working C\\+\\+ compiler"):
        strict.update(_batch())


def test_the_offline_loop_reads_train_compile(monkeypatch, tmp_path):
    counting = _Counting()
    monkeypatch.setattr(torch, "compile", counting)
    agent = Agent(ObsSpec(low_dim=(("proprio", 5),)), 2, "iql", {"batch_size": 8}, EncoderSettings(mode="scratch"))
    rng = np.random.default_rng(0)
    data = OfflineDataset({"proprio": rng.normal(size=(20, 5)).astype(np.float32)}, rng.uniform(-1, 1, (20, 2)),
                          rng.normal(size=20), {"proprio": rng.normal(size=(20, 5)).astype(np.float32)}, np.zeros(20))
    train_offline(agent, data, OfflineSettings(steps=3, progress=False, tensorboard=False, compile=True,
                                               eval_targets=[]), tmp_path / "run", save=lambda step, state: tmp_path)
    assert agent.core.num_updates == 3 and counting.calls == 3  # every update through the compiled losses
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl") if (tmp_path / "run" / "metrics.jsonl").exists() else []
    assert all(set(r) - {"step"} for r in rows)  # no evaluation and no calibration here: no empty rows either
    assert not OfflineSettings().compile and not OfflineSettings().cuda_graph  # both off unless asked
    agent = Agent(ObsSpec(low_dim=(("proprio", 5),)), 2, "iql", {"batch_size": 8}, EncoderSettings(mode="scratch"))
    compiled_before = len(counting.compiled)
    with pytest.raises(ValueError, match="alternatives"):
        train_offline(agent, None, OfflineSettings(steps=2, progress=False, tensorboard=False, compile=True,
                                                   cuda_graph=True, eval_targets=[]), tmp_path,
                      save=lambda step, state: tmp_path)
    assert agent.core.num_updates == 0 and len(counting.compiled) == compiled_before


def test_the_pipeline_passes_compile_to_every_training_stage(tmp_path):
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["compile=true", "encoder.mode=scratch"])
    assert pipeline.stage2_config(cfg, tmp_path).train.compile is True
    target = as_target(cfg.targets[0])
    assert pipeline.adapt_config(cfg, tmp_path, target).train.compile is True
    assert pipeline.stage3_config(cfg, tmp_path, target).online.compile is True
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        default = compose("pipeline", overrides=["encoder.mode=scratch"])
    assert pipeline.stage2_config(default, tmp_path).train.compile is False  # off unless asked


def test_the_decision_transformer_refuses_compile_with_the_reason():
    dt = Agent(ObsSpec(low_dim=(("proprio", 5),)), 2, "dt", {"batch_size": 4}, EncoderSettings(mode="scratch"))
    with pytest.raises(ValueError, match="dt learner has no compiled path"):
        dt.compile()
