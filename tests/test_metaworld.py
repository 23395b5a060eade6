"""Meta-World targets: the adapter's contract (keys, dtypes, upright images, seeded resets, sparse success reward,
termination, time limit), the scripted experts, the demo collector's file (read by our reader and by robomimic's
SequenceDataset, rebuildable from its env_args) and construction in a spawned worker."""
from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from robopretrain.envs.metaworld import (ALL_TASKS, MT10_TASKS, OBJECT_DIM, PROPRIO_DIM, TASK_IDS, MetaWorldEnv,
                                         camera_key, env_id, metaworld_state, mt10_split, task_name)

ROOT = Path(__file__).resolve().parents[1]
needs_metaworld = pytest.mark.skipif(importlib.util.find_spec("metaworld") is None,
                                     reason="Meta-World is not installed: pip install -e '.[metaworld]'")


def expert_rollout(env, task, seed, noise=0.0):
    from robopretrain.envs.metaworld_collect import ScriptedExpert

    obs, _ = env.reset(seed=seed)
    expert = ScriptedExpert(task, noise, np.random.default_rng(seed))
    rewards = []
    while True:
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        rewards.append(reward)
        if terminated or truncated:
            return rewards, terminated, truncated, info


# ---------------------------------------------------------------------------------------------- names, ids, split
def test_task_ids_names_and_split():
    assert len(ALL_TASKS) == 50 == len(set(ALL_TASKS))
    assert [TASK_IDS[t] for t in MT10_TASKS] == list(range(10))
    assert task_name("drawer-open") == "drawer-open-v3" == task_name("drawer-open-v3")
    with pytest.raises(ValueError, match="unknown Meta-World task 'drawer-opn'"):
        task_name("drawer-opn")
    with pytest.raises(ValueError, match="v3 tasks only; use 'drawer-open-v3'"):  # a paper's v2 name: its v3 one
        task_name("drawer-open-v2")
    split = mt10_split()
    assert split.target == "drawer-open-v3" and len(split.prior) == 9 and split.target not in split.prior
    assert mt10_split("door-close").prior == MT10_TASKS
    assert env_id("reach") == "robopretrain/MetaWorld-reach-v3"
    assert camera_key("corner") == "agentview_image" and camera_key("corner2") == "corner2_image"


@needs_metaworld
def test_task_list_matches_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3
    from metaworld.policies import ENV_POLICY_MAP

    assert set(ALL_TASKS) == set(ALL_V3_ENVIRONMENTS) == set(ENV_POLICY_MAP)
    assert MT10_TASKS == tuple(MT10_V3)


# ---------------------------------------------------------------------------------------------- env contract
@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv("drawer-open-v3", image_size=64)
    yield e
    e.close()


@needs_metaworld
@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value")
def test_env_checker_keys_dtypes_and_index_map(env):
    from gymnasium.utils.env_checker import check_env

    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert set(obs) == {"proprio", "object", "task_id", "agentview_image"} and info["success"] is False
    assert obs["proprio"].shape == (PROPRIO_DIM,) and obs["proprio"].dtype == np.float32
    assert obs["object"].shape == (OBJECT_DIM,) and obs["object"].dtype == np.float32
    assert obs["agentview_image"].shape == (64, 64, 3) and obs["agentview_image"].dtype == np.uint8
    assert obs["task_id"] == TASK_IDS["drawer-open-v3"] == 4
    s = env.state
    np.testing.assert_array_equal(obs["proprio"], s[0:4].astype(np.float32))
    np.testing.assert_array_equal(obs["object"], np.concatenate([s[4:18], s[36:39]]).astype(np.float32))
    np.testing.assert_allclose(obs["object"][-3:], env._mw._target_pos, atol=1e-6)  # the goal
    np.testing.assert_allclose(metaworld_state(obs), s, atol=1e-6)  # after a reset [18:36] repeats [0:18]
    assert env.action_space.shape == (4,) and env.action_space.low.min() == -1 and env.action_space.high.max() == 1


@needs_metaworld
def test_state_only_and_camera_mapping():
    e = MetaWorldEnv("reach", render_images=False)
    obs, _ = e.reset(seed=0)
    assert set(obs) == {"proprio", "object", "task_id"} and e._renderer is None  # no rendering cost
    e = MetaWorldEnv("reach", image_size=32, cameras=("corner", "gripperPOV", "topview"))
    obs, _ = e.reset(seed=0)
    assert {"agentview_image", "eye_in_hand_image", "topview_image"} <= set(obs)
    assert all(obs[k].shape == (32, 32, 3) for k in ("agentview_image", "eye_in_hand_image", "topview_image"))
    e.close()
    with pytest.raises(ValueError, match="unknown Meta-World camera 'side'"):
        MetaWorldEnv("reach", cameras=("side",))
    with pytest.raises(ValueError, match=r"\['corner', 'corner'\] names a camera twice"):  # was one camera, silently
        MetaWorldEnv("reach", cameras=("corner", "corner"))
    with pytest.raises(ValueError, match="reward='shaped'"):
        MetaWorldEnv("reach", reward="shaped")


@needs_metaworld
def test_images_upright_and_not_mirrored(env):
    """The corner cameras look down from above with their "up" pointing below the horizon: MuJoCo draws them
    upside down. Ours are turned by 180 degrees (not flipped), so the dark background above the scene is at the
    top and the table at the bottom."""
    env.reset(seed=0)
    for cam in ("corner", "corner2", "corner3", "corner4"):
        image = env.render_camera(cam).astype(float)
        raw = env._renderer.render(env._mw.data, cam)
        np.testing.assert_array_equal(image, raw[::-1, ::-1])  # a rotation: left and right are kept
        if cam != "corner3":  # (corner3 looks steeply down, tilted: floor at its top)
            assert image[:8].mean() < image[-8:].mean(), cam  # dark background above, table below
    cam_id = env._mw.model.camera("corner").id
    assert env._mw.data.cam_xmat[cam_id].reshape(3, 3)[2, 1] < 0  # corner's image "up" points down in the world
    np.testing.assert_array_equal(env.render_camera("topview"), env._renderer.render(env._mw.data, "topview"))


@needs_metaworld
def test_simplified_render_meshes_leave_physics_alone():
    from robopretrain.envs.metaworld_collect import ScriptedExpert

    full = MetaWorldEnv("pick-place-v3", render_images=False)
    simple = MetaWorldEnv("pick-place-v3", image_size=32)  # its meshes are simplified when it first renders
    a, b = full.reset(seed=1)[0], simple.reset(seed=1)[0]
    faces = simple._mw.model.mesh_facenum.sum()
    assert faces < 0.3 * full._mw.model.mesh_facenum.sum()
    expert = ScriptedExpert("pick-place-v3")
    for _ in range(60):  # reach, grasp and lift the puck: contacts happen
        action = expert.act(a)
        a, b = full.step(action)[0], simple.step(action)[0]
        np.testing.assert_array_equal(a["proprio"], b["proprio"])
        np.testing.assert_array_equal(a["object"], b["object"])
    simple.close()


@needs_metaworld
def test_reset_is_deterministic_per_seed(env):
    a, _ = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c, _ = env.reset(seed=8)
    assert not np.array_equal(a["object"], c["object"])  # the drawer's position is drawn per seed
    other = MetaWorldEnv("drawer-open-v3", render_images=False)
    other.reset(seed=7)
    env.reset(seed=7)
    np.testing.assert_array_equal(other.reset()[0]["object"], env.reset()[0]["object"])  # seed=None continues


@needs_metaworld
@pytest.mark.parametrize("task", ["drawer-open-v3", "window-close-v3", "reach-v3"])
def test_the_reset_observation_and_image_are_of_the_state_the_physics_is_in(task):
    """Meta-World's reset placed the drawer / window / goal site after its last forward pass: our reset observation
    held the object up to 0.2 m from where it was (it "jumped" at the first step of every demo) and the image drew
    the goal marker where the previous episode had it (a new user's session)."""
    import mujoco

    env = MetaWorldEnv(task, render_images=False)
    for seed in (5, 6):
        obs, _ = env.reset(seed=seed)
        mw = env.unwrapped._mw
        fresh = mw.data.site("goal").xpos.copy()
        mujoco.mj_forward(mw.model, mw.data)
        current = mw._get_curr_obs_combined_no_goal()
        np.testing.assert_allclose(obs["proprio"], current[:4], atol=1e-6)
        np.testing.assert_allclose(obs["object"][:14], current[4:18], atol=1e-6)
        np.testing.assert_array_equal(env.state[18:36], env.state[:18])  # the frame stack repeats the first frame
        if task == "reach-v3":  # its goal marker is drawn where the observed goal is
            np.testing.assert_allclose(fresh, obs["object"][-3:], atol=1e-6)
        before = env.state[:18].copy()
        env.step(np.zeros(4))
        np.testing.assert_allclose(env.state[18:36], before)  # then the previous frame, as Meta-World's step gives


@needs_metaworld
def test_success_gives_reward_one_and_terminates():
    e = MetaWorldEnv("drawer-open-v3", render_images=False, max_episode_steps=200)
    rewards, terminated, truncated, info = expert_rollout(e, "drawer-open-v3", seed=0)
    assert terminated and not truncated and info["success"] is True
    assert rewards[-1] == 1.0 and set(rewards[:-1]) == {0.0}
    dense = MetaWorldEnv("drawer-open-v3", render_images=False, reward="dense", max_episode_steps=200)
    rewards, terminated, _, info = expert_rollout(dense, "drawer-open-v3", seed=0)
    assert terminated and rewards[-1] == info["dense_reward"] and len(set(rewards)) > 2  # Meta-World's shaped reward
    e = MetaWorldEnv("drawer-open-v3", render_images=False, max_episode_steps=5)
    e.reset(seed=0)
    ends = [e.step(np.zeros(4))[2:4] for _ in range(5)]
    assert ends == [(False, False)] * 4 + [(False, True)]  # time limit: truncated, not terminated


@needs_metaworld
def test_a_metaworld_targets_reward_termination_and_time_limit_reach_the_env():
    """A dense target gets Meta-World's shaped reward, terminate_on_success=false keeps the episode going after
    success, and a time limit above the adapter's 500-step default is the one that ends the episode."""
    from robopretrain.envs.target import Target, make_env

    env = make_env(Target(name="drawer-open-v3", family="metaworld", reward="dense", terminate_on_success=False,
                          max_episode_steps=600))
    inner = env.unwrapped
    assert inner.reward_type == "dense" and inner.terminate_on_success is False and inner.max_episode_steps == 600
    rewards, terminated, _, info = expert_rollout(env, "drawer-open-v3", seed=0)
    assert len(set(rewards)) > 2 and rewards[-1] == info["dense_reward"]  # shaped, not float(success)
    assert not terminated and info["success"] and len(rewards) == 600  # went on after success, to its own limit
    sparse = make_env(Target(name="drawer-open-v3", family="metaworld"))
    assert sparse.unwrapped.reward_type == "sparse" and sparse.unwrapped.terminate_on_success is True


@needs_metaworld
@pytest.mark.parametrize("task", ["drawer-open-v3", "reach-v3"])
def test_scripted_expert_succeeds(task):
    e = MetaWorldEnv(task, render_images=False, max_episode_steps=200)
    for seed in range(3):
        rewards, terminated, _, _ = expert_rollout(e, task, seed)
        assert terminated and rewards[-1] == 1.0, (task, seed, len(rewards))


@needs_metaworld
def test_gym_make_and_spawned_worker():
    import gymnasium as gym

    made = gym.make(env_id("reach"), render_images=False, max_episode_steps=50)
    assert made.spec.max_episode_steps == 50
    local, _ = MetaWorldEnv("reach", image_size=32).reset(seed=4)
    vec = gym.vector.AsyncVectorEnv([functools.partial(MetaWorldEnv, task="reach", image_size=32)], context="spawn")
    try:
        remote, _ = vec.reset(seed=4)
        np.testing.assert_array_equal(remote["agentview_image"][0], local["agentview_image"])
        np.testing.assert_array_equal(remote["object"][0], local["object"])
    finally:
        vec.close()


# ---------------------------------------------------------------------------------------------- collector
TASKS = ["reach-v3", "drawer-open-v3"]
OBS_KEYS = ("agentview_image", "proprio", "object")


class SixDofSawyer:
    """What :class:`MetaWorldEnv` reads of a Meta-World env when it is built, with another action space."""

    action_space: object = None

    def __init__(self) -> None:
        self.sawyer_observation_space = None


def test_the_adapters_action_space_is_the_wrapped_envs(monkeypatch):
    """Not a fixed 4: a Meta-World env with a 6-D Box in [-2, 2] gives a 6-D adapter (actions checked against it); a
    discrete action space is refused by name."""
    from types import SimpleNamespace

    import gymnasium as gym

    import robopretrain.envs.metaworld as mw

    fake_metaworld = SimpleNamespace(ALL_V3_ENVIRONMENTS={"reach-v3": SixDofSawyer})
    monkeypatch.setattr(mw, "import_metaworld", lambda: fake_metaworld)
    monkeypatch.setattr(SixDofSawyer, "action_space", gym.spaces.Box(-2.0, 2.0, (6,), np.float64))
    env = MetaWorldEnv("reach-v3", render_images=False)
    assert env.action_space == gym.spaces.Box(-2.0, 2.0, (6,), np.float32)
    with pytest.raises(ValueError, match=r"action must have shape \(6,\), got \(4,\)"):
        env.step(np.zeros(4))
    monkeypatch.setattr(SixDofSawyer, "action_space", gym.spaces.Discrete(3))
    with pytest.raises(ValueError, match=r"reach-v3 has the action space Discrete\(3\); .* needs a 1-D Box"):
        MetaWorldEnv("reach-v3", render_images=False)


class SixDofEnv:
    """A stand-in for :class:`MetaWorldEnv` whose actions are 6-D: 4 steps, never a success."""

    def __init__(self, task: str, **kwargs) -> None:
        import gymnasium as gym

        self.action_space = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
        self.steps = 0

    def obs(self) -> dict:
        return {"proprio": np.full(PROPRIO_DIM, self.steps, np.float32), "object": np.zeros(OBJECT_DIM, np.float32),
                "task_id": TASK_IDS["reach-v3"]}

    def reset(self, seed=None):
        self.steps = 0
        return self.obs(), {}

    def step(self, action):
        assert np.shape(action) == (6,)
        self.steps += 1
        return self.obs(), 0.0, False, self.steps >= 4, {"success": False}

    def close(self) -> None:
        pass


class SixDofPolicy:
    def get_action(self, state: np.ndarray) -> np.ndarray:
        return np.full(6, 0.5)


@needs_metaworld
def test_collecting_from_an_env_with_other_actions_writes_its_action_size(tmp_path, monkeypatch):
    """The collector takes the action size from the env: expert noise, the give-up action of failing episodes and the
    file's actions are 6-D for a 6-D env."""
    import robopretrain.envs.metaworld_collect as mwc
    from metaworld.policies import ENV_POLICY_MAP

    monkeypatch.setattr(mwc, "MetaWorldEnv", SixDofEnv)
    monkeypatch.setitem(ENV_POLICY_MAP, "reach-v3", SixDofPolicy)
    kinds = {"clean": {"fraction": 0.4, "noise": 0.0}, "noisy": {"fraction": 0.3, "noise": 0.1},
             "failing": {"fraction": 0.3, "noise": 0.1, "stop": [0.0, 0.0]}}
    path = mwc.collect({"tasks": "reach-v3", "episodes_per_task": 3, "render_images": False, "kinds": kinds,
                        "valid_fraction": 0.0, "output": str(tmp_path / "six.hdf5")}, progress=False)
    with h5py.File(path) as f:
        actions = [f[f"data/demo_{i}/actions"][()] for i in range(3)]
    assert [a.shape for a in actions] == [(4, 6)] * 3
    assert np.all(actions[0] == 0.5) and not np.all(actions[1] == 0.5)  # clean, then noisy
    assert np.all(np.abs(actions[2][:, :5]) < 0.5) and np.all(actions[2][:, 5] < -0.5)  # gave up at once: grip -1


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    from robopretrain.envs.metaworld_collect import collect

    out = tmp_path_factory.mktemp("mw") / "demos.hdf5"
    return collect({"tasks": TASKS, "episodes_per_task": 3, "image_size": 32, "max_episode_steps": 120,
                    "valid_fraction": 0.34, "output": str(out)}, progress=False)


@needs_metaworld
def test_collected_file_reads_with_our_reader(collected):
    from robopretrain.data.hdf5 import load_transitions, read_info

    info = read_info(collected)
    assert info.tasks == {t: TASK_IDS[t] for t in TASKS} and info.action_dim == 4
    assert info.obs_specs["agentview_image"] == ((32, 32, 3), np.uint8)
    assert info.obs_specs["proprio"][0] == (4,) and info.obs_specs["object"][0] == (17,)
    tr = load_transitions(collected, list(OBS_KEYS))
    assert np.abs(tr.actions).max() <= 1.0 and set(np.unique(tr.rewards)) <= {0.0, 1.0}
    for i, meta in enumerate(tr.ep_meta):
        steps = tr.episode_ids == i
        dones, rewards = tr.dones[steps], tr.rewards[steps]
        assert dones[:-1].sum() == 0 and dones[-1] == float(meta["success"]) == rewards[-1] == rewards.sum()
    assert [m["kind"] for m in tr.ep_meta] == ["clean", "noisy", "failing"] * 2
    with h5py.File(collected, "r") as f:
        assert sorted(k for k in f["mask"]) == sorted(["train", "valid", *TASKS])


@needs_metaworld
def test_collected_file_reads_with_robomimic(collected):
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    ObsUtils.initialize_obs_utils_with_obs_specs(
        {"obs": {"low_dim": ["proprio", "object"], "rgb": ["agentview_image"]}})
    ds = SequenceDataset(hdf5_path=str(collected), obs_keys=OBS_KEYS, dataset_keys=("actions", "rewards", "dones"),
                         seq_length=1, filter_by_attribute="train", hdf5_cache_mode="low_dim", hdf5_use_swmr=True)
    demo = list(ds.demos)[-1]
    item = ds[ds._demo_id_to_start_indices[demo] + 1]
    ds.close_and_delete_hdf5_handle()
    with h5py.File(collected, "r") as f:
        group = f[f"data/{demo}"]
        for key in OBS_KEYS:
            np.testing.assert_array_equal(item["obs"][key][0], group[f"obs/{key}"][1])
        np.testing.assert_array_equal(item["actions"][0], group["actions"][1])


@needs_metaworld
def test_env_args_rebuild_the_env_that_made_the_demos(collected):
    """The file's env_args and a demo's seed give back the demo's first observation."""
    with h5py.File(collected, "r") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        demo = f["data/demo_4"]
        task, seed = demo.attrs["task"], json.loads(demo.attrs["ep_meta"])["seed"]
        first = {k: demo[f"obs/{k}"][0] for k in OBS_KEYS}
    kwargs = env_args["env_kwargs"]
    assert env_args["env_name"] == "robopretrain/MetaWorld-multitask" and kwargs["env_ids"][task] == env_id(task)
    module, name = kwargs["entry_point"].split(":")
    env_cls = getattr(importlib.import_module(module), name)
    metadata = ("entry_point", "tasks", "task_ids", "env_ids")
    obs, _ = env_cls(task=task, **{k: v for k, v in kwargs.items() if k not in metadata}).reset(seed=seed)
    for key in OBS_KEYS:
        np.testing.assert_array_equal(obs[key], first[key])


def test_collect_cli_bad_task_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "robopretrain.envs.metaworld_collect", "tasks=[drawer-opn]",
                           f"output={tmp_path / 'x.hdf5'}", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: metaworld_collect config: tasks: unknown Meta-World")
    assert not (tmp_path / "x.hdf5").exists()


@needs_metaworld
def test_the_files_own_target_is_an_env_stage2_can_evaluate_in(collected):
    """Stage 2 evaluates on the data's own tasks: target_of_data must turn the collector's env_args (with its
    metadata entry_point, tasks, task_ids, env_ids) into a Meta-World target whose env builds."""
    from robopretrain.data.hdf5 import read_info
    from robopretrain.envs.target import METAWORLD, make_env, target_of_data

    info = read_info(collected)
    target = target_of_data(info.env_args, "drawer-open-v3", info.tasks["drawer-open-v3"])
    assert target.family == METAWORLD and target.resolved_task_id() == TASK_IDS["drawer-open-v3"]
    assert target.env_kwargs["max_episode_steps"] == 120
    env = make_env(target, ("agentview_image",), 32)
    try:
        obs, _ = env.reset(seed=1)
        assert obs["agentview_image"].shape == (32, 32, 3) and obs["task_id"] == TASK_IDS["drawer-open-v3"]
    finally:
        env.close()


@needs_metaworld
def test_a_camera_the_data_renamed_is_the_camera_the_target_renders(collected, tmp_path):
    """``data.obs_map={agentview_image: topview_image}``: the agent saw the topview camera in its data, and its stage-2
    evaluation (the data's own target) and robopretrain.evaluate's default target rendered the corner camera for
    agentview_image, silently. The file's keys are its env's: the target reads the same key."""
    from omegaconf import OmegaConf

    from robopretrain import build
    from robopretrain.checkpoint import Checkpoint
    from robopretrain.data.hdf5 import read_info
    from robopretrain.envs.metaworld import MetaWorldEnv
    from robopretrain.envs.target import make_env
    from robopretrain.evaluate import default_target

    info = read_info(collected)
    renamed = {"agentview_image": "topview_image", "proprio": "proprio"}
    [target] = build.targets_of_data(info, {"drawer-open-v3": 3}, renamed)
    assert target.obs_map == {"agentview_image": "topview_image"}
    meta = {"task_names": ["drawer-open-v3"], "eval_targets": [target.to_dict()], "data_path": str(collected),
            "task_ids": {"drawer-open-v3": 3}, "obs_map": renamed}
    recorded = default_target(Checkpoint(tmp_path, OmegaConf.create({}), meta, {}, None))
    from_file = default_target(Checkpoint(tmp_path, OmegaConf.create({}), {**meta, "eval_targets": []}, {}, None))
    reference = MetaWorldEnv(task="drawer-open-v3", image_size=32, cameras=("topview",), max_episode_steps=120)
    try:
        want = reference.reset(seed=5)[0]["topview_image"]
    finally:
        reference.close()
    from robopretrain.envs.target import Target, warn_unmapped_renames

    given = Target(name="drawer-open-v3", family="metaworld")  # a target the user names for stage 3 or evaluate
    assert warn_unmapped_renames(meta, given) == ["agentview_image"]  # warned: its env's own agentview_image
    assert warn_unmapped_renames(meta, target) == [] and warn_unmapped_renames({}, given) == []
    for t in (target, recorded, from_file):
        assert t.obs_map == {"agentview_image": "topview_image"}
        env = make_env(t, ("agentview_image",), 32)
        try:
            np.testing.assert_array_equal(env.reset(seed=5)[0]["agentview_image"], want)
        finally:
            env.close()


@needs_metaworld
def test_a_stage2_checkpoint_that_evaluated_nothing_is_evaluated_in_its_files_meta_world_task(collected, tmp_path):
    """``eval_targets=[]`` recorded no target; evaluate asked for a gym mapping (``env_id``, ``task_id: 0``) where the
    data file names the Meta-World task and its 120-step limit. Without the file: the Meta-World mapping to pass."""
    from omegaconf import OmegaConf

    from robopretrain.checkpoint import Checkpoint, CheckpointError
    from robopretrain.envs.target import METAWORLD
    from robopretrain.evaluate import default_target

    meta = {"task_names": ["drawer-open-v3"], "eval_targets": [], "data_path": str(collected),
            "task_ids": {"drawer-open-v3": 3}}
    target = default_target(Checkpoint(tmp_path, OmegaConf.create({}), meta, {}, None))
    assert target.family == METAWORLD and target.name == "drawer-open-v3" and target.task_id == 3
    assert target.env_kwargs["max_episode_steps"] == 120  # the demos' limit, not Meta-World's 500
    # the task in the data.mix file (README's Meta-World stage 2): that file names it (the data file was read)
    mixed = {**meta, "data_path": str(tmp_path / "prior.hdf5"), "mix_task_names": ["drawer-open-v3"],
             "mix_path": str(collected)}
    assert default_target(Checkpoint(tmp_path, OmegaConf.create({}), mixed, {}, None)).family == METAWORLD
    meta["data_path"] = str(tmp_path / "gone.hdf5")
    with pytest.raises(CheckpointError, match=r"target=\{name: drawer-open-v3, family: metaworld, "
                                              r"max_episode_steps: <the demos' limit>, task_id: 3\}"):
        default_target(Checkpoint(tmp_path, OmegaConf.create({}), meta, {}, None))
    import shutil  # its run folder moved with the data file in it: the file is read at the new place

    from robopretrain import run_fingerprint

    (tmp_path / "old" / "run" / "stage2").mkdir(parents=True)
    shutil.copy(collected, tmp_path / "old" / "run" / "demos.hdf5")
    meta["data_path"] = str(tmp_path / "old" / "run" / "demos.hdf5")
    meta["fingerprint"] = run_fingerprint.fingerprint({}, {"data": meta["data_path"]}, home=tmp_path / "old" / "run")
    (tmp_path / "old" / "run").rename(tmp_path / "run")
    moved = Checkpoint(tmp_path / "run" / "stage2", OmegaConf.create({}), meta, {}, None)
    assert default_target(moved).family == METAWORLD


def test_evaluating_the_checkpoints_task_under_another_time_limit_is_named(tmp_path):
    """``target={name: drawer-open-v3, family: metaworld}`` on a checkpoint trained under 120 steps ran 500-step
    episodes silently; the same limit, or another task, says nothing."""
    from omegaconf import OmegaConf

    from robopretrain.checkpoint import Checkpoint
    from robopretrain.envs.target import Target
    from robopretrain.evaluate import limit_change_note

    ckpt = Checkpoint(tmp_path, OmegaConf.create({}), {"target": {"name": "drawer-open-v3", "family": "metaworld",
                                                                  "max_episode_steps": 120}}, {}, None)
    assert limit_change_note(Target(name="drawer-open", family="metaworld"), ckpt) == (
        "target 'drawer-open-v3': episodes run to 500 steps here, the checkpoint's run used 120 steps; success is not "
        "comparable with its evaluations: set target.max_episode_steps=120 to evaluate as it did")
    assert limit_change_note(Target(name="drawer-open", family="metaworld", max_episode_steps=120), ckpt) is None
    assert limit_change_note(Target(name="reach", family="metaworld"), ckpt) is None
    stale = Checkpoint(tmp_path, OmegaConf.create({}), {"target": {"name": "drawer-open-v2", "family": "metaworld"}},
                       {}, None)  # a recorded target that no longer parses: the given target= is the way around it
    assert limit_change_note(Target(name="drawer-open", family="metaworld"), stale) is None
    # a multi-task stage-2 run: each task it evaluated, not only the first (push-v3 ran 500 steps without a word)
    both = [{"name": n, "family": "metaworld", "max_episode_steps": 60} for n in ("button-press-topdown-v3", "push-v3")]
    multi = Checkpoint(tmp_path, OmegaConf.create({}), {"task_names": [t["name"] for t in both], "eval_targets": both,
                                                        "task_ids": {"button-press-topdown-v3": 3, "push-v3": 7}},
                       {}, None)
    for name in ("button-press-topdown", "push"):
        assert limit_change_note(Target(name=name, family="metaworld"), multi).startswith(
            f"target '{name}-v3': episodes run to 500 steps here, the checkpoint's run used 60 steps")
    assert limit_change_note(Target(name="push", family="metaworld", max_episode_steps=60), multi) is None


def test_the_time_limit_note_compares_the_limits_the_envs_enforce(tmp_path):
    """A gym target given without max_episode_steps runs to its env's own limit: no note when that is the run's
    (Pendulum-v1 is registered with 200 steps); a run that used the env's own limit is compared by building it."""
    from omegaconf import OmegaConf

    from robopretrain.checkpoint import Checkpoint
    from robopretrain.envs.target import Target
    from robopretrain.evaluate import limit_change_note

    pendulum = {"name": "pendulum", "env_id": "Pendulum-v1", "task_id": 0, "reward": "dense"}
    run_200 = Checkpoint(tmp_path, OmegaConf.create({}), {"target": {**pendulum, "max_episode_steps": 200}}, {}, None)
    assert limit_change_note(Target(**pendulum), run_200, env_limit=200) is None  # was: "not comparable"
    assert limit_change_note(Target(**pendulum), run_200, env_limit=150) == (
        "target 'pendulum': episodes run to the env's own limit (150 steps) here, the checkpoint's run used 200 "
        "steps; success is not comparable with its evaluations: set target.max_episode_steps=200 to evaluate as it did")
    run_own = Checkpoint(tmp_path, OmegaConf.create({}), {"target": pendulum}, {}, None)
    assert limit_change_note(Target(**pendulum, max_episode_steps=200), run_own, env_limit=200) is None
    assert limit_change_note(Target(**pendulum, max_episode_steps=50), run_own, env_limit=50) == (
        "target 'pendulum': episodes run to 50 steps here, the checkpoint's run used the env's own limit (200 steps); "
        "success is not comparable with its evaluations: leave max_episode_steps unset to evaluate as it did")
    assert limit_change_note(Target(**pendulum), run_own, env_limit=200) is None
    run_500 = Checkpoint(tmp_path, OmegaConf.create({}), {"target": {**pendulum, "max_episode_steps": 500}}, {}, None)
    assert limit_change_note(Target(**pendulum, max_episode_steps=500), run_500, env_limit=200) is None  # the run's
    # own target, whose env stops earlier than its setting: the same for both, nothing to say (it said "set 500")


def test_a_metaworld_target_without_task_id_takes_the_fixed_one():
    """``target={name: drawer-open-v3, family: metaworld}`` (as configs/finetune.yaml shows it) needs no task_id."""
    from robopretrain.envs.target import Target

    assert Target(name="drawer-open-v3", family="metaworld").resolved_task_id() == TASK_IDS["drawer-open-v3"] == 4
    assert Target(name="reach", family="metaworld").resolved_task_id() == 0
    assert Target(name="reach", family="metaworld", task_id=7).resolved_task_id() == 7
    with pytest.raises(ValueError, match="unknown Meta-World task 'drawer-opn'"):
        Target(name="drawer-opn", family="metaworld").resolved_task_id()


# ---------------------------------------------------------------------------------------------- the documented commands
def start(module: str, *args: str) -> subprocess.Popen:
    """``python -m <module> <args>`` from the project root, as docs/metaworld.md and the configs show them."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(*procs: subprocess.Popen) -> list[str]:
    """Wait for every command (they run side by side); each must succeed. Returns their stdouts."""
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{' '.join(proc.args[2:4])}: rc {proc.returncode}\n{err[-3000:]}"
        outs.append(out)
    return outs


TINY = ["algo.actor_hidden=[16]", "algo.critic_hidden=[16]", "algo.n_actions=2", "algo.batch_size=8", "num_threads=1"]
MW_OBS = {"states": ["obs.low_dim=[proprio,object]"],
          "pixels": ["obs.low_dim=[proprio]", "obs.rgb=[agentview_image]", "+encoder.kwargs.channels=4",
                     "+encoder.kwargs.out_dim=8"]}


@needs_metaworld
@pytest.mark.slow
def test_metaworld_prior_to_target_through_the_documented_commands(tmp_path):
    """Demos of two MT10 prior tasks and of the held-out drawer-open-v3 (states and 64 px images in one file,
    ``metaworld_collect``), stage 2 on the prior tasks (evaluated in Meta-World on them), stage 3 on the target
    (its demos picked from the same file by task): states and pixels, only ``python -m`` commands, tiny budgets."""
    from robopretrain.checkpoint import load_agent, load_latest
    from robopretrain.data.hdf5 import read_info
    from robopretrain.envs.target import as_target
    from robopretrain.evaluation import agent_env
    from robopretrain.metrics import read_jsonl

    demos = tmp_path / "mw_demos.hdf5"
    finish(start("robopretrain.envs.metaworld_collect", "tasks=[reach,drawer-close,drawer-open]",
                 "episodes_per_task=2", "max_episode_steps=50", f"hydra.run.dir={tmp_path}/h", f"output={demos}"))
    info = read_info(demos)
    assert info.action_dim == 4 and info.obs_specs["agentview_image"] == ((64, 64, 3), np.uint8)
    assert info.tasks == {"reach-v3": 0, "drawer-close-v3": 5, "drawer-open-v3": 4}
    prior = ["data.tasks=[reach-v3,drawer-close-v3]", f"data.path={demos}"]

    # the one-hot must hold the target's id (4) too: obs.num_tasks=10 for any MT10 split (docs/metaworld.md)
    stage2 = {kind: start("robopretrain.train", *prior, "obs.num_tasks=10", *MW_OBS[kind], *TINY,
                          "train.steps=4", "train.eval_every=4", "train.checkpoint_every=4", "train.eval_episodes=1",
                          "train.calibration_batch=16", "train.progress=false", "train.tensorboard=false",
                          f"output_dir={tmp_path / kind / 's2'}", f"hydra.run.dir={tmp_path}/h")
              for kind in MW_OBS}
    finish(*stage2.values())
    target = "target={name: drawer-open-v3, family: metaworld, max_episode_steps: 15}"
    stage3 = {kind: start("finetune.train", f"checkpoint={tmp_path / kind / 's2'}", target,
                          f"data.path={demos}", *TINY, "online.env_steps=20", "online.num_envs=1",
                          "online.eval_every=20", "online.eval_episodes=1", "online.log_every=10",
                          "online.checkpoint_every=20", "online.calibration_batch=16", "online.progress=false",
                          "online.tensorboard=false", f"output_dir={tmp_path / kind / 's3'}",
                          f"hydra.run.dir={tmp_path}/h")
              for kind in MW_OBS}
    outs = dict(zip(stage3, finish(*stage3.values())))

    for kind in MW_OBS:
        s2 = load_latest(tmp_path / kind / "s2" / "checkpoints")
        spec = s2.meta["obs_spec"]
        assert spec["num_tasks"] == 10 and s2.meta["act_dim"] == 4
        assert s2.meta["task_names"] == ["drawer-close-v3", "reach-v3"]  # the target is held out
        if kind == "states":
            assert spec["low_dim"] == [["proprio", PROPRIO_DIM], ["object", OBJECT_DIM]] and spec["rgb"] == []
        else:
            assert spec["low_dim"] == [["proprio", PROPRIO_DIM]] and spec["rgb"] == [["agentview_image", [64, 64, 3]]]
        evals = [r for r in read_jsonl(tmp_path / kind / "s2" / "metrics.jsonl") if "eval/success" in r]
        assert {"eval/reach-v3/length", "eval/drawer-close-v3/length"} <= set(evals[-1])  # evaluated in Meta-World

        assert "final success" in outs[kind]
        s3 = load_latest(tmp_path / kind / "s3" / "checkpoints")
        assert s3.meta["stage"] == "online" and s3.meta["target"]["family"] == "metaworld" and s3.step == 20
        stored = s3.state["sampler"]["online"]["data"]["observations"]
        n = int(s3.state["sampler"]["online"]["size"])
        assert set(stored["task_id"][:n].tolist()) == {TASK_IDS["drawer-open-v3"]}
        assert s3.meta["data_path"] == str(demos) and s3.meta["pretrained_from"] == str(s2.path)
        rows = [r for r in read_jsonl(tmp_path / kind / "s3" / "metrics.jsonl") if "eval/success" in r]
        assert [r["env_steps"] for r in rows] == [0, 20] and rows[-1]["eval/length"] <= 15
        agent, _ = load_agent(tmp_path / kind / "s3")
        env = agent_env(agent, as_target(s3.meta["target"]))
        try:
            obs, _ = env.reset(seed=3)
        finally:
            env.close()
        assert agent.act(obs).shape == (4,)


@needs_metaworld
def test_a_metaworld_target_renders_the_agents_cameras():
    """A two-camera agent gets both cameras from its Meta-World target (corner and gripperPOV), at its size."""
    from robopretrain.envs.target import Target, make_env

    env = make_env(Target(name="reach", family="metaworld"), ("agentview_image", "eye_in_hand_image"), 32)
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    assert obs["agentview_image"].shape == obs["eye_in_hand_image"].shape == (32, 32, 3)
    assert not np.array_equal(obs["agentview_image"], obs["eye_in_hand_image"])


def test_a_metaworld_target_refuses_a_camera_it_does_not_have_flipped_frames_and_a_misspelt_task():
    """An obs_map naming no Meta-World camera was left out and the corner camera filmed in its place; flip_images
    turned the adapter's upright frames upside down; a misspelt task surfaced only when its env was built."""
    from robopretrain.envs.target import Target, make_env

    for wrong in ("frontview_image", "topview"):
        with pytest.raises(ValueError, match=rf"no Meta-World camera gives \['{wrong}'\].*topview_image \(topview\)"):
            make_env(Target(name="reach", family="metaworld", obs_map={"agentview_image": wrong}),
                     ("agentview_image",), 32)
    top = make_env(Target(name="reach", family="metaworld", obs_map={"agentview_image": "topview_image"}),
                   ("agentview_image",), 32)
    corner = make_env(Target(name="reach", family="metaworld"), ("agentview_image",), 32)
    try:
        a, b = top.reset(seed=0)[0]["agentview_image"], corner.reset(seed=0)[0]["agentview_image"]
    finally:
        top.close()
        corner.close()
    assert a.shape == b.shape == (32, 32, 3) and not np.array_equal(a, b)  # the top view, not the corner's
    with pytest.raises(ValueError, match="flip_images=true on a Meta-World target"):
        Target(name="reach", family="metaworld", flip_images=True)
    with pytest.raises(ValueError, match="unknown Meta-World task 'button-pres-v3'"):
        Target(name="button-pres-v3", family="metaworld")


def test_a_short_task_name_is_the_v3_name_and_a_demo_files_time_limit_is_named():
    """``button-press`` (documented as valid) is the task demo files record as ``button-press-v3``; a target setting
    no time limit runs Meta-World's 500 steps, which stage 3 names when the demos were recorded with another."""
    from robopretrain.envs.target import Target, time_limit_note

    assert Target(name="button-press", family="metaworld").name == "button-press-v3"
    recorded = {"family": "metaworld", "env_kwargs": {"max_episode_steps": 200}}
    note = time_limit_note(Target(name="reach", family="metaworld"), recorded)
    assert note is not None and "500" in note and "max_episode_steps: 200" in note
    assert time_limit_note(Target(name="reach", family="metaworld", max_episode_steps=200), recorded) is None
    full_limit = {"family": "metaworld", "env_kwargs": {"max_episode_steps": 500}}
    assert time_limit_note(Target(name="reach", family="metaworld"), full_limit) is None
    assert time_limit_note(Target(name="Reach"), recorded) is None  # a sim_envs target: its own limit
    assert "if it ran any" in note  # stage 2 may have evaluated nothing (eval_targets=[]): not claimed


def test_a_time_limit_shorter_than_most_successful_demos_is_named():
    """A limit under the demos' length: episodes cannot finish as the demos did (120 steps for 150-step demos)."""
    from robopretrain.data.hdf5 import DemoInfo
    from robopretrain.envs.target import Target, episode_limit, time_limit_note

    recorded = {"family": "metaworld", "env_kwargs": {"max_episode_steps": 200}}
    demos = [DemoInfo(f"demo_{i}", n, "reach-v3", 0, {"success": ok}) for i, (n, ok) in
             enumerate([(150, True), (160, True), (90, True), (200, False), (30, True)])]
    demos.append(DemoInfo("demo_9", 300, "push-v3", 1, {"success": True}))  # another task's: not counted
    short = Target(name="reach", family="metaworld", max_episode_steps=120)
    assert episode_limit(short) == 120 and episode_limit(Target(name="reach", family="metaworld")) == 500
    assert episode_limit(Target(name="reach", family="metaworld", env_kwargs={"max_episode_steps": 80})) == 80
    assert time_limit_note(short, recorded, demos) is None  # 2 of its 4 successful demos are longer: not most
    unflagged = [DemoInfo(d.name, d.num_samples, d.task, 0, {}) for d in demos[:2]]  # no success flag: counted
    assert "2 of its 2 successful demos" in time_limit_note(short, recorded, unflagged)
    assert time_limit_note(Target(name="reach", family="metaworld", max_episode_steps=80), recorded, demos) == (
        "target 'reach-v3': episodes stop at 80 steps (max_episode_steps), but 3 of its 4 successful demos are "
        "longer (median 150, longest 160 steps): the policy cannot finish as they did in time; raise the target's "
        "max_episode_steps")
    assert time_limit_note(Target(name="Reach"), {}, demos) is None  # the env's own limit: nothing to compare
    own = time_limit_note(Target(name="reach", env_id="MyReach-v0", task_id=0), {}, renamed := [
        DemoInfo(d.name, d.num_samples, "reach", 0, d.ep_meta) for d in demos[:5]], env_limit=80)
    assert own is not None and own.startswith("target 'reach': episodes stop at 80 steps (the env's own time limit), "
                                              "but 3 of its 4")  # the env's limit, read from the env
    assert own.endswith("give the env a longer limit (its own setting, e.g. through the target's env_kwargs)")
    long_demos = [DemoInfo(d.name, 20 * d.num_samples, "reach", 0, d.ep_meta) for d in renamed]
    capped = time_limit_note(Target(name="reach", env_id="MyReach-v0", task_id=0), {}, long_demos, env_limit=1000)
    assert "(the toolkit's cap for an env without a time limit)" in capped  # not the env's own: setting one lifts it
    assert capped.endswith("set the target's max_episode_steps")
    assert time_limit_note(Target(name="reach", env_id="MyReach-v0", task_id=0, max_episode_steps=500), {}, renamed,
                           env_limit=80) is not None  # a limit the env enforces under the target's still binds
    eighty = Target(name="reach", family="metaworld", max_episode_steps=80)
    renamed = [DemoInfo(d.name, d.num_samples, "my-task", 0, d.ep_meta) for d in demos[:5]]
    assert "3 of its 4" in time_limit_note(eighty, recorded, renamed)  # a one-task file under another name
    assert time_limit_note(eighty, recorded, [*renamed, demos[5]]) is None  # several tasks, none the target's


def test_a_metaworld_file_whose_task_is_its_env_name_or_no_metaworld_task_gets_a_target_or_none():
    """A file without task names names its task by env_name (robopretrain/MetaWorld-<task>): that task's target;
    a task name that is no Meta-World task: no target (stage 2 then skips its evaluation, as before)."""
    from robopretrain.envs.target import target_of_data

    args = {"env_name": "robopretrain/MetaWorld-reach-v3", "env_kwargs": {"max_episode_steps": 200}}
    target = target_of_data(args, "robopretrain/MetaWorld-reach-v3", 0)
    assert target is not None and target.name == "reach-v3" and target.env_kwargs == {"max_episode_steps": 200}
    assert target_of_data(args, "reach-v3-noisy", 0) is None


def test_one_camera_name_is_a_list_of_one():
    """``metaworld_collect cameras=corner`` (no brackets) was refused by the structured config's list type with
    Hydra's bare "Error merging override"."""
    from omegaconf import OmegaConf

    from robopretrain.envs.metaworld_collect import MetaWorldCollectConfig, env_kwargs_from_config

    cfg = OmegaConf.merge(OmegaConf.structured(MetaWorldCollectConfig), {"cameras": "topview"})
    assert env_kwargs_from_config(cfg)["cameras"] == ["topview"]
    cfg = OmegaConf.merge(OmegaConf.structured(MetaWorldCollectConfig), {"cameras": ["topview", "corner"]})
    assert env_kwargs_from_config(cfg)["cameras"] == ["topview", "corner"]


@needs_metaworld
def test_a_target_limit_longer_than_the_envs_own_is_warned_about(caplog):
    """Meta-World through ``env_id`` stopped its episodes at 500 steps under a target of 600, with no word (the
    toolkit's outer time limit cannot lift the env's own); ``family: metaworld`` passes the limit on and is quiet."""
    import logging

    from robopretrain.envs import target as target_mod

    # the id a Meta-World demo file records works as it is (it was "not registered" in a process that had not
    # imported the module that registers it: a fresh one)
    code = ("from robopretrain.envs import target as t; t.make_env(t.as_target({'name': 'r', 'env_id': "
            "'robopretrain/MetaWorld-reach-v3', 'task_id': 0, 'env_kwargs': {'render_images': False}})).close()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = {"name": "mine", "env_id": "robopretrain.envs.metaworld:MetaWorldEnv", "task_id": 0,
            "env_kwargs": {"task": "reach", "render_images": False}, "max_episode_steps": 600}
    for given, warned in ((spec, True), ({**spec, "name": "mine2", "env_kwargs": {**spec["env_kwargs"],
                                                                                   "max_episode_steps": 600}}, False),
                          ({"name": "reach", "family": "metaworld", "max_episode_steps": 600}, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="robopretrain.envs.target"):
            target_mod.make_env(target_mod.as_target(given)).close()
        said = [r.getMessage() for r in caplog.records if "cannot lift" in r.getMessage()]
        assert len(said) == int(warned), (given, said)
        if warned:
            assert "max_episode_steps=600, but the env itself stops its episodes at 500 steps" in said[0]
            assert "env_kwargs.max_episode_steps=600" in said[0]


def test_without_meta_world_installed_the_collector_says_which_extra_in_one_line(tmp_path):
    """Meta-World is an optional extra: without it the collector (and any Meta-World target) ended in a Hydra
    traceback, exit code 1, though the error named the extra."""
    import os

    (tmp_path / "sitecustomize.py").write_text("import sys\nfor m in ('metaworld', 'metaworld.env_dict', "
                                               "'metaworld.policies'):\n    sys.modules[m] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]), "MUJOCO_GL": "egl"}
    out = subprocess.run([sys.executable, "-m", "robopretrain.envs.metaworld_collect", "tasks=[reach-v3]",
                          "episodes_per_task=1", f"output={tmp_path / 'd.hdf5'}", f"hydra.run.dir={tmp_path / 'h'}"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert last.startswith("error: Meta-World is not installed") and "pip install -e '.[metaworld]'" in last
