"""Stage-1 diagnostics: do an encoder's values track progress toward the goal on robot trajectories?

``python -m video_pretrain.diagnose --data robot.hdf5 --encoders RUN/encoder OTHER/encoder random`` (argparse)
evaluates each encoder on held-out robot trajectories (robomimic HDF5, e.g. the target tasks collected with
``python -m sim_envs.collect tasks=target``). The goal of a trajectory is its last frame (the final
``next_obs`` image when stored); states are the frames before it, with d = steps to go. Values
(REFERENCE.md, Stage 1):

- ICVF encoders (saved with value heads by ``video_pretrain.train``): V(s_t, g, g), mean of the heads; the
  ICVF encoder's plain feature distance is reported too, as ``<label>:features``;
- metric encoders (VIP, TCN, random init ``random``): -||phi(s_t) - phi(g)||_2 of the encoder features;
- ``pixels``: no encoder, -||s_t - g||_2 of the raw frames (flattened, in [0, 1]): the baseline that says how
  much of a row's correlation with time any frame difference already gives.

Per trajectory: Spearman rho and Kendall tau-b between value and time (1 = the value rises all the way),
the fraction of steps where the value increases, and MSE / R^2 against the optimal value under the ICVF
reward, V* = -(1 - gamma^d) / (1 - gamma) (only meaningful for ICVF values: distances are on no particular
scale). Per encoder: a linear probe (ridge regression on standardised frozen features, alpha chosen by
cross-validation over training trajectories) predicting d, trained and tested on disjoint trajectories.
:func:`load_clip_trajectories` gives the same diagnostics on clips of a video folder (e.g. held-out
human-hand clips: the in-domain check).
Outputs ``diagnostics.json`` (every number), ``values.png`` (min-max normalised value-vs-time curves of a
few trajectories per encoder, V* dashed) and a markdown table on stdout.

Rank correlations are implemented here (scipy is not a dependency): :func:`rankdata` (ties averaged; NaN
anywhere gives NaN ranks, as scipy's ``nan_policy='propagate'``), :func:`spearman` and :func:`kendall_tau_b`.
A trajectory whose values are all equal has no rank order with time: :func:`trajectory_metrics` gives it
correlations of 0 (undefined, NaN, as a statistic; left out of a mean it raised the mean of the rest), and a
trajectory with a NaN value NaN in every number, which the means over trajectories carry (a diverged value head
shows as NaN, not as the mean of its finite curves).
"""
from __future__ import annotations

import argparse
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from robopretrain.cli import RERUN_STARTS_OVER, friendly_errors
from robopretrain.data.convert import as_robomimic
from robopretrain.data.hdf5 import read_info
from robopretrain.data.video import MANIFEST_NAME, VIDEO_SUFFIXES
from robopretrain.files import atomic_file, write_json_atomic
from robopretrain.nets.encoders import make_encoder, to_float_images
from video_pretrain.data import HDF5ImageSource
from video_pretrain.train import load_pretrained, resolve_device

RANDOM = "random"
PIXELS = "pixels"
DEFAULT_ALPHAS = tuple(10.0 ** k for k in range(-3, 5))


# --------------------------------------------------------------------------------------------- statistics
def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing the average of their ranks; all NaN when ``x`` holds a NaN (its
    place in the order is unknown: each NaN took a top rank of its own)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.isnan(x).any():
        return np.full(x.size, np.nan)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + 1 + e)  # mean of ranks s+1 .. e
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; nan when either input is constant (undefined)."""
    x, y = np.asarray(x, np.float64) - np.mean(x), np.asarray(y, np.float64) - np.mean(y)
    denom = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / denom) if denom > 0 else float("nan")


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the (tie-averaged) ranks."""
    _check_pair(x, y, "spearman")
    return pearson(rankdata(x), rankdata(y))


def kendall_tau_b(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, chunk: int = 1024) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)) over all pairs."""
    _check_pair(x, y, "kendall_tau_b")
    x, y = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    num = pairs_x = pairs_y = 0.0
    for lo in range(0, x.size, chunk):
        sx = np.sign(x[lo:lo + chunk, None] - x[None, :])
        sy = np.sign(y[lo:lo + chunk, None] - y[None, :])
        num += float((sx * sy).sum())
        pairs_x += float(np.abs(sx).sum())
        pairs_y += float(np.abs(sy).sum())
    denom = math.sqrt(pairs_x * pairs_y)  # every pair was counted twice, in num and in both sums alike
    return num / denom if denom > 0 else float("nan")


def _check_pair(x: Any, y: Any, who: str) -> None:
    if np.size(x) != np.size(y) or np.size(x) < 2:
        raise ValueError(f"{who}: expected two sequences of the same length >= 2, got {np.size(x)} and {np.size(y)}")


def optimal_values(steps_to_go: np.ndarray, gamma: float) -> np.ndarray:
    """V* = -(1 - gamma^d) / (1 - gamma): the value of being d steps from the goal under reward -1 per step."""
    return -(1.0 - gamma ** np.asarray(steps_to_go, np.float64)) / (1.0 - gamma)


def trajectory_metrics(values: np.ndarray, gamma: float) -> dict[str, float]:
    """Numbers for one trajectory's values (T,) of states t = 0..T-1, the goal being one step after the last
    (correlations 0 for constant values, every number NaN for values holding a NaN: the module docstring)."""
    values = np.asarray(values, np.float64)
    t = np.arange(values.size, dtype=np.float64)
    v_star = optimal_values(values.size - t, gamma)
    resid = values - v_star
    total = float(((v_star - v_star.mean()) ** 2).sum())
    flat = bool(np.all(values == values.flat[0]))  # no rank order with time (False with a NaN)
    out = {"spearman": 0.0 if flat else spearman(values, t), "kendall": 0.0 if flat else kendall_tau_b(values, t),
           "increasing": float(np.mean(np.diff(values) > 0)), "mse": float(np.mean(resid ** 2)),
           "r2": 1.0 - float((resid ** 2).sum()) / total if total > 0 else float("nan"),
           "pearson_vstar": 0.0 if flat else pearson(values, v_star), "value_range": float(values.max() - values.min()),
           "length": int(values.size)}
    if np.isnan(values).any():
        out.update({k: float("nan") for k in out if k != "length"})
    return out


# --------------------------------------------------------------------------------------------- probe
def _ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge weights and intercept; the dual form X^T (X X^T + alpha I)^-1 y (the same solution) when there
    are more features than rows, e.g. raw pixels."""
    mean_y = y.mean()
    n, dim = x.shape
    if dim > n:
        w = x.T @ np.linalg.solve(x @ x.T + alpha * np.eye(n), y - mean_y)
    else:
        w = np.linalg.solve(x.T @ x + alpha * np.eye(dim), x.T @ (y - mean_y))
    return w, float(mean_y)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else float("nan")


def ridge_probe(features: Sequence[np.ndarray], targets: Sequence[np.ndarray], train: Sequence[int],
                test: Sequence[int], alphas: Sequence[float] = DEFAULT_ALPHAS, folds: int = 4) -> dict[str, Any]:
    """Ridge regression from features (one (T_i, D) array per trajectory) to targets (T_i,), split by trajectory.

    Features are standardised with the training trajectories' mean/std; alpha is picked by k-fold
    cross-validation over training *trajectories* (MSE); returns test R^2, MAE, RMSE and the chosen alpha.
    """
    if not train or not test or set(train) & set(test):
        raise ValueError(f"ridge_probe: need disjoint, non-empty train/test trajectory ids, got {list(train)} / {list(test)}")
    x_tr = np.concatenate([features[i] for i in train]).astype(np.float64)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8

    def stack(ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return ((np.concatenate([features[i] for i in ids]) - mu) / sd,
                np.concatenate([targets[i] for i in ids]).astype(np.float64))

    k = max(2, min(folds, len(train)))
    fold_of = {tid: j % k for j, tid in enumerate(train)}
    cv = {}
    for alpha in alphas:
        errors = []
        for f in range(k):
            fit_ids = [i for i in train if fold_of[i] != f]
            held = [i for i in train if fold_of[i] == f]
            if not fit_ids or not held:
                continue
            (xf, yf), (xh, yh) = stack(fit_ids), stack(held)
            w, b = _ridge_fit(xf, yf, alpha)
            errors.append(float(np.mean((xh @ w + b - yh) ** 2)))
        cv[alpha] = float(np.mean(errors)) if errors else float("inf")
    best = min(cv, key=cv.get)
    (xa, ya), (xt, yt) = stack(list(train)), stack(list(test))
    w, b = _ridge_fit(xa, ya, best)
    pred = xt @ w + b
    return {"r2": _r2(yt, pred), "mae": float(np.mean(np.abs(pred - yt))), "rmse": float(np.sqrt(np.mean((pred - yt) ** 2))),
            "alpha": float(best), "train_trajectories": len(train), "test_trajectories": len(test),
            "test_states": int(yt.size), "target_std": float(yt.std())}


def split_trajectories(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of trajectory ids 0..n-1 into (train, test), each non-empty."""
    if n < 2:
        raise ValueError(f"the linear probe needs at least 2 trajectories, got {n}")
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_test:].tolist()), sorted(order[:n_test].tolist())


# --------------------------------------------------------------------------------------------- data
@dataclass
class Trajectory:
    """One robot episode as frames (T, H, W, 3) uint8; the last frame is the goal."""

    name: str
    task: str
    frames: np.ndarray


def select_trajectories(path: str | os.PathLike, mask: str | None = None, tasks: Sequence[str] | None = None,
                        clean_only: bool = True, successful_only: bool = True,
                        max_trajectories: int | None = None) -> list[str]:
    """Demo names of ``path`` to diagnose: in ``mask`` and ``tasks``, clean expert episodes that succeeded
    (``ep_meta`` kind / success, when recorded), at most ``max_trajectories`` spread evenly over the tasks."""
    from robopretrain.data.hdf5 import select_demos

    info = read_info(path)
    names = select_demos(info, mask=mask, tasks=list(tasks) if tasks else None)
    chosen = []
    for name in names:
        meta = info.demo(name).ep_meta
        if clean_only and meta.get("kind", "clean") != "clean":
            continue
        if successful_only and not meta.get("success", True):
            continue
        chosen.append(name)
    if not chosen:
        raise ValueError(f"{path}: no demos left to diagnose (mask={mask}, tasks={tasks}, clean_only={clean_only}, "
                         f"successful_only={successful_only})")
    if max_trajectories is not None and len(chosen) > max_trajectories:
        by_task: dict[str, list[str]] = {}
        for name in chosen:
            by_task.setdefault(info.demo(name).task, []).append(name)
        picked: list[str] = []
        while len(picked) < max_trajectories:
            for task_names in by_task.values():
                if task_names and len(picked) < max_trajectories:
                    picked.append(task_names.pop(0))
        chosen = sorted(picked, key=lambda n: int(n.split("_")[1]))
    return chosen


def load_trajectories(path: str | os.PathLike, demos: Sequence[str], image_size: int,
                      key: str = "agentview_image") -> list[Trajectory]:
    """Frames of ``demos`` at ``image_size`` (obs frames plus the final next_obs frame, the goal, when it is a new
    frame: :class:`video_pretrain.data.HDF5ImageSource`)."""
    source = HDF5ImageSource(path, image_size, key=key, demos=list(demos), include_final=True, max_cache_bytes=0,
                             strict=True)
    out = []
    for i, name in enumerate(source.demo_names):
        n = source.video_length(i)
        if n < 3:
            continue
        out.append(Trajectory(name, source.video_tasks[i], source.frames(i, np.arange(n))))
    source.close()
    if len(out) < 2:
        raise ValueError(f"{path}: fewer than 2 trajectories with >= 3 frames to diagnose")
    return out


def load_clip_trajectories(path: str | os.PathLike, image_size: int,
                           video_ids: Sequence[int] | None = None, center_crop: bool = True) -> list[Trajectory]:
    """Clips of a video folder (``manifest.csv``) as trajectories, the last frame being the goal; ``task`` is
    the clip's text. ``video_ids`` picks clips by their id in the folder (default: every clip). ``center_crop``:
    how non-square clips become square, as the encoder's stage-1 run read them (``data.stretch=true``: False)."""
    from video_pretrain.data import ManifestSource

    source = ManifestSource(path, image_size, max_cache_bytes=0, strict=True, center_crop=center_crop)
    ids = range(source.num_videos) if video_ids is None else [int(i) for i in video_ids]
    out = []
    for i in ids:
        n = source.video_length(i)
        if n >= 3:
            out.append(Trajectory(source.video_name(i), source.video_text(i), source.frames(i, np.arange(n))))
    if len(out) < 2:
        raise ValueError(f"{path}: fewer than 2 clips with >= 3 frames to diagnose")
    return out


# --------------------------------------------------------------------------------------------- values
class PixelFeatures(nn.Module):
    """No encoder: the flattened frame in [0, 1] (3 * H * W features), for the raw-pixel baseline."""

    def __init__(self, image_size: int):
        super().__init__()
        self.input_spec = {"image_size": int(image_size)}
        self.out_dim = 3 * int(image_size) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@dataclass
class EncoderEntry:
    """One encoder to diagnose: its label, the encoder, ICVF heads (or None: feature distance), facts."""

    label: str
    encoder: nn.Module
    heads: nn.Module | None
    info: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.encoder.input_spec["image_size"])


def default_label(spec: str) -> str:
    """An encoder's label without ``--labels``: ``random`` / ``pixels`` as given, else the stage-1 run folder's name
    (``RUN`` for ``RUN`` or its encoder folder ``RUN/encoder``; an encoder folder of another name, ``output=``'s,
    by its own name)."""
    if spec in (RANDOM, PIXELS):
        return spec
    path = Path(spec)
    return (path.parent.name if path.name == "encoder" else path.name) or str(spec)


def load_entries(specs: Sequence[str], labels: Sequence[str] | None, device: torch.device, random_encoder: str,
                 image_size: int, seed: int) -> list[EncoderEntry]:
    """Encoders from checkpoint folders, ``random`` (``random_encoder`` at ``image_size``, seeded) or
    ``pixels`` (raw frames at ``image_size``, no encoder)."""
    if labels is not None and len(labels) != len(specs):
        raise ValueError(f"--labels: {len(labels)} labels for {len(specs)} encoders; give one per encoder")
    entries = []
    for j, spec in enumerate(specs):
        label = labels[j] if labels is not None else default_label(spec)
        if spec == PIXELS:
            entries.append(EncoderEntry(label, PixelFeatures(image_size).to(device), None,
                                        {"path": PIXELS, "objective": "none (raw pixels)", "steps": 0, "encoder": PIXELS}))
            continue
        if spec == RANDOM:
            torch.manual_seed(seed)
            enc = make_encoder(random_encoder, image_size).to(device).eval()
            entries.append(EncoderEntry(label, enc, None, {"path": RANDOM, "objective": "none", "steps": 0,
                                                           "encoder": random_encoder}))
            continue
        pre = load_pretrained(spec, map_location=device)
        extra = pre.meta.get("extra", {})
        info = {"path": str(spec), "objective": pre.objective, "steps": extra.get("steps"), "encoder": pre.meta["encoder"]}
        trained_gamma = ((extra.get("value_heads") or {}).get("config") or {}).get("gamma")
        if pre.heads is not None and trained_gamma is not None:
            info["gamma"] = float(trained_gamma)  # the discount its ICVF value heads were trained with
        entries.append(EncoderEntry(label, pre.encoder, pre.heads, info))
    if len({e.label for e in entries}) != len(entries):
        raise ValueError(f"encoder labels must differ, got {[e.label for e in entries]}; pass --labels")
    return entries


@torch.no_grad()
def embed(encoder: nn.Module, frames: np.ndarray, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Encoder features (T, D) of uint8 frames (T, H, W, 3)."""
    chunks = []
    for lo in range(0, len(frames), batch_size):
        x = to_float_images(torch.from_numpy(frames[lo:lo + batch_size]).to(device))
        chunks.append(encoder(x))
    return torch.cat(chunks)


@torch.no_grad()
def values_to_goal(features: torch.Tensor, heads: nn.Module | None) -> np.ndarray:
    """Values of states features[:-1] for the goal features[-1]: ICVF V(s, g, g) (mean of heads) or -||phi(s) - phi(g)||."""
    states, goal = features[:-1], features[-1:].expand(len(features) - 1, -1)
    if heads is None:
        return (-torch.linalg.vector_norm(states - goal, dim=-1)).cpu().numpy().astype(np.float64)
    return heads(states, goal, goal).mean(dim=0).cpu().numpy().astype(np.float64)


def _summary(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = [k for k in rows[0] if k != "length"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}  # a NaN trajectory's NaN shows (module docstring)
    std = {k: float(np.std([r[k] for r in rows])) for k in keys}
    return mean, std


def diagnose(entries: Sequence[EncoderEntry], trajectories_by_size: dict[int, list[Trajectory]], gamma: float,
             device: torch.device, probe_test_fraction: float = 0.3, seed: int = 0,
             progress: bool = True) -> dict[str, Any]:
    """Every number of the report, per encoder entry (see the module docstring)."""
    results: dict[str, Any] = {}
    for entry in entries:
        trajs = trajectories_by_size[entry.image_size]
        train_ids, test_ids = split_trajectories(len(trajs), probe_test_fraction, seed)
        feats, values, dist_values = [], [], []
        for traj in tqdm(trajs, desc=f"diagnose {entry.label}", unit="traj", disable=not progress, leave=False):
            f = embed(entry.encoder, traj.frames, device)
            feats.append(f[:-1].cpu().numpy())
            values.append(values_to_goal(f, entry.heads))
            if entry.heads is not None:
                dist_values.append(values_to_goal(f, None))
        kinds = [(entry.label, values, "icvf_value" if entry.heads is not None else "feature_distance")]
        if entry.heads is not None:
            kinds.append((f"{entry.label}:features", dist_values, "feature_distance"))
        probe = ridge_probe(feats, [len(v) - np.arange(len(v), dtype=np.float64) for v in values], train_ids, test_ids)
        for label, vals, kind in kinds:
            rows = [{"name": t.name, "task": t.task, **trajectory_metrics(v, gamma)} for t, v in zip(trajs, vals)]
            numbers = [{k: r[k] for k in r if k not in ("name", "task")} for r in rows]
            mean, std = _summary(numbers)
            per_task = {task: _summary([n for n, r in zip(numbers, rows) if r["task"] == task])[0]
                        for task in dict.fromkeys(r["task"] for r in rows)}
            results[label] = {**entry.info, "value": kind, "image_size": entry.image_size, "mean": mean, "std": std,
                              "per_task": per_task, "probe": probe, "per_trajectory": rows,
                              "curves": [v.tolist() for v in vals]}
    return results


# --------------------------------------------------------------------------------------------- report
def format_task_table(results: dict[str, Any]) -> str:
    """A markdown table of Spearman rho / fraction increasing per task (columns) and encoder (rows)."""
    tasks = list(next(iter(results.values()))["per_task"])
    lines = ["| encoder | " + " | ".join(f"{t}: rho / frac. increasing" for t in tasks) + " |",
             "|" + "---|" * (len(tasks) + 1)]
    for label, r in results.items():
        cells = [f"{r['per_task'][t]['spearman']:.3f} / {r['per_task'][t]['increasing']:.3f}" for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(results: dict[str, Any]) -> str:
    """A markdown table: one row per encoder (mean +- std over trajectories; value range = max - min of the
    values along a trajectory, mean over trajectories)."""
    head = ("| encoder | value | Spearman rho | Kendall tau | frac. increasing | MSE vs V* | R^2 vs V* | "
            "value range | probe R^2 (d) | probe MAE (steps) |")
    lines = [head, "|" + "---|" * 10]
    for label, r in results.items():
        m, s, p = r["mean"], r["std"], r["probe"]
        lines.append(f"| {label} | {r['value']} | {m['spearman']:.3f} ± {s['spearman']:.3f} | {m['kendall']:.3f} ± "
                     f"{s['kendall']:.3f} | {m['increasing']:.3f} | {m['mse']:.4g} | {m['r2']:.3g} | {m['value_range']:.3g} | "
                     f"{p['r2']:.3f} | "
                     f"{p['mae']:.1f} |")
    return "\n".join(lines)


def plot_values(results: dict[str, Any], path: Path, num_curves: int = 4, gamma: float = 0.99,
                title: str | None = None) -> Path:
    """Value-vs-time curves (min-max normalised per trajectory) of a few trajectories, one panel per encoder;
    the panel title gives the mean Spearman rho and the mean raw value range (max - min along a trajectory),
    since normalising stretches an almost flat curve as much as a steep one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.0), sharey=True, squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, label in zip(axes[0], labels):
        r = results[label]
        picks = np.linspace(0, len(r["curves"]) - 1, min(num_curves, len(r["curves"]))).round().astype(int)
        for c, j in enumerate(dict.fromkeys(picks.tolist())):
            v = np.asarray(r["curves"][j])
            v_star = optimal_values(len(v) - np.arange(len(v)), gamma)
            ax.plot(_minmax(v), color=colors[c % 10], lw=1.4, label=r["per_trajectory"][j]["task"])
            ax.plot(_minmax(v_star), color=colors[c % 10], lw=0.8, ls="--", alpha=0.6)
        ax.set_title(f"{label}\nrho={r['mean']['spearman']:.2f}, raw range={r['mean']['value_range']:.2g}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("value (min-max per trajectory)")
    axes[0][0].legend(fontsize=6, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:  # savefig picks the format from the suffix
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _minmax(v: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(v)), float(np.max(v))
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def discount_for(entries: Sequence[EncoderEntry], given: float | None) -> float:
    """The discount of V*: ``given`` (``--gamma``), else the one the ICVF value heads were trained with (they must
    agree), else 0.99. A given discount other than an ICVF encoder's own is allowed with a warning: its MSE and R2
    against V* then compare values of another discount (the rank metrics do not depend on it)."""
    trained = {e.label: e.info["gamma"] for e in entries if "gamma" in e.info}
    if given is None:
        if len(set(trained.values())) > 1:
            raise ValueError(f"the ICVF encoders were trained with different discounts {trained}; pass --gamma")
        return next(iter(trained.values()), 0.99)
    for label, gamma in trained.items():
        if gamma != given:
            warnings.warn(f"--gamma {given}: encoder {label!r} was trained with gamma {gamma}; its MSE and R2 against "
                          "V* compare values of another discount", stacklevel=2)
    return float(given)


def refuse_videos(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` for stage-1 video data (a video file, a folder with a manifest or of clips): ``--data``
    takes robot trajectories (a robomimic file or another dataset format); clips go through
    :func:`load_clip_trajectories`."""
    p = Path(path)
    video = p.is_file() and p.suffix.lower() in (*VIDEO_SUFFIXES, ".csv")  # a clip, or a manifest of any name
    folder = p.is_dir() and ((p / MANIFEST_NAME).is_file() or any(c.suffix.lower() in VIDEO_SUFFIXES
                                                                   for c in p.iterdir()))
    if video or folder:
        raise ValueError(f"--data {p}: stage-1 video data; diagnose reads robot trajectories (a robomimic HDF5 file, "
                         "or a LeRobot / Minari / D4RL / OGBench dataset), whose last frame is the goal; clips are "
                         "diagnosed from Python: video_pretrain.diagnose.load_clip_trajectories(folder, image_size)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole diagnostic from parsed arguments; writes JSON and PNG into ``args.out``."""
    try:
        device = resolve_device(args.device)
    except ValueError as err:  # said in the config's words (device=...): this command's flag is --device
        raise ValueError(str(err).split(": ", 1)[-1].replace("device=", "--device ")) from None
    refuse_videos(args.data)
    args.data = str(as_robomimic(args.data))  # a LeRobot / Minari / D4RL / OGBench dataset: its converted copy
    entries = load_entries(args.encoders, args.labels, device, args.random_encoder, args.image_size, args.seed)
    args.gamma = discount_for(entries, args.gamma)
    demos = select_trajectories(args.data, args.mask, args.tasks, clean_only=not args.all_episodes,
                                successful_only=not args.all_episodes, max_trajectories=args.max_trajectories)
    if len(demos) < 2:
        narrowed = [f"--{k.replace('_', '-')}" for k in ("mask", "tasks", "max_trajectories") if getattr(args, k)]
        raise ValueError(f"{args.data}: {len(demos)} trajectory(ies) selected, at least 2 are needed" + (
            f" ({', '.join(narrowed)} narrow the selection)" if narrowed else "") + (
            "; --all-episodes also uses the noisy and failing ones (default: clean successes only)"
            if not args.all_episodes else ""))
    stored = read_info(args.data).obs_specs.get(args.key, ((), None))[0][:2]
    for entry in entries:  # stage 2 refuses an encoder of another size than the cameras': said, not done silently
        if entry.info.get("path") not in (RANDOM, PIXELS) and len(stored) == 2 \
                and tuple(stored) != (entry.image_size, entry.image_size):
            warnings.warn(f"encoder {entry.label!r} reads {entry.image_size} px frames; {args.data}'s {args.key} "
                          f"frames are {stored[0]}x{stored[1]} and are resized to {entry.image_size} px for it here "
                          f"(stage 2 would refuse this pair without data.image_size={entry.image_size})", stacklevel=2)
    by_size = {size: load_trajectories(args.data, demos, size, args.key) for size in {e.image_size for e in entries}}
    results = diagnose(entries, by_size, args.gamma, device, args.probe_test_fraction, args.seed, not args.no_progress)
    out = Path(args.out)
    report = {"data": str(args.data), "key": args.key, "mask": args.mask, "tasks": args.tasks, "gamma": args.gamma,
              "trajectories": [{"name": t.name, "task": t.task, "frames": len(t.frames)} for t in next(iter(by_size.values()))],
              "encoders": results}
    write_json_atomic(out / "diagnostics.json", report, indent=1)
    plot_values(results, out / "values.png", args.plot_trajectories, args.gamma)
    print(format_table(results))
    print()
    print(format_task_table(results))
    print(f"wrote {out / 'diagnostics.json'} and {out / 'values.png'}")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m video_pretrain.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="robomimic HDF5 file of robot trajectories (e.g. the target tasks), "
                   "or a LeRobot / Minari / D4RL / OGBench dataset (read through its converted copy)")
    p.add_argument("--encoders", nargs="+", required=True,
                   help="encoder checkpoint folders, 'random' (random init) or 'pixels' (raw-pixel distance)")
    p.add_argument("--labels", nargs="+", default=None,
                   help="one label per encoder (default: the run folder's name; an output= folder's own name)")
    p.add_argument("--key", default="agentview_image", help="image observation key")
    p.add_argument("--mask", default=None, help="mask of the file to use (e.g. valid), default every demo")
    p.add_argument("--tasks", nargs="+", default=None, help="task names to use, default every task")
    p.add_argument("--all-episodes", action="store_true", help="also noisy/failing episodes (default: clean successes)")
    p.add_argument("--max-trajectories", type=int, default=None, help="at most this many trajectories (spread over tasks)")
    p.add_argument("--gamma", type=_discount, default=None,
                   help="discount of V* = -(1 - gamma^d) / (1 - gamma) (default: the ICVF encoders' own, else 0.99)")
    p.add_argument("--random-encoder", default="small_conv", help="encoder name for 'random'")
    p.add_argument("--image-size", type=int, default=64, help="image size for 'random' and 'pixels'")
    p.add_argument("--probe-test-fraction", type=_fraction, default=0.3,
                   help="share of trajectories the probe is tested on, in (0, 1)")
    p.add_argument("--plot-trajectories", type=int, default=4, help="curves per encoder in values.png")
    p.add_argument("--out", default="outputs/video_pretrain/diagnose", help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _in_open_unit_interval(what: str) -> Callable[[str], float]:
    """An argparse type: a number in (0, 1), refused as ``<value>; expected <what> in (0, 1)``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"{value:g}; expected {what} in (0, 1)")
        return value

    return parse


# --probe-test-fraction (0 or 1 leaves the probe's train or test part one trajectory); --gamma (at 1 or more
# V* = -(1 - gamma^d) / (1 - gamma) is no discounted value)
_fraction, _discount = _in_open_unit_interval("a share"), _in_open_unit_interval("a discount")


@friendly_errors(rerun=RERUN_STARTS_OVER)
def main(argv: Sequence[str] | None = None) -> None:
    """The command line: bad input (a missing file, too few trajectories) is one ``error:`` line and exit code 2."""
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
