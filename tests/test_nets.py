"""MLP, tanh-Gaussian actor and the batched critic ensemble."""

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from robopretrain.nets.actor import TanhGaussianActor, squashed_gaussian_sample, tanh_log_det_jacobian
from robopretrain.nets.critic import EnsembleCritic, VectorizedLinear
from robopretrain.nets.mlp import ONEDNN_AVAILABLE, Linear, build_mlp


def test_mlp_layers_and_orthogonal_init():
    net = build_mlp(5, 3, (16, 8), layer_norm=True, orthogonal_init=True, final_gain=1e-2)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "Linear"]
    w = net[0].weight  # (16, 5): orthogonal columns with gain sqrt(2)
    torch.testing.assert_close(w.t() @ w, 2.0 * torch.eye(5), atol=1e-5, rtol=0)
    head = net[-1].weight  # (3, 8): orthogonal rows, gain 1e-2
    torch.testing.assert_close(head @ head.t(), 1e-4 * torch.eye(3), atol=1e-8, rtol=0)
    assert torch.all(net[0].bias == 0)
    with pytest.raises(ValueError, match="unknown activation"):
        build_mlp(2, 2, (4,), activation="nope")


def test_tanh_log_det_is_stable_and_exact():
    u = torch.tensor([-30.0, -3.0, 0.0, 0.7, 30.0], dtype=torch.float64)
    exact = torch.log(1 - torch.tanh(u[1:4]) ** 2)
    torch.testing.assert_close(tanh_log_det_jacobian(u[1:4]), exact)
    assert torch.isfinite(tanh_log_det_jacobian(u)).all()  # the naive formula gives -inf at |u| = 30


def test_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    mean = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    log_std = torch.tensor([[-0.5, 0.2]], dtype=torch.float64)
    actions, logp = squashed_gaussian_sample(mean, log_std, n=1000)
    assert actions.shape == (1, 1000, 2) and logp.shape == (1, 1000)
    u = torch.atanh(actions)
    normal = torch.distributions.Normal(mean.unsqueeze(1), log_std.exp().unsqueeze(1))
    expected = (normal.log_prob(u) - torch.log1p(-actions**2)).sum(-1)
    torch.testing.assert_close(logp, expected, atol=1e-6, rtol=1e-6)


def test_actor_density_integrates_to_one_and_matches_histogram():
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 1, (16,))
    obs = torch.randn(1, 3)
    grid = torch.linspace(-1 + 1e-4, 1 - 1e-4, 20001).view(1, -1, 1)
    with torch.no_grad():
        density = actor.log_prob(obs, grid, clip_eps=1e-6).exp().squeeze(0)
        total = torch.trapezoid(density, grid.view(-1))
        assert abs(total.item() - 1.0) < 1e-2
        # Monte Carlo: the fraction of samples in [a, b] equals the integral of the density
        samples, _ = actor.sample(obs.expand(200000, 3))
        lo, hi = -0.2, 0.4
        frac = ((samples >= lo) & (samples <= hi)).float().mean().item()
        inside = (grid.view(-1) >= lo) & (grid.view(-1) <= hi)
        integral = torch.trapezoid(density[inside], grid.view(-1)[inside]).item()
        assert abs(frac - integral) < 5e-3


def test_actor_sample_shapes_deterministic_mode_and_log_std_clamp():
    actor = TanhGaussianActor(4, 2, (8, 8), orthogonal_init=True)
    obs = torch.randn(5, 4)
    a, lp = actor.sample(obs)
    assert a.shape == (5, 2) and lp.shape == (5,)
    a, lp = actor.sample(obs, n=7)
    assert a.shape == (5, 7, 2) and lp.shape == (5, 7)
    assert torch.all(a.abs() < 1)
    mean, log_std = actor(obs)
    det, _ = actor.sample(obs, n=3, deterministic=True)
    torch.testing.assert_close(det, torch.tanh(mean).unsqueeze(1).expand(5, 3, 2))
    np.testing.assert_allclose(actor.act(obs[0].numpy()), torch.tanh(mean[0]).detach().numpy(), rtol=1e-6)
    with torch.no_grad():
        actor.net[-1].bias.fill_(1e3)
    _, log_std = actor(obs)
    assert torch.all(log_std == 2.0)


def _member(critic: EnsembleCritic, e: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for layer in critic.hidden:
        lin = nn.Linear(layer.in_features, layer.out_features)
        lin.weight.data.copy_(layer.weight[e].t())
        lin.bias.data.copy_(layer.bias[e, 0])
        layers += [lin, nn.ReLU()]
    head = nn.Linear(critic.head.in_features, 1)
    head.weight.data.copy_(critic.head.weight[e].t())
    head.bias.data.copy_(critic.head.bias[e, 0])
    return nn.Sequential(*layers, head)


def test_ensemble_batched_pass_equals_each_member_separately():
    torch.manual_seed(0)
    critic = EnsembleCritic(6, 3, (32, 32), num_critics=3, orthogonal_init=True)
    obs, acts = torch.randn(4, 6), torch.rand(4, 5, 3) * 2 - 1
    q, feats = critic(obs, acts, return_features=True)
    assert q.shape == (3, 4, 5) and feats.shape == (3, 4, 5, 32)
    q_single = critic(obs, acts[:, 0])
    assert q_single.shape == (3, 4)
    for e in range(3):
        net = _member(critic, e)
        x = torch.cat([obs.unsqueeze(1).expand(4, 5, 6), acts], -1)
        torch.testing.assert_close(q[e], net(x).squeeze(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q_single[e], net(x[:, 0]).squeeze(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(feats[e], net[:-1](x), atol=1e-5, rtol=1e-5)


def test_ensemble_layer_norm_and_detached_params():
    critic = EnsembleCritic(3, 2, (8,), num_critics=2, layer_norm=True)
    obs, acts = torch.randn(4, 3), torch.rand(4, 2, requires_grad=True)
    critic(obs, acts, detach_params=True).sum().backward()
    assert acts.grad is not None
    assert all(p.grad is None for p in critic.parameters())
    with pytest.raises(ValueError, match="critic expects actions"):
        critic(obs, torch.rand(4, 3))


def test_vectorized_linear_is_one_bmm_per_member():
    layer = VectorizedLinear(3, 2, 4)
    x = torch.randn(4, 5, 3)
    out = layer(x)
    for e in range(4):
        torch.testing.assert_close(out[e], x[e] @ layer.weight[e] + layer.bias[e])


def test_checkpoint_round_trip_weights_only():
    torch.manual_seed(0)
    actor, critic = TanhGaussianActor(3, 2, (8,)), EnsembleCritic(3, 2, (8,), layer_norm=True)
    buf = io.BytesIO()
    torch.save({"actor": actor.state_dict(), "critic": critic.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    actor2, critic2 = TanhGaussianActor(3, 2, (8,)), EnsembleCritic(3, 2, (8,), layer_norm=True)
    actor2.load_state_dict(state["actor"])
    critic2.load_state_dict(state["critic"])
    obs, acts = torch.randn(4, 3), torch.rand(4, 2)
    torch.testing.assert_close(actor2(obs), actor(obs), rtol=0, atol=0)
    torch.testing.assert_close(critic2(obs, acts), critic(obs, acts), rtol=0, atol=0)
    assert math.isfinite(float(critic2(obs, acts).detach().sum()))


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("hidden", [(16,), (16, 12), (8, 16, 8)])
def test_fast_path_matches_autograd_path(hidden, onednn):
    torch.manual_seed(0)
    critic = EnsembleCritic(5, 3, hidden, num_critics=3)
    critic.use_onednn = onednn
    obs = torch.randn(4, 5, requires_grad=True)
    acts = torch.rand(4, 6, 3, requires_grad=True)
    weights = torch.randn(3, 4, 6, hidden[-1])
    results = {}
    for fast in (True, False):
        critic.fast_path = fast
        critic.zero_grad(set_to_none=True)
        obs.grad = acts.grad = None
        q, feats = critic(obs, acts, return_features=True)
        (q.square().sum() + (feats * weights).sum()).backward()
        results[fast] = [q, feats, obs.grad, acts.grad, *[p.grad for p in critic.parameters()]]
        with torch.no_grad():
            results[(fast, "no_grad")] = critic(obs, acts)
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[(True, "no_grad")], results[(False, "no_grad")])


def test_fast_path_refuses_stale_activations():
    critic = EnsembleCritic(3, 2, (8,))
    critic.use_onednn = False  # the BLAS fast path reuses buffers between passes; the oneDNN one does not
    obs, acts = torch.randn(4, 3), torch.rand(4, 5, 2)
    first = critic(obs, acts).sum()
    second = critic(obs, acts).sum()  # overwrites the buffers the first graph would need
    with pytest.raises(RuntimeError, match="fast path"):
        first.backward()
    second.backward()
    with torch.no_grad():
        critic(obs, acts)  # no-grad passes use their own buffers
    third = critic(obs, acts).sum()
    with torch.no_grad():
        critic(obs, acts)
    third.backward()
    big = critic(obs, acts).sum()
    small = critic(obs, acts[:, :1]).sum()  # a pass of another size (e.g. DR3's phi(s', a')) is independent
    (big + small).backward()
    assert EnsembleCritic(3, 2, (8,), layer_norm=True).fast_path is False


@pytest.mark.skipif(not ONEDNN_AVAILABLE, reason="oneDNN kernels not in this torch build")
def test_onednn_fast_path_keeps_each_graph_and_detached_params():
    torch.manual_seed(0)
    critic = EnsembleCritic(3, 2, (8, 8), num_critics=2)
    obs, acts = torch.randn(4, 3), torch.rand(4, 5, 2, requires_grad=True)
    first = critic(obs, acts).square().sum()
    second = critic(obs, acts[:, :2]).sum()  # a second pass does not disturb the first graph
    grads = torch.autograd.grad(first, list(critic.parameters()) + [acts])
    critic.fast_path = False
    ref = torch.autograd.grad(critic(obs, acts).square().sum(), list(critic.parameters()) + [acts])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    second.backward()
    # detached weights (the actor loss): gradient reaches the actions only, equal to the generic path's
    critic.fast_path = True
    critic.zero_grad(set_to_none=True)
    (g_fast,) = torch.autograd.grad(critic(obs, acts, detach_params=True).sum(), acts)
    critic.fast_path = False
    (g_ref,) = torch.autograd.grad(critic(obs, acts, detach_params=True).sum(), acts)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in critic.parameters())


@pytest.mark.skipif(not ONEDNN_AVAILABLE, reason="oneDNN kernels not in this torch build")
def test_mlp_linear_onednn_equals_nn_linear():
    torch.manual_seed(0)
    fast = Linear(7, 5)
    plain = nn.Linear(7, 5)
    plain.load_state_dict(fast.state_dict())
    assert set(fast.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 4, 7, requires_grad=True)
    out_fast, out_plain = fast(x), plain(x)
    torch.testing.assert_close(out_fast, out_plain, atol=1e-6, rtol=1e-5)
    weights = torch.randn(3, 4, 5)
    g_fast = torch.autograd.grad((out_fast * weights).sum(), [x, fast.weight, fast.bias])
    g_plain = torch.autograd.grad((out_plain * weights).sum(), [x, plain.weight, plain.bias])
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
