"""The testbed preset's stage 2 from pixels at growing update budgets: prior-task success against updates.

Issue 11's criterion 5 asks stage 2, from pixels, to learn its nine prior tasks (mean success >= 0.5 over 20
episodes per task) at the testbed budget; the preset's 3000 updates reached 0.22-0.45. This script measures how far
more updates take it, on the data and stage-1 encoder of a finished testbed run, so the answer costs only stage 2:

    python benchmarks/stage2_pixels.py --from-run <testbed run folder> --budgets 3000 6000 9000 \
        --work-dir <folder> [--override stage2.algo=... encoder.shared=true ...]

The run folder's ``data/`` and ``stage1/`` are linked (not copied) into ``<work-dir>/run``; stage 2 is the
pipeline's own (:func:`robopretrain.pipeline.stage2_config` of ``--config-name testbed`` with the overrides, run by
``robopretrain.train.run``), trained to each budget in turn: each budget continues the previous one's checkpoint (a
changed ``train.steps`` resumes) and ends with the per-task evaluation. Resumable: a budget whose evaluation is in
``stage2/metrics.jsonl`` is not run again; an interrupted one resumes from its last checkpoint. Writes JSON (default
``<work-dir>/stage2_pixels.json``): per budget the mean and per-task success, the wall seconds of that call and the
load average. One seed, exploratory: the figures answer "is it a matter of updates?", not a claim.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--from-run", type=Path, required=True,
                   help="a testbed pipeline run folder whose data/ and stage1/ are done")
    p.add_argument("--budgets", type=int, nargs="+", default=[3000, 6000, 9000], help="stage-2 updates, ascending")
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--preset", default="testbed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", nargs="*", default=[], help="more pipeline overrides (Hydra syntax)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if sorted(args.budgets) != args.budgets or len(set(args.budgets)) != len(args.budgets):
        p.error(f"--budgets must be strictly ascending, got {args.budgets}")
    args.out = args.out or args.work_dir / "stage2_pixels.json"
    return args


def link_inputs(from_run: Path, run: Path) -> None:
    """``run/data`` and ``run/stage1`` as links to ``from_run``'s, which must be finished stages."""
    run.mkdir(parents=True, exist_ok=True)
    for stage in ("data", "stage1"):
        if not (from_run / stage / "done.json").is_file():
            raise SystemExit(f"{from_run / stage}: not a finished stage (no done.json); run the pipeline there first")
        link = run / stage
        if not link.exists():
            link.symlink_to((from_run / stage).resolve(), target_is_directory=True)


def stage2_run_config(args: argparse.Namespace, budget: int):  # -> DictConfig
    """The pipeline's stage-2 config of ``--preset`` with the overrides, ``budget`` updates, evaluated at the end."""
    from hydra import compose, initialize_config_dir

    from robopretrain import pipeline

    run = args.work_dir / "run"
    overrides = [f"run_dir={run}", f"seed={args.seed}", "num_threads=1", "progress=false",
                 f"stage2.steps={budget}", *args.override]
    with initialize_config_dir(str(pipeline.CONFIG_DIR), version_base="1.3"):
        cfg = compose(args.preset, overrides=overrides)
    c = pipeline.stage2_config(cfg, run)
    c.train.eval_every = budget  # one per-task evaluation, at the budget
    return c


def evaluation_at(metrics: Path, step: int) -> dict[str, Any] | None:
    """The per-task evaluation logged at ``step`` in a stage's metrics.jsonl, or None."""
    if not metrics.is_file():
        return None
    found = None
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == step and "eval/success" in row:
            found = row
    if found is None:
        return None
    tasks = {k.split("/")[1]: v for k, v in found.items()
             if k.startswith("eval/") and k.endswith("/success") and k.count("/") == 2}
    return {"mean": found["eval/success"], "per_task": tasks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    from robopretrain.train import run as train_run

    run = args.work_dir / "run"
    link_inputs(args.from_run, run)
    out: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    out.update(what="stage 2 of the testbed preset from pixels at growing budgets (exploratory, one seed)",
               from_run=str(args.from_run), preset=args.preset, seed=args.seed, overrides=args.override,
               command=" ".join(sys.argv))
    out.setdefault("budgets", {})
    metrics = run / "stage2" / "metrics.jsonl"
    for budget in args.budgets:
        done = evaluation_at(metrics, budget)
        if done is None:
            load, start = os.getloadavg()[0], time.perf_counter()
            train_run(stage2_run_config(args, budget))
            done = evaluation_at(metrics, budget)
            if done is None:
                raise RuntimeError(f"{metrics}: no evaluation at step {budget} after the run")
            done.update(seconds=round(time.perf_counter() - start, 1),
                        load_average_before_after=[round(load, 2), round(os.getloadavg()[0], 2)])
            out["budgets"][str(budget)] = done
        else:
            out["budgets"].setdefault(str(budget), done)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        row = out["budgets"][str(budget)]
        print(f"{budget} updates: mean {row['mean']:.2f} | " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                          sorted(row["per_task"].items())), flush=True)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
