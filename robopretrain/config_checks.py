"""Range checks of the stage-2 and stage-3 configs, so a bad value fails at start with a message naming the key.

:func:`validate_offline_config` checks ``configs/robopretrain.yaml`` (and the ``algo`` group) and
:func:`validate_online_config` checks ``configs/finetune.yaml``. Both raise ``ValueError`` with
``<config>: <key>=<value>; expected <what>``, which :mod:`robopretrain.cli` reports on one line. Keys that a
config does not have are skipped, so the checks follow the configs as they grow.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

Check = Callable[[Any], bool]

AT_LEAST_1: tuple[Check, str] = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
AT_LEAST_0: tuple[Check, str] = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
POSITIVE: tuple[Check, str] = (lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE: tuple[Check, str] = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
UNIT_OPEN_CLOSED: tuple[Check, str] = (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")
UNIT_CLOSED: tuple[Check, str] = (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
UNIT_OPEN: tuple[Check, str] = (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")

ALGO_CHECKS: dict[str, tuple[Check, str]] = {
    "batch_size": AT_LEAST_1, "discount": UNIT_OPEN_CLOSED, "tau": UNIT_OPEN_CLOSED, "n_actions": AT_LEAST_1,
    "num_critics": AT_LEAST_1, "policy_lr": POSITIVE, "qf_lr": POSITIVE, "vf_lr": POSITIVE, "actor_lr": POSITIVE,
    "lr": POSITIVE, "cql_alpha": NON_NEGATIVE, "cql_temp": POSITIVE, "dr3_coef": NON_NEGATIVE,
    "expectile": UNIT_OPEN, "beta": POSITIVE, "max_weight": POSITIVE,
    "policy_freq": AT_LEAST_1, "policy_noise": NON_NEGATIVE, "noise_clip": NON_NEGATIVE, "alpha": NON_NEGATIVE,
    "expl_noise": NON_NEGATIVE, "awac_lambda": POSITIVE, "actor_bc_coef": NON_NEGATIVE, "critic_bc_coef": NON_NEGATIVE,
    "phi": NON_NEGATIVE, "lmbda": UNIT_CLOSED, "n_target_samples": AT_LEAST_1, "n_act_samples": AT_LEAST_1,
    "guide_lr": POSITIVE, "num_values": AT_LEAST_1, "actor_bc_weight": NON_NEGATIVE, "bc_steps": AT_LEAST_0,
    "actor_bc_filter": (lambda v: v in ("none", "success"), "none or success"),
}
TRAIN_CHECKS: dict[str, tuple[Check, str]] = {
    "steps": AT_LEAST_0, "log_every": AT_LEAST_1, "eval_every": AT_LEAST_1, "eval_episodes": AT_LEAST_1,
    "checkpoint_every": AT_LEAST_1, "keep_checkpoints": AT_LEAST_1, "calibration_batch": AT_LEAST_1,
}
ENCODER_CHECKS: dict[str, tuple[Check, str]] = {
    "augment_pad": AT_LEAST_0, "lr": POSITIVE, "feature_batch": AT_LEAST_1,
}
ONLINE_CHECKS: dict[str, tuple[Check, str]] = {
    "env_steps": AT_LEAST_0, "utd": AT_LEAST_1, "offline_ratio": UNIT_CLOSED, "buffer_capacity": AT_LEAST_1,
    "eval_every": AT_LEAST_1, "eval_episodes": AT_LEAST_1, "log_every": AT_LEAST_1, "checkpoint_every": AT_LEAST_1,
    "keep_checkpoints": AT_LEAST_1, "calibration_batch": AT_LEAST_1,
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(float(v))


def _check_section(cfg: DictConfig, section: str | None, checks: dict[str, tuple[Check, str]], where: str) -> None:
    node = cfg if section is None else OmegaConf.select(cfg, section)
    if node is None:
        return
    for key, (ok, expected) in checks.items():
        if key not in node or node[key] is None:
            continue
        value = node[key]
        if not ok(value):
            name = key if section is None else f"{section}.{key}"
            raise ValueError(f"{where} config: {name}={value!r}; expected {expected}")


@functools.lru_cache(maxsize=None)
def known_keys(section: str) -> frozenset[str]:
    """Every key any shipped config defines under ``section`` (``data``: also the top-level keys of each
    ``configs/data/*.yaml`` group), the keys a stage reads there."""
    import yaml

    from robopretrain.cli import CONFIG_DIR

    keys: set[str] = set()
    for path in CONFIG_DIR.rglob("*.yaml"):
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            continue
        if path.parent.name == section:
            keys |= set(doc) - {"defaults"}
        if isinstance(doc.get(section), dict):
            keys |= set(doc[section])
    return frozenset(keys)


def _check_known_keys(cfg: DictConfig, section: str, where: str) -> None:
    """Refuse keys a user added under ``section`` (``+obs.normalise=false``) that no config defines and no stage
    reads: silently ignored, they would leave the user believing a setting took effect."""
    node = cfg.get(section)
    if not isinstance(node, DictConfig):
        return
    unknown = sorted(set(node) - known_keys(section))
    if unknown:
        raise ValueError(f"{where} config: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; valid keys: "
                         f"{', '.join(sorted(known_keys(section)))}")


def _check_common(cfg: DictConfig, where: str) -> None:
    for section in ("obs", "data"):
        _check_known_keys(cfg, section, where)
    obs = cfg.get("obs")
    if obs is not None and not (obs.get("low_dim") or obs.get("rgb")):
        raise ValueError(f"{where} config: obs.low_dim={obs.get('low_dim')!r} and obs.rgb={obs.get('rgb')!r}; "
                         "expected at least one observation part, e.g. obs.low_dim=[proprio,object]")
    _check_section(cfg, "obs", {"num_tasks": AT_LEAST_0}, where)
    _check_section(cfg, None, {"seed": AT_LEAST_0}, where)
    _check_section(cfg, "algo", ALGO_CHECKS, where)
    algo = cfg.get("algo")
    if algo is not None and algo.get("actor_bc_filter") == "success" and float(algo.get("actor_bc_weight") or 0) > 0:
        if algo.get("sparse_reward") is False:
            raise ValueError(f"{where} config: algo.actor_bc_filter=success with algo.sparse_reward=false; the filter "
                             "reads success from the sparse {0, 1} reward's returns-to-go: set "
                             "algo.actor_bc_filter=none")
        if algo.get("discount") is not None and float(algo.discount) >= 1:
            raise ValueError(f"{where} config: algo.actor_bc_filter=success with algo.discount={algo.discount}; the "
                             "filter compares returns-to-go with the never-succeeds value reward_bias / (1 - "
                             "discount): set a discount < 1 or algo.actor_bc_filter=none")


def validate_offline_config(cfg: DictConfig) -> None:
    """Stage 2 (``configs/robopretrain.yaml``): raise ``ValueError`` naming the first key out of range."""
    _check_common(cfg, "robopretrain")
    _check_section(cfg, "train", TRAIN_CHECKS, "robopretrain")
    _check_section(cfg, "encoder", ENCODER_CHECKS, "robopretrain")


def validate_online_config(cfg: DictConfig) -> None:
    """Stage 3 (``configs/finetune.yaml``): raise ``ValueError`` naming the first key out of range."""
    _check_common(cfg, "finetune")
    _check_section(cfg, "offline", TRAIN_CHECKS, "finetune")
    _check_section(cfg, "online", ONLINE_CHECKS, "finetune")
