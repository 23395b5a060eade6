"""The task suite: what each task puts in the scene, how it resets, when it succeeds, what it observes.

Nine prior (pretraining) tasks: reach a goal sphere, push a block, pick-and-place onto a plate, lift, open and
close a drawer, press a button, slide a puck, push a door open. Four held-out targets, each of one kind:

- ``new_object`` (known skills, new objects): ``PlaceInBowl`` (pick-and-place a can into a bowl),
  ``OpenDoorRight`` (push open the mirror-image door, hinged on the right);
- ``new_combination`` (two known skills in one episode): ``CloseDrawerPressButton`` (push the drawer shut,
  then press the button);
- ``visual_cue`` (what to do is shown only in the image): ``PressLitButton`` (three buttons, one lit green;
  press that one; pressing another first locks the task out: the light goes off and it cannot succeed).

Every target needs vision by construction: what matters is placed over a wide range each episode (objects,
goals and fixtures over the whole visible table, doors facing any direction), so a policy that
replays a fixed action sequence succeeds <= 0.1 (``benchmarks/envs.py`` measures that "blind replay"). Rewards
are sparse, ``float(success)``.

The privileged ``object`` observation has the same 18 dims for every task, so state-based multi-task runs
share one input size; it holds what an oracle state-based agent needs::

    [0:3]   main object position      [3:7]  main object quaternion (w, x, y, z)
    [7:10]  main object linear velocity
    [10:13] second point (plate, bowl, knob, button or door handle; zeros if none)
    [13]    articulation position (drawer/door/button joint; 0 if none)   [14] its velocity
    [15:18] goal position (the goal marker or the place the object should end up)

Per task: the main object is the thing moved (block, puck, can); for the doors it is the door frame (its
position and quaternion give the hinge and the door's turn); for ``CloseDrawerPressButton`` it is the
button (the drawer's knob and slide go in [10:15] as in ``CloseDrawer``, the press point in [15:18]). For
``PressLitButton`` [10:18] describe the lit button only (as ``PressButton`` describes its one button); once
the task is locked out, [10:13] and [15:18] are zeros.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from sim_envs.scene import NUM_LIT_BUTTONS

if TYPE_CHECKING:
    from sim_envs.env import TabletopEnv

OBJECT_DIM = 18
TABLE_X = (-0.3, 0.3)
TABLE_Y = (-0.25, 0.3)
# Kinds of task: prior tasks are pretrained on; every target is of one of the three held-out kinds.
KINDS = ("prior", "new_object", "new_combination", "visual_cue")
# Where things are placed: the part of the table the agentview camera sees whole (sim_envs.scene), less a
# margin for the objects' size. Every task draws its objects and goals from (sub-boxes of) these ranges.
PLACE_X = (-0.2, 0.2)
PLACE_Y = (-0.14, 0.2)
# Success tolerances (metres). At 64 px the agentview shows the placement area at 0.84-1.04 px/cm along x and
# 0.59-0.91 px/cm along y (scene.AGENTVIEW_*; benchmarks/envs.py measures it): 4 cm is 2-4 px. Reach: the pinch point within REACH_TOL of the sphere's centre (the sphere's radius is
# 2.2 cm: the fingers touch it); pushes: the object's centre on the disc (radius 3.5 cm) within tolerance.
REACH_TOL = 0.04
PUSH_TOL = 0.035
PUCK_TOL = 0.04
PRESS_DEPTH = 0.012  # a button counts as pressed this far down (of its 2 cm travel)
DOOR_OPEN_ANGLE = 0.9
KNOB_OUT = 0.14  # the drawer knob's distance in front of the cabinet's centre, drawer closed (assets/fixtures/drawer.xml)
CABINET_YAW = 0.4  # cabinets are turned by up to this many radians either way (about 23 degrees)
LIT_BUTTONS = NUM_LIT_BUTTONS


@dataclass(frozen=True)
class Task:
    """One task of the suite. ``reset`` places things and sets ``env.goal``; ``success`` judges the state.

    ``joint`` names the articulation in [13:15] of the object state (or returns its name per episode);
    ``after_step`` (optional) updates per-episode task state after every physics step (the lock-out of
    ``PressLitButton``). ``kind`` is one of ``KINDS``; ``skills`` lists the prior tasks whose skills it uses.
    """

    name: str
    fixtures: tuple[str, ...]
    object_bodies: tuple[str, ...]
    max_steps: int
    reset: Callable[["TabletopEnv", np.random.Generator], None]
    success: Callable[["TabletopEnv"], bool]
    main_body: str | None = None
    second: Callable[["TabletopEnv"], np.ndarray] | None = None
    joint: str | Callable[["TabletopEnv"], str | None] | None = None
    target: bool = False
    description: str = ""
    keepout_extra: Callable[["TabletopEnv"], np.ndarray] | None = field(default=None)
    kind: str = "prior"
    skills: tuple[str, ...] = ()
    tolerance: str = ""
    after_step: Callable[["TabletopEnv"], None] | None = None

    def __reduce_ex__(self, protocol: Any) -> Any:
        """A task of the built-in suite pickles (and deep-copies) as its name: its functions are closures that do not.
        Any other (one's own, registered or not; a suite task changed with ``dataclasses.replace``) pickles by value,
        its functions by reference: unpickled in another process, it imports their module (which may register it)."""
        if self.name in BUILT_IN and TASKS.get(self.name) is self:
            return get_task, (self.name,)
        return super().__reduce_ex__(protocol)

    def joint_name(self, env: "TabletopEnv") -> str | None:
        return self.joint(env) if callable(self.joint) else self.joint

    def object_state(self, env: "TabletopEnv") -> np.ndarray:
        out = np.zeros(OBJECT_DIM, dtype=np.float32)
        if self.main_body is not None:
            out[0:3] = env.body_pos(self.main_body)
            out[3:7] = env.body_quat(self.main_body)
            out[7:10] = env.body_linvel(self.main_body)
        if self.second is not None:
            out[10:13] = self.second(env)
        joint = self.joint_name(env)
        if joint is not None:
            out[13] = env.joint_qpos(joint)
            out[14] = env.joint_qvel(joint)
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
    """The sphere anywhere over the placement area, at least 2 x REACH_TOL from the pinch point's start (the
    gripper's mocap target, already placed): an episode never starts solved (a one-step episode, which stage 2
    refuses; 1.8% of resets before this rule)."""
    start = env.data.mocap_pos[0].copy()
    for _ in range(1000):
        env.goal = np.array([rng.uniform(*PLACE_X), rng.uniform(-0.15, 0.22), rng.uniform(0.04, 0.2)])
        if np.linalg.norm(env.goal - start) >= 2 * REACH_TOL:
            break
    env.set_static_pos("goal", env.goal)
    env.set_static_pos("goal_ground", np.array([env.goal[0], env.goal[1], 0.0012]))


def _reach_success(env: "TabletopEnv") -> bool:
    return bool(np.linalg.norm(env.grip_pos() - env.goal) < REACH_TOL)


def _push_reset(body: str, z: float, dist: tuple[float, float]):
    def reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
        start = _uniform_xy(rng, (-0.18, 0.18), (-0.12, 0.14))
        goal = _apart(rng, start, PLACE_X, (-0.12, 0.22), *dist)
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
        start = _uniform_xy(rng, PLACE_X, PLACE_Y)
        place = _apart(rng, start, PLACE_X, PLACE_Y, 0.16, 0.36)
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
    start = _uniform_xy(rng, PLACE_X, PLACE_Y)
    _place_free(env, "block", start, 0.02, rng.uniform(-np.pi, np.pi))
    env.goal = np.array([start[0], start[1], 0.12])


def _lifted(env: "TabletopEnv") -> bool:
    return bool(env.body_pos("block")[2] > 0.1)


def _place_cabinet(env: "TabletopEnv", rng: np.random.Generator, x: tuple[float, float],
                   opening: tuple[float, float]) -> None:
    """The cabinet at x in ``x``, y in [0.1, 0.2], turned by up to CABINET_YAW, drawer opened by ``opening``;
    drawn again until the drawer, pulled fully out, still ends in view."""
    for _ in range(1000):
        yaw = rng.uniform(-CABINET_YAW, CABINET_YAW)
        pos = np.array([rng.uniform(*x), rng.uniform(0.1, 0.2), 0.0])
        knob_out = pos[:2] + _rot(yaw) @ np.array([0.0, -(0.15 + KNOB_OUT + 0.012)])
        if abs(knob_out[0]) <= 0.22 and knob_out[1] >= -0.19:
            break
    env.set_static_pose("cabinet", pos, yaw)
    env.set_joint_qpos("drawer_slide", rng.uniform(*opening))


def _drawer_reset(opening: tuple[float, float]):
    def reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
        _place_cabinet(env, rng, (-0.16, 0.16), opening)
        starts_closed = opening[1] < 0.05
        env.goal = env.site_pos_at_qpos("drawer_knob_site", "drawer_slide", 0.15 if starts_closed else 0.0)
    return reset


def _knob(env: "TabletopEnv") -> np.ndarray:
    return env.site_pos("drawer_knob_site")


def _drawer_closed(env: "TabletopEnv") -> bool:
    return bool(env.joint_qpos("drawer_slide") < 0.02)


def _place_button(env: "TabletopEnv", xy: np.ndarray, suffix: str = "") -> np.ndarray:
    """Put a button's pedestal at ``xy``; returns the point the finger tips press (its goal)."""
    env.set_static_pos(f"button_base{suffix}", np.array([xy[0], xy[1], 0.0]))
    return np.array([xy[0], xy[1], 0.06])


def _button_reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
    env.goal = _place_button(env, _uniform_xy(rng, PLACE_X, PLACE_Y))


def _pressed(suffix: str = ""):
    def success(env: "TabletopEnv") -> bool:
        return bool(env.joint_qpos(f"button_slide{suffix}") < -PRESS_DEPTH)
    return success


def _close_and_press_reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
    """Cabinet (drawer open) on one side of the table, the button on the other, the side drawn per episode;
    the button is kept clear of the cabinet and of the drawer's travel."""
    side = rng.choice([-1.0, 1.0])
    _place_cabinet(env, rng, tuple(sorted((side * 0.06, side * 0.16))), (0.12, 0.15))
    footprint = _drawer_keepout(env)
    for _ in range(1000):
        xy = np.array([-side * rng.uniform(0.12, 0.22), rng.uniform(*PLACE_Y)])
        if np.min(np.linalg.norm(footprint - xy, axis=1)) > 0.09:
            break
    else:
        raise RuntimeError("could not place the button clear of the cabinet")
    env.goal = _place_button(env, xy)


def _closed_and_pressed(env: "TabletopEnv") -> bool:
    return _drawer_closed(env) and _pressed()(env)


def _lit_reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
    """Three buttons at least 13 cm apart over the table; one, drawn per episode, lit."""
    points: list[np.ndarray] = []
    while len(points) < LIT_BUTTONS:
        p = _uniform_xy(rng, PLACE_X, PLACE_Y)
        if all(np.linalg.norm(p - q) > 0.13 for q in points):
            points.append(p)
    goals = [_place_button(env, p, str(k)) for k, p in enumerate(points)]
    lit = int(rng.integers(LIT_BUTTONS))
    env.episode.update(lit=lit, locked_out=False)
    env.light_button(lit, True)
    env.goal = goals[lit]


def _lit_after_step(env: "TabletopEnv") -> None:
    """Pressing an unlit button first locks the task out for the rest of the episode: the light goes off."""
    if env.episode["locked_out"]:
        return
    lit = env.episode["lit"]
    if any(env.joint_qpos(f"button_slide{k}") < -PRESS_DEPTH for k in range(LIT_BUTTONS) if k != lit):
        env.episode["locked_out"] = True
        env.light_button(lit, False)
        env.goal = np.zeros(3)


def _lit_pressed(env: "TabletopEnv") -> bool:
    return not env.episode["locked_out"] and _pressed(str(env.episode["lit"]))(env)


def _lit_button(env: "TabletopEnv") -> np.ndarray:
    return np.zeros(3) if env.episode["locked_out"] else env.body_pos(f"button{env.episode['lit']}")


def _door_reset(env: "TabletopEnv", rng: np.random.Generator) -> None:
    """The door's panel centre over the middle of the table, the door facing any direction (turned by a yaw
    drawn from the full circle): which way to push, and from where, is seen only in the image. Drawn again
    until the panel's sweep (closed to fully open) stays on the part of the table the camera sees."""
    side = env.door_side()
    for _ in range(1000):
        yaw = rng.uniform(-np.pi, np.pi)
        centre = _uniform_xy(rng, (-0.13, 0.13), (-0.03, 0.17))
        hinge = centre - 0.09 * side * np.array([np.cos(yaw), np.sin(yaw)])
        env.set_static_pose("door_frame", np.array([hinge[0], hinge[1], 0.0]), yaw)
        sweep = _door_keepout(env)
        if np.all(np.abs(sweep[:, 0]) <= 0.27) and np.all((sweep[:, 1] >= -0.2) & (sweep[:, 1] <= 0.3)):
            break
    env.goal = env.door_point(radius=0.15, angle=DOOR_OPEN_ANGLE, height=0.12)


def _door_open(env: "TabletopEnv") -> bool:
    return bool(env.joint_qpos("door_hinge") > DOOR_OPEN_ANGLE)


def _door_handle(env: "TabletopEnv") -> np.ndarray:
    return env.geom_pos("door_handle")


def _grid(x: tuple[float, float], y: tuple[float, float], step: float = 0.05) -> np.ndarray:
    """Points covering the rectangle x by y at most ``step`` apart (keep-out of a large fixture)."""
    xs = np.linspace(x[0], x[1], int(np.ceil((x[1] - x[0]) / step)) + 1)
    ys = np.linspace(y[0], y[1], int(np.ceil((y[1] - y[0]) / step)) + 1)
    return np.array([(px, py) for px in xs for py in ys])


def _rot(yaw: float) -> np.ndarray:
    return np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])


def _yaw(quat: np.ndarray) -> float:
    """Turn about the vertical of a quaternion (w, x, y, z) that only turns about the vertical."""
    return float(2.0 * np.arctan2(quat[3], quat[0]))


def _drawer_keepout(env: "TabletopEnv") -> np.ndarray:
    """The cabinet's footprint and the drawer's travel out to fully open (front 0.15 m out, knob beyond)."""
    bid = env.model.body("cabinet").id
    c, yaw = env.model.body_pos[bid], _yaw(env.model.body_quat[bid])
    local = _grid((-0.11, 0.11), (-0.15 - KNOB_OUT - 0.03, 0.09))
    return c[:2] + local @ _rot(yaw).T


def _door_keepout(env: "TabletopEnv") -> np.ndarray:
    """The sector the door panel sweeps from closed to fully open (1.5 rad), hinge to tip (0.18 m)."""
    return np.array([env.door_point(r, a, 0.0)[:2] for r in (0.0, 0.06, 0.12, 0.18) for a in np.linspace(0.0, 1.5, 7)])


def _ring(body: str, radius: float):
    """Points on the rim of a round fixture (plate, bowl) so distractors stay off it."""
    def points(env: "TabletopEnv") -> np.ndarray:
        a = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
        return env.body_pos(body)[:2] + radius * np.stack([np.cos(a), np.sin(a)], axis=1)
    return points


def _button_keepout(*suffixes: str):
    def points(env: "TabletopEnv") -> np.ndarray:
        corners = 0.045 * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
        return np.concatenate([env.body_pos(f"button_base{s}")[:2] + corners for s in suffixes])
    return points


def _both(*fns: Callable[["TabletopEnv"], np.ndarray]):
    def points(env: "TabletopEnv") -> np.ndarray:
        return np.concatenate([np.asarray(f(env)).reshape(-1, 2) for f in fns])
    return points


def _make_tasks() -> dict[str, Task]:
    press = f"button cap pressed > {PRESS_DEPTH * 100:.1f} cm"
    tasks = [
        Task("Reach", ("goal_sphere",), (), 50, _reach_reset, _reach_success,
             description="move the gripper to the green sphere",
             tolerance=f"pinch point within {REACH_TOL * 100:.0f} cm of the sphere's centre"),
        Task("PushBlock", ("block", "goal_disc"), ("block",), 100, _push_reset("block", 0.02, (0.1, 0.22)),
             _near_goal_xy("block", PUSH_TOL), main_body="block", description="push the red block onto the green disc",
             tolerance=f"block centre within {PUSH_TOL * 100:.1f} cm of the disc's"),
        Task("PickPlace", ("block", "plate"), ("block", "plate"), 120, _pick_place_reset("block", 0.02, "plate", 0.008),
             _on_plate, main_body="block", second=lambda e: e.body_pos("plate"), keepout_extra=_ring("plate", 0.07),
             description="pick up the red block and put it on the plate",
             tolerance="block centre within 4.5 cm of the plate's, at most 3 cm above it (gripped or not)"),
        Task("Lift", ("block",), ("block",), 80, _lift_reset, _lifted, main_body="block",
             description="lift the red block", tolerance="block 10 cm above the table"),
        Task("OpenDrawer", ("drawer",), ("cabinet", "drawer"), 100, _drawer_reset((0.0, 0.02)),
             lambda e: bool(e.joint_qpos("drawer_slide") > 0.1), second=_knob, joint="drawer_slide", keepout_extra=_drawer_keepout,
             description="pull the drawer open", tolerance="drawer pulled out > 10 cm"),
        Task("CloseDrawer", ("drawer",), ("cabinet", "drawer"), 80, _drawer_reset((0.12, 0.15)),
             _drawer_closed, second=_knob, joint="drawer_slide", keepout_extra=_drawer_keepout,
             description="push the drawer closed", tolerance="drawer pushed in to < 2 cm"),
        Task("PressButton", ("button",), ("button_base", "button"), 60, _button_reset,
             _pressed(), second=lambda e: e.body_pos("button"), joint="button_slide", keepout_extra=_button_keepout(""),
             description="press the red button", tolerance=press),
        Task("SlidePuck", ("puck", "goal_disc"), ("puck",), 100, _push_reset("puck", 0.015, (0.14, 0.26)),
             _near_goal_xy("puck", PUCK_TOL), main_body="puck", description="slide the blue puck onto the green disc",
             tolerance=f"puck centre within {PUCK_TOL * 100:.0f} cm of the disc's"),
        Task("OpenDoor", ("door_left",), ("door_frame", "door"), 100, _door_reset, _door_open, main_body="door_frame",
             second=_door_handle, joint="door_hinge", keepout_extra=_door_keepout, description="push the door open (hinge on the left)",
             tolerance=f"door open > {DOOR_OPEN_ANGLE} rad"),
        # Held-out targets (ids after the prior tasks', in the order they were added).
        Task("PlaceInBowl", ("can", "bowl"), ("can", "bowl"), 120, _pick_place_reset("can", 0.035, "bowl", 0.008),
             _in_bowl, main_body="can", second=lambda e: e.body_pos("bowl"), target=True, keepout_extra=_ring("bowl", 0.08),
             description="put the can into the bowl (new object, new container)", kind="new_object",
             skills=("PickPlace", "Lift"), tolerance="can centre within 5 cm of the bowl's, below 6 cm (any pose)"),
        Task("OpenDoorRight", ("door_right",), ("door_frame", "door"), 100, _door_reset, _door_open, main_body="door_frame",
             second=_door_handle, joint="door_hinge", target=True, keepout_extra=_door_keepout,
             description="push open a door hinged on the right (mirror of OpenDoor)", kind="new_object",
             skills=("OpenDoor",), tolerance=f"door open > {DOOR_OPEN_ANGLE} rad"),
        Task("CloseDrawerPressButton", ("drawer", "button"), ("cabinet", "drawer", "button_base", "button"), 100,
             _close_and_press_reset, _closed_and_pressed, main_body="button", second=_knob, joint="drawer_slide",
             target=True, keepout_extra=_both(_drawer_keepout, _button_keepout("")),
             description="push the drawer closed and press the button (two known skills in one episode)",
             kind="new_combination", skills=("CloseDrawer", "PressButton"),
             tolerance=f"drawer in to < 2 cm and (then) {press}"),
        Task("PressLitButton", ("buttons",), tuple(f"{b}{k}" for k in range(LIT_BUTTONS) for b in ("button_base", "button")),
             60, _lit_reset, _lit_pressed, second=_lit_button, joint=lambda e: f"button_slide{e.episode['lit']}",
             target=True, keepout_extra=_button_keepout(*(str(k) for k in range(LIT_BUTTONS))),
             after_step=_lit_after_step,
             description="press the lit button (which of three glows green is shown only in the image)",
             kind="visual_cue", skills=("PressButton",),
             tolerance=f"the lit {press}, no other pressed before"),
    ]
    for t in tasks:
        if t.kind not in KINDS or (t.kind == "prior") == t.target:
            raise ValueError(f"task {t.name}: kind {t.kind!r} does not match target={t.target}")
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _make_tasks()
BUILT_IN: frozenset[str] = frozenset(TASKS)  # (sim_envs.register_task adds to TASKS)
PRETRAIN_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if not t.target)
TARGET_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.target)
# Ids are positions in TASKS: stable, new tasks are appended.
TASK_IDS: dict[str, int] = {name: i for i, name in enumerate(TASKS)}


def get_task(name: str) -> Task:
    """The task called ``name``; a clear error listing the known tasks otherwise."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
