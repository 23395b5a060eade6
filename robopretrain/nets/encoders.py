"""Image encoders shared by all three stages (stage 1 trains them, stages 2 and 3 load the same classes).

``make_encoder(name, image_size, in_channels=3, **kwargs)`` builds one by name. Every encoder is an
:class:`ImageEncoder`: ``forward(x)`` takes float32 images (B, C, H, W) with values in [0, 1] and
H == W == image_size, normalizes them internally ((x - mean) / std, buffers) and returns (B, out_dim).
Each has ``out_dim: int``, ``input_spec: dict`` (see :func:`input_spec`) and ``build_args: dict`` (the
name and arguments that rebuild it, written to checkpoints by :mod:`robopretrain.nets.encoder_io`).
Turn uint8 (B, H, W, C) frames into encoder input with :func:`to_float_images`.

Encoders and their features (image_size = S; conv outputs for S = 64 in brackets):

``small_conv``  fast CPU default. Four 3x3 convs (``channels`` = 32 each, strides 2, 2, 2, 1, ReLU)
                [32 x 8 x 8], flatten, then the projection head. out_dim = ``out_dim`` (default 256).
                Options (defaults give exactly the encoder above, same parameter names):
                ``strides`` (one conv per entry; [2, 2, 1, 1] keeps 16 x 16 maps at 64 px);
                ``coord_channels=True`` appends x and y coordinate channels in [-1, 1] to the input (CoordConv);
                ``pool="spatial_softmax"`` replaces flatten by spatial soft-argmax keypoints (robomimic's
                ``SpatialSoftmax``: a 1x1 conv to ``num_keypoints`` = 32 maps, softmax over each map's
                H x W / ``temperature`` (``learnable_temperature``), expected (x, y) in [-1, 1]: 2K values);
                ``head`` = ``projection`` (Dense -> LayerNorm -> tanh, out_dim), ``linear`` (one Dense layer to
                out_dim, robomimic's VisualCore) or ``none`` (the 2K keypoint coordinates are the features).
``impala``      IMPALA CNN (Espeholt et al. 2018): for each of ``channels`` = (16, 32, 32) a 3x3 conv,
                3x3 max-pool with stride 2, two residual blocks (ReLU-conv-ReLU-conv + skip)
                [32 x 8 x 8], ReLU, flatten, then the projection head. out_dim = ``out_dim`` (default 256).
``resnet18``,   torchvision ResNet with GroupNorm(``groups`` = 4) in place of BatchNorm and no global
``resnet34``    pooling [512 x 2 x 2; 512 x 4 x 4 at 128 px], then the PTR learned spatial embedding: a
                learned (C, H', W', ``num_spatial_features`` = 8) kernel contracted with the feature map
                over H', W' gives C * 8 features (4096), then the projection head.
                out_dim = ``out_dim`` (default 256).
``timm:<name>`` any timm backbone, ``pretrained=False`` (random weights, nothing is downloaded),
                ``num_classes=0`` (timm's pooled features, no classifier); extra kwargs go to
                ``timm.create_model``. out_dim = the width of those features, e.g. 512 for
                ``timm:resnet10t`` and 1024 for ``timm:mobilenetv3_small_050``.

The projection head is Dense -> LayerNorm -> tanh (PTR); ``head_tanh=False`` drops the tanh (unbounded
features, e.g. for metric objectives such as VIP).

Parameters with default kwargs, 3 channels, 64 px (:func:`num_parameters`): small_conv 553,696;
impala 622,656; resnet18 12,242,240 (12,291,392 at 128 px: the spatial kernel grows with H' x W');
resnet34 22,350,400; timm:resnet10t 4,922,488; timm:mobilenetv3_small_050 568,224.

Normalization: ``mean``/``std`` kwargs (one value per input channel, or 3 values repeated over
stacked RGB frames); default ImageNet statistics when ``in_channels`` is a multiple of 3, else 0.5/0.5.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"


# ----------------------------------------------------------------------------- helpers
def to_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., H, W, C) -> float32 (..., C, H, W) in [0, 1] (works for (B, H, W, C) and (B, T, H, W, C))."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float_images expects uint8 images (..., H, W, C), got {x.dtype} {tuple(x.shape)}")
    if x.ndim < 3:
        raise ValueError(f"to_float_images expects (..., H, W, C), got shape {tuple(x.shape)}")
    return x.movedim(-1, -3).float().div_(255.0)


def _channel_stats(values: Sequence[float] | None, default: Sequence[float], in_channels: int, what: str) -> list[float]:
    """Per-channel normalization values: given per channel, or 3 values repeated over stacked RGB frames."""
    if values is None:
        values = default if in_channels % 3 == 0 else (0.5,)
    values = [float(v) for v in values]
    if len(values) == in_channels:
        return values
    if in_channels % len(values) == 0:
        return values * (in_channels // len(values))
    raise ValueError(f"{what} has {len(values)} values, which does not divide in_channels={in_channels}")


def input_spec(image_size: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """What an encoder expects: the dict stored as ``encoder.input_spec`` and in checkpoints' meta.json."""
    return {
        "image_size": int(image_size),
        "channels": int(in_channels),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "channel_order": "RGB",
        "layout": "CHW",
        "value_range": [0.0, 1.0],
        "dtype": "float32",
    }


class ProjectionHead(nn.Sequential):
    """Dense -> LayerNorm -> tanh (PTR's encoder head); ``tanh=False`` leaves the features unbounded."""

    def __init__(self, in_features: int, out_dim: int, tanh: bool = True) -> None:
        layers: list[nn.Module] = [nn.Linear(in_features, out_dim), nn.LayerNorm(out_dim)]
        if tanh:
            layers.append(nn.Tanh())
        super().__init__(*layers)


def _feature_shape(trunk: nn.Module | Callable[[torch.Tensor], torch.Tensor], in_channels: int,
                   image_size: int) -> tuple[int, ...]:
    """Shape (without batch) of ``trunk``'s output for one image, found by a forward pass in eval mode (a module;
    a plain function is called as it is)."""
    was_training = getattr(trunk, "training", None)
    if was_training is not None:
        trunk.eval()  # type: ignore[union-attr]
    with torch.no_grad():
        out = trunk(torch.zeros(2, in_channels, image_size, image_size))
    if was_training is not None:
        trunk.train(was_training)  # type: ignore[union-attr]
    return tuple(out.shape[1:])


# ----------------------------------------------------------------------------- the shared wrapper
RANGE_SLACK = 1e-3  # how far outside [0, 1] an encoder's first input may reach (rounding, augmentation)


class ImageEncoder(nn.Module):
    """Normalization + a network mapping (B, C, S, S) float images in [0, 1] to (B, out_dim) features."""

    def __init__(self, net: nn.Module, out_dim: int, image_size: int, in_channels: int,
                 mean: Sequence[float], std: Sequence[float], build_args: dict[str, Any]) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.net = net
        self.out_dim = int(out_dim)
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.input_spec = input_spec(image_size, in_channels, mean, std)
        self.build_args = build_args
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self._range_checked = False  # the first input's values are checked to lie in [0, 1] (_check_range)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{self.build_args.get('name', 'encoder')}: expected images (B, {expected[0]}, "
                             f"{expected[1]}, {expected[2]}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{self.build_args.get('name', 'encoder')}: expected float images in [0, 1], got "
                            f"{x.dtype}; convert uint8 (B, H, W, C) frames with to_float_images")

    def _check_range(self, x: torch.Tensor) -> None:
        """The first input's values in [0, 1] (frames on the 0-255 scale were taken silently); the first only: a
        check per call would synchronise every training step with the device."""
        if self._range_checked or not x.numel():
            return
        self._range_checked = True
        lo, hi = (float(v) for v in x.detach().aminmax())
        if lo < -RANGE_SLACK or hi > 1.0 + RANGE_SLACK:
            raise ValueError(f"{self.build_args.get('name', 'encoder')}: expected float images in [0, 1], got values "
                             f"in [{lo:g}, {hi:g}]; frames on the 0-255 scale: convert the uint8 frames with "
                             "to_float_images (or divide by 255)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        self._check_range(x)
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, image_size={self.image_size}, in_channels={self.in_channels}"


# ----------------------------------------------------------------------------- spatial read-outs
def coordinate_grid(height: int, width: int, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1]: ``xs`` (H, W) grows left to right, ``ys`` (H, W) top to bottom."""
    ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype),
                            torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype), indexing="ij")
    return xs, ys


class CoordChannels(nn.Module):
    """CoordConv (Liu et al. 2018): two constant channels, x and y in [-1, 1]: (B, C, H, W) -> (B, C + 2, H, W).

    The coordinates are those of the frame the encoder sees (after any random shift), so a conv can tell where
    in the picture a feature is, which translation-equivariant convolutions alone cannot.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        xs, ys = coordinate_grid(h, w, x.device, x.dtype)
        return torch.cat([x, xs.expand(b, 1, h, w), ys.expand(b, 1, h, w)], dim=1)


class SpatialSoftmax(nn.Module):
    """Spatial soft-argmax keypoints (Levine et al. 2016; robomimic ``models/base_nets.py: SpatialSoftmax``).

    (B, C, H, W) -> a 1x1 conv to ``num_keypoints`` maps (none when ``num_keypoints`` is None: one keypoint per
    channel) -> softmax over each map's H x W positions (divided by a temperature, learnable when
    ``learnable_temperature``) -> the expected (x, y) position under each softmax, in [-1, 1] (x left to right,
    y top to bottom, pixel centres at +-1 on the border). Output (B, 2 * K), ordered (x_1, y_1, x_2, y_2, ...).
    No global pooling: what the features keep is *where* things are.
    """

    def __init__(self, channels: int, height: int, width: int, num_keypoints: int | None = 32,
                 temperature: float = 1.0, learnable_temperature: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"spatial softmax: temperature must be > 0, got {temperature}")
        self.keypoints = nn.Conv2d(channels, int(num_keypoints), 1) if num_keypoints else None
        self.num_keypoints = int(num_keypoints) if num_keypoints else int(channels)
        log_t = torch.tensor(math.log(float(temperature)))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        xs, ys = coordinate_grid(height, width)
        self.register_buffer("pos", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)  # (HW, 2)
        self.height, self.width = int(height), int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keypoints is not None:
            x = self.keypoints(x)
        b, k, h, w = x.shape
        if (h, w) != (self.height, self.width):
            raise ValueError(f"spatial softmax: built for {self.height} x {self.width} maps, got {h} x {w}")
        attention = torch.softmax(x.reshape(b, k, h * w) / self.log_temperature.exp(), dim=-1)
        return (attention @ self.pos).reshape(b, 2 * k)  # (B, K, 2) expected (x, y) -> (B, 2K)


# ----------------------------------------------------------------------------- small conv
SMALL_CONV_POOLS = ("flatten", "spatial_softmax")
SMALL_CONV_HEADS = ("projection", "linear", "none")


class SmallConvNet(nn.Module):
    """[CoordConv channels] -> 3x3 convs with ReLU -> flatten or spatial-softmax keypoints -> head.

    The default (strides 2, 2, 2, 1, flatten, projection head) is the original ``small_conv``; its parameter names
    (``convs.*``, ``head.*``) are unchanged, so encoders saved before the options existed load as they are.
    """

    def __init__(self, in_channels: int, image_size: int, channels: int, out_dim: int, head_tanh: bool,
                 strides: Sequence[int] = (2, 2, 2, 1), pool: str = "flatten", num_keypoints: int | None = 32,
                 coord_channels: bool = False, head: str = "projection", temperature: float = 1.0,
                 learnable_temperature: bool = False) -> None:
        super().__init__()
        if pool not in SMALL_CONV_POOLS:
            raise ValueError(f"small_conv: pool={pool!r}; expected one of {list(SMALL_CONV_POOLS)}")
        if head not in SMALL_CONV_HEADS:
            raise ValueError(f"small_conv: head={head!r}; expected one of {list(SMALL_CONV_HEADS)}")
        if not strides or any(int(s) < 1 for s in strides):
            raise ValueError(f"small_conv: strides must be a non-empty list of positive ints, got {list(strides)}")
        self.coords = CoordChannels() if coord_channels else None
        convs: list[nn.Module] = []
        c_in = in_channels + (2 if coord_channels else 0)
        for stride in strides:
            convs += [nn.Conv2d(c_in, channels, 3, stride=int(stride), padding=1), nn.ReLU(inplace=True)]
            c_in = channels
        self.pool: nn.Module | None = None
        if pool == "flatten":
            self.convs = nn.Sequential(*convs, nn.Flatten())
            (flat,) = _feature_shape(self._trunk, in_channels, image_size)
        else:
            self.convs = nn.Sequential(*convs)
            c, h, w = _feature_shape(self._trunk, in_channels, image_size)
            self.pool = SpatialSoftmax(c, h, w, num_keypoints, temperature, learnable_temperature)
            flat = 2 * self.pool.num_keypoints
        if head == "projection":
            self.head: nn.Module = ProjectionHead(flat, out_dim, head_tanh)
            self.out_dim = int(out_dim)
        elif head == "linear":  # robomimic's VisualCore: keypoints -> one dense layer
            self.head = nn.Linear(flat, out_dim)
            self.out_dim = int(out_dim)
        else:
            self.head = nn.Identity()
            self.out_dim = int(flat)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.coords(x) if self.coords is not None else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._trunk(x)
        if self.pool is not None:
            x = self.pool(x)
        return self.head(x)


def build_small_conv(image_size: int, in_channels: int, channels: int = 32, out_dim: int = 256,
                     head_tanh: bool = True, strides: Sequence[int] = (2, 2, 2, 1), pool: str = "flatten",
                     num_keypoints: int | None = 32, coord_channels: bool = False, head: str = "projection",
                     temperature: float = 1.0, learnable_temperature: bool = False) -> tuple[nn.Module, int]:
    net = SmallConvNet(in_channels, image_size, channels, out_dim, head_tanh, [int(s) for s in strides], pool,
                       num_keypoints, coord_channels, head, temperature, learnable_temperature)
    return net, net.out_dim


# ----------------------------------------------------------------------------- IMPALA
class ResidualBlock(nn.Module):
    """IMPALA residual block: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaStack(nn.Sequential):
    """Conv 3x3, max-pool 3x3 stride 2, two residual blocks."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, channels, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                         ResidualBlock(channels), ResidualBlock(channels))


class ImpalaNet(nn.Module):
    """IMPALA CNN: stacks, ReLU, flatten, projection head."""

    def __init__(self, in_channels: int, image_size: int, channels: Sequence[int], out_dim: int,
                 head_tanh: bool) -> None:
        super().__init__()
        stacks: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            stacks.append(ImpalaStack(c_in, c))
            c_in = c
        self.stacks = nn.Sequential(*stacks, nn.ReLU(), nn.Flatten())
        (flat,) = _feature_shape(self.stacks, in_channels, image_size)
        self.head = ProjectionHead(flat, out_dim, head_tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stacks(x))


def build_impala(image_size: int, in_channels: int, channels: Sequence[int] = (16, 32, 32), out_dim: int = 256,
                 head_tanh: bool = True) -> tuple[nn.Module, int]:
    return ImpalaNet(in_channels, image_size, [int(c) for c in channels], out_dim, head_tanh), out_dim


# ----------------------------------------------------------------------------- ResNet + spatial embedding
class SpatialLearnedEmbedding(nn.Module):
    """PTR's learned spatial embedding: features[b, c, k] = sum_{h,w} x[b, c, h, w] * kernel[c, h, w, k].

    Replaces global pooling: each channel gets ``num_features`` learned spatial read-outs. Output
    (B, C * num_features). The kernel is initialized N(0, 1 / (H * W)) so outputs keep the input's scale.
    """

    def __init__(self, channels: int, height: int, width: int, num_features: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(channels, height, width, num_features) / math.sqrt(height * width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,chwk->bck", x, self.kernel).flatten(1)


class ResNetSpatial(nn.Module):
    """ResNet trunk (GroupNorm, no pooling) -> learned spatial embedding -> projection head."""

    def __init__(self, trunk: nn.Module, in_channels: int, image_size: int, num_spatial_features: int,
                 out_dim: int, head_tanh: bool) -> None:
        super().__init__()
        self.trunk = trunk
        c, h, w = _feature_shape(trunk, in_channels, image_size)
        self.spatial = SpatialLearnedEmbedding(c, h, w, num_spatial_features)
        self.head = ProjectionHead(c * num_spatial_features, out_dim, head_tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.spatial(self.trunk(x)))


def _resnet_trunk(depth: int, in_channels: int, groups: int) -> nn.Module:
    import torchvision

    def group_norm(c: int) -> nn.Module:
        return nn.GroupNorm(groups, c)

    ctor = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}[depth]
    net = ctor(weights=None, norm_layer=group_norm)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


def _resnet_builder(depth: int) -> Callable[..., tuple[nn.Module, int]]:
    def build(image_size: int, in_channels: int, out_dim: int = 256, num_spatial_features: int = 8,
              groups: int = 4, head_tanh: bool = True) -> tuple[nn.Module, int]:
        trunk = _resnet_trunk(depth, in_channels, groups)
        return ResNetSpatial(trunk, in_channels, image_size, num_spatial_features, out_dim, head_tanh), out_dim

    build.__name__ = f"build_resnet{depth}"
    return build


# ----------------------------------------------------------------------------- timm
def build_timm(model_name: str, image_size: int, in_channels: int, **kwargs: Any) -> tuple[nn.Module, int]:
    """A timm backbone with random weights and no classifier; out_dim measured from one forward pass."""
    import timm

    if kwargs.pop("pretrained", False):
        raise ValueError(f"timm:{model_name}: pretrained weights are not supported (nothing is downloaded); "
                         f"train the encoder or load a saved one with robopretrain.nets.encoder_io.load_encoder")
    if kwargs.get("num_classes", 0) != 0:
        raise ValueError(f"timm:{model_name}: num_classes must be 0 (the encoder returns features, not logits)")
    kwargs.pop("num_classes", None)
    try:
        net = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_channels, **kwargs)
    except (RuntimeError, TypeError) as exc:  # timm's "Unknown model"; a keyword the model does not take
        raise ValueError(f"timm:{model_name}: {exc}") from None
    try:
        shape = _feature_shape(net, in_channels, image_size)
    except (AssertionError, RuntimeError) as exc:  # a ViT built for 224 px: "Input height (48) doesn't match model"
        hint = "" if "img_size" in kwargs or "match model" not in str(exc) else (
            f"; a model built for one input size (a ViT) takes +encoder.kwargs.img_size={image_size}")
        raise ValueError(f"timm:{model_name} does not take {image_size} px images: {exc}{hint}") from None
    if len(shape) != 1:
        raise ValueError(f"timm:{model_name}: expected pooled features (B, D) with num_classes=0, got (B, *{shape})")
    return net, shape[0]


# ----------------------------------------------------------------------------- registry
BUILDERS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "small_conv": build_small_conv,
    "impala": build_impala,
    "resnet18": _resnet_builder(18),
    "resnet34": _resnet_builder(34),
}


def encoder_names() -> list[str]:
    """Names make_encoder accepts (plus any ``timm:<model_name>``)."""
    return sorted(BUILDERS) + [f"{TIMM_PREFIX}<model_name>"]


def _check_kwargs(name: str, builder: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    accepted = [p for p in params if p not in ("image_size", "in_channels")]
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ValueError(f"encoder {name!r}: unknown argument(s) {unknown}; accepted: {accepted + ['mean', 'std']}")


# the builders' arguments that count something (layers' channels, features, strides, keypoints): each >= 1
SIZE_ARGS = ("channels", "out_dim", "strides", "num_keypoints")


def _check_sizes(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse a size argument that is not a positive integer (or list of them): ``out_dim=0`` built an encoder of no
    features, which an agent took as a blind camera; ``out_dim=-1`` or ``channels=0`` were torch's tracebacks."""
    for key in SIZE_ARGS:
        value = kwargs.get(key)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
            raise ValueError(f"encoder {name!r}: {key}={value!r}; expected "
                             f"{'a list of integers' if isinstance(value, (list, tuple)) else 'an integer'} >= 1 "
                             "(encoder.kwargs)")


def _plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra configs) as plain lists/dicts, so build_args stay JSON-serializable."""
    from omegaconf import Container, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def make_encoder(name: str, image_size: int, in_channels: int = 3, **kwargs: Any) -> ImageEncoder:
    """Build the encoder ``name`` (see the module docstring) for square images of side ``image_size``.

    ``mean``/``std`` set the normalization; the other kwargs go to the encoder's builder (for
    ``timm:<model_name>``, to ``timm.create_model``). Raises ``ValueError`` for an unknown name or argument.
    """
    if int(image_size) < 8 or int(in_channels) < 1:
        raise ValueError(f"encoder {name!r}: need image_size >= 8 and in_channels >= 1, got {image_size}, {in_channels}")
    image_size, in_channels = int(image_size), int(in_channels)
    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    build_args = {"name": name, "image_size": image_size, "in_channels": in_channels, "kwargs": dict(kwargs)}
    mean = _channel_stats(kwargs.pop("mean", None), IMAGENET_MEAN, in_channels, "mean")
    std = _channel_stats(kwargs.pop("std", None), IMAGENET_STD, in_channels, "std")
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        net, out_dim = build_timm(name[len(TIMM_PREFIX):], image_size, in_channels, **kwargs)
    elif name in BUILDERS:
        _check_kwargs(name, BUILDERS[name], kwargs)
        _check_sizes(name, kwargs)
        try:
            net, out_dim = BUILDERS[name](image_size, in_channels, **kwargs)
        except ValueError as exc:  # torch's own ("num_channels (64) must be divisible by num_groups (3)")
            if str(exc).startswith(name):  # the builder's own message names it already
                raise
            raise ValueError(f"encoder {name!r} with {kwargs or 'its defaults'} at {image_size} px: {exc}") from None
    else:
        raise ValueError(f"unknown encoder {name!r}; expected one of {encoder_names()}")
    if int(out_dim) < 1:  # a timm model with its head removed and no features
        raise ValueError(f"encoder {name!r} with {kwargs or 'its defaults'}: {out_dim} output features; an encoder "
                         "needs at least one")
    return ImageEncoder(net, out_dim, image_size, in_channels, mean, std, build_args)


def num_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
