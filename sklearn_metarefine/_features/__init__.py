"""Embeddings of images from a frozen, pretrained CNN: pooled or patch by patch."""

from ._estimator import PretrainedFeatures
from ._patches import PatchFeatures

__all__ = ["PatchFeatures", "PretrainedFeatures"]
