"""Ablation of the image pipeline on the held-out target tasks: final success and cumulative regret of

(a) full: ICVF encoder, multi-task CQL, Cal-QL, encoder fine-tuned
(b) scratch: no video pretraining (PTR): the same architecture from random weights, trained
(c) no_multitask: no multi-task pretraining: adaptation on the target demos only, then Cal-QL
(d) vip: a VIP encoder instead of ICVF
(e) frozen: the ICVF encoder frozen instead of fine-tuned

    python benchmarks/pipeline_ablation.py --out benchmarks/results/pipeline_ablation      # CPU-sized
    python benchmarks/pipeline_ablation.py --preset paper --seeds 0 1 2                     # GPU, full size

Each variant is a :func:`robopretrain.pipeline.run_pipeline` run in ``<out>/<variant>_seed<s>``. Variants share the
data (and, when they use the same objective, the stage-1 encoder) of their seed: those stages are copied from the
first run that made them, so they are skipped. Writes ``<out>/results.json`` and ``<out>/ablation.png``; reruns
skip finished stages.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, also when another checkout is installed

VARIANTS: dict[str, dict[str, Any]] = {
    "a_full": {"encoder": {"mode": "finetune"}},
    "b_scratch": {"encoder": {"mode": "scratch"}},
    "c_no_multitask": {"encoder": {"mode": "finetune"}, "stage2": {"enabled": False}},
    "d_vip": {"encoder": {"mode": "finetune"}, "stage1": {"objective": "vip"}},
    "e_frozen": {"encoder": {"mode": "frozen"}},
}

# CPU-sized: the five variants in about half an hour on a shared 2-core CPU. Far too little training for the
# differences the papers report; the numbers show the machinery, not the methods.
CPU_SIZE: dict[str, Any] = {
    "num_threads": 1,
    "data": {"prior_episodes_per_task": 10, "target_demos": 10, "videos": {"num_clips": 30}},
    "stage1": {"steps": 200},
    "algo_overrides": {"batch_size": 32},
    "stage2": {"steps": 300, "eval_episodes": 0},
    "adapt": {"steps": 200},
    "stage3": {"env_steps": 400, "eval_every": 200, "eval_episodes": 5},
    "evaluate": {"episodes": 10, "video": False},
}


def base_config(preset: str) -> Any:
    cfg = OmegaConf.load(ROOT / "configs" / "pipeline.yaml")
    cfg.pop("hydra")
    if preset == "paper":
        paper = OmegaConf.load(ROOT / "configs" / "paper.yaml")
        paper.pop("defaults")
        paper.pop("hydra")
        cfg.merge_with(paper)
    else:
        cfg.merge_with(CPU_SIZE)
        cfg.evaluate.settings = OmegaConf.create({"nominal": "none"})  # replace (a merge would keep "randomized")
    return cfg


def share_stage(src_run: Path, dst_run: Path, stage: str) -> None:
    """Copy a finished stage folder so the next run skips it."""
    if (src_run / stage / "done.json").is_file() and not (dst_run / stage).exists():
        shutil.copytree(src_run / stage, dst_run / stage)


def run_variant(out: Path, name: str, seed: int, preset: str, targets: list[str], made: dict[str, Path]) -> dict:
    from robopretrain.pipeline import run_pipeline

    cfg = base_config(preset)
    cfg.merge_with(VARIANTS[name])
    cfg.merge_with({"seed": seed, "targets": targets, "run_dir": str(out / f"{name}_seed{seed}"), "progress": False})
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    if f"data{seed}" in made:
        share_stage(made[f"data{seed}"], run, "data")
    key = f"stage1_{cfg.stage1.objective}_{seed}"
    if key in made:
        share_stage(made[key], run, "stage1")
    start = time.perf_counter()
    res = run_pipeline(cfg)
    made.setdefault(f"data{seed}", run)
    made.setdefault(key, run)
    from robopretrain.report import eval_rows

    results = json.loads((run / "evaluate" / "results.json").read_text())
    rows = {}
    for target, per in results.items():
        s3 = json.loads((run / "stage3" / target / "done.json").read_text())
        rows[target] = {"final_success": per["nominal"]["success"],
                        "final_success_randomized": per.get("randomized", {}).get("success"),
                        "blind_black": per.get("blind_black", {}).get("success"),
                        "cumulative_regret": s3["cumulative_regret"],
                        "curve": [(h["env_steps"], h["eval/success"]) for h in eval_rows(run / "stage3" / target)]}
    return {"variant": name, "seed": seed, "targets": rows, "seconds": time.perf_counter() - start,
            "stages": res["stages"]}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["variant"] for r in results))
    targets = sorted({t for r in results for t in r["targets"]})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    width = 0.8 / max(1, len(targets))
    for j, target in enumerate(targets):
        for ax, key in zip(axes, ("final_success", "cumulative_regret")):
            vals = [[r["targets"][target][key] for r in results if r["variant"] == n and target in r["targets"]
                     and r["targets"][target][key] is not None] for n in names]
            ax.bar(np.arange(len(names)) + j * width, [np.mean(v) if v else np.nan for v in vals], width,
                   yerr=[np.std(v) if len(v) > 1 else 0 for v in vals], label=target)
    for ax, title in zip(axes, ("final success (nominal)", "cumulative regret (online)")):
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_ablation")
    p.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--targets", nargs="+", default=["OpenDoorRight"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    results = []
    for seed in args.seeds:
        for name in args.variants:
            r = run_variant(args.out, name, seed, args.preset, args.targets, made)
            results.append(r)
            print(f"{name} seed {seed}: " + ", ".join(
                f"{t}: success {v['final_success']:.2f}, regret {v['cumulative_regret']}"
                for t, v in r["targets"].items()) + f" ({r['seconds']:.0f} s)", flush=True)
            (args.out / "results.json").write_text(json.dumps({"preset": args.preset, "results": results}, indent=2))
    plot(results, args.out / "ablation.png")
    print(f"results: {args.out / 'results.json'}; plot: {args.out / 'ablation.png'}")


if __name__ == "__main__":
    main()
