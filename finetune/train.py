"""Stage 3 entry point: online fine-tuning (Cal-QL by default) of a stage-2 agent on a target task.

``python -m finetune.train checkpoint=/path/to/stage2/run task=PlaceInBowl`` (Hydra, ``configs/finetune.yaml``),
or :func:`finetune_online` from Python. Bad input (a checkpoint that does not fit, a bad data file, a value out
of range) ends with one ``error: ...`` line and exit code 2 (:mod:`robopretrain.cli`); the config is range-checked
first (:func:`robopretrain.config_checks.validate_online_config`).

* ``checkpoint``: a stage-2 checkpoint folder (or a run folder holding ``checkpoints/``). A state-based one must
  match this config (obs dim from ``obs_keys`` and ``num_tasks``, action dim, algorithm), else a
  :class:`robopretrain.checkpoint.CheckpointError` says what differs. With ``checkpoint=null`` the run first
  trains offline itself (``offline.*`` settings, into ``<run>/offline``), as the offline-to-online experiment does.
* An *image-agent* checkpoint (:mod:`robopretrain.image_checkpoint`, e.g. from the stage-2 image command or a
  previous stage-3 image run) switches to images: the agent is rebuilt from the checkpoint alone (encoder
  architecture and mode, image keys and size, state keys, task one-hot, network sizes) with ``algo``'s training
  settings (Cal-QL by default; a CQL checkpoint continues as Cal-QL), the target demos with images (``data``) are
  the offline data, and :func:`robopretrain.image_rl.run_online_images` runs online on ``image.target`` (the
  sim_envs task ``task``, or any gymnasium env described as a :class:`robopretrain.image_rl.TargetSpec`) with
  physics + visual randomization ``image.randomization`` (level train). It writes image-agent checkpoints.
* Offline data mixed into every batch: ``data`` (path, or generated - with images at the checkpoint's size for an
  image agent), or the checkpoint's own data file when ``data.path`` is null and ``data.generate`` is false.
* Both paths collect with ``online.num_envs`` envs in worker processes while one learner updates (synchronous
  collect-then-update, :mod:`robopretrain.collector`): UTD per env step, offline/online mixing, returns-to-go per
  finished episode of each env, periodic evaluation, calibration gap, cumulative regret, update losses checked
  for NaN (:func:`robopretrain.guards.finite_metrics_hook`), resumable checkpoints with the replay buffer and RNG
  (rerun the same command). Metrics go to ``<run>/metrics.jsonl`` and TensorBoard (``<run>/tb``); after the run
  ``<run>/learning_curve.png`` is drawn.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from finetune.online import num_envs_of, run_online
from robopretrain.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    resolve_checkpoint_dir,
)
from robopretrain.cli import friendly_errors, run_hydra
from robopretrain.config_checks import validate_online_config
from robopretrain.image_agent import STATE_KEY, ImageAgent, image_obs_config
from robopretrain.image_checkpoint import is_image_checkpoint
from robopretrain.image_rl import (
    OnlineSettings,
    RewardSpec,
    TargetSpec,
    agent_view,
    evaluate_images,
    load_image_dataset,
    run_online_images,
    target_spec,
)
from robopretrain.metrics import plot_learning_curve, read_jsonl
from robopretrain.nets.encoders import make_encoder
from robopretrain.train import (
    ACT_DIM,
    agent_meta,
    agent_overrides,
    algo_name,
    build_agent,
    discount,
    load_offline_dataset,
    resolve_data_path,
    resolve_run_dir,
    restore_agent,
    reward_transform,
    setup_torch,
    train_offline,
)

log = logging.getLogger(__name__)

# Keys of the algorithm config that fix the networks' shapes: an image agent takes them from its checkpoint.
NETWORK_KEYS = ("actor_hidden", "critic_hidden", "num_critics", "critic_layer_norm")
IMAGE_ALGOS = ("cql", "calql")


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
    validate_online_config(cfg)
    num_envs_of(cfg.online)
    run_dir = Path(run_dir) if run_dir is not None else resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = pretrained_checkpoint(cfg, run_dir)
    device = setup_torch(cfg)  # after offline pretraining, so the online phase's RNG depends on the seed only
    ckpt = load_checkpoint(ckpt_dir)
    if is_image_checkpoint(ckpt):
        return finetune_images(cfg, run_dir, ckpt, device)
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


# --------------------------------------------------------------------------- image agents


def image_agent_for_online(cfg: DictConfig, ckpt: Checkpoint, device: torch.device) -> ImageAgent:
    """The image agent ``ckpt`` describes, as a ``cfg.algo`` learner (network sizes from the checkpoint)."""
    algo, saved_algo = algo_name(cfg), ckpt.meta.get("algo")
    if algo not in IMAGE_ALGOS or saved_algo not in IMAGE_ALGOS:
        raise CheckpointError(f"{ckpt.path}: checkpoint does not fit this config (image agents fine-tune with "
                              f"{' or '.join(IMAGE_ALGOS)}; checkpoint has {saved_algo!r}, this config needs "
                              f"{algo!r})")
    algo_cfg = agent_overrides(cfg.algo)
    saved = dict(ckpt.meta.get("algo_cfg") or {})
    for key in NETWORK_KEYS:
        if key in saved and saved[key] != algo_cfg.get(key):
            log.info("algo.%s=%s from the checkpoint (config has %s)", key, saved[key], algo_cfg.get(key))
            algo_cfg[key] = saved[key]
    try:
        enc = ckpt.meta["encoder"]
        encoder = make_encoder(enc["name"], int(enc["image_size"]), int(enc["in_channels"]), **dict(enc["kwargs"]))
        agent = ImageAgent(image_obs_config(ckpt.meta["image_obs"]), int(ckpt.meta["state_dim"]),
                           int(ckpt.meta["act_dim"]), algo, algo_cfg, device=device, seed=int(cfg.seed),
                           encoder=encoder)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path / 'meta.json'}: cannot rebuild the image agent: {exc}") from exc
    try:
        agent.load_state_dict(ckpt.weights, with_optimizer=bool(cfg.online.get("keep_optimizer", True)))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the agent its meta.json describes: {exc}") from exc
    return agent


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def image_target(cfg: DictConfig) -> TargetSpec:
    """``image.target`` as a :class:`robopretrain.image_rl.TargetSpec` (null: the sim_envs task ``task``)."""
    entry = OmegaConf.select(cfg, "image.target")
    if entry is None:
        return target_spec(str(cfg.task))
    return target_spec(_plain(entry))


def image_data_path(cfg: DictConfig, run_dir: Path, spec: TargetSpec, image_keys: list[str], image_size: int) -> Path:
    """The target demos with images: the target's ``demos``, ``data.path``, or collected now (sim_envs targets)."""
    if spec.demos:
        path = Path(str(spec.demos)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image.target.demos={path}: file not found; expected a robomimic HDF5")
        return path
    if cfg.data.get("path") and not cfg.data.get("generate", False):
        return resolve_data_path(cfg.data, run_dir)
    if not cfg.data.get("generate", False):
        raise ValueError("config key data.path is not set; give the target demos with images "
                         "(data.path=/path/to/target_demos.hdf5) or set data.generate=true")
    if not spec.is_sim_envs:
        raise ValueError(f"target {spec.name!r} is not a sim_envs task: give its demos (image.target.demos=...)")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data["path"] = data.get("path") or str(run_dir / "target_demos_images.hdf5")
    data["collect"] = {**dict(data.get("collect") or {}), "tasks": [spec.name], "render_images": True,
                       "image_size": int(image_size), "eye_in_hand": "eye_in_hand_image" in image_keys}
    return resolve_data_path(OmegaConf.create(data), run_dir)


def finetune_images(cfg: DictConfig, run_dir: Path, ckpt: Checkpoint, device: torch.device) -> dict[str, Any]:
    """Stage 3 for an image-agent checkpoint (see the module docstring); returns what :func:`finetune_online` does."""
    agent = image_agent_for_online(cfg, ckpt, device)
    meta = ckpt.meta
    image_keys, image_size = list(agent.cfg.image_keys), int(agent.cfg.image_size)
    state_keys, num_tasks = list(meta["state_keys"]), int(meta["num_tasks"])
    spec = image_target(cfg)
    scale, bias, sparse = reward_transform(cfg.algo)
    reward = RewardSpec(gamma=discount(cfg.algo), scale=scale, bias=bias, sparse=sparse)
    data_path = image_data_path(cfg, run_dir, spec, image_keys, image_size)
    max_demos = OmegaConf.select(cfg, "image.max_demos")
    if spec.is_sim_envs:
        offline = load_image_dataset(data_path, image_keys, state_keys, num_tasks, reward, tasks=[spec.name],
                                     max_demos=max_demos, seed=int(cfg.seed) + 2)
    else:
        offline = load_image_dataset(data_path, image_keys, state_keys, num_tasks, reward, key_map=spec.obs_map,
                                     task_id=spec.resolved_task_id(), max_demos=max_demos, seed=int(cfg.seed) + 2)
    state_dim = int(offline.arrays()["observations"][STATE_KEY].shape[1])
    if state_dim != agent.state_dim:
        raise CheckpointError(f"{ckpt.path}: checkpoint does not fit this config (state_dim: checkpoint has "
                              f"{agent.state_dim}, the data {data_path} gives {state_dim} for state keys {state_keys} "
                              f"and {num_tasks} tasks)")
    offline = agent_view(offline, agent, int(cfg.seed) + 2)
    rand = _plain(OmegaConf.select(cfg, "image.randomization", default="none")) if spec.is_sim_envs else "none"
    eval_rand = OmegaConf.select(cfg, "image.eval_randomization")
    eval_rand = rand if eval_rand is None else (_plain(eval_rand) if spec.is_sim_envs else "none")
    o = cfg.online
    settings = OnlineSettings(
        env_steps=int(o.env_steps), num_envs=num_envs_of(o), asynchronous=bool(o.get("asynchronous", True)),
        utd=int(o.utd), offline_ratio=float(o.offline_ratio), batch_size=int(cfg.algo.get("batch_size", 256)),
        buffer_capacity=int(o.buffer_capacity), eval_every=int(o.eval_every), eval_episodes=int(o.eval_episodes),
        checkpoint_every=int(o.checkpoint_every), progress=bool(o.get("progress", True)),
        log_every=int(o.log_every), keep_checkpoints=int(o.keep_checkpoints),
        calibration_batch=int(o.calibration_batch), tensorboard=bool(o.get("tensorboard", True)))

    def evaluate(_step: int) -> dict[str, float]:
        return evaluate_images(agent, spec, settings.eval_episodes, image_keys=image_keys, state_keys=state_keys,
                               num_tasks=num_tasks, image_size=image_size, randomization=eval_rand)

    history = run_online_images(
        agent, offline, spec, settings, run_dir, image_keys=image_keys, state_keys=state_keys, num_tasks=num_tasks,
        image_size=image_size, randomization=rand, reward=reward, seed=int(cfg.seed), evaluate=evaluate, config=cfg,
        meta={"pretrained_from": str(ckpt.path), "data_path": str(data_path), "pretrained_algo": meta.get("algo")})
    curve = plot_learning_curve(history, run_dir / "learning_curve.png",
                                title=f"{algo_name(cfg)} on {spec.name}, images (seed {cfg.seed})")
    return {"history": history, "offline_history": [], "run_dir": str(run_dir), "pretrained_from": str(ckpt.path),
            "learning_curve": str(curve), "obs_type": "image"}


@hydra.main(version_base="1.3", config_path="../configs", config_name="finetune")
@friendly_errors
def main(cfg: DictConfig) -> None:
    out = finetune_online(cfg)
    last = out["history"][-1]
    regret = last.get("train/cumulative_regret")
    print(f"final success {last['eval/success']:.2f}, cumulative regret "
          f"{'n/a' if regret is None else f'{regret:.3f}'}; run folder {out['run_dir']}")


if __name__ == "__main__":
    run_hydra(main, "finetune")
