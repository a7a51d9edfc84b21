"""Probabilistic PCA in front of a flow, and the averaging over views (numpy)."""

import numpy as np


def fit_projection(std_rows, pca_components, n_views=1, n_folds=5):
    """Probabilistic PCA of standardised rows (Tipping and Bishop, 1999).

    Returns the leading principal axes, their variances and the variance of
    the residual in the discarded directions, which models the residual as
    isotropic Gaussian noise. At most ``min(n_features, n_distinct - 1)``
    axes are kept, and at least 2 (the flow's couplings need two
    coordinates), ``n_distinct`` being the number of distinct rows: beyond
    that the sample variances are zero. Copies of a row change neither that
    number nor which of the two residual variances below is taken.

    The residual variance is that of the rows in the discarded directions,
    except when the axes span the rows (``n_distinct - 1 <= pca_components``):
    then the rows leave no residual at all, and a residual variance taken
    from them (the floor) would score every new row as far out. It is then
    measured on rows the axes were not fitted on: ``n_folds`` folds of
    distinct objects (``n_views`` consecutive rows each; the copies of an
    object fall in its fold), each projected on the axes of the other folds.
    """
    n_rows, dim = std_rows.shape
    objects = std_rows.reshape(n_rows // n_views, n_views * dim)
    _, first, inverse = np.unique(
        objects, axis=0, return_index=True, return_inverse=True
    )
    # numbered in order of first occurrence: distinct objects keep their places
    object_ids = np.argsort(np.argsort(first))[inverse.reshape(-1)]
    n_objects = len(first)
    n_distinct = n_objects if n_views == 1 else len(np.unique(std_rows, axis=0))
    pca_components = max(2, min(pca_components, dim, n_distinct - 1))
    _, singular_values, vt = np.linalg.svd(std_rows, full_matrices=False)
    variances = singular_values**2 / n_rows
    floor = 1e-6 * max(variances.mean(), np.finfo(np.float64).tiny)
    explained = np.maximum(variances[:pca_components], floor)
    discarded = dim - pca_components
    if not discarded:
        return vt[:pca_components], explained, floor
    if n_distinct - 1 > pca_components or n_objects < 2:
        noise = variances[pca_components:].sum() / discarded
        return vt[:pca_components], explained, max(noise, floor)
    fold = np.repeat(object_ids % min(n_folds, n_objects), n_views)
    squared = 0.0
    for f in np.unique(fold):
        held_out = fold == f
        rest = std_rows[~held_out]
        centre = rest.mean(axis=0)
        _, _, axes = np.linalg.svd(rest - centre, full_matrices=False)
        axes = axes[:pca_components]
        rows = std_rows[held_out] - centre
        squared += np.sum((rows - rows @ axes.T @ axes) ** 2)
    noise = squared / (n_rows * discarded)
    return vt[:pca_components], explained, max(noise, floor)


def project(std_rows, components, explained_variance, noise_variance):
    """Whitened principal coordinates and the log-density of the rest.

    The second output is, per row, the log-density contributed by the linear
    map (its Jacobian) and by the isotropic Gaussian residual, so that the
    flow's log-density of the coordinates plus it is a log-density of the
    row in the standardised space.
    """
    if components is None:
        return std_rows, np.zeros(len(std_rows))
    along = std_rows @ components.T
    residual = std_rows - along @ components
    discarded = std_rows.shape[1] - len(components)
    # A row so far out that its squared residual overflows has density zero:
    # its log-density is -inf, the most anomalous score, not an error.
    with np.errstate(over="ignore", under="ignore"):
        log_density = -0.5 * np.sum(np.log(explained_variance)) - 0.5 * (
            discarded * np.log(2 * np.pi * noise_variance)
            + np.sum(residual**2, axis=1) / noise_variance
        )
    return along / np.sqrt(explained_variance), log_density


def mean_over_views(values, n_views):
    """Average per-view values, stored view-major per object, over each object."""
    return values.reshape(-1, n_views).mean(axis=1)
