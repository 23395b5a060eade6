"""CQL / Cal-QL losses against hand-computed values, the fused update, checkpoints and a tiny bandit."""

import math

import numpy as np
import pytest
import torch

from robopretrain.algos import CQL, CQLConfig, make_agent, make_config
from robopretrain.algos.cql import (
    bellman_loss,
    cql_conservative_penalty,
    dr3_penalty,
    entropy_temperature_loss,
    lagrange_alpha_prime_loss,
    max_target_q,
    sac_actor_loss,
    td_target,
)

LOG_HALF = math.log(0.5)


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_penalty_importance_sampled_logsumexp_by_hand():
    # B=1, N=2, A=1, one critic
    q_rand, q_cur, q_next = _t([[[1.0, 2.0]]]), _t([[[0.5, -1.0]]]), _t([[[3.0, 0.0]]])
    logp_cur, logp_next, q_data = _t([[-0.2, 0.3]]), _t([[0.1, -0.5]]), _t([[1.5]])
    terms = [1 - LOG_HALF, 2 - LOG_HALF, 3 - 0.1, 0 + 0.5, 0.5 + 0.2, -1 - 0.3]
    expected = math.log(sum(math.exp(x) for x in terms)) - 1.5
    got = cql_conservative_penalty(q_rand, q_cur, q_next, logp_cur, logp_next, q_data, 1.0, action_dim=1)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # temperature T: T * log sum exp(x / T)
    expected_t = 2.0 * math.log(sum(math.exp(x / 2.0) for x in terms)) - 1.5
    got_t = cql_conservative_penalty(q_rand, q_cur, q_next, logp_cur, logp_next, q_data, 2.0, action_dim=1)
    assert got_t.item() == pytest.approx(expected_t, abs=1e-12)
    # A=3: the uniform density is 0.5^3
    terms3 = [1 - 3 * LOG_HALF, 2 - 3 * LOG_HALF, *terms[2:]]
    got3 = cql_conservative_penalty(q_rand, q_cur, q_next, logp_cur, logp_next, q_data, action_dim=3)
    assert got3.item() == pytest.approx(math.log(sum(math.exp(x) for x in terms3)) - 1.5, abs=1e-12)


def test_penalty_without_importance_sampling_includes_data_q():
    q_rand, q_cur, q_next, q_data = _t([[[1.0, 2.0]]]), _t([[[0.5, -1.0]]]), _t([[[3.0, 0.0]]]), _t([[1.5]])
    terms = [1.0, 2.0, 1.5, 3.0, 0.0, 0.5, -1.0]
    got = cql_conservative_penalty(
        q_rand, q_cur, q_next, _t([[9.0, 9.0]]), _t([[9.0, 9.0]]), q_data, action_dim=1, importance_sample=False
    )
    assert got.item() == pytest.approx(math.log(sum(math.exp(x) for x in terms)) - 1.5, abs=1e-12)


def test_calql_bound_lifts_policy_actions_only():
    q_rand = _t([[[-5.0, -4.0]]]).requires_grad_()  # below the bound, must stay there
    q_cur = _t([[[0.5, -1.0]]]).requires_grad_()  # both below the bound of 2: lifted to 2
    q_next = _t([[[3.0, 0.0]]]).requires_grad_()  # 3 stays, 0 is lifted to 2
    logp_cur, logp_next, q_data, bound = _t([[-0.2, 0.3]]), _t([[0.1, -0.5]]), _t([[1.5]]), _t([2.0])
    got = cql_conservative_penalty(q_rand, q_cur, q_next, logp_cur, logp_next, q_data, 1.0, bound, action_dim=1)
    terms = [-5 - LOG_HALF, -4 - LOG_HALF, 3 - 0.1, 2 + 0.5, 2 + 0.2, 2 - 0.3]
    assert got.item() == pytest.approx(math.log(sum(math.exp(x) for x in terms)) - 1.5, abs=1e-12)
    got.backward()
    assert torch.all(q_rand.grad > 0)  # uniform actions are never bounded
    assert torch.all(q_cur.grad == 0)  # lifted values do not depend on Q
    assert q_next.grad[0, 0, 0] > 0 and q_next.grad[0, 0, 1] == 0


def test_clip_diff_and_batch_mean():
    q = _t([[[0.0], [0.0]]])
    lp = _t([[0.0], [0.0]])
    q_data = _t([[10.0, -10.0]])
    per_state = [math.log(math.exp(-LOG_HALF) + 2.0) - 10.0, math.log(math.exp(-LOG_HALF) + 2.0) + 10.0]
    got = cql_conservative_penalty(q, q, q, lp, lp, q_data, action_dim=1)
    assert got.item() == pytest.approx(sum(per_state) / 2, abs=1e-12)
    clipped = cql_conservative_penalty(q, q, q, lp, lp, q_data, action_dim=1, clip_diff_min=-1.0, clip_diff_max=1.0)
    assert clipped.item() == pytest.approx(0.0, abs=1e-12)


def test_max_target_backup_min_over_critics_then_max_over_samples():
    target_q = _t([[[1.0, 5.0, 2.0]], [[3.0, 4.0, 0.0]]])  # E=2, B=1, N=3
    q, logp, idx = max_target_q(target_q, _t([[-1.0, -2.0, -3.0]]))
    assert q.tolist() == [4.0] and logp.tolist() == [-2.0] and idx.tolist() == [1]
    target = td_target(_t([1.0, 1.0]), _t([0.0, 1.0]), _t([4.0, 4.0]), 0.9)
    assert target.tolist() == pytest.approx([1 + 0.9 * 4, 1.0])
    with_entropy = td_target(_t([1.0]), _t([0.0]), _t([4.0]), 0.9, next_logp=_t([-2.0]), alpha=0.5)
    assert with_entropy.item() == pytest.approx(1 + 0.9 * (4 + 1.0))
    assert bellman_loss(_t([[1.0, 2.0], [0.0, 0.0]]), _t([1.0, 4.0])).tolist() == [2.0, 8.5]


def test_actor_temperature_lagrange_and_dr3_by_hand():
    q_pi = _t([[1.0, 4.0], [2.0, 3.0]])  # min over critics: [1, 3]
    assert sac_actor_loss(q_pi, _t([-1.0, 0.5]), 0.2).item() == pytest.approx(((0.2 * -1 - 1) + (0.2 * 0.5 - 3)) / 2)
    log_alpha = _t(0.3).requires_grad_()
    loss = entropy_temperature_loss(log_alpha, _t([-1.0, -3.0]), target_entropy=-1.0)
    assert loss.item() == pytest.approx(-0.3 * ((-1 - 1) + (-3 - 1)) / 2)
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(3.0)  # too little entropy -> alpha grows
    log_ap = _t(0.0).requires_grad_()
    lagrange_alpha_prime_loss(log_ap, _t([2.0, 0.0]), 5.0, 0.8).backward()
    assert log_ap.grad.item() == pytest.approx(-5.0 * ((2 - 0.8) + (0 - 0.8)) / 2)
    # alpha' is clamped at 1e6 as in the authors' code (a runaway log alpha' does not blow the critic loss up)
    huge = lagrange_alpha_prime_loss(_t(float(np.log(1e7))), _t([2.0, 0.0]), 1.0, 0.0)
    assert huge.item() == pytest.approx(-1e6 * (2.0 + 0.0) / 2)
    phi, phi_next = _t([[[1.0, 2.0], [0.0, 1.0]]]), _t([[[3.0, 1.0], [2.0, -1.0]]])
    assert dr3_penalty(phi, phi_next, 0.5).tolist() == pytest.approx([0.5 * (5.0 + -1.0) / 2])


def _batch(b=16, obs_dim=3, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(b, obs_dim, generator=g),
        "actions": torch.rand(b, act_dim, generator=g) * 2 - 1,
        "rewards": torch.randn(b, generator=g),
        "next_observations": torch.randn(b, obs_dim, generator=g),
        "dones": (torch.rand(b, generator=g) < 0.2).float(),
        "mc_returns": torch.randn(b, generator=g),
    }


def _member_q(critic, e, obs, actions):
    """Q of ensemble member ``e`` with plain per-layer math: the unfused reference."""
    h = torch.cat([obs, actions], -1)
    for layer in critic.hidden:
        h = torch.relu(h @ layer.weight[e] + layer.bias[e, 0])
    return (h @ critic.head.weight[e] + critic.head.bias[e, 0]).squeeze(-1)


@pytest.mark.parametrize("fast_path", [True, False])
def test_fused_update_equals_unfused_reference(fast_path):
    b, n, a_dim = 4, 3, 2
    agent = CQL(3, a_dim, CQLConfig(actor_hidden=(8,), critic_hidden=(8, 8), n_actions=n, use_calql=True))
    with torch.no_grad():  # make the target critic differ from the critic
        for p in agent.target_critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    agent.critic.fast_path = agent.target_critic.fast_path = fast_path
    batch = _batch(b=b)
    obs, act, nobs, mc = batch["observations"], batch["actions"], batch["next_observations"], batch["mc_returns"]
    torch.manual_seed(123)
    losses, metrics = agent.compute_losses(batch)

    torch.manual_seed(123)  # replay the same random draws, in the same order
    mean, log_std = agent.actor(torch.cat([obs, nobs]))
    eps = torch.randn(2 * b, 2 * n, a_dim)
    u = mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * eps
    normal = torch.distributions.Normal(mean.unsqueeze(1), log_std.exp().unsqueeze(1))
    logp = (normal.log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)).sum(-1)
    acts = torch.tanh(u)
    rand = torch.empty(b, n, a_dim).uniform_(-1, 1)
    pi_a, pi_logp = acts[:b, 0], logp[:b, 0]
    acts, logp = acts.detach(), logp.detach()
    cur, cur_lp, nxt, nxt_lp = acts[:b, 1 : 1 + n], logp[:b, 1 : 1 + n], acts[b:, :n], logp[b:, :n]
    tgt = acts[b:, n:]
    rep = lambda x: x.unsqueeze(1).expand(b, n, x.shape[-1])  # noqa: E731
    target_q = torch.stack([_member_q(agent.target_critic, e, rep(nobs), tgt) for e in range(2)]).min(0).values
    target = batch["rewards"] + 0.99 * (1 - batch["dones"]) * target_q.max(-1).values
    critic_loss, q_pis = 0.0, []
    for e in range(2):
        q_data = _member_q(agent.critic, e, obs, act)
        q_rand = _member_q(agent.critic, e, rep(obs), rand)
        q_cur = torch.maximum(_member_q(agent.critic, e, rep(obs), cur), mc[:, None])
        q_nxt = torch.maximum(_member_q(agent.critic, e, rep(obs), nxt), mc[:, None])
        cat = torch.cat([q_rand - a_dim * LOG_HALF, q_nxt - nxt_lp, q_cur - cur_lp], 1)
        gap = (torch.logsumexp(cat, 1) - q_data).mean()
        critic_loss = critic_loss + ((q_data - target) ** 2).mean() + 5.0 * gap
        q_pis.append(_member_q(agent.critic, e, obs, pi_a))
    policy_loss = (1.0 * pi_logp - torch.stack(q_pis).min(0).values).mean()
    assert metrics["critic_loss"].item() == pytest.approx(critic_loss.item(), rel=1e-5, abs=1e-5)
    assert metrics["policy_loss"].item() == pytest.approx(policy_loss.item(), rel=1e-5, abs=1e-5)
    assert metrics["target_q"].item() == pytest.approx(target.mean().item(), rel=1e-5, abs=1e-5)
    # and the gradients: critic gradients equal those of the reference critic loss
    fused = torch.autograd.grad(losses["critic"], list(agent.critic.parameters()))
    ref = torch.autograd.grad(critic_loss, list(agent.critic.parameters()))
    for g1, g2 in zip(fused, ref):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
    # actor gradients equal those of the reference SAC loss (critic weights held fixed)
    fused = torch.autograd.grad(losses["actor"], list(agent.actor.parameters()))
    ref = torch.autograd.grad(policy_loss, list(agent.actor.parameters()))
    for g1, g2 in zip(fused, ref):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_update_uses_one_critic_pass_for_all_action_sets():
    agent = CQL(3, 2, CQLConfig(actor_hidden=(16,), critic_hidden=(16,), n_actions=5, use_calql=True))
    shapes = []
    agent.critic.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[1].shape)))
    target_shapes = []
    agent.target_critic.register_forward_hook(lambda m, args, out: target_shapes.append(tuple(args[1].shape)))
    metrics = agent.update(_batch())
    assert sorted(shapes) == [(16, 2), (16, 1 + 3 * 5, 2)]  # policy-loss pass + one pass for data/rand/cur/next
    assert target_shapes == [(16, 5, 2)]
    assert all(math.isfinite(v) for v in metrics.values())
    assert {"critic_loss", "cql_gap", "alpha", "bound_rate_cur"} <= set(metrics)


@pytest.mark.parametrize(
    "overrides",
    [
        {"cql_lagrange": True},
        {"dr3_coef": 0.03},
        {"dr3_coef": 0.03, "critic_layer_norm": True},
        {"max_target_backup": False, "backup_entropy": True, "use_automatic_entropy_tuning": False},
        {"cql_importance_sample": False},
    ],
)
def test_variants_run_and_only_train_their_parameters(overrides):
    agent = make_agent("calql", 3, 2, {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 3, **overrides})
    log_alpha, log_alpha_prime = agent.log_alpha.item(), agent.log_alpha_prime.item()
    for _ in range(3):
        metrics = agent.update(_batch())
    assert all(math.isfinite(v) for v in metrics.values())
    assert (agent.log_alpha_prime.item() != log_alpha_prime) == bool(overrides.get("cql_lagrange"))
    tuned = overrides.get("use_automatic_entropy_tuning", True)
    assert (agent.log_alpha.item() != log_alpha) == tuned


def _touched(loss, params):
    params = [p for p in params if p.requires_grad]
    if not params:
        return False
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("lagrange", [False, True])
def test_each_loss_only_reaches_its_own_parameters(lagrange):
    cfg = CQLConfig(actor_hidden=(16,), critic_hidden=(16,), n_actions=3, use_calql=True, cql_lagrange=lagrange)
    agent = CQL(3, 2, cfg)
    losses, _ = agent.compute_losses(_batch())
    groups = {
        "actor": list(agent.actor.parameters()),
        "critic": list(agent.critic.parameters()),
        "alpha": [agent.log_alpha],
        "alpha_prime": [agent.log_alpha_prime],
    }
    for name, loss in losses.items():
        if name == "alpha_prime" and not lagrange:
            assert not loss.requires_grad
            continue
        for group, params in groups.items():
            assert _touched(loss, params) == (group == name), (name, group)


def test_checkpoint_reloads_to_identical_outputs(tmp_path):
    cfg = {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 3, "cql_lagrange": True}
    agent = make_agent("calql", 3, 2, cfg)
    for _ in range(3):
        agent.update(_batch())
    path = tmp_path / "agent.pt"
    torch.save(agent.state_dict(), path)
    state = torch.load(path, weights_only=True)
    other = make_agent("calql", 3, 2, cfg)
    other.load_state_dict(state)
    obs = torch.randn(5, 3)
    np.testing.assert_array_equal(other.act(obs), agent.act(obs))
    torch.manual_seed(7)
    m1 = agent.update(_batch(seed=3))
    torch.manual_seed(7)
    m2 = other.update(_batch(seed=3))
    assert m1 == m2
    for p, q in zip(agent.critic.parameters(), other.critic.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="obs_dim"):
        make_agent("calql", 4, 2, cfg).load_state_dict(state)


def test_registry_defaults_and_errors():
    assert make_config("calql").use_calql and not make_config("cql").use_calql
    cfg = make_config("calql")
    assert (cfg.policy_lr, cfg.qf_lr, cfg.batch_size, cfg.discount, cfg.tau) == (1e-4, 3e-4, 256, 0.99, 5e-3)
    assert (cfg.n_actions, cfg.cql_alpha, cfg.cql_temp, cfg.orthogonal_init, cfg.max_target_backup) == (
        10, 5.0, 1.0, True, True,
    )
    assert (cfg.reward_scale, cfg.reward_bias) == (10.0, -5.0)
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("sac", 2, 1)
    with pytest.raises(ValueError, match="unknown calql config key"):
        make_config("calql", {"n_action": 3})


def bandit_batch(rng, n):
    """One-step episodes: reward +5 if the action is positive, else -5 (sparse {0,1} * 10 - 5)."""
    obs = rng.normal(size=(n, 2)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    r = np.where(act[:, 0] > 0, 5.0, -5.0).astype(np.float32)
    t = torch.from_numpy
    return {"observations": t(obs), "actions": t(act), "rewards": t(r), "next_observations": t(obs),
            "dones": torch.ones(n), "mc_returns": t(r)}


@pytest.mark.parametrize("name", ["cql", "calql"])
def test_learns_tiny_bandit(name):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "n_actions": 4, "policy_lr": 1e-3, "qf_lr": 1e-3}
    agent = make_agent(name, 2, 1, cfg)
    losses = [agent.update(bandit_batch(rng, 128))["critic_loss"] for _ in range(250)]
    assert np.mean(losses[-20:]) < 0.9 * np.mean(losses[:20])
    actions = agent.act(rng.normal(size=(64, 2)).astype(np.float32))
    assert (actions > 0).mean() > 0.95
    q = agent.q_values(torch.zeros(2, 2), torch.tensor([[0.8], [-0.8]]))
    assert q[0] > q[1]


def test_calql_requires_returns_to_go_but_cql_does_not():
    batch = _batch()
    del batch["mc_returns"]
    small = {"actor_hidden": [8], "critic_hidden": [8], "n_actions": 2}
    with pytest.raises(KeyError, match="mc_returns"):
        make_agent("calql", 3, 2, small).update(batch)
    assert math.isfinite(make_agent("cql", 3, 2, small).update(batch)["critic_loss"])


def test_q_outside_returns_counts_data_q_beyond_what_any_sparse_episode_can_return():
    """Q(s, a_data) below (r_lo / (1 - gamma)) or above (r_hi / (1 - gamma)) is extrapolation: the metric is the
    share of (critic, sample) values outside [-500, 500] at Cal-QL's reward transform; with a dense reward no range."""
    agent = CQL(3, 2, CQLConfig(actor_hidden=(16,), critic_hidden=(16,), n_actions=2, use_calql=True))
    assert agent.return_range == pytest.approx((-500.0, 500.0))
    with torch.no_grad():
        agent.critic.head.weight.zero_()
        agent.critic.head.bias.fill_(-600.0)
        agent.critic.head.bias[0] = -100.0  # member 0 inside, member 1 outside
    metrics = agent.update(_batch(), with_metrics=True)
    assert metrics["q_outside_returns"] == pytest.approx(0.5)
    assert metrics["q_data_min"] == pytest.approx(-600.0)
    with torch.no_grad():
        agent.critic.head.weight.zero_()
        agent.critic.head.bias.fill_(501.0)
    assert agent.update(_batch(), with_metrics=True)["q_outside_returns"] == pytest.approx(1.0)
    assert CQL(3, 2, CQLConfig(actor_hidden=(16,), critic_hidden=(16,), sparse_reward=False)).return_range is None
