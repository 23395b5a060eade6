"""Command-line error handling shared by the toolkit's Hydra entry points: bad input gives one line, exit code 2.

Use it in an entry point as::

    @hydra.main(version_base="1.3", config_path="../configs", config_name="robopretrain")
    @friendly_errors
    def main(cfg: DictConfig) -> None: ...

    if __name__ == "__main__":
        run_hydra(main, "robopretrain")

* :func:`run_hydra` composes the config with the command line's overrides first, so an unknown key or a
  malformed override is reported as ``error: config: ...`` on one line (Hydra itself prints a multi-line
  message). Command lines with Hydra flags (``-m``, ``--cfg``, ...) go straight to Hydra.
* :func:`friendly_errors` turns the toolkit's known error classes (bad datasets, video manifests, encoder and
  training checkpoints, a non-finite loss, config validation, rendering unavailable with this ``MUJOCO_GL``)
  into ``error: <message>`` on stderr and exit code 2, with no traceback. Anything else is a bug and keeps
  its traceback. ``ROBOPRETRAIN_TRACEBACK=1`` re-raises known errors too.

``python -m robopretrain.cli <entry point module> [overrides]`` runs any of the toolkit's Hydra entry points
(:data:`ENTRY_POINTS`) this way, e.g. ``python -m robopretrain.cli robopretrain.train data.path=x.hdf5``; for
entry points that already use :func:`friendly_errors` it is the same as ``python -m <module>``.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

EXIT_BAD_INPUT = 2
# Hydra entry point module -> its primary config in configs/
ENTRY_POINTS = {"video_pretrain.train": "video_pretrain", "robopretrain.train": "robopretrain",
                "finetune.train": "finetune", "robopretrain.evaluate": "evaluate",
                "robopretrain.reward_model": "reward_model"}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

F = TypeVar("F", bound=Callable[..., Any])


def known_errors() -> tuple[type[BaseException], ...]:
    """The error classes that mean bad input (not a bug): reported in one line."""
    from robopretrain.checkpoint import CheckpointError
    from robopretrain.data.hdf5 import DatasetError
    from robopretrain.data.video import VideoDatasetError
    from robopretrain.guards import NonFiniteLossError
    from robopretrain.nets.encoder_io import EncoderCheckpointError

    # rendering is unavailable (e.g. MUJOCO_GL=glfw without a display): only possible once sim_envs renders
    rendering = sys.modules.get("sim_envs.rendering")
    render_errors = (rendering.RenderingUnavailableError,) if rendering is not None else ()
    return (DatasetError, VideoDatasetError, EncoderCheckpointError, CheckpointError, NonFiniteLossError,
            ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, *render_errors)


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
    print(f"{prefix}: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def friendly_errors(func: F) -> F:
    """Decorate a Hydra task function: known bad-input errors become one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except known_errors() as exc:
            if os.environ.get("ROBOPRETRAIN_TRACEBACK"):
                raise
            report_and_exit(exc)

    return wrapper  # type: ignore[return-value]


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
        if os.environ.get("ROBOPRETRAIN_TRACEBACK"):
            raise
        report_and_exit(exc, prefix="error: config")
    finally:
        GlobalHydra.instance().clear()
    problem = group_replaced_by_value(OmegaConf.to_container(default, resolve=False),
                                      OmegaConf.to_container(given, resolve=False))
    if problem:
        report_and_exit(ValueError(problem), prefix="error: config")


def run_hydra(main: Callable[[], Any], config_name: str, argv: list[str] | None = None) -> Any:
    """Check the command line's overrides against ``config_name``, then run the Hydra ``main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("-") for a in args):  # flags (-m, --cfg, --help, ...): Hydra's own handling
        validate_overrides(config_name, args)
    return main()


def launch(module: str, argv: list[str]) -> Any:
    """Run the Hydra entry point ``module`` with the overrides ``argv`` and one-line bad-input errors."""
    import hydra

    if module not in ENTRY_POINTS:
        raise SystemExit(f"usage: python -m robopretrain.cli <{'|'.join(ENTRY_POINTS)}> [overrides...]")
    task = getattr(importlib.import_module(module).main, "__wrapped__", None)
    if task is None:
        raise SystemExit(f"{module}.main is not a Hydra entry point (no @hydra.main)")
    config_name = ENTRY_POINTS[module]
    main = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(friendly_errors(task))
    sys.argv = [module, *argv]
    return run_hydra(main, config_name, argv)


if __name__ == "__main__":
    launch(sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:])
