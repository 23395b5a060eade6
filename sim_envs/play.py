"""Undirected "play" for the human hand: it wanders to, pokes, pushes, taps and grabs the objects of the scene.

Human video is mostly not a demonstration of the task at hand; people fiddle with whatever is on the
table. ``PlayPolicy`` imitates that with a random sequence of short motion primitives planned from the
env's privileged state (positions of the task's ``object_bodies``, their geoms and joints, ``grip_pos``):

- ``poke``: lower a closed fist beside a part of an object and push it through where that part stands:
  free objects slide or tip (in a direction that keeps them on the table), drawers slide along their
  rail, doors swing about their hinge;
- ``grab``: descend over a free object with the hand open, close, lift, carry a little, put it down, let go;
- ``tap``: press down on top of an object (a button goes down; a free object is only touched);
- ``hover``: move near an object at a random height, opening or closing the hand;
- ``wander``: go to a random point above the table.

Objects move by physical contact only. The hand follows a mocap target through a soft weld, so three
guards keep contact physical: pushes go at a moderate speed and stop when a free object starts to tip
(a fist wedging a small object against the table can launch it), and when the hand is blocked (its
target runs ahead of it, or it tilts) the primitive is dropped, the target pulled back onto the hand and
the hand lifted. The first primitive of an episode touches a movable object when there is one, so short
clips still show interaction. Every random choice comes from the ``np.random.Generator`` passed in; the
interface is the experts' ``act(obs) -> action``.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from sim_envs.env import MAX_DELTA, WORKSPACE_HIGH, WORKSPACE_LOW, TabletopEnv
from sim_envs.experts import CLOSE, OPEN, Expert, move_toward

# Where "wander" and "hover" may go: the part of the table every camera sees, and heights above it.
WANDER_LOW = np.array([-0.2, -0.15, 0.05])
WANDER_HIGH = np.array([0.2, 0.2, 0.2])
# Pushes and carries keep free objects inside this table region (x, y), well away from the edges.
KEEP_LOW = np.array([-0.22, -0.18])
KEEP_HIGH = np.array([0.22, 0.24])
# Probability of each primitive; the first primitive of an episode is drawn from the interactions only.
PRIMITIVE_WEIGHTS = {"poke": 0.35, "grab": 0.2, "tap": 0.1, "hover": 0.2, "wander": 0.15}
INTERACTIONS = ("poke", "grab", "tap")
# A movable object (free joint, slide or hinge) is this many times likelier to be picked than a static one.
MOVABLE_WEIGHT = 3.0
UP = np.array([0.0, 0.0, 1.0])
# A poke or tap stops (the hand backs off upward) once the free object's centre moves this far up or down:
# it is tipping over or riding up the hand, and the stiff hand would wedge it against the table.
TIP_TOLERANCE = 0.006
# The hand follows its mocap target through a soft weld (lagging up to ~1.4 cm at full speed). A larger
# lag means the hand is blocked (by a cabinet, a door post, the table): the target would run on, the
# weld would twist the hand round, so the primitive is abandoned and the target pulled back onto the hand.
STUCK_LAG = 0.022
# Likewise when something presses on the hand above its pinch point and the weld lets it tilt this far.
STUCK_TILT_DEG = 20.0
# The lowest point of the hand's finger tips is this far below the pinch point; pinch heights below
# LOWEST_PINCH would press the finger tips into the table.
FINGERTIP_DROP = 0.017
LOWEST_PINCH = 0.019
# Only objects at least this tall are grabbed (a flat puck squeezed between the finger tips pops out).
MIN_GRAB_HEIGHT = 0.035


@dataclass
class Waypoint:
    """Move the pinch point to ``target`` with ``grip``, at most ``speed`` of the full step per axis.

    Done when within ``tol`` of the target (and at least ``min_steps`` in), or after ``max_steps`` steps.
    """

    target: np.ndarray
    grip: float
    tol: float = 0.012
    max_steps: int = 40
    min_steps: int = 0
    speed: float = 1.0
    steps: int = 0

    def done(self, grip_pos: np.ndarray) -> bool:
        if self.steps >= self.max_steps:
            return True
        return self.steps >= self.min_steps and bool(np.linalg.norm(grip_pos - self.target) < self.tol)


@dataclass(frozen=True)
class ObjectPart:
    """A collidable part (geom) of an object: where it is, how far it reaches along a direction, how it moves."""

    body: str
    geom: int
    joint: str  # "free" (free or multi-joint body), "slide", "hinge" or "static"
    center: np.ndarray
    axis: np.ndarray | None  # world joint axis for slide and hinge joints
    anchor: np.ndarray | None  # world joint anchor for hinge joints


class PlayPolicy(Expert):
    """Random play with the objects of ``env``'s scene (see the module docstring).

    ``noise`` adds Gaussian action noise like the experts'; ``rng`` drives every random choice.
    ``primitives`` lists the (primitive, object) pairs played so far in this episode.
    """

    def __init__(self, env: TabletopEnv, noise: float = 0.0, rng: np.random.Generator | None = None) -> None:
        model = env.model
        self.objects = tuple(env.task.object_bodies)
        self.movable = tuple(n for n in self.objects if model.body_jntnum[model.body(n).id] > 0)
        super().__init__(env, noise=noise, rng=rng)

    def reset(self) -> None:
        super().reset()
        self.plan: list[Waypoint] = []
        self.guard: tuple[str, float] | None = None  # (free object, its height when a push started)
        self.stuck = 0  # steps spent pulling the target back onto a blocked hand
        self.primitives: list[tuple[str, str | None]] = []

    # ------------------------------------------------------------------ acting
    def policy(self) -> np.ndarray:
        lag = self.env.data.mocap_pos[0] - self.env.grip_pos()
        if np.linalg.norm(lag) > STUCK_LAG or self._hand_tilt_deg() > STUCK_TILT_DEG:
            return self._unstick(lag)
        if not self.plan:
            self.guard = None
            self.plan = self._next_primitive()
        if self.guard is not None and len(self.plan) > 1 and self._tipping():
            self.plan = self.plan[-1:]  # it tips over or rides up the hand: stop pushing, back off upward
            self.guard = None
        wp = self.plan[0]
        wp.steps += 1
        action = move_toward(self.env, wp.target, wp.grip)
        action[:3] = np.clip(action[:3], -wp.speed, wp.speed)
        if wp.done(self.env.grip_pos()):
            self.plan.pop(0)
        return action

    def _hand_tilt_deg(self) -> float:
        w = abs(float(self.env.data.body("gripper").xquat[0]))
        return float(np.degrees(2.0 * np.arccos(min(w, 1.0))))

    def _unstick(self, lag: np.ndarray) -> np.ndarray:
        """Pull the mocap target back toward the blocked hand, then back off upward."""
        self.stuck += 1
        grip = self.plan[0].grip if self.plan else CLOSE
        self.plan = [Waypoint(self.env.grip_pos() + np.array([0.0, 0.0, 0.05]), grip, tol=0.02, max_steps=15)]
        self.guard = None
        return np.concatenate([np.clip(-lag / MAX_DELTA, -1.0, 1.0), [grip]])

    def _tipping(self) -> bool:
        body, z0 = self.guard
        return abs(float(self.env.data.body(body).xipos[2]) - z0) > TIP_TOLERANCE

    def _next_primitive(self) -> list[Waypoint]:
        kind = self._choose_primitive()
        if kind == "wander":
            self.primitives.append((kind, None))
            return self._wander()
        part = self._choose_part(self._choose_object())
        if kind == "grab" and (part.joint != "free" or 2 * self._extent(part, UP) < MIN_GRAB_HEIGHT):
            kind = "poke"  # nothing to carry, or too flat to hold: push it instead
        if kind == "poke" and part.joint == "slide" and abs(part.axis[2]) > 0.7:
            kind = "tap"  # a vertical slide (a button) moves by pressing
        self.primitives.append((kind, part.body))
        if kind in ("poke", "tap") and part.joint == "free":
            self.guard = (part.body, float(self.env.data.body(part.body).xipos[2]))
        return {"poke": self._poke, "grab": self._grab, "tap": self._tap, "hover": self._hover}[kind](part)

    def _choose_primitive(self) -> str:
        if not self.objects:
            return "wander"
        names = list(INTERACTIONS) if (not self.primitives and self.movable) else list(PRIMITIVE_WEIGHTS)
        w = np.array([PRIMITIVE_WEIGHTS[n] for n in names])
        return str(names[int(self.rng.choice(len(names), p=w / w.sum()))])

    def _choose_object(self) -> str:
        candidates = self.movable if (not self.primitives and self.movable) else self.objects
        w = np.array([MOVABLE_WEIGHT if name in self.movable else 1.0 for name in candidates])
        return candidates[int(self.rng.choice(len(candidates), p=w / w.sum()))]

    def _choose_part(self, body: str) -> ObjectPart:
        m, d = self.env.model, self.env.data
        b = m.body(body).id
        geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == b and (m.geom_contype[g] or m.geom_conaffinity[g])]
        if not geoms:
            geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == b]
        g = int(geoms[int(self.rng.integers(len(geoms)))]) if geoms else -1
        center = d.geom_xpos[g].copy() if g >= 0 else d.xpos[b].copy()
        if m.body_jntnum[b] == 0:
            return ObjectPart(body, g, "static", center, None, None)
        j = m.body_jntadr[b]
        types = [int(m.jnt_type[j + k]) for k in range(m.body_jntnum[b])]
        if int(mujoco.mjtJoint.mjJNT_FREE) in types or len(types) > 1:
            kind = "free"  # a free body, or one moving in several directions (e.g. planar: slide x, y, hinge z)
        else:
            kind = {int(mujoco.mjtJoint.mjJNT_SLIDE): "slide", int(mujoco.mjtJoint.mjJNT_HINGE): "hinge"}.get(types[0], "static")
        return ObjectPart(body, g, kind, center, d.xaxis[j].copy(), d.xanchor[j].copy())

    def _extent(self, part: ObjectPart, direction: np.ndarray) -> float:
        """How far the part reaches from its center along the unit world ``direction``."""
        if part.geom < 0:
            return 0.02
        half = self.env.model.geom_aabb[part.geom, 3:6]
        rot = self.env.data.geom_xmat[part.geom].reshape(3, 3)
        return float(np.abs(rot.T @ direction) @ half)

    # ------------------------------------------------------------------ primitives (lists of waypoints)
    def _random_grip(self) -> float:
        return OPEN if self.rng.random() < 0.5 else CLOSE

    def _wander(self) -> list[Waypoint]:
        target = self.rng.uniform(WANDER_LOW, WANDER_HIGH)
        return [Waypoint(target, self._random_grip(), tol=0.02, max_steps=35, speed=float(self.rng.uniform(0.4, 1.0)))]

    def _hover(self, part: ObjectPart) -> list[Waypoint]:
        top = part.center[2] + self._extent(part, UP)
        offset = np.array([*self.rng.uniform(-0.06, 0.06, size=2), top + self.rng.uniform(0.04, 0.1)])
        target = np.clip(np.array([part.center[0], part.center[1], 0.0]) + offset, WORKSPACE_LOW, WORKSPACE_HIGH)
        return [Waypoint(target, self._random_grip(), tol=0.015, max_steps=35, speed=float(self.rng.uniform(0.4, 1.0))),
                Waypoint(target, self._random_grip(), tol=0.0, max_steps=int(self.rng.integers(3, 12)))]

    def _push_direction(self, part: ObjectPart) -> np.ndarray:
        """A horizontal unit vector along which pushing ``part`` makes it move (or not fall off the table)."""
        if part.joint == "slide":
            d = part.axis[:2]
            return d / max(np.linalg.norm(d), 1e-9) * self.rng.choice([-1.0, 1.0])
        if part.joint == "hinge":
            tangent = np.cross(part.axis, part.center - part.anchor)[:2]
            sign = 1.0 if self.rng.random() < 0.7 else -1.0  # mostly the way the joint opens
            return sign * tangent / max(np.linalg.norm(tangent), 1e-9)
        for _ in range(20):
            angle = self.rng.uniform(-np.pi, np.pi)
            d = np.array([np.cos(angle), np.sin(angle)])
            end = part.center[:2] + 0.12 * d
            if part.joint != "free" or (np.all(end >= KEEP_LOW) and np.all(end <= KEEP_HIGH)):
                return d
        toward_middle = (KEEP_LOW + KEEP_HIGH) / 2 - part.center[:2]
        return toward_middle / max(np.linalg.norm(toward_middle), 1e-9)

    def _poke(self, part: ObjectPart) -> list[Waypoint]:
        d = self._push_direction(part)
        reach = self._extent(part, np.array([d[0], d[1], 0.0]))
        if part.joint == "free":  # push near the bottom: a push high on a tall object tips it over
            bottom = part.center[2] - self._extent(part, UP)
            z = float(np.clip(bottom + LOWEST_PINCH + self.rng.uniform(0.0, 0.006), LOWEST_PINCH, 0.15))
        else:
            z = float(np.clip(part.center[2] + self.rng.uniform(-0.004, 0.004), LOWEST_PINCH, 0.15))
        start = part.center[:2] - d * (reach + self.rng.uniform(0.025, 0.04))
        end = part.center[:2] + d * self.rng.uniform(0.02, 0.08)
        above = z + self.rng.uniform(0.05, 0.09)
        speed = float(self.rng.uniform(0.3, 0.6))
        plan = [Waypoint(np.array([*start, above]), CLOSE, tol=0.015, max_steps=40),
                Waypoint(np.array([*start, z]), CLOSE, tol=0.01, max_steps=25, speed=0.7),
                Waypoint(np.array([*end, z]), CLOSE, tol=0.01, max_steps=40, speed=speed),
                Waypoint(np.array([*end, above]), CLOSE, tol=0.02, max_steps=20, speed=0.7)]
        return _clipped(plan)

    def _grab(self, part: ObjectPart) -> list[Waypoint]:
        c = part.center
        grasp_z = float(np.clip(c[2], LOWEST_PINCH + 0.002, 0.06))
        lift = np.array([c[0], c[1], self.rng.uniform(0.08, 0.15)])
        carry_xy = np.clip(c[:2] + self.rng.uniform(-0.08, 0.08, size=2), KEEP_LOW, KEEP_HIGH)
        carry = np.array([*carry_xy, lift[2]])
        put = np.array([*carry_xy, grasp_z + self.rng.uniform(0.005, 0.04)])
        plan = [Waypoint(np.array([c[0], c[1], 0.1]), OPEN, tol=0.01, max_steps=40),
                Waypoint(np.array([c[0], c[1], grasp_z]), OPEN, tol=0.008, max_steps=25, speed=0.7),
                Waypoint(np.array([c[0], c[1], grasp_z]), CLOSE, tol=0.0, max_steps=9),
                Waypoint(lift, CLOSE, tol=0.015, max_steps=25, speed=0.7),
                Waypoint(carry, CLOSE, tol=0.015, max_steps=30, speed=float(self.rng.uniform(0.4, 0.8))),
                Waypoint(put, CLOSE, tol=0.01, max_steps=20, speed=0.6),
                Waypoint(put, OPEN, tol=0.0, max_steps=7),
                Waypoint(put + np.array([0.0, 0.0, 0.08]), OPEN, tol=0.02, max_steps=20)]
        return _clipped(plan)

    def _tap(self, part: ObjectPart) -> list[Waypoint]:
        top = part.center[2] + self._extent(part, UP)
        xy = part.center[:2] + self.rng.uniform(-0.008, 0.008, size=2)
        # A button is pressed to the bottom of its travel (the pinch point 1.5 cm below the cap's rest
        # height, as the PressButton expert does); anything else is only touched (pressing a free object
        # into the table with a stiff hand would launch it).
        press_z = top - 0.015 if part.joint == "slide" else top + FINGERTIP_DROP
        plan = [Waypoint(np.array([*xy, top + 0.07]), CLOSE, tol=0.01, max_steps=40),
                Waypoint(np.array([*xy, press_z]), CLOSE, tol=0.0, max_steps=int(self.rng.integers(12, 22)), speed=0.6),
                Waypoint(np.array([*xy, top + 0.07]), CLOSE, tol=0.015, max_steps=20)]
        return _clipped(plan)


def _clipped(plan: list[Waypoint]) -> list[Waypoint]:
    for wp in plan:
        wp.target = np.clip(wp.target, WORKSPACE_LOW, WORKSPACE_HIGH)
    return plan


def make_play_policy(env: TabletopEnv, noise: float = 0.0, rng: np.random.Generator | None = None) -> PlayPolicy:
    """The play policy for ``env`` (which may be wrapped); make a new one after each reset."""
    base = env.unwrapped
    if not isinstance(base, TabletopEnv):
        raise TypeError(f"the play policy needs a sim_envs TabletopEnv, got {type(base).__name__}")
    return PlayPolicy(base, noise=noise, rng=rng)
