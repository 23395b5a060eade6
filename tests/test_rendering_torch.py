"""Rendering and PyTorch in one process: the order of loading Mesa's and Triton's LLVM must not crash it."""
import subprocess
import sys

SCRIPT = """
import gymnasium as gym
import sim_envs
import torch

env = gym.make("sim_envs/Reach-v0", image_size=32)
obs, _ = env.reset(seed=0)
params = [torch.nn.Parameter(torch.zeros(3))]
opt = torch.optim.Adam(params, lr=1e-3)   # imports torch._dynamo and Triton lazily
params[0].sum().backward()
opt.step()
obs, *_ = env.step(env.action_space.sample())
print("rendered", obs["agentview_image"].shape)
"""


def test_render_then_build_an_optimizer_in_one_process():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"exit code {out.returncode}\n{out.stderr[-2000:]}"
    assert "rendered (32, 32, 3)" in out.stdout


def test_unstable_physics_truncates_the_episode_and_says_so():
    import gymnasium as gym
    import numpy as np

    import sim_envs  # noqa: F401

    env = gym.make("sim_envs/Lift-v0", render_images=False)
    env.reset(seed=0)
    base = env.unwrapped
    obs, reward, terminated, truncated, info = env.step(np.zeros(4))
    assert info["physics_unstable"] is False and not truncated
    base.data.qvel[:] = np.inf  # blow the state up: MuJoCo flags bad accelerations and resets
    obs, reward, terminated, truncated, info = env.step(np.zeros(4))
    assert info["physics_unstable"] is True
    assert truncated and not terminated and reward == 0.0
