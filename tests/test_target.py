"""One notion of target: config entries -> :class:`Target`, and the env every family is wrapped into (our part names,
``task_id``, ``info["success"]``, the sparse success reward or a declared dense one, termination on success, a time
limit, upright images), usable in a vector env and from a picklable factory."""
from __future__ import annotations

import logging
import pickle
import re

import gymnasium as gym
import numpy as np
import pytest

import _fake_envs as fake
from robopretrain.envs.target import (GYM, OBSERVATION, SIM_ENVS, Target, as_target, env_factory, make_env,
                                      target_of_data)

ENTRY = "_fake_envs:RobosuiteLikeEnv"
OBS_MAP = {"eef_pos": fake.EEF, "eye_in_hand_image": fake.EYE_IN_HAND}


def robot(**extra) -> Target:
    return as_target({"name": "reach", "env_id": ENTRY, "task_id": 7, "obs_map": OBS_MAP, **extra})


def test_config_entries_become_targets_and_bad_ones_are_named():
    assert as_target("Reach").family == SIM_ENVS and as_target("Reach").resolved_task_id() == 0
    t = robot()
    assert t.family == GYM and t.resolved_task_id() == 7 and as_target(t.to_dict()) == t
    with pytest.raises(ValueError, match=r"target 'reach': unknown key\(s\) \['obs_keys'\]"):
        as_target({"name": "reach", "env_id": ENTRY, "obs_keys": []})
    with pytest.raises(ValueError, match="is not a sim_envs task"):
        as_target("MyTask")
    with pytest.raises(ValueError, match="a gym target needs env_id"):
        as_target({"name": "x", "family": "gym"})
    with pytest.raises(ValueError, match=r"task_id is required for a gym target .*from Python give task_id=<slot>, "
                                         r"or with_task_slot\(target, robopretrain.evaluate.trained_slots\(ckpt\)"):
        as_target({"name": "x", "env_id": ENTRY}).resolved_task_id()
    with pytest.raises(ValueError, match=r"reward='shaped'; expected one of \['sparse', 'dense'\]"):
        robot(reward="shaped")
    for steps in (0, -5, 2.5, True):  # 0 ran the env's own limit silently; -5 reached gymnasium's own message
        with pytest.raises(ValueError, match=rf"target 'reach': max_episode_steps={steps!r}; expected an integer >= 1, "
                                             r"or null"):
            robot(max_episode_steps=steps)
    assert robot(max_episode_steps=1).max_episode_steps == 1


def rollout(env, actions: int = 30, seed: int = 0):
    obs, info = env.reset(seed=seed)
    steps = [(obs, 0.0, False, False, info)]
    for _ in range(actions):
        obs, reward, terminated, truncated, info = env.step(fake.robosuite_expert(obs_for_expert(obs),
                                                                                 np.random.default_rng(0)))
        steps.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return steps


def obs_for_expert(obs):
    return {fake.EEF: obs["eef_pos"] if "eef_pos" in obs else obs[fake.EEF]}


def test_the_env_speaks_our_names_and_reward_convention(caplog):
    env = make_env(robot(), cameras=("agentview_image", "eye_in_hand_image"))
    steps = rollout(env)
    obs = steps[0][0]
    assert set(obs) == {"eef_pos", fake.GRIPPER, "agentview_image", "eye_in_hand_image", "task_id"}
    assert obs["task_id"] == 7 and obs["eef_pos"].dtype == np.float32 and obs["agentview_image"].dtype == np.uint8
    assert env.observation_space.contains({k: np.asarray(v) for k, v in obs.items()})  # what vector envs allocate
    *_, (last, reward, terminated, truncated, info) = steps
    assert info["success"] and terminated and not truncated and reward == 1.0  # sparse, ends on success
    assert all(r == 0.0 for _, r, *_ in steps[:-1])  # the env's own dense reward (-distance) is not passed on

    dense = make_env(robot(reward="dense", terminate_on_success=False, max_episode_steps=12))
    steps = rollout(dense)
    assert len(steps) == 13 and steps[-1][3] and not any(s[2] for s in steps)  # truncated by the time limit
    assert steps[1][1] < 0 and all(r <= 0 for _, r, *_ in steps[1:])  # the env's own -distance, declared dense

    # a named success_key the env lacks under a dense reward: said at the end of an episode without it, naming the
    # env's keys (declaring dense was the message's way out, and success then read 0 without a word; refused there,
    # it stopped every run of an env that says its key only on success at its first failed episode)
    import logging

    import robopretrain.envs.target as target_module

    target_module._warned_no_success.discard("reach")
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.target"):
        rollout(make_env(robot(reward="dense", success_key="done_ok", terminate_on_success=False,
                               max_episode_steps=3)))
    assert "no step of an episode had 'done_ok' in its info" in caplog.text


def test_a_success_key_said_only_when_the_task_is_done(caplog):
    """An env whose info has ``task_success`` only on the step the task is done was refused at its first step ("info
    has no 'task_success'", although the key was right), even with ``probe_step: false``. A step without the key now
    counts as no success; the start's probe step still refuses a key missing there (a misspelt one), naming
    ``probe_step: false``; a misspelt key of an unprobed target is said at the end of an episode without it."""
    import logging

    import robopretrain.envs.target as target_module
    from robopretrain.agent import Agent
    from robopretrain.build import check_env_fits
    from robopretrain.cli import known_errors
    from robopretrain.data.spec import ObsSpec
    from robopretrain.envs.target import EnvContractError

    done = {"name": "reach", "env_id": "_fake_envs:SuccessWhenDoneEnv", "task_id": 7, "obs_map": OBS_MAP,
            "success_key": "task_success", "env_kwargs": {"cameras": False}}
    steps = rollout(make_env(as_target(done)))
    *_, (_, reward, terminated, _, info) = steps
    assert info["success"] and terminated and reward == 1.0  # said on its last step, read there
    assert [s[4]["success"] for s in steps[:-1]] == [False] * (len(steps) - 1)
    agent = Agent(ObsSpec(low_dim=(("eef_pos", 3), (fake.GRIPPER, 2))), 7, "bc", {"actor_hidden": [8]})
    with pytest.raises(EnvContractError, match="info has no 'task_success' at the first step.*probe_step: false") \
            as exc:
        check_env_fits(agent, as_target(done))
    assert isinstance(exc.value, known_errors()) and len(str(exc.value).splitlines()) == 1
    check_env_fits(agent, as_target({**done, "probe_step": False}))  # no probe step: accepted
    # a misspelt key: refused before any training, naming the env's own keys, its "success" among them (it was
    # left out as the wrapper's own: the key the user needed, for Meta-World and any env that calls it so)
    with pytest.raises(EnvContractError, match=r"info has no 'done_ok' at the first step \(keys: \['success'\]\)"):
        check_env_fits(agent, robot(success_key="done_ok"))
    target_module._warned_no_success.discard("reach")
    with caplog.at_level(logging.WARNING):
        steps = rollout(make_env(robot(success_key="done_ok", max_episode_steps=5, probe_step=False)))
    assert len(steps) == 6 and not any(s[4]["success"] for s in steps)
    assert "no step of an episode had 'done_ok' in its info" in caplog.text


@pytest.mark.parametrize("fault,error", [
    ("nan", r"target 'reach': observation part 'robot0_eef_pos' holds NaN or inf at step 2 of the episode"),
    ("shape", r"target 'reach': observation part 'robot0_eef_pos' has shape \(2,\) at step 2 of the episode, "
              r"\(3,\) at its reset")])
def test_an_env_whose_observation_goes_bad_mid_episode_is_named(fault, error):
    """A sensor the agent reads turning NaN reached the policy, whose NaN actions went back to the env with no word
    (stage 3 later blamed the data); a part changing size was a tensor-size traceback. Both stop at the step, naming
    the part, before any action is computed from it; a new episode starts clean; parts the agent does not read are
    not checked."""
    from robopretrain.cli import known_errors

    target = as_target({"name": "reach", "env_id": "_fake_envs:FaultyRobosuiteLikeEnv", "task_id": 7,
                        "env_kwargs": {"fault": fault, "at": 2}})
    unread = make_env(target, checked=[fake.GRIPPER])  # a part the agent does not read may be anything
    unread.reset(seed=0)
    for _ in range(3):
        unread.step(np.zeros(7, np.float32))
    env = make_env(target, checked=[fake.EEF, fake.GRIPPER])
    env.reset(seed=0)
    env.step(np.zeros(7, np.float32))
    with pytest.raises(known_errors(), match=error):
        env.step(np.zeros(7, np.float32))
    assert len(env.unwrapped.actions) == 2 and np.isfinite(env.unwrapped.actions).all()
    obs, _ = env.reset(seed=1)  # shapes and the step count start over
    assert np.isfinite(obs["robot0_eef_pos"]).all() and obs["robot0_eef_pos"].shape == (3,)
    env.step(np.zeros(7, np.float32))


class LateSuccessKey(gym.Env):
    """A dense-reward env whose info carries ``key`` only from its second step (some envs add it on some steps)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, key: str = "is_success", never: bool = False) -> None:
        self.key, self.never, self.t = key, never, 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        info = {} if self.never or self.t == 1 else {self.key: self.t >= 3}
        return np.zeros(2, np.float32), -1.0, False, self.t >= 4, info


def test_a_dense_targets_success_key_is_checked_over_the_episode(caplog, monkeypatch):
    """A key that comes only on later steps is read where it is (a step without it is no success); a named key no
    step of an episode gives is said at the episode's end, once (refused there, it stopped every run of an env that
    says its key only on success at its first failed episode; the start's probe step refuses a misspelt key); the
    default key never given is said once."""
    import robopretrain.envs.target as target_module

    def run(env):
        env.reset(seed=0)
        return [env.step(np.zeros(1, np.float32))[-1]["success"] for _ in range(4)]

    late = make_env(Target(name="late", env_id=f"{__name__}:LateSuccessKey", task_id=0, reward="dense",
                           success_key="is_success", terminate_on_success=False))
    assert run(late) == [False, False, True, True]
    never = make_env(Target(name="never", env_id=f"{__name__}:LateSuccessKey", task_id=0, reward="dense",
                            success_key="is_success", env_kwargs={"never": True}))
    monkeypatch.setattr(target_module, "_warned_no_success", set())
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.target"):  # an env that says it only on success,
        assert run(never) == [False] * 4  # after a failed episode: warned, not refused (a probe step checks the key)
    assert "no step of an episode had 'is_success' in its info" in caplog.text
    caplog.clear()
    quiet = make_env(Target(name="quiet", env_id=f"{__name__}:LateSuccessKey", task_id=0, reward="dense",
                            env_kwargs={"never": True}))
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.target"):
        assert run(quiet) == [False] * 4 and run(quiet) == [False] * 4
    warned = [r.getMessage() for r in caplog.records if "count no success" in r.getMessage()]
    assert len(warned) == 1 and "no step of an episode had 'success'" in warned[0]
    assert "'success'" not in warned[0].split("keys: ")[1].split(")")[0]  # the env's own keys, not the wrapper's
    assert "only on the step that succeeds shows this after a failed episode: then nothing is wrong" in warned[0]


def test_gymnasium_module_id_form_and_unknown_ids_or_modules_are_named(tmp_path, monkeypatch):
    """gymnasium's "module:Namespace/Id-v0" imports the user's module (which registers the id) and makes the id; an
    id nobody registered and a module that does not exist are one-line ValueErrors naming what to write."""
    (tmp_path / "user_robot_env.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('userrobot/Pend-v0', entry_point='gymnasium.envs.classic_control:PendulumEnv', "
        "max_episode_steps=200)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env(Target(name="pend", env_id="user_robot_env:userrobot/Pend-v0", task_id=0, reward="dense",
                          max_episode_steps=7))
    env.reset(seed=0)
    assert sum(1 for _ in iter(lambda: any(env.step(np.zeros(1, np.float32))[2:4]), True)) == 6  # 7th step ends
    with pytest.raises(ValueError, match="not registered with gymnasium.*your_module:nobody/Nothing-v0"):
        make_env(Target(name="x", env_id="nobody/Nothing-v0", task_id=0, reward="dense"))
    with pytest.raises(ValueError, match="cannot import 'no_such_user_module'.*PYTHONPATH"):
        make_env(Target(name="x", env_id="no_such_user_module:Env", task_id=0, reward="dense"))
    with pytest.raises(ValueError, match="has no 'Missing-v0'"):
        make_env(Target(name="x", env_id="user_robot_env:Missing-v0", task_id=0, reward="dense"))
    # without its version, as gymnasium itself accepts it (the latest version)
    unversioned = make_env(Target(name="p", env_id="user_robot_env:userrobot/Pend", task_id=0, reward="dense"))
    assert unversioned.unwrapped.spec.id == "userrobot/Pend-v0" and unversioned.reset(seed=0)[0]
    # the module is found but a dependency of it is not installed: say that, not "is its folder on PYTHONPATH?"
    (tmp_path / "user_env_dep.py").write_text("import not_installed_sim_dependency\n")
    with pytest.raises(ValueError, match="'user_env_dep' was found but imports 'not_installed_sim_dependency'"):
        make_env(Target(name="x", env_id="user_env_dep:Env", task_id=0, reward="dense"))


@pytest.mark.parametrize("limit", [50, 300])
def test_a_registered_envs_time_limit_is_replaced_in_both_directions(limit):
    """Pendulum-v1 registers 200 steps: the target's max_episode_steps lowers and raises it (an outer TimeLimit
    could only lower it)."""
    env = make_env(Target(name="pendulum", env_id="Pendulum-v1", task_id=0, reward="dense", max_episode_steps=limit))
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        *_, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        steps, done = steps + 1, terminated or truncated
    assert steps == limit


def test_images_are_flipped_when_the_env_renders_upside_down_and_randomization_is_ours_only():
    cams = ("agentview_image",)  # the agent's cameras are flipped (other uint8 parts pass as the env gives them)
    up, down = make_env(robot(), cameras=cams), make_env(robot(flip_images=True), cameras=cams)
    a, b = up.reset(seed=3)[0], down.reset(seed=3)[0]
    np.testing.assert_array_equal(b["agentview_image"], a["agentview_image"][::-1])
    np.testing.assert_array_equal(b["eef_pos"], a["eef_pos"])
    with pytest.raises(ValueError, match=r"target 'reach' \(gym\): randomization='train' applies to sim_envs"):
        make_env(robot(), randomization="train")
    with pytest.raises(KeyError, match=r"the env gives no camera \['wrist_image'\].*env.render\(\) only film"):
        make_env(robot(), cameras=("wrist_image",)).reset(seed=0)


class Vector(gym.Env):
    """A non-dict observation: it becomes the part ``observation``."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3), {}

    def step(self, action):
        return np.ones(3), 0.0, False, False, {"success": False}


def test_a_vector_env_and_a_spawned_factory_build_the_same_env():
    gym.register("test_target/Vector-v0", entry_point=Vector)
    obs, _ = make_env(as_target({"name": "vec", "env_id": "test_target/Vector-v0", "task_id": 0})).reset()
    assert set(obs) == {OBSERVATION, "task_id"} and obs[OBSERVATION].dtype == np.float32
    factory = env_factory(robot(), ("agentview_image",), 16)
    restored = pickle.loads(pickle.dumps(factory))
    venv = gym.vector.SyncVectorEnv([restored, factory], autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    try:
        batch, _ = venv.reset(seed=[5, 5])
        np.testing.assert_array_equal(batch["eef_pos"][0], batch["eef_pos"][1])
        assert batch["agentview_image"].shape == (2, 16, 16, 3) and batch["task_id"].tolist() == [7, 7]
        batch, reward, *_ = venv.step(np.zeros((2, 7), np.float32))
        assert batch["eye_in_hand_image"].shape == (2, 16, 16, 3) and reward.tolist() == [0.0, 0.0]
    finally:
        venv.close()


def test_an_env_with_no_time_limit_is_capped_with_a_warning_once(monkeypatch, caplog):
    """An evaluation episode of an env that never ends would never return: a gym env with no time limit the toolkit
    can see is truncated at UNLIMITED_EPISODE_CAP steps (warned once per target); a target's max_episode_steps, a
    registered limit or the base env's own max_episode_steps leave it alone."""
    import logging

    import robopretrain.envs.target as target_module

    monkeypatch.setattr(target_module, "UNLIMITED_EPISODE_CAP", 7)
    monkeypatch.setattr(target_module, "_warned_unlimited", set())

    def length(env) -> int:
        env.reset(seed=0)
        steps, done = 0, False
        while not done and steps < 500:  # without the cap: 500, not a hang
            *_, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
            steps, done = steps + 1, terminated or truncated
        return steps

    far = {"goal": (5.0, 5.0, 5.0)}  # never reached: RobosuiteLikeEnv never ends by itself
    with caplog.at_level(logging.WARNING):
        assert length(make_env(robot(env_kwargs=far))) == 7
        assert length(make_env(robot(env_kwargs=far))) == 7
    assert caplog.text.count("no time limit the toolkit can see") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert length(make_env(robot(env_kwargs=far, max_episode_steps=11))) == 11
        assert length(make_env(Target(name="pendulum", env_id="Pendulum-v1", task_id=0, reward="dense"))) == 200
        fake.RobosuiteLikeEnv.max_episode_steps = 3  # a base env that states a limit it does not enforce: held to it
        try:
            assert length(make_env(robot(env_kwargs=far))) == 3
            fake.RobosuiteLikeEnv.max_episode_steps = 1  # the shortest limit is a limit too
            assert length(make_env(robot(env_kwargs=far))) == 1
        finally:
            del fake.RobosuiteLikeEnv.max_episode_steps
        fake.RobosuiteLikeEnv.max_path_length = 4  # Meta-World's name for the same
        try:
            assert length(make_env(robot(env_kwargs=far))) == 4
        finally:
            del fake.RobosuiteLikeEnv.max_path_length
    assert "no time limit" not in caplog.text


def test_an_envs_time_limit_is_its_tightest_stated_one():
    """env_time_limit: the shortest of the TimeLimit wrappers, the registered limit and the base env's stated one."""
    from robopretrain.envs.target import env_time_limit

    far = {"goal": (5.0, 5.0, 5.0)}
    assert env_time_limit(make_env(robot(env_kwargs=far, max_episode_steps=11))) == 11
    assert env_time_limit(make_env(Target(name="pendulum", env_id="Pendulum-v1", task_id=0, reward="dense"))) == 200
    fake.RobosuiteLikeEnv.max_path_length = 6  # a stated limit counts as enforced (this fake does not), under 11
    try:
        assert env_time_limit(make_env(robot(env_kwargs=far, max_episode_steps=11))) == 6
        assert env_time_limit(fake.RobosuiteLikeEnv(goal=(5.0, 5.0, 5.0))) == 6  # the bare env
    finally:
        del fake.RobosuiteLikeEnv.max_path_length
    assert env_time_limit(fake.RobosuiteLikeEnv(goal=(5.0, 5.0, 5.0))) is None


def test_an_env_kwarg_the_env_does_not_take_is_one_line_naming_env_kwargs():
    """A keyword the env's constructor does not take was a TypeError traceback from inside it."""
    with pytest.raises(ValueError, match=r"unexpected keyword argument 'imag_size'.*it takes .*image_size"):
        make_env(Target(name="arm", env_id="_fake_envs:RobosuiteLikeEnv", task_id=0, env_kwargs={"imag_size": 9}))
    with pytest.raises(ValueError, match=r"'gravty'.*check the target's env_kwargs"):
        make_env(Target(name="p", env_id="Pendulum-v1", task_id=0, reward="dense", env_kwargs={"gravty": 9.0}))
    # the env's own bug (a keyword inside its constructor, not one of env_kwargs) keeps its TypeError and traceback
    gym.register("BuggyTargetEnv-v0", entry_point=f"{__name__}:BuggyEnv")
    with pytest.raises(TypeError, match="dtyp"):
        make_env(Target(name="b", env_id="BuggyTargetEnv-v0", task_id=0, reward="dense"))


class BuggyEnv(LateSuccessKey):
    def __init__(self) -> None:
        super().__init__()
        np.zeros(3, dtyp=np.float32)


def test_a_sim_targets_own_image_size_is_replaced_by_the_agents_with_a_warning_once(caplog):
    """``env_kwargs.image_size`` of a sim_envs target was replaced silently by the agent's size."""
    target = Target(name="Reach", env_kwargs={"image_size": 32})
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="robopretrain.envs.target"):
            env = make_env(target, ("agentview_image",), 24)
        try:
            obs, _ = env.reset(seed=0)
        finally:
            env.close()
        assert obs["agentview_image"].shape == (24, 24, 3)
    said = [r.getMessage() for r in caplog.records if "env_kwargs.image_size=32" in r.getMessage()]
    assert len(said) == 1 and "agent's image size 24" in said[0]
    caplog.clear()
    make_env(Target(name="Reach", env_kwargs={"image_size": 24}), ("agentview_image",), 24).close()
    assert "image_size" not in caplog.text  # the same size: nothing to say


def test_a_sim_envs_target_renders_the_cameras_the_agent_names_its_own_way():
    """Agent cameras front_cam / wrist_cam mapped by obs_map to the sim's agentview / eye-in-hand: the env rendered
    neither (it tested the agent's names) and refused the cameras it had been told how to map."""
    target = Target(name="Reach", task_id=0, obs_map={"front_cam": "agentview_image", "wrist_cam": "eye_in_hand_image"})
    env = make_env(target, ("front_cam", "wrist_cam"), 32)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["front_cam"].shape == obs["wrist_cam"].shape == (32, 32, 3)
        assert not np.array_equal(obs["front_cam"], obs["wrist_cam"])  # two cameras, not one twice
    finally:
        env.close()


@pytest.mark.parametrize("kwargs, said", [
    ({"randomization": "eval_hard"}, r"env_kwargs.randomization is not a target's to set: each run sets it"),
    ({"terminate_on_success": False}, r"env_kwargs.terminate_on_success .*target's own terminate_on_success"),
    ({"render_images": False}, r"env_kwargs.render_images .*the agent's cameras"),
    ({"num_distractors": 4}, r"\['num_distractors'\] are settings of the randomization .*\+dr.num_distractors=4"),
    ({"factor_levels": {"friction": "eval_hard"}}, r"\['factor_levels'\] are settings of the randomization"),
    ({"max_distractor": 2}, r"\['max_distractor'\] are no keywords of a sim_envs env \(did you mean "
                            r"\['max_distractors'\]\?\)"),
])
def test_a_sim_envs_targets_env_kwargs_cannot_fix_what_each_run_sets(kwargs, said):
    """A sim_envs target's ``env_kwargs.randomization`` replaced every evaluation condition's (make_env spread
    env_kwargs last): "nominal" ran under eval_hard and eval_info.json said none. Randomization settings given there
    (README's num_distractors) reached gym.make as unknown keywords (a traceback)."""
    with pytest.raises(ValueError, match=said):
        Target(name="Reach", env_kwargs=kwargs)
    with pytest.raises(ValueError, match=said):  # the config's path too
        as_target({"name": "Reach", "env_kwargs": kwargs})


def test_a_sim_envs_targets_allowed_env_kwargs_are_the_envs_keywords_it_does_not_get_elsewhere():
    """SIM_ENVS_KWARGS drifts from TabletopEnv's signature: a new keyword would be refused, a removed one let
    through to a TypeError."""
    import inspect

    from robopretrain.envs.target import SIM_ENVS_KWARGS, SIM_ENVS_OWNED
    from sim_envs.env import TabletopEnv

    params = set(inspect.signature(TabletopEnv.__init__).parameters) - {"self"}
    assert set(SIM_ENVS_KWARGS) | (set(SIM_ENVS_OWNED) - {"max_episode_steps"}) == params
    assert not set(SIM_ENVS_KWARGS) & set(SIM_ENVS_OWNED)
    env = make_env(Target(name="Reach", env_kwargs={"max_distractors": 2, "camera": "agentview"}), (), None,
                   {"level": "none", "num_distractors": 2})
    try:
        env.reset(seed=0)
        assert env.unwrapped.randomizer.config.num_distractors == 2  # the run's randomization reached the env
    finally:
        env.close()


def test_a_meta_world_targets_env_kwargs_cannot_contradict_its_fields():
    """``{reward: dense, env_kwargs: {reward: sparse}}`` ran sparse (env_kwargs spread last) while the target said
    dense; a demo file's recorded reward / termination now become the target's fields."""
    with pytest.raises(ValueError, match=r"env_kwargs.reward='sparse' contradicts the target's reward='dense'"):
        Target(name="reach", family="metaworld", reward="dense", env_kwargs={"reward": "sparse"})
    Target(name="reach", family="metaworld", reward="dense", env_kwargs={"reward": "dense"})  # agreeing: fine
    # env_kwargs.task ran another task than the name, which results and the task slot still said (a user's session)
    for task in ("reach-v3", "no-such-task", 3):
        with pytest.raises(ValueError, match=r"env_kwargs.task=.* contradicts the target's name"):
            Target(name="drawer-open-v3", family="metaworld", env_kwargs={"task": task})
    Target(name="drawer-open-v3", family="metaworld", env_kwargs={"task": "drawer-open"})  # the same task: fine
    recorded = {"family": "metaworld", "env_kwargs": {"reward": "dense", "terminate_on_success": False,
                                                      "max_episode_steps": 90}}
    target = target_of_data(recorded, "reach-v3", 0)
    assert target.reward == "dense" and target.terminate_on_success is False
    assert target.env_kwargs == {"max_episode_steps": 90}


def test_a_gym_target_without_task_id_takes_the_slot_the_agent_was_trained_in(caplog):
    """A one-task agent's gym target needed ``task_id: 0`` (README: an agent of one task takes 0); stage 2 failed
    after loading its data. The slot comes from the trained task of the target's name, else the agent's only task,
    else 0 for a one-slot agent; a multi-task agent's target must say it."""
    from robopretrain.envs.target import with_task_slot

    gym_target = Target(name="push", env_id=ENTRY)
    assert with_task_slot(gym_target, {"reach": 2, "push": 4}, 12).task_id == 4  # its name's slot
    assert with_task_slot(gym_target, {"reach": 3}, 12).task_id == 3  # the only trained task's
    assert with_task_slot(gym_target, {}, 1).task_id == 0 and with_task_slot(gym_target, {}, 0).task_id == 0
    with pytest.raises(ValueError, match=r"target 'push': a gym target of a multi-task agent needs task_id.*size 12 "
                                         r"\(the trained tasks' slots: \{'reach': 2, 'lift': 5\}\)"):
        with_task_slot(gym_target, {"reach": 2, "lift": 5}, 12)
    assert with_task_slot(robot(), {"reach": 2}, 12).task_id == 7  # a given task_id stays
    assert "also a sim_envs task's name" not in caplog.text  # 'push' names no sim_envs task: nothing to warn of
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.target"):  # a sim_envs task's name: maybe not
        assert with_task_slot(Target(name="Lift", env_id=ENTRY), {"Lift": 3, "Reach": 0}, 13).task_id == 3
    assert "also a sim_envs task's name" in caplog.text
    # sim_envs: its own id, unless the agent learnt the task in another slot (stage 2's data.task_id moved it: stage 3
    # and evaluate's target=OpenDrawer fine-tuned and scored slot 4, never trained, where the default target used 2)
    assert with_task_slot(Target(name="Reach"), {"Reach": 0, "Lift": 3}, 13).task_id is None
    assert with_task_slot(Target(name="Reach"), {"Lift": 3, "PushBlock": 5}, 13).task_id is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.target"):
        assert with_task_slot(Target(name="OpenDrawer"), {"OpenDrawer": 2}, 13).task_id == 2
    assert "the slot the agent learnt a task 'OpenDrawer' in (sim_envs' own id: 4)" in caplog.text
    # never the gym rules: stage 3's default target (PlaceInBowl, id 9) of a one-task agent of the user's own keeps
    # its id, which the stage refuses, not the agent's only slot
    assert with_task_slot(Target(name="PlaceInBowl"), {"PointReach": 0}, 1).task_id is None
    assert with_task_slot(Target(name="PlaceInBowl"), {"PointReach": 0}, 4).task_id is None


def test_a_metaworld_target_keeps_its_own_id_unless_the_agent_learnt_the_task_elsewhere_or_it_does_not_fit():
    """A user's own one-task drawer-open file (slot 0, one-hot of size 1): the target took Meta-World's id 4 and
    was refused ("does not fit the agent's task one-hot of size 1"), with advice to leave out the task_id it had
    left out."""
    from robopretrain.envs.target import with_task_slot

    drawer = Target(name="drawer-open-v3", family="metaworld")
    own = drawer.resolved_task_id()
    assert own > 0  # (Meta-World's MT50 id: the case needs one other than 0)
    assert with_task_slot(drawer, {"drawer-open-v3": own}, 50).task_id is None  # the collector's ids: its own
    assert with_task_slot(drawer, {"reach-v3": 1}, 50).task_id is None  # fits, another task learnt: its own
    assert with_task_slot(drawer, {"drawer-open-v3": 0}, 1).task_id == 0  # learnt in slot 0
    assert with_task_slot(drawer, {"drawer-open-v3": 2}, 50).task_id == 2  # learnt elsewhere in a wide one-hot
    assert with_task_slot(drawer, {"my_drawer": 0}, 1).task_id == 0  # a one-slot agent of a task named otherwise
    assert with_task_slot(drawer, {"a": 0, "b": 1}, 2).task_id is None  # no slot to take: its id, refused later
    assert with_task_slot(Target(name="drawer-open-v3", family="metaworld", task_id=3), {}, 1).task_id == 3



@pytest.mark.parametrize("asynchronous", [False, True])
def test_observation_parts_that_are_no_arrays_are_left_out_for_the_vector_collector(asynchronous, caplog):
    """A language instruction (Text) and a nested Dict in a gym env's observation: stage 3's collector crashed
    (tree_rows on strings; an IndexError on the nested dict) or, with worker processes, hung silently."""
    from robopretrain.collector import VectorCollector

    target = Target(name=f"reach_{asynchronous}", env_id="_fake_envs:LanguageRobosuiteLikeEnv", task_id=0,
                    max_episode_steps=4, obs_map=OBS_MAP)
    for _ in range(2):  # what is left out is said once per target and process
        with caplog.at_level(logging.INFO, logger="robopretrain.envs.target"):
            env = make_env(target, ("agentview_image",), 16)
        try:
            obs, _ = env.reset(seed=0)
            assert "instruction" not in obs and "extra" not in obs and set(env.observation_space.spaces) == set(obs)
        finally:
            env.close()
    assert caplog.text.count(f"target 'reach_{asynchronous}': observation part(s) ['instruction'] are no "
                             "arrays") == 1
    c = VectorCollector(env_factory(target, ("agentview_image",), 16), 2, convert=lambda o: np.asarray(
        o["eef_pos"], np.float32), seed=1, asynchronous=asynchronous)
    c.start(next_episode=0)
    try:
        episodes = []
        for _ in range(6):
            episodes += c.step(lambda x: np.zeros((len(x), fake.ROBOSUITE_ACT_DIM), np.float32), budget=100).episodes
    finally:
        c.close()
    assert episodes and all(ep.observations.shape[1] == 3 for ep in episodes)


class _TwoGoalsEnv(gym.Env):
    """An env with its own ``goal`` (another frame: not what the agent wants) beside ``target_q``, in ``order``."""

    def __init__(self, order: tuple[str, ...] = ("goal", "target_q")) -> None:
        self.order = order
        bounds = {"goal": 9.0, "target_q": 1.0}  # told apart in the agent's observation space too
        self.observation_space = gym.spaces.Dict({k: gym.spaces.Box(-bounds[k], bounds[k], (5,), np.float32)
                                                  for k in order})
        self.action_space = gym.spaces.Box(-1, 1, (5,), np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        values = {"goal": np.full(5, -7.0, np.float32), "target_q": np.full(5, 0.5, np.float32)}
        return {k: values[k] for k in self.order}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {"is_success": False}

    def step(self, action):
        return self._obs(), 0.0, False, False, {"is_success": False}


@pytest.mark.parametrize("order", [("goal", "target_q"), ("target_q", "goal")])
def test_a_mapped_part_is_the_mapped_key_whatever_the_envs_order_and_a_mapped_key_it_lacks_is_named(order):
    """obs_map={goal: target_q} on an env that has a key ``goal`` of its own: the agent's goal is target_q (it was
    whichever the env's dict listed last) and the env's own goal is left out; a typo in the mapped key is refused
    naming it (the env's own goal was read instead, silently)."""
    target = Target(name="T", family=GYM, env_id="x", obs_map={"goal": "target_q"}, task_id=0,
                    success_key="is_success")
    from robopretrain.envs.target import EnvContractError, TargetEnv

    env = TargetEnv(_TwoGoalsEnv(order), target, checked=["goal"])
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["goal"], np.full(5, 0.5, np.float32))
    assert "target_q" not in obs and set(env.observation_space.spaces) == {"goal", "task_id"}
    assert env.observation_space["goal"] == gym.spaces.Box(-1.0, 1.0, (5,), np.float32)  # target_q's, not goal's
    typo = Target(name="T", family=GYM, env_id="x", obs_map={"goal": "target_qq"}, task_id=0, success_key="is_success")
    with pytest.raises(EnvContractError, match=r"target 'T': obs_map=\{'goal': 'target_qq'\}: the env's observation has no "
                                         r"key 'target_qq' \(its keys: \['goal', 'target_q'\]\)"):
        TargetEnv(_TwoGoalsEnv(order), typo, checked=["goal"])
    TargetEnv(_TwoGoalsEnv(order), typo)  # a mapping of a part the agent does not read is left alone


def test_a_camera_that_changes_size_after_the_check_is_warned_about_once(caplog):
    """Frames are resized as they come: a camera giving 16x16 frames at the check and 12x12 or 8x8 later was read
    silently (a new user's finding). Warned once per camera; camera_shapes keeps what the check saw."""
    from robopretrain.envs.target import TargetEnv

    target = Target(name="T", family=GYM, env_id="x", task_id=0, success_key="success")
    raw = fake.RobosuiteLikeEnv(image_size=16)
    env = TargetEnv(raw, target, cameras=["agentview_image", "robot0_eye_in_hand_image"], image_size=8)
    with caplog.at_level(logging.WARNING, logger="robopretrain.envs.target"):
        env.reset(seed=0)
        env.step(np.zeros(7, np.float32))
        assert not [r for r in caplog.records if "frames now" in r.getMessage()]
        for size in (12, 8):
            raw.size = size
            obs, _ = env.reset(seed=1)
            env.step(np.zeros(7, np.float32))
    said = [r.getMessage() for r in caplog.records if "frames now" in r.getMessage()]
    assert said == [f"target 'T': camera {key!r} gives 12x12x3 frames now (episode step 0), 16x16x3 when it was "
                    "checked: each frame is resized to the agent's 8x8 as it comes, so these are squeezed "
                    "differently from the frames the checks and the agent's data saw"
                    for key in ("agentview_image", "robot0_eye_in_hand_image")]
    assert env.camera_shapes["agentview_image"] == (16, 16, 3) and obs["agentview_image"].shape == (8, 8, 3)


def test_two_parts_reading_one_key_are_refused_in_the_env_and_in_the_data():
    """A half-written swap obs_map={front: wrist} with both cameras parts: the data side fed the wrist camera to both
    parts and never read the front one, silently; the env side kept one part per env key and called the other
    missing, "map it with obs_map" (a new user's findings). Both now name the two parts and the key."""
    from robopretrain.data.spec import spec_from_shapes
    from robopretrain.envs.target import EnvContractError, TargetEnv

    frame = ((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"f.hdf5: parts 'front' \(through data.obs_map\) and 'wrist' \(by its "
                                         r"own name\) both read the key 'wrist'.*"
                                         r"data.obs_map=\{front: wrist, wrist: front\}"):
        spec_from_shapes({"front": frame, "wrist": frame}, [], ["front", "wrist"], 0, where="f.hdf5",
                         key_map={"front": "wrist"}, map_setting="data.obs_map")
    swapped = spec_from_shapes({"front": frame, "wrist": ((4, 4, 3), np.uint8)}, [], ["front", "wrist"], 0,
                               where="f.hdf5", key_map={"front": "wrist", "wrist": "front"})
    assert dict(swapped.rgb) == {"front": (4, 4, 3), "wrist": (8, 8, 3)}
    with pytest.raises(ValueError, match=r"observation key 'cam' \(rgb part 'side'\) not found.*\{side: free\}"):
        spec_from_shapes({"front": frame, "free": frame}, [], ["front", "side"], 0, where="f.hdf5",
                         key_map={"side": "cam"}, map_setting="data.obs_map")  # the advice: a key no part reads
    from robopretrain.data.spec import as_rgb, shared_source_key

    assert "through the observation mapping" in shared_source_key(["a", "b"], {"a": "k", "b": "k"})  # no setting
    rgb = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert as_rgb(rgb, (4, 4, 3)) is rgb  # colour frames as they are; grey ones repeated in three channels
    assert np.array_equal(as_rgb(rgb[..., :1], (4, 4, 1)), np.repeat(rgb[..., :1], 3, axis=-1))
    for obs_map, said in (({"goal": "target_q", "aim": "target_q"}, "parts 'aim' .* and 'goal' .* both read the "
                                                                    "key 'target_q'"),
                          ({"goal": "target_q", "other": "target_q"}, None),  # 'other' is not read: left alone
                          ({"other": "target_q", "goal": "target_q", "aim": "goal"}, None),
                          ({"goal": "target_q", "aim": "goal"}, None), ({"aim": "goal"}, "parts 'aim'.*'goal'")):
        target = Target(name="T", family=GYM, env_id="x", obs_map=obs_map, task_id=0, success_key="is_success")
        if said is None:  # a swap of the env's own key into another part is no clash; nor an unread part's entry
            obs, _ = TargetEnv(_TwoGoalsEnv(("goal", "target_q")), target, checked=["goal", "aim"]).reset(seed=0)
            np.testing.assert_array_equal(obs["goal"], np.full(5, 0.5, np.float32))  # target_q, whatever the order
            continue
        with pytest.raises(EnvContractError, match=f"target 'T': {said}"):
            TargetEnv(_TwoGoalsEnv(("goal", "target_q")), target, checked=["goal", "aim"])
    # a part read by its own name keeps its key beside an unread part's entry on it (a review)
    target = Target(name="T", family=GYM, env_id="x", obs_map={"other": "goal"}, task_id=0, success_key="is_success")
    obs, _ = TargetEnv(_TwoGoalsEnv(("goal", "target_q")), target, checked=["goal"]).reset(seed=0)
    np.testing.assert_array_equal(obs["goal"], np.full(5, -7.0, np.float32))


@pytest.mark.parametrize("kind,shown", [("discrete", "Discrete(3)"), ("binary", "MultiBinary(1)"),
                                        ("int_box", "Box(0, 4, (2,), int64)")])
def test_an_env_whose_actions_are_not_a_float_box_is_refused_by_name(kind, shown):
    """MultiBinary(1) passed the size check (shape (1,)) and got float actions like 0.32; Discrete(3) was refused as
    'actions of shape ()' (a new user's find)."""
    target = Target(name="other", env_id="_fake_envs:OtherActionsEnv", env_kwargs={"kind": kind}, task_id=0)
    with pytest.raises(ValueError, match=rf"target 'other': its env's action space is {re.escape(shown)}; the "
                                         r"agents act in a continuous float Box"):
        make_env(target)


def test_two_parts_that_flatten_to_one_key_are_refused():
    """{"arm": {"pos": ...}, "arm.pos": ...}: the agent got one arm.pos, the nested one dropped without a word (and
    the converters did the same to recorded data)."""
    from robopretrain.data.episodes import ConversionError, flatten_obs

    with pytest.raises(ValueError, match=r"two parts flatten to the key 'arm.pos' \(a nested part and a key with dots "
                                         r"of its own\); rename one in the env"):
        make_env(Target(name="clash", env_id="_fake_envs:CollidingKeysEnv", task_id=0))
    with pytest.raises(ConversionError, match=r"^episode 3: two observation parts flatten to the key 'arm.pos'"):
        flatten_obs({"arm": {"pos": np.zeros(2)}, "arm.pos": np.ones(2)}, "episode 3")
    assert set(flatten_obs({"arm": {"pos": 1}, "arm_pos": 2}, "x")) == {"arm.pos", "arm_pos"}


def test_nested_and_shaped_observations_reach_the_agent_as_the_converters_recorded_them():
    """An agent trained on an env's converted data (D4RL, Minari: nested parts as dotted keys, every non-picture part
    a float32 vector) could not act in that env: the env gave (3, 2) parts, ints and nested dicts as they were
    (a new user's find). Both now read one step the same way."""
    from robopretrain.data.episodes import as_part, flatten_obs

    env = make_env(Target(name="nested", env_id="_fake_envs:NestedShapesEnv", task_id=0))
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.zeros(4, np.float32))
    raw = env.unwrapped._obs()  # the same step as the env gives it
    converted = {k: as_part(np.asarray(v)[None], k)[0] for k, v in flatten_obs(raw, "step").items()}
    assert set(obs) == set(converted) | {"task_id"}
    assert set(converted) == {"arm.pos", "grid", "mode", "flags", "pair.0", "pair.1", "cam"}
    for key, value in converted.items():
        assert obs[key].dtype == value.dtype and obs[key].shape == value.shape, key
        np.testing.assert_array_equal(obs[key], value)
        assert env.observation_space[key].contains(obs[key]), key
    assert obs["grid"].shape == (6,) and obs["mode"].tolist() == [1.0] and obs["cam"].shape == (16, 16, 3)
    assert env.observation_space["mode"] == gym.spaces.Box(0.0, 3.0, (1,), np.float32)


def test_discrete_parts_are_bounded_by_their_first_and_last_values():
    """A ``Discrete(4, start=2)`` part reads 2..5, a ``MultiDiscrete([3, 5], start=[1, 0])`` part 1..3 and 0..4: the
    vector space's bounds are the values the env can give (``start + n - 1``), not one past them."""
    from robopretrain.envs.target import _vector_space

    assert _vector_space(gym.spaces.Discrete(4, start=2)) == gym.spaces.Box(2.0, 5.0, (1,), np.float32)
    multi = _vector_space(gym.spaces.MultiDiscrete([3, 5], start=[1, 0]))
    assert multi.low.tolist() == [1.0, 0.0] and multi.high.tolist() == [3.0, 4.0]


def test_a_sim_envs_target_with_its_own_task_slot_is_wrapped_and_one_without_is_the_env_itself():
    """The slot of a sim_envs target given a ``task_id`` is that id (the wrapper sets it); without one (and without
    an obs_map) the env is ours, already in our conventions, and keeps its task's own slot."""
    import sim_envs.tasks as sim_tasks
    from robopretrain.envs.target import TargetEnv

    own = make_env(as_target("PickPlace"))
    slotted = make_env(as_target({"name": "PickPlace", "task_id": 13}))
    try:
        assert not any(isinstance(e, TargetEnv) for e in _wrappers(own))
        assert any(isinstance(e, TargetEnv) for e in _wrappers(slotted))
        assert int(np.asarray(own.reset(seed=0)[0]["task_id"]).reshape(-1)[0]) == sim_tasks.TASK_IDS["PickPlace"] != 13
        assert int(np.asarray(slotted.reset(seed=0)[0]["task_id"]).reshape(-1)[0]) == 13
    finally:
        own.close()
        slotted.close()


def _wrappers(env):
    while True:
        yield env
        if not hasattr(env, "env"):
            return
        env = env.env


class _PictureBesideCameraEnv(gym.Env):
    """An env with the agent's camera and another picture (a depth map, say) the agent does not see as a camera."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({"agentview_image": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
                                                  "depth_image": gym.spaces.Box(0, 255, (24, 24, 3), np.uint8),
                                                  "proprio": gym.spaces.Box(-1, 1, (3,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def _obs(self):
        return {"agentview_image": np.full((32, 32, 3), 7, np.uint8), "depth_image": np.full((24, 24, 3), 9, np.uint8),
                "proprio": np.zeros(3, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {"is_success": False}

    def step(self, action):
        return self._obs(), 0.0, False, False, {"is_success": False}


def test_only_the_agents_cameras_are_resized_and_other_pictures_pass_as_given():
    from robopretrain.envs.target import TargetEnv

    target = Target(name="T", family=GYM, env_id="x", task_id=0, success_key="is_success")
    env = TargetEnv(_PictureBesideCameraEnv(), target, cameras=["agentview_image"], image_size=16)
    obs, _ = env.reset(seed=0)
    assert obs["agentview_image"].shape == (16, 16, 3) and obs["depth_image"].shape == (24, 24, 3)
    assert env.observation_space["depth_image"].contains(obs["depth_image"])


def test_the_envs_own_key_of_a_mapped_parts_name_never_reaches_the_space_whatever_the_names_sort_as():
    """The env's keys are read in sorted order: a mapped key sorting before the shadowed own key (``a_goal`` before
    ``goal``) must still be the part's space, the own key left out."""
    from robopretrain.envs.target import TargetEnv

    class Env(_TwoGoalsEnv):
        def __init__(self) -> None:
            self.observation_space = gym.spaces.Dict({"goal": gym.spaces.Box(-9, 9, (5,), np.float32),
                                                      "a_goal": gym.spaces.Box(-1, 1, (5,), np.float32)})
            self.action_space = gym.spaces.Box(-1, 1, (5,), np.float32)

        def _obs(self):
            return {"goal": np.full(5, -7.0, np.float32), "a_goal": np.full(5, 0.5, np.float32)}

    target = Target(name="T", family=GYM, env_id="x", obs_map={"goal": "a_goal"}, task_id=0, success_key="is_success")
    env = TargetEnv(Env(), target, checked=["goal"])
    assert env.observation_space["goal"] == gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
    np.testing.assert_array_equal(env.reset(seed=0)[0]["goal"], np.full(5, 0.5, np.float32))


def test_a_target_without_a_time_limit_gets_no_note_about_its_demos_length():
    """No limit (the env's own, unknown here): nothing to compare the demos' lengths with."""
    from robopretrain.data.hdf5 import DemoInfo
    from robopretrain.envs.target import episode_limit, time_limit_note

    target = Target(name="T", env_id="x", task_id=0)
    demos = [DemoInfo("demo_0", 50, "T", 0, {"success": True}), DemoInfo("demo_1", 60, "T", 0, {"success": True})]
    assert episode_limit(target) is None and time_limit_note(target, {}, demos) is None
    assert "2 of its 2 successful demos" in time_limit_note(Target(name="T", env_id="x", task_id=0,
                                                                   max_episode_steps=40), {}, demos)


def test_camera_geometry_notes_name_other_proportions_and_grey_against_colour():
    """An env camera of other proportions than the data's (each is stretched to the agent's square), or grey where
    the data had colour (and back), is noted; another size of the same proportions and an unknown channel count
    are not."""
    from robopretrain.envs.target import ASPECT_TOLERANCE, camera_geometry_notes

    trained = {"top": [48, 64, 3], "side": [32, 40, 1], "wrist": [12, 12, None]}
    assert camera_geometry_notes("t", {"top": (24, 32, 3), "side": (64, 80, 1), "wrist": (30, 30, 3)}, trained) == []
    notes = camera_geometry_notes("t", {"top": (96, 48, 3), "side": (32, 40, 3), "wrist": (12, 12, 1)}, trained)
    assert notes == ["t: camera 'side' gives colour frames, the agent's data had grey ones (a grey frame is read as "
                     "RGB with the grey in each channel): the agent sees colours it did not learn from",
                     "t: camera 'top' gives 96x48 frames, the agent's data had 48x64: both are stretched to the "
                     "agent's square, so the scene's proportions differ from what it learnt (another camera setting? "
                     "crop or pad the env's frames to the data's proportions)"]  # by camera name
    assert "gives grey frames, the agent's data had colour ones" in camera_geometry_notes(
        "t", {"top": (48, 64, 1)}, trained)[0]
    within = 64 * (1 + ASPECT_TOLERANCE / 2)  # a rounding of the width inside the tolerance; twice it outside
    assert camera_geometry_notes("t", {"top": (48, within, 3)}, trained) == []
    assert len(camera_geometry_notes("t", {"top": (48, 64 * (1 + 2 * ASPECT_TOLERANCE), 3)}, trained)) == 1
    assert camera_geometry_notes("t", {"top": (96, 48, 3)}, None) == []  # a checkpoint without the record
    # data frames enlarged to the agent's size while the env renders it natively (sharper): noted; shrunk, or the
    # env's own frames enlarged too, or within ENLARGED_BY: not
    square = {"cam": [64, 64, 3]}
    (note,) = camera_geometry_notes("t", {"cam": (96, 96, 3)}, square, image_size=96)
    assert note.startswith("t: camera 'cam': the agent learnt from the data's 64x64 frames enlarged to its 96 px")
    assert "data.image_size=64" in note
    assert camera_geometry_notes("t", {"cam": (48, 48, 3)}, square, image_size=96) == []  # the env's enlarged too
    assert camera_geometry_notes("t", {"cam": (64, 64, 3)}, {"cam": [128, 128, 3]}, image_size=64) == []
    assert camera_geometry_notes("t", {"cam": (68, 68, 3)}, square, image_size=68) == []
    assert camera_geometry_notes("t", {"cam": (96, 96, 3)}, square) == []  # no agent size given
    wide = camera_geometry_notes("t", {"cam": (96, 192, 3)}, {"cam": [64, 128, 3]}, image_size=96)  # its height
    assert len(wide) == 1 and "data.image_size=64" in wide[0]


def test_check_env_fits_compares_the_envs_cameras_with_the_agents_data(caplog, monkeypatch):
    """Wiring: check_env_fits reads the frames as the env gave them (TargetEnv.camera_shapes) against the agent's
    camera_sources, and says each difference once per process."""
    import robopretrain.envs.target as target_module
    from robopretrain.agent import Agent, EncoderSettings
    from robopretrain.build import check_env_fits
    from robopretrain.data.spec import ObsSpec

    monkeypatch.setattr(target_module, "_CAMERA_SAID", set())
    spec = ObsSpec(low_dim=(("robot0_eef_pos", 3),), rgb=(("agentview_image", (16, 16, 3)),), num_tasks=0)
    agent = Agent(spec, fake.ROBOSUITE_ACT_DIM, "bc", {"actor_hidden": [8]}, EncoderSettings(
        kwargs={"channels": 4, "out_dim": 8}))
    target = Target(name="like", env_id="_fake_envs:RobosuiteLikeEnv", max_episode_steps=3, task_id=0,
                    env_kwargs={"image_size": 16})
    with caplog.at_level(logging.WARNING):
        agent.camera_sources = {"agentview_image": [16, 16, 3]}
        check_env_fits(agent, target)
        assert "camera 'agentview_image'" not in caplog.text
        agent.camera_sources = {"agentview_image": [16, 32, 1]}
        for _ in range(2):
            check_env_fits(agent, target)
    assert caplog.text.count("camera 'agentview_image' gives 16x16 frames, the agent's data had 16x32") == 1
    assert caplog.text.count("camera 'agentview_image' gives colour frames, the agent's data had grey") == 1


def test_data_camera_sources_of_a_file_a_converted_copy_and_through_obs_map():
    """A robomimic file's own frames give H, W, C; a copy converted from another format wrote grey as RGB, so C is
    unknown there (its grey env was warned as 'grey against colour'); the agent's part names map to the data's."""
    from types import SimpleNamespace

    from robopretrain.build import data_camera_sources

    own = SimpleNamespace(env_args={}, obs_specs={"cam": ((48, 64, 1), np.uint8), "proprio": ((3,), np.float32)})
    assert data_camera_sources(own, ["cam"]) == {"cam": [48, 64, 1]}
    assert data_camera_sources(own, ["top"], {"top": "cam"}) == {"top": [48, 64, 1]}
    copy = SimpleNamespace(env_args={"source": "/data/run.npz", "type": "ogbench"},
                           obs_specs={"cam": ((48, 64, 3), np.uint8)})
    assert data_camera_sources(copy, ["cam"]) == {"cam": [48, 64, None]}
    assert data_camera_sources(own, []) is None


def test_data_camera_sources_of_a_resized_robomimic_copy_read_the_channels_from_its_source(tmp_path):
    """A copy of a robomimic file resized to the agent's size records its source's size; the channels come from the
    source file itself when it is a readable HDF5 (an .npz source, or none there: unknown)."""
    from types import SimpleNamespace

    import _fake_envs as fake
    from robopretrain.build import data_camera_sources
    from robopretrain.data.hdf5 import read_info

    source = fake.write_robosuite_demos(tmp_path / "src.hdf5", 2, image_size=20)
    cam = next(k for k, (shape, _) in read_info(source).obs_specs.items() if len(shape) == 3)
    channels = read_info(source).obs_specs[cam][0][2]
    copy = SimpleNamespace(env_args={"source": str(source), "source_image_sizes": {cam: [20, 20]}},
                           obs_specs={cam: ((16, 16, 3), np.uint8)})
    assert data_camera_sources(copy, [cam]) == {cam: [20, 20, channels]}
    gone = SimpleNamespace(env_args={"source": str(tmp_path / "moved.hdf5"), "source_image_sizes": {cam: [20, 20]}},
                           obs_specs={cam: ((16, 16, 3), np.uint8)})
    assert data_camera_sources(gone, [cam]) == {cam: [20, 20, None]}


def test_an_action_space_without_bounds_leaves_the_agents_actions_unclipped(caplog):
    """A shaped action space with no low / high (a Space subclass of the user's): the env's range is unbounded, so
    nothing is warned as beyond it and the action passes as ``units.to_env`` gives it."""
    from robopretrain.envs.action_units import ActionNormalization
    from robopretrain.envs.target import AgentActionUnits

    class Unbounded(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        action_space = gym.spaces.Space(shape=(2,), dtype=np.float32)

    units = ActionNormalization(low=(-2.0, 0.0), high=(2.0, 0.5))
    with caplog.at_level(logging.WARNING):
        wrapped = AgentActionUnits(Unbounded(), units, "target 'mine'")
    assert "beyond the env's own action range" not in caplog.text
    np.testing.assert_allclose(wrapped.action(np.array([0.5, -1.0])), units.to_env(np.array([0.5, -1.0])))
