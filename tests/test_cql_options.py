"""CQL's non-default options against an unfused reference written from the equations (Kumar et al. 2020, CQL(H) with
the Lagrange variant, eqs. 4 and 30; Haarnoja et al. 2018, SAC's temperature; Kumar et al. 2021, DR3 eq. 3; the
defaults and option semantics are JaxCQL's / Cal-QL's, REFERENCE.md "Stage 2/3"): DR3, the Lagrange multiplier,
entropy in the backup without the max-target backup, clipping, the plain logsumexp without importance sampling,
a fixed temperature, the target entropy, and the soft-update rate. tests/test_cql.py checks the default path."""

import math

import pytest
import torch

from robopretrain.algos import CQL, CQLConfig

LOG_HALF = math.log(0.5)
B, N, A = 4, 3, 2


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(B, 3, generator=g),
        "actions": torch.rand(B, A, generator=g) * 2 - 1,
        "rewards": torch.randn(B, generator=g),
        "next_observations": torch.randn(B, 3, generator=g) + 1.0,
        "dones": torch.tensor([0.0, 1.0, 0.0, 0.0]),
        "mc_returns": torch.randn(B, generator=g),
    }


def _agent(head_scale: float = 1.0, **overrides) -> CQL:
    torch.manual_seed(0)
    agent = CQL(3, A, CQLConfig(actor_hidden=(8,), critic_hidden=(8, 8), n_actions=N, **overrides))
    agent.critic.fast_path = agent.target_critic.fast_path = False
    with torch.no_grad():  # a target critic distinct from the critic; Q-values spread by head_scale
        for p in agent.target_critic.parameters():
            p.add_(0.3 * torch.randn_like(p))
        agent.critic.head.weight.mul_(head_scale)
    return agent


def _member(critic, e, obs, actions):
    """``(Q_e(s, a), phi_e(s, a))`` of ensemble member ``e`` with plain per-layer math (no layer norm)."""
    h = torch.cat([obs, actions], -1)
    for layer in critic.hidden:
        h = torch.relu(h @ layer.weight[e] + layer.bias[e, 0])
    return (h @ critic.head.weight[e] + critic.head.bias[e, 0]).squeeze(-1), h


def _reference(agent: CQL, batch, seed: int) -> dict[str, torch.Tensor]:
    """The four losses by hand, replaying the agent's random draws (same order: actor noise, then uniform actions)."""
    cfg = agent.cfg
    obs, act, nobs = batch["observations"], batch["actions"], batch["next_observations"]
    nt = N if cfg.max_target_backup else 1
    torch.manual_seed(seed)
    mean, log_std = agent.actor(torch.cat([obs, nobs]))
    eps = torch.randn(2 * B, max(1 + N, N + nt), A)
    u = mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * eps
    normal = torch.distributions.Normal(mean.unsqueeze(1), log_std.exp().unsqueeze(1))
    logp = (normal.log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)).sum(-1)
    acts = torch.tanh(u)
    rand = torch.empty(B, N, A).uniform_(-1, 1)
    pi_a, pi_logp = acts[:B, 0], logp[:B, 0]
    acts, logp = acts.detach(), logp.detach()
    cur, cur_lp, nxt, nxt_lp = acts[:B, 1 : 1 + N], logp[:B, 1 : 1 + N], acts[B:, :N], logp[B:, :N]
    tgt, tgt_lp = acts[B:, N : N + nt], logp[B:, N : N + nt]

    target_entropy = -A if cfg.target_entropy is None else cfg.target_entropy
    if cfg.use_automatic_entropy_tuning:
        alpha = agent.log_alpha.exp() * cfg.alpha_multiplier
        alpha_loss = -(agent.log_alpha * (pi_logp.detach() + target_entropy)).mean()
    else:
        alpha, alpha_loss = torch.tensor(cfg.alpha_multiplier), torch.tensor(0.0)
    alpha = alpha.detach()

    rep = lambda x, k: x.unsqueeze(1).expand(B, k, x.shape[-1])  # noqa: E731
    with torch.no_grad():
        tq = torch.stack([_member(agent.target_critic, e, rep(nobs, nt), tgt)[0] for e in range(2)]).min(0).values
        next_q, idx = tq.max(-1)
        value = next_q - alpha * tgt_lp.gather(1, idx[:, None]).squeeze(1) if cfg.backup_entropy else next_q
        y = batch["rewards"] + cfg.discount * (1 - batch["dones"]) * value
    chosen = tgt[torch.arange(B), idx]

    critic_loss, alpha_prime_loss, q_pis, t = 0.0, 0.0, [], cfg.cql_temp
    alpha_prime = agent.log_alpha_prime.exp().clamp(0.0, 1e6)
    for e in range(2):
        q_data, phi = _member(agent.critic, e, obs, act)
        q_rand = _member(agent.critic, e, rep(obs, N), rand)[0]
        q_cur = _member(agent.critic, e, rep(obs, N), cur)[0]
        q_nxt = _member(agent.critic, e, rep(obs, N), nxt)[0]
        if cfg.cql_importance_sample:
            cat = torch.cat([q_rand - A * LOG_HALF, q_nxt - nxt_lp, q_cur - cur_lp], 1)
        else:
            cat = torch.cat([q_rand, q_data[:, None], q_nxt, q_cur], 1)
        diff = t * torch.logsumexp(cat / t, 1) - q_data
        gap = diff.clamp(cfg.cql_clip_diff_min, cfg.cql_clip_diff_max).mean()
        if cfg.cql_lagrange:
            cql = alpha_prime.detach() * cfg.cql_alpha * (gap - cfg.cql_target_action_gap)
            alpha_prime_loss = alpha_prime_loss - alpha_prime * cfg.cql_alpha * (gap.detach()
                                                                                 - cfg.cql_target_action_gap) / 2
        else:
            cql = cfg.cql_alpha * gap
        critic_loss = critic_loss + ((q_data - y) ** 2).mean() + cql
        if cfg.dr3_coef > 0:
            phi_next = _member(agent.critic, e, nobs, chosen)[1]
            critic_loss = critic_loss + cfg.dr3_coef * (phi * phi_next).sum(-1).mean()
        q_pis.append(_member(agent.critic, e, obs, pi_a)[0])
    actor_loss = (alpha * pi_logp - torch.stack(q_pis).min(0).values).mean()
    return {"critic": critic_loss, "actor": actor_loss, "alpha": alpha_loss, "alpha_prime": alpha_prime_loss}


OPTIONS = {
    "dr3": {"dr3_coef": 0.3},
    "lagrange": {"cql_lagrange": True, "cql_target_action_gap": 0.5, "log_alpha_prime_init": 0.3, "cql_alpha": 2.0},
    "backup_entropy": {"max_target_backup": False, "backup_entropy": True, "target_entropy": -0.5,
                       "log_alpha_init": 0.2, "alpha_multiplier": 0.5, "discount": 0.9},
    "no_importance_sampling_clipped": {"cql_importance_sample": False, "cql_temp": 2.0, "head_scale": 300.0,
                                       "cql_clip_diff_min": 4.5, "cql_clip_diff_max": 5.0},
    "fixed_temperature": {"use_automatic_entropy_tuning": False, "alpha_multiplier": 0.3, "backup_entropy": True},
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_losses_and_gradients_equal_the_reference(name):
    agent = _agent(**OPTIONS[name])
    batch = _batch()
    torch.manual_seed(5)
    losses, _ = agent.compute_losses(batch)
    ref = _reference(agent, batch, seed=5)
    for key in ("critic", "actor", "alpha", "alpha_prime"):
        assert losses[key].detach().item() == pytest.approx(float(torch.as_tensor(ref[key]).detach()), rel=1e-5, abs=1e-6), key
    groups = {"critic": list(agent.critic.parameters()), "actor": list(agent.actor.parameters()),
              "alpha": [agent.log_alpha], "alpha_prime": [agent.log_alpha_prime]}
    for key, params in groups.items():
        if not losses[key].requires_grad:
            assert not torch.is_tensor(ref[key]) or not ref[key].requires_grad, key
            continue
        got = torch.autograd.grad(losses[key], params, retain_graph=True)
        want = torch.autograd.grad(ref[key], params, retain_graph=True)
        for g1, g2 in zip(got, want):
            torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_the_clip_bounds_cut_some_differences_and_not_others():
    """The clipped case above is only a test of clipping if some differences lie outside the bounds and some in."""
    agent = _agent(**OPTIONS["no_importance_sampling_clipped"])
    ref_clipped = _reference(agent, _batch(), seed=5)["critic"]
    agent.cfg.cql_clip_diff_min, agent.cfg.cql_clip_diff_max = -math.inf, math.inf
    ref_free = _reference(agent, _batch(), seed=5)["critic"]
    agent.cfg.cql_clip_diff_min = 4.5
    ref_low = _reference(agent, _batch(), seed=5)["critic"]
    assert ref_free.item() != pytest.approx(ref_clipped.item(), abs=1e-3)
    assert ref_low.item() != pytest.approx(ref_clipped.item(), abs=1e-3)  # the upper bound cuts some
    assert ref_low.item() != pytest.approx(ref_free.item(), abs=1e-3)  # the lower bound cuts some


@pytest.mark.parametrize("tau", [5e-3, 0.3])
def test_soft_update_rate(tau):
    agent = _agent() if tau == 5e-3 else _agent(tau=tau)
    before = [p.detach().clone() for p in agent.target_critic.parameters()]
    agent.update(_batch())
    for t0, t1, c in zip(before, agent.target_critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(t1, (1 - tau) * t0 + tau * c)
        assert not torch.equal(t1, t0)


def test_target_entropy_default_is_minus_the_action_size():
    assert _agent().target_entropy == -A
    assert _agent(target_entropy=-0.5).target_entropy == -0.5


def test_the_target_critic_starts_as_a_copy_and_never_takes_gradients():
    torch.manual_seed(0)
    agent = CQL(3, A, CQLConfig(actor_hidden=(8,), critic_hidden=(8,), n_actions=N))
    assert agent.num_updates == 0
    for t, c in zip(agent.target_critic.parameters(), agent.critic.parameters()):
        assert torch.equal(t, c) and t is not c and not t.requires_grad
    losses, metrics = agent.compute_losses(_batch())
    assert metrics["critic_loss"] == losses["critic"]  # metrics by default


def test_option_defaults_are_the_official_calql_ones():
    """REFERENCE.md, Stage 3 (the official Cal-QL / JaxCQL settings); tests/test_cql.py checks the rates and sizes."""
    cfg = CQLConfig()
    assert (cfg.use_automatic_entropy_tuning, cfg.backup_entropy, cfg.max_target_backup, cfg.cql_importance_sample,
            cfg.cql_lagrange, cfg.use_calql, cfg.critic_layer_norm) == (True, False, True, True, False, False, False)
    assert (cfg.target_entropy, cfg.alpha_multiplier, cfg.log_alpha_init, cfg.cql_target_action_gap,
            cfg.log_alpha_prime_init, cfg.dr3_coef) == (None, 1.0, 0.0, 0.8, 1.0, 0.0)
    assert (cfg.cql_clip_diff_min, cfg.cql_clip_diff_max) == (-math.inf, math.inf)
    assert (cfg.policy_log_std_multiplier, cfg.policy_log_std_offset, cfg.sparse_reward) == (1.0, -1.0, True)


def test_at_least_one_sampled_action():
    assert CQL(3, A, CQLConfig(actor_hidden=(8,), critic_hidden=(8,), n_actions=1)).cfg.n_actions == 1
    with pytest.raises(ValueError, match="n_actions must be >= 1"):
        CQL(3, A, CQLConfig(actor_hidden=(8,), critic_hidden=(8,), n_actions=0))


def test_bc_warm_start_imitates_the_data_for_bc_steps_updates_then_follows_the_critic():
    """CORL cql.py ``_policy_loss``: while ``total_it <= bc_steps`` (its first bc_steps updates) the actor loss is
    ``mean(alpha * log pi(a~pi|s) - log pi(a_data|s))``, after that the SAC loss on the critic."""
    from robopretrain.nets.actor import squashed_gaussian_sample

    agent, batch = _agent(bc_steps=2), _batch()
    assert agent.eager_updates() == 2 and _agent().eager_updates() == 0

    def actor_loss_and_grad() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(5)
        losses, _ = agent._losses(batch, False)
        grads = torch.autograd.grad(losses["actor"], list(agent.actor.parameters()))
        return losses["actor"].detach(), grads

    for update in range(2):
        loss, grads = actor_loss_and_grad()
        torch.manual_seed(5)  # the same draw: the actor pass on [s; s'] samples max(1 + N, 2N) actions per state
        mean, log_std = agent.actor(torch.cat([batch["observations"], batch["next_observations"]]))
        _, logp = squashed_gaussian_sample(mean, log_std, max(1 + N, 2 * N))
        expected = (agent.alpha().detach() * logp[:B, 0] - agent.actor.log_prob(batch["observations"],
                                                                              batch["actions"])).mean()
        torch.testing.assert_close(loss, expected)
        with torch.no_grad():  # the critic plays no part in the warm-start actor loss
            for p in agent.critic.parameters():
                p.mul_(3.0)
        torch.testing.assert_close(actor_loss_and_grad()[1], grads)
        agent.update(batch)
    assert agent.num_updates == 2
    _, grads = actor_loss_and_grad()
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.mul_(3.0)
    assert any(not torch.allclose(a, b) for a, b in zip(actor_loss_and_grad()[1], grads))  # now the critic steers it
    with pytest.raises(ValueError, match="bc_steps must be >= 0"):
        _agent(bc_steps=-1)


def test_actor_bc_weight_gives_the_td3_bc_normalised_actor_loss_on_this_batch():
    """``actor_bc_weight`` w: ``mean(alpha log pi - min Q) / mean|min Q| + w * mean((tanh(mu(s)) - a_data)^2)``
    (TD3+BC's lambda = 1 / mean|Q| on the SAC actor), with ``mu`` the actor's mean at the batch's own states (not
    s'), the Q-values those of the actor's first draw, and the plain SAC loss when w = 0."""
    from robopretrain.algos.cql import bc_regularized_actor_loss
    from robopretrain.nets.actor import squashed_gaussian_sample

    batch = _batch()
    for weight in (0.0, 0.4):
        agent = _agent(head_scale=5.0, actor_bc_weight=weight)
        torch.manual_seed(5)
        loss = agent._losses(batch, False)[0]["actor"]
        torch.manual_seed(5)
        obs = torch.cat([batch["observations"], batch["next_observations"]])
        mean, log_std = agent.actor(obs)
        actions, logp = squashed_gaussian_sample(mean, log_std, max(1 + N, 2 * N))
        q = agent.critic(batch["observations"], actions[:B, 0]).min(dim=0).values
        sac = (agent.alpha().detach() * logp[:B, 0] - q).mean()
        bc = (torch.tanh(mean[:B]) - batch["actions"]).square().mean()
        expected = sac / q.abs().mean() + weight * bc if weight else sac
        torch.testing.assert_close(loss, expected)
    # the Q part is free of the reward scale: Q and alpha x 10 leave the loss unchanged
    q, logp, mu, a = torch.randn(2, B), torch.randn(B), torch.rand(B, A), torch.rand(B, A)
    torch.testing.assert_close(bc_regularized_actor_loss(10 * q, logp, 10.0, mu, a, 0.4),
                               bc_regularized_actor_loss(q, logp, 1.0, mu, a, 0.4))
    with pytest.raises(ValueError, match="actor_bc_weight must be >= 0"):
        _agent(actor_bc_weight=-0.1)


def test_actor_bc_filter_keeps_the_bc_term_to_successful_episodes():
    """``actor_bc_filter='success'``: the BC term is the mean over rows whose Monte-Carlo return beats the
    never-succeeds value ``reward_bias / (1 - discount)`` (-500 at the defaults); other rows add nothing."""
    from robopretrain.algos.cql import successful_episode_mask
    from robopretrain.nets.actor import squashed_gaussian_sample

    mc = torch.tensor([-500.0, -499.99, -300.0, 5.0])
    assert successful_episode_mask(mc, -500.0).tolist() == [0.0, 0.0, 1.0, 1.0]
    batch = {**_batch(), "mc_returns": torch.tensor([-500.0, -120.0, -500.0, -20.0])}
    agent = _agent(head_scale=5.0, actor_bc_weight=0.4, actor_bc_filter="success")
    assert agent.never_succeeds_return == pytest.approx(-500.0)
    torch.manual_seed(5)
    loss = agent._losses(batch, False)[0]["actor"]
    torch.manual_seed(5)
    mean, log_std = agent.actor(torch.cat([batch["observations"], batch["next_observations"]]))
    actions, logp = squashed_gaussian_sample(mean, log_std, max(1 + N, 2 * N))
    q = agent.critic(batch["observations"], actions[:B, 0]).min(dim=0).values
    kept = torch.tensor([1, 3])
    bc = (torch.tanh(mean[kept]) - batch["actions"][kept]).square().mean()
    torch.testing.assert_close(loss, (agent.alpha().detach() * logp[:B, 0] - q).mean() / q.abs().mean() + 0.4 * bc)
    with pytest.raises(ValueError, match="actor_bc_filter must be"):
        _agent(actor_bc_filter="succes")
    with pytest.raises(ValueError, match="needs sparse_reward"):
        _agent(actor_bc_weight=0.4, actor_bc_filter="success", sparse_reward=False)
    _agent(actor_bc_filter="success", sparse_reward=False)  # without the BC term the filter acts on nothing
