"""Atomic writes of files and folders, with the modes a plain ``open()`` / ``mkdir()`` would give them.

Every checkpoint, encoder and JSON record is written under a temporary name in its destination folder and renamed
into place, so a killed process leaves the old version or the new one, never half of one. ``tempfile`` makes its
files 0600 and folders 0700 (owner only) whatever the umask; renamed into place they kept that mode, and the other
users of a shared runs folder could not read a checkpoint. Here the temporary file or folder gets the usual mode
(0666 / 0777 less the process umask) when it is made.

:func:`run_folder_lock` keeps a second process from writing a run folder that one is writing now (the same command
started twice, or rerun while a killed torchrun's workers still train): both resumed the same checkpoint and logged
the same steps twice.

:func:`torch_save` is ``torch.save`` whose failure for want of disk space says so (torch reports it as "unexpected
pos ...").

:func:`standard_json` writes non-finite floats as the strings ``"Infinity"``, ``"-Infinity"``, ``"NaN"`` (Python's
``json`` writes them as bare tokens, which jq, JavaScript and Go refuse); :func:`from_standard_json` reads them back.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import socket
import time
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc/self/status``); elsewhere read by
    setting and restoring it (not thread-safe for that instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode ``open()`` (a file: 0666) or ``mkdir()`` (a folder: 0777) would, less the umask."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~current_umask())


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (its parent is made); on a normal exit it replaces ``path``, on an
    exception it is removed. The file has the usual mode (:func:`usual_mode`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        usual_mode(tmp)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def torch_load_problem(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, on one line: ``"cannot be read (<why>)"`` for the file
    system's errors (gone, a folder, no permission), else ``"unreadable (corrupt, ...): <reason>"``. PyTorch's
    message for a pickle it refuses advises ``weights_only=False`` and filing an issue, no cure for a corrupt or
    foreign file (the toolkit writes only what the safe loader reads), so only its reason is kept; a long reason is
    cut at a word, with ``...``."""
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror or exc})"
    text = str(exc)
    if "deserialize object on a CUDA device" in text:  # saved on a GPU, loaded without one and no map_location
        return f"cannot be loaded here ({' '.join(text.split('.')[0].split())})"
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation of torch.load", 1)[0]
    reason = " ".join(text.split()) or type(exc).__name__
    if len(reason) > 300:
        reason = reason[:300].rsplit(" ", 1)[0] + " ..."
    return f"unreadable (corrupt, truncated, or not a file the toolkit wrote): {reason}"


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``; a write that fails for want of disk space (torch's zip writer says only
    ``[enforce fail at inline_container.cc] . unexpected pos N vs M``, naming neither the file nor the cause) raises
    ``OSError(ENOSPC)`` naming the file and the space left. Other errors propagate as they are."""
    import torch

    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        try:
            free = shutil.disk_usage(Path(path).parent).free
        except OSError:
            free = None
        text = " ".join(str(exc).split())
        if "unexpected pos" not in text and "file write failed" not in text and (free is None or free >= 2**20):
            raise
        left = "" if free is None else f"{free / 2**20:.1f} MiB free there; "
        raise OSError(errno.ENOSPC, f"No space left on device while writing {path} ({left}torch: {text[:160]})"
                      ) from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_file(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``default``: as :func:`json.dumps`'s); returns ``path``."""
    write_text_atomic(path, json.dumps(obj, indent=indent, default=default))
    return Path(path)


NON_FINITE_NAMES = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def standard_json(obj: Any) -> Any:
    """``obj`` (dicts, lists, tuples, scalars) with each non-finite float replaced by its name in
    :data:`NON_FINITE_NAMES`, so ``json.dumps(..., allow_nan=False)`` writes standard JSON (a checkpoint's recorded
    ``cql_clip_diff_max: inf`` made meta.json unreadable to jq); :func:`from_standard_json` reverses it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: standard_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [standard_json(v) for v in obj]
    return obj


def from_standard_json(obj: Any) -> Any:
    """:func:`standard_json`'s input again: the strings ``"Infinity"``, ``"-Infinity"``, ``"NaN"`` as floats."""
    if isinstance(obj, str):
        return NON_FINITE_NAMES.get(obj, obj)
    if isinstance(obj, dict):
        return {k: from_standard_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_standard_json(v) for v in obj]
    return obj


def temp_folder(final: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new empty folder beside ``final`` (hidden, named after it) with the usual mode: where a folder is filled
    before :func:`replace_folder` renames it into place. The caller removes it on failure."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix))
    usual_mode(tmp)
    return tmp


def remove_leftovers(final: str | os.PathLike) -> list[str]:
    """Remove the temporary files and folders an atomic write of ``final`` (:func:`atomic_file`,
    :func:`temp_folder`) left beside it when its process was killed mid-write: ``.<name>.*.tmp`` and
    ``.<name>.*.stage`` (never ``.old``, which may hold the only copy of a folder :func:`replace_folder` was
    replacing). Call it only while holding the run folder (:func:`run_folder_lock`). Returns the names removed."""
    final = Path(final)
    removed = []
    for leftover in final.parent.glob(f".{final.name}.*"):
        if leftover.suffix in (".tmp", ".stage"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            removed.append(leftover.name)
    return removed


def check_replaceable(final: str | os.PathLike, replaceable: Callable[[Path], bool] = lambda _: True,
                      kind: str = "such a folder") -> None:
    """Raise :func:`replace_folder`'s :class:`FileExistsError` now when it would refuse ``final`` later (a run checks
    its output place before it trains, not after)."""
    final = Path(final)
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not replaceable(final))):
        raise FileExistsError(f"{final}: exists and is not {kind}; refusing to replace it")


def replace_folder(staged: str | os.PathLike, final: str | os.PathLike,
                   replaceable: Callable[[Path], bool] = lambda _: True, kind: str = "such a folder") -> None:
    """Rename the complete folder ``staged`` to ``final``. An existing ``final`` is moved aside first and removed
    after; one that is not a folder, or a non-empty folder ``replaceable`` refuses, raises :class:`FileExistsError`
    ("exists and is not ``kind``") and is left as it is."""
    staged, final = Path(staged), Path(final)
    if not final.exists():
        os.replace(staged, final)
        return
    check_replaceable(final, replaceable, kind)
    aside = temp_folder(final, suffix=".old")
    os.replace(final, aside / final.name)
    os.replace(staged, final)
    shutil.rmtree(aside, ignore_errors=True)


def sha256_of(path: str | os.PathLike, block: int = 4 * 2**20, stop: threading.Event | None = None) -> str:
    """SHA-256 (hex) of the whole file at ``path``, read in ``block``-byte pieces (1.1 s per GB from the page cache
    on a 2-core AMD EPYC with the SHA instructions, under load). ``stop`` (hashing in a thread): once set, raises
    :class:`InterruptedError` before the next piece, so whoever waits for the thread does not wait for the rest."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(block), b""):
            if stop is not None and stop.is_set():
                raise InterruptedError(f"hashing {path} stopped")
            digest.update(piece)
    return digest.hexdigest()


LOCK_FILE = ".writer.lock"  # hidden: run fingerprints and listings leave it out


class RunFolderBusy(ValueError):
    """Another live process holds the run folder's lock (:func:`run_folder_lock`)."""


def _lock_or_refuse(fd: int, folder: Path, resumes: bool, what: str | None) -> None:
    """Take the writer lock on the open lock file ``fd``, or raise :class:`RunFolderBusy` naming its holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "a process"
        then = "it resumes" if resumes else "it starts over, replacing that run's results"
        raise RunFolderBusy(f"{what or folder}: another process is writing "
                            f"{'this run folder' if what is None else 'it'} now ({holder}); wait for it to "
                            f"end (rerun the command then: {then}), stop it, or give another output folder"
                            ) from None


def refuse_busy_folder(folder: str | os.PathLike, resumes: bool = True) -> None:
    """Raise :class:`RunFolderBusy` when another process holds ``folder``'s writer lock now (what
    :func:`run_folder_lock` would say), without making the folder or keeping the lock: for the checks that act
    before the lock is taken (the pipeline's probe step of a target's env moves a real robot), so a second command
    in a busy folder is refused before them. The lock itself still decides: a process starting in between is
    refused there."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)  # (NFS emulates an exclusive flock with a lock that needs write access)
    except OSError:  # no lock file (a new folder), or none writable: the lock's own attempt will say
        return
    try:
        _lock_or_refuse(fd, Path(folder), resumes, None)
    except OSError:  # a filesystem without flock (not the holder's refusal, RunFolderBusy): the lock decides
        return
    finally:
        os.close(fd)  # (releases the lock this check took)


@contextmanager
def run_folder_lock(folder: str | os.PathLike, active: bool = True, resumes: bool = True, lock_name: str = LOCK_FILE,
                    what: str | None = None) -> Iterator[None]:
    """Hold ``folder``'s writer lock (an advisory ``flock`` on ``folder/.writer.lock``, made with the folder when
    missing) for the ``with`` block; the lock file says who holds it. The operating system releases the lock when the
    holder exits, however it ends (a kill included), so a rerun after a crash is never refused. ``active=False``
    (the ranks of a data-parallel run other than 0, which do not write) does nothing. ``resumes``: whether a rerun
    of the command continues the run (said in the refusal; an evaluation starts over). ``lock_name``: the lock
    file's name in ``folder``; ``what``: the output it guards, when not the folder itself (a stage-1 encoder written
    outside its run folder: ``folder`` is then the encoder's parent, ``lock_name`` one of the encoder's own).

    Raises:
        RunFolderBusy: another process holds it now: its pid, host and start are named, with what to do.
    """
    if not active:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / lock_name, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
    try:
        _lock_or_refuse(fd, folder, resumes, what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
