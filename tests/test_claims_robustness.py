"""Claim 5's harness (benchmarks/claims_robustness.py) on hand-made inputs and composed configs.

Which bugs these catch: a leave-one-out variant that leaves out another factor (or a visual one too); ``none`` still
randomizing; the ``dr`` variant not being the transfer benchmark's ``dr`` run (its own folder, another config); a
summary whose differences take the wrong sides or the wrong level; runs already in the results JSON run again; a stored
evaluation of another checkpoint step, episode count or reset seed, or missing a condition, reused.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from _benchmarks import load_benchmark



@pytest.fixture(scope="module")
def cr():
    return load_benchmark("claims_robustness", "claims_robustness.py", register=True)


def test_variants_change_only_stage3_randomization(cr, tmp_path):
    _, dr = cr.variant_config(tmp_path, 1, "dr", 50)
    assert dr.seed == 1 and [t.name if hasattr(t, "name") else t for t in dr.targets] == ["PressLitButton"]
    assert dr.num_threads == 1 and dr.progress is False
    all_factors = list(dr.stage3.randomization.factors)
    assert dr.stage3.randomization.level == "train" and len(all_factors) == 8
    _, none = cr.variant_config(tmp_path, 1, "none", 50)
    assert none.stage3.randomization.level == "none"
    for f in cr.PHYSICS:
        _, v = cr.variant_config(tmp_path, 1, f"dr_no_{f}", 50)
        assert sorted(v.stage3.randomization.factors) == sorted(x for x in all_factors if x != f)
        assert v.stage3.randomization.level == "train"
        v.stage3.randomization = dr.stage3.randomization
        assert v == dr  # nothing else differs


def test_dr_variant_is_the_transfer_benchmarks_dr_run(cr, tmp_path, monkeypatch):
    transfer = cr._transfer_module()
    calls = []

    def fake_stage3(args, cfg, base, method, folder):
        calls.append((method, folder, base, cfg.stage3.randomization.level))
        return {"final": {"eval/success": 1.0}, "seconds": 1.0}

    monkeypatch.setattr(transfer, "run_stage3", fake_stage3)
    evaluated = []

    def fake_evaluate(checkpoint, out, episodes, target, device):
        evaluated.append((checkpoint, out, episodes, target["name"]))
        return {"episodes": [{"factor": "nominal", "level": "none", "success": True},
                             {"factor": "friction", "level": "eval_hard", "success": False}]}

    monkeypatch.setattr(cr, "evaluate_factors", fake_evaluate)
    r = cr.run_variant(tmp_path, 2, "dr", 50)
    assert calls[-1][:3] == ("dr", tmp_path / "seed2" / "dr", tmp_path / "seed2" / "base")
    folder = tmp_path / "seed2" / "dr"  # the variant's own stage 3 is evaluated, into its own folder
    assert evaluated[-1] == (folder / "stage3", folder / "eval_factors", 50, "PressLitButton")
    assert r["outcomes"] == {"nominal": [1.0], "friction/eval_hard": [0.0]}
    cr.run_variant(tmp_path, 2, "none", 50)
    assert calls[-1] == ("dr", tmp_path / "seed2" / "none", tmp_path / "seed2" / "base", "none")


def _run(seed, variant, cond_success):
    return {"seed": seed, "variant": variant, "overrides": [], "final": {}, "seconds": 1.0,
            "outcomes": {c: [float(x) for x in v] for c, v in cond_success.items()}}


def test_summary_sides_and_levels(cr):
    runs = [
        _run(0, "dr", {"nominal": [1, 1], "friction/eval_hard": [1, 1], "lighting/eval_hard": [1, 0]}),
        _run(1, "dr", {"nominal": [1, 1], "friction/eval_hard": [1, 0], "lighting/eval_hard": [0, 0]}),
        _run(0, "none", {"nominal": [1, 1], "friction/eval_hard": [0, 0], "lighting/eval_hard": [1, 1]}),
        _run(1, "none", {"nominal": [1, 1], "friction/eval_hard": [0, 0], "lighting/eval_hard": [1, 1]}),
        _run(0, "dr_no_friction", {"friction/eval_hard": [0, 1]}),
    ]
    s = cr.summarize(runs)
    assert s["success"]["dr"]["friction/eval_hard"]["per_seed"] == [1.0, 0.5]
    assert s["claim_5a"]["friction/eval_hard"]["difference"] == pytest.approx(0.75)
    assert s["claim_5a"]["lighting/eval_hard"]["difference"] == pytest.approx(0.25 - 1.0)
    assert "friction/eval_easy" not in s["claim_5a"]
    b = s["claim_5b"]["friction"]
    assert b["dr_no_f - none"]["difference"] == pytest.approx(0.5)
    assert b["dr - dr_no_f"]["difference"] == pytest.approx(0.75 - 0.5)
    assert "mass" not in s["claim_5b"]
    text = cr.table(s)
    assert "| friction/eval_hard | +0.75" in text and "| friction | +0.50" in text
    # each variant's drop from its own nominal; verdicts wait for three seeds per side (protocol amendment 1)
    assert s["success"]["dr"]["lighting/eval_hard"]["drop_vs_nominal"] == pytest.approx(1.0 - 0.25)
    assert "drop_vs_nominal" not in s["success"]["dr"]["nominal"]
    assert s["claim_5a"]["friction/eval_hard"]["verdict"] == "partial (2 of 3 seeds)"
    assert b["dr_no_f - none"]["verdict"] == "partial (1 of 3 seeds)"


def test_a_verdict_needs_three_seeds_and_both_intervals(cr):
    """One seed far ahead lifts the bootstrap interval above 0; Welch's t on three seed means does not follow."""
    ep = lambda p, n=120: [1] * round(p * n) + [0] * (n - round(p * n))  # noqa: E731
    runs = [_run(s, "dr", {"friction/eval_hard": ep(p)}) for s, p in zip((0, 1, 2), (0.9, 0.5, 0.5))]
    runs += [_run(s, "none", {"friction/eval_hard": ep(0.4)}) for s in (0, 1, 2)]
    d = cr.summarize(runs)["claim_5a"]["friction/eval_hard"]
    assert d["ci"][0] > 0 and d["welch_ci"][0] < 0 and d["verdict"] == "not shown"
    runs = [_run(s, "dr", {"friction/eval_hard": ep(p)}) for s, p in zip((0, 1, 2), (0.9, 0.85, 0.9))] + runs[3:]
    assert cr.summarize(runs)["claim_5a"]["friction/eval_hard"]["verdict"] == "reproduced"


def test_measured_runs_are_kept_and_not_run_again(cr, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"episodes": 50, "runs": [_run(0, "none", {"nominal": [1, 0]})]}))
    ran = []
    monkeypatch.setattr(cr, "run_base", lambda work, seed, episodes: ran.append(("base", seed)))
    monkeypatch.setattr(cr, "run_variant", lambda work, seed, variant, episodes: ran.append((seed, variant)) or
                        _run(seed, variant, {"nominal": [1, 1]}))
    res = cr.main(["--seeds", "0", "--variants", "none", "dr", "--jobs", "1", "--work-dir", str(tmp_path / "w"),
                   "--out", str(out), "--plot", str(tmp_path / "p.png")])
    assert ran == [("base", 0), (0, "dr")]
    assert [(r["seed"], r["variant"]) for r in res["runs"]] == [(0, "dr"), (0, "none")]
    assert json.loads(out.read_text())["summary"]["success"]["none"]["nominal"]["mean"] == 0.5
    with pytest.raises(SystemExit, match="20"):
        cr.main(["--episodes", "20", "--out", str(out), "--summarize-only"])


def test_stored_evaluation_reused_only_when_of_this_checkpoint_and_complete(cr, tmp_path, monkeypatch):
    import robopretrain.evaluate as E

    made = []
    monkeypatch.setattr(E, "evaluate_robustness", lambda ev: made.append(ev) or {"made": True})
    monkeypatch.setattr(E, "open_checkpoint", lambda path: SimpleNamespace(step=2000))
    out = tmp_path / "eval"
    out.mkdir()
    every = [{"factor": "nominal", "level": "none"}]
    every += [{"factor": f, "level": lv} for f in cr.FACTORS for lv in cr.LEVELS]

    def store(**changed):
        info = {"episodes_per_condition": 50, "eval_seed": 1000000, "step": 2000, "episodes": every, **changed}
        (out / "eval_info.json").write_text(json.dumps(info))
        return info

    info = store()
    assert cr.evaluate_factors(tmp_path / "ckpt", out, 50) == info and not made
    # another step of the checkpoint, episode count, reset seed, or a condition missing: evaluated again
    for stale in ({"step": 1500}, {"episodes_per_condition": 10}, {"eval_seed": 7}, {"episodes": every[:-1]}):
        store(**stale)
        assert cr.evaluate_factors(tmp_path / "ckpt", out, 50) == {"made": True}
    assert len(made) == 4
    assert made[-1].checkpoint == str(tmp_path / "ckpt") and made[-1].output_dir == str(out)
    assert made[-1].episodes == 50 and list(made[-1].select) == list(cr.FACTORS)


def test_a_worker_ends_with_the_benchmark(cr, monkeypatch):
    """Killed outright, the benchmark left its workers training (their run folders locked for the rerun): each
    worker watches its parent's pid."""
    import os
    import threading

    import robopretrain.workers

    watched, sent = [], []
    monkeypatch.setattr(robopretrain.workers, "exit_with", watched.append)
    monkeypatch.setattr(cr.signal, "signal", lambda *a: None)  # (the handlers a worker sets, not this process's)
    cr._child(lambda x: x + 1, (1,), SimpleNamespace(send=sent.append, close=lambda: None), 4242)
    assert watched == [4242] and sent == [(True, 2)]
    started = []  # the pid the benchmark gives its worker: its own (read in the worker, an orphan's adopter's)

    class Context:
        def Pipe(self, duplex):  # noqa: N802 (multiprocessing's names)
            return SimpleNamespace(recv=lambda: (True, 7), close=lambda: None), SimpleNamespace(close=lambda: None)

        def Process(self, target, args):  # noqa: N802
            started.append(args[-1])
            return Ended()

    class Ended:
        exitcode = 0

        def join(self, *timeout):
            pass

        def is_alive(self):
            return False

    monkeypatch.setattr(cr.mp, "get_context", lambda method: Context())
    workers = SimpleNamespace(start=lambda proc: True, live=set(), stopping=False, lock=threading.Lock(),
                              stop=lambda: None)
    assert cr._in_fresh_process(print, (), workers) == 7 and started == [os.getpid()]
