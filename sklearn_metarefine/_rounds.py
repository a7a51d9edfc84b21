"""The steps of a refinement: fitting a round's model, its first core, its stop.

Also the checks of the estimator it refines (``check_novelty``,
``final_estimator_has``). numpy and scikit-learn only, like :mod:`._refine`,
which strings them together.
"""

import math
from numbers import Integral

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import InvalidParameterError

from ._samples import distinct_rows, take, values
from ._sizes import core_size, resolve_start_neighbors
from ._utils import draw_seed
from ._scores import (
    anomaly_score,
    clean_tail_fraction,
    contamination_offset,
    iqr_fence,
    neighbour_distances,
    warn_if_batch_dependent,
    with_clean_tail,
)

# Concentration steps converge in a handful of steps in practice; the cap only
# bounds the cost when scores keep swapping samples at the edge of the core.
_MAX_CONCENTRATION_STEPS = 10

# The chance that a clean tail reaches as far out as a round that unmasks.
_UNMASKING_LEVEL = 0.01

# Removed samples scoring the boundary up to this share of the calibration
# scores' range tie with it (detectors whose saturated scores carry rounding).
_TIE_TOLERANCE = 1e-9


def lowest(scores, n):
    """Mask of the ``n`` lowest scores, ties broken by position."""
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(scores, kind="stable")[:n]] = True
    return mask


def final_estimator_has(attr, default_estimator):
    """Whether the final estimator, or the one that will be fitted, has ``attr``.

    ``default_estimator()`` builds the detector that ``estimator=None`` means.
    """

    def check(self):
        if hasattr(self, "estimator_"):
            return hasattr(self.estimator_, attr)
        if self.estimator is None:
            return hasattr(default_estimator(), attr)
        return hasattr(self.estimator, attr)

    return check


def check_novelty(estimator):
    """Refuse, naming the fix, a detector class in place of a detector, or a
    detector that scores only its training samples; warn of one whose scores
    depend on the batch (:func:`warn_if_batch_dependent`).

    ``LocalOutlierFactor(novelty=False)`` has no ``score_samples``: the
    refinement scores samples the detector was not fitted on (held-out folds,
    the removed samples, new data), which needs ``novelty=True``.
    """
    if isinstance(estimator, type):  # it has the methods, unbound
        raise InvalidParameterError(
            f"The 'estimator' parameter of IQRRefiner got the class "
            f"{estimator.__name__}, not a detector. Pass an instance: "
            f"{estimator.__name__}()."
        )
    warn_if_batch_dependent(estimator)
    get_params = getattr(estimator, "get_params", None)
    if get_params is None:
        return
    name = type(estimator).__name__
    if get_params(deep=False).get("novelty") is False:
        raise InvalidParameterError(
            f"The 'estimator' parameter of IQRRefiner got {name}(novelty=False), "
            f"which scores only the samples it was fitted on; the refinement "
            f"scores samples it did not see. Pass {name}(novelty=True)."
        )
    for key, value in get_params(deep=True).items():
        if key.endswith("__novelty") and value is False:
            raise InvalidParameterError(
                f"The 'estimator' parameter of IQRRefiner got a {name} whose "
                f"{key} is False: that part scores only the samples it was "
                f"fitted on, and the refinement scores samples it did not see. "
                f"Use set_params({key}=True)."
            )


def uses_warm_refits(estimator, refit):
    """Whether later rounds continue from the previous round's fit."""
    params = estimator.get_params(deep=False)
    has_warm_start = "warm_start" in params
    continues = getattr(estimator, "_warm_start_continues", False)
    if refit == "cold":
        return False
    if refit == "warm":
        name = type(estimator).__name__
        if not has_warm_start:
            raise ValueError(
                f"refit='warm' needs an estimator with a warm_start parameter; "
                f"{name} has none. Use refit='cold' or 'auto'."
            )
        if "n_estimators" in params and not continues:
            raise ValueError(
                f"refit='warm' cannot refit {name}: an ensemble's warm_start adds "
                "members up to n_estimators instead of refitting them, so the "
                "final model would keep members fitted on removed samples. Use "
                "refit='cold' or 'auto'."
            )
        return True
    # scikit-learn's warm_start means "continue from the current solution" for
    # iterative models but "add members" for ensembles such as IsolationForest,
    # where a warm refit on fewer samples would silently change nothing. Only
    # estimators that declare the first meaning are refitted warm by default.
    return has_warm_start and continues


def fit_warm(estimator, X):
    """Continue fitting an already fitted estimator on ``X``."""
    warm_start = estimator.get_params(deep=False)["warm_start"]
    estimator.set_params(warm_start=True).fit(X)
    return estimator.set_params(warm_start=warm_start)


def refit(base, previous, X, warm, *, after_round):
    """Fit the model of a round, naming the round if the estimator fails.

    ``previous`` is the model of the round before, or None in the first round,
    whose failures are the estimator's own and propagate unchanged.
    """
    if previous is None:
        return clone(base).fit(X)
    try:
        return fit_warm(previous, X) if warm else clone(base).fit(X)
    except Exception as exc:
        raise RuntimeError(
            f"Refitting {type(base).__name__} on the {X.shape[0]} samples kept "
            f"after round {after_round} failed: {exc}"
        ) from exc


def held_out(n_samples, cv, seed, fit_and_score, copy_of=None):
    """Each sample's score by a model fitted without it: ``cv`` shuffled folds
    (at most one per sample); ``fit_and_score(fold, train, test)`` fits on the
    indices ``train`` and returns the scores of the indices ``test``.

    ``copy_of`` (from :func:`distinct_rows`) keeps the copies of a sample in
    its fold: a model fitted on one copy would score the other in-sample.
    """
    if copy_of is None:
        copy_of = np.arange(n_samples)
    n_groups = int(copy_of.max()) + 1
    scores = np.empty(n_samples, dtype=np.float64)
    folds = KFold(n_splits=min(cv, n_groups), shuffle=True, random_state=seed)
    for fold, (_, test_groups) in enumerate(folds.split(np.empty(n_groups)), start=1):
        in_test = np.isin(copy_of, test_groups)
        test = np.flatnonzero(in_test)
        scores[test] = fit_and_score(fold, np.flatnonzero(~in_test), test)
    return scores


def out_of_fold_anomaly_scores(base, X, cv, seed, *, n_iter):
    """Anomaly score of each sample under a clone fitted without its fold."""
    copy_of = distinct_rows(X)[1]
    if not copy_of.any():  # copies of one sample: each a fold of its own
        copy_of = np.arange(X.shape[0])
    n_folds = min(cv, int(copy_of.max()) + 1)  # copies share a fold

    def fit_and_score(fold, train, test):
        try:
            model = clone(base).fit(take(X, train))
        except Exception as exc:
            raise RuntimeError(
                f"Fitting {type(base).__name__} on fold {fold} of {n_folds} "
                f"({train.size} of the {X.shape[0]} samples kept after round "
                f"{n_iter}) failed: {exc}"
            ) from exc
        return scores_of(model, take(X, test), f"of fold {fold} of {n_folds}")

    scores = held_out(X.shape[0], cv, seed, fit_and_score, copy_of)
    refuse_nan(scores, base, n_iter, "by models fitted without them")
    if not np.isfinite(scores).any():
        raise ValueError(
            f"{type(base).__name__}, fitted without each of {n_folds} "
            f"folds of the {X.shape[0]} samples kept after round {n_iter}, gives "
            f"every sample it did not see the anomaly score {scores[0]} (zero "
            "likelihood): held-out scores set no fence or boundary. Use a "
            "detector that scores new samples finitely (a wider kernel), or "
            "fence_scores='in_sample' with a float contamination."
        )
    return scores


def refuse_nan(scores, base, n_iter, scored_by):
    """Refuse fence scores with NaN, naming the detector and the round."""
    if n_nan := int(np.isnan(scores).sum()):
        raise ValueError(
            f"{type(base).__name__} gives NaN anomaly scores to {n_nan} of the "
            f"{scores.size} samples kept after round {n_iter} (scored {scored_by}): "
            "the fence is undefined. NaN scores usually mean the detector "
            "failed numerically on these samples (an overflow, a singular "
            "covariance)."
        )


def in_sample_anomaly_scores(estimator, base, X_kept, n_iter):
    """Anomaly scores of the kept samples by the model fitted on them."""
    scores = anomaly_score(estimator, X_kept)
    refuse_nan(scores, base, n_iter, "by the model fitted on them")
    return scores


def with_copies(base, estimator, X_kept, warm, n_iter):
    """A trimmed core's model (fitted on distinct rows) refitted on the kept
    rows, copies included, if they repeat: no round refitted it."""
    if distinct_rows(X_kept)[0].size == X_kept.shape[0]:
        return estimator
    return refit(base, estimator, X_kept, warm, after_round=n_iter)


def inside_fence(estimator, X, kept, scores, fence, readmit):
    """The kept set a round proposes: the samples inside the fence.

    ``scores`` are the fence scores of the kept samples. With ``readmit``
    (the first round of a trimmed start), the samples left out of the core
    are scored by the core's model, which did not see them, and those inside
    the fence come back, as in FAST-MCD's reweighting step.
    """
    candidate = kept.copy()
    candidate[kept] = scores <= fence
    outside = ~kept
    if readmit and outside.any():  # a core of at least 4 may hold every sample
        outside_scores = scores_of(estimator, take(X, outside), "outside the core")
        candidate[outside] = outside_scores <= fence
    return candidate


def trims_tail(candidate, kept, clean_tail):
    """Whether a round only removes, and no more than a clean set's tail.

    ``clean_tail`` is the expected number of clean samples outside the fence;
    the count of a clean set scatters around it like a Poisson count, so up
    to two standard deviations above it still count as the tail.
    """
    if clean_tail is None or np.any(candidate & ~kept):
        return False
    return np.sum(kept & ~candidate) <= clean_tail_bound(clean_tail)


def clean_tail_bound(clean_tail):
    """The most samples beyond the fence that still count as a clean tail:
    the expected count and two Poisson standard deviations."""
    return clean_tail + 2.0 * math.sqrt(clean_tail)


def unmasks(model, X_removed, scores, k):
    """Whether a tail-sized round removes anomalies that masked themselves.

    A detector fitted with a group of anomalies widens for them, and they may
    sit just beyond its fence, as few as a clean set's tail. ``model`` is
    refitted without the ``X_removed`` samples: it puts such anomalies far
    out, and a clean tail about where it was. Beyond the fence,
    :func:`~sklearn_metarefine.clean_tail_fraction` models a clean tail as
    exponential, halving every ``Q3 - median`` of the round's ``scores``; the
    round unmasks when ``model`` puts a removed sample further out than the
    largest of that many clean tail samples reaches with 1% probability.
    """
    finite = scores[np.isfinite(scores)]
    median, q3 = np.percentile(finite, [50, 75])
    n_tail = max(clean_tail_fraction(finite, k) * finite.size, 1.0)
    reach = (q3 - median) * math.log2(n_tail / _UNMASKING_LEVEL)
    removed = scores_of(
        model, X_removed, "a round removes (by the model refitted without them)"
    )
    return bool(np.any(removed > iqr_fence(scores, k) + reach))


def scores_of(model, X, which):
    """``anomaly_score(model, X)`` of a few training samples (``which`` says
    which), naming the step if the detector fails on them."""
    try:
        return anomaly_score(model, X)
    except Exception as exc:  # a bare IndexError of PyOD's COF, for one
        raise RuntimeError(
            f"Scoring with {type(model).__name__} the {X.shape[0]} samples "
            f"{which} failed: {exc}. (IQRRefiner scores a few "
            "samples at a time: a detector that scores each sample against the "
            "others of its batch, such as PyOD's COF or SOD, cannot be refined.)"
        ) from exc


def calibration_scores(removed, held_out, k):
    """Held-out anomaly scores of the training samples judged normal.

    ``held_out`` are the kept samples' scores by models that did not see them;
    ``removed`` are the removed samples' scores by the final model, fitted
    without them (with warm refits, last fitted without them), or None when
    none was removed. The removed
    ones inside the outer fence ``Q3 + 2k * IQR`` of ``held_out`` (Tukey's
    "far out" fence for ``k=1.5``) join them: the refinement keeps a
    conservative set, and normal samples it left out, in the tail or in a
    mode it does not cover, are normal samples the boundary must also let
    through. Beyond the outer fence, only the lowest removed scores join, as
    many as a clean set has there (:func:`with_clean_tail`).
    """
    if removed is None or not len(removed):
        return held_out[np.isfinite(held_out)]  # inf: above any quantile
    inside = removed <= iqr_fence(held_out, 2 * k)
    tail = clean_tail_fraction(held_out, 2 * k)
    return with_clean_tail(np.r_[held_out, removed[inside]], removed[~inside], tail)


def boundary(removed, held_out, k, false_alarm_rate):
    """The anomaly score above which ``predict`` flags a sample: the
    ``1 - false_alarm_rate`` quantile of :func:`calibration_scores`.

    A score at the boundary is inside it. When removed samples score the
    boundary (a detector whose scores saturate, such as IsolationForest
    on points beyond its training data, gives them all one score; OneClassSVM
    the same up to rounding), it moves just below them, so that predict flags
    what the refinement removed, and new samples like them. Up to rounding:
    within ``1e-9`` of the calibration scores' range (they are finite).
    """
    normal = calibration_scores(removed, held_out, k)
    value = float(np.quantile(normal, 1.0 - false_alarm_rate))
    if removed is not None:
        tolerance = _TIE_TOLERANCE * np.ptp(normal)
        ties = removed[np.abs(removed - value) <= tolerance]
        if ties.size:
            value = float(np.nextafter(min(value, ties.min()), -np.inf))
    return value


def decision_offset(refiner, estimator, base, X, kept, scores, fold_seed):
    """``offset_`` of an :class:`IQRRefiner` run: see its ``contamination``.

    ``estimator`` is the final model, ``kept`` the final kept set and
    ``scores`` the last fence's scores of it.
    """
    if refiner.contamination != "auto":
        training = -anomaly_score(estimator, X)
        return contamination_offset(training, refiner.contamination)
    held_out = (
        scores  # held out already
        if refiner.fence_scores == "oof"
        else out_of_fold_anomaly_scores(
            base, take(X, kept), refiner.cv, fold_seed, n_iter=refiner.n_iter_
        )
    )
    removed = (
        scores_of(estimator, take(X, ~kept), "the refinement removed")
        if (~kept).any()
        else None
    )
    if removed is not None:
        # Removed samples the final model gives no score are flagged alike.
        removed = np.where(np.isnan(removed), np.inf, removed)
    return -boundary(removed, held_out, refiner.k, refiner.false_alarm_rate)


def stop_reason(candidate, kept, min_kept, clean_tail=None, seen=()):
    """Why refinement stops before applying ``candidate``, or None to go on.

    ``seen`` holds ``mask.tobytes()`` of the kept sets of earlier rounds: a
    candidate among them would start the same rounds over, forever.

    ``clean_tail`` is the number of kept samples a clean kept set has outside
    the fence, or None where that rule does not apply: a round that only
    removes, and no more than that (:func:`trims_tail`), trims the tail of a
    clean set, and applying it would erode the training set round after round.
    """
    if np.array_equal(candidate, kept):
        return "no_change"
    if candidate.tobytes() in seen:
        return "cycle"
    # Before the clean tail, which a round that unmasks overrides: min_samples
    # is a limit no round crosses.
    if candidate.sum() < min(min_kept, kept.sum()):
        return "min_samples"
    if trims_tail(candidate, kept, clean_tail):
        return "clean_tail"
    return None


def round_summary(n_iter, fence, kept, candidate, termination, min_kept, clean_tail):
    """One line of verbose output for round ``n_iter``."""
    n_outside = int((kept & ~candidate).sum())
    n_readmitted = int((candidate & ~kept).sum())
    n_kept = int(kept.sum()) if termination else int(candidate.sum())
    if termination == "min_samples":
        outcome = (
            f"{n_outside} above it not removed, as that would keep "
            f"{n_kept - n_outside + n_readmitted} < min_samples={min_kept}; "
            f"kept {n_kept}"
        )
    elif termination == "cycle":
        outcome = (
            f"{n_outside} above it not removed, as that returns to the kept set "
            f"of an earlier round; kept {n_kept}"
        )
    elif termination == "clean_tail":
        bound = clean_tail_bound(clean_tail)  # as trims_tail applies it
        outcome = (
            f"{n_outside} above it not removed, within the {bound:.1f} a clean "
            f"set has there ({clean_tail:.1f} expected, + 2 s.d.); kept {n_kept}"
        )
    elif n_readmitted:
        outcome = f"removed {n_outside}, re-admitted {n_readmitted}, kept {n_kept}"
    else:
        outcome = f"removed {n_outside}, kept {n_kept}"
    return f"IQRRefiner round {n_iter}: fence T={fence:.6g}, {outcome}"


def trimmed_core(base, X, warm, *, start, start_fraction, start_neighbors):
    """Model and mask of the trimmed core that a trimmed start grows from.

    Concentration steps: fit on the core, keep the ``start_fraction`` of
    the training samples that score lowest, refit on them, until that set
    repeats. Each step cannot increase the sum of the kept samples' anomaly
    scores under a model that maximises their likelihood, as in FAST-MCD;
    where they end depends on the first core: the samples with the closest
    ``start_neighbors``-th neighbour (``start="neighbors"``), or all of them.

    Repeated samples take part once: copies of one image are the densest
    samples there are and score alike, and a core of copies of one image
    would fit a model of that image alone. The core holds distinct samples,
    ``start_fraction`` of those (their first occurrences); the kept set it
    returns holds their copies with them.
    """
    distinct, copy_of = distinct_rows(X)
    X = take(X, distinct)
    n_samples = X.shape[0]
    n_core = core_size(start_fraction, n_samples)
    if start == "neighbors":
        n_neighbors = resolve_start_neighbors(start_neighbors, n_samples)
        core = lowest(neighbour_distances(values(X), n_neighbors), n_core)
    else:
        core = np.ones(n_samples, dtype=bool)
    estimator = None
    for _ in range(_MAX_CONCENTRATION_STEPS):
        estimator = refit(base, estimator, take(X, core), warm, after_round=0)
        new_core = lowest(anomaly_score(estimator, X), n_core)
        if np.array_equal(new_core, core):
            break
        core = new_core
    else:
        estimator = refit(base, estimator, take(X, core), warm, after_round=0)
    return estimator, core[copy_of]


def seeded_clone(estimator, random_state):
    """A clone of ``estimator`` seeded from ``random_state``, and a seed for folds.

    An int goes down as it is, so that the first round fits exactly the
    detector a user would fit alone with that seed: refined and bare detectors
    then differ only by the refinement. A ``RandomState`` gives a drawn int;
    None leaves the detector's own ``random_state`` as given. Nested ones
    (``steps__random_state`` of a Pipeline) get the same seed.
    """
    estimator = clone(estimator)
    rng = check_random_state(random_state)
    seeded = [
        name
        for name in estimator.get_params(deep=True)
        if name == "random_state" or name.endswith("__random_state")
    ]
    if random_state is not None and seeded:
        seed = int(random_state) if isinstance(random_state, Integral) else draw_seed(rng)
        estimator.set_params(**dict.fromkeys(seeded, seed))
    return estimator, draw_seed(rng)
