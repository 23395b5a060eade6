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
import importlib
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
from robopretrain.evaluation import EVAL_SEED, train_episode_seed
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
    if spec.is_sim_envs:
        import sim_envs

        if spec.name not in sim_envs.TASKS:
            raise ValueError(f"target {spec.name!r} is not a sim_envs task ({sorted(sim_envs.TASKS)}); set env_id")
        return gym.make(sim_envs.env_id(spec.name), image_size=image_size, render_images=True,
                        eye_in_hand="eye_in_hand_image" in image_keys, randomization=_plain(randomization),
                        terminate_on_success=True, **spec.env_kwargs)
    env_id = str(spec.env_id)
    module_name, _, attr = env_id.partition(":")
    if attr:
        module = importlib.import_module(module_name)
        obj = getattr(module, attr, None)
        if isinstance(obj, type):
            env = obj(**spec.env_kwargs)
            if spec.max_episode_steps:
                env = gym.wrappers.TimeLimit(env, int(spec.max_episode_steps))
            return env
    return gym.make(env_id, **spec.env_kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _env_factory(spec: TargetSpec, image_keys: tuple[str, ...], image_size: int, randomization: Any) -> gym.Env:
    return make_target_env(spec, image_keys, image_size, randomization)


def make_vector_env(spec: TargetSpec, num_envs: int, image_keys: Sequence[str], image_size: int,
                    randomization: Any, asynchronous: bool = True) -> gym.vector.VectorEnv:
    """``num_envs`` copies of the target env. Async: spawned workers, each building its env lazily (EGL-safe)."""
    fn = functools.partial(_env_factory, spec, tuple(image_keys), int(image_size), _plain(randomization))
    mode = gym.vector.AutoresetMode.SAME_STEP
    if asynchronous and num_envs > 1:
        return gym.vector.AsyncVectorEnv([fn] * num_envs, context="spawn", autoreset_mode=mode, shared_memory=False)
    return gym.vector.SyncVectorEnv([fn] * num_envs, autoreset_mode=mode)


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
    env_steps: int = 2000
    num_envs: int = 2
    asynchronous: bool = True
    utd: int = 1
    offline_ratio: float = 0.5
    batch_size: int = 256
    buffer_capacity: int = 100_000
    eval_every: int = 1000
    eval_episodes: int = 10
    checkpoint_every: int = 1000
    progress: bool = True


def online_buffer(agent: ImageAgent, spec: TargetSpec, image_keys: Sequence[str], image_size: int, state_dim: int,
                  reward: RewardSpec, capacity: int, seed: int) -> ReplayBuffer:
    if agent.cfg.cached:
        obs_spec: Any = agent.obs_dim
    else:
        obs_spec = {k: ((image_size, image_size, 3), np.uint8) for k in image_keys}
        obs_spec[STATE_KEY] = ((state_dim,), np.float32)
    neg = sparse_negative_reward(reward.scale, reward.bias) if reward.sparse else None
    return ReplayBuffer(capacity, obs_spec, ACT_DIM, gamma=reward.gamma, sparse_negative_reward=neg, seed=seed)


def _row(tree: Mapping[str, np.ndarray] | np.ndarray, i: int) -> Any:
    return {k: v[i] for k, v in tree.items()} if isinstance(tree, Mapping) else tree[i]


def _stack(items: list[Any]) -> Any:
    if isinstance(items[0], Mapping):
        return {k: np.stack([it[k] for it in items]) for k in items[0]}
    return np.stack(items)


def run_online_images(agent: ImageAgent, offline: OfflineDataset, spec: TargetSpec, settings: OnlineSettings,
                      run_dir: Path, *, image_keys: Sequence[str], state_keys: Sequence[str], num_tasks: int,
                      image_size: int, randomization: Any, reward: RewardSpec, seed: int,
                      evaluate: Callable[[int], dict[str, float]]) -> list[dict[str, Any]]:
    """Cal-QL (or CQL) online on ``spec`` with ``settings.num_envs`` envs; resumable at evaluation points."""
    state_dim = int(offline.arrays()["observations"][STATE_KEY].shape[1]) if isinstance(
        offline.arrays()["observations"], Mapping) else agent.state_dim
    buffer = online_buffer(agent, spec, image_keys, image_size, state_dim, reward, settings.buffer_capacity, seed + 1)
    sampler = MixedSampler(offline, buffer, settings.offline_ratio)
    path = run_dir / "state.pt"
    saved = load_state(path)
    env_steps, history, successes = 0, [], []
    if saved is not None:
        agent.load_state_dict(saved["agent"])
        sampler.load_state_dict(saved["sampler"])
        env_steps, history = int(saved["env_steps"]), json.loads(saved["history"])
        successes = json.loads(saved["successes"])
        log.info("online %s: resumed at env step %d", spec.name, env_steps)

    def regret() -> float | None:
        """mean(1 - success) over the finished training episodes; None before the first one ends."""
        return float(np.mean(1.0 - np.asarray(successes))) if successes else None

    def eval_row() -> None:
        row = {"env_steps": env_steps, "episodes": len(successes), "train/cumulative_regret": regret(),
               **{f"eval/{k}": v for k, v in evaluate(env_steps).items()}}
        if len(buffer):
            row.update({f"calib/online_{k}": v for k, v in image_calibration(
                agent, buffer.sample(min(256, len(buffer)))).items()})
        history.append(row)

    def checkpoint() -> None:
        save_state(path, {"agent": agent.state_dict(), "sampler": sampler.state_dict(), "env_steps": env_steps,
                          "history": json.dumps(history), "successes": json.dumps(successes)})

    if env_steps >= settings.env_steps:
        return history
    if not history:
        eval_row()
    n = settings.num_envs
    venv = make_vector_env(spec, n, image_keys, image_size, randomization, settings.asynchronous)
    episode_base = len(successes) + 10_000 * (env_steps // max(1, settings.checkpoint_every))
    bar = tqdm(total=settings.env_steps, initial=env_steps, desc=f"online {spec.name}", unit="step",
               dynamic_ncols=True, disable=not settings.progress)
    scale_bias = (reward.scale, reward.bias)
    try:
        obs, _ = venv.reset(seed=[train_episode_seed(seed, episode_base + i) for i in range(n)])
        episodes: list[list[tuple[Any, np.ndarray, float, Any, float]]] = [[] for _ in range(n)]
        ep_success = [False] * n
        cur = stored_obs(obs, spec, image_keys, state_keys, num_tasks)
        cur = agent.to_features(cur) if agent.cfg.cached else cur
        last_ckpt = env_steps
        while env_steps < settings.env_steps:
            actions = np.asarray(agent.act(cur, deterministic=False), dtype=np.float32).reshape(n, ACT_DIM)
            obs, rew, term, trunc, info = venv.step(actions)
            done = np.logical_or(term, trunc)
            nxt_env = {k: np.array(v, copy=True) for k, v in obs.items()}
            if done.any():  # SAME_STEP autoreset: the true last observation is in info["final_obs"]
                for i in np.flatnonzero(done):
                    for k in nxt_env:
                        nxt_env[k][i] = info["final_obs"][i][k]
            nxt = stored_obs(nxt_env, spec, image_keys, state_keys, num_tasks)
            nxt = agent.to_features(nxt) if agent.cfg.cached else nxt
            r = scale_rewards(np.asarray(rew, dtype=np.float32), *scale_bias)
            for i in range(n):
                episodes[i].append((_row(cur, i), actions[i], float(r[i]), _row(nxt, i), float(term[i])))
                ep_success[i] = ep_success[i] or bool(rew[i] > 0)
                if done[i]:
                    steps = episodes[i]
                    buffer.add_episode(_stack([s[0] for s in steps]), np.stack([s[1] for s in steps]),
                                       np.array([s[2] for s in steps], np.float32), _stack([s[3] for s in steps]),
                                       np.array([s[4] for s in steps], np.float32))
                    successes.append(float(ep_success[i]))
                    episodes[i], ep_success[i] = [], False
            cur = stored_obs(obs, spec, image_keys, state_keys, num_tasks)
            cur = agent.to_features(cur) if agent.cfg.cached else cur
            for _ in range(n * settings.utd):
                agent.update(sampler.sample(settings.batch_size), with_metrics=False)
            before = env_steps
            env_steps += n
            bar.update(n)
            if env_steps // settings.eval_every > before // settings.eval_every or env_steps >= settings.env_steps:
                eval_row()
                bar.set_postfix(success=f"{history[-1]['eval/success']:.2f}", episodes=len(successes), refresh=False)
                if env_steps - last_ckpt >= settings.checkpoint_every or env_steps >= settings.env_steps:
                    checkpoint()  # unfinished episodes are dropped; a resumed run starts fresh ones
                    last_ckpt = env_steps
    finally:
        bar.close()
        venv.close()
    return history
