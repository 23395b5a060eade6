"""One writer per run folder (robopretrain.files.run_folder_lock): the same stage started twice on one output_dir
both resumed its checkpoint and logged steps 1000-1500 twice; a torchrun killed and rerun at once did the same with
the killed launcher's workers still training."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robopretrain.files import LOCK_FILE, RunFolderBusy, run_folder_lock

REPO = Path(__file__).resolve().parents[1]


def holding(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s writer lock (for 60 s, or until killed), once it says so."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\n"
        "from robopretrain.files import run_folder_lock\n"
        f"with run_folder_lock({str(folder)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_holder_is_refused_naming_the_first_and_the_lock_ends_with_its_holder(tmp_path):
    holder = holding(tmp_path / "run")
    try:
        with pytest.raises(RunFolderBusy, match=rf"{tmp_path / 'run'}: another process is writing this run folder now "
                                                rf"\(pid {holder.pid} on .*, since .*\); wait for it to end"):
            with run_folder_lock(tmp_path / "run"):
                pass
        with run_folder_lock(tmp_path / "run", active=False):  # a data-parallel rank other than 0: no lock
            pass
    finally:
        holder.kill()  # however the holder ends (SIGKILL here), the operating system releases its lock
        holder.wait()
    for _ in range(50):
        try:
            with run_folder_lock(tmp_path / "run"):
                break
        except RunFolderBusy:
            time.sleep(0.1)
    else:
        pytest.fail("the lock outlived its holder")
    assert (tmp_path / "run" / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    with run_folder_lock(tmp_path / "run"):  # released at the end of the block: taken again in the same process
        pass


def test_the_pipeline_is_refused_in_a_busy_folder_before_its_targets_checks_step_their_envs(tmp_path, monkeypatch):
    """The pipeline's start checks (a probe step of each target's env: a robot moves; foreign demos converted) ran
    before its run-folder lock, so a second pipeline in a busy folder stepped the target before being refused (a
    reviewer's finding). A free folder's check keeps no lock, and a missing folder is not made."""
    import robopretrain.pipeline as pipeline
    from robopretrain.build import compose
    from robopretrain.files import refuse_busy_folder

    checked = []
    monkeypatch.setattr(pipeline, "check_targets", lambda cfg: checked.append(cfg))
    refuse_busy_folder(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    holder = holding(tmp_path / "run")
    try:
        with pytest.raises(RunFolderBusy, match=rf"pid {holder.pid} on"):
            pipeline.run_pipeline(compose("pipeline"), tmp_path / "run")
        assert checked == []
    finally:
        holder.kill()
        holder.wait()
    for _ in range(50):
        try:
            refuse_busy_folder(tmp_path / "run")
            break
        except RunFolderBusy:
            time.sleep(0.1)
    with run_folder_lock(tmp_path / "run"):  # the check let go of the lock it took
        pass
    import errno

    import robopretrain.files as files

    def no_locks(fd, op):  # a filesystem without flock (NFS without lockd): the check leaves it to the lock itself
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    refuse_busy_folder(tmp_path / "run")


class _Refuse:
    """A run_folder_lock that records the folder it is asked for and refuses, as if another process held it."""

    held: list[Path] = []

    def __init__(self, folder, active=True):
        _Refuse.held.append(Path(folder))

    def __enter__(self):
        raise RunFolderBusy("busy")

    def __exit__(self, *exc):
        return False


def test_every_stage_and_the_pipeline_hold_the_folder_they_write(tmp_path, monkeypatch):
    """Each entry point's work runs under the lock of its own run folder (a second run is one error line)."""
    import finetune.train as stage3
    import robopretrain.pipeline as pipeline
    import robopretrain.train as stage2
    import video_pretrain.train as stage1
    from robopretrain.build import compose
    from robopretrain.cli import known_errors

    for module in (stage1, stage2, stage3, pipeline):
        monkeypatch.setattr(module, "run_folder_lock", _Refuse)
    _Refuse.held.clear()
    runs = [
        lambda: stage2.run(compose("robopretrain"), tmp_path / "s2"),
        lambda: stage1.train(compose("video_pretrain", overrides={"output_dir": str(tmp_path / "s1")}), tmp_path / "s1"),
        lambda: stage3.run(compose("finetune", overrides={"checkpoint": str(tmp_path / "none")}), tmp_path / "s3"),
        lambda: pipeline.run_pipeline(compose("pipeline"), tmp_path / "p"),
    ]
    for run in runs:
        with pytest.raises(RunFolderBusy):
            run()
    assert _Refuse.held == [tmp_path / "s2", tmp_path / "s1", tmp_path / "s3", tmp_path / "p"]
    assert issubclass(RunFolderBusy, known_errors())  # one error line, exit code 2
