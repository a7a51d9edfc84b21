"""Robust image anomaly detection from contaminated training sets.

Normalizing flows trained with MAML and iterative IQR refinement, as
scikit-learn estimators.
"""

__version__ = "0.1.0.dev0"

__all__ = []
