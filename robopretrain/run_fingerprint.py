"""Fingerprints of a run's inputs, so that a rerun into an existing run folder resumes only the same run.

A run folder's checkpoint says where training stopped; resuming it is right only if the rerun would go on
computing the same thing: the same data and the same settings. A fingerprint records both when a checkpoint is
written; the rerun compares its own and refuses, naming what changed, instead of continuing silently on
other data (another folder, a manifest edited to the same size, a regenerated file) or another config.

API (plain, JSON-able dicts; store ``json.dumps(fp)`` next to the weights and compare on resume)::

    fp = fingerprint(cfg, {"data": data_path}, ignore=HARMLESS_KEYS + ("steps",))
    ...save fp with the checkpoint...
    check_resume(saved_fp, fp, where=checkpoint_path)   # raises ResumeMismatchError (a ValueError) naming changes

- :func:`fingerprint` ``(config, inputs, ignore=HARMLESS_KEYS, only=None)``: ``config`` is a mapping (an
  OmegaConf ``DictConfig`` is resolved) flattened to dotted keys, minus the keys in ``ignore``; ``inputs`` maps a
  name to each file or folder the run reads; ``only`` maps an input name to the paths in its folder the run reads.
  Returns ``{"version", "config", "ignored", "inputs"}`` (``ignored``: the ``ignore`` list, so a setting a newer
  toolkit ignores is no change against a checkpoint that recorded it).
- :func:`input_fingerprint` ``(path, only=None)``: a file: size, modification and change times, device and inode,
  and a SHA-256 of its content (all of it up to 16 MiB, else its first and last MiB); a folder: file count, total
  size, a SHA-256 of the listing (each file's relative path, size and modification time, hidden files aside) and the
  SHA-256 of the content of every small (<= 1 MiB) top-level file, e.g. ``manifest.csv``; a folder of at most 64 MiB
  and 2000 files (a checkpoint) also a SHA-256 of every file's content, which then decides instead of the listing's
  times. Reading a folder of many clips costs one ``stat`` per file, no decoding. ``only`` (paths relative to the
  folder, files or folders taken whole) leaves every other file out: stage 1 gives a video folder's manifest and
  clips, so notes or a contact sheet added beside them do not stop a resume.
- :func:`differences` ``(saved, now)``: what changed, as short phrases (``"lr: 0.0003 -> 0.001"``,
  ``"data: manifest.csv content changed"``); empty when the run may resume. A file's content decides, not its
  modification time (a copy, or a rewrite of the same bytes, resumes; a file over 16 MiB whose times changed but whose
  size and sampled bytes did not resumes with a warning, also the same file (inode) edited with its modification time
  set back: its change time moved; a folder's files are compared by modification time only); a path setting naming
  the same file through a symlink is no change. A run folder moved or copied elsewhere resumes
  (:func:`relocation`): a fingerprint built with ``home=`` (the output folder, or the pipeline run folder holding
  it: :func:`run_home`) maps the paths under the old home, in inputs and in config values, to the new one; inputs
  outside it must stay where they were, unless the folder above the home moved with it (``runs/a/s3 ->
  runs/b/s3``, :func:`moved_along`) and the input is there with its content unchanged (a stage-2 run moved with
  the stage-3 run it started), which also holds for the config value naming it.
- :func:`check_resume` ``(saved, now, where, fresh=...)``: raises :class:`ResumeMismatchError` with one line
  (where, what changed, how to start fresh); a checkpoint written before fingerprints existed (``saved`` is
  ``None``) resumes with a warning.
- :func:`added_off_keys` ``(saved, now)``: settings the checkpoint does not have whose value now is off
  (``false``, ``null``, ``"none"``, empty), is the one :data:`ADDED_AS_BEFORE` names as what the toolkit did
  before the setting existed (``data.format: auto``, ``algo.actor_bc_weight: 0``; a target's field: its default), or
  lies under a section switched off (``transfer.dann.coef`` with ``transfer.dann.enabled: false``): options a toolkit
  upgrade added since the checkpoint was written, so the run computes what it did before. They do not block a resume
  (:func:`check_resume` warns, naming them); an added setting that is on (``train.cuda_graph: (unset) -> true``) is
  a difference like any other.

``ignore`` entries without a dot match a key's last part anywhere (``progress`` matches ``train.progress``);
dotted entries match that key and everything under it (``data.max_cache_mb``, ``hydra``).
:data:`HARMLESS_KEYS` are the settings that do not change what is computed: logging, progress, where
outputs go, workers and threads (up to floating-point summation order), the device (its random draws differ),
whether updates replay a CUDA graph or compile their losses (the same update, measured equal to eager), resume
itself, checkpoint spacing (but stage 3 with several envs: ``finetune.train.resumable_changes``). A stage adds its own
(stage 1: the step count, which a resumed run may raise).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, Collection, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

VERSION = 1
HARMLESS_KEYS: tuple[str, ...] = ("progress", "tensorboard", "wandb", "logger", "log_every", "eval_every",
                                  "checkpoint_every", "num_workers", "num_threads", "flush_denormal", "device",
                                  "resume", "output_dir", "output", "run_root", "hydra", "cache_dir", "cuda_graph",
                                  "compile", "probe_step")  # (a target's start check, in an env of its own)
FULL_HASH_BYTES = 16 * 2**20  # files up to this size are hashed whole, larger ones by their first and last MiB
SAMPLE_BYTES = 2**20
SMALL_FILE_BYTES = 2**20  # top-level files of a folder hashed by content (manifests, info files)
FOLDER_CONTENT_BYTES = 64 * 2**20  # folders up to this size and file count (checkpoints) are hashed by content
FOLDER_CONTENT_FILES = 2000
MAX_LISTED = 6  # differences named in one message


class ResumeRefusal(Exception):
    """A rerun's refusal to resume a run folder's checkpoint: ``where`` (the checkpoint), ``changes`` (what differs,
    as one phrase) and ``fresh`` (how to start fresh); a caller that starts runs its own way (the pipeline) restates
    the advice with :meth:`advising`. Mixed into :class:`ResumeMismatchError` and
    :class:`robopretrain.checkpoint.CheckpointMismatchError`, which word the message (:meth:`text`)."""

    def __init__(self, where: str | os.PathLike, changes: str, fresh: str) -> None:
        self.where, self.changes, self.fresh = str(where), changes, fresh
        super().__init__(self.text())

    def text(self) -> str:
        """The message (the subclasses word it for their kind of checkpoint)."""
        return f"{self.where}: cannot resume ({self.changes}); {self.fresh}"

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        # rebuilt from its three arguments when it crosses a process boundary: pickle's default passes the message
        # alone, so a refusal raised in a multiprocessing worker killed the pool's result thread (its caller hung)
        return type(self), (self.where, self.changes, self.fresh)

    def advising(self, fresh: str) -> "ResumeRefusal":
        """The same refusal with another way to start fresh."""
        return type(self)(self.where, self.changes, fresh)


class ResumeMismatchError(ResumeRefusal, ValueError):
    """A run folder's checkpoint was written with other inputs or settings than the rerun's."""

    def text(self) -> str:
        return (f"{self.where}: cannot resume, it was written by a run with other settings or data ({self.changes}); "
                f"{self.fresh}")


# --------------------------------------------------------------------------------------------- building
def fingerprint(config: Any, inputs: Mapping[str, str | os.PathLike | None],
                ignore: Iterable[str] = HARMLESS_KEYS, home: str | os.PathLike | None = None,
                only: Mapping[str, Collection[str]] | None = None,
                derived: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fingerprint of a run: its config (dotted keys, minus ``ignore``), each input path's fingerprint and
    ``home``, the folder the run lives in (its output folder, or the pipeline run folder holding it), absolute as
    given and with symlinks resolved, from which a later comparison tells a moved run folder (:func:`relocation`).
    ``only``: input name -> the paths in that folder the run reads (:func:`input_fingerprint`). ``derived``: what
    the run computed from its config and inputs that no setting names (the units its demos are read in, from a
    target's declaration), compared as settings are, under their phrases; a None value is left out, so a run
    written before the value was computed resumes where it is None now and is refused where it is not."""
    only, ignore = only or {}, tuple(ignore)
    settings = {**flat_config(config, ignore),
                **{name: json.loads(json.dumps(value, default=str)) for name, value in (derived or {}).items()
                   if value is not None}}
    out = {"version": VERSION, "config": settings, "ignored": list(ignore),
           "inputs": {name: input_fingerprint(p, only.get(name)) if p is not None else None
                      for name, p in inputs.items()}}
    if home is None:
        return out
    given = Path(home).expanduser()
    return {**out, "home": os.path.abspath(given), "home_resolved": str(given.resolve())}


def run_home(config: Any, output_dir: str | os.PathLike) -> Path:
    """The ``home`` of a stage run's fingerprint: the config's ``run_root`` (the pipeline run folder holding it),
    else its own ``output_dir``."""
    root = config.get("run_root") if isinstance(config, Mapping) or hasattr(config, "get") else None
    return Path(root) if root else Path(output_dir)


def flat_config(config: Any, ignore: Iterable[str] = HARMLESS_KEYS) -> dict[str, Any]:
    """``config`` as {dotted key: JSON-able value}, without the ignored keys."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    ignore = tuple(ignore)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif not _ignored(prefix, ignore):
            out[prefix] = _absolute_paths(json.loads(json.dumps(node, default=str)))

    walk(config, "")
    return dict(sorted(out.items()))


def _absolute_paths(value: Any) -> Any:
    """``value`` with each relative path string that names an existing file or folder (it has a ``/`` or a suffix)
    made absolute: the same file named from another working folder (``demos.hdf5`` / ``../demos.hdf5``) is one
    setting, and a file inside a moved run folder maps with it (:func:`relocation`)."""
    if isinstance(value, list):
        return [_absolute_paths(v) for v in value]
    if (isinstance(value, str) and value and not os.path.isabs(value) and (os.sep in value or Path(value).suffix)
            and os.path.exists(value)):
        return os.path.abspath(value)
    return value


def _ignored(key: str, ignore: tuple[str, ...]) -> bool:
    parts = key.split(".")
    return any(key == p or key.startswith(p + ".") or ("." not in p and p in parts) for p in ignore)


def _sha256_of_file(path: Path, size: int) -> tuple[str, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(SAMPLE_BYTES), b""):
                digest.update(block)
            return digest.hexdigest(), "all"
        digest.update(f.read(SAMPLE_BYTES))
        f.seek(size - SAMPLE_BYTES)
        digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest(), "first and last MiB"


def input_fingerprint(path: str | os.PathLike, only: Collection[str] | None = None) -> dict[str, Any]:
    """Size, modification time and content hash of a file, or the listing and small files of a folder. ``only``:
    for a folder, the paths relative to it that the run reads (files, or folders taken whole: a video folder's
    manifest and clips), so a file added beside them (notes, an inspection's contact sheet) is no change; None:
    every file. Linked folders inside a folder are listed as the files they hold (a dataset whose ``videos/`` links
    to another disk changes when they do); a link back to a folder above it is left out."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        st = p.stat()
        sha, hashed = _sha256_of_file(p, st.st_size)
        return {"path": str(p), "kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "ctime_ns": st.st_ctime_ns, "inode": [st.st_dev, st.st_ino], "sha256": sha, "hashed": hashed}
    if p.is_dir():
        found: list[tuple[str, Path, int, bool, int]] = []  # (relative path, file, size, under a link, mtime)
        # per folder listed: whether it is reached through a linked folder, and the real folders above it, the data
        # folder's own included (a link to one of those is a loop, left out; a link elsewhere, even into this folder,
        # is listed where it lies)
        above = frozenset(os.path.realpath(f) for f in (p, *p.parents))  # a link up to one of them walks it all
        walked: dict[str, tuple[bool, frozenset[str]]] = {str(p): (False, above)}
        for root, dirs, names in os.walk(p, followlinks=True):
            under_link, chain = walked[root]
            kept = []
            for d in sorted(d for d in dirs if not d.startswith(".")):
                full = os.path.join(root, d)
                real = os.path.realpath(full)
                if real not in chain:
                    walked[full] = (under_link or os.path.islink(full), chain | {real})
                    kept.append(d)
            dirs[:] = kept
            for name in sorted(n for n in names if not n.startswith(".")):
                f = Path(root) / name
                try:
                    st = f.stat()
                except OSError:  # vanished while listing, or a broken link
                    continue
                rel = f.relative_to(p).as_posix()
                found.append((rel, f, st.st_size, under_link, st.st_mtime_ns))
        wanted = None if only is None else frozenset(PurePosixPath(o).as_posix() for o in only)  # once: per file
        chosen = found if wanted is None else [x for x in found if _is_selected(x[0], wanted)]  # it was clips x files
        out = {**_folder_summary(p, chosen), "links": "followed"}
        if any(link for *_, link, _ in chosen):  # what a fingerprint written before links were followed would say
            out["unlinked"] = _folder_summary(p, [x for x in chosen if not x[3]])
        if only is not None:  # what one written before ``only`` existed would say: every file
            out["only"] = sorted(only)
            out["every_file"] = {**_folder_summary(p, found), "links": "followed"}
        return out
    return {"path": str(p), "kind": "missing"}


def _folder_summary(p: Path, found: Sequence[tuple[str, Path, int, bool, int]]) -> dict[str, Any]:
    """A folder's fingerprint from its listed files ``(relative path, path, size, under a linked folder, mtime)``:
    count, bytes, the listing's hash, the top level's small files by content, and every file's content when the
    folder is small (a checkpoint folder)."""
    listing = hashlib.sha256()
    small: dict[str, str] = {}
    for rel, f, size, _, mtime in found:
        listing.update(f"{rel}\t{size}\t{mtime}\n".encode())
        if f.parent == p and size <= SMALL_FILE_BYTES:
            small[rel] = _sha256_of_file(f, size)[0]
    total = sum(size for _, _, size, _, _ in found)
    out = {"path": str(p), "kind": "folder", "files": len(found), "bytes": total,
           "listing_sha256": listing.hexdigest(), "small_files_sha256": small}
    if total <= FOLDER_CONTENT_BYTES and len(found) <= FOLDER_CONTENT_FILES:  # a checkpoint folder: by content
        content = hashlib.sha256()
        for rel, f, size, _, _ in found:
            content.update(f"{rel}\t{_sha256_of_file(f, size)[0]}\n".encode())
        out["content_sha256"] = content.hexdigest()
    return out


def _is_selected(rel: str, wanted: frozenset[str]) -> bool:
    """Whether the relative path ``rel`` is in ``wanted`` (POSIX relative paths) or under a folder it names."""
    return rel in wanted or any(parent.as_posix() in wanted for parent in PurePosixPath(rel).parents)


# --------------------------------------------------------------------------------------------- comparing
def relocation(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``[(old root, new root), ...]`` when the run folder moved: the fingerprints' homes, as given and resolved
    (config values hold the first form, inputs the second), where they differ; empty when they are the same or one
    has none (written before homes existed). A checkpoint is only ever found in the folder it was written to, or
    in a moved or copied one, so another home is always such a move."""
    pairs = []
    for key in ("home", "home_resolved"):
        old, new = saved.get(key), now.get(key)
        if old and new and old != new:
            pairs.append((str(old), str(new)))
    return pairs


def moved_along(moved: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The folders above each moved home that moved with it (``/x/a/s3 -> /y/b/s3``: ``/x/a -> /y/b``; ``/x/a/s3 ->
    /y/a/s3``: ``/x -> /y``), where the paths part once the same rest of the path is taken off; none for a renamed
    folder (the last names differ). An input under one (a
    stage-2 run beside its stage-3 run, both moved) is at the same place when its content is unchanged."""
    out = []
    for old, new in moved:
        a, b = Path(old).parts, Path(new).parts
        same = 0
        while same < min(len(a), len(b)) - 1 and a[-1 - same] == b[-1 - same]:
            same += 1
        pair = (str(Path(*a[:len(a) - same])), str(Path(*b[:len(b) - same])))
        if same and pair not in out:
            out.append(pair)
    return out


def _names(value: Any, path: str) -> bool:
    """Whether config value ``value`` (as given) is ``path`` (an input's, symlinks resolved) or a folder above it."""
    if not isinstance(value, str):
        return False
    return any(v == path or path.startswith(v.rstrip(os.sep) + os.sep) for v in (value, os.path.realpath(value)))


def moved_file(recorded: str | os.PathLike, fp: Mapping[str, Any] | None, place: str | os.PathLike) -> str | None:
    """Where the file ``recorded`` (a path a run recorded, e.g. a checkpoint's ``data_path``) lies now that the run
    folder holding it moved: the file at its place relative to the run's old home (``fp``, the run's fingerprint),
    under the nearest folder above ``place`` (where a file of the run lies now: its checkpoint) that holds one. When
    ``fp`` records the file among its inputs, the candidate must have the recorded size and content hash. None when
    ``fp`` has no home, ``recorded`` was not under it, ``place`` still is (nothing moved) or no such file is found."""
    fp = fp or {}
    recorded = os.path.abspath(os.fspath(recorded))
    rel = None
    for key in ("home", "home_resolved"):
        home = fp.get(key)
        if home and recorded.startswith(str(home).rstrip(os.sep) + os.sep):
            rel = recorded[len(str(home).rstrip(os.sep)) + 1:]
            break
    if rel is None:
        return None
    homes = [str(fp[k]).rstrip(os.sep) + os.sep for k in ("home", "home_resolved") if fp.get(k)]
    here = os.path.abspath(place).rstrip(os.sep) + os.sep
    if any(here.startswith(h) for h in homes):  # the run folder did not move: the file is gone, not elsewhere
        return None
    known = [i for i in (fp.get("inputs") or {}).values() if isinstance(i, Mapping) and i.get("kind") == "file"
             and any(str(i.get("path", "")) == h + rel for h in homes)]
    for folder in Path(os.path.abspath(place)).parents:
        candidate = folder / rel
        if not candidate.is_file():
            continue
        size = candidate.stat().st_size
        if not known or any(i.get("size") == size and i.get("sha256") == _sha256_of_file(candidate, size)[0]
                            for i in known):
            return str(candidate)
    return None


def relocated(value: Any, moved: Sequence[tuple[str, str]]) -> Any:
    """``value`` (a string, or lists and mappings of them) with each path under an old root of ``moved``
    (:func:`relocation`'s pairs) re-rooted at its new root; anything else unchanged."""
    if isinstance(value, list):
        return [relocated(v, moved) for v in value]
    if isinstance(value, Mapping):
        return {k: relocated(v, moved) for k, v in value.items()}
    if isinstance(value, str):
        for root, to in moved:
            prefix = root.rstrip(os.sep) + os.sep
            if value == root:
                return to
            if value.startswith(prefix):
                return to.rstrip(os.sep) + os.sep + value[len(prefix):]
    return value


def _same_place(old: Any, new: Any, moved: Sequence[tuple[str, str]] = ()) -> bool:
    """``old == new``, or both are paths and ``new`` is ``old`` under the moved run folder's new root."""
    if isinstance(old, str) and isinstance(new, str) and not os.path.isabs(old) and os.path.isabs(new) \
            and os.path.exists(old):  # written before paths were made absolute, rerun from its folder
        old = os.path.abspath(old)
    return old == new or any(relocated(old, [pair]) == new for pair in moved)  # each form of the home alone


def _same_file(old: Any, new: Any) -> bool:
    """Whether two config values are paths to one existing file or folder once symlinks are resolved (``data.path``
    given as a link, then as its target); the input fingerprint (resolved paths, content) decides whether it changed."""
    return (isinstance(old, str) and isinstance(new, str) and old != new and os.path.exists(new)
            and os.path.realpath(old) == os.path.realpath(new))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _input_changes(name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
                   moved: Sequence[tuple[str, str]] = ()) -> list[str]:
    if old == new:
        return []
    if old is None or new is None:
        return [f"{name}: {'none' if old is None else old.get('path')} -> {'none' if new is None else new.get('path')}"]
    if not _same_place(old.get("path"), new.get("path"), moved):
        return [f"{name}: {_copy_change(str(old.get('path')), str(new.get('path')))}"]
    where = f"{name} {new.get('path')}"
    if old.get("kind") != new.get("kind"):
        return [f"{where}: was a {old.get('kind')}, now a {new.get('kind')}"]
    if new.get("kind") == "file":  # a new modification time alone (a copy, a rewrite of the same bytes) is no change
        parts = [f"size {old['size']} -> {new['size']} bytes"] if old["size"] != new["size"] else []
        parts += ["content changed"] if old["sha256"] != new["sha256"] else []
        return [f"{where}: {', '.join(parts)}"] if parts else []
    if "only" in new and "only" not in old:  # written before a stage named the files it reads: all of them then
        new = new.get("every_file", new)
    if "links" not in old:  # written before linked folders were followed: compared with what it could see
        new = new.get("unlinked", new)
    out = []
    old_small, new_small = old.get("small_files_sha256", {}), new.get("small_files_sha256", {})
    for file in sorted(set(old_small) | set(new_small)):
        if old_small.get(file) != new_small.get(file):
            state = "added" if file not in old_small else "removed" if file not in new_small else "content changed"
            out.append(f"{where}: {file} {state}")
    if old.get("files") != new.get("files") or old.get("bytes") != new.get("bytes"):
        out.append(f"{where}: {old.get('files')} files / {old.get('bytes')} bytes -> {new.get('files')} files / "
                   f"{new.get('bytes')} bytes")
    elif "content_sha256" in old and "content_sha256" in new:  # small folders: their content decides, not mtimes
        if old["content_sha256"] != new["content_sha256"] and not out:
            out.append(f"{where}: files' content changed (same count and total size)")
    elif old.get("listing_sha256") != new.get("listing_sha256") and not out:
        out.append(f"{where}: files replaced or modified (same count and total size)")
    return out


def _copy_change(old: str, new: str) -> str:
    """``old -> new``, and when both are converted copies of one source in one cache folder
    (``<stem>.<format>.<16 hex>.hdf5``, :func:`robopretrain.data.convert.cache_path`) what that means: the source was
    edited since the checkpoint (or converted with other settings, which the config differences name, or by another
    converter version)."""
    import re

    def parts(path: str) -> tuple[str, str] | None:
        p = Path(path)
        match = re.fullmatch(r"(.+\.[a-z0-9]+)\.[0-9a-f]{16}\.hdf5", p.name)
        return (str(p.parent), match.group(1)) if match else None

    same = parts(old) is not None and parts(old) == parts(new)
    return f"{old} -> {new}" + (" (another converted copy of the same source: the source file changed since this "
                                "checkpoint, it was converted with other data settings, or by another version of the "
                                "converter, after a toolkit upgrade)" if same else "")


# Settings added since fingerprints were first written whose default is not "off" but computes what the toolkit did
# before they existed: a checkpoint without them resumes when they have that value (an upgrade, not a change).
ADDED_AS_BEFORE: dict[str, tuple[Any, ...]] = {
    "data.format": ("auto",), "data.actions": ("auto",),  # a robomimic file, read as stored (the only format then)
    "data.mix.format": ("auto",), "data.mix.actions": ("auto",),  # the same for the mixed-in file
    "data.storage": ("auto",), "data.mix.storage": ("auto",),  # where the arrays are kept: the same batches
    "data.workers": (2,), "data.mix.workers": (2,),  # processes reading the file at start: the same data
    "algo.actor_bc_weight": (0, 0.0), "algo.bc_steps": (0,),  # CQL / Cal-QL's actor without the BC term
    "obs.min_std": (0, 0.0), "encoder.precision": ("float32",),  # no std floor; float32 encoders
}


def _is_off(value: Any) -> bool:
    return value is None or value is False or value in ("none", "None", "") or value == [] or value == {}


# a user's own mappings: an added key there (an env constructor's argument) has no default the toolkit knows
OPEN_MAPPINGS = ("env_kwargs", "kwargs", "obs_map")


def _target_default(key: str) -> tuple[bool, Any]:
    """``(True, default)`` when ``key`` sets a field of a target description (``target.<field>``, the pipeline's
    ``targets.<i>.<field>``): a field left out of it takes :class:`robopretrain.envs.target.Target`'s default."""
    import dataclasses
    import re

    match = re.fullmatch(r"(?:.*\.)?targets?(?:\.\d+)?\.(\w+)", key)
    if match is None:
        return False, None
    from robopretrain.envs.target import Target

    for f in dataclasses.fields(Target):
        if f.name == match.group(1):
            if f.default is not dataclasses.MISSING:
                return True, f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return True, f.default_factory()  # type: ignore[misc]
            return False, None  # (name: no default)
    return False, None


def _as_before(key: str, value: Any, config: Mapping[str, Any]) -> bool:
    """Whether an added setting ``key`` at ``value`` computes what the toolkit did without it: off, its
    :data:`ADDED_AS_BEFORE` value, or a setting of a section switched off (``<section>.enabled`` false in
    ``config``: ``transfer.dann.coef`` while DANN is off). A target's field is compared with its default instead
    (``terminate_on_success: false`` added on a resume was taken for "off", though the field's default is true, and
    ``reward: sparse``, the default, was refused), and a key added to a user's mapping (:data:`OPEN_MAPPINGS`) is
    always a difference."""
    if any(part in OPEN_MAPPINGS for part in key.split(".")[:-1]):
        return False
    known, default = _target_default(key)
    if known:
        return value == default and type(value) is type(default)
    if _is_off(value) or any(value == v and type(value) is type(v) for v in ADDED_AS_BEFORE.get(key, ())):
        return True
    parts = key.split(".")
    return any(config.get(".".join(parts[:i] + ["enabled"])) is False for i in range(1, len(parts)))


def added_off_keys(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Config keys of ``now`` absent from ``saved`` that compute what the toolkit did before they existed (off: false,
    null, "none", empty; their :data:`ADDED_AS_BEFORE` value; or under a section whose ``enabled`` is false), sorted."""
    old_cfg, new_cfg = saved.get("config", {}), now.get("config", {})
    return sorted(k for k, v in new_cfg.items() if k not in old_cfg and _as_before(k, v, new_cfg))


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, as short phrases (inputs first, then config keys); settings added
    since ``saved`` and off (:func:`added_off_keys`) are not differences."""
    out: list[str] = []
    moved = relocation(saved, now)
    along = moved_along(moved)
    saved_inputs, now_inputs = saved.get("inputs", {}), now.get("inputs", {})
    unchanged = []  # paths of inputs found the same (content included) at a place a moved folder took them to
    for name in list(dict.fromkeys([*saved_inputs, *now_inputs])):
        if name not in saved_inputs:  # an input an upgrade started recording (stage 2's encoder): nothing to compare
            continue
        changes = _input_changes(name, saved_inputs.get(name), now_inputs.get(name), moved + along)
        out += changes
        if not changes and now_inputs.get(name):
            unchanged.append(str(now_inputs[name].get("path")))
    old_cfg, new_cfg = saved.get("config", {}), now.get("config", {})
    missing = object()
    ignored = tuple(now.get("ignored") or ())  # this run's: a setting ignored since the checkpoint is no change
    for key in sorted((set(old_cfg) | set(new_cfg)) - set(added_off_keys(saved, now))):
        a, b = old_cfg.get(key, missing), new_cfg.get(key, missing)
        if b is missing and _ignored(key, ignored):
            continue
        if key.endswith("obs_map") and a in (None, {}) and b in (None, {}):  # both "no mapping" (the default was {})
            continue
        if _same_place(a, b, along) and any(_names(b, path) for path in unchanged):
            continue  # a path to an input that moved along with the run folder, its content unchanged
        if _same_file(a, b):
            continue  # one file named two ways (a symlink and its target): its content is the input's to compare
        if not _same_place(a, b, moved):
            out.append(f"{key}: {'(unset)' if a is missing else _short(a)} -> {'(unset)' if b is missing else _short(b)}")
    return out


def listed(diffs: Sequence[str]) -> str:
    """:func:`differences`' phrases as one message part: the first :data:`MAX_LISTED`, then how many more."""
    more = len(diffs) - MAX_LISTED
    return "; ".join(diffs[:MAX_LISTED]) + (f"; ... ({more} more)" if more > 0 else "")


def _times_moved(saved: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Whether a file's modification time differs between two fingerprints, or (the same file: device and inode, so
    a copy with its times kept, ``cp -a``, is not) its change time, which no tool sets back (not recorded before it
    was compared)."""
    same_file = saved.get("inode") is not None and saved.get("inode") == now.get("inode")
    return saved.get("mtime_ns") != now.get("mtime_ns") or (
        same_file and "ctime_ns" in saved and saved["ctime_ns"] != now.get("ctime_ns"))


FRESH = "to start fresh, set resume=false (this run folder is then overwritten) or choose another output_dir"


def check_resume(saved: Mapping[str, Any] | None, now: Mapping[str, Any], where: str | os.PathLike,
                 fresh: str = FRESH, say: bool = True) -> None:
    """Raise :class:`ResumeMismatchError` (one line: ``where``, what changed, ``fresh``) unless ``now`` matches
    ``saved``; ``saved`` ``None`` (a checkpoint older than fingerprints) resumes with a warning. ``say``: False for a
    check made early, before the one that resumes (stage 3's, ahead of its transfer options): the refusal only, the
    resume's warnings left to that one."""
    if saved is not None and not say:
        diffs = differences(saved, now)
        if diffs:
            raise ResumeMismatchError(where, listed(diffs), fresh)
        return
    if saved is None:
        log.warning("%s: written before run fingerprints existed; cannot check that its data and settings are "
                    "this run's", where)
        return
    diffs = differences(saved, now)
    if diffs:
        raise ResumeMismatchError(where, listed(diffs), fresh)
    moved = relocation(saved, now)
    same = saved.get("home_resolved") and saved.get("home_resolved") == now.get("home_resolved")
    if moved and not same:  # (the same folder reached through a link is no move)
        log.info("%s: resuming a run folder moved from %s to %s (its paths are read under the new place)", where,
                 *moved[0])
    sampled = [f"{name} {fp['path']}" for name, fp in now.get("inputs", {}).items()
               if fp is not None and fp.get("kind") == "file" and fp.get("hashed") != "all"
               and _times_moved(saved.get("inputs", {}).get(name) or {}, fp)]
    if sampled:
        log.warning("%s: resuming; %s modified since the checkpoint (its modification time moved, or its change "
                    "time: an edit with the time set back, or a chmod / chown), with the same size and the same first "
                    "and last MiB (only those are compared in files over %d MiB)", where, ", ".join(sampled),
                    FULL_HASH_BYTES // 2**20)
    added = added_off_keys(saved, now)  # said after the refusal check: a refused run is not "resuming"
    if added:
        log.warning("%s: resuming; settings added since it was written are off here, or at what it computed "
                    "before they existed: %s", where,
                    ", ".join(f"{k}={json.dumps(now['config'][k])}" for k in added))
