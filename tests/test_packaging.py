"""The installed package (a wheel, not the editable checkout the other tests run on) carries every file it reads at
run time: the Hydra configs and the scene assets. A wheel without them failed every entry point
(``MissingConfigException: Primary config directory not found``) and every task env (``missing MJCF asset``)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("robopretrain", "video_pretrain", "finetune", "sim_envs")

CHECK = """
import sys
root = sys.argv[1]
import robopretrain.cli as cli
import sim_envs
assert cli.__file__.startswith(root) and sim_envs.__file__.startswith(root), (cli.__file__, sim_envs.__file__)
import sim_envs.collect, sim_envs.collect_videos
assert sim_envs.collect.CONFIG_DIR == sim_envs.collect_videos.CONFIG_DIR == str(cli.CONFIG_DIR)
from hydra import compose, initialize_config_dir
names = sorted(p.stem for p in cli.CONFIG_DIR.glob("*.yaml"))  # every entry point's and the presets (testbed, paper)
assert set(cli.ENTRY_POINTS.values()) <= set(names) and "testbed" in names, names
for name in names:
    with initialize_config_dir(str(cli.CONFIG_DIR), version_base="1.3"):
        compose(name)
import gymnasium as gym
for task in sim_envs.TASKS:
    env = gym.make(sim_envs.env_id(task), render_images=False)
    env.reset(seed=0)
    env.close()
print("ok", len(sim_envs.TASKS))
"""


def tracked(*folders: str) -> list[str]:
    """The files git tracks in the packages, or in ``folders`` (an untracked note or editor file beside them is not
    the package's)."""
    out = subprocess.run(["git", "ls-files", "-z", "--", *(folders or PACKAGES)], cwd=REPO, capture_output=True,
                         check=True)
    return [f for f in out.stdout.decode().split("\0") if f]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """A source distribution built from a copy of the checkout's project files, packages and tests (offline: with
    this environment's setuptools, which the dev extra pins to the backend's version)."""
    tmp = tmp_path_factory.mktemp("sdist")
    src = tmp / "src"
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", *tracked(), *tracked("tests")):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-c", "import setuptools.build_meta as b, sys; b.build_sdist(sys.argv[1])",
                    str(tmp / "dist")], cwd=src, check=True, capture_output=True, timeout=300)
    (built,) = (tmp / "dist").glob("robopretrain-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def wheel(sdist, tmp_path_factory) -> Path:
    """The wheel pip builds from that sdist (as ``pip install robopretrain-<version>.tar.gz`` or from an index does;
    a wheel built from the checkout directly has every file the sdist has, or more)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp), str(sdist)], check=True, capture_output=True, timeout=300)
    (built,) = tmp.glob("robopretrain-*.whl")
    return built


def test_the_sdist_ships_no_partial_test_suite(sdist):
    """setuptools adds tests/test_*.py to an sdist by default, without conftest.py and the helpers they import: a
    user running pytest in the unpacked sdist got import errors, not tests (MANIFEST.in prunes the folder)."""
    names = [n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n]
    assert "robopretrain/configs/algo/cql.yaml" in names and "pyproject.toml" in names  # (what the list must hold)
    assert sorted(n for n in names if n == "tests" or n.startswith("tests/")) == []


def test_the_wheel_holds_every_config_and_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = tracked()
    assert any(w.startswith("robopretrain/configs/algo/") for w in wanted)  # (what the list must hold)
    assert any(w.startswith("sim_envs/assets/fixtures/") for w in wanted)
    assert sorted(w for w in wanted if w not in names) == []


def test_the_installed_files_compose_every_config_and_build_every_task(wheel, tmp_path):
    """Unpacked alone on the path (as site-packages holds it), from a folder outside the checkout."""
    root = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(root)
    out = subprocess.run([sys.executable, "-c", CHECK, str(root)], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "MUJOCO_GL": "egl",
                              "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", str(len(__import__("sim_envs").TASKS))]
