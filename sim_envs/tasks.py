"""The task suite: what each task puts in the scene, how it resets, when it succeeds, what it observes.

Nine pretraining tasks (reach, push a block, pick-and-place onto a plate, lift, open and close a drawer,
press a button, slide a puck, push a door open) and two held-out target tasks that reuse those skills
in a new combination or with a new object (put a new object, a can, into a bowl; open a door hinged on
the other side). Rewards are sparse, ``float(success)``.

The privileged ``object`` observation has the same 18 dims for every task, so state-based multi-task runs
share one input size::

    [0:3]   main object position      [3:7]  main object quaternion (w, x, y, z)
    [7:10]  main object linear velocity
    [10:13] second point (plate, bowl, knob, button or door handle; zeros if none)
    [13]    articulation position (drawer/door/button joint; 0 if none)   [14] its velocity
    [15:18] goal position (the goal marker or the place the object should end up)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from sim_envs.env import TabletopEnv

OBJECT_DIM = 18
TABLE_X = (-0.3, 0.3)
TABLE_Y = (-0.25, 0.3)


@dataclass(frozen=True)
class Task:
    """One task of the suite. ``reset`` places things and sets ``env.goal``; ``success`` judges the state."""

    name: str
    fixtures: tuple[str, ...]
    object_bodies: tuple[str, ...]
    max_steps: int
    reset: Callable[["TabletopEnv", np.random.Generator], None]
    success: Callable[["TabletopEnv"], bool]
    main_body: str | None = None
    second: Callable[["TabletopEnv"], np.ndarray] | None = None
    joint: str | None = None
    target: bool = False
    description: str = ""
    keepout_extra: Callable[["TabletopEnv"], np.ndarray] | None = field(default=None)

    def object_state(self, env: "TabletopEnv") -> np.ndarray:
        out = np.zeros(OBJECT_DIM, dtype=np.float32)
        if self.main_body is not None:
            out[0:3] = env.body_pos(self.main_body)
            out[3:7] = env.body_quat(self.main_body)
            out[7:10] = env.body_linvel(self.main_body)
        if self.second is not None:
            out[10:13] = self.second(env)
        if self.joint is not None:
            out[13] = env.joint_qpos(self.joint)
            out[14] = env.joint_qvel(self.joint)
        out[15:18] = env.goal
        return out

    def keepout(self, env: "TabletopEnv") -> np.ndarray:
        """Table points (n, 2) that distractors must not cover: objects, goals, fixtures, the gripper."""
        pts = [env.goal[:2], env.grip_pos()[:2]]
        for body in self.object_bodies:
            pts.append(env.body_pos(body)[:2])
        if self.keepout_extra is not None:
            pts.extend(np.asarray(self.keepout_extra(env)).reshape(-1, 2))
        return np.array(pts)


# ----------------------------------------------------------------------------- placement helpers
def _uniform_xy(rng: np.random.Generator, x: tuple[float, float], y: tuple[float, float]) -> np.ndarray:
    return np.array([rng.uniform(*x), rng.uniform(*y)])


def _apart(rng: np.random.Generator, first: np.ndarray, x: tuple[float, float], y: tuple[float, float],
           min_dist: float, max_dist: float = 10.0) -> np.ndarray:
    """A point in the box [x]x[y] at a distance in [min_dist, max_dist] from ``first`` (rejection sampling)."""
    for _ in range(1000):
        p = _uniform_xy(rng, x, y)
        if min_dist <= np.linalg.norm(p - first) <= max_dist:
            return p
    raise RuntimeError(f"could not place a point {min_dist}-{max_dist} m from {first} in {x} x {y}")


def _place_free(env: "TabletopEnv", body: str, xy: np.ndarray, z: float, yaw: float = 0.0) -> None:
    if body == "puck":  # planar joints: x, y offsets from the body's rest position, and yaw
        env.set_joint_qpos("puck_x", xy[0])
        env.set_joint_qpos("puck_y", xy[1])
        env.set_joint_qpos("puck_yaw", yaw)
        return
    env.set_free_pose(body, np.array([xy[0], xy[1], z]), np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]))


# ----------------------------------------------------------------------------- tasks
def _reach_reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
    env.goal = np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.2), rng.uniform(0.05, 0.22)])
    env.set_static_pos("goal", env.goal)


def _reach_success(env: "TabletopEnv") -> bool:
    return bool(np.linalg.norm(env.grip_pos() - env.goal) < 0.03)


def _push_reset(body: str, z: float, dist: tuple[float, float]):
    def reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
        start = _uniform_xy(rng, (-0.15, 0.15), (-0.12, 0.08))
        goal = _apart(rng, start, (-0.2, 0.2), (-0.1, 0.22), *dist)
        _place_free(env, body, start, z, rng.uniform(-np.pi, np.pi) if body == "block" else 0.0)
        env.goal = np.array([goal[0], goal[1], 0.0])
        env.set_static_pos("goal", env.goal)
    return reset


def _near_goal_xy(body: str, tol: float):
    def success(env: "TabletopEnv") -> bool:
        return bool(np.linalg.norm(env.body_pos(body)[:2] - env.goal[:2]) < tol)
    return success


def _pick_place_reset(obj: str, obj_z: float, container: str, top_z: float):
    def reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
        start = _uniform_xy(rng, (-0.18, 0.18), (-0.12, 0.12))
        place = _apart(rng, start, (-0.2, 0.2), (-0.12, 0.2), 0.16, 0.32)
        _place_free(env, obj, start, obj_z, rng.uniform(-np.pi, np.pi))
        env.set_static_pos(container, np.array([place[0], place[1], 0.0]))
        env.goal = np.array([place[0], place[1], top_z])
    return reset


def _on_plate(env: "TabletopEnv") -> bool:
    p = env.body_pos("block")
    return bool(np.linalg.norm(p[:2] - env.goal[:2]) < 0.045 and p[2] < env.goal[2] + 0.03)


def _in_bowl(env: "TabletopEnv") -> bool:
    p = env.body_pos("can")
    return bool(np.linalg.norm(p[:2] - env.goal[:2]) < 0.05 and p[2] < 0.06)


def _lift_reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
    start = _uniform_xy(rng, (-0.18, 0.18), (-0.12, 0.15))
    _place_free(env, "block", start, 0.02, rng.uniform(-np.pi, np.pi))
    env.goal = np.array([start[0], start[1], 0.12])


def _lifted(env: "TabletopEnv") -> bool:
    return bool(env.body_pos("block")[2] > 0.1)


def _drawer_reset(opening: tuple[float, float]):
    def reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
        pos = _uniform_xy(rng, (-0.15, 0.15), (0.1, 0.18))
        env.set_static_pos("cabinet", np.array([pos[0], pos[1], 0.0]))
        env.set_joint_qpos("drawer_slide", rng.uniform(*opening))
        starts_closed = opening[1] < 0.05
        knob = env.site_pos_at_qpos("drawer_knob_site", "drawer_slide", 0.15 if starts_closed else 0.0)
        env.goal = knob
    return reset


def _knob(env: "TabletopEnv") -> np.ndarray:
    return env.site_pos("drawer_knob_site")


def _button_reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
    pos = _uniform_xy(rng, (-0.2, 0.2), (-0.08, 0.18))
    env.set_static_pos("button_base", np.array([pos[0], pos[1], 0.0]))
    env.goal = np.array([pos[0], pos[1], 0.06])


def _door_reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
    side = env.door_side()
    x = rng.uniform(-0.22, -0.02) if side > 0 else rng.uniform(0.02, 0.22)
    env.set_static_pos("door_frame", np.array([x, rng.uniform(0.02, 0.12), 0.0]))
    env.goal = env.door_point(radius=0.15, angle=DOOR_OPEN_ANGLE, height=0.12)


DOOR_OPEN_ANGLE = 0.9


def _door_open(env: "TabletopEnv") -> bool:
    return bool(env.joint_qpos("door_hinge") > DOOR_OPEN_ANGLE)


def _door_handle(env: "TabletopEnv") -> np.ndarray:
    return env.geom_pos("door_handle")


def _grid(x: tuple[float, float], y: tuple[float, float], step: float = 0.05) -> np.ndarray:
    """Points covering the rectangle x by y at most ``step`` apart (keep-out of a large fixture)."""
    xs = np.linspace(x[0], x[1], int(np.ceil((x[1] - x[0]) / step)) + 1)
    ys = np.linspace(y[0], y[1], int(np.ceil((y[1] - y[0]) / step)) + 1)
    return np.array([(px, py) for px in xs for py in ys])


def _drawer_keepout(env: "TabletopEnv") -> np.ndarray:
    """The cabinet's footprint and the drawer's travel out to fully open (front 0.15 m out, knob beyond)."""
    c = env.model.body_pos[env.model.body("cabinet").id]
    return _grid((c[0] - 0.11, c[0] + 0.11), (c[1] - 0.09 - 0.15 - 0.045, c[1] + 0.09))


def _door_keepout(env: "TabletopEnv") -> np.ndarray:
    """The sector the door panel sweeps from closed to fully open (1.5 rad), hinge to tip (0.18 m)."""
    return np.array([env.door_point(r, a, 0.0)[:2] for r in (0.0, 0.06, 0.12, 0.18) for a in np.linspace(0.0, 1.5, 7)])


def _ring(body: str, radius: float):
    """Points on the rim of a round fixture (plate, bowl) so distractors stay off it."""
    def points(env: "TabletopEnv") -> np.ndarray:
        a = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
        return env.body_pos(body)[:2] + radius * np.stack([np.cos(a), np.sin(a)], axis=1)
    return points


def _button_keepout(env: "TabletopEnv") -> np.ndarray:
    return env.body_pos("button_base")[:2] + 0.045 * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])


def _make_tasks() -> dict[str, Task]:
    tasks = [
        Task("Reach", ("goal_sphere",), (), 50, _reach_reset, _reach_success,
             description="move the gripper to the green sphere"),
        Task("PushBlock", ("block", "goal_disc"), ("block",), 100, _push_reset("block", 0.02, (0.1, 0.2)),
             _near_goal_xy("block", 0.035), main_body="block", description="push the red block onto the green disc"),
        Task("PickPlace", ("block", "plate"), ("block", "plate"), 120, _pick_place_reset("block", 0.02, "plate", 0.008),
             _on_plate, main_body="block", second=lambda e: e.body_pos("plate"), keepout_extra=_ring("plate", 0.07),
             description="pick up the red block and put it on the plate"),
        Task("Lift", ("block",), ("block",), 80, _lift_reset, _lifted, main_body="block",
             description="lift the red block"),
        Task("OpenDrawer", ("drawer",), ("cabinet", "drawer"), 100, _drawer_reset((0.0, 0.02)),
             lambda e: bool(e.joint_qpos("drawer_slide") > 0.1), second=_knob, joint="drawer_slide", keepout_extra=_drawer_keepout,
             description="pull the drawer open"),
        Task("CloseDrawer", ("drawer",), ("cabinet", "drawer"), 80, _drawer_reset((0.12, 0.15)),
             lambda e: bool(e.joint_qpos("drawer_slide") < 0.02), second=_knob, joint="drawer_slide", keepout_extra=_drawer_keepout,
             description="push the drawer closed"),
        Task("PressButton", ("button",), ("button_base", "button"), 60, _button_reset,
             lambda e: bool(e.joint_qpos("button_slide") < -0.012), second=lambda e: e.body_pos("button"),
             joint="button_slide", keepout_extra=_button_keepout, description="press the red button"),
        Task("SlidePuck", ("puck", "goal_disc"), ("puck",), 100, _push_reset("puck", 0.015, (0.14, 0.24)),
             _near_goal_xy("puck", 0.04), main_body="puck", description="slide the blue puck onto the green disc"),
        Task("OpenDoor", ("door_left",), ("door_frame", "door"), 100, _door_reset, _door_open,
             second=_door_handle, joint="door_hinge", keepout_extra=_door_keepout, description="push the door open (hinge on the left)"),
        # Held-out target tasks: known skills, new object or new combination.
        Task("PlaceInBowl", ("can", "bowl"), ("can", "bowl"), 120, _pick_place_reset("can", 0.035, "bowl", 0.008),
             _in_bowl, main_body="can", second=lambda e: e.body_pos("bowl"), target=True, keepout_extra=_ring("bowl", 0.08),
             description="put the can into the bowl (new object, new container)"),
        Task("OpenDoorRight", ("door_right",), ("door_frame", "door"), 100, _door_reset, _door_open,
             second=_door_handle, joint="door_hinge", target=True, keepout_extra=_door_keepout,
             description="push open a door hinged on the right (mirror of OpenDoor)"),
    ]
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _make_tasks()
PRETRAIN_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if not t.target)
TARGET_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.target)
TASK_IDS: dict[str, int] = {name: i for i, name in enumerate(TASKS)}


def get_task(name: str) -> Task:
    """The task called ``name``; a clear error listing the known tasks otherwise."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
