"""Benchmark stage 1 (V-PTR): ICVF vs VIP vs TCN vs random init, pretrained on human-hand video only,
diagnosed on robot trajectories of the target tasks the encoders never saw.

    python benchmarks/video_pretrain.py                      # CPU-sized default (~15 min on 2 idle cores)
    python benchmarks/video_pretrain.py --heads-only-steps 30000   # what the README quotes (+ ~12 min)
    python benchmarks/video_pretrain.py --icvf-budgets 6000 9000 12000   # + ICVF trained longer (~20 min more)
    python benchmarks/video_pretrain.py --steps 20000 --batch-size 64 --clips 450 --device cuda --work /data/vptr
    python benchmarks/video_pretrain.py --only tcn           # re-measure the TCN rows only, keep the others
    python benchmarks/video_pretrain.py --objectives icvf --train-overrides objective.options.expectile=0.7 \
        --work outputs/vp_expectile07 --json outputs/vp_expectile07.json   # one knob changed, ICVF (+ pixels) only

1. collects human-hand videos of the 9 pretraining tasks (``sim_envs.collect_videos``: other embodiment,
   other camera viewpoints, randomized lighting/colours/textures) and clean robot demonstrations of the two
   target tasks (``sim_envs.collect tasks=target``, agentview camera, no randomization);
2. trains one encoder per objective on the hand videos with the same budget (steps x batch size, same
   encoder, augmentation, optimizer), via ``python -m video_pretrain.train``; ``none`` saves the random init;
3. runs ``video_pretrain.diagnose`` on the robot trajectories (goal = last frame), with a raw-pixel
   baseline row (-||s_t - g|| on the frames themselves, no encoder), and writes
   ``benchmarks/results/video_pretrain.json`` (every number, training facts, the commands) and
   ``docs/video_pretrain_values.png``, and prints markdown tables;
4. the in-domain check: the same diagnostics on human-hand task clips (goal = a clip's last frame), the
   held-out clips of the training split (never trained on) and some training clips: does a value that is
   flat on robot frames rise on the video it was trained on?
5. ICVF's value head up close: its V(s, g, z) on ICVF-style batches of held-out hand clips, grouped by where
   the goal is (s itself, 1-10 or more frames ahead in the clip, another clip), next to V*; and, with
   ``--heads-only-steps``, fresh ICVF value heads trained on the ICVF encoder's *frozen* features (cheap: no
   CNN) for many more steps, with the default target rate (and 3000 steps with a 10x faster one), diagnosed
   along the way;
6. with ``--icvf-budgets``: the ICVF run continued (resumed, same data stream) to each larger step count,
   every budget diagnosed like the 3000-step encoder (the end-to-end version of 5; slow on a CPU).

``--objectives`` trains and diagnoses only some objectives (the raw-pixel row always comes along);
``--train-overrides`` adds ``key=value`` settings to every ``video_pretrain.train`` call (e.g. ICVF's expectile or
goal mix) and ``--video-overrides`` to the hand-video collection (e.g. ``randomization=none``); both are recorded in
the JSON's ``setup``, and data already in ``--work`` that were collected with other video settings are refused.

``--only`` re-measures some objectives' rows after a change to them (e.g. a loss fix): it trains and diagnoses
only those objectives (plus the raw-pixel baseline, which must come out as stored: the check that the data
are the same as the stored run's) and replaces their rows in the existing ``--json``, keeping the other rows,
the ICVF-only sections and the figure (not redrawn) as they were; ``remeasured`` in the JSON says what was
redone, when and with which command.

Generated data and runs go to ``--work`` (default ``outputs/benchmarks/video_pretrain``) and are reused
when already there (pass ``--fresh`` to redo everything).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "benchmarks"))

from bench_utils import ended_with_this  # noqa: E402

from robopretrain.files import write_text_atomic  # noqa: E402
from sim_envs.tasks import TARGET_TASKS  # noqa: E402
from video_pretrain import diagnose as diag  # noqa: E402

OBJECTIVES = ("icvf", "vip", "tcn", "none")
LABELS = ("ICVF", "VIP", "TCN", "random init")
LABEL_OF = dict(zip(OBJECTIVES, LABELS))
PIXEL_LABEL = "raw pixels"
TRAIN_CLIPS_CHECKED = 20  # training task clips in the in-domain check


def collect_data(work: Path, clips: int, episodes: int, seed: int,
                 video_overrides: Sequence[str] = ()) -> tuple[Path, Path]:
    """Hand videos of the pretraining tasks and clean robot episodes of the target tasks (reused if present).

    ``video_overrides``: ``key=value`` settings of ``configs/collect_videos.yaml`` applied last. Raises
    ``SystemExit`` when the videos already in ``work`` were collected with another clip count, seed or other values
    of those keys."""
    from sim_envs.collect import collect
    from sim_envs.collect_videos import collect_videos

    videos = work / "hand_videos"
    extra = OmegaConf.from_dotlist(list(video_overrides))
    if not (videos / "manifest.csv").is_file():
        cfg = OmegaConf.load(REPO / "configs" / "collect_videos.yaml")
        cfg.merge_with({"tasks": "pretrain", "num_clips": clips, "image_size": 64, "seed": seed,
                        "output": str(videos), "overwrite": True})
        cfg.merge_with(extra)
        collect_videos(cfg)
    check_video_settings(videos, OmegaConf.merge({"num_clips": clips, "seed": seed}, extra))
    robot = work / "robot_target.hdf5"
    if not robot.is_file():
        cfg = OmegaConf.load(REPO / "configs" / "collect.yaml")
        cfg.merge_with({"tasks": "target", "episodes_per_task": episodes, "image_size": 64, "seed": seed + 1,
                        "kinds": {"clean": {"fraction": 1.0}, "noisy": {"fraction": 0.0}, "failing": {"fraction": 0.0}},
                        "output": str(robot), "overwrite": True})
        collect(cfg)
    return videos, robot


def check_video_settings(videos: Path, extra: Any) -> None:
    """Refuse (``SystemExit``) hand videos whose recorded collection config (``info.json``) differs from ``extra``
    (an OmegaConf mapping: the clip count, the seed and the ``--video-overrides`` values)."""
    info = videos / "info.json"
    if not info.is_file():
        return
    recorded = OmegaConf.create(json.loads(info.read_text()).get("config", {}))
    wanted = OmegaConf.to_container(extra, resolve=True)

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        have = OmegaConf.select(recorded, prefix, default="(unset)")
        have = OmegaConf.to_container(have, resolve=True) if OmegaConf.is_config(have) else have
        if have != value:
            raise SystemExit(f"{videos} was collected with {prefix}={have!r}, not {value!r}; use another --work or "
                             "--fresh")

    walk("", wanted)


def train_objective(objective: str, videos: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) one encoder with ``python -m video_pretrain.train``; returns its facts."""
    run = work / "runs" / objective
    overrides = [f"objective={objective}", f"data.path={videos}", f"steps={args.steps}",
                 f"batch_size={args.batch_size}", f"lr={args.lr}", f"seed={args.seed}", f"device={args.device}",
                 f"num_workers={args.num_workers}", f"output_dir={run}", f"hydra.run.dir={run / 'hydra'}",
                 "progress=false", "eval_every=100", *args.train_overrides]
    command = [sys.executable, "-m", "video_pretrain.train", *overrides]
    start = time.perf_counter()
    done = (run / "metrics.json").is_file() and json.loads((run / "metrics.json").read_text()).get("steps") == (
        0 if objective == "none" else args.steps)
    if not done:
        print(f"[video_pretrain benchmark] training {objective}: {' '.join(overrides)}", flush=True)
        proc = subprocess.run(command, cwd=REPO, env={**ended_with_this(), "PYTHONPATH": str(REPO)}, text=True,
                              capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"training {objective} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    valid = metrics.get("history", {}).get("valid", [])
    return {"encoder": str(run / "encoder"), "command": "python -m video_pretrain.train " + " ".join(overrides),
            "steps": metrics["steps"], "train_seconds": metrics.get("seconds_this_run"),
            "steps_per_second": metrics.get("steps_per_second"), "reused": done,
            "valid_loss_start": valid[0]["loss"] if valid else None, "valid_loss_end": valid[-1]["loss"] if valid else None,
            "wall_seconds_here": time.perf_counter() - start}


def hand_clip_ids(videos: Path) -> dict[str, list[int]]:
    """Task clips (not play) of the hand videos: the held-out split of training (``valid_fraction`` 0.1,
    ``split_seed`` 0, the train defaults) and the first training clips."""
    from sim_envs.collect_videos import EMPTY_PLAY_TEXT, PLAY_TEXT
    from video_pretrain.data import ManifestSource, split_by_video

    source = ManifestSource(videos, 64, max_cache_bytes=0)
    train_ids, valid_ids = split_by_video(source, 0.1, 0)
    task = [i for i in range(source.num_videos) if source.video_text(i) not in (PLAY_TEXT, EMPTY_PLAY_TEXT)]
    return {"held_out": [int(i) for i in valid_ids if i in task],
            "training": [int(i) for i in train_ids if i in task][:TRAIN_CLIPS_CHECKED]}


def held_out_clip_ids(videos: Path) -> list[int]:
    """Every clip (play included) of the training run's held-out split (``valid_fraction`` 0.1, ``split_seed`` 0)."""
    from video_pretrain.data import ManifestSource, split_by_video

    return [int(i) for i in split_by_video(ManifestSource(videos, 64, max_cache_bytes=0), 0.1, 0)[1]]


def in_domain_check(videos: Path, entries: list, device: torch.device, seed: int) -> dict[str, Any]:
    """Diagnostics of ``entries`` on hand task clips (held-out and training), goal = a clip's last frame."""
    out = {}
    for split, ids in hand_clip_ids(videos).items():
        trajs = diag.load_clip_trajectories(videos, 64, ids)
        res = diag.diagnose(entries, {64: trajs}, 0.99, device, seed=seed, progress=False)
        for entry in res.values():
            entry.pop("curves", None)
            entry.pop("per_trajectory", None)
        out[split] = {"clips": [t.name for t in trajs], "encoders": res}
    return out


def continue_icvf(videos: Path, work: Path, args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Continue the ICVF run to each of ``args.icvf_budgets`` steps (resuming its training checkpoint, so the
    data stream goes on as in one long run); returns each budget's encoder folder and training facts."""
    chain = work / "runs" / "icvf_longer"
    base = work / "runs" / "icvf" / "checkpoints" / "last.pt"
    out = {}
    for budget in sorted(b for b in args.icvf_budgets if b > args.steps):
        snapshot = chain / f"encoder_{budget}"
        if not (snapshot / "meta.json").is_file():
            if not (chain / "checkpoints" / "last.pt").is_file():
                (chain / "checkpoints").mkdir(parents=True, exist_ok=True)
                shutil.copy2(base, chain / "checkpoints" / "last.pt")
            overrides = ["objective=icvf", f"data.path={videos}", f"steps={budget}", f"batch_size={args.batch_size}",
                         f"lr={args.lr}", f"seed={args.seed}", f"device={args.device}", f"num_workers={args.num_workers}",
                         f"output_dir={chain}", f"hydra.run.dir={chain / 'hydra'}", "progress=false", "eval_every=100",
                         *args.train_overrides]
            print(f"[video_pretrain benchmark] ICVF continued to {budget} steps", flush=True)
            proc = subprocess.run([sys.executable, "-m", "video_pretrain.train", *overrides], cwd=REPO,
                                  env={**ended_with_this(), "PYTHONPATH": str(REPO)}, text=True, capture_output=True)
            if proc.returncode != 0:
                raise RuntimeError(f"ICVF to {budget} steps failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            shutil.copytree(chain / "encoder", snapshot)
            shutil.copy2(chain / "metrics.json", snapshot / "metrics.json")
        metrics = json.loads((snapshot / "metrics.json").read_text())
        valid = [v for v in metrics["history"]["valid"] if v["step"] <= budget]
        train = [t for t in metrics["history"]["train"] if t["step"] <= budget]
        out[budget] = {"encoder": str(snapshot), "valid_loss_end": valid[-1]["loss"], "valid_v_mean_end": valid[-1]["v_mean"],
                       "train_v_mean_end": sum(t["v_mean"] for t in train[-10:]) / len(train[-10:])}
    return out


GOAL_GROUPS = ("goal = s", "goal 1-10 frames ahead", "goal > 10 frames ahead", "goal behind s (same clip)",
               "goal in another clip")


def values_by_goal_kind(entry: Any, videos: Path, ids: list[int], device: torch.device, gamma: float = 0.99,
                        batches: int = 8, batch_size: int = 64, seed: int = 0) -> dict[str, dict[str, float]]:
    """ICVF's V(s, g, z) (mean of its online heads, as trained) on ICVF batches drawn from clips ``ids`` (the
    training sampler, no augmentation), grouped by where the goal g is; with the mean of V* for each group
    (d frames ahead: -(1 - gamma^d) / (1 - gamma); behind or in another clip: unreachable, -1 / (1 - gamma))."""
    from video_pretrain.data import ManifestSource, SubsetSource
    from video_pretrain.sampling import FrameBatchStream, augment

    stream = FrameBatchStream(SubsetSource(ManifestSource(videos, 64), ids), "icvf", batch_size, seed=seed)
    values, v_star, group = [], [], []
    with torch.no_grad():
        for k in range(batches):
            b = stream.batch(k)
            s, _, g, z = augment(b["frames"], 0).to(device).unbind(dim=1)
            values.append(entry.heads(entry.encoder(s), entry.encoder(g), entry.encoder(z)).mean(dim=0).cpu().numpy())
            same = (b["video"][:, 2] == b["video"][:, 0]).numpy()
            d = (b["frame"][:, 2] - b["frame"][:, 0]).numpy()
            kind = np.select([same & (d == 0), same & (d >= 1) & (d <= 10), same & (d > 10), same & (d < 0)], [0, 1, 2, 3], 4)
            group.append(kind)
            v_star.append(np.where(same & (d >= 0), -(1 - gamma ** np.maximum(d, 0)) / (1 - gamma), -1 / (1 - gamma)))
    values, v_star, group = np.concatenate(values), np.concatenate(v_star), np.concatenate(group)
    return {name: {"n": int((group == j).sum()), "v_mean": float(values[group == j].mean()),
                   "v_std": float(values[group == j].std()), "v_star_mean": float(v_star[group == j].mean())}
            for j, name in enumerate(GOAL_GROUPS) if (group == j).any()}


def format_goal_kind_table(groups: dict[str, dict[str, float]]) -> str:
    lines = ["| where the goal g is | samples | ICVF V(s, g, z): mean ± std | V*: mean |", "|---|---|---|---|"]
    for name, r in groups.items():
        lines.append(f"| {name} | {r['n']} | {r['v_mean']:.2f} ± {r['v_std']:.2f} | {r['v_star_mean']:.1f} |")
    return "\n".join(lines)


def heads_only_probe(encoder_dir: str, videos: Path, robot_trajs: list, held_out: list, steps: int, rate: float,
                     args: argparse.Namespace, cache: Path, checks: tuple[int, ...] = (1000, 3000, 10000, 20000, 30000),
                     log_every: int = 100) -> dict[str, Any]:
    """Fresh ICVF value heads trained on the *frozen* features of ``encoder_dir`` (clips of the training split,
    the ICVF sampler, loss, Adam and batch size of the benchmark, target rate ``rate``) for ``steps`` steps;
    V(s, g, g) diagnosed on the robot trajectories and the held-out hand clips at each of ``checks``.
    Reused from ``cache`` when it holds the same settings."""
    settings = {"encoder": encoder_dir, "steps": steps, "rate": rate, "batch_size": args.batch_size, "lr": args.lr,
                "seed": args.seed}
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("settings") == settings:
            return old
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 256-wide MLPs on batches of 32: extra threads cost more than they give (on a shared CPU, much more)
    try:
        return _heads_only_probe(encoder_dir, videos, robot_trajs, held_out, steps, rate, args, cache, checks, log_every,
                                 settings, device)
    finally:
        torch.set_num_threads(threads)


def _heads_only_probe(encoder_dir: str, videos: Path, robot_trajs: list, held_out: list, steps: int, rate: float,
                      args: argparse.Namespace, cache: Path, checks: tuple[int, ...], log_every: int,
                      settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from video_pretrain.data import ManifestSource, split_by_video
    from video_pretrain.objectives.icvf import ICVFHeads, icvf_loss
    from video_pretrain.sampling import ICVFSampler

    (entry,) = diag.load_entries([encoder_dir], ["ICVF"], device, "small_conv", 64, args.seed)
    source = ManifestSource(videos, 64, max_cache_bytes=0)
    train_ids, _ = split_by_video(source, 0.1, 0)
    feats = [diag.embed(entry.encoder, source.frames(int(i), np.arange(source.video_length(int(i)))), device)
             for i in train_ids]
    starts = np.concatenate([[0], np.cumsum([len(f) for f in feats])[:-1]])
    flat = torch.cat(feats)
    eval_sets = {"robot": [diag.embed(entry.encoder, t.frames, device) for t in robot_trajs],
                 "hand": [diag.embed(entry.encoder, t.frames, device) for t in held_out]}
    torch.manual_seed(args.seed)
    heads = ICVFHeads(int(entry.encoder.out_dim), (256, 256), 2)
    target = copy.deepcopy(heads).requires_grad_(False)
    opt = torch.optim.Adam(heads.parameters(), lr=args.lr, eps=3.125e-4)
    sampler, rng = ICVFSampler([len(f) for f in feats]), np.random.default_rng(args.seed)
    history, v_means = [], []
    for step in tqdm(range(1, steps + 1), desc=f"heads-only ICVF (target rate {rate})", unit="step", mininterval=10):
        b = sampler(rng, args.batch_size)
        idx = torch.from_numpy(starts[b.video] + b.frame)
        s, s_next, g, z = (flat[idx[:, k]] for k in range(4))
        sc = {k: torch.from_numpy(v) for k, v in b.scalars.items()}
        with torch.no_grad():
            next_v, next_v_zz, v_zz = target(s_next, g, z), target(s_next, z, z), target(s, z, z)
        loss, info = icvf_loss(heads(s, g, z), next_v, next_v_zz, v_zz, sc["reward"], sc["mask"], sc["intent_reward"],
                               sc["intent_mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), list(heads.parameters()), rate)
        v_means.append(float(info["v_mean"]))
        if step in checks or step == steps:
            row: dict[str, Any] = {"step": step, "train_v_mean": float(np.mean(v_means[-log_every:]))}
            with torch.no_grad():
                for name, fs in eval_sets.items():
                    ms = [diag.trajectory_metrics(diag.values_to_goal(f, heads), 0.99) for f in fs]
                    row[name] = {k: float(np.mean([m[k] for m in ms])) for k in ("spearman", "increasing", "mse", "value_range")}
            history.append(row)
    result = {"settings": settings, "history": history}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cache, json.dumps(result, indent=1))
    return result


def format_heads_only_table(probes: dict[str, Any]) -> str:
    lines = ["| target rate | steps | v_mean (train batches) | robot: rho / range / MSE vs V* | held-out hand: rho / range / "
             "MSE vs V* |", "|---|---|---|---|---|"]
    for probe in probes.values():
        for h in probe["history"]:
            r, c = h["robot"], h["hand"]
            lines.append(f"| {probe['settings']['rate']} | {h['step']} | {h['train_v_mean']:.2f} | {r['spearman']:.3f} / "
                         f"{r['value_range']:.3g} / {r['mse']:.4g} | {c['spearman']:.3f} / {c['value_range']:.3g} / "
                         f"{c['mse']:.4g} |")
    return "\n".join(lines)


def _row(r: dict[str, Any]) -> dict[str, float]:
    return {"spearman": r["mean"]["spearman"], "increasing": r["mean"]["increasing"], "mse": r["mean"]["mse"],
            "value_range": r["mean"]["value_range"], "probe_r2": r["probe"]["r2"]}


def format_budget_table(budgets: dict[str, Any]) -> str:
    """ICVF per training budget: value and feature rows on robot trajectories and held-out hand clips."""
    lines = ["| ICVF steps | valid loss | v_mean (valid) | robot: value rho / range / MSE vs V* | robot: features rho | "
             "held-out hand: value rho / range | held-out hand: features rho |", "|" + "---|" * 7]
    for steps, b in budgets.items():
        rv, rf, hv, hf = b["robot"]["value"], b["robot"]["features"], b["hand"]["value"], b["hand"]["features"]
        lines.append(f"| {steps} | {b['valid_loss_end']:.3f} | {b['valid_v_mean_end']:.2f} | {rv['spearman']:.3f} / "
                     f"{rv['value_range']:.3g} / {rv['mse']:.4g} | {rf['spearman']:.3f} | {hv['spearman']:.3f} / "
                     f"{hv['value_range']:.3g} | {hf['spearman']:.3f} |")
    return "\n".join(lines)


def format_in_domain_table(in_domain: dict[str, Any]) -> str:
    """Spearman rho / value range per encoder on the hand clips (held-out and training)."""
    splits = list(in_domain)
    lines = ["| encoder | " + " | ".join(f"{s} hand clips ({len(in_domain[s]['clips'])}): rho / frac. increasing / "
                                         "value range" for s in splits) + " |", "|" + "---|" * (len(splits) + 1)]
    for label in in_domain[splits[0]]["encoders"]:
        cells = []
        for s in splits:
            m = in_domain[s]["encoders"][label]["mean"]
            cells.append(f"{m['spearman']:.3f} / {m['increasing']:.3f} / {m['value_range']:.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_and_diagnose(objectives: Sequence[str], videos: Path, robot: Path, out: Path, work: Path,
                       args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], list, torch.device, dict]:
    """Train (or reuse) ``objectives``, diagnose them and the raw-pixel baseline on the robot trajectories (report
    in ``out``) and on the hand clips; returns (training facts, report, encoder entries, device, in-domain)."""
    training = {obj: train_objective(obj, videos, work, args) for obj in objectives}
    diag_args = diag.build_parser().parse_args(
        ["--data", str(robot), "--encoders", *[training[o]["encoder"] for o in objectives], diag.PIXELS,
         "--labels", *[LABEL_OF[o] for o in objectives], PIXEL_LABEL, "--out", str(out), "--device", args.device,
         "--seed", str(args.seed), "--no-progress"])
    report = diag.run(diag_args)
    device = diag.resolve_device(args.device)
    entries = diag.load_entries(diag_args.encoders, diag_args.labels, device, "small_conv", 64, args.seed)
    return training, report, entries, device, in_domain_check(videos, entries, device, args.seed)


def setup_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"clips": args.clips, "episodes_per_target_task": args.episodes, "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "encoder": "small_conv",
            "image_size": 64, "pretraining_data": "human-hand videos of the 9 pretraining tasks",
            "evaluation_data": f"clean robot episodes of the target tasks ({', '.join(TARGET_TASKS)})",
            # recorded only when set, so a default run's setup equals that of a JSON written before they existed
            **{k: list(v) for k, v in (("train_overrides", args.train_overrides),
                                       ("video_overrides", args.video_overrides)) if v}}


def remeasure(args: argparse.Namespace, work: Path, videos: Path, robot: Path) -> None:
    """``--only``: train and diagnose ``args.only`` and replace their rows in the stored ``args.json``."""
    stored_path = Path(args.json)
    if not stored_path.is_file():
        raise SystemExit(f"--only: {stored_path} does not exist; run the full benchmark first")
    stored = json.loads(stored_path.read_text())
    if stored["setup"] != setup_of(args):
        raise SystemExit(f"--only: {stored_path} was measured with other settings {stored['setup']}; "
                         "pass the same --clips/--episodes/--steps/--batch-size/--lr/--seed or run the full benchmark")
    t0 = time.perf_counter()
    training, report, _, _, in_domain = train_and_diagnose(args.only, videos, robot, work / "diagnose_only", work, args)
    # the same data as the stored run: the same robot trajectories, hand clips and raw-pixel numbers
    same = (report["trajectories"] == stored["diagnostics"]["trajectories"]
            and all(in_domain[s]["clips"] == stored["in_domain"][s]["clips"] for s in in_domain)
            and report["encoders"][PIXEL_LABEL]["mean"] == stored["diagnostics"]["encoders"][PIXEL_LABEL]["mean"])
    if not same:
        raise SystemExit(f"--only: the data in {work} differ from those of {stored_path} (trajectories, hand clips or "
                         "the raw-pixel row changed); run the full benchmark instead")
    for label, entry in report["encoders"].items():
        entry.pop("curves", None)
        if label != PIXEL_LABEL:
            stored["diagnostics"]["encoders"][label] = entry
    for split, part in in_domain.items():
        for label, entry in part["encoders"].items():
            if label != PIXEL_LABEL:
                stored["in_domain"][split]["encoders"][label] = entry
    stored["training"].update(training)
    stored.setdefault("remeasured", []).append(
        {"rows": sorted(k for k in report["encoders"] if k != PIXEL_LABEL), "checked_unchanged": [PIXEL_LABEL],
         "command": "python benchmarks/video_pretrain.py " + " ".join(sys.argv[1:]),
         "date": time.strftime("%Y-%m-%d"), "seconds": time.perf_counter() - t0, "figure_redrawn": False,
         "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}})
    write_text_atomic(stored_path, json.dumps(stored, indent=1))
    print()
    print(diag.format_table(stored["diagnostics"]["encoders"]))
    print()
    print(diag.format_task_table(stored["diagnostics"]["encoders"]))
    print()
    print(format_in_domain_table(stored["in_domain"]))
    print(f"\nupdated the rows {', '.join(sorted(k for k in report['encoders'] if k != PIXEL_LABEL))} of {stored_path} "
          f"({PIXEL_LABEL} re-measured unchanged; figure not redrawn)")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--clips", type=int, default=90, help="human-hand clips (10 per pretraining task)")
    p.add_argument("--episodes", type=int, default=25, help="clean robot episodes per target task")
    p.add_argument("--steps", type=int, default=3000, help="training steps per objective")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--work", default=str(REPO / "outputs" / "benchmarks" / "video_pretrain"))
    p.add_argument("--fresh", action="store_true", help="delete --work first")
    p.add_argument("--heads-only-steps", type=int, default=0,
                   help="train ICVF value heads on the ICVF encoder's frozen features for this many steps (0: skip)")
    p.add_argument("--icvf-budgets", type=int, nargs="*", default=[],
                   help="also continue the ICVF run to these step counts and diagnose each (e.g. 6000 9000 12000)")
    p.add_argument("--only", nargs="+", choices=[o for o in OBJECTIVES], default=None,
                   help="re-measure only these objectives' rows and replace them in --json (see above)")
    p.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES), default=list(OBJECTIVES),
                   help="objectives to train and diagnose (the raw-pixel row always comes along)")
    p.add_argument("--train-overrides", nargs="*", default=[],
                   help="extra key=value settings of every video_pretrain.train call, "
                        "e.g. objective.options.expectile=0.7")
    p.add_argument("--video-overrides", nargs="*", default=[],
                   help="extra key=value settings of the hand-video collection, e.g. randomization=none")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "video_pretrain.json"))
    p.add_argument("--png", default=str(REPO / "docs" / "video_pretrain_values.png"))
    args = p.parse_args(argv)
    from robopretrain.workers import end_with_launcher

    end_with_launcher()  # run by claims.py values: ends with it (killed outright), and its runs with this process
    args.objectives = [o for o in OBJECTIVES if o in args.objectives]  # the table's order
    if (args.heads_only_steps or args.icvf_budgets) and "icvf" not in args.objectives:
        p.error("--heads-only-steps and --icvf-budgets need icvf among --objectives")

    work = Path(args.work)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    videos, robot = collect_data(work, args.clips, args.episodes, args.seed, args.video_overrides)
    t_data = time.perf_counter() - t0
    if args.only:
        remeasure(args, work, videos, robot)
        return
    training, report, entries, device, in_domain = train_and_diagnose(args.objectives, videos, robot,
                                                                      work / "diagnose", work, args)
    goal_kinds = (values_by_goal_kind(entries[0], videos, held_out_clip_ids(videos), device, seed=args.seed)
                  if args.objectives[0] == "icvf" else {})
    probes: dict[str, Any] = {}
    if args.heads_only_steps:
        robot_trajs = diag.load_trajectories(robot, diag.select_trajectories(robot), 64)
        held_out = diag.load_clip_trajectories(videos, 64, hand_clip_ids(videos)["held_out"])
        for rate, n in ((0.05, min(3000, args.heads_only_steps)), (0.005, args.heads_only_steps)):  # short one first
            probes[f"rate_{rate}"] = heads_only_probe(training["icvf"]["encoder"], videos, robot_trajs, held_out, n, rate,
                                                      args, work / "heads_only" / f"rate_{rate}_steps_{n}.json")

    budgets: dict[str, Any] = {}
    if args.icvf_budgets:
        robot_trajs = diag.load_trajectories(robot, diag.select_trajectories(robot), 64)
        held_out = diag.load_clip_trajectories(videos, 64, hand_clip_ids(videos)["held_out"])
        runs = {args.steps: {"encoder": training["icvf"]["encoder"], "valid_loss_end": training["icvf"]["valid_loss_end"],
                             "valid_v_mean_end": None}, **continue_icvf(videos, work, args)}
        base_valid = json.loads((work / "runs" / "icvf" / "metrics.json").read_text())["history"]["valid"]
        runs[args.steps]["valid_v_mean_end"] = base_valid[-1]["v_mean"]
        for steps, facts in runs.items():
            entry = diag.load_entries([facts["encoder"]], ["ICVF"], device, "small_conv", 64, args.seed)
            rob = diag.diagnose(entry, {64: robot_trajs}, 0.99, device, seed=args.seed, progress=False)
            hand = diag.diagnose(entry, {64: held_out}, 0.99, device, seed=args.seed, progress=False)
            budgets[str(steps)] = {**facts, "robot": {"value": _row(rob["ICVF"]), "features": _row(rob["ICVF:features"])},
                                   "hand": {"value": _row(hand["ICVF"]), "features": _row(hand["ICVF:features"])}}
    png = diag.plot_values(report["encoders"], Path(args.png), num_curves=4,
                           title="stage 1: values on held-out robot trajectories of the target tasks "
                                 "(encoders trained on human-hand video only)")
    for entry in report["encoders"].values():
        entry.pop("curves", None)
    result = {
        "benchmark": "video_pretrain",
        "command": "python benchmarks/video_pretrain.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                 text=True).stdout.strip() or None,
        "setup": setup_of(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "data_seconds": t_data,
        "training": training,
        "diagnostics": report,
        "in_domain": in_domain,
        "icvf_values_by_goal_kind": {"clips": "held-out hand clips (all, play included)", "groups": goal_kinds},
        "heads_only": probes,
        "icvf_budgets": budgets,
        "figure": str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png),
        "total_seconds": time.perf_counter() - t0,
    }
    write_text_atomic(Path(args.json), json.dumps(result, indent=1))
    print()
    print(diag.format_table(report["encoders"]))
    print()
    print(diag.format_task_table(report["encoders"]))
    print()
    print(format_in_domain_table(in_domain))
    if goal_kinds:
        print()
        print(format_goal_kind_table(goal_kinds))
    if probes:
        print()
        print(format_heads_only_table(probes))
    if budgets:
        print()
        print(format_budget_table(budgets))
    print(f"\nwrote {args.json} and {png}")


if __name__ == "__main__":
    main()
