"""What makes imitation (and offline RL) from pixels reach the expert's success? Stage 2 from 64 px images on clean
scripted-expert demos, one variant of the image recipe at a time; success sighted and with a black camera frame.
Protocol: ``benchmarks/protocols/pixel_recipe.md``.

    python benchmarks/pixel_recipe.py                                  # the protocol's runs (see --help for subsets)
    python benchmarks/pixel_recipe.py --variants flat_pad4 ssm_pad0 --tasks Reach --seeds 0 --jobs 2
    python benchmarks/pixel_recipe.py --summarize-only                 # table from the saved JSON
    python benchmarks/pixel_recipe.py --list                           # the variants and what each changes

Each run is ``robopretrain.train`` (stage 2's own entry point, as a subprocess with one torch thread) on one data file
(one task, or several tasks with a task one-hot), ``obs.rgb`` = the variant's cameras and ``obs.low_dim=[proprio]``
(no privileged state), checkpoints at every budget. Each checkpoint is then evaluated in a subprocess with
:func:`robopretrain.evaluation.evaluate` on the protocol's fixed episodes, sighted and with ``blind="black"`` (every
camera frame black: what is left is proprioception and the task id). Training speed is measured between the first and
the last checkpoint (their file times), so start-up and data loading are not in it. A rerun skips finished runs and
evaluations. Output: ``benchmarks/results/pixel_recipe.json`` (every run and evaluation) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))  # bench_utils; appended so benchmarks/ shadows no package
from bench_utils import cpu_model, ended_with_this, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pixel_recipe.json"
AGENTVIEW, WRIST = "agentview_image", "eye_in_hand_image"

# small_conv with spatial-softmax keypoints: convs at strides 2, 2, 1, 1 (16 x 16 maps at 64 px), 32 keypoints
SSM = {"pool": "spatial_softmax", "strides": [2, 2, 1, 1], "num_keypoints": 32}
# encoder token -> make_encoder("small_conv", **kwargs)
ENCODERS: dict[str, dict[str, Any]] = {
    "flat": {},  # today's default: 4 convs (strides 2, 2, 2, 1), flatten -> Dense-LayerNorm-tanh 256
    "flatcoord": {"coord_channels": True},
    "ssm": SSM,  # spatial softmax (32 keypoints on 16 x 16 maps) -> Dense-LayerNorm-tanh 256
    "ssm8": {**SSM, "strides": [2, 2, 2, 1]},  # keypoints on 8 x 8 maps (the flat trunk's cost)
    "ssmcoord": {**SSM, "coord_channels": True},
    "ssmlin": {**SSM, "head": "linear", "out_dim": 64},  # keypoints -> one Dense layer (robomimic's VisualCore)
    "ssmraw": {**SSM, "head": "none"},  # the 64 keypoint coordinates straight into the policy MLP
}
BASE = {"algo": "bc", "pad": 4, "kwargs": {}, "cameras": [AGENTVIEW], "image_size": 64, "batch": 64, "demos": 50,
        "encoder": "small_conv", "algo_overrides": {}}
VARIANT_GRAMMAR = """variant = <encoder>[_pad<N>][_wrist][_<S>px][_b<batch>][_<N>demos][_lr<x>][@<algo>]
  encoder: """ + ", ".join(ENCODERS) + """ (see ENCODERS)
  pad<N>: random shift of N px (default 4); wrist: agentview + eye_in_hand cameras (one shared encoder);
  <S>px: image size (default 64); b<batch>: batch size (default 64); <N>demos: clean demos per task (default 50);
  lr<x>: policy and encoder learning rate (default 3e-4); @<algo>: bc (default), calql, cql, iql
  e.g. flat_pad4 (today's image default), ssm_pad4_wrist, ssm_pad4_200demos@calql"""


def variant(name: str) -> dict[str, Any]:
    """The full settings of a variant name (:data:`VARIANT_GRAMMAR`)."""
    base_name, _, algo = name.partition("@")
    enc, *tokens = base_name.split("_")
    if enc not in ENCODERS:
        raise SystemExit(f"variant {name!r}: unknown encoder {enc!r}; expected one of {list(ENCODERS)}")
    v = {**BASE, "kwargs": dict(ENCODERS[enc]), "algo_overrides": {}}
    for tok in tokens:
        if tok.startswith("pad") and tok[3:].isdigit():
            v["pad"] = int(tok[3:])
        elif tok == "wrist":
            v["cameras"] = [AGENTVIEW, WRIST]
        elif tok.endswith("px") and tok[:-2].isdigit():
            v["image_size"] = int(tok[:-2])
        elif tok.startswith("b") and tok[1:].isdigit():
            v["batch"] = int(tok[1:])
        elif tok.endswith("demos") and tok[:-5].isdigit():
            v["demos"] = int(tok[:-5])
        elif tok.startswith("lr"):
            v["lr"] = float(tok[2:])
        else:
            raise SystemExit(f"variant {name!r}: cannot read {tok!r}\n{VARIANT_GRAMMAR}")
    if algo:
        v["algo"] = algo
    return v


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--tasks", nargs="+", default=["Reach"],
                   help="one run per entry; 'A+B+C' trains one multi-task agent on A, B and C (task one-hot)")
    p.add_argument("--variants", nargs="+", default=["flat_pad4", "ssm_pad4"], help="see --list")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--updates", nargs="+", type=int, default=[1000, 2000, 4000], help="budgets evaluated")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task, checkpoint and setting")
    p.add_argument("--blind", nargs="*", default=["black"], help="blind settings evaluated next to sighted")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/pixel_recipe"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--note", default="", help="stored with the runs of this call (e.g. 'exploratory')")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--time-updates", action="store_true",
                   help="CPU ms per update of each --variants (one thread, synthetic batch), saved under 'timing'")
    p.add_argument("--eval-job", nargs=4, metavar=("CKPT", "TASK", "EPISODES", "BLIND"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
def data_path(tasks: list[str], demos: int, image_size: int, work: Path) -> Path:
    return work / "data" / f"{'+'.join(tasks)}_clean{demos}_{image_size}px_wrist.hdf5"


def collect_data(tasks: list[str], demos: int, image_size: int, work: Path) -> Path:
    """Clean expert demos (no noise) of ``tasks``, agentview + wrist camera at ``image_size``, collect seed 0."""
    from omegaconf import OmegaConf

    from sim_envs.collect import collect

    path = data_path(tasks, demos, image_size, work)
    if path.is_file():
        return path
    cfg = OmegaConf.load(ROOT / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": list(tasks), "episodes_per_task": demos, "render_images": True, "eye_in_hand": True,
                    "image_size": image_size, "output": str(path), "overwrite": True, "seed": 0,
                    "kinds": {"clean": {"fraction": 1.0, "noise": 0.0, "stop": None},
                              "noisy": {"fraction": 0.0, "noise": 0.3, "stop": None},
                              "failing": {"fraction": 0.0, "noise": 1.0, "stop": [0.1, 0.5]}}})
    return Path(collect(cfg, progress=False))


# ----------------------------------------------------------------------------- training
def train_command(v: dict[str, Any], data: Path, out: Path, seed: int, steps: int, every: int) -> list[str]:
    cams = ",".join(v["cameras"])
    cmd = [sys.executable, "-m", "robopretrain.train", f"algo={v['algo']}", f"data.path={data}", f"seed={seed}",
           f"output_dir={out}", f"hydra.run.dir={out}/hydra", "num_threads=1", f"train.steps={steps}",
           f"obs.rgb=[{cams}]", "obs.low_dim=[proprio]", f"encoder.name={v['encoder']}",
           f"encoder.augment_pad={v['pad']}", f"algo.batch_size={v['batch']}", "train.eval_targets=[]",
           f"train.checkpoint_every={every}", "train.keep_checkpoints=100", "train.progress=false",
           "train.tensorboard=false", "train.log_every=500"]
    for key, val in v["kwargs"].items():
        cmd.append(f"+encoder.kwargs.{key}={json.dumps(val)}")
    for key, val in v["algo_overrides"].items():
        cmd.append(f"algo.{key}={json.dumps(val)}")
    if "lr" in v:
        lr_key = "lr" if v["algo"] == "bc" else "policy_lr"
        cmd += [f"algo.{lr_key}={v['lr']}", f"encoder.lr={v['lr']}"]
    return cmd


def train_run(cmd: list[str], out: Path, steps: int) -> float:
    """Stage 2 as a subprocess (resumes when killed); returns its wall time (0 when it had already finished)."""
    if (out / "checkpoints" / f"ckpt_{steps:08d}").is_dir():
        return 0.0
    start = time.perf_counter()
    env = {**ended_with_this(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def updates_per_second(out: Path, budgets: list[int]) -> float | None:
    """Updates per second between the last two budgets' checkpoints (their file times): excludes start-up, data
    loading and evaluation, and stays within one invocation when a run was extended by a later call."""
    marks = sorted(budgets)[-2:]
    if len(marks) < 2:
        return None
    dirs = [out / "checkpoints" / f"ckpt_{u:08d}" for u in marks]
    if not all(d.is_dir() for d in dirs):
        return None
    t0, t1 = (max(p.stat().st_mtime for p in d.iterdir()) for d in dirs)
    return (marks[1] - marks[0]) / (t1 - t0) if t1 > t0 else None


# ----------------------------------------------------------------------------- evaluation
def evaluate_job(ckpt: str, task: str, episodes: int, blind: str) -> dict[str, Any]:
    """Success rate, return and length of the deterministic policy on ``task`` (in this process, one torch thread)."""
    import torch

    from robopretrain.checkpoint import load_agent
    from robopretrain.envs.target import Target
    from robopretrain.evaluation import EVAL_SEED, evaluate

    torch.set_num_threads(1)
    agent, _ = load_agent(Path(ckpt))
    target = Target(task)
    start = time.perf_counter()
    res = evaluate(agent, target, episodes, eval_seed=EVAL_SEED, blind=None if blind == "none" else blind)
    return {**res, "successes": int(round(res["success"] * episodes)), "episodes": episodes,
            "seconds": time.perf_counter() - start}


def evaluate_checkpoint(ckpt: Path, task: str, episodes: int, blind: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--eval-job", str(ckpt), task, str(episodes), blind]
    env = {**ended_with_this(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- cost
def time_updates(name: str, warmup: int = 3, timed: int = 20, num_tasks: int = 0) -> dict[str, Any]:
    """CPU time per :meth:`Agent.update` of variant ``name`` on a synthetic batch of its shape (one torch thread).

    ``time.process_time`` counts this process's CPU time only, so the figure moves little with the load of a shared
    machine (the wall-clock rate beside it does).
    """
    import torch

    from robopretrain.agent import Agent, EncoderSettings
    from robopretrain.data.spec import ObsSpec

    torch.set_num_threads(1)
    v = variant(name)
    size, bs = v["image_size"], v["batch"]
    spec = ObsSpec(low_dim=(("proprio", 7),), rgb=tuple((c, (size, size, 3)) for c in v["cameras"]),
                   num_tasks=num_tasks)
    agent = Agent(spec, 4, v["algo"], {"batch_size": bs, **v["algo_overrides"]},
                  EncoderSettings(name=v["encoder"], kwargs=dict(v["kwargs"]), augment_pad=v["pad"]), seed=0)
    gen = torch.Generator().manual_seed(0)

    def obs() -> dict[str, torch.Tensor]:
        out = {c: torch.randint(0, 256, (bs, size, size, 3), dtype=torch.uint8, generator=gen) for c in v["cameras"]}
        out["proprio"] = torch.randn(bs, 7, generator=gen)
        if num_tasks:
            out["task_id"] = torch.randint(0, num_tasks, (bs,), generator=gen)
        return out

    batch = {"observations": obs(), "next_observations": obs(), "actions": torch.rand(bs, 4, generator=gen) * 2 - 1,
             "rewards": torch.zeros(bs), "dones": torch.zeros(bs), "mc_returns": torch.zeros(bs)}
    for _ in range(warmup):
        agent.update(batch, with_metrics=False)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(timed):
        agent.update(batch, with_metrics=False)
    cpu, wall = (time.process_time() - cpu) / timed, (time.perf_counter() - wall) / timed
    return {"cpu_ms_per_update": 1000 * cpu, "updates_per_cpu_s": 1 / cpu, "wall_updates_per_s": 1 / wall,
            "load_average_1min": os.getloadavg()[0], "timed_updates": timed}


# ----------------------------------------------------------------------------- one run
def run_key(tasks: str, name: str, seed: int) -> str:
    return f"{tasks}/{name}/seed{seed}"


def one(args: argparse.Namespace, results: dict[str, Any], lock: threading.Lock, tasks: str, name: str,
        seed: int) -> None:
    v = variant(name)
    task_list = tasks.split("+")
    key = run_key(tasks, name, seed)
    settings = ["none", *args.blind]
    with lock:
        entry = results.setdefault(key, {"tasks": task_list, "variant": name, "settings": v, "seed": seed,
                                         "eval": {}, "note": args.note})
        if args.note and args.note not in entry["note"]:  # e.g. an exploratory run reused by the protocol
            entry["note"] = f"{entry['note']}; {args.note}" if entry["note"] else args.note
    todo = [(u, t, s) for u in args.updates for t in task_list for s in settings
            if s not in entry["eval"].get(str(u), {}).get(t, {})]
    if not todo:
        return
    data = collect_data(task_list, v["demos"], v["image_size"], args.work_dir)
    out = args.work_dir / "runs" / tasks / name / f"seed{seed}"
    steps = max(args.updates)
    every = min(args.updates) if all(u % min(args.updates) == 0 for u in args.updates) else 500
    cmd = train_command(v, data, out, seed, steps, every)
    seconds = train_run(cmd, out, steps)
    with lock:
        if seconds:
            entry["train_seconds"] = seconds
            entry["load_average_1min_after"] = os.getloadavg()[0]
            entry["command"] = " ".join(cmd[1:])
        ups = updates_per_second(out, args.updates)
        if ups:
            entry["updates_per_s"] = ups
    for u, t, s in todo:
        res = evaluate_checkpoint(out / "checkpoints" / f"ckpt_{u:08d}", t, args.episodes, s)
        with lock:
            entry["eval"].setdefault(str(u), {}).setdefault(t, {})[s] = res
    line = []
    for u in args.updates:
        for t in task_list:
            e = entry["eval"][str(u)][t]
            line.append(f"{u} {t}: " + " / ".join(f"{e[s]['success']:.2f}" for s in settings))
    print(f"{key} (sighted / {' / '.join(args.blind)}): " + "; ".join(line), flush=True)


# ----------------------------------------------------------------------------- summary
def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str, int], list[tuple[int, dict[str, Any]]]] = {}
    for entry in results.values():
        tasks = "+".join(entry["tasks"])
        for u, per_task in entry["eval"].items():
            for task, per_setting in per_task.items():
                rows.setdefault((tasks, entry["variant"], task, int(u)), []).append((entry["seed"], per_setting))
    out = []
    for (tasks, name, task, u), per in sorted(rows.items()):
        per.sort(key=lambda x: x[0])
        row = {"data": tasks, "variant": name, "task": task, "updates": u, "seeds": [s for s, _ in per],
               "episodes": per[0][1]["none"]["episodes"]}
        for setting in sorted({k for _, p in per for k in p}):
            vals = [float(p[setting]["success"]) for _, p in per if setting in p]
            row[setting] = {"mean": float(np.mean(vals)), "per_seed": vals}
        speeds = [results[run_key(tasks, name, s)].get("updates_per_s") for s, _ in per]
        speeds = [x for x in speeds if x]
        row["updates_per_s"] = float(np.mean(speeds)) if speeds else None
        secs = [results[run_key(tasks, name, s)].get("train_seconds") for s, _ in per]
        secs = [x for x in secs if x]
        row["train_seconds"] = float(np.mean(secs)) if secs else None
        out.append(row)
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| data | task | variant | updates | seeds | sighted (per seed) | black frame (per seed) | updates/s | "
             "train wall s |", "|---|---|---|---:|---|---|---|---:|---:|"]

    def cell(r: dict[str, Any], k: str) -> str:
        if k not in r:
            return "-"
        return f"{r[k]['mean']:.2f} ({' / '.join(f'{x:.2f}' for x in r[k]['per_seed'])})"

    for r in summary:
        ups = f"{r['updates_per_s']:.1f}" if r["updates_per_s"] else "-"
        secs = f"{r['train_seconds']:.0f}" if r["train_seconds"] else "-"
        lines.append(f"| {r['data']} | {r['task']} | {r['variant']} | {r['updates']} | "
                     f"{','.join(map(str, r['seeds']))} | {cell(r, 'none')} | {cell(r, 'black')} | {ups} | {secs} |")
    return "\n".join(lines)


def save(args: argparse.Namespace, results: dict[str, Any], timing: dict[str, Any] | None = None) -> dict[str, Any]:
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    timing = timing if timing is not None else old.get("timing", {})
    out = {"protocol": "benchmarks/protocols/pixel_recipe.md", "cpu": cpu_model(),
           "commands": sorted(set(old.get("commands", [])) | {" ".join(sys.argv)}),
           "variant_grammar": VARIANT_GRAMMAR, "encoders": ENCODERS, "runs": results,
           "summary": summarize(results), "timing": timing}
    write_json_atomic(args.out, out)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    if args.eval_job:
        from robopretrain.workers import end_with_launcher

        end_with_launcher()  # ends with the benchmark that started it
        ckpt, task, episodes, blind = args.eval_job
        print(json.dumps(evaluate_job(ckpt, task, int(episodes), blind)))
        return
    if args.list:
        print(VARIANT_GRAMMAR)
        for k, kw in ENCODERS.items():
            print(f"  {k:10s} small_conv {kw}")
        return
    results: dict[str, Any] = json.loads(args.out.read_text()).get("runs", {}) if args.out.is_file() else {}
    lock = threading.Lock()
    if args.time_updates:
        timing = json.loads(args.out.read_text()).get("timing", {}) if args.out.is_file() else {}
        for name in args.variants:
            timing[name] = time_updates(name)
            print(f"{name}: {timing[name]['cpu_ms_per_update']:.0f} CPU ms/update "
                  f"({timing[name]['updates_per_cpu_s']:.1f} updates per CPU-second)", flush=True)
        save(args, results, timing)
        return
    if not args.summarize_only:
        for tasks in args.tasks:  # data first, once per file
            for name in args.variants:
                v = variant(name)
                collect_data(tasks.split("+"), v["demos"], v["image_size"], args.work_dir)
        jobs = [(t, n, s) for t in args.tasks for n in args.variants for s in args.seeds]

        def work(job: tuple[str, str, int]) -> None:
            try:
                one(args, results, lock, *job)
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others; it is reported
                print(f"{run_key(*job)} FAILED: {exc}", flush=True)
                with lock:
                    results.setdefault(run_key(*job), {"tasks": job[0].split("+"), "variant": job[1], "seed": job[2],
                                                       "eval": {}})["error"] = str(exc)[-2000:]
            with lock:
                save(args, results)

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(work, jobs))
    out = save(args, results)
    print(table(out["summary"]))


if __name__ == "__main__":
    main()
