"""Networks shared by all stages.

MLPs (:mod:`.mlp`), the tanh-Gaussian actor (:mod:`.actor`) and batched Q ensembles (:mod:`.critic`).
"""

from robopretrain.nets.actor import TanhGaussianActor, squashed_gaussian_sample
from robopretrain.nets.critic import EnsembleCritic, VectorizedLayerNorm, VectorizedLinear
from robopretrain.nets.mlp import build_mlp

__all__ = [
    "EnsembleCritic",
    "TanhGaussianActor",
    "VectorizedLayerNorm",
    "VectorizedLinear",
    "build_mlp",
    "squashed_gaussian_sample",
]
