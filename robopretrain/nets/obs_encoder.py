"""The observation encoder: a dict of observation parts -> one feature vector ``(B, D)`` (STYLE.md rule 1).

For an :class:`~robopretrain.data.spec.ObsSpec` with cameras ``rgb``, low-dim parts ``low_dim`` and a task one-hot of
size ``num_tasks``::

    features = image_encoder(shift(image_1)) ++ ... ++ image_encoder(shift(image_k))      (rgb, in spec order)
               ++ (concat(low_dim parts) - mean) / std                                     (low_dim, in spec order)
               ++ one_hot(task_id, num_tasks)                                               (PTR task conditioning)

Every camera goes through the same image encoder (all cameras in one batched pass); ``shift`` is DrQ's random
shift by up to ``augment_pad`` pixels, applied only when the caller asks (``augment=True``, where the encoder trains).
Low-dim normalisation uses the per-dimension statistics of the training data (``mean``, ``std + 1e-3`` as CORL's
``compute_mean_std`` and robomimic's normalisation do), kept as buffers so that they travel with the weights into
every checkpoint, evaluation and fine-tuning run: the one place observation statistics are applied. Without
statistics (``normalize=False`` or none given) the parts pass unchanged (mean 0, std 1). An encoder without
cameras has no parameters, only those buffers.

``forward`` shapes: ``obs[key]`` is uint8 ``(B, H, W, 3)`` for rgb parts, float ``(B, d)`` for low-dim parts and an
integer ``(B,)`` for ``task_id``; the output is float32 ``(B, out_dim)``. A missing part raises ``KeyError`` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from robopretrain.data.keys import TASK_ID
from robopretrain.data.spec import ObsSpec
from robopretrain.nets.augment import random_shift
from robopretrain.nets.encoders import to_float_images

STD_EPS = 1e-3  # added to the data's standard deviation (CORL compute_mean_std, robomimic)


def normalization_stats(parts: Mapping[str, np.ndarray], spec: ObsSpec,
                        skip: tuple[str, ...] = ()) -> dict[str, dict[str, list[float]]]:
    """Per low-dim part ``{key: {"mean": [...], "std": [...]}}`` of stored rows ``parts[key]`` ``(N, d)``.

    ``std`` includes :data:`STD_EPS`. Parts in ``skip`` (e.g. frozen features) get mean 0, std 1.
    """
    out = {}
    for key, size in spec.low_dim:
        if key in skip:
            out[key] = {"mean": [0.0] * size, "std": [1.0] * size}
            continue
        x = np.asarray(parts[key], dtype=np.float64).reshape(-1, size)
        out[key] = {"mean": x.mean(0).tolist(), "std": (x.std(0) + STD_EPS).tolist()}
    return out


class ObsEncoder(nn.Module):
    """Observation dict -> features, per the spec (see the module docstring)."""

    def __init__(self, spec: ObsSpec, image_encoder: nn.Module | None = None, *,
                 stats: Mapping[str, Mapping[str, list[float]]] | None = None, augment_pad: int = 0) -> None:
        super().__init__()
        if spec.rgb and image_encoder is None:
            raise ValueError(f"observation encoder: cameras {list(spec.rgb_keys)} need an image encoder")
        if image_encoder is not None and not spec.rgb:
            raise ValueError("observation encoder: an image encoder was given but the spec has no rgb parts")
        self.spec = spec
        self.image_encoder = image_encoder
        self.augment_pad = int(augment_pad)
        mean = torch.zeros(spec.low_dim_size)
        std = torch.ones(spec.low_dim_size)
        if stats is not None:
            lo = 0
            for key, size in spec.low_dim:
                if key not in stats:
                    raise KeyError(f"observation encoder: no normalisation statistics for low_dim part {key!r}")
                mean[lo: lo + size] = torch.as_tensor(stats[key]["mean"], dtype=torch.float32)
                std[lo: lo + size] = torch.as_tensor(stats[key]["std"], dtype=torch.float32)
                lo += size
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        feat = int(getattr(image_encoder, "out_dim", 0))
        self.out_dim = feat * len(spec.rgb) + spec.low_dim_size + spec.num_tasks

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
            images = torch.cat([obs[k].to(device) for k in self.spec.rgb_keys])  # every camera in one pass
            x = to_float_images(images)
            if augment and self.augment_pad > 0:
                x = random_shift(x, self.augment_pad, generator=generator)
            feats = self.image_encoder(x)
            parts.extend(feats.chunk(len(self.spec.rgb), dim=0))
        if self.spec.low_dim:
            low = torch.cat([obs[k].to(device, torch.float32) for k in self.spec.low_dim_keys], dim=-1)
            parts.append((low - self.mean) / self.std)
        if self.spec.num_tasks:
            ids = obs[TASK_ID].to(device).long().reshape(-1)
            parts.append(nn.functional.one_hot(ids, self.spec.num_tasks).to(torch.float32))
        return torch.cat(parts, dim=-1)


__all__ = ["ObsEncoder", "STD_EPS", "normalization_stats"]
