"""The Decision Transformer (robopretrain.algos.dt) and its K-step sampler (robopretrain.data.sequences): the causal
and padding masks, the masked action loss, return-to-go conditioning and its decrement while acting, windows at
episode starts and ends, the agent's per-token encoder and warm-up, and stage 2 on states and one camera (exact
resume, evaluation through the episode hooks, no online fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _stages import collect_sim, stage2_config, stage3_config
from robopretrain.agent import Agent
from robopretrain.algos.dt import (DecisionTransformer, DTConfig, DTNetwork, _Block, dt_action_loss,
                                  dt_attention_mask)
from robopretrain.checkpoint import CheckpointError, load_agent, load_latest
from robopretrain.data.replay import OfflineDataset
from robopretrain.data.sequences import MASK, RETURNS_TO_GO, TIMESTEPS, SequenceSampler
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.target import Target
from robopretrain.evaluation import evaluate
from robopretrain.train import run

S, A, K = 5, 2, 4
NO_DROPOUT = {"attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0}


def net(seed: int = 0, **kw) -> DTNetwork:
    torch.manual_seed(seed)
    model = DTNetwork(S, A, DTConfig(context_len=K, embed_dim=16, num_layers=2, num_heads=2, **{**NO_DROPOUT, **kw}))
    for p in model.parameters():  # larger weights than GPT's 0.02 so every input visibly moves the output
        torch.nn.init.normal_(p, 0.0, 0.3)
    return model.eval()


def inputs(B: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, K, S, generator=g), torch.rand(B, K, A, generator=g) * 2 - 1,
            torch.randn(B, K, generator=g), torch.arange(K).repeat(B, 1), torch.ones(B, K)]


def test_dt_data_is_read_into_memory_and_disk_storage_is_refused_before_any_work(tmp_path, monkeypatch):
    """The Decision Transformer was refused on disk-backed data only after the frame index was built (15 min for a
    large file), and data.storage=auto picked disk for large data (a new user's finding)."""
    from omegaconf import OmegaConf

    from robopretrain import build
    from robopretrain.data import dataset as dataset_mod
    from robopretrain.data.dataset import RewardSettings
    from test_hdf5_reader import write_dataset

    path = write_dataset(tmp_path / "cams.hdf5")
    spec = ObsSpec(low_dim=(("proprio", 3),), rgb=(("agentview_image", (4, 4, 3)),))

    def load(algo, storage):
        return build.load_data(path, spec, OmegaConf.create({"storage": storage}), RewardSettings(), algo=algo,
                               act_dim=None, seed=0, device=torch.device("cpu"))

    monkeypatch.setattr(dataset_mod, "MEMORY_LIMIT_BYTES", 0)  # auto: every file is large
    assert type(load("bc", "auto")).__name__ == "DiskDataset"
    assert isinstance(load("dt", "auto"), OfflineDataset)
    with pytest.raises(ValueError, match="data.storage='dsik'"):  # a misspelt value is no memory for dt
        load("dt", "dsik")
    monkeypatch.setattr(build, "converted", lambda *a, **k: pytest.fail("converted before the refusal"))
    with pytest.raises(ValueError, match="algo=dt samples K-step windows from data held in memory; storage=disk"):
        load("dt", "disk")
    # the stage refuses it at its config check, before the source is converted (train.run converts first)
    from robopretrain.config_checks import validate_offline_config

    for key, data in (("data.storage", {"storage": "disk"}),
                      ("data.mix.storage", {"mix": {"path": str(path), "fraction": 0.5, "storage": "disk"}})):
        with pytest.raises(ValueError, match=rf"robopretrain config: {key}=disk; algo=dt samples K-step windows"):
            validate_offline_config(stage2_config(path, tmp_path / "o", algo="dt", data_cfg=data))
        validate_offline_config(stage2_config(path, tmp_path / "o", algo="bc", data_cfg=data))  # fine for others
    with pytest.raises(ValueError, match=r"robopretrain config: data.storage='dsik'; expected one of auto, memory"):
        validate_offline_config(stage2_config(path, tmp_path / "o", algo="bc", data_cfg={"storage": "dsik"}))


def test_causal_mask_later_tokens_never_change_earlier_predictions():
    model = net()
    s, a, r, t, m = inputs()
    base = model(s, a, r, t, m)
    for step in range(K - 1):
        a2 = a.clone()
        a2[:, step] += 1.0  # a_t comes after s_t: a_hat_t must not see it
        s2, r2 = s.clone(), r.clone()
        s2[:, step + 1] += 1.0
        r2[:, step + 1] += 1.0
        for changed in (model(s, a2, r, t, m), model(s2, a, r2, t, m)):
            torch.testing.assert_close(changed[:, : step + 1], base[:, : step + 1], rtol=0, atol=0)
        assert not torch.allclose(model(s, a2, r, t, m)[:, step + 1], base[:, step + 1])  # a_t informs a_hat_{t+1}
    s3, r3 = s.clone(), r.clone()
    s3[:, 1] += 1.0
    r3[:, 1] += 1.0
    assert not torch.allclose(model(s3, a, r, t, m)[:, 1], base[:, 1])  # s_t and R_t inform a_hat_t
    assert not torch.allclose(model(s, a, r3, t, m)[:, 1], base[:, 1])


def test_attention_mask_by_hand():
    valid = torch.tensor([[False, True, True]])
    expect = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]], dtype=torch.bool)  # a padded token sees only itself
    assert torch.equal(dt_attention_mask(valid)[0], expect)


def test_padding_at_the_start_is_invisible_to_real_steps():
    model = net()
    s, a, r, t, m = inputs()
    m[:, :2] = 0.0
    base = model(s, a, r, t, m)
    s2, a2, r2 = s.clone(), a.clone(), r.clone()
    s2[:, :2] = 7.0
    a2[:, :2] = -0.5
    r2[:, :2] = 3.0
    out = model(s2, a2, r2, t, m)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 2:], base[:, 2:], rtol=0, atol=1e-6)
    # the same real steps without padding in front give the same predictions (what acting sees)
    short = DTNetwork.forward(model, s[:, 2:], a[:, 2:], r[:, 2:], t[:, 2:], m[:, 2:])
    torch.testing.assert_close(short, base[:, 2:], rtol=0, atol=1e-6)


def test_action_loss_by_hand():
    pred = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [0.5, 0.5]]])
    act = torch.tensor([[[0.0, 0.0], [1.0, -1.0], [0.0, 0.0]]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # step 0 is padding: its error 0.5 is not counted
    # step 1: (0 + 4) / 2 = 2; step 2: (0.25 + 0.25) / 2 = 0.25; mean over the 2 real steps
    assert float(dt_action_loss(pred, act, mask)) == pytest.approx((2.0 + 0.25) / 2)
    with pytest.raises(ValueError):
        dt_action_loss(pred, act, torch.zeros(1, 3))


def test_forward_is_the_documented_token_sequence():
    """(R_t + e_t, s_t + e_t, a_t + e_t) tokens with the timestep embedding on all three, LayerNorm, the blocks under
    the padded causal mask, the final norm, and max_action * tanh of the head at the state tokens (module
    docstring), rebuilt here from the network's own layers."""
    model = net(max_action=2.0)
    s, a, r, t, m = inputs()
    t = t + torch.tensor([[0], [3]])  # the second window starts at step 3
    m[0, 0] = 0.0
    with torch.no_grad():
        e = model.timestep_emb(t)
        tokens = torch.stack([model.return_emb(r[..., None]) + e, model.state_emb(s) + e, model.action_emb(a) + e],
                             dim=2).reshape(2, 3 * K, -1)
        h = model.emb_norm(tokens)
        allowed = dt_attention_mask((m > 0).repeat_interleave(3, dim=1))
        for block in model.blocks:
            h = block(h, allowed)
        expected = 2.0 * torch.tanh(model.action_head(model.out_norm(h)[:, 1::3]))
        torch.testing.assert_close(model(s, a, r, t, m), expected)


def test_timesteps_move_the_prediction_and_clamp_at_the_last_embedding():
    model = net(max_ep_len=6)
    s, a, r, t, m = inputs()
    with torch.no_grad():
        base = model(s, a, r, t, m)
        assert not torch.allclose(model(s, a, r, t + 1, m), base)
        # steps past the table (t >= 6) use its last row, step 5
        torch.testing.assert_close(model(s, a, r, t + 10, m), model(s, a, r, torch.full_like(t, 5), m), rtol=0,
                                   atol=0)


def test_residual_dropout_acts_on_the_mlp_output():
    """GPT / CORL block: ``Linear, GELU, Linear, Dropout``: in training about half the MLP's outputs are exactly 0
    at p = 0.5 (a dropout before the last layer would leave its bias: no zeros)."""
    torch.manual_seed(0)
    block = _Block(8, 2, 0.0, 0.5).train()
    out = block.mlp(torch.randn(64, 8))
    assert 0.4 < float((out == 0).float().mean()) < 0.6
    assert not (block.eval().mlp(torch.randn(64, 8)) == 0).any()


def test_bad_context_or_head_count_is_refused():
    with pytest.raises(ValueError, match=r"algo.context_len=0; expected an integer >= 1"):
        DecisionTransformer(S, A, DTConfig(context_len=0, embed_dim=8))
    with pytest.raises(ValueError, match=r"algo.num_heads=3 does not divide algo.embed_dim=8 .* e.g. 1, 2, 4, 8"):
        DecisionTransformer(S, A, DTConfig(context_len=1, embed_dim=8, num_heads=3))
    with pytest.raises(ValueError, match=r"algo.num_heads=0 does not divide"):  # not a ZeroDivisionError
        DecisionTransformer(S, A, DTConfig(context_len=1, embed_dim=8, num_heads=0))
    DecisionTransformer(S, A, DTConfig(context_len=1, embed_dim=8, num_heads=2))  # the smallest valid window


def sequence_batch(B: int = 3, seed: int = 2) -> dict[str, torch.Tensor]:
    s, a, r, t, m = inputs(B, seed)
    return {"observations": s, "actions": a, RETURNS_TO_GO: r, TIMESTEPS: t, MASK: m}


@pytest.mark.parametrize("clip", [0.1, 1e6, 0.0])
def test_update_clips_the_gradient_norm(clip):
    """After an update the stored gradient has norm min(norm, clip) (``grad_norm``: the norm before clipping);
    ``clip_grad = 0`` turns clipping off."""
    torch.manual_seed(0)
    core = DecisionTransformer(S, A, DTConfig(context_len=K, embed_dim=8, num_layers=1, clip_grad=clip, **NO_DROPOUT))
    for p in core.actor.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)  # a gradient norm far above 0.1
    metrics = core.update(sequence_batch())
    norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in core.actor.parameters()])))
    if clip == 0.0:
        assert "grad_norm" not in metrics and norm > 0.5
    else:
        assert metrics["grad_norm"] > 0.5
        assert norm == pytest.approx(min(metrics["grad_norm"], clip), rel=1e-4)


def test_losses_come_with_their_metrics_unless_asked_without():
    core = DecisionTransformer(S, A, DTConfig(context_len=K, embed_dim=8, num_layers=1, **NO_DROPOUT))
    losses, metrics = core.compute_losses(sequence_batch())  # the default: with metrics (the trainers' evaluations)
    assert metrics["dt_loss"] == losses["actor"].detach()
    assert core.compute_losses(sequence_batch(), with_metrics=False)[1] == {}
    with pytest.raises(RuntimeError, match=r"observe_reward\(\) without a preceding act\(\)"):
        DecisionTransformer(S, A, core.cfg).observe_reward(1.0)  # before any episode began


def test_the_clipped_norm_covers_the_extra_parameters_and_no_warmup_is_full_rate():
    """``extra`` (a trained image encoder with its own optimiser) is clipped together with the transformer: one
    norm over both, as one network (CORL's DT clips the whole model); ``warmup_steps=0`` is the full rate at once."""
    torch.manual_seed(0)
    core = DecisionTransformer(S, A, DTConfig(context_len=K, embed_dim=8, num_layers=1, clip_grad=0.1,
                                              warmup_steps=0, **NO_DROPOUT))
    assert core.warmup_factor() == 1.0
    batch = sequence_batch()
    encoder = torch.nn.Parameter(torch.zeros_like(batch["observations"]))  # features unchanged, gradient x 100
    batch["observations"] = batch["observations"] + 100.0 * encoder
    opt = torch.optim.SGD([encoder], lr=0.0)
    metrics = core.update(batch, extra=[(opt, [encoder])])
    grads = [p.grad for p in core.actor.parameters()] + [encoder.grad]
    joint = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    assert encoder.grad.norm() > 0 and metrics["grad_norm"] > 0.5  # clipping acts
    assert joint == pytest.approx(0.1, rel=1e-4)  # clipped together, not the transformer alone
    assert metrics["lr"] == pytest.approx(core.cfg.lr)


class Recorder(DTNetwork):
    """The network, keeping the inputs of each call."""

    calls: list

    def forward(self, *args):
        self.calls.append([x.clone() for x in args])
        return super().forward(*args)


def test_return_to_go_conditioning_and_decrement_while_acting():
    cfg = DTConfig(context_len=3, embed_dim=8, num_layers=1, reward_scale=2.0, target_return=3.0, **NO_DROPOUT)
    core = DecisionTransformer(S, A, cfg)
    core.actor.__class__ = Recorder
    core.actor.calls = []
    feats = [torch.full((1, S), float(i)) for i in range(5)]
    core.reset_episode()
    actions = []
    for i, f in enumerate(feats):
        actions.append(core.act(f))
        core.observe_reward([0.5, 0.0, 1.0, 0.0, 0.0][i])
    calls = core.actor.calls
    states, acts, rtg, steps, mask = calls[0]
    assert rtg.tolist() == [[0.0, 0.0, 6.0]] and mask.tolist() == [[0, 0, 1]] and steps.tolist() == [[0, 0, 0]]
    states, acts, rtg, steps, mask = calls[1]  # R_1 = 6 - 2 * 0.5; a_0 is in the history, a_1 a zero dummy
    assert rtg.tolist() == [[0.0, 6.0, 5.0]] and mask.tolist() == [[0, 1, 1]] and steps.tolist() == [[0, 0, 1]]
    torch.testing.assert_close(acts[0, 1], torch.as_tensor(actions[0][0]))
    assert acts[0, 2].abs().sum() == 0 and states[0, :, 0].tolist() == [0.0, 0.0, 1.0]
    states, acts, rtg, steps, mask = calls[4]  # the last K steps: R_2 = 5 - 2 * 0 = 5, R_3 = 5 - 2 * 1 = 3, R_4 = 3
    assert rtg.tolist() == [[5.0, 3.0, 3.0]] and steps.tolist() == [[2, 3, 4]] and mask.tolist() == [[1, 1, 1]]
    assert states[0, :, 0].tolist() == [2.0, 3.0, 4.0]
    core.reset_episode()  # a new episode starts from the target return again, at step 0
    core.act(feats[0])
    assert calls[-1][2].tolist() == [[0.0, 0.0, 6.0]] and calls[-1][3].tolist() == [[0, 0, 0]]
    with pytest.raises(RuntimeError):
        core.act(feats[0])  # two actions without the reward between them


def test_an_episode_twice_the_longest_training_episode_is_warned_once(caplog):
    """A loop of one's own that forgets reset_episode() carried the last episode's history and return-to-go into the
    next without a word (return 20.1 with resets, 8.7 without, in a helper's env)."""
    import logging

    core = DecisionTransformer(S, A, DTConfig(context_len=3, embed_dim=8, num_layers=1, **NO_DROPOUT))
    core.longest_episode = 3
    core.reset_episode()
    with caplog.at_level(logging.WARNING):
        for step in range(1, 9):
            core.act(torch.zeros(1, S))
            core.observe_reward(0.0)
            assert len(caplog.records) == (step >= 6)  # at step 6, once
    assert "this episode has reached step 6, twice the longest training episode (3 steps): if a new episode " \
        "began, call reset_episode()" in caplog.text
    again = DecisionTransformer(S, A, core.cfg)
    again.load_state_dict(core.state_dict())
    assert again.longest_episode == 3  # checkpointed
    caplog.clear()  # the toolkit's loops reset every episode (managed): a long episode is the env's, nothing to say
    again.reset_episode(managed=True)
    with caplog.at_level(logging.WARNING):
        for _ in range(8):
            again.act(torch.zeros(1, S))
            again.observe_reward(0.0)
    assert caplog.text == ""


def test_run_episodes_tells_a_history_policy_it_resets_every_episode_and_takes_one_of_ones_own():
    from robopretrain.evaluation import _episode_reset

    class Mine:  # a user's policy whose reset_episode takes no argument
        def reset_episode(self) -> None:
            self.reset = True

    core = DecisionTransformer(S, A, DTConfig(context_len=3, embed_dim=8, num_layers=1, **NO_DROPOUT))
    _episode_reset(core)()
    assert core._managed
    mine = Mine()
    _episode_reset(mine)()
    assert mine.reset and _episode_reset(object()) is None


def test_the_target_return_changes_the_action():
    cfg = DTConfig(context_len=3, embed_dim=8, num_layers=1, target_return=1.0, **NO_DROPOUT)
    core = DecisionTransformer(S, A, cfg)
    for p in core.actor.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    f = torch.ones(1, S)
    core.reset_episode()
    one = core.act(f)
    core.cfg.target_return = 0.0
    core.reset_episode()
    assert not np.allclose(core.act(f), one)


def toy_dataset() -> OfflineDataset:
    """Episode 0: steps 0-2 ending in a terminal; episode 1: steps 3-6, cut by a time-out (step 7 does not continue
    it); episode 2: step 7 alone. Observation x = step index, next x = index + 1 within an episode."""
    x = np.arange(8, dtype=np.float32)[:, None]
    nxt = x + 1
    nxt[6] = 100.0  # time-out: obs[7] != next_obs[6]
    rewards = np.array([0, 0, 1, 0, 1, 0, 1, 5], np.float32)
    dones = np.array([0, 0, 1, 0, 0, 0, 0, 0], np.float32)
    actions = np.stack([x[:, 0] / 10, -x[:, 0] / 10], 1)
    return OfflineDataset({"x": x}, actions, rewards, {"x": nxt}, dones)


def test_windows_stay_inside_their_episode_and_pad_at_the_start():
    sampler = SequenceSampler(toy_dataset(), 3, seed=0)
    assert sampler.num_episodes == 3
    b = sampler.windows(np.array([0, 2, 4, 6, 7]))
    x = b["observations"]["x"][..., 0]
    assert x.tolist() == [[0, 0, 0], [0, 1, 2], [0, 3, 4], [4, 5, 6], [0, 0, 7]]
    assert b[MASK].tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]]
    assert b[TIMESTEPS].tolist() == [[0, 0, 0], [0, 1, 2], [0, 0, 1], [1, 2, 3], [0, 0, 0]]
    # undiscounted returns-to-go inside each episode: ep 0 = (1, 1, 1), ep 1 = (2, 2, 1, 1), ep 2 = (5,)
    assert b[RETURNS_TO_GO].tolist() == [[0, 0, 1], [1, 1, 1], [0, 2, 2], [2, 1, 1], [0, 0, 5]]
    np.testing.assert_allclose(b["actions"][2].numpy(), [[0, 0], [0.3, -0.3], [0.4, -0.4]], rtol=1e-6)
    s2 = SequenceSampler(toy_dataset(), 3, seed=5)
    first = sampler.sample(4)
    s2.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(sampler.sample(6), s2.sample(6))
    assert first["observations"]["x"].shape == (4, 3, 1)


def test_a_target_return_outside_the_datas_episode_returns_is_warned(caplog):
    """DT is asked at evaluation for ``target_return * reward_scale``; on dense data whose returns are far below the
    default 1 it would be asked for a return no demo showed (the sparse-reward advice it got instead named a setting
    DT does not have)."""
    import logging

    from robopretrain.build import warn_target_return

    sampler = SequenceSampler(toy_dataset(), 3, seed=0)
    np.testing.assert_array_equal(sampler.episode_returns, [1, 2, 5])  # each episode's first return-to-go
    with caplog.at_level(logging.WARNING):
        assert not warn_target_return(DTConfig(target_return=5.0), sampler.episode_returns)
        assert not warn_target_return(DTConfig(target_return=0.5, reward_scale=2.0), sampler.episode_returns)
        # rounding at the best return (1e-6 of the largest |return|, 5e-6 here) is not "outside"
        assert not warn_target_return(DTConfig(target_return=5.000003), sampler.episode_returns)
        assert not warn_target_return(DTConfig(target_return=0.999997), sampler.episode_returns)  # and the worst
        assert not caplog.records
        assert warn_target_return(DTConfig(target_return=5.00001), sampler.episode_returns)
        caplog.clear()
        assert warn_target_return(DTConfig(target_return=3.0, reward_scale=2.0), sampler.episode_returns)
        assert warn_target_return(DTConfig(target_return=0.0), sampler.episode_returns)
    assert "algo.target_return=3 (x reward_scale 2 = 6) lies outside the data's episode returns [1, 5]" in caplog.text
    assert "its best episode: 2.5" in caplog.text


def test_episodes_longer_than_max_ep_len_are_warned(caplog):
    """Steps past max_ep_len - 1 share the last timestep embedding (clamped silently: a 300-step log with
    max_ep_len=50 trained without a word)."""
    import logging

    from robopretrain.build import warn_episode_length

    timesteps = np.r_[np.arange(4), np.arange(6)]  # episodes of 4 and 6 steps
    with caplog.at_level(logging.WARNING):
        assert not warn_episode_length(DTConfig(max_ep_len=6), timesteps)
        assert not caplog.records
        assert warn_episode_length(DTConfig(max_ep_len=4), timesteps)
    assert "longest episode has 6 steps, algo.max_ep_len=4: steps from 3 on (40% of the data)" in caplog.text


def test_a_run_shorter_than_its_warmup_is_warned(caplog):
    """2000 updates under the default 10k warm-up trained at most 1/5 of algo.lr, without a word."""
    import logging

    from robopretrain.build import warn_short_warmup

    with caplog.at_level(logging.WARNING):
        assert not warn_short_warmup(DTConfig(warmup_steps=100), 100)
        assert not caplog.records
        assert warn_short_warmup(DTConfig(), 2000)
    assert "algo.warmup_steps=10000, but this run makes 2000 updates" in caplog.text
    assert "ends at 20% of it" in caplog.text and "algo.warmup_steps=200" in caplog.text


def test_returns_too_large_for_the_return_token_are_warned_with_a_scale_that_fits(caplog):
    """Returns of -1600 .. -2000 at reward_scale 1 conditioned nothing (the LayerNorm-ed return token keeps only
    their sign; a new user's finding): warned, with a scale bringing them to a few units."""
    import logging

    from robopretrain.build import DT_RETURN_WARNED, warn_dt_return_scale

    with caplog.at_level(logging.WARNING):
        assert not warn_dt_return_scale(DTConfig(), [-DT_RETURN_WARNED, 3.0])
        assert not warn_dt_return_scale(DTConfig(), None) and not caplog.records
        assert not warn_dt_return_scale(DTConfig(), [float("inf"), 1.0]) and not caplog.records  # (no scale 0)
        assert warn_dt_return_scale(DTConfig(), [float("nan"), 500.0])  # the finite ones count
        caplog.clear()
        assert warn_dt_return_scale(DTConfig(reward_scale=2.0), [-4000.0, -3200.0])
    assert "returns-to-go reach 4000 at algo.reward_scale=2" in caplog.text
    assert "algo.reward_scale=0.002" in caplog.text  # 4000 x 0.001: 4 units


def test_agent_encodes_every_step_and_warms_up_the_learning_rate():
    spec = ObsSpec(low_dim=(("x", 1),), num_tasks=3)
    stats = {"x": {"mean": [3.0], "std": [2.0]}}
    agent = Agent(spec, 2, "dt", {"context_len": 3, "embed_dim": 8, "num_layers": 1, "warmup_steps": 4,
                                  "batch_size": 5}, stats=stats)
    assert agent.feature_dim == 1 + 3  # normalised x and the task one-hot
    ds = toy_dataset()
    ds._fields["observations"]["task_id"] = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    ds._fields["next_observations"]["task_id"] = ds._fields["observations"]["task_id"]
    batch = SequenceSampler(ds, 3).windows(np.array([2, 6]))
    seen = []
    original = agent.core.compute_losses
    agent.core.compute_losses = lambda b, m=True: (seen.append(b["observations"]), original(b, m))[1]
    before = [p.detach().clone() for p in agent.core.actor.parameters()]
    metrics = agent.update(batch)
    feats = seen[0]
    assert feats.shape == (2, 3, 4)
    torch.testing.assert_close(feats[1, :, 0], (torch.tensor([4.0, 5.0, 6.0]) - 3.0) / 2.0)
    assert feats[0, :, 1].tolist() == [1, 1, 1] and feats[1, :, 2].tolist() == [1, 1, 1]  # task 0, task 1
    assert metrics["lr"] == pytest.approx(1e-4 * 1 / 4)
    assert any(not torch.equal(p, q) for p, q in zip(before, agent.core.actor.parameters()))
    # the other kind of batch is named (a shape error deep in the networks named neither)
    with pytest.raises(ValueError, match="dt: update\\(\\) got rows of transitions; the Decision Transformer trains"):
        agent.update(ds.sample(4))
    iql = Agent(spec, 2, "iql", {"actor_hidden": [8], "critic_hidden": [8], "value_hidden": [8]}, stats=stats)
    with pytest.raises(ValueError, match="iql: update\\(\\) got K-step windows"):
        iql.update(batch)
    agent.update(batch)
    assert agent.core.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 2 / 4)
    with pytest.raises(KeyError):
        agent.update({k: v for k, v in batch.items() if k != RETURNS_TO_GO})


@pytest.fixture(scope="module")
def reach_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dt")
    return {"states": collect_sim(root / "s.hdf5", ["Reach", "PressButton"]),
            "camera": collect_sim(root / "i.hdf5", ["Reach"], images=True, image_size=32)}


OBS = {"states": {"low_dim": ["proprio", "object"], "rgb": []},
       "camera": {"low_dim": ["proprio"], "rgb": ["agentview_image"]}}


@pytest.mark.parametrize("kind", ["states", "camera"])
def test_stage2_runs_resumes_exactly_and_evaluates(reach_data, tmp_path, kind, caplog):
    import logging

    cfg = dict(algo="dt", obs=OBS[kind])
    with caplog.at_level(logging.WARNING):
        straight = run(stage2_config(reach_data[kind], tmp_path / "a", steps=4, **cfg))
        assert "warm-up" not in caplog.text and "returns-to-go reach" not in caplog.text  # (sparse: returns <= 1)
        run(stage2_config(reach_data[kind], tmp_path / "w", steps=1,
                          algo_cfg={"warmup_steps": 3, "reward_scale": 200.0}, **cfg))
    assert "algo.warmup_steps=3, but this run makes 1 updates" in caplog.text  # stage 2 says it
    assert "returns-to-go reach 200 at algo.reward_scale=200" in caplog.text  # and that its returns are too large
    run(stage2_config(reach_data[kind], tmp_path / "b", steps=2, **cfg))
    # the return asked for at evaluation may change on resume (it was refused); training is the same
    resumed = run(stage2_config(reach_data[kind], tmp_path / "b", steps=4, algo_cfg={"target_return": 0.5}, **cfg))
    a, b = load_latest(straight.parent), load_latest(resumed.parent)
    assert a.meta["algo"] == "dt" and a.step == b.step == 4
    assert a.meta["encoder_mode"] == ("scratch" if kind == "camera" else "none")
    for k, v in a.weights["core"]["actor"].items():
        assert torch.equal(v, b.weights["core"]["actor"][k]), k
    if kind == "camera":
        for k, v in a.weights["critic_encoder"].items():
            assert torch.equal(v, b.weights["critic_encoder"][k]), k
        assert "actor_encoder" not in a.weights  # one encoder, trained by the DT loss
    agent, ckpt = load_agent(resumed)
    assert agent.algo_cfg.target_return == 0.5  # what the resumed run evaluated with, recorded
    from robopretrain.data.hdf5 import read_info

    assert agent.core.longest_episode == max(d.num_samples for d in read_info(reach_data[kind]).demos)  # its data's
    # the data's episode returns (each Reach demo succeeds once: 1), checked by evaluate's target_return
    assert ckpt.meta["episode_returns"] == [1.0, 1.0]
    result = evaluate(agent, Target("Reach"), 2)
    assert 0 < agent.core._t <= 50 and result["length"] > 0  # the history restarts every episode (Reach: 50 steps)


def test_online_fine_tuning_of_dt_is_refused_in_one_line(reach_data, tmp_path):
    from finetune.train import run as finetune

    ckpt = run(stage2_config(reach_data["states"], tmp_path / "s2", steps=1, algo="dt", obs=OBS["states"]))
    for algo in ("dt", "calql"):
        with pytest.raises(CheckpointError, match=r"Decision Transformer .* checkpoint of another learner \(cql / "
                                                  r"calql / iql / bc / td3_bc / awac / rebrac / bcq / por\)"):
            finetune(stage3_config(ckpt, tmp_path / algo, "Reach", algo=algo))


def test_evaluate_asks_a_dt_checkpoint_for_another_return_without_retraining(reach_data, tmp_path, caplog):
    """``robopretrain.evaluate target_return=...`` conditions the loaded DT on that return (a return sweep needed a
    retrained checkpoint: the key was refused as unknown); another learner's checkpoint or a non-number is refused."""
    from omegaconf import OmegaConf

    from robopretrain.evaluate import PolicySpec, load_policy, validate_config

    ckpt = run(stage2_config(reach_data["states"], tmp_path / "s2", steps=1, algo="dt", obs=OBS["states"]))
    agent = load_policy(PolicySpec(str(ckpt), Target("Reach").to_dict(), "cpu", 0.25))
    agent.reset_episode()
    assert agent.core._history["rtg"].tolist() == [[0.25 * agent.algo_cfg.reward_scale]]
    default = load_policy(PolicySpec(str(ckpt), Target("Reach").to_dict(), "cpu"))
    default.reset_episode()
    assert default.core._history["rtg"].tolist() == [[1.0]]  # the checkpoint's own target_return
    # 0.25: a return no demo reached (every one returned 1), said as stage 2 says it; 1: none
    assert "target_return=0.25 (x reward_scale 1 = 0.25) lies outside the data's episode returns [1, 1]: the " \
        "Decision Transformer is asked for a return no demo reached; set target_return to" in caplog.text
    caplog.clear()
    load_policy(PolicySpec(str(ckpt), Target("Reach").to_dict(), "cpu", 1.0))
    assert "target_return" not in caplog.text
    iql = run(stage2_config(reach_data["states"], tmp_path / "iql", steps=1, algo="iql", obs=OBS["states"]))
    with pytest.raises(ValueError, match="target_return=0.25 conditions a Decision Transformer; .* is a iql"):
        load_policy(PolicySpec(str(iql), Target("Reach").to_dict(), "cpu", 0.25))
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "evaluate.yaml")
    cfg.pop("defaults")
    cfg.pop("hydra")
    cfg.target_return = "high"
    with pytest.raises(ValueError, match="evaluate config: target_return='high'; expected a finite number"):
        validate_config(cfg)
    from robopretrain.evaluate import evaluate_robustness

    caplog.clear()  # one evaluate command says it once (its episodes' own load of the policy was saying it again)
    evaluate_robustness({**{k: v for k, v in OmegaConf.to_container(cfg).items()}, "checkpoint": str(ckpt),
                         "target_return": 0.25, "episodes": 1, "workers": 0, "select": [], "plot": False,
                         "video": {**cfg.video, "enabled": False}, "progress": False,
                         "output_dir": str(tmp_path / "ev")})
    assert caplog.text.count("lies outside the data's episode returns") == 1
