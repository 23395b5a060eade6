"""Claim 2b's harness (benchmarks/claims_encoder_shifts.py) on hand-made outcomes and a faked evaluation.

Which bugs these catch: the primary pool taking a training-range or nominal condition (or missing a held-out one);
a comparison with its sides swapped; the confirmatory group mixing in exploratory seeds; the full variant's agent
looked for outside the testbed's ``pixel`` folder, or another stage's checkpoint evaluated; an unfinished or
wrong-target run evaluated as if finished; agents already in the results evaluated again; a results file of another
episode count extended.
"""
from __future__ import annotations

import functools
import json

import pytest

from _benchmarks import load_benchmark


@pytest.fixture(scope="module")
def cs():
    load_benchmark("claims_robustness", "claims_robustness.py", register=True)
    module = load_benchmark("claims_encoder_shifts", "claims_encoder_shifts.py", register=True)
    # intervals of hand-made outcomes with 200 bootstrap resamples instead of 2000 (the same functions; they are
    # tested at their default in test_claims_metrics.py and test_bench_utils.py): the suite's time, not the numbers
    module.seeds_then_episodes_ci = functools.partial(module.seeds_then_episodes_ci, resamples=200)
    module.difference_ci = functools.partial(module.difference_ci, resamples=200)
    return module


def _outcomes(cs, held_out: float, train: float, nominal: float = 1.0, n: int = 4) -> dict[str, list[float]]:
    """Every condition of the evaluation: held-out visual ones at ``held_out``, training-range visual ones at
    ``train``, nominal and physics ones at ``nominal`` (success rates, as ``n`` 0/1 episodes)."""
    ep = lambda p: [1.0] * round(p * n) + [0.0] * (n - round(p * n))  # noqa: E731
    out = {"nominal": ep(nominal)}
    for f in cs.FACTORS:
        for lv in cs.LEVELS:
            visual = f in cs.VISUAL
            out[f"{f}/{lv}"] = ep(train if visual and lv == "train" else held_out if visual else nominal)
    return out


def _run(cs, variant, seed, **kw):
    return {"variant": variant, "seed": seed, "outcomes": _outcomes(cs, **kw)}


def test_pools_are_the_protocols_conditions(cs):
    assert set(cs.HELD_OUT_VISUAL) == {f"{f}/{lv}" for f in ("lighting", "colors_textures", "camera")
                                       for lv in ("eval_easy", "eval_hard")}
    assert set(cs.TRAIN_VISUAL) == {"lighting/train", "colors_textures/train", "camera/train"}
    assert cs.PRIMARY == ("full", "scratch") and cs.GROUPS == {"exploratory": (0, 1, 2), "confirmatory": (3, 4, 5)}
    with pytest.raises(KeyError, match="camera/eval_hard"):
        cs.pooled({"lighting/eval_easy": [1.0]}, cs.HELD_OUT_VISUAL)


def test_summary_sides_pools_and_groups(cs):
    runs = [_run(cs, "full", s, held_out=0.5, train=0.25) for s in (0, 1, 2)]
    runs += [_run(cs, "scratch", s, held_out=0.25, train=0.75, nominal=0.75) for s in (0, 1, 2)]
    runs += [_run(cs, "full", 3, held_out=1.0, train=0.0), _run(cs, "scratch", 3, held_out=0.0, train=0.0)]
    s = cs.summarize(runs)
    # one confirmatory seed of three: its numbers, but no verdict yet (amendment 1)
    conf = s["comparisons"]["confirmatory"]["held_out_visual"]["full - scratch"]
    assert conf["difference"] == pytest.approx(1.0) and conf["verdict"] == "partial (1 of 3 seeds)"
    assert s["verdict"]["confirmatory"] == "partial (1 of 3 seeds)"
    runs += [_run(cs, v, seed, held_out=1.0 if v == "full" else 0.0, train=0.0)
             for seed in (4, 5) for v in ("full", "scratch")]
    s = cs.summarize(runs)
    expl = s["comparisons"]["exploratory"]
    assert expl["held_out_visual"]["full - scratch"]["difference"] == pytest.approx(0.25)
    assert expl["held_out_visual"]["full - scratch"]["seeds"] == [3, 3]
    assert expl["train_visual"]["full - scratch"]["difference"] == pytest.approx(-0.5)
    conf = s["comparisons"]["confirmatory"]["held_out_visual"]["full - scratch"]
    assert conf["difference"] == pytest.approx(1.0) and conf["seeds"] == [3, 3] and conf["verdict"] == "reproduced"
    assert expl["held_out_visual"]["full - scratch"]["verdict"] == "reproduced"  # all three seeds: a verdict
    every = s["comparisons"][cs.POOLED]["held_out_visual"]["full - scratch"]
    assert every["difference"] == pytest.approx((3 * 0.5 + 3 * 1.0) / 6 - 0.25 * 3 / 6) and every["verdict"] is None
    assert "vip - scratch" not in expl["held_out_visual"]  # no vip agent: no comparison
    with_vip = cs.summarize([*runs, _run(cs, "vip", 0, held_out=0.5, train=0.5)])
    # one side complete, the other one seed of three: partial, whichever side is short
    vip = with_vip["comparisons"]["exploratory"]["held_out_visual"]
    assert vip["vip - scratch"]["seeds"] == [1, 3] and vip["vip - scratch"]["verdict"] == "partial (1 of 3 seeds)"
    assert vip["full - vip"]["verdict"] == "partial (1 of 3 seeds)"
    assert s["verdict"]["confirmatory"] == "reproduced"
    full = s["success"]["full"]
    assert full["held_out_visual"]["per_seed"] == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert full["held_out_visual"]["seeds"] == [0, 1, 2, 3, 4, 5]
    scratch_nominal = (0.75 * 3 + 3 * 1.0) / 6  # seeds 3-5's scratch agents at the default nominal 1.0
    assert s["success"]["scratch"]["drop_held_out_visual"] == pytest.approx(scratch_nominal - 0.25 * 3 / 6)
    assert s["full - scratch per condition"]["nominal"]["difference"] == pytest.approx(1.0 - scratch_nominal)
    text = cs.table(s)
    assert "| confirmatory (3, 4, 5) | held_out_visual | full - scratch | 3 / 3 | +1.00 [+1.00, +1.00] reproduced |" \
        in text
    lines = text.splitlines()
    for header, rule in zip(lines, lines[1:]):  # every markdown table: its rule has one cell per header cell
        if rule.startswith("|---"):
            assert rule.count("|") == header.count("|"), (header, rule)
    assert "| nominal | 1.00" in text


def test_evaluate_agent_reads_the_claim2_run_folders(cs, tmp_path, monkeypatch):
    calls = []

    def fake(checkpoint, out, episodes, target=None, device="cpu"):
        calls.append((checkpoint, out, episodes))
        return {"checkpoint": str(checkpoint / "checkpoints" / "ckpt_00002000"), "step": 2000,
                "target": {"name": "PressLitButton"}, "wall_seconds": {"episodes": 1.0},
                "episodes": [{"factor": "nominal", "level": "none", "success": True},
                             {"factor": "camera", "level": "eval_hard", "success": False}]}

    monkeypatch.setattr(cs, "evaluate_factors", fake)
    with pytest.raises(FileNotFoundError, match="stage 3 not finished"):
        cs.evaluate_agent(tmp_path, "full", "PressLitButton", 1, 50)
    for folder in ("pixel", "scratch"):
        stage3 = tmp_path / folder / "PressLitButton" / "seed1" / "stage3" / "PressLitButton"
        stage3.mkdir(parents=True)
        (stage3 / "done.json").write_text("{}")
    r = cs.evaluate_agent(tmp_path, "full", "PressLitButton", 1, 50)
    run = tmp_path / "pixel" / "PressLitButton" / "seed1"  # the testbed's folder name of the full runs
    assert calls[-1] == (run / "stage3" / "PressLitButton", run / "eval_shifts", 50)
    assert r["outcomes"] == {"nominal": [1.0], "camera/eval_hard": [0.0]} and r["step"] == 2000
    cs.evaluate_agent(tmp_path, "scratch", "PressLitButton", 1, 2)
    scratch = tmp_path / "scratch" / "PressLitButton" / "seed1"
    # a short trial gets its own folder: the protocol's 50-episode evaluation is never replaced by it
    assert calls[-1] == (scratch / "stage3" / "PressLitButton", scratch / "eval_shifts_2ep", 2)

    (tmp_path / "pixel" / "OpenDoorRight" / "seed1" / "stage3" / "OpenDoorRight").mkdir(parents=True)
    (tmp_path / "pixel" / "OpenDoorRight" / "seed1" / "stage3" / "OpenDoorRight" / "done.json").write_text("{}")
    with pytest.raises(ValueError, match="not 'OpenDoorRight'"):
        cs.evaluate_agent(tmp_path, "full", "OpenDoorRight", 1, 50)

    def broken(*a, **k):
        raise cs.CheckpointError("no checkpoint")

    monkeypatch.setattr(cs, "evaluate_factors", broken)
    assert cs._try_evaluate(tmp_path, "scratch", "PressLitButton", 1, 50) == {
        "variant": "scratch", "seed": 1, "error": "no checkpoint"}  # reported; the other agents go on


def test_main_keeps_earlier_agents_and_refuses_other_episode_counts(cs, tmp_path, monkeypatch, capsys):
    evaluated = []

    def fake(work, variant, target, seed, episodes):
        evaluated.append((variant, seed))
        return {"variant": variant, "seed": seed, **_run(cs, variant, seed, held_out=0.5, train=0.5)}

    monkeypatch.setattr(cs, "_try_evaluate", fake)
    monkeypatch.setattr(cs, "cpu_model", lambda: "the machine of the runs")
    written, real_write = [], cs.write_json_atomic
    monkeypatch.setattr(cs, "write_json_atomic", lambda path, obj: written.append(obj) or real_write(path, obj))
    out, fig = tmp_path / "r.json", tmp_path / "r.png"
    args = ["--work-dir", str(tmp_path), "--jobs", "1", "--out", str(out), "--plot", str(fig)]
    cs.main([*args, "--seeds", "0", "--variants", "full", "scratch"])
    assert evaluated == [("full", 0), ("scratch", 0)] and fig.is_file()
    # the file written after each agent (what an interrupted run keeps) names the target and episode count too
    assert len(written) >= 2 and all((w["target"], w["episodes"]) == ("PressLitButton", 50) for w in written)
    cs.main([*args, "--seeds", "0", "1", "--variants", "full", "scratch"])
    assert evaluated[2:] == [("full", 1), ("scratch", 1)]  # seed 0's agents kept, not evaluated again
    stored = json.loads(out.read_text())
    assert [(r["variant"], r["seed"]) for r in stored["runs"]] == [("full", 0), ("scratch", 0), ("full", 1),
                                                                   ("scratch", 1)]
    assert stored["episodes"] == 50 and stored["protocol"] == cs.PROTOCOL
    with pytest.raises(SystemExit, match="on 50 episodes per condition, not PressLitButton on 10"):
        cs.main([*args, "--episodes", "10"])
    monkeypatch.setattr(cs, "cpu_model", lambda: "a later machine")
    summary = cs.main([*args, "--summarize-only"])  # the file's episode count, whatever the default
    assert len(summary["runs"]) == 4 and len(evaluated) == 4
    assert json.loads(out.read_text())["cpu"] == "the machine of the runs"  # a summary names where the runs ran
    with pytest.raises(SystemExit, match="must be file paths"):  # refused before any evaluation
        cs.main([*args[:-4], "--out", str(tmp_path), "--plot", str(fig)])
    with pytest.raises(SystemExit, match="no such folder"):
        cs.main(["--work-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "new.json"), "--plot", str(fig)])
    assert len(evaluated) == 4
    other = tmp_path / "claims_robustness.json"  # another claim's results: refused, not extended
    other.write_text(json.dumps({"protocol": "benchmarks/protocols/claims_robustness.md", "runs": []}))
    with pytest.raises(SystemExit, match="not this benchmark's results"):
        cs.main([*args[:-4], "--out", str(other), "--plot", str(fig)])
    assert len(evaluated) == 4
    short = tmp_path / "short.json"  # a trial at 3 episodes: summarized without repeating --episodes
    cs.main(["--work-dir", str(tmp_path), "--jobs", "1", "--out", str(short), "--plot", str(fig), "--seeds", "0",
             "--episodes", "3"])
    assert cs.main(["--out", str(short), "--plot", str(fig), "--summarize-only"])["episodes"] == 3


def test_main_with_no_finished_agent_says_so_and_writes_nothing(cs, tmp_path, monkeypatch):
    monkeypatch.setattr(cs, "_try_evaluate", lambda work, variant, target, seed, episodes: {
        "variant": variant, "seed": seed, "error": "stage 3 not finished"})
    with pytest.raises(SystemExit, match=r"no agent evaluated \(6 not finished\)"):
        cs.main(["--work-dir", str(tmp_path), "--jobs", "1", "--out", str(tmp_path / "r.json"), "--plot",
                 str(tmp_path / "r.png"), "--variants", "full", "scratch"])
    assert not (tmp_path / "r.json").exists()


def test_plot_draws_each_variants_means_intervals_and_seeds(cs, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(cs, "save_figure", lambda fig, path: figures.append(fig) or path)
    runs = [_run(cs, "full", 0, held_out=0.5, train=0.25), _run(cs, "full", 1, held_out=0.75, train=0.5)]
    runs += [_run(cs, "scratch", 0, held_out=0.25, train=0.75, nominal=0.75), _run(cs, "vip", 2, held_out=1, train=1)]
    s = cs.summarize(runs)
    assert cs.plot(s, tmp_path / "p.png", "OpenDoorRight") == tmp_path / "p.png"
    ax = figures[0].axes[0]
    conds = ["nominal", *(f"{f}/{lv}" for f in cs.VISUAL for lv in cs.LEVELS), "held_out_visual"]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    from matplotlib.container import BarContainer

    bar_sets = [c for c in ax.containers if isinstance(c, BarContainer)]
    n = len(conds)
    assert len(bar_sets) == 3 and len(dots) == 3 * n
    for variant, bars, seed_dots in zip(cs.VARIANTS, bar_sets, (dots[:n], dots[n:2 * n], dots[2 * n:])):
        want = [s["success"][variant][c] for c in conds]
        assert [b.get_height() for b in bars] == pytest.approx([w["mean"] for w in want])
        segments = bars.errorbar.lines[2][0].get_segments()  # each from the interval's low end to its high end
        ends = [end for seg in segments for end in (seg[0][1], seg[1][1])]
        assert ends == pytest.approx([end for w in want for end in w["ci"]])
        assert [list(d.get_ydata()) for d in seed_dots] == [w["per_seed"] for w in want]
        # each seed's dots sit inside their own bar, right of its centre (clear of the error bar)
        assert [d.get_xdata()[0] for d in seed_dots] == pytest.approx([b.get_x() + 0.75 * b.get_width() for b in bars])
    assert all(b.get_width() == pytest.approx(0.8 / 3) for bars in bar_sets for b in bars)  # a group: 0.8 of a slot
    centres = [(a.get_x() + c.get_x() + c.get_width()) / 2 for a, _, c in zip(*bar_sets)]  # a tick under each group
    assert list(ax.get_xticks()) == pytest.approx(centres) and ax.get_ylim() == pytest.approx((0, 1.05))
    assert "OpenDoorRight; seeds 0, 1, 2" in ax.get_title()


def test_a_group_verdict_needs_the_seed_level_test_too(cs):
    """Amendment 2: one lucky seed lifts the bootstrap interval above 0 (every resample keeps full ahead), but
    Welch's t on the three seed means does not exclude 0: not shown, with both intervals in the table."""
    runs = [_run(cs, "full", s, held_out=h, train=0.0, n=20) for s, h in zip((0, 1, 2), (0.9, 0.5, 0.5))]
    runs += [_run(cs, "scratch", s, held_out=0.4, train=0.0, n=20) for s in (0, 1, 2)]
    d = cs.summarize(runs)["comparisons"]["exploratory"]["held_out_visual"]["full - scratch"]
    assert d["ci"][0] > 0 and d["verdict_bootstrap_only"] == "reproduced"
    assert d["welch_ci"][0] < 0 < d["welch_ci"][1] and d["verdict"] == "not shown"
    assert "not shown | [" in cs.table(cs.summarize(runs)) and "(bootstrap alone: reproduced)" in cs.table(
        cs.summarize(runs))
