"""Patch-level detection: memory banks of local features and anomaly maps."""

from ._detector import PatchCoreDetector

__all__ = ["PatchCoreDetector"]
