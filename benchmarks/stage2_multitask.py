"""Does multi-task stage 2 learn its prior tasks from the privileged state? BC / IQL / CQL variants on the nine prior
tasks, clean or mixed demos; per-task success in sim (exploratory, issue 11; README "Why stage 2 does not learn its
prior tasks").

    python benchmarks/stage2_multitask.py                          # every run below, one after another (resumable)
    python benchmarks/stage2_multitask.py --runs mtc_bc mtc_cql64 --jobs 2
    python benchmarks/stage2_multitask.py --collect-only           # JSON + table from the run folders that exist

Data: ``sim_envs.collect`` of the nine prior tasks, 200 episodes each, state only, collect seed 0: ``clean`` (every
episode clean) or ``mixed`` (the pipeline's kinds: clean 0.5 / noisy 0.3 / failing 0.2). Each run is
``python -m robopretrain.train`` (a subprocess, one torch thread, ``obs.min_std=0.05``, seed 0) for 10,000 updates,
evaluated on 20 episodes per task at 5,000 and 10,000. A rerun skips finished runs. Output:
``benchmarks/results/testbed_stage2_state_explore.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "benchmarks"))
from bench_utils import ended_with_this  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "testbed_stage2_state_explore.json"
TASKS = ("Reach", "PushBlock", "PickPlace", "Lift", "OpenDrawer", "CloseDrawer", "PressButton", "SlidePuck", "OpenDoor")
STEPS, EVAL_EVERY, EPISODES = 10_000, 5_000, 20
SMALL = ["algo.batch_size=64", "algo.n_actions=4"]  # the testbed preset's CQL
DATA_KINDS = {
    "clean": {"clean": 1.0, "noisy": 0.0, "failing": 0.0},
    "mixed": {"clean": 0.5, "noisy": 0.3, "failing": 0.2},
}
RUNS: dict[str, tuple[str, str, list[str]]] = {  # name -> (data, algo, overrides)
    "mtn_bc": ("mixed", "bc", []),
    "mtn_iql": ("mixed", "iql", []),
    "mtn_cql64": ("mixed", "cql", SMALL),
    "mtn_cql256": ("mixed", "cql", []),
    "mtn_cql64_bc3k": ("mixed", "cql", [*SMALL, "algo.bc_steps=3000"]),
    "mtc_bc": ("clean", "bc", []),
    "mtc_iql": ("clean", "iql", []),
    "mtc_cql64": ("clean", "cql", SMALL),
    "mtc_cql256": ("clean", "cql", []),
    "mtc_cql64_bc3k": ("clean", "cql", [*SMALL, "algo.bc_steps=3000"]),
    "mtc_cql64_plr3e4": ("clean", "cql", [*SMALL, "algo.policy_lr=3e-4"]),
    "mtc_cql64_a1": ("clean", "cql", [*SMALL, "algo.cql_alpha=1.0"]),
    # PTR's discount (0.96) and its {+10, -1} rewards
    "mtc_cql64_g96": ("clean", "cql", [*SMALL, "algo.discount=0.96"]),
    "mtc_cql64_g96r11": ("clean", "cql", [*SMALL, "algo.discount=0.96", "algo.reward_scale=11", "algo.reward_bias=-1"]),
    # BC at the CQL actor's optimiser budget (batch 64, lr 1e-4): what the actor could reach on its own
    "mtc_bc64_lr1e4": ("clean", "bc", ["algo.batch_size=64", "algo.lr=1e-4"]),
    # the actor's BC term (algo.actor_bc_weight, TD3+BC's normalisation; 0.4 is TD3+BC's alpha 2.5)
    "mtc_cql64_abc01": ("clean", "cql", [*SMALL, "algo.actor_bc_weight=0.1"]),
    "mtc_cql64_abc04": ("clean", "cql", [*SMALL, "algo.actor_bc_weight=0.4"]),
    "mtc_cql64_abc4": ("clean", "cql", [*SMALL, "algo.actor_bc_weight=4"]),
    "mtc_cql64_abc40": ("clean", "cql", [*SMALL, "algo.actor_bc_weight=40"]),
    "mtc_cql64_abc40_plr3e4": ("clean", "cql", [*SMALL, "algo.actor_bc_weight=40", "algo.policy_lr=3e-4"]),
    "mtn_cql64_abc4_plr3e4": ("mixed", "cql", [*SMALL, "algo.actor_bc_weight=4", "algo.policy_lr=3e-4"]),
    "mtn_cql64_abc40_plr3e4": ("mixed", "cql", [*SMALL, "algo.actor_bc_weight=40", "algo.policy_lr=3e-4"]),
    # ... on successful episodes only (algo.actor_bc_filter=success: filtered BC)
    "mtn_cql64_abc4f_plr3e4": ("mixed", "cql", [*SMALL, "algo.actor_bc_weight=4", "algo.policy_lr=3e-4",
                                                "algo.actor_bc_filter=success"]),
    "mtn_cql64_abc40f_plr3e4": ("mixed", "cql", [*SMALL, "algo.actor_bc_weight=40", "algo.policy_lr=3e-4",
                                                 "algo.actor_bc_filter=success"]),
    # IQL's AWR temperature: beta 1 at the x10 reward scale is AntMaze's 10 on unit rewards; 0.3 / 0.1 are 3 / 1
    "mtn_iql_b03": ("mixed", "iql", ["algo.beta=0.3"]),
    "mtn_iql_b01": ("mixed", "iql", ["algo.beta=0.1"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_stage2_multitask"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--collect-only", action="store_true", help="no training: read the run folders that exist")
    return p.parse_args(argv)


def collect_data(kind: str, work: Path) -> Path:
    from omegaconf import OmegaConf

    from sim_envs.collect import collect

    path = work / "data" / f"prior9_{kind}.hdf5"
    if path.is_file():
        return path
    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": list(TASKS), "episodes_per_task": 200, "render_images": False, "output": str(path),
                    "overwrite": True, "seed": 0,
                    "kinds": {k: {"fraction": f} for k, f in DATA_KINDS[kind].items()}})
    return Path(collect(cfg, progress=False))


def train(name: str, data: Path, algo: str, overrides: list[str], work: Path) -> None:
    """``robopretrain.train`` as a subprocess; skipped when its last checkpoint exists (it resumes otherwise)."""
    out = work / "runs" / name
    if (out / "checkpoints" / f"ckpt_{STEPS:08d}").is_dir():
        return
    cmd = [sys.executable, "-m", "robopretrain.train", f"data.path={data}", f"algo={algo}", f"train.steps={STEPS}",
           f"train.eval_every={EVAL_EVERY}", f"train.eval_episodes={EPISODES}", f"train.checkpoint_every={EVAL_EVERY}",
           "train.progress=false", "num_threads=1", "seed=0", "obs.min_std=0.05", f"output_dir={out}",
           f"hydra.run.dir={out}/hydra", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ended_with_this(), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def read_run(folder: Path) -> dict[int, dict[str, float]]:
    """Per evaluation step: each task's success and their mean (``metrics.jsonl``'s ``eval/<task>/success``)."""
    evals: dict[int, dict[str, float]] = {}
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return evals
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "eval/success" in row:
            per = {k.split("/")[1]: round(v, 3) for k, v in row.items() if k.endswith("/success") and k.count("/") == 2}
            evals[int(row["step"])] = {**per, "mean": round(row["eval/success"], 3)}
    return evals


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    if not args.collect_only:
        data = {kind: collect_data(kind, args.work_dir) for kind in sorted({RUNS[r][0] for r in args.runs})}
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda r: train(r, data[RUNS[r][0]], RUNS[r][1], RUNS[r][2], args.work_dir), args.runs))
    runs: dict[str, Any] = {}
    for name in args.runs:
        kind, algo, overrides = RUNS[name]
        evals = read_run(args.work_dir / "runs" / name)
        if evals:
            runs[name] = {"data": kind, "algo": algo, "overrides": overrides, "success": evals}
    out = {"what": "exploratory (not under a protocol): multi-task stage 2 from privileged state "
                   "(obs.low_dim=[proprio,object], task one-hot), obs.min_std=0.05, seed 0, "
                   f"{EPISODES} evaluation episodes per task at each budget",
           "command": " ".join(["python", "benchmarks/stage2_multitask.py", *(argv if argv is not None else sys.argv[1:])]),
           "data": {k: f"sim_envs.collect, the nine prior tasks x 200 episodes, kinds {v}, state only, seed 0"
                    for k, v in DATA_KINDS.items()},
           "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"| run | data | algo | overrides | {' | '.join(str(s) for s in (EVAL_EVERY, STEPS))} |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        cells = [f"{r['success'][s]['mean']:.2f}" if s in r["success"] else "-" for s in (EVAL_EVERY, STEPS)]
        print(f"| {name} | {r['data']} | {r['algo']} | {' '.join(r['overrides'])} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
