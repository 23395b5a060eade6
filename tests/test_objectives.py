"""Stage-1 objectives (ICVF, VIP, TCN) on tiny inputs whose losses are computed by hand here."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from video_pretrain.diagnose import spearman
from video_pretrain.objectives import make_objective
from video_pretrain.objectives.icvf import ICVFHeads, ICVFObjective, expectile_weights, icvf_loss
from video_pretrain.objectives.tcn import tcn_logits, tcn_loss
from video_pretrain.objectives.vip import vip_loss, vip_value
from video_pretrain.sampling import ICVFSampler


class TinyEncoder(nn.Module):
    """A stand-in image encoder: flatten a (B, 3, 8, 8) image and project it to 16 features."""

    def __init__(self, out_dim: int = 16):
        super().__init__()
        self.out_dim = out_dim
        self.proj = nn.Linear(3 * 8 * 8, out_dim)
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj((x - self.mean).flatten(1))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ ICVF
def test_expectile_weight_follows_the_sign_of_the_advantage():
    w = expectile_weights(t([2.0, 0.0, -1e-6, -3.0]), 0.9)
    assert torch.allclose(w, t([0.9, 0.9, 0.1, 0.1]))


def test_icvf_loss_by_hand_weights_by_intent_advantage_not_td_error():
    gamma, tau = 0.99, 0.9
    # three samples, two heads
    # sample 0: intent advantage -1 + 0.99 * min(-2, -3) - mean(-5, -5) = 1.03 >= 0        -> weight tau
    # sample 1: -1 + 0.99 * min(-4.5, -1) - mean(-4, -6) = -0.455 < 0 (the MEAN would give +1.28) -> 1 - tau
    # sample 2: at the intent (r_z = 0, mask_z = 0) and V(s, z, z) = 0: advantage exactly 0  -> tau
    next_v_zz = t([[-2.0, -4.5, -7.0], [-3.0, -1.0, -9.0]])
    v_zz = t([[-5.0, -4.0, 0.0], [-5.0, -6.0, 0.0]])
    intent_reward = t([-1.0, -1.0, 0.0])
    intent_mask = t([1.0, 1.0, 0.0])
    # goal-conditioned TD targets: sample 1 is at its goal (r = 0, mask = 0)
    reward = t([-1.0, 0.0, -1.0])
    mask = t([1.0, 0.0, 1.0])
    next_v = t([[-10.0, -7.0, -2.0], [-12.0, -6.0, -1.0]])
    v = t([[-9.0, -1.0, -4.0], [-14.0, 0.5, -1.0]])

    loss, info = icvf_loss(v, next_v, next_v_zz, v_zz, reward, mask, intent_reward, intent_mask, gamma, tau)

    q = [[-1 + 0.99 * -10.0, 0.0, -1 + 0.99 * -2.0], [-1 + 0.99 * -12.0, 0.0, -1 + 0.99 * -1.0]]
    w = [tau, 1 - tau, tau]
    vv = [[-9.0, -1.0, -4.0], [-14.0, 0.5, -1.0]]
    expected = sum(sum(w[j] * (q[i][j] - vv[i][j]) ** 2 for j in range(3)) / 3 for i in range(2))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert info["adv_positive"].item() == pytest.approx(2 / 3)
    # weighting by the TD error's sign instead would give another number
    wrong = sum(sum((tau if q[i][j] - vv[i][j] >= 0 else 1 - tau) * (q[i][j] - vv[i][j]) ** 2 for j in range(3)) / 3
                for i in range(2))
    assert abs(wrong - expected) > 0.5


def test_icvf_loss_gradient_flows_only_through_the_online_values():
    v = t([[-1.0, -2.0]]).requires_grad_(True)
    targets = [t([[-3.0, -1.0]]).requires_grad_(True) for _ in range(3)]
    ones, zeros = t([1.0, 1.0]), t([0.0, 0.0])
    loss, _ = icvf_loss(v, *targets, -ones, ones, -ones, ones)
    loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(x.grad is None for x in targets)
    del zeros


def test_icvf_heads_are_multilinear_in_the_documented_form():
    torch.manual_seed(0)
    heads = ICVFHeads(feature_dim=5, hidden=(7, 6), num_heads=2)
    fs, fg, fz = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    values = heads(fs, fg, fz)
    assert values.shape == (2, 3)
    head = heads.heads[1]
    tz = head.T(head.psi(fz))
    by_hand = ((head.A(tz * head.phi(fs))) * (head.B(tz * head.psi(fg)))).sum(-1)
    assert torch.allclose(values[1], by_hand)
    # intents are encoded by psi, the same network as outcomes
    assert all(isinstance(m, (nn.Linear, nn.ReLU)) for m in head.psi)
    assert isinstance(head.phi[-1], nn.ReLU)  # ReLU after the last hidden layer too


def test_icvf_objective_trains_online_nets_and_soft_updates_the_target():
    torch.manual_seed(0)
    obj = ICVFObjective(TinyEncoder(), hidden=(8, 8), target_update_rate=0.005)
    images = torch.rand(4, 4, 3, 8, 8)
    batch = {"reward": -torch.ones(4), "mask": torch.ones(4), "intent_reward": -torch.ones(4), "intent_mask": torch.ones(4)}
    loss, info = obj.compute_loss(images, batch)
    loss.backward()
    assert obj.encoder.proj.weight.grad is not None and obj.encoder.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in obj.target_encoder.parameters())
    assert all(p.grad is None for p in obj.target_heads.parameters())
    assert set(info) >= {"value_loss", "adv_positive", "v_mean"}

    before = obj.target_encoder.proj.weight.detach().clone()
    with torch.no_grad():
        obj.encoder.proj.weight.add_(1.0)
    obj.after_step()
    expected = before + 0.005 * (obj.encoder.proj.weight.detach() - before)
    assert torch.allclose(obj.target_encoder.proj.weight, expected, atol=1e-7)


def test_icvf_target_values_come_from_the_target_network():
    """With targets frozen at 0 values the TD target is the reward alone: q = r."""
    torch.manual_seed(0)
    obj = ICVFObjective(TinyEncoder(), hidden=(8, 8))
    with torch.no_grad():
        for head in obj.target_heads.heads:
            head.A.weight.zero_()
            head.A.bias.zero_()
    images = torch.rand(3, 4, 3, 8, 8)
    batch = {"reward": t([-1.0, 0.0, -1.0]).float(), "mask": t([1.0, 0.0, 1.0]).float(),
             "intent_reward": -torch.ones(3), "intent_mask": torch.ones(3)}
    loss, info = obj.compute_loss(images, batch)
    # advantage = -1 + 0 - 0 < 0 for all samples: weight 1 - 0.9
    fs, fg, fz = (obj.encoder(images[:, k]) for k in (0, 2, 3))
    v = obj.heads(fs, fg, fz)
    expected = (0.1 * (batch["reward"] - v) ** 2).mean(1).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert info["adv_positive"].item() == 0.0


def test_icvf_objective_loss_equals_the_papers_target_with_distinct_target_networks():
    """Ghosh et al. 2023, eq. 6 (and the authors' icvf_learner): q_i = r + gamma m V_target_i(s', g, z),
    A = r_z + gamma m_z min_i V_target_i(s', z, z) - mean_i V_target_i(s, z, z), weight tau where A >= 0; with a target
    encoder and target heads unlike the online ones, four distinct frames per sample and mixed advantage signs."""
    torch.manual_seed(0)
    obj = ICVFObjective(TinyEncoder(), hidden=(8, 8))
    assert (obj.gamma, obj.expectile, obj.target_update_rate) == (0.99, 0.9, 0.005)
    with torch.no_grad():  # targets unlike the online nets; online values well away from 0 (they start near 1e-6)
        for p in [*obj.target_encoder.parameters(), *obj.target_heads.parameters(), *obj.heads.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    n = 32
    images = torch.rand(n, 4, 3, 8, 8)
    g = torch.Generator().manual_seed(1)
    batch = {"reward": -(torch.rand(n, generator=g) < 0.7).float(), "mask": (torch.rand(n, generator=g) < 0.7).float(),
             "intent_reward": -(torch.rand(n, generator=g) < 0.5).float(),
             "intent_mask": (torch.rand(n, generator=g) < 0.8).float()}
    loss, info = obj.compute_loss(images, batch)

    s, s_next, goal, z = (images[:, k] for k in range(4))
    v = obj.heads(obj.encoder(s), obj.encoder(goal), obj.encoder(z))
    te = obj.target_encoder
    with torch.no_grad():
        next_v = obj.target_heads(te(s_next), te(goal), te(z))
        next_v_zz = obj.target_heads(te(s_next), te(z), te(z))
        v_zz = obj.target_heads(te(s), te(z), te(z))
    q = batch["reward"] + 0.99 * batch["mask"] * next_v
    adv = batch["intent_reward"] + 0.99 * batch["intent_mask"] * next_v_zz.min(0).values - v_zz.mean(0)
    w = torch.where(adv >= 0, 0.9, 0.1)
    expected = (w * (q - v) ** 2).mean(1).sum()
    assert 0 < (adv >= 0).float().mean() < 1  # both weights occur
    # the test can tell which target values make the advantage: swapping s' for s in V(., z, z) flips some signs
    swapped = batch["intent_reward"] + 0.99 * batch["intent_mask"] * v_zz.min(0).values - v_zz.mean(0)
    assert ((swapped >= 0) != (adv >= 0)).any()
    assert v.abs().mean() > 0.05
    assert info["adv_positive"].item() == pytest.approx((adv >= 0).float().mean().item())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert info["abs_td"].item() == pytest.approx((q - v).abs().mean().item(), rel=1e-5)
    assert info["q_mean"].item() == pytest.approx(q.mean().item(), rel=1e-5)
    # icvf_loss's own defaults are the paper's gamma 0.99 and expectile 0.9 too
    plain, _ = icvf_loss(v, next_v, next_v_zz, v_zz, batch["reward"], batch["mask"], batch["intent_reward"],
                         batch["intent_mask"])
    assert plain.item() == pytest.approx(expected.item(), rel=1e-5)
    # the online encoder's gradient is that of the reference loss
    got = torch.autograd.grad(loss, list(obj.encoder.parameters()), retain_graph=True)
    want = torch.autograd.grad(expected, list(obj.encoder.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # value() is the online heads' mean over heads, with the frames in their roles
    with torch.no_grad():
        torch.testing.assert_close(obj.value(s, goal, z), v.mean(0))


def test_icvf_objective_has_two_heads_frozen_targets_and_soft_updates_the_heads_too():
    torch.manual_seed(0)
    obj = ICVFObjective(TinyEncoder(), hidden=(8, 8))
    assert len(obj.heads.heads) == 2 and len(ICVFHeads(4, (8,)).heads) == 2  # two value heads (REFERENCE.md)
    frozen = [*obj.target_encoder.parameters(), *obj.target_heads.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    before = [p.detach().clone() for p in obj.target_heads.parameters()]
    with torch.no_grad():
        for p in obj.heads.parameters():
            p.add_(1.0)
    obj.after_step()
    for t0, t1, p in zip(before, obj.target_heads.parameters(), obj.heads.parameters()):
        torch.testing.assert_close(t1, t0 + 0.005 * (p - t0))


# ------------------------------------------------------------------------------------------------ VIP
def test_vip_loss_on_2d_embeddings_by_hand():
    e0 = t([[0.0, 0.0], [1.0, 0.0]])
    eg = t([[3.0, 4.0], [1.0, 0.0]])
    es = t([[0.0, 4.0], [2.0, 0.0]])
    es1 = t([[3.0, 0.0], [1.0, 0.0]])
    loss, info = vip_loss(e0, eg, es, es1, reward=-1.0, gamma=0.98, l1_weight=1e-3, l2_weight=1e-3)
    # V(o0;g) = -5, 0;  V(o_t;g) = -3, -1;  V(o_t+1;g) = -4, 0
    # exponents -(r + 0.98 V' - V): -(-1 - 3.92 + 3) = 1.92 and -(-1 + 0 + 1) = 0
    value_term = 0.02 * (5.0 + 0.0) / 2
    contrast = math.log((math.exp(1.92) + math.exp(0.0)) / 2)
    l1 = (0 + 7 + 4 + 3 + 1 + 1 + 2 + 1) / 8  # order: all initial, all goals, all obs, all next
    l2 = (0 + 5 + 4 + 3 + 1 + 1 + 2 + 1) / 8
    expected = value_term + contrast + 1e-3 * (l1 + l2)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert info["vip_loss"].item() == pytest.approx(value_term + contrast, rel=1e-12)
    # the defaults are the paper's: reward -1 per step, gamma 0.98, L1 and L2 penalties 1e-3
    assert vip_loss(e0, eg, es, es1)[0].item() == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(vip_value(es, eg), t([-3.0, -1.0]))


def test_vip_loss_has_finite_gradients_when_a_frame_is_its_goal():
    e = torch.randn(2, 3, requires_grad=True)
    goal = e[:1].expand(2, 3)
    loss, _ = vip_loss(e[:1].expand(2, 3), goal, e, goal)  # o_t+1 == goal: zero distance
    loss.backward()
    assert torch.isfinite(e.grad).all()


# ------------------------------------------------------------------------------------------------ TCN
def test_tcn_logits_and_probabilities_by_hand():
    e0, e1, e2 = t([[0.0], [10.0]]), t([[1.0], [11.0]]), t([[3.0], [12.5]])
    video = torch.tensor([0, 1])
    logits2 = tcn_logits(e2, e1, e0, video)
    # anchor s2: [sim(s2_i, s1_0), sim(s2_i, s1_1), sim(s2_i, s0_i)]
    assert torch.allclose(logits2, t([[-2.0, -8.0, -3.0], [-11.5, -1.5, -2.5]]))
    logits0 = tcn_logits(e0, e1, e2, video)
    # anchor s0: [sim(s0_i, s1_0), sim(s0_i, s1_1), sim(s0_i, s2_i)] (s1 is the positive of both ends)
    assert torch.allclose(logits0, t([[-1.0, -11.0, -3.0], [-9.0, -1.0, -2.5]]))
    p_row0 = math.exp(-2) / (math.exp(-2) + math.exp(-8) + math.exp(-3))
    assert torch.softmax(logits2, 1)[0, 0].item() == pytest.approx(p_row0)

    loss, info = tcn_loss(e0, e1, e2, video)
    ce2 = -(math.log(p_row0) + math.log(math.exp(-1.5) / (math.exp(-11.5) + math.exp(-1.5) + math.exp(-2.5)))) / 2
    ce0 = -(math.log(math.exp(-1) / (math.exp(-1) + math.exp(-11) + math.exp(-3)))
            + math.log(math.exp(-1) / (math.exp(-9) + math.exp(-1) + math.exp(-2.5)))) / 2
    assert loss.item() == pytest.approx(0.5 * (ce0 + ce2), rel=1e-12)
    assert info["accuracy"].item() == 1.0  # the positive has the largest logit in every row
    assert info["aligned"].item() == 1.0  # each end is closer to s1 than to the other end
    far_middle = t([[0.5], [30.0]])  # sample 0 still aligned; sample 1's s1 is farther from s2 than s0 is
    assert tcn_loss(e0, far_middle, e2, video)[1]["aligned"].item() == 0.5

    # the two terms mirror each other: reversing time (s0 <-> s2) gives the same loss
    swapped, _ = tcn_loss(e2, e1, e0, video)
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-12)


def test_tcn_loss_vanishes_for_an_embedding_that_is_time_itself():
    """phi(t) = c t on one clip: every end is closer to the middle frame than to the other end, so the loss
    (R3M's: s1 is the positive of both s0 and s2) goes to 0 as c grows. Contrasting s1 against s0 and s2
    instead grows with c whenever s2 - s1 < s1 - s0."""
    frames = torch.tensor([[0, 5, 7], [2, 3, 9], [1, 6, 8], [4, 5, 6]], dtype=torch.float64)
    video = torch.zeros(4, dtype=torch.long)  # one clip: no cross-video negatives
    losses = []
    for c in (0.1, 1.0, 10.0, 100.0):
        e = c * frames[..., None]
        losses.append(tcn_loss(e[:, 0], e[:, 1], e[:, 2], video)[0].item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 1e-12
    assert losses[1] == pytest.approx(0.5 * np.mean([math.log1p(math.exp((s1 - s0) - (s2 - s0)))
                                                     + math.log1p(math.exp((s2 - s1) - (s2 - s0)))
                                                     for s0, s1, s2 in frames.tolist()]), rel=1e-12)


def test_tcn_masks_other_samples_of_the_same_video():
    e0, e1, e2 = t([[0.0], [10.0]]), t([[1.0], [11.0]]), t([[3.0], [12.0]])
    logits = tcn_logits(e2, e1, e0, torch.tensor([4, 4]))
    assert math.isinf(logits[0, 1].item()) and logits[0, 1].item() < 0
    assert logits[0, 0].item() == -2.0 and logits[0, 2].item() == -3.0
    loss, _ = tcn_loss(e0, e1, e2, torch.tensor([4, 4]))
    assert torch.isfinite(loss)


def test_tcn_objective_feeds_the_encoded_frames_in_time_order():
    """Wiring: role k of ``images`` (B, 3, ...) is s_k, each encoded alone; the batch's video ids mask
    same-video negatives; the default temperature is 1."""
    torch.manual_seed(0)
    enc = TinyEncoder().double()
    images = torch.rand(4, 3, 3, 8, 8, dtype=torch.float64)  # B=4 != 3 roles: a transposed view shows
    video = torch.tensor([0, 0, 1, 2])[:, None].expand(4, 3)  # samples 0 and 1 share a video
    loss, _ = make_objective("tcn", enc).compute_loss(images, {"video": video})
    e0, e1, e2 = (enc(images[:, k]) for k in range(3))
    expected, _ = tcn_loss(e0, e1, e2, video[:, 0], 1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for wrong in (tcn_loss(e0, e2, e1, video[:, 0])[0], tcn_loss(e1, e0, e2, video[:, 0])[0],
                  tcn_loss(e0, e1, e2, None)[0], tcn_loss(e0, e1, e2, video[:, 0], 0.5)[0]):
        assert abs(wrong.item() - expected.item()) > 1e-6  # each wiring slip would show


# ------------------------------------------------------------------------------------------------ factory
def test_make_objective_builds_each_objective_and_rejects_typos():
    for name, roles in (("icvf", 4), ("vip", 4), ("tcn", 3)):
        obj = make_objective(name, TinyEncoder())
        assert obj.name == name and len(obj.roles) == roles
        images = torch.rand(3, roles, 3, 8, 8)
        batch = {"reward": -torch.ones(3), "mask": torch.ones(3), "intent_reward": -torch.ones(3),
                 "intent_mask": torch.ones(3), "video": torch.arange(3)[:, None].expand(3, roles)}
        loss, _ = obj.compute_loss(images, batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="expectile"):
        make_objective("icvf", TinyEncoder(), {"expectile": 1.5})
    with pytest.raises(ValueError, match=r"ICVFObjective: gamma=1.0; expected a discount in \(0, 1\)"):
        make_objective("icvf", TinyEncoder(), {"gamma": 1.0})  # was accepted: a value summing -1 forever
    with pytest.raises(ValueError, match="do not apply to vip"):
        make_objective("vip", TinyEncoder(), {"expectile": 0.9})
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("byol", TinyEncoder())


def test_icvf_learns_values_that_rise_toward_the_goal_on_a_chain():
    """Behaviour, not just arithmetic: on 'videos' that walk along a chain of 8 states (one-hot features),
    a few hundred ICVF updates order V(s, g, g) by the distance to the goal g = the chain's end."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: thread hand-offs would cost more than the math
    try:
        values = _train_chain_icvf()
    finally:
        torch.set_num_threads(threads)
    assert spearman(values.numpy(), np.arange(len(values))) > 0.9
    assert values[-1] > values[0] + 1.0  # one step from the goal is worth clearly more than the far end


def _train_chain_icvf() -> torch.Tensor:
    torch.manual_seed(0)
    n = 8
    sampler, rng, eye = ICVFSampler([n] * 10), np.random.default_rng(0), torch.eye(n)
    heads = ICVFHeads(n, (32, 32), 2)
    target = copy.deepcopy(heads).requires_grad_(False)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-3, eps=3.125e-4)
    for _ in range(300):
        b = sampler(rng, 128)
        s, s_next, g, z = (eye[torch.from_numpy(b.frame[:, k])] for k in range(4))
        sc = {k: torch.from_numpy(v) for k, v in b.scalars.items()}
        with torch.no_grad():
            next_v, next_v_zz, v_zz = target(s_next, g, z), target(s_next, z, z), target(s, z, z)
        loss, _ = icvf_loss(heads(s, g, z), next_v, next_v_zz, v_zz, sc["reward"], sc["mask"], sc["intent_reward"],
                            sc["intent_mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, q in zip(heads.parameters(), target.parameters()):
                q.lerp_(p, 0.05)
    with torch.no_grad():
        goal = eye[n - 1].expand(n - 1, n)
        return heads(eye[: n - 1], goal, goal).mean(0)


def test_vip_objective_wires_each_role_and_the_value_step_by_hand():
    """VIPObjective on a flatten encoder: each role's frame goes where the loss expects it (initial, goal, obs, next),
    the TD step is V(o_t+1) - V(o_t), and gamma / weights come from the constructor; by hand in float64 (a swapped
    role, a dropped - V(o_t) or an ignored setting changes the value). Found by benchmarks/mutation.py."""
    import math

    from video_pretrain.objectives.vip import VIPObjective

    g = torch.Generator().manual_seed(3)
    images = torch.randn(5, 4, 1, 1, 3, generator=g, dtype=torch.float64)  # (B, roles, C, H, W): embedding = pixels
    reward = torch.tensor([0.0, -1.0, -1.0, 0.0, -1.0], dtype=torch.float64)
    gamma, w1, w2 = 0.9, 0.01, 0.02
    objective = VIPObjective(torch.nn.Flatten(), gamma=gamma, l1_weight=w1, l2_weight=w2)
    loss, _ = objective.compute_loss(images, {"reward": reward})
    e = images.reshape(5, 4, 3)
    e0, eg, et, en = e[:, 0], e[:, 1], e[:, 2], e[:, 3]
    v = lambda a: -((a - eg) ** 2).sum(-1).sqrt()  # noqa: E731
    contrast = -(reward + gamma * v(en) - v(et))
    expected = (1 - gamma) * -v(e0).mean() + torch.log(torch.exp(contrast).mean())
    everything = torch.cat([e0, eg, et, en])
    expected = expected + w1 * everything.abs().sum(-1).mean() + w2 * (everything ** 2).sum(-1).sqrt().mean()
    assert math.isclose(float(loss), float(expected), rel_tol=1e-12)


def test_vip_defaults_and_step_gain_metric():
    """VIP's published defaults (Ma et al. 2022, REFERENCE.md: gamma 0.98, L1 and L2 weights 1e-3) and the logged
    per-step value gain V(o_t+1) - V(o_t)."""
    from video_pretrain.objectives.vip import VIPObjective, vip_loss

    objective = VIPObjective(torch.nn.Flatten())
    assert (objective.gamma, objective.l1_weight, objective.l2_weight) == (0.98, 1e-3, 1e-3)
    e = torch.randn(4, 4, 3, generator=torch.Generator().manual_seed(0))
    _, info = vip_loss(e[:, 0], e[:, 1], e[:, 2], e[:, 3], -1.0)
    gain = (-(e[:, 3] - e[:, 1]).norm(dim=-1) + (e[:, 2] - e[:, 1]).norm(dim=-1)).mean()
    assert torch.allclose(info["v_step_gain"], gain)
