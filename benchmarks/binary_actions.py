"""CQL and Cal-QL on clean demos whose gripper actions take only the values +-1, with and without the actor's BC term,
beside BC; success and the mechanism (does the critic prefer closing where the actor opens?).
Protocol: ``benchmarks/protocols/binary_actions.md``.

    python benchmarks/binary_actions.py --jobs 2          # the protocol: 6 arms x 3 seeds (~25 min on 2 cores)
    python benchmarks/binary_actions.py --summarize-only  # the table from the saved JSON

Each (arm, seed) trains stage 2 as a subprocess in ``--work-dir`` (a killed run resumes from its checkpoint) and is
evaluated here; results go to ``benchmarks/results/binary_actions.json`` after every finished run, and a rerun skips
what that file holds.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(HERE))  # bench_utils, claims_metrics, grip_reach_env; appended so benchmarks/ shadows nothing
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench_utils import cpu_model, ended_with_this, git_commit, seeds_then_episodes_ci, write_json_atomic  # noqa: E402
from claims_metrics import difference_ci  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "binary_actions.json"
ARMS: dict[str, tuple[str, list[str]]] = {
    "bc": ("bc", []),
    "cql": ("cql", []),
    "cql_bc4": ("cql", ["algo.actor_bc_weight=4"]),
    "cql_bc40": ("cql", ["algo.actor_bc_weight=40"]),
    "calql": ("calql", []),
    "calql_bc40": ("calql", ["algo.actor_bc_weight=40"]),
}
TARGET = {"name": "grip_reach", "family": "gym", "env_id": "grip_reach_env:GripReach", "task_id": 0,
          "max_episode_steps": 50, "obs_map": {"observations": "observation"}, "reward": "sparse",
          "terminate_on_success": True}
UPDATES = 3000
EPISODES = 50
PROBE_STATES = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_binary_actions"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--summarize-only", action="store_true")
    return p.parse_args(argv)


def train(data: Path, out: Path, arm: str, seed: int) -> float:
    """Stage 2 of ``arm`` as a subprocess (resumed when killed); its wall seconds (0 when it had finished)."""
    algo, overrides = ARMS[arm]
    if (out / "checkpoints" / f"ckpt_{UPDATES:08d}").is_dir():
        return 0.0
    cmd = [sys.executable, "-m", "robopretrain.train", f"algo={algo}", f"data.path={data}", f"seed={seed}",
           "obs.low_dim=[observations]", f"data.cache_dir={out.parent / 'cache'}", f"output_dir={out}",
           f"hydra.run.dir={out}/hydra", "num_threads=1", f"train.steps={UPDATES}", "train.eval_targets=[]",
           f"train.checkpoint_every={UPDATES}", "train.progress=false", "train.tensorboard=false", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**ended_with_this(), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def probe(agent: Any) -> dict[str, float]:
    """The mechanism at :func:`grip_reach_env.goal_states`: the share of states where the deterministic policy closes
    the gripper; with a critic, the share where ``Q(s, (a_xyz, -1)) > Q(s, (a_xyz, +1))`` and that gap's mean."""
    import torch

    from grip_reach_env import goal_states
    from robopretrain.data.keys import TASK_ID

    states = goal_states(PROBE_STATES)
    obs: dict[str, np.ndarray] = {"observations": states}
    if TASK_ID in agent.spec.storage_keys():
        obs[TASK_ID] = np.full(len(states), TARGET["task_id"], np.int64)
    actions = np.asarray(agent.act(obs))
    out = {"policy_closes": float(np.mean(actions[:, 3] < 0)), "policy_gripper_mean": float(actions[:, 3].mean())}
    if agent.has_q:
        close, open_ = (torch.as_tensor(np.concatenate([actions[:, :3], np.full((len(states), 1), g)], axis=1),
                                        dtype=torch.float32) for g in (-1.0, 1.0))
        gap = (agent.q_values(obs, close) - agent.q_values(obs, open_)).numpy()
        out.update(critic_prefers_close=float(np.mean(gap > 0)), q_close_minus_open=float(gap.mean()))
    return out


def evaluate(ckpt: Path) -> dict[str, Any]:
    """Per-episode success of the deterministic policy on the evaluation seeds, and :func:`probe`."""
    import torch

    from robopretrain.checkpoint import load_agent
    from robopretrain.envs.target import Target
    from robopretrain.evaluation import EVAL_SEED, agent_env, run_episodes

    torch.set_num_threads(1)
    agent, _ = load_agent(ckpt)
    env = agent_env(agent, Target(**TARGET))
    try:
        success = [bool(run_episodes(agent, env, 1, eval_seed=EVAL_SEED + i)["success"]) for i in range(EPISODES)]
    finally:
        env.close()
    return {"success": success, **probe(agent)}


def run_one(arm: str, seed: int, data: Path, work: Path) -> dict[str, Any]:
    out = work / arm / f"seed{seed}"
    seconds = train(data, out, arm, seed)
    record = {"arm": arm, "seed": seed, "algo": ARMS[arm][0], "overrides": ARMS[arm][1], "updates": UPDATES,
              **evaluate(out / "checkpoints" / f"ckpt_{UPDATES:08d}")}
    if seconds:
        record["train_seconds"] = seconds
    return record


def summarize(results: dict[str, Any]) -> str:
    runs = list(results["runs"].values())
    lines = [f"success at {UPDATES} updates over {EPISODES} episodes; at {PROBE_STATES} goal states with the gripper "
             f"open: the share where the policy closes it and where the critic prefers closing; CPU: "
             f"{results.get('cpu', '?')}", "",
             "| arm | success (mean, 95% CI) | minus cql (95% CI) | per seed | policy closes "
             "| critic prefers closing |",
             "|---|---|---|---|---|---|"]
    per = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"]) for arm in ARMS}
    results["summary"] = {}
    for arm, rows in per.items():
        if not rows:
            continue
        seeds = [[float(x) for x in r["success"]] for r in rows]
        mean = float(np.mean([np.mean(s) for s in seeds]))
        low, high = seeds_then_episodes_ci(seeds)
        entry: dict[str, Any] = {"mean": mean, "ci": [low, high], "seeds": [r["seed"] for r in rows]}
        diff_cell = "-"
        if arm != "cql" and per["cql"]:
            diff, dlow, dhigh = difference_ci(seeds, [[float(x) for x in r["success"]] for r in per["cql"]])
            entry["minus_cql"] = {"difference": diff, "ci": [dlow, dhigh]}
            diff_cell = f"{diff:+.2f} [{dlow:+.2f}, {dhigh:+.2f}]"
        closes = " / ".join(f"{r['policy_closes']:.2f}" for r in rows)
        prefers = " / ".join(f"{r['critic_prefers_close']:.2f}" for r in rows if "critic_prefers_close" in r) or "-"
        results["summary"][arm] = entry
        lines.append(f"| {arm} | {mean:.2f} [{low:.2f}, {high:.2f}] | {diff_cell} | "
                     f"{' / '.join(f'{np.mean(s):.2f}' for s in seeds)} | {closes} | {prefers} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import json

    from grip_reach_env import write_demos

    args = parse_args(argv)
    if args.summarize_only and not args.out.is_file():
        raise SystemExit(f"binary_actions: no results at {args.out} to summarize")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    if not args.summarize_only:
        results.update(cpu=cpu_model(), commit=git_commit(ROOT), protocol="benchmarks/protocols/binary_actions.md",
                       command=" ".join(sys.argv))
        args.work_dir.mkdir(parents=True, exist_ok=True)
        data = args.work_dir / "grip_reach_expert.hdf5"
        if not data.is_file():
            write_demos(data)
        lock = threading.Lock()
        jobs = [(arm, seed) for seed in args.seeds for arm in args.arms if f"{arm}_seed{seed}" not in results["runs"]]

        def work(job: tuple[str, int]) -> None:
            arm, seed = job
            record = run_one(arm, seed, data, args.work_dir)
            with lock:
                results["runs"][f"{arm}_seed{seed}"] = record
                print(f"{arm} seed {seed}: success {np.mean(record['success']):.2f}, policy closes "
                      f"{record['policy_closes']:.2f}, critic prefers closing "
                      f"{record.get('critic_prefers_close', float('nan')):.2f}", flush=True)
                write_json_atomic(args.out, results)

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(work, jobs))
    print(summarize(results))
    write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()
