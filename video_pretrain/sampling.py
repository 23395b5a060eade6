"""Which frames stage 1 trains on: index samplers over (video, frame) and the stream that loads them.

Every objective sees a batch as ``K`` frames per sample ("roles"), chosen by integer arithmetic on the
videos' lengths only (no pixels), so the schemes can be tested over many draws in milliseconds:

- :class:`ICVFSampler` (REFERENCE.md, ICVF): ``obs`` s uniform over all frames, ``next_obs`` s' the next
  frame of the same video (``s' = s`` at a video's last frame), an ``intent`` z and a ``goal`` g. Each of
  z and g is drawn from a :class:`GoalMix`: a random frame of any video (0.3), a frame of the same video
  between now and its end (0.5) or the current frame (0.2); then g := z with probability 0.5. Rewards are
  0 when the goal (intent) frame is the current frame, else -1; masks are 0 there, else 1.
- :class:`VIPSampler` (VIP): one video, start ~ U[0, L-2), goal ~ U[start+1, L), o_t ~ U[start, goal),
  o_t+1 = min(o_t + 1, goal); roles ``initial, goal, obs, next_obs``; reward (o_t == goal) - 1 = -1.
- :class:`TCNSampler` (time contrastive): three ordered frames s0 < s1 < s2 of one video.

Each sampler declares the shortest clip it can use (``min_length``: ICVF 2, VIP and TCN 3 frames);
:class:`FrameBatchStream` leaves shorter clips out (one warning with their count and names) and refuses, with
one line naming them and the minimum, a source whose clips are all too short.

Frame indices are in the frame source's own index space (:class:`video_pretrain.data.FrameSource`), i.e. after its frame stride: "the next
frame" is the next *kept* frame, so a source with ``stride=2`` makes s' two raw frames after s.

:class:`FrameBatchStream` is the ``IterableDataset`` that turns sampled indices into uint8 frames through
a ``FrameSource`` (each video touched by a batch is read once, for all its frames). Batch ``k`` of a
stream depends only on ``(seed, k)``: the stream is the same with 0 or many DataLoader workers, and a
resumed run continues it exactly by starting at the step it stopped at. :func:`augment` makes float
model inputs and applies the same random crop (``random_shift``) to all frames of one sample.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from robopretrain.data.video import VideoDatasetError
from robopretrain.workers import die_with_parent, exit_with
from video_pretrain.data import FrameSource, SkippedVideoError

logger = logging.getLogger(__name__)

GOAL_RANDOM, GOAL_FUTURE, GOAL_CURRENT = 0, 1, 2
GOAL_KIND_NAMES = ("random", "future", "current")


@dataclass(frozen=True)
class GoalMix:
    """Probabilities of the three ways to draw a goal (or intent) frame for a current frame s.

    ``random``: any frame of any video (uniform over all frames); ``future``: a frame of s's video
    between s and the video's end (uniform, both ends included); ``current``: s itself. The default is
    ICVF's 0.3 / 0.5 / 0.2; :meth:`ego4d` gives the 0.1 / 0.8 / 0.1 variant.
    """

    random: float = 0.3
    future: float = 0.5
    current: float = 0.2

    def __post_init__(self) -> None:
        probs = (self.random, self.future, self.current)
        if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"GoalMix: random={self.random}, future={self.future}, current={self.current}; "
                             "expected non-negative probabilities that sum to 1")

    @classmethod
    def ego4d(cls) -> "GoalMix":
        return cls(random=0.1, future=0.8, current=0.1)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "GoalMix":
        if cfg is None:
            return cls()
        unknown = set(cfg) - {"random", "future", "current"}
        if unknown:
            raise ValueError(f"goal mix: unknown key(s) {sorted(unknown)}; expected random, future, current")
        return cls(**{k: float(v) for k, v in cfg.items()})

    @property
    def probs(self) -> np.ndarray:
        return np.array([self.random, self.future, self.current], dtype=np.float64)


@dataclass
class IndexBatch:
    """A batch of frame indices: ``video`` and ``frame`` (B, K) int64, one column per role in ``roles``,
    plus per-sample float32 arrays in ``scalars`` (rewards, masks) and int arrays in ``info`` (for tests
    and logging, e.g. how each goal was drawn)."""

    roles: tuple[str, ...]
    video: np.ndarray
    frame: np.ndarray
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.video.shape[0])

    def column(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """(video, frame) of one role, each (B,)."""
        k = self.roles.index(role)
        return self.video[:, k], self.frame[:, k]


class VideoIndex:
    """Lengths of the videos and the conversions between (video, frame) and a flat frame index."""

    def __init__(self, lengths: Sequence[int] | np.ndarray):
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if self.lengths.size == 0:
            raise ValueError("VideoIndex: no videos (the frame source is empty)")
        if (self.lengths < 1).any():
            bad = int(np.flatnonzero(self.lengths < 1)[0])
            raise ValueError(f"VideoIndex: video {bad} has length {int(self.lengths[bad])}; expected >= 1 frame")
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.total = int(self.lengths.sum())

    @classmethod
    def from_source(cls, source: FrameSource) -> "VideoIndex":
        return cls([source.video_length(i) for i in range(source.num_videos)])

    def split_flat(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat frame indices -> (video, frame)."""
        video = np.searchsorted(self.starts, flat, side="right") - 1
        return video.astype(np.int64), (flat - self.starts[video]).astype(np.int64)

    def uniform_frames(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` frames drawn uniformly over all frames of all videos (long videos are drawn more often)."""
        return self.split_flat(rng.integers(0, self.total, size=n))

    def next_frame(self, video: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """The next frame of the same video; a video's last frame is its own successor."""
        return np.minimum(frame + 1, self.lengths[video] - 1)


# --------------------------------------------------------------------------------------------- ICVF
def sample_goals(index: VideoIndex, video: np.ndarray, frame: np.ndarray, mix: GoalMix,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Goal frames for current frames (video, frame) by ``mix``; returns (goal_video, goal_frame, kind).

    ``kind`` is ``GOAL_RANDOM`` / ``GOAL_FUTURE`` / ``GOAL_CURRENT`` per sample (how the goal was drawn;
    a random or future goal can still land on the current frame by chance).
    """
    n = len(video)
    kind = rng.choice(3, size=n, p=mix.probs)
    rand_video, rand_frame = index.uniform_frames(rng, n)
    last = index.lengths[video] - 1
    future_frame = frame + np.floor(rng.random(n) * (last - frame + 1)).astype(np.int64)
    future_frame = np.minimum(future_frame, last)  # guards the (measure-zero) rounding edge
    goal_video = np.where(kind == GOAL_RANDOM, rand_video, video)
    goal_frame = np.select([kind == GOAL_RANDOM, kind == GOAL_FUTURE], [rand_frame, future_frame], frame)
    return goal_video.astype(np.int64), goal_frame.astype(np.int64), kind.astype(np.int64)


def reached(video: np.ndarray, frame: np.ndarray, goal_video: np.ndarray, goal_frame: np.ndarray) -> np.ndarray:
    """True where the current frame is the goal frame."""
    return (video == goal_video) & (frame == goal_frame)


class ICVFSampler:
    """ICVF batches: roles ``obs, next_obs, goal, intent``; scalars ``reward, mask, intent_reward, intent_mask``.

    ``goal_mix`` and ``intent_mix`` say how goals and intents are drawn (both ICVF's 0.3/0.5/0.2 by
    default); the goal is replaced by the intent with probability ``p_goal_is_intent`` (0.5).
    """

    roles = ("obs", "next_obs", "goal", "intent")
    min_length = 2
    needs = "a frame and the next one (s, s')"

    def __init__(self, lengths: Sequence[int] | np.ndarray, goal_mix: GoalMix | None = None,
                 intent_mix: GoalMix | None = None, p_goal_is_intent: float = 0.5):
        if not 0.0 <= p_goal_is_intent <= 1.0:
            raise ValueError(f"ICVFSampler: p_goal_is_intent={p_goal_is_intent}; expected a probability in [0, 1]")
        self.index = VideoIndex(lengths)
        self.goal_mix = goal_mix or GoalMix()
        self.intent_mix = intent_mix or self.goal_mix
        self.p_goal_is_intent = float(p_goal_is_intent)

    def __call__(self, rng: np.random.Generator, batch_size: int) -> IndexBatch:
        video, frame = self.index.uniform_frames(rng, batch_size)
        next_frame = self.index.next_frame(video, frame)
        z_video, z_frame, z_kind = sample_goals(self.index, video, frame, self.intent_mix, rng)
        g_video, g_frame, g_kind = sample_goals(self.index, video, frame, self.goal_mix, rng)
        same = rng.random(batch_size) < self.p_goal_is_intent
        g_video, g_frame, g_kind = (np.where(same, z_video, g_video), np.where(same, z_frame, g_frame),
                                    np.where(same, z_kind, g_kind))
        at_goal = reached(video, frame, g_video, g_frame)
        at_intent = reached(video, frame, z_video, z_frame)
        return IndexBatch(
            roles=self.roles,
            video=np.stack([video, video, g_video, z_video], axis=1),
            frame=np.stack([frame, next_frame, g_frame, z_frame], axis=1),
            scalars={"reward": at_goal.astype(np.float32) - 1.0, "mask": 1.0 - at_goal.astype(np.float32),
                     "intent_reward": at_intent.astype(np.float32) - 1.0,
                     "intent_mask": 1.0 - at_intent.astype(np.float32)},
            info={"goal_kind": g_kind, "intent_kind": z_kind, "goal_is_intent": same.astype(np.int64)},
        )


# --------------------------------------------------------------------------------------------- VIP / TCN
def _videos_with_min_length(index: VideoIndex, min_length: int, who: str) -> np.ndarray:
    ok = np.flatnonzero(index.lengths >= min_length)
    if ok.size == 0:
        raise ValueError(f"{who}: every video is shorter than {min_length} frames (longest: "
                         f"{int(index.lengths.max())}); expected at least one video with >= {min_length} frames")
    return ok


class VIPSampler:
    """VIP batches: roles ``initial, goal, obs, next_obs``; scalar ``reward`` (-1, since o_t < goal).

    A video is drawn uniformly among the videos with >= 3 frames, then start ~ U[0, L-2),
    goal ~ U[start+1, L), o_t ~ U[start, goal), o_t+1 = min(o_t + 1, goal).
    """

    roles = ("initial", "goal", "obs", "next_obs")
    min_length = 3
    needs = "start < goal with o_t, o_t+1 between them (start ~ U[0, L-2))"

    def __init__(self, lengths: Sequence[int] | np.ndarray):
        self.index = VideoIndex(lengths)
        self.videos = _videos_with_min_length(self.index, self.min_length, "VIPSampler")

    def __call__(self, rng: np.random.Generator, batch_size: int) -> IndexBatch:
        video = self.videos[rng.integers(0, len(self.videos), size=batch_size)]
        length = self.index.lengths[video]
        start = rng.integers(0, length - 2)
        goal = rng.integers(start + 1, length)
        t = rng.integers(start, goal)
        t_next = np.minimum(t + 1, goal)
        reward = (t == goal).astype(np.float32) - 1.0
        return IndexBatch(roles=self.roles, video=np.stack([video] * 4, axis=1),
                          frame=np.stack([start, goal, t, t_next], axis=1), scalars={"reward": reward})


class TCNSampler:
    """Time-contrastive batches: roles ``s0, s1, s2`` with s0 < s1 < s2 frames of one video.

    A video is drawn uniformly among the videos with >= 3 frames, then s0 ~ U[0, L-2), s2 ~ U[s0+2, L),
    s1 ~ U[s0+1, s2).
    """

    roles = ("s0", "s1", "s2")
    min_length = 3
    needs = "3 ordered frames s0 < s1 < s2"

    def __init__(self, lengths: Sequence[int] | np.ndarray):
        self.index = VideoIndex(lengths)
        self.videos = _videos_with_min_length(self.index, self.min_length, "TCNSampler")

    def __call__(self, rng: np.random.Generator, batch_size: int) -> IndexBatch:
        video = self.videos[rng.integers(0, len(self.videos), size=batch_size)]
        length = self.index.lengths[video]
        s0 = rng.integers(0, length - 2)
        s2 = rng.integers(s0 + 2, length)
        s1 = rng.integers(s0 + 1, s2)
        return IndexBatch(roles=self.roles, video=np.stack([video] * 3, axis=1), frame=np.stack([s0, s1, s2], axis=1))


Sampler = Callable[[np.random.Generator, int], IndexBatch]


SAMPLERS: dict[str, type] = {"icvf": ICVFSampler, "vip": VIPSampler, "tcn": TCNSampler}


def make_sampler(objective: str, lengths: Sequence[int] | np.ndarray, cfg: Mapping[str, Any] | None = None) -> Sampler:
    """The sampler of an objective (``icvf`` | ``vip`` | ``tcn``); ``cfg`` holds the ICVF options
    ``goal_mix``, ``intent_mix`` ({random, future, current}) and ``p_goal_is_intent``."""
    if objective not in SAMPLERS:
        raise ValueError(f"make_sampler: unknown objective {objective!r}; expected icvf, vip or tcn")
    cfg = dict(cfg or {})
    if objective == "icvf":
        goal_mix = GoalMix.from_config(cfg.get("goal_mix"))
        intent_mix = GoalMix.from_config(cfg["intent_mix"]) if cfg.get("intent_mix") is not None else goal_mix
        return ICVFSampler(lengths, goal_mix, intent_mix, float(cfg.get("p_goal_is_intent", 0.5)))
    return SAMPLERS[objective](lengths)


SAMPLING_KEYS = ("goal_mix", "intent_mix", "p_goal_is_intent")  # ICVF's; VIP and TCN draw their frames one way


def check_sampling(objective: str, cfg: Mapping[str, Any] | None) -> None:
    """Check ``objective.sampling`` before any data loads: ICVF's keys only (:data:`SAMPLING_KEYS`, a misspelt one
    trained with the default), mixes that are probabilities summing to 1, ``p_goal_is_intent`` in [0, 1]; nothing
    for VIP and TCN, which have no such settings. Raises ValueError naming ``objective.sampling.<key>``."""
    cfg = dict(cfg or {})
    if objective != "icvf":
        if cfg:
            raise ValueError(f"objective.sampling={cfg}: {objective} draws its frames one way and has no sampling "
                             "settings (goal and intent mixes are ICVF's)")
        return
    unknown = sorted(set(cfg) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"objective.sampling: unknown key(s) {unknown}; ICVF's are {', '.join(SAMPLING_KEYS)}")
    for key in ("goal_mix", "intent_mix"):
        if cfg.get(key) is not None:
            try:
                GoalMix.from_config(dict(cfg[key]) if isinstance(cfg[key], Mapping) else cfg[key])
            except (ValueError, TypeError) as exc:
                raise ValueError(f"objective.sampling.{key}: {exc}") from None
    p = cfg.get("p_goal_is_intent", 0.5)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"objective.sampling.p_goal_is_intent={p!r}; expected a probability in [0, 1]")


def long_enough(source: FrameSource, objective: str, lengths: np.ndarray) -> np.ndarray:
    """Ids of the videos of ``source`` with at least the frames ``objective``'s sampler needs (ICVF 2, VIP and
    TCN 3, counted after the source's frame stride). Shorter clips are left out with one warning giving
    their count and names; when every clip is too short, a ``ValueError`` names them and the minimum."""
    if objective not in SAMPLERS:
        raise ValueError(f"make_sampler: unknown objective {objective!r}; expected icvf, vip or tcn")
    cls = SAMPLERS[objective]
    short = np.flatnonzero(lengths < cls.min_length)
    if short.size == 0:
        return np.arange(len(lengths), dtype=np.int64)
    stride = getattr(source, "stride", getattr(getattr(source, "source", None), "stride", 1))
    after = f", counted after the frame stride {stride}" if stride > 1 else ""
    named = ", ".join(f"{_video_name(source, int(i))} ({int(lengths[i])} frame{'' if lengths[i] == 1 else 's'})"
                      for i in short[:5]) + (f", ... ({short.size - 5} more)" if short.size > 5 else "")
    if short.size == len(lengths):
        raise ValueError(f"{objective} needs clips of at least {cls.min_length} frames ({cls.needs}{after}), and every "
                         f"clip is shorter: {named}")
    logger.warning("%s: skipping %d of %d clips shorter than %d frames (it samples %s%s): %s", objective, short.size,
                   len(lengths), cls.min_length, cls.needs, after, named)
    return np.flatnonzero(lengths >= cls.min_length).astype(np.int64)


def _video_name(source: FrameSource, i: int) -> str:
    name = getattr(source, "video_name", None)
    return str(name(i)) if callable(name) else f"video {i}"


# --------------------------------------------------------------------------------------------- loading
class UnreadableVideo(Exception):
    """Raised by :func:`load_frames` when the source skips video ``video`` as unreadable (``cause``)."""

    def __init__(self, video: int, cause: Exception):
        super().__init__(f"video {video} is unreadable: {cause}")
        self.video = video
        self.cause = cause


def load_frames(source: FrameSource, video: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """uint8 frames (B, K, H, W, 3) for index arrays (B, K); each video is read once for all its frames.

    Raises :class:`UnreadableVideo` naming the video when the source reports it as skipped."""
    flat_video, flat_frame = video.reshape(-1), frame.reshape(-1)
    out: np.ndarray | None = None
    for v in np.unique(flat_video):
        where = np.flatnonzero(flat_video == v)
        wanted, inverse = np.unique(flat_frame[where], return_inverse=True)
        try:
            clip = np.asarray(source.frames(int(v), wanted))
        except SkippedVideoError as exc:
            raise UnreadableVideo(int(v), exc) from exc
        if clip.ndim != 4 or clip.shape[0] != len(wanted) or clip.shape[-1] != 3 or clip.dtype != np.uint8:
            raise ValueError(f"frame source {type(source).__name__}: frames({int(v)}, {len(wanted)} indices) returned "
                             f"{clip.dtype} {clip.shape}; expected uint8 ({len(wanted)}, H, W, 3)")
        if out is None:
            out = np.empty((flat_video.size,) + clip.shape[1:], dtype=np.uint8)
        out[where] = clip[inverse.reshape(-1)]
    assert out is not None
    return out.reshape(video.shape + out.shape[1:])


def batch_rng(seed: int, batch_number: int) -> np.random.Generator:
    """The generator that draws batch ``batch_number`` of a stream seeded with ``seed``."""
    return np.random.default_rng([int(seed), int(batch_number)])


class FrameBatchStream(IterableDataset):
    """An endless (or ``num_batches`` long) stream of whole batches of uint8 frames for ``objective``.

    Each item is a dict: ``frames`` uint8 (B, K, H, W, 3), ``video`` and ``frame`` int64 (B, K) (ids of
    ``source``), the sampler's scalars as float32 (B,), and ``unreadable`` int64 (n,): the ids of the clips this
    process has found unreadable so far (below), so that the process reading the batches learns of those its
    DataLoader workers found (a consumer pops it before the objective). Read it with :func:`batch_loader` (a
    ``DataLoader(stream, batch_size=None, num_workers=n)`` whose workers are not forked): worker ``w`` of
    ``n`` makes batches ``start + w, start + w + n, ...`` and the DataLoader hands them out in round-robin
    order, so the stream is identical for any number of workers (0 included). ``sampling`` holds the sampler
    options (see :func:`make_sampler`).

    Clips shorter than the objective needs (:func:`long_enough`: ICVF 2 frames, VIP and TCN 3) are never
    sampled; they are logged once with their count and listed in ``short_videos``, and a source with no
    clip long enough is a ``ValueError`` naming its clips and the minimum.

    A clip the source can only now tell is unreadable (it raises ``SkippedVideoError``, see
    :mod:`video_pretrain.data`) is dropped from this process's sampling and the batch is drawn again,
    so a run does not stop on one bad clip; from then on this worker's batches differ from a clean run's.
    ``unreadable``: source ids already found unreadable (a resumed run's, from its checkpoint), left out from the
    start: with the main process loading (``num_workers=0``) the resumed stream then goes on as the uninterrupted
    one did; with workers, each found a bad clip at its own batch, and a resume differs after it.
    """

    def __init__(self, source: FrameSource, objective: str, batch_size: int, seed: int = 0,
                 sampling: Mapping[str, Any] | None = None, start_batch: int = 0, num_batches: int | None = None,
                 unreadable: Iterable[int] = ()):
        if batch_size < 1:
            raise ValueError(f"FrameBatchStream: batch_size={batch_size}; expected >= 1")
        self.source = source
        self.objective = objective
        self.sampling = dict(sampling or {})
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_batch = int(start_batch)
        self.num_batches = num_batches
        self.lengths = np.array([source.video_length(i) for i in range(source.num_videos)], dtype=np.int64)
        self.active = long_enough(source, objective, self.lengths)  # source ids still sampled
        self.short_videos = [_video_name(source, int(i)) for i in np.setdiff1d(np.arange(len(self.lengths)), self.active)]
        self.unreadable: list[int] = sorted({int(v) for v in unreadable})  # source ids dropped as unreadable
        self.active = self.active[~np.isin(self.active, self.unreadable)]
        self.sampler = make_sampler(objective, self.lengths[self.active], self.sampling)

    def _drop(self, video: int, reason: Exception) -> None:
        self.active = self.active[self.active != video]
        self.unreadable.append(int(video))
        if self.active.size == 0:
            raise VideoDatasetError(f"every clip of this split is unreadable (last: {reason}); check the clips with "
                                    "python -m robopretrain.data.inspect") from reason
        logger.warning("FrameBatchStream: no longer sampling unreadable video %d (%s)", video, reason)
        self.sampler = make_sampler(self.objective, self.lengths[self.active], self.sampling)

    def batch(self, batch_number: int) -> dict[str, torch.Tensor]:
        """Batch ``batch_number`` of this stream (deterministic while no clip turns out unreadable)."""
        while True:
            idx = self.sampler(batch_rng(self.seed, batch_number), self.batch_size)
            video = self.active[idx.video]
            try:
                frames = load_frames(self.source, video, idx.frame)
            except UnreadableVideo as exc:
                self._drop(exc.video, exc.cause)
                continue
            out = {"frames": torch.from_numpy(frames), "video": torch.from_numpy(video),
                   "frame": torch.from_numpy(idx.frame), "unreadable": torch.tensor(self.unreadable, dtype=torch.int64)}
            out.update({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in idx.scalars.items()})
            return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        k = self.start_batch + worker
        end = None if self.num_batches is None else self.start_batch + self.num_batches
        while end is None or k < end:
            yield self.batch(k)
            k += workers


def worker_start_method() -> str:
    """How :func:`batch_loader` starts its workers: ``forkserver`` where the platform has it, else ``spawn``."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def batch_loader(stream: FrameBatchStream, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """The DataLoader stage 1 reads ``stream`` through: whole batches (``batch_size=None``), ``num_workers``
    processes (0: the main process).

    Workers start from a clean process (:func:`worker_start_method`), never forked from this one. A process
    that has decoded video (PyAV's scaler keeps a pool of slice threads) or started a logger thread can leave a
    forked child blocked forever on a lock or condition variable whose threads do not exist in the child: seen
    in this repository's tests, a worker hung in ``sws_freeContext`` -> ``pthread_cond_destroy`` when the garbage
    collector freed a decoded frame inherited from the parent. Sources are picklable and open their files in
    each worker (:mod:`video_pretrain.data`), so a fresh worker needs nothing the parent holds; a frame source of
    your own must pickle too (with workers). Raises ``ValueError`` for ``num_workers < 0``.
    """
    if num_workers < 0:
        raise ValueError(f"batch_loader: num_workers={num_workers}; expected >= 0")
    context = mp.get_context(worker_start_method()) if num_workers > 0 else None
    init = functools.partial(_dies_with_parent, main_pid=os.getpid()) if num_workers else None
    return DataLoader(stream, batch_size=None, num_workers=int(num_workers), pin_memory=pin_memory,
                      multiprocessing_context=context, worker_init_fn=init)


def _dies_with_parent(worker_id: int, main_pid: int | None = None) -> None:
    """A DataLoader worker ends when the process that started it does (:func:`robopretrain.workers.die_with_parent`)
    and, under ``forkserver``, when stage 1's process ``main_pid`` does (:func:`robopretrain.workers.exit_with`): the
    fork server, the workers' parent, outlived a stage 1 killed outright, its workers holding its alive pipe."""
    die_with_parent()
    if main_pid is not None and os.getppid() != main_pid:
        exit_with(main_pid)


# --------------------------------------------------------------------------------------------- augmentation
def to_float_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1]."""
    if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"to_float_frames: got {frames.dtype} {tuple(frames.shape)}; expected uint8 (..., H, W, 3)")
    return frames.movedim(-1, -3).float().div_(255.0)


def augment(frames: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Model inputs from a batch of frames: uint8 (B, K, H, W, 3) -> float (B, K, 3, H, W) in [0, 1],
    randomly shifted by up to ``pad`` pixels with the same shift for all K frames of a sample
    (``random_shift`` on 5-D input); ``pad=0`` only converts."""
    x = to_float_frames(frames)
    if pad <= 0:
        return x
    from robopretrain.nets.augment import random_shift
    return random_shift(x, pad, generator=generator)
