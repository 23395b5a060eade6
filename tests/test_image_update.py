"""The image update's fast encode path computes what the path of commit 443bcac computed.

The new path shifts uint8 frames (``shift_frames``) before the float conversion, feeds channels-last tensors to the
convolutions and runs the s' encoder passes without autograd where no loss reaches them. The reference (the old
path: float conversion, float shift, every pass with autograd) is kept in benchmarks/image_update_speed.py; here
one update of each algorithm runs both ways from the same weights and random streams, and every loss and every
trained parameter's gradient must agree to float32 rounding (channels-last convolutions sum in another order).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from robopretrain.agent import Agent, EncoderSettings
from robopretrain.data.keys import NEXT_OBS, OBS
from robopretrain.data.spec import ObsSpec
from robopretrain.nets.augment import random_shifts, shift_frames, shift_images
from robopretrain.nets.encoders import make_encoder, to_float_images
from robopretrain.nets.obs_encoder import ObsEncoder, normalized_images

ROOT = Path(__file__).resolve().parents[1]
# loaded from its file (benchmarks/ on sys.path would shadow the video_pretrain package)
_spec = importlib.util.spec_from_file_location("image_update_speed", ROOT / "benchmarks" / "image_update_speed.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # type: ignore[union-attr]

SIZE, BATCH, ACT = 24, 6, 3
CAMS = (("agentview_image", (SIZE, SIZE, 3)),)
ALGOS: dict[str, dict[str, Any]] = {
    "bc": {"algo": "bc", "cfg": {"actor_hidden": [16]}},
    "iql": {"algo": "iql", "cfg": {"actor_hidden": [16], "critic_hidden": [16], "value_hidden": [16]}},
    "cql": {"algo": "cql", "cfg": {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2}},
    "calql": {"algo": "calql", "cfg": {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2}},
    "cql+dr3": {"algo": "cql", "cfg": {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2, "dr3_coef": 1.0}},
    "calql+dr3": {"algo": "calql",
                  "cfg": {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2, "dr3_coef": 1.0}},
}


def _agent(name: str, shared: bool) -> Agent:
    torch.manual_seed(0)
    spec = ObsSpec(low_dim=(("proprio", 5),), rgb=CAMS)
    enc = EncoderSettings(mode="scratch", shared=shared, augment_pad=3, kwargs={"channels": 8, "out_dim": 16})
    return Agent(spec, ACT, ALGOS[name]["algo"], {**ALGOS[name]["cfg"], "batch_size": BATCH}, enc, seed=3)


def _batch() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)

    def obs() -> dict[str, torch.Tensor]:
        return {"proprio": torch.randn(BATCH, 5, generator=g),
                "agentview_image": torch.randint(0, 256, (BATCH, SIZE, SIZE, 3), generator=g, dtype=torch.uint8)}

    return {OBS: obs(), NEXT_OBS: obs(), "actions": torch.rand(BATCH, ACT, generator=g) * 2 - 1,
            "rewards": torch.randn(BATCH, generator=g), "dones": (torch.rand(BATCH, generator=g) < 0.3).float(),
            "mc_returns": torch.randn(BATCH, generator=g) * 3}


def _one_update(agent: Agent, batch: dict[str, Any]) -> tuple[dict[str, float], list[torch.Tensor | None]]:
    torch.manual_seed(7)  # the losses' own draws (actions, uniform actions)
    metrics = agent.update(batch)
    grads = [None if p.grad is None else p.grad.clone()
             for opt in agent.optimizers() for group in opt.param_groups for p in group["params"]]
    return metrics, grads


@pytest.mark.parametrize("name,shared", [(n, s) for n in ALGOS for s in (False, True) if not (s and n == "bc")],
                         ids=lambda v: {False: "separate", True: "shared"}.get(v, v) if isinstance(v, bool) else v)
def test_update_equals_the_reference_encode_path(name: str, shared: bool) -> None:  # BC has one encoder: no "shared"
    batch = _batch()
    new, ref = _agent(name, shared), bench.use_reference_path(_agent(name, shared))
    new_metrics, new_grads = _one_update(new, batch)
    ref_metrics, ref_grads = _one_update(ref, batch)
    assert new_metrics.keys() == ref_metrics.keys()
    for key in ref_metrics:
        assert new_metrics[key] == pytest.approx(ref_metrics[key], rel=1e-5, abs=1e-6), key
    assert len(new_grads) == len(ref_grads) > 0
    for i, (a, b) in enumerate(zip(new_grads, ref_grads)):
        assert (a is None) == (b is None), f"parameter {i}: gradient present in one path only"
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"parameter {i}")
    # the step itself: the encoders' weights after the update
    for enc_new, enc_ref in zip(new.encoders(), ref.encoders()):
        for (k, p), q in zip(enc_new.state_dict().items(), enc_ref.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=k)


def test_dr3_gradient_through_next_state_features_is_kept() -> None:
    """DR3's s' term reaches the critic encoder: turning it off must change the critic encoder's gradient by more
    than the tolerance above (so the equality test fails if the s' pass wrongly runs without autograd)."""
    batch = _batch()
    with_dr3, without = _agent("calql+dr3", False), _agent("calql+dr3", False)
    without.core.cfg.dr3_coef = 1e-12  # the same passes and draws, a negligible s' term
    grads = []
    for agent in (with_dr3, without):
        _one_update(agent, batch)
        grads.append([p.grad for p in agent.critic_encoder.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    assert any(not torch.allclose(x, y, rtol=1e-3, atol=1e-5) for x, y in zip(*grads))

# ----------------------------------------------------------------------------- uint8 shift, normalisation
@pytest.mark.parametrize("pad", [0, 1, 4])
def test_shift_frames_equals_shift_images(pad: int) -> None:
    g = torch.Generator().manual_seed(pad)
    frames = torch.randint(0, 256, (9, 7, 5, 3), generator=g, dtype=torch.uint8)  # H != W, C = 3
    offsets = random_shifts(9, pad, g)
    # every edge case: the extreme offsets, one axis only, and offsets beyond the frame (clamped to the border)
    offsets[:4] = torch.tensor([[pad, pad], [-pad, -pad], [pad, -pad], [0, -pad]])
    if pad:
        offsets[4] = torch.tensor([-9, 8])
    out = shift_frames(frames, offsets)
    assert out.shape == frames.shape and out.dtype == torch.uint8 and out.is_contiguous()
    expected = shift_images(frames.permute(0, 3, 1, 2), offsets).permute(0, 2, 3, 1)
    assert torch.equal(out, expected)
    # the float path of the reference: shift after the conversion, exactly the same values
    assert torch.equal(to_float_images(out), shift_images(to_float_images(frames), offsets))
    if pad == 0:
        assert torch.equal(out, frames)
    # a stated pad (as the encoder passes, so no value is read back from the device) at or above max |dx|: the same
    widest = int(offsets[:, 1].abs().max())
    for stated in (widest, widest + 3):
        assert torch.equal(shift_frames(frames, offsets, stated), out)


def test_shift_frames_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        shift_frames(torch.zeros(4, 4, 3, dtype=torch.uint8), torch.zeros(4, 2, dtype=torch.long))


def test_normalized_images_are_bitwise_the_encoders_normalisation() -> None:
    enc = make_encoder("small_conv", SIZE)
    frames = torch.randint(0, 256, (4, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = to_float_images(frames)
    out = normalized_images(frames, enc.mean, enc.std)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, (x - enc.mean) / enc.std)
    with pytest.raises(TypeError, match="uint8"):
        normalized_images(x.permute(0, 2, 3, 1), enc.mean, enc.std)


def test_bfloat16_precision_changes_the_encoder_compute_and_is_validated() -> None:
    torch.manual_seed(0)
    spec = ObsSpec(rgb=CAMS)
    img = make_encoder("small_conv", SIZE, channels=8, out_dim=16)
    fp32, bf16 = ObsEncoder(spec, img), ObsEncoder(spec, img, precision="bfloat16")
    obs = {"agentview_image": torch.randint(0, 256, (4, SIZE, SIZE, 3), dtype=torch.uint8)}
    a, b = fp32(obs), bf16(obs)
    assert b.dtype == torch.float32
    assert not torch.equal(a, b)  # the option reaches the convolutions
    torch.testing.assert_close(a, b, rtol=0.0, atol=0.1)
    torch.testing.assert_close(a, img(to_float_images(obs["agentview_image"])), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="precision='half'"):
        ObsEncoder(spec, img, precision="half")
    with pytest.raises(ValueError, match="encoder.precision='half'"):
        EncoderSettings.from_mapping({"precision": "half"})


def test_conv_flops_counts_each_convolution_by_hand() -> None:
    """The roofline's FLOP count: 2 * B * H_out * W_out * C_out * C_in / groups * k * k per convolution, in order,
    from the shapes the net really produces (stride and padding included); non-convolutions add nothing."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 6, (1, 3), padding=0, groups=2), torch.nn.Flatten())
    layers = bench.conv_flops(net, batch=5, channels=3, size=8)
    assert [layer["out"] for layer in layers] == [[4, 4, 4], [6, 4, 2]]
    assert layers[0]["flops"] == 2 * 5 * 4 * 4 * 4 * 3 * 3 * 3
    assert layers[1]["flops"] == 2 * 5 * 4 * 2 * 6 * 2 * 1 * 3
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        bench.conv_flops(torch.nn.Flatten(), batch=1, channels=1, size=2)


def test_encoder_cost_variants_are_the_testbed_update_with_their_encoder_and_dr3() -> None:
    """benchmarks/encoder_cost.py (claim 6's cost): each variant is stage 2's CQL at the testbed's batch with the
    named encoder, DR3 only where named, both cameras; the projection sums three seeds per arm."""
    from _benchmarks import load_benchmark

    cost = load_benchmark("encoder_cost", "encoder_cost.py")
    assert cost.VARIANTS == ("small_conv", "small_conv+dr3", "resnet18", "resnet18+dr3")  # the claim's arms
    assert cost.variants_of(("small_conv", "impala"))[2:] == ("impala", "impala+dr3")
    with pytest.raises(SystemExit):  # every ratio is to small_conv: it must come first
        cost.main(["--encoders", "impala", "small_conv"])
    for name in (*cost.VARIANTS, "impala+dr3"):
        agent = cost.build_variant(name)
        encoder = agent.critic_encoder.image_encoder
        assert encoder.build_args["name"] == name.partition("+")[0], name
        assert (agent.algo_cfg.dr3_coef > 0) == name.endswith("+dr3") and agent.algo == "cql"
        assert agent.batch_size == 64 and len(agent.spec.rgb) == 2
        assert agent.actor_encoder is not agent.critic_encoder
    proj = cost.projection({n: 1.0 for n in cost.VARIANTS}, jobs=2)
    assert proj["cpu_hours_all_runs"] == 12.0 and proj["wall_hours"] == 6.0
