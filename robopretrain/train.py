"""Stage 2: offline (multi-task) training of CQL / Cal-QL / IQL / BC on robomimic HDF5, state-based.

``python -m robopretrain.train`` (Hydra, ``configs/robopretrain.yaml``), or :func:`train_offline` from Python.

* Data: ``data.path`` (an HDF5 file), or generated first with :func:`sim_envs.collect.collect` when
  ``data.generate=true`` (``data.collect`` overrides ``configs/collect.yaml``; the file lands at ``data.path``
  or in the run folder and is reused by a resumed run). ``data.mask`` / ``data.tasks`` pick demos.
* Observations: the low-dim ``obs_keys`` concatenated plus the task one-hot of size ``num_tasks`` (PTR's
  task-ID conditioning; 11 = every sim_envs task, so stage-2 and stage-3 agents have the same input).
* Rewards: the sparse {0, 1} env reward times ``algo.reward_scale`` plus ``algo.reward_bias`` (Cal-QL: x10 - 5),
  applied before the Monte-Carlo returns-to-go are computed (REFERENCE.md, Stage 3).
* Every ``train.eval_every`` updates: success / return / length on ``train.eval_episodes`` fixed evaluation
  episodes per task (seeds disjoint from the data's), and the calibration gap on a fixed sample of the offline
  data (average Q on data and on policy actions next to the Monte-Carlo return).
* Output: ``<run>/checkpoints`` (self-describing, atomic, newest 2 kept), ``<run>/metrics.jsonl`` and
  TensorBoard logs in ``<run>/tb``. Rerunning the same command resumes from the last checkpoint (model,
  optimiser, RNG and sampler state): the Hydra run folder is ``outputs/robopretrain/<algo>_seed<seed>`` by
  default, or ``output_dir`` when set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from robopretrain.algos import make_agent
from robopretrain.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
    split_agent_state,
)
from robopretrain.data.hdf5 import load_transitions, read_info, select_demos
from robopretrain.data.replay import OfflineDataset
from robopretrain.evaluation import calibration, evaluate_policy
from robopretrain.metrics import MetricsLogger

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ACT_DIM = 4


# --------------------------------------------------------------------------- config helpers


def algo_name(cfg: DictConfig) -> str:
    return str(cfg.algo.name)


def agent_overrides(algo_cfg: DictConfig) -> dict[str, Any]:
    """The algo config as the agent's keyword overrides (``name`` dropped)."""
    out = OmegaConf.to_container(algo_cfg, resolve=True)
    out.pop("name", None)
    return out


def reward_transform(algo_cfg: DictConfig) -> tuple[float, float, bool]:
    """``(scale, bias, sparse)`` of the algorithm config (BC has none: 1, 0)."""
    return float(algo_cfg.get("reward_scale", 1.0)), float(algo_cfg.get("reward_bias", 0.0)), bool(
        algo_cfg.get("sparse_reward", True)
    )


def discount(algo_cfg: DictConfig) -> float:
    return float(algo_cfg.get("discount", 0.99))


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` when set, else the Hydra run folder (inside a Hydra app), else an error."""
    if cfg.get("output_dir"):
        return Path(str(cfg.output_dir)).expanduser()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        raise ValueError("output_dir is not set and no Hydra run is active; set output_dir=/path/to/run") from None


def setup_torch(cfg: DictConfig) -> torch.device:
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)
    return torch.device(str(cfg.get("device", "cpu")))


# --------------------------------------------------------------------------- data


def resolve_data_path(data_cfg: DictConfig, run_dir: Path) -> Path:
    """The HDF5 path: ``data.path``, generating it first with sim_envs.collect when ``data.generate``."""
    path = Path(str(data_cfg.path)).expanduser() if data_cfg.get("path") else None
    if not data_cfg.get("generate", False):
        if path is None:
            raise ValueError("config key data.path is not set; give an HDF5 file or set data.generate=true")
        if not path.is_file():
            raise FileNotFoundError(f"data.path={path}: file not found; expected a robomimic HDF5 from sim_envs.collect")
        return path
    path = path or run_dir / "robot_demos.hdf5"
    if path.is_file() and not data_cfg.get("regenerate", False):
        log.info("reusing generated dataset %s", path)
        return path
    from sim_envs.collect import collect

    collect_cfg = OmegaConf.load(CONFIG_DIR / "collect.yaml")
    collect_cfg.merge_with(OmegaConf.create(OmegaConf.to_container(data_cfg.get("collect", {}) or {}, resolve=True)))
    collect_cfg.output = str(path)
    collect_cfg.overwrite = True
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(collect(collect_cfg, progress=True))


def load_offline_dataset(
    cfg: DictConfig, path: Path, *, tasks: Sequence[str] | None = None, seed: int | None = None
) -> tuple[OfflineDataset, dict[str, Any]]:
    """Offline dataset of the selected demos with scaled rewards and returns-to-go; plus dataset facts for meta."""
    obs_keys = list(cfg.obs_keys)
    mask = cfg.data.get("mask")
    tasks = list(tasks) if tasks is not None else (list(cfg.data.tasks) if cfg.data.get("tasks") else None)
    info = read_info(path)
    demos = select_demos(info, mask=mask, tasks=tasks)
    trans = load_transitions(path, obs_keys, mask=mask, tasks=tasks)
    scale, bias, sparse = reward_transform(cfg.algo)
    dataset = OfflineDataset.from_transitions(
        trans, gamma=discount(cfg.algo), reward_scale=scale, reward_bias=bias, sparse_reward=sparse,
        flat_obs_keys=obs_keys, num_tasks=int(cfg.num_tasks), device=str(cfg.get("device", "cpu")),
        seed=int(cfg.seed) if seed is None else seed,
    )
    flat = dataset.arrays()["observations"][:, : -int(cfg.num_tasks)]
    facts = {
        "data_path": str(path),
        "obs_keys": obs_keys,
        "obs_shapes": {k: list(info.obs_specs[k][0]) for k in obs_keys},
        "task_names": sorted({info.demo(d).task for d in demos}),
        "task_ids": {t: int(i) for t, i in info.tasks.items()},
        "num_demos": len(demos),
        "num_transitions": len(dataset),
        "normalization": {"applied": False, "obs_mean": flat.mean(0).tolist(), "obs_std": flat.std(0).tolist()},
    }
    return dataset, facts


def calibration_indices(size: int, n: int, seed: int = 12345) -> np.ndarray:
    """A fixed set of row indices for calibration metrics (independent of the training sampler)."""
    return np.random.default_rng(seed).choice(size, size=min(n, size), replace=False)


# --------------------------------------------------------------------------- agent and checkpoints


def build_agent(cfg: DictConfig, obs_dim: int, act_dim: int, device: torch.device) -> Any:
    return make_agent(algo_name(cfg), obs_dim, act_dim, agent_overrides(cfg.algo), device=device)


def agent_meta(cfg: DictConfig, obs_dim: int, act_dim: int, facts: Mapping[str, Any], stage: str) -> dict[str, Any]:
    return {"stage": stage, "algo": algo_name(cfg), "obs_dim": int(obs_dim), "act_dim": int(act_dim),
            "num_tasks": int(cfg.num_tasks), **dict(facts)}


def restore_agent(agent: Any, ckpt: Checkpoint, with_optimizer: bool = True) -> None:
    """Load weights (and the optimiser state when the checkpoint has it) into ``agent``."""
    state = dict(ckpt.weights)
    fresh_optim = agent.state_dict()["optimizer"]
    state["optimizer"] = (ckpt.state or {}).get("optimizer", fresh_optim) if with_optimizer else fresh_optim
    try:
        agent.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the agent: {e}") from None


def save_agent_checkpoint(
    root: Path, step: int, cfg: DictConfig, agent: Any, meta: Mapping[str, Any], extra_state: Mapping[str, Any],
    keep: int,
) -> Path:
    weights, optim = split_agent_state(agent.state_dict())
    state = {**optim, "rng": rng_state(), **dict(extra_state)}
    return save_checkpoint(root, step, cfg, weights, meta, state, keep=keep)


# --------------------------------------------------------------------------- evaluation


def evaluate_tasks(agent: Any, cfg: DictConfig, tasks: Sequence[str], num_episodes: int) -> dict[str, float]:
    """Per-task and mean success / return / length on the fixed evaluation episodes."""
    out: dict[str, float] = {}
    per_task = []
    for task in tasks:
        res = evaluate_policy(agent, task, num_episodes, obs_keys=list(cfg.obs_keys), num_tasks=int(cfg.num_tasks),
                              randomization=dr_setting(cfg.dr))
        per_task.append(res)
        if len(tasks) > 1:
            out.update({f"{task}/{k}": v for k, v in res.items()})
    for k in ("success", "return", "length"):
        out[k] = float(np.mean([r[k] for r in per_task]))
    return out


def dr_setting(dr_cfg: DictConfig | None) -> Any:
    """The env's ``randomization`` argument from a ``dr`` config group entry."""
    if dr_cfg is None:
        return "none"
    d = OmegaConf.to_container(dr_cfg, resolve=True)
    level = d.get("level", "none")
    if level == "none":
        return "none"
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------- main loop


def train_offline(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """Train offline as ``cfg`` says; returns the folder of the final checkpoint. Resumes when it can."""
    run_dir = Path(run_dir) if run_dir is not None else resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = setup_torch(cfg)
    data_path = resolve_data_path(cfg.data, run_dir)
    dataset, facts = load_offline_dataset(cfg, data_path)
    obs_dim = int(dataset.arrays()["observations"].shape[1])
    agent = build_agent(cfg, obs_dim, ACT_DIM, device)
    meta = agent_meta(cfg, obs_dim, ACT_DIM, facts, stage="offline")
    tcfg = cfg.train
    eval_tasks = list(tcfg.eval_tasks) if tcfg.get("eval_tasks") else facts["task_names"]
    ckpt_root = run_dir / "checkpoints"
    logger = MetricsLogger(run_dir, tensorboard=bool(tcfg.get("tensorboard", True)))
    start = resume_offline(cfg, ckpt_root, agent, dataset, obs_dim) if cfg.get("resume", True) else 0
    logger.truncate_after(start)
    total = int(tcfg.steps)
    calib_batch = dataset.get(calibration_indices(len(dataset), int(tcfg.calibration_batch)))
    last_ckpt = None

    def evaluate_and_log(step: int) -> dict[str, float]:
        row = {f"eval/{k}": v for k, v in evaluate_tasks(agent, cfg, eval_tasks, int(tcfg.eval_episodes)).items()}
        row.update({f"calib/offline_{k}": v for k, v in calibration(agent, calib_batch).items()})
        logger.log(step, row)
        return row

    bs = int(cfg.algo.get("batch_size", 256))
    bar = tqdm(total=total, initial=start, desc=f"offline {algo_name(cfg)}", unit="upd", dynamic_ncols=True,
               disable=not tcfg.get("progress", True))
    try:
        if start == 0 and tcfg.get("eval_at_start", False):
            evaluate_and_log(0)
        for step in range(start + 1, total + 1):
            with_metrics = step % int(tcfg.log_every) == 0
            metrics = agent.update(dataset.sample(bs), with_metrics=with_metrics)
            bar.update(1)
            if with_metrics:
                logger.log(step, {f"train/{k}": v for k, v in metrics.items()})
            if step % int(tcfg.eval_every) == 0 or step == total:
                row = evaluate_and_log(step)
                bar.set_postfix(success=f"{row['eval/success']:.2f}", refresh=False)
            if step % int(tcfg.checkpoint_every) == 0 or step == total:
                last_ckpt = save_agent_checkpoint(ckpt_root, step, cfg, agent, meta,
                                                  {"dataset": dataset.state_dict(), "step": step},
                                                  int(tcfg.keep_checkpoints))
    finally:
        bar.close()
        logger.close()
    if last_ckpt is None:  # already finished before this call
        latest = load_latest(ckpt_root, with_state=False)
        if latest is None:
            raise RuntimeError(f"{run_dir}: train.steps={total} produced no checkpoint")
        last_ckpt = latest.path
    return last_ckpt


def resume_offline(cfg: DictConfig, ckpt_root: Path, agent: Any, dataset: OfflineDataset, obs_dim: int) -> int:
    """Restore the newest checkpoint under ``ckpt_root`` (if any); returns the step to continue from."""
    ckpt = load_latest(ckpt_root)
    if ckpt is None:
        return 0
    check_compatible(ckpt.meta, obs_dim=obs_dim, act_dim=ACT_DIM, algo=algo_name(cfg), where=str(ckpt.path))
    restore_agent(agent, ckpt)
    if ckpt.state is not None:
        set_rng_state(ckpt.state["rng"])
        dataset.load_state_dict(ckpt.state["dataset"])
    log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt.step


@hydra.main(version_base="1.3", config_path="../configs", config_name="robopretrain")
def main(cfg: DictConfig) -> None:
    path = train_offline(cfg)
    print(f"checkpoint: {path}")


if __name__ == "__main__":
    main()
