"""Image-agent checkpoints rebuild the same agent (identical actions and Q-values) from the folder alone."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from robopretrain.checkpoint import CheckpointError
from robopretrain.image_agent import ImageAgent, image_obs_config
from robopretrain.image_checkpoint import image_agent_meta, load_image_agent, save_image_checkpoint
from robopretrain.nets.encoder_io import save_encoder
from robopretrain.nets.encoders import make_encoder

STATE_DIM = 7 + 11


def _obs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"agentview_image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "state": rng.standard_normal((n, STATE_DIM)).astype(np.float32)}


@pytest.mark.parametrize("mode", ["finetune", "frozen", "scratch"])
def test_round_trip_without_the_stage1_file(tmp_path, mode):
    enc_dir = tmp_path / "stage1"
    save_encoder(enc_dir, make_encoder("small_conv", 32), "small_conv", {"test": True})
    cfg = image_obs_config({"image_keys": ["agentview_image"], "mode": mode, "encoder_checkpoint": str(enc_dir),
                            "image_size": 32})
    agent = ImageAgent(cfg, STATE_DIM, 4, "calql", {"n_actions": 2, "critic_hidden": [32, 32], "actor_hidden": [32, 32]}, seed=3)
    with torch.no_grad():  # make the weights differ from any fresh build
        for p in agent.critic_encoder.parameters():
            p.add_(0.01)
    meta = image_agent_meta(agent, state_keys=["proprio"], num_tasks=11, stage="stage2", task="Reach")
    json.dumps(meta)  # JSON-serialisable
    save_image_checkpoint(tmp_path / "run" / "checkpoints", 7, {"seed": 0}, agent, meta)
    shutil.rmtree(enc_dir)  # the rebuilt agent must not need the stage-1 file

    loaded, ckpt = load_image_agent(tmp_path / "run")
    assert ckpt.step == 7 and ckpt.meta["task"] == "Reach" and loaded.cfg.mode == mode
    obs = _obs(5)
    np.testing.assert_array_equal(loaded.act(obs), agent.act(obs))
    acts = torch.zeros(5, 4)
    obs_t = {k: torch.as_tensor(v) for k, v in obs.items()}
    torch.testing.assert_close(loaded.q_values(obs_t, acts), agent.q_values(obs_t, acts), rtol=0, atol=0)
    assert loaded.cfg.trains_encoder == (mode != "frozen")


def test_state_based_checkpoint_is_refused(tmp_path):
    from robopretrain.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ck", 1, {"a": 1}, {"w": torch.zeros(1)}, {"algo": "cql"})
    with pytest.raises(CheckpointError, match="not an image-agent checkpoint"):
        load_image_agent(tmp_path / "ck")
