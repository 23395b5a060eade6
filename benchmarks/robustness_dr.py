"""Domain randomization vs none at the same budget: robustness of two stage-3 image policies on one target.

One pipeline run (``configs/pipeline.yaml``, the CPU default) provides stages data, 1, 2 and adaptation in
``<work>/base``. Stage 3 (Cal-QL online, image agent) is then run twice from the same adapted agent with the same
config, seed and budget, in ``<work>/dr`` and ``<work>/nodr`` (each links base's finished stages, so the pipeline
skips them): once with the pipeline default ``stage3.randomization.level=train`` (physics + visual randomization
of every training episode), once with ``level=none``. Both stage-3 image checkpoints
(``<variant>/stage3/<target>``) are evaluated by :func:`robopretrain.evaluate.evaluate_robustness`
(``configs/evaluate.yaml``: nominal, distractors 0/2/4/6, each physics and visual factor and everything together
at its training range and at the held-out ``eval_easy`` / ``eval_hard`` ranges), same seeds for both policies.

Two diagnostics come with it: an image ablation (nominal success of each policy, and of the adapted agent both
start from, when its camera frame shows another episode's first frame, or is black: does the policy use what it
sees?) and
the ``lighting`` episodes split by the drawn light intensity (darker / brighter than nominal; ``eval_hard`` draws
0.35-0.55 or 1.45-1.7).

Outputs: ``benchmarks/results/robustness_dr.json`` (config, stage-3 summaries, every condition of both
policies with success, its interval and drop vs nominal, the diagnostics; each variant's ``interval`` names the
interval, evaluate's ``bootstrap`` setting: Wilson 95% by default since stop 35, the committed results' 95% percentile
bootstrap before), ``docs/robustness_dr.png``
(success per condition, both policies, with intervals) and a markdown table on stdout. The pipeline stages and
the evaluations are skipped when their outputs exist, so an interrupted run resumes.

    python benchmarks/robustness_dr.py                              # the experiment (50 episodes per condition)
    python benchmarks/robustness_dr.py --episodes 20 --workers 2   # cheaper
    python benchmarks/robustness_dr.py --summarize-only             # table and figure from the saved JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# this checkout's packages first: this script's folder (sys.path[0] when run as a script) holds video_pretrain.py,
# which would otherwise shadow the video_pretrain package that stage 1 imports in this process
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils (appended: not before the packages)
from bench_utils import check_run_settings  # noqa: E402

from robopretrain.report import interval_name  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "robustness_dr.json"
FIGURE = ROOT / "docs" / "robustness_dr.png"
VARIANTS = {"dr": "train", "nodr": "none"}  # variant -> stage3.randomization.level
LABELS = {"dr": "DR (level train)", "nodr": "no DR (level none)"}
BASE_STAGES = ("data", "stage1", "stage2", "adapt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--target", default="OpenDoorRight")
    p.add_argument("--episodes", type=int, default=50, help="episodes per condition (evaluate's episodes)")
    p.add_argument("--workers", type=int, default=2, help="evaluation worker processes")
    p.add_argument("--select", nargs="*", default=None, help="evaluate factors (default: all of evaluate.yaml)")
    p.add_argument("--extra-seeds", nargs="*", type=int, default=[],
                   help="more stage-3 seeds (same adapted agent) for both variants, evaluated on --extra-select only")
    p.add_argument("--extra-select", nargs="*", default=["colors_textures", "lighting", "all"],
                   help="evaluate factors for the extra seeds (nominal always runs)")
    p.add_argument("--overrides", nargs="*", default=[], help="pipeline config overrides for every stage, a=b")
    p.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "robustness_dr")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--figure", type=Path, default=FIGURE)
    p.add_argument("--summarize-only", action="store_true")
    return p.parse_args(argv)


def pipeline_config(args: argparse.Namespace, level: str | None = None, seed: int | None = None) -> Any:
    """``configs/pipeline.yaml`` with the target, the overrides and (for stage 3) the randomization level and
    seed (``seed``: stage 3's env seeds and update randomness; the agent it starts from is the same)."""
    from omegaconf import OmegaConf

    from robopretrain.pipeline import CONFIG_DIR

    cfg = OmegaConf.load(CONFIG_DIR / "pipeline.yaml")
    cfg.pop("defaults", None)
    cfg.pop("hydra", None)
    cfg.merge_with(OmegaConf.from_dotlist([*args.overrides, f"targets=[{args.target}]"]))
    if level is not None:
        cfg.stage3.randomization.level = level
    if seed is not None:
        cfg.seed = int(seed)
    return cfg


def run_stage(cfg: Any, run_dir: Path, stage: str) -> None:
    """One pipeline stage as ``run_pipeline`` runs it (same seeding, ``done.json``); skipped when done."""
    import torch

    from robopretrain import pipeline as P

    if P.is_done(run_dir / stage):
        print(f"[robustness_dr] {run_dir.name}/{stage}: done before, skipped", flush=True)
        return
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    fns = {"data": lambda: P.stage_data(cfg, run_dir), "stage1": lambda: P.stage_stage1(cfg, run_dir),
           "stage2": lambda: P.stage_stage2(cfg, run_dir), "adapt": lambda: P.stage_adapt(cfg, run_dir),
           "stage3": lambda: P.stage_stage3(cfg, run_dir)}
    torch.manual_seed(int(cfg.seed) + P.STAGES.index(stage))
    np.random.seed(int(cfg.seed) + P.STAGES.index(stage))
    start = time.perf_counter()
    result = fns[stage]()
    seconds = time.perf_counter() - start
    P.write_json(run_dir / stage / P.DONE, {"stage": stage, "seconds": seconds, "result": result,
                                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"[robustness_dr] {run_dir.name}/{stage} done in {seconds:.1f} s", flush=True)


def link_base(base: Path, run_dir: Path) -> None:
    """``run_dir``'s data / stage1 / stage2 / adapt are symlinks to base's finished stages."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in BASE_STAGES:
        link = run_dir / stage
        if not link.exists():
            link.symlink_to((base / stage).resolve(), target_is_directory=True)


def evaluate_variant(args: argparse.Namespace, run_dir: Path, select: list[str] | None = None) -> dict[str, Any]:
    """``robopretrain.evaluate`` on the variant's stage-3 checkpoint (reused when already run with these settings)."""
    from omegaconf import OmegaConf

    from robopretrain.evaluate import evaluate_robustness
    from robopretrain.pipeline import CONFIG_DIR

    out = run_dir / "robustness"
    cfg = OmegaConf.load(CONFIG_DIR / "evaluate.yaml")
    cfg.pop("hydra", None)
    cfg.merge_with({"checkpoint": str(run_dir / "stage3" / args.target), "target": args.target,
                    "episodes": args.episodes, "workers": args.workers, "output_dir": str(out),
                    "video": {"max_frames": 80}})
    if select or args.select:
        cfg.select = list(select or args.select)
    wanted = (set(cfg.select) if cfg.get("select") is not None else set(cfg.factors)) - {"nominal"}  # (always run)
    info_path = out / "eval_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        # the same episodes, factors and interval (another --select reused an evaluation of other factors; an
        # evaluation made before Wilson became evaluate's default sat in the table as a Wilson one)
        if (info["episodes_per_condition"] == args.episodes and set(info["factors"]) == wanted
                and info.get("bootstrap") == OmegaConf.to_container(cfg.bootstrap, resolve=True)):
            print(f"[robustness_dr] {run_dir.name}: evaluation done before, reused", flush=True)
            return info
    start = time.perf_counter()
    info = evaluate_robustness(cfg)
    print(f"[robustness_dr] {run_dir.name}: evaluation in {time.perf_counter() - start:.0f} s", flush=True)
    return info


def condition_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    keep = ("success", "ci_low", "ci_high", "drop_vs_nominal", "episodes", "mean_length")
    rows = [{"factor": "nominal", "level": "none", **{k: info["nominal"][k] for k in keep}}]
    for factor, levels in info["factors"].items():
        rows += [{"factor": factor, "level": lv, **{k: r[k] for k in keep}} for lv, r in levels.items()]
    return rows


def image_ablation(checkpoint: str, target: str, episodes: int, eval_seed: int) -> dict[str, float]:
    """Nominal success when the policy's camera frames are replaced (:class:`sim_envs.wrappers.BlindCamera`): by the
    first frame of another episode, or black. If success does not move, the policy does not use what it sees (it
    acts on proprio + task id alone), and no visual shift can change its success."""
    import torch

    from robopretrain.checkpoint import load_agent
    from robopretrain.envs.target import Target
    from robopretrain.evaluation import evaluate

    torch.set_num_threads(1)
    agent, _ = load_agent(checkpoint)
    return {f"{mode}_image": evaluate(agent, Target(target), episodes, eval_seed=eval_seed, blind=mode)["success"]
            for mode in ("other_episode", "black")}


def adapted_baseline(args: argparse.Namespace, cfg: Any, base: Path) -> dict[str, Any]:
    """The adapted agent both stage-3 runs start from: nominal success and the same image ablation."""
    from robopretrain.build import compose
    from robopretrain.evaluate import evaluate_robustness

    ev = compose("evaluate", overrides={
        "checkpoint": str(base / "adapt" / args.target), "target": args.target, "episodes": args.episodes,
        "workers": args.workers, "output_dir": str(base / "robustness_adapted"), "select": ["nominal"],
        "video": {"enabled": False}, "plot": False})
    info = evaluate_robustness(ev)
    return {"checkpoint": info["checkpoint"], "nominal": info["nominal"]["success"],
            **image_ablation(info["checkpoint"], args.target, args.episodes, int(info["eval_seed"]))}


def light_intensities(target: str, level: str, seeds: list[int]) -> list[float]:
    """The light intensity factor each evaluation seed draws under ``lighting`` at ``level`` (same env, same seed)."""
    from robopretrain.envs.target import Target, make_env

    env = make_env(Target(target), (), None, {"level": level, "factors": ["lighting"]})
    try:
        out = []
        for seed in seeds:
            env.reset(seed=seed)
            out.append(float(env.unwrapped.dr_params["lighting"]["intensity"]))
        return out
    finally:
        env.close()


def lighting_split(result: dict[str, Any], target: str) -> dict[str, Any]:
    """Success of both policies under ``lighting`` per level, split into darker / brighter than nominal (1.0),
    next to each policy's nominal success on the same episodes (same seeds: the paired effect of the light)."""
    out: dict[str, Any] = {}
    infos = {k: json.loads(Path(v["eval_info"]).read_text()) for k, v in result["variants"].items()}
    first = next(iter(infos.values()))
    for level in first["factors"].get("lighting", {}):
        eps = {k: sorted((e for e in info["episodes"] if e["factor"] == "lighting" and e["level"] == level),
                         key=lambda e: e["episode"]) for k, info in infos.items()}
        nominal = {k: {e["episode"]: e["success"] for e in info["episodes"] if e["factor"] == "nominal"}
                   for k, info in infos.items()}
        seeds = [e["seed"] for e in next(iter(eps.values()))]
        intensity = light_intensities(target, level, seeds)
        row: dict[str, Any] = {"intensity_min": min(intensity), "intensity_max": max(intensity)}
        for part, keep in (("dark", lambda x: x < 1.0), ("bright", lambda x: x >= 1.0)):
            idx = [i for i, x in enumerate(intensity) if keep(x)]
            row[part] = {"episodes": len(idx)}
            for k in eps:
                row[part][k] = float(np.mean([eps[k][i]["success"] for i in idx])) if idx else None
                row[part][f"{k}_nominal_same_seeds"] = (float(np.mean([nominal[k][eps[k][i]["episode"]] for i in idx]))
                                                        if idx else None)
        out[level] = row
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work_dir.resolve()
    # finished stages are skipped whatever the overrides: another --overrides or --target reused the old runs
    check_run_settings(work, {"target": args.target, "overrides": list(args.overrides)}, "robustness_dr.py")
    base = work / "base"
    base_cfg = pipeline_config(args)
    for stage in BASE_STAGES:
        run_stage(base_cfg, base, stage)
    result: dict[str, Any] = {
        "command": "python benchmarks/robustness_dr.py " + " ".join(sys.argv[1:]),
        "target": args.target, "episodes_per_condition": args.episodes, "work_dir": str(work),
        "budget": {"stage3_env_steps": int(base_cfg.stage3.env_steps), "num_envs": int(base_cfg.stage3.num_envs),
                   "utd": int(base_cfg.stage3.utd), "stage2_updates": int(base_cfg.stage2.steps),
                   "adapt_updates": int(base_cfg.adapt.steps), "encoder_mode": str(base_cfg.encoder.mode),
                   "image_size": int(base_cfg.image_size), "seed": int(base_cfg.seed)},
        "randomized_factors": list(base_cfg.stage3.randomization.factors),
        "variants": {},
    }
    for name, level in VARIANTS.items():  # both fine-tunings first, then both evaluations
        link_base(base, work / name)
        run_stage(pipeline_config(args, level), work / name, "stage3")
    previous = json.loads(args.results.read_text()) if args.results.is_file() else {}
    for name, level in VARIANTS.items():
        run_dir = work / name
        s3 = json.loads((run_dir / "stage3" / args.target / "done.json").read_text())
        done = json.loads((run_dir / "stage3" / "done.json").read_text())
        info = evaluate_variant(args, run_dir)
        result["variants"][name] = {
            "label": LABELS[name], "randomization_level": level, "stage3_seconds": done["seconds"],
            "stage3_final_training_eval": s3["final_success"], "stage3_cumulative_regret": s3["cumulative_regret"],
            "checkpoint": info["checkpoint"], "eval_info": str(run_dir / "robustness" / "eval_info.json"),
            "interval": interval_name(info), "conditions": condition_rows(info),
            "image_ablation": None}
        old = previous.get("variants", {}).get(name, {})
        if (old.get("checkpoint") == info["checkpoint"] and old.get("image_ablation")
                and previous.get("episodes_per_condition") == args.episodes):
            result["variants"][name]["image_ablation"] = old["image_ablation"]  # same policy, same episodes
        else:
            result["variants"][name]["image_ablation"] = image_ablation(info["checkpoint"], args.target,
                                                                        args.episodes, int(info["eval_seed"]))
    result["lighting_dark_vs_bright"] = lighting_split(result, args.target)
    if previous.get("adapted_agent") and previous.get("episodes_per_condition") == args.episodes:
        result["adapted_agent"] = previous["adapted_agent"]
    else:
        result["adapted_agent"] = adapted_baseline(args, base_cfg, base)
    result["stage3_seeds"] = {str(base_cfg.seed): {k: v["conditions"] for k, v in result["variants"].items()}}
    for seed in args.extra_seeds:  # the same comparison with other stage-3 seeds: training variance
        for name, level in VARIANTS.items():
            link_base(base, work / f"{name}_seed{seed}")
            run_stage(pipeline_config(args, level, seed), work / f"{name}_seed{seed}", "stage3")
        result["stage3_seeds"][str(seed)] = {
            name: condition_rows(evaluate_variant(args, work / f"{name}_seed{seed}", list(args.extra_select)))
            for name in VARIANTS}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2))
    return result


def markdown(result: dict[str, Any]) -> str:
    """Per condition: success [95% CI] and drop vs nominal of both policies, and the DR - no-DR difference."""
    dr, nodr = (result["variants"][k]["conditions"] for k in ("dr", "nodr"))
    lines = ["| factor | level | DR: success [95% CI] | DR: drop | no DR: success [95% CI] | no DR: drop | "
             "DR - no DR |", "|---|---|---|---|---|---|---|"]
    for a, b in zip(dr, nodr):
        assert (a["factor"], a["level"]) == (b["factor"], b["level"])
        lines.append(f"| {a['factor']} | {a['level']} | {a['success']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}] | "
                     f"{a['drop_vs_nominal']:+.2f} | {b['success']:.2f} [{b['ci_low']:.2f}, {b['ci_high']:.2f}] | "
                     f"{b['drop_vs_nominal']:+.2f} | {a['success'] - b['success']:+.2f} |")
    mean = {k: float(np.mean([r["success"] for r in result["variants"][k]["conditions"]])) for k in ("dr", "nodr")}
    lines.append(f"| **mean over conditions** | | {mean['dr']:.2f} | | {mean['nodr']:.2f} | | "
                 f"{mean['dr'] - mean['nodr']:+.2f} |")
    return "\n".join(lines)


def seeds_markdown(result: dict[str, Any]) -> str:
    """Success per stage-3 seed of both policies on the conditions every seed was evaluated on."""
    seeds = result.get("stage3_seeds", {})
    if len(seeds) < 2:
        return ""
    keys = None
    for per in seeds.values():
        k = {(r["factor"], r["level"]) for r in per["dr"]}
        keys = k if keys is None else keys & k
    order = [(r["factor"], r["level"]) for r in result["variants"]["dr"]["conditions"]
             if (r["factor"], r["level"]) in keys]
    lines = ["| factor | level | " + " | ".join(f"seed {s}: DR / no DR" for s in seeds) + " | mean: DR / no DR |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for key in order:
        cells, means = [], {"dr": [], "nodr": []}
        for per in seeds.values():
            vals = {v: next(r["success"] for r in per[v] if (r["factor"], r["level"]) == key) for v in ("dr", "nodr")}
            cells.append(f"{vals['dr']:.2f} / {vals['nodr']:.2f}")
            for v in vals:
                means[v].append(vals[v])
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) +
                     f" | {np.mean(means['dr']):.2f} / {np.mean(means['nodr']):.2f} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dr, nodr = (result["variants"][k]["conditions"] for k in ("dr", "nodr"))
    names = [f"{r['factor']}\n{r['level']}" if r["factor"] != "nominal" else "nominal" for r in dr]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.42 * len(names)), 3.8))
    for off, rows, key, color in ((-0.2, dr, "dr", "tab:blue"), (0.2, nodr, "nodr", "tab:orange")):
        y = np.array([r["success"] for r in rows])
        err = np.array([[r["success"] - r["ci_low"] for r in rows], [r["ci_high"] - r["success"] for r in rows]])
        ax.bar(x + off, y, width=0.4, yerr=err, capsize=2, color=color, label=result["variants"][key]["label"],
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    # (the committed results predate the record: evaluate's percentile bootstrap then)
    ax.set_ylabel(f"success ({result['variants']['dr'].get('interval', '95% percentile-bootstrap')} interval)")
    ax.set_title(f"{result['target']}: stage-3 image policy with / without domain randomization "
                 f"({result['episodes_per_condition']} episodes per condition)", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.episodes < 1:
        raise SystemExit(f"--episodes={args.episodes}; expected an integer >= 1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    result = json.loads(args.results.read_text()) if args.summarize_only else run(args)
    for key, v in result["variants"].items():
        print(f"{v['label']}: stage 3 {v['stage3_seconds']:.0f} s, final training eval "
              f"{v['stage3_final_training_eval']:.2f}, cumulative regret {v['stage3_cumulative_regret']:.2f}; "
              f"nominal success with another episode's frame {v['image_ablation']['other_episode_image']:.2f}, "
              f"black {v['image_ablation']['black_image']:.2f}")
    print(markdown(result))
    if result.get("adapted_agent"):
        a = result["adapted_agent"]
        print(f"adapted agent (stage-3 start): nominal {a['nominal']:.2f}, another episode's frame "
              f"{a['other_episode_image']:.2f}, black {a['black_image']:.2f}")
    if seeds_markdown(result):
        print(seeds_markdown(result))
    for level, row in result.get("lighting_dark_vs_bright", {}).items():
        print(f"lighting {level} (intensity {row['intensity_min']:.2f}..{row['intensity_max']:.2f}): " + "; ".join(
            f"{part} ({row[part]['episodes']} ep) DR {row[part]['dr']:.2f} "
            f"(nominal {row[part]['dr_nominal_same_seeds']:.2f}) / no DR {row[part]['nodr']:.2f} "
            f"(nominal {row[part]['nodr_nominal_same_seeds']:.2f})"
            for part in ("dark", "bright") if row[part]["episodes"]))
    print(f"figure: {plot(result, args.figure)}")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
