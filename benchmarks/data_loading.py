"""Decode throughput (frames/s) of the toolkit's video readers through a PyTorch DataLoader with 0, 2 and 4 workers.

Protocol: benchmarks/protocols/data_loading.md. Readers: ``robopretrain.data.video.read_frames`` on mp4 clips and
on folders of JPEG frames, and ``robopretrain.data.read_lerobot.decode_video_frames`` on episodes of one
LeRobot-v3-style mp4 (all episodes end to end). LeRobot's own decoder is timed beside them only when the
``lerobot`` package is importable; this environment's pins keep it out (see ``LEROBOT_NOTE``), which the JSON says.

``python benchmarks/data_loading.py [--out benchmarks/results/data_loading.json] [--workers 0 2 4] [--passes 3]``
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_utils import cpu_model, load_average, write_json_atomic  # noqa: E402  (this script's folder is on sys.path)
from robopretrain.data.read_lerobot import decode_video_frames  # noqa: E402
from robopretrain.data.video import read_frames  # noqa: E402

CLIPS, FRAMES, SIZE, FPS, GOP = 8, 64, 128, 30, 32
FRESH_PROCESS = ("each (reader, workers) configuration runs in a fresh Python process: DataLoader workers are forked, "
                 "and a worker forked from a process that has already decoded with PyAV (FFmpeg's decoder threads "
                 "running) crashed with a segmentation fault in the first attempt of this benchmark")
LEROBOT_NOTE = ("lerobot not installed: `pip install --dry-run lerobot` (0.4.4) would replace torch 2.14 by "
                "2.10, numpy 2.4 by 2.2 and av by 15.1 in this environment, so it was not installed and its "
                "decoder not timed")


def clip_frames(seed: int) -> np.ndarray:
    """``FRAMES`` frames of a random texture shifted 2 px per frame plus noise, uint8 (T, SIZE, SIZE, 3)."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (SIZE * 2, SIZE * 2, 3), dtype=np.uint8)
    out = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    for t in range(FRAMES):
        s = 2 * t
        noise = rng.integers(-8, 9, (SIZE, SIZE, 3))
        out[t] = np.clip(texture[s:s + SIZE, s:s + SIZE].astype(int) + noise, 0, 255)
    return out


def write_mp4(path: Path, clips: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width = s.height = SIZE
        s.pix_fmt = "yuv420p"
        s.codec_context.gop_size = GOP
        for frames in clips:
            for f in frames:
                for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def make_data(root: Path) -> None:
    """The 8 clips as mp4 files, JPEG folders and one LeRobot-style mp4 holding all of them, under ``root``."""
    clips = [clip_frames(i) for i in range(CLIPS)]
    for i, frames in enumerate(clips):
        write_mp4(root / f"clip_{i}.mp4", [frames])
        folder = root / f"clip_{i}"
        folder.mkdir()
        for t, f in enumerate(frames):
            Image.fromarray(f).save(folder / f"{t:06d}.jpg", quality=90)
    write_mp4(root / "lerobot_file-000.mp4", clips)


READERS = ("mp4 (read_frames)", "frame folder jpg (read_frames)", "lerobot-style mp4 episode (decode_video_frames)")


def items_of(root: Path, reader: str) -> list:
    """The DataLoader items of ``reader`` over the data :func:`make_data` wrote."""
    if reader == READERS[0]:
        return [root / f"clip_{i}.mp4" for i in range(CLIPS)]
    if reader == READERS[1]:
        return [root / f"clip_{i}" for i in range(CLIPS)]
    return [(root / "lerobot_file-000.mp4", (i * FRAMES + np.arange(FRAMES)) / FPS) for i in range(CLIPS)]


class Clips(Dataset):
    """Item ``i``: every frame of clip ``i`` as a uint8 tensor (T, H, W, 3)."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        if isinstance(item, tuple):
            return torch.from_numpy(decode_video_frames(item[0], item[1], FPS))
        return torch.from_numpy(read_frames(item))


def first(batch: list[torch.Tensor]) -> torch.Tensor:
    return batch[0]


def time_loader(items: list, workers: int, passes: int) -> list[float]:
    """Frames/s of each timed pass (after one warm-up pass)."""
    loader = DataLoader(Clips(items), batch_size=1, shuffle=False, num_workers=workers, collate_fn=first,
                        persistent_workers=workers > 0)
    rates = []
    for p in range(passes + 1):
        t0 = time.perf_counter()
        n = sum(len(x) for x in loader)
        dt = time.perf_counter() - t0
        if n != len(items) * FRAMES:
            raise RuntimeError(f"{n} frames decoded, expected {len(items) * FRAMES}")
        if p:
            rates.append(n / dt)
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--out", default="benchmarks/results/data_loading.json")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--one", nargs=3, metavar=("DATA", "READER", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.one:  # one configuration, in a fresh process (see FRESH_PROCESS)
        root, reader, workers = Path(args.one[0]), READERS[int(args.one[1])], int(args.one[2])
        print(json.dumps(time_loader(items_of(root, reader), workers, args.passes)))
        return 0
    report = {"protocol": "benchmarks/protocols/data_loading.md", "cpu_model": cpu_model(),
              "cpu_count": os.cpu_count(), "load_average_at_start": load_average(), "python": platform.python_version(),
              "torch": torch.__version__, "av": av.__version__,
              "data": {"clips": CLIPS, "frames_per_clip": FRAMES, "size": SIZE, "fps": FPS, "gop": GOP},
              "fresh_process": FRESH_PROCESS, "results": {}}
    report["lerobot"] = LEROBOT_NOTE if importlib.util.find_spec("lerobot") is None else \
        "lerobot is importable, but this script times only the toolkit's readers"
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp))
        for r, name in enumerate(READERS):
            for w in args.workers:
                proc = subprocess.run([sys.executable, __file__, "--passes", str(args.passes), "--one", tmp, str(r),
                                       str(w)], capture_output=True, text=True)
                if proc.returncode != 0:
                    report["results"].setdefault(name, {})[str(w)] = {"error": proc.stderr.strip().splitlines()[-1]}
                    print(f"{name:48s} workers={w}: failed: {proc.stderr.strip().splitlines()[-1]}", flush=True)
                    continue
                rates = json.loads(proc.stdout.strip().splitlines()[-1])
                med = statistics.median(rates)
                report["results"].setdefault(name, {})[str(w)] = {"frames_per_s_median": round(med, 1),
                                                                  "frames_per_s_passes": [round(x, 1) for x in rates]}
                print(f"{name:48s} workers={w}: {med:8.1f} frames/s  (passes {', '.join(f'{x:.0f}' for x in rates)})",
                      flush=True)
    report["load_average_at_end"] = load_average()
    print(report["lerobot"])
    out = Path(args.out)
    write_json_atomic(out, report)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
