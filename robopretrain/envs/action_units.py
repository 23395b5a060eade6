"""The units of an agent's actions: the env's own, or rescaled per dimension to ``[-1, 1]``.

The toolkit's policies act in ``[-1, 1]`` (tanh). A converted dataset whose source actions leave that range is
rescaled per dimension by its min/max (:func:`robopretrain.data.episodes.write_robomimic`) and says so in
``env_args["action_normalization"] = {"low": [...], "high": [...]}``. An agent trained on such data acts in the
rescaled units (the agent records them in its checkpoint), so every env it acts in maps them back
(:class:`robopretrain.envs.target.AgentActionUnits`, from the target's ``action_normalization``, which
:func:`robopretrain.evaluation.agent_target` sets from the agent), and every dataset it trains on is re-expressed in
its units when loaded (:func:`reexpress`: stage 2's mixed-in data, stage 3's target demos).

The two maps, per dimension ``i`` (``high_i == low_i`` is a constant dimension: the file holds 0, the env gets
``low_i``)::

    to the file / agent:  a'_i = 2 (a_i - low_i) / (high_i - low_i) - 1
    to the env:           a_i  = low_i + (a'_i + 1) (high_i - low_i) / 2

Torch-free (imported by env factories in spawned workers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ENV_ARGS_KEY = "action_normalization"
FORMULA = "a_file = 2 * (a - low) / (high - low) - 1 (0 where high == low)"


@dataclass(frozen=True)
class ActionNormalization:
    """Per-dimension bounds ``low``, ``high`` (env units) of the map between env actions and ``[-1, 1]``.

    Raises ``ValueError`` when the two differ in length, are empty, are not finite, or ``high < low`` anywhere.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            low, high = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
        except (TypeError, ValueError):  # numpy's "could not convert string to float: 'b'" named neither
            raise ValueError(f"action_normalization: low and high must be lists of numbers, got low={self.low!r}, "
                             f"high={self.high!r}") from None
        if low.ndim != 1 or low.shape != high.shape or low.size == 0:
            raise ValueError(f"action_normalization: low and high must be equal-length lists, got {len(self.low)} "
                             f"and {len(self.high)} values")
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError("action_normalization: low and high must be finite")
        if np.any(high < low):
            raise ValueError(f"action_normalization: high < low in dimension(s) {np.flatnonzero(high < low).tolist()}")
        object.__setattr__(self, "low", tuple(float(v) for v in low))
        object.__setattr__(self, "high", tuple(float(v) for v in high))

    @property
    def dim(self) -> int:
        return len(self.low)

    def to_env(self, action: np.ndarray) -> np.ndarray:
        """``(..., dim)`` actions in ``[-1, 1]`` -> env units (float32)."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        return (low + (np.asarray(action, dtype=np.float64) + 1.0) * (high - low) / 2.0).astype(np.float32)

    def to_agent(self, action: np.ndarray) -> np.ndarray:
        """``(..., dim)`` env actions -> ``[-1, 1]`` (0 in constant dimensions; float32)."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        span = high - low
        scaled = 2.0 * (np.asarray(action, dtype=np.float64) - low) / np.where(span > 0, span, 1.0) - 1.0
        return np.where(span > 0, scaled, 0.0).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The ``env_args`` / checkpoint form: ``{"low": [...], "high": [...], "formula": ...}``."""
        return {"low": list(self.low), "high": list(self.high), "formula": FORMULA}

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | ActionNormalization | None) -> ActionNormalization | None:
        """None for None; a mapping with ``low`` and ``high`` (other keys ignored) as an ActionNormalization."""
        if value is None or isinstance(value, ActionNormalization):
            return value
        if not isinstance(value, Mapping) or "low" not in value or "high" not in value:
            raise ValueError(f"action_normalization must be a mapping with low and high lists, got {value!r}")
        try:
            return cls(tuple(value["low"]), tuple(value["high"]))
        except TypeError:
            raise ValueError(f"action_normalization: low and high must be lists of numbers, got low={value['low']!r}, "
                             f"high={value['high']!r}") from None

    def same(self, other: ActionNormalization | None) -> bool:
        """Equal bounds (to float32 precision)."""
        return other is not None and other.dim == self.dim and bool(
            np.allclose(self.low, other.low, rtol=1e-6, atol=1e-6)
            and np.allclose(self.high, other.high, rtol=1e-6, atol=1e-6))


def auto_bounds(low: np.ndarray, high: np.ndarray) -> ActionNormalization | None:
    """The units to rescale actions whose per-dimension min / max over a dataset are ``low`` / ``high``: a dimension
    that leaves ``[-1, 1]`` maps from its min / max, one inside keeps its values (bounds -1, 1: not narrowed to the
    range the data happened to cover, a constant one not frozen). None when every dimension is inside."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    inside = (low >= -1.0 - 1e-6) & (high <= 1.0 + 1e-6)
    if inside.all():
        return None
    return ActionNormalization(tuple(np.where(inside, -1.0, low).tolist()),
                               tuple(np.where(inside, 1.0, high).tolist()))


def warn_constant_dimensions(units: ActionNormalization, where: str) -> bool:
    """Warn (and return True) when ``units`` fix a dimension (``low == high``, a value constant outside [-1, 1]): an
    agent in these units always gives that value there."""
    fixed = np.flatnonzero(np.asarray(units.high) <= np.asarray(units.low))
    if fixed.size:
        log.warning("%s: action dimension(s) %s are constant outside [-1, 1] (%s): an agent trained on this data "
                    "always gives that value there", where, fixed.tolist(), [units.low[i] for i in fixed])
    return bool(fixed.size)


INDEX_VALUES_MOST = 32  # more distinct whole values than this are taken for a continuous action


def add_whole_values(values: set[float] | None, actions: np.ndarray,
                     most: int = INDEX_VALUES_MOST) -> set[float] | None:
    """``values`` with the distinct values of ``actions`` added while every action seen is a finite whole number and
    there are at most ``most`` of them; None once one is not (and for ``values`` None): what
    :func:`warn_index_actions` reads, gathered demo by demo."""
    if values is None:
        return None
    a = np.asarray(actions, dtype=np.float64)
    if not np.isfinite(a).all() or not np.array_equal(a, np.round(a)):
        return None
    values.update(np.unique(a).tolist())
    return values if len(values) <= most else None


def warn_index_actions(where: str, values: set[float] | None) -> bool:
    """Warn (and return True) when ``values`` (:func:`add_whole_values` over every action of a dataset) are a few whole
    numbers, some outside ``[-1, 1]``: the indices of a discrete action space (``Discrete(5)`` stored as ``(N, 1)``),
    which the agents would learn as one continuous dimension (they act in a continuous Box)."""
    if not values or max(abs(v) for v in values) <= 1:
        return False
    shown = sorted(values)
    log.warning("%s: every action is a whole number (%d distinct values: %s%s): the indices of a discrete action "
                "space? The agents act in a continuous Box and would learn the indices as one continuous action; map "
                "each index to a continuous action in the data and the env (an ActionWrapper), as for a Discrete env",
                where, len(shown), ", ".join(f"{v:g}" for v in shown[:8]), ", ..." if len(shown) > 8 else "")
    return True


def two_valued_dimensions(actions: np.ndarray, band: float = 0.25) -> list[int]:
    """The action dimensions whose values in ``actions`` (``(N, A)``) all lie near one of its two ends, none between:
    within ``band`` times its span (largest minus smallest value) of its smallest or its largest value, so the middle
    half of the span is empty at the default. A gripper commanded open or closed, exactly (+-1) or with a little
    noise; a dimension with any value in between is not (a span below 1e-6 is a constant, not two values)."""
    a = np.asarray(actions, dtype=np.float64)
    if not a.size:
        return []
    a = a.reshape(len(a), -1)
    low, high = a.min(axis=0), a.max(axis=0)
    near = float(band) * (high - low)
    two = (high - low > 1e-6) & ((a - low <= near) | (high - a <= near)).all(axis=0)
    return np.flatnonzero(two).tolist()


def of_env_args(env_args: Mapping[str, Any]) -> ActionNormalization | None:
    """The normalization a data file's ``env_args`` record (None: its actions are in the env's units)."""
    return ActionNormalization.from_mapping(env_args.get(ENV_ARGS_KEY))


def same_units(first: ActionNormalization | None, second: ActionNormalization | None) -> bool:
    """Whether actions in ``first`` and in ``second`` mean the same env actions (both None, or equal bounds)."""
    return (first is None and second is None) or (first is not None and first.same(second))


def describe(norm: ActionNormalization | None) -> str:
    """One phrase for messages: the env's units, or the bounds of the rescaling."""
    if norm is None:
        return "env units (no normalization)"
    return f"[-1, 1] from low={list(norm.low)}, high={list(norm.high)}"


def reexpress(actions: np.ndarray, file_units: ActionNormalization | None, agent_units: ActionNormalization | None,
              where: str, *, into: str = "the agent's", quiet: bool = False) -> np.ndarray:
    """``(N, dim)`` actions of a file in ``file_units`` re-expressed in the agent's ``agent_units`` (float32).

    Through env units: ``a_env = file.to_env(a)`` (or ``a`` itself when the file has no normalization), then
    ``agent.to_agent(a_env)``. Unchanged when both are the same. Values the agent's ``[-1, 1]`` cannot hold (the file
    covers a wider range than the data that fixed the agent's units) are clipped to ``[-1, 1]``, with a warning that
    gives the clipped fraction; a dimension constant in the agent's units (0 whatever the file holds) is warned
    about when the file's values there differ. Raises ``ValueError`` when a normalization's size is not the actions'
    or the actions are not ``(N, dim)``. ``into``: whose units ``agent_units`` are, for the messages (a reward
    model's); ``quiet``: no info line (a caller that re-expresses every episode's actions).
    """
    actions = np.asarray(actions, dtype=np.float32)
    for units, whose in ((file_units, where), (agent_units, into.removesuffix("'s"))):
        if units is not None and actions.ndim != 2:  # numpy broadcast them, or said so naming neither
            raise ValueError(f"{where}: actions of shape {actions.shape}; expected (N, {units.dim})")
        if units is not None and units.dim != actions.shape[1]:
            raise ValueError(f"{whose}: action_normalization has {units.dim} dims, the actions {actions.shape[1]}")
    if same_units(file_units, agent_units):
        return actions
    env = actions if file_units is None else file_units.to_env(actions)
    out = env if agent_units is None else agent_units.to_agent(env)
    if agent_units is not None:
        fixed = np.asarray(agent_units.high) <= np.asarray(agent_units.low)  # the data that set the units never moved
        lost = fixed & np.any(np.abs(env - np.asarray(agent_units.low)) > 1e-5, axis=tuple(range(env.ndim - 1)))
        if lost.any():
            dims = np.flatnonzero(lost)
            varies = [bool(np.ptp(env[..., i]) > 1e-5) for i in dims]
            held = [f"{i}: {'varies' if v else f'is {float(env.reshape(-1, env.shape[-1])[0, i]):g}'}"
                    for i, v in zip(dims.tolist(), varies)]
            log.warning("%s: action dimension(s) %s are constant in %s units (the data that set them never "
                        "moved them; the env always gets %s there) and hold other values here (%s): those values "
                        "are lost", where, dims.tolist(), into, [agent_units.low[i] for i in dims], ", ".join(held))
    outside = np.abs(out) > 1.0 + 1e-5
    if outside.any():
        log.warning("%s: %.2f%% of the action values lie outside %s [-1, 1] once re-expressed in its units "
                    "(%s; the file's: %s) and are clipped", where, 100.0 * outside.mean(), into,
                    describe(agent_units), describe(file_units))
    if not quiet:
        log.info("%s: actions re-expressed from %s to %s %s", where, describe(file_units), into, describe(agent_units))
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def declared_bounds(value: Any, setting: str = "data.action_bounds") -> ActionNormalization | None:
    """A user's action box setting (``{low: [...], high: [...]}``, e.g. ``data.action_bounds``) as an
    ActionNormalization (None for None). Raises ``ValueError`` naming ``setting`` for anything else: not a mapping of
    exactly ``low`` and ``high``, lists that are empty, of two lengths, not finite numbers, or a high not above its
    low (a box with no width maps every action to one point)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"low", "high"}:
        raise ValueError(f"{setting}={value!r}: expected a mapping of exactly low and high lists, e.g. "
                         f"'{setting}={{low: [-0.05, -0.05], high: [0.05, 0.05]}}' (quoted on a command line)")
    try:
        units = ActionNormalization.from_mapping(value)
    except ValueError as exc:
        raise ValueError(f"{setting}: {str(exc).removeprefix('action_normalization: ')}") from None
    assert units is not None
    flat = np.flatnonzero(np.asarray(units.high) <= np.asarray(units.low))
    if flat.size:
        raise ValueError(f"{setting}: high must be above low in every dimension; it is not in dimension(s) "
                         f"{flat.tolist()}")
    return units


__all__ = ["ENV_ARGS_KEY", "FORMULA", "ActionNormalization", "auto_bounds", "declared_bounds", "describe",
           "of_env_args", "reexpress", "same_units", "warn_constant_dimensions", "add_whole_values",
           "warn_index_actions"]
