"""Multi-scale embeddings of images from a frozen, pretrained CNN."""

from ._estimator import PretrainedFeatures

__all__ = ["PretrainedFeatures"]
