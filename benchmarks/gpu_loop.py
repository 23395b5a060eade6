"""Stage 2's loop on a GPU with and without whole-update CUDA graphs (``train.cuda_graph``), one JSON.

    python benchmarks/gpu_loop.py --device cuda --out gpu_loop.json      # part of benchmarks/gpu_check.sh
    python benchmarks/gpu_loop.py --device cpu --steps 20 --modes eager   # the dry run: the commands start

50 clean scripted Reach episodes (states, collected here), then ``python -m robopretrain.train`` for IQL and Cal-QL,
``--steps`` updates, no evaluation, once eagerly and once with ``train.cuda_graph=true``: wall time of each run
(whole process: start-up, data loading, the updates and the final checkpoint) and updates/s from its
``metrics.jsonl`` rows' timestamps where present. IQL draws no random numbers in its update and the batches come
from the same seeded sampler, so its two runs must end with equal weights: the JSON gives the largest absolute
difference over every saved tensor (the check that the graphed loop trains the same agent).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "benchmarks"))
from bench_utils import ended_with_this  # noqa: E402


def collect_reach(path: Path, episodes: int) -> Path:
    from omegaconf import OmegaConf

    from sim_envs.collect import collect

    if path.is_file():
        return path
    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": ["Reach"], "episodes_per_task": episodes, "render_images": False, "output": str(path),
                    "overwrite": True, "seed": 0,
                    "kinds": {"clean": {"fraction": 1.0, "noise": 0.0, "stop": None},
                              "noisy": {"fraction": 0.0, "noise": 0.3, "stop": None},
                              "failing": {"fraction": 0.0, "noise": 1.0, "stop": [0.1, 0.5]}}})
    return Path(collect(cfg, progress=False))


def train(data: Path, out: Path, algo: str, steps: int, device: str, graph: bool) -> dict:
    cmd = [sys.executable, "-m", "robopretrain.train", f"algo={algo}", f"data.path={data}", "seed=0",
           f"output_dir={out}", f"hydra.run.dir={out}/hydra", f"device={device}", f"train.steps={steps}",
           "train.eval_targets=[]", f"train.checkpoint_every={steps}", "train.progress=false",
           "train.tensorboard=false", f"train.log_every={max(steps // 10, 1)}",
           f"train.cuda_graph={str(graph).lower()}", "obs.low_dim=[proprio,object]"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**ended_with_this(), "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr[-2500:], "wall_s": round(wall, 1)}
    return {"wall_s": round(wall, 1), "updates": steps}


def max_weight_diff(a: Path, b: Path) -> float:
    import torch

    wa = torch.load(next(a.glob("checkpoints/ckpt_*/weights.pt")), map_location="cpu", weights_only=True)
    wb = torch.load(next(b.glob("checkpoints/ckpt_*/weights.pt")), map_location="cpu", weights_only=True)

    def tensors(tree, prefix=""):
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from tensors(v, f"{prefix}{k}.")
        elif isinstance(tree, torch.Tensor) and tree.is_floating_point():
            yield prefix, tree

    ta, tb = dict(tensors(wa)), dict(tensors(wb))
    if set(ta) != set(tb):
        raise ValueError(f"the two checkpoints hold different tensors: {sorted(set(ta) ^ set(tb))[:5]}")
    return max(float((ta[k] - tb[k]).abs().max()) for k in ta)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--modes", nargs="+", default=["eager", "graph"], choices=["eager", "graph"])
    p.add_argument("--algos", nargs="+", default=["iql", "calql"])
    p.add_argument("--work", type=Path, default=Path("/tmp/robopretrain_gpu_loop"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_loop.json")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = collect_reach(args.work / "Reach_clean50.hdf5", 50)
    report: dict = {"device": args.device, "steps": args.steps, "runs": {}}
    for algo in args.algos:
        for mode in args.modes:
            out = args.work / f"{algo}_{mode}"
            report["runs"][f"{algo}_{mode}"] = res = train(data, out, algo, args.steps, args.device, mode == "graph")
            print(f"{algo} {mode}: {res}", flush=True)
        runs = report["runs"]
        if all(f"{algo}_{m}" in runs and "error" not in runs[f"{algo}_{m}"] for m in ("eager", "graph")):
            runs[f"{algo}_graph"]["wall_vs_eager"] = round(runs[f"{algo}_eager"]["wall_s"] / runs[f"{algo}_graph"]
                                                           ["wall_s"], 2)
            if algo == "iql":
                report["iql_max_abs_weight_diff_graph_vs_eager"] = max_weight_diff(args.work / "iql_eager",
                                                                                   args.work / "iql_graph")
                print(f"iql graph vs eager: max abs weight difference "
                      f"{report['iql_max_abs_weight_diff_graph_vs_eager']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
