"""Stage-1 frame samplers (ICVF goal/intent scheme, VIP, TCN) over many draws, and the frame stream."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from video_pretrain.data import SkippedVideoError
from video_pretrain.sampling import (GOAL_CURRENT, GOAL_FUTURE, GOAL_RANDOM, FrameBatchStream, GoalMix, ICVFSampler,
                                     TCNSampler, VIPSampler, augment, batch_loader, load_frames, make_sampler)

LENGTHS = [5, 50, 200, 30, 1]
N = 20_000


class CodedSource:
    """A frame source whose pixels spell out where they came from: R = video, G/B = frame (low/high byte)."""

    def __init__(self, lengths, size: int = 4):
        self.lengths = list(lengths)
        self.size = size
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    @property
    def num_videos(self) -> int:
        return len(self.lengths)

    def video_length(self, i: int) -> int:
        return self.lengths[i]

    def frames(self, i: int, indices) -> np.ndarray:
        indices = np.asarray(indices)
        assert indices.max() < self.lengths[i]
        self.calls.append((i, tuple(int(x) for x in indices)))
        out = np.zeros((len(indices), self.size, self.size, 3), dtype=np.uint8)
        out[..., 0] = i
        out[..., 1] = (indices % 256)[:, None, None]
        out[..., 2] = (indices // 256)[:, None, None]
        return out


def decode(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    px = frames[..., 0, 0, :].astype(np.int64)
    return px[..., 0], px[..., 1] + 256 * px[..., 2]


def icvf_draws(mix: GoalMix | None = None, seed: int = 0):
    sampler = ICVFSampler(LENGTHS, goal_mix=mix)
    return sampler, sampler(np.random.default_rng(seed), N)


# ------------------------------------------------------------------------------------------------ ICVF
def test_icvf_goal_kinds_follow_the_mix_and_mean_what_they_say():
    sampler, b = icvf_draws()
    (v, f), (nv, nf), (gv, gf), (zv, zf) = (b.column(r) for r in ("obs", "next_obs", "goal", "intent"))
    kind = b.info["goal_kind"]
    fractions = [np.mean(kind == k) for k in (GOAL_RANDOM, GOAL_FUTURE, GOAL_CURRENT)]
    assert fractions == pytest.approx([0.3, 0.5, 0.2], abs=0.015)
    assert [np.mean(b.info["intent_kind"] == k) for k in range(3)] == pytest.approx([0.3, 0.5, 0.2], abs=0.015)

    current = kind == GOAL_CURRENT
    assert np.all(gv[current] == v[current]) and np.all(gf[current] == f[current])
    future = kind == GOAL_FUTURE
    assert np.all(gv[future] == v[future]) and np.all(gf[future] >= f[future])
    assert np.all(gf[future] < np.asarray(LENGTHS)[v[future]])
    # future goals are uniform between now and the end: mean relative position ~ 1/2
    span = np.asarray(LENGTHS)[v] - 1 - f
    rel = (gf - f)[future & (span > 0)] / span[future & (span > 0)]
    assert rel.mean() == pytest.approx(0.5, abs=0.02)
    # random goals: uniform over all frames, so video 2 (200 of 286 frames) gets ~70 %
    assert np.mean(gv[kind == GOAL_RANDOM] == 2) == pytest.approx(200 / 286, abs=0.02)
    # the fraction of samples whose goal is the current frame is at least the 'current' share
    at_goal = (gv == v) & (gf == f)
    assert 0.2 <= at_goal.mean() <= 0.3
    assert np.array_equal(b.scalars["reward"], np.where(at_goal, 0.0, -1.0))
    assert np.array_equal(b.scalars["mask"], np.where(at_goal, 0.0, 1.0))
    at_intent = (zv == v) & (zf == f)
    assert np.array_equal(b.scalars["intent_reward"], np.where(at_intent, 0.0, -1.0))
    assert np.array_equal(b.scalars["intent_mask"], np.where(at_intent, 0.0, 1.0))


def test_icvf_goal_is_the_intent_half_the_time():
    _, b = icvf_draws(seed=1)
    same = b.info["goal_is_intent"].astype(bool)
    assert same.mean() == pytest.approx(0.5, abs=0.015)
    (gv, gf), (zv, zf) = b.column("goal"), b.column("intent")
    assert np.all(gv[same] == zv[same]) and np.all(gf[same] == zf[same])


def test_icvf_states_are_uniform_over_frames_and_next_frame_stays_in_the_video():
    _, b = icvf_draws(seed=2)
    (v, f), (nv, nf) = b.column("obs"), b.column("next_obs")
    assert np.mean(v == 2) == pytest.approx(200 / 286, abs=0.015)
    last = np.asarray(LENGTHS)[v] - 1
    assert np.all(nv == v)
    assert np.all(nf == np.minimum(f + 1, last))
    assert np.any(f == last)  # some states are at a video's end, where s' = s
    one_frame = v == 4
    assert one_frame.any() and np.all(nf[one_frame] == 0) and np.all(f[one_frame] == 0)


def test_icvf_ego4d_mix_and_config():
    _, b = icvf_draws(GoalMix.ego4d(), seed=3)
    assert [np.mean(b.info["goal_kind"] == k) for k in range(3)] == pytest.approx([0.1, 0.8, 0.1], abs=0.015)
    sampler = make_sampler("icvf", LENGTHS, {"goal_mix": {"random": 0.1, "future": 0.8, "current": 0.1},
                                             "p_goal_is_intent": 0.0})
    b = sampler(np.random.default_rng(0), N)
    assert b.info["goal_is_intent"].sum() == 0
    assert np.mean(b.info["intent_kind"] == GOAL_FUTURE) == pytest.approx(0.8, abs=0.015)
    with pytest.raises(ValueError, match="sum to 1"):
        GoalMix(0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="unknown key"):
        GoalMix.from_config({"randm": 1.0})


def test_same_seed_same_draws():
    s = ICVFSampler(LENGTHS)
    a, b = s(np.random.default_rng(7), 100), s(np.random.default_rng(7), 100)
    assert np.array_equal(a.frame, b.frame) and np.array_equal(a.video, b.video)


# ------------------------------------------------------------------------------------------------ VIP / TCN
def test_vip_sampler_ranges_and_uniform_start():
    b = VIPSampler([10, 2, 40])(np.random.default_rng(0), N)
    start, goal, t, t1 = b.frame.T
    video = b.video[:, 0]
    length = np.asarray([10, 2, 40])[video]
    assert np.all(video != 1)  # a 2-frame video cannot hold start < o_t < goal
    assert np.all((0 <= start) & (start < length - 2))
    assert np.all((start < goal) & (goal < length))
    assert np.all((start <= t) & (t < goal))
    assert np.all(t1 == np.minimum(t + 1, goal))
    assert np.all(b.scalars["reward"] == -1.0)
    counts = np.bincount(start[video == 0], minlength=8)
    assert counts.min() / counts.max() > 0.85  # start ~ U[0, 8)
    assert np.mean(video == 0) == pytest.approx(0.5, abs=0.015)  # videos drawn uniformly


def test_tcn_sampler_orders_three_distinct_frames():
    b = TCNSampler([3, 25])(np.random.default_rng(0), N)
    s0, s1, s2 = b.frame.T
    length = np.asarray([3, 25])[b.video[:, 0]]
    assert np.all((0 <= s0) & (s0 < s1) & (s1 < s2) & (s2 < length))
    assert np.all(b.video == b.video[:, :1])
    short = b.video[:, 0] == 0
    assert np.all(b.frame[short] == [0, 1, 2])


def test_samplers_reject_videos_too_short():
    with pytest.raises(ValueError, match="shorter than 3 frames"):
        VIPSampler([1, 2])
    with pytest.raises(ValueError, match="unknown objective"):
        make_sampler("simclr", [10])
    with pytest.raises(ValueError, match="length 0"):
        ICVFSampler([4, 0])
    # every clip too short: named with the minimum, and the frame stride only where there is one
    from video_pretrain.sampling import long_enough

    class Strided(CodedSource):
        stride = 2

    for source, said in ((CodedSource([1, 2]), False), (Strided([1, 2]), True)):
        with pytest.raises(ValueError, match="needs clips of at least 3 frames") as err:
            long_enough(source, "vip", np.array([1, 2]))
        assert ("counted after the frame stride" in str(err.value)) == said, str(err.value)
        assert ("counted after the frame stride 2" in str(err.value)) == said


# ------------------------------------------------------------------------------------------------ loading
def test_load_frames_puts_every_frame_where_its_index_says_and_reads_each_video_once():
    source = CodedSource(LENGTHS)
    b = ICVFSampler(LENGTHS)(np.random.default_rng(0), 64)
    frames = load_frames(source, b.video, b.frame)
    assert frames.shape == (64, 4, 4, 4, 3) and frames.dtype == np.uint8
    video, frame = decode(frames)
    assert np.array_equal(video, b.video) and np.array_equal(frame, b.frame)
    called = [c[0] for c in source.calls]
    assert len(called) == len(set(called))


def test_stream_is_the_same_with_and_without_workers_and_resumes_exactly():
    source = CodedSource(LENGTHS)
    stream = FrameBatchStream(source, "icvf", batch_size=8, seed=3, num_batches=6)
    serial = list(batch_loader(stream, 0))
    loader = batch_loader(stream, 2)
    # workers start from a clean process: a forked one can inherit a decoder's thread pool and hang (batch_loader)
    assert loader.multiprocessing_context.get_start_method() in ("forkserver", "spawn")
    with pytest.raises(ValueError, match="num_workers=-1"):
        batch_loader(stream, -1)
    parallel = list(loader)
    assert len(serial) == len(parallel) == 6
    for a, b in zip(serial, parallel):
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["reward"], b["reward"])
    resumed = list(DataLoader(FrameBatchStream(source, "icvf", 8, seed=3, start_batch=4, num_batches=2), batch_size=None))
    for a, b in zip(serial[4:], resumed):
        assert torch.equal(a["frame"], b["frame"])
    first = serial[0]
    assert first["frames"].shape == (8, 4, 4, 4, 3) and first["mask"].dtype == torch.float32
    assert set(first) == {"frames", "video", "frame", "reward", "mask", "intent_reward", "intent_mask", "unreadable"}
    assert first["unreadable"].dtype == torch.int64 and first["unreadable"].numel() == 0
    video, frame = decode(first["frames"].numpy())
    assert np.array_equal(video, first["video"].numpy()) and np.array_equal(frame, first["frame"].numpy())
    # batch k of a stream seeded s is drawn by batch_rng(s, k): [s, k], not [k, s] (the same numbers in another
    # order would give every run's batch k another's); a stream made without start_batch starts at batch 0
    from video_pretrain.sampling import batch_rng

    active = np.flatnonzero(np.asarray(LENGTHS) >= 2)
    by_hand = make_sampler("icvf", np.asarray(LENGTHS)[active])(batch_rng(3, 4), 8)
    assert np.array_equal(active[by_hand.video], serial[4]["video"].numpy())
    assert torch.equal(next(iter(DataLoader(FrameBatchStream(source, "icvf", 8, seed=3), batch_size=None)))["frame"],
                       serial[0]["frame"])


class OneBadClipSource(CodedSource):
    """Video 2 turns out unreadable when decoded (the way video_pretrain.data reports it)."""

    def frames(self, i: int, indices) -> np.ndarray:
        if i == 2:
            raise SkippedVideoError("clip_00002.mp4: skipped, unreadable (moov atom not found)")
        return super().frames(i, indices)


def test_stream_drops_a_clip_that_turns_out_unreadable_and_goes_on():
    stream = FrameBatchStream(OneBadClipSource(LENGTHS), "icvf", batch_size=16, seed=0, num_batches=5)
    batches = list(DataLoader(stream, batch_size=None))
    assert len(batches) == 5
    assert batches[-1]["unreadable"].tolist() == [2]  # the reader learns which clip the (worker's) stream dropped
    for b in batches:
        video, frame = decode(b["frames"].numpy())
        assert not (video == 2).any() and np.array_equal(video, b["video"].numpy())
        assert np.array_equal(frame, b["frame"].numpy())


def test_augment_converts_and_shifts_all_frames_of_a_sample_alike():
    from video_pretrain.sampling import to_float_frames

    for wrong in (torch.zeros(2, 8, 8, 3), torch.zeros(2, 8, 8, 4, dtype=torch.uint8)):  # float, or 4 channels
        with pytest.raises(ValueError, match="expected uint8"):
            to_float_frames(wrong)
    frames = torch.randint(0, 256, (3, 4, 16, 16, 3), dtype=torch.uint8)
    plain = augment(frames, pad=0)
    assert plain.shape == (3, 4, 3, 16, 16) and plain.dtype == torch.float32
    assert torch.allclose(plain[1, 2], frames[1, 2].permute(2, 0, 1).float() / 255)
    # identical frames within a sample stay identical after the shift (one shift per sample)
    same = frames[:, :1].expand(3, 4, 16, 16, 3).contiguous()
    shifted = augment(same, pad=4, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == (3, 4, 3, 16, 16)
    for i in range(3):
        for k in range(1, 4):
            assert torch.equal(shifted[i, k], shifted[i, 0])
    assert any(not torch.equal(augment(same, 4, torch.Generator().manual_seed(s))[0, 0], plain[0, 0]) for s in range(5))
