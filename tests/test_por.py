"""POR (issue 15): each loss term and the value target on hand-computed tiny inputs, the guide's density, the wiring of
the target value / batch keys / discount in the agent, its Polyak step and acting a = pi(s, g(s)), and POR through
stage 2 (multi-task states with exact resume; one camera, back from disk)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import _fake_envs as fake
from _stages import stage2_config
from robopretrain.algos import make_agent
from robopretrain.algos.por import (NextStateGuide, TwinValue, por_execute_loss, por_guide_loss, por_guide_weights,
                                    por_value_loss, por_value_target)
from robopretrain.checkpoint import load_agent, load_latest

T = torch.tensor
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------- hand-computed losses and target


def test_value_target_discounts_and_stops_at_terminals():
    y = por_value_target(T([1.0, 2.0]), T([0.0, 1.0]), T([3.0, 4.0]), discount=0.5)
    torch.testing.assert_close(y, T([1.0 + 0.5 * 3.0, 2.0]))


def test_value_loss_is_the_expectile_of_target_minus_value_averaged_over_the_twin():
    # V_1: u = y - V = [1, -2] -> 0.9 * 1 + 0.1 * 4 = 1.3, mean over the batch 0.65 (u = V - y would give 1.85);
    # V_2 = y: 0; mean over the twin 0.325 (a sum would give 0.65)
    v = T([[1.0, 4.0], [2.0, 2.0]], requires_grad=True)
    loss = por_value_loss(v, T([2.0, 2.0]), expectile=0.9)
    assert loss.item() == pytest.approx(0.325)
    loss.backward()  # d/dV_1 of 0.5 * 0.5 * w u^2 = -0.5 * w u: [-0.45, 0.1]; V_2: 0
    torch.testing.assert_close(v.grad, T([[-0.45, 0.1], [0.0, 0.0]]))


def test_guide_weights_clip_and_the_weighted_likelihoods_by_hand():
    w = por_guide_weights(T([1.0, 10.0, 0.0]), T([0.0, 0.0, 1.0]), alpha=0.5, max_weight=10.0)
    torch.testing.assert_close(w, T([math.exp(0.5), 10.0, math.exp(-0.5)]))
    # the authors' cap of 100 by default: exp(10) = 22026 is clipped, exp(4) = 54.6 is not
    torch.testing.assert_close(por_guide_weights(T([10.0, 4.0]), T([0.0, 0.0]), alpha=1.0), T([100.0, math.exp(4)]))
    logp = T([-1.0, -2.0, -3.0], requires_grad=True)
    loss = por_guide_loss(logp, w)
    assert loss.item() == pytest.approx((math.exp(0.5) * 1 + 10 * 2 + math.exp(-0.5) * 3) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -w / 3)
    assert por_execute_loss(T([-1.0, -2.0])).item() == pytest.approx(1.5)


def test_guide_density_over_next_states_and_its_log_std_clamp():
    guide = NextStateGuide(2, [4])
    with torch.no_grad():
        head = guide.net[-1]
        head.weight.zero_()
        head.bias.copy_(T([5.0, -7.0]))  # mean (5, -7) for every state: unbounded, no tanh
        guide.log_std.copy_(T([math.log(2.0), 0.0]))
    s = torch.randn(3, 2)
    nxt = T([[5.0 + 2.0, -7.0 + 1.0]]).expand(3, 2)  # one std away in each dimension
    expected = -1.0 - math.log(2.0) - 2 * LOG_SQRT_2PI
    torch.testing.assert_close(guide.log_prob(s, nxt), torch.full((3,), expected))
    torch.testing.assert_close(guide.sample(s, deterministic=True), T([[5.0, -7.0]]).expand(3, 2))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    draws = guide.sample(torch.randn(20000, 2, generator=g))  # N(mean, std^2), std (2, 1): not 1 or 1 / std
    torch.testing.assert_close(draws.mean(0), T([5.0, -7.0]), rtol=0, atol=0.05)
    torch.testing.assert_close(draws.std(0), T([2.0, 1.0]), rtol=0.02, atol=0)
    with torch.no_grad():
        guide.log_std.fill_(9.0)
    assert torch.all(guide(s)[1] == 2.0)  # clamped to log_std_max
    assert TwinValue(2, [4], 3)(s).shape == (3, 3)


# --------------------------------------------------------------------------- wiring of the agent

S, A, B, DISCOUNT = 5, 2, 6, 0.5


def tiny_agent(**cfg):
    torch.manual_seed(0)
    agent = make_agent("por", S, A, {"actor_hidden": [8], "value_hidden": [8], "guide_hidden": [8],
                                     "discount": DISCOUNT, "tau": 0.25, **cfg})
    with torch.no_grad():  # the target away from the value: using the wrong one changes every number
        for p in agent.target_value.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return agent


def tiny_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"observations": torch.randn(B, S, generator=g), "actions": torch.rand(B, A, generator=g) * 2 - 1,
            "rewards": 2 * torch.randn(B, generator=g), "next_observations": torch.randn(B, S, generator=g),
            "dones": T([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]), "actor_observations": torch.randn(B, S, generator=g)}


def test_agent_wires_target_value_batch_keys_and_discount():
    """The three losses equal the formulas computed here from the agent's own modules: the target twin's min at s',
    r + gamma (1 - done) V'(s') with gamma = 0.5; the value on ``observations``; the guide on ``actor_observations``
    predicting ``next_observations`` with weights from the online twin's min; the execute policy on
    [``actor_observations``, ``next_observations``]."""
    agent, b = tiny_agent(alpha=2.0), tiny_batch()
    losses, metrics = agent.compute_losses(b)
    s, s2, sa, a = b["observations"], b["next_observations"], b["actor_observations"], b["actions"]
    with torch.no_grad():
        y = b["rewards"] + DISCOUNT * (1 - b["dones"]) * agent.target_value(s2).min(dim=0).values
        v = agent.value(s)
        u = y - v
        expected_value = (torch.where(u < 0, 0.1, 0.9) * u.square()).mean(dim=1).mean()
        w = torch.exp(2.0 * (y - v.min(dim=0).values)).clamp(max=100.0)
        expected_guide = -(w * agent.guide.log_prob(sa, s2)).mean()
        expected_actor = -agent.actor.log_prob(torch.cat([sa, s2], dim=-1), a).mean()
    torch.testing.assert_close(losses["value"], expected_value)
    torch.testing.assert_close(losses["guide"], expected_guide)
    torch.testing.assert_close(losses["actor"], expected_actor)
    assert metrics["target_v"] == pytest.approx(y.mean().item())
    # without actor features (states) the policies read ``observations``
    plain = {k: t for k, t in b.items() if k != "actor_observations"}
    losses2, _ = agent.compute_losses(plain, with_metrics=False)
    with torch.no_grad():
        torch.testing.assert_close(losses2["guide"], -(w * agent.guide.log_prob(s, s2)).mean())


def test_update_steps_every_network_and_polyak_averages_the_target_value():
    agent, b = tiny_agent(), tiny_batch()
    snap = lambda m: [p.detach().clone() for p in m.parameters()]  # noqa: E731
    before = {name: snap(getattr(agent, name)) for name in ("value", "target_value", "guide", "actor")}
    agent.update(b)
    for name in ("value", "guide", "actor"):
        assert any(not torch.equal(x, y) for x, y in zip(before[name], getattr(agent, name).parameters())), name
    for old, new, src in zip(before["target_value"], agent.target_value.parameters(), agent.value.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * src)


def test_acting_executes_the_guides_proposed_next_state():
    agent = tiny_agent()
    s = torch.randn(4, S)
    with torch.no_grad():
        goal = agent.guide.net(s)
        expected = torch.tanh(agent.actor.net(torch.cat([s, goal], dim=-1)))
    np.testing.assert_allclose(agent.act(s.numpy()), expected.numpy(), rtol=1e-6, atol=1e-6)
    assert agent.act(s[0].numpy()).shape == (A,)
    drawn = agent.act(s.numpy(), deterministic=False)
    assert drawn.shape == (4, A) and np.all(np.abs(drawn) <= 1.0)


# --------------------------------------------------------------------------- stage 2

OBS_MAP = {"eef_pos": fake.EEF, "gripper_qpos": fake.GRIPPER, "eye_in_hand_image": fake.EYE_IN_HAND}


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return fake.write_robosuite_demos(tmp_path_factory.mktemp("por") / "prior.hdf5", 2,
                                      tasks=(("reach_a", 0), ("reach_b", 1)))


@pytest.mark.slow
def test_stage2_resumes_exactly_with_the_target_value(demos, tmp_path):
    """Multi-task states (task one-hot of 2): 4 updates straight equal 2 then 4, tensor for tensor (value, target
    value, guide, execute policy, optimiser)."""
    from robopretrain.train import run as stage2

    kw = {"algo": "por", "obs": {"low_dim": ["eef_pos", "gripper_qpos"], "rgb": [], "num_tasks": 2},
          "data_cfg": {"obs_map": OBS_MAP}}
    straight = stage2(stage2_config(demos, tmp_path / "a", steps=4, **kw))
    stage2(stage2_config(demos, tmp_path / "b", steps=2, **kw))
    resumed = stage2(stage2_config(demos, tmp_path / "b", steps=4, **kw))
    a, b = load_latest(straight.parent), load_latest(resumed.parent)
    assert a.step == b.step == 4 and a.meta["algo"] == "por"
    flat = lambda tree: {f"{k}/{j}": t for k, d in tree.items() if isinstance(d, dict)  # noqa: E731
                         for j, t in d.items() if torch.is_tensor(t)}
    wa, wb = flat(a.weights["core"]), flat(b.weights["core"])
    assert "target_value/nets.0.0.weight" in wa and "guide/log_std" in wa and wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"


@pytest.mark.slow
def test_stage2_on_one_camera(demos, tmp_path):
    """One camera (scratch, separate encoders) through stage 2 and back from disk; the guide proposes the critic
    encoder's features (size 8 + 3 + 2), the execute policy reads twice that."""
    from robopretrain.train import run as stage2

    obs = {"low_dim": ["eef_pos"], "rgb": ["agentview_image"], "num_tasks": 2}
    ckpt = stage2(stage2_config(demos, tmp_path / "s2", algo="por", obs=obs, steps=2, data_cfg={"obs_map": OBS_MAP}))
    agent, saved = load_agent(ckpt)
    assert saved.meta["encoder_mode"] == "scratch" and agent.actor_encoder is not agent.critic_encoder
    assert agent.core.guide.log_std.shape == (agent.feature_dim,) and agent.core.actor.obs_dim == 2 * agent.feature_dim
    frames = {"agentview_image": np.zeros((2, 16, 16, 3), np.uint8), "eef_pos": np.zeros((2, 3), np.float32),
              "task_id": np.array([0, 1])}
    assert agent.act(frames).shape == (2, fake.ROBOSUITE_ACT_DIM)
    # continuing with new settings (as stage 3 passes its algo group) keeps the saved network sizes (guide too)
    again, _ = load_agent(ckpt, algo="por", algo_cfg={"name": "por", "guide_hidden": [64], "actor_lr": 1e-3})
    assert again.core.cfg.guide_hidden == (16,) and again.core.cfg.actor_lr == 1e-3
