"""The lecture's claims measured on the valid testbed (issue 12), one sub-command per protocol.

    python benchmarks/claims.py pretraining --targets PressLitButton --variants full target_only_short --jobs 2
    python benchmarks/claims.py pretraining --summarize-only           # table and plot from the saved JSON
    python benchmarks/claims.py values --jobs 2                        # claim 1 (benchmarks/claims_values.py)
    python benchmarks/claims.py robustness --jobs 2                    # claim 5 (benchmarks/claims_robustness.py)
    python benchmarks/claims.py calibration --jobs 2                   # claim 4 (benchmarks/claims_calibration.py)
    python benchmarks/claims.py shifts --work-dir W --jobs 2           # claim 2b (benchmarks/claims_encoder_shifts.py)

``pretraining`` (claims 2 and 3, protocol ``benchmarks/protocols/claims_pretraining.md``): the full pipeline of the
``testbed`` preset against the same pipeline without video pretraining (``scratch``, ``vip``) and without multi-task
pretraining (``target_only``, ``target_only_short``). Each run is ``python -m robopretrain.pipeline
--config-name testbed targets=[T] seed=S run_dir=... <overrides>`` as a subprocess (one torch thread); a rerun
resumes unfinished runs and skips finished ones. The ``full`` runs live where ``benchmarks/testbed.py`` puts its
``pixel`` runs (``<work>/pixel/<T>/seed<S>``), so a work folder shared with the testbed reuses them. Every finished
run is then evaluated by ``claims.py measure`` (a subprocess: its own renderer): the final stage-3 agent and the
adapted agent on the same 50 nominal episodes, and the stage-3 evaluations' mean regret.

Output: ``benchmarks/results/claims_pretraining.json`` (every run, its command, commit and metrics; the table rows)
and ``docs/claims_pretraining.png``; the markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# this checkout's packages, also when another checkout is installed (editable): the measure subprocess, run as
# ``python benchmarks/claims.py``, would otherwise evaluate with the installed checkout's code while the pipeline
# (``python -m``, cwd ROOT) trains with this one's (as benchmarks/pipeline_ablation.py does)
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils; appended so benchmarks/ shadows no package
from bench_utils import (  # noqa: E402
    DEFAULT_PRESET,
    TARGET_PRESETS,
    check_run_settings,
    cpu_model,
    git_commit,
    outcomes,
    results_lock,
    run_logged,
    write_json_atomic,
)
from claims_metrics import cumulative_regret, difference_ci, verdict  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "claims_pretraining.json"
PLOT = ROOT / "docs" / "claims_pretraining.png"
PROTOCOL = "benchmarks/protocols/claims_pretraining.md"
PRESET = DEFAULT_PRESET  # the variants' budgets below are this preset's
PROTOCOL_SEEDS = 3  # seeds 0, 1, 2 (the protocol's); a verdict on fewer says so
EPISODES = 50  # per evaluation of a run's final and adapted agent (the protocol's minimum for final success)
MEASURE_FILE = "claims_measure.json"
FULL = "full"
# variant -> (pipeline overrides, the claim it answers, whether its stage 1 is the full run's)
VARIANTS: dict[str, tuple[list[str], int, bool]] = {
    FULL: ([], 0, True),
    "target_only_short": (["stage2.enabled=false"], 3, True),
    "target_only": (["stage2.enabled=false", "adapt.steps=11000"], 3, True),  # testbed v4: 10,000 + 1,000 updates
    # stop 28's amendment: the full pipeline's stage 2 with another adaptation mix (prior share of each batch)
    "full_prior0": (["adapt.prior_fraction=0.0"], 3, True),
    "full_prior50": (["adapt.prior_fraction=0.5"], 3, True),
    "scratch": (["stage1.enabled=false", "encoder.mode=scratch"], 2, False),
    "vip": (["stage1.objective=vip"], 2, False),
}
CLAIMS = {2: "video pretraining helps the target (V-PTR)", 3: "multi-task pretraining helps the target (PTR)"}
STAGE2_FROM_FULL = {FULL, "full_prior0", "full_prior50"}  # variants whose stage 2 is the full run's
RUN_FOLDER = {FULL: "pixel"}  # benchmarks/testbed.py's name for the same runs
DEMOS_TAG = "_demos"  # a run label "<variant>_demos<N>": the variant with the first N of the target's demos


def label(variant: str, target_demos: int | None) -> str:
    """The run label of ``variant`` with ``target_demos`` target demos (None: the preset's count, the bare name)."""
    return variant if target_demos is None else f"{variant}{DEMOS_TAG}{int(target_demos)}"


def split_label(run_label: str) -> tuple[str, int | None]:
    """``(variant, target demos or None)`` of a run label; raises ValueError for an unknown variant."""
    variant, tag, n = run_label.partition(DEMOS_TAG)
    if variant not in VARIANTS or (tag and not n.isdigit()):
        raise ValueError(f"run label {run_label!r}: expected one of {list(VARIANTS)}, optionally + '{DEMOS_TAG}<N>'")
    return variant, (int(n) if tag else None)


def run_overrides(run_label: str) -> list[str]:
    """The pipeline overrides of a run label: its variant's, and ``data.target_demos`` when it names a count."""
    variant, demos = split_label(run_label)
    return [*VARIANTS[variant][0], *([f"data.target_demos={demos}"] if demos is not None else [])]


def run_dir(work: Path, run_label: str, target: str, seed: int) -> Path:
    """``<work>/<label>/<target>/seed<seed>``; the full pipeline's runs under the testbed's name ``pixel``."""
    return work / RUN_FOLDER.get(run_label, run_label) / target / f"seed{seed}"


def pipeline_command(run_label: str, target: str, seed: int, work: Path, extra: Sequence[str] = ()) -> list[str]:
    """The pipeline command of one run: the preset, the target, the seed, one thread, the label's overrides."""
    return [sys.executable, "-m", "robopretrain.pipeline", f"--config-name={PRESET}", f"targets=[{target}]",
            f"seed={seed}", f"run_dir={run_dir(work, run_label, target, seed)}", "num_threads=1", "progress=false",
            *run_overrides(run_label), *extra]


def share_stages(work: Path, run_label: str, target: str, seed: int) -> list[str]:
    """Copy the same seed's finished ``full`` stages a run would recompute identically: ``data`` always (without
    the frame cache, which is rebuilt on demand), ``stage1`` where the variant's stage 1 is the full run's, and
    ``stage2`` for the full pipeline with another target-demo count or adaptation mix (stage 2 reads no target
    data; the adaptation takes the first N of the same collected demos). A stage already in the run's folder is
    left as it is. Returns the stages copied."""
    if run_label == FULL:
        return []
    variant, _ = split_label(run_label)
    src, dst = run_dir(work, FULL, target, seed), run_dir(work, run_label, target, seed)
    stages = ["data"] + (["stage1"] if VARIANTS[variant][2] else [])
    stages += ["stage2"] if variant in STAGE2_FROM_FULL else []
    copied = []
    for stage in stages:
        if (src / stage / "done.json").is_file() and not (dst / stage).exists():
            shutil.copytree(src / stage, dst / stage, ignore=shutil.ignore_patterns("*.frames", "*.tmp"))
            copied.append(stage)
    return copied


# --------------------------------------------------------------------------- measuring one run


def planned_regret(rows: Sequence[dict[str, Any]], eval_every: int) -> dict[str, float]:
    """Mean regret of stage 3's evaluation rows (``env_steps``, ``eval/success``), each placed at its planned step
    ``round(env_steps / eval_every) * eval_every`` (a vectorised env step can land an evaluation one step late).
    Raises ValueError when two rows round to the same planned step or the planned steps are not equally spaced."""
    steps = [round(r["env_steps"] / eval_every) * eval_every for r in rows]
    return cumulative_regret(steps, [float(r["eval/success"]) for r in rows])


def stage3_eval_rows(metrics: Path) -> list[dict[str, Any]]:
    """The evaluation rows of a stage-3 ``metrics.jsonl`` (the last row per env step, after a resume's rewrite)."""
    rows: dict[int, dict[str, Any]] = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if row.get("eval/success") is not None and "env_steps" in row:
            rows[int(row["env_steps"])] = row
    return [rows[k] for k in sorted(rows)]


def measure(folder: Path, target: str, episodes: int, eval_every: int) -> dict[str, Any]:
    """Final (stage 3) and offline (adapted) success on the same ``episodes`` nominal episodes (the target as the
    stage-3 checkpoint records it), and stage 3's regret. Raises FileNotFoundError for an unfinished run,
    ValueError when stage 3 logged no evaluation or the checkpoint's target is not ``target``."""
    for stage in ("stage3", "adapt"):
        if not (folder / stage / target / "done.json").is_file():
            raise FileNotFoundError(f"{folder / stage / target}: stage not finished")
    # the regret first: cheap, and a run it cannot be read from fails before the 2 x episodes evaluations
    rows = stage3_eval_rows(folder / "stage3" / target / "metrics.jsonl")
    if not rows:
        raise ValueError(f"{folder / 'stage3' / target / 'metrics.jsonl'}: no stage-3 evaluation rows")
    out: dict[str, Any] = {"episodes": episodes, "regret": planned_regret(rows, eval_every),
                           "curve": [(int(r["env_steps"]), float(r["eval/success"])) for r in rows]}

    from robopretrain.checkpoint import load_agent
    from robopretrain.evaluate import default_target
    from robopretrain.evaluation import evaluate

    final_agent, final_ckpt = load_agent(folder / "stage3" / target)
    task = default_target(final_ckpt)
    if task.name != target:
        raise ValueError(f"{folder / 'stage3' / target}: the checkpoint's target is {task.name!r}, not {target!r}")
    for key, stage in (("final", "stage3"), ("offline", "adapt")):
        agent, ckpt = (final_agent, final_ckpt) if stage == "stage3" else load_agent(folder / stage / target)
        r = evaluate(agent, task, episodes)
        out[key] = {"success": r["success"], "successes": r["successes"], "episodes": r["episodes"],
                    "checkpoint": str(ckpt.path)}
    return out


def measure_cli(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="claims.py measure")
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--episodes", type=int, default=EPISODES)
    p.add_argument("--eval-every", type=int, required=True)
    a = p.parse_args(argv)
    if a.episodes < 1 or a.eval_every < 1:
        p.error(f"--episodes {a.episodes} and --eval-every {a.eval_every} must be >= 1")
    import torch

    from robopretrain.checkpoint import CheckpointError

    torch.set_num_threads(1)
    try:
        measured = measure(a.folder, a.target, a.episodes, a.eval_every)
    except (OSError, ValueError, CheckpointError) as e:
        sys.exit(f"error: {e}")
    write_json_atomic(a.folder / MEASURE_FILE, measured)


def stage3_eval_every(overrides: Sequence[str]) -> int:
    """``stage3.eval_every`` of the preset with ``overrides`` (read from the composed preset: the run folders of
    older commits record no config)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return int(compose(config_name=PRESET, overrides=list(overrides)).stage3.eval_every)


def finished_stages(folder: Path) -> set[str]:
    """The stages of a pipeline run folder with a ``done.json`` (per-target stages as ``stage/target``)."""
    return {str(p.parent.relative_to(folder)) for p in folder.glob("**/done.json")}


# --------------------------------------------------------------------------- the table


def _per_seed(runs: dict[str, Any], variant: str, target: str, key: str) -> dict[int, list[float]]:
    """``{seed: per-episode outcomes}`` of a metric (``final``, ``offline``) or ``{seed: [mean regret]}``."""
    out = {}
    for name, run in runs.items():
        v, t, s = name.split("/")
        m = run.get("measured")
        if v != variant or t != target or m is None:
            continue
        seed = int(s.removeprefix("seed"))
        out[seed] = [m["regret"]["mean_regret"]] if key == "regret" else outcomes(m[key]["successes"],
                                                                                     m[key]["episodes"])
    return dict(sorted(out.items()))


def summarize(runs: dict[str, Any], targets: Sequence[str], seed: int = 0) -> list[dict[str, Any]]:
    """One row per (target, target-demo count, variant other than full) with both sides measured on at least one
    seed: the means and per-seed values of final and offline success and of mean regret, ``full - variant``
    (regret: ``variant - full``) with its interval, and the verdict on final success. A variant is compared with
    the full pipeline of its own target-demo count (``target_demos`` None: the preset's)."""
    rows = []
    counts = sorted({split_label(k.split("/")[0])[1] for k in runs}, key=lambda n: (n is not None, n or 0))
    for target in targets:
        for demos in counts:
            full_label = label(FULL, demos)
            full = {k: _per_seed(runs, full_label, target, k) for k in ("final", "offline", "regret")}
            if not full["final"]:
                continue
            for variant, (_, claim, _) in VARIANTS.items():
                if variant == FULL:
                    continue
                row = _row(runs, target, demos, full, variant, claim, seed)
                if row is not None:
                    rows.append(row)
    return rows


def _row(runs: dict[str, Any], target: str, demos: int | None, full: dict[str, dict[int, list[float]]], variant: str,
         claim: int, seed: int) -> dict[str, Any] | None:
    """The table row of ``variant`` against ``full`` (per-seed outcomes of the same target-demo count); None when the
    variant has no measured run."""
    other = {k: _per_seed(runs, label(variant, demos), target, k) for k in ("final", "offline", "regret")}
    if not other["final"]:
        return None
    row: dict[str, Any] = {"claim": claim, "target": target, "variant": variant, "target_demos": demos,
                           "seeds": {FULL: list(full["final"]), variant: list(other["final"])}}
    for key in ("final", "offline", "regret"):
        a, b = list(full[key].values()), list(other[key].values())
        better, worse = (b, a) if key == "regret" else (a, b)
        diff, low, high = difference_ci(better, worse, seed=seed)
        row[key] = {FULL: float(np.mean([np.mean(x) for x in a])), variant: float(np.mean([np.mean(x) for x in b])),
                    "per_seed": {FULL: [float(np.mean(x)) for x in a], variant: [float(np.mean(x)) for x in b]},
                    "difference": diff, "interval": [low, high]}
    row["verdict"] = verdict(*row["final"]["interval"])
    n = min(len(full["final"]), len(other["final"]))
    if n < PROTOCOL_SEEDS:  # the protocol's verdict is over its three seeds (a one-seed interval has none)
        row["verdict"] += f" ({n} of {PROTOCOL_SEEDS} seeds)"
    return row


def table(rows: Sequence[dict[str, Any]], episodes: int = EPISODES) -> str:
    def cell(r: dict[str, Any], key: str) -> str:
        m, v = r[key], r["variant"]
        low, high = m["interval"]
        return f"{m[FULL]:.2f} vs {m[v]:.2f}: {m['difference']:+.2f} [{low:+.2f}, {high:+.2f}]"

    lines = [f"| claim | target | target demos | full vs | seeds | final success ({episodes} ep.) | offline success "
             f"({episodes} ep.) | mean regret (variant - full) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = f"{len(r['seeds'][FULL])} / {len(r['seeds'][r['variant']])}"
        demos = "preset" if r.get("target_demos") is None else str(r["target_demos"])
        lines.append(f"| {r['claim']} | {r['target']} | {demos} | {r['variant']} | {seeds} | {cell(r, 'final')} | "
                     f"{cell(r, 'offline')} | {cell(r, 'regret')} | {r['verdict']} |")
    return "\n".join(lines)


def plot(runs: dict[str, Any], targets: Sequence[str], path: Path) -> Path | None:
    """Final and offline success per run label (variant, target-demo count) and target: the mean over seeds as a bar,
    each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [t for t in targets if _per_seed(runs, FULL, t, "final")]
    if not present:
        return None
    labels = sorted({k.split("/")[0] for k in runs}, key=lambda x: (split_label(x)[1] or 0, list(VARIANTS).index(
        split_label(x)[0])))
    width = max(4.5, 0.6 * len(labels) + 1.0)  # room for each label: they overlapped at nine
    fig, axes = plt.subplots(1, len(present), figsize=(width * len(present), 3.8), squeeze=False)
    for ax, target in zip(axes[0], present):
        names = [v for v in labels if _per_seed(runs, v, target, "final")]
        for j, key in enumerate(("offline", "final")):
            for i, v in enumerate(names):
                vals = [float(np.mean(x)) for x in _per_seed(runs, v, target, key).values()]
                x = i + (j - 0.5) * 0.38
                ax.bar(x, np.mean(vals), 0.36, color=("#9ecae1", "#3182bd")[j], label=key if i == 0 else None)
                ax.plot([x] * len(vals), vals, "k.", ms=4)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{target}: success on nominal episodes", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="claims.py pretraining", description="claims 2 and 3 (" + PROTOCOL + ")")
    p.add_argument("--targets", nargs="+", default=["PressLitButton"], help="sim_envs targets (default %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="pipeline seeds (default %(default)s)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="which pipeline variants to run (default: all)")
    p.add_argument("--target-demos", type=int, default=None,
                   help="the first N of each target's demos for every run (default: the preset's count); runs are "
                        "labelled <variant>_demos<N> and compared with the full pipeline of the same N")
    p.add_argument("--episodes", type=int, default=EPISODES,
                   help="evaluation episodes per run, final and adapted agent (default %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="pipeline runs at a time (one torch thread each)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/robopretrain_testbed"),
                   help="run folders; shared with benchmarks/testbed.py's --work-dir, its pixel runs are 'full'")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default %(default)s)")
    p.add_argument("--plot", type=Path, default=PLOT, help="figure (default %(default)s)")
    p.add_argument("--override", nargs="*", default=[], help="extra pipeline overrides for every run (recorded)")
    p.add_argument("--summarize-only", action="store_true", help="print the table from --out, running nothing")
    return p.parse_args(argv)


def pretraining(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with results_lock(args.out):  # a second call on one --out is refused (each rewrote it from its own copy)
        return measure_pretraining(args)


def measure_pretraining(args: argparse.Namespace) -> dict[str, Any]:
    """The variants' runs still to do, then the claims table and figure (``pretraining`` holds the lock)."""
    if args.summarize_only and not args.out.is_file():
        sys.exit(f"error: {args.out}: no results to summarize (run without --summarize-only first)")
    try:
        results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    except json.JSONDecodeError as e:
        sys.exit(f"error: {args.out}: not JSON ({e})")
    if not isinstance(results, dict) or results.get("protocol", PROTOCOL) != PROTOCOL:
        sys.exit(f"error: {args.out}: not this benchmark's results (protocol "
                 f"{results.get('protocol') if isinstance(results, dict) else None!r}, expected {PROTOCOL!r})")
    results.setdefault("runs", {})
    results.update({"protocol": PROTOCOL, "preset": PRESET})
    if not args.summarize_only:
        results["cpu"] = cpu_model()  # the machine of the runs, not of a later --summarize-only
        lock = threading.Lock()  # the worker threads share ``results`` and its file
        own = sorted(t for t in args.targets if TARGET_PRESETS.get(t, PRESET) != PRESET)
        if own:  # their full runs use another preset: the variants' budgets here are the testbed preset's
            sys.exit(f"error: {own} run with their own testbed preset ({[TARGET_PRESETS[t] for t in own]}); this "
                     f"protocol's variants are set for the {PRESET!r} preset (amend it before measuring them)")
        if args.target_demos is not None and args.target_demos < 1:
            sys.exit(f"error: --target-demos {args.target_demos}: expected >= 1")
        labels = [label(v, args.target_demos) for v in VARIANTS if v in args.variants]
        eval_every: dict[str, int] = {}
        for v in labels:  # composed here, once: hydra's global state is not thread-safe
            try:
                eval_every[v] = stage3_eval_every([*run_overrides(v), *args.override])
            except Exception as e:  # hydra's composition errors: a bad --override
                sys.exit(f"error: the preset {PRESET!r} with {[*run_overrides(v), *args.override]}: {e}")
        # the full runs first (the others copy their data and stage 1), then variant by variant
        jobs = [(v, t, s) for v in labels for t in args.targets for s in args.seeds]
        for v, t, s in jobs:  # a run measured with other overrides is another experiment: not skipped, not redone
            done = results["runs"].get(f"{v}/{t}/seed{s}", {})
            if "measured" in done and done.get("overrides", []) != list(args.override):
                sys.exit(f"error: {v}/{t}/seed{s} in {args.out} was measured with overrides "
                         f"{done.get('overrides', [])}, not {list(args.override)}; use another --out and --work-dir")
            if "measured" in done and done.get("episodes", args.episodes) != args.episodes:  # the table said 5 for 2
                sys.exit(f"error: {v}/{t}/seed{s} in {args.out} was measured with --episodes {done['episodes']}, not "
                         f"{args.episodes}; use the same --episodes, or another --out")
            check_run_settings(run_dir(args.work_dir, v, t, s), {"run": list(run_overrides(v)), "preset": PRESET,
                                                                  "overrides": list(args.override)}, "claims.py")

        def work(job: tuple[str, str, int]) -> None:
            variant, target, seed = job
            key = f"{variant}/{target}/seed{seed}"
            with lock:
                if "measured" in results["runs"].get(key, {}):
                    return
            folder = run_dir(args.work_dir, variant, target, seed)
            folder.mkdir(parents=True, exist_ok=True)
            info: dict[str, Any] = {"overrides": list(args.override), "episodes": args.episodes,
                                    "copied_stages": share_stages(args.work_dir, variant, target, seed)}
            before = finished_stages(folder)
            info.update(run_logged(pipeline_command(variant, target, seed, args.work_dir, args.override), folder, ROOT))
            # a reused run (the testbed's, an earlier call's) shows [] here: its stages ran at another commit
            info["stages_run"] = sorted(finished_stages(folder) - before)
            info["commit"] = git_commit(ROOT)
            info["cpu"] = cpu_model()  # per run: one file holds runs of several machines
            measured = run_logged([sys.executable, str(Path(__file__).resolve()), "measure", "--folder", str(folder),
                                   "--target", target, "--episodes", str(args.episodes), "--eval-every",
                                   str(eval_every[variant])], folder, ROOT)
            if measured["returncode"] == 0:
                info["measured"] = json.loads((folder / MEASURE_FILE).read_text())
                info["measure_seconds"] = measured["call_seconds"]
            else:
                info["error"] = f"unfinished or failed (see {folder / 'benchmark.log'})"
            with lock:
                results["runs"][key] = info
                write_json_atomic(args.out, results)
            m = info.get("measured")
            print(f"{key}: " + (f"final {m['final']['success']:.2f}, offline {m['offline']['success']:.2f}, "
                                f"mean regret {m['regret']['mean_regret']:.2f}" if m else info["error"]), flush=True)

        # full runs before the variants that copy from them
        fulls = [j for j in jobs if split_label(j[0])[0] == FULL]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(work, fulls))
            list(pool.map(work, [j for j in jobs if j not in fulls]))
    results["rows"] = summarize(results["runs"], args.targets)
    for target in sorted(set(args.targets) - {r["target"] for r in results["rows"]}):
        print(f"note: {target}: no row (it needs a measured full run and variant in {args.out})", file=sys.stderr)
    write_json_atomic(args.out, results)
    drawn = plot(results["runs"], args.targets, args.plot)
    recorded = {r["episodes"] for r in results["runs"].values() if "measured" in r and r.get("episodes")}
    print(table(results["rows"], recorded.pop() if len(recorded) == 1 else args.episodes))  # the runs' own count
    if drawn is not None:
        print(f"plot: {drawn}")
    return results


SUB_COMMANDS = {  # claims.py --help lists them (it printed the usage line alone)
    "pretraining": "claims 2 and 3: full pipeline vs scratch / VIP encoder / target-only data (--variants)",
    "values": "claim 1: does ICVF's value rise toward goals on unseen robot trajectories",
    "robustness": "claim 5: domain randomization vs none on held-out shifts, and leave-one-factor-out",
    "calibration": "claim 4: CQL vs Cal-QL vs IQL at the switch to online (dip, regret)",
    "shifts": "claim 2b: claim 2's final agents under held-out visual shifts",
    "measure": "one finished run folder: final and adapted success on the same episodes, regret (pretraining's step)",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    usage = ("usage: claims.py {pretraining,values,robustness,calibration,shifts,measure} [options]  "
             "(claims.py <sub-command> --help)")
    if argv[:1] in (["-h"], ["--help"]):
        print(usage + "\n\n" + textwrap.fill(" ".join(__doc__.split("\n\n")[0].split()), 100) + "\n\n" + "\n".join(
            f"  {name:<12} {about}" for name, about in SUB_COMMANDS.items()))
        return
    if not argv or argv[0] not in ("pretraining", "values", "robustness", "calibration", "shifts", "measure"):
        sys.exit(usage)
    if argv[0] == "measure":
        measure_cli(argv[1:])
    elif argv[0] == "values":
        import claims_values  # claim 1: its own module (stage-1 runs, no pipeline)

        claims_values.main(argv[1:])
    elif argv[0] == "robustness":
        import claims_robustness  # claim 5: stage-3 variants on the transfer benchmark's base runs

        claims_robustness.main(argv[1:])
    elif argv[0] == "calibration":
        import claims_calibration  # claim 4: offline -> online runs on state (benchmarks/offline_to_online.py)

        claims_calibration.main(argv[1:])
    elif argv[0] == "shifts":
        import claims_encoder_shifts  # claim 2b: claim 2's agents evaluated under visual shifts

        claims_encoder_shifts.main(argv[1:])
    else:
        pretraining(argv[1:])


if __name__ == "__main__":
    main()
