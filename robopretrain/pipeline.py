"""The whole pipeline on images, one command: data -> stage 1 -> stage 2 -> adaptation -> stage 3 -> evaluation.

``python -m robopretrain.pipeline`` (Hydra, ``configs/pipeline.yaml``; ``--config-name paper`` for the GPU preset),
or :func:`run_pipeline` from Python. Everything lands under one run folder::

    <run>/data/      prior_demos.hdf5 (9 prior tasks), target_demos.hdf5 (10 demos per sim_envs target), videos/
    <run>/stage1/    video pretraining (ICVF by default): encoder/ (the stage-1 encoder checkpoint)
    <run>/stage2/    multi-task CQL on images over the prior tasks (task-ID conditioned, PTR): agent.pt, checkpoint/
    <run>/adapt/<target>/   offline on batches of 90% prior / 10% target data: agent.pt, checkpoint/
    <run>/stage3/<target>/  Cal-QL online with physics + visual randomization, parallel envs: agent.pt, checkpoint/,
                            checkpoints/ (resumable: agent, optimiser, RNG, replay buffer), metrics.jsonl, tb/
    <run>/evaluate/  results.json, rollout GIFs, plots, robustness/<target>/eval_info.json;  <run>/report.md

``agent.pt`` is the plain state dict the next stage loads; ``checkpoint/`` is the same agent as a self-describing
image checkpoint (:mod:`robopretrain.image_checkpoint`) that ``python -m robopretrain.evaluate checkpoint=...``
and :func:`~robopretrain.image_checkpoint.load_image_agent` rebuild without the stage-1 file. The final evaluation
runs a short robustness sweep (:mod:`robopretrain.evaluate`, ``evaluate.robustness``) on each sim_envs target.

Each stage writes ``done.json`` (with its wall time) when it finishes; a later run skips finished stages and a
stage that was interrupted resumes from its own ``state.pt`` (stage 3: from ``checkpoints/``). The encoder transfer mode (``encoder.mode``:
finetune / frozen / frozen_cached / scratch) applies to stages 2, adaptation and 3
(:mod:`robopretrain.image_agent`). Stages that need an agent load the previous stage's ``agent.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from robopretrain.cli import config_folder
from robopretrain.data.replay import MixedSampler, OfflineDataset
from robopretrain.image_agent import ImageAgent, image_obs_config
from robopretrain.image_checkpoint import image_agent_meta, save_image_checkpoint
from robopretrain.image_rl import (
    ACT_DIM,
    OnlineSettings,
    RewardSpec,
    TargetSpec,
    agent_view,
    evaluate_images,
    load_image_dataset,
    run_online_images,
    save_state,
    target_spec,
    train_offline_images,
)

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
STAGES = ("data", "stage1", "stage2", "adapt", "stage3", "evaluate")
DONE = "done.json"


# --------------------------------------------------------------------------- small helpers


def plain(node: Any) -> Any:
    """A config node as plain Python containers (other values unchanged)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def is_done(run_dir: Path, stage: str) -> bool:
    return (run_dir / stage / DONE).is_file()


def targets_of(cfg: DictConfig) -> list[TargetSpec]:
    specs = [target_spec(plain(t)) for t in cfg.targets]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"targets: names must be unique, got {names}")
    return specs


def prior_task_names(cfg: DictConfig) -> list[str]:
    import sim_envs

    spec = plain(cfg.prior_tasks)
    if spec == "pretrain":
        return list(sim_envs.PRETRAIN_TASKS)
    return [spec] if isinstance(spec, str) else list(spec)


def algo_config(cfg: DictConfig, name: str) -> dict[str, Any]:
    """``configs/algo/<name>.yaml`` with ``algo_overrides``."""
    path = CONFIG_DIR / "algo" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such algorithm config (expected cql, calql, iql or bc)")
    out = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    out.update(plain(cfg.algo_overrides) or {})
    return out


def reward_spec(algo_cfg: Mapping[str, Any]) -> RewardSpec:
    return RewardSpec(gamma=float(algo_cfg.get("discount", 0.99)), scale=float(algo_cfg.get("reward_scale", 10.0)),
                      bias=float(algo_cfg.get("reward_bias", -5.0)), sparse=bool(algo_cfg.get("sparse_reward", True)))


def encoder_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "stage1" / "encoder"
    return path if (path / "meta.json").is_file() else None


def make_image_agent(cfg: DictConfig, run_dir: Path, algo: str, device: torch.device) -> ImageAgent:
    ckpt = encoder_checkpoint(run_dir)
    mode = str(cfg.encoder.mode)
    if ckpt is None and mode != "scratch":
        raise ValueError(f"encoder.mode={mode} needs the stage-1 encoder at {run_dir / 'stage1' / 'encoder'}; "
                         f"run stage 1 (stage1.enabled=true) or use encoder.mode=scratch")
    obs_cfg = image_obs_config({
        "image_keys": list(cfg.image_keys), "mode": mode, "encoder_checkpoint": str(ckpt) if ckpt else None,
        "encoder_name": str(cfg.stage1.encoder), "encoder_kwargs": plain(cfg.stage1.encoder_kwargs) or {},
        "image_size": int(cfg.image_size), "shared_encoder": bool(cfg.encoder.shared),
        "augment_pad": int(cfg.encoder.augment_pad), "encoder_lr": float(cfg.encoder.lr)})
    state_dim = state_dim_of(cfg)
    algo_cfg = algo_config(cfg, algo)
    agent = ImageAgent(obs_cfg, state_dim, ACT_DIM, algo, algo_cfg, device=device, seed=int(cfg.seed))
    return agent


def state_dim_of(cfg: DictConfig) -> int:
    sizes = {"proprio": 7, "object": 18}  # the sim_envs observation sizes (a custom target must match them)
    unknown = [k for k in cfg.state_keys if k not in sizes]
    if unknown:
        raise ValueError(f"state_keys {unknown}: only {sorted(sizes)} are known to the pipeline")
    return sum(sizes[k] for k in cfg.state_keys) + int(cfg.num_tasks)


def write_image_checkpoint(cfg: DictConfig, agent: ImageAgent, out_dir: Path, stage: str, step: int,
                           **facts: Any) -> Path:
    """``<out_dir>/checkpoint/ckpt_<step>``: the agent as a self-describing image checkpoint (newest one kept)."""
    meta = image_agent_meta(agent, state_keys=list(cfg.state_keys), num_tasks=int(cfg.num_tasks), stage=stage,
                            **facts)
    return save_image_checkpoint(out_dir / "checkpoint", step, cfg, agent, meta, keep=1)


def load_agent_file(agent: ImageAgent, path: Path, with_optimizer: bool = False) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the previous stage's agent is missing; rerun that stage")
    agent.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), with_optimizer=with_optimizer)


# --------------------------------------------------------------------------- stage: data


def data_paths(run_dir: Path) -> dict[str, Path]:
    d = run_dir / "data"
    return {"prior": d / "prior_demos.hdf5", "target": d / "target_demos.hdf5", "videos": d / "videos"}


def stage_data(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Robot demos of the prior tasks, a handful of demos per sim_envs target, human-hand videos."""
    from sim_envs.collect import collect
    from sim_envs.collect_videos import collect_videos

    paths = data_paths(run_dir)
    base = {"image_size": int(cfg.image_size), "render_images": True, "num_workers": int(cfg.data.num_workers),
            "eye_in_hand": "eye_in_hand_image" in cfg.image_keys, "seed": int(cfg.seed), "overwrite": True}
    out: dict[str, Any] = {}
    if bool(cfg.stage2.enabled) and not paths["prior"].is_file():
        c = OmegaConf.load(CONFIG_DIR / "collect.yaml")
        c.merge_with({**base, "tasks": prior_task_names(cfg), "episodes_per_task": int(cfg.data.prior_episodes_per_task),
                      "output": str(paths["prior"])})
        c.kinds = OmegaConf.create(plain(cfg.data.prior_kinds))
        collect(c, progress=bool(cfg.progress))
    sim_targets = [t.name for t in targets_of(cfg) if t.is_sim_envs and not t.demos]
    if sim_targets and not paths["target"].is_file():
        c = OmegaConf.load(CONFIG_DIR / "collect.yaml")
        c.merge_with({**base, "tasks": sim_targets, "episodes_per_task": int(cfg.data.target_demos),
                      "output": str(paths["target"]), "seed": int(cfg.seed) + 7})
        c.kinds = OmegaConf.create({"clean": {"fraction": 1.0, "noise": float(cfg.data.target_noise), "stop": None},
                                    "noisy": {"fraction": 0.0, "noise": 0.0, "stop": None},
                                    "failing": {"fraction": 0.0, "noise": 0.0, "stop": None}})
        collect(c, progress=bool(cfg.progress))
    if bool(cfg.stage1.enabled) and not (paths["videos"] / "manifest.csv").is_file():
        c = OmegaConf.load(CONFIG_DIR / "collect_videos.yaml")
        c.merge_with({**(plain(cfg.data.videos) or {}), "image_size": int(cfg.image_size),
                      "output": str(paths["videos"]), "overwrite": True, "seed": int(cfg.seed)})
        collect_videos(c, progress=bool(cfg.progress))
    for spec in targets_of(cfg):
        if spec.demos and not Path(spec.demos).is_file():
            raise FileNotFoundError(f"target {spec.name!r}: demos={spec.demos} not found (a robomimic HDF5)")
    out.update({k: str(v) for k, v in paths.items() if v.exists()})
    return out


# --------------------------------------------------------------------------- stage 1


def stage1_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    c = OmegaConf.load(CONFIG_DIR / "video_pretrain.yaml")
    c.pop("defaults", None)
    c.pop("hydra", None)
    c.objective = OmegaConf.load(CONFIG_DIR / "objective" / f"{cfg.stage1.objective}.yaml")
    c.merge_with({
        "data": {"path": str(data_paths(run_dir)["videos"]), "generate": False},
        "encoder": {"name": str(cfg.stage1.encoder), "kwargs": plain(cfg.stage1.encoder_kwargs) or {}},
        "image_size": int(cfg.image_size), "steps": int(cfg.stage1.steps), "batch_size": int(cfg.stage1.batch_size),
        "lr": float(cfg.stage1.lr), "device": str(cfg.device), "seed": int(cfg.seed), "progress": bool(cfg.progress),
        "num_threads": cfg.get("num_threads"),
        "output_dir": str(run_dir / "stage1"), "output": str(run_dir / "stage1" / "encoder"),
        "eval_every": max(1, int(cfg.stage1.steps) // 3), "checkpoint_every": max(1, int(cfg.stage1.steps) // 3),
    })
    return c


def stage_stage1(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Video pretraining of the encoder (skipped, with nothing saved, when ``stage1.enabled`` is false)."""
    if not bool(cfg.stage1.enabled):
        return {"encoder": None}
    from video_pretrain.train import train

    path = train(stage1_config(cfg, run_dir), run_dir / "stage1")
    return {"encoder": str(path), "objective": str(cfg.stage1.objective)}


# --------------------------------------------------------------------------- stage 2 and adaptation


def prior_dataset(cfg: DictConfig, run_dir: Path, algo_cfg: Mapping[str, Any]) -> OfflineDataset:
    return load_image_dataset(data_paths(run_dir)["prior"], list(cfg.image_keys), list(cfg.state_keys),
                              int(cfg.num_tasks), reward_spec(algo_cfg), seed=int(cfg.seed))


def target_dataset(cfg: DictConfig, run_dir: Path, spec: TargetSpec, algo_cfg: Mapping[str, Any],
                   seed: int) -> OfflineDataset:
    if spec.demos:
        return load_image_dataset(spec.demos, list(cfg.image_keys), list(cfg.state_keys), int(cfg.num_tasks),
                                  reward_spec(algo_cfg), key_map=spec.obs_map, task_id=spec.resolved_task_id(),
                                  max_demos=int(cfg.data.target_demos), seed=seed)
    return load_image_dataset(data_paths(run_dir)["target"], list(cfg.image_keys), list(cfg.state_keys),
                              int(cfg.num_tasks), reward_spec(algo_cfg), tasks=[spec.name],
                              max_demos=int(cfg.data.target_demos), seed=seed)


def eval_fn(cfg: DictConfig, agent: ImageAgent, spec: TargetSpec, episodes: int, randomization: Any = "none",
            video: Path | None = None) -> Callable[[int], dict[str, float]]:
    def run(_step: int) -> dict[str, float]:
        return evaluate_images(agent, spec, episodes, image_keys=list(cfg.image_keys),
                               state_keys=list(cfg.state_keys), num_tasks=int(cfg.num_tasks),
                               image_size=int(cfg.image_size), randomization=randomization, video_path=video)
    return run


def stage_stage2(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Task-ID conditioned multi-task CQL on the prior tasks' images; per-task success in sim at the end."""
    out_dir = run_dir / "stage2"
    if not bool(cfg.stage2.enabled):
        return {"skipped": "stage2.enabled=false (no multi-task pretraining)"}
    algo = str(cfg.stage2.algo)
    agent = make_image_agent(cfg, run_dir, algo, device)
    data = agent_view(prior_dataset(cfg, run_dir, algo_config(cfg, algo)), agent, int(cfg.seed))
    tasks = prior_task_names(cfg)

    def evaluate(_step: int) -> dict[str, float]:
        res = {t: eval_fn(cfg, agent, TargetSpec(name=t), int(cfg.stage2.eval_episodes))(0) for t in tasks}
        row = {f"{t}/success": r["success"] for t, r in res.items()}
        row["success"] = float(np.mean([r["success"] for r in res.values()]))
        return row

    rows = train_offline_images(agent, data, int(cfg.stage2.steps), out_dir, batch_size=int(cfg.algo_overrides.batch_size),
                                checkpoint_every=int(cfg.stage2.checkpoint_every),
                                evaluate=evaluate if int(cfg.stage2.eval_episodes) > 0 else None,
                                eval_every=int(cfg.stage2.get("eval_every", 0)),
                                progress=bool(cfg.progress), desc="stage2 multi-task CQL")
    save_state(out_dir / "agent.pt", agent.state_dict())
    write_image_checkpoint(cfg, agent, out_dir, "stage2", int(cfg.stage2.steps), task_names=tasks)
    write_json(out_dir / "metrics.json", rows)
    evals = [r for r in rows if "eval/success" in r]
    return {"transitions": len(data), "updates": int(cfg.stage2.steps), "final_eval": evals[-1] if evals else None,
            "encoder": agent.encoder_source}


def stage_adapt(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Per target: continue offline on ``prior_fraction`` prior / the rest target data (target only without stage 2)."""
    algo = str(cfg.adapt.algo)
    out: dict[str, Any] = {}
    prior = None
    for spec in targets_of(cfg):
        out_dir = run_dir / "adapt" / spec.name
        if (out_dir / "agent.pt").is_file():
            out[spec.name] = read_json(out_dir / "summary.json")
            continue
        agent = make_image_agent(cfg, run_dir, algo, device)
        target = agent_view(target_dataset(cfg, run_dir, spec, algo_config(cfg, algo), int(cfg.seed) + 3), agent,
                            int(cfg.seed) + 3)
        if bool(cfg.stage2.enabled):
            load_agent_file(agent, run_dir / "stage2" / "agent.pt")
            if prior is None:
                prior = agent_view(prior_dataset(cfg, run_dir, algo_config(cfg, algo)), agent, int(cfg.seed))
            sampler: Any = MixedSampler(prior, target, float(cfg.adapt.prior_fraction))
        else:
            sampler = target
        rows = train_offline_images(agent, sampler, int(cfg.adapt.steps), out_dir,
                                    batch_size=int(cfg.algo_overrides.batch_size),
                                    checkpoint_every=int(cfg.adapt.checkpoint_every),
                                    evaluate=eval_fn(cfg, agent, spec, int(cfg.stage3.eval_episodes)),
                                    progress=bool(cfg.progress), desc=f"adapt {spec.name}")
        save_state(out_dir / "agent.pt", agent.state_dict())
        write_image_checkpoint(cfg, agent, out_dir, "adapt", int(cfg.adapt.steps), task=spec.name,
                               task_id=spec.resolved_task_id(), sim_envs_task=spec.is_sim_envs)
        summary = {"target_transitions": len(target), "updates": int(cfg.adapt.steps),
                   "prior_fraction": float(cfg.adapt.prior_fraction) if bool(cfg.stage2.enabled) else 0.0,
                   "final_eval": [r for r in rows if "eval/success" in r][-1]}
        write_json(out_dir / "metrics.json", rows)
        write_json(out_dir / "summary.json", summary)
        out[spec.name] = summary
    return out


# --------------------------------------------------------------------------- stage 3


def stage_stage3(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Per target: Cal-QL online with randomization, ``num_envs`` envs in parallel, from the adapted agent."""
    algo = str(cfg.stage3.algo)
    s = cfg.stage3
    settings = OnlineSettings(env_steps=int(s.env_steps), num_envs=int(s.num_envs), asynchronous=bool(s.asynchronous),
                              utd=int(s.utd), offline_ratio=float(s.offline_ratio),
                              batch_size=int(cfg.algo_overrides.batch_size), buffer_capacity=int(s.buffer_capacity),
                              eval_every=int(s.eval_every), eval_episodes=int(s.eval_episodes),
                              checkpoint_every=int(s.checkpoint_every), progress=bool(cfg.progress))
    out: dict[str, Any] = {}
    for spec in targets_of(cfg):
        out_dir = run_dir / "stage3" / spec.name
        if (out_dir / "agent.pt").is_file():
            out[spec.name] = read_json(out_dir / "summary.json")
            continue
        agent = make_image_agent(cfg, run_dir, algo, device)
        load_agent_file(agent, run_dir / "adapt" / spec.name / "agent.pt")
        offline = agent_view(target_dataset(cfg, run_dir, spec, algo_config(cfg, algo), int(cfg.seed) + 5), agent,
                             int(cfg.seed) + 5)
        rand = plain(s.randomization) if spec.is_sim_envs else "none"
        history = run_online_images(agent, offline, spec, settings, out_dir, image_keys=list(cfg.image_keys),
                                    state_keys=list(cfg.state_keys), num_tasks=int(cfg.num_tasks),
                                    image_size=int(cfg.image_size), randomization=rand,
                                    reward=reward_spec(algo_config(cfg, algo)), seed=int(cfg.seed),
                                    evaluate=eval_fn(cfg, agent, spec, settings.eval_episodes))
        save_state(out_dir / "agent.pt", agent.state_dict())
        write_image_checkpoint(cfg, agent, out_dir, "stage3", settings.env_steps, task=spec.name,
                               task_id=spec.resolved_task_id(), sim_envs_task=spec.is_sim_envs, randomization=rand)
        summary = {"history": history, "env_steps": settings.env_steps, "num_envs": settings.num_envs,
                   "final_success": history[-1]["eval/success"],
                   "cumulative_regret": history[-1]["train/cumulative_regret"]}
        write_json(out_dir / "summary.json", summary)
        out[spec.name] = {k: v for k, v in summary.items() if k != "history"}
    return out


# --------------------------------------------------------------------------- final evaluation and report


def robustness_config(cfg: DictConfig, checkpoint: Path, task: str, out_dir: Path) -> DictConfig:
    """The ``configs/evaluate.yaml`` run of ``evaluate.robustness``: its factors at its levels, its episodes."""
    rob = cfg.evaluate.robustness
    c = OmegaConf.load(CONFIG_DIR / "evaluate.yaml")
    c.pop("hydra", None)
    levels = dict(plain(rob.levels) or {})
    unknown = [f for f in levels if f not in c.factors]
    if not levels or unknown:
        raise ValueError(f"evaluate.robustness.levels: {'unknown factor(s) ' + str(unknown) if unknown else 'empty'}; "
                         f"expected a mapping of some of {list(c.factors)} to their levels")
    for factor, lv in levels.items():
        c.factors[factor].levels = list(lv) if isinstance(lv, (list, tuple)) else [lv]
    c.merge_with({"checkpoint": str(checkpoint), "task": task, "output_dir": str(out_dir),
                  "episodes": int(rob.episodes), "workers": int(rob.workers), "device": str(cfg.device),
                  "progress": bool(cfg.progress), "select": list(levels), "video": {"enabled": bool(rob.video)}})
    return c


def robustness_rows(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Nominal then every (factor, level) of an ``eval_info``: success, 95% CI, drop vs nominal, episodes."""
    keep = ("success", "ci_low", "ci_high", "drop_vs_nominal", "episodes")
    rows = [{"factor": "nominal", "level": "none", **{k: info["nominal"][k] for k in keep}}]
    for factor, levels in info["factors"].items():
        rows += [{"factor": factor, "level": level, **{k: r[k] for k in keep}} for level, r in levels.items()]
    return rows


def run_robustness(cfg: DictConfig, checkpoint: Path, task: str, out_dir: Path) -> dict[str, Any]:
    """The ``evaluate.robustness`` sweep of one image checkpoint into ``out_dir``: its eval_info, plot and rows."""
    from robopretrain.evaluate import evaluate_robustness

    info = evaluate_robustness(robustness_config(cfg, checkpoint, task, out_dir))
    return {"eval_info": str(out_dir / "eval_info.json"), "plot": info["plot"], "rows": robustness_rows(info)}


def stage_evaluate(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Success of each fine-tuned target policy, nominal and randomized; a rollout GIF per target; a short
    robustness sweep (``evaluate.robustness``) of each sim_envs target's stage-3 checkpoint."""
    out_dir = run_dir / "evaluate"
    results: dict[str, Any] = {}
    robustness: dict[str, Any] = {}
    rob = cfg.evaluate.get("robustness")
    for spec in targets_of(cfg):
        agent = make_image_agent(cfg, run_dir, str(cfg.stage3.algo), device)
        s3_dir = run_dir / "stage3" / spec.name
        load_agent_file(agent, s3_dir / "agent.pt")
        if not (s3_dir / "checkpoint").is_dir():  # a stage 3 finished before checkpoints were written
            write_image_checkpoint(cfg, agent, s3_dir, "stage3", int(cfg.stage3.env_steps), task=spec.name,
                                   task_id=spec.resolved_task_id(), sim_envs_task=spec.is_sim_envs)
        per: dict[str, Any] = {}
        for i, (setting, rand) in enumerate(dict(plain(cfg.evaluate.settings)).items()):
            if not spec.is_sim_envs and rand != "none":
                continue
            video = out_dir / f"rollout_{spec.name}.gif" if (i == 0 and bool(cfg.evaluate.video)) else None
            per[setting] = eval_fn(cfg, agent, spec, int(cfg.evaluate.episodes), rand, video)(0)
        results[spec.name] = per
        if rob is not None and bool(rob.enabled) and spec.is_sim_envs:
            robustness[spec.name] = run_robustness(cfg, s3_dir / "checkpoint", spec.name,
                                                   out_dir / "robustness" / spec.name)
    write_json(out_dir / "results.json", results)
    write_json(out_dir / "robustness.json", robustness)
    return results


def plot_curves(run_dir: Path, out_dir: Path) -> list[Path]:
    """Stage-3 success over env steps per target, and the offline stages' Q-values over updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for summary in sorted((run_dir / "stage3").glob("*/summary.json")):
        hist = read_json(summary)["history"]
        ax.plot([h["env_steps"] for h in hist], [h["eval/success"] for h in hist], marker="o",
                label=summary.parent.name)
    ax.set_xlabel("online env steps")
    ax.set_ylabel("success (eval)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Stage 3: Cal-QL online")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "stage3_success.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, metrics in [("stage2", run_dir / "stage2" / "metrics.json"),
                          *[(f"adapt {p.parent.name}", p) for p in sorted((run_dir / "adapt").glob("*/metrics.json"))]]:
        if not metrics.is_file():
            continue
        rows = [r for r in read_json(metrics) if "train/q_data" in r]
        ax.plot([r["step"] for r in rows], [r["train/q_data"] for r in rows], label=f"{name} Q(s, a_data)")
    ax.set_xlabel("updates")
    ax.set_ylabel("average Q on data")
    ax.set_title("Offline stages")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "offline_q.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def robustness_report_lines(cfg: DictConfig, run_dir: Path) -> list[str]:
    """The report's robustness section: per sim_envs target, success per factor and level of the short sweep."""
    path = run_dir / "evaluate" / "robustness.json"
    sweep = read_json(path) if path.is_file() else {}
    if not sweep:
        return []
    lines = ["", "## Robustness (short sweep of `python -m robopretrain.evaluate`)", "",
             "Stage-3 checkpoint of each target under shifted conditions (`evaluate.robustness`; eval_hard and "
             "eval_easy draw from held-out ranges disjoint from the training randomization). Few episodes: the "
             "95% bootstrap intervals are wide; for the full sweep run "
             "`python -m robopretrain.evaluate checkpoint=<run>/stage3/<target>/checkpoint` (50 episodes per "
             "condition, every factor and level).", ""]
    for name, entry in sweep.items():
        lines += [f"**{name}** (`{Path(entry['eval_info']).relative_to(run_dir)}`)", "",
                  "| factor | level | success | 95% CI | drop vs nominal | episodes |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['factor']} | {r['level']} | {r['success']:.2f} | [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | "
                  f"{r['drop_vs_nominal']:+.2f} | {r['episodes']} |" for r in entry["rows"]]
        if entry.get("plot"):
            lines += ["", f"![robustness {name}]({Path(entry['plot']).relative_to(run_dir)})"]
        lines.append("")
    return lines


def write_report(cfg: DictConfig, run_dir: Path) -> Path:
    """``<run>/report.md``: stage timings, stage-2 per-task success, target results, plots and rollouts."""
    out_dir = run_dir / "evaluate"
    plots = plot_curves(run_dir, out_dir)
    lines = ["# robopretrain pipeline report", "",
             f"Run folder `{run_dir}`; encoder mode `{cfg.encoder.mode}`, stage-1 objective "
             f"`{cfg.stage1.objective if cfg.stage1.enabled else 'none'}`, encoder `{cfg.stage1.encoder}` at "
             f"{cfg.image_size} px, image keys {list(cfg.image_keys)}, state keys {list(cfg.state_keys)}.", "",
             "## Stages", "", "| stage | wall time (s) | finished at |", "|---|---|---|"]
    total = 0.0
    for stage in STAGES:
        marker = run_dir / stage / DONE
        if marker.is_file():
            d = read_json(marker)
            total += float(d["seconds"])
            lines.append(f"| {stage} | {d['seconds']:.1f} | {d['finished']} |")
    lines += [f"| **total** | **{total:.1f}** | |", ""]
    s2 = run_dir / "stage2" / DONE
    if s2.is_file() and (read_json(s2)["result"] or {}).get("final_eval"):
        ev = read_json(s2)["result"]["final_eval"]
        lines += ["## Stage 2: multi-task CQL, success per prior task", "", "| task | success |", "|---|---|"]
        lines += [f"| {k[len('eval/'):-len('/success')]} | {v:.2f} |" for k, v in ev.items()
                  if k.endswith("/success") and k != "eval/success"]
        lines += [f"| **mean** | **{ev['eval/success']:.2f}** |", ""]
    results = read_json(out_dir / "results.json")
    lines += ["## Target tasks", "",
              "| target | after adaptation (offline) | stage 3 final (training eval) | cumulative regret | "
              "final: " + " | final: ".join(next(iter(results.values()), {}).keys()) + " |",
              "|---|---|---|---|" + "---|" * len(next(iter(results.values()), {}))]
    for name, per in results.items():
        adapt = read_json(run_dir / "adapt" / name / "summary.json")["final_eval"]["eval/success"]
        s3 = read_json(run_dir / "stage3" / name / "summary.json")
        cells = " | ".join(f"{v['success']:.2f} ({cfg.evaluate.episodes} ep)" for v in per.values())
        regret = "n/a" if s3["cumulative_regret"] is None else f"{s3['cumulative_regret']:.2f}"
        lines.append(f"| {name} | {adapt:.2f} | {s3['final_success']:.2f} | {regret} | {cells} |")
    lines += robustness_report_lines(cfg, run_dir)
    lines += ["", "## Plots", ""] + [f"![{p.stem}](evaluate/{p.name})" for p in plots] + ["", "## Rollouts", ""]
    for gif in sorted(out_dir.glob("rollout_*.gif")):
        lines.append(f"![{gif.stem}](evaluate/{gif.name})")
    lines += ["", "Config:", "", "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    path = run_dir / "report.md"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- driver


def resolve_run_dir(cfg: DictConfig) -> Path:
    return config_folder(cfg, "run_dir")


def run_pipeline(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run every unfinished stage in order; returns ``{stage: "skipped" | seconds}`` and the report path."""
    run_dir = Path(run_dir) if run_dir is not None else resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    device = torch.device(str(cfg.device))
    targets_of(cfg)  # fail early on a bad target entry
    steps: dict[str, Callable[[], Any]] = {
        "data": lambda: stage_data(cfg, run_dir),
        "stage1": lambda: stage_stage1(cfg, run_dir),
        "stage2": lambda: stage_stage2(cfg, run_dir, device),
        "adapt": lambda: stage_adapt(cfg, run_dir, device),
        "stage3": lambda: stage_stage3(cfg, run_dir, device),
        "evaluate": lambda: stage_evaluate(cfg, run_dir, device),
    }
    ran: dict[str, Any] = {}
    for stage in STAGES:
        if is_done(run_dir, stage):
            log.info("stage %s: already done (%s), skipped", stage, run_dir / stage / DONE)
            ran[stage] = "skipped"
            continue
        torch.manual_seed(int(cfg.seed) + STAGES.index(stage))
        np.random.seed(int(cfg.seed) + STAGES.index(stage))
        start = time.perf_counter()
        log.info("stage %s: running", stage)
        result = steps[stage]()
        seconds = time.perf_counter() - start
        write_json(run_dir / stage / DONE, {"stage": stage, "seconds": seconds, "result": result,
                                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        ran[stage] = seconds
        print(f"[pipeline] {stage} done in {seconds:.1f} s", flush=True)
    report = write_report(cfg, run_dir)
    return {"stages": ran, "report": str(report), "run_dir": str(run_dir)}


@hydra.main(version_base="1.3", config_path="../configs", config_name="pipeline")
def main(cfg: DictConfig) -> None:
    out = run_pipeline(cfg)
    results = read_json(Path(out["run_dir"]) / "evaluate" / "results.json")
    for name, per in results.items():
        print(f"target {name}: " + ", ".join(f"{k} success {v['success']:.2f}" for k, v in per.items()))
    print(f"report: {out['report']}")


if __name__ == "__main__":
    main()
