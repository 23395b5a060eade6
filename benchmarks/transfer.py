"""Transfer across a gap: plain DR vs EPOpt vs DR + invariant features on held-out visual and physics shifts, and
DARC vs no correction on a dynamics gap (issue 16; protocol ``benchmarks/protocols/transfer.md``).

Per seed, one pipeline run (``--config-name``, default the ``testbed`` preset) provides the stages data, 1, 2 and
adaptation in ``<work>/seed<S>/base`` (the pipeline's own functions, resumable). Stage 3 (Cal-QL online) then runs
from the same adapted agent once per method, each in ``<work>/seed<S>/<method>/stage3`` with the pipeline's stage-3
settings and seed, changing only:

``dr``         the pipeline's training randomization (physics + visuals at their training ranges);
``epopt``      the same, with ``transfer.epopt`` (worst epsilon = 0.1 of each batch of 10 episodes into the buffer);
``dann``       the same randomization as the source of ``gap=visual_textures``, with ``transfer.dann`` on that
               gap's unlabeled target frames;
``darc_off``   ``gap=<--darc-gap>`` (default ``friction_low``): training in the nominal sim, no correction;
``darc_on``    the same gap with ``transfer.darc`` on that gap's target transitions.

Every stage-3 run evaluates in training on nominal episodes (``eval_randomization=none``) so the runs differ only in
the method. Each final policy is then judged by :func:`robopretrain.evaluate.evaluate_robustness` with
``gap=<name>`` (conditions nominal, ``gap/source``, ``gap/target``; same episode seeds for every method):
``dr`` / ``epopt`` / ``dann`` on ``visual_textures`` and ``physics_heldout``, ``darc_*`` on their gap.
Success per method and condition: mean over seeds with a seeds-then-episodes bootstrap interval; Q calibration
(the final ``calib/offline_gap_*`` and ``calib/online_gap_*`` of stage 3) per method, the lecture's check that
invariance does not erase what the value depends on; the classifiers' last logged accuracies.

Every finished piece (pipeline stage, stage-3 run, evaluation) is skipped on a rerun, so a killed run resumes.
Outputs: ``--results`` (JSON: config, per run and summary) and ``--figure`` (success per condition with intervals);
a markdown table on stdout.

    python benchmarks/transfer.py                                         # the protocol's runs (3 seeds)
    python benchmarks/transfer.py --smoke                                 # minutes: tiny budgets, end to end
    python benchmarks/transfer.py --config-name testbed_combination --target CloseDrawerPressButton \
        --darc-gap physics_hard --work-dir outputs/transfer_cdpb --results benchmarks/results/transfer_cdpb.json
    python benchmarks/transfer.py --summarize-only                        # table and figure from the JSON
    python benchmarks/transfer.py --jobs 2                                # seeds in parallel processes, merged
    python benchmarks/transfer.py --seeds 1 --results r1.json &           # or by hand: one process per seed, then
    python benchmarks/transfer.py --merge r0.json r1.json r2.json         # one JSON (--results) from their runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# this checkout's packages first: this script's folder (sys.path[0] when run as a script) holds video_pretrain.py, which
# would otherwise shadow the video_pretrain package that stage 1 imports in this process
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils, also when imported from another folder
from bench_utils import (check_run_settings, cpu_model, ended_with_this, load_average, results_lock,  # noqa: E402
                         seeds_then_episodes_ci, write_json_atomic)
from claims_metrics import difference_ci, verdict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "transfer.json"
FIGURE = ROOT / "docs" / "transfer.png"
BASE_STAGES = ("data", "stage1", "stage2", "adapt")
# the method each one is compared with (the protocol: a method helps where it keeps more success at the gap's target)
BASELINE = {"epopt": "dr", "dann": "dr", "darc_on": "darc_off"}
# method -> (gap of its stage-3 run, transfer overrides, gaps it is judged on)
METHODS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "dr": ("none", {}, ("visual_textures", "physics_heldout")),
    "epopt": ("none", {"epopt": {"enabled": True}}, ("visual_textures", "physics_heldout")),
    "dann": ("visual_textures", {"dann": {"enabled": True}}, ("visual_textures", "physics_heldout")),
    "darc_off": ("friction_low", {}, ("friction_low",)),
    "darc_on": ("friction_low", {"darc": {"enabled": True}}, ("friction_low",)),
}
DARC_METHODS = ("darc_off", "darc_on")  # their gap is --darc-gap (friction_low above is the default)
# --smoke: the CPU default pipeline at toy budgets (minutes); shows the script end to end, measures nothing
SMOKE_OVERRIDES = [
    "image_size=32", "prior_tasks=[Reach]", "data.prior_episodes_per_task=2", "data.target_demos=2",
    "data.num_workers=1", "stage1.enabled=false", "encoder.mode=scratch", "stage2.steps=4", "stage2.eval_episodes=0",
    "stage2.checkpoint_every=4", "adapt.steps=4", "adapt.checkpoint_every=4", "stage3.env_steps=240",
    "stage3.num_envs=1", "stage3.asynchronous=false", "stage3.eval_every=240", "stage3.eval_episodes=1",
    "stage3.checkpoint_every=120", "algo_overrides.batch_size=8", "progress=false",
]
SMOKE_TRANSFER = {"epopt": {"batch_episodes": 2, "warmup_batches": 1, "epsilon": 0.5}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--config-name", default="testbed", help="pipeline preset (configs/<name>.yaml)")
    p.add_argument("--target", default="PressLitButton")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per condition")
    p.add_argument("--workers", type=int, default=2, help="evaluation worker processes")
    p.add_argument("--target-frames", type=int, default=None, help="override the gaps' target_frames")
    p.add_argument("--target-transitions", type=int, default=None, help="override the gaps' target_transitions")
    p.add_argument("--epopt-warmup-batches", type=int, default=None,
                   help="EPOpt's warm-up batches (default: transfer.epopt's, 2); amendment 3: 1 on targets whose "
                        "long episodes leave no batch after a warm-up of 2")
    p.add_argument("--darc-gap", default="friction_low",
                   help="the dynamics gap of darc_off / darc_on (configs/gap/<name>.yaml: kind physics, source the "
                        "nominal sim, target transitions > 0)")
    p.add_argument("--overrides", nargs="*", default=[], help="pipeline config overrides, a=b")
    p.add_argument("--smoke", action="store_true", help="toy budgets (minutes): shows the script works, no result")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--jobs", type=int, default=1,
                   help="seeds run at a time, each in its own process (its log <work>/seed<S>.log, its results "
                        "<work>/results_seed<S>.json), merged into --results at the end")
    p.add_argument("--merge", nargs="*", type=Path, default=[],
                   help="results JSONs of separate processes (e.g. one per seed): their runs summarized into --results")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: expected >= 1")
    if args.epopt_warmup_batches is not None and args.epopt_warmup_batches < 0:
        p.error(f"--epopt-warmup-batches {args.epopt_warmup_batches}: expected >= 0")
    try:
        check_darc_gap(args.darc_gap)
    except ValueError as bad:  # one line (it was a traceback)
        p.error(str(bad))
    if args.smoke:
        args.config_name, args.target = "pipeline", args.target if args.target != "PressLitButton" else "PressButton"
        args.overrides = [*SMOKE_OVERRIDES, *args.overrides]
        args.episodes = min(args.episodes, 2)
        args.workers = 0
        args.target_frames = args.target_frames or 16
        args.target_transitions = args.target_transitions or 20
    name = "transfer_smoke" if args.smoke else "transfer"
    args.work_dir = args.work_dir or ROOT / "outputs" / name
    args.results = args.results or ROOT / "benchmarks" / "results" / f"{name}.json"
    args.figure = args.figure or (args.work_dir / "transfer.png" if args.smoke else FIGURE)
    return args


# --------------------------------------------------------------------------- configs


def pipeline_config(args: argparse.Namespace, seed: int) -> Any:
    """The pipeline preset with the overrides, the target and the seed (resolved, without Hydra's keys)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from robopretrain.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=args.config_name,
                            overrides=[*args.overrides, f"targets=[{args.target}]", f"seed={seed}"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.pop("hydra", None)
    return cfg


def check_darc_gap(name: str) -> None:
    """Raises ``ValueError`` unless ``configs/gap/<name>.yaml`` is a dynamics gap DARC can use: kind physics,
    trained in the nominal sim (source ``none``) with target transitions to train its classifiers on."""
    from omegaconf import OmegaConf

    path = ROOT / "configs" / "gap" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(f.stem for f in path.parent.glob("*.yaml"))
        raise ValueError(f"--darc-gap {name!r}: no {path}; known gaps: {known}")
    gap = OmegaConf.to_container(OmegaConf.load(path))
    if gap.get("kind") != "physics" or gap.get("source") != "none" or not gap.get("target_transitions"):
        raise ValueError(f"--darc-gap {name!r}: DARC needs a physics gap trained in the nominal sim (source: none) "
                         f"with target_transitions > 0; {path} has kind={gap.get('kind')!r}, "
                         f"source={gap.get('source')!r}, target_transitions={gap.get('target_transitions')!r}")


def method_gaps(args: argparse.Namespace, method: str) -> tuple[str, tuple[str, ...]]:
    """The gap of ``method``'s stage-3 run and the gaps it is judged on (:data:`METHODS`, DARC's from --darc-gap)."""
    if method in DARC_METHODS:
        return args.darc_gap, (args.darc_gap,)
    return METHODS[method][0], METHODS[method][2]


def gap_config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """``configs/gap/<name>.yaml`` with the command line's data-size overrides."""
    from omegaconf import OmegaConf

    gap = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "gap" / f"{name}.yaml"))
    if name != "none":
        if args.target_frames is not None and gap["target_frames"]:
            gap["target_frames"] = int(args.target_frames)
        if args.target_transitions is not None and gap["target_transitions"]:
            gap["target_transitions"] = int(args.target_transitions)
    return gap


def transfer_overrides(args: argparse.Namespace, method: str) -> dict[str, Any]:
    _, transfer, _ = METHODS[method]
    out = json.loads(json.dumps(transfer))
    if args.smoke:
        for key, extra in SMOKE_TRANSFER.items():
            if key in out:
                out[key].update(extra)
    if "epopt" in out and args.epopt_warmup_batches is not None:
        out["epopt"]["warmup_batches"] = int(args.epopt_warmup_batches)
    return out


def stage3_config(args: argparse.Namespace, cfg: Any, base: Path, method: str, out: Path) -> Any:
    """The pipeline's stage-3 config of the base run, with the method's gap and transfer options, into ``out``."""
    from omegaconf import OmegaConf

    from robopretrain import pipeline as P

    target = P.targets_of(cfg)[0]
    c = P.stage3_config(cfg, base, target)
    c.output_dir = str(out)
    c.eval_randomization = "none"
    c.gap = OmegaConf.create(gap_config(args, method_gaps(args, method)[0]))
    c.merge_with({"transfer": transfer_overrides(args, method)})
    return c


# --------------------------------------------------------------------------- runs


def run_base(cfg: Any, base: Path) -> None:
    """Pipeline stages data, 1, 2 and adaptation into ``base`` (each skipped when done), seeded as the pipeline."""
    import torch

    from robopretrain import pipeline as P

    fns = {"data": P.stage_data, "stage1": P.stage_stage1, "stage2": P.stage_stage2, "adapt": P.stage_adapt}
    for stage in BASE_STAGES:
        if P.is_done(base / stage):
            continue
        if stage == "stage1" and not cfg.stage1.enabled:
            P.write_json(base / stage / P.DONE, {"stage": stage, "skipped": True})
            continue
        if cfg.get("num_threads"):
            torch.set_num_threads(int(cfg.num_threads))
        torch.manual_seed(int(cfg.seed) + P.STAGES.index(stage))
        np.random.seed(int(cfg.seed) + P.STAGES.index(stage))
        start = time.perf_counter()
        result = fns[stage](cfg, base)
        P.write_json(base / stage / P.DONE, {"stage": stage, "seconds": time.perf_counter() - start,
                                             "result": result})
        print(f"[transfer] {base.parent.name}/base/{stage} done in {time.perf_counter() - start:.0f} s", flush=True)


def check_finished_run(out: Path, wanted: Any) -> None:
    """Raises ``ValueError`` when ``out`` holds a finished stage-3 run made with another gap or other transfer
    options than ``wanted`` (it would be reused silently: a finished run is skipped). Nothing to check when the
    run is not finished."""
    from omegaconf import OmegaConf

    from robopretrain import pipeline as P
    from robopretrain.checkpoint import load_latest

    if not P.is_done(out):
        return
    latest = load_latest(out / "checkpoints", with_state=False)
    saved = OmegaConf.load(latest.path / "config.yaml") if latest is not None else None
    for key in ("gap", "transfer"):
        have = OmegaConf.to_container(saved[key]) if saved is not None and key in saved else None
        want = OmegaConf.to_container(wanted[key])
        if have != want:
            raise ValueError(f"{out}: a finished run made with {key}={have}, not {want}; use another --work-dir "
                             "or move that run away")


def run_stage3(args: argparse.Namespace, cfg: Any, base: Path, method: str, folder: Path) -> dict[str, Any]:
    """One method's stage-3 run (skipped when ``done.json`` exists); its final row and last classifier metrics."""
    import torch

    from finetune.train import run
    from robopretrain import pipeline as P
    from robopretrain.metrics import read_jsonl

    out = folder / "stage3"
    config = stage3_config(args, cfg, base, method, out)
    check_finished_run(out, config)
    if not P.is_done(out):
        torch.manual_seed(int(cfg.seed) + P.STAGES.index("stage3"))
        np.random.seed(int(cfg.seed) + P.STAGES.index("stage3"))
        start = time.perf_counter()
        res = run(config)
        P.write_json(out / P.DONE, {"final": res["history"][-1], "seconds": time.perf_counter() - start})
        print(f"[transfer] {folder.parent.name}/{folder.name}: stage 3 in {time.perf_counter() - start:.0f} s", flush=True)
    done = P.read_json(out / P.DONE)
    last: dict[str, float] = {}
    for row in read_jsonl(out / "metrics.jsonl"):
        last.update({k: v for k, v in row.items() if k.startswith(("train/dann/", "train/darc/"))})
    kept = None
    log = out / "epopt_episodes.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        kept = {"episodes": len(rows), "kept": sum(r["kept"] for r in rows)}
    return {"final": done["final"], "seconds": done.get("seconds"), "classifiers": last, "epopt": kept,
            "checkpoint": str(out)}


def evaluate_run(args: argparse.Namespace, cfg: Any, folder: Path, gap: str) -> dict[str, Any]:
    """``robopretrain.evaluate gap=<gap>`` on the run's final checkpoint (reused when done with these episodes)."""
    from robopretrain.build import compose
    from robopretrain.evaluate import evaluate_robustness

    out = folder / f"eval_{gap}"
    path = out / "eval_info.json"
    if path.is_file():
        info = json.loads(path.read_text())
        if info["episodes_per_condition"] == args.episodes:
            return info
    from robopretrain import pipeline as P

    target = P.targets_of(cfg)[0]
    ev = compose("evaluate", {"gap": gap}, {
        "checkpoint": str(folder / "stage3"), "target": target.to_dict(), "episodes": args.episodes,
        "workers": args.workers, "output_dir": str(out), "select": ["nominal"], "video": {"enabled": False},
        "plot": False, "progress": False, "device": str(cfg.device)})
    return evaluate_robustness(ev)


def condition_outcomes(info: dict[str, Any]) -> dict[str, list[float]]:
    """Per condition key (``nominal``, ``source``, ``target``): the 0/1 success of each episode."""
    out: dict[str, list[float]] = {}
    for ep in info["episodes"]:
        key = "nominal" if ep["factor"] == "nominal" else ep["level"]
        out.setdefault(key, []).append(float(ep["success"]))
    return out


# the settings that make two calls' runs one experiment (the rest: which seeds and methods, and where)
SAME_EXPERIMENT = ("config_name", "target", "episodes", "overrides", "target_frames", "target_transitions", "darc_gap",
                   "epopt_warmup_batches")


def experiment_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (list(getattr(args, k)) if k == "overrides" else getattr(args, k)) for k in SAME_EXPERIMENT}


def earlier_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs an earlier call wrote to ``args.results`` (a run in parts: ``--seeds 0``, then ``--seeds 1``; each
    call rewrote the file with its own runs alone). SystemExit when that file holds another experiment's runs."""
    if not args.results.is_file():
        return []
    earlier = json.loads(args.results.read_text())
    config = {"darc_gap": "friction_low", "epopt_warmup_batches": None, **earlier.get("config", {})}
    mine = experiment_settings(args)
    diff = {k: (config.get(k), mine[k]) for k in SAME_EXPERIMENT if config.get(k) != mine[k]}
    if diff or earlier.get("smoke") != bool(args.smoke):
        raise SystemExit(f"error: {args.results} holds runs made with other settings (theirs, this call's): "
                         f"{diff or {'smoke': (earlier.get('smoke'), bool(args.smoke))}}; use another --results "
                         "(and --work-dir)")
    return list(earlier.get("runs", []))


def run(args: argparse.Namespace) -> dict[str, Any]:
    order = list(METHODS)
    earlier = earlier_runs(args)
    runs: list[dict[str, Any]] = []

    def everything() -> list[dict[str, Any]]:  # the earlier calls' runs (each replaced once this call measures it
        # again: a call killed midway keeps the rest) and this call's, by seed then method
        done = {(int(r["seed"]), str(r["method"])) for r in runs}
        kept = [r for r in earlier if (int(r["seed"]), str(r["method"])) not in done]
        return sorted([*kept, *runs], key=lambda r: (int(r["seed"]), order.index(r["method"])))

    for seed in args.seeds:
        cfg = pipeline_config(args, seed)
        seed_dir = args.work_dir / f"seed{seed}"
        # a finished stage is skipped whatever the new settings: a rerun with other --overrides reused the old runs
        # and the results said they were made with the new ones
        check_run_settings(seed_dir, {k: v for k, v in experiment_settings(args).items() if k != "episodes"},
                           "transfer.py")  # (another --episodes evaluates the same runs again)
        base = seed_dir / "base"
        run_base(cfg, base)
        for method in args.methods:
            folder = seed_dir / method
            row = {"seed": seed, "method": method, "gap": method_gaps(args, method)[0],
                   **run_stage3(args, cfg, base, method, folder), "evaluations": {}}
            for gap in method_gaps(args, method)[1]:
                info = evaluate_run(args, cfg, folder, gap)
                row["evaluations"][gap] = condition_outcomes(info)
            runs.append(row)
            write_json_atomic(args.results, summarize(args, everything()))  # after every run: kept if killed
    return summarize(args, everything())


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean success over seeds with a seeds-then-episodes interval per (method, gap, condition); calibration."""
    summary: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine], "success": {}}
        for gap in method_gaps(args, method)[1]:
            for cond in ("nominal", "source", "target"):
                per_seed = [r["evaluations"][gap][cond] for r in mine if cond in r["evaluations"].get(gap, {})]
                if not per_seed:
                    continue
                lo, hi = seeds_then_episodes_ci(per_seed)
                entry["success"][f"{gap}/{cond}"] = {"mean": float(np.mean([np.mean(s) for s in per_seed])),
                                                     "ci_low": lo, "ci_high": hi,
                                                     "per_seed": [float(np.mean(s)) for s in per_seed]}
        for key in ("calib/offline_gap_data", "calib/offline_gap_policy", "calib/online_gap_data",
                    "calib/online_gap_policy", "eval/success"):
            values = [r["final"].get(key) for r in mine if r["final"].get(key) is not None]
            entry[key] = float(np.mean(values)) if values else None
        summary[method] = entry
    for method, base in BASELINE.items():
        if method not in summary or base not in summary:
            continue
        summary[method]["versus"] = {}
        for gap in method_gaps(args, method)[1]:
            mine = [r["evaluations"][gap]["target"] for r in runs if r["method"] == method and gap in r["evaluations"]]
            theirs = [r["evaluations"][gap]["target"] for r in runs if r["method"] == base and gap in r["evaluations"]]
            if mine and theirs:
                d, lo, hi = difference_ci(mine, theirs)
                summary[method]["versus"][f"{gap}/target"] = {"baseline": base, "difference": d, "ci": [lo, hi],
                                                              "verdict": verdict(lo, hi)}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return {"benchmark": "transfer", "smoke": bool(args.smoke), "protocol": "benchmarks/protocols/transfer.md",
            "commit": commit.strip(), "cpu": cpu_model(), "load_average": load_average(),
            "config": {"config_name": args.config_name, "target": args.target,
                       "seeds": sorted({int(r["seed"]) for r in runs}) or args.seeds,  # every call's (in parts)
                       "methods": [m for m in METHODS if any(r["method"] == m for r in runs)] or args.methods,
                       "episodes": args.episodes, "overrides": args.overrides,
                       "target_frames": args.target_frames, "target_transitions": args.target_transitions,
                       "darc_gap": args.darc_gap, "epopt_warmup_batches": args.epopt_warmup_batches},
            "summary": summary, "runs": runs}


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    lines = ["| method | condition | success | 95% interval | per seed |", "|---|---|---|---|---|"]
    for method, entry in result["summary"].items():
        for cond, s in entry["success"].items():
            seeds = ", ".join(f"{v:.2f}" for v in s["per_seed"])
            lines.append(f"| {method} | {cond} | {s['mean']:.2f} | [{s['ci_low']:.2f}, {s['ci_high']:.2f}] | "
                         f"{seeds} |")
    versus = [(m, c, v) for m, e in result["summary"].items() for c, v in e.get("versus", {}).items()]
    if versus:
        lines += ["", "| method | condition | method - baseline [95% interval] | helps? |", "|---|---|---|---|"]
        lines += [f"| {m} | {c} | {v['difference']:+.2f} vs {v['baseline']} [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}] | "
                  f"{ {'reproduced': 'yes', 'reversed': 'worse'}.get(v['verdict'], 'not shown') } |"
                  for m, c, v in versus]
    lines += ["", "| method | Q - MC return, offline (data / policy) | online (data / policy) |", "|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for method, e in result["summary"].items():
        lines.append(f"| {method} | {fmt(e['calib/offline_gap_data'])} / {fmt(e['calib/offline_gap_policy'])} | "
                     f"{fmt(e['calib/online_gap_data'])} / {fmt(e['calib/online_gap_policy'])} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = list(dict.fromkeys(k.split("/")[0] for e in result["summary"].values() for k in e["success"]))
    fig, axes = plt.subplots(1, max(1, len(gaps)), figsize=(4.5 * max(1, len(gaps)), 3.4), squeeze=False)
    for ax, gap in zip(axes.flat, gaps):
        methods = [m for m, e in result["summary"].items() if any(k.startswith(gap + "/") for k in e["success"])]
        conds = ("nominal", "source", "target")
        width = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            rows = [result["summary"][m]["success"].get(f"{gap}/{c}") for c in conds]
            y = [r["mean"] if r else np.nan for r in rows]
            err = np.array([[r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]] if r else [0, 0] for r in rows]).T
            ax.bar(np.arange(len(conds)) + i * width, y, width, yerr=err, capsize=2, label=m)
        ax.set_xticks(np.arange(len(conds)) + width * (len(methods) - 1) / 2, conds)
        ax.set_ylim(0, 1.05)
        ax.set_title(gap)
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("success (mean over seeds, 95% CI)")
    fig.suptitle(f"transfer ({'smoke: toy budgets, no result' if result['smoke'] else result['config']['target']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merge(args: argparse.Namespace, paths: list[Path]) -> dict[str, Any]:
    """One result from the runs of several results JSONs (one per process): runs ordered by seed, then by the
    order of :data:`METHODS`. Raises ``ValueError`` when two files hold the same (seed, method) run or were made
    with other settings (preset, target, episodes, overrides, data sizes): they would not be one experiment."""
    runs: dict[tuple[int, str], dict[str, Any]] = {}
    sources: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    same = SAME_EXPERIMENT
    for path in paths:
        result = json.loads(Path(path).read_text())
        if result.get("smoke") != bool(args.smoke):
            raise ValueError(f"{path}: smoke={result.get('smoke')} cannot be merged into a smoke={args.smoke} result")
        result["config"].setdefault("darc_gap", "friction_low")  # results made before --darc-gap existed
        result["config"].setdefault("epopt_warmup_batches", None)  # and before --epopt-warmup-batches
        if first is None:
            first = result["config"]
        elif any(result["config"].get(k) != first.get(k) for k in same):
            diff = {k: (first.get(k), result["config"].get(k)) for k in same if result["config"].get(k) != first.get(k)}
            raise ValueError(f"{path}: made with other settings than {paths[0]} (first, this): {diff}")
        sources.append({"file": Path(path).name, "commit": result.get("commit"), "cpu": result.get("cpu"),
                        "load_average": result.get("load_average"),
                        "runs": [f"seed{r['seed']}/{r['method']}" for r in result["runs"]]})
        for r in result["runs"]:
            key = (int(r["seed"]), str(r["method"]))
            if key in runs:
                raise ValueError(f"{path}: seed {key[0]} method {key[1]} is also in an earlier file")
            runs[key] = r
    if first is None:
        raise ValueError("--merge needs at least one results JSON")
    order = list(METHODS)
    merged = [runs[k] for k in sorted(runs, key=lambda k: (k[0], order.index(k[1])))]
    args.config_name, args.target, args.episodes = first["config_name"], first["target"], first["episodes"]
    args.overrides, args.target_frames = first["overrides"], first["target_frames"]
    args.target_transitions, args.darc_gap = first["target_transitions"], first["darc_gap"]
    args.epopt_warmup_batches = first["epopt_warmup_batches"]
    args.seeds = sorted({k[0] for k in runs})
    args.methods = [m for m in order if any(k[1] == m for k in runs)]
    return {**summarize(args, merged), "merged_from": sources}  # "commit" is the merging checkout's; each file's here


def run_parallel(args: argparse.Namespace, argv: list[str], earlier: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """Each seed in its own ``python benchmarks/transfer.py`` process (``args.jobs`` at a time; the command line
    ``argv`` with that seed, its own results file and one job), then their results merged (:func:`merge`) with
    ``earlier`` (runs of other seeds an earlier call wrote to ``--results``: they were dropped). Raises
    ``RuntimeError`` naming the logs of seeds whose process failed (the others' results are kept on disk)."""
    from concurrent.futures import ThreadPoolExecutor

    args.work_dir.mkdir(parents=True, exist_ok=True)

    def one(seed: int) -> tuple[int, Path, int]:
        results, log = args.work_dir / f"results_seed{seed}.json", args.work_dir / f"seed{seed}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--seeds", str(seed), "--results", str(results),
               "--figure", str(args.work_dir / f"transfer_seed{seed}.png"), "--jobs", "1"]
        print(f"[transfer] seed {seed}: {' '.join(cmd[1:])} > {log}", flush=True)
        with open(log, "a") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=ended_with_this()).returncode
        return seed, results, code

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(one, args.seeds))
    failed = [seed for seed, _, code in done if code != 0]
    if failed:
        raise RuntimeError("transfer: seed(s) " + ", ".join(map(str, failed)) + " failed; see " +
                           ", ".join(str(args.work_dir / f"seed{s}.log") for s in failed))
    files = [results for _, results, _ in done]
    if earlier:
        files.append(args.work_dir / "results_earlier.json")
        write_json_atomic(files[-1], summarize(args, earlier))
    return merge(args, files)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from robopretrain.workers import end_with_launcher

    end_with_launcher()  # a seed's process of run_parallel ends with the call that started it (killed outright)
    if args.summarize_only:  # reads the results file, writes none: no lock (a long run's file can be looked at)
        measure_transfer(args, argv)
        return
    with results_lock(args.results):  # a second call on one --results is refused (runs were lost)
        measure_transfer(args, argv)


def measure_transfer(args: argparse.Namespace, argv: list[str]) -> None:
    """Run, merge or summarize as the options say, then the table and figure (``main`` holds the lock)."""
    if args.jobs > 1 and len(args.seeds) > 1 and not (args.merge or args.summarize_only):
        earlier = [r for r in earlier_runs(args) if int(r["seed"]) not in args.seeds]  # (the --jobs 1 path's rule)
        result = run_parallel(args, argv, earlier)
        write_json_atomic(args.results, result)
    elif args.merge:
        result = merge(args, args.merge)
        write_json_atomic(args.results, result)
    elif args.summarize_only:
        if not args.results.is_file():
            sys.exit(f"error: {args.results}: no such results file (--summarize-only reads one; give --results)")
        result = json.loads(args.results.read_text())
    else:
        result = run(args)
        write_json_atomic(args.results, result)
    print(markdown(result))
    print(f"figure: {plot(result, args.figure)}; results: {args.results}")


if __name__ == "__main__":
    main()
