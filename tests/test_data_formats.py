"""Datasets of other toolkits (D4RL-style HDF5, OGBench .npz, Minari, LeRobot v3) converted to the robomimic contract:
episode boundaries, termination vs truncation, success, next observations, images and actions carried exactly; the
converted copy cached and reused; ``python -m robopretrain.data.convert`` and ``inspect``; stage 2 trains on each
format given as ``data.path`` with sizes and keys from the file."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import _formats as F
from _stages import stage2_config
from robopretrain.checkpoint import load_agent
from robopretrain.data.convert import as_robomimic, convert, detect_format, main as convert_main, source_record_path
from robopretrain.data.hdf5 import DatasetError
from robopretrain.data.episodes import ConversionError, image_layout, is_image, to_uint8_hwc
from robopretrain.data.frames import index_dir
from robopretrain.data.hdf5 import read_info
from robopretrain.data.inspect import inspect
from robopretrain.train import run


def demos(path: Path) -> list[dict]:
    """Every demo of a robomimic file as plain arrays and its decoded ep_meta."""
    out = []
    with h5py.File(path, "r") as f:
        for name in sorted(f["data"], key=lambda n: int(n.split("_")[1])):  # a skipped episode leaves a gap
            g = f[f"data/{name}"]
            out.append({"obs": {k: g["obs"][k][()] for k in g["obs"]},
                        "next": {k: g["next_obs"][k][()] for k in g["obs"]},
                        "actions": g["actions"][()], "dones": g["dones"][()],
                        "rewards": g["rewards"][()] if "rewards" in g else None,  # None: a reward-free source
                        "task": g.attrs["task"], "task_id": int(g.attrs["task_id"]),
                        "meta": json.loads(g.attrs["ep_meta"])})
    return out


def env_args(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f["data"].attrs["env_args"])


# --------------------------------------------------------------------------- D4RL


def test_d4rl_terminal_keeps_its_last_row_a_timeout_drops_it(tmp_path):
    out = convert(F.write_d4rl(tmp_path / "hopper.hdf5"), tmp_path / "out.hdf5")
    d = demos(out)
    assert [len(x["actions"]) for x in d] == [4, 4, 2]  # 4 (terminal), 5 - 1 (timeout), 3 - 1 (file ends)
    first = d[0]["obs"]["observations"][:, 0]
    np.testing.assert_array_equal(first, [0, 1, 2, 3])
    np.testing.assert_array_equal(d[0]["next"]["observations"][:, 0], [1, 2, 3, 3])  # terminal: own obs stands in
    np.testing.assert_array_equal(d[1]["obs"]["observations"][:, 0], [4, 5, 6, 7])
    np.testing.assert_array_equal(d[1]["next"]["observations"][:, 0], [5, 6, 7, 8])
    np.testing.assert_array_equal(d[1]["rewards"], [4, 5, 6, 7])
    assert [x["dones"].tolist() for x in d] == [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0]]
    assert [(x["meta"]["terminated"], x["meta"]["truncated"]) for x in d] == [(True, False), (False, True),
                                                                               (False, True)]
    assert all("success" not in x["meta"] for x in d)  # the file does not record it


def test_a_one_step_episode_is_skipped_without_renumbering_the_demos_after_it(tmp_path, caplog):
    """Demo names are what human preference labels name: a skipped 1-step episode shifted every later demo by one
    (demo_1 was source episode 2), silently; the warning now names the episode and that it was a success."""
    src = F.write_d4rl(tmp_path / "h.hdf5", lengths=(1, 4, 5), ends=("terminal", "terminal", "timeout"),
                       next_obs=True, success=True)
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.episodes"):
        out = convert(src, tmp_path / "out.hdf5")
    with h5py.File(out, "r") as f:
        assert sorted(f["data"]) == ["demo_1", "demo_2"]
        assert [n.decode() for n in f["mask/train"][()]] == ["demo_1", "demo_2"]
        np.testing.assert_array_equal(f["data/demo_1/obs/observations"][:, 0], [1, 2, 3, 4])  # source episode 1
    assert "1 episode(s) with fewer than 2 steps skipped (source episode 0 (a success);" in caplog.text
    assert read_info(out).demo("demo_2").num_samples == 5
    assert convert_main([str(src), str(tmp_path / "cli.hdf5")]) == 0  # its summary line read demo_0


def test_a_lerobot_episode_without_frames_is_named_as_skipped_and_keeps_the_later_names(tmp_path, caplog):
    """An episode of no frames was dropped silently by the LeRobot reader, so the writer renumbered every later demo
    (demo_1 was source episode 2) without the warning a 1-frame episode gets (a new user's finding)."""
    src = F.write_lerobot(tmp_path / "lr", lengths=(6, 0, 5), done_last=(True, False, False), camera="image",
                          size=8)
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.episodes"):
        out = convert(src, tmp_path / "out.hdf5")
    assert [d["meta"]["source_episode"] for d in demos(out)] == [0, 2]
    assert read_info(out).demo("demo_2").num_samples == 5 - 1  # the last frame, without a next one, dropped
    assert "1 episode(s) with fewer than 2 steps skipped (source episode 1;" in caplog.text


def test_a_d4rl_file_without_timeouts_ends_episodes_where_next_observations_shows_a_reset(tmp_path, caplog):
    """Two episodes, the first cut by a time limit the file does not mark: read as one, its returns-to-go took the
    second episode's success; next_observations shows the reset. Next observations stored another way (every row
    differs) are not read as resets."""
    obs = F.obs_rows(8, 5, 0)
    nxt = np.concatenate([obs[1:], obs[-1:]])
    nxt[3] = obs[3] + 0.5  # row 3 is episode 1's last (time-out): its next observation is not row 4's
    path = tmp_path / "nt.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"], f["next_observations"] = obs, nxt
        f["actions"] = np.zeros((8, 2), np.float32)
        f["rewards"] = np.r_[np.zeros(7), 1.0].astype(np.float32)
        f["terminals"] = np.r_[np.zeros(7, bool), True]
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_d4rl"):
        d = demos(convert(path, tmp_path / "nt_conv.hdf5"))
    assert [len(x["actions"]) for x in d] == [4, 4] and "no timeouts; 1 row(s) whose next_observations" in caplog.text
    assert [(x["meta"]["terminated"], x["meta"]["truncated"]) for x in d] == [(False, True), (True, False)]
    np.testing.assert_array_equal(d[0]["next"]["observations"][-1], obs[3] + 0.5)
    with h5py.File(path, "r+") as f:
        f["next_observations"][...] = obs + 1000  # stored otherwise: no row matches
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_d4rl"):
        d = demos(convert(path, tmp_path / "other.hdf5"))
    assert [len(x["actions"]) for x in d] == [8] and "not read as episode ends" in caplog.text
    nxt = np.concatenate([obs[1:], obs[-1:]])
    for rows, read in (([1, 3, 5], True), ([1, 3, 5, 6], False)):  # of 7 row pairs: 3 resets; 4, "more than half"
        with h5py.File(path, "r+") as f:
            f["next_observations"][...] = nxt
            f["next_observations"][rows] = obs[rows] + 0.5
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_d4rl"):
            d = demos(convert(path, tmp_path / f"half{len(rows)}.hdf5"))
        assert [len(x["actions"]) for x in d] == ([2, 2, 2, 2] if read else [8]), rows
        assert ("not read as episode ends" in caplog.text) == (not read)
    # timeouts of all zeros (a writer that never set them) glued the episodes: the resets are read the same way
    with h5py.File(path, "r+") as f:
        f["next_observations"][...] = nxt
        f["next_observations"][3] = obs[3] + 0.5
        f["timeouts"] = np.zeros(8, bool)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_d4rl"):
        d = demos(convert(path, tmp_path / "zero_timeouts.hdf5"))
    assert [len(x["actions"]) for x in d] == [4, 4] and "its timeouts miss resets; 1 row(s)" in caplog.text
    with h5py.File(path, "r+") as f:
        f["timeouts"][3] = True  # marked: nothing to say
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_d4rl"):
        assert [len(x["actions"]) for x in demos(convert(path, tmp_path / "marked.hdf5"))] == [4, 4]
    assert "next_observations" not in caplog.text


def test_files_of_no_format_are_named_as_such_not_read_as_d4rl(tmp_path):
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["foo"] = np.zeros(3)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    with h5py.File(tmp_path / "cut.hdf5", "w") as f:
        f["observations"], f["actions"] = np.zeros((400, 50)), np.zeros((400, 2))
    data = (tmp_path / "cut.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(data[:2048])  # an HDF5 signature, its datasets cut off
    for name in ("other.hdf5", "garbage.npz", "cut.hdf5"):
        with pytest.raises(ConversionError, match="format not recognised"):
            detect_format(tmp_path / name)



def test_a_d4rl_file_without_timeouts_or_next_observations_is_read_with_a_warning(tmp_path, caplog):
    """D4RL's v0 layout: episodes end at terminations only; said, since a time limit the file does not mark makes
    one episode of several."""
    src = F.write_d4rl(tmp_path / "v0.hdf5", lengths=(4, 5), ends=("timeout", "terminal"))
    with h5py.File(src, "r+") as f:
        del f["timeouts"]
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_d4rl"):
        d = demos(convert(src, tmp_path / "v0_conv.hdf5"))
    assert [len(x["actions"]) for x in d] == [9]
    assert "no timeouts and no next_observations: an episode ends only at a terminals row (1 of 9 rows)" in caplog.text


def test_a_d4rl_style_npz_is_read_as_d4rl_not_as_ogbench(tmp_path, caplog):
    """The same arrays in an .npz: with timeouts detected as D4RL and converted exactly as the HDF5 file; without,
    read as OGBench's layout (its terminals rows are final observations) with a warning when it has rewards but no
    masks, and format d4rl reads it as D4RL."""
    hdf5 = F.write_d4rl(tmp_path / "hopper.hdf5")
    with h5py.File(hdf5, "r") as f:
        arrays = {k: f[k][()] for k in f}
    np.savez(tmp_path / "hopper.npz", **arrays)
    assert detect_format(tmp_path / "hopper.npz") == "d4rl"
    want, got = demos(convert(hdf5, tmp_path / "h.hdf5")), demos(convert(tmp_path / "hopper.npz", tmp_path / "n.hdf5"))
    assert len(got) == len(want) == 3
    for a, b in zip(want, got):
        for k in ("actions", "dones", "rewards"):
            np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a["next"]["observations"], b["next"]["observations"])
        assert a["meta"]["terminated"] == b["meta"]["terminated"]
    del arrays["timeouts"]
    np.savez(tmp_path / "nt.npz", **arrays)
    assert detect_format(tmp_path / "nt.npz") == "ogbench"
    for name in ("HOPPER.NPZ", "NT.Npz"):  # an upper-case extension was "format not recognised" (a user's finding)
        os.link(tmp_path / name.lower(), tmp_path / name)
        assert detect_format(tmp_path / name) == detect_format(tmp_path / name.lower())
        assert [len(d["actions"]) for d in demos(convert(tmp_path / name, tmp_path / f"{name}.hdf5", fmt="d4rl"))] \
            == [len(d["actions"]) for d in demos(convert(tmp_path / name.lower(), tmp_path / f"{name}.l.hdf5",
                                                         fmt="d4rl"))]
    with caplog.at_level(logging.WARNING):
        as_ogbench = demos(convert(tmp_path / "nt.npz", tmp_path / "o.hdf5"))
    assert "rewards without masks: read as OGBench's layout" in caplog.text and "data.format=d4rl" in caplog.text
    assert sum(x["dones"].sum() for x in as_ogbench) == 0  # OGBench: the terminals row is a final observation
    as_d4rl = demos(convert(tmp_path / "nt.npz", tmp_path / "d.hdf5", fmt="d4rl"))
    assert [x["dones"].tolist()[-1] for x in as_d4rl][0] == 1 and as_d4rl[0]["rewards"].tolist() == [0, 1, 2, 3]
    as_og = demos(convert(tmp_path / "hopper.npz", tmp_path / "x.hdf5", fmt="ogbench"))  # either way round
    assert sum(x["dones"].sum() for x in as_og) == 0
    with pytest.raises(ConversionError, match="detected format d4rl, not minari"):
        convert(tmp_path / "hopper.npz", tmp_path / "y.hdf5", fmt="minari")
    np.savez(tmp_path / "pickled.npz", **{**arrays, "infos/success": np.array([None] * len(arrays["actions"]))})
    with pytest.raises(ConversionError, match=r"pickled.npz: array 'infos/success' cannot be read"):
        convert(tmp_path / "pickled.npz", tmp_path / "p.hdf5", fmt="d4rl")
    np.savez(tmp_path / "scalar.npz", **{**arrays, "rewards": np.float32(1.0), "timeouts": arrays["terminals"]})
    with pytest.raises(ConversionError, match=r"scalar.npz: \['rewards'\] hold one value, not one row per step"):
        convert(tmp_path / "scalar.npz", tmp_path / "s.hdf5", fmt="d4rl")


def test_d4rl_next_observations_and_success_from_the_file(tmp_path):
    out = convert(F.write_d4rl(tmp_path / "h.hdf5", next_obs=True, success=True), tmp_path / "out.hdf5")
    d = demos(out)
    assert [len(x["actions"]) for x in d] == [4, 5, 3]  # every row kept: the file has the next observations
    np.testing.assert_array_equal(d[1]["next"]["observations"][:, 0], np.arange(4, 9) + 1000)
    assert [x["meta"]["success"] for x in d] == [True, False, False]
    with h5py.File(F.write_d4rl(tmp_path / "flat.hdf5"), "r+") as f:  # a 1-D action space stored as (N,)
        first = f["actions"][()][:, 0]
        del f["actions"]
        f["actions"] = first
    flat = demos(convert(tmp_path / "flat.hdf5", tmp_path / "flat_conv.hdf5"))
    assert flat[0]["actions"].shape == (4, 1) and np.allclose(flat[0]["actions"][:, 0], first[:4], atol=1e-6)
    other = convert(F.write_d4rl(tmp_path / "g.hdf5", success=True, success_key="is_success"), tmp_path / "g2.hdf5")
    assert [x["meta"]["success"] for x in demos(other)] == [True, False, False]  # gymnasium-robotics' key


# --------------------------------------------------------------------------- OGBench


def test_ogbench_compact_rows_and_masks(tmp_path):
    d = demos(convert(F.write_ogbench(tmp_path / "cube.npz"), tmp_path / "a.hdf5"))
    assert [len(x["actions"]) for x in d] == [4, 4]  # the terminals row is only the final observation
    np.testing.assert_array_equal(d[1]["obs"]["observations"][:, 0], [5, 6, 7, 8])
    np.testing.assert_array_equal(d[1]["next"]["observations"][:, 0], [6, 7, 8, 9])
    assert list(d[0]["obs"]) == ["observations"]  # qpos is not an observation
    assert all(x["meta"]["truncated"] and "success" not in x["meta"] for x in d)
    # no rewards, no masks (goal-conditioned data): written reward-free, not as zeros RL would take for failures
    assert read_info(tmp_path / "a.hdf5").unrewarded() == ["demo_0", "demo_1"]
    m = demos(convert(F.write_ogbench(tmp_path / "single.npz", masks=True), tmp_path / "b.hdf5"))
    assert read_info(tmp_path / "b.hdf5").unrewarded() == []
    assert [x["dones"].tolist() for x in m] == [[0, 0, 1, 0], [0, 0, 0, 0]]  # 1 - masks, not split
    np.testing.assert_array_equal(m[0]["rewards"], [0, 0, 1, 0])  # the sparse success contract, not OGBench's -1/0
    np.testing.assert_array_equal(m[1]["rewards"], [0, 0, 0, 0])
    assert [x["meta"]["success"] for x in m] == [True, False]


def test_ogbench_compact_file_cut_mid_trajectory_has_no_self_loop(tmp_path, caplog):
    """A compact file sliced before its last terminals row: the last row is the final observation of an
    unfinished trajectory, not a transition whose next observation is itself."""
    src = F.write_ogbench(tmp_path / "cube.npz")
    z = dict(np.load(src))
    np.savez(tmp_path / "cut.npz", **{k: v[:8] for k, v in z.items()})  # trajectory 1 cut after 3 of its 5 rows
    with caplog.at_level("WARNING"):
        d = demos(convert(tmp_path / "cut.npz", tmp_path / "c.hdf5"))
    assert [len(x["actions"]) for x in d] == [4, 2] and "cut mid-trajectory" in caplog.text
    np.testing.assert_array_equal(d[1]["obs"]["observations"][:, 0], [5, 6])
    np.testing.assert_array_equal(d[1]["next"]["observations"][:, 0], [6, 7])
    assert d[1]["meta"]["truncated"] and d[1]["dones"].tolist() == [0, 0]
    np.savez(tmp_path / "empty.npz", **{k: v[:0] for k, v in z.items()})  # no rows: the format's error, not IndexError
    with pytest.raises(ConversionError, match="no episode with at least 2 steps"):
        convert(tmp_path / "empty.npz", tmp_path / "e.hdf5")



def test_ogbench_regular_layout_source_rows_and_a_done_last_transition(tmp_path, caplog):
    """The regular layout (next_observations saved): every row a transition, terminals on each trajectory's last
    one; each demo names its source rows; a task done on a trajectory's last transition terminates it; a
    single-task file (rewards and masks) is not warned about; a pickled array is refused, not unpickled."""
    n = 8
    obs = F.obs_rows(n, 3, 0)
    masks = np.ones(n, np.float32)
    masks[3] = 0.0  # trajectory 0 (rows 0-3) done on its last transition
    terminals = np.zeros(n, np.float32)
    terminals[[3, 7]] = 1.0
    np.savez(tmp_path / "reg.npz", observations=obs, next_observations=obs + 100, actions=np.zeros((n, 2), np.float32),
             terminals=terminals, masks=masks, rewards=masks - 1)
    with caplog.at_level(logging.WARNING):
        d = demos(convert(tmp_path / "reg.npz", tmp_path / "reg.hdf5"))
    assert "rewards without masks" not in caplog.text
    assert [len(x["actions"]) for x in d] == [4, 4]
    np.testing.assert_array_equal(d[1]["next"]["observations"][:, 0], [104, 105, 106, 107])
    assert [(x["meta"]["source_episode"], x["meta"]["source_rows"]) for x in d] == [(0, [0, 4]), (1, [4, 8])]
    assert [(x["meta"]["terminated"], x["meta"]["truncated"]) for x in d] == [(True, False), (False, True)]
    compact = demos(convert(F.write_ogbench(tmp_path / "c.npz"), tmp_path / "c.hdf5"))
    assert [(x["meta"]["source_episode"], x["meta"]["source_rows"]) for x in compact] == [(0, [0, 4]), (1, [5, 9])]
    np.savez(tmp_path / "pickled.npz", observations=np.array([{"x": 1}] * n, dtype=object),
             actions=np.zeros((n, 2), np.float32), terminals=terminals)
    with pytest.raises(ConversionError, match="pickled.npz: not a readable .npz"):
        convert(tmp_path / "pickled.npz", tmp_path / "p.hdf5", fmt="ogbench")


# --------------------------------------------------------------------------- Minari


def test_minari_written_by_minari_round_trips(tmp_path):
    src = F.write_minari(tmp_path / "minari")
    assert detect_format(src) == detect_format(src / "data") == "minari"
    d = demos(convert(src, tmp_path / "m.hdf5"))
    assert [len(x["actions"]) for x in d] == [4, 5]
    assert sorted(d[0]["obs"]) == ["desired_goal", "observation"]
    np.testing.assert_array_equal(d[1]["obs"]["observation"][:, 0], np.arange(100, 105))
    np.testing.assert_array_equal(d[1]["next"]["observation"][:, 0], np.arange(101, 106))
    np.testing.assert_array_equal(d[1]["rewards"], np.arange(5) + 10)
    assert [x["dones"][-1] for x in d] == [1, 0]
    assert [(x["meta"]["truncated"], x["meta"]["success"]) for x in d] == [(False, True), (True, False)]
    assert d[0]["task"] == "test/reach-v0" and env_args(tmp_path / "m.hdf5")["env_name"] == "minari/test/reach-v0"
    fetch = F.write_minari(tmp_path / "minari2", success_key="is_success", dataset_id="test/fetch-v0")
    assert [x["meta"]["success"] for x in demos(convert(fetch, tmp_path / "f.hdf5"))] == [True, False]
    assert "action_normalization" not in env_args(tmp_path / "f.hdf5")  # Box(-1, 1): kept as they are


def test_minari_actions_are_rescaled_from_the_declared_action_space(tmp_path, caplog):
    """Box(-2, 2) with demos at 1.5: the data's min / max made 1.5 the agent's largest action (stage 3 could never
    command more); the declared space keeps the whole range. Data outside it fall back to the data's range."""
    wide = F.write_minari(tmp_path / "wide", action_bound=2.0, action=1.5)
    out = convert(wide, tmp_path / "w.hdf5")
    np.testing.assert_allclose(demos(out)[0]["actions"], 0.75)
    units = env_args(out)["action_normalization"]
    assert (units["low"], units["high"]) == ([-2.0, -2.0], [2.0, 2.0])
    over = F.write_minari(tmp_path / "over", action_bound=1.0, action=1.5, dataset_id="test/over-v0")
    with caplog.at_level(logging.WARNING):
        out = convert(over, tmp_path / "o.hdf5")
    assert "leave the declared action space" in caplog.text
    assert env_args(out)["action_normalization"]["high"] == [1.5, 1.5]


def test_discrete_actions_are_refused_from_minari_and_warned_about_from_a_file_without_a_space(tmp_path, caplog):
    """A Minari dataset of a Discrete action space was converted as one continuous action (indices 0..2 rescaled to
    [-1, 1]) and trained without a word; a D4RL file of integer actions likewise (its converted copy records its
    action units, so stage 2's check of index-like actions never ran): a new user's findings."""
    src = F.write_minari(tmp_path / "discrete", discrete=3, dataset_id="test/discrete-v0")
    with pytest.raises(ConversionError, match=r"action space Discrete\(3\): only Box \(continuous\)"):
        convert(src, tmp_path / "d.hdf5")
    n = 12
    indices = np.r_[np.arange(5) % 3, 3 + np.arange(7) % 2]  # episode 1: 0, 1, 2; episode 2: 3, 4 (gathered over both)
    F.write_d4rl(tmp_path / "int.hdf5", (5, 7), ("terminal", "timeout"), actions=indices)
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.action_units"):
        convert(tmp_path / "int.hdf5", tmp_path / "i.hdf5")
    assert "every action is a whole number (5 distinct values: 0, 1, 2, 3, 4)" in caplog.text
    caplog.clear()
    # continuous, outside [-1, 1]: no such warning
    F.write_d4rl(tmp_path / "cont.hdf5", (5, 7), ("terminal", "timeout"), actions=np.linspace(-3, 3, n))
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.action_units"):
        convert(tmp_path / "cont.hdf5", tmp_path / "c.hdf5")
    assert "whole number" not in caplog.text


def test_minari_jpeg_frames_are_warned_and_a_missing_metadata_entry_is_named(tmp_path, caplog):
    """minari records images as lossy JPEG by default and the converter said nothing; a metadata.json without
    minari_version failed as "minari cannot read this dataset ('minari_version')". A camera below minari's 32 x 32
    is stored exactly and is not warned about (a new user's finding: the warning was given for any camera)."""
    src = F.write_minari(tmp_path / "cam", image=True, image_side=32, dataset_id="test/cam-v0")
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_minari"):
        convert(src, tmp_path / "c.hdf5")
    jpeg = [r.getMessage() for r in caplog.records if "jpeg_encoding: true" in r.getMessage()]
    assert len(jpeg) == 1 and "(image)" in jpeg[0]  # once, naming the image part
    caplog.clear()
    small = F.write_minari(tmp_path / "small", image=True, image_side=16, dataset_id="test/small-v0")
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_minari"):
        convert(small, tmp_path / "s.hdf5")
    assert "jpeg" not in caplog.text
    assert [np.unique(d["obs"]["image"]).tolist() for d in demos(tmp_path / "s.hdf5")] == [[0], [40]]  # exact
    import gymnasium as gym

    from robopretrain.data.read_minari import jpeg_parts

    def cam(side):
        return gym.spaces.Box(0, 255, (side, side, 3), np.uint8)

    nested = gym.spaces.Dict({"top": cam(32), "small": cam(8), "arm": gym.spaces.Dict({"wrist": cam(40)}),
                              "pair": gym.spaces.Tuple((cam(32), gym.spaces.Box(-1, 1, (2,)))),
                              "depth": gym.spaces.Box(0, 1, (32, 32), np.float32)})
    assert sorted(jpeg_parts(nested)) == ["arm.wrist", "pair.0", "top"]  # the parts' names as converted
    assert jpeg_parts(cam(32)) == ["observations"] and jpeg_parts(cam(31)) == []
    caplog.clear()
    plain = F.write_minari(tmp_path / "plain")  # JPEG flag set too, but no image part: nothing to say
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.read_minari"):
        convert(plain, tmp_path / "p.hdf5")
    assert "jpeg" not in caplog.text
    meta = plain / "data" / "metadata.json"
    fields = json.loads(meta.read_text())
    del fields["minari_version"]
    meta.write_text(json.dumps(fields))
    with pytest.raises(ConversionError, match=r"metadata.json: has no 'minari_version' entry"):
        convert(plain, tmp_path / "q.hdf5", overwrite=True)


def test_a_text_part_is_left_out_with_a_warning_as_an_envs_is(tmp_path, caplog):
    """A Minari Dict observation with a Text part (BabyAI's mission) refused the whole conversion ("expected a numeric
    array per step, got <U7"), while an env's Text part is left out (a new user's finding)."""
    src = F.write_minari(tmp_path / "t", text=True, dataset_id="test/text-v0")
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.episodes"):
        out = convert(src, tmp_path / "t.hdf5")
    assert sorted(demos(out)[0]["obs"]) == ["desired_goal", "observation"]
    assert env_args(out)["dropped_parts"] == ["mission"]
    assert "obs 'mission': holds <U7 values, not numbers; part 'mission' is not written" in caplog.text
    from robopretrain.data.episodes import TextPartError, as_part

    with pytest.raises(TextPartError, match="holds object values, not numbers"):  # text as Python objects
        as_part(np.array(["go", "left"], dtype=object), "w")
    numbers = np.empty(2, dtype=object)  # numbers stored as objects (a None among them, ragged rows) are no text:
    numbers[:] = [np.float32(1.0), None]  # refused as before, not left out
    with pytest.raises(ConversionError, match="expected a numeric array per step, got object") as refused:
        as_part(numbers, "w")
    assert not isinstance(refused.value, TextPartError)


def test_what_minari_raises_while_reading_episodes_names_the_dataset(tmp_path, monkeypatch):
    """minari failing inside its storage (an Arrow dataset of per-step scalar infos: "invalid literal for int()")
    reached the user unnamed, and the convert command as a traceback (a new user's finding)."""
    import minari

    src = F.write_minari(tmp_path / "m")
    real = minari.MinariDataset.iterate_episodes

    def fails_on_the_second(self, *args, **kwargs):
        episodes = real(self, *args, **kwargs)
        yield next(episodes)
        raise ValueError("invalid literal for int() with base 10: b''")

    monkeypatch.setattr(minari.MinariDataset, "iterate_episodes", fails_on_the_second)
    with pytest.raises(ConversionError, match=rf"{src}: minari fails reading its episodes \(1 read; ValueError: "
                                              r"invalid literal"):
        convert(src, tmp_path / "m.hdf5")


# --------------------------------------------------------------------------- LeRobot v3


def test_lerobot_video_frames_actions_and_tasks(tmp_path):
    src = F.write_lerobot(tmp_path / "lr")
    out = convert(src, tmp_path / "l.hdf5")
    d = demos(out)
    assert [len(x["actions"]) for x in d] == [6, 4]  # episode 0 ends in next.done; episode 1's last frame dropped
    frames = [6, 5]
    for e, x in enumerate(d):
        start = sum(frames[:e])
        img, nxt = x["obs"][F.LEROBOT_CAM], x["next"][F.LEROBOT_CAM]
        assert img.dtype == np.uint8 and img.shape[1:] == (32, 32, 3)
        levels = [F.frame_level(start + t) for t in range(len(img))]
        np.testing.assert_allclose(img.mean((1, 2, 3)), levels, atol=4)  # the episode's own frames, in order
        assert abs(nxt[0].mean() - F.frame_level(start + 1)) < 4
        np.testing.assert_array_equal(x["obs"]["observation.state"][:, 0], np.arange(start, start + len(img)))
    assert [x["meta"]["success"] for x in d] == [True, False] and d[0]["dones"].tolist() == [0] * 5 + [1]
    assert [(x["task"], x["task_id"]) for x in d] == [("task 0", 0), ("task 1", 1)]
    norm = env_args(out)["action_normalization"]
    a = np.concatenate([x["actions"] for x in d])
    assert a.min() == -1.0 and a.max() == 1.0
    low, high = np.array(norm["low"]), np.array(norm["high"])
    raw = low + (a + 1) * (high - low) / 2  # the documented inverse gives back the source actions
    np.testing.assert_allclose(raw[:, 0], 5.0 * np.r_[np.arange(6), np.arange(6, 10)] / 11, atol=1e-5)
    keep = convert(src, tmp_path / "keep.hdf5", actions="keep")
    assert "action_normalization" not in env_args(keep) and demos(keep)[1]["actions"].max() > 1


def test_lerobot_image_cells_by_path_and_a_video_without_its_path_template(tmp_path):
    """An image cell naming its file (no bytes) was opened relative to the current folder, and a video feature of an
    info.json without video_path was a bare KeyError: each a traceback (a new user's finding)."""
    from PIL import Image

    from robopretrain.data.read_lerobot import _decode_image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((4, 4, 3), 70, np.uint8)).save(tmp_path / "images" / "0.png")
    cell = {"bytes": None, "path": "images/0.png"}
    assert _decode_image(cell, "w", tmp_path).tolist() == np.full((4, 4, 3), 70, np.uint8).tolist()
    with pytest.raises(ConversionError, match=r"w: image file .*/elsewhere/images/0.png not found"):
        _decode_image(cell, "w", tmp_path / "elsewhere")
    src = F.write_lerobot(tmp_path / "lr")
    info = json.loads((src / "meta" / "info.json").read_text())
    del info["video_path"]
    (src / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(ConversionError, match=rf"{src}/meta/info.json: feature '{F.LEROBOT_CAM}' is a video, but the "
                                              "file has no video_path template"):
        convert(src, tmp_path / "lr.hdf5")


def test_lerobot_next_done_on_every_last_frame_terminates_only_a_success(tmp_path):
    """LeRobot sets next.done on the last frame of every episode (time limits too): with next.success recorded, a
    failed episode is a truncation (last frame dropped, no terminal), a successful one terminates; without
    next.success, next.done is all there is and terminates."""
    src = F.write_lerobot(tmp_path / "lr", done_last=(True, True), success_last=(True, False))
    d = demos(convert(src, tmp_path / "l.hdf5"))
    assert [len(x["actions"]) for x in d] == [6, 4]
    assert d[0]["dones"].tolist() == [0] * 5 + [1] and d[1]["dones"].tolist() == [0] * 4
    assert [x["meta"]["success"] for x in d] == [True, False]
    bare = F.write_lerobot(tmp_path / "bare", done_last=(True, False), success_last=None)
    d = demos(convert(bare, tmp_path / "b.hdf5"))
    assert [len(x["actions"]) for x in d] == [6, 4] and d[0]["dones"].tolist() == [0] * 5 + [1]
    assert d[1]["dones"].tolist() == [0] * 4 and "success" not in d[0]["meta"]


def test_auto_rescaling_maps_only_the_dimensions_outside_minus_one_one(tmp_path, caplog):
    """Pendulum-like torque in [-2, 2] beside a 'gripper' that is always 0.5 and a joint in [0.1, 0.3]: only the
    torque is rescaled; the others keep their values (bounds -1, 1), so no dimension is frozen or narrowed. A
    dimension constant outside [-1, 1] is warned about."""
    n = 6
    torque = np.linspace(-2, 2, n)
    acts = np.stack([torque, np.full(n, 0.5), np.linspace(0.1, 0.3, n), np.full(n, 5.0)], 1).astype(np.float32)
    with h5py.File(tmp_path / "p.hdf5", "w") as f:
        f["observations"] = np.arange(3 * n, dtype=np.float32).reshape(n, 3)
        f["actions"], f["rewards"] = acts, np.zeros(n, np.float32)
        f["terminals"], f["timeouts"] = np.r_[np.zeros(n - 1, bool), True], np.zeros(n, bool)
    with caplog.at_level("WARNING"):
        out = convert(tmp_path / "p.hdf5", tmp_path / "p_conv.hdf5")
    norm = env_args(out)["action_normalization"]
    assert norm["low"] == [-2.0, -1.0, -1.0, 5.0] and norm["high"] == [2.0, 1.0, 1.0, 5.0]
    a = demos(out)[0]["actions"]
    np.testing.assert_allclose(a[:, 0], torque / 2, atol=1e-6)
    np.testing.assert_allclose(a[:, 1:3], acts[:, 1:3], atol=1e-6)  # unchanged
    assert "dimension(s) [3] are constant outside [-1, 1] ([5.0])" in caplog.text


def test_a_lerobot_recording_without_rewards_converts_reward_free(tmp_path):
    """No next.reward column (teleoperation): written without rewards datasets (they were zeros, which RL read as
    failures); with the column, every demo has its rewards."""
    free = convert(F.write_lerobot(tmp_path / "free", rewards=False), tmp_path / "free.hdf5")
    assert read_info(free).unrewarded() == ["demo_0", "demo_1"]
    assert all(x["rewards"] is None for x in demos(free))
    assert read_info(convert(F.write_lerobot(tmp_path / "with"), tmp_path / "with.hdf5")).unrewarded() == []


def test_lerobot_image_features_and_other_versions(tmp_path):
    src = F.write_lerobot(tmp_path / "lr", camera="image")
    d = demos(convert(src, tmp_path / "l.hdf5"))
    img = d[1]["obs"][F.LEROBOT_CAM]
    assert img.dtype == np.uint8 and img.shape == (4, 32, 32, 3)
    assert img[:, 0, 0, 0].tolist() == [F.frame_level(6 + t) for t in range(4)]  # PNG: exact
    info = json.loads((src / "meta/info.json").read_text())
    (src / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(ConversionError, match="only LeRobot v3.x is read"):
        convert(src, tmp_path / "v2.hdf5")


def test_lerobot_file_is_read_by_robomimic(tmp_path):
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    out = convert(F.write_lerobot(tmp_path / "lr"), tmp_path / "l.hdf5")
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": ["observation.state"],
                                                          "rgb": [F.LEROBOT_CAM]}})
    ds = SequenceDataset(hdf5_path=str(out), obs_keys=("observation.state", F.LEROBOT_CAM),
                         dataset_keys=("actions", "rewards", "dones"), seq_length=1, filter_by_attribute="train",
                         hdf5_cache_mode=None, hdf5_use_swmr=True)
    item = ds[7]  # demo_1, step 1
    ds.close_and_delete_hdf5_handle()
    assert len(ds) == 10
    np.testing.assert_array_equal(item["obs"]["observation.state"][0], demos(out)[1]["obs"]["observation.state"][1])


def test_images_become_uint8_hwc():
    chw = np.zeros((2, 1, 8, 8), np.float32)
    chw[1] = 1.0
    out = to_uint8_hwc(chw, "x")
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8 and out[1].min() == 255 and out[0].max() == 0
    with pytest.raises(ConversionError, match="image channels"):
        to_uint8_hwc(np.zeros((2, 8, 8, 5)), "x")
    # one pixel overshooting 1 (a resize) keeps its episode on the [0, 1] scale (it came out black: 0.8 read as 0.8/255)
    unit = np.full((1, 8, 8, 3), 0.8, np.float32)
    unit[0, 0, 0, 0] = 1.02
    assert to_uint8_hwc(unit, "x")[0, 1, 1, 0] == 204 and to_uint8_hwc(unit, "x")[0, 0, 0, 0] == 255
    assert to_uint8_hwc(np.full((1, 8, 8, 3), 200.0), "x").max() == 200  # the [0, 255] scale
    assert to_uint8_hwc(np.full((1, 8, 8, 3), 200, np.uint16), "x").max() == 200  # 16-bit storage of 8-bit values
    # not 8-bit colour: clipped into a saturated or black camera before
    for bad, what in ((np.full((1, 8, 8, 1), 3000, np.uint16), r"uint16 frames with values in \[3000, 3000\]"),
                      (np.full((1, 8, 8, 1), 2.5, np.float32), r"float32 frames with values in \[2.5, 2.5\]"),
                      (np.full((1, 8, 8, 3), -1.5, np.float32), "normalised or mean-subtracted"),
                      (np.full((1, 8, 8, 3), 300.0), r"values in \[300, 300\]"),
                      (np.full((1, 8, 8, 3), np.nan, np.float32), "NaN or inf"),
                      # a depth map in metres within 2 m: read as [0, 1] colour, 58% of it white, before
                      (np.random.default_rng(0).uniform(0.3, 1.8, (1, 8, 8, 1)).astype(np.float32),
                       r"% of them above 1: not colour on \[0, 1\] \(a depth map in metres\?\)")):
        with pytest.raises(ConversionError, match=what):
            to_uint8_hwc(bad, "x")


def test_a_camera_that_is_not_8bit_colour_is_left_out_not_clipped(tmp_path, caplog):
    """A depth camera in millimetres (uint16) beside state and colour: it was clipped into a white camera silently;
    now it is left out with a warning and listed in env_args, while the rest converts."""
    from robopretrain.data.episodes import Episode, write_robomimic

    rng = np.random.default_rng(0)
    depth = rng.integers(300, 3000, (4, 16, 16, 1)).astype(np.uint16)
    cam = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    state = rng.normal(size=(4, 3)).astype(np.float32)

    def episode(d):
        return Episode(obs={"depth": d[:3], "cam": cam[:3], "state": state[:3]},
                       next_obs={"depth": d[1:], "cam": cam[1:], "state": state[1:]}, actions=np.zeros((3, 2)),
                       rewards=np.zeros(3), terminations=np.array([0, 0, 1]), truncated=False, task="t")

    with caplog.at_level(logging.WARNING):
        out = write_robomimic(tmp_path / "r.hdf5", [episode(depth), episode(depth)], source="src", fmt="test")
    d = demos(out)
    assert sorted(d[1]["obs"]) == ["cam", "state"] and env_args(out)["dropped_parts"] == ["depth"]
    np.testing.assert_array_equal(d[1]["obs"]["cam"], cam[:3])
    assert "part 'depth' is not written" in caplog.text
    # 8-bit values in a uint16 array first, then a frame out of range: the file's parts would differ
    with pytest.raises(ConversionError, match=r"episode 1 obs 'depth': uint16 frames with values in \[300"):
        write_robomimic(tmp_path / "s.hdf5", [episode(depth // 20), episode(depth)], source="src", fmt="test")


def test_image_size_resizes_every_camera_as_an_envs_frames_are(tmp_path):
    """write_robomimic(image_size=S): each camera frame (obs and next_obs) equals what the env path gives the agent
    (camera_frames.to_agent_frame), low-dim parts untouched, the source sizes recorded; without it frames are kept."""
    from robopretrain.data.episodes import Episode, write_robomimic
    from robopretrain.envs.camera_frames import to_agent_frame

    rng = np.random.default_rng(0)
    cam = rng.integers(0, 256, (4, 20, 30, 3), dtype=np.uint8)  # non-square, textured (a stretch shows)
    grey = rng.integers(0, 256, (4, 1, 12, 12), dtype=np.uint8)  # channels-first grey, smaller than S: enlarged
    flat = rng.integers(0, 256, (4, 24, 24), dtype=np.uint8)  # grey without a channel (GrayscaleObservation)
    state = rng.normal(size=(4, 3)).astype(np.float32)
    ep = Episode(obs={"cam": cam[:3], "grey": grey[:3], "flat": flat[:3], "state": state[:3]},
                 next_obs={"cam": cam[1:], "grey": grey[1:], "flat": flat[1:], "state": state[1:]},
                 actions=np.zeros((3, 2)), rewards=np.zeros(3), terminations=np.array([0, 0, 1]), truncated=False,
                 task="t")
    out = write_robomimic(tmp_path / "r.hdf5", [ep], source="src", fmt="test", image_size=16)
    d = demos(out)[0]
    for t in range(3):
        np.testing.assert_array_equal(d["obs"]["cam"][t], to_agent_frame(cam[t], 16))
        np.testing.assert_array_equal(d["next"]["cam"][t], to_agent_frame(cam[t + 1], 16))
        np.testing.assert_array_equal(d["obs"]["grey"][t], to_agent_frame(grey[t], 16))
        np.testing.assert_array_equal(d["next"]["flat"][t], to_agent_frame(flat[t + 1], 16))
    assert d["obs"]["cam"].shape == (3, 16, 16, 3) and d["obs"]["grey"].shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(d["obs"]["state"], state[:3])
    assert env_args(out)["image_size"] == 16
    assert env_args(out)["source_image_sizes"] == {"cam": [20, 30], "grey": [12, 12], "flat": [24, 24]}
    kept = demos(write_robomimic(tmp_path / "k.hdf5", [ep], source="src", fmt="test"))[0]
    np.testing.assert_array_equal(kept["obs"]["cam"], cam[:3])
    np.testing.assert_array_equal(kept["obs"]["flat"], np.repeat(flat[:3, :, :, None], 3, axis=3))  # a camera
    for bad in (4, True, 16.0):
        with pytest.raises(ConversionError, match="image_size"):
            write_robomimic(tmp_path / "b.hdf5", [ep], source="src", fmt="test", image_size=bad)


def test_non_square_lerobot_camera_trains_once_resized(tmp_path, capsys):
    """A 32 x 48 LeRobot camera: refused at training as stored (the message says data.image_size), resized by
    data.image_size / --image-size (a separate cached copy), and trained on; a robomimic file of another size (the
    LeRobot file's copy as stored) is resized by data.image_size too, into a copy of its own, to the same frames."""
    from robopretrain.build import converted

    src = F.write_lerobot(tmp_path / "lr", lengths=(10, 9), width=48)
    cache = tmp_path / "cache"
    obs = {"low_dim": ["observation.state"], "rgb": [F.LEROBOT_CAM], "num_tasks": None}
    with pytest.raises(ValueError, match="data.image_size=S"):
        run(stage2_config(src, tmp_path / "raw", algo="iql", steps=2, obs=obs, data_cfg={"cache_dir": str(cache)}))
    as_stored = next(cache.glob("*.hdf5"))
    assert demos(as_stored)[0]["obs"][F.LEROBOT_CAM].shape[1:] == (32, 48, 3)
    ckpt = run(stage2_config(src, tmp_path / "run", algo="iql", steps=2, obs=obs,
                             data_cfg={"cache_dir": str(cache), "image_size": 16}))
    _, saved = load_agent(ckpt)
    assert dict((k, tuple(s)) for k, s in saved.meta["obs_spec"]["rgb"]) == {F.LEROBOT_CAM: (16, 16, 3)}
    small = Path(saved.meta["data_path"])
    assert small.parent == cache and small != as_stored  # its own copy: the key holds the image size
    img = demos(small)[1]["obs"][F.LEROBOT_CAM]
    assert img.shape == (8, 16, 16, 3)
    np.testing.assert_allclose(img.mean((1, 2, 3)), [F.frame_level(10 + t) for t in range(8)], atol=4)
    assert convert_main([str(src), str(tmp_path / "c.hdf5"), "--image-size", "16"]) == 0
    assert f"{F.LEROBOT_CAM} (16, 16, 3)" in capsys.readouterr().out
    # an agent's size as the default (stage 3's target demos, a mixed-in file): another format resized to it ...
    plain = {"cache_dir": str(cache)}
    assert converted(src, plain, default_image_size=16) == small
    # ... and a robomimic file: one of that size used where it is, one of another size through its own resized copy
    # (robopretrain.data.resize_robomimic), the same whether the agent's size or data.image_size asks
    assert converted(small, {"image_size": 16}) == small and converted(small, plain, default_image_size=16) == small
    resized = converted(as_stored, {"image_size": 16, "cache_dir": str(cache)})
    assert resized.parent == cache and resized not in (as_stored, small)
    assert converted(as_stored, plain, default_image_size=16) == resized
    # stage 2 on the robomimic file of another size with data.image_size: trains on that copy, at that size
    _, on_copy = load_agent(run(stage2_config(as_stored, tmp_path / "stored", algo="iql", steps=2, obs=obs,
                                              data_cfg={"image_size": 16, "cache_dir": str(cache)})))
    assert Path(on_copy.meta["data_path"]) == resized
    assert dict((k, tuple(s)) for k, s in on_copy.meta["obs_spec"]["rgb"]) == {F.LEROBOT_CAM: (16, 16, 3)}
    np.testing.assert_array_equal(demos(resized)[1]["obs"][F.LEROBOT_CAM], img)  # the same resize as LeRobot's
    assert convert_main([str(as_stored), str(tmp_path / "again.hdf5"), "--image-size", "16"]) == 0
    np.testing.assert_array_equal(demos(tmp_path / "again.hdf5")[1]["obs"][F.LEROBOT_CAM], img)


def test_stage3_demos_and_a_mix_are_converted_at_the_agents_image_size(tmp_path):
    """Wiring: stage 3's target demos and stage 2's mixed-in file, in another format or robomimic, get the agent's
    image size (their 32 x 48 cameras would not fit a 16 px agent)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from finetune.train import offline_data_path

    src = F.write_lerobot(tmp_path / "lr", lengths=(10, 9), width=48)
    cache = str(tmp_path / "cache")
    agent = SimpleNamespace(spec=SimpleNamespace(image_size=16))
    path = offline_data_path(OmegaConf.create({"data": {"cache_dir": cache}}), tmp_path, SimpleNamespace(
        name="t", demos=str(src), family="gym"), agent, {})
    assert demos(path)[0]["obs"][F.LEROBOT_CAM].shape[1:] == (16, 16, 3)
    given = offline_data_path(OmegaConf.create({"data": {"cache_dir": cache, "path": str(src)}}), tmp_path,
                              SimpleNamespace(name="t", demos=None, family="gym"), agent, {})  # data.path: the same
    assert given == path
    stored = as_robomimic(src, cache_dir=cache)  # the same demos as a robomimic file at 32 x 48: a resized copy
    robomimic_demos = offline_data_path(OmegaConf.create({"data": {"cache_dir": cache}}), tmp_path, SimpleNamespace(
        name="t", demos=str(stored), family="gym"), agent, {})
    assert robomimic_demos not in (stored, path) and demos(robomimic_demos)[0]["obs"][F.LEROBOT_CAM].shape[1:] == (
        16, 16, 3)
    obs = {"low_dim": ["observation.state"], "rgb": [F.LEROBOT_CAM], "num_tasks": 2}
    ckpt = run(stage2_config(src, tmp_path / "run", algo="iql", steps=2, obs=obs, data_cfg={
        "cache_dir": cache, "image_size": 16, "task_id": 0,
        "mix": {"path": str(src), "fraction": 0.5, "task_id": 1, "cache_dir": cache}}))
    assert load_agent(ckpt)[1].step == 2  # the mix at 32 x 48 would not load beside 16 px data
    # a mix (or stage 3's offline data) that does not fit the agent: refused before training, naming file and part
    from robopretrain.build import check_data_fits
    from robopretrain.data.spec import ObsSpec, SpecMismatchError

    spec = ObsSpec(low_dim=(("observation.state", 4),), rgb=((F.LEROBOT_CAM, (16, 16, 3)),))
    check_data_fits(spec, path, None, "the offline data")
    wide = ObsSpec(low_dim=(("observation.state", 5),), rgb=((F.LEROBOT_CAM, (20, 20, 3)),))
    with pytest.raises(SpecMismatchError, match=r"the offline data .*hdf5 does not fit the agent: low_dim part "
                                                r"'observation.state': .* has size 4, the agent has 5; rgb part"):
        check_data_fits(wide, path, None, "the offline data")
    renamed = ObsSpec(low_dim=(("eef", 4),), rgb=((F.LEROBOT_CAM, (16, 16, 3)),))  # a part the file names otherwise
    with pytest.raises(DatasetError, match=r"^the mixed-in data: .*\(low_dim part 'eef'\) not found; .*; map the part "
                                           r"to a key there with data.mix.obs_map=\{eef: observation.state\}$"):
        check_data_fits(renamed, path, None, "the mixed-in data", map_setting="data.mix.obs_map")
    # a robomimic mix at 32 x 48 is read resized to the agent's 16 px too; one whose state is wider is refused
    native = as_robomimic(src, cache_dir=cache)
    assert load_agent(run(stage2_config(src, tmp_path / "native_mix", algo="iql", steps=2, obs=obs, data_cfg={
        "cache_dir": cache, "image_size": 16, "task_id": 0,
        "mix": {"path": str(native), "fraction": 0.5, "task_id": 1, "cache_dir": cache}})))[1].step == 2
    wider = tmp_path / "wider.hdf5"
    shutil.copy(native, wider)
    with h5py.File(wider, "a") as f:
        for demo in f["data"].values():
            for group in ("obs", "next_obs"):
                state = demo[f"{group}/observation.state"][()]
                del demo[f"{group}/observation.state"]
                demo[f"{group}/observation.state"] = np.concatenate([state, state[:, :1]], axis=1)
    with pytest.raises(SpecMismatchError, match=r"the mixed-in data \(data.mix.path\) .* low_dim part "
                                                r"'observation.state': .* has size 5, the agent has 4"):
        run(stage2_config(src, tmp_path / "misfit", algo="iql", steps=2, obs=obs, data_cfg={
            "cache_dir": cache, "image_size": 16, "task_id": 0,
            "mix": {"path": str(wider), "fraction": 0.5, "task_id": 1, "cache_dir": cache}}))


# --------------------------------------------------------------------------- cache, CLI, inspect


def test_cache_converts_once_and_again_when_the_source_changes(tmp_path):
    src = F.write_ogbench(tmp_path / "o.npz")
    cache = tmp_path / "cache"
    first = as_robomimic(src, cache_dir=cache)
    stamp = first.stat().st_mtime_ns
    assert first.parent == cache and as_robomimic(src, cache_dir=cache) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rewritten
    F.write_ogbench(src, trajectories=3)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = as_robomimic(src, cache_dir=cache)
    assert second != first and len(demos(second)) == 3
    assert as_robomimic(second) == second  # a robomimic file is used where it is
    with pytest.raises(ConversionError, match=r"o.npz: cannot make the cache folder .*o.npz/cache for its converted "
                                              r"copy \(Not a directory\); choose a writable folder with data.cache_dir"):
        as_robomimic(src, cache_dir=src / "cache")  # a file on the way



def test_a_minari_dataset_given_by_its_metadata_file_is_converted_again_when_its_episodes_change(tmp_path):
    """The cache key of a Minari dataset named by its ``metadata.json`` (an accepted path) hashed that file alone, so
    editing the episodes beside it kept serving the old copy (a new user's finding)."""
    meta = F.write_minari(tmp_path / "m") / "data" / "metadata.json"
    cache = tmp_path / "cache"
    first = as_robomimic(meta, cache_dir=cache)
    assert as_robomimic(meta, cache_dir=cache) == first
    was = demos(first)[0]["obs"]["observation"][0, 0]
    with h5py.File(meta.parent / "main_data.hdf5", "r+") as f:
        f["episode_0/observations/observation"][0, 0] += 100.0
    second = as_robomimic(meta, cache_dir=cache)
    assert second != first and demos(second)[0]["obs"]["observation"][0, 0] == was + 100.0


def test_a_folders_key_follows_symlinked_folders_and_ignores_files_its_reader_does_not_read(tmp_path, monkeypatch):
    """A LeRobot folder whose data/ is a symlink: a recording replaced behind the link is converted again (Path.rglob
    did not enter the link: the old copy was reused). A run's outputs/, a cache folder or a README written in the
    folder are not the source: the copy is reused (every file counted: a new conversion, a refused resume)."""
    from robopretrain.data.convert import source_key

    src = F.write_lerobot(tmp_path / "lr")
    shutil.move(src / "data", tmp_path / "real_data")
    (src / "data").symlink_to(tmp_path / "real_data", target_is_directory=True)
    cache = tmp_path / "cache"
    first = as_robomimic(src, cache_dir=cache)
    key = source_key(src, "lerobot", "auto")
    parquet = next((tmp_path / "real_data").rglob("*.parquet"))
    parquet.write_bytes(parquet.read_bytes())  # written again: its change time moves
    assert source_key(src, "lerobot", "auto") != key
    (src / "README.md").write_text("my robot")
    (src / "outputs" / "run").mkdir(parents=True)
    (src / "outputs" / "run" / "metrics.jsonl").write_text("{}")
    key = source_key(src, "lerobot", "auto")
    (src / "outputs" / "run" / "metrics.jsonl").write_text('{"step": 1}')
    (src / "cache").mkdir()
    (src / "cache" / "copy.hdf5").write_bytes(b"x")
    assert source_key(src, "lerobot", "auto") == key
    (tmp_path / "real_data" / "up").symlink_to(tmp_path / "real_data", target_is_directory=True)  # a loop in data/
    assert source_key(src, "lerobot", "auto") == key  # read once: no file named through the loop
    monkeypatch.chdir(src)  # "." is named after its folder: not a hidden ".lerobot.<key>.hdf5" of env "lerobot/"
    here = as_robomimic(".", cache_dir=cache)
    assert here.name.startswith("lr.lerobot.") and env_args(here)["env_name"] == "lerobot/lr"
    assert first.name.startswith("lr.lerobot.")


def test_a_copy_recorded_when_every_file_of_the_folder_counted_is_still_found(tmp_path):
    """A LeRobot folder downloaded with a README.md: its copy's record (and key) counted the README before the key
    was narrowed to the reader's folders. The new key names no copy; the record, compared on the reader's files, finds
    the old one (a run on it resumes), and is rewritten without the README."""
    src = F.write_lerobot(tmp_path / "lr")
    (src / "README.md").write_text("downloaded")
    cache = tmp_path / "cache"
    copy = as_robomimic(src, cache_dir=cache)
    old = copy.with_name(copy.name.replace(copy.name.split(".")[-2], "0123456789abcdef"))  # the key it had
    copy.rename(old)
    source_record_path(copy).rename(source_record_path(old))
    record = json.loads(source_record_path(old).read_text())
    record["files"]["README.md"] = {"size": 10, "mtime_ns": 1, "ctime_ns": 1, "sha256": "0" * 64}
    source_record_path(old).write_text(json.dumps(record))
    assert as_robomimic(src, cache_dir=cache) == old and not copy.exists()
    assert "README.md" not in json.loads(source_record_path(old).read_text())["files"]
    record["files"]["meta/info.json"]["size"] += 1  # a file the reader reads differs: not that copy
    source_record_path(old).write_text(json.dumps(record))
    assert as_robomimic(src, cache_dir=cache) == copy


def test_a_new_conversion_removes_the_copies_that_cannot_be_reused(tmp_path):
    cache = tmp_path / "cache"
    src = F.write_ogbench(tmp_path / "o.npz")
    (tmp_path / "elsewhere").mkdir()
    other = as_robomimic(F.write_ogbench(tmp_path / "elsewhere" / "o.npz"), cache_dir=cache)  # same name
    old = [as_robomimic(src, cache_dir=cache), as_robomimic(src, cache_dir=cache, actions="keep"),
           as_robomimic(src, cache_dir=cache, image_size=8)]
    assert len({other, *old}) == 4
    assert all(p.is_file() for p in [other, *old])  # the second and third conversions removed no valid copy
    assert as_robomimic(src, cache_dir=cache, actions="keep") == old[1]  # an unchanged source's copy is reused
    assert all(p.is_file() for p in [other, *old])
    for copy in (other, old[0]):  # frame indexes (data.storage=disk) beside two copies
        index_dir(copy).mkdir()
        (index_dir(copy) / "agentview_image.u8").write_bytes(b"x")
    F.write_ogbench(src, trajectories=3)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    new = as_robomimic(src, cache_dir=cache, image_size=8)
    # every copy of the old source is gone (each mode and size), with its frame index; another source's copy of the
    # same name stays, with its index
    assert sorted(cache.iterdir()) == sorted([other, index_dir(other), source_record_path(other), new,
                                              source_record_path(new)]) and len(demos(new)) == 3
    shutil.rmtree(index_dir(other))
    with h5py.File(other, "a") as f:  # a copy from another converter version (its key no longer the source's)
        f["data"].attrs["env_args"] = json.dumps({**json.loads(f["data"].attrs["env_args"]), "source": str(src)})
    stale = other.rename(cache / f"o.ogbench.{'0' * 16}.hdf5")
    assert as_robomimic(src, cache_dir=cache) != new and not stale.exists() and new.is_file()


def test_a_source_rewritten_with_the_same_bytes_keeps_its_copy_so_its_run_resumes(tmp_path, monkeypatch):
    """The key hashes modification times; a source touched or written again unchanged is found by its content (the
    copy's record), so the copy and its path stay and a run on it resumes. A source edited is converted again."""
    from robopretrain.data import convert as conv
    cache, src = tmp_path / "cache", F.write_ogbench(tmp_path / "o.npz")
    first = as_robomimic(src, cache_dir=cache)
    record = json.loads(source_record_path(first).read_text())
    assert record["files"]["o.npz"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    stamp = first.stat().st_mtime_ns
    src.write_bytes(src.read_bytes())  # the same bytes written again: a new modification time
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert as_robomimic(src, cache_dir=cache) == first and first.stat().st_mtime_ns == stamp
    assert sorted(cache.iterdir()) == [first, source_record_path(first)]
    # the record took the new time: the next lookup reads no content
    monkeypatch.setattr(conv, "sha256_of", lambda path: pytest.fail(f"hashed {path} again"))
    assert as_robomimic(src, cache_dir=cache) == first
    monkeypatch.undo()
    # another image size is its own copy; converting it keeps the reused copy (its content is the source's now)
    small = as_robomimic(src, cache_dir=cache, image_size=8)
    assert small != first and first.is_file()
    # an edit (same file name, new content and time) is converted again and both old copies go, with their records
    F.write_ogbench(src, trajectories=3)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    edited = as_robomimic(src, cache_dir=cache)
    assert edited not in (first, small) and len(demos(edited)) == 3
    assert sorted(cache.iterdir()) == [edited, source_record_path(edited)]


def test_a_stale_copy_a_run_names_is_kept_so_its_resume_works_once_the_source_is_restored(tmp_path):
    """Stage 2 on a converted copy, source edited: the rerun's conversion (its resume then refused) keeps the copy
    the run's checkpoint names, and restoring the source's bytes finds that copy again, so the run resumes."""
    from _stages import stage2_config
    from robopretrain.checkpoint import load_latest
    from robopretrain.run_fingerprint import ResumeMismatchError
    from robopretrain.train import run

    cache, src = tmp_path / "cache", F.write_ogbench(tmp_path / "o.npz", trajectories=3)
    original = src.read_bytes()
    cfg = stage2_config(src, tmp_path / "run", algo="bc", steps=2, obs={"low_dim": ["observations"], "rgb": []},
                        data_cfg={"cache_dir": str(cache)})
    run(cfg)
    first = Path(load_latest(tmp_path / "run" / "checkpoints", with_state=False).meta["data_path"])
    assert first.parent == cache
    F.write_ogbench(src, trajectories=4)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(ResumeMismatchError, match="data"):
        run(cfg)
    assert first.is_file() and len(list(cache.glob("o.ogbench.*.hdf5"))) == 2  # the edited source's copy beside it
    src.write_bytes(original)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    cfg.train.steps = 4
    run(cfg)  # resumes at step 2 on the copy it trained on
    assert load_latest(tmp_path / "run" / "checkpoints", with_state=False).meta["data_path"] == str(first)
    # without keep, a new conversion removes the stale copy (the cache does not grow with each edit)
    F.write_ogbench(src, trajectories=5)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 3 * 10**9))
    assert as_robomimic(src, cache_dir=cache) != first and not first.exists()


def test_a_fresh_run_after_the_refused_resume_removes_the_copy_the_old_run_named(tmp_path):
    """resume=false after the refusal: the old run is gone, and so is the copy of the source's earlier content that
    was kept for it (it stayed in the cache, 2.9 GB in a helper's run, until the source changed again)."""
    from _stages import stage2_config
    from robopretrain.checkpoint import load_latest
    from robopretrain.run_fingerprint import ResumeMismatchError
    from robopretrain.train import run

    cache, src = tmp_path / "cache", F.write_ogbench(tmp_path / "o.npz", trajectories=3)
    cfg = stage2_config(src, tmp_path / "run", algo="bc", steps=2, obs={"low_dim": ["observations"], "rgb": []},
                        data_cfg={"cache_dir": str(cache)})
    run(cfg)
    first = Path(load_latest(tmp_path / "run" / "checkpoints", with_state=False).meta["data_path"])
    F.write_ogbench(src, trajectories=4)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(ResumeMismatchError, match=r"another converted copy of the same source.*; to go on training "
                                                  r"this checkpoint's agent on the changed data: init=.*ckpt_"):
        run(cfg)
    assert first.is_file()
    as_robomimic(src, cache_dir=cache)  # another caller reusing the current copy: another run may name the old one
    from omegaconf import OmegaConf

    from robopretrain.build import converted

    converted(src, OmegaConf.create({"cache_dir": str(cache)}))  # the stages' own call, when not a fresh run
    assert first.is_file()
    cfg.resume = False
    run(cfg)
    now = Path(load_latest(tmp_path / "run" / "checkpoints", with_state=False).meta["data_path"])
    assert not first.exists() and sorted(cache.glob("o.ogbench.*.hdf5")) == [now]


def test_a_copy_is_reused_by_content_only_with_the_settings_it_was_made_with(tmp_path):
    """Same content, other action mode: not that copy (nor a copy whose record is unreadable)."""
    cache, src = tmp_path / "cache", F.write_ogbench(tmp_path / "o.npz")
    auto = as_robomimic(src, cache_dir=cache)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    keep = as_robomimic(src, cache_dir=cache, actions="keep")
    assert keep != auto and auto.is_file()  # auto's copy kept: same content
    source_record_path(auto).write_text("{not json")
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    again = as_robomimic(src, cache_dir=cache)
    assert again != auto and not auto.exists() and not source_record_path(auto).exists() and keep.is_file()


def test_a_copy_by_an_older_converter_is_converted_again_not_reused_by_content(tmp_path, monkeypatch, caplog):
    """Copies made by converter 6 before its demo naming and D4RL episode ends changed were reused by content after
    the upgrade (helper V: one merged 60-step demo where the new converter writes three): the version is 9 now, and a
    copy of another version is converted again, also when the source's times moved; robomimic copies (cameras
    resized), which those changes do not reach, keep their version."""
    from robopretrain.data import convert as convert_mod

    cache, src = tmp_path / "cache", F.write_ogbench(tmp_path / "o.npz")
    assert convert_mod.converter_version("ogbench") == 9 and convert_mod.converter_version("robomimic") == 6
    monkeypatch.setattr(convert_mod, "CONVERTER_VERSION", 7)
    old = as_robomimic(src, cache_dir=cache)
    assert json.loads(source_record_path(old).read_text())["settings"]["converter"] == 7
    monkeypatch.undo()
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))  # (times moved: the lookup by content runs)
    with caplog.at_level(logging.INFO, logger="robopretrain.data.convert"):
        new = as_robomimic(src, cache_dir=cache)
    assert new != old and not old.exists() and "its content is the same" not in caplog.text
    assert json.loads(source_record_path(new).read_text())["settings"]["converter"] == 9
    # robomimic's env type is an integer (its env utilities failed on the string 'ogbench'); the format has its key
    with h5py.File(new, "r") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
    assert env_args["type"] == 2 and env_args["format"] == "ogbench"
    from robopretrain.data.hdf5 import source_format

    assert source_format(env_args) == "ogbench" and source_format({"type": "d4rl"}) == "d4rl"  # an older copy's
    assert source_format({"type": 2}) is None


def test_a_relative_source_path_prunes_only_its_own_copies(tmp_path, monkeypatch):
    """Two projects' ``data.path=o.npz`` name two files: each copy records its absolute source, so converting one
    never removes the other's (the cache folder is shared by every project)."""
    cache = tmp_path / "cache"
    copies = []
    for project, n in (("a", 2), ("b", 3)):
        (tmp_path / project).mkdir()
        F.write_ogbench(tmp_path / project / "o.npz", trajectories=n)
        monkeypatch.chdir(tmp_path / project)
        copies.append(as_robomimic("o.npz", cache_dir=cache))
        with h5py.File(copies[-1], "r") as f:
            assert json.loads(f["data"].attrs["env_args"])["source"] == str((tmp_path / project / "o.npz").resolve())
    assert copies[0] != copies[1] and all(c.is_file() for c in copies)
    assert [len(demos(c)) for c in copies] == [2, 3]
    # a copy recording a relative source (written before paths were absolute) is left: which file it named is unknown
    with h5py.File(copies[0], "a") as f:
        f["data"].attrs["env_args"] = json.dumps({**json.loads(f["data"].attrs["env_args"]), "source": "o.npz"})
    source_record_path(copies[0]).unlink()  # and without a record (written before records existed)
    legacy = copies[0].rename(cache / f"o.ogbench.{'0' * 16}.hdf5")
    F.write_ogbench(tmp_path / "b" / "o.npz", trajectories=4)
    os.utime(tmp_path / "b" / "o.npz", ns=(time.time_ns(), time.time_ns() + 10**9))
    newer = as_robomimic("o.npz", cache_dir=cache)
    # b's old copy removed with its record, the legacy one left
    assert sorted(cache.iterdir()) == sorted([legacy, newer, source_record_path(newer)])


@pytest.mark.parametrize("shape,dtype,layout", [
    ((8, 8, 3), "uint8", "channels_last"), ((16, 16, 4), "float32", "channels_last"),
    ((3, 8, 8), "uint8", "channels_first"), ((1, 16, 12), "float32", "channels_first"),
    ((3, 8, 3), "uint8", None), ((7, 7, 3), "uint8", None), ((3, 3, 3), "uint8", None),  # sides under 8
    ((8, 8), "uint8", "grey"), ((8, 8), "float32", None), ((7, 9), "uint8", None), ((8,), "uint8", None),
    ((4, 8, 8, 3), "uint8", None),
])
def test_one_rule_says_which_arrays_are_cameras(shape, dtype, layout):
    """The converters and inspect read cameras by one rule: a per-step shape's layout, and is_image on (N, ...)."""
    assert image_layout(shape, dtype) == layout
    assert is_image(np.zeros((2, *shape), dtype)) == (layout is not None)


def test_convert_cli_and_errors(tmp_path, capsys):
    src = F.write_d4rl(tmp_path / "walker.hdf5")
    assert convert_main([str(src), str(tmp_path / "w.hdf5")]) == 0
    assert "3 episodes, 10 transitions, 3-D actions" in capsys.readouterr().out
    assert convert_main([str(src), str(tmp_path / "w.hdf5")]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    (tmp_path / "outdir").mkdir()  # a folder was an IsADirectoryError traceback after the whole conversion
    assert convert_main([str(src), str(tmp_path / "outdir"), "--overwrite"]) == 2
    assert "outdir: is a folder; give the .hdf5 file to write" in capsys.readouterr().err
    real_access = os.access  # a read-only folder (as root every folder is writable: its answer is faked)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "access", lambda p, mode: Path(p) != tmp_path / "outdir" and real_access(p, mode))
        assert convert_main([str(src), str(tmp_path / "outdir" / "sub" / "w.hdf5")]) == 2
    assert f"w.hdf5: cannot write in {tmp_path / 'outdir'} (no permission)" in capsys.readouterr().err
    # a format other than the detected one: said so (it was the other reader's complaint, or a traceback)
    assert convert_main([str(src), str(tmp_path / "x.hdf5"), "--format", "ogbench"]) == 2
    assert "walker.hdf5: detected format d4rl, not ogbench; leave the format unset" in capsys.readouterr().err
    (tmp_path / "junk.txt").write_text("x")
    assert convert_main([str(tmp_path / "junk.txt"), str(tmp_path / "x.hdf5"), "--format", "d4rl"]) == 2
    assert "junk.txt: not an HDF5 file" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "gone.hdf5"), str(tmp_path / "x.hdf5"), "--format", "d4rl"]) == 2
    assert "gone.hdf5: no such file or folder" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="format not recognised"):
        detect_format(tmp_path / "junk.txt")


def test_an_error_about_a_converted_copy_names_the_users_file(tmp_path, capsys, monkeypatch):
    """Stage 2 reads the cached copy; its one-line error also names the source the copy was converted from."""
    from robopretrain.cli import friendly_errors
    from robopretrain.data.convert import name_sources

    src = F.write_d4rl(tmp_path / "walker.hdf5")
    cfg = stage2_config(src, tmp_path / "run", algo="iql", steps=2, obs={"low_dim": ["proprio"], "num_tasks": None},
                        data_cfg={"cache_dir": str(tmp_path / "cache")}, train={"eval_targets": []})
    monkeypatch.delenv("ROBOPRETRAIN_TRACEBACK", raising=False)
    with pytest.raises(SystemExit):
        friendly_errors(run)(cfg)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    copy = next((tmp_path / "cache").glob("walker.d4rl.*.hdf5"))
    assert str(copy) in err and "'proprio'" in err  # the reader's own message, about the copy
    assert "map the part to a key there with data.obs_map={proprio: observations}, or use those keys as the parts: " \
        "obs.low_dim=[observations] [" in err
    assert err.endswith(f"[{copy.name} is {src} (d4rl) converted; each demo's ep_meta source_episode names its "
                        "episode in the source]")
    assert name_sources(f"{tmp_path}/gone.d4rl.0123456789abcdef.hdf5: bad") == \
        f"{tmp_path}/gone.d4rl.0123456789abcdef.hdf5: bad"  # a copy that cannot be read: the message as it was
    note = f" [{copy.name} is {src} (d4rl) converted"
    assert note in name_sources(f"data.path={copy} is bad") and note in name_sources(f"files [{copy}] differ")
    hydra_dir = tmp_path / "multirun" / "algo=iql,seed=1" / "cache"  # a Hydra multirun folder holds = and ,
    hydra_dir.mkdir(parents=True)
    (hydra_dir / copy.name).write_bytes(copy.read_bytes())
    assert note in name_sources(f"data.path={hydra_dir / copy.name}: bad") and note in name_sources(
        f"files ({hydra_dir / copy.name}, x)")


def test_inspect_reads_a_foreign_format(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOPRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    text, png = inspect(F.write_lerobot(tmp_path / "lr"), tmp_path / "sheet.png", frames=2, per_task=1)
    assert text.startswith("format: lerobot") and "task 0" in text and "task 1" in text
    assert png is not None and png.is_file()  # the camera found by its shape


# --------------------------------------------------------------------------- stage 2 on each format


STAGE2 = {
    "d4rl": (lambda p: F.write_d4rl(p / "hopper.hdf5", lengths=(12, 14)), {"low_dim": ["observations"]}, 3),
    "ogbench": (lambda p: F.write_ogbench(p / "cube.npz", length=12, masks=True), {"low_dim": ["observations"]}, 2),
    "minari": (lambda p: F.write_minari(p / "minari", lengths=(10, 12)),
               {"low_dim": ["observation", "desired_goal"]}, 2),
    "lerobot": (lambda p: F.write_lerobot(p / "lr", lengths=(10, 9)),
                {"low_dim": ["observation.state"], "rgb": [F.LEROBOT_CAM]}, 2),
}


@pytest.mark.parametrize("fmt", list(STAGE2))
def test_stage2_trains_on_each_format_given_as_data_path(tmp_path, fmt):
    write, obs, act_dim = STAGE2[fmt]
    src = write(tmp_path)
    ckpt = run(stage2_config(src, tmp_path / "run", algo="iql", steps=2, obs={**obs, "num_tasks": None},
                             data_cfg={"cache_dir": str(tmp_path / "cache")}, train={"eval_targets": []}))
    _, saved = load_agent(ckpt)
    assert saved.meta["act_dim"] == act_dim and saved.step == 2
    assert [k for k, _ in saved.meta["obs_spec"]["low_dim"]] == obs["low_dim"]
    assert [k for k, *_ in saved.meta["obs_spec"]["rgb"]] == obs.get("rgb", [])
    assert Path(saved.meta["data_path"]).parent == tmp_path / "cache"


def test_a_mix_in_another_format_is_converted_like_data_path(tmp_path):
    """data.mix.path goes through the same conversion as data.path (its task slots are read from the conversion)."""
    prior = F.write_d4rl(tmp_path / "prior.hdf5", lengths=(12, 14))
    mix = F.write_d4rl(tmp_path / "mix.hdf5", lengths=(10, 11))
    ckpt = run(stage2_config(prior, tmp_path / "run", algo="iql", steps=2, obs={"low_dim": ["observations"],
                                                                               "num_tasks": 2},
                             data_cfg={"cache_dir": str(tmp_path / "cache"),
                                       "mix": {"path": str(mix), "fraction": 0.5, "task_id": 1,
                                               "cache_dir": str(tmp_path / "cache")}},
                             train={"eval_targets": []}))
    _, saved = load_agent(ckpt)
    assert saved.step == 2 and sorted(saved.meta["task_ids"].values()) == [0, 1]
    # two converted files of one task (each named after its file stem) share slot 0 when both are put there
    same = run(stage2_config(prior, tmp_path / "same", algo="iql", steps=2, obs={"low_dim": ["observations"]},
                             data_cfg={"cache_dir": str(tmp_path / "cache"), "task_id": 0,
                                       "mix": {"path": str(mix), "fraction": 0.5, "task_id": 0,
                                               "cache_dir": str(tmp_path / "cache")}},
                             train={"eval_targets": []}))
    assert load_agent(same)[1].meta["task_ids"] == {"prior": 0, "mix": 0}
    # the refusal's advice for one task names both settings (it named data.mix.task_id alone, which is refused: a
    # user's own mix slot on another task's is a clash, tests/test_stage2_data_wiring.py)
    for mix_cfg in ({}, {"task_id": 0}):
        with pytest.raises(ValueError, match=r"or data.task_id=0 data.mix.task_id=0 if they are the same task"):
            run(stage2_config(prior, tmp_path / "refused", algo="iql", steps=2, obs={"low_dim": ["observations"]},
                              data_cfg={"cache_dir": str(tmp_path / "cache"),
                                        "mix": {"path": str(mix), "fraction": 0.5, **mix_cfg,
                                                "cache_dir": str(tmp_path / "cache")}},
                              train={"eval_targets": []}))


def test_a_file_no_batch_row_comes_from_is_not_recorded_as_trained(tmp_path, caplog):
    """data.mix.fraction=0 (or 1): its tasks were recorded as trained (evaluate's default target became the mix's
    task, in a slot no batch held, without the untrained-slot warning); so is a fraction that rounds to no row."""
    import logging

    prior = F.write_d4rl(tmp_path / "prior.hdf5", lengths=(12, 14))
    mix = F.write_d4rl(tmp_path / "mix.hdf5", lengths=(10, 11))
    cache = str(tmp_path / "cache")
    for name, fraction, trained, warned in (("half", 0.5, {"prior": 0, "mix": 1}, None),
                                            ("none", 0.0, {"prior": 0}, "data.mix.path"),
                                            ("rounded", 0.4 / 256, {"prior": 0}, "data.mix.path"),
                                            ("all", 1.0, {"mix": 1}, "data.path")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="robopretrain.train"):
            ckpt = run(stage2_config(prior, tmp_path / name, algo="bc", steps=2, algo_cfg={"batch_size": 256},
                                     obs={"low_dim": ["observations"], "num_tasks": 2},
                                     data_cfg={"cache_dir": cache, "mix": {"path": str(mix), "fraction": fraction,
                                                                           "task_id": 1, "cache_dir": cache}},
                                     train={"eval_targets": []}))
        meta = load_agent(ckpt)[1].meta
        assert meta["task_ids"] == trained and meta["task_names"] == sorted(trained), name
        assert meta["mix_task_names"] == (["mix"] if "mix" in trained else []), name
        said = [r.getMessage() for r in caplog.records if "no row of a batch of 256" in r.getMessage()]
        assert len(said) == (warned is not None) and all(f"comes from {warned}=" in s for s in said), (name, said)


def test_stage1_says_a_converted_datasets_frames_are_stretched_whatever_data_stretch_says(tmp_path, caplog):
    """data.stretch=false (centre crop) was ignored silently for LeRobot and other converted sources: their copy's
    frames are stretched to square while converting (bit-identical encoders for false and true)."""
    import logging

    from omegaconf import OmegaConf

    from video_pretrain.train import frames_path

    src = F.write_lerobot(tmp_path / "lr", lengths=(10, 9), width=48)
    for stretch, warned in ((False, True), (True, False)):
        cfg = OmegaConf.create({"image_size": 16, "data": {"stretch": stretch, "cache_dir": str(tmp_path / "c")}})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="video_pretrain.train"):
            copy = frames_path(src, cfg)
        assert copy.suffix == ".hdf5"
        assert ("data.stretch=false (crop non-square clips to their central square) does not apply to this lerobot "
                f"dataset: its frames ({F.LEROBOT_CAM} 32x48) were stretched to 16 x 16" in caplog.text) == warned
    square = F.write_lerobot(tmp_path / "sq", lengths=(10, 9))  # square already: nothing to say
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="video_pretrain.train"):
        frames_path(square, OmegaConf.create({"image_size": 16, "data": {"stretch": False,
                                                                          "cache_dir": str(tmp_path / "c")}}))
    assert "does not apply" not in caplog.text
