"""IQL losses by hand, IQL and BC learning on tiny problems, checkpoints."""

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


# --------------------------------------------------------------------------------------------- on images
IMG = 16
IMG_STATE_DIM = 7 + 11
IMG_ALGO = {"iql": {"actor_hidden": [16], "critic_hidden": [16], "value_hidden": [16], "batch_size": 8},
            "bc": {"actor_hidden": [16], "batch_size": 8, "lr": 1e-3}}


@pytest.fixture(scope="module")
def image_encoder_dir(tmp_path_factory):
    """A stage-1 encoder checkpoint (small_conv at 16 px)."""
    from robopretrain.nets.encoder_io import save_encoder
    from robopretrain.nets.encoders import make_encoder

    torch.manual_seed(7)
    return save_encoder(tmp_path_factory.mktemp("s1") / "encoder", make_encoder("small_conv", IMG, channels=4, out_dim=8),
                        "small_conv", {"test": True})


def _image_agent(algo, mode, enc_dir, shared=False, seed=0):
    from robopretrain.image_agent import ImageAgent, image_obs_config

    cfg = image_obs_config({"mode": mode, "encoder_checkpoint": str(enc_dir), "image_size": IMG,
                            "shared_encoder": shared, "augment_pad": 2})
    torch.manual_seed(seed)
    return ImageAgent(cfg, IMG_STATE_DIM, 4, algo, IMG_ALGO[algo], seed=seed)


def _image_batch(n=8, seed=0):
    rng = np.random.default_rng(seed)

    def obs():
        return {"agentview_image": torch.from_numpy(rng.integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8)),
                "state": torch.from_numpy(rng.normal(size=(n, IMG_STATE_DIM)).astype(np.float32))}

    return {"observations": obs(), "next_observations": obs(),
            "actions": torch.from_numpy(rng.uniform(-1, 1, (n, 4)).astype(np.float32)),
            "rewards": torch.from_numpy(rng.choice([-5.0, 5.0], n).astype(np.float32)),
            "dones": torch.zeros(n), "mc_returns": torch.zeros(n)}


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(module, before):
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


@pytest.mark.parametrize("algo", ["iql", "bc"])
@pytest.mark.parametrize("mode", ["finetune", "frozen", "frozen_cached"])
def test_image_agent_trains_iql_and_bc(image_encoder_dir, algo, mode):
    agent = _image_agent(algo, mode, image_encoder_dir)
    enc_before = _weights(agent.critic_encoder)
    actor_before = _weights(agent.agent.actor)
    batch = _image_batch()
    if mode == "frozen_cached":  # RL on the features, computed once
        batch = {**batch, "observations": torch.from_numpy(agent.to_features(batch["observations"])),
                 "next_observations": torch.from_numpy(agent.to_features(batch["next_observations"]))}
    for _ in range(3):
        metrics = agent.update(batch)
    loss_key = "bc_loss" if algo == "bc" else "q_loss"
    assert math.isfinite(metrics[loss_key])
    assert _changed(agent.agent.actor, actor_before)
    assert agent.agent.num_updates == 3
    if mode == "finetune":
        assert _changed(agent.critic_encoder, enc_before)  # the encoder trains with the algorithm's loss
    else:
        assert not _changed(agent.critic_encoder, enc_before)  # a frozen encoder never changes
        assert all(not p.requires_grad for p in agent.critic_encoder.parameters())
    if algo == "bc":
        assert agent.actor_encoder is agent.critic_encoder and not agent.has_q
        with pytest.raises(ValueError, match="has no Q-function"):
            agent.q_values(batch["observations"], batch["actions"])


def test_iql_image_losses_train_the_right_encoders(image_encoder_dir):
    """Separate encoders: value + critic losses reach only the critic encoder, the AWR loss only the actor's."""
    agent = _image_agent("iql", "finetune", image_encoder_dir)
    flat = agent._encoded_batch(_image_batch())
    losses, _ = agent.agent.compute_losses(flat, with_metrics=False)
    critic_params = list(agent.critic_encoder.parameters())
    actor_params = list(agent.actor_encoder.parameters())

    def grads(loss, params):
        return [g for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                if g is not None and torch.count_nonzero(g) > 0]

    assert grads(losses["value"], critic_params) and grads(losses["critic"], critic_params)
    assert not grads(losses["value"], actor_params) and not grads(losses["critic"], actor_params)
    assert grads(losses["actor"], actor_params) and not grads(losses["actor"], critic_params)


def test_bc_image_loss_trains_its_one_encoder(image_encoder_dir):
    agent = _image_agent("bc", "scratch", image_encoder_dir)
    losses, _ = agent.agent.compute_losses(agent._encoded_batch(_image_batch()), with_metrics=False)
    g = torch.autograd.grad(losses["actor"], list(agent.critic_encoder.parameters()))
    assert any(torch.count_nonzero(x) > 0 for x in g)


@pytest.mark.parametrize("algo, mode", [("iql", "finetune"), ("iql", "frozen"), ("bc", "finetune"), ("bc", "frozen")])
def test_image_checkpoint_round_trip_iql_bc(tmp_path, image_encoder_dir, algo, mode):
    from robopretrain.image_checkpoint import image_agent_meta, load_image_agent, save_image_checkpoint

    agent = _image_agent(algo, mode, image_encoder_dir, seed=3)
    batch = _image_batch(seed=1)
    for _ in range(2):
        agent.update(batch)
    meta = image_agent_meta(agent, state_keys=["proprio"], num_tasks=11, stage="stage2")
    save_image_checkpoint(tmp_path / "ckpts", 2, {"seed": 0}, agent, meta)
    loaded, ckpt = load_image_agent(tmp_path / "ckpts", with_optimizer=True)
    assert ckpt.meta["algo"] == algo and loaded.algo == algo and loaded.agent.num_updates == 2
    obs = _image_batch(n=5, seed=9)["observations"]
    np.testing.assert_array_equal(loaded.act(obs), agent.act(obs))
    if algo == "iql":
        acts = torch.zeros(5, 4)
        torch.testing.assert_close(loaded.q_values(obs, acts), agent.q_values(obs, acts), rtol=0, atol=0)
