"""Reward learning from preferences (robopretrain.reward_model): the Bradley-Terry loss by hand (ties included), the
scripted teacher's labels and noise rate, the human label format, relabelling that changes nothing but rewards, and
a model trained on a toy dataset that agrees with held-out labels."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robopretrain.build import compose
from robopretrain.data.hdf5 import load_transitions
from robopretrain.data.spec import ObsSpec
from robopretrain.nets.obs_encoder import STD_EPS
from robopretrain.reward_model import (RUN_FILES, PreferenceLabel, RewardEnsemble, SegmentData, TrainSettings, agreement,
                                       bradley_terry_loss, load_reward_model, noisy_labels, observed_flip_rate,
                                       read_labels, relabel, run, sample_pairs, segment_reward_sums,
                                       teacher_label, write_labels)
from sim_envs.hdf5_writer import RobomimicWriter, make_env_args

REPO = Path(__file__).resolve().parents[1]


def test_bradley_terry_loss_by_hand_with_ties():
    ra, rb = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])
    y = torch.tensor([1.0, 0.0, 0.5])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    by_hand = [-math.log(sig(2.0)),  # a preferred, R_a - R_b = 2
               -math.log(1 - sig(-1.0)),  # b preferred, R_a - R_b = -1
               -(0.5 * math.log(sig(0.0)) + 0.5 * math.log(1 - sig(0.0)))]  # a tie: log 2 at equal returns
    assert float(bradley_terry_loss(ra, rb, y)) == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    tie = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([0.5]))
    assert float(tie) == pytest.approx(-(0.5 * math.log(sig(3.0)) + 0.5 * math.log(sig(-3.0))), rel=1e-6)


def test_scripted_teacher_labels_ties_and_noise_rate():
    assert teacher_label(2.0, 1.0) == 1.0 and teacher_label(1.0, 2.0) == 0.0 and teacher_label(1.0, 1.0) == 0.5
    assert teacher_label(1.05, 1.0, tie_margin=0.1) == 0.5
    rng = np.random.default_rng(0)
    clean = np.tile([1.0, 0.0, 0.5, 1.0], 5000)
    noisy = noisy_labels(clean, 0.2, rng)
    decided = clean != 0.5
    assert np.all(noisy[~decided] == 0.5)  # ties are never flipped
    flipped = np.mean(noisy[decided] != clean[decided])
    assert abs(flipped - 0.2) < 0.015  # 15000 non-tie labels: sd of the rate 0.0033
    assert set(np.unique(noisy[decided])) <= {0.0, 1.0}
    assert np.array_equal(noisy_labels(clean, 0.0, rng), clean)
    assert observed_flip_rate(clean, noisy) == pytest.approx(flipped)  # the report's figure, over non-ties only
    assert observed_flip_rate([1.0, 0.0], [0.0, 0.0]) == 0.5  # no tie at all
    assert observed_flip_rate([0.5, 0.5], [0.5, 0.5]) == 0.0  # only ties: nothing could flip


def test_pairs_stay_inside_demos_long_enough():
    rng = np.random.default_rng(1)
    pairs = sample_pairs({"demo_0": 12, "demo_1": 3, "demo_2": 5}, 5, 400, rng)
    assert {a for a, *_ in pairs} | {b for _, _, b, _ in pairs} <= {"demo_0", "demo_2"}  # demo_1 is too short
    lengths = {"demo_0": 12, "demo_2": 5}
    assert all(0 <= s <= lengths[d] - 5 for a, sa, b, sb in pairs for d, s in ((a, sa), (b, sb)))
    starts = [sa for a, sa, *_ in pairs if a == "demo_0"]
    assert min(starts) == 0 and max(starts) == 7  # every position is drawn
    with pytest.raises(ValueError, match="segment_length"):
        sample_pairs({"demo_0": 3}, 5, 1, rng)


def test_human_label_files_round_trip_and_bad_rows_are_named(tmp_path):
    labels = [PreferenceLabel("demo_0", 0, "demo_3", 4, 5, 1.0), PreferenceLabel("demo_1", 2, "demo_0", 1, 5, 0.5)]
    assert read_labels(write_labels(tmp_path / "l.csv", labels)) == labels
    (tmp_path / "l.json").write_text(json.dumps([{"demo_a": "demo_0", "start_a": 0, "demo_b": "demo_3", "start_b": 4,
                                                  "length": 5, "label": 1}]))
    assert read_labels(tmp_path / "l.json") == labels[:1]
    rows = [{"demo_a": lab.demo_a, "start_a": lab.start_a, "demo_b": lab.demo_b, "start_b": lab.start_b,
             "length": lab.length, "label": lab.label} for lab in labels]
    (tmp_path / "l.jsonl").write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")  # annotation tools'
    assert read_labels(tmp_path / "l.jsonl") == labels
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "label": 3}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: line 2: label must be in"):
        read_labels(tmp_path / "bad.jsonl")
    (tmp_path / "cut.jsonl").write_text(json.dumps(rows[0])[:-1] + "\n" + json.dumps({**rows[1], "label": 3}) + "\n")
    with pytest.raises(ValueError, match=r"cut.jsonl: 2 of 2 rows are ill-formed: line 1: not a JSON object .*; "
                                         r"line 2: label must be in"):  # every bad line at once, as for CSV
        read_labels(tmp_path / "cut.jsonl")
    (tmp_path / "lines.json").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match=r"lines.json: not valid JSON: Extra data.*name the file .jsonl"):
        read_labels(tmp_path / "lines.json")
    (tmp_path / "l.txt").write_text(json.dumps(rows[0]) + "\n")  # JSON lines under another suffix: said so
    with pytest.raises(ValueError, match="expected a CSV header.*looks like JSON: name the file .json"):
        read_labels(tmp_path / "l.txt")
    (tmp_path / "bad.csv").write_text("demo_a,start_a,demo_b,start_b,length,label\ndemo_0,0,demo_1,0,5,2\n")
    with pytest.raises(ValueError, match="bad.csv: line 2: label must be in"):  # the header is line 1
        read_labels(tmp_path / "bad.csv")


def test_label_files_from_spreadsheets_and_ill_formed_rows(tmp_path):
    """A byte-order mark (spreadsheets' CSV UTF-8) is read; a fractional start, a row of another segment length and a
    non-tie pair of one segment with itself are refused naming the row; a tie of a segment with itself is kept."""
    header = "demo_a,start_a,demo_b,start_b,length,label\n"
    (tmp_path / "bom.csv").write_text("\ufeff" + header + "demo_0,0,demo_1,2.0,5,1\n", encoding="utf-8")
    assert read_labels(tmp_path / "bom.csv") == [PreferenceLabel("demo_0", 0, "demo_1", 2, 5, 1.0)]
    (tmp_path / "spaced.csv").write_text(header.replace(",", " , ") + "demo_0 , 0, demo_1, 2 ,5, 1\n")  # spaced
    assert read_labels(tmp_path / "spaced.csv") == [PreferenceLabel("demo_0", 0, "demo_1", 2, 5, 1.0)]
    (tmp_path / "frac.json").write_text(json.dumps([{"demo_a": "demo_0", "start_a": 2.7, "demo_b": "demo_1",
                                                     "start_b": 0, "length": 5, "label": 1}]))
    with pytest.raises(ValueError, match=r"frac.json: item 1: start_a: 2.7 is not a whole number"):
        read_labels(tmp_path / "frac.json")
    (tmp_path / "word.csv").write_text(header + "demo_0,0,demo_1,0,5,one\n")  # the column is named
    with pytest.raises(ValueError, match=r"word.csv: line 2: label: could not convert string to float: 'one'"):
        read_labels(tmp_path / "word.csv")
    (tmp_path / "len.csv").write_text(header + "demo_0,0,demo_1,0,5,1\ndemo_0,0,demo_1,0,5,0\ndemo_0,0,demo_1,0,4,1\n")
    with pytest.raises(ValueError, match=r"line 4: length 4, but the first row has 5"):
        read_labels(tmp_path / "len.csv")
    for start_a, start_b in ((-1, 3), (3, -1)):  # either start negative (mutation testing: the smaller is checked)
        (tmp_path / "neg.csv").write_text(header + f"demo_0,{start_a},demo_1,{start_b},5,1\n")
        with pytest.raises(ValueError, match=r"neg.csv: line 2: label must be in \[0, 1\].*starts >= 0"):
            read_labels(tmp_path / "neg.csv")
    (tmp_path / "self.csv").write_text(header + "demo_0,3,demo_0,3,5,0.5\ndemo_0,3,demo_0,3,5,1\n")
    with pytest.raises(ValueError, match=r"line 3: segment a and segment b are the same steps"):
        read_labels(tmp_path / "self.csv")
    # a JSON item that is not an object, true / false for numbers, an empty CSV cell: said in words, by item / line
    good = {"demo_a": "demo_0", "start_a": 0, "demo_b": "demo_1", "start_b": 0, "length": 5, "label": 1}
    for name, items, said in [("lists.json", [good, ["demo_0", 0, "demo_1", 0, 5, 1]], "item 2: expected an object"),
                              ("flag.json", [{**good, "start_a": True}], "item 1: start_a is true / false"),
                              ("none.json", [{**good, "label": None}], "item 1: no value for label")]:
        (tmp_path / name).write_text(json.dumps(items))
        with pytest.raises(ValueError, match=said):
            read_labels(tmp_path / name)
    (tmp_path / "gap.csv").write_text(header + "demo_0,0,demo_1,0,5,1\ndemo_0,0,demo_1,,5,1\n")
    with pytest.raises(ValueError, match="line 3: no value for start_b"):
        read_labels(tmp_path / "gap.csv")
    # every ill-formed row at once: counted, the first five named, the rest counted
    rows = ["demo_0,0,demo_1,0,5,1", "demo_0,0,demo_1,0,5,2", "demo_0,x,demo_1,0,5,1", "demo_0,0,demo_1,0,4,1"]
    (tmp_path / "many.csv").write_text(header + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"many.csv: 3 of 4 rows are ill-formed: line 3: label must be in .*; line 4: "
                                         r"start_a: .*; line 5: length 4, but the first row has 5; every pair [^:]*$"):
        read_labels(tmp_path / "many.csv")
    (tmp_path / "more.csv").write_text(header + "demo_0,0,demo_1,0,5,2\n" * 7)
    with pytest.raises(ValueError, match=r"more.csv: 7 of 7 rows are ill-formed: line 2: .*line 6: label must be in "
                                         r".*'label': '2'} \(and 2 more\)$") as err:
        read_labels(tmp_path / "more.csv")
    assert "line 7" not in str(err.value)
    (tmp_path / "self_tie.csv").write_text(header + "demo_0,3,demo_0,3,5,0.5\n")
    assert read_labels(tmp_path / "self_tie.csv")[0].label == 0.5
    for length in (0, -3):
        with pytest.raises(ValueError, match=f"teacher.segment_length={length}"):
            sample_pairs({"demo_0": 12}, length, 10, np.random.default_rng(0))


def write_toy(path: Path, episodes: int = 40, steps: int = 12, seed: int = 0) -> Path:
    """1-D walks x_t in [0, 1] with a dense reward r = x (the true progress), 2-D actions, one task."""
    rng = np.random.default_rng(seed)
    with RobomimicWriter(path, make_env_args("Toy", "1", {}), action_dim=2, valid_fraction=0.0,
                         compression=None) as w:
        for _ in range(episodes):
            x = np.clip(rng.uniform(0, 1) + np.cumsum(rng.normal(0, 0.15, steps + 1)), 0, 1).astype(np.float32)
            obs, nxt = {"x": x[:-1, None]}, {"x": x[1:, None]}
            actions = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
            w.add_episode(task="toy", task_id=0, obs=obs, next_obs=nxt, actions=actions, rewards=x[:-1].copy(),
                          dones=np.zeros(steps, np.uint8), ep_meta={"success": False})
    return path


def write_walks(path: Path, walks: list[list[float]]) -> Path:
    """One demo per walk: observation x = the walk, reward = x, zero actions."""
    with RobomimicWriter(path, make_env_args("Toy", "1", {}), action_dim=2, valid_fraction=0.0,
                         compression=None) as w:
        for walk in walks:
            x = np.asarray(walk, np.float32)[:, None]
            w.add_episode(task="toy", task_id=0, obs={"x": x}, next_obs={"x": x}, actions=np.zeros((len(x), 2),
                          np.float32), rewards=x[:, 0].copy(), dones=np.zeros(len(x), np.uint8),
                          ep_meta={"success": False})
    return path


WALKS = [[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]]
SPEC = ObsSpec(low_dim=(("x", 1),))


def two_members(obs, actions, member=None):
    """A stand-in ensemble (E = 2) with rewards x and x + 2: the ensemble mean is x + 1."""
    x = obs["x"][:, 0]
    return torch.stack([x, x + 2.0])


def test_agreement_and_held_out_loss_by_hand(tmp_path):
    data = SegmentData(load_transitions(write_walks(tmp_path / "w.hdf5", WALKS), ["x"]), SPEC)
    # mean returns over 2 steps (sum x + 2): a - b = 2.1 - 3.9 = -1.8 (label a: wrong), 3.5 - 2.9 = 0.6 (a: right),
    # 2.5 - 3.1 = -0.6 (label b: right), a tie (not counted in the agreement, in the loss with target 0.5)
    labels = [PreferenceLabel("demo_0", 0, "demo_1", 0, 2, 1.0), PreferenceLabel("demo_1", 2, "demo_0", 4, 2, 1.0),
              PreferenceLabel("demo_0", 2, "demo_1", 4, 2, 0.0), PreferenceLabel("demo_0", 0, "demo_0", 1, 2, 0.5)]
    out = agreement(two_members, data, labels)
    assert out["agreement"] == pytest.approx(2 / 3) and out["non_tie"] == 3 and out["pairs"] == 4
    log_sig = lambda d: -math.log1p(math.exp(-d))  # noqa: E731
    by_hand = [-log_sig(-1.8), -log_sig(0.6), -log_sig(0.6), -(0.5 * log_sig(-0.2) + 0.5 * log_sig(0.2))]
    assert out["bt_loss"] == pytest.approx(sum(by_hand) / 4, rel=1e-5)
    # a soft label below 0.5 prefers b: 2.5 < 3.1, so the ensemble agrees
    assert agreement(two_members, data, [PreferenceLabel("demo_0", 2, "demo_1", 4, 2, 0.3)])["agreement"] == 1.0
    assert agreement(two_members, data, labels[3:])["agreement"] is None  # only ties: nothing to agree with (not NaN)
    # a model that scores both segments equal (collapsed, saturated) is right half the time, whichever segment the
    # label prefers (it agreed with every label 0 and with no label 1)
    flat = lambda obs, actions, member=None: torch.zeros(2, len(obs["x"]))  # noqa: E731
    for y in (0.0, 1.0):
        assert agreement(flat, data, [PreferenceLabel("demo_0", 2, "demo_1", 4, 2, y)])["agreement"] == 0.5
    # the scripted teacher's sums of the true reward (here x), the file's first row included
    assert segment_reward_sums(data, [("demo_0", 0), ("demo_1", 0), ("demo_1", 4)], 2) == pytest.approx(
        {("demo_0", 0): 0.1, ("demo_1", 0): 1.9, ("demo_1", 4): 1.1})


def test_training_batches_and_loss_history_and_the_published_defaults(tmp_path, monkeypatch):
    """Each member's batch holds min(batch_size, labels) pairs; the history has the loss every 100 steps and at the
    last step; TrainSettings' defaults are configs/reward_model.yaml's ``model`` group (no drift)."""
    import robopretrain.reward_model as rm

    data = SegmentData(load_transitions(write_walks(tmp_path / "w.hdf5", WALKS), ["x"]), SPEC)
    labels = [PreferenceLabel("demo_0", i, "demo_1", i, 2, y) for i, y in enumerate((1.0, 0.0, 0.5))]
    sizes, seen = [], set()
    real = rm.bradley_terry_loss
    monkeypatch.setattr(rm, "bradley_terry_loss",
                        lambda a, b, y: sizes.append(len(y)) or seen.update(y.tolist()) or real(a, b, y))
    model = RewardEnsemble(SPEC, 2, ensemble=2, hidden=(8,))
    history = rm.train_ensemble(model, data, labels, TrainSettings(ensemble=2, hidden=(8,), batch_size=64, steps=202))
    assert set(sizes) == {3} and len(sizes) == 2 * 202  # 3 labels < 64: 3 pairs per member and step
    assert seen == {1.0, 0.0, 0.5}  # drawn from every label, the first included
    assert len(history) == 4  # steps 0, 100, 200 and the last, 201
    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "reward_model.yaml"))["model"]
    assert {**asdict(TrainSettings()), "hidden": list(TrainSettings().hidden)} == yaml


@pytest.mark.parametrize("normalize", ["none", "standard", "minmax"])
def test_relabel_writes_the_ensemble_mean_normalised_over_the_file(tmp_path, normalize):
    src = write_walks(tmp_path / "w.hdf5", WALKS)
    x = np.concatenate(WALKS)
    expected = {"none": x + 1.0, "standard": (x - x.mean()) / x.std(), "minmax": x}[normalize]
    out = relabel(src, tmp_path / "r.hdf5", two_members, SPEC, normalize)
    with h5py.File(out) as f:
        got = np.concatenate([f[f"data/demo_{i}/rewards"][()] for i in range(2)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # a constant learned reward normalises to zeros, not NaN (scale 1 for a spread <= 1e-8)
    flat = relabel(src, tmp_path / "c.hdf5", lambda obs, actions: torch.zeros(2, len(actions)), SPEC, normalize)
    with h5py.File(flat) as f:
        assert np.array_equal(f["data/demo_1/rewards"][()], np.zeros(6, np.float32))
    # the copy says its rewards are learned, with the rest of its env_args; the DT is warned, other learners not
    from robopretrain.build import warn_learned_reward
    from robopretrain.data.hdf5 import read_info

    info = read_info(out)
    record = info.env_args["learned_reward"]
    assert {k: record[k] for k in ("source", "normalize", "model_digest")} == {
        "source": str(src.resolve()), "normalize": normalize, "model_digest": None}  # a function: no weights
    # the recorded affine map is the one applied (stage 3 rewards its online steps with it)
    np.testing.assert_allclose((x + 1.0 - record["offset"]) / record["scale"], got, rtol=0, atol=1e-5)
    assert {k: v for k, v in info.env_args.items() if k != "learned_reward"} == read_info(src).env_args
    assert warn_learned_reward("dt", info) and not warn_learned_reward("iql", info)
    assert not warn_learned_reward("dt", read_info(src))


def test_a_reward_model_file_that_cannot_be_loaded_is_named_in_one_line(tmp_path):
    """A corrupt reward_model.pt reached stage 3 as an UnpicklingError (no one-line error) whose first line was
    PyTorch's advice to load with weights_only=False (a reviewer's finding)."""
    from robopretrain.reward_model import load_reward_model

    (tmp_path / "reward_model.pt").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"reward_model.pt: unreadable \(corrupt, truncated, or not a file the "
                                         r"toolkit wrote\): Unsupported operand 103$"):
        load_reward_model(tmp_path / "reward_model.pt")


def test_relabel_reads_each_demos_metadata_once(tmp_path, monkeypatch):
    """relabel read the file's metadata twice (load_transitions without the read_info relabel had made; a finding on
    a file of many tiny demos, stop 73)."""
    import robopretrain.data.hdf5 as hdf5_mod

    src = write_walks(tmp_path / "w.hdf5", WALKS)
    calls = []
    monkeypatch.setattr(hdf5_mod, "_demo_info", lambda *a, real=hdf5_mod._demo_info: calls.append(a[2]) or real(*a))
    relabel(src, tmp_path / "r.hdf5", two_members, SPEC, "none")
    assert sorted(calls) == ["demo_0", "demo_1"]


@pytest.mark.parametrize("stored", [np.int64, np.uint8, np.bool_, np.float16])
def test_relabelled_rewards_are_not_rounded_to_the_files_reward_dtype(tmp_path, stored):
    """A file whose rewards are stored as int {0, 1} (common) got every learned reward cast to int: all zeros."""
    src = write_walks(tmp_path / "w.hdf5", WALKS)
    with h5py.File(src, "r+") as f:
        for i in range(2):
            old = f[f"data/demo_{i}/rewards"][()]
            del f[f"data/demo_{i}/rewards"]
            f.create_dataset(f"data/demo_{i}/rewards", data=(old > 0.45).astype(stored))
    out = relabel(src, tmp_path / "r.hdf5", two_members, SPEC, "none")
    with h5py.File(out) as f:
        got = [f[f"data/demo_{i}/rewards"] for i in range(2)]
        assert all(g.dtype == np.float32 for g in got)
        np.testing.assert_allclose(np.concatenate([g[()] for g in got]), np.concatenate(WALKS) + 1.0, atol=1e-6)


def test_relabel_scores_another_files_actions_in_the_models_units(tmp_path):
    """A model trained on actions converted from [0, 8] scores a file converted from [2, 6] after re-expressing its
    actions in [0, 8]'s units: reward = the first action component as the model sees it."""
    import _fake_envs as fake
    from robopretrain.data.convert import convert
    from robopretrain.envs.action_units import ActionNormalization

    src = fake.write_units_d4rl(tmp_path / "a.hdf5", episodes=3)
    with h5py.File(src, "r") as f, h5py.File(tmp_path / "narrow.hdf5", "w") as g:
        for k in ("observations", "rewards", "terminals", "timeouts", "infos/success"):
            g[k] = f[k][()]
        g["actions"] = 4.0 + 0.5 * (f["actions"][()] - 4.0)  # env units in [2, 6]
        env_actions = g["actions"][()]
    narrow = convert(tmp_path / "narrow.hdf5", tmp_path / "narrow_conv.hdf5")
    spec = ObsSpec(low_dim=(("observations", 4),))

    def first_action(obs, actions):
        return torch.stack([actions[:, 0], actions[:, 0]])

    first_action.action_units = ActionNormalization((0.0, 0.0), (8.0, 8.0))
    with h5py.File(relabel(narrow, tmp_path / "r.hdf5", first_action, spec)) as f:
        got = np.concatenate([f[f"data/demo_{i}/rewards"][()] for i in range(len(f["data"]))])
    np.testing.assert_allclose(got, env_actions[:, 0] / 4.0 - 1.0, atol=1e-5)  # [0, 8] units, not the file's own


def config(data: Path, out: Path, **overrides):
    base = {"seed": 0, "num_threads": 1, "output_dir": str(out), "data": {"path": str(data)},
            "obs": {"low_dim": ["x"]},
            "teacher": {"num_pairs": 600, "segment_length": 4, "noise": 0.1},
            "model": {"ensemble": 2, "hidden": [32, 32], "steps": 200, "batch_size": 64, "lr": 3e-3}}
    for k, v in overrides.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return compose("reward_model", overrides=base)


def test_held_out_fraction_must_leave_labels_on_both_sides(tmp_path):
    """One held-out label is enough to measure on; none (or none left to train on) is refused by name."""
    data = write_toy(tmp_path / "toy.hdf5")
    small = {"teacher": {"num_pairs": 20}, "model": {"steps": 5}, "relabel": {"enabled": False}}
    report = run(config(data, tmp_path / "one", labels={"held_out": 0.05}, **small), tmp_path / "one")
    assert report["held_out_agreement"]["pairs"] == 1
    for frac in (0.01, 1.0):  # 0 held out, 0 left to train on
        with pytest.raises(ValueError, match="labels.held_out"):
            run(config(data, tmp_path / f"r{frac}", labels={"held_out": frac}, **small), tmp_path / f"r{frac}")


def test_the_run_says_what_its_held_out_labels_measured(tmp_path, caplog):
    """The log line names the agreement, or that nothing was held out; no tie warning when there was something to
    measure (mutations: the branches swapped)."""
    import logging

    data = write_toy(tmp_path / "toy.hdf5")
    small = {"teacher": {"num_pairs": 40}, "model": {"steps": 5}, "relabel": {"enabled": False}}
    with caplog.at_level(logging.INFO, logger="robopretrain.reward_model"):
        run(config(data, tmp_path / "none", labels={"held_out": 0}, **small), tmp_path / "none")
    assert "no labels held out (labels.held_out=0)" in caplog.text and "agreement" not in caplog.text.replace(
        "no agreement measured", "")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="robopretrain.reward_model"):
        report = run(config(data, tmp_path / "some", labels={"held_out": 0.25}, **small), tmp_path / "some")
    assert report["held_out_agreement"]["agreement"] is not None
    assert "held-out agreement" in caplog.text and "non-tie pairs" in caplog.text
    assert "every held-out label is a tie" not in caplog.text and "no labels held out" not in caplog.text


def test_held_out_pairs_keep_every_row_that_labels_them_out_of_training(caplog):
    """A pair listed several times (either segment order) is held out or trained on as a whole: held-out agreement
    was measured on rows whose copies were trained on. All pairs distinct: rng.permutation's first rows, as
    before. Contradicting copies are warned about and kept; 0 holds nothing out; too few pairs are refused."""
    import logging

    from robopretrain.reward_model import held_out_split

    distinct = [PreferenceLabel("demo_0", 0, f"demo_{i}", 0, 4, 1.0) for i in range(1, 11)]
    held, train = held_out_split(distinct, 0.2, np.random.default_rng(0))
    assert held.tolist() == np.random.default_rng(0).permutation(10)[:2].tolist()
    assert sorted([*held, *train]) == list(range(10))
    # five pairs, each three times (once with the segments swapped and the label mirrored): 15 rows
    rows = []
    for lab in distinct[:5]:
        rows += [lab, lab, PreferenceLabel(lab.demo_b, lab.start_b, lab.demo_a, lab.start_a, 4, 0.0)]
    with caplog.at_level(logging.WARNING):
        held, train = held_out_split(rows, 0.4, np.random.default_rng(1))
    assert "different preferences" not in caplog.text  # the mirrored copy says the same
    pair = [frozenset({(r.demo_a, r.start_a), (r.demo_b, r.start_b)}) for r in rows]
    assert len(held) == 6 and len(train) == 9
    assert not {pair[i] for i in held} & {pair[i] for i in train}
    rows[1] = dataclasses.replace(rows[1], label=0.0)  # a second annotator disagrees on the first pair
    with caplog.at_level(logging.WARNING):
        held_out_split(rows, 0.4, np.random.default_rng(1))
    assert "1 of 5 pairs are labelled more than once with different preferences" in caplog.text
    held, train = held_out_split(rows, 0.0, np.random.default_rng(1))
    assert held.size == 0 and sorted(train) == list(range(15))
    for frac in (0.05, 1.0, -0.2):  # rounds to no pair held out; none left to train on; negative
        with pytest.raises(ValueError, match="labels.held_out"):
            held_out_split(rows, frac, np.random.default_rng(1))


def test_nothing_held_out_trains_on_every_label_and_reports_no_agreement(tmp_path):
    data = write_toy(tmp_path / "toy.hdf5")
    small = {"teacher": {"num_pairs": 20}, "model": {"steps": 5}, "relabel": {"enabled": False}}
    report = run(config(data, tmp_path / "zero", labels={"held_out": 0.0}, **small), tmp_path / "zero")
    assert report["held_out"] == 0 and report["held_out_agreement"] == {"agreement": None, "pairs": 0,
                                                                       "non_tie": 0, "bt_loss": None}
    assert report["held_out_agreement_clean_teacher"]["pairs"] == 0


def one_step_last_demo(data: Path, demo_name: str = "demo_11") -> Path:
    """``data`` with ``demo_name`` cut to its first step (a 1-step demo, below the data contract's minimum of 2)."""
    with h5py.File(data, "r+") as f:
        demo = f[f"data/{demo_name}"]
        removed = int(demo.attrs["num_samples"]) - 1
        for name in ("actions", "rewards", "dones"):
            stored = demo[name][:1]
            del demo[name]
            demo.create_dataset(name, data=stored)
        for part in ("obs", "next_obs"):
            for key in list(demo[part]):
                stored = demo[f"{part}/{key}"][:1]
                del demo[f"{part}/{key}"]
                demo.create_dataset(f"{part}/{key}", data=stored)
        demo.attrs["num_samples"] = 1
        f["data"].attrs["total"] = int(f["data"].attrs["total"]) - removed
    return data


def test_relabelling_leaves_a_one_step_demo_that_the_run_masked_out_as_it_is(tmp_path, caplog):
    """A 1-step demo (which no stage reads) left out with data.mask as the reader advises: the ensemble trains and
    the copy is written (relabelling read every demo and stopped on it), with the short demo untouched."""
    import logging

    data = one_step_last_demo(write_toy(tmp_path / "toy.hdf5", episodes=12))
    with h5py.File(data, "r+") as f:
        f.create_dataset("mask/good", data=np.array([f"demo_{i}".encode() for i in range(11)]))
        before = f["data/demo_11/rewards"][:]
    with caplog.at_level(logging.WARNING):
        cfg = config(data, tmp_path / "m", teacher={"num_pairs": 20}, model={"steps": 5})
        cfg.data.mask = "good"
        report = run(cfg, tmp_path / "m")
    assert "1 demo(s) of fewer than 2 steps left as they are" in caplog.text
    with h5py.File(report["relabelled"]) as f, h5py.File(data) as g:
        np.testing.assert_array_equal(f["data/demo_11/rewards"][:], before)
        assert not np.array_equal(f["data/demo_0/rewards"][:], g["data/demo_0/rewards"][:])


def test_degenerate_label_sets_and_settings_are_refused_before_training(tmp_path):
    """Only ties to train on (the loss has nothing to learn), model.steps=0 (untrained nets would relabel the file):
    refused by name. Ties held out: the report stays strict JSON."""
    data = write_toy(tmp_path / "toy.hdf5")
    ties = [PreferenceLabel("demo_0", 0, f"demo_{i}", 0, 4, 0.5) for i in range(1, 11)]
    write_labels(tmp_path / "ties.csv", ties)
    with pytest.raises(ValueError, match="every one of the 8 training labels is a tie"):
        run(config(data, tmp_path / "t", labels={"path": str(tmp_path / "ties.csv")}), tmp_path / "t")
    with pytest.raises(ValueError, match=r"model.steps=0: ensemble, steps and batch_size must be >= 1"):
        run(config(data, tmp_path / "s", model={"steps": 0}), tmp_path / "s")
    decided = [PreferenceLabel("demo_0", 0, f"demo_{i}", 0, 4, 1.0) for i in range(11, 19)]
    mixed = decided[:4] + [ties[0]] + decided[4:5] + [ties[1]] + decided[5:]  # seed 0 holds out rows 4 and 6
    write_labels(tmp_path / "mixed.csv", mixed)
    cfg = config(data, tmp_path / "m", labels={"path": str(tmp_path / "mixed.csv"), "held_out": 0.2},
                 model={"steps": 5}, relabel={"enabled": False})
    report = run(cfg, tmp_path / "m")
    assert report["held_out_agreement"]["non_tie"] == 0 and report["held_out_agreement"]["agreement"] is None
    json.loads((tmp_path / "m" / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_a_reward_free_file_is_labelled_by_humans_and_its_copy_has_rewards(tmp_path):
    """A recording without ``rewards`` datasets: the scripted teacher (which reads stored rewards) refuses it; human
    labels train the model and the relabelled copy has a rewards dataset in every demo."""
    data = write_toy(tmp_path / "toy.hdf5", episodes=12)
    with h5py.File(data, "r+") as f:
        for name in list(f["data"]):
            del f[f"data/{name}/rewards"]
    with pytest.raises(ValueError, match=r"12 of 12 selected demos have no rewards dataset .* give human labels"):
        run(config(data, tmp_path / "s"), tmp_path / "s")
    labels = [PreferenceLabel(f"demo_{i}", 0, f"demo_{i + 1}", 2, 4, float(i % 2)) for i in range(10)]
    write_labels(tmp_path / "human.csv", labels)
    report = run(config(data, tmp_path / "h", labels={"path": str(tmp_path / "human.csv")}, model={"steps": 5}),
                 tmp_path / "h")
    with h5py.File(report["relabelled"]) as f:
        assert all(f[f"data/{n}/rewards"].shape == (12,) for n in f["data"])
        assert f["data/demo_0/rewards"].dtype == np.float32


def test_learned_reward_agrees_with_held_out_labels_and_relabelling_keeps_the_rest(tmp_path):
    data = write_toy(tmp_path / "toy.hdf5")
    report = run(config(data, tmp_path / "run", relabel={"normalize": "standard"}), tmp_path / "run")
    held = report["held_out_agreement"]
    assert held["non_tie"] > 100
    assert held["agreement"] > 0.85  # noisy labels (10% flipped) bound what can be agreed with
    assert report["held_out_agreement_clean_teacher"]["agreement"] > 0.9
    assert abs(report["observed_flip_rate"] - 0.1) < 0.05
    # the inputs are normalised by the data's own std (configs/reward_model.yaml: obs.min_std 0, no floor)
    model, _ = load_reward_model(tmp_path / "run" / "reward_model.pt")
    x = load_transitions(data, ["x"]).obs["x"]
    np.testing.assert_allclose(model.encoder.std.numpy(), x.std(0) + STD_EPS, rtol=1e-5)

    out = Path(report["relabelled"])
    with h5py.File(data) as a, h5py.File(out) as b:
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        names_b = []
        b.visititems(lambda n, o: names_b.append(n) if isinstance(o, h5py.Dataset) else None)
        assert sorted(names) == sorted(names_b)
        rewards, progress = [], []
        for n in names:
            if n.endswith("/rewards"):
                rewards.append(b[n][()])
                assert b[n].shape == a[n].shape and b[n].dtype == a[n].dtype
                progress.append(a[n.replace("rewards", "obs/x")][()][:, 0])
            else:
                assert np.array_equal(a[n][()], b[n][()]), n
        relabelled_env_args = json.loads(b["data"].attrs["env_args"])  # the rewards' origin recorded, nothing else
        assert relabelled_env_args.pop("learned_reward")["normalize"] == "standard"
        assert relabelled_env_args == json.loads(a["data"].attrs["env_args"])
        assert {k: v for k, v in a["data"].attrs.items() if k != "env_args"} == {
            k: v for k, v in b["data"].attrs.items() if k != "env_args"}
        flat = np.concatenate(rewards)
        assert np.corrcoef(flat, np.concatenate(progress))[0, 1] > 0.9  # each demo's steps got their own reward
        assert abs(flat.mean()) < 1e-4 and abs(flat.std() - 1) < 1e-3  # normalize=standard over the file

    model, spec = load_reward_model(tmp_path / "run" / "reward_model.pt")  # the saved ensemble relabels the same
    torch.testing.assert_close(model.encoder.mean, torch.tensor([np.concatenate(progress).mean()]))  # obs.normalize
    assert model.action_units is None  # the toy file's actions are in the env's units (recorded as such)
    assert model.task_slots == [0]  # its data's task slot (None: a file written before they were recorded)
    again_path = relabel(data, tmp_path / "again.hdf5", model, spec, "standard")
    with h5py.File(out) as b, h5py.File(again_path) as c:
        assert np.allclose(b["data/demo_3/rewards"][()], c["data/demo_3/rewards"][()], atol=1e-6)

    # human labels in the documented format train the same way; a segment outside its demo is named
    labels = read_labels(tmp_path / "run" / "labels.csv")
    write_labels(tmp_path / "human.csv", labels[:200])
    nested = tmp_path / "runs" / "h"  # the run folder's parents are made too
    again = run(config(data, nested, labels={"path": str(tmp_path / "human.csv")}, obs={"normalize": False},
                       model={"steps": 5}, relabel={"enabled": False}), nested)
    assert again["num_labels"] == 200 and "relabelled" not in again and "teacher" not in again
    raw, _ = load_reward_model(nested / "reward_model.pt")
    assert raw.encoder.mean.tolist() == [0.0] and raw.encoder.std.tolist() == [1.0]  # obs.normalize=false
    write_labels(tmp_path / "bad.csv", [PreferenceLabel("demo_0", 0, "demo_1", 0, 4, 1.0),
                                        PreferenceLabel("demo_0", 10, "demo_1", 0, 4, 1.0)])
    with pytest.raises(ValueError, match=r"bad.csv: line 3: segment demo_0\[10:14\] runs past"):
        run(config(data, tmp_path / "b", labels={"path": str(tmp_path / "bad.csv")}), tmp_path / "b")
    # several: all counted and named at once, both segments of a row too
    write_labels(tmp_path / "bad.csv", [PreferenceLabel("demo_0", 10, "demo_1", 0, 4, 1.0),
                                        PreferenceLabel("demo_0", 0, "demo_1", 0, 4, 1.0),
                                        PreferenceLabel("demo_0", 9, "demo_x", 0, 4, 1.0)])
    with pytest.raises(ValueError, match=r"bad.csv: 3 segments of 3 pairs are outside the data: line 2: segment "
                                         r"demo_0\[10:14\] runs past .*; line 4: segment demo_0\[9:13\] runs past "
                                         r".*; line 4: demo 'demo_x' is not in"):
        run(config(data, tmp_path / "b", labels={"path": str(tmp_path / "bad.csv")}), tmp_path / "b")


def test_a_file_in_the_robots_own_action_units_is_rescaled_as_stage_2_does(tmp_path, caplog):
    """A robomimic file whose actions leave [-1, 1] (a robot's own units): the model trains on them rescaled per
    dimension (data.actions=auto), records those units and relabels the file; data.actions=keep refuses it."""
    from robopretrain.data.hdf5 import DatasetError

    data = write_toy(tmp_path / "robot.hdf5", episodes=12)
    with h5py.File(data, "r+") as f:  # the first action dimension in [0, 8], as a recorder outside the toolkit wrote it
        for demo in f["data"].values():
            demo["actions"][:, 0] = 4.0 * (demo["actions"][:, 0] + 1.0)
    env_actions = load_transitions(data, ["x"], action_range=False).actions
    with caplog.at_level("WARNING"):
        report = run(config(data, tmp_path / "run", model={"steps": 5}), tmp_path / "run")
    assert "are clipped" not in caplog.text  # the training actions mapped into [-1, 1], not saturated at its ends
    model, _ = load_reward_model(tmp_path / "run" / "reward_model.pt")
    np.testing.assert_allclose(model.action_units.low, [env_actions[:, 0].min(), -1.0], rtol=1e-6)
    np.testing.assert_allclose(model.action_units.high, [env_actions[:, 0].max(), 1.0], rtol=1e-6)
    with h5py.File(report["relabelled"]) as f, h5py.File(data) as src:
        got = f["data/demo_0/rewards"][()]
        obs, acts = src["data/demo_0/obs/x"][()], src["data/demo_0/actions"][()]
        task = int(src["data/demo_0"].attrs["task_id"])
    parts = {"x": torch.from_numpy(obs.astype(np.float32)), "task_id": torch.full((len(obs),), task)}
    with torch.no_grad():  # the model scores the file's actions in the units it trained in, not clipped env units
        want = model(parts,
                     torch.from_numpy(model.action_units.to_agent(acts).astype(np.float32))).mean(0).numpy()
    assert got.shape == (12,) and np.allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(DatasetError, match=r"values outside \[-1, 1\]"):
        keep = config(data, tmp_path / "keep", relabel={"enabled": False})
        keep.data.actions = "keep"
        run(keep, tmp_path / "keep")
    # the env's action box declared (data.action_bounds, as stage 2's): the model's units, whatever the data covers
    box = {"low": [-1.0, -2.0], "high": [9.0, 2.0]}
    declared = config(data, tmp_path / "box", model={"steps": 5}, relabel={"enabled": False})
    declared.data.action_bounds = box
    caplog.clear()
    with caplog.at_level("INFO"):
        run(declared, tmp_path / "box")
    assert "the reward model reads its actions in these units" in caplog.text  # no agent, no env here
    assert "every env it acts in" not in caplog.text
    model, _ = load_reward_model(tmp_path / "box" / "reward_model.pt")
    assert (list(model.action_units.low), list(model.action_units.high)) == (box["low"], box["high"])


def test_command_line_runs_the_reward_model_and_answers_in_one_line(tmp_path):
    """``python -m robopretrain.reward_model`` reaches :func:`run` (a missing data file is reported from there) with
    the one-line error of the other entry points."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "robopretrain.reward_model", f"data.path={tmp_path / 'none.hdf5'}",
                           f"hydra.run.dir={tmp_path / 'h'}"], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: data.path={tmp_path / 'none.hdf5'}: file not found")


def test_keys_the_config_does_not_define_are_refused_before_any_work(tmp_path):
    """``+relabel.normalise=standard``, ``+labels.heldout=0.5``, ``+algo=iql`` were accepted and ignored and
    ``+model.stpes=5`` ended in a TypeError traceback: each is refused by name, as stage 2 refuses its unknown keys."""
    data = write_toy(tmp_path / "toy.hdf5", episodes=12)
    for section, extra, name in (("relabel", {"normalise": "standard"}, "relabel.normalise"),
                                 ("labels", {"heldout": 0.5}, "labels.heldout"), ("model", {"stpes": 5}, "model.stpes"),
                                 ("teacher", {"segment_lenght": 5}, "teacher.segment_lenght"),
                                 ("obs", {"normalise": False}, "obs.normalise"), ("algo", {"name": "iql"}, "algo")):
        with pytest.raises(ValueError, match=rf"reward_model config: unknown key\(s\) {name}\b"):
            run(config(data, tmp_path / "r", **{section: extra}), tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_command_line_refuses_an_unknown_key_in_one_line_and_help_lists_no_config_groups(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    data = write_toy(tmp_path / "toy.hdf5", episodes=12)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-m", "robopretrain.reward_model", f"data.path={data}", "obs.low_dim=[x]",
                           "+model.stpes=5", f"output_dir={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'h'}"],
                          cwd=repo, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: reward_model config: unknown key(s) model.stpes; valid keys: "
                                                   "model: batch_size, ensemble, hidden, lr, steps"), lines
    shown = subprocess.run([sys.executable, "-m", "robopretrain.reward_model", "--help"], cwd=repo,
                           capture_output=True, text=True, timeout=120, env=env)
    assert shown.returncode == 0 and "teacher:" in shown.stdout and "segment_length" in shown.stdout
    assert "Configuration groups" not in shown.stdout and "algo:" not in shown.stdout, shown.stdout


def test_a_relabelled_copy_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    """relabel.output = the input file (and an unknown relabel.normalize, an output folder) was refused only after
    the ensemble had been trained, throwing the work away: now at start-up."""
    import robopretrain.reward_model as rm

    def trained(*args, **kwargs):
        raise AssertionError("the ensemble was trained before the relabelling settings were checked")

    monkeypatch.setattr(rm, "train_ensemble", trained)
    data = write_toy(tmp_path / "toy.hdf5", episodes=12)
    (tmp_path / "folder").mkdir()
    for relabel_cfg, message in (({"output": str(data)}, r"relabel.output=.*toy.hdf5 is the input file \(data.path\)"),
                                 ({"output": str(tmp_path / "folder")}, r"relabel.output=.*folder is a folder"),
                                 ({"normalize": "zscore"}, r"relabel.normalize='zscore'; expected one of")):
        with pytest.raises(ValueError, match=message):
            run(config(data, tmp_path / "r", relabel=relabel_cfg), tmp_path / "r")
    with h5py.File(data) as f:  # the input is untouched
        assert "rewards" in f["data/demo_0"]


def test_skip_short_demos_leaves_a_one_step_demo_out_as_stage_2_does(tmp_path, caplog):
    """A file with a 1-step demo was refused with advice (data.skip_short_demos=true) that the reward model ignored.
    Now the setting leaves the demo out of labels and training (logged) and the relabelled copy keeps it as stored;
    without it the file is refused, the message naming the setting."""
    import logging

    from robopretrain.data.hdf5 import DatasetError

    data = one_step_last_demo(write_toy(tmp_path / "toy.hdf5", episodes=12))
    with h5py.File(data) as f:
        before = {k: f[f"data/demo_11/{k}"][:] for k in ("rewards", "actions", "obs/x")}
    with pytest.raises(DatasetError, match=r"demo_11: episode has 1 step.*data.skip_short_demos=true \(stages 2 and 3, "
                                           r"robopretrain.reward_model\)"):
        run(config(data, tmp_path / "refused", model={"steps": 5}), tmp_path / "refused")
    with caplog.at_level(logging.WARNING):
        cfg = config(data, tmp_path / "s", teacher={"num_pairs": 40}, model={"steps": 5})
        cfg.data.skip_short_demos = True
        report = run(cfg, tmp_path / "s")
    assert "1 demo(s) of fewer than 2 steps left out (data.skip_short_demos=true): demo_11" in caplog.text
    assert "demo_11" not in (tmp_path / "s" / "labels.csv").read_text()
    with h5py.File(report["relabelled"]) as f, h5py.File(data) as g:
        for key, stored in before.items():  # the skipped demo keeps its original content
            np.testing.assert_array_equal(f[f"data/demo_11/{key}"][:], stored)
        assert not np.array_equal(f["data/demo_0/rewards"][:], g["data/demo_0/rewards"][:])
    write_labels(tmp_path / "human.csv", [PreferenceLabel("demo_0", 0, "demo_11", 0, 1, 1.0),
                                          *[PreferenceLabel(f"demo_{i}", 0, f"demo_{i + 1}", 0, 1, 1.0)
                                            for i in range(10)]])
    cfg = config(data, tmp_path / "h", labels={"path": str(tmp_path / "human.csv")})
    cfg.data.skip_short_demos = True
    with pytest.raises(ValueError, match=r"human.csv: line 2: demo 'demo_11' is not in the selected data \(its "
                                         r"demos: demo_0, demo_1, .*, \.\.\. \(\d+ in all\)\)$"):
        run(cfg, tmp_path / "h")
    # a demo given by its number: the name it means is suggested
    write_labels(tmp_path / "numbers.csv", [PreferenceLabel("3", 0, "demo_4", 0, 1, 1.0)])
    cfg = config(data, tmp_path / "n", labels={"path": str(tmp_path / "numbers.csv")})
    cfg.data.skip_short_demos = True
    with pytest.raises(ValueError, match=r"demo '3' is not in the selected data \(demos are named like 'demo_0': did "
                                         r"you mean 'demo_3'\?\)$"):
        run(cfg, tmp_path / "n")


def test_labels_that_are_mostly_ties_are_warned_about_with_what_decides_more(tmp_path, caplog):
    """The scripted teacher on sparse-success data (a reward only at a success's last step) made ~90% ties with no
    word (all ties is refused): now a warning with the counts and, from how the teacher labels pairs, what to change.
    Human labels that are mostly ties are warned about too; dense rewards with few ties are not."""
    import logging

    from robopretrain.reward_model import teacher_label

    sparse = write_toy(tmp_path / "sparse.hdf5", episodes=12)
    with h5py.File(sparse, "r+") as f:
        for i in range(12):
            r = np.zeros(12)
            r[-1] = float(i % 2 == 0)  # successes end with reward 1, failures never get one
            f[f"data/demo_{i}/rewards"][:] = r
    small = {"model": {"steps": 5}, "relabel": {"enabled": False}}
    with caplog.at_level(logging.WARNING):
        report = run(config(sparse, tmp_path / "t", teacher={"num_pairs": 200}, **small), tmp_path / "t")
    ties = report["ties"]
    assert ties > 100 and ties == sum(lab.label == 0.5 for lab in read_labels(tmp_path / "t" / "labels.csv"))
    warned = [r.getMessage() for r in caplog.records if "are ties" in r.getMessage()]
    assert len(warned) == 1 and f"{ties} of 200 labels are ties (0.5)" in warned[0]
    assert "only 6 of the 144 selected steps have a non-zero reward" in warned[0]
    for advice in ("teacher.segment_length", "median length is 12 steps", "dense reward", "labels.path"):
        assert advice in warned[0], advice
    assert teacher_label(0.0, 0.0) == 0.5  # (the rule the advice describes: equal sums tie)

    caplog.clear()
    human = [PreferenceLabel(f"demo_{i}", 0, f"demo_{i + 1}", 0, 4, 0.5 if i < 7 else 1.0) for i in range(10)]
    write_labels(tmp_path / "human.csv", human)
    with caplog.at_level(logging.WARNING):
        run(config(sparse, tmp_path / "h", labels={"path": str(tmp_path / "human.csv"), "held_out": 0.0}, **small),
            tmp_path / "h")
    assert "human.csv: 7 of 10 labels are ties (0.5)" in caplog.text and "label more pairs" in caplog.text

    caplog.clear()
    dense = write_toy(tmp_path / "dense.hdf5", episodes=12)
    with caplog.at_level(logging.WARNING):
        report = run(config(dense, tmp_path / "d", teacher={"num_pairs": 200}, **small), tmp_path / "d")
    assert report["ties"] < 20 and "are ties" not in caplog.text

    zero = write_toy(tmp_path / "zero.hdf5", episodes=12)  # all rewards 0: no setting of the teacher decides a pair
    with h5py.File(zero, "r+") as f:
        for i in range(12):
            f[f"data/demo_{i}/rewards"][:] = 0.0
    with pytest.raises(ValueError, match=r"every one of the 144 selected steps has reward 0, so the scripted teacher "
                                         r".* ties every pair whatever its settings: write rewards that mark success"):
        run(config(zero, tmp_path / "z", teacher={"num_pairs": 50}, **small), tmp_path / "z")


def test_a_run_folder_holding_a_finished_run_with_other_data_or_labels_is_refused(tmp_path, caplog):
    """The default run folder does not depend on the data: a second run on another file silently replaced the
    first's relabelled copy, model and report and left its teacher labels.csv beside a report naming a human label
    file. Now a finished run with other data, labels or settings is refused (one line naming what changed, as
    stage 2 refuses to resume); resume=false starts fresh and removes the earlier run's files; the same run again
    replaces its own; an input that is one of the files to be replaced is refused."""
    import logging

    first_data = write_toy(tmp_path / "first.hdf5", episodes=12)
    second_data = write_toy(tmp_path / "second.hdf5", episodes=12, seed=1)
    folder = tmp_path / "run"
    small = {"model": {"steps": 5}}
    run(config(first_data, folder, teacher={"num_pairs": 40}, **small), folder)
    before = {name: (folder / name).read_bytes() for name in RUN_FILES}
    write_labels(tmp_path / "human.csv", [PreferenceLabel(f"demo_{i}", 0, f"demo_{i + 1}", 2, 4, float(i % 2))
                                          for i in range(10)])
    human = config(second_data, folder, labels={"path": str(tmp_path / "human.csv")}, **small)
    with pytest.raises(ValueError) as refused:
        run(human, folder)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{folder}: holds a finished run with other settings or data (")
    assert f"data: {first_data} -> {second_data}" in message and f"labels: none -> {tmp_path / 'human.csv'}" in message
    assert "teacher." not in message  # human labels: the teacher's settings are not read, not a difference
    assert message.endswith("to start fresh, set resume=false (the earlier run's files are then removed) or choose "
                            "another output_dir")
    assert {name: (folder / name).read_bytes() for name in RUN_FILES} == before  # the earlier run is untouched
    with pytest.raises(ValueError, match=r"\(relabel.normalize: none -> minmax\)"):  # settings count too
        run(config(first_data, folder, teacher={"num_pairs": 40}, relabel={"normalize": "minmax"}, **small), folder)

    human.resume = False
    with caplog.at_level(logging.WARNING):
        report = run(human, folder)
    assert "removed the earlier run's labels.csv, reward_model.pt, relabelled.hdf5, report.json" in caplog.text
    assert not (folder / "labels.csv").exists()  # the teacher's labels of the first run are gone
    assert report["labels"] == str(tmp_path / "human.csv") and report["data"] == str(second_data)
    assert json.loads((folder / "report.json").read_text())["data"] == str(second_data)
    human.resume = True
    run(human, folder)  # the same run again: replaces its own files
    human.relabel.enabled = False
    run(human, folder)  # not relabelling: no other run (the model is the same); its copy is removed with the rest
    assert not (folder / "relabelled.hdf5").exists() and (folder / "report.json").exists()

    (folder / "report.json").unlink()  # an unfinished run's files (no report): replaced, whatever its settings
    run(config(first_data, folder, teacher={"num_pairs": 40}, relabel={"enabled": False}, **small), folder)
    teacher_labels = config(first_data, folder, labels={"path": str(folder / "labels.csv")}, **small)
    teacher_labels.resume = False  # its own labels.csv as the next run's human labels: removed by resume=false
    with pytest.raises(ValueError, match=r"labels.path=.*labels.csv is a file of the earlier run in this run folder"):
        run(teacher_labels, folder)
    assert (folder / "labels.csv").exists()


def test_a_refused_setting_with_resume_false_leaves_the_earlier_run_in_place(tmp_path):
    """resume=false removed the earlier run's files, then refused an out-of-range model or labels setting (a new
    user's finding): every refusal now comes first. A negative held_out or teacher.tie_margin is refused by name
    (a negative margin labelled every pair of equal returns "a preferred")."""
    data = write_toy(tmp_path / "toy.hdf5", episodes=12)
    folder = tmp_path / "run"
    run(config(data, folder, teacher={"num_pairs": 40}, model={"steps": 5}), folder)
    before = {name: (folder / name).read_bytes() for name in RUN_FILES}
    for bad, said in (({"model": {"ensemble": 0}}, r"model.ensemble=0: ensemble, steps"),
                      ({"labels": {"held_out": -0.2}}, r"labels.held_out=-0.2: the fraction .* in \[0, 1\)"),
                      ({"teacher": {"tie_margin": -1.0}}, r"teacher.tie_margin=-1: must be >= 0")):
        cfg = config(data, folder, **{"teacher": {"num_pairs": 40}, "model": {"steps": 5}, **bad})
        cfg.resume = False
        with pytest.raises(ValueError, match=said):
            run(cfg, folder)
        assert {name: (folder / name).read_bytes() for name in RUN_FILES} == before
    from robopretrain.reward_model import held_out_split

    labels = [PreferenceLabel("demo_0", 0, f"demo_{i}", 0, 4, 1.0) for i in range(1, 5)]
    for odd in (float("nan"), float("inf")):  # refused by the range check, not by round() (a review)
        with pytest.raises(ValueError, match=r"labels.held_out=(nan|inf): the fraction"):
            held_out_split(labels, odd, np.random.default_rng(0))


def test_relabelling_a_file_with_tasks_outside_the_models_one_hot_is_refused_before_training(tmp_path, caplog):
    """Trained on one task of a two-task file (data.tasks, obs.num_tasks=1), the relabelling of every demo reached
    the other task's slot 3 after training and died with torch's traceback (a new user's finding): refused at the
    start. In range, the other task's demos are scored with a warning (the model never saw them)."""
    import logging

    data = write_toy(tmp_path / "toy.hdf5", episodes=8)
    with h5py.File(data, "r+") as f:
        for i in range(4, 8):
            f[f"data/demo_{i}"].attrs["task"], f[f"data/demo_{i}"].attrs["task_id"] = "other", 3

    def toy_only(out: Path, num_tasks: int):
        cfg = config(data, out, teacher={"num_pairs": 30}, model={"steps": 3}, obs={"num_tasks": num_tasks})
        cfg.data.tasks = ["toy"]
        return cfg

    with pytest.raises(ValueError, match=r"toy.hdf5: relabel scores every demo of the file, and task\(s\) 'other' "
                                         r"\(slot 3\) lie outside the model's task one-hot of 1 \(obs.num_tasks\)"):
        run(toy_only(tmp_path / "a", 1), tmp_path / "a")
    assert not (tmp_path / "a" / "labels.csv").exists()
    with caplog.at_level(logging.WARNING):
        report = run(toy_only(tmp_path / "b", 4), tmp_path / "b")
    assert "also those of task(s) other the model is not trained on" in caplog.text
    from types import SimpleNamespace

    from robopretrain.reward_model import check_relabelled_tasks

    caplog.clear()  # a demo of a trained task left out (a mask) is no other task (mutation testing)
    demos = [SimpleNamespace(name=f"demo_{i}", num_samples=12, task="toy", task_id=0) for i in range(3)]
    with caplog.at_level(logging.WARNING):
        check_relabelled_tasks(SimpleNamespace(demos=demos), ["demo_0", "demo_1"], ObsSpec(low_dim=(("x", 1),)), "f")
    assert "not trained on" not in caplog.text
    with h5py.File(report["relabelled"], "r") as f:
        assert f["data/demo_5/rewards"].shape == (12,)


def test_a_done_inside_a_demo_is_warned_about_as_stage_2_does(tmp_path, caplog):
    """dones=1 before a demo's last step: stage 2 warned, the reward model said nothing about the same file."""
    import logging

    data = write_toy(tmp_path / "toy.hdf5", episodes=12)
    with h5py.File(data, "r+") as f:
        f["data/demo_3/dones"][4] = 1
    with caplog.at_level(logging.WARNING):
        run(config(data, tmp_path / "r", teacher={"num_pairs": 40}, model={"steps": 5}), tmp_path / "r")
    assert "dones=1 before the last step at 1 step(s) of 1 demo(s) (data/demo_3 step 4 of" in caplog.text


def test_the_normalisation_maps_any_range_and_labels_go_to_a_new_folder(tmp_path):
    """relabel.normalize's affine map on rewards whose range is not 1 (a file's range happened to be 1, so a
    mutant multiplying by it passed); write_labels makes the folders it needs."""
    from robopretrain.reward_model import normalization_affine

    r = np.array([-3.0, 1.0, 5.0])
    offset, scale = normalization_affine(r, "minmax")
    np.testing.assert_allclose((r - offset) / scale, [0.0, 0.5, 1.0])
    offset, scale = normalization_affine(r, "standard")
    z = (r - offset) / scale
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-6
    assert normalization_affine(r, "none") == (0.0, 1.0)
    for normalize in ("minmax", "standard"):  # constant: zeros, not NaN, and no 1e8 gain on an online reward
        assert normalization_affine(np.full(4, 2.0), normalize) == (2.0, 1.0)
    assert normalization_affine(np.array([2.0, 2.0 + 1e-7]), "minmax") == (2.0, pytest.approx(1e-7))
    with pytest.raises(ValueError, match=r"relabel.normalize='zscore'"):
        normalization_affine(r, "zscore")
    out = write_labels(tmp_path / "a" / "b" / "labels.csv", [PreferenceLabel("demo_0", 0, "demo_1", 2, 3, 1.0)])
    assert read_labels(out) == [PreferenceLabel("demo_0", 0, "demo_1", 2, 3, 1.0)]


def test_a_second_run_writing_the_same_folder_is_refused_and_changes_nothing(tmp_path):
    """README: one process writes a run folder at a time. Two reward-model runs on one output_dir both ran to the end;
    the second replaced labels.csv while the first trained, leaving a report and model of other labels (a helper's
    session)."""
    from robopretrain.files import RunFolderBusy, run_folder_lock

    data = write_toy(tmp_path / "toy.hdf5")
    out = tmp_path / "rm"
    small = {"teacher": {"num_pairs": 20}, "model": {"steps": 5}, "relabel": {"enabled": False}}
    run(config(data, out, **small), out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with run_folder_lock(out):  # another process's run, still writing
        with pytest.raises(RunFolderBusy, match="another process is writing this run folder now"):
            run(config(data, out, resume=False, **{**small, "teacher": {"num_pairs": 10}}), out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".writer.lock"} == \
        {k: v for k, v in before.items() if k != ".writer.lock"}
