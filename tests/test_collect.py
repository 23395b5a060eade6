"""Robot-demo collection: a tiny collection round-tripped through h5py and robomimic's own SequenceDataset,
mask and reward/done semantics, determinism, atomic writes and input validation."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from sim_envs.collect import collect, kind_counts, resolve_tasks
from sim_envs.hdf5_writer import EpisodeError, RobomimicWriter, make_env_args, split_train_valid
from sim_envs.tasks import TASK_IDS

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "collect.yaml"
TASKS = ["Reach", "PressButton"]
OBS_KEYS = ("agentview_image", "proprio", "object")


def tiny_config(**overrides):
    cfg = OmegaConf.load(CONFIG)
    return OmegaConf.merge(cfg, {"tasks": TASKS, "episodes_per_task": 3, "image_size": 32,
                                 "valid_fraction": 0.34}, overrides)


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    return collect(tiny_config(), output_dir=tmp_path_factory.mktemp("run_a"), progress=False)


def demo_names(f: h5py.File) -> list[str]:
    return sorted(f["data"], key=lambda n: int(n.split("_")[1]))


def mask(f: h5py.File, name: str) -> list[str]:
    ds = f[f"mask/{name}"]
    assert ds.dtype.kind == "S"
    return [x.decode() for x in ds[()]]

OLD_MTIME = 1_000_000_000  # seconds since the epoch (2001): a file last written long before ABANDONED_AFTER_S


def test_file_layout(collected):
    with h5py.File(collected, "r") as f:
        names = demo_names(f)
        assert names == [f"demo_{i}" for i in range(6)]
        assert f["data"].attrs["total"] == sum(f[f"data/{n}"].attrs["num_samples"] for n in names)
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["type"] == 2 and env_args["env_name"]
        assert env_args["env_kwargs"]["image_size"] == 32 and env_args["env_kwargs"]["tasks"] == TASKS
        kinds = []
        for n in names:
            demo = f[f"data/{n}"]
            num = demo.attrs["num_samples"]
            meta = json.loads(demo.attrs["ep_meta"])
            kinds.append(meta["kind"])
            assert meta["length"] == num and meta["randomization"] == "none"
            assert demo.attrs["task_id"] == TASK_IDS[demo.attrs["task"]]
            img = demo["obs/agentview_image"]
            assert img.dtype == np.uint8 and img.shape == (num, 32, 32, 3) and img.compression is not None
            assert img.chunks[1:] == (32, 32, 3)
            assert demo["obs/proprio"].dtype == np.float32 and demo["obs/proprio"].shape == (num, 7)
            assert demo["obs/object"].shape == (num, 18)
            actions = demo["actions"][()]
            assert actions.dtype == np.float32 and actions.shape == (num, 4) and np.abs(actions).max() <= 1.0
            assert demo["rewards"].shape == (num,) and demo["dones"].shape == (num,)
            assert set(demo["next_obs"]) == set(demo["obs"]) == set(OBS_KEYS)
        assert kinds == ["clean", "noisy", "failing"] * 2


def test_robomimic_sequence_dataset_reads_the_file(collected):
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    ObsUtils.initialize_obs_utils_with_obs_specs(
        {"obs": {"low_dim": ["proprio", "object"], "rgb": ["agentview_image"]}})
    ds = SequenceDataset(hdf5_path=str(collected), obs_keys=OBS_KEYS, dataset_keys=("actions", "rewards", "dones"),
                         seq_length=1, filter_by_attribute="train", hdf5_cache_mode="low_dim", hdf5_use_swmr=True)
    demos, length = list(ds.demos), len(ds)
    demo = demos[-1]
    item = ds[ds._demo_id_to_start_indices[demo] + 2]
    ds.close_and_delete_hdf5_handle()  # robomimic holds the file open in SWMR mode
    with h5py.File(collected, "r") as f:
        train = mask(f, "train")
        assert demos == sorted(train, key=lambda n: int(n.split("_")[1]))
        assert length == sum(f[f"data/{n}"].attrs["num_samples"] for n in train)
        group = f[f"data/{demo}"]
        for key in OBS_KEYS:
            np.testing.assert_array_equal(item["obs"][key][0], group[f"obs/{key}"][2])
            np.testing.assert_array_equal(item["next_obs"][key][0], group[f"next_obs/{key}"][2])
        np.testing.assert_array_equal(item["actions"][0], group["actions"][2])
        assert item["rewards"][0] == group["rewards"][2] and item["dones"][0] == group["dones"][2]
        assert item["obs"]["agentview_image"].shape == (1, 32, 32, 3)
    # robomimic's metadata readers (they need six, which robomimic 0.3.0 does not declare: the dev extra has it)
    import robomimic.utils.file_utils as FileUtils

    meta = FileUtils.get_env_metadata_from_dataset(str(collected))
    assert meta["type"] == 2 and meta["env_name"]
    shapes = FileUtils.get_shape_metadata_from_dataset(str(collected), all_obs_keys=OBS_KEYS)
    assert shapes["ac_dim"] == 4 and shapes["all_shapes"]["agentview_image"] == [3, 32, 32]  # robomimic's CHW


def test_masks_partition_demos_and_match_tasks(collected):
    with h5py.File(collected, "r") as f:
        names = set(demo_names(f))
        train, valid = mask(f, "train"), mask(f, "valid")
        assert set(train) | set(valid) == names and not set(train) & set(valid)
        assert len(valid) == 2  # one per task (valid_fraction 0.34 of 3)
        per_task = {t: mask(f, t) for t in TASKS}
        assert sorted(sum(per_task.values(), [])) == sorted(names)
        for task, demos in per_task.items():
            assert all(f[f"data/{n}"].attrs["task"] == task for n in demos)
            assert any(n in valid for n in demos) and any(n in train for n in demos)


def test_rewards_dones_and_next_obs_semantics(collected):
    with h5py.File(collected, "r") as f:
        outcomes = [json.loads(f[f"data/{n}"].attrs["ep_meta"])["success"] for n in demo_names(f)]
        assert any(outcomes) and not all(outcomes)  # both branches below are exercised
        for n in demo_names(f):
            demo = f[f"data/{n}"]
            meta = json.loads(demo.attrs["ep_meta"])
            rewards, dones = demo["rewards"][()], demo["dones"][()]
            assert set(np.unique(dones)) <= {0, 1}
            assert not dones[:-1].any(), f"{n}: done before the last step"
            assert bool(dones[-1]) == meta["success"] == meta["terminated"]
            assert rewards[-1] == float(meta["success"]) and not rewards[:-1].any()
            if not meta["success"]:
                assert meta["truncated"] and len(rewards) == {"Reach": 50, "PressButton": 60}[demo.attrs["task"]]
            for key in OBS_KEYS:
                np.testing.assert_array_equal(demo[f"next_obs/{key}"][:-1], demo[f"obs/{key}"][1:])
            if meta["kind"] == "clean":
                assert meta["success"] and meta["expert_noise"] == 0.0


def test_same_config_gives_identical_files(collected, tmp_path):
    again = collect(tiny_config(), output_dir=tmp_path / "run_b", progress=False)
    assert again.read_bytes() == collected.read_bytes()


def test_parallel_workers_give_the_same_data(collected, tmp_path):
    """Two workers, or 0 (this process, as 1: what 0 means for the data loaders too; a negative count is refused)."""
    parallel = collect(tiny_config(num_workers=2), output_dir=tmp_path, progress=False)
    here = collect(tiny_config(num_workers=0), output_dir=tmp_path / "zero", progress=False)
    with pytest.raises(ValueError, match=r"num_workers=-1; expected >= 0 \(0 or 1: in this process\)"):
        collect(tiny_config(num_workers=-1), output_dir=tmp_path / "negative", progress=False)

    def contents(path: Path) -> dict:
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, obj[()].tobytes()) if isinstance(obj, h5py.Dataset)
                         else out.__setitem__(name, {k: str(v) for k, v in obj.attrs.items() if k != "collection"}))
        return out

    assert contents(parallel) == contents(collected) == contents(here)


def test_a_gzip_level_h5py_refuses_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="compression_level=10; expected 0-9 for gzip"):
        RobomimicWriter(tmp_path / "d.hdf5", make_env_args("x", "0", {}), compression="gzip", compression_level=10)
    assert list(tmp_path.iterdir()) == []
    RobomimicWriter(tmp_path / "d.hdf5", make_env_args("x", "0", {}), compression="lzf", compression_level=10).abort()


def test_interrupted_write_leaves_nothing(tmp_path):
    path = tmp_path / "demos.hdf5"
    env_args = make_env_args("sim_envs/Reach-v0", "0", {})
    with pytest.raises(KeyboardInterrupt):
        with RobomimicWriter(path, env_args) as writer:
            writer.add_episode(**_episode())
            raise KeyboardInterrupt
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_file_another_writer_finished_first_is_kept_and_this_ones_data_too(tmp_path):
    """Two collections into one output, the second started before the first finished: both passed the start's
    "already exists" check, and the later rename silently replaced the earlier file (overwrite=false)."""
    path = tmp_path / "demos.hdf5"
    env_args = make_env_args("sim_envs/Reach-v0", "0", {})
    first = RobomimicWriter(path, env_args, valid_fraction=0.0)
    first.add_episode(**_episode(5))
    import os

    (tmp_path / f"demos.{os.getpid()}.hdf5").write_text("a user's file of that name")  # (a pid used again)
    with RobomimicWriter(path, env_args, valid_fraction=0.0) as second:  # finishes first
        second.add_episode(**_episode(7))
    with pytest.raises(FileExistsError, match=r"demos.hdf5: written by another process while this one collected "
                                              r"\(overwrite=false keeps it\); this run's data is kept as .*demos\.\d+-1"
                                              r"\.hdf5"):
        first.close()
    with h5py.File(path, "r") as f:
        assert f["data"].attrs["total"] == 7  # the file that was there stays
    assert (tmp_path / f"demos.{os.getpid()}.hdf5").read_text() == "a user's file of that name"
    kept = tmp_path / f"demos.{os.getpid()}-1.hdf5"
    assert h5py.File(kept, "r")["data"].attrs["total"] == 5
    again = RobomimicWriter(path, env_args, valid_fraction=0.0, overwrite=True)  # asked for: replaced
    again.add_episode(**_episode(6))
    again.close()
    assert h5py.File(path, "r")["data"].attrs["total"] == 6 and len(list(tmp_path.iterdir())) == 3


def test_failed_collection_leaves_nothing(tmp_path, monkeypatch):
    import sim_envs.collect as collect_module

    calls = []

    def broken_writer(writer, episode, seed, level):
        calls.append(episode)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return original(writer, episode, seed, level)

    original = collect_module._write_episode
    monkeypatch.setattr(collect_module, "_write_episode", broken_writer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        collect(tiny_config(), output_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_folder_or_under_a_file_is_refused_before_collecting(tmp_path):
    """The refusal said "pass overwrite=True"; with it the whole collection ran and then failed ("Is a directory")."""
    with pytest.raises(ValueError, match=r"output=.* is a folder; give the .hdf5 file to write \(e.g. output=.*"
                                         r"robot_demos.hdf5\)"):
        collect(tiny_config(output=str(tmp_path), overwrite=True), progress=False)
    (tmp_path / "f.hdf5").write_text("")
    with pytest.raises(ValueError, match=r"f.hdf5 is a file, not a folder"):
        collect(tiny_config(output=str(tmp_path / "f.hdf5" / "x.hdf5")), progress=False)


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="PushBlok") as err:
        resolve_tasks(["Reach", "PushBlok"])
    assert "PushBlock" in str(err.value)  # lists the known tasks
    assert resolve_tasks("target") == ["PlaceInBowl", "OpenDoorRight", "CloseDrawerPressButton", "PressLitButton"]
    with pytest.raises(ValueError, match="PushBlok"):
        collect(tiny_config(tasks="PushBlok", output="/nonexistent/x.hdf5"), progress=False)


@pytest.mark.parametrize("change, pattern", [
    ({"actions": np.full((5, 4), 1.5, np.float32)}, r"actions.*\[-1, 1\]"),
    ({"actions": np.full((5, 4), np.nan, np.float32)}, r"actions.*NaN"),
    ({"obs": {"agentview_image": np.zeros((5, 8, 8, 3), np.float32), "proprio": np.zeros((5, 7), np.float32)}},
     r"obs/agentview_image.*uint8"),
    ({"dones": np.array([0, 1, 0, 0, 1], np.uint8)}, r"dones.*before the last step"),
    ({"rewards": np.zeros(4, np.float32)}, r"rewards.*\(5,\)"),
    ({"next_obs": {"proprio": np.zeros((5, 7), np.float32)}}, r"next_obs.*keys"),
])
def test_bad_episode_errors_name_the_key(tmp_path, change, pattern):
    path = tmp_path / "demos.hdf5"
    with pytest.raises(EpisodeError, match=pattern):
        with RobomimicWriter(path, make_env_args("sim_envs/Reach-v0", "0", {})) as writer:
            writer.add_episode(**{**_episode(), **change})
    assert list(tmp_path.iterdir()) == []


def test_episode_shapes_must_match_earlier_episodes(tmp_path):
    with pytest.raises(EpisodeError, match="proprio.*differs from earlier"):
        with RobomimicWriter(tmp_path / "d.hdf5", make_env_args("x", "0", {})) as writer:
            writer.add_episode(**_episode())
            bad = _episode()
            bad["obs"]["proprio"] = bad["next_obs"]["proprio"] = np.zeros((5, 6), np.float32)
            writer.add_episode(**bad)


def test_split_and_kind_counts():
    demos = {"A": [f"demo_{i}" for i in range(10)], "B": ["demo_10"]}
    train, valid = split_train_valid(demos, 0.2, seed=3)
    assert len(valid) == 2 and all(v in demos["A"] for v in valid) and "demo_10" in train
    assert (train, valid) == split_train_valid(demos, 0.2, seed=3)
    assert kind_counts(10, {"clean": 0.5, "noisy": 0.3, "failing": 0.2}) == {"clean": 5, "noisy": 3, "failing": 2}
    assert sum(kind_counts(7, {"clean": 0.5, "noisy": 0.3, "failing": 0.2}).values()) == 7


def _episode(n: int = 5) -> dict:
    rng = np.random.default_rng(0)
    frames = {"agentview_image": rng.integers(0, 255, (n + 1, 8, 8, 3), dtype=np.uint8),
              "proprio": rng.normal(size=(n + 1, 7)).astype(np.float32)}
    return {"task": "Reach", "task_id": 0, "obs": {k: v[:-1] for k, v in frames.items()},
            "next_obs": {k: v[1:] for k, v in frames.items()},
            "actions": rng.uniform(-1, 1, (n, 4)).astype(np.float32), "rewards": np.zeros(n, np.float32),
            "dones": np.zeros(n, np.uint8), "ep_meta": {"success": False}}


def test_every_target_task_collects(tmp_path):
    """``tasks=target`` (the held-out tasks, new ones included) collects, with real expert success."""
    path = collect(tiny_config(tasks="target", episodes_per_task=1, image_size=16, valid_fraction=0.0,
                               kinds={"clean": {"fraction": 1.0}, "noisy": {"fraction": 0.0},
                                      "failing": {"fraction": 0.0}}),
                   output_dir=tmp_path, progress=False)
    with h5py.File(path, "r") as f:
        demos = [f[f"data/{n}"] for n in demo_names(f)]
        assert [d.attrs["task"] for d in demos] == resolve_tasks("target")
        for demo in demos:
            assert demo.attrs["task_id"] == TASK_IDS[demo.attrs["task"]]
            assert json.loads(demo.attrs["ep_meta"])["success"], demo.attrs["task"]
            assert demo["obs/agentview_image"].shape[1:] == (16, 16, 3) and demo["obs/object"].shape[1:] == (18,)


def test_a_deleted_kind_is_refused_with_the_fraction_that_switches_it_off(tmp_path):
    """``python -m sim_envs.collect ~kinds.noisy`` deletes the entry: the error says to set its fraction to 0."""
    cfg = tiny_config(output=str(tmp_path / "d.hdf5"))
    del cfg.kinds["noisy"]
    with pytest.raises(ValueError, match=r"kinds is missing \['noisy'\].*set kinds\.noisy\.fraction=0 instead"):
        collect(cfg, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_parallel_collection_that_cannot_render_fails_before_starting_workers(monkeypatch):
    """MUJOCO_GL=glfw without a display: one error from the parent, no worker started (a worker failing while others
    start could print their tracebacks after the one-line error)."""
    import sim_envs.collect as collect_module
    from sim_envs.rendering import RenderingUnavailableError

    monkeypatch.setenv("MUJOCO_GL", "glfw")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)

    def no_workers(*args, **kwargs):
        raise AssertionError("a worker pool was started")

    monkeypatch.setattr("robopretrain.workers.process_map", no_workers)
    plans = [collect_module.EpisodePlan("Reach", i, "expert", 0.0, i, i, None) for i in range(2)]
    with pytest.raises(RenderingUnavailableError, match="no display"):
        list(collect_module.iter_episodes(plans, {"render_images": True}, num_workers=2))


def test_parallel_collection_runs_its_episodes_in_process_map_workers(monkeypatch):
    """The episodes go through :func:`robopretrain.workers.process_map` (workers started with Ctrl-C blocked, a dead
    worker an error rather than a hang: tests/test_workers.py), in plan order, a task's consecutive episodes to one
    worker."""
    import sim_envs.collect as collect_module

    seen: dict = {}

    def fake_map(fn, jobs, workers, *, what, initializer, initargs, chunksize):
        seen.update(fn=fn, workers=workers, initializer=initializer, initargs=initargs, chunksize=chunksize)
        return (plan.index for plan in jobs)

    monkeypatch.setattr("robopretrain.workers.process_map", fake_map)
    plans = [collect_module.EpisodePlan(task, i, "expert", 0.0, i, i, None) for task in ("Reach", "PushBlock")
             for i in range(4)]
    assert list(collect_module.iter_episodes(plans, {"image_size": 8}, num_workers=2)) == [0, 1, 2, 3] * 2
    assert seen == {"fn": collect_module._worker_run, "workers": 2, "initializer": collect_module._worker_init,
                    "initargs": ({"image_size": 8},), "chunksize": 2}


@pytest.mark.parametrize("override, message", [
    ({"episodes_per_task": "abc"}, "episodes_per_task='abc'; expected an integer"),
    ({"valid_fraction": "half"}, "valid_fraction='half'; expected a number"),
    ({"kinds": {"noisy": {"noise": "lots"}}}, "kinds.noisy.noise='lots'; expected a number"),
    ({"render_images": "nope"}, "render_images='nope'; expected true or false"),
    # NumPy's "expected non-negative integer", and h5py's level error after the first episode: no setting named
    ({"seed": -1}, "seed=-1; expected an integer >= 0"),
    ({"compression": "gzip", "compression_level": 12}, "compression_level=12; expected 0-9 for gzip"),
    # the writer's own checks, made before any episode is collected (the writer was built after them)
    ({"compression": "zip"}, "compression='zip'; expected one of ('gzip', 'lzf', None)"),
    ({"chunk_frames": 0}, "chunk_frames=0; expected >= 1"),
])
def test_a_setting_of_the_wrong_type_or_range_is_named(tmp_path, override, message):
    """``episodes_per_task=abc`` gave int()'s "invalid literal" without the setting's name, and ``render_images=nope``
    (or ``overwrite=no``) was bool() of a non-empty string: true, silently."""
    with pytest.raises(ValueError) as err:
        collect(tiny_config(**override), output_dir=tmp_path, progress=False)
    assert str(err.value) == f"collect config: {message}"
    assert list(tmp_path.iterdir()) == []


def test_overwrite_no_keeps_the_file(tmp_path):
    """``overwrite=no`` on the command line is the string "no"; bool("no") is True and replaced the file."""
    path = tmp_path / "demos.hdf5"
    path.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="overwrite='no'; expected true or false"):
        collect(tiny_config(overwrite="no", output=str(path)), progress=False)
    assert path.read_bytes() == b"keep me"


def test_an_episode_the_disk_cannot_hold_is_refused_before_the_hdf5_library_runs_out_of_space(tmp_path, monkeypatch):
    """Collecting onto a full disk: HDF5 raised inside h5py's deallocation (a hundred ignored tracebacks), then the
    process crashed (segmentation fault) and the partial file filled the disk (breaker MM F01)."""
    import errno
    import shutil

    from sim_envs import hdf5_writer

    path = tmp_path / "d.hdf5"
    episode = _episode(17)  # its frames fill two chunks of 16, which HDF5 stores whole (uncompressed: 32 frames)
    arrays = 2 * (32 * 8 * 8 * 3 + 17 * 7 * 4) + 17 * (4 * 4 + 4 + 1)  # obs and next_obs, actions, rewards, dones
    usage = shutil.disk_usage(tmp_path)
    free = [hdf5_writer.SPACE_MARGIN + arrays]  # exactly enough for the first episode
    monkeypatch.setattr(hdf5_writer.shutil, "disk_usage", lambda p: usage._replace(free=free[0]))
    with pytest.raises(OSError) as err:
        with RobomimicWriter(path, make_env_args("x", "0", {}), compression=None) as writer:
            writer.add_episode(**episode)
            free[0] -= 1  # one byte short for the second
            writer.add_episode(**episode)
    assert err.value.errno == errno.ENOSPC and f"for {path}: episode 1 needs up to" in str(err.value)
    assert not path.exists() and list(tmp_path.iterdir()) == []  # the partial file removed
    free[0] = hdf5_writer.SPACE_MARGIN + arrays  # the estimate is what the datasets take, padding included
    with RobomimicWriter(path, make_env_args("x", "0", {}), compression=None) as writer:
        writer.add_episode(**episode)
    with h5py.File(path, "r") as f:
        stored = []
        f["data/demo_0"].visititems(lambda name, obj: stored.append(obj.id.get_storage_size())
                                    if isinstance(obj, h5py.Dataset) else None)
    assert sum(stored) == arrays


def test_an_output_folder_that_refuses_files_is_named_not_the_hidden_temporary_file(tmp_path, monkeypatch):
    import errno
    import tempfile

    def read_only(**kwargs):
        raise OSError(errno.EROFS, "Read-only file system", f"{kwargs['dir']}/.d.hdf5.7fnfoyng.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as err:
        RobomimicWriter(tmp_path / "d.hdf5", make_env_args("x", "0", {}))
    assert err.value.errno == errno.EROFS and "7fnfoyng" not in str(err.value)
    assert str(err.value).endswith(f"{tmp_path / 'd.hdf5'}: cannot write in {tmp_path} (Read-only file system)")


def test_the_partial_file_of_a_killed_writer_is_removed_by_the_next_and_a_live_writers_is_kept(tmp_path):
    """A collection killed outright (SIGKILL) left its hidden ``.<name>.<random>.tmp`` (GBs of frames) beside the
    user's data for good: the rerun wrote a new one and never looked (stop 60's note)."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from sim_envs import hdf5_writer

    path = tmp_path / "d.hdf5"
    script = textwrap.dedent(f"""
        import os, sys, time
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_collect import _episode
        from sim_envs.hdf5_writer import RobomimicWriter, make_env_args
        w = RobomimicWriter({str(path)!r}, make_env_args("x", "0", {{}}))
        w.add_episode(**_episode())
        print(w.tmp_path, flush=True)
        time.sleep(600)
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    try:
        killed, alive = [Path(w.stdout.readline().strip()) for w in writers]
        writers[0].send_signal(signal.SIGKILL)
        writers[0].wait(timeout=30)
        fresh = tmp_path / f".{path.name}.fresh.tmp"  # just made by a writer started after this one, not opened yet
        old = OLD_MTIME
        for partial in (killed, alive):
            os.utime(partial, (old, old))
        assert killed.is_file() and alive.is_file()
        with RobomimicWriter(path, make_env_args("x", "0", {})) as writer:
            fresh.write_bytes(b"")
            os.utime(fresh, (writer._started + 1e-3,) * 2)  # (a coarse file clock may stamp it before _started)
            writer.add_episode(**_episode())
        assert not killed.exists() and alive.is_file() and fresh.is_file()
        assert path.is_file()
        # a rerun started within the minute after a kill keeps that partial at its start, and removes it at its end
        # (it was kept till the minute had passed, and a finished rerun never looked again: breaker PP F01)
        recent = tmp_path / f".{path.name}.recent.tmp"
        recent.write_bytes(b"")
        with RobomimicWriter(path, make_env_args("x", "0", {}), overwrite=True) as writer:
            writer.add_episode(**_episode())
            assert recent.is_file()
        assert not recent.exists() and alive.is_file()
        assert not fresh.exists()  # (made before this writer started and never locked: its writer is gone)
        # with the library's locking off a live writer holds no lock, so none can be told from a dead one: kept
        unlocked = tmp_path / f".{path.name}.unlocked.tmp"
        unlocked.write_bytes(b"")
        os.utime(unlocked, (old, old))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
            assert hdf5_writer.remove_abandoned_partials(path) == [] and unlocked.is_file()
        assert hdf5_writer.remove_abandoned_partials(path) == [unlocked]
    finally:
        for w in writers:
            w.kill()
            w.wait(timeout=30)
