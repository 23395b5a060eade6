"""Claim 5 of issue 12 (transfer lecture, EPOpt): does domain randomization give robustness to held-out shifts, and
does randomizing some physics factors give robustness to one left out?

    python benchmarks/claims.py robustness --jobs 2               # every run of the protocol (resumable)
    python benchmarks/claims.py robustness --seeds 0 --variants none dr_no_friction
    python benchmarks/claims.py robustness --summarize-only       # table and plot from the saved JSON

Protocol: ``benchmarks/protocols/claims_robustness.md``. The work folder is the transfer benchmark's
(``benchmarks/transfer.py``; default ``outputs/transfer``): per seed the same base stages (``<work>/seed<S>/base``,
made here with the transfer benchmark's own functions when absent) and the same ``dr`` stage-3 run
(``<work>/seed<S>/dr``), which this claim's ``dr`` variant is. Each other variant's stage 3 goes to
``<work>/seed<S>/<variant>/stage3`` and every variant's factor evaluation to ``<work>/seed<S>/<variant>/eval_factors``.
Every (seed, variant) runs in a fresh worker process (``--jobs`` at a time, one torch thread each); the base stages of
each seed run first. A finished stage 3 or evaluation is reused on a rerun.

Output: ``benchmarks/results/claims_robustness.json`` and ``docs/claims_robustness.png``; markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from multiprocessing.pool import RemoteTraceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages before this folder's same-named scripts (video_pretrain.py)
sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils, transfer; appended so benchmarks/ shadows nothing
from bench_utils import cpu_model, git_commit, save_figure, seeds_then_episodes_ci, write_json_atomic  # noqa: E402
from claims_metrics import difference_ci, seed_level_verdict, verdict, welch_ci  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "claims_robustness.json"
PLOT = ROOT / "docs" / "claims_robustness.png"
PROTOCOL = "benchmarks/protocols/claims_robustness.md"
PROTOCOL_SEEDS = 3  # seeds per variant (benchmarks/protocols/claims_robustness.md): verdicts wait for all of them
PHYSICS = ("friction", "mass", "damping", "gripper_force")
VISUAL = ("lighting", "colors", "textures", "camera")
FACTORS = (*PHYSICS, "lighting", "colors_textures", "camera")  # robopretrain.evaluate's factor names
LEVELS = ("train", "eval_easy", "eval_hard")
BASE_OVERRIDES = ["num_threads=1", "progress=false"]  # the transfer benchmark's runs (its protocol, amendment 1)


def _factors_without(left_out: str) -> str:
    return "stage3.randomization.factors=[" + ",".join(f for f in (*PHYSICS, *VISUAL) if f != left_out) + "]"


# variant -> pipeline overrides of its stage 3 (``dr``: none, the preset's randomization)
VARIANTS: dict[str, list[str]] = {
    "dr": [],
    "none": ["stage3.randomization.level=none"],
    **{f"dr_no_{f}": [_factors_without(f)] for f in PHYSICS},
}


def _transfer_module() -> Any:
    import transfer  # benchmarks/transfer.py: the base stages, the stage-3 run and its config

    return transfer


def transfer_args(work: Path, episodes: int, extra: Sequence[str] = ()) -> argparse.Namespace:
    """The transfer benchmark's arguments for the testbed preset, PressLitButton, this work folder."""
    return _transfer_module().parse_args(["--work-dir", str(work), "--episodes", str(episodes), "--workers", "0",
                                          "--overrides", *BASE_OVERRIDES, *extra])


def variant_config(work: Path, seed: int, variant: str, episodes: int) -> tuple[argparse.Namespace, Any]:
    """The pipeline config of ``variant`` at ``seed`` (the transfer benchmark's with the variant's overrides)."""
    args = transfer_args(work, episodes, VARIANTS[variant])
    return args, _transfer_module().pipeline_config(args, seed)


def run_base(work: Path, seed: int, episodes: int) -> str:
    """The seed's data, stage-1, stage-2 and adaptation stages (skipped when done)."""
    args, cfg = variant_config(work, seed, "dr", episodes)
    _transfer_module().run_base(cfg, args.work_dir / f"seed{seed}" / "base")
    return f"seed{seed}"


def evaluate_factors(checkpoint: Path, out: Path, episodes: int, target: dict[str, Any] | None = None,
                     device: str = "cpu") -> dict[str, Any]:
    """``robopretrain.evaluate`` of ``checkpoint`` (a checkpoint or run folder) over :data:`FACTORS` x :data:`LEVELS`
    and nominal, written to ``out``. ``target``: a target mapping, or None for the one the checkpoint records. An
    evaluation already in ``out`` is reused only when it is of the checkpoint's current step, with these episodes and
    reset seeds, over every condition; otherwise it is made again (and replaced)."""
    from robopretrain.build import compose
    from robopretrain.evaluate import evaluate_robustness, open_checkpoint

    ev = compose("evaluate", None, {
        "checkpoint": str(checkpoint), **({"target": target} if target is not None else {}), "episodes": episodes,
        "workers": 0, "output_dir": str(out), "select": list(FACTORS), "video": {"enabled": False}, "plot": False,
        "progress": False, "device": device})
    path = out / "eval_info.json"
    if path.is_file():
        info = json.loads(path.read_text())
        done = {(e.get("factor"), e.get("level")) for e in info.get("episodes", [])}
        wanted = {("nominal", "none"), *((f, lv) for f in FACTORS for lv in LEVELS)}
        if (info.get("episodes_per_condition") == episodes and info.get("eval_seed") == ev.eval_seed
                and info.get("step") == open_checkpoint(checkpoint).step and wanted <= done):
            return info
    return evaluate_robustness(ev)


def condition_outcomes(info: dict[str, Any]) -> dict[str, list[float]]:
    """Per condition (``nominal`` or ``<factor>/<level>``): the 0/1 success of each episode."""
    out: dict[str, list[float]] = {}
    for ep in info["episodes"]:
        key = "nominal" if ep["factor"] == "nominal" else f"{ep['factor']}/{ep['level']}"
        out.setdefault(key, []).append(float(ep["success"]))
    return out


def run_variant(work: Path, seed: int, variant: str, episodes: int) -> dict[str, Any]:
    """One (seed, variant): its stage 3 (the transfer benchmark's ``dr`` folder for ``dr``) and evaluation."""
    t = _transfer_module()
    args, cfg = variant_config(work, seed, variant, episodes)
    base = args.work_dir / f"seed{seed}" / "base"
    folder = args.work_dir / f"seed{seed}" / variant
    stage3 = t.run_stage3(args, cfg, base, "dr", folder)  # method "dr": no gap, no transfer option
    from robopretrain import pipeline as P

    info = evaluate_factors(folder / "stage3", folder / "eval_factors", episodes, P.targets_of(cfg)[0].to_dict(),
                            str(cfg.device))
    return {"seed": seed, "variant": variant, "overrides": VARIANTS[variant], "final": stage3["final"],
            "seconds": stage3["seconds"], "outcomes": condition_outcomes(info)}


def _child(fn: Any, task: tuple, conn: Any, parent: int) -> None:
    """A worker's body: ``fn(*task)`` with Ctrl-C ignored (the parent alone handles it) and SIGTERM raising
    ``SystemExit`` (so pools ``fn`` started shut their own workers down when the parent stops this one); its result,
    or its exception and traceback, sent back through ``conn``. An exception the parent could not unpickle (one whose
    constructor takes other arguments than its message, e.g. ``NonFiniteLossError``) goes back as a RuntimeError
    with its text. The worker ends within a second of process ``parent`` (the benchmark, its pid as it knew it:
    read here, it is the adopting process's once the benchmark died while this one started) ending."""
    from robopretrain.workers import exit_with

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    exit_with(parent)  # a benchmark killed outright left its workers training on (their folders locked)
    try:
        conn.send((True, fn(*task)))
    except SystemExit:  # stopped by the parent (SIGTERM): nobody is listening
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent, which re-raises it
        text = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - does not survive the pipe: its text does
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        try:
            conn.send((False, (exc, text)))
        except Exception:  # noqa: BLE001
            conn.send((False, (RuntimeError(f"{type(exc).__name__}: {exc}"), text)))
    finally:
        conn.close()


class _Workers:
    """The running worker processes of one :func:`_pooled` call and whether it is stopping: a process starts only
    while not stopping (checked under the lock that :meth:`stop` takes), so none starts after a failure."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set = set()
        self.stopping = False

    def start(self, proc: Any) -> bool:
        with self.lock:
            if self.stopping:
                return False
            proc.start()
            self.live.add(proc)
            return True

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in list(self.live):
                proc.terminate()


LINGER_S = 120  # how long a worker may take to exit after sending its answer before it is terminated


class _NotStarted(Exception):
    """A task skipped, or its process terminated, because its :func:`_pooled` call was stopping (the failure that
    stopped it is the one to report)."""


def _in_fresh_process(fn: Any, task: tuple, workers: _Workers) -> Any:
    """``fn(*task)`` in a fresh spawned process that is not a daemon, so ``fn`` may start pools of its own (data
    collection does); its exception is re-raised here, the worker's traceback as its cause, after telling
    ``workers`` to stop (before this thread can take another task). Raises :class:`_NotStarted` when ``workers`` is
    already stopping."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, task, send, os.getpid()))
    if not workers.start(proc):
        receive.close()
        send.close()
        raise _NotStarted
    send.close()
    ok, value = None, None
    try:
        ok, value = receive.recv()
    except EOFError:
        pass
    finally:
        receive.close()
        stopped_before = workers.stopping
        if not ok:  # failed or died: nothing starts from here on, while this thread waits for its child to exit
            workers.stop()
        proc.join(LINGER_S)
        if proc.is_alive():  # a child that does not exit after its answer (a stray non-daemon thread)
            proc.terminate()
            proc.join()
        with workers.lock:
            workers.live.discard(proc)
    if ok is None:
        if stopped_before:  # terminated by another task's failure
            raise _NotStarted
        raise RuntimeError(f"the worker running {getattr(fn, '__name__', fn)}{task} died (exit code {proc.exitcode})")
    if not ok:
        exc, text = value
        raise exc from RemoteTraceback(text)
    return value


def _pooled(fn: Any, tasks: Sequence[tuple], jobs: int) -> Iterator[Any]:
    """``fn(*task)`` for each task, yielded as each finishes, each in a fresh spawned process (``jobs`` at a time;
    stage 3 sets torch's global seed and thread count, so runs may not share a process); in this process when ``jobs``
    <= 1. Workers ignore Ctrl-C; on Ctrl-C or a failure the parent stops the running ones (SIGTERM: their own pools
    shut down) and the rest never start."""
    if jobs <= 1:
        yield from (fn(*t) for t in tasks)
        return
    workers = _Workers()
    threads = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [threads.submit(_in_fresh_process, fn, t, workers) for t in tasks]
        for done in as_completed(futures):
            if not (done.cancelled() or isinstance(done.exception(), _NotStarted)):
                yield done.result()
    finally:
        workers.stop()
        threads.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- summary


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success per (variant, condition) over seeds; claim 5a (``dr - none`` per held-out condition) and 5b
    (``dr_no_<f> - none`` and ``dr - dr_no_<f>`` at f's ``eval_hard``)."""
    by: dict[str, dict[int, dict[str, list[float]]]] = {}
    for r in runs:
        by.setdefault(r["variant"], {})[int(r["seed"])] = r["outcomes"]
    success: dict[str, dict[str, Any]] = {}
    for variant, seeds in by.items():
        success[variant] = {}
        for cond in dict.fromkeys(c for o in seeds.values() for c in o):
            per_seed = [seeds[s][cond] for s in sorted(seeds) if cond in seeds[s]]
            lo, hi = seeds_then_episodes_ci(per_seed)
            success[variant][cond] = {"mean": float(np.mean([np.mean(x) for x in per_seed])), "ci": [lo, hi],
                                      "per_seed": [float(np.mean(x)) for x in per_seed],
                                      "seeds": [s for s in sorted(seeds) if cond in seeds[s]]}
        nominal = success[variant].get("nominal")
        for cond, row in success[variant].items():  # each variant's drop from its own nominal success
            if nominal is not None and cond != "nominal":
                row["drop_vs_nominal"] = nominal["mean"] - row["mean"]

    def diff(a: str, b: str, cond: str) -> dict[str, Any] | None:
        xa = [o[cond] for _, o in sorted(by.get(a, {}).items()) if cond in o]
        xb = [o[cond] for _, o in sorted(by.get(b, {}).items()) if cond in o]
        if not xa or not xb:
            return None
        d, lo, hi = difference_ci(xa, xb)
        out = {"difference": d, "ci": [lo, hi], "verdict": verdict(lo, hi), "seeds": [len(xa), len(xb)]}
        if min(len(xa), len(xb)) >= 2:  # protocol amendment 1: Welch's t on seed means too; a verdict needs both
            _, wlo, whi, p = welch_ci(xa, xb)
            out.update(welch_ci=[wlo, whi], welch_p=p, verdict=seed_level_verdict((lo, hi), (wlo, whi)))
        if min(len(xa), len(xb)) < PROTOCOL_SEEDS:  # a verdict waits for every seed of both sides
            out["verdict"] = f"partial ({min(len(xa), len(xb))} of {PROTOCOL_SEEDS} seeds)"
        return out

    claim_a = {f"{f}/{lv}": diff("dr", "none", f"{f}/{lv}") for f in FACTORS for lv in ("eval_easy", "eval_hard")}
    claim_b = {f: {"dr_no_f - none": diff(f"dr_no_{f}", "none", f"{f}/eval_hard"),
                   "dr - dr_no_f": diff("dr", f"dr_no_{f}", f"{f}/eval_hard")} for f in PHYSICS}
    return {"success": success, "claim_5a": {k: v for k, v in claim_a.items() if v},
            "claim_5b": {f: {k: v for k, v in d.items() if v} for f, d in claim_b.items() if any(d.values())}}


def table(summary: dict[str, Any]) -> str:
    variants = [v for v in VARIANTS if v in summary["success"]]
    conds = ["nominal", *[f"{f}/{lv}" for f in FACTORS for lv in LEVELS]]
    conds = [c for c in conds if any(c in summary["success"][v] for v in variants)]
    lines = ["| condition | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for c in conds:
        cells = []
        for v in variants:
            s = summary["success"][v].get(c)
            cells.append(f"{s['mean']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]" if s else "")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    fmt = lambda d: f"{d['difference']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] {d['verdict']}"  # noqa: E731
    if summary["claim_5a"]:
        lines += ["", "Claim 5a: dr - none on held-out ranges", "", "| condition | dr - none |", "|---|---|"]
        lines += [f"| {c} | {fmt(d)} |" for c, d in summary["claim_5a"].items()]
    if summary["claim_5b"]:
        lines += ["", "Claim 5b: one physics factor left out, at its eval_hard range", "",
                  "| factor f | dr_no_f - none | dr - dr_no_f |", "|---|---|---|"]
        for f, d in summary["claim_5b"].items():
            lines.append(f"| {f} | {fmt(d['dr_no_f - none']) if 'dr_no_f - none' in d else ''} | "
                         f"{fmt(d['dr - dr_no_f']) if 'dr - dr_no_f' in d else ''} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path | None:
    variants = [v for v in VARIANTS if v in summary["success"]]
    if not variants:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FACTORS), figsize=(2.6 * len(FACTORS), 3.4), sharey=True)
    width = 0.8 / len(variants)
    for ax, f in zip(axes, FACTORS):
        for i, v in enumerate(variants):
            rows = [summary["success"][v].get("nominal" if lv == "nominal" else f"{f}/{lv}")
                    for lv in ("nominal", *LEVELS)]
            y = [r["mean"] if r else np.nan for r in rows]
            err = np.array([[r["mean"] - r["ci"][0], r["ci"][1] - r["mean"]] if r else [0, 0] for r in rows]).T
            ax.bar(np.arange(4) + i * width, y, width, yerr=err, capsize=1.5, label=v)
        ax.set_xticks(np.arange(4) + width * (len(variants) - 1) / 2, ["nom.", "train", "easy", "hard"], fontsize=7)
        ax.set_title(f, fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("success (mean over seeds, 95% CI)")
    axes[-1].legend(fontsize=6)
    fig.suptitle("claim 5: stage-3 randomization vs none, and one physics factor left out (PressLitButton)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="claims.py robustness", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per condition")
    p.add_argument("--jobs", type=int, default=2, help="(seed, variant) runs at a time, each its own process")
    p.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "transfer",
                   help="the transfer benchmark's work folder (shared base stages and dr runs)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--plot", type=Path, default=PLOT)
    p.add_argument("--summarize-only", action="store_true")
    return p.parse_args(argv)


def result(runs: dict[tuple[int, str], dict[str, Any]], episodes: int) -> dict[str, Any]:
    ordered = [runs[k] for k in sorted(runs, key=lambda k: (k[0], list(VARIANTS).index(k[1])))]
    return {"benchmark": "claims robustness (claim 5)", "protocol": PROTOCOL, "commit": git_commit(ROOT),
            "cpu": cpu_model(), "episodes": episodes, "summary": summarize(ordered), "runs": ordered}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    stored = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    if stored["runs"] and stored.get("episodes") != args.episodes:
        raise SystemExit(f"{args.out} holds runs evaluated on {stored.get('episodes')} episodes per condition, not "
                         f"{args.episodes}; use another --out")
    runs = {(int(r["seed"]), r["variant"]): r for r in stored["runs"]}  # measured earlier: kept, not run again
    if not args.summarize_only:
        work = args.work_dir.resolve()
        todo = [(s, v) for s in args.seeds for v in args.variants if (s, v) not in runs]
        list(_pooled(run_base, [(work, s, args.episodes) for s in dict.fromkeys(s for s, _ in todo)], args.jobs))
        for r in _pooled(run_variant, [(work, s, v, args.episodes) for s, v in todo], args.jobs):
            runs[(r["seed"], r["variant"])] = r
            write_json_atomic(args.out, result(runs, args.episodes))  # after every run: a stop keeps what finished
            print(f"[claims robustness] seed {r['seed']} {r['variant']}: nominal "
                  f"{np.mean(r['outcomes']['nominal']):.2f}", flush=True)
    out = result(runs, args.episodes)
    if not args.summarize_only:
        write_json_atomic(args.out, out)
    summary = out["summary"]
    print(table(summary))
    figure = plot(summary, args.plot)
    print(f"results: {args.out}" + (f"; figure: {figure}" if figure else ""))
    return out


if __name__ == "__main__":  # run by itself it did nothing and exited 0
    raise SystemExit("error: claims_robustness.py is claims.py's 'robustness' sub-command: "
                     "run python benchmarks/claims.py robustness (--help for its options)")
