"""Inputs as users bring them to stage 1 and the renderers: phone videos with a display rotation, 16-bit PNG
frames, an Excel-saved manifest (BOM, CRLF), MUJOCO_GL=glfw on a headless machine, clips too short for an
objective, and a rerun into a run folder whose inputs changed. Every input is written with the toolkit's
own writers (``sim_envs.video_writer``)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mujoco
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from robopretrain import run_fingerprint
from robopretrain.data.inspect import summarize_videos, video_sheet_rows
from robopretrain.data.video import (VideoDatasetError, count_frames, frame_size, read_frames, read_manifest,
                                     video_stream)
from sim_envs.rendering import CameraRenderer, RenderingUnavailableError
from sim_envs.video_writer import write_frame_folder, write_manifest, write_mp4
from video_pretrain.data import ManifestSource
from video_pretrain.sampling import FrameBatchStream
from video_pretrain.train import CONFIG_DIR, train

REPO = Path(__file__).resolve().parents[1]


def quadrants(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """n frames whose four quadrants have distinct grey levels (so any rotation or mirroring shows), plus a
    brightening bar that moves with t."""
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        frames[t, : h // 2, : w // 2] = 30
        frames[t, : h // 2, w // 2:] = 90
        frames[t, h // 2:, : w // 2] = 150
        frames[t, h // 2:, w // 2:] = 210
        frames[t, h // 2 - 2: h // 2 + 2, : 4 + 4 * t] = 250
    return frames


def sliding_clips(root: Path, lengths: list[int], size: int = 24) -> Path:
    """mp4 clips of the given lengths (a square sliding right) and their manifest."""
    rows = []
    for i, n in enumerate(lengths):
        frames = np.full((n, size, size, 3), 40, np.uint8)
        for t in range(n):
            frames[t, 8:16, min(size - 8, 2 * t): min(size - 8, 2 * t) + 8] = (200, 60 + 40 * i, 60)
        write_mp4(root / f"clip_{i}.mp4", frames, fps=20)
        rows.append((f"clip_{i}.mp4", n, "a square slides"))
    write_manifest(root, rows)
    return root


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("video_pretrain", overrides=list(overrides))


TINY = ("batch_size=4", "image_size=24", "progress=false", "tensorboard=false", "valid_batches=1", "eval_every=2",
        "log_every=1", "checkpoint_every=2", "num_threads=1", "device=cpu")


# ------------------------------------------------------------------------------------------------ display rotation
@pytest.mark.parametrize("degrees,mirror", [(90, False), (-90, False), (180, False), (0, True), (90, True),
                                            (270, True)])
def test_mp4_with_a_display_rotation_is_read_upright(tmp_path, degrees, mirror):
    frames = quadrants(4)
    path = tmp_path / "phone.mp4"
    write_mp4(path, frames, crf=0, display_rotation=degrees, mirror=mirror)
    shown = np.rot90(frames, k=degrees // 90, axes=(1, 2))  # what a player shows: rotated, then mirrored
    if mirror:
        shown = shown[:, :, ::-1]
    got = read_frames(path)
    assert got.shape == shown.shape
    assert frame_size(path) == shown.shape[1:3]  # as read (upright), not as stored
    assert np.abs(got.astype(int) - shown).max() <= 12  # lossless luma, yuv420p chroma
    assert np.array_equal(read_frames(path, [2, 0]), got[[2, 0]])

    write_manifest(tmp_path, [("phone.mp4", 4, "a phone clip")])
    src = ManifestSource(tmp_path, image_size=shown.shape[1], center_crop=False, max_cache_bytes=0)
    assert src.frames(0, [1])[0].shape[:2] == (shown.shape[1], shown.shape[1])
    assert np.abs(src.frames(0, [3])[0].astype(int)
                  - np.asarray(ManifestSource(tmp_path, image_size=shown.shape[1], center_crop=False).frames(0, [3]))[0]
                  ).max() == 0


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_frame_without_side_data_gives_the_display_matrix_of_its_rotation(tmp_path, degrees):
    """PyAV versions without frame side data give only ``frame.rotation``: turned into the same matrix as the side
    data of a file written with that display rotation."""
    from types import SimpleNamespace

    import av

    from robopretrain.data.video import display_matrix

    path = tmp_path / "phone.mp4"
    write_mp4(path, quadrants(2), crf=0, display_rotation=degrees)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        from_side_data = display_matrix(frame)
        assert from_side_data is not None and frame.rotation % 360 == degrees % 360  # (what the fake stands for)
    assert display_matrix(SimpleNamespace(side_data=None, rotation=frame.rotation)) == from_side_data
    assert display_matrix(SimpleNamespace(side_data=None, rotation=0)) is None


def test_side_data_is_read_whether_its_container_iterates_items_or_their_types():
    """PyAV 18.1.1 iterates a frame's side data by their types (a mapping), 18.1.0 by the items: read as items,
    the types failed, and a mirrored phone clip fell back to ``frame.rotation`` (which holds no mirroring) and was
    read upside down (the fresh-clone CI on a newly released PyAV)."""
    import enum
    from types import SimpleNamespace

    from robopretrain.data.video import display_matrix

    class Kind(enum.Enum):
        DISPLAYMATRIX = 6

    class Item(SimpleNamespace):
        def __bytes__(self) -> bytes:
            return np.array([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30], np.int32).tobytes()

    mirrored = Item(type=Kind.DISPLAYMATRIX)
    by_type = {Kind.DISPLAYMATRIX: mirrored}  # iterating gives the types
    for side_data in (by_type, [mirrored]):
        assert display_matrix(SimpleNamespace(side_data=side_data, rotation=-180)) == (-65536, 0, 0, 65536)


def test_display_rotation_of_an_unrotated_clip_is_a_no_op(tmp_path):
    frames = quadrants(3)
    write_mp4(tmp_path / "plain.mp4", frames, crf=0)
    assert read_frames(tmp_path / "plain.mp4").shape == frames.shape
    with pytest.raises(ValueError, match="multiple of 90"):
        write_mp4(tmp_path / "tilted.mp4", frames, display_rotation=45)


# ------------------------------------------------------------------------------------------------ several streams
def test_a_file_whose_first_video_stream_is_a_one_frame_thumbnail_is_read_as_its_longest_stream(tmp_path, caplog):
    """A camera's or editor's .mov with a thumbnail stream before the clip: the first stream alone was read, a clip
    of 1 frame that stage 1 left out as too short, and its size was the thumbnail's."""
    import av

    path = tmp_path / "with_thumbnail.mov"
    clip = quadrants(8)
    with av.open(str(path), "w", format="mov") as out:
        thumb = out.add_stream("mjpeg", rate=10)
        thumb.width, thumb.height, thumb.pix_fmt = 16, 16, "yuvj420p"
        video = out.add_stream("libx264", rate=10, options={"crf": "0"})
        video.width, video.height, video.pix_fmt = clip.shape[2], clip.shape[1], "yuv444p"
        for stream, frames in ((thumb, np.full((1, 16, 16, 3), 200, np.uint8)), (video, clip)):
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=stream.pix_fmt)))
            out.mux(stream.encode(None))
    with av.open(str(path)) as c:
        assert [s.frames for s in c.streams.video] == [1, 8]  # (the file is what the test means)
    with caplog.at_level(logging.INFO, logger="robopretrain.data.video"):
        write_mp4(tmp_path / "plain.mp4", clip[:2])
        assert count_frames(tmp_path / "plain.mp4") == 2  # one stream: nothing to say
        assert "video streams" not in caplog.text
        assert count_frames(path) == 8
    assert "reading stream 1, the longest: stream 0 holds one frame, a thumbnail" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # one clip and its thumbnail: no warning
    assert frame_size(path) == clip.shape[1:3]
    got = read_frames(path)
    assert got.shape == clip.shape and np.abs(got.astype(int) - clip).max() <= 12
    assert np.array_equal(read_frames(path, [5, 1]), got[[5, 1]])


def test_a_stream_marked_as_a_picture_is_never_the_clip(caplog):
    """Cover art and thumbnails (FFmpeg's attached_pic disposition) are pictures, whatever their frame count."""
    from types import SimpleNamespace

    def stream(index: int, frames: int, disposition: int = 0) -> SimpleNamespace:
        return SimpleNamespace(index=index, frames=frames, duration=None, time_base=None, disposition=disposition,
                               codec_context=SimpleNamespace(width=8, height=8))

    unknown = [stream(0, 0), stream(1, 0)]  # header counts unknown (0, as in Matroska): two clips, not thumbnails
    with caplog.at_level(logging.INFO, logger="robopretrain.data.video"):
        assert video_stream(SimpleNamespace(streams=SimpleNamespace(video=unknown)), "unknown.mkv") is unknown[0]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    caplog.clear()
    cover, clip = stream(0, 30, disposition=1 << 10), stream(1, 3)
    assert video_stream(SimpleNamespace(streams=SimpleNamespace(video=[cover, clip])), "a.mp4") is clip
    with pytest.raises(VideoDatasetError, match="picture"):
        video_stream(SimpleNamespace(streams=SimpleNamespace(video=[cover])), "cover_only.mp4")
    # two clips (a multi-camera recording): the first, as ever, even if the other is longer; said with a warning
    first, longer = stream(0, 10), stream(1, 11)
    with caplog.at_level(logging.INFO, logger="robopretrain.data.video"):
        assert video_stream(SimpleNamespace(streams=SimpleNamespace(video=[first, longer])), "two.mp4") is first
    (said,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "two.mp4: 2 video streams (0: 8x8, 10 frames; 1: 8x8, 11 frames); reading stream 0, the first; to read " \
           "another, extract it first" in said.getMessage()


# ------------------------------------------------------------------------------------------------ edit lists
def trim_by_stream_copy(src: Path, dst: Path, drop: int) -> None:
    """What ``ffmpeg -ss T -i src -c copy dst`` writes: every packet kept, the first ``drop`` frames moved before time
    0, so the mp4's edit list tells players (and decoders) to skip them."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        packets = [p for p in inp.demux(inp.streams.video[0]) if p.size > 0]
        step = sorted(p.pts for p in packets)[1] - sorted(p.pts for p in packets)[0]
        for packet in packets:
            packet.pts -= drop * step
            packet.dts -= drop * step
            packet.stream = stream
            out.mux(packet)


def test_a_clip_trimmed_by_stream_copy_counts_the_frames_it_decodes(tmp_path):
    frames = np.stack([np.full((16, 16, 3), 20 * t, np.uint8) for t in range(10)])
    write_mp4(tmp_path / "whole.mp4", frames, crf=0)
    trim_by_stream_copy(tmp_path / "whole.mp4", tmp_path / "cut.mp4", drop=4)
    (tmp_path / "whole.mp4").unlink()
    decoded = read_frames(tmp_path / "cut.mp4")
    assert len(decoded) == 6 and abs(int(decoded[0].mean()) - 80) <= 2  # the edit list dropped frames 0-3
    assert count_frames(tmp_path / "cut.mp4") == 6
    src = ManifestSource(tmp_path, image_size=16, center_crop=False, strict=True)
    assert src.lengths.tolist() == [6] and src.bad_videos == []
    assert np.abs(src.frames(0, [5]).astype(int) - frames[9]).max() <= 2  # its last frame reads


# ------------------------------------------------------------------------------------------------ 16-bit frames
def depth_clip(n: int = 6, h: int = 20, w: int = 24, top: int = 4000) -> np.ndarray:
    """uint16 (n, h, w) frames of a moving ramp with values up to ``top`` (a 12-bit depth camera, in mm)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([((xx + yy + 2 * t) * top / (h + w + 2 * n)).astype(np.uint16) for t in range(n)])


def test_16_bit_gray_png_frames_are_scaled_by_the_bits_the_clip_uses(tmp_path, caplog):
    depth = depth_clip()
    write_frame_folder(tmp_path / "depth", depth)
    with caplog.at_level(logging.INFO, logger="robopretrain.data.video"):
        frames = read_frames(tmp_path / "depth")
    assert frames.dtype == np.uint8 and frames.shape == depth.shape + (3,)
    assert (frames == 255).mean() < 0.01  # not saturated
    assert np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2])
    expected = np.round(depth.astype(np.float64) * 255 / 4095)  # largest value < 4096: 12-bit
    assert np.abs(frames[..., 0] - expected).max() <= 1
    assert "16-bit frames" in caplog.text and "12-bit" in caplog.text
    # a few frames read alone get the clip's scale, not their own
    assert np.array_equal(read_frames(tmp_path / "depth", [4, 1]), frames[[4, 1]])


@pytest.mark.parametrize("pix_fmt", ["gray16le", "gray12le"])
def test_a_deep_grayscale_video_is_scaled_as_its_png_frames_are(tmp_path, caplog, pix_fmt):
    """A depth clip archived as FFV1 gray16 in .mkv was converted to RGB as FFmpeg does: 12-bit values kept only
    their high byte, 0-11 of 255, a near-black clip without a word (its 16-bit PNG frames read 0-250)."""
    import av

    depth = depth_clip()  # values up to 4000: 12 bits used
    container = av.open(str(tmp_path / "depth.mkv"), "w")
    stream = container.add_stream("ffv1", rate=10)
    stream.width, stream.height, stream.pix_fmt = depth.shape[2], depth.shape[1], pix_fmt
    for image in depth:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format=pix_fmt)))  # 12-bit values as they are
    container.mux(stream.encode())
    container.close()
    write_frame_folder(tmp_path / "depth_png", depth)
    with caplog.at_level(logging.INFO, logger="robopretrain.data.video"):
        frames = read_frames(tmp_path / "depth.mkv")
    assert f"depth.mkv: 16-bit frames (largest value {depth.max()}): scaled to 8 bit as 12-bit values" in caplog.text
    assert np.abs(frames.astype(np.int64) - read_frames(tmp_path / "depth_png")).max() <= 1
    assert frames.max() >= 200  # the range is used
    assert np.array_equal(read_frames(tmp_path / "depth.mkv", [4, 1, 4]), frames[[4, 1, 4]])  # the clip's scale


def test_every_value_of_a_16_bit_clip_is_scaled_by_the_formula_and_the_clip_peak_not_a_frames(tmp_path):
    """v8 = round(v * 255 / (2**b - 1)) exactly, b from the clip's largest value: the first frame holds values up to
    1023 (10 bits), the second every 12-bit value, so both are scaled by 4095 (a frame's own peak, or the smallest
    of the frames' peaks, scaled the first by 1023; 2**b for 2**b - 1 rounds 127 of the 4096 values otherwise)."""
    low = np.arange(1024, dtype=np.uint16).reshape(32, 32).repeat(2, axis=0).repeat(2, axis=1)
    full = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    write_frame_folder(tmp_path / "depth", np.stack([low, full]))
    frames = read_frames(tmp_path / "depth")[..., 0].astype(np.int64)
    assert np.array_equal(frames, np.round(np.stack([low, full]).astype(np.float64) * 255 / 4095))


def test_an_index_past_a_frame_folders_end_is_named(tmp_path):
    write_frame_folder(tmp_path / "clip", quadrants(3))
    with pytest.raises(VideoDatasetError, match=r"clip: frame index 3 out of range, the clip has 3 frames"):
        read_frames(tmp_path / "clip", [0, 3])  # (its largest index, not its first)


def test_16_bit_rgb_png_frames_keep_their_low_bits(tmp_path):
    depth = depth_clip(top=1000)
    rgb = np.stack([depth, depth // 2, depth // 4], axis=-1)  # largest 999 < 1024: 10-bit
    write_frame_folder(tmp_path / "rgb16", rgb)
    frames = read_frames(tmp_path / "rgb16")
    expected = np.round(rgb.astype(np.float64) * 255 / 1023)
    assert np.abs(frames.astype(np.float64) - expected).max() <= 1
    assert frames[..., 0].max() >= 200  # the range is used (Pillow's high byte would give at most 3)


def test_stage1_source_reads_16_bit_frame_folders_unsaturated(tmp_path):
    for c in range(2):
        write_frame_folder(tmp_path / f"ep{c}", depth_clip(top=3000 + 500 * c))
    write_manifest(tmp_path, [(f"ep{c}", 6, "depth clip") for c in range(2)])
    src = ManifestSource(tmp_path, image_size=16)
    for i in range(2):
        clip = src.frames(i, range(6))
        assert (clip == 255).mean() < 0.01 and clip.max() > 120
    rows = video_sheet_rows(summarize_videos(tmp_path), frames=3, clips=2)  # data.inspect's contact sheet
    assert all((images == 255).mean() < 0.01 for _, images in rows)


# ------------------------------------------------------------------------------------------------ manifest
def test_manifest_saved_by_excel_with_bom_and_crlf_loads(tmp_path):
    sliding_clips(tmp_path, [6, 7])
    manifest = tmp_path / "manifest.csv"
    text = manifest.read_text(encoding="utf-8")
    manifest.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))  # as Excel saves it
    entries = read_manifest(tmp_path)
    assert [e.relpath for e in entries] == ["clip_0.mp4", "clip_1.mp4"] and entries[1].num_frames == 7
    assert entries[0].text == "a square slides"
    assert ManifestSource(tmp_path, image_size=16).num_videos == 2
    assert summarize_videos(tmp_path).entries == entries


# ------------------------------------------------------------------------------------------------ rendering
@pytest.fixture
def headless_glfw(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GLFW needs a display on Linux only")
def test_glfw_without_a_display_says_to_use_egl(headless_glfw):
    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
    with pytest.raises(RenderingUnavailableError, match="MUJOCO_GL=egl"):
        CameraRenderer(model, 16, 16)


def test_a_signal_while_a_renderer_is_made_ends_without_the_half_made_renderers_traceback():
    """Ctrl-C or SIGTERM landing inside mujoco.Renderer's construction: the interrupt's traceback kept the half-made
    Renderer alive until exit, when its __del__ failed ("'Renderer' object has no attribute '_mjr_context'") after
    the hook that hides that was gone: a second traceback after the one 'terminated' line (a new user's finding).
    The toolkit's SIGTERM handler raises ``Terminated`` (a KeyboardInterrupt) where the signal lands, as here."""
    child = (
        "import mujoco, mujoco.renderer as mr\n"
        "from robopretrain.cli import Terminated\n"
        "from sim_envs.rendering import CameraRenderer\n"
        "class Interrupted:\n"
        "    def __init__(self, *a, **k):\n"
        "        raise Terminated()\n"
        "mr.gl_context.GLContext = Interrupted\n"
        "model = mujoco.MjModel.from_xml_string(\"<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>\")\n"
        "try:\n"
        "    CameraRenderer(model, 16, 16)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo), "MUJOCO_GL": "egl"})
    assert proc.stdout.strip() == "interrupted", proc.stderr[-2000:]
    assert "_mjr_context" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_toolkit_entry_points_report_rendering_errors_in_one_line(capsys):
    from robopretrain.cli import EXIT_BAD_INPUT, friendly_errors

    @friendly_errors
    def entry() -> None:
        raise RenderingUnavailableError("cannot render camera images: set MUJOCO_GL=egl")

    with pytest.raises(SystemExit) as stop:
        entry()
    assert stop.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == "error: cannot render camera images: set MUJOCO_GL=egl"


RENDERING_ENTRY_POINTS = {
    "collect": ["sim_envs.collect", "tasks=[Reach]", "episodes_per_task=2", "num_workers=2", "render_images=true",
                "image_size=16", "output={tmp}/d.hdf5"],
    "collect_videos": ["sim_envs.collect_videos", "tasks=[Reach]", "num_clips=1", "image_size=16",
                       "output={tmp}/videos"],
    "video_pretrain": ["video_pretrain.train", "data.collect.num_clips=1", "steps=1", "num_threads=1",
                       "output_dir={tmp}/s1"],
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GLFW needs a display on Linux only")
@pytest.mark.parametrize("name", sorted(RENDERING_ENTRY_POINTS))
def test_rendering_entry_points_with_glfw_and_no_display_exit_with_one_line(tmp_path, name):
    module, *overrides = RENDERING_ENTRY_POINTS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MUJOCO_GL="glfw", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", module, *(o.format(tmp=tmp_path) for o in overrides), f"hydra.run.dir={tmp_path}/h"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert lines[-1].startswith("error: ") and "MUJOCO_GL=egl" in lines[-1] and "display" in lines[-1]


# ------------------------------------------------------------------------------------------------ short clips
@pytest.mark.parametrize("objective,minimum", [("icvf", 2), ("vip", 3), ("tcn", 3)])
def test_clips_too_short_for_the_objective_are_named_or_skipped_and_counted(tmp_path, caplog, objective, minimum):
    short = sliding_clips(tmp_path / "short", [minimum - 1, minimum - 1])
    with pytest.raises(ValueError, match=rf"{objective} needs clips of at least {minimum} frames.*clip_0\.mp4 "):
        FrameBatchStream(ManifestSource(short, image_size=16), objective, batch_size=4)

    mixed = sliding_clips(tmp_path / "mixed", [minimum - 1, minimum + 3, minimum - 1, minimum])
    with caplog.at_level(logging.WARNING, logger="video_pretrain.sampling"):
        stream = FrameBatchStream(ManifestSource(mixed, image_size=16), objective, batch_size=8, seed=0)
    assert stream.short_videos == ["clip_0.mp4", "clip_2.mp4"]
    assert f"skipping 2 of 4 clips shorter than {minimum} frames" in caplog.text
    used = np.concatenate([stream.batch(k)["video"].numpy().ravel() for k in range(20)])
    assert set(used.tolist()) == {1, 3}


def test_stage1_training_on_clips_all_too_short_names_them(tmp_path):
    sliding_clips(tmp_path / "videos", [2, 2, 2])
    cfg = compose_cfg(f"data.path={tmp_path / 'videos'}", "objective=tcn", "steps=1", f"output_dir={tmp_path / 'run'}",
                      "data.valid_fraction=0", *TINY)
    with pytest.raises(ValueError, match="tcn needs clips of at least 3 frames"):
        train(cfg, tmp_path)


# ------------------------------------------------------------------------------------------------ rerun fingerprint
def test_rerun_into_a_run_folder_whose_data_changed_is_refused(tmp_path):
    data_a = sliding_clips(tmp_path / "a", [8, 9, 10])
    data_b = tmp_path / "b"
    shutil.copytree(data_a, data_b)
    manifest = (data_b / "manifest.csv").read_text()
    (data_b / "manifest.csv").write_text(manifest.replace("slides", "glides"))  # the same size, other content
    assert (data_b / "manifest.csv").stat().st_size == (data_a / "manifest.csv").stat().st_size
    run = tmp_path / "run"
    common = ("objective=vip", f"output_dir={run}", "data.valid_fraction=0", *TINY)
    train(compose_cfg(f"data.path={data_a}", "steps=2", *common), tmp_path)

    with pytest.raises(run_fingerprint.ResumeMismatchError, match=r"other settings or data.*resume=false"):
        train(compose_cfg(f"data.path={data_b}", "steps=4", *common), tmp_path)
    (data_a / "manifest.csv").write_text(manifest.replace("slides", "glides"))  # edited in place
    with pytest.raises(run_fingerprint.ResumeMismatchError, match=r"manifest.csv content changed"):
        train(compose_cfg(f"data.path={data_a}", "steps=4", *common), tmp_path)
    (data_a / "manifest.csv").write_text(manifest)
    with pytest.raises(run_fingerprint.ResumeMismatchError, match=r"lr: 0.0003 -> 0.001"):
        train(compose_cfg(f"data.path={data_a}", "steps=4", "lr=1e-3", *common), tmp_path)
    with pytest.raises(run_fingerprint.ResumeMismatchError, match=r"objective.name: vip -> tcn"):
        train(compose_cfg(f"data.path={data_a}", "steps=4", *common, "objective=tcn"), tmp_path)

    # asked to start fresh: trains from step 0 on the new data
    train(compose_cfg(f"data.path={data_b}", "steps=3", "resume=false", *common), tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trained_steps_this_run"] == 3 and metrics["fingerprint"]["inputs"]["data"]["path"] == str(data_b)
    # same data and settings, more steps and other harmless keys: resumes
    train(compose_cfg(f"data.path={data_b}", "steps=4", *common, "log_every=2", "num_workers=0"), tmp_path)
    assert json.loads((run / "metrics.json").read_text())["trained_steps_this_run"] == 1


def test_fingerprint_of_files_and_folders(tmp_path):
    f = tmp_path / "demos.hdf5"
    f.write_bytes(b"x" * 1000)
    before = run_fingerprint.input_fingerprint(f)
    st = f.stat()
    f.write_bytes(b"y" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same time: only the content tells
    assert run_fingerprint.differences({"inputs": {"data": before}}, {"inputs": {"data": run_fingerprint.input_fingerprint(f)}}) \
        == [f"data {f.resolve()}: content changed"]

    cfg = {"lr": 1e-3, "train": {"progress": True, "steps": 10}, "hydra": {"run": {"dir": "x"}},
           "data": {"path": "/d", "max_cache_mb": 5}}
    flat = run_fingerprint.flat_config(cfg, (*run_fingerprint.HARMLESS_KEYS, "data.max_cache_mb"))
    assert flat == {"data.path": "/d", "lr": 1e-3, "train.steps": 10}
    a = run_fingerprint.fingerprint(cfg, {"data": tmp_path})
    assert run_fingerprint.differences(a, run_fingerprint.fingerprint(cfg, {"data": tmp_path})) == []
    (tmp_path / "new.mp4").write_bytes(b"z")
    changes = run_fingerprint.differences(a, run_fingerprint.fingerprint(cfg, {"data": tmp_path}))
    assert changes[0].endswith("new.mp4 added") and "1 files" in changes[1]
    run_fingerprint.check_resume(None, a, "old.pt")  # a checkpoint older than fingerprints: warns only


def test_linked_folders_inside_a_data_folder_count_and_a_loop_ends(tmp_path):
    """A dataset folder whose videos/ links to another disk: files changed there were not seen (the walk did not
    follow links), so a run resumed on other data without a word. A link back up the tree must not loop."""
    data, elsewhere = tmp_path / "dataset", tmp_path / "other_disk" / "videos"
    elsewhere.mkdir(parents=True)
    data.mkdir()
    (data / "meta.json").write_text("{}")
    (elsewhere / "ep0.mp4").write_bytes(b"v" * 100)
    (data / "videos").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "up").symlink_to(data, target_is_directory=True)  # a loop: dataset/videos/up -> dataset
    (elsewhere / "self").symlink_to(elsewhere, target_is_directory=True)
    (data / "a").mkdir()
    (data / "a" / "b").symlink_to(data / "c", target_is_directory=True)  # two links into each other's folders
    (data / "c").mkdir()
    (data / "c" / "d").symlink_to(data / "a", target_is_directory=True)
    (data / "up").symlink_to(tmp_path, target_is_directory=True)  # a link to a folder above: not walked (a sibling
    (tmp_path / "sibling").mkdir()  # dataset's files would count, and a link to / would walk the whole disk)
    (tmp_path / "sibling" / "b.txt").write_text("b")
    before = run_fingerprint.input_fingerprint(data)
    assert before["files"] == 2 and before["unlinked"]["files"] == 1  # meta.json, videos/ep0.mp4
    (elsewhere / "ep1.mp4").write_bytes(b"w" * 100)
    now = run_fingerprint.input_fingerprint(data)
    assert run_fingerprint.differences({"inputs": {"data": before}}, {"inputs": {"data": now}}) == [
        f"data {data}: 2 files / 102 bytes -> 3 files / 202 bytes"]
    # a fingerprint written before links were followed (no "links" key) is compared with what it could see
    old = {k: v for k, v in now["unlinked"].items() if k != "links"}
    assert run_fingerprint.differences({"inputs": {"data": old}}, {"inputs": {"data": now}}) == []
    (data / "meta.json").write_text('{"fps": 10}')
    assert run_fingerprint.differences({"inputs": {"data": old}},
                                       {"inputs": {"data": run_fingerprint.input_fingerprint(data)}})


def test_a_new_modification_time_alone_resumes_and_a_sampled_big_file_warns(tmp_path, monkeypatch, caplog):
    """Byte-identical data rewritten (a copy, a regenerated file) has a new mtime: that alone blocked a resume."""
    f = tmp_path / "demos.hdf5"
    f.write_bytes(b"x" * 1000)
    saved = run_fingerprint.fingerprint({}, {"data": f})
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    now = run_fingerprint.fingerprint({}, {"data": f})
    assert now["inputs"]["data"]["mtime_ns"] != saved["inputs"]["data"]["mtime_ns"]
    assert run_fingerprint.differences(saved, now) == []
    with caplog.at_level("WARNING"):
        run_fingerprint.check_resume(saved, now, "ckpt.pt")
    assert "modified" not in caplog.text  # hashed whole: nothing to warn about
    monkeypatch.setattr(run_fingerprint, "FULL_HASH_BYTES", 100)  # a "big" file: only its ends are hashed
    monkeypatch.setattr(run_fingerprint, "SAMPLE_BYTES", 10)
    saved = run_fingerprint.fingerprint({}, {"data": f})
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 3 * 10**9))
    with caplog.at_level("WARNING"):
        run_fingerprint.check_resume(saved, run_fingerprint.fingerprint({}, {"data": f}), "ckpt.pt")
    assert "data" in caplog.text and "modified since the checkpoint" in caplog.text
    saved = run_fingerprint.fingerprint({}, {"data": f})
    copied = tmp_path / "copy" / "demos.hdf5"  # cp -a: another file, its times kept (a run folder's data copied)
    copied.parent.mkdir()
    shutil.copy2(f, copied)
    caplog.clear()
    with caplog.at_level("WARNING"):
        run_fingerprint.check_resume({**saved, "inputs": {"data": {**saved["inputs"]["data"], "path": str(copied)}}},
                                     run_fingerprint.fingerprint({}, {"data": copied}), "ckpt.pt")
    assert "modified" not in caplog.text
    st = os.stat(f)
    time.sleep(0.02)  # change times tick coarsely on some kernels (1-4 ms before Linux 6.13)
    with open(f, "r+b") as g:  # a byte in the middle (not hashed) edited, its modification time set back (cp -p)
        g.seek(500)
        g.write(b"z")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    caplog.clear()
    with caplog.at_level("WARNING"):  # resumed silently: only the change time tells
        run_fingerprint.check_resume(saved, run_fingerprint.fingerprint({}, {"data": f}), "ckpt.pt")
    assert "data" in caplog.text and "modified since the checkpoint" in caplog.text
    caplog.clear()
    old = {**saved, "inputs": {"data": {k: v for k, v in saved["inputs"]["data"].items() if k != "ctime_ns"}}}
    with caplog.at_level("WARNING"):  # a checkpoint from before change times were recorded: no warning of its own
        run_fingerprint.check_resume(old, run_fingerprint.fingerprint({}, {"data": f}), "ckpt.pt")
    assert "modified" not in caplog.text
    f.write_bytes(b"x" * 999 + b"y")  # the last bytes differ: refused
    with pytest.raises(run_fingerprint.ResumeMismatchError, match="content changed"):
        run_fingerprint.check_resume(saved, run_fingerprint.fingerprint({}, {"data": f}), "ckpt.pt")


def test_a_moved_run_folder_resumes_and_paths_outside_it_still_count(tmp_path):
    """A pipeline run folder moved whole (its home: the run folder): its stage's data inside it and config paths into
    it moved with it; a path outside it is the run's input and must not change, whatever its name; a run folder
    reached through a symlink or copied (new modification times) resumes too."""
    run = tmp_path / "a" / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "demos.hdf5").write_bytes(b"d" * 100)
    (run / "adapt" / "ckpt" / "step_4").mkdir(parents=True)  # below the top level: no small-file hash of its own
    (run / "adapt" / "ckpt" / "step_4" / "weights.pt").write_bytes(b"w" * 50)
    (tmp_path / "a" / "encoder.pt").write_bytes(b"e")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "encoder.pt").write_bytes(b"E")  # the same name beside the moved folder: another file

    def fp(root: Path, encoder: Path | None = None) -> dict:
        cfg = {"data": {"path": str(root / "data" / "demos.hdf5")}, "lr": 1e-3,
               "encoder": str(encoder or root.parent / "encoder.pt")}
        return run_fingerprint.fingerprint(cfg, {"data": root / "data" / "demos.hdf5", "init": root / "adapt" / "ckpt"},
                                           home=root)

    saved = fp(run)
    assert run_fingerprint.relocation(saved, saved) == []
    run.rename(tmp_path / "b" / "run")
    moved = tmp_path / "b" / "run"
    assert run_fingerprint.differences(saved, fp(moved, tmp_path / "a" / "encoder.pt")) == []
    changed = run_fingerprint.differences(saved, fp(moved))  # b/encoder.pt for a/encoder.pt: not under the run
    assert len(changed) == 1 and changed[0].startswith("encoder: ")
    (tmp_path / "link").symlink_to(moved)  # the moved folder named through a symlink: paths as given differ
    assert run_fingerprint.differences(saved, fp(tmp_path / "link", tmp_path / "a" / "encoder.pt")) == []
    shutil.copytree(moved, tmp_path / "copy")  # cp -r: new times; the checkpoint folder is compared by content
    os.utime(tmp_path / "copy" / "adapt" / "ckpt" / "step_4" / "weights.pt", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert run_fingerprint.differences(saved, fp(tmp_path / "copy", tmp_path / "a" / "encoder.pt")) == []
    (tmp_path / "copy" / "adapt" / "ckpt" / "step_4" / "weights.pt").write_bytes(b"W" * 50)
    assert run_fingerprint.differences(saved, fp(tmp_path / "copy", tmp_path / "a" / "encoder.pt")) == [
        f"init {tmp_path / 'copy' / 'adapt' / 'ckpt'}: files' content changed (same count and total size)"]
    (moved / "data" / "demos.hdf5").write_bytes(b"D" * 100)
    assert run_fingerprint.differences(saved, fp(moved, tmp_path / "a" / "encoder.pt")) == [
        f"data {moved / 'data' / 'demos.hdf5'}: content changed"]
    no_home = {k: v for k, v in saved.items() if not k.startswith("home")}  # from before homes: no relocation
    assert run_fingerprint.differences(no_home, fp(moved))[0].startswith("data: ")
    assert run_fingerprint.run_home({"run_root": "/r"}, "/r/stage2") == Path("/r")
    assert run_fingerprint.run_home({"run_root": None}, "/out") == Path("/out")


def test_a_stage3_run_moved_with_its_stage2_run_resumes_and_another_stage2_is_refused(tmp_path):
    """runs/a/{s2,s3} moved to runs/b: stage 3's fingerprint names the stage-2 checkpoint (an input outside its home)
    and the config's checkpoint path; both moved along and were refused. A stage-2 run of other content at the new
    place, a renamed stage-3 folder, or a config path to no input still count."""
    def place(root: Path, weights: bytes = b"w" * 50) -> None:
        (root / "s2" / "ckpt_4").mkdir(parents=True, exist_ok=True)
        (root / "s2" / "ckpt_4" / "weights.pt").write_bytes(weights)
        (root / "s3").mkdir(exist_ok=True)

    def fp(root: Path, s3: str = "s3", other: Path | None = None) -> dict:
        cfg = {"checkpoint": str(root / "s2"), "lr": 1e-3, "encoder": str(other or root / "enc.pt")}
        return run_fingerprint.fingerprint(cfg, {"checkpoint": root / "s2" / "ckpt_4"}, home=root / s3)

    place(tmp_path / "a")
    saved = fp(tmp_path / "a", other=tmp_path / "a" / "enc.pt")
    (tmp_path / "a").rename(tmp_path / "b")
    assert run_fingerprint.moved_along(run_fingerprint.relocation(saved, fp(tmp_path / "b"))) == [
        (str(tmp_path / "a"), str(tmp_path / "b"))]
    assert run_fingerprint.differences(saved, fp(tmp_path / "b", other=tmp_path / "a" / "enc.pt")) == []
    # a config path that names no input is not taken along (b/enc.pt may be another file)
    changed = run_fingerprint.differences(saved, fp(tmp_path / "b"))
    assert len(changed) == 1 and changed[0].startswith("encoder: ")
    place(tmp_path / "c", b"W" * 50)  # another stage-2 run at the same relative place
    changed = run_fingerprint.differences(saved, fp(tmp_path / "c", other=tmp_path / "a" / "enc.pt"))
    assert changed[0] == f"checkpoint {tmp_path / 'c' / 's2' / 'ckpt_4'}: weights.pt content changed"
    assert len(changed) == 2 and changed[1].startswith("checkpoint: ")
    (tmp_path / "link").symlink_to(tmp_path / "b")  # the moved runs reached through a symlink: inputs are resolved
    assert run_fingerprint.differences(saved, fp(tmp_path / "link", other=tmp_path / "a" / "enc.pt")) == []
    (tmp_path / "b" / "s3").rename(tmp_path / "b" / "s3_renamed")  # a renamed folder: nothing above moved along
    assert run_fingerprint.moved_along([(str(tmp_path / "a" / "s3"), str(tmp_path / "b" / "s3_renamed"))]) == []


def test_a_moved_runs_recorded_data_file_is_found_at_its_new_place(tmp_path):
    """``evaluate`` / stage 3 of a checkpoint whose run folder moved read its data file at the old path (gone): the
    file at the same place under the moved folder, with the recorded content, is read; another file there, a path
    that was outside the run folder or a fingerprint without a home is not relocated."""
    from omegaconf import OmegaConf

    from robopretrain.checkpoint import Checkpoint, recorded_file

    run = tmp_path / "old" / "run"
    (run / "stage2" / "checkpoints" / "ckpt_4").mkdir(parents=True)
    data = run / "data" / "demos.hdf5"
    data.parent.mkdir()
    data.write_bytes(b"d" * 100)
    outside = tmp_path / "old" / "other.hdf5"
    outside.write_bytes(b"o")
    fp = run_fingerprint.fingerprint({}, {"data": data, "mix": outside}, home=run)
    meta = {"data_path": str(data), "mix_path": str(outside), "fingerprint": fp}
    assert run_fingerprint.moved_file(data, fp, run / "stage2" / "checkpoints" / "ckpt_4") is None  # not moved
    run.rename(tmp_path / "run")
    place = tmp_path / "run" / "stage2" / "checkpoints" / "ckpt_4"
    ckpt = Checkpoint(place, OmegaConf.create({}), meta, {}, None)
    assert recorded_file(ckpt, "data_path") == str(tmp_path / "run" / "data" / "demos.hdf5")
    assert recorded_file(ckpt, "mix_path") == str(outside)  # there: as recorded
    assert recorded_file(ckpt, "nothing") is None
    outside.unlink()  # outside the run folder: not looked for elsewhere
    (tmp_path / "other.hdf5").write_bytes(b"o")
    assert recorded_file(ckpt, "mix_path") == str(outside)
    assert run_fingerprint.moved_file(data, {k: v for k, v in fp.items() if not k.startswith("home")}, place) is None
    (tmp_path / "run" / "data" / "demos.hdf5").write_bytes(b"x" * 100)  # same size, other content: not it
    assert recorded_file(ckpt, "data_path") == str(data)
    unrecorded = {**fp, "inputs": {}}  # a file the fingerprint does not hash (meta's mix_path of a run without mix)
    assert run_fingerprint.moved_file(data, unrecorded, place) == str(tmp_path / "run" / "data" / "demos.hdf5")


def test_a_relative_data_path_is_the_file_it_names(tmp_path, monkeypatch):
    """``data.path=demos.hdf5`` then ``../demos.hdf5`` from a subfolder, or ``run/demos.hdf5`` inside a run folder then
    moved: the path text differed and the resume was refused."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "demos.hdf5").write_bytes(b"d")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)

    def fp(path: str, home: str = "run") -> dict:
        return run_fingerprint.fingerprint({"data": {"path": path}, "algo": "cql"}, {"data": path}, home=home)

    saved = fp("run/demos.hdf5")
    assert saved["config"]["data.path"] == str(tmp_path / "run" / "demos.hdf5") and saved["config"]["algo"] == "cql"
    monkeypatch.chdir(tmp_path / "sub")
    assert run_fingerprint.differences(saved, fp("../run/demos.hdf5", "../run")) == []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").rename(tmp_path / "moved")
    assert run_fingerprint.differences(saved, fp("moved/demos.hdf5", "moved")) == []
    legacy = {**saved, "config": {**saved["config"], "data.path": "moved/demos.hdf5"}}  # from before: relative text
    assert run_fingerprint.differences({k: v for k, v in legacy.items() if not k.startswith("home")},
                                       fp("moved/demos.hdf5", "moved"))[0].startswith("data: ")  # the input moved


def test_settings_an_upgrade_added_at_what_the_toolkit_did_before_resume(caplog):
    """Runs interrupted under an older version were refused by the new one for settings the user never touched
    (helper V: ``data.mix.format: (unset) -> auto``, ``target.probe_step: (unset) -> true``,
    ``algo.actor_bc_weight: (unset) -> 0.0``): each registered value, and any setting of a section switched off,
    resumes; another value of the same setting, or a setting of a section switched on, is still a change."""
    saved = run_fingerprint.fingerprint({"algo": {"lr": 1e-3}}, {})
    before = {"data": {"format": "auto", "actions": "auto", "mix": {"format": "auto", "actions": "auto"}},
              "algo": {"lr": 1e-3, "actor_bc_weight": 0.0, "bc_steps": 0}, "target": {"probe_step": True},
              "transfer": {"dann": {"enabled": False, "coef": 0.1}}, "obs": {"min_std": 0.0},
              "encoder": {"precision": "float32"}}
    now = run_fingerprint.fingerprint(before, {})
    assert run_fingerprint.differences(saved, now) == []
    with caplog.at_level("WARNING"):
        run_fingerprint.check_resume(saved, now, "ckpt.pt")
    assert "data.mix.format=\"auto\"" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # stage 3's early check: refusals only (its resume said each warning twice)
        run_fingerprint.check_resume(saved, now, "ckpt.pt", say=False)
    assert caplog.text == ""
    with pytest.raises(run_fingerprint.ResumeMismatchError, match=r"algo.lr: 0.001 -> 0.01"):
        run_fingerprint.check_resume(saved, run_fingerprint.fingerprint({"algo": {"lr": 1e-2}}, {}), "c", say=False)
    for changed, text in [({"algo": {"lr": 1e-3, "actor_bc_weight": 4.0}}, "algo.actor_bc_weight: (unset) -> 4.0"),
                          ({"algo": {"lr": 1e-3}, "data": {"format": "d4rl"}}, "data.format: (unset) -> d4rl"),
                          # a target's probe step is a start check in an env of its own: never a difference
                          ({"algo": {"lr": 1e-3}, "target": {"probe_step": False}}, None),
                          ({"algo": {"lr": 1e-3}, "transfer": {"dann": {"enabled": True, "coef": 0.1}}},
                           "transfer.dann.coef: (unset) -> 0.1")]:
        diffs = run_fingerprint.differences(saved, run_fingerprint.fingerprint(changed, {}))
        assert (text in diffs) if text else diffs == [], (changed, diffs)


def test_a_folder_fingerprint_written_before_only_existed_is_compared_with_every_file(tmp_path):
    """Stage 1 named the files it reads (manifest, clips) after 0cbc651; a run interrupted before was refused by the
    new code: 'info.json removed; 6 files -> 5 files' although info.json was there (helper V, F04)."""
    data = tmp_path / "videos"
    data.mkdir()
    for name, text in (("manifest.csv", "path\nclip_0.mp4\n"), ("clip_0.mp4", "v" * 50), ("info.json", "{}")):
        (data / name).write_text(text)
    only = {"data": ["manifest.csv", "clip_0.mp4"]}
    every = run_fingerprint.fingerprint({}, {"data": data})  # as written before: every file
    old = {**every, "inputs": {"data": {k: v for k, v in every["inputs"]["data"].items() if k != "only"}}}
    now = run_fingerprint.fingerprint({}, {"data": data}, only=only)
    assert now["inputs"]["data"]["files"] == 2 and run_fingerprint.differences(old, now) == []
    (data / "notes.txt").write_text("mine")  # what the old fingerprint would have refused still is
    assert run_fingerprint.differences(old, run_fingerprint.fingerprint({}, {"data": data}, only=only))
    saved = run_fingerprint.fingerprint({}, {"data": data}, only=only)  # this version's: notes beside are no change
    (data / "more_notes.txt").write_text("more")
    assert run_fingerprint.differences(saved, run_fingerprint.fingerprint({}, {"data": data}, only=only)) == []


def test_a_folder_of_many_clips_is_fingerprinted_with_work_linear_in_its_files(tmp_path, monkeypatch):
    """Each listed file rebuilt the set of every clip path the run reads: clips x files path conversions, 43 s of
    silence before training on 2,000 three-frame clips (a new user's finding). Counted here, not timed: the path
    objects made stay within a few per file and clip."""
    data = tmp_path / "clips"
    clips = [f"c{i:03d}" for i in range(60)]
    for clip in clips:
        (data / clip).mkdir(parents=True)
        for t in range(3):
            (data / clip / f"{t}.png").write_bytes(b"x")
    (data / "notes.txt").write_text("not read")
    made = []

    class Counted(run_fingerprint.PurePosixPath):
        def __new__(cls, *args):
            made.append(args)
            return super().__new__(cls, *args)

    monkeypatch.setattr(run_fingerprint, "PurePosixPath", Counted)
    fp = run_fingerprint.input_fingerprint(data, only=clips)
    assert fp["files"] == 180 and fp["every_file"]["files"] == 181  # the clips' frames; the notes left out
    assert len(made) <= 4 * (181 + len(clips)), len(made)  # it was over 11,000 here


def test_the_refusal_can_be_restated_with_a_callers_advice():
    err = run_fingerprint.ResumeMismatchError("ck.pt", "lr: 1 -> 2", "set resume=false")
    assert str(err) == "ck.pt: cannot resume, it was written by a run with other settings or data (lr: 1 -> 2); " \
                       "set resume=false"
    again = err.advising("delete the stage folder")
    assert str(again).endswith("(lr: 1 -> 2); delete the stage folder") and again.where == "ck.pt"


def test_settings_added_by_an_upgrade_resume_only_when_off(caplog):
    """A checkpoint written before an option existed resumes when the option is off (the run computes what it
    did), and is refused when it is on; execution-only settings (cuda_graph) never block."""
    saved = run_fingerprint.fingerprint({"train": {"lr": 1e-3}}, {})
    for off in (False, None, "none", []):
        now = run_fingerprint.fingerprint({"train": {"lr": 1e-3, "normalize": off}}, {})
        assert run_fingerprint.added_off_keys(saved, now) == ["train.normalize"]
        with caplog.at_level("WARNING"):
            run_fingerprint.check_resume(saved, now, "ckpt.pt")
        assert "train.normalize" in caplog.text
    on = run_fingerprint.fingerprint({"train": {"lr": 1e-3, "normalize": True, "stretch": False}}, {})
    caplog.clear()
    with caplog.at_level("WARNING"), pytest.raises(run_fingerprint.ResumeMismatchError,
                                                   match=r"train.normalize: \(unset\) -> true"):
        run_fingerprint.check_resume(saved, on, "ckpt.pt")
    assert "resuming" not in caplog.text  # a refused run said "resuming" first
    removed = run_fingerprint.fingerprint({}, {})  # a key the rerun lacks is still a difference
    assert run_fingerprint.differences(saved, removed) == ["train.lr: 0.001 -> (unset)"]
    graphed = run_fingerprint.fingerprint({"train": {"lr": 1e-3, "cuda_graph": True}}, {})
    run_fingerprint.check_resume(saved, graphed, "ckpt.pt")
    # a setting a newer toolkit ignores (stage 3's network sizes, taken from the checkpoint) is no change against a
    # checkpoint that recorded it; one ignored only by the older run still is
    old = run_fingerprint.fingerprint({"algo": {"actor_hidden": [64], "lr": 1.0}}, {}, ignore=())
    newer = run_fingerprint.fingerprint({"algo": {"actor_hidden": [256], "lr": 1.0}}, {}, ignore=("algo.actor_hidden",))
    assert run_fingerprint.differences(old, newer) == []
    assert run_fingerprint.differences(newer, old) == ["algo.actor_hidden: (unset) -> [64]"]


def test_an_input_an_upgrade_started_recording_is_no_change_once_recorded_it_is(tmp_path):
    """Stage 2 records its stage-1 encoder folder as an input since stop 64: a checkpoint whose fingerprint has no such
    input resumes; one that recorded none (no encoder) or another folder is refused."""
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "meta.json").write_text("{}")
    before = run_fingerprint.fingerprint({}, {"data": None})
    now = run_fingerprint.fingerprint({}, {"data": None, "encoder": enc})
    assert run_fingerprint.differences(before, now) == []
    assert run_fingerprint.differences(run_fingerprint.fingerprint({}, {"data": None, "encoder": None}), now) == [
        f"encoder: none -> {enc.resolve()}"]


def test_a_run_folder_reached_through_a_link_is_not_said_to_have_moved(tmp_path, caplog):
    """Resumed through a symlinked path, the log said "resuming a run folder moved from .../real/run to .../link/run"
    of the same folder; a real move is still said."""
    (tmp_path / "real" / "run").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    saved = run_fingerprint.fingerprint({"seed": 0}, {}, home=tmp_path / "real" / "run")
    with caplog.at_level(logging.INFO, logger="robopretrain.run_fingerprint"):
        via_link = run_fingerprint.fingerprint({"seed": 0}, {}, home=tmp_path / "link" / "run")
        run_fingerprint.check_resume(saved, via_link, "run")
        assert "moved" not in caplog.text
        shutil.move(str(tmp_path / "real" / "run"), str(tmp_path / "elsewhere"))
        run_fingerprint.check_resume(saved, run_fingerprint.fingerprint({"seed": 0}, {}, home=tmp_path / "elsewhere"),
                                     "run")
    assert "resuming a run folder moved from" in caplog.text


def test_a_data_path_given_through_a_symlink_is_the_file_it_names(tmp_path):
    """``data.path=link.hdf5`` then ``data.path=real.hdf5`` (the link's target), or back: the text differed and the
    resume was refused. A link repointed at another file is still a change (the input's content)."""
    real, other = tmp_path / "real.hdf5", tmp_path / "other.hdf5"
    real.write_bytes(b"d" * 10)
    other.write_bytes(b"e" * 11)
    (tmp_path / "link.hdf5").symlink_to(real)

    def fp(path) -> dict:
        return run_fingerprint.fingerprint({"data": {"path": str(path)}}, {"data": path})

    saved = fp(tmp_path / "link.hdf5")
    assert run_fingerprint.differences(saved, fp(real)) == []
    assert run_fingerprint.differences(fp(real), fp(tmp_path / "link.hdf5")) == []
    (tmp_path / "link.hdf5").unlink()
    (tmp_path / "link.hdf5").symlink_to(other)
    changed = run_fingerprint.differences(saved, fp(tmp_path / "link.hdf5"))
    assert changed and changed[0].startswith("data: ")
    assert run_fingerprint.differences(saved, fp(other)) != []


def test_a_resume_refused_for_another_converted_copy_says_the_source_changed():
    """Data read through a cached copy: an edited source gets a copy of another key, and the refusal named two
    hashed cache files only; it now says what that means. Other paths are listed as they are."""
    def fp(path):
        return {"inputs": {"data": {"path": path, "kind": "file", "size": 1, "sha256": "x"}}}

    old, new = "/c/d.robomimic.8f36baf75667e148.hdf5", "/c/d.robomimic.fafd724bae05448b.hdf5"
    assert run_fingerprint.differences(fp(old), fp(new)) == [
        f"data: {old} -> {new} (another converted copy of the same source: the source file changed since this "
        "checkpoint, it was converted with other data settings, or by another version of the converter, after a "
        "toolkit upgrade)"]
    for other in ("/c/e.robomimic.fafd724bae05448b.hdf5", "/elsewhere/d.robomimic.fafd724bae05448b.hdf5",
                  "/c/d.hdf5"):
        assert run_fingerprint.differences(fp(old), fp(other)) == [f"data: {old} -> {other}"]


def test_a_target_field_added_on_a_resume_is_compared_with_its_default():
    """terminate_on_success: false added to a stage-3 target on a resume was taken for an "off" option added by an
    upgrade, and the run resumed with other episode semantics; reward: sparse, the default, was refused; a key added
    to a target's env_kwargs (any meaning) passed when false or null."""
    saved = run_fingerprint.fingerprint({"target": {"name": "PointReach", "env_id": "m:Env"}}, {})

    def diff(**fields) -> list[str]:
        now = run_fingerprint.fingerprint({"target": {"name": "PointReach", "env_id": "m:Env", **fields}}, {})
        return run_fingerprint.differences(saved, now)

    assert diff(terminate_on_success=False) == ["target.terminate_on_success: (unset) -> false"]
    assert diff(probe_step=False) == []  # (a start check in an env of its own: harmless, HARMLESS_KEYS)
    assert diff(env_kwargs={"dense": False}) == ["target.env_kwargs.dense: (unset) -> false"]
    assert diff(reward="sparse", terminate_on_success=True, max_episode_steps=None) == []  # the defaults
    assert diff(reward="dense") == ["target.reward: (unset) -> dense"]
    named = run_fingerprint.fingerprint({"target": "PlaceInBowl"}, {})  # a name, then a mapping: no traceback
    assert "target.max_episode_steps: (unset) -> 100" in run_fingerprint.differences(
        named, run_fingerprint.fingerprint({"target": {"name": "PlaceInBowl", "max_episode_steps": 100}}, {}))
    pipeline = run_fingerprint.fingerprint({"targets": [{"name": "Reach"}]}, {})
    again = run_fingerprint.fingerprint({"targets": [{"name": "Reach", "terminate_on_success": False}]}, {})
    assert run_fingerprint.differences(pipeline, again) != []
