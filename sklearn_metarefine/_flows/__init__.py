"""The normalizing flows: torch modules, MAML, skorch nets and the detectors."""

from ._detector import FlowDetector, MAMLFlowDetector
from ._nets import DivergenceError

__all__ = ["FlowDetector", "MAMLFlowDetector", "DivergenceError"]
