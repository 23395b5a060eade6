"""The ``paper`` preset (configs/paper.yaml) composes to the documented full-size run, and its agent works.

The preset targets a GPU; here one update of its image agent (ResNet-18 with GroupNorm and the learned spatial
embedding at 128 px, the preset's algorithm settings) runs on the CPU with a batch of 2, so a broken preset is
caught without a GPU.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from robopretrain.image_agent import STATE_KEY, ImageAgent, image_obs_config
from robopretrain.pipeline import CONFIG_DIR, algo_config, state_dim_of


def paper_config():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("paper")


def test_paper_preset_is_the_documented_full_size_run():
    cfg = paper_config()
    assert cfg.device == "cuda" and cfg.image_size == 128
    assert cfg.stage1.encoder == "resnet18" and cfg.stage1.objective == "icvf" and cfg.stage1.lr == 5e-5
    assert cfg.encoder.mode == "finetune" and not cfg.encoder.shared
    assert cfg.stage2.steps >= 200_000 and cfg.stage3.env_steps >= 100_000
    assert list(cfg.targets) == ["PlaceInBowl", "OpenDoorRight"]
    algo = algo_config(cfg, str(cfg.stage2.algo))
    assert algo["batch_size"] == 256 and algo["discount"] == 0.96 and algo["n_actions"] == 4


def test_paper_agent_takes_one_update_on_cpu():
    cfg = paper_config()
    size = int(cfg.image_size)
    obs_cfg = image_obs_config({"mode": "scratch", "encoder_name": str(cfg.stage1.encoder), "image_size": size,
                                "image_keys": list(cfg.image_keys), "shared_encoder": bool(cfg.encoder.shared),
                                "augment_pad": int(cfg.encoder.augment_pad), "encoder_lr": float(cfg.encoder.lr)})
    algo = algo_config(cfg, str(cfg.stage3.algo))
    torch.manual_seed(0)
    agent = ImageAgent(obs_cfg, state_dim_of(cfg), 4, str(cfg.stage3.algo), algo, device="cpu")
    rng = np.random.default_rng(0)
    n = 2

    def obs() -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)) for k in cfg.image_keys}
        out[STATE_KEY] = torch.as_tensor(rng.normal(size=(n, state_dim_of(cfg))).astype(np.float32))
        return out

    batch = {"observations": obs(), "next_observations": obs(), "actions": torch.zeros(n, 4),
             "rewards": torch.tensor([-5.0, 5.0]), "dones": torch.tensor([0.0, 1.0]),
             "mc_returns": torch.tensor([-20.0, 5.0])}
    before = [p.detach().clone() for p in agent.critic_encoder.parameters()]
    metrics = agent.update(batch, with_metrics=True)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.critic_encoder.parameters()))
    assert agent.act({k: v[:1] for k, v in obs().items()}).shape == (1, 4)
