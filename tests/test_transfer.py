"""Transfer across a gap (``finetune/transfer/``): EPOpt's CVaR selection on hand-made returns, gradient reversal
(only the encoder's gradient flips), DARC's correction on hand-computed classifier outputs, the gap presets, every
option off by default with the loop unchanged, and each option on changing what the loop does."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from _compare import Killed, assert_same, die_after_first_checkpoint
from _stages import collect_sim, stage2_config, stage3_config
from finetune.train import run as finetune
from finetune.transfer.dann import (DANNSettings, DomainAdversary, DomainClassifier, domain_adversarial_loss,
                                    reverse_gradient)
from finetune.transfer.darc import DARCSettings, DarcClassifier, RewardCorrection, classifier_loss, delta_reward
from finetune.transfer.epopt import EPOptFilter, EPOptSettings, cvar, cvar_select
from finetune.transfer.gap import Gap
from finetune.transfer.options import TransferSettings, build_transfer
from robopretrain.agent import Agent, EncoderSettings
from robopretrain.build import compose
from robopretrain.checkpoint import load_latest
from robopretrain.data.spec import ObsSpec
from robopretrain.metrics import read_jsonl
from robopretrain.nets.augment import random_shifts, shift_frames
from sim_envs.randomization import DomainRandomizer, RandomizationConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STATE_OBS = {"low_dim": ["proprio", "object"], "rgb": []}
REACH = {"name": "Reach", "max_episode_steps": 10}
FRICTION_LOW = OmegaConf.to_container(OmegaConf.load(CONFIGS / "gap" / "friction_low.yaml"))


# --------------------------------------------------------------------------- EPOpt


def test_cvar_selection_on_hand_made_returns():
    returns = [3.0, -1.0, 5.0, -1.0, 0.0, 2.0, 7.0, 4.0, 1.0, 6.0]
    assert cvar_select(returns, 0.3).tolist() == [1, 3, 4]  # the three lowest: -1, -1, 0
    assert cvar_select(returns, 0.25).tolist() == [1, 3, 4]  # ceil(2.5) = 3 episodes, not floor
    assert cvar_select(returns, 0.1).tolist() == [1]  # a tie at the cut: the earlier episode
    assert cvar_select(returns, 1.0).tolist() == list(range(10))
    assert cvar_select([2.0], 0.1).tolist() == [0]  # a batch of one episode: that episode
    # 0.28 * 25 is 7.000000000000001 in floating point: the worst 7 episodes, not 8
    assert len(cvar_select(np.arange(25.0), 0.28)) == 7 and len(cvar_select(np.arange(100.0), 0.07)) == 7
    assert cvar(returns, 0.3) == pytest.approx(-2.0 / 3.0)
    with pytest.raises(ValueError, match="epsilon"):
        cvar_select(returns, 0.0)
    # one warm-up batch stored whole, then only the worst half of each batch of 4
    filt = EPOptFilter(EPOptSettings(enabled=True, epsilon=0.5, batch_episodes=4, warmup_batches=1))
    decided = [d for i, r in enumerate([5, 1, 3, 2, 9, 0, 4, 8]) for d in filt.add(i, r)]
    assert [kept for _, kept in decided] == [True] * 4 + [False, True, True, False]
    # a batch being filled is state: a filter rebuilt from (batches_done, pending) decides as the original does
    assert filt.add(8, 1.0) == [] and filt.add(9, 3.0) == [] and filt.pending == [(8, 1.0), (9, 3.0)]
    rebuilt = EPOptFilter(filt.settings, filt.batches_done, filt.pending)
    assert rebuilt.add(10, 0.0) == filt.add(10, 0.0) == []
    assert rebuilt.add(11, 2.0) == filt.add(11, 2.0) == [(8, True), (9, False), (10, True), (11, False)]
    with pytest.raises(ValueError, match="4 pending episodes"):
        EPOptFilter(filt.settings, 0, [(i, 0.0) for i in range(4)])


def test_epopt_settings_refuse_bad_values():
    for bad in ({"epsilon": 1.5}, {"epsilon": 0.0}, {"batch_episodes": 0}, {"batch_episodes": True},
                {"batch_episodes": 2.0}, {"warmup_batches": -1}, {"epsilon": True}):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=f"transfer.epopt.{key}="):
            EPOptSettings(**bad)
    assert EPOptSettings(batch_episodes=1, warmup_batches=0, epsilon=1.0).warmup_batches == 0  # the smallest valid
    assert EPOptSettings.from_mapping(None) == EPOptSettings()
    with pytest.raises(ValueError, match=r"unknown transfer.epopt key\(s\) \['epsilom'\]"):
        EPOptSettings.from_mapping({"epsilom": 0.1})
    # at least one episode is kept however small epsilon is (ceil(1e-12 * 2) - 1e-9 rounds to 0)
    assert cvar_select([3.0, 1.0], 1e-12).tolist() == [1]


# --------------------------------------------------------------------------- DANN


def test_gradient_reversal_flips_the_encoder_gradient_only():
    torch.manual_seed(0)
    clf = DomainClassifier(5, [7]).double()
    src, tgt = torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    coef = 0.3

    def grads(reversed_: bool):
        clf.zero_grad()
        s, t = src.clone().requires_grad_(True), tgt.clone().requires_grad_(True)
        if reversed_:
            loss, acc = domain_adversarial_loss(clf, s, t, coef)
        else:  # the plain domain loss, no reversal
            logits = clf(torch.cat([s, t]))
            labels = torch.cat([torch.zeros(6), torch.ones(4)]).double()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            acc = None
        loss.backward()
        return loss.detach(), s.grad, t.grad, [p.grad.clone() for p in clf.parameters()], acc

    loss_r, s_r, t_r, p_r, acc = grads(True)
    loss_p, s_p, t_p, p_p, _ = grads(False)
    assert torch.equal(loss_r, loss_p)  # identity forward
    torch.testing.assert_close(s_r, -coef * s_p, rtol=0, atol=1e-15)  # the features' gradient: times -coef
    torch.testing.assert_close(t_r, -coef * t_p, rtol=0, atol=1e-15)
    for a, b in zip(p_r, p_p):  # the classifier's own gradient unchanged
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    logits = clf(torch.cat([src, tgt]))
    assert float(acc) == pytest.approx(float(((logits[:6] < 0).sum() + (logits[6:] > 0).sum()) / 10))
    # a classifier right on every row scores 1 (the random one above happened to score 0.5, as its complement does)
    sign = lambda feats: feats[:, 0]  # noqa: E731 - source rows negative, target rows positive
    _, perfect = domain_adversarial_loss(sign, -torch.ones(3, 2), torch.ones(2, 2), coef)
    assert float(perfect) == 1.0


def camera_agent(seed: int = 0, pad: int = 2) -> Agent:
    spec = ObsSpec(low_dim=(("proprio", 3),), rgb=(("agentview_image", (16, 16, 3)),))
    torch.manual_seed(seed)
    settings = EncoderSettings(mode="scratch", augment_pad=pad, kwargs={"channels": 4, "out_dim": 8})
    return Agent(spec, 4, "calql", {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2, "batch_size": 8},
                 settings, stats={"proprio": {"mean": [0.0] * 3, "std": [1.0] * 3}}, seed=seed)


def camera_batch(seed: int, n: int = 8) -> dict:
    rng = np.random.default_rng(seed)

    def obs():
        return {"proprio": torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32)),
                "agentview_image": torch.from_numpy(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))}

    return {"observations": obs(), "next_observations": obs(),
            "actions": torch.from_numpy(rng.uniform(-1, 1, (n, 4)).astype(np.float32)),
            "rewards": torch.from_numpy(rng.choice([0.0, 1.0], n).astype(np.float32)), "dones": torch.zeros(n),
            "mc_returns": torch.from_numpy(rng.normal(size=n).astype(np.float32)),
            "next_actions": torch.from_numpy(rng.uniform(-1, 1, (n, 4)).astype(np.float32))}


def test_dann_at_zero_coefficient_leaves_the_agent_update_unchanged_and_on_moves_the_encoder():
    frames = {"agentview_image": np.random.default_rng(9).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)}
    runs = {}
    for name, coef in (("off", None), ("zero", 0.0), ("on", 10.0)):
        agent = camera_agent()
        if coef is not None:
            agent.auxiliary = [DomainAdversary(agent, frames, DANNSettings(enabled=True, coef=coef), seed=5)]
        metrics = [agent.update(camera_batch(k)) for k in range(3)]
        runs[name] = (metrics, {k: v.clone() for k, v in agent.critic_encoder.state_dict().items()}, agent)
    off, zero, on = runs["off"], runs["zero"], runs["on"]
    for m_off, m_zero in zip(off[0], zero[0]):  # same losses: the classifier steps only its own weights
        assert {k: m_zero[k] for k in m_off} == m_off
        assert 0.0 <= m_zero["dann/accuracy"] <= 1.0
    assert all(torch.equal(off[1][k], zero[1][k]) for k in off[1])
    assert any(not torch.equal(off[1][k], on[1][k]) for k in off[1])  # the reversed gradient reaches the encoder
    with pytest.raises(ValueError, match="image encoder trains"):
        DomainAdversary(Agent(ObsSpec(low_dim=(("proprio", 3),)), 4, "calql"), frames, DANNSettings(), seed=0)


def test_dann_settings_refuse_bad_values_and_reversal_defaults_to_one():
    for bad, key in (({"coef": -0.1}, "coef"), ({"lr": 0.0}, "lr"), ({"target_batch": -1}, "target_batch"),
                     ({"coef": float("inf")}, "coef"), ({"hidden": [0]}, "hidden"), ({"hidden": [64, -1]}, "hidden"),
                     ({"hidden": []}, "hidden"), ({"hidden": ["x"]}, "hidden"), ({"hidden": 64.5}, "hidden"),
                     ({"target_batch": 1.5}, "target_batch")):
        with pytest.raises(ValueError, match=f"transfer.dann.{key}="):
            DANNSettings(**bad)
    assert DANNSettings(hidden=64).hidden == [64] and DANNSettings(hidden=[32, 16]).hidden == [32, 16]
    # DARC's hidden is one width (a DANN-style list was a TypeError traceback); an infinite scale is refused
    for bad, key in (({"hidden": [64]}, "hidden"), ({"hidden": "abc"}, "hidden"), ({"scale": float("nan")}, "scale"),
                     ({"scale": -1.0}, "scale")):
        with pytest.raises(ValueError, match=f"transfer.darc.{key}="):
            DARCSettings(**bad)
    assert DARCSettings(hidden=16).hidden == 16
    assert DANNSettings(coef=0.0, target_batch=0).coef == 0.0  # the edges are valid
    assert DANNSettings.from_mapping(None) == DANNSettings()
    with pytest.raises(ValueError, match=r"unknown transfer.dann key\(s\) \['cof'\]"):
        DANNSettings.from_mapping({"cof": 1.0})
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x).sum().backward()
    assert x.grad.tolist() == [-1.0, -1.0, -1.0]  # R_1 by default
    frozen = SimpleNamespace(trains_encoder=False, spec=ObsSpec(rgb=(("agentview_image", (16, 16, 3)),)),
                             mode="frozen")  # cameras, but an encoder that does not train
    with pytest.raises(ValueError, match="image encoder trains"):
        DomainAdversary(frozen, {"agentview_image": np.zeros((2, 16, 16, 3), np.uint8)}, DANNSettings(), seed=0)


def test_dann_loss_reads_every_cameras_features_and_augmented_target_frames():
    """Two cameras, batch 5 (not the feature size 8): the source rows are each camera's image features of the batch
    (the first 2 x 8 columns of the critic features), the target rows the same encoder's features of 3 target frames
    per camera drawn with the adversary's generator and random-shifted like the source; label 0 source, 1 target."""
    spec = ObsSpec(low_dim=(("proprio", 3),), rgb=(("agentview_image", (16, 16, 3)), ("eye_in_hand_image",
                                                                                        (16, 16, 3))))
    torch.manual_seed(0)
    agent = Agent(spec, 4, "calql", {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2, "batch_size": 5},
                  EncoderSettings(mode="scratch", augment_pad=2, kwargs={"channels": 4, "out_dim": 8}),
                  stats={"proprio": {"mean": [0.0] * 3, "std": [1.0] * 3}}, seed=0)
    rng = np.random.default_rng(3)
    cams = ["agentview_image", "eye_in_hand_image"]
    frames = {k: rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8) for k in cams}
    adv = DomainAdversary(agent, frames, DANNSettings(enabled=True, coef=0.5, target_batch=3), seed=1)
    obs = {k: torch.from_numpy(rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)) for k in cams}
    obs["proprio"] = torch.randn(5, 3)
    enc = agent.critic_encoder
    with torch.no_grad():
        feats = enc(obs)
    g = torch.Generator().set_state(adv.generator.get_state())
    losses, metrics = adv(agent, {"observations": feats}, True)
    with torch.no_grad():
        source = torch.cat([enc.image_features(obs[k]) for k in cams])
        rows = torch.randint(0, 4, (3,), generator=g)
        target_frames = torch.cat([torch.from_numpy(frames[k])[rows] for k in cams])
        target = enc.image_features(shift_frames(target_frames, random_shifts(6, 2, g)))
        expected, accuracy = domain_adversarial_loss(adv.classifier, source, target, 0.5)
    torch.testing.assert_close(losses["loss_dann"].detach(), expected)
    assert float(metrics["dann/accuracy"]) == float(accuracy)


@pytest.mark.parametrize("pad", [1, 2])
def test_dann_shifts_its_target_frames_with_the_encoders_pad_as_the_encoder_does(monkeypatch, pad):
    """DANN's target frames go through ``shift_frames`` with the same ``pad`` the encoder passes for its source frames
    (without it ``shift_frames`` reads ``max |dx|`` back from the device every update: the same pixels, a sync)."""
    import robopretrain.nets.augment as augment
    import robopretrain.nets.obs_encoder as obs_encoder

    calls = []

    def spy(frames, offsets, pad=None):
        calls.append(pad)
        return shift_frames(frames, offsets, pad)

    monkeypatch.setattr(augment, "shift_frames", spy)
    monkeypatch.setattr(obs_encoder, "shift_frames", spy)
    agent = camera_agent(pad=pad)  # a shift of 1 pixel too (a threshold of 1 left DANN's frames unshifted)
    frames = {"agentview_image": np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)}
    adv = DomainAdversary(agent, frames, DANNSettings(enabled=True, target_batch=3), seed=1)
    obs = camera_batch(0, 5)["observations"]
    enc = agent.critic_encoder
    with torch.no_grad():
        feats = enc({k: torch.as_tensor(v) for k, v in obs.items()}, augment=True)
        adv(agent, {"observations": feats}, False)
    assert calls == [pad, pad] and enc.augment_pad == pad
    with pytest.raises(ValueError, match=r"transfer.dann: no target frames \(gap.target_frames must be >= 1\)"):
        DomainAdversary(agent, {"agentview_image": np.zeros((0, 16, 16, 3), np.uint8)}, DANNSettings(enabled=True),
                        seed=1)


# --------------------------------------------------------------------------- DARC


def test_darc_correction_on_hand_computed_classifier_outputs():
    # q(tgt|s,a) = 0.75, q(tgt|s,a,s') = 0.9 -> log 0.9 - log 0.1 - log 0.75 + log 0.25 = log 9 - log 3 = log 3;
    # q(tgt|s,a) = 0.5, q(tgt|s,a,s') = 0.2 -> log 0.2 - log 0.8 = -log 4
    sa = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]], dtype=torch.float64)
    sas = torch.tensor([[0.0, math.log(9.0)], [math.log(4.0), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(delta_reward(sa, sas), torch.tensor([math.log(3.0), -math.log(4.0)],
                                                                   dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        delta_reward(sa[:, :1], sas[:, :1])


def test_reward_correction_adds_the_scaled_delta_after_its_warmup():
    enc = SimpleNamespace(mean=torch.zeros(2), std=torch.ones(2))
    agent = SimpleNamespace(spec=ObsSpec(low_dim=(("proprio", 2),)), critic_encoder=enc, device=torch.device("cpu"),
                            act_dim=1)
    rng = np.random.default_rng(0)
    target = {"observations": {"proprio": rng.normal(size=(5, 2))}, "next_observations": {"proprio": rng.normal(
        size=(5, 2))}, "actions": rng.normal(size=(5, 1))}
    corr = RewardCorrection(agent, target, DARCSettings(enabled=True, scale=0.5, warmup_updates=1), reward_scale=4.0,
                            seed=0)
    batch = {"observations": {"proprio": torch.randn(6, 2)}, "next_observations": {"proprio": torch.randn(6, 2)},
             "actions": torch.randn(6, 1), "rewards": torch.arange(6.0)}
    first, warm = corr(batch, with_metrics=True)
    assert torch.equal(first["rewards"], batch["rewards"])  # inside the warm-up
    assert warm["darc/applied"] == 0.0 and warm["darc/reward_change_mean"] == 0.0
    second, metrics = corr(batch, with_metrics=True)
    with torch.no_grad():
        dr = delta_reward(*corr.classifier(corr.states(batch["observations"]), batch["actions"],
                                           corr.states(batch["next_observations"])))
    torch.testing.assert_close(second["rewards"], batch["rewards"] + 4.0 * 0.5 * dr)
    assert metrics["darc/applied"] == 1.0 and 0.0 <= metrics["darc/sas_accuracy"] <= 1.0
    assert metrics["darc/delta_r_std"] == pytest.approx(float(dr.std(correction=0)), rel=1e-5)  # over the batch
    # what the rewards got, in the algorithm's scaled units (delta_r_mean alone read 10x too small in the docs)
    assert metrics["darc/reward_change_mean"] == pytest.approx(float((second["rewards"] - batch["rewards"]).mean()),
                                                               rel=1e-5)
    assert metrics["darc/reward_change_mean"] == pytest.approx(2.0 * metrics["darc/delta_r_mean"], rel=1e-5)
    # one target transition, the least gap.target_transitions allows: every row of the batch is compared with it
    one = {k: ({"proprio": v["proprio"][:1]} if isinstance(v, dict) else v[:1]) for k, v in target.items()}
    single = RewardCorrection(agent, one, DARCSettings(enabled=True), reward_scale=1.0, seed=0)
    _, metrics = single(batch, with_metrics=True)
    assert math.isfinite(metrics["darc/sas_loss"])


def hand_darc() -> DarcClassifier:
    """1-D state and action, one hidden unit per head: sa logits (0, 2 relu(s - a) - 1), residual (0, relu(s - s')
    - 0.5)."""
    clf = DarcClassifier(1, 1, hidden=1).double()
    with torch.no_grad():
        for head, w1 in ((clf.sa, [[1.0, -1.0]]), (clf.residual, [[1.0, 0.0, -1.0]])):
            head[0].weight.copy_(torch.tensor(w1))
            head[0].bias.zero_()
        clf.sa[2].weight.copy_(torch.tensor([[0.0], [2.0]]))
        clf.sa[2].bias.copy_(torch.tensor([0.0, -1.0]))
        clf.residual[2].weight.copy_(torch.tensor([[0.0], [1.0]]))
        clf.residual[2].bias.copy_(torch.tensor([0.0, -0.5]))
    return clf


def test_darc_classifier_by_hand_and_its_input_noise():
    """The authors' structure: Linear, ReLU, Linear on (s, a); the (s, a, s') logits are the (s, a) ones plus a
    residual Linear, ReLU, Linear on (s, a, s'); Gaussian noise of std ``noise`` on each input, drawn separately."""
    clf = hand_darc()
    col = lambda *v: torch.tensor(v, dtype=torch.float64)[:, None]  # noqa: E731
    s, a, s2 = col(1.0, 2.0), col(3.0, -1.0), col(3.0, 0.5)
    sa, sas = clf(s, a, s2)
    # row 0: relu(1 - 3) = 0 -> sa (0, -1), residual relu(1 - 3) = 0 -> (0, -0.5); row 1: relu(3) -> (0, 5), relu(1.5)
    torch.testing.assert_close(sa, torch.tensor([[0.0, -1.0], [0.0, 5.0]], dtype=torch.float64))
    torch.testing.assert_close(sas, torch.tensor([[0.0, -1.5], [0.0, 6.0]], dtype=torch.float64))
    # far inside the ReLUs (s = 100) the noise passes linearly: sa's logit 1 moves by 2 (n_s - n_a), std 2 sqrt(2)
    # sigma; the residual by n_s' - n_s'' of its own draws, std sqrt(2) sigma
    n, sigma = 4000, 0.5
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        zeros = torch.zeros(n, 1, dtype=torch.float64)
        noisy_sa, noisy_sas = clf(zeros + 100.0, zeros, zeros, noise=sigma, generator=g)
    residual = noisy_sas[:, 1] - noisy_sa[:, 1]
    assert float(noisy_sa[:, 1].std()) == pytest.approx(2 * math.sqrt(2) * sigma, rel=0.05)
    assert float(residual.std()) == pytest.approx(math.sqrt(2) * sigma, rel=0.05)
    assert float(noisy_sa[:, 1].mean()) == pytest.approx(199.0, abs=0.1)
    assert float(residual.mean()) == pytest.approx(99.5, abs=0.1)


def test_darc_classifier_loss_is_the_sum_of_both_cross_entropies():
    sa = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # q(tgt|s,a) = 3/4: right, then wrong
    sas = torch.tensor([[math.log(4.0), 0.0], [0.0, math.log(9.0)]])  # q(tgt|s,a,s') = 1/5, 9/10: both wrong
    loss, metrics = classifier_loss(sa, sas, torch.tensor([1, 0]))
    ce_sa, ce_sas = -(math.log(0.75) + math.log(0.25)) / 2, -(math.log(0.2) + math.log(0.1)) / 2
    assert float(loss) == pytest.approx(ce_sa + ce_sas, rel=1e-6)
    assert float(metrics["darc/sa_loss"]) == pytest.approx(ce_sa, rel=1e-6)
    assert float(metrics["darc/sa_accuracy"]) == 0.5 and float(metrics["darc/sas_accuracy"]) == 0.0


def test_darc_learns_to_charge_for_source_only_transitions():
    """Source dynamics s' = s + a, target s' = s - a (the same states and actions): after training, delta_r is
    negative on source transitions and positive on target ones (log p_target / p_source)."""
    enc = SimpleNamespace(mean=torch.tensor([1.0, -2.0, 0.0]), std=torch.tensor([2.0, 0.5, 1.0]))
    agent = SimpleNamespace(spec=ObsSpec(low_dim=(("proprio", 2), ("object", 1))), critic_encoder=enc,
                            device=torch.device("cpu"), act_dim=3)
    rng = np.random.default_rng(0)

    def transitions(n: int, sign: float) -> dict:
        s, a = rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32)
        nxt = s + sign * a
        return {"observations": {"proprio": torch.from_numpy(s[:, :2]), "object": torch.from_numpy(s[:, 2:])},
                "next_observations": {"proprio": torch.from_numpy(nxt[:, :2]), "object": torch.from_numpy(nxt[:, 2:])},
                "actions": torch.from_numpy(a), "rewards": torch.zeros(n)}

    target = transitions(256, -1.0)
    corr = RewardCorrection(agent, target, DARCSettings(enabled=True, lr=1e-2, input_noise=0.1), reward_scale=1.0,
                            seed=0)
    # the classifiers read both parts, normalised by the agent's statistics
    obs = target["observations"]
    torch.testing.assert_close(corr.states(obs), (torch.cat([obs["proprio"], obs["object"]], -1) - enc.mean) / enc.std)
    for _ in range(200):
        corr(transitions(64, 1.0))
    source_test, target_test = transitions(500, 1.0), transitions(500, -1.0)
    assert float(corr(source_test)[0]["rewards"].mean()) < -1.0
    with torch.no_grad():
        dr = delta_reward(*corr.classifier(corr.states(target_test["observations"]), target_test["actions"],
                                           corr.states(target_test["next_observations"])))
    assert float(dr.mean()) > 1.0


def test_darc_normalises_with_the_target_and_first_source_batchs_statistics_when_the_agent_has_none():
    """obs.normalize=false (encoder mean 0, std 1): the classifiers' inputs were raw, so input_noise=1.0 swamped data
    in metres and DARC corrected nothing; then they were standardised by the target transitions' s and s' rows alone,
    and a dimension constant there (a goal fixed in the target's episodes) scaled the source's rows by 1000 (DARC
    charged hundreds per step between identical dynamics; a new user's finding). Now the target's rows and the first
    source batch's, together: a checkpoint before that batch resumes to take them from it."""
    enc = SimpleNamespace(mean=torch.zeros(3), std=torch.ones(3))
    agent = SimpleNamespace(spec=ObsSpec(low_dim=(("proprio", 2), ("object", 1))), critic_encoder=enc,
                            device=torch.device("cpu"), act_dim=1)
    rng = np.random.default_rng(0)
    s = np.stack([0.3 + 0.02 * rng.normal(size=40), -5.0 + 0.5 * rng.normal(size=40), np.full(40, 0.7)], 1)
    nxt = s + [0.01, 0.1, 0.0]
    target = {"observations": {"proprio": s[:, :2], "object": s[:, 2:]}, "actions": np.zeros((40, 1), np.float32),
              "next_observations": {"proprio": nxt[:, :2], "object": nxt[:, 2:]}}
    src = np.stack([rng.normal(size=64), -5.0 + rng.normal(size=64), rng.uniform(-1, 1, size=64)], 1)
    src_next = src + [0.01, 0.1, 0.0]
    as_t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    batch = {"observations": {"proprio": as_t(src[:, :2]), "object": as_t(src[:, 2:])}, "actions": torch.zeros(64, 1),
             "next_observations": {"proprio": as_t(src_next[:, :2]), "object": as_t(src_next[:, 2:])},
             "rewards": torch.zeros(64)}
    corr = RewardCorrection(agent, target, DARCSettings(enabled=True), reward_scale=1.0, seed=0)
    before = corr.state_dict()  # a checkpoint before the first batch
    corr(batch)
    pooled = as_t(np.concatenate([s, nxt, src, src_next]))
    mean, std = pooled.mean(0), pooled.std(0, correction=0)
    torch.testing.assert_close(corr.mean, mean)
    torch.testing.assert_close(corr.std, std + 1e-3)  # the agent's rule (STD_EPS)
    assert float(corr.std[2]) > 0.3  # constant in the target: the source's spread, not 1e-3
    torch.testing.assert_close(corr.target_obs, (as_t(s) - mean) / (std + 1e-3))
    states = corr.states(batch["observations"])
    assert states.std(0).min() > 0.5 and states.std(0).max() < 2.0  # about one std per unit
    resumed = RewardCorrection(agent, target, DARCSettings(enabled=True), reward_scale=1.0, seed=1)
    resumed.load_state_dict(before)
    resumed(batch)  # pools at its first batch, as the run it resumes would have
    torch.testing.assert_close(resumed.mean, mean)
    # kept in the checkpoint; one written before they were kept resumes on raw inputs, as its classifiers trained
    saved = corr.state_dict()
    fresh = RewardCorrection(agent, target, DARCSettings(enabled=True), reward_scale=1.0, seed=1)
    fresh.load_state_dict({**saved, "mean": saved["mean"] + 1.0})
    torch.testing.assert_close(fresh.mean, mean + 1.0)
    torch.testing.assert_close(fresh.target_obs, corr.states(target["observations"]) - 1.0 / corr.std)
    fresh(batch)  # (restored after the first batch: not pooled again)
    torch.testing.assert_close(fresh.mean, mean + 1.0)
    fresh.load_state_dict({k: v for k, v in saved.items() if k not in ("mean", "std", "stats_pending")})
    assert float(fresh.mean.abs().max()) == 0.0 and float((fresh.std - 1).abs().max()) == 0.0
    torch.testing.assert_close(fresh.target_obs, torch.as_tensor(s, dtype=torch.float32))
    fresh(batch)
    assert float(fresh.mean.abs().max()) == 0.0


# --------------------------------------------------------------------------- gap


def test_gap_presets_and_one_sided_ranges():
    for path in sorted((CONFIGS / "gap").glob("*.yaml")):
        gap = Gap.from_mapping(OmegaConf.to_container(OmegaConf.load(path)))
        assert gap.name == path.stem and gap.enabled == (path.stem != "none")
    gap = Gap.from_mapping(FRICTION_LOW)
    assert gap.kind == "physics" and gap.target_transitions > 0 and gap.source == "none"
    with pytest.raises(ValueError, match="unknown gap config key"):
        Gap.from_mapping({"name": "x", "targte": "none"})
    with pytest.raises(ValueError, match="kind="):
        Gap(name="x", kind="acoustic")
    # the kind label must be what the target changes (a physics gap labelled visual was accepted)
    with pytest.raises(ValueError, match=r"kind=visual but the target draws no visual factor .* draws \['friction'\]"):
        Gap.from_mapping({**FRICTION_LOW, "kind": "visual"})
    with pytest.raises(ValueError, match="kind=physics but the target draws no physics factor"):
        Gap(name="x", kind="physics", target={"level": "eval_hard", "factors": ["colors"]})
    assert Gap(name="x", kind="none", target={"level": "eval_hard", "factors": ["colors"]}).kind == "none"
    assert Gap(name="x", kind="visual", target={"level": "eval_hard", "factors": ["distractors"]}).enabled  # refused
    # settings under name none were dropped silently (gap=friction_low gap.name=none ran without a gap)
    with pytest.raises(ValueError, match=r"gap config: name=none \(no gap\) but kind='physics', target="):
        Gap.from_mapping({**FRICTION_LOW, "name": "none"})
    with pytest.raises(ValueError, match=r"but source='train'"):
        Gap(source="train")
    assert not Gap().enabled
    with pytest.raises(ValueError, match="not a physics factor"):
        Gap(name="x", target={"level": "train", "ranges": {"lighting": [[0.1, 0.2]]}})
    for key, bad in (("target_frames", -1), ("target_transitions", True), ("target_transitions", "20")):
        with pytest.raises(ValueError, match=f"{key}="):
            Gap(name="x", **{key: bad})
    # to_dict is what a run records: it rebuilds the same gap
    assert Gap.from_mapping(gap.to_dict()) == gap and gap.to_dict()["target_transitions"] == gap.target_transitions
    # the target's friction comes only from its range, below the training range
    import mujoco

    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><body name='b'><geom size='.1'/></body></worldbody>"
                                           "</mujoco>")
    rand = DomainRandomizer(model, ["b"], RandomizationConfig(**gap.target), max_distractors=0)
    draws = [rand.sample(np.random.default_rng(i))["friction"] for i in range(50)]
    assert all(0.4 <= f < 0.55 for f in draws) and "mass" not in rand.sample(np.random.default_rng(0))


# --------------------------------------------------------------------------- the loop


def test_every_option_is_off_by_default():
    cfg = compose("finetune", {}, {"checkpoint": "x"})
    settings = TransferSettings.from_mapping(OmegaConf.to_container(cfg.transfer))
    assert not (settings.epopt.enabled or settings.dann.enabled or settings.darc.enabled)
    gap = Gap.from_mapping(OmegaConf.to_container(cfg.gap))
    assert not gap.enabled
    agent = Agent(ObsSpec(low_dim=(("proprio", 3),)), 4, "calql")
    parts = build_transfer(settings, gap, agent, None, "train", Path("/nonexistent"), reward_scale=1.0, seed=0)
    assert parts.epopt is None and parts.adversary is None and parts.correction is None and not parts.modules
    assert agent.auxiliary == []
    with pytest.raises(ValueError, match="needs physics randomization"):
        build_transfer(TransferSettings.from_mapping({"epopt": {"enabled": True}}), gap, agent, None, "none",
                       Path("/nonexistent"), reward_scale=1.0, seed=0)
    with pytest.raises(ValueError, match="needs a gap with target_transitions"):
        build_transfer(TransferSettings.from_mapping({"darc": {"enabled": True}}), gap, agent, None, "train",
                       Path("/nonexistent"), reward_scale=1.0, seed=0)


@pytest.fixture(scope="module")
def stage2_state(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("transfer")
    data = collect_sim(root / "reach.hdf5", ["Reach"], episodes=2)
    return data, stage2(stage2_config(data, root / "s2", algo="cql", steps=4, obs=STATE_OBS))


def stage2(cfg):
    from robopretrain.train import run

    return run(cfg)


def stage3_cfg(stage2_state, out: Path, dr: str = "train", checkpoint_every: int = 40, env_steps: int = 40, **top):
    data, ckpt = stage2_state
    return stage3_config(ckpt, out, REACH, env_steps=env_steps, data_cfg={"path": str(data)}, dr=dr,
                         online={"log_every": 10, "checkpoint_every": checkpoint_every}, **top)


def run_stage3(stage2_state, out: Path, dr: str = "train", **top) -> list[dict]:
    finetune(stage3_cfg(stage2_state, out, dr, **top))
    return [r for r in read_jsonl(out / "metrics.jsonl") if "train/critic_loss" in r]


def losses(rows: list[dict]) -> list[float]:
    return [r["train/critic_loss"] for r in rows]


def test_epopt_keeps_only_the_worst_episodes_in_the_buffer_and_logs_their_physics(stage2_state, tmp_path):
    data, ckpt = stage2_state
    finetune(stage3_config(ckpt, tmp_path / "on", REACH, env_steps=40, data_cfg={"path": str(data)}, dr="train",
                           online={"log_every": 10, "checkpoint_every": 40, "tensorboard": True},
                           logger={"name": "none"}, transfer={"epopt": {"enabled": True, "epsilon": 0.5,
                                                                         "batch_episodes": 2, "warmup_batches": 1}}))
    assert not (tmp_path / "on" / "tb").exists()  # the run's logger=none reaches stage 3 (TensorBoard otherwise)
    rows = [json.loads(line) for line in (tmp_path / "on" / "epopt_episodes.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [0, 1, 2, 3]  # 4 episodes of 10 steps
    assert [r["kept"] for r in rows[:2]] == [True, True] and sum(r["kept"] for r in rows[2:]) == 1
    assert all(set(r["physics"]) == {"friction", "mass", "damping", "gripper_force"} for r in rows)
    assert all(0.7 <= r["physics"]["friction"] < 1.3 for r in rows)  # the training range of dr=train
    state = load_latest(tmp_path / "on" / "checkpoints").state
    assert int(state["sampler"]["online"]["size"]) == sum(r["length"] for r in rows if r["kept"]) == 30
    # EPOpt alone (no transfer module) still checkpoints its decided batches and the batch being filled
    assert state["transfer"]["epopt_batches"] == 2 and state["transfer"]["epopt_pending"] == []


def test_epopt_that_decides_no_batch_in_the_run_says_stage_3_was_offline_only(stage2_state, tmp_path, caplog):
    """A batch longer than the run's episodes: none is ever decided, the buffer stays empty; it was silent."""
    import logging

    data, ckpt = stage2_state
    with caplog.at_level(logging.WARNING, logger="finetune"):
        finetune(stage3_config(ckpt, tmp_path / "big", REACH, env_steps=20, data_cfg={"path": str(data)}, dr="train",
                               logger={"name": "none"}, transfer={"epopt": {"enabled": True, "batch_episodes": 5}}))
    assert "EPOpt decided no batch (2 episodes pending of transfer.epopt.batch_episodes=5)" in caplog.text


def test_darc_changes_the_loop_only_when_it_corrects(stage2_state, tmp_path):
    base = run_stage3(stage2_state, tmp_path / "default", dr="none")
    gap = {**FRICTION_LOW, "target_transitions": 20}
    zero = run_stage3(stage2_state, tmp_path / "zero", gap=gap, transfer={"darc": {"enabled": True, "scale": 0.0}})
    on = run_stage3(stage2_state, tmp_path / "on", gap=gap, transfer={"darc": {"enabled": True}})
    # the friction_low gap trains in the nominal sim: the same episodes, so a zero correction gives the same losses
    assert losses(zero) == losses(base) and "train/darc/sas_accuracy" in zero[-1]
    assert losses(on) != losses(base) and on[-1]["train/darc/applied"] == 1.0
    with np.load(tmp_path / "on" / "transfer" / "darc_target.npz") as z:
        assert len(z["actions"]) == 20
    latest = load_latest(tmp_path / "on" / "checkpoints")
    saved = latest.state["transfer"]  # DARC alone (no EPOpt) is checkpointed
    assert set(saved) == {"epopt_batches", "epopt_pending", "darc"} and saved["epopt_batches"] == 0
    assert latest.meta["gap"] == Gap.from_mapping(gap).to_dict()  # the checkpoint says which gap it crossed


def test_build_transfer_wires_dann_into_the_agent_with_cached_target_frames(tmp_path):
    agent = camera_agent()
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "transfer").mkdir()
    np.savez(tmp_path / "transfer" / "dann_target.npz", actions=np.zeros((6, 4)), rewards=np.zeros(6),
             **{"observations/agentview_image": frames, "observations/proprio": np.zeros((6, 3)),
                "next_observations/agentview_image": frames, "next_observations/proprio": np.zeros((6, 3))})
    gap = Gap.from_mapping(OmegaConf.to_container(OmegaConf.load(CONFIGS / "gap" / "visual_textures.yaml")))
    parts = build_transfer(TransferSettings.from_mapping({"dann": {"enabled": True}}), gap, agent, None, gap.source,
                           tmp_path, reward_scale=1.0, seed=0)
    assert agent.auxiliary == [parts.adversary] and parts.adversary.num_frames == 6
    assert set(parts.modules) == {"dann"}
    assert "dann/accuracy" in agent.update(camera_batch(0))


def test_evaluate_runs_the_gap_source_and_target_as_conditions():
    from robopretrain.evaluate import build_conditions

    cfg = compose("evaluate", {"gap": "friction_low"}, {"checkpoint": "x", "select": ["nominal"]})
    conds = {c.key: c.randomization for c in build_conditions(cfg)}
    assert list(conds) == ["nominal/none", "gap/source", "gap/target"]
    assert conds["gap/source"] == {"level": "none", "num_distractors": 0}
    assert conds["gap/target"] == FRICTION_LOW["target"]
    assert [c.key for c in build_conditions(compose("evaluate", {}, {"checkpoint": "x", "select": ["nominal"]}))] \
        == ["nominal/none"]


def test_stage2_trains_the_encoder_against_a_domain_classifier(tmp_path):
    data = collect_sim(tmp_path / "reach.hdf5", ["Reach"], episodes=1, images=True, image_size=16)
    gap = {**OmegaConf.to_container(OmegaConf.load(CONFIGS / "gap" / "visual_textures.yaml")), "target_frames": 8}
    cfg = stage2_config(data, tmp_path / "s2", algo="cql", steps=2, obs={"low_dim": ["proprio"],
                                                                          "rgb": ["agentview_image"]},
                        train={"log_every": 1}, gap=gap, transfer={"dann": {"enabled": True}})
    ckpt = stage2(cfg)
    rows = [r for r in read_jsonl(tmp_path / "s2" / "metrics.jsonl") if "train/dann/accuracy" in r]
    assert len(rows) == 2 and all(0.0 <= r["train/dann/accuracy"] <= 1.0 for r in rows)
    with np.load(tmp_path / "s2" / "transfer" / "dann_target.npz") as z:
        assert z["observations/agentview_image"].shape == (8, 16, 16, 3)
    assert "dann" in load_latest(Path(ckpt).parent).state["transfer"]


def test_a_resume_keeps_the_epopt_rows_of_the_batches_its_checkpoint_decided(tmp_path):
    from finetune.online import keep_decided_epopt_rows

    log = tmp_path / "epopt_episodes.jsonl"
    assert keep_decided_epopt_rows(log, 1) == 0 and not log.exists()  # nothing logged yet
    rows = [{"episode": i, "batch": i // 2, "kept": i % 2 == 0} for i in range(5)]  # batches 0, 0, 1, 1, 2
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert keep_decided_epopt_rows(log, 2) == 4  # the checkpoint had decided batches 0 and 1
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows[:4]
    assert keep_decided_epopt_rows(log, 0) == 0 and log.read_text() == ""


def test_a_killed_run_with_epopt_and_darc_resumes_to_the_same_weights(stage2_state, tmp_path, monkeypatch):
    top = {"gap": {**FRICTION_LOW, "source": {"level": "train", "factors": ["friction", "mass"]},
                   "target_transitions": 20},
           "transfer": {"darc": {"enabled": True},
                        "epopt": {"enabled": True, "epsilon": 0.5, "batch_episodes": 3, "warmup_batches": 1}}}
    # 10-step episodes, checkpoints every 4 episodes, batches of 3: the batch being filled spans each checkpoint, and
    # the run dies after batch 1 was decided (episode 5, step 60) but before its next checkpoint (step 80)
    clean = finetune(stage3_cfg(stage2_state, tmp_path / "clean", checkpoint_every=40, env_steps=80, **top))
    real_update = die_after_first_checkpoint(monkeypatch, Agent, tmp_path / "killed" / "checkpoints", updates=25)
    with pytest.raises(Killed):
        finetune(stage3_cfg(stage2_state, tmp_path / "killed", checkpoint_every=40, env_steps=80, **top))
    first = load_latest(tmp_path / "killed" / "checkpoints")
    assert first.step == 40 and first.state["transfer"]["epopt_batches"] == 1
    assert [ep["index"] for ep, _ in first.state["transfer"]["epopt_pending"]] == [3]  # saved, not decided
    at_kill = [json.loads(line)["batch"] for line in (tmp_path / "killed" / "epopt_episodes.jsonl").open()]
    assert at_kill == [0, 0, 0, 1, 1, 1]  # batch 1's rows were logged after the checkpoint: the resume drops them
    monkeypatch.setattr(Agent, "update", real_update)
    resumed = finetune(stage3_cfg(stage2_state, tmp_path / "killed", checkpoint_every=40, env_steps=80, **top))
    a, b = load_latest(tmp_path / "killed" / "checkpoints"), load_latest(tmp_path / "clean" / "checkpoints")
    assert a.step == b.step == 80
    assert_same(a.weights, b.weights)
    assert_same(a.state["transfer"], b.state["transfer"], "transfer")
    assert resumed["history"] == clean["history"]
    logs = [(tmp_path / run / "epopt_episodes.jsonl").read_text() for run in ("killed", "clean")]
    assert logs[0] == logs[1]  # the same decisions, each episode once
    rows = [json.loads(line) for line in logs[1].splitlines()]
    assert [(r["episode"], r["batch"]) for r in rows] == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]  # 6, 7 pending
    assert [r["kept"] for r in rows[:3]] == [True] * 3 and sum(r["kept"] for r in rows[3:]) == 2  # ceil(0.5 * 3)
    kept_steps = sum(r["length"] for r in rows if r["kept"])
    assert int(a.state["sampler"]["online"]["size"]) == kept_steps == 50


def test_cached_target_data_is_reused_only_for_the_same_request(tmp_path, monkeypatch):
    """A rerun in the same folder with another count or gap collects again (it silently got the old data)."""
    import finetune.transfer.target_data as td

    calls = []

    def fake_collect(agent, target, randomization, count, *, seed):
        calls.append((randomization, count))
        return {"actions": np.full((count, 2), float(count)), "rewards": np.zeros(count),
                "observations": {"proprio": np.zeros((count, 3))}, "next_observations": {"proprio": np.zeros((count, 3))}}

    monkeypatch.setattr(td, "collect_transitions", fake_collect)
    path = tmp_path / "darc_target.npz"
    first = td.cached_target_data(path, None, None, "friction_low", 5, seed=1)
    again = td.cached_target_data(path, None, None, "friction_low", 5, seed=1)
    assert calls == [("friction_low", 5)] and np.array_equal(first["actions"], again["actions"])
    assert set(again) == {"actions", "rewards", "observations", "next_observations"}  # the request is not data
    other = td.cached_target_data(path, None, None, "friction_low", 8, seed=1)
    assert calls[-1] == ("friction_low", 8) and len(other["actions"]) == 8
    td.cached_target_data(path, None, None, "physics_hard", 8, seed=1)
    assert calls[-1] == ("physics_hard", 8) and len(calls) == 3
    from robopretrain.envs.action_units import ActionNormalization

    in_units = SimpleNamespace(action_normalization=ActionNormalization((0.0, 0.0), (8.0, 8.0)))
    td.cached_target_data(path, in_units, None, "physics_hard", 8, seed=1)  # the agent acts in other units
    assert len(calls) == 4
    td.cached_target_data(path, in_units, None, "physics_hard", 8, seed=1)
    assert len(calls) == 4
    from robopretrain.data.spec import ObsSpec

    wider = SimpleNamespace(action_normalization=in_units.action_normalization, spec=ObsSpec(low_dim=(("proprio", 4),)))
    td.cached_target_data(path, wider, None, "physics_hard", 8, seed=1)  # observations of another layout
    assert len(calls) == 5
    path.write_bytes(path.read_bytes()[:40])  # cut short (a run killed while the file was copied by hand)
    assert len(td.cached_target_data(path, wider, None, "physics_hard", 8, seed=1)["actions"]) == 8
    assert len(calls) == 6
    from robopretrain.envs.target import as_target

    own = {"name": "pm", "env_id": "_fake_envs:CountEnv", "task_id": 0, "env_kwargs": {"friction": 0.1}}
    td.cached_target_data(path, wider, as_target(own), "none", 8, seed=1)
    td.cached_target_data(path, wider, as_target(own), "none", 8, seed=1)
    assert len(calls) == 7
    # the target's own env changed (a run killed before its first checkpoint, rerun): its data is collected again
    td.cached_target_data(path, wider, as_target({**own, "env_kwargs": {"friction": 0.9}}), "none", 8, seed=1)
    assert len(calls) == 8
    td.cached_target_data(path, wider, as_target({**own, "env_kwargs": {"friction": 0.9}, "demos": "x.hdf5",
                                                  "probe_step": False}), "none", 8, seed=1)
    assert len(calls) == 8  # its demos and probe step do not change what its env gives
    table = np.zeros(2000)  # arrays by content: their text elides the middle, and two tables read as one
    td.cached_target_data(path, wider, as_target({**own, "env_kwargs": {"table": table}}), "none", 8, seed=1)
    table[1000] = 1.0
    td.cached_target_data(path, wider, as_target({**own, "env_kwargs": {"table": table}}), "none", 8, seed=1)
    assert len(calls) == 10
    td.cached_target_data(path, wider, as_target({**own, "env_kwargs": {"modes": {"a", "b", "c"}}}), "none", 8,
                          seed=1)
    assert len(calls) == 11
    import json

    assert json.dumps({"m": {"c", "a", "b"}}, default=td._described) == '{"m": ["\\"a\\"", "\\"b\\"", "\\"c\\""]}'
    objects = np.array([{"k": 1}, None], dtype=object)  # by value, not by the pointers its bytes are
    assert td._described(objects) == td._described(np.array([{"k": 1}, None], dtype=object))
    import threading

    lock = as_target({**own, "env_kwargs": {"lock": threading.Lock()}})  # no text to compare: collected each time
    td.cached_target_data(path, wider, lock, "none", 8, seed=1)
    td.cached_target_data(path, wider, lock, "none", 8, seed=1)
    assert len(calls) == 13


def test_darc_refuses_frozen_cached_features():
    agent = SimpleNamespace(mode="frozen_cached", algo="calql", spec=SimpleNamespace(low_dim_keys=("proprio",)))
    gap = Gap.from_mapping(OmegaConf.to_container(OmegaConf.load(CONFIGS / "gap" / "friction_low.yaml")))
    with pytest.raises(ValueError, match="does not support encoder.mode=frozen_cached"):
        build_transfer(TransferSettings.from_mapping({"darc": {"enabled": True}}), gap, agent, None, gap.source,
                       Path("/nonexistent"), reward_scale=1.0, seed=0)


def test_settings_of_a_gap_without_a_name_are_refused_not_dropped():
    """name none is no gap: its kind, source or target would be ignored silently, so they are refused, naming them."""
    for given, shown in (({"kind": "physics"}, "kind='physics'"), ({"target_frames": 8}, "target_frames=8")):
        with pytest.raises(ValueError, match=rf"gap config: name=none \(no gap\) but {shown}; a gap needs a name"):
            Gap.from_mapping({"name": "none", **given})
    assert not Gap.from_mapping({"name": "none"}).enabled
