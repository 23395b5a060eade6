"""Speed of one image Cal-QL update: today's encode path (kept here as the reference) against the agent's.

The update (issue 11, "Pixel RL fast enough"): Cal-QL, batch 256, 10 sampled actions, actor 3x256 and critics 2x256
(benchmarks/peers.py), one 64 px camera (``small_conv`` trained from scratch, DrQ shift of 4 px) plus 9 proprio
numbers, separate actor and critic encoders; and the stage-2 pixel recipe's update (BC, batch 64, the same encoder and camera;
``bc-`` variants). Variants, every one a whole ``Agent.update`` (encoders, losses, backward, optimisers, target
update) on the same batch:

``reference``      the encode path before this benchmark (commit 443bcac): every encode call converts the frames to
                   float, shifts them (a float gather, then a contiguous NCHW copy) and runs the encoder with
                   autograd, four times (critic s, critic s', actor s, actor s'); the actor's s' pass gets a backward
                   pass of zeros. Reimplemented below with the library's pieces (:func:`reference_encoded_batch`).
``reference+nograd`` the same conversions, but s' passes without autograd where no loss reaches them (the agent's
                   rule); identical losses and gradients.
``agent``          ``Agent.update`` as it is (float32): the above, plus the shift on the uint8 frames and a
                   channels-last float tensor into the convolutions (no copy); losses and gradients equal the
                   reference's up to float32 rounding (channels-last convolutions sum in another order).
``agent-bf16``     ``EncoderSettings(precision="bfloat16")``: the image encoders under bfloat16 autocast.
``agent-shared``   ``EncoderSettings(shared=True)``: one encoder, trained by the critic loss, whose detached features
                   the actor reads (DrQ / DrQ-v2's scheme; "encode each frame once per update"): two encoder passes
                   and one backward instead of four and two. Another computation than ``reference`` (the actor no
                   longer trains an encoder of its own), so its ratio is a speed of the *option*, not of the path.
``agent-shared-bf16`` both.
``bound:features-only`` the same Cal-QL update on precomputed 256-d features + proprio (no image encoder; what
                   ``frozen_cached`` trains on): the cost of everything but the encoders, so reference / bound is the
                   most any encode path could gain.

Rounds are interleaved (every variant once per round, in turn) so the other processes on a shared machine hit all
alike; per round each variant's rate is divided by the reference's rate of the same round, and the medians over
rounds are reported. Writes JSON (default benchmarks/results/image_update_speed.json) with the CPU model, the thread
counts and the load average before and after each block.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robopretrain.agent import Agent, EncoderSettings  # noqa: E402
from robopretrain.data.keys import NEXT_OBS, OBS, TASK_ID  # noqa: E402
from robopretrain.data.spec import ObsSpec  # noqa: E402
from robopretrain.nets.augment import random_shift  # noqa: E402
from robopretrain.nets.encoders import to_float_images  # noqa: E402
from robopretrain.nets.obs_encoder import ObsEncoder  # noqa: E402

BATCH, IMAGE_SIZE, ACT_DIM, PROPRIO, N_ACTIONS = 256, 64, 4, 9, 10
ACTOR_HIDDEN, CRITIC_HIDDEN = (256, 256, 256), (256, 256)
CAMERA, WRIST = "agentview_image", "eye_in_hand_image"


# --------------------------------------------------------------------------- today's path, kept as the reference


def reference_forward(enc: ObsEncoder, obs: Mapping[str, torch.Tensor], augment: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``ObsEncoder.forward`` as of commit 443bcac: float conversion, float shift (NCHW copy), encoder."""
    parts = []
    device = enc.mean.device
    if enc.spec.rgb:
        x = to_float_images(torch.cat([obs[k].to(device) for k in enc.spec.rgb_keys]))
        if augment and enc.augment_pad > 0:
            x = random_shift(x, enc.augment_pad, generator=generator)
        parts.extend(enc.image_encoder(x).chunk(len(enc.spec.rgb), dim=0))
    if enc.spec.low_dim:
        low = torch.cat([obs[k].to(device, torch.float32) for k in enc.spec.low_dim_keys], dim=-1)
        parts.append((low - enc.mean) / enc.std)
    if enc.spec.num_tasks:
        ids = obs[TASK_ID].to(device).long().reshape(-1)
        parts.append(nn.functional.one_hot(ids, enc.spec.num_tasks).to(torch.float32))
    return torch.cat(parts, dim=-1)


def reference_encoded_batch(agent: Agent, batch: Mapping[str, Any], nograd_next: bool = False) -> dict[str, Any]:
    """``Agent._encoded_batch`` as of commit 443bcac (``nograd_next``: s' passes without autograd, as the agent now
    does). The shifts are drawn in the same order as the agent draws them: critic s, critic s', actor s, actor s'."""

    def encode(enc: ObsEncoder, obs: Mapping[str, torch.Tensor], grad: bool = True) -> torch.Tensor:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return reference_forward(enc, obs, augment=True, generator=agent.generator)

    obs, next_obs = batch[OBS], batch[NEXT_OBS]
    if agent.algo == "bc":
        return {**batch, OBS: encode(agent.critic_encoder, obs)}
    dr3 = float(getattr(agent.algo_cfg, "dr3_coef", 0.0)) > 0.0
    critic_obs = encode(agent.critic_encoder, obs)
    critic_next = encode(agent.critic_encoder, next_obs, agent.algo != "iql" and (dr3 or not nograd_next))
    flat = {**batch, OBS: critic_obs, NEXT_OBS: critic_next}
    if agent.actor_encoder is agent.critic_encoder:
        flat["actor_observations"] = critic_obs.detach()
        if agent.algo != "iql":
            flat["actor_next_observations"] = critic_next.detach()
    else:
        flat["actor_observations"] = encode(agent.actor_encoder, obs)
        if agent.algo != "iql":
            flat["actor_next_observations"] = encode(agent.actor_encoder, next_obs, not nograd_next)
    return flat


def use_reference_path(agent: Agent, nograd_next: bool = False) -> Agent:
    """Make ``agent.update`` encode as the reference path does (this instance only)."""
    agent._encoded_batch = types.MethodType(  # type: ignore[method-assign]
        lambda self, batch: reference_encoded_batch(self, batch, nograd_next), agent)
    return agent


# --------------------------------------------------------------------------- the update


def make_spec(image_size: int = IMAGE_SIZE, cameras: int = 1) -> ObsSpec:
    return ObsSpec(low_dim=(("proprio", PROPRIO),),
                   rgb=tuple((c, (image_size, image_size, 3)) for c in (CAMERA, WRIST)[:cameras]))


def make_agent(precision: str = "float32", batch_size: int = BATCH, seed: int = 0, image_size: int = IMAGE_SIZE,
               n_actions: int = N_ACTIONS, **encoder: Any) -> Agent:
    cfg = {"actor_hidden": ACTOR_HIDDEN, "critic_hidden": CRITIC_HIDDEN, "n_actions": n_actions, "use_calql": True,
           "batch_size": batch_size}
    torch.manual_seed(seed)
    settings = EncoderSettings(mode="scratch", precision=precision, **encoder)
    return Agent(make_spec(image_size), ACT_DIM, "calql", cfg, settings, seed=seed)


def make_batch(batch_size: int = BATCH, seed: int = 0, image_size: int = IMAGE_SIZE, cameras: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)

    def obs() -> dict[str, torch.Tensor]:
        out = {"proprio": torch.randn(batch_size, PROPRIO, generator=g)}
        for cam in (CAMERA, WRIST)[:cameras]:
            out[cam] = torch.randint(0, 256, (batch_size, image_size, image_size, 3), generator=g, dtype=torch.uint8)
        return out

    return {OBS: obs(), NEXT_OBS: obs(),
            "actions": torch.rand(batch_size, ACT_DIM, generator=g) * 2 - 1,
            "rewards": (torch.rand(batch_size, generator=g) < 0.1).float() * 10 - 5,
            "dones": (torch.rand(batch_size, generator=g) < 0.05).float(),
            "mc_returns": torch.randn(batch_size, generator=g) * 50}


# --------------------------------------------------------------------------- timing

VARIANTS = ("reference", "reference+nograd", "agent", "agent-bf16", "agent-shared", "agent-shared-bf16",
            "bound:features-only")
BC_VARIANTS = ("bc-reference", "bc-agent", "bc-agent-bf16")
# the recipe's best variant so far (benchmarks/results/pixel_recipe.json, protocol A): spatial-softmax small_conv,
# agentview + wrist camera through the one encoder
BC_SSM_VARIANTS = ("bc-ssm-wrist-reference", "bc-ssm-wrist-agent")
SSM = {"pool": "spatial_softmax", "strides": [2, 2, 1, 1], "num_keypoints": 32}
BC_BATCH = 64


def build_variant(name: str) -> tuple[Agent, dict[str, Any]]:
    """The agent and batch of one variant (the same seeds for all, so every variant starts from the same weights)."""
    if name.startswith("bc"):  # the stage-2 pixel recipe: BC with its config defaults, batch 64
        wrist = name.startswith("bc-ssm-wrist")
        torch.manual_seed(0)
        kwargs = dict(SSM) if wrist else {}
        agent = Agent(make_spec(cameras=2 if wrist else 1), ACT_DIM, "bc", {"batch_size": BC_BATCH},
                      EncoderSettings(mode="scratch", kwargs=kwargs,
                                      precision="bfloat16" if name.endswith("bf16") else "float32"), seed=0)
        if name.endswith("-reference"):
            use_reference_path(agent)
        return agent, make_batch(BC_BATCH, cameras=2 if wrist else 1)
    if name == "bound:features-only":  # the same update on precomputed 256-d image features (frozen_cached's
        # training input): what the update costs with an encoder that costs nothing, an upper bound for any encode path
        torch.manual_seed(0)
        spec = ObsSpec(low_dim=(("features", 256), ("proprio", PROPRIO)))
        cfg = {"actor_hidden": ACTOR_HIDDEN, "critic_hidden": CRITIC_HIDDEN, "n_actions": N_ACTIONS, "use_calql": True,
               "batch_size": BATCH}
        agent = Agent(spec, ACT_DIM, "calql", cfg, seed=0)
        batch = make_batch()
        for key in (OBS, NEXT_OBS):
            batch[key] = {"features": torch.randn(BATCH, 256).tanh(), "proprio": batch[key]["proprio"]}
        return agent, batch
    name = name.removesuffix("+ftz")  # the same agent, timed with subnormals flushed (time_updates)
    agent = make_agent("bfloat16" if name.endswith("-bf16") else "float32", shared=name.startswith("agent-shared"))
    if name.startswith("reference"):
        use_reference_path(agent, nograd_next=name == "reference+nograd")
    return agent, make_batch()


def time_updates(agent: Agent, batch: Mapping[str, Any], n: int, flush: bool = False) -> tuple[float, float]:
    """Wall-clock updates/s and process CPU seconds per update over ``n`` updates (``flush``: with subnormals
    flushed to zero on this thread, as the entry points set it: robopretrain.cpu_settings)."""
    torch.set_flush_denormal(flush)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            agent.update(batch, with_metrics=False)
        return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n
    finally:
        torch.set_flush_denormal(False)


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def run_block(names: tuple[str, ...], threads: int, rounds: int, updates: int, warmup: int) -> dict[str, Any]:
    """Interleaved rounds of ``names`` at ``threads``; ratios to ``names[0]`` within each round."""
    torch.set_num_threads(threads)
    agents = {n: build_variant(n) for n in names}
    for n, (agent, batch) in agents.items():  # kernel probes, allocator warm-up
        time_updates(agent, batch, warmup, flush=n.endswith("+ftz"))
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for n in names:
            r, c = time_updates(*agents[n], updates, flush=n.endswith("+ftz"))
            rates[n].append(r)
            cpu[n].append(c)
        print(f"   round {i + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.2f}/s" for n in names), flush=True)
    ref = names[0]
    out = {"threads": threads, "rounds": rounds, "updates_per_round": updates,
           "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()), "variants": {}}
    for n in names:
        ratios = [a / b for a, b in zip(rates[n], rates[ref])]
        out["variants"][n] = {"updates_per_s": median(rates[n]), "rounds_updates_per_s": rates[n],
                              "ratio_vs_reference": median(ratios), "rounds_ratio": ratios,
                              "cpu_ms_per_update": 1e3 * median(cpu[n])}
    return out


def bf16_deviation() -> dict[str, float]:
    """How far bfloat16 autocast moves one Cal-QL update's losses from float32 (same weights, batch and draws)."""
    out = {}
    metrics = {}
    for precision in ("float32", "bfloat16"):
        agent = make_agent(precision)
        torch.manual_seed(1)
        metrics[precision] = agent.update(make_batch())
    for key in ("critic_loss", "bellman_loss", "cql_gap", "policy_loss"):
        if key in metrics["float32"]:
            a, b = metrics["float32"][key], metrics["bfloat16"][key]
            out[key] = {"float32": a, "bfloat16": b, "relative_difference": abs(a - b) / max(abs(a), 1e-12)}
    return out


def conv_flops(net: nn.Module, batch: int, channels: int, size: int) -> list[dict[str, Any]]:
    """Per ``nn.Conv2d`` of ``net`` (in order) on ``(batch, channels, size, size)`` input: its shapes and the
    floating-point operations of its forward pass, ``2 * B * H_out * W_out * C_out * C_in / groups * k_h * k_w``
    (one multiply and one add per weight and output; bias and activations not counted). Raises ValueError for a net
    without convolutions."""
    layers: list[dict[str, Any]] = []

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        b, c_out, h, w = out.shape
        k_h, k_w = m.kernel_size
        layers.append({"in": list(inputs[0].shape[1:]), "out": [c_out, h, w], "stride": list(m.stride),
                       "flops": 2 * b * h * w * c_out * (m.in_channels // m.groups) * k_h * k_w})

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(torch.zeros(batch, channels, size, size))
    finally:
        for h in handles:
            h.remove()
    if not layers:
        raise ValueError("conv_flops: the net has no nn.Conv2d")
    return layers


def _median_seconds(fn: Any, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def roofline(repeats: int = 7) -> dict[str, Any]:
    """How close the float32 encoder runs to this CPU's float32 rate, and the fastest float32 update the same
    computation could reach (at torch's current thread count, subnormals flushed, as the entry points run).

    The encoder's convolutions (``small_conv``, batch ``BATCH``, channels-last input as the agent feeds them):
    forward FLOPs ``F`` (:func:`conv_flops`), backward FLOPs ``F`` (weight gradients) plus the input gradients of
    every convolution but the first (its input is the image), timed over the trunk (convolutions and ReLUs).
    The CPU's rate: a 1024 x 1024 x 1024 matrix product (``torch.mm``) in float32 and in bfloat16. The floor of one
    update of the ``agent`` variant: its convolution FLOPs (two passes with backward, critic s and actor s; two
    without, s' for the target and for the policy's next actions) at the fastest float32 rate measured here (the
    matrix product's or the convolutions' own, whichever is higher), plus the
    ``bound:features-only`` update (everything but the encoders), against the ``reference`` update measured here;
    and the same with the convolutions at the bfloat16 matrix-product rate (what bfloat16 encoders could reach)."""
    torch.set_flush_denormal(True)
    try:
        agent, batch = build_variant("agent")
        net = agent.critic_encoder.image_encoder.net
        trunk = net.convs
        layers = conv_flops(trunk, BATCH, 3, IMAGE_SIZE)
        fwd = float(sum(layer["flops"] for layer in layers))
        bwd = fwd + float(sum(layer["flops"] for layer in layers[1:]))
        x = torch.rand(BATCH, IMAGE_SIZE, IMAGE_SIZE, 3).permute(0, 3, 1, 2)  # channels-last, as the agent's input

        def forward_backward() -> None:
            trunk(x).sum().backward()

        with torch.no_grad():
            t_fwd = _median_seconds(lambda: trunk(x), repeats)
        t_fb = _median_seconds(forward_backward, repeats)
        rates = {}
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            a, b = torch.rand(1024, 1024, dtype=dtype), torch.rand(1024, 1024, dtype=dtype)
            rates[name] = 2 * 1024 ** 3 / _median_seconds(lambda: torch.mm(a, b), repeats) / 1e9
        bound_agent, bound_batch = build_variant("bound:features-only")
        ref_agent, ref_batch = build_variant("reference")
        t_rest = _median_seconds(lambda: bound_agent.update(bound_batch, with_metrics=False), repeats)
        t_ref = _median_seconds(lambda: ref_agent.update(ref_batch, with_metrics=False), 3)
        t_agent = _median_seconds(lambda: agent.update(batch, with_metrics=False), 3)
        update_flops = 2 * (fwd + bwd) + 2 * fwd
        best = max(rates["float32"], fwd / t_fwd / 1e9, (fwd + bwd) / t_fb / 1e9)  # the fastest float32 rate seen
        floor = update_flops / (best * 1e9) + t_rest
        floor_bf16 = update_flops / (rates["bfloat16"] * 1e9) + t_rest  # bfloat16 encoders at the bf16 product rate
    finally:
        torch.set_flush_denormal(False)
    return {"threads": torch.get_num_threads(), "conv_layers": layers,
            "trunk_forward": {"gflop": fwd / 1e9, "ms": 1e3 * t_fwd, "gflop_per_s": fwd / t_fwd / 1e9},
            "trunk_forward_backward": {"gflop": (fwd + bwd) / 1e9, "ms": 1e3 * t_fb,
                                       "gflop_per_s": (fwd + bwd) / t_fb / 1e9},
            "matmul_gflop_per_s": rates,
            "update": {"conv_gflop": update_flops / 1e9, "rest_ms (bound:features-only)": 1e3 * t_rest,
                       "floor_ms_float32": 1e3 * floor, "agent_ms": 1e3 * t_agent, "reference_ms": 1e3 * t_ref,
                       "agent_ratio": t_ref / t_agent, "max_ratio_float32_same_computation": t_ref / floor,
                       "floor_ms_bfloat16_encoders": 1e3 * floor_bf16, "max_ratio_bfloat16_encoders": t_ref / floor_bf16}}


def print_roofline(r: Mapping[str, Any]) -> None:
    u = r["update"]
    print(f"   encoder convolutions (batch {BATCH}): forward {r['trunk_forward']['gflop_per_s']:.0f} GFLOP/s, "
          f"forward+backward {r['trunk_forward_backward']['gflop_per_s']:.0f} GFLOP/s; matrix product "
          f"{r['matmul_gflop_per_s']['float32']:.0f} GFLOP/s float32, {r['matmul_gflop_per_s']['bfloat16']:.0f} "
          f"bfloat16")
    print(f"   update: reference {u['reference_ms']:.0f} ms, agent {u['agent_ms']:.0f} ms ({u['agent_ratio']:.2f}x), "
          f"float32 floor {u['floor_ms_float32']:.0f} ms ({u['conv_gflop']:.1f} GFLOP of convolutions at the "
          f"fastest float32 rate + {u['rest_ms (bound:features-only)']:.0f} ms without encoders): at most "
          f"{u['max_ratio_float32_same_computation']:.2f}x with the same float32 computation; "
          f"{u['max_ratio_bfloat16_encoders']:.2f}x if bfloat16 encoders ran at the bfloat16 product rate", flush=True)


def cpu_description() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "torch": torch.__version__,
                            "logical_cpus": os.cpu_count(), "mkldnn_available": bool(torch.backends.mkldnn.is_available())}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and "model" not in info:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("vendor_id") and "vendor" not in info:
                info["vendor"] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and "isa" not in info:
                flags = set(line.split(":", 1)[1].split())
                info["isa"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "avx_vnni")))
    except OSError:
        info["model"] = platform.processor() or "unknown"
    try:
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        pass
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=3, help="timed Cal-QL updates per variant per round")
    parser.add_argument("--bc-updates", type=int, default=10, help="timed BC updates per variant per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-bc", action="store_true")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="Cal-QL variants to time (default: all of VARIANTS); the first is the ratios' reference; "
                             "a name ending in +ftz is that variant with subnormals flushed to zero (the toolkit's "
                             "default since stop 25; with 2 threads only on the main thread: torch's worker thread "
                             "keeps the setting it started with, off)")
    parser.add_argument("--roofline-only", action="store_true",
                        help="only the roofline (convolution GFLOP/s against the CPU's matrix-product rate, and the "
                             "float32 update floor), at the first --threads value")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "image_update_speed.json"))
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "command": "python benchmarks/image_update_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_description(),
        "setting": {"calql": {"batch": BATCH, "n_actions": N_ACTIONS, "image_size": IMAGE_SIZE, "camera": CAMERA,
                              "proprio": PROPRIO, "act_dim": ACT_DIM, "actor_hidden": ACTOR_HIDDEN,
                              "critic_hidden": CRITIC_HIDDEN, "encoder": "small_conv (scratch, separate actor and "
                              "critic encoders)", "augment_pad": 4},
                    "bc": {"batch": BC_BATCH, "encoder": "small_conv (scratch)", "actor": "BC config defaults"},
                    "bc-ssm-wrist": {"batch": BC_BATCH, "encoder": f"small_conv {SSM} (scratch)",
                                     "cameras": [CAMERA, WRIST]}},
        "blocks": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads[0])
    print(f"== roofline, {args.threads[0]} thread(s)", flush=True)
    result["roofline"] = roofline()
    print_roofline(result["roofline"])
    if args.roofline_only:
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
        return result
    result["bf16_vs_float32_one_update"] = bf16_deviation()
    for threads in args.threads:
        print(f"== Cal-QL image update, {threads} thread(s)", flush=True)
        block = run_block(tuple(args.variants or VARIANTS), threads, args.rounds, args.updates, args.warmup)
        result["blocks"].append({"update": "calql", **block})
        print_block(block)
        out.write_text(json.dumps(result, indent=1))  # every finished block is kept
        if not args.skip_bc:
            print(f"== BC image update (batch {BC_BATCH}), {threads} thread(s)", flush=True)
            block = run_block(BC_VARIANTS, threads, args.rounds, args.bc_updates, args.warmup)
            result["blocks"].append({"update": "bc", **block})
            print_block(block)
            print(f"== BC image update, spatial softmax + wrist camera (batch {BC_BATCH}), {threads} thread(s)", flush=True)
            block = run_block(BC_SSM_VARIANTS, threads, args.rounds, args.bc_updates, args.warmup)
            result["blocks"].append({"update": "bc-ssm-wrist", **block})
            print_block(block)
            out.write_text(json.dumps(result, indent=1))
    result["complete"] = True
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


def print_block(block: Mapping[str, Any]) -> None:
    print(f"   load average before {block['load_average_before'][0]:.2f}, after {block['load_average_after'][0]:.2f}")
    for name, v in block["variants"].items():
        rounds = ", ".join(f"{r:.2f}" for r in v["rounds_ratio"])
        print(f"   {name:18s} {v['updates_per_s']:6.2f} updates/s  {v['ratio_vs_reference']:5.2f}x [{rounds}]  "
              f"{v['cpu_ms_per_update']:7.1f} CPU ms/update", flush=True)


if __name__ == "__main__":
    main()
