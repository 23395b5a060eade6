"""Meta-World end to end: MT10-style prior tasks -> the held-out drawer-open-v3, offline then online, states and 64 px
images, through the documented commands only. Protocol: ``benchmarks/protocols/metaworld.md``.

    python benchmarks/metaworld_end_to_end.py             # states and images, seeds 0 1 2
    python benchmarks/metaworld_end_to_end.py --obs states --seeds 0
    python benchmarks/metaworld_end_to_end.py --summarize-only

Every step is a subprocess running a documented command (``robopretrain.envs.metaworld_collect``,
``robopretrain.train``, ``finetune.train``, ``robopretrain.evaluate``); each resumes or is skipped when its output
exists, so an interrupted benchmark continues. Output: ``benchmarks/results/metaworld.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils; appended so benchmarks/ shadows no package
from bench_utils import ended_with_this, seeds_then_episodes_ci  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "metaworld.json"
OBS = {
    "states": ["obs.low_dim=[proprio,object]", "algo.batch_size=256", "algo.n_actions=10"],
    "images": ["obs.rgb=[agentview_image]", "obs.low_dim=[proprio]", "algo.batch_size=64", "algo.n_actions=4"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--obs", nargs="+", default=list(OBS), choices=list(OBS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--prior-demos", type=int, default=20)
    p.add_argument("--target-demos", type=int, default=10)
    p.add_argument("--offline-steps", type=int, default=3000)
    p.add_argument("--online-steps", type=int, default=2000)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_metaworld"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--summarize-only", action="store_true")
    return p.parse_args(argv)


def sh(args: list[str], what: str) -> float:
    """Run ``python -m ...`` (one torch thread); raises with the tail of stderr when it fails. Returns seconds."""
    cmd = [sys.executable, "-m", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ended_with_this(), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - start


def data(args: argparse.Namespace) -> dict[str, Path]:
    from robopretrain.envs.metaworld import mt10_split

    split = mt10_split()
    work = args.work_dir / "data"
    out = {"prior": work / "prior.hdf5", "target": work / "target.hdf5"}
    if not out["prior"].is_file():
        sh(["robopretrain.envs.metaworld_collect", f"tasks=[{','.join(split.prior)}]",
            f"episodes_per_task={args.prior_demos}", "render_images=true", f"output={out['prior']}", "seed=0",
            f"hydra.run.dir={work}/hydra"], "prior demos")
    if not out["target"].is_file():
        sh(["robopretrain.envs.metaworld_collect", f"tasks=[{split.target}]", f"episodes_per_task={args.target_demos}",
            "kinds.clean.fraction=1.0", "kinds.noisy.fraction=0.0", "kinds.failing.fraction=0.0", "render_images=true",
            f"output={out['target']}", "seed=1", f"hydra.run.dir={work}/hydra"], "target demos")
    return out


def evaluate(checkpoint: Path, out: Path, episodes: int) -> list[bool]:
    """Per-episode nominal success of a checkpoint on its target (``robopretrain.evaluate``)."""
    info_path = out / "eval_info.json"
    if not info_path.is_file():
        sh(["robopretrain.evaluate", f"checkpoint={checkpoint}", "target={name: drawer-open-v3, family: metaworld}",
            "select=[nominal]", f"episodes={episodes}", "workers=0", "video.enabled=false", f"output_dir={out}",
            f"hydra.run.dir={out}/hydra"], f"evaluation of {checkpoint}")
    info = json.loads(info_path.read_text())
    return [bool(e["success"]) for e in sorted(info["episodes"], key=lambda e: e["episode"])]


def one(args: argparse.Namespace, files: dict[str, Path], obs: str, seed: int) -> dict[str, Any]:
    run = args.work_dir / obs / f"seed{seed}"
    seconds: dict[str, float] = {}
    common = [f"seed={seed}", "num_threads=1", *OBS[obs]]
    seconds["stage2"] = sh(["robopretrain.train", "algo=calql", f"data.path={files['prior']}",
                            f"data.mix.path={files['target']}", "data.mix.fraction=0.1",
                            f"train.steps={args.offline_steps}", f"train.checkpoint_every={args.offline_steps}",
                            f"train.eval_every={args.offline_steps}", "train.eval_targets=[]", "train.progress=false",
                            f"output_dir={run}/stage2", f"hydra.run.dir={run}/stage2/hydra", *common], "stage 2")
    seconds["stage3"] = sh(["finetune.train", "algo=calql", f"checkpoint={run}/stage2",
                            "target={name: drawer-open-v3, family: metaworld}", f"data.path={files['target']}",
                            f"online.env_steps={args.online_steps}", "online.eval_every=500", "online.eval_episodes=20",
                            f"online.checkpoint_every={args.online_steps}", "online.num_envs=1", "online.progress=false",
                            f"output_dir={run}/stage3", f"hydra.run.dir={run}/stage3/hydra",
                            *[c for c in common if not c.startswith("obs.")]], "stage 3")
    from robopretrain.metrics import read_jsonl

    rows = [r for r in read_jsonl(run / "stage3" / "metrics.jsonl") if "eval/success" in r]
    return {"obs": obs, "seed": seed, "seconds": seconds,
            "offline_success": evaluate(run / "stage2", run / "eval_stage2", args.eval_episodes),
            "final_success": evaluate(run / "stage3", run / "eval_stage3", args.eval_episodes),
            "cumulative_regret": rows[-1].get("train/cumulative_regret"),
            "curve": [(r["env_steps"], r["eval/success"]) for r in rows]}


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| observations | seeds | offline success [95% CI] | final success [95% CI] | cumulative regret | "
             "per seed: offline -> final |", "|---|---|---|---|---|---|"]
    for obs in OBS:
        group = sorted((r for r in runs if r["obs"] == obs), key=lambda r: r["seed"])
        if not group:
            continue
        cells = []
        for key in ("offline_success", "final_success"):
            per = [r[key] for r in group]
            lo, hi = seeds_then_episodes_ci(per)
            cells.append(f"{np.mean([np.mean(p) for p in per]):.2f} [{lo:.2f}, {hi:.2f}]")
        regrets = [r["cumulative_regret"] for r in group if r["cumulative_regret"] is not None]
        seeds = ", ".join(f"{np.mean(r['offline_success']):.2f} -> {np.mean(r['final_success']):.2f}" for r in group)
        lines.append(f"| {obs} | {len(group)} | {cells[0]} | {cells[1]} | "
                     f"{np.mean(regrets):.2f} | {seeds} |" if regrets else f"| {obs} | {len(group)} | {cells[0]} | "
                     f"{cells[1]} | n/a | {seeds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    runs = saved["runs"]
    if not args.summarize_only:
        files = data(args)
        for obs in args.obs:
            for seed in args.seeds:
                if any(r["obs"] == obs and r["seed"] == seed for r in runs):
                    continue
                runs.append(one(args, files, obs, seed))
                print(f"{obs} seed {seed}: offline {np.mean(runs[-1]['offline_success']):.2f} -> final "
                      f"{np.mean(runs[-1]['final_success']):.2f} ({sum(runs[-1]['seconds'].values()):.0f} s)",
                      flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"protocol": "benchmarks/protocols/metaworld.md",
                                                "command": " ".join(sys.argv), "runs": runs}, indent=1))
    print(table(runs))


if __name__ == "__main__":
    main()
