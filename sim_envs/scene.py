"""Builds the MJCF of one tabletop scene: table, backdrop, lights, cameras, an embodiment, task fixtures
and a fixed number of distractor slots.

Every task of the suite is one member of this scene family: ``build_scene_xml`` fills the placeholders of
``assets/scene.xml`` with the embodiment fragment (``robot_gripper.xml`` or ``human_hand.xml``), the
fixtures the task asks for (``assets/fixtures/*.xml``) and ``max_distractors`` free bodies that the
randomizer shows, reshapes and recolours per episode (unused ones are parked under the table with
collisions off).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"
TIMESTEP = 0.004
FRAME_SKIP = 5
FINGER_KP = 300.0
FINGER_FORCE = 12.0
MAX_DISTRACTORS = 6
# Distractors not in use are parked here (below the table, out of every camera's view).
PARK_POS = np.array([0.0, 0.0, -0.6])

EMBODIMENTS = ("robot", "hand")
# The robot's camera: high and in front, so the whole workspace (x in [-0.25, 0.25], y in [-0.2, 0.28] on the
# table, the Reach goals up to 0.22 m high) is in view; at 64 px the placement area shows at 0.84-1.04 px/cm
# along x and 0.59-0.91 px/cm along y (``benchmarks/envs.py`` measures both).
AGENTVIEW_POS = np.array([0.0, -0.65, 0.85])
AGENTVIEW_TARGET = np.array([0.0, 0.03, 0.0])
AGENTVIEW_FOVY = 35.0
# Colours of the markers that say what to do: goal markers (sphere, disc) and the lit button are bright green;
# the unlit buttons of PressLitButton are grey; the single button of PressButton is red.
GOAL_RGBA = (0.1, 0.85, 0.25, 1.0)
GOAL_GROUND_RGBA = (0.05, 0.45, 0.12, 1.0)
BUTTON_RGBA = (0.9, 0.1, 0.1, 1.0)
UNLIT_RGBA = (0.55, 0.55, 0.58, 1.0)
LIT_RGBA = (0.15, 1.0, 0.3, 1.0)
NUM_LIT_BUTTONS = 3  # buttons in PressLitButton

# Viewpoints of the human-video cameras: none matches the robot's agentview, like internet video.
VIDEO_CAMERAS = {
    "video_left": (np.array([-0.55, -0.45, 0.45]), np.array([0.0, 0.05, 0.03])),
    "video_right": (np.array([0.6, -0.35, 0.4]), np.array([0.0, 0.05, 0.03])),
    "video_high": (np.array([0.35, -0.45, 0.75]), np.array([0.0, 0.05, 0.0])),
    "video_low": (np.array([-0.2, -0.7, 0.22]), np.array([0.0, 0.05, 0.05])),
}


def lookat_xyaxes(pos: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """Camera frame x and y axes (6 numbers, MJCF ``xyaxes``) for a camera at ``pos`` looking at ``target``.

    A MuJoCo camera looks along its -z axis with +y up in the image. ``up`` (default world +z) gives the image's up
    direction; a camera looking along it (straight down, a top view) takes world +y instead (the far side of the
    table at the image's top): the cross product was zero and the axes NaN, a black image.
    """
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, float)
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    z_cam = -forward
    x_cam = np.cross(up, z_cam)
    if np.linalg.norm(x_cam) < 1e-9:  # looking along ``up``
        x_cam = np.cross(np.array([0.0, 1.0, 0.0]), z_cam)
    x_cam /= np.linalg.norm(x_cam)
    y_cam = np.cross(z_cam, x_cam)
    return np.concatenate([x_cam, y_cam])


def xyaxes_to_quat(xyaxes: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) of the rotation whose columns are x, y and x cross y."""
    x, y = xyaxes[:3], xyaxes[3:]
    z = np.cross(x, y)
    mat = np.stack([x, y, z], axis=1)
    w = np.sqrt(max(0.0, 1.0 + mat[0, 0] + mat[1, 1] + mat[2, 2])) / 2.0
    if w > 1e-6:
        return np.array([w, (mat[2, 1] - mat[1, 2]) / (4 * w), (mat[0, 2] - mat[2, 0]) / (4 * w),
                         (mat[1, 0] - mat[0, 1]) / (4 * w)])
    # 180 degree rotation: fall back to the largest diagonal element.
    i = int(np.argmax(np.diag(mat)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = np.sqrt(1.0 + mat[i, i] - mat[j, j] - mat[k, k]) * 2.0
    q = np.zeros(4)
    q[0] = (mat[k, j] - mat[j, k]) / s
    q[1 + i] = 0.25 * s
    q[1 + j] = (mat[j, i] + mat[i, j]) / s
    q[1 + k] = (mat[k, i] + mat[i, k]) / s
    return q


def _fmt(vec: np.ndarray) -> str:
    return " ".join(f"{v:.6g}" for v in vec)


@lru_cache(maxsize=None)
def _read_asset(relpath: str) -> str:
    path = ASSETS / relpath
    if not path.is_file():
        raise FileNotFoundError(f"missing MJCF asset {path}")
    return path.read_text()


def _fixture_xml(name: str) -> str:
    if name == "bowl":
        return _bowl_xml()
    if name in ("door_left", "door_right"):
        side = 1.0 if name == "door_left" else -1.0
        return _read_asset("fixtures/door.xml").format(
            post_x=f"{-0.012 * side:.4f}", axis_sign=f"{side:.0f}",
            panel_x=f"{0.09 * side:.4f}", handle_x=f"{0.15 * side:.4f}")
    if name.startswith("goal_"):
        kind = name[len("goal_"):]
        goal_type, goal_size = {"sphere": ("sphere", "0.022"), "disc": ("cylinder", "0.035 0.001")}[kind]
        # A sphere floating above the table gets a flat marker on the table right below it (a stand-in for
        # its shadow, which is off): one camera then sees both where it is over the table and how high.
        ground = "" if kind != "sphere" else (
            '    <body name="goal_ground" pos="0 0 0">\n'
            f'      <geom name="goal_ground_geom" type="cylinder" size="0.022 0.0012" rgba="{_fmt(GOAL_GROUND_RGBA)}" '
            'class="visual"/>\n    </body>')
        return _read_asset("fixtures/goal.xml").format(goal_type=goal_type, goal_size=goal_size,
                                                       goal_rgba=_fmt(GOAL_RGBA), ground=ground)
    if name == "button":
        return _read_asset("fixtures/button.xml").format(s="", cap_rgba=_fmt(BUTTON_RGBA))
    if name == "buttons":  # PressLitButton: the task lights one of them per episode
        return "\n".join(_read_asset("fixtures/button.xml").format(s=str(k), cap_rgba=_fmt(UNLIT_RGBA))
                         for k in range(NUM_LIT_BUTTONS))
    return _read_asset(f"fixtures/{name}.xml")


def _bowl_xml(radius: float = 0.075, n_walls: int = 14, wall_height: float = 0.03) -> str:
    """A bowl as a flat bottom plus a ring of thin wall boxes (a convex-only approximation)."""
    walls = []
    half_len = radius * np.tan(np.pi / n_walls) + 0.003
    for i in range(n_walls):
        a = 2 * np.pi * i / n_walls
        x, y = radius * np.cos(a), radius * np.sin(a)
        q = np.array([np.cos(a / 2), 0.0, 0.0, np.sin(a / 2)])
        walls.append(
            f'      <geom name="bowl_wall{i}" type="box" size="0.004 {half_len:.4f} {wall_height / 2:.4f}" '
            f'pos="{x:.4f} {y:.4f} {wall_height / 2 + 0.004:.4f}" quat="{_fmt(q)}" rgba="0.2 0.55 0.8 1"/>')
    body = "\n".join(walls)
    return (f'    <body name="bowl" pos="0 0 0">\n'
            f'      <geom name="bowl_bottom" type="cylinder" size="{radius:.4f} 0.004" pos="0 0 0.004" '
            f'rgba="0.2 0.55 0.8 1"/>\n{body}\n    </body>')


def _distractor_xml(k: int) -> str:
    return (f'    <body name="distractor{k}" pos="{_fmt(PARK_POS + np.array([0.1 * k, 0, 0]))}">\n'
            f'      <freejoint name="distractor{k}_free"/>\n'
            f'      <geom name="distractor{k}_geom" type="box" size="0.02 0.02 0.02" mass="0.05" '
            f'rgba="0.5 0.5 0.5 1" contype="0" conaffinity="0" condim="3"/>\n'
            f'    </body>')


@dataclass(frozen=True)
class SceneSpec:
    """What goes into one scene: the task's fixtures, the embodiment and how many distractor slots."""

    task: str
    fixtures: tuple[str, ...]
    embodiment: str = "robot"
    max_distractors: int = MAX_DISTRACTORS
    offscreen: int = 256
    video_cameras: bool = False
    extra_excludes: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def build_scene_xml(spec: SceneSpec) -> str:
    """Return the complete MJCF string for ``spec``."""
    if spec.embodiment not in EMBODIMENTS:
        raise ValueError(f"unknown embodiment {spec.embodiment!r}; expected one of {EMBODIMENTS}")
    embodiment = _read_asset("robot_gripper.xml" if spec.embodiment == "robot" else "human_hand.xml")
    objects = "\n".join(_fixture_xml(name) for name in spec.fixtures)
    distractors = "\n".join(_distractor_xml(k) for k in range(spec.max_distractors))
    cams = []
    if spec.video_cameras:
        for name, (pos, target) in VIDEO_CAMERAS.items():
            cams.append(f'    <camera name="{name}" pos="{_fmt(pos)}" xyaxes="{_fmt(lookat_xyaxes(pos, target))}" fovy="50"/>')
    excludes = "\n".join(f'    <exclude body1="{a}" body2="{b}"/>' for a, b in spec.extra_excludes)
    return _read_asset("scene.xml").format(
        task=spec.task, timestep=TIMESTEP, offscreen=max(spec.offscreen, 64),
        agentview_pos=_fmt(AGENTVIEW_POS), agentview_xyaxes=_fmt(lookat_xyaxes(AGENTVIEW_POS, AGENTVIEW_TARGET)),
        agentview_fovy=f"{AGENTVIEW_FOVY:g}",
        video_cameras="\n".join(cams), embodiment=embodiment, objects=objects, distractors=distractors,
        finger_kp=FINGER_KP, finger_force=FINGER_FORCE, contact_excludes=excludes)
