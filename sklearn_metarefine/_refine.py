"""Iterative IQR refinement of a contaminated training set."""

import copy
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, OutlierMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, RealNotInt, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ._rounds import (
    check_novelty,
    decision_offset,
    final_estimator_has,
    in_sample_anomaly_scores,
    inside_fence,
    out_of_fold_anomaly_scores,
    refit,
    seeded_clone,
    round_summary,
    stop_reason,
    trimmed_core,
    unmasks,
    uses_warm_refits,
    with_copies,
)
from ._samples import check_fence_samples, checked_samples, samples_for, take, validated
from ._scores import anomaly_score, clean_tail_fraction, iqr_fence
from ._sizes import checked_min_samples, warn_if_held_out_from_few
from ._utils import check_nested_default, restored_on_failure

_START_PARAMS = ("start", "start_fraction", "start_neighbors")


def _default_estimator():
    # Imported on use: refining any other detector needs no torch.
    from ._flows import MAMLFlowDetector

    return MAMLFlowDetector()


class IQRRefiner(MetaEstimatorMixin, OutlierMixin, BaseEstimator):
    """Outlier detector refitted on its own inliers until the IQR fence settles.

    Trains any outlier detector on a training set that may itself contain
    anomalies. Each round fits the detector on the samples kept so far, scores
    them with models that did not see them (out of fold, by default),
    computes Tukey's upper fence ``T = Q3 + k * IQR`` of these anomaly scores
    and drops the kept samples scoring above ``T``. Rounds stop when one
    removes nothing or would return to an earlier round's kept
    set, when one only trims the tail that a clean set has beyond
    the fence, after ``max_iter`` rounds, or when a removal would leave fewer
    than ``min_samples`` samples. The final detector is fitted on the kept
    samples; its decision boundary lets a chosen share of normal samples it
    did not see fall outside (``false_alarm_rate``).

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
        until a round removes nothing, would return to the kept set of an
        earlier round, or ``min_samples`` stops it.

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
        ``"auto"``, :meth:`predict` flags a fraction ``false_alarm_rate`` of
        normal samples the model has not seen: ``offset_`` is that quantile
        of the held-out normality scores of the training samples judged
        normal: the kept samples (out of fold), the removed ones inside the
        outer fence ``Q3 + 2k * IQR`` of their scores and a clean tail beyond
        it (see Notes); when removed samples score exactly that quantile
        (tied scores), the boundary lies just below them, so that they are
        flagged. A float in (0, 0.5] is scikit-learn's meaning, the
        fraction of the training set passed to :meth:`fit` to flag as
        outliers: ``offset_`` is that percentile of :meth:`score_samples`
        over the full training set.

    false_alarm_rate : float in (0, 0.5], default=0.05
        With ``contamination="auto"``, the share of unseen normal samples
        that :meth:`predict` flags. Ignored otherwise.

    stop : {"clean_tail", "no_change"}, default="clean_tail"
        When refinement stops besides ``max_iter`` and ``min_samples``.
        ``"no_change"`` is the paper's rule: when a round removes nothing.
        ``"clean_tail"`` also stops, from the second round on, before a round
        that only removes and no more samples than a clean kept set has
        beyond its fence: Tukey's fence rejects part of any clean sample
        (4.8% of an exponential one), and fencing, refitting on what it kept
        and fencing again would trim the tail of a clean training set round
        after round. The expected count is :func:`clean_tail_fraction` of the
        kept samples, and up to two Poisson standard deviations above it
        count as the tail. The first round is always applied: removing a few
        samples may be what unmasks the others. So is a later tail-sized round
        where the detector, refitted without its samples, puts one of them
        further out than a clean tail reaches (one more fit where it stops).

    refit : {"auto", "warm", "cold"}, default="auto"
        How later rounds fit the detector. ``"cold"`` fits a fresh clone on the
        kept samples. ``"warm"`` sets ``warm_start=True`` on the previous
        round's model and fits it again, continuing from its current solution
        (for the flows: a few more epochs), which only makes sense where
        ``warm_start`` means that (ensembles with ``n_estimators``, such as
        IsolationForest, add trees: refused). ``"auto"`` refits warm the ones whose
        class declares ``_warm_start_continues = True``, cold all others. The
        first round and the fold models of held-out scores are fresh clones.

    fence_scores : {"oof", "in_sample"}, default="oof"
        Which anomaly scores of the kept samples the fence is computed on.
        ``"oof"`` (held out) scores each sample with a clone fitted on the
        other ``cv - 1`` folds of the kept samples, so that kept samples and
        the samples outside the kept set are judged on the same footing: by
        a model that did not see them (see Notes). It costs ``cv`` extra fits
        per round. ``"in_sample"`` scores them with the model fitted on them,
        as in the paper.

    cv : int, default=5
        Number of folds of the held-out scores (shuffled
        :class:`~sklearn.model_selection.KFold`; leave-one-out when fewer
        samples are kept than folds), for ``fence_scores="oof"`` and for the
        boundary of ``contamination="auto"``; exact copies of a sample share
        its fold. :meth:`fit` warns when the kept set may fall below ``cv``
        samples (the core, or ``min_samples``): the held-out scores then come
        from fits on a handful of samples.

    start : {"full", "trimmed", "neighbors"}, default="full"
        Where refinement starts. ``"full"`` fits the whole training set first
        and only ever removes samples, as in the paper. The two trimmed starts
        first find a trimmed core of ``start_fraction`` of the training set by
        concentration steps (as in FAST-MCD): fit on the current core, keep the
        training samples with the lowest anomaly scores, refit on them, and
        repeat until that set stops changing. ``"trimmed"`` takes its first
        core from a fit on the whole training set; ``"neighbors"`` takes the
        samples closest to their ``start_neighbors``-th nearest neighbour
        (:func:`neighbour_distances`). The first round then also fences the
        samples left out of the core, scored by the core's model, and
        re-admits those inside the fence; later rounds only remove. See Notes
        for when to use which.

    start_fraction : float in (0, 1), default=0.5
        Fraction of the distinct training samples in the trimmed core (rounded
        up, at least 4; copies of a sample join it with their first); it
        should be below the expected fraction of normal samples. Ignored with
        ``start="full"``.

    start_neighbors : int or float, default=0.1
        Which neighbour's distance ranks the samples for the first core of
        ``start="neighbors"``: an int is a count, a float in (0, 1) a fraction
        of the training set (rounded up); either is at least 1 and at most
        ``n_samples - 1``. It should exceed the size of the largest group of
        near-identical anomalies. Ignored otherwise.

    verbose : int, default=0
        When positive, print one line per round: the fence, how many samples
        it removed or re-admitted, and how many are kept.

    random_state : int, RandomState instance or None, default=None
        Seeds the detector: when not None, its ``random_state`` parameters
        (its own and those of its parts, such as a Pipeline's steps) are set
        to it if it is an int (so the first round fits the same detector as
        ``estimator.set_params(random_state=random_state)`` alone), or to an
        int drawn from it if it is a ``RandomState``; the same in every round
        and for every fold. Also
        shuffles the folds of the held-out scores. ``None`` leaves the
        detector's own ``random_state`` as given. See :term:`Glossary
        <random_state>`.

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
        ``min_samples`` or ``stop`` stops it.

    n_iter_ : int
        Number of rounds run (each round fits the detector once).

    termination_condition_ : {"no_change", "cycle", "clean_tail", "max_iter", \
"min_samples"}
        Why refinement stopped: the last round removed nothing; the last
        round's kept set was that of an earlier round, so the rounds would
        repeat forever, and it was not applied; it would only have trimmed the
        tail of a clean set (``stop="clean_tail"``), and was not applied;
        ``max_iter`` rounds ran (the detector was then fitted once more on the
        kept samples); or the last round's removal would have left fewer than
        ``min_samples`` samples (with a trimmed start already below it, fewer
        than it kept), and was not applied.

    offset_ : float
        Offset between :meth:`score_samples` and :meth:`decision_function`;
        see ``contamination``. With ``"auto"``, minus the
        ``1 - false_alarm_rate`` quantile of the held-out anomaly scores of
        the training samples judged normal (see ``contamination``).

    n_features_in_ : int
        Number of features seen during :term:`fit`.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :term:`fit`. Defined only when `X`
        has feature names that are all strings.

    See Also
    --------
    iqr_fence : The fence computed in each round.
    clean_tail_fraction : The share of a clean set beyond the fence.
    neighbour_distances : The ranking of the first core of ``start="neighbors"``.
    sklearn.semi_supervised.SelfTrainingClassifier : Iterative refitting on a
        growing, rather than shrinking, training set.

    Notes
    -----
    The refinement is the iterative procedure of Aqeel et al. [1]_ (their
    eq. 5), there applied to normalizing flows trained with meta-learning;
    the fence is Tukey's [2]_. The paper's procedure is
    ``fence_scores="in_sample", stop="no_change"``; with it, their one-shot
    removal baseline (OSR) is ``max_iter=1`` and their iterative refinement
    (IRP) ``max_iter=None``. Held-out fence scores, the clean-tail stop, the
    trimmed starts and the false-alarm boundary are this package's.

    The paper's Table 2 (good and bad training samples removed) compares
    ``~inlier_mask_`` with the ground truth; ``removed_at_iter_`` splits it.

    A sample is outside the fence when its score is strictly greater than
    ``T``. When tied scores reach from the first quartile to the third
    (about half of the kept samples or more), the IQR is zero and ``T`` is
    that tied score: only samples scoring above it are removed, and when all
    scores are equal a round removes nothing.

    ``X`` must be a dense, finite 2-D array of at least 4 distinct samples. When a fit
    after the first round fails, a ``RuntimeError`` names the round and the
    number of samples, with the detector's exception as its ``__cause__``.

    Why held-out scores: a model scores the samples it was fitted on as more
    normal than samples it has not seen. A detector that memorises its
    training samples gives planted anomalies in-sample scores as normal as
    anyone's, so the in-sample fence removes nothing; and unseen normal
    samples cross a fence of in-sample scores, so it can neither re-admit the
    samples left out of a trimmed core nor serve as a decision boundary.
    Held-out scores judge kept samples as the others and future samples are
    judged: by a model that did not see them (warm-started models cannot
    give such scores). The boundary of ``contamination="auto"`` always comes
    from them (computed once at the end with ``fence_scores="in_sample"``)
    and from the removed samples inside the outer fence (and a clean tail),
    scored by the final model: the kept set is conservative, and the normal
    samples it leaves out are normal samples the boundary must let through. Its
    false-alarm rate holds for normal samples like these, and normal samples
    unlike any of them are flagged more often. It also takes the fold models'
    scores to be on the final model's scale: OneClassSVM's grow with the
    number of samples it is fitted on, and on 300 Gaussian samples in 3
    dimensions (3 seeds, ``cv=5``) its boundary flags 2.4% to 3.0% of new
    normal samples instead of 5% (PyOD's OCSVM 7.9% to 8.8%): use a float
    ``contamination`` with these. :meth:`fit` takes no fit parameters such
    as ``sample_weight``.

    Why the clean-tail stop: on 300 Gaussian samples and 30 far outliers in
    2, 3, 5 and 10 dimensions (6 seeds each), ``IQRRefiner(EllipticEnvelope())``
    with the paper's rule removes all outliers and 5.3% of the inliers on
    average; with held-out scores and the clean-tail stop, all outliers and
    1.5% of the inliers.

    The fence cannot remove anomalies that make up a large share of the
    training set: once they are a quarter of it or more, the third quartile
    lies among them and the fence above it. A trimmed start breaks this
    barrier: its core holds mostly normal samples whenever ``start_fraction``
    is below their share. The first round then
    re-admits the samples left out of the core that its model puts inside
    the fence of the core's held-out scores, as the reweighting step of
    FAST-MCD [3]_ extends its trimmed estimate to the samples consistent with
    it. Only the first round re-admits: a model that has re-admitted a few
    anomalies of one kind scores the others of that kind as normal (see the
    user guide's measurements). The price is on clean data: the normal
    samples farthest from the core, and any mode without a sample in the
    core, stay out. Trimmed starts should refit cold: warm refits barely move
    the model away from its fit to the contaminated full set.

    ``start="neighbors"`` is for flexible density models such as the flows.
    They give a tight group of similar anomalies (one kind of defect, or a
    neat digit among scrawled ones) a density as high as the normal samples',
    so concentration steps from a fit on everything keep such groups in the
    core. A sample's distance to its ``start_neighbors``-th neighbour is
    small only where that many samples are close, so a group of fewer
    similar anomalies ranks outside the first core. It costs one
    nearest-neighbour search and no extra fit.

    References
    ----------
    .. [1] M. Aqeel, S. Sharifi, M. Cristani and F. Setti, "Meta
       Learning-Driven Iterative Refinement for Robust Anomaly Detection in
       Industrial Inspection", ECCV 2024 Workshops.

    .. [2] J. W. Tukey, "Exploratory Data Analysis", Addison-Wesley, 1977.

    .. [3] P. J. Rousseeuw and K. Van Driessen, "A Fast Algorithm for the
       Minimum Covariance Determinant Estimator", Technometrics 41(3), 1999.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.covariance import EllipticEnvelope
    >>> from sklearn_metarefine import IQRRefiner
    >>> rng = np.random.RandomState(0)
    >>> X = np.vstack([rng.normal(size=(95, 2)), rng.normal(8, 1, size=(5, 2))])
    >>> refiner = IQRRefiner(EllipticEnvelope(), random_state=0).fit(X)
    >>> refiner.termination_condition_
    'clean_tail'
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

    def _validate_params(self):
        check_novelty(self.estimator)
        super()._validate_params()

    def set_params(self, **params):
        check_nested_default(self, params, "estimator", _default_estimator)
        return super().set_params(**params)

    @_fit_context(
        # the wrapped estimator's parameters are validated when it is fitted
        prefer_skip_nested_validation=False
    )
    @restored_on_failure
    def fit(self, X, y=None):
        """Refine the training set and fit the detector on the kept samples.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training samples, possibly contaminated with anomalies. A
            DataFrame reaches the detector as a DataFrame (its rows), so that
            a Pipeline can select columns by name; its columns must be
            numbers (text ones are refused, named: encode them before).

        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        array = validated(self, X)
        check_fence_samples(array)
        X = samples_for(X, array)
        warn_if_held_out_from_few(self, X.shape[0])
        min_kept = checked_min_samples(self.min_samples, X.shape[0], self.start)
        estimator = _default_estimator() if self.estimator is None else self.estimator
        base, fold_seed = seeded_clone(estimator, self.random_state)
        warm = uses_warm_refits(base, self.refit)

        estimator, kept = self._start(base, X, warm)
        core_model = self.start != "full"  # fitted on the core's distinct rows
        removed_at_iter = np.where(kept, -1, 0).astype(np.intp)
        thresholds, seen = [], set()
        while True:
            n_rounds = len(thresholds)
            scores = self._fence_scores(estimator, base, take(X, kept), fold_seed,
                                        n_rounds)
            fence = iqr_fence(scores, self.k)
            if self.max_iter is not None and n_rounds == self.max_iter:
                # The model is now fitted on the samples the last round kept.
                termination = "max_iter"
                break
            thresholds.append(fence)
            readmit = self.start != "full" and n_rounds == 0
            candidate = inside_fence(estimator, X, kept, scores, fence, readmit)
            clean_tail = self._clean_tail(scores, n_rounds)
            seen.add(kept.tobytes())
            termination = stop_reason(candidate, kept, min_kept, clean_tail, seen)
            unmasked = None  # the next round's model, if fitted to decide
            if termination == "clean_tail":
                unmasked = refit(base, copy.deepcopy(estimator) if warm else estimator,
                                 take(X, candidate), warm, after_round=n_rounds + 1)
                if unmasks(unmasked, take(X, kept & ~candidate), scores, self.k):
                    termination = None
            if self.verbose:
                print(round_summary(len(thresholds), fence, kept, candidate,
                                    termination, min_kept, clean_tail))
            if termination is not None:
                break
            removed_at_iter[kept & ~candidate] = len(thresholds)
            removed_at_iter[candidate] = -1
            kept = candidate
            estimator = unmasked if unmasked is not None else refit(
                base, estimator, take(X, kept), warm, after_round=n_rounds + 1)
            core_model = False

        if core_model:
            estimator = with_copies(base, estimator, take(X, kept), warm,
                                    len(thresholds))
        self.estimator_ = estimator
        self.inlier_mask_ = kept
        self.removed_at_iter_ = removed_at_iter
        self.thresholds_ = np.asarray(thresholds, dtype=np.float64)
        self.n_iter_ = len(thresholds)
        self.termination_condition_ = termination
        self.offset_ = decision_offset(self, estimator, base, X, kept, scores, fold_seed)
        return self

    def _start(self, base, X, warm):
        """The first model and the first kept set."""
        if self.start == "full":
            return refit(base, None, X, warm, after_round=0), np.ones(len(X), bool)
        start = {name: getattr(self, name) for name in _START_PARAMS}
        return trimmed_core(base, X, warm, **start)

    def _clean_tail(self, scores, n_rounds):
        """Kept samples a clean set has outside the fence; None: no such stop.

        Not in round 1, which may remove the first anomalies the model masks."""
        if self.stop == "no_change" or n_rounds == 0:
            return None
        return clean_tail_fraction(scores, self.k) * scores.size

    def _fence_scores(self, estimator, base, X_kept, fold_seed, n_iter):
        """Anomaly scores of the kept samples that round ``n_iter`` fences."""
        if self.fence_scores == "in_sample":
            return in_sample_anomaly_scores(estimator, base, X_kept, n_iter)
        return out_of_fold_anomaly_scores(base, X_kept, self.cv, fold_seed,
                                          n_iter=n_iter)

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
        return -anomaly_score(self.estimator_, checked_samples(self, X))

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
            for inliers. With ``contamination="auto"`` this is the boundary
            of ``false_alarm_rate`` minus the anomaly score.
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
            -1 where :meth:`decision_function` is negative or NaN, +1
            elsewhere.
        """
        # NaN (a sample the detector gives no score) is not passed as normal.
        return np.where(self.decision_function(X) >= 0, 1, -1)

    @available_if(final_estimator_has("score", _default_estimator))
    def score(self, X, y=None):
        """The final detector's own ``score`` on ``X``.

        Available when the detector has a ``score`` method, e.g. the total
        log-likelihood of the samples under
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
        return self.estimator_.score(checked_samples(self, X), y)
