"""robomimic HDF5 reader: loading the right keys/demos, and clear errors on broken files."""

import json
import logging

import h5py
import numpy as np
import pytest
import torch

from robopretrain.data.hdf5 import DatasetError, load_transitions, read_info, select_demos

TASKS = {"lift": 0, "push": 1}


def write_dataset(path, lengths=(3, 4, 2), tasks=("lift", "push", "lift"), mutate=None):
    """A tiny valid file: demo_<i> for i in 0, 1, 10 (checks numeric sort), proprio + image obs."""
    names = ["demo_0", "demo_1", "demo_10"][: len(lengths)]
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = int(sum(lengths))
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_version": "0", "type": 1, "env_kwargs": {}})
        for i, (name, n, task) in enumerate(zip(names, lengths, tasks)):
            g = data.create_group(name)
            g.attrs["num_samples"] = n
            g.attrs["task"] = task
            g.attrs["task_id"] = TASKS[task]
            g.attrs["ep_meta"] = json.dumps({"success": i % 2 == 0, "expert_noise": 0.1})
            states = (100 * i + np.arange(n + 1, dtype=np.float32))[:, None] * np.ones((1, 3), np.float32)
            g["obs/proprio"] = states[:-1]
            g["next_obs/proprio"] = states[1:]
            g["obs/agentview_image"] = np.full((n, 4, 4, 3), i, dtype=np.uint8)
            g["next_obs/agentview_image"] = np.full((n, 4, 4, 3), i, dtype=np.uint8)
            g["actions"] = np.linspace(-1, 1, n * 2, dtype=np.float32).reshape(n, 2)
            g["rewards"] = (np.arange(n) == n - 1).astype(np.float32)  # 1 on the last step
            g["dones"] = (np.arange(n) == n - 1).astype(np.int64)
        mask = f.create_group("mask")
        mask["train"] = np.array([names[0], names[-1]], dtype="S")
        mask["valid"] = np.array(names[1:2], dtype="S")
        for task in set(tasks):
            mask[task] = np.array([n for n, t in zip(names, tasks) if t == task], dtype="S")
        if mutate is not None:
            mutate(f)
    return path


def test_loads_selected_keys_demos_in_numeric_order(tmp_path):
    path = write_dataset(tmp_path / "ok.hdf5")
    tr = load_transitions(path, ["proprio"])
    assert tr.demo_names == ["demo_0", "demo_1", "demo_10"]
    assert set(tr.obs) == {"proprio"} and tr.obs["proprio"].dtype == np.float32
    assert len(tr) == 9 and tr.actions.shape == (9, 2)
    assert tr.episode_ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert tr.task_ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0]
    np.testing.assert_array_equal(tr.obs["proprio"][7:, 0], [200.0, 201.0])
    assert tr.ep_meta[0]["success"] is True and tr.episode_tasks == ["lift", "push", "lift"]
    assert tr.dones.dtype == np.float32 and tr.dones.tolist()[:3] == [0, 0, 1]


def test_select_by_mask_and_task_and_images(tmp_path):
    path = write_dataset(tmp_path / "ok.hdf5")
    info = read_info(path)
    assert info.tasks == TASKS and info.action_dim == 2 and info.total == 9
    assert select_demos(info, mask="train") == ["demo_0", "demo_10"]
    tr = load_transitions(path, ["agentview_image", "proprio"], tasks=["push"])
    assert tr.demo_names == ["demo_1"]
    assert tr.obs["agentview_image"].dtype == np.uint8 and tr.obs["agentview_image"].shape == (4, 4, 4, 3)
    tr = load_transitions(path, ["proprio"], mask="train", tasks=["lift"])
    assert tr.demo_names == ["demo_0", "demo_10"]
    # one demo named as a string, as tasks takes one task (it was read letter by letter: unknown demo(s) ['d', ...])
    assert select_demos(info, demos="demo_10") == ["demo_10"]
    assert load_transitions(path, ["proprio"], demos="demo_1").demo_names == ["demo_1"]


def _expect(path, match, **kwargs):
    with pytest.raises(DatasetError, match=match) as exc:
        load_transitions(path, kwargs.pop("keys", ["proprio"]), **kwargs)
    assert str(path) in str(exc.value)
    return str(exc.value)


def test_missing_key(tmp_path):
    path = write_dataset(tmp_path / "m.hdf5", mutate=lambda f: f["data/demo_1/next_obs"].__delitem__("proprio"))
    msg = _expect(path, "missing")
    assert "data/demo_1/next_obs/proprio" in msg
    path = write_dataset(tmp_path / "m2.hdf5", mutate=lambda f: f["data/demo_0"].__delitem__("dones"))
    assert "data/demo_0/dones" in _expect(path, "missing")
    # rewards are optional (a reward-free recording): read as zeros, listed for the loaders that need them
    path = write_dataset(tmp_path / "m4.hdf5", mutate=lambda f: f["data/demo_0"].__delitem__("rewards"))
    assert read_info(path).unrewarded() == ["demo_0"]
    trans = load_transitions(path, ["proprio"])
    assert not trans.rewards[trans.episode_ids == 0].any()
    _expect(write_dataset(tmp_path / "m3.hdf5"), "object", keys=["object"])

    def column_rewards(f):  # numeric, of the wrong shape: (n, 1) where (n,) is read
        r = f["data/demo_1/rewards"][()]
        del f["data/demo_1/rewards"]
        f["data/demo_1/rewards"] = r[:, None]
    msg = _expect(write_dataset(tmp_path / "m5.hdf5", mutate=column_rewards), r"expected a numeric array of shape "
                                                                                r"\(4,\), got float32 \(4, 1\)")
    assert "data/demo_1/rewards" in msg


def test_wrong_dtype_and_shape(tmp_path):
    def bad_image(f):
        del f["data/demo_0/obs/agentview_image"]
        f["data/demo_0/obs/agentview_image"] = np.zeros((3, 4, 4, 3), dtype=np.float32)

    msg = _expect(write_dataset(tmp_path / "img.hdf5", mutate=bad_image), "uint8", keys=["agentview_image"])
    assert "data/demo_0/obs/agentview_image" in msg

    def int_actions(f):
        del f["data/demo_10/actions"]
        f["data/demo_10/actions"] = np.zeros((2, 2), dtype=np.int32)

    assert "data/demo_10/actions" in _expect(write_dataset(tmp_path / "a.hdf5", mutate=int_actions), "float actions")

    def wrong_count(f):  # num_samples disagrees with the arrays: it blamed the (float) actions' type
        f["data/demo_1"].attrs["num_samples"] = 2
        f["data"].attrs["total"] = 7

    _expect(write_dataset(tmp_path / "n.hdf5", mutate=wrong_count), r"data/demo_1/obs/proprio: 4 rows, but the demo's "
            r"num_samples attribute says 2: every array of a demo has num_samples rows")

    def wide_actions(f):
        del f["data/demo_1/actions"]
        f["data/demo_1/actions"] = np.zeros((4, 3), dtype=np.float32)

    _expect(write_dataset(tmp_path / "w.hdf5", mutate=wide_actions), r"3-D in 1 demo\(s\) \(demo_1\)")

    def big_actions(f):
        f["data/demo_0/actions"][0, 0] = 1.5

    _expect(write_dataset(tmp_path / "b.hdf5", mutate=big_actions), r"outside \[-1, 1\]")

    def wider_proprio(f):  # a later demo's part of another size than the first demo's
        del f["data/demo_1/next_obs/proprio"]
        f["data/demo_1/next_obs/proprio"] = np.zeros((4, 5), dtype=np.float32)

    msg = _expect(write_dataset(tmp_path / "c.hdf5", mutate=wider_proprio), "as in the first demo")
    assert "data/demo_1/next_obs/proprio" in msg and "(5,)" in msg


def test_image_keys_are_told_by_suffix_or_by_shape(tmp_path):
    """A camera is an ``*_image`` key or any (N, H, W, C) array (a user's ``front_rgb``): images=False leaves every
    camera out and keeps the low-dim parts; an ``*_image`` key that is not (N, H, W, 3) uint8 is refused."""
    def own_camera(f):
        for d, n in (("demo_0", 3), ("demo_1", 4), ("demo_10", 2)):
            for part in ("obs", "next_obs"):
                f[f"data/{d}/{part}/front_rgb"] = np.zeros((n, 4, 4, 3), dtype=np.uint8)

    path = write_dataset(tmp_path / "cam.hdf5", mutate=own_camera)
    tr = load_transitions(path, ["proprio", "front_rgb", "agentview_image"], images=False)
    assert set(tr.obs) == set(tr.next_obs) == {"proprio"}
    assert load_transitions(path, ["front_rgb"]).obs["front_rgb"].shape == (9, 4, 4, 3)

    def flat_image(f):
        for d, n in (("demo_0", 3), ("demo_1", 4), ("demo_10", 2)):
            for part in ("obs", "next_obs"):
                del f[f"data/{d}/{part}/agentview_image"]
                f[f"data/{d}/{part}/agentview_image"] = np.zeros((n, 8), dtype=np.uint8)

    _expect(write_dataset(tmp_path / "flat.hdf5", mutate=flat_image), r"expected an image array uint8 \(N, H, W, 3\)",
            keys=["agentview_image"])


def test_a_low_dim_key_named_image_is_read_when_listed_as_low_dim(tmp_path):
    """A 5-D float ``goal_image``: listed as low-dim (obs.low_dim; load_transitions' low_dim) it is read as one in both
    storages (the disk path's frame index reads every key); not listed, the name rule refuses it as a malformed camera,
    saying the rule and what to write."""
    from robopretrain.data.dataset import RewardSettings, load_offline_dataset
    from robopretrain.data.spec import ObsSpec

    def goal(f):
        for d, n in (("demo_0", 3), ("demo_1", 4), ("demo_10", 2)):
            for part in ("obs", "next_obs"):
                f[f"data/{d}/{part}/goal_image"] = np.full((n, 5), 0.5, dtype=np.float32)

    path = write_dataset(tmp_path / "goal.hdf5", mutate=goal)
    msg = _expect(path, r"expected an image array uint8 \(N, H, W, 3\), or grey \(N, H, W, 1\) / \(N, H, W\), got "
                        r"float32 \(3, 5\) \(a key named \*_image is read as a camera unless listed as a low-dim "
                        r"part: obs.low_dim=\[..., goal_image\]",
                  keys=["proprio", "goal_image"])
    assert "\n" not in msg
    tr = load_transitions(path, ["proprio", "goal_image"], low_dim=["proprio", "goal_image"])
    assert tr.obs["goal_image"].shape == tr.next_obs["goal_image"].shape == (9, 5)
    tr = load_transitions(path, ["goal_image", "agentview_image"], images=False, low_dim=["goal_image"])
    assert set(tr.obs) == {"goal_image"}
    spec = ObsSpec(low_dim=(("proprio", 3), ("goal_image", 5)), rgb=(("agentview_image", (4, 4, 3)),))
    for storage in STORAGES:
        arrays = load_offline_dataset(path, spec, RewardSettings(), storage=storage).arrays()
        np.testing.assert_array_equal(arrays["observations"]["goal_image"], np.full((9, 5), 0.5, np.float32))
    renamed = ObsSpec(low_dim=(("goal", 5),))  # the obs_map route gives the same
    arrays = load_offline_dataset(path, renamed, RewardSettings(), obs_map={"goal": "goal_image"}).arrays()
    assert arrays["observations"]["goal"].shape == (9, 5)


@pytest.mark.parametrize("group", ["data", "data/demo_0/obs"])
def test_a_missing_or_non_group_data_or_obs_is_named(tmp_path, group):
    def as_dataset(f):
        del f[group]
        f[group] = np.zeros(3)

    for name, mutate in (("gone", lambda f: f.__delitem__(group)), ("dataset", as_dataset)):
        path = write_dataset(tmp_path / f"{name}.hdf5", mutate=mutate)
        with pytest.raises(DatasetError, match="missing group") as exc:
            read_info(path)
        assert group in str(exc.value)


def test_truncated_file(tmp_path):
    path = write_dataset(tmp_path / "t.hdf5")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="not a readable HDF5 file") as exc:
        load_transitions(path, ["proprio"])
    assert str(path) in str(exc.value)
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5 at all")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        read_info(junk)
    with pytest.raises(DatasetError, match="file not found"):
        read_info(tmp_path / "absent.hdf5")


def test_data_total_is_optional_and_a_stale_one_is_read_by_the_demos_as_robomimic_does(tmp_path, caplog):
    """robomimic's readers never read data's total: a file without it, or with one left stale after demos were
    removed, was refused (a new user's finding). Both are read by the demos' num_samples, the stale one warned
    about once; a demo whose num_samples disagrees with its rows is still refused."""
    plain = write_dataset(tmp_path / "plain.hdf5")
    bare = write_dataset(tmp_path / "bare.hdf5", mutate=lambda f: f["data"].attrs.__delitem__("total"))
    stale = write_dataset(tmp_path / "stale.hdf5", mutate=lambda f: f["data"].attrs.__setitem__("total", 99))
    expected = load_transitions(plain, ["proprio"])
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.hdf5"):
        for path in (bare, stale):
            assert read_info(path).total == 9
            np.testing.assert_array_equal(load_transitions(path, ["proprio"]).actions, expected.actions)
        read_info(stale)
    said = [r.getMessage() for r in caplog.records if "'total'" in r.getMessage()]
    assert said == [f"{stale}: data's attribute 'total' is 99 but the demos' num_samples sum to 9; read as robomimic "
                    "reads it, by the demos (set total to 9 to silence this)"]


def test_a_file_another_process_writes_is_named_as_such_not_as_corrupt(tmp_path):
    """HDF5's file lock refuses a reader while a writer has the file open: reported as "truncated or corrupt?", which
    sent the user looking for damage that is not there (a new user's finding). inspect says the same."""
    import subprocess
    import sys

    from robopretrain.data.inspect import InspectError, open_hdf5

    path = write_dataset(tmp_path / "held.hdf5")
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, h5py\n"
        f"f = h5py.File({str(path)!r}, 'a')\n"
        "print('open', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(DatasetError, match=r"held.hdf5: another process has it open for writing \(.*unable to "
                                               r"lock file.*\); wait until that process closes it"):
            read_info(path)
        with pytest.raises(InspectError, match="another process has it open for writing"):
            open_hdf5(path)
    finally:
        writer.kill()
        writer.wait()
    assert read_info(path).total == 9
    from robopretrain.data.hdf5 import open_failure  # a filesystem without locks is not "another process" (a review)

    nfs = OSError("Unable to synchronously open file (unable to lock file, errno = 37, error message = 'No locks "
                  "available')")
    assert open_failure(nfs).startswith("HDF5 cannot lock it on this filesystem") and \
        "HDF5_USE_FILE_LOCKING=FALSE" in open_failure(nfs)


def test_nan_and_inf(tmp_path):
    def nan(f):
        f["data/demo_1/next_obs/proprio"][2, 1] = np.nan

    msg = _expect(write_dataset(tmp_path / "n.hdf5", mutate=nan), "NaN or inf")
    assert "data/demo_1/next_obs/proprio" in msg and "row 2" in msg

    def inf(f):
        f["data/demo_0/rewards"][0] = np.inf

    assert "data/demo_0/rewards" in _expect(write_dataset(tmp_path / "i.hdf5", mutate=inf), "NaN or inf")

    def nan_action(f):
        f["data/demo_1/actions"][1, 0] = np.nan

    from robopretrain.data.hdf5 import action_bounds

    bad = write_dataset(tmp_path / "a.hdf5", mutate=nan_action)
    low, high = action_bounds(bad)  # the file's units: its finite actions (the selection's reader names the NaN)
    clean_low, clean_high = action_bounds(write_dataset(tmp_path / "clean.hdf5"))  # the NaN'd value is no extreme
    np.testing.assert_array_equal(low, clean_low) and np.testing.assert_array_equal(high, clean_high)

    def nan_dimension(f):
        for demo in f["data"].values():
            demo["actions"][:, 1] = np.nan

    with pytest.raises(DatasetError, match="some dimension has no finite value"):
        action_bounds(write_dataset(tmp_path / "all_nan.hdf5", mutate=nan_dimension))
    for storage in STORAGES:
        with pytest.raises(DatasetError, match="NaN or inf") as exc:
            _load(bad, storage)
        assert "data/demo_1/actions" in str(exc.value) and "row 1" in str(exc.value), (storage, exc.value)
        assert len(_load(bad, storage, mask="train")) == 3 + 2  # left out by a mask: not in the way


def test_a_finite_float64_value_beyond_float32_is_named_not_called_nan_or_inf(tmp_path):
    """A float64 reward of 1e39 became inf in float32 with numpy's overflow warning, then was refused as "contains
    NaN or inf", which the file does not hold (a new user's finding). Named as too large, on both storages."""
    import warnings

    def huge(f):
        rewards = f["data/demo_1/rewards"][()].astype(np.float64)
        rewards[2] = -1e39
        del f["data/demo_1/rewards"]
        f["data/demo_1/rewards"] = rewards

    path = write_dataset(tmp_path / "huge.hdf5", mutate=huge)
    from robopretrain.data.hdf5 import _read_into

    top = h5py.File(tmp_path / "top.hdf5", "w")  # float32's largest finite value, stored as float64: read, not refused
    top["r"] = np.array([np.finfo(np.float32).max], np.float64)
    out = np.zeros(1, np.float32)
    _read_into("top.hdf5", top["r"], "r", out, 0, 1)
    top.close()
    assert out[0] == np.finfo(np.float32).max
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning on the way
        for storage in STORAGES:
            with pytest.raises(DatasetError, match=r"huge.hdf5: data/demo_1/rewards: holds -1e\+39 \(first at row "
                                                   r"2\), beyond float32's range"):
                _load(path, storage)


STORAGES = ("memory", "disk")


def _load(path, storage, **kw):
    """load_offline_dataset of proprio and the camera with ``storage`` (disk: the frame index beside the file)."""
    from robopretrain.data.dataset import RewardSettings, load_offline_dataset
    from robopretrain.data.spec import ObsSpec

    spec = ObsSpec(low_dim=(("proprio", 3),), rgb=(("agentview_image", (4, 4, 3)),))
    return load_offline_dataset(path, spec, RewardSettings(), storage=storage, **kw)


def test_one_step_episode(tmp_path, caplog):
    path = write_dataset(tmp_path / "o.hdf5", lengths=(3, 1, 2))
    msg = _expect(path, "one-step episode")
    assert "data/demo_1" in msg
    assert "data.skip_short_demos=true" in msg
    for storage in STORAGES:  # the message's advice, skip_short or a mask of the other demos, works in both storages
        with pytest.raises(DatasetError, match="data/demo_1: episode has 1 step"):
            _load(path, storage)
        assert len(_load(path, storage, mask="train")) == 3 + 2
        skipped = _load(path, storage, skip_short=True, max_demos=2)  # max_demos counts the demos kept
        assert len(skipped) == 3 + 2  # demo_0 and demo_2: the short one left out before the first 2 are kept
    from robopretrain.build import data_task_ids
    from omegaconf import OmegaConf

    caplog.clear()  # the tasks' slots are read from the same selection without saying it a second time
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.dataset"):
        assert data_task_ids(read_info(path), OmegaConf.create({"skip_short_demos": True})) == {"lift": 0}
    assert "fewer than 2 steps left out" not in caplog.text
    with pytest.raises(DatasetError, match="every selected demo has fewer than 2 steps"):
        _load(write_dataset(tmp_path / "all_short.hdf5", lengths=(1, 0)), "memory", skip_short=True)
    empty = write_dataset(tmp_path / "e.hdf5", lengths=(3, 0, 2))  # an empty demo: the same message, not a reshape
    with pytest.raises(DatasetError, match="data/demo_1: episode has 0 step"):
        _load(empty, "memory")


def test_an_empty_first_demo_of_flat_arrays_is_left_out_by_skip_short_or_a_mask(tmp_path):
    """A recorder's empty episode is often written as ``np.array([])``, shape ``(0,)``, everywhere; as demo_0 its
    shapes were taken for the file's, so the file was refused even with data.skip_short_demos=true or a mask
    leaving it out ("expected float actions (0, A)" about demos that were fine: a new user's finding)."""
    def flat_first(f):
        for key in ("obs/proprio", "next_obs/proprio", "obs/agentview_image", "next_obs/agentview_image", "actions",
                    "rewards", "dones"):
            del f[f"data/demo_0/{key}"]
            f[f"data/demo_0/{key}"] = np.array([])

    path = write_dataset(tmp_path / "f.hdf5", lengths=(0, 4, 2), mutate=flat_first)
    info = read_info(path)
    assert info.action_dim == 2 and info.obs_specs["proprio"][0] == (3,)
    for storage in STORAGES:
        assert len(_load(path, storage, skip_short=True)) == 4 + 2
        assert len(_load(path, storage, mask="push")) == 4  # demo_1 alone: the empty demo_0 left out
        with pytest.raises(DatasetError, match="data/demo_0: episode has 0 step"):
            _load(path, storage)


def test_unknown_task_and_mask(tmp_path):
    path = write_dataset(tmp_path / "u.hdf5")
    msg = _expect(path, "unknown task", tasks=["stack"])
    assert "'stack'" in msg and "lift" in msg
    assert "mask/test" in _expect(path, "unknown mask", mask="test")


def test_an_entry_under_mask_that_lists_no_demo_names_is_refused_only_when_used(tmp_path):
    """mask/train_indices (an int array) beside valid masks made the whole file unreadable; robomimic reads only the
    filter key it is given (a new user's finding)."""
    def indices(f):
        f["mask/train_indices"] = np.array([0, 2])
        f.create_group("mask/sub")

    path = write_dataset(tmp_path / "m.hdf5", mutate=indices)
    assert len(load_transitions(path, ["proprio"]).actions) == 3 + 4 + 2
    assert load_transitions(path, ["proprio"], mask="train").demo_names == ["demo_0", "demo_10"]
    assert "int64 (2,)" in _expect(path, "mask/train_indices: expected a 1-D array of demo names", mask="train_indices")
    assert "a group" in _expect(path, "mask/sub: expected a 1-D array of demo names", mask="sub")
    from robopretrain.data.inspect import format_hdf5_summary, summarize_hdf5

    said = format_hdf5_summary(summarize_hdf5(path))  # inspect reads it as the loader does, not as deleted demos
    assert "mask/train_indices is no list of demo names (int64 (2,))" in said and "not under data/" not in said
    assert "masks: lift (2), push (1), train (2), valid (1)\n" in said


def test_a_mask_naming_a_deleted_demo_is_refused_only_when_used(tmp_path, capsys):
    """Deleting one bad demo left mask/train naming it: the whole file was refused, even for data.mask=valid or no
    mask, while inspect called it fine."""
    from robopretrain.data.inspect import main as inspect_main

    path = write_dataset(tmp_path / "m.hdf5", mutate=lambda f: f["data"].pop("demo_10"))
    with h5py.File(path, "r+") as f:
        f["data"].attrs["total"] = 7
        for group in ("obs", "next_obs"):  # 8 px frames: inspect draws its contact sheet from them
            for demo, value in (("demo_0", 0), ("demo_1", 1)):
                n = f[f"data/{demo}/{group}/agentview_image"].shape[0]
                del f[f"data/{demo}/{group}/agentview_image"]
                f[f"data/{demo}/{group}/agentview_image"] = np.full((n, 8, 8, 3), value, np.uint8)
    assert len(load_transitions(path, ["proprio"], mask="valid")) == 4  # the mask in use is whole
    assert len(load_transitions(path, ["proprio"])) == 7
    msg = _expect(path, r"mask/train: lists demos that are not under data/: \['demo_10'\]", mask="train")
    assert "rewrite the mask" in msg
    inspect_main([str(path), "--out", str(tmp_path / "sheet.png")])
    assert "mask/train lists 1 demo(s) not under data/ (demo_10): training with data.mask=train is refused" in \
        capsys.readouterr().out


def test_bad_demo_name_and_counts(tmp_path):
    path = write_dataset(tmp_path / "d.hdf5", mutate=lambda f: f["data"].move("demo_1", "demo_x"))
    assert "data/demo_x" in _expect(path, "demo_<int>")
    # (a stale data total alone is read by the demos: test_data_total_is_optional_...)
    def bad_count(f):  # one demo's num_samples wrong, total right for the arrays: the demo is named, not total
        f["data/demo_1"].attrs["num_samples"] = 7

    _expect(write_dataset(tmp_path / "count.hdf5", mutate=bad_count), r"data/demo_1/actions: 4 rows, but the demo's "
            r"num_samples attribute says 7")

    def bad_meta(f):
        f["data/demo_0"].attrs["ep_meta"] = "{not json"

    assert "data/demo_0" in _expect(write_dataset(tmp_path / "meta.hdf5", mutate=bad_meta), "not valid JSON")


def test_a_robomimic_dataset_without_task_attributes_is_one_task(tmp_path):
    """robomimic's own datasets carry no per-demo task / task_id: one task named by env_args' env_name (else the
    file's stem) in slot 0; a demo with only one of the two attributes is named."""

    def drop(names):
        def mutate(f):
            for n in names:
                for attr in ("task", "task_id", "ep_meta"):  # robomimic's own files have no ep_meta either
                    del f[f"data/{n}"].attrs[attr]
        return mutate

    stock = write_dataset(tmp_path / "lift_ph.hdf5", tasks=("lift",) * 3, mutate=drop(["demo_0", "demo_1", "demo_10"]))
    info = read_info(stock)
    assert info.tasks == {"Lift": 0} and [d.task for d in info.demos] == ["Lift"] * 3
    assert [d.ep_meta for d in info.demos] == [{}] * 3
    assert load_transitions(stock, ["proprio"]).task_ids.tolist() == [0] * 9

    def no_env_name(f):
        drop(["demo_0", "demo_1", "demo_10"])(f)
        f["data"].attrs["env_args"] = json.dumps({"env_kwargs": {}})

    assert read_info(write_dataset(tmp_path / "my_arm.hdf5", tasks=("lift",) * 3, mutate=no_env_name)).tasks == {
        "my_arm": 0}

    def half(f):
        del f["data/demo_1"].attrs["task_id"]

    with pytest.raises(DatasetError, match=r"data/demo_1: missing attribute 'task_id' \(give both"):
        read_info(write_dataset(tmp_path / "half.hdf5", mutate=half))


def test_action_bounds_span_every_demo_and_env_args_is_required(tmp_path):
    """Per-dimension min / max over all demos (each demo holds another extreme); a file without data/env_args is
    named (the contract needs it: targets and action units come from it)."""

    def spread(f):
        for i, name in enumerate(["demo_0", "demo_1", "demo_10"]):
            n = f[f"data/{name}/actions"].shape[0]
            del f[f"data/{name}/actions"]
            a = np.zeros((n, 2), np.float32)
            a[0] = [(-3.0, 0.5), (0.2, 4.0), (1.0, -2.0)][i]
            f[f"data/{name}/actions"] = a

    from robopretrain.data.hdf5 import action_bounds

    low, high = action_bounds(write_dataset(tmp_path / "wide.hdf5", mutate=spread))
    np.testing.assert_allclose(low, [-3.0, -2.0])
    np.testing.assert_allclose(high, [1.0, 4.0])

    def no_env_args(f):
        del f["data"].attrs["env_args"]

    with pytest.raises(DatasetError, match="missing attribute 'env_args'"):
        read_info(write_dataset(tmp_path / "bare.hdf5", mutate=no_env_args))

def test_a_demo_of_another_action_size_gets_one_message_whatever_data_actions(tmp_path, caplog):
    """One demo with 3-D actions among 2-D ones: data.actions=auto (action_bounds reads every demo) names the file and
    the demo as the reader does with data.actions=keep, not a bare numpy broadcast error."""
    from robopretrain.data.dataset import data_action_units
    from robopretrain.data.hdf5 import action_bounds

    def wide_actions(f):
        del f["data/demo_1/actions"]
        f["data/demo_1/actions"] = np.full((4, 3), 2.0, dtype=np.float32)  # outside [-1, 1]: auto rescales

    path = write_dataset(tmp_path / "mix.hdf5", mutate=wide_actions)
    expected = (f"{path}: data/*/actions: the demos' actions differ in size: 2-D in 2 demo(s) (demo_0, demo_10); "
                "3-D in 1 demo(s) (demo_1); every demo's actions must have one size: rewrite or delete the demo(s) of "
                "the other size (demo_1)")
    for call in (lambda: action_bounds(path), lambda: data_action_units(path, read_info(path), "auto"),
                 lambda: load_transitions(path, ["proprio"])):
        with pytest.raises(DatasetError) as exc:
            call()
        assert str(exc.value).startswith(expected) and "\n" not in str(exc.value)

    def narrow_first(f):  # the odd demo first: it is named, not the demos after it
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.zeros((3, 1), dtype=np.float32)

    first = write_dataset(tmp_path / "first.hdf5", mutate=narrow_first)
    with pytest.raises(DatasetError, match=r"2-D in 2 demo\(s\) \(demo_1, demo_10\); 1-D in 1 demo\(s\) \(demo_0\).*"
                                           r"of the other size \(demo_0\)"):
        load_transitions(first, ["proprio"])
    # convert copies such a file as it is (--image-size, or next_obs to derive): it says so first, in the same words
    import logging

    from robopretrain.data.convert import convert
    from robopretrain.data.hdf5 import mixed_action_sizes

    assert mixed_action_sizes(write_dataset(tmp_path / "even.hdf5")) is None
    assert mixed_action_sizes(tmp_path / "missing.hdf5") is None  # the reader names that problem itself
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.convert"):
        convert(path, tmp_path / "copy.hdf5", image_size=8)
    assert f"{path}: the demos' actions differ in size: 2-D in 2 demo(s)" in caplog.text
    assert "(the copy keeps them as they are)" in caplog.text


@pytest.mark.parametrize("grey_shape", [(4, 4, 1), (4, 4)])
def test_a_grey_camera_is_read_as_rgb_in_memory_and_from_disk(tmp_path, grey_shape):
    """A lab's grey camera (N, H, W, 1) or (N, H, W) was refused by stage 2 ("repeat it to 3 channels") while stages 1
    and 3 took grey frames: it is read as the RGB frames with the grey in each channel, in both storages, and its
    spec is (H, W, 3)."""
    from robopretrain.data.dataset import spec_of_data

    def greyed(f):  # each frame's grey level: demo i, step t -> 10 i + t (distinct rows)
        for d, n, i in (("demo_0", 3, 0), ("demo_1", 4, 1), ("demo_10", 2, 2)):
            for part, shift in (("obs", 0), ("next_obs", 1)):
                del f[f"data/{d}/{part}/agentview_image"]
                levels = (10 * i + shift + np.arange(n)).astype(np.uint8)
                f[f"data/{d}/{part}/agentview_image"] = np.broadcast_to(
                    levels.reshape(n, *([1] * len(grey_shape))), (n, *grey_shape)).copy()

    path = write_dataset(tmp_path / "grey.hdf5", mutate=greyed)
    assert spec_of_data(path, ["proprio"], ["agentview_image"], 0).rgb == (("agentview_image", (4, 4, 3)),)
    for storage in ("memory", "disk"):
        data = _load(path, storage)
        batch = data.get(np.arange(len(data)))
        for side, shift in (("observations", 0), ("next_observations", 1)):
            frames = np.asarray(batch[side]["agentview_image"])
            assert frames.shape == (9, 4, 4, 3) and frames.dtype == np.uint8, (storage, side, frames.dtype)
            expected = np.array([0, 1, 2, 10, 11, 12, 13, 20, 21]) + shift
            assert (frames == expected[:, None, None, None]).all(), (storage, side)
    with pytest.raises(DatasetError, match=r"expected an image array uint8 \(N, H, W, 3\), or grey"):
        def two_channels(f):
            for d, n in (("demo_0", 3), ("demo_1", 4), ("demo_10", 2)):
                for part in ("obs", "next_obs"):
                    del f[f"data/{d}/{part}/agentview_image"]
                    f[f"data/{d}/{part}/agentview_image"] = np.zeros((n, 4, 4, 2), dtype=np.uint8)
        load_transitions(write_dataset(tmp_path / "two.hdf5", mutate=two_channels), ["agentview_image"])


def test_a_success_flag_written_as_a_word_is_read_as_what_it_says(tmp_path):
    """ep_meta {"success": "False"} (a recorder's str(flag)) was read with bool(): every failed episode counted as a
    success (inspect's rate, the success filter, rewards rebuilt from success)."""
    from robopretrain.data.inspect import InspectError, summarize_hdf5

    def worded(value_of):
        def mutate(f):
            for i, d in enumerate(("demo_0", "demo_1", "demo_10")):
                f[f"data/{d}"].attrs["ep_meta"] = json.dumps({"success": value_of(i)})
        return mutate

    for word in (lambda i: ["True", "false", "FALSE"][i], lambda i: ["1", "0", "no"][i], lambda i: [1, 0, 0.0][i]):
        path = write_dataset(tmp_path / "w.hdf5", mutate=worded(word))
        assert [d.ep_meta["success"] for d in read_info(path).demos] == [True, False, False]
        assert load_transitions(path, ["proprio"]).ep_meta[1]["success"] is False
        assert summarize_hdf5(path).tasks["lift"].successes == [True, False]
    bad = write_dataset(tmp_path / "bad.hdf5", mutate=worded(lambda i: ["maybe", "yes", "no"][i]))
    with pytest.raises(DatasetError, match=r"demo_0: ep_meta success='maybe'; expected true or false"):
        read_info(bad)
    with pytest.raises(InspectError, match=r"ep_meta success='maybe'"):
        summarize_hdf5(bad)


def test_actions_outside_the_range_say_how_the_api_reads_them(tmp_path):
    def wide(f):
        f["data/demo_1/actions"][0, 0] = 2.0

    path = write_dataset(tmp_path / "wide.hdf5", mutate=wide)
    msg = _expect(path, r"data/demo_1/actions.*values outside \[-1, 1\] \(max \|a\| = 2; load_transitions\(\.\.\., "
                        r"action_range=False\) reads them as stored")
    assert "demo_1" in msg
    assert load_transitions(path, ["proprio"], action_range=False).actions.max() == 2.0


def test_actions_within_float32_rounding_of_the_bounds_are_read_and_a_real_excess_is_not(tmp_path):
    """1 + 1e-6 is the reader's tolerance: a converted action a few float32 ulps past 1 (1.0000008) is read; one
    past by 1e-5 is refused (mutation: the tolerance dropped or halved)."""
    def edge(value):
        def write(f):
            f["data/demo_0/actions"][0, 0] = value
        return write

    ok = load_transitions(write_dataset(tmp_path / "ulp.hdf5", mutate=edge(np.float32(1.0000008))), ["proprio"])
    assert ok.actions.max() == np.float32(1.0000008)
    _expect(write_dataset(tmp_path / "past.hdf5", mutate=edge(np.float32(1.00001))), r"outside \[-1, 1\]")


def test_the_action_size_is_the_columns_and_extra_action_rows_are_named(tmp_path):
    """info.action_dim counts an action's components, not the first demo's steps; a demo whose actions have more
    rows than its num_samples says so (not a wrong-dtype message)."""
    info = read_info(write_dataset(tmp_path / "ok.hdf5", lengths=(3, 4, 2)))
    assert info.action_dim == 2

    def flat(f):  # a 1-D action per step: refused by read_info itself (it reported an action size of -1)
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.zeros(3, dtype=np.float32)

    with pytest.raises(DatasetError, match=r"data/demo_0/actions: expected float actions \(3, A\), got float32 \(3,\)"):
        read_info(write_dataset(tmp_path / "flat.hdf5", mutate=flat))

    def extra_row(f):
        del f["data/demo_1/actions"]
        f["data/demo_1/actions"] = np.zeros((5, 2), dtype=np.float32)

    _expect(write_dataset(tmp_path / "rows.hdf5", mutate=extra_row), r"data/demo_1/actions: 5 rows, but the demo's "
            r"num_samples attribute says 4")


def test_a_count_attribute_written_as_a_boolean_is_refused(tmp_path):
    """h5py reads a boolean attribute back as np.bool_ (never a Python bool): num_samples=True must not read as 1."""
    def flag(f):
        f["data/demo_10"].attrs["num_samples"] = np.bool_(True)

    with pytest.raises(DatasetError, match=r"attribute 'num_samples' must be an int, got np.True_"):
        read_info(write_dataset(tmp_path / "b.hdf5", mutate=flag))


@pytest.mark.parametrize("storage", STORAGES)
def test_integer_and_flag_low_dim_parts_are_read_as_float32_like_the_converters_cast_them(tmp_path, storage):
    """An int64 step counter and uint8 gripper flags (N, d) are low-dim parts: read as float32 with their values, in
    memory and from the frame index (which reads every part of the file, so a part the agent does not use broke it).
    A (N,) part is still refused, with the (N, 1) hint."""
    from robopretrain.data.dataset import RewardSettings, load_offline_dataset
    from robopretrain.data.spec import ObsSpec

    def add(f):
        for name in f["data"]:
            g, n = f["data"][name], f["data"][name].attrs["num_samples"]
            g["obs/step"], g["next_obs/step"] = np.arange(n)[:, None], np.arange(1, n + 1)[:, None]
            g["obs/grip"] = g["next_obs/grip"] = np.stack([np.arange(n) % 2, np.ones(n)], 1).astype(np.uint8)

    path = write_dataset(tmp_path / "ints.hdf5", mutate=add)
    tr = load_transitions(path, ["step", "grip"])
    assert tr.obs["step"].dtype == tr.obs["grip"].dtype == np.float32
    np.testing.assert_array_equal(tr.obs["step"][:, 0], [0, 1, 2, 0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(tr.next_obs["grip"][:4, 0], [0, 1, 0, 0])
    assert len(_load(path, storage)) == 9  # the unused int parts are no obstacle
    spec = ObsSpec(low_dim=(("proprio", 3), ("step", 1), ("grip", 2)), rgb=(("agentview_image", (4, 4, 3)),))
    ds = load_offline_dataset(path, spec, RewardSettings(), storage=storage)
    batch = ds.get(np.arange(9))
    assert batch["observations"]["step"].dtype == torch.float32
    np.testing.assert_array_equal(batch["observations"]["step"][:, 0].numpy(), [0, 1, 2, 0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(batch["next_observations"]["grip"][:4, 0].numpy(), [0, 1, 0, 0])

    def scalar(f):
        del f["data/demo_1/obs/step"]
        f["data/demo_1/obs/step"] = np.arange(4)

    _expect(write_dataset(tmp_path / "s.hdf5", mutate=lambda f: (add(f), scalar(f))),
            r"data/demo_1/obs/step: expected a low-dim numeric array \(N, d\), got int64 \(4,\); a scalar per step: "
            r"store it as \(N, 1\)", keys=["step"])


def test_shapes_a_new_user_stores_get_the_fix_in_the_refusal(tmp_path):
    """A nested obs dict saved as groups (obs/arm/pos) crashed inspect and was left out of the keys listed; a (k, m)
    low-dim part and (N,) actions of a 1-D robot were refused without the reshape that reads them."""
    from robopretrain.data.dataset import spec_of_data
    from robopretrain.data.inspect import format_hdf5_summary, summarize_hdf5

    def shaped(f):
        for demo in ("demo_0", "demo_1", "demo_10"):
            n = f[f"data/{demo}"].attrs["num_samples"]
            for group in ("obs", "next_obs"):
                f[f"data/{demo}/{group}/arm/pos"] = np.zeros((n, 2), np.float32)
                f[f"data/{demo}/{group}/mat"] = np.zeros((n, 2, 2), np.float32)

    path = write_dataset(tmp_path / "n.hdf5", mutate=shaped)
    assert read_info(path).nested_obs == ["arm/pos"]
    with pytest.raises(ValueError, match=r"'arm.pos' .* not found; available: .*; obs/ also holds groups, whose "
                                         r"datasets \(arm/pos\) are not read: store each directly under obs/ with a "
                                         r"flat name \(e.g. obs/arm\.pos;"):
        spec_of_data(path, ["arm.pos"], [], None)
    with pytest.raises(ValueError, match=r"'mat' is float32 \(2, 2\); .* store it flat as \(N, d\), "
                                         r"values.reshape\(len\(values\), -1\)"):
        spec_of_data(path, ["mat"], [], None)
    assert spec_of_data(path, ["proprio"], [], None).low_dim == (("proprio", 3),)  # the other parts still read
    text = format_hdf5_summary(summarize_hdf5(path))
    assert "warning: obs/ holds groups, whose datasets (arm/pos) the stages do not read" in text

    def one_dim(f):
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.zeros(3, np.float32)

    _expect(write_dataset(tmp_path / "a.hdf5", mutate=one_dim), r"got float32 \(3,\); one action dimension: store it "
            r"as \(3, 1\), actions\[:, None\]")


def test_check_layout_validates_every_demo_without_reading_data(tmp_path):
    """check_layout (inspect's check) refuses what the reader refuses in any demo of 2 or more steps, checks only the
    observation parts it is given, and skips demos too short to read (a mask or data.skip_short_demos leaves them
    out)."""
    from robopretrain.data.hdf5 import check_layout

    assert check_layout(write_dataset(tmp_path / "ok.hdf5")).total == 9
    no_dones = write_dataset(tmp_path / "d.hdf5", mutate=lambda f: f.__delitem__("data/demo_10/dones"))
    with pytest.raises(DatasetError, match="data/demo_10/dones: missing"):  # demo_10 has 2 steps: read by stages
        check_layout(no_dones)
    short = write_dataset(tmp_path / "s.hdf5", lengths=(3, 4, 1),
                          mutate=lambda f: f.__delitem__("data/demo_10/dones"))
    assert check_layout(short).total == 8  # the one-step demo is never read
    odd = write_dataset(tmp_path / "o.hdf5", mutate=lambda f: (f.__delitem__("data/demo_1/obs/agentview_image"),
                                                               f.create_dataset("data/demo_1/obs/agentview_image",
                                                                                data=np.zeros((4, 5, 5, 3), np.uint8))))
    check_layout(odd)  # the camera is no part asked for
    with pytest.raises(DatasetError, match="demo_1/obs/agentview_image"):
        check_layout(odd, ["agentview_image"])
