"""Time robopretrain's update beside what a user would use instead: CORL's single files and d3rlpy, same run.

Same sizes for every implementation. Cal-QL: batch 256, obs 39, act 4, 10 sampled actions, 2 critics 2x256,
actor 3x256, Cal-QL bound, max-target backup. IQL: batch 256, obs 39, act 4, 2 critics 2x256, value 2x256,
actor 2x256, expectile 0.7, beta 3. Each measurement is one whole process (``--worker``) that builds one
implementation, runs ``--warmup`` updates, then times ``--iters`` updates on a fixed random batch (wall clock
and process CPU time); implementations are run in interleaved rounds (ours, CORL, d3rlpy, ours, ...), so load
from other jobs on a shared machine hits all alike. Reported per implementation: median and spread of the
rounds, and the **median over rounds of the ratio to CORL (and to d3rlpy) in the same round**.

Peers, never copied into this repository:

* CORL (``--corl PATH`` or ``$CORL_PATH``: a checkout of the public CORL repository, the folder holding
  ``algorithms/``): ``algorithms/finetune/cal_ql.py`` and ``algorithms/offline/iql.py`` are imported from that
  folder. They import ``wandb``, ``pyrallis``, ``d4rl`` and ``gym`` at module top for their training scripts,
  which the update does not use; the worker puts stand-in modules for those that are not installed into
  ``sys.modules`` before importing (``_stub_corl_imports``). Without a checkout CORL is skipped with a message.
* d3rlpy 2.8.1 (``--d3rlpy-python PY``: an interpreter that can import it). d3rlpy pins ``gymnasium==1.0.0``
  (and ``gym``), which conflicts with this project's ``metaworld`` extra (gymnasium>=1.1), so it is not a
  project extra: ``--setup-d3rlpy DIR`` makes a separate venv used only by this benchmark, with d3rlpy and its
  pins in the venv and a ``.pth`` line that imports torch (and numpy) from the running interpreter, so both
  run the same torch build. Without it d3rlpy is skipped with a message. d3rlpy is timed through its
  ``impl.update(TorchMiniBatch)`` (the batch already in torch, as for the others). Its Cal-QL has
  ``max_q_backup=True``, 10 action samples, conservative weight 5; its Lagrange alpha is updated as d3rlpy does.

**Subnormal flushing.** Each worker sets it before its first torch op: ours on (what the toolkit's entry points do,
``flush_denormal: true``; :mod:`robopretrain.cpu_settings`), the peers off (as their scripts run).
``--ftz-variants`` adds ``robopretrain[no-ftz]`` and ``corl[ftz]`` to the Cal-QL block, so the gain of the setting
and the ratio against a CORL run with the same setting are both in the JSON (``vs_corl[ftz]_...``).

Also: ``--contention`` repeats the 2-thread Cal-QL rounds (ours and CORL) while a CPU-bound process (a busy
Python loop) runs beside them; ``--peak`` measures the fp32 matmul peak (2048^3 ``torch.mm``) per thread count,
and the JSON reports each implementation's achieved FLOP/s on the nominal dense FLOPs of the update
(:func:`update_flops`). Output: ``benchmarks/results/peers.json`` and a markdown table on stdout.

**The offline family** (issue 15; ``--algos td3bc awac dt bc --out benchmarks/results/peers_family.json``): ours
(built by :func:`robopretrain.algos.make_agent` at its ``configs/algo`` defaults, which are CORL's sizes) against
CORL's single files ``algorithms/offline/{td3_bc,awac,dt,any_percent_bc}.py`` (imported the same way), same sizes:

* ``td3bc``: batch 256, obs 39, act 4, actor 2x256, 2 critics 2x256, policy noise 0.2 clipped 0.5, actor and
  targets every 2nd update (timed over an even number of updates), alpha 2.5. CORL: ``TD3_BC.train``.
* ``awac``: batch 256, actor 3x256 (Gaussian, state-independent log std), 2 critics 3x256, lambda 1 (CORL's
  default), weights clipped at 100. CORL: ``AdvantageWeightedActorCritic.update``.
* ``dt``: CORL's defaults on both sides: batch 64 windows of K = 20 steps (60 tokens), embedding 128, 3 layers,
  1 head, dropout 0.1, ``episode_len`` 1000, AdamW lr 1e-4 with the linear warm-up, gradient-norm clip 0.25; a
  batch without padding (every window inside its episode), on which both losses are the same masked MSE. CORL's
  file has no update function (the step is inside its ``train()``), so the worker runs the same step on CORL's
  ``DecisionTransformer``: forward, masked MSE, ``backward``, ``clip_grad_norm_``, AdamW and ``LambdaLR`` steps.
* ``bc``: batch 256, actor 2x256. CORL's ``any_percent_bc.py`` (``BC.train``) regresses a deterministic tanh
  actor by MSE; ours fits a Gaussian with a tanh mean and a state-independent std by likelihood (the IQL
  authors' policy, which BC uses here: README, "learners on clean data"), so the two updates do the same layers'
  work plus ours' log-likelihood terms.

CORL's ReBRAC (``algorithms/offline/rebrac.py``) is JAX/Flax, not PyTorch, and no JAX is installed: not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, OBS_DIM, ACT_DIM, N_ACTIONS = 256, 39, 4, 10
CALQL_ACTOR, CRITIC, IQL_HIDDEN = (256, 256, 256), (256, 256), (256, 256)
IMPLS = ("robopretrain", "corl", "d3rlpy")
GPU_MODES = ("eager", "compile", "cudagraphs", "graph")
DEFAULT_ITERS = {"calql": 15, "iql": 150, "image": 8, "td3bc": 150, "awac": 80, "dt": 12, "bc": 400}
FAMILY = ("td3bc", "awac", "dt", "bc")  # issue 15's learners that CORL has in PyTorch
ALGOS = ("calql", "iql", "image", *FAMILY)
FAMILY_NAMES = {"td3bc": "td3_bc", "awac": "awac", "dt": "dt", "bc": "bc"}  # -> robopretrain.algos registry names
DT_BATCH, DT_CONTEXT, DT_EPISODE_LEN = 64, 20, 1000  # CORL dt.py defaults (ours are the same: configs/algo/dt.yaml)
D3RLPY_PIN = "d3rlpy==2.8.1"
ENV_FTZ = "PEERS_FLUSH_DENORMAL"  # "1" / "0": a worker's subnormal flushing (default: ours on, the peers off)


# --------------------------------------------------------------------------- the work (nominal dense FLOPs)


def _mlp_flops(sizes: list[int]) -> int:
    """FLOPs of one forward pass of a dense MLP per row (multiply-adds counted as 2)."""
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def update_flops(algo: str, batch: int = BATCH) -> float | None:
    """Nominal dense FLOPs of one update as robopretrain computes it (forward 1x, forward+backward 3x).

    Cal-QL: actor on ``[s; s']`` (2B rows, fwd+bwd), critic on B policy actions (fwd + input gradient, 2x),
    target critic on ``B * N`` backup actions (fwd), critic on ``B * (1 + 3N)`` action sets (fwd+bwd); 2 critics.
    IQL: target critic, critic (fwd+bwd), value on s (fwd+bwd) and s' (fwd), actor (fwd+bwd), all on B rows.
    """
    if algo not in ("calql", "iql"):
        return None  # the image update's conv encoder and the offline family's updates are not counted
    critic = 2 * _mlp_flops([OBS_DIM + ACT_DIM, *CRITIC, 1])
    if algo == "calql":
        actor = _mlp_flops([OBS_DIM, *CALQL_ACTOR, 2 * ACT_DIM])
        return batch * (3 * 2 * actor + 2 * critic + N_ACTIONS * critic + 3 * (1 + 3 * N_ACTIONS) * critic)
    actor = _mlp_flops([OBS_DIM, *IQL_HIDDEN, ACT_DIM])
    value = _mlp_flops([OBS_DIM, *IQL_HIDDEN, 1])
    return batch * (critic + 3 * critic + 3 * value + value + 3 * actor)


# --------------------------------------------------------------------------- workers (one per process)


def _batch(batch_size: int = BATCH, device: str = "cpu"):
    """The batch of benchmarks/update_speed.py (same seed), ``batch_size`` rows on ``device``."""
    import torch

    update_speed = _import_file(ROOT / "benchmarks" / "update_speed.py", "update_speed_benchmark")
    return update_speed.make_batch(torch.device(device), batch_size=batch_size)


def _ours(algo: str, batch_size: int = BATCH, device: str = "cpu", mode: str = "eager"):
    """robopretrain's update; ``mode``: eager, ``compile`` (torch.compile of the loss), ``cudagraphs``
    (torch.compile mode "reduce-overhead" of the loss, which captures CUDA graphs) or ``graph`` (the whole update
    captured as one CUDA graph: :class:`robopretrain.algos.cuda_graph.CUDAGraphUpdate`)."""
    sys.path.insert(0, str(ROOT))
    from robopretrain.algos.cql import CQL, CQLConfig
    from robopretrain.algos.iql import IQL, IQLConfig

    if algo == "image":
        agent, batch = _ours_image(batch_size, device)
        core = agent.core
    elif algo in FAMILY:
        from robopretrain.algos import make_agent

        core = agent = make_agent(FAMILY_NAMES[algo], OBS_DIM, ACT_DIM, {"batch_size": batch_size}, device=device)
        batch = _dt_batch(batch_size, device) if algo == "dt" else _batch(batch_size, device)
    else:
        batch = _batch(batch_size, device)
        if algo == "calql":
            cfg = CQLConfig(actor_hidden=CALQL_ACTOR, critic_hidden=CRITIC, n_actions=N_ACTIONS, use_calql=True,
                            batch_size=batch_size)
            core = agent = CQL(OBS_DIM, ACT_DIM, cfg, device=device)
        else:
            cfg = IQLConfig(actor_hidden=IQL_HIDDEN, critic_hidden=CRITIC, value_hidden=IQL_HIDDEN,
                            batch_size=batch_size, expectile=0.7, beta=3.0)  # CORL's and d3rlpy's values
            core = agent = IQL(OBS_DIM, ACT_DIM, cfg, device=device)
    if mode == "graph":  # the whole update captured once, then replayed (robopretrain.algos.cuda_graph)
        from robopretrain.algos.cuda_graph import CUDAGraphUpdate

        graphed = CUDAGraphUpdate(agent)  # the worker's warm-up calls are its eager warm-up, then the capture
        return lambda: graphed(batch, with_metrics=False)
    if mode != "eager":
        eager = {k: v.detach().clone() for k, v in core.compute_losses(batch, False)[0].items()}
        core.compile(**({"mode": "reduce-overhead"} if mode == "cudagraphs" else {}))
        compiled = core._losses(batch, False)[0]  # compiles here; same weights and batch as the eager losses
        COMPILE_AGREEMENT["max_abs_loss_diff"] = max(float((compiled[k].detach() - v).abs().max()) for k, v in
                                                     eager.items())
    return lambda: agent.update(batch, with_metrics=False)


COMPILE_AGREEMENT: dict[str, float] = {}  # compiled vs eager losses at the worker's start (same weights and batch)


IMAGE_SIZE, IMAGE_BATCH = 64, 64


def _dt_batch(batch_size: int = DT_BATCH, device: str = "cpu") -> dict:
    """A fixed random batch of ``batch_size`` windows of ``DT_CONTEXT`` steps, none padded: observations (B, K, 39),
    actions (B, K, 4) in [-1, 1], returns-to-go (B, K), timesteps (B, K) consecutive inside [0, 1000), mask ones."""
    import torch

    g = torch.Generator().manual_seed(0)
    B, K = batch_size, DT_CONTEXT
    start = torch.randint(0, DT_EPISODE_LEN - K, (B, 1), generator=g)
    batch = {"observations": torch.randn(B, K, OBS_DIM, generator=g),
             "actions": torch.rand(B, K, ACT_DIM, generator=g) * 2 - 1,
             "returns_to_go": torch.rand(B, K, generator=g) * 10, "timesteps": start + torch.arange(K),
             "mask": torch.ones(B, K)}
    return {k: v.to(device) for k, v in batch.items()}


def _ours_image(batch_size: int = IMAGE_BATCH, device: str = "cpu"):  # -> (agent, update)
    """robopretrain's image Cal-QL update: one 64 px camera + 9 proprio numbers, small_conv encoder trained from
    scratch inside the critic loss (separate actor encoder), DrQ shift, same heads as the state update."""
    import torch

    sys.path.insert(0, str(ROOT))
    from robopretrain.agent import Agent, EncoderSettings
    from robopretrain.data.spec import ObsSpec

    spec = ObsSpec(low_dim=(("proprio", 9),), rgb=(("agentview_image", (IMAGE_SIZE, IMAGE_SIZE, 3)),))
    cfg = {"actor_hidden": CALQL_ACTOR, "critic_hidden": CRITIC, "n_actions": N_ACTIONS, "use_calql": True,
           "batch_size": batch_size}
    agent = Agent(spec, ACT_DIM, "calql", cfg, EncoderSettings(mode="scratch"), device=device)
    g = torch.Generator().manual_seed(0)

    def obs():
        return {"proprio": torch.randn(batch_size, 9, generator=g).to(device),
                "agentview_image": torch.randint(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), generator=g,
                                                 dtype=torch.uint8).to(device)}

    b = {k: v for k, v in _batch(batch_size, device).items() if k not in ("observations", "next_observations")}
    return agent, {"observations": obs(), "next_observations": obs(), **b}


class _Anything:
    """Stand-in for any attribute of a stubbed module: callable (a decorator passes its function through)."""

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return self

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self


def _stub_attr(name: str) -> _Anything:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Anything()


def _stub_corl_imports() -> list[str]:
    """Put stand-ins for CORL's training-script imports that are not installed into ``sys.modules``."""
    stubbed = []
    for name in ("wandb", "pyrallis", "d4rl", "gym"):
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            continue
        except Exception:  # not installed (or broken): the update never uses it
            pass
        module = types.ModuleType(name)
        module.__getattr__ = _stub_attr  # module-level __getattr__ (PEP 562)
        sys.modules[name] = module
        stubbed.append(name)
    return stubbed


def _import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _corl(algo: str, corl_path: str, batch_size: int = BATCH, device: str = "cpu"):
    import torch

    stubbed = _stub_corl_imports()
    b = _batch(batch_size, device)
    col = lambda t: t.unsqueeze(-1)  # noqa: E731  (CORL's buffer returns (B, 1) rewards, dones, returns)
    if algo in FAMILY:
        step = _corl_family(algo, corl_path, batch_size, device)
        if stubbed:
            print(f"corl: stand-in modules for {stubbed}", file=sys.stderr)
        return step
    if algo == "calql":
        m = _import_file(Path(corl_path) / "algorithms" / "finetune" / "cal_ql.py", "corl_cal_ql")
        critic_1 = m.FullyConnectedQFunction(OBS_DIM, ACT_DIM, True, len(CRITIC)).to(device)
        critic_2 = m.FullyConnectedQFunction(OBS_DIM, ACT_DIM, True, len(CRITIC)).to(device)
        actor = m.TanhGaussianPolicy(OBS_DIM, ACT_DIM, 1.0, orthogonal_init=True).to(device)
        trainer = m.CalQL(
            critic_1=critic_1, critic_1_optimizer=torch.optim.Adam(critic_1.parameters(), 3e-4),
            critic_2=critic_2, critic_2_optimizer=torch.optim.Adam(critic_2.parameters(), 3e-4),
            actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), 1e-4),
            target_entropy=-float(ACT_DIM), policy_lr=1e-4, qf_lr=3e-4, bc_steps=0, cql_n_actions=N_ACTIONS,
            cql_alpha=5.0, cql_max_target_backup=True, cql_importance_sample=True, device=device,
        )
        trainer.log_alpha.to(device)
        trainer.log_alpha_prime.to(device)
        batch = [b["observations"], b["actions"], col(b["rewards"]), b["next_observations"], col(b["dones"]),
                 col(b["mc_returns"])]
    else:
        m = _import_file(Path(corl_path) / "algorithms" / "offline" / "iql.py", "corl_iql")
        q, v = m.TwinQ(OBS_DIM, ACT_DIM).to(device), m.ValueFunction(OBS_DIM).to(device)
        actor = m.GaussianPolicy(OBS_DIM, ACT_DIM, 1.0).to(device)
        trainer = m.ImplicitQLearning(
            max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), 3e-4),
            q_network=q, q_optimizer=torch.optim.Adam(q.parameters(), 3e-4),
            v_network=v, v_optimizer=torch.optim.Adam(v.parameters(), 3e-4),
            iql_tau=0.7, beta=3.0, max_steps=1_000_000, discount=0.99, tau=0.005, device=device,
        )
        batch = [b["observations"], b["actions"], col(b["rewards"]), b["next_observations"], col(b["dones"])]
    if stubbed:
        print(f"corl: stand-in modules for {stubbed}", file=sys.stderr)
    return lambda: trainer.train(batch)


def _corl_family(algo: str, corl_path: str, batch_size: int, device: str):
    """CORL's TD3+BC, AWAC, DT or any-percent BC update at the sizes of the module docstring (stubs already in)."""
    import torch

    offline = Path(corl_path) / "algorithms" / "offline"
    if algo == "dt":
        m = _import_file(offline / "dt.py", "corl_dt")
        model = m.DecisionTransformer(state_dim=OBS_DIM, action_dim=ACT_DIM, seq_len=DT_CONTEXT,
                                      episode_len=DT_EPISODE_LEN, embedding_dim=128, num_layers=3, num_heads=1,
                                      attention_dropout=0.1, residual_dropout=0.1, embedding_dropout=0.1,
                                      max_action=1.0).to(device)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, betas=(0.9, 0.999))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optim, lambda steps: min((steps + 1) / 10_000, 1))
        b = _dt_batch(batch_size, device)
        mask = b["mask"]

        def dt_step() -> None:  # the step of CORL dt.py's train() loop (logging left out)
            pred = model(states=b["observations"], actions=b["actions"], returns_to_go=b["returns_to_go"],
                         time_steps=b["timesteps"], padding_mask=~mask.to(torch.bool))
            loss = (torch.nn.functional.mse_loss(pred, b["actions"], reduction="none") * mask.unsqueeze(-1)).mean()
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            optim.step()
            scheduler.step()

        return dt_step
    b = _batch(batch_size, device)
    col = lambda t: t.unsqueeze(-1)  # noqa: E731  (CORL's buffer returns (B, 1) rewards and dones)
    batch = [b["observations"], b["actions"], col(b["rewards"]), b["next_observations"], col(b["dones"])]
    if algo == "td3bc":
        m = _import_file(offline / "td3_bc.py", "corl_td3_bc")
        actor, c1, c2 = m.Actor(OBS_DIM, ACT_DIM, 1.0), m.Critic(OBS_DIM, ACT_DIM), m.Critic(OBS_DIM, ACT_DIM)
        actor, c1, c2 = actor.to(device), c1.to(device), c2.to(device)
        trainer = m.TD3_BC(max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), 3e-4),
                           critic_1=c1, critic_1_optimizer=torch.optim.Adam(c1.parameters(), 3e-4),
                           critic_2=c2, critic_2_optimizer=torch.optim.Adam(c2.parameters(), 3e-4),
                           discount=0.99, tau=0.005, policy_noise=0.2, noise_clip=0.5, policy_freq=2, alpha=2.5,
                           device=device)
        return lambda: trainer.train(batch)
    if algo == "awac":
        m = _import_file(offline / "awac.py", "corl_awac")
        actor = m.Actor(OBS_DIM, ACT_DIM, 256).to(device)
        c1, c2 = m.Critic(OBS_DIM, ACT_DIM, 256).to(device), m.Critic(OBS_DIM, ACT_DIM, 256).to(device)
        trainer = m.AdvantageWeightedActorCritic(
            actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), 3e-4),
            critic_1=c1, critic_1_optimizer=torch.optim.Adam(c1.parameters(), 3e-4),
            critic_2=c2, critic_2_optimizer=torch.optim.Adam(c2.parameters(), 3e-4),
            gamma=0.99, tau=5e-3, awac_lambda=1.0, exp_adv_max=100.0)
        return lambda: trainer.update(batch)
    m = _import_file(offline / "any_percent_bc.py", "corl_any_percent_bc")
    actor = m.Actor(OBS_DIM, ACT_DIM, 1.0).to(device)
    trainer = m.BC(max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), 3e-4),
                   discount=0.99, device=device)
    return lambda: trainer.train(batch)


def _d3rlpy(algo: str):
    import d3rlpy
    import torch
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.torch_utility import TorchMiniBatch

    b = _batch()
    col = lambda t: t.unsqueeze(-1)  # noqa: E731
    if algo == "calql":
        cfg = d3rlpy.algos.CalQLConfig(
            batch_size=BATCH, actor_encoder_factory=VectorEncoderFactory(list(CALQL_ACTOR)),
            critic_encoder_factory=VectorEncoderFactory(list(CRITIC)), n_critics=2, n_action_samples=N_ACTIONS,
            conservative_weight=5.0, max_q_backup=True, actor_learning_rate=1e-4, critic_learning_rate=3e-4,
        )
    else:
        cfg = d3rlpy.algos.IQLConfig(
            batch_size=BATCH, actor_encoder_factory=VectorEncoderFactory(list(IQL_HIDDEN)),
            critic_encoder_factory=VectorEncoderFactory(list(CRITIC)),
            value_encoder_factory=VectorEncoderFactory(list(IQL_HIDDEN)), expectile=0.7, weight_temp=3.0,
        )
    algo_obj = cfg.create(device="cpu:0")
    algo_obj.create_impl((OBS_DIM,), ACT_DIM)
    batch = TorchMiniBatch(
        observations=b["observations"], actions=b["actions"], rewards=col(b["rewards"]),
        next_observations=b["next_observations"], next_actions=b["actions"].clone(),
        returns_to_go=col(b["mc_returns"]), terminals=col(b["dones"]), intervals=torch.ones(BATCH, 1),
        device="cpu:0",
    )
    step = [0]

    def update() -> None:
        algo_obj.impl.update(batch, step[0])
        step[0] += 1

    return update


@contextlib.contextmanager
def _timing_lock(path: str | None):
    """Hold an exclusive ``fcntl.flock`` on ``path`` (no-op for None): the GPU check's workers set up and compile
    concurrently but time their updates one at a time."""
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_worker(args: argparse.Namespace) -> None:
    """Build one implementation, warm up, time ``args.iters`` updates; print one ``RESULT {json}`` line."""
    import torch

    # subnormal flushing as the toolkit's entry points set it (on for ours, off for the peers as their scripts run),
    # or as ENV_FTZ says; before the first torch op, so torch's threads inherit it (robopretrain.cpu_settings)
    flush = os.environ.get(ENV_FTZ, "1" if args.worker == "robopretrain" else "0") == "1"
    torch.set_flush_denormal(flush)
    torch.set_num_threads(args.threads[0])
    torch.manual_seed(0)
    device, batch_size = args.device, args.batches[0]
    start = time.perf_counter()
    if args.worker == "robopretrain":
        step = _ours(args.algo, batch_size, device, args.mode)
    elif args.worker == "corl":
        step = _corl(args.algo, args.corl, batch_size, device)
    else:
        step = _d3rlpy(args.algo)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(args.warmup):  # compiles here with mode compile / cudagraphs
        step()
    sync()
    setup_s = time.perf_counter() - start
    with _timing_lock(args.timing_lock):  # GPU check: one process times at a time while others compile
        for _ in range(min(args.warmup, 3) if args.timing_lock else 0):  # re-warm after waiting for the lock
            step()
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.iters):
            step()
        sync()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    result = {"updates_per_s": args.iters / wall, "cpu_ms_per_update": 1000.0 * cpu / args.iters,
              "setup_and_warmup_s": round(setup_s, 1), **COMPILE_AGREEMENT}
    if args.worker == "robopretrain":
        from robopretrain.nets.kernels import forced_path, machine_record

        result["kernels"] = machine_record()["kernels"]
        result["kernel_override"] = forced_path()
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- orchestration


def _spawn(impl: str, algo: str, threads: int, args: argparse.Namespace, env_extra: dict | None = None) -> dict:
    python = args.d3rlpy_python if impl == "d3rlpy" else sys.executable
    iters = args.iters or DEFAULT_ITERS[algo]
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl.split("[")[0], "--algo", algo,
           "--threads", str(threads), "--iters", str(iters), "--warmup", str(args.warmup),
           "--batches", str({"image": IMAGE_BATCH, "dt": DT_BATCH}.get(algo, BATCH))]
    if impl.endswith("[compile]"):
        cmd += ["--mode", "compile"]
    if impl.startswith("corl"):
        cmd += ["--corl", args.corl]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{impl} {algo} worker failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def _variants(args: argparse.Namespace) -> dict[str, dict]:
    """Implementations to time: name -> extra environment. Ours with forced kernels where asked."""
    out: dict[str, dict] = {"robopretrain": {}}
    for kernel in args.kernels:
        out[f"robopretrain[{kernel}]"] = {"ROBOPRETRAIN_KERNEL": kernel}
    if args.compile:
        out["robopretrain[compile]"] = {}  # torch.compile (inductor's C++ kernels) of the loss: train.compile=true
    if args.ftz_variants:  # the subnormal-flushing setting (robopretrain.cpu_settings) both ways, on both sides
        out["robopretrain[no-ftz]"] = {ENV_FTZ: "0"}
    if args.corl:
        out["corl"] = {}
        if args.ftz_variants:
            out["corl[ftz]"] = {ENV_FTZ: "1"}
    if args.d3rlpy_python:
        out["d3rlpy"] = {}
    return out


def _summary(rates: list[float], cpu: list[float], ratios: dict[str, list[float]], flops: float | None) -> dict:
    med = statistics.median(rates)
    out = {
        "updates_per_s_median": round(med, 2),
        "updates_per_s_min_max": [round(min(rates), 2), round(max(rates), 2)],
        "cpu_ms_per_update_median": round(statistics.median(cpu), 1),
        "achieved_gflop_per_s_median": round(med * flops / 1e9, 1) if flops else None,
        "rounds": [round(r, 2) for r in rates],
        "min_round_over_median": round(min(rates) / med, 2),
    }
    for peer, values in ratios.items():
        if values:
            out[f"vs_{peer}_median_of_round_ratios"] = round(statistics.median(values), 2)
            out[f"vs_{peer}_round_ratios"] = [round(v, 2) for v in values]
    return out


def time_rounds(algo: str, threads: int, variants: dict[str, dict], args: argparse.Namespace, tag: str) -> dict:
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    peers = [v for v in variants if not v.startswith("robopretrain")]
    ratios: dict[str, dict[str, list[float]]] = {v: {p: [] for p in peers} for v in variants}
    kernels: dict[str, dict] = {}
    agreement: dict[str, float] = {}  # compiled variants: max |compiled - eager| of the losses over the rounds
    for r in range(args.rounds):
        row = {}
        for name, env_extra in variants.items():
            res = _spawn(name, algo, threads, args, env_extra)
            row[name] = res["updates_per_s"]
            rates[name].append(res["updates_per_s"])
            cpu[name].append(res["cpu_ms_per_update"])
            if "kernels" in res:
                kernels[name] = {"choices": res["kernels"], "override": res["kernel_override"]}
            if "max_abs_loss_diff" in res:
                agreement[name] = max(agreement.get(name, 0.0), res["max_abs_loss_diff"])
        for name in variants:
            for peer in peers:
                ratios[name][peer].append(row[name] / row[peer])
        print(f"[{tag} {algo} {threads}t] round {r + 1}/{args.rounds}: "
              + ", ".join(f"{n} {v:.2f}/s" for n, v in row.items()), flush=True)
    flops = update_flops(algo)
    results = {n: _summary(rates[n], cpu[n], ratios[n], flops) for n in variants}
    for name, info in kernels.items():
        results[name]["kernel_path"] = info
    for name, diff in agreement.items():
        results[name]["compiled_vs_eager_max_abs_loss_diff"] = diff
    return {"nominal_gflop_per_update": round(flops / 1e9, 3) if flops else None, "results": results}


def measure_peak(threads: int, device: str = "cpu") -> float:
    """fp32 matmul peak (GFLOP/s): best of 5 ``torch.mm`` of n^3 (n = 2048 on CPU, 8192 on CUDA, TF32 off), in a
    fresh process with ``threads`` threads."""
    n = 2048 if device == "cpu" else 8192
    sync = "torch.cuda.synchronize()" if device != "cpu" else "None"
    code = (f"import time,torch\ntorch.set_num_threads({threads})\ntorch.backends.cuda.matmul.allow_tf32=False\n"
            f"a=torch.randn({n},{n},device='{device}');b=torch.randn({n},{n},device='{device}')\n"
            f"torch.mm(a,b);{sync};best=9\nfor _ in range(5):\n t=time.perf_counter();torch.mm(a,b);{sync};"
            f"best=min(best,time.perf_counter()-t)\nprint(2*{n}**3/best/1e9)\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def _corl_commit(path: str | None) -> str | None:
    """The CORL checkout's commit: a ``COMMIT`` file in the folder (an exported copy, as carried to a GPU machine),
    else ``git rev-parse HEAD`` where the folder is a repository's top level, else None."""
    if not path:
        return None
    if (Path(path) / "COMMIT").is_file():
        return (Path(path) / "COMMIT").read_text().strip() or None
    out = subprocess.run(["git", "-C", path, "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                         text=True).stdout.split()
    if len(out) == 2 and Path(out[0]).resolve() == Path(path).resolve():  # not a folder inside another repository
        return out[1]
    return None


def _gpu_job(key: str, cmd: list[str], deadline: float, env: dict) -> tuple[str, dict | None, str | None]:
    """Run one GPU-check worker until ``deadline`` (monotonic); -> (key, result, error)."""
    left = deadline - time.monotonic()
    if left < 20:
        return key, None, "skipped: the time budget (--budget-s) ran out"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"rc {proc.returncode}: {proc.stderr[-1500:]}")
        return key, json.loads(line[-1][7:]), None
    except (subprocess.TimeoutExpired, RuntimeError, ValueError) as e:
        return key, None, f"{type(e).__name__}: {e}"[:2000]


def graph_equivalence(device: str, updates: int = 20) -> dict:
    """The whole-update CUDA graph against eager updates on the same seed and batches, for the learners that draw
    no random numbers in their step (IQL, BC): max abs difference of every parameter after ``updates`` updates
    (3 of them eager warm-ups on the graphed side too). {"skipped": why} without CUDA."""
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return {"skipped": f"needs CUDA (device {device})"}
    sys.path.insert(0, str(ROOT))
    from robopretrain.algos.bc import BC, BCConfig
    from robopretrain.algos.cuda_graph import CUDAGraphUpdate
    from robopretrain.algos.iql import IQL, IQLConfig

    out = {}
    builders = {"iql": lambda: IQL(OBS_DIM, ACT_DIM, IQLConfig(batch_size=BATCH), device=device),
                "bc": lambda: BC(OBS_DIM, ACT_DIM, BCConfig(batch_size=BATCH), device=device)}
    for name, build in builders.items():
        batches = [_batch(BATCH, device) for _ in range(2)]
        for b in batches[1:]:  # two different batches, alternated, so a graph that ignores new inputs is caught
            for k in b:
                b[k] = b[k].flip(0).contiguous()
        torch.manual_seed(0)
        eager = build()
        for i in range(updates):
            eager.update(batches[i % 2], with_metrics=False)
        torch.manual_seed(0)
        graphed_learner = build()
        graphed = CUDAGraphUpdate(graphed_learner, warmup=1)  # update 0 eager, 1 captured and replayed, ...
        for i in range(updates):
            graphed(batches[i % 2], with_metrics=False)
        torch.cuda.synchronize()
        diff = max((a - b).abs().max().item() for a, b in zip(eager.actor.parameters(),
                                                               graphed_learner.actor.parameters()))
        out[name] = {"updates": updates, "max_abs_param_diff_actor": diff,
                     "num_updates": [eager.num_updates, graphed_learner.num_updates]}
    return out


def run_gpu_check(args: argparse.Namespace) -> None:
    """Ours (each mode) and CORL (eager) on ``args.device`` at each batch size, one process each; one JSON.

    ``args.parallel`` workers run at once (set-up and torch.compile overlap, each with at most
    ``TORCHINDUCTOR_COMPILE_THREADS=4``), but each takes an exclusive file lock for its timed updates, so no two
    processes time at the same moment. The order is eager and CORL first, so a budget that runs out cuts the
    compiled modes, not the comparison."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import torch

    report = {"device": args.device, "torch": torch.__version__, "cpu": cpu_info(), "iters_per_process": args.iters,
              "warmup_per_process": args.warmup, "concurrent_workers": args.parallel,
              "timing": "one process times at a time (file lock); others may be compiling meanwhile",
              "corl_commit": _corl_commit(args.corl), "runs": {}, "errors": {}}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    report["peak_fp32_matmul_gflop_per_s"] = measure_peak(args.threads[0], args.device)
    try:
        report["graph_equivalence"] = graph_equivalence(args.device)
    except Exception as e:  # reported, not fatal: the timings still run
        report["graph_equivalence"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    print(f"graph equivalence: {report['graph_equivalence']}", flush=True)
    deadline = time.monotonic() + args.budget_s
    lock = Path(tempfile.mkdtemp()) / "timing.lock"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TORCHINDUCTOR_COMPILE_THREADS="4")
    jobs = []
    for mode_group in (["eager"], [m for m in args.modes if m != "eager"]):
        for algo in args.algos:
            for batch in args.batches:
                impls = [("robopretrain", m) for m in mode_group if m in args.modes]
                if mode_group == ["eager"] and args.corl and algo != "image":
                    impls.append(("corl", "eager"))
                for impl, mode in impls:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--algo", algo,
                           "--device", args.device, "--batches", str(batch), "--mode", mode,
                           "--iters", str(args.iters or 50), "--warmup", str(args.warmup),
                           "--threads", str(args.threads[0]), "--timing-lock", str(lock)]
                    if impl == "corl":
                        cmd += ["--corl", args.corl]
                    jobs.append((f"{algo}_b{batch}_{impl}_{mode}", cmd))
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = [pool.submit(_gpu_job, key, cmd, deadline, env) for key, cmd in jobs]
        for future in futures:
            key, res, err = future.result()
            if err:
                report["errors"][key] = err
                print(f"{key}: failed ({err[:200]})", flush=True)
                continue
            algo, batch = key.split("_")[0], int(key.split("_")[1][1:])
            flops = update_flops(algo, batch)
            res["achieved_gflop_per_s"] = round(res["updates_per_s"] * flops / 1e9, 1) if flops else None
            report["runs"][key] = res
            print(f"{key}: {res['updates_per_s']:.1f} updates/s (setup {res['setup_and_warmup_s']} s)", flush=True)
    for algo in args.algos:
        for batch in args.batches:
            corl = report["runs"].get(f"{algo}_b{batch}_corl_eager")
            for mode in args.modes:
                ours = report["runs"].get(f"{algo}_b{batch}_robopretrain_{mode}")
                if ours and corl:
                    ours["vs_corl_eager"] = round(ours["updates_per_s"] / corl["updates_per_s"], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def cpu_info() -> dict:
    info = {"model_name": None, "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Vendor ID", "Flags"):
                info[key.strip().lower().replace(" ", "_")] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = info.pop("flags", "") or ""
    info["avx512f"] = "avx512f" in flags.split()
    info["amx_tile"] = "amx_tile" in flags.split()
    return info


def setup_d3rlpy(venv: Path) -> Path:
    """Make a venv with d3rlpy (and its gymnasium/gym pins) that imports torch from this interpreter."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz_robopretrain_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", D3RLPY_PIN], check=True)
    return python


def _busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _table(report: dict) -> str:
    lines = ["| update | threads | implementation | updates/s median [min-max] | vs CORL | vs CORL + flushing | "
             "vs d3rlpy | GFLOP/s |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for key, block in report["runs"].items():
        algo, threads = block["algo"], block["threads"]
        for name, res in block["results"].items():
            lo, hi = res["updates_per_s_min_max"]
            lines.append(
                f"| {algo}{' (beside a busy process)' if block.get('contention') else ''} | {threads} | {name} | "
                f"{res['updates_per_s_median']:.2f} [{lo:.2f}-{hi:.2f}] | "
                f"{res.get('vs_corl_median_of_round_ratios', float('nan')):.2f}x | "
                f"{res.get('vs_corl[ftz]_median_of_round_ratios', float('nan')):.2f}x | "
                f"{res.get('vs_d3rlpy_median_of_round_ratios', float('nan')):.2f}x | "
                f"{res['achieved_gflop_per_s_median'] or float('nan'):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--algo", default="calql", choices=ALGOS, help=argparse.SUPPRESS)
    parser.add_argument("--algos", nargs="+", default=["calql", "iql", "image"], choices=ALGOS,
                        help="image: robopretrain's image Cal-QL update (no peer has the same update: ours only); "
                             "td3bc, awac, dt, bc: the offline family against CORL's offline/ files")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gpu-check", action="store_true",
                        help="the GPU check (benchmarks/gpu_check.sh): each --modes x --batches on --device, one JSON")
    parser.add_argument("--device", default="cpu", help="device of the workers (cuda for the GPU check)")
    parser.add_argument("--batches", type=int, nargs="+", default=[BATCH], help="batch sizes (GPU check)")
    parser.add_argument("--mode", default="eager", choices=GPU_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="+", default=list(GPU_MODES), choices=GPU_MODES,
                        help="GPU check: eager, compile (torch.compile of the loss), cudagraphs (compile mode "
                             "reduce-overhead), graph (the whole update captured: robopretrain.algos.cuda_graph)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=None,
                        help="timed updates per process (default: calql 15, iql 150, image 8: a few seconds each)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--corl", default=os.environ.get("CORL_PATH"), help="CORL checkout (folder with algorithms/)")
    parser.add_argument("--d3rlpy-python", default=os.environ.get("D3RLPY_PYTHON"),
                        help="python that imports d3rlpy (see --setup-d3rlpy)")
    parser.add_argument("--setup-d3rlpy", metavar="DIR", help="create a d3rlpy venv at DIR, then exit")
    parser.add_argument("--kernels", nargs="*", default=[], choices=["mm", "mm_par", "bmm", "onednn"],
                        help="also time robopretrain with ROBOPRETRAIN_KERNEL forced to these paths")
    parser.add_argument("--compile", action="store_true",
                        help="also time robopretrain with torch.compile of the loss (train.compile=true); CPU and GPU")
    parser.add_argument("--ftz-variants", action="store_true",
                        help="also time ours without subnormal flushing and CORL with it (Cal-QL: "
                             "robopretrain.cpu_settings; ours flush by default, the peers do not)")
    parser.add_argument("--contention", action="store_true",
                        help="also run the Cal-QL rounds (ours, CORL) beside a CPU-bound process")
    parser.add_argument("--contention-threads", type=int, nargs="+", default=[2])
    parser.add_argument("--skip-quiet", action="store_true",
                        help="only the --contention rounds, added to the JSON already at --out (if any)")
    parser.add_argument("--peak", action="store_true", help="measure the fp32 matmul peak per thread count")
    parser.add_argument("--budget-s", type=float, default=300.0, help="GPU check: stop starting processes after this")
    parser.add_argument("--parallel", type=int, default=1,
                        help="GPU check: workers set up / compile at once (each times its updates alone)")
    parser.add_argument("--timing-lock", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers.json"))
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    if args.gpu_check:
        run_gpu_check(args)
        return
    if args.setup_d3rlpy:
        print(f"d3rlpy python: {setup_d3rlpy(Path(args.setup_d3rlpy))}")
        return
    if args.corl and not (Path(args.corl) / "algorithms" / "finetune" / "cal_ql.py").exists():
        print(f"CORL skipped: no algorithms/finetune/cal_ql.py under {args.corl}")
        args.corl = None
    elif not args.corl:
        print("CORL skipped: pass --corl PATH (or set CORL_PATH) to a checkout of the CORL repository")
    if args.d3rlpy_python and subprocess.run([args.d3rlpy_python, "-c", "import d3rlpy"],
                                             capture_output=True).returncode != 0:
        print(f"d3rlpy skipped: {args.d3rlpy_python} cannot import d3rlpy")
        args.d3rlpy_python = None
    elif not args.d3rlpy_python:
        print("d3rlpy skipped: pass --d3rlpy-python PY (make one with --setup-d3rlpy DIR)")
    import torch

    d3_version = None
    if args.d3rlpy_python:
        d3_version = subprocess.run([args.d3rlpy_python, "-c", "import d3rlpy;print(d3rlpy.__version__)"],
                                    capture_output=True, text=True).stdout.strip()
    corl_commit = _corl_commit(args.corl)
    report = {
        "what": "one update per implementation, same sizes (see benchmarks/peers.py docstring); whole processes, "
        "interleaved rounds; ratios are medians over rounds of the ratio within the round",
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "d3rlpy": d3_version,
        "corl_commit": corl_commit,
        "rounds": args.rounds,
        "iters_per_process": args.iters or DEFAULT_ITERS,
        "warmup_per_process": args.warmup,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "peak_fp32_matmul_gflop_per_s": {},
        "runs": {},
    }
    print(f"CPU: {report['cpu'].get('model_name')}; load {report['load_average_1min_before']}", flush=True)
    if args.peak:
        for t in sorted(set(args.threads)):
            report["peak_fp32_matmul_gflop_per_s"][str(t)] = measure_peak(t)
        print(f"fp32 matmul peak: {report['peak_fp32_matmul_gflop_per_s']} GFLOP/s", flush=True)
    variants = _variants(args)
    if args.skip_quiet and Path(args.out).is_file():
        previous = json.loads(Path(args.out).read_text())
        previous["runs"].update(report["runs"])
        previous.setdefault("later_blocks", []).append({"cpu": report["cpu"], "load_average_1min_before":
                                                        report["load_average_1min_before"]})
        report = previous
    for threads in [] if args.skip_quiet else args.threads:
        for algo in args.algos:
            if algo == "image":  # ours only (no peer has this update), with and without flushing if asked
                chosen = {k: v for k, v in variants.items() if k in ("robopretrain", "robopretrain[no-ftz]")}
            elif algo in FAMILY:  # CORL only (d3rlpy is timed for Cal-QL and IQL); no forced kernels
                chosen = {k: v for k, v in variants.items() if k in ("robopretrain", "corl")}
            else:
                chosen = variants if algo == "calql" else {k: v for k, v in variants.items()
                                                           if "[" not in k or k.endswith("[compile]")}
            load = os.getloadavg()[0]
            block = time_rounds(algo, threads, chosen, args, "quiet")
            block.update(algo=algo, threads=threads, load_average_1min_before_after=[round(load, 2),
                                                                                    round(os.getloadavg()[0], 2)])
            report["runs"][f"{algo}_{threads}t"] = block
            _write(report, args.out)
    if args.contention:
        for threads in args.contention_threads:
            chosen = {k: v for k, v in variants.items() if k in ("robopretrain", "corl")}
            busy = _busy_loop()
            try:
                time.sleep(1.0)
                load = os.getloadavg()[0]
                block = time_rounds("calql", threads, chosen, args, "busy")
            finally:
                busy.kill()
                busy.wait()
            block.update(algo="calql", threads=threads, contention="one CPU-bound process (busy Python loop) beside",
                         load_average_1min_before_after=[round(load, 2), round(os.getloadavg()[0], 2)])
            report["runs"][f"calql_{threads}t_contention"] = block
            _write(report, args.out)
    _write(report, args.out, final=True)
    print(_table(report))
    print(f"wrote {args.out}")


def _write(report: dict, path: str, final: bool = False) -> None:
    """Write the report (after every block, so an interrupted run keeps what it measured)."""
    report["complete"] = final
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    peak = report["peak_fp32_matmul_gflop_per_s"]
    for block in report["runs"].values():
        p = peak.get(str(block["threads"]))
        for res in block["results"].values():
            if p and res["achieved_gflop_per_s_median"]:
                res["fraction_of_fp32_peak"] = round(res["achieved_gflop_per_s_median"] / p, 2)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
