"""The offline actor's BC term as a user sets it (``algo.actor_bc_weight``, ``algo.actor_bc_filter``): bad values named
at start, the success filter refused only where it acts, and a filter that keeps no transition said out loud."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]


def _stage(name: str, *overrides: str):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("override, message", [
    ("algo.actor_bc_weight=-1", "algo.actor_bc_weight=-1; expected a number >= 0"),
    ("algo.actor_bc_weight=abc", "algo.actor_bc_weight='abc'; expected a number >= 0"),
    ("algo.actor_bc_weight=inf", "algo.actor_bc_weight=inf; expected a number >= 0"),
    ("algo.actor_bc_filter=sucess", "algo.actor_bc_filter='sucess'; expected none or success"),
    ("algo.bc_steps=-5", "algo.bc_steps=-5; expected an integer >= 0"),
])
def test_bad_bc_term_values_are_named_before_any_data_is_read(override, message):
    from robopretrain.config_checks import validate_offline_config, validate_online_config

    with pytest.raises(ValueError) as err:
        validate_offline_config(_stage("robopretrain", "algo=cql", override))
    assert message in str(err.value)
    with pytest.raises(ValueError) as err:
        validate_online_config(_stage("finetune", override))
    assert message in str(err.value)
    validate_offline_config(_stage("robopretrain", "algo=cql", "algo.actor_bc_weight=4",
                                   "algo.actor_bc_filter=success"))


def test_the_success_filter_with_dense_rewards_is_named_at_start():
    from robopretrain.config_checks import validate_offline_config

    dense = ("algo=cql", "algo.actor_bc_filter=success", "algo.sparse_reward=false")
    with pytest.raises(ValueError, match="algo.actor_bc_filter=success with algo.sparse_reward=false"):
        validate_offline_config(_stage("robopretrain", *dense, "algo.actor_bc_weight=4"))
    validate_offline_config(_stage("robopretrain", *dense))  # no BC term: the filter filters nothing


def test_the_success_filter_is_refused_for_dense_rewards_only_where_the_bc_term_is_on():
    """``+stage3.algo_overrides.actor_bc_weight=0`` (the docs' plain Cal-QL actor) leaves the pipeline's common
    ``actor_bc_filter: success`` in place: with a dense-reward target that must not be refused (nothing is filtered)."""
    from robopretrain.algos.cql import CQL, CQLConfig
    from robopretrain.build import reward_settings
    from robopretrain.envs.target import as_target

    dense = as_target({"name": "Reach", "reward": "dense"})
    off = {"actor_bc_weight": 0.0, "actor_bc_filter": "success", "discount": 0.99}
    assert reward_settings(off, dense).sparse is False
    with pytest.raises(ValueError, match="actor_bc_filter=none"):
        reward_settings({**off, "actor_bc_weight": 4.0}, dense)
    CQL(3, 2, CQLConfig(actor_bc_weight=0.0, actor_bc_filter="success", sparse_reward=False,
                        actor_hidden=(8,), critic_hidden=(8,)))
    with pytest.raises(ValueError, match="sparse_reward=true"):
        CQL(3, 2, CQLConfig(actor_bc_weight=4.0, actor_bc_filter="success", sparse_reward=False,
                            actor_hidden=(8,), critic_hidden=(8,)))


class _Data:
    def __init__(self, mc: np.ndarray, task_ids: np.ndarray | None = None) -> None:
        self.mc, self.task_ids = mc, task_ids

    def arrays(self):
        return {"mc_returns": self.mc, "observations": {} if self.task_ids is None else {"task_id": self.task_ids}}


def _returns(successes: list[bool], length: int = 5, scale: float = 10.0, bias: float = -5.0) -> np.ndarray:
    from robopretrain.data.returns import returns_to_go, sparse_negative_reward

    rewards, dones, ids = [], [], []
    for i, ok in enumerate(successes):
        r = np.zeros(length)
        r[-1] = float(ok)
        rewards.append(r * scale + bias)
        dones.append(np.eye(length)[-1] * float(ok))
        ids.append(np.full(length, i))
    return returns_to_go(np.concatenate(rewards), np.concatenate(dones), 0.99, episode_ids=np.concatenate(ids),
                         sparse_negative_reward=sparse_negative_reward(scale, bias))


def test_a_success_filter_that_keeps_no_transition_warns(caplog):
    from robopretrain.build import report_success_filter

    algo = {"name": "cql", "actor_bc_weight": 4.0, "actor_bc_filter": "success", "reward_scale": 10.0,
            "reward_bias": -5.0, "discount": 0.99}
    with caplog.at_level(logging.INFO, logger="robopretrain.build"):
        assert report_success_filter(algo, _Data(_returns([False, False])), "fail.hdf5") == 0.0
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "fail.hdf5" in warned[0].getMessage() and "BC term is 0" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="robopretrain.build"):
        assert report_success_filter(algo, _Data(_returns([True, False, False, True])), "mix.hdf5") == 0.5
        assert report_success_filter({**algo, "actor_bc_weight": 0.0}, _Data(_returns([False])), "x") is None
        assert report_success_filter({**algo, "actor_bc_filter": "none"}, _Data(_returns([False])), "x") is None
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("overrides, message", [
    (["+stage2.algo_overrides.actr_bc_weight=0"], "stage2.algo_overrides: actr_bc_weight is not a setting of "
                                                  "stage2.algo=cql"),
    (["stage2.algo=iql", "+stage2.algo_overrides.actor_bc_weight=4"], "actor_bc_weight is not a setting of "
                                                                      "stage2.algo=iql"),
    (["+algo_overrides.actr_bc_weight=0"], "algo_overrides: actr_bc_weight is a setting of no algorithm"),
    (["+stage3.algo_overrides.actor_bc_weight=-1"], "stage3.algo_overrides.actor_bc_weight=-1; expected a number"),
    (["algo_overrides.actor_bc_filter=sucess"], "algo_overrides.actor_bc_filter='sucess'; expected none or success"),
    (["stage2.algo=cq"], "stage2.algo=cq: no such algorithm"),
])
def test_the_pipeline_refuses_a_bad_algo_override_before_any_stage(tmp_path, overrides, message):
    """A typo in a stage's own overrides used to fail only when that stage built its agent (after data and stage 1);
    one in the common overrides was dropped by every stage without a word."""
    from robopretrain import pipeline

    cfg = _stage("pipeline", "encoder.mode=scratch", *overrides)
    with pytest.raises(ValueError) as err:
        pipeline.run_pipeline(cfg, tmp_path / "run")
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_the_pipeline_accepts_its_per_stage_recipes():
    """The common CQL keys stay legal when no stage runs CQL (they reach none), and a stage's own keys of its
    algorithm pass."""
    from robopretrain import pipeline

    for overrides in ([], ["stage2.algo=bc", "adapt.algo=iql", "stage3.algo=iql", "+stage3.algo_overrides.beta=2"],
                      ["+stage3.algo_overrides.actor_bc_weight=0", "+adapt.algo_overrides.actor_bc_filter=none"]):
        pipeline.check_algo_overrides(_stage("pipeline", *overrides))


def test_an_algo_setting_the_chosen_algorithm_lacks_is_named_with_the_ones_that_have_it():
    """``algo=iql algo.actor_bc_weight=4``: Hydra's own message says to append with ``+``, which then fails on IQL's
    config; the one line names the algorithm and those that have the setting instead."""
    from robopretrain.cli import group_key_problem

    msg = group_key_problem("robopretrain", ["algo=iql", "algo.actor_bc_weight=4"])
    assert msg == ("algo=iql has no setting 'actor_bc_weight' (algo/iql.yaml); the algo options that have it: "
                   "calql, cql")
    assert group_key_problem("finetune", ["algo.actor_bc_wieght=4"]).startswith("algo=calql has no setting")
    assert group_key_problem("robopretrain", ["algo=cql", "algo.actor_bc_weight=4"]) is None
    assert group_key_problem("robopretrain", ["+algo.actor_bc_weight=4", "data.nope=1"]) is None  # Hydra's own


def test_the_bc_term_logs_the_share_of_rows_it_keeps_and_their_error():
    """With the success filter a user sees per update how much of the batch the BC term covers (0: no success in
    the batch, the term is 0)."""
    import torch

    from robopretrain.algos.cql import CQL, CQLConfig

    torch.manual_seed(0)
    agent = CQL(3, 2, CQLConfig(actor_bc_weight=4.0, actor_bc_filter="success", n_actions=2,
                                actor_hidden=(8,), critic_hidden=(8,)))
    batch = {"observations": torch.randn(4, 3), "actions": torch.rand(4, 2) * 2 - 1, "rewards": torch.zeros(4),
             "next_observations": torch.randn(4, 3), "dones": torch.zeros(4),
             "mc_returns": torch.tensor([-500.0, -120.0, -500.0, -500.0])}
    _, metrics = agent.compute_losses(batch)
    assert metrics["actor_bc_rows"].item() == 0.25
    mean, _ = agent.actor(batch["observations"][1:2])
    torch.testing.assert_close(metrics["actor_bc_mse"], (torch.tanh(mean) - batch["actions"][1:2]).square().mean())
    plain = CQL(3, 2, CQLConfig(n_actions=2, actor_hidden=(8,), critic_hidden=(8,)))
    assert "actor_bc_rows" not in plain.compute_losses(batch)[1]


@pytest.mark.parametrize("override, message", [("encoder.precision=fp16", "encoder.precision='fp16'; expected one of"),
                                               ("encoder.mode=finetuned", "encoder.mode='finetuned'; expected one of")])
def test_the_pipeline_refuses_a_bad_encoder_setting_before_any_stage(tmp_path, override, message):
    """``encoder.precision`` (new in the pipeline) was checked only when stage 2 built its agent, after the data and
    stage 1 had run."""
    from robopretrain import pipeline

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        pipeline.run_pipeline(_stage("pipeline", override), tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()
    pipeline.check_encoder(_stage("pipeline", "encoder.precision=bfloat16", "encoder.mode=frozen_cached"))


def test_the_pipeline_logs_what_each_stage_algorithm_gets_and_what_it_drops(caplog):
    from robopretrain import pipeline

    with caplog.at_level(logging.INFO, logger="robopretrain.pipeline"):
        pipeline.log_stage_algos(_stage("pipeline", "stage2.algo=iql", "+stage3.algo_overrides.actor_bc_weight=0"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("stage2 (algo=iql): algo overrides {'batch_size': 32}; not its settings, so not passed: "
                        "actor_bc_filter, actor_bc_weight, n_actions, policy_lr")
    assert lines[2].startswith("stage3 (algo=calql)") and "'actor_bc_weight': 0" in lines[2]
    assert "not passed" not in lines[1] + lines[2]


def test_a_done_stage_rerun_with_other_algo_settings_says_they_take_no_effect():
    """Rerunning the pipeline with ``+stage3.algo_overrides.actor_bc_weight=0`` after stage 3 finished skipped it
    without a word; done.json now records each RL stage's algorithm settings and the difference is named."""
    from robopretrain import pipeline

    before = _stage("pipeline")
    done = {"stage": "stage3", "algo": {"name": "calql", **pipeline.stage_algo(before, "stage3")}}
    assert pipeline.changed_algo(before, "stage3", done) == ""
    after = _stage("pipeline", "+stage3.algo_overrides.actor_bc_weight=0")
    assert pipeline.changed_algo(after, "stage3", done) == "actor_bc_weight: 4.0 -> 0"
    assert pipeline.changed_algo(after, "stage2", {**done, "stage": "stage2"}) == "name: calql -> cql"
    assert pipeline.changed_algo(after, "stage3", {"stage": "stage3"}) == ""  # a done.json of before this record
    assert pipeline.changed_algo(after, "data", done) == ""


def test_a_task_none_of_whose_episodes_succeeds_is_named(caplog):
    """Multi-task data: the filter keeps the other tasks' successes, but never imitates a task whose demos all fail."""
    from robopretrain.build import report_success_filter

    algo = {"actor_bc_weight": 4.0, "actor_bc_filter": "success", "reward_bias": -5.0, "discount": 0.99}
    mc = _returns([True, False, False, True, False])  # 5 transitions per episode; tasks 3, 3, 7, 5, 5
    ids = np.repeat([3.0, 3.0, 7.0, 5.0, 5.0], 5)
    with caplog.at_level(logging.INFO, logger="robopretrain.build"):
        assert report_success_filter(algo, _Data(mc, ids), "prior.hdf5",
                                     tasks={"Reach": 3, "Lift": 7, "Push": 5, "Unused": 9}) == pytest.approx(0.4)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["algo.actor_bc_filter=success: no episode of Lift in prior.hdf5 succeeds, so the actor's BC "
                      "term never imitates it"]


def test_a_dense_target_with_the_filter_off_in_stage3_only_warns_about_the_adaptation(caplog, tmp_path):
    """The refusal's advice (``+stage3.algo_overrides.actor_bc_filter=none``, or the weight 0 there) lets the run
    start; the adaptation, whose batches hold the target's dense-reward demos, still filters: said, not refused."""
    from robopretrain import pipeline

    (tmp_path / "dense_demos.hdf5").write_bytes(b"")  # the start checks need the target's demos to exist
    dense = (f"targets=[{{name: Dense, env_id: 'sim_envs.env:TabletopEnv', env_kwargs: {{task: Reach}}, "
             f"max_episode_steps: 50, reward: dense, task_id: 13, "
             f"demos: {tmp_path / 'dense_demos.hdf5'}}}]")
    slots = "obs.num_tasks=14"  # slot 13 inside the one-hot (the start checks refuse it outside)
    for fix in ("+stage3.algo_overrides.actor_bc_filter=none", "+stage3.algo_overrides.actor_bc_weight=0"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="robopretrain.pipeline"):
            pipeline.check_targets(_stage("pipeline", dense, slots, fix))
        assert [r.getMessage()[:43] for r in caplog.records] == ["adapt: target Dense declares a dense reward"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.pipeline"):
        pipeline.check_targets(_stage("pipeline", dense, slots, "algo_overrides.actor_bc_filter=none"))
        pipeline.check_targets(_stage("pipeline"))
    assert not caplog.records
    with pytest.raises(ValueError, match="declares a dense reward"):
        pipeline.check_targets(_stage("pipeline", dense, slots))


def test_discount_one_builds_cql_and_refuses_only_the_success_filter():
    """The never-succeeds value ``reward_bias / (1 - discount)`` was computed for every CQL agent: ``algo=cql
    algo.discount=1`` on data whose episodes all succeed ended in a ZeroDivisionError traceback."""
    from robopretrain.algos.cql import CQL, CQLConfig
    from robopretrain.config_checks import validate_offline_config

    small = {"actor_hidden": (8,), "critic_hidden": (8,)}
    CQL(3, 2, CQLConfig(discount=1.0, **small))
    CQL(3, 2, CQLConfig(discount=1.0, actor_bc_weight=4.0, **small))
    with pytest.raises(ValueError, match="needs discount < 1"):
        CQL(3, 2, CQLConfig(discount=1.0, actor_bc_weight=4.0, actor_bc_filter="success", **small))
    with pytest.raises(ValueError, match="algo.actor_bc_filter=success with algo.discount=1"):
        validate_offline_config(_stage("robopretrain", "algo=cql", "algo.discount=1", "algo.actor_bc_weight=4",
                                       "algo.actor_bc_filter=success"))


def test_finetune_warns_when_the_checkpoints_bc_term_is_dropped(caplog):
    """A direct finetune.train run from a stage-2 checkpoint trained with the BC term takes calql.yaml's plain actor;
    it must say so and name the overrides that keep the term (not when it keeps it, or there was none)."""
    from types import SimpleNamespace

    from finetune.train import warn_dropped_bc_term

    meta = {"algo_cfg": {"actor_bc_weight": 4.0, "actor_bc_filter": "success"}}
    with caplog.at_level("WARNING"):
        message = warn_dropped_bc_term(meta, SimpleNamespace(actor_bc_weight=0.0))
    assert message and "algo.actor_bc_weight=4 algo.actor_bc_filter=success" in message
    assert message in caplog.text
    assert warn_dropped_bc_term(meta, SimpleNamespace(actor_bc_weight=4.0)) is None
    assert warn_dropped_bc_term({"algo_cfg": {"actor_bc_weight": 0.0}}, SimpleNamespace(actor_bc_weight=0.0)) is None
    plain = warn_dropped_bc_term({"algo_cfg": {"actor_bc_weight": 2.5}}, SimpleNamespace(actor_bc_weight=0.0))
    assert plain and plain.endswith("pass algo.actor_bc_weight=2.5")


def test_a_done_stage_rerun_with_other_stage_settings_names_them():
    """Rerunning a finished run folder with ``data.target_demos=100`` skipped the data stage without a word (the run
    went on with 10 demos); done.json now records the keys each stage reads and a rerun names what differs."""
    from robopretrain import pipeline

    before = _stage("pipeline")
    done = {stage: {"stage": stage, "settings": pipeline.stage_settings(before, stage)} for stage in pipeline.STAGES}
    assert all(pipeline.changed_settings(before, stage, done[stage]) == "" for stage in pipeline.STAGES)
    after = _stage("pipeline", "data.target_demos=100", "stage2.steps=9", "data.num_workers=1",
                   "stage3.checkpoint_every=7", "+stage3.algo_overrides.actor_bc_weight=0")
    assert pipeline.changed_settings(after, "data", done["data"]) == "data.target_demos: 10 -> 100"
    assert pipeline.changed_settings(after, "stage2", done["stage2"]) == "stage2.steps: 500 -> 9"
    # what no stage result depends on, what another stage reads, and the algorithm settings (changed_algo's) are quiet
    for stage in ("stage1", "adapt", "evaluate"):
        assert pipeline.changed_settings(after, stage, done[stage]) == "", stage
    # but stage 3's checkpoint spacing decides its episodes with several envs (the default 2), and is named: a rerun
    # of a finished run skipped it without a word (a user's finding, stop 73)
    assert pipeline.changed_settings(after, "stage3", done["stage3"]) == "stage3.checkpoint_every: 300 -> 7"
    one_env = [_stage("pipeline", "stage3.num_envs=1", *spacing) for spacing in ((), ("stage3.checkpoint_every=7",))]
    one_env_record = {"settings": pipeline.stage_settings(one_env[0], "stage3")}
    assert pipeline.changed_settings(one_env[1], "stage3", one_env_record) == ""
    # from 2 envs to 1: num_envs is named, the spacing (which counts with 2 envs only) is not said to be unset
    assert pipeline.changed_settings(one_env[0], "stage3", done["stage3"]) == "stage3.num_envs: 2 -> 1"
    recorded_before = {k: v for k, v in done["stage3"]["settings"].items() if k != "stage3.checkpoint_every"}
    assert len(recorded_before) == len(done["stage3"]["settings"]) - 1
    assert pipeline.changed_settings(after, "stage3", {"settings": recorded_before}) == ""
    # a foreign target's setting is not the data stage's, which collects only sim_envs targets without demos (its
    # folder was named for deletion); records of before keep their whole entries and are read the same way
    mine = "{name: reach, env_id: '_fake_envs:UnitsReachEnv', demos: /data/reach.hdf5, max_episode_steps: %d}"
    ran, now = (_stage("pipeline", f"targets=[PressLitButton,{mine % n}]") for n in (40, 30))
    record = {"stage": "data", "settings": pipeline.stage_settings(ran, "data")}
    assert record["settings"]["targets"] == ["PressLitButton"]
    assert pipeline.changed_settings(now, "data", record) == ""
    assert "'max_episode_steps': 30" in pipeline.changed_settings(now, "adapt", {
        "settings": pipeline.stage_settings(ran, "adapt")})  # the stages that read it still name it
    whole = {"stage": "data", "settings": {**record["settings"], "targets": pipeline.plain(ran.targets)}}
    assert pipeline.changed_settings(now, "data", whole) == ""
    assert pipeline.changed_settings(_stage("pipeline", "targets=[PressButton]"), "data", whole) == \
        "targets: ['PressLitButton'] -> ['PressButton']"
    assert pipeline.changed_settings(after, "data", {"stage": "data"}) == ""  # a done.json of before this record
    assert pipeline.changed_settings(_stage("pipeline", "seed=3"), "evaluate", done["evaluate"]) == "seed: 0 -> 3"


def test_two_valued_dimensions_are_those_with_two_values_and_nothing_between():
    from robopretrain.envs.action_units import two_valued_dimensions

    rng = np.random.default_rng(0)
    n = 40
    grip = np.where(rng.random(n) < 0.3, -1.0, 1.0)
    actions = np.stack([
        rng.uniform(-1, 1, n),                            # continuous
        np.full(n, 0.5),                                  # constant: one value, not two
        grip,                                             # a gripper at +-1
        np.where(grip < 0, -0.5, 0.7),                    # two values inside the box
        np.where(np.arange(n) % 3 == 0, 0.0, grip),       # three values
        np.clip(grip + rng.normal(0, 0.05, n), -1, 1),    # a gripper with a little noise (CQL fails there too)
        np.where(np.arange(n) % 5 == 0, -0.55, grip),     # a value 0.45 from the low end: within a quarter span
        np.where(np.arange(n) % 5 == 0, -0.45, grip),     # 0.55 from it: in the middle half
        np.full(n, 0.5) + np.where(grip > 0, 1e-7, 0.0),  # float noise on a constant: not two values
    ], axis=1)
    assert two_valued_dimensions(actions) == [2, 3, 5, 6]
    assert two_valued_dimensions(actions, band=0.2) == [2, 3, 5]
    assert two_valued_dimensions(actions[:, :2]) == []
    assert two_valued_dimensions(np.zeros((0, 4))) == []


class _Actions:
    def __init__(self, actions: np.ndarray) -> None:
        self._arrays = {"actions": actions}

    def arrays(self) -> dict:
        return self._arrays


def test_cql_without_the_bc_term_on_two_valued_actions_warns(caplog):
    from robopretrain.build import warn_two_valued_actions

    actions = np.stack([np.linspace(-1, 1, 12), np.where(np.arange(12) < 8, 1.0, -1.0)], axis=1)
    cql = {"name": "cql", "actor_bc_weight": 0.0, "bc_steps": 0}
    with caplog.at_level(logging.WARNING, logger="robopretrain.build"):
        assert warn_two_valued_actions(cql, _Actions(actions), "grip.hdf5") == [1]
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "grip.hdf5" in message and "[1]" in message and "cql" in message and "algo.actor_bc_weight" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robopretrain.build"):
        assert warn_two_valued_actions({**cql, "name": "calql", "bc_steps": 1000}, _Actions(actions), "x") == [1]
        assert warn_two_valued_actions({**cql, "actor_bc_weight": 4.0}, _Actions(actions), "y") == [1]  # failed too
        assert warn_two_valued_actions({**cql, "actor_bc_weight": 39.0}, _Actions(actions), "z") == [1]  # 40 worked
        assert warn_two_valued_actions({**cql, "actor_bc_weight": 40.0}, _Actions(actions), "x") == []
        assert warn_two_valued_actions({"name": "iql", "expectile": 0.7}, _Actions(actions), "x") == []
        assert warn_two_valued_actions(cql, _Actions(actions[:, :1]), "x") == []
    assert len(caplog.records) == 3 and "calql" in caplog.records[0].getMessage()
    assert "algo.actor_bc_weight=4, below the one that worked" in caplog.records[1].getMessage()


@pytest.mark.parametrize("weight, warned", [(0.0, True), (4.0, True), (40.0, False)])
def test_stage2_warns_about_two_valued_actions_of_its_data(tmp_path, caplog, weight, warned):
    """The warning reads the data stage 2 trains on (a gripper column at +-1 in a D4RL file)."""
    import h5py

    from _stages import stage2_config
    from robopretrain.train import run

    n = 24
    rows = np.arange(n, dtype=np.float32)
    with h5py.File(tmp_path / "grip.hdf5", "w") as f:
        f["observations"] = np.stack([rows, rows / 10], axis=1)
        f["actions"] = np.stack([np.tanh(rows / 10), np.where(rows % 12 < 9, 1.0, -1.0)], axis=1).astype(np.float32)
        f["rewards"] = (rows % 12 == 11).astype(np.float32)
        f["terminals"] = rows % 12 == 11
        f["timeouts"] = np.zeros(n, bool)
    cfg = stage2_config(tmp_path / "grip.hdf5", tmp_path / "run", algo="cql", steps=2,
                        obs={"low_dim": ["observations"]}, algo_cfg={"actor_bc_weight": weight},
                        data_cfg={"cache_dir": str(tmp_path / "cache")})
    with caplog.at_level(logging.WARNING):
        run(cfg)
    hits = [r for r in caplog.records if "take values only near their two ends" in r.getMessage()]
    assert len(hits) == int(warned)
    if warned:
        assert "[1]" in hits[0].getMessage() and "grip" in hits[0].getMessage()
