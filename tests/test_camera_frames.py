"""A gym env's camera frames in the image contract (robopretrain.envs.camera_frames): channels last, three channels,
upright, at the agent's size; and a gym target whose camera differs from the agent's in layout and size acts."""
from __future__ import annotations

import numpy as np
import pytest

import _fake_envs as fake
from robopretrain.agent import Agent
from robopretrain.build import check_env_fits
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.camera_frames import agent_frame_shape, is_camera, to_agent_frame
from robopretrain.envs.target import Target, make_env


def test_layouts_become_upright_rgb_channels_last() -> None:
    frame = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)  # (C, H, W)
    np.testing.assert_array_equal(to_agent_frame(frame), frame.transpose(1, 2, 0))
    hwc = frame.transpose(1, 2, 0).copy()
    np.testing.assert_array_equal(to_agent_frame(hwc), hwc)  # already (H, W, 3): unchanged
    np.testing.assert_array_equal(to_agent_frame(hwc, flip=True), hwc[::-1])
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5, 1)
    np.testing.assert_array_equal(to_agent_frame(grey), np.repeat(grey, 3, axis=2))
    rgba = np.dstack([hwc, np.full((4, 5), 7, np.uint8)])
    np.testing.assert_array_equal(to_agent_frame(rgba), hwc)
    np.testing.assert_array_equal(to_agent_frame(rgba.transpose(2, 0, 1)), hwc)  # (4, H, W): RGBA channels first
    out = to_agent_frame(frame)
    assert out.flags.c_contiguous and out.dtype == np.uint8
    with pytest.raises(ValueError, match=r"C in \[1, 3, 4\]"):
        to_agent_frame(np.zeros((5, 6, 2), np.uint8))
    assert is_camera(hwc) and not is_camera(hwc.astype(np.float32)) and not is_camera(hwc[None])
    np.testing.assert_array_equal(to_agent_frame(grey[..., 0]), np.repeat(grey, 3, axis=2))  # (H, W) grey
    with pytest.raises(ValueError, match="expected uint8"):  # a float frame's scale is unknown: not cast to 0/1
        to_agent_frame(hwc.astype(np.float32) / 255)


def test_frames_are_resized_to_the_agents_size_by_area_when_shrinking() -> None:
    blocks = np.kron(np.array([[10, 20], [30, 40]], np.uint8), np.ones((4, 4), np.uint8))  # 8 x 8, four 4x4 blocks
    frame = np.dstack([blocks, blocks + 1, blocks + 2])
    np.testing.assert_array_equal(to_agent_frame(frame, size=2)[..., 0], [[10, 20], [30, 40]])
    np.testing.assert_array_equal(to_agent_frame(frame, size=2)[..., 2], [[12, 22], [32, 42]])
    stripes = np.zeros((8, 8, 3), np.uint8)
    stripes[:, ::2] = 200  # every other column: the area average is 100, a point sample 0 or 200
    np.testing.assert_array_equal(to_agent_frame(stripes, size=4), np.full((4, 4, 3), 100, np.uint8))
    up = to_agent_frame(frame[:2, :2], size=6)  # enlarged: a constant patch stays constant
    assert up.shape == (6, 6, 3) and (up[..., 0] == 10).all()
    assert up.flags.writeable and to_agent_frame(frame, size=2).flags.writeable  # torch.from_numpy warned on each
    assert to_agent_frame(np.zeros((3, 12, 16), np.uint8), size=8).shape == (8, 8, 3)  # non-square: squared
    assert agent_frame_shape((3, 12, 16)) == (12, 16, 3) and agent_frame_shape((12, 16, 1), 8) == (8, 8, 3)


def _agent(image_size: int) -> Agent:
    spec = ObsSpec(low_dim=(("eef_pos", 3),), rgb=(("agentview_image", (image_size, image_size, 3)),), num_tasks=8)
    return Agent(spec, fake.ROBOSUITE_ACT_DIM, "bc")


def test_a_gym_camera_in_another_layout_and_size_reaches_the_agent_at_its_size() -> None:
    target = Target(name="reach", env_id="_fake_envs:RobosuiteLikeEnv", task_id=7, obs_map={"eef_pos": fake.EEF},
                    env_kwargs={"image_size": 32, "channels_first": True})
    env = make_env(target, cameras=("agentview_image",), image_size=16)
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped._obs()[fake.AGENTVIEW]  # (3, 32, 32)
    assert raw.shape == (3, 32, 32) and obs["agentview_image"].shape == (16, 16, 3)
    np.testing.assert_array_equal(obs["agentview_image"], to_agent_frame(raw, 16))
    assert env.observation_space["agentview_image"].shape == (16, 16, 3)
    assert env.observation_space.contains({k: np.asarray(v) for k, v in obs.items()})  # what vector envs allocate
    check_env_fits(_agent(16), target)  # a 16 px agent on a 32 px channels-first camera: accepted
    native = make_env(Target(**{**target.to_dict(), "env_kwargs": {"image_size": 16}}), ("agentview_image",), 16)
    np.testing.assert_array_equal(native.reset(seed=0)[0]["agentview_image"],
                                  native.unwrapped._obs()[fake.AGENTVIEW])  # same size: the frame untouched


def test_only_the_agents_cameras_are_converted_other_uint8_parts_pass_as_given() -> None:
    """A frame stack (84, 84, 12) beside the camera made env construction fail, and a small uint8 grid was resized
    as if it were a camera; a grey (H, W) camera reaches the agent as RGB."""
    import gymnasium as gym

    class Extra(gym.ObservationWrapper):
        def __init__(self, env):
            super().__init__(env)
            self.observation_space = gym.spaces.Dict({**env.observation_space.spaces,
                                                      "stack": gym.spaces.Box(0, 255, (84, 84, 12), np.uint8),
                                                      "grid": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
                                                      "grey": gym.spaces.Box(0, 255, (32, 32), np.uint8)})

        def observation(self, obs):
            return {**obs, "stack": np.ones((84, 84, 12), np.uint8), "grid": np.arange(48, dtype=np.uint8).reshape(4, 4, 3),
                    "grey": np.full((32, 32), 9, np.uint8)}

    from robopretrain.envs.target import TargetEnv

    target = Target(name="reach", env_id="_fake_envs:RobosuiteLikeEnv", task_id=7, obs_map={"eef_pos": fake.EEF},
                    env_kwargs={"image_size": 32})
    env = TargetEnv(Extra(fake.RobosuiteLikeEnv(image_size=32)), target, cameras=("grey",), image_size=16)
    obs, _ = env.reset(seed=0)
    assert obs["stack"].shape == (84, 84, 12) and env.observation_space["stack"].shape == (84, 84, 12)
    np.testing.assert_array_equal(obs["grid"], np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    assert obs["grey"].shape == (16, 16, 3) and (obs["grey"] == 9).all()
    assert env.observation_space.contains({k: np.asarray(v) for k, v in obs.items()})
