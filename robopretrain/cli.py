"""Command-line handling shared by the toolkit's Hydra entry points: bad input gives one line, exit code 2.

Use it in an entry point as::

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="robopretrain")
    @friendly_errors
    def main(cfg: DictConfig) -> None: ...

    def cli_main() -> None:               # the console script (pyproject [project.scripts]) calls this
        run_hydra(main, "robopretrain")

    if __name__ == "__main__":
        cli_main()

``config_path`` is absolute (:data:`CONFIG_DIR`, ``robopretrain/configs/``, package data so that an installed wheel has
it; a checkout's ``configs/`` links to it): Hydra resolves a relative one against the calling *file* under ``python
-m`` but against an importable *package* under a console script, and the configs folder is not a package.

* :func:`run_hydra` reads the command line with Hydra's own parser first: an override Hydra cannot parse (a value
  holding ``=`` or ``,``, e.g. ``data.path=/a/b=c.hdf5``) is named on one line with the quoting that works
  (``'data.path="/a/b=c.hdf5"'``), and a sweep (``a,b``) without ``-m`` likewise. Without ``-m``, it then
  composes the config with the overrides, so an unknown key or a group replaced by a value is reported as
  ``error: config: ...`` on one line (Hydra itself prints a multi-line message).
* Setting the run folder (``output_dir=``; the pipeline's ``run_dir=``) moves Hydra's own run folder (its log file and
  ``.hydra/``) there too (:func:`hydra_run_dir_override`), unless ``hydra.run.dir`` is set; each command's composed
  config then goes to ``.hydra/<date>_<time>_<pid>/`` (:func:`hydra_record_override`).
* ``--help`` (:func:`entry_point_help`) lists only the config groups the entry point's config reads (Hydra's own
  lists every folder of ``configs/``: stage 2's ``algo`` under stage 1), then the composed config.
* :func:`friendly_errors` turns the toolkit's known error classes (bad datasets, video manifests, encoder and
  training checkpoints, a non-finite loss, a worker process that died, config validation, rendering unavailable with this ``MUJOCO_GL``)
  into ``error: <message>`` on stderr and exit code 2, with no traceback. Anything else is a bug and keeps
  its traceback. Ctrl-C (``KeyboardInterrupt``) prints ``interrupted`` and what a rerun does (resumes, for the
  entry points in :data:`RESUMABLE`; starts over, for the others), and exits with :data:`EXIT_INTERRUPTED`
  (130, the shell's code for SIGINT), no traceback: the entry points' worker processes ignore SIGINT, so the
  parent alone stops them. SIGTERM stops a run the same way (``terminated (SIGTERM)``, exit code 143,
  :data:`EXIT_TERMINATED`); worker processes also end when their parent is killed outright
  (:func:`robopretrain.workers.die_with_parent`). ``ROBOPRETRAIN_TRACEBACK=1`` re-raises known errors and the
  interrupt too (``0``, ``false``, ``no``, ``off`` or empty: off, as unset).

``python -m robopretrain.cli <entry point module> [overrides]`` runs any of the toolkit's Hydra entry points
(:data:`ENTRY_POINTS`) this way, e.g. ``python -m robopretrain.cli robopretrain.train data.path=x.hdf5``; for
entry points that already use :func:`friendly_errors` it is the same as ``python -m <module>``. ``sim_envs``
imports nothing of ours, so its collectors get one-line errors this way: :func:`collect` and
:func:`collect_videos` are the ``robopretrain-collect`` and ``robopretrain-collect-videos`` console scripts.
"""

from __future__ import annotations

import errno
import functools
import importlib
import logging
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM (kill, docker stop, a batch scheduler's preemption)
# OSErrors that say the storage refused a write (full, over quota, read-only, no permission): one line, as bad input
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
# Hydra entry point module -> its primary config in configs/
ENTRY_POINTS = {"video_pretrain.train": "video_pretrain", "robopretrain.train": "robopretrain",
                "finetune.train": "finetune", "robopretrain.evaluate": "evaluate", "robopretrain.pipeline": "pipeline",
                "sim_envs.collect": "collect", "sim_envs.collect_videos": "collect_videos",
                "robopretrain.reward_model": "reward_model"}
CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data (a checkout's configs/ links here)
# PyOpenGL (MuJoCo's EGL rendering) logs at INFO that its optional C accelerator is absent: the first line of every
# command's log, read as a missing dependency (a new user's finding); its warnings still show
logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)
# the setting naming each entry point's run folder, which Hydra's own run folder follows (hydra_run_dir_override)
RUN_FOLDER_KEYS = {"video_pretrain": "output_dir", "robopretrain": "output_dir", "finetune": "output_dir",
                   "evaluate": "output_dir", "reward_model": "output_dir", "pipeline": "run_dir"}

F = TypeVar("F", bound=Callable[..., Any])
TRACEBACK_OFF = ("", "0", "false", "no", "off")  # ROBOPRETRAIN_TRACEBACK values that mean off (any case)


def traceback_requested() -> bool:
    """Whether ``ROBOPRETRAIN_TRACEBACK`` asks for tracebacks: set to anything but :data:`TRACEBACK_OFF`."""
    return os.environ.get("ROBOPRETRAIN_TRACEBACK", "").strip().lower() not in TRACEBACK_OFF


# the toolkit's own bad-input error classes, by module: one can have been raised only once its module was imported
KNOWN_ERRORS = (("robopretrain.data.hdf5", "DatasetError"), ("robopretrain.data.video", "VideoDatasetError"),
                ("robopretrain.nets.encoder_io", "EncoderCheckpointError"),
                ("robopretrain.checkpoint", "CheckpointError"), ("robopretrain.guards", "NonFiniteLossError"),
                ("robopretrain.envs.target", "EnvContractError"), ("robopretrain.workers", "WorkerProcessDied"),
                ("sim_envs.rendering", "RenderingUnavailableError"))


def known_errors() -> tuple[type[BaseException], ...]:
    """The error classes that mean bad input (not a bug): reported in one line. Looked up among the modules already
    imported, never importing one: evaluated as an ``except`` clause while any error, Ctrl-C included, propagates,
    the imports loaded torch into the collectors, which never use it (seconds before Ctrl-C's line, and a second
    Ctrl-C then gave a traceback: a new user's finding)."""
    own = tuple(getattr(sys.modules[module], name) for module, name in KNOWN_ERRORS if module in sys.modules)
    return (*own, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def one_line(message: str) -> str:
    """``message`` on one line: its lines joined (``; `` unless a line ends a sentence), blanks collapsed."""
    parts = [re.sub(r"\s+", " ", p).strip() for p in str(message).splitlines()]
    out = ""
    for part in (p for p in parts if p):
        out = part if not out else out + (" " if out.endswith((".", ":", ";", ",")) else "; ") + part
    return out


def report_and_exit(exc: BaseException, prefix: str = "error") -> None:
    """Print ``<prefix>: <message>`` as the last line on stderr and exit with :data:`EXIT_BAD_INPUT`."""
    sys.stdout.flush()
    message = one_line(str(exc)) or type(exc).__name__
    try:  # an error about a converted copy also names the user's own file
        from robopretrain.data.convert import name_sources

        message = name_sources(message)
    except ImportError:
        pass
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


RERUN_RESUMES = "a rerun of the same command resumes from its last checkpoint (README, 'Resuming and scaling')"
RERUN_STARTS_OVER = "this command keeps no checkpoints: a rerun starts it over"
RESUMABLE = frozenset({"video_pretrain.train", "robopretrain.train", "finetune.train", "robopretrain.pipeline"})


def friendly_errors(func: F | None = None, *, rerun: str = RERUN_RESUMES) -> Any:
    """Decorate a Hydra task function: known bad-input errors become one line on stderr and exit code 2; Ctrl-C
    becomes one line, ``interrupted (Ctrl-C); <rerun>``, and exit code 130. ``rerun`` says what running the command
    again does (:data:`RERUN_STARTS_OVER` for an entry point without checkpoints); ``@friendly_errors(rerun=...)``
    or ``@friendly_errors``."""
    if func is None:
        return functools.partial(friendly_errors, rerun=rerun)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from robopretrain.workers import end_with_launcher

        end_with_launcher()  # a torchrun rank, a sweep's worker: not outliving a launcher killed outright
        previous = _stop_on_sigterm()
        try:
            return func(*args, **kwargs)
        except known_errors() as exc:
            if traceback_requested():
                raise
            report_and_exit(exc)
        except OSError as exc:  # the machine's, not the toolkit's: a full disk, a read-only or forbidden folder
            if exc.errno not in STORAGE_ERRNOS or traceback_requested():
                raise
            report_and_exit(exc)
        except RuntimeError as exc:
            if not peer_stopped(exc) or traceback_requested():
                raise
            first = str(exc).strip().splitlines()[0]
            sys.stdout.flush()
            print(f"error: rank {os.environ.get('RANK', '?')}: its exchange with another process of this torchrun job "
                  f"failed, most likely because that one stopped (its own error is printed above, or in its log): "
                  f"{first[:200]} (ROBOPRETRAIN_TRACEBACK=1 shows the traceback)", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        except KeyboardInterrupt as exc:
            if traceback_requested():
                raise
            sys.stdout.flush()
            said, code = (("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(exc, Terminated) else
                          ("interrupted (Ctrl-C)", EXIT_INTERRUPTED))
            print(f"{said}; {rerun}", file=sys.stderr, flush=True)
            raise SystemExit(code) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


# what a gloo / NCCL collective says when the process at the other end has gone
PEER_GONE = ("connection closed by peer", "connection reset by peer", "nccl communicator was aborted")


def peer_stopped(exc: BaseException) -> bool:
    """Whether ``exc``, raised under torchrun (``WORLD_SIZE`` > 1), is a collective that failed because another rank
    stopped (its own error is the one to read): gloo's or NCCL's words for a peer gone (:data:`PEER_GONE`; not every
    backend error, which may be this rank's own). Such a rank printed a traceback and gloo's messages after the
    other's one ``error:`` line, and torchrun could name it as the job's first failure."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return False
    text = str(exc).lower()
    return any(words in text for words in PEER_GONE)


class Terminated(KeyboardInterrupt):
    """SIGTERM received by an entry point (:func:`friendly_errors`): raised in the main thread, and a
    ``KeyboardInterrupt``, so that the run stops as on Ctrl-C: its worker processes are shut down (left running
    before, as orphans holding memory, when SIGTERM ended the process at once), its files closed."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _stop_on_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated` in this (main) thread; returns the handler it replaced, or None when
    it made no change (off the main thread, or SIGTERM already has a handler of the program's own)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    current = signal.getsignal(signal.SIGTERM)
    if current not in (signal.SIG_DFL, None):
        return None
    signal.signal(signal.SIGTERM, _raise_terminated)
    return current


# settings that take either a group ({level: train, factors: [...]}) or just a level name (``none``, ``train``)
LEVEL_OR_GROUP = ("randomization",)


def group_replaced_by_value(default: Any, given: Any, path: str = "") -> str | None:
    """The first place where an override replaced a group of settings (a mapping) by a plain value or a list,
    or a list by a mapping, e.g. ``video=false`` for ``video.enabled=false``; ``None`` when the shapes agree.

    ``default`` and ``given`` are plain containers (``OmegaConf.to_container(..., resolve=False)``). A setting
    whose default is null may take any shape; a ``*randomization`` setting may also be a level name.
    """
    where = path or "<root>"
    if isinstance(default, dict):
        if not isinstance(given, dict):
            if given is None or (isinstance(given, str) and path.endswith(LEVEL_OR_GROUP)):
                return None
            keys = list(default)
            example = f"{path}.{keys[0]}=..." if keys else f"+{path}.<key>=..."
            return (f"{where}: is a group of settings ({', '.join(map(str, keys[:6]))}{', ...' if len(keys) > 6 else ''}), "
                    f"not a single value: set its keys instead, e.g. {example} (got {given!r})")
        for key in default:
            if key in given and key != "hydra":
                found = group_replaced_by_value(default[key], given[key], f"{path}.{key}" if path else str(key))
                if found:
                    return found
    elif isinstance(default, list) and isinstance(given, dict):
        return f"{where}: expects a list like [a,b], got a group of settings {given!r}"
    return None


def config_folder(cfg: Any, key: str = "output_dir", where: str = "") -> Path:
    """The folder ``cfg[key]`` names, else the Hydra run folder (inside a Hydra app), else a clear error."""
    if cfg.get(key):
        return Path(str(cfg[key])).expanduser()
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        prefix = f"{where} config: " if where else ""
        raise ValueError(f"{prefix}{key} is not set and no Hydra run is active; set {key}=/path/to/folder") from None


def validate_overrides(config_name: str, overrides: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Compose ``config_name`` with ``overrides``; an unknown key, a bad override or a group of settings
    overridden by a plain value exits with one line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            given = compose(config_name, overrides=overrides, return_hydra_config=True)
            default = compose(config_name, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        if traceback_requested():
            raise
        message = str(exc).split("\nConfig search path:")[0]  # Hydra's own paths: no help to the user
        cause = exc.__cause__
        if isinstance(cause, OmegaConfBaseException) and message.startswith("Error merging override"):
            message += f": {str(cause).splitlines()[0]}"  # why (a structured config's type refused the value)
        report_and_exit(ValueError(group_key_problem(config_name, overrides, config_dir)
                                   or missing_group_problem(config_name, message, config_dir)
                                   or nested_key_problem(config_name, message, config_dir) or message),
                        prefix="error: config")
    finally:
        GlobalHydra.instance().clear()
    problem = group_replaced_by_value(OmegaConf.to_container(default, resolve=False),
                                      OmegaConf.to_container(given, resolve=False)) or interpolation_problem(
        config_name, overrides, given)
    if problem:
        report_and_exit(ValueError(problem), prefix="error: config")


def interpolation_problem(config_name: str, overrides: list[str], cfg: Any) -> str | None:
    """The first override whose value interpolates a setting the config lacks (``output_dir=runs/${eval_sed}``:
    Hydra's own error formatting failed on it, a 100-line traceback), as one line with the nearest setting names;
    resolvers (``${hydra:job.num}``, ``${now:...}``) are left to Hydra. None when there is none."""
    import difflib

    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    known = [k for k in _dotted_keys(OmegaConf.to_container(cfg, resolve=False)) if not k.startswith("hydra.")]
    for override in overrides:
        key, _, value = override.partition("=")
        for ref in re.findall(r"\$\{([A-Za-z_][\w.]*)\}", value):
            try:
                found = OmegaConf.select(cfg, ref, default=_MISSING)
            except InterpolationResolutionError:  # the setting exists; its own value does not resolve (an unset
                continue  # ${oc.env:...}): run_folder_problem names it where the run folder reads it
            if found is _MISSING:
                near = difflib.get_close_matches(ref, known, n=1)
                return (f"{override}: ${{{ref}}} names no setting of {config_name}"
                        + (f"; did you mean ${{{near[0]}}}?" if near else ""))
    return run_folder_problem(config_name, cfg)


def run_folder_problem(config_name: str, cfg: Any) -> str | None:
    """Where the run folder (``hydra.run.dir``, and the entry point's own folder setting that Hydra's follows) does
    not resolve: an unset ``${oc.env:VAR}``, or a setting it names removed (``~seed``). Hydra resolved it before the
    command's code ran and failed formatting its own error (a 20-line traceback); one line here. Resolvers that need
    a running Hydra (``${hydra:...}``) are left to it. None when both resolve."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationKeyError, InterpolationResolutionError

    for key in (RUN_FOLDER_KEYS.get(config_name), "hydra.run.dir"):  # the setting the user gives first
        if key is None:
            continue
        try:
            OmegaConf.select(cfg, key)
        except InterpolationResolutionError as exc:
            why = str(exc).splitlines()[0]
            unset = "KeyError raised while resolving interpolation: "  # omegaconf's words for an unset variable
            if not isinstance(exc, InterpolationKeyError) and not why.startswith(unset):
                continue
            why = why.removeprefix(unset).strip("'\"")
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
            raw = OmegaConf.to_container(node, resolve=False).get(leaf) if node is not None else None
            return (f"{key}={raw}: {why} (the run folder's name must resolve: export the variable, or give the "
                    "setting it names a value rather than removing it)")
    return None


_MISSING = object()


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key of a nested mapping as a dotted path (the mappings themselves included)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}{k}"
            out.append(path)
            out += _dotted_keys(v, path + ".")
    return out


# config groups whose options hold every setting there is (each mirrors a dataclass): ``+<group>.<key>`` never helps
CLOSED_GROUPS = ("algo",)


def group_key_problem(config_name: str, overrides: list[str], config_dir: Path = CONFIG_DIR) -> str | None:
    """The first override ``<group>.<key>=...`` of a :data:`CLOSED_GROUPS` group whose key the chosen option does
    not have, as one line naming the option and the options that have the key (e.g. ``algo=iql
    algo.actor_bc_weight=4``: Hydra itself says "use +algo.actor_bc_weight", which then fails on IQL's config);
    ``None`` when there is none."""
    from omegaconf import OmegaConf

    try:
        defaults = OmegaConf.load(config_dir / f"{config_name}.yaml").get("defaults") or []
    except (OSError, ValueError):
        return None
    choices = {str(k): str(v) for entry in defaults if OmegaConf.is_dict(entry) for k, v in entry.items()}
    for override in overrides:
        key, _, value = override.partition("=")
        if key in choices:
            choices[key] = value
    for override in overrides:
        key = override.partition("=")[0]
        if key.startswith(("+", "~")) or "." not in key:
            continue
        group, name = key.split(".")[:2]
        if group not in CLOSED_GROUPS:
            continue
        path = config_dir / group / f"{choices.get(group)}.yaml"
        if group not in choices or not path.is_file() or name in OmegaConf.load(path):
            continue
        having = sorted(p.stem for p in (config_dir / group).glob("*.yaml") if name in OmegaConf.load(p))
        return (f"{group}={choices[group]} has no setting {name!r} ({group}/{choices[group]}.yaml)"
                + (f"; the {group} options that have it: {', '.join(having)}" if having else ""))
    return None


def missing_group_problem(config_name: str, message: str, config_dir: Path = CONFIG_DIR) -> str | None:
    """One line for Hydra's "Could not override 'X'. ... To append to your ... use +X=..." when ``X`` is no setting of
    ``config_name`` at all (``reward_model algo=iql``, a misspelt ``algoo=iql``): Hydra's ``+X`` hint adds a key or
    group the entry point never reads. Names the close matches, else the config's option groups and sections;
    ``None`` for any other message."""
    import difflib
    import re

    from omegaconf import OmegaConf

    found = re.search(r"Could not override '([^'.]+)'\.", message)
    if not found:
        return None
    from hydra.core.config_store import ConfigStore
    from hydra.plugins.config_source import ConfigLoadError

    path = config_dir / f"{config_name}.yaml"
    try:
        if path.is_file():
            cfg, source = OmegaConf.load(path), f"robopretrain/configs/{config_name}.yaml"
        else:  # a structured config (a dataclass in Hydra's ConfigStore, e.g. metaworld_collect)
            cfg, source = ConfigStore.instance().load(f"{config_name}.yaml").node, "a structured config"
    except (OSError, ValueError, ConfigLoadError):
        return None
    key, plain = found.group(1), OmegaConf.to_container(cfg, resolve=False)  # "???" values stay as they are
    assert isinstance(plain, dict)
    groups = [str(k) for entry in plain.get("defaults") or [] if isinstance(entry, dict) for k in entry]
    keys = [str(k) for k in plain if k not in ("defaults", "hydra")]
    sections = [k for k in keys if isinstance(plain[k], dict) and k not in groups]
    close = difflib.get_close_matches(key, groups + keys, n=3)
    where = f"{key!r} is not a setting of {config_name} ({source})"
    renamed = RENAMED_KEYS.get(key)
    if renamed and renamed.split(".")[0] in keys:
        return f"{where}; it is {renamed} now (renamed since the first releases: {renamed}=...)"
    if close:
        return f"{where}; did you mean {' or '.join(repr(c) for c in close)}?"
    if not path.is_file():
        return f"{where}: its settings are {', '.join(keys)} (Hydra's '+' would add a setting nothing reads)"
    return (f"{where}: " + (f"its option groups are {', '.join(groups)}; " if groups else "it has no option groups; ")
            + f"its sections {', '.join(sections)} (Hydra's '+' would add a setting nothing reads)")


# top-level settings of the first releases (docs/history.md quotes them) -> their names now
RENAMED_KEYS = {"image_keys": "obs.rgb", "state_keys": "obs.low_dim", "obs_keys": "obs.low_dim",
                "num_tasks": "obs.num_tasks", "task": "target"}


# sections whose keys are passed on to another config or constructor (any key they are given is read there): a key new
# to one is added with '+' (the docs' +stage3.algo_overrides..., +encoder.kwargs..., +data.videos...)
OPEN_MAPPINGS = ("algo_overrides", "kwargs", "encoder_kwargs", "videos", "collect", "env_kwargs")


def nested_key_problem(config_name: str, message: str, config_dir: Path = CONFIG_DIR) -> str | None:
    """One line for Hydra's "Could not override 'a.b'. ... use +a.b=..." when a dotted key is misspelt
    (``train.step=10``): Hydra's ``+`` hint adds a setting nothing reads (and the toolkit's checks then refuse it, a
    second round trip). Names the first part of the key the composed config lacks and its close matches there, else
    the settings at that level; ``None`` for any other message or a config that does not compose."""
    import difflib
    import re

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    found = re.search(r"Could not override '([^'.]+(?:\.[^'.]+)+)'\.", message)
    if not found:
        return None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            node: Any = OmegaConf.to_container(compose(config_name), resolve=False)
    except (HydraException, OmegaConfBaseException):
        return None
    finally:
        GlobalHydra.instance().clear()
    key = found.group(1)
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            return None
        if part not in node:
            parent = ".".join(parts[:depth])
            choices = sorted(str(k) for k in node if k != "hydra")
            where = f"{key!r} is not a setting of {config_name}: " + (f"{parent} has no {part!r}" if parent else
                                                                      f"it has no section {part!r}")
            close = difflib.get_close_matches(part, choices, n=3)
            if parent and (not node or parent.split(".")[-1] in OPEN_MAPPINGS):  # keys passed on: '+' adds one
                return (f"{where}: {parent} passes its keys on to what it configures"
                        + (f" (set there now: {', '.join(choices)})" if choices else " (none set by default)")
                        + f", so a new key needs Hydra's '+': +{key}=<value>"
                        + (f" (or did you mean {' or '.join(repr('.'.join([*parts[:depth], c])) for c in close)}?)"
                           if close else ""))
            if close:
                return f"{where}; did you mean {' or '.join(repr('.'.join([*parts[:depth], c])) for c in close)}?"
            return f"{where}; its settings there: {', '.join(choices)} (Hydra's '+' would add a setting nothing reads)"
        node = node[part]
    return None


def quoted_override(override: str) -> str:
    """``override`` with its value quoted for Hydra and the whole quoted for a POSIX shell, e.g.
    ``data.path=/a/b=c.hdf5`` -> ``'data.path="/a/b=c.hdf5"'``: after the shell, Hydra reads the value as one string
    (Hydra's override grammar: a quoted value may hold ``= , [ ] { } ( )``, spaces and quotes escaped by ``\\``)."""
    key, _, value = override.partition("=")
    escaped = value.replace('"', '\\"')
    return shlex.quote(f'{key}="{escaped}"')


def one_line_collection(arg: str) -> str:
    """``arg`` with the line breaks (and the indentation after them) of a ``key={...}`` / ``key=[...]`` value made
    single spaces: a mapping copied across lines in the shell, as the docs print long ones, is whitespace there in
    YAML's flow style, but Hydra's grammar refused it ("token recognition error at: '\\n'")."""
    key, sep, value = arg.partition("=")
    if not sep or "\n" not in value or not value.lstrip().startswith(("{", "[")):
        return arg
    return key + "=" + re.sub(r"\s*\n\s*", " ", value)


def override_problem(override: str, exc: Exception) -> str:
    """The one-line message for an override Hydra's grammar rejects: which one, why, and how to quote it."""
    why = one_line(str(exc)).split(" See https://")[0].rstrip(";. ")
    if "=" not in override:
        return f"cannot parse the override {override!r} ({why}); an override is key=value"
    if override.partition("=")[2].lstrip().startswith(("{", "[")):  # quoting it whole makes it a string
        return (f"cannot parse the override {override!r} ({why}); a mapping or list value is read in Hydra's grammar "
                "(YAML flow style, in shell quotes): check its brackets, and quote each string inside it that holds "
                '= , : [ ] { } ( ) or spaces, e.g. \'target={name: MyTask, env_id: "my_pkg.envs:MyEnv"}\'')
    return (f"cannot parse the override {override!r} ({why}); a value holding = , [ ] {{ }} ( ) quotes or spaces "
            f"must be quoted for Hydra, inside shell quotes: {quoted_override(override)}")


def sweep_problem(override: str) -> str:
    """The one-line message for a sweep (``key=a,b``, ``range(..)``, ``glob(..)``) given without ``-m``."""
    key, _, value = override.partition("=")
    if "," not in value:
        return f"the override {override!r} is a sweep over several values, which needs -m; for one string quote it: " \
               f"{quoted_override(override)}"
    return (f"the override {override!r} is a sweep over several values (Hydra reads ',' as a choice), which needs -m; "
            f"for one string quote it: {quoted_override(override)}; for a list: {key}=[{value}]")


def hydra_command_line(args: list[str]) -> Any:
    """Hydra's own reading of ``args`` (its argparse parser: ``overrides``, ``multirun``, ``config_name``, ...);
    ``None`` when it cannot read them (Hydra then reports that itself) or the command only prints (``--version``)."""
    from hydra._internal.utils import get_args_parser

    if "--version" in args:
        return None
    parser = get_args_parser()

    def refuse(message: str) -> None:
        raise ValueError(message)

    parser.error = refuse  # type: ignore[method-assign]
    try:
        return parser.parse_args(args)
    except (ValueError, SystemExit):
        return None


def check_overrides(overrides: list[str], multirun: bool) -> None:
    """Parse each override with Hydra's grammar; one that fails, or a sweep without ``-m``, exits with one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parsed = parser.parse_override(override)
        except HydraException as exc:
            if traceback_requested():
                raise
            report_and_exit(ValueError(override_problem(override, exc)), prefix="error: config")
        if not multirun and parsed.is_sweep_override():
            report_and_exit(ValueError(sweep_problem(override)), prefix="error: config")
        if parsed.key_or_group == "hydra.job.chdir" and str(parsed.value()).strip().lower() in ("true", "1", "yes"):
            # the stages resolve relative paths against the launch folder: run in the run folder, they nested
            # their outputs (runs/x/runs/x) and missed relative data (a new user's finding)
            report_and_exit(ValueError(f"{override}: the toolkit's entry points run in the folder they are started "
                                       "from, where relative paths (data.path, output_dir, checkpoint) are read; "
                                       "leave hydra.job.chdir false (its default here)"), prefix="error: config")


def config_groups(choices: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """The config groups a composed config reads (``choices``: its ``hydra.runtime.choices``, inherited configs'
    groups included, e.g. the ``paper`` preset's ``logger`` through ``pipeline``), each with its options (the
    ``.yaml`` files of ``configs/<group>/``), by name; Hydra's own groups (``hydra/...``) aside."""
    groups = sorted(str(g) for g in choices if not str(g).startswith("hydra/"))
    return {g: sorted(p.stem for p in (config_dir / g).glob("*.yaml")) for g in groups}


def _job_name(main: Callable[[], Any]) -> str:
    """The name Hydra gives the job of the entry point ``main`` (its file's or module's last name)."""
    module = str(getattr(main, "__module__", "") or "")
    if module == "__main__":
        file = getattr(sys.modules.get("__main__"), "__file__", None)
        return Path(file).stem if file else "app"
    return module.rsplit(".", 1)[-1] or "app"


def entry_point_help(config_name: str, overrides: list[str] | None = None, job_name: str = "app",
                     config_dir: Path = CONFIG_DIR) -> str:
    """What ``--help`` prints for the entry point of ``configs/<config_name>.yaml``: Hydra's help (the config's
    ``hydra.help`` header, template and footer, the config composed with ``overrides``), except that the
    configuration groups listed are only those this config reads (:func:`config_groups`); Hydra's own ``--help``
    lists every folder of ``configs/`` (stage 2's ``algo``, ``dr``, ``gap`` under stage 1), which the entry point
    would refuse or ignore. Raises Hydra's errors for overrides it cannot compose."""
    import copy
    import string

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=[*(overrides or []), f"hydra.job.name={job_name}"],
                          return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    groups = config_groups(cfg.hydra.runtime.choices, config_dir)
    listed = "\n".join(f"{group}: {', '.join(options)}" for group, options in groups.items())
    built = presets(config_name, config_dir)
    if built:  # the pipeline's testbed and paper sizes were nowhere in its --help
        listed = (listed or "(none: this command reads no config group)") + (
            "\n\n== Presets ==\nWhole configurations built on this one (--config-name NAME):\n\n"
            + "\n".join(f"{name}: {about}" if about else name for name, about in built.items()))
    shown = copy.deepcopy(cfg)
    with open_dict(shown):
        del shown["hydra"]
    return string.Template(str(cfg.hydra.help.template)).safe_substitute(
        APP_CONFIG_GROUPS=listed or "(none: this command reads no config group)",
        CONFIG=OmegaConf.to_yaml(shown, resolve=False))


def presets(config_name: str, config_dir: Path = CONFIG_DIR) -> dict[str, str]:
    """``{name: first sentence of its header comment}`` of the files of ``config_dir`` whose defaults list builds on
    ``config_name``, directly or through another such file (the pipeline's ``testbed``, ``paper``,
    ``testbed_combination``), sorted by name."""
    import yaml

    parents: dict[str, list[str]] = {}
    about: dict[str, str] = {}
    for path in sorted(config_dir.glob("*.yaml")):
        text = path.read_text()
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        defaults = doc.get("defaults") if isinstance(doc, dict) else None
        parents[path.stem] = [d for d in defaults or [] if isinstance(d, str)]
        comment = " ".join(line.lstrip("# ").strip() for line in text.splitlines()[:3] if line.startswith("#"))
        about[path.stem] = comment.split(". ")[0].split(" (")[0].rstrip(".:") if comment else ""
    found: set[str] = set()
    frontier = {config_name}
    while frontier:
        frontier = {name for name, bases in parents.items() if frontier & set(bases)} - found - {config_name}
        found |= frontier
    return {name: about[name] for name in sorted(found)}


def _composable(config_name: str) -> bool:
    """Whether ``config_name`` is a file of ``configs/`` or a structured config in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    return (CONFIG_DIR / f"{config_name}.yaml").is_file() or f"{config_name}.yaml" in ConfigStore.instance().list("")


# the entry points that train data-parallel under torchrun (their primary configs); the others run in one process
DATA_PARALLEL = ("video_pretrain", "robopretrain")


def refuse_torchrun(config_name: str) -> None:
    """Exit (:data:`EXIT_BAD_INPUT`) when an entry point that runs in one process (stage 3, evaluation, collection,
    the pipeline, the reward model) was started by torchrun with several processes (its ``TORCHELASTIC_RUN_ID`` set
    and ``WORLD_SIZE`` > 1; ``WORLD_SIZE`` alone may be a cluster script's, exported for other commands): every rank
    ran the whole command on the same folder, and one was refused by the run-folder lock naming its own sibling.
    Every rank says so in one line (torchrun stops the others at the first rank's exit, maybe before they print)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return
    if world <= 1 or config_name in DATA_PARALLEL or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    names = {v: k for k, v in ENTRY_POINTS.items()}
    report_and_exit(ValueError(f"{names.get(config_name, config_name)} runs in one process, not data-parallel: it "
                               f"was started as one of {world} processes (WORLD_SIZE={world}: torchrun?); run it "
                               "without torchrun (stages 1 and 2 train data-parallel: video_pretrain.train, "
                               "robopretrain.train)"))


def data_parallel_sweep(config_name: str, multirun: bool) -> str | None:
    """The problem (None: none) of a Hydra sweep (``-m``) started as one of several data-parallel processes
    (``WORLD_SIZE`` > 1: torchrun, or a cluster script's exported ``RANK`` / ``WORLD_SIZE``): each job of the sweep
    joins the process group again in the same processes, and the second job hung there (about every other try), its
    ranks deaf to SIGTERM."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if not multirun or world <= 1 or config_name not in DATA_PARALLEL:
        return None
    return (f"a sweep (-m) in data-parallel processes (WORLD_SIZE={world}, from torchrun or exported): each job "
            "would join the process group again, and the second hangs there; run one command per job (under "
            "torchrun: for s in 0 1 2; do torchrun ... seed=$s; done), or sweep in one process (WORLD_SIZE unset)")


def run_hydra(main: Callable[[], Any], config_name: str, argv: list[str] | None = None) -> Any:
    """Check the command line (see the module docstring), then run the Hydra ``main``. ``--help`` prints
    :func:`entry_point_help` (the config groups this entry point reads, not every folder of ``configs/``)."""
    if argv is None:  # Hydra reads sys.argv itself
        sys.argv[1:] = [one_line_collection(a) for a in sys.argv[1:]]
    args = [one_line_collection(a) for a in (sys.argv[1:] if argv is None else argv)]
    ns = hydra_command_line(args)
    if ns is not None:
        missing_launcher(list(ns.overrides))
    if ns is not None and ns.config_name and not (ns.config_path or ns.config_dir) \
            and not (CONFIG_DIR / f"{ns.config_name}.yaml").is_file():  # Hydra's multi-line error, exit code 1
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        report_and_exit(ValueError(f"--config-name={ns.config_name}: no such config in {CONFIG_DIR} (its configs: "
                                   f"{', '.join(known)})"))
    if ns is not None and ns.help and not (ns.hydra_help or ns.config_path or ns.config_dir) \
            and _composable(ns.config_name or config_name):
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            text = entry_point_help(ns.config_name or config_name, list(ns.overrides), _job_name(main))
        except (HydraException, OmegaConfBaseException):  # an override that does not compose: one line on it
            validate_overrides(ns.config_name or config_name, list(ns.overrides))
            return main()  # (what validate_overrides let pass: Hydra says what is wrong)
        print(text)
        return None
    if ns is not None and not (ns.help or ns.hydra_help or ns.info or ns.shell_completion):
        refuse_torchrun(config_name)
        check_overrides(list(ns.overrides), multirun=bool(ns.multirun))
        own = (Path(ns.config_dir or ns.config_path or ".").expanduser() / f"{ns.config_name}.yaml"
               if ns.config_name and (ns.config_dir or ns.config_path) else None)
        shared = shared_sweep_folder(config_name, list(ns.overrides), own) if ns.multirun else None
        if shared:
            report_and_exit(ValueError(shared), prefix="error: config")
        parallel_sweep = data_parallel_sweep(config_name, bool(ns.multirun))
        if parallel_sweep:
            report_and_exit(ValueError(parallel_sweep))
        if ns.overrides and not (ns.multirun or ns.config_path or ns.config_dir or ns.experimental_rerun):
            validate_overrides(ns.config_name or config_name, list(ns.overrides))
        if ns.multirun and config_name in RUN_FOLDER_KEYS and ns.overrides:
            record = hydra_record_override(list(ns.overrides))  # each job's record in a folder of this command's:
            places = [i for i, a in enumerate(sys.argv) if a in ns.overrides]  # (Hydra reads sys.argv)
            if record is not None and places:  # a rerun's job refused (another algo) rewrote the record that ran
                sys.argv.insert(max(places) + 1, record)
        if not ns.multirun:
            follow = hydra_run_dir_override(config_name, list(ns.overrides))
            if follow is None and not (ns.cfg or ns.config_path or ns.config_dir) and not any(  # (--cfg writes none)
                    o.lstrip("+~").startswith("hydra.run.dir=") for o in ns.overrides):
                problem = unwritable_folder(".")  # Hydra's default run folder, outputs/... here
                if problem:
                    key = RUN_FOLDER_KEYS.get(config_name)
                    report_and_exit(ValueError(
                        f"{problem}: Hydra writes its log and config record under outputs/ in the working folder; "
                        "run from a writable folder, or set "
                        + (f"{key}=/a/writable/folder" if key else "hydra.run.dir=/a/writable/folder")))
            own_follow = own_config_run_dir(config_name, list(ns.overrides), own) if follow is None else None
            if own_follow is not None:  # the run folder the user's own config file sets: Hydra's record goes there
                from hydra.core.override_parser.overrides_parser import OverridesParser

                problem = unwritable_folder(str(OverridesParser.create().parse_override(own_follow).value()))
                if problem:
                    report_and_exit(ValueError(f"{own}: {RUN_FOLDER_KEYS[config_name]}: {problem}"))
                # after the last override (after an option, argparse refuses it: a review), else at the end; with
                # the record's own folder, as for the command line's run folder
                places = [i for i, a in enumerate(sys.argv) if a in ns.overrides]
                at = max(places) + 1 if places else len(sys.argv)
                record = hydra_record_override(list(ns.overrides))
                sys.argv[at:at] = [own_follow, *([record] if record is not None else [])]
            if follow is not None:  # beside the override it follows: after an option (--cfg job) argparse refuses it
                key = RUN_FOLDER_KEYS[config_name]
                problem = unwritable_folder(follow.partition("=")[2])
                if problem:  # Hydra's own log file would fail first, with a traceback
                    report_and_exit(ValueError(f"{key}={follow.partition('=')[2]}: {problem}"))
                at = max(i for i, a in enumerate(sys.argv) if a.lstrip("+").partition("=")[0] == key)
                sys.argv.insert(at + 1, follow)
                record = hydra_record_override(list(ns.overrides))
                if record is not None:
                    sys.argv.insert(at + 2, record)
    if ns is not None and ns.multirun:
        return _sweep(main, RERUN_SWEEP if config_name in RESUMING else "a rerun of the sweep starts its jobs over")
    return main()


RERUN_SWEEP = ("each job's run folder resumes when the sweep runs again with the same folders (a fixed "
               "hydra.sweep.dir, or output_dir per job)")
RESUMING = ("video_pretrain", "robopretrain", "finetune", "pipeline")  # entry points whose runs resume


def _sweep(main: Callable[[], Any], rerun: str = RERUN_SWEEP) -> Any:
    """A multirun's ``main``: a Ctrl-C reaches the launcher in this process (its jobs say their own line), where
    joblib's and Hydra's tracebacks came before the jobs' ``interrupted`` lines: one line here, exit code 130."""
    try:
        return main()
    except KeyboardInterrupt:
        if traceback_requested():
            raise
        sys.stdout.flush()
        print(f"interrupted (Ctrl-C); {rerun}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None


# Hydra launchers a sweep may pick (``hydra/launcher=<name>``; ours: configs/hydra/launcher/) -> the plugin module
# they need and its pip package: without it Hydra's error was many lines and exit code 1
LAUNCHER_PLUGINS = {"slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
                    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
                    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
                    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher")}


def missing_launcher(overrides: list[str]) -> None:
    """Exit with one line (:func:`report_and_exit`) when ``hydra/launcher=<name>`` picks a launcher whose Hydra plugin
    is not installed (:data:`LAUNCHER_PLUGINS`), naming the package to install."""
    import importlib.util

    for override in overrides:
        key, _, name = override.partition("=")
        if key.lstrip("+~") != "hydra/launcher" or name not in LAUNCHER_PLUGINS:
            continue
        module, package = LAUNCHER_PLUGINS[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # no hydra_plugins package at all
            found = False
        if not found:
            report_and_exit(ValueError(f"hydra/launcher={name} needs Hydra's launcher plugin, which is not installed: "
                                       f"pip install {package} (into this environment)"))


PROBE_BYTES = 64 * 1024  # what a run folder must take before the toolkit's code runs: Hydra's record (~10 kB) and log


def unwritable_folder(text: str) -> str | None:
    """Why the folder an override's value ``text`` names (Hydra's quoting allowed) cannot be written, or None: its
    nearest existing folder refuses a new file (read-only, no permission) or :data:`PROBE_BYTES` in it (a full disk,
    where an empty file is still made). Hydra opens its log file and writes its record there before any of the
    toolkit's code runs, and failed with a traceback ("Unable to configure handler 'file'"; on a full disk
    ``_save_config``'s "No space left on device", exit 1)."""
    import tempfile

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_override(f"x={text}").value()
    except Exception:  # noqa: BLE001 - an override Hydra cannot read is reported by Hydra itself
        return None
    if not isinstance(value, str):
        return None
    probe = Path(value).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe) as f:  # (buffered: a short write of a nearly full disk raises)
            f.write(bytes(PROBE_BYTES))
            f.flush()
    except OSError as exc:
        return f"cannot write in {probe} ({exc.strerror or exc})"
    return None


def hydra_record_override(overrides: list[str], when: float | None = None) -> str | None:
    """``hydra.output_subdir=.hydra/<date>_<time>_<pid>`` for a run whose Hydra run folder is its own run folder
    (:func:`hydra_run_dir_override`), unless ``overrides`` set ``hydra.output_subdir``: each command's composed
    config gets a folder of its own there. With one ``.hydra/`` a second command on the same run folder (a rerun
    refused for a changed setting, or by the writer lock) rewrote the record of the run that ran (``seed: 7`` for a
    run of seed 0); ``when``: the time (seconds since the epoch; now by default)."""
    import time

    if any(o.lstrip("+~").startswith("hydra.output_subdir=") for o in overrides):
        return None
    if os.environ.get("RANK", "0") not in ("", "0") and os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        return "hydra.output_subdir=null"  # a torchrun rank but the first: the command's record is rank 0's
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(when))
    return f"hydra.output_subdir=.hydra/{stamp}_{os.getpid()}"


def own_config_run_dir(config_name: str, overrides: list[str], config_file: Path | None) -> str | None:
    """:func:`hydra_run_dir_override` for the run folder the user's own config file (``--config-dir`` /
    ``--config-name``) sets at its top level, where neither the command line nor that file sets ``hydra.run.dir``
    (Hydra's log and ``.hydra/`` record went to ``outputs/<stage>/...`` under the working folder while the run
    wrote its own folder, a new user's finding). None otherwise, or when the file cannot be read (Hydra says why)."""
    from omegaconf import OmegaConf

    key = RUN_FOLDER_KEYS.get(config_name)
    if key is None or config_file is None or not config_file.is_file():
        return None
    if any(o.lstrip("+~").partition("=")[0] in (key, "hydra.run.dir") for o in overrides):
        return None
    try:
        own = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
    except Exception:  # noqa: BLE001 - Hydra reports a file it cannot read
        return None
    if not isinstance(own, dict):
        return None
    run = own.get("hydra", {}).get("run", {}) if isinstance(own.get("hydra"), dict) else {}
    value = own.get(key)
    if (isinstance(run, dict) and "dir" in run) or not isinstance(value, str) or value.strip() in ("", "???"):
        return None  # (??? : a value the command line must give)
    quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Hydra's override grammar
    text = value if re.fullmatch(r"[\w./${}:~@+-]+", value) else quoted
    return hydra_run_dir_override(config_name, [f"{key}={text}"])


def hydra_run_dir_override(config_name: str, overrides: list[str]) -> str | None:
    """``hydra.run.dir=<value>`` when ``overrides`` set the entry point's run folder (:data:`RUN_FOLDER_KEYS`:
    ``output_dir=``, the pipeline's ``run_dir=``) and not ``hydra.run.dir`` itself: Hydra's log file and ``.hydra/``
    (the composed config) then go to the run folder, not to ``outputs/<stage>/...`` under the working folder. None
    otherwise (also for a value of ``null``). The value is the override's own text, so its quoting carries over."""
    key = RUN_FOLDER_KEYS.get(config_name)
    if key is None or any(o.lstrip("+~").startswith("hydra.run.dir=") for o in overrides):
        return None
    value = None
    for o in overrides:
        name, sep, text = o.lstrip("+").partition("=")
        if sep and name == key:
            value = text  # the last one wins, as in Hydra
    if value is None or value.strip() in ("", "null", "None"):
        return None
    text = value.strip()
    inner = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text
    if inner.startswith("~"):  # the stage expands it; Hydra would make a folder named "~" in the working folder
        home = os.path.expanduser(inner)
        value = f'"{home}"' if '"' not in home else f"'{home}'"
    return f"hydra.run.dir={value}"


def fixed_interpolation(value: str, swept: Sequence[str]) -> bool:
    """Whether every ``${...}`` of an override's ``value`` names a setting none of the ``swept`` keys changes
    (``runs/${algo.name}_s${seed}`` in a sweep of ``train.steps``), so the value is one path for every job; False
    when one does, or uses a per-job resolver (``${hydra:job.num}``, ``job.id``, ``job.override_dirname``) or
    another resolver it cannot judge."""
    import re

    refs = re.findall(r"\$\{([^}]*)\}", value)
    if not refs:
        return False
    for ref in refs:
        ref = ref.strip()
        if ref.startswith("oc.env:"):  # an environment variable: one value for every job
            continue
        if ":" in ref or ref == "hydra" or ref.startswith("hydra."):  # a resolver or Hydra's own node
            return False  # (hydra:job.num, ${hydra.job.override_dirname} vary per job; now:... and others unjudged)
        if any(ref == k or ref.startswith(k + ".") or k.startswith(ref + ".") for k in swept):
            return False
    return True


# outputs an entry point writes outside its run folder, which a sweep's jobs would share when set to one path
SWEEP_SHARED_OUTPUTS = {"video_pretrain": ("output",)}  # stage 1's encoder folder


def shared_sweep_folder(config_name: str, overrides: list[str], config_file: Path | None = None) -> str | None:
    """The problem (None: none) of a sweep whose jobs would share one run folder: ``-m`` with an override of several
    values (``seed=0,1``) and the entry point's run folder (:data:`RUN_FOLDER_KEYS`) or an output it writes outside
    it (:data:`SWEEP_SHARED_OUTPUTS`) set to one path without an interpolation (an environment variable's counts as
    one path), on the command line or, where it does not set them, in ``config_file`` (the user's own
    ``--config-dir`` / ``--config-name`` YAML: a folder set there was not seen, a new user's finding). The second job
    resumed, refused or (the pipeline) reported the first one's run as its own; stage 1's second job replaced the
    first's encoder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    run_key = RUN_FOLDER_KEYS.get(config_name)
    keys = [k for k in (run_key, *SWEEP_SHARED_OUTPUTS.get(config_name, ())) if k]
    if not keys:
        return None
    parser = OverridesParser.create()
    sweeps: list[str] = []
    values: dict[str, str | None] = {}
    for o in overrides:
        try:
            parsed = parser.parse_override(o)
        except HydraException:  # reported by check_overrides
            return None
        if parsed.is_sweep_override():
            sweeps.append(o)
        if parsed.key_or_group in keys:  # the last one wins, as in Hydra
            values[parsed.key_or_group] = None if parsed.is_sweep_override() else o.partition("=")[2]
    if not sweeps:
        return None
    if config_file is not None and config_file.is_file():  # what the user's config file sets, unless overridden
        from omegaconf import OmegaConf

        try:
            own = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
        except Exception:  # noqa: BLE001 - Hydra reports a file it cannot read
            own = {}
        for key in [k for k in keys if k not in values]:
            node: Any = own
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str):
                values[key] = node
    swept = [parser.parse_override(o).key_or_group for o in sweeps]
    if run_key and run_key not in swept and values.get(run_key) is None:  # the job folder: sweep.dir/<subdir>
        given = [o.partition("=")[2] for o in overrides if o.lstrip("+").startswith("hydra.sweep.subdir=")]
        subdir = given[-1] if given else None  # the last one wins, as in Hydra
        if subdir is not None and "${" not in subdir:  # a literal: job 1 resumed job 0's finished run in it
            return (f"hydra.sweep.subdir={subdir} in a sweep ({' '.join(sweeps)}): one folder for every job, the "
                    f"second resuming, refusing or replacing the first's run; let it vary per job (e.g. "
                    f"hydra.sweep.subdir={subdir}_${{hydra:job.num}})")
        if subdir is not None and fixed_interpolation(subdir, swept):
            return (f"hydra.sweep.subdir={subdir} in a sweep ({' '.join(sweeps)}): it interpolates only settings "
                    f"that no job changes, so every job would write to one folder; interpolate what the sweep "
                    f"varies (e.g. ${{{swept[0]}}}) or ${{hydra:job.num}}")
    for key in keys:
        value = values.get(key)
        if value is None or value.strip() in ("", "null", "None"):
            continue
        if "${" in value:
            if fixed_interpolation(value, swept):
                return (f"{key}={value} in a sweep ({' '.join(sweeps)}): it interpolates only settings that no job "
                        f"changes, so every job would write to one folder (the second resuming or replacing the "
                        f"first's); interpolate what the sweep varies (e.g. ${{{swept[0]}}}) or ${{hydra:job.num}}")
            continue
        if key != run_key:
            return (f"{key}={value} in a sweep ({' '.join(sweeps)}): every job would write its output to that one "
                    f"folder, the second replacing the first's; leave {key} unset (each job writes it into its own "
                    f"run folder) or let it vary per job ('{key}={value}/${{hydra:job.num}}')")
        module = next(m for m, c in ENTRY_POINTS.items() if c == config_name)
        clash = ("resume or refuse the first one's run" if module in RESUMABLE else
                 "replace the first one's results")
        return (f"{key}={value} in a sweep ({' '.join(sweeps)}): every job would write to that one folder, and the "
                f"second would {clash}; leave {key} unset (each job writes to its own hydra.sweep.dir/<job number>: "
                f"e.g. hydra.sweep.dir={value}) or let it vary per job ('{key}={value}/${{hydra:job.num}}')")
    return None


def launch(module: str, argv: list[str]) -> Any:
    """Run the Hydra entry point ``module`` with the overrides ``argv`` and one-line bad-input errors."""
    import hydra

    if module not in ENTRY_POINTS:
        raise SystemExit(f"usage: python -m robopretrain.cli <{'|'.join(ENTRY_POINTS)}> [overrides...]")
    task = getattr(importlib.import_module(module).main, "__wrapped__", None)
    if task is None:
        raise SystemExit(f"{module}.main is not a Hydra entry point (no @hydra.main)")
    config_name = ENTRY_POINTS[module]
    rerun = RERUN_RESUMES if module in RESUMABLE else RERUN_STARTS_OVER
    main = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(
        friendly_errors(task, rerun=rerun))
    sys.argv = [module, *argv]
    return run_hydra(main, config_name, argv)


def collect() -> None:
    """Console script ``robopretrain-collect``: ``python -m sim_envs.collect`` with one-line config errors."""
    launch("sim_envs.collect", sys.argv[1:])


def collect_videos() -> None:
    """Console script ``robopretrain-collect-videos``: ``python -m sim_envs.collect_videos`` with one-line errors."""
    launch("sim_envs.collect_videos", sys.argv[1:])


if __name__ == "__main__":
    launch(sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:])
