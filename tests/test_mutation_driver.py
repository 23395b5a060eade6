"""benchmarks/mutation.py's mutant generator: each site gives one distinct, compilable mutant of the kind it names,
and the code it must leave alone (docstrings, raise, metrics) gives none."""

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# loaded from its file: benchmarks/ on sys.path would shadow the video_pretrain package (see test_benchmarks.py)
_spec = importlib.util.spec_from_file_location("mutation_benchmark", ROOT / "benchmarks" / "mutation.py")
mutation = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mutation  # its dataclasses look their module up
_spec.loader.exec_module(mutation)

SOURCE = '''
def f(obs, next_obs, gamma=0.99):
    """Docstring + 1."""
    if gamma < 0:
        raise ValueError("bad " + "gamma")
    metrics = {"x": obs - 1}
    return -(obs + gamma * h(next_obs, obs)).min()
'''


def mutants():
    return [ast.unparse(ast.parse(mutation.mutate(SOURCE, i))) for i in range(len(mutation.mutation_sites(SOURCE)))]


def test_each_site_is_one_distinct_compilable_mutant():
    original = ast.unparse(ast.parse(SOURCE))
    got = mutants()
    assert len(set(got)) == len(got) and original not in got
    for src in got:
        compile(src, "m", "exec")
    body = {src.split("return ", 1)[1].splitlines()[0] for src in got if "return " in src}
    for expected in ("-(obs - gamma * h(next_obs, obs)).min()", "-obs.min()", "-(obs + gamma).min()",
                     "(obs + gamma * h(next_obs, obs)).min()", "-(obs + gamma * h(obs, next_obs)).min()",
                     "-(obs + gamma * h(next_obs, obs)).max()", "-(next_obs + gamma * h(next_obs, obs)).min()",
                     "-(obs + gamma * h(obs, obs)).min()", "-(obs + gamma * h(next_obs, next_obs)).min()"):
        assert expected in body, expected
    assert any("gamma=0.495" in src for src in got) and any("if not gamma < 0" in src for src in got)


def test_docstrings_raise_and_metrics_are_left_alone():
    for src in mutants():
        assert '"""Docstring + 1."""' in src or "'Docstring + 1.'" in src
        assert "raise ValueError('bad ' + 'gamma')" in src
        assert "metrics = {'x': obs - 1}" in src


def test_an_index_past_the_last_site_is_refused():
    n = len(mutation.mutation_sites(SOURCE))
    try:
        mutation.mutate(SOURCE, n)
    except IndexError:
        return
    raise AssertionError("mutate accepted an index past the last site")


def test_every_equivalent_mutant_explanation_still_names_the_mutant_it_was_written_for(monkeypatch):
    """An edit that renumbers a module's mutants moves an EQUIVALENT id onto another mutant, whose survival the score
    would then hide (stop 32 found CQL's two swap entries pointing at other calls); the driver refuses to run then."""
    assert mutation.stale_equivalents() == []
    key = ("cql", "td_target/const/0")
    monkeypatch.setitem(mutation.EQUIVALENT, key, mutation.Equivalent("why", "0.0 -> 1.0 @ some other line"))
    assert [s.split(": now")[0] for s in mutation.stale_equivalents(["cql", "returns"])] == ["cql:td_target/const/0"]
    assert mutation.stale_equivalents(["returns"]) == []  # only the modules asked for
    monkeypatch.setitem(mutation.EQUIVALENT, ("cql", "td_target/const/999"), mutation.Equivalent("why", "x @ y"))
    assert any("td_target/const/999: now 'no such mutant'" in s for s in mutation.stale_equivalents(["cql"]))


def test_each_equivalent_mutant_is_explained_once():
    """EQUIVALENT is a dict literal: a second entry for the same mutant silently replaced the first (three did, with
    different explanations, before this test)."""
    tree = ast.parse((ROOT / "benchmarks" / "mutation.py").read_text())
    (table,) = [node.value for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
                and getattr(node.target, "id", None) == "EQUIVALENT"]
    keys = [ast.literal_eval(k) for k in table.keys]
    assert len(keys) == len(set(keys)), sorted(k for k in set(keys) if keys.count(k) > 1)
    assert len(keys) == len(mutation.EQUIVALENT)


def test_the_private_copy_keeps_the_configs_link_and_every_tracked_file(tmp_path):
    """configs/ is a link to robopretrain/configs: the copy skipped it (not a file), and every test reading
    configs/... failed on the unmutated code, so no mutant ran."""
    dest = mutation.make_copy(tmp_path)
    assert (dest / "configs").is_symlink() and (dest / "configs" / "pipeline.yaml").is_file()
    assert (dest / "configs").resolve() == (dest / "robopretrain" / "configs").resolve()
    assert (dest / "robopretrain" / "agent.py").read_bytes() == (ROOT / "robopretrain" / "agent.py").read_bytes()
    assert not (dest / "benchmarks" / "results").exists()
