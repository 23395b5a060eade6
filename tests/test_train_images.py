"""Stage 2 on images (``python -m robopretrain.train image_keys=[agentview_image] ...``): image checkpoints, per-task
evaluation in sim on rendered images, exact resumption, encoder modes and IQL / BC, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from robopretrain.checkpoint import CheckpointError, load_latest
from robopretrain.data.hdf5 import DatasetError
from robopretrain.image_checkpoint import load_image_agent
from robopretrain.metrics import read_jsonl
from robopretrain.nets.encoder_io import save_encoder
from robopretrain.nets.encoders import make_encoder
from robopretrain.train import train_offline

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
TINY_ALGO = ["algo.actor_hidden=[16]", "algo.batch_size=8"]
TINY_ENCODER = ["+encoder.kwargs.channels=4", "+encoder.kwargs.out_dim=8", "encoder.augment_pad=2"]


@pytest.fixture(scope="module")
def image_hdf5(tmp_path_factory) -> Path:
    """2 tasks x 2 episodes with 32 px agentview images (sim_envs.collect)."""
    from sim_envs.collect import collect

    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    out = tmp_path_factory.mktemp("data") / "images.hdf5"
    cfg.merge_with({"tasks": ["Reach", "PressButton"], "episodes_per_task": 2, "render_images": True,
                    "image_size": SIZE, "output": str(out)})
    return Path(collect(cfg, progress=False))


@pytest.fixture(scope="module")
def state_hdf5(tmp_path_factory) -> Path:
    from sim_envs.collect import collect

    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    out = tmp_path_factory.mktemp("data") / "states.hdf5"
    cfg.merge_with({"tasks": ["Reach"], "episodes_per_task": 2, "render_images": False, "output": str(out)})
    return Path(collect(cfg, progress=False))


@pytest.fixture(scope="module")
def stage1_encoder(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(11)
    enc = make_encoder("small_conv", SIZE, channels=4, out_dim=8)
    path = save_encoder(tmp_path_factory.mktemp("stage1") / "encoder", enc, "small_conv", {"test": True})
    return path, {k: v.clone() for k, v in enc.state_dict().items()}


def image_cfg(data: Path, out: Path, steps: int, *extra: str):
    overrides = [f"data.path={data}", f"output_dir={out}", f"train.steps={steps}", "train.eval_every=1000",
                 "train.eval_episodes=1", "train.checkpoint_every=2", "train.log_every=2", "train.calibration_batch=16",
                 "train.progress=false", "train.tensorboard=false", "num_threads=1", "image_keys=[agentview_image]",
                 "obs_keys=[proprio]", *TINY_ALGO, *TINY_ENCODER, *extra]
    if "algo=bc" not in extra:
        overrides.append("algo.critic_hidden=[16]")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("robopretrain", overrides=overrides)


def all_tensors(tree, prefix=""):
    if torch.is_tensor(tree):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from all_tensors(v, f"{prefix}/{k}")


def test_finetune_run_writes_image_checkpoints_evaluates_per_task_and_resumes_exactly(image_hdf5, stage1_encoder,
                                                                                      tmp_path):
    enc_path, _ = stage1_encoder
    extra = [f"encoder.checkpoint={enc_path}", "algo=cql", "algo.n_actions=2"]
    straight = train_offline(image_cfg(image_hdf5, tmp_path / "a", 4, *extra))
    train_offline(image_cfg(image_hdf5, tmp_path / "b", 2, *extra))
    resumed = train_offline(image_cfg(image_hdf5, tmp_path / "b", 4, *extra))  # continues from step 2

    a, b = load_latest(straight.parent), load_latest(resumed.parent)
    assert a.step == b.step == 4
    assert a.meta["obs_type"] == "image" and a.meta["algo"] == "cql"
    assert a.meta["image_obs"]["mode"] == "finetune" and a.meta["image_obs"]["image_keys"] == ["agentview_image"]
    assert a.meta["state_dim"] == 7 + 11 and a.meta["obs_dim"] == 8 + 7 + 11
    assert a.meta["task_names"] == ["PressButton", "Reach"] and a.meta["image_keys"] == ["agentview_image"]
    assert a.meta["obs_shapes"]["agentview_image"] == [SIZE, SIZE, 3]
    assert a.meta["parallel"] == {"world_size": 1, "backend": None, "batch_size_per_process": 8,
                                  "effective_batch_size": 8}
    assert set(a.state) >= {"rng", "dataset", "step"} and "augment" in a.state["rng"]
    wa, wb = dict(all_tensors(a.weights)), dict(all_tensors(b.weights))
    assert wa.keys() == wb.keys()
    assert any(k.startswith("/critic_encoder/") for k in wa) and any(k.startswith("/actor_encoder/") for k in wa)
    assert any(k.startswith("/encoder_optimizer/") for k in wa)  # optimiser states are part of the round trip
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"

    rows = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    evals = [r for r in rows if "eval/success" in r]
    assert [r["step"] for r in evals] == [2, 4]  # the end of each call
    for key in ("eval/Reach/success", "eval/PressButton/success", "eval/Reach/length", "calib/offline_q_policy",
                "calib/offline_mc_return"):
        assert key in evals[-1], key
    assert any("train/critic_loss" in r for r in rows)

    agent, ckpt = load_image_agent(tmp_path / "b")  # stage 3 / evaluate rebuild the agent from the folder alone
    obs = {"agentview_image": np.zeros((3, SIZE, SIZE, 3), np.uint8), "state": np.zeros((3, 18), np.float32)}
    other, _ = load_image_agent(tmp_path / "a")
    np.testing.assert_array_equal(agent.act(obs), other.act(obs))
    assert ckpt.config.image_keys == ["agentview_image"]


@pytest.mark.parametrize("algo, mode", [("iql", "frozen_cached"), ("bc", "frozen"), ("calql", "frozen")])
def test_frozen_encoder_runs_keep_the_stage1_weights(image_hdf5, stage1_encoder, tmp_path, algo, mode):
    enc_path, weights = stage1_encoder
    extra = [f"encoder.checkpoint={enc_path}", f"encoder.mode={mode}", f"algo={algo}", "train.eval_tasks=[Reach]"]
    if algo == "iql":
        extra.append("algo.value_hidden=[16]")
    if algo == "bc":
        extra.append("algo.lr=1e-3")
    path = train_offline(image_cfg(image_hdf5, tmp_path / "run", 2, *extra))
    agent, ckpt = load_image_agent(path)
    assert ckpt.meta["algo"] == algo and ckpt.meta["image_obs"]["mode"] == mode
    assert agent.agent.num_updates == 2
    for k, v in weights.items():
        assert torch.equal(agent.critic_encoder.state_dict()[k], v), k
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["step"] == 2 and "eval/success" in rows[-1]
    if algo == "bc":
        assert not any(k.startswith("calib/") for k in rows[-1])  # BC has no Q-function to calibrate
        assert any("train/bc_loss" in r for r in rows)
    else:
        assert "calib/offline_q_data" in rows[-1]


def test_scratch_without_checkpoint_and_shared_encoder(image_hdf5, tmp_path):
    path = train_offline(image_cfg(image_hdf5, tmp_path / "run", 2, "encoder.shared=true", "algo.n_actions=2",
                                   "train.eval_tasks=[Reach]"))
    agent, ckpt = load_image_agent(path)
    assert ckpt.meta["image_obs"]["mode"] == "scratch"  # mode null without a checkpoint
    assert agent.actor_encoder is agent.critic_encoder and ckpt.meta["encoder"]["name"] == "small_conv"


def test_resume_with_another_encoder_mode_is_a_clear_error(image_hdf5, stage1_encoder, tmp_path):
    enc_path, _ = stage1_encoder
    train_offline(image_cfg(image_hdf5, tmp_path / "run", 2, "algo.n_actions=2", "train.eval_tasks=[Reach]"))
    with pytest.raises(CheckpointError, match=r"checkpoint does not fit this config.*encoder.mode"):
        train_offline(image_cfg(image_hdf5, tmp_path / "run", 4, "algo.n_actions=2", f"encoder.checkpoint={enc_path}",
                                "encoder.mode=frozen"))


def test_bad_image_configs_name_the_problem(image_hdf5, state_hdf5, tmp_path):
    with pytest.raises(ValueError, match=r"encoder.mode=frozen needs encoder.checkpoint"):
        train_offline(image_cfg(image_hdf5, tmp_path / "a", 2, "encoder.mode=frozen"))
    with pytest.raises(ValueError, match=r"encoder.augment_pad=-1; expected an integer >= 0"):
        train_offline(image_cfg(image_hdf5, tmp_path / "b", 2, "encoder.augment_pad=-1"))
    with pytest.raises(DatasetError, match=r"image key 'agentview_image' is not in the data"):
        train_offline(image_cfg(state_hdf5, tmp_path / "c", 2))
    with pytest.raises(DatasetError, match=r"'proprio' is float32 \(7,\); expected square uint8 images"):
        train_offline(image_cfg(image_hdf5, tmp_path / "d", 2, "image_keys=[proprio]"))
    with pytest.raises(ValueError, match=r"evaluation tasks \['NoSuchTask'\] are not sim_envs tasks"):
        train_offline(image_cfg(image_hdf5, tmp_path / "e", 2, "train.eval_tasks=[NoSuchTask]"))
