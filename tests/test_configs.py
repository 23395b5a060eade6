"""The algorithm configs (``configs/algo/*.yaml``) list every field of their dataclass with the dataclass's default:
one set of defaults (STYLE.md rule 3), so a YAML value and the code can never drift apart silently."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from robopretrain.algos import AGENT_NAMES, make_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "algo"


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isinf(a) and math.isinf(b):
        return a == b
    return (tuple(a) if isinstance(a, list) else a) == b


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_algo_yaml_equals_the_dataclass_defaults(name: str) -> None:
    yaml = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert yaml.pop("name") == name
    defaults = make_config(name)
    fields = {f.name for f in dataclasses.fields(defaults)}
    assert set(yaml) == fields, f"{name}.yaml keys differ from the dataclass fields: {set(yaml) ^ fields}"
    differ = {k: (v, getattr(defaults, k)) for k, v in yaml.items() if not _same(v, getattr(defaults, k))}
    assert not differ, f"{name}.yaml differs from the dataclass defaults: {differ}"


def test_one_name_given_alone_is_a_list_of_one_and_devices_are_checked() -> None:
    """obs.low_dim=joint_pos means [joint_pos] (list() of the string would read its letters: 'observation key
    'j' not found'); a device name torch does not know, or one this machine lacks, is one ValueError."""
    import torch

    from robopretrain.config_checks import one_name_as_list, resolve_device

    cfg = OmegaConf.create({"obs": {"low_dim": "joint_pos", "rgb": []}, "select": "nominal", "targets": ["A"],
                            "data": {"tasks": None}})
    OmegaConf.set_struct(cfg, True)
    one_name_as_list(cfg)
    assert cfg.obs.low_dim == ["joint_pos"] and cfg.select == ["nominal"] and cfg.targets == ["A"]
    assert cfg.obs.rgb == [] and cfg.data.tasks is None
    assert resolve_device("cpu", "x") == "cpu"
    assert resolve_device("auto", "x") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"x config: device='gpu' is not a device name"):
        resolve_device("gpu", "x")
    with pytest.raises(ValueError, match=r"x config: device='cuda:99' but"):
        resolve_device("cuda:99", "x")
    with pytest.raises(ValueError, match=r"only cpu, cuda, mps and auto"):
        resolve_device("meta", "x")


@pytest.mark.parametrize("config_name, keys", [("robopretrain", ["data.obs_map", "data.mix.obs_map"]),
                                               ("finetune", ["data.obs_map"])])
def test_an_obs_map_is_given_on_the_command_line_as_its_config_comment_shows(config_name, keys) -> None:
    """``data.obs_map={proprio: ee_pos}`` failed ("Could not override 'data.obs_map'", Hydra's struct mode refuses new
    keys in an empty mapping): the default is null, so the plain and the ``+`` forms both set it; a run fingerprinted
    with the old default {} resumes."""
    from hydra import compose, initialize_config_dir

    from robopretrain import run_fingerprint

    with initialize_config_dir(str(CONFIGS.parent), version_base="1.3"):
        for form in ("", "+"):
            cfg = compose(config_name, overrides=[f"{form}{k}={{proprio: ee_pos}}" for k in keys])
            for key in keys:
                assert OmegaConf.select(cfg, key) == {"proprio": "ee_pos"}, (form, key)
        default = compose(config_name)
    assert all(OmegaConf.select(default, k) is None for k in keys)
    now = run_fingerprint.fingerprint(default, {})
    before = {**now, "config": {**now["config"], **{k: {} for k in keys}}}
    assert run_fingerprint.differences(before, now) == []
    assert run_fingerprint.differences({**now, "config": {**now["config"], keys[0]: {"proprio": "x"}}}, now) != []
