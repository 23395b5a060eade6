"""The ``paper`` preset (configs/paper.yaml) composes to the documented full-size run, and its agent works.

The preset targets a GPU; here the stage configs the pipeline composes from it are checked, and one update of its
agent (ResNet-18 with GroupNorm and the learned spatial embedding at 128 px, the preset's algorithm settings) runs on
the CPU with a batch of 2, so a broken preset is caught without a GPU.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from robopretrain import pipeline
from robopretrain.agent import Agent, EncoderSettings
from robopretrain.build import algo_overrides
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.target import as_target


def paper_config():
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        return compose("paper")


def test_paper_preset_is_the_documented_full_size_run(tmp_path):
    cfg = paper_config()
    assert cfg.device == "cuda" and cfg.image_size == 128
    assert cfg.stage1.encoder == "resnet18" and cfg.stage1.objective == "icvf" and cfg.stage1.lr == 5e-5
    assert cfg.encoder.mode == "finetune" and not cfg.encoder.shared
    assert cfg.stage2.steps >= 200_000 and cfg.stage3.env_steps >= 100_000
    assert list(cfg.targets) == ["PlaceInBowl", "OpenDoorRight"]
    s3 = pipeline.stage3_config(cfg, tmp_path, as_target("PlaceInBowl"))
    assert s3.algo.name == "calql" and s3.algo.use_calql
    assert (s3.algo.batch_size, s3.algo.discount, s3.algo.n_actions) == (256, 0.96, 4)
    assert s3.online.num_envs == 8 and s3.device == "cuda" and s3.checkpoint == str(tmp_path / "adapt" / "PlaceInBowl")
    cfg.encoder.mode = "scratch"  # stage 2 would take the stage-1 encoder from <run>/stage1/encoder
    s2 = pipeline.stage2_config(cfg, tmp_path)
    assert s2.algo.name == "cql" and (s2.algo.batch_size, s2.algo.discount) == (256, 0.96)
    assert list(s2.obs.rgb) == ["agentview_image"] and list(s2.obs.low_dim) == ["proprio"]
    assert (s2.encoder.name, s2.encoder.augment_pad, s2.encoder.lr) == ("resnet18", 8, 1e-4)
    assert s2.train.steps == 200_000 and s2.train.eval_every == 20_000


def test_paper_agent_takes_one_update_on_cpu(tmp_path):
    cfg = paper_config()
    size = int(cfg.image_size)
    spec = ObsSpec(low_dim=(("proprio", 7),), rgb=tuple((k, (size, size, 3)) for k in cfg.obs.rgb), num_tasks=11)
    settings = EncoderSettings(mode="scratch", name=str(cfg.stage1.encoder), shared=bool(cfg.encoder.shared),
                               augment_pad=int(cfg.encoder.augment_pad), lr=float(cfg.encoder.lr))
    algo = algo_overrides(pipeline.stage3_config(cfg, tmp_path, as_target("PlaceInBowl")).algo)
    torch.manual_seed(0)
    agent = Agent(spec, 4, str(cfg.stage3.algo), algo, settings, device="cpu")
    rng = np.random.default_rng(0)
    n = 2

    def obs() -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)) for k in cfg.obs.rgb}
        out["proprio"] = torch.as_tensor(rng.normal(size=(n, 7)).astype(np.float32))
        out["task_id"] = torch.tensor([3, 5])
        return out

    batch = {"observations": obs(), "next_observations": obs(), "actions": torch.zeros(n, 4),
             "rewards": torch.tensor([-5.0, 5.0]), "dones": torch.tensor([0.0, 1.0]),
             "mc_returns": torch.tensor([-20.0, 5.0])}
    before = [p.detach().clone() for p in agent.critic_encoder.parameters()]
    metrics = agent.update(batch, with_metrics=True)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.critic_encoder.parameters()))
    assert agent.act({k: v[:1] for k, v in obs().items()}).shape == (1, 4)
    assert agent.critic_encoder.image_encoder.build_args["name"] == "resnet18"
