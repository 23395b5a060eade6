"""benchmarks/offline_suite.py's pure parts on hand-made inputs: which runs a call plans, which it skips on a rerun
(resume bookkeeping), the ranks and Kendall's tau of the ranking comparison, the learner scores it ranks, and the
online summary's before / after / regret."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    # loaded from its file (benchmarks/ first on sys.path would shadow the video_pretrain package); it appends its
    # own folder for bench_utils and claims_metrics
    spec = importlib.util.spec_from_file_location("offline_suite", ROOT / "benchmarks" / "offline_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["offline_suite"] = module  # its dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    for name in ("offline_suite", "bench_utils"):
        sys.modules.pop(name, None)
    sys.modules.pop("claims_metrics", None)


# ------------------------------------------------------------------------------------------ planning and resume
def test_plan_limits_online_and_preferences_to_their_learners_and_the_mixed_data(suite):
    jobs = suite.plan(["states", "online", "preferences"], ["Reach"], ["clean", "mixed"], ["bc", "iql", "awac"],
                      [0])
    keys = [j.key for j in jobs]
    assert keys == ["states/Reach/clean/bc/seed0", "states/Reach/clean/iql/seed0", "states/Reach/clean/awac/seed0",
                    "states/Reach/mixed/bc/seed0", "states/Reach/mixed/iql/seed0", "states/Reach/mixed/awac/seed0",
                    "online/Reach/mixed/iql/seed0", "online/Reach/mixed/awac/seed0",
                    "preferences/Reach/mixed/iql/seed0"]
    assert suite.plan(["online"], ["Reach"], ["clean"], ["iql"], [0]) == []  # online needs the mixed file


def test_pending_skips_finished_runs_and_adds_the_states_run_a_later_part_needs(suite):
    b = suite.Budgets(state_updates=(10, 20), online_steps=100)
    done = {"success": {"10": [True], "20": [False]}}
    half = {"success": {"10": [True]}}  # killed between its two evaluations
    online = suite.Job("online", "Reach", "mixed", "iql", 0)
    results = {"states/Reach/clean/bc/seed0": done, "states/Reach/mixed/bc/seed0": half}
    jobs = [suite.Job("states", "Reach", "clean", "bc", 0), suite.Job("states", "Reach", "mixed", "bc", 0), online]
    todo = suite.pending(jobs, results, b)
    assert [j.key for j in todo] == ["states/Reach/mixed/bc/seed0", "states/Reach/mixed/iql/seed0",
                                     "online/Reach/mixed/iql/seed0"]
    results["states/Reach/mixed/iql/seed0"] = done
    results["online/Reach/mixed/iql/seed0"] = {"history": [{"env_steps": 0}, {"env_steps": 50}]}
    assert [j.key for j in suite.pending([online], results, b)] == ["online/Reach/mixed/iql/seed0"]  # cut short
    results["online/Reach/mixed/iql/seed0"]["history"].append({"env_steps": 100})
    assert suite.pending([online], results, b) == []


def test_each_finished_run_records_the_commit_and_cpu_that_finished_it(suite, monkeypatch, tmp_path):
    """Runs of one results file span sessions, commits and machines (rounding differs between instruction sets):
    each run says which code and CPU finished it."""
    import threading
    from argparse import Namespace

    monkeypatch.setattr(suite, "collect_data", lambda *a: tmp_path / "data.hdf5")
    monkeypatch.setattr(suite, "run_offline", lambda job, args, entry, data: entry["success"].update({"20": [True]}))
    results: dict = {}
    suite.one(suite.Job("states", "Reach", "clean", "bc", 0), Namespace(work_dir=tmp_path, budgets=suite.Budgets()),
              results, threading.Lock())
    entry = results["states/Reach/clean/bc/seed0"]
    assert entry["commit"] == suite.git_commit(ROOT)  # "" outside a git checkout
    assert entry["cpu"] == suite.cpu_model() and entry["success"] == {"20": [True]}


def test_an_online_run_whose_states_checkpoint_is_gone_retrains_it_with_the_states_command(suite, monkeypatch,
                                                                                          tmp_path):
    """The JSON can hold a finished states run whose checkpoints stayed on another machine: the online run re-trains
    its source with the states run's own command (and says so) instead of failing on a missing folder; a source
    that is there is used as is."""
    from argparse import Namespace

    import robopretrain.report

    calls: list[list[str]] = []

    def fake_run(cmd):
        calls.append(cmd)
        if "robopretrain.train" in cmd:
            (tmp_path / "runs" / "states/Reach/mixed/iql/seed0" / "checkpoints" / "ckpt_00000020").mkdir(parents=True)
        return 1.5

    monkeypatch.setattr(suite, "_run", fake_run)
    monkeypatch.setattr(robopretrain.report, "eval_rows", lambda out: [{"env_steps": 100}] if any(
        "finetune.train" in c for c in calls) else [])
    b = suite.Budgets(state_updates=(10, 20), online_steps=100)
    args = Namespace(work_dir=tmp_path, budgets=b, smoke=False)
    job = suite.Job("online", "Reach", "mixed", "iql", 0)
    entry: dict = {"success": {}}
    suite.run_online(job, args, entry, tmp_path / "data.hdf5")
    states = suite.Job("states", "Reach", "mixed", "iql", 0)
    assert calls[0] == suite.train_command(states, tmp_path / "data.hdf5", tmp_path / "runs" / states.key, 20, b,
                                           False)
    assert "finetune.train" in calls[1] and f"checkpoint={tmp_path / 'runs' / states.key / 'checkpoints'}" \
        "/ckpt_00000020" in calls[1]
    assert entry["source_retrained"]["seconds"] == 1.5
    calls.clear()
    again: dict = {"success": {}}
    suite.run_online(job, args, again, tmp_path / "data.hdf5")
    assert [c for c in calls if "robopretrain.train" in c] == [] and "source_retrained" not in again


def test_a_preferences_run_is_complete_at_the_final_budget_only(suite):
    b = suite.Budgets(state_updates=(10, 20))
    assert suite.is_complete({"success": {"20": [True]}}, "preferences", b)
    assert not suite.is_complete({"success": {"20": [True]}}, "states", b)
    assert not suite.is_complete({"success": {"10": [True]}}, "preferences", b)


# ------------------------------------------------------------------------------------------ ranking
def test_ranks_share_ties_and_kendall_tau_counts_pairs(suite):
    assert suite.ranks({"a": 0.9, "b": 0.5, "c": 0.5, "d": 0.1}) == {"a": 1, "b": 2.5, "c": 2.5, "d": 4}
    ours = {"a": 3.0, "b": 2.0, "c": 1.0}
    assert suite.kendall_tau(ours, {"a": 30.0, "b": 20.0, "c": 10.0}) == 1.0
    assert suite.kendall_tau(ours, {"a": 10.0, "b": 20.0, "c": 30.0}) == -1.0
    # one pair swapped of three: (2 - 1) / 3
    assert suite.kendall_tau(ours, {"a": 30.0, "b": 5.0, "c": 10.0, "z": 99.0}) == pytest.approx(1 / 3)
    # tau-b with a tie in b: concordant 2, discordant 0, one pair tied in b only -> 2 / sqrt(3 * 2)
    assert suite.kendall_tau(ours, {"a": 2.0, "b": 1.0, "c": 1.0}) == pytest.approx(2 / 6 ** 0.5)
    assert suite.kendall_tau(ours, {"a": 1.0}) is None


def test_algo_scores_average_settings_and_leave_out_learners_missing_one(suite):
    row = lambda task, data, algo, mean, u=20: {"task": task, "dataset": data, "algo": algo,  # noqa: E731
                                                  "updates": u, "mean": mean}
    rows = [row("Reach", "clean", "bc", 1.0), row("Reach", "mixed", "bc", 0.5), row("Reach", "clean", "iql", 0.8),
            row("Reach", "mixed", "iql", 0.6), row("Reach", "clean", "cql", 1.0),  # cql lacks the mixed setting
            row("Reach", "clean", "bc", 0.0, u=10)]  # an earlier budget is not mixed in
    assert suite.algo_scores(rows) == {"bc": 0.75, "iql": 0.7}
    comparison = suite.ranking_comparison({"bc": 0.75, "iql": 0.7}, {"T": {"iql": 2.0, "bc": 1.0, "dt": 5.0}})
    assert comparison[0]["learners"] == ["bc", "iql"] and comparison[0]["kendall_tau"] == -1.0
    assert comparison[0]["ours_rank"] == {"bc": 1, "iql": 2} and comparison[0]["their_rank"] == {"bc": 2, "iql": 1}


def _run(part, dataset, algo, seed, hits, episodes=4, updates=20, task="Reach"):
    return {"part": part, "task": task, "dataset": dataset, "algo": algo, "seed": seed,
            "success": {str(updates): [True] * hits + [False] * (episodes - hits)}}


def test_data_effects_compare_each_dataset_with_clean_and_need_both_intervals_for_a_verdict(suite):
    runs = [_run("pixels", "clean", "bc", s, 4) for s in range(3)]
    runs += [_run("pixels", "mixed", "bc", s, 1) for s in range(3)]        # 1.00 -> 0.25 on every seed: lower
    runs += [_run("pixels", "clean", "iql", s, 4) for s in range(2)]
    runs += [_run("pixels", "mixed", "iql", 0, 2), _run("pixels", "mixed", "iql", 1, 1)]  # 2 seeds: Welch wide
    runs += [_run("pixels", "noisy", "cql", 0, 2)]                         # no clean run: not compared
    runs += [_run("states", "mixed", "bc", 0, 4), _run("pixels", "mixed", "bc", 9, 4, updates=10)]  # other part/budget
    results = {str(i): r for i, r in enumerate(runs)}
    rows = {(r["algo"], r["dataset"]): r for r in suite.summarize_data_effects(results, "pixels", 20)}
    assert set(rows) == {("bc", "mixed"), ("iql", "mixed")}
    bc, iql = rows["bc", "mixed"], rows["iql", "mixed"]
    assert bc["difference"] == pytest.approx(-0.75) and bc["seeds"] == [3, 3] and bc["verdict"] == "lower"
    assert bc["difference_ci95"][1] < 0 and bc["welch_ci95"] == pytest.approx([-0.75, -0.75])  # equal seed means
    # the bootstrap interval of -0.625 excludes 0, but Welch on two seed means (0.50, 0.25; dof 1) does not
    assert iql["difference"] == pytest.approx(-0.625) and iql["difference_ci95"][1] < 0
    assert iql["welch_ci95"][0] < 0 < iql["welch_ci95"][1] and iql["verdict"] == "within noise"
    one = suite.summarize_data_effects({"a": _run("pixels", "clean", "bc", 0, 4), "b": _run("pixels", "mixed", "bc", 0, 0)},
                                       "pixels", 20)
    assert one[0]["difference"] == -1.0 and "verdict" not in one[0]  # one seed a side: no seed-level check
    table = suite.data_effects_table(list(rows.values()), "pixels")
    assert "| **-0.75 [" in table and "| -0.62 [" in table  # bold only with a verdict


def test_pixels_vs_states_ranks_learners_on_the_pixel_parts_datasets_only(suite):
    def row(part, dataset, algo, mean, updates=20):
        return {"task": "Reach", "dataset": dataset, "algo": algo, "updates": updates, "mean": mean}

    summary = {"states": [row("states", "clean", "bc", 1.0), row("states", "mixed", "bc", 0.6),
                          row("states", "noisy", "bc", 0.0),  # not a pixel dataset: must not lower BC's score
                          row("states", "clean", "iql", 0.9), row("states", "mixed", "iql", 0.9),
                          row("states", "noisy", "iql", 1.0),
                          row("states", "clean", "cql", 0.5), row("states", "mixed", "cql", 0.1),
                          row("states", "clean", "dt", 1.0), row("states", "mixed", "dt", 1.0)],
               "pixels": [row("pixels", "clean", "bc", 0.5), row("pixels", "mixed", "bc", 0.3),
                          row("pixels", "clean", "iql", 0.5), row("pixels", "mixed", "iql", 0.1),
                          row("pixels", "clean", "cql", 0.0), row("pixels", "mixed", "cql", 0.0),
                          row("pixels", "clean", "dt", 0.2)]}  # DT's mixed pixel run unfinished: left out
    (c,) = suite.pixels_vs_states(summary)
    assert c["learners"] == ["bc", "iql", "cql"] and c["datasets"] == ["clean", "mixed"]
    assert c["states"] == pytest.approx({"bc": 0.8, "iql": 0.9, "cql": 0.3})
    assert c["pixels"] == pytest.approx({"bc": 0.4, "iql": 0.3, "cql": 0.0})
    assert c["states_rank"] == {"iql": 1, "bc": 2, "cql": 3} and c["pixels_rank"] == {"bc": 1, "iql": 2, "cql": 3}
    assert c["kendall_tau"] == pytest.approx(1 / 3)  # one of three pairs swapped
    assert "| Reach | BC | 0.80 | 0.40 | 2 | 1 |" in suite.pixels_vs_states_table([c])


def test_published_d3rlpy_average_is_the_mean_of_its_nine_datasets(suite):
    assert suite.PUBLISHED["d3rlpy locomotion"]["td3_bc"] == pytest.approx(608.1 / 9, abs=0.01)
    assert all(len(v) == 9 for v in suite._D3RLPY_LOCOMOTION.values())


# ------------------------------------------------------------------------------------------ online summary
def test_online_summary_before_after_dip_and_regrets(suite):
    def hist(succ, train_regret):
        return [{"env_steps": 50 * i, "eval/success": s, "eval/successes": round(s * 4), "eval/episodes": 4,
                 "train/cumulative_regret": train_regret} for i, s in enumerate(succ)]

    results = {
        "online/Reach/mixed/iql/seed0": {"part": "online", "task": "Reach", "dataset": "mixed", "algo": "iql",
                                         "seed": 0, "history": hist([0.5, 0.25, 1.0], 0.4)},
        "online/Reach/mixed/iql/seed1": {"part": "online", "task": "Reach", "dataset": "mixed", "algo": "iql",
                                         "seed": 1, "history": hist([0.0, 0.5, 0.5], 0.6)},
    }
    (row,) = suite.summarize_online(results, dip_window=100)
    assert row["before"] == 0.25 and row["after"] == 0.75 and row["gain"] == 0.5
    assert row["dip"] == pytest.approx(0.125)  # seed 0 falls 0.25 below its start, seed 1 never does
    assert row["train_regret"] == pytest.approx(0.5)
    # mean of 1 - success over the evaluations: seed 0 (0.5 + 0.75 + 0) / 3, seed 1 (1 + 0.5 + 0.5) / 3
    assert row["eval_regret"] == pytest.approx((1.25 / 3 + 2 / 3) / 2)
    assert suite.episode_outcomes({"eval/success": 0.75, "eval/successes": 3, "eval/episodes": 4}) == [1, 1, 1, 0]


def test_preferences_online_compares_the_learned_reward_runs_with_the_true_reward_runs_of_the_same_seeds(suite):
    def run(part, seed, succ, regret):
        return {"part": part, "task": "Reach", "dataset": "mixed", "algo": "iql", "seed": seed,
                "history": [{"env_steps": 50 * i, "eval/success": s, "eval/successes": round(s * 4),
                             "eval/episodes": 4, "train/cumulative_regret": regret} for i, s in enumerate(succ)]}

    results = {f"{part}/Reach/mixed/iql/seed{s}": run(part, s, succ, regret) for part, s, succ, regret in [
        ("online", 0, [0.5, 1.0], 0.2), ("online", 1, [0.5, 1.0], 0.3), ("online", 2, [0.5, 0.75], 0.25),
        ("preferences_online", 0, [0.25, 0.25], 0.7), ("preferences_online", 1, [0.0, 0.25], 0.6),
        ("preferences_online", 2, [0.5, 0.5], 0.5)]}
    (row,) = suite.summarize_preferences_online(results, dip_window=100)
    assert row["learned"]["before"] == 0.25 and row["learned"]["after"] == pytest.approx(1 / 3)  # its own runs'
    assert row["true"]["after"] == pytest.approx(2.75 / 3) and row["true"]["train_regret"] == pytest.approx(0.25)
    assert row["difference"] == pytest.approx(1 / 3 - 2.75 / 3)  # final success, learned - true
    assert row["learned"]["per_seed_after"] == [0.25, 0.25, 0.5]
    assert row["learned"]["train_regret"] == pytest.approx(0.6)
    assert row["welch_ci95"][1] < 0 and row["difference_ci95"][1] < 0 and row["verdict"] == "lower"
    results["online/Reach/mixed/iql/seed2"]["history"][-1]["eval/successes"] = 0  # seed 2 ends at 0: wide Welch
    results["online/Reach/mixed/iql/seed2"]["history"][-1]["eval/success"] = 0.0
    (row,) = suite.summarize_preferences_online(results, dip_window=100)
    assert row["welch_ci95"][1] > 0 and row["verdict"] == "within noise"
    del results["online/Reach/mixed/iql/seed1"]  # a true-reward seed missing: no comparison, the learned row stays
    (row,) = suite.summarize_preferences_online(results, dip_window=100)
    assert "difference" not in row and row["learned"]["seeds"] == [0, 1, 2]
    assert "learned reward online" in suite.preferences_online_table([row])


def test_preferences_online_runs_last_and_fine_tunes_the_preference_checkpoint_with_its_reward_model(
        suite, monkeypatch, tmp_path):
    """It needs the preferences run (checkpoint and reward model) and the online run it is compared with; it
    fine-tunes the preferences checkpoint (not the states one) on the relabelled copy, with the reward model online
    and the learned reward's transform, re-training a source whose folder is gone with its own command."""
    from argparse import Namespace

    import robopretrain.report

    job = suite.Job("preferences_online", "Reach", "mixed", "iql", 0)
    assert [d.part for d in suite.dependencies(job)] == ["states", "preferences", "online"]
    assert [suite.wave(p) for p in ("states", "online", "preferences", "pixels", "preferences_online")] == [
        0, 1, 1, 1, 2]
    assert [j.key for j in suite.plan(["preferences_online"], ["Reach"], ["clean", "mixed"], ["bc", "iql", "cql"],
                                      [1])] == ["preferences_online/Reach/mixed/iql/seed1",
                                                "preferences_online/Reach/mixed/cql/seed1"]
    calls: list[list[str]] = []
    pref = job._replace(part="preferences")
    relabelled = tmp_path / "relabelled.hdf5"

    def fake_reward_model(j, args, entry, data):
        assert j == pref and data == tmp_path / "data.hdf5"
        entry.update(reward_model_seconds=2.0, reward_model={"agreement": 0.8})
        return relabelled

    def fake_run(cmd):
        calls.append(cmd)
        if "robopretrain.train" in cmd:
            (tmp_path / "runs" / pref.key / "checkpoints" / "ckpt_00000020").mkdir(parents=True)
        return 1.5

    monkeypatch.setattr(suite, "reward_model", fake_reward_model)
    monkeypatch.setattr(suite, "_run", fake_run)
    monkeypatch.setattr(robopretrain.report, "eval_rows", lambda out: [{"env_steps": 100}] if any(
        "finetune.train" in c for c in calls) else [])
    b = suite.Budgets(state_updates=(10, 20), online_steps=100)
    args = Namespace(work_dir=tmp_path, budgets=b, smoke=False)
    entry: dict = {"success": {}}
    suite.run_online(job, args, entry, tmp_path / "data.hdf5")
    assert calls[0] == suite.train_command(pref, relabelled, tmp_path / "runs" / pref.key, 20, b, False)
    assert "algo.sparse_reward=false" in calls[0]  # the preferences run's own command
    online = calls[1]
    assert f"checkpoint={tmp_path / 'runs' / pref.key / 'checkpoints' / 'ckpt_00000020'}" in online
    assert f"data.path={relabelled}" in online
    assert f"reward_model={tmp_path / 'reward_models' / 'Reach' / 'mixed' / 'seed0'}" in online
    assert all(o in online for o in suite.LEARNED_REWARD_OVERRIDES)
    assert entry["source_retrained"]["seconds"] == 1.5 and entry["reward_model_retrained"]["agreement"] == 0.8


def test_the_figure_has_a_panel_per_part_and_puts_each_result_in_its_own(suite, tmp_path, monkeypatch):
    """states, online and preferences each get a panel; the preference panel shows the learned-reward mean beside
    the true-reward mean of the same learner (the figure showed no preference result)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {}
    real = plt.subplots

    def spy(*args, **kwargs):
        made["fig"], made["axes"] = real(*args, **kwargs)
        monkeypatch.setattr(made["fig"], "savefig", lambda path, **kw: Path(path).write_bytes(b"png"))
        return made["fig"], made["axes"]

    monkeypatch.setattr(plt, "subplots", spy)
    summary = {"states": [{"task": "Reach", "dataset": "mixed", "algo": "iql", "updates": 20, "mean": 0.7,
                           "ci95": [0.6, 0.8]}],
               "online": [{"task": "Reach", "algo": "iql", "before": 0.5, "after": 0.6}],
               "preferences": [{"task": "Reach", "dataset": "mixed", "algo": "cql", "learned": 0.45,
                                "learned_ci95": [0.37, 0.54], "true": 0.27}]}
    suite.plot(summary, tmp_path / "f.png")
    axes = made["axes"][0]
    assert len(axes) == 3 and (tmp_path / "f.png").is_file()
    assert [tuple(line.get_ydata()) for line in axes[1].get_lines()] == [(0.5, 0.6)]
    prefs = axes[2]
    assert "preference" in prefs.get_title()
    points = sorted(float(np.ravel(line.get_ydata())[0]) for line in prefs.get_lines() if len(line.get_ydata()) == 1)
    assert points == pytest.approx([0.27, 0.45])


# ------------------------------------------------------------------------------------------ the results file
def test_the_results_file_refuses_other_budgets_a_second_writer_and_a_failed_run_exits_1(suite, monkeypatch,
                                                                                        tmp_path, capsys):
    """A smoke file read by a full call was relabelled as full-budget results (its command lost); two calls on one
    --out each rewrote it from their own copy (a finished run lost); a failed run, retried in vain, exited 0;
    --summarize-only on no file wrote an empty one and crashed in the plot."""
    out = tmp_path / "suite.json"
    common = ["--out", str(out), "--work-dir", str(tmp_path / "work"), "--figure", str(tmp_path / "f.png"),
              "--part", "states", "--tasks", "Reach", "--datasets", "clean", "--algos", "bc", "--seeds", "0"]
    with pytest.raises(SystemExit, match="suite.json: no such results file"):
        suite.main([*common, "--summarize-only"])
    assert not out.exists()
    monkeypatch.setattr(suite, "collect_data", lambda *a: tmp_path / "data.hdf5")

    def fail(job, args, results, lock):
        raise RuntimeError("the stage refused to resume (other settings)")

    monkeypatch.setattr(suite, "one", fail)
    with pytest.raises(SystemExit, match=r"1 run\(s\) failed \(each FAILED line above says why\)"):
        suite.main([*common, "--smoke"])
    assert "FAILED states/Reach/clean/bc/seed0: the stage refused" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    saved["runs"] = {"states/Reach/clean/bc/seed0": {  # as if the smoke run had finished
        **suite.Job("states", "Reach", "clean", "bc", 0)._asdict(), "success": {"20": [1.0, 0.0, 1.0]}}}
    out.write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="holds runs made with smoke=True and budgets .* add --smoke, or give"):
        suite.main([*common, "--summarize-only"])
    assert json.loads(out.read_text())["smoke"] is True  # not relabelled
    from bench_utils import results_lock

    with results_lock(out):  # another call writing the file now
        with pytest.raises(SystemExit, match="another process is writing it now"):
            suite.main([*common, "--smoke", "--summarize-only"])
    suite.main([*common, "--smoke", "--summarize-only"])
    assert json.loads(out.read_text())["commands"][0] == saved["command"]  # every call's command, the first kept
