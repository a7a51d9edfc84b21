"""Datasets for image anomaly detection and the contamination protocol.

The loaders read MVTec AD and KolektorSDD2 from folders the user downloaded
and extracted, and turn scikit-learn's bundled digits into an offline
anomaly detection dataset. :func:`make_surfaces` generates images of
industrial surfaces with pixel-precise defect masks. :func:`make_contaminated`
draws a training set with a chosen share of anomalies and a balanced test set
from any of them.
"""

from ._contamination import make_contaminated
from ._digits import load_digits_anomaly
from ._ksdd2 import load_ksdd2
from ._mvtec import MVTEC_AD_CATEGORIES, load_mvtec_ad
from ._surfaces import SURFACE_CATEGORIES, make_surfaces

__all__ = [
    "MVTEC_AD_CATEGORIES",
    "SURFACE_CATEGORIES",
    "load_digits_anomaly",
    "load_ksdd2",
    "load_mvtec_ad",
    "make_contaminated",
    "make_surfaces",
]
