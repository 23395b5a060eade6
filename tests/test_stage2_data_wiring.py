"""Stage 2's data wiring, seen from inside a real run (``robopretrain.train.run``): in PTR's target adaptation the
batches are 90% ``data.path`` (the prior tasks) and 10% ``data.mix`` (the target), row for row, and the pipeline
sets it up that way round; the returns-to-go of the training data use the algorithm's discount and reward transform
(here 0.9 and x10 - 5, by hand)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from _stages import collect_sim, stage2_config
from robopretrain import build
from robopretrain.agent import Agent
from robopretrain.data.keys import TASK_ID
from sim_envs.tasks import TASK_IDS

pytestmark = pytest.mark.slow

CLEAN = {"kinds": {"clean": {"fraction": 1.0, "noise": 0.0, "stop": None},
                   "noisy": {"fraction": 0.0, "noise": 0.0, "stop": None},
                   "failing": {"fraction": 0.0, "noise": 0.0, "stop": None}}, "valid_fraction": 0.0}
PRIOR, TARGET = "Reach", "PressButton"


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """Two updates of Cal-QL (discount 0.9, batch 20) on Reach demos with 10% PressButton demos mixed in; the
    datasets the run loaded and the batches it trained on."""
    from robopretrain.train import run

    tmp = tmp_path_factory.mktemp("mix")
    prior = collect_sim(tmp / "prior.hdf5", [PRIOR], episodes=2, **CLEAN)
    target = collect_sim(tmp / "target.hdf5", [TARGET], episodes=1, **CLEAN)
    loaded, batches = [], []
    real_load, real_update = build.load_data, Agent.update

    def load_data(path, *args, **kwargs):
        data = real_load(path, *args, **kwargs)
        loaded.append((str(path), data))
        return data

    def update(self, batch, *args, **kwargs):
        batches.append(batch)
        return real_update(self, batch, *args, **kwargs)

    cfg = stage2_config(prior, tmp / "run", algo="calql", steps=2,
                        algo_cfg={"discount": 0.9, "batch_size": 20},
                        data_cfg={"mix": {"path": str(target), "fraction": 0.1}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "load_data", load_data)
        mp.setattr(Agent, "update", update)
        run(cfg)
    return {"prior": str(prior), "target": str(target), "loaded": loaded, "batches": batches}


def test_batches_are_ninety_percent_prior_and_ten_percent_target(adapted):
    assert [p for p, _ in adapted["loaded"]] == [adapted["prior"], adapted["target"]]
    assert len(adapted["batches"]) == 2
    for batch in adapted["batches"]:
        ids = np.asarray(batch["observations"][TASK_ID]).reshape(-1)
        assert len(ids) == 20
        assert (ids == TASK_IDS[PRIOR]).sum() == 18 and (ids == TASK_IDS[TARGET]).sum() == 2


def test_returns_to_go_use_the_algorithms_discount(adapted):
    for _, data in adapted["loaded"]:
        rows = data.get(np.arange(len(data)))
        r, d, mc = (np.asarray(torch.as_tensor(rows[k])) for k in ("rewards", "dones", "mc_returns"))
        assert set(np.unique(r)) == {-5.0, 5.0}  # sparse {0, 1} x10 - 5
        expected, g = np.empty_like(r), 0.0
        for t in range(len(r) - 1, -1, -1):  # clean demos: every episode ends at its success (done = 1)
            g = r[t] + 0.9 * (1.0 - d[t]) * g
            expected[t] = g
        assert d[-1] == 1.0 and d.sum() >= 1
        np.testing.assert_allclose(mc, expected, rtol=1e-5)


def test_the_pipeline_puts_the_prior_in_data_path_and_the_target_in_mix(tmp_path):
    from robopretrain.envs.target import Target
    from robopretrain.pipeline import adapt_config, data_paths

    cfg = OmegaConf.load(build.CONFIG_DIR / "pipeline.yaml")
    cfg.pop("hydra")
    cfg.encoder.mode = "scratch"  # no stage-1 encoder in this folder
    assert cfg.adapt.prior_fraction == 0.9  # PTR: 90% prior / 10% target
    out = adapt_config(cfg, tmp_path, Target(TARGET))
    assert out.init == str(tmp_path / "stage2")
    assert out.data.path == str(data_paths(tmp_path)["prior"])
    assert out.data.mix.path == str(data_paths(tmp_path)["target"]) and list(out.data.mix.tasks) == [TARGET]
    assert out.data.mix.fraction == pytest.approx(0.1)


def test_a_run_records_and_evaluates_the_slots_it_trained_and_refuses_a_clashing_mix(tmp_path, monkeypatch):
    """data.task_id moves the slot: the run's meta and its default evaluation targets carry it (not the file's id);
    a mix whose task would share a slot with another prior task stops the run before any update."""
    from robopretrain import train

    prior = collect_sim(tmp_path / "prior.hdf5", [PRIOR], episodes=1, **CLEAN)
    seen = []
    def eval_targets(setting, info, ids, num_tasks, trained, obs_map=None):
        seen.append((dict(ids), num_tasks, trained))
        return []

    monkeypatch.setattr(train.build, "eval_targets", eval_targets)
    last = train.run(stage2_config(prior, tmp_path / "moved", steps=1, obs={"num_tasks": 12},
                                   data_cfg={"task_id": 5}))
    meta = OmegaConf.load(last / "meta.json")
    assert seen == [({PRIOR: 5}, 12, {PRIOR: 5})] and dict(meta.task_ids) == {PRIOR: 5}  # the agent's one-hot too
    assert list(meta.task_names) == [PRIOR]
    target = collect_sim(tmp_path / "target.hdf5", [TARGET], episodes=1, **CLEAN)
    clash = {"mix": {"path": str(target), "fraction": 0.5, "task_id": TASK_IDS[PRIOR]}}
    with pytest.raises(ValueError, match=f"slot {TASK_IDS[PRIOR]} is task '{PRIOR}'"):
        train.run(stage2_config(prior, tmp_path / "clash", steps=1, data_cfg=clash))


def test_an_adaptation_run_names_evaluates_and_defaults_to_its_mixed_in_target(tmp_path, monkeypatch):
    from robopretrain import train
    from robopretrain.checkpoint import load_checkpoint
    from robopretrain.evaluate import default_target

    prior = collect_sim(tmp_path / "prior.hdf5", [PRIOR], episodes=1, **CLEAN)
    target = collect_sim(tmp_path / "target.hdf5", [TARGET], episodes=1, **CLEAN)
    considered = []
    monkeypatch.setattr(train.build, "env_fits_or_log", lambda agent, t, rand: considered.append(t.name) and False)
    last = train.run(stage2_config(prior, tmp_path / "adapt", steps=1, train={"eval_targets": None},
                                   data_cfg={"mix": {"path": str(target), "fraction": 0.5}}))
    ckpt = load_checkpoint(last)
    assert considered == [PRIOR, TARGET]  # the default evaluation: the prior data's tasks and the mixed-in ones
    assert ckpt.meta["task_names"] == sorted([PRIOR, TARGET]) and ckpt.meta["mix_task_names"] == [TARGET]
    assert ckpt.meta["mix_path"] == str(target) and ckpt.meta["data_path"] == str(prior)  # where evaluate looks
    assert ckpt.meta["task_ids"] == {PRIOR: TASK_IDS[PRIOR], TARGET: TASK_IDS[TARGET]}
    assert default_target(ckpt).name == TARGET
    # a file no batch row comes from is neither evaluated by default nor recorded as trained (breaker NN F03)
    for fraction, trained in ((0.0, PRIOR), (1.0, TARGET)):
        considered.clear()
        last = train.run(stage2_config(prior, tmp_path / f"adapt{fraction}", steps=1, train={"eval_targets": None},
                                       data_cfg={"mix": {"path": str(target), "fraction": fraction}}))
        ckpt = load_checkpoint(last)
        assert considered == [trained] and ckpt.meta["task_ids"] == {trained: TASK_IDS[trained]}, fraction
        assert default_target(ckpt).name == trained, fraction


def test_a_run_from_an_init_checkpoint_places_its_targets_in_the_slots_the_checkpoint_records(tmp_path, monkeypatch):
    """Stage 2 resolved its evaluation targets' slots without the init checkpoint's tasks, which the checkpoint then
    records and evaluate and stage 3 read: a prior task moved by data.task_id was scored in its own id in stage 2 and
    in the learnt slot after it (reviewer C)."""
    from robopretrain import train

    prior = collect_sim(tmp_path / "prior.hdf5", [PRIOR], episodes=1, **CLEAN)
    target = collect_sim(tmp_path / "target.hdf5", [TARGET], episodes=1, **CLEAN)
    first = train.run(stage2_config(prior, tmp_path / "first", steps=1, obs={"num_tasks": 13},
                                    data_cfg={"task_id": 11}))
    real = train.build.eval_targets
    seen = []

    def eval_targets(setting, info, ids, num_tasks, trained, obs_map=None):
        seen.append(dict(trained))
        return real(setting, info, ids, num_tasks, trained, obs_map)

    monkeypatch.setattr(train.build, "eval_targets", eval_targets)
    last = train.run(stage2_config(target, tmp_path / "second", steps=1, init=str(first),
                                   train={"eval_targets": [PRIOR]}))
    meta = OmegaConf.load(last / "meta.json")
    assert seen == [{PRIOR: 11, TARGET: TASK_IDS[TARGET]}] and dict(meta.task_ids) == seen[0]
    assert [(t.name, t.task_id) for t in meta.eval_targets] == [(PRIOR, 11)]
