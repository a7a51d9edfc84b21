"""Robust image anomaly detection from contaminated training sets.

Normalizing flows trained with MAML and iterative IQR refinement, as
scikit-learn estimators.

Public names are imported on first use (PEP 562), so that refining a
scikit-learn detector with :class:`IQRRefiner` does not import torch.
"""

from ._lazy import lazy_attributes

__version__ = "0.1.0.dev0"

# Public name -> private module that defines it.
_SOURCES = {
    "MetaRefineDetector": "._detector",
    "PretrainedFeatures": "._features",
    "PatchFeatures": "._features",
    "PatchCoreDetector": "._patch",
    "PatchFlowDetector": "._patch",
    "FlowDetector": "._flows",
    "MAMLFlowDetector": "._flows",
    "IQRRefiner": "._refine",
    "iqr_fence": "._scores",
    "clean_tail_fraction": "._scores",
    "neighbour_distances": "._scores",
    "save": "._persistence",
    "load": "._persistence",
    "ModelFileError": "._persistence",
    "ModelVersionWarning": "._persistence",
    "aupro": "._metrics",
    "image_auroc": "._metrics",
    "pixel_auroc": "._metrics",
    "plot_anomaly_maps": "._plotting",
}

__all__ = list(_SOURCES)

__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES)
