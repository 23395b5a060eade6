"""Every algorithm setting that changes a network's shape is kept from the checkpoint when a run continues with new
settings (``robopretrain.agent.NETWORK_KEYS``): found by building each registered algorithm with each integer or
tuple setting changed and comparing parameter shapes, so a new algorithm's new size setting cannot be forgotten
(as BCQ's ``vae_hidden`` and POR's ``guide_hidden`` once were: the rebuilt network had the default size and the
checkpoint failed to load)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from robopretrain.agent import NETWORK_KEYS
from robopretrain.algos import AGENT_NAMES, make_agent, make_config


def _shapes(agent) -> dict[str, tuple]:
    shapes = {}
    for name in dir(agent):
        module = getattr(agent, name, None)
        if isinstance(module, torch.nn.Module):
            shapes.update({f"{name}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})
    return shapes


def _changed(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value + 1
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return tuple(v + 3 for v in value) + (5,)
    return None


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_every_shape_setting_is_a_network_key(name):
    base_cfg = make_config(name)
    base = _shapes(make_agent(name, 6, 2, base_cfg))
    missing = []
    for field in dataclasses.fields(base_cfg):
        new = _changed(getattr(base_cfg, field.name))
        if new is None or field.name in NETWORK_KEYS:
            continue
        try:
            agent = make_agent(name, 6, 2, dataclasses.replace(base_cfg, **{field.name: new}))
        except (ValueError, AssertionError, RuntimeError):
            continue  # a value this algorithm refuses (e.g. heads that must divide the width)
        if _shapes(agent) != base:
            missing.append(field.name)
    assert not missing, f"{name}: settings {missing} change network shapes but are not in NETWORK_KEYS"
