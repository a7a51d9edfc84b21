"""The contamination protocol: a noisy training set and a clean, balanced test set."""

import math
from fractions import Fraction
from numbers import Integral, Real

import numpy as np
from sklearn.utils import Bunch, _safe_indexing, check_random_state
from sklearn.utils._param_validation import Interval, RealNotInt, validate_params
from sklearn.utils.validation import check_consistent_length, column_or_1d

# Without a predefined split, the default test set holds this share of the
# normal samples (and as many anomalies), as in train_test_split.
_DEFAULT_TEST_SHARE = 0.25


@validate_params(
    {
        "X": ["array-like"],
        "y": ["array-like"],
        "noise": [Interval(Real, 0, 1, closed="left")],
        "test_size": [
            Interval(RealNotInt, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "train_size": [Interval(Integral, 1, None, closed="left"), None],
        "overlap": ["boolean"],
        "split": ["array-like", None],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_contaminated(
    X,
    y,
    *,
    noise=0.1,
    test_size=None,
    train_size=None,
    overlap=False,
    split=None,
    random_state=None,
):
    """Split labelled data into a contaminated training set and a balanced test set.

    This is the protocol of robust anomaly detection benchmarks: the detector
    trains on a set of which a fraction `noise` is anomalous, without knowing
    which samples, and is evaluated on a test set with as many normal as
    anomalous samples. By default no sample is in both sets.

    Parameters
    ----------
    X : array-like of shape (n_samples, ...) or list of length n_samples
        The samples: an array indexed on its first axis (feature vectors,
        images) or a list (e.g. the ``filenames`` of a loader). The returned
        sets have the same type (lists for a tuple).

    y : array-like of shape (n_samples,)
        1 for an anomalous sample, 0 for a normal one, as the loaders of this
        package return it (convert scikit-learn's -1/+1 outlier labels with
        ``(y == -1).astype(int)``).

    noise : float in [0, 1), default=0.1
        Fraction of the training set that is anomalous. The number of
        training anomalies is rounded to the nearest integer (see Notes).

    test_size : float in (0, 1), int or None, default=None
        Size of each half of the balanced test set, counted in normal samples
        (the test set holds as many anomalies, so ``2 * n`` samples in all).
        A float is the fraction of the normal samples eligible for the test
        set, rounded up; an int is their number. None takes, with `split`,
        as many as the test side can balance (the smaller of its normal and
        anomalous counts) and, without `split`, a quarter of the normals.

    train_size : int or None, default=None
        Number of training samples. None keeps every normal sample that is
        eligible for training and not in the test set, and adds anomalies
        until they make up `noise` of the training set. An int fixes the
        size instead and draws ``round(noise * train_size)`` anomalies and
        the rest normal samples, which reaches high noise levels on datasets
        with few anomalies.

    overlap : bool, default=False
        If False, training anomalies are drawn only among the anomalies that
        are not in the test set. If True, they are drawn among all anomalies,
        independently of the test set, as in protocols that reuse test
        anomalies for contamination; normal samples are never shared.

    split : array-like of shape (n_samples,) of {"train", "test"}, default=None
        A predefined split, such as the ``split`` of :func:`load_mvtec_ad` or
        :func:`load_ksdd2`. The test set is drawn from the "test" side only,
        and the normal training samples from the "train" side only. Training
        anomalies may come from either side, because the official training
        splits of industrial datasets hold few or no anomalies. None lets
        every sample go to either set.

    random_state : int, RandomState instance or None, default=None
        Controls the draws. Pass an int for reproducible output across calls.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes, each set in a
        random order.

        X_train : array or list of length n_train
            Training samples: normal and anomalous, unlabelled for the
            detector.
        X_test : array or list of length n_test
            Test samples, half normal and half anomalous.
        y_train : ndarray of shape (n_train,), dtype=int64
            1 for the anomalies planted in the training set, 0 for normal
            samples: the ground truth of the contamination, e.g. to measure
            how many anomalies a refinement removed.
        y_test : ndarray of shape (n_test,), dtype=int64
            1 for anomalous, 0 for normal test samples.
        train_indices : ndarray of shape (n_train,), dtype=int64
            Positions of the training samples in `X`.
        test_indices : ndarray of shape (n_test,), dtype=int64
            Positions of the test samples in `X`.

    Raises
    ------
    ValueError
        If there are not enough anomalies for the requested `noise` (the
        message gives the anomalies available and the largest achievable
        noise), not enough samples for the requested test or training size,
        or if `y` or `split` hold other values than documented.

    See Also
    --------
    load_mvtec_ad, load_ksdd2, load_digits_anomaly : Datasets to apply the
        protocol to.

    Notes
    -----
    Rounding rule: with ``train_size=None`` and ``n_normal`` normal training
    samples, the number of training anomalies is the integer nearest to
    ``noise * n_normal / (1 - noise)``; with an int `train_size` it is the
    integer nearest to ``noise * train_size``; halves round up, computed on
    `noise` as the decimal it is written as (0.2 as 1/5). Either way the
    anomalous fraction of the training set is within ``1 / (2 * n_train)`` of
    `noise`. When the data cannot provide that many anomalies, or a positive
    `noise` rounds to none, the function raises instead of returning a
    cleaner training set than asked for.

    Draws are nested, so that noise levels can be compared on equal terms:
    for a fixed `random_state`, the test set does not depend on `noise`,
    `train_size` or `overlap`, and with ``train_size=None`` the training
    anomalies at a lower noise are a subset of those at a higher noise.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine.datasets import make_contaminated
    >>> X = np.arange(240).reshape(120, 2)
    >>> y = np.array([0] * 80 + [1] * 40)
    >>> data = make_contaminated(X, y, noise=0.2, test_size=20, random_state=0)
    >>> data.X_train.shape, data.X_test.shape
    ((75, 2), (40, 2))
    >>> float(data.y_train.mean()), float(data.y_test.mean())
    (0.2, 0.5)

    With a predefined split, normal training samples come from the "train"
    side and the balanced test set from the "test" side, as for MVTec AD:

    >>> split = np.array(["train"] * 60 + ["test"] * 60)
    >>> data = make_contaminated(X, y, noise=0.1, split=split, random_state=0)
    >>> len(data.y_train), int(data.y_train.sum()), len(data.y_test)
    (67, 7, 40)
    >>> bool(np.all(split[data.test_indices] == "test"))
    True
    """
    y = _binary_target(y)
    check_consistent_length(X, y)
    train_side, test_side = _sides(split, len(y))
    rng = check_random_state(random_state)
    normal, anomalous = y == 0, y == 1

    # The test set is drawn (and ordered) first, from random numbers that depend
    # only on the pool sizes, so that it is the same at every noise level.
    if split is not None and not np.any(normal & train_side):
        raise ValueError(
            'split has no normal sample on its "train" side, where the training '
            f"set's normal samples come from ({int(np.sum(train_side))} samples "
            'there). Load the dataset with split="all" and pass its split.'
        )
    n_test = _test_count(test_size, normal & test_side, anomalous & test_side, split)
    test_normal = _draw(rng, normal & test_side, n_test)
    test_anomalous = _draw(rng, anomalous & test_side, n_test)
    test_indices = rng.permutation(np.concatenate([test_normal, test_anomalous]))
    in_test = np.zeros(len(y), dtype=bool)
    in_test[test_indices] = True

    normal_pool = normal & train_side & ~in_test
    anomalous_pool = anomalous if overlap else anomalous & ~in_test
    n_normal, n_anomalous = _train_counts(
        noise,
        train_size,
        n_normal_pool=int(normal_pool.sum()),
        n_anomalous_pool=int(anomalous_pool.sum()),
        n_anomalous_total=int(anomalous.sum()),
        n_test=n_test,
        overlap=overlap,
    )
    train_normal = _draw(rng, normal_pool, n_normal)
    train_anomalous = _draw(rng, anomalous_pool, n_anomalous)
    train_indices = rng.permutation(np.concatenate([train_normal, train_anomalous]))
    return Bunch(
        X_train=_safe_indexing(X, train_indices),
        X_test=_safe_indexing(X, test_indices),
        y_train=y[train_indices],
        y_test=y[test_indices],
        train_indices=train_indices,
        test_indices=test_indices,
    )


def _binary_target(y):
    y = column_or_1d(y, warn=True)
    values = np.unique(y)
    if not np.isin(values, [0, 1]).all():
        raise ValueError(
            "y must be 1 for anomalous and 0 for normal samples; got the values "
            f"{values.tolist()}. Labels in scikit-learn's outlier convention "
            "(-1 outlier, +1 inlier) convert with y = (y == -1).astype(int)."
        )
    return y.astype(np.int64)


def _sides(split, n_samples):
    """Boolean masks of the samples eligible for training and for testing."""
    if split is None:
        everywhere = np.ones(n_samples, dtype=bool)
        return everywhere, everywhere
    split = np.asarray(split, dtype=object)
    if split.ndim != 1 or len(split) != n_samples:
        raise ValueError(
            f"split must hold one entry per sample ({n_samples}); got shape "
            f"{split.shape}."
        )
    unexpected = sorted(set(split.tolist()) - {"train", "test"}, key=str)
    if unexpected:
        raise ValueError(
            f'split must hold only "train" and "test"; got {unexpected}. Load the '
            'dataset with split="all" and pass its split.'
        )
    return split == "train", split == "test"


def _test_count(test_size, normal, anomalous, split):
    """Number of normal (and of anomalous) test samples, checked against the pools."""
    n_normal, n_anomalous = int(normal.sum()), int(anomalous.sum())
    side = 'on the "test" side of split' if split is not None else "in y"
    if n_normal == 0 or n_anomalous == 0:
        hint = (  # loaded with split="train", the test side is empty
            ' Load the dataset with split="all" so that split holds its test images.'
            if split is not None and n_normal + n_anomalous == 0
            else ""
        )
        raise ValueError(
            f"A balanced test set needs normal and anomalous samples {side}; "
            f"found {n_normal} normal and {n_anomalous} anomalous.{hint}"
        )
    given = "test_size={}"
    if test_size is None:
        if split is not None:
            return min(n_normal, n_anomalous)
        test_size, given = _DEFAULT_TEST_SHARE, "test_size={} (the default)"
    if isinstance(test_size, Integral):
        n_test = int(test_size)
    else:
        # Exactly: 0.28 * 25 is 7.000000000000001 in floats, which rounded up
        # to 8.
        n_test = math.ceil(_exact(test_size) * n_normal)
    if n_test > n_normal or n_test > n_anomalous:
        raise ValueError(
            f"{given.format(test_size)} asks for {n_test} normal and {n_test} "
            f"anomalous test samples, but there are {n_normal} normal and "
            f"{n_anomalous} anomalous samples {side}. Use test_size <= "
            f"{min(n_normal, n_anomalous)}."
        )
    return n_test


def _train_counts(
    noise,
    train_size,
    *,
    n_normal_pool,
    n_anomalous_pool,
    n_anomalous_total,
    n_test,
    overlap,
):
    """Numbers of normal and anomalous training samples, checked against the pools."""
    exact = _exact(noise)
    if train_size is None:
        n_normal = n_normal_pool
        n_anomalous = _round_half_up(exact * n_normal / (1 - exact))
        largest_noise = Fraction(n_anomalous_pool, max(n_normal + n_anomalous_pool, 1))
        smallest_noise = Fraction(1, 2) / (n_normal + Fraction(1, 2))  # one anomaly
    else:
        n_anomalous = _round_half_up(exact * train_size)
        n_normal = train_size - n_anomalous
        largest_noise = Fraction(n_anomalous_pool, train_size)
        smallest_noise = Fraction(1, 2) / train_size

    if n_normal < 1:
        raise ValueError(
            f"No normal sample is left for training (noise={noise}, "
            f"train_size={train_size}, {n_normal_pool} normal samples available "
            "outside the test set). Use a smaller test_size or noise, or a larger "
            "train_size."
        )
    if n_normal > n_normal_pool:
        raise ValueError(
            f"train_size={train_size} with noise={noise} needs {n_normal} normal "
            f"training samples, but only {n_normal_pool} normal samples are "
            "available for training (outside the test set and, with split, on its "
            '"train" side). Use a smaller train_size or test_size.'
        )
    if n_anomalous > n_anomalous_pool:
        # A training set larger than both pools together fits no noise.
        fits_some_noise = (
            train_size is None or train_size <= n_normal_pool + n_anomalous_pool
        )
        remedies = []
        if fits_some_noise:
            remedies.append("a smaller noise" if n_anomalous_pool else "noise=0")
        # This noise on a smaller training set, where one exists: it must
        # keep an anomaly and a normal sample, within the normal pool.
        size = _largest_train_size(noise, n_anomalous_pool)
        kept = _round_half_up(_exact(noise) * size)
        if kept >= 1 and 1 <= size - kept <= n_normal_pool:
            remedies.append(f"train_size={size} (the largest at this noise)")
        if overlap:
            source = f"{n_anomalous_total} in all, all eligible as overlap=True"
        else:
            source = (
                f"{n_anomalous_total} in all, {n_test} of them reserved for the "
                "balanced test set"
            )
            remedies += [
                "a smaller test_size",
                "overlap=True (training anomalies drawn from the test set too)",
            ]
        remedies = remedies or ["a smaller train_size"]
        if fits_some_noise:
            # Rounded down: the bound must pass when given back as written
            # (to 4 significant digits below 0.0001, which 4 decimals call 0).
            written = Fraction(math.floor(largest_noise * 10_000), 10_000)
            text = (f"{float(written):.4f}" if written or not largest_noise
                    else _rounded(largest_noise, up=False))
            reach = f"The largest achievable noise is {text}."
        else:
            reach = (
                f"No noise fits train_size={train_size}: it is more than the "
                f"{n_normal_pool} normal and {n_anomalous_pool} anomalous samples "
                "available for training together."
            )
        raise ValueError(
            f"noise={noise} needs {n_anomalous} anomalous training samples next to "
            f"{n_normal} normal ones, but only {n_anomalous_pool} anomalies are "
            f"available for training ({source}). {reach} Use "
            f"{'; or '.join(remedies)}."
        )
    if noise > 0 and n_anomalous == 0:
        if n_anomalous_pool == 0:  # a larger noise would fail as well
            where = "" if overlap else ", or a smaller test_size or overlap=True"
            raise ValueError(
                f"noise={noise} rounds to no anomalous sample in a training set "
                f"of {n_normal}, and no anomaly is available for training "
                f"({n_anomalous_total} in all). Use noise=0{where}."
            )
        larger = "a larger train_size" if train_size else "more normal samples"
        # A training set of 1 holds no anomaly beside a normal sample.
        smallest = (
            "" if train_size == 1
            else f", a noise of at least {_rounded(smallest_noise)}"
        )
        raise ValueError(
            f"noise={noise} rounds to no anomalous sample in a training set of "
            f"{n_normal}: it would be clean. Use noise=0{smallest}, or {larger}."
        )
    return n_normal, n_anomalous


def _rounded(value, digits=4, *, up=True):
    """The exact fraction ``value`` written with ``digits`` significant
    digits, rounded up (or down): a bound the caller can pass back as
    written."""
    exponent = math.floor(math.log10(value))
    if Fraction(10) ** exponent > value:  # log10 of a float, off at a power of ten
        exponent -= 1
    step = Fraction(10) ** (exponent - digits + 1)
    steps = math.ceil(value / step) if up else math.floor(value / step)
    return f"{float(steps * step):.{digits}g}"


def _largest_train_size(noise, n_anomalous):
    """Largest training set whose rounded anomaly count stays within n_anomalous."""
    exact = _exact(noise)
    train_size = math.floor((n_anomalous + Fraction(1, 2)) / exact)
    while _round_half_up(exact * train_size) > n_anomalous:
        train_size -= 1
    return train_size


def _round_half_up(value):
    return math.floor(value + Fraction(1, 2))


def _exact(noise):
    """``noise`` as the decimal it was written as (0.2 as 1/5), so that the
    counts round the halves it gives up: in floats, 0.2 * 86 / 0.8 is
    21.499999999999996 and rounded down."""
    return Fraction(str(float(noise)))


def _draw(rng, mask, n):
    """Draw n of the positions where mask is True, without replacement.

    A permutation of the whole pool consumes the same random numbers whatever
    n is, which makes draws of different sizes nested.
    """
    return rng.permutation(np.flatnonzero(mask))[:n].astype(np.int64)
