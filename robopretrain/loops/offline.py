"""The offline training loop (stage 2, the pipeline's adaptation step, stage 3's in-run offline phase): one loop for
every agent, every algorithm and every observation spec (STYLE.md rule 4).

:func:`train_offline` runs ``settings.steps`` updates of an :class:`~robopretrain.agent.Agent` on batches of a
sampler (an :class:`~robopretrain.data.replay.OfflineDataset`, or a
:class:`~robopretrain.data.replay.MixedSampler` of two datasets, e.g. PTR's 90% prior / 10% target), and

* logs update metrics every ``log_every`` updates and at the last one (the mean over ranks under DDP) to
  ``metrics.jsonl`` / TensorBoard; metrics are computed on log, evaluation and checkpoint steps only, and a NaN /
  inf loss stops the run (:func:`robopretrain.guards.finite_metrics_hook`) before the next checkpoint is written;
* writes a resumable checkpoint every ``checkpoint_every`` updates and at the end (agent, optimisers, RNG and sampler
  state of every rank), *before* evaluating, so an evaluation that fails never costs the run its checkpoint: a failed
  evaluation is logged as a warning and training goes on; a run killed between a checkpoint and that step's
  evaluation makes the evaluation up when it resumes;
* evaluates (``evaluate()``: success per target in sim) every ``eval_every`` updates and at the end, with the
  calibration gap (``calibrate()``) next to it.

Data-parallel (:mod:`robopretrain.agent_parallel`): under torchrun every rank holds a replica, draws its own batches
and averages gradients before each optimiser step; rank 0 logs and writes. :func:`resume` restores the newest
checkpoint of a run (each rank its own RNG and sampler state when the world size is unchanged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robopretrain import distributed as dist_utils
from robopretrain.agent_parallel import agent_replica_max_abs_diff, any_rank, gather_objects
from robopretrain.checkpoint import Checkpoint, checkpoint_name, join_agent_state, load_latest, rng_state, set_rng_state
from robopretrain.distributed import DistInfo
from robopretrain.guards import NonFiniteLossError, finite_metrics_hook
from robopretrain.metrics import METRICS_FILE, MetricsLogger, read_jsonl

log = logging.getLogger(__name__)


@dataclass
class OfflineSettings:
    """The ``train`` block of stage 2 (and ``offline`` of stage 3)."""

    steps: int = 20000  # gradient updates
    log_every: int = 100  # updates between metric rows
    eval_every: int = 2000  # updates between evaluations (and at the end)
    eval_episodes: int = 10  # per evaluation target, fixed evaluation seeds disjoint from the data's
    eval_targets: Any = None  # None: the data's own tasks where its env is known; []: no evaluation
    eval_at_start: bool = False
    checkpoint_every: int = 2000  # updates between checkpoints (and at the end)
    keep_checkpoints: int = 2
    calibration_batch: int = 2048  # fixed data rows for the Q-vs-return calibration
    progress: bool = True
    tensorboard: bool = True
    cuda_graph: bool = False  # each update replays one captured CUDA graph (robopretrain.algos.cuda_graph); GPU only
    compile: bool = False  # torch.compile of the losses (OfflineAlgorithm.compile); pays off in long runs (README)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> OfflineSettings:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown train config key(s) {unknown}; valid keys: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


def rng_states(agent: Any) -> dict[str, Any]:
    """Torch's RNG and the agent's augmentation generator."""
    return {**rng_state(), "augment": agent.generator.get_state()}


def set_rng_states(agent: Any, state: Mapping[str, Any]) -> None:
    set_rng_state(state)
    if "augment" in state:
        agent.generator.set_state(state["augment"])


def resume(agent: Any, sampler: Any, ckpt_root: Path, dinfo: DistInfo | None = None) -> tuple[int, Checkpoint | None]:
    """Restore the newest checkpoint under ``ckpt_root`` into ``agent`` and ``sampler``; returns ``(step, ckpt)``.

    Each rank restores its own RNG and sampler state when the checkpoint was written with as many processes; with
    another number, rank 0 continues the saved stream and the other ranks start theirs fresh (logged). The caller
    checks first that the checkpoint fits the agent (:func:`robopretrain.checkpoint.check_agent_fits`).
    """
    dinfo = dinfo or DistInfo()
    ckpt = load_latest(ckpt_root, resuming=True)  # (the newest with state.pt: an earlier one is exact)
    if ckpt is None:
        return 0, None
    if ckpt.state is None:
        log.warning("%s has no state.pt (optimisers, RNG, data stream) and no earlier checkpoint has one: resumed "
                    "from its weights with fresh optimisers and a new data stream, so the run is not the one an "
                    "uninterrupted run would have been", ckpt.path)
    agent.load_state_dict(join_agent_state(ckpt.weights, ckpt.state), with_optimizer=ckpt.state is not None)
    if ckpt.state is not None:
        state = ckpt.state
        saved_world = int(state.get("world_size", 1))
        mine: Mapping[str, Any] | None = {"rng": state["rng"], "sampler": state["sampler"]}
        if "ranks" in state and saved_world == dinfo.world_size:
            mine = state["ranks"][dinfo.rank]
        elif saved_world != dinfo.world_size:
            log.warning("%s was written by a run with %d process(es), this run has %d: the data streams continue "
                        "differently (and the effective batch size changes)", ckpt.path, saved_world,
                        dinfo.world_size)
            mine = mine if dinfo.is_main else None
        if mine is not None:
            set_rng_states(agent, mine["rng"])
            sampler.load_state_dict(mine["sampler"])
    log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt.step, ckpt


def _guard(step: int, metrics: Mapping[str, float], dinfo: DistInfo, since: int | None = None) -> Mapping[str, float]:
    """:func:`finite_metrics_hook` on this rank's metrics (``since``: the last step checked finite); under DDP every
    rank stops when one rank's are bad."""
    losses = {k: v for k, v in metrics.items() if "loss" in k}
    bad_here = not all(np.isfinite(v) for v in losses.values())
    if any_rank(bad_here, dinfo) and not bad_here:
        raise NonFiniteLossError(next(iter(losses), "loss"), float("nan"), step, "the non-finite value was on another rank",
                                 since)
    return finite_metrics_hook(step, metrics, since)


def update_function(agent: Any, *, compile: bool, cuda_graph: bool, section: str,
                    distributed: bool) -> Callable[..., Mapping[str, Any]]:
    """The update a training loop calls: ``agent.update``, with its losses compiled (``compile``,
    :meth:`robopretrain.agent.Agent.compile`), or replayed as one captured CUDA graph (``cuda_graph``,
    :class:`robopretrain.algos.cuda_graph.CUDAGraphUpdate`). ``section`` names the config block in errors
    (``train`` / ``online``). Raises ValueError for both options at once, a graph under torchrun (the gradient
    all-reduce is not captured), a graph on a CPU agent or a learner that cannot be captured."""
    if compile:
        if cuda_graph:
            raise ValueError(f"{section}.compile=true and {section}.cuda_graph=true are alternatives; choose one")
        agent.compile()
    if not cuda_graph:
        return agent.update
    if distributed:
        raise ValueError(f"{section}.cuda_graph=true does not run under torchrun (the gradient all-reduce is not "
                         f"captured); use one process, or {section}.cuda_graph=false")
    from robopretrain.algos.cuda_graph import CUDAGraphUpdate

    return CUDAGraphUpdate(agent)


def train_offline(
    agent: Any,
    sampler: Any,
    settings: OfflineSettings,
    run_dir: Path,
    *,
    save: Callable[[int, Mapping[str, Any]], Path],
    evaluate: Callable[[], Mapping[str, float]] | None = None,
    calibrate: Callable[[], Mapping[str, float]] | None = None,
    start: int = 0,
    dinfo: DistInfo | None = None,
    desc: str = "offline",
    experiment_logger: Any = None,
    config: Any = None,
) -> Path | None:
    """Updates ``start + 1 .. settings.steps`` (see the module docstring); returns the last checkpoint written.

    ``save(step, state)`` writes a checkpoint with the training ``state`` (RNG, sampler, step) and returns its folder;
    ``evaluate()`` returns ``{name: value}`` (success etc.); both are called on every rank (evaluation may split its
    work over ranks), only rank 0's ``save`` writes. ``experiment_logger``: the ``logger`` config group (TensorBoard
    when ``None``, :mod:`robopretrain.loggers`), which also records ``config``.
    """
    dinfo = dinfo or DistInfo()
    # a resumed run redoes the rows after its checkpoint; a run killed before its first checkpoint starts over,
    # its step-0 evaluation included (kept, it was there twice); TensorBoard hides the same events
    kept = start if start > 0 else -1
    logger = MetricsLogger(run_dir, tensorboard=settings.tensorboard, logger=experiment_logger, config=config,
                           purge_step=kept + 1) if dinfo.is_main else None
    total, bs = int(settings.steps), int(agent.batch_size)
    # a run killed between a checkpoint and that step's evaluation resumes after it: the evaluation is made up for
    # (read on rank 0 before the rows after ``start`` are dropped; every rank evaluates)
    owed = any_rank(dinfo.is_main and evaluate is not None and 0 < start <= total and (
        start % int(settings.eval_every) == 0 or start == total) and not _evaluated_at(run_dir, start), dinfo)
    if logger is not None:
        logger.truncate_after(kept)
    if start > total and dinfo.is_main:
        log.warning("%s: its last checkpoint is at update %d, past train.steps=%d: nothing to train, and that "
                    "checkpoint (not one at %d) is the result; a fresh output_dir trains to %d", run_dir, start, total,
                    total, total)
    last: Path | None = None
    update = update_function(agent, compile=settings.compile, cuda_graph=settings.cuda_graph, section="train",
                             distributed=dinfo.enabled)

    def evaluate_and_log(step: int) -> dict[str, float]:
        row: dict[str, float] = {}
        if evaluate is not None:
            try:
                row.update({f"eval/{k}": v for k, v in evaluate().items()})
            except Exception as exc:  # noqa: BLE001 - an evaluation never costs the run; say what happened
                if dinfo.is_main:  # (every rank has it: a rank's failure is every rank's, agent_parallel.RankFailed)
                    log.warning("evaluation at step %d failed, training goes on: %s: %s", step, type(exc).__name__,
                                exc)
        if calibrate is not None and logger is not None:
            row.update({f"calib/offline_{k}": v for k, v in calibrate().items()})
        if logger is not None and row:
            logger.log(step, row)
        if "eval/success" in row and dinfo.is_main:  # on the console too (it went to metrics.jsonl only)
            log.info("step %d: evaluation success %.2f%s", step, row["eval/success"],
                     f", return {row['eval/return']:.2f}" if "eval/return" in row else "")
        return row

    def checkpoint(step: int) -> Path:
        ranks = gather_objects({"rng": rng_states(agent), "sampler": sampler.state_dict()}, dinfo)
        diff = agent_replica_max_abs_diff(agent, dinfo)
        path = run_dir / "checkpoints" / checkpoint_name(step)
        if dinfo.is_main:
            state = {"rng": ranks[0]["rng"], "sampler": ranks[0]["sampler"], "step": step,
                     "world_size": dinfo.world_size}
            if dinfo.enabled:
                state["ranks"] = ranks
                logger.log(step, {"parallel/replica_max_abs_diff": diff})
                if diff != 0.0:
                    log.warning("replicas differ by %.3g after step %d (expected 0)", diff, step)
            path = save(step, state)
        dist_utils.barrier(dinfo)  # every rank sees the new checkpoint before going on
        return path

    bar = tqdm(total=total, initial=start, desc=desc, unit="upd", dynamic_ncols=True,
               disable=not settings.progress or not dinfo.is_main)
    try:
        if start == 0 and settings.eval_at_start:
            evaluate_and_log(0)
        if owed:
            log.info("%s: the evaluation at update %d (its checkpoint's) was not logged before the run stopped: "
                     "evaluating now", run_dir, start)
            evaluate_and_log(start)
        checked = start  # the last step whose losses were checked finite (or where this session started)
        for step in range(start + 1, total + 1):
            log_now = step % int(settings.log_every) == 0 or step == total  # a run shorter than log_every logs one
            eval_now = step % int(settings.eval_every) == 0 or step == total
            ckpt_now = step % int(settings.checkpoint_every) == 0 or step == total
            with_metrics = log_now or eval_now or ckpt_now  # a NaN is caught before the checkpoint is written
            metrics = update(sampler.sample(bs), with_metrics=with_metrics)
            if with_metrics:
                metrics = _guard(step, metrics, dinfo, checked)
                checked = step
            bar.update(1)
            if log_now:
                means = dist_utils.mean_over_ranks(metrics, dinfo)
                if logger is not None:
                    logger.log(step, {f"train/{k}": v for k, v in means.items()})
            if ckpt_now:
                last = checkpoint(step)
            if eval_now:
                row = evaluate_and_log(step)
                if "eval/success" in row:
                    bar.set_postfix(success=f"{row['eval/success']:.2f}", refresh=False)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    return last


def _evaluated_at(run_dir: Path, step: int) -> bool:
    """Whether ``<run_dir>/metrics.jsonl`` holds an evaluation row (an ``eval/`` key) logged at ``step``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return False
    return any(row.get("step") == step and any(k.startswith("eval/") for k in row) for row in read_jsonl(path))


def calibration_rows(size: int, n: int, seed: int = 12345) -> np.ndarray:
    """A fixed set of row indices for calibration metrics (independent of the training sampler)."""
    return np.random.default_rng(seed).choice(size, size=min(n, size), replace=False)


__all__ = ["OfflineSettings", "calibration_rows", "resume", "rng_states", "set_rng_states", "train_offline",
           "update_function"]
