"""One notion of target (STYLE.md rule 2): what env to act in, and how its observations, success and reward map
onto the toolkit's conventions. The same config keys name a target in stages 2 and 3, evaluation and the pipeline.

A :class:`Target` is a task of a *family*:

``sim_envs``   our MuJoCo tabletop tasks (``name`` is the task; randomization and distractors apply);
``metaworld``  Meta-World tasks (``name`` like ``drawer-open-v3``; :mod:`robopretrain.envs.metaworld`, optional
               extra ``metaworld``);
``gym``        any gymnasium env: ``env_id`` is a registered id or ``"module:Class"`` built with ``env_kwargs``.

:func:`make_env` returns a gymnasium env that follows the toolkit's contract whatever the family:

* observations are dicts of named parts in our names (``obs_map`` maps our part name -> the env's key; a
  non-dict observation becomes the part ``observation``), the agent's camera images upright uint8 ``(H, W, 3)``
  (``flip_images`` for envs that render upside down), plus ``task_id`` (the target's slot in the task one-hot); a gym
  env's camera frames are also made channels-last RGB and resized to the agent's image size
  (:mod:`robopretrain.envs.camera_frames`: ``(C, H, W)``, grey ``(H, W)`` / ``(H, W, 1)`` and RGBA frames, any size);
  uint8 parts that are not the agent's cameras (a frame stack, a grid) pass as the env gives them;
* ``info["success"]`` every step, read from ``info[success_key]`` (False on a step whose info lacks it: an env may
  say it only when the task is done; a sparse target's key is checked on a probe step at start instead,
  :func:`robopretrain.build.check_env_fits`, unless ``probe_step: false``);
* reward ``float(success)`` when ``reward: sparse`` (the default: the data contract's sparse success reward), or
  the env's own reward when the target declares ``reward: dense`` (then Cal-QL's sparse all-failure rule is off);
* termination on success when ``terminate_on_success``; truncation at ``max_episode_steps`` (a ``TimeLimit``; a
  gym env with no gymnasium time limit is truncated at its base env's ``max_episode_steps`` (or ``max_path_length``)
  attribute when it states one, else at :data:`UNLIMITED_EPISODE_CAP` steps, with a warning);
* actions in the agent's units: with ``action_normalization`` (``{"low": [...], "high": [...]}``, what a converted
  dataset records when it rescaled its actions, see :mod:`robopretrain.envs.action_units`) the env takes actions in
  ``[-1, 1]`` and maps them to its own units, ``a = low + (a' + 1) (high - low) / 2``, before each step.
  :func:`robopretrain.evaluation.agent_target` sets it from the agent, so an agent trained on rescaled data acts
  in the env's units without the user doing anything. Either way the env gets its actions clipped to its own
  Box (without units, where the Box cuts into the agent's ``[-1, 1]``, e.g. a gripper in ``[0, 1]``:
  :class:`ClipToEnvBox`), since an env need not clip them itself.

The module imports neither torch nor the simulators at import time, so ``functools.partial(make_env, ...)`` is a
cheap picklable factory for spawned worker processes.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import gymnasium as gym
import numpy as np

from robopretrain.data.episodes import flatten_obs
from robopretrain.data.spec import shared_source_key
from robopretrain.envs.action_units import ActionNormalization
from robopretrain.envs.camera_frames import (agent_frame_shape, frame_geometry, image_layout, is_camera,
                                             to_agent_frame)

log = logging.getLogger(__name__)

SIM_ENVS, METAWORLD, GYM = "sim_envs", "metaworld", "gym"
FAMILIES = (SIM_ENVS, METAWORLD, GYM)
REWARDS = ("sparse", "dense")
OBSERVATION = "observation"  # the part name of a non-dict observation
DEFAULT_SUCCESS_KEY = "success"  # a target's success_key unless it names another
METAWORLD_ENTRY = "robopretrain.envs.metaworld:MetaWorldEnv"
# MetaWorldEnv keywords a demo file's env_args carry over to its targets (cameras and image size come from the agent)
METAWORLD_SETTINGS = ("max_episode_steps", "reward", "terminate_on_success", "mesh_cell")
# TabletopEnv keywords a sim_envs target's env_kwargs may set (a test holds this to its signature); the others are
# set by each run or by the target's own fields, and a target's env_kwargs refuses them (why, for each: the value)
SIM_ENVS_KWARGS = ("image_size", "embodiment", "max_distractors", "camera", "video_cameras", "render_mode")
SIM_ENVS_OWNED = {
    "randomization": "each run sets it: `dr` in stages 2 and 3, the factors and levels in evaluate (fixed in a "
                     "target it would replace every evaluation condition, nominal included)",
    "terminate_on_success": "set the target's own terminate_on_success",
    "max_episode_steps": "set the target's own max_episode_steps",
    "render_images": "the agent's cameras decide it",
    "eye_in_hand": "the agent's cameras decide it",
    "task": "the target's name is its task",
}
RANDOMIZATION_KEYS = ("level", "factors", "factor_levels", "num_distractors", "ranges")  # RandomizationConfig's


@dataclass
class Target:
    """A task to act in (see the module docstring)."""

    name: str
    family: str | None = None  # None: sim_envs when ``name`` is a sim_envs task and no env_id is set, else gym
    env_id: str | None = None  # gym: a registered id or "module:Class"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    obs_map: dict[str, str] = field(default_factory=dict)  # our part name -> the env's (and its demo file's) key
    task_id: int | None = None  # slot in the task one-hot; None: the family's own id (sim_envs, metaworld)
    demos: str | None = None  # this target's demonstrations: robomimic HDF5, or another format (converted on use)
    max_episode_steps: int | None = None  # TimeLimit (None: the env's own)
    reward: str = "sparse"  # sparse: float(success) | dense: the env's own reward
    success_key: str = DEFAULT_SUCCESS_KEY  # the info key that says the task is done
    terminate_on_success: bool = True
    flip_images: bool = False  # the env's images are upside down
    action_normalization: dict[str, Any] | None = None  # {low, high}: the env's units of the agent's [-1, 1] actions
    probe_step: bool = True  # a sparse target steps once at start (the agent's zero action) to read success_key;
    # false also spares the pipeline's start (it builds and resets a target outside sim_envs to check its sizes)

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = GYM if self.env_id else SIM_ENVS
        if self.family not in FAMILIES:
            raise ValueError(f"target {self.name!r}: family={self.family!r}; expected one of {list(FAMILIES)}")
        if self.reward not in REWARDS:
            raise ValueError(f"target {self.name!r}: reward={self.reward!r}; expected one of {list(REWARDS)}")
        if self.family == GYM and not self.env_id:
            raise ValueError(f"target {self.name!r}: a gym target needs env_id (a gymnasium id or 'module:Class')")
        steps = self.max_episode_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"target {self.name!r}: max_episode_steps={steps!r}; expected an integer >= 1, or null "
                             "for the env's own time limit")  # 0 was read as "not set"; -5 reached gymnasium
        if self.family == SIM_ENVS:
            import sim_envs.tasks as tasks  # torch-free

            if self.name not in tasks.TASKS:
                raise ValueError(f"target {self.name!r} is not a sim_envs task ({sorted(tasks.TASKS)}); give "
                                 "family/env_id for another env (family: metaworld for a Meta-World task)")
        if self.family == METAWORLD:
            from robopretrain.envs.metaworld import task_name  # no Meta-World install needed for the names

            self.name = task_name(self.name)  # the v3 name demo files record; a misspelt task is refused here
            if self.flip_images:
                raise ValueError(f"target {self.name!r}: flip_images=true on a Meta-World target; the adapter's "
                                 "frames are upright already (flipping them shows the agent an upside-down scene). "
                                 "Demos recorded from Meta-World's corner cameras with its own renderer are upside "
                                 "down: rotate those frames by 180 degrees when writing the file")
        self.env_kwargs = dict(self.env_kwargs or {})
        self._check_env_kwargs()
        self.obs_map = {str(k): str(v) for k, v in dict(self.obs_map or {}).items()}
        if self.action_normalization is not None:
            try:
                units = ActionNormalization.from_mapping(_plain(self.action_normalization))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"target {self.name!r}: {exc}") from None
            self.action_normalization = {"low": list(units.low), "high": list(units.high)}

    def _check_env_kwargs(self) -> None:
        """Refuse ``env_kwargs`` that would silently replace a setting the toolkit owns (a sim_envs target's
        randomization, fixed there, replaced every evaluation condition's: "nominal" ran under it) or contradict
        one of the target's own fields (a Meta-World target's reward / termination)."""
        given = set(self.env_kwargs)
        if self.family == SIM_ENVS:
            for key in sorted(given & set(SIM_ENVS_OWNED)):
                raise ValueError(f"target {self.name!r}: env_kwargs.{key} is not a target's to set: "
                                 f"{SIM_ENVS_OWNED[key]}")
            randomization = sorted(given & set(RANDOMIZATION_KEYS))
            if randomization:
                raise ValueError(f"target {self.name!r}: env_kwargs {randomization} are settings of the randomization "
                                 "(sim_envs.randomization), which each run sets, not the target: `dr` in stages 2 "
                                 "and 3 (e.g. dr=train_all, or +dr.num_distractors=4), the factors and levels in "
                                 "evaluate")
            unknown = sorted(given - set(SIM_ENVS_KWARGS))
            if unknown:
                import difflib

                hints = [m for k in unknown for m in difflib.get_close_matches(k, SIM_ENVS_KWARGS, n=1)]
                raise ValueError(f"target {self.name!r}: env_kwargs {unknown} are no keywords of a sim_envs env"
                                 + (f" (did you mean {hints}?)" if hints else "")
                                 + f"; it takes {list(SIM_ENVS_KWARGS)} from a target")
        if self.family == METAWORLD:
            if "task" in given:  # it replaced the named task in the env, while results and the slot said the name
                from robopretrain.envs.metaworld import task_name

                task = self.env_kwargs["task"]
                try:
                    same = isinstance(task, str) and task_name(task) == self.name
                except ValueError:  # no Meta-World task
                    same = False
                if not same:
                    raise ValueError(f"target {self.name!r}: env_kwargs.task={task!r} contradicts the target's name, "
                                     "which is its Meta-World task; name the target by the task instead")
            fields = {"reward": self.reward, "terminate_on_success": self.terminate_on_success}
            for key, value in fields.items():
                if key in given and self.env_kwargs[key] != value:
                    raise ValueError(f"target {self.name!r}: env_kwargs.{key}={self.env_kwargs[key]!r} contradicts "
                                     f"the target's {key}={value!r}; set the target's {key} only")

    @property
    def action_units(self) -> ActionNormalization | None:
        """The map between the agent's ``[-1, 1]`` actions and the env's (None: the env takes them as they are)."""
        return ActionNormalization.from_mapping(self.action_normalization)

    @property
    def randomizable(self) -> bool:
        """Whether physics / visual randomization and distractors apply (sim_envs only)."""
        return self.family == SIM_ENVS

    @property
    def sparse(self) -> bool:
        return self.reward == "sparse"

    def resolved_task_id(self) -> int:
        """The slot of this target in the task one-hot."""
        if self.task_id is not None:
            return int(self.task_id)
        if self.family == SIM_ENVS:
            import sim_envs.tasks as tasks

            return int(tasks.TASK_IDS[self.name])
        if self.family == METAWORLD:
            from robopretrain.envs.metaworld import TASK_IDS, task_name

            return int(TASK_IDS[task_name(self.name)])
        raise ValueError(f"target {self.name!r}: task_id is required for a gym target (its slot in the task one-hot); "
                         "the stage commands fill it in from the checkpoint's tasks, from Python give "
                         "task_id=<slot>, or with_task_slot(target, robopretrain.evaluate.trained_slots(ckpt), "
                         "num_tasks)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_target(entry: str | Mapping[str, Any] | Target) -> Target:
    """A :class:`Target` from a sim_envs task name, a mapping of its fields (unknown keys raise) or a Target."""
    if isinstance(entry, Target):
        return entry
    if isinstance(entry, str):
        return Target(name=entry)
    if not isinstance(entry, Mapping):  # a list (several targets where one is taken) gave dict()'s own words
        raise ValueError(f"target={entry!r}: expected one task name or one mapping of target fields (a run takes one "
                         "target; several: a sweep, -m 'target=A,B', or a stage's list setting such as "
                         "train.eval_targets)")
    d = dict(entry)
    valid = set(Target.__dataclass_fields__)
    unknown = sorted(set(d) - valid)
    if unknown:
        raise ValueError(f"target {d.get('name')!r}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    if "name" not in d:
        raise ValueError(f"target {d}: needs a name")
    return Target(**d)


def slot_note(name: str, slot: int, trained: Mapping[str, int], label_only: bool = False) -> str | None:
    """What to say when a target acts in a slot of the task one-hot that disagrees with what the agent learnt
    (``trained``: task name -> slot, a checkpoint's ``task_ids``): its task learnt in another slot, or its slot learnt
    as other tasks. None when they agree or a task of another name in a slot no task used (said elsewhere), and
    with ``label_only`` (a gym target of a one-slot agent: its name is the user's label, and a converted file names
    its task after the file, so the names differ as a rule and there is no other slot to take)."""
    if label_only:
        return None
    learnt = {str(k): int(v) for k, v in dict(trained).items()}
    if name in learnt and learnt[name] != int(slot):
        return (f"target {name!r} acts in slot {slot} of the task one-hot, but the agent learnt {name!r} in slot "
                f"{learnt[name]} (its task_id moves it; leave it out to use the learnt slot)")
    others = sorted(t for t, s in learnt.items() if s == int(slot) and t != name)
    if name not in learnt and others:
        return (f"target {name!r} acts in slot {slot} of the task one-hot, where the agent learnt task(s) {others}: "
                "the agent takes it for that task")
    return None


def with_task_slot(target: Target, task_ids: Mapping[str, int], num_tasks: int) -> Target:
    """``target`` with its slot of the task one-hot filled in when it names none and its family has no ids of its
    own (a gym target): the slot of the trained task of its name, else the one slot every trained task shares, else
    0 for an agent with at most one slot (logged). A sim_envs target keeps our sim's own id (``TASK_IDS``, which the
    collector records) unless the agent learnt a task of its name in another slot (stage 2's ``data.task_id`` moves
    it; warned, as another env's task of that name would take it too); one whose id does not fit is refused later
    (stage 3's default target among them: never placed in a one-task agent's slot). A Meta-World target keeps
    Meta-World's own id unless the agent learnt its task in another slot, or the id does not fit the agent's one-hot
    (a user's own one-task file): then the same rules as a gym target's. ``task_ids``: trained task name -> slot (a
    checkpoint's meta or the data's); ``num_tasks``: the agent's one-hot size (0: none). Raises ValueError naming
    the trained tasks' slots when none of these applies (a multi-task agent: which task the env is must be said)."""
    if target.task_id is not None:
        return target
    slots = {str(k): int(v) for k, v in dict(task_ids).items()}
    if target.family == SIM_ENVS:  # our sim's own id, unless the agent learnt a task of its name elsewhere
        own, learnt = target.resolved_task_id(), slots.get(target.name)
        if learnt is None or learnt == own:
            return target
        log.warning("target %r (sim_envs): task_id %d, the slot the agent learnt a task %r in (sim_envs' own id: "
                    "%d); if that was another env's task of this name, set the target's task_id", target.name,
                    learnt, target.name, own)
        return replace(target, task_id=learnt)
    if target.family == METAWORLD:  # Meta-World's own id, unless the agent learnt the task elsewhere or it does not fit
        own = target.resolved_task_id()
        learnt = slots.get(target.name)
        if learnt == own or (learnt is None and (own < num_tasks or num_tasks == 0)):
            return target
        if learnt is None and len(set(slots.values())) != 1 and num_tasks > 1:
            return target  # a multi-task agent without the task: its one-hot refuses the id, naming both
    if target.name in slots:
        slot, why = slots[target.name], "the slot of the trained task of its name"
    elif len(set(slots.values())) == 1:
        slot, why = next(iter(slots.values())), f"the slot of the agent's only task {sorted(slots)}"
    elif num_tasks <= 1:
        slot, why = 0, "the agent has one task slot"
    else:
        raise ValueError(f"target {target.name!r}: a gym target of a multi-task agent needs task_id, its slot in the "
                         f"task one-hot of size {num_tasks} (the trained tasks' slots: {slots or 'none recorded'})")
    import sim_envs.tasks as tasks  # torch-free

    if target.family == GYM and target.name in slots and target.name in tasks.TASKS:  # our sim's task's name
        log.warning("target %r (gym): task_id %d, the slot of the trained task %r, which is also a sim_envs task's "
                    "name; if the agent learnt sim_envs' %s there, this env is another task: set its task_id",
                    target.name, slot, target.name, target.name)
    else:
        log.info("target %r: task_id %d (%s)", target.name, slot, why)
    return replace(target, task_id=slot)


def _is_metaworld_file(env_args: Mapping[str, Any]) -> bool:
    """Whether a demo file's ``env_args`` name a Meta-World env (``robopretrain.envs.metaworld_collect`` writes them)."""
    return env_args.get("family") == METAWORLD or str(env_args.get("env_name", "")).startswith("robopretrain/MetaWorld")


def target_of_data(env_args: Mapping[str, Any], task: str, task_id: int,
                   obs_map: Mapping[str, str] | None = None) -> Target | None:
    """The target a demo file's ``env_args`` describe for one of its tasks (None when it names no known family).
    ``obs_map``: the ``data.obs_map`` the agent read the file through (our part -> the file's key); the file's keys
    are its env's, so the target renders and reads those keys for the parts (a camera renamed from ``topview_image``
    is the topview camera in the env too, not the camera our name stands for)."""
    renamed = {str(k): str(v) for k, v in dict(obs_map or {}).items() if str(k) != str(v)}
    env_name = str(env_args.get("env_name", ""))
    kwargs = dict(env_args.get("env_kwargs") or {})
    if env_name.startswith("sim_envs/") or env_args.get("family") == SIM_ENVS:
        import sim_envs.tasks as tasks

        return Target(name=task, obs_map=renamed) if task in tasks.TASKS else None
    if _is_metaworld_file(env_args):
        keep = {k: v for k, v in kwargs.items() if k in METAWORLD_SETTINGS}
        fields = {k: keep.pop(k) for k in ("reward", "terminate_on_success") if k in keep}  # the target's own fields
        name = task.removeprefix("robopretrain/MetaWorld-")  # a file without task names: its env_name
        try:
            return Target(name=name, family=METAWORLD, env_kwargs=keep, task_id=int(task_id), obs_map=renamed,
                          **fields)
        except ValueError:  # a task name that is no Meta-World task (renamed in the file): no env to act in
            log.info("task %r of a Meta-World file names no Meta-World task: no env for it", task)
            return None
    return None


def warn_unmapped_renames(meta: Mapping[str, Any], target: Target, where: str = "target") -> list[str]:
    """Warn (and return the parts) when the checkpoint's stage-2 data was read through a ``data.obs_map`` that renamed
    one of the agent's parts (``agentview_image`` <- the file's ``topview_image``), and ``target`` (given by the user)
    maps none of those parts: its env's own key of that name is read, which may be another camera or vector than the
    agent learned from (a Meta-World target renders the corner camera for ``agentview_image``)."""
    renamed = {k: v for k, v in dict(meta.get("obs_map") or {}).items() if k != v}
    unmapped = sorted(k for k in renamed if k not in target.obs_map)
    if unmapped:
        log.warning("the agent read %s from its stage-2 data's %s (data.obs_map), and %s %r maps no key for %s: its "
                    "env's own %s is read; if the data's key is the env's (a file the env recorded), set %s.obs_map="
                    "{%s}", ", ".join(unmapped), ", ".join(renamed[k] for k in unmapped), where, target.name,
                    "it" if len(unmapped) == 1 else "them", ", ".join(unmapped), where,
                    ", ".join(f"{k}: {renamed[k]}" for k in unmapped))
    return unmapped


def episode_limit(target: Target) -> int | None:
    """The time limit ``target``'s episodes run under, when the config says it: ``max_episode_steps``, else a
    Meta-World target's ``env_kwargs.max_episode_steps``, else Meta-World's own 500; None for an env's own limit."""
    if target.max_episode_steps:
        return int(target.max_episode_steps)
    if target.family == METAWORLD:
        from robopretrain.envs.metaworld import MAX_PATH_LENGTH

        return int(target.env_kwargs.get("max_episode_steps") or MAX_PATH_LENGTH)
    return None


def time_limit_note(target: Target, env_args: Mapping[str, Any], demos: Sequence[Any] = (),
                    env_limit: int | None = None) -> str | None:
    """A warning when ``target``'s time limit does not fit its demo file: a Meta-World target that sets no limit
    (Meta-World's own, 500 steps, then applies) acting on a task whose file (its ``env_args``) was recorded with
    another one (its episodes would be longer than the data's and than any stage-2 evaluation of the file's task,
    which keeps the file's limit); or a limit shorter than most of the successful demos of the target's task
    (``demos``: the file's :class:`~robopretrain.data.hdf5.DemoInfo`; those of another task, or failed, aside; all of
    a one-task file's when none has the target's name; demos without a success flag count as successful), which
    episodes then cannot finish as the demos did. ``env_limit``: the limit of the env itself
    (:func:`env_time_limit`), which binds where it is shorter than the config's or the config states none. None
    otherwise."""
    from robopretrain.envs.metaworld import MAX_PATH_LENGTH

    recorded = (env_args.get("env_kwargs") or {}).get("max_episode_steps")
    if (target.family == METAWORLD and not target.max_episode_steps and "max_episode_steps" not in target.env_kwargs
            and _is_metaworld_file(env_args) and recorded is not None and int(recorded) != MAX_PATH_LENGTH):
        return (f"target {target.name!r} sets no max_episode_steps, so its episodes run to Meta-World's "
                f"{MAX_PATH_LENGTH} steps; its demos were recorded with {int(recorded)} (stage 2's evaluations of the "
                f"task, if it ran any, used that limit): set the target's max_episode_steps: {int(recorded)} to act "
                "under the data's limit")
    configured = episode_limit(target)
    limits = [n for n in (configured, env_limit) if n]
    limit = min(limits) if limits else None
    lengths = sorted(int(d.num_samples) for d in successful_target_demos(target, demos))
    if limit is None or not lengths:
        return None
    longer = sum(n > limit for n in lengths)
    if 2 * longer <= len(lengths):
        return None
    if limit == configured:
        where, fix = "max_episode_steps", "raise the target's max_episode_steps"
    elif configured is None and limit == UNLIMITED_EPISODE_CAP:  # the toolkit's cap for an env that states none
        where, fix = "the toolkit's cap for an env without a time limit", "set the target's max_episode_steps"
    else:  # the env's own, which no target setting lifts
        where, fix = ("the env's own time limit", "give the env a longer limit (its own setting, e.g. through the "
                      "target's env_kwargs)")
    return (f"target {target.name!r}: episodes stop at {limit} steps ({where}), but {longer} of its "
            f"{len(lengths)} successful demos are longer (median {lengths[len(lengths) // 2]}, longest {lengths[-1]} "
            f"steps): the policy cannot finish as they did in time; {fix}")


def successful_target_demos(target: Target, demos: Sequence[Any], flagged: bool = False) -> list[Any]:
    """The demos (:class:`~robopretrain.data.hdf5.DemoInfo`) of ``target``'s task marked successful, or also those
    without a success flag unless ``flagged``: those named as the target, or all of a one-task file's when none is."""
    own = [d for d in demos if d.task == target.name]
    if not own and len({d.task for d in demos}) == 1:  # a one-task file under another name: its demos are the target's
        own = list(demos)
    return [d for d in own if (d.ep_meta.get("success") is True if flagged else d.ep_meta.get("success", True))]


def success_termination_note(target: Target, ends: Mapping[str, bool], total: int | None = None) -> str | None:
    """A warning when a dense-reward target ends its episodes at the first success (``terminate_on_success``, the
    default) but none of its successful demos ends in a terminal (``ends``: demo name -> whether its last ``done`` is
    set, for ``total`` or some of the demos flagged successful, :func:`successful_target_demos`): either the demos
    lack their terminals, or the env that recorded them ran on after success, and then the target's episodes are
    shorter than the data's and stage 3 stores terminals (no value after success) the data never has. None
    otherwise, also for a sparse target (success is its reward and its end) and for demos none flagged successful
    (an env that reports no success: the setting never acts)."""
    if target.reward != "dense" or not target.terminate_on_success or not ends or any(ends.values()):
        return None
    total = len(ends) if total is None else int(total)
    counted = f"{total}" if total == len(ends) else f"{len(ends)} checked of {total}"
    return (f"target {target.name!r} ends an episode at its first success (terminate_on_success: true, the default), "
            f"but none of its successful demos ({counted}) ends in a terminal (done): if the task ends at success, "
            "write done=1 at each demo's success step; if the env that recorded them ran on after success, set the "
            "target's terminate_on_success: false (else its episodes here are shorter than the data's and stage 3 "
            "stores terminals, no value after success, that the data never has)")


# --------------------------------------------------------------------------- the env


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _construct(env_id: str, kwargs: Mapping[str, Any], max_episode_steps: int | None = None) -> gym.Env:
    """The env of a registered id (``gym.make``, whose own time limit ``max_episode_steps`` replaces), of a
    ``"module:Class"`` entry point (wrapped in a ``TimeLimit`` of ``max_episode_steps`` when given) or of gymnasium's
    ``"module:Id-v0"`` (the module imported so that it registers the id, then ``gym.make``). Raises ValueError naming
    the id when the module cannot be imported, has no such attribute or registered id, or the id is not registered."""
    module_name, _, attr = str(env_id).partition(":")
    limit = {"max_episode_steps": int(max_episode_steps)} if max_episode_steps else {}
    if attr:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            parts = module_name.split(".")
            if exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:  # the module itself not found
                raise ValueError(f"env {env_id!r}: cannot import {module_name!r} ({exc}); is its folder on "
                                 "PYTHONPATH?") from None
            raise ValueError(f"env {env_id!r}: {module_name!r} was found but imports {exc.name!r}, which is not "
                             f"installed ({exc}); install it in this environment") from None
        obj = getattr(module, attr, None)
        if obj is None:
            try:  # gymnasium's "module:Id" (the module registers the id on import; a missing version: the latest)
                return gym.make(attr, **dict(kwargs), **limit)
            except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound):
                raise ValueError(f"env {env_id!r}: {module_name} has no {attr!r} (neither a class or function of "
                                 "the module nor an id it registers with gymnasium)") from None
        _check_keywords(obj, kwargs, env_id)
        env = obj(**dict(kwargs))
        return gym.wrappers.TimeLimit(env, int(max_episode_steps)) if max_episode_steps else env
    if str(env_id).startswith("robopretrain/MetaWorld-"):  # the id our Meta-World files record: registered on import
        importlib.import_module("robopretrain.envs.metaworld")
    try:
        return gym.make(str(env_id), **dict(kwargs), **limit)
    except TypeError as exc:  # a keyword of env_kwargs the env's constructor does not take reaches it via gym.make
        if "unexpected keyword argument" not in str(exc) or not any(f"'{k}'" in str(exc) for k in kwargs):
            raise  # the env's own bug: its traceback as it is
        raise ValueError(f"env {env_id!r}: {exc}; check the target's env_kwargs ({sorted(kwargs)})") from exc
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound) as exc:
        raise ValueError(f"env {env_id!r}: not registered with gymnasium ({exc}); if your own module registers it, "
                         f"write 'your_module:{env_id}' so that it is imported first, or give 'your_module:YourEnv'"
                         ) from None


def _check_keywords(ctor: Callable[..., Any], kwargs: Mapping[str, Any], env_id: str) -> None:
    """Raise ValueError naming the target's ``env_kwargs`` when ``ctor`` cannot take ``kwargs`` (a misspelt or
    foreign keyword was a TypeError traceback from inside the constructor); a constructor without a readable
    signature is left to fail on its own."""
    try:
        signature = inspect.signature(ctor)
    except (TypeError, ValueError):
        return
    try:
        signature.bind_partial(**dict(kwargs))
    except TypeError as exc:
        params = [n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ValueError(f"env {env_id!r}: {exc} (keywords given, the target's env_kwargs among them: "
                         f"{sorted(kwargs)}; it takes {', '.join(params) or 'no keywords'})") from None


_warned_no_success: set[str] = set()  # dense targets whose env gives no success key: said once per process
UNLIMITED_EPISODE_CAP = 1000  # steps: a gym env with no time limit the toolkit can see is truncated here
_warned_unlimited: set[str] = set()


class EnvContractError(KeyError):
    """The env does not give what its target promises (a camera, the success key): bad input, reported in one line
    by the entry points; a ``KeyError`` (the part or key is missing) whose message reads without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def has_time_limit(env: gym.Env) -> bool:
    """Whether ``env`` ends its episodes by a limit gymnasium enforces: a ``TimeLimit`` wrapper or a registered
    ``max_episode_steps`` (which ``gym.make`` enforces)."""
    e: Any = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, gym.wrappers.TimeLimit):
            return True
        e = e.env
    spec = getattr(env, "spec", None)
    return bool(getattr(spec, "max_episode_steps", None))


STATED_LIMITS = ("max_episode_steps", "max_path_length")  # a base env's attributes that state its episodes' length


def _positive_int(n: Any) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0


def env_time_limit(env: gym.Env) -> int | None:
    """The step at which ``env``'s episodes end at the latest: the tightest of its ``TimeLimit`` wrappers (every env
    :func:`make_env` builds has one), its registered ``spec.max_episode_steps`` and its base env's stated limit
    (``max_episode_steps`` or Meta-World's ``max_path_length`` attribute, taken as one it enforces, as sim_envs' and
    Meta-World's envs do); None when it states none."""
    limits: list[int] = []
    e: Any = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, gym.wrappers.TimeLimit):
            limits.append(int(e._max_episode_steps))
        e = e.env
    stated = [getattr(getattr(env, "spec", None), "max_episode_steps", None),
              *(getattr(env.unwrapped, name, None) for name in STATED_LIMITS)]
    limits += [int(n) for n in stated if _positive_int(n)]
    return min(limits) if limits else None


def _capped(env: gym.Env, target: Target) -> gym.Env:
    """``env`` when it or the target has a time limit (:func:`has_time_limit`); else, when its base env states one
    (a ``max_episode_steps`` attribute, as sim_envs and robosuite-style envs have, or Meta-World's
    ``max_path_length``), ``env`` truncated there (harmless when the env enforces it itself, and it may not); else
    ``env`` truncated at :data:`UNLIMITED_EPISODE_CAP` steps with a warning (once per target and process): an
    evaluation episode of an env that never ends would otherwise never return."""
    if target.max_episode_steps or has_time_limit(env):
        return env
    stated = [n for n in (getattr(env.unwrapped, name, None) for name in STATED_LIMITS) if _positive_int(n)]
    if stated:  # the tightest, as env_time_limit reads it
        return gym.wrappers.TimeLimit(env, int(min(stated)))
    if target.name not in _warned_unlimited:
        _warned_unlimited.add(target.name)
        log.warning("target %r: the env has no time limit the toolkit can see (no TimeLimit wrapper, "
                    "spec.max_episode_steps, max_episode_steps or max_path_length attribute); an episode the env "
                    "does not end itself is truncated at %d steps. Set the target's max_episode_steps (its episodes' "
                    "length) to choose "
                    "the limit (an env that ends its own episodes earlier needs nothing)",
                    target.name, UNLIMITED_EPISODE_CAP)
    return gym.wrappers.TimeLimit(env, UNLIMITED_EPISODE_CAP)


_warned_image_size: set[tuple[str, int, int]] = set()  # said once per process


def _agent_image_size(target: Target, kwargs: dict[str, Any], image_size: int | None) -> None:
    """Render a sim_envs / Meta-World target at the agent's ``image_size`` (set in ``kwargs``); a different
    ``env_kwargs.image_size`` is replaced (the agent reads frames of its own size), which is said once."""
    if not image_size:
        return
    given = target.env_kwargs.get("image_size")
    if given is not None and int(given) != int(image_size) and (target.name, int(given), int(image_size)) \
            not in _warned_image_size:
        _warned_image_size.add((target.name, int(given), int(image_size)))
        log.warning("target %r: env_kwargs.image_size=%s is replaced by the agent's image size %d (its frames render "
                    "at the size the agent reads; set image_size in the stage's config to change it)", target.name,
                    given, int(image_size))
    kwargs["image_size"] = int(image_size)


ENV_KWARGS = "env_kwargs"  # a randomization mapping's key for constructor arguments (a gap's side on any env)


def split_env_kwargs(randomization: Any) -> tuple[Any, dict[str, Any]]:
    """A randomization argument split into its sim_envs randomization (``none`` when nothing else is left) and the
    constructor arguments under its ``env_kwargs`` key (``{}`` without one): ``{env_kwargs: {gain: 0.3}}`` is how a
    gap (:class:`finetune.transfer.gap.Gap`) sets one side of any env, whose own parameters the toolkit cannot
    randomize. Raises ``ValueError`` when ``env_kwargs`` is not a mapping."""
    randomization = _plain(randomization)
    if not isinstance(randomization, Mapping) or ENV_KWARGS not in randomization:
        return randomization, {}
    extra = randomization[ENV_KWARGS]
    if not isinstance(extra, Mapping):
        raise ValueError(f"randomization: env_kwargs={extra!r}; expected a mapping of the env's constructor "
                         "arguments")
    rest = {k: v for k, v in randomization.items() if k != ENV_KWARGS}
    return (rest or "none"), {str(k): v for k, v in extra.items()}


def is_nominal(randomization: Any) -> bool:
    """Whether a randomization argument (its ``env_kwargs`` aside) draws nothing: ``none``, or a mapping at level
    ``none`` without distractors; what any env, not only sim_envs', can run."""
    randomization, _ = split_env_kwargs(randomization)
    return randomization in (None, "none") or (isinstance(randomization, Mapping)
                                               and randomization.get("level", "none") == "none"
                                               and not randomization.get("num_distractors"))


def make_env(target: Target, cameras: Sequence[str] = (), image_size: int | None = None,
             randomization: Any = "none", *, checked: Sequence[str] = (), **sim_kwargs: Any) -> gym.Env:
    """The env of ``target`` in the toolkit's conventions (module docstring), rendering ``cameras`` at ``image_size``.

    ``randomization`` (a level name or a mapping, see :mod:`sim_envs.randomization`) applies to sim_envs targets
    only; any other family refuses a setting other than ``none`` with a ``ValueError`` naming the target. Its
    ``env_kwargs`` key, on any family, adds to (and overrides) the target's constructor arguments
    (:func:`split_env_kwargs`).
    ``sim_kwargs`` go to the sim_envs env (e.g. ``video_cameras``). ``checked``: the vector parts the agent reads
    (our names), refused at the step where they turn NaN / inf or change shape (:class:`TargetEnv`).
    """
    randomization, extra = split_env_kwargs(randomization)
    if extra:
        target = replace(target, env_kwargs={**target.env_kwargs, **extra})
    if not target.randomizable and not is_nominal(randomization):
        raise ValueError(f"target {target.name!r} ({target.family}): randomization={randomization!r} applies to "
                         "sim_envs tasks only; use none")
    if target.family == SIM_ENVS:
        import sim_envs

        env_cameras = {target.obs_map.get(c, c) for c in cameras}  # the sim's keys (the agent may name them its way)
        kwargs: dict[str, Any] = {"render_images": "agentview_image" in env_cameras,
                                  "eye_in_hand": "eye_in_hand_image" in env_cameras,
                                  "randomization": randomization if randomization is not None else "none",
                                  "terminate_on_success": target.terminate_on_success, **target.env_kwargs,
                                  **sim_kwargs}
        _agent_image_size(target, kwargs, image_size)
        if target.max_episode_steps:
            kwargs["max_episode_steps"] = int(target.max_episode_steps)
        env = gym.make(sim_envs.env_id(target.name), **kwargs)
        plain = target.task_id is None and not target.obs_map  # our own env, in our conventions already
        wrapped = env if plain else TargetEnv(env, target, cameras, checked=checked)
        return _in_agent_units(wrapped, target)
    if target.family == METAWORLD:
        # the target's reward, termination and time limit are the adapter's own settings (a TimeLimit outside it
        # could not lift its 500-step default, and its sparse reward would stand in for a dense target's)
        kwargs = {"task": target.name, "render_images": bool(cameras), "reward": target.reward,
                  "terminate_on_success": target.terminate_on_success, **target.env_kwargs}
        if target.max_episode_steps:
            kwargs["max_episode_steps"] = int(target.max_episode_steps)
        if cameras and "cameras" not in kwargs:  # render the agent's cameras (corner -> agentview_image, ...)
            module = importlib.import_module(METAWORLD_ENTRY.partition(":")[0])
            by_key = {module.camera_key(c): c for c in module.CAMERAS}
            unknown = {c: target.obs_map.get(c, c) for c in cameras if target.obs_map.get(c, c) not in by_key}
            if unknown:  # was: left out, and the corner camera filmed in its place
                raise ValueError(f"target {target.name!r}: no Meta-World camera gives {sorted(set(unknown.values()))} "
                                 f"(the agent's {sorted(unknown)}, through obs_map); its cameras' keys: "
                                 + ", ".join(f"{k} ({c})" for k, c in by_key.items()))
            kwargs["cameras"] = [by_key[target.obs_map.get(c, c)] for c in cameras]
        _agent_image_size(target, kwargs, image_size)
        env = _construct(METAWORLD_ENTRY, kwargs)
        return _in_agent_units(TargetEnv(env, target, cameras, checked=checked), target)
    # a registered env's own TimeLimit is replaced, not nested (an outer limit could not lift a shorter inner one)
    env = _capped(_construct(str(target.env_id), target.env_kwargs, target.max_episode_steps), target)
    _warn_shorter_inner_limit(env, target)
    if isinstance(env.action_space, gym.spaces.Box) and env.action_space.shape == ():
        env = ScalarActionBox(env)
    return _in_agent_units(TargetEnv(env, target, cameras, image_size, checked=checked), target)


class ScalarActionBox(gym.ActionWrapper):
    """An env whose action space is a scalar ``Box(low, high, shape=())`` (gymnasium allows it) as one of shape
    ``(1,)``, the agent's one action dimension; each action reaches the env as a scalar. It was refused as "an agent
    of another robot" (shape () against (1,))."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.action_space
        self.action_space = gym.spaces.Box(np.reshape(space.low, (1,)), np.reshape(space.high, (1,)), (1,),
                                           space.dtype)

    def action(self, action: Any) -> np.ndarray:
        return np.asarray(action, dtype=self.env.action_space.dtype).reshape(())


_warned_inner_limit: set[str] = set()


def _warn_shorter_inner_limit(env: gym.Env, target: Target) -> None:
    """Warn (once per target and process) when the target's ``max_episode_steps`` is longer than the limit its base
    env states itself (a ``max_episode_steps`` attribute, as Meta-World's adapter and sim_envs have, or Meta-World's
    own ``max_path_length``): the outer time limit the toolkit sets cannot lift it, so episodes end at the env's own
    limit (Meta-World through ``env_id`` stopped at 500 steps under a target of 600, with no word)."""
    stated = [getattr(env.unwrapped, k, None) for k in ("max_episode_steps", "max_path_length")]
    stated = [int(v) for v in stated if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0]
    inner = min(stated, default=None)
    if (not target.max_episode_steps or inner is None or inner >= int(target.max_episode_steps)
            or target.name in _warned_inner_limit):
        return
    _warned_inner_limit.add(target.name)
    log.warning("target %r: max_episode_steps=%d, but the env itself stops its episodes at %d steps (its own "
                "max_episode_steps or max_path_length), which the toolkit's time limit cannot lift: episodes end "
                "there. Give the env the longer limit too (env_kwargs.max_episode_steps=%d, if it takes it)%s",
                target.name, int(target.max_episode_steps), int(inner), int(target.max_episode_steps),
                "; a Meta-World task: family: metaworld sets it" if "metaworld" in str(target.env_id).lower() else "")


# what a user can do about an agent's action units, which its stage-2 data fixed (a target's may not contradict them)
UNITS_FIXED_HINT = ("the agent's units were fixed by its stage-2 data (data.action_bounds, else the file's env_args "
                    "action_normalization, else the range its demos' actions covered) and no later stage changes "
                    "them: train stage 2 again with data.action_bounds set to the env's range {low, high} (or "
                    "rescale the data's actions to [-1, 1] by it and record it as the file's env_args "
                    "action_normalization)")
_NARROW_WARNED: set[str] = set()  # the range warnings (narrow, beyond) already given in this process


class AgentActionUnits(gym.ActionWrapper):
    """Takes actions in ``[-1, 1]`` and gives the env ``units.to_env(action)`` (the target's ``action_normalization``;
    module docstring)."""

    def __init__(self, env: gym.Env, units: ActionNormalization, where: str) -> None:
        super().__init__(env)
        shape = tuple(env.action_space.shape or ())
        if shape != (units.dim,):
            raise ValueError(f"{where}: the env takes actions of shape {shape}, the agent gives ({units.dim},) (the "
                             f"action_normalization it acts through, from the data it trained on or the target's, has "
                             f"{units.dim} dims): an agent of another robot?")
        self.units = units
        self.action_space = gym.spaces.Box(-1.0, 1.0, (units.dim,), np.float32)
        # (a shaped space without bounds, a Space of the user's: unbounded in every dimension)
        own_low = np.broadcast_to(np.asarray(getattr(env.action_space, "low", -np.inf), np.float64), (units.dim,))
        own_high = np.broadcast_to(np.asarray(getattr(env.action_space, "high", np.inf), np.float64), (units.dim,))
        low, high = np.asarray(units.low, dtype=np.float64), np.asarray(units.high, dtype=np.float64)
        beyond = (low < own_low - 1e-6) | (high > own_high + 1e-6)
        wide = (f"{where}: the agent's actions reach beyond the env's own action range in dimension(s) "
                f"{np.flatnonzero(beyond).tolist()} (low {list(units.low)}, high {list(units.high)}; the env's "
                f"{np.round(own_low, 4).tolist()}, {np.round(own_high, 4).tolist()}): its actions are clipped to "
                "the env's range there (the policy cannot reach what it learned beyond it). Where the "
                "data's actions stayed inside [-1, 1] they were taken as already normalised (data.actions=auto); if "
                "they are in this env's own units, " + UNITS_FIXED_HINT + "; if they are raw outputs of a policy "
                "whose env clips them (Meta-World's scripted policies'), clip them to the env's range in the file "
                "first, as the env executed them (else: data of another robot?)")
        if beyond.any() and wide not in _NARROW_WARNED:  # once per process, as below
            _NARROW_WARNED.add(wide)
            log.warning(wide)
        finite = np.isfinite(own_low) & np.isfinite(own_high)
        margin = 0.01 * np.where(finite, own_high - own_low, 0.0)
        # (a dimension beyond the env's range on one side can fall short of it on the other: [-2.7, 0.5] of [-1, 1])
        outside = (low >= own_high) | (high <= own_low)  # no part inside the env's range: "beyond" says it
        narrow = finite & ~outside & ((low > own_low + margin) | (high < own_high - margin))
        inside_low, inside_high = np.maximum(low, own_low), np.minimum(high, own_high)  # what reaches the env
        message = (f"{where}: the agent's actions reach only low {np.round(inside_low[narrow], 4).tolist()}, high "
                   f"{np.round(inside_high[narrow], 4).tolist()} of the env's {np.round(own_low[narrow], 4).tolist()}, "
                   f"{np.round(own_high[narrow], 4).tolist()} in dimension(s) {np.flatnonzero(narrow).tolist()} (the "
                   "range the demos covered, or [-1, 1] where they stayed inside it): exploration and the policy "
                   "never leave it; to reach the env's whole range, " + UNITS_FIXED_HINT)
        if narrow.any() and message not in _NARROW_WARNED:  # once per process: every env built says the same
            _NARROW_WARNED.add(message)
            log.warning(message)

        self._env_low, self._env_high = own_low, own_high  # the env's Box; -inf / inf where it sets none

    def action(self, action: Any) -> np.ndarray:
        """``action`` (in ``[-1, 1]``, clipped there) in the env's units, clipped to the env's own action range
        (an env need not clip: a point mass given x = -0.03 under ``low = 0`` went outside its workspace)."""
        env_action = self.units.to_env(np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0))
        return np.clip(env_action, self._env_low, self._env_high).astype(np.asarray(env_action).dtype, copy=False)


class ClipToEnvBox(gym.ActionWrapper):
    """Actions the agent gives in the env's own units (no ``action_normalization``), clipped to the env's Box where
    it is narrower than the agent's ``[-1, 1]`` (e.g. a gripper in ``[0, 1]``): an env need not clip (as
    :class:`AgentActionUnits`, which clips the same way). The env's ``action_space`` is kept."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._low = np.asarray(env.action_space.low, dtype=np.float64)
        self._high = np.asarray(env.action_space.high, dtype=np.float64)

    def action(self, action: Any) -> np.ndarray:
        action = np.asarray(action)
        return np.clip(action, self._low, self._high).astype(action.dtype, copy=False)


def narrower_than_agents(space: gym.Space) -> bool:
    """Whether ``space`` is a Box that cuts into ``[-1, 1]`` (a bound inside it) in some dimension: the actions an
    agent gives unmapped can then leave it."""
    if not isinstance(space, gym.spaces.Box):
        return False
    low, high = np.asarray(space.low, dtype=np.float64), np.asarray(space.high, dtype=np.float64)
    return bool(np.any(low > -1.0 + 1e-6) or np.any(high < 1.0 - 1e-6))


def _in_agent_units(env: gym.Env, target: Target) -> gym.Env:
    units = target.action_units
    if units is not None:
        return AgentActionUnits(env, units, f"target {target.name!r}")
    return ClipToEnvBox(env) if narrower_than_agents(env.action_space) else env


_DROPPED_SAID: set[str] = set()  # targets whose non-array observation parts were said to be left out


def _flat_spaces(space: gym.Space, prefix: str = "") -> dict[str, gym.Space]:
    """The leaves of nested ``Dict`` / ``Tuple`` spaces as ``{dotted key: space}`` (``arm.pos``, ``0.pos``): the
    names :func:`robopretrain.data.episodes.flatten_obs` gives recorded observations (and :meth:`TargetEnv._obs` one
    step's values)."""
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        items = space.spaces.items() if isinstance(space, gym.spaces.Dict) else enumerate(space.spaces)
        out: dict[str, gym.Space] = {}
        for key, sub in items:
            for k, v in _flat_spaces(sub, f"{prefix}{key}.").items():
                if k in out:  # {"arm": {"pos": ...}, "arm.pos": ...}: one would replace the other unseen
                    raise ValueError(f"observation space: two parts flatten to the key {k!r} (a nested part and a "
                                     "key with dots of its own); rename one in the env (an ObservationWrapper)")
                out[k] = v
        return out
    return {prefix[:-1]: space}


def _as_given(shape: Sequence[int], dtype: Any) -> bool:
    """Whether a part the agent does not read as a vector keeps its shape: a picture (:func:`image_layout`) or any
    uint8 array of 2 or more dimensions (a frame stack, a grid); every other numeric part is a float32 vector."""
    return (np.dtype(dtype) == np.uint8 and len(shape) >= 2) or image_layout(shape, dtype) is not None


def _vector_space(space: gym.Space) -> gym.spaces.Box:
    """A non-picture part's space as the float32 vector :meth:`TargetEnv._obs` gives (and the converters store:
    :func:`robopretrain.data.episodes.as_part`): a ``(3, 2)`` Box as ``(6,)``, a scalar or ``Discrete`` as ``(1,)``,
    ``MultiBinary`` / ``MultiDiscrete`` as their flattened values."""
    if isinstance(space, gym.spaces.Discrete):
        low, high = np.array([space.start]), np.array([space.start + space.n - 1])
    elif isinstance(space, gym.spaces.MultiBinary):
        low, high = np.zeros(int(np.prod(space.shape))), np.ones(int(np.prod(space.shape)))
    elif isinstance(space, gym.spaces.MultiDiscrete):
        low = np.asarray(space.start).reshape(-1)
        high = low + np.asarray(space.nvec).reshape(-1) - 1
    else:
        low, high = np.asarray(space.low).reshape(-1), np.asarray(space.high).reshape(-1)
    return gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)


class TargetEnv(gym.Wrapper):
    """Renames observation parts, adds ``task_id``, flips images, derives success, reward and termination. Nested
    ``Dict`` / ``Tuple`` observations are read as dotted parts (``arm.pos``), and every part the agent reads as a
    vector (``checked``), and any other part but a picture or a uint8 array (a frame stack), as a float32 vector (a
    ``(3, 2)`` part as ``(6,)``, a scalar as ``(1,)``): the form the converters record them in
    (:func:`robopretrain.data.episodes.flatten_obs`, :func:`~robopretrain.data.episodes.as_part`), so an agent trained
    on an env's converted data acts in that env. Parts that are no arrays (a language instruction's ``Text``) are left
    out (an agent reads arrays only, and a vector env could not batch them)."""

    def __init__(self, env: gym.Env, target: Target, cameras: Sequence[str] = (),
                 image_size: int | None = None, *, checked: Sequence[str] = ()) -> None:
        super().__init__(env)
        self.target = target
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or not np.issubdtype(space.dtype, np.floating):
            raise ValueError(f"target {target.name!r}: its env's action space is {space}; the agents act in a "
                             "continuous float Box (a policy over [-1, 1]^A): discrete, binary or integer actions are "
                             "not supported (wrap the env in a gymnasium ActionWrapper whose action_space is a float "
                             "Box and whose action() maps it to the env's actions)")
        self.cameras = tuple(cameras)
        self.checked = frozenset(checked)  # the agent's vector parts (our names): finite and one shape per episode
        self.image_size = int(image_size) if image_size else None  # camera frames resized to it (None: kept)
        self._task_id = target.resolved_task_id()
        read = [*self.cameras, *sorted(self.checked)]
        shared = shared_source_key(read, target.obs_map, "obs_map")  # two parts the agent reads on one env key
        if shared:
            raise EnvContractError(f"target {target.name!r}: {shared}")
        # env key -> our part; an env key a part the agent reads takes (through obs_map or by its own name) is that
        # part's: an unread part's entry on it was the reverse map's last word, and the read part was called missing
        taken = {str(target.obs_map.get(p, p)) for p in read}
        self._reverse = {**{v: k for k, v in target.obs_map.items() if k not in read and v not in taken},
                         **{v: k for k, v in target.obs_map.items() if k in read}}
        # the env's own keys named like a part that obs_map takes from another key: left out (the mapping decides,
        # not the order of the env's dict)
        self._shadowed = {ours for ours, theirs in target.obs_map.items() if ours != theirs} - set(self._reverse)
        self._key_seen = False  # whether this episode's infos have had the success key
        self._env_keys: list[str] = []  # the env's own info keys at the last reset or step
        self._shapes: dict[str, tuple[int, ...]] = {}  # each vector part's shape at the episode's reset
        self._steps = 0  # steps since the reset (for the errors of _check_part)
        self._dropped: set[str] = set()  # the env's parts that are no arrays (text, nested dicts): left out
        self.camera_shapes: dict[str, tuple[int, int, int]] = {}  # each camera's first frame: (H, W, C)
        self._regeometry_said: set[str] = set()  # cameras warned about for frames of another geometry later
        self.observation_space = self._space(env.observation_space)

    def _space(self, space: gym.Space) -> gym.spaces.Dict:
        """The observation space of what :meth:`_obs` returns (a vector env allocates its batches from it):
        our part names, float vectors as float32, and ``task_id``."""
        items = _flat_spaces(space) if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)) else {OBSERVATION: space}
        unknown = {ours: theirs for ours, theirs in self.target.obs_map.items()
                   if theirs not in items and (ours in self.checked or ours in self.cameras)}
        if unknown:  # a typo: the agent would read the env's own key of that name, or nothing
            raise EnvContractError(f"target {self.target.name!r}: obs_map={unknown}: the env's observation has no key "
                                   f"{', '.join(map(repr, sorted(set(unknown.values()))))} (its keys: {sorted(items)})")
        out: dict[str, gym.Space] = {}
        for key, sub in items.items():
            if key == "task_id" or key in self._shadowed:
                continue
            if not isinstance(sub, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiBinary,
                                    gym.spaces.MultiDiscrete)):  # text, graphs, sequences: no part of an agent
                self._dropped.add(key)  # (and a vector env's batches could not hold them: stage 3 hung)
                continue
            ours = self._reverse.get(key, key)
            if isinstance(sub, gym.spaces.Box) and ours in self.cameras:  # as _obs gives it
                sub = gym.spaces.Box(0, 255, self._frame_shape(key, sub.shape), dtype=np.uint8)
            elif ours in self.checked or not (isinstance(sub, gym.spaces.Box) and _as_given(sub.shape, sub.dtype)):
                sub = _vector_space(sub)
            elif sub.dtype != np.uint8:
                sub = gym.spaces.Box(sub.low.astype(np.float32), sub.high.astype(np.float32), dtype=np.float32)
            out[ours] = sub
        known = int(getattr(items.get("task_id"), "n", 0))
        out["task_id"] = gym.spaces.Discrete(max(known, self._task_id + 1))
        if self._dropped and self.target.name not in _DROPPED_SAID:
            _DROPPED_SAID.add(self.target.name)
            log.info("target %r: observation part(s) %s are no arrays (%s): left out of the agent's observations",
                     self.target.name, sorted(self._dropped),
                     ", ".join(sorted({type(items[k]).__name__ for k in self._dropped})))
        return gym.spaces.Dict(out)

    def _frame_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
        try:
            return agent_frame_shape(shape, self.image_size)
        except ValueError as exc:
            raise ValueError(f"target {self.target.name!r}, observation part {key!r}: {exc}") from None

    def _note_geometry(self, camera: str, geometry: tuple[int, int, int]) -> None:
        """Record a camera's first frame geometry (``camera_shapes``: what check_env_fits reads at the start) and warn
        once where a later frame has another: each frame is resized as it comes, so a camera that changes size or
        proportions was stretched differently from the one checked, silently (a new user's finding)."""
        first = self.camera_shapes.setdefault(camera, geometry)
        if geometry != first and camera not in self._regeometry_said:
            self._regeometry_said.add(camera)
            size = f"the agent's {self.image_size}x{self.image_size}" if self.image_size else "the agent's size"
            log.warning("target %r: camera %r gives %dx%dx%d frames now (episode step %d), %dx%dx%d when it was "
                        "checked: each frame is resized to %s as it comes, so these are squeezed differently from "
                        "the frames the checks and the agent's data saw", self.target.name, camera, *geometry,
                        self._steps, *first, size)

    def _obs(self, obs: Any) -> dict[str, Any]:
        obs = flatten_obs(obs, self.target.name) if isinstance(obs, (Mapping, tuple)) else {OBSERVATION: obs}
        out: dict[str, Any] = {}
        for key, value in obs.items():
            if key in self._dropped or key in self._shadowed:
                continue
            ours = self._reverse.get(key, key)
            arr = np.asarray(value)
            if ours in self.cameras and is_camera(arr):  # only the agent's cameras: other pictures pass as given
                try:
                    self._note_geometry(ours, frame_geometry(arr.shape))
                    arr = to_agent_frame(arr, self.image_size, self.target.flip_images)
                except ValueError as exc:
                    raise ValueError(f"target {self.target.name!r}, observation part {key!r}: {exc}") from None
            elif arr.dtype.kind in "fiub" and (ours in self.checked or not _as_given(arr.shape, arr.dtype)):
                arr = arr.reshape(-1).astype(np.float32, copy=False)  # as the converters store it (as_part)
                if ours in self.checked:
                    self._check_part(key, arr)
            elif arr.dtype.kind == "f":  # a picture or frame stack the agent does not read: its shape kept
                arr = arr.astype(np.float32, copy=False)
            out[ours] = arr
        missing = [c for c in self.cameras if c not in out]
        if missing:
            raise EnvContractError(f"target {self.target.name!r}: the env gives no camera {missing} (keys: "
                                   f"{sorted(out)}); map it with obs_map to the observation key that holds it (a "
                                   "camera must be in the observation dict: frames of env.render() only film "
                                   "evaluation videos; a wrapper can put them in the observation)")
        out["task_id"] = self._task_id
        return out

    def _check_part(self, key: str, arr: np.ndarray) -> None:
        """A vector part the agent reads that turns NaN / inf, or changes shape within an episode, is the env's fault:
        refused naming it (it reached the networks, and NaN actions went back to the env, or a tensor-size error).
        Parts the agent does not read (a depth map with inf for "no return", a variable-length list) are left alone."""
        first = self._shapes.setdefault(key, arr.shape)
        if arr.shape != first:
            raise EnvContractError(f"target {self.target.name!r}: observation part {key!r} has shape {arr.shape} at "
                                   f"step {self._steps} of the episode, {first} at its reset")
        if not np.isfinite(arr).all():
            raise EnvContractError(f"target {self.target.name!r}: observation part {key!r} holds NaN or inf at step "
                                   f"{self._steps} of the episode ({arr.tolist() if arr.size <= 16 else arr.shape}); "
                                   "a sensor or simulation failure in the env (the policy would act on it)")

    @property
    def success_key_seen(self) -> bool:
        """Whether the reset or a step of this episode so far gave ``success_key`` in its info."""
        return self._key_seen

    @property
    def env_info_keys(self) -> list[str]:
        """The env's own info keys at the last reset or step (before this wrapper adds its ``success``)."""
        return list(self._env_keys)

    def _success(self, info: Mapping[str, Any]) -> bool:
        key = self.target.success_key
        if key in info:
            self._key_seen = True
            return bool(np.asarray(info[key]).any())
        return False  # not said on this step (an env may say it only at the end): checked at the episode's end

    def _check_success_key(self, env_keys: Sequence[str]) -> None:
        """At an episode's end (``env_keys``: the env's own info keys of the last step), when no step of the episode
        gave the success_key: said once per target and process. (A sparse target's key is checked at start by
        :func:`robopretrain.build.check_env_fits`'s probe step; a dense target takes none (a real robot that is not
        to move): an env may say the key only when the task is done, so an episode without it may be a failure. A
        dense target's named key was refused here, at the end of its first failed episode, which such an env, right
        as it was, always reached.)"""
        if self._key_seen:
            return
        key = self.target.success_key
        if self.target.name not in _warned_no_success:
            _warned_no_success.add(self.target.name)
            log.warning("target %r: no step of an episode had %r in its info (keys: %s), so such episodes count no "
                        "success; set the target's success_key if one of these says the task is done (an env that "
                        "puts %r in its info only on the step that succeeds shows this after a failed episode: then "
                        "nothing is wrong)", self.target.name, key, sorted(env_keys), key)

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        info = dict(info)
        self._shapes, self._steps = {}, 0
        self._env_keys = list(info)
        self._key_seen = self.target.success_key in info
        info["success"] = bool(np.asarray(info.get(self.target.success_key, False)).any())
        return self._obs(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        info = dict(info)
        env_keys = self._env_keys = list(info)  # before our "success" joins them (the warning listed it as the env's)
        success = self._success(info)
        info["success"] = success
        if self.target.sparse:
            reward = float(success)
        terminated = bool(terminated) or (success and self.target.terminate_on_success)
        if terminated or truncated:
            self._check_success_key(env_keys)
        return self._obs(obs), float(reward), terminated, bool(truncated), info


def env_factory(target: Target, cameras: Sequence[str] = (), image_size: int | None = None,
                randomization: Any = "none", *, checked: Sequence[str] = ()) -> Any:
    """A picklable zero-argument factory of :func:`make_env` (what a spawned worker calls)."""
    import functools

    return functools.partial(make_env, target, tuple(cameras), image_size, _plain(randomization),
                             checked=tuple(checked))


_CAMERA_SAID: set[str] = set()  # camera geometry notes already given in this process
ASPECT_TOLERANCE = 0.02  # relative difference of W / H below which two cameras count as the same proportions


# a data camera enlarged by more than this factor to the agent's image size, where the env's frames are not, is noted
ENLARGED_BY = 1.1


def camera_geometry_notes(where: str, seen: Mapping[str, Sequence[int]],
                          trained: Mapping[str, Sequence[int | None]] | None,
                          image_size: int | None = None) -> list[str]:
    """What differs between an env's camera frames as given (``seen``: key -> ``(H, W, C)``, :class:`TargetEnv`'s
    ``camera_shapes``) and those of the data the agent trained on (``trained``: key -> ``[H, W, C]`` as stored, C
    None where unknown; a checkpoint's ``camera_sources``): proportions (W / H beyond :data:`ASPECT_TOLERANCE`:
    both are stretched to the agent's square, so the scene is squeezed differently) and grey against colour (a grey
    frame is read as RGB with the grey in each channel). Sizes of the same proportions are not noted (each is
    resized), except data frames enlarged to the agent's ``image_size`` (by more than :data:`ENLARGED_BY`) where the
    env gives frames at least that size: the agent learnt from interpolated, soft frames and acts on sharp ones (a
    mean 4/255 per pixel at 64 -> 96 px on Meta-World). Empty when nothing differs or nothing is recorded."""
    notes = []
    for key, shape in sorted((trained or {}).items()):
        if key not in seen or shape is None or len(shape) < 2:
            continue
        (h, w, c), (th, tw) = seen[key], (int(shape[0]), int(shape[1]))
        if abs((w / h) / (tw / th) - 1.0) > ASPECT_TOLERANCE:
            notes.append(f"{where}: camera {key!r} gives {h}x{w} frames, the agent's data had {th}x{tw}: both are "
                         "stretched to the agent's square, so the scene's proportions differ from what it learnt "
                         "(another camera setting? crop or pad the env's frames to the data's proportions)")
        if image_size and min(th, tw) * ENLARGED_BY < image_size <= min(h, w) * ENLARGED_BY:
            notes.append(f"{where}: camera {key!r}: the agent learnt from the data's {th}x{tw} frames enlarged to "
                         f"its {image_size} px (interpolated, soft), and this env gives {h}x{w} frames, sharp at "
                         f"{image_size} px: the images differ from any it learnt from; train at the data's size "
                         f"(data.image_size={min(th, tw)}), or record the demos at {image_size} px")
        tc = shape[2] if len(shape) > 2 else None
        if tc is not None and (int(tc) == 1) != (c == 1):
            kinds = {True: "grey", False: "colour"}
            notes.append(f"{where}: camera {key!r} gives {kinds[c == 1]} frames, the agent's data had "
                         f"{kinds[int(tc) == 1]} ones (a grey frame is read as RGB with the grey in each channel): "
                         "the agent sees colours it did not learn from")
    return notes


def warn_camera_geometry(where: str, seen: Mapping[str, Sequence[int]],
                         trained: Mapping[str, Sequence[int | None]] | None, image_size: int | None = None
                         ) -> list[str]:
    """Log :func:`camera_geometry_notes` (each once per process); returns them."""
    notes = camera_geometry_notes(where, seen, trained, image_size)
    for note in notes:
        if note not in _CAMERA_SAID:
            _CAMERA_SAID.add(note)
            log.warning(note)
    return notes


def said_once() -> dict[str, set[Any]]:
    """What this process has said of its targets' envs once per process (the warnings kept in this module's sets):
    a copy for worker processes, whose envs would say it again (:func:`remember_said`); picklable."""
    return {name: set(globals()[name]) for name in _SAID_ONCE}


def remember_said(said: Mapping[str, Any] | None) -> None:
    """Take ``said`` (a parent's :func:`said_once`) as said in this process too: its warnings are not repeated."""
    for name, items in dict(said or {}).items():
        globals()[name].update(items)


# the module's once-per-process memories (looked up by name: a test may replace one)
_SAID_ONCE = ("_warned_no_success", "_warned_unlimited", "_warned_image_size", "_warned_inner_limit", "_NARROW_WARNED",
              "_DROPPED_SAID", "_CAMERA_SAID")


__all__ = ["AgentActionUnits", "EnvContractError", "FAMILIES", "GYM", "METAWORLD", "OBSERVATION", "SIM_ENVS",
           "Target", "TargetEnv", "as_target", "camera_geometry_notes", "env_factory", "env_time_limit",
           "episode_limit", "is_nominal", "make_env", "remember_said", "said_once", "split_env_kwargs",
           "target_of_data", "time_limit_note", "warn_camera_geometry", "warn_unmapped_renames"]
