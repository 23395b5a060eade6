"""Returns-to-go (REFERENCE.md Stage 3): terminals, truncation, the all-failure rule, boundaries."""

import numpy as np
import pytest

from robopretrain.data.returns import (
    breaks_inside_episodes,
    copies_of_obs,
    episode_returns_to_go,
    episode_starts,
    never_succeeds_return,
    returns_to_go,
    scale_rewards,
    sparse_negative_reward,
    sparse_return_range,
    unrewarded_successes,
)


def test_terminal_at_end_discounts_backwards():
    g = episode_returns_to_go(np.array([0.0, 0.0, 1.0]), np.array([0, 0, 1]), gamma=0.5)
    np.testing.assert_allclose(g, [0.25, 0.5, 1.0])


def test_truncation_contributes_zero_after_end():
    # no terminal anywhere: the last step is a truncation, nothing is bootstrapped after it
    g = episode_returns_to_go(np.array([1.0, 1.0, 1.0]), np.zeros(3), gamma=0.9)
    np.testing.assert_allclose(g, [1 + 0.9 + 0.81, 1 + 0.9, 1.0], rtol=1e-6)


def test_terminal_in_the_middle_cuts_the_return():
    g = episode_returns_to_go(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 0]), gamma=1.0)
    np.testing.assert_allclose(g, [3.0, 2.0, 3.0])


def test_all_failure_rule_uses_value_of_failing_forever():
    r = scale_rewards(np.zeros(4), 10.0, -5.0)
    r_neg = sparse_negative_reward(10.0, -5.0)
    assert r_neg == -5.0
    g = episode_returns_to_go(r, np.zeros(4), gamma=0.99, sparse_negative_reward=r_neg)
    np.testing.assert_allclose(g, np.full(4, -5.0 / 0.01), rtol=1e-6)


def test_all_failure_rule_not_applied_to_a_success():
    r = scale_rewards(np.array([0.0, 0.0, 1.0]), 10.0, -5.0)  # -5, -5, 5
    g = episode_returns_to_go(r, np.array([0, 0, 1]), gamma=0.5, sparse_negative_reward=-5.0)
    np.testing.assert_allclose(g, [-5 + 0.5 * (-5 + 0.5 * 5), -5 + 0.5 * 5, 5.0])


def test_gamma_zero_is_the_reward_and_gamma_one_the_sum():
    r = np.array([1.0, -2.0, 3.0, 0.5])
    np.testing.assert_allclose(episode_returns_to_go(r, np.zeros(4), gamma=0.0), r)
    np.testing.assert_allclose(episode_returns_to_go(r, np.zeros(4), gamma=1.0), np.cumsum(r[::-1])[::-1])


def test_gamma_one_with_all_failure_rule_is_rejected():
    with pytest.raises(ValueError, match="gamma < 1"):
        episode_returns_to_go(np.full(3, -1.0), np.zeros(3), gamma=1.0, sparse_negative_reward=-1.0)


def test_boundaries_from_episode_ids():
    r = np.ones(5)
    g = returns_to_go(r, np.zeros(5), gamma=1.0, episode_ids=np.array([0, 0, 0, 1, 1]))
    np.testing.assert_allclose(g, [3, 2, 1, 2, 1])


def test_ids_decide_the_episodes_and_a_noisy_next_obs_inside_one_does_not_split_it():
    """Real-robot logs: next_obs[t] != obs[t + 1] inside a demo (sensor noise). With episode ids the demo stays one
    episode (its early steps see the success reward); only without ids do observations mark the boundaries."""
    obs = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    next_obs = obs + 0.5  # never equal to the next row's obs
    ids = np.array([0, 0, 0, 1, 1])
    g = returns_to_go(np.array([0.0, 0.0, 1.0, 0.0, 1.0]), np.zeros(5), gamma=1.0, episode_ids=ids, obs=obs,
                      next_obs=next_obs)
    np.testing.assert_allclose(g, [1, 1, 1, 1, 1])
    assert episode_starts(5, episode_ids=ids, obs={"x": obs}, next_obs={"x": next_obs}).tolist() == \
        [True, False, False, True, False]
    assert episode_starts(5, obs={"x": obs}, next_obs={"x": next_obs}).all()  # no ids: every row its own


def test_boundary_detected_by_obs_mismatch_without_ids():
    obs = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    next_obs = np.array([[1.0], [2.0], [3.0], [11.0], [12.0]])  # obs[3] != next_obs[2]: a new episode
    g = returns_to_go(np.ones(5), np.zeros(5), gamma=1.0, obs=obs, next_obs=next_obs)
    np.testing.assert_allclose(g, [3, 2, 1, 2, 1])
    starts = episode_starts(5, obs={"x": obs}, next_obs={"x": next_obs})
    assert starts.tolist() == [True, False, False, True, False]


def test_all_failure_rule_is_per_episode():
    r = np.array([-1.0, -1.0, -1.0, 1.0])
    ids = np.array([0, 0, 1, 1])
    g = returns_to_go(r, np.array([0, 0, 0, 1]), gamma=0.5, episode_ids=ids, sparse_negative_reward=-1.0)
    np.testing.assert_allclose(g, [-2.0, -2.0, -1 + 0.5 * 1, 1.0])


def test_terminal_splits_episodes_for_the_failure_rule():
    # two episodes back to back without ids: the terminal at t=1 ends the first one (a success)
    r = np.array([-1.0, 1.0, -1.0, -1.0])
    g = returns_to_go(r, np.array([0, 1, 0, 0]), gamma=0.5, sparse_negative_reward=-1.0)
    np.testing.assert_allclose(g, [-1 + 0.5, 1.0, -2.0, -2.0])


def _load_offline_to_online():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "offline_to_online.py"
    spec = importlib.util.spec_from_file_location("offline_to_online_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagnosis_rtg_check_accepts_returns_py_and_flags_a_wrong_gamma():
    bench = _load_offline_to_online()
    # two episodes, 1-d states: a success after 3 steps (terminal) and an all-failure one (truncated)
    obs = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    next_obs = np.array([[1.0], [2.0], [3.0], [11.0], [12.0]])
    raw = np.array([0.0, 0.0, 1.0, 0.0, 0.0])
    dones = np.array([0, 0, 1, 0, 0])
    rewards = scale_rewards(raw, 10.0, -5.0)  # -5 / +5
    mc = returns_to_go(rewards, dones, 0.9, obs=obs, next_obs=next_obs, sparse_negative_reward=-5.0)
    np.testing.assert_allclose(mc, [-5 - 4.5 + 0.81 * 5, -5 + 0.9 * 5, 5.0, -50.0, -50.0], rtol=1e-6)
    arrays = {"observations": obs, "next_observations": next_obs, "rewards": rewards, "dones": dones, "mc_returns": mc}
    check = bench.rtg_recursion_residual(arrays, 0.9, -5.0)
    assert check["reward_values"] == [-5.0, 5.0] and check["episodes"] == 2
    assert check["max_abs_residual_inside_episodes"] < 1e-5 and check["max_abs_residual_at_episode_ends"] < 1e-5
    wrong = dict(arrays, mc_returns=returns_to_go(rewards, dones, 0.5, obs=obs, next_obs=next_obs,
                                                  sparse_negative_reward=-5.0))
    assert bench.rtg_recursion_residual(wrong, 0.9, -5.0)["max_abs_residual_inside_episodes"] > 1.0
    # a noisy next_obs inside the demos (a real robot's log): the dataset's episode starts decide, as returns.py does
    noisy = dict(arrays, next_observations=next_obs + 0.3,
                 mc_returns=returns_to_go(rewards, dones, 0.9, episode_ids=np.array([0, 0, 0, 1, 1]),
                                          sparse_negative_reward=-5.0))
    starts = np.array([True, False, False, True, False])
    check = bench.rtg_recursion_residual(noisy, 0.9, -5.0, starts)
    assert check["episodes"] == 2 and check["max_abs_residual_inside_episodes"] < 1e-5


def test_soft_target_propagation_model():
    bench = _load_offline_to_online()
    # Q_targ <- Q_targ + tau * (r + gamma * Q_targ - Q_targ): after k updates r/(1-g) * (1 - (1 - tau(1-g))^k)
    assert bench.soft_target_value(-5.0, 0.99, 5e-3, 0) == 0.0
    assert bench.soft_target_value(-5.0, 0.99, 5e-3, 1) == pytest.approx(-5.0 * 5e-3)
    assert bench.soft_target_value(-5.0, 0.99, 5e-3, 2000) == pytest.approx(-500 * (1 - (1 - 5e-5) ** 2000))
    assert bench.soft_target_value(-5.0, 0.99, 5e-3, 10**7) == pytest.approx(-500.0, rel=1e-6)


def test_one_step_episodes_and_empty_data():
    assert episode_starts(1).tolist() == [True] and episode_starts(0).tolist() == []
    one = np.zeros((1, 3), dtype=np.float32)  # one step: nothing to compare across steps
    assert episode_starts(1, obs=one, next_obs=one + 1).tolist() == [True]
    np.testing.assert_allclose(episode_returns_to_go(np.array([2.0]), np.array([1]), gamma=0.9), [2.0])
    assert episode_returns_to_go(np.zeros(0), np.zeros(0), gamma=0.9).shape == (0,)


def test_integer_obs_against_float_next_obs_use_the_tolerance():
    """Exact comparison is a shortcut for integer images only; a float side is compared within atol."""
    obs = np.array([[0], [1], [2]], np.uint8)
    next_obs = np.array([[1.2], [3.0], [3.0]], np.float32)  # step 1 follows step 0 (within 0.5), step 2 does not
    assert episode_starts(3, obs=obs, next_obs=next_obs, atol=0.5).tolist() == [True, False, True]
    obs_f = np.array([[5.0], [0.8], [2.3]], np.float32)  # float obs against integer next_obs: within 0.5 both times
    assert episode_starts(3, obs=obs_f, next_obs=np.array([[1], [2], [9]], np.uint8), atol=0.5).tolist() == [
        True, False, False]


def test_image_parts_compare_exactly_and_any_part_that_differs_starts_an_episode():
    """uint8 frames (N, H, W, C) beside a low-dim part: one pixel one level apart in step 2's frame is a boundary (the
    low-dim part agrees there); a low-dim jump in step 1 is one too; copies of obs are counted over every part."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 3, 5, 3), dtype=np.uint8)
    next_frames = np.concatenate([frames[1:], frames[-1:]]).copy()
    next_frames[1, 2, 4, 0] += 1  # next_obs[1] is not obs[2]: one pixel, one level
    low = np.arange(4, dtype=np.float32)[:, None]
    next_low = np.concatenate([low[1:], low[-1:]]).copy()
    next_low[0] += 0.5  # next_obs[0] is not obs[1] in the low-dim part
    obs, next_obs = {"cam": frames, "low": low}, {"cam": next_frames, "low": next_low}
    assert episode_starts(4, obs=obs, next_obs=next_obs).tolist() == [True, True, True, False]
    assert episode_starts(4, obs={"cam": frames}, next_obs={"cam": next_frames}).tolist() == [True, False, True,
                                                                                              False]
    assert copies_of_obs(obs, next_obs) == 1  # the last step's next_obs repeats its obs (both parts)
    assert copies_of_obs({"cam": frames}, {"cam": frames}) == 4
    assert copies_of_obs(frames, next_frames) == 1
    assert copies_of_obs(low, low + 8e-7) == 4  # within the default 1e-6
    # a tolerance of whole levels (atol >= 1) is honoured for integer frames too: one level apart is no boundary
    assert episode_starts(4, obs={"cam": frames}, next_obs={"cam": next_frames}, atol=1.0).tolist() == [True, False,
                                                                                                         False, False]


def test_obs_dict_against_an_array_is_refused():
    obs = {"a": np.zeros((2, 1))}
    with pytest.raises(ValueError, match="both be arrays or dicts with the same keys"):
        episode_starts(2, obs=obs, next_obs=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="both be arrays or dicts with the same keys"):
        episode_starts(2, obs=obs, next_obs={"b": np.zeros((2, 1))})
    with pytest.raises(ValueError, match="at least one"):  # no part to compare: said, not a broadcasting error
        episode_starts(3, obs={}, next_obs={})
    with pytest.raises(ValueError, match="at least one"):
        copies_of_obs({}, {})


def test_never_succeeds_return_is_the_discounted_value_of_failing_forever():
    assert never_succeeds_return(10.0, -5.0, 0.99) == pytest.approx(-500.0)  # Cal-QL's -5 / (1 - 0.99)
    assert never_succeeds_return(1.0, -1.0, 0.5) == pytest.approx(-2.0)
    assert never_succeeds_return(10.0, -5.0, 1.0) == -float("inf")


def test_sparse_return_range_bounds_every_episode_the_transform_allows():
    # Cal-QL's r * 10 - 5 at 0.99: failing forever gives -500, succeeding forever (no terminal) +500
    assert sparse_return_range(10.0, -5.0, 0.99) == pytest.approx((-500.0, 500.0))
    # rewards in {0, 1} untransformed: [0, 100]; all-negative {-1, 0} (OGBench): [-100, 0]
    assert sparse_return_range(1.0, 0.0, 0.99) == pytest.approx((0.0, 100.0))
    assert sparse_return_range(1.0, -1.0, 0.9) == pytest.approx((-10.0, 0.0))
    # a negative scale swaps the ends; no bound at discount 1
    assert sparse_return_range(-2.0, 0.0, 0.5) == pytest.approx((-4.0, 0.0))
    assert sparse_return_range(10.0, -5.0, 1.0) == (-float("inf"), float("inf"))


def test_unrewarded_successes_counts_marked_episodes_only_when_the_rewards_carry_no_signal():
    """A recorder that never wrote the success reward: constant, never positive rewards beside episodes marked
    successful (a meta without the flag is no success); rewards that vary (OGBench's -1 / 0) or reach above 0 carry
    a signal."""
    meta = [{"success": True}, {}, {"success": False}, {"success": True}]
    assert unrewarded_successes(np.zeros(8), meta) == 2
    assert unrewarded_successes(np.full(8, -1.0), meta) == 2
    assert unrewarded_successes(np.array([-1.0, -1.0, 0.0, -1.0]), meta) == 0  # varies: a signal
    assert unrewarded_successes(np.array([0.0, 0.0, 1.0, 0.0]), meta) == 0
    assert unrewarded_successes(np.zeros(0), meta) == 0
    assert unrewarded_successes(np.zeros(4), [{}, {"success": False}]) == 0


def test_breaks_inside_episodes_counts_next_obs_apart_from_the_next_obs_within_an_episode_only():
    """obs[t + 1] != next_obs[t] between two episodes is their boundary, not a break; inside one it is."""
    obs = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    next_obs = np.array([[1.0], [2.0], [3.0], [11.0], [12.0]])
    ids = np.array([0, 0, 0, 1, 1])
    assert breaks_inside_episodes(obs, next_obs, ids) == 0
    noisy = next_obs.copy()
    noisy[0] += 0.5  # step 0's next_obs is not step 1's obs
    assert breaks_inside_episodes(obs, noisy, ids) == 1
    assert breaks_inside_episodes({"x": obs}, {"x": noisy}, ids) == 1
    assert breaks_inside_episodes(obs, noisy + 1e-7, ids) == 1 and breaks_inside_episodes(obs, next_obs + 1e-7, ids) == 0
    assert breaks_inside_episodes(obs[:1], next_obs[:1], ids[:1]) == 0


@pytest.mark.parametrize("scale, bias", [(10.0, -5.0), (100.0, -100.3), (1.0, -1000.1), (0.1, 0.0)])
def test_the_all_failure_rule_holds_for_rewards_stored_in_float32(scale, bias):
    """scale_rewards stores float32: -100.3 becomes -100.300003, 3e-6 from the failure reward; an absolute 1e-6
    tolerance gave such a failing episode the plain discounted sum instead of the value of failing forever."""
    r = scale_rewards(np.zeros(5), scale, bias)
    neg = sparse_negative_reward(scale, bias)
    g = episode_returns_to_go(r, np.zeros(5), 0.99, sparse_negative_reward=neg)
    np.testing.assert_allclose(g, np.full(5, neg / 0.01), rtol=1e-5, atol=1e-5)
    near_miss = r.copy()
    near_miss[2] = neg + max(1e-4 * abs(neg), 1e-4)  # a different reward, however small the scale: not the rule
    assert not np.allclose(episode_returns_to_go(near_miss, np.zeros(5), 0.99, sparse_negative_reward=neg),
                           neg / 0.01)


def test_an_episodes_rewards_carry_a_success_signal_when_some_is_positive_or_they_vary():
    from robopretrain.data.returns import has_success_signal

    assert has_success_signal(np.array([0.0, 0.0, 1.0]))  # sparse success
    assert has_success_signal(np.array([2.0, 2.0]))  # positive, constant (a dense alive reward)
    assert has_success_signal(np.array([-1.0, -1.0, 0.0]))  # OGBench's -1 per step, 0 at the goal: varies
    assert not has_success_signal(np.array([-1.0, -1.0]))  # one constant, never positive
    assert not has_success_signal(np.zeros(3)) and not has_success_signal(np.array([]))


def test_a_gap_within_float32_rounding_does_not_start_an_episode_and_a_real_one_does():
    """episode_starts' default tolerance 1e-6: next_obs[t] and obs[t + 1] written from one float32 state differ by
    rounding only (8e-7 here), a reset by far more."""
    from robopretrain.data.returns import episode_starts

    obs = np.array([[0.0], [1.0], [2.0]], np.float64)
    for gap, new in ((8e-7, False), (2e-6, True)):
        nxt = obs.copy() + 1.0
        nxt[0, 0] -= gap  # next_obs[0] vs obs[1]
        starts = episode_starts(3, obs={"x": obs}, next_obs={"x": nxt})
        assert starts.tolist() == [True, new, False], gap


def test_rewards_and_terminals_of_other_lengths_are_named():
    """(3,) rewards with (5,) terminals gave numpy's "cannot reshape array of size 5 into shape (3,)"."""
    from robopretrain.data.returns import returns_to_go

    with pytest.raises(ValueError, match=r"returns_to_go: rewards \(3,\) and terminals \(5,\) must have the same"):
        returns_to_go(np.zeros(3), np.zeros(5), 0.99)
