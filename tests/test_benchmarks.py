"""The speed benchmarks start: benchmarks/gpu_check.sh --dry-run on the CPU, and benchmarks/peers.py's helpers."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# loaded from its file: putting benchmarks/ on sys.path would shadow the video_pretrain package with
# benchmarks/video_pretrain.py for every later test
_spec = importlib.util.spec_from_file_location("peers_benchmark", ROOT / "benchmarks" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)


def test_gpu_check_dry_run_starts_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "CORL_PATH"}
    env.update(PYTHON=sys.executable, ROBOPRETRAIN_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    runs = report["updates"]["runs"]
    assert {"calql_b8_robopretrain_eager", "iql_b8_robopretrain_eager", "image_b8_robopretrain_eager"} <= set(runs)
    assert all(r["updates_per_s"] > 0 for r in runs.values())
    assert report["updates"]["errors"] == {}
    assert report["paper_stage2"]["status"] == "composed"  # the stage-2 command line parses with the paper preset


def test_update_flops_by_hand():
    critic = 2 * 2 * (43 * 256 + 256 * 256 + 256)  # 2 critics, per row
    actor = 2 * (39 * 256 + 256 * 256 + 256 * 256 + 256 * 8)
    rows_main, rows_target = 256 * 31, 256 * 10
    expected = 3 * 512 * actor + 2 * 256 * critic + rows_target * critic + 3 * rows_main * critic
    assert peers.update_flops("calql") == expected
    assert peers.update_flops("calql", 1024) == 4 * expected
    assert peers.update_flops("image") is None


def test_corl_training_imports_are_stubbed_when_missing(monkeypatch):
    for name in ("wandb", "pyrallis", "d4rl", "gym"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    stubbed = peers._stub_corl_imports()
    try:
        if "pyrallis" not in stubbed:
            pytest.skip("pyrallis is installed here")
        import pyrallis

        def train():
            return 1

        assert pyrallis.wrap()(train) is train  # CORL's @pyrallis.wrap() leaves the function alone
        assert sys.modules["gym"].Env is not None  # annotations such as gym.Env resolve
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
