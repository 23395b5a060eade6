"""Scripted experts for every task: closed-loop waypoint controllers on the privileged simulator state.

The pick experts (Lift, PickPlace, PlaceInBowl) are memory-free: their action is a function of the current state,
which a learner that sees the state can imitate. The others are phase machines (what they do also depends on
which waypoints they already reached); their tasks are imitated from the state at >= 0.9 except PushBlock
(README, "Measured: do the learners learn what clean data teaches?").

``make_expert(env, noise, rng)`` returns a policy ``act(obs) -> action``; made once, it starts its phases over at
each ``env.reset()`` (``Expert.reset`` by hand is not needed). ``noise`` is the standard deviation
of Gaussian noise added to every action (then clipped to [-1, 1]); 0 is the clean expert. The same
experts drive the human hand (it shares the gripper's interface), which is how the videos are made.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from sim_envs.env import MAX_DELTA, TabletopEnv

OPEN, CLOSE = -1.0, 1.0


def move_toward(env: TabletopEnv, target: np.ndarray, grip: float, gain: float = 1.0,
                max_speed: float = 1.0) -> np.ndarray:
    """Action moving the pinch point toward ``target`` (at most ``max_speed`` of the full step), with a grip."""
    delta = (np.asarray(target) - env.grip_pos()) / MAX_DELTA * gain
    return np.concatenate([np.clip(delta, -max_speed, max_speed), [grip]])


def _near(env: TabletopEnv, target: np.ndarray, tol: float = 0.01) -> bool:
    return bool(np.linalg.norm(env.grip_pos() - target) < tol)


class Expert(ABC):
    """Base class: a phase machine. Subclasses implement ``policy`` returning a clean action."""

    def __init__(self, env: TabletopEnv, noise: float = 0.0, rng: np.random.Generator | None = None) -> None:
        self.env = env
        self.noise = float(noise)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.reset()

    def reset(self) -> None:
        self.phase = 0
        self.counter = 0
        self.episode = self.env.resets  # the env's episode this expert's phases belong to

    def next_phase(self) -> None:
        self.phase += 1
        self.counter = 0

    @abstractmethod
    def policy(self) -> np.ndarray:
        """The clean (noise-free) action for the current state."""

    def act(self, obs: Any = None) -> np.ndarray:
        if self.env.resets != self.episode:  # the env began another episode: the phases of the last one are over
            self.reset()  # (made once and reused, an expert pushed on from its last phase: 0.1 success)
        self.counter += 1
        a = self.policy()
        if self.noise > 0:
            a = a + self.rng.normal(0.0, self.noise, size=a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


class ReachExpert(Expert):
    def policy(self) -> np.ndarray:
        return move_toward(self.env, self.env.goal, OPEN)


def ramp(x: float, lo: float, hi: float) -> float:
    """0 below ``lo``, 1 above ``hi``, linear between: the experts' soft switches."""
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


class PushExpert(Expert):
    """Get behind the object (relative to the goal), lower a closed fist, and push it along the line."""

    def __init__(self, env: TabletopEnv, body: str, radius: float, speed: float = 1.0, height: float = 0.018,
                 steer: bool = False, **kw: Any) -> None:
        self.body, self.radius, self.speed, self.height, self.steer = body, radius, speed, height, steer
        super().__init__(env, **kw)

    def policy(self) -> np.ndarray:
        env = self.env
        obj = env.body_pos(self.body)
        to_goal = env.goal[:2] - obj[:2]
        dist = np.linalg.norm(to_goal)
        d = to_goal / max(dist, 1e-6)
        z = self.height
        behind = obj[:2] - d * (self.radius + 0.03)
        grip = env.grip_pos()
        rel = grip[:2] - obj[:2]
        along = float(rel @ d)
        lateral = float(np.linalg.norm(rel - along * d))
        aligned = along < -(self.radius + 0.005) and lateral < 0.012
        if self.phase == 0:  # go above the point behind the object
            target = np.array([*behind, 0.08])
            if np.linalg.norm(grip[:2] - behind) < 0.015:
                self.next_phase()
            return move_toward(env, target, CLOSE)
        if self.phase == 1:  # lower
            target = np.array([*behind, z])
            if grip[2] < z + 0.01:
                self.next_phase()
            return move_toward(env, target, CLOSE)
        if not aligned and along < 0 and lateral > 0.025:  # lost the line: go around again
            self.phase = 0
            return move_toward(env, np.array([*grip[:2], 0.08]), CLOSE)
        if self.steer:
            # aim just ahead of the contact point behind the object on the object-goal line, so the fist both
            # advances and comes back onto the line (a round puck drifts sideways off a flat fist)
            push_to = obj[:2] - d * (self.radius + 0.012) + d * min(dist, 0.03)
        else:
            # aim at the point that puts the object on the goal, correcting the lateral error
            push_to = env.goal[:2] - d * (self.radius + 0.012)
        target = np.array([*push_to, z])
        # slow down near the goal so the object does not slide past it
        return move_toward(env, target, CLOSE, gain=0.6 if dist < 0.05 else 1.0, max_speed=self.speed)


class PickExpert(Expert):
    """Grasp the object from above, lift it, carry it above the place and lower it there (or just lift).

    Memory-free (unlike the phase machines of the other experts): whether the object is held is read from the state (fingers closed on
    something, the object between them), the descent onto the object and onto the place are funnels (the
    target height falls as the horizontal error shrinks), and the carry moves sideways only as fast as the lift
    allows. Exploratory check (a plain MSE regressor on 100 clean episodes, state, 5000 updates, ``obs.min_std``
    0.05, 20 episodes): the earlier phase machine (a fixed 8-step wait to close, switches that depended on the
    history) was imitated in 0.75 (Lift) and 0.40 (PickPlace) of the episodes, this one in 1.00 and 0.90; the
    toolkit's BC on the nine prior tasks is in the README ("Measured: do the learners learn what clean data
    teaches?").
    """

    def __init__(self, env: TabletopEnv, body: str, grasp_z: float, place: bool, **kw: Any) -> None:
        self.body, self.grasp_z, self.place = body, grasp_z, place
        super().__init__(env, **kw)

    def held(self) -> bool:
        """The fingers are closed on something (not shut, not open) and the object sits between them."""
        env = self.env
        obj, grip = env.body_pos(self.body), env.grip_pos()
        return bool(0.02 < env.finger_opening() < 0.08 and np.linalg.norm(grip[:2] - obj[:2]) < 0.015
                    and abs(grip[2] - obj[2]) < 0.02)

    def policy(self) -> np.ndarray:
        env = self.env
        obj, grip, gz = env.body_pos(self.body), env.grip_pos(), self.grasp_z
        if not self.held():
            if self.place and np.linalg.norm(obj[:2] - env.goal[:2]) < 0.015 and obj[2] < env.goal[2] + gz + 0.02:
                return move_toward(env, np.array([grip[0], grip[1], 0.15]), OPEN)  # let go on the place: retreat
            xy_err = float(np.linalg.norm(grip[:2] - obj[:2]))
            if xy_err < 0.01 and grip[2] < obj[2] - 0.02 + gz + 0.008:  # around it, low enough: close
                return move_toward(env, np.array([obj[0], obj[1], gz]), CLOSE)
            # above it, open, coming down as the horizontal error shrinks
            return move_toward(env, np.array([obj[0], obj[1], gz + (0.1 - gz) * ramp(xy_err, 0.006, 0.02)]), OPEN)
        if not self.place:
            return move_toward(env, np.array([grip[0], grip[1], 0.16]), CLOSE)
        goal = env.goal
        release_z = goal[2] + gz + 0.012
        goal_err = float(np.linalg.norm(obj[:2] - goal[:2]))
        if goal_err < 0.015 and grip[2] < release_z + 0.008:  # over the place, low: let go
            return move_toward(env, grip, OPEN)
        lifted = ramp(grip[2], gz + 0.03, gz + 0.09)  # sideways only once lifted
        height = release_z + (0.15 - release_z) * ramp(goal_err, 0.008, 0.04)  # down as it nears the place
        return move_toward(env, np.array([*(grip[:2] + lifted * (goal[:2] - grip[:2])), height]), CLOSE)


def drawer_out(env: TabletopEnv) -> np.ndarray:
    """Unit world vector along which the drawer slides out (the cabinet may be turned)."""
    axis = env.data.joint("drawer_slide").xaxis.copy()
    axis[2] = 0.0
    return axis / np.linalg.norm(axis)


class OpenDrawerExpert(Expert):
    def policy(self) -> np.ndarray:
        env = self.env
        knob = env.site_pos("drawer_knob_site")
        out = drawer_out(env)
        grip = env.grip_pos()
        if self.phase == 0:
            target = knob + np.array([0, 0, 0.06])
            if np.linalg.norm(grip[:2] - knob[:2]) < 0.008:
                self.next_phase()
            return move_toward(env, target, OPEN)
        if self.phase == 1:
            if grip[2] < knob[2] + 0.006:
                self.next_phase()
            return move_toward(env, knob, OPEN)
        if self.phase == 2:
            if self.counter > 8:
                self.next_phase()
            return move_toward(env, knob, CLOSE)
        rel = grip - knob
        sideways = np.linalg.norm(rel[:2] - (rel[:2] @ out[:2]) * out[:2])
        if sideways > 0.02 or abs(rel[2]) > 0.03:  # slipped off: regrasp
            self.phase = 0
            return move_toward(env, grip + np.array([0, 0, 0.05]), OPEN)
        return move_toward(env, knob + 0.06 * out, CLOSE)


class CloseDrawerExpert(Expert):
    def policy(self) -> np.ndarray:
        env = self.env
        knob = env.site_pos("drawer_knob_site")
        out = drawer_out(env)
        grip = env.grip_pos()
        front = knob + 0.045 * out
        if self.phase == 0:
            if np.linalg.norm(grip[:2] - front[:2]) < 0.01:
                self.next_phase()
            return move_toward(env, front + np.array([0, 0, 0.06]), CLOSE)
        if self.phase == 1:
            if grip[2] < front[2] + 0.008:
                self.next_phase()
            return move_toward(env, front, CLOSE)
        return move_toward(env, knob - 0.06 * out, CLOSE)


class PressButtonExpert(Expert):
    """Above the button's cap with a closed fist, then straight down. ``suffix`` picks the button (PressLitButton:
    the lit one, read from the env's episode state)."""

    def __init__(self, env: TabletopEnv, suffix: str | Callable[[], str] = "", **kw: Any) -> None:
        self.suffix = suffix
        super().__init__(env, **kw)

    def policy(self) -> np.ndarray:
        env = self.env
        suffix = self.suffix() if callable(self.suffix) else self.suffix
        top = env.site_pos(f"button_site{suffix}")
        press_point = env.body_pos(f"button_base{suffix}")[2] + 0.06  # the task's goal height (cap top at rest: 0.08)
        grip = env.grip_pos()
        above = top + np.array([0, 0, 0.06])
        if self.phase == 0:
            if np.linalg.norm(grip[:2] - top[:2]) < 0.006:
                self.next_phase()
            return move_toward(env, above, CLOSE)
        # finger tips are 0.015 m below the pinch point: push them 0.02 m below the cap's rest height
        return move_toward(env, np.array([top[0], top[1], press_point + 0.01 + 0.015 - 0.02]), CLOSE)


class CloseDrawerPressButtonExpert(Expert):
    """The CloseDrawer expert until the drawer is shut, then the PressButton expert (up and over to the button)."""

    def __init__(self, env: TabletopEnv, **kw: Any) -> None:
        self.close = CloseDrawerExpert(env)
        self.press = PressButtonExpert(env)
        super().__init__(env, **kw)

    def reset(self) -> None:
        super().reset()
        self.close.reset()
        self.press.reset()

    def policy(self) -> np.ndarray:
        env = self.env
        if self.phase == 0:
            if env.joint_qpos("drawer_slide") < 0.006:
                self.next_phase()
            else:
                return self.close.policy()
        if self.phase == 1:  # straight up off the knob first: sliding sideways along it would drag the drawer out
            grip = env.grip_pos()
            if grip[2] > 0.1:
                self.next_phase()
            else:
                return move_toward(env, np.array([grip[0], grip[1], 0.14]), CLOSE)
        return self.press.policy()


class OpenDoorExpert(Expert):
    """Put a closed fist against the panel's front face and push it along the door's arc.

    The palm does not turn with the door: on a turned door its corner reaches toward the panel, so the fist
    comes down far enough in front of the panel that the palm clears it and the handle, then moves in.
    """

    RADIUS = 0.11
    HEIGHT = 0.035
    CLEAR = 0.04  # the palm's face stays this far in front of the panel's centre line while coming down
    TRAVEL = 0.19  # pinch-point height for moving over the door (its top is at 0.165 m)

    def palm_reach(self, angle: float) -> float:
        """How far the palm sticks out from the pinch point toward the panel (along the panel's normal)."""
        env = self.env
        n = (env.door_point(0.0, angle, 0.0, offset=1.0) - env.door_point(0.0, angle, 0.0))[:2]
        half = env.model.geom_size[env.model.geom("palm").id]
        return float(half[0] * abs(n[0]) + half[1] * abs(n[1]))

    def policy(self) -> np.ndarray:
        env = self.env
        angle = env.joint_qpos("door_hinge")
        grip = env.grip_pos()
        contact = env.door_point(self.RADIUS, angle, self.HEIGHT, offset=0.022)
        stand_off = max(0.04, self.palm_reach(angle) + self.CLEAR)
        if self.phase == 0:  # above the start point, high enough to pass over the door (it may face away)
            start = env.door_point(self.RADIUS, angle, self.TRAVEL, offset=stand_off + 0.01)
            if np.linalg.norm(grip[:2] - start[:2]) < 0.01:
                self.next_phase()
            return move_toward(env, start, CLOSE)
        if self.phase == 1:
            target = env.door_point(self.RADIUS, angle, self.HEIGHT, offset=stand_off)
            if grip[2] < self.HEIGHT + 0.008:
                self.next_phase()
            return move_toward(env, target, CLOSE)
        if np.linalg.norm(grip[:2] - contact[:2]) > stand_off + 0.01:  # lost contact: approach again
            self.phase = 0
            return move_toward(env, grip + np.array([0, 0, 0.05]), CLOSE)
        ahead = env.door_point(self.RADIUS, min(angle + 0.35, 1.45), self.HEIGHT, offset=0.01)
        return move_toward(env, ahead, CLOSE)


_EXPERTS: dict[str, Callable[..., Expert]] = {
    "Reach": ReachExpert,
    "PushBlock": lambda env, **kw: PushExpert(env, "block", 0.02, speed=0.5, **kw),
    "SlidePuck": lambda env, **kw: PushExpert(env, "puck", 0.03, speed=0.5, height=0.026, steer=True, **kw),
    "PickPlace": lambda env, **kw: PickExpert(env, "block", 0.02, place=True, **kw),
    "Lift": lambda env, **kw: PickExpert(env, "block", 0.02, place=False, **kw),
    "PlaceInBowl": lambda env, **kw: PickExpert(env, "can", 0.045, place=True, **kw),
    "OpenDrawer": OpenDrawerExpert,
    "CloseDrawer": CloseDrawerExpert,
    "PressButton": PressButtonExpert,
    "OpenDoor": OpenDoorExpert,
    "OpenDoorRight": OpenDoorExpert,
    "CloseDrawerPressButton": CloseDrawerPressButtonExpert,
    "PressLitButton": lambda env, **kw: PressButtonExpert(env, suffix=lambda: str(env.episode["lit"]), **kw),
}


def make_expert(env: TabletopEnv, noise: float = 0.0, rng: np.random.Generator | None = None) -> Expert:
    """The scripted expert for ``env``'s task (``env`` may be wrapped)."""
    base = env.unwrapped
    if not isinstance(base, TabletopEnv):
        raise TypeError(f"scripted experts need a sim_envs TabletopEnv, got {type(base).__name__}")
    if base.task.name not in _EXPERTS:
        raise KeyError(f"no scripted expert for task {base.task.name!r}; give one to sim_envs.register_task(task, "
                       f"expert=...) (experts exist for: {', '.join(_EXPERTS)})")
    return _EXPERTS[base.task.name](base, noise=noise, rng=rng)


# ----------------------------------------------------------------------------- blind replay
def record_actions(env: Any, seed: int, horizon: int | None = None) -> np.ndarray:
    """The clean expert's actions on episode ``seed`` (until it ends), padded to ``horizon`` (default: the
    task's time limit) with "stay still, keep the grip"."""
    horizon = horizon or env.unwrapped.task.max_steps
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, noise=0.0, rng=np.random.default_rng(seed))
    actions = []
    while True:
        actions.append(expert.act(obs))
        obs, _, terminated, truncated, _ = env.step(actions[-1])
        if terminated or truncated:
            break
    pad = np.zeros((max(horizon - len(actions), 0), 4), np.float32)
    pad[:, 3] = actions[-1][3]
    return np.concatenate([np.asarray(actions, np.float32), pad])


def replay_actions(env: Any, seed: int, actions: np.ndarray) -> bool:
    """Open-loop replay of ``actions`` on episode ``seed``: whether it succeeded (the episode ends on success)."""
    env.reset(seed=seed)
    for action in actions:
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return bool(info["success"])
    return False


def blind_replay(env: Any, episodes: int, donor_seed: int = 100_000) -> dict[str, list[bool]]:
    """How often a policy that does not look succeeds: the expert's actions are recorded on seeds
    ``donor_seed + i``; on seeds ``i`` (0 <= i < episodes) are replayed open loop their per-step average
    (``mean_actions``) and the recording of donor ``i`` (``other_episode``). Returns the outcomes per seed."""
    recordings = [record_actions(env, donor_seed + i) for i in range(episodes)]
    mean = np.mean(recordings, axis=0)
    return {"mean_actions": [replay_actions(env, i, mean) for i in range(episodes)],
            "other_episode": [replay_actions(env, i, recordings[i]) for i in range(episodes)]}

