"""The dataset inspector on tiny robomimic HDF5 files and video folders, and its one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from robopretrain.data.inspect import format_hdf5_summary, main, summarize_hdf5
from sim_envs.video_writer import write_mp4

# (task, task_id, length, success) per demo
DEMOS = [("PushBlock", 1, 6, True), ("PushBlock", 1, 4, False), ("Lift", 3, 5, True)]


def write_tiny_hdf5(path: Path, with_images: bool = True) -> Path:
    """A robomimic-layout file: data/demo_i/{obs,actions,rewards,dones}, attrs, masks."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(d[2] for d in DEMOS)
        data.attrs["env_args"] = json.dumps({"env_name": "sim_envs/multitask", "env_version": "0.1.0", "type": 4,
                                             "env_kwargs": {}})
        for i, (task, task_id, n, success) in enumerate(DEMOS):
            demo = data.create_group(f"demo_{i}")
            if with_images:
                images = np.zeros((n, 16, 16, 3), np.uint8)
                images[..., i % 3] = np.linspace(40, 250, n).astype(np.uint8)[:, None, None]
                demo.create_dataset("obs/agentview_image", data=images)
                demo.create_dataset("next_obs/agentview_image", data=np.concatenate([images[1:], images[-1:]]))
            proprio = rng.normal(size=(n + 1, 7)).astype(np.float32)
            demo.create_dataset("obs/proprio", data=proprio[:-1])
            demo.create_dataset("next_obs/proprio", data=proprio[1:])
            demo.create_dataset("actions", data=rng.uniform(-1, 1, size=(n, 4)).astype(np.float32))
            rewards = np.zeros(n, np.float32)
            rewards[-1] = float(success)
            demo.create_dataset("rewards", data=rewards)
            demo.create_dataset("dones", data=(rewards > 0).astype(np.uint8))
            demo.attrs.update(num_samples=n, task=task, task_id=task_id, ep_meta=json.dumps({"success": success}))
        names = [f"demo_{i}".encode() for i in range(len(DEMOS))]
        f.create_dataset("mask/train", data=np.array(names[:2]))
        f.create_dataset("mask/valid", data=np.array(names[2:]))
        f.create_dataset("mask/PushBlock", data=np.array(names[:2]))
        f.create_dataset("mask/Lift", data=np.array(names[2:]))
    return path


def write_tiny_video_folder(folder: Path) -> Path:
    folder.mkdir()
    rows = ["path,num_frames,text"]
    for i, n in enumerate([5, 9]):
        frames = [np.full((16, 16, 3), 20 * t + 40 * i, np.uint8) for t in range(n)]
        write_mp4(folder / f"clip_{i:05d}.mp4", frames, fps=10)
        rows.append(f"clip_{i:05d}.mp4,{n},a hand {'pokes' if i else 'waves'}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_hdf5_summary_and_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_tiny_hdf5(tmp_path / "demos.hdf5")
    assert main([str(path), "--frames", "3"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert lines["PushBlock"][1:7] == ["2", "0.50", "5.0", "4", "6", "10"]
    assert lines["Lift"][1:7] == ["1", "1.00", "5.0", "5", "5", "5"]
    assert lines["total"][1:4] == ["3", "0.67", "15"]
    assert "obs/agentview_image" in out and "(16, 16, 3)" in out and "uint8" in out
    assert "obs/proprio" in out and "(7,)" in out and "float32" in out
    assert "train (2)" in out and "valid (1)" in out and "PushBlock (2)" in out
    sheet = tmp_path / "demos_contact_sheet.png"
    assert sheet.is_file() and f"contact sheet -> {sheet}" in out
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    # a sheet that cannot be written (a read-only data folder): the summary is printed all the same (a traceback)
    (tmp_path / "a_file").write_text("")
    assert main([str(path), "--frames", "3", "--out", str(tmp_path / "a_file" / "sheet.png")]) == 0
    out = capsys.readouterr().out
    assert "total" in out and f"contact sheet: not written, {tmp_path / 'a_file'} cannot be written (" in out
    assert "--out /a/writable/sheet.png puts it elsewhere" in out


def test_demos_flag_lists_every_demo_in_file_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Writing preference labels or a mask needs each demo's name and length: --demos lists them (name, task,
    steps, success, reward signal), in numeric order (demo_10 after demo_2), grouped by nothing."""
    path = write_tiny_hdf5(tmp_path / "demos.hdf5", with_images=False)
    with h5py.File(path, "r+") as f:  # demo_10, whose name sorts before demo_2 as text
        f.copy("data/demo_1", "data/demo_10")
        del f["data/demo_10/rewards"]
        f["data"].attrs["total"] = int(f["data"].attrs["total"]) + 4
    assert main([str(path), "--demos"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("demo_")]
    assert rows == [["demo_0", "PushBlock", "6", "yes", "yes"], ["demo_1", "PushBlock", "4", "no", "no"],
                    ["demo_2", "Lift", "5", "yes", "yes"], ["demo_10", "PushBlock", "4", "no", "-"]]
    assert main([str(path)]) == 0 and "demo_10  " not in capsys.readouterr().out  # off by default
    # a converted file: each demo's episode id in the source (a skipped source episode leaves a gap in the names)
    with h5py.File(path, "r+") as f:
        for name, source in (("demo_0", 7), ("demo_2", "ep-b")):
            f[f"data/{name}"].attrs["ep_meta"] = json.dumps({"success": True, "source_episode": source})
    assert main([str(path), "--demos"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("demo_")]
    assert "reward signal  source episode" in out
    assert rows == [["demo_0", "PushBlock", "6", "yes", "yes", "7"], ["demo_1", "PushBlock", "4", "no", "no", "-"],
                    ["demo_2", "Lift", "5", "yes", "yes", "ep-b"], ["demo_10", "PushBlock", "4", "no", "-", "-"]]
    assert "* success read from" not in out
    # no ep_meta flag: success read from the sparse rewards, marked; a wrong total is what training refuses
    with h5py.File(path, "r+") as f:
        for name in ("demo_0", "demo_1"):
            f[f"data/{name}"].attrs["ep_meta"] = json.dumps({})
        f["data"].attrs["total"] = 1
    assert main([str(path), "--demos"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[:5] for line in out.splitlines() if line.startswith("demo_")]
    assert rows[:2] == [["demo_0", "PushBlock", "6", "yes*", "yes"], ["demo_1", "PushBlock", "4", "no*", "no"]]
    assert "* success read from the demo's sparse rewards (last reward 1), ep_meta has no flag" in out
    assert ("warning: data.attrs['total'] = 1 but the demos hold 19 transitions (robomimic never reads it; training "
            "reads the demos, with a warning); set data's total to 19\n") in out
    assert "training refuses" not in out  # (robomimic's readers take the demos' num_samples: the toolkit too)


def test_a_one_step_success_is_not_said_to_lack_a_reward_signal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Dense negative rewards: a one-step episode's one reward is "all equal" whatever it means, so it was counted
    (and listed "no") among successes without a reward signal; stage 2 trains on no one-step episode. A longer
    success with one constant reward still is."""
    path = write_tiny_hdf5(tmp_path / "dense.hdf5", with_images=False)
    with h5py.File(path, "r+") as f:
        one = f["data/demo_1"]  # cut to its first step
        names: list[str] = []
        one.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and obj.shape
                       and obj.shape[0] == 4 else None)
        for name in names:
            first = one[name][:1]
            del one[name]
            one[name] = first
        one.attrs["num_samples"] = 1
        one["rewards"][...] = -0.5
        f["data/demo_0/rewards"][...] = -0.3  # 6 steps, one constant, never positive: no signal
        f["data/demo_2/rewards"][...] = -np.linspace(1.0, 0.1, f["data/demo_2/rewards"].shape[0])
        for name in ("demo_0", "demo_1", "demo_2"):
            f[f"data/{name}"].attrs["ep_meta"] = json.dumps({"success": True})
        f["data"].attrs["total"] = 6 + 1 + 5
    assert main([str(path), "--demos"]) == 0
    out = capsys.readouterr().out
    assert "warning: the rewards disagree with ep_meta: 1 of 3 episodes marked successful have no positive reward" \
        in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("demo_")}
    assert rows["demo_1"].split()[3:] == ["yes", "-", "(1", "step)"] and rows["demo_0"].split()[3:] == ["yes", "no"]


def test_hdf5_without_images_skips_the_sheet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_tiny_hdf5(tmp_path / "state.hdf5", with_images=False)
    assert main([str(path), "--out", str(tmp_path / "sheet.png")]) == 0
    assert "contact sheet: skipped" in capsys.readouterr().out
    assert not (tmp_path / "sheet.png").exists()


def test_summary_flags_what_training_would_refuse(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Cameras the contract does not read as they are (channels first, grey, non-square, float) and NaN / inf in
    low-dim parts and actions, each named with its first demo and row; a clean file says none of it."""
    from robopretrain.data.inspect import format_hdf5_summary, layout_note

    path = write_tiny_hdf5(tmp_path / "bad.hdf5")
    with h5py.File(path, "a") as f:
        f["data/demo_0/obs/front"] = np.zeros((6, 3, 16, 16), np.uint8)
        f["data/demo_0/obs/wide"] = np.zeros((6, 16, 24, 3), np.uint8)
        f["data/demo_2/obs/proprio"][3, 2] = np.inf
        f["data/demo_1/actions"][2, 0] = np.nan
        del f["data/demo_0/next_obs/proprio"]
        f["data/demo_0/next_obs/proprio"] = np.where(np.arange(6)[:, None] == 1, np.nan, 0.0) * np.ones((1, 7))
        f["data/demo_1/rewards"][0] = np.inf
        f["data/demo_0/obs/depth"] = np.zeros((6, 16, 16), np.uint8)
    text = format_hdf5_summary(summarize_hdf5(path))
    assert "obs/front" in text and "channels first?" in text and "not square" in text
    assert "warning: obs/proprio holds NaN or inf (first at demo_2 row 3)" in text
    assert "warning: actions holds NaN or inf (first at demo_1 row 2)" in text
    assert "warning: next_obs/proprio holds NaN or inf (first at demo_0 row 1)" in text
    assert "warning: rewards holds NaN or inf (first at demo_1 row 0)" in text
    assert "grey frames: a camera of the stages, read as RGB" in text  # (H, W) uint8: accepted now
    # the sheet of a channels-first camera is drawn as the agent would see it (it crashed in imshow)
    chw = write_tiny_hdf5(tmp_path / "chw.hdf5")
    with h5py.File(chw, "a") as f:
        for i in range(len(DEMOS)):
            img = f[f"data/demo_{i}/obs/agentview_image"][()]
            del f[f"data/demo_{i}/obs/agentview_image"]
            f[f"data/demo_{i}/obs/agentview_image"] = img.transpose(0, 3, 1, 2)
    assert main([str(chw), "--frames", "2"]) == 0 and (tmp_path / "chw_contact_sheet.png").is_file()
    capsys.readouterr()
    from robopretrain.data.inspect import hdf5_sheet_rows

    rows, key = hdf5_sheet_rows(chw, 2, 1)
    with h5py.File(chw, "r") as f:
        first = f["data/demo_0/obs/agentview_image"][0].transpose(1, 2, 0)  # (16, 16, 3)
    assert key == "agentview_image" and rows[0][1].shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(rows[0][1][0], first)
    clean = format_hdf5_summary(summarize_hdf5(write_tiny_hdf5(tmp_path / "ok.hdf5")))
    assert "warning" not in clean and "channels first" not in clean and "not square" not in clean
    assert layout_note((16, 16, 4), "uint8").startswith("4 channel") and "dtype float32" in layout_note(
        (16, 16, 3), "float32")
    assert layout_note((16, 16, 3), "uint8") == layout_note((7,), "float32") == layout_note((3, 4, 5), "uint8") == ""
    for grey in ((32, 40, 1), (32, 40)):  # a grey camera is flagged not square too (it was not)
        assert layout_note(grey, "uint8").endswith("(grey in each channel); not square: training needs square frames "
                                                   "(data.image_size=S resizes them, in a cached copy)")
    assert "not square" not in layout_note((32, 32, 1), "uint8") + layout_note((32, 32), "uint8")
    # float frames: the cached uint8 copy (data.image_size) only where it converts them; a depth map is no camera
    assert "data.image_size=S reads a cached copy" in layout_note((16, 16, 3), "float32", "agentview_image")
    assert "only of keys named *_image: rename it 'rgb_image'" in layout_note((16, 16, 3), "float32", "rgb")
    for depth in ((16, 16, 1), (1, 16, 16)):
        assert layout_note(depth, "float32", "depth_image") == ("float32 frames of one channel (a depth map?): no "
                                                               "colour camera; leave it out of obs.rgb")


def test_a_demo_of_another_action_size_is_listed(tmp_path: Path) -> None:
    """One demo's actions of another size (training refuses the file, naming it): the summary says so, not just the
    first demo's size."""
    from robopretrain.data.inspect import format_hdf5_summary

    path = write_tiny_hdf5(tmp_path / "mix.hdf5", with_images=False)
    with h5py.File(path, "a") as f:
        del f["data/demo_1/actions"]
        f["data/demo_1/actions"] = np.zeros((4, 3), np.float32)
    s = summarize_hdf5(path)
    assert s.actions == ((4,), "float32") and s.odd_actions == {"demo_1": (3,)}
    text = format_hdf5_summary(s)
    assert "(differs between demos)" in text
    assert "warning: actions of 1 demo(s) differ in size from the other demos' (4,) (demo_1 (3,)): training " \
           "refuses the file" in text
    assert summarize_hdf5(write_tiny_hdf5(tmp_path / "ok.hdf5")).odd_actions == {}
    first = write_tiny_hdf5(tmp_path / "first.hdf5", with_images=False)
    with h5py.File(first, "a") as f:  # the odd demo first: it is the one named
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.zeros((6, 3), np.float32)
    s = summarize_hdf5(first)
    assert s.actions == ((4,), "float32") and s.odd_actions == {"demo_0": (3,)}


def test_a_demo_with_task_but_no_task_id_is_listed_as_training_refuses_it(tmp_path: Path) -> None:
    from robopretrain.data.hdf5 import DatasetError, read_info
    from robopretrain.data.inspect import format_hdf5_summary

    path = write_tiny_hdf5(tmp_path / "half.hdf5", with_images=False)
    with h5py.File(path, "a") as f:
        del f["data/demo_1"].attrs["task_id"]
        del f["data/demo_2"].attrs["task"]
    s = summarize_hdf5(path)
    assert s.half_task == {"demo_1": "task_id", "demo_2": "task"}
    assert "warning: 2 demo(s) lack the attribute 'task' / 'task_id' but hold the other (demo_1, demo_2): training " \
           "refuses them" in format_hdf5_summary(s)
    with pytest.raises(DatasetError, match="data/demo_1: missing attribute 'task_id'"):  # as said
        read_info(path)
    assert summarize_hdf5(write_tiny_hdf5(tmp_path / "ok.hdf5")).half_task == {}


def test_two_tasks_of_one_task_id_are_listed_as_training_refuses_them(tmp_path: Path) -> None:
    """Lift given PushBlock's task_id 1, and a demo without task attributes (slot 0) beside a task of id 0: each
    shared slot named with its tasks, as stage 2 refuses them (robopretrain.build.check_file_task_slots)."""
    path = write_tiny_hdf5(tmp_path / "shared.hdf5", with_images=False)
    with h5py.File(path, "a") as f:
        f["data/demo_2"].attrs["task_id"] = 1
    s = summarize_hdf5(path)
    assert s.shared_slots == {1: ["Lift", "PushBlock"]}
    assert ("warning: tasks 'Lift', 'PushBlock' all have task_id 1: the agent could not tell them apart, so "
            "training refuses the file") in format_hdf5_summary(s)
    with h5py.File(path, "a") as f:
        f["data/demo_2"].attrs["task_id"] = 0
        del f["data/demo_0"].attrs["task"], f["data/demo_0"].attrs["task_id"]
    s = summarize_hdf5(path)
    assert s.shared_slots == {0: ["(no task attr)", "Lift"]}
    assert "(demos without task attributes take slot 0)" in format_hdf5_summary(s)
    assert summarize_hdf5(write_tiny_hdf5(tmp_path / "ok.hdf5")).shared_slots == {}


def test_a_next_obs_part_missing_is_listed_with_the_copy_the_stages_read(tmp_path: Path) -> None:
    from robopretrain.data.hdf5 import DatasetError, load_transitions

    path = write_tiny_hdf5(tmp_path / "no_next.hdf5")
    assert summarize_hdf5(path).missing_next == {}
    assert "next_obs lacks" not in format_hdf5_summary(summarize_hdf5(path))
    with h5py.File(path, "a") as f:
        del f["data/demo_1/next_obs/proprio"], f["data/demo_2/next_obs"]
    s = summarize_hdf5(path)
    assert s.missing_next == {"proprio": ["demo_1", "demo_2"], "agentview_image": ["demo_2"]}
    assert ("note: next_obs lacks agentview_image, proprio in 2 demo(s) (demo_1, demo_2): the stages read the file "
            "through a cached copy with next_obs derived") in format_hdf5_summary(s)
    with pytest.raises(DatasetError, match="demo_1/next_obs/proprio: missing .* read a file that lacks it through a "
                                           "copy with next_obs derived"):  # the reader itself refuses it
        load_transitions(path, ["proprio"])


def test_actions_their_recorded_units_and_failed_terminals_are_said_as_training_reads_them(tmp_path: Path) -> None:
    """inspect said nothing of actions: their range, actions past [-1, 1] (stage 2 rescales them), a malformed or
    mis-sized action_normalization (training refuses it), and failures ending on done=1 (training warns)."""
    from robopretrain.data.hdf5 import read_info

    path = write_tiny_hdf5(tmp_path / "a.hdf5", with_images=False)
    with h5py.File(path, "a") as f:
        lows = [f[f"data/demo_{i}/actions"][()].min(0) for i in range(3)]
        highs = [f[f"data/demo_{i}/actions"][()].max(0) for i in range(3)]
    s = summarize_hdf5(path)
    np.testing.assert_allclose(s.action_low, np.min(lows, 0), rtol=1e-6)
    np.testing.assert_allclose(s.action_high, np.max(highs, 0), rtol=1e-6)
    text = format_hdf5_summary(s)
    assert "  range [" in text and "leave [-1, 1]" not in text and s.failed_terminals == []
    assert "data.action_bounds" not in text  # the tiny file's actions span [-1, 1]
    with h5py.File(path, "a") as f:  # dimensions 0 and 2 in a +-0.05 box (a delta in metres), as a recorder wrote
        for i in range(3):
            f[f"data/demo_{i}/actions"][:, [0, 2]] = 0.05 * f[f"data/demo_{i}/actions"][:, [0, 2]]
    reach = np.maximum(np.abs(summarize_hdf5(path).action_low), np.abs(summarize_hdf5(path).action_high))
    assert f"note: actions of dimension(s) [0, 2] stay within +-[{reach[0]:.4g}, {reach[2]:.4g}]" in \
        format_hdf5_summary(summarize_hdf5(path)) and reach[0] <= 0.05 and reach[1] > 0.25
    with h5py.File(path, "a") as f:  # dimension 0 recorded as rescaled (from +-0.1), the others kept at [-1, 1], as a
        env_args = json.loads(f["data"].attrs["env_args"])  # conversion records them: dimension 2 is still narrow
        f["data"].attrs["env_args"] = json.dumps({**env_args, "action_normalization": {
            "low": [-0.1, -1.0, -1.0, -1.0], "high": [0.1, 1.0, 1.0, 1.0]}})
    text = format_hdf5_summary(summarize_hdf5(path))
    assert "note: actions recorded as rescaled" in text and "note: actions of dimension(s) [2] stay within" in text
    with h5py.File(path, "a") as f:
        f["data"].attrs["env_args"] = json.dumps(env_args)
    with h5py.File(path, "a") as f:
        f["data/demo_2/actions"][0, 1] = 3.5
        f["data/demo_1/dones"][-1] = 1  # demo_1 failed (ep_meta) and now ends on done=1
    s = summarize_hdf5(path)
    assert s.action_high[1] == pytest.approx(3.5) and s.failed_terminals == ["demo_1"]
    text = format_hdf5_summary(s)
    assert "note: actions leave [-1, 1] and the file records no units: stage 2 (data.actions=auto) rescales" in text
    assert "warning: 1 episode(s) end on done=1 without success (demo_1)" in text
    from robopretrain.data.dataset import file_action_units  # training's reading of the record
    from robopretrain.data.hdf5 import DatasetError

    for record, refusal in (({"low": [1.0] * 4, "high": [0.0] * 4}, "env_args: "),
                            ({"low": [-1.0] * 2, "high": [1.0] * 2}, "action_normalization has 2 dims, the actions 4")):
        with h5py.File(path, "a") as f:
            env_args = json.loads(f["data"].attrs["env_args"])
            f["data"].attrs["env_args"] = json.dumps({**env_args, "action_normalization": record})
        s = summarize_hdf5(path)
        assert s.units_problem is not None and refusal in s.units_problem
        assert f"warning: training refuses the file: {s.units_problem}" in format_hdf5_summary(s)
        with pytest.raises(DatasetError, match=refusal.split(":")[0]):  # as said
            file_action_units(read_info(path))


def test_a_done_before_the_last_step_is_listed(tmp_path: Path) -> None:
    """dones=1 inside an episode (read as a terminal there): named with demo and step; not for an OGBench conversion,
    whose task-done steps are marked so by design."""
    from robopretrain.data.inspect import format_hdf5_summary

    path = write_tiny_hdf5(tmp_path / "mid.hdf5", with_images=False)
    with h5py.File(path, "a") as f:
        f["data/demo_1/dones"][1] = 1
        f["data/demo_2/dones"][0] = 1
    s = summarize_hdf5(path)
    assert s.inner_dones == {"demo_1": [1], "demo_2": [0]}  # demo_0's done on its last step is the contract's
    assert "warning: dones=1 before the last step in 2 demo(s) (demo_1 step 1; demo_2 step 0): training reads each " \
           "as a terminal" in format_hdf5_summary(s)
    assert summarize_hdf5(write_tiny_hdf5(tmp_path / "ok.hdf5")).inner_dones == {}
    with h5py.File(path, "a") as f:
        f["data"].attrs["env_args"] = json.dumps({"env_name": "ogbench/cube", "type": "ogbench"})
    assert summarize_hdf5(path).inner_dones == {}


def test_a_num_samples_attribute_that_disagrees_with_the_rows_is_listed(tmp_path: Path) -> None:
    """A demo whose num_samples says 15 while its arrays hold 20 rows: the reader refuses it, inspect said only that
    data's total disagreed with the sum (as if total were wrong)."""
    from robopretrain.data.inspect import format_hdf5_summary

    path = write_tiny_hdf5(tmp_path / "n.hdf5")
    assert summarize_hdf5(path).wrong_rows == {}
    with h5py.File(path, "a") as f:
        n = int(f["data/demo_1"].attrs["num_samples"])
        f["data/demo_1"].attrs["num_samples"] = n - 1
        del f["data/demo_2/rewards"]  # optional: absent is no row count
    s = summarize_hdf5(path)
    assert s.wrong_rows == {"demo_1": (n - 1, [n])}
    assert (f"warning: the num_samples attribute disagrees with the arrays' rows in 1 demo(s) (demo_1: num_samples "
            f"{n - 1}, arrays of {n} rows): training refuses them") in format_hdf5_summary(s)
    with h5py.File(path, "a") as f:
        del f["data/demo_1/next_obs/proprio"]
        f["data/demo_1/next_obs/proprio"] = np.zeros((n + 2, 7), np.float32)
    assert summarize_hdf5(path).wrong_rows == {"demo_1": (n - 1, [n, n + 2])}


@pytest.mark.parametrize("damage, refusal", [
    (lambda f: f["data"].attrs.__delitem__("env_args"), "data: missing attribute 'env_args'"),
    (lambda f: f["data/demo_1"].attrs.__delitem__("num_samples"), "data/demo_1: missing attribute 'num_samples'"),
    (lambda f: f.__delitem__("data/demo_2/dones"), "data/demo_2/dones: missing"),
])
def test_what_the_reader_refuses_is_said(tmp_path: Path, damage, refusal) -> None:
    """A file without dones or env_args, or a demo's num_samples, got a normal summary, and training then refused
    it, one problem per run (data's total is optional, as in robomimic's readers)."""
    path = write_tiny_hdf5(tmp_path / "d.hdf5")
    assert "training refuses" not in format_hdf5_summary(summarize_hdf5(path))
    with h5py.File(path, "a") as f:
        damage(f)
    text = format_hdf5_summary(summarize_hdf5(path))
    assert f"warning: training refuses the file: {path}: {refusal}" in text
    assert text.count("training refuses") == 1


def test_a_refusal_beside_a_short_demo_is_still_said(tmp_path: Path) -> None:
    """A file without dones whose other demo is short: the short-demo warning hid the reader's refusal (the reader
    skips short demos, so its problem is another one)."""
    path = write_tiny_hdf5(tmp_path / "d.hdf5")
    with h5py.File(path, "a") as f:
        del f["data/demo_2/dones"]
        f["data/demo_1"].attrs["num_samples"] = 1
        for group in ("obs", "next_obs"):
            for key, ds in list(f[f"data/demo_1/{group}"].items()):
                data = ds[:1]
                del f[f"data/demo_1/{group}/{key}"]
                f[f"data/demo_1/{group}/{key}"] = data
        for key in ("actions", "rewards", "dones"):
            data = f[f"data/demo_1/{key}"][:1]
            del f[f"data/demo_1/{key}"]
            f[f"data/demo_1/{key}"] = data
        f["data"].attrs["total"] = sum(int(d.attrs["num_samples"]) for d in f["data"].values())
    text = format_hdf5_summary(summarize_hdf5(path))
    assert "1 demo(s) of fewer than 2 steps (demo_1)" in text
    assert f"warning: training refuses the file: {path}: data/demo_2/dones: missing" in text


def test_demos_too_short_to_train_on_are_listed(tmp_path: Path) -> None:
    """A one-step demo showed only as len_min 1; training refuses it (data.skip_short_demos leaves it out)."""
    from robopretrain.data.inspect import format_hdf5_summary

    path = write_tiny_hdf5(tmp_path / "s.hdf5")
    assert "fewer than 2 steps" not in format_hdf5_summary(summarize_hdf5(path))
    with h5py.File(path, "a") as f:
        f["data/demo_2"].attrs["num_samples"] = 1
    assert ("warning: 1 demo(s) of fewer than 2 steps (demo_2): training refuses them; data.skip_short_demos=true "
            "leaves them out") in format_hdf5_summary(summarize_hdf5(path))


def test_a_file_with_an_empty_demo_is_summarized(tmp_path: Path) -> None:
    """The files people inspect after the reader refused them: an empty demo (its rows are not scanned)."""
    from robopretrain.data.inspect import format_hdf5_summary

    path = write_tiny_hdf5(tmp_path / "e.hdf5")
    with h5py.File(path, "a") as f:
        for group in ("obs", "next_obs"):
            f.create_dataset(f"data/demo_1/{group}/empty", data=np.zeros((0, 3), np.float32))
    assert "obs/empty" in format_hdf5_summary(summarize_hdf5(path))


def test_long_observation_keys_keep_the_shape_column_aligned(tmp_path: Path) -> None:
    """LeRobot's keys (observation.images.front) ran into the shape column."""
    from robopretrain.data.inspect import format_hdf5_summary

    path = write_tiny_hdf5(tmp_path / "e.hdf5")
    with h5py.File(path, "a") as f:
        for demo in f["data"]:
            n = f[f"data/{demo}/actions"].shape[0]
            for group in ("obs", "next_obs"):
                f.create_dataset(f"data/{demo}/{group}/observation.images.front_camera", data=np.zeros((n, 5)))
    text = format_hdf5_summary(summarize_hdf5(path))
    rows = [line for line in text.splitlines() if line.startswith(("  obs/", "  actions"))]
    assert len(rows) >= 3 and len({line.index("(") for line in rows}) == 1, rows


def test_summary_counts_success_from_ep_meta(tmp_path: Path) -> None:
    s = summarize_hdf5(write_tiny_hdf5(tmp_path / "d.hdf5"))
    assert s.tasks["PushBlock"].successes == [True, False]
    assert s.transitions == 15 and s.total_attr == 15
    assert "read from their sparse rewards" not in format_hdf5_summary(s)  # ep_meta says it


def test_without_ep_meta_success_comes_from_sparse_rewards(tmp_path: Path) -> None:
    """robomimic's own files have no ep_meta: the rate was n/a though every demo ended on reward 1 (stage 3 counts
    such demos as successful); dense rewards say nothing."""
    from robopretrain.data.inspect import hdf5_sheet_rows

    path = write_tiny_hdf5(tmp_path / "d.hdf5")
    with h5py.File(path, "r+") as f:
        for demo in f["data"].values():
            del demo.attrs["ep_meta"]
    s = summarize_hdf5(path)
    assert s.tasks["PushBlock"].success_rate == 0.5 and s.tasks["PushBlock"].successes == [None, None]
    text = format_hdf5_summary(s)
    assert f"note: success of {len(DEMOS)} of {len(DEMOS)} demos read from their sparse rewards" in text
    labels = [label for label, _ in hdf5_sheet_rows(path, 2, 2)[0]]  # the contact sheet's rows say it too
    assert labels[:2] == ["PushBlock\ndemo_0 (success, 6 steps)", "PushBlock\ndemo_1 (failure, 4 steps)"], labels
    with h5py.File(path, "r+") as f:
        f["data/demo_0/rewards"][0] = 0.5  # no longer sparse: this demo's success is unknown
    assert summarize_hdf5(path).tasks["PushBlock"].success_rate == 0.0  # demo_1 alone, which failed


def test_video_folder_summary_and_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_tiny_video_folder(tmp_path / "videos")
    out_png = tmp_path / "sheet.png"
    assert main([str(folder), "--out", str(out_png), "--frames", "4", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "clips: 2 (2 .mp4)" in out
    assert "mean 7.0, min 5, max 9; total 14" in out
    assert "1  a hand waves" in out and "1  a hand pokes" in out
    assert "all match the manifest" in out
    with Image.open(out_png) as im:
        assert im.format == "PNG"
    assert main([str(folder)]) == 0  # default path: next to the folder
    assert (tmp_path / "videos_contact_sheet.png").is_file()
    # a corrupt clip, which stage 1 skips: listed, the rest summarised and drawn (inspect stopped with an error)
    (folder / "clip_00001.mp4").write_bytes(b"not a video")
    assert main([str(folder), "--out", str(out_png), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "clip_00001.mp4: unreadable" in out and "clips under" not in out
    # counted as stage 1 uses the folder: the unreadable clip is not in the totals (they held its manifest count)
    assert "clips: 1 (1 .mp4)" in out and "total 5\n" in out
    assert main([str(folder), "--out", str(out_png)]) == 0  # unchecked: the manifest's counts, said to be
    out = capsys.readouterr().out
    assert "total 14 (as manifest.csv says; --verify counts them)" in out
    assert "unreadable clips (left out of the sheet" in out  # found when the sheet draws it


def test_a_manifest_overstating_frame_counts_is_listed_under_verify(tmp_path: Path, capsys) -> None:
    """Stage 1 uses such clips with their counted frames (a warning); inspect --verify stopped on one decode error
    (the sheet drew frames past the end) with no mismatch list, and without --verify called them unreadable."""
    folder = write_tiny_video_folder(tmp_path / "videos")
    (folder / "manifest.csv").write_text("path,num_frames,text\nclip_00000.mp4,50,a\nclip_00001.mp4,90,b\n")
    assert main([str(folder), "--out", str(tmp_path / "s.png"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "clip_00000.mp4: 5 frames, manifest says 50" in out and "clip_00001.mp4: 9 frames, manifest says 90" in out
    assert "mean 7.0, min 5, max 9; total 14" in out  # the counted frames, as stage 1 uses them
    # without --verify: the sheet's clips are drawn with their own frames and named (they were listed as unreadable,
    # "stage 1 skips them", while stage 1 trains on them; with every clip overstated inspect stopped with an error)
    assert main([str(folder), "--out", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    assert "clips shorter than the manifest says (drawn with their frames; stage 1 uses those" in out
    assert "clip_00001.mp4: 9 frames, manifest says 90" in out and "unreadable" not in out


def test_video_folder_summary_names_clips_too_short_for_stage_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A 1-frame clip: stage 1 skips it, so the summary names it (it said only "min 1")."""
    from robopretrain.data.inspect import STAGE1_MIN_FRAMES
    from video_pretrain.sampling import SAMPLERS

    assert STAGE1_MIN_FRAMES == max(cls.min_length for cls in SAMPLERS.values())  # kept in step with stage 1
    folder = write_tiny_video_folder(tmp_path / "videos")
    write_mp4(folder / "still.mp4", [np.full((16, 16, 3), 90, np.uint8)], fps=10)
    with (folder / "manifest.csv").open("a") as f:
        f.write("still.mp4,1,a still\n")
    assert main([str(folder), "--out", str(tmp_path / "s.png")]) == 0
    assert "clips under 3 frames (stage 1's VIP and TCN skip them; ICVF uses those of 2): 1: still.mp4 (1)" in \
        capsys.readouterr().out


def _error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error_line(capsys, [str(tmp_path / "nope.hdf5")])
    assert "nope.hdf5" in err and "no such file" in err

    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5 at all")
    err = _error_line(capsys, [str(text)])
    assert "notes.hdf5" in err and "not an HDF5 file" in err

    full = write_tiny_hdf5(tmp_path / "full.hdf5").read_bytes()
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(full[: len(full) // 2])
    err = _error_line(capsys, [str(truncated)])
    assert "truncated.hdf5" in err and "truncated or corrupt" in err

    no_data = tmp_path / "nodata.hdf5"
    with h5py.File(no_data, "w") as f:
        f.create_group("something_else")
    err = _error_line(capsys, [str(no_data)])
    assert "nodata.hdf5" in err and "no 'data' group" in err

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    err = _error_line(capsys, [str(empty)])
    assert "empty_folder" in err and "manifest.csv" in err

    folder = write_tiny_video_folder(tmp_path / "vids")
    for clip in ("clip_00000.mp4", "clip_00001.mp4"):  # one corrupt clip is listed (above); all: an error
        (folder / clip).write_bytes(b"garbage" * 50)
    err = _error_line(capsys, [str(folder)])
    assert "no clip drawn for the contact sheet can be decoded" in err and "corrupt" in err and "1 more" in err


def test_cli_error_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "robopretrain.data.inspect", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "missing" in proc.stderr


def test_output_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    """``inspect FILE --demos | head``: the reader gone, the summary's print raised BrokenPipeError with a traceback
    (twice: again at the interpreter's final flush)."""
    path = write_tiny_hdf5(tmp_path / "d.hdf5", with_images=False)
    proc = subprocess.Popen([sys.executable, "-m", "robopretrain.data.inspect", str(path), "--demos"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before it prints: every write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and err == "", err


def test_a_folder_of_videos_without_a_manifest_and_one_video_file_are_summarised(tmp_path: Path, capsys) -> None:
    """Stage 1 reads a folder of clips without manifest.csv and a single video file; inspect refused both (a folder
    without manifest.csv; the video file read as an HDF5 file)."""
    folder = write_tiny_video_folder(tmp_path / "videos")
    (folder / "manifest.csv").unlink()
    assert main([str(folder), "--out", str(tmp_path / "s.png"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "clips: 2 (2 .mp4)" in out and "mean 7.0, min 5, max 9; total 14" in out  # counted, as in the manifest
    assert "no manifest.csv: the clips stage 1 reads" in out and "all match the manifest" not in out
    assert main([str(folder / "clip_00001.mp4"), "--out", str(tmp_path / "one.png")]) == 0
    out = capsys.readouterr().out
    assert "clips: 1 (1 .mp4)" in out and "total 9" in out
    assert (tmp_path / "one.png").is_file()
    (folder / "clip_00000.mp4").write_bytes(b"not a video")  # unreadable: named, the other summarised
    assert main([str(folder), "--out", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "clips: 1 (1 .mp4)" in out and "clip_00000.mp4: unreadable" in out
