"""Bad input gets one clear line on stderr, exit code 2, and no traceback, from every entry point.

Stages 1, 2 and 3 and the robustness evaluation are run as ``python -m <module>``. All commands start together in
one fixture (they are mostly interpreter start-up) and each test checks one. Sizes are checked against each other
before any training: data whose action size differs from the checkpoint's, an env whose proprio size differs, a
target task id outside the one-hot each end in one line naming the key and both sizes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from robopretrain.cli import one_line
from robopretrain.guards import NonFiniteLossError, check_finite, finite_metrics_hook
from sim_envs.video_writer import write_mp4

REPO = Path(__file__).resolve().parents[1]
TINY_ALGO = ["algo.actor_hidden=[32,32]", "algo.critic_hidden=[32,32]", "algo.n_actions=2", "algo.batch_size=32"]

import sim_envs  # noqa: E402

NUM_SIM_TASKS = len(sim_envs.TASKS)  # the one-hot size of a stage-2 agent on sim_envs data


# --------------------------------------------------------------------------------------------- bad files
def rewrite_demos(src: Path, dst: Path, edit) -> Path:
    """Copy ``src`` to ``dst`` and apply ``edit(demo_group)`` to every demo."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for name in list(f["data"]):
            edit(f["data"][name])
    return dst


def replace(group: h5py.Group, key: str, array: np.ndarray) -> None:
    del group[key]
    group.create_dataset(key, data=array)


def shrink_to_one_step(demo: h5py.Group) -> None:
    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            items.append(name)
    items: list[str] = []
    demo.visititems(visit)
    for key in items:
        replace(demo, key, demo[key][:1])
    demo.attrs["num_samples"] = 1


def add_images(dtype, shape_tail) -> callable:
    def edit(demo: h5py.Group) -> None:
        n = int(demo.attrs["num_samples"])
        for part in ("obs", "next_obs"):
            demo[part].create_dataset("agentview_image", data=np.zeros((n, *shape_tail), dtype=dtype))
    return edit


def write_manifest(root: Path, rel: str) -> Path:
    root.mkdir(parents=True)
    (root / "manifest.csv").write_text(f"path,num_frames,text\n{rel},8,a clip\n")
    return root


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, tuple[list[str], str]]:
    """name -> (command, text the last stderr line must contain)."""
    import _fake_envs as fake
    from sim_envs.collect import collect

    from robopretrain.train import run as stage2

    tmp = tmp_path_factory.mktemp("bad")
    cfg = OmegaConf.load(REPO / "configs" / "collect.yaml")
    cfg.merge_with({"tasks": ["Reach"], "episodes_per_task": 2, "render_images": False, "output": str(tmp / "ok.hdf5")})
    good = Path(collect(cfg, progress=False))
    # a finished stage-2 run on proprio+object, reused as an "incompatible" checkpoint
    run = tmp / "s2run"
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        stage2(compose("robopretrain", overrides=[
            f"data.path={good}", f"output_dir={run}", "train.steps=2", "train.eval_every=100", "train.eval_episodes=1",
            "train.checkpoint_every=2", "train.calibration_batch=16", "train.progress=false",
            "train.tensorboard=false", "num_threads=1", *TINY_ALGO]))
    # a stage-2 run on another robot (robot0_eef_pos 3, gripper 2, 7-D actions), for a target env of other sizes
    robot = fake.write_robosuite_demos(tmp / "robot.hdf5", 2)
    robot_run = tmp / "robot_run"
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        stage2(compose("robopretrain", overrides=[
            f"data.path={robot}", f"output_dir={robot_run}", f"obs.low_dim=[{fake.EEF},{fake.GRIPPER}]",
            "train.steps=2", "train.eval_targets=[]", "train.checkpoint_every=2", "train.calibration_batch=16",
            "train.progress=false", "train.tensorboard=false", "num_threads=1", *TINY_ALGO]))
    wider_env = ("target={name: reach, env_id: '_fake_envs:RobosuiteLikeEnv', task_id: 0, env_kwargs: {eef_dim: 4}, "
                 f"demos: {robot}}}")

    (tmp / "text.hdf5").write_text("this is not an HDF5 file\n")
    (tmp / "truncated.hdf5").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    actions = rewrite_demos(good, tmp / "actions.hdf5", lambda d: replace(d, "actions", d["actions"][()] * 3.0))
    nan = rewrite_demos(good, tmp / "nan.hdf5", lambda d: d["obs/proprio"].__setitem__((0, 0), np.nan))
    one_step = rewrite_demos(good, tmp / "one_step.hdf5", shrink_to_one_step)
    with h5py.File(one_step, "r+") as f:
        f["data"].attrs["total"] = len(f["data"])
    # next_obs one row short (a writer that left out the last step's): a file without next_obs is read through a
    # copy that derives it (robopretrain.data.resize_robomimic), this one is refused
    short_next_obs = rewrite_demos(good, tmp / "short_next_obs.hdf5",
                                   lambda d: replace(d, "next_obs/proprio", d["next_obs/proprio"][:-1]))
    actions7 = rewrite_demos(good, tmp / "actions7.hdf5", lambda d: replace(
        d, "actions", np.concatenate([d["actions"][()], np.zeros((len(d["actions"]), 3), np.float32)], 1)))
    zero_rewards = rewrite_demos(good, tmp / "zero_rewards.hdf5", lambda d: (
        replace(d, "rewards", np.zeros_like(d["rewards"][()])), replace(d, "dones", np.zeros_like(d["dones"][()]))))
    rgb_images = rewrite_demos(good, tmp / "rgb_images.hdf5", add_images(np.uint8, (16, 16, 3)))
    float_images = rewrite_demos(good, tmp / "float_images.hdf5", add_images(np.float32, (16, 16, 3)))
    two_channel_images = rewrite_demos(good, tmp / "two_channel_images.hdf5", add_images(np.uint8, (16, 16, 2)))
    missing_clip = write_manifest(tmp / "missing_clip", "nowhere.mp4")
    outside = write_manifest(tmp / "outside", "../escape.mp4")
    write_mp4(tmp / "escape.mp4", np.zeros((8, 16, 16, 3), np.uint8))
    clips = tmp / "clips"
    clips.mkdir()
    rows = ["path,num_frames,text"]
    for i in range(3):
        write_mp4(clips / f"c{i}.mp4", np.random.default_rng(i).integers(0, 255, (10, 16, 16, 3), dtype=np.uint8))
        rows.append(f"c{i}.mp4,10,clip")
    (clips / "manifest.csv").write_text("\n".join(rows) + "\n")
    s1_other = tmp / "s1_other"
    (s1_other / "checkpoints").mkdir(parents=True)
    torch.save({"format": "video_pretrain.train_checkpoint", "step": 3, "objective": {}, "optimizer": {},
                "torch_rng": torch.get_rng_state(), "history": "{}",
                "identity": json.dumps({"objective": "icvf", "encoder": "impala", "encoder_kwargs": {},
                                        "image_size": 16, "objective_options": {}})},
               s1_other / "checkpoints" / "last.pt")
    empty = tmp / "empty"
    empty.mkdir()

    def s2(*overrides: str) -> list[str]:
        return [sys.executable, "-m", "robopretrain.train", f"hydra.run.dir={tmp}/h",
                "train.progress=false", "train.tensorboard=false", "train.steps=2", *TINY_ALGO, *overrides]

    def s1(*overrides: str) -> list[str]:
        return [sys.executable, "-m", "video_pretrain.train", f"hydra.run.dir={tmp}/h", "progress=false",
                "tensorboard=false", "steps=2", "image_size=16", "batch_size=2", *overrides]

    def s3(*overrides: str) -> list[str]:
        return [sys.executable, "-m", "finetune.train", f"hydra.run.dir={tmp}/h", f"output_dir={tmp}/ft",
                "online.progress=false", "online.tensorboard=false", "online.env_steps=2", "dr=none", *overrides]

    def ev(*overrides: str) -> list[str]:
        return [sys.executable, "-m", "robopretrain.evaluate", f"hydra.run.dir={tmp}/h", "progress=false",
                f"output_dir={tmp}/ev", *overrides]

    out = f"output_dir={tmp}/out"
    found = {
        "non_hdf5_dataset": (s2(f"data.path={tmp / 'text.hdf5'}", out), "not a readable HDF5 file"),
        "truncated_dataset": (s2(f"data.path={tmp / 'truncated.hdf5'}", out), "truncated.hdf5"),
        "missing_obs_key": (s2(f"data.path={good}", "obs.low_dim=[proprio,gripper_cam]", out),
                            "observation key 'gripper_cam' (low_dim part 'gripper_cam') not found"),
        "actions_outside_range": (s2(f"data.path={actions}", "data.actions=keep", out), "values outside [-1, 1]"),
        "one_step_episode": (s2(f"data.path={one_step}", out), "empty or one-step episode"),
        "nan_in_data": (s2(f"data.path={nan}", out), "contains NaN or inf"),
        "incompatible_checkpoint_stage2": (s2(f"data.path={good}", "obs.low_dim=[proprio]", f"output_dir={run}"),
                                           "checkpoint does not fit this config"),
        "incompatible_checkpoint_stage3": (s3(f"checkpoint={run}", "target=Reach", f"data.path={good}", "algo=iql"),
                                           "a calql checkpoint cannot continue as iql"),
        "data_action_size_differs_stage3": (s3(f"checkpoint={run}", "target=Reach", f"data.path={actions7}"),
                                            "actions7.hdf5: actions have 7 dims; the agent has 4"),
        "data_action_size_differs_stage2_init": (
            s2(f"data.path={actions7}", f"init={run}", f"output_dir={tmp}/init"),
            f"the agent has 4-D actions, the data {actions7} 7-D"),
        "env_proprio_size_differs_stage3": (
            s3(f"checkpoint={robot_run}", wider_env),
            f"low_dim part '{fake.EEF}': the env of target 'reach' has size 4, the agent has 3"),
        "target_task_id_outside_one_hot_stage3": (
            s3(f"checkpoint={run}", f"target={{name: Reach, task_id: {NUM_SIM_TASKS}}}", f"data.path={good}"),
            f"target 'Reach': task_id {NUM_SIM_TASKS} does not fit the agent's task one-hot of size {NUM_SIM_TASKS}"),
        "zero_rewards_with_successes_calql": (s2(f"data.path={zero_rewards}", out),
                                              "no positive reward in the selected data although 2 of 2 episodes"),
        "zero_rewards_with_successes_iql": (
            [sys.executable, "-m", "robopretrain.train", f"hydra.run.dir={tmp}/h", "train.progress=false",
             "train.steps=2", "algo=iql", "algo.actor_hidden=[32]", "algo.critic_hidden=[32]",
             "algo.value_hidden=[32]", "algo.batch_size=32", f"data.path={zero_rewards}", out],
            "Set data.rewards_from_success=true to rebuild the reward from ep_meta"),
        "unknown_config_key_stage2": (s2(f"data.path={good}", "train.stepz=3", out),
                                      "train has no 'stepz'; did you mean 'train.steps'?"),
        "out_of_range_value_stage2": (s2(f"data.path={good}", "train.eval_every=0", out),
                                      "robopretrain config: train.eval_every=0; expected an integer >= 1"),
        "nan_loss_stage2": (s2(f"data.path={good}", "algo.reward_scale=1e38", f"output_dir={tmp}/nan"),
                            "at step 2 (losses are checked only at logged, evaluated and checkpointed steps: it went "
                            "bad after the start); the run stopped before checkpointing it"),
        "image_keys_not_in_data_stage2": (
            s2(f"data.path={good}", "obs.rgb=[agentview_image]", "obs.low_dim=[proprio]", out),
            "observation key 'agentview_image' (rgb part 'agentview_image') not found"),
        "encoder_mode_without_checkpoint_stage2": (
            s2(f"data.path={rgb_images}", "obs.rgb=[agentview_image]", "encoder.mode=frozen", out),
            "encoder.mode=frozen needs encoder.checkpoint"),
        "image_wrong_dtype": (s1(f"data.path={float_images}", f"output_dir={tmp}/s1a"),
                              "expected uint8 images (N, H, W, 3), or grey (N, H, W) / (N, H, W, 1), got float32 (N, "
                              "16, 16, 3); float: write (frames * 255).round().astype(np.uint8) for frames in [0, 1] "
                              # a command that converts (robopretrain.data.resize_robomimic has no command line)
                              "(python -m robopretrain.data.convert SRC DST --image-size S writes such a copy)"),
        "image_wrong_shape": (s1(f"data.path={two_channel_images}", f"output_dir={tmp}/s1b"), "expected uint8 images"),
        "manifest_missing_file": (s1(f"data.path={missing_clip}", f"output_dir={tmp}/s1c"), "does not exist"),
        "manifest_outside_folder": (s1(f"data.path={outside}", f"output_dir={tmp}/s1d"), "leaves the manifest's folder"),
        "out_of_range_value_stage1": (s1(f"data.path={clips}", "batch_size=0", f"output_dir={tmp}/s1e"),
                                      "batch_size=0; expected an integer >= 1"),
        "unknown_config_key_stage1": (s1(f"data.path={clips}", "lr_schedule=cosine"), "'lr_schedule' is not a setting of video_pretrain"),
        "incompatible_checkpoint_stage1": (s1(f"data.path={clips}", f"output_dir={s1_other}", "data.valid_fraction=0"),
                                           "was written by a run with other settings"),
        "evaluate_not_a_checkpoint": (ev(f"checkpoint={empty}"), "neither a checkpoint folder"),
        "evaluate_out_of_range_value": (ev(f"checkpoint={run}", "episodes=0"), "episodes=0; expected an integer >= 1"),
        "config_group_given_a_value": (ev(f"checkpoint={run}", "video=false"),
                                       "video: is a group of settings (enabled, size, max_frames, fps), not a single value"),
        # a new user's mistakes (stop 47): a device this machine lacks, before any work starts, in every stage
        "device_not_a_device_stage2": (s2(f"data.path={good}", "device=gpu", out),
                                       "robopretrain config: device='gpu' is not a device name"),
        "device_unavailable_stage3": (s3(f"checkpoint={run}", "target=Reach", "device=cuda:7"), "finetune config: "
                                      "device='cuda:7' but " + ("this machine has" if torch.cuda.is_available()
                                                                else "CUDA is not available")),
        "device_unavailable_evaluate": (ev(f"checkpoint={run}", "device=cuda:7"), "evaluate config: device='cuda:7'"),
        "finetune_without_checkpoint": (s3("target=Reach"), "finetune config: checkpoint is not set"),
        # a mistyped key is named before the missing checkpoint (both said "checkpoint is not set" first)
        "unknown_key_without_checkpoint_stage3": (s3("+online.stpes=5"), "finetune config: unknown key(s) online.stpes"),
        "unknown_key_without_checkpoint_evaluate": (ev("+episods=5"), "evaluate config: unknown key(s) episods"),
        "negative_max_demos": (s2(f"data.path={good}", "data.max_demos=-1", out),
                               "robopretrain config: data.max_demos=-1; expected an integer >= 1"),
        "mix_fraction_out_of_range": (s2(f"data.path={good}", f"data.mix.path={good}", "data.mix.fraction=1.5", out),
                                      "data.mix.fraction=1.5; expected a number in [0, 1]"),
        "short_next_obs": (s2(f"data.path={short_next_obs}", out),
                           "next_obs/proprio: 11 rows, but the demo's num_samples attribute and its actions say 12"),
    }
    # each case writes its own run folder: the cases run two at a time, and one folder has one writer at a time
    shared = {f"output_dir={tmp}/{folder}" for folder in ("out", "ft", "ev", "init")}
    return {name: ([f"output_dir={tmp}/runs/{name}" if a in shared else a for a in cmd], message)
            for name, (cmd, message) in found.items()}


@pytest.fixture(scope="module")
def results(cases, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every command of ``cases`` run to its end, each in its own process (forked by tests/_cli_runner.py)."""
    outdir = tmp_path_factory.mktemp("cli_out")
    spec = [{"name": name, "module": cmd[2], "args": cmd[3:]} for name, (cmd, _) in cases.items()]
    assert all(cmd[:2] == [sys.executable, "-m"] for cmd, _ in cases.values())
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # the custom target env is tests/_fake_envs.py
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    runner = subprocess.run([sys.executable, str(REPO / "tests" / "_cli_runner.py"), str(outdir), "2"], cwd=REPO,
                            env=env, input=json.dumps(spec), capture_output=True, text=True, timeout=1200)
    assert runner.returncode == 0, runner.stderr[-3000:]
    done = {}
    for name, (cmd, _) in cases.items():
        rc = int((outdir / f"{name}.rc").read_text())
        done[name] = subprocess.CompletedProcess(cmd, rc, (outdir / f"{name}.out").read_text(),
                                                 (outdir / f"{name}.err").read_text())
    return done


CASE_NAMES = ["non_hdf5_dataset", "truncated_dataset", "missing_obs_key", "actions_outside_range", "one_step_episode",
              "nan_in_data", "incompatible_checkpoint_stage2", "incompatible_checkpoint_stage3",
              "data_action_size_differs_stage3", "data_action_size_differs_stage2_init",
              "env_proprio_size_differs_stage3", "target_task_id_outside_one_hot_stage3",
              "zero_rewards_with_successes_calql", "zero_rewards_with_successes_iql",
              "unknown_config_key_stage2", "out_of_range_value_stage2", "nan_loss_stage2",
              "image_keys_not_in_data_stage2", "encoder_mode_without_checkpoint_stage2", "image_wrong_dtype", "image_wrong_shape", "manifest_missing_file",
              "manifest_outside_folder", "out_of_range_value_stage1", "unknown_config_key_stage1",
              "incompatible_checkpoint_stage1", "evaluate_not_a_checkpoint", "evaluate_out_of_range_value",
              "config_group_given_a_value", "device_not_a_device_stage2", "device_unavailable_stage3",
              "device_unavailable_evaluate", "finetune_without_checkpoint", "negative_max_demos",
              "unknown_key_without_checkpoint_stage3", "unknown_key_without_checkpoint_evaluate",
              "mix_fraction_out_of_range", "short_next_obs"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_clear_line(name, cases, results):
    proc = results[name]
    expected = cases[name][1]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"rc {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("error: "), lines[-1]
    assert expected in lines[-1], lines[-1]


def test_every_case_is_checked(cases):
    assert sorted(cases) == sorted(CASE_NAMES)


# --------------------------------------------------------------------------------------------- guards
def test_check_finite_names_the_loss_and_step():
    check_finite({"critic_loss": 0.5, "actor_loss": torch.tensor(-1.0)}, step=3)
    with pytest.raises(NonFiniteLossError, match=r"loss 'actor_loss' is nan at step 17"):
        check_finite({"critic_loss": 0.5, "actor_loss": torch.tensor(float("nan"))}, step=17)
    with pytest.raises(NonFiniteLossError, match=r"'q' is inf at step 2"):
        check_finite({"q": torch.tensor([1.0, float("inf")])}, step=2)
    assert issubclass(NonFiniteLossError, FloatingPointError)
    # checked every log_every steps: "at step 100" read as the step it went bad, "its last good checkpoint is kept"
    # where no checkpoint was written
    with pytest.raises(NonFiniteLossError, match=r"at step 300 \(losses are checked only at logged, evaluated and "
                                                 r"checkpointed steps: it went bad after step 200, where they were last "
                                                 r"finite\); the run stopped before checkpointing it, so a rerun "
                                                 r"resumes from the newest checkpoint if the run wrote one") as err:
        check_finite({"value_loss": float("nan")}, step=300, since=200)
    assert "last good checkpoint is kept" not in str(err.value)
    with pytest.raises(NonFiniteLossError) as err:  # the step before was checked: nothing unchecked to name
        check_finite({"value_loss": float("nan")}, step=100, since=99)
    assert "went bad after" not in str(err.value)


def test_stage23_hook_checks_only_losses():
    metrics = {"critic_loss": 1.0, "q_mean": float("nan")}  # a NaN diagnostic is reported, not fatal
    assert finite_metrics_hook(5, metrics) is metrics
    assert finite_metrics_hook(6, {}) == {}
    with pytest.raises(NonFiniteLossError, match="'cql_loss' is inf at step 9"):
        finite_metrics_hook(9, {"cql_loss": float("inf")})


def test_stage1_nan_loss_stops_before_the_step_and_keeps_the_checkpoint(tmp_path):
    """A NaN in stage 1's loss raises NonFiniteLossError naming the loss and step; the weights stay unchanged."""
    from robopretrain.nets.encoders import make_encoder
    from video_pretrain.objectives import make_objective
    from video_pretrain.train import train_step

    objective = make_objective("tcn", make_encoder("small_conv", 16), {})
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=1e-3)

    def nan_loss(images, batch):
        loss, info = type(objective).compute_loss(objective, images, batch)
        return loss * float("nan"), info

    objective.compute_loss = nan_loss
    batch = {"frames": torch.zeros(2, 3, 16, 16, 3, dtype=torch.uint8)}
    with pytest.raises(NonFiniteLossError, match=r"'total_loss' is nan at step 7"):
        train_step(objective, optimizer, batch, 0, torch.Generator().manual_seed(0), None, step=7)
    for k, v in objective.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_one_line_joins_lines():
    assert one_line("Could not override 'x'.\nTo append use +x=1\n  Key 'x'   is not in struct") == (
        "Could not override 'x'. To append use +x=1; Key 'x' is not in struct")


# --------------------------------------------------------------------------------------------- config ranges
def compose_stage(name: str, *overrides: str):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_default_stage2_and_stage3_configs_pass_the_range_checks():
    from robopretrain.config_checks import validate_offline_config, validate_online_config

    for algo in ("calql", "cql", "iql", "bc", "dt", "td3_bc", "awac", "bcq", "por", "rebrac"):
        validate_offline_config(compose_stage("robopretrain", f"algo={algo}"))
        validate_online_config(compose_stage("finetune", f"algo={algo}"))
    # no evaluation targets: 0 evaluation episodes is the same request, not an error
    validate_offline_config(compose_stage("robopretrain", "train.eval_targets=[]", "train.eval_episodes=0"))


@pytest.mark.parametrize("stage, override, message", [
    ("robopretrain", "train.eval_every=0", "robopretrain config: train.eval_every=0; expected an integer >= 1"),
    ("robopretrain", "train.steps=0", "robopretrain config: train.steps=0; expected an integer >= 1"),
    ("robopretrain", "train.eval_episodes=0", "train.eval_episodes=0; expected an integer >= 1 (no evaluation: "),
    ("robopretrain", ["train.eval_targets=[]", "train.eval_episodes=-1"], "train.eval_episodes=-1; expected an integer >= 0"),
    ("robopretrain", "algo.batch_size=0", "algo.batch_size=0; expected an integer >= 1"),
    ("robopretrain", "algo.discount=1.5", "algo.discount=1.5; expected a number in (0, 1]"),
    ("robopretrain", "obs.low_dim=[]", "obs.low_dim=[] and obs.rgb=[]; expected at least one observation part"),
    ("robopretrain", "encoder.augment_pad=-1", "robopretrain config: encoder.augment_pad=-1; expected an integer >= 0"),
    ("finetune", "online.offline_ratio=2", "finetune config: online.offline_ratio=2; expected a number in [0, 1]"),
    ("finetune", "online.utd=0", "online.utd=0; expected an integer >= 1"),
    ("finetune", "algo.qf_lr=-1", "algo.qf_lr=-1; expected a positive number"),
    # keys added with + that no config defines and no stage reads (a new user's +obs.normalise=false trained on)
    ("robopretrain", "+obs.normalise=false", "robopretrain config: unknown key(s) obs.normalise; valid keys: "
                                             "obs: low_dim, min_std, normalize, num_tasks, rgb"),
    # a malformed box was refused only after the data was converted or collected
    ("robopretrain", "data.action_bounds={low: [1, 1], high: [0, 0]}",
     "robopretrain config: data.action_bounds: high < low in dimension(s) [0, 1]"),
    ("finetune", "data.action_bounds={low: [nan], high: [1]}", "finetune config: data.action_bounds: low and high "
     "must be finite"),
    ("robopretrain", "data.action_bounds=[0, 1]", "robopretrain config: data.action_bounds=[0, 1]: expected a mapping"),
    ("robopretrain", "+data.obsmap={a: b}",
     "robopretrain config: unknown key(s) data.obsmap; valid keys: data: action_bounds, actions"),
    ("finetune", "+data.maks=train", "finetune config: unknown key(s) data.maks"),
    # each stage's own keys (a review: any config's key passed anywhere), nested groups too
    ("robopretrain", "+data.mix.fracton=0.5", "unknown key(s) data.mix.fracton; valid keys: data.mix: actions, "
                                              "cache_dir, format, fraction, mask,"),
    ("finetune", "+data.mix={path: x.hdf5}", "finetune config: unknown key(s) data.mix"),
    ("robopretrain", "+data.stride=3", "robopretrain config: unknown key(s) data.stride"),
    ("finetune", "+obs.min_std=0.05", "finetune config: obs.min_std: this stage has no obs settings (its observation "
                                      "settings are the checkpoint's, from stage 2); remove them"),
    # top-level keys a stage does not read, and unknown keys in its own groups of settings
    ("robopretrain", "+checkpoint=runs/x", "robopretrain config: unknown key(s) checkpoint (this stage does not read "
                                           "them); valid keys: algo, data, device,"),  # not the defaults list
    # stage 1 took any key and trained on (a misspelt section too)
    ("video_pretrain", "+bogus=1", "video_pretrain config: unknown key(s) bogus (this stage does not read them); "
                                   "valid keys: adam_eps, augment_pad,"),
    ("video_pretrain", "+data.strid=2", "video_pretrain config: unknown key(s) data.strid; valid keys: data: "),
    ("finetune", "+encoder.mode=frozen", "finetune config: unknown key(s) encoder (this stage does not read them)"),
    ("finetune", "+train.steps=5", "finetune config: unknown key(s) train"),
    ("finetune", "+online.stpes=5", "finetune config: unknown key(s) online.stpes; valid keys: online: asynchronous,"),
    # stage 3's transfer options and gap (a new user's epsilon=true ran as 1.0, target_batch=1.5 as 1, darc.scale=-1
    # rewarded the source-only transitions, dann.hidden=64.5 was a traceback)
    ("finetune", "transfer.epopt.epsilon=true", "finetune config: transfer.epopt.epsilon=True; expected a number in "
                                                "(0, 1]"),
    ("finetune", "transfer.epopt.enabled=1", "transfer.epopt.enabled=1; expected true or false"),
    ("finetune", "transfer.dann.target_batch=1.5", "transfer.dann.target_batch=1.5; expected an integer >= 0"),
    # a network's layer list given one number or a word: a TypeError traceback (actor_hidden=256: [256] or twice?)
    ("robopretrain", "algo.actor_hidden=256", "robopretrain config: algo.actor_hidden=256; expected a list of layer "
                                              "widths (integers >= 1), e.g. [256, 256]"),
    ("robopretrain", "algo.critic_hidden=abc", "algo.critic_hidden='abc'; expected a list of layer widths"),
    ("robopretrain", ("algo=bc", "algo.actor_hidden=[0]"), "algo.actor_hidden=[0]; expected a list of layer widths"),
    ("robopretrain", ("algo=iql", "algo.value_hidden=64"), "algo.value_hidden=64; expected a list of layer widths"),
    # the Decision Transformer's own settings (a new user's max_ep_len=0 and attention_dropout=1.5 were tracebacks,
    # target_return=nan reached the env as NaN actions)
    ("robopretrain", ("algo=dt", "algo.max_ep_len=0"), "algo.max_ep_len=0; expected an integer >= 1"),
    ("robopretrain", ("algo=dt", "algo.attention_dropout=1.5"), "algo.attention_dropout=1.5; expected a number in "
                                                                 "[0, 1)"),
    ("robopretrain", ("algo=dt", "algo.target_return=nan"), "algo.target_return=nan; expected a number"),
    ("robopretrain", ("algo=dt", "algo.num_layers=0"), "algo.num_layers=0; expected an integer >= 1"),
    ("robopretrain", ("algo=dt", "algo.reward_scale=0"), "algo.reward_scale=0 makes every return-to-go 0"),
    ("robopretrain", ("algo=dt", "algo.num_heads=3"), "algo.embed_dim=128 is not divisible by algo.num_heads=3"),
    ("video_pretrain", "objective.options.hidden=256", "objective.options.hidden=256; expected a list of layer widths"),
    # a word where a number belongs: int()'s message alone, which named no setting
    ("video_pretrain", "steps=abc", "video_pretrain config: steps='abc'; expected an integer >= 0"),
    # ICVF's sampling: a misspelt key trained with the default; a bad mix was refused only after the clips loaded,
    # without the key; VIP / TCN, which have none, took any
    ("video_pretrain", "+objective.sampling.p_goal_is_intnet=0.9", "video_pretrain config: objective.sampling: "
     "unknown key(s) ['p_goal_is_intnet']; ICVF's are goal_mix, intent_mix, p_goal_is_intent"),
    ("video_pretrain", "objective.sampling.goal_mix.random=0.5", "video_pretrain config: objective.sampling.goal_mix: "
     "GoalMix: random=0.5, future=0.5, current=0.2; expected non-negative probabilities that sum to 1"),
    ("video_pretrain", "objective.sampling.p_goal_is_intent=1.5", "objective.sampling.p_goal_is_intent=1.5; expected "
     "a probability in [0, 1]"),
    ("video_pretrain", ["objective=tcn", "+objective.sampling.p_goal_is_intent=0.9"], "video_pretrain config: "
     "objective.sampling={'p_goal_is_intent': 0.9}: tcn draws its frames one way and has no sampling settings"),
    ("video_pretrain", "lr=abc", "video_pretrain config: lr='abc'; expected a positive number"),
    ("video_pretrain", "data.stride=abc", "video_pretrain config: data.stride='abc'; expected an integer >= 1"),
    ("robopretrain", "algo.reward_bias=abc", "robopretrain config: algo.reward_bias='abc'; expected a number"),
    ("robopretrain", "obs.min_std=abc", "robopretrain config: obs.min_std='abc'; expected a number >= 0"),
    ("evaluate", "episodes=abc", "evaluate config: episodes='abc'; expected an integer >= 1"),
    ("finetune", "transfer.dann.hidden=64.5", "transfer.dann.hidden=64.5; expected a list of layer widths"),
    ("finetune", "transfer.dann.hidden=[64,0]", "transfer.dann.hidden=[64, 0]; expected a list of layer widths"),
    ("finetune", "transfer.darc.scale=-1", "transfer.darc.scale=-1; expected a number >= 0"),
    ("finetune", "transfer.darc.hidden=[32]", "transfer.darc.hidden=[32]; expected an integer >= 1"),
    ("finetune", ("gap=friction_low", "gap.target_transitions=2.5"), "gap.target_transitions=2.5; expected an integer"),
    ("finetune", "online.progress=3", "online.progress=3; expected true or false"),
    # stage 2's flags were bool() of the word: compile=off compiled, tensorboard=no wrote tb/ (a user's session)
    ("robopretrain", "train.compile=off", "robopretrain config: train.compile='off'; expected true or false"),
    ("robopretrain", "train.tensorboard=no", "train.tensorboard='no'; expected true or false"),
    ("robopretrain", "train.cuda_graph=off", "train.cuda_graph='off'; expected true or false"),
    ("robopretrain", "train.progress=0", "train.progress=0; expected true or false"),
    ("finetune", "online.num_envs=0", "finetune config: online.num_envs=0; expected an integer >= 1"),
    # 0 env steps wrote no checkpoint: the pipeline's evaluation then failed on every rerun (stage 3 "done")
    ("finetune", "online.env_steps=0", "finetune config: online.env_steps=0; expected an integer >= 1"),
    ("evaluate", "+episods=5", "evaluate config: unknown key(s) episods"),
    # a negative seed reached gymnasium's reset (a traceback); one past 2**32 numpy's
    ("evaluate", "eval_seed=-5", "evaluate config: eval_seed=-5; expected an integer in [0, 2**32 - episodes]"),
    ("evaluate", "eval_seed=4294967290", "eval_seed=4294967290; expected an integer in [0, 2**32 - episodes]"),
    ("evaluate", "eval_seed=1.5", "eval_seed=1.5; expected an integer"),
    ("evaluate", "+video.bogus=1", "evaluate config: unknown key(s) video.bogus; valid keys: video:"),
    # a factor or level named twice ran twice, its records doubled under one row's episode count
    ("evaluate", ["checkpoint=x", "select=[friction,friction]"],
     "select=['friction', 'friction'] names friction more than once"),
    ("evaluate", ["checkpoint=x", "select=[mass]", "factors.mass.levels=[eval_hard,eval_hard]"],
     "factors.mass.levels=['eval_hard', 'eval_hard'] names a level more than once"),
    # the interval is computed after every episode: a bad seed failed only then, unnamed (null: a traceback)
    ("evaluate", ["bootstrap.method=percentile", "bootstrap.seed=-1"],
     "evaluate config: bootstrap.seed=-1; expected an integer >= 0"),
    ("evaluate", ["bootstrap.method=percentile", "bootstrap.seed=null"],
     "evaluate config: bootstrap.seed=None; expected an integer >= 0"),
    ("evaluate", ["bootstrap.method=percentile", "bootstrap.seed=1.5"],
     "evaluate config: bootstrap.seed=1.5; expected an integer >= 0"),
    ("evaluate", ["bootstrap.method=percentile", "bootstrap.resamples=true"],
     "bootstrap.resamples=True; expected an integer >= 1"),
    ("evaluate", "bootstrap.confidence=abc", "bootstrap.confidence='abc'; expected a number in (0, 1)"),
    ("evaluate", "video.fps=abc", "evaluate config: video.fps='abc'; expected a positive number"),
    ("evaluate", "video.size=8", "evaluate config: video.size=8; expected an integer in [16, 512]"),
    # a misspelt key of a factor was ignored: the factor ran its default levels
    ("evaluate", ["checkpoint=x", "+factors.friction.levles=[eval_hard]"],
     "factors.friction has key(s) ['levles'] that no factor reads; expected randomize and levels"),
])
def test_out_of_range_values_are_named(stage, override, message):
    from robopretrain.config_checks import validate_offline_config, validate_online_config

    from robopretrain.evaluate import validate_config

    from video_pretrain.train import validate_config as validate_stage1_config

    check = {"robopretrain": validate_offline_config, "finetune": validate_online_config,
             "evaluate": validate_config, "video_pretrain": validate_stage1_config}[stage]
    with pytest.raises(ValueError) as err:
        check(compose_stage(stage, *([override] if isinstance(override, str) else override)))
    assert message in str(err.value)


def test_a_config_loaded_from_its_yaml_keeps_defaults_and_passes():
    """benchmarks/robustness_dr.py loads configs/evaluate.yaml with OmegaConf.load (its defaults list stays)."""
    from omegaconf import OmegaConf

    from robopretrain.evaluate import validate_config

    cfg = OmegaConf.load(REPO / "configs" / "evaluate.yaml")
    cfg.pop("hydra", None)
    cfg.merge_with({"checkpoint": "x", "episodes": 5})
    validate_config(cfg)
    cfg.bootstrap.seed = None  # the Wilson interval (the default) reads no resampling seed: as before, fine
    validate_config(cfg)


def test_group_replaced_by_value_finds_the_first_shape_change():
    from robopretrain.cli import group_replaced_by_value

    default = {"a": 1, "video": {"enabled": True, "fps": 20}, "tasks": [1, 2], "opt": None, "hydra": {"x": {}}}
    assert group_replaced_by_value(default, default) is None
    assert group_replaced_by_value(default, {**default, "opt": {"k": 1}, "video": None, "hydra": {"x": 3}}) is None
    msg = group_replaced_by_value(default, {**default, "video": False})
    assert msg.startswith("video: is a group of settings (enabled, fps)") and "video.enabled=..." in msg
    assert "expects a list" in group_replaced_by_value(default, {**default, "tasks": {"k": 1}})
    dr = {"image": {"randomization": {"level": "train", "factors": ["lighting"]}}}
    assert group_replaced_by_value(dr, {"image": {"randomization": "none"}}) is None  # a level name is fine
    assert "is a group" in group_replaced_by_value(dr, {"image": {"randomization": 3}})
    nested = {"outer": {"inner": {"k": 1}}}
    assert group_replaced_by_value(nested, {"outer": {"inner": 5}}).startswith("outer.inner: is a group")
