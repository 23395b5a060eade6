"""Convert datasets of other formats to the toolkit's robomimic HDF5, once, and find the converted copy again.

``python -m robopretrain.data.convert SRC DST [--format auto|lerobot|minari|d4rl|ogbench] [--actions auto|keep]
[--image-size S]``

Formats (detected from the path; ``--format`` names one where detection fails, and a source detected as another
format is refused, but for an ``.npz``: one without ``timeouts`` is detected as OGBench's layout, one with it as
D4RL's, and ``--format d4rl`` or ``ogbench`` reads either as that layout; each reader's module documents its layout
and what it carries over):

============  ==============================================================  ==========================
format        what ``SRC`` is                                                 reader
============  ==============================================================  ==========================
``lerobot``   a LeRobot v3 folder (``meta/info.json``, parquet, mp4)          :mod:`.read_lerobot`
``minari``    a Minari dataset folder (``data/metadata.json``)                :mod:`.read_minari`
``d4rl``      an HDF5 file with top-level ``observations``, ``actions``, ...  :mod:`.read_d4rl`
              (or those arrays and ``timeouts`` in an ``.npz``)
``ogbench``   an OGBench ``.npz`` (``observations``, ``actions``, ...)        :mod:`.read_ogbench`
``robomimic`` an HDF5 file with ``data/demo_<i>`` (already the contract)     :mod:`.resize_robomimic`
============  ==============================================================  ==========================

Direct use: ``data.path=SRC`` in any stage (and ``robopretrain.data.inspect SRC``) calls :func:`as_robomimic`, which
converts ``SRC`` on first use into the cache folder ``data.cache_dir``, else ``$ROBOPRETRAIN_CACHE_DIR/datasets``, else
``~/.cache/robopretrain/datasets``, as ``<name>.<format>.<key>.hdf5``; ``key`` hashes the source's absolute path, the
size and modification time of each of its files, the format, the action mode, the image size and the converter's version
(:func:`converter_version`), so an edited source (or a newer converter) is converted again and an unchanged one is
reused. Beside each copy, ``<copy>.source.json`` records the settings it was made with and its source's files (size,
modification time, SHA-256 of the whole file, taken before converting): a source whose times changed but not its bytes
(touched, written again unchanged) keeps its copy, found by content, so the copy's path stays and a run on it resumes
(its record then takes the new times; hashing the source costs one read of it, far less than converting it again). A new
conversion removes the copies of the same source path and format that can no longer be reused (made before the source
was edited, or by an older converter: their key is no longer the source's at their action mode and image size, and their
record shows other content), with their frame index (``data.storage=disk``) and record, so the cache does not grow with
each edit; copies of other sources, and reusable ones at other image sizes or action modes, stay, and so do the copies
the run folder's checkpoints name (the stages pass them as ``keep``): a rerun on the edited source refuses to resume
without deleting the copy the run trained on, and finds it again once the source's bytes are restored. A stage-2
checkpoint records the copy it trained on: stage 3 without ``data.path`` then asks for the data once that copy is gone.
A robomimic file is used where it is, unless its cameras need resizing (below).

Cameras that are not square (LeRobot and Minari recordings are often 480 x 640) or larger than the agent should see:
``--image-size S`` (stages: ``data.image_size=S``) resizes every camera frame to ``S x S`` while converting, with
the same function that resizes an env's frames for the agent (:func:`robopretrain.data.episodes.resize_frames`), so
training and acting see one view. A robomimic file whose cameras are not all uint8 ``S x S x 3`` gets a cached copy
with its cameras resized the same way and every other dataset, attribute and mask as stored
(:mod:`robopretrain.data.resize_robomimic`; its actions are kept as stored whatever ``--actions`` says); one whose
cameras already are is used where it is. A robomimic file whose demos lack ``next_obs`` (robomimic's
``--exclude-next-obs`` extraction) gets such a copy too, with ``next_obs`` derived from ``obs``
(:mod:`robopretrain.data.resize_robomimic`).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from robopretrain.data.episodes import ACTION_MODES, ConversionError, Episode, check_image_size, write_robomimic
from robopretrain.data.hdf5 import mixed_action_sizes, source_format
from robopretrain.data.frames import index_dir
from robopretrain.data.read_d4rl import is_d4rl, read_d4rl
from robopretrain.data.read_lerobot import FOLDERS as LEROBOT_PARTS
from robopretrain.data.read_lerobot import is_lerobot, read_lerobot
from robopretrain.data.read_lerobot import read_info as read_lerobot_info
from robopretrain.data.read_minari import data_dir as minari_data_dir
from robopretrain.data.read_minari import dataset_id, declared_action_bounds, is_minari, read_minari
from robopretrain.data.read_ogbench import is_ogbench, read_ogbench
from robopretrain.data.resize_robomimic import lacks_next_obs, needs_resize, write_resized
from robopretrain.files import sha256_of, write_json_atomic

log = logging.getLogger(__name__)

CONVERTER_VERSION = 9  # 2: per-dimension action rescaling (in-range dimensions kept), success from is_success;
# 3: a LeRobot next.done last frame that is not a success (next.success recorded) is a truncation; an OGBench
# compact file cut mid-trajectory has no self-loop; 4: grey (N, H, W) uint8 frames are cameras, not low-dim parts;
# 5: a source without rewards (LeRobot without next.reward, OGBench without rewards / masks) is written without them;
# 6: float frames overshooting 1 stay on the [0, 1] scale; a camera that is not 8-bit colour (depth, 16-bit) is left
# out instead of clipped; Minari actions are rescaled from the declared action space; 7: a skipped one-step episode
# leaves a gap in the demo names (labels name demos), a D4RL file without timeouts ends episodes at resets (version 6
# copies made before that change are not told apart from later ones, so every one is converted again); 8: a D4RL
# file's resets its timeouts do not mark end episodes, a LeRobot episode without frames leaves a gap in the names;
# 9: env_args' type is robomimic's integer env type (2, gym), the source format under env_args["format"]
ROBOMIMIC_COPY_VERSION = 6  # a robomimic file's copy with its cameras resized: none of 7's changes reach it


def converter_version(fmt: str) -> int:
    """The version of the converter of format ``fmt``, part of its copies' key and record: a copy made by another
    is converted again."""
    return ROBOMIMIC_COPY_VERSION if fmt == "robomimic" else CONVERTER_VERSION


FORMATS = ("robomimic", "lerobot", "minari", "d4rl", "ogbench")
READERS: dict[str, Callable[[Path], Iterator[Episode]]] = {
    "lerobot": read_lerobot, "minari": read_minari, "d4rl": read_d4rl, "ogbench": read_ogbench}
ENV_CACHE_DIR = "ROBOPRETRAIN_CACHE_DIR"
SOURCE_RECORD_SUFFIX = ".source.json"


# cache_path's names as messages quote them: the longest run without spaces or quotes, then (see _copy_file) the
# first of its tails after "=", "[", "," or "(" that is a file, so "data.path=/runs/algo=iql,seed=1/c.d4rl.<key>.hdf5"
# finds the whole path (a folder with spaces is not found, and the message is then left as it is)
COPY_NAME = re.compile(r"[^\s'\"]+\.(?:" + "|".join(FORMATS) + r")\.[0-9a-f]{16}\.hdf5")
SEPARATORS = "=[,("


def _copy_file(match: str) -> str | None:
    """The file a :data:`COPY_NAME` match names: the match itself or its first tail after a separator that exists."""
    for start in [0, *(i + 1 for i, ch in enumerate(match) if ch in SEPARATORS)]:
        if Path(match[start:]).is_file():
            return match[start:]
    return None


def _copy_note(copy: Path) -> str | None:
    """What a cached copy is made from, for a message about it: its source and what was done; None if unknown."""
    try:
        with h5py.File(copy, "r") as f:
            env_args = json.loads(f["data"].attrs["env_args"])
    except (OSError, KeyError, ValueError, TypeError):
        env_args = {}
    env_args = env_args if isinstance(env_args, dict) else {}
    settings = (_read_record(copy) or {}).get("settings")
    settings = settings if isinstance(settings, dict) else {}
    source = settings.get("source") or env_args.get("source")
    if not isinstance(source, str):
        return None
    if copy.name.split(".")[-3] == "robomimic":  # <stem>.<format>.<key>.hdf5
        size = settings.get("image_size") or env_args.get("image_size")
        done = [f"its cameras resized to {size}x{size}"] if size else []
        derived = env_args.get("derived_next_obs")
        if derived:
            done.append(f"next_obs derived for {', '.join(map(str, derived))}")
        return f"{copy.name} is {source} with {' and '.join(done) or 'nothing changed'}; its demos keep their names"
    return (f"{copy.name} is {source} ({settings.get('format') or source_format(env_args)}) converted; each demo's "
            "ep_meta source_episode names its episode in the source")


def name_sources(message: str) -> str:
    """``message`` with each converted copy it names (a :func:`cache_path` file) followed by the source it was
    converted from (as its record, else its ``env_args``, says): an error about the copy then says which of the
    user's files is meant. A copy that cannot be read is left as it is."""
    copies = dict.fromkeys(filter(None, (_copy_file(m.group(0)) for m in COPY_NAME.finditer(message))))
    notes = [note for note in (_copy_note(Path(c)) for c in copies) if note]
    return message + "".join(f" [{n}]" for n in notes)


def is_robomimic(path: str | os.PathLike) -> bool:
    """True for an HDF5 file with a ``data`` group (the toolkit's own contract)."""
    p = Path(path)
    if not p.is_file() or not h5py.is_hdf5(p):
        return False
    try:
        with h5py.File(p, "r") as f:
            return isinstance(f.get("data"), h5py.Group)
    except OSError:  # truncated or corrupt: not recognised here; the reader that opens it says why
        return False


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` (one of :data:`FORMATS`); :class:`ConversionError` naming what was expected."""
    p = Path(path)
    if not p.exists():
        raise ConversionError(f"{p}: no such file or folder")
    for name, test in (("robomimic", is_robomimic), ("d4rl", is_d4rl), ("ogbench", is_ogbench),
                       ("lerobot", is_lerobot), ("minari", is_minari)):
        if test(p):
            return name
    raise ConversionError(f"{p}: format not recognised (expected a robomimic or D4RL-style HDF5 file, an OGBench "
                          ".npz, a LeRobot v3 folder with meta/info.json, or a Minari folder with data/metadata.json)")


def source_has_rewards(path: str | os.PathLike) -> bool | None:
    """Whether a non-robomimic source records rewards, read from its listing only (no episode is decoded): a LeRobot
    dataset's ``next.reward`` feature, an OGBench file's ``rewards`` or ``masks``; D4RL and Minari always have them.
    None for a robomimic file (per demo: :meth:`robopretrain.data.hdf5.DatasetInfo.unrewarded`) or a source of no
    recognised format (its reader says why)."""
    try:
        fmt = detect_format(path)
    except ConversionError:
        return None
    if fmt == "lerobot":
        try:
            return "next.reward" in read_lerobot_info(path)["features"]
        except ConversionError:
            return None
    if fmt == "ogbench":
        with np.load(Path(path), allow_pickle=False) as z:
            return "rewards" in z.files or "masks" in z.files
    return None if fmt == "robomimic" else True


def _check_format(fmt: str | None) -> str | None:
    if fmt in (None, "", "auto"):
        return None
    if fmt not in FORMATS:
        raise ConversionError(f"format={fmt!r}: expected auto or one of {', '.join(FORMATS)}")
    return fmt


def _env_name(src: Path, fmt: str) -> str:
    return f"minari/{dataset_id(src)}" if fmt == "minari" else f"{fmt}/{Path(os.path.abspath(src)).name}"


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, fmt: str | None = None, actions: str = "auto",
            overwrite: bool = False, image_size: int | None = None) -> Path:
    """Convert ``src`` (``fmt`` or detected) to robomimic HDF5 at ``dst``; returns ``dst``. ``image_size``: the
    square side every camera frame is resized to (None: the source's size).

    A robomimic source is copied with its cameras resized (:mod:`robopretrain.data.resize_robomimic`; ``actions`` does
    not apply). Raises :class:`ConversionError` when ``dst`` exists (unless ``overwrite``), for a robomimic source
    without ``image_size`` (nothing to convert: use it as it is) and for every problem of the source (naming the file
    and what was expected).
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise ConversionError(f"{src}: no such file or folder")
    given = _check_format(fmt)
    fmt = given or detect_format(src)
    if given is not None:
        try:
            detected = detect_format(src)
        except ConversionError:  # not recognised: the named format's reader says what it lacks
            detected = given
        if detected != given and not ({given, detected} == {"d4rl", "ogbench"} and src.suffix.lower() == ".npz"):
            # (an .npz may be read as either layout; a D4RL HDF5 file is no OGBench file)
            raise ConversionError(f"{src}: detected format {detected}, not {given}; leave the format unset (auto) "
                                  "or name its own")
    if fmt == "robomimic" and image_size is None and not lacks_next_obs(src):
        raise ConversionError(f"{src}: already a robomimic HDF5 file; use it as it is (--image-size S writes a copy "
                              "with its cameras at S x S)")
    if dst.is_dir():  # --overwrite replaces a file, never a folder (found after the whole conversion)
        raise ConversionError(f"{dst}: is a folder; give the .hdf5 file to write (e.g. {dst / (src.stem + '.hdf5')})")
    if dst.resolve() == src.resolve():
        raise ConversionError(f"{dst}: the output would replace the source")
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: exists (pass --overwrite to replace it)")
    folder = dst.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):  # before the conversion, not h5py's traceback after it
        raise ConversionError(f"{dst}: cannot write in {folder} (no permission); give an output in a writable folder")
    # the source's absolute path: a cached copy names (and is pruned by) the file itself, not a path relative to
    # whichever folder the run started in
    if fmt == "robomimic":  # its cameras at image_size x image_size, next_obs derived where missing, the rest as stored
        mixed = mixed_action_sizes(src)
        if mixed:  # copied as they are: training refuses a selection holding both sizes, so say it now
            log.warning("%s: %s (the copy keeps them as they are)", src, mixed)
        return write_resized(src, dst, check_image_size(image_size))
    bounds = declared_action_bounds(src) if fmt == "minari" else None  # the other formats declare no space
    return write_robomimic(dst, READERS[fmt](src), source=str(src.expanduser().resolve()), fmt=fmt,
                           env_name=_env_name(src, fmt), actions=actions, image_size=check_image_size(image_size),
                           action_bounds=bounds)


def default_cache_dir() -> Path:
    """``$ROBOPRETRAIN_CACHE_DIR/datasets``, else ``~/.cache/robopretrain/datasets``."""
    root = os.environ.get(ENV_CACHE_DIR)
    return (Path(root) if root else Path.home() / ".cache" / "robopretrain") / "datasets"


def _source_files(src: Path, fmt: str | None = None) -> list[tuple[str, Path]]:
    """``[(name in the source, file), ...]`` of ``src`` (resolved): the file itself, or the files of a folder that
    ``fmt``'s reader reads (LeRobot: ``meta/``, ``data/``, ``videos/``; Minari: its ``data/`` folder; else all),
    sorted. Symlinked folders are followed (each real folder once): an edit behind a link is an edit of the source.
    What else lies in the folder (a README, a run's ``outputs/`` or a cache folder written there) is not the source,
    so it neither changes the key nor blocks a resume. A Minari dataset given by its ``metadata.json`` is its
    ``data/`` folder's files (its episodes beside it: an edit of them kept the old copy, a new user's finding)."""
    src = src.resolve()
    if fmt == "minari" and src.is_file():
        src = minari_data_dir(src) or src
    if not src.is_dir():
        return [(src.name, src)]
    files: list[Path] = []
    seen: set[str] = set()
    for root in _read_roots(src, fmt):
        for folder, dirs, names in os.walk(root, followlinks=True):  # Path.rglob skips symlinked folders (3.11)
            real = os.path.realpath(folder)
            if real in seen:  # a link back up the tree, or two links to one folder
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()  # which of two paths to one folder names its files: the same on every file system
            files += [q for q in (Path(folder) / n for n in names) if q.is_file()]
    return [(str(p.relative_to(src)), p) for p in sorted(files)]


def _read_roots(src: Path, fmt: str | None) -> list[Path]:
    """The folders of the folder source ``src`` (resolved) that ``fmt``'s reader reads: a LeRobot folder's
    :data:`LEROBOT_PARTS`, a Minari dataset's ``data/`` folder, else ``src`` itself."""
    if fmt == "lerobot":
        return [src / part for part in LEROBOT_PARTS]
    return [minari_data_dir(src) or src] if fmt == "minari" else [src]


def _read_by_reader(src: Path, fmt: str | None) -> Callable[[str], bool]:
    """Whether a name of a source's file (relative to ``src``, as a record holds it) lies in a folder its reader
    reads: a record written when every file of the folder counted (a LeRobot folder's README.md, a Minari dataset's
    files beside data/) is compared on those only, so its copy is still found after that change."""
    src = src.resolve()
    if not src.is_dir():
        return lambda name: True
    parts = [os.path.relpath(root, src) for root in _read_roots(src, fmt)]
    if "." in parts:
        return lambda name: True
    return lambda name: any(name == p or name.startswith(p + "/") for p in parts)


def source_key(src: Path, fmt: str, actions: str, image_size: int | None = None) -> str:
    """A 16-hex-digit key of the source's files (path, size, modification and change times: the change time moves
    with every write, also one whose modification time was set back), the format, action mode, image size (when
    set) and converter."""
    src = src.resolve()
    size = [] if image_size is None else [int(image_size)]  # unset: the key of copies made before the option
    h = hashlib.sha256(json.dumps([str(src), fmt, actions, converter_version(fmt), *size]).encode())
    for name, p in _source_files(src, fmt):
        st = p.stat()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
    return h.hexdigest()[:16]


def source_record_path(copy: str | os.PathLike) -> Path:
    """The record beside a cached copy (``<copy>.source.json``): the settings it was made with and its source's
    files (size, modification and change times, SHA-256 of the whole file) as they were, see :func:`as_robomimic`."""
    copy = Path(copy)
    return copy.with_name(copy.name + SOURCE_RECORD_SUFFIX)


class _Source:
    """A source's files as they are now: sizes, modification and change times at once, SHA-256s when first asked
    for."""

    def __init__(self, src: Path, fmt: str, actions: str, image_size: int | None) -> None:
        self.settings = {"source": str(src.resolve()), "format": fmt, "actions": actions, "image_size": image_size,
                         "converter": converter_version(fmt)}
        self.files = _source_files(src, fmt)
        self.reads = _read_by_reader(src, fmt)
        self.stats = {name: [st.st_size, st.st_mtime_ns, st.st_ctime_ns] for name, p in self.files
                      for st in (p.stat(),)}
        self._hashes: dict[str, str] | None = None

    def hashes(self) -> dict[str, str]:
        if self._hashes is None:
            self._hashes = {name: sha256_of(p) for name, p in self.files}
        return self._hashes

    def record(self) -> dict[str, Any]:
        hashes = self.hashes()
        return {"settings": self.settings,
                "files": {name: {"size": size, "mtime_ns": mtime, "ctime_ns": ctime, "sha256": hashes[name]}
                          for name, (size, mtime, ctime) in self.stats.items()}}

    def same_content(self, record: Mapping[str, Any] | None) -> bool:
        """Whether ``record``'s files (any settings) are these files: names, sizes and SHA-256s (hashed only when
        the names and sizes agree)."""
        theirs = _content(record)
        if theirs is None or {n: size for n, (size, _) in theirs.items()} != {n: s[0] for n, s in self.stats.items()}:
            return False
        return theirs == {n: (self.stats[n][0], h) for n, h in self.hashes().items()}


def _content(record: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]] | None:
    """A record's files as ``{name: (size, SHA-256)}``; None for a missing or malformed record."""
    files = record.get("files") if isinstance(record, Mapping) else None
    if not isinstance(files, Mapping) or not all(isinstance(v, Mapping) for v in files.values()):
        return None
    return {name: (v.get("size"), v.get("sha256")) for name, v in files.items()}


def _read_record(copy: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(source_record_path(copy).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _copies_beside(dst: Path) -> list[Path]:
    """The cached copies in ``dst``'s folder named like it (``<stem>.<format>.<key>.hdf5``), ``dst`` left out."""
    stem = dst.name[: -len(".hdf5")].rsplit(".", 1)[0]  # "<stem>.<fmt>"
    return [p for p in sorted(dst.parent.glob(f"{glob.escape(stem)}.*.hdf5"))
            if p != dst and p.name.count(".") == dst.name.count(".")]


def _reusable_copy(source: _Source, dst: Path) -> Path | None:
    """A copy beside ``dst`` (the source's copy under its key now, missing) made with the same settings from the
    same content: its record's files have the source's names, sizes and SHA-256s though not its modification times
    (the key hashes those). A source touched, or written again with the same bytes (copied over itself without
    ``-p``, downloaded again), keeps its copy and the copy's path, so a run on it resumes; the record then takes
    the new times, and the next lookup needs no hashing. None when there is none (a source of other content is
    converted again)."""
    for copy in _copies_beside(dst):
        record = _read_record(copy)
        if record is None or record.get("settings") != source.settings:
            continue
        files = record.get("files")
        if not isinstance(files, Mapping) or not all(isinstance(v, Mapping) for v in files.values()):
            continue
        read = {n: v for n, v in files.items() if source.reads(n)}  # (an older record also lists the rest)
        if set(read) != set(source.stats):
            continue
        record = {**record, "files": read}
        if all([read[n].get("size"), read[n].get("mtime_ns"), read[n].get("ctime_ns")] == source.stats[n]
               for n in read):
            if len(read) < len(files):  # the record as this version writes it
                write_json_atomic(source_record_path(copy), record)
            return copy  # verified before at these times
        if source.same_content(record):
            write_json_atomic(source_record_path(copy), source.record())
            log.info("%s: modified since its converted copy %s, but its content is the same; using that copy",
                     source.settings["source"], copy)
            return copy
    return None


def cache_path(src: str | os.PathLike, fmt: str, *, actions: str = "auto",
               cache_dir: str | os.PathLike | None = None, image_size: int | None = None) -> Path:
    """Where :func:`as_robomimic` keeps the converted copy of ``src``."""
    src = Path(src)
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = Path(os.path.abspath(src)).name  # "." and ".." have a name of their own: their folder's
    stem = name[: -len(src.suffix)] if src.is_file() and src.suffix else name
    return folder / f"{stem}.{fmt}.{source_key(src, fmt, actions, image_size)}.hdf5"


def as_robomimic(src: str | os.PathLike, *, fmt: str | None = None, cache_dir: str | os.PathLike | None = None,
                 actions: str = "auto", image_size: int | None = None,
                 keep: Sequence[str | os.PathLike] = (), prune: bool = False) -> Path:
    """A robomimic HDF5 path for ``src``: ``src`` itself when it is one (or a file of no recognised format, which the
    robomimic reader then refuses with its own message), else its cached conversion (made now when missing or
    stale, see the module docstring), its cameras resized to ``image_size`` when given (a robomimic file is used as
    stored unless some camera is not ``image_size`` square uint8 RGB: then its cached copy with the cameras resized).
    ``keep``: copies a new conversion must not remove although stale (those a run folder's checkpoint names: its
    resume, refused on the edited source, works again once the source is restored). ``prune``: remove the stale
    copies also when the current copy is reused (a fresh run: the copy an earlier run kept for its resume is
    nobody's now; other callers leave them, since another run folder may still name one). Raises
    :class:`ConversionError`."""
    src = Path(src).expanduser()
    fmt = _check_format(fmt)
    image_size = check_image_size(image_size)
    if fmt is None:
        try:
            fmt = detect_format(src)
        except ConversionError:
            if src.is_file():
                return src  # unreadable or foreign: the robomimic reader names what is wrong with it
            raise
    if fmt == "robomimic":
        if (image_size is None or not needs_resize(src, image_size)) and not lacks_next_obs(src):
            return src  # used where it is
        actions = "keep"  # a robomimic file's actions are copied as stored; the stages read their units from it
    if actions not in ACTION_MODES:
        raise ConversionError(f"actions={actions!r}: expected one of {ACTION_MODES}")
    dst = cache_path(src, fmt, actions=actions, cache_dir=cache_dir, image_size=image_size)
    if dst.is_file():
        log.info("%s (%s): using the converted copy %s", src, fmt, dst)
        if prune:  # e.g. an earlier content's, kept for a run that is now fresh
            remove_stale_copies(src, fmt, dst, keep)
        return dst
    source = _Source(src, fmt, actions, image_size)
    same = _reusable_copy(source, dst)
    if same is not None:
        if prune:
            remove_stale_copies(src, fmt, same, keep)
        return same
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, no permission: say which folder and what chooses it
        raise ConversionError(f"{src}: cannot make the cache folder {dst.parent} for its converted copy "
                              f"({exc.strerror}); choose a writable folder with data.cache_dir (or "
                              f"${ENV_CACHE_DIR})") from None
    if fmt == "robomimic":
        log.info("%s: %s in a copy %s (once; reused while the source is unchanged)", src,
                 f"cameras resized to {image_size}x{image_size}" if image_size is not None and needs_resize(
                     src, image_size) else "next_obs derived where its demos lack it", dst)
    else:
        log.info("%s (%s): converting to %s (once; reused while the source is unchanged)", src, fmt, dst)
    record = source.record()  # the content converted (hashed before reading it, so an edit meanwhile shows later)
    out = convert(src, dst, fmt=fmt, actions=actions, overwrite=True, image_size=image_size)
    write_json_atomic(source_record_path(out), record)
    remove_stale_copies(src, fmt, out, keep)
    return out


def remove_stale_copies(src: Path, fmt: str, current: Path, keep: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Remove :func:`stale_copies` of ``src`` beside ``current`` (with their frame indexes and records), except
    those ``keep`` names (a resumed run's checkpoints: a resume refused on an edited source works again once it is
    restored); returns the removed ones. A copy that cannot be removed (a read-only cache) is warned about."""
    kept = {os.path.realpath(k) for k in keep}
    removed = []
    for stale in stale_copies(src, fmt, current):
        if os.path.realpath(stale) in kept:
            log.info("%s: kept the converted copy %s of its earlier content, which this run's checkpoint names (a "
                     "resume on the changed source is refused, naming the change; resume=false removes the copy)",
                     src, stale)
            continue
        try:
            stale.unlink()  # a process still reading it keeps its open file (POSIX)
            shutil.rmtree(index_dir(stale), ignore_errors=True)  # its frame index (data.storage=disk), often larger
            source_record_path(stale).unlink(missing_ok=True)
            log.info("%s: removed the converted copy it replaces, %s", src, stale)
            removed.append(stale)
        except FileNotFoundError:  # another process removed it first
            continue
        except OSError as e:  # a read-only cache: keep going
            log.warning("%s: could not remove the stale converted copy %s (%s)", src, stale, e)
    return removed


def stale_copies(src: str | os.PathLike, fmt: str, current: Path) -> list[Path]:
    """The copies in ``current``'s folder that can no longer be reused: named ``<stem>.<fmt>.<key>.hdf5`` like
    ``current``, converted from the same source file (their ``env_args['source']``, an absolute path), whose ``key``
    is neither action mode's key of the source as it is now at their image size (see the module docstring) and
    whose record (:func:`source_record_path`) does not show the content ``current`` was converted from
    (:func:`as_robomimic` reuses those). Unreadable files are left, and so are copies recording a relative source
    path (written before the path was made absolute: which file it named depends on the folder it was converted
    from)."""
    src = Path(src).expanduser().resolve()
    content = _content(_read_record(current))  # the source's content now: the one just converted
    out, valid = [], {}  # image size -> the source's keys at it (hashing a folder's files once per size)
    for path in _copies_beside(current):
        try:
            with h5py.File(path, "r") as f:
                env_args = json.loads(f["data"].attrs["env_args"])
        except (OSError, KeyError, ValueError, TypeError):
            continue  # not one of ours, or being written
        source, size = env_args.get("source"), env_args.get("image_size")
        if (not isinstance(source, str) or not Path(source).is_absolute() or Path(source).resolve() != src
                or not (size is None or isinstance(size, int))):
            continue
        key = path.name[: -len(".hdf5")].rsplit(".", 1)[1]
        if size not in valid:
            valid[size] = {source_key(src, fmt, mode, size) for mode in ACTION_MODES}
        if key in valid[size]:
            continue
        record = _read_record(path)
        settings = (record or {}).get("settings")
        settings = settings if isinstance(settings, dict) else {}
        if (settings.get("converter") == converter_version(fmt) and settings.get("format") == fmt
                and content is not None and _content(record) == content):
            continue  # reused for a source whose times changed, not its content
        out.append(path)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m robopretrain.data.convert",
                                description="Convert a LeRobot v3, Minari, D4RL-style HDF5 or OGBench .npz dataset "
                                            "to the toolkit's robomimic HDF5.")
    p.add_argument("src", help="the dataset: a LeRobot or Minari folder, a .hdf5 or a .npz file")
    p.add_argument("dst", help="the robomimic .hdf5 to write")
    p.add_argument("--format", default="auto", help=f"auto (default: detected) or one of {', '.join(FORMATS[1:])}")
    p.add_argument("--actions", default="auto", choices=ACTION_MODES,
                   help="auto: rescale actions outside [-1, 1] per dimension by their min/max (stored in env_args); "
                        "keep: write them unchanged")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="resize every camera frame to S x S (as an env's frames are resized for the agent; "
                        "non-square frames are stretched); default: the source's size")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_size is not None and args.image_size < 8:
        parser.error(f"--image-size {args.image_size}: expected an integer >= 8 (the side of the square frames to "
                     "write); leave it out to keep the source's size")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = convert(args.src, args.dst, fmt=args.format, actions=args.actions, overwrite=args.overwrite,
                      image_size=args.image_size)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with h5py.File(out, "r") as f:
        demos = len(f["data"])
        # (every copy writes data's total; the demos' sum where a source without one was copied as it was)
        total = int(f["data"].attrs["total"]) if "total" in f["data"].attrs else sum(
            int(g.attrs.get("num_samples", 0)) for g in f["data"].values() if isinstance(g, h5py.Group))
        first = f["data"][next(iter(f["data"]))]  # demo_0 may be a skipped one-step episode (a gap in the names)
        keys = {k: tuple(v.shape[1:]) for k, v in first["obs"].items()}
        act = first["actions"].shape[1]
    print(f"{args.src} -> {out}: {demos} episodes, {total} transitions, {act}-D actions, observations "
          + ", ".join(f"{k} {s}" for k, s in keys.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
