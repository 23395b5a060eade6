"""Atomic writes keep the usual file modes (a shared runs folder's other users can read checkpoints) and leave no
partial file behind."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from robopretrain import files


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_the_process_umask(umask_022) -> None:
    assert files.current_umask() == 0o022
    os.umask(0o027)
    assert files.current_umask() == 0o027


def test_checkpoints_encoders_and_records_get_the_usual_modes(tmp_path: Path, umask_022) -> None:
    """tempfile made them 0600 / 0700, kept by the rename into place."""
    from robopretrain.checkpoint import save_checkpoint
    from robopretrain.nets.encoder_io import save_encoder
    from robopretrain.nets.encoders import make_encoder
    from sim_envs.video_writer import write_frame_folder

    ckpt = save_checkpoint(tmp_path / "ckpts", 5, {"a": 1}, {"w": torch.zeros(2)}, {"m": 1})
    assert mode(ckpt) == 0o755 and {mode(p) for p in ckpt.iterdir()} == {0o644}
    assert mode(tmp_path / "ckpts" / "latest") == 0o644
    enc = save_encoder(tmp_path / "encoder", make_encoder("small_conv", image_size=16, channels=4, out_dim=8),
                       "small_conv", {"x": 1})
    assert mode(enc) == 0o755 and {mode(p) for p in enc.iterdir()} == {0o644}
    files.write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert mode(tmp_path / "r.json") == 0o644
    write_frame_folder(tmp_path / "clip", [np.zeros((4, 4, 3), np.uint8)])
    assert mode(tmp_path / "clip") == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    files.write_text_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_replace_folder_replaces_only_what_it_may(tmp_path: Path) -> None:
    final = tmp_path / "enc"
    for text in ("one", "two"):
        staged = files.temp_folder(final)
        (staged / "meta.json").write_text(text)
        files.replace_folder(staged, final, lambda f: (f / "meta.json").is_file())
    assert (final / "meta.json").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    staged = files.temp_folder(other)
    with pytest.raises(FileExistsError, match="exists and is not an encoder checkpoint"):
        files.replace_folder(staged, other, lambda f: (f / "meta.json").is_file(), kind="an encoder checkpoint")
    assert (other / "notes.txt").read_text() == "keep"


def test_a_full_disk_is_said_as_such_by_torch_save(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as "[enforce fail at inline_container.cc:672] . unexpected pos N vs M",
    naming neither the file nor the cause (a traceback at a checkpoint, in a new user's disk-full run)."""
    import errno

    import torch

    from robopretrain.files import torch_save

    torch_save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.load(tmp_path / "ok.pt")["w"].tolist() == [1.0, 1.0]

    def full(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1021312 vs 1021200")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as exc:
        torch_save({}, tmp_path / "w.pt")
    assert exc.value.errno == errno.ENOSPC and "No space left on device while writing" in str(exc.value)
    assert str(tmp_path / "w.pt") in str(exc.value)

    def other(obj, path):
        raise RuntimeError("cannot pickle this")

    monkeypatch.setattr(torch, "save", other)
    with pytest.raises(RuntimeError, match="cannot pickle this"):  # not a disk problem: as it was
        torch_save({}, tmp_path / "w.pt")


@pytest.mark.parametrize("code, said", [(28, "No space left on device"), (30, "Read-only file system"),
                                        (13, "Permission denied")])
def test_a_storage_refusal_is_one_line_and_other_os_errors_keep_their_traceback(capsys, monkeypatch, code, said):
    import os

    from robopretrain.cli import EXIT_BAD_INPUT, friendly_errors

    monkeypatch.delenv("ROBOPRETRAIN_TRACEBACK", raising=False)

    @friendly_errors
    def refused() -> None:
        raise OSError(code, os.strerror(code), "/runs/x/checkpoints/.tmp")

    with pytest.raises(SystemExit) as exit_info:
        refused()
    err = capsys.readouterr().err
    assert exit_info.value.code == EXIT_BAD_INPUT and err.count("\n") == 1 and said in err and "/runs/x" in err

    @friendly_errors
    def bug() -> None:
        raise OSError(9, "Bad file descriptor")  # a bug, not the machine's storage

    with pytest.raises(OSError, match="Bad file descriptor"):
        bug()


def test_an_unwritable_run_folder_is_named_before_hydra_opens_its_log(tmp_path, monkeypatch, capsys):
    """A read-only run folder failed in Hydra's logging set-up with a traceback ("Unable to configure handler
    'file'") before any of the toolkit's code ran."""
    import errno
    import tempfile

    from robopretrain.cli import unwritable_folder

    assert unwritable_folder(str(tmp_path / "new" / "run")) is None  # made later, under a writable folder
    (tmp_path / "file").write_text("")
    assert unwritable_folder(str(tmp_path / "file" / "run")) == f"{tmp_path / 'file'} is not a folder"

    made = tempfile.TemporaryFile

    class FullDisk:  # a full disk makes the empty file and refuses its bytes (Hydra's record failed, exit 1)
        def __init__(self, **kwargs):
            self.f = made(**kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.data = data

        def flush(self):
            if self.data:
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", FullDisk)
    assert unwritable_folder(str(tmp_path)) == f"cannot write in {tmp_path} (No space left on device)"

    def read_only(**kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    assert unwritable_folder(f"'{tmp_path}/run'") == f"cannot write in {tmp_path} (Read-only file system)"
    # no run folder given, run from a read-only working folder: Hydra's outputs/ there failed with a traceback
    from robopretrain.cli import run_hydra

    monkeypatch.chdir(tmp_path)
    for name, setting in (("robopretrain", "output_dir"), ("collect", "hydra.run.dir")):
        with pytest.raises(SystemExit) as stop:
            run_hydra(lambda: pytest.fail("Hydra ran"), name, ["seed=1"])
        assert stop.value.code == 2
        assert f"cannot write in {tmp_path} (Read-only file system): Hydra writes its log and config record under " \
            f"outputs/ in the working folder; run from a writable folder, or set {setting}=" in capsys.readouterr().err
    printed = []  # --cfg job prints the config and writes nothing: not refused
    run_hydra(lambda: printed.append(1), "robopretrain", ["--cfg", "job", "seed=1"])
    assert printed == [1]


def test_a_file_torch_cannot_load_is_named_on_one_line_with_the_reason_alone(tmp_path):
    """PyTorch's message for a pickle its safe loader refuses advises weights_only=False and filing an issue, over
    lines: no cure for a corrupt file (new users' findings, for checkpoints, stage 1's training checkpoint and a
    reward model). The file system's errors are named as such, not as corruption; a long reason is cut at a word."""
    def problem(path, **kw):
        try:
            torch.load(path, weights_only=True, **kw)
        except Exception as exc:  # noqa: BLE001
            return files.torch_load_problem(exc)
        raise AssertionError("loaded")

    (tmp_path / "text.pt").write_text("garbage\n")
    said = problem(tmp_path / "text.pt")
    assert said == "unreadable (corrupt, truncated, or not a file the toolkit wrote): Unsupported operand 103"
    assert problem(tmp_path / "missing.pt") == "cannot be read (No such file or directory)"
    assert problem(tmp_path) == "cannot be read (Is a directory)"
    torch.save({"w": torch.zeros(3)}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:40])
    cut = problem(tmp_path / "cut.pt")
    assert cut.startswith("unreadable (corrupt, truncated") and "\n" not in cut
    head = "unreadable (corrupt, truncated, or not a file the toolkit wrote): "
    assert cut.endswith(" ...") and len(cut) <= len(head) + 300 + 4  # PyTorch's zip message runs to 400 characters
