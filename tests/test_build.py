"""robopretrain/build.py, the wiring stages 2 and 3 share: seeds of a run, the env's randomization argument from a
config, where the data file comes from (given, or collected once into the run folder and reused)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robopretrain import build
from robopretrain.agent import Agent
from robopretrain.data.dataset import RewardSettings
from robopretrain.data.replay import OfflineDataset
from robopretrain.data.sequences import SequenceSampler
from robopretrain.data.spec import ObsSpec


def test_setup_torch_seeds_torch_and_numpy_with_any_integer_seed():
    threads = torch.get_num_threads()
    try:
        assert build.setup_torch(OmegaConf.create({"seed": 2**32 + 5})) == torch.device("cpu")
        drawn_np, drawn_torch = np.random.random(3), torch.rand(3)
    finally:
        torch.set_num_threads(threads)
    np.random.seed(5)  # numpy's global seed is the run's seed modulo 2**32 (numpy refuses larger ones)
    torch.manual_seed(2**32 + 5)
    assert np.array_equal(drawn_np, np.random.random(3)) and torch.equal(drawn_torch, torch.rand(3))


@pytest.mark.parametrize("node,expected", [
    (None, "none"),
    ("train", "train"),
    ({"level": "none"}, "none"),
    ({"level": "none", "num_distractors": 0}, "none"),
    ({"level": "none", "num_distractors": 3}, {"level": "none", "num_distractors": 3}),  # distractors alone
    ({"level": "train", "factors": None, "num_distractors": None}, {"level": "train"}),
])
def test_randomization_argument_from_a_dr_entry(node, expected):
    assert build.randomization(OmegaConf.create(node) if isinstance(node, dict) else node) == expected


def test_generated_data_is_collected_into_the_run_folder_once_and_reused(tmp_path, monkeypatch):
    calls = []

    def fake_collect(cfg, progress=True):
        calls.append(cfg.output)
        Path(cfg.output).write_bytes(b"hdf5")
        return cfg.output

    import sim_envs.collect

    monkeypatch.setattr(sim_envs.collect, "collect", fake_collect)
    data = OmegaConf.create({"generate": True, "path": None})
    first = build.resolve_data_path(data, tmp_path / "run")
    assert first == tmp_path / "run" / "robot_demos.hdf5" and calls == [str(first)]
    assert build.resolve_data_path(data, tmp_path / "run") == first and len(calls) == 1  # reused, not collected
    again = OmegaConf.create({"generate": True, "path": None, "regenerate": True})
    assert build.resolve_data_path(again, tmp_path / "run") == first and len(calls) == 2
    named = build.resolve_data_path(data, tmp_path / "run", default_name="target.hdf5")
    assert named == tmp_path / "run" / "target.hdf5" and calls[-1] == str(named)


def test_load_data_passes_the_selection_the_stage_asked_for(tmp_path, monkeypatch):
    """An explicit ``task_id`` / ``tasks`` (stage 3's target) wins over the data group's; BC needs no rewards."""
    seen = []
    monkeypatch.setattr(build, "converted", lambda path, cfg: path)
    monkeypatch.setattr(build, "load_offline_dataset", lambda path, spec, reward, **kw: seen.append(kw))
    spec, reward = ObsSpec(low_dim=(("x", 1),)), RewardSettings()
    data = OmegaConf.create({"tasks": ["A"], "task_id": 4})
    build.load_data(tmp_path / "d.hdf5", spec, data, reward, algo="bc", act_dim=2, seed=0, device=torch.device("cpu"))
    build.load_data(tmp_path / "d.hdf5", spec, data, reward, algo="iql", act_dim=2, seed=0,
                    device=torch.device("cpu"), tasks=["B"], task_id=1)
    assert [(kw["tasks"], kw["task_id"], kw["rewards_needed"]) for kw in seen] == [(["A"], 4, False), (["B"], 1, True)]
    assert seen[0]["storage"] == "auto" and seen[0]["workers"] == 0


def tiny_dataset(n: int = 6) -> OfflineDataset:
    x = np.arange(n, dtype=np.float32)[:, None]
    dones = np.zeros(n, np.float32)
    dones[2] = 1.0
    return OfflineDataset({"x": x}, np.zeros((n, 2), np.float32), np.zeros(n, np.float32), {"x": x + 1}, dones)


def test_training_sampler_windows_the_data_for_the_decision_transformer_only():
    spec, data = ObsSpec(low_dim=(("x", 1),)), tiny_dataset()
    assert build.training_sampler(Agent(spec, 2, "iql", {}), data, seed=0) is data
    dt = Agent(spec, 2, "dt", {"context_len": 3, "embed_dim": 8, "num_layers": 1})
    sampler = build.training_sampler(dt, data, seed=7)
    assert isinstance(sampler, SequenceSampler) and sampler.dataset is data and sampler.K == 3
    torch.testing.assert_close(sampler.sample(4), SequenceSampler(data, 3, seed=7).sample(4))  # seeded by the stage
