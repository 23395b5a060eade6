"""Load a benchmark script (``benchmarks/<file>``) as a module for its tests.

Loaded from its file under ``name``: putting ``benchmarks/`` on ``sys.path`` would shadow the ``video_pretrain``
package with ``benchmarks/video_pretrain.py`` for every later test. The scripts append their own folder to
``sys.path`` for their helpers (``bench_utils``, ``claims_metrics``, ``transfer``). ``register`` also puts the module in
``sys.modules`` under ``name`` (needed where a spawned process or pickle looks the module up by name).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str, file: str, register: bool = False) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / file)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
