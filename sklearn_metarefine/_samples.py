"""The training samples of a refinement: their checks, and their rows as the
refined detector takes them (arrays, or DataFrames for detectors that select
columns by name)."""

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import _get_feature_names, validate_data

from ._utils import warn

# Below four scores the quartiles are interpolated between the same few order
# statistics and the fence says nothing about the tail.
MIN_FENCE_SAMPLES = 4


def take(X, rows):
    """The ``rows`` (a mask or indices) of ``X``, an array or a DataFrame: a
    detector that selects columns by name gets a DataFrame."""
    return _safe_indexing(X, rows)


def values(X):
    """``X`` as a numeric array, for the refiner's own bookkeeping: a DataFrame
    with bool or nullable columns gives numpy an object array."""
    array = np.asarray(X)
    return array.astype(np.float64) if array.dtype == object else array


def validated(refiner, X, **kwargs):
    """``validate_data(refiner, X, **kwargs)``, naming the columns of a
    DataFrame that are not numbers: the refiner compares samples by their
    values (copies, quartiles)."""
    try:
        array = validate_data(refiner, X, **kwargs)
    except ValueError as error:
        if "feature names" in str(error):  # names first, as checked
            raise
        _refuse_text_columns(refiner, X, error)
        raise
    if array.dtype == object:  # a categorical column of text passes as objects
        _refuse_text_columns(refiner, X)
    return array


def _refuse_text_columns(refiner, X, error=None):
    """Raise, naming the columns of ``X`` that are not numbers, if any."""
    columns = getattr(X, "columns", None)
    text = [] if columns is None else [c for c in columns if not _numeric(X[c])]
    if not text:
        return
    owner = type(refiner).__name__
    raise ValueError(
        f"{owner} takes numeric columns only (it compares samples by their "
        f"values); X has {len(text)} that are not: "
        f"{', '.join(map(repr, text[:5]))}{', ...' if len(text) > 5 else ''}. "
        f"Encode them in a step before it: make_pipeline(encoder, "
        f"{owner}(detector))."
    ) from error


def _numeric(column):
    try:
        np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def samples_for(X, array):
    """What the refined detector is given: ``X`` itself when it is a DataFrame
    (``array``, its validated values, keeps the checks), else ``array``."""
    return X if hasattr(X, "columns") else array


def checked_samples(refiner, X):
    """``X`` checked against the fitted ``refiner``, as its detector takes it:
    a DataFrame as in ``fit``, but an array where only ``X`` has feature names.

    Feature names on one side only are warned about once, by this check: an
    array for a refiner fitted on a DataFrame reaches the detector as a
    pandas DataFrame of the fitted names, which it takes without a word (a
    filter of the warning, set around the detector's scoring, changed it for
    every thread of the process).
    """
    array = validated(refiner, X, reset=False)
    named, names = hasattr(refiner, "feature_names_in_"), _get_feature_names(X)
    if named and names is None:
        try:
            import pandas as pd
        except ImportError:  # the detector repeats the warning
            return array
        return pd.DataFrame(array, columns=refiner.feature_names_in_)
    return X if hasattr(X, "columns") and (named or names is None) else array


def check_fence_samples(X):
    """Refuse ``X`` with too few samples, or distinct ones, for quartiles:
    copies score alike, and on ties float rounding decides what is flagged."""
    if X.shape[0] < MIN_FENCE_SAMPLES:
        raise ValueError(
            f"IQRRefiner needs at least {MIN_FENCE_SAMPLES} samples to "
            f"compute quartiles, got n_samples={X.shape[0]}."
        )
    for rows in (X[:64], X):  # the first rows settle it, unless they repeat
        if (n_distinct := distinct_rows(rows)[0].size) >= MIN_FENCE_SAMPLES:
            return
    raise ValueError(
        f"X holds {n_distinct} distinct sample(s) among its {X.shape[0]} rows (the "
        f"others repeat them); IQRRefiner needs at least {MIN_FENCE_SAMPLES} "
        "distinct ones. Train on varied samples."
    )


def distinct_training_images(
    features, near=False, *, minimum=MIN_FENCE_SAMPLES, rtol=None
):
    """``distinct_rows`` of a detector's training features (``near``: its
    ``near_copies``, within ``rtol``, by default the CNN's rounding),
    refusing fewer than ``minimum`` distinct images (4 by default, for the
    quartiles of a fence) and warning when some repeat."""
    fence = minimum == MIN_FENCE_SAMPLES
    needs = f"the {'refinement' if fence else 'detector'} needs at least {minimum}"
    if len(features) < minimum:
        why = " for the quartiles of its fence" if fence else ""
        raise ValueError(
            f"{needs[0].upper()}{needs[1:]} training images{why}, got "
            f"n_samples={len(features)}."
        )
    if near:
        distinct, copy_of = near_copies(features, rtol or COPY_TOLERANCE)
    else:
        distinct, copy_of = distinct_rows(features)
    if len(distinct) < minimum:
        raise ValueError(
            f"X holds {len(distinct)} distinct training image(s) among its "
            f"{len(features)} (the others repeat them); {needs} distinct images."
        )
    if len(distinct) < len(features):
        same = (
            "exactly"
            if not near
            else "to the CNN's rounding" if rtol is None else "to float32 rounding"
        )
        warn(
            f"{len(features) - len(distinct)} of the {len(features)} training "
            f"images repeat other training images (the same features, {same}): "
            "each distinct image is fitted once (many copies weigh as one), "
            "and a repeat shares the decision on its first copy in inlier_mask_.",
            UserWarning,
        )
    return distinct, copy_of


# The CNN's float32 arithmetic varies with the batch an image is in: copies of
# one image in batches of 32 and of 1 differed by 1.6e-7 of their norm, while
# the nearest of 200 distinct digits were 7e-2 apart.
COPY_TOLERANCE = 1e-4


def near_copies(X, rtol=COPY_TOLERANCE):
    """``distinct_rows``, where a row less than ``rtol`` times the larger norm
    from the first row of a group is a copy of it.

    For CNN features (relative to the norm, as their rounding is). Each row
    is compared with the groups' first rows only, so that groups do not
    drift along chains of rows each close to the last.
    """
    distinct, copy_of = distinct_rows(X)
    rows = values(X)[distinct].astype(np.float64)
    if len(rows) < 2 or not np.isfinite(rows).all():  # nothing to compare, NaN
        return distinct, copy_of
    # Each row at its own scale, so that rows of any magnitude neither
    # overflow nor vanish beside the largest.
    peaks = np.abs(rows).max(axis=1)
    nonzero = np.flatnonzero(peaks > 0)  # zero rows: exact copies only
    if len(nonzero) < 2:
        return distinct, copy_of
    # Rows closer than rtol * the larger norm are closer than 2 * rtol once
    # scaled to unit norm: the candidates, found without the scale of the
    # largest row setting the radius of all.
    unit = rows[nonzero] / peaks[nonzero, None]
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    search = NearestNeighbors(radius=2 * rtol, algorithm="brute").fit(unit)
    candidates = search.radius_neighbors(unit, return_distance=False)
    first = np.arange(len(rows))
    for row, others in zip(nonzero, candidates):
        others = nonzero[others]
        others = others[(others < row) & (first[others] == others)]
        scale = np.maximum(peaks[others], peaks[row])[:, None]
        earlier, this = rows[others] / scale, rows[row] / scale
        gap = np.linalg.norm(earlier - this, axis=1)
        larger = np.maximum(
            np.linalg.norm(earlier, axis=1), np.linalg.norm(this, axis=1)
        )
        close = others[gap < rtol * larger]
        if close.size:
            first[row] = close.min()
    roots = np.flatnonzero(first == np.arange(len(rows)))
    return distinct[roots], np.searchsorted(roots, first)[copy_of]


def distinct_rows(X):
    """The first occurrence of each distinct row of ``X``, and each row's copy.

    Returns ``distinct``, the indices of the first occurrences in increasing
    order (``arange(len(X))`` when no row repeats), and ``copy_of``, for each
    row the position in ``distinct`` of its first occurrence, so that
    ``X[distinct][copy_of]`` equals ``X``.
    """
    _, first, inverse = np.unique(
        values(X), axis=0, return_index=True, return_inverse=True
    )
    distinct = np.sort(first)
    return distinct, np.searchsorted(distinct, first[inverse.ravel()])
