"""sim_envs: our own MuJoCo tabletop world.

Tasks (``sim_envs.tasks``), the robot gripper and the human hand (``sim_envs.scene``), scripted experts
(``sim_envs.experts``), domain randomization (``sim_envs.randomization``) and the data-collection CLIs
(``python -m sim_envs.collect``, ``python -m sim_envs.collect_videos``), and the blind-camera ablation
(``sim_envs.wrappers.BlindCamera``). Importing the package picks a
headless OpenGL backend (EGL, else OSMesa) and registers every task as ``sim_envs/<Task>-v0``.
"""
from sim_envs.rendering import select_gl_backend

select_gl_backend()

import gymnasium as gym  # noqa: E402

from sim_envs.tasks import PRETRAIN_TASKS, TARGET_TASKS, TASKS, get_task  # noqa: E402


def env_id(task: str) -> str:
    """The gymnasium id of a task, e.g. ``sim_envs/PushBlock-v0``."""
    return f"sim_envs/{get_task(task).name}-v0"


def _register() -> None:
    for name, task in TASKS.items():
        if env_id(name) not in gym.registry:
            gym.register(env_id(name), entry_point="sim_envs.env:TabletopEnv", max_episode_steps=task.max_steps,
                         kwargs={"task": name})


_register()

__all__ = ["PRETRAIN_TASKS", "TARGET_TASKS", "TASKS", "env_id", "get_task"]
