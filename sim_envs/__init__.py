"""sim_envs: our own MuJoCo tabletop world.

Tasks (``sim_envs.tasks``), the robot gripper and the human hand (``sim_envs.scene``), scripted experts
(``sim_envs.experts``), domain randomization (``sim_envs.randomization``) and the data-collection CLIs
(``python -m sim_envs.collect``, ``python -m sim_envs.collect_videos``), and the blind-camera ablation
(``sim_envs.wrappers.BlindCamera``). Importing the package picks a
headless OpenGL backend (EGL, else OSMesa) and registers every task as ``sim_envs/<Task>-v0``; one's own task
(a :class:`sim_envs.tasks.Task` on the scene's fixtures, with an optional scripted expert) is added with
:func:`register_task`.
"""
from sim_envs.rendering import select_gl_backend

select_gl_backend()

import gymnasium as gym  # noqa: E402

from typing import Any, Callable  # noqa: E402

from sim_envs.tasks import KINDS, PRETRAIN_TASKS, TARGET_TASKS, TASK_IDS, TASKS, Task, get_task  # noqa: E402


def env_id(task: str) -> str:
    """The gymnasium id of a task, e.g. ``sim_envs/PushBlock-v0``."""
    return f"sim_envs/{get_task(task).name}-v0"


def _register() -> None:
    for name, task in TASKS.items():
        if env_id(name) not in gym.registry:
            gym.register(env_id(name), entry_point="sim_envs.env:TabletopEnv", max_episode_steps=task.max_steps,
                         kwargs={"task": name})


_register()


def register_task(task: Task, expert: Callable[..., Any] | None = None) -> str:
    """Add one's own task to the suite; returns its gymnasium id (``sim_envs/<name>-v0``).

    ``task``: a :class:`sim_envs.tasks.Task` (its ``reset`` places things and sets ``env.goal``, ``success`` judges
    the state; ``fixtures`` and ``object_bodies`` name bodies of the scene, :mod:`sim_envs.scene`). It gets the
    next task id (the built-in ones keep theirs; an env made after this has one more slot in ``task_id``).
    ``expert``: ``expert(env, noise=..., rng=...) -> Expert`` (a :class:`sim_envs.experts.Expert` subclass), what
    :func:`sim_envs.experts.make_expert` gives for it. ``PRETRAIN_TASKS`` and ``TARGET_TASKS`` keep listing the
    built-in suite. The registration lives in this process: a command (``python -m sim_envs.collect``) and the
    worker processes a run spawns (collection's ``num_workers`` > 1, stage 3's asynchronous envs, evaluation's
    ``workers``) import sim_envs afresh and do not know the task; use it in this process (one collection worker,
    ``online.asynchronous=false``, evaluation ``workers=0``), or call this in a module of yours that those
    processes import. Raises ValueError for a name already taken or a
    ``kind`` that does not match ``target``."""
    from sim_envs import experts

    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} exists already; give yours another name")
    if task.kind not in KINDS or (task.kind == "prior") == task.target:
        raise ValueError(f"task {task.name}: kind {task.kind!r} does not match target={task.target}; kinds: {KINDS}")
    TASKS[task.name] = task
    TASK_IDS[task.name] = len(TASK_IDS)
    if expert is not None:
        experts._EXPERTS[task.name] = expert
    _register()
    return env_id(task.name)


__all__ = ["PRETRAIN_TASKS", "TARGET_TASKS", "TASKS", "env_id", "get_task", "register_task"]
