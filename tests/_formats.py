"""Small datasets in the layouts of other toolkits, for the converter tests: D4RL-style HDF5 and OGBench .npz (their
documented arrays, written with h5py / numpy, the tools those projects use), Minari (written by minari's own
``create_dataset_from_buffers``) and LeRobot v3 (its documented layout: parquet with pyarrow, one mp4 for all
episodes with PyAV; LeRobot itself does not install beside our pins). Every value encodes where it came from, so a
test can tell which source row a converted row is."""
from __future__ import annotations

import json
import os
from pathlib import Path

import av
import h5py
import numpy as np


def obs_rows(n: int, d: int, start: int) -> np.ndarray:
    """Row ``i`` is ``start + i`` in every column (then ``+ 0.01 * column``)."""
    return (np.arange(start, start + n, dtype=np.float32)[:, None] + 0.01 * np.arange(d, dtype=np.float32))


def write_d4rl(path: Path, lengths=(4, 5, 3), ends=("terminal", "timeout", None), next_obs: bool = False,
               success: bool = False, success_key: str = "success", actions: np.ndarray | None = None) -> Path:
    """Episodes laid end to end; episode ``e`` ends with ``ends[e]`` (None: the file just stops); with ``success``
    the first episode succeeds on its last row (``infos/<success_key>``); ``actions``: the file's actions, one row
    per step (default: 3-D, inside [-1, 1])."""
    n = sum(lengths)
    term, tout = np.zeros(n, bool), np.zeros(n, bool)
    pos = 0
    for ln, end in zip(lengths, ends):
        pos += ln
        if end == "terminal":
            term[pos - 1] = True
        elif end == "timeout":
            tout[pos - 1] = True
    obs = obs_rows(n, 5, 0)
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = np.tanh(obs[:, :3] / 10) if actions is None else actions
        f["rewards"] = np.arange(n, dtype=np.float32)
        f["terminals"] = term
        f["timeouts"] = tout
        if next_obs:
            f["next_observations"] = obs + 1000
        if success:
            s = np.zeros(n, bool)
            s[lengths[0] - 1] = True
            f[f"infos/{success_key}"] = s
    return path


def write_ogbench(path: Path, trajectories: int = 2, length: int = 5, masks: bool = False) -> Path:
    """Compact OGBench layout: ``length`` rows per trajectory, ``terminals = 1`` on its last row (the final
    observation). With ``masks``: rewards and masks of a single-task dataset, the task done at row 2 of
    trajectory 0 only."""
    n = trajectories * length
    obs = obs_rows(n, 4, 0)
    terminals = np.zeros(n, np.float32)
    terminals[length - 1::length] = 1.0
    arrays = {"observations": obs, "actions": np.full((n, 2), 0.25, np.float32), "terminals": terminals,
              "qpos": np.zeros((n, 3), np.float32)}
    if masks:
        m = np.ones(n, np.float32)
        m[2] = 0.0
        arrays["masks"] = m
        arrays["rewards"] = -m  # OGBench's relabelling: success - 1 (0 where done, else -1)
    np.savez(path, **arrays)
    return path


def write_minari(root: Path, lengths=(4, 5), terminated=(True, False), dataset_id: str = "test/reach-v0",
                 success_key: str = "success", action_bound: float = 1.0, action: float = 0.5,
                 image: bool = False, image_side: int = 8, discrete: int = 0, text: bool = False) -> Path:
    """A Minari dataset with Dict observations (``observation`` 3-D, ``desired_goal`` 2-D, with ``image`` also an
    ``image_side`` square RGB ``image`` part) written by minari (its defaults: JPEG-encoded images from 32 x 32 up),
    success logged as ``infos[success_key]`` on the terminal step, actions ``action`` in a Box(-action_bound,
    action_bound) space (with ``discrete``, the indices 0, 1, ... of a ``Discrete(discrete)`` space instead);
    ``text``: a ``Text`` part ``mission`` too (a language instruction); returns the dataset folder
    ``root/<dataset_id>``."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    parts = {"observation": gym.spaces.Box(-1e4, 1e4, (3,), np.float32),
             "desired_goal": gym.spaces.Box(-1e4, 1e4, (2,), np.float32)}
    if image:
        parts["image"] = gym.spaces.Box(0, 255, (image_side, image_side, 3), np.uint8)
    if text:
        parts["mission"] = gym.spaces.Text(20)
    space = gym.spaces.Dict(parts)
    buffers = []
    for e, (n, term) in enumerate(zip(lengths, terminated)):
        t, tr = np.zeros(n, bool), np.zeros(n, bool)
        (t if term else tr)[-1] = True
        obs = {"observation": obs_rows(n + 1, 3, 100 * e), "desired_goal": np.full((n + 1, 2), e, np.float32)}
        if image:
            obs["image"] = np.full((n + 1, image_side, image_side, 3), 40 * e, np.uint8)
        if text:
            obs["mission"] = ["go left"] * (n + 1)
        actions = np.arange(n) % discrete if discrete else np.full((n, 2), action, np.float32)
        buffers.append(EpisodeBuffer(id=e, observations=obs, actions=actions,
                                     rewards=np.arange(n, dtype=np.float64) + 10 * e, terminations=t, truncations=tr,
                                     infos={success_key: np.r_[np.zeros(n, bool), term]}))
    import warnings

    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)  # where minari writes; restored for the other tests
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(dataset_id, buffers, observation_space=space,
                                               action_space=gym.spaces.Discrete(discrete) if discrete else
                                               gym.spaces.Box(-action_bound, action_bound, (2,), np.float32),
                                               data_format="hdf5")
    finally:
        if before is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = before
    return root / dataset_id


LEROBOT_CAM = "observation.images.top"
FPS = 10


def frame_level(i: int) -> int:
    """Grey level of global video frame ``i`` (12 levels 20 apart: distinct after lossy coding, repeating)."""
    return 10 + 20 * (i % 12)


def write_lerobot(root: Path, lengths=(6, 5), done_last=(True, False), size: int = 32, action_scale: float = 5.0,
                  camera: str = "video", success_last: tuple | str | None = "same", width: int | None = None,
                  rewards: bool = True) -> Path:
    """A LeRobot v3 folder: ``observation.state`` (4), ``action`` (2, up to ``action_scale``: outside [-1, 1]),
    ``next.reward``, ``next.done`` (set on the last frame of episode e when ``done_last[e]``), ``next.success`` (set
    on the last frame of episode e when ``success_last[e]``; ``"same"``: as ``next.done``; None: no such column),
    camera ``observation.images.top`` (``size`` px high, ``width`` (default ``size``) wide, flat grey
    :func:`frame_level` of its global frame index) in one
    mp4 for all episodes (``camera="image"``: PNG bytes in the parquet instead, LeRobot's ``image`` dtype), 2 tasks.
    ``rewards=False``: no ``next.reward`` column (a teleoperation recording)."""
    import io

    from PIL import Image

    n = sum(lengths)
    for d in ("meta/episodes/chunk-000", "data/chunk-000", f"videos/{LEROBOT_CAM}/chunk-000"):
        (root / d).mkdir(parents=True, exist_ok=True)
    frames, episodes, g = [], [], 0
    for e, ln in enumerate(lengths):
        start = g
        for t in range(ln):
            frames.append({"observation.state": (np.arange(4, dtype=np.float32) + g).tolist(),
                           "action": [action_scale * (g / n), -action_scale * (g / n)],
                           "next.reward": float(g), "next.done": bool(done_last[e] and t == ln - 1),
                           "timestamp": t / FPS, "frame_index": t, "episode_index": e, "index": g,
                           "task_index": e % 2})
            if not rewards:
                del frames[-1]["next.reward"]
            if success_last is not None:
                last = done_last if success_last == "same" else success_last
                frames[-1]["next.success"] = bool(last[e] and t == ln - 1)
            if camera == "image":
                png = io.BytesIO()
                Image.fromarray(np.full((size, width or size, 3), frame_level(g), np.uint8)).save(png, format="PNG")
                frames[-1][LEROBOT_CAM] = {"bytes": png.getvalue(), "path": None}
            g += 1
        episodes.append({"episode_index": e, "length": ln, "tasks": [f"task {e % 2}"], "data/chunk_index": 0,
                         "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": g,
                         f"videos/{LEROBOT_CAM}/chunk_index": 0, f"videos/{LEROBOT_CAM}/file_index": 0,
                         f"videos/{LEROBOT_CAM}/from_timestamp": start / FPS,
                         f"videos/{LEROBOT_CAM}/to_timestamp": g / FPS})
    if camera == "video":
        write_video(root / f"videos/{LEROBOT_CAM}/chunk-000/file-000.mp4", n, size, width)
    else:
        for ep in episodes:
            for k in [k for k in ep if k.startswith("videos/")]:
                del ep[k]
    _write_lerobot_meta(root, frames, episodes, lengths, (size, width or size), camera)
    return root


def write_video(path: Path, n: int, size: int, width: int | None = None) -> None:
    """``n`` flat grey frames (:func:`frame_level`) at ``FPS``, ``size`` high and ``width`` (default ``size``) wide,
    libx264."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.height, s.width = size, width or size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            img = np.full((size, width or size, 3), frame_level(i), np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _write_lerobot_meta(root: Path, frames: list, episodes: list, lengths, size: tuple[int, int], camera: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = sum(lengths)
    pq.write_table(pa.Table.from_pylist(frames), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist([{"task_index": 0, "task": "task 0"}, {"task_index": 1, "task": "task 1"}]),
                   root / "meta/tasks.parquet")
    features = {"observation.state": {"dtype": "float32", "shape": [4], "names": None},
                "action": {"dtype": "float32", "shape": [2], "names": None},
                LEROBOT_CAM: {"dtype": camera, "shape": [*size, 3], "names": ["height", "width", "channels"]},
                **({"next.reward": {"dtype": "float32", "shape": [1], "names": None}} if "next.reward" in frames[0]
                   else {}),
                "next.done": {"dtype": "bool", "shape": [1], "names": None},
                **({"next.success": {"dtype": "bool", "shape": [1], "names": None}} if "next.success" in frames[0]
                   else {}),
                **{k: {"dtype": "int64", "shape": [1], "names": None}
                   for k in ("frame_index", "episode_index", "index", "task_index")},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None}}
    info = {"codebase_version": "v3.0", "robot_type": "test", "total_episodes": len(lengths), "total_frames": n,
            "total_tasks": 2, "fps": FPS, "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500, "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
