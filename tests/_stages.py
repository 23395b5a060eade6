"""Tiny stage-2 and stage-3 configs for tests: the stages' own config files composed as the pipeline composes them
(:func:`robopretrain.build.compose`), with networks, batches and budgets small enough for a CPU test."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from robopretrain.build import compose

TINY_ENCODER = {"kwargs": {"channels": 4, "out_dim": 8}, "augment_pad": 1}


def tiny_algo(algo: str, width: int = 16) -> dict[str, Any]:
    """Overrides of ``configs/algo/<algo>.yaml``: one hidden layer of ``width`` units, batch 8, 2 sampled actions."""
    if algo == "dt":  # one block of width units over 4-step windows, warm-up over 2 updates
        return {"batch_size": 8, "embed_dim": width, "num_layers": 1, "context_len": 4, "warmup_steps": 2}
    out: dict[str, Any] = {"batch_size": 8, "actor_hidden": [width]}
    if algo == "por":  # no critic: twin value, guide over next states, execute policy
        return {**out, "value_hidden": [width], "guide_hidden": [width]}
    if algo != "bc":
        out["critic_hidden"] = [width]
    if algo in ("cql", "calql"):
        out["n_actions"] = 2
    if algo == "iql":
        out["value_hidden"] = [width]
    if algo == "bcq":
        out.update(vae_hidden=[width], n_act_samples=4, n_target_samples=2)
    return out


def merged(base: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``extra`` merged in (one level of nested mappings)."""
    out = dict(base)
    for key, value in dict(extra or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def stage2_config(data: Path, out: Path, *, algo: str = "calql", steps: int = 4, obs: Mapping[str, Any] | None = None,
                  data_cfg: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                  width: int = 16, algo_cfg: Mapping[str, Any] | None = None, dr: Any = "none",
                  **top: Any) -> DictConfig:
    """``configs/robopretrain.yaml`` for ``steps`` updates on ``data``; evaluation off unless ``train`` says;
    ``dr``: a ``configs/dr`` entry's name, or an entry itself."""
    base = {"seed": 0, "num_threads": 1, "output_dir": str(out),
            "algo": {**tiny_algo(algo, width), **(algo_cfg or {})}, "encoder": dict(TINY_ENCODER),
            "data": {"path": str(data)},
            "train": {"steps": steps, "log_every": 2, "eval_every": steps, "eval_episodes": 1, "eval_targets": [],
                      "checkpoint_every": steps, "calibration_batch": 16, "progress": False, "tensorboard": False}}
    named = isinstance(dr, str)
    overrides = merged(base, {"obs": dict(obs or {}), "data": dict(data_cfg or {}), "train": dict(train or {}),
                              **({} if named else {"dr": dr}), **top})
    return compose("robopretrain", {"algo": algo, **({"dr": dr} if named else {})}, overrides)


def stage3_config(checkpoint: Path, out: Path, target: Any, *, algo: str = "calql", env_steps: int = 12,
                  data_cfg: Mapping[str, Any] | None = None, online: Mapping[str, Any] | None = None,
                  dr: str = "none", width: int = 16, algo_cfg: Mapping[str, Any] | None = None,
                  **top: Any) -> DictConfig:
    """``configs/finetune.yaml``: ``env_steps`` online steps from ``checkpoint`` on ``target``, one env in this
    process, an evaluation at the start and the end."""
    base = {"seed": 0, "num_threads": 1, "output_dir": str(out),
            "algo": {**tiny_algo(algo, width), **(algo_cfg or {})}, "checkpoint": str(checkpoint), "target": target,
            "data": dict(data_cfg or {}),
            "online": {"env_steps": env_steps, "num_envs": 1, "asynchronous": False, "eval_every": env_steps,
                       "eval_episodes": 1, "log_every": max(1, env_steps // 2), "checkpoint_every": env_steps,
                       "calibration_batch": 16, "buffer_capacity": 1000, "progress": False, "tensorboard": False}}
    return compose("finetune", {"algo": algo, "dr": dr}, merged(base, {"online": dict(online or {}), **top}))


def collect_sim(path: Path, tasks: list[str], episodes: int = 2, images: bool = False, image_size: int = 32,
                **extra: Any) -> Path:
    """``sim_envs.collect`` of ``tasks`` into ``path`` (state-only unless ``images``)."""
    from omegaconf import OmegaConf

    from sim_envs.collect import collect

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": list(tasks), "episodes_per_task": episodes, "render_images": images,
                    "image_size": image_size, "output": str(path), **extra})
    return Path(collect(cfg, progress=False))
