"""What claim 6 (issue 12: "DR3 lets a larger encoder help", small_conv vs ResNet-18, with and without DR3) would
cost here: the speed of one stage-2 update of the ``testbed`` preset with each encoder, and the wall time of the
claim's twelve stage-2 runs projected from it.

The update is the testbed's stage 2 (``configs/testbed.yaml``, ``configs/pipeline.yaml``): CQL, batch 64, 4 sampled
actions, the actor's BC term on successful episodes (weight 4, policy lr 3e-4), separate actor and critic encoders
trained from scratch, both 64 px cameras (agentview and wrist) through each encoder, a 4 px random shift. Encoders:
``small_conv`` with the testbed's keypoint head (strides 2, 2, 1, 1, spatial softmax, 32 keypoints) and
``resnet18`` (``robopretrain.nets.encoders``: GroupNorm, PTR's spatial embedding), each with ``dr3_coef`` 0 and 0.03
(DR3 puts the s' pass under autograd: its backward is part of the cost). Every variant is a whole
``Agent.update`` on the same random batch; rounds are interleaved (each variant once per round) and the medians over
rounds are reported, at each ``--threads`` value.

    python benchmarks/encoder_cost.py                       # 1 and 2 threads, 3 rounds
    python benchmarks/encoder_cost.py --threads 1 --rounds 2
    python benchmarks/encoder_cost.py --encoders small_conv impala --out benchmarks/results/encoder_cost_impala.json

``--encoders small_conv impala`` prices a CPU-sized variant of the claim (IMPALA's 0.6M-parameter CNN as the larger
encoder instead of ResNet-18's 12M), for the planners to weigh; it is not the claim as stated.

Projection: 10,000 updates per stage-2 run (the testbed's budget), three seeds per arm, four arms, two runs at a
time (one thread each), two ways: from the 1-thread rates measured here, and from the testbed's recorded small_conv
stage 2 (``benchmarks/results/testbed_v4.json``, evaluations included) divided by each variant's ratio to small_conv
measured here (ratios hold better than rates on a loaded machine). Stage 2 only: stage 1, adaptation, stage 3 and
the evaluations of the other stages come on top. Writes ``benchmarks/results/encoder_cost.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.append(str(Path(__file__).resolve().parent))  # appended so benchmarks/ shadows no package
from bench_utils import cpu_model, git_commit, write_json_atomic  # noqa: E402
from image_update_speed import ACT_DIM, make_batch, make_spec, median, time_updates  # noqa: E402

from robopretrain.agent import Agent, EncoderSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "encoder_cost.json"
TESTBED_RUNS = ROOT / "benchmarks" / "results" / "testbed_v4.json"  # the testbed preset's version-4 pipeline runs
BATCH, N_ACTIONS, DR3_COEF = 64, 4, 0.03
STAGE2_UPDATES, SEEDS, ARMS = 10_000, 3, 4
ENCODERS = {"small_conv": {"pool": "spatial_softmax", "strides": [2, 2, 1, 1], "num_keypoints": 32},
            "resnet18": {}, "impala": {}}
CLAIM_ENCODERS = ("small_conv", "resnet18")  # the claim as issue 12 states it; impala: a CPU-sized larger encoder


def variants_of(encoders: tuple[str, ...] = CLAIM_ENCODERS) -> tuple[str, ...]:
    """``<encoder>`` and ``<encoder>+dr3`` for each encoder, in order (the first is the ratios' reference)."""
    return tuple(f"{name}{'+dr3' if dr3 else ''}" for name in encoders for dr3 in (False, True))


VARIANTS = variants_of()


def build_variant(name: str, seed: int = 0) -> Agent:
    """The testbed's stage-2 agent with the variant's encoder (``<encoder>[+dr3]``)."""
    encoder, _, dr3 = name.partition("+")
    cfg = {"batch_size": BATCH, "n_actions": N_ACTIONS, "actor_bc_weight": 4.0, "actor_bc_filter": "success",
           "policy_lr": 3e-4, "dr3_coef": DR3_COEF if dr3 else 0.0}
    torch.manual_seed(seed)
    settings = EncoderSettings(mode="scratch", name=encoder, kwargs=dict(ENCODERS[encoder]), augment_pad=4)
    return Agent(make_spec(cameras=2), ACT_DIM, "cql", cfg, settings, seed=seed)


def run_block(threads: int, rounds: int, updates: int, variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """Interleaved rounds of every variant at ``threads``; ratios to the first variant's (small_conv's) rate within
    each round."""
    torch.set_num_threads(threads)
    batch = make_batch(BATCH, cameras=2)
    agents = {n: build_variant(n) for n in variants}
    for agent in agents.values():  # kernel choice, allocator warm-up
        time_updates(agent, batch, 1)
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {n: [] for n in variants}
    for i in range(rounds):
        for n in variants:
            rates[n].append(time_updates(agents[n], batch, updates)[0])
        print(f"   round {i + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.3f}/s" for n in variants), flush=True)
    ref = variants[0]
    return {"threads": threads, "rounds": rounds, "updates_per_round": updates,
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
            "variants": {n: {"updates_per_s": median(rates[n]), "rounds_updates_per_s": rates[n],
                             "ratio_vs_small_conv": median([a / b for a, b in zip(rates[n], rates[ref])])}
                         for n in variants}}


def projection(hours_per_run: dict[str, float], jobs: int = 2) -> dict[str, Any]:
    """The claim's twelve stage-2 runs (``SEEDS`` per arm) from each variant's hours per run, ``jobs`` at a time."""
    total = sum(SEEDS * h for h in hours_per_run.values())
    return {"stage2_updates_per_run": STAGE2_UPDATES, "seeds_per_arm": SEEDS, "arms": ARMS,
            "hours_per_run": hours_per_run, "cpu_hours_all_runs": total, "jobs": jobs, "wall_hours": total / jobs}


def recorded_stage2_seconds(path: Path = TESTBED_RUNS) -> float | None:
    """The median stage-2 seconds of the testbed's small_conv pixel runs (10,000 updates and their evaluations, one
    thread, two runs at a time) in ``path``, or None without it: measured on a quiet machine, unlike a timing taken
    beside a running benchmark."""
    if not path.is_file():
        return None
    runs = json.loads(path.read_text())["runs"]
    seconds = [r["measured"]["stage_seconds"]["stage2"] for k, r in runs.items()
               if k.startswith("pixel/") and r.get("returncode") == 0]
    return median(seconds) if seconds else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--updates", type=int, default=2, help="timed updates per variant per round")
    p.add_argument("--encoders", nargs="+", default=list(CLAIM_ENCODERS), choices=list(ENCODERS),
                   help="small_conv first (the reference); default the claim's pair")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.encoders[0] != "small_conv":
        p.error("--encoders: small_conv first (every ratio and the recorded stage-2 time are small_conv's)")
    variants = variants_of(tuple(args.encoders))
    result: dict[str, Any] = {"command": "python benchmarks/encoder_cost.py " + " ".join(argv or sys.argv[1:]),
                              "cpu": cpu_model(), "commit": git_commit(ROOT),
                              "setting": {"algo": "cql", "batch": BATCH, "n_actions": N_ACTIONS, "image_size": 64,
                                          "cameras": 2, "encoders": ENCODERS, "dr3_coef": DR3_COEF},
                              "blocks": []}
    for threads in args.threads:
        print(f"== testbed stage-2 update, {threads} thread(s)", flush=True)
        block = run_block(threads, args.rounds, args.updates, variants)
        result["blocks"].append(block)
        for n, v in block["variants"].items():
            print(f"   {n:16s} {v['updates_per_s']:.3f} updates/s  ({v['ratio_vs_small_conv']:.3f}x small_conv)")
    one = next((b for b in result["blocks"] if b["threads"] == 1), result["blocks"][0])
    variants = one["variants"]
    result["projection"] = {"from_rates_here": projection(
        {n: STAGE2_UPDATES / v["updates_per_s"] / 3600.0 for n, v in variants.items()})}
    recorded = recorded_stage2_seconds()
    if recorded is not None:  # the testbed's recorded small_conv stage 2, scaled by each variant's ratio here
        result["projection"]["from_testbed_stage2"] = {"recorded_seconds": recorded, "source": str(
            TESTBED_RUNS.relative_to(ROOT)), **projection(
            {n: recorded / v["ratio_vs_small_conv"] / 3600.0 for n, v in variants.items()})}
    for how, proj in result["projection"].items():
        print(f"== claim 6, stage 2 only, {how.replace('_', ' ')} ({one['threads']} thread): "
              + ", ".join(f"{n} {h:.1f} h" for n, h in proj["hours_per_run"].items())
              + f" per run; twelve runs {proj['cpu_hours_all_runs']:.0f} CPU hours, "
              f"{proj['wall_hours']:.0f} h of wall time two at a time")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
