"""Estimators of other libraries (scikit-learn's own detectors) through skops.

skops stores an estimator as JSON and numpy arrays, and loads only the types it
trusts: scikit-learn's estimators, numpy and builtins, plus the types listed here
or passed by the caller. Nothing is unpickled.
"""

from ._archive import ModelFileError

# Types of scikit-learn's outlier detectors' fitted state that skops does not
# trust by default: the trees of IsolationForest, the neighbour indexes of
# LocalOutlierFactor and their distance metrics. All are plain data.
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "sklearn.metrics._dist_metrics.ChebyshevDistance64",
)


def dumps(estimator, where):
    import skops.io

    try:
        return skops.io.dumps(estimator)
    except Exception as error:
        raise TypeError(
            f"Cannot save {where}: skops cannot serialise a "
            f"{type(estimator).__qualname__} ({error})."
        ) from error


def untrusted_types(data, trusted):
    """Types in skops ``data`` trusted neither by skops, this module nor ``trusted``."""
    import skops.io

    found = skops.io.get_untrusted_types(data=data)
    return sorted(set(found) - set(TRUSTED_TYPES) - set(trusted))


def loads(data, trusted, where):
    import skops.io

    try:
        untrusted = untrusted_types(data, trusted)
    except Exception as error:
        raise ModelFileError(f"{where}: malformed skops member ({error}).") from None
    if untrusted:
        raise ModelFileError(
            f"{where} holds types that are not trusted: {untrusted}. Load the file "
            "only if you trust where it comes from, with "
            f"load(path, trusted={untrusted!r})."
        )
    try:
        return skops.io.loads(data, trusted=[*TRUSTED_TYPES, *trusted])
    except Exception as error:
        raise ModelFileError(f"{where}: cannot load skops member ({error}).") from None
