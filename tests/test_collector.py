"""The stage-3 collector: per-env episodes in order, one seed per episode, draining for checkpoints, the step budget,
worker processes giving the same data as in-process envs, and the shared collect-then-update loop."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from _fake_envs import CountEnv  # a light module: spawned workers import it, not this one
from robopretrain.collector import Episode, VectorCollector, collect_and_update, crossed, episode_seed
from robopretrain.evaluation import train_episode_seed

SEED = 3


def identity(obs):
    return np.asarray(obs["x"], dtype=np.float32)


def zero_policy(obs: np.ndarray) -> np.ndarray:
    return np.zeros((len(obs), 4), np.float32)


def expected_length(index: int) -> int:
    return 2 + episode_seed(SEED, index) % 4


def collector(num_envs: int, asynchronous: bool = False) -> VectorCollector:
    return VectorCollector(CountEnv, num_envs, convert=identity, seed=SEED, asynchronous=asynchronous)


def first_episodes(c: VectorCollector, n: int, budget: int) -> list[Episode]:
    """At least ``n`` finished episodes of ``c`` from episode 0 (``budget`` env steps a round); closes ``c``."""
    c.start(0)
    try:
        episodes: list[Episode] = []
        while len(episodes) < n:
            episodes += c.step(zero_policy, budget=budget).episodes
    finally:
        c.close()
    return episodes


def test_episode_seed_is_the_evaluation_modules_formula():
    for seed, k in [(0, 0), (3, 17), (12, 99_999)]:
        assert episode_seed(seed, k) == train_episode_seed(seed, k)


def test_training_seeds_never_are_evaluation_seeds_and_published_runs_keep_theirs():
    from robopretrain.collector import EVAL_SEEDS_END, EVAL_SEEDS_START
    from robopretrain.evaluation import EVAL_SEED

    assert EVAL_SEEDS_START <= EVAL_SEED < EVAL_SEEDS_END
    assert [episode_seed(s, k) for s, k in [(0, 0), (3, 17), (9, 99_999)]] == [0, 300_017, 999_999]  # seeds 0-9
    episodes = [*range(300), 99_999, 100_000, 1_000_000, 5_000_000]
    for seed in [*range(25), 10_000, 2**31]:
        seeds = [episode_seed(seed, k) for k in episodes]
        assert all(0 <= x < 2**32 and not EVAL_SEEDS_START <= x < EVAL_SEEDS_END for x in seeds), seed
        assert len(set(seeds)) == len(seeds), seed  # a run's episodes start differently
    assert episode_seed(10, 0) != episode_seed(11, 0) != episode_seed(10, 1)
    with pytest.raises(ValueError, match="must be >= 0"):
        episode_seed(-1, 0)


def test_an_info_array_of_varying_length_does_not_reach_the_vector_env():
    """A user's env with info["contacts"] of shape (k, 3), k varying: the vector env stacked it (a broadcast error
    naming no key in-process; worker envs hung for good). The collector keeps only the info keys it reads."""
    import functools

    c = VectorCollector(functools.partial(CountEnv, contacts=True), 2, convert=identity, seed=SEED,
                        asynchronous=False)
    episodes = first_episodes(c, 4, budget=4)
    assert [e.success for e in episodes[:4]] == [episode_seed(SEED, e.index) % 2 == 0 for e in episodes[:4]]


def test_worker_envs_are_built_with_their_info_cut_too(monkeypatch):
    """The asynchronous path (where a varying-length info array hung the workers) builds each worker's env through
    the same info-cutting factory: captured from AsyncVectorEnv's arguments, without starting workers."""
    import functools

    import gymnasium as gym

    from robopretrain.collector import CollectedInfo, make_vector_env

    seen = {}

    def capture(env_fns, **kwargs):
        seen["fns"], seen["kwargs"] = env_fns, kwargs
        return "async"

    monkeypatch.setattr(gym.vector, "AsyncVectorEnv", capture)
    assert make_vector_env(functools.partial(CountEnv, contacts=True), 2, asynchronous=True) == "async"
    assert len(seen["fns"]) == 2 and seen["kwargs"]["context"] == "spawn"
    env = seen["fns"][0]()
    try:
        assert isinstance(env, CollectedInfo)
        env.reset(seed=0)
        info = env.step(np.zeros(env.action_space.shape, np.float32))[-1]
        assert "contacts" not in info
    finally:
        env.close()


def test_crossed_counts_multiples_in_a_chunk():
    assert crossed(58, 60, 20) and crossed(59, 61, 20) and not crossed(60, 62, 20) and not crossed(61, 79, 20)


def test_episodes_are_whole_in_order_and_seeded_one_by_one():
    c = collector(3)
    c.start(next_episode=5)
    episodes, counted = [], 0
    try:
        for _ in range(12):
            out = c.step(zero_policy, budget=100)
            counted += out.transitions
            episodes += out.episodes
    finally:
        c.close()
    assert counted == 36  # no env idles without drain
    assert sorted(ep.index for ep in episodes) == list(range(5, 5 + len(episodes)))
    for ep in episodes:
        seed_k = episode_seed(SEED, ep.index)
        n = expected_length(ep.index)
        assert ep.length == n
        np.testing.assert_array_equal(ep.observations, [[seed_k, t] for t in range(n)])
        np.testing.assert_array_equal(ep.next_observations, [[seed_k, t + 1] for t in range(n)])
        success = seed_k % 2 == 0
        assert ep.success == success and ep.env_return == float(success)
        np.testing.assert_array_equal(ep.terminals, [0.0] * (n - 1) + [float(success)])
        np.testing.assert_array_equal(ep.rewards, [0.0] * (n - 1) + [float(success)])
    # transitions still being collected are the rest of the count
    assert counted - sum(ep.length for ep in episodes) == sum(len(s) for s in c._steps)


def test_drain_stops_new_episodes_and_idle_steps_are_not_counted():
    c = collector(2)
    c.start(next_episode=0)  # seeds 300000 (length 2) and 300001 (length 3)
    try:
        out = c.step(zero_policy, budget=100, drain=True)
        assert out.transitions == 2 and not out.episodes and not c.drained
        out = c.step(zero_policy, budget=100, drain=True)
        assert out.transitions == 2 and [ep.index for ep in out.episodes] == [0]
        assert not c.drained and c.next_episode == 2  # env 0 is idle: no episode 2 started
        out = c.step(zero_policy, budget=100, drain=True)  # env 0 steps but is not counted
        assert out.transitions == 1 and [ep.index for ep in out.episodes] == [1] and c.drained
        with pytest.raises(RuntimeError, match="every env idle"):
            c.step(zero_policy, budget=100)
        c.start(c.next_episode)  # the same as a run resumed here
        assert not c.drained and list(c.ep_index) == [2, 3]
        np.testing.assert_array_equal(c._cur, [[episode_seed(SEED, 2), 0], [episode_seed(SEED, 3), 0]])
    finally:
        c.close()


def test_budget_caps_the_count_and_drops_partial_episodes():
    c = collector(3)
    c.start(next_episode=0)
    try:
        out = c.step(zero_policy, budget=2)
        assert out.transitions == 2 and c.active.tolist() == [True, True, False]
        assert c.cut == 1 and c.in_flight == 3  # two running, one cut: the final checkpoint's episodes_in_flight
    finally:
        c.close()
    c = collector(2)
    c.start(next_episode=0)  # lengths 2 and 3: at the budget's last step env 0 ends (draining) and env 1 is cut
    try:
        c.step(zero_policy, budget=100, drain=True)
        out = c.step(zero_policy, budget=1, drain=True)
        assert [ep.index for ep in out.episodes] == [0] and c.drained and c.in_flight == 1
        c.start(c.next_episode)
        assert c.cut == 0 and c.in_flight == 2
    finally:
        c.close()


def run_loop(num_envs: int, asynchronous: bool, total: int = 40, utd: int = 2, kill_at: int | None = None,
             resume: tuple[int, int] | None = None):
    """Drive collect_and_update with fake updates; return what it called, in order."""
    calls: list[tuple] = []
    c = collector(num_envs, asynchronous)

    class Killed(Exception):
        pass

    def update(with_metrics: bool):
        calls.append(("update", with_metrics))
        return {"critic_loss": 1.0} if with_metrics else {}

    def on_checkpoint(step: int, started: int) -> None:
        calls.append(("checkpoint", step, started))
        if kill_at is not None and step >= kill_at:
            raise Killed

    env_steps, started = resume or (0, 0)
    try:
        end = collect_and_update(
            c, zero_policy, env_steps=env_steps, started=started, total=total, utd=utd, eval_every=10, log_every=7,
            checkpoint_every=10, store=lambda ep: calls.append(("episode", ep.index, ep.length)),
            update=update, on_log=lambda step, m: calls.append(("log", step)),
            on_eval=lambda step: calls.append(("eval", step)), on_checkpoint=on_checkpoint)
    except Killed:
        end = None
    finally:
        c.close()
    return calls, end


def test_loop_updates_utd_per_env_step_and_checkpoints_at_drained_points():
    calls, end = run_loop(2, asynchronous=False)
    assert end[0] == 40
    updates = [c for c in calls if c[0] == "update"]
    assert len(updates) == 2 * 40  # utd x env steps
    ckpts = [c for c in calls if c[0] == "checkpoint"]
    assert ckpts[-1][1] == 40 and all(b[1] - a[1] >= 10 for a, b in zip(ckpts, ckpts[1:]))
    # metrics are requested right before every checkpoint and log
    for i, c in enumerate(calls):
        if c[0] in ("checkpoint", "log"):
            last_update = next(x for x in reversed(calls[:i]) if x[0] == "update")
            assert last_update == ("update", True)
    evals = [c[1] for c in calls if c[0] == "eval"]  # rounds count 1 or 2 steps: a multiple of 10 or one past it
    assert len(evals) == 4 and evals[-1] == 40 and all(m <= s <= m + 1 for m, s in zip((10, 20, 30), evals))
    episodes = [c for c in calls if c[0] == "episode"]
    assert all(length == expected_length(k) for _, k, length in episodes)


def test_the_loop_logs_at_each_multiple_of_log_every_with_the_step_reached_and_stops_at_the_budget():
    """Three envs and a budget that is no multiple of them: the last round is cut to the budget (the run ends at 40,
    not past it); each log comes once per multiple of 7 passed, with the step count reached and that round's
    metrics."""
    logged: list[tuple[int, dict]] = []
    c = collector(3)
    try:
        end = collect_and_update(
            c, zero_policy, env_steps=0, started=0, total=40, utd=1, eval_every=100, log_every=7,
            checkpoint_every=1000, store=lambda ep: None, update=lambda m: {"critic_loss": 1.0} if m else {},
            on_log=lambda step, metrics: logged.append((step, dict(metrics))), on_eval=lambda step: None,
            on_checkpoint=lambda step, started: None)
    finally:
        c.close()
    assert end[0] == 40
    steps = [step for step, _ in logged]
    assert all(m <= s <= m + 2 for m, s in zip(range(7, 40, 7), steps)) and len(steps) == 5
    assert all(metrics == {"critic_loss": 1.0} for _, metrics in logged)


def test_a_non_finite_loss_at_a_checkpoint_stops_the_loop_before_it_is_written():
    """Losses are checked where metrics are asked for: before a log and before a checkpoint (a round that does both
    or either)."""
    from robopretrain.guards import NonFiniteLossError

    written = []
    c = collector(1)
    try:
        with pytest.raises(NonFiniteLossError):
            collect_and_update(
                c, zero_policy, env_steps=0, started=0, total=40, utd=1, eval_every=100, log_every=1000,
                checkpoint_every=3, store=lambda ep: None,
                update=lambda m: {"critic_loss": float("nan")} if m else {}, on_log=lambda step, metrics: None,
                on_eval=lambda step: None, on_checkpoint=lambda step, started: written.append(step))
    finally:
        c.close()
    assert written == []


def test_success_comes_from_the_reward_where_the_env_gives_no_success_key():
    """An env without info["success"]: an episode succeeded when one of its rewards was positive."""
    import _fake_envs as fake

    episodes = first_episodes(VectorCollector(fake.NoSuccessKeyEnv, 2, convert=identity, seed=SEED), 4, budget=10)
    assert [ep.success for ep in episodes] == [episode_seed(SEED, ep.index) % 2 == 0 for ep in episodes]
    assert {ep.success for ep in episodes} == {True, False}


def test_a_fresh_collector_has_nothing_in_flight_and_zero_envs_are_refused():
    from robopretrain.collector import make_vector_env

    assert collector(2).in_flight == 0
    with pytest.raises(ValueError, match="num_envs=0; expected an integer >= 1"):
        make_vector_env(lambda: None, 0)


def test_reset_physics_reads_each_envs_scalar_parameters_only():
    from robopretrain.collector import reset_physics

    info = {"dr_params": {"friction": np.array([0.8, 1.2]), "_friction": np.array([True, False]),
                          "mass": np.array([1.0, 2.0]), "lights": {"angle": np.array([1.0, 2.0])},
                          "rgb": np.zeros((2, 3)), "name": np.array(["a", "b"])}}
    assert reset_physics(info, 0) == {"friction": 0.8, "mass": 1.0}
    assert reset_physics(info, 1) == {"mass": 2.0}  # its friction masked out (not drawn for this env)
    assert reset_physics({}, 0) == {} and reset_physics({"dr_params": None}, 0) == {}


def test_worker_processes_give_the_same_run_and_a_resumed_run_continues_it():
    sync_calls, _ = run_loop(2, asynchronous=False)
    async_calls, _ = run_loop(2, asynchronous=True)
    assert async_calls == sync_calls
    killed, _ = run_loop(2, asynchronous=False, kill_at=15)
    step, started = killed[-1][1:]
    resumed, end = run_loop(2, asynchronous=False, resume=(step, started))
    assert end[0] == 40
    assert killed + resumed == sync_calls


@pytest.mark.parametrize("image_obs", [False, True])
def test_an_episode_survives_a_checkpoint_file(tmp_path, image_obs):
    import torch

    rng = np.random.default_rng(0)
    obs = ({"agentview_image": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(4, 3)).astype(np.float32)} if image_obs
           else rng.normal(size=(4, 5)).astype(np.float32))
    nxt = {k: v[::-1].copy() for k, v in obs.items()} if image_obs else obs[::-1]  # a non-contiguous view
    ep = Episode(index=7, env=1, observations=obs, actions=rng.normal(size=(4, 2)).astype(np.float32),
                 rewards=np.array([0, 0, 0, 1], np.float32), next_observations=nxt,
                 terminals=np.array([0, 0, 0, 1], np.float32), success=True, physics={"friction": 0.8})
    torch.save(ep.state_dict(), tmp_path / "ep.pt")
    back = Episode.from_state_dict(torch.load(tmp_path / "ep.pt", weights_only=True))
    assert (back.index, back.env, back.success, back.physics, back.env_return) == (7, 1, True, {"friction": 0.8}, 1.0)
    for name in ("observations", "next_observations"):
        a, b = getattr(ep, name), getattr(back, name)
        pairs = [(a[k], b[k]) for k in a] if image_obs else [(a, b)]
        assert (set(a) == set(b)) if image_obs else True
        for x, y in pairs:
            assert y.dtype == x.dtype and np.array_equal(x, y)
    for name in ("actions", "rewards", "terminals"):
        assert np.array_equal(getattr(ep, name), getattr(back, name))


def run_in_child(code: str, hang: str) -> Any:
    """``python -c code`` with the tests' folder importable (``_fake_envs``); a run past 120 s fails the test with
    ``hang`` (what hung), so an old hang fails instead of stalling the suite."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(hang)


def test_close_after_the_parent_failed_to_stack_a_step_returns():
    """An error in the parent while it stacks the workers' answers (observations whose shapes differ) left gymnasium's
    AsyncVectorEnv waiting for a step it had already read: ``close`` then blocked forever, and stage 3 hung instead
    of showing the error. Run in a child process so that the old hang fails the test instead of stalling the suite."""
    code = (
        "import numpy as np\n"
        "from _fake_envs import ShapeShiftEnv\n"
        "from robopretrain.collector import VectorCollector\n"
        "c = VectorCollector(ShapeShiftEnv, 2, convert=lambda o: o['x'], seed=0, asynchronous=True)\n"
        "c.start(0)\n"
        "try:\n"
        "    c.step(lambda o: np.zeros((2, 4), np.float32), budget=10)\n"
        "except ValueError as e:\n"
        "    print('raised', e, flush=True)\n"
        "c.close()\n"
        "print('closed', c.venv is None, flush=True)\n")
    out = run_in_child(code, "VectorCollector.close hung after a failed step").stdout
    assert "raised" in out and "closed True" in out, out


def test_a_dead_env_worker_is_an_error_naming_it_and_the_collector_still_closes():
    """A worker process that dies (a crash in native code, an OOM kill) gave gymnasium's bare EOFError, then another
    from closing the vector env on the dead pipe."""
    code = (
        "import numpy as np\n"
        "from _fake_envs import DyingEnv\n"
        "from robopretrain.collector import VectorCollector\n"
        "from robopretrain.workers import WorkerProcessDied\n"
        "if __name__ == '__main__':\n"
        "    c = VectorCollector(DyingEnv, 2, convert=lambda o: o['x'], seed=4, asynchronous=True)\n"
        "    c.start(0)\n"
        "    try:\n"
        "        for _ in range(6):\n"
        "            c.step(lambda o: np.zeros((2, 4), np.float32), budget=10)\n"
        "    except WorkerProcessDied as e:\n"
        "        print('raised', e, flush=True)\n"
        "    c.close()\n"
        "    print('closed', c.venv is None, flush=True)\n")
    run = run_in_child(code, "a dead env worker hung the collector")
    assert "raised stage 3's env worker processes (online.num_envs=2): a worker process died" in run.stdout, run
    assert "closed True" in run.stdout and "EOFError" not in run.stderr, run.stderr[-2000:]


def test_env_workers_of_a_killed_parent_end_without_tracebacks():
    """SIGKILL of a stage-3 run (a job's time limit) left each async env worker printing two tracebacks: its EOFError
    reading the dead parent's pipe, then the BrokenPipeError of reporting it."""
    code = (
        "import os, signal\n"
        "import numpy as np\n"
        "from _fake_envs import CountEnv\n"
        "from robopretrain.collector import VectorCollector\n"
        "if __name__ == '__main__':\n"
        "    c = VectorCollector(CountEnv, 2, convert=lambda o: o['x'], seed=0, asynchronous=True)\n"
        "    c.start(0)\n"
        "    c.step(lambda o: np.zeros((2, 4), np.float32), budget=10)\n"
        "    print('stepped', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    run = run_in_child(code, "the env workers of a killed parent hung")  # returns once the workers closed stderr
    assert run.returncode == -9 and "stepped" in run.stdout, run
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
