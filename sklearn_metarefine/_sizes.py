"""Sizes in a refinement: the parameters that are counts or fractions of the
training set, the fewest samples a run keeps and fits, and the warning when
its held-out scores would come from a handful of them."""

import math
from fractions import Fraction
from numbers import Integral

from ._samples import MIN_FENCE_SAMPLES
from ._utils import warn


def as_count(value, n_samples):
    """An int parameter as it is, a fraction of ``n_samples`` rounded up."""
    if isinstance(value, Integral):
        return value
    return _fraction_of(value, n_samples)


def _fraction_of(fraction, n_samples):
    """``fraction`` of ``n_samples``, rounded up: the fraction as written
    (its shortest decimal), since 0.07 * 100 is 7.000000000000001 in floats."""
    return math.ceil(Fraction(repr(float(fraction))) * n_samples)


def resolve_start_neighbors(start_neighbors, n_samples):
    """The neighbour of ``start="neighbors"``, as a count below ``n_samples``."""
    return min(max(as_count(start_neighbors, n_samples), 1), n_samples - 1)


def resolve_min_samples(min_samples, n_samples):
    """Fewest samples the kept set may hold, as a count."""
    return max(as_count(min_samples, n_samples), MIN_FENCE_SAMPLES)


def checked_min_samples(min_samples, n_samples, start):
    """:func:`resolve_min_samples`, warning when ``min_samples`` (a count, or a
    fraction such as 1.0) leaves a full start nothing to remove. (A trimmed
    start still leaves out what its first round does not re-admit.)"""
    if start == "full" and as_count(min_samples, n_samples) >= n_samples:
        warn(
            f"min_samples={min_samples} is not below the {n_samples} training "
            "samples: no refinement round can remove one, and the detector is "
            "fitted on them all. Set a smaller count or fraction of the training "
            "set (such as 0.5)."
        )
    return resolve_min_samples(min_samples, n_samples)


def core_size(start_fraction, n_samples):
    """Samples in a trimmed core: ``start_fraction`` of them, at least 4."""
    return max(_fraction_of(start_fraction, n_samples), MIN_FENCE_SAMPLES)


def smallest_kept(n_samples, *, start, start_fraction, min_samples):
    """Fewest samples an :class:`IQRRefiner` run keeps: ``min_samples``, or,
    with a trimmed start, the core if smaller."""
    smallest = resolve_min_samples(min_samples, n_samples)
    if start != "full":
        smallest = min(smallest, core_size(start_fraction, n_samples))
    return min(smallest, n_samples)


def uses_held_out_scores(fence_scores, contamination):
    """Whether a run fits models on folds: for the fence or the boundary."""
    return fence_scores == "oof" or contamination == "auto"


def smallest_fit(
    n_samples, *, start, start_fraction, min_samples, cv, fence_scores, contamination
):
    """Fewest training samples any fit of an :class:`IQRRefiner` run sees.

    Held-out scores fit each fold's model on the kept set less its largest
    fold (leave-one-out below ``cv`` samples).
    """
    smallest = smallest_kept(
        n_samples, start=start, start_fraction=start_fraction, min_samples=min_samples
    )
    if not uses_held_out_scores(fence_scores, contamination):
        return smallest
    return held_out_fit_size(smallest, cv)


def held_out_fit_size(n_samples, cv):
    """Fewest samples a fold's fit of :func:`held_out` sees: all but the
    largest of ``min(cv, n_samples)`` folds."""
    return n_samples - math.ceil(n_samples / max(1, min(cv, n_samples)))


class FewHeldOutWarning(UserWarning):
    """Held-out scores may come from fits on a handful of training samples."""


def warn_if_held_out_from_few(
    refiner, n_samples, *, name="IQRRefiner", unit="samples"
):
    """Warn when held-out scores may come from leave-one-out fits on a
    handful of samples: the fence and the decision boundary set on them are
    then unreliable (on small clean sets they flagged most new samples or
    none). ``name`` and ``unit`` say whose fit it is and what it trains on."""
    if not uses_held_out_scores(refiner.fence_scores, refiner.contamination):
        return
    params = {
        "start": refiner.start,
        "start_fraction": refiner.start_fraction,
        "min_samples": refiner.min_samples,
    }
    smallest = smallest_kept(n_samples, **params)
    if smallest >= refiner.cv:
        return
    # The fewest training samples that keep cv or more (an int min_samples
    # below cv may never): smallest_kept never falls as n grows.
    low, high, enough = n_samples + 1, 100 * n_samples + 1000, None
    if smallest_kept(high, **params) >= refiner.cv:
        while low < high:
            middle = (low + high) // 2
            if smallest_kept(middle, **params) >= refiner.cv:
                high = middle
            else:
                low = middle + 1
        enough = low
    more = (
        f"at least {enough} {unit}"
        if enough
        else f"more {unit} (and min_samples >= {refiner.cv})"
    )
    on_folds = [
        *(["the fence"] if refiner.fence_scores == "oof" else []),
        *(["the decision boundary"] if refiner.contamination == "auto" else []),
    ]
    unreliable = " and ".join(on_folds) + (" set on them are" if len(on_folds) > 1
                                           else " set on them is")
    if refiner.contamination == "auto":
        # In words for either caller. Not a float contamination: it sets the
        # boundary on the training samples' own scores, which a detector that
        # fits them well (the flows) puts below those of new normal samples.
        more += (
            ", or judge by a threshold of your own, set on the scores of normal "
            "samples kept out of training (metarefine score --threshold on the "
            "command line)"
        )
        if refiner.fence_scores == "oof":
            more += ", and expect a rough fence"
    warn(
        f"{name}: the kept set may hold as few as {smallest} of the "
        f"{n_samples} training {unit}, fewer than cv={refiner.cv}: its held-out "
        f"scores then come from fits on {smallest - 1} {unit}, and {unreliable} "
        f"unreliable. Train on {more}.",
        FewHeldOutWarning,
    )
