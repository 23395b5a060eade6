"""Domain randomization of physics, visuals and distractors, seeded and reproducible, applied per episode.

Factors (each usable on its own or combined):

- physics: ``friction`` (sliding friction of objects, table and fingers), ``mass`` (objects and articulated
  parts, inertia scaled with it), ``damping`` (drawer, door, button joints), ``gripper_force`` (finger
  actuator gain and force limit);
- visuals: ``lighting`` (direction, intensity, colour), ``colors`` (table, background, objects),
  ``textures`` (procedural textures of table, background, objects), ``camera`` (pose jitter of fixed cameras);
- ``distractors``: 0..K extra objects of random shape, size and colour, kept away from the task's objects
  and goals so the task stays possible.

Levels: ``none`` (nominal values, restored exactly), ``train``, ``eval_easy``, ``eval_hard``. Every
evaluation range is disjoint from the training range of the same factor: eval scales lie outside the
training interval, eval palettes use other hues, eval textures other patterns, eval camera/light jitter
larger magnitudes. ``eval_hard`` is harder than ``eval_easy`` in every scale, angle, jitter and count, but
shares its texture set and distractor hue band (so ``textures`` and distractor colours are not graded; measured
results depend on that, see docs/claims.md). ``FACTOR_RANGES`` is the single table of all ranges.
"""
from __future__ import annotations

import colorsys
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import mujoco
import numpy as np

from sim_envs.scene import PARK_POS

LEVELS = ("none", "train", "eval_easy", "eval_hard")
PHYSICS_FACTORS = ("friction", "mass", "damping", "gripper_force")
VISUAL_FACTORS = ("lighting", "colors", "textures", "camera")
FACTORS = PHYSICS_FACTORS + VISUAL_FACTORS + ("distractors",)

Interval = tuple[float, float]
# Each entry: a union of half-open intervals [lo, hi). Scales multiply nominal values; angles in degrees;
# camera jitter in metres; hue bands in [0, 1).
FACTOR_RANGES: dict[str, dict[str, tuple[Interval, ...]]] = {
    "friction": {"train": ((0.7, 1.3),), "eval_easy": ((0.55, 0.7), (1.3, 1.6)), "eval_hard": ((0.4, 0.55), (1.6, 2.0))},
    "mass": {"train": ((0.6, 1.5),), "eval_easy": ((0.45, 0.6), (1.5, 2.0)), "eval_hard": ((0.3, 0.45), (2.0, 3.0))},
    "damping": {"train": ((0.5, 2.0),), "eval_easy": ((0.3, 0.5), (2.0, 3.0)), "eval_hard": ((0.15, 0.3), (3.0, 5.0))},
    "gripper_force": {"train": ((0.75, 1.3),), "eval_easy": ((0.6, 0.75), (1.3, 1.6)), "eval_hard": ((0.45, 0.6), (1.6, 2.0))},
    "light_intensity": {"train": ((0.75, 1.25),), "eval_easy": ((0.55, 0.75), (1.25, 1.45)), "eval_hard": ((0.35, 0.55), (1.45, 1.7))},
    "light_angle": {"train": ((0.0, 20.0),), "eval_easy": ((20.0, 35.0),), "eval_hard": ((35.0, 50.0),)},
    "light_tint": {"train": ((0.0, 0.12),), "eval_easy": ((0.12, 0.25),), "eval_hard": ((0.25, 0.4),)},
    "surface_hue": {"train": ((0.0, 0.5),), "eval_easy": ((0.5, 0.75),), "eval_hard": ((0.75, 1.0),)},
    "object_hue_shift": {"train": ((0.0, 0.05),), "eval_easy": ((0.05, 0.1),), "eval_hard": ((0.1, 0.18),)},
    "camera_shift": {"train": ((0.0, 0.03),), "eval_easy": ((0.03, 0.06),), "eval_hard": ((0.06, 0.1),)},
    "distractor_hue": {"train": ((0.0, 0.45),), "eval_easy": ((0.5, 0.95),), "eval_hard": ((0.5, 0.95),)},
    "distractor_count": {"train": ((0, 3),), "eval_easy": ((3, 5),), "eval_hard": ((5, 7),)},
}
# Materials (assets/scene.xml) a level may put on surfaces and objects: train and eval sets are disjoint.
TEXTURES = {"train": ("mat_plain", "mat_checker", "mat_noise"), "eval_easy": ("mat_grid", "mat_gradient"),
            "eval_hard": ("mat_grid", "mat_gradient")}
DISTRACTOR_SHAPES = ("box", "sphere", "cylinder")
SURFACE_GEOMS = ("table", "backdrop", "floor", "wall_left", "wall_right")
# Geoms of the embodiment whose friction is scaled with the objects'.
FINGER_PREFIXES = ("finger_l_pad", "finger_r_pad")
# Their damping is randomized (the three buttons of PressLitButton are button_slide0..2).
FIXTURE_JOINTS = ("drawer_slide", "door_hinge", "button_slide", "button_slide0", "button_slide1", "button_slide2")
# Joints whose frictionloss stands in for contact friction (the planar puck): scaled by the friction factor.
FRICTION_JOINTS = ("puck_x", "puck_y", "puck_yaw")
# Where distractors may stand: the part of the table the agentview camera sees.
DISTRACTOR_X = (-0.26, 0.26)
DISTRACTOR_Y = (-0.16, 0.28)
# Distance (m, on the table) a distractor keeps from the task's objects and goals, so the task stays possible.
KEEPOUT_RADIUS = 0.09
LAYOUT_ATTEMPTS = 50  # whole layouts tried before an episode has fewer distractors than asked (warned)


def sample_interval_union(rng: np.random.Generator, intervals: Sequence[Interval]) -> float:
    """Uniform sample from a union of intervals, each weighted by its length."""
    lengths = np.array([hi - lo for lo, hi in intervals], float)
    i = int(rng.choice(len(intervals), p=lengths / lengths.sum()))
    lo, hi = intervals[i]
    return float(rng.uniform(lo, hi))


def in_range(value: float, intervals: Sequence[Interval]) -> bool:
    """Whether ``value`` lies in the union of half-open intervals."""
    return any(lo <= value < hi for lo, hi in intervals)


@dataclass
class RandomizationConfig:
    """Which factors to randomize and at which level.

    ``level`` applies to every factor in ``factors`` (all of them when None); ``factor_levels`` overrides
    single factors, e.g. ``{"friction": "eval_hard"}``. ``num_distractors`` fixes the distractor count
    (used by the robustness evaluation) instead of sampling it from the level. ``ranges`` replaces the range of a
    randomized physics factor by a union of ``[lo, hi)`` scale intervals, e.g. ``{"friction": [[0.4, 0.55]]}``
    (only low friction: a one-sided dynamics gap, :mod:`finetune.transfer.gap`).
    """

    level: str = "none"
    factors: Sequence[str] | None = None
    factor_levels: Mapping[str, str] | None = None
    num_distractors: int | None = None
    ranges: Mapping[str, Sequence[Sequence[float]]] | None = None

    def factor_range(self, name: str, level: str) -> tuple[Interval, ...]:
        """The intervals a physics factor is drawn from at ``level``: ``ranges[name]`` when given, else
        ``FACTOR_RANGES``."""
        if self.ranges and name in self.ranges:
            return tuple((float(lo), float(hi)) for lo, hi in self.ranges[name])
        return FACTOR_RANGES[name][level]

    def levels(self) -> dict[str, str]:
        if self.level not in LEVELS:
            raise ValueError(f"unknown randomization level {self.level!r}; expected one of {LEVELS}")
        if isinstance(self.factors, str):  # iterating it would name its letters as factors
            raise ValueError(f"randomization factors={self.factors!r}: expected a list of factor names, e.g. "
                             f"[{self.factors}]")
        if self.num_distractors is not None and (isinstance(self.num_distractors, bool) or not isinstance(
                self.num_distractors, numbers.Integral) or self.num_distractors < 0):
            raise ValueError(f"randomization num_distractors={self.num_distractors!r}: expected an integer >= 0")
        chosen = FACTORS if self.factors is None else tuple(self.factors)
        for name in chosen:
            if name not in FACTORS:
                raise ValueError(f"unknown randomization factor {name!r}; expected some of {FACTORS}")
        out = {name: (self.level if name in chosen else "none") for name in FACTORS}
        for name, level in (self.factor_levels or {}).items():
            if name not in FACTORS:
                raise ValueError(f"unknown randomization factor {name!r}; expected some of {FACTORS}")
            if level not in LEVELS:
                raise ValueError(f"unknown randomization level {level!r} for {name}; expected one of {LEVELS}")
            out[name] = level
        for name, intervals in (self.ranges or {}).items():
            if name not in PHYSICS_FACTORS:
                raise ValueError(f"randomization ranges: {name!r} is not a physics factor; expected some of "
                                 f"{PHYSICS_FACTORS}")
            if out[name] == "none":
                raise ValueError(f"randomization ranges: {name!r} is given a range but is not randomized; add it to "
                                 "factors or factor_levels")
            if not intervals or any(len(iv) != 2 or not 0 < float(iv[0]) < float(iv[1]) for iv in intervals):
                raise ValueError(f"randomization ranges: {name}={intervals!r}; expected a list of [lo, hi] with "
                                 "0 < lo < hi")
        return out


def _ids(model: mujoco.MjModel, objtype: mujoco.mjtObj, names: Sequence[str]) -> np.ndarray:
    out = [mujoco.mj_name2id(model, objtype, n) for n in names]
    return np.array([i for i in out if i >= 0], dtype=int)


def _shape_bounds(shape: str, size: np.ndarray) -> tuple[int, np.ndarray, float, float]:
    """MuJoCo geom type, size vector, bounding radius and resting half-height for a distractor shape."""
    if shape == "box":
        s = np.array([size[0], size[1], size[2]])
        return mujoco.mjtGeom.mjGEOM_BOX, s, float(np.linalg.norm(s)), float(s[2])
    if shape == "sphere":
        r = float(size[0])
        return mujoco.mjtGeom.mjGEOM_SPHERE, np.array([r, 0.0, 0.0]), r, r
    r, h = float(size[0]), float(size[2])
    return mujoco.mjtGeom.mjGEOM_CYLINDER, np.array([r, h, 0.0]), float(np.hypot(r, h)), h


def _aabb(shape: str, gsize: np.ndarray) -> np.ndarray:
    if shape == "box":
        half = gsize
    elif shape == "sphere":
        half = np.full(3, gsize[0])
    else:
        half = np.array([gsize[0], gsize[0], gsize[1]])
    return np.concatenate([np.zeros(3), half])


# What mujoco.mj_setConst recomputes from the masses (and, as it goes, from the cameras and lights): the env calls it
# after a mass draw, so the mass matrix follows the randomized masses; restored with the rest, so a nominal episode
# has the compiled values bit for bit. It reads the static bodies' poses too (body_pos / body_quat, which the tasks
# place at every reset): restored to the compiled ones first, so the constants do not depend on the episode before.
SET_CONST_FIELDS = ("body_subtreemass", "body_invweight0", "dof_M0", "dof_invweight0", "tendon_invweight0",
                    "actuator_acc0", "tendon_length0", "actuator_length0", "cam_pos0", "cam_mat0", "cam_poscom0",
                    "light_pos0", "light_dir0", "light_poscom0", "body_pos", "body_quat")


class DomainRandomizer:
    """Samples and applies randomization to one MjModel, restoring nominal values first every time."""

    _SNAPSHOT_FIELDS = ("geom_friction", "dof_frictionloss", "body_mass", "body_inertia", "dof_damping",
                        "actuator_gainprm", "actuator_biasprm", "actuator_forcerange", "geom_rgba", "geom_matid", "light_dir",
                        "light_diffuse", "cam_pos", "cam_quat", "geom_type", "geom_size", "geom_rbound",
                        "geom_aabb", "geom_contype", "geom_conaffinity", "body_contype", "body_conaffinity",
                        *SET_CONST_FIELDS)
    # model.stat entries mj_setConst rewrites (the solver scales its tolerance by meaninertia)
    _SNAPSHOT_STATS = ("meaninertia", "meanmass", "meansize")

    def __init__(self, model: mujoco.MjModel, object_bodies: Sequence[str], config: RandomizationConfig,
                 max_distractors: int, cameras: Sequence[str] = ("agentview",)) -> None:
        self.model = model
        self.config = config
        self.levels = config.levels()
        self.max_distractors = max_distractors
        self._nominal = {f: getattr(model, f).copy() for f in self._SNAPSHOT_FIELDS}
        self._nominal_headlight = (model.vis.headlight.ambient.copy(), model.vis.headlight.diffuse.copy())
        self._nominal_stats = {s: float(getattr(model.stat, s)) for s in self._SNAPSHOT_STATS}
        body_ids = _ids(model, mujoco.mjtObj.mjOBJ_BODY, object_bodies)
        self.object_bodies = body_ids
        self.object_geoms = np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in set(body_ids)
                                      and model.geom_contype[g] != 0], dtype=int)
        self.object_visual_geoms = np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in set(body_ids)],
                                            dtype=int)
        self.surface_geoms = _ids(model, mujoco.mjtObj.mjOBJ_GEOM, SURFACE_GEOMS)
        finger = [g for g in range(model.ngeom)
                  if (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or "").startswith(FINGER_PREFIXES)]
        self.friction_geoms = np.unique(np.concatenate([self.object_geoms, self.surface_geoms[:1],
                                                        np.array(finger, dtype=int)])).astype(int)
        fixture_joints = _ids(model, mujoco.mjtObj.mjOBJ_JOINT, FIXTURE_JOINTS)
        self.fixture_dofs = np.array([model.jnt_dofadr[j] for j in fixture_joints], dtype=int)
        self.friction_dofs = np.array([model.jnt_dofadr[j] for j in _ids(model, mujoco.mjtObj.mjOBJ_JOINT, FRICTION_JOINTS)],
                                      dtype=int)
        self.finger_actuators = _ids(model, mujoco.mjtObj.mjOBJ_ACTUATOR, ("act_finger_l", "act_finger_r"))
        self.camera_ids = _ids(model, mujoco.mjtObj.mjOBJ_CAMERA, cameras)
        self.distractor_bodies = _ids(model, mujoco.mjtObj.mjOBJ_BODY, [f"distractor{k}" for k in range(max_distractors)])
        self.distractor_geoms = _ids(model, mujoco.mjtObj.mjOBJ_GEOM, [f"distractor{k}_geom" for k in range(max_distractors)])
        self.distractor_qpos = np.array([model.jnt_qposadr[model.body_jntadr[b]] for b in self.distractor_bodies], dtype=int)
        self.material_ids = {name: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_MATERIAL, name)
                             for names in TEXTURES.values() for name in names}
        self._check_distractor_room()
        self._short_warned = False

    def _check_distractor_room(self) -> None:
        """ValueError at construction when the distractors asked for cannot fit ``max_distractors`` (a negative one,
        or fewer slots than the level's least count: NumPy's bare "low >= high" at the first reset before)."""
        if self.max_distractors < 0:
            raise ValueError(f"max_distractors={self.max_distractors}; expected >= 0")
        if self.config.num_distractors is not None:
            need, what = int(self.config.num_distractors), f"num_distractors={self.config.num_distractors}"
            if need < 0:
                raise ValueError(f"{what}; expected >= 0")
        elif self.levels["distractors"] != "none":
            level = self.levels["distractors"]
            need, what = FACTOR_RANGES["distractor_count"][level][0][0], f"distractor level {level!r} (at least " \
                f"{FACTOR_RANGES['distractor_count'][level][0][0]} distractors)"
        else:
            return
        if need > self.max_distractors:
            raise ValueError(f"{what} needs more distractor slots than max_distractors={self.max_distractors}; "
                             f"raise max_distractors to {need} or more")

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator, keepout: np.ndarray | None = None,
               keepout_radius: float = KEEPOUT_RADIUS) -> dict[str, Any]:
        """Draw one episode's parameters. ``keepout``: (n, 2) table points distractors must stay away from.

        The environment samples distractors separately (``sample_distractors``) once the task has placed
        its objects; ``sample`` includes them only when ``keepout`` is given.
        """
        lv = self.levels
        p: dict[str, Any] = {}
        if lv["friction"] != "none":
            p["friction"] = sample_interval_union(rng, self.config.factor_range("friction", lv["friction"]))
        if lv["mass"] != "none":
            p["mass"] = sample_interval_union(rng, self.config.factor_range("mass", lv["mass"]))
        if lv["damping"] != "none":
            p["damping"] = sample_interval_union(rng, self.config.factor_range("damping", lv["damping"]))
        if lv["gripper_force"] != "none":
            p["gripper_force"] = sample_interval_union(rng, self.config.factor_range("gripper_force",
                                                                                     lv["gripper_force"]))
        if lv["lighting"] != "none":
            p["lighting"] = self._sample_lighting(rng, lv["lighting"])
        if lv["colors"] != "none":
            p["colors"] = self._sample_colors(rng, lv["colors"])
        if lv["textures"] != "none":
            mats = TEXTURES[lv["textures"]]
            p["textures"] = {"surfaces": [str(rng.choice(mats)) for _ in self.surface_geoms],
                             "objects": [str(rng.choice(mats)) for _ in self.object_visual_geoms]}
        if lv["camera"] != "none":
            p["camera"] = [self._sample_shift(rng, lv["camera"]) for _ in self.camera_ids]
        if self.uses_distractors and keepout is not None:
            p["distractors"] = self.sample_distractors(rng, keepout, keepout_radius)
        return p

    @property
    def uses_distractors(self) -> bool:
        return self.levels["distractors"] != "none" or self.config.num_distractors is not None

    def _sample_lighting(self, rng: np.random.Generator, level: str) -> dict[str, Any]:
        n = self.model.nlight
        return {"intensity": sample_interval_union(rng, FACTOR_RANGES["light_intensity"][level]),
                "angles": [sample_interval_union(rng, FACTOR_RANGES["light_angle"][level]) for _ in range(n)],
                # rotation axes perpendicular to each light's direction, so it turns by exactly the sampled angle
                "axes": [_unit(np.cross(self._nominal["light_dir"][i], rng.normal(size=3))).tolist() for i in range(n)],
                "tint": [(sample_interval_union(rng, FACTOR_RANGES["light_tint"][level]) * _unit(rng.random(3))).tolist()
                         for _ in range(n)]}

    def _sample_colors(self, rng: np.random.Generator, level: str) -> dict[str, Any]:
        surfaces = []
        for _ in self.surface_geoms:
            hue = sample_interval_union(rng, FACTOR_RANGES["surface_hue"][level])
            surfaces.append(colorsys.hsv_to_rgb(hue, rng.uniform(0.15, 0.55), rng.uniform(0.45, 0.9)))
        shifts = [sample_interval_union(rng, FACTOR_RANGES["object_hue_shift"][level]) * rng.choice([-1.0, 1.0])
                  for _ in self.object_visual_geoms]
        return {"surfaces": [tuple(map(float, c)) for c in surfaces], "object_hue_shift": shifts}

    def _sample_shift(self, rng: np.random.Generator, level: str) -> dict[str, list[float]]:
        mag = sample_interval_union(rng, FACTOR_RANGES["camera_shift"][level])
        tmag = sample_interval_union(rng, FACTOR_RANGES["camera_shift"][level]) * 0.5
        return {"pos": list(mag * _unit(rng.normal(size=3))), "target": list(tmag * _unit(rng.normal(size=3)))}

    def sample_distractors(self, rng: np.random.Generator, keepout: np.ndarray | None = None,
                           radius: float = KEEPOUT_RADIUS) -> list[dict[str, Any]]:
        """Count, shapes, sizes, colours and table positions of this episode's distractors."""
        level = self.levels["distractors"]
        if self.config.num_distractors is not None:  # within [0, max_distractors] (_check_distractor_room)
            count = int(self.config.num_distractors)
        else:
            lo, hi = FACTOR_RANGES["distractor_count"][level][0]
            count = int(rng.integers(lo, min(hi, self.max_distractors + 1)))
        hue_level = level if level != "none" else "train"
        points = np.zeros((0, 2)) if keepout is None else np.asarray(keepout, float).reshape(-1, 2)
        best: list[dict[str, Any]] = []
        for _attempt in range(LAYOUT_ATTEMPTS):  # placed one by one, a layout can corner itself: lay it out again
            out = self._layout(rng, count, points, radius, hue_level)
            if len(out) == count:
                return out
            best = out if len(out) > len(best) else best
        if not self._short_warned:  # no free spot left for some: they stay parked rather than block the task
            self._short_warned = True
            warnings.warn(f"distractors: {len(best)} of {count} placed on the table this episode (no free spot for "
                          f"the others in {LAYOUT_ATTEMPTS} layouts, {radius} m apart and from the task's objects); "
                          "said once per env", RuntimeWarning, stacklevel=2)
        return best

    def _layout(self, rng: np.random.Generator, count: int, points: np.ndarray, radius: float,
                hue_level: str) -> list[dict[str, Any]]:
        """One layout of ``count`` distractors placed one by one at random free spots; it stops at the first that
        finds none in 200 tries (fewer returned)."""
        placed: list[np.ndarray] = []
        out = []
        for _ in range(count):
            shape = str(rng.choice(DISTRACTOR_SHAPES))
            size = rng.uniform(0.012, 0.026, size=3)
            xy = None
            for _try in range(200):
                cand = np.array([rng.uniform(*DISTRACTOR_X), rng.uniform(*DISTRACTOR_Y)])
                others = np.concatenate([points, np.array(placed).reshape(-1, 2)])
                if len(others) == 0 or np.min(np.linalg.norm(others - cand, axis=1)) > radius:
                    xy = cand
                    break
            if xy is None:
                return out
            placed.append(xy)
            hue = sample_interval_union(rng, FACTOR_RANGES["distractor_hue"][hue_level])
            rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))
            out.append({"shape": shape, "size": list(map(float, size)), "xy": list(map(float, xy)),
                        "yaw": float(rng.uniform(-np.pi, np.pi)), "rgb": list(map(float, rgb))})
        return out

    # ------------------------------------------------------------------ applying
    def restore_nominal(self) -> None:
        """Put every randomized model field back to its value at construction, bit for bit."""
        for f, value in self._nominal.items():
            getattr(self.model, f)[...] = value
        self.model.vis.headlight.ambient[:] = self._nominal_headlight[0]
        self.model.vis.headlight.diffuse[:] = self._nominal_headlight[1]
        for name, value in self._nominal_stats.items():
            setattr(self.model.stat, name, value)

    def apply(self, params: Mapping[str, Any]) -> None:
        """Restore nominal values, then apply ``params`` (from ``sample``) to the model."""
        self.restore_nominal()
        m, nom = self.model, self._nominal
        if "friction" in params:
            m.geom_friction[self.friction_geoms, 0] = nom["geom_friction"][self.friction_geoms, 0] * params["friction"]
            m.dof_frictionloss[self.friction_dofs] = nom["dof_frictionloss"][self.friction_dofs] * params["friction"]
        if "mass" in params:
            movable = self._movable_bodies()
            m.body_mass[movable] = nom["body_mass"][movable] * params["mass"]
            m.body_inertia[movable] = nom["body_inertia"][movable] * params["mass"]
        if "damping" in params and len(self.fixture_dofs):
            m.dof_damping[self.fixture_dofs] = nom["dof_damping"][self.fixture_dofs] * params["damping"]
        if "gripper_force" in params:
            s, acts = params["gripper_force"], self.finger_actuators
            m.actuator_gainprm[acts, 0] = nom["actuator_gainprm"][acts, 0] * s
            m.actuator_biasprm[acts, 1] = nom["actuator_biasprm"][acts, 1] * s
            m.actuator_forcerange[acts] = nom["actuator_forcerange"][acts] * s
        if "lighting" in params:
            self._apply_lighting(params["lighting"])
        if "colors" in params:
            self._apply_colors(params["colors"])
        if "textures" in params:
            for g, mat in zip(self.surface_geoms, params["textures"]["surfaces"]):
                m.geom_matid[g] = self.material_ids[mat]
            for g, mat in zip(self.object_visual_geoms, params["textures"]["objects"]):
                m.geom_matid[g] = self.material_ids[mat]
        if "camera" in params:
            for cam, shift in zip(self.camera_ids, params["camera"]):
                self._apply_camera(cam, np.array(shift["pos"]), np.array(shift["target"]))

    def place_distractors(self, data: mujoco.MjData, params: Mapping[str, Any]) -> None:
        """Shape, colour and put the sampled distractors on the table; park the unused slots."""
        m = self.model
        specs = params.get("distractors", [])
        for k, (body, geom, qadr) in enumerate(zip(self.distractor_bodies, self.distractor_geoms, self.distractor_qpos)):
            if k < len(specs):
                d = specs[k]
                gtype, gsize, rbound, half_h = _shape_bounds(d["shape"], np.array(d["size"]))
                m.geom_type[geom] = gtype
                m.geom_size[geom] = gsize
                m.geom_rbound[geom] = rbound
                m.geom_aabb[geom] = _aabb(d["shape"], gsize)
                m.geom_rgba[geom] = [*d["rgb"], 1.0]
                # The broadphase prunes by the body's OR of its geoms' bits: set both levels.
                m.geom_contype[geom] = m.geom_conaffinity[geom] = 1
                m.body_contype[body] = m.body_conaffinity[body] = 1
                m.body_mass[body] = 0.05
                yaw = d["yaw"]
                data.qpos[qadr:qadr + 7] = [d["xy"][0], d["xy"][1], half_h + 1e-3, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            else:
                data.qpos[qadr:qadr + 7] = [*(PARK_POS + np.array([0.1 * k, 0.0, 0.0])), 1.0, 0.0, 0.0, 0.0]
            dadr = m.jnt_dofadr[m.body_jntadr[body]]
            data.qvel[dadr:dadr + 6] = 0.0

    def _movable_bodies(self) -> np.ndarray:
        m = self.model
        ids = [b for b in self.object_bodies if m.body_jntnum[b] > 0]
        for j in FIXTURE_JOINTS:
            jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)
            if jid >= 0:
                ids.append(int(m.jnt_bodyid[jid]))
        return np.unique(np.array(ids, dtype=int))

    def _apply_lighting(self, p: Mapping[str, Any]) -> None:
        m, nom = self.model, self._nominal
        for i in range(m.nlight):
            rot = _axis_angle_matrix(np.array(p["axes"][i]), np.deg2rad(p["angles"][i]))
            m.light_dir[i] = _unit(rot @ nom["light_dir"][i])
            color = np.clip(nom["light_diffuse"][i] * p["intensity"] * (1.0 - np.array(p["tint"][i])), 0.0, 1.0)
            m.light_diffuse[i] = color
        m.vis.headlight.diffuse[:] = np.clip(self._nominal_headlight[1] * p["intensity"], 0.0, 1.0)
        m.vis.headlight.ambient[:] = np.clip(self._nominal_headlight[0] * p["intensity"], 0.0, 1.0)

    def _apply_colors(self, p: Mapping[str, Any]) -> None:
        m = self.model
        for g, rgb in zip(self.surface_geoms, p["surfaces"]):
            m.geom_rgba[g, :3] = rgb
        for g, shift in zip(self.object_visual_geoms, p["object_hue_shift"]):
            r, gg, b = self._nominal["geom_rgba"][g, :3]
            h, s, v = colorsys.rgb_to_hsv(float(r), float(gg), float(b))
            m.geom_rgba[g, :3] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)

    def _apply_camera(self, cam: int, dpos: np.ndarray, dtarget: np.ndarray) -> None:
        from sim_envs.scene import lookat_xyaxes, xyaxes_to_quat

        m, nom = self.model, self._nominal
        pos = nom["cam_pos"][cam]
        # The nominal target: the point the nominal camera looks at, 0.6 m along its view axis.
        quat = nom["cam_quat"][cam]
        mat = np.zeros(9)
        mujoco.mju_quat2Mat(mat, quat)
        forward = -mat.reshape(3, 3)[:, 2]
        target = pos + 0.6 * forward
        new_pos = pos + dpos
        m.cam_pos[cam] = new_pos
        m.cam_quat[cam] = xyaxes_to_quat(lookat_xyaxes(new_pos, target + dtarget))


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = _unit(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
