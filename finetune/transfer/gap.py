"""A sim-to-"real" gap: the source settings an agent trains in, the target settings it is judged in, and how much
target data a method may use.

Both sides are ``randomization`` arguments of a sim_envs env (:mod:`sim_envs.randomization`: a level name or a
mapping of :class:`~sim_envs.randomization.RandomizationConfig` fields) or, on any env, ``{env_kwargs: {...}}``: the
constructor arguments of that side (a gym env's friction or gain, added to the target's own ``env_kwargs``; see
:func:`robopretrain.envs.target.split_env_kwargs`), so the same gap drives training
(``finetune.train gap=friction_low``: training episodes use ``source``, evaluation episodes ``target``), the transfer
methods (:mod:`finetune.transfer.dann` renders ``target_frames`` unlabeled target frames; :mod:`finetune.transfer.darc`
collects ``target_transitions`` target transitions) and evaluation (``robopretrain.evaluate gap=friction_low`` adds
the conditions ``gap/source`` and ``gap/target``). Presets: ``configs/gap/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NO_GAP = "none"
GAP_KINDS = ("none", "physics", "visual")


def _randomization(value: Any, where: str) -> Any:
    """A plain randomization argument (``none`` for an unset one), its ``env_kwargs`` kept beside the sim_envs part
    (:func:`~robopretrain.envs.target.split_env_kwargs`); a bad one raises ``ValueError`` naming ``where``."""
    from robopretrain.envs.target import split_env_kwargs
    from sim_envs.env import as_randomization

    if value is None:
        return "none"
    if isinstance(value, Mapping):
        value = {k: v for k, v in dict(value).items() if v is not None}
    try:
        rest, _ = split_env_kwargs(value)
        as_randomization(rest).levels()
    except (TypeError, ValueError) as err:
        raise ValueError(f"gap config: {where}={value!r} is not a randomization setting ({err}); on an env other "
                         "than sim_envs' give {env_kwargs: {...}}, the constructor arguments of that side") from None
    return value


@dataclass
class Gap:
    """The ``gap`` config group (``configs/gap/<name>.yaml``).

    ``source`` / ``target``: randomization of the training (source) and of the judged (target) episodes.
    ``target_frames``: unlabeled target-domain frames a method may render (DANN); ``target_transitions``: target
    transitions ``(s, a, r, s')`` a method may collect (DARC). Zero: the method may not use any.
    """

    name: str = NO_GAP
    kind: str = "none"  # physics | visual (distractors count) | none: what differs (the target draws a factor of it)
    source: Any = "none"
    target: Any = "none"
    target_frames: int = 0
    target_transitions: int = 0

    def __post_init__(self) -> None:
        if self.kind not in GAP_KINDS:
            raise ValueError(f"gap config: kind={self.kind!r}; expected one of {list(GAP_KINDS)}")
        for key in ("target_frames", "target_transitions"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"gap config: {key}={value!r}; expected an integer >= 0")
        self.source = _randomization(self.source, "source")
        self.target = _randomization(self.target, "target")
        if self.enabled and self.kind != "none" and not self.any_env:  # a label only, but one that reports and
            from robopretrain.envs.target import split_env_kwargs  # readers trust (what env_kwargs change: the user's)
            from sim_envs.env import as_randomization
            from sim_envs.randomization import PHYSICS_FACTORS, VISUAL_FACTORS

            levels = as_randomization(split_env_kwargs(self.target)[0]).levels()
            # distractors change what the camera sees (extra objects): a visual gap
            factors = PHYSICS_FACTORS if self.kind == "physics" else (*VISUAL_FACTORS, "distractors")
            if not any(levels.get(f, "none") != "none" for f in factors):
                drawn = sorted(f for f, level in levels.items() if level != "none")
                raise ValueError(f"gap config: kind={self.kind} but the target draws no {self.kind} factor "
                                 f"({', '.join(factors)}); it draws {drawn or 'nothing'}: set kind to what the target "
                                 "changes (physics, visual or none)")
        if not self.enabled:  # the name switches a gap on; settings under name none would be dropped silently
            set_ = [f"{k}={getattr(self, k)!r}" for k in ("kind", "source", "target", "target_frames",
                                                           "target_transitions")
                    if getattr(self, k) not in ("none", 0)]
            if set_:
                raise ValueError(f"gap config: name=none (no gap) but {', '.join(set_)}; a gap needs a name (e.g. "
                                 "gap=friction_low, or gap.name=my_gap), or leave gap=none with nothing set")

    @property
    def sets_env_kwargs(self) -> bool:
        """Whether a side sets constructor arguments (``{env_kwargs: {...}}``)."""
        from robopretrain.envs.target import split_env_kwargs

        return any(split_env_kwargs(side)[1] for side in (self.source, self.target))

    @property
    def any_env(self) -> bool:
        """Whether the gap applies to any env: its sides set constructor arguments and no sim_envs randomization."""
        from robopretrain.envs.target import is_nominal

        return self.sets_env_kwargs and all(is_nominal(side) for side in (self.source, self.target))

    @property
    def enabled(self) -> bool:
        """Whether a gap is set (``gap=none`` is the default: stage 3 and evaluate run as without one)."""
        return self.name != NO_GAP

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> Gap:
        """From the ``gap`` config node (None: no gap); unknown keys raise ``ValueError``."""
        d = dict(d or {})
        fields = list(cls.__dataclass_fields__)
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown gap config key(s) {unknown}; valid keys: {sorted(fields)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


__all__ = ["GAP_KINDS", "Gap", "NO_GAP"]
