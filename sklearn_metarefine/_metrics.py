"""Image and pixel metrics of anomaly detection: AUROC per image, per pixel, AUPRO.

numpy, scipy and scikit-learn only. Labels follow the package's convention: 1
(or True) marks an anomalous image or pixel, and anomaly maps are higher where
more anomalous.
"""

from numbers import Real

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import Interval, validate_params

# Pixels touching by an edge or a corner belong to the same defect, as in the
# evaluation code of MVTec AD; regions never join across images.
_EIGHT_NEIGHBOURS = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_NEIGHBOURS[1] = True


def _check_masks_and_maps(masks, maps):
    """Masks as a boolean (n, H, W) array and maps as float64 of the same shape."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks and maps must have the same shape; got masks of shape "
            f"{masks.shape} and maps of shape {maps.shape}."
        )
    if masks.ndim not in (2, 3) or masks.size == 0:
        raise ValueError(
            "masks and maps must be (n_images, height, width) arrays (or one "
            f"(height, width) image) with at least one pixel; got shape {masks.shape}."
        )
    if not (np.issubdtype(maps.dtype, np.number) or maps.dtype == bool):
        raise TypeError(f"maps must hold numbers; got dtype {maps.dtype}.")
    maps = maps.astype(np.float64, copy=False)
    if not np.isfinite(maps).all():
        bad = int(np.size(maps) - np.isfinite(maps).sum())
        raise ValueError(f"maps hold {bad} NaN or infinite value(s).")
    if masks.dtype != bool:
        if not np.issubdtype(masks.dtype, np.number):
            raise TypeError(
                f"masks must be boolean or numeric; got dtype {masks.dtype}."
            )
        values = np.unique(masks)
        binary = np.isin(values, (0, 1))
        if np.issubdtype(masks.dtype, np.floating) and not binary.all():
            raise ValueError(
                "Floating-point masks must hold only 0 and 1; got values such as "
                f"{values[~binary][:3]}. Did you swap masks and maps?"
            )
        if values[0] < 0:  # every pixel of a -1/+1 labelling is non-zero
            raise ValueError(
                "Integer masks mark defective pixels by non-zero values and normal "
                f"ones by 0; got negative values such as {values[values < 0][:3]}. "
                "Labels in {-1, 1}? Give normal pixels 0."
            )
        masks = masks != 0
    masks = masks.reshape((-1,) + masks.shape[-2:])
    maps = maps.reshape(masks.shape)
    n_anomalous = int(masks.sum())
    if n_anomalous == 0:
        raise ValueError(
            "masks hold no anomalous pixel: pixel metrics need at least one "
            "defective image with a non-empty mask."
        )
    if n_anomalous == masks.size:
        raise ValueError(
            "masks hold no normal pixel: every pixel is marked anomalous."
        )
    return masks, maps


@validate_params(
    {"masks": ["array-like"], "maps": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def pixel_auroc(masks, maps):
    """Area under the ROC curve of anomaly maps, every pixel one sample.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width)
        Ground truth: True (or any non-zero integer, e.g. 255 in a mask read
        from a PNG file) on anomalous pixels. Normal images have all-False
        masks; their pixels count as normal pixels.

    maps : array-like of shape (n_images, height, width)
        Anomaly maps at the masks' resolution, higher = more anomalous, as
        ``anomaly_map`` returns them.

    Returns
    -------
    auroc : float
        The probability that a random anomalous pixel scores higher than a
        random normal one (ties count half).

    Raises
    ------
    ValueError
        If the shapes differ, a map holds NaN or infinity, or the masks hold
        no anomalous or no normal pixel.

    See Also
    --------
    aupro : Weighs every defect equally, however small.
    image_auroc : The same at the image level, from a detector's scores.

    Notes
    -----
    Large defects dominate this metric: they hold most anomalous pixels. A
    detector that misses every small defect can still score high;
    :func:`aupro` does not let it.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import pixel_auroc
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> maps = np.zeros((2, 4, 4))
    >>> maps[1, :2, :3] = 1.0  # the defect, and two normal pixels next to it
    >>> round(pixel_auroc(masks, maps), 4)
    0.9643
    """
    masks, maps = _check_masks_and_maps(masks, maps)
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def _region_weights(masks):
    """Per-pixel weight 1 / (n_regions * region size) on defects, 0 elsewhere."""
    labels, n_regions = ndimage.label(masks, structure=_EIGHT_NEIGHBOURS)
    sizes = np.bincount(labels.ravel())
    weights = np.zeros(n_regions + 1)
    weights[1:] = 1.0 / (n_regions * sizes[1:])
    return weights[labels.ravel()]


def _pro_curve(masks, maps):
    """False-positive rate and per-region overlap at every threshold of the maps.

    Parameters
    ----------
    masks, maps : array-like of shape (n_images, height, width)
        As for :func:`aupro`.

    Returns
    -------
    fpr : ndarray of shape (n_thresholds + 1,)
        Share of normal pixels (over all images) scoring at least the
        threshold, increasing from 0 to 1.
    pro : ndarray of shape (n_thresholds + 1,)
        Mean, over the connected defect regions of all images, of the share of
        the region's pixels scoring at least the threshold.
    """
    masks, maps = _check_masks_and_maps(masks, maps)
    scores = maps.ravel()
    order = np.argsort(-scores, kind="stable")
    normal = ~masks.ravel()[order]
    fpr = np.cumsum(normal) / normal.sum()
    pro = np.cumsum(_region_weights(masks)[order])
    # A threshold keeps every pixel tied with it: one point per distinct score.
    sorted_scores = scores[order]
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]


@validate_params(
    {
        "masks": ["array-like"],
        "maps": ["array-like"],
        "max_fpr": [Interval(Real, 0, 1, closed="right")],
    },
    prefer_skip_nested_validation=True,
)
def aupro(masks, maps, *, max_fpr=0.3):
    """Area under the per-region-overlap curve up to a false-positive rate.

    The metric of MVTec AD's pixel-level evaluation (Bergmann et al.): every
    connected defect region counts the same whatever its size, so a model
    that finds the large stains and misses the thin scratches scores low.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width)
        Ground truth: True (or any non-zero integer) on anomalous pixels.
        Regions are the 8-connected components of each image's mask.

    maps : array-like of shape (n_images, height, width)
        Anomaly maps at the masks' resolution, higher = more anomalous.

    max_fpr : float in (0, 1], default=0.3
        Integrate the curve from a false-positive rate of 0 up to this one.
        0.3 is the MVTec AD protocol.

    Returns
    -------
    aupro : float
        The area divided by `max_fpr`: 1 for a perfect map, about
        ``max_fpr / 2`` for a map unrelated to the defects (exactly that for a
        constant map).

    Raises
    ------
    ValueError
        If the shapes differ, a map holds NaN or infinity, or the masks hold
        no anomalous or no normal pixel.

    See Also
    --------
    pixel_auroc : Every anomalous pixel counts the same.

    Notes
    -----
    At a threshold ``t`` the false-positive rate is the share of normal pixels
    of all images with a score of at least ``t``, and the per-region overlap
    is the mean over all regions of the share of the region's pixels with a
    score of at least ``t``. The curve joins the points of every distinct
    score by straight lines, starting from (0, 0); the area up to `max_fpr`
    interpolates the point at `max_fpr` linearly (trapezoidal rule).

    References
    ----------
    .. [1] P. Bergmann, K. Batzner, M. Fauser, D. Sattlegger, C. Steger, "The
       MVTec Anomaly Detection Dataset: A Comprehensive Real-World Dataset for
       Unsupervised Anomaly Detection", International Journal of Computer
       Vision 129, 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import aupro
    >>> masks = np.zeros((2, 8, 8), dtype=bool)
    >>> masks[1, :2, :2] = True   # a small defect
    >>> masks[1, 4:, 4:] = True   # a large one
    >>> round(aupro(masks, masks.astype(float)), 4)
    1.0
    >>> round(aupro(masks, np.zeros((2, 8, 8))), 4)
    0.15
    """
    fpr, pro = _pro_curve(masks, maps)
    # The points up to max_fpr, then the curve's value at max_fpr. fpr ends at
    # exactly 1, so a point at or beyond max_fpr exists.
    inside = np.searchsorted(fpr, max_fpr, side="right")
    last = inside - 1
    if fpr[last] == max_fpr:
        pro_at_max = pro[last]
    else:
        step = (max_fpr - fpr[last]) / (fpr[inside] - fpr[last])
        pro_at_max = pro[last] + step * (pro[inside] - pro[last])
    x = np.r_[fpr[:inside], max_fpr]
    y = np.r_[pro[:inside], pro_at_max]
    area = np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)
    return float(area / max_fpr)


def image_auroc(estimator, X, y):
    """Image-level AUROC of a fitted detector, with the package's labels.

    A scorer with scikit-learn's ``scorer(estimator, X, y)`` signature: pass
    it as ``scoring=image_auroc`` to :class:`~sklearn.model_selection.GridSearchCV`
    or :func:`~sklearn.model_selection.cross_val_score` with the labels the
    datasets of this package return (1 = anomalous, 0 = normal), and no sign
    or label needs converting. It computes
    ``roc_auc_score(y, -estimator.score_samples(X))``.

    Parameters
    ----------
    estimator : fitted outlier detector
        Any estimator with ``score_samples`` (higher = more normal).

    X : array-like or list
        Samples the estimator scores.

    y : array-like of shape (n_samples,)
        1 for an anomalous sample and 0 for a normal one.

    Returns
    -------
    auroc : float
        The probability that a random anomalous sample has a lower
        ``score_samples`` than a random normal one.

    Raises
    ------
    ValueError
        If `y` holds other values than 0 and 1 (scikit-learn's outlier labels
        -1/+1 would silently turn the AUROC into 1 - AUROC), or only one of
        them.

    See Also
    --------
    pixel_auroc : The same for anomaly maps, per pixel.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from sklearn_metarefine import image_auroc
    >>> rng = np.random.RandomState(0)
    >>> X_train = rng.normal(size=(100, 2))
    >>> X_test = np.r_[rng.normal(size=(20, 2)), rng.normal(6, 1, size=(20, 2))]
    >>> y_test = np.r_[np.zeros(20), np.ones(20)]
    >>> detector = IsolationForest(random_state=0).fit(X_train)
    >>> image_auroc(detector, X_test, y_test)
    1.0
    """
    y = np.asarray(y)
    labels = np.unique(y)
    if not np.isin(labels, (0, 1)).all() or len(labels) != 2:
        raise ValueError(
            "image_auroc needs labels 1 (anomalous) and 0 (normal), both present; "
            f"got the labels {labels.tolist()}. Convert scikit-learn's outlier "
            "labels with (y == -1).astype(int)."
        )
    return float(roc_auc_score(y, -np.asarray(estimator.score_samples(X))))
