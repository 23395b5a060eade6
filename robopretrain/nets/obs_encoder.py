"""The observation encoder: a dict of observation parts -> one feature vector ``(B, D)`` (STYLE.md rule 1).

For an :class:`~robopretrain.data.spec.ObsSpec` with cameras ``rgb``, low-dim parts ``low_dim`` and a task one-hot of
size ``num_tasks``::

    features = image_encoder(shift(image_1)) ++ ... ++ image_encoder(shift(image_k))      (rgb, in spec order)
               (then - feature_mean, / feature_std over those concatenated features when feature_norm)
               ++ (concat(low_dim parts) - mean) / std                                     (low_dim, in spec order)
               ++ one_hot(task_id, num_tasks)                                               (PTR task conditioning)

Every camera goes through the same image encoder (all cameras in one batched pass); ``shift`` is DrQ's random
shift by up to ``augment_pad`` pixels, applied only when the caller asks (``augment=True``, where the encoder trains).
Low-dim normalisation uses the per-dimension statistics of the training data (``mean``,
``max(std, min_std) + 1e-3``; CORL's ``compute_mean_std`` and robomimic's normalisation use ``std + 1e-3``, i.e.
``min_std = 0``), kept as buffers so that they travel with the weights into
every checkpoint, evaluation and fine-tuning run: the one place observation statistics are applied. Without
statistics (``normalize=False`` or none given) the parts pass unchanged (mean 0, std 1). An encoder without
cameras has no parameters, only those buffers.

``feature_norm=True`` (frozen image encoders, ``encoder.normalize_features``) adds the buffers ``feature_mean`` and
``feature_std`` ``(cameras * F,)`` and standardises the concatenated image features with them, as the low-dim parts
are: a frozen encoder's features can vary across a dataset by far less than their own scale (a random
spatial-softmax encoder's by 5e-4 per dimension, docs/pipeline.md), which the policy's MLP cannot use beside
unit-scale proprioception. The statistics are set from the data (:meth:`set_feature_stats`, called through
:func:`robopretrain.build.fit_feature_normalization`); until then they are mean 0, std 1.

``forward`` shapes: ``obs[key]`` is uint8 ``(B, H, W, 3)`` for rgb parts, float ``(B, d)`` for low-dim parts and an
integer ``(B,)`` for ``task_id``; the output is float32 ``(B, out_dim)``. A missing part raises ``KeyError`` naming it.

Speed (same function, :meth:`ObsEncoder.image_features`): the shift runs on the stored uint8 frames and the encoder
gets a channels-last float tensor (no transposing copy; oneDNN's fastest convolution layout). ``precision``
(``float32`` default, ``bfloat16``, ``float16``) runs the image encoder under autocast, which changes the numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from robopretrain.data.keys import TASK_ID
from robopretrain.data.spec import ObsSpec
from robopretrain.nets.augment import random_shifts, shift_frames
from robopretrain.nets.encoders import ImageEncoder, to_float_images

log = logging.getLogger(__name__)

FLAT_STD = 1e-3  # a floored data std below this is named in a warning (normalization_stats)
CONSTANT_STD = 1e-12  # a data std at most this (relative to the values) is a constant dimension: centred, not scaled
STD_EPS = 1e-3  # added to the data's standard deviation (CORL compute_mean_std, robomimic)
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}  # image encoder compute precision -> autocast dtype


def constant_dimensions(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Which dimensions of data with per-dimension ``mean`` and ``std`` are constant: ``std`` at most
    :data:`CONSTANT_STD` relative to the values (a constant's computed std rounds to ~1e-17, not 0). Such a
    dimension is centred, not scaled (:func:`normalization_stats`, and a frozen encoder's features)."""
    return np.asarray(std) <= CONSTANT_STD * np.maximum(1.0, np.abs(np.asarray(mean)))


def normalization_stats(parts: Mapping[str, np.ndarray], spec: ObsSpec, skip: tuple[str, ...] = (),
                        min_std: float = 0.0) -> dict[str, dict[str, list[float]]]:
    """Per low-dim part ``{key: {"mean": [...], "std": [...]}}`` of stored rows ``parts[key]`` ``(N, d)``.

    ``std = max(data std, min_std) + STD_EPS`` per dimension, in the data's units. ``min_std`` (>= 0) keeps a
    dimension that barely varies in the data (a resting object's tilt, quaternion components near 0: std 1e-4)
    from being scaled up by ~1000 (``1 / STD_EPS``): a 0.05 change at evaluation time, which the data never
    showed, would otherwise reach the networks as a 50-sigma input. Measured (BC, 50 clean Lift demos of the
    earlier phase-machine expert, 3 seeds, ``benchmarks/results/recipe_prior9.json``): 0.46 with ``min_std=0``,
    0.85 with 0.05 (README, "BC on all nine prior tasks"). Parts in ``skip`` (e.g. frozen features) get mean 0,
    std 1. Raises ValueError for a negative ``min_std``.

    A dimension constant in the data (std 0: a gripper that never moves in the demos, a fixed joint, an empty object
    slot) with ``min_std`` 0 is centred and not scaled (std 1): every data row reads 0 there whatever the scale, and
    a value the data never showed (online, at evaluation) reaches the networks in the data's units rather than
    ~1000x (a new user's gripper reading: stage-3 IQL from 1.0 to 0.0 in 300 steps; 0.4-0.9 with 0.05); it is said
    at INFO level. A dimension whose floored std is above 0 but below :data:`FLAT_STD` (it barely varies) is named
    in one warning per part with the ``obs.min_std`` that bounds its scale (the warning also named constant ones,
    which a user could not act on: Meta-World's empty second-object slot; a new user's finding).
    """
    if not min_std >= 0.0:
        raise ValueError(f"normalisation: min_std={min_std!r}; expected a number >= 0 (in the data's units)")
    out = {}
    for key, size in spec.low_dim:
        if key in skip:
            out[key] = {"mean": [0.0] * size, "std": [1.0] * size}
            continue
        x = np.asarray(parts[key], dtype=np.float64).reshape(-1, size)
        raw = x.std(0)
        constant = constant_dimensions(x.mean(0), raw)
        std = np.maximum(raw, min_std)
        if constant.any():
            log.info("normalisation: %s dimension(s) %s are constant in the data: centred, not scaled", key,
                     np.flatnonzero(constant).tolist())
            # (+ STD_EPS below: 1; a floor above that wins; a small floor must not scale a constant up: a review)
            std = np.where(constant, np.maximum(1.0 - STD_EPS, min_std), std)
        flat = np.flatnonzero((std < FLAT_STD) & ~constant)
        if flat.size:
            log.warning("normalisation: %s dimension(s) %s barely vary in the data (std %s < %g): each is scaled by "
                        "up to 1 / (std + %g) = %.0fx, so a change the data never showed (online, at evaluation) "
                        "reaches the networks as a huge input; set obs.min_std (e.g. 0.05, in the data's units) to "
                        "bound it", key, flat.tolist(), np.round(std[flat], 6).tolist(), FLAT_STD, STD_EPS,
                        1.0 / (float(std[flat].min()) + STD_EPS))
        out[key] = {"mean": x.mean(0).tolist(), "std": (std + STD_EPS).tolist()}
    return out


def normalized_images(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(to_float_images(frames) - mean) / std`` for uint8 frames ``(N, H, W, C)`` and per-channel ``mean`` / ``std``
    (C values, any shape), as a channels-last ``(N, C, H, W)`` tensor of ``dtype``.

    The float32 operations of :class:`~robopretrain.nets.encoders.ImageEncoder` (``x / 255``, ``- mean``,
    ``/ std``, each rounded to float32), so the values are the same bit for bit; but the statistics are repeated
    over the H * W pixels so that every operation runs over contiguous rows of H * W * C values (a per-channel
    broadcast over a channels-last tensor has an inner loop of C = 3 and does not vectorise). Other dtypes get
    the float32 result rounded once. Raises TypeError for frames that are not uint8.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise TypeError(f"normalized_images expects uint8 frames (N, H, W, C), got {frames.dtype} {tuple(frames.shape)}")
    n, h, w, c = frames.shape
    m = mean.to(frames.device, torch.float32).reshape(c).repeat(h * w)
    s = std.to(frames.device, torch.float32).reshape(c).repeat(h * w)
    x = frames.reshape(n, h * w * c).to(torch.float32).div_(255.0).sub_(m)
    out = x.div_(s) if dtype == torch.float32 else torch.div(x, s, out=torch.empty(x.shape, dtype=dtype,
                                                                                     device=x.device))
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


class ObsEncoder(nn.Module):
    """Observation dict -> features, per the spec (see the module docstring)."""

    def __init__(self, spec: ObsSpec, image_encoder: nn.Module | None = None, *,
                 stats: Mapping[str, Mapping[str, list[float]]] | None = None, augment_pad: int = 0,
                 precision: str = "float32", feature_norm: bool = False) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"observation encoder: precision={precision!r}; expected one of {list(PRECISIONS)}")
        if spec.rgb and image_encoder is None:
            raise ValueError(f"observation encoder: cameras {list(spec.rgb_keys)} need an image encoder")
        if image_encoder is not None and not spec.rgb:
            raise ValueError("observation encoder: an image encoder was given but the spec has no rgb parts")
        self.spec = spec
        self.image_encoder = image_encoder
        self.augment_pad = int(augment_pad)
        self.precision = precision
        self.autocast_dtype = PRECISIONS[precision]
        mean = torch.zeros(spec.low_dim_size)
        std = torch.ones(spec.low_dim_size)
        if stats is not None:
            lo = 0
            for key, size in spec.low_dim:
                if key not in stats:
                    raise KeyError(f"observation encoder: no normalisation statistics for low_dim part {key!r}")
                for name, into in (("mean", mean), ("std", std)):
                    values = torch.as_tensor(stats[key][name], dtype=torch.float32).reshape(-1)
                    if values.numel() != size:  # a slice assignment would broadcast one value over the part
                        raise ValueError(f"observation encoder: normalisation {name} of low_dim part {key!r} has "
                                         f"{values.numel()} values; the part has {size}")
                    into[lo: lo + size] = values
                lo += size
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        feat = int(getattr(image_encoder, "out_dim", 0))
        self.image_dim = feat * len(spec.rgb)
        self.feature_norm = bool(feature_norm) and self.image_dim > 0
        if self.feature_norm:
            self.register_buffer("feature_mean", torch.zeros(self.image_dim))
            self.register_buffer("feature_std", torch.ones(self.image_dim))
        self.out_dim = self.image_dim + spec.low_dim_size + spec.num_tasks

    @property
    def has_parameters(self) -> bool:
        return any(True for _ in self.parameters())

    def _check(self, obs: Mapping[str, torch.Tensor]) -> None:
        need = self.spec.storage_keys()
        missing = [k for k in need if k not in obs]
        if missing:
            raise KeyError(f"observation encoder: observation is missing {missing}; it has {sorted(obs)}")

    def forward(self, obs: Mapping[str, torch.Tensor], augment: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        self._check(obs)
        parts = []
        device = self.mean.device
        if self.spec.rgb:
            frames = torch.cat([obs[k].to(device) for k in self.spec.rgb_keys])  # every camera in one pass
            if augment and self.augment_pad > 0:  # on the stored uint8 frames, before the float conversion
                frames = shift_frames(frames, random_shifts(frames.shape[0], self.augment_pad, generator, device),
                                      self.augment_pad)
            cams = self.image_features(frames).chunk(len(self.spec.rgb), dim=0)
            if self.feature_norm:
                parts.append((torch.cat(cams, dim=-1) - self.feature_mean) / self.feature_std)
            else:
                parts.extend(cams)
        if self.spec.low_dim:
            low = torch.cat([obs[k].to(device, torch.float32) for k in self.spec.low_dim_keys], dim=-1)
            parts.append((low - self.mean) / self.std)
        if self.spec.num_tasks:
            ids = obs[TASK_ID].to(device).long().reshape(-1)
            parts.append(nn.functional.one_hot(ids, self.spec.num_tasks).to(torch.float32))
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor | np.ndarray, std: torch.Tensor | np.ndarray) -> None:
        """Set ``feature_mean`` / ``feature_std`` ``(cameras * F,)`` (``std`` already including :data:`STD_EPS`).
        Raises ValueError when the encoder has no feature normalisation or the sizes differ."""
        if not self.feature_norm:
            raise ValueError("observation encoder: feature statistics need feature_norm=True and cameras")
        mean, std = (torch.as_tensor(np.asarray(v), dtype=torch.float32).reshape(-1) for v in (mean, std))
        if mean.numel() != self.image_dim or std.numel() != self.image_dim:
            raise ValueError(f"observation encoder: feature statistics of size {mean.numel()} / {std.numel()}; the "
                             f"image features have {self.image_dim}")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def image_features(self, frames: torch.Tensor) -> torch.Tensor:
        """The image encoder's float32 features ``(N, F)`` of uint8 frames ``(N, H, W, C)``: the same function as
        ``image_encoder(to_float_images(frames))``.

        The encoder's input is channels-last (the frames' own layout, the layout oneDNN's convolutions run fastest
        on; no transposing copy). For an :class:`~robopretrain.nets.encoders.ImageEncoder` the input normalisation
        is done here (:func:`normalized_images`: the same float32 operations, bit for bit, in one vectorised sweep
        instead of two per-channel broadcasts over a channels-last tensor) and the frames go straight to its
        ``net``. With ``precision="bfloat16"`` the network runs under bfloat16 autocast (convolutions and linear
        layers in bfloat16; the normalised input is rounded to bfloat16 once, as autocast would).
        """
        enc = self.image_encoder
        fused = isinstance(enc, ImageEncoder) and type(enc).forward is ImageEncoder.forward
        with torch.autocast(frames.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            if not fused:
                return enc(to_float_images(frames)).float()
            x = normalized_images(frames, enc.mean, enc.std, self.autocast_dtype or torch.float32)
            enc._check_input(x)
            return enc.net(x).float()


__all__ = ["ObsEncoder", "PRECISIONS", "STD_EPS", "constant_dimensions", "normalization_stats", "normalized_images"]
