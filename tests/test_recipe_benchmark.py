"""``benchmarks/recipe.py``: a checkpoint at every budget asked, and no pooling of runs measured with other settings."""

from __future__ import annotations

import json

import pytest

from _benchmarks import load_benchmark

recipe = load_benchmark("recipe_bench", "recipe.py")


def test_the_checkpoint_period_lands_on_every_budget():
    assert recipe.checkpoint_period([1000, 2500, 5000]) == 500  # the protocol's: as before
    assert recipe.checkpoint_period([10, 20]) == 10  # a fixed 500 missed both (a traceback at the evaluation)
    assert recipe.checkpoint_period([750, 1500]) == 750
    with pytest.raises(SystemExit, match="share no checkpoint period"):
        recipe.checkpoint_period([7, 5000])
    with pytest.raises(SystemExit, match="expected integers >= 1"):
        recipe.checkpoint_period([0, 10])


def test_a_rerun_with_other_demos_or_episodes_is_refused_and_a_small_budget_runs(tmp_path, monkeypatch):
    """A rerun with more seeds, demos and episodes into the same --out pooled seed 0 (3 demos, 2 episodes) with seed 1
    (6 demos, 4 episodes) in one row, under the last command's episodes."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    out, work = tmp_path / "r.json", tmp_path / "w"
    common = ["--tasks", "Reach", "--algos", "bc", "--updates", "4", "8", "--work-dir", str(work), "--out", str(out)]
    recipe.main([*common, "--seeds", "0", "--episodes", "1", "--demos", "2", "--set", "algo.batch_size=8",
                 "algo.actor_hidden=[16]"])
    runs = json.loads(out.read_text())["runs"]
    entry = runs["Reach/bc [algo.batch_size=8,algo.actor_hidden=[16]]/seed0"]
    assert set(entry["success"]) == {"4", "8"} and all(len(v) == 1 for v in entry["success"].values())
    assert entry["demos"] == 2
    for flags in (["--episodes", "2", "--demos", "2"], ["--episodes", "1", "--demos", "3"]):
        with pytest.raises(SystemExit, match=r"seed0 in .* was measured with --demos 2 --episodes 1; this run asks"):
            recipe.main([*common, "--seeds", "0", "1", *flags, "--set", "algo.batch_size=8", "algo.actor_hidden=[16]"])
    assert json.loads(out.read_text())["runs"] == runs
    with pytest.raises(SystemExit, match="no results at"):
        recipe.main(["--summarize-only", "--out", str(tmp_path / "none.json")])
    assert not (tmp_path / "none.json").exists()
