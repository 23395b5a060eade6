"""Subnormal flushing (robopretrain.cpu_settings): that it is applied where the entry points say, on every thread
robopretrain computes on, and that it leaves CQL's losses and gradients as they were (its only effect is speed)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from robopretrain import build, cpu_settings
from robopretrain.nets import ensemble_kernels as ek

ROOT = Path(__file__).resolve().parents[1]
SUBNORMAL = 1e-39  # float32 subnormal (< 1.18e-38)

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush subnormals")


def survives() -> bool:
    """Whether a subnormal float32 survives a multiply on the calling thread (False: flushed)."""
    return bool((torch.tensor([SUBNORMAL]) * 1.0).item() != 0.0)


@pytest.fixture(autouse=True)
def restore_flag():
    before = cpu_settings.flush_denormal_active()
    yield
    cpu_settings.apply_cpu_settings(None, bool(before))


def test_apply_sets_and_clears_flushing_on_this_thread():
    cpu_settings.apply_cpu_settings(None, flush_denormal=False)
    assert survives() and cpu_settings.flush_denormal_active() is False
    assert cpu_settings.apply_cpu_settings(None, flush_denormal=True) is True
    assert not survives() and cpu_settings.flush_denormal_active() is True


def test_member_thread_follows_the_setting():
    """The mm_par path's second thread computes half the critic: it must flush whenever the main thread does."""
    cpu_settings.apply_cpu_settings(None, flush_denormal=False)
    pool = ek._member_pool()
    assert pool.submit(survives).result()
    cpu_settings.apply_cpu_settings(None, flush_denormal=True)
    assert not pool.submit(survives).result()
    cpu_settings.apply_cpu_settings(None, flush_denormal=False)
    assert pool.submit(survives).result()


@pytest.mark.parametrize("value, flushed", [(True, True), (False, False), (None, True)])
def test_entry_point_setup_reads_the_config(value, flushed):
    """build.setup_torch (robopretrain.train, finetune.train, reward_model) applies ``flush_denormal``; unset means
    on, the configs' default."""
    cpu_settings.apply_cpu_settings(None, flush_denormal=not flushed)
    cfg = OmegaConf.create({"seed": 0, "num_threads": None, "device": "cpu",
                            **({} if value is None else {"flush_denormal": value})})
    build.setup_torch(cfg)
    assert survives() is not flushed


def test_configs_default_on_and_pipeline_passes_it_to_stages(tmp_path):
    from robopretrain import pipeline

    for name in ("robopretrain", "finetune", "pipeline", "video_pretrain", "reward_model", "paper"):
        assert OmegaConf.load(ROOT / "configs" / f"{name}.yaml").flush_denormal is True, name
    cfg = build.compose("pipeline", overrides={"flush_denormal": False})
    assert pipeline.common(cfg, tmp_path, "stage2")["flush_denormal"] is False
    assert pipeline.stage1_config(cfg, tmp_path).flush_denormal is False


def _calql_losses_and_grads(flush: bool, monkeypatch) -> tuple[dict, list, int]:
    """Cal-QL's losses and gradients at the speed benchmark's batch (random weights, seed 0) and how many of the
    CQL penalty's logsumexp weights are subnormal without flushing (the source of the slow products)."""
    spec = importlib.util.spec_from_file_location("peers_benchmark", ROOT / "benchmarks" / "peers.py")
    peers = importlib.util.module_from_spec(spec)  # the speed benchmark's sizes and batch (not via sys.path:
    spec.loader.exec_module(peers)  # a script named like a package would shadow it)
    from robopretrain.algos.cql import CQL, CQLConfig

    seen = {"subnormal": 0}
    logsumexp = torch.logsumexp

    def counting(x, dim, *args, **kwargs):
        w = torch.softmax(x.detach(), dim=dim).abs()
        seen["subnormal"] += int(((w > 0) & (w < 1.18e-38)).sum())
        return logsumexp(x, dim, *args, **kwargs)

    monkeypatch.setattr(torch, "logsumexp", counting)
    cpu_settings.apply_cpu_settings(None, flush_denormal=flush)
    torch.manual_seed(0)
    agent = CQL(peers.OBS_DIM, peers.ACT_DIM, CQLConfig(actor_hidden=(64, 64), critic_hidden=(64, 64), n_actions=10,
                                                        use_calql=True, batch_size=128), device="cpu")
    batch = peers._batch(128)
    losses, _ = agent.compute_losses(batch, False)
    params = [p for g in agent.optimizer.param_groups for p in g["params"] if p.requires_grad]
    grads = torch.autograd.grad(sum(losses.values()), params, allow_unused=True)
    return losses, list(grads), seen["subnormal"]


def test_flushing_leaves_calql_losses_and_gradients_unchanged(monkeypatch):
    """Only subnormal values may change (|x| < 1.18e-38): every loss is bitwise equal and every gradient agrees to
    that absolute bound, on a batch whose penalty does make subnormals."""
    plain_losses, plain_grads, subnormal = _calql_losses_and_grads(False, monkeypatch)
    assert subnormal > 0  # else this test would compare two identical computations
    flushed_losses, flushed_grads, _ = _calql_losses_and_grads(True, monkeypatch)
    for k in plain_losses:
        assert torch.equal(plain_losses[k].detach(), flushed_losses[k].detach()), k
    for a, b in zip(plain_grads, flushed_grads):
        if a is None:
            assert b is None
            continue
        assert torch.allclose(a, b, rtol=0.0, atol=1.2e-38)
