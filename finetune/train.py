"""Stage 3 entry point: online fine-tuning (Cal-QL by default) of a stage-2 agent on a target task.

``python -m finetune.train checkpoint=/path/to/stage2/run task=PlaceInBowl`` (Hydra, ``configs/finetune.yaml``),
or :func:`finetune_online` from Python.

* ``checkpoint``: a stage-2 checkpoint folder (or a run folder holding ``checkpoints/``). Its meta data must
  match this config (obs dim from ``obs_keys`` and ``num_tasks``, action dim, algorithm), else a
  :class:`robopretrain.checkpoint.CheckpointError` says what differs. With ``checkpoint=null`` the run first
  trains offline itself (``offline.*`` settings, into ``<run>/offline``), as the offline-to-online experiment does.
* Offline data mixed into every batch: ``data`` (path, or generated), or the checkpoint's own data file when
  ``data.path`` is null and ``data.generate`` is false.
* The online loop is :func:`finetune.online.run_online` (UTD, mixing ratio, physics randomization ``dr``,
  returns-to-go per online episode, periodic evaluation, calibration gap, cumulative regret, resumable
  checkpoints with the replay buffer). After the run ``<run>/learning_curve.png`` is drawn.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from finetune.online import run_online
from robopretrain.checkpoint import CheckpointError, check_compatible, load_checkpoint, resolve_checkpoint_dir
from robopretrain.metrics import plot_learning_curve, read_jsonl
from robopretrain.train import (
    ACT_DIM,
    agent_meta,
    algo_name,
    build_agent,
    load_offline_dataset,
    resolve_data_path,
    resolve_run_dir,
    restore_agent,
    setup_torch,
    train_offline,
)

log = logging.getLogger(__name__)


def offline_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The stage-2 config of the in-run offline pretraining: this config with ``train := offline``."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["train"] = plain.pop("offline")
    plain["output_dir"] = str(run_dir)
    return OmegaConf.create(plain)


def pretrained_checkpoint(cfg: DictConfig, run_dir: Path) -> Path:
    """The stage-2 checkpoint to start from: ``cfg.checkpoint``, or one trained now in ``<run>/offline``."""
    if cfg.get("checkpoint"):
        return resolve_checkpoint_dir(str(cfg.checkpoint))
    off_dir = run_dir / "offline"
    log.info("no checkpoint given: training offline first in %s", off_dir)
    return train_offline(offline_config(cfg, off_dir), off_dir)


def offline_data_path(cfg: DictConfig, run_dir: Path, ckpt_meta: dict[str, Any]) -> Path:
    if cfg.data.get("path") or cfg.data.get("generate", False):
        return resolve_data_path(cfg.data, run_dir)
    if ckpt_meta.get("data_path") and Path(ckpt_meta["data_path"]).is_file():
        return Path(ckpt_meta["data_path"])
    raise ValueError("config key data.path is not set and the checkpoint's data file is not available; "
                     "give data.path=/path/to/target_demos.hdf5")


def finetune_online(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Offline checkpoint -> online fine-tuning on ``cfg.task``; returns the history and where things are."""
    run_dir = Path(run_dir) if run_dir is not None else resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = pretrained_checkpoint(cfg, run_dir)
    device = setup_torch(cfg)  # after offline pretraining, so the online phase's RNG depends on the seed only
    ckpt = load_checkpoint(ckpt_dir)
    data_path = offline_data_path(cfg, run_dir, ckpt.meta)
    offline, facts = load_offline_dataset(cfg, data_path, seed=int(cfg.seed) + 2)
    obs_dim = int(offline.arrays()["observations"].shape[1])
    check_compatible(ckpt.meta, obs_dim=obs_dim, act_dim=ACT_DIM, algo=algo_name(cfg), where=str(ckpt.path))
    agent = build_agent(cfg, obs_dim, ACT_DIM, device)
    restore_agent(agent, ckpt, with_optimizer=bool(cfg.online.get("keep_optimizer", True)))
    meta = {**agent_meta(cfg, obs_dim, ACT_DIM, facts, stage="online"), "pretrained_from": str(ckpt.path),
            "task": str(cfg.task)}
    history = run_online(cfg, agent, offline, run_dir, meta)
    offline_rows = []
    if (run_dir / "offline" / "metrics.jsonl").is_file():
        offline_rows = [r for r in read_jsonl(run_dir / "offline" / "metrics.jsonl") if "eval/success" in r]
    curve = plot_learning_curve(history, run_dir / "learning_curve.png",
                                title=f"{algo_name(cfg)} on {cfg.task} (seed {cfg.seed})")
    return {"history": history, "offline_history": offline_rows, "run_dir": str(run_dir),
            "pretrained_from": str(ckpt.path), "learning_curve": str(curve)}


@hydra.main(version_base="1.3", config_path="../configs", config_name="finetune")
def main(cfg: DictConfig) -> None:
    try:
        out = finetune_online(cfg)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    last = out["history"][-1]
    print(f"final success {last['eval/success']:.2f}, cumulative regret {last['train/cumulative_regret']:.3f}; "
          f"run folder {out['run_dir']}")


if __name__ == "__main__":
    main()
