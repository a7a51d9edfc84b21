"""Scores of outlier detectors: Tukey's fence, neighbour distances, the sign adapter.

numpy and scikit-learn only: refining a detector that is not a flow never
imports torch.
"""

import sys
from numbers import Integral, Real

import numpy as np
from sklearn.metrics import pairwise_distances_chunked
from sklearn.pipeline import Pipeline
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, validate_params

from ._utils import standardisation, warn


# Megabytes of pairwise distances held at once by neighbour_distances.
_WORKING_MEMORY_MB = 32


@validate_params(
    {"scores": ["array-like"], "k": [Interval(Real, 0, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
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

    An infinite anomaly score (a sample the model gives zero likelihood, such
    as a value near the float64 limit) is outside any fence: the quartiles
    are those of the finite scores. NaN scores raise a ``ValueError``.

    Examples
    --------
    >>> from sklearn_metarefine import iqr_fence
    >>> iqr_fence([1.0, 2.0, 3.0, 4.0, 5.0], k=1.5)
    7.0
    """
    q1, q3 = np.percentile(_finite_scores(scores), [25, 75])
    return float(q3 + k * (q3 - q1))


def _finite_scores(scores):
    """The finite ``scores``, refusing what has no quartiles."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(
            f"scores must be a non-empty 1-D array, got shape {scores.shape}."
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; the fence is undefined.")
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        raise ValueError("scores are all infinite; the fence is undefined.")
    return finite


def contamination_offset(scores, contamination):
    """The offset below which ``contamination`` of the training ``scores``
    (higher = more normal) lie: their percentile, kept finite.

    Samples of zero likelihood score ``-inf``. Where the percentile falls
    among them, or between them and a finite score (``nan``), the offset is
    just below the lowest finite score: ``predict`` then flags every ``-inf``
    sample, the most anomalous there are, and no finite one. An infinite
    offset would make ``decision_function`` ``nan`` for them, which
    ``predict`` calls normal. ``nan`` scores (samples the detector gives no
    score) count as ``-inf``: the first flagged.

    Where several samples score exactly the percentile (a detector whose
    scores saturate, such as IsolationForest's for the samples a refinement
    removed), ``predict`` flags all of them or none, whichever count is closer
    to ``contamination`` of the samples: at the percentile itself it flagged
    none, also where they were many more than that.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isnan(scores), -np.inf, scores)
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        raise ValueError(
            f"Every training sample scores {scores[0]} (zero likelihood or "
            f"none at all): contamination={contamination} sets no threshold."
        )
    low, high = finite.min(), finite.max()
    # Stand-ins for the infinities keep the percentile's interpolation finite.
    stand_ins = np.clip(scores, low - 1.0 - abs(low), high + 1.0 + abs(high))
    value = float(np.percentile(stand_ins, 100.0 * contamination))
    value = float(np.clip(value, np.nextafter(low, -np.inf), high))
    n_tied = np.count_nonzero(scores == value)
    if n_tied > 1:
        n_below = np.count_nonzero(scores < value)
        target = contamination * scores.size
        if abs(n_below + n_tied - target) < abs(n_below - target):
            value = float(np.nextafter(value, np.inf))  # the tied ones flagged
    return value


@validate_params(
    {"scores": ["array-like"], "k": [Interval(Real, 0, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def clean_tail_fraction(scores, k=1.5):
    """Fraction of clean scores expected above their fence ``Q3 + k * IQR``.

    Tukey's fence rejects part of any clean sample: about 0.35% of a Gaussian,
    4.8% of an exponential distribution. This estimate extrapolates the upper
    tail beyond the third quartile as exponential, with the rate at which the
    scores thin out between the median and Q3.

    Parameters
    ----------
    scores : array-like of shape (n_samples,)
        Anomaly scores, higher meaning more anomalous.
    k : float, default=1.5
        IQR multiplier of the fence.

    Returns
    -------
    fraction : float
        ``0.25 * 2 ** (-k * IQR / (Q3 - median))``: exact for exponential
        scores (4.8% at ``k=1.5``), larger than the truth for lighter tails
        (3.1% for Gaussian scores), and 0 when Q3 equals the median. The
        quartiles are those of the finite scores, as for :func:`iqr_fence`;
        NaN scores raise a ``ValueError``.

    See Also
    --------
    iqr_fence : The fence itself.

    Notes
    -----
    :class:`IQRRefiner` stops when a round would remove no more samples than
    this fraction of its kept set: such a round trims the tail a clean set
    has, and iterating it would erode the training set round after round.
    Overestimating the clean tail errs on the side of stopping.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import clean_tail_fraction
    >>> round(clean_tail_fraction(np.random.RandomState(0).exponential(size=10_000)), 2)
    0.05
    """
    q1, median, q3 = np.percentile(_finite_scores(scores), [25, 50, 75])
    if q3 <= median:
        return 0.0
    return float(0.25 * 2.0 ** (-k * (q3 - q1) / (q3 - median)))


def with_clean_tail(inside, outside, tail_fraction):
    """Scores inside a fence, and the lowest outside, as a clean set has there.

    A fence cuts off part of any clean set (``tail_fraction`` of it, see
    :func:`clean_tail_fraction`): a quantile of the scores inside it alone
    lies too low. The lowest ``outside`` scores, as many as that tail holds
    (at most all of them), join the ``inside`` ones. Infinite scores never
    join.
    """
    inside = np.asarray(inside, dtype=np.float64)
    outside = np.sort(np.asarray(outside, dtype=np.float64))
    outside = outside[np.isfinite(outside)]
    n_tail = round(tail_fraction / (1.0 - tail_fraction) * inside.size)
    return np.concatenate([inside[np.isfinite(inside)], outside[:n_tail]])


def majority_fence(scores, k=1.5):
    """Tukey's fence of the normal majority of fixed anomaly scores.

    The fence ``Q3 + k * IQR`` of all the scores lies among the anomalies
    once they are a quarter of the set or more, and then flags none of them.
    This fence grows instead from the lower half of the scores, normal when
    at least half the set is normal and anomalies score above normal samples:
    it fences the scores kept so far and keeps every score inside that fence;
    when none is, the next score still joins if it lies inside the fence of
    the kept scores and itself. It stops when the next score lies outside
    both. With a quarter to a half of the set anomalous and apart from the
    rest, it ends at the fence of the normal scores. On a clean set it
    usually ends below the fence of all the scores, where the scores thin
    out, and flags more clean scores than that fence: on 200 draws each of
    exponential, Gaussian and Gumbel scores, 2.7 more in 100 on average, 1.8
    more in 20, 1.2 more in 12. The second test is for small sets, whose
    lower half gives a tight fence that would stop at the first gap: without
    it, 3.6 more in 100, 3.1 more in 20, 2.6 more in 12.

    Infinite scores are outside any fence and take no part in the quartiles.
    """
    finite = np.asarray(scores, dtype=np.float64)
    finite = np.sort(finite[np.isfinite(finite)])
    if finite.size == 0:
        return np.inf
    n_kept = -(-finite.size // 2)  # the lower half, rounded up
    while n_kept < finite.size:  # n_kept grows at every turn
        fence = iqr_fence(finite[:n_kept], k)
        inside = int(np.searchsorted(finite, fence, side="right"))
        if inside > n_kept:
            n_kept = inside
        elif finite[n_kept] <= iqr_fence(finite[: n_kept + 1], k):
            n_kept += 1
        else:
            return fence
    return iqr_fence(finite, k)


def neighbour_distances(X, n_neighbors):
    """Distance of each sample to its ``n_neighbors``-th nearest other sample.

    Features are standardised first (constant features are left as they
    are), so that no feature dominates the distance by its unit.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The samples.
    n_neighbors : int
        Which neighbour, counted from 1; at most ``n_samples - 1``. A sample
        is never its own neighbour, but a duplicate of it is.

    Returns
    -------
    distances : ndarray of shape (n_samples,), dtype float64
        Euclidean distances in standardised units.

    See Also
    --------
    IQRRefiner : Its ``start="neighbors"`` takes its first core from these
        distances.

    Notes
    -----
    A small distance means many samples nearby: the ``n_neighbors``-th
    neighbour distance measures the probability mass around a sample rather
    than the peak of a density, so that a tight group of fewer than
    ``n_neighbors`` similar samples still has to reach outside itself.

    Examples
    --------
    >>> from sklearn_metarefine import neighbour_distances
    >>> neighbour_distances([[0.0], [1.0], [2.0], [10.0]], n_neighbors=1).round(2)
    array([0.25, 0.25, 0.25, 2.02])
    """
    X = check_array(X, dtype=np.float64)
    n_samples = X.shape[0]
    if not isinstance(n_neighbors, Integral) or isinstance(n_neighbors, bool):
        raise TypeError(
            f"n_neighbors must be an int, got {type(n_neighbors).__name__} "
            f"{n_neighbors!r}."
        )
    if not 1 <= n_neighbors < n_samples:
        raise ValueError(
            f"n_neighbors must be between 1 and n_samples - 1 = {n_samples - 1}, "
            f"got n_neighbors={n_neighbors}."
        )
    # A value far below its feature's magnitude underflows to 0, numpy's
    # default, even where the caller set np.seterr(all="raise").
    with np.errstate(under="ignore"):
        return _kth_neighbour_distances(X, n_neighbors)


def _kth_neighbour_distances(X, n_neighbors):
    """:func:`neighbour_distances` of a checked float64 ``X``."""
    n_samples = X.shape[0]
    # Distances do not depend on the mean: dividing by the scale is enough.
    _, scale = standardisation(X)
    scaled = X / scale

    def kth_nearest(chunk, start):
        # Each row holds the sample's distance to itself, 0, so the wanted
        # neighbour is at rank n_neighbors counted from 0. A duplicate of the
        # sample, also at 0, may swap places with the sample itself: the
        # distance at that rank is the same.
        order = np.argpartition(chunk, n_neighbors, axis=1)
        # A copy, not a view that would keep the block's whole order alive.
        return order[:, n_neighbors].copy()

    # One block of rows at a time: memory grows with n_samples, not its square.
    blocks = pairwise_distances_chunked(
        scaled, reduce_func=kth_nearest, working_memory=_WORKING_MEMORY_MB
    )
    neighbours = np.concatenate(list(blocks))
    # The blocks' distances come from the expansion |x|^2 - 2 x.y + |y|^2, which
    # leaves rounding errors of about 1e-8 (a duplicate is not at exactly 0);
    # the distance to the chosen neighbour is recomputed directly.
    distances = np.empty(n_samples, dtype=np.float64)
    rows = max(1, _WORKING_MEMORY_MB * 2**20 // (8 * X.shape[1]))
    for start in range(0, n_samples, rows):
        block = slice(start, start + rows)
        difference = scaled[block] - scaled[neighbours[block]]
        distances[block] = np.sqrt(np.einsum("ij,ij->i", difference, difference))
    return distances


def is_pyod_detector(estimator):
    # A pipeline's decision_function is its last step's.
    if isinstance(estimator, Pipeline):
        return is_pyod_detector(estimator[-1])
    # A PyOD detector can only exist once PyOD is imported, so looking it up in
    # sys.modules avoids importing an optional dependency to answer "no".
    pyod_base = sys.modules.get("pyod.models.base")
    return pyod_base is not None and isinstance(estimator, pyod_base.BaseDetector)


# PyOD detectors whose decision_function gives a sample a score that depends
# on the other samples of its call: COF, SOD, LMDD, SOS, LOCI and CD score it
# against the batch, ECOD and COPOD against the training data together with
# the batch, ROD rescales by the batch, and DIF's scores move with it too.
# Found with PyOD 3.6.7 by scoring one batch whole and in halves.
_BATCH_DEPENDENT = (
    "COF", "SOD", "LMDD", "SOS", "LOCI", "CD", "ECOD", "COPOD", "ROD", "DIF",
)  # fmt: skip


def warn_if_batch_dependent(estimator):
    """Warn, for :class:`IQRRefiner`, that ``estimator`` gives a sample a score
    that depends on the samples scored with it (:data:`_BATCH_DEPENDENT`)."""
    detector = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    name = type(detector).__name__
    if not (is_pyod_detector(detector) and name in _BATCH_DEPENDENT):
        return
    warn(
        f"PyOD's {name} scores each sample against the other samples of its "
        "call, so IQRRefiner's scores, offset_ and predict of a sample depend "
        "on which samples are scored with it (the refiner scores folds and "
        "removed samples a few at a time; a sample's label can differ between "
        "scoring a set at once and one sample at a time). Prefer a detector "
        "that scores each sample alone, such as PyOD's KNN or PCA."
    )


def anomaly_score(estimator, X):
    """Anomaly score of a fitted detector, higher meaning more anomalous.

    The single place where sign conventions meet: scikit-learn detectors score
    normality (``score_samples``, or ``decision_function`` when that is all
    they have), PyOD detectors score abnormality with ``decision_function``.

    Parameters
    ----------
    estimator : fitted estimator
        A scikit-learn outlier detector or density estimator, or a PyOD
        detector.
    X : ndarray of shape (n_samples, n_features)
        Samples to score.

    Returns
    -------
    scores : ndarray of shape (n_samples,), dtype float64
    """
    if is_pyod_detector(estimator):
        return np.asarray(estimator.decision_function(X), dtype=np.float64)
    if hasattr(estimator, "score_samples"):
        return -np.asarray(estimator.score_samples(X), dtype=np.float64)
    return -np.asarray(estimator.decision_function(X), dtype=np.float64)
