"""IQL losses by hand, IQL and BC learning on tiny problems, checkpoints (on flat features; the agent on observation
dicts, cameras and encoders included, is tested in tests/test_agent.py)."""

import io
import math

import numpy as np
import pytest
import torch

from robopretrain.algos import make_agent
from robopretrain.algos.bc import bc_loss
from robopretrain.algos.iql import awr_policy_loss, awr_weights, expectile_loss, iql_q_loss


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    tau = 0.7
    expected = (0.7 * 4.0 + 0.3 * 1.0 + 0.7 * 0.25 + 0.3 * 9.0) / 4
    assert expectile_loss(diff, tau).item() == pytest.approx(expected)
    # tau = 0.5 is half the mean squared error
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (diff**2).mean().item())


def test_iql_q_loss_and_awr_by_hand():
    q_data = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    loss = iql_q_loss(q_data, torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]), torch.tensor([2.0, 5.0]), 0.5)
    targets = [1 + 0.5 * 2.0, 1.0]  # the terminal ignores V(s')
    expected = ((1 - targets[0]) ** 2 + (2 - targets[1]) ** 2) / 2 + ((0 - targets[0]) ** 2 + (3 - targets[1]) ** 2) / 2
    assert loss.item() == pytest.approx(expected)
    adv = torch.tensor([0.0, 1.0, 10.0])
    w = awr_weights(adv, beta=3.0)
    assert w.tolist() == pytest.approx([1.0, math.exp(3.0), 100.0])  # exp(30) is clipped at 100
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    assert awr_policy_loss(logp, adv, 3.0).item() == pytest.approx(-(1 * -1 + math.exp(3) * -2 + 100 * -0.5) / 3)
    assert bc_loss(torch.tensor([-1.0, -3.0])).item() == pytest.approx(2.0)


def _bandit(rng, n):
    obs = rng.normal(size=(n, 2)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    r = np.where(act[:, 0] > 0, 1.0, 0.0).astype(np.float32)
    t = torch.from_numpy
    return {"observations": t(obs), "actions": t(act), "rewards": t(r), "next_observations": t(obs),
            "dones": torch.ones(n)}


def test_iql_learns_tiny_bandit():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "value_hidden": [32, 32],
           "actor_lr": 1e-3, "qf_lr": 1e-3, "vf_lr": 1e-3}
    agent = make_agent("iql", 2, 1, cfg)
    losses = [agent.update(_bandit(rng, 128))["q_loss"] for _ in range(200)]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert (agent.act(rng.normal(size=(64, 2)).astype(np.float32)) > 0).mean() > 0.95


def test_bc_imitates_expert_actions():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    agent = make_agent("bc", 2, 2, {"actor_hidden": [32, 32], "lr": 3e-3})
    for _ in range(200):
        obs = rng.normal(size=(128, 2)).astype(np.float32)
        expert = np.clip(np.stack([0.5 * obs[:, 0], -np.ones(128)], 1), -1, 1).astype(np.float32)
        metrics = agent.update({"observations": torch.from_numpy(obs), "actions": torch.from_numpy(expert)})
    test = np.array([[1.0, 0.0], [-1.0, 2.0]], np.float32)
    actions = agent.act(test)
    np.testing.assert_allclose(actions[:, 0], [0.5, -0.5], atol=0.1)
    assert np.all(actions[:, 1] < -0.95)  # data actions at the bound -1 stay learnable (clipped)
    assert math.isfinite(metrics["bc_loss"])


@pytest.mark.parametrize("name", ["iql", "bc"])
def test_checkpoint_round_trip(name):
    cfg = {"actor_hidden": [16]}
    if name == "iql":
        cfg.update(critic_hidden=[16], value_hidden=[16])
    agent = make_agent(name, 2, 1, cfg)
    rng = np.random.default_rng(1)
    agent.update(_bandit(rng, 32))
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    other = make_agent(name, 2, 1, cfg)
    other.load_state_dict(torch.load(buf, weights_only=True))
    obs = rng.normal(size=(4, 2)).astype(np.float32)
    np.testing.assert_array_equal(other.act(obs), agent.act(obs))
    batch = _bandit(rng, 32)
    assert other.update(batch) == agent.update(batch)


def test_gaussian_actor_density_by_hand_is_finite_at_the_action_bounds():
    """BC and IQL's AWR use GaussianActor: mean tanh(MLP(s)), one state-independent log-std vector (clamped to
    [-5, 2]); the density of a saturated data action (+-1) is an ordinary Gaussian one, not -inf."""
    from robopretrain.nets.actor import GaussianActor

    actor = GaussianActor(3, 2, (4,)).double()
    last = [m for m in actor.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.atanh(torch.tensor([0.5, -0.2], dtype=torch.float64)))
        actor.log_std.copy_(torch.tensor([math.log(0.5), -9.0], dtype=torch.float64))  # -9 is clamped to -5
    obs = torch.randn(1, 3, dtype=torch.float64)
    logp = actor.log_prob(obs, torch.tensor([[1.0, -0.2]], dtype=torch.float64))
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    expected = (-0.5 * 1.0 - math.log(0.5) - half_log_2pi) + (-0.5 * 0.0 + 5.0 - half_log_2pi)  # z = (1 - .5) / .5
    assert logp.item() == pytest.approx(expected, abs=1e-12)
    mean, log_std = actor(obs)
    torch.testing.assert_close(mean, torch.tensor([[0.5, -0.2]], dtype=torch.float64))
    torch.testing.assert_close(log_std, torch.tensor([[math.log(0.5), -5.0]], dtype=torch.float64))
    actions, _ = actor.sample(obs, deterministic=True)  # the deterministic action is the mean
    torch.testing.assert_close(actions, mean)
    assert bc_loss(logp).item() == pytest.approx(-expected, abs=1e-12)


def test_bc_uses_the_config_it_is_given():
    """A BC built with a config trains with that config (sizes, learning rate), not the defaults (a mutant
    ``cfg and BCConfig()`` survived every test before; benchmarks/mutation.py)."""
    from robopretrain.algos.bc import BC, BCConfig

    agent = BC(5, 2, BCConfig(actor_hidden=(7,), lr=0.0123, batch_size=4))
    assert agent.cfg.actor_hidden == (7,)
    assert agent.optimizer.param_groups[0]["lr"] == 0.0123
    assert any(tuple(p.shape) == (7, 5) for p in agent.actor.parameters())


def test_bc_defaults_and_metrics_by_default():
    """BC's defaults (no orthogonal init, as CORL's BC) and ``compute_losses`` reporting its loss unless told not to."""
    from robopretrain.algos.bc import BC, BCConfig

    assert BCConfig().orthogonal_init is False
    agent = BC(5, 2, BCConfig(batch_size=4))
    batch = {"observations": torch.randn(4, 5), "actions": torch.rand(4, 2) * 1.8 - 0.9}
    losses, metrics = agent.compute_losses(batch)
    assert set(metrics) == {"bc_loss"} and torch.equal(metrics["bc_loss"], losses[next(iter(losses))].detach())
    assert agent.compute_losses(batch, with_metrics=False)[1] == {}
