"""``sim_envs.wrappers.BlindCamera``: the blind-camera ablation really takes the picture away, and nothing else.

A black frame (or another episode's frame) must be what the observation holds at reset and at every step,
while the env underneath still renders the real scene and the state keys, rewards and episode ends are
exactly those of the unwrapped env.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs
from sim_envs.experts import make_expert
from sim_envs.wrappers import DONOR_OFFSET, BlindCamera

TASK = "PressLitButton"


def make(**kwargs) -> gym.Env:
    return gym.make(sim_envs.env_id(TASK), image_size=32, **kwargs)


def rollout(env: gym.Env, seed: int, steps: int = 25):
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, rng=np.random.default_rng(seed))
    trace = [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        trace.append(obs)
        if terminated or truncated:
            break
    return trace, reward, terminated, info


def test_black_frame_reaches_the_observation_and_the_rest_is_untouched() -> None:
    blind = BlindCamera(make(eye_in_hand=True), mode="black")
    assert blind.keys == ("agentview_image", "eye_in_hand_image")
    sighted = make(eye_in_hand=True)
    trace_b, reward_b, term_b, info_b = rollout(blind, seed=4)
    trace_s, reward_s, term_s, info_s = rollout(sighted, seed=4)
    assert len(trace_b) == len(trace_s) and (reward_b, term_b, info_b["success"]) == (reward_s, term_s, info_s["success"])
    for obs_b, obs_s in zip(trace_b, trace_s):
        for key in ("agentview_image", "eye_in_hand_image"):
            assert obs_b[key].shape == obs_s[key].shape and obs_b[key].dtype == np.uint8
            assert not obs_b[key].any(), f"{key} is not black"
            assert obs_s[key].std() > 5, "the sighted frame should show a scene"
        for key in ("proprio", "object"):
            np.testing.assert_array_equal(obs_b[key], obs_s[key], err_msg=key)
    # underneath, the env still renders the real scene: only the observation is blinded
    assert blind.unwrapped.render_camera("agentview").std() > 5
    assert blind.observation_space.contains(trace_b[-1])


def test_other_episode_frame_shows_a_different_scene_and_stays_fixed() -> None:
    blind = BlindCamera(make(), mode="other_episode")
    trace, *_ = rollout(blind, seed=7, steps=10)
    donor_first, _ = make().reset(seed=7 + DONOR_OFFSET)
    real_first, _ = make().reset(seed=7)
    for obs in trace:
        np.testing.assert_array_equal(obs["agentview_image"], donor_first["agentview_image"])
    assert not np.array_equal(donor_first["agentview_image"], real_first["agentview_image"])
    # the episode itself is the one seed 7 gives without the wrapper
    np.testing.assert_array_equal(trace[0]["object"], real_first["object"])
    # a second wrapper with the same seed shows the same frame; another seed another frame
    again, _ = BlindCamera(make(), mode="other_episode").reset(seed=7)
    other, _ = BlindCamera(make(), mode="other_episode").reset(seed=8)
    np.testing.assert_array_equal(again["agentview_image"], trace[0]["agentview_image"])
    assert not np.array_equal(other["agentview_image"], trace[0]["agentview_image"])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        BlindCamera(make(), mode="grey")
    with pytest.raises(KeyError, match="wrist_image"):  # named keys are checked on the observations
        BlindCamera(make(), keys=["wrist_image"]).reset(seed=0)
    with pytest.raises(ValueError, match="no image keys"):
        BlindCamera(gym.make(sim_envs.env_id(TASK), render_images=False))
