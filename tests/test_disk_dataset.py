"""The disk-backed offline dataset (frames read on demand from a frame index beside the HDF5 file): the same batches
as the in-memory dataset for the same seed (also with prefetch threads and frozen features), next_obs stored once
where it equals the following obs and kept at episode ends, truncations and breaks, exact resume mid-stream, disjoint
DDP shards, and a corrupt or truncated frame file named in one line."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from _compare import assert_same as assert_same_tree
from _stages import stage2_config
from robopretrain.checkpoint import load_latest
from robopretrain.data import dataset as dataset_mod
from robopretrain.data.dataset import RewardSettings, load_offline_dataset, spec_of_data
from robopretrain.data.frames import index_dir
from robopretrain.data.hdf5 import DatasetError
from sim_envs.hdf5_writer import RobomimicWriter, make_env_args

CAL_QL = RewardSettings(discount=0.9, scale=10.0, bias=-5.0, sparse=True)
CAM = "agentview_image"
# (length, terminated, step t whose next_obs is NOT obs[t + 1] (a break in the stream), or None)
EPISODES = [(5, True, None), (4, False, None), (6, True, 2), (3, False, None)]

OLD_MTIME = 1_000_000_000  # seconds since the epoch (2001): a file last written long before ABANDONED_AFTER_S


def write_file(path: Path, size: int = 6) -> tuple[Path, dict[str, np.ndarray]]:
    """Episodes of random frames (``size`` px) and a 2-D proprio; actions encode the transition index (i / 100)."""
    rng = np.random.default_rng(0)
    frames, nexts = [], []
    start = 0
    with RobomimicWriter(path, make_env_args("Toy", "0", {}), valid_fraction=0.0, chunk_frames=2) as w:
        for i, (n, terminated, brk) in enumerate(EPISODES):
            seq = rng.integers(0, 256, size=(n + 1, size, size, 3), dtype=np.uint8)
            obs, nxt = seq[:-1], seq[1:].copy()
            if brk is not None:
                nxt[brk] = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            prop = rng.normal(size=(n + 1, 2)).astype(np.float32)
            rewards = np.zeros(n, np.float32)
            rewards[-1] = float(terminated)
            w.add_episode(task="a" if i % 2 == 0 else "b", task_id=i % 2, obs={CAM: obs, "proprio": prop[:-1]},
                          next_obs={CAM: nxt, "proprio": prop[1:]},
                          actions=((start + np.arange(n)) / 100.0)[:, None].repeat(4, 1).astype(np.float32),
                          rewards=rewards, dones=rewards.astype(np.uint8), ep_meta={"success": terminated})
            frames.append(obs)
            nexts.append(nxt)
            start += n
    return path, {"obs": np.concatenate(frames), "next_obs": np.concatenate(nexts)}


def features(obs):
    """As Agent.prepare: the camera replaced by per-frame features (its mean colour), the rest unchanged."""
    out = {k: v for k, v in obs.items() if k != CAM}
    out["features"] = obs[CAM].reshape(len(obs[CAM]), -1, 3).mean(1).astype(np.float32)
    return out


@pytest.fixture
def toy(tmp_path):
    path, truth = write_file(tmp_path / "toy.hdf5")
    return path, truth, spec_of_data(path, ["proprio"], [CAM], None)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def transition_ids(batch) -> np.ndarray:
    return np.rint(batch["actions"][:, 0].numpy() * 100).astype(int)


def test_a_file_without_rewards_reads_the_same_from_disk_as_from_memory(toy):
    """The frame index stores the zeros a reward-free demo is read as, and the refusal and the rebuild from ep_meta
    come from the file's metadata, so both storages give the same data."""
    import h5py

    path, _, spec = toy
    with h5py.File(path, "r+") as f:
        for demo in f["data"].values():
            del demo["rewards"]
    with pytest.raises(DatasetError, match=r"4 of 4 selected demos have no rewards dataset"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk")
    memory = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="memory", rewards_from_success=True)
    disk = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="disk", rewards_from_success=True)
    assert_same(memory.sample(8), disk.sample(8))
    assert int((disk.arrays()["rewards"] > 0).sum()) == 2  # the two successful episodes, rebuilt


def test_keys_no_run_reads_and_actions_in_the_robots_units_index_as_memory_reads_them(toy):
    """A height map (N, 4, 4), float features of a picture's shape and actions outside [-1, 1] (the robot's units,
    data.actions=auto): a run in memory never reads the first two and rescales the actions; the frame index refused
    the file (it validated every key, and the actions' range as stored)."""
    import h5py

    from robopretrain.data.dataset import data_action_units
    from robopretrain.data.hdf5 import read_info

    path, _, spec = toy
    with h5py.File(path, "r+") as f:
        for demo in f["data"].values():
            n = demo["actions"].shape[0]
            demo["actions"][...] = demo["actions"][()] * 20.0  # up to 3.4
            for group in ("obs", "next_obs"):
                demo[f"{group}/heightmap"] = np.ones((n, 4, 4), np.float32)
                demo[f"{group}/features"] = np.ones((n, 8, 8, 3), np.float32)
    units = data_action_units(path, read_info(path), "auto")
    memory = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="memory", action_units=units)
    disk = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="disk", action_units=units)
    assert_same(memory.sample(8), disk.sample(8))
    assert np.abs(disk.arrays()["actions"]).max() <= 1.0 + 1e-6


def test_a_bad_done_in_a_demo_the_selection_leaves_out_stops_neither_storage(toy):
    """dones of 2 in demo_1 (task b): disk storage refused tasks=[a] while memory loaded it (the index read every
    demo's dones with the reader's check); a selection holding demo_1 is refused by both, naming it."""
    import h5py

    path, _, spec = toy
    with h5py.File(path, "r+") as f:
        f["data/demo_1/dones"][0] = 2
    memory = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="memory", tasks=["a"])
    disk = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="disk", tasks=["a"])
    assert_same(memory.sample(8), disk.sample(8))
    for storage in ("memory", "disk"):
        with pytest.raises(DatasetError, match=r"toy.hdf5: data/demo_1/dones: expected values in \{0, 1\}"):
            load_offline_dataset(path, spec, CAL_QL, storage=storage)


def test_disk_and_memory_give_identical_batches_also_with_prefetch_and_frozen_features(toy):
    path, _, spec = toy
    memory = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="memory")
    disk = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="disk")
    threads = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="disk", workers=2)
    assert type(disk).__name__ == "DiskDataset" and index_dir(path).is_dir()
    for _ in range(3):
        m = memory.sample(16)
        assert_same(m, disk.sample(16))
        assert_same(m, threads.sample(16))
    np.testing.assert_array_equal(memory.arrays()["mc_returns"], disk.arrays()["mc_returns"])
    threads.close()

    fm, fd = memory.map_observations(features, seed=5), disk.map_observations(features, seed=5)
    assert list((index_dir(path) / "cache").glob("*/features.bin"))
    assert_same(fm.get(np.arange(len(fm))), fd.get(np.arange(len(fd))))
    assert_same(fm.sample(8), fd.sample(8))


def test_next_obs_is_stored_once_and_exact_at_episode_ends_truncations_and_breaks(toy):
    path, truth, spec = toy
    disk = load_offline_dataset(path, spec, CAL_QL, storage="disk")
    everything = disk.get(np.arange(len(disk)))
    np.testing.assert_array_equal(everything["observations"][CAM].numpy(), truth["obs"])
    np.testing.assert_array_equal(everything["next_observations"][CAM].numpy(), truth["next_obs"])
    # one row per step, plus the last next_obs of each episode, plus one per break
    n = sum(e[0] for e in EPISODES)
    assert disk.stores[CAM].shape[0] == n + len(EPISODES) + sum(e[2] is not None for e in EPISODES)
    rows = disk.rows[CAM]
    assert rows[1, 0] == rows[0, 1]  # shared within an episode
    # the break (only in the frames) does not split the demo (episodes are the demos; a split made steps 0-2 a
    # never-succeeding episode, -50 each): the returns run through it, as on the in-memory path
    mc = disk.arrays()["mc_returns"][9:15]
    np.testing.assert_allclose(mc, [-17.52305, -13.9145, -9.905, -5.45, -0.5, 5], rtol=1e-6)  # G = -5 + 0.9 G
    memory = load_offline_dataset(path, spec, CAL_QL, storage="memory")
    np.testing.assert_array_equal(memory.arrays()["mc_returns"], disk.arrays()["mc_returns"])


def test_resume_mid_stream_gives_the_batches_of_an_uninterrupted_run(toy, tmp_path):
    path, _, spec = toy
    run = load_offline_dataset(path, spec, CAL_QL, seed=7, storage="disk", workers=2)
    for _ in range(3):
        run.sample(8)
    torch.save(run.state_dict(), tmp_path / "state.pt")  # batches already read ahead are not in the state
    expected = [transition_ids(run.sample(8)) for _ in range(3)]
    resumed = load_offline_dataset(path, spec, CAL_QL, seed=123, storage="disk", workers=2)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert [transition_ids(resumed.sample(8)).tolist() for _ in range(3)] == [e.tolist() for e in expected]
    run.close()
    resumed.close()


def test_ddp_ranks_sample_disjoint_shards_that_cover_the_data(toy):
    path, _, spec = toy
    seen = []
    for rank in range(3):
        ds = load_offline_dataset(path, spec, CAL_QL, seed=0, storage="disk", rank=rank, world_size=3)
        seen.append(set(np.concatenate([transition_ids(ds.sample(32)) for _ in range(4)]).tolist()))
    n = sum(e[0] for e in EPISODES)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert set().union(*seen) == set(range(n))
    whole = load_offline_dataset(path, spec, CAL_QL, seed=0, storage="disk")  # the default: one process, all data
    assert whole.shard == (0, n)
    whole.close()


def test_a_corrupt_or_truncated_frame_file_is_named_in_one_line(toy):
    path, _, spec = toy
    load_offline_dataset(path, spec, CAL_QL, storage="disk")  # builds the index
    frames = index_dir(path) / f"{CAM}.u8"
    row_bytes = 6 * 6 * 3
    data = bytearray(frames.read_bytes())
    first = bytearray(data)
    first[2 * row_bytes] ^= 0xFF  # row 2: demo_0's third frame (the first demo is named too, not its neighbour)
    frames.write_bytes(bytes(first))
    with pytest.raises(DatasetError, match=rf"demo demo_0 key {CAM} \(frame row 2\): checksum mismatch"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk").get(np.arange(0, 5))
    first[2 * row_bytes] ^= 0xFF
    first[6 * row_bytes] ^= 0xFF  # row 6: demo_1's first frame, at the boundary
    frames.write_bytes(bytes(first))
    with pytest.raises(DatasetError, match=rf"demo demo_1 key {CAM} \(frame row 6\): checksum mismatch"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk").get(np.arange(5, 7))  # demo_1: transitions 5-
    data[7 * row_bytes + 5] ^= 0xFF  # row 7: demo_1's second frame (demo_0 holds rows 0-5)
    frames.write_bytes(bytes(data))
    disk = load_offline_dataset(path, spec, CAL_QL, storage="disk")
    disk.get(np.arange(0, 5))  # demo_0 still reads
    with pytest.raises(DatasetError) as err:
        disk.get(np.arange(len(disk)))
    msg = str(err.value)
    assert "\n" not in msg and str(frames) in msg and "demo_1" in msg and CAM in msg and "checksum" in msg
    frames.write_bytes(bytes(data[: 10 * row_bytes]))
    with pytest.raises(DatasetError, match=rf"{CAM}.u8: demo demo_1 key {CAM} \(frame row 10\).*truncated"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk")
    frames.unlink()  # it said "file has -1 bytes" and named a frame row
    with pytest.raises(DatasetError, match=rf"{CAM}.u8: missing \({len(data)} bytes expected\); delete the folder"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk")


def test_auto_storage_follows_the_size_threshold_and_unknown_values_are_refused(toy, monkeypatch):
    path, _, spec = toy
    assert type(load_offline_dataset(path, spec, CAL_QL, storage="auto")).__name__ == "OfflineDataset"
    monkeypatch.setattr(dataset_mod, "MEMORY_LIMIT_BYTES", 2 * 18 * 6 * 6 * 3 - 1)  # one byte less than the frames
    assert type(load_offline_dataset(path, spec, CAL_QL, storage="auto")).__name__ == "DiskDataset"
    monkeypatch.setattr(dataset_mod, "MEMORY_LIMIT_BYTES", 2 * 18 * 6 * 6 * 3)  # obs and next_obs frames exactly fit
    assert type(load_offline_dataset(path, spec, CAL_QL, storage="auto")).__name__ == "OfflineDataset"
    with pytest.raises(ValueError, match=r"data.storage='mmap'; expected one of \('auto', 'memory', 'disk'\)"):
        load_offline_dataset(path, spec, CAL_QL, storage="mmap")


def test_disk_storage_for_an_agent_without_cameras_says_its_data_is_held_in_memory(toy, caplog):
    """data.storage=disk on state-only data was dropped without a word (under torchrun no rank got a shard, which
    docs/scaling.md promised for disk)."""
    import logging

    path, _, _ = toy
    state = spec_of_data(path, ["proprio"], [], None)
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.dataset"):
        data = load_offline_dataset(path, state, CAL_QL, storage="disk")
    assert type(data).__name__ == "OfflineDataset"
    assert "data.storage=disk reads camera frames from a frame index, and the agent reads no camera" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.data.dataset"):
        load_offline_dataset(path, state, CAL_QL, storage="memory")
    assert "data.storage=disk" not in caplog.text


def test_stage2_on_disk_resumes_exactly_and_stops_at_a_corrupt_frame(tmp_path):
    """Stage 2 (CQL from 16 px images, encoder from scratch) with storage=disk and prefetch threads: 2 updates then
    the same command with 4 give the weights of 4 straight (the checkpoint holds the sampler's state as of the
    batches trained on, not of those read ahead); corrupt frames stop the run with its checkpoints intact."""
    from robopretrain.train import run

    path, _ = write_file(tmp_path / "img.hdf5", size=16)
    obs = {"low_dim": ["proprio"], "rgb": [CAM]}

    def stage2(out: str, steps: int):
        return run(stage2_config(path, tmp_path / out, algo="cql", steps=steps, obs=obs,
                                 data_cfg={"storage": "disk", "workers": 2}, train={"checkpoint_every": 2}))

    straight = load_latest(stage2("straight", 4).parent)
    stage2("resumed", 2)
    resumed = load_latest(stage2("resumed", 4).parent)
    assert straight.step == resumed.step == 4 and straight.meta["num_transitions"] == sum(e[0] for e in EPISODES)
    assert_same_tree(resumed.weights, straight.weights)
    # every frame corrupt: extending the run stops with one line naming the file, demo and key; step 4 stays latest
    frames = index_dir(path) / f"{CAM}.u8"
    frames.write_bytes(bytes(b ^ 0xFF for b in frames.read_bytes()))
    with pytest.raises(DatasetError) as err:
        stage2("resumed", 6)
    assert "\n" not in str(err.value) and f"{CAM}.u8: demo demo_" in str(err.value) and f"key {CAM}" in str(err.value)
    assert load_latest(tmp_path / "resumed" / "checkpoints").step == 4


def test_a_touched_file_keeps_its_index_and_a_changed_one_is_indexed_again(toy, monkeypatch):
    """The index records the file's size, times and SHA-256: a file only touched (or copied over itself) is hashed
    once and keeps its index (a 12 GB file's index takes ~15 min), which takes the new time; a byte changed at the
    same size is indexed again, also when the edit set the modification time back (a helper's stale index)."""
    import os
    import time

    from robopretrain.data import frames as frames_mod

    path, _, spec = toy
    load_offline_dataset(path, spec, CAL_QL, storage="disk").close()  # builds the index
    real_hash = frames_mod.sha256_of

    class Rebuilt(Exception):
        pass

    def no_build(*args, **kwargs):
        raise Rebuilt

    monkeypatch.setattr(frames_mod, "build_index", no_build)
    later = time.time_ns() + 10**9
    os.utime(path, ns=(later, later))
    hashed = []
    monkeypatch.setattr(frames_mod, "sha256_of", lambda p: hashed.append(p) or real_hash(p))
    load_offline_dataset(path, spec, CAL_QL, storage="disk").close()  # no rebuild
    assert hashed == [path]
    assert frames_mod.json.loads((index_dir(path) / "meta.json").read_text())["source"]["mtime_ns"] == later
    load_offline_dataset(path, spec, CAL_QL, storage="disk").close()  # the new time is recorded: no hashing
    assert hashed == [path]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(later, later))  # its time set back (cp -p, rsync -t): the index was taken as current, stale
    with pytest.raises(Rebuilt):  # the change time moved: hashed, and the new content indexed again
        load_offline_dataset(path, spec, CAL_QL, storage="disk")
    assert hashed == [path, path]


def test_an_index_of_an_older_version_without_a_change_time_is_checked_once_and_said_so(toy, caplog):
    """An index built before change times were recorded: hashed once and kept, the log saying why (it said the file
    was modified), and the change time recorded for the next run."""
    import logging

    from robopretrain.data import frames as frames_mod

    path, _, spec = toy
    load_offline_dataset(path, spec, CAL_QL, storage="disk").close()  # builds the index
    meta_path = index_dir(path) / "meta.json"
    meta = frames_mod.json.loads(meta_path.read_text())
    meta["source"].pop("ctime_ns")
    meta_path.write_text(frames_mod.json.dumps(meta))
    with caplog.at_level(logging.INFO, logger="robopretrain.data.frames"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk").close()
    assert "recorded no change time" in caplog.text and "modified since" not in caplog.text
    assert frames_mod.json.loads(meta_path.read_text())["source"]["ctime_ns"] == path.stat().st_ctime_ns


def test_an_index_that_cannot_take_new_times_is_hashed_once_not_every_run(toy, tmp_path, monkeypatch):
    """A chmod / chown (or an fsGroup mount) moves the change time; where meta.json could not be written the whole
    file was hashed again on every run (a minute per 12 GB). The cache keeps the times the content was verified at;
    an edit after them is still found."""
    import os

    from robopretrain.data import frames as frames_mod

    path, _, spec = toy
    monkeypatch.setenv("ROBOPRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    load_offline_dataset(path, spec, CAL_QL, storage="disk").close()  # builds the index
    real_write, real_hash = frames_mod.write_json_atomic, frames_mod.sha256_of

    def read_only_meta(target, *args, **kwargs):
        if Path(target).name == "meta.json":
            raise PermissionError(13, "Permission denied", str(target))
        return real_write(target, *args, **kwargs)

    class Rebuilt(Exception):
        pass

    def no_build(*args, **kwargs):
        raise Rebuilt

    monkeypatch.setattr(frames_mod, "write_json_atomic", read_only_meta)
    monkeypatch.setattr(frames_mod, "build_index", no_build)
    hashed = []
    monkeypatch.setattr(frames_mod, "sha256_of", lambda p: hashed.append(p) or real_hash(p))
    os.chmod(path, os.stat(path).st_mode ^ 0o004)  # the change time moves, not the content
    for _ in range(3):
        load_offline_dataset(path, spec, CAL_QL, storage="disk").close()
    assert hashed == [path]
    assert frames_mod.verified_stamp_path(index_dir(path)).parent == tmp_path / "cache" / "frames" / "verified"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Rebuilt):
        load_offline_dataset(path, spec, CAL_QL, storage="disk")
    assert hashed == [path, path]


def test_a_failed_index_build_stops_the_hash_and_leaves_no_partial_index(toy, monkeypatch):
    """The SHA-256 of the source runs in a thread beside the frame copy; a copy that failed (disk full, Ctrl-C) still
    waited for the hash of the whole file (~1 s per GB) and left its temporary folder beside the file."""
    import threading

    from robopretrain.data import frames as frames_mod

    path, _, _ = toy
    hash_seen = {}

    def slow_hash(p, stop=None):  # stands for a long file: ends when told to, or after 60 s
        hash_seen["stop given"] = stop is not None
        hash_seen["stopped"] = stop.wait(60) if stop is not None else False
        raise InterruptedError("stopped")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(frames_mod, "sha256_of", slow_hash)
    monkeypatch.setattr(frames_mod, "_write_index", full_disk)
    with pytest.raises(DatasetError, match="ran out of room writing its frame index"):  # the disk full, said so
        frames_mod.build_index(path, [CAM])
    assert hash_seen == {"stop given": True, "stopped": True}
    assert not [p.name for p in index_dir(path).parent.iterdir() if p.name.startswith(index_dir(path).name)]
    assert not any(t.name.startswith("index-sha256") for t in threading.enumerate())


def test_sha256_of_stops_between_pieces_when_told(tmp_path):
    import hashlib
    import threading

    from robopretrain.files import sha256_of

    f = tmp_path / "f.bin"
    f.write_bytes(bytes(range(256)) * 64)
    assert sha256_of(f, block=100) == hashlib.sha256(f.read_bytes()).hexdigest()
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError):
        sha256_of(f, block=100, stop=stop)


def test_the_folder_of_a_killed_index_build_is_removed_by_the_next_and_a_running_builds_is_kept(toy):
    """A build killed outright (SIGKILL) left ``<file>.frames.tmp<pid>/`` (up to every frame of the file,
    uncompressed) beside the user's data for good (stop 60's note)."""
    import signal
    import subprocess
    import sys
    import textwrap

    from robopretrain.data import frames as frames_mod

    path, _, _ = toy
    script = textwrap.dedent(f"""
        import time
        from robopretrain.data import frames
        def hang(*args, **kwargs):  # a long copy, in its build folder, holding the lock
            print("building", flush=True)
            time.sleep(600)
        frames._write_index = hang
        frames.build_index({str(path)!r}, [{CAM!r}])
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    builders = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    try:
        for b in builders:
            assert b.stdout.readline().strip() == "building"
        builders[0].send_signal(signal.SIGKILL)
        builders[0].wait(timeout=30)
        folder = index_dir(path)
        killed, running = (folder.with_name(f"{folder.name}.tmp{b.pid}") for b in builders)
        replaced = folder.with_name(f"{folder.name}.old123")  # a replaced index a killed build had moved aside
        mine = folder.with_name(f"{folder.name}.tmp_notes")  # not a build's name: the user's
        young = folder.with_name(f"{folder.name}.old456")  # moved aside a moment ago, by a build still renaming
        for d in (replaced, mine, young):
            d.mkdir()
        old = OLD_MTIME
        for p in (killed / frames_mod.BUILDING, running / frames_mod.BUILDING, replaced, mine):
            os.utime(p, (old, old))
        frames_mod.build_index(path, [CAM])
        assert not killed.exists() and not replaced.exists()
        assert running.is_dir() and mine.is_dir() and young.is_dir() and (folder / "meta.json").is_file()
        assert not (folder / frames_mod.BUILDING).exists()
    finally:
        for b in builders:
            b.kill()
            b.wait(timeout=30)


def test_a_disk_load_that_builds_the_index_reads_the_files_metadata_once(toy, monkeypatch):
    """The index build read the file's metadata once more (load_transitions without the caller's read_info)."""
    import robopretrain.data.hdf5 as hdf5_mod

    path, _, spec = toy
    calls = []
    monkeypatch.setattr(hdf5_mod, "_demo_info", lambda *a, real=hdf5_mod._demo_info: calls.append(a[2]) or real(*a))
    load_offline_dataset(path, spec, CAL_QL, storage="disk")
    assert index_dir(path).is_dir() and len(calls) == len(EPISODES) == len(set(calls))


def test_leftovers_of_builds_killed_and_rerun_at_once_are_removed_by_a_later_run_that_builds_nothing(toy):
    """A build (or feature write) killed outright and rerun at once: the rerun found the killed one's folder (file)
    too young to be abandoned, and every run after it found a current index (features) and built nothing, so the
    partial folder stayed beside the user's data for good (a new user's finding). Opening the index and the
    features removes them once they are old enough."""
    from robopretrain.data import frames as frames_mod

    path, _, spec = toy
    disk = load_offline_dataset(path, spec, CAL_QL, storage="disk")
    disk.map_observations(features, seed=5)
    folder = index_dir(path)
    (written,) = (folder / "cache").glob("*/features.bin")
    killed = folder.with_name(f"{folder.name}.tmp999999")  # (no lock held on its .building file: its build died)
    killed.mkdir()
    (killed / frames_mod.BUILDING).write_bytes(b"")
    partial = written.with_name(f"{written.name}.tmp999999")
    partial.write_bytes(b"x")
    young = folder.with_name(f"{folder.name}.tmp999998")  # made a moment ago: maybe a build not yet locked
    young.mkdir()
    (young / frames_mod.BUILDING).write_bytes(b"")
    for p in (killed / frames_mod.BUILDING, partial):
        os.utime(p, (OLD_MTIME, OLD_MTIME))
    again = load_offline_dataset(path, spec, CAL_QL, storage="disk")  # the index is current: nothing is built
    assert not killed.exists() and young.is_dir()
    assert partial.is_file()  # (the features are not opened yet)
    again.map_observations(features, seed=5)
    assert not partial.exists() and written.is_file()


def test_a_killed_feature_writers_partial_file_is_removed_by_the_next_and_a_running_writers_is_kept(tmp_path):
    """A frozen-feature cache write killed outright (SIGKILL) left ``<file>.tmp<pid>`` (up to every feature row of
    the data) in the cache for good (stop 61's note)."""
    import signal
    import subprocess
    import sys
    import textwrap

    from robopretrain.data.frames import FrameStore, write_rows

    path = tmp_path / "features.bin"
    script = textwrap.dedent(f"""
        import time
        import numpy as np
        from pathlib import Path
        from robopretrain.data.frames import write_rows
        def chunks():  # one chunk written, then a long encoder pass, holding the lock
            yield np.ones((4, 3), np.float32)
            print("writing", flush=True)
            time.sleep(600)
        write_rows(Path({str(path)!r}), chunks())
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == "writing"
        writers[0].send_signal(signal.SIGKILL)
        writers[0].wait(timeout=30)
        killed, running = (path.with_name(f"{path.name}.tmp{w.pid}") for w in writers)
        young = path.with_name(f"{path.name}.tmp1")  # unlocked but just made: its writer may not hold the lock yet
        mine = path.with_name(f"{path.name}.tmp_notes")  # not a writer's name: the user's
        young.write_bytes(b"x")
        mine.write_bytes(b"x")
        for p in (killed, running, mine):
            os.utime(p, (OLD_MTIME, OLD_MTIME))
        rows = np.arange(12, dtype=np.float32).reshape(6, 2)
        shape = write_rows(path, [rows[:4], rows[4:]])
        assert not killed.exists()
        assert running.is_file() and young.is_file() and mine.is_file()
        assert not path.with_name(f"{path.name}.tmp{os.getpid()}").exists()
        store = FrameStore(path, shape, np.float32, path.with_name(path.name + ".crc.npy"))
        np.testing.assert_array_equal(store.read(np.arange(6)), rows)
    finally:
        for w in writers:
            w.kill()
            w.wait(timeout=30)


def test_a_frame_store_pickles_to_a_reader_of_its_own_and_closes_its_file_when_dropped(tmp_path):
    """Worker processes get the store pickled: it reopens its file there (a descriptor does not travel); a dropped
    store closes its file."""
    import gc
    import pickle

    from robopretrain.data.frames import FrameStore, write_rows

    path = tmp_path / "rows.bin"
    rows = np.arange(24, dtype=np.float32).reshape(6, 4)
    shape = write_rows(path, [rows])
    store = FrameStore(path, shape, np.float32, path.with_name(path.name + ".crc.npy"))
    copy = pickle.loads(pickle.dumps(store))
    assert copy._fd is not None and copy._fd != store._fd
    np.testing.assert_array_equal(copy.read(np.array([5, 0])), rows[[5, 0]])
    fd = copy._fd
    del copy
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)
    np.testing.assert_array_equal(store.read(np.array([1])), rows[[1]])


@pytest.mark.parametrize("stored", [(5, 6), (5, 6, 1)])
def test_a_grey_cameras_frames_are_read_from_disk_as_rgb(tmp_path, stored):
    """A grey camera (uint8 (H, W) or (H, W, 1) frames) is read as (H, W, 3), as the in-memory path reads it."""
    from robopretrain.data.frames import FrameStore, write_rows

    path = tmp_path / "grey.bin"
    frames = np.random.default_rng(0).integers(0, 256, (3, *stored), dtype=np.uint8)
    shape = write_rows(path, [frames])
    store = FrameStore(path, shape, np.uint8, path.with_name(path.name + ".crc.npy"))
    out = store.read(np.array([2, 0]))
    assert out.shape == (2, 5, 6, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], frames[[2, 0]].reshape(2, 5, 6))


def test_an_index_of_another_version_another_camera_set_or_another_file_size_is_not_current(toy):
    """The checks before the file's time and hash: each alone makes the index stale (it is then built again)."""
    import json

    from robopretrain.data import frames as frames_mod

    path, _, _ = toy
    folder = frames_mod.build_index(path, [CAM])
    assert frames_mod._index_is_current(folder, path, [CAM])
    assert not frames_mod._index_is_current(folder, path, [CAM, "eye_in_hand_image"])  # a camera it lacks
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    grown = {**meta["source"], "size": meta["source"]["size"] + 1}
    for changed in ({"version": meta["version"] + 1}, {"source": grown}):
        meta_path.write_text(json.dumps({**meta, **changed}))
        assert not frames_mod._index_is_current(folder, path, [CAM]), changed
    meta_path.write_text(json.dumps(meta))
    assert frames_mod._index_is_current(folder, path, [CAM])


def test_cameras_of_two_sizes_are_refused_before_a_frame_index_is_built(tmp_path):
    """The refusal needs only the file's shapes; it came after the frame index of both cameras was built (15 min at
    the README's 12.5 GB) and left the index beside the data."""
    from robopretrain.train import run

    path = tmp_path / "two.hdf5"
    rng = np.random.default_rng(0)
    with RobomimicWriter(path, make_env_args("Toy", "0", {}), valid_fraction=0.0) as w:
        for _ in range(2):
            seq = {k: rng.integers(0, 256, size=(5, s, s, 3), dtype=np.uint8)
                   for k, s in ((CAM, 8), ("wrist_image", 12))}
            seq["proprio"] = np.zeros((5, 2), np.float32)
            w.add_episode(task="a", task_id=0, obs={k: v[:-1] for k, v in seq.items()},
                          next_obs={k: v[1:] for k, v in seq.items()}, actions=np.zeros((4, 4), np.float32),
                          rewards=np.eye(4, dtype=np.float32)[-1], dones=np.eye(4, dtype=np.uint8)[-1],
                          ep_meta={"success": True})
    cfg = stage2_config(path, tmp_path / "run", algo="bc", steps=2, obs={"low_dim": ["proprio"],
                                                                        "rgb": [CAM, "wrist_image"]},
                        data_cfg={"storage": "disk"})
    with pytest.raises(ValueError, match=r"two.hdf5: observation spec: cameras must be square and of one size, got "
                                         r"agentview_image \(8, 8, 3\), "
                                         r"wrist_image \(12, 12, 3\)"):
        run(cfg)
    assert not index_dir(path).exists()


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_both_storages_say_how_many_transitions_and_demos_they_read(toy, caplog, storage):
    """Memory mode said nothing of what it selected (a wrong mask went unnoticed); both say it now."""
    import logging

    path, _, spec = toy
    with caplog.at_level(logging.INFO, logger="robopretrain.data.dataset"):
        data = load_offline_dataset(path, spec, CAL_QL, storage=storage, tasks=["a"])
    getattr(data, "close", lambda: None)()
    assert f"{path}: 11 transitions of 2 demos" in caplog.text  # task a: the episodes of 5 and 6 steps


def test_a_frame_index_without_room_is_refused_naming_the_folder_and_the_sizes(toy, monkeypatch):
    """A full disk said only '[Errno 28] No space left on device'. The size the index needs is known before it is
    written: refused first when the filesystem lacks it, and a disk that fills up meanwhile is said the same way;
    neither leaves a partial index."""
    import errno
    from collections import namedtuple

    from robopretrain.data import frames as frames_mod

    path, _, spec = toy
    usage = namedtuple("usage", "total used free")
    need = frames_mod.index_bytes(frames_mod.read_info(path), [CAM])
    assert need == (sum(n for n, _, _ in EPISODES) + len(EPISODES)) * (6 * 6 * 3 + 4)  # 18 + 4 frames, and CRCs
    # the advice's memory figure is the in-memory path's, obs and next_obs each whole: about twice the index (it said
    # "about that much", half of what memory took; a new user's finding)
    from robopretrain.data.dataset import frame_bytes

    info = frames_mod.read_info(path)
    in_memory = frames_mod.memory_bytes(info, [CAM])
    assert in_memory == frame_bytes(info, [d.name for d in info.demos], [CAM]) == 2 * 18 * 6 * 6 * 3
    monkeypatch.setattr(frames_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9, need - 1))
    with pytest.raises(DatasetError, match=r"toy.hdf5: no room for its frame index .*toy.hdf5.frames \(data.storage="
                                           r"disk\): it takes at least 0.00 GB and 0.00 GB were free .*data.storage="
                                           r"memory \(its frames then take about 0.00 GB of memory"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk")
    monkeypatch.setattr(frames_mod.shutil, "disk_usage", lambda p: usage(10**9, 0, 10**9))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(frames_mod, "_write_index", full)
    with pytest.raises(DatasetError, match=r"ran out of room writing its frame index .* 1.00 GB were free on that "
                                           r"filesystem when it started"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk")
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith("toy.hdf5.")) == []


def test_a_file_in_a_folder_that_cannot_be_written_is_indexed_in_the_cache(toy, tmp_path, monkeypatch):
    """A shared read-only dataset had to be copied or loaded whole into memory: its index goes to
    $ROBOPRETRAIN_CACHE_DIR/frames, is found there on the next run (not built again), and gives the batches a
    memory run gives; with neither place writable the refusal names both and the settings."""
    from robopretrain.data import frames as frames_mod

    path, _, spec = toy
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # a folder under a file cannot be made (as under a read-only mount)
    monkeypatch.setattr(frames_mod, "index_dir", lambda p: blocked / (Path(p).name + ".frames"))
    monkeypatch.setenv("ROBOPRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    disk = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="disk")
    cached = frames_mod.cache_index_dir(path)
    assert cached.parent == tmp_path / "cache" / "frames" and (cached / "meta.json").is_file()
    memory = load_offline_dataset(path, spec, CAL_QL, seed=3, storage="memory")
    assert_same(memory.sample(8), disk.sample(8))
    disk.close()

    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(frames_mod, "build_index", no_build)
    load_offline_dataset(path, spec, CAL_QL, storage="disk").close()  # found in the cache
    monkeypatch.undo()
    monkeypatch.setattr(frames_mod, "index_dir", lambda p: blocked / (Path(p).name + ".frames"))
    monkeypatch.setenv("ROBOPRETRAIN_CACHE_DIR", str(blocked / "cache"))
    with pytest.raises(DatasetError, match=r"toy.hdf5: cannot write its frame index beside it \(.*\) nor in the "
                                           r"cache \(.*\); set ROBOPRETRAIN_CACHE_DIR to a writable folder, or "
                                           r"data.storage=memory"):
        load_offline_dataset(path, spec, CAL_QL, storage="disk")


def _two_camera_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with RobomimicWriter(path, make_env_args("Toy", "0", {}), valid_fraction=0.0) as w:
        for _ in range(2):
            seq = {k: rng.integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8) for k in (CAM, "wrist_image")}
            seq["proprio"] = np.zeros((5, 2), np.float32)
            w.add_episode(task="a", task_id=0, obs={k: v[:-1] for k, v in seq.items()},
                          next_obs={k: v[1:] for k, v in seq.items()}, actions=np.zeros((4, 4), np.float32),
                          rewards=np.eye(4, dtype=np.float32)[-1], dones=np.eye(4, dtype=np.uint8)[-1],
                          ep_meta={"success": True})
    return path


def test_an_index_rebuilt_for_another_camera_keeps_the_cameras_it_held(tmp_path, monkeypatch):
    """Runs on one camera of a file, then another, then the first rebuilt the index each time (each build dropped
    the other camera; 15 min a build at the README's scale): the rebuild keeps the cameras held before."""
    from robopretrain.data import frames as frames_mod

    path = _two_camera_file(tmp_path / "two.hdf5")
    assert sorted(frames_mod.open_index(path, [CAM]).meta["keys"]) == [CAM]
    assert sorted(frames_mod.open_index(path, ["wrist_image"]).meta["keys"]) == [CAM, "wrist_image"]

    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(frames_mod, "build_index", no_build)
    for keys in ([CAM], ["wrist_image"], [CAM, "wrist_image"]):
        assert frames_mod.open_index(path, keys).rows.keys() == set(keys)


@pytest.mark.parametrize("demos, shown", [(63, False), (64, True)])
def test_an_index_build_of_many_demos_shows_its_progress(tmp_path, capfd, demos, shown):
    """A 12 GB index build printed one line and then nothing for 15 minutes; from 64 demos on it shows a bar."""
    from robopretrain.data import frames as frames_mod

    path = tmp_path / "many.hdf5"
    with RobomimicWriter(path, make_env_args("Toy", "0", {}), valid_fraction=0.0) as w:
        for _ in range(demos):
            seq = {CAM: np.zeros((3, 6, 6, 3), np.uint8), "proprio": np.zeros((3, 2), np.float32)}
            w.add_episode(task="a", task_id=0, obs={k: v[:-1] for k, v in seq.items()},
                          next_obs={k: v[1:] for k, v in seq.items()}, actions=np.zeros((2, 4), np.float32),
                          rewards=np.zeros(2, np.float32), dones=np.zeros(2, np.uint8), ep_meta={"success": False})
    capfd.readouterr()
    frames_mod.build_index(path, [CAM])
    assert (f"indexing {CAM}" in capfd.readouterr().err) == shown


def test_an_index_build_refuses_next_obs_frames_of_another_shape_than_obs(toy):
    """A demo whose next_obs camera differs in shape from its obs camera cannot share rows: refused by name."""
    import h5py

    from robopretrain.data import frames as frames_mod

    path, _, _ = toy
    with h5py.File(path, "r+") as f:
        n = f[f"data/demo_2/obs/{CAM}"].shape[0]
        del f[f"data/demo_2/next_obs/{CAM}"]
        f[f"data/demo_2/next_obs/{CAM}"] = np.zeros((n, 8, 8, 3), np.uint8)
    with pytest.raises(DatasetError, match=rf"data/demo_2/obs/{CAM}: expected uint8 \(N, H, W, 3\) frames .* in obs "
                                           rf"and next_obs, got uint8 \({n}, 6, 6, 3\) and uint8 \({n}, 8, 8, 3\)"):
        frames_mod.build_index(path, [CAM])


def test_an_index_in_the_cache_rebuilt_for_another_camera_keeps_the_cameras_it_held(tmp_path, monkeypatch):
    """The same where the file's folder cannot be written and the index lives in the cache."""
    from robopretrain.data import frames as frames_mod

    path = _two_camera_file(tmp_path / "two.hdf5")
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # a folder under a file cannot be made (as under a read-only mount)
    monkeypatch.setattr(frames_mod, "index_dir", lambda p: blocked / (Path(p).name + ".frames"))
    monkeypatch.setenv("ROBOPRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    assert frames_mod.open_index(path, [CAM]).folder == frames_mod.cache_index_dir(path)
    rebuilt = frames_mod.open_index(path, ["wrist_image"])
    assert rebuilt.folder == frames_mod.cache_index_dir(path) and sorted(rebuilt.meta["keys"]) == [CAM, "wrist_image"]


def test_index_bytes_counts_the_demos_the_index_holds_and_their_last_frames():
    """Demos of one step are not indexed (no transition with a next frame of its own): not counted."""
    from robopretrain.data import frames as frames_mod
    from robopretrain.data.hdf5 import DatasetInfo, DemoInfo

    demos = [DemoInfo(f"demo_{i}", n, "a", 0) for i, n in enumerate((1, 2, 5))]
    info = DatasetInfo("x.hdf5", 8, {}, demos, {}, {"a": 0}, {CAM: ((6, 6, 3), np.uint8), "p": ((3,), np.float32)}, 4)
    assert frames_mod.index_bytes(info, [CAM, "missing"]) == (2 + 5 + 2) * (6 * 6 * 3 + 4)


def test_only_a_writers_own_partial_rows_file_is_removed(tmp_path):
    """``<path>.tmp<pid>`` left by a killed writer goes; another file named like it (``.tmpx12``, ``.tmp``) stays."""
    import os

    from robopretrain.data import frames as frames_mod

    path = tmp_path / "feat.f32"
    old = 10**9  # (2001: long past ABANDONED_AFTER_S)
    for name in ("feat.f32.tmp123", "feat.f32.tmpx12", "feat.f32.tmp", "feat.f32.tmp7"):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    assert sorted(p.name for p in frames_mod.remove_abandoned_rows(path)) == ["feat.f32.tmp123", "feat.f32.tmp7"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feat.f32.tmp", "feat.f32.tmpx12"]

