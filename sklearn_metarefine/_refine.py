"""Iterative IQR refinement of a contaminated training set."""

from numbers import Integral, Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    MetaEstimatorMixin,
    OutlierMixin,
    _fit_context,
    clone,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, RealNotInt, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from ._rounds import (
    MIN_FENCE_SAMPLES,
    out_of_fold_anomaly_scores,
    refit,
    resolve_min_samples,
    round_summary,
    stop_reason,
    trimmed_core,
    uses_warm_refits,
)
from ._scores import anomaly_score, clean_tail_fraction, iqr_fence
from ._utils import draw_seed

def _default_estimator():
    # Imported on use: refining any other detector needs no torch.
    from ._flows import MAMLFlowDetector

    return MAMLFlowDetector()


def _final_estimator_has(attr):
    """Whether the final estimator, or the one that will be fitted, has ``attr``."""

    def check(self):
        if hasattr(self, "estimator_"):
            return hasattr(self.estimator_, attr)
        if self.estimator is None:
            return hasattr(_default_estimator(), attr)
        return hasattr(self.estimator, attr)

    return check


class IQRRefiner(MetaEstimatorMixin, OutlierMixin, BaseEstimator):
    """Outlier detector refitted on its own inliers until the IQR fence settles.

    Trains any outlier detector on a training set that may itself contain
    anomalies. Each round fits the detector on the samples kept so far, scores
    them, computes Tukey's upper fence ``T = Q3 + k * IQR`` of their anomaly
    scores and drops the kept samples scoring above ``T``. Rounds stop when one
    removes nothing, after ``max_iter`` rounds, or when a removal would leave
    fewer than ``min_samples`` samples. The final detector is fitted on the
    kept samples, and by default ``T`` is its decision boundary.

    Parameters
    ----------
    estimator : estimator object, default=None
        The outlier detector to refine: it implements ``fit`` and either
        ``score_samples`` (scikit-learn detectors and density estimators,
        higher meaning more normal) or ``decision_function`` (PyOD detectors,
        higher meaning more abnormal; other estimators, higher meaning more
        normal). ``None`` means
        :class:`~sklearn_metarefine.MAMLFlowDetector` with its defaults.

    k : float, default=1.5
        IQR multiplier of the fence; 1.5 is Tukey's fence, 3.0 his "far out"
        fence. Smaller values remove more samples per round.

    max_iter : int or None, default=10
        Maximum number of refinement rounds. ``max_iter=1`` is one-shot
        removal followed by a refit on the kept samples; ``None`` iterates
        until a round removes nothing or ``min_samples`` stops it.

    min_samples : int or float, default=0.5
        Fewest training samples to keep. An int is a count, a float in
        (0, 1] a fraction of the training set (rounded up). A round whose
        removal would go below it is not applied: refinement stops and keeps
        the samples of the round before. The kept set never falls below 4
        samples either. With a trimmed start the core may be smaller;
        a round that would shrink the kept set below both ``min_samples``
        and its current size is not applied.

    contamination : "auto" or float, default="auto"
        Sets ``offset_``, the decision boundary of :meth:`predict`. With
        ``"auto"`` the boundary is the fence of the final model's scores on
        the kept samples, so that ``predict`` flags what another round would
        remove. A float in (0, 0.5] is the fraction of the training set passed
        to :meth:`fit` to flag as outliers: ``offset_`` is that percentile of
        :meth:`score_samples` over the full training set.

    refit : {"auto", "warm", "cold"}, default="auto"
        How later rounds fit the detector. ``"cold"`` fits a fresh clone on the
        kept samples. ``"warm"`` sets ``warm_start=True`` on the previous
        round's model and calls ``fit`` again, continuing from its current
        solution (for the flows: a few more epochs from the current
        parameters). This only makes sense when ``warm_start`` means continuing
        training; for ensembles such as
        :class:`~sklearn.ensemble.IsolationForest` it means adding members.
        ``"auto"`` refits warm the estimators whose class declares this
        meaning with the class attribute ``_warm_start_continues = True``, and
        cold all others. The first round always fits a fresh clone, and the
        fold models of ``fence_scores="oof"`` are always fresh clones.

    fence_scores : {"in_sample", "oof"}, default="in_sample"
        Which anomaly scores of the kept samples the fence is computed on.
        ``"in_sample"`` scores them with the model fitted on them, as in the
        paper. ``"oof"`` scores each sample with a clone fitted on the other
        ``cv - 1`` folds of the kept samples, which does not reward a model
        for memorising its training samples (see Notes); it costs ``cv``
        extra fits per round.

    cv : int, default=5
        Number of folds for ``fence_scores="oof"`` (shuffled
        :class:`~sklearn.model_selection.KFold`; leave-one-out when fewer
        samples are kept than folds). Ignored otherwise.

    start : {"full", "trimmed", "neighbors"}, default="full"
        Where refinement starts. ``"full"`` fits the whole training set first
        and only ever removes samples, as in the paper. The two trimmed starts
        first find a trimmed core of ``start_fraction`` of the training set by
        concentration steps (as in FAST-MCD): fit on the current core, keep the
        training samples with the lowest anomaly scores, refit on them, and
        repeat until that set stops changing. ``"trimmed"`` takes its first
        core from a fit on the whole training set; ``"neighbors"`` takes the
        samples closest to their ``start_neighbors``-th nearest neighbour
        (:func:`neighbour_distances`). Each round then fences every training
        sample, so samples left out of the core whose score is inside the
        fence are re-admitted. See Notes for when to use which.

    start_fraction : float in (0, 1), default=0.5
        Fraction of the training set in the trimmed core (rounded up, at least
        4 samples); it should be below the expected fraction of normal
        samples. Ignored with ``start="full"``.

    start_neighbors : int or float, default=0.1
        Which neighbour's distance ranks the samples for the first core of
        ``start="neighbors"``: an int is a count, a float in (0, 1) a fraction
        of the training set (rounded up); either is at least 1 and at most
        ``n_samples - 1``. It should exceed the size of the largest group of
        near-identical anomalies. Ignored otherwise.

    verbose : int, default=0
        When positive, print one line per round: the fence, how many samples
        it removed (and, with a trimmed start, re-admitted) and how many are
        kept.

    random_state : int, RandomState instance or None, default=None
        Seeds the detector: when not None, the detector's ``random_state``
        parameter (if it has one) is set to it if it is an int (so the first
        round fits the same detector as ``estimator.set_params(random_state=
        random_state)`` alone), or to an int drawn from it if it is a
        ``RandomState``; the same in every round and for every fold. Also
        shuffles the folds of ``fence_scores="oof"``. ``None`` leaves the detector's own
        ``random_state`` as given. Pass an int for reproducible output across
        multiple function calls. See :term:`Glossary <random_state>`.

    Attributes
    ----------
    estimator_ : estimator object
        The detector fitted on the kept samples ``X[inlier_mask_]``.

    inlier_mask_ : ndarray of shape (n_samples,), dtype bool
        True for the training samples kept by the refinement.

    removed_at_iter_ : ndarray of shape (n_samples,), dtype int
        The round (counted from 1) in which each training sample was removed,
        -1 for kept samples. With a trimmed start, 0 for samples outside
        the trimmed core that no round re-admitted, and the last removal for
        samples re-admitted and removed again.

    thresholds_ : ndarray of shape (n_iter_,), dtype float64
        The fence ``T`` of each round, on the scale of the anomaly scores
        (minus :meth:`score_samples`): round ``r`` removes the samples kept
        before it whose fence score exceeds ``thresholds_[r - 1]``, unless
        ``min_samples`` stops it.

    n_iter_ : int
        Number of rounds run (each round fits the detector once).

    termination_condition_ : {"no_change", "max_iter", "min_samples"}
        Why refinement stopped: the last round removed nothing; ``max_iter``
        rounds ran (the detector was then fitted once more on the kept
        samples); or the last round's removal would have left fewer than
        ``min_samples`` samples, and was not applied.

    offset_ : float
        Offset between :meth:`score_samples` and :meth:`decision_function`;
        see ``contamination``.

    n_features_in_ : int
        Number of features seen during :term:`fit`.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :term:`fit`. Defined only when `X`
        has feature names that are all strings.

    See Also
    --------
    iqr_fence : The fence computed in each round.
    neighbour_distances : The ranking of the first core of ``start="neighbors"``.
    sklearn.semi_supervised.SelfTrainingClassifier : Iterative refitting on a
        growing, rather than shrinking, training set.

    Notes
    -----
    The refinement is the iterative procedure of Aqeel et al. [1]_ (their
    eq. 5), there applied to normalizing flows trained with meta-learning;
    the fence is Tukey's [2]_. Their one-shot removal baseline (OSR) is
    ``max_iter=1``, their iterative refinement (IRP) the default.

    To count how many good and bad training samples were removed (the paper's
    Table 2), compare ``~inlier_mask_`` with the ground-truth contamination
    mask; ``removed_at_iter_`` splits the counts by round.

    A sample is outside the fence when its score is strictly greater than
    ``T``. When the scores of more than a quarter of the kept samples tie at
    the third quartile, the IQR is zero and ``T`` is that tied score: only
    samples scoring above it are removed, and when all scores are equal a
    round removes nothing.

    Every model is fitted on rows of ``X``, so ``X`` is validated as a dense,
    finite 2-D array with at least 4 samples, the fewest whose quartiles are
    not interpolated between the same pair of scores; fewer raise a
    ``ValueError``. When fitting the detector fails in a round after the
    first, on the reduced kept set or on a fold of it, a ``RuntimeError``
    names the round and the number of samples; the detector's own exception
    is its ``__cause__``. Falling back to the previous round's model instead
    would leave ``estimator_`` inconsistent with ``inlier_mask_``.

    A detector that memorises its training samples gives planted anomalies
    in-sample scores as normal as anyone's, so the in-sample fence removes
    nothing. ``fence_scores="oof"`` scores each kept sample with a model that
    has not seen it. Warm-started models cannot provide such scores, since
    they descend from a model fitted on every kept sample.

    The fence cannot remove anomalies that make up a large share of the
    training set: once they are a quarter of it or more, the third quartile
    lies among them and the fence above it. ``start="trimmed"`` breaks this barrier: its core holds mostly normal
    samples whenever ``start_fraction`` is below their share, so the
    anomalies score far outside the core's fence. The price is on clean data:
    with ``fence_scores="in_sample"`` a detector that fits its core closely
    fences out most samples left outside it, so the kept set stays near the
    core (about ``1 - start_fraction`` of a clean training set is dropped),
    and the detector sees fewer samples. ``fence_scores="oof"`` re-admits
    those normal samples but also lets more anomalies back in. Trimmed
    starts should refit cold (``refit="cold"``): warm refits of a few epochs
    barely move the model away from its fit to the contaminated full set, and
    the core then reproduces the full start.

    ``start="neighbors"`` is for flexible density models such as the flows.
    They give a tight group of similar anomalies (one kind of defect, or a
    neat digit among scrawled ones) a density as high as the normal samples',
    so concentration steps from a fit on everything keep such groups in the
    core, and an in-sample fence never removes them again. A sample's distance
    to its ``start_neighbors``-th neighbour is small only where that many
    samples are close, so a group of fewer similar anomalies ranks outside
    the first core, and the concentration steps start from normal samples.
    It costs one nearest-neighbour search over the training set and no extra
    fit.

    References
    ----------
    .. [1] M. Aqeel, S. Sharifi, M. Cristani and F. Setti, "Meta
       Learning-Driven Iterative Refinement for Robust Anomaly Detection in
       Industrial Inspection", ECCV 2024 Workshops.

    .. [2] J. W. Tukey, "Exploratory Data Analysis", Addison-Wesley, 1977.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.covariance import EllipticEnvelope
    >>> from sklearn_metarefine import IQRRefiner
    >>> rng = np.random.RandomState(0)
    >>> X = np.vstack([rng.normal(size=(95, 2)), rng.normal(8, 1, size=(5, 2))])
    >>> refiner = IQRRefiner(EllipticEnvelope(), random_state=0).fit(X)
    >>> refiner.termination_condition_
    'no_change'
    >>> int((~refiner.inlier_mask_[95:]).sum())
    5
    >>> refiner.predict([[0.0, 0.0], [8.0, 8.0]])
    array([ 1, -1])
    """

    _parameter_constraints: dict = {
        "estimator": [
            HasMethods(["fit", "score_samples"]),
            HasMethods(["fit", "decision_function"]),
            None,
        ],
        "k": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left"), None],
        "min_samples": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="right"),
        ],
        "contamination": [
            StrOptions({"auto"}),
            Interval(Real, 0, 0.5, closed="right"),
        ],
        "false_alarm_rate": [Interval(Real, 0, 0.5, closed="right")],
        "stop": [StrOptions({"clean_tail", "no_change"})],
        "refit": [StrOptions({"auto", "warm", "cold"})],
        "fence_scores": [StrOptions({"in_sample", "oof"})],
        "start": [StrOptions({"full", "trimmed", "neighbors"})],
        "start_fraction": [Interval(RealNotInt, 0, 1, closed="neither")],
        "start_neighbors": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="neither"),
        ],
        "cv": [Interval(Integral, 2, None, closed="left")],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator=None,
        *,
        k=1.5,
        max_iter=10,
        min_samples=0.5,
        contamination="auto",
        false_alarm_rate=0.05,
        stop="clean_tail",
        refit="auto",
        fence_scores="oof",
        cv=5,
        start="full",
        start_fraction=0.5,
        start_neighbors=0.1,
        verbose=0,
        random_state=None,
    ):
        self.estimator = estimator
        self.k = k
        self.max_iter = max_iter
        self.min_samples = min_samples
        self.contamination = contamination
        self.false_alarm_rate = false_alarm_rate
        self.stop = stop
        self.refit = refit
        self.fence_scores = fence_scores
        self.cv = cv
        self.start = start
        self.start_fraction = start_fraction
        self.start_neighbors = start_neighbors
        self.verbose = verbose
        self.random_state = random_state

    @_fit_context(
        # the wrapped estimator's parameters are validated when it is fitted
        prefer_skip_nested_validation=False
    )
    def fit(self, X, y=None):
        """Refine the training set and fit the detector on the kept samples.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training samples, possibly contaminated with anomalies.

        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        X = validate_data(self, X)
        if X.shape[0] < MIN_FENCE_SAMPLES:
            raise ValueError(
                f"IQRRefiner needs at least {MIN_FENCE_SAMPLES} samples to "
                f"compute quartiles, got n_samples={X.shape[0]}."
            )
        min_kept = resolve_min_samples(self.min_samples, X.shape[0])
        base, fold_seed = self._seeded_estimator()
        warm = uses_warm_refits(base, self.refit)

        estimator, kept = self._start(base, X, warm)
        removed_at_iter = np.where(kept, -1, 0).astype(np.intp)
        thresholds = []
        while True:
            n_rounds = len(thresholds)
            if estimator is None or n_rounds > 0:
                estimator = refit(base, estimator, X[kept], warm, after_round=n_rounds)
            scores = self._fence_scores(estimator, base, X[kept], fold_seed, n_rounds)
            fence = iqr_fence(scores, self.k)
            if self.max_iter is not None and n_rounds == self.max_iter:
                # The model is now fitted on the samples the last round kept.
                termination = "max_iter"
                break
            thresholds.append(fence)
            candidate = self._candidates(estimator, X, kept, scores, fence, n_rounds)
            clean_tail = self._clean_tail(scores, n_rounds)
            termination = stop_reason(candidate, kept, min_kept, clean_tail)
            if self.verbose:
                print(round_summary(len(thresholds), fence, kept, candidate,
                                    termination, min_kept, clean_tail))
            if termination is not None:
                break
            removed_at_iter[kept & ~candidate] = len(thresholds)
            removed_at_iter[candidate] = -1
            kept = candidate

        self.estimator_ = estimator
        self.inlier_mask_ = kept
        self.removed_at_iter_ = removed_at_iter
        self.thresholds_ = np.asarray(thresholds, dtype=np.float64)
        self.n_iter_ = len(thresholds)
        self.termination_condition_ = termination
        self.offset_ = self._offset(estimator, base, X, kept, scores, fold_seed)
        return self

    def _start(self, base, X, warm):
        """The first model (None when round 1 fits it) and the first kept set."""
        if self.start == "full":
            return None, np.ones(X.shape[0], dtype=bool)
        return trimmed_core(
            base,
            X,
            warm,
            start=self.start,
            start_fraction=self.start_fraction,
            start_neighbors=self.start_neighbors,
        )

    def _candidates(self, estimator, X, kept, scores, fence, n_rounds):
        """The samples inside the fence: the kept set the round proposes."""
        candidate = kept.copy()
        candidate[kept] = scores <= fence
        if self.start != "full" and n_rounds == 0:
            # The first round re-admits the samples left out of the trimmed
            # core that the core's model puts inside the fence, as FAST-MCD's
            # reweighting step does; their scores are held out by nature.
            # Later rounds only remove: a model that has re-admitted a few
            # anomalies would let in more of their kind (see Notes).
            outside = ~kept
            candidate[outside] = anomaly_score(estimator, X[outside]) <= fence
        return candidate

    def _clean_tail(self, scores, n_rounds):
        """How many kept samples a clean set has outside the fence, or None.

        None under the paper's rule, and in the first round: a first round
        that removes few samples may be the first of anomalies the model
        masked, which later rounds unmask.
        """
        if self.stop == "no_change" or n_rounds == 0:
            return None
        return clean_tail_fraction(scores, self.k) * scores.size

    def _offset(self, estimator, base, X, kept, scores, fold_seed):
        """``offset_``: see ``contamination``."""
        if self.contamination != "auto":
            training = -anomaly_score(estimator, X)
            return float(np.percentile(training, 100.0 * self.contamination))
        if self.fence_scores == "oof":
            # The last fence scores are held-out scores of the kept samples.
            held_out = scores
        else:
            held_out = out_of_fold_anomaly_scores(
                base, X[kept], self.cv, fold_seed, n_iter=self.n_iter_
            )
        return -float(np.quantile(held_out, 1.0 - self.false_alarm_rate))

    def _seeded_estimator(self):
        """The estimator each round clones, and the seed of the folds."""
        estimator = clone(
            _default_estimator() if self.estimator is None else self.estimator
        )
        random_state = check_random_state(self.random_state)
        has_random_state = "random_state" in estimator.get_params(deep=False)
        if self.random_state is not None and has_random_state:
            # An int goes down as it is, so that the first round fits exactly
            # the detector a user would fit alone with that seed: refined and
            # bare detectors then differ only by the refinement.
            if isinstance(self.random_state, Integral):
                seed = int(self.random_state)
            else:
                seed = draw_seed(random_state)
            estimator.set_params(random_state=seed)
        return estimator, draw_seed(random_state)

    def _fence_scores(self, estimator, base, X_kept, fold_seed, n_iter):
        """Anomaly scores of the kept samples that round ``n_iter`` fences."""
        if self.fence_scores == "in_sample":
            return anomaly_score(estimator, X_kept)
        return out_of_fold_anomaly_scores(
            base, X_kept, self.cv, fold_seed, n_iter=n_iter
        )

    def score_samples(self, X):
        """Normality score of each sample, minus the anomaly score.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples to score.

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
            The final detector's score, in scikit-learn's sign convention:
            the lower, the more abnormal (for a PyOD detector, minus its
            ``decision_function``).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return -anomaly_score(self.estimator_, X)

    def decision_function(self, X):
        """Score of each sample relative to the decision boundary.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples to score.

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
            ``score_samples(X) - offset_``: negative for outliers, positive
            for inliers. With ``contamination="auto"`` this is the fence
            minus the anomaly score.
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Predict whether each sample is an inlier (+1) or an outlier (-1).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples to classify.

        Returns
        -------
        is_inlier : ndarray of shape (n_samples,), dtype int
            -1 where :meth:`decision_function` is negative, +1 elsewhere.
        """
        decision = self.decision_function(X)
        return np.where(decision < 0, -1, 1)

    @available_if(_final_estimator_has("score"))
    def score(self, X, y=None):
        """The final detector's own ``score`` on ``X``.

        Available when the detector has a ``score`` method, e.g. the mean
        log-likelihood of a density estimator such as
        :class:`~sklearn.neighbors.KernelDensity`. It ignores ``offset_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples to score.

        y : array-like of shape (n_samples,), default=None
            Passed to the detector's ``score``.

        Returns
        -------
        score : float
            ``estimator_.score(X, y)``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return self.estimator_.score(X, y)
