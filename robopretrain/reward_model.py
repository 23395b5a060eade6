"""Reward learning from preferences: segment pairs, a teacher's labels, an ensemble of reward nets trained with the
Bradley-Terry loss, and a relabelled copy of the dataset for any offline algorithm.

``python -m robopretrain.reward_model data.path=demos.hdf5`` (Hydra, ``configs/reward_model.yaml``), or :func:`run`:

1. **Pairs of segments** of ``teacher.segment_length`` consecutive steps of the file's demos (the ``data`` group's
   ``mask`` / ``tasks`` selection), which the scripted teacher draws uniformly from the demos at least a segment
   long (a shorter demo still counts in the observation statistics and is relabelled). A selected demo of fewer than 2 steps (the data contract's minimum) is refused, as in stages 2 and
   3; ``data.skip_short_demos=true`` leaves such demos out (logged) and the relabelled copy keeps them as they are.
2. **Labels**: ``labels.path`` names a file of human labels (format below); without one, the **scripted teacher**
   (B-Pref, Lee et al. 2021) labels the pairs by the segments' true returns (the sum of the stored rewards: the env's
   success signal, or its progress where the data's reward is dense): 1 when segment a's return exceeds b's by more
   than ``tie_margin``, 0 when b's exceeds a's, else a tie (0.5); each non-tie label is flipped with probability
   ``noise`` (the "mistake" teacher). The labels are written to ``<run>/labels.csv`` in the human format. A
   reward-free file (demos without ``rewards``) needs human labels; its relabelled copy (5.) has rewards.
3. **The ensemble**: ``model.ensemble`` MLPs ``r_e(s, a) = tanh(MLP_e(features(s) ++ a))`` (PEBBLE, Lee et al.
   2021: bounded outputs, an ensemble of independently initialised members, each drawing its own batches) over the
   same observation features as the agents (:class:`~robopretrain.nets.obs_encoder.ObsEncoder`: low-dim parts
   normalised by the data's statistics, the task one-hot) and the actions in ``[-1, 1]`` (a file in the robot's own
   units is rescaled per dimension as stage 2 does, ``data.actions=auto``, and the model records those units).
   Loss per member (Christiano et al. 2017, eq. 1; ties as
   0.5 targets)::

       P[a > b] = exp(sum_t r(a_t)) / (exp(sum_t r(a_t)) + exp(sum_t r(b_t))) = sigmoid(R_a - R_b)
       loss     = -mean( y log P[a > b] + (1 - y) log(1 - P[a > b]) )             (:func:`bradley_terry_loss`)

4. **Agreement** with held-out labels (``labels.held_out`` of the distinct pairs, every row of a held-out pair out
   of training: :func:`held_out_split`; 0 holds none out and measures nothing): the fraction of non-tie
   held-out labels whose preferred segment has the larger ensemble-mean return, the held-out Bradley-Terry loss,
   and for the scripted teacher the same agreement with its noise-free labels. Written to ``<run>/report.json``.
5. **Relabelling**: a copy of the whole file (``relabel.output``, default ``<run>/relabelled.hdf5``; checked at
   start-up: not the input file) in which every demo's (of 2 or more steps: no stage reads a shorter one; such a
   demo keeps its stored content) ``rewards`` are the ensemble mean ``mean_e r_e(s, a)``, optionally normalised over the file
   (``relabel.normalize``: ``none``, ``standard`` = zero mean and unit std, ``minmax`` = [0, 1]); everything else is
   byte-for-byte the same. Train on it with any offline algorithm through ``data.path``; the learned reward is
   dense, so turn the sparse-reward transform off, e.g. ``algo=iql algo.reward_scale=1 algo.reward_bias=0
   algo.sparse_reward=false`` (the keys of CQL / Cal-QL / IQL / TD3+BC / AWAC / ReBRAC / BCQ / POR; the Decision
   Transformer reads the rewards as given and has no such keys; BC ignores rewards). The copy's ``env_args`` record
   ``learned_reward``: the source file, ``normalize`` with its ``offset`` and ``scale`` (``r' = (r - offset) /
   scale``, :func:`normalization_affine`) and the ensemble's ``model_digest`` (:func:`model_digest`). Stage 3 rewards
   its online steps with the same function when given the model (``reward_model=<run>/reward_model.pt``,
   :mod:`finetune.learned_reward`, PEBBLE-style: the ensemble is not trained further online); without it, with the
   target's own reward, and then it refuses the copy in its batches (``online.offline_ratio=0`` aside:
   :func:`robopretrain.build.refuse_learned_reward_online`).

The run folder (``output_dir``, default ``outputs/reward_model/seed<seed>``, which does not depend on the data) holds
one run's ``labels.csv`` (scripted teacher), ``reward_model.pt``, ``relabelled.hdf5`` and ``report.json``, whose
``fingerprint`` (:mod:`robopretrain.run_fingerprint`: the data and label files' content, every setting but where
outputs go and the thread count) says which run. A folder holding a finished run with other data, labels or
settings is refused at start-up with one line naming what changed, as stage 2 refuses to resume another run's
checkpoint (``resume=false`` starts fresh there, removing the earlier run's files; or choose another
``output_dir``); the same run again replaces its files (nothing is resumed: the ensemble trains in one go).

Human label file (``labels.path``): CSV with the header ``demo_a,start_a,demo_b,start_b,length,label``, JSON (a
``.json`` file: a list of objects with those keys) or JSON lines (``.jsonl`` / ``.ndjson``: one such object per line, as
annotation tools export them; blank lines are skipped). ``demo_*`` are the file's demo names (``demo_3``; ``python -m
robopretrain.data.inspect FILE --demos`` lists them with their lengths), ``start_*`` the first step of the segment
inside the demo (0-based), ``length`` the segment length (the same for both segments and for every row of a file),
``label`` the probability that segment a is preferred: 1 (a better), 0 (b better), 0.5 (equally good; ties). A pair the
labeller could not judge ("cannot tell") is left out of the file: it says nothing about which segment is better, while
0.5 says they are equally good. Every problem is a ``ValueError`` naming the file and the CSV line (the header is line
1), JSON item (from 1) or JSON-lines line (from 1).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from robopretrain import build, run_fingerprint
from robopretrain.cli import CONFIG_DIR, RERUN_STARTS_OVER, config_folder, friendly_errors, run_hydra
from robopretrain.config_checks import validate_reward_model_config
from robopretrain.data.dataset import (FILE_UNITS, check_action_range, data_action_units, file_action_units,
                                      selected_demos, warn_inner_terminals)
from robopretrain.data.hdf5 import LEARNED_REWARD_KEY, DatasetInfo, Transitions, load_transitions, read_info
from robopretrain.data.keys import TASK_ID
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.action_units import ActionNormalization, reexpress
from robopretrain.files import atomic_file, run_folder_lock, torch_load_problem, torch_save
from robopretrain.nets.mlp import build_mlp
from robopretrain.nets.obs_encoder import ObsEncoder, normalization_stats

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("demo_a", "start_a", "demo_b", "start_b", "length", "label")
NORMALIZE = ("none", "standard", "minmax")
# the files of a run folder, replaced together by the next run there (robopretrain.run_fingerprint decides whether
# it may: a finished run with other data, labels or settings is refused unless resume=false)
RUN_FILES = ("labels.csv", "reward_model.pt", "relabelled.hdf5", "report.json")
# settings a rerun into the same folder may change: they do not change the labels, the model or the copy's rewards
RERUN_CHANGES = (*run_fingerprint.HARMLESS_KEYS, "relabel.enabled")
TIES_WARNED = 0.5  # a label set with more than this share of ties is warned about (all training labels ties: refused)
RELABEL_CHUNK = 4096  # transitions per forward pass when relabelling a file (memory only: rows are independent)


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class PreferenceLabel:
    """One labelled pair: segment a = ``demo_a[start_a : start_a + length]``, b likewise; ``label`` = P[a > b]."""

    demo_a: str
    start_a: int
    demo_b: str
    start_b: int
    length: int
    label: float
    origin: str = field(default="", compare=False, repr=False)  # where a label file wrote it ("line 4"), for errors


def read_labels(path: str | os.PathLike) -> list[PreferenceLabel]:
    """Labels from a CSV, JSON or JSON-lines file (module docstring; by the suffix: ``.json``, ``.jsonl`` /
    ``.ndjson``, else CSV); raises ``ValueError`` naming the file and, for every ill-formed row, its CSV line, JSON
    item or JSON-lines line (counted; the first :data:`MAX_BAD_ROWS_SHOWN` named)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels.path={path}: file not found")
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheets' "CSV UTF-8") is dropped
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            lines = exc.msg == "Extra data"  # one object per line: JSON lines under .json
            raise ValueError(f"{path}: not valid JSON: {exc}" + ("; one object per line is JSON lines: name the file "
                                                                 ".jsonl" if lines else "")) from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of objects with keys {list(LABEL_COLUMNS)}")
        rows = [(f"item {i + 1}", row) for i, row in enumerate(items)]
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append((f"line {i + 1}", json.loads(line)))
                except json.JSONDecodeError as exc:  # named with the other ill-formed rows below
                    rows.append((f"line {i + 1}", ValueError(f"not a JSON object ({exc.msg}, column {exc.colno})")))
    else:
        reader = csv.DictReader(text.splitlines())
        names = [str(n).strip() for n in reader.fieldnames or []]  # "a, b " as well as "a,b"
        if set(LABEL_COLUMNS) - set(names):
            json_like = text.lstrip().startswith(("{", "["))
            raise ValueError(f"{path}: expected a CSV header with {','.join(LABEL_COLUMNS)}, got {reader.fieldnames}"
                             + ("; this looks like JSON: name the file .json (a list of objects) or .jsonl (one "
                                "object per line)" if json_like else ""))
        reader.fieldnames = names
        rows = [(f"line {reader.line_num}", {k: v.strip() if isinstance(v, str) else v for k, v in row.items()})
                for row in reader]  # the header is line 1
    out: list[PreferenceLabel] = []
    errors: list[str] = []
    for where, row in rows:
        if isinstance(row, ValueError):  # a line that did not parse
            errors.append(f"{where}: {row}")
            continue
        try:
            out.append(_label_row(row, where, out[0].length if out else None))
        except ValueError as exc:
            errors.append(str(exc))
    if errors:  # every ill-formed row at once (the first few named): a spreadsheet is fixed in one pass
        raise ValueError(f"{path}: {errors[0]}" if len(errors) == 1 else
                         f"{path}: {len(errors)} of {len(rows)} rows are ill-formed: {_first_errors(errors)}")
    if not out:
        raise ValueError(f"{path}: no labels")
    return out


# how many ill-formed label rows an error names (it counts them all)
MAX_BAD_ROWS_SHOWN = 5


def _first_errors(errors: Sequence[str]) -> str:
    """The first :data:`MAX_BAD_ROWS_SHOWN` of ``errors`` joined by ``; ``, then how many more."""
    more = len(errors) - MAX_BAD_ROWS_SHOWN
    return "; ".join(errors[:MAX_BAD_ROWS_SHOWN]) + (f" (and {more} more)" if more > 0 else "")


def _label_row(row: Any, where: str, length: int | None) -> PreferenceLabel:
    """One row of a label file as a :class:`PreferenceLabel`; ``ValueError`` starting with ``where`` when it is
    ill-formed. ``length``: the segment length of the file's first good row (``None`` for none yet)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object with keys {list(LABEL_COLUMNS)}, got "
                         f"{type(row).__name__} {row!r:.80}")
    try:
        missing = [k for k in LABEL_COLUMNS if row.get(k) in (None, "")]
        if missing:
            raise ValueError(f"no value for {', '.join(missing)}")
        flags = [k for k in LABEL_COLUMNS if isinstance(row[k], bool)]
        if flags:  # JSON true / false: not a number a person meant (true would read as 1)
            raise ValueError(f"{', '.join(flags)} is true / false; expected numbers")
        lab = PreferenceLabel(str(row["demo_a"]), _column(row, "start_a", _whole), str(row["demo_b"]),
                              _column(row, "start_b", _whole), _column(row, "length", _whole),
                              _column(row, "label", float), where)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}; expected keys {list(LABEL_COLUMNS)}") from None
    if not 0.0 <= lab.label <= 1.0 or lab.length < 1 or min(lab.start_a, lab.start_b) < 0:
        raise ValueError(f"{where}: label must be in [0, 1] (1: a preferred, 0: b, 0.5: tie), "
                         f"length >= 1 and starts >= 0; got {dict(row)}")
    if (lab.demo_a, lab.start_a) == (lab.demo_b, lab.start_b) and lab.label != 0.5:
        raise ValueError(f"{where}: segment a and segment b are the same steps "
                         f"({lab.demo_a}[{lab.start_a}:{lab.start_a + lab.length}]) but the label prefers one "
                         f"({lab.label:g}); a segment can only tie with itself (0.5)")
    if length is not None and lab.length != length:
        raise ValueError(f"{where}: length {lab.length}, but the first row has {length}; every pair of "
                         "a label file must have one segment length (the ensemble compares summed rewards of "
                         "equally long segments)")
    return lab


def _column(row: Mapping[str, Any], key: str, parse: Any) -> Any:
    """``parse(row[key])``; its ``ValueError`` / ``TypeError`` names the column (``start_a: could not convert ...``)."""
    try:
        return parse(row[key])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key}: {exc}") from None


def _whole(value: Any) -> int:
    """An integer field of a label row: ``3``, ``"3"`` or ``3.0``; ``2.7`` or ``"x"`` raise ``ValueError``."""
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def write_labels(path: str | os.PathLike, labels: Sequence[PreferenceLabel]) -> Path:
    """Write labels as CSV (the human label format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LABEL_COLUMNS)
        for lab in labels:
            w.writerow([lab.demo_a, lab.start_a, lab.demo_b, lab.start_b, lab.length, lab.label])
    return path


def held_out_split(labels: Sequence[PreferenceLabel], fraction: float, rng: np.random.Generator,
                   where: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(held, train)``: ``round(fraction * P)`` of the ``P`` distinct pairs (a pair is its two
    segments in either order) drawn by ``rng.permutation(P)``, each with every row that labels it, so that no
    held-out pair is also trained on (a file listing a pair three times leaked two of them into training). With
    every pair labelled once this is ``rng.permutation(len(labels))``'s first rows. ``fraction`` 0: nothing held
    out (no agreement is measured). Pairs labelled more than once with different preferences (several annotators)
    are kept and warned about. Raises ``ValueError`` when the fraction leaves no pair to train on, or a positive
    fraction rounds to none held out."""
    groups: dict[frozenset, list[int]] = {}
    prefers_first: dict[frozenset, set[float]] = {}
    for i, lab in enumerate(labels):
        a, b = (lab.demo_a, lab.start_a), (lab.demo_b, lab.start_b)
        key = frozenset((a, b))
        groups.setdefault(key, []).append(i)
        first = min(a, b)  # the label as P[first segment preferred], whichever order the row wrote them in
        prefers_first.setdefault(key, set()).add(lab.label if a == first else 1.0 - lab.label)
    pairs = list(groups.values())
    if not 0.0 <= fraction < 1.0:  # (NaN and inf included, before they reach round())
        raise ValueError(f"labels.held_out={fraction:g}: the fraction of the distinct pairs held out must be in "
                         "[0, 1) (0: none held out)")
    n_held = int(round(fraction * len(pairs)))
    if n_held >= len(pairs) or (fraction > 0 and n_held == 0):
        raise ValueError(f"labels.held_out={fraction:g} holds out {n_held} of {len(pairs)} distinct pairs; choose a "
                         "fraction that leaves some for training and some held out (0: none held out)")
    repeated = sum(len(g) > 1 for g in pairs)
    disagree = sum(len(v) > 1 for v in prefers_first.values())
    if disagree:
        log.warning("%s: %d of %d pairs are labelled more than once with different preferences; all rows are kept "
                    "(the Bradley-Terry loss fits their average)", where, disagree, len(pairs))
    elif repeated:
        log.info("%s: %d of %d pairs are labelled more than once (held out or trained on together)", where,
                 repeated, len(pairs))
    order = rng.permutation(len(pairs))
    held = np.array([i for g in order[:n_held] for i in pairs[g]], dtype=np.int64)
    train = np.array([i for g in order[n_held:] for i in pairs[g]], dtype=np.int64)
    return held, train


# --------------------------------------------------------------------------- segments and the scripted teacher


def sample_pairs(lengths: Mapping[str, int], segment_length: int, num_pairs: int,
                 rng: np.random.Generator) -> list[tuple[str, int, str, int]]:
    """``num_pairs`` pairs ``(demo_a, start_a, demo_b, start_b)`` of segments drawn uniformly over all segment
    positions of the demos at least ``segment_length`` long. Raises ``ValueError`` when no demo is long enough."""
    if int(segment_length) < 1 or int(num_pairs) < 1:
        raise ValueError(f"teacher.segment_length={segment_length} and teacher.num_pairs={num_pairs}: both must be "
                         ">= 1")
    demos = [d for d, n in lengths.items() if n >= segment_length]
    if not demos:
        raise ValueError(f"no demo has {segment_length} steps (the longest has {max(lengths.values())}); lower "
                         "teacher.segment_length")
    counts = np.array([lengths[d] - segment_length + 1 for d in demos], dtype=np.int64)
    cum = np.cumsum(counts)
    flat = rng.integers(0, int(cum[-1]), size=(num_pairs, 2))
    which = np.searchsorted(cum, flat, side="right")
    starts = flat - np.concatenate([[0], cum[:-1]])[which]
    return [(demos[a], int(sa), demos[b], int(sb)) for (a, b), (sa, sb) in zip(which, starts)]


def teacher_label(return_a: float, return_b: float, tie_margin: float = 0.0) -> float:
    """The noise-free scripted label: 1 if ``R_a > R_b + tie_margin``, 0 if ``R_b > R_a + tie_margin``, else 0.5.
    Raises ``ValueError`` for a negative ``tie_margin`` (both tests hold for close returns: every label said "a
    preferred", a new user's finding)."""
    if not tie_margin >= 0.0:
        raise ValueError(f"teacher.tie_margin={tie_margin:g}: must be >= 0 (|R_a - R_b| <= tie_margin is a tie)")
    if return_a > return_b + tie_margin:
        return 1.0
    if return_b > return_a + tie_margin:
        return 0.0
    return 0.5


def noisy_labels(clean: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``clean`` labels with each non-tie label flipped (``1 - y``) with probability ``noise``; ties stay 0.5."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"teacher.noise must be in [0, 1], got {noise}")
    clean = np.asarray(clean, dtype=np.float64)
    flip = (rng.random(len(clean)) < noise) & (clean != 0.5)
    return np.where(flip, 1.0 - clean, clean)


def observed_flip_rate(clean: np.ndarray, labels: Sequence[float]) -> float:
    """The share of the teacher's non-tie labels ``clean`` ``(N,)`` that ``labels`` ``(N,)`` (the noisy ones) flipped;
    0.0 when every clean label is a tie (0.5: nothing to flip)."""
    clean = np.asarray(clean, dtype=np.float64)
    decided = clean != 0.5
    if not decided.any():
        return 0.0
    return float(np.mean(np.abs(clean - np.asarray(labels, dtype=np.float64))[decided]))


# --------------------------------------------------------------------------- the loss and the model


def bradley_terry_loss(return_a: torch.Tensor, return_b: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the Bradley-Terry preference ``P[a > b] = sigmoid(R_a - R_b)`` with targets ``label`` in
    [0, 1] (0.5: a tie); ``(...,)`` tensors, mean over all entries (Christiano et al. 2017, eq. 1)."""
    return F.binary_cross_entropy_with_logits(return_a - return_b, label.to(return_a.dtype).expand_as(return_a))


class RewardEnsemble(nn.Module):
    """``forward(obs parts (N, ...), actions (N, A))`` -> rewards ``(E, N)``, ``r_e = tanh(MLP_e(features ++ a))``."""

    def __init__(self, spec: ObsSpec, act_dim: int, *, ensemble: int = 3, hidden: Sequence[int] = (256, 256, 256),
                 stats: Mapping[str, Mapping[str, list[float]]] | None = None) -> None:
        super().__init__()
        if spec.rgb:
            raise ValueError("reward_model: cameras are not supported; use low-dim parts (obs.rgb=[])")
        if ensemble < 1:
            raise ValueError(f"model.ensemble must be >= 1, got {ensemble}")
        self.encoder = ObsEncoder(spec, stats=stats)
        self.act_dim = int(act_dim)
        self.nets = nn.ModuleList(build_mlp(self.encoder.out_dim + act_dim, 1, tuple(hidden)) for _ in range(ensemble))
        # the units of the actions it was trained on (a converted file's rescaled [-1, 1], None: the env's own);
        # "file": unknown (a model saved before they were recorded), other files' actions are taken as they are
        self.action_units: ActionNormalization | None | str = FILE_UNITS

    def forward(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor,
                member: int | None = None) -> torch.Tensor:
        """Rewards ``(E, N)`` of every member, or ``(1, N)`` of member ``member``."""
        x = torch.cat([self.encoder(obs), actions.float()], dim=-1)
        nets = self.nets if member is None else [self.nets[member]]
        return torch.stack([torch.tanh(net(x)).squeeze(-1) for net in nets])


# --------------------------------------------------------------------------- data


def _listed(names: Sequence[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


class SegmentData:
    """The selected demos' steps (``obs`` parts, actions, rewards) and where each demo starts in the flat arrays."""

    def __init__(self, trans: Transitions, spec: ObsSpec) -> None:
        self.obs = {k: torch.from_numpy(trans.obs[k]) for k in spec.low_dim_keys}
        if spec.num_tasks:
            self.obs[TASK_ID] = torch.from_numpy(np.asarray(trans.task_ids, dtype=np.int64))
        self.actions = torch.from_numpy(trans.actions)
        self.rewards = np.asarray(trans.rewards, dtype=np.float64)
        ids = np.asarray(trans.episode_ids)
        self.offset = {name: int(np.flatnonzero(ids == i)[0]) for i, name in enumerate(trans.demo_names)}
        self.lengths = {name: int((ids == i).sum()) for i, name in enumerate(trans.demo_names)}

    def indices(self, labels: Sequence[PreferenceLabel], where: str = "labels") -> tuple[np.ndarray, np.ndarray]:
        """Flat step indices of segments a and b, each ``(P, L)``; ``ValueError`` on a segment outside its demo."""
        ia, ib, errors = [], [], []
        for i, lab in enumerate(labels):
            row = lab.origin or f"label {i + 1}"
            for demo, start in ((lab.demo_a, lab.start_a), (lab.demo_b, lab.start_b)):
                if demo not in self.lengths:
                    named = f"demo_{demo}" if str(demo).isdigit() else None
                    hint = (f" (demos are named like {next(iter(self.lengths))!r}: did you mean {named!r}?)"
                            if named in self.lengths else f" (its demos: {_listed(list(self.lengths))})")
                    errors.append(f"{row}: demo {demo!r} is not in the selected data{hint}")
                elif start + lab.length > self.lengths[demo]:
                    errors.append(f"{row}: segment {demo}[{start}:{start + lab.length}] runs past the demo's "
                                  f"{self.lengths[demo]} steps")
            if not errors:
                steps = np.arange(lab.length)
                ia.append(self.offset[lab.demo_a] + lab.start_a + steps)
                ib.append(self.offset[lab.demo_b] + lab.start_b + steps)
        if errors:  # every segment outside its data at once (the first few named)
            raise ValueError(f"{where}: {errors[0]}" if len(errors) == 1 else
                             f"{where}: {len(errors)} segments of {len(labels)} pairs are outside the data: "
                             f"{_first_errors(errors)}")
        if len({len(a) for a in ia}) > 1:
            raise ValueError(f"{where}: every pair must have the same segment length")
        return np.stack(ia), np.stack(ib)

    def segment_returns(self, model: RewardEnsemble, idx: np.ndarray, member: int | None = None) -> torch.Tensor:
        """``(E, P)`` summed rewards of segments ``idx`` ``(P, L)`` under each member (``(1, P)``: one member)."""
        flat = torch.from_numpy(idx.reshape(-1))
        r = model({k: v[flat] for k, v in self.obs.items()}, self.actions[flat], member)
        return r.reshape(r.shape[0], *idx.shape).sum(-1)


# --------------------------------------------------------------------------- training, agreement, relabelling


@dataclass
class TrainSettings:
    """The ``model`` group."""

    ensemble: int = 3
    hidden: tuple[int, ...] = (256, 256, 256)
    lr: float = 3.0e-4
    batch_size: int = 128  # pairs per member per step
    steps: int = 1000


def segment_reward_sums(data: SegmentData, segments: Sequence[tuple[str, int]], length: int
                        ) -> dict[tuple[str, int], float]:
    """The true reward summed over each segment ``(demo, start)`` of ``length`` steps (what the scripted teacher
    compares), keyed by the segment."""
    cum = np.concatenate([[0.0], np.cumsum(data.rewards)])
    return {(d, s): float(cum[data.offset[d] + s + length] - cum[data.offset[d] + s]) for d, s in segments}


def train_ensemble(model: RewardEnsemble, data: SegmentData, labels: Sequence[PreferenceLabel],
                   settings: TrainSettings, seed: int = 0) -> list[float]:
    """Adam on the summed Bradley-Terry losses of the members, each member on its own random batches of pairs;
    returns the mean member loss every 100 steps."""
    ia, ib = data.indices(labels)
    y = torch.tensor([lab.label for lab in labels], dtype=torch.float32)
    opt = torch.optim.Adam(model.nets.parameters(), lr=settings.lr)
    rng = np.random.default_rng(seed)
    E, P = len(model.nets), len(labels)
    history = []
    for step in range(int(settings.steps)):
        pick = rng.integers(0, P, size=(E, min(settings.batch_size, P)))  # member e on its own batch e
        loss = sum(bradley_terry_loss(data.segment_returns(model, ia[pick[e]], e)[0],
                                      data.segment_returns(model, ib[pick[e]], e)[0], y[torch.from_numpy(pick[e])])
                   for e in range(E))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == settings.steps - 1:
            history.append(float(loss.detach()) / E)
    return history


@torch.no_grad()
def agreement(model: RewardEnsemble, data: SegmentData, labels: Sequence[PreferenceLabel]) -> dict[str, float]:
    """On ``labels``: the fraction of non-tie labels whose preferred segment has the larger ensemble-mean return
    (``agreement``; None when every label is a tie; a pair the model scores equal counts one half, whichever segment
    the label prefers, so a collapsed model scores 0.5, not 1 or 0 by which segment a file names first), the
    Bradley-Terry loss of the ensemble mean, and the label counts. No labels (nothing held out): ``agreement`` and
    ``bt_loss`` are None."""
    if not labels:
        return {"agreement": None, "pairs": 0, "non_tie": 0, "bt_loss": None}
    ia, ib = data.indices(labels)
    ra, rb = data.segment_returns(model, ia).mean(0), data.segment_returns(model, ib).mean(0)
    y = torch.tensor([lab.label for lab in labels], dtype=torch.float32)
    decided = y != 0.5
    right = torch.where(ra == rb, 0.5, ((ra > rb) == (y > 0.5)).float()) * decided
    n = int(decided.sum())
    return {"agreement": float(right.sum()) / n if n else None, "pairs": len(labels), "non_tie": n,
            "bt_loss": float(bradley_terry_loss(ra, rb, y))}


def check_relabelled_tasks(info: DatasetInfo, demos: Sequence[str], spec: ObsSpec, where: str) -> None:
    """Before training: :func:`relabel` scores every demo of the file (of 2 steps or more), the ``demos`` the model
    trains on or not. Raises ``ValueError`` when some are of a task whose slot lies outside the model's task one-hot
    (``spec.num_tasks``; the relabelling failed after training with torch's traceback, a new user's finding); warns
    when some are of tasks the model is not trained on (their rewards are its extrapolation)."""
    scored = [d for d in info.demos if d.num_samples >= 2]
    if spec.num_tasks:
        outside = sorted({(d.task_id, d.task) for d in scored if not 0 <= d.task_id < spec.num_tasks})
        if outside:
            raise ValueError(f"{where}: relabel scores every demo of the file, and task(s) "
                             f"{', '.join(f'{t!r} (slot {i})' for i, t in outside)} lie outside the model's task "
                             f"one-hot of {spec.num_tasks} (obs.num_tasks): set obs.num_tasks above "
                             f"{outside[-1][0]}, or relabel.enabled=false")
    chosen = set(demos)
    trained = {d.task for d in scored if d.name in chosen}
    others = sorted({d.task for d in scored if d.name not in chosen and d.task not in trained})
    if others:
        log.warning("%s: relabel scores every demo of the file, also those of task(s) %s the model is not trained "
                    "on (data.tasks / data.mask): their rewards are its extrapolation", where, ", ".join(others))


@torch.no_grad()
def relabel(src: str | os.PathLike, dst: str | os.PathLike, model: RewardEnsemble, spec: ObsSpec,
            normalize: str = "none", action_units: Any = None) -> Path:
    """Copy ``src`` to ``dst`` with every demo's ``rewards`` replaced by the ensemble mean (normalised over the file
    as ``normalize`` says; float32, or the file's own float64 / float32); every other dataset and attribute is
    unchanged. Demos of fewer than 2 steps, which no
    stage reads (a mask leaves them out), are copied as they are, with a warning. The model scores ``src``'s actions
    re-expressed in the units it was trained in (``action_units``, by default the model's ``action_units``;
    :func:`robopretrain.envs.action_units.reexpress`), so a file converted with other action bounds is scored
    right."""
    if normalize not in NORMALIZE:
        raise ValueError(f"relabel.normalize={normalize!r}; expected one of {list(NORMALIZE)}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"relabel.output={dst} is the input file; give another path")
    info = read_info(src)
    short = [d.name for d in info.demos if d.num_samples < 2]
    if short:  # no stage reads them (the contract's minimum is 2 steps), so their stored rewards can never be used
        log.warning("%s: %d demo(s) of fewer than 2 steps left as they are in the relabelled copy (%s%s): no stage "
                    "reads such a demo (read the copy with data.skip_short_demos=true or a mask of the others)", src,
                    len(short), ", ".join(short[:3]), ", ..." if len(short) > 3 else "")
    trans = load_transitions(src, list(spec.low_dim_keys), demos=[d.name for d in info.demos if d.num_samples >= 2],
                             action_range=False, low_dim=list(spec.low_dim_keys), info=info)
    units = getattr(model, "action_units", FILE_UNITS) if action_units is None else action_units
    if units != FILE_UNITS:
        trans.actions = reexpress(trans.actions, file_action_units(info), units, str(src), into="the reward model's")
    check_action_range(trans, str(src), "give relabel the units the model was trained in (action_units=, an "
                                        "ActionNormalization of the robot's low / high), or convert the file first")
    data = SegmentData(trans, spec)
    chunks = [slice(lo, lo + RELABEL_CHUNK) for lo in range(0, len(data.actions), RELABEL_CHUNK)]
    r = np.concatenate([model({k: v[c] for k, v in data.obs.items()}, data.actions[c]).mean(0).numpy()
                        for c in chunks]).astype(np.float64)
    offset, scale = normalization_affine(r, normalize)
    r = (r - offset) / scale
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    with h5py.File(tmp, "r+") as f:
        # recorded for the stages (robopretrain.build.warn_learned_reward): rewards in a learned reward's units
        env_args = dict(info.env_args or {})
        # offset, scale and the model's digest: stage 3 rewards its online steps with the same function
        # (finetune.learned_reward), and refuses another model's
        digest = model_digest(model) if isinstance(model, nn.Module) else None  # a plain function has no weights
        env_args[LEARNED_REWARD_KEY] = {"source": str(Path(src).resolve()), "normalize": normalize,
                                        "offset": offset, "scale": scale, "model_digest": digest}
        f["data"].attrs["env_args"] = json.dumps(env_args)
        for name, lo in data.offset.items():
            old = f[f"data/{name}"].get("rewards")  # None: a reward-free demo gets its first rewards
            attrs = dict(old.attrs) if old is not None else {}
            # the old dtype only where it holds a learned reward: int / bool rewards (a sparse {0, 1} file) would
            # round every ensemble mean to an integer, float16 to 3 digits
            keep = old is not None and np.issubdtype(old.dtype, np.floating) and old.dtype.itemsize >= 4
            dtype = old.dtype if keep else np.dtype(np.float32)
            new = r[lo: lo + data.lengths[name]].astype(dtype)
            if old is not None:
                del f[f"data/{name}/rewards"]
            ds = f.create_dataset(f"data/{name}/rewards", data=new)
            for k, v in attrs.items():
                ds.attrs[k] = v
    os.replace(tmp, dst)
    return dst


def normalization_affine(rewards: np.ndarray, normalize: str) -> tuple[float, float]:
    """``(offset, scale)`` with which ``relabel.normalize`` maps the ensemble-mean rewards of a whole file,
    ``r' = (r - offset) / scale``: ``none`` (0, 1); ``standard`` (mean, std): zero mean, unit std; ``minmax``
    (min, max - min): [0, 1]. A constant reward (spread <= 1e-8) keeps scale 1: the file's rewards become zeros, and
    an online reward off that constant is not multiplied by 1e8. Recorded in the relabelled file so that stage 3's
    online steps get the same transform (:mod:`finetune.learned_reward`)."""
    if normalize not in NORMALIZE:
        raise ValueError(f"relabel.normalize={normalize!r}; expected one of {list(NORMALIZE)}")
    r = np.asarray(rewards, dtype=np.float64)
    if normalize == "none":
        return 0.0, 1.0
    offset, spread = (r.mean(), r.std()) if normalize == "standard" else (r.min(), r.max() - r.min())
    return float(offset), float(spread) if spread > 1e-8 else 1.0


def model_digest(model: nn.Module) -> str:
    """SHA-256 (hex) of ``model``'s weights (every state-dict tensor's name, dtype, shape and bytes, in name order):
    the same ensemble gives the same digest whether it is in memory or loaded from ``reward_model.pt``."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())  # the ensemble is float32 (RewardEnsemble)
    return h.hexdigest()


def load_reward_model(path: str | os.PathLike) -> tuple[RewardEnsemble, ObsSpec]:
    """The ensemble a run saved (``<run>/reward_model.pt``) and its observation spec, e.g. to :func:`relabel`
    another file of the same robot and tasks. Raises ``ValueError`` for a file that cannot be loaded."""
    try:
        saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated files, foreign pickles
        raise ValueError(f"{path}: {torch_load_problem(exc)}") from None
    spec = ObsSpec.from_dict(saved["spec"])
    settings = saved["settings"]
    model = RewardEnsemble(spec, int(saved["act_dim"]), ensemble=int(settings["ensemble"]),
                           hidden=tuple(settings["hidden"]))
    model.load_state_dict(saved["state_dict"])
    if "action_normalization" in saved:
        model.action_units = ActionNormalization.from_mapping(saved["action_normalization"])
    # the task slots of its training data (None: written before they were recorded)
    model.task_slots = [int(t) for t in saved["task_slots"]] if "task_slots" in saved else None
    return model.eval(), spec


# --------------------------------------------------------------------------- the entry point


def tie_advice(data: SegmentData, teacher: Mapping[str, Any] | None) -> str:
    """What to do about labels that are mostly ties, for a message: with the scripted teacher (``teacher``, its
    settings) what makes it decide more pairs, from how it labels them (:func:`teacher_label`: summed stored rewards
    within ``tie_margin`` tie) and how sparse the selected steps' rewards are; with human labels (None) more
    decided labels."""
    if teacher is None:
        return "label more pairs with a preference (1 or 0): a tie says neither segment is better"
    length, margin = int(teacher["segment_length"]), float(teacher["tie_margin"])
    rewarded, steps = int(np.count_nonzero(data.rewards)), len(data.rewards)
    if rewarded == 0:  # nothing any segment length or pair count could tell apart
        return (f"every one of the {steps} selected steps has reward 0, so the scripted teacher (which compares "
                "segments' summed stored rewards) ties every pair whatever its settings: write rewards that mark "
                "success or progress into the file (e.g. 1 on each successful episode's last step; stage 2's "
                "data.rewards_from_success builds those from ep_meta only while it trains), or give human labels "
                "(labels.path)")
    demo_steps = sorted(data.lengths.values())
    why = (f"only {rewarded} of the {steps} selected steps have a non-zero reward (a sparse success signal), so most "
           f"{length}-step segments sum to the same" if rewarded < steps / 2 else
           f"many {length}-step segments' sums are that close")
    return (f"the scripted teacher ties two segments whose summed stored rewards differ by at most "
            f"teacher.tie_margin={margin:g} and {why}: use longer segments (teacher.segment_length; the selected demos' "
            f"median length is {demo_steps[len(demo_steps) // 2]} steps)" + (", a smaller teacher.tie_margin" if margin > 0 else "")
            + ", data whose rewards carry progress (a dense reward) or human labels (labels.path); more pairs "
            "(teacher.num_pairs) also give more decided ones")


def earlier_run(run_dir: Path, fingerprint: Mapping[str, Any], fresh: bool = False,
                inputs: Mapping[str, Any] | None = None) -> list[str]:
    """The files (:data:`RUN_FILES`) an earlier run left in ``run_dir``, which this run replaces. Raises
    ``ValueError`` (one line, naming what changed: :func:`robopretrain.run_fingerprint.differences`) when they are
    a finished run's (its ``report.json``) whose fingerprint differs from ``fingerprint`` (other data, labels or
    settings, the ``teacher`` group aside where either run read human labels: the folder would mix two runs), unless ``fresh`` (``resume=false``); a report written before
    fingerprints existed is replaced with a warning, an unfinished run's files (no report) are replaced. Also
    refuses an input (``inputs``: setting -> path, e.g. ``labels.path`` = ``<run>/labels.csv``) that is one of them."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    for key, value in (inputs or {}).items():
        if value and Path(str(value)).expanduser().resolve() in {(run_dir / n).resolve() for n in found}:
            raise ValueError(f"{key}={value} is a file of the earlier run in this run folder ({run_dir}), which this "
                             "run replaces; copy it elsewhere or write the new run to another output_dir")
    if "report.json" not in found or fresh:
        return found
    try:
        saved = json.loads((run_dir / "report.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved is None:
        log.warning("%s: holds a run written before run fingerprints existed (or an unreadable report.json); cannot "
                    "check that its data and settings are this run's: its files are replaced", run_dir)
        return found
    diffs = run_fingerprint.differences(saved, fingerprint)
    if any((fp.get("inputs") or {}).get("labels") for fp in (saved, fingerprint)):  # human labels: the teacher's
        diffs = [d for d in diffs if not d.startswith("teacher.")]  # settings were not read (labels: is listed)
    if diffs:
        raise ValueError(f"{run_dir}: holds a finished run with other settings or data "
                         f"({run_fingerprint.listed(diffs)}); to start fresh, set "
                         "resume=false (the earlier run's files are then removed) or choose another output_dir")
    return found


def remove_earlier_run(run_dir: Path, names: Sequence[str]) -> None:
    """Remove the files ``names`` of ``run_dir`` that :func:`earlier_run` found, logged, so that the folder holds
    this run's files only (a human-label run left the teacher's ``labels.csv`` of the earlier run beside its
    report)."""
    removed = [name for name in names if (run_dir / name).exists()]
    for name in removed:
        (run_dir / name).unlink()
    if removed:
        log.warning("%s: removed the earlier run's %s (this run replaces them)", run_dir, ", ".join(removed))


def relabel_output(cfg: DictConfig, run_dir: Path, data_path: str | os.PathLike) -> Path | None:
    """Where the relabelled copy goes (``relabel.output``, default ``<run>/relabelled.hdf5``); None when
    ``relabel.enabled=false``. Raises ``ValueError`` for an unknown ``relabel.normalize``, an output that is the input
    file ``data_path`` or a folder: checked at start-up, before the ensemble is trained."""
    if not cfg.relabel.get("enabled", True):
        return None
    normalize = str(cfg.relabel.get("normalize") or "none")
    if normalize not in NORMALIZE:
        raise ValueError(f"relabel.normalize={normalize!r}; expected one of {list(NORMALIZE)}")
    out = Path(str(cfg.relabel.output)).expanduser() if cfg.relabel.get("output") else run_dir / "relabelled.hdf5"
    if out.resolve() == Path(data_path).resolve():
        raise ValueError(f"relabel.output={out} is the input file (data.path); give another path (the relabelled copy "
                         "never replaces its source)")
    if out.is_dir():
        raise ValueError(f"relabel.output={out} is a folder; give a file path, e.g. {out / 'relabelled.hdf5'}")
    return out


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Labels -> ensemble -> agreement -> relabelled copy, as ``cfg`` says; returns the report (also in
    ``<run>/report.json``). A key ``configs/reward_model.yaml`` does not define is refused before any work
    (:func:`robopretrain.config_checks.validate_reward_model_config`)."""
    validate_reward_model_config(cfg)
    run_dir = Path(run_dir) if run_dir is not None else config_folder(cfg, "output_dir")
    # a second command on this folder now is refused (the two mixed their files)
    with run_folder_lock(run_dir, resumes=False):
        return _run_holding(cfg, run_dir)


def _run_holding(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """:func:`run`'s work, while holding the run folder's writer lock."""
    build.setup_torch(cfg)
    path = build.resolve_data_path(cfg.data, run_dir)
    relabel_to = relabel_output(cfg, run_dir, path)  # before any work: a refusal after training threw it away
    fingerprint = run_fingerprint.fingerprint(cfg, {"data": path, "labels": cfg.labels.get("path") or None},
                                              ignore=RERUN_CHANGES, home=run_fingerprint.run_home(cfg, run_dir))
    earlier = earlier_run(run_dir, fingerprint, fresh=not cfg.get("resume", True),
                          inputs={"data.path": path, "labels.path": cfg.labels.get("path")})
    info = read_info(path)
    spec = build.data_spec(cfg.obs, path, info=info, map_setting=None)
    if spec.rgb:
        raise ValueError("reward_model: cameras are not supported; use low-dim parts (obs.rgb=[])")
    # demos of fewer than 2 steps: refused by the reader, or left out (logged) with data.skip_short_demos=true
    demos = selected_demos(info, mask=cfg.data.get("mask"), tasks=list(cfg.data.tasks) if cfg.data.get("tasks") else None,
                           skip_short=bool(cfg.data.get("skip_short_demos", False)))
    if relabel_to is not None:
        check_relabelled_tasks(info, demos, spec, str(path))
    # the model's action units: the file's record, else (data.actions=auto) per-dimension bounds of actions outside
    # [-1, 1], as stage 2 gives an agent (robopretrain.data.dataset.data_action_units)
    units = data_action_units(path, info, str(cfg.data.get("actions") or "auto"),
                              build.plain(cfg.data.get("action_bounds")),
                              user="the reward model reads its actions in these units and its checkpoint records them")
    trans = load_transitions(path, list(spec.low_dim_keys), demos=demos, action_range=False,
                             low_dim=list(spec.low_dim_keys), info=info)
    trans.actions = reexpress(trans.actions, file_action_units(info), units, str(path), into="the reward model's")
    check_action_range(trans, str(path))
    warn_inner_terminals(str(path), trans.dones, trans.episode_ids, trans.demo_names, info.env_args)  # as stage 2
    data = SegmentData(trans, spec)
    rng = np.random.default_rng(int(cfg.seed))
    teacher = cfg.teacher
    clean: np.ndarray | None = None
    if cfg.labels.get("path"):
        labels = read_labels(cfg.labels.path)
        data.indices(labels, where=str(cfg.labels.path))  # every segment must be in the selected data
        source = str(cfg.labels.path)
    else:
        unrewarded = info.unrewarded(demos)
        if unrewarded:
            raise ValueError(f"{path}: {len(unrewarded)} of {len(demos)} selected demos have no rewards dataset "
                             f"({', '.join(unrewarded[:3])}{', ...' if len(unrewarded) > 3 else ''}); the scripted "
                             "teacher labels pairs by their stored rewards: give human labels (labels.path)")
        L = int(teacher.segment_length)
        pairs = sample_pairs(data.lengths, L, int(teacher.num_pairs), rng)
        ret = segment_reward_sums(data, [seg for a, sa, b, sb in pairs for seg in ((a, sa), (b, sb))], L)
        clean = np.array([teacher_label(ret[a, sa], ret[b, sb], float(teacher.tie_margin)) for a, sa, b, sb in pairs])
        noisy = noisy_labels(clean, float(teacher.noise), rng)
        labels = [PreferenceLabel(a, sa, b, sb, L, float(y)) for (a, sa, b, sb), y in zip(pairs, noisy)]
        source = str(run_dir / "labels.csv")
    held, train = held_out_split(labels, float(cfg.labels.held_out), rng, source)
    n_held = len(held)
    if all(labels[i].label == 0.5 for i in train):
        raise ValueError(f"{source}: every one of the {len(train)} training labels is a tie (0.5): the Bradley-Terry "
                         f"loss has nothing to learn from; {tie_advice(data, None if clean is None else teacher)}")
    ties = sum(lab.label == 0.5 for lab in labels)
    if ties > TIES_WARNED * len(labels):  # learnable, but from few pairs: say why and what decides more
        log.warning("%s: %d of %d labels are ties (0.5); the Bradley-Terry loss learns only from the %d others; %s",
                    source, ties, len(labels), len(labels) - ties, tie_advice(data, None if clean is None else teacher))
    settings = TrainSettings(**{k: (tuple(v) if k == "hidden" else v) for k, v in build.plain(cfg.model).items()})
    bad = [f"model.{k}={getattr(settings, k)}" for k in ("ensemble", "steps", "batch_size")
           if int(getattr(settings, k)) < 1] + ([f"model.lr={settings.lr}"] if not float(settings.lr) > 0 else [])
    if bad:
        raise ValueError(f"{', '.join(bad)}: ensemble, steps and batch_size must be >= 1 and lr > 0")
    # after every refusal: a refused run leaves the earlier one in place (its files, and no labels.csv of its own)
    remove_earlier_run(run_dir, earlier)
    if clean is not None:
        write_labels(source, labels)
    stats = normalization_stats({k: trans.obs[k] for k in spec.low_dim_keys}, spec,
                                min_std=float(cfg.obs.get("min_std") or 0.0)) if cfg.obs.get("normalize", True) else None
    model = RewardEnsemble(spec, info.action_dim, ensemble=settings.ensemble, hidden=settings.hidden, stats=stats)
    model.action_units = units
    history = train_ensemble(model, data, [labels[i] for i in train], settings, seed=int(cfg.seed))
    report: dict[str, Any] = {"data": str(path), "labels": source, "num_labels": len(labels), "ties": ties,
                              "held_out": n_held, "fingerprint": fingerprint,
                              "settings": asdict(settings), "train_loss": history,
                              "held_out_agreement": agreement(model, data, [labels[i] for i in held])}
    if clean is not None:
        report["teacher"] = build.plain(teacher)
        report["observed_flip_rate"] = observed_flip_rate(clean, [lab.label for lab in labels])
        clean_held = [dataclasses.replace(labels[i], label=float(clean[i])) for i in held]
        report["held_out_agreement_clean_teacher"] = agreement(model, data, clean_held)
    held_out = report["held_out_agreement"]
    if not n_held:
        log.info("no labels held out (labels.held_out=0): no agreement measured")
    elif held_out["agreement"] is None:
        log.warning("every held-out label is a tie: no agreement to measure (labels.held_out=%s)", cfg.labels.held_out)
    else:
        log.info("held-out agreement %.3f on %d non-tie pairs", held_out["agreement"], held_out["non_tie"])
    with atomic_file(run_dir / "reward_model.pt") as tmp:  # a kill or a full disk leaves no half-written model
        torch_save({"state_dict": model.state_dict(), "spec": spec.to_dict(), "act_dim": info.action_dim,
                    "settings": asdict(settings),
                    "action_normalization": None if units is None else units.to_dict(),
                    # the task one-hot slots its data was in: stage 3 scores its online steps in them
                    "task_slots": sorted({int(t) for t in trans.task_ids}) if spec.num_tasks else []}, tmp)
    if relabel_to is not None:
        report["relabelled"] = str(relabel(path, relabel_to, model, spec, str(cfg.relabel.normalize)))
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="reward_model")
@friendly_errors(rerun=RERUN_STARTS_OVER)
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    a = report["held_out_agreement"]
    if not a["pairs"]:
        print("no labels held out: no agreement measured (labels.held_out=0)")
    else:
        share = "n/a (every held-out label a tie)" if a["agreement"] is None else f"{a['agreement']:.3f}"
        print(f"held-out agreement {share} on {a['non_tie']} non-tie pairs (BT loss {a['bt_loss']:.3f})")
    if "relabelled" in report:
        print(f"relabelled: {report['relabelled']}")


__all__ = ["LABEL_COLUMNS", "PreferenceLabel", "RewardEnsemble", "SegmentData", "TrainSettings", "agreement",
           "bradley_terry_loss", "held_out_split", "load_reward_model", "noisy_labels", "observed_flip_rate", "read_labels", "relabel",
           "relabel_output", "check_relabelled_tasks", "tie_advice", "earlier_run", "remove_earlier_run", "RUN_FILES",
           "sample_pairs", "segment_reward_sums", "cli_main", "teacher_label", "train_ensemble", "write_labels"]


def cli_main() -> None:
    """``python -m robopretrain.reward_model``: one-line config errors, then Hydra."""
    run_hydra(main, "reward_model")


if __name__ == "__main__":
    cli_main()

