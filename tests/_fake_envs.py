"""Tiny deterministic gymnasium envs for the collector tests (only gymnasium and numpy: spawned workers import this)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


class CountEnv(gym.Env):
    """Observation = (reset seed, step t). Episode length 2 + seed % 4; it succeeds (reward 1, terminated) when the
    seed is even, else it is truncated."""

    def __init__(self, contacts: bool = False) -> None:
        self.contacts = contacts  # info["contacts"]: (t % 3, 3), an array whose length varies (a user's env)
        self.observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.ep_seed, self.t = -1, 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"x": np.array([self.ep_seed, self.t], np.float32)}

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        self.ep_seed = -1 if seed is None else int(seed)  # unseeded resets are marked -1
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        end = self.t >= 2 + self.ep_seed % 4
        success = end and self.ep_seed % 2 == 0
        info = {"success": success, **({"contacts": np.zeros((self.t % 3, 3))} if self.contacts else {})}
        return self._obs(), float(success), success, end and not success, info


class NoSuccessKeyEnv(CountEnv):
    """:class:`CountEnv` whose info has no ``success`` key: its reward (1 on the last step of an even seed's episode)
    is what says success."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info.pop("success")
        return obs, reward, terminated, truncated, info


class OtherActionsEnv(CountEnv):
    """CountEnv with a non-continuous action space: ``kind`` discrete (Discrete(3)), binary (MultiBinary(1)) or
    int_box (an integer Box(0, 4, (2,)))."""

    def __init__(self, kind: str = "discrete") -> None:
        super().__init__()
        self.action_space = {"discrete": gym.spaces.Discrete(3), "binary": gym.spaces.MultiBinary(1),
                             "int_box": gym.spaces.Box(0, 4, (2,), np.int64)}[kind]


class NestedShapesEnv(CountEnv):
    """CountEnv whose observation has the shapes converted data flattens (a new user's D4RL / Minari env): a nested
    Dict (``arm.pos``), a (3, 2) Box, a Discrete, a MultiBinary, a Tuple and a uint8 camera."""

    def __init__(self) -> None:
        super().__init__()
        box = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.observation_space = gym.spaces.Dict({
            "arm": gym.spaces.Dict({"pos": box}), "grid": gym.spaces.Box(-1.0, 1.0, (3, 2), np.float64),
            "mode": gym.spaces.Discrete(4), "flags": gym.spaces.MultiBinary(2),
            "pair": gym.spaces.Tuple((gym.spaces.Box(0.0, 1.0, (2,), np.float32), gym.spaces.Discrete(2))),
            "cam": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)})

    def _obs(self):
        t = float(self.t)
        return {"arm": {"pos": np.array([t, 1.0, 2.0], np.float32)}, "grid": np.full((3, 2), t / 10),
                "mode": self.t % 4, "flags": np.array([1, self.t % 2], np.int8),
                "pair": (np.array([0.5, t / 10], np.float32), 1), "cam": np.full((16, 16, 3), self.t, np.uint8)}


class CollidingKeysEnv(NestedShapesEnv):
    """NestedShapesEnv with a key of its own named ``arm.pos`` beside the nested ``arm`` -> ``pos``: both flatten to
    one key, and one replaced the other unseen."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces,
                                                  "arm.pos": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)})

    def _obs(self):
        return {**super()._obs(), "arm.pos": np.full(3, 7.0, np.float32)}


class ShapeShiftEnv(CountEnv):
    """CountEnv whose observation grows by one entry at every step after an odd reset seed: with two envs the
    vector env's stacking fails in the parent process, after the workers have answered."""

    def _obs(self) -> dict[str, np.ndarray]:
        grow = self.t if self.ep_seed % 2 else 0
        return {"x": np.zeros(2 + grow, np.float32)}


class DyingEnv(CountEnv):
    """CountEnv whose process exits at its third step when it runs in a worker process (a simulator's crash, an
    out-of-memory kill); in the parent it is CountEnv."""

    def step(self, action):
        import multiprocessing as mp
        import os

        if self.t >= 2 and mp.parent_process() is not None:
            os._exit(3)
        return super().step(action)


# --------------------------------------------------------------------------- a robot that is not ours

EEF, GRIPPER = "robot0_eef_pos", "robot0_gripper_qpos"
AGENTVIEW, EYE_IN_HAND = "agentview_image", "robot0_eye_in_hand_image"
ROBOSUITE_ACT_DIM = 7  # robosuite's OSC_POSE controller: 6 pose deltas + gripper


class RobosuiteLikeEnv(gym.Env):
    """A robot with robosuite's observation keys and action size, nothing of ours: move the end effector to
    ``goal`` (within 0.15). Observations ``robot0_eef_pos`` (``eef_dim``, 3 by default: xyz, then other joint
    values that stay put), ``robot0_gripper_qpos`` (2), cameras ``agentview_image`` (a dot where the end effector
    is) and ``robot0_eye_in_hand_image`` (its height and the gripper opening as colours), ``image_size`` px;
    actions ``act_dim`` (7: xyz delta, 3 unused rotation deltas, gripper). Like robosuite it gives a dense reward
    (``-distance``), never terminates by itself and reports ``info["success"]``: the target's conventions (sparse
    reward from success, termination on success, a time limit) are the toolkit's job. ``channels_first``: cameras
    as ``(3, H, W)``, as pixel envs written for PyTorch give them."""

    def __init__(self, goal=(0.0, 0.0, 0.0), image_size: int = 16, cameras: bool = True, eef_dim: int = 3,
                 act_dim: int = ROBOSUITE_ACT_DIM, channels_first: bool = False) -> None:
        self.goal = np.asarray(goal, np.float32)[:3]
        self.size, self.cameras, self.eef_dim = int(image_size), bool(cameras), int(eef_dim)
        self.channels_first = bool(channels_first)
        spaces = {EEF: gym.spaces.Box(-np.inf, np.inf, (self.eef_dim,), np.float32),
                  GRIPPER: gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}
        if self.cameras:
            for key in (AGENTVIEW, EYE_IN_HAND):
                shape = (3, self.size, self.size) if self.channels_first else (self.size, self.size, 3)
                spaces[key] = gym.spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (int(act_dim),), np.float32)
        self.eef = np.zeros(self.eef_dim, np.float32)
        self.grip = np.zeros(2, np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {EEF: self.eef.copy(), GRIPPER: self.grip.copy()}
        if self.cameras:
            s = self.size
            view = np.full((s, s, 3), 30, np.uint8)
            r, c = np.clip(((self.eef[:2] + 1) / 2 * (s - 1)).round().astype(int), 0, s - 1)
            view[max(r - 1, 0): r + 2, max(c - 1, 0): c + 2] = (250, 200, 40)
            hand = np.zeros((s, s, 3), np.uint8)
            hand[..., 0] = int(np.clip(128 + 100 * self.eef[2], 0, 255))
            hand[..., 1] = int(np.clip(128 + 100 * self.grip[0], 0, 255))
            if self.channels_first:
                view, hand = view.transpose(2, 0, 1).copy(), hand.transpose(2, 0, 1).copy()
            obs[AGENTVIEW], obs[EYE_IN_HAND] = view, hand
        return obs

    def _distance(self) -> float:
        return float(np.linalg.norm(self.eef[:3] - self.goal))

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        direction = self.np_random.normal(size=3)
        self.eef = self.np_random.uniform(-0.5, 0.5, self.eef_dim).astype(np.float32)
        self.eef[:3] = self.goal + 0.5 * direction / np.linalg.norm(direction)
        self.grip = np.zeros(2, np.float32)
        return self._obs(), {"success": False}

    def step(self, action):
        action = np.asarray(action, np.float32)
        self.eef[:3] = np.clip(self.eef[:3] + 0.1 * action[:3], -1, 1)
        self.grip = np.array([action[-1], -action[-1]], np.float32)
        success = self._distance() < 0.15
        return self._obs(), -self._distance(), False, False, {"success": success}


class SuccessWhenDoneEnv(RobosuiteLikeEnv):
    """:class:`RobosuiteLikeEnv` whose info says ``task_success`` only on the step the task is done (a common
    pattern): no other step's info has the key."""

    def reset(self, *, seed: int | None = None, options=None):
        obs, _ = super().reset(seed=seed, options=options)
        return obs, {}

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, ({"task_success": True} if info["success"] else {})


class LanguageRobosuiteLikeEnv(RobosuiteLikeEnv):
    """:class:`RobosuiteLikeEnv` whose observation also holds a language instruction (a ``Text`` part) and a nested
    ``Dict`` part: no arrays an agent reads (stage 3's vector collector crashed or hung on them)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.observation_space = gym.spaces.Dict({
            **self.observation_space.spaces, "instruction": gym.spaces.Text(32),
            "extra": gym.spaces.Dict({"a": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})})

    def _obs(self) -> dict:
        return {**super()._obs(), "instruction": "reach the goal", "extra": {"a": np.zeros(2, np.float32)}}


class FaultyRobosuiteLikeEnv(RobosuiteLikeEnv):
    """:class:`RobosuiteLikeEnv` whose ``robot0_eef_pos`` goes wrong from step ``at`` on: ``fault="nan"`` (a sensor
    dropping out) or ``"shape"`` (one value short); it records the actions it was sent in ``self.actions``."""

    def __init__(self, fault: str = "nan", at: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fault, self.at, self.t, self.actions = fault, int(at), 0, []

    def reset(self, *, seed: int | None = None, options=None):
        self.t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.actions.append(np.asarray(action, np.float32).copy())
        obs, reward, terminated, truncated, info = super().step(action)
        self.t += 1
        if self.t >= self.at:
            obs[EEF] = np.full_like(obs[EEF], np.nan) if self.fault == "nan" else obs[EEF][:-1]
        return obs, reward, terminated, truncated, info


class ClosingRobosuiteLikeEnv(RobosuiteLikeEnv):
    """:class:`RobosuiteLikeEnv` that appends ``open`` / ``close`` lines to the file ``log`` (a user's env holding a
    robot connection or a simulator process must be closed)."""

    def __init__(self, log: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log = str(log)
        with open(self.log, "a") as f:
            f.write("open\n")

    def close(self) -> None:
        with open(self.log, "a") as f:
            f.write("close\n")
        super().close()


def robosuite_expert(obs, rng: np.random.Generator, noise: float = 0.0,
                     act_dim: int = ROBOSUITE_ACT_DIM) -> np.ndarray:
    """Toward ``goal`` = 0 (the env's default) at full speed, gripper closing; Gaussian noise, clipped."""
    action = np.zeros(act_dim, np.float32)
    action[:3] = np.clip(-np.asarray(obs[EEF][:3]) / 0.1, -1, 1)
    action[-1] = 0.5
    return np.clip(action + noise * rng.normal(size=act_dim), -1, 1).astype(np.float32)


def write_robosuite_demos(path, episodes: int = 3, *, tasks=(("reach", 0),), max_steps: int = 10,
                          image_size: int = 16, seed: int = 0, zero_rewards: bool = False,
                          act_dim: int = ROBOSUITE_ACT_DIM, eef_dim: int = 3):
    """A robomimic-format file of :class:`RobosuiteLikeEnv` episodes (robosuite keys, 7-D actions, both cameras),
    written with the toolkit's own writer: per task ``episodes`` episodes, the first clean, the others noisy (some
    fail), sparse reward 1 and ``done`` on the success step, ``ep_meta["success"]``. ``zero_rewards`` stores all-zero
    rewards and no ``done`` (a recorder that never wrote the success reward) while ``ep_meta`` keeps the outcome.
    ``env_args`` name an env the toolkit does not know. ``act_dim`` / ``eef_dim`` change the robot's sizes."""
    from sim_envs.hdf5_writer import RobomimicWriter, make_env_args

    rng = np.random.default_rng(seed)
    kwargs = {"image_size": image_size, "act_dim": act_dim, "eef_dim": eef_dim}
    env_args = make_env_args("RobosuiteLike", "1", kwargs)
    with RobomimicWriter(path, env_args, action_dim=act_dim, valid_fraction=0.0, compression=None) as w:
        for task, task_id in tasks:
            env = gym.wrappers.TimeLimit(RobosuiteLikeEnv(**kwargs), max_steps)
            for ep in range(episodes):
                obs, _ = env.reset(seed=seed * 1000 + 100 * task_id + ep)
                steps, done, success = [], False, False
                while not done:
                    action = robosuite_expert(obs, rng, noise=0.0 if ep == 0 else 0.8, act_dim=act_dim)
                    nxt, _, _, truncated, info = env.step(action)
                    success = bool(info["success"])
                    steps.append((obs, action, nxt))
                    obs, done = nxt, success or truncated

                def stack(i):
                    return {k: np.stack([s[i][k] for s in steps]) for k in steps[0][i]}

                n = len(steps)
                rewards, dones = np.zeros(n, np.float32), np.zeros(n, np.uint8)
                if success and not zero_rewards:
                    rewards[-1], dones[-1] = 1.0, 1
                w.add_episode(task=task, task_id=int(task_id), obs=stack(0), next_obs=stack(2),
                              actions=np.stack([s[1] for s in steps]), rewards=rewards, dones=dones,
                              ep_meta={"success": success, "seed": seed * 1000 + 100 * task_id + ep})
    return path


def sigint_ignored() -> bool:
    """Whether this process ignores Ctrl-C (SIGINT)."""
    import signal

    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def record_pid_and_sleep(folder: str) -> None:
    """A worker's job that writes its pid to ``folder/<pid>`` and then sleeps (a long job its parent is killed in)."""
    import os
    import time
    from pathlib import Path

    Path(folder, str(os.getpid())).write_text("")
    time.sleep(120)


def sigint_blocked() -> bool:
    """Whether this thread holds Ctrl-C (SIGINT) blocked (a worker started under
    :func:`robopretrain.workers.sigint_blocked_for_workers` does for its whole life)."""
    import signal

    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def sigint_ignored_after(initializer, *args) -> bool:
    """Run a pool initializer, then say whether this process ignores Ctrl-C (run in a spawned worker)."""
    initializer(*args)
    return sigint_ignored()


def pool_inside(x: int) -> tuple[int, int, bool]:
    """Start a spawned pool of this process's own (data collection does), and say whether Ctrl-C is ignored here:
    ``(x, |-x| computed in the pool, ignored)``. Run in a benchmark's worker process."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return x, pool.apply(abs, (-x,)), sigint_ignored()


def raise_value_error(message: str) -> None:
    """Fail as a benchmark run can (run in a worker process)."""
    raise ValueError(message)


class _TwoArgumentError(Exception):
    """An exception pickle cannot rebuild: its constructor takes more than the message pickle passes back."""

    def __init__(self, name: str, step: int) -> None:
        super().__init__(f"loss {name!r} is nan at step {step}")


def raise_non_finite() -> None:
    """Fail as a diverging run does, with an exception whose constructor takes more than its message (as
    NonFiniteLossError's did before it got a ``__reduce__``)."""
    raise _TwoArgumentError("critic", 17)


def fail_or_sleep(kind: str, folder: str, name: str, first: int = 2) -> str:
    """A benchmark task that leaves ``<folder>/<name>.started`` and then fails at once (``kind="fail"``, after the
    ``first`` tasks have started; ``"fail_slow_exit"``: its process then takes 3 s to exit, as torch's teardown or a
    joined pool can), finishes after 1 s (``"quick"``) or sleeps 30 s, leaving ``<name>.finished``."""
    import atexit
    import time
    from pathlib import Path

    (Path(folder) / f"{name}.started").touch()
    if kind in ("fail", "fail_slow_exit"):
        while len(list(Path(folder).glob("*.started"))) < first:
            time.sleep(0.05)
        if kind == "fail_slow_exit":
            atexit.register(time.sleep, 3)
        raise ValueError(f"{name} failed")
    if kind == "quick":
        time.sleep(1)
        (Path(folder) / f"{name}.finished").touch()
        return name
    time.sleep(30)
    (Path(folder) / f"{name}.finished").touch()
    return name


class SigintProbeEnv(CountEnv):
    """CountEnv whose observation ``x[0]`` is 1 where the process that built it ignores Ctrl-C, else 0."""

    def _obs(self) -> dict[str, np.ndarray]:
        return {"x": np.array([float(sigint_ignored()), self.t], np.float32)}


class WarningEnv(CountEnv):
    """CountEnv that logs one warning on the toolkit's env logger when built (as a target's once-per-process
    warnings do) and one error."""

    def __init__(self, **kwargs) -> None:
        import logging

        super().__init__(**kwargs)
        logging.getLogger("robopretrain.envs.target").warning("built-warning")
        logging.getLogger("robopretrain.envs.target").error("built-error")


# --------------------------------------------------------------------------- a robot with its own action units

class UnitsReachEnv(gym.Env):
    """A point to move to a goal with actions in the robot's own units, not ``[-1, 1]``: ``a`` in ``[0, 8]^2``, rest
    at 4, velocity ``0.05 (a - 4)`` per step. Observation (a plain vector): position (2), goal (2); success within
    0.1 of the goal; dense reward ``-distance``, never terminates by itself. Every action it receives is appended to
    ``UnitsReachEnv.received`` as ``(reset seed, action)`` (in-process runs only)."""

    received: list[tuple[int, np.ndarray]] = []
    REST, GAIN, LOW, HIGH = 4.0, 0.05, 0.0, 8.0

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = gym.spaces.Box(self.LOW, self.HIGH, (2,), np.float32)
        self.pos, self.goal, self.seed_ = np.zeros(2), np.zeros(2), -1

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        self.seed_ = -1 if seed is None else int(seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        while np.linalg.norm(self.goal - self.pos) < 0.5:
            self.goal = self.np_random.uniform(-1, 1, 2)
        return self._obs(), {"success": False}

    def step(self, action):
        a = np.asarray(action, np.float64)
        UnitsReachEnv.received.append((self.seed_, a.copy()))
        self.pos = self.pos + self.GAIN * (np.clip(a, self.LOW, self.HIGH) - self.REST)
        dist = float(np.linalg.norm(self.goal - self.pos))
        return self._obs(), -dist, False, False, {"success": dist < 0.1}

    @classmethod
    def expert(cls, obs: np.ndarray) -> np.ndarray:
        """Straight to the goal in the env's units (saturating at its bounds)."""
        obs = np.asarray(obs, np.float64)
        return np.clip(cls.REST + 0.5 / cls.GAIN * (obs[2:4] - obs[:2]), cls.LOW, cls.HIGH).astype(np.float32)


class NarrowUnitsReachEnv(UnitsReachEnv):
    """:class:`UnitsReachEnv` with a narrow box inside ``[-1, 1]``: ``a`` in ``[-0.1, 0.1]^2``, velocity ``a`` per
    step (the actions a robot's delta controller takes, in metres): ``data.actions=auto`` keeps such demos as they
    are, ``data.action_bounds`` declares their units."""

    REST, GAIN, LOW, HIGH = 0.0, 1.0, -0.1, 0.1


class GainReachEnv(NarrowUnitsReachEnv):
    """:class:`NarrowUnitsReachEnv` whose velocity is ``gain * a`` (a constructor argument: a gym env's own dynamics
    parameter, as a user's env has). Every reset is appended to ``GainReachEnv.resets`` as ``(gain, reset seed)``
    (in-process runs only)."""

    resets: list[tuple[float, int]] = []

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.GAIN = float(gain)

    def reset(self, *, seed: int | None = None, options=None):
        out = super().reset(seed=seed, options=options)
        GainReachEnv.resets.append((self.GAIN, self.seed_))
        return out


class ShortGainReachEnv(GainReachEnv):
    """:class:`GainReachEnv` that states a 2-step limit the Meta-World way (a ``max_path_length`` attribute)."""

    max_path_length = 2


class DrawnGainReachEnv(GainReachEnv):
    """:class:`GainReachEnv` that draws its own gain in ``[0.5, 1.5)`` at every reset and reports it as the reset info's
    ``dr_params`` (a user's env that randomizes its physics itself)."""

    def reset(self, *, seed: int | None = None, options=None):
        self.GAIN = float(np.random.default_rng(seed).uniform(0.5, 1.5))
        obs, info = super().reset(seed=seed, options=options)
        return obs, {**info, "dr_params": {"gain": self.GAIN}}


def write_units_d4rl(path, episodes: int = 30, max_steps: int = 40, seed: int = 0, env_cls: type = UnitsReachEnv):
    """A D4RL-style HDF5 (``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``, ``infos/success``)
    of ``env_cls.expert`` in ``env_cls`` (:class:`UnitsReachEnv`: actions in ``[0, 8]``), sparse reward 1 and a
    terminal on the success step."""
    import h5py

    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "success")}
    env = env_cls()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        for t in range(max_steps):
            action = env.expert(obs)
            nxt, _, _, _, info = env.step(action)
            done = bool(info["success"])
            for k, v in (("observations", obs), ("actions", action), ("rewards", float(done)), ("terminals", done),
                         ("timeouts", not done and t == max_steps - 1), ("success", done)):
                rows[k].append(v)
            obs = nxt
            if done:
                break
    UnitsReachEnv.received.clear()
    with h5py.File(path, "w") as f:
        for k in ("observations", "actions", "rewards", "terminals", "timeouts"):
            f[k] = np.asarray(rows[k])
        f["infos/success"] = np.asarray(rows["success"])
    return path


def sleepy_pool(pid_file: str) -> None:
    """A worker's run that starts a pool of its own, writes the pool worker's pid to ``pid_file`` and waits on it
    (for a check that stopping the run stops its pool too)."""
    import multiprocessing as mp
    import os
    import time
    from pathlib import Path

    with mp.get_context("spawn").Pool(1) as pool:
        Path(pid_file).write_text(str(pool.apply(os.getpid)))
        pool.apply(time.sleep, (30,))


def square_and_blocked(x: int) -> tuple[int, bool]:
    """``(x * x, whether this thread holds SIGINT blocked)``: run in a process_map worker."""
    return x * x, sigint_blocked()


class Payload:
    """A job's result the caller can hold a weak reference to (to see whether the pool still keeps it)."""

    def __init__(self, value: int) -> None:
        self.value = value


def payload(x: int) -> Payload:
    """``Payload(x)``: run in a process_map worker."""
    return Payload(x)


def square_or_exit(x: int) -> int:
    """``x * x``, except that the process exits at once on 3 (a simulator's crash, an out-of-memory kill)."""
    import os

    if x == 3:
        os._exit(3)
    return x * x


def failing_initializer() -> None:
    """A worker initializer that fails (an env that cannot be built in the worker)."""
    raise RuntimeError("initializer-failed")


class BoxActionsEnv(CountEnv):
    """:class:`CountEnv` taking actions in the Box ``[low, high]^4`` (``low``, ``high`` numbers); every action it
    receives is appended to ``BoxActionsEnv.received`` (class-wide: read by a test in this process)."""

    received: list = []

    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        super().__init__()
        self.action_space = gym.spaces.Box(float(low), float(high), (4,), np.float32)

    def step(self, action):
        BoxActionsEnv.received.append(np.asarray(action, np.float32).copy())
        return super().step(action)


class ScalarActionEnv(CountEnv):
    """:class:`CountEnv` whose one action dimension is a scalar Box ``[low, high]`` of shape ``()`` (gymnasium allows
    it); it refuses any other shape and appends what it receives to ``ScalarActionEnv.received``."""

    received: list = []

    def __init__(self, low: float = 0.0, high: float = 3.0) -> None:
        super().__init__()
        self.action_space = gym.spaces.Box(float(low), float(high), (), np.float32)

    def step(self, action):
        if np.shape(action) != ():
            raise ValueError(f"ScalarActionEnv takes a scalar action, got shape {np.shape(action)}")
        ScalarActionEnv.received.append(float(action))
        return super().step(action)


class PidRecordingStream:
    """A map-style dataset of two items whose DataLoader workers write their pid into ``folder`` and then sleep (a
    stand-in for stage 1's frame batches, to see whether the workers outlive the process that started them)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        record_pid_and_sleep(self.folder)
        return i
