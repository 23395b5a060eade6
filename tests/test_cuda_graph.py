"""The CUDA-graphed update's host-side contract, on the CPU: who may be captured, the buffers a replay reads, the
phase count of learners whose Python differs between updates, and that ``step_tensors`` is the whole update's
device work (``update`` = ``step_tensors`` + the counter). The capture itself needs a GPU: its equality with eager
updates (IQL, BC) is checked by ``benchmarks/gpu_check.sh`` (``graph_equivalence`` in its JSON)."""
from __future__ import annotations

import pytest
import torch

from robopretrain.algos.cuda_graph import CUDAGraphUpdate, _copy_into, _static_copy
from robopretrain.algos.dt import DecisionTransformer
from robopretrain.algos.iql import IQL, IQLConfig
from robopretrain.algos.td3_bc import TD3BC, TD3BCConfig


def _batch(n: int = 8, obs: int = 5, act: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"observations": torch.randn(n, obs, generator=g), "actions": torch.rand(n, act, generator=g) * 2 - 1,
            "rewards": torch.randn(n, generator=g), "next_observations": torch.randn(n, obs, generator=g),
            "dones": torch.zeros(n)}


def test_refuses_cpu_learners_and_the_decision_transformer():
    with pytest.raises(ValueError, match="CUDA device"):
        CUDAGraphUpdate(IQL(5, 2, IQLConfig(batch_size=8)))
    with pytest.raises(ValueError, match="cannot be captured"):
        CUDAGraphUpdate(DecisionTransformer(5, 2))
    from robopretrain.agent import Agent, EncoderSettings
    from robopretrain.data.spec import ObsSpec

    agent = Agent(ObsSpec(low_dim=(("proprio", 5),)), 2, "iql", {"batch_size": 8}, EncoderSettings(mode="scratch"))
    agent.auxiliary.append(object())
    with pytest.raises(ValueError, match="auxiliary"):
        CUDAGraphUpdate(agent)


def test_replay_buffers_receive_each_new_batch_and_refuse_other_shapes():
    nested = {"observations": {"proprio": torch.zeros(4, 3), "image": torch.zeros(4, 2, 2, 3, dtype=torch.uint8)},
              "actions": torch.zeros(4, 2)}
    static = _static_copy(nested)
    assert static["observations"]["proprio"].data_ptr() != nested["observations"]["proprio"].data_ptr()
    new = {"observations": {"proprio": torch.ones(4, 3), "image": torch.full((4, 2, 2, 3), 7, dtype=torch.uint8)},
           "actions": torch.full((4, 2), 0.5)}
    ptr = static["observations"]["image"].data_ptr()
    _copy_into(static, new)
    assert static["observations"]["image"].data_ptr() == ptr  # same memory: the graph reads these addresses
    assert torch.equal(static["observations"]["image"], new["observations"]["image"])
    assert torch.equal(static["actions"], new["actions"])
    with pytest.raises(ValueError, match="one batch size"):
        _copy_into(static, {**new, "actions": torch.zeros(5, 2)})
    with pytest.raises(ValueError, match="one batch size"):
        _copy_into(static, {**new, "actions": torch.zeros(4, 2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="keys"):
        _copy_into(static, {"actions": new["actions"]})


def test_phases_per_learner():
    assert IQL(5, 2, IQLConfig(batch_size=8)).cuda_graph_period() == 1
    assert TD3BC(5, 2, TD3BCConfig(batch_size=8, policy_freq=3)).cuda_graph_period() == 3


def test_update_is_step_tensors_plus_the_counter():
    torch.manual_seed(0)
    a = IQL(5, 2, IQLConfig(batch_size=8))
    torch.manual_seed(0)
    b = IQL(5, 2, IQLConfig(batch_size=8))
    batch = _batch()
    for _ in range(3):
        a.update(batch)
        metrics = b.step_tensors(batch, True)
    assert all(isinstance(v, torch.Tensor) for v in metrics.values()) and metrics
    assert (a.num_updates, b.num_updates) == (3, 0)
    for p, q in zip(a.state_dict()["critic"].values(), b.state_dict()["critic"].values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for p, q in zip(a.state_dict()["target_critic"].values(), b.state_dict()["target_critic"].values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # the target update is part of the step


def test_stage_loops_read_the_option_and_refuse_it_on_cpu(tmp_path):
    """``train.cuda_graph=true`` reaches the offline loop (which builds the graphed update) and, on a CPU agent,
    stops with the reason before any update: an option read but not applied would train silently."""
    from robopretrain.loops.offline import OfflineSettings, train_offline

    from robopretrain.agent import Agent, EncoderSettings
    from robopretrain.data.spec import ObsSpec

    agent = Agent(ObsSpec(low_dim=(("proprio", 5),)), 2, "iql", {"batch_size": 8}, EncoderSettings(mode="scratch"))
    settings = OfflineSettings(steps=2, progress=False, tensorboard=False, cuda_graph=True, eval_targets=[])
    with pytest.raises(ValueError, match="CUDA device"):
        train_offline(agent, None, settings, tmp_path, save=lambda step, state: tmp_path)
    assert agent.core.num_updates == 0
