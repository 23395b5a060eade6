"""Stage-1 frame sources: manifest (mp4 + frame folders) and robot HDF5, stride, resize, split, cache, bad clips."""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from robopretrain.data.hdf5 import DatasetError
from robopretrain.data.video import VideoDatasetError
from sim_envs.video_writer import write_mp4
from video_pretrain.data import (ClipCache, HDF5ImageSource, ManifestSource, SkippedVideoError, SubsetSource,
                                 _read_rows, open_frame_source, resize_frames, split_by_video)


def smooth_frames(n: int, h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """Moving colour gradients (a video codec keeps them close to the original)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = []
    for t in range(n):
        r = 128 + 100 * np.sin((xx + 2 * t + phase) / 9.0)
        g = 128 + 100 * np.cos((yy + t) / 7.0)
        b = np.full_like(xx, 40 + 8 * t)
        frames.append(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{t:06d}.png")


def write_manifest(root: Path, rows: list[tuple[str, int]]) -> Path:
    path = root / "manifest.csv"
    path.write_text("path,num_frames,text\n" + "".join(f"{p},{n},clip {p}\n" for p, n in rows))
    return path


@pytest.fixture()
def video_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """An mp4 clip (12 frames, 32 x 48, not square) and a frame folder (10 frames, 40 x 40 png)."""
    mp4 = smooth_frames(12, 32, 48)
    folder = smooth_frames(10, 40, 40, phase=5.0)
    write_mp4(tmp_path / "clip.mp4", mp4, fps=10)
    write_folder(tmp_path / "episode_0", folder)
    write_manifest(tmp_path, [("clip.mp4", 12), ("episode_0", 10)])
    return tmp_path, mp4, folder


def test_stage_1_resizes_frames_as_stages_2_and_3_resize_a_camera() -> None:
    """Stage 1 resized with torch's antialiased bilinear, stages 2 and 3 (a converted copy, an env's frames) by area
    average: the encoder saw other pixels in stage 2, up to 45 grey levels off at edges (a new user's finding). One
    resize now, shrinking and enlarging; the central square is cropped first (the default)."""
    from robopretrain.envs.camera_frames import to_agent_frame

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    for size in (16, 64):
        expected = np.stack([to_agent_frame(f[:, 4:44], size) for f in frames])
        assert np.array_equal(resize_frames(frames, size), expected), size
    stretched = np.stack([to_agent_frame(f, 16) for f in frames])
    assert np.array_equal(resize_frames(frames, 16, center_crop=False), stretched)
    assert resize_frames(frames[:0], 16).shape == (0, 16, 16, 3)
    with pytest.raises(ValueError, match=r"expected uint8 RGB frames \(T, H, W, 3\), got uint8 \(3, 40, 48, 1\)"):
        resize_frames(frames[..., :1], 16)  # (Pillow's TypeError before; the sources give RGB: a review)


# ----------------------------------------------------------------------------- manifest source
def test_manifest_with_mp4_and_frame_folder(video_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, mp4, folder = video_dir
    src = ManifestSource(root, image_size=16)
    assert src.num_videos == 2 and [src.video_name(i) for i in range(2)] == ["clip.mp4", "episode_0"]
    assert src.lengths.tolist() == [12, 10] and src.video_length(1) == 10
    assert src.video_text(1) == "clip episode_0" and src.bad_videos == []
    video = src.frames(0, np.arange(12))
    assert video.shape == (12, 16, 16, 3) and video.dtype == np.uint8
    expected = resize_frames(mp4, 16).astype(np.int16)  # central 32 x 32 square, then resized
    assert np.abs(video.astype(np.int16) - expected).mean() < 6.0
    stretched = resize_frames(mp4, 16, center_crop=False).astype(np.int16)
    assert np.abs(video.astype(np.int16) - expected).mean() < np.abs(video.astype(np.int16) - stretched).mean()
    assert np.array_equal(src.frames(1, [9, 2, 2]), resize_frames(folder, 16)[[9, 2, 2]])  # png is lossless
    (root / "episode_empty").mkdir()  # a listed frame folder that holds no frames: left out, named by its path
    write_manifest(root, [("clip.mp4", 12), ("episode_0", 10), ("episode_empty", 3)])
    with_empty = ManifestSource(root, image_size=16)
    assert with_empty.num_videos == 2 and with_empty.bad_videos == ["episode_empty"]


def test_a_video_file_or_a_folder_without_a_manifest_is_read_directly(video_dir, tmp_path: Path, caplog) -> None:
    """data.path=<one .mp4> was read as a CSV manifest ("not a readable UTF-8 CSV manifest ('utf-8' codec can't
    decode ...)") and a folder of clips without manifest.csv was refused: now one clip, and the folder's clips."""
    root, mp4, folder = video_dir
    one = ManifestSource(root / "clip.mp4", image_size=16)
    assert one.num_videos == 1 and one.video_name(0) == "clip.mp4" and one.lengths.tolist() == [12]
    assert one.video_text(0) == ""
    (root / "manifest.csv").unlink()
    write_mp4(root / "another.mp4", mp4[:5], fps=10)
    (root / "notes.txt").write_text("not a clip")
    (root / "empty").mkdir()
    for check in (True, False):  # clips no manifest lists are counted either way
        src = ManifestSource(root, image_size=16, check_clips=check)
        assert [src.video_name(i) for i in range(src.num_videos)] == ["another.mp4", "clip.mp4", "episode_0"]
        assert src.lengths.tolist() == [5, 12, 10]
    # media the reader does not take (a gif, an m4v, a camera's frames one folder down) were dropped without a word;
    # notes and empty folders beside the clips say nothing
    from robopretrain.data.video import clip_entries

    with caplog.at_level(logging.WARNING):
        clip_entries(root)
    assert "not read" not in caplog.text
    (root / "anim.gif").write_bytes(b"GIF89a")
    write_folder(root / "nested" / "cam0", mp4[:3])
    with caplog.at_level(logging.WARNING):
        assert [e.relpath for e in clip_entries(root)] == ["another.mp4", "clip.mp4", "episode_0"]
    assert "2 file(s) or folder(s) that look like clips are not read: anim.gif, nested/" in caplog.text
    (root / "anim.gif").unlink()
    (root / "clip9.mp4").symlink_to(tmp_path / "unmounted" / "clip9.mp4")  # a disk not mounted: its clips dropped
    with caplog.at_level(logging.WARNING):
        assert [e.relpath for e in clip_entries(root)] == ["another.mp4", "clip.mp4", "episode_0"]
    assert f"1 link(s) lead to nothing and are not read: clip9.mp4 -> {tmp_path / 'unmounted'}" in caplog.text
    (root / "clip9.mp4").unlink()
    import shutil

    shutil.rmtree(root / "nested")
    assert np.array_equal(src.frames(2, [3]), resize_frames(folder, 16)[[3]])
    frames_only = ManifestSource(root / "episode_0", image_size=16)  # a frame folder given itself: one clip
    assert frames_only.num_videos == 1 and frames_only.lengths.tolist() == [10]
    with pytest.raises(VideoDatasetError, match=r"empty: no manifest.csv, no video files .* write .*manifest.csv "
                                                r"\(header path,num_frames,text.*sim_envs.collect_videos writes one"):
        ManifestSource(root / "empty", image_size=16)
    with pytest.raises(VideoDatasetError, match=r"notes.txt: neither a video file .* nor a manifest"):
        ManifestSource(root / "notes.txt", image_size=16)
    write_folder(tmp_path / "both", mp4[:3])
    write_mp4(tmp_path / "both" / "x.mp4", mp4[:3], fps=10)
    with pytest.raises(VideoDatasetError, match=r"both: holds both numbered frames and other clips"):
        ManifestSource(tmp_path / "both", image_size=16)


def test_frame_numbering_gaps_are_warned_once_per_clip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Frames 000000, 000001, 000002, 000005 were read as four consecutive steps without a word."""
    frames = smooth_frames(6, 16, 16)
    gappy, whole = tmp_path / "gappy", tmp_path / "whole"
    gappy.mkdir()
    for t, number in enumerate([0, 1, 2, 5, 9, 10]):
        Image.fromarray(frames[t]).save(gappy / f"{number:06d}.png")
    write_folder(whole, frames)
    write_manifest(tmp_path, [("gappy", 6), ("whole", 6)])
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.video"):
        src = ManifestSource(tmp_path, image_size=16)
        ManifestSource(tmp_path, image_size=16)
    assert src.lengths.tolist() == [6, 6]
    warned = [r.getMessage() for r in caplog.records if "frame numbers jump" in r.getMessage()]
    assert len(warned) == 1 and str(gappy) in warned[0], warned
    assert "jump from 2 to 5 (1 more gap), 5 number(s) missing" in warned[0] and "consecutive steps" in warned[0]
    from robopretrain.data.video import count_frames

    stamped = tmp_path / "stamped"  # a camera logger's date-time names: 20 digits (past int64), no index to miss
    stamped.mkdir()
    for t in range(4):
        Image.fromarray(frames[t]).save(stamped / f"2023110715301{t}{t * 33333:06d}.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.video"):
        assert count_frames(stamped) == 4
    assert not caplog.records


def test_frames_named_with_a_prefix_are_read_and_two_sequences_in_one_folder_refused(tmp_path: Path) -> None:
    """frame_0001.png ... (a common export naming) read as a folder without frames; a folder holding two cameras'
    sequences (left_N, right_N) must not be read interleaved."""
    from robopretrain.data.video import VideoDatasetError, count_frames, frame_files

    frames = smooth_frames(12, 16, 16)
    named = tmp_path / "named"
    named.mkdir()
    for t in (10, 9, 1, 0, 2):  # numbers, not names, order them: frame_10 after frame_9
        Image.fromarray(frames[t]).save(named / f"frame_{t}.png")
    assert [p.name for p in frame_files(named)] == ["frame_0.png", "frame_1.png", "frame_2.png", "frame_9.png",
                                                     "frame_10.png"]
    assert count_frames(named) == 5
    (named / "._frame_1.png").write_bytes(b"a macOS copy's AppleDouble file")  # hidden: not a frame
    assert len(frame_files(named)) == 5
    (named / "left_0.png").write_bytes((named / "frame_0.png").read_bytes())
    with pytest.raises(VideoDatasetError, match=r"numbered images of 2 sequences \('frame_N', 'left_N'\)"):
        frame_files(named)
    bare = tmp_path / "bare"  # 000000.png ... beside mask_000000.png ...: the bare numbers are the frames (as before)
    write_folder(bare, frames[:4])
    for t in range(4):
        (bare / f"mask_{t:06d}.png").write_bytes((bare / f"{t:06d}.png").read_bytes())
    assert [p.name for p in frame_files(bare)] == [f"{t:06d}.png" for t in range(4)]
    from robopretrain.data.video import clip_entries

    assert [e.relpath for e in clip_entries(tmp_path)] == ["bare"]  # named is ambiguous: not a clip (warned)
    # one number given twice (000001.png beside 000001.jpg, or 2.png beside 000002.png): each step was read twice
    for extra in ("000001.jpg", "2.png"):
        Image.fromarray(frames[0]).save(bare / extra)
        with pytest.raises(VideoDatasetError, match=r"bare: frame number (1|2) is given by .* number\(s\) twice"):
            frame_files(bare)
        (bare / extra).unlink()


def test_a_manifest_listing_one_clip_twice_is_refused(tmp_path: Path) -> None:
    """'a.mp4' and './a.mp4' (or the same row twice): the clip was trained twice and could land in both splits."""
    from robopretrain.data.video import read_manifest

    write_folder(tmp_path / "a", smooth_frames(3, 16, 16))
    write_folder(tmp_path / "b", smooth_frames(3, 16, 16))
    for rows in ([("a", 3), ("b", 3), ("./a", 3)], [("b", 3), ("b", 3)]):
        write_manifest(tmp_path, rows)
        with pytest.raises(VideoDatasetError, match=r"manifest.csv: '(\./a|b)' and '(a|b)' are one clip listed twice"):
            read_manifest(tmp_path)
    write_manifest(tmp_path, [("a", 3), ("b", 3)])
    assert [e.relpath for e in read_manifest(tmp_path)] == ["a", "b"]


def test_the_resize_of_video_frames_is_logged_once(video_dir, caplog: pytest.LogCaptureFixture) -> None:
    """Stage 1 said the source size -> model size only for HDF5 image keys: now for video and frame sources too."""
    root, _, _ = video_dir
    with caplog.at_level(logging.INFO, logger="video_pretrain.data"):
        ManifestSource(root, image_size=16)
    said = [r.getMessage() for r in caplog.records if "resized to image_size" in r.getMessage()]
    assert said == [f"{root}: frames of 32x48 (1 clip), 40x40 (1 clip), resized to image_size=16 (the central square "
                    "of non-square ones); an encoder trained on them takes 16 px cameras in stage 2 (image_size=32 "
                    "keeps the most common clips' resolution: the central 32x32 square)"], said  # not 'their size'
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="video_pretrain.data"):
        ManifestSource(root, image_size=16, center_crop=False)  # stretched: no size keeps the resolution
    said = [r.getMessage() for r in caplog.records if "resized to image_size" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("takes 16 px cameras in stage 2"), said
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="video_pretrain.data"):
        ManifestSource(root / "episode_0", image_size=40)  # already the model's size: nothing to say
    assert "resized to image_size" not in caplog.text


def test_the_crop_of_non_square_clips_is_said_once_and_can_be_a_stretch(video_dir, caplog, tmp_path) -> None:
    """Stage 1 cropped non-square clips while stages 2-3 stretch a non-square camera, silently: said once per source;
    data.stretch=true stretches here too (through video_pretrain.train's config)."""
    import logging

    from video_pretrain.train import open_sources
    from omegaconf import OmegaConf

    root, mp4, _ = video_dir
    with caplog.at_level(logging.WARNING):
        src = ManifestSource(root, image_size=16)
        src.frames(0, np.arange(3))
        src.frames(0, np.arange(3, 6))
        src.frames(1, np.arange(3))  # square: nothing to say
    assert caplog.text.count("32x48 frames are centre-cropped to square, as are those of every other non-square "
                             "clip") == 1
    from video_pretrain.data import cropped_sizes

    assert cropped_sizes(src) == ["32x48"]  # what the encoder records (stage 2 compares it with its cameras)
    assert cropped_sizes(ManifestSource(root, image_size=16, check_clips=False)) is None  # counted, not opened
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "video_pretrain.yaml")
    cfg.data.valid_fraction, cfg.image_size, cfg.objective = 0, 16, {"name": "icvf"}
    assert open_sources(cfg, root)[2]["cropped_sizes"] == ["32x48"]
    cfg.data.stretch = True
    assert open_sources(cfg, root)[2]["cropped_sizes"] == []
    stretched = open_sources(cfg, root)[0].frames(0, np.arange(12)).astype(np.int16)
    assert np.abs(stretched - resize_frames(mp4, 16, center_crop=False)).mean() < 3.0  # 9 from the crop


def test_resizing_keeps_black_black_and_white_white() -> None:
    for value in (0, 255):
        frames = np.full((2, 30, 40, 3), value, np.uint8)
        out = resize_frames(frames, 16)
        assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8 and np.all(out == value)


def test_stride_and_resize(video_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, folder = video_dir
    full = ManifestSource(root, image_size=20)
    strided = ManifestSource(root, image_size=20, stride=3)
    assert strided.lengths.tolist() == [4, 4]  # ceil(12 / 3), ceil(10 / 3)
    assert np.array_equal(strided.frames(1, [0, 1, 3]), full.frames(1, [0, 3, 9]))
    assert np.array_equal(strided.frames(0, [1, 3]), full.frames(0, [3, 9]))
    assert np.array_equal(full.frames(1, [4]), resize_frames(folder[[4]], 20))
    native = ManifestSource(root, image_size=40)
    assert np.array_equal(native.frames(1, [0, 7]), folder[[0, 7]])  # no resize at the native size
    with pytest.raises(IndexError, match="episode_0.*out of range"):
        strided.frames(1, [4])


def test_frames_are_the_same_cached_or_not(video_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = video_dir
    cached = ManifestSource(root, image_size=16, stride=2)
    direct = ManifestSource(root, image_size=16, stride=2, max_cache_bytes=0)
    for i in range(2):
        idx = [3, 0, 3, 1]
        assert np.array_equal(cached.frames(i, idx), direct.frames(i, idx))
    assert len(cached.cache) == 2 and len(direct.cache) == 0


@pytest.mark.parametrize("max_cache_bytes", [None, 0], ids=["whole", "some"])
def test_frames_are_fitted_as_they_are_decoded_never_stacked_at_full_size(video_dir, monkeypatch, max_cache_bytes):
    """A phone's 10 s clip (1080x1920) was decoded whole at full size, then resized: 7.5 GB for a 3.7 MB clip (helper
    W). Each frame is now fitted as it is decoded, to the frames a resize of the whole stack gives."""
    import robopretrain.data.video as video_mod
    import video_pretrain.data as data_mod

    root, mp4, folder = video_dir
    reference = {i: resize_frames(video_mod.read_frames(root / name), 16)
                 for i, name in enumerate(("clip.mp4", "episode_0"))}
    stacked = []
    real_stack = video_mod._stack
    monkeypatch.setattr(video_mod, "_stack", lambda frames, source: stacked.append(frames[0].shape)
                        or real_stack(frames, source))
    kwargs = {} if max_cache_bytes is None else {"max_cache_bytes": max_cache_bytes}
    src = data_mod.ManifestSource(root, image_size=16, **kwargs)
    for i in range(2):
        assert np.array_equal(src.frames(i, [5, 0, 5, 9]), reference[i][[5, 0, 5, 9]])
    assert stacked and set(stacked) == {(16, 16, 3)}  # what was held until the stack: fitted frames only
    trims = []  # the resize's freed temporaries went to the heap's fragments (3-4 GB resident): trimmed as it goes
    monkeypatch.setattr(data_mod, "trim_heap", lambda: trims.append(1))
    monkeypatch.setattr(data_mod, "TRIM_EVERY", 2)
    monkeypatch.setattr(data_mod, "TRIM_FRAME_BYTES", 40 * 40 * 3)  # the folder's frames, not the mp4's 32 x 48
    data_mod.ManifestSource(root, image_size=16, **kwargs).frames(0, [3, 0])
    assert trims == []
    data_mod.ManifestSource(root, image_size=16, **kwargs).frames(1, [3, 0])
    assert len(trims) == (5 if max_cache_bytes is None else 1)  # 10 frames decoded whole, or the 2 asked for
    with pytest.raises(VideoDatasetError, match=r"frames of different sizes \[\(40, 40, 3\), \(41, 40, 3\)\]"):
        Image.fromarray(np.zeros((41, 40, 3), np.uint8)).save(root / "episode_0" / "000004.png")
        video_mod.read_frames(root / "episode_0", each=lambda f: f[:2, :2])


def test_split_by_video_is_disjoint_covering_and_seeded() -> None:
    source = SimpleNamespace(num_videos=17)
    train, valid = split_by_video(source, 0.2, seed=0)
    assert len(valid) == 3 and len(train) == 14
    assert set(train).isdisjoint(valid) and sorted(set(train) | set(valid)) == list(range(17))
    again = split_by_video(source, 0.2, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], valid)
    assert any(not np.array_equal(split_by_video(source, 0.2, seed=s)[1], valid) for s in range(1, 5))
    assert split_by_video(source, 0.0, seed=0)[1].size == 0
    assert len(split_by_video(SimpleNamespace(num_videos=3), 0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError, match="cannot be split"):
        split_by_video(SimpleNamespace(num_videos=1), 0.5, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_by_video(source, 1.0, seed=0)


def test_subset_source_maps_ids(video_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = video_dir
    src = ManifestSource(root, image_size=16)
    sub = SubsetSource(src, [1])
    assert sub.num_videos == 1 and sub.video_length(0) == 10 and sub.video_name(0) == "episode_0"
    assert np.array_equal(sub.frames(0, [2]), src.frames(1, [2]))
    with pytest.raises(IndexError):
        SubsetSource(src, [2])
    with pytest.raises(IndexError):  # a negative id would read the last clips silently
        SubsetSource(src, [-1, 1])


# ----------------------------------------------------------------------------- cache
def test_clip_cache_is_lru_and_bounded_by_bytes() -> None:
    cache = ClipCache(max_bytes=250)
    for k in range(3):
        assert cache.put(k, np.zeros(100, np.uint8))
    assert list(cache._items) == [1, 2] and cache.nbytes == 200  # key 0 evicted to fit key 2
    assert cache.get(1) is not None  # 1 is now the most recent
    cache.put(3, np.zeros(100, np.uint8))
    assert 2 not in cache and 1 in cache and 3 in cache and cache.nbytes == 200
    assert not cache.put(4, np.zeros(251, np.uint8)) and 4 not in cache
    assert cache.get(4) is None and cache.hits == 1 and cache.misses == 1
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.max_bytes == 250 and len(copy) == 0 and copy.nbytes == 0
    cache.clear()  # empties the byte count too: a clip of the whole budget fits again, and is counted once
    assert len(cache) == 0 and cache.nbytes == 0
    assert cache.put(5, np.zeros(250, np.uint8)) and cache.nbytes == 250


def test_source_cache_bound_respected_and_clips_served_from_it(tmp_path: Path) -> None:
    for k in range(5):
        write_folder(tmp_path / f"ep{k}", smooth_frames(8, 16, 16, phase=3.0 * k))
    write_manifest(tmp_path, [(f"ep{k}", 8) for k in range(5)])
    clip_bytes = 8 * 16 * 16 * 3
    src = ManifestSource(tmp_path, image_size=16, max_cache_bytes=int(2.5 * clip_bytes))
    first = src.frames(0, [0, 7])
    for k in range(5):
        src.frames(k, [1])
        assert src.cache.nbytes <= int(2.5 * clip_bytes)
    assert len(src.cache) == 2 and 3 in src.cache and 4 in src.cache
    for f in (tmp_path / "ep4").iterdir():  # a cached clip no longer touches the disk
        f.unlink()
    assert src.frames(4, [0, 7]).shape == (2, 16, 16, 3)
    assert np.array_equal(src.frames(0, [0, 7]), first)  # re-decoded after eviction, same pixels
    small = ManifestSource(tmp_path, image_size=16, max_cache_bytes=clip_bytes - 1, check_clips=False)
    assert small.frames(1, [3]).shape == (1, 16, 16, 3) and len(small.cache) == 0  # too big to cache


# ----------------------------------------------------------------------------- bad clips
def test_corrupt_clip_reported_by_name_and_skipped(video_dir: tuple[Path, np.ndarray, np.ndarray],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    root, _, _ = video_dir
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    write_manifest(root, [("clip.mp4", 12), ("broken.mp4", 30), ("episode_0", 10)])
    with caplog.at_level(logging.WARNING, logger="video_pretrain.data"):
        src = ManifestSource(root, image_size=16)
    assert src.bad_videos == ["broken.mp4"]
    assert [src.video_name(i) for i in range(src.num_videos)] == ["clip.mp4", "episode_0"]
    warnings = [r.getMessage() for r in caplog.records if "broken.mp4" in r.getMessage()]
    assert len(warnings) == 1 and "skipping bad video" in warnings[0]
    with pytest.raises(VideoDatasetError, match="broken.mp4"):
        ManifestSource(root, image_size=16, strict=True)


def test_clip_failing_only_at_decode_is_skipped_once(video_dir: tuple[Path, np.ndarray, np.ndarray],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    root, _, _ = video_dir
    (root / "episode_0" / "000004.png").write_bytes(b"not a png")  # listed fine, fails when read
    src = ManifestSource(root, image_size=16)
    assert src.num_videos == 2 and src.bad_videos == []
    with caplog.at_level(logging.WARNING, logger="video_pretrain.data"):
        for _ in range(3):
            with pytest.raises(SkippedVideoError, match="episode_0"):
                src.frames(1, [0])
    assert src.bad_videos == ["episode_0"]
    assert sum("episode_0" in r.getMessage() for r in caplog.records) == 1
    assert src.frames(0, [0]).shape == (1, 16, 16, 3)  # the other clip still works
    strict = ManifestSource(root, image_size=16, strict=True)
    with pytest.raises(VideoDatasetError, match=r"000004\.png") as info:
        strict.frames(1, [0])
    assert not isinstance(info.value, SkippedVideoError)


# ----------------------------------------------------------------------------- HDF5 robot trajectories
def write_robomimic(path: Path, lengths: list[int], size: int = 24, bad_demo: int | None = None) -> dict[str, np.ndarray]:
    """A tiny robomimic-layout file; returns each demo's obs images with the final next_obs frame appended."""
    videos = {}
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps({"env_name": "PushBlock", "env_version": "0", "type": 4, "env_kwargs": {}})
        for i, n in enumerate(lengths):
            name = f"demo_{i}"
            images = rng.integers(0, 256, size=(n + 1, size, size, 3), dtype=np.uint8)
            demo = data.create_group(name)
            demo.attrs.update(num_samples=n, task="PushBlock" if i % 2 == 0 else "OpenDrawer", task_id=i % 2)
            obs_images = images[:n].astype(np.float32) if i == bad_demo else images[:n]
            demo.create_dataset("obs/agentview_image", data=obs_images)
            demo.create_dataset("next_obs/agentview_image", data=images[1:])
            for group in ("obs", "next_obs"):
                demo.create_dataset(f"{group}/proprio", data=np.zeros((n, 7), np.float32))
            demo.create_dataset("actions", data=np.zeros((n, 4), np.float32))
            demo.create_dataset("rewards", data=np.zeros(n, np.float32))
            demo.create_dataset("dones", data=np.zeros(n, np.float32))
            videos[name] = images
        names = [f"demo_{i}" for i in range(len(lengths))]
        f.create_dataset("mask/train", data=np.array(names[:-1], dtype="S"))
        f.create_dataset("mask/valid", data=np.array(names[-1:], dtype="S"))
    return videos


def test_a_final_next_frame_equal_to_the_last_frame_is_not_added_twice(tmp_path: Path) -> None:
    """A terminated episode of a converted file stores its last observation again as its next one (the converters'
    stand-in): every such clip ended on two equal frames (a new user's finding). A new final frame is added."""
    path = tmp_path / "demos.hdf5"
    videos = write_robomimic(path, [5, 7])
    with h5py.File(path, "r+") as f:
        f["data/demo_0/next_obs/agentview_image"][4] = f["data/demo_0/obs/agentview_image"][4]
    src = HDF5ImageSource(path, image_size=24, key="agentview_image")
    assert src.lengths.tolist() == [5, 8]
    assert np.array_equal(src.frames(0, np.arange(5)), videos["demo_0"][:5])


def test_hdf5_source_one_video_per_demo(tmp_path: Path) -> None:
    path = tmp_path / "demos.hdf5"
    videos = write_robomimic(path, [5, 7, 6, 4])
    src = HDF5ImageSource(path, image_size=24, key="agentview_image", mask="train")
    assert src.demo_names == ["demo_0", "demo_1", "demo_2"] and src.video_tasks == ["PushBlock", "OpenDrawer", "PushBlock"]
    assert src.lengths.tolist() == [6, 8, 7]  # N obs frames + the final next_obs frame
    assert np.array_equal(src.frames(1, np.arange(8)), videos["demo_1"])
    assert np.array_equal(src.frames(2, [6, 0, 3]), videos["demo_2"][[6, 0, 3]])
    uncached = HDF5ImageSource(path, image_size=24, demos=["demo_1"], max_cache_bytes=0)
    assert np.array_equal(uncached.frames(0, [7, 2, 5, 2]), videos["demo_1"][[7, 2, 5, 2]])
    handle = uncached._h5()
    uncached.frames(0, [1, 3])
    assert uncached._h5() is handle  # one open file per process, not one per read

    strided = HDF5ImageSource(path, image_size=12, stride=3, mask="train", include_final=False)
    assert strided.lengths.tolist() == [2, 3, 2]
    assert np.array_equal(strided.frames(1, [0, 2]), resize_frames(videos["demo_1"][[0, 6]], 12))
    by_task = HDF5ImageSource(path, image_size=12, tasks=["OpenDrawer"])
    assert by_task.demo_names == ["demo_1", "demo_3"]
    # unevenly spaced obs rows (a point selection) and the final next_obs frame in one read
    assert np.array_equal(uncached.frames(0, [0, 1, 5, 7]), videos["demo_1"][[0, 1, 5, 7]])


class _RecordingRows:
    """An array that records the keys it is indexed with (stands in for an h5py dataset)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.keys = array, []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.array[key]


def test_rows_are_read_as_one_slice_when_evenly_spaced_else_by_point_selection() -> None:
    """h5py's point selection is slow: evenly spaced rows (a clip's frames at a stride) are one strided slice."""
    ds = _RecordingRows(np.arange(20) * 10)
    for rows, key in (([4], slice(4, 5, 1)), ([1, 3, 5], slice(1, 6, 2)), ([0, 1, 5], [0, 1, 5])):
        got = _read_rows(ds, np.array(rows))
        assert np.array_equal(got, ds.array[rows]) and ds.keys[-1] == key, (rows, ds.keys[-1])


def test_a_bad_final_frame_is_reported_and_left_out_a_missing_one_silently(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "demos.hdf5"
    write_robomimic(path, [5, 6, 4])
    with caplog.at_level(logging.WARNING, logger="video_pretrain.data"):
        assert HDF5ImageSource(path, image_size=12).lengths.tolist() == [6, 7, 5]
    assert not caplog.records  # a clean file: no warning
    with h5py.File(path, "a") as f:
        del f["data/demo_0/next_obs/agentview_image"]
        f["data/demo_0/next_obs/agentview_image"] = np.zeros((5, 24, 24, 3), np.float32)
        del f["data/demo_1/next_obs/agentview_image"]
    with caplog.at_level(logging.WARNING, logger="video_pretrain.data"):
        assert HDF5ImageSource(path, image_size=12).lengths.tolist() == [5, 6, 5]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "demo_0/next_obs/agentview_image" in messages[0] and "obs frames only" in messages[0]
    # next_obs frames of another size than obs (a clip of both): left out with a warning (numpy's concatenate
    # error, naming no file, stopped stage 1), the resize to image_size said once at INFO
    with h5py.File(path, "a") as f:
        del f["data/demo_2/next_obs/agentview_image"]
        f["data/demo_2/next_obs/agentview_image"] = np.zeros((4, 32, 32, 3), np.uint8)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="video_pretrain.data"):
        src = HDF5ImageSource(path, image_size=12)
        assert src.lengths.tolist() == [5, 6, 4] and src.frames(2, np.arange(4)).shape == (4, 12, 12, 3)
    messages = [r.getMessage() for r in caplog.records]
    assert any("demo_2/next_obs/agentview_image: frames of 32x32, obs/agentview_image's 24x24" in m for m in messages)
    assert sum("frames are 24x24, resized to image_size=12" in m for m in messages) == 1


def test_hdf5_source_errors_and_bad_demo(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "demos.hdf5"
    write_robomimic(path, [5, 6, 4], bad_demo=1)
    with pytest.raises(DatasetError, match="data/\\*/obs/eye_in_hand_image.*available"):
        HDF5ImageSource(path, image_size=12, key="eye_in_hand_image")
    with pytest.raises(DatasetError, match="proprio.*expected uint8 images"):
        HDF5ImageSource(path, image_size=12, key="proprio")
    with pytest.raises(DatasetError, match="mask/test"):
        HDF5ImageSource(path, image_size=12, mask="test")
    with caplog.at_level(logging.WARNING, logger="video_pretrain.data"):
        src = HDF5ImageSource(path, image_size=12)
    assert src.demo_names == ["demo_0", "demo_2"] and src.bad_videos == ["demo_1"]
    assert any("data/demo_1/obs/agentview_image" in r.getMessage() for r in caplog.records)
    with pytest.raises(VideoDatasetError, match=r"demos\.hdf5: data/demo_1/obs/agentview_image.*uint8"):
        HDF5ImageSource(path, image_size=12, strict=True)
    # a later demo of another layout than the first's (grey (H, W, 1) after RGB): left out as bad, not read as RGB
    with h5py.File(path, "a") as f:
        del f["data/demo_2/obs/agentview_image"]
        f["data/demo_2/obs/agentview_image"] = np.zeros((4, 24, 24, 1), np.uint8)
    with caplog.at_level(logging.WARNING, logger="video_pretrain.data"):
        mixed = HDF5ImageSource(path, image_size=12)
    assert mixed.demo_names == ["demo_0"] and mixed.bad_videos == ["demo_1", "demo_2"]
    assert any("data/demo_2/obs/agentview_image: expected uint8 images (N, H, W, 3) as the first demo's" in
               r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_hdf5_demo_of_zero_steps_is_empty_not_bad(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 0-step demo was listed among the unreadable clips (stage 1's log: "1 unreadable") and failed strict runs."""
    from omegaconf import OmegaConf

    from video_pretrain.train import open_sources

    path = tmp_path / "demos.hdf5"
    write_robomimic(path, [5, 0, 4])
    with caplog.at_level(logging.WARNING, logger="video_pretrain.data"):
        src = HDF5ImageSource(path, image_size=12)
    assert src.demo_names == ["demo_0", "demo_2"] and src.empty_videos == ["demo_1"] and src.bad_videos == []
    assert not caplog.records  # no warning for an empty episode
    assert HDF5ImageSource(path, image_size=12, strict=True).empty_videos == ["demo_1"]
    cfg = OmegaConf.create({"image_size": 12, "objective": {"name": "tcn"}, "data": {
        "max_cache_mb": 1, "strict": False, "stretch": False, "key": "agentview_image", "mask": None, "tasks": None,
        "stride": 1, "valid_fraction": 0, "split_seed": 0}})
    _, _, facts = open_sources(cfg, path)
    assert facts["bad_videos"] == [] and facts["short_videos"] == ["demo_1"] and facts["videos"] == 2


# ----------------------------------------------------------------------------- processes
def test_sources_pickle_with_an_empty_cache(tmp_path: Path, video_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = video_dir
    src = ManifestSource(root, image_size=16, stride=2)
    warm = src.frames(0, [0, 5])
    copy = pickle.loads(pickle.dumps(src))
    assert len(src.cache) == 1 and len(copy.cache) == 0 and copy.cache.max_bytes == src.cache.max_bytes
    assert np.array_equal(copy.frames(0, [0, 5]), warm)

    path = tmp_path / "demos.hdf5"
    videos = write_robomimic(path, [5, 6])
    h5 = HDF5ImageSource(path, image_size=24, max_cache_bytes=0)
    h5.frames(0, [1])  # opens the file in this process
    h5_copy = pickle.loads(pickle.dumps(h5))
    assert np.array_equal(h5_copy.frames(1, [6, 0]), videos["demo_1"][[6, 0]])
    h5.close()
    h5_copy.close()
    # a forked copy holds the parent's handle object: closing it there must leave the parent's file open
    h5.frames(0, [2])
    inherited = h5._file
    h5._file_pid = -1  # as a child process sees it
    h5.close()
    assert inherited.id.valid and h5._file is None
    inherited.close()


class _FramesDataset(torch.utils.data.Dataset):
    def __init__(self, source: HDF5ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return int(self.source.lengths.sum())

    def __getitem__(self, k: int) -> torch.Tensor:
        starts = np.concatenate([[0], np.cumsum(self.source.lengths)])
        video = int(np.searchsorted(starts, k, side="right") - 1)
        return torch.from_numpy(self.source.frames(video, [k - starts[video]])[0])


def _read_in_forked_workers(path: str) -> None:
    """In a fresh interpreter: the parent holds an open handle and a warm cache, then two DataLoader workers fork."""
    import test_video_sources as t

    videos = {k: v[()] for k, v in np.load(path + ".npz").items()}
    source = HDF5ImageSource(Path(path), image_size=24)
    source.frames(0, [0])
    loader = torch.utils.data.DataLoader(t._FramesDataset(source), batch_size=4, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    assert np.array_equal(got, np.concatenate([videos[f"demo_{i}"] for i in range(3)]))
    source.close()


def test_hdf5_source_in_dataloader_workers(tmp_path: Path) -> None:
    """Run in its own interpreter: forking a pytest process that earlier tests left with helper threads (the
    kernel pool, OpenMP) can crash a worker for reasons that are not the source's (seen once in a full run)."""
    import subprocess
    import sys

    path = tmp_path / "demos.hdf5"
    videos = write_robomimic(path, [5, 6, 4])
    np.savez(str(path) + ".npz", **videos)
    code = (f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]; import test_video_sources as t; "
            f"t._read_in_forked_workers({str(path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_open_frame_source_picks_the_type(tmp_path: Path, video_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = video_dir
    assert isinstance(open_frame_source(root, 16, stride=2), ManifestSource)
    path = tmp_path / "demos.h5"
    write_robomimic(path, [4, 4])
    h5 = open_frame_source(path, 16, key="agentview_image", mask="valid")
    assert isinstance(h5, HDF5ImageSource) and h5.demo_names == ["demo_1"]


def test_stage1_reads_datasets_of_other_formats_through_their_conversion(tmp_path: Path) -> None:
    """A D4RL-style HDF5 and an OGBench .npz of camera frames as data.path: stage 1 reads their robomimic conversion
    (the HDF5 was refused as "not a robomimic file", the .npz read as a CSV manifest), the frames as stored."""
    from omegaconf import OmegaConf

    from video_pretrain.train import open_sources, resolve_data_path

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    ends = np.zeros(12, bool)
    ends[[5, 11]] = True
    with h5py.File(tmp_path / "d4rl.hdf5", "w") as f:
        f["observations"], f["actions"] = frames, np.zeros((12, 2), np.float32)
        f["rewards"], f["terminals"] = np.zeros(12, np.float32), ends
    np.savez(tmp_path / "og.npz", observations=frames, actions=np.zeros((12, 2), np.float32), terminals=ends)
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "video_pretrain.yaml")
    cfg.data.valid_fraction, cfg.image_size, cfg.objective = 0, 16, {"name": "icvf"}
    cfg.data.key, cfg.data.cache_dir = "observations", str(tmp_path / "cache")
    for name in ("d4rl.hdf5", "og.npz"):
        cfg.data.path = str(tmp_path / name)
        path = resolve_data_path(cfg, tmp_path / "run")
        assert path.parent == tmp_path / "cache" and path.suffix == ".hdf5"
        source = open_sources(cfg, path)[0]
        assert source.num_videos == 2
        got = np.concatenate([source.frames(i, np.arange(source.video_length(i))) for i in range(2)])
        # each episode's frames once: D4RL has no next observation after a terminal step, so its converted episode
        # repeats the last frame as that step's next observation (robopretrain.data.read_d4rl), which a clip leaves out
        assert np.array_equal(got, frames)


@pytest.mark.parametrize("grey_shape", ["hw", "hw1"])
def test_a_grey_hdf5_camera_is_read_as_rgb_as_stages_2_and_3_read_it(tmp_path: Path, grey_shape: str) -> None:
    """Stage 2 trains on a grey (N, H, W) or (N, H, W, 1) uint8 camera; stage 1 refused the same key, so no encoder
    could be pretrained on it (a new user's find). The grey is repeated in three channels, final frame included."""
    path = tmp_path / "grey.hdf5"
    videos = write_robomimic(path, [5, 4])
    with h5py.File(path, "a") as f:
        for name, rgb in videos.items():
            grey = rgb[..., 0] if grey_shape == "hw" else rgb[..., :1]
            for group, rows in (("obs", grey[:-1]), ("next_obs", grey[1:])):
                del f[f"data/{name}/{group}/agentview_image"]
                f[f"data/{name}/{group}/agentview_image"] = rows
    src = HDF5ImageSource(path, image_size=24)
    assert src.lengths.tolist() == [6, 5]  # the final next_obs frame joins each clip
    frames = src.frames(0, np.arange(6))
    assert frames.shape == (6, 24, 24, 3)
    assert np.array_equal(frames, np.repeat(videos["demo_0"][..., :1], 3, axis=-1))
    src.close()
    with h5py.File(path, "a") as f:  # a float camera is refused with what to write instead
        del f["data/demo_0/obs/agentview_image"]
        f["data/demo_0/obs/agentview_image"] = np.zeros((5, 24, 24, 3), np.float32)
    with pytest.raises(DatasetError, match=r"got float32 \(N, 24, 24, 3\); float: write \(frames \* 255\).* \("
                                           r"python -m robopretrain.data.convert SRC DST --image-size S writes such "
                                           r"a copy\)$"):
        HDF5ImageSource(path, image_size=24)
    with h5py.File(path, "a") as f:  # under another name the copy keeps it as stored: rename it (it said convert)
        f.move("data/demo_0/obs/agentview_image", "data/demo_0/obs/wristcam")
        for name in videos:
            if name != "demo_0":
                f.move(f"data/{name}/obs/agentview_image", f"data/{name}/obs/wristcam")
    with pytest.raises(DatasetError, match=r"converts float frames only of keys named \*_image: rename 'wristcam' "
                                           r"to 'wristcam_image' first\)$"):
        HDF5ImageSource(path, image_size=24, key="wristcam")
    with h5py.File(path, "a") as f:  # one float channel, a depth map: no colour camera, and no rename suggested
        f["data/demo_0/obs/depth"] = np.zeros((5, 24, 24, 1), np.float32)
    with pytest.raises(DatasetError, match=r"a depth map\?\) is no colour camera") as err:
        HDF5ImageSource(path, image_size=24, key="depth")
    assert "rename" not in str(err.value)


def test_frames_with_an_exif_orientation_are_read_upright(tmp_path: Path) -> None:
    """A phone's JPEG frames are stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view): they
    were read as stored, (32, 64) where a viewer shows 64 x 32, while display-rotated videos were turned upright."""
    from robopretrain.data.video import count_frames, frame_size

    frames = np.zeros((2, 32, 64, 3), np.uint8)
    frames[:, :, :32] = 255  # the stored left half white: the top half once turned clockwise
    folder = tmp_path / "phone"
    folder.mkdir()
    for t, frame in enumerate(frames):
        image = Image.fromarray(frame)
        exif = image.getexif()
        exif[0x0112] = 6
        image.save(folder / f"{t:06d}.jpg", exif=exif, quality=95)
    assert frame_size(folder) == (64, 32) and count_frames(folder) == 2
    write_manifest(tmp_path, [("phone", 2)])
    src = ManifestSource(tmp_path, image_size=16, center_crop=False)
    frame = src.frames(0, [0])[0]
    assert frame[:6].mean() > 200 and frame[-6:].mean() < 50  # white on top, black below: upright


def test_a_clip_that_counts_no_frames_is_left_out_named_by_its_path(video_dir, monkeypatch, caplog) -> None:
    """A clip whose header holds no frame (a recorder stopped before the first) is rejected as bad, named by its
    path in the manifest, with the reason logged."""
    import logging

    import video_pretrain.data as data_mod

    root, _, _ = video_dir
    real = data_mod.count_frames
    monkeypatch.setattr(data_mod, "count_frames", lambda e: 0 if e.relpath == "clip.mp4" else real(e))
    with caplog.at_level(logging.WARNING):
        src = ManifestSource(root, image_size=16)
    assert src.num_videos == 1 and src.bad_videos == ["clip.mp4"]
    assert "clip.mp4: no frames" in caplog.text


def test_a_read_only_frame_is_resized_without_a_warning(tmp_path):
    """Frames fitted one by one came straight from PIL's read-only buffers: torch warned "The given NumPy array is
    not writable" in every run reading a frame folder (once per process, so checked in a fresh one)."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom video_pretrain.data import resize_frames\n"
            "a = np.zeros((1, 40, 40, 3), np.uint8)\na.flags.writeable = False\n"
            "assert resize_frames(a, 16).shape == (1, 16, 16, 3)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(tmp_path)},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
