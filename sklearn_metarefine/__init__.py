"""Robust image anomaly detection from contaminated training sets.

Normalizing flows trained with MAML and iterative IQR refinement, as
scikit-learn estimators.

Public names are imported on first use (PEP 562), so that refining a
scikit-learn detector with :class:`IQRRefiner` does not import torch.
"""

import importlib

__version__ = "0.1.0.dev0"

# Public name -> private module that defines it.
_SOURCES = {
    "MetaRefineDetector": "._detector",
    "PretrainedFeatures": "._features",
    "PatchFeatures": "._features",
    "PatchCoreDetector": "._patch",
    "FlowDetector": "._flows",
    "MAMLFlowDetector": "._flows",
    "IQRRefiner": "._refine",
    "iqr_fence": "._scores",
    "neighbour_distances": "._scores",
}

__all__ = list(_SOURCES)


def __getattr__(name):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
