"""Exploratory runs after a protocol's (not governed by ``benchmarks/protocols/recipe.md``): one algorithm on the
Reach clean-50 file with changed settings, seed 0, trained and evaluated exactly as ``benchmarks/recipe.py`` does
(50 fixed episodes at 1000 and 2500 updates). Each ``--set`` is one run; its value is a comma-separated list of Hydra
overrides for ``robopretrain.train``.

    python benchmarks/recipe_explore.py td3_bc --set algo.alpha=0.25 --set algo.alpha=0.1
    python benchmarks/recipe_explore.py por --set algo.guide_lr=1e-3,algo.actor_lr=1e-3

Writes ``benchmarks/results/recipe_explore.json`` (runs keyed ``Reach/<algo>[<overrides>]/seed<S>``); a rerun skips
finished runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import recipe  # noqa: E402
from bench_utils import ended_with_this  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "recipe_explore.json"
BUDGETS = (1000, 2500)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("algo")
    p.add_argument("--set", dest="sets", action="append", required=True, metavar="KEY=VALUE[,KEY=VALUE...]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_recipe"))
    args = p.parse_args(argv)
    results = json.loads(OUT.read_text()) if OUT.is_file() else {"runs": {}}
    data = recipe.collect_data("Reach", 50, args.work_dir)
    for overrides in args.sets:
        items = [o for o in overrides.split(",") if o]
        bad = [o for o in items if "=" not in o]
        if bad:
            p.error(f"--set {overrides!r}: {bad} are not KEY=VALUE")
        key = f"Reach/{args.algo}[{','.join(items)}]/seed{args.seed}"
        if key in results["runs"]:
            continue
        out = args.work_dir / "explore" / f"{args.algo}_{'_'.join(items).replace('=', '')}" / f"seed{args.seed}"
        seconds = None
        if not (out / "checkpoints" / f"ckpt_{BUDGETS[-1]:08d}").is_dir():
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "robopretrain.train", f"algo={args.algo}", *items, f"data.path={data}",
                   f"seed={args.seed}", f"output_dir={out}", f"hydra.run.dir={out}/hydra", "num_threads=1",
                   f"train.steps={BUDGETS[-1]}", "train.eval_targets=[]", "train.checkpoint_every=500",
                   "train.keep_checkpoints=100", "train.progress=false", "train.tensorboard=false"]
            subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True,
                           env={**ended_with_this(), "OMP_NUM_THREADS": "1"})
            seconds = time.perf_counter() - start
        success = {str(u): recipe.evaluate_checkpoint(out / "checkpoints" / f"ckpt_{u:08d}", "Reach", 50)
                   for u in BUDGETS}
        results["runs"][key] = {"task": "Reach", "algo": args.algo, "overrides": items, "seed": args.seed,
                                "success": success, "train_seconds": seconds, "command": " ".join(sys.argv),
                                "cpu": recipe.cpu_model()}
        print(key, {u: sum(s) / len(s) for u, s in success.items()}, flush=True)
    results["note"] = "exploratory, chosen after the protocol runs; not part of the protocol"
    OUT.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
