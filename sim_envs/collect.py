"""Collect scripted robot demonstrations of many tasks into one robomimic HDF5 file.

``python -m sim_envs.collect`` (Hydra, ``configs/collect.yaml``) runs the scripted experts of the chosen
tasks (``tasks: pretrain | target | all | [Name, ...]``) and writes every episode with
:class:`sim_envs.hdf5_writer.RobomimicWriter`. Each task gets a mix of episode kinds:

- ``clean``: the expert without noise;
- ``noisy``: the expert with Gaussian action noise;
- ``failing``: the expert with heavy noise that also gives up after a random fraction of the time limit
  (from then on it stops moving, holds its grip command and only the noise acts).

Whatever really happens is kept: ``ep_meta["success"]`` records the real outcome, so a "failing" episode
that succeeds anyway is stored as a success. Every episode's seeds derive from ``(seed, task_id, index)``,
so a rerun of the same config gives an identical file, with any ``num_workers``.

``collect(cfg)`` holds the logic (callable from tests and other scripts); the Hydra ``main`` only picks
the output folder.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import gymnasium as gym
import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

import sim_envs
from sim_envs.config_values import check_value_types
from sim_envs.experts import make_expert
from sim_envs.hdf5_writer import RobomimicWriter, check_image_storage, make_env_args
from sim_envs.rendering import check_display, exit_on_render_error
from sim_envs.tasks import PRETRAIN_TASKS, TARGET_TASKS, TASK_IDS, TASKS

KINDS = ("clean", "noisy", "failing")
# absolute, so Hydra finds the configs from any working directory and under a console script
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "robopretrain" / "configs")  # (package data)

TASK_GROUPS = {"pretrain": PRETRAIN_TASKS, "target": TARGET_TASKS, "all": tuple(TASKS)}
DEFAULT_FILENAME = "robot_demos.hdf5"
# Observation keys stored in the dataset (``task_id`` goes to the demo's attributes instead).
STORED_OBS_KEYS = ("agentview_image", "eye_in_hand_image", "proprio", "object")


@dataclass(frozen=True)
class EpisodePlan:
    """Everything that determines one episode before it runs."""

    task: str
    index: int
    kind: str
    noise: float
    env_seed: int
    expert_seed: int
    stop_step: int | None


@dataclass
class Episode:
    """One collected episode: ``frames[key]`` has N + 1 rows (every observation incl. the last)."""

    plan: EpisodePlan
    frames: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    success: bool
    terminated: bool
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.actions)


@dataclass
class TaskSummary:
    """Per-task statistics for the final report."""

    episodes: int = 0
    successes: int = 0
    transitions: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in KINDS})

    def add(self, episode: Episode) -> None:
        self.episodes += 1
        self.successes += int(episode.success)
        self.transitions += episode.length
        self.by_kind[episode.plan.kind][0] += int(episode.success)
        self.by_kind[episode.plan.kind][1] += 1


# ---------------------------------------------------------------------------------------------- config
def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """Task names from ``pretrain`` / ``target`` / ``all`` / one name / a list of names."""
    if isinstance(spec, str):
        if spec in TASK_GROUPS:
            return list(TASK_GROUPS[spec])
        names = [spec]
    else:
        names = [str(n) for n in spec]
    if not names:
        raise ValueError("collect config: tasks is empty; expected pretrain, target, all or a list of task names")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"collect config: tasks: unknown task(s) {unknown}; known tasks: {', '.join(TASKS)} "
                         f"(or one of the groups {', '.join(TASK_GROUPS)})")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"collect config: tasks lists {duplicated} more than once")
    return names


def kind_counts(num_episodes: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Split ``num_episodes`` into kinds by ``fractions`` (largest remainder; ties in KINDS order)."""
    exact = {k: num_episodes * float(fractions[k]) for k in KINDS}
    counts = {k: int(np.floor(v)) for k, v in exact.items()}
    leftover = num_episodes - sum(counts.values())
    by_remainder = sorted(KINDS, key=lambda k: (-(exact[k] - counts[k]), KINDS.index(k)))
    for k in by_remainder[:leftover]:
        counts[k] += 1
    return counts


INT_SETTINGS = ("episodes_per_task", "image_size", "seed", "num_workers", "compression_level", "chunk_frames")
FLAG_SETTINGS = ("render_images", "eye_in_hand", "overwrite")


def validate_config(cfg: DictConfig) -> None:
    """Check the collect config; errors name the key and what was expected."""
    check_value_types(cfg, "collect", ints=[k for k in INT_SETTINGS if k in cfg], numbers=("valid_fraction",),
                      flags=[k for k in FLAG_SETTINGS if k in cfg])  # (Meta-World's collector has no eye_in_hand)
    if int(cfg.episodes_per_task) < 1:
        raise ValueError(f"collect config: episodes_per_task={cfg.episodes_per_task}; expected >= 1")
    if int(cfg.seed) < 0:  # NumPy's "expected non-negative integer" named no setting
        raise ValueError(f"collect config: seed={cfg.seed}; expected an integer >= 0")
    try:  # the writer's own check, before any episode is collected
        check_image_storage(cfg.compression, cfg.compression_level, cfg.chunk_frames)
    except ValueError as e:
        raise ValueError(f"collect config: {e}") from None
    if int(cfg.num_workers) < 0:  # 0 and 1 both collect in this process (0 means that for the data loaders too)
        raise ValueError(f"collect config: num_workers={cfg.num_workers}; expected >= 0 (0 or 1: in this process)")
    missing = [k for k in KINDS if k not in cfg.kinds]
    if missing:  # e.g. ``~kinds.noisy`` on the command line: a kind is switched off by its fraction, not deleted
        zero = " ".join(f"kinds.{k}.fraction=0" for k in missing)
        raise ValueError(f"collect config: kinds is missing {missing} (every kind in {list(KINDS)} needs an entry); "
                         f"to collect none of a kind set {zero} instead, with the other fractions summing to 1")
    extra = [k for k in cfg.kinds if k not in KINDS]
    if extra:
        raise ValueError(f"collect config: kinds has unknown entries {extra}; expected {list(KINDS)}")
    check_value_types(cfg, "collect", numbers=[f"kinds.{k}.{n}" for k in KINDS for n in ("fraction", "noise")])
    for kind in KINDS:
        spec = cfg.kinds[kind]
        if float(spec.fraction) < 0:
            raise ValueError(f"collect config: kinds.{kind}.fraction={spec.fraction}; expected >= 0")
        if float(spec.noise) < 0:
            raise ValueError(f"collect config: kinds.{kind}.noise={spec.noise}; expected >= 0")
        stop = spec.get("stop")
        if stop is not None and not (len(stop) == 2 and 0.0 <= float(stop[0]) <= float(stop[1]) <= 1.0):
            raise ValueError(f"collect config: kinds.{kind}.stop={list(stop)}; expected [lo, hi] with "
                             "0 <= lo <= hi <= 1 (fractions of the task's time limit) or null")
    total = sum(float(cfg.kinds[k].fraction) for k in KINDS)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"collect config: kinds.*.fraction sum to {total:g}; expected 1")
    if not 0.0 <= float(cfg.valid_fraction) < 1.0:
        raise ValueError(f"collect config: valid_fraction={cfg.valid_fraction}; expected a number in [0, 1)")


def env_kwargs_from_config(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments of ``gym.make`` shared by every task."""
    randomization = cfg.randomization
    if isinstance(randomization, DictConfig):
        randomization = OmegaConf.to_container(randomization, resolve=True)
    return {"image_size": int(cfg.image_size), "render_images": bool(cfg.render_images),
            "eye_in_hand": bool(cfg.eye_in_hand), "embodiment": str(cfg.embodiment),
            "randomization": randomization, "terminate_on_success": True}


def randomization_level(randomization: str | Mapping[str, Any] | None) -> str:
    """The level name recorded in ``ep_meta`` for a level string or a randomization dict."""
    if randomization is None:
        return "none"
    if isinstance(randomization, str):
        return randomization
    return str(randomization.get("level", "none"))


def plan_episodes(cfg: DictConfig, tasks: Sequence[str]) -> list[EpisodePlan]:
    """The episodes to collect, in file order: task by task, clean then noisy then failing."""
    counts = kind_counts(int(cfg.episodes_per_task), {k: cfg.kinds[k].fraction for k in KINDS})
    plans = []
    for task in tasks:
        index = 0
        for kind in KINDS:
            spec = cfg.kinds[kind]
            for _ in range(counts[kind]):
                plans.append(_plan_one(int(cfg.seed), task, index, kind, float(spec.noise), spec.get("stop")))
                index += 1
    return plans


def _plan_one(seed: int, task: str, index: int, kind: str, noise: float,
              stop: Sequence[float] | None) -> EpisodePlan:
    env_seed, expert_seed, stop_seed = np.random.SeedSequence([seed, TASK_IDS[task], index]).generate_state(3)
    stop_step = None
    if stop is not None:
        fraction = np.random.default_rng(stop_seed).uniform(float(stop[0]), float(stop[1]))
        stop_step = int(round(fraction * TASKS[task].max_steps))
    return EpisodePlan(task, index, kind, noise, int(env_seed), int(expert_seed), stop_step)


# ---------------------------------------------------------------------------------------------- rollout
def make_env(task: str, env_kwargs: Mapping[str, Any]) -> gym.Env:
    """The registered gymnasium env of ``task`` (with its TimeLimit)."""
    return gym.make(sim_envs.env_id(task), **env_kwargs)


def _stored(obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(obs[k]) for k in STORED_OBS_KEYS if k in obs}


def give_up_action(grip: float, noise: float, rng: np.random.Generator, action_dim: int = 4) -> np.ndarray:
    """What a stopped expert does: ``(action_dim,)`` float32, no motion (zeros), the last grip command as the last
    component (the gripper's place in sim_envs' and Meta-World's actions), plus the episode's action noise."""
    action = np.zeros(int(action_dim))
    action[-1] = grip
    if noise > 0:
        action = action + rng.normal(0.0, noise, size=action.shape)
    return np.clip(action, -1.0, 1.0).astype(np.float32)


def run_episode(env: gym.Env, plan: EpisodePlan) -> Episode:
    """Roll out one planned episode of a sim_envs task until success (terminal) or the time limit (truncation)."""
    rng = np.random.default_rng(plan.expert_seed)
    obs, _ = env.reset(seed=plan.env_seed)
    return roll_out(env, plan, obs, make_expert(env, noise=plan.noise, rng=rng), rng, _stored)


def roll_out(env: gym.Env, plan: EpisodePlan, obs: Mapping[str, Any], expert: Any, rng: np.random.Generator,
             stored: Callable[[Mapping[str, Any]], dict[str, np.ndarray]]) -> Episode:
    """Step ``env`` (just reset to ``obs``) with ``expert.act`` (after ``plan.stop_step`` actions: the give-up
    action, drawing noise from ``rng``) until it terminates or truncates; ``stored(obs)`` picks the kept keys."""
    frames = [stored(obs)]
    actions, rewards, dones = [], [], []
    grip = -1.0
    action_dim = int(np.prod(env.action_space.shape))
    terminated = truncated = False
    info: dict[str, Any] = {}
    while not (terminated or truncated):
        if plan.stop_step is not None and len(actions) >= plan.stop_step:
            action = give_up_action(grip, plan.noise, rng, action_dim)
        else:
            action = expert.act(obs)
            grip = float(action[-1])
        obs, reward, terminated, truncated, info = env.step(action)
        frames.append(stored(obs))
        actions.append(action)
        rewards.append(reward)
        dones.append(terminated)
    stacked = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    return Episode(plan, stacked, np.asarray(actions, np.float32), np.asarray(rewards, np.float32),
                   np.asarray(dones, np.uint8), bool(info.get("success", False)), bool(terminated),
                   bool(truncated) and not terminated)


def episode_meta(episode: Episode, seed: int, randomization: str) -> dict[str, Any]:
    """The demo's ``ep_meta`` attribute: outcome, kind, noise, seeds and randomization level."""
    plan = episode.plan
    return {"success": episode.success, "expert_noise": plan.noise, "kind": plan.kind, "seed": plan.env_seed,
            "expert_seed": plan.expert_seed, "seed_entropy": [seed, TASK_IDS[plan.task], plan.index],
            "length": episode.length, "randomization": randomization, "stop_step": plan.stop_step,
            "terminated": episode.terminated, "truncated": episode.truncated}


def _serial_episodes(plans: Sequence[EpisodePlan], env_kwargs: Mapping[str, Any]) -> Iterator[Episode]:
    env, env_task = None, None
    try:
        for plan in plans:
            if plan.task != env_task:
                if env is not None:
                    env.close()
                env, env_task = make_env(plan.task, env_kwargs), plan.task
            yield run_episode(env, plan)
    finally:
        if env is not None:
            env.close()


# One env per worker process, rebuilt when the task changes.
_WORKER: dict[str, Any] = {}


def _worker_init(env_kwargs: Mapping[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops the pool)
    _WORKER.update(env_kwargs=dict(env_kwargs), env=None, task=None)


def _worker_run(plan: EpisodePlan) -> Episode:
    if _WORKER["task"] != plan.task:
        if _WORKER["env"] is not None:
            _WORKER["env"].close()
        _WORKER["env"], _WORKER["task"] = make_env(plan.task, _WORKER["env_kwargs"]), plan.task
    return run_episode(_WORKER["env"], plan)


def _parallel_episodes(plans: Sequence[EpisodePlan], env_kwargs: Mapping[str, Any],
                       num_workers: int) -> Iterator[Episode]:
    """Episodes from ``num_workers`` processes (spawned: each builds its own env), in plan order. A machine that
    cannot render (``MUJOCO_GL=glfw`` without a display) fails here, before any worker starts: a worker failing while
    others still start up could leave their tracebacks after the one-line error."""
    if env_kwargs.get("render_images"):
        check_display()
    per_task = len(plans) / len({p.task for p in plans})
    chunk = max(1, int(np.ceil(per_task / num_workers)))  # consecutive episodes of a task share a worker's env
    from robopretrain.workers import process_map  # here: the library itself needs nothing of ours

    yield from process_map(_worker_run, plans, num_workers, what="the collection's worker processes",
                           initializer=_worker_init, initargs=(dict(env_kwargs),), chunksize=chunk)


def iter_episodes(plans: Sequence[EpisodePlan], env_kwargs: Mapping[str, Any],
                  num_workers: int = 1) -> Iterator[Episode]:
    """Run the planned episodes, in order; identical results for any ``num_workers``."""
    if num_workers <= 1 or len(plans) <= 1:
        return _serial_episodes(plans, env_kwargs)
    return _parallel_episodes(plans, env_kwargs, num_workers)


# ---------------------------------------------------------------------------------------------- collect
def _package_version() -> str:
    try:
        return metadata.version("robopretrain")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_env_args(tasks: Sequence[str], env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """robomimic ``env_args``: one gym id for a single task, ``sim_envs/multitask`` for several."""
    name = sim_envs.env_id(tasks[0]) if len(tasks) == 1 else "sim_envs/multitask"
    kwargs = dict(env_kwargs, tasks=list(tasks), task_ids={t: TASK_IDS[t] for t in tasks},
                  env_ids={t: sim_envs.env_id(t) for t in tasks})
    return make_env_args(name, _package_version(), kwargs)


def resolve_output_path(cfg: DictConfig, output_dir: str | Path | None) -> Path:
    """``cfg.output`` when set, else ``output_dir / robot_demos.hdf5``. ``ValueError`` for an output that is a folder
    or lies under a file (said before the collection, not by the write after it)."""
    if cfg.get("output"):
        path = Path(str(cfg.output)).expanduser()
        if path.is_dir():
            raise ValueError(f"collect config: output={path} is a folder; give the .hdf5 file to write (e.g. "
                             f"output={path / DEFAULT_FILENAME})")
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise ValueError(f"collect config: output={path}: {above} is a file, not a folder")
        return path
    if output_dir is None:
        raise ValueError("collect config: output is not set and no output folder was given; "
                         "set output=/path/to/file.hdf5")
    return Path(output_dir) / DEFAULT_FILENAME


def collect(cfg: DictConfig | Mapping[str, Any], output_dir: str | Path | None = None,
            progress: bool = True) -> Path:
    """Collect the demonstrations ``cfg`` asks for; returns the path of the finished HDF5 file.

    The file goes to ``cfg.output`` when set, else ``output_dir / robot_demos.hdf5``. A summary table
    (per task: episodes, success rate, success per kind, mean length) is printed at the end.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    validate_config(cfg)
    tasks = resolve_tasks(list(cfg.tasks) if isinstance(cfg.tasks, ListConfig) else str(cfg.tasks))
    path = resolve_output_path(cfg, output_dir)
    env_kwargs = env_kwargs_from_config(cfg)
    level = randomization_level(env_kwargs["randomization"])
    plans = plan_episodes(cfg, tasks)
    summaries = {t: TaskSummary() for t in tasks}
    start = time.perf_counter()
    writer = RobomimicWriter(path, build_env_args(tasks, env_kwargs), valid_fraction=float(cfg.valid_fraction),
                             split_seed=int(cfg.seed), compression=cfg.compression,
                             compression_level=int(cfg.compression_level), chunk_frames=int(cfg.chunk_frames),
                             overwrite=bool(cfg.overwrite), info=collection_info(cfg, tasks))
    with writer:
        bar = tqdm(iter_episodes(plans, env_kwargs, int(cfg.num_workers)), total=len(plans), desc="collect",
                   unit="ep", disable=not progress)
        for episode in bar:
            _write_episode(writer, episode, int(cfg.seed), level)
            summaries[episode.plan.task].add(episode)
            bar.set_postfix(task=episode.plan.task, steps=writer.total, refresh=False)
    elapsed = time.perf_counter() - start
    print(format_summary(summaries, path, elapsed))
    return path


def collection_info(cfg: DictConfig, tasks: Sequence[str]) -> dict[str, Any]:
    """What produced the file: the resolved collect config and library versions."""
    import h5py
    import mujoco
    return {"config": OmegaConf.to_container(cfg, resolve=True), "tasks": list(tasks),
            "versions": {"robopretrain": _package_version(), "mujoco": mujoco.__version__,
                         "numpy": np.__version__, "h5py": h5py.__version__}}


def _write_episode(writer: RobomimicWriter, episode: Episode, seed: int, level: str) -> str:
    obs = {k: v[:-1] for k, v in episode.frames.items()}
    next_obs = {k: v[1:] for k, v in episode.frames.items()}
    return writer.add_episode(task=episode.plan.task, task_id=TASK_IDS[episode.plan.task], obs=obs,
                              next_obs=next_obs, actions=episode.actions, rewards=episode.rewards,
                              dones=episode.dones, ep_meta=episode_meta(episode, seed, level))


def format_summary(summaries: Mapping[str, TaskSummary], path: Path, elapsed: float) -> str:
    """The end-of-run table: per task episodes, success rate, success per kind, mean length."""
    width = max([15] + [len(task) + 2 for task in summaries])
    header = f"{'task':<{width}}{'episodes':>9}{'success':>9}{'clean':>8}{'noisy':>8}{'failing':>9}{'mean_len':>10}"
    lines = [header, "-" * len(header)]
    episodes = transitions = successes = 0
    for task, s in summaries.items():
        kinds = [f"{s.by_kind[k][0]}/{s.by_kind[k][1]}" for k in KINDS]
        lines.append(f"{task:<{width}}{s.episodes:>9}{s.successes / max(s.episodes, 1):>9.2f}{kinds[0]:>8}"
                     f"{kinds[1]:>8}{kinds[2]:>9}{s.transitions / max(s.episodes, 1):>10.1f}")
        episodes += s.episodes
        transitions += s.transitions
        successes += s.successes
    size_mb = path.stat().st_size / 2**20 if path.exists() else 0.0
    lines.append("-" * len(header))
    lines.append(f"{episodes} episodes, {transitions} transitions, success {successes / max(episodes, 1):.2f}; "
                 f"{elapsed:.1f} s ({transitions / max(elapsed, 1e-9):.0f} steps/s); {size_mb:.1f} MiB -> {path}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="collect")
@exit_on_render_error
def main(cfg: DictConfig) -> None:
    collect(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":  # through the toolkit's command line: one-line config errors, --help of this config
    import sys

    from robopretrain.cli import launch

    launch("sim_envs.collect", sys.argv[1:])
