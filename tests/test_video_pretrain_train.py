"""Stage-1 entry point (video_pretrain.train) and diagnostics (video_pretrain.diagnose) on tiny data."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from robopretrain.nets.encoder_io import load_encoder
from sim_envs.hdf5_writer import RobomimicWriter, make_env_args
from sim_envs.video_writer import write_mp4
import video_pretrain.train as vp
from video_pretrain import diagnose as diag
from video_pretrain.train import CONFIG_DIR, load_pretrained, train

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def moving_square(n: int, start: int, speed: int, color: tuple[int, int, int]) -> np.ndarray:
    """n frames (n, SIZE, SIZE, 3) of a square sliding right: time is visible in the pixels."""
    frames = np.full((n, SIZE, SIZE, 3), 40, dtype=np.uint8)
    for t in range(n):
        x = min(SIZE - 8, start + speed * t // 2)
        frames[t, 12:20, x:x + 8] = color
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    rows = ["path,num_frames,text"]
    for i in range(5):
        frames = moving_square(20 + 2 * i, start=i, speed=1 + i % 2, color=(200, 60 + 30 * i, 60))
        write_mp4(root / f"clip_{i:05d}.mp4", frames, fps=20)
        rows.append(f"clip_{i:05d}.mp4,{len(frames)},a square slides")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def robot_hdf5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("robot") / "robot.hdf5"
    with RobomimicWriter(path, make_env_args("sim_envs/PlaceInBowl-v0", "1", {}), valid_fraction=0.0) as writer:
        for i in range(6):
            frames = moving_square(12 + i, start=0, speed=2, color=(60, 200, 60))
            n = len(frames) - 1
            writer.add_episode(task="PlaceInBowl", task_id=9, obs={"agentview_image": frames[:-1],
                                                                   "proprio": np.zeros((n, 7), np.float32)},
                               next_obs={"agentview_image": frames[1:], "proprio": np.zeros((n, 7), np.float32)},
                               actions=np.zeros((n, 4), np.float32), rewards=np.eye(n)[-1].astype(np.float32),
                               dones=np.eye(n)[-1].astype(np.uint8),
                               ep_meta={"kind": "clean" if i < 5 else "noisy", "success": True})
    return path


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "video_pretrain.train", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("video_pretrain", overrides=list(overrides))


TINY = ("batch_size=4", f"image_size={SIZE}", "progress=false", "valid_batches=1", "eval_every=2", "log_every=1",
        "checkpoint_every=2")


# ------------------------------------------------------------------------------------------------ train
def test_cli_trains_a_loadable_encoder_and_resumes_from_its_step(videos, tmp_path):
    run = tmp_path / "run"
    args = (f"data.path={videos}", f"output_dir={run}", f"hydra.run.dir={tmp_path / 'hydra'}", *TINY)
    first = run_cli(*args, "steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    enc_dir = run / "encoder"
    encoder, meta = load_encoder(enc_dir)
    assert meta["extra"]["objective"] == "icvf" and meta["extra"]["steps"] == 3
    assert meta["extra"]["data"]["cropped_sizes"] == []  # square clips (stage 2 reads it: nothing to compare)
    assert meta["input_spec"]["image_size"] == SIZE and meta["encoder"] == "small_conv"
    assert (enc_dir / "config.yaml").is_file()
    assert encoder(torch.rand(2, 3, SIZE, SIZE)).shape == (2, encoder.out_dim)
    pre = load_pretrained(enc_dir)
    assert pre.heads is not None and pre.objective == "icvf"
    by_run = load_pretrained(run)  # the run folder, as stage 2 takes it: diagnose said value_heads.pt was missing
    assert torch.equal(next(iter(by_run.heads.state_dict().values())), next(iter(pre.heads.state_dict().values())))
    f = pre.encoder(torch.rand(3, 3, SIZE, SIZE))
    assert pre.heads(f, f, f).shape == (2, 3)
    assert (run / "checkpoints" / "last.pt").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["data"]["valid_videos"] == 1 and metrics["data"]["train_videos"] == 4
    assert [v["step"] for v in metrics["history"]["valid"]] == [0, 2, 3]

    # what a run killed while writing leaves (stages 2 and 3 prune theirs): removed by the next run
    (run / "checkpoints" / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (run / ".encoder.k1ll3d.stage").mkdir()
    second = run_cli(*args, "steps=5")
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "resumed from" in log and "at step 3" in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 5 and metrics["trained_steps_this_run"] == 2
    assert [h["step"] for h in metrics["history"]["train"]] == [1, 2, 3, 4, 5]
    assert load_encoder(enc_dir)[1]["extra"]["steps"] == 5
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".stage", ".old"))]


@pytest.mark.parametrize("objective", ["vip", "icvf"])
def test_resume_continues_exactly_like_an_uninterrupted_run(videos, tmp_path, objective):
    """ICVF too: its target network, value heads and goal/intent sampling continue where the checkpoint left them."""
    common = (f"data.path={videos}", f"objective={objective}", "tensorboard=false", *TINY)
    train(compose_cfg(*common, "steps=4", f"output_dir={tmp_path / 'straight'}"), tmp_path)
    train(compose_cfg(*common, "steps=2", f"output_dir={tmp_path / 'split'}"), tmp_path)
    train(compose_cfg(*common, "steps=4", f"output_dir={tmp_path / 'split'}"), tmp_path)
    a = load_encoder(tmp_path / "straight" / "encoder")[0].state_dict()
    b = load_encoder(tmp_path / "split" / "encoder")[0].state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    if objective == "icvf":
        ha = load_pretrained(tmp_path / "straight" / "encoder").heads.state_dict()
        hb = load_pretrained(tmp_path / "split" / "encoder").heads.state_dict()
        assert ha and all(torch.allclose(ha[k], hb[k], atol=1e-6) for k in ha)


@pytest.mark.parametrize("older", [False, True])
def test_a_resume_under_another_process_count_keeps_every_sessions_world_size(videos, tmp_path, older):
    """metrics.json, the encoder's meta.json and the checkpoint keep each session's process count
    (``parallel.history``), not the last session's alone; the first session's checkpoint is edited to read as a
    2-process one (``older``: one written before the record, its ``world_size`` alone)."""
    common = (f"data.path={videos}", "objective=tcn", "tensorboard=false", f"output_dir={tmp_path}", *TINY)
    train(compose_cfg(*common, "steps=2"), tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert json.loads(state["world_sizes"]) == [{"from_step": 0, "world_size": 1, "effective_batch_size": 4}]
    state["world_size"] = 2
    expected = [{"from_step": 0, "world_size": 2, "effective_batch_size": 8}]
    if older:
        del state["world_sizes"]
    else:  # three sessions: 1 process, then 2 from step 1, then 1 again
        expected = [{"from_step": 0, "world_size": 1, "effective_batch_size": 4},
                    {"from_step": 1, "world_size": 2, "effective_batch_size": 8}]
        state["world_sizes"] = json.dumps(expected)
    torch.save(state, ckpt)
    train(compose_cfg(*common, "steps=4"), tmp_path)
    expected.append({"from_step": 2, "world_size": 1, "effective_batch_size": 4})
    assert json.loads((tmp_path / "metrics.json").read_text())["parallel"]["history"] == expected
    assert load_encoder(tmp_path / "encoder")[1]["extra"]["parallel"]["history"] == expected
    assert json.loads(torch.load(ckpt, weights_only=True)["world_sizes"]) == expected
    train(compose_cfg(*common, "steps=6"), tmp_path)  # a resume at the same size adds nothing
    assert json.loads((tmp_path / "metrics.json").read_text())["parallel"]["history"] == expected


def test_a_rerun_with_fewer_steps_than_its_checkpoint_says_nothing_is_trained(videos, tmp_path, caplog):
    import logging

    common = (f"data.path={videos}", "objective=tcn", "tensorboard=false", f"output_dir={tmp_path}", *TINY)
    train(compose_cfg(*common, "steps=3"), tmp_path)
    with caplog.at_level(logging.WARNING):
        train(compose_cfg(*common, "steps=3"), tmp_path)
        assert "nothing to train" not in caplog.text  # a finished run rerun as it was: nothing to say
        train(compose_cfg(*common, "steps=2"), tmp_path)
    assert "its checkpoint is at step 3, past steps=2: nothing to train" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 3


def test_resume_refuses_a_checkpoint_of_other_settings(videos, tmp_path):
    common = (f"data.path={videos}", "tensorboard=false", f"output_dir={tmp_path}", *TINY)
    train(compose_cfg(*common, "objective=tcn", "steps=2"), tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        train(compose_cfg(*common, "objective=tcn", "steps=3", "+encoder.kwargs.out_dim=64"), tmp_path)
    train(compose_cfg(*common, "objective=tcn", "steps=3", "+encoder.kwargs.out_dim=64", "resume=false"), tmp_path)
    assert load_encoder(tmp_path / "encoder")[0].out_dim == 64


def test_a_file_added_beside_the_clips_does_not_stop_a_resume_and_a_clip_added_does(videos, tmp_path):
    """The fingerprint of a video folder covers what training reads (manifest and clips): an inspection's contact
    sheet or notes added resume; a clip the folder's reading would take up (no manifest) or a manifest edit refuse."""
    import shutil

    from robopretrain.run_fingerprint import ResumeMismatchError

    folder = Path(shutil.copytree(videos, tmp_path / "clips"))
    common = (f"data.path={folder}", "objective=tcn", "tensorboard=false", f"output_dir={tmp_path / 'run'}", *TINY)
    train(compose_cfg(*common, "steps=2"), tmp_path)
    (folder / "notes.txt").write_text("recorded on Tuesday\n")
    (folder / "contact_sheet.png").write_bytes(b"\x89PNG not really")
    train(compose_cfg(*common, "steps=3"), tmp_path)  # resumes
    assert vp.read_files(folder) == ["manifest.csv", *(f"clip_{i:05d}.mp4" for i in range(5))]
    manifest = (folder / "manifest.csv").read_text()
    (folder / "manifest.csv").write_text(manifest.replace("a square slides", "a square glides", 1))  # an edit
    with pytest.raises(ResumeMismatchError, match="manifest.csv content changed"):
        train(compose_cfg(*common, "steps=4"), tmp_path)
    # without a manifest every video file is a clip: one added changes the data
    bare = Path(shutil.copytree(videos, tmp_path / "bare", ignore=shutil.ignore_patterns("manifest.csv")))
    common = (f"data.path={bare}", "objective=tcn", "tensorboard=false", f"output_dir={tmp_path / 'bare_run'}", *TINY)
    train(compose_cfg(*common, "steps=2"), tmp_path)
    (bare / "readme.md").write_text("clips of a square\n")
    train(compose_cfg(*common, "steps=3"), tmp_path)
    shutil.copy(bare / "clip_00001.mp4", bare / "clip_00009.mp4")
    with pytest.raises(ResumeMismatchError, match="files"):
        train(compose_cfg(*common, "steps=4"), tmp_path)


def test_symlinked_clips_and_a_manifest_given_as_a_file_are_in_the_fingerprint(videos, tmp_path):
    """A clip symlinked into the folder was named by its target's path (outside the folder: no file of it), and
    data.path=<folder>/manifest.csv fingerprinted the csv alone: a clip replaced by another video resumed on
    silently in both. Now each refuses the resume naming the clip."""
    import shutil

    from robopretrain.run_fingerprint import ResumeMismatchError

    store = Path(shutil.copytree(videos, tmp_path / "store"))  # the real files, elsewhere
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(store / "manifest.csv", linked / "manifest.csv")
    for clip in store.glob("clip_*.mp4"):
        (linked / clip.name).symlink_to(clip)
    assert vp.read_files(linked) == ["manifest.csv", *(f"clip_{i:05d}.mp4" for i in range(5))]
    common = (f"data.path={linked}", "objective=tcn", "tensorboard=false", f"output_dir={tmp_path / 'run'}", *TINY)
    train(compose_cfg(*common, "steps=2"), tmp_path)
    train(compose_cfg(*common, "steps=3"), tmp_path)  # resumes: nothing changed
    shutil.copy(store / "clip_00002.mp4", store / "clip_00001.mp4")  # the link's target replaced by another video
    with pytest.raises(ResumeMismatchError, match="clip_00001.mp4"):
        train(compose_cfg(*common, "steps=4"), tmp_path)
    # the manifest as the data.path: its clips are inputs too (input "clips", the manifest's folder)
    folder = Path(shutil.copytree(videos, tmp_path / "plain"))
    common = (f"data.path={folder / 'manifest.csv'}", "objective=tcn", "tensorboard=false",
              f"output_dir={tmp_path / 'csv_run'}", *TINY)
    train(compose_cfg(*common, "steps=2"), tmp_path)
    shutil.copy(folder / "clip_00002.mp4", folder / "clip_00001.mp4")
    with pytest.raises(ResumeMismatchError, match="clips .*plain"):
        train(compose_cfg(*common, "steps=3"), tmp_path)
    # a clip in a symlinked sub-folder (a walk of the folder does not follow it): an input of its own
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared").symlink_to(store)
    text = (store / "manifest.csv").read_text().replace("clip_00000.mp4", "shared/clip_00000.mp4")
    (outside / "manifest.csv").write_text(text)
    for clip in store.glob("clip_0000[1-4].mp4"):
        shutil.copy(clip, outside / clip.name)
    assert list(vp.outside_clips(outside)) == ["shared/clip_00000.mp4"]
    assert "clip shared/clip_00000.mp4" in vp.fingerprint(compose_cfg(f"data.path={outside}", *TINY), outside)[
        "inputs"]


def test_a_refused_resume_on_an_edited_source_keeps_the_converted_copy_it_trained_on(tmp_path):
    """Stage 1 on a LeRobot folder (a converted copy): the source edited, the rerun's conversion keeps the copy the
    checkpoint names (the resume is refused); the source restored, the run resumes on that copy."""
    import shutil

    from _formats import write_lerobot
    from robopretrain.run_fingerprint import ResumeMismatchError

    src, cache = write_lerobot(tmp_path / "lerobot", lengths=(6, 5)), tmp_path / "cache"
    shutil.copytree(src, tmp_path / "original")
    common = (f"data.path={src}", f"data.cache_dir={cache}", "data.key=observation.images.top", "objective=tcn",
              "tensorboard=false", f"output_dir={tmp_path / 'run'}", "data.valid_fraction=0", *TINY)
    train(compose_cfg(*common, "steps=2"), tmp_path)
    first = [p for p in cache.glob("*.hdf5")]
    assert len(first) == 1 and vp.recorded_data(tmp_path / "run" / "checkpoints" / "last.pt") == [str(first[0])]
    shutil.rmtree(src)
    write_lerobot(src, lengths=(7, 5))
    with pytest.raises(ResumeMismatchError):
        train(compose_cfg(*common, "steps=3"), tmp_path)
    assert first[0].is_file() and len(list(cache.glob("*.hdf5"))) == 2
    shutil.rmtree(src)
    shutil.copytree(tmp_path / "original", src)  # the same bytes, new times: found by content
    train(compose_cfg(*common, "steps=3"), tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["trained_steps_this_run"] == 1


def test_resume_false_removes_the_previous_runs_files(videos, tmp_path, monkeypatch):
    """A fresh run in an old run's folder: the old TensorBoard events, metrics and encoder do not outlive it (a fresh
    run stopped early left the old encoder in place, read as this run's)."""
    import video_pretrain.train as vt

    common = (f"data.path={videos}", "tensorboard=true", f"output_dir={tmp_path}", "objective=tcn", *TINY)
    train(compose_cfg(*common, "steps=2"), tmp_path)
    old_events = set((tmp_path / "tb").rglob("events*"))
    assert old_events and (tmp_path / "encoder").is_dir() and (tmp_path / "metrics.json").is_file()

    def stop(*args, **kwargs):  # the fresh run is stopped before it writes anything
        raise KeyboardInterrupt

    monkeypatch.setattr(vt, "FrameBatchStream", stop)
    with pytest.raises(KeyboardInterrupt):
        train(compose_cfg(*common, "steps=2", "resume=false"), tmp_path)
    assert not any(p.exists() for p in (tmp_path / "encoder", tmp_path / "metrics.json", tmp_path / "checkpoints"))
    assert not old_events & set((tmp_path / "tb").rglob("events*"))


def test_an_output_it_may_not_replace_is_refused_before_training(videos, tmp_path):
    """output= naming a folder of something else: refused at the start (it trained every step, then refused)."""
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes: exists and is not an encoder checkpoint"):
        train(compose_cfg(f"data.path={videos}", "tensorboard=false", f"output_dir={tmp_path / 'run'}",
                          f"output={other}", "steps=2", *TINY), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    assert (other / "todo.txt").read_text() == "mine"


def test_stages_1_and_2_refuse_each_others_run_folder(videos, robot_hdf5, tmp_path):
    """Stage 2 given a stage-1 run folder mixed its checkpoints, TensorBoard events and log into it (and resume=false
    would remove stage 1's checkpoint); stage 1 given a stage-2 folder likewise. Both are refused before training."""
    from _stages import stage2_config

    from robopretrain.train import run as stage2

    common = (f"data.path={videos}", "tensorboard=false", "objective=tcn", *TINY)
    train(compose_cfg(*common, "steps=1", f"output_dir={tmp_path / 's1'}"), tmp_path / "s1")
    with pytest.raises(ValueError, match=r"output_dir=.*s1 is a run folder of stage 1 \(video_pretrain.train\) "
                                         r"\(last.pt is its checkpoint\)"):
        stage2(stage2_config(robot_hdf5, tmp_path / "s1", steps=1))
    assert sorted(p.name for p in (tmp_path / "s1" / "checkpoints").iterdir()) == ["last.pt"]
    meta = tmp_path / "s2" / "checkpoints" / "ckpt_00000001" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"stage": "offline"}))
    with pytest.raises(ValueError, match=r"is a run folder of stage 2 \(robopretrain.train\)"):
        train(compose_cfg(*common, "steps=1", f"output_dir={tmp_path / 's2'}", "resume=false"), tmp_path / "s2")
    assert meta.is_file()  # resume=false removed the stage-2 checkpoints


def test_a_run_killed_before_its_first_checkpoint_leaves_no_tensorboard_point_twice(videos, tmp_path):
    """The rerun of a run killed before its first checkpoint starts over: TensorBoard hides the killed session's
    events (each validation step is shown once), as the resumed run hides those after its checkpoint."""
    from test_loggers import tensorboard_events

    common = (f"data.path={videos}", "tensorboard=true", f"output_dir={tmp_path}", "objective=tcn", *TINY)
    train(compose_cfg(*common, "steps=3"), tmp_path)
    (tmp_path / "checkpoints" / "last.pt").unlink()  # as if killed after logging, before its checkpoint
    train(compose_cfg(*common, "steps=3"), tmp_path)
    assert [e.step for e in tensorboard_events(tmp_path / "tb").Scalars("valid/loss")] == [0, 2, 3]


def test_short_clips_stay_out_of_validation_and_one_video_trains(tmp_path, caplog):
    """A 1-frame clip beside one usable clip: the split drew it into validation (or left train without a usable
    clip) and the run stopped, "every clip is shorter"; one video failed the default 10% split. Short clips are left
    out before the split; with one usable clip nothing is held out (said once)."""
    import logging

    root = tmp_path / "v"
    root.mkdir()
    write_mp4(root / "long.mp4", moving_square(12, 0, 1, (200, 60, 60)), fps=20)
    write_mp4(root / "one.mp4", moving_square(1, 0, 1, (200, 60, 60)), fps=20)
    (root / "manifest.csv").write_text("path,num_frames,text\nlong.mp4,12,a\none.mp4,1,b\n")
    with caplog.at_level(logging.WARNING):
        train(compose_cfg(f"data.path={root}", "tensorboard=false", f"output_dir={tmp_path / 'r'}", "steps=2",
                          "data.valid_fraction=0.5", *TINY), tmp_path)
    facts = json.loads((tmp_path / "r" / "metrics.json").read_text())["data"]
    assert (facts["train_videos"], facts["valid_videos"]) == (1, 0)
    assert "one.mp4 (1 frame)" in caplog.text and "too few to hold one out for validation" in caplog.text
    # the short clip listed first: the split's indices are into the usable clips, not the manifest's rows
    write_mp4(root / "long2.mp4", moving_square(12, 1, 1, (60, 200, 60)), fps=20)
    (root / "manifest.csv").write_text("path,num_frames,text\none.mp4,1,b\nlong.mp4,12,a\nlong2.mp4,12,c\n")
    train(compose_cfg(f"data.path={root}", "tensorboard=false", f"output_dir={tmp_path / 'r2'}", "steps=2",
                      "data.valid_fraction=0.5", *TINY), tmp_path)
    metrics = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    facts = metrics["data"]
    assert (facts["train_videos"], facts["valid_videos"]) == (1, 1)
    # the counts are of the clips used, and the clip left out is named (videos said 3 and the list was empty)
    assert (facts["videos"], facts["frames"], facts["short_videos"]) == (2, 24, ["one.mp4"])
    assert metrics["short_videos_skipped"] == ["one.mp4"]


def test_one_video_file_or_a_folder_of_videos_without_a_manifest_trains(videos, tmp_path):
    """data.path=<one .mp4> failed as "not a readable UTF-8 CSV manifest", a folder of mp4s without manifest.csv as
    "no such manifest"."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("clip_00000.mp4", "clip_00001.mp4"):
        (bare / name).write_bytes((videos / name).read_bytes())
    for path, used in ((videos / "clip_00000.mp4", 1), (bare, 2)):
        out = tmp_path / f"r_{path.name}"
        train(compose_cfg(f"data.path={path}", "tensorboard=false", f"output_dir={out}", "steps=1", *TINY), tmp_path)
        assert json.loads((out / "metrics.json").read_text())["data"]["videos"] == used


def jpeg_clips(root: Path, bad: set[int], count: int = 3) -> Path:
    """``count`` 8-frame JPEG folders under ``root`` with a manifest; frame 5 of the clips in ``bad`` truncated (they
    list fine and fail only when decoded)."""
    from PIL import Image

    for c in range(count):
        d = root / f"clip{c}"
        d.mkdir(parents=True)
        for t in range(8):
            if c in bad and t == 5:
                (d / f"{t:06d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
            else:
                Image.fromarray(moving_square(8, c, 1, (200, 90, 60))[t]).save(d / f"{t:06d}.jpg")
    (root / "manifest.csv").write_text("path,num_frames,text\n" + "".join(f"clip{c},8,x\n" for c in range(count)))
    return root


def test_clips_that_fail_only_when_decoded(tmp_path, caplog):
    """Frame folders with a truncated JPEG list fine and fail when decoded: every training clip so was a RuntimeError
    traceback (now the one-line data error), and a bad validation clip stopped a run whose training clips were fine
    (now: trained without validation)."""
    import logging

    from robopretrain.data.video import VideoDatasetError

    def folder(name: str, bad: set[int]) -> Path:
        return jpeg_clips(tmp_path / name, bad)

    from video_pretrain.data import ManifestSource, split_by_video

    common = ("tensorboard=false", "steps=2", *TINY)
    with pytest.raises(VideoDatasetError, match="every clip of this split is unreadable"):
        train(compose_cfg(f"data.path={folder('all', {0, 1, 2})}", f"output_dir={tmp_path / 'a'}",
                          "data.valid_fraction=0", *common), tmp_path)
    mixed = folder("one", {0})  # clip0 bad: a split seed that holds it out for validation
    seed = next(k for k in range(20) if split_by_video(ManifestSource(mixed, SIZE), 0.34, k)[1].tolist() == [0])
    with caplog.at_level(logging.WARNING):
        train(compose_cfg(f"data.path={mixed}", f"output_dir={tmp_path / 'm'}", "data.valid_fraction=0.34",
                          f"data.split_seed={seed}", *common), tmp_path)
    assert "training without validation" in caplog.text and (tmp_path / "m" / "encoder").is_dir()
    # the clip found unreadable is not counted as used (it was counted by its cheap check at the start)
    data = json.loads((tmp_path / "m" / "metrics.json").read_text())["data"]
    assert (data["videos"], data["train_videos"], data["valid_videos"], data["frames"]) == (2, 2, 0, 16)
    assert [Path(b).name for b in data["bad_videos"]] == ["clip0"]
    # found by a DataLoader worker while training (workers do not share the source's bad_videos)
    for workers in (0, 1):
        out = tmp_path / f"w{workers}"
        train(compose_cfg(f"data.path={folder(f'train{workers}', {1})}", f"output_dir={out}",
                          "data.valid_fraction=0", f"num_workers={workers}", *common), tmp_path)
        metrics = json.loads((out / "metrics.json").read_text())
        data = metrics["data"]
        assert (data["videos"], data["train_videos"], data["frames"]) == (2, 2, 16), workers
        assert [Path(b).name for b in data["bad_videos"]] == ["clip1"] == [Path(b).name for b in metrics["bad_videos"]]
    with pytest.raises(VideoDatasetError, match="clip0"):  # data.strict=true: an error, in validation too
        train(compose_cfg(f"data.path={mixed}", f"output_dir={tmp_path / 's'}", "data.valid_fraction=0.34",
                          f"data.split_seed={seed}", "data.strict=true", *common), tmp_path)


def test_a_resume_after_a_clip_found_unreadable_goes_on_as_the_uninterrupted_run(tmp_path):
    """The clips found unreadable while training were not in the checkpoint: a resumed run sampled the bad clip
    again (its batches, drawn from every clip, differed from the uninterrupted run's until it failed once more:
    encoders 0.003 apart) and its metrics.json no longer listed it if it was not drawn again (a new user's
    finding). One bad clip of ten, two samples a batch: the first clip found in the first session is the bad one."""
    bad = lambda run: [Path(b).name for b in json.loads((run / "metrics.json").read_text())["bad_videos"]]  # noqa
    common = ("data.valid_fraction=0", "tensorboard=false", *TINY, "batch_size=2")
    for b in range(10):
        data = jpeg_clips(tmp_path / f"clips{b}", {b}, count=10)
        split = tmp_path / f"split{b}"
        train(compose_cfg(f"data.path={data}", *common, "steps=3", f"output_dir={split}"), tmp_path)
        if bad(split) == [f"clip{b}"]:  # found before the checkpoint the resume starts from
            break
    else:
        pytest.fail("no bad clip was drawn in three steps")
    train(compose_cfg(f"data.path={data}", *common, "steps=8", f"output_dir={split}"), tmp_path)
    train(compose_cfg(f"data.path={data}", *common, "steps=8", f"output_dir={tmp_path / 'straight'}"), tmp_path)
    assert bad(split) == [f"clip{b}"] == bad(tmp_path / "straight")
    a = load_encoder(tmp_path / "straight" / "encoder")[0].state_dict()
    c = load_encoder(split / "encoder")[0].state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_robot_hdf5_source_with_workers_and_the_none_objective(robot_hdf5, tmp_path):
    cfg = compose_cfg(f"data.path={robot_hdf5}", "data.key=agentview_image", "objective=tcn", "num_workers=2",
                      "steps=2", "tensorboard=false", f"output_dir={tmp_path / 'tcn'}", *TINY)
    path = train(cfg, tmp_path)
    meta = load_encoder(path)[1]
    assert meta["extra"]["objective"] == "tcn" and meta["extra"]["image_key"] == "agentview_image"
    assert load_pretrained(path).heads is None

    none = train(compose_cfg("objective=none", f"image_size={SIZE}", f"output_dir={tmp_path / 'none'}"), tmp_path)
    assert load_encoder(none)[1]["extra"]["steps"] == 0


def test_config_errors_name_the_key(videos, tmp_path):
    with pytest.raises(ValueError, match="objective.name"):
        train(compose_cfg("objective.name=simclr", f"output_dir={tmp_path}"), tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        train(compose_cfg("batch_size=0", f"output_dir={tmp_path}"), tmp_path)
    with pytest.raises(FileNotFoundError, match="data.path"):
        train(compose_cfg(f"data.path={tmp_path / 'nope'}", f"output_dir={tmp_path}"), tmp_path)
    with pytest.raises(ValueError, match="data.generate=false"):
        train(compose_cfg("data.generate=false", f"output_dir={tmp_path}"), tmp_path)



@pytest.mark.parametrize("overrides,message", [
    (("augment_pad=100", "image_size=64"), r"augment_pad=100; expected a shift smaller than half the 64 px frame "
                                           r"\(image_size\), i.e. at most 31 px"),
    (("augment_pad=8", "image_size=16"), r"augment_pad=8; expected .* at most 7 px"),
    (("objective.options.gamma=1.0",), r"objective.options.gamma=1.0; expected a discount in \(0, 1\)"),
    (("objective=vip", "objective.options.gamma=0"), r"objective.options.gamma=0; expected a discount in \(0, 1\)"),
    (("objective.options.expectile=1.5",), r"objective.options.expectile=1.5; expected a number in \(0, 1\)"),
    (("objective=tcn", "objective.options.temperature=0"), r"objective.options.temperature=0; expected a positive")])
def test_settings_that_make_no_sense_are_refused_before_any_data_loads(tmp_path, monkeypatch, overrides, message):
    """augment_pad=100 at 64 px (every shifted frame mostly repeated border) and ICVF gamma=1.0 (no discounted
    value) trained silently; VIP's gamma was refused only after the videos had loaded."""
    monkeypatch.setattr(vp, "resolve_data_path", lambda *a: pytest.fail("data were read before the config check"))
    with pytest.raises(ValueError, match=rf"^video_pretrain config: {message}"):
        train(compose_cfg(*overrides, f"output_dir={tmp_path}"), tmp_path)
    vp.validate_config(compose_cfg("augment_pad=7", "image_size=16", "objective.options.gamma=0.5"))  # the bounds


# ------------------------------------------------------------------------------------------------ statistics
def test_rankdata_averages_ties():
    assert diag.rankdata([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_spearman_on_known_examples():
    # ranks of y: [1, 2, 3.5, 5, 3.5]; Pearson of (1..5) with them: 0.8207826816681233 (scipy's documented value)
    assert diag.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233, abs=1e-12)
    assert diag.spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)
    assert diag.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(diag.spearman([1, 2, 3], [7, 7, 7]))


def kendall_by_pairs(x, y) -> float:
    conc = disc = tx = ty = 0
    for i, j in combinations(range(len(x)), 2):
        a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        conc += a * b > 0
        disc += a * b < 0
        tx += a == 0 and b != 0
        ty += b == 0 and a != 0
    # ties in both count in neither denominator term's "untied" pairs
    both = sum(1 for i, j in combinations(range(len(x)), 2) if x[i] == x[j] and y[i] == y[j])
    n0 = len(x) * (len(x) - 1) / 2
    ties_x = tx + both
    ties_y = ty + both
    return (conc - disc) / math.sqrt((n0 - ties_x) * (n0 - ties_y))


def test_kendall_tau_b_on_known_examples():
    # scipy's documented example: tau-b = -0.47140452079103173
    x, y = [12, 2, 1, 12, 2], [1, 4, 7, 1, 0]
    assert diag.kendall_tau_b(x, y) == pytest.approx(-0.47140452079103173, abs=1e-12)
    # by hand: pairs of (1,2,3,4) vs (1,3,2,4): 5 concordant, 1 discordant -> 4/6
    assert diag.kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 30), rng.integers(0, 5, 30)
    assert diag.kendall_tau_b(a, b) == pytest.approx(kendall_by_pairs(a, b), abs=1e-12)
    assert diag.kendall_tau_b(a, b, chunk=7) == pytest.approx(diag.kendall_tau_b(a, b), abs=1e-12)


def test_trajectory_metrics_of_the_optimal_value_are_perfect():
    v_star = diag.optimal_values(np.arange(10, 0, -1), 0.99)
    assert v_star[-1] == pytest.approx(-1.0) and v_star[0] == pytest.approx(-(1 - 0.99 ** 10) / 0.01)
    m = diag.trajectory_metrics(v_star, 0.99)
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    assert m["increasing"] == 1.0 and m["mse"] == pytest.approx(0.0) and m["r2"] == pytest.approx(1.0)
    flipped = diag.trajectory_metrics(v_star[::-1], 0.99)
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["increasing"] == 0.0


def test_a_flat_or_nan_value_curve_is_not_read_as_a_rising_one():
    """A NaN took a top rank of its own (rho 0.2 for [1, nan, 3, 2], scipy: nan); a flat curve's NaN rho was left
    out of the mean over trajectories, which rose to 1.0 with nine rising curves beside it."""
    assert math.isnan(diag.spearman([1, np.nan, 3, 2], [1, 2, 3, 4])) and np.isnan(diag.rankdata([2, np.nan])).all()
    rising = diag.trajectory_metrics(np.linspace(-5.0, -1.0, 6), 0.99)
    flat = diag.trajectory_metrics(np.full(6, -3.0), 0.99)
    assert flat["spearman"] == flat["kendall"] == flat["pearson_vstar"] == 0.0 and flat["increasing"] == 0.0
    diverged = diag.trajectory_metrics(np.array([0.1, np.nan, np.nan, 0.4]), 0.99)
    assert all(math.isnan(v) for k, v in diverged.items() if k != "length")
    mean, _ = diag._summary([rising] * 9 + [flat])
    assert mean["spearman"] == pytest.approx(0.9)
    assert math.isnan(diag._summary([rising, diverged])[0]["spearman"])


def test_ridge_probe_recovers_a_linear_target_across_trajectories():
    rng = np.random.default_rng(0)
    w = rng.normal(size=5)
    feats = [rng.normal(size=(20, 5)) for _ in range(8)]
    targets = [f @ w + 3.0 for f in feats]
    res = diag.ridge_probe(feats, targets, train=[0, 1, 2, 3, 4, 5], test=[6, 7])
    assert res["r2"] > 0.99 and res["test_trajectories"] == 2
    with pytest.raises(ValueError, match="disjoint"):
        diag.ridge_probe(feats, targets, train=[0, 1], test=[1])


def test_ridge_dual_form_gives_the_primal_solution_when_features_outnumber_rows():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 40)), rng.normal(size=12)
    w, b = diag._ridge_fit(x, y, 0.5)  # 40 features > 12 rows: the dual branch
    primal = np.linalg.solve(x.T @ x + 0.5 * np.eye(40), x.T @ (y - y.mean()))
    assert b == pytest.approx(y.mean()) and np.allclose(w, primal, atol=1e-10)


class OrderProbeHeads(torch.nn.Module):
    """A fake value head whose value says which argument got which features: s + 10 g + 100 z (first dim)."""

    def forward(self, s, g, z):
        return (s[:, 0] + 10 * g[:, 0] + 100 * z[:, 0]).unsqueeze(0)


def test_values_to_goal_evaluates_v_of_state_goal_goal_and_the_negative_distance():
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 4.0]])  # two states, the goal last
    # V(s, g, g) with s = 1, 2 and g = z = 3: s + 10 * 3 + 100 * 3
    assert diag.values_to_goal(feats, OrderProbeHeads()).tolist() == [331.0, 332.0]
    assert np.allclose(diag.values_to_goal(feats, None), [-math.sqrt(4 + 16), -math.sqrt(1 + 16)])


def test_pixel_baseline_is_minus_the_distance_between_raw_frames():
    (entry,) = diag.load_entries([diag.PIXELS], None, torch.device("cpu"), "small_conv", 8, 0)
    assert entry.label == "pixels" and entry.heads is None and entry.image_size == 8
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    values = diag.values_to_goal(diag.embed(entry.encoder, frames, torch.device("cpu")), entry.heads)
    by_hand = [-np.sqrt((((frames[t].astype(np.float64) - frames[3]) / 255.0) ** 2).sum()) for t in range(3)]
    assert np.allclose(values, by_hand, atol=1e-5)


def test_clip_trajectories_of_a_video_folder(videos):
    trajs = diag.load_clip_trajectories(videos, SIZE, [1, 3])
    assert [t.name for t in trajs] == ["clip_00001.mp4", "clip_00003.mp4"]
    assert [len(t.frames) for t in trajs] == [22, 26] and trajs[0].task == "a square slides"
    assert trajs[0].frames.shape[1:] == (SIZE, SIZE, 3) and trajs[0].frames.dtype == np.uint8
    with pytest.raises(ValueError, match="fewer than 2 clips"):
        diag.load_clip_trajectories(videos, SIZE, [0])


def test_clip_trajectories_crop_or_stretch_as_the_encoder_was_trained(tmp_path):
    """A 2:1 clip whose left quarter is red: the centre crop drops the red, the stretch (data.stretch=true runs)
    keeps it; the diagnostic always cropped."""
    root = tmp_path / "wide"
    root.mkdir()
    frames = np.zeros((4, 32, 64, 3), np.uint8)
    frames[..., 2] = 220
    frames[:, :, :16] = (220, 0, 0)
    for name in ("a.mp4", "b.mp4"):
        write_mp4(root / name, frames, fps=10)
    (root / "manifest.csv").write_text("path,num_frames,text\na.mp4,4,x\nb.mp4,4,y\n")
    cropped = diag.load_clip_trajectories(root, 16)[0].frames
    stretched = diag.load_clip_trajectories(root, 16, center_crop=False)[0].frames
    assert cropped[0, :, :4, 0].mean() < 60 and stretched[0, :, :3, 0].mean() > 160


# ------------------------------------------------------------------------------------------------ diagnose CLI
def test_diagnose_end_to_end(videos, robot_hdf5, tmp_path, monkeypatch):
    import dataclasses
    import warnings

    enc = train(compose_cfg(f"data.path={videos}", "steps=2", "tensorboard=false", f"output_dir={tmp_path / 'icvf'}",
                            *TINY), tmp_path)
    out = tmp_path / "diag"
    args = ["--data", str(robot_hdf5), "--encoders", str(enc), "random", "--labels", "icvf", "random",
            "--image-size", str(SIZE), "--out", str(out), "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the encoder's size is the frames': no resize to warn about
        report = diag.run(diag.build_parser().parse_args(args))
    real = diag.read_info  # frames of another size than the encoder's: said (stage 2 would refuse the pair)
    monkeypatch.setattr(diag, "read_info", lambda p: dataclasses.replace(real(p), obs_specs={
        **real(p).obs_specs, "agentview_image": ((48, 48, 3), np.dtype(np.uint8))}))
    with pytest.warns(UserWarning, match=rf"encoder 'icvf' reads {SIZE} px frames; .* frames are 48x48 and are "
                                         rf"resized to {SIZE} px for it here \(stage 2 would refuse this pair"):
        diag.run(diag.build_parser().parse_args(args))
    assert (out / "values.png").stat().st_size > 0
    saved = json.loads((out / "diagnostics.json").read_text())
    assert set(saved["encoders"]) == {"icvf", "icvf:features", "random"}
    assert len(saved["trajectories"]) == 5  # the noisy episode is left out
    icvf = saved["encoders"]["icvf"]
    assert icvf["value"] == "icvf_value" and saved["encoders"]["random"]["value"] == "feature_distance"
    assert len(icvf["per_trajectory"]) == 5 and icvf["per_trajectory"][0]["length"] == 11  # 11 obs frames are states, the final next_obs is the goal
    assert -1.0 <= icvf["mean"]["spearman"] <= 1.0 and "r2" in icvf["probe"]
    assert report["encoders"]["random"]["steps"] == 0
    assert icvf["gamma"] == saved["gamma"] == 0.99  # V*'s discount: the one the value heads were trained with


def test_diagnose_answers_bad_input_in_one_line(robot_hdf5, tmp_path, capsys):
    """It answered with tracebacks (exit 1): too few clean trajectories without naming --all-episodes, a missing
    file."""
    args = ["--encoders", "pixels", "--image-size", str(SIZE), "--out", str(tmp_path / "d"), "--no-progress"]
    for data, extra, error in ((robot_hdf5, ["--max-trajectories", "1"], "1 trajectory(ies) selected, at least 2 are "
                                "needed (--max-trajectories narrow the selection); --all-episodes also uses the noisy"),
                               (robot_hdf5, ["--max-trajectories", "1", "--all-episodes"],
                                "1 trajectory(ies) selected, at least 2 are needed (--max-trajectories narrow the "
                                "selection)"),
                               (tmp_path / "missing.hdf5", [], "missing.hdf5: no such file or folder")):
        with pytest.raises(SystemExit) as exit_info:
            diag.main(["--data", str(data), *extra, *args])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and error in err, err
    for gamma, error in (("1.5", "argument --gamma: 1.5; expected a discount in (0, 1)"),
                         ("abc", "argument --gamma: 'abc' is not a number")):  # 1.5 was accepted
        with pytest.raises(SystemExit) as exit_info:
            diag.main(["--data", str(robot_hdf5), "--gamma", gamma, *args])
        assert exit_info.value.code == 2 and error in capsys.readouterr().err
    for share in ("0", "1.5"):  # both ran (a one-trajectory probe part)
        with pytest.raises(SystemExit) as exit_info:
            diag.main(["--data", str(robot_hdf5), "--probe-test-fraction", share, *args])
        assert exit_info.value.code == 2 and "expected a share in (0, 1)" in capsys.readouterr().err
    videos = tmp_path / "clips"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"")
    (videos / "clips.csv").write_text("path,num_frames,text\na.mp4,3,x\n")
    for data in (videos, videos / "a.mp4", videos / "clips.csv"):  # "format not recognised" / "corrupt?"
        with pytest.raises(SystemExit) as exit_info:
            diag.main(["--data", str(data), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "stage-1 video data; diagnose reads robot trajectories" in err, err
        assert "load_clip_trajectories" in err


def test_diagnose_labels_each_encoder_by_its_run_and_names_its_own_device_flag(robot_hdf5, tmp_path, monkeypatch):
    """The default label is the run folder's (an output= folder's own name): two outputs under one parent were both
    labelled by the parent and refused; a device CUDA cannot serve is refused naming --device (it said device=)."""
    assert diag.default_label("runs/s1") == diag.default_label("runs/s1/encoder") == "s1"
    assert diag.default_label("runs/enc_icvf") != diag.default_label("runs/enc_vip")
    assert diag.default_label("random") == "random"
    if torch.cuda.is_available():
        pytest.skip("the device refusal needs a machine without CUDA")
    with pytest.raises(ValueError, match=r"^--device 'cuda:99'.*use --device cpu") as err:  # it said device=cpu
        diag.run(diag.build_parser().parse_args(["--data", str(robot_hdf5), "--encoders", "pixels", "--device",
                                                 "cuda:99"]))
    assert "device=" not in str(err.value)


def test_diagnose_compares_icvf_values_with_the_discount_they_were_trained_with():
    def entry(label: str, gamma: float | None) -> diag.EncoderEntry:
        return diag.EncoderEntry(label, None, None, {} if gamma is None else {"gamma": gamma})

    assert diag.discount_for([entry("a", 0.9), entry("random", None)], None) == 0.9  # the encoder's own
    assert diag.discount_for([entry("random", None)], None) == 0.99
    with pytest.raises(ValueError, match="different discounts"):
        diag.discount_for([entry("a", 0.9), entry("b", 0.98)], None)
    with pytest.warns(UserWarning, match="'a' was trained with gamma 0.9"):
        assert diag.discount_for([entry("a", 0.9)], 0.99) == 0.99


def test_each_rank_resumes_leaving_out_the_clips_it_found_unreadable():
    """Stage 1 under data parallelism: every rank samples every clip with its own seed and finds its own bad clips;
    the checkpoint kept rank 0's only, so rank 1 sampled its bad clip again after a resume and left out rank 0's
    from the start (a reviewer's finding). Another process count takes every rank's."""
    from video_pretrain.train import rank_unreadable

    saved = [[4], [7, 2]]
    assert rank_unreadable(saved, 0, 2) == [4] and rank_unreadable(saved, 1, 2) == [2, 7]
    assert rank_unreadable(saved, 0, 1) == [2, 4, 7] == rank_unreadable(saved, 2, 3)
    assert rank_unreadable([], 0, 1) == []
