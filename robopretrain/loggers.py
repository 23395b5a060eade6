"""Experiment loggers behind one small interface: TensorBoard (the default), Weights & Biases, or none.

Every stage picks its logger with the ``logger`` config group (``configs/logger/``): ``logger=tensorboard`` writes
event files under the run folder (``<run>/tb``), ``logger=wandb`` sends the same scalars, the run's config and its
plots to a wandb run (``pip install -e '.[wandb]'``; ``WANDB_MODE=offline`` or ``logger.mode=offline`` keeps it on
disk under ``<run>/wandb``, for ``wandb sync`` later), ``logger=none`` writes neither. The stages' own
``metrics.jsonl`` is written whatever the logger (:class:`robopretrain.metrics.MetricsLogger`).

A :class:`Logger` has three methods: ``scalars(step, {tag: value})``, ``images(step, {tag: png_path})`` and
``close()``. :func:`make_logger` builds one from the config. A wandb run keeps its id in ``<run>/wandb_run_id``,
so a resumed stage continues the same wandb run (wandb's ``resume="allow"``).
"""
from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

LOGGERS = ("tensorboard", "wandb", "none")
WANDB_ID_FILE = "wandb_run_id"
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class LoggerSettings:
    """The ``logger`` group of every stage config (``configs/logger/<name>.yaml``)."""

    name: str = "tensorboard"  # tensorboard | wandb | none
    project: str = "robopretrain"  # wandb project
    entity: str | None = None  # wandb team or user; None: your default entity
    group: str | None = None  # wandb group (the pipeline sets its run name, so its stages are grouped)
    run_name: str | None = None  # wandb run name; None: the run folder's name
    tags: list[str] = field(default_factory=list)
    mode: str | None = None  # online | offline | disabled; None: WANDB_MODE, else online

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | str | None) -> LoggerSettings:
        """From a config mapping, or just a name (``"wandb"``); ``None`` gives TensorBoard. Raises ``ValueError``
        naming an unknown key, logger or wandb mode."""
        if d is None:
            return cls()
        from omegaconf import OmegaConf

        if OmegaConf.is_config(d):
            d = OmegaConf.to_container(d, resolve=True)
        d = {"name": d} if isinstance(d, str) else dict(d)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown logger config key(s) {unknown}; valid keys: {sorted(cls.__dataclass_fields__)}")
        out = cls(**{k: v for k, v in d.items() if v is not None})  # null: the default
        out.tags = [str(t) for t in (out.tags or [])]
        if out.name not in LOGGERS:
            raise ValueError(f"logger={out.name!r}; expected one of {', '.join(LOGGERS)}")
        if out.mode is not None and out.mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={out.mode!r}; expected one of {', '.join(WANDB_MODES)} (or null)")
        return out


class Logger(Protocol):
    """What a training loop needs from a logger."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Record each ``{tag: value}`` at ``step`` (an update count or env steps, non-decreasing)."""

    def images(self, step: int | None, images: Mapping[str, str | os.PathLike]) -> None:
        """Record each ``{tag: PNG file}``; ``step=None``: at the last step logged."""

    def close(self) -> None:
        """Flush and end the run."""


def finite_numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``values`` that are finite real numbers (bools, strings, None, NaN dropped), as floats."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


class NullLogger:
    """``logger=none``: records nothing."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def images(self, step: int | None, images: Mapping[str, str | os.PathLike]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Event files in ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``); the config as a text entry."""

    def __init__(self, log_dir: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self._last_step = 0
        if config is not None:  # TensorBoard renders text as markdown: indent to keep the YAML-like JSON as is
            text = json.dumps(config, indent=2, default=str)
            self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in finite_numbers(values).items():
            self._writer.add_scalar(tag, value, int(step))
        self._last_step = max(self._last_step, int(step))

    def images(self, step: int | None, images: Mapping[str, str | os.PathLike]) -> None:
        import matplotlib.image

        for tag, path in images.items():
            pixels = matplotlib.image.imread(str(path))  # (H, W, 3 or 4), float in [0, 1] for PNG
            self._writer.add_image(tag, pixels[..., :3], self._last_step if step is None else int(step),
                                   dataformats="HWC")

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class WandbLogger:
    """A Weights & Biases run with the stage's config; its files under ``<run_dir>/wandb``."""

    def __init__(self, run_dir: str | os.PathLike, settings: LoggerSettings,
                 config: Mapping[str, Any] | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise ValueError("logger=wandb needs the wandb package: pip install -e '.[wandb]' (or pip install wandb)"
                             ) from None
        self._wandb = wandb
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        self.run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group,
                              name=settings.run_name or run_dir.resolve().name, tags=settings.tags or None,
                              mode=settings.mode or os.environ.get("WANDB_MODE") or "online", dir=str(run_dir),
                              config=dict(config) if config is not None else None, id=run_id, resume="allow")
        id_file.write_text(run_id)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        numbers = finite_numbers(values)
        if numbers:
            self.run.log(numbers, step=int(step))

    def images(self, step: int | None, images: Mapping[str, str | os.PathLike]) -> None:
        self.run.log({tag: self._wandb.Image(str(path)) for tag, path in images.items()},
                     step=None if step is None else int(step))

    def close(self) -> None:
        self.run.finish()


def make_logger(settings: LoggerSettings | Mapping[str, Any] | str | None, run_dir: str | os.PathLike, *,
                config: Mapping[str, Any] | None = None, tensorboard: bool = True,
                tensorboard_dir: str | os.PathLike | None = None, purge_step: int | None = None) -> Logger:
    """The logger ``settings`` names, for the run folder ``run_dir``.

    ``config``: the run's full config (plain containers), logged by wandb and as TensorBoard text.
    ``tensorboard=False`` (the stages' older ``*.tensorboard`` switch) turns the TensorBoard logger off.
    ``tensorboard_dir``: where the event files go (default ``<run_dir>/tb``); ``purge_step``: TensorBoard drops
    events at or after it (a resumed run redoes them). Raises ``ValueError`` for a bad setting or a missing wandb.
    """
    settings = settings if isinstance(settings, LoggerSettings) else LoggerSettings.from_mapping(settings)
    if settings.name == "wandb":
        return WandbLogger(run_dir, settings, config)
    if settings.name == "tensorboard" and tensorboard:
        return TensorBoardLogger(tensorboard_dir or Path(run_dir) / "tb", config, purge_step=purge_step)
    return NullLogger()


def plain_config(config: Any) -> dict[str, Any] | None:
    """An OmegaConf config (or mapping) as plain containers, interpolations resolved where they can be."""
    if config is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        try:
            return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run: log it unresolved
            return OmegaConf.to_container(config, resolve=False)  # type: ignore[return-value]
    return dict(config)


__all__ = ["LOGGERS", "Logger", "LoggerSettings", "NullLogger", "TensorBoardLogger", "WandbLogger", "make_logger",
           "plain_config"]
