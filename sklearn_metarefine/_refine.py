"""Iterative IQR refinement of a contaminated training set."""

import numpy as np


def iqr_fence(scores, k=1.5):
    """Upper Tukey fence ``Q3 + k * IQR`` of a set of anomaly scores.

    Parameters
    ----------
    scores : array-like of shape (n_samples,)
        Anomaly scores, higher meaning more anomalous.
    k : float, default=1.5
        IQR multiplier; 1.5 is Tukey's fence, 3.0 his "far out" fence.

    Returns
    -------
    fence : float
        ``Q3 + k * (Q3 - Q1)``, the quartiles computed with
        :func:`numpy.percentile`'s default ("linear") method, i.e. linear
        interpolation between order statistics (Hyndman and Fan's type 7).

    Notes
    -----
    A score is outside the fence when it is strictly greater than it. When
    more than a quarter of the scores tie at the third quartile, the IQR can be
    zero and the fence equals Q3: tied scores stay inside and only scores above
    the tie are outside, as in Tukey's rule; when all scores are equal nothing
    is outside.

    Examples
    --------
    >>> from sklearn_metarefine import iqr_fence
    >>> iqr_fence([1.0, 2.0, 3.0, 4.0, 5.0], k=1.5)
    7.0
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(
            f"scores must be a non-empty 1-D array, got shape {scores.shape}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf; the fence is undefined.")
    q1, q3 = np.percentile(scores, [25, 75])
    return float(q3 + k * (q3 - q1))
