"""Config -> objects, shared by the stage entry points (stage 2 ``robopretrain.train``, stage 3 ``finetune.train``,
``robopretrain.evaluate`` and the pipeline), so that no entry point imports another for its helpers.

Each function takes a config node (Hydra ``DictConfig`` or a plain mapping) and returns library objects: torch set-up,
the data file (collected first with :mod:`sim_envs.collect` when asked), the observation spec and normalisation
statistics, the agent, the evaluation targets and the randomization setting.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from robopretrain import cpu_settings
from robopretrain.agent import Agent, EncoderSettings
from robopretrain.cli import CONFIG_DIR
from robopretrain.config_checks import resolve_device
from robopretrain.data.dataset import FILE_UNITS, RewardSettings, load_offline_dataset, selected_demos, spec_of_data
from robopretrain.data.returns import never_succeeds_return
from robopretrain.data.disk import DiskDataset
from robopretrain.data.hdf5 import DatasetError, DatasetInfo, default_task_name, ends_in_terminal
from robopretrain.data.keys import ACTIONS, OBS
from robopretrain.data.replay import MixedSampler, OfflineDataset
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.action_units import two_valued_dimensions
from robopretrain.envs.target import (EnvContractError, Target, as_target, env_time_limit, success_termination_note,
                                      successful_target_demos, target_of_data, warn_camera_geometry, with_task_slot)
from robopretrain.nets.obs_encoder import STD_EPS, constant_dimensions, normalization_stats

log = logging.getLogger(__name__)

# what benchmarks/binary_actions.py measured (README "CQL and Cal-QL on binary gripper actions"), quoted by
# warn_two_valued_actions
BINARY_ACTIONS_FINDING = ("CQL and Cal-QL succeed 0.00 on 3 seeds after 3000 updates where BC succeeds 1.00; CQL 0.00 "
                          "with algo.actor_bc_weight=4, CQL and Cal-QL 1.00 with 40")
BINARY_ACTIONS_MIN_WEIGHT = 40.0
BINARY_ACTIONS_WEIGHT = f"algo.actor_bc_weight={BINARY_ACTIONS_MIN_WEIGHT:g}"


def plain(node: Any) -> Any:
    """A config node as plain Python containers (other values unchanged)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _composed(config_name: str, chosen: dict[str, str]) -> tuple[DictConfig, set[str]]:
    """:func:`compose`'s defaults list walked: a ``group: option`` entry loads ``configs/<group>/<option>.yaml`` (the
    option popped from ``chosen`` when picked there), a plain name another primary config this one extends (the
    presets: ``paper``, ``testbed`` start from ``pipeline``; ``compose("paper")`` failed on it), ``_self_`` this
    file. Returns the config and its group names."""
    primary = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")
    defaults = list(primary.pop("defaults", []) or [])
    if "_self_" not in defaults:  # Hydra's default: the primary config comes last
        defaults.append("_self_")
    primary.pop("hydra", None)
    out = OmegaConf.create({})
    group_names: set[str] = set()
    for entry in defaults:
        if entry == "_self_":
            out.merge_with(primary)
            continue
        if isinstance(entry, str):
            base, names = _composed(entry, chosen)
            out.merge_with(base)
            group_names |= names
            continue
        (group, option), = dict(entry).items()
        option = chosen.pop(group, option)
        path = CONFIG_DIR / group / f"{option}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such {group} config (options: "
                                    f"{sorted(p.stem for p in (CONFIG_DIR / group).glob('*.yaml'))})")
        out[group] = OmegaConf.load(path)
        group_names.add(group)
    return out, group_names


def compose(config_name: str, groups: Mapping[str, str] | None = None,
            overrides: Mapping[str, Any] | None = None) -> DictConfig:
    """``configs/<config_name>.yaml`` as Hydra would compose it without command-line flags: each ``group: option`` of
    its defaults list loaded from ``configs/<group>/<option>.yaml`` (``groups`` picks other options), the primary
    config on top, then ``overrides`` merged (a mapping, may replace a group's content wholesale). Used by the
    pipeline to call each stage's public ``run`` with a full config. Raises ``FileNotFoundError`` for an unknown
    option, ``ValueError`` for an unknown group or a group given a string in ``overrides`` (``{"algo": "iql"}``, the
    command line's spelling: ``groups`` picks options)."""
    chosen = dict(groups or {})
    out, group_names = _composed(config_name, chosen)
    if chosen:
        raise ValueError(f"{config_name} config has no config group(s) {sorted(chosen)}")
    for key, value in dict(overrides or {}).items():
        if key in group_names - {"dr"} and isinstance(value, str):  # algo=iql, the command line's pick (a dr entry
            # may be a level name: build.randomization)
            raise ValueError(f"compose({config_name!r}): overrides {{{key!r}: {value!r}}} would replace config group "
                             f"{key!r} by a string; pick its option with groups={{{key!r}: {value!r}}} (overrides "
                             "merge values into the chosen option)")
        if isinstance(value, Mapping) and key in out and OmegaConf.is_dict(out[key]):
            out[key] = OmegaConf.merge(out[key], OmegaConf.create(dict(value)))
        else:
            out[key] = value
    return out


def setup_torch(cfg: Any) -> torch.device:
    """Threads, subnormal flushing, seeds and the device of a run (``num_threads``, ``flush_denormal``, ``seed``,
    ``device``; :mod:`robopretrain.cpu_settings`)."""
    cpu_settings.apply_from_config(cfg)
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)
    return torch.device(resolve_device(cfg.get("device", "cpu"), "run"))


def algo_overrides(algo_cfg: Any) -> dict[str, Any]:
    """The ``algo`` group as the agent's config overrides (``name`` dropped)."""
    out = dict(plain(algo_cfg) or {})
    out.pop("name", None)
    return out


def success_filtered_bc(algo_cfg: Any) -> bool:
    """Whether the actor has a BC term kept to successful episodes (CQL / Cal-QL: ``actor_bc_filter=success`` with
    ``actor_bc_weight > 0``; the filter does nothing without the term)."""
    overrides = algo_overrides(algo_cfg)
    return overrides.get("actor_bc_filter", "none") == "success" and float(overrides.get("actor_bc_weight") or 0) > 0


def warn_two_valued_actions(algo_cfg: Any, dataset: Any, where: str) -> list[int]:
    """Warn when CQL or Cal-QL trains its SAC actor without the BC term (``algo.actor_bc_weight`` 0), or with one
    weaker than the weight measured to work (``BINARY_ACTIONS_MIN_WEIGHT``; 4 failed), on data with an action
    dimension whose values lie only near its two ends
    (:func:`~robopretrain.envs.action_units.two_valued_dimensions`, a gripper at +-1, with or without a little
    noise): the conservative penalty pushes the critic down between the two ends, and the actor, which follows
    the critic's action-gradient through a saturated tanh, can stay at the wrong one. Measured by
    ``benchmarks/binary_actions.py`` (protocol ``benchmarks/protocols/binary_actions.md``). Returns those dimensions
    (empty when there is nothing to warn about)."""
    overrides = algo_overrides(algo_cfg)
    weight = float(overrides.get("actor_bc_weight") or 0.0)
    if "actor_bc_weight" not in overrides or weight >= BINARY_ACTIONS_MIN_WEIGHT:
        return []
    actions = dataset.arrays().get("actions")
    dims = two_valued_dimensions(np.asarray(actions)) if actions is not None else []
    if dims:
        how = ("trains its actor by the critic's action-gradient alone" if weight <= 0 else
               f"trains its actor with a BC term of weight algo.actor_bc_weight={weight:g}, below the one that worked")
        log.warning("%s: action dimension(s) %s take values only near their two ends (a gripper?), and %s %s: its "
                    "conservative penalty makes the critic lowest between the two ends, so the actor can stay at the "
                    "wrong one (benchmarks/binary_actions.py, a reach that ends by closing a gripper: %s); set the "
                    "actor's BC term (e.g. %s)", where, dims, algo_cfg.get("name", "the algorithm"), how,
                    BINARY_ACTIONS_FINDING, BINARY_ACTIONS_WEIGHT)
    return dims


TD3BC_FINDING = ("benchmarks/recipe.py, clean Reach: 0.02 success at the published alpha 2.5, the actor's BC "
                 "error 0.73; robopretrain/algos/td3_bc.py's exploratory alpha 0.1: 0.96")


def warn_actor_far_from_data(agent: Any, batch: Mapping[str, Any]) -> float | None:
    """Warn when a trained TD3+BC actor is further from the data's actions than their mean is, on data whose actions
    follow the state.

    ``batch``: rows of the training data (``observations``, ``actions`` in the agent's ``[-1, 1]`` units, ``(B, A)``).
    Compares the deterministic policy's mean squared error to the data's actions, ``mean_{b,i} (pi(s_b)_i -
    a_{b,i})^2``, with the data's own spread around its mean action, ``mean_i Var_b(a_{b,i})``: a policy past that
    bound imitates worse than the constant mean action would, so the Q term of TD3+BC's actor loss (weight
    ``algo.alpha``) has outweighed its BC term (``TD3BC_FINDING``). Said only where a linear fit of the actions on
    the low-dim observation parts, judged on half of the rows it was not fitted on, gets under half that spread
    (:func:`linear_action_error`): on random or replayed actions a policy that leaves the data is what TD3+BC is
    for. Returns the policy's error (None for other algorithms or an empty batch)."""
    if getattr(agent, "algo", None) != "td3_bc":
        return None
    actions = torch.as_tensor(batch[ACTIONS], dtype=torch.float32).cpu()
    if actions.ndim != 2 or actions.shape[0] < 2:
        return None
    pi = torch.as_tensor(agent.act(batch[OBS], deterministic=True), dtype=torch.float32).reshape(actions.shape)
    error = float((pi - actions).square().mean())
    spread = float(actions.var(dim=0, unbiased=False).mean())
    linear = linear_action_error(batch[OBS], actions)
    if error > spread and linear is not None and linear < 0.5 * spread:
        alpha = float(agent.algo_cfg.alpha)
        why = (f"at algo.alpha={alpha:g} the critic's term outweighs the BC term on this data ({TD3BC_FINDING}); try "
               f"a smaller algo.alpha (e.g. algo.alpha={min(0.1, alpha / 10):g})" if alpha > 0 else
               "algo.alpha=0 trains it by the BC term alone, so it has not learned the data's actions yet: train "
               "longer (train.steps) or check the policy's learning rate (algo.policy_lr)")
        log.warning("td3_bc: the trained actor is %.3g from the data's actions (mean squared, [-1, 1] units), further "
                    "than their own mean action is (%.3g), though a linear fit on the state gets %.3g: %s", error,
                    spread, linear, why)
    return error


def linear_action_error(obs: Mapping[str, Any], actions: torch.Tensor) -> float | None:
    """The mean squared error of a least-squares linear fit of ``actions`` ``(B, A)`` on the 2-D float parts of
    ``obs`` (the low-dim observation parts; cameras and the task id are left out) plus a constant, fitted on half of
    the rows (a fixed shuffle) and judged on the other half; None without such parts or with fewer rows per half than
    features (a fit that would only memorise)."""
    arrays = [torch.as_tensor(v) for v in obs.values()]
    parts = [a.float().cpu() for a in arrays if a.ndim == 2 and a.is_floating_point()]
    if not parts:
        return None
    x = torch.cat([*parts, torch.ones(len(actions), 1)], dim=1).double()
    half = len(actions) // 2
    if half <= x.shape[1]:
        return None
    order = torch.randperm(len(actions), generator=torch.Generator().manual_seed(0))
    fit, judge = order[:half], order[half:]
    coef = torch.linalg.lstsq(x[fit], actions[fit].double()).solution
    return float((x[judge] @ coef - actions[judge].double()).square().mean())


def reward_settings(algo_cfg: Any, target: Target | None = None) -> RewardSettings:
    """The algorithm's reward transform and discount; a target that declares a dense reward turns the sparse
    all-failure rule off (and says so). Raises ValueError for a dense-reward target with
    ``actor_bc_filter=success`` and ``actor_bc_weight > 0`` (success is read from sparse returns-to-go)."""
    overrides = algo_overrides(algo_cfg)
    r = RewardSettings.of_algo(overrides)
    if target is not None and not target.sparse and success_filtered_bc(overrides):
        raise ValueError(f"target {target.name} declares a dense reward, but algo.actor_bc_filter=success reads "
                         "success from sparse-reward returns-to-go: set algo.actor_bc_filter=none (or "
                         "+stage3.algo_overrides.actor_bc_filter=none in the pipeline)")
    if target is not None and not target.sparse and r.sparse:
        log.info("target %s declares a dense reward: returns-to-go without the sparse all-failure rule", target.name)
        r = RewardSettings(discount=r.discount, scale=r.scale, bias=r.bias, sparse=False)
    return r


def report_success_filter(algo_cfg: Any, dataset: Any, where: str, *, online: bool = False,
                          tasks: Mapping[str, int] | None = None) -> float | None:
    """With the actor's BC term on successful episodes (:func:`success_filtered_bc`), the share of ``dataset``'s
    transitions it keeps (logged), and a warning when it keeps none: the BC term is then 0 on that data, which the
    run would not otherwise show; likewise for each task of several (``tasks``: name -> task id, read from the
    observations' ``task_id``) none of whose episodes succeeds. ``online``: stage 3, where the agent's own
    successful episodes join later. ``None`` when the filter is off or the data has no returns-to-go."""
    if not success_filtered_bc(algo_cfg):
        return None
    mc = dataset.arrays().get("mc_returns")
    if mc is None:
        return None
    from robopretrain.algos.cql import successful_episode_mask

    overrides = algo_overrides(algo_cfg)
    if float(overrides.get("discount", 0.99)) >= 1.0:  # no never-succeeds value: the agent refuses the filter
        return None
    never = never_succeeds_return(float(overrides.get("reward_scale", 1.0)), float(overrides.get("reward_bias", 0.0)),
                                  float(overrides.get("discount", 0.99)))
    mask = successful_episode_mask(torch.as_tensor(np.asarray(mc, dtype=np.float32)), never).numpy()
    kept = float(mask.mean()) if len(mask) else 0.0
    ids = (dataset.arrays().get("observations") or {}).get("task_id")
    if kept > 0.0 and tasks and ids is not None and len(set(tasks.values())) > 1:
        ids = np.asarray(ids).reshape(len(mask), -1)[:, 0].round().astype(int)
        none = sorted(name for name, tid in tasks.items() if (ids == tid).any() and not mask[ids == tid].any())
        if none:
            log.warning("algo.actor_bc_filter=success: no episode of %s in %s succeeds, so the actor's BC term never "
                        "imitates %s", ", ".join(none), where, "it" if len(none) == 1 else "them")
    if kept == 0.0:
        later = " (online, it imitates only the agent's own successful episodes, once there are some)" if online else ""
        log.warning("algo.actor_bc_filter=success: no transition of %s belongs to a successful episode (every "
                    "return-to-go is the never-succeeds value %.4g), so the actor's BC term is 0 on it%s; check that "
                    "the data's rewards mark its successes (data.rewards_from_success=true rebuilds them from "
                    "ep_meta), or set algo.actor_bc_filter=none", where, never, later)
    else:
        log.info("algo.actor_bc_filter=success: the actor's BC term on %.0f%% of the transitions of %s (those of "
                 "successful episodes)", 100 * kept, where)
    return kept


def randomization(node: Any, where: str = "dr") -> Any:
    """The env's ``randomization`` argument from a ``dr`` group entry or a level name (``none`` when unset or when
    the entry randomizes nothing). The entry is checked here, before any env is built (its keys are
    :class:`sim_envs.randomization.RandomizationConfig`'s fields, null-valued ones included; its levels, factors and
    ranges known): raises ``ValueError`` naming ``where`` (the config key the entry came from) otherwise (a misspelt
    key was dropped, or failed inside the env)."""
    from sim_envs.env import as_randomization

    value = plain(node)
    if value is None:
        return "none"
    if isinstance(value, Mapping) and "env_kwargs" in value:  # a gap side's form on a gym target
        raise ValueError(f"{where}={value!r}: {where} is sim_envs randomization (level, factors, ranges), never "
                         "applied to a gym target; an env's own constructor arguments are a gap's sides: "
                         "gap.name=<name> 'gap.source={env_kwargs: {...}}' 'gap.target={env_kwargs: {...}}' (training "
                         "in the source's, judging in the target's; docs/transfer.md)")
    try:
        config = as_randomization(value)  # unknown keys refused, null-valued ones too
        if isinstance(value, Mapping):
            value = {k: v for k, v in dict(value).items() if v is not None}  # null: the field's default
        levels = config.levels()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}={value!r}: {e}") from None
    if all(level == "none" for level in levels.values()) and not config.num_distractors:
        return "none"
    return value


# --------------------------------------------------------------------------- data


# collect keys that leave the file's content as it is (hydra: the command line's own section, which a file collected
# by python -m sim_envs.collect does not record)
COLLECT_NO_EFFECT = ("num_workers", "overwrite", "output", "hydra")


def collect_changes(path: Path, planned: Any) -> list[str] | None:
    """The collect settings (``"key: recorded -> planned"``) in which the demo file ``path``'s own record of the
    collection that wrote it (``data.attrs["collection"]``) differs from ``planned`` (a ``configs/collect.yaml``
    config), but for :data:`COLLECT_NO_EFFECT` and keys the record lacks (a file collected before they existed, with
    what they now default to); None when the file has no record (written by another tool)."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f["data"].attrs.get("collection") if "data" in f else None
    if raw is None:
        return None
    recorded = json.loads(raw).get("config") or {}
    now = OmegaConf.to_container(planned, resolve=True) if isinstance(planned, DictConfig) else dict(planned)
    return [f"{k}: {json.dumps(recorded[k])} -> {json.dumps(now[k])}" for k in now
            if k not in COLLECT_NO_EFFECT and k in recorded and recorded[k] != now[k]]


def resolve_data_path(data_cfg: Any, run_dir: Path, *, default_name: str = "robot_demos.hdf5",
                      collect: Mapping[str, Any] | None = None, default_image_size: int | None = None,
                      keep: Sequence[str | os.PathLike] = (), prune: bool = False) -> Path:
    """The HDF5 path: ``data.path`` (converted by :func:`converted`, which keeps the stale copies in ``keep``, and
    removes the others also when it reuses the current copy with ``prune``: a fresh run's),
    collecting it first with :func:`sim_envs.collect.collect` when ``data.generate`` (``data.collect`` and
    ``collect`` override ``configs/collect.yaml``; an existing file is reused unless ``data.regenerate``)."""
    path = Path(str(data_cfg.path)).expanduser() if data_cfg.get("path") else None
    if not data_cfg.get("generate", False):
        if path is None:
            raise ValueError("config key data.path is not set; give an HDF5 file"
                             + (" or set data.generate=true" if "generate" in data_cfg else ""))
        if not path.exists():
            raise FileNotFoundError(f"data.path={path}: file not found; expected a robomimic HDF5 "
                                    "(python -m sim_envs.collect writes one), or a LeRobot v3 / Minari folder, a "
                                    "D4RL-style HDF5 or an OGBench .npz (converted on first use)")
        return converted(path, data_cfg, default_image_size, keep=keep, prune=prune)
    path = path or run_dir / default_name
    c = OmegaConf.load(CONFIG_DIR / "collect.yaml")
    c.merge_with(OmegaConf.create(plain(data_cfg.get("collect")) or {}))
    c.merge_with(OmegaConf.create(dict(collect or {})))
    c.output, c.overwrite = str(path), True
    if path.is_file() and not data_cfg.get("regenerate", False):
        changed = collect_changes(path, c)  # a file collected with other settings: other data than asked for
        if changed:
            raise ValueError(f"data.path={path}: collected with other settings than data.generate asks for now "
                             f"({'; '.join(changed)}); data.regenerate=true collects it anew with these (replacing "
                             "it), or give another data.path")
        log.info("using the existing dataset %s (data.generate: collected %s; data.regenerate=true collects anew)",
                 path, "with these settings" if changed is not None else "by another tool, as it is")
        return path
    from sim_envs.collect import collect as run_collect

    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(run_collect(c, progress=True))


def data_spec(obs_cfg: Any, path: Path, *, obs_map: Mapping[str, str] | None = None,
              info: DatasetInfo | None = None, map_setting: str | None = "data.obs_map",
              parts_settable: bool = True) -> ObsSpec:
    """The observation spec of the ``obs`` group (``low_dim``, ``rgb``, ``num_tasks``) read from the data file; a
    part the file lacks is refused with a ``ValueError`` naming the file's keys and how to use them: through
    ``map_setting`` (None: the entry point has no map) and, when ``parts_settable``, as the ``obs`` parts."""
    low_dim = [str(k) for k in (obs_cfg.get("low_dim") or [])]
    rgb = [str(k) for k in (obs_cfg.get("rgb") or [])]
    if not low_dim and not rgb:
        raise ValueError("obs config: obs.low_dim and obs.rgb are both empty; name the observation parts to use, "
                         "e.g. obs.low_dim=[proprio,object] or obs.rgb=[agentview_image] obs.low_dim=[proprio]")
    n = obs_cfg.get("num_tasks")
    return spec_of_data(path, low_dim, rgb, None if n is None else int(n), obs_map=obs_map, info=info,
                        map_setting=map_setting, parts_settable=parts_settable)


def check_data_fits(spec: ObsSpec, path: Path, obs_map: Mapping[str, str] | None, what: str,
                    map_setting: str = "data.obs_map") -> None:
    """Refuse, before any training, a data file whose parts (read through ``obs_map``, the setting ``map_setting``)
    differ from the agent's ``spec`` in presence or size: :class:`robopretrain.data.spec.SpecMismatchError` naming
    ``what``, the file and each part (a mixed-in file or stage 3's offline data; without it the first update fails
    deep in the encoder); a missing part a :class:`DatasetError` saying how to map it."""
    try:
        theirs = data_spec({"low_dim": list(spec.low_dim_keys), "rgb": list(spec.rgb_keys),
                            "num_tasks": spec.num_tasks}, path, obs_map=obs_map, map_setting=map_setting,
                           parts_settable=False)
    except DatasetError:
        raise
    except ValueError as exc:  # a part the file lacks: a data error, as the loader would say
        raise DatasetError(f"{what}: {exc}") from None
    theirs.check_fits(spec, mine=f"{what} {path}", theirs="the agent")


def warn_unused_obs_map(obs_map: Mapping[str, str] | None, spec: ObsSpec, key: str = "data.obs_map") -> None:
    """Warn (once per call) about entries of the user's ``obs_map`` (setting ``key``) under names no part of the
    agent's ``spec`` has: a typo, or a part left out of ``obs.low_dim`` / ``obs.rgb``; they take no effect."""
    unused = sorted(set(obs_map or {}) - set(spec.low_dim_keys) - set(spec.rgb_keys))
    if unused:
        log.warning("%s names part(s) %s that the agent does not observe (its parts: %s); those entries take no "
                    "effect: list the part in obs.low_dim / obs.rgb, or map the name it has", key, unused,
                    [*spec.low_dim_keys, *spec.rgb_keys])


def check_image_size(spec: ObsSpec, image_size: int | None, path: Path) -> None:
    """Refuse, before any data is read (a frame index built), cameras the agent cannot train on: of several sizes or
    not square (:attr:`ObsSpec.image_size`), or of another size than ``data.image_size`` (every format, a robomimic
    file included, was resized to it by :func:`converted`; this catches a camera the resize could not reach):
    ``ValueError`` naming them. Nothing without cameras."""
    if not spec.rgb:
        return
    if image_size is None:
        try:
            _ = spec.image_size  # raises for cameras of several sizes, or not square
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return
    wrong = {k: tuple(s[:2]) for k, s in spec.rgb if tuple(s[:2]) != (int(image_size), int(image_size))}
    if wrong:
        cams = ", ".join(f"{k} {h}x{w}" for k, (h, w) in wrong.items())
        one_size = len({tuple(s[:2]) for _, s in spec.rgb}) == 1 and spec.rgb[0][1][0] == spec.rgb[0][1][1]
        raise ValueError(f"data.image_size={image_size} but {path} holds {cams}: the resize did not reach these "
                         "cameras (frames smaller than 8 px, or float frames of a key not named *_image)" + (
                             ", or leave data.image_size unset to train at the file's size" if one_size else
                             " (the agent's cameras must all have one square size)"))


def converted(path: Path, data_cfg: Any, default_image_size: int | None = None, *,
              keep: Sequence[str | os.PathLike] = (), prune: bool = False) -> Path:
    """``path`` as robomimic HDF5: itself, or its cached conversion from another format
    (:func:`robopretrain.data.convert.as_robomimic`; ``data.format``, ``data.cache_dir``, ``data.actions``,
    ``data.image_size``: a robomimic file whose cameras are of another size gets a resized copy too).
    ``default_image_size`` (an agent's image size, for data that must match it: stage 3's target demos, a mixed-in
    file) stands in for ``data.image_size`` when that is unset: another format is converted at it, a robomimic file
    whose cameras are of another size is read through its resized copy (one at that size is used where it is).
    ``keep``: converted copies a new conversion must not remove although stale (those a run folder's checkpoints
    name: :func:`robopretrain.checkpoint.recorded_data_files`)."""
    from robopretrain.data.convert import as_robomimic

    path = Path(path).expanduser()
    size = data_cfg.get("image_size")
    if size is None:
        size = default_image_size
    fmt = data_cfg.get("format")
    return as_robomimic(path, fmt=fmt, cache_dir=data_cfg.get("cache_dir"),
                        actions=str(data_cfg.get("actions") or "auto"), image_size=size, keep=keep, prune=prune)


def load_data(path: Path, spec: ObsSpec, data_cfg: Any, reward: RewardSettings, *, algo: str, act_dim: int | None,
              seed: int, device: torch.device, tasks: Sequence[str] | None = None,
              task_id: int | None = None, rank: int = 0, world_size: int = 1,
              action_units: Any = FILE_UNITS, default_image_size: int | None = None,
              units_fixed: bool = False, slot_advice: str | None = None) -> OfflineDataset | DiskDataset:
    """:func:`robopretrain.data.dataset.load_offline_dataset` with the ``data`` group's selection keys and storage
    (``data.storage``: auto | memory | disk, memory for the Decision Transformer, whose windows are drawn from
    memory (disk refused); ``data.workers``: prefetch threads of the disk-backed dataset; ``rank`` /
    ``world_size``: its DDP shard; ``action_units``: the agent's, the file's actions re-expressed in them;
    ``default_image_size``: as :func:`converted`'s; ``units_fixed``: the agent's units were fixed before this file, by
    other data or a checkpoint: a file without a record that leaves them is refused with advice to record them;
    ``slot_advice``: what a refusal of task ids outside the one-hot advises, when not stage 2's own settings)."""
    tasks = list(tasks) if tasks is not None else (list(data_cfg.tasks) if data_cfg.get("tasks") else None)
    tid = task_id if task_id is not None else data_cfg.get("task_id")
    storage = str(data_cfg.get("storage") or "auto")
    if algo == "dt":  # its K-step windows are drawn from data in memory (training_sampler; disk is refused by the
        if storage == "disk":  # config check, robopretrain.config_checks.validate_offline_config, before conversion)
            raise ValueError("algo=dt samples K-step windows from data held in memory; storage=disk is not "
                             "supported for it: set it to memory (or auto, which reads it into memory)")
        storage = "memory" if storage == "auto" else storage
    path = converted(Path(path), data_cfg, default_image_size)
    if algo == "dt":  # returns-to-go of the rewards as given: no sparse transform, no all-failure rule to warn about
        reward = dataclasses.replace(reward, sparse=False)
    return load_offline_dataset(
        path, spec, reward, obs_map=plain(data_cfg.get("obs_map")) or None, tasks=tasks,
        mask=data_cfg.get("mask"), max_demos=data_cfg.get("max_demos"),
        skip_short=bool(data_cfg.get("skip_short_demos", False)), task_id=None if tid is None else int(tid),
        rewards_needed=algo != "bc", rewards_from_success=bool(data_cfg.get("rewards_from_success", False)),
        act_dim=act_dim, seed=seed, device=device, storage=storage,
        workers=int(data_cfg.get("workers") or 0), rank=rank, world_size=world_size, action_units=action_units,
        units_fixed=units_fixed, slot_advice=slot_advice)


# --------------------------------------------------------------------------- agents


def new_agent(cfg: Any, spec: ObsSpec, act_dim: int, dataset: OfflineDataset | DiskDataset,
              device: torch.device) -> Agent:
    """A fresh agent of the config's ``algo`` and ``encoder`` for ``spec``, normalising low-dim parts by the
    dataset's statistics when ``obs.normalize`` (the default), with each dimension's std at least ``obs.min_std``."""
    obs_cfg = cfg.get("obs") or {}
    normalize = bool(obs_cfg.get("normalize", True))
    if not normalize and float(obs_cfg.get("min_std") or 0.0) > 0:  # (it took no effect without a word)
        log.warning("obs.min_std=%s takes no effect with obs.normalize=false: it floors the std the parts are divided "
                    "by, and unnormalised parts are divided by none", obs_cfg.get("min_std"))
    stats = normalization_stats(dataset.arrays()["observations"], spec, min_std=float(obs_cfg.get("min_std") or 0.0)
                                ) if normalize and spec.low_dim else None
    settings = EncoderSettings.from_mapping(plain(cfg.get("encoder")) or {})
    agent = Agent(spec, act_dim, str(cfg.algo.name), algo_overrides(cfg.algo), settings, stats=stats, device=device,
                  seed=int(cfg.seed))
    pad = settings.augment_pad if agent.trains_encoder else 0
    if spec.image_size and 2 * pad >= spec.image_size:  # the rest of the frame is border (stage 1's rule too); a
        # saved agent with such a shift (warned before) still loads: the shift only acts in training
        raise ValueError(f"encoder.augment_pad={pad} on {spec.image_size} px frames; expected a shift smaller than "
                         f"half the frame, at most {(spec.image_size - 1) // 2} px (DrQ shifts 4 px at 84 px; 0: off)")
    if spec.rgb:
        shared = "one encoder for actor and critic" if agent.actor_encoder is agent.critic_encoder else \
            "separate actor and critic encoders"
        log.info("agent: %s encoder (%s, %s), %d features; cameras %s, low-dim %s, %s", agent.mode,
                 agent.encoder_source.get("source"), shared, agent.feature_dim, list(spec.rgb_keys),
                 list(spec.low_dim_keys), f"a task one-hot of {spec.num_tasks}" if spec.num_tasks else "no task one-hot")
    return agent


def prepared(agent: Agent, dataset: OfflineDataset | DiskDataset, seed: int) -> OfflineDataset | DiskDataset:
    """The dataset in the form the agent trains on (frozen_cached: features computed once, else unchanged)."""
    if agent.feature_encoder is None:
        return dataset
    return dataset.map_observations(agent.prepare, seed=seed)


FEATURE_STATS_ROWS = 20_000  # most dataset rows whose frozen features give the feature statistics


def feature_stat_rows(size: int, limit: int = FEATURE_STATS_ROWS) -> np.ndarray:
    """The rows whose features give the statistics: all of them, or ``limit`` evenly spaced ones (no RNG)."""
    if size <= limit:
        return np.arange(size)
    return np.linspace(0, size - 1, limit).round().astype(np.int64)


def fit_feature_normalization(agent: Agent, dataset: OfflineDataset | DiskDataset) -> bool:
    """Standardise a frozen encoder's features by their mean and std (+ ``STD_EPS``) over the dataset's observations
    (at most :data:`FEATURE_STATS_ROWS` rows, :func:`feature_stat_rows`), as ``normalization_stats`` does for the
    low-dim parts (a feature constant over them, a ReLU never active, is centred, not scaled); ``dataset`` in the
    form the agent trains on (:func:`prepared`). Returns False (and changes nothing)
    when the agent does not normalise features (not frozen, or ``encoder.normalize_features=false``)."""
    if not agent.normalizes_features:
        return False
    rows = feature_stat_rows(len(dataset))
    step = int(agent.settings.feature_batch)
    feats = torch.cat([agent.frozen_features(dataset.get(rows[lo: lo + step])[OBS]).double().cpu()
                       for lo in range(0, len(rows), step)])
    mean, raw = feats.mean(0).numpy(), feats.std(0, unbiased=False).numpy()
    constant = constant_dimensions(mean, raw)
    agent.set_feature_normalization(mean, np.where(constant, 1.0, raw + STD_EPS))
    log.info("frozen features standardised over %d rows: per-dimension std median %.3g (min %.3g, max %.3g)%s",
             len(rows), float(np.median(raw)), float(raw.min()), float(raw.max()),
             f"; {int(constant.sum())} constant (centred, not scaled)" if constant.any() else "")
    return True


def training_sampler(agent: Agent, dataset: OfflineDataset, seed: int) -> Any:
    """What stage 2 draws batches from: the dataset itself, or K-step windows of it for the Decision Transformer
    (:class:`~robopretrain.data.sequences.SequenceSampler`, its own RNG seeded with ``seed``)."""
    if agent.algo != "dt":
        return dataset
    from robopretrain.data.sequences import SequenceSampler

    if not isinstance(dataset, OfflineDataset):
        raise ValueError("algo=dt samples K-step windows from data held in memory; set data.storage=memory "
                         f"(this data is a {type(dataset).__name__})")

    sampler = SequenceSampler(dataset, int(agent.algo_cfg.context_len), seed=seed)
    if len(sampler.timesteps):  # acting warns about an episode twice as long (a forgotten reset_episode())
        agent.core.longest_episode = max(agent.core.longest_episode, int(np.max(sampler.timesteps)) + 1)
    warn_target_return(agent.algo_cfg, sampler.episode_returns)
    warn_episode_length(agent.algo_cfg, sampler.timesteps)
    return sampler


def warn_short_warmup(dt_cfg: Any, steps: int) -> bool:
    """Warn (and return True) when a Decision Transformer run of ``steps`` updates ends before its learning rate's
    linear warm-up (``algo.warmup_steps``, CORL's 10k) does: it trains at a fraction of ``algo.lr`` throughout (2000
    updates of the default reach 1/5 of it, and learn little)."""
    warmup = int(dt_cfg.warmup_steps)
    if steps >= warmup:
        return False
    log.warning("algo.warmup_steps=%d, but this run makes %d updates: its learning rate rises linearly to algo.lr=%g "
                "over the warm-up, so it ends at %.0f%% of it; set algo.warmup_steps to a tenth of the run or less "
                "(e.g. algo.warmup_steps=%d)", warmup, steps, float(dt_cfg.lr), 100 * steps / max(warmup, 1),
                max(1, steps // 10))
    return True


def warn_episode_length(dt_cfg: Any, timesteps: np.ndarray) -> bool:
    """Warn (and return True) when the data's episodes run past DT's ``max_ep_len`` timestep embeddings
    (``timesteps``: each step's index inside its episode, ``(N,)``): the later steps all share the last embedding, so
    the model cannot tell them apart by time."""
    longest = int(np.max(timesteps)) + 1 if len(timesteps) else 0
    limit = int(dt_cfg.max_ep_len)
    if longest <= limit:
        return False
    share = float(np.mean(np.asarray(timesteps) >= limit - 1))
    log.warning("the data's longest episode has %d steps, algo.max_ep_len=%d: steps from %d on (%.0f%% of the data) "
                "share one timestep embedding; set algo.max_ep_len >= %d (or the env's time limit)", longest, limit,
                limit - 1, 100 * share, longest)
    return True


def warn_learned_reward(algo: str, info: DatasetInfo) -> bool:
    """Warn (and return True) when the Decision Transformer trains on a file whose rewards a learned reward wrote
    (``env_args['learned_reward']``, :func:`robopretrain.reward_model.relabel`): it learns to reach returns of that
    reward, while its evaluation asks for ``algo.target_return`` and counts it down with the env's own reward
    (:mod:`robopretrain.algos.dt`), another scale, so no target return means the same in both."""
    learned = info.learned_reward
    if algo != "dt" or not learned:
        return False
    source = learned.get("source") if isinstance(learned, Mapping) else None
    log.warning("%s: its rewards were written by a learned reward (robopretrain.reward_model%s): the Decision "
                "Transformer learns to reach returns of that reward, but its evaluation asks for algo.target_return "
                "and counts it down with the env's own reward, another scale, so its evaluation success need not "
                "follow the return asked for; the value-based learners (e.g. algo=iql) use the learned reward alone",
                info.path, f", from {source}" if source else "")
    return True


def _reward_function(info: DatasetInfo) -> str:
    """Which reward function a file's rewards are, for comparing two files: the env's own, or the learned reward
    of one model (its digest) normalised one way."""
    learned = info.learned_reward
    if not learned:
        return "the env's own rewards"
    learned = dict(learned)
    return (f"a learned reward (model {str(learned.get('model_digest'))[:12]}, normalize "
            f"{learned.get('normalize')}, offset {learned.get('offset')}, scale {learned.get('scale')})")


def refuse_mixed_reward_functions(info: DatasetInfo, mix: DatasetInfo) -> None:
    """``ValueError`` when stage 2's data and its ``data.mix`` file carry two reward functions (the env's rewards
    beside a copy relabelled by :mod:`robopretrain.reward_model`, or copies of two models or normalisations): every
    batch would mix them, which stage 3 refuses (:func:`refuse_learned_reward_online`) and the pipeline's adaptation
    (a relabelled target beside the env-reward prior) did without a word."""
    mine, theirs = _reward_function(info), _reward_function(mix)
    if mine == theirs:
        return
    raise ValueError(f"data.path={info.path} holds {mine}, data.mix.path={mix.path} {theirs}: every batch would "
                     "mix two reward functions; give both files one reward (relabel both with one model and "
                     "relabel.normalize=none: standard and minmax scale each file by its own rewards), or train on "
                     "one (data.mix.fraction 0 or 1)")


def refuse_learned_reward_online(info: DatasetInfo, offline_ratio: float, setting: str = "online.offline_ratio",
                                 online_model: bool = False) -> str | None:
    """Whether stage 3's batches would mix two reward functions. Its online steps are rewarded by the target's own
    reward (its success, or its dense reward), or with ``online_model`` by a learned reward model (stage 3's
    ``reward_model``, :mod:`finetune.learned_reward`); its offline data's rewards are the env's, or a learned
    reward's when :func:`robopretrain.reward_model.relabel` wrote them (``env_args['learned_reward']``). When the two
    differ (a failing online step 0 beside learned rewards around -0.9), raises ``ValueError`` if the offline data
    would enter the batches (``offline_ratio > 0``); with ``offline_ratio`` 0 only the critic's start comes from the
    other function, which is warned (the message is returned). ``setting``: the key of ``offline_ratio`` where the
    caller reads it (the pipeline's ``stage3.offline_ratio``). None when both are the same function (that the model
    is the one that relabelled the data is :func:`finetune.learned_reward.load_online_reward`'s check)."""
    learned = info.learned_reward
    if bool(learned) == online_model:
        return None
    if learned:
        source = learned.get("source") if isinstance(learned, Mapping) else None
        what = (f"{info.path}: its rewards were written by a learned reward (robopretrain.reward_model"
                f"{', from ' + str(source) if source else ''}), while stage 3 rewards its online steps with the "
                "target's own reward (reward_model=null)")
        fix = ("Fine-tune with offline data in the target's reward (a file with the env's rewards, e.g. the source "
               "file when it has them), or give the model that relabelled it (reward_model=<its run>/reward_model.pt) "
               f"to reward the online steps with it too, or {setting}=0 to train on online steps alone (the critic "
               "then starts from the learned reward's values)")
        start = "the learned reward"
    else:
        what = (f"{info.path}: its rewards are the env's own (it records no learned reward; a copy relabelled by an "
                "older robopretrain.reward_model records none either: relabel it again with this version), while "
                "stage 3 rewards its online steps with the learned reward (reward_model)")
        fix = ("Give offline data relabelled by that model (python -m robopretrain.reward_model writes "
               f"relabelled.hdf5; data.path=...), or {setting}=0 to train on online steps alone (the critic then "
               "starts from the env reward's values)")
        start = "the env's reward"
    if offline_ratio > 0:
        raise ValueError(f"{what}: with {setting}={offline_ratio:g} every batch would mix the two reward functions. "
                         f"{fix}")
    message = f"{what}: {setting}=0, so only the critic's start comes from {start}"
    log.warning(message)
    return message


def return_range(sampler: Any) -> list[float] | None:
    """``[lowest, highest]`` episode return of a Decision Transformer's training windows (scaled units, as
    :class:`~robopretrain.data.sequences.SequenceSampler` holds them; both parts of a mix), for its checkpoint: what
    ``robopretrain.evaluate target_return=`` is checked against. None for other samplers."""
    parts = [sampler.offline, sampler.online] if isinstance(sampler, MixedSampler) else [sampler]
    returns = [np.asarray(p.episode_returns) for p in parts if hasattr(p, "episode_returns")]
    if not returns:
        return None
    joined = np.concatenate(returns)
    return [float(joined.min()), float(joined.max())]


def warn_target_return(dt_cfg: Any, episode_returns: np.ndarray, setting: str = "algo.target_return") -> bool:
    """Warn (and return True) when DT's evaluation return ``target_return * reward_scale`` lies outside the data's
    episode returns ``(E,)`` (in the same scaled units): the policy is asked for a return no demo showed (e.g. the
    default 1, a sparse success, on dense rewards that sum to -30 ... 0). ``setting``: the setting to name."""
    asked = float(dt_cfg.target_return) * float(dt_cfg.reward_scale)
    low, high = float(np.min(episode_returns)), float(np.max(episode_returns))
    tol = 1e-6 * max(1.0, abs(low), abs(high))
    if low - tol <= asked <= high + tol:
        return False
    scale = float(dt_cfg.reward_scale) or 1.0
    log.warning("%s=%g (x reward_scale %g = %g) lies outside the data's episode returns [%.4g, %.4g]: the Decision "
                "Transformer is asked for a return no demo reached; set %s to the return to ask for, in the env's "
                "reward units, which the data's rewards share (its best episode: %.4g)", setting,
                float(dt_cfg.target_return), float(dt_cfg.reward_scale), asked, low, high, setting, high / scale)
    return True


DT_RETURN_WARNED = 100.0  # |return-to-go| (scaled) above which DT's return tokens barely differ by size


def warn_dt_return_scale(dt_cfg: Any, episode_returns: Sequence[float] | np.ndarray | None) -> bool:
    """Warn (and return True) when a Decision Transformer's scaled episode returns (``(E,)`` or ``[lowest,
    highest]``, as :func:`return_range` gives them) reach :data:`DT_RETURN_WARNED` in size: its return token
    ``LayerNorm(w R + b + timestep embedding)`` (Chen et al. 2021, CORL's DT) tends to ``sign(R) w / |w|`` as ``|R|``
    grows, so at the default initialisation R and 1.25 R differ by 0.02 at R = 100 against about 1 at R = 1, and
    returns in the thousands condition nothing (a new user's finding: -1600 and -1900 gave one action to 5
    decimals). CORL scales D4RL's returns by 0.001 to a few units."""
    if episode_returns is None or len(episode_returns) == 0:
        return False
    sizes = np.abs(np.asarray(episode_returns, dtype=np.float64))
    sizes = sizes[np.isfinite(sizes)]  # (the loaders refuse NaN / inf rewards; a hand-given range may hold them)
    largest = float(sizes.max()) if sizes.size else 0.0
    if not largest > DT_RETURN_WARNED:
        return False
    scale = float(dt_cfg.reward_scale)
    advised = scale * 10.0 ** np.floor(np.log10(10.0 / largest))
    log.warning("the Decision Transformer's returns-to-go reach %.4g at algo.reward_scale=%g: its return token is "
                "LayerNorm-ed, so returns this large differ little by size and the return it is conditioned on "
                "barely steers it; scale them to a few units (e.g. algo.reward_scale=%g; CORL uses 0.001 for returns "
                "in the thousands)", largest, scale, advised)
    return True


def warn_dt_sparse_target(dt_cfg: Any, episode_returns: Sequence[float] | np.ndarray | None,
                          targets: Sequence[Target]) -> list[str]:
    """Warn, once per target, when a Decision Transformer whose data had negative episode returns (``(E,)`` or the
    ``[lowest, highest]`` a checkpoint records, scaled by ``dt_cfg.reward_scale``) is evaluated on a sparse target
    (``reward: sparse``: float(success), never negative): it counts its return-to-go down with {0, 1} rewards it did
    not train on (e.g. -distance rewards), so the return it is conditioned on stops meaning anything. Returns the
    names warned about."""
    if episode_returns is None or len(episode_returns) == 0:
        return []
    lowest = float(np.min(episode_returns)) / (float(dt_cfg.reward_scale) or 1.0)
    if lowest >= 0:
        return []
    names = [t.name for t in targets if t.sparse]
    for name in names:
        log.warning("target %r: reward: sparse (float(success), 0 or 1 per step), but the Decision Transformer's data "
                    "had episode returns down to %.4g (env units): at evaluation it counts its return-to-go down with "
                    "rewards of another kind than it trained on; give the target reward: dense (the env's own reward) "
                    "if the data's rewards are the env's", name, lowest)
    return names


# --------------------------------------------------------------------------- targets


def data_task_ids(info: DatasetInfo, data_cfg: Any) -> dict[str, int]:
    """The tasks a data setting (``data`` or ``data.mix``) trains on, as :func:`load_data` selects its demos
    (``tasks``, ``mask``, ``max_demos``), each with the slot of the task one-hot its transitions carry: ``task_id``
    when the setting overrides it, else the file's id of the task (two tasks of one id refused:
    :func:`check_file_task_slots`)."""
    demos = selected_demos(info, tasks=list(data_cfg.tasks) if data_cfg.get("tasks") else None,
                           mask=data_cfg.get("mask"), max_demos=data_cfg.get("max_demos"),
                           skip_short=bool(data_cfg.get("skip_short_demos", False)), quiet=True)
    override = data_cfg.get("task_id")
    out = {task: int(override) if override is not None else int(info.tasks[task])
           for task in sorted({info.demo(d).task for d in demos})}
    if override is None:
        check_file_task_slots(str(info.path), out, default_task=default_task_name(info.path, info.env_args))
    return out


def check_file_task_slots(path: str, task_ids: Mapping[str, int], *, default_task: str | None = None) -> None:
    """Refuse one file's selected tasks (``task_ids``: task name -> the slot its demos' ``task_id`` gives) when two
    tasks share a slot of the task one-hot: the agent would train them as one task without a word (a converter that
    numbered every file's task 0, or demos without task attributes, slot 0, beside a named task 0). ``default_task``:
    the name demos without attributes take, named in the message. Putting them in one slot knowingly is
    ``data.task_id``. Raises ValueError naming the slot, the tasks and the three ways out."""
    by_slot: dict[int, list[str]] = {}
    for task, slot in task_ids.items():
        by_slot.setdefault(int(slot), []).append(task)
    shared = {slot: tasks for slot, tasks in sorted(by_slot.items()) if len(tasks) > 1}
    if not shared:
        return
    slot, tasks = next(iter(shared.items()))
    unnamed = (f" (demos without task / task_id attributes are task {default_task!r} in slot 0)"
               if default_task in tasks else "")
    free = max(task_ids.values()) + 1
    raise ValueError(f"{path}: tasks {', '.join(map(repr, tasks))} all have task_id {slot}{unnamed}: the agent "
                     f"could not tell them apart. Give each task its own task_id in the file (e.g. {free}, with "
                     f"obs.num_tasks > {free}), select one with data.tasks=[{tasks[0]}], or set data.task_id={slot} "
                     "to train them as one task knowingly")


def check_task_slots(first: Mapping[str, int], first_path: str, second: Mapping[str, int], second_path: str,
                     *, explicit: bool = False, setting: str = "data.mix.task_id", num_tasks: int | None = None,
                     overwrite: bool = False, taken: Sequence[int] = (), second_set: bool = False,
                     same_task: str | None = None) -> None:
    """Refuse two task-slot maps that disagree: one slot of the task one-hot given to different tasks (e.g. a converted
    file that numbers its tasks from 0, mixed with a prior file whose task 0 is another: the agent could not tell
    them apart), or one task name in two slots (two numberings of one task: it would train in both, and be evaluated
    in one). ``first`` / ``second``: task name -> slot (:func:`data_task_ids`, or an init checkpoint's ``task_ids``);
    ``same_task``: the settings that make a shared slot one task, ``{slot}`` standing for it (default
    ``<setting>={slot}``; stage 2's own mix needs ``data.task_id`` set too, which the advice left out).
    ``setting``: the setting that moves the second's tasks (named in the advice with a free slot, below
    ``num_tasks`` when given and not in ``taken``, the slots of other tasks the agent knows). ``explicit``: the user
    put the second's tasks in its slot (``data.task_id`` = ``data.mix.task_id``, two converted files of one task each
    named after its file): a shared slot is then logged, or, with ``overwrite`` (the first is what an init checkpoint
    learnt there), warned about, not refused.
    ``second_set``: the user set the second's slot (``setting``): one name in two slots is then warned about (two
    files' generic task names, such as a converter's ``task 0``), not refused."""
    by_slot = {slot: task for task, slot in first.items()}
    clashes = [(slot, by_slot[slot], task) for task, slot in second.items() if by_slot.get(slot, task) != task]
    moved = [(task, first[task], slot) for task, slot in second.items() if task in first and first[task] != slot]
    if moved and (explicit or second_set):
        for task, theirs, mine in moved:
            log.warning("task %r: slot %d in %s, slot %d in %s (%s): the agent learns it in both", task, theirs,
                        first_path, mine, second_path, setting)
        moved = []
    if clashes and explicit:
        for slot, theirs, mine in clashes:
            (log.warning if overwrite else log.info)(
                "task one-hot slot %d: task %r of %s and task %r of %s are one task to the agent (%s=%d)%s", slot,
                theirs, first_path, mine, second_path, setting, slot,
                ": this run trains over what the agent learnt there" if overwrite else "")
        clashes = []
    if not clashes and not moved:
        return
    used = {*first.values(), *second.values(), *taken}
    free = next((k for k in range(max(used) + 2) if k not in used), max(used) + 1)
    room = (f"with obs.num_tasks > {free}" if num_tasks is None
            else f"the agent's one-hot has {num_tasks} slots" if free < num_tasks
            else f"none is free in the agent's {num_tasks} slots: train stage 2 with a larger obs.num_tasks")
    if clashes:
        slot, theirs, mine = clashes[0]
        raise ValueError(f"task one-hot slot {slot} is task {theirs!r} in {first_path} and task {mine!r} in "
                         f"{second_path}: they would be one task to the agent; give {second_path}'s task its own "
                         f"slot with {setting} (e.g. {free}; {room}), or "
                         f"{(same_task or setting + '={slot}').format(slot=slot)} if they are the same task")
    if moved:
        task, theirs, mine = moved[0]
        raise ValueError(f"task {task!r} is in slot {theirs} in {first_path} and in slot {mine} in {second_path}: the "
                         f"agent would learn it in both and be evaluated in one; set {setting}={theirs} (its slot in "
                         f"{first_path}), or rename one of them if they are different tasks")


def targets_of_data(info: DatasetInfo, task_ids: Mapping[str, int],
                    obs_map: Mapping[str, str] | None = None) -> list[Target]:
    """Evaluation targets for the data's own tasks when its ``env_args`` name a known env family (logged if not),
    each evaluated in the one-hot slot its transitions carry (``task_ids``: task name -> slot, :func:`data_task_ids`;
    a ``data.task_id`` override included), reading the env's keys the data's ``obs_map`` names for the agent's parts
    (:func:`~robopretrain.envs.target.target_of_data`)."""
    out = []
    for task, slot in task_ids.items():
        target = target_of_data(info.env_args, task, int(info.tasks[task]), obs_map)
        if target is None:
            log.info("no evaluation in sim for task %r: the data's env_args (%s) name no known env family; set "
                     "train.eval_targets to evaluate", task, info.env_args.get("env_name"))
            continue
        out.append(target if target.resolved_task_id() == slot else dataclasses.replace(target, task_id=int(slot)))
    return out


def eval_targets(setting: Any, info: DatasetInfo, task_ids: Mapping[str, int], num_tasks: int = 0,
                 trained: Mapping[str, int] | None = None, obs_map: Mapping[str, str] | None = None) -> list[Target]:
    """``train.eval_targets``: None -> the data's own tasks (where evaluable; ``task_ids`` as in
    :func:`targets_of_data`), [] -> none, else the listed targets, one without task_id in the slot
    :func:`~robopretrain.envs.target.with_task_slot` gives it (``trained``: every trained task's slot, mixed-in data's
    too; default ``task_ids``; ``num_tasks``: the agent's one-hot size; ``obs_map``: the data's, for its own
    tasks). Raises ValueError when the list names a target twice (results are keyed by name)."""
    value = plain(setting)
    if value is None:
        return targets_of_data(info, task_ids, obs_map)
    if isinstance(value, (str, Mapping)):
        value = [value]
    targets = [with_task_slot(as_target(v), task_ids if trained is None else trained, num_tasks) for v in value]
    twice = sorted({t.name for t in targets if [u.name for u in targets].count(t.name) > 1})
    if twice:  # results are keyed by name: the second one's replaced the first's without a word
        raise ValueError(f"train.eval_targets names {twice} more than once; each target's results are logged under "
                         "its name (eval/<name>/success): list each once (to score a task in another slot, run "
                         "robopretrain.evaluate with that target's task_id)")
    return targets


def check_target_fits(agent: Agent, target: Target) -> None:
    """Refuse at start a target whose task id does not fit the agent's task one-hot."""
    if agent.spec.num_tasks and not 0 <= target.resolved_task_id() < agent.spec.num_tasks:
        raise ValueError(f"target {target.name!r}: task_id {target.resolved_task_id()} does not fit the agent's task "
                         f"one-hot of size {agent.spec.num_tasks}; set the target's task_id (or obs.num_tasks in "
                         "stage 2)")


SUCCESS_END_DEMOS = 200  # successful demos whose last done the dense-target check reads (one value each)


def warn_success_termination(target: Target, info: DatasetInfo) -> str | None:
    """Warn (and return the note) when dense-reward ``target`` ends episodes at the first success but none of its
    demos in ``info``'s file flagged successful ends in a terminal (:func:`~robopretrain.envs.target.
    success_termination_note`; the last ``done`` of up to :data:`SUCCESS_END_DEMOS` of them read). Stage 3 and the
    pipeline's start checks."""
    if target.reward != "dense" or not target.terminate_on_success:
        return None
    flagged = successful_target_demos(target, info.demos, flagged=True)
    ends = ends_in_terminal(info.path, [d.name for d in flagged[:SUCCESS_END_DEMOS]])
    note = success_termination_note(target, ends, len(flagged))
    if note:
        log.warning(note)
    return note


def warn_unrandomized_targets(randomization: Any, targets: Sequence[Target], where: str) -> list[str]:
    """Warn when ``dr`` randomizes (``randomization``: :func:`randomization`'s value, ``"none"`` when off) and some
    ``targets`` are not sim_envs tasks, whose envs have no such randomization: their episodes run nominal. Returns
    those targets' names (empty: nothing said)."""
    if randomization == "none":
        return []
    names = [t.name for t in targets if not t.randomizable]
    if names:
        log.warning("dr=%s: physics / visual randomization and distractors exist for sim_envs targets only; %s of %s "
                    "run nominal (a user env's own variations: its constructor arguments, target.env_kwargs, or a "
                    "gap of env_kwargs in stage 3 and evaluate; docs/transfer.md)", randomization, where,
                    ", ".join(repr(n) for n in names))
    return names


def data_camera_sources(info: DatasetInfo, rgb_keys: Sequence[str], obs_map: Mapping[str, str] | None = None
                        ) -> dict[str, list[int | None]] | None:
    """Each camera of ``rgb_keys`` (the agent's names; ``obs_map``: part -> the data's key) as the user's data stores
    it, ``[H, W, C]``: a cached copy's ``env_args.source_image_sizes`` (its source's size; C from the source file
    where it is a readable HDF5, else None), else the file's own frames (C None in a copy converted from another
    format, whose converter wrote grey as RGB). None when no camera is known. Recorded with
    the agent (``camera_sources``) so that an env whose cameras differ is told
    (:func:`robopretrain.envs.target.camera_geometry_notes`)."""
    from robopretrain.data.hdf5 import read_info
    from robopretrain.envs.camera_frames import frame_geometry

    sizes = dict(info.env_args.get("source_image_sizes") or {})
    source, source_info = info.env_args.get("source"), None
    if sizes and isinstance(source, str) and Path(source).suffix.lower() in (".hdf5", ".h5") and Path(source).is_file():
        try:
            source_info = read_info(source)
        except (OSError, DatasetError):  # moved or rewritten: the channels stay unknown
            source_info = None
    out: dict[str, list[int | None]] = {}
    for key in rgb_keys:
        stored = (obs_map or {}).get(key, key)
        try:
            if stored in sizes:
                channels = None
                if source_info is not None and stored in source_info.obs_specs:
                    channels = frame_geometry(source_info.obs_specs[stored][0])[2]
                out[key] = [int(sizes[stored][0]), int(sizes[stored][1]), channels]
            elif stored in info.obs_specs:  # a converted copy's frames are RGB whatever the source's: C unknown
                h, w, c = frame_geometry(info.obs_specs[stored][0])
                out[key] = [h, w, None if isinstance(source, str) else c]
        except (ValueError, TypeError, IndexError):  # not a camera layout: nothing to compare
            continue
    return out or None


def warn_encoder_geometry(encoder_dir: str | os.PathLike, info: DatasetInfo, rgb_keys: Sequence[str],
                          obs_map: Mapping[str, str] | None = None) -> list[str]:
    """Warn when the stage-1 encoder at ``encoder_dir`` read non-square clips centre-cropped (its meta's
    ``extra.data.cropped_sizes``, stage 1's default ``data.stretch=false``) while this data's cached copy
    (``info``: its ``env_args.source_image_sizes``) stretched non-square cameras of ``rgb_keys`` (the agent's names;
    ``obs_map``: part -> the data's key) to square: the
    encoder then sees another geometry here (and in the env, whose frames are stretched the same way). Returns the
    stretched cameras (empty when nothing is said)."""
    from robopretrain.nets.encoder_io import read_encoder_meta

    try:
        extra = read_encoder_meta(encoder_dir).get("extra") or {}
    except (OSError, ValueError):  # a folder that does not load is refused where the encoder is built
        return []
    cropped = list(((extra.get("data") or {}) if isinstance(extra, Mapping) else {}).get("cropped_sizes") or [])
    sizes = info.env_args.get("source_image_sizes") or {}
    stored = {(obs_map or {}).get(k, k) for k in rgb_keys}  # the data's names of the agent's cameras
    stretched = [f"{k} {h}x{w}" for k, (h, w) in sorted(dict(sizes).items()) if k in stored and h != w]
    if cropped and stretched:
        log.warning("encoder.checkpoint=%s read its non-square clips (%s) centre-cropped to square (stage 1's "
                    "data.stretch=false), while this data's cameras (%s) are stretched to square, as env cameras are: "
                    "the encoder learnt another geometry; train stage 1 with data.stretch=true to match",
                    encoder_dir, ", ".join(cropped[:4]), ", ".join(stretched))
        return stretched
    return []


def check_env_fits(agent: Agent, target: Target, randomization: Any = "none", side: str = "") -> int | None:
    """Build the target's env once and check its observation parts and action size against the agent's, before any
    training: a ``ValueError`` names the target, the part and both sizes; returns the env's time limit
    (:func:`~robopretrain.envs.target.env_time_limit`). A sparse-reward target then takes one step
    (:func:`probe_action`: the middle of the env's action range), unless its ``probe_step`` is false (a real
    robot that must not move before the policy acts): an info without its ``success_key`` raises
    :class:`~robopretrain.envs.target.EnvContractError`. ``side``: the setting ``randomization`` came from (e.g.
    ``gap.source``), named first where the env refuses a constructor argument of that side."""
    from robopretrain.data.spec import SpecMismatchError, spec_from_shapes
    from robopretrain.evaluation import agent_env

    check_target_fits(agent, target)
    try:
        env = agent_env(agent, target, randomization)
    except ValueError as exc:  # a constructor argument of the side the env refuses: the side named first
        from robopretrain.envs.target import split_env_kwargs

        given = split_env_kwargs(randomization)[1] if side else {}
        refused = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if refused is None or refused.group(1) not in given:
            raise
        raise ValueError(f"{side}={randomization!r}: {exc}") from exc
    try:
        obs, _ = env.reset(seed=0)
        shapes = {k: (np.shape(v), np.asarray(v).dtype) for k, v in obs.items() if k != "task_id"}
        where = f"target {target.name!r}"
        try:
            spec = spec_from_shapes(shapes, agent.spec.low_dim_keys, agent.spec.rgb_keys, agent.spec.num_tasks,
                                    where=where, map_setting="target.obs_map", env=True)
            spec.check_fits(agent.spec, mine=f"the env of {where}", theirs="the agent")
        except SpecMismatchError as exc:
            raise ValueError(str(exc)) from None
        act_shape = tuple(env.action_space.shape or ())
        if act_shape != (agent.act_dim,):
            raise ValueError(f"{where}: the env takes actions of shape {act_shape}, the agent gives "
                             f"({agent.act_dim},)")
        warn_action_range(env.action_space, where)
        try:  # TargetEnv's record of the frames as the env gave them (a sim_envs env renders the agent's own)
            seen = env.get_wrapper_attr("camera_shapes")
        except AttributeError:
            seen = {}
        warn_camera_geometry(where, seen, getattr(agent, "camera_sources", None), agent.spec.image_size)
        if target.sparse and target.probe_step:  # a misspelt success_key shows at the first step, before training
            probe_success_key(env, target, agent.act_dim, where)  # (stage 2's evaluations only warned)
        return env_time_limit(env)
    finally:
        env.close()


def probe_success_key(env: Any, target: Target, act_dim: int, where: str) -> None:
    """Take one step of ``env`` (just reset) with :func:`probe_action` and raise
    :class:`~robopretrain.envs.target.EnvContractError` when its info lacks the target's ``success_key``."""
    _, _, _, _, info = env.step(probe_action(env.action_space, act_dim))
    try:  # TargetEnv's (its info always has our "success", and the env's own keys may have one too)
        seen, keys = env.get_wrapper_attr("success_key_seen"), env.get_wrapper_attr("env_info_keys")
    except AttributeError:  # no TargetEnv (sim_envs): the env's own info
        seen, keys = target.success_key in info, list(info)
    if not seen:
        raise EnvContractError(
            f"{where}: info has no {target.success_key!r} at the first step (keys: {sorted(keys)}); set the "
            "target's success_key to the info key that says the task is done (an env with no success signal at "
            "all: reward: dense, and success counts 0); an env that gives it only on some steps (e.g. when the "
            "task is done): the target's probe_step: false skips this check, and a step without it then counts "
            "as no success")


def probe_action(space: Any, act_dim: int) -> np.ndarray:
    """The probe step's action: the middle of the env's action Box where both bounds are finite (the agent's zero
    where its actions are rescaled to the env's range, whose outer Box is ``[-1, 1]``), else 0. The agent's zero
    action went to an env that takes them unmapped, so a ``[0, 1]`` Box got its low end (a user's session)."""
    low, high = (np.asarray(getattr(space, k, np.nan), dtype=np.float64) for k in ("low", "high"))
    if low.shape != (act_dim,) or high.shape != (act_dim,):
        return np.zeros(act_dim, np.float32)
    middle = np.where(np.isfinite(low) & np.isfinite(high), (low + high) / 2.0, 0.0)
    return np.clip(middle, low, high).astype(np.float32)


def warn_action_range(space: Any, where: str) -> bool:
    """Warn (and return True) when an env takes actions in a finite box other than ``[-1, 1]`` while the agent's
    actions reach it unmapped: a tanh policy covers ``[-1, 1]`` only, so where the box is wider part of the robot's
    range is out of reach, and where it is narrower the agent's actions are clipped to it
    (:class:`robopretrain.envs.target.ClipToEnvBox`); either way the units may differ (data rescaled outside the
    toolkit: declare the target's ``action_normalization``)."""
    low, high = (np.asarray(getattr(space, k, np.nan), dtype=np.float64) for k in ("low", "high"))
    if low.shape != high.shape or not (np.isfinite(low).all() and np.isfinite(high).all()):
        return False
    if np.allclose(low, -1.0, rtol=0.0, atol=1e-6) and np.allclose(high, 1.0, rtol=0.0, atol=1e-6):
        return False
    wider = np.flatnonzero((low < -1.0 - 1e-6) | (high > 1.0 + 1e-6)).tolist()
    narrower = np.flatnonzero((low > -1.0 + 1e-6) | (high < 1.0 - 1e-6)).tolist()
    said = ([f"the env's range is out of the agent's reach beyond [-1, 1] in dimension(s) {wider}"] if wider else []) \
        + ([f"the agent's actions beyond the env's range are clipped to it in dimension(s) {narrower}, and its "
            "exploration noise, drawn in [-1, 1], spans up to "
            f"{2.0 / max(float(np.min((high - low)[narrower])), 1e-9):.3g}x the env's range there (stage 3's sampled "
            "actions pile up on the box's edges)"] if narrower else [])
    box = f"{{low: {np.round(low, 6).tolist()}, high: {np.round(high, 6).tolist()}}}"
    log.warning("%s: the env takes actions from low %s to high %s; the agent acts in [-1, 1] without a mapping (its "
                "data recorded no action normalization): %s. If the data's actions are in the env's own units, "
                "train stage 2 again with data.action_bounds='%s' (or rescale them to [-1, 1] in the file and "
                "record the units there: env_args['action_normalization'], docs/targets.md); if the data was "
                "rescaled to [-1, 1] outside the toolkit, set the target's action_normalization {low, high}", where,
                np.round(low, 4).tolist(), np.round(high, 4).tolist(), "; ".join(said), box)
    return True


def env_fits_or_log(agent: Agent, target: Target, randomization: Any = "none") -> bool:
    """:func:`check_env_fits` as a yes/no: a target whose env does not fit the agent is warned about (one line: the run
    reports no success rate for it) and False."""
    try:
        check_env_fits(agent, target, randomization)
    except (ValueError, KeyError) as exc:
        log.warning("no evaluation on %s, the data's own task: its env does not fit the agent (%s); "
                    "train.eval_targets=[] says no evaluation is wanted, or name targets that fit", target.name, exc)
        return False
    return True


def target_config(node: Any) -> Target:
    """A ``target`` config entry (a sim_envs task name or a mapping of :class:`Target` fields) as a Target."""
    value = plain(node)
    if value is None:
        raise ValueError("config key target is not set; give a sim_envs task name or a mapping (see docs/targets.md)")
    return as_target(value)


__all__ = ["CONFIG_DIR", "SUCCESS_END_DEMOS", "algo_overrides", "compose", "check_env_fits", "check_target_fits",
           "data_spec", "env_fits_or_log", "warn_action_range", "warn_success_termination",
           "eval_targets", "converted", "load_data",
           "new_agent", "plain", "prepared", "randomization", "report_success_filter", "resolve_data_path",
           "reward_settings", "setup_torch", "success_filtered_bc", "warn_two_valued_actions",
           "training_sampler",
           "target_config", "targets_of_data"]
