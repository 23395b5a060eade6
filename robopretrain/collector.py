"""Stage-3 experience collection: ``num_envs`` envs stepping in worker processes, one learner.

Used by stage 3's online loop (:func:`finetune.online.run_online`). The design is *synchronous collect-then-update*:

* the envs live in a gymnasium vector env: ``AsyncVectorEnv`` (``spawn`` start method, each worker building its
  env lazily from a picklable factory, so MuJoCo/EGL state is never forked) when ``asynchronous`` and
  ``num_envs > 1``, else ``SyncVectorEnv`` in the learner's process;
* one call of :meth:`VectorCollector.step` asks the learner's policy for a batch of ``num_envs`` actions, steps all
  envs at once (in parallel in the workers) and returns the new transitions and the episodes that ended; the
  caller then runs ``utd`` updates per env step collected. Collection and learning alternate (no overlap), which
  keeps runs reproducible: the same seed gives the same data and the same weights on CPU, whatever ``num_envs``
  and whether the envs run in workers or not;
* every training episode is reset with its own seed :func:`robopretrain.evaluation.train_episode_seed`
  ``(seed, k)``, ``k`` counting the episodes started in the run (autoreset is off; finished envs are reset by the
  collector with ``reset_mask``). Transitions of each env are kept until its episode ends and handed over as one
  :class:`Episode`, so the replay buffer computes returns-to-go per finished episode of each env;
* checkpoints need a moment when no episode is half-collected (an env's physics state cannot be saved). With
  ``drain=True`` the collector starts no new episodes: envs whose episode ends become idle (they keep stepping,
  as a vector env steps all of its envs, but what they see is thrown away and not counted) until every env is
  idle (:attr:`VectorCollector.drained`). The caller writes its checkpoint there and calls :meth:`start` again,
  which resets every env with the next episode seeds - exactly what a run resumed from that checkpoint does,
  so a killed and resumed run ends with the same weights as an uninterrupted one. With one env this is
  "checkpoint at the next episode end";
* ``budget`` caps the transitions a step may count (the run's last step): the surplus envs' partial
  episodes are dropped, as the unfinished episodes are at the end of a run.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import gymnasium as gym
import numpy as np

from robopretrain.workers import MAIN_GUARD_HINT, WorkerProcessDied, refuse_in_loky_worker, sigint_blocked_for_workers

Obs = Union[np.ndarray, Mapping[str, np.ndarray]]

# ``train_episode_seed`` is in robopretrain.evaluation (which imports torch); the same formula here keeps the
# worker-side imports of this module light. tests/test_collector.py checks that both agree.
_SEED_STRIDE = 100_000
# Evaluation episodes are reset with seeds in [EVAL_SEEDS_START, EVAL_SEEDS_END) (robopretrain.evaluation.EVAL_SEED
# + i, configs/evaluate.yaml's eval_seed + i); training seeds never fall there.
EVAL_SEEDS_START, EVAL_SEEDS_END = 1_000_000, 2_000_000
_SEED_LIMIT = 2**32  # what every seeding API takes (numpy's legacy seeding and MuJoCo's need < 2**32)


def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode ``episode`` (>= 0) of a run with seed ``seed`` (>= 0), as
    :func:`robopretrain.evaluation.train_episode_seed`; never in ``[EVAL_SEEDS_START, EVAL_SEEDS_END)``, the
    evaluation seeds.

    ``seed * 100_000 + episode`` for seeds 0-9 and episodes below 100_000 (every run this toolkit has published);
    otherwise a hash of ``(seed, episode)`` (``numpy.random.SeedSequence``) placed in ``[EVAL_SEEDS_END, 2**32)``.
    The plain formula alone put seed 10's episodes on the evaluation seeds ``1_000_000 + k``.
    Raises ValueError for a negative seed or episode."""
    seed, episode = int(seed), int(episode)
    if seed < 0 or episode < 0:
        raise ValueError(f"episode_seed: seed and episode must be >= 0, got seed={seed}, episode={episode}")
    if seed * _SEED_STRIDE + episode < EVAL_SEEDS_START and episode < _SEED_STRIDE:
        return seed * _SEED_STRIDE + episode
    word = int(np.random.SeedSequence([seed, episode]).generate_state(1, np.uint64)[0])
    return EVAL_SEEDS_END + word % (_SEED_LIMIT - EVAL_SEEDS_END)


COLLECTED_INFO = ("success", "dr_params")  # the info keys the collector reads; the vector env batches only these


class CollectedInfo(gym.Wrapper):
    """Keeps only :data:`COLLECTED_INFO` in ``reset`` / ``step`` info. A vector env stacks every info key across its
    envs: a user's env whose info holds an array of varying length (contact points) broke the stacking, which hung
    an asynchronous vector env for good and was a broadcast error naming no key in a synchronous one."""

    @staticmethod
    def _kept(info: Mapping[str, Any]) -> dict[str, Any]:
        return {k: info[k] for k in COLLECTED_INFO if k in info}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs, self._kept(info)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._kept(info)


def make_vector_env(env_fn: Callable[[], gym.Env], num_envs: int, asynchronous: bool = True) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_fn()`` with autoreset off and their info cut to :data:`COLLECTED_INFO`
    (:class:`CollectedInfo`). Async: spawned workers, each building its env lazily."""
    if num_envs < 1:
        raise ValueError(f"num_envs={num_envs}; expected an integer >= 1")
    mode = gym.vector.AutoresetMode.DISABLED
    worker_fns = [functools.partial(_collector_env, env_fn, i) for i in range(num_envs)]
    if asynchronous and num_envs > 1:
        refuse_in_loky_worker("the online envs' worker processes")
        with sigint_blocked_for_workers():  # a Ctrl-C while the workers import is the parent's alone
            return gym.vector.AsyncVectorEnv(worker_fns, context="spawn", autoreset_mode=mode, shared_memory=False,
                                             worker=_async_worker_quiet_orphan)
    return gym.vector.SyncVectorEnv(worker_fns, autoreset_mode=mode)


def _async_worker_quiet_orphan(*args: Any) -> None:
    """gymnasium's ``AsyncVectorEnv`` worker (its arguments passed on as they come), ending without a word when its
    pipe to the parent is broken: a parent killed (SIGKILL, a job's time limit) left each worker printing two
    tracebacks (its ``EOFError`` on reading the pipe, then the ``BrokenPipeError`` of reporting it). An env's own
    error still reaches the parent as before (gymnasium's worker reports it through the pipe that still works)."""
    from gymnasium.vector.async_vector_env import _async_worker

    try:
        _async_worker(*args)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # no parent left to answer


CLOSE_TIMEOUT_S = 5.0  # seconds a closing vector env waits for a pending step or reset before terminating workers


def close_vector_env(venv: gym.vector.VectorEnv) -> None:
    """``venv.close`` that cannot block forever. When the parent fails after reading the workers' answers (its
    stacking of observations whose shapes differ, an info it cannot batch), gymnasium's ``AsyncVectorEnv`` still
    believes a step is pending and its plain ``close()`` waits for answers that never come; with a timeout it waits
    :data:`CLOSE_TIMEOUT_S` and terminates the workers instead. A pending step that is really running (Ctrl-C during
    a step) is waited for and closed normally. A worker that died (its pipe closed) cannot answer the close: the
    others are terminated instead."""
    try:
        venv.close(timeout=CLOSE_TIMEOUT_S)
    except (EOFError, BrokenPipeError, ConnectionResetError):  # a worker died: its pipe cannot answer the close
        for proc in getattr(venv, "processes", []):
            if proc.is_alive():
                proc.terminate()
            proc.join(CLOSE_TIMEOUT_S)
        venv.closed = True  # closed by hand: gymnasium's __del__ would try again on the dead pipes


def _collector_env(env_fn: Callable[[], gym.Env], index: int = 0) -> gym.Env:
    """``env_fn()`` wrapped in :class:`CollectedInfo`. In a worker process (not in the parent, where gymnasium builds
    one env to read its spaces) Ctrl-C is ignored first: the parent handles it and closes the workers, which would
    otherwise each print a traceback. Workers after the first (``index`` > 0) say only errors of the toolkit's own
    loggers: every worker builds the same env, so its once-per-process warnings (a missing success key, an episode
    cap) were printed once per worker."""
    if mp.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if index > 0:
            for name in ("robopretrain", "sim_envs", "finetune"):
                logging.getLogger(name).setLevel(logging.ERROR)
    return CollectedInfo(env_fn())


# --------------------------------------------------------------------------- array trees (array or dict)


def tree_rows(tree: Obs, idx: Any) -> Obs:
    """Rows ``idx`` of an array or of every array of a dict."""
    return {k: v[idx] for k, v in tree.items()} if isinstance(tree, Mapping) else tree[idx]


def tree_stack(items: Sequence[Obs]) -> Obs:
    if isinstance(items[0], Mapping):
        return {k: np.stack([it[k] for it in items]) for k in items[0]}
    return np.stack(items)


def _tree_set_rows(tree: Obs, idx: np.ndarray, rows: Obs) -> Obs:
    if isinstance(tree, Mapping):
        out = {k: np.array(v, copy=True) for k, v in tree.items()}
        for k in out:
            out[k][idx] = rows[k]
        return out
    out = np.array(tree, copy=True)
    out[idx] = rows
    return out


@dataclass
class Episode:
    """One finished training episode of one env, as stored observations (already converted)."""

    index: int  # training episode number: reset with episode_seed(seed, index)
    env: int  # which env of the vector env ran it
    observations: Obs
    actions: np.ndarray  # (T, act_dim) float32
    rewards: np.ndarray  # (T,) float32, the env's own rewards (scale them before storing)
    next_observations: Obs
    terminals: np.ndarray  # (T,) float32: 1 where the env terminated (not truncated)
    success: bool
    physics: dict[str, float] = field(default_factory=dict)  # the episode's randomized scalar parameters (reset info)

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def env_return(self) -> float:
        return float(np.sum(self.rewards))

    def state_dict(self) -> dict[str, Any]:
        """The episode as tensors, numbers and strings (what ``torch.load(weights_only=True)`` reads back), for a
        checkpoint that holds finished episodes not yet stored (EPOpt's pending batch); :meth:`from_state_dict`
        rebuilds it with the same arrays (dtypes and shapes kept)."""
        import torch

        def tensors(obs: Obs) -> Any:
            if isinstance(obs, Mapping):
                return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in obs.items()}
            return torch.from_numpy(np.ascontiguousarray(obs))

        return {"index": int(self.index), "env": int(self.env), "observations": tensors(self.observations),
                "actions": tensors(self.actions), "rewards": tensors(self.rewards),
                "next_observations": tensors(self.next_observations), "terminals": tensors(self.terminals),
                "success": bool(self.success), "physics": {k: float(v) for k, v in self.physics.items()}}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> Episode:
        """The episode :meth:`state_dict` wrote."""
        def arrays(obs: Any) -> Any:
            return {k: v.numpy() for k, v in obs.items()} if isinstance(obs, Mapping) else obs.numpy()

        return cls(index=int(d["index"]), env=int(d["env"]), observations=arrays(d["observations"]),
                   actions=d["actions"].numpy(), rewards=d["rewards"].numpy(),
                   next_observations=arrays(d["next_observations"]), terminals=d["terminals"].numpy(),
                   success=bool(d["success"]), physics=dict(d["physics"]))


@dataclass
class CollectStep:
    """What one :meth:`VectorCollector.step` produced."""

    transitions: int  # env steps counted (each is in an episode of ``episodes`` or still being collected)
    episodes: list[Episode]


class VectorCollector:
    """Steps ``num_envs`` envs with a batched policy, assembles per-env episodes, drains for checkpoints.

    ``convert`` turns a batch of the env's observations into what is stored and fed to the policy (state
    vectors, image dicts or encoder features); ``policy`` maps that batch to ``(num_envs, act_dim)`` actions.
    The vector env is created by the first :meth:`start` (so a finished run starts no workers).
    """

    def __init__(self, env_fn: Callable[[], gym.Env], num_envs: int, *, convert: Callable[[Mapping[str, Any]], Obs],
                 seed: int, asynchronous: bool = True) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs={num_envs}; expected an integer >= 1")
        self.env_fn, self.num_envs, self.convert = env_fn, int(num_envs), convert
        self.seed, self.asynchronous = int(seed), bool(asynchronous)
        self.venv: gym.vector.VectorEnv | None = None
        self.next_episode = 0
        self.active = np.zeros(self.num_envs, dtype=bool)
        self.cut = 0  # episodes the step budget dropped since start() (:attr:`in_flight`)
        self.ep_index = np.full(self.num_envs, -1, dtype=np.int64)
        self._steps: list[list[tuple[Any, np.ndarray, float, Any, float]]] = [[] for _ in range(self.num_envs)]
        self._success = [False] * self.num_envs
        self._physics: list[dict[str, float]] = [{} for _ in range(self.num_envs)]
        self._cur: Obs | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, next_episode: int) -> None:
        """Reset every env with the seeds of episodes ``next_episode, next_episode + 1, ...`` and collect on."""
        if self.venv is None:
            self.venv = make_vector_env(self.env_fn, self.num_envs, self.asynchronous)
        idx = np.arange(int(next_episode), int(next_episode) + self.num_envs)
        obs, info = self._guarded(self.venv.reset, seed=[episode_seed(self.seed, i) for i in idx])
        for i in range(self.num_envs):
            self._physics[i] = reset_physics(info, i)
        self.next_episode = int(idx[-1]) + 1
        self.ep_index[:] = idx
        self.active[:] = True
        self.cut = 0
        self._steps = [[] for _ in range(self.num_envs)]
        self._success = [False] * self.num_envs
        self._cur = self.convert(obs)

    @property
    def in_flight(self) -> int:
        """Episodes begun and not ended since :meth:`start`: those still running and those the step budget cut
        (:attr:`cut`); a run extended past its final checkpoint restarts them with other seeds."""
        return int(self.active.sum()) + self.cut

    @property
    def drained(self) -> bool:
        """No env is collecting: every episode begun has ended (or was dropped)."""
        return not self.active.any()

    def close(self) -> None:
        """Close the envs and their worker processes. Workers still owing an answer get :data:`CLOSE_TIMEOUT_S`
        to give it, then are terminated (:func:`close_vector_env`)."""
        if self.venv is not None:
            close_vector_env(self.venv)
            self.venv = None

    # ------------------------------------------------------------------ stepping

    def _guarded(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)`` on the vector env; a worker process that died (its pipe closed: a crash in native
        code, an OOM kill, ``os._exit``) raises :class:`~robopretrain.workers.WorkerProcessDied` instead of
        gymnasium's bare ``EOFError`` / ``BrokenPipeError``."""
        try:
            return call(*args, **kwargs)
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            if not isinstance(self.venv, gym.vector.AsyncVectorEnv):
                raise
            raise WorkerProcessDied(f"stage 3's env worker processes (online.num_envs={self.num_envs}): a worker "
                                    "process died (a crash in native code such as a simulator or renderer; killed, "
                                    f"e.g. out of memory; {type(exc).__name__} on its pipe); the run resumes from its "
                                    f"last checkpoint; online.asynchronous=false steps the envs in this process, "
                                    f"where a crash shows its own error; in your own script: {MAIN_GUARD_HINT}"
                                    ) from None

    def step(self, policy: Callable[[Obs], np.ndarray], *, budget: int, drain: bool = False) -> CollectStep:
        """One step of every env; returns the transitions counted (at most ``budget``) and the episodes that ended.

        ``drain``: envs whose episode ends become idle instead of starting a new one.
        """
        if self.venv is None or self._cur is None:
            raise RuntimeError("VectorCollector.step before start()")
        if self.drained:
            raise RuntimeError("VectorCollector.step with every env idle; call start() first")
        n = self.num_envs
        actions = np.asarray(policy(self._cur), dtype=np.float32).reshape(n, -1)
        obs, rew, term, trunc, info = self._guarded(self.venv.step, actions)
        rew = np.asarray(rew, dtype=np.float32)
        term, trunc = np.asarray(term, dtype=bool), np.asarray(trunc, dtype=bool)
        done = term | trunc
        nxt = self.convert(obs)
        has_success = np.asarray(info.get("_success", np.zeros(n, bool)), dtype=bool)
        success = np.asarray(info.get("success", np.zeros(n, bool)))
        counted, episodes = 0, []
        reset_new = np.zeros(n, dtype=bool)  # start the next training episode here
        reset_idle = np.zeros(n, dtype=bool)  # idle env at an episode end: reset it (unseeded) to keep it valid
        for i in range(n):
            if not self.active[i]:
                reset_idle[i] = done[i]
                continue
            if counted >= budget:  # the run's last step: this env's partial episode is dropped
                self.active[i] = False
                self.cut += 1
                self._steps[i] = []
                continue
            self._steps[i].append((tree_rows(self._cur, i), actions[i], float(rew[i]), tree_rows(nxt, i),
                                   float(term[i])))
            self._success[i] = self._success[i] or bool(success[i] if has_success[i] else rew[i] > 0)
            counted += 1
            if done[i]:
                episodes.append(self._finish(i))
                if drain:
                    self.active[i] = False
                    reset_idle[i] = True
                else:
                    reset_new[i] = True
        cur = nxt
        reset = reset_new | reset_idle
        if reset.any():
            seeds: list[int | None] = [None] * n
            for i in np.flatnonzero(reset_new):
                self.ep_index[i] = self.next_episode
                seeds[i] = episode_seed(self.seed, self.next_episode)
                self.next_episode += 1
            obs, info = self._guarded(self.venv.reset, seed=seeds, options={"reset_mask": reset})
            for i in np.flatnonzero(reset_new):
                self._physics[i] = reset_physics(info, int(i))
            rows = np.flatnonzero(reset)
            cur = _tree_set_rows(nxt, rows, self.convert(tree_rows(obs, rows)))
        self._cur = cur
        return CollectStep(counted, episodes)

    def _finish(self, i: int) -> Episode:
        steps, self._steps[i] = self._steps[i], []
        ep = Episode(index=int(self.ep_index[i]), env=i, observations=tree_stack([s[0] for s in steps]),
                     actions=np.stack([s[1] for s in steps]).astype(np.float32),
                     rewards=np.array([s[2] for s in steps], np.float32),
                     next_observations=tree_stack([s[3] for s in steps]),
                     terminals=np.array([s[4] for s in steps], np.float32), success=self._success[i],
                     physics=dict(self._physics[i]))
        self._success[i] = False
        return ep


def reset_physics(info: Mapping[str, Any], i: int) -> dict[str, float]:
    """Env ``i``'s scalar randomized parameters from a vector env's reset ``info`` (sim_envs' ``dr_params``:
    ``friction``, ``mass``, ``damping``, ``gripper_force`` scales when randomized; a user's env's own: floats, ints and
    bools, as floats); ``{}`` for envs without them."""
    params = info.get("dr_params")
    if not isinstance(params, Mapping):
        return {}
    out = {}
    for key, values in params.items():
        if key.startswith("_") or isinstance(values, Mapping):
            continue
        mask = params.get(f"_{key}")
        arr = np.asarray(values)
        if arr.dtype.kind in "fiub" and arr.ndim == 1 and (mask is None or bool(np.asarray(mask)[i])):
            out[str(key)] = float(arr[i])
    return out


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in ``(before, after]`` (periodic work when steps come in chunks)."""
    return after // int(every) > before // int(every)


def collect_and_update(
    collector: VectorCollector,
    policy: Callable[[Obs], np.ndarray],
    *,
    env_steps: int,
    started: int,
    total: int,
    utd: int,
    eval_every: int,
    log_every: int,
    checkpoint_every: int,
    store: Callable[[Episode], None],
    update: Callable[[bool], Mapping[str, Any]],
    on_log: Callable[[int, Mapping[str, Any]], None],
    on_eval: Callable[[int], None],
    on_checkpoint: Callable[[int, int], None],
    progress: Any = None,
) -> tuple[int, int]:
    """The stage-3 loop: collect a round, store finished episodes, update.

    From ``env_steps`` (``started`` episodes begun) to ``total`` env steps: each round ``collector.step`` counts
    some env steps, ``store(episode)`` gets every finished episode, then ``update(with_metrics)`` runs
    ``utd x`` (env steps counted) times. Metrics are requested from the round's last update when a multiple of
    ``log_every`` was passed (``on_log(env_steps, metrics)``) or a checkpoint follows, and checked by
    :func:`robopretrain.guards.finite_metrics_hook` before anything is written. ``on_eval(env_steps)`` runs when a
    multiple of ``eval_every`` was passed and at the end; ``on_checkpoint(env_steps, started)`` once
    ``checkpoint_every`` env steps have passed and every env finished its episode (the collector drains), and at
    the end; the envs then restart with the next episode seeds. ``progress``: a tqdm bar to advance.
    Returns the final ``(env_steps, started)``.
    """
    from robopretrain.guards import finite_metrics_hook

    if utd < 1:
        raise ValueError(f"utd={utd}; expected an integer >= 1 (updates per env step)")
    if env_steps >= total:
        return env_steps, started
    collector.start(started)
    started, last_ckpt = collector.next_episode, env_steps
    checked = env_steps  # the last env step whose update losses were checked finite (or this session's start)
    while env_steps < total:
        # drain from the round that can reach checkpoint_every: with one env, "checkpoint at the first episode end
        # at or after checkpoint_every env steps"
        due = env_steps + int(collector.active.sum()) - last_ckpt >= checkpoint_every
        out = collector.step(policy, budget=total - env_steps, drain=due)
        for episode in out.episodes:
            store(episode)
        before, env_steps, started = env_steps, env_steps + out.transitions, collector.next_episode
        log_now = crossed(before, env_steps, log_every)
        ckpt_now = collector.drained or env_steps >= total
        n_updates = out.transitions * int(utd)
        metrics: Mapping[str, Any] = {}
        for u in range(n_updates):
            metrics = update((log_now or ckpt_now) and u == n_updates - 1)
        if log_now or ckpt_now:
            finite_metrics_hook(env_steps, metrics, since=checked)
            checked = env_steps
        if log_now:
            on_log(env_steps, metrics)
        if progress is not None:
            progress.update(out.transitions)
        if crossed(before, env_steps, eval_every) or env_steps >= total:
            on_eval(env_steps)
        if ckpt_now:
            on_checkpoint(env_steps, started)
            last_ckpt = env_steps
            if env_steps < total:
                collector.start(started)  # every env restarts, exactly as a run resumed from here does
                started = collector.next_episode
    return env_steps, started


__all__ = ["CollectStep", "Episode", "VectorCollector", "collect_and_update", "crossed", "episode_seed",
           "close_vector_env", "make_vector_env", "reset_physics", "tree_rows", "tree_stack"]
