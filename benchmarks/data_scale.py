"""Stage 2 on a robot dataset larger than memory: a synthetic 1M-transition robomimic file with one 64 px camera,
read through the disk-backed dataset (:mod:`robopretrain.data.disk`). Protocol: ``benchmarks/protocols/data_scale.md``.

    python benchmarks/data_scale.py                      # write the file, index it, measure, delete the big files
    python benchmarks/data_scale.py --transitions 20000 --keep --workdir /tmp/ds   # a small trial

Reports (and writes to ``benchmarks/results/data_scale.json`` after every step): the time to write the file and to
build its frame index, the time to the first batch in a fresh process, sampled batches/s at batch 256 with 0, 2 and 4
prefetch threads (and 256 random rows straight from the HDF5 file, for comparison), stage-2 image updates/s on the
file (``data.storage=disk``) against an in-memory subset (``data.storage=memory data.max_demos=200``), and the peak
resident memory of each stage-2 process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy
sys.path.append(str(ROOT / "benchmarks"))
from bench_utils import ended_with_this  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "data_scale.json"
CAM = "agentview_image"
DEFAULT_FRAMES = Path("/tmp/pixel_recipe/data/Reach+PushBlock+PressButton+OpenDrawer_clean50_64px_wrist.hdf5")
ENV = {**ended_with_this(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # (runs end with this process)


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def save(results: dict[str, Any]) -> None:
    out = Path(results["output"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: v for k, v in results.items() if k != "output"}, indent=2) + "\n")


# ----------------------------------------------------------------------------- the file
def frame_pool(source: Path | None, size: int = 64) -> tuple[np.ndarray, str]:
    """Real rendered frames (every ``obs/agentview_image`` frame of ``source``) or 4096 random ones."""
    if source is not None and source.is_file():
        import h5py

        with h5py.File(source, "r") as f:
            demos = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
            pool = np.concatenate([f[f"data/{d}/obs/{CAM}"][()] for d in demos])
        return pool, f"{len(pool)} rendered frames of {source.name}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(4096, size, size, 3), dtype=np.uint8), "4096 random frames"


def write_file(path: Path, transitions: int, length: int, pool: np.ndarray) -> None:
    """``transitions // length`` episodes of ``length`` steps; episode e shows a window of consecutive pool frames."""
    from sim_envs.hdf5_writer import RobomimicWriter, make_env_args

    episodes = transitions // length
    rng = np.random.default_rng(1)
    with RobomimicWriter(path, make_env_args("Synthetic", "0", {"image_size": int(pool.shape[1])}),
                         valid_fraction=0.0, overwrite=True) as w:
        for e in range(episodes):
            start = (e * 997) % (len(pool) - length - 1)
            window = pool[start: start + length + 1]
            proprio = np.cumsum(rng.normal(scale=0.01, size=(length + 1, 7)), axis=0).astype(np.float32)
            success = e % 2 == 0
            rewards = np.zeros(length, np.float32)
            rewards[-1] = float(success)
            w.add_episode(task="Synthetic", task_id=0, obs={CAM: window[:-1], "proprio": proprio[:-1]},
                          next_obs={CAM: window[1:], "proprio": proprio[1:]},
                          actions=rng.uniform(-1, 1, size=(length, 4)).astype(np.float32), rewards=rewards,
                          dones=rewards.astype(np.uint8), ep_meta={"success": success})


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- sampling (child process)
def measure_sampling(path: Path, batch: int, seconds: float) -> dict[str, Any]:
    """Time to first batch (fresh process, index present) and batches/s with 0, 2, 4 prefetch threads; the same
    for random rows read with h5py from the file itself."""
    import resource

    import h5py
    import torch

    torch.set_num_threads(1)
    from robopretrain.data.dataset import RewardSettings, load_offline_dataset, spec_of_data

    t0 = time.perf_counter()
    spec = spec_of_data(path, ["proprio"], [CAM], None)
    ds = load_offline_dataset(path, spec, RewardSettings(), storage="disk", seed=0)
    ds.sample(batch)
    out: dict[str, Any] = {"time_to_first_batch_s": round(time.perf_counter() - t0, 2), "load_avg": load_avg()}
    rates = {}
    for workers in (0, 2, 4):
        ds.close()
        ds.workers = workers
        for _ in range(3):
            ds.sample(batch)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            ds.sample(batch)
            n += 1
        rates[str(workers)] = round(n / (time.perf_counter() - start), 2)
    ds.close()
    out["batches_per_s"] = rates
    out["rss_after_sampling_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    with h5py.File(path, "r") as f:  # the alternative: random rows straight from the HDF5 chunks
        lengths = {d: int(f[f"data/{d}"].attrs["num_samples"]) for d in f["data"]}
        names = list(lengths)
        rng = np.random.default_rng(0)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for d in rng.choice(names, size=batch):
                t = int(rng.integers(lengths[d]))
                f[f"data/{d}/obs/{CAM}"][t]
                f[f"data/{d}/next_obs/{CAM}"][t]
            n += 1
        out["hdf5_random_rows_batches_per_s"] = round(n / (time.perf_counter() - start), 2)
    return out


# ----------------------------------------------------------------------------- stage 2 (subprocesses)
def stage2(path: Path, out: Path, storage: str, steps: int, every: int, extra: list[str]) -> dict[str, Any]:
    """``python -m robopretrain.train`` (BC, batch 256, 64 px scratch encoder); updates/s between the first and last
    checkpoint, peak RSS of the process (its wrapper's RUSAGE_CHILDREN)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "robopretrain.train", "algo=bc", f"data.path={path}", f"data.storage={storage}",
           "data.workers=2", f"output_dir={out}", f"hydra.run.dir={out}/hydra", "num_threads=1", "seed=0",
           f"train.steps={steps}", f"obs.rgb=[{CAM}]", "obs.low_dim=[proprio]", "algo.batch_size=256",
           "train.eval_targets=[]", f"train.eval_every={steps}", f"train.checkpoint_every={every}",
           "train.keep_checkpoints=100", "train.progress=false", "train.tensorboard=false", "resume=false", *extra]
    wrapper = ("import resource, subprocess, sys, json; p = subprocess.run(sys.argv[1:], capture_output=True, "
               "text=True); print(json.dumps({'rc': p.returncode, 'err': p.stderr[-3000:], 'maxrss_kb': "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    load0, start = load_avg(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=ENV, cwd=ROOT)
    wall = time.perf_counter() - start
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        return {"storage": storage, "error": res["err"][-1500:], "cmd": " ".join(cmd[2:])}
    marks = [every, steps]
    t0, t1 = (max(p.stat().st_mtime for p in (out / "checkpoints" / f"ckpt_{u:08d}").iterdir()) for u in marks)
    result = {"storage": storage, "updates_per_s": round((steps - every) / (t1 - t0), 3),
              "peak_rss_gb": round(res["maxrss_kb"] / 2**20, 3), "wall_s": round(wall, 1),
              "load_avg_start": load0, "load_avg_end": load_avg(), "cmd": " ".join(cmd[2:])}
    shutil.rmtree(out, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/data_scale"))
    ap.add_argument("--transitions", type=int, default=1_000_000)
    ap.add_argument("--episode-length", type=int, default=100)
    ap.add_argument("--frames-from", type=Path, default=DEFAULT_FRAMES)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0, help="per sampling rate")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--subset-demos", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep the data file and its index")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--child-sampling", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_sampling is not None:
        print(json.dumps(measure_sampling(args.child_sampling, args.batch, args.seconds)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"synthetic_{args.transitions}.hdf5"
    results: dict[str, Any] = {"output": str(args.output), "protocol": "benchmarks/protocols/data_scale.md",
                               "transitions": args.transitions,
                               "episode_length": args.episode_length, "batch": args.batch,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        pool, what = frame_pool(args.frames_from)
        results["frames"] = what
        if not path.is_file():
            t = time.perf_counter()
            write_file(path, args.transitions, args.episode_length, pool)
            results["write_s"] = round(time.perf_counter() - t, 1)
        results["file_gb"] = round(path.stat().st_size / 1e9, 3)
        del pool
        print(f"file {path}: {results['file_gb']} GB ({results.get('write_s', 'existing')} s)", flush=True)
        save(results)

        from robopretrain.data.frames import build_index, index_dir

        if not index_dir(path).is_dir():
            t = time.perf_counter()
            build_index(path, [CAM])
            results["index_s"] = round(time.perf_counter() - t, 1)
        results["index_gb"] = round(folder_bytes(index_dir(path)) / 1e9, 3)
        results["in_memory_frames_gb"] = round(2 * args.transitions * pool_bytes(path) / 1e9, 3)
        print(f"index {index_dir(path)}: {results['index_gb']} GB ({results.get('index_s', 'existing')} s)", flush=True)
        save(results)

        proc = subprocess.run([sys.executable, __file__, "--child-sampling", str(path), "--batch", str(args.batch),
                               "--seconds", str(args.seconds)], capture_output=True, text=True, env=ENV, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        results["sampling"] = json.loads(proc.stdout.strip().splitlines()[-1])
        print("sampling:", results["sampling"], flush=True)
        save(results)

        runs = []
        for r in range(args.rounds):
            for storage, extra in (("disk", []), ("memory", [f"data.max_demos={args.subset_demos}"])):
                res = stage2(path, args.workdir / f"run_{storage}", storage, args.steps, args.every, extra)
                res["round"] = r
                runs.append(res)
                print("stage 2:", {k: v for k, v in res.items() if k != "cmd"}, flush=True)
                results["stage2"] = runs
                save(results)
        ok = [x for x in runs if "updates_per_s" in x]
        disk = [x["updates_per_s"] for x in ok if x["storage"] == "disk"]
        mem = [x["updates_per_s"] for x in ok if x["storage"] == "memory"]
        if disk and mem:
            ratio = float(np.median(disk) / np.median(mem))
            peak = max(x["peak_rss_gb"] for x in ok if x["storage"] == "disk")
            results["summary"] = {"disk_updates_per_s_median": float(np.median(disk)),
                                  "memory_subset_updates_per_s_median": float(np.median(mem)),
                                  "disk_over_memory": round(ratio, 3), "goal_within_20pct": ratio >= 0.8,
                                  "disk_peak_rss_gb": peak, "goal_rss_le_4gb": peak <= 4.0}
            print("summary:", results["summary"], flush=True)
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        save(results)
    finally:
        if not args.keep:
            from robopretrain.data.frames import index_dir

            shutil.rmtree(index_dir(path), ignore_errors=True)
            path.unlink(missing_ok=True)


def pool_bytes(path: Path) -> int:
    """Bytes of one camera frame of ``path``."""
    from robopretrain.data.hdf5 import read_info

    return int(np.prod(read_info(path).obs_specs[CAM][0]))


if __name__ == "__main__":
    main()
