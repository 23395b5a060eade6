"""Demos in an env's own narrow action units (a +-0.05 box inside [-1, 1]), with and without declaring the box
(``data.action_bounds``): BC and IQL offline, deterministic and sampled success, and IQL fine-tuned online.
Protocol: ``benchmarks/protocols/action_bounds.md``.

    python benchmarks/action_bounds.py                  # the protocol: 2 arms x 3 seeds (~10 min on 2 cores)
    python benchmarks/action_bounds.py --summarize-only # the table from the saved JSON

Each (arm, seed) runs stage 2 (BC, IQL) and stage 3 (IQL) in this process through their own ``run`` functions, in
``--work-dir``; results go to ``benchmarks/results/action_bounds.json`` after every finished run, and a rerun skips
what that file holds (a killed stage resumes from its checkpoint).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(HERE))  # bench_utils, claims_metrics, narrow_reach_env; appended so benchmarks/ shadows nothing
sys.path.insert(0, str(ROOT))

from bench_utils import cpu_model, git_commit, outcomes, seeds_then_episodes_ci, write_json_atomic  # noqa: E402
from claims_metrics import difference_ci  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "action_bounds.json"
ARMS = {"raw": None, "bounds": {"low": [-0.05, -0.05], "high": [0.05, 0.05]}}
TARGET = {"name": "narrow_reach", "family": "gym", "env_id": "narrow_reach_env:NarrowReach", "task_id": 0,
          "max_episode_steps": 40, "obs_map": {"observations": "observation"}, "reward": "sparse",
          "terminate_on_success": True}
BUDGETS = {"bc": 2000, "iql": 5000}
ENV_STEPS = 1000
EPISODES = 50
METRICS = ("bc_deterministic", "bc_sampled", "iql_deterministic", "iql_sampled", "stage3_deterministic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_action_bounds"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--summarize-only", action="store_true")
    return p.parse_args(argv)


class Sampled:
    """An agent whose ``act`` samples from the policy whatever it is asked (for ``run_episodes``)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def act(self, obs: Any, deterministic: bool = True) -> Any:
        return self.agent.act(obs, deterministic=False)


def success_counts(ckpt: Path) -> dict[str, int]:
    """Successes of the checkpoint's deterministic and sampled policy over the protocol's evaluation episodes."""
    import torch

    from robopretrain.checkpoint import load_agent
    from robopretrain.envs.target import Target
    from robopretrain.evaluation import agent_env, run_episodes

    agent, _ = load_agent(ckpt)
    out = {}
    for name, policy in (("deterministic", agent), ("sampled", Sampled(agent))):
        torch.manual_seed(0)
        env = agent_env(agent, Target(**TARGET))
        try:
            out[name] = int(run_episodes(policy, env, EPISODES)["successes"])
        finally:
            env.close()
    return out


def stage2(data: Path, out: Path, algo: str, seed: int, bounds: dict[str, Any] | None) -> Path:
    from robopretrain.build import compose
    from robopretrain.train import run

    cfg = compose("robopretrain", {"algo": algo}, {
        "seed": seed, "num_threads": 1, "output_dir": str(out), "obs": {"low_dim": ["observations"]},
        "data": {"path": str(data), "cache_dir": str(out.parent / "cache"), "action_bounds": bounds},
        "train": {"steps": BUDGETS[algo], "eval_targets": [], "checkpoint_every": BUDGETS[algo], "progress": False,
                  "tensorboard": False, "log_every": 500}})
    return Path(run(cfg))


def stage3(ckpt: Path, data: Path, out: Path, seed: int) -> Path:
    from finetune.train import run
    from robopretrain.build import compose

    cfg = compose("finetune", {"algo": "iql", "dr": "none"}, {
        "seed": seed, "num_threads": 1, "output_dir": str(out), "checkpoint": str(ckpt), "target": dict(TARGET),
        "data": {"path": str(data), "cache_dir": str(out.parent / "cache")},
        "online": {"env_steps": ENV_STEPS, "num_envs": 1, "asynchronous": False, "eval_every": 250,
                   "eval_episodes": 20, "checkpoint_every": ENV_STEPS, "progress": False, "tensorboard": False}})
    run(cfg)
    return out / "checkpoints"  # its newest checkpoint is the final one


def run_one(arm: str, seed: int, data: Path, work: Path) -> dict[str, Any]:
    from robopretrain.metrics import read_jsonl

    start, folder, record = time.perf_counter(), work / f"{arm}_seed{seed}", {}
    for algo in ("bc", "iql"):
        ckpt = stage2(data, folder / algo, algo, seed, ARMS[arm])
        counts = success_counts(ckpt)
        record[f"{algo}_deterministic"], record[f"{algo}_sampled"] = counts["deterministic"], counts["sampled"]
        if algo == "iql":
            s3 = stage3(ckpt, data, folder / "stage3", seed)
            record["stage3_deterministic"] = success_counts(s3)["deterministic"]
            history = read_jsonl(folder / "stage3" / "metrics.jsonl")
            losses = [r["train/q_loss"] for r in history if "train/q_loss" in r]
            record["stage3_first_q_loss"] = losses[0] if losses else None
            record["stage3_curve"] = [[r.get("env_steps", r.get("step")), r["eval/success"]] for r in history
                                      if "eval/success" in r]
    record["call_seconds"] = time.perf_counter() - start  # this call's (a resumed run's is shorter)
    return record


def summarize(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = [f"episodes per evaluation: {EPISODES}; CPU: {results.get('cpu', '?')}", "",
             "| metric | raw (mean, 95% CI) | bounds (mean, 95% CI) | bounds - raw (95% CI) | per seed raw / bounds |",
             "|---|---|---|---|---|"]
    results["summary"] = {}
    for metric in METRICS:
        per = {arm: [outcomes(r[metric], EPISODES) for key, r in sorted(runs.items()) if key.startswith(arm + "_")]
               for arm in ARMS}
        if not all(per.values()):
            continue
        cells, summary = [], {}
        for arm in ARMS:
            mean = float(sum(sum(x) / len(x) for x in per[arm]) / len(per[arm]))
            low, high = seeds_then_episodes_ci(per[arm])
            summary[arm] = {"mean": mean, "ci": [low, high]}
            cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}]")
        diff, low, high = difference_ci(per["bounds"], per["raw"])
        summary["difference"] = {"bounds_minus_raw": diff, "ci": [low, high]}
        results["summary"][metric] = summary
        seeds = " / ".join(" ".join(f"{sum(x) / len(x):.2f}" for x in per[arm]) for arm in ARMS)
        lines.append(f"| {metric} | {cells[0]} | {cells[1]} | {diff:+.2f} [{low:+.2f}, {high:+.2f}] | {seeds} |")
    q = {arm: [r["stage3_first_q_loss"] for key, r in sorted(runs.items()) if key.startswith(arm + "_")]
         for arm in ARMS}
    lines += ["", "stage 3 first train/q_loss per seed: " + "; ".join(
        f"{arm} {', '.join(f'{v:.3g}' for v in vals if v is not None)}" for arm, vals in q.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import json

    from narrow_reach_env import write_demos

    args = parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    if not args.summarize_only:
        logging.basicConfig(level=logging.WARNING)
        results.update(cpu=cpu_model(), commit=git_commit(ROOT), protocol="benchmarks/protocols/action_bounds.md")
        args.work_dir.mkdir(parents=True, exist_ok=True)
        data = args.work_dir / "narrow_reach_expert.hdf5"
        if not data.is_file():
            write_demos(data)
        for seed in args.seeds:
            for arm in args.arms:
                key = f"{arm}_seed{seed}"
                if key in results["runs"]:
                    continue
                print(f"running {key} ...", flush=True)
                results["runs"][key] = run_one(arm, seed, data, args.work_dir)
                print(f"  {key}: {results['runs'][key]}", flush=True)
                write_json_atomic(args.out, results)
    print(summarize(results))
    write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()
