"""Offline/online RL agents: CQL and Cal-QL (:mod:`.cql`), IQL (:mod:`.iql`), BC (:mod:`.bc`), TD3+BC (:mod:`.td3_bc`),
AWAC (:mod:`.awac`), ReBRAC (:mod:`.rebrac`), BCQ (:mod:`.bcq`), POR (:mod:`.por`), the Decision Transformer
(:mod:`.dt`).

``make_agent(name, obs_dim, act_dim, cfg)`` builds one by name. ``cfg`` is ``None``, the agent's config
dataclass, or a mapping of overrides (a plain dict or an OmegaConf ``DictConfig``); unknown keys raise.
"calql" is CQL with ``use_calql=True`` (REFERENCE.md, Stage 3). Every agent offers
``update(batch) -> dict[str, float]``, ``act(obs, deterministic)``, ``state_dict()`` and
``load_state_dict()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Union

import torch

from robopretrain.algos.awac import AWAC, AWACConfig
from robopretrain.algos.bc import BC, BCConfig
from robopretrain.algos.bcq import BCQ, BCQConfig
from robopretrain.algos.cql import CQL, CQLConfig
from robopretrain.algos.dt import DecisionTransformer, DTConfig
from robopretrain.algos.iql import IQL, IQLConfig
from robopretrain.algos.por import POR, PORConfig
from robopretrain.algos.rebrac import ReBRAC, ReBRACConfig
from robopretrain.algos.td3_bc import TD3BC, TD3BCConfig

Agent = Union[CQL, IQL, BC, TD3BC, AWAC, ReBRAC, BCQ, POR, DecisionTransformer]

_REGISTRY: dict[str, tuple[type, type, dict[str, Any]]] = {
    "cql": (CQL, CQLConfig, {"use_calql": False}),
    "calql": (CQL, CQLConfig, {"use_calql": True}),
    "iql": (IQL, IQLConfig, {}),
    "bc": (BC, BCConfig, {}),
    "td3_bc": (TD3BC, TD3BCConfig, {}),
    "awac": (AWAC, AWACConfig, {}),
    "rebrac": (ReBRAC, ReBRACConfig, {}),
    "bcq": (BCQ, BCQConfig, {}),
    "por": (POR, PORConfig, {}),
    "dt": (DecisionTransformer, DTConfig, {}),
}

AGENT_NAMES = tuple(_REGISTRY)


def _plain(value: Any) -> Any:
    """Lists (also OmegaConf ListConfig) become tuples so they match the dataclass field types."""
    if isinstance(value, (str, bytes)) or isinstance(value, Mapping):
        return value
    try:
        return tuple(_plain(v) for v in value)
    except TypeError:
        return value


def make_config(name: str, cfg: Any = None) -> Any:
    """The config dataclass of agent ``name`` with the registry defaults and ``cfg``'s overrides."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown agent {name!r}; expected one of {list(_REGISTRY)}")
    _, cfg_cls, defaults = _REGISTRY[name]
    if isinstance(cfg, cfg_cls):
        return dataclasses.replace(cfg, **defaults) if defaults else cfg
    overrides = dict(cfg.items()) if cfg is not None else {}
    overrides.pop("name", None)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {name} config key(s) {unknown}; valid keys: {sorted(fields)}")
    return cfg_cls(**{**defaults, **{k: _plain(v) for k, v in overrides.items()}})


def make_agent(name: str, obs_dim: int, act_dim: int, cfg: Any = None, device: str | torch.device = "cpu") -> Agent:
    """Build agent ``name`` (one of :data:`AGENT_NAMES`) for flat states of ``obs_dim`` and ``act_dim`` actions."""
    config = make_config(name, cfg)
    return _REGISTRY[name][0](obs_dim, act_dim, config, device=device)


__all__ = [
    "AGENT_NAMES",
    "AWAC",
    "AWACConfig",
    "BC",
    "BCQ",
    "BCQConfig",
    "BCConfig",
    "CQL",
    "CQLConfig",
    "DTConfig",
    "DecisionTransformer",
    "IQL",
    "IQLConfig",
    "POR",
    "PORConfig",
    "ReBRAC",
    "ReBRACConfig",
    "TD3BC",
    "TD3BCConfig",
    "make_agent",
    "make_config",
]
