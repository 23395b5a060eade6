"""write_mp4 is a function of its frames: the same frames give the same file whatever was encoded before.

libx264's macroblock-tree rate control did not give that (its output for a clip varied with the clips encoded
earlier in the process), which made the human-video dataset, and so stage 1, differ between identical runs."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sim_envs.video_writer import pick_codec, write_mp4


def moving_square(n: int = 20, size: int = 64) -> np.ndarray:
    frames = np.full((n, size, size, 3), 40, np.uint8)
    frames[:, 40:, :, 1] = 120
    for t in range(n):
        frames[t, 20:34, 5 + 2 * t: 19 + 2 * t] = (200, 150, 120)
    return frames


@pytest.mark.skipif(pick_codec() != "libx264", reason="PyAV's ffmpeg has no libx264")
def test_the_same_frames_encode_to_the_same_bytes_after_other_clips(tmp_path):
    frames, rng, digests = moving_square(), np.random.default_rng(0), set()
    for _ in range(20):  # with mbtree on, 20 rounds gave 2 different files for these frames
        other = rng.integers(0, 256, (int(rng.integers(20, 60)), 64, 64, 3), dtype=np.uint8)
        write_mp4(tmp_path / "other.mp4", other, fps=50.0, codec="libx264", crf=20)
        write_mp4(tmp_path / "clip.mp4", frames, fps=50.0, codec="libx264", crf=20)
        digests.add(hashlib.md5((tmp_path / "clip.mp4").read_bytes()).hexdigest())
    assert len(digests) == 1
