"""Image-based stage 2 and stage 3: datasets, target tasks, offline (multi-task / adaptation) and online loops.

Used by the pipeline (:mod:`robopretrain.pipeline`) and usable on its own:

* :class:`TargetSpec`: a task to act in. A sim_envs task by name, or any gymnasium env (a registered id, or an
  entry point ``"module:Class"``) with ``obs_map`` naming, for each of our observation keys
  (``agentview_image``, ``proprio``, ...), the key the env and its demo HDF5 use. ``task_id`` picks the slot of
  the task one-hot (sim_envs tasks: their own id).
* :func:`load_image_dataset`: robomimic HDF5 -> :class:`~robopretrain.data.replay.OfflineDataset` with dict
  observations ``{image keys: uint8, "state": proprio ++ task one-hot}``, rewards scaled and Monte-Carlo
  returns-to-go computed as the state-based path does; :func:`cache_features` turns it into feature vectors
  (``frozen_cached``).
* :func:`train_offline_images`: multi-task CQL on a sampler (the prior data, or a
  :class:`~robopretrain.data.replay.MixedSampler` of prior and target data for the 90/10 adaptation), resumable.
* :func:`run_online_images`: Cal-QL online on a target task with several envs in parallel (gymnasium vector env;
  ``AsyncVectorEnv`` with the ``spawn`` start method, each worker creating its env lazily), a 50/50 offline/online
  batch mix, returns-to-go per finished episode, resumable.
* :func:`evaluate_images`: success of the deterministic policy on fixed evaluation seeds, optionally writing a
  rollout GIF.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from robopretrain.data.hdf5 import load_transitions
from robopretrain.data.replay import MixedSampler, OfflineDataset, ReplayBuffer, task_one_hot
from robopretrain.data.returns import scale_rewards, sparse_negative_reward
from robopretrain.evaluation import EVAL_SEED
from robopretrain.guards import finite_metrics_hook
from robopretrain.image_agent import STATE_KEY, ImageAgent

log = logging.getLogger(__name__)

ACT_DIM = 4


# --------------------------------------------------------------------------- target tasks and envs


@dataclass
class TargetSpec:
    """A task the agent acts in: a sim_envs task, or any gymnasium env with an observation key map."""

    name: str
    env_id: str | None = None  # gymnasium id or "module:Class"; None: the sim_envs task ``name``
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    demos: str | None = None  # robomimic HDF5 of target demos; None: collected by the pipeline (sim_envs only)
    task_id: int | None = None  # slot in the task one-hot; None: the sim_envs id
    obs_map: dict[str, str] = field(default_factory=dict)  # our key -> the env's / HDF5's key
    max_episode_steps: int | None = None  # TimeLimit for entry-point envs without one

    @property
    def is_sim_envs(self) -> bool:
        return self.env_id is None

    def key(self, ours: str) -> str:
        return self.obs_map.get(ours, ours)

    def resolved_task_id(self) -> int:
        if self.task_id is not None:
            return int(self.task_id)
        if self.is_sim_envs:
            import sim_envs

            return int(sim_envs.tasks.TASK_IDS[self.name])
        raise ValueError(f"target {self.name!r}: task_id is required for an env that is not a sim_envs task")


def target_spec(entry: str | Mapping[str, Any]) -> TargetSpec:
    """A :class:`TargetSpec` from a task name or a mapping of its fields (unknown keys raise)."""
    if isinstance(entry, str):
        return TargetSpec(name=entry)
    valid = set(TargetSpec.__dataclass_fields__)
    unknown = sorted(set(entry) - valid)
    if unknown:
        raise ValueError(f"target {dict(entry).get('name')!r}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    kwargs = dict(entry)
    kwargs["env_kwargs"] = dict(kwargs.get("env_kwargs") or {})
    kwargs["obs_map"] = dict(kwargs.get("obs_map") or {})
    return TargetSpec(**kwargs)


def make_target_env(spec: TargetSpec, image_keys: Sequence[str], image_size: int, randomization: Any = "none",
                    render_size: int | None = None) -> gym.Env:
    """The env of ``spec`` (sim_envs: rendering ``image_keys`` at ``image_size`` with ``randomization``)."""
    from robopretrain.collector import target_env

    return target_env(spec.name, spec.env_id, spec.env_kwargs, spec.max_episode_steps, tuple(image_keys),
                      int(image_size), _plain(randomization))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def make_vector_env(spec: TargetSpec, num_envs: int, image_keys: Sequence[str], image_size: int,
                    randomization: Any, asynchronous: bool = True) -> gym.vector.VectorEnv:
    """``num_envs`` copies of the target env, autoreset off (:func:`robopretrain.collector.make_vector_env`).

    Async: spawned workers, each building its env lazily (EGL-safe)."""
    from robopretrain.collector import make_vector_env as vector_env

    return vector_env(_env_factory_of(spec, image_keys, image_size, randomization), num_envs, asynchronous)


def _env_factory_of(spec: TargetSpec, image_keys: Sequence[str], image_size: int,
                    randomization: Any) -> Callable[[], gym.Env]:
    """A picklable zero-argument factory of the target env (what a worker process calls).

    It holds plain values and :func:`robopretrain.collector.target_env`, so a spawned worker imports gymnasium and
    the env's own module, not torch."""
    from robopretrain.collector import target_env

    return functools.partial(target_env, spec.name, spec.env_id, dict(spec.env_kwargs), spec.max_episode_steps,
                             tuple(image_keys), int(image_size), _plain(randomization))


def stored_obs(obs: Mapping[str, Any], spec: TargetSpec, image_keys: Sequence[str], state_keys: Sequence[str],
               num_tasks: int) -> dict[str, np.ndarray]:
    """Env observation(s) -> ``{image keys: uint8, "state": state keys ++ task one-hot}`` (single or batched)."""
    out: dict[str, np.ndarray] = {}
    for k in image_keys:
        src = spec.key(k)
        if src not in obs:
            raise KeyError(f"target {spec.name!r}: observation has no {src!r} (for {k!r}); keys: {sorted(obs)}; "
                           f"map it with obs_map")
        out[k] = np.asarray(obs[src], dtype=np.uint8)
    parts = []
    for k in state_keys:
        src = spec.key(k)
        if src not in obs:
            raise KeyError(f"target {spec.name!r}: observation has no {src!r} (for {k!r}); keys: {sorted(obs)}")
        parts.append(np.asarray(obs[src], dtype=np.float32))
    state = np.concatenate(parts, axis=-1)
    one_hot = task_one_hot(spec.resolved_task_id(), num_tasks)
    out[STATE_KEY] = np.concatenate([state, np.broadcast_to(one_hot, (*state.shape[:-1], num_tasks))], axis=-1)
    return out


# --------------------------------------------------------------------------- datasets


@dataclass
class RewardSpec:
    gamma: float = 0.99
    scale: float = 10.0
    bias: float = -5.0
    sparse: bool = True


def load_image_dataset(path: str | os.PathLike, image_keys: Sequence[str], state_keys: Sequence[str], num_tasks: int,
                       reward: RewardSpec, *, tasks: Sequence[str] | None = None, mask: str | None = None,
                       key_map: Mapping[str, str] | None = None, task_id: int | None = None,
                       max_demos: int | None = None, seed: int = 0,
                       device: str | torch.device = "cpu") -> OfflineDataset:
    """Robomimic HDF5 -> offline dataset of dict observations (images uint8, ``state`` with the task one-hot).

    ``key_map`` maps our keys to the file's; ``task_id`` overrides the file's per-demo task ids (a foreign
    dataset); ``max_demos`` keeps the first demos only (e.g. the 10 target demos); batches land on ``device``.
    """
    key_map = dict(key_map or {})
    file_keys = [key_map.get(k, k) for k in (*image_keys, *state_keys)]
    demos = None
    if max_demos is not None:
        from robopretrain.data.hdf5 import read_info, select_demos

        demos = select_demos(read_info(path), mask=mask, tasks=tasks)[: int(max_demos)]
    trans = load_transitions(path, file_keys, mask=None if demos else mask, tasks=None if demos else tasks,
                             demos=demos)
    ids = np.full(len(trans), int(task_id)) if task_id is not None else trans.task_ids

    def convert(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = np.concatenate([obs[key_map.get(k, k)].astype(np.float32) for k in state_keys], axis=-1)
        out = {k: obs[key_map.get(k, k)] for k in image_keys}
        out[STATE_KEY] = np.concatenate([state, task_one_hot(ids, num_tasks)], axis=-1)
        return out

    trans.obs, trans.next_obs = convert(trans.obs), convert(trans.next_obs)
    return OfflineDataset.from_transitions(trans, gamma=reward.gamma, reward_scale=reward.scale,
                                           reward_bias=reward.bias, sparse_reward=reward.sparse, device=device,
                                           seed=seed)


def cache_features(dataset: OfflineDataset, agent: ImageAgent, seed: int = 0) -> OfflineDataset:
    """The same transitions with observations replaced by the frozen encoder's features (computed once)."""
    arrays = dataset.arrays()
    obs = agent.to_features(arrays["observations"])
    next_obs = agent.to_features(arrays["next_observations"])
    return OfflineDataset(obs, arrays["actions"], arrays["rewards"], next_obs, arrays["dones"],
                          arrays.get("mc_returns"), device=dataset.device, seed=seed)


def agent_view(dataset: OfflineDataset, agent: ImageAgent, seed: int) -> OfflineDataset:
    """The dataset in the form the agent trains on: features when cached, else the images themselves."""
    return cache_features(dataset, agent, seed) if agent.cfg.cached else dataset


# --------------------------------------------------------------------------- checkpoints of the loops


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` to a temp file in the same folder, then rename (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(np.random.get_state()[1].tolist())}


# --------------------------------------------------------------------------- evaluation


def evaluate_images(agent: ImageAgent, spec: TargetSpec, num_episodes: int, *, image_keys: Sequence[str],
                    state_keys: Sequence[str], num_tasks: int, image_size: int, randomization: Any = "none",
                    eval_seed: int = EVAL_SEED, video_path: Path | None = None) -> dict[str, float]:
    """Success rate / return / length of the deterministic policy; the first episode as a GIF when asked."""
    env = make_target_env(spec, image_keys, image_size, randomization)
    agent.train_mode(False)
    successes, returns, lengths = [], [], []
    frames: list[np.ndarray] = []
    try:
        for i in range(num_episodes):
            obs, _ = env.reset(seed=eval_seed + i)
            done, ret, length, success = False, 0.0, 0, False
            while not done:
                if video_path is not None and i == 0:
                    frames.append(_video_frame(env, obs, spec, image_keys))
                action = agent.act(stored_obs(obs, spec, image_keys, state_keys, num_tasks), deterministic=True)
                obs, reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
                ret += float(reward)
                length += 1
                success = success or bool(info.get("success", reward > 0))
                done = terminated or truncated
            if video_path is not None and i == 0:
                frames.append(_video_frame(env, obs, spec, image_keys))
            successes.append(success)
            returns.append(ret)
            lengths.append(length)
    finally:
        env.close()
        agent.train_mode(True)
    if video_path is not None and frames:
        write_gif(video_path, frames)
    return {"success": float(np.mean(successes)), "return": float(np.mean(returns)), "length": float(np.mean(lengths))}


def _video_frame(env: gym.Env, obs: Mapping[str, Any], spec: TargetSpec, image_keys: Sequence[str]) -> np.ndarray:
    render = getattr(env.unwrapped, "render_camera", None)
    if spec.is_sim_envs and render is not None:
        return np.asarray(render("agentview", size=128), dtype=np.uint8)
    return np.asarray(obs[spec.key(image_keys[0])], dtype=np.uint8)


def write_gif(path: Path, frames: Sequence[np.ndarray], fps: float = 20.0) -> Path:
    """An animated GIF of uint8 (H, W, 3) frames, written atomically."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    os.replace(tmp, path)
    return path


@torch.no_grad()
def image_calibration(agent: ImageAgent, batch: Mapping[str, Any]) -> dict[str, float]:
    """Average Q on data and deterministic policy actions next to the Monte-Carlo return of the same rows."""
    obs = batch["observations"]
    q_data = agent.q_values(obs, batch["actions"])
    pi = torch.as_tensor(agent.act(obs, deterministic=True), dtype=torch.float32)
    q_pi = agent.q_values(obs, pi)
    mc = batch["mc_returns"].float()
    return {"q_data": float(q_data.mean()), "q_policy": float(q_pi.mean()), "mc_return": float(mc.mean()),
            "gap_policy": float((q_pi - mc).mean())}


# --------------------------------------------------------------------------- offline loop


def train_offline_images(agent: ImageAgent, sampler: Any, steps: int, run_dir: Path, *, batch_size: int,
                         checkpoint_every: int, evaluate: Callable[[int], dict[str, float]] | None = None,
                         eval_every: int = 0, progress: bool = True, desc: str = "offline") -> list[dict[str, Any]]:
    """``steps`` updates on ``sampler`` batches, resumable from ``<run_dir>/state.pt``; returns the log rows.

    ``evaluate(step)`` runs every ``eval_every`` updates and at the end. Metrics are computed on log and
    checkpoint steps and a NaN / inf loss stops the loop (:func:`robopretrain.guards.finite_metrics_hook`) before
    the state is saved.
    """
    path = run_dir / "state.pt"
    state = load_state(path)
    start, rows = 0, []
    if state is not None:
        agent.load_state_dict(state["agent"])
        sampler.load_state_dict(state["sampler"])
        start, rows = int(state["step"]), json.loads(state["rows"])
        log.info("%s: resumed at update %d", desc, start)
    bar = tqdm(total=steps, initial=start, desc=desc, unit="upd", dynamic_ncols=True, disable=not progress)
    metrics: dict[str, float] = {}
    try:
        for step in range(start + 1, steps + 1):
            log_now = step % 100 == 0 or step == steps
            metrics = agent.update(sampler.sample(batch_size), with_metrics=log_now or step % checkpoint_every == 0)
            finite_metrics_hook(step, metrics)
            bar.update(1)
            if log_now:
                rows.append({"step": step, **{f"train/{k}": v for k, v in metrics.items()}})
            if evaluate is not None and ((eval_every and step % eval_every == 0) or step == steps):
                row = {"step": step, **{f"eval/{k}": v for k, v in evaluate(step).items()}}
                rows.append(row)
                bar.set_postfix(success=f"{row.get('eval/success', float('nan')):.2f}", refresh=False)
            if step % checkpoint_every == 0 or step == steps:
                save_state(path, {"agent": agent.state_dict(), "sampler": sampler.state_dict(), "step": step,
                                  "rows": json.dumps(rows)})
    finally:
        bar.close()
    return rows


# --------------------------------------------------------------------------- online loop


@dataclass
class OnlineSettings:
    """Settings of :func:`run_online_images` (pipeline ``stage3.*``, ``finetune.yaml`` ``online.*``)."""

    env_steps: int = 2000
    num_envs: int = 2
    asynchronous: bool = True  # envs in spawned worker processes (AsyncVectorEnv) when num_envs > 1
    utd: int = 1  # updates per env step
    offline_ratio: float = 0.5
    batch_size: int = 256
    buffer_capacity: int = 100_000
    eval_every: int = 1000
    eval_episodes: int = 10
    checkpoint_every: int = 1000  # env steps between checkpoints (written once every env finished its episode)
    progress: bool = True
    log_every: int = 100  # env steps between update-metric rows in metrics.jsonl / TensorBoard
    keep_checkpoints: int = 2
    calibration_batch: int = 256  # offline rows / newest online rows for the Q-vs-MC-return calibration
    tensorboard: bool = True


def online_buffer(agent: ImageAgent, spec: TargetSpec, image_keys: Sequence[str], image_size: int, state_dim: int,
                  reward: RewardSpec, capacity: int, seed: int) -> ReplayBuffer:
    if agent.cfg.cached:
        obs_spec: Any = agent.obs_dim
    else:
        obs_spec = {k: ((image_size, image_size, 3), np.uint8) for k in image_keys}
        obs_spec[STATE_KEY] = ((state_dim,), np.float32)
    neg = sparse_negative_reward(reward.scale, reward.bias) if reward.sparse else None
    return ReplayBuffer(capacity, obs_spec, ACT_DIM, gamma=reward.gamma, sparse_negative_reward=neg, seed=seed)


def run_online_images(agent: ImageAgent, offline: OfflineDataset, spec: TargetSpec, settings: OnlineSettings,
                      run_dir: Path, *, image_keys: Sequence[str], state_keys: Sequence[str], num_tasks: int,
                      image_size: int, randomization: Any, reward: RewardSpec, seed: int,
                      evaluate: Callable[[int], dict[str, float]], config: Mapping[str, Any] | None = None,
                      meta: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Cal-QL (or CQL) online on ``spec`` with ``settings.num_envs`` envs in worker processes; resumable.

    The loop is :func:`robopretrain.collector.collect_and_update` (synchronous collect-then-update, ``utd``
    updates per env step, returns-to-go per finished episode of each env, episode ``k`` reset with
    ``train_episode_seed(seed, k)``). Under ``run_dir`` it writes ``checkpoints/``: image-agent checkpoints
    (:func:`robopretrain.image_checkpoint.save_image_checkpoint`, ``config`` as their config and ``meta`` added to
    their meta data) whose state holds the replay buffer, sampler, RNGs (torch and the augmentation generator) and
    counters, so a rerun resumes exactly where the newest one was written; ``metrics.jsonl`` and TensorBoard logs
    (``tb/``). ``evaluate(env_steps)`` runs at step 0, every ``eval_every`` env steps and at the end; its result
    is logged with the calibration (average Q next to the Monte-Carlo return on a fixed offline sample and on the
    newest online rows) and the cumulative regret. Returns the evaluation history.
    """
    from dataclasses import asdict

    from robopretrain.checkpoint import load_latest, rng_state, set_rng_state
    from robopretrain.collector import Episode, VectorCollector, collect_and_update
    from robopretrain.image_checkpoint import image_agent_meta, save_image_checkpoint
    from robopretrain.metrics import MetricsLogger

    observations = offline.arrays()["observations"]
    state_dim = int(observations[STATE_KEY].shape[1]) if isinstance(observations, Mapping) else agent.state_dim
    buffer = online_buffer(agent, spec, image_keys, image_size, state_dim, reward, settings.buffer_capacity, seed + 1)
    sampler = MixedSampler(offline, buffer, settings.offline_ratio)
    ckpt_root = run_dir / "checkpoints"
    facts = {"task": spec.name, "target": asdict(spec), "randomization": _plain(randomization), **dict(meta or {})}
    facts.pop("stage", None)
    ckpt_meta = image_agent_meta(agent, state_keys=list(state_keys), num_tasks=int(num_tasks), stage="online", **facts)
    env_steps, started, successes, history = 0, 0, [], []
    latest = load_latest(ckpt_root)
    if latest is not None and latest.state is not None and "online" in latest.state:
        agent.load_state_dict(latest.weights, with_optimizer=True)
        set_rng_state(latest.state["rng"])
        agent.generator.set_state(latest.state["augment_rng"])
        sampler.load_state_dict(latest.state["sampler"])
        counters = latest.state["online"]
        env_steps, started = int(counters["env_steps"]), int(counters["started"])
        successes, history = json.loads(counters["successes"]), json.loads(counters["history"])
        log.info("online %s: resumed from %s at env step %d", spec.name, latest.path, env_steps)
    calib_rows = np.random.default_rng(12345).choice(len(offline), size=min(settings.calibration_batch, len(offline)),
                                                     replace=False)
    calib_offline = offline.get(calib_rows)

    def regret() -> float | None:
        """mean(1 - success) over the finished training episodes; None before the first one ends."""
        return float(np.mean(1.0 - np.asarray(successes))) if successes else None

    def eval_row(step: int) -> None:
        row = {"env_steps": step, "episodes": len(successes), "train/cumulative_regret": regret(),
               **{f"eval/{k}": v for k, v in evaluate(step).items()}}
        row.update({f"calib/offline_{k}": v for k, v in image_calibration(agent, calib_offline).items()})
        if len(buffer):
            newest = (buffer.ptr - 1 - np.arange(min(settings.calibration_batch, len(buffer)))) % buffer.capacity
            row.update({f"calib/online_{k}": v for k, v in image_calibration(agent, buffer.get(newest)).items()})
        history.append(row)
        logger.log(step, row)
        bar.set_postfix(success=f"{row.get('eval/success', float('nan')):.2f}", episodes=len(successes),
                        refresh=False)

    def checkpoint(step: int, begun: int) -> None:
        sampler_state = sampler.state_dict()
        sampler_state["online"]["pending"] = None  # episodes are stored whole; nothing is half-written
        state = {"rng": rng_state(), "augment_rng": agent.generator.get_state(), "sampler": sampler_state,
                 "online": {"env_steps": step, "started": begun, "successes": json.dumps(successes),
                            "history": json.dumps(history)}}
        save_image_checkpoint(ckpt_root, step, config if config is not None else {"online": asdict(settings)},
                              agent, ckpt_meta, state, keep=settings.keep_checkpoints)

    def store(ep: Episode) -> None:
        buffer.add_episode(ep.observations, ep.actions, scale_rewards(ep.rewards, reward.scale, reward.bias),
                           ep.next_observations, ep.terminals)
        successes.append(float(ep.success))

    def convert(obs: Mapping[str, Any]) -> Any:
        stored = stored_obs(obs, spec, image_keys, state_keys, num_tasks)
        return agent.to_features(stored) if agent.cfg.cached else stored

    logger = MetricsLogger(run_dir, tensorboard=settings.tensorboard)
    logger.truncate_after(env_steps)
    collector = VectorCollector(_env_factory_of(spec, image_keys, image_size, randomization), settings.num_envs,
                                convert=convert, seed=seed, asynchronous=settings.asynchronous)
    bar = tqdm(total=settings.env_steps, initial=min(env_steps, settings.env_steps), unit="step", dynamic_ncols=True,
               desc=f"online {agent.algo} {spec.name} x{settings.num_envs} envs", disable=not settings.progress)
    try:
        if not history:
            eval_row(0)
        collect_and_update(
            collector, lambda obs: agent.act(obs, deterministic=False), env_steps=env_steps, started=started,
            total=settings.env_steps, utd=settings.utd, eval_every=settings.eval_every, log_every=settings.log_every,
            checkpoint_every=settings.checkpoint_every, store=store,
            update=lambda with_metrics: agent.update(sampler.sample(settings.batch_size), with_metrics=with_metrics),
            on_log=lambda step, m: logger.log(step, {f"train/{k}": v for k, v in m.items()}),
            on_eval=eval_row, on_checkpoint=checkpoint, progress=bar)
    finally:
        bar.close()
        collector.close()
        logger.close()
    return history
