"""Benchmark scripts that run pipeline stages in their own process must import this checkout's packages, not the
same-named scripts beside them: ``benchmarks/video_pretrain.py`` shadows the ``video_pretrain`` package when the
benchmarks folder comes first on ``sys.path``, and stage 1 (``from video_pretrain.train import train``) then fails.

Each script's top level is run as ``python benchmarks/<script>`` would run it (its folder first on ``sys.path``,
``__name__`` not ``__main__``), then stage 1's import is made. (transfer.py put its folder first until stop 29; its
base runs had copied stage 1, so no run had reached the import.)
"""
from __future__ import annotations

import importlib.machinery
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import runpy, sys
bench = sys.argv[1]
sys.path.insert(0, bench)  # what `python benchmarks/<script>` puts first
runpy.run_path(bench + "/" + sys.argv[2], run_name="imported")
from video_pretrain.train import train  # stage 1, as robopretrain.pipeline.stage_stage1 imports it
import video_pretrain
print(video_pretrain.__file__)
"""


@pytest.mark.parametrize("script", ["transfer.py", "claims_robustness.py", "robustness_dr.py", "claims.py"])
def test_stage1_imports_the_package_after_the_script_loads(script):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "benchmarks"), script], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip().splitlines()[-1]) == ROOT / "video_pretrain" / "__init__.py"


@pytest.mark.parametrize("script", ["claims_values.py", "claims_robustness.py", "claims_encoder_shifts.py",
                                    "claims_metrics.py"])
def test_a_claims_module_run_by_itself_names_the_command_that_runs_it(script):
    """Each did nothing and exited 0 when run as ``python benchmarks/<script>`` (a user's session)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and "run python benchmarks/claims.py" in proc.stderr, proc.stderr[-2000:]


def test_no_script_is_named_like_a_module_it_would_shadow():
    """``python benchmarks/<script>`` puts benchmarks/ first on ``sys.path``, before the installed packages, so a
    script named like one replaces it: ``benchmarks/metaworld_envs.py`` imported ``benchmarks/metaworld.py`` as
    Meta-World ("'metaworld' is not a package", stop 62). This checkout's own packages (``video_pretrain``) are put
    first by the scripts that need them (the tests above)."""
    bench = (ROOT / "benchmarks").resolve()
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() != bench]
    shadowing = []
    for script in sorted(bench.glob("*.py")):
        name = script.stem
        if name in sys.builtin_module_names or name in sys.stdlib_module_names:
            shadowing.append(f"{script.name} (the standard library's {name})")
            continue
        spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        ours = origin is not None and ROOT.resolve() in (origin.parent, origin.parent.parent)  # not .venv's
        if origin is not None and not ours:
            shadowing.append(f"{script.name} ({spec.origin})")
    assert shadowing == []


@pytest.mark.parametrize("script, ends", [
    ("testbed.py", "and its privileged-state variant (oracle)."),
    ("offline_suite.py", "(committed before any measured run)."),
    ("transfer.py", "protocol ``benchmarks/protocols/transfer.md``)."),
    ("claims.py", "measure one finished run folder"),
])
def test_a_benchmarks_help_gives_its_whole_first_paragraph(script, ends):
    """--help took the docstring's first line: "...from pipeline", "...and the Decision", "...and"; claims.py printed
    its usage line alone."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ends in " ".join(proc.stdout.split())  # (argparse rewraps the text)


@pytest.mark.parametrize("argv, said", [
    (["transfer.py", "--summarize-only", "--results", "{missing}"], "no such results file"),
    (["offline_to_online.py", "--summarize-only", "--results", "{missing}"], "no such results file"),
    (["testbed.py", "--summarize-only", "--out", "{missing}"], "no such results file"),
    (["transfer.py", "--darc-gap", "nope"], "--darc-gap 'nope': no "),
])
def test_a_benchmarks_bad_input_is_one_error_line(argv, said, tmp_path):
    """Tracebacks (FileNotFoundError, ValueError), or, for testbed.py, a new results file of "not run" rows."""
    missing = tmp_path / "missing.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / argv[0]),
                           *[a.format(missing=missing) for a in argv[1:]]],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not missing.exists()


@pytest.mark.parametrize("argv", [["testbed.py"], ["claims.py", "pretraining"]])
def test_every_option_of_the_testbed_and_claims_benchmarks_is_described(argv):
    """Most options of testbed.py (7 of 7 listed) and claims.py pretraining (--out, --plot, --episodes) were bare."""
    import re

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / argv[0]), *argv[1:], "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    options = proc.stdout.split("options:")[1]
    entries = re.split(r"\n  (?=-)", "\n" + options.strip("\n"))
    bare = [e.split()[0] for e in entries if e.strip() and len(re.split(r"\s{2,}", e.strip(), maxsplit=1)) < 2]
    assert bare == [], bare
