"""Run many ``python -m <module> <args>`` command lines fast: import the toolkit once, then fork one child process
per command line, which runs the module as ``__main__`` exactly as ``python -m`` would.

Used by tests/test_bad_input.py and tests/test_console_scripts.py (interpreter start-up and the torch import
dominate each CLI call there). Reads a JSON list of ``{"name", "module", "args"}`` from stdin; writes
``<outdir>/<name>.{out,err,rc}``. A case with ``"entry": "pkg.mod:func"`` instead of ``"module"`` runs a console
script the way its generated wrapper does: ``sys.argv = [name, *args]; sys.exit(func())``.
Usage: ``python tests/_cli_runner.py <outdir> [max_parallel]``; ``CLI_RUNNER_PRELOAD=mod1,mod2`` imports more modules
in the parent first.
"""
from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

# like ``python -m`` run from the repository root: this checkout's packages come first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def preload() -> None:
    """Import what every entry point imports, so each forked child starts warm."""
    import h5py  # noqa: F401
    import hydra  # noqa: F401
    import torch  # noqa: F401

    import robopretrain.cli  # noqa: F401
    import robopretrain.evaluate  # noqa: F401
    import robopretrain.train  # noqa: F401
    import sim_envs  # noqa: F401
    import video_pretrain.train  # noqa: F401

    for module in filter(None, os.environ.get("CLI_RUNNER_PRELOAD", "").split(",")):
        importlib.import_module(module)


def child(case: dict, outdir: Path) -> None:
    """In the forked child: redirect stdout/stderr to files and run the module as __main__; never returns."""
    code = 1
    out = os.open(outdir / f"{case['name']}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(outdir / f"{case['name']}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    try:
        if "entry" in case:  # a console script's wrapper
            module, _, func = case["entry"].partition(":")
            sys.argv = [case.get("script", case["name"]), *case["args"]]
            sys.exit(getattr(importlib.import_module(module), func)())
        sys.argv = [case["module"], *case["args"]]
        runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = int(exc.code or 0)
    except BaseException:  # noqa: BLE001 - what python -m would print for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        (outdir / f"{case['name']}.rc").write_text(str(code))
        os._exit(code)


def main() -> None:
    outdir = Path(sys.argv[1])
    max_parallel = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    outdir.mkdir(parents=True, exist_ok=True)
    cases = json.load(sys.stdin)
    preload()
    running: set[int] = set()
    for case in cases:
        if len(running) >= max_parallel:
            pid, _ = os.wait()
            running.discard(pid)
        pid = os.fork()
        if pid == 0:
            child(case, outdir)
        running.add(pid)
    while running:
        pid, _ = os.wait()
        running.discard(pid)


if __name__ == "__main__":
    main()
