"""Stage 3 online loop: collect with the current policy, mix offline and online data, update, evaluate.

One process runs collector and learner in turn (REFERENCE.md, Stage 3, Cal-QL):

* the env is the target task with physics randomization from ``cfg.dr`` (re-sampled at every reset);
  training episode ``k`` is reset with :func:`robopretrain.evaluation.train_episode_seed` ``(seed, k)``,
  disjoint from the fixed evaluation seeds;
* every env step adds the transition (reward already scaled/biased per the algorithm config) to the online
  :class:`~robopretrain.data.replay.ReplayBuffer`, which computes the episode's Monte-Carlo returns-to-go when
  it ends, so Cal-QL's calibration stays on online (the official code's behaviour);
* after every env step, ``online.utd`` updates on batches from a
  :class:`~robopretrain.data.replay.MixedSampler` (``online.offline_ratio`` of each batch from the offline data);
* every ``online.eval_every`` env steps (and at step 0, the offline starting point): success / return / length
  on fixed evaluation episodes, average Q on data and on policy actions next to the Monte-Carlo return on
  a fixed offline sample and on the newest online data (the calibration gap), and the cumulative regret
  ``mean(1 - success)`` over the training episodes so far;
* checkpoints (agent, optimiser, RNG, replay buffer, sampler state, counters, history) are written at
  episode boundaries, so a resumed run starts a fresh episode with nothing half-stored.
"""

from __future__ import annotations

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
from robopretrain.data.replay import MixedSampler, OfflineDataset, ReplayBuffer
from robopretrain.data.returns import scale_rewards, sparse_negative_reward
from robopretrain.evaluation import calibration, make_state_env, state_vector, train_episode_seed
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
    episodes: int = 0
    successes: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def regret(self) -> float:
        """Cumulative regret: mean(1 - success) over the training episodes so far (0 before the first)."""
        return float(np.mean(1.0 - np.asarray(self.successes))) if self.successes else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "episodes": self.episodes, "successes": torch.tensor(self.successes),
                "returns": torch.tensor(self.returns)}

    def load_state_dict(self, state: Mapping[str, Any], history: list[dict[str, Any]]) -> None:
        self.env_steps = int(state["env_steps"])
        self.episodes = int(state["episodes"])
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
    logger = MetricsLogger(run_dir, tensorboard=bool(ocfg.get("tensorboard", True)))
    if cfg.get("resume", True):
        resume_online(ckpt_root, agent, sampler, state)
    logger.truncate_after(state.env_steps)
    calib_offline = offline.get(calibration_indices(len(offline), int(ocfg.calibration_batch)))
    scale, bias, _ = reward_transform(cfg.algo)
    bs = int(cfg.algo.get("batch_size", 256))
    total, utd = int(ocfg.env_steps), int(ocfg.utd)
    if utd < 1:
        raise ValueError(f"online.utd={utd}; expected an integer >= 1 (updates per env step)")
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
        sampler_state["online"]["pending"] = None  # checkpoints sit at episode boundaries; a cut-off tail is dropped
        extra = {"sampler": sampler_state, "online": state.state_dict(),
                 "history_json": json.dumps(state.history)}
        save_agent_checkpoint(ckpt_root, state.env_steps, cfg, agent, {**dict(meta), "stage": "online"}, extra,
                              int(ocfg.keep_checkpoints))

    env = make_state_env(task, dr_setting(cfg.dr))
    bar = tqdm(total=total, initial=state.env_steps, desc=f"online {cfg.algo.name} {task}", unit="step",
               dynamic_ncols=True, disable=not ocfg.get("progress", True))
    try:
        if state.env_steps == 0 and not state.history:
            evaluate_and_log()
        obs, _ = env.reset(seed=train_episode_seed(int(cfg.seed), state.episodes))
        s = state_vector(obs, obs_keys, num_tasks)
        ep_return, ep_success, last_ckpt = 0.0, False, state.env_steps
        while state.env_steps < total:
            action = np.asarray(agent.act(s, deterministic=False), dtype=np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            s_next = state_vector(obs, obs_keys, num_tasks)
            r = float(scale_rewards(np.array([reward]), scale, bias)[0])
            buffer.add_step(s, action, r, s_next, bool(terminated), bool(truncated))
            ep_return += float(reward)
            ep_success = ep_success or bool(info.get("success", False))
            state.env_steps += 1
            s = s_next
            for _ in range(utd):
                metrics = agent.update(sampler.sample(bs), with_metrics=state.env_steps % int(ocfg.log_every) == 0)
            if state.env_steps % int(ocfg.log_every) == 0:
                logger.log(state.env_steps, {f"train/{k}": v for k, v in metrics.items()})
            bar.update(1)
            if state.env_steps % int(ocfg.eval_every) == 0 or state.env_steps == total:
                evaluate_and_log()
                bar.set_postfix(success=f"{state.history[-1]['eval/success']:.2f}",
                                regret=f"{state.regret():.2f}", refresh=False)
            if terminated or truncated:
                state.episodes += 1
                state.successes.append(float(ep_success))
                state.returns.append(ep_return)
                if state.env_steps - last_ckpt >= int(ocfg.checkpoint_every) or state.env_steps >= total:
                    checkpoint()
                    last_ckpt = state.env_steps
                obs, _ = env.reset(seed=train_episode_seed(int(cfg.seed), state.episodes))
                s = state_vector(obs, obs_keys, num_tasks)
                ep_return, ep_success = 0.0, False
        if last_ckpt != state.env_steps:
            checkpoint()
    finally:
        bar.close()
        env.close()
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
