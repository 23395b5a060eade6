"""The console scripts of pyproject.toml behave like their ``python -m`` forms, and command-line mistakes give one line.

Every script is called the way its generated wrapper calls it (``sys.argv = [name, *args]; sys.exit(func())``,
through tests/_cli_runner.py), from a folder that is not the repository: ``--help`` must work (a config path Hydra
resolves against the working directory or a package fails here), and the script must call what ``python -m
<module>`` calls (a target pointing at another module or function fails here). The Hydra entry points (every stage, the pipeline, the collectors) must answer an
override Hydra cannot parse, an unknown key and a bad value with one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from robopretrain.cli import override_problem, quoted_override, sweep_problem

REPO = Path(__file__).resolve().parents[1]

# console script -> the python -m module it stands for (README, "Console scripts")
SCRIPTS = {
    "robopretrain-pipeline": "robopretrain.pipeline",
    "robopretrain-collect": "sim_envs.collect",
    "robopretrain-collect-videos": "sim_envs.collect_videos",
    "robopretrain-inspect": "robopretrain.data.inspect",
    "robopretrain-convert": "robopretrain.data.convert",
    "robopretrain-video": "video_pretrain.train",
    "robopretrain-diagnose": "video_pretrain.diagnose",
    "robopretrain-train": "robopretrain.train",
    "robopretrain-finetune": "finetune.train",
    "robopretrain-evaluate": "robopretrain.evaluate",
    "robopretrain-reward-model": "robopretrain.reward_model",
    "robopretrain-metaworld-collect": "robopretrain.envs.metaworld_collect",
}
HYDRA_SCRIPTS = ["robopretrain-pipeline", "robopretrain-collect", "robopretrain-collect-videos", "robopretrain-video",
                 "robopretrain-train", "robopretrain-finetune", "robopretrain-evaluate", "robopretrain-reward-model",
                 "robopretrain-metaworld-collect"]
BAD_PATH = "data.path=/a/b=c.hdf5"
# the same check (robopretrain.cli.run_hydra) for all; stages 1 and 2 and the evaluation: tests/test_bad_input.py
UNKNOWN_KEY = ["robopretrain-pipeline", "robopretrain-collect"]
# a value each entry point refuses in its own code (friendly_errors turns it into one line)
BAD_VALUE = {"robopretrain-pipeline": ("targets=[OpenDoorRight,OpenDoorRight] run_dir={cwd}/run", "names must be unique"),
             "robopretrain-collect": ("tasks=Nope", "unknown task(s) ['Nope']")}


SIM_ENVS_SCRIPTS = [s for s in BAD_VALUE if SCRIPTS[s].startswith("sim_envs.")]


def entry_points() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every case run to its end in its own forked process, with a working directory outside the repository."""
    cwd, outdir = tmp_path_factory.mktemp("elsewhere"), tmp_path_factory.mktemp("cli_out")
    spec = []
    for script, target in entry_points().items():
        spec.append({"name": f"{script}--help", "script": script, "entry": target, "args": ["--help"]})
        if target.split(":")[0] != SCRIPTS.get(script):  # another module's function: compare the composed configs
            spec.append({"name": f"{script}--cfg", "script": script, "entry": target, "args": ["--cfg", "job"]})
            spec.append({"name": f"{script}--cfg-m", "module": SCRIPTS.get(script, "?"), "args": ["--cfg", "job"]})
    for script in HYDRA_SCRIPTS:
        spec.append({"name": f"{script}-parse", "script": script, "entry": entry_points()[script], "args": [BAD_PATH]})
    spec.append({"name": "robopretrain-finetune-launcher", "script": "robopretrain-finetune",
                 "entry": entry_points()["robopretrain-finetune"],
                 "args": ["-m", "hydra/launcher=slurm", "seed=0,1", f"checkpoint={cwd / 'none'}"]})
    spec.append({"name": "robopretrain-train-shared-sweep-folder", "script": "robopretrain-train",
                 "entry": entry_points()["robopretrain-train"],
                 "args": ["-m", "seed=0,1", f"output_dir={cwd / 'shared'}", f"data.path={cwd / 'none.hdf5'}"]})
    spec.append({"name": "robopretrain-finetune-multiline", "script": "robopretrain-finetune",
                 "entry": entry_points()["robopretrain-finetune"],
                 "args": [f"checkpoint={cwd / 'none'}", 'target={name: T, env_id: "_fake_envs:CountEnv",\n'
                          "    task_id: 0}", f"hydra.run.dir={cwd / 'h'}"]})
    for script in UNKNOWN_KEY:
        spec.append({"name": f"{script}-key", "script": script, "entry": entry_points()[script],
                     "args": ["no_such_key=1"]})
        spec.append({"name": f"{script}-config-name", "script": script, "entry": entry_points()[script],
                     "args": ["--config-name", "nope"]})
    for script, (arg, _) in BAD_VALUE.items():
        spec.append({"name": f"{script}-value", "script": script, "entry": entry_points()[script],
                     "args": [*arg.format(cwd=cwd).split(), f"hydra.run.dir={cwd / 'h'}"]})
        if script in SIM_ENVS_SCRIPTS:  # python -m of the module too: the same command line as the script
            for name, args in (("help", ["--help"]), ("value", [*arg.split(), f"hydra.run.dir={cwd / 'h'}"])):
                spec.append({"name": f"{script}-m-{name}", "module": SCRIPTS[script], "args": args})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLI_RUNNER_PRELOAD": ",".join(sorted(set(SCRIPTS.values())))}
    runner = subprocess.run([sys.executable, str(REPO / "tests" / "_cli_runner.py"), str(outdir), "2"], cwd=cwd,
                            env=env, input=json.dumps(spec), capture_output=True, text=True, timeout=300)
    assert runner.returncode == 0, runner.stderr[-3000:]
    return {c["name"]: subprocess.CompletedProcess(c["args"], int((outdir / f"{c['name']}.rc").read_text()),
                                                   (outdir / f"{c['name']}.out").read_text(),
                                                   (outdir / f"{c['name']}.err").read_text()) for c in spec}


def test_every_script_is_listed_and_points_at_its_module():
    scripts = entry_points()
    assert set(scripts) == set(SCRIPTS)
    for script, target in scripts.items():  # the function lives in the module (the sim_envs collectors: in our cli)
        module = target.split(":")[0]
        assert module == SCRIPTS[script] or (module == "robopretrain.cli" and SCRIPTS[script].startswith("sim_envs."))


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_works(script, results):
    r = results[f"{script}--help"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert "powered by Hydra" in r.stdout if script in HYDRA_SCRIPTS else r.stdout.startswith("usage:")
    if script in HYDRA_SCRIPTS:  # the header names the module (Hydra's default is the file name: "train", "collect")
        assert r.stdout.startswith(f"{SCRIPTS[script]} "), r.stdout[:200]


def main_block_call(module: str) -> str:
    """The function the module's ``if __name__ == "__main__":`` block calls (through ``sys.exit(...)`` or not)."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            (stmt,) = node.body
            call = stmt.value
            if ast.unparse(call.func) == "sys.exit":
                (call,) = call.args
            assert not call.args and not call.keywords, ast.unparse(stmt)
            return ast.unparse(call.func)
    raise AssertionError(f"{module} has no __main__ block")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_runs_what_python_m_runs(script, results):
    """The function ``python -m <module>`` calls, or (the sim_envs collectors, run through our cli) the same
    composed config as ``python -m <module> --cfg job``."""
    module, _, func = entry_points()[script].partition(":")
    if module == SCRIPTS[script]:
        assert main_block_call(module) == func
        return
    mine, theirs = results[f"{script}--cfg"], results[f"{script}--cfg-m"]
    assert mine.returncode == 0, mine.stderr[-2000:]
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    assert mine.stdout.strip() and mine.stdout == theirs.stdout


@pytest.mark.parametrize("script", HYDRA_SCRIPTS)
def test_unparsable_override_is_named_with_its_quoting(script, results):
    r = results[f"{script}-parse"]
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config: cannot parse the override 'data.path=/a/b=c.hdf5'")
    assert last.endswith("""'data.path="/a/b=c.hdf5"'""")


@pytest.mark.parametrize("script", UNKNOWN_KEY)
def test_unknown_key_is_one_line(script, results):
    r = results[f"{script}-key"]
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: config: 'no_such_key' is not a setting of ")


@pytest.mark.parametrize("script", UNKNOWN_KEY)
def test_an_unknown_config_name_is_one_line(script, results):
    """``--config-name nope`` gave Hydra's multi-line error and exit code 1 (the README promises one line, code 2)."""
    r = results[f"{script}-config-name"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: --config-name=nope: no such config in ")
    assert "testbed" in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("script", sorted(BAD_VALUE))
def test_bad_value_is_one_line(script, results):
    r = results[f"{script}-value"]
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and BAD_VALUE[script][1] in last


@pytest.mark.parametrize("script", SIM_ENVS_SCRIPTS)
def test_python_m_of_a_collector_is_the_scripts_command_line(script, results):
    """``python -m sim_envs.collect`` (the README's command) gives the script's one-line errors and a ``--help`` of
    the groups it reads (none), not every folder of configs/ and a traceback."""
    helped, refused = results[f"{script}-m-help"], results[f"{script}-m-value"]
    assert helped.returncode == 0 and "(none: this command reads no config group)" in helped.stdout, helped.stderr
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == results[f"{script}-value"].stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["/a/b=c.hdf5", "/data/x,y.hdf5", "/d/it's [1] {2} (3).h5", 'say "hi" = a,b'])
def test_quoted_override_reads_back_as_the_same_string(value):
    """After the shell (shlex) and Hydra's grammar, the suggestion gives back exactly the value the user meant."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (arg,) = shlex.split(quoted_override(f"data.path={value}"))
    parsed = OverridesParser.create().parse_override(arg)
    assert parsed.key_or_group == "data.path" and parsed.value() == value


def test_messages_name_the_override():
    assert "cannot parse the override 'x=a=b' (bad input)" in override_problem("x=a=b", ValueError("bad input\nSee "
                                                                                                 "https://hydra.cc"))
    assert "an override is key=value" in override_problem("x", ValueError("missing EQUAL"))
    comma = sweep_problem("data.path=/a,b")
    assert "needs -m" in comma and """'data.path="/a,b"'""" in comma and "data.path=[/a,b]" in comma
    # a mapping: quoting it whole (the old advice) made it a string, "not a sim_envs task"
    mapping = override_problem('target={name: T, env_id: "x"', ValueError("no viable alternative"))
    assert "a mapping or list value is read in Hydra's grammar" in mapping and 'target="{' not in mapping


def test_a_mapping_copied_across_lines_is_read_as_on_one_line(results):
    """docs/targets.md prints a long target mapping across two lines inside shell quotes: Hydra's grammar refused the
    line break ("token recognition error at: '\\n'"), and the advice to quote it whole made it a string."""
    from robopretrain.cli import one_line_collection

    assert one_line_collection("target={name: T,\n    task_id: 1}") == "target={name: T, task_id: 1}"
    assert one_line_collection("targets=[A,\n B]") == "targets=[A, B]"
    assert one_line_collection("data.path=/a\nb") == "data.path=/a\nb"  # not a mapping or list: as it is
    r = results["robopretrain-finetune-multiline"]
    assert r.returncode == 2 and "cannot parse" not in r.stderr, r.stderr[-2000:]
    assert "none: no such file or folder" in r.stderr.strip().splitlines()[-1]  # past the target, to the checkpoint


@pytest.mark.parametrize("config_name, overrides, refused", [
    ("robopretrain", ["seed=0,1", "output_dir=runs/a"], True),
    ("pipeline", ["run_dir=/r", "stage3.algo=calql,iql"], True),
    ("finetune", ["output_dir=runs/a", "output_dir=null", "seed=0,1"], False),  # the last one wins, as in Hydra
    ("robopretrain", ["seed=0,1", "output_dir=runs/s${seed}"], False),  # varies per job
    ("robopretrain", ["seed=0,1"], False),  # each job in its sweep folder
    ("robopretrain", ["seed=1", "output_dir=runs/a"], False),  # one job
    ("robopretrain", ["seed=0,1", "output_dir=runs/a,runs/b"], False),  # the folder is swept too
    ("pipeline", ["seed=0,1", "output_dir=runs/a"], False),  # not the pipeline's run folder key
    # interpolations of settings no job changes: one folder for every job (job 1 resumed job 0's run)
    ("robopretrain", ["train.steps=20,40", "output_dir=runs/${algo.name}_s${seed}"], True),
    ("robopretrain", ["algo=iql,bc", "output_dir=runs/${algo.name}_s${seed}"], False),  # algo.name varies
    ("robopretrain", ["seed=0,1", "output_dir=runs/${hydra:job.num}"], False),
    ("robopretrain", ["algo=iql,bc", "hydra.sweep.subdir=seed${seed}"], True),  # the job folder itself
    ("robopretrain", ["seed=0,1", "hydra.sweep.subdir=seed${seed}"], False),
    ("robopretrain", ["seed=0,1", "hydra.sweep.subdir=${hydra.job.num}"], False),  # Hydra's own node varies
    ("robopretrain", ["seed=0,1", "hydra.sweep.subdir=${hydra.job.override_dirname}"], False),
    ("robopretrain", ["algo=iql,bc", "hydra.sweep.subdir=seed${seed}", "hydra.sweep.subdir=${algo.name}"], False),
    ("robopretrain", ["train.steps=20,40", "hydra.sweep.subdir=run"], True),  # a literal: job 1 resumed job 0's run
    ("video_pretrain", ["output_dir=/r/a,/r/b", "hydra.sweep.subdir=same"], False),  # each job its own run folder
    ("robopretrain", ["seed=0,1", "output_dir=${oc.env:HOME}/x"], True),  # an environment variable: one path
])
def test_a_sweep_whose_jobs_share_one_run_folder_is_refused(config_name, overrides, refused):
    """``python -m robopretrain.pipeline -m seed=0,1 run_dir=runs/x`` gave every seed the seed-0 results (stop 61's
    note); a stage's second job resumed or refused the first one's run."""
    from robopretrain.cli import shared_sweep_folder

    problem = shared_sweep_folder(config_name, overrides)
    assert (problem is not None) == refused, problem
    if refused and any("${" in o for o in overrides):
        assert "interpolates only settings that no job changes, so every job would write to one folder" in problem
    elif refused and "hydra.sweep.subdir=run" in overrides:
        assert problem.startswith("hydra.sweep.subdir=run in a sweep (train.steps=20,40): one folder for every job")
        assert "(e.g. hydra.sweep.subdir=run_${hydra:job.num})" in problem
    elif refused:
        key = "run_dir" if config_name == "pipeline" else "output_dir"
        assert problem.startswith(f"{key}=") and "every job would write to that one folder" in problem
        assert "${seed}" not in problem  # evaluate has no seed: the hint's interpolation failed with a traceback
    evaluate = shared_sweep_folder("evaluate", ["eval_seed=0,5000", "output_dir=runs/e"])
    assert "the second would replace the first one's results" in evaluate  # it does not resume
    # stage 1's encoder written outside its run folder (output=): the second job replaced the first's encoder
    encoder = shared_sweep_folder("video_pretrain", ["objective=icvf,vip", "output=enc"])
    assert encoder.startswith("output=enc in a sweep (objective=icvf,vip): every job would write its output to that "
                              "one folder, the second replacing the first's")
    assert shared_sweep_folder("video_pretrain", ["objective=icvf,vip", "output=enc/${objective.name}"]) is None
    assert shared_sweep_folder("video_pretrain", ["objective=icvf", "output=enc"]) is None


def test_a_sweep_folder_set_in_the_users_own_config_file_is_refused_too(tmp_path):
    """``--config-dir cfg --config-name mine -m seed=0,1`` with ``output_dir`` (the pipeline's ``run_dir``) in the
    YAML: the check read the command line only, so the pipeline's second job reported the first's run as its own
    (a new user's finding). The command line still wins over the file."""
    from robopretrain.cli import shared_sweep_folder

    mine = tmp_path / "mine.yaml"
    mine.write_text("defaults:\n  - robopretrain\n  - _self_\noutput_dir: runs/mine\nrun_dir: runs/pipe\n")
    assert shared_sweep_folder("robopretrain", ["seed=0,1"], mine).startswith("output_dir=runs/mine in a sweep")
    assert shared_sweep_folder("pipeline", ["seed=0,1"], mine).startswith("run_dir=runs/pipe in a sweep")
    assert shared_sweep_folder("robopretrain", ["seed=0,1", "output_dir=runs/s${seed}"], mine) is None
    assert shared_sweep_folder("robopretrain", ["seed=0,1"], tmp_path / "missing.yaml") is None
    mine.write_text("output_dir: runs/${hydra:job.num}\n")
    assert shared_sweep_folder("robopretrain", ["seed=0,1"], mine) is None


def test_the_run_folder_set_in_the_users_own_config_file_holds_hydras_record(tmp_path):
    """``output_dir`` set in one's own ``--config-dir`` YAML: the run wrote there, while Hydra's log and ``.hydra/``
    record went to outputs/robopretrain/<algo>_seed<seed>/ under the working folder (a new user's finding). The
    command line's folder, or the file's own hydra.run.dir, still wins."""
    from robopretrain.cli import own_config_run_dir

    mine = tmp_path / "cfg" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text(f"defaults:\n  - robopretrain\n  - _self_\noutput_dir: {tmp_path / 'runs' / 'mine'}\n")
    assert own_config_run_dir("robopretrain", [], mine) == f"hydra.run.dir={tmp_path / 'runs' / 'mine'}"
    assert own_config_run_dir("robopretrain", ["output_dir=x"], mine) is None
    assert own_config_run_dir("robopretrain", ["hydra.run.dir=x"], mine) is None
    assert own_config_run_dir("robopretrain", [], tmp_path / "missing.yaml") is None
    spaced = tmp_path / "my runs" / "it's"
    (tmp_path / "other.yaml").write_text(f"output_dir: \"{spaced}\"\n")
    assert own_config_run_dir("robopretrain", [], tmp_path / "other.yaml") == \
        "hydra.run.dir='" + str(spaced).replace("'", "\\'") + "'"  # quoted for Hydra's override grammar
    (tmp_path / "own_hydra.yaml").write_text("output_dir: runs/a\nhydra:\n  run:\n    dir: runs/b\n")
    assert own_config_run_dir("robopretrain", [], tmp_path / "own_hydra.yaml") is None
    (tmp_path / "missing_value.yaml").write_text("output_dir: ???\n")  # the command line must give it (a review)
    assert own_config_run_dir("robopretrain", [], tmp_path / "missing_value.yaml") is None
    # overrides before the options (argparse refused the folder appended after them: a review); the record in a
    # folder of its own, as for a command-line output_dir
    r = subprocess.run([sys.executable, "-m", "robopretrain.train", f"data.path={tmp_path / 'none.hdf5'}",
                        "--config-dir", str(mine.parent), "--config-name", "mine"], cwd=tmp_path, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": "egl"}, timeout=300)
    assert r.returncode == 2 and "file not found" in r.stderr.strip().splitlines()[-1], r.stderr[-500:]
    assert len(list((tmp_path / "runs" / "mine" / ".hydra").glob("*/config.yaml"))) == 1
    assert not (tmp_path / "outputs").exists()


def test_hydra_job_chdir_is_refused_in_one_line(capsys, monkeypatch):
    """``hydra.job.chdir=true`` ran each stage in its run folder: relative outputs nested (runs/x/runs/x) while the
    last line named runs/x, and relative data were not found (a new user's finding)."""
    from robopretrain.cli import EXIT_BAD_INPUT, check_overrides

    monkeypatch.delenv("ROBOPRETRAIN_TRACEBACK", raising=False)
    check_overrides(["hydra.job.chdir=false", "seed=1"], multirun=False)
    for value in ("true", "True"):
        with pytest.raises(SystemExit) as stop:
            check_overrides([f"hydra.job.chdir={value}"], multirun=False)
        assert stop.value.code == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: config: hydra.job.chdir={value}: the toolkit's entry "
                                                   "points run in the folder they are started from")


def test_two_stage1_runs_given_one_encoder_output_are_refused(tmp_path):
    """Two stage-1 runs (other run folders, one output=): the second replaced the first's encoder."""
    import torch
    from omegaconf import OmegaConf

    from robopretrain.distributed import DistInfo
    from robopretrain.files import RunFolderBusy, run_folder_lock
    from video_pretrain.train import _train_holding

    cfg = OmegaConf.create({"output_dir": str(tmp_path / "b"), "output": str(tmp_path / "enc")})
    with run_folder_lock(tmp_path, lock_name=".enc.writer.lock", what=str(tmp_path / "enc")):  # the first run
        with pytest.raises(RunFolderBusy, match=rf"^{tmp_path / 'enc'}: another process is writing it now \(pid "):
            _train_holding(cfg, tmp_path / "b", DistInfo(), torch.device("cpu"))


def test_a_shared_sweep_folder_is_refused_before_any_job_in_one_line(results):
    r = results["robopretrain-train-shared-sweep-folder"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config: output_dir=") and "in a sweep (seed=0,1)" in last
    assert "Launching" not in r.stdout + r.stderr  # no job started (Hydra prints this before its first job)


def test_an_override_interpolating_a_missing_setting_is_one_line(capsys):
    """``output_dir=x_${eval_sed}``: Hydra's exception formatting failed on it (a 100-line traceback); a resolver
    (``${hydra:job.num}``) and a setting that exists pass."""
    from robopretrain.cli import validate_overrides

    with pytest.raises(SystemExit) as exit_info:
        validate_overrides("evaluate", ["checkpoint=x", "output_dir=/tmp/x_${eval_sed}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.endswith("${eval_sed} names no setting of evaluate; did you mean ${eval_seed}?")
    validate_overrides("evaluate", ["checkpoint=x", "output_dir=/tmp/x_${eval_seed}_${hydra:job.num}"])
    validate_overrides("robopretrain", ["output_dir=runs/${algo.name}"])


@pytest.mark.parametrize("overrides,said", [
    (["output_dir=${oc.env:ROBOPRETRAIN_NO_SUCH_VAR}/run"],
     "output_dir=${oc.env:ROBOPRETRAIN_NO_SUCH_VAR}/run: Environment variable 'ROBOPRETRAIN_NO_SUCH_VAR' not found"),
    (["~seed"], "hydra.run.dir=outputs/robopretrain/${algo.name}_seed${seed}: Interpolation key 'seed' not found"),
    (["seed=${oc.env:ROBOPRETRAIN_NO_SUCH_VAR}", "output_dir=/tmp/s${seed}"],  # through another setting (a review)
     "output_dir=/tmp/s${seed}: Environment variable 'ROBOPRETRAIN_NO_SUCH_VAR' not found"),
])
def test_a_run_folder_that_does_not_resolve_is_one_line(capsys, monkeypatch, overrides, said):
    """An unset ${oc.env:VAR} in the run folder, or a removed setting its default name uses (~seed): Hydra resolved
    it before the command's code and failed formatting its own error (a 20-line traceback; a new user's finding).
    Set, the variable resolves; a resolver of a running Hydra (${now:...}) is left to Hydra."""
    from robopretrain.cli import validate_overrides

    monkeypatch.delenv("ROBOPRETRAIN_NO_SUCH_VAR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        validate_overrides("robopretrain", overrides)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: config: {said} (the run folder's name must resolve"), err
    monkeypatch.setenv("ROBOPRETRAIN_NO_SUCH_VAR", "/tmp")
    validate_overrides("robopretrain", ["output_dir=${oc.env:ROBOPRETRAIN_NO_SUCH_VAR}/run"])
    validate_overrides("pipeline", ["run_dir=runs/${now:%H}"])


def test_an_unknown_group_option_lists_the_options_without_hydras_search_path(capsys):
    """``algo=foo`` printed Hydra's config search path (its own package and file URLs) after the options."""
    from robopretrain.cli import validate_overrides

    with pytest.raises(SystemExit) as exit_info:
        validate_overrides("robopretrain", ["algo=foo"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "Could not find 'algo/foo'" in err and "calql" in err and "search path" not in err


@pytest.mark.parametrize("config_name, override, expected", [
    ("reward_model", "algo=iql", "'algo' is not a setting of reward_model (robopretrain/configs/reward_model.yaml): "
                                 "it has no option groups; its sections data, obs, labels, teacher, model, relabel"),
    ("finetune", "algoo=iql",
     "'algoo' is not a setting of finetune (robopretrain/configs/finetune.yaml); did you mean 'algo'?"),
    # names of the first releases: the new name, not an unrelated close match (image_keys -> 'image_size')
    ("pipeline", "image_keys=[agentview_image]", "'image_keys' is not a setting of pipeline "
                                                 "(robopretrain/configs/pipeline.yaml); it is obs.rgb now"),
    ("pipeline", "num_tasks=13", "; it is obs.num_tasks now"),
    ("robopretrain", "obs_keys=[proprio]", "; it is obs.low_dim now"),
    ("evaluate", "task=PressLitButton", "'task' is not a setting of evaluate (robopretrain/configs/evaluate.yaml); "
                                       "it is target now"),
    # dotted keys (the commonest typo): Hydra's '+train.step' hint led to a second refusal, one round trip later
    ("robopretrain", "train.step=10", "'train.step' is not a setting of robopretrain: train has no 'step'; did you "
                                      "mean 'train.steps'?"),
    ("finetune", "online.env_step=2", "online has no 'env_step'; did you mean 'online.env_steps'?"),
    ("robopretrain", "trian.steps=10", "it has no section 'trian'; did you mean 'train'"),
    ("robopretrain", "train.zzz=1", "train has no 'zzz'; its settings there: calibration_batch, checkpoint_every"),
    # a mapping whose keys are passed on (the docs' +encoder.kwargs...): '+' is the fix, not "adds nothing"
    ("robopretrain", "encoder.kwargs.out_dim=64", "encoder.kwargs has no 'out_dim': encoder.kwargs passes its keys on "
                                                  "to what it configures (none set by default), so a new key needs "
                                                  "Hydra's '+': +encoder.kwargs.out_dim=<value>"),
    ("pipeline", "data.videos.play_fraction=0", "data.videos passes its keys on to what it configures (set there now: "
                                               "num_clips, tasks), so a new key needs Hydra's '+': "
                                               "+data.videos.play_fraction=<value>"),
    ("pipeline", "stage2.algo_overrides.actor_bc_weight=2", "stage2.algo_overrides passes its keys on"),
])
def test_a_key_the_config_lacks_is_not_answered_with_hydras_plus_hint(capsys, config_name, override, expected):
    """``reward_model algo=iql`` told the user to append ``+algo=iql`` (Hydra's hint), which adds a group the reward
    model never reads; the line says the key is no setting there and what the config has instead."""
    from robopretrain.cli import missing_group_problem, validate_overrides

    with pytest.raises(SystemExit) as exit_info:
        validate_overrides(config_name, [override])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert expected in err and "+algo" not in err and "To append" not in err
    assert missing_group_problem("robopretrain", "Could not find 'algo/foo'") is None  # other messages: Hydra's


@pytest.mark.parametrize("override, expected", [
    ("episodes_per_task=abc", "Error merging override episodes_per_task=abc: Value 'abc' of type 'str' could not be "
                              "converted to Integer"),
    ("progress=false", "'progress' is not a setting of metaworld_collect (a structured config): its settings are "
                       "tasks, target, episodes_per_task"),
    ("episodes_per_tsk=3", "did you mean 'episodes_per_task'?"),
])
def test_a_structured_configs_refusal_says_why(capsys, override, expected):
    """A dataclass config (Meta-World's collector) answered ``episodes_per_task=abc`` with Hydra's bare "Error merging
    override", and an unknown key with Hydra's '+' hint (the '+' key is then refused by the dataclass)."""
    from robopretrain.cli import validate_overrides

    importlib.import_module("robopretrain.envs.metaworld_collect")  # stores its config in Hydra's ConfigStore

    with pytest.raises(SystemExit) as exit_info:
        validate_overrides("metaworld_collect", [override])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert expected in err and "To append" not in err


@pytest.mark.parametrize("config_name, override, reads", [
    ("video_pretrain", "seed=3", ["logger", "objective"]),
    ("evaluate", "eval_seed=3", ["gap"]),
    ("robopretrain", "seed=3", ["algo", "data", "dr", "gap", "logger"]),
    ("reward_model", "seed=3", []),  # its own template lists no groups at all
    ("paper", "seed=3", ["logger"]),  # a preset's groups come through the config it extends (it listed none)
])
def test_help_lists_only_the_config_groups_the_entry_point_reads(capsys, config_name, override, reads):
    """``video_pretrain.train --help`` listed stage 2's algo, data, dr and gap, ``robopretrain.evaluate --help`` also
    objective and logger: Hydra lists every folder of configs/, groups these entry points refuse or never read."""
    from robopretrain.cli import run_hydra

    def main() -> None:
        raise AssertionError("--help ran the entry point")

    run_hydra(main, config_name, ["--help", override])
    out = capsys.readouterr().out
    assert "is powered by Hydra" in out and override.replace("=", ": ") in out  # the header, the config as overridden
    groups = out.split("== Config ==")[0].split("== Configuration groups ==")[-1]
    assert [line.split(":")[0] for line in groups.splitlines() if ": " in line] == reads, out


@pytest.mark.parametrize("config_name, built", [
    ("pipeline", ["paper", "testbed", "testbed_combination"]),
    ("testbed", ["testbed_combination"]),  # through the file it extends
    ("robopretrain", []),
])
def test_help_names_the_presets_built_on_the_config(capsys, config_name, built):
    """The pipeline's --help named none of its sizes (testbed, paper), the README's main way to run it."""
    from robopretrain.cli import run_hydra

    def main() -> None:
        raise AssertionError("--help ran the entry point")

    run_hydra(main, config_name, ["--help"])
    out = capsys.readouterr().out.split("== Config ==")[0]
    listed = out.split("== Presets ==")[1].splitlines()[3:] if built else []
    assert [line.split(":")[0] for line in listed if line] == built and ("== Presets ==" in out) == bool(built)
    if built:
        assert "(--config-name NAME)" in out and "testbed_combination: The testbed preset for targets that " \
            "combine known skills in a new sequence" in out


def test_hydras_run_folder_follows_the_run_folder_setting():
    """``output_dir=X`` (the pipeline: ``run_dir=X``) put the run's files in X but Hydra's log and ``.hydra/`` in
    ``outputs/<stage>/...`` under the working folder."""
    from robopretrain.cli import hydra_run_dir_override

    assert hydra_run_dir_override("robopretrain", ["algo=bc", "output_dir=/r/a", "seed=1"]) == "hydra.run.dir=/r/a"
    assert hydra_run_dir_override("finetune", ["output_dir=/r/a", "++output_dir='/r/b c'"]) == "hydra.run.dir='/r/b c'"
    assert hydra_run_dir_override("pipeline", ["run_dir=runs/x"]) == "hydra.run.dir=runs/x"
    assert hydra_run_dir_override("pipeline", ["output_dir=runs/x"]) is None  # not the pipeline's setting
    assert hydra_run_dir_override("robopretrain", ["output_dir=/r/a", "hydra.run.dir=/h"]) is None  # given: kept
    assert hydra_run_dir_override("robopretrain", ["output_dir=null"]) is None
    assert hydra_run_dir_override("collect", ["output=/r/demos.hdf5"]) is None  # a file, not a run folder
    home = os.path.expanduser("~")  # quoted as the refusal of a bare ~ says: Hydra made a folder "~" here
    assert hydra_run_dir_override("robopretrain", ['output_dir="~/x"']) == f'hydra.run.dir="{home}/x"'
    assert hydra_run_dir_override("robopretrain", ["output_dir='~/x y'"]) == f'hydra.run.dir="{home}/x y"'
    from robopretrain.cli import hydra_record_override

    assert hydra_record_override(["output_dir=/r/a"], when=0.0).startswith("hydra.output_subdir=.hydra/19")
    assert hydra_record_override(["output_dir=/r/a", "hydra.output_subdir=null"]) is None  # given: kept


def test_a_torchrun_rank_but_the_first_writes_no_config_record(monkeypatch):
    """Each rank wrote its own .hydra/<date>_<pid> record of one command (two records of one run)."""
    from robopretrain.cli import hydra_record_override

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert hydra_record_override(["output_dir=/r/a"]) == "hydra.output_subdir=null"
    monkeypatch.setenv("RANK", "0")
    assert hydra_record_override(["output_dir=/r/a"]).startswith("hydra.output_subdir=.hydra/")


def test_each_sweep_job_keeps_the_config_record_of_every_command(monkeypatch):
    """A rerun of a sweep whose job 0 is refused (another algo for its folder) rewrote sw/0/.hydra/config.yaml: the
    record said bc of a folder holding iql checkpoints. Each command's jobs now record in a folder of their own."""
    import sys

    from robopretrain.cli import run_hydra

    seen = []
    argv = ["prog", "-m", "algo=iql,bc", "hydra.sweep.dir=sw"]
    monkeypatch.setattr(sys, "argv", list(argv))
    run_hydra(lambda: seen.append(list(sys.argv)), "robopretrain", argv[1:])
    assert seen[0][:4] == argv and seen[0][4].startswith("hydra.output_subdir=.hydra/") and len(seen[0]) == 5
    monkeypatch.setattr(sys, "argv", [*argv, "hydra.output_subdir=rec"])  # given: kept
    run_hydra(lambda: seen.append(list(sys.argv)), "robopretrain", [*argv[1:], "hydra.output_subdir=rec"])
    assert seen[1] == [*argv, "hydra.output_subdir=rec"]


def test_a_stage_run_with_output_dir_writes_nothing_under_the_working_folder(tmp_path):
    cwd, out = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-m", "robopretrain.train", f"output_dir={out}",
                           f"data.path={tmp_path / 'missing.hdf5'}"], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 2 and "missing.hdf5" in proc.stderr, proc.stderr[-2000:]
    assert list(cwd.iterdir()) == []
    records = list((out / ".hydra").glob("*/config.yaml"))
    assert len(records) == 1 and (out / "train.log").is_file()
    assert f"output_dir: {out}" in records[0].read_text()
    # a second command on the run folder (refused here, as a rerun with a changed setting or a busy folder is)
    # records its config beside the first one's, not over it (it rewrote the run's record: seed 7 for a seed-0 run)
    again = subprocess.run([sys.executable, "-m", "robopretrain.train", f"output_dir={out}", "seed=7",
                            f"data.path={tmp_path / 'missing.hdf5'}"], cwd=cwd, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert again.returncode == 2
    assert "seed: 0" in records[0].read_text() and len(list((out / ".hydra").glob("*/config.yaml"))) == 2
    for args in ([f"output_dir={out}", "--cfg", "job"], ["--cfg", "job", f"output_dir={out}"]):  # the override added
        shown = subprocess.run([sys.executable, "-m", "robopretrain.train", *args], cwd=cwd, capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert shown.returncode == 0 and f"output_dir: {out}" in shown.stdout, shown.stderr[-2000:]  # beside its own


def test_a_sweep_launcher_whose_plugin_is_missing_is_one_line(results):
    """``-m hydra/launcher=slurm`` without Hydra's submitit plugin (not a dependency): Hydra's multi-line error and
    exit code 1 (docs/scaling.md's sweep as written)."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
        pytest.skip("the submitit launcher is installed here")
    r = results["robopretrain-finetune-launcher"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("error: hydra/launcher=slurm needs Hydra's launcher plugin, which is "
                                                 "not installed: pip install hydra-submitit-launcher (into this "
                                                 "environment)")


@pytest.mark.parametrize("config_name", ["finetune", "evaluate", "pipeline", "collect", "reward_model"])
def test_a_one_process_entry_point_under_torchrun_is_refused_in_one_line(monkeypatch, capsys, config_name):
    """Stage 3 under torchrun ran once per rank on one folder; a rank was refused by the run-folder lock naming its
    own sibling. Every rank now says what is wrong (torchrun stops the others at the first one's exit)."""
    from robopretrain.cli import EXIT_BAD_INPUT, refuse_torchrun

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    refuse_torchrun(config_name)  # WORLD_SIZE alone: a cluster script's, maybe, for other commands
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")  # torchrun's
    with pytest.raises(SystemExit) as stop:
        refuse_torchrun(config_name)
    assert stop.value.code == EXIT_BAD_INPUT
    assert "runs in one process, not data-parallel: it was started as one of 2 processes" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        refuse_torchrun(config_name)
    assert "runs in one process" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")
    refuse_torchrun(config_name)  # one process: nothing to say


def test_a_sweep_in_data_parallel_processes_is_refused_before_its_first_job(tmp_path):
    """torchrun ... -m robopretrain.train -m seed=0,1: the second job hung joining the process group again (about
    every other try), its ranks deaf to SIGTERM (a new user's finding). One line, exit 2, nothing run; one process
    (WORLD_SIZE 1) or a single job under torchrun is not refused (data_parallel_sweep)."""
    import subprocess
    import sys

    from robopretrain.cli import data_parallel_sweep

    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout, whatever the cwd
    proc = subprocess.run([sys.executable, "-m", "robopretrain.train", "-m", "seed=0,1", "data.path=none.hdf5",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: a sweep (-m) in data-parallel processes "
                                                           "(WORLD_SIZE=2, from torchrun or exported): each job")
    assert not (tmp_path / "sweep").exists()
    assert data_parallel_sweep("robopretrain", multirun=False) is None
    assert data_parallel_sweep("finetune", multirun=True) is None  # (refused under torchrun anyway, in one line)


@pytest.mark.parametrize("config_name", ["video_pretrain", "robopretrain"])
def test_the_data_parallel_stages_are_not_refused_under_torchrun(monkeypatch, config_name):
    from robopretrain.cli import refuse_torchrun

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    refuse_torchrun(config_name)


def test_an_entry_points_command_line_is_refused_under_torchrun(monkeypatch, capsys):
    """The check is wired into run_hydra, before any of the command's work."""
    from robopretrain.cli import EXIT_BAD_INPUT, run_hydra

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    ran = []
    with pytest.raises(SystemExit) as stop:
        run_hydra(lambda: ran.append(1), "finetune", argv=["seed=1"])
    assert stop.value.code == EXIT_BAD_INPUT and ran == []
    assert "finetune.train runs in one process" in capsys.readouterr().err


def test_a_rank_whose_peer_stopped_says_so_in_one_line(monkeypatch, capsys):
    """One torchrun rank stopping with its one error line left the other with gloo's RuntimeError: a traceback and
    "Connection closed by peer" after the real error, and torchrun could name that rank as the failure."""
    from robopretrain.cli import friendly_errors

    @friendly_errors
    def collective() -> None:
        raise RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [::1]:4")

    @friendly_errors
    def other_bug() -> None:
        raise RuntimeError("a bug of ours")

    import robopretrain.workers

    monkeypatch.delenv("ROBOPRETRAIN_TRACEBACK", raising=False)
    monkeypatch.setattr(robopretrain.workers, "end_with_launcher", lambda: False)  # (this process has no launcher)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as stop:
        collective()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 1 and last.startswith("error: rank 0: its exchange with another process of this "
                                                    "torchrun job failed, most likely because that one stopped")
    assert "Connection closed" in last and "ROBOPRETRAIN_TRACEBACK=1" in last
    with pytest.raises(RuntimeError, match="a bug of ours"):  # any other error keeps its traceback
        other_bug()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="Connection closed by peer"):  # one process: not a peer's
        collective()


def test_a_sweep_interrupted_in_its_launcher_says_one_line(monkeypatch, capsys):
    """Ctrl-C on a joblib sweep: the KeyboardInterrupt reaches the launcher in the command's own process (outside
    any job), where joblib's traceback came before the jobs' own lines."""
    from robopretrain.cli import EXIT_INTERRUPTED, run_hydra

    def launcher() -> None:
        raise KeyboardInterrupt

    monkeypatch.delenv("ROBOPRETRAIN_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["robopretrain-train", "-m", "seed=0,1"])
    with pytest.raises(SystemExit) as stop:
        run_hydra(launcher, "robopretrain", argv=["-m", "seed=0,1"])
    assert stop.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C); each job's run folder")


def test_pyopengls_note_on_its_absent_accelerator_is_not_every_commands_first_log_line():
    """``[OpenGL.acceleratesupport][INFO] - No OpenGL_accelerate module loaded`` opened every command's log, read as
    a missing dependency (a new user's finding); the entry points' shared module keeps that logger at WARNING."""
    import logging

    import robopretrain.cli

    assert robopretrain.cli.EXIT_BAD_INPUT == 2  # (every entry point imports the module)
    assert logging.getLogger("OpenGL.acceleratesupport").getEffectiveLevel() == logging.WARNING
