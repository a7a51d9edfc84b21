"""Robust image anomaly detection from contaminated training sets.

Normalizing flows trained with MAML and iterative IQR refinement, as
scikit-learn estimators.
"""

__version__ = "0.1.0.dev0"

from ._detector import MetaRefineDetector
from ._features import PretrainedFeatures
from ._flow_detector import FlowDetector, MAMLFlowDetector
from ._refine import IQRRefiner, iqr_fence, neighbour_distances

__all__ = [
    "MetaRefineDetector",
    "FlowDetector",
    "MAMLFlowDetector",
    "IQRRefiner",
    "iqr_fence",
    "neighbour_distances",
    "PretrainedFeatures",
]
