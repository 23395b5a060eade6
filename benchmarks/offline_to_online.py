"""Offline-to-online experiment: CQL vs Cal-QL vs IQL on the held-out target tasks, state-based.

For each target task (``sim_envs.TARGET_TASKS``): 50 demonstrations, noisy with failures mixed in
(``configs/data/target_noisy.yaml``: clean 0.2 / noisy std 0.4 / failing 0.3, state-only), offline pretraining,
then online fine-tuning with physics randomization at level ``train`` (``configs/dr/train.yaml``; ``--dr none``: the
same sim as the data). Every
method gets the same budget (offline updates, online env steps at UTD 1, batch 256) and 3 seeds. Each run is
stage 2 (:func:`robopretrain.train.run`, into ``<run>/offline``) then stage 3 (:func:`finetune.train.run`) on its
checkpoint, two processes in parallel with one torch thread each; a rerun resumes finished/partial runs from their
checkpoints.

Outputs: ``benchmarks/results/offline_to_online.json`` (config, every run's evaluation history, a summary),
``docs/offline_to_online.png`` (success vs env steps, mean and min-max over seeds, one panel per task), and
a markdown table on stdout: success before / after online fine-tuning, the unlearning dip (largest drop of
evaluation success below the offline starting success), cumulative regret (mean 1 - success over training
episodes), and the calibration gap at the switch to online: average min-Q of the deterministic policy's
action at dataset states minus the data's Monte-Carlo return-to-go (reward units after x10 - 5).

    python benchmarks/offline_to_online.py                    # full experiment (~35 min on 2 CPU cores)
    python benchmarks/offline_to_online.py --summarize-only   # table and figure from the saved JSON
    python benchmarks/offline_to_online.py --diagnose --tasks OpenDoorRight --seeds 0   # calibration diagnosis

``--diagnose`` trains offline only (one task and seed, variants from ``DIAGNOSE_VARIANTS``) and records, at
``--diagnose-steps``, Q on data and policy actions against the returns-to-go over every offline transition,
split by successful and all-failure episodes, with a check of the stored returns-to-go against the rewards
and gamma the Q-targets use (``benchmarks/results/offline_to_online_diagnosis.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "offline_to_online.json"
FIGURE = ROOT / "docs" / "offline_to_online.png"
METHODS = ("cql", "calql", "iql")
DIAGNOSE_RESULTS = ROOT / "benchmarks" / "results" / "offline_to_online_diagnosis.json"
# name -> (algorithm, extra Hydra overrides); all at the experiment's batch 128 and 4 sampled actions
DIAGNOSE_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "cql_alpha5": ("cql", []),
    "calql_alpha5": ("calql", []),
    "cql_alpha1": ("cql", ["algo.cql_alpha=1.0"]),
    "cql_lagrange_gap0.8": ("cql", ["algo.cql_lagrange=true"]),
    "no_cql_penalty_alpha0": ("cql", ["algo.cql_alpha=0.0"]),  # plain SAC with max-target backup: TD alone
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--tasks", nargs="+", default=None, help="default: sim_envs.TARGET_TASKS")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--offline-steps", type=int, default=2000)
    p.add_argument("--offline-eval-every", type=int, default=None,
                   help="offline evaluation (success, Q vs returns-to-go) and checkpoint spacing in updates; "
                        "default: once, at the end")
    p.add_argument("--online-steps", type=int, default=2500)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--dr", default="train", help="stage-3 randomization (configs/dr/<name>.yaml): train (default), none")
    p.add_argument("--online-checkpoint-every", type=int, default=None,
                   help="stage-3 checkpoint spacing in env steps (a killed run resumes from the last); default: the end")
    p.add_argument("--n-actions", type=int, default=4, help="CQL/Cal-QL sampled actions per state (PTR used 4)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "offline_to_online")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--figure", type=Path, default=FIGURE)
    p.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run (diagnostics)")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--diagnose", action="store_true",
                   help="instead of the experiment: offline-only calibration diagnostics (see diagnose())")
    p.add_argument("--diagnose-steps", nargs="+", type=int, default=[1000, 2000, 5000, 10000],
                   help="offline updates at which --diagnose measures Q and returns-to-go")
    p.add_argument("--diagnose-variants", nargs="+", default=list(DIAGNOSE_VARIANTS), help="names from DIAGNOSE_VARIANTS")
    p.add_argument("--diagnose-results", type=Path, default=DIAGNOSE_RESULTS)
    args = p.parse_args(argv)
    for key in ("offline_eval_every", "online_checkpoint_every"):
        value = getattr(args, key)
        if value is not None and value < 1:
            p.error(f"--{key.replace('_', '-')} {value}: expected >= 1")
    return args


def data_path(args: argparse.Namespace, task: str) -> Path:
    return args.work_dir / "data" / f"{task}.hdf5"


def parse_extra(extra: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--extra`` Hydra-style ``algo.key=value`` overrides -> (algo overrides, other overrides)."""
    import yaml

    algo, other = {}, {}
    for item in extra:
        key, _, value = item.partition("=")
        parsed = yaml.safe_load(value)
        if key.startswith("algo."):
            algo[key[len("algo."):]] = parsed
        else:
            other[key] = parsed
    return algo, other


def stage_configs(args: argparse.Namespace, task: str, method: str, seed: int) -> tuple[Any, Any]:
    """The stage-2 and stage-3 configs of one run (composed from configs/robopretrain.yaml and finetune.yaml)."""
    from robopretrain.build import compose

    run_dir = args.work_dir / task / f"{method}_seed{seed}"
    extra_algo, extra = parse_extra(list(args.extra))
    algo = {"batch_size": args.batch_size, **({"n_actions": args.n_actions} if method in ("cql", "calql") else {}),
            **extra_algo}
    common = {"seed": seed, "num_threads": 1, **extra}
    offline_every = args.offline_eval_every or args.offline_steps
    offline = compose("robopretrain", {"algo": method, "data": "target_noisy"}, {
        **common, "algo": algo, "output_dir": str(run_dir / "offline"),
        "data": {"path": str(data_path(args, task)), "collect": {"tasks": [task]}},
        "train": {"steps": args.offline_steps, "checkpoint_every": offline_every,
                  "eval_every": offline_every, "eval_episodes": args.eval_episodes, "progress": False}})
    online = compose("finetune", {"algo": method, "dr": args.dr}, {
        **common, "algo": algo, "output_dir": str(run_dir), "checkpoint": str(run_dir / "offline"), "target": task,
        "data": {"path": str(data_path(args, task))},
        # one env, in the learner's process: the loop the README's table was measured with (the stage-3 default
        # is 2 worker envs, which changes the episode order and so the numbers, not the method)
        "online": {"num_envs": 1, "env_steps": args.online_steps, "eval_every": args.eval_every,
                   "eval_episodes": args.eval_episodes, "checkpoint_every": args.online_checkpoint_every
                   or args.online_steps, "progress": False}})
    return offline, online


def run_one(job: tuple[str, str, int, argparse.Namespace]) -> dict[str, Any]:
    """One offline -> online run in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    from finetune.train import run as finetune
    from robopretrain.report import eval_rows
    from robopretrain.train import run as train_offline

    task, method, seed, args = job
    offline_cfg, online_cfg = stage_configs(args, task, method, seed)
    start = time.perf_counter()
    train_offline(offline_cfg)
    out = finetune(online_cfg)
    wall = time.perf_counter() - start
    print(f"[{time.strftime('%H:%M:%S')}] done {task} {method} seed {seed} in {wall:.0f} s: "
          f"success {out['history'][0]['eval/success']:.2f} -> {out['history'][-1]['eval/success']:.2f}", flush=True)
    return {"task": task, "method": method, "seed": seed, "wall_s": wall, "history": out["history"],
            "offline_history": eval_rows(Path(offline_cfg.output_dir)), "run_dir": out["run_dir"]}


def make_data(args: argparse.Namespace, tasks: list[str]) -> None:
    """Collect each task's offline data once (the same file for every method and seed)."""
    from robopretrain.build import resolve_data_path

    for task in tasks:
        offline_cfg, _ = stage_configs(args, task, "calql", 0)
        resolve_data_path(offline_cfg.data, args.work_dir / "data")


# --------------------------------------------------------------------------- summary


def run_summary(run: dict[str, Any]) -> dict[str, float]:
    hist = run["history"]
    before = hist[0]["eval/success"]
    online = [h["eval/success"] for h in hist[1:]] or [before]
    return {
        "success_before": before,
        "success_after": hist[-1]["eval/success"],
        "dip": max(0.0, before - min(online)),
        "regret": hist[-1]["train/cumulative_regret"],
        "q_policy_at_switch": hist[0].get("calib/offline_q_policy"),
        "mc_return_at_switch": hist[0].get("calib/offline_mc_return"),
        "gap_at_switch": hist[0].get("calib/offline_gap_policy"),
        "online_gap_end": hist[-1].get("calib/online_gap_policy"),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task and method: mean and std over seeds of every :func:`run_summary` figure."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["task"], {}).setdefault(run["method"], {"seeds": [], "per_seed": []})
        entry = out[run["task"]][run["method"]]
        entry["seeds"].append(run["seed"])
        entry["per_seed"].append(run_summary(run))
    for task in out.values():
        for entry in task.values():
            for key in entry["per_seed"][0]:
                vals = [s[key] for s in entry["per_seed"] if s[key] is not None]
                entry[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))} if vals else None
    return out


def fmt(stat: dict[str, float] | None, digits: int = 2) -> str:
    return "n/a" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown_table(summary: dict[str, Any]) -> str:
    lines = [
        "| task | method | seeds | success before | success after | unlearning dip | cumulative regret | "
        "Q(s, pi(s)) at switch | data MC return | calibration gap at switch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, methods in summary.items():
        for method in METHODS:
            if method not in methods:
                continue
            e = methods[method]
            lines.append(
                f"| {task} | {method} | {len(e['seeds'])} | {fmt(e['success_before'])} | {fmt(e['success_after'])} | "
                f"{fmt(e['dip'])} | {fmt(e['regret'])} | {fmt(e['q_policy_at_switch'], 1)} | "
                f"{fmt(e['mc_return_at_switch'], 1)} | {fmt(e['gap_at_switch'], 1)} |"
            )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, dr: str = "train") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in runs})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in METHODS:
            group = [r for r in runs if r["task"] == task and r["method"] == method]
            if not group:
                continue
            n = min(len(r["history"]) for r in group)
            x = np.array([h["env_steps"] for h in group[0]["history"][:n]])
            y = np.array([[h["eval/success"] for h in r["history"][:n]] for r in group])
            ax.plot(x, y.mean(0), marker="o", label=f"{method} (n={len(group)})")
            ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
        ax.set_title(f"{task}: offline -> online (stage-3 dr={dr})")
        ax.set_xlabel("online env steps (0 = end of offline pretraining)")
        ax.set_ylabel("eval success rate")
        ax.set_ylim(-0.05, 1.05)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# the settings that make two calls' runs one experiment (the rest: which tasks, methods and seeds, and where)
SAME_EXPERIMENT = ("offline_steps", "offline_eval_every", "online_steps", "eval_every", "eval_episodes", "dr",
                   "n_actions", "batch_size", "extra")

# options added after results were committed, as the runs before them were made (the committed file lacks them)
ADDED_AS_BEFORE = {"offline_eval_every": None, "dr": "train", "extra": []}


def earlier_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs an earlier call wrote to ``args.results`` (run in parts: ``--seeds 0``, then ``--seeds 1``; each call
    rewrote the file with its own runs alone); :func:`with_earlier` keeps those this call has not measured again.
    SystemExit when the file holds an experiment of other settings (it would mix them in one table)."""
    if not args.results.is_file():
        return []
    earlier = json.loads(args.results.read_text())
    config = {**ADDED_AS_BEFORE, **earlier.get("config", {})}  # a file from before an option: what it ran with
    diff = {k: (config.get(k), getattr(args, k)) for k in SAME_EXPERIMENT if config.get(k) != getattr(args, k)}
    if diff:
        raise SystemExit(f"error: {args.results} holds runs made with other settings (theirs, this call's): {diff}; "
                         "use another --results (and --work-dir)")
    return list(earlier.get("runs", []))


def with_earlier(earlier: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` and the ``earlier`` ones they do not measure again (a call killed midway keeps the rest)."""
    done = {(r["task"], r["method"], r["seed"]) for r in runs}
    return [r for r in earlier if (r["task"], r["method"], r["seed"]) not in done] + list(runs)


def save_results(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarize(runs) if runs else {}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"config": config, "summary": summary, "runs": runs}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, args.results)
    return summary


# --------------------------------------------------------------------------- diagnosis (offline calibration)


def rtg_recursion_residual(arrays: dict[str, Any], gamma: float, r_neg: float,
                           episode_starts: np.ndarray | None = None) -> dict[str, float]:
    """Check the stored returns-to-go against the rewards the Q-targets use, independently of returns.py.

    Episodes: ``episode_starts`` (bool ``(N,)``, the dataset's: a file's demos, cut at terminals) when given, else
    the rows' continuity ``next_obs[t] == obs[t + 1]`` (flat data without demo ids). Inside an episode
    ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` must
    hold, also for all-failure episodes (``r_neg / (1 - gamma)`` is that recursion's fixed point); at an
    episode's last step ``G_T = r_T`` (termination, or truncation without bootstrap) unless the episode
    never succeeded. Returns the largest residuals and the reward values seen.
    """
    def flat(tree: Any) -> np.ndarray:
        if isinstance(tree, dict):
            return np.concatenate([np.asarray(v, np.float64).reshape(len(v), -1) for k, v in sorted(tree.items())], 1)
        return np.asarray(tree)

    obs, nobs = flat(arrays["observations"]), flat(arrays["next_observations"])
    r, d, g = (np.asarray(arrays[k], dtype=np.float64) for k in ("rewards", "dones", "mc_returns"))
    if episode_starts is not None:  # a noisy next_obs inside a demo does not end it (robopretrain.data.returns)
        cont = ~np.asarray(episode_starts, dtype=bool)[1:] & (d[:-1] == 0)
    else:
        cont = np.all(np.isclose(nobs[:-1], obs[1:], atol=1e-6), axis=1) & (d[:-1] == 0)
    inner = g[:-1] - (r[:-1] + gamma * g[1:])
    last = np.append(~cont, True)
    fail_value = r_neg / (1.0 - gamma)
    last_res = np.where(np.isclose(g, fail_value), 0.0, g - r)[last]
    return {
        "reward_values": sorted({float(x) for x in np.unique(np.round(r, 4))}),
        "max_abs_residual_inside_episodes": float(np.abs(inner[cont]).max()) if cont.any() else 0.0,
        "max_abs_residual_at_episode_ends": float(np.abs(last_res).max()),
        "episodes": int(last.sum()),
        "all_failure_value": fail_value,
    }


def soft_target_value(reward: float, gamma: float, tau: float, updates: int) -> float:
    """Value after ``updates`` soft target updates when every step pays ``reward`` and the critic fits its target.

    With the critic at its target ``r + gamma * Q_targ`` and ``Q_targ <- Q_targ + tau * (Q - Q_targ)``, the
    target moves by ``tau * (r + (gamma - 1) * Q_targ)`` per update: from 0 it reaches
    ``r / (1 - gamma) * (1 - (1 - tau * (1 - gamma)) ** updates)``, a time constant of ``1 / (tau (1 - gamma))``
    updates (20,000 for tau 5e-3, gamma 0.99).
    """
    return reward / (1.0 - gamma) * (1.0 - (1.0 - tau * (1.0 - gamma)) ** updates)


def calibration_by_outcome(agent: Any, batch: dict[str, Any], failed: np.ndarray) -> dict[str, Any]:
    """Average Q(s, a_data), Q(s, pi(s)) and return-to-go over all, successful and failed-episode transitions."""
    import torch

    with torch.no_grad():
        obs = batch["observations"]
        q_data = agent.q_values(obs, batch["actions"]).cpu().numpy()
        pi = torch.as_tensor(agent.act(obs, deterministic=True), dtype=torch.float32)
        q_pi = agent.q_values(obs, pi).cpu().numpy()
    mc = batch["mc_returns"].cpu().numpy()
    out: dict[str, Any] = {}
    for name, mask in (("all", np.ones_like(failed)), ("successful_episodes", ~failed), ("failed_episodes", failed)):
        if not mask.any():
            continue
        out[name] = {
            "fraction": float(mask.mean()),
            "q_data": float(q_data[mask].mean()),
            "q_policy": float(q_pi[mask].mean()),
            "mc_return": float(mc[mask].mean()),
            "gap_data": float((q_data - mc)[mask].mean()),
            "gap_policy": float((q_pi - mc)[mask].mean()),
        }
    return out


def diagnose(args: argparse.Namespace) -> dict[str, Any]:
    """Offline-only runs on one task and seed: how Q and the data's returns-to-go evolve with offline updates.

    For each variant of :data:`DIAGNOSE_VARIANTS` it trains with the experiment's settings and, at every
    ``--diagnose-steps``, measures Q on data and on policy actions against the returns-to-go on ALL the
    offline transitions, separately for successful and all-failure episodes, plus the training metrics of
    that step (CQL gap, Cal-QL bound rate, target Q). Writes ``--diagnose-results``.
    """
    import torch

    from robopretrain import build
    from robopretrain.data.hdf5 import read_info
    from robopretrain.data.returns import sparse_negative_reward

    torch.set_num_threads(1)
    task, seed = (args.tasks or ["OpenDoorRight"])[0], args.seeds[0]
    report: dict[str, Any] = {"task": task, "seed": seed, "batch_size": args.batch_size, "n_actions": args.n_actions,
                              "steps": args.diagnose_steps, "extra": list(args.extra), "variants": {}}
    if args.diagnose_results.exists():  # resume: keep the finished variants of the same settings (only those: the
        old = json.loads(args.diagnose_results.read_text())  # header said one batch size over variants of another)
        if all(old.get(k) == v for k, v in report.items() if k != "variants"):
            report["variants"] = old.get("variants", {})
        elif old.get("variants"):
            print(f"{args.diagnose_results}: its variants {sorted(old['variants'])} were measured with other settings "
                  f"({ {k: old.get(k) for k in report if k != 'variants' and old.get(k) != report[k]} }): measured "
                  "again", flush=True)
    for name in args.diagnose_variants:
        if name in report["variants"]:
            continue
        algo, extra = DIAGNOSE_VARIANTS[name]
        old_extra, args.extra = args.extra, list(args.extra) + list(extra)
        cfg, _ = stage_configs(args, task, algo, seed)
        args.extra = old_extra
        path = build.resolve_data_path(cfg.data, args.work_dir / "data")
        spec = build.data_spec(cfg.obs, path)
        dataset = build.load_data(path, spec, cfg.data, build.reward_settings(cfg.algo), algo=algo, act_dim=None,
                                  seed=seed, device=torch.device("cpu"))
        torch.manual_seed(seed)
        arrays = dataset.arrays()
        agent = build.new_agent(cfg, spec, read_info(path).action_dim, dataset, torch.device("cpu"))
        gamma, r_neg = float(cfg.algo.discount), sparse_negative_reward(float(cfg.algo.reward_scale),
                                                                        float(cfg.algo.reward_bias))
        if "data_check" not in report:
            report["data_check"] = {"gamma": gamma, "num_transitions": len(dataset),
                                    **rtg_recursion_residual(arrays, gamma, r_neg,
                                                             getattr(dataset, "episode_starts", None))}
        everything = dataset.get(np.arange(len(dataset)))
        failed = np.isclose(np.asarray(arrays["mc_returns"]), r_neg / (1.0 - gamma))
        rows = [{"step": 0, **calibration_by_outcome(agent, everything, failed)}]
        start, step = time.perf_counter(), 0
        for target in sorted(args.diagnose_steps):
            metrics: dict[str, float] = {}
            while step < target:
                step += 1
                metrics = agent.update(dataset.sample(args.batch_size), with_metrics=step == target)
            row = {"step": step, **calibration_by_outcome(agent, everything, failed),
                   "soft_target_model_all_failure": soft_target_value(r_neg, gamma, float(cfg.algo.tau), step),
                   "train": {k: metrics[k] for k in ("cql_gap", "q_data", "target_q", "bound_rate_cur", "alpha_prime")
                             if k in metrics}}
            rows.append(row)
            a = row["all"]
            print(f"[{time.strftime('%H:%M:%S')}] {name} step {step}: Q(data) {a['q_data']:.1f} Q(pi) {a['q_policy']:.1f} "
                  f"RTG {a['mc_return']:.1f} | success eps: Q(pi) {row['successful_episodes']['q_policy']:.1f} "
                  f"RTG {row['successful_episodes']['mc_return']:.1f} | failed eps: Q(pi) "
                  f"{row['failed_episodes']['q_policy']:.1f} RTG {row['failed_episodes']['mc_return']:.1f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        report["variants"][name] = {"algo": algo, "overrides": extra, "rows": rows}
        args.diagnose_results.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.diagnose_results.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, args.diagnose_results)
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    if args.diagnose:
        diagnose(args)
        return
    import sim_envs

    tasks = args.tasks or list(sim_envs.TARGET_TASKS)
    sys.path.append(str(Path(__file__).resolve().parent))
    from bench_utils import results_lock

    with results_lock(args.results):  # a second call on one --results is refused (each rewrote it from its copy)
        run_experiment(args, tasks)


def run_experiment(args: argparse.Namespace, tasks: list[str]) -> None:
    """The runs still to do (kept with an earlier part's), then the table and figure (``main`` holds the lock)."""
    if args.summarize_only:
        if not args.results.is_file():
            sys.exit(f"error: {args.results}: no such results file (--summarize-only reads one; give --results)")
        runs = json.loads(args.results.read_text())["runs"]
    else:
        make_data(args, tasks)
        # the slow CQL-family runs first, IQL (about 4x faster per update) last, so the two workers end together
        order = [m for m in ("calql", "cql") if m in args.methods] + [m for m in args.methods if m not in ("calql", "cql")]
        jobs = [(t, m, s, args) for m in order for s in args.seeds for t in tasks]
        earlier, runs = earlier_runs(args), []  # an earlier part's runs stay in the results and the table
        start = time.perf_counter()
        from bench_utils import pool_worker_start  # (main put the benchmarks folder on the path)

        # workers ignore Ctrl-C (the parent alone handles it) and end with this process
        with get_context("spawn").Pool(args.workers, initializer=pool_worker_start, initargs=(os.getpid(),),
                                       maxtasksperchild=1) as pool:
            for run in pool.imap_unordered(run_one, jobs):
                runs.append(run)
                save_results(args, with_earlier(earlier, runs))  # partial results survive an interrupted experiment
        print(f"all {len(runs)} runs in {time.perf_counter() - start:.0f} s", flush=True)
        runs = with_earlier(earlier, runs)
    summary = save_results(args, runs)
    plot(runs, args.figure, args.dr)
    print(markdown_table(summary))
    print(f"\nresults: {args.results}\nfigure: {args.figure}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
