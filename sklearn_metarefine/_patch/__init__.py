"""Patch-level detection: memory banks of local features and anomaly maps."""

from ._detector import PatchCoreDetector
from ._flow import PatchFlowDetector

__all__ = ["PatchCoreDetector", "PatchFlowDetector"]
