"""Collect Meta-World scripted-expert demonstrations into one robomimic HDF5 file.

    python -m robopretrain.envs.metaworld_collect tasks=prior episodes_per_task=50 output=mw_prior.hdf5
    python -m robopretrain.envs.metaworld_collect 'tasks=[drawer-open-v3,reach-v3]' noise=0.1 render_images=false

The same file layout, episode kinds and seeding as ``python -m sim_envs.collect`` (it reuses that module's
plan/summary pieces and :class:`sim_envs.hdf5_writer.RobomimicWriter`): per task a mix of ``clean`` (expert
as is), ``noisy`` (Gaussian action noise, clipped to [-1, 1]) and ``failing`` (heavy noise, and the expert
gives up part-way) episodes; ``ep_meta["success"]`` is the real outcome. The experts are Meta-World's own
scripted policies (``metaworld.policies``), acting from the observation. Rewards are sparse {0, 1}, ``dones``
is 1 only at the success that ends an episode; episodes that run out of time are truncations (``dones`` all 0).
Every episode's seeds derive from ``(seed, task_id, index)``: the same settings give the same file, with any
``num_workers``. ``data.attrs["env_args"]`` names the env (``robopretrain/MetaWorld-<task>``, or
``robopretrain/MetaWorld-multitask`` with ``env_ids``) and its keyword arguments, so a target can rebuild it.

Settings are :class:`MetaWorldCollectConfig` (Hydra, ``key=value`` overrides; ``--help`` lists them).
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from robopretrain.cli import RERUN_STARTS_OVER, friendly_errors, run_hydra
from robopretrain.envs.metaworld import (ENTRY_POINT, ENV_ID_PREFIX, MESH_CELL, MT10_TASKS, TASK_IDS,
                                         MetaWorldEnv, env_id, metaworld_state, mt10_split, task_name)
from robopretrain.workers import process_map
from sim_envs.collect import (KINDS, Episode, EpisodePlan, TaskSummary, collection_info, format_summary,
                              kind_counts, roll_out, validate_config)
from sim_envs.hdf5_writer import RobomimicWriter, make_env_args

CONFIG_NAME = "metaworld_collect"
DEFAULT_FILENAME = "metaworld_demos.hdf5"
HELP_NAME = "robopretrain.envs.metaworld_collect (Meta-World demonstrations)"
# ``tasks=`` groups: MT10, its prior tasks (all but ``target``), the held-out ``target`` alone.
TASK_GROUPS = ("mt10", "prior", "target")


@dataclass
class KindConfig:
    fraction: float  # share of each task's episodes
    noise: float  # std of the Gaussian action noise
    stop: Optional[list[float]] = None  # [lo, hi]: the expert gives up after this fraction of the time limit


@dataclass
class MetaWorldCollectConfig:
    tasks: Any = "mt10"  # mt10 | prior (MT10 without target) | target | a task name | a list of task names
    target: str = "drawer-open-v3"  # the held-out task of tasks=prior / tasks=target
    episodes_per_task: int = 10
    noise: Optional[float] = None  # shortcut for kinds.noisy.noise
    kinds: dict[str, KindConfig] = field(default_factory=lambda: {
        "clean": KindConfig(0.5, 0.0), "noisy": KindConfig(0.3, 0.1), "failing": KindConfig(0.2, 1.0, [0.1, 0.5])})
    image_size: int = 64
    render_images: bool = True  # false: state-only file (proprio, object), much faster
    cameras: Any = field(default_factory=lambda: ["corner"])  # Meta-World camera names (corner -> agentview); one name or a list
    max_episode_steps: int = 200  # time limit per episode (Meta-World's own is 500)
    mesh_cell: float = MESH_CELL  # render-mesh simplification grid in metres (0: Meta-World's full meshes)
    seed: int = 0
    valid_fraction: float = 0.1  # share of each task's episodes in mask/valid
    num_workers: int = 1  # > 1: spawned worker processes (0 or 1: this process); the file is the same
    output: Optional[str] = None  # null: <hydra run dir>/metaworld_demos.hdf5
    overwrite: bool = False
    compression: Optional[str] = "lzf"  # image datasets: lzf | gzip | null
    compression_level: int = 4  # gzip only
    chunk_frames: int = 16  # frames per image chunk
    hydra: Any = field(default_factory=lambda: {"help": {"app_name": HELP_NAME}})  # the --help header


ConfigStore.instance().store(name=CONFIG_NAME, node=MetaWorldCollectConfig)


# ---------------------------------------------------------------------------------------------- config
def resolve_tasks(spec: str | Sequence[str], target: str = "drawer-open-v3") -> list[str]:
    """Task names from ``mt10`` / ``prior`` / ``target`` / one name / a list of names (``-v3`` optional)."""
    if isinstance(spec, str):
        groups = {"mt10": list(MT10_TASKS), "prior": list(mt10_split(target).prior), "target": [task_name(target)]}
        names = groups.get(spec, [spec])
    else:
        names = [str(n) for n in spec]
    if not names:
        raise ValueError(f"{CONFIG_NAME} config: tasks is empty; expected {', '.join(TASK_GROUPS)}, a task or a list")
    try:
        names = [task_name(n) for n in names]
    except ValueError as exc:
        raise ValueError(f"{CONFIG_NAME} config: tasks: {exc} (or one of the groups {', '.join(TASK_GROUPS)})") \
            from None
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{CONFIG_NAME} config: tasks lists {duplicated} more than once")
    return names


def camera_names(cameras: str | Sequence[str]) -> list[str]:
    """``cameras=`` as a list of names: one name (``cameras=corner``) is a list of one."""
    return [str(cameras)] if isinstance(cameras, str) else [str(c) for c in cameras]


def env_kwargs_from_config(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`MetaWorldEnv` shared by every task (sparse reward, end on success)."""
    return {"image_size": int(cfg.image_size), "render_images": bool(cfg.render_images),
            "cameras": camera_names(cfg.cameras), "max_episode_steps": int(cfg.max_episode_steps),
            "mesh_cell": float(cfg.mesh_cell), "reward": "sparse", "terminate_on_success": True}


def plan_episodes(cfg: DictConfig, tasks: Sequence[str]) -> list[EpisodePlan]:
    """The episodes to collect, in file order: task by task, clean then noisy then failing."""
    counts = kind_counts(int(cfg.episodes_per_task), {k: cfg.kinds[k].fraction for k in KINDS})
    kinds = [k for k in KINDS for _ in range(counts[k])]
    limit = int(cfg.max_episode_steps)
    plans = []
    for task in tasks:
        for index, kind in enumerate(kinds):
            spec = cfg.kinds[kind]
            env_seed, expert_seed, stop_seed = np.random.SeedSequence(
                [int(cfg.seed), TASK_IDS[task], index]).generate_state(3)
            stop = spec.get("stop")
            stop_step = None if stop is None else int(round(
                np.random.default_rng(stop_seed).uniform(float(stop[0]), float(stop[1])) * limit))
            plans.append(EpisodePlan(task, index, kind, float(spec.noise), int(env_seed), int(expert_seed), stop_step))
    return plans


# ---------------------------------------------------------------------------------------------- rollout
class ScriptedExpert:
    """Meta-World's scripted policy of a task, with Gaussian action noise (clipped to [-1, 1]).

    It acts from our observation dict alone: ``proprio`` and ``object`` hold every part of Meta-World's state
    that the policies read (they parse, but never use, the previous frame's [18:36]).
    """

    def __init__(self, task: str, noise: float = 0.0, rng: np.random.Generator | None = None) -> None:
        from robopretrain.envs.metaworld import import_metaworld

        import_metaworld()  # (not installed: one line naming the extra)
        from metaworld.policies import ENV_POLICY_MAP

        self.policy = ENV_POLICY_MAP[task_name(task)]()
        self.noise = float(noise)
        self.rng = rng if rng is not None else np.random.default_rng()

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The action for an observation of :class:`MetaWorldEnv`."""
        with warnings.catch_warnings():  # the policies warn whenever their gains saturate the action
            warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
            action = np.asarray(self.policy.get_action(metaworld_state(obs)), np.float64)
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def run_episode(env: MetaWorldEnv, plan: EpisodePlan) -> Episode:
    """Roll out one planned episode until success (terminal) or the time limit (truncation)."""
    rng = np.random.default_rng(plan.expert_seed)
    expert = ScriptedExpert(plan.task, plan.noise, rng)
    obs, _ = env.reset(seed=plan.env_seed)
    return roll_out(env, plan, obs, expert, rng, _stored)


def _stored(obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in obs.items() if k != "task_id"}  # task_id goes to the demo's attrs


# One env per process, rebuilt when the task changes (in the main process too when num_workers=1).
_ENV: dict[str, Any] = {"env": None, "task": None, "kwargs": {}}


def _init_env_cache(env_kwargs: Mapping[str, Any]) -> None:
    if mp.parent_process() is not None:  # a pool worker: Ctrl-C is the parent's to handle (it stops the pool)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _ENV.update(env=None, task=None, kwargs=dict(env_kwargs))


def _run_cached(plan: EpisodePlan) -> Episode:
    if _ENV["task"] != plan.task:
        _close_env_cache()
        _ENV["env"], _ENV["task"] = MetaWorldEnv(task=plan.task, **_ENV["kwargs"]), plan.task
    return run_episode(_ENV["env"], plan)


def _close_env_cache() -> None:
    if _ENV["env"] is not None:
        _ENV["env"].close()
    _ENV.update(env=None, task=None)


def iter_episodes(plans: Sequence[EpisodePlan], env_kwargs: Mapping[str, Any],
                  num_workers: int = 1) -> Iterator[Episode]:
    """Run the planned episodes, in order; the same results for any ``num_workers`` (spawned processes)."""
    if num_workers <= 1 or len(plans) <= 1:
        _init_env_cache(env_kwargs)
        try:
            yield from map(_run_cached, plans)
        finally:
            _close_env_cache()
        return
    chunk = max(1, int(np.ceil(len(plans) / len({p.task for p in plans}) / num_workers)))
    yield from process_map(_run_cached, plans, num_workers, what="the collection's worker processes",
                           initializer=_init_env_cache, initargs=(dict(env_kwargs),), chunksize=chunk)


# ---------------------------------------------------------------------------------------------- collect
def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_env_args(tasks: Sequence[str], env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """robomimic ``env_args``: the env id of a single task, ``robopretrain/MetaWorld-multitask`` for several;
    ``env_kwargs`` holds the constructor's keywords plus ``entry_point``, ``tasks``, ``task_ids``, ``env_ids``."""
    name = env_id(tasks[0]) if len(tasks) == 1 else ENV_ID_PREFIX + "multitask"
    kwargs = dict(env_kwargs, entry_point=ENTRY_POINT, tasks=list(tasks), task_ids={t: TASK_IDS[t] for t in tasks},
                  env_ids={t: env_id(t) for t in tasks})
    return make_env_args(name, _version("metaworld"), kwargs)


def episode_meta(episode: Episode, seed: int) -> dict[str, Any]:
    """The demo's ``ep_meta``: outcome, kind, noise, seeds, how it ended."""
    plan = episode.plan
    return {"success": episode.success, "expert_noise": plan.noise, "kind": plan.kind, "seed": plan.env_seed,
            "expert_seed": plan.expert_seed, "seed_entropy": [seed, TASK_IDS[plan.task], plan.index],
            "length": episode.length, "stop_step": plan.stop_step, "terminated": episode.terminated,
            "truncated": episode.truncated, "expert": "metaworld.policies"}


def collect(cfg: DictConfig | Mapping[str, Any], output_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Collect the demonstrations ``cfg`` asks for; returns the path of the finished HDF5 file.

    ``cfg`` is a :class:`MetaWorldCollectConfig` (or a mapping of some of its fields). The file goes to
    ``cfg.output`` when set, else ``output_dir / metaworld_demos.hdf5``. Prints a per-task summary at the end.
    """
    cfg = OmegaConf.merge(OmegaConf.structured(MetaWorldCollectConfig),
                          cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)))
    if cfg.noise is not None:
        cfg.kinds.noisy.noise = float(cfg.noise)
    validate_config(cfg)
    if int(cfg.max_episode_steps) < 1:
        raise ValueError(f"{CONFIG_NAME} config: max_episode_steps={cfg.max_episode_steps}; expected >= 1")
    tasks = resolve_tasks(list(cfg.tasks) if isinstance(cfg.tasks, ListConfig) else str(cfg.tasks), str(cfg.target))
    if cfg.get("output"):
        path = Path(str(cfg.output)).expanduser()
    elif output_dir is not None:
        path = Path(output_dir) / DEFAULT_FILENAME
    else:
        raise ValueError(f"{CONFIG_NAME} config: output is not set and no output folder was given; "
                         "set output=/path/to/file.hdf5")
    env_kwargs = env_kwargs_from_config(cfg)
    probe = MetaWorldEnv(task=tasks[0], **env_kwargs)  # bad settings or no Meta-World: fail before any work
    action_dim = int(probe.action_space.shape[0])  # the env's own size (the writer refuses an episode that differs)
    probe.close()
    plans = plan_episodes(cfg, tasks)
    info = collection_info(cfg, tasks)
    info["versions"]["metaworld"] = _version("metaworld")
    summaries = {t: TaskSummary() for t in tasks}
    start = time.perf_counter()
    writer = RobomimicWriter(path, build_env_args(tasks, env_kwargs), action_dim=action_dim,
                             valid_fraction=float(cfg.valid_fraction), split_seed=int(cfg.seed),
                             compression=cfg.compression, compression_level=int(cfg.compression_level),
                             chunk_frames=int(cfg.chunk_frames), overwrite=bool(cfg.overwrite), info=info)
    with writer:
        bar = tqdm(iter_episodes(plans, env_kwargs, int(cfg.num_workers)), total=len(plans), desc="collect",
                   unit="ep", disable=not progress)
        for episode in bar:
            frames = episode.frames
            writer.add_episode(task=episode.plan.task, task_id=TASK_IDS[episode.plan.task],
                               obs={k: v[:-1] for k, v in frames.items()},
                               next_obs={k: v[1:] for k, v in frames.items()},
                               actions=episode.actions, rewards=episode.rewards, dones=episode.dones,
                               ep_meta=episode_meta(episode, int(cfg.seed)))
            summaries[episode.plan.task].add(episode)
            bar.set_postfix(task=episode.plan.task, steps=writer.total, refresh=False)
    print(format_summary(summaries, path, time.perf_counter() - start))
    return path


@hydra.main(version_base="1.3", config_path=None, config_name=CONFIG_NAME)
@friendly_errors(rerun=RERUN_STARTS_OVER)
def main(cfg: DictConfig) -> None:
    collect(cfg, output_dir=HydraConfig.get().runtime.output_dir)


def cli_main() -> None:
    """``python -m robopretrain.envs.metaworld_collect`` and its console script: one-line config errors, then Hydra."""
    run_hydra(main, CONFIG_NAME)


if __name__ == "__main__":
    cli_main()
