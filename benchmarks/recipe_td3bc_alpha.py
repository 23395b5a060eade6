"""Exploratory, after the protocol runs (not part of benchmarks/protocols/recipe.md): TD3+BC on the Reach clean-50
file with a smaller ``alpha`` (weight of the Q term against the BC term), seed 0, trained and evaluated exactly as
``benchmarks/recipe.py`` does (50 fixed episodes at 1000 and 2500 updates).

    python benchmarks/recipe_td3bc_alpha.py 0.25 0.1 --work-dir /tmp/algos15_recipe

Writes ``benchmarks/results/recipe_offline_family_td3bc_alpha.json``; a rerun skips finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import recipe  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "recipe_offline_family_td3bc_alpha.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("alphas", nargs="+", type=float)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_recipe"))
    args = p.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else {"runs": {}}
    data = recipe.collect_data("Reach", 50, args.work_dir)
    for alpha in args.alphas:
        key = f"Reach/td3_bc_alpha{alpha}/seed0"
        if key in results["runs"]:
            continue
        out = args.work_dir / "runs_alpha" / f"td3_bc_alpha{alpha}" / "seed0"
        seconds = None
        if not (out / "checkpoints" / "ckpt_00002500").is_dir():
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "robopretrain.train", "algo=td3_bc", f"algo.alpha={alpha}", f"data.path={data}",
                   "seed=0", f"output_dir={out}", f"hydra.run.dir={out}/hydra", "num_threads=1", "train.steps=2500",
                   "train.eval_targets=[]", "train.checkpoint_every=500", "train.keep_checkpoints=100",
                   "train.progress=false", "train.tensorboard=false"]
            subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            seconds = time.perf_counter() - start
        success = {str(u): recipe.evaluate_checkpoint(out / "checkpoints" / f"ckpt_{u:08d}", "Reach", 50)
                   for u in (1000, 2500)}
        results["runs"][key] = {"task": "Reach", "algo": "td3_bc", "alpha": alpha, "seed": 0, "success": success,
                                "train_seconds": seconds}
        print(key, {u: sum(s) / len(s) for u, s in success.items()}, flush=True)
    results.update({"note": "exploratory, chosen after the protocol runs; not part of the protocol",
                    "command": " ".join(sys.argv), "cpu": recipe.cpu_model()})
    OUT.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
