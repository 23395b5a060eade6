"""``TabletopEnv``: the gymnasium environment of every task, for both embodiments.

Action: [-1, 1]^4 = (dx, dy, dz, grip). The first three move the mocap target of the gripper by at most
``MAX_DELTA`` metres per step (clipped to the workspace); the gripper follows through a weld constraint
and grasps by contact and friction only. ``grip`` = +1 closes the fingers, -1 opens them fully.

Observation (dict): ``agentview_image`` uint8 (H, W, 3) when images are on, ``eye_in_hand_image`` when
asked for, ``proprio`` float32 (7,) = gripper position (3), gripper velocity (3), finger opening (1),
``object`` float32 (18,) privileged object state (layout in ``sim_envs.tasks``), ``task_id`` int.

Reward is the sparse success indicator {0, 1}; ``info["success"]`` says the same; the episode terminates on
success when ``terminate_on_success`` (default) and is truncated at the task's time limit by gymnasium's
``TimeLimit`` wrapper (registration sets ``max_episode_steps``). Domain randomization is sampled at every
``reset`` from the episode's seed.
"""
from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from sim_envs.randomization import DomainRandomizer, RandomizationConfig
from sim_envs.rendering import CameraRenderer
from sim_envs.scene import FRAME_SKIP, MAX_DISTRACTORS, SceneSpec, build_scene_xml
from sim_envs.tasks import OBJECT_DIM, TASK_IDS, Task, get_task

MAX_DELTA = 0.015
FINGER_OPEN = 0.045
WORKSPACE_LOW = np.array([-0.32, -0.3, 0.008])
WORKSPACE_HIGH = np.array([0.32, 0.32, 0.35])
PROPRIO_DIM = 7
ACTION_DIM = 4  # end-effector dx, dy, dz and the gripper, each in [-1, 1]


def as_randomization(value: str | Mapping[str, Any] | RandomizationConfig | None) -> RandomizationConfig:
    """Accept a level name, a dict of ``RandomizationConfig`` fields (a null value keeps the field's default), or a
    config. Raises ``ValueError`` for a key that is not a field, null-valued or not (its values are checked by
    :meth:`RandomizationConfig.levels`)."""
    if value is None:
        return RandomizationConfig()
    if isinstance(value, RandomizationConfig):
        return value
    if isinstance(value, str):
        return RandomizationConfig(level=value)
    fields = sorted(RandomizationConfig.__dataclass_fields__)
    unknown = sorted(set(dict(value)) - set(fields))
    if unknown:
        raise ValueError(f"randomization: unknown key(s) {unknown}; valid keys: {fields}")
    return RandomizationConfig(**{k: v for k, v in dict(value).items() if v is not None})


MAX_RENDERERS = 3  # renderers (GL contexts) an env keeps, one per image size it rendered at


class TabletopEnv(gym.Env):
    """One task of the tabletop suite (see ``sim_envs.tasks``)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1.0 / (0.004 * FRAME_SKIP)))}

    def __init__(self, task: str, image_size: int = 64, render_images: bool = True, eye_in_hand: bool = False,
                 embodiment: str = "robot", randomization: str | Mapping[str, Any] | RandomizationConfig | None = "none",
                 terminate_on_success: bool = True, max_distractors: int = MAX_DISTRACTORS,
                 camera: str = "agentview", video_cameras: bool = False, render_mode: str | None = None) -> None:
        super().__init__()
        if image_size < 16 or image_size > 512:
            raise ValueError(f"image_size={image_size} outside [16, 512]")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}; only 'rgb_array' is supported")
        self.task: Task = get_task(task)
        self.task_id = TASK_IDS[self.task.name]
        self.image_size = image_size
        self.render_images = render_images
        self.eye_in_hand = eye_in_hand
        self.embodiment = embodiment
        self.terminate_on_success = terminate_on_success
        self.camera = camera
        self.render_mode = render_mode
        spec = SceneSpec(self.task.name, self.task.fixtures, embodiment=embodiment, max_distractors=max_distractors,
                         offscreen=max(image_size, 256), video_cameras=video_cameras)
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(spec))
        self.data = mujoco.MjData(self.model)
        cams = ["agentview"] + ([c for c in _camera_names(self.model) if c.startswith("video_")])
        self.randomizer = DomainRandomizer(self.model, self.task.object_bodies, as_randomization(randomization),
                                           max_distractors, cameras=cams)
        self._grip_site = self.model.site("grip").id
        self._gripper_body = self.model.body("gripper").id
        self._gripper_qadr = self.model.jnt_qposadr[self.model.joint("gripper_free").id]
        self._finger_qadr = [self.model.jnt_qposadr[self.model.joint(n).id] for n in ("finger_l", "finger_r")]
        self._finger_dadr = [self.model.jnt_dofadr[self.model.joint(n).id] for n in ("finger_l", "finger_r")]
        self._renderers: dict[int, CameraRenderer] = {}  # by image size: one at another size is kept too
        self.goal = np.zeros(3)
        # Per-episode task state that is not in MuJoCo's (e.g. which button is lit); cleared at every reset.
        self.episode: dict[str, Any] = {}
        self.resets = 0  # episodes begun (a scripted expert made once restarts its phases on a new one)
        self.dr_params: dict[str, Any] = {}
        self._grip_cmd = -1.0

        obs_spaces: dict[str, spaces.Space] = {
            "proprio": spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
            "object": spaces.Box(-np.inf, np.inf, (OBJECT_DIM,), np.float32),
            "task_id": spaces.Discrete(len(TASK_IDS)),
        }
        if render_images:
            obs_spaces["agentview_image"] = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        if eye_in_hand:
            obs_spaces["eye_in_hand_image"] = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.resets += 1
        rng = self.np_random
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self.dr_params = self.randomizer.sample(np.random.default_rng(rng.integers(2**63)))
        self.randomizer.apply(self.dr_params)
        if "mass" in self.dr_params:
            # the model's constants computed from the masses (the mass matrix's diagonal dof_M0 of free and planar
            # bodies, subtree masses) follow the randomized masses: without this a block of 0.44x mass fell at 0.44
            # g and was pushed with its nominal inertia (a new user's finding). It sets data to qpos0, as
            # mj_resetData did; the next apply restores the constants (randomization.SET_CONST_FIELDS).
            mujoco.mj_setConst(m, d)
        start = np.array([rng.uniform(-0.12, 0.12), rng.uniform(-0.2, -0.08), rng.uniform(0.12, 0.2)])
        self._set_gripper(start)
        self.episode = {}
        self.task.reset(self, rng)
        mujoco.mj_forward(m, d)
        if self.randomizer.uses_distractors:
            # Sampled after the task so the keep-out zone knows where the objects and goals are.
            self.dr_params["distractors"] = self.randomizer.sample_distractors(
                np.random.default_rng(rng.integers(2**63)), self.task.keepout(self))
        self.randomizer.place_distractors(d, self.dr_params)
        mujoco.mj_forward(m, d)
        self._grip_cmd = -1.0
        self._settle(10)
        return self._obs(), {"success": bool(self.task.success(self)), "dr_params": self.dr_params}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (4,):
            raise ValueError(f"action must have shape (4,), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {action}")
        a = np.clip(a, -1.0, 1.0)
        target = np.clip(self.data.mocap_pos[0] + a[:3] * MAX_DELTA, WORKSPACE_LOW, WORKSPACE_HIGH)
        self.data.mocap_pos[0] = target
        self._grip_cmd = float(a[3])
        self.data.ctrl[:] = FINGER_OPEN * (1.0 - self._grip_cmd) / 2.0
        bad_before = self._instability_count()
        self._advance(FRAME_SKIP)
        if self._instability_count() != bad_before:
            # MuJoCo hit NaN/inf state or accelerations and silently reset the state: the episode is void.
            # End it as a truncation (not a failure the agent caused) and say so.
            return self._obs(), 0.0, False, True, {"success": False, "physics_unstable": True}
        if self.task.after_step is not None:
            self.task.after_step(self)
        success = bool(self.task.success(self))
        terminated = success and self.terminate_on_success
        return self._obs(), float(success), terminated, False, {"success": success, "physics_unstable": False}

    def render(self):
        return self.render_camera(self.camera)

    def __getstate__(self) -> dict[str, Any]:
        """Pickling and ``copy.deepcopy`` leave the renderers out (OpenGL contexts do not copy): the copy makes its
        own at its first image."""
        state = self.__dict__.copy()
        state["_renderers"] = {}
        return state

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers = {}

    # ------------------------------------------------------------------ observations
    def _obs(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"proprio": self.proprio(), "object": self.task.object_state(self),
                               "task_id": self.task_id}
        if self.render_images:
            obs["agentview_image"] = self.render_camera("agentview")
        if self.eye_in_hand:
            obs["eye_in_hand_image"] = self.render_camera("eye_in_hand")
        return obs

    def proprio(self) -> np.ndarray:
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_BODY, self._gripper_body, vel, 0)
        return np.concatenate([self.grip_pos(), vel[3:], [self.finger_opening()]]).astype(np.float32)

    def render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        size = size or self.image_size
        limit = int(self.model.vis.global_.offwidth)
        if not 16 <= size <= limit:
            raise ValueError(f"render size {size} outside [16, {limit}] (this env's offscreen framebuffer); "
                             f"make the env with image_size >= {size} to render that large")
        if size not in self._renderers:  # (one renderer, rebuilt at each change of size: 170 ms a frame)
            others = [s for s in self._renderers if s != self.image_size]  # least recently used first
            if len(self._renderers) >= MAX_RENDERERS and others:  # the observations' own always stays
                self._renderers.pop(others[0]).close()
            self._renderers[size] = CameraRenderer(self.model, size, size)
        else:
            self._renderers[size] = self._renderers.pop(size)  # now the most recently used
        return self._renderers[size].render(self.data, camera)

    # ------------------------------------------------------------------ state access used by tasks and experts
    def grip_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._grip_site].copy()

    def finger_opening(self) -> float:
        return float(self.data.qpos[self._finger_qadr[0]] + self.data.qpos[self._finger_qadr[1]])

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def body_quat(self, name: str) -> np.ndarray:
        return self.data.body(name).xquat.copy()

    def body_linvel(self, name: str) -> np.ndarray:
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_BODY, self.model.body(name).id, vel, 0)
        return vel[3:]

    def site_pos(self, name: str) -> np.ndarray:
        return self.data.site(name).xpos.copy()

    def geom_pos(self, name: str) -> np.ndarray:
        return self.data.geom(name).xpos.copy()

    def joint_qpos(self, name: str) -> float:
        return float(self.data.qpos[self.model.jnt_qposadr[self.model.joint(name).id]])

    def joint_qvel(self, name: str) -> float:
        return float(self.data.qvel[self.model.jnt_dofadr[self.model.joint(name).id]])

    def set_joint_qpos(self, name: str, value: float) -> None:
        self.data.qpos[self.model.jnt_qposadr[self.model.joint(name).id]] = value

    def set_free_pose(self, body: str, pos: np.ndarray, quat: np.ndarray) -> None:
        jnt = self.model.body_jntadr[self.model.body(body).id]
        adr = self.model.jnt_qposadr[jnt]
        self.data.qpos[adr:adr + 7] = np.concatenate([pos, quat])
        dadr = self.model.jnt_dofadr[jnt]
        self.data.qvel[dadr:dadr + 6] = 0.0

    def set_static_pos(self, body: str, pos: np.ndarray) -> None:
        """Move a body without joints (a fixture or the goal marker); every task reset sets it again."""
        self.model.body_pos[self.model.body(body).id] = pos

    def set_static_pose(self, body: str, pos: np.ndarray, yaw: float) -> None:
        """Move and turn (about the vertical) a body without joints; every task reset sets it again."""
        bid = self.model.body(body).id
        self.model.body_pos[bid] = pos
        self.model.body_quat[bid] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def light_button(self, index: int, on: bool) -> None:
        """Light button ``index`` of PressLitButton (bright green, glowing) or put its light out (grey)."""
        from sim_envs.scene import LIT_RGBA, UNLIT_RGBA

        cap = self.model.geom(f"button_cap{index}").id
        if on:
            self.episode["cap_matid"] = int(self.model.geom_matid[cap])
            self.model.geom_rgba[cap] = LIT_RGBA
            self.model.geom_matid[cap] = self.model.material("mat_lit").id
        else:
            self.model.geom_rgba[cap] = UNLIT_RGBA
            self.model.geom_matid[cap] = self.episode.get("cap_matid", -1)

    def site_pos_at_qpos(self, site: str, joint: str, value: float) -> np.ndarray:
        """Where ``site`` would be with ``joint`` at ``value`` (the rest of the state unchanged)."""
        old = self.joint_qpos(joint)
        self.set_joint_qpos(joint, value)
        mujoco.mj_kinematics(self.model, self.data)
        pos = self.site_pos(site)
        self.set_joint_qpos(joint, old)
        mujoco.mj_kinematics(self.model, self.data)
        return pos

    def door_side(self) -> float:
        """+1 for a door hinged on the left (panel toward +x), -1 for the mirror image."""
        return float(np.sign(self.model.jnt_axis[self.model.joint("door_hinge").id][2]))

    def door_point(self, radius: float, angle: float, height: float, offset: float = 0.0) -> np.ndarray:
        """World point on the door panel at ``radius`` from the hinge with the door at ``angle``.

        ``offset`` > 0 moves the point off the panel's front face (the side facing the robot when closed).
        Follows the door frame's turn (``set_static_pose``).
        """
        side = self.door_side()
        frame = self.model.body("door_frame").id
        hinge = self.model.body_pos[frame]
        q = self.model.body_quat[frame]
        yaw = 2.0 * np.arctan2(q[3], q[0])  # the frame is only ever turned about the vertical
        rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        u = rot @ np.array([side * np.cos(angle), np.sin(angle)])
        n = rot @ np.array([side * np.sin(angle), -np.cos(angle)])
        xy = hinge[:2] + radius * u + offset * n
        return np.array([xy[0], xy[1], height])

    # ------------------------------------------------------------------ internals
    def _instability_count(self) -> int:
        w = self.data.warning
        return int(sum(w[k].number for k in (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                                             mujoco.mjtWarning.mjWARN_BADQACC)))

    def _set_gripper(self, pos: np.ndarray) -> None:
        self.data.mocap_pos[0] = pos
        self.data.qpos[self._gripper_qadr:self._gripper_qadr + 7] = [*pos, 1.0, 0.0, 0.0, 0.0]
        for adr in self._finger_qadr:
            self.data.qpos[adr] = FINGER_OPEN
        self.data.ctrl[:] = FINGER_OPEN

    def _settle(self, steps: int) -> None:
        self._advance(steps)

    def _advance(self, steps: int) -> None:
        """``steps`` physics steps, then the positions and velocities derived from the state they end in: mj_step
        leaves ``xpos`` / ``site_xpos`` / ``cam_xpos`` / ``cvel`` (what observations, images and success read) at the
        state before its last substep, so an observation lagged its own state by up to 3 mm and the success flag
        disagreed with it near the tolerance (0.5% of steps; a new user's finding). Positions, cameras and
        velocities only: ``mj_forward`` would also rerun the constraint solver and overwrite its warm start, changing
        the trajectory itself."""
        m, d = self.model, self.data
        mujoco.mj_step(m, d, nstep=steps)
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_camlight(m, d)  # the eye-in-hand camera rides the gripper (a reviewer's finding)
        mujoco.mj_comVel(m, d)


def _camera_names(model: mujoco.MjModel) -> list[str]:
    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
