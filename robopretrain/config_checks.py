"""Range checks of the stages' configs, so a bad value fails at start with a message naming the key.

:func:`validate_offline_config` checks ``configs/robopretrain.yaml`` (and the ``algo`` group),
:func:`validate_online_config` checks ``configs/finetune.yaml``, :func:`validate_reward_model_config` the keys
of ``configs/reward_model.yaml`` and :func:`validate_objective_options` stage 1's ``objective.options`` (its other
keys: :func:`video_pretrain.train.validate_config`). Each raises ``ValueError`` with
``<config>: <key>=<value>; expected <what>``, which :mod:`robopretrain.cli` reports on one line. Keys that a
config does not have are skipped, so the checks follow the configs as they grow.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
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
PROBABILITY: tuple[Check, str] = (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")  # a dropout rate
FLAG: tuple[Check, str] = (lambda v: isinstance(v, bool), "true or false")
NUMBER: tuple[Check, str] = (lambda v: _is_number(v), "a number")
WIDTHS: tuple[Check, str] = (lambda v: _is_int(v) and v >= 1 or (OmegaConf.is_list(v) or isinstance(v, (list, tuple)))
                             and len(v) > 0 and all(_is_int(h) and h >= 1 for h in v),
                             "a list of layer widths (integers >= 1), e.g. [64]")
# networks built from the list itself (an MLP's hidden layers): one number is refused, not read as one layer (or as
# a list of its digits): actor_hidden=256 could mean [256] or [256, 256]
LAYER_WIDTHS: tuple[Check, str] = (lambda v: (OmegaConf.is_list(v) or isinstance(v, (list, tuple))) and len(v) > 0
                                   and all(_is_int(h) and h >= 1 for h in v),
                                   "a list of layer widths (integers >= 1), e.g. [256, 256]")

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
    "reward_scale": NUMBER, "reward_bias": NUMBER,
    "actor_hidden": LAYER_WIDTHS, "critic_hidden": LAYER_WIDTHS, "value_hidden": LAYER_WIDTHS,
    "guide_hidden": LAYER_WIDTHS, "vae_hidden": LAYER_WIDTHS,
    # the Decision Transformer's (max_ep_len=0 failed in index_select, a dropout of 1.5 in torch, a NaN
    # target_return reached the env as NaN actions, blamed on the env)
    "context_len": AT_LEAST_1, "embed_dim": AT_LEAST_1, "num_layers": AT_LEAST_1, "num_heads": AT_LEAST_1,
    "max_ep_len": AT_LEAST_1, "max_action": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_steps": AT_LEAST_0,
    "clip_grad": NON_NEGATIVE, "target_return": NUMBER, "attention_dropout": PROBABILITY,
    "residual_dropout": PROBABILITY, "embedding_dropout": PROBABILITY,
}
TRAIN_CHECKS: dict[str, tuple[Check, str]] = {
    "steps": AT_LEAST_0, "log_every": AT_LEAST_1, "eval_every": AT_LEAST_1, "eval_episodes": AT_LEAST_1,
    "checkpoint_every": AT_LEAST_1, "keep_checkpoints": AT_LEAST_1, "calibration_batch": AT_LEAST_1,
    # train.compile=off compiled and tensorboard=no wrote tb/ (bool of a non-empty string)
    "progress": FLAG, "tensorboard": FLAG, "cuda_graph": FLAG, "compile": FLAG, "eval_at_start": FLAG,
}
ENCODER_CHECKS: dict[str, tuple[Check, str]] = {
    "augment_pad": AT_LEAST_0, "lr": POSITIVE, "feature_batch": AT_LEAST_1,
}
ONLINE_CHECKS: dict[str, tuple[Check, str]] = {
    # 0 env steps wrote no checkpoint for evaluate or the pipeline's evaluation
    "env_steps": AT_LEAST_1, "num_envs": AT_LEAST_1, "utd": AT_LEAST_1, "offline_ratio": UNIT_CLOSED,
    "buffer_capacity": AT_LEAST_1,
    "eval_every": AT_LEAST_1, "eval_episodes": AT_LEAST_1, "log_every": AT_LEAST_1, "checkpoint_every": AT_LEAST_1,
    "keep_checkpoints": AT_LEAST_1, "calibration_batch": AT_LEAST_1, "asynchronous": FLAG, "keep_optimizer": FLAG,
    "progress": FLAG, "tensorboard": FLAG, "cuda_graph": FLAG, "compile": FLAG,
}
# stage 3's transfer options and gap (finetune/transfer/): a float where an integer belongs was truncated, a flag's
# ``true`` read as the number 1, a negative DARC scale rewarded what only the source dynamics allow
TRANSFER_CHECKS: dict[str, dict[str, tuple[Check, str]]] = {
    "transfer.epopt": {"enabled": FLAG, "epsilon": UNIT_OPEN_CLOSED, "batch_episodes": AT_LEAST_1,
                       "warmup_batches": AT_LEAST_0},
    "transfer.dann": {"enabled": FLAG, "coef": NON_NEGATIVE, "hidden": WIDTHS, "lr": POSITIVE, "target_batch": AT_LEAST_0},
    "transfer.darc": {"enabled": FLAG, "hidden": AT_LEAST_1, "lr": POSITIVE, "input_noise": NON_NEGATIVE,
                      "scale": NON_NEGATIVE, "warmup_updates": AT_LEAST_0},
    "gap": {"target_frames": AT_LEAST_0, "target_transitions": AT_LEAST_0},
}


# the pipeline's own keys (configs/pipeline.yaml), by section: their types, checked before the pipeline reads them
# with int() / bool() (a flag given as ``no`` ran the stage it switches off, ``stage2.steps=1.5`` ran 1 update). Their
# ranges are the stages' own checks, run at start on the configs the pipeline makes from them
# (``pipeline.check_stage_configs``); ``check_amounts`` checks the keys no stage config holds
INTEGER: tuple[Check, str] = (lambda v: _is_int(v), "an integer")
PIPELINE_CHECKS: dict[str | None, dict[str, tuple[Check, str]]] = {
    None: {"seed": INTEGER, "image_size": INTEGER, "progress": FLAG, "cuda_graph": FLAG, "compile": FLAG,
           "flush_denormal": FLAG},
    "obs": {"normalize": FLAG, "min_std": NUMBER},
    "data": {"prior_episodes_per_task": INTEGER, "target_noise": NUMBER, "num_workers": INTEGER},
    "stage1": {"enabled": FLAG, "steps": INTEGER, "batch_size": INTEGER, "lr": NUMBER},
    "encoder": {"shared": FLAG, "augment_pad": INTEGER, "lr": NUMBER},
    "stage2": {"enabled": FLAG, "steps": INTEGER, "eval_episodes": INTEGER, "eval_every": INTEGER,
               "checkpoint_every": INTEGER},
    "adapt": {"steps": INTEGER, "checkpoint_every": INTEGER},
    "stage3": {"env_steps": INTEGER, "num_envs": INTEGER, "asynchronous": FLAG, "utd": INTEGER,
               "offline_ratio": NUMBER, "buffer_capacity": INTEGER, "eval_every": INTEGER, "eval_episodes": INTEGER,
               "checkpoint_every": INTEGER},
    "evaluate": {"video": FLAG},
    "evaluate.robustness": {"enabled": FLAG, "episodes": INTEGER, "workers": INTEGER, "video": FLAG},
}


# stage 1's objective options (configs/objective/*.yaml), by objective: a discount of 1 (or more) is no discounted
# value (ICVF's and VIP's values sum -1 per step, so theirs would grow without bound); checked before any data loads
OBJECTIVE_CHECKS: dict[str, dict[str, tuple[Check, str]]] = {
    "icvf": {"gamma": (UNIT_OPEN[0], "a discount in (0, 1)"), "expectile": UNIT_OPEN,
             "target_update_rate": UNIT_OPEN_CLOSED, "num_heads": AT_LEAST_1, "hidden": LAYER_WIDTHS},
    "vip": {"gamma": (UNIT_OPEN[0], "a discount in (0, 1)"), "l1_weight": NON_NEGATIVE, "l2_weight": NON_NEGATIVE},
    "tcn": {"temperature": POSITIVE},
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(float(v))


def check_section(cfg: DictConfig, section: str | None, checks: dict[str, tuple[Check, str]], where: str) -> None:
    """Raise ``ValueError`` (``<where> config: <section>.<key>=<value>; expected <what>``) for the first key of
    ``checks`` present in ``cfg``'s ``section`` (None: the top level) whose value fails its check; null values and
    absent keys pass."""
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


# free-form mappings (any key is valid): a collect config's overrides, key maps, constructor arguments, evaluate's
# factors (a user's own factor names)
OPEN_SECTIONS = frozenset({"collect", "obs_map", "env_kwargs", "kwargs", "factors", "algo_overrides"})


def _yaml(path: Any) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text()) if path.is_file() else None
    return doc if isinstance(doc, dict) else {}


def _merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


@functools.lru_cache(maxsize=None)
def _stage_doc(config: str) -> dict[str, Any]:
    """``configs/<config>.yaml`` as a mapping (read once; not to be mutated)."""
    from robopretrain.cli import CONFIG_DIR

    return _yaml(CONFIG_DIR / f"{config}.yaml")


def _default_options(config: str) -> dict[str, Any]:
    """The stage's config groups and their default options (``defaults: [data: demos]`` -> ``{"data": "demos"}``)."""
    return {str(k): v for e in _stage_doc(config).get("defaults") or [] if isinstance(e, dict) for k, v in e.items()}


def _valid_text(valid: dict[str, list[str]]) -> str:
    return "; ".join(f"{level}: {', '.join(keys)}" for level, keys in valid.items())


@functools.lru_cache(maxsize=None)
def stage_section(config: str, section: str) -> dict[str, Any] | None:
    """The keys stage ``config`` (``configs/<config>.yaml``) defines under ``section``, with their defaults: its
    default group option (``defaults: [data: demos]`` -> ``configs/data/demos.yaml``) merged with the section in the
    file itself. None when the stage has no such section (stage 3 has no ``obs``: the checkpoint's)."""
    from robopretrain.cli import CONFIG_DIR

    doc, option = _stage_doc(config), _default_options(config).get(section)
    tree: dict[str, Any] | None = None
    if isinstance(option, str):
        tree = {k: v for k, v in _yaml(CONFIG_DIR / section / f"{option}.yaml").items() if k != "defaults"}
    if isinstance(doc.get(section), dict):
        tree = _merge(tree or {}, doc[section])
    return tree


def _unknown(node: DictConfig, tree: dict[str, Any], prefix: str) -> tuple[list[str], dict[str, list[str]]]:
    """Keys of ``node`` that ``tree`` does not define (dotted, from ``prefix``), recursing into defined groups of
    settings (``data.mix``) but not into free-form mappings; with the valid keys of each level that had one."""
    unknown: list[str] = []
    valid: dict[str, list[str]] = {}
    for key in node:
        name = f"{prefix}.{key}"
        if key not in tree:
            unknown.append(name)
            valid.setdefault(prefix, sorted(tree))
        elif isinstance(tree[key], dict) and tree[key] and key not in OPEN_SECTIONS and isinstance(node[key], DictConfig):
            more, levels = _unknown(node[key], tree[key], name)
            unknown += more
            valid.update(levels)
    return unknown, valid


def _check_known_keys(cfg: DictConfig, section: str, where: str) -> None:
    """Refuse keys a user added under ``section`` (``+obs.normalise=false``, ``+data.mix.fracton=0.5``) that this
    stage's config does not define: silently ignored, they would leave the user believing a setting took effect."""
    node = cfg.get(section)
    if not isinstance(node, DictConfig):
        return
    tree = stage_section(where, section)
    if tree is None:
        raise ValueError(f"{where} config: {', '.join(f'{section}.{k}' for k in node)}: this stage has no {section} "
                         f"settings" + (" (its observation settings are the checkpoint's, from stage 2)"
                                        if section == "obs" else "") + "; remove them")
    unknown, valid = _unknown(node, tree, section)
    if unknown:
        option = _default_options(where).get(section)
        raise ValueError(f"{where} config: unknown key(s) {', '.join(unknown)}; valid keys: {_valid_text(valid)}"
                         + (f" (those of this stage's default {section} option, "
                            f"robopretrain/configs/{section}/{option}.yaml)" if isinstance(option, str) else ""))


def check_top_level_keys(cfg: DictConfig, config: str, free: Mapping[str, Sequence[str]] | None = None) -> None:
    """Refuse top-level keys that ``configs/<config>.yaml`` neither defines nor takes as a config group
    (``+checkpoint=...`` in stage 2, ``+encoder.mode=frozen`` in stage 3: silently ignored otherwise), and unknown
    keys inside the file's own groups of settings (``online``, ``train``, ``video``; groups chosen from
    ``configs/<group>/`` such as ``algo`` and ``dr`` are checked by their own readers). ``free``: section -> keys
    (dotted below it) that are free-form mappings, added or not in the file (the pipeline's
    ``<stage>.algo_overrides``, randomization entries its own checks read). ``ValueError`` naming them."""
    doc, groups = _stage_doc(config), set(_default_options(config))
    if free:
        import copy

        doc = copy.deepcopy(doc)
        for section, paths in free.items():
            for path in paths:  # dotted within the section: "robustness.levels"
                *parents, last = path.split(".")
                node = doc.setdefault(section, {})
                for part in parents:
                    node = node.setdefault(part, {})
                node[last] = {}  # an empty default: not recursed into (free-form)
    known = set(doc) | groups | {"hydra"}  # ``defaults`` too: a config loaded with OmegaConf.load keeps it
    unknown = sorted(str(k) for k in cfg if k not in known)
    if unknown:
        raise ValueError(f"{config} config: unknown key(s) {', '.join(unknown)} (this stage does not read them); "
                         f"valid keys: {', '.join(sorted(known - {'hydra', 'defaults'}))}")
    for section, default in doc.items():
        node = cfg.get(section)
        if section in groups or section in OPEN_SECTIONS or not isinstance(default, dict) or not default \
                or not isinstance(node, DictConfig):
            continue
        bad, valid = _unknown(node, default, section)
        if bad:
            raise ValueError(f"{config} config: unknown key(s) {', '.join(bad)}; valid keys: {_valid_text(valid)}")


# settings that hold a list of names: one name given alone (obs.low_dim=joint_pos) is that list of one
NAME_LISTS = ("obs.low_dim", "obs.rgb", "data.tasks", "data.mix.tasks", "select", "targets", "evaluate.blind")


def one_name_as_list(cfg: DictConfig, keys: Sequence[str] = NAME_LISTS) -> None:
    """Replace, in place, each of ``keys`` that holds one name (a string) by the list of that name, so that
    ``obs.low_dim=joint_pos`` means ``obs.low_dim=[joint_pos]`` (``list("joint_pos")`` would read its letters)."""
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, [value], merge=False, force_add=False)


def resolve_device(name: Any, where: str) -> str:
    """The device ``name`` (a config's ``device``) names on this machine: ``auto`` -> ``cuda`` when CUDA is available,
    else ``cpu``; ``cpu``, ``cuda``, ``cuda:<index>``, ``mps`` as given. Raises ``ValueError`` (``<where> config:
    device=...``) for a name torch does not know (``gpu``) or a device this machine lacks, before any work starts."""
    import torch

    text = str(name).strip()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"{where} config: device={text!r} is not a device name; expected cpu, cuda, cuda:<index>, "
                         "mps or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{where} config: device={text!r} but CUDA is not available on this machine; use "
                             "device=cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{where} config: device={text!r} but this machine has {count} CUDA device(s) "
                             f"(cuda:0 to cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where} config: device={text!r} but MPS is not available on this machine; use device=cpu "
                         "(or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{where} config: device={text!r}: only cpu, cuda, mps and auto are supported")
    return text


def _check_common(cfg: DictConfig, where: str) -> None:
    one_name_as_list(cfg)
    for section in ("obs", "data"):  # first: their messages say more (stage 3 has no obs settings)
        _check_known_keys(cfg, section, where)
    check_top_level_keys(cfg, where)
    if cfg.get("device") is not None:
        resolve_device(cfg.device, where)
    obs = cfg.get("obs")
    if obs is not None and not (obs.get("low_dim") or obs.get("rgb")):
        raise ValueError(f"{where} config: obs.low_dim={obs.get('low_dim')!r} and obs.rgb={obs.get('rgb')!r}; "
                         "expected at least one observation part, e.g. obs.low_dim=[proprio,object]")
    check_section(cfg, "obs", {"num_tasks": AT_LEAST_0, "min_std": NON_NEGATIVE}, where)
    check_section(cfg, None, {"seed": AT_LEAST_0}, where)
    check_section(cfg, "algo", ALGO_CHECKS, where)
    algo = cfg.get("algo")
    if algo is not None and algo.get("name") == "dt":
        if algo.get("reward_scale") is not None and float(algo.reward_scale) == 0:
            raise ValueError(f"{where} config: algo.reward_scale=0 makes every return-to-go 0, so the Decision "
                             "Transformer cannot condition on the return it is given; expected a nonzero number "
                             "(e.g. 0.001 for returns in the thousands)")
        embed, heads = algo.get("embed_dim"), algo.get("num_heads")
        if embed is not None and heads is not None and int(embed) % int(heads):
            raise ValueError(f"{where} config: algo.embed_dim={embed} is not divisible by algo.num_heads={heads} "
                             "(each attention head takes embed_dim / num_heads units)")
    if algo is not None and algo.get("actor_bc_filter") == "success" and float(algo.get("actor_bc_weight") or 0) > 0:
        if algo.get("sparse_reward") is False:
            raise ValueError(f"{where} config: algo.actor_bc_filter=success with algo.sparse_reward=false; the filter "
                             "reads success from the sparse {0, 1} reward's returns-to-go: set "
                             "algo.actor_bc_filter=none")
        if algo.get("discount") is not None and float(algo.discount) >= 1:
            raise ValueError(f"{where} config: algo.actor_bc_filter=success with algo.discount={algo.discount}; the "
                             "filter compares returns-to-go with the never-succeeds value reward_bias / (1 - "
                             "discount): set a discount < 1 or algo.actor_bc_filter=none")


def check_max_demos(cfg: DictConfig, keys: Sequence[str], where: str) -> None:
    """Each of ``keys`` (how many demos to keep) is null or an integer >= 1: a negative one sliced demos off the end."""
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not (_is_int(value) and int(value) >= 1):
            raise ValueError(f"{where} config: {key}={value!r}; expected an integer >= 1 (the first demos kept) or "
                             "null (all)")


def check_action_bounds(cfg: DictConfig, where: str) -> None:
    """``data.action_bounds`` is null or a box ``{low: [...], high: [...]}`` (checked before any conversion or
    collection; its size against the data's actions is checked once the data is read)."""
    from robopretrain.envs.action_units import declared_bounds

    value = OmegaConf.select(cfg, "data.action_bounds", default=None)
    try:
        declared_bounds(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    except ValueError as exc:
        raise ValueError(f"{where} config: {exc}") from None


def validate_offline_config(cfg: DictConfig) -> None:
    """Stage 2 (``configs/robopretrain.yaml``): raise ``ValueError`` naming the first key out of range."""
    _check_common(cfg, "robopretrain")
    checks = {**TRAIN_CHECKS, "steps": AT_LEAST_1}  # 0 steps: no checkpoint
    targets = OmegaConf.select(cfg, "train.eval_targets", default=None)
    checks["eval_episodes"] = AT_LEAST_0 if targets is not None and len(targets) == 0 else \
        (AT_LEAST_1[0], "an integer >= 1 (no evaluation: train.eval_targets=[])")  # 0 episodes on no target: fine
    check_section(cfg, "train", checks, "robopretrain")
    check_section(cfg, "encoder", ENCODER_CHECKS, "robopretrain")
    check_max_demos(cfg, ("data.max_demos", "data.mix.max_demos"), "robopretrain")
    check_action_bounds(cfg, "robopretrain")
    dt = OmegaConf.select(cfg, "algo.name", default=None) == "dt"
    for key in ("data.storage", "data.mix.storage"):
        storage = OmegaConf.select(cfg, key, default=None)
        if storage is not None and storage not in ("auto", "memory", "disk"):
            raise ValueError(f"robopretrain config: {key}={storage!r}; expected one of auto, memory, disk")
        if storage == "disk" and dt:  # refused before the data are converted or indexed for nothing
            raise ValueError(f"robopretrain config: {key}=disk; algo=dt samples K-step windows from data held in "
                             "memory: set it to memory (or auto, which reads the Decision Transformer's data into "
                             "memory)")
    fraction = OmegaConf.select(cfg, "data.mix.fraction", default=None)
    if fraction is not None and not (_is_number(fraction) and 0.0 <= float(fraction) <= 1.0):
        raise ValueError(f"robopretrain config: data.mix.fraction={fraction!r}; expected a number in [0, 1] (the "
                         "share of each batch drawn from data.mix.path)")


def validate_online_config(cfg: DictConfig) -> None:
    """Stage 3 (``configs/finetune.yaml``): raise ``ValueError`` naming the first key out of range."""
    _check_common(cfg, "finetune")
    check_section(cfg, "online", ONLINE_CHECKS, "finetune")
    check_max_demos(cfg, ("data.max_demos",), "finetune")
    check_action_bounds(cfg, "finetune")
    for section, checks in TRANSFER_CHECKS.items():
        check_section(cfg, section, checks, "finetune")


def validate_objective_options(cfg: DictConfig, where: str = "video_pretrain") -> None:
    """Stage 1 (``configs/video_pretrain.yaml``): raise ``ValueError`` naming the first ``objective.options`` key of
    the chosen objective out of range (:data:`OBJECTIVE_CHECKS`; e.g. ``objective.options.gamma=1.0``)."""
    checks = OBJECTIVE_CHECKS.get(str(OmegaConf.select(cfg, "objective.name", default="")))
    if checks:
        check_section(cfg, "objective.options", checks, where)


def validate_reward_model_config(cfg: DictConfig) -> None:
    """:mod:`robopretrain.reward_model` (``configs/reward_model.yaml``): raise ``ValueError`` naming keys the config
    does not define (``+model.stpes=5``, ``+relabel.normalise=standard``, ``+algo=iql``: ignored, they would leave
    the user believing a setting took effect) and the first shared key out of range (its own settings' ranges are
    checked by :func:`robopretrain.reward_model.run`)."""
    _check_common(cfg, "reward_model")
    check_action_bounds(cfg, "reward_model")
