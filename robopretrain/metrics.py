"""Training metrics: TensorBoard scalars, a JSONL history file, and learning-curve figures.

:class:`MetricsLogger` writes every logged dict both to TensorBoard (``<run>/tb``) and, one JSON object per
line, to ``<run>/metrics.jsonl`` (the file the benchmarks and tests read). A resumed run appends to the same
files; :func:`read_jsonl` reads them back. :func:`plot_learning_curve` draws success, return, the
calibration gap (average Q next to the Monte-Carlo return) and the cumulative regret over env steps.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robopretrain.files import atomic_file, write_text_atomic

METRICS_FILE = "metrics.jsonl"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic) or (getattr(value, "ndim", None) == 0 and hasattr(value, "item")):
        value = value.item()  # numpy scalars (np.bool_ too), 0-d arrays and 0-d tensors as Python numbers
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Log scalar dicts to the experiment logger and to ``metrics.jsonl`` in ``run_dir``.

    ``logger``: the ``logger`` config group (a mapping, a name or :class:`robopretrain.loggers.LoggerSettings`;
    ``None``: TensorBoard); ``tensorboard=False`` turns TensorBoard off; ``config``: the run's config, which the
    experiment logger records; ``purge_step``: TensorBoard hides the events an earlier session of the run logged at
    or after it (a resumed run logs them again; give it with :meth:`truncate_after`'s step + 1).
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, logger: Any = None,
                 config: Any = None, purge_step: int | None = None) -> None:
        from robopretrain.loggers import make_logger, plain_config

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / METRICS_FILE
        self._writer = make_logger(logger, self.run_dir, config=plain_config(config), tensorboard=tensorboard,
                                   purge_step=purge_step)

    def log(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        """Record ``metrics`` at ``step``: finite numbers go to the experiment logger, everything to the JSONL line."""
        row = {"step": int(step), **{f"{prefix}{k}": _jsonable(v) for k, v in metrics.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._writer is not None:
            self._writer.scalars(int(step), {k: v for k, v in row.items() if k != "step"})

    def images(self, images: Mapping[str, str | os.PathLike], step: int | None = None) -> None:
        """Record PNG files (plots) with the experiment logger; ``step=None``: at the last step logged."""
        if self._writer is not None:
            self._writer.images(step, images)

    def truncate_after(self, step: int) -> None:
        """Drop JSONL rows logged after ``step`` (a resumed run redoes them)."""
        if not self.jsonl_path.exists():
            return
        rows = [r for r in read_jsonl(self.jsonl_path) if r.get("step", 0) <= step]
        write_text_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in rows))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a JSONL metrics file (a half-written last line, from a crash, is skipped)."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _series(history: Sequence[Mapping[str, Any]], key: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for row in history:
        if row.get(key) is not None and row.get(x_key) is not None:
            xs.append(row[x_key])
            ys.append(row[key])
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_learning_curve(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "", x_key: str = "env_steps"
) -> Path:
    """Four panels over ``x_key``: success, return, Q vs MC return (offline and online), cumulative regret."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [  # (title, y-axis label, curves)
        ("success rate (evaluation)", "success rate", [("eval/success", "success")]),
        ("return (evaluation)", "episode return (env reward units)", [("eval/return", "return")]),
        ("Q vs Monte-Carlo return", "value (the agent's scaled rewards)", [
            ("calib/offline_q_policy", "offline Q(s, pi(s))"),
            ("calib/offline_mc_return", "offline MC return"),
            ("calib/online_q_policy", "online Q(s, pi(s))"),
            ("calib/online_mc_return", "online MC return"),
        ]),
        # Cal-QL's cumulative regret: the mean of 1 - success over the training episodes so far (it can fall)
        ("cumulative regret (training episodes)", "mean 1 - success so far", [("train/cumulative_regret", "regret")]),
    ]
    for ax, (name, ylabel, keys) in zip(axes, panels):
        for key, label in keys:
            xs, ys = _series(history, key, x_key)
            if len(xs):
                ax.plot(xs, ys, marker=".", label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(x_key)
        ax.set_ylabel(ylabel)
        if len(keys) > 1 and ax.get_legend_handles_labels()[0]:  # a BC run has no Q curves: no empty legend
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, suffix=path.suffix) as tmp:  # savefig picks the format from the suffix
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
