"""Stage 2: offline (multi-task) training of CQL / Cal-QL / IQL / BC on robomimic HDF5, on states or on images.

``python -m robopretrain.train`` (Hydra, ``configs/robopretrain.yaml``), or :func:`train_offline` from Python;
``torchrun --nproc_per_node=N -m robopretrain.train ...`` trains data-parallel.

* Data: ``data.path`` (an HDF5 file), or generated first with :func:`sim_envs.collect.collect` when
  ``data.generate=true`` (``data.collect`` overrides ``configs/collect.yaml``; the file lands at ``data.path``
  or in the run folder and is reused by a resumed run). ``data.mask`` / ``data.tasks`` pick demos.
* Observations, state-based (``image_keys: []``, the default): the low-dim ``obs_keys`` concatenated plus the
  task one-hot of size ``num_tasks`` (PTR's task-ID conditioning; 11 = every sim_envs task, so stage-2 and
  stage-3 agents have the same input).
* Observations, images (``image_keys: [agentview_image]``, optionally ``eye_in_hand_image``): an
  :class:`~robopretrain.image_agent.ImageAgent` sees ``encoder(image) ++ obs_keys ++ task one-hot`` (set
  ``obs_keys=[proprio]``: the object state is privileged). The ``encoder`` group picks the transfer mode from a
  stage-1 encoder checkpoint (``finetune`` / ``frozen`` / ``frozen_cached`` / ``scratch``; ``mode: null`` means
  finetune with a checkpoint, scratch without), separate or shared actor/critic encoders, DrQ shift and the
  encoder learning rate. The data, the agent and the evaluation are those of the image pipeline
  (:mod:`robopretrain.image_rl`); checkpoints are :mod:`robopretrain.image_checkpoint` folders, which stage 3
  and :func:`robopretrain.image_checkpoint.load_image_agent` rebuild without the stage-1 file.
* Rewards: the sparse {0, 1} env reward times ``algo.reward_scale`` plus ``algo.reward_bias`` (Cal-QL: x10 - 5),
  applied before the Monte-Carlo returns-to-go are computed (REFERENCE.md, Stage 3).
* Every ``train.eval_every`` updates: success / return / length on ``train.eval_episodes`` fixed evaluation
  episodes per task in sim (seeds disjoint from the data's; rendered images for image agents), and the
  calibration gap on a fixed sample of the offline data (average Q on data and on policy actions next to the
  Monte-Carlo return).
* A NaN / inf loss stops the run (:func:`robopretrain.guards.finite_metrics_hook`) before the next checkpoint is
  written; metrics are computed on every log, evaluation and checkpoint step. Out-of-range config values fail at
  start (:func:`robopretrain.config_checks.validate_offline_config`); the command line reports bad input on one
  line with exit code 2 (:mod:`robopretrain.cli`).
* Data-parallel (:mod:`robopretrain.distributed`, :mod:`robopretrain.agent_parallel`): under torchrun every rank
  holds a replica of the agent, draws its own batches (rank-specific data seed) and averages gradients over the
  ranks before each optimiser step, so the effective batch size is ``algo.batch_size x world size`` (logged and
  in ``meta.json``: ``parallel``). Rank 0 writes logs and checkpoints; the evaluation tasks are split over the
  ranks. Checkpoints keep every rank's RNG and sampler state, so a run resumes exactly under torchrun too.
* Output: ``<run>/checkpoints`` (self-describing, atomic, newest 2 kept), ``<run>/metrics.jsonl`` and
  TensorBoard logs in ``<run>/tb``. Rerunning the same command resumes from the last checkpoint (model,
  optimiser, RNG and sampler state; an unreadable newest checkpoint falls back to the previous one): the Hydra
  run folder is ``outputs/robopretrain/<algo>_seed<seed>`` by default, or ``output_dir`` when set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from robopretrain import distributed as dist_utils
from robopretrain.agent_parallel import (
    agent_replica_max_abs_diff,
    any_rank,
    average_gradients,
    broadcast_agent,
    gather_objects,
)
from robopretrain.algos import make_agent
from robopretrain.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    checkpoint_name,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
    split_agent_state,
)
from robopretrain.cli import config_folder, friendly_errors, run_hydra
from robopretrain.config_checks import validate_offline_config
from robopretrain.data.hdf5 import DatasetError, DatasetInfo, load_transitions, read_info, select_demos
from robopretrain.data.replay import OfflineDataset
from robopretrain.distributed import DistInfo
from robopretrain.evaluation import calibration, evaluate_policy
from robopretrain.guards import NonFiniteLossError, finite_metrics_hook
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


def image_keys_of(cfg: DictConfig) -> list[str]:
    """The image observation keys of the run; empty for a state-based run (configs without the key too)."""
    return [str(k) for k in (cfg.get("image_keys") or [])]


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` when set, else the Hydra run folder (inside a Hydra app), else an error."""
    return config_folder(cfg, "output_dir")


def setup_torch(cfg: DictConfig) -> torch.device:
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)
    return torch.device(str(cfg.get("device", "cpu")))


def validate_image_config(cfg: DictConfig) -> None:
    """Range checks of ``image_keys`` and the ``encoder`` group (image runs only), naming the bad key."""
    from robopretrain.image_agent import ENCODER_MODES

    keys = image_keys_of(cfg)
    if not keys:
        return
    if len(set(keys)) != len(keys):
        raise ValueError(f"robopretrain config: image_keys={keys}; expected distinct keys")
    enc = cfg.get("encoder")
    if enc is None:
        raise ValueError("robopretrain config: image_keys is set but there is no encoder group; see "
                         "configs/robopretrain.yaml")
    mode = enc.get("mode")
    if mode is not None and mode not in ENCODER_MODES:
        raise ValueError(f"robopretrain config: encoder.mode={mode!r}; expected one of {list(ENCODER_MODES)} or null")
    if mode is not None and mode != "scratch" and not enc.get("checkpoint"):
        raise ValueError(f"robopretrain config: encoder.mode={mode} needs encoder.checkpoint (a stage-1 encoder "
                         "folder, e.g. <stage-1 run>/encoder); or use encoder.mode=scratch")
    checks = {"augment_pad": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
              "lr": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number"),
              "feature_batch": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                                "an integer >= 1")}
    for key, (ok, expected) in checks.items():
        if key in enc and not ok(enc[key]):
            raise ValueError(f"robopretrain config: encoder.{key}={enc[key]!r}; expected {expected}")


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
        log.info("using the existing dataset %s (data.generate: not collected again; data.regenerate=true collects anew)", path)
        return path
    from sim_envs.collect import collect

    collect_cfg = OmegaConf.load(CONFIG_DIR / "collect.yaml")
    collect_cfg.merge_with(OmegaConf.create(OmegaConf.to_container(data_cfg.get("collect", {}) or {}, resolve=True)))
    collect_cfg.output = str(path)
    collect_cfg.overwrite = True
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(collect(collect_cfg, progress=True))


def dataset_facts(cfg: DictConfig, path: Path, info: DatasetInfo, keys: Sequence[str], state: np.ndarray,
                  num_transitions: int, tasks: Sequence[str] | None) -> dict[str, Any]:
    """What ``meta.json`` records about the data: keys and shapes, tasks, sizes, low-dim statistics."""
    demos = select_demos(info, mask=cfg.data.get("mask"), tasks=tasks)
    return {
        "data_path": str(path),
        "obs_keys": list(cfg.obs_keys),
        "obs_shapes": {k: list(info.obs_specs[k][0]) for k in keys},
        "task_names": sorted({info.demo(d).task for d in demos}),
        "task_ids": {t: int(i) for t, i in info.tasks.items()},
        "num_demos": len(demos),
        "num_transitions": int(num_transitions),
        "normalization": {"applied": False, "obs_mean": state.mean(0).tolist(), "obs_std": state.std(0).tolist()},
    }


def _tasks_of(cfg: DictConfig, tasks: Sequence[str] | None) -> list[str] | None:
    return list(tasks) if tasks is not None else (list(cfg.data.tasks) if cfg.data.get("tasks") else None)


def load_offline_dataset(
    cfg: DictConfig, path: Path, *, tasks: Sequence[str] | None = None, seed: int | None = None
) -> tuple[OfflineDataset, dict[str, Any]]:
    """Offline dataset of the selected demos with scaled rewards and returns-to-go; plus dataset facts for meta."""
    obs_keys = list(cfg.obs_keys)
    mask = cfg.data.get("mask")
    tasks = _tasks_of(cfg, tasks)
    info = read_info(path)
    trans = load_transitions(path, obs_keys, mask=mask, tasks=tasks)
    scale, bias, sparse = reward_transform(cfg.algo)
    dataset = OfflineDataset.from_transitions(
        trans, gamma=discount(cfg.algo), reward_scale=scale, reward_bias=bias, sparse_reward=sparse,
        flat_obs_keys=obs_keys, num_tasks=int(cfg.num_tasks), device=str(cfg.get("device", "cpu")),
        seed=int(cfg.seed) if seed is None else seed,
    )
    flat = dataset.arrays()["observations"][:, : -int(cfg.num_tasks)]
    return dataset, dataset_facts(cfg, path, info, obs_keys, flat, len(dataset), tasks)


def image_size_of_data(info: DatasetInfo, image_keys: Sequence[str]) -> int:
    """The side of the square uint8 ``(H, W, 3)`` images stored under ``image_keys`` (one size for all keys)."""
    sizes = set()
    for key in image_keys:
        if key not in info.obs_specs:
            raise DatasetError(f"{info.path}: image key {key!r} is not in the data; available: {sorted(info.obs_specs)}"
                               f" (collect with render_images=true{', eye_in_hand=true' if 'eye' in key else ''})")
        shape, dtype = info.obs_specs[key]
        if np.dtype(dtype) != np.uint8 or len(shape) != 3 or shape[2] != 3 or shape[0] != shape[1]:
            raise DatasetError(f"{info.path}: image_keys entry {key!r} is {np.dtype(dtype)} {tuple(shape)}; expected "
                               "square uint8 images (H, W, 3)")
        sizes.add(int(shape[0]))
    if len(sizes) != 1:
        raise DatasetError(f"{info.path}: image_keys {list(image_keys)} have different sizes {sorted(sizes)}")
    return sizes.pop()


def load_image_offline_dataset(
    cfg: DictConfig, path: Path, *, seed: int, device: torch.device
) -> tuple[OfflineDataset, dict[str, Any], int]:
    """The image pipeline's dataset (:func:`robopretrain.image_rl.load_image_dataset`), its facts, the image size."""
    from robopretrain.image_rl import RewardSpec, load_image_dataset

    image_keys, state_keys = image_keys_of(cfg), list(cfg.obs_keys)
    info = read_info(path)
    size = image_size_of_data(info, image_keys)
    scale, bias, sparse = reward_transform(cfg.algo)
    tasks = _tasks_of(cfg, None)
    dataset = load_image_dataset(path, image_keys, state_keys, int(cfg.num_tasks),
                                 RewardSpec(gamma=discount(cfg.algo), scale=scale, bias=bias, sparse=sparse),
                                 tasks=tasks, mask=cfg.data.get("mask"), seed=seed, device=device)
    state = dataset.arrays()["observations"]["state"][:, : -int(cfg.num_tasks)]
    facts = dataset_facts(cfg, path, info, [*image_keys, *state_keys], state, len(dataset), tasks)
    facts["image_keys"] = image_keys
    return dataset, facts, size


def calibration_indices(size: int, n: int, seed: int = 12345) -> np.ndarray:
    """A fixed set of row indices for calibration metrics (independent of the training sampler)."""
    return np.random.default_rng(seed).choice(size, size=min(n, size), replace=False)


# --------------------------------------------------------------------------- agent and checkpoints


def build_agent(cfg: DictConfig, obs_dim: int, act_dim: int, device: torch.device) -> Any:
    return make_agent(algo_name(cfg), obs_dim, act_dim, agent_overrides(cfg.algo), device=device)


def build_image_agent(cfg: DictConfig, state_dim: int, image_size: int, device: torch.device) -> Any:
    """The image agent the ``encoder`` group describes, for images of side ``image_size``."""
    from robopretrain.image_agent import ImageAgent, image_obs_config, image_size_of

    enc = cfg.encoder
    checkpoint = str(enc.checkpoint) if enc.get("checkpoint") else None
    mode = str(enc.mode) if enc.get("mode") else ("finetune" if checkpoint else "scratch")
    obs_cfg = image_obs_config({
        "image_keys": image_keys_of(cfg), "mode": mode, "encoder_checkpoint": checkpoint,
        "encoder_name": str(enc.name),
        "encoder_kwargs": OmegaConf.to_container(enc.kwargs, resolve=True) if enc.get("kwargs") else {},
        "image_size": int(image_size), "shared_encoder": bool(enc.shared), "augment_pad": int(enc.augment_pad),
        "encoder_lr": float(enc.lr), "feature_batch": int(enc.get("feature_batch", 512))})
    agent = ImageAgent(obs_cfg, state_dim, ACT_DIM, algo_name(cfg), agent_overrides(cfg.algo), device=device,
                       seed=int(cfg.seed))
    if image_size_of(agent.critic_encoder) != int(image_size):
        raise ValueError(f"encoder.checkpoint={checkpoint} takes {image_size_of(agent.critic_encoder)} px images but "
                         f"the data has {image_size} px ({image_keys_of(cfg)}); collect the data at that size or "
                         "pretrain the encoder at the data's size")
    log.info("image agent: %s encoder (%s), %d features + %d state dims", mode, agent.encoder_source.get("source"),
             agent.feature_dim, state_dim)
    return agent


def agent_meta(cfg: DictConfig, obs_dim: int, act_dim: int, facts: Mapping[str, Any], stage: str) -> dict[str, Any]:
    return {"stage": stage, "obs_type": "state", "algo": algo_name(cfg), "obs_dim": int(obs_dim),
            "act_dim": int(act_dim), "num_tasks": int(cfg.num_tasks), **dict(facts)}


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
    return summarize_tasks({task: evaluate_policy(agent, task, num_episodes, obs_keys=list(cfg.obs_keys),
                                                  num_tasks=int(cfg.num_tasks), randomization=dr_setting(cfg.dr))
                            for task in tasks})


def summarize_tasks(per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{task}/{metric}`` for every task (when there are several) and the means over tasks."""
    out: dict[str, float] = {}
    if len(per_task) > 1:
        for task, res in per_task.items():
            out.update({f"{task}/{k}": v for k, v in res.items()})
    for k in ("success", "return", "length"):
        out[k] = float(np.mean([r[k] for r in per_task.values()]))
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


# --------------------------------------------------------------------------- one run's pieces


@dataclass
class OfflineRun:
    """What differs between a state-based and an image run; the training loop is the same for both."""

    agent: Any
    dataset: OfflineDataset
    meta: dict[str, Any]
    evaluate_task: Callable[[str], dict[str, float]]  # one task's success / return / length in sim
    calibrate: Callable[[], dict[str, float]]  # Q next to the MC return on a fixed data sample
    save: Callable[[Path, int, Mapping[str, Any], int], Path]  # (root, step, state, keep) -> checkpoint folder
    restore: Callable[[Checkpoint], None]  # weights and optimiser state of a compatible checkpoint
    rng: Callable[[], dict[str, Any]]  # RNG states to save
    set_rng: Callable[[Mapping[str, Any]], None]


def state_run(cfg: DictConfig, data_path: Path, device: torch.device, data_seed: int) -> OfflineRun:
    """Flat ``obs_keys`` + task one-hot, a plain agent, :func:`evaluate_policy` episodes in sim."""
    dataset, facts = load_offline_dataset(cfg, data_path, seed=data_seed)
    obs_dim = int(dataset.arrays()["observations"].shape[1])
    agent = build_agent(cfg, obs_dim, ACT_DIM, device)
    calib = dataset.get(calibration_indices(len(dataset), int(cfg.train.calibration_batch)))

    def evaluate_task(task: str) -> dict[str, float]:
        return evaluate_policy(agent, task, int(cfg.train.eval_episodes), obs_keys=list(cfg.obs_keys),
                               num_tasks=int(cfg.num_tasks), randomization=dr_setting(cfg.dr))

    def save(root: Path, step: int, state: Mapping[str, Any], keep: int) -> Path:
        weights, optim = split_agent_state(agent.state_dict())
        return save_checkpoint(root, step, cfg, weights, meta, {**optim, **dict(state)}, keep=keep)

    def restore(ckpt: Checkpoint) -> None:
        check_run_compatible(ckpt, obs_type="state", obs_dim=obs_dim, algo=algo_name(cfg))
        restore_agent(agent, ckpt)

    meta = agent_meta(cfg, obs_dim, ACT_DIM, facts, stage="offline")
    return OfflineRun(agent, dataset, meta, evaluate_task, lambda: calibration(agent, calib), save, restore,
                      rng_state, set_rng_state)


def image_run(cfg: DictConfig, data_path: Path, device: torch.device, data_seed: int) -> OfflineRun:
    """Images + ``obs_keys`` + task one-hot through an :class:`~robopretrain.image_agent.ImageAgent`, evaluated on
    rendered images; the image pipeline's dataset, feature cache and evaluation, image checkpoints."""
    from robopretrain.image_checkpoint import image_agent_meta, save_image_checkpoint
    from robopretrain.image_rl import TargetSpec, agent_view, evaluate_images, image_calibration

    image_keys, state_keys = image_keys_of(cfg), list(cfg.obs_keys)
    if "object" in state_keys:
        log.warning("image run with obs_keys %s: the agent also sees the simulator's privileged object state; "
                    "set obs_keys=[proprio] for an image-only agent", state_keys)
    raw, facts, size = load_image_offline_dataset(cfg, data_path, seed=data_seed, device=device)
    state_dim = int(raw.arrays()["observations"]["state"].shape[1])
    agent = build_image_agent(cfg, state_dim, size, device)
    dataset = agent_view(raw, agent, data_seed)  # frozen_cached: features computed once
    calib = dataset.get(calibration_indices(len(dataset), int(cfg.train.calibration_batch)))
    randomization = dr_setting(cfg.dr)

    def evaluate_task(task: str) -> dict[str, float]:
        return evaluate_images(agent, TargetSpec(name=task), int(cfg.train.eval_episodes), image_keys=image_keys,
                               state_keys=state_keys, num_tasks=int(cfg.num_tasks), image_size=size,
                               randomization=randomization)

    def save(root: Path, step: int, state: Mapping[str, Any], keep: int) -> Path:
        return save_image_checkpoint(root, step, cfg, agent, meta, state=dict(state), keep=keep)

    def restore(ckpt: Checkpoint) -> None:
        check_run_compatible(ckpt, obs_type="image", obs_dim=agent.obs_dim, algo=algo_name(cfg),
                             image_keys=image_keys, mode=agent.cfg.mode)
        try:
            agent.load_state_dict(ckpt.weights, with_optimizer=True)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{ckpt.path}: weights do not fit the agent: {exc}") from None

    def rng() -> dict[str, Any]:
        return {**rng_state(), "augment": agent.generator.get_state()}

    def set_rng(state: Mapping[str, Any]) -> None:
        set_rng_state(state)
        if "augment" in state:
            agent.generator.set_state(state["augment"])

    meta = image_agent_meta(agent, state_keys=state_keys, num_tasks=int(cfg.num_tasks), stage="offline",
                            encoder_source=agent.encoder_source, **facts)
    calibrate = (lambda: image_calibration(agent, calib)) if agent.has_q else dict
    return OfflineRun(agent, dataset, meta, evaluate_task, calibrate, save, restore, rng, set_rng)


def check_run_compatible(ckpt: Checkpoint, *, obs_type: str, obs_dim: int, algo: str,
                         image_keys: Sequence[str] | None = None, mode: str | None = None) -> None:
    """:func:`check_compatible`, plus the observation type and, for images, the image keys and encoder mode."""
    have = ckpt.meta.get("obs_type", "state")
    problems = [] if have == obs_type else [f"obs_type: checkpoint has {have!r}, this config needs {obs_type!r}"]
    if obs_type == "image" and have == "image":
        saved = ckpt.meta.get("image_obs", {})
        if list(saved.get("image_keys", [])) != list(image_keys or []):
            problems.append(f"image_keys: checkpoint has {saved.get('image_keys')}, this config needs {list(image_keys or [])}")
        if saved.get("mode") != mode:
            problems.append(f"encoder.mode: checkpoint has {saved.get('mode')!r}, this config needs {mode!r}")
    if problems:
        raise CheckpointError(f"{ckpt.path}: checkpoint does not fit this config ({'; '.join(problems)}). Use another "
                              "output_dir or resume=false to start a fresh run.")
    check_compatible(ckpt.meta, obs_dim=obs_dim, act_dim=ACT_DIM, algo=algo, where=str(ckpt.path))


# --------------------------------------------------------------------------- main loop


def train_offline(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """Train offline as ``cfg`` says; returns the folder of the final checkpoint. Resumes when it can.

    Under torchrun (``WORLD_SIZE`` > 1) it trains data-parallel (NCCL on GPUs, gloo on CPU); rank 0 writes.
    """
    validate_offline_config(cfg)
    validate_image_config(cfg)
    run_dir = Path(run_dir) if run_dir is not None else resolve_run_dir(cfg)
    return dist_utils.run_on_ranks(lambda dinfo, device: _train_offline(cfg, run_dir, dinfo, device),
                                   torch.device(str(cfg.get("device", "cpu"))))


def check_eval_tasks(tasks: list[str]) -> list[str]:
    """The evaluation tasks, checked at start (evaluation runs them in sim, so they must be sim_envs tasks)."""
    import sim_envs

    unknown = [t for t in tasks if t not in sim_envs.TASKS]
    if unknown:
        raise ValueError(f"evaluation tasks {unknown} are not sim_envs tasks ({sorted(sim_envs.TASKS)}); set "
                         "train.eval_tasks to the tasks to evaluate in sim")
    return tasks


def guard_metrics(step: int, metrics: Mapping[str, float], dinfo: DistInfo) -> Mapping[str, float]:
    """:func:`finite_metrics_hook` on this rank's update metrics; under DDP every rank stops when one rank's are bad."""
    losses = {k: v for k, v in metrics.items() if "loss" in k}
    bad_here = not all(np.isfinite(v) for v in losses.values())
    if any_rank(bad_here, dinfo) and not bad_here:
        raise NonFiniteLossError(next(iter(losses), "loss"), float("nan"), step, "the non-finite value was on another rank")
    return finite_metrics_hook(step, metrics)


def _train_offline(cfg: DictConfig, run_dir: Path, dinfo: DistInfo, device: torch.device) -> Path:
    if dinfo.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    setup_torch(cfg)
    with dist_utils.main_first(dinfo):  # rank 0 generates the data, the others then reuse it
        data_path = resolve_data_path(cfg.data, run_dir)
    data_seed = dist_utils.rank_seed(int(cfg.seed), dinfo)
    make_run = image_run if image_keys_of(cfg) else state_run
    run = make_run(cfg, data_path, device, data_seed)
    agent, dataset = run.agent, run.dataset
    tcfg = cfg.train
    bs = int(cfg.algo.get("batch_size", 256))
    parallel = {"world_size": dinfo.world_size, "backend": dinfo.backend, "batch_size_per_process": bs,
                "effective_batch_size": bs * dinfo.world_size}
    run.meta["parallel"] = parallel
    if dinfo.enabled:
        broadcast_agent(agent, dinfo)
        average_gradients(agent, dinfo)
        log.info("data-parallel over %d processes (%s): effective batch size %d = %d x %d", dinfo.world_size,
                 dinfo.backend, bs * dinfo.world_size, bs, dinfo.world_size)
        if dinfo.rank:  # the model is built from the shared seed; each rank's own randomness differs from here on
            torch.manual_seed(data_seed)
            if hasattr(agent, "generator"):
                agent.generator.manual_seed(data_seed)
    eval_tasks = check_eval_tasks(list(tcfg.eval_tasks) if tcfg.get("eval_tasks") else run.meta["task_names"])
    ckpt_root = run_dir / "checkpoints"
    start = resume_run(run, ckpt_root, dinfo) if cfg.get("resume", True) else 0
    logger = MetricsLogger(run_dir, tensorboard=bool(tcfg.get("tensorboard", True))) if dinfo.is_main else None
    if logger is not None:
        logger.truncate_after(start)
    total = int(tcfg.steps)
    last_ckpt = None

    def evaluate_and_log(step: int) -> dict[str, float]:
        mine = {t: run.evaluate_task(t) for t in eval_tasks[dinfo.rank::dinfo.world_size]}
        per_task = {t: r for part in gather_objects(mine, dinfo) for t, r in part.items()}
        row = {f"eval/{k}": v for k, v in summarize_tasks({t: per_task[t] for t in eval_tasks}).items()}
        if logger is not None:
            row.update({f"calib/offline_{k}": v for k, v in run.calibrate().items()})
            logger.log(step, row)
        return row

    def checkpoint(step: int) -> Path:
        ranks = gather_objects({"rng": run.rng(), "dataset": dataset.state_dict()}, dinfo)
        diff = agent_replica_max_abs_diff(agent, dinfo)
        path = ckpt_root / checkpoint_name(step)
        if dinfo.is_main:
            state = {"rng": ranks[0]["rng"], "dataset": ranks[0]["dataset"], "step": step,
                     "world_size": dinfo.world_size}
            if dinfo.enabled:
                state["ranks"] = ranks
                logger.log(step, {"parallel/replica_max_abs_diff": diff})
                if diff != 0.0:
                    log.warning("replicas differ by %.3g after step %d (expected 0)", diff, step)
            path = run.save(ckpt_root, step, state, int(tcfg.keep_checkpoints))
        dist_utils.barrier(dinfo)  # every rank sees the new checkpoint before going on
        return path

    bar = tqdm(total=total, initial=start, desc=f"offline {algo_name(cfg)}", unit="upd", dynamic_ncols=True,
               disable=not tcfg.get("progress", True) or not dinfo.is_main)
    try:
        if start == 0 and tcfg.get("eval_at_start", False):
            evaluate_and_log(0)
        for step in range(start + 1, total + 1):
            log_now = step % int(tcfg.log_every) == 0
            eval_now = step % int(tcfg.eval_every) == 0 or step == total
            ckpt_now = step % int(tcfg.checkpoint_every) == 0 or step == total
            with_metrics = log_now or eval_now or ckpt_now  # a NaN is caught before the checkpoint is written
            metrics = agent.update(dataset.sample(bs), with_metrics=with_metrics)
            if with_metrics:
                metrics = guard_metrics(step, metrics, dinfo)
            bar.update(1)
            if log_now:
                means = dist_utils.mean_over_ranks(metrics, dinfo)
                if logger is not None:
                    logger.log(step, {f"train/{k}": v for k, v in means.items()})
            if eval_now:
                row = evaluate_and_log(step)
                bar.set_postfix(success=f"{row['eval/success']:.2f}", refresh=False)
            if ckpt_now:
                last_ckpt = checkpoint(step)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if last_ckpt is None:  # already finished before this call
        latest = load_latest(ckpt_root, with_state=False)
        if latest is None:
            raise RuntimeError(f"{run_dir}: train.steps={total} produced no checkpoint")
        last_ckpt = latest.path
    return last_ckpt


def resume_run(run: OfflineRun, ckpt_root: Path, dinfo: DistInfo) -> int:
    """Restore the newest checkpoint under ``ckpt_root`` (if any); returns the step to continue from.

    Each rank restores its own RNG and sampler state when the checkpoint was written with as many processes; with
    another number, rank 0 continues the saved stream and the other ranks start theirs fresh (logged).
    """
    ckpt = load_latest(ckpt_root)
    if ckpt is None:
        return 0
    run.restore(ckpt)
    if ckpt.state is not None:
        state = ckpt.state
        saved_world = int(state.get("world_size", 1))
        mine: Mapping[str, Any] | None = {"rng": state["rng"], "dataset": state["dataset"]}
        if "ranks" in state and saved_world == dinfo.world_size:
            mine = state["ranks"][dinfo.rank]
        elif saved_world != dinfo.world_size:
            log.warning("%s was written by a run with %d process(es), this run has %d: the data streams continue "
                        "differently (and the effective batch size changes)", ckpt.path, saved_world,
                        dinfo.world_size)
            mine = mine if dinfo.is_main else None
        if mine is not None:
            run.set_rng(mine["rng"])
            run.dataset.load_state_dict(mine["dataset"])
    log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt.step


@hydra.main(version_base="1.3", config_path="../configs", config_name="robopretrain")
@friendly_errors
def main(cfg: DictConfig) -> None:
    path = train_offline(cfg)
    if dist_utils.env_world()[0] == 0:
        print(f"checkpoint: {path}")


if __name__ == "__main__":
    run_hydra(main, "robopretrain")
