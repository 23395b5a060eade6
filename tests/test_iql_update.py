"""IQL's full update against a reference written from the paper's equations (Kostrikov et al. 2021, eqs. 5-7), on
transitions that bootstrap (``dones = 0``, ``s' != s``) with a target critic that differs from the critic: which value
bootstraps the TD target, which critic makes the value target, the sign of the expectile argument, the discount
and the soft update. The tiny bandit tests in tests/test_iql_bc.py use ``dones = 1`` only."""

import pytest
import torch

from robopretrain.algos import make_agent
from robopretrain.algos.iql import IQLConfig

SMALL = {"actor_hidden": [8], "critic_hidden": [8], "value_hidden": [8]}


def _batch(b=6, obs_dim=3, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(b, obs_dim, generator=g),
        "actions": torch.rand(b, act_dim, generator=g) * 1.8 - 0.9,
        "rewards": torch.randn(b, generator=g),
        "next_observations": torch.randn(b, obs_dim, generator=g) + 2.0,  # far from s: V(s') != V(s)
        "dones": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])[:b],
    }


def _agent(**overrides):
    torch.manual_seed(0)
    agent = make_agent("iql", 3, 2, {**SMALL, **overrides})
    agent.critic.fast_path = agent.target_critic.fast_path = False  # several forward passes before one backward
    with torch.no_grad():  # a target critic distinct from the critic
        for p in agent.target_critic.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return agent


def _reference(agent, batch, discount=0.99, expectile=0.9, beta=1.0):
    """The IQL losses by hand: L_V = E[|tau - 1(u < 0)| u^2], u = min_e Q_target_e(s, a) - V(s);
    L_Q = sum_e E[(Q_e(s, a) - r - gamma (1 - d) V(s'))^2]; L_pi = -E[min(exp(beta (Q_target - V)), 100) log pi(a|s)]."""
    obs, act, nobs = batch["observations"], batch["actions"], batch["next_observations"]
    q_t = agent.target_critic(obs, act).detach()  # (E, B)
    q_t = torch.minimum(q_t[0], q_t[1])
    v = agent.value(obs).squeeze(-1)
    u = q_t - v
    weight = torch.where(u > 0, torch.full_like(u, expectile), torch.full_like(u, 1 - expectile))
    value_loss = (weight * u**2).mean()
    y = batch["rewards"] + discount * (1 - batch["dones"]) * agent.value(nobs).squeeze(-1).detach()
    q = agent.critic(obs, act)
    critic_loss = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
    w = torch.clamp(torch.exp(beta * u.detach()), max=100.0)
    actor_loss = -(w * agent.actor.log_prob(obs, act)).mean()
    return {"value": value_loss, "critic": critic_loss, "actor": actor_loss}


def test_defaults_are_the_papers_antmaze_settings():
    cfg = IQLConfig()
    assert (cfg.discount, cfg.tau, cfg.expectile, cfg.beta, cfg.max_weight) == (0.99, 5e-3, 0.9, 1.0, 100.0)
    assert (cfg.reward_scale, cfg.reward_bias, cfg.sparse_reward, cfg.num_critics) == (10.0, -5.0, True, 2)
    assert cfg.orthogonal_init is False  # IQLConfig's documented choice (CQL's official default is orthogonal)


def test_the_target_critic_starts_as_a_copy_and_never_takes_gradients():
    torch.manual_seed(0)
    agent = make_agent("iql", 3, 2, SMALL)
    assert agent.num_updates == 0
    for t, c in zip(agent.target_critic.parameters(), agent.critic.parameters()):
        assert torch.equal(t, c) and t is not c and not t.requires_grad


@pytest.mark.parametrize("overrides", [{}, {"discount": 0.5, "expectile": 0.7, "beta": 3.0}])
def test_losses_and_gradients_equal_the_reference_on_bootstrapping_transitions(overrides):
    agent = _agent(**overrides)
    batch = _batch()
    cfg = agent.cfg
    losses, metrics = agent.compute_losses(batch)
    ref = _reference(agent, batch, cfg.discount, cfg.expectile, cfg.beta)
    assert metrics["q_loss"] == losses["critic"] and metrics["value_loss"] == losses["value"]  # metrics by default
    assert overrides or (cfg.discount, cfg.expectile, cfg.beta) == (0.99, 0.9, 1.0)
    for name in ("value", "critic", "actor"):
        assert losses[name].item() == pytest.approx(ref[name].item(), rel=1e-5, abs=1e-6), name
    # the gradients too: the TD target and the advantage carry none; each loss trains its own network only
    for name, net in (("value", agent.value), ("critic", agent.critic), ("actor", agent.actor)):
        params = list(net.parameters())
        got = torch.autograd.grad(losses[name], params, retain_graph=True)
        want = torch.autograd.grad(ref[name], params, retain_graph=True)
        for g1, g2 in zip(got, want):
            torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    # the value target uses the target critic, not the critic, and V(s'), not V(s), is bootstrapped
    y_wrong = batch["rewards"] + cfg.discount * (1 - batch["dones"]) * agent.value(batch["observations"]).squeeze(-1)
    q = agent.critic(batch["observations"], batch["actions"])
    wrong = ((q - y_wrong) ** 2).mean(-1).sum()
    assert abs(wrong.item() - losses["critic"].item()) > 1e-3


def test_update_steps_every_network_then_soft_updates_the_target():
    agent = _agent(tau=0.25)
    batch = _batch()
    target_before = [p.detach().clone() for p in agent.target_critic.parameters()]
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    value_before = [p.detach().clone() for p in agent.value.parameters()]
    agent.update(batch)
    assert agent.num_updates == 1
    for t0, t1, c1, c0 in zip(target_before, agent.target_critic.parameters(), agent.critic.parameters(),
                              critic_before):
        assert not torch.equal(c1, c0)  # the critic stepped ...
        torch.testing.assert_close(t1, 0.75 * t0 + 0.25 * c1)  # ... and the target moved a quarter toward it
    assert any(not torch.equal(a, b) for a, b in zip(value_before, agent.value.parameters()))
