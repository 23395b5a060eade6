"""Robustness evaluation: success of a policy checkpoint under distractors, physics and visual shifts.

``python -m robopretrain.evaluate checkpoint=<ckpt or run folder>`` (Hydra, ``configs/evaluate.yaml``), or
:func:`evaluate_robustness` from Python. Two kinds of checkpoint are accepted; episodes run the deterministic
policy:

* state-based (stage 2 ``robopretrain.train`` / stage 3 ``finetune.train``): loaded with
  :mod:`robopretrain.checkpoint`, the agent rebuilt from its own config, observations ``state_vector(obs_keys)``;
* image agents (``meta.json`` with ``obs_type: image``, written by the image pipeline with
  :func:`robopretrain.image_checkpoint.save_image_checkpoint`): rebuilt by
  :func:`robopretrain.image_checkpoint.load_image_agent`; the env renders the agent's image keys at the agent's
  image size and observations are built by :func:`robopretrain.image_rl.stored_obs` (images, ``state_keys`` and
  the task one-hot), exactly as in training.

* Conditions: ``nominal`` (no randomization, no distractors), then every factor of ``cfg.factors`` at each of
  its levels: integer levels place exactly that many distractors; ``train`` / ``eval_easy`` / ``eval_hard``
  draw the factor from the training range or from the held-out evaluation ranges of
  :mod:`sim_envs.randomization` (disjoint from training); ``all`` shifts every factor at once.
* Episode ``i`` of every condition is reset with seed ``eval_seed + i``, so conditions share their initial
  states and two runs of the same checkpoint give identical numbers, whatever the number of workers.
* Per condition: success rate, its percentile-bootstrap confidence interval (``bootstrap.confidence``,
  fixed resampling seed), the drop relative to nominal, mean return and length.
* Output folder (``output_dir`` or the Hydra run folder): ``eval_info.json`` (per episode and aggregated),
  ``success_per_factor.png`` and ``videos/<factor>.mp4`` (the factor's last level, episode 0, agentview).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from robopretrain.checkpoint import Checkpoint, CheckpointError, load_checkpoint, resolve_checkpoint_dir, write_text_atomic
from robopretrain.cli import config_folder, friendly_errors, run_hydra
from robopretrain.image_checkpoint import is_image_checkpoint

log = logging.getLogger(__name__)

NOMINAL = "nominal"
LEVEL_NAMES = ("train", "eval_easy", "eval_hard")
PARKED_BELOW_Z = -0.3  # unused distractor slots are parked under the table (sim_envs.scene.PARK_POS)


@dataclass(frozen=True)
class Condition:
    """One (factor, level) setting: the env's ``randomization`` argument for it."""

    factor: str
    level: str
    randomization: Any

    @property
    def key(self) -> str:
        return f"{self.factor}/{self.level}"


# --------------------------------------------------------------------------- conditions


def build_conditions(cfg: DictConfig) -> list[Condition]:
    """Nominal first, then each selected factor at each of its levels; errors name the bad key."""
    factors = OmegaConf.to_container(cfg.factors, resolve=True)
    selected = list(cfg.select) if cfg.get("select") else list(factors)
    unknown = [name for name in selected if name not in factors and name != NOMINAL]
    if unknown:
        raise ValueError(f"evaluate config: select={selected} names unknown factor(s) {unknown}; "
                         f"expected some of {[NOMINAL, *factors]}")
    out = [Condition(NOMINAL, "none", {"level": "none", "num_distractors": 0})]
    for name in selected:
        if name == NOMINAL:
            continue
        spec = factors[name]
        if not isinstance(spec, Mapping) or "randomize" not in spec or "levels" not in spec:
            raise ValueError(f"evaluate config: factors.{name} must be a mapping with keys 'randomize' and 'levels'")
        if not spec["levels"]:
            raise ValueError(f"evaluate config: factors.{name}.levels is empty; expected at least one level")
        for level in spec["levels"]:
            out.append(Condition(name, str(level), condition_randomization(name, list(spec["randomize"]), level)))
    return out


def condition_randomization(name: str, randomize: Sequence[str], level: Any) -> dict[str, Any]:
    """The randomization dict of one level: an integer is a distractor count, a name a range level."""
    from sim_envs.randomization import FACTORS

    bad = [f for f in randomize if f not in FACTORS]
    if bad:
        raise ValueError(f"evaluate config: factors.{name}.randomize has unknown factor(s) {bad}; expected some of {FACTORS}")
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise ValueError(f"evaluate config: factors.{name}.levels has {level!r}; expected an int or one of {LEVEL_NAMES}")
    if isinstance(level, int) or str(level).isdigit():
        count = int(level)
        if randomize != ["distractors"]:
            raise ValueError(f"evaluate config: factors.{name}: integer level {count} is a distractor count; "
                             "only a factor with randomize: [distractors] takes integer levels")
        from sim_envs.scene import MAX_DISTRACTORS

        if not 0 <= count <= MAX_DISTRACTORS:
            raise ValueError(f"evaluate config: factors.{name}.levels has {count}; expected 0..{MAX_DISTRACTORS}")
        return {"level": "none", "num_distractors": count}
    if level not in LEVEL_NAMES:
        raise ValueError(f"evaluate config: factors.{name}.levels has {level!r}; expected an int or one of {LEVEL_NAMES}")
    return {"level": str(level), "factors": list(randomize)}


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class PolicySpec:
    """What a worker needs to rebuild the policy: the checkpoint folder and how to build its observations.

    ``obs_type`` is ``state`` (``obs_keys`` concatenated, :func:`robopretrain.evaluation.state_vector`) or
    ``image`` (``image_keys`` rendered at ``image_size``, ``state_keys`` and the task one-hot,
    :func:`robopretrain.image_rl.stored_obs`).
    """

    checkpoint: str
    obs_keys: tuple[str, ...]
    num_tasks: int
    device: str
    obs_type: str = "state"
    image_keys: tuple[str, ...] = ()
    image_size: int = 0


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``path`` (a ``ckpt_*`` folder, or a run folder holding ``checkpoints/``), without state."""
    ckpt = load_checkpoint(resolve_checkpoint_dir(path), with_state=False)
    for key in ("algo", "obs_dim", "act_dim"):
        if key not in ckpt.meta:
            raise CheckpointError(f"{ckpt.path / 'meta.json'}: missing key {key!r}; expected a policy checkpoint "
                                  "written by robopretrain.train, finetune.train or the image pipeline")
    if is_image_checkpoint(ckpt):
        for key in ("image_obs", "state_keys", "num_tasks", "encoder"):
            if key not in ckpt.meta:
                raise CheckpointError(f"{ckpt.path / 'meta.json'}: image checkpoint without key {key!r}; "
                                      "write it with robopretrain.image_checkpoint.image_agent_meta")
    return ckpt


def default_task(ckpt: Checkpoint) -> str:
    """The checkpoint's own task (stage 3's target), else the first task the stage-2 agent was trained on."""
    if ckpt.meta.get("task"):
        return str(ckpt.meta["task"])
    if ckpt.config.get("task"):
        return str(ckpt.config.task)
    names = ckpt.meta.get("task_names") or []
    if not names:
        raise CheckpointError(f"{ckpt.path / 'meta.json'}: names no task; pass task=<name>")
    return str(names[0])


def policy_spec(ckpt: Checkpoint, device: str) -> PolicySpec:
    """How to rebuild the checkpoint's policy and feed it observations, from its ``meta.json`` (and config)."""
    if is_image_checkpoint(ckpt):
        image = ckpt.meta["image_obs"]
        return PolicySpec(str(ckpt.path), tuple(ckpt.meta["state_keys"]), int(ckpt.meta["num_tasks"]), str(device),
                          obs_type="image", image_keys=tuple(image["image_keys"]),
                          image_size=int(image["image_size"]))
    obs_keys = tuple(ckpt.meta.get("obs_keys") or ckpt.config.obs_keys)
    return PolicySpec(str(ckpt.path), obs_keys, int(ckpt.meta.get("num_tasks", ckpt.config.get("num_tasks", 0))),
                      str(device))


def load_policy(spec: PolicySpec) -> Any:
    """The agent of the checkpoint, its weights loaded, ready for ``act(obs, deterministic=True)``."""
    import torch

    if spec.obs_type == "image":
        from robopretrain.image_checkpoint import load_image_agent

        agent, _ = load_image_agent(spec.checkpoint, device=spec.device)
        agent.train_mode(False)  # trained encoders to eval mode (no augmentation is applied when acting)
        return agent
    from robopretrain.train import build_agent, restore_agent

    ckpt = load_checkpoint(spec.checkpoint, with_state=False)
    agent = build_agent(ckpt.config, int(ckpt.meta["obs_dim"]), int(ckpt.meta["act_dim"]), torch.device(spec.device))
    restore_agent(agent, ckpt, with_optimizer=False)
    return agent


def make_env(spec: PolicySpec, task: str, randomization: Mapping[str, Any], render_size: int | None = None) -> Any:
    """The evaluation env of ``task``: state-only, or rendering the image agent's cameras at its image size.

    ``render_size`` only matters for state policies (their env renders nothing; videos use ``render_camera``).
    """
    if spec.obs_type == "image":
        from robopretrain.image_rl import TargetSpec, make_target_env

        return make_target_env(TargetSpec(name=task), spec.image_keys, spec.image_size, dict(randomization))
    from robopretrain.evaluation import make_state_env

    kwargs = {"image_size": int(render_size)} if render_size else {}
    return make_state_env(task, dict(randomization), **kwargs)


def policy_obs(spec: PolicySpec, task: str, obs: Mapping[str, Any]) -> Any:
    """The env observation in the form the policy was trained on."""
    if spec.obs_type == "image":
        from robopretrain.image_rl import TargetSpec, stored_obs

        return stored_obs(obs, TargetSpec(name=task), spec.image_keys, spec.obs_keys, spec.num_tasks)
    from robopretrain.evaluation import state_vector

    return state_vector(obs, spec.obs_keys, spec.num_tasks)


# --------------------------------------------------------------------------- episodes (run in workers)

_WORKER: dict[str, Any] = {}


def _init_worker(spec: PolicySpec, task: str) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.clear()
    _WORKER.update(policy=load_policy(spec), spec=spec, task=task, envs={})


def _env_for(randomization: Mapping[str, Any]) -> Any:
    key = json.dumps(randomization, sort_keys=True)
    envs = _WORKER["envs"]
    if key not in envs:
        envs[key] = make_env(_WORKER["spec"], _WORKER["task"], randomization)
    return envs[key]


def placed_distractors(env: Any) -> int:
    """How many distractor bodies stand on the table (not parked below it) in ``env`` right now."""
    sim = env.unwrapped
    randomizer = sim.randomizer
    z = [sim.data.qpos[adr + 2] for adr in randomizer.distractor_qpos]
    return int(sum(1 for v in z if v > PARKED_BELOW_Z))


def run_episode(job: tuple[int, dict[str, Any], int]) -> dict[str, Any]:
    """One deterministic episode of condition ``job[0]`` with reset seed ``job[2]``."""
    index, randomization, seed = job
    spec: PolicySpec = _WORKER["spec"]
    policy = _WORKER["policy"]
    env = _env_for(randomization)
    obs, _ = env.reset(seed=seed)
    distractors = placed_distractors(env)
    done, ret, length, success = False, 0.0, 0, False
    while not done:
        action = policy.act(policy_obs(spec, _WORKER["task"], obs), deterministic=True)
        obs, reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
        ret += float(reward)
        length += 1
        success = success or bool(info.get("success", False))
        done = terminated or truncated
    return {"condition": index, "seed": int(seed), "success": bool(success), "return": ret, "length": length,
            "num_distractors": distractors}


def run_all_episodes(spec: PolicySpec, task: str, conditions: Sequence[Condition], episodes: int, eval_seed: int,
                     workers: int, progress: bool) -> list[dict[str, Any]]:
    """Every episode of every condition, in a fixed order (condition, episode), serial or in a process pool."""
    jobs = [(c, dict(cond.randomization), eval_seed + i) for c, cond in enumerate(conditions) for i in range(episodes)]
    bar = tqdm(total=len(jobs), desc=f"robustness {task}", unit="ep", dynamic_ncols=True, disable=not progress)
    results: list[dict[str, Any]] = []
    try:
        if workers <= 0:
            _init_worker(spec, task)
            for job in jobs:
                results.append(run_episode(job))
                bar.update(1)
        else:
            ctx = mp.get_context("spawn")  # fresh interpreters: no forked MuJoCo/EGL or torch thread state
            with ctx.Pool(workers, initializer=_init_worker, initargs=(spec, task)) as pool:
                for res in pool.imap(run_episode, jobs, chunksize=max(1, min(8, len(jobs) // (4 * workers) or 1))):
                    results.append(res)
                    bar.update(1)
    finally:
        bar.close()
        _WORKER.clear()
    for res, (c, _, seed) in zip(results, jobs):
        res["episode"] = seed - eval_seed
        res["factor"], res["level"] = conditions[c].factor, conditions[c].level
    return results


# --------------------------------------------------------------------------- statistics


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (fixed resampling seed: reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(int(resamples), x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    mean = float(x.mean())
    return float(min(lo, mean)), float(max(hi, mean))


def aggregate(conditions: Sequence[Condition], episodes: Sequence[Mapping[str, Any]],
              boot: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{factor: {level: stats}}`` with success, CI, drop vs nominal, mean return / length / distractors."""
    by_cond: dict[int, list[Mapping[str, Any]]] = {}
    for ep in episodes:
        by_cond.setdefault(int(ep["condition"]), []).append(ep)
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    nominal = None
    for c, cond in enumerate(conditions):
        eps = by_cond.get(c, [])
        succ = [float(e["success"]) for e in eps]
        lo, hi = bootstrap_ci(succ, int(boot["resamples"]), float(boot["confidence"]), int(boot["seed"]))
        row = {"success": float(np.mean(succ)), "ci_low": lo, "ci_high": hi, "episodes": len(eps),
               "mean_return": float(np.mean([e["return"] for e in eps])),
               "mean_length": float(np.mean([e["length"] for e in eps])),
               "mean_distractors": float(np.mean([e["num_distractors"] for e in eps])),
               "randomization": cond.randomization}
        if cond.factor == NOMINAL:
            nominal = row["success"]
        row["drop_vs_nominal"] = float(nominal - row["success"]) if nominal is not None else 0.0
        stats.setdefault(cond.factor, {})[cond.level] = row
    return stats


# --------------------------------------------------------------------------- plot and videos


def plot_success(stats: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path, title: str) -> Path:
    """One panel per factor: success per level (nominal first) with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nominal = stats[NOMINAL]["none"]
    factors = [f for f in stats if f != NOMINAL] or [NOMINAL]
    cols = min(3, len(factors))
    rows = (len(factors) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False, sharey=True)
    for ax, factor in zip(axes.flat, factors):
        levels = ["nominal"] + ([] if factor == NOMINAL else list(stats[factor]))
        rows_ = [nominal] + ([] if factor == NOMINAL else [stats[factor][lv] for lv in stats[factor]])
        y = np.array([r["success"] for r in rows_])
        err = np.array([[r["success"] - r["ci_low"] for r in rows_], [r["ci_high"] - r["success"] for r in rows_]])
        x = np.arange(len(levels))
        ax.bar(x, y, yerr=err, capsize=3, color=["0.6"] + ["tab:blue"] * (len(levels) - 1))
        ax.set_xticks(x, levels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(factor)
    for ax in list(axes.flat)[len(factors):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("success")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def record_video(spec: PolicySpec, task: str, condition: Condition, seed: int, path: Path,
                 size: int, max_frames: int, fps: float) -> Path:
    """An agentview mp4 of the deterministic policy in one episode of ``condition`` (at most ``max_frames``)."""
    from sim_envs.video_writer import write_mp4

    policy = load_policy(spec)
    env = make_env(spec, task, condition.randomization, render_size=size)
    sim = env.unwrapped
    renderer = None
    if spec.obs_type == "image" and int(size) != spec.image_size:
        # the env renders the policy's frames at the agent's size; asking it for another size would rebuild its
        # GL renderer at every call, so the video gets its own renderer of the same model (same randomization)
        from sim_envs.rendering import CameraRenderer

        limit = int(sim.model.vis.global_.offwidth)
        if int(size) > limit:
            env.close()
            raise ValueError(f"evaluate config: video.size={size}; at most {limit} for this image checkpoint")
        renderer = CameraRenderer(sim.model, int(size), int(size))

    def frame() -> np.ndarray:
        if renderer is not None:
            return renderer.render(sim.data, "agentview")
        return sim.render_camera("agentview", int(size))

    try:
        obs, _ = env.reset(seed=seed)
        frames = [frame()]
        done = False
        while not done and len(frames) < max_frames:
            action = policy.act(policy_obs(spec, task, obs), deterministic=True)
            obs, _, terminated, truncated, _ = env.step(np.asarray(action, dtype=np.float32))
            frames.append(frame())
            done = terminated or truncated
    finally:
        if renderer is not None:
            renderer.close()
        env.close()
    write_mp4(path, frames, fps=fps)
    return path


# --------------------------------------------------------------------------- entry points


def validate_config(cfg: DictConfig) -> None:
    """Range checks of the evaluate config; errors name the key and what was expected."""
    def fail(key: str, expected: str) -> None:
        raise ValueError(f"evaluate config: {key}={OmegaConf.select(cfg, key)!r}; expected {expected}")

    if int(cfg.episodes) < 1:
        fail("episodes", "an integer >= 1")
    if int(cfg.workers) < 0:
        fail("workers", "an integer >= 0 (0: run in this process)")
    if int(cfg.bootstrap.resamples) < 1:
        fail("bootstrap.resamples", "an integer >= 1")
    if not 0.0 < float(cfg.bootstrap.confidence) < 1.0:
        fail("bootstrap.confidence", "a number in (0, 1)")
    if cfg.video.enabled:
        if not 16 <= int(cfg.video.size) <= 512:
            fail("video.size", "an integer in [16, 512]")
        if int(cfg.video.max_frames) < 1:
            fail("video.max_frames", "an integer >= 1")
        if not float(cfg.video.fps) > 0:
            fail("video.fps", "a positive number")


def resolve_output_dir(cfg: DictConfig) -> Path:
    return config_folder(cfg, "output_dir", "evaluate")


def evaluate_robustness(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Run the robustness evaluation ``cfg`` describes (see ``configs/evaluate.yaml``); returns eval_info."""
    import sim_envs

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise ValueError("evaluate config: checkpoint is not set; give checkpoint=<checkpoint or run folder>")
    validate_config(cfg)
    conditions = build_conditions(cfg)
    ckpt = open_checkpoint(str(cfg.checkpoint))
    task = str(cfg.task) if cfg.get("task") else default_task(ckpt)
    if task not in sim_envs.TASKS:
        raise ValueError(f"evaluate config: task={task!r}; expected one of {sorted(sim_envs.TASKS)}")
    spec = policy_spec(ckpt, str(cfg.device))
    out_dir = resolve_output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    episodes = run_all_episodes(spec, task, conditions, int(cfg.episodes), int(cfg.eval_seed), int(cfg.workers),
                                bool(cfg.progress))
    episode_seconds = time.perf_counter() - start
    stats = aggregate(conditions, episodes, cfg.bootstrap)
    info: dict[str, Any] = {
        "checkpoint": str(ckpt.path), "step": ckpt.step, "algo": ckpt.meta["algo"], "stage": ckpt.meta.get("stage"),
        "obs_type": spec.obs_type, "image_size": spec.image_size or None,
        "task": task, "episodes_per_condition": int(cfg.episodes), "eval_seed": int(cfg.eval_seed),
        "bootstrap": OmegaConf.to_container(cfg.bootstrap, resolve=True),
        "nominal": stats[NOMINAL]["none"], "factors": {k: v for k, v in stats.items() if k != NOMINAL},
        "episodes": episodes, "plot": None, "videos": {},
        "wall_seconds": {"episodes": episode_seconds, "workers": int(cfg.workers)},
    }
    if cfg.plot:
        info["plot"] = str(plot_success(stats, out_dir / "success_per_factor.png", f"{task}: {ckpt.meta['algo']} "
                                        f"step {ckpt.step}"))
    if cfg.video.enabled:
        last = {}
        for cond in conditions:
            last[cond.factor] = cond  # each factor's last (hardest) level
        for factor, cond in tqdm(last.items(), desc="videos", disable=not cfg.progress):
            path = record_video(spec, task, cond, int(cfg.eval_seed), out_dir / "videos" / f"{factor}.mp4",
                                int(cfg.video.size), int(cfg.video.max_frames), float(cfg.video.fps))
            info["videos"][factor] = {"path": str(path), "level": cond.level, "episode": 0}
        info["wall_seconds"]["videos"] = time.perf_counter() - start - episode_seconds
    write_text_atomic(out_dir / "eval_info.json", json.dumps(info, indent=2))
    os.chmod(out_dir / "eval_info.json", 0o644)
    info["output_dir"] = str(out_dir)
    log.info("robustness of %s on %s: nominal success %.2f; results in %s", ckpt.path, task,
             info["nominal"]["success"], out_dir)
    return info


def summary_lines(info: Mapping[str, Any]) -> list[str]:
    """A plain-text table: factor, level, success [CI], drop vs nominal."""
    nom = info["nominal"]
    lines = [f"{'factor':<16}{'level':<11}{'success':>8}  {'95% CI':<13}{'drop':>7}",
             f"{'nominal':<16}{'none':<11}{nom['success']:>8.2f}  [{nom['ci_low']:.2f}, {nom['ci_high']:.2f}]"
             f"{0.0:>7.2f}"]
    for factor, levels in info["factors"].items():
        for level, r in levels.items():
            lines.append(f"{factor:<16}{level:<11}{r['success']:>8.2f}  [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                         f"{r['drop_vs_nominal']:>7.2f}")
    return lines


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
@friendly_errors
def main(cfg: DictConfig) -> None:
    info = evaluate_robustness(cfg)
    print("\n".join(summary_lines(info)))
    print(f"eval_info: {Path(info['output_dir']) / 'eval_info.json'}")


if __name__ == "__main__":
    run_hydra(main, "evaluate")
