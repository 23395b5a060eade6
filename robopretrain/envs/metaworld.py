"""Meta-World (v3) as a target family: one task as a gymnasium env that looks like ours.

``MetaWorldEnv(task="drawer-open-v3", ...)`` (also ``gym.make("robopretrain/MetaWorld-drawer-open-v3")``)
wraps one Meta-World task (needs the optional extra: ``pip install -e '.[metaworld]'``):

- action: Meta-World's own action space, read from the task's env (a 1-D Box; metaworld 3.1's Sawyer: [-1, 1]^4 =
  (dx, dy, dz, grip), the hand moving by at most 1 cm per step), actions clipped to its bounds;
- observation (dict): ``proprio`` float32 (4,) = state[0:4] (hand xyz, gripper opening in [0, 1]);
  ``object`` float32 (17,) = state[4:18] (up to two objects, each position (3) + quaternion (4), zero padded)
  + state[36:39] (goal position); ``task_id`` int (``TASK_IDS``); one uint8 (H, W, 3) image per camera,
  upright, named by ``camera_key`` (``corner`` -> ``agentview_image``). The 39-D Meta-World state itself
  (which repeats the previous frame's 18 values in [18:36]) is ``env.state`` and is not in the observation;
- rendering: shadows, reflections, skybox and multisampling off, and the render meshes simplified
  (``mesh_cell``, see ``simplify_render_meshes``; physics untouched);
- reward: ``float(info["success"])`` (``reward="sparse"``, default), or Meta-World's own shaped reward in
  [0, 10] (``reward="dense"``); ``info`` always carries ``success`` (bool) and ``dense_reward``;
- the episode terminates on success (``terminate_on_success``) and is truncated after ``max_episode_steps``
  (Meta-World's ``max_path_length``, 500, by default), or when the physics goes unstable
  (``info["physics_unstable"]``);
- ``reset(seed=s)`` draws the task's object/goal positions (uniform over Meta-World's reset space) from
  ``s``: the same seed gives the same initial state. The reset observation and image are those of the state the
  physics is in (Meta-World's own reset returns, in some tasks, positions from before its last placement).
  Meta-World's own MT1 instead fixes 50 positions per task.

The goal is always in ``object`` (Meta-World's MT benchmarks observe it, its ML benchmarks zero it); it is
also drawn in the images (Meta-World's goal marker). The env is built with plain keyword arguments and makes
its renderer on first use, so ``functools.partial(MetaWorldEnv, task=...)`` can be sent to a spawned worker.
Task names, ids and the MT10 prior -> held-out target split (``mt10_split``) need no Meta-World install.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Meta-World's MT10, in its own order: these get task ids 0-9.
MT10_TASKS: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)
# The other 40 v3 tasks in Meta-World's ALL_V3_ENVIRONMENTS order: task ids 10-49. Written out here (not
# read from metaworld) so that ids never move with a Meta-World release.
OTHER_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-wall-v3",
    "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3", "coffee-push-v3",
    "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-unlock-v3", "hand-insert-v3",
    "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3", "handle-press-v3",
    "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3",
    "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3",
    "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3", "push-wall-v3", "push-back-v3",
    "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3",
)
ALL_TASKS: tuple[str, ...] = MT10_TASKS + OTHER_TASKS
TASK_IDS: dict[str, int] = {name: i for i, name in enumerate(ALL_TASKS)}
# Held out of MT10 by default: its prior tasks include drawer-close (same drawer, same handle) and
# window-open (pull a handle sideways); Meta-World's own ML10 holds it out of training too.
DEFAULT_TARGET = "drawer-open-v3"

# Index map of Meta-World's 39-D state -> our keys.
PROPRIO_SLICE = slice(0, 4)    # hand xyz (3), gripper opening (1)
OBJECT_SLICE = slice(4, 18)    # object 1 xyz + quat, object 2 xyz + quat (zeros when one object)
GOAL_SLICE = slice(36, 39)     # goal xyz ([18:36] is the previous frame's [0:18], dropped)
PROPRIO_DIM = PROPRIO_SLICE.stop - PROPRIO_SLICE.start                                        # 4
OBJECT_DIM = OBJECT_SLICE.stop - OBJECT_SLICE.start + GOAL_SLICE.stop - GOAL_SLICE.start      # 17: objects + goal
MAX_PATH_LENGTH = 500          # Meta-World's time limit for every v3 task

# Meta-World's cameras; every one can be asked for, these two get our sim's names.
CAMERAS: tuple[str, ...] = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
CAMERA_KEYS: dict[str, str] = {"corner": "agentview_image", "gripperPOV": "eye_in_hand_image"}
DEFAULT_CAMERAS: tuple[str, ...] = ("corner",)
REWARDS = ("sparse", "dense")
# Render meshes are simplified by vertex clustering on a grid of this many metres (Sawyer's arm is ~68k
# triangles, which dominate software rendering; at 0.01 it is ~14k: the same picture at 64 px for about half
# the CPU time per rendered step, benchmarks/metaworld_envs.py).
MESH_CELL = 0.01
ENTRY_POINT = "robopretrain.envs.metaworld:MetaWorldEnv"
ENV_ID_PREFIX = "robopretrain/MetaWorld-"


def task_name(name: str) -> str:
    """The Meta-World v3 task name of ``name`` (``drawer-open`` and ``drawer-open-v3`` both work)."""
    full = name if name.endswith("-v3") else f"{name}-v3"
    if full not in TASK_IDS:
        v3 = f"{name[:-3]}-v3" if name.endswith(("-v1", "-v2")) else None
        if v3 in TASK_IDS:
            raise ValueError(f"Meta-World task {name!r}: metaworld 3 serves the v3 tasks only; use {v3!r} (the same "
                             "task, v3 physics and rewards)")
        raise ValueError(f"unknown Meta-World task {name!r}; expected one of the v3 tasks: {', '.join(ALL_TASKS)}")
    return full


def camera_key(camera: str) -> str:
    """Our observation key of a Meta-World camera: ``corner`` -> ``agentview_image``, ``gripperPOV`` ->
    ``eye_in_hand_image``, any other ``<camera>`` -> ``<camera>_image``."""
    if camera not in CAMERAS:
        raise ValueError(f"unknown Meta-World camera {camera!r}; expected one of {', '.join(CAMERAS)}")
    return CAMERA_KEYS.get(camera, f"{camera}_image")


def env_id(task: str) -> str:
    """The gymnasium id of a task, e.g. ``robopretrain/MetaWorld-drawer-open-v3``."""
    return ENV_ID_PREFIX + task_name(task)


@dataclass(frozen=True)
class Split:
    """Prior tasks (demos for stage 2) and one held-out target task (stage 3)."""

    prior: tuple[str, ...]
    target: str


def mt10_split(target: str = DEFAULT_TARGET) -> Split:
    """MT10-style split: the MT10 tasks other than ``target`` are the prior, ``target`` is held out.

    A target outside MT10 (e.g. ``door-close``) keeps all ten MT10 tasks as the prior.
    """
    target = task_name(target)
    return Split(tuple(t for t in MT10_TASKS if t != target), target)


def register_envs() -> None:
    """Register every v3 task as ``robopretrain/MetaWorld-<task>`` (idempotent; imports no Meta-World)."""
    for task in ALL_TASKS:
        if env_id(task) not in gym.registry:
            gym.register(env_id(task), entry_point=ENTRY_POINT, max_episode_steps=MAX_PATH_LENGTH,
                         kwargs={"task": task})


def metaworld_state(obs: Mapping[str, Any]) -> np.ndarray:
    """Meta-World's 39-D state from our ``proprio`` and ``object`` (a batch too: (..., 4), (..., 17) -> (..., 39)).

    The previous frame's [18:36] is filled with the current one, as Meta-World's own reset does.
    """
    proprio = np.asarray(obs["proprio"], np.float64)
    obj = np.asarray(obs["object"], np.float64)
    frame = np.concatenate([proprio, obj[..., :OBJECT_DIM - 3]], axis=-1)
    return np.concatenate([frame, frame, obj[..., OBJECT_DIM - 3:]], axis=-1)


def simplify_render_meshes(model: Any, cell: float, min_faces: int = 500) -> tuple[int, int]:
    """Fewer triangles for the renderer: vertex clustering of every mesh with ``min_faces`` or more faces.

    Vertices in one ``cell``-metre grid cell (mesh frame) merge into the first of them; triangles that collapse
    or repeat are dropped, the rest are packed at the front of the mesh's face range and ``mesh_facenum``
    shrinks. Only the faces change: physics (collisions use the convex hulls built at compile time), inertia
    and vertex positions do not; ray casting against meshes (``mj_ray``) would see the coarser surface.
    Call before the renderer is made (it uploads the meshes once). Returns (faces before, faces after).
    """
    before = after = 0
    for i in range(model.nmesh):
        n, adr = int(model.mesh_facenum[i]), int(model.mesh_faceadr[i])
        before += n
        if n < min_faces:
            after += n
            continue
        verts = model.mesh_vert[model.mesh_vertadr[i]:model.mesh_vertadr[i] + model.mesh_vertnum[i]]
        _, first, cluster = np.unique(np.floor(verts / cell).astype(np.int64), axis=0, return_index=True,
                                      return_inverse=True)
        faces = first[cluster.ravel()][model.mesh_face[adr:adr + n]]
        distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
        _, unique = np.unique(np.sort(faces[distinct], axis=1), axis=0, return_index=True)
        keep = np.flatnonzero(distinct)[np.sort(unique)]
        k = len(keep)
        model.mesh_face[adr:adr + k] = faces[keep]
        model.mesh_facenormal[adr:adr + k] = model.mesh_facenormal[adr:adr + n][keep]
        if model.mesh_facetexcoord.size:
            model.mesh_facetexcoord[adr:adr + k] = model.mesh_facetexcoord[adr:adr + n][keep]
        model.mesh_facenum[i] = k
        after += k
    return before, after


def box_action_space(space: Any, where: str) -> spaces.Box:
    """``space`` as a float32 :class:`gymnasium.spaces.Box` of the same shape and bounds: the action space an adapter
    exposes, its size read from the wrapped env. Raises ValueError naming ``where`` when ``space`` is not a 1-D Box
    (a discrete or dict action space has no continuous action vector for the toolkit's policies)."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{where} has the action space {space}; the toolkit needs a 1-D Box (continuous actions)")
    return spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32)


class MetaWorldMissingError(ImportError, ValueError):
    """Meta-World, an optional extra, is not installed: an ``ImportError`` that the entry points report in one
    ``error:`` line (a ``ValueError`` too) naming the extra to install."""


def import_metaworld() -> Any:
    """``metaworld.env_dict``; :class:`MetaWorldMissingError` when Meta-World is not installed."""
    try:
        import metaworld.env_dict  # noqa: F401  (heavy: loads all 50 env classes)
    except ImportError as exc:
        raise MetaWorldMissingError(f"Meta-World is not installed ({exc}); install the extra: pip install -e "
                                    "'.[metaworld]' (or pip install 'metaworld==3.1.*')") from exc
    return metaworld.env_dict


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with our observation keys, sparse success reward and seeded resets."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task: str = DEFAULT_TARGET, image_size: int = 64, render_images: bool = True,
                 cameras: Sequence[str] | Mapping[str, str] = DEFAULT_CAMERAS, max_episode_steps: int | None = None,
                 reward: str = "sparse", terminate_on_success: bool = True, mesh_cell: float = MESH_CELL,
                 render_mode: str | None = None) -> None:
        super().__init__()
        import sim_envs.rendering as rendering  # picks the headless GL backend before mujoco is imported

        rendering.select_gl_backend()
        self.task = task_name(task)
        self.task_id = TASK_IDS[self.task]
        if not 16 <= int(image_size) <= 512:
            raise ValueError(f"image_size={image_size}; expected an int in [16, 512]")
        if reward not in REWARDS:
            raise ValueError(f"reward={reward!r}; expected one of {REWARDS}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}; only 'rgb_array' is supported")
        steps = MAX_PATH_LENGTH if max_episode_steps is None else int(max_episode_steps)
        if steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps}; expected >= 1 (or None for {MAX_PATH_LENGTH})")
        if not float(mesh_cell) >= 0:
            raise ValueError(f"mesh_cell={mesh_cell}; expected >= 0 (metres; 0 keeps Meta-World's full meshes)")
        self.mesh_cell = float(mesh_cell)
        self.cameras = self._camera_map(cameras)
        if render_images and not self.cameras:
            raise ValueError("cameras is empty but render_images=True; pass render_images=False for a state-only env")
        self.image_size = int(image_size)
        self.render_images = bool(render_images)
        self.max_episode_steps = steps
        self.reward_type = reward
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode

        env_dict = import_metaworld()
        mw = env_dict.ALL_V3_ENVIRONMENTS[self.task]()
        # Goal observable (as in MT1/MT10; the scripted experts read it), a fresh object/goal draw at every
        # reset from the env's own seeded generator (not numpy's global one).
        mw._partially_observable = False
        del mw.sawyer_observation_space  # a cached property that depends on _partially_observable
        mw._set_task_called = True
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        mw.max_path_length = np.iinfo(np.int64).max  # our own step count truncates, past 500 too
        self.action_space = box_action_space(mw.action_space, f"Meta-World's {self.task}")
        self._mw = mw
        self._renderer: Any = None
        self._upside_down: dict[str, bool] = {}
        self._state = np.zeros(39)
        self._steps = 0

        obs_spaces: dict[str, spaces.Space] = {
            "proprio": spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
            "object": spaces.Box(-np.inf, np.inf, (OBJECT_DIM,), np.float32),
            "task_id": spaces.Discrete(len(ALL_TASKS)),
        }
        if self.render_images:
            for key in self.cameras.values():
                obs_spaces[key] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

    @staticmethod
    def _camera_map(cameras: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
        if isinstance(cameras, str):
            cameras = (cameras,)
        if not isinstance(cameras, Mapping) and len(set(cameras)) != len(list(cameras)):
            raise ValueError(f"cameras: {list(cameras)} names a camera twice; each camera is one observation key")
        out = dict(cameras) if isinstance(cameras, Mapping) else {c: camera_key(c) for c in cameras}
        for cam, key in out.items():
            camera_key(cam)  # validates the name
            if not str(key).endswith("_image"):
                raise ValueError(f"cameras: key {key!r} of camera {cam!r} must end in '_image'")
        if len(set(out.values())) != len(out):
            raise ValueError(f"cameras: two cameras map to one key: {out}")
        return {str(c): str(k) for c, k in out.items()}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._mw.np_random = np.random.default_rng(int(self.np_random.integers(2**63)))
        self._mw.reset()
        # Meta-World's reset places objects, goal sites and bodies in the model after its last forward pass, so its
        # state and the rendered scene are stale in some tasks (drawer-open: the object off by up to 0.2 m, the goal
        # marker drawn where the last episode had it) until the first step. Recompute the kinematics and read the
        # state again, with its frame stack ([18:36]) repeating the current frame as Meta-World's reset does.
        import mujoco

        mujoco.mj_forward(self._mw.model, self._mw.data)
        current = np.asarray(self._mw._get_curr_obs_combined_no_goal(), np.float64)
        self._mw._prev_obs = current.copy()
        self._state = np.asarray(self._mw._get_obs(), np.float64)
        self._steps = 0
        return self._obs(), {"success": False, "dense_reward": 0.0}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {action}")
        bad_before = self._instability_count()
        state, dense, _, _, mw_info = self._mw.step(np.clip(a, self.action_space.low, self.action_space.high))
        self._steps += 1
        self._state = np.asarray(state, np.float64)
        truncated = self._steps >= self.max_episode_steps
        if self._instability_count() != bad_before:
            # MuJoCo reset a NaN/inf state: the episode is void, end it as a truncation and say so.
            return self._obs(), 0.0, False, True, {"success": False, "dense_reward": 0.0, "physics_unstable": True}
        success = bool(mw_info["success"])
        reward = float(success) if self.reward_type == "sparse" else float(dense)
        terminated = success and self.terminate_on_success
        info = {"success": success, "dense_reward": float(dense), "physics_unstable": False}
        return self._obs(), reward, terminated, truncated and not terminated, info

    def render(self):
        """The first camera's image (``corner`` unless ``cameras`` says otherwise), upright."""
        return self.render_camera(next(iter(self.cameras), "corner"))

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ observations
    @property
    def state(self) -> np.ndarray:
        """Meta-World's 39-D state of the current step (goal observable): what its scripted policies read."""
        return self._state.copy()

    def _obs(self) -> dict[str, Any]:
        s = self._state
        obs: dict[str, Any] = {
            "proprio": s[PROPRIO_SLICE].astype(np.float32),
            "object": np.concatenate([s[OBJECT_SLICE], s[GOAL_SLICE]]).astype(np.float32),
            "task_id": self.task_id,
        }
        if self.render_images:
            for cam, key in self.cameras.items():
                obs[key] = self.render_camera(cam)
        return obs

    def render_camera(self, camera: str) -> np.ndarray:
        """An (H, W, 3) uint8 image of a Meta-World camera, row 0 at the top of the picture.

        Cameras whose image "up" points below the horizon (``corner``, ``corner2``-``corner4``) are turned
        by 180 degrees: a rotation, not a mirror, so left and right stay as a person in the scene sees them.
        """
        if self._renderer is None:
            self._renderer = self._make_renderer()
        if camera not in self._upside_down:
            camera_key(camera)
            cam = self._mw.model.camera(camera).id
            self._upside_down[camera] = bool(self._mw.data.cam_xmat[cam].reshape(3, 3)[2, 1] < 0)
        image = self._renderer.render(self._mw.data, camera)
        return np.ascontiguousarray(image[::-1, ::-1]) if self._upside_down[camera] else image

    def _make_renderer(self) -> Any:
        from sim_envs.rendering import CameraRenderer

        model = self._mw.model
        model.vis.quality.offsamples = 0  # no multisampling
        model.vis.quality.shadowsize = 0
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.image_size)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.image_size)
        if self.mesh_cell > 0:
            simplify_render_meshes(model, self.mesh_cell)
        return CameraRenderer(model, self.image_size, self.image_size)  # shadows, reflections, skybox off

    def _instability_count(self) -> int:
        import mujoco

        w = self._mw.data.warning
        return int(sum(w[k].number for k in (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                                             mujoco.mjtWarning.mjWARN_BADQACC)))


register_envs()
