"""``benchmarks/binary_actions.py`` and its env: the expert's data really is two-valued in the gripper, the probe
reads the agent's own gripper command and critic, the summary compares each arm with CQL, and stage 3 warns as stage
2 does about CQL / Cal-QL without the actor's BC term on such data."""
from __future__ import annotations

import json
import logging

import numpy as np

from _benchmarks import load_benchmark
from _stages import stage2_config, stage3_config

bench = load_benchmark("binary_actions_bench", "binary_actions.py")
import grip_reach_env  # noqa: E402  (benchmarks/ is on sys.path once the script is loaded)


def test_the_expert_succeeds_and_its_gripper_takes_two_values(tmp_path):
    import h5py

    from robopretrain.envs.action_units import two_valued_dimensions

    path = grip_reach_env.write_demos(tmp_path / "grip.hdf5", episodes=6)  # raises if an episode fails
    with h5py.File(path, "r") as f:
        actions, terminals = f["actions"][()], f["terminals"][()]
    assert terminals.sum() == 6 and two_valued_dimensions(actions) == [3]
    assert set(np.unique(actions[:, 3])) == {-1.0, 1.0}
    env = grip_reach_env.GripReach()
    obs, _ = env.reset(seed=0)
    obs, *_, info = env.step(np.array([0, 0, 0, -1], np.float32))
    assert obs[6] == 0.0 and not info["success"]  # one close command half-closes the gripper


class _Agent:
    """Closes where the goal is above the end effector on x; its critic prefers closing by a fixed margin."""

    has_q = True

    class spec:  # noqa: N801
        @staticmethod
        def storage_keys():
            return ("observations",)

    def act(self, obs):
        x = obs["observations"]
        return np.concatenate([np.zeros((len(x), 3)), np.where(x[:, 3:4] > x[:, 0:1], -1.0, 1.0)], axis=1)

    def q_values(self, obs, actions):
        import torch

        return -2.0 * torch.as_tensor(actions)[:, 3]


def test_the_probe_reads_the_policys_gripper_and_the_critics_preference():
    states = grip_reach_env.goal_states(bench.PROBE_STATES)
    closes = float(np.mean(states[:, 3] > states[:, 0]))
    out = bench.probe(_Agent())
    assert out["policy_closes"] == closes and 0.2 < closes < 0.8
    assert out["critic_prefers_close"] == 1.0 and out["q_close_minus_open"] == 4.0
    assert np.all(np.abs(states[:, :3] - states[:, 3:6]) <= 0.01) and np.all(states[:, 6] == 1.0)


def test_the_summary_compares_each_arm_with_cql():
    def run(arm, seed, wins):
        return {"arm": arm, "seed": seed, "success": [True] * wins + [False] * (bench.EPISODES - wins),
                "policy_closes": wins / bench.EPISODES, "critic_prefers_close": 0.9}

    runs = {f"{a}_seed{s}": run(a, s, w) for a, s, w in
            [("cql", 0, 0), ("cql", 1, 5), ("cql_bc40", 0, 50), ("cql_bc40", 1, 45)]}
    results = {"runs": runs, "cpu": "test"}
    text = bench.summarize(results)
    assert results["summary"]["cql"]["mean"] == 0.05 and results["summary"]["cql_bc40"]["mean"] == 0.95
    assert abs(results["summary"]["cql_bc40"]["minus_cql"]["difference"] - 0.9) < 1e-9
    assert "| cql_bc40 | 0.95 " in text and "+0.90" in text and "| 1.00 / 0.90 |" in text
    assert "bc |" not in text.replace("cql_bc40 |", "")  # arms without runs have no row


def test_a_run_trains_evaluates_and_is_skipped_when_done(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "UPDATES", 2)
    monkeypatch.setattr(bench, "EPISODES", 2)
    monkeypatch.setattr(bench, "ARMS", {"cql": ("cql", ["algo.batch_size=8", "algo.n_actions=2"])})
    out = tmp_path / "r.json"
    args = ["--arms", "cql", "--seeds", "3", "--work-dir", str(tmp_path / "w"), "--out", str(out)]
    bench.main(args)
    record = json.loads(out.read_text())["runs"]["cql_seed3"]
    assert len(record["success"]) == 2 and record["seed"] == 3 and record["updates"] == 2
    assert 0.0 <= record["critic_prefers_close"] <= 1.0 and "train_seconds" in record
    assert (tmp_path / "w" / "cql" / "seed3" / "checkpoints" / "ckpt_00000002").is_dir()
    monkeypatch.setattr(bench, "run_one", lambda *a: (_ for _ in ()).throw(AssertionError("rerun")))
    bench.main(args)  # the finished run is read from the JSON, not run again


def test_stage3_warns_about_two_valued_actions_without_the_bc_term(tmp_path, caplog):
    from finetune.train import run as finetune
    from robopretrain.train import run as stage2

    data = grip_reach_env.write_demos(tmp_path / "grip.hdf5", episodes=4)
    cache = {"cache_dir": str(tmp_path / "cache")}
    ckpt = stage2(stage2_config(data, tmp_path / "s2", algo="calql", steps=2, obs={"low_dim": ["observations"]},
                                algo_cfg={"actor_bc_weight": 40.0}, data_cfg=cache))
    target = {**bench.TARGET, "demos": str(data)}
    for weight, warned in ((0.0, True), (40.0, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            finetune(stage3_config(ckpt, tmp_path / f"s3_{weight:g}", target, algo="calql", env_steps=4,
                                   data_cfg=cache, algo_cfg={"actor_bc_weight": weight}))
        assert ("take values only near their two ends" in caplog.text) is warned, caplog.text
