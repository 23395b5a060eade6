"""Exploratory, after the protocol run (not part of benchmarks/protocols/recipe.md): POR on the Reach clean-50 file with
the authors' larger policy learning rate (their AntMaze-umaze setting ``--policy_lr 0.001``, for the guide and the
execute policy; the value keeps 1e-4), seed 0, trained and evaluated exactly as ``benchmarks/recipe.py`` does (50 fixed
episodes at 1000 and 2500 updates).

    python benchmarks/recipe_por_lr.py 1e-3 --work-dir /tmp/por15_recipe

Writes ``benchmarks/results/recipe_offline_family_por_lr.json``; a rerun skips finished runs.
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

OUT = ROOT / "benchmarks" / "results" / "recipe_offline_family_por_lr.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("lrs", nargs="+", type=float, help="learning rate of the guide and the execute policy")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_recipe"))
    args = p.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else {"runs": {}}
    data = recipe.collect_data("Reach", 50, args.work_dir)
    for lr in args.lrs:
        key = f"Reach/por_lr{lr:g}/seed0"
        if key in results["runs"]:
            continue
        out = args.work_dir / "runs_lr" / f"por_lr{lr:g}" / "seed0"
        seconds = None
        if not (out / "checkpoints" / "ckpt_00002500").is_dir():
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "robopretrain.train", "algo=por", f"algo.guide_lr={lr}", f"algo.actor_lr={lr}",
                   f"data.path={data}", "seed=0", f"output_dir={out}", f"hydra.run.dir={out}/hydra", "num_threads=1",
                   "train.steps=2500", "train.eval_targets=[]", "train.checkpoint_every=500",
                   "train.keep_checkpoints=100", "train.progress=false", "train.tensorboard=false"]
            subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            seconds = time.perf_counter() - start
        success = {str(u): recipe.evaluate_checkpoint(out / "checkpoints" / f"ckpt_{u:08d}", "Reach", 50)
                   for u in (1000, 2500)}
        results["runs"][key] = {"task": "Reach", "algo": "por", "guide_lr": lr, "actor_lr": lr, "seed": 0,
                                "success": success, "train_seconds": seconds}
        print(key, {u: sum(s) / len(s) for u, s in success.items()}, flush=True)
    results.update({"note": "exploratory, chosen after the protocol run; not part of the protocol",
                    "command": " ".join(sys.argv), "cpu": recipe.cpu_model()})
    OUT.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
