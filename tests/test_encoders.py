"""Encoders (shapes, gradients, normalization, errors), random-shift augmentation, encoder checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import robopretrain.nets.encoder_io as encoder_io
import robopretrain.nets.encoders as encoders
from robopretrain.nets.augment import random_shift, random_shifts
from robopretrain.nets.encoder_io import EncoderCheckpointError, load_encoder, read_encoder_meta, save_encoder
from robopretrain.nets.encoders import make_encoder, num_parameters, to_float_images

# out_dim of each encoder with default kwargs, as documented in robopretrain/nets/encoders.py
DOCUMENTED_OUT_DIM = {
    "small_conv": 256,
    "impala": 256,
    "resnet18": 256,
    "resnet34": 256,
    "timm:resnet10t": 512,
    "timm:mobilenetv3_small_050": 1024,
}


def images(batch: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("name", list(DOCUMENTED_OUT_DIM))
def test_every_encoder_gives_documented_features_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    enc = make_encoder(name, image_size=64)
    assert enc.out_dim == DOCUMENTED_OUT_DIM[name]
    assert f"``{name.split(':')[0]}" in encoders.__doc__ and str(enc.out_dim) in encoders.__doc__
    x = images(3, 64).requires_grad_(True)
    y = enc(x)
    assert y.shape == (3, DOCUMENTED_OUT_DIM[name]) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1])  # features depend on the image
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    no_grad = [n for n, p in enc.named_parameters() if p.grad is None]
    assert no_grad == []
    assert sum(p.grad.abs().sum() for p in enc.parameters()) > 0


def test_resnet_at_128_px_uses_a_bigger_spatial_kernel() -> None:
    enc = make_encoder("resnet18", image_size=128)
    assert enc.net.spatial.kernel.shape == (512, 4, 4, 8)
    assert make_encoder("resnet18", image_size=64).net.spatial.kernel.shape == (512, 2, 2, 8)
    y = enc(images(2, 128))
    assert y.shape == (2, 256)
    assert y.abs().max() <= 1.0  # Dense -> LayerNorm -> tanh head
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 4 for m in enc.modules()) > 10


def test_encoder_normalizes_inside_with_its_input_spec() -> None:
    enc = make_encoder("small_conv", image_size=32).eval()
    spec = enc.input_spec
    assert spec["image_size"] == 32 and spec["channels"] == 3
    assert spec["channel_order"] == "RGB" and spec["layout"] == "CHW" and spec["value_range"] == [0.0, 1.0]
    assert spec["mean"] == pytest.approx(encoders.IMAGENET_MEAN) and spec["std"] == pytest.approx(encoders.IMAGENET_STD)
    x = images(2, 32)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)
    assert torch.allclose(enc(x), enc.net((x - mean) / std))
    assert num_parameters(enc) == sum(p.numel() for p in enc.net.parameters())  # mean/std are not parameters


def test_stacked_frames_repeat_rgb_statistics_and_custom_kwargs() -> None:
    enc = make_encoder("impala", image_size=32, in_channels=6, channels=(8, 16), out_dim=64, head_tanh=False)
    assert enc.input_spec["mean"] == pytest.approx(list(encoders.IMAGENET_MEAN) * 2)
    assert enc(images(2, 32, channels=6)).shape == (2, 64)
    assert make_encoder("small_conv", 32, in_channels=1).input_spec["mean"] == [0.5]


def test_to_float_images_converts_uint8_bhwc_and_bthwc() -> None:
    x = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    y = to_float_images(x)
    assert y.shape == (2, 3, 5, 7) and y.dtype == torch.float32
    assert torch.equal(y[1, 2, 4, 6], x[1, 4, 6, 2].float() / 255)
    assert to_float_images(torch.zeros(2, 4, 5, 7, 3, dtype=torch.uint8)).shape == (2, 4, 3, 5, 7)
    with pytest.raises(TypeError, match="uint8"):
        to_float_images(y)


def test_an_encoder_refuses_frames_on_the_0_255_scale(tmp_path) -> None:
    """A loaded encoder took float frames in [0, 255] silently (features about 0.81 cosine to the right ones); its
    first input is now checked to lie in [0, 1]."""
    enc = make_encoder("small_conv", 16)
    save_encoder(tmp_path / "enc", enc, "small_conv", {})
    loaded, _ = load_encoder(tmp_path / "enc")
    with pytest.raises(ValueError, match=r"expected float images in \[0, 1\], got values in \[0, 255\]; .*"
                                         r"to_float_images"):
        loaded(torch.full((2, 3, 16, 16), 255.0).index_fill_(0, torch.tensor([0]), 0.0))
    fresh = make_encoder("small_conv", 16)
    assert fresh(torch.rand(2, 3, 16, 16) * (1 + 5e-4)).shape == (2, fresh.out_dim)  # within the slack: runs
    with pytest.raises(ValueError, match=r"got values in \[-0.01, "):
        make_encoder("small_conv", 16)(torch.rand(2, 3, 16, 16).index_fill_(0, torch.tensor([1]), -0.01))


def test_encoder_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'resnet50'.*small_conv"):
        make_encoder("resnet50", 64)
    with pytest.raises(ValueError, match="'small_conv'.*unknown argument.*'width'"):
        make_encoder("small_conv", 64, width=3)
    with pytest.raises(ValueError, match=r"encoder 'resnet18' with \{'groups': 3\} at 64 px: .*divisible"):
        make_encoder("resnet18", 64, groups=3)  # torch's message named neither
    with pytest.raises(ValueError, match="timm:no_such_net"):
        make_encoder("timm:no_such_net", 64)
    # out_dim=0 built an encoder of no features (an agent blind without a word); -1 and channels=0 were torch's
    for name, kwargs, shown in (("small_conv", {"out_dim": 0}, "out_dim=0; expected an integer >= 1"),
                                ("small_conv", {"out_dim": -1}, "out_dim=-1; expected an integer >= 1"),
                                ("small_conv", {"channels": 0}, "channels=0; expected an integer >= 1"),
                                ("small_conv", {"strides": [2, 0]}, r"strides=\[2, 0\]; expected a list of integers"),
                                ("impala", {"channels": [16, 0]}, r"channels=\[16, 0\]; expected a list of integers")):
        with pytest.raises(ValueError, match=rf"encoder '{name}': {shown}"):
            make_encoder(name, 64, **kwargs)
    assert make_encoder("small_conv", 64, out_dim=1, num_keypoints=None).out_dim == 1
    with pytest.raises(ValueError, match="pretrained"):
        make_encoder("timm:resnet10t", 64, pretrained=True)
    # a ViT built for 224 px on 48 px frames: timm's AssertionError was a traceback; the fix it names works
    with pytest.raises(ValueError, match=r"does not take 48 px images.*\+encoder.kwargs.img_size=48"):
        make_encoder("timm:vit_tiny_patch16_224", 48, depth=1)
    assert make_encoder("timm:vit_tiny_patch16_224", 48, depth=1, img_size=48)(images(2, 48)).shape == (2, 192)
    with pytest.raises(ValueError, match=r"timm:resnet10t: .*img_size"):  # a keyword the model lacks: was a traceback
        make_encoder("timm:resnet10t", 32, img_size=32)
    enc = make_encoder("small_conv", 32)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"):
        enc(images(2, 64))
    with pytest.raises(TypeError, match="to_float_images"):
        enc(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


# ----------------------------------------------------------------------------- random shift
def test_random_shift_same_crop_for_all_frames_of_a_sample() -> None:
    frame = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    clips = frame.unsqueeze(1).expand(8, 5, 3, 16, 16).contiguous()  # T = 5 identical frames per sample
    out = random_shift(clips, pad=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == clips.shape
    for t in range(1, 5):
        assert torch.equal(out[:, t], out[:, 0])
    assert not torch.equal(out[:, 0], frame)  # something moved


def test_random_shift_differs_across_samples_and_is_seeded() -> None:
    x = torch.rand(1, 3, 16, 16).expand(16, 3, 16, 16).contiguous()  # 16 copies of one image
    out = random_shift(x, pad=4, generator=torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 8
    again = random_shift(x, pad=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_random_shift_matches_replicate_pad_and_crop() -> None:
    x = torch.randint(0, 256, (6, 3, 12, 10), dtype=torch.uint8)
    pad = 3
    out = random_shift(x, pad, generator=torch.Generator().manual_seed(5))
    offsets = random_shifts(6, pad, torch.Generator().manual_seed(5))
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
    for b, (dy, dx) in enumerate(offsets.tolist()):
        crop = padded[b, :, pad + dy:pad + dy + 12, pad + dx:pad + dx + 10]
        assert torch.equal(out[b].float(), crop)
    assert out.dtype == torch.uint8


def test_random_shift_pad_zero_is_identity_and_bad_input_rejected() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert random_shift(x, 0) is x
    with pytest.raises(ValueError, match="pad"):
        random_shift(x, -1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_shift(torch.rand(3, 8, 8), 2)


# ----------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    enc = make_encoder("impala", 32, channels=(8, 16, 16), out_dim=64)
    with torch.no_grad():  # weights that differ from a fresh init
        for p in enc.parameters():
            p.add_(0.01 * torch.randn_like(p))
    config = {"encoder": {"name": "impala", "image_size": 32}, "objective": "icvf", "steps": 10}
    folder = save_encoder(tmp_path / "enc", enc, "impala", config, extra={"objective": "icvf", "steps": 10})
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "encoder.pt", "meta.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]  # no temporary folder left behind

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(encoder_io.torch, "load", spy)
    loaded, meta = load_encoder(folder)
    assert calls == [True]
    assert meta["encoder"] == "impala" and meta["out_dim"] == 64 and meta["extra"] == {"objective": "icvf", "steps": 10}
    assert meta["kwargs"] == {"channels": [8, 16, 16], "out_dim": 64}
    assert meta["input_spec"] == enc.input_spec and meta["num_parameters"] == num_parameters(enc)
    assert "torch" in meta["versions"]
    assert "objective: icvf" in (folder / "config.yaml").read_text()
    x = images(4, 32)
    enc.eval()
    assert not loaded.training
    assert torch.equal(loaded(x), enc(x))


def test_timm_encoder_round_trip_keeps_batchnorm_statistics(tmp_path: Path) -> None:
    enc = make_encoder("timm:resnet10t", 64)
    enc(images(4, 64))  # train mode: updates BatchNorm running statistics
    enc.eval()
    loaded, _ = load_encoder(save_encoder(tmp_path / "t", enc, "timm:resnet10t", {}))
    x = images(2, 64, seed=3)
    assert torch.equal(loaded(x), enc(x))


def test_saving_again_replaces_the_checkpoint_but_not_other_folders(tmp_path: Path) -> None:
    a, b = make_encoder("small_conv", 16, out_dim=8), make_encoder("small_conv", 16, out_dim=8)
    save_encoder(tmp_path / "enc", a, "small_conv", {})
    save_encoder(tmp_path / "enc", b, "small_conv", {})
    loaded, _ = load_encoder(tmp_path / "enc")
    x = images(2, 16)
    assert torch.equal(loaded(x), b.eval()(x))
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(EncoderCheckpointError, match="notes.*not an encoder checkpoint"):
        save_encoder(tmp_path / "notes", a, "small_conv", {})
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="'impala' differs"):
        save_encoder(tmp_path / "x", a, "impala", {})


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    folder = save_encoder(tmp_path / "enc", make_encoder("small_conv", 16, out_dim=8), "small_conv", {})
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())

    meta_path.write_text(json.dumps({**meta, "encoder": "vit_giant"}))
    with pytest.raises(EncoderCheckpointError, match=r"meta\.json.*'vit_giant'.*unknown encoder"):
        load_encoder(folder)

    meta_path.write_text(json.dumps({**meta, "kwargs": {"out_dim": 16}}))  # weights are for out_dim=8
    with pytest.raises(EncoderCheckpointError, match=r"encoder\.pt.*shape mismatch.*head\.0\.weight"):
        load_encoder(folder)

    meta_path.write_text("{not json")
    with pytest.raises(EncoderCheckpointError, match=r"meta\.json.*not valid JSON"):
        load_encoder(folder)

    meta_path.write_text(json.dumps(meta))
    (folder / "encoder.pt").write_bytes(b"truncated")
    with pytest.raises(EncoderCheckpointError, match=r"encoder\.pt: unreadable \(corrupt, truncated, or not a file"):
        load_encoder(folder)
    (folder / "encoder.pt").unlink()
    with pytest.raises(EncoderCheckpointError, match=r"encoder\.pt.*missing"):
        load_encoder(folder)
    with pytest.raises(EncoderCheckpointError, match="no such encoder checkpoint folder"):
        load_encoder(tmp_path / "nowhere")
    (tmp_path / "stage2_run" / "checkpoints").mkdir(parents=True)  # a stage-2 run given as the encoder
    with pytest.raises(EncoderCheckpointError, match=r"meta.json: missing.*this is an agent run: init=<folder>"):
        load_encoder(tmp_path / "stage2_run")
    (tmp_path / "stage1_run" / "checkpoints").mkdir(parents=True)  # stage 1 stopped before saving its encoder
    (tmp_path / "stage1_run" / "checkpoints" / "last.pt").write_bytes(b"state")
    with pytest.raises(EncoderCheckpointError, match=r"meta.json: missing.*; this is a stage-1 run that has not "
                                                     r"saved its encoder yet .*rerun stage 1 with the same settings"):
        load_encoder(tmp_path / "stage1_run")


# ----------------------------------------------------------------------------- small_conv: keypoints, coordinates
def test_spatial_softmax_puts_a_bright_spot_at_its_coordinates() -> None:
    h, w = 9, 13
    ssm = encoders.SpatialSoftmax(channels=3, height=h, width=w, num_keypoints=None)  # one keypoint per channel
    x = torch.zeros(2, 3, h, w)
    spots = [[(0, 0), (4, 6), (8, 12)], [(2, 11), (8, 0), (6, 3)]]  # (row, col) per sample and channel
    for b, per in enumerate(spots):
        for c, (r, col) in enumerate(per):
            x[b, c, r, col] = 50.0  # softmax(50) over zeros: all the mass on the spot
    kp = ssm(x)
    assert kp.shape == (2, 6)
    expected = torch.tensor([[v for r, col in per for v in (-1 + 2 * col / (w - 1), -1 + 2 * r / (h - 1))]
                             for per in spots])
    assert torch.allclose(kp, expected, atol=1e-4)
    assert kp.abs().max() <= 1.0
    uniform = ssm(torch.zeros(1, 3, h, w))  # no spot: the centre of the picture
    assert torch.allclose(uniform, torch.zeros(1, 6), atol=1e-6)


def test_spatial_softmax_keypoint_conv_temperature_and_errors() -> None:
    ssm = encoders.SpatialSoftmax(channels=8, height=4, width=4, num_keypoints=5, temperature=0.5,
                                  learnable_temperature=True)
    assert ssm(torch.randn(3, 8, 4, 4)).shape == (3, 10)
    assert {n for n, _ in ssm.named_parameters()} == {"keypoints.weight", "keypoints.bias", "log_temperature"}
    assert float(ssm.log_temperature.detach().exp()) == pytest.approx(0.5)
    fixed = encoders.SpatialSoftmax(channels=8, height=4, width=4)
    assert "log_temperature" not in dict(fixed.named_parameters())
    with pytest.raises(ValueError, match="built for 4 x 4 maps, got 5 x 5"):
        fixed(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match="temperature"):
        encoders.SpatialSoftmax(8, 4, 4, temperature=0.0)


def test_coord_channels_append_x_then_y() -> None:
    out = encoders.CoordChannels()(torch.zeros(2, 3, 4, 5))
    assert out.shape == (2, 5, 4, 5)
    assert torch.equal(out[:, :3], torch.zeros(2, 3, 4, 5))
    xs, ys = torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 4)
    assert torch.allclose(out[0, 3, 0], xs) and torch.allclose(out[1, 3, 3], xs)
    assert torch.allclose(out[0, 4, :, 0], ys) and torch.allclose(out[0, 4, :, 4], ys)


@pytest.mark.parametrize("kwargs, out_dim", [
    ({"pool": "spatial_softmax"}, 256),
    ({"pool": "spatial_softmax", "strides": [2, 2, 1, 1], "coord_channels": True}, 256),
    ({"pool": "spatial_softmax", "head": "linear", "out_dim": 64}, 64),
    ({"pool": "spatial_softmax", "head": "none", "num_keypoints": 16}, 32),
    ({"coord_channels": True}, 256),
])
def test_small_conv_options_give_features_and_gradients(kwargs: dict, out_dim: int) -> None:
    torch.manual_seed(0)
    enc = make_encoder("small_conv", 64, **kwargs)
    assert enc.out_dim == out_dim
    x = images(3, 64).requires_grad_(True)
    y = enc(x)
    assert y.shape == (3, out_dim) and torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1])
    if kwargs.get("head") == "none":  # the keypoints themselves
        assert y.abs().max() <= 1.0
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_small_conv_keypoint_maps_follow_strides() -> None:
    assert make_encoder("small_conv", 64, pool="spatial_softmax").net.pool.pos.shape == (8 * 8, 2)
    for size, side in ((64, 16), (84, 21)):
        enc = make_encoder("small_conv", size, pool="spatial_softmax", strides=[2, 2, 1, 1])
        assert enc.net.pool.pos.shape == (side * side, 2)
    coord = make_encoder("small_conv", 32, coord_channels=True)
    assert coord.net.convs[0].in_channels == 5


def test_small_conv_default_keeps_its_parameter_names() -> None:
    """Encoders saved before the options existed (stage-1 checkpoints) load into the default small_conv."""
    enc = make_encoder("small_conv", 64)
    assert list(enc.net.state_dict()) == [f"convs.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")] + [
        "head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"]
    assert num_parameters(enc) == 553_696  # as documented


def test_small_conv_option_errors() -> None:
    with pytest.raises(ValueError, match="pool='max'.*flatten.*spatial_softmax"):
        make_encoder("small_conv", 32, pool="max")
    with pytest.raises(ValueError, match="head='mlp'"):
        make_encoder("small_conv", 32, head="mlp")
    with pytest.raises(ValueError, match="strides"):
        make_encoder("small_conv", 32, strides=[])


def test_spatial_softmax_encoder_round_trip(tmp_path: Path) -> None:
    kwargs = {"pool": "spatial_softmax", "strides": [2, 2, 1, 1], "coord_channels": True,
              "learnable_temperature": True}
    enc = make_encoder("small_conv", 32, **kwargs)
    with torch.no_grad():
        enc.net.pool.log_temperature.add_(0.3)
    loaded, meta = load_encoder(save_encoder(tmp_path / "enc", enc, "small_conv", {}))
    assert meta["kwargs"] == kwargs
    x = images(2, 32)
    assert torch.equal(loaded(x), enc.eval()(x))


def test_a_stage1_run_folder_names_its_encoder_and_is_no_agent(tmp_path: Path) -> None:
    """``encoder.checkpoint=<stage-1 run folder>`` was told it was an agent run (its checkpoints/ folder) and to use
    init=; ``evaluate checkpoint=<stage-1 run>/encoder`` read as a corrupt agent checkpoint (weights.pt missing)."""
    from robopretrain.agent import EncoderSettings, build_image_encoder
    from robopretrain.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_dir

    enc = make_encoder("small_conv", 16, out_dim=8)
    folder = save_encoder(tmp_path / "s1" / "encoder", enc, "small_conv", {})
    (tmp_path / "s1" / "checkpoints").mkdir()
    (tmp_path / "s1" / "checkpoints" / "last.pt").write_bytes(b"stage 1's training state")
    loaded, meta = load_encoder(tmp_path / "s1")  # the run folder: its encoder
    assert meta["out_dim"] == 8 and read_encoder_meta(tmp_path / "s1") == meta
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), load_encoder(folder)[0](x))
    _, source = build_image_encoder(EncoderSettings(mode="frozen", checkpoint=str(tmp_path / "s1")), 16)
    assert source["source"] == str(folder.resolve())  # the agent records the encoder folder itself
    for given in (folder, tmp_path / "s1"):
        with pytest.raises(CheckpointError, match=r"a stage-1 \(video pretraining\) image encoder, not an agent.*"
                                                  rf"encoder.checkpoint={folder}$"):
            load_checkpoint(resolve_checkpoint_dir(given))
    # a finished run whose encoder went elsewhere (stage 1's output=): its metrics.json names it; it was called "a
    # stage-1 run that has not saved its encoder yet"
    import json

    elsewhere = save_encoder(tmp_path / "encs" / "mine", enc, "small_conv", {})
    run = tmp_path / "s1_out"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"stage 1's training state")
    (run / "metrics.json").write_text(json.dumps({"steps": 3, "encoder_path": str(elsewhere)}))
    assert torch.equal(load_encoder(run)[0](x), loaded(x)) and read_encoder_meta(run) == read_encoder_meta(elsewhere)
