"""The pipeline's ``report.md``: stage timings, stage-2 per-task success, target results (with the blind-camera
ablation), robustness tables, plots and rollouts; everything read back from the run folder's files.

:func:`write_report` reads ``<run>/<stage>/done.json``, the stages' ``metrics.jsonl`` and
``<run>/evaluate/{results,robustness}.json`` (written by :mod:`robopretrain.pipeline`), draws two plots and writes
``<run>/report.md``. :func:`log_report` sends its figures and plots to the experiment logger (TensorBoard or wandb).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robopretrain.files import write_text_atomic
from robopretrain.metrics import read_jsonl

DONE = "done.json"
REPORT = "report.md"  # <run>/report.md, written when every stage is done
STAGES = ("data", "stage1", "stage2", "adapt", "stage3", "evaluate")


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def eval_rows(folder: Path) -> list[dict[str, Any]]:
    """The evaluation rows of a stage folder's ``metrics.jsonl`` (empty when there is none)."""
    path = folder / "metrics.jsonl"
    return [r for r in read_jsonl(path) if "eval/success" in r] if path.is_file() else []


def robustness_rows(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Nominal then every (factor, level) of an ``eval_info``: success, 95% CI, drop vs nominal, episodes."""
    keep = ("success", "ci_low", "ci_high", "drop_vs_nominal", "episodes")
    rows = [{"factor": "nominal", "level": "none", **{k: info["nominal"][k] for k in keep}}]
    for factor, levels in info["factors"].items():
        rows += [{"factor": factor, "level": level, **{k: r[k] for k in keep}} for level, r in levels.items()]
    return rows


def plot_curves(run_dir: Path, out_dir: Path) -> list[Path]:
    """Stage-3 success over env steps per target, and the offline stages' Q-values over updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for folder in sorted(p for p in (run_dir / "stage3").glob("*") if p.is_dir()):
        rows = [r for r in eval_rows(folder) if "env_steps" in r]
        ax.plot([r["env_steps"] for r in rows], [r["eval/success"] for r in rows], marker="o", label=folder.name)
    ax.set_xlabel("online env steps")
    ax.set_ylabel("success (stage 3's eval)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Stage 3: online fine-tuning\n(evaluated under its training randomization; nominal outside "
                 "sim_envs)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "stage3_success.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, folder in [("stage2", run_dir / "stage2"),
                         *[(f"adapt {p.name}", p) for p in sorted((run_dir / "adapt").glob("*")) if p.is_dir()]]:
        path = folder / "metrics.jsonl"
        rows = [r for r in read_jsonl(path) if "train/q_data" in r] if path.is_file() else []
        if rows:
            ax.plot([r["step"] for r in rows], [r["train/q_data"] for r in rows], marker="o", markersize=3,
                    label=f"{name} Q(s, a_data)")  # a marker: a short stage logs one point, no line to draw
    ax.set_xlabel("updates")
    ax.set_ylabel("average Q on data")
    ax.set_title("Offline stages")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:  # BC and DT have no critic; a blank plot said nothing
        ax.text(0.5, 0.5, "no Q(s, a_data) logged:\nthe offline stages' algorithms have no critic\n(or no stage ran)",
                ha="center", va="center", transform=ax.transAxes, fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "offline_q.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def run_path(run_dir: Path, recorded: str) -> Path:
    """A path the run's JSON records, as it is now: relative ones are under ``run_dir``; an absolute one (written
    before paths were recorded relative) is re-rooted at ``run_dir`` by its part from ``evaluate/`` on when that
    exists (a moved or copied folder), else kept."""
    path = Path(recorded)
    if not path.is_absolute():
        return run_dir / path
    if "evaluate" not in path.parts:
        return path
    here = run_dir.joinpath(*path.parts[len(path.parts) - path.parts[::-1].index("evaluate") - 1:])
    return here if here.exists() or not path.exists() else path  # a copied folder: its own files, not the original's


def interval_name(info: Mapping[str, Any]) -> str:
    """``"95% Wilson"`` / ``"95% percentile-bootstrap"``: the interval an ``eval_info``'s ``bootstrap`` section used."""
    boot = info.get("bootstrap") or {}
    method = "Wilson" if str(boot.get("method", "wilson")) == "wilson" else "percentile-bootstrap"
    return f"{100 * float(boot.get('confidence', 0.95)):g}% {method}"


def success_cell(result: Mapping[str, Any]) -> str:
    """``0.30 [0.15, 0.52] (20 ep)``: an evaluation's success rate, its Wilson 95% interval (as the robustness table
    and ``robopretrain.evaluate`` give it) and its episodes; without an episode count the rate alone."""
    from robopretrain.evaluate import wilson_ci

    rate, episodes = float(result["success"]), result.get("episodes")
    if not episodes:
        return f"{rate:.2f} (? ep)"
    low, high = wilson_ci(int(round(rate * int(episodes))), int(episodes))
    return f"{rate:.2f} [{low:.2f}, {high:.2f}] ({int(episodes)} ep)"


def robustness_lines(run_dir: Path) -> list[str]:
    """The report's robustness section: per sim_envs target, success per factor and level of the short sweep."""
    path = run_dir / "evaluate" / "robustness.json"
    sweep = _read(path) if path.is_file() else {}
    if not sweep:
        return []
    lines = ["", "## Robustness (short sweep of `python -m robopretrain.evaluate`)", "",
             "Stage-3 checkpoint of each target under shifted conditions (`evaluate.robustness`; eval_hard and "
             "eval_easy draw from held-out ranges disjoint from the training randomization). Few episodes: the "
             "intervals are wide; for the full sweep run "
             "`python -m robopretrain.evaluate checkpoint=<run>/stage3/<target>` (50 episodes per condition, every "
             "factor and level).", ""]
    for name, entry in sweep.items():
        info_path = run_path(run_dir, entry["eval_info"])
        ci = interval_name(_read(info_path)) if info_path.is_file() else "95%"
        lines += [f"**{name}** (`{info_path.relative_to(run_dir) if info_path.is_relative_to(run_dir) else info_path}`)",
                  "", f"| factor | level | success | {ci} CI | drop vs nominal | episodes |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['factor']} | {r['level']} | {r['success']:.2f} | [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | "
                  f"{r['drop_vs_nominal']:+.2f} | {r['episodes']} |" for r in entry["rows"]]
        if entry.get("plot"):
            plot = run_path(run_dir, entry["plot"])
            lines += ["", f"![robustness {name}]({plot.relative_to(run_dir) if plot.is_relative_to(run_dir) else plot})"]
        lines.append("")
    return lines


def prior_task_success(row: Mapping[str, Any], cfg: DictConfig) -> dict[str, float]:
    """``{prior task: success}`` from one stage-2 evaluation row of ``metrics.jsonl``.

    Stage 2 logs ``eval/<task>/success`` per task only when it evaluates several (``robopretrain.train.summarize``);
    with a single prior task the row holds ``eval/success`` alone, which belongs to that task."""
    per = {k[len("eval/"):-len("/success")]: float(v) for k, v in row.items()
           if k.startswith("eval/") and k.endswith("/success") and k != "eval/success"}
    if not per and "eval/success" in row:
        from robopretrain.pipeline import prior_task_names

        names = prior_task_names(cfg)
        if len(names) == 1:
            per = {names[0]: float(row["eval/success"])}
    return per


def recorded_setting(done: Mapping[str, Mapping[str, Any]], cfg: DictConfig, key: str) -> str:
    """The value of the pipeline key ``key`` that the finished stages ran with (their ``done.json`` ``settings``), as
    text: one value, or each value with the stages that ran with it when they differ (``frozen (stage2); finetune
    (adapt, stage3)``, after a rerun of the later stages only); this invocation's ``cfg`` value when no finished
    stage records the key. A rerun with other settings skips the done stages, so the results are the recorded
    settings', not ``cfg``'s."""
    by_value: dict[str, list[str]] = {}
    for stage, record in done.items():
        settings = record.get("settings")
        if isinstance(settings, Mapping) and key in settings:
            by_value.setdefault(json.dumps(settings[key]) if not isinstance(settings[key], str) else settings[key],
                                []).append(stage)
    if not by_value:
        value = OmegaConf.select(cfg, key, default=None)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        return value if isinstance(value, str) else json.dumps(value)
    if len(by_value) == 1:
        return next(iter(by_value))
    return "; ".join(f"{value} ({', '.join(stages)})" for value, stages in by_value.items())


def write_report(cfg: DictConfig, run_dir: Path) -> Path:
    """``<run>/report.md`` (see the module docstring). Every figure is read from the run folder; where this
    invocation's ``cfg`` differs from what the finished stages ran with, the report says so."""
    from robopretrain.pipeline import changed_algo, changed_input_files, changed_settings

    out_dir = run_dir / "evaluate"
    plots = plot_curves(run_dir, out_dir)
    done = {stage: _read(run_dir / stage / DONE) for stage in STAGES if (run_dir / stage / DONE).is_file()}

    def get(key: str) -> str:
        return recorded_setting(done, cfg, key)

    objective = get("stage1.objective") if get("stage1.enabled") == "true" else "none"
    cameras = get("obs.rgb")
    seen = (f"encoder mode `{get('encoder.mode')}`, stage-1 objective `{objective}`, encoder `{get('stage1.encoder')}` "
            f"at {get('image_size')} px, cameras {cameras}" if cameras not in ("[]", "None", "null", "")
            else "no cameras (no image encoder)")  # a state-only run's header named an encoder it did not have
    lines = ["# robopretrain pipeline report", "",
             f"Run folder `{run_dir}`; {seen}, low-dim parts {get('obs.low_dim')}.", "",
             "## Stages", "", "Wall time of the session that finished each stage (a stage resumed after an interruption "
             "also ran in the sessions before it: `sessions` counts them).", "",
             "| stage | wall time (s) | sessions | finished at |", "|---|---|---|---|"]
    total = 0.0
    for stage, d in done.items():
        total += float(d["seconds"])
        result = d.get("result")
        skipped = result.get("skipped") if isinstance(result, dict) else None  # a stage its config disabled
        if stage == "stage1" and result == {"encoder": None}:  # recorded so before stages said why
            skipped = "stage1.enabled=false"
        name = f"{stage} (skipped: {skipped})" if skipped else stage
        lines.append(f"| {name} | {d['seconds']:.1f} | {d.get('sessions', 1)} | {d['finished']} |")
    lines += [f"| **total of these sessions** | **{total:.1f}** | | |", ""]
    ignored = [(stage, c) for stage, d in done.items()
               for c in ["; ".join(x for x in (changed_algo(cfg, stage, d), changed_settings(cfg, stage, d, run_dir),
                                               changed_input_files(cfg, stage, d, run_dir)) if x)]
               if c]
    if ignored:
        lines += ["## Settings of this invocation that took no effect", "",
                  "These stages had finished with other settings or files and were skipped; the figures below are the "
                  "recorded settings' and files' (`<stage>/done.json`). "
                  "To run a stage with the new ones, delete its folder and the later "
                  "stages' folders, or choose another run_dir.", "", "| stage | recorded -> this invocation |",
                  "|---|---|"]
        lines += [f"| {stage} | {c} |" for stage, c in ignored]
        lines.append("")
    s2 = eval_rows(run_dir / "stage2")
    if s2:
        ev = s2[-1]
        per = prior_task_success(ev, cfg)
        lines += ["## Stage 2: multi-task offline RL, success per prior task", "", "| task | success |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in per.items()]
        lines += [f"| **mean** | **{ev['eval/success']:.2f}** |", ""]
        if "eval/episodes" in ev:
            n = int(ev["eval/episodes"])
            lines += [f"Each task's success over {n} episode{'' if n == 1 else 's'} (stage 2's last evaluation, "
                      f"update {ev.get('step', '?')}).", ""]
    results = _read(out_dir / "results.json") if (out_dir / "results.json").is_file() else {}
    settings = list(dict.fromkeys(k for per in results.values() for k in per))  # a non-sim target has fewer
    lines += ["## Target tasks", "",
              "Final evaluation: the stage-3 policy on fixed episodes; `blind_*` rows replace its camera frames (black, "
              "or a frame of another episode) on the same nominal episodes: a policy that uses vision should lose "
              "most of its success there. The stage-3 column is stage 3's own last evaluation, under the "
              "randomization it trains in (`stage3.randomization`; a target outside sim_envs: nominal): it can "
              "differ from the nominal final one. "
              "Final success: mean [Wilson 95% interval] (episodes). Cumulative regret: stage 3's mean 1 - success "
              "over its finished training episodes (the Cal-QL paper's measure; count in brackets).", "",
              "| target | after adaptation (offline) | stage 3 final (its eval, training randomization) | cumulative "
              "regret | "
              + " | ".join(f"final: {s}" for s in settings) + " |",
              "|---|---|---|---|" + "---|" * len(settings)]
    for name, per in results.items():
        adapt = eval_rows(run_dir / "adapt" / name)
        s3 = _read(run_dir / "stage3" / name / DONE)
        cells = " | ".join(success_cell(per[k]) if k in per else "-" for k in settings)
        regret = "n/a" if s3.get("cumulative_regret") is None else f"{s3['cumulative_regret']:.2f}"
        adapt_s = f"{adapt[-1]['eval/success']:.2f}" if adapt else "n/a"
        if adapt and "eval/episodes" in adapt[-1]:
            adapt_s += f" ({int(adapt[-1]['eval/episodes'])} ep)"
        s3_rows = eval_rows(run_dir / "stage3" / name)
        if regret != "n/a" and s3_rows and s3_rows[-1].get("episodes"):
            regret += f" ({int(s3_rows[-1]['episodes'])} ep)"
        s3_s = f"{s3['final_success']:.2f}"
        if s3_rows and "eval/episodes" in s3_rows[-1]:
            s3_s += f" ({int(s3_rows[-1]['eval/episodes'])} ep)"
        lines.append(f"| {name} | {adapt_s} | {s3_s} | {regret} | {cells} |")
    lines += robustness_lines(run_dir)
    lines += ["", "## Plots", ""] + [f"![{p.stem}](evaluate/{p.name})" for p in plots]
    gifs = sorted(out_dir.glob("rollout_*.gif"))
    if gifs:  # evaluate.video=false films none
        lines += ["", "## Rollouts", ""] + [f"![{gif.stem}](evaluate/{gif.name})" for gif in gifs]
    lines += ["", "Config of this invocation (each stage's own settings are in its `done.json`):", "", "```yaml",
              OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    path = run_dir / REPORT
    write_text_atomic(path, "\n".join(lines))
    return path


def log_report(cfg: DictConfig, run_dir: Path, logger: Any) -> list[Path]:
    """Send the report's figures to the experiment logger ``logger`` (the ``logger`` group; ``None``: TensorBoard):
    the pipeline's config, the final success of each target and evaluation setting (``final/<target>/<setting>``,
    step 0) and every PNG under ``<run>/evaluate`` (plots, robustness plots) as images. TensorBoard writes to
    ``<run>/tb``, wandb to a run of its own (``report`` in the pipeline's group). Returns the PNGs logged."""
    from robopretrain.loggers import make_logger, plain_config

    out_dir = run_dir / "evaluate"
    results = _read(out_dir / "results.json") if (out_dir / "results.json").is_file() else {}
    plots = sorted(out_dir.rglob("*.png"))
    sink = make_logger(logger, run_dir, config=plain_config(cfg))
    try:
        sink.scalars(0, {f"final/{name}/{setting}": r["success"] for name, per in results.items()
                         for setting, r in per.items()})
        sink.images(0, {str(p.relative_to(out_dir).with_suffix("")): p for p in plots})
    finally:
        sink.close()
    return plots


__all__ = ["eval_rows", "log_report", "plot_curves", "robustness_rows", "write_report"]
