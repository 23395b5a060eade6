"""Time one Cal-QL update: robopretrain's CQL agent against a naive single-file reference, same run.

The setting is the task's: batch 256, obs 39, act 4, 10 sampled actions, 2 critics with 2 x 256 hidden
units, actor 3 x 256, Cal-QL bound on, max-target backup (REFERENCE.md, Stage 3 defaults). The naive
reference below is straightforward PyTorch in the style of single-file ports: a Python loop over the
critics, separate forward passes for data / uniform / current / next / target / policy actions with the
state repeated per action, one backward and optimiser per parameter group, ``.item()`` logging. Both
implementations compute the same losses; the ratio of their updates/s is the speed-up.

Where robopretrain's update saves time (same math; tests/test_cql.py checks it against an unfused
per-critic reference): the actor runs once on ``[s; s']`` (B + B rows, not B * N repeated states), the two
critics run as one pass over all 1 + 3N action sets, one backward and one fused Adam step cover every
parameter group, no ``.item()`` in the hot path, and on CPU the critic and MLP products run on the kernel path
measured fastest on this machine (robopretrain.nets.kernels: "mm", "mm_par", "bmm" or "onednn" for the critic, "aten" or
"onednn" for the MLP layers). The variants "robopretrain [<path>]" force each path
(``ROBOPRETRAIN_KERNEL``), so the JSON separates what the restructuring gives from what the kernel choice gives.
For the comparison with CORL and d3rlpy see benchmarks/peers.py.

Before timing, ``retain_freed_memory()`` (glibc ``mallopt``) makes freed memory stay in the process for
reuse instead of being page-faulted in anew each update; it is process-wide, so it applies to the naive
reference too (``--no-retain-memory`` to skip it).

Runs on the CPU (by default with all cores and again with 1 thread; the machine may be shared, and with 2
threads every parallel region waits for a descheduled thread), and on CUDA when available, where it also
times ``torch.compile`` of the loss computation (default mode, and "reduce-overhead", which uses CUDA
graphs). Rounds of each variant are interleaved so background load hits all alike; per round the ratio to
the naive reference of the same round is recorded, and medians over rounds are reported, along with the
process CPU time per update (less sensitive to other processes than wall time with 1 thread). Prints the
figures and writes JSON (default benchmarks/results/update_speed.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robopretrain.algos.cql import CQL, CQLConfig  # noqa: E402
from robopretrain.nets.kernels import ENV_KERNEL, machine_key  # noqa: E402
from robopretrain.nets.mlp import ONEDNN_AVAILABLE, retain_freed_memory  # noqa: E402

BATCH, OBS_DIM, ACT_DIM, N_ACTIONS = 256, 39, 4, 10
ACTOR_HIDDEN, CRITIC_HIDDEN = (256, 256, 256), (256, 256)


# --------------------------------------------------------------------------- naive reference


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(i, o), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class NaiveActor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp([OBS_DIM, *ACTOR_HIDDEN, 2 * ACT_DIM])

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, -1)
        std = (log_std - 1.0).clamp(-20, 2).exp()
        u = mean + std * torch.randn_like(mean)
        log_prob = torch.distributions.Normal(mean, std).log_prob(u).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob


class NaiveCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp([OBS_DIM + ACT_DIM, *CRITIC_HIDDEN, 1])

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], -1)).squeeze(-1)


class NaiveCalQL:
    """Straightforward Cal-QL update: same losses as robopretrain.algos.cql, written the obvious way."""

    def __init__(self, device: torch.device) -> None:
        self.actor = NaiveActor().to(device)
        self.critics = [NaiveCritic().to(device) for _ in range(2)]
        self.targets = [copy.deepcopy(c) for c in self.critics]
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), 1e-4)
        self.critic_opt = torch.optim.Adam([p for c in self.critics for p in c.parameters()], 3e-4)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], 1e-4)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        obs, actions, rewards = batch["observations"], batch["actions"], batch["rewards"]
        next_obs, dones, mc = batch["next_observations"], batch["dones"], batch["mc_returns"]
        b, n = obs.shape[0], N_ACTIONS
        new_actions, log_pi = self.actor(obs)
        alpha_loss = -(self.log_alpha * (log_pi + (-ACT_DIM)).detach()).mean()
        alpha = self.log_alpha.exp()
        q_new = torch.min(self.critics[0](obs, new_actions), self.critics[1](obs, new_actions))
        policy_loss = (alpha.detach() * log_pi - q_new).mean()

        q_pred = [c(obs, actions) for c in self.critics]
        obs_rep = obs.repeat_interleave(n, 0)
        next_rep = next_obs.repeat_interleave(n, 0)
        with torch.no_grad():
            next_actions, next_logp = self.actor(next_rep)
            target_q = torch.min(self.targets[0](next_rep, next_actions), self.targets[1](next_rep, next_actions))
            target_q = target_q.view(b, n).max(-1).values
            td_target = rewards + (1 - dones) * 0.99 * target_q
        random_actions = torch.empty(b * n, ACT_DIM, device=obs.device).uniform_(-1, 1)
        cur_actions, cur_logp = self.actor(obs_rep)
        nxt_actions, nxt_logp = self.actor(next_rep)
        cur_actions, cur_logp, nxt_actions, nxt_logp = (
            cur_actions.detach(), cur_logp.detach().view(b, n), nxt_actions.detach(), nxt_logp.detach().view(b, n)
        )
        qf_loss = 0.0
        bound = mc.view(b, 1)
        for critic, q_data in zip(self.critics, q_pred):
            q_rand = critic(obs_rep, random_actions).view(b, n)
            q_cur = torch.maximum(critic(obs_rep, cur_actions).view(b, n), bound)
            q_nxt = torch.maximum(critic(obs_rep, nxt_actions).view(b, n), bound)
            cat = torch.cat([q_rand - ACT_DIM * math.log(0.5), q_nxt - nxt_logp, q_cur - cur_logp], 1)
            gap = (torch.logsumexp(cat, 1) - q_data).mean()
            qf_loss = qf_loss + F.mse_loss(q_data, td_target) + 5.0 * gap

        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        self.actor_opt.zero_grad()
        policy_loss.backward()
        self.actor_opt.step()
        self.critic_opt.zero_grad()
        qf_loss.backward()
        self.critic_opt.step()
        with torch.no_grad():
            for target, critic in zip(self.targets, self.critics):
                for tp, p in zip(target.parameters(), critic.parameters()):
                    tp.data.copy_(5e-3 * p.data + (1 - 5e-3) * tp.data)
        return {"qf_loss": qf_loss.item(), "policy_loss": policy_loss.item(), "alpha_loss": alpha_loss.item()}


# --------------------------------------------------------------------------- timing


def make_batch(device: torch.device, seed: int = 0, batch_size: int = BATCH) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "observations": torch.randn(batch_size, OBS_DIM, generator=g),
        "actions": torch.rand(batch_size, ACT_DIM, generator=g) * 2 - 1,
        "rewards": (torch.rand(batch_size, generator=g) < 0.1).float() * 10 - 5,
        "next_observations": torch.randn(batch_size, OBS_DIM, generator=g),
        "dones": (torch.rand(batch_size, generator=g) < 0.05).float(),
        "mc_returns": torch.randn(batch_size, generator=g) * 50,
    }
    return {k: v.to(device) for k, v in batch.items()}


def make_agent(device: torch.device) -> CQL:
    cfg = CQLConfig(actor_hidden=ACTOR_HIDDEN, critic_hidden=CRITIC_HIDDEN, n_actions=N_ACTIONS, use_calql=True)
    return CQL(OBS_DIM, ACT_DIM, cfg, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(step, device: torch.device, iters: int) -> tuple[float, float]:
    """Updates per second (wall clock) and process CPU ms per update over one block of ``iters`` updates."""
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    _sync(device)
    return iters / (time.perf_counter() - start), 1000.0 * (time.process_time() - cpu_start) / iters


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def summarise(rates: list[float], cpu_ms: list[float], ratios: list[float]) -> dict[str, float]:
    median = _median(rates)
    return {
        "updates_per_s_median": round(median, 2),
        "updates_per_s_best": round(max(rates), 2),
        "ms_per_update_median": round(1000.0 / median, 2),
        "cpu_ms_per_update_median": round(_median(cpu_ms), 2),
        "speedup_vs_naive": round(_median(ratios), 2),  # median over rounds of (rate / naive rate that round)
        "rounds": [round(r, 2) for r in rates],
        "round_speedups": [round(r, 2) for r in ratios],
    }


def _compile_variants(
    device: torch.device, batch: dict[str, torch.Tensor], modes: list[str], errors: dict[str, str]
) -> dict[str, CQL]:
    agents = {}
    for mode in modes:
        name = f"robopretrain+compile({mode})"
        agent = make_agent(device)
        try:
            agent.compile(**({} if mode == "default" else {"mode": mode}))
            start = time.perf_counter()
            for _ in range(3):
                agent.update(batch, with_metrics=False)
            _sync(device)
            print(f"[{device}] {name}: compiled in {time.perf_counter() - start:.1f} s", flush=True)
        except Exception as e:  # a backend that cannot compile here is reported, not fatal
            errors[name] = f"{type(e).__name__}: {e}"[:500]
            print(f"[{device}] {name}: failed ({errors[name][:200]})", flush=True)
            continue
        agents[name] = agent
    return agents


def _forced_step(agent: CQL, batch: dict[str, torch.Tensor], path: str):
    """An update of ``agent`` with ``ROBOPRETRAIN_KERNEL=path`` (the critic path; "onednn" also for the MLP layers)."""

    def step() -> None:
        previous = os.environ.get(ENV_KERNEL)
        os.environ[ENV_KERNEL] = path
        try:
            agent.update(batch, with_metrics=False)
        finally:
            if previous is None:
                del os.environ[ENV_KERNEL]
            else:
                os.environ[ENV_KERNEL] = previous

    return step


def run_device(device: torch.device, args: argparse.Namespace) -> dict:
    """Time every variant on ``device`` in interleaved rounds; returns the per-device report."""
    torch.manual_seed(0)
    batch = make_batch(device)
    naive, agent = NaiveCalQL(device), make_agent(device)
    steps = {
        "naive": lambda: naive.update(batch),
        "robopretrain": lambda: agent.update(batch, with_metrics=False),
    }
    if device.type == "cpu":
        for path in ["mm", "mm_par", "bmm", *(["onednn"] if ONEDNN_AVAILABLE else [])]:
            steps[f"robopretrain [{path}]"] = _forced_step(make_agent(device), batch, path)
    if args.compile is None:
        modes = ["default", "reduce-overhead"] if device.type == "cuda" else []
    else:
        modes = [m for m in args.compile if m != "none"]
    errors: dict[str, str] = {}
    for name, compiled in _compile_variants(device, batch, modes, errors).items():
        steps[name] = lambda a=compiled: a.update(batch, with_metrics=False)
    for step in steps.values():  # warm-up
        for _ in range(args.warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    cpu_ms: dict[str, list[float]] = {name: [] for name in steps}
    ratios: dict[str, list[float]] = {name: [] for name in steps}
    load_before = os.getloadavg()[0]
    tag = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    for r in range(args.rounds):  # interleaved, so background load hits every variant alike
        for name, step in steps.items():
            rate, cpu = time_rounds(step, device, args.iters)
            rates[name].append(rate)
            cpu_ms[name].append(cpu)
            ratios[name].append(rate / rates["naive"][-1])
        print(f"[{tag}] round {r + 1}/{args.rounds}: "
              + ", ".join(f"{n} {v[-1]:.2f}/s (x{ratios[n][-1]:.2f})" for n, v in rates.items()), flush=True)
    results = {name: summarise(rates[name], cpu_ms[name], ratios[name]) for name in steps}
    return {
        "name": "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": results,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (cpu, plus cuda when available)")
    parser.add_argument("--iters", type=int, default=10, help="updates per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per variant")
    parser.add_argument("--warmup", type=int, default=3)
    cores = os.cpu_count() or 1
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({cores, 1}, reverse=True),
                        help="torch CPU thread counts to time (default: all cores, then 1)")
    parser.add_argument("--no-retain-memory", action="store_true", help="skip retain_freed_memory()")
    parser.add_argument(
        "--compile", nargs="+", choices=["none", "default", "reduce-overhead", "max-autotune"], default=None,
        help="torch.compile modes to time too (default: default and reduce-overhead on CUDA, none on CPU)",
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "update_speed.json"))
    args = parser.parse_args(argv)
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    retained = False if args.no_retain_memory else retain_freed_memory()
    report = {
        "what": "one Cal-QL update (critics + actor + temperature + soft target update), batch 256, obs 39, "
        "act 4, 10 sampled actions, 2 critics 2x256, actor 3x256; naive = straightforward reference in this file",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "onednn": ONEDNN_AVAILABLE,
        "kernel_cache_key": machine_key(),
        "retain_freed_memory": retained,
        "iters_per_round": args.iters,
        "rounds": args.rounds,
        "devices": {},
    }
    for d in devices:
        for threads in args.threads if d == "cpu" else [args.threads[0]]:
            torch.set_num_threads(threads)
            key = d if d != "cpu" or threads == args.threads[0] else f"cpu_{threads}_threads"
            report["devices"][key] = run_device(torch.device(d), args)
    for dev, rep in report["devices"].items():
        print(f"--- {dev} ({rep['name']}, threads {rep['cpu_threads']})")
        for name, res in rep["results"].items():
            print(
                f"{name:34s} {res['updates_per_s_median']:7.2f} updates/s median "
                f"({res['updates_per_s_best']:.2f} best)  {res['ms_per_update_median']:7.1f} ms  "
                f"cpu {res['cpu_ms_per_update_median']:7.1f} ms  x{res['speedup_vs_naive']:.2f} vs naive"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
