"""Human-video data source: mp4 writing/reading, manifest parsing, the play policy, the clip collector."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

import sim_envs
from robopretrain.data.inspect import summarize_videos
from robopretrain.data.video import (VideoDatasetError, count_frames, read_frames, read_manifest)
from sim_envs.collect_videos import collect_videos, task_text
from sim_envs.play import make_play_policy
from sim_envs.video_writer import write_mp4
from video_pretrain.data import ManifestSource

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "collect_videos.yaml"


def smooth_frames(n: int, h: int = 32, w: int = 48) -> list[np.ndarray]:
    """Moving colour gradients: content a video codec keeps close to the original."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = []
    for t in range(n):
        r = 128 + 100 * np.sin((xx + 2 * t) / 9.0)
        g = 128 + 100 * np.cos((yy + t) / 7.0)
        b = np.full_like(xx, 40 + 6 * t)
        frames.append(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8))
    return frames


def write_manifest(folder: Path, rows: list[tuple[str, int, str]]) -> Path:
    lines = ["path,num_frames,text"] + [f"{p},{n},{t}" for p, n, t in rows]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- mp4 round trip
def test_mp4_round_trip_keeps_count_shape_and_values(tmp_path: Path) -> None:
    frames = smooth_frames(12)
    path = tmp_path / "clip.mp4"
    assert write_mp4(path, iter(frames), fps=25) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temp file left behind
    video = read_frames(path)
    assert video.shape == (12, 32, 48, 3) and video.dtype == np.uint8
    assert count_frames(path) == 12
    err = np.abs(video.astype(np.int16) - np.stack(frames).astype(np.int16))
    assert err.mean() < 4.0
    subset = read_frames(path, [7, 2, 2])
    assert np.array_equal(subset[0], video[7]) and np.array_equal(subset[2], video[2])


def test_odd_frame_size_is_padded_to_even(tmp_path: Path) -> None:
    frames = [f[:31, :47] for f in smooth_frames(3)]
    write_mp4(tmp_path / "odd.mp4", frames, fps=10)
    assert read_frames(tmp_path / "odd.mp4").shape == (3, 32, 48, 3)


def test_writer_rejects_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "empty.mp4", [], fps=10)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "float.mp4", [np.zeros((8, 8, 3), np.float32)], fps=10)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- manifest
def test_manifest_with_mp4_and_frame_folder(tmp_path: Path) -> None:
    frames = smooth_frames(5)
    write_mp4(tmp_path / "a.mp4", frames, fps=10)
    folder = tmp_path / "ep1"
    folder.mkdir()
    for i, f in enumerate(frames[:4]):
        Image.fromarray(f).save(folder / f"{i:06d}.png")
    write_manifest(tmp_path, [("a.mp4", 5, "a hand waves"), ("ep1", 4, "a hand pokes")])
    entries = read_manifest(tmp_path, check_counts=True)
    assert [(e.relpath, e.num_frames, e.text) for e in entries] == [("a.mp4", 5, "a hand waves"), ("ep1", 4, "a hand pokes")]
    from_folder = read_frames(entries[1])
    assert from_folder.shape == (4, 32, 48, 3)
    assert np.array_equal(from_folder, np.stack(frames[:4]))  # png is lossless
    assert np.array_equal(read_frames(entries[1], [3, 0]), from_folder[[3, 0]])


@pytest.mark.parametrize("rel", ["../outside.mp4", "/etc/passwd", "sub/../../x.mp4"])
def test_manifest_rejects_paths_outside_its_folder(tmp_path: Path, rel: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_mp4(tmp_path / "outside.mp4", smooth_frames(2), fps=10)
    write_manifest(data, [(rel, 2, "x")])
    with pytest.raises(VideoDatasetError, match="leaves the manifest's folder|absolute"):
        read_manifest(data)


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(VideoDatasetError, match="no such manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("file,num_frames\nx.mp4,3\n")
    with pytest.raises(VideoDatasetError, match="missing column.*path"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, [("missing.mp4", 3, "x")])
    with pytest.raises(VideoDatasetError, match="missing.mp4.*does not exist"):
        read_manifest(tmp_path)
    write_mp4(tmp_path / "a.mp4", smooth_frames(2), fps=10)
    write_manifest(tmp_path, [("a.mp4", "two", "x")])
    with pytest.raises(VideoDatasetError, match="num_frames 'two'"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, [("a.mp4", 0, "x")])
    with pytest.raises(VideoDatasetError, match=">= 1"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, [("a.mp4", 3, "x")])
    with pytest.raises(VideoDatasetError, match="has 2 frames but the manifest says 3"):
        read_manifest(tmp_path, check_counts=True)


def test_a_manifest_without_counts_or_texts_is_counted_as_stage_1_counts_every_clip(tmp_path: Path, caplog) -> None:
    """num_frames is optional (no column, or an empty cell): stage 1 counts every clip's frames anyway, so requiring
    it only made users count them by hand; text is optional too."""
    write_mp4(tmp_path / "a.mp4", smooth_frames(5), fps=10)
    write_mp4(tmp_path / "b.mp4", smooth_frames(3), fps=10)
    (tmp_path / "manifest.csv").write_text("path\na.mp4\nb.mp4\n")
    assert [(e.relpath, e.num_frames, e.text) for e in read_manifest(tmp_path, check_counts=True)] == [
        ("a.mp4", None, ""), ("b.mp4", None, "")]
    (tmp_path / "manifest.csv").write_text("path,num_frames,caption\na.mp4,,waves\n")  # a misnamed column: said
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.video"):
        assert read_manifest(tmp_path)[0].text == ""
    assert "no column text; column(s) caption are not read" in caplog.text
    (tmp_path / "manifest.csv").write_text("path,num_frames,text\na.mp4,,waves\nb.mp4,3,\n")
    assert [(e.num_frames, e.text) for e in read_manifest(tmp_path, check_counts=True)] == [(None, "waves"), (3, "")]
    source = ManifestSource(tmp_path, image_size=16, check_clips=False)  # the empty count is counted even so
    assert source.lengths.tolist() == [5, 3]
    (tmp_path / "manifest.csv").write_text("path,num_frames,text\na.mp4,,waves\nb.mp4,4,\n")  # b overstated
    for verify, counts, mismatches in ((False, [5, 4], []), (True, [5, 3], ["b.mp4: 3 frames, manifest says 4"])):
        summary = summarize_videos(tmp_path, verify=verify)  # data.inspect: still a manifest, its rows in order
        assert summary.manifest and [e.num_frames for e in summary.entries] == counts
        assert summary.mismatches == mismatches and summary.counted == verify


def test_corrupt_clip_is_reported_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "broken_clip.mp4"
    bad.write_bytes(b"\x00garbage, not a video" * 64)
    write_manifest(tmp_path, [("broken_clip.mp4", 3, "x")])
    entry = read_manifest(tmp_path)[0]  # parsing only checks that it exists
    with pytest.raises(VideoDatasetError, match="broken_clip.mp4.*corrupt or unreadable"):
        read_frames(entry)
    with pytest.raises(VideoDatasetError, match="broken_clip.mp4"):
        count_frames(entry)


def test_frame_index_out_of_range(tmp_path: Path) -> None:
    write_mp4(tmp_path / "a.mp4", smooth_frames(4), fps=10)
    with pytest.raises(VideoDatasetError, match="index 4 out of range.*4 frames"):
        read_frames(tmp_path / "a.mp4", [0, 4])


# ----------------------------------------------------------------------------- play policy
def _root_body(model, geom: int) -> int:
    body = model.geom_bodyid[geom]
    while model.body_parentid[body] != 0:
        body = model.body_parentid[body]
    return int(body)


def _hand_touches(base, body: str) -> bool:
    """Whether a geom of the hand is in contact with a geom of ``body`` right now."""
    m, d = base.model, base.data
    hand, obj = m.body("gripper").id, m.body(body).id
    for c in d.contact[:d.ncon]:
        roots = {_root_body(m, c.geom1), _root_body(m, c.geom2)}
        if hand in roots and obj in roots:
            return True
    return False


def test_play_policy_moves_an_object_by_contact() -> None:
    env = gym.make(sim_envs.env_id("PushBlock"), render_images=False, embodiment="hand",
                   terminate_on_success=False, max_episode_steps=120)
    obs, _ = env.reset(seed=3)
    policy = make_play_policy(env, rng=np.random.default_rng(3))
    base = env.unwrapped
    start = base.body_pos("block")
    touched = False
    for _ in range(120):
        action = policy.act(obs)
        assert action.shape == (4,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
        obs, *_ = env.step(action)
        touched = touched or _hand_touches(base, "block")
    env.close()
    assert touched, "the hand never touched the block"
    assert np.linalg.norm(base.body_pos("block")[:2] - start[:2]) > 0.01
    assert policy.primitives[0][0] in ("poke", "grab", "tap")


def test_play_policy_is_seeded() -> None:
    env = gym.make(sim_envs.env_id("OpenDrawer"), render_images=False, embodiment="hand", terminate_on_success=False)
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=5)
        policy = make_play_policy(env, rng=np.random.default_rng(11))
        actions = []
        for _ in range(40):
            actions.append(policy.act(obs))
            obs, *_ = env.step(actions[-1])
        runs.append(np.stack(actions))
    env.close()
    np.testing.assert_array_equal(runs[0], runs[1])


# ----------------------------------------------------------------------------- collector
def test_task_text_reads_like_a_caption() -> None:
    assert task_text("PushBlock") == "a hand pushes the red block onto the green disc"
    assert task_text("PickPlace") == "a hand picks up the red block and puts it on the plate"
    assert task_text("PlaceInBowl") == "a hand puts the can into the bowl"


def test_collect_videos_writes_a_readable_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), {
        "tasks": ["PushBlock", "Lift"], "num_clips": 3, "play_fraction": 0.34, "image_size": 32,
        "frame_stride": 3, "play_steps": 30, "output": str(tmp_path / "videos")})
    out = collect_videos(cfg, progress=False)
    entries = read_manifest(out, check_counts=True)
    assert len(entries) == 3
    assert sorted(p.name for p in out.iterdir()) == [".collect_videos.lock", "clip_00000.mp4", "clip_00001.mp4",
                                                      "clip_00002.mp4", "info.json", "manifest.csv"]
    texts = [e.text for e in entries]
    assert texts.count("a hand plays with the objects on the table") == 1
    assert set(texts) - {"a hand plays with the objects on the table"} <= {
        "a hand pushes the red block onto the green disc", "a hand lifts the red block"}
    for e in entries:
        frames = read_frames(e)
        assert frames.shape == (e.num_frames, 32, 32, 3)
        assert frames.std() > 5  # a rendered scene, not a blank frame
    play = next(e for e in entries if "plays" in e.text)
    assert play.num_frames == 30 // 3 + 1
    assert "3 clips" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already exists.*overwrite"):
        collect_videos(cfg, progress=False)
    assert read_manifest(out)[0].path.name == "clip_00000.mp4"
    # a folder of the user's own clips without a manifest: refused before a frame is rendered, the clip untouched
    (out / "manifest.csv").unlink()
    before = (out / "clip_00001.mp4").read_bytes()
    with pytest.raises(ValueError, match="holds 3 clip file.*without a manifest.csv.*overwrite=true"):
        collect_videos(cfg, progress=False)
    assert (out / "clip_00001.mp4").read_bytes() == before


@pytest.mark.parametrize("override, message", [
    ({"num_clips": "x"}, "num_clips='x'; expected an integer"),
    ({"fps": "fast"}, "fps='fast'; expected a number or null"),
    ({"overwrite": "no"}, "overwrite='no'; expected true or false"),
])
def test_a_video_setting_of_the_wrong_type_is_named(tmp_path: Path, override: dict, message: str) -> None:
    """``num_clips=x`` gave int()'s message without the setting; ``overwrite=no`` was bool("no"): true."""
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), {"tasks": ["Lift"], "num_clips": 1, "image_size": 32,
                                                   "output": str(tmp_path / "videos")}, override)
    with pytest.raises(ValueError) as err:
        collect_videos(cfg, progress=False)
    assert str(err.value) == f"collect_videos config: {message}"
    assert not (tmp_path / "videos").exists()


def test_an_interrupted_collection_leaves_the_folder_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after some clips said "a rerun starts it over", but the rerun refused: the first clips lay in the
    folder without a manifest. The clips now wait in a staging folder until every one is recorded."""
    import sim_envs.collect_videos as cv

    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), {"tasks": ["Lift"], "num_clips": 3, "play_fraction": 0.0,
                                                   "image_size": 32, "output": str(tmp_path / "videos")})
    real, written = cv.write_mp4, []

    def interrupted_at_the_third(path, frames, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        return real(path, frames, **kwargs)

    monkeypatch.setattr(cv, "write_mp4", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        collect_videos(cfg, progress=False)
    # the staged clips gone with their folder (the lock file stays: the operating system released its lock)
    assert len(written) == 2 and [p.name for p in (tmp_path / "videos").iterdir()] == [".collect_videos.lock"]
    (tmp_path / "videos" / ".clips.abandoned.tmp").mkdir()  # a collection killed outright left its staging folder
    with cv.collection_lock(tmp_path / "videos"):  # a collection writing there now: refused, its staging kept
        with pytest.raises(ValueError, match=r"collect_videos: another collection is writing .*videos now \(pid "
                                             rf"{os.getpid()}, since .*\); wait for it to end"):
            collect_videos(cfg, progress=False)
        assert (tmp_path / "videos" / ".clips.abandoned.tmp").is_dir()
    monkeypatch.setattr(cv, "write_mp4", real)
    import contextlib

    @contextlib.contextmanager
    def finished_meanwhile(out):  # another collection ends between the start's check and this one's lock
        (out / "manifest.csv").write_text("path,num_frames,text\n")
        yield

    with monkeypatch.context() as m:
        m.setattr(cv, "collection_lock", finished_meanwhile)
        with pytest.raises(ValueError, match="manifest.csv already exists; pass overwrite=true"):
            collect_videos(cfg, progress=False)
    (tmp_path / "videos" / "manifest.csv").unlink()
    out = collect_videos(cfg, progress=False)  # the rerun starts over (and removes the abandoned staging folder)
    assert sorted(p.name for p in out.iterdir()) == [".collect_videos.lock", "clip_00000.mp4", "clip_00001.mp4",
                                                      "clip_00002.mp4", "info.json", "manifest.csv"]
    assert len(read_manifest(out, check_counts=True)) == 3
