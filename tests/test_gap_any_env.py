"""A gap on the user's own gym env: its two sides as constructor arguments (``{env_kwargs: {...}}``), which stage 3
trains in (source), judges in and collects DARC's target transitions in (target), and which ``robopretrain.evaluate
gap=`` runs as its gap/source and gap/target conditions."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import _fake_envs as fake
from _stages import stage2_config, stage3_config
from finetune.transfer.gap import Gap
from finetune.transfer.target_data import TARGET_SEED_OFFSET
from robopretrain.envs.target import Target, make_env, split_env_kwargs
from robopretrain.evaluation import EVAL_SEED

TARGET = {"name": "gain_reach", "env_id": "_fake_envs:GainReachEnv", "task_id": 0, "max_episode_steps": 8,
          "obs_map": {"observations": "observation"}, "reward": "sparse", "env_kwargs": {"gain": 0.8}}
GAP = {"name": "gain_gap", "kind": "physics", "source": {"env_kwargs": {"gain": 1.0}},
       "target": {"env_kwargs": {"gain": 0.5}}, "target_transitions": 12}


def test_env_kwargs_of_a_randomization_add_to_the_targets_own():
    assert split_env_kwargs({"env_kwargs": {"gain": 0.5}}) == ("none", {"gain": 0.5})
    assert split_env_kwargs({"level": "train", "env_kwargs": {"gain": 0.5}}) == ({"level": "train"}, {"gain": 0.5})
    assert split_env_kwargs("eval_hard") == ("eval_hard", {})
    with pytest.raises(ValueError, match="env_kwargs=0.5; expected a mapping"):
        split_env_kwargs({"env_kwargs": 0.5})
    target = Target(**TARGET)
    for randomization, gain in (("none", 0.8), ({"env_kwargs": {"gain": 0.5}}, 0.5)):
        env = make_env(target, randomization=randomization)
        assert env.unwrapped.GAIN == gain
        env.close()
    assert target.env_kwargs == {"gain": 0.8}  # the target itself is unchanged
    with pytest.raises(ValueError, match="applies to sim_envs tasks only"):
        make_env(target, randomization={"level": "train", "env_kwargs": {"gain": 0.5}})


def test_a_gap_of_constructor_arguments_applies_to_any_env():
    gap = Gap.from_mapping(GAP)
    assert gap.enabled and gap.sets_env_kwargs and gap.any_env  # kind physics is the user's label: not checked
    mixed = Gap.from_mapping({**GAP, "target": {"level": "eval_hard", "factors": ["friction"],
                                                "env_kwargs": {"gain": 0.5}}})
    assert mixed.sets_env_kwargs and not mixed.any_env
    sim = Gap.from_mapping({"name": "f", "kind": "physics", "source": "none",
                            "target": {"level": "eval_hard", "factors": ["friction"]}})
    assert not sim.sets_env_kwargs and not sim.any_env
    with pytest.raises(ValueError, match=r"not a randomization setting .*give \{env_kwargs: \{\.\.\.\}\}"):
        Gap.from_mapping({**GAP, "target": {"gain": 0.5}})


@pytest.fixture(scope="module")
def gain_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    from robopretrain.train import run as stage2

    root = tmp_path_factory.mktemp("gap_any_env")
    data = fake.write_units_d4rl(root / "demos.hdf5", episodes=4, env_cls=fake.NarrowUnitsReachEnv)
    ckpt = stage2(stage2_config(data, root / "s2", algo="iql", steps=2, obs={"low_dim": ["observations"]},
                                data_cfg={"cache_dir": str(root / "cache"),
                                          "action_bounds": {"low": [-0.1, -0.1], "high": [0.1, 0.1]}}))
    return Path(ckpt), data


def test_stage3_trains_in_the_source_and_judges_and_collects_in_the_target(gain_ckpt, tmp_path):
    from finetune.train import run as finetune

    ckpt, data = gain_ckpt
    fake.GainReachEnv.resets.clear()
    cfg = stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=16,
                        data_cfg={"cache_dir": str(tmp_path / "cache")}, gap=GAP,
                        transfer={"darc": {"enabled": True}})
    finetune(cfg)
    checks, episodes = fake.GainReachEnv.resets[:2], fake.GainReachEnv.resets[2:]
    assert checks == [(1.0, 0), (0.5, 0)]  # check_env_fits on both sides before anything runs
    by_kind: dict[str, set[float]] = {"train": set(), "eval": set(), "target_data": set()}
    for gain, seed in episodes:
        kind = "target_data" if seed >= TARGET_SEED_OFFSET else "eval" if seed >= EVAL_SEED else "train"
        by_kind[kind].add(gain)
    assert by_kind == {"train": {1.0}, "eval": {0.5}, "target_data": {0.5}}, by_kind
    assert (tmp_path / "s3" / "transfer" / "darc_target.npz").is_file()


def test_stage3_refuses_a_sim_envs_gap_on_a_gym_target_naming_the_env_kwargs_form(gain_ckpt, tmp_path):
    from finetune.train import run as finetune

    ckpt, data = gain_ckpt
    cfg = stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=4,
                        data_cfg={"cache_dir": str(tmp_path / "cache")},
                        gap={"name": "f", "kind": "physics", "source": "none",
                             "target": {"level": "eval_hard", "factors": ["friction"]}})
    with pytest.raises(ValueError, match=r"gap=f: .*target 'gain_reach' is gym: .*env_kwargs"):
        finetune(cfg)


def test_evaluate_runs_the_gaps_two_sides_on_a_gym_target(gain_ckpt, tmp_path, monkeypatch, caplog):
    import logging

    from hydra import compose, initialize_config_dir

    import robopretrain.evaluate as evaluate
    from robopretrain.evaluate import evaluate_robustness

    noted = []  # the time-limit note judges by the limit the built env enforces (the target's 8 steps here)
    monkeypatch.setattr(evaluate, "limit_change_note", lambda target, ckpt, env_limit=None: noted.append(env_limit))

    ckpt, _ = gain_ckpt
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"checkpoint={ckpt}", f"output_dir={tmp_path / 'ev'}", "episodes=2",
                                             "workers=0", "progress=false", "plot=false", "video.enabled=false"])
    cfg.target = OmegaConf.create(TARGET)
    cfg.gap = OmegaConf.create(GAP)
    fake.GainReachEnv.resets.clear()
    with caplog.at_level(logging.WARNING):
        info = evaluate_robustness(cfg)
    assert "acts in slot" not in caplog.text  # a one-slot agent: the data's task name (the file's) is no other task
    assert {f: sorted(levels) for f, levels in info["factors"].items()} == {"gap": ["source", "target"]}
    assert "success" in info["nominal"]
    gains = [g for g, seed in fake.GainReachEnv.resets if seed >= EVAL_SEED]
    assert gains == [0.8, 0.8, 1.0, 1.0, 0.5, 0.5]  # nominal (the target's own), gap/source, gap/target in order
    assert noted == [8]
    checked = [g for g, seed in fake.GainReachEnv.resets if seed < EVAL_SEED]  # check_env_fits before any episode
    assert sorted(set(checked)) == [0.5, 0.8, 1.0]
    rows = {"nominal": info["nominal"], **{f"gap/{k}": v for k, v in info["factors"]["gap"].items()}}
    assert {k: row["env_kwargs"] for k, row in rows.items()} == {  # what each condition's env was built with
        "nominal": {"gain": 0.8}, "gap/source": {"gain": 1.0}, "gap/target": {"gain": 0.5}}


@pytest.mark.parametrize("transfer, message", [
    ({"epopt": {"enabled": True}}, r"transfer.epopt needs physics randomization .*target 'gain_reach' is gym, whose "
                                   r"physics the toolkit does not draw.*transfer.epopt.env_draws_physics=true"),
    ({"darc": {"enabled": True}}, r"transfer.darc needs a gap with target_transitions >= 1 \(e.g. on target "
                                  r"'gain_reach' \(gym\) a gap of its constructor arguments: .*env_kwargs"),
])
def test_a_transfer_tool_refused_on_a_gym_target_says_what_applies_there(gain_ckpt, tmp_path, transfer, message):
    from finetune.train import run as finetune

    ckpt, data = gain_ckpt
    gap = GAP if "epopt" in transfer else {"name": "none"}
    cfg = stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=4,
                        data_cfg={"cache_dir": str(tmp_path / "cache")}, gap=gap, transfer=transfer)
    with pytest.raises(ValueError, match=message):
        finetune(cfg)


def test_stage2_says_a_gap_without_dann_does_nothing_there(gain_ckpt, tmp_path, caplog):
    import logging

    from robopretrain.train import run as stage2

    _, data = gain_ckpt
    cfg = stage2_config(data, tmp_path / "s2", algo="bc", steps=2, obs={"low_dim": ["observations"]},
                        data_cfg={"cache_dir": str(tmp_path / "cache")}, gap=GAP)
    with caplog.at_level(logging.WARNING, logger="robopretrain.train"):
        stage2(cfg)
    assert "gap=gain_gap: stage 2 uses a gap only for transfer.dann's target frames" in caplog.text


MIXED = {**GAP, "target": {"level": "eval_hard", "factors": ["friction"], "env_kwargs": {"gain": 0.5}}}


def test_a_gap_with_sim_envs_randomization_is_refused_on_a_gym_target(gain_ckpt, tmp_path):
    from hydra import compose, initialize_config_dir

    from finetune.train import run as finetune
    from robopretrain.evaluate import evaluate_robustness

    ckpt, data = gain_ckpt
    cfg = stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=4,
                        data_cfg={"cache_dir": str(tmp_path / "cache")}, gap=MIXED)
    with pytest.raises(ValueError, match=r"gap=gain_gap: a side mixes sim_envs randomization with env_kwargs .*"
                                         r"only env_kwargs apply: drop the other keys"):
        finetune(cfg)
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        ev = compose("evaluate", overrides=[f"checkpoint={ckpt}", f"output_dir={tmp_path / 'ev'}", "episodes=1",
                                            "workers=0", "progress=false", "plot=false", "video.enabled=false"])
    ev.target, ev.gap = OmegaConf.create(TARGET), OmegaConf.create(MIXED)
    with pytest.raises(ValueError, match=r"factors \['gap'\] apply to sim_envs targets only: remove the gap .*env_kwargs"):
        evaluate_robustness(ev)
    nominal_mapping = {**GAP, "target": {"level": "none", "num_distractors": 0, "env_kwargs": {"gain": 0.5}}}
    assert Gap.from_mapping(nominal_mapping).any_env  # what make_env runs on any env, any_env accepts


@pytest.mark.parametrize("side", ["source", "target"])
def test_a_constructor_argument_the_env_refuses_names_the_gap_side_it_came_from(gain_ckpt, tmp_path, side):
    """Both sides' bad keyword read the same, "the target's env_kwargs among them", though the target had none."""
    from hydra import compose, initialize_config_dir

    from finetune.train import run as finetune
    from robopretrain.evaluate import evaluate_robustness

    ckpt, data = gain_ckpt
    bad = {**GAP, side: {"env_kwargs": {"gravity": 9.8}}}
    said = rf"gap.{side}=\{{'env_kwargs': \{{'gravity': 9.8\}}\}}: env .*unexpected keyword argument 'gravity'"
    with pytest.raises(ValueError, match=said):
        finetune(stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=4,
                               data_cfg={"cache_dir": str(tmp_path / "cache")}, gap=bad))
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        ev = compose("evaluate", overrides=[f"checkpoint={ckpt}", f"output_dir={tmp_path / 'ev'}", "episodes=1",
                                            "workers=0", "progress=false", "plot=false", "video.enabled=false"])
    ev.target, ev.gap = OmegaConf.create(TARGET), OmegaConf.create(bad)
    with pytest.raises(ValueError, match=said):
        evaluate_robustness(ev)
    # the target's own misspelt argument, beside a good gap: not put on the gap's side
    with pytest.raises(ValueError, match="unexpected keyword argument 'gravty'") as err:
        finetune(stage3_config(ckpt, tmp_path / f"s3_{side}", {**TARGET, "demos": str(data),
                                                              "env_kwargs": {"gain": 0.8, "gravty": 1}},
                               algo="iql", env_steps=4, data_cfg={"cache_dir": str(tmp_path / "cache")}, gap=GAP))
    assert not str(err.value).startswith("gap.")


def test_stage3_warns_that_dr_is_not_applied_but_the_gap_is(gain_ckpt, tmp_path, caplog):
    import logging

    from finetune.train import run as finetune

    ckpt, data = gain_ckpt
    fake.GainReachEnv.resets.clear()
    cfg = stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=8,
                        data_cfg={"cache_dir": str(tmp_path / "cache")}, gap=GAP, dr="train_all",
                        eval_randomization="eval_hard")
    with caplog.at_level(logging.WARNING):
        finetune(cfg)
    assert "training episodes use gap=gain_gap's source, evaluation episodes its target" in caplog.text
    assert "every episode is nominal" not in caplog.text
    evals = {g for g, seed in fake.GainReachEnv.resets[2:] if EVAL_SEED <= seed < TARGET_SEED_OFFSET}
    assert evals == {0.5}  # eval_randomization, not applied here, does not replace the gap's target


def test_epopt_runs_on_an_env_that_draws_its_own_physics(gain_ckpt, tmp_path, caplog):
    import json
    import logging

    from finetune.train import run as finetune

    ckpt, data = gain_ckpt
    drawn = {**TARGET, "env_id": "_fake_envs:DrawnGainReachEnv", "env_kwargs": {}, "demos": str(data)}
    epopt = {"enabled": True, "epsilon": 0.5, "batch_episodes": 2, "warmup_batches": 0, "env_draws_physics": True}
    with caplog.at_level(logging.WARNING):
        finetune(stage3_config(ckpt, tmp_path / "s3", drawn, algo="iql", env_steps=32,
                               data_cfg={"cache_dir": str(tmp_path / "cache")}, transfer={"epopt": epopt}))
    # (it was warned once per episode of the second batch: an undecided episode has no rows to look at)
    assert "no scalar dr_params" not in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "s3" / "epopt_episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(0.5 <= r["physics"]["gain"] < 1.5 for r in rows)  # the env's own draws, logged
    assert len({r["physics"]["gain"] for r in rows}) == 4  # two batches of two episodes: the worst of each kept
    assert sum(r["kept"] for r in rows[:2]) == 1 and sum(r["kept"] for r in rows[2:]) == 1


def test_a_refused_resume_collects_no_target_data(gain_ckpt, tmp_path):
    """A rerun with another gap target is refused before DARC collects target transitions (a real robot's, maybe)
    into the run's cache; it used to collect them, overwrite the cache, then be refused."""
    from finetune.train import run as finetune
    from robopretrain.run_fingerprint import ResumeMismatchError

    ckpt, data = gain_ckpt

    def config(gain: float):
        return stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=8,
                             data_cfg={"cache_dir": str(tmp_path / "cache")},
                             gap={**GAP, "target": {"env_kwargs": {"gain": gain}}},
                             transfer={"darc": {"enabled": True}})

    finetune(config(0.5))
    cache = tmp_path / "s3" / "transfer" / "darc_target.npz"
    before = cache.read_bytes()
    fake.GainReachEnv.resets.clear()
    with pytest.raises(ResumeMismatchError, match=r"gap.target.env_kwargs.gain: 0.5 -> 0.6"):
        finetune(config(0.6))
    assert cache.read_bytes() == before
    assert not [seed for _, seed in fake.GainReachEnv.resets if seed >= TARGET_SEED_OFFSET]


def test_epopt_on_an_env_without_dr_params_says_it_logs_no_physics(gain_ckpt, tmp_path, caplog):
    import logging

    from finetune.train import run as finetune

    ckpt, data = gain_ckpt
    epopt = {"enabled": True, "batch_episodes": 2, "warmup_batches": 0, "env_draws_physics": True}
    with caplog.at_level(logging.WARNING):
        finetune(stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=16,
                               data_cfg={"cache_dir": str(tmp_path / "cache")}, transfer={"epopt": epopt},
                               dr="train_all"))
    assert caplog.text.count("has no scalar dr_params") == 1
    assert "the env draws its own physics (transfer.epopt.env_draws_physics)" in caplog.text
    assert "every episode is nominal" not in caplog.text


def test_reset_physics_reads_a_user_envs_float_int_and_bool_parameters():
    import numpy as np

    from robopretrain.collector import reset_physics

    info = {"dr_params": {"gain": np.array([0.5, 0.7]), "level": np.array([2, 3]), "on": np.array([True, False]),
                          "name": np.array(["a", "b"]), "_gain": np.array([True, True])}}
    assert reset_physics(info, 1) == {"gain": 0.7, "level": 3.0, "on": 0.0}


def test_a_gap_whose_sides_are_the_same_is_warned_about(gain_ckpt, tmp_path, caplog):
    import logging

    from finetune.train import run as finetune

    ckpt, data = gain_ckpt
    same = {**GAP, "source": {"env_kwargs": {"gain": 0.5}}}
    with caplog.at_level(logging.WARNING):
        finetune(stage3_config(ckpt, tmp_path / "s3", {**TARGET, "demos": str(data)}, algo="iql", env_steps=4,
                               data_cfg={"cache_dir": str(tmp_path / "cache")}, gap=same))
    assert "gap=gain_gap: its source and target are the same" in caplog.text


def test_stage3_names_an_env_limit_shorter_than_the_demos(gain_ckpt, tmp_path, caplog):
    """The time-limit note reads the env's own limit (here Meta-World's max_path_length attribute, 2 steps) where
    the target states none: the demos are longer, so episodes cannot finish as they did."""
    import logging

    from finetune.train import run as finetune

    ckpt, data = gain_ckpt
    target = {**TARGET, "env_id": "_fake_envs:ShortGainReachEnv", "max_episode_steps": None, "demos": str(data)}
    with caplog.at_level(logging.WARNING):
        finetune(stage3_config(ckpt, tmp_path / "s3", target, algo="iql", env_steps=4,
                               data_cfg={"cache_dir": str(tmp_path / "cache")}))
    assert "target 'gain_reach': episodes stop at 2 steps (the env's own time limit), but " in caplog.text
    assert "acts in slot" not in caplog.text  # a one-slot agent: the data's task name (the file's) is no other task
