"""Type checks of the collectors' plain-YAML configs (``configs/collect.yaml``, ``configs/collect_videos.yaml``).

Hydra reads ``episodes_per_task=abc`` as the string ``"abc"`` and ``overwrite=no`` as the string ``"no"``; without
these checks the first reaches ``int()`` (whose message does not name the setting) and the second is ``bool("no")``,
which is True: a file the user meant to keep would be replaced. :func:`check_value_types` refuses both with one line
naming the setting. (``sim_envs`` imports nothing of the toolkit's, so it has its own small checks here.)
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value_types(cfg: Mapping[str, Any], config: str, ints: Sequence[str] = (), numbers: Sequence[str] = (),
                      flags: Sequence[str] = (), optional: Sequence[str] = ()) -> None:
    """Refuse a setting of the wrong type, naming it.

    Args:
        cfg: the config (dotted keys reach nested settings, e.g. ``kinds.noisy.noise``).
        config: the config's name for the message (``collect``).
        ints: settings that must be integers; ``numbers``: integers or floats; ``flags``: ``true`` or ``false``.
        optional: those of the above that may also be null.

    Raises:
        ValueError: ``"<config> config: <key>='abc'; expected an integer"`` (or ``a number``, ``true or false``).
    """
    kinds = ((ints, _is_int, "an integer"), (numbers, _is_number, "a number"),
             (flags, lambda v: isinstance(v, bool), "true or false"))
    for keys, ok, expected in kinds:
        for key in keys:
            value: Any = cfg
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) or hasattr(value, "get") else None
            if value is None and key in optional:
                continue
            if not ok(value):
                extra = " or null" if key in optional else ""
                raise ValueError(f"{config} config: {key}={value!r}; expected {expected}{extra}")
