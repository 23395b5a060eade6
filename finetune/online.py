"""Stage 3's online loop: collect with parallel envs, mix offline and online data, update, evaluate; for every agent.

One loop for every observation spec and algorithm (STYLE.md rule 4). ``settings.num_envs`` envs collect in worker
processes while one learner updates (REFERENCE.md, Stage 3, Cal-QL). The design is synchronous collect-then-update
(:mod:`robopretrain.collector`): each round the learner's policy acts for every env at once, the envs step in
parallel (a gymnasium ``AsyncVectorEnv`` with ``spawn`` workers that build their env lazily, or in this process for
one env / ``asynchronous=false``), then the learner runs ``utd`` updates per env step collected. Collection and
learning alternate, so a run is reproducible on CPU for any number of envs.

* the env is the target's (:func:`robopretrain.envs.target.make_env`: our observation names, sparse success reward
  unless the target declares a dense one, termination on success), rendering the agent's cameras, with
  ``randomization`` (sim_envs targets: physics and visuals, re-sampled at every reset); training episode ``k``
  (counted over all envs) is reset with :func:`robopretrain.evaluation.train_episode_seed` ``(seed, k)``, disjoint
  from the fixed evaluation seeds;
* observations are stored as the agent trains on them (:meth:`robopretrain.agent.Agent.prepare`: frozen features
  for ``frozen_cached``, else unchanged); each env's transitions (reward scaled per the algorithm) are kept until
  its episode ends, then written to the :class:`~robopretrain.data.replay.ReplayBuffer` as one episode, which
  computes its Monte-Carlo returns-to-go, so Cal-QL's calibration stays on online (the official code's behaviour);
* batches come from a :class:`~robopretrain.data.replay.MixedSampler` (``offline_ratio`` of each batch from the
  offline data); UTD is per env step;
* at env step 0 and every ``eval_every`` env steps: success / return / length on fixed evaluation episodes
  (``eval_randomization``), average Q on data and on policy actions next to the Monte-Carlo return on a fixed offline
  sample and on the newest online data (the calibration gap), the cumulative regret ``mean(1 - success)`` over the
  training episodes so far;
* update metrics are requested on logging and checkpoint rounds and checked for NaN / inf before anything is written;
* transfer options (:mod:`finetune.transfer`, all off by default): EPOpt's worst-episode selection before the
  buffer, DARC's reward correction of each sampled batch, DANN's adversary as the agent's auxiliary loss;
* checkpoints (:func:`robopretrain.checkpoint.save_agent`, with the replay buffer, sampler, RNGs, counters and
  history) are written once ``checkpoint_every`` env steps have passed and every env has finished its episode; all
  envs then restart with the next episode seeds, as a resumed run does, so a killed run resumes to exactly the
  weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robopretrain.checkpoint import CheckpointError, check_agent_fits, join_agent_state, load_latest, save_agent
from robopretrain.collector import Episode, VectorCollector, collect_and_update
from robopretrain.data.dataset import RewardSettings
from robopretrain.data.replay import MixedSampler, OfflineDataset, ReplayBuffer
from robopretrain.data.returns import scale_rewards, sparse_negative_reward
from robopretrain.envs.target import Target
from robopretrain.evaluation import agent_env_factory, calibration, evaluate
from robopretrain.loops.offline import calibration_rows, rng_states, set_rng_states, update_function
from robopretrain.metrics import MetricsLogger

log = logging.getLogger(__name__)


@dataclass
class OnlineSettings:
    """The ``online`` block of stage 3 (``configs/finetune.yaml``)."""

    env_steps: int = 3000  # env steps collected in all (over every env)
    num_envs: int = 2  # envs collecting in parallel
    asynchronous: bool = True  # envs in spawned worker processes (AsyncVectorEnv) when num_envs > 1
    utd: int = 1  # gradient updates per env step
    offline_ratio: float = 0.5  # share of each batch from the offline data
    buffer_capacity: int = 1_000_000
    eval_every: int = 500  # env steps between evaluations (and at 0 and the end)
    eval_episodes: int = 10
    log_every: int = 100  # env steps between update-metric rows
    checkpoint_every: int = 1000  # env steps between checkpoints (written once every env finished its episode)
    keep_checkpoints: int = 2
    calibration_batch: int = 2048  # offline rows / newest online rows for the Q-vs-return calibration
    keep_optimizer: bool = True  # continue with the offline optimiser state
    progress: bool = True
    tensorboard: bool = True
    cuda_graph: bool = False  # each update replays one captured CUDA graph (robopretrain.algos.cuda_graph); GPU only
    compile: bool = False  # torch.compile of the losses (OfflineAlgorithm.compile); pays off in long runs (README)

    def __post_init__(self) -> None:
        for key in ("num_envs", "utd", "eval_every", "eval_episodes", "log_every", "checkpoint_every",
                    "keep_checkpoints", "calibration_batch", "buffer_capacity"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"finetune config: online.{key}={value!r}; expected an integer >= 1")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> OnlineSettings:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown online config key(s) {unknown}; valid keys: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


def training_regret(successes: Sequence[float]) -> float | None:
    """Cumulative regret of online training, ``mean(1 - success)`` over the finished training episodes
    (successes 0/1, in order; the Cal-QL paper's and CORL's measure), in [0, 1]; None before the first one ends.

    Like theirs, it counts episodes, not env steps, and only finished ones: where successes end an episode early,
    successful episodes are shorter and more numerous per env step than failures, and the episodes still running at
    the budget's end (more often failures) are left out, so it reads lower than the failure rate per env step.
    Comparisons between runs of one target and budget are fair; the claims' regret is evaluation-based
    (``benchmarks/claims_metrics.cumulative_regret``) and has neither bias."""
    return float(np.mean(1.0 - np.asarray(successes, dtype=np.float64))) if len(successes) else None


def online_buffer(agent: Any, reward: RewardSettings, capacity: int, seed: int) -> ReplayBuffer:
    """An empty replay buffer for what the agent stores (its prepared observation parts), its batches on the agent's
    device (the offline half is there too: :class:`robopretrain.data.replay.MixedSampler` joins them)."""
    neg = sparse_negative_reward(reward.scale, reward.bias) if reward.sparse else None
    return ReplayBuffer(capacity, agent.stored_spec().storage(), agent.act_dim, gamma=reward.discount,
                        sparse_negative_reward=neg, device=agent.device, seed=seed)


def keep_decided_epopt_rows(log: Path, batches_done: int) -> int:
    """On a resume: keep the rows of ``log`` (``epopt_episodes.jsonl``, one JSON object per decided episode, with its
    ``batch`` number) of the ``batches_done`` batches the checkpoint had decided, and drop those decided after it
    (they are decided again, so each episode is logged once). Returns the rows kept; a missing log keeps 0."""
    if not log.is_file():
        return 0
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["batch"] < batches_done]
    log.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return len(kept)


RECENT_EPISODES = 10  # training episodes in the logged train/episode_success


def recent_success(successes: Sequence[float], window: int = RECENT_EPISODES) -> float | None:
    """Mean success of the last ``window`` training episodes (``train/episode_success``); None before the first."""
    return float(np.mean(successes[-window:])) if len(successes) else None


def run_online(agent: Any, offline: OfflineDataset, target: Target, settings: OnlineSettings, run_dir: Path, *,
               reward: RewardSettings, seed: int, randomization: Any = "none", eval_randomization: Any = None,
               config: Any = None, meta: Mapping[str, Any] | None = None, resume: bool = True,
               fingerprint: Mapping[str, Any] | None = None, transfer: Any = None,
               learned_reward: Any = None) -> list[dict[str, Any]]:
    """Online fine-tuning of ``agent`` on ``target`` (module docstring); returns the evaluation history.

    Writes ``<run_dir>/checkpoints/``, ``metrics.jsonl`` and ``tb/``; a rerun resumes from the newest checkpoint.
    ``config`` is saved as each checkpoint's ``config.yaml``; ``meta`` is added to its ``meta.json``; ``fingerprint``
    (:mod:`robopretrain.run_fingerprint`) is stored there too and a checkpoint with another one is not resumed.
    ``transfer``: a :class:`finetune.transfer.options.TransferParts` (None or empty: none applies): EPOpt decides
    which finished episodes enter the buffer (per batch of ``batch_episodes``; the batch being filled is saved in each
    checkpoint) and writes one row per decided episode (batch, return, success, physics parameters, kept) to
    ``<run_dir>/epopt_episodes.jsonl``; DARC corrects each
    sampled batch's rewards; the DANN adversary is already the agent's auxiliary loss; their states are checkpointed.
    ``learned_reward``: a :class:`finetune.learned_reward.OnlineLearnedReward` (None: the env's reward): each episode
    enters the buffer with its rewards instead of the env's (success, evaluation and EPOpt's returns stay the env's).
    """
    from finetune.transfer.epopt import EPOptFilter
    from finetune.transfer.options import TransferParts

    transfer = transfer if transfer is not None else TransferParts()
    eval_rand = randomization if eval_randomization is None else eval_randomization
    buffer = online_buffer(agent, reward, settings.buffer_capacity, seed + 1)
    sampler = MixedSampler(offline, buffer, settings.offline_ratio)
    ckpt_root = run_dir / "checkpoints"
    ckpt_meta = {"stage": "online", "task": target.name, "target": target.to_dict(), "randomization": randomization,
                 "eval_randomization": eval_rand,
                 "fingerprint": dict(fingerprint) if fingerprint is not None else None, **dict(meta or {})}
    env_steps, started, successes, history = 0, 0, [], []
    epopt_done, epopt_pending = 0, []
    latest = load_latest(ckpt_root, resuming=True) if resume else None  # (the newest with state.pt)
    if latest is not None and latest.state is None:  # it started over silently, then rotated the checkpoints away
        raise CheckpointError(f"{latest.path}: has no state.pt (the replay buffer, optimisers and counters a resume "
                              "needs) and no earlier checkpoint has one; restore it, or start over with resume=false "
                              "(or another output_dir)")
    started_from: Path | None = None
    if latest is not None and latest.state is not None and "online" in latest.state:
        check_agent_fits(latest.meta, agent, where=str(latest.path))
        if fingerprint is not None:
            from robopretrain.run_fingerprint import check_resume

            check_resume(latest.meta.get("fingerprint"), fingerprint, where=latest.path)
        agent.load_state_dict(join_agent_state(latest.weights, latest.state), with_optimizer=True)
        set_rng_states(agent, latest.state["rng"])
        sampler.load_state_dict(latest.state["sampler"])
        counters = latest.state["online"]
        env_steps, started = int(counters["env_steps"]), int(counters["started"])
        successes, history = json.loads(counters["successes"]), json.loads(counters["history"])
        for name, part in transfer.modules.items():
            part.load_state_dict(latest.state["transfer"][name])
        saved_transfer = latest.state.get("transfer", {})
        epopt_done = int(saved_transfer.get("epopt_batches", 0))
        epopt_pending = [(Episode.from_state_dict(ep), float(r)) for ep, r in saved_transfer.get("epopt_pending", [])]
        log.info("online %s: resumed from %s at env step %d", target.name, latest.path, env_steps)
        cut = int(counters.get("episodes_in_flight", 0))
        if cut and env_steps < settings.env_steps:
            log.warning("online %s: extending a finished run from its final checkpoint (env step %d), written with "
                        "%d episode(s) unfinished (running, or cut by the step budget): the envs start new episodes "
                        "here, so this run differs from one run of online.env_steps=%d (a run resumed from a "
                        "checkpoint written between episodes is exact)", target.name, env_steps, cut,
                        settings.env_steps)
        started_from = latest.path
    calib_offline = offline.get(calibration_rows(len(offline), settings.calibration_batch))
    # a resumed run redoes the rows after its checkpoint; a run killed before its first checkpoint starts over,
    # including the step-0 evaluation it had logged (kept, it was there twice); TensorBoard hides the same events
    kept = env_steps if started_from is not None else -1
    logger = MetricsLogger(run_dir, tensorboard=settings.tensorboard,
                           logger=config.get("logger") if config is not None else None, config=config,
                           purge_step=kept + 1)
    logger.truncate_after(kept)

    def eval_row(step: int) -> None:
        row: dict[str, Any] = {"env_steps": step, "episodes": len(successes),
                               "train/cumulative_regret": training_regret(successes),
                               "train/episode_success": recent_success(successes)}
        row.update({f"eval/{k}": v for k, v in evaluate(agent, target, settings.eval_episodes,
                                                         randomization=eval_rand).items()})
        row.update({f"calib/offline_{k}": v for k, v in calibration(agent, calib_offline).items()})
        if len(buffer):
            newest = buffer.get(buffer.newest_indices(settings.calibration_batch))
            row.update({f"calib/online_{k}": v for k, v in calibration(agent, newest).items()})
        history.append(row)
        logger.log(step, row)
        show(eval_success=f"{row['eval/success']:.2f}", episodes=len(successes))

    shown: dict[str, Any] = {}  # the progress bar's figures: the last evaluation's, the training episodes' so far

    def show(**figures: Any) -> None:
        shown.update(figures)
        bar.set_postfix(shown, refresh=False)

    episode_log = run_dir / "epopt_episodes.jsonl"
    epopt = EPOptFilter(transfer.epopt, epopt_done, epopt_pending) if transfer.epopt is not None else None
    if epopt is not None:
        keep_decided_epopt_rows(episode_log, epopt_done)

    def add_to_buffer(ep: Episode) -> None:
        rewards = ep.rewards if learned_reward is None else learned_reward(ep.observations, ep.actions)
        buffer.add_episode(ep.observations, ep.actions, scale_rewards(rewards, reward.scale, reward.bias),
                           ep.next_observations, ep.terminals)

    def decided(rows: list[tuple[Episode, bool]]) -> None:
        """EPOpt's decision on a batch: the kept episodes enter the buffer; every one is logged."""
        assert epopt is not None
        first_batch = rows and epopt.batches_done == 1  # (an episode that fills no batch decides nothing: rows [])
        if first_batch and epopt.settings.env_draws_physics and not any(ep.physics for ep, _ in rows):
            log.warning("transfer.epopt.env_draws_physics: the env's reset info has no scalar dr_params, so %s logs "
                        "no physics per episode (the selection, by return, is the same)", episode_log)
        with episode_log.open("a") as f:
            for ep, kept in rows:
                if kept:
                    add_to_buffer(ep)
                f.write(json.dumps({"episode": ep.index, "batch": epopt.batches_done - 1, "return": ep.env_return,
                                    "success": bool(ep.success), "length": ep.length, "kept": kept,
                                    "physics": ep.physics}) + "\n")

    def checkpoint(step: int, begun: int) -> None:
        sampler_state = sampler.state_dict()
        sampler_state["online"]["pending"] = None  # episodes are stored whole; nothing is half-written
        state = {"rng": rng_states(agent), "sampler": sampler_state,
                 "online": {"env_steps": step, "started": begun, "successes": json.dumps(successes),
                            "history": json.dumps(history),
                            # the final checkpoint cuts the episodes still running (a resume restarts them)
                            "episodes_in_flight": collector.in_flight}}
        if epopt is not None or transfer.modules:
            state["transfer"] = {"epopt_batches": epopt.batches_done if epopt is not None else 0,
                                 "epopt_pending": [(ep.state_dict(), r) for ep, r in epopt.pending]
                                 if epopt is not None else [],
                                 **{name: part.state_dict() for name, part in transfer.modules.items()}}
        save_agent(ckpt_root, step, config if config is not None else {}, agent, ckpt_meta, state,
                   keep=settings.keep_checkpoints)

    def store(ep: Episode) -> None:
        if epopt is None:
            add_to_buffer(ep)
        else:
            decided(epopt.add(ep, ep.env_return))
        successes.append(float(ep.success))  # the bar says it now (it showed the last evaluation's count)
        show(episodes=len(successes), train_success=f"{recent_success(successes):.2f}")

    agent_update = update_function(agent, compile=settings.compile, cuda_graph=settings.cuda_graph, section="online",
                                   distributed=False)  # stage 3 runs in one process

    def update(with_metrics: bool) -> Mapping[str, Any]:
        if settings.offline_ratio == 0 and len(buffer) == 0:  # online data only, and no episode has ended yet: no
            return {}  # update (the sampler's batch would be all offline: the data offline_ratio=0 leaves out)
        batch = sampler.sample(agent.batch_size)
        if transfer.correction is None:
            return agent_update(batch, with_metrics=with_metrics)
        batch, extra = transfer.correction(batch, with_metrics)
        return {**agent_update(batch, with_metrics=with_metrics), **extra}

    collector = VectorCollector(agent_env_factory(agent, target, randomization),
                                settings.num_envs, convert=agent.prepare, seed=seed,
                                asynchronous=settings.asynchronous)
    bar = tqdm(total=settings.env_steps, initial=min(env_steps, settings.env_steps), unit="step", dynamic_ncols=True,
               desc=f"online {agent.algo} {target.name} x{settings.num_envs} envs", disable=not settings.progress)
    try:
        if not history:
            eval_row(0)
        collect_and_update(
            collector, lambda obs: agent.act(obs, deterministic=False), env_steps=env_steps, started=started,
            total=settings.env_steps, utd=settings.utd, eval_every=settings.eval_every, log_every=settings.log_every,
            checkpoint_every=settings.checkpoint_every, store=store,
            update=update,
            # (no row for a round whose updates were skipped: offline_ratio=0 before the first online episode)
            on_log=lambda step, m: logger.log(step, {f"train/{k}": v for k, v in m.items()}) if m else None,
            on_eval=eval_row, on_checkpoint=checkpoint, progress=bar)
    finally:
        bar.close()
        collector.close()
        logger.close()
    if epopt is None and len(buffer) == 0:  # (EPOpt's own warning below says its case)
        log.warning("online %s: no training episode ended within online.env_steps=%d, so none entered the replay "
                    "buffer and stage 3 %s; raise online.env_steps above an episode's length (times online.num_envs) "
                    "or shorten the target's episodes (max_episode_steps)", target.name, settings.env_steps,
                    "made no update (offline_ratio=0)" if settings.offline_ratio == 0
                    else "trained on the offline data only")
    if epopt is not None and epopt.batches_done == 0:
        log.warning("online %s: EPOpt decided no batch (%d episodes pending of transfer.epopt.batch_episodes=%d): no "
                    "online episode entered the buffer, so stage 3 trained on the offline data only; lower "
                    "batch_episodes or run more env steps", target.name, len(epopt.pending),
                    int(transfer.epopt.batch_episodes))
    return history


__all__ = ["OnlineSettings", "RECENT_EPISODES", "online_buffer", "recent_success", "run_online", "training_regret"]
