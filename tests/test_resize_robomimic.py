"""A robomimic file whose cameras are not the agent's square size: the resized copy keeps everything else bit for bit,
its cameras are the env frames' resize of the stored frames, and as_robomimic makes it once and only when needed."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from robopretrain.data.convert import as_robomimic, main as convert_main, name_sources
from robopretrain.data.episodes import resize_frames, to_uint8_hwc
from robopretrain.data.hdf5 import load_transitions, read_info
from robopretrain.data.resize_robomimic import needs_resize, write_resized

LENGTHS = (5, 4)

OLD_MTIME = 1_000_000_000  # seconds since the epoch (2001): a file last written long before ABANDONED_AFTER_S


def write_foreign(path: Path, *, front: tuple[int, int] = (20, 30), wrist: int = 12, seed: int = 0) -> Path:
    """A robomimic file as another robot's recorder writes it: a non-square RGB camera, a channels-first float camera
    in [0, 1], a grey uint8 camera, a low-dim part, states, rewards, dones, masks and attributes of its own."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["recorder"] = "lab-rig-2"
        data = f.create_group("data")
        data.attrs["total"] = sum(LENGTHS)
        data.attrs["env_args"] = json.dumps({"env_name": "RealCan", "type": 1, "env_kwargs": {"control_freq": 20}})
        for i, n in enumerate(LENGTHS):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = n
            demo.attrs["ep_meta"] = json.dumps({"success": bool(i == 0), "operator": "ab"})
            for group in ("obs", "next_obs"):
                g = demo.create_group(group)
                g.create_dataset("agentview_image", data=rng.integers(0, 256, (n, *front, 3), dtype=np.uint8),
                                 chunks=(1, *front, 3), compression="gzip", compression_opts=4)
                g.create_dataset("wrist_image", data=rng.random((n, 3, wrist, wrist), dtype=np.float32))
                g.create_dataset("side_grey", data=rng.integers(0, 256, (n, 10, 14), dtype=np.uint8))
                g.create_dataset("features", data=rng.random((n, 8, 8, 3), dtype=np.float32))  # not a camera
                g.create_dataset("proprio", data=rng.normal(size=(n, 4)).astype(np.float32))
                g["proprio"].attrs["units"] = "m"
            demo.create_dataset("actions", data=rng.uniform(-1, 1, (n, 3)).astype(np.float32))
            demo.create_dataset("rewards", data=np.eye(n, dtype=np.float32)[-1] * (i == 0))
            demo.create_dataset("dones", data=(np.arange(n) == n - 1).astype(np.uint8))
            demo.create_dataset("states", data=rng.normal(size=(n, 7)))
        f.create_dataset("mask/train", data=np.array([b"demo_0"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_1"]))
    return path


def items(f: h5py.File) -> dict[str, h5py.HLObject]:
    out: dict[str, h5py.HLObject] = {}
    f.visititems(lambda name, obj: out.setdefault(name, obj))
    return out


CAMERAS = ("agentview_image", "wrist_image", "side_grey")


def test_the_copy_resizes_each_camera_as_env_frames_are_and_keeps_the_rest_bit_for_bit(tmp_path):
    src = write_foreign(tmp_path / "rig.hdf5")
    out = write_resized(src, tmp_path / "rig16.hdf5", 16)
    with h5py.File(src, "r") as a, h5py.File(out, "r") as b:
        old, new = items(a), items(b)
        assert set(old) == set(new)
        assert dict(a.attrs) == dict(b.attrs)
        for name, obj in old.items():
            assert dict(obj.attrs) == dict(new[name].attrs) or name == "data", name
            if not isinstance(obj, h5py.Dataset):
                continue
            if name.rsplit("/", 1)[-1] in CAMERAS:
                want = resize_frames(to_uint8_hwc(obj[()], name), 16)
                assert new[name].dtype == np.uint8 and new[name].shape == (len(obj), 16, 16, 3), name
                np.testing.assert_array_equal(new[name][()], want)
            else:
                assert new[name].dtype == obj.dtype, name
                np.testing.assert_array_equal(new[name][()], obj[()])
        assert b["data/demo_0/obs/agentview_image"].compression == "gzip"  # the source's storage, at the new size
        env_args = json.loads(b["data"].attrs["env_args"])
        assert env_args == {"env_name": "RealCan", "type": 1, "env_kwargs": {"control_freq": 20},
                            "source": str(src.resolve()), "image_size": 16,
                            "source_image_sizes": {"agentview_image": [20, 30], "wrist_image": [12, 12],
                                                   "side_grey": [10, 14]}}
        assert b["data"].attrs["total"] == sum(LENGTHS)
    info = read_info(out)
    assert [d.num_samples for d in info.demos] == list(LENGTHS)
    trans = load_transitions(out, ["agentview_image", "proprio"], mask="train")
    assert trans.obs["agentview_image"].shape == (LENGTHS[0], 16, 16, 3)


@pytest.mark.parametrize("colour_first", [False, True])
def test_a_depth_camera_is_copied_as_stored_whichever_demo_shows_it(tmp_path, caplog, colour_first):
    """A float camera that is not colour (depth in millimetres) and a 16-bit one: copied as stored in every demo, said
    once, listed in env_args; the colour cameras beside them are still resized. The same when the depth camera's first
    demo happens to hold values in [0, 1] (the copy is written again without resizing it), and a copy so made asks
    for no copy of itself."""
    src = write_foreign(tmp_path / "rig.hdf5")
    with h5py.File(src, "a") as f:
        for i, n in enumerate(LENGTHS):
            depth = 0.5 if colour_first and i == 0 else 300.0 + i
            for group in ("obs", "next_obs"):
                f[f"data/demo_{i}/{group}/depth_image"] = np.full((n, 12, 12, 1), depth, np.float32)
                f[f"data/demo_{i}/{group}/ir"] = np.full((n, 12, 12), 1000 + i, np.uint16)
    out = write_resized(src, tmp_path / "out.hdf5", 16)
    assert caplog.text.count("camera 'depth_image' is copied as stored") == 1
    with h5py.File(src, "r") as a, h5py.File(out, "r") as b:
        for demo in ("demo_0", "demo_1"):
            for key in ("depth_image", "ir", "features"):
                np.testing.assert_array_equal(b[f"data/{demo}/next_obs/{key}"][()], a[f"data/{demo}/next_obs/{key}"][()])
            assert b[f"data/{demo}/obs/agentview_image"].shape[1:] == (16, 16, 3)
        assert json.loads(b["data"].attrs["env_args"])["kept_as_stored"] == ["depth_image"]
    assert not list(tmp_path.glob("*.tmp"))
    assert needs_resize(src, 16) and not needs_resize(out, 16) and needs_resize(out, 24)


def test_the_source_size_recorded_is_the_obs_frames(tmp_path):
    src = write_foreign(tmp_path / "rig.hdf5")
    with h5py.File(src, "a") as f:
        for i, n in enumerate(LENGTHS):
            del f[f"data/demo_{i}/next_obs/agentview_image"]
            f[f"data/demo_{i}/next_obs/agentview_image"] = np.zeros((n, 30, 40, 3), np.uint8)
    with h5py.File(write_resized(src, tmp_path / "out.hdf5", 16), "r") as f:
        assert json.loads(f["data"].attrs["env_args"])["source_image_sizes"]["agentview_image"] == [20, 30]


def test_as_robomimic_copies_only_when_a_camera_differs_and_once(tmp_path):
    cache = tmp_path / "cache"
    src = write_foreign(tmp_path / "rig.hdf5")
    assert as_robomimic(src, cache_dir=cache) == src  # no image size asked: used where it is
    assert needs_resize(src, 16)
    copy = as_robomimic(src, cache_dir=cache, image_size=16)
    assert copy.parent == cache and copy.name.startswith("rig.robomimic.")
    stamp = copy.stat().st_mtime_ns
    assert as_robomimic(src, cache_dir=cache, image_size=16) == copy and copy.stat().st_mtime_ns == stamp  # reused
    assert not needs_resize(copy, 16) and as_robomimic(copy, cache_dir=cache, image_size=16) == copy
    # a message about the copy names the user's file
    assert name_sources(f"data.path={copy}: bad") == (f"data.path={copy}: bad [{copy.name} is {src.resolve()} with "
                                                      "its cameras resized to 16x16; its demos keep their names]")
    assert needs_resize(copy, 8)
    square = write_resized(src, tmp_path / "square.hdf5", 16)
    assert as_robomimic(square, cache_dir=cache, image_size=16) == square  # already the size: no copy
    # an edited source: a new copy, the one it replaces removed
    with h5py.File(src, "a") as f:
        f["data/demo_0/obs/proprio"][0, 0] = 9.0
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    again = as_robomimic(src, cache_dir=cache, image_size=16)
    assert again != copy and not copy.exists() and again.is_file()
    assert h5py.File(again, "r")["data/demo_0/obs/proprio"][0, 0] == 9.0


def test_convert_cli_writes_the_resized_copy_and_refuses_a_copy_without_a_size(tmp_path, capsys):
    src = write_foreign(tmp_path / "rig.hdf5")
    assert convert_main([str(src), str(tmp_path / "rig24.hdf5"), "--image-size", "24"]) == 0
    with h5py.File(tmp_path / "rig24.hdf5", "r") as f:
        assert {k: f[f"data/demo_1/next_obs/{k}"].shape for k in CAMERAS} == {k: (LENGTHS[1], 24, 24, 3) for k in CAMERAS}
    capsys.readouterr()
    assert convert_main([str(src), str(tmp_path / "same.hdf5")]) == 2
    assert "already a robomimic HDF5 file" in capsys.readouterr().err
    # the source as the output: that refusal first (not "exists", whose --overwrite would then be refused too)
    assert convert_main([str(src), str(src), "--image-size", "24"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {src}: the output would replace the source"
    with pytest.raises(SystemExit):  # a side under 8 in the CLI's own terms (no "null")
        convert_main([str(src), str(tmp_path / "tiny.hdf5"), "--image-size", "4"])
    assert "--image-size 4: expected an integer >= 8 (the side of the square frames to write); leave it out to keep " \
        "the source's size" in capsys.readouterr().err and not (tmp_path / "tiny.hdf5").exists()
    # data's total is optional (robomimic never reads it): a source without one, or a stale one, converts, and the
    # copy holds the demos' sum (the CLI's summary read the attribute: a KeyError after writing the copy, a review)
    for total in (None, 99):
        with h5py.File(src, "r+") as f:
            if total is None:
                del f["data"].attrs["total"]
            else:
                f["data"].attrs["total"] = total
        out = tmp_path / f"rig_total_{total}.hdf5"
        assert convert_main([str(src), str(out), "--image-size", "24"]) == 0
        assert f"{len(LENGTHS)} episodes, {sum(LENGTHS)} transitions" in capsys.readouterr().out
        with h5py.File(out, "r") as f:
            assert int(f["data"].attrs["total"]) == sum(LENGTHS)


def test_stage2_trains_on_the_foreign_file_only_through_data_image_size(tmp_path):
    """Wiring: stage 2 refuses the channels-first float camera as stored, naming data.image_size=S; with it, the agent
    trains on the cached copy (recorded as its data) with every camera at S x S."""
    from _stages import stage2_config
    from robopretrain.checkpoint import load_agent
    from robopretrain.train import run

    src = write_foreign(tmp_path / "rig.hdf5")
    cache = tmp_path / "cache"
    obs = {"low_dim": ["proprio"], "rgb": list(CAMERAS), "num_tasks": None}
    with pytest.raises(ValueError, match=r"rgb part 'wrist_image' is float32 \(3, 12, 12\).*data.image_size=S"):
        run(stage2_config(src, tmp_path / "raw", algo="bc", steps=2, obs=obs, data_cfg={"cache_dir": str(cache)}))
    ckpt = run(stage2_config(src, tmp_path / "run", algo="bc", steps=2, obs=obs,
                             data_cfg={"cache_dir": str(cache), "image_size": 16}))
    _, saved = load_agent(ckpt)
    copy = Path(saved.meta["data_path"])
    assert copy.parent == cache and json.loads(h5py.File(copy, "r")["data"].attrs["env_args"])["source"] == str(
        src.resolve())
    assert {k: tuple(s) for k, s in saved.meta["obs_spec"]["rgb"]} == {k: (16, 16, 3) for k in CAMERAS}
    # the cameras as the user's file stores them (H, W, C: the float wrist camera channels first), for the env check
    assert saved.meta["camera_sources"] == {"agentview_image": [20, 30, 3], "wrist_image": [12, 12, 3],
                                            "side_grey": [10, 14, 1]}
    assert load_agent(ckpt)[0].camera_sources == saved.meta["camera_sources"]


@pytest.mark.parametrize("writer", ["write_resized", "write_robomimic"])
def test_a_killed_conversions_partial_file_is_removed_by_the_next(tmp_path, writer):
    """``<dst>.<pid>.tmp`` of a conversion killed outright stayed beside the user's data; the next conversion to that
    path removes it (nobody holds it open, old enough: :func:`sim_envs.hdf5_writer.remove_abandoned_partials`)."""
    from robopretrain.data.episodes import Episode, write_robomimic

    dst = tmp_path / "out.hdf5"
    abandoned = tmp_path / "out.hdf5.99999999.tmp"
    abandoned.write_bytes(b"\x89HDF half")
    old = OLD_MTIME
    os.utime(abandoned, (old, old))
    if writer == "write_resized":
        write_resized(write_foreign(tmp_path / "src.hdf5"), dst, 16)
    else:
        state = np.zeros((4, 3), np.float32)
        write_robomimic(dst, [Episode(obs={"state": state[:3]}, next_obs={"state": state[1:]}, actions=np.zeros((3, 2)),
                                      rewards=np.zeros(3), terminations=np.array([0, 0, 1]), truncated=False,
                                      task="t")], source="src", fmt="test")
    assert dst.is_file() and not abandoned.exists()


def test_a_camera_the_reader_refuses_but_a_resized_copy_reads_names_data_image_size(tmp_path):
    """RGBA frames, channels-first float frames (*_image) and frames of another size in a later demo: each refusal
    names data.image_size, and the copy it names is read; a float array of another name gets no such advice."""
    from robopretrain.data.hdf5 import DatasetError

    def rewrite(path: Path, key: str, make) -> Path:
        with h5py.File(path, "a") as f:
            for i, n in enumerate(LENGTHS):
                for group in ("obs", "next_obs"):
                    del f[f"data/demo_{i}/{group}/{key}"]
                    f[f"data/demo_{i}/{group}/{key}"] = make(i, n)
        return path

    rgba = rewrite(write_foreign(tmp_path / "rgba.hdf5"), "agentview_image",
                   lambda i, n: np.full((n, 16, 16, 4), 200, np.uint8))
    wide = rewrite(write_foreign(tmp_path / "sizes.hdf5"), "agentview_image",
                   lambda i, n: np.full((n, 16 + 4 * i, 16 + 4 * i, 3), 9, np.uint8))
    for path, key, refusal in ((rgba, "agentview_image", "uint8 RGB channels last"),
                               (write_foreign(tmp_path / "float.hdf5"), "wrist_image", "uint8 RGB channels last"),
                               (wide, "agentview_image", "one size for all")):
        with pytest.raises(DatasetError, match=rf"data.image_size=S .* every demo's frames at S x S, {refusal}"):
            load_transitions(path, [key])
        copy = as_robomimic(path, image_size=16, cache_dir=tmp_path / "cache")
        assert load_transitions(copy, [key]).obs[key].shape == (sum(LENGTHS), 16, 16, 3)
    with pytest.raises(DatasetError, match=r"features: expected") as err:
        load_transitions(write_foreign(tmp_path / "features.hdf5"), ["features"])
    assert "data.image_size" not in str(err.value)


def test_a_file_without_next_obs_is_read_through_a_copy_that_derives_it(tmp_path):
    """robomimic's --exclude-next-obs extraction: every stage reads the file through a cached copy whose next_obs is
    obs[t + 1] (the last step its own observation), cameras as stored unless data.image_size resizes them (then
    derived from the resized frames); a file that has next_obs is used where it is."""
    src = write_foreign(tmp_path / "no_next.hdf5", front=(16, 16))
    with h5py.File(src, "a") as f:
        del f["data/demo_0/next_obs"]
        del f["data/demo_1/next_obs/proprio"]  # one part missing in another demo
    copy = as_robomimic(src, cache_dir=tmp_path / "cache")
    assert copy != src and copy.parent == tmp_path / "cache"
    with h5py.File(src, "r") as fs, h5py.File(copy, "r") as fc:
        for key in ("agentview_image", "proprio", "wrist_image"):
            obs = fs[f"data/demo_0/obs/{key}"][()]
            np.testing.assert_array_equal(fc[f"data/demo_0/obs/{key}"][()], obs)  # stored size kept
            np.testing.assert_array_equal(fc[f"data/demo_0/next_obs/{key}"][()], np.concatenate([obs[1:], obs[-1:]]))
        np.testing.assert_array_equal(fc["data/demo_1/next_obs/agentview_image"][()],  # present: copied as stored
                                      fs["data/demo_1/next_obs/agentview_image"][()])
        env_args = json.loads(fc["data"].attrs["env_args"])
        assert env_args["derived_next_obs"] == ["agentview_image", "features", "proprio", "side_grey", "wrist_image"]
    assert load_transitions(copy, ["proprio"]).next_obs["proprio"].shape == (sum(LENGTHS), 4)
    assert as_robomimic(src, cache_dir=tmp_path / "cache") == copy  # made once
    small = as_robomimic(src, cache_dir=tmp_path / "cache", image_size=8)
    with h5py.File(small, "r") as f:
        obs = f["data/demo_0/obs/agentview_image"][()]
        assert obs.shape[1:] == (8, 8, 3)
        np.testing.assert_array_equal(f["data/demo_0/next_obs/agentview_image"][()],
                                      np.concatenate([obs[1:], obs[-1:]]))
    whole = write_foreign(tmp_path / "whole.hdf5", front=(16, 16))
    assert as_robomimic(whole, cache_dir=tmp_path / "cache") == whole
    # the command line writes the copy without --image-size (it refuses a file that needs none)
    assert convert_main([str(src), str(tmp_path / "derived.hdf5")]) == 0
    assert len(load_transitions(tmp_path / "derived.hdf5", ["proprio"]).actions) == sum(LENGTHS)
    # a message naming the copy says what it is: next_obs derived (it said "cameras resized to NonexNone")
    assert name_sources(f"{copy}: bad") == (f"{copy}: bad [{copy.name} is {src.resolve()} with next_obs derived for "
                                            "agentview_image, features, proprio, side_grey, wrist_image; its demos "
                                            "keep their names]")
    assert f"{small.name} is {src.resolve()} with its cameras resized to 8x8 and next_obs derived for" in \
        name_sources(f"{small}: bad")


def test_a_copy_of_a_file_without_dones_says_the_stages_refuse_it(tmp_path, caplog):
    """No dones to derive: convert wrote the copy and exited 0 without a word, and every stage then refused it."""
    src = write_foreign(tmp_path / "no_dones.hdf5", front=(16, 16))
    with h5py.File(src, "a") as f:
        del f["data/demo_1/dones"]
        del f["data/demo_0/next_obs"]
    with caplog.at_level(logging.WARNING):
        assert convert_main([str(src), str(tmp_path / "copy.hdf5")]) == 0
    assert "1 demo(s) have no dones (demo_1), copied as they are: the stages refuse a selection holding them (each " \
        "demo needs dones (N,)" in caplog.text


@pytest.mark.parametrize("cropped, warned", [(["20x30"], True), ([], False)])
def test_stage2_says_a_stage1_encoder_that_cropped_its_clips_meets_stretched_cameras(tmp_path, caplog, cropped,
                                                                                     warned):
    """Stage 1 centre-crops non-square clips by default, stage 2's cached copy stretches a non-square camera (as env
    frames are): the encoder, which records the sizes it cropped, learnt another geometry than it is given; said."""
    from _stages import stage2_config
    from robopretrain.nets.encoder_io import save_encoder
    from robopretrain.nets.encoders import make_encoder
    from robopretrain.train import run

    src = write_foreign(tmp_path / "rig.hdf5")
    encoder = save_encoder(tmp_path / "encoder", make_encoder("small_conv", 16, channels=4, out_dim=8), "small_conv",
                           {}, extra={"data": {"cropped_sizes": cropped}})
    with caplog.at_level(logging.WARNING):
        run(stage2_config(src, tmp_path / "run", algo="bc", steps=2, obs={"low_dim": ["proprio"],
                                                                         "rgb": ["agentview_image"]},
                          data_cfg={"cache_dir": str(tmp_path / "cache"), "image_size": 16},
                          encoder={"checkpoint": str(encoder), "mode": "frozen"}))
    said = f"encoder.checkpoint={encoder} read its non-square clips (20x30) centre-cropped to square"
    assert (said in caplog.text) == warned
    if warned:
        assert "this data's cameras (agentview_image 20x30) are stretched" in caplog.text


def test_a_source_edited_in_place_with_its_time_set_back_is_converted_again(tmp_path):
    """The copy's key held the source's size and modification time only: frames edited in place (same size) with
    the time set back (cp -p, rsync -t) kept the stale copy. Its change time moves and is keyed too; a copy of
    unchanged content is still found by its SHA-256 after a change of times alone."""
    src = write_foreign(tmp_path / "rig.hdf5")
    cache = tmp_path / "cache"
    first = as_robomimic(src, cache_dir=cache, image_size=16)
    st = src.stat()
    os.chmod(src, st.st_mode)  # the change time moves, the content does not: the same copy
    assert as_robomimic(src, cache_dir=cache, image_size=16) == first
    with h5py.File(src, "r+") as f:  # black frames, same size
        for demo in f["data"].values():
            demo["obs/agentview_image"][...] = 0
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    second = as_robomimic(src, cache_dir=cache, image_size=16)
    assert second != first and not first.exists()
    with h5py.File(second, "r") as f:
        assert not f["data/demo_0/obs/agentview_image"][()].any()


def test_the_encoder_geometry_warning_reads_cameras_through_obs_map(tmp_path, caplog):
    """The copy's sizes are keyed by the data's names, the agent's cameras by its parts: mapped, it warns."""
    from types import SimpleNamespace

    from robopretrain.build import warn_encoder_geometry
    from robopretrain.nets.encoder_io import save_encoder
    from robopretrain.nets.encoders import make_encoder

    encoder = save_encoder(tmp_path / "encoder", make_encoder("small_conv", 16, channels=4, out_dim=8), "small_conv",
                           {}, extra={"data": {"cropped_sizes": ["20x30"]}})
    info = SimpleNamespace(env_args={"source_image_sizes": {"front_rgb": [20, 30]}})
    with caplog.at_level(logging.WARNING):
        assert warn_encoder_geometry(encoder, info, ["agentview_image"]) == []  # not this camera
        assert warn_encoder_geometry(encoder, info, ["agentview_image"], {"agentview_image": "front_rgb"}) == [
            "front_rgb 20x30"]
    assert caplog.text.count("centre-cropped to square") == 1
