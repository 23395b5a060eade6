"""The target-domain data a transfer method may use (:class:`finetune.transfer.gap.Gap`): transitions for DARC,
unlabeled frames for DANN, collected once per run by the agent's stochastic policy in the gap's target settings and
cached in the run folder, so a resumed run uses the same data."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopretrain.collector import VectorCollector
from robopretrain.data.keys import ACTIONS, NEXT_OBS, OBS, REWARDS
from robopretrain.envs.target import Target
from robopretrain.evaluation import agent_env_factory

log = logging.getLogger(__name__)

REQUEST_KEY = "request"  # in a cached .npz: the JSON of what it was collected for
# a target's fields that do not change the transitions its env gives (left out of the request)
NOT_COLLECTED = ("demos", "probe_step")
TARGET_SEED_OFFSET = 7_919_000  # target-domain episodes use seeds apart from the training episodes' (collector seed)


def collect_transitions(agent: Any, target: Target, randomization: Any, count: int, *, seed: int) -> dict[str, Any]:
    """``count`` transitions of whole episodes (the last one cut) of ``agent``'s stochastic policy on ``target``
    under ``randomization``: ``{observations, next_observations: {part: (count, ...)}, actions (count, A),
    rewards (count,)}`` as the agent stores observations (:meth:`Agent.prepare`). Raises ``ValueError`` if
    ``count < 1``."""
    if int(count) < 1:
        raise ValueError(f"target data: count={count}; expected >= 1 (the gap's target_frames / target_transitions)")
    collector = VectorCollector(agent_env_factory(agent, target, randomization), 1,
                                convert=agent.prepare, seed=int(seed) + TARGET_SEED_OFFSET, asynchronous=False)
    episodes, total, stack = [], 0, contextlib.ExitStack()
    try:  # the policy's samples from a forked torch RNG: the run's own random draws stay as without target data
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.manual_seed(int(seed) + TARGET_SEED_OFFSET)
        collector.start(0)
        while total < count:
            for ep in collector.step(lambda obs: agent.act(obs, deterministic=False), budget=1).episodes:
                episodes.append(ep)
                total += ep.length
    finally:
        collector.close()
        stack.close()
    cut = lambda tree: {k: np.asarray(v)[:count] for k, v in tree.items()}  # noqa: E731
    return {OBS: cut(tree_stack_cat([e.observations for e in episodes])),
            NEXT_OBS: cut(tree_stack_cat([e.next_observations for e in episodes])),
            ACTIONS: np.concatenate([e.actions for e in episodes])[:count],
            REWARDS: np.concatenate([e.rewards for e in episodes])[:count]}


class _Undescribed(Exception):
    """A value of a request whose text names a memory address (a function, a lock): not comparable between runs."""


def described_target(target: Any) -> Any:
    """The fields of ``target`` that decide the transitions its env gives (all but :data:`NOT_COLLECTED`), read
    without copying (``dataclasses.asdict`` deep-copied the env's constructor arguments: a lock could not be)."""
    if not dataclasses.is_dataclass(target):
        return getattr(target, "name", None)
    return {f.name: getattr(target, f.name) for f in dataclasses.fields(target) if f.name not in NOT_COLLECTED}


def _described(value: Any) -> Any:
    """JSON for what ``json`` cannot write itself: an array by its content's hash (its text elides the middle of
    large ones: two arrays read as one), anything else by its text, unless that names a memory address."""
    if isinstance(value, (set, frozenset)):  # (its text's order changes with the hash seed)
        return sorted(json.dumps(v, sort_keys=True, default=_described) for v in value)
    if isinstance(value, np.ndarray) and value.dtype == object:  # (its bytes are pointers)
        return {"objects": json.dumps(value.tolist(), sort_keys=True, default=_described), "shape": list(value.shape)}
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"array": hashlib.sha256(data.tobytes()).hexdigest(), "shape": list(data.shape),
                "dtype": str(data.dtype)}
    text = repr(value)
    if re.search(r" at 0x[0-9a-fA-F]+", text):
        raise _Undescribed(text)
    return text


def tree_stack_cat(parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate observation dicts along their first axis."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def cached_target_data(path: Path, agent: Any, target: Target, randomization: Any, count: int, *,
                       seed: int) -> dict[str, Any]:
    """:func:`collect_transitions`, read from ``path`` (``.npz``) when a previous attempt of the run saved it there
    for the same request (target, randomization, count, seed: stored in the file); collected again otherwise (a
    rerun in the same folder with another gap or count got the old data). A file written before the request was
    stored is reused with a warning; an unreadable one is collected again. The request includes the agent's action
    units and observation layout (parts and shapes), and the target's fields that decide its env's transitions (its
    env, constructor arguments, time limit, ...: :func:`described_target`; a run killed before its first checkpoint
    and rerun with the target's ``env_kwargs`` changed reused data of the old env, a new user's finding)."""
    units = getattr(agent, "action_normalization", None)  # transitions collected in other units are other data
    spec = getattr(agent, "spec", None)  # and observations of other parts or shapes too
    layout = {"low_dim": [list(p) for p in spec.low_dim], "rgb": [[k, list(v)] for k, v in spec.rgb]} if spec else {}
    try:
        request = json.dumps({"target": described_target(target), "randomization": randomization,
                              "count": int(count), "seed": int(seed),
                              **({"action_units": units.to_dict()} if units is not None else {}),
                              **({"observations": layout} if layout else {})}, sort_keys=True, default=_described)
    except _Undescribed as exc:  # an object whose text changes from run to run: no saved data can be its
        log.warning("target data: the request holds %s, which cannot be compared between runs: collecting again", exc)
        request = f"undescribed {id(exc)} {np.random.default_rng().integers(2**62)}"
    flat: dict[str, Any] | None = None
    if path.is_file():
        try:
            with np.load(path) as z:
                flat = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # cut short or overwritten by hand
            log.warning("target data: %s cannot be read (%s): collecting again", path, err)
    if flat is not None:
        saved = str(flat.pop(REQUEST_KEY)) if REQUEST_KEY in flat else None
        if saved is None:
            log.warning("target data: %s does not say what it was collected for; reused as is", path)
        elif saved != request:
            log.warning("target data: %s was collected for %s, not %s: collecting again", path, saved, request)
            flat = None
        if flat is not None:
            log.info("target data: %d transitions from %s", len(flat[ACTIONS]), path)
    if flat is None:
        data = collect_transitions(agent, target, randomization, count, seed=seed)
        flat = {ACTIONS: data[ACTIONS], REWARDS: data[REWARDS],
                **{f"{OBS}/{k}": v for k, v in data[OBS].items()},
                **{f"{NEXT_OBS}/{k}": v for k, v in data[NEXT_OBS].items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **flat, **{REQUEST_KEY: np.array(request)})
        tmp.replace(path)
        log.info("target data: collected %d transitions under %s into %s", count, randomization, path)
    out: dict[str, Any] = {ACTIONS: flat[ACTIONS], REWARDS: flat[REWARDS], OBS: {}, NEXT_OBS: {}}
    for key, value in flat.items():
        field, _, part = key.partition("/")
        if part:
            out[field][part] = value
    return out


__all__ = ["TARGET_SEED_OFFSET", "cached_target_data", "collect_transitions"]
