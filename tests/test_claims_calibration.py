"""Claim 4's harness (benchmarks/claims_calibration.py) on hand-made runs and composed configs.

Which bugs these catch: a protocol setting that does not reach the stage-2 / stage-3 configs (budgets, evaluation
spacing, episodes, the randomization); a dip or regret read from the wrong evaluations; the comparison's sides
swapped; a task without room to unlearn given a verdict; unfinished runs summarized; an earlier invocation's runs
lost, or a finished run's first wall time overwritten, when runs of another task are added.
"""
from __future__ import annotations

import json

import pytest

from _benchmarks import load_benchmark


@pytest.fixture(scope="module")
def cc():
    return load_benchmark("claims_calibration", "claims_calibration.py", register=True)


@pytest.fixture(scope="module")
def o2o():
    return load_benchmark("offline_to_online", "offline_to_online.py", register=True)


def test_the_protocols_settings_reach_both_stages(cc, o2o, tmp_path):
    argv = cc.runs_argv(["OpenDoorRight"], ["cql"], [1], 2, tmp_path, tmp_path / "r.json", tmp_path / "f.png")
    args = o2o.parse_args(argv)
    offline, online = o2o.stage_configs(args, "OpenDoorRight", "cql", 1)
    assert offline.train.steps == 20000 and offline.train.eval_every == offline.train.checkpoint_every == 5000
    assert offline.train.eval_episodes == 50 and offline.algo.batch_size == 128 and offline.algo.n_actions == 4
    assert offline.data.collect.tasks == ["OpenDoorRight"] and offline.seed == 1
    assert online.online.env_steps == 10000 and online.online.eval_every == 500
    assert online.online.eval_episodes == 50 and online.online.checkpoint_every == 2500
    assert online.dr.level == "none"  # the same sim as the data (the benchmark's default is train)
    assert online.algo.name == "cql" and online.checkpoint == offline.output_dir
    default_online = o2o.stage_configs(o2o.parse_args([]), "OpenDoorRight", "cql", 1)[1]
    assert default_online.dr.level == "train" and default_online.online.checkpoint_every == 2500  # old default kept


def _run(task, method, seed, success, offline_q=(-40.0, -50.0), q0=-60.0, mc0=-20.0, every=500):
    hist = [{"env_steps": i * every, "eval/success": s, "calib/online_gap_policy": None if i == 0 else 1.0}
            for i, s in enumerate(success)]
    hist[0].update({"calib/offline_q_policy": q0, "calib/offline_mc_return": mc0})
    return {"task": task, "method": method, "seed": seed, "wall_s": 100.0, "history": hist,
            "offline_history": [{"step": 5000 * (i + 1), "eval/success": 0.5, "calib/offline_q_policy": q}
                                for i, q in enumerate(offline_q)]}


def test_run_metrics_read_the_switch_the_dip_window_and_the_offline_critic(cc, monkeypatch):
    monkeypatch.setattr(cc, "DIP_WINDOW", 1000)
    m = cc.run_metrics(_run("OpenDoorRight", "cql", 0, [0.6, 0.5, 0.2, 0.0, 1.0]))  # 0.0 at 1500: outside
    assert m["success_switch"] == 0.6 and m["success_final"] == 1.0
    assert m["dip"] == pytest.approx(0.4)  # 0.6 - min(0.5, 0.2)
    assert m["regret"] == pytest.approx(1 - (0.6 + 0.5 + 0.2 + 0.0 + 1.0) / 5)
    assert m["gap_switch"] == pytest.approx(-40.0)
    assert m["offline_q_change"] == pytest.approx(10.0 / 50.0) and m["converged"] is False
    assert cc.run_metrics(_run("OpenDoorRight", "cql", 0, [0.5, 0.5], offline_q=(-49.0, -50.0)))["converged"]


def test_summary_compares_cql_with_calql_and_withholds_a_verdict_without_room(cc, monkeypatch):
    monkeypatch.setattr(cc, "DIP_WINDOW", 1000)
    runs = []
    for seed in (0, 1, 2):
        runs.append(_run("OpenDoorRight", "cql", seed, [0.6, 0.2, 0.3, 0.7, 0.7]))  # dip 0.4
        runs.append(_run("OpenDoorRight", "calql", seed, [0.6, 0.6, 0.7, 0.7, 0.7], q0=-10.0))  # dip 0
        runs.append(_run("OpenDoorRight", "iql", seed, [0.5, 0.5, 0.5, 0.5, 0.5]))
    runs.append(_run("OpenDoorRight", "iql", 3, [0.5, 0.5]))  # unfinished (2000 env steps < 4 x 500): left out
    out = cc.summarize(runs, online_steps=2000)["OpenDoorRight"]
    assert out["methods"]["iql"]["seeds"] == [0, 1, 2]
    dip = next(c for c in out["comparisons"] if c["metric"] == "dip")
    assert (dip["claimed"], dip["baseline"]) == ("cql", "calql")
    assert dip["difference"] == pytest.approx(0.4) and dip["verdict"] == "reproduced" and dip["seeds"] == 3
    regret = next(c for c in out["comparisons"] if c["metric"] == "regret" and c["claimed"] == "cql")
    assert regret["difference"] == pytest.approx((1 - 2.5 / 5) - (1 - 3.3 / 5))
    room = out["room"]
    assert room["cql_switch"] == pytest.approx(0.6) and room["best_final"] == pytest.approx(0.7)
    assert room["ok"] is False  # 0.7 - 0.6 < 0.2
    assert out["verdict"] == "no room"
    assert out["mechanism"]["cql_underestimates"] is True and out["mechanism"]["cql_converged"] is False
    assert "| OpenDoorRight | dip: cql - calql | +0.40 [+0.40, +0.40] | 3 | reproduced |" in cc.table(
        {"OpenDoorRight": out})
    roomy = [dict(r, history=[dict(h, **{"eval/success": min(1.0, h["eval/success"] + (0.1 if i else -0.2))})
                              for i, h in enumerate(r["history"])]) for r in runs if r["method"] != "iql"]
    out = cc.summarize(roomy, online_steps=2000)["OpenDoorRight"]
    assert out["room"]["ok"] and out["verdict"] == "reproduced"  # cql dip 0.4 - 0.3 = 0.1, calql 0
    one = cc.summarize([r for r in roomy if r["seed"] == 0], online_steps=2000)["OpenDoorRight"]  # one seed: a point
    assert one["verdict"] == "partial (1 of 3 seeds)" and one["comparisons"][0]["ci"] == pytest.approx([0.1, 0.1])
    two = cc.summarize([r for r in roomy if r["seed"] < 2], online_steps=2000)["OpenDoorRight"]
    assert two["verdict"] == "partial (2 of 3 seeds)"


def test_runs_of_earlier_invocations_are_kept_and_finished_runs_keep_their_first_wall_time(cc, tmp_path,
                                                                                           monkeypatch):
    first = _run("OpenDoorRight", "cql", 0, [0.5, 0.5])
    calls = []

    def fake_main(argv):
        calls.append(argv)
        out = argv[argv.index("--results") + 1]
        task = argv[argv.index("--tasks") + 1]
        runs = [dict(first, wall_s=5.0)] if task == "OpenDoorRight" else [_run(task, "calql", 0, [0.1, 0.2])]
        with open(out, "w") as f:
            json.dump({"runs": runs}, f)

    import offline_to_online

    monkeypatch.setattr(offline_to_online, "main", fake_main)
    common = ["--work-dir", str(tmp_path), "--runs-json", str(tmp_path / "runs.json"), "--out",
              str(tmp_path / "claim.json"), "--plot", str(tmp_path / "p.png"), "--methods", "cql", "calql"]
    (tmp_path / "runs.json").write_text(json.dumps({"runs": [first]}))
    cc.main(["--tasks", "CloseDrawerPressButton", *common])
    cc.main(["--tasks", "OpenDoorRight", *common])  # returns the finished run again, with a 5 s wall time
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [(r["task"], r["method"], r["wall_s"]) for r in runs] == [("OpenDoorRight", "cql", 100.0),
                                                                     ("CloseDrawerPressButton", "calql", 100.0)]
    assert "--dr" in calls[0] and calls[0][calls[0].index("--dr") + 1] == "none"
    resumed = dict(_run("OpenDoorRight", "cql", 0, [0.5, 0.7]), wall_s=7.0)
    assert cc.merge_runs(runs, [resumed])[0]["wall_s"] == 7.0  # other evaluations: the new run replaces it


def test_the_layer_norm_arm_reaches_both_stages_and_is_compared_with_the_plain_runs(cc, o2o, tmp_path, monkeypatch):
    """Amendment 1: --critic-layer-norm runs with LayerNorm critics in stages 2 and 3, into its own JSONs, and its
    dip / regret are differences against the plain runs (variant - plain), per seed of each."""
    args = cc.parse_args(["--critic-layer-norm"])
    assert args.runs_json == cc.LN_RUNS and args.out == cc.LN_RESULTS and args.work_dir.name == "claims_calibration_ln"
    assert cc.parse_args([]).runs_json == cc.RUNS
    argv = cc.runs_argv(["CloseDrawerPressButton"], ["calql"], [0], 1, tmp_path, tmp_path / "r.json",
                        tmp_path / "f.png", cc.LN_EXTRA)
    offline, online = o2o.stage_configs(o2o.parse_args(argv), "CloseDrawerPressButton", "calql", 0)
    assert offline.algo.critic_layer_norm is True and online.algo.critic_layer_norm is True
    plain_args = o2o.parse_args(cc.runs_argv(["CloseDrawerPressButton"], ["calql"], [0], 1, tmp_path,
                                             tmp_path / "r.json", tmp_path / "f.png"))
    assert o2o.stage_configs(plain_args, "CloseDrawerPressButton", "calql", 0)[0].algo.critic_layer_norm is False

    monkeypatch.setattr(cc, "DIP_WINDOW", 1000)
    plain = [_run("CloseDrawerPressButton", "calql", s, [0.6, 0.1, 0.2, 0.3, 0.4]) for s in (0, 1, 2)]  # dip 0.5
    ln = [_run("CloseDrawerPressButton", "calql", s, [0.6, 0.5, 0.6, 0.7, 0.8]) for s in (0, 1)]  # dip 0.1
    rows = cc.against_plain(cc.summarize(ln, online_steps=2000), cc.summarize(plain, online_steps=2000))
    assert len(rows) == 1 and rows[0]["seeds"] == [0, 1] and rows[0]["plain_seeds"] == [0, 1, 2]
    assert rows[0]["dip"]["difference"] == pytest.approx(0.1 - 0.5)
    assert rows[0]["regret"]["difference"] == pytest.approx((1 - 3.2 / 5) - (1 - 1.6 / 5))
    assert rows[0]["helps"] is None  # two LayerNorm seeds: no verdict before the protocol's three
    ln.append(_run("CloseDrawerPressButton", "calql", 2, [0.6, 0.5, 0.6, 0.7, 0.8]))
    rows = cc.against_plain(cc.summarize(ln, online_steps=2000), cc.summarize(plain, online_steps=2000))
    assert rows[0]["helps"] is True
    rows = cc.against_plain(cc.summarize(ln, online_steps=2000), cc.summarize(plain[:2], online_steps=2000))
    assert rows[0]["helps"] is None  # three LayerNorm seeds against two plain ones: no verdict either
