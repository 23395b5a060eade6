"""Stage 3 online loop: collect with parallel envs, mix offline and online data, update, evaluate.

``online.num_envs`` envs collect in worker processes while one learner updates (REFERENCE.md, Stage 3, Cal-QL).
The design is synchronous collect-then-update (:mod:`robopretrain.collector`): each round the learner's policy
acts for every env at once, the envs step in parallel (a gymnasium ``AsyncVectorEnv`` with ``spawn`` workers that
build their env lazily, or in this process for one env / ``online.asynchronous=false``), then the learner runs
``online.utd`` updates per env step collected. Collection and learning alternate, so a run is reproducible on CPU
for any number of envs.

* the env is the target task with physics randomization from ``cfg.dr`` (re-sampled at every reset);
  training episode ``k`` (counted over all envs) is reset with :func:`robopretrain.evaluation.train_episode_seed`
  ``(seed, k)``, disjoint from the fixed evaluation seeds;
* each env's transitions (reward already scaled/biased per the algorithm config) are kept until its episode
  ends, then written to the online :class:`~robopretrain.data.replay.ReplayBuffer` as one episode, which
  computes its Monte-Carlo returns-to-go, so Cal-QL's calibration stays on online (the official code's
  behaviour);
* updates use batches from a :class:`~robopretrain.data.replay.MixedSampler` (``online.offline_ratio`` of each
  batch from the offline data); the UTD ratio is per env step: ``utd x`` (env steps collected) updates per round;
* every ``online.eval_every`` env steps (and at step 0, the offline starting point): success / return / length
  on fixed evaluation episodes, average Q on data and on policy actions next to the Monte-Carlo return on
  a fixed offline sample and on the newest online data (the calibration gap), and the cumulative regret
  ``mean(1 - success)`` over the training episodes so far;
* update metrics are requested on logging and checkpoint rounds and checked by
  :func:`robopretrain.guards.finite_metrics_hook`, so a NaN loss stops the run before a checkpoint is written;
* checkpoints (agent, optimiser, RNG, replay buffer, sampler state, counters, history) are written once
  ``online.checkpoint_every`` env steps have passed and every env has finished its episode (the collector
  starts no new episodes meanwhile); all envs then restart with the next episode seeds, as a resumed run does,
  so a killed run resumes to exactly the weights of an uninterrupted one (tests/test_kill_resume.py).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from robopretrain.checkpoint import load_latest, set_rng_state
from robopretrain.collector import Episode, VectorCollector, collect_and_update, sim_env
from robopretrain.data.replay import MixedSampler, OfflineDataset, ReplayBuffer, append_task_one_hot, flatten_obs
from robopretrain.data.returns import scale_rewards, sparse_negative_reward
from robopretrain.evaluation import calibration
from robopretrain.metrics import MetricsLogger
from robopretrain.train import (
    ACT_DIM,
    calibration_indices,
    discount,
    dr_setting,
    evaluate_tasks,
    restore_agent,
    reward_transform,
    save_agent_checkpoint,
)

log = logging.getLogger(__name__)


@dataclass
class OnlineState:
    """Counters of the online phase (saved in checkpoints)."""

    env_steps: int = 0
    episodes: int = 0  # finished training episodes (in the replay buffer)
    started: int = 0  # training episodes begun (their reset seeds are taken): the next one is number ``started``
    successes: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def regret(self) -> float:
        """Cumulative regret: mean(1 - success) over the training episodes so far (0 before the first)."""
        return float(np.mean(1.0 - np.asarray(self.successes))) if self.successes else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "episodes": self.episodes, "started": self.started,
                "successes": torch.tensor(self.successes), "returns": torch.tensor(self.returns)}

    def load_state_dict(self, state: Mapping[str, Any], history: list[dict[str, Any]]) -> None:
        self.env_steps = int(state["env_steps"])
        self.episodes = int(state["episodes"])
        self.started = int(state.get("started", self.episodes))
        self.successes = [float(x) for x in state["successes"].tolist()]
        self.returns = [float(x) for x in state["returns"].tolist()]
        self.history = history


def make_replay_buffer(cfg: DictConfig, obs_dim: int) -> ReplayBuffer:
    scale, bias, sparse = reward_transform(cfg.algo)
    return ReplayBuffer(
        int(cfg.online.buffer_capacity), obs_dim, ACT_DIM, gamma=discount(cfg.algo),
        sparse_negative_reward=sparse_negative_reward(scale, bias) if sparse else None,
        device=str(cfg.get("device", "cpu")), seed=int(cfg.seed) + 1,
    )


def online_calibration(agent: Any, buffer: ReplayBuffer, n: int) -> dict[str, float]:
    """Calibration on the newest ``n`` online transitions (empty dict while the buffer is empty)."""
    if len(buffer) == 0:
        return {}
    idx = (buffer.ptr - 1 - np.arange(min(n, len(buffer)))) % buffer.capacity
    return calibration(agent, buffer.get(idx))


def num_envs_of(ocfg: DictConfig) -> int:
    """``online.num_envs`` (default 1), checked."""
    n = ocfg.get("num_envs", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"finetune config: online.num_envs={n!r}; expected an integer >= 1")
    return int(n)


def state_converter(obs_keys: list[str], num_tasks: int) -> Any:
    """Batched env observations -> flat states (``obs_keys`` ++ task one-hot), as the training data has them."""

    def convert(obs: Mapping[str, Any]) -> np.ndarray:
        flat = flatten_obs(obs, obs_keys)
        if num_tasks:
            flat = append_task_one_hot(flat, np.asarray(obs["task_id"]), num_tasks)
        return np.asarray(flat, dtype=np.float32)

    return convert


def run_online(
    cfg: DictConfig, agent: Any, offline: OfflineDataset, run_dir: Path, meta: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The online fine-tuning phase; returns the evaluation history (one dict per evaluation)."""
    ocfg = cfg.online
    obs_dim = int(meta["obs_dim"])
    buffer = make_replay_buffer(cfg, obs_dim)
    sampler = MixedSampler(offline, buffer, float(ocfg.offline_ratio))
    state = OnlineState()
    ckpt_root = run_dir / "checkpoints"
    total, utd, n_envs = int(ocfg.env_steps), int(ocfg.utd), num_envs_of(ocfg)
    if utd < 1:
        raise ValueError(f"online.utd={utd}; expected an integer >= 1 (updates per env step)")
    logger = MetricsLogger(run_dir, tensorboard=bool(ocfg.get("tensorboard", True)))
    if cfg.get("resume", True):
        resume_online(ckpt_root, agent, sampler, state)
    logger.truncate_after(state.env_steps)
    calib_offline = offline.get(calibration_indices(len(offline), int(ocfg.calibration_batch)))
    scale, bias, _ = reward_transform(cfg.algo)
    bs = int(cfg.algo.get("batch_size", 256))
    task, obs_keys, num_tasks = str(cfg.task), list(cfg.obs_keys), int(cfg.num_tasks)

    def evaluate_and_log() -> None:
        row: dict[str, Any] = {"env_steps": state.env_steps, "episodes": state.episodes}
        row.update({f"eval/{k}": v for k, v in evaluate_tasks(agent, cfg, [task], int(ocfg.eval_episodes)).items()})
        row.update({f"calib/offline_{k}": v for k, v in calibration(agent, calib_offline).items()})
        row.update({f"calib/online_{k}": v for k, v in online_calibration(agent, buffer, int(ocfg.calibration_batch)).items()})
        row["train/cumulative_regret"] = state.regret()
        row["train/episode_success"] = float(np.mean(state.successes[-10:])) if state.successes else None
        state.history.append(row)
        logger.log(state.env_steps, row)

    def checkpoint() -> None:
        sampler_state = sampler.state_dict()
        sampler_state["online"]["pending"] = None  # episodes are written whole; a cut-off tail is dropped
        extra = {"sampler": sampler_state, "online": state.state_dict(),
                 "history_json": json.dumps(state.history)}
        save_agent_checkpoint(ckpt_root, state.env_steps, cfg, agent, {**dict(meta), "stage": "online"}, extra,
                              int(ocfg.keep_checkpoints))

    def policy(obs: np.ndarray) -> np.ndarray:
        return np.asarray(agent.act(obs, deterministic=False), dtype=np.float32)

    def store(ep: Episode) -> None:
        buffer.add_episode(ep.observations, ep.actions, scale_rewards(ep.rewards, scale, bias), ep.next_observations,
                           ep.terminals)
        state.episodes += 1
        state.successes.append(float(ep.success))
        state.returns.append(ep.env_return)

    def update(with_metrics: bool) -> Mapping[str, Any]:
        return agent.update(sampler.sample(bs), with_metrics=with_metrics)

    def on_eval(env_steps: int) -> None:
        state.env_steps = env_steps
        evaluate_and_log()
        bar.set_postfix(success=f"{state.history[-1]['eval/success']:.2f}", regret=f"{state.regret():.2f}",
                        refresh=False)

    def on_checkpoint(env_steps: int, started: int) -> None:
        state.env_steps, state.started = env_steps, started
        checkpoint()

    env_fn = functools.partial(sim_env, task, dr_setting(cfg.dr))
    collector = VectorCollector(env_fn, n_envs, convert=state_converter(obs_keys, num_tasks), seed=int(cfg.seed),
                                asynchronous=bool(ocfg.get("asynchronous", True)))
    bar = tqdm(total=total, initial=state.env_steps, desc=f"online {cfg.algo.name} {task} x{n_envs} envs",
               unit="step", dynamic_ncols=True, disable=not ocfg.get("progress", True))
    try:
        if state.env_steps == 0 and not state.history:
            evaluate_and_log()
        state.env_steps, state.started = collect_and_update(
            collector, policy, env_steps=state.env_steps, started=state.started, total=total, utd=utd,
            eval_every=int(ocfg.eval_every), log_every=int(ocfg.log_every),
            checkpoint_every=int(ocfg.checkpoint_every), store=store, update=update,
            on_log=lambda step, m: logger.log(step, {f"train/{k}": v for k, v in m.items()}),
            on_eval=on_eval, on_checkpoint=on_checkpoint, progress=bar)
    finally:
        bar.close()
        collector.close()
        logger.close()
    return state.history


def resume_online(ckpt_root: Path, agent: Any, sampler: MixedSampler, state: OnlineState) -> None:
    """Restore agent, replay buffer, sampler RNGs and counters from the newest online checkpoint, if any."""
    ckpt = load_latest(ckpt_root)
    if ckpt is None or ckpt.state is None or "online" not in ckpt.state:
        return
    restore_agent(agent, ckpt)
    set_rng_state(ckpt.state["rng"])
    sampler.load_state_dict(ckpt.state["sampler"])
    state.load_state_dict(ckpt.state["online"], json.loads(ckpt.state["history_json"]))
    log.info("resumed online fine-tuning from %s (env step %d)", ckpt.path, state.env_steps)
