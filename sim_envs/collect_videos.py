"""Collect action-free human-hand video clips: a folder of mp4 files plus ``manifest.csv``.

``python -m sim_envs.collect_videos`` (Hydra, ``configs/collect_videos.yaml``) films the human hand
(``embodiment="hand"``) in the tabletop scenes, the way internet video differs from the robot's data:
other viewpoints (one random ``video_*`` camera per clip), randomized lighting, colours, textures and
camera pose, and no actions or rewards stored. Two kinds of clips:

- task clips: the scripted expert drives the hand through a task (a little action noise), recorded until
  ``hold_steps`` after success; text e.g. "a hand pushes the red block onto the green disc";
- play clips (``play_fraction``): undirected play (:mod:`sim_envs.play`) for ``play_steps`` steps; text
  "a hand plays with the objects on the table".

The folder follows the "Video dataset" contract of ARCHITECTURE.md: ``clip_00000.mp4`` ... and
``manifest.csv`` (``path,num_frames,text``, paths relative to it), plus ``info.json`` (config, counts, versions).
The clips are recorded into a staging folder inside the output folder (``.clips.*.tmp``) and moved into place, then
the manifest written atomically, once every clip is recorded: an interrupted or failed collection leaves the folder
as it was (a rerun starts over; it refused before, finding the first clips without a manifest). ``collect_videos(cfg)`` holds the logic (callable from
tests); the Hydra ``main`` only picks the output folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import gymnasium as gym
import hydra
import mujoco
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

import sim_envs
from sim_envs.config_values import check_value_types
from sim_envs.experts import make_expert
from sim_envs.play import make_play_policy
from sim_envs.rendering import exit_on_render_error
from sim_envs.tasks import PRETRAIN_TASKS, TARGET_TASKS, TASKS
from sim_envs.video_writer import MANIFEST_NAME, pick_codec, write_manifest, write_mp4, write_text_atomic

# absolute, so Hydra finds the configs from any working directory and under a console script
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "robopretrain" / "configs")

TASK_GROUPS = {"pretrain": PRETRAIN_TASKS, "target": TARGET_TASKS, "all": tuple(TASKS)}
DEFAULT_DIRNAME = "videos"
CLIP_RE = re.compile(r"^clip_\d{5,}\.mp4$")
LOCK_NAME = ".collect_videos.lock"  # (a hidden file: clip readers and fingerprints skip it)
PLAY_TEXT = "a hand plays with the objects on the table"
EMPTY_PLAY_TEXT = "a hand moves around above the table"


@dataclass(frozen=True)
class ClipPlan:
    """What determines one clip before it runs (``attempt`` > 0 after a failed task clip was redrawn)."""

    index: int
    kind: str  # "task" or "play"
    task: str
    camera: str
    env_seed: int
    policy_seed: int
    attempt: int = 0

    @property
    def filename(self) -> str:
        return f"clip_{self.index:05d}.mp4"


@dataclass
class Clip:
    """A recorded clip: frames (T, H, W, 3) uint8, whether the task succeeded (task clips), its text."""

    plan: ClipPlan
    frames: np.ndarray
    success: bool
    text: str


# ---------------------------------------------------------------------------------------------- text
def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z")):
        return verb + "es"
    return verb + "s"


def task_text(task: str) -> str:
    """A caption for a task clip from the task's description, e.g. "a hand pushes the red block onto ...".

    Parenthesized remarks are dropped, "the gripper" becomes the hand itself, and the verbs at the start
    and after "and" take the third person.
    """
    desc = re.sub(r"\s*\([^)]*\)", "", TASKS[task].description).strip()
    desc = desc.replace(" the gripper to ", " to ")
    words = desc.split()
    for i, word in enumerate(words):
        if i == 0 or words[i - 1] == "and":
            words[i] = _third_person(word)
    return "a hand " + " ".join(words)


def play_text(env: gym.Env) -> str:
    return PLAY_TEXT if env.unwrapped.task.object_bodies else EMPTY_PLAY_TEXT


# ---------------------------------------------------------------------------------------------- config
def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """Task names from ``pretrain`` / ``target`` / ``all`` / one name / a list of names."""
    if isinstance(spec, str):
        names = list(TASK_GROUPS[spec]) if spec in TASK_GROUPS else [spec]
    else:
        names = [str(n) for n in spec]
    if not names:
        raise ValueError("collect_videos config: tasks is empty; expected pretrain, target, all or a list of task names")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"collect_videos config: tasks: unknown task(s) {unknown}; known tasks: {', '.join(TASKS)} "
                         f"(or one of the groups {', '.join(TASK_GROUPS)})")
    return list(dict.fromkeys(names))


def validate_config(cfg: DictConfig) -> None:
    """Check the config; errors name the key and what was expected."""
    def fail(key: str, expected: str) -> None:
        raise ValueError(f"collect_videos config: {key}={cfg.get(key)!r}; expected {expected}")

    check_value_types(cfg, "collect_videos", ints=("num_clips", "hold_steps", "max_attempts", "play_steps",
                                                   "image_size", "frame_stride", "crf", "seed"),
                      numbers=("play_fraction", "expert_noise", "fps"), flags=("require_success", "overwrite"),
                      optional=("fps",))
    if int(cfg.num_clips) < 1:
        fail("num_clips", ">= 1")
    if not 0.0 <= float(cfg.play_fraction) <= 1.0:
        fail("play_fraction", "a number in [0, 1]")
    if float(cfg.expert_noise) < 0:
        fail("expert_noise", ">= 0")
    if int(cfg.hold_steps) < 0:
        fail("hold_steps", ">= 0")
    if int(cfg.max_attempts) < 1:
        fail("max_attempts", ">= 1")
    if int(cfg.play_steps) < 1:
        fail("play_steps", ">= 1")
    size = int(cfg.image_size)
    if not 16 <= size <= 512 or size % 2:
        fail("image_size", "an even number in [16, 512] (yuv420p video needs even sizes)")
    if int(cfg.frame_stride) < 1:
        fail("frame_stride", ">= 1")
    if not cfg.cameras:
        fail("cameras", "a non-empty list of camera names, e.g. [video_left, video_right]")
    if cfg.fps is not None and float(cfg.fps) <= 0:
        fail("fps", "a positive number or null")
    if not 0 <= int(cfg.crf) <= 51:
        fail("crf", "an integer in [0, 51]")


def env_kwargs_from_config(cfg: DictConfig) -> dict[str, Any]:
    randomization = cfg.randomization
    if isinstance(randomization, (DictConfig, ListConfig)):
        randomization = OmegaConf.to_container(randomization, resolve=True)
    return {"image_size": int(cfg.image_size), "render_images": False, "embodiment": "hand",
            "video_cameras": True, "randomization": randomization, "terminate_on_success": False}


def plan_clips(cfg: DictConfig, tasks: Sequence[str]) -> list[ClipPlan]:
    """Which clips are play and which are task clips (shuffled), their scenes (round robin) and cameras."""
    n = int(cfg.num_clips)
    num_play = int(round(float(cfg.play_fraction) * n))
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0x51D]))
    kinds = np.array(["play"] * num_play + ["task"] * (n - num_play))
    rng.shuffle(kinds)
    scene_offset = {"task": int(rng.integers(len(tasks))), "play": int(rng.integers(len(tasks)))}
    counters = {"task": 0, "play": 0}
    plans = []
    for index, kind in enumerate(kinds):
        task = tasks[(scene_offset[kind] + counters[kind]) % len(tasks)]
        counters[kind] += 1
        plans.append(_plan_one(cfg, index, str(kind), task, attempt=0))
    return plans


def _plan_one(cfg: DictConfig, index: int, kind: str, task: str, attempt: int) -> ClipPlan:
    env_seed, policy_seed, camera_seed = np.random.SeedSequence([int(cfg.seed), index, attempt]).generate_state(3)
    cameras = list(cfg.cameras)
    camera = str(cameras[int(np.random.default_rng(camera_seed).integers(len(cameras)))])
    return ClipPlan(index, kind, task, camera, int(env_seed), int(policy_seed), attempt)


def control_rate(env: gym.Env) -> float:
    """Env steps per second of simulated time."""
    return float(env.unwrapped.metadata["render_fps"])


# ---------------------------------------------------------------------------------------------- recording
def record_clip(env: gym.Env, plan: ClipPlan, cfg: DictConfig) -> Clip:
    """Run one clip's policy and film it with the plan's camera every ``frame_stride``-th step."""
    size, stride = int(cfg.image_size), int(cfg.frame_stride)
    obs, _ = env.reset(seed=plan.env_seed)
    rng = np.random.default_rng(plan.policy_seed)
    base = env.unwrapped
    if plan.kind == "play":
        policy = make_play_policy(env, rng=rng)
        max_steps = int(cfg.play_steps)
    else:
        policy = make_expert(env, noise=float(cfg.expert_noise), rng=rng)
        max_steps = base.task.max_steps
    frames = [base.render_camera(plan.camera, size)]
    success, steps_after_success = False, -1
    for step in range(1, max_steps + 1):
        obs, _, _, _, info = env.step(policy.act(obs))
        if step % stride == 0:
            frames.append(base.render_camera(plan.camera, size))
        if plan.kind == "task":
            if info["success"] and not success:
                success, steps_after_success = True, 0
            elif success:
                steps_after_success += 1
            if success and steps_after_success >= int(cfg.hold_steps):
                break
    text = play_text(env) if plan.kind == "play" else task_text(plan.task)
    return Clip(plan, np.stack(frames), success if plan.kind == "task" else True, text)


def check_cameras(env: gym.Env, cameras: Sequence[str]) -> None:
    model = env.unwrapped.model
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    unknown = [c for c in cameras if c not in names]
    if unknown:
        raise ValueError(f"collect_videos config: cameras: unknown camera(s) {unknown}; the scene has {names}")


# ---------------------------------------------------------------------------------------------- output
def resolve_output_dir(cfg: DictConfig, run_dir: str | Path | None) -> Path:
    if cfg.get("output"):
        return Path(str(cfg.output)).expanduser()
    if run_dir is None:
        raise ValueError("collect_videos config: output is not set and no run folder was given; "
                         "set output=/path/to/videos")
    return Path(run_dir) / DEFAULT_DIRNAME


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"collect_videos: output {out} exists and is not a folder")
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise ValueError(f"collect_videos: {out / MANIFEST_NAME} already exists; pass overwrite=true to replace "
                         "that dataset or choose another output")
    clips = sorted(p.name for p in out.iterdir() if CLIP_RE.match(p.name)) if out.is_dir() else []
    if clips and not overwrite:  # a user's own clips, or an interrupted collection: the new clips take their names
        raise ValueError(f"collect_videos: {out} already holds {len(clips)} clip file(s) ({clips[0]}, ...) without a "
                         f"{MANIFEST_NAME}; the new clips would replace them: pass overwrite=true to replace them or "
                         "choose another output")
    out.mkdir(parents=True, exist_ok=True)


def remove_stale_clips(out: Path, keep: set[str]) -> None:
    """Delete ``clip_*.mp4`` files of an overwritten dataset that the new manifest does not list."""
    for p in out.iterdir():
        if CLIP_RE.match(p.name) and p.name not in keep:
            p.unlink()


# ---------------------------------------------------------------------------------------------- collect
def collect_videos(cfg: DictConfig | Mapping[str, Any], output_dir: str | Path | None = None,
                   progress: bool = True) -> Path:
    """Record the clips ``cfg`` asks for; returns the dataset folder (holding ``manifest.csv``).

    The folder is ``cfg.output`` when set, else ``output_dir / videos``. A summary (clips per scene and
    kind, failed task clips redrawn, frames, time) is printed at the end.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    validate_config(cfg)
    tasks = resolve_tasks(list(cfg.tasks) if isinstance(cfg.tasks, ListConfig) else str(cfg.tasks))
    out = resolve_output_dir(cfg, output_dir)
    prepare_output_dir(out, bool(cfg.overwrite))
    with collection_lock(out):
        prepare_output_dir(out, bool(cfg.overwrite))  # again: a collection that held the lock may have finished
        return _collect_into(cfg, tasks, out, progress)


@contextlib.contextmanager
def collection_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s collection lock (an advisory ``flock`` on ``out/.collect_videos.lock``, released by the
    operating system however the holder ends) while a collection writes there. Two collections into one folder
    replaced each other's manifest, and each removed the other's staging folder at its start, so the first died at
    its end. Raises ``ValueError`` naming the holder when another process holds it."""
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process"
            raise ValueError(f"collect_videos: another collection is writing {out} now ({holder}); wait for it to "
                             "end, stop it, or choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


def _collect_into(cfg: DictConfig, tasks: Sequence[str], out: Path, progress: bool) -> Path:
    """:func:`collect_videos`'s recording into ``out``, whose collection lock the caller holds."""
    env_kwargs = env_kwargs_from_config(cfg)
    codec = cfg.codec or pick_codec()
    envs: dict[str, gym.Env] = {}
    rows: list[tuple[str, int, str]] = []
    recorded: list[ClipPlan] = []
    redraws: dict[str, int] = {}
    start = time.perf_counter()
    for stale in out.glob(".clips.*.tmp"):  # left by a collection killed outright (SIGKILL; under the lock: never
        # a running collection's); never a dataset
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".clips.", suffix=".tmp"))
    try:
        bar = tqdm(plan_clips(cfg, tasks), desc="collect_videos", unit="clip", disable=not progress)
        for plan in bar:
            if plan.task not in envs:
                # play clips may run longer than the task's time limit
                steps = max(TASKS[plan.task].max_steps, int(cfg.play_steps))
                envs[plan.task] = gym.make(sim_envs.env_id(plan.task), max_episode_steps=steps, **env_kwargs)
                check_cameras(envs[plan.task], list(cfg.cameras))
            env = envs[plan.task]
            clip = record_clip(env, plan, cfg)
            while not clip.success and bool(cfg.require_success):
                if clip.plan.attempt + 1 >= int(cfg.max_attempts):
                    raise RuntimeError(f"collect_videos: the {plan.task} expert failed clip {plan.index} "
                                       f"max_attempts={cfg.max_attempts} times in a row; lower expert_noise, raise "
                                       "max_attempts or set require_success=false")
                redraws[plan.task] = redraws.get(plan.task, 0) + 1
                clip = record_clip(env, _plan_one(cfg, plan.index, plan.kind, plan.task, clip.plan.attempt + 1), cfg)
            fps = float(cfg.fps) if cfg.fps is not None else control_rate(env) / int(cfg.frame_stride)
            write_mp4(staging / plan.filename, clip.frames, fps=fps, codec=codec, crf=int(cfg.crf))
            rows.append((plan.filename, len(clip.frames), clip.text))
            recorded.append(clip.plan)
            bar.set_postfix(scene=plan.task, kind=plan.kind, refresh=False)
        elapsed = time.perf_counter() - start
        for name, _, _ in rows:  # every clip recorded: into place, then the manifest that lists them
            os.replace(staging / name, out / name)
        write_text_atomic(out / "info.json", json.dumps(collection_info(cfg, tasks, rows, redraws, codec), indent=2))
        write_manifest(out, rows)
    finally:
        for env in envs.values():
            env.close()
        shutil.rmtree(staging, ignore_errors=True)
    if bool(cfg.overwrite):
        remove_stale_clips(out, {r[0] for r in rows})
    print(format_summary(recorded, rows, redraws, out, elapsed))
    return out


def collection_info(cfg: DictConfig, tasks: Sequence[str], rows: Sequence[tuple[str, int, str]],
                    redraws: Mapping[str, int], codec: str) -> dict[str, Any]:
    import av
    return {"config": OmegaConf.to_container(cfg, resolve=True), "tasks": list(tasks), "clips": len(rows),
            "frames": int(sum(r[1] for r in rows)), "redraws": dict(redraws), "codec": codec,
            "versions": {"mujoco": mujoco.__version__, "av": av.__version__, "numpy": np.__version__}}


def format_summary(plans: Sequence[ClipPlan], rows: Sequence[tuple[str, int, str]], redraws: Mapping[str, int],
                   out: Path, elapsed: float) -> str:
    """The end-of-run table: per scene, task and play clips, failed task clips redrawn, mean frames per clip."""
    header = f"{'scene':<15}{'task_clips':>11}{'play_clips':>11}{'redrawn':>9}{'mean_frames':>13}"
    lines = [header, "-" * len(header)]
    for scene in dict.fromkeys(p.task for p in plans):
        idx = [i for i, p in enumerate(plans) if p.task == scene]
        n_task = sum(plans[i].kind == "task" for i in idx)
        frames = np.mean([rows[i][1] for i in idx])
        lines.append(f"{scene:<15}{n_task:>11}{len(idx) - n_task:>11}{redraws.get(scene, 0):>9}{frames:>13.1f}")
    total_frames = int(sum(r[1] for r in rows))
    size_mb = sum((out / r[0]).stat().st_size for r in rows) / 2**20
    lines.append("-" * len(header))
    lines.append(f"{len(rows)} clips, {total_frames} frames, {sum(redraws.values())} failed task clips redrawn; {elapsed:.1f} s "
                 f"({total_frames / max(elapsed, 1e-9):.0f} frames/s); {size_mb:.2f} MiB -> {out / MANIFEST_NAME}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="collect_videos")
@exit_on_render_error
def main(cfg: DictConfig) -> None:
    collect_videos(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":  # through the toolkit's command line: one-line config errors, --help of this config
    import sys

    from robopretrain.cli import launch

    launch("sim_envs.collect_videos", sys.argv[1:])
