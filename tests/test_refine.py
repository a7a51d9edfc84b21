import re
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KernelDensity, LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import OneClassSVM
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import validate_data

from sklearn_metarefine import (
    IQRRefiner,
    clean_tail_fraction,
    iqr_fence,
    neighbour_distances,
)
from sklearn_metarefine._rounds import (
    boundary,
    calibration_scores,
    stop_reason,
    trimmed_core,
    trims_tail,
)
from sklearn_metarefine._sizes import (
    core_size,
    resolve_min_samples,
    resolve_start_neighbors,
)
from sklearn_metarefine._scores import anomaly_score, with_clean_tail


class ColumnDetector(OutlierMixin, BaseEstimator):
    """Anomaly score = first feature, whatever it was fitted on.

    The refinement then reduces to iterated fences on fixed numbers that a
    test can compute by hand. ``fit_sizes_`` records the size of every fit of
    this object, so warm refits (the same object, fitted again) show up as a
    list longer than one.
    """

    def __init__(self, warm_start=False):
        self.warm_start = warm_start

    def fit(self, X, y=None):
        warm = self.warm_start and hasattr(self, "fit_sizes_")
        X = validate_data(self, X, reset=not warm)
        if not warm:
            self.fit_sizes_ = []
        self.fit_sizes_.append(X.shape[0])
        return self

    def score_samples(self, X):
        X = validate_data(self, X, reset=False)
        return -X[:, 0]


class ContinuingColumnDetector(ColumnDetector):
    """A ColumnDetector whose warm start continues from the current fit."""

    _warm_start_continues = True


class FragileDetector(ColumnDetector):
    """A ColumnDetector that cannot be fitted on fewer than ``min_fit`` samples."""

    def __init__(self, min_fit=50, warm_start=False):
        self.min_fit = min_fit
        self.warm_start = warm_start

    def fit(self, X, y=None):
        if len(X) < self.min_fit:
            raise ValueError(f"needs {self.min_fit} samples, got {len(X)}")
        return super().fit(X)


class DecisionOnlyDetector(OutlierMixin, BaseEstimator):
    """A detector with only a decision_function, higher meaning more normal."""

    def fit(self, X, y=None):
        validate_data(self, X)
        return self

    def decision_function(self, X):
        return 1.0 - validate_data(self, X, reset=False)[:, 0]


def column(values):
    """Samples whose only feature is ``values``."""
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def planted(seed, n_normal=360, n_anomalous=40, n_features=8, shift=12.0):
    """Standard normal samples and anomalies shifted far along one axis."""
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n_normal + n_anomalous, n_features))
    X[n_normal:, 0] += shift
    is_anomalous = np.arange(n_normal + n_anomalous) >= n_normal
    return X, is_anomalous


# The paper's procedure: in-sample fence scores, iterate until nothing changes.
PAPER = {"fence_scores": "in_sample", "stop": "no_change"}


def normal_label(is_anomalous):
    """Labels for roc_auc: 1 for normal (the positive class), -1 for anomalous."""
    return np.where(is_anomalous, -1, 1)


@parametrize_with_checks(
    [
        IQRRefiner(IsolationForest(n_estimators=10), random_state=0),
        IQRRefiner(LocalOutlierFactor(novelty=True)),
        IQRRefiner(OneClassSVM()),
        IQRRefiner(EllipticEnvelope(), random_state=0),
    ]
)
# The checks fit on a handful of samples: fewer than LOF's 20 neighbours, and too
# few for a full-rank covariance.
@pytest.mark.filterwarnings("ignore:n_neighbors .* is greater than")
@pytest.mark.filterwarnings("ignore:The covariance matrix associated")
def test_sklearn_compatible(estimator, check):
    check(estimator)


# iqr_fence


def type7_quantile(values, p):
    """Hyndman and Fan's type 7 quantile, from the order statistics."""
    ordered = sorted(values)
    h = (len(ordered) - 1) * p
    low = int(np.floor(h))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def random_scores(seed):
    rng = np.random.RandomState(seed)
    size = rng.randint(1, 60)
    # Rounding makes ties common, the case where quartile code goes wrong.
    return np.round(rng.standard_t(df=2, size=size), rng.randint(0, 3))


@pytest.mark.parametrize("seed", range(30))
def test_iqr_fence_matches_hand_computation(seed):
    scores = random_scores(seed)
    k = np.random.RandomState(seed).uniform(0, 4)
    q1, q3 = type7_quantile(scores, 0.25), type7_quantile(scores, 0.75)
    assert iqr_fence(scores, k) == pytest.approx(q3 + k * (q3 - q1))


@pytest.mark.parametrize("seed", range(30))
def test_iqr_fence_properties(seed):
    scores = random_scores(seed)
    rng = np.random.RandomState(seed)
    k_small, k_large = np.sort(rng.uniform(0, 4, size=2))
    assert iqr_fence(scores, k_small) <= iqr_fence(scores, k_large)
    assert iqr_fence(rng.permutation(scores), k_small) == pytest.approx(
        iqr_fence(scores, k_small)
    )
    # The fence moves with the scores: shift- and positive-scale-equivariant.
    assert iqr_fence(3.0 * scores - 7.0, k_small) == pytest.approx(
        3.0 * iqr_fence(scores, k_small) - 7.0
    )
    assert iqr_fence(scores, k_small) >= np.percentile(scores, 75)


@pytest.mark.parametrize("function", [iqr_fence, clean_tail_fraction])
@pytest.mark.parametrize("k", [-1.0, np.nan, "1.5"])
def test_fence_helpers_refuse_a_k_the_refiner_refuses(function, k):
    # A negative k put the fence below Q3 (1.75 for [1, 2, 3, 4]), NaN gave a
    # NaN fence and a clean tail of 100%.
    with pytest.raises(InvalidParameterError, match="The 'k' parameter"):
        function([1.0, 2.0, 3.0, 4.0], k=k)


def test_a_detector_class_is_refused_in_words():
    # The class has fit and score_samples, unbound: a TypeError about
    # get_params' missing self.
    X = np.random.RandomState(0).normal(size=(20, 2))
    with pytest.raises(InvalidParameterError, match=r"the class IsolationForest.*"
                       r"IsolationForest\(\)"):
        IQRRefiner(IsolationForest).fit(X)


def test_iqr_fence_ties():
    assert iqr_fence(np.full(10, 2.5)) == 2.5
    # More than a quarter tied at Q3: IQR = 0 and only scores above are outside.
    scores = np.r_[np.zeros(80), np.arange(1.0, 21.0)]
    assert iqr_fence(scores) == 0.0


@pytest.mark.parametrize(
    "scores, match",
    [
        ([], "non-empty"),
        ([[1.0, 2.0]], "1-D"),
        ([1.0, np.nan], "NaN"),
        ([np.inf], "inf"),
    ],
)
def test_iqr_fence_rejects_bad_scores(scores, match):
    with pytest.raises(ValueError, match=match):
        iqr_fence(scores)
    # The clean tail is measured on the same quartiles: it gave NaN or an
    # IndexError.
    with pytest.raises(ValueError, match=match):
        clean_tail_fraction(scores)


def test_clean_tail_fraction_takes_the_quartiles_of_finite_scores():
    scores = np.random.RandomState(0).exponential(size=40)
    with_infinite = np.r_[scores, np.full(20, np.inf)]  # a third of them
    assert clean_tail_fraction(with_infinite) == clean_tail_fraction(scores) > 0


# the anomaly-score adapter


def test_anomaly_score_flips_sklearn_normality_scores():
    X, _ = planted(0, n_normal=50, n_anomalous=5, n_features=2)
    forest = IsolationForest(n_estimators=10, random_state=0).fit(X)
    np.testing.assert_array_equal(anomaly_score(forest, X), -forest.score_samples(X))
    detector = DecisionOnlyDetector().fit(X)
    np.testing.assert_array_equal(anomaly_score(detector, X), X[:, 0] - 1.0)


def test_a_detector_that_cannot_score_a_few_samples_is_named():
    # PyOD's COF and SOD score a batch against itself: scoring the few
    # samples a round removes failed with a bare IndexError or ValueError.
    from pyod.models.cof import COF

    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(size=(300, 3)), rng.normal(8, 1, size=(30, 3))]
    with pytest.raises(RuntimeError, match=r"Scoring with COF the \d+ samples a "
                       r"round removes .* failed.*against the others of its batch"):
        IQRRefiner(COF(), random_state=0).fit(X)
    # The held-out scores of the folds.
    with pytest.raises(RuntimeError, match=r"Scoring with BatchOnly the 20 samples "
                       r"of fold 1 of 5 failed: batches of 40"):
        IQRRefiner(BatchOnly(), k=0.0, max_iter=1).fit(column(np.arange(100)))


def test_detectors_that_score_against_their_batch_are_named():
    # PyOD's ECOD and COPOD score a sample against the training data together
    # with the other samples of the call: a sample's label depended on what
    # was scored with it, and nothing said so.
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.knn import KNN

    rng = np.random.RandomState(0)
    X, X_new = rng.normal(size=(300, 3)), rng.normal(size=(400, 3))
    for detector in (ECOD(), make_pipeline(StandardScaler(), COPOD())):
        name = type(detector[-1] if hasattr(detector, "steps") else detector).__name__
        with pytest.warns(UserWarning, match=rf"PyOD's {name} scores each sample "
                          r"against the other samples of its call"):
            refiner = IQRRefiner(detector, random_state=0).fit(X)
        one_at_a_time = [refiner.score_samples(row[None])[0] for row in X_new]
        assert np.abs(refiner.score_samples(X_new) - one_at_a_time).max() > 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refiner = IQRRefiner(KNN(), random_state=0).fit(X)
    one_at_a_time = [refiner.score_samples(row[None])[0] for row in X_new[:50]]
    np.testing.assert_allclose(refiner.score_samples(X_new[:50]), one_at_a_time)


class BatchOnly(ColumnDetector):
    """Scores batches of 40 samples or more only."""

    def score_samples(self, X):
        if len(X) < 40:
            raise ValueError("batches of 40 samples or more only")
        return super().score_samples(X)


def test_anomaly_score_keeps_pyod_abnormality_scores():
    from pyod.models.knn import KNN

    X, is_anomalous = planted(0, n_normal=50, n_anomalous=5, n_features=2)
    knn = KNN().fit(X)
    scores = anomaly_score(knn, X)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, knn.decision_function(X))
    assert scores[is_anomalous].min() > np.median(scores[~is_anomalous])
    pipeline = make_pipeline(StandardScaler(), KNN()).fit(X)
    np.testing.assert_array_equal(
        anomaly_score(pipeline, X), pipeline.decision_function(X)
    )


# the refinement


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("support_fraction", [None, 1.0])
def test_removes_planted_outliers(support_fraction, seed):
    # The seed draws the folds of the held-out fence scores. With
    # support_fraction=1 the covariance is fitted on every sample it is
    # given, anomalies included: for some folds, a round leaves half of the
    # anomalies just beyond the fence, as few as a clean tail, and only a
    # refit without them shows how far out they are.
    X, is_anomalous = planted(0)
    refiner = IQRRefiner(
        EllipticEnvelope(support_fraction=support_fraction), random_state=seed
    )
    removed = ~refiner.fit(X).inlier_mask_
    assert removed[is_anomalous].mean() >= 0.9
    assert removed[~is_anomalous].mean() <= 0.05


def test_a_tail_sized_round_that_unmasks_anomalies_is_applied(capsys):
    # Fold seed 0: round 2 has 21 samples beyond its fence (all but one of them
    # anomalies), no more than the 16.9 + 2 * sqrt(16.9) of a clean tail.
    X, is_anomalous = planted(0)
    estimator = EllipticEnvelope(support_fraction=1.0, random_state=0)
    refiner = IQRRefiner(estimator, random_state=0, verbose=1).fit(X)
    assert "round 2: fence T=18.8894, removed 21" in capsys.readouterr().out
    assert (~refiner.inlier_mask_[is_anomalous]).all()
    assert refiner.termination_condition_ == "clean_tail"


def gaussian_with_far_outliers(n_features, seed):
    """300 standard normal inliers and 30 outliers far out in random directions."""
    rng = np.random.RandomState(seed)
    inliers = rng.normal(size=(300, n_features))
    directions = rng.normal(size=(30, n_features))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    outliers = rng.normal(size=(30, n_features)) + (8 + 2 * np.sqrt(n_features)) * directions
    return np.vstack([inliers, outliers]), np.arange(330) >= 300


@pytest.mark.parametrize("k", [0.5, 1.0])
@pytest.mark.parametrize("n_features", [2, 5])
def test_the_clean_tail_stop_counts_the_tail_beyond_the_fence_of_its_k(k, n_features):
    # A tight fence cuts a larger tail off a clean set (13% at k=0.5): counted
    # for k=1.5 instead, the rounds after the first went on removing it.
    X = np.random.RandomState(0).normal(size=(300, n_features))
    refiner = IQRRefiner(EllipticEnvelope(random_state=0), k=k, random_state=0).fit(X)
    assert refiner.termination_condition_ == "clean_tail" and refiner.n_iter_ == 2
    assert refiner.inlier_mask_.mean() >= 0.8


def test_refinement_does_not_erode_clean_tails():
    # Tukey's fence rejects a share of any clean sample (4.8% of the squared
    # Mahalanobis distances in two dimensions): refitting on what it keeps and
    # fencing again would trim the tail round after round (the paper's rule
    # removes 5.3% of the inliers on this grid).
    removed_inliers, removed_outliers = [], []
    for n_features in [2, 3, 5, 10]:
        for seed in range(6):
            X, is_outlier = gaussian_with_far_outliers(n_features, seed)
            kept = IQRRefiner(EllipticEnvelope(), random_state=seed).fit(X).inlier_mask_
            removed_inliers.append((~kept[~is_outlier]).mean())
            removed_outliers.append((~kept[is_outlier]).mean())
    assert np.mean(removed_inliers) <= 0.02
    assert np.mean(removed_outliers) >= 0.95


def test_stops_once_a_round_only_trims_a_clean_tail(capsys):
    # Clean exponential scores: every round trims the 4.8% beyond the fence.
    values = np.random.RandomState(0).exponential(size=1000)
    paper = IQRRefiner(ColumnDetector(), **PAPER).fit(column(values))
    refiner = IQRRefiner(ColumnDetector(), verbose=1).fit(column(values))
    assert paper.inlier_mask_.mean() < 0.95
    # The first round may be the first of masked anomalies: it is applied.
    assert refiner.termination_condition_ == "clean_tail"
    assert refiner.n_iter_ == 2
    assert set(np.unique(refiner.removed_at_iter_)) == {-1, 1}
    assert refiner.inlier_mask_.mean() > 0.93
    last = capsys.readouterr().out.splitlines()[-1]
    # The line gave the expected count alone as the bound, below the count
    # it let stand ("7 above it not removed, no more than the 4.0 ...").
    found = re.search(r"(\d+) above it not removed, within the ([\d.]+) a clean set "
                      r"has there \(([\d.]+) expected, \+ 2 s\.d\.\); kept", last)
    assert found, last
    n_left, bound, expected = int(found[1]), float(found[2]), float(found[3])
    assert n_left <= bound and bound > expected


def test_a_tail_sized_round_stops_from_the_second_round_on():
    kept = np.ones(100, dtype=bool)
    candidate = kept.copy()
    candidate[:3] = False
    clean_tail = 0.048 * 100
    assert trims_tail(candidate, kept, clean_tail)
    assert not trims_tail(candidate, kept, None)
    assert stop_reason(candidate, kept, 50, clean_tail) == "clean_tail"
    assert stop_reason(candidate, kept, 50, None) is None
    # A round that also re-admits does more than trim.
    partly_kept = np.arange(100) > 0
    assert not trims_tail(candidate | ~partly_kept, partly_kept, clean_tail)
    # Two standard deviations above the expected count still trim; more do not.
    candidate[:9] = False
    assert trims_tail(candidate, kept, clean_tail)
    candidate[:10] = False
    assert not trims_tail(candidate, kept, clean_tail)


def test_ranks_held_out_samples_better_than_the_bare_estimator():
    # support_fraction=1 turns off the minimum covariance determinant's own
    # robustness: like a flow fitted by maximum likelihood, the bare estimator
    # then fits the anomalies too.
    X, _ = planted(0)
    X_test, is_anomalous_test = planted(1, n_normal=200, n_anomalous=200, shift=7.0)
    y_test = normal_label(is_anomalous_test)
    bare = EllipticEnvelope(support_fraction=1.0).fit(X)
    refiner = IQRRefiner(EllipticEnvelope(support_fraction=1.0)).fit(X)
    bare_auc = roc_auc_score(y_test, bare.decision_function(X_test))
    refined_auc = roc_auc_score(y_test, refiner.decision_function(X_test))
    assert refined_auc > bare_auc + 0.05


def test_iterating_removes_what_one_shot_removal_misses():
    X, is_anomalous = planted(0)
    estimator = EllipticEnvelope(support_fraction=1.0)
    one_shot = IQRRefiner(estimator, max_iter=1, **PAPER).fit(X)
    iterative = IQRRefiner(estimator, **PAPER).fit(X)

    assert one_shot.n_iter_ == 1
    assert one_shot.termination_condition_ == "max_iter"
    assert set(np.unique(one_shot.removed_at_iter_)) == {-1, 1}
    # The first round is the same in both; only iterating unmasks the rest.
    np.testing.assert_array_equal(
        one_shot.removed_at_iter_ == 1, iterative.removed_at_iter_ == 1
    )
    assert iterative.n_iter_ > 1
    assert (~one_shot.inlier_mask_[is_anomalous]).mean() < 0.5
    assert (~iterative.inlier_mask_[is_anomalous]).mean() == 1.0
    # One-shot removal still refits on what it kept.
    kept_fit = EllipticEnvelope(support_fraction=1.0).fit(X[one_shot.inlier_mask_])
    np.testing.assert_allclose(one_shot.estimator_.location_, kept_fit.location_)


def test_rounds_by_hand():
    # Scores 0..99 and k=0 remove everything above Q3 in each round.
    refiner = IQRRefiner(ColumnDetector(), k=0.0, min_samples=50, **PAPER).fit(
        column(np.arange(100))
    )
    np.testing.assert_allclose(refiner.thresholds_, [74.25, 55.5, 41.25])
    assert refiner.n_iter_ == 3
    # Round 3 would keep 42 < 50 samples, so it removes nothing.
    assert refiner.termination_condition_ == "min_samples"
    np.testing.assert_array_equal(refiner.inlier_mask_, np.arange(100) <= 55)
    expected_round = np.select(
        [np.arange(100) > 74, np.arange(100) > 55], [1, 2], default=-1
    )
    np.testing.assert_array_equal(refiner.removed_at_iter_, expected_round)
    # The boundary lets 5% of the training samples judged normal fall
    # outside: the kept ones' held-out scores (for this detector its
    # in-sample scores, 0..55) and, as k=0 puts the outer fence at Q3, where a
    # clean set has a quarter of its scores beyond, the 19 lowest removed
    # ones (56..74), a third as many as the 56 kept.
    assert refiner.offset_ == -np.quantile(np.arange(75), 0.95)
    assert refiner.estimator_.fit_sizes_ == [56]


def test_attributes_are_consistent():
    X, _ = planted(0)
    refiner = IQRRefiner(ColumnDetector(), random_state=0, **PAPER).fit(X)
    scores = X[:, 0]
    removed_at = refiner.removed_at_iter_
    assert refiner.inlier_mask_.dtype == bool
    np.testing.assert_array_equal(refiner.inlier_mask_, removed_at == -1)
    assert set(np.unique(removed_at)) <= {-1, *range(1, refiner.n_iter_ + 1)}
    assert refiner.thresholds_.shape == (refiner.n_iter_,)
    for n_iter, fence in enumerate(refiner.thresholds_, start=1):
        kept_before = (removed_at == -1) | (removed_at >= n_iter)
        assert fence == pytest.approx(iqr_fence(scores[kept_before], refiner.k))
        np.testing.assert_array_equal(
            removed_at == n_iter, kept_before & (scores > fence)
        )


@pytest.mark.parametrize("min_samples", [50, 0.5])
def test_min_samples_count_or_fraction(min_samples):
    refiner = IQRRefiner(ColumnDetector(), k=0.0, min_samples=min_samples, **PAPER)
    refiner.fit(column(np.arange(100)))
    assert refiner.inlier_mask_.sum() == 56


@pytest.mark.parametrize("min_samples", [100, 150, 1.0])
def test_min_samples_not_below_the_training_set_warns(min_samples):
    # A count at or above the training set leaves no round that can remove a
    # sample: said, rather than a fit that silently refines nothing.
    refiner = IQRRefiner(ColumnDetector(), k=0.0, min_samples=min_samples, **PAPER)
    with pytest.warns(UserWarning, match=rf"min_samples={min_samples} is not below"
                      r" the 100 training samples: no refinement round can remove"):
        refiner.fit(column(np.arange(100)))
    assert refiner.inlier_mask_.all()
    assert refiner.termination_condition_ == "min_samples"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refiner.set_params(min_samples=99).fit(column(np.arange(100)))
        # A trimmed start leaves out what its first round does not re-admit.
        refiner.set_params(min_samples=min_samples, start="trimmed", start_fraction=0.3)
        assert not refiner.fit(column(np.arange(100))).inlier_mask_.all()


def test_min_samples_holds_when_a_round_unmasks():
    # The clean-tail stop was decided before min_samples, and a round that
    # unmasks overrides it: LocalOutlierFactor's rounds on clean data went on
    # to 448 of 1000 samples with min_samples=0.5.
    X = np.random.RandomState(0).normal(size=(1000, 2))
    refiner = IQRRefiner(LocalOutlierFactor(novelty=True), random_state=0).fit(X)
    assert refiner.inlier_mask_.sum() >= 500


def test_never_keeps_fewer_than_four_samples():
    refiner = IQRRefiner(
        ColumnDetector(), k=0.0, min_samples=1, max_iter=None, **PAPER
    )
    refiner.fit(column(np.arange(8)))
    # Rounds keep 6, then 4; the third would keep 3.
    assert refiner.termination_condition_ == "min_samples"
    assert refiner.inlier_mask_.sum() == 4


def test_max_iter_refits_on_the_kept_samples():
    refiner = IQRRefiner(ColumnDetector(), k=0.0, min_samples=1, max_iter=2, **PAPER)
    refiner.fit(column(np.arange(100)))
    assert refiner.termination_condition_ == "max_iter"
    np.testing.assert_allclose(refiner.thresholds_, [74.25, 55.5])
    assert refiner.inlier_mask_.sum() == 56
    assert refiner.estimator_.fit_sizes_ == [56]
    # The decision boundary comes from the final model's scores of 0..55 and
    # of the removed samples a clean set has beyond Q3 (56..74).
    assert refiner.offset_ == -np.quantile(np.arange(75), 0.95)


def test_all_scores_equal_removes_nothing():
    # Distinct samples that all score 1 (identical ones are refused).
    refiner = IQRRefiner(ColumnDetector()).fit(np.c_[np.ones(20), np.arange(20)])
    assert refiner.termination_condition_ == "no_change"
    assert refiner.n_iter_ == 1
    assert refiner.inlier_mask_.all()
    np.testing.assert_array_equal(refiner.predict(np.ones((3, 2))), 1)


def test_tied_quartiles_remove_only_scores_above_them():
    values = np.r_[np.zeros(80), np.arange(1.0, 21.0)]
    refiner = IQRRefiner(ColumnDetector()).fit(column(values))
    np.testing.assert_array_equal(refiner.inlier_mask_, values == 0)
    np.testing.assert_array_equal(refiner.thresholds_, [0.0, 0.0])
    assert refiner.termination_condition_ == "no_change"


@pytest.mark.parametrize("n_samples", [1, 2, 3])
def test_fewer_than_four_samples_raise(n_samples):
    with pytest.raises(ValueError, match=f"n_samples={n_samples}"):
        IQRRefiner(ColumnDetector()).fit(column(np.arange(n_samples)))


def test_four_samples_are_enough_to_fit_five_to_remove_one():
    refiner = IQRRefiner(ColumnDetector(), min_samples=1)
    refiner.fit(column([0.0, 1.0, 2.0, 100.0]))
    assert refiner.termination_condition_ == "min_samples"
    assert refiner.inlier_mask_.all()
    refiner.fit(column([0.0, 1.0, 2.0, 3.0, 100.0]))
    np.testing.assert_array_equal(refiner.inlier_mask_, [1, 1, 1, 1, 0])


@pytest.mark.parametrize("start", ["trimmed", "neighbors"])
def test_a_trimmed_start_on_four_samples_holds_them_all(start):
    # The core is never below 4 samples, so on 4 it holds every one and
    # nothing is left out to re-admit; the detector is never asked to score
    # an empty array (which scikit-learn's detectors refuse).
    X = np.random.RandomState(0).normal(size=(4, 2))
    refiner = IQRRefiner(IsolationForest(random_state=0), start=start).fit(X)
    assert refiner.inlier_mask_.all()
    assert refiner.predict(X).shape == (4,)


def test_lof_without_novelty_is_refused_with_the_fix():
    X = np.random.RandomState(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match=re.escape("LocalOutlierFactor(novelty=True)")):
        IQRRefiner(LocalOutlierFactor()).fit(X)
    refiner = IQRRefiner(LocalOutlierFactor(novelty=True), random_state=0).fit(X)
    assert refiner.predict(X).shape == (20,)


def test_failed_refit_names_round_and_kept_count():
    refiner = IQRRefiner(FragileDetector(min_fit=80), k=0.0)
    with pytest.raises(RuntimeError, match="75 samples kept after round 1") as info:
        refiner.fit(column(np.arange(100)))
    assert "FragileDetector" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_failed_first_fit_is_the_estimators_own_error():
    with pytest.raises(ValueError, match="needs 200 samples"):
        IQRRefiner(FragileDetector(min_fit=200)).fit(column(np.arange(100)))


def test_failed_fold_fit_names_the_fold():
    refiner = IQRRefiner(FragileDetector(min_fit=90), fence_scores="oof", cv=5)
    with pytest.raises(RuntimeError, match="fold 1 of 5 .80 of the 100 samples"):
        refiner.fit(column(np.arange(100)))


def test_verbose_prints_one_line_per_round(capsys):
    IQRRefiner(ColumnDetector(), k=0.0, min_samples=50, verbose=1, **PAPER).fit(
        column(np.arange(100))
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "IQRRefiner round 1: fence T=74.25, removed 25, kept 75",
        "IQRRefiner round 2: fence T=55.5, removed 19, kept 56",
        "IQRRefiner round 3: fence T=41.25, 14 above it not removed, as that "
        "would keep 42 < min_samples=50; kept 56",
    ]


def test_silent_by_default(capsys):
    IQRRefiner(ColumnDetector()).fit(column(np.arange(100)))
    assert capsys.readouterr().out == ""


# refits


def test_warm_refits_continue_the_same_model():
    refiner = IQRRefiner(ContinuingColumnDetector(), k=0.0, min_samples=50, **PAPER)
    refiner.fit(column(np.arange(100)))
    assert refiner.estimator_.fit_sizes_ == [100, 75, 56]
    assert refiner.estimator_.warm_start is False


def test_warm_refits_include_the_final_refit():
    refiner = IQRRefiner(
        ContinuingColumnDetector(), k=0.0, min_samples=1, max_iter=2, **PAPER
    ).fit(column(np.arange(100)))
    assert refiner.estimator_.fit_sizes_ == [100, 75, 56]


def test_cold_refits_fit_fresh_clones():
    refiner = IQRRefiner(ContinuingColumnDetector(), k=0.0, refit="cold")
    refiner.fit(column(np.arange(100)))
    assert len(refiner.estimator_.fit_sizes_) == 1


def test_auto_refits_undeclared_warm_start_cold():
    # IsolationForest's warm_start adds trees: refitting it warm with the same
    # n_estimators would keep the first round's forest.
    X, _ = planted(0, n_normal=180, n_anomalous=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refiner = IQRRefiner(IsolationForest(n_estimators=10), random_state=0).fit(X)
    assert refiner.n_iter_ > 1
    assert refiner.estimator_.max_samples_ == refiner.inlier_mask_.sum()
    # A warm start that merely declares the parameter is honoured on request.
    warm = IQRRefiner(
        ColumnDetector(), k=0.0, min_samples=50, refit="warm", **PAPER
    )
    assert warm.fit(column(np.arange(100))).estimator_.fit_sizes_ == [100, 75, 56]
    cold = IQRRefiner(ColumnDetector(), k=0.0, min_samples=50, **PAPER)
    assert cold.fit(column(np.arange(100))).estimator_.fit_sizes_ == [56]


def test_warm_refit_needs_warm_start():
    refiner = IQRRefiner(LocalOutlierFactor(novelty=True), refit="warm")
    with pytest.raises(ValueError, match="warm_start parameter"):
        refiner.fit(planted(0)[0])


def test_warm_refit_of_an_ensemble_is_refused():
    # IsolationForest's warm_start with as many trees fits none: the rounds
    # after the first would have kept the forest of the whole training set.
    refiner = IQRRefiner(IsolationForest(n_estimators=10), refit="warm")
    with pytest.raises(ValueError, match=r"refit='warm' cannot refit IsolationForest"
                       r": an ensemble's warm_start adds members"):
        refiner.fit(planted(0)[0])


# out-of-fold fence scores


def test_out_of_fold_scores_unmask_a_memorising_detector():
    # With one neighbour, LOF scores each training sample against itself: every
    # in-sample score is exactly 1, so the in-sample fence removes nothing.
    # Scattered far anomalies are still obvious to a model that has not seen them.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(200, 20))
    directions = rng.normal(size=(20, 20))
    X[180:] = 12.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    is_anomalous = np.arange(200) >= 180
    memoriser = LocalOutlierFactor(novelty=True, n_neighbors=1)

    in_sample = IQRRefiner(
        memoriser, max_iter=1, fence_scores="in_sample", random_state=0
    ).fit(X)
    assert in_sample.termination_condition_ == "no_change"
    assert in_sample.inlier_mask_.all()

    oof = IQRRefiner(memoriser, max_iter=1, fence_scores="oof", random_state=0)
    removed = ~oof.fit(X).inlier_mask_
    assert removed[is_anomalous].mean() >= 0.9
    assert removed[~is_anomalous].mean() <= 0.05


def test_out_of_fold_fences_hand_computed_scores():
    # A detector that ignores its training data gives the same scores either way.
    X = column(np.arange(100))
    in_sample = IQRRefiner(ColumnDetector(), k=0.0, min_samples=50).fit(X)
    oof = IQRRefiner(ColumnDetector(), k=0.0, min_samples=50, fence_scores="oof")
    oof.fit(X)
    np.testing.assert_array_equal(oof.removed_at_iter_, in_sample.removed_at_iter_)
    np.testing.assert_allclose(oof.thresholds_, in_sample.thresholds_)


def test_out_of_fold_uses_leave_one_out_on_small_kept_sets():
    refiner = IQRRefiner(ColumnDetector(), fence_scores="oof", cv=10)
    refiner.fit(column([0.0, 1.0, 2.0, 3.0, 100.0]))
    np.testing.assert_array_equal(refiner.inlier_mask_, [1, 1, 1, 1, 0])


# signs, offsets and predictions


@pytest.mark.parametrize(
    "params, n_warned, n_quiet",
    [
        # a core of a quarter of the samples: 4 of up to 16, then 5 of 17
        ({"start": "neighbors", "start_fraction": 0.25}, 16, 17),
        # min_samples=0.5 of a full start: 4 of 8, then 5 of 9
        ({}, 8, 9),
    ],
)
def test_warns_when_held_out_scores_come_from_a_handful_of_samples(
    params, n_warned, n_quiet
):
    X = np.random.RandomState(0).normal(size=(n_quiet, 3))
    refiner = IQRRefiner(IsolationForest(n_estimators=10, random_state=0), **params)
    with pytest.warns(UserWarning, match=r"as few as 4 of the \d+ .* fits on 3") as w:
        refiner.fit(X[:n_warned])
    assert f"Train on at least {n_quiet} samples" in str(w[0].message)
    # Not a float contamination, which sets the boundary on in-sample scores
    # (a flow so fitted flagged 53% to 80% of new normal images at 0.1).
    assert "a threshold of your own, set on the scores of normal samples kept " \
        "out of training" in str(w[0].message)
    assert "contamination=" not in str(w[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refiner.fit(X)
        # fences of in-sample scores and a float boundary fit no folds
        refiner.set_params(fence_scores="in_sample", contamination=0.1).fit(X[:4])
    more = r"Train on more samples \(and min_samples >= 5\)"
    with pytest.warns(UserWarning, match=more):
        refiner.set_params(contamination="auto", min_samples=4).fit(X)
    # With a boundary of the user's, only the fence rests on the folds: the
    # advice to set one was given all the same.
    refiner.set_params(fence_scores="oof", contamination=0.1, min_samples=0.5)
    with pytest.warns(UserWarning, match="the fence set on them is unreliable") as w:
        refiner.fit(X[:n_warned])
    assert "a threshold of your own" not in str(w[0].message)
    # With an in-sample fence, only the boundary does: the fence was called
    # unreliable all the same.
    refiner.set_params(fence_scores="in_sample", contamination="auto")
    only_boundary = "the decision boundary set on them is unreliable"
    with pytest.warns(UserWarning, match=only_boundary) as w:
        refiner.fit(X[:n_warned])
    assert "fence" not in str(w[0].message)


def test_signs_follow_sklearn():
    X, is_anomalous = planted(0, n_normal=180, n_anomalous=20, n_features=2)
    refiner = IQRRefiner(IsolationForest(n_estimators=20), random_state=0).fit(X)
    scores = refiner.score_samples(X)
    decision = refiner.decision_function(X)
    assert scores.dtype == decision.dtype == np.float64
    np.testing.assert_allclose(decision, scores - refiner.offset_)
    prediction = refiner.predict(X)
    assert prediction.dtype.kind == "i"
    np.testing.assert_array_equal(prediction, np.where(decision < 0, -1, 1))
    np.testing.assert_array_equal(refiner.fit_predict(X), prediction)
    # A flipped sign would give about 1 - 0.9. (A forest refitted without the
    # removed outliers ranks them below one that saw them: isolation trees
    # only split within the range of their training data.)
    assert roc_auc_score(normal_label(is_anomalous), scores) > 0.8


@pytest.mark.parametrize("fence_scores", ["oof", "in_sample"])
def test_auto_contamination_flags_the_false_alarm_rate_of_unseen_normals(fence_scores):
    # Normal samples the model never saw are flagged at about the target
    # rate, whichever scores the fence used; the planted anomalies all are.
    X, is_anomalous = planted(0, n_normal=360, n_anomalous=40)
    X_new, _ = planted(1, n_normal=20_000, n_anomalous=0)
    for rate in [0.05, 0.2]:
        refiner = IQRRefiner(
            EllipticEnvelope(),
            false_alarm_rate=rate,
            fence_scores=fence_scores,
            random_state=0,
        ).fit(X)
        flagged = (refiner.predict(X_new) == -1).mean()
        assert rate / 2 < flagged < 2 * rate
        assert (refiner.predict(X[is_anomalous]) == -1).all()


def test_auto_contamination_is_a_quantile_of_held_out_scores():
    # This detector's scores ignore its training set: held-out scores are
    # its in-sample scores, and the boundary is their quantile.
    values = np.arange(100.0)
    refiner = IQRRefiner(ColumnDetector(), false_alarm_rate=0.1).fit(column(values))
    assert refiner.inlier_mask_.all()
    assert refiner.offset_ == -np.quantile(values, 0.9)
    assert (refiner.predict(column(values)) == -1).sum() == 10


def test_the_trimmed_core_holds_distinct_samples():
    # A third of the set is one sample repeated: a core of its copies would
    # fit that sample alone, and every other sample would be removed.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 2))
    X = np.vstack([X, np.repeat(X[:1] + 0.1, 30, axis=0)])
    start = {"start_fraction": 0.25, "start_neighbors": 0.1}
    for how in ("neighbors", "full"):
        _, core = trimmed_core(EllipticEnvelope(), X, False, start=how, **start)
        assert core.sum() == 16  # a quarter of the 61 distinct samples
        assert core[60:].sum() <= 1
    # Fewer than 4 distinct samples are refused, also from the full set, where
    # tied held-out scores made float rounding decide what was flagged.
    for how in ("neighbors", "trimmed", "full"):
        with pytest.raises(ValueError, match="3 distinct sample.* among its 33 rows"):
            IQRRefiner(EllipticEnvelope(), start=how).fit(np.repeat(X[:3], 11, axis=0))


@pytest.mark.parametrize("seed", range(5))
def test_removed_samples_sharing_the_boundary_score_are_flagged(seed):
    # IsolationForest gives every point beyond its training data one score:
    # the removed cluster, inside the outer fence, ties at the boundary's
    # quantile, and predict let it through (and every new point like it).
    rng = np.random.RandomState(seed)
    X = np.vstack([rng.normal(size=(80, 3)), rng.normal(7, 0.5, size=(8, 3))])
    refiner = IQRRefiner(IsolationForest(random_state=0), random_state=0).fit(X)
    assert not refiner.inlier_mask_[80:].any()
    assert (refiner.predict(X[80:]) == -1).all()
    assert (refiner.predict(rng.normal(7, 0.5, size=(50, 3))) == -1).all()
    assert (refiner.predict(rng.normal(size=(500, 3))) == -1).mean() <= 0.05


def test_removed_samples_tied_with_the_boundary_up_to_rounding_are_flagged():
    # OneClassSVM's saturated scores carry rounding (1e-14): the tie rule
    # compared with ==, and predict let some of the removed samples through.
    held_out = np.r_[np.linspace(-1.0, 0.0, 60), np.zeros(40)]
    removed = np.array([0.0, 1.4e-14, -1.8e-15, -8e-14, 3.0])
    value = boundary(removed, held_out, k=1.5, false_alarm_rate=0.05)
    assert np.all(removed > value)
    assert value > -1e-12  # and no further down than the rounding
    assert boundary(np.array([-0.5]), held_out, k=1.5, false_alarm_rate=0.05) == 0.0
    # Far from zero, the tolerance follows the scores' spread, not their size:
    # 1e-9 of 1e6 made a removed sample inside the normals a tie, and the
    # boundary dropped below every normal score.
    high = 1e6 + np.linspace(0.0, 1e-4, 50)
    value = boundary(np.array([high[-1] - 5e-4]), high, k=1.5, false_alarm_rate=0.05)
    assert np.mean(high > value) <= 0.06
    # Infinite scores (zero likelihood) make no tolerance infinite.
    held_out = np.r_[np.linspace(0.0, 1.0, 50), np.full(60, np.inf)]
    assert boundary(np.array([5.0]), held_out, k=1.5, false_alarm_rate=0.05) < 1.0


@pytest.mark.parametrize(
    "params",
    [{"estimator": EllipticEnvelope(random_state=0), "stop": "no_change", "max_iter": None},
     {"estimator": LocalOutlierFactor(novelty=True), "start": "trimmed",
      "fence_scores": "in_sample"}],
)  # fmt: skip
def test_copies_of_a_sample_share_its_decision(params):
    # Copies fell in different folds, each scored by a model that saw its
    # twin (the first case kept row 1 and removed its copy); a trimmed core
    # held a sample but not its copies, and a refused first round left them
    # removed.
    rng = np.random.RandomState(0)
    X = np.vstack([rng.normal(size=(80, 2)), rng.normal(5, 0.5, size=(20, 2))])
    X = np.vstack([X, X[:5]])  # rows 100-104 repeat rows 0-4
    refiner = IQRRefiner(random_state=0, **params).fit(X)
    np.testing.assert_array_equal(refiner.inlier_mask_[:5], refiner.inlier_mask_[100:])
    np.testing.assert_array_equal(
        refiner.removed_at_iter_[:5], refiner.removed_at_iter_[100:]
    )


def test_the_boundary_counts_the_removed_samples_inside_the_outer_fence():
    held_out = np.arange(1.0, 101.0)  # Q1 25.75, Q3 75.25: outer fence 223.75
    removed = np.array([150.0, 223.0, 224.0, 1e6])
    np.testing.assert_array_equal(
        calibration_scores(removed, held_out, k=1.5),
        np.r_[held_out, 150.0, 223.0],
    )
    # k=0: the outer fence is Q3, beyond which a clean set has a quarter of
    # its scores: the lowest removed ones join, up to a third as many as the
    # 100 inside (here all four).
    np.testing.assert_array_equal(
        calibration_scores(removed, held_out, k=0.0),
        np.r_[held_out, 150.0, 223.0, 224.0, 1e6],
    )
    # k=1.5: a clean set has 0.4% of its scores beyond: none join
    np.testing.assert_array_equal(
        calibration_scores(np.array([230.0, 240.0]), held_out, k=1.5),
        held_out,
    )
    held_out[0] = np.inf  # above any quantile: dropped
    assert np.isfinite(calibration_scores(None, held_out, 1.5)).all()


def test_with_clean_tail_restores_the_lowest_scores_a_clean_set_has_beyond():
    inside = np.arange(90.0)
    outside = np.array([np.inf, 120.0, 100.0, 110.0, 130.0])
    # a tenth of a clean set beyond: 10 for 90 inside, here the 4 finite ones
    np.testing.assert_array_equal(
        with_clean_tail(inside, outside, 0.1), np.r_[inside, 100.0, 110.0, 120.0, 130.0]
    )
    # 2.5%: round(0.025 / 0.975 * 90) = 2, the lowest two
    np.testing.assert_array_equal(
        with_clean_tail(inside, outside, 0.025), np.r_[inside, 100.0, 110.0]
    )
    np.testing.assert_array_equal(with_clean_tail(inside, outside, 0.0), inside)


@pytest.mark.parametrize("start", ["trimmed", "neighbors"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_boundary_lets_through_the_normals_a_trimmed_start_leaves_out(start, seed):
    # On a clean set a trimmed start keeps less than two thirds of the samples:
    # a boundary from the kept samples' held-out scores alone flags about half
    # of new normal samples on these seeds, against a target of 5%. The
    # normals it left out, inside the outer fence, count for the boundary.
    X, _ = planted(seed, n_normal=400, n_anomalous=0)
    X_new, _ = planted(10 + seed, n_normal=20_000, n_anomalous=0)
    refiner = IQRRefiner(
        EllipticEnvelope(), start=start, start_fraction=0.25, random_state=0
    ).fit(X)
    assert refiner.inlier_mask_.mean() < 2 / 3
    assert (refiner.predict(X_new) == -1).mean() < 0.25


def test_float_contamination_is_a_fraction_of_the_full_training_set():
    X, _ = planted(0, n_normal=180, n_anomalous=20)
    refiner = IQRRefiner(
        IsolationForest(n_estimators=20), contamination=0.25, random_state=0
    ).fit(X)
    assert refiner.offset_ == pytest.approx(np.percentile(refiner.score_samples(X), 25))
    assert (refiner.predict(X) == -1).mean() == pytest.approx(0.25, abs=0.01)


def test_wraps_a_pyod_detector_with_sklearn_signs():
    from pyod.models.knn import KNN

    X, _ = planted(0, n_normal=180, n_anomalous=20, n_features=3, shift=8.0)
    X_test, is_anomalous_test = planted(1, n_normal=100, n_anomalous=100, n_features=3)
    y_test = normal_label(is_anomalous_test)
    pyod_refiner = IQRRefiner(KNN()).fit(X)
    sklearn_refiner = IQRRefiner(IsolationForest(n_estimators=50), random_state=0).fit(
        X
    )
    pyod_decision = pyod_refiner.decision_function(X_test)
    assert roc_auc_score(y_test, pyod_decision) > 0.9
    assert roc_auc_score(y_test, sklearn_refiner.decision_function(X_test)) > 0.9
    assert (
        np.corrcoef(pyod_decision, sklearn_refiner.decision_function(X_test))[0, 1]
        > 0.5
    )
    prediction = pyod_refiner.predict(X_test)
    assert set(np.unique(prediction)) == {-1, 1}
    assert (prediction[is_anomalous_test] == -1).mean() > 0.9


def test_score_is_delegated_when_the_estimator_has_one():
    X, _ = planted(0, n_normal=90, n_anomalous=10, n_features=2)
    refiner = IQRRefiner(KernelDensity(bandwidth=0.5)).fit(X)
    assert refiner.score(X[:20]) == refiner.estimator_.score(X[:20])
    assert not hasattr(IQRRefiner(IsolationForest()), "score")
    assert not hasattr(IQRRefiner(IsolationForest()).fit(X), "score")


def test_feature_names_are_checked_and_forwarded():
    pd = pytest.importorskip("pandas")
    X, _ = planted(0, n_normal=90, n_anomalous=10, n_features=2)
    frame = pd.DataFrame(X, columns=["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refiner = IQRRefiner(IsolationForest(n_estimators=10), random_state=0)
        refiner.fit(frame).predict(frame)
    np.testing.assert_array_equal(refiner.feature_names_in_, ["a", "b"])
    np.testing.assert_array_equal(refiner.estimator_.feature_names_in_, ["a", "b"])
    with pytest.raises(ValueError, match="feature names"):
        refiner.predict(frame[["b", "a"]])


# randomness


def test_random_state_is_passed_down():
    X, _ = planted(0, n_normal=90, n_anomalous=10, n_features=2)
    forest = IsolationForest(n_estimators=10)
    assert IQRRefiner(forest, random_state=3).fit(X).estimator_.random_state == 3
    drawn = IQRRefiner(forest, random_state=np.random.RandomState(3)).fit(X)
    assert isinstance(drawn.estimator_.random_state, int)
    assert drawn.estimator_.random_state != 3
    assert forest.random_state is None


def test_int_random_state_makes_the_first_round_the_bare_fit():
    # With an int seed, refined and bare detectors differ only by refinement:
    # a fence that removes nothing gives the bare detector's scores exactly.
    X, _ = planted(0, n_normal=90, n_anomalous=10, n_features=2)
    bare = IsolationForest(n_estimators=10, random_state=5).fit(X)
    refiner = IQRRefiner(IsolationForest(n_estimators=10), k=1e9, random_state=5)
    refiner.fit(X)
    assert refiner.inlier_mask_.all()
    np.testing.assert_array_equal(refiner.score_samples(X), bare.score_samples(X))


def test_random_state_none_keeps_the_estimators_own():
    X, _ = planted(0, n_normal=90, n_anomalous=10, n_features=2)
    forest = IsolationForest(n_estimators=10, random_state=7)
    assert IQRRefiner(forest).fit(X).estimator_.random_state == 7
    lof = IQRRefiner(LocalOutlierFactor(novelty=True), random_state=0).fit(X)
    assert "random_state" not in lof.estimator_.get_params()


def test_random_state_seeds_the_steps_of_a_pipeline():
    # Only the detector's own random_state was set: a refined Pipeline gave
    # other scores on every fit with the same seed.
    X, _ = planted(0, n_normal=90, n_anomalous=10, n_features=3)
    pipeline = make_pipeline(StandardScaler(), IsolationForest(n_estimators=10))
    fits = [IQRRefiner(pipeline, random_state=4).fit(X) for _ in range(2)]
    assert fits[0].estimator_[-1].random_state == 4
    np.testing.assert_array_equal(fits[0].score_samples(X), fits[1].score_samples(X))
    assert pipeline[-1].random_state is None


@pytest.mark.parametrize("fence_scores", ["in_sample", "oof"])
def test_fit_is_deterministic(fence_scores):
    X, _ = planted(0, n_normal=180, n_anomalous=20, n_features=3, shift=4.0)
    fits = [
        IQRRefiner(
            IsolationForest(n_estimators=10),
            fence_scores=fence_scores,
            cv=3,
            random_state=42,
        ).fit(X)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(fits[0].removed_at_iter_, fits[1].removed_at_iter_)
    np.testing.assert_array_equal(fits[0].thresholds_, fits[1].thresholds_)
    np.testing.assert_array_equal(fits[0].score_samples(X), fits[1].score_samples(X))


# composition


def test_in_pipeline_and_grid_search():
    X, is_anomalous = planted(0, n_normal=180, n_anomalous=20, n_features=4)
    X = X * [1.0, 10.0, 0.1, 100.0]
    pipeline = make_pipeline(StandardScaler(), IQRRefiner(OneClassSVM()))
    search = GridSearchCV(
        pipeline,
        {
            "iqrrefiner__k": [1.5, 3.0],
            "iqrrefiner__estimator__gamma": ["scale", 0.01],
        },
        scoring="roc_auc",
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
    ).fit(X, normal_label(is_anomalous))
    assert len(search.cv_results_["params"]) == 4
    assert search.best_score_ > 0.95
    best = search.best_params_
    refiner = search.best_estimator_[-1]
    assert refiner.k == best["iqrrefiner__k"]
    assert refiner.estimator_.gamma == best["iqrrefiner__estimator__gamma"]


def test_invalid_parameters_are_rejected():
    X = column(np.arange(10))
    for params, name in [
        ({"k": -1.0}, "k"),
        ({"contamination": 0.6}, "contamination"),
        ({"min_samples": 0}, "min_samples"),
        ({"min_samples": 1.5}, "min_samples"),
        ({"refit": "hot"}, "refit"),
        ({"cv": 1}, "cv"),
    ]:
        with pytest.raises(ValueError, match=re.escape(f"'{name}' parameter")):
            IQRRefiner(ColumnDetector(), **params).fit(X)
    with pytest.raises(ValueError, match="'estimator' parameter"):
        IQRRefiner(StandardScaler()).fit(X)


def test_trimmed_start_removes_anomalies_the_full_start_cannot():
    # With 40% anomalies the third quartile of the full set lies among them.
    X, is_anomalous = planted(0, n_normal=240, n_anomalous=160, n_features=2)
    estimator = EllipticEnvelope(support_fraction=1.0)
    full = IQRRefiner(estimator).fit(X)
    trimmed = IQRRefiner(estimator, start="trimmed").fit(X)

    assert (~full.inlier_mask_[is_anomalous]).mean() < 0.5
    assert (~trimmed.inlier_mask_[is_anomalous]).mean() == 1.0
    # Normal samples outside the core were re-admitted.
    assert trimmed.inlier_mask_[~is_anomalous].mean() > 0.85
    assert trimmed.inlier_mask_[~is_anomalous].sum() > 0.5 * len(X)


def test_trimmed_rounds_by_hand(capsys):
    # Scores 0..99 and 30 far anomalies; the core is the lowest 65 scores.
    values = np.concatenate([np.arange(100), 1000 + np.arange(30)])
    refiner = IQRRefiner(ColumnDetector(), start="trimmed", verbose=1)
    refiner.fit(column(values))

    # Core 0..64: Q1 16, Q3 48, T = 96 re-admits 65..96. Only the first round
    # re-admits: kept 0..96, T = 144 removes nothing and 97..99 stay out.
    np.testing.assert_allclose(refiner.thresholds_, [96.0, 144.0])
    np.testing.assert_array_equal(refiner.inlier_mask_, values <= 96)
    np.testing.assert_array_equal(
        refiner.removed_at_iter_, np.where(values <= 96, -1, 0)
    )
    assert refiner.termination_condition_ == "no_change"
    assert capsys.readouterr().out.splitlines() == [
        "IQRRefiner round 1: fence T=96, removed 0, re-admitted 32, kept 97",
        "IQRRefiner round 2: fence T=144, removed 0, kept 97",
    ]


def test_trimmed_start_with_one_round_refits_on_what_it_readmitted():
    # One round from the core 0..64 re-admits up to its fence T = 96.
    values = np.concatenate([np.arange(100), 1000 + np.arange(30)])
    full = IQRRefiner(ColumnDetector()).fit(column(values))
    trimmed = IQRRefiner(ColumnDetector(), start="trimmed", max_iter=1)
    trimmed.fit(column(values))

    assert full.removed_at_iter_[values >= 1000].tolist() == [1] * 30
    assert trimmed.n_iter_ == 1
    assert trimmed.termination_condition_ == "max_iter"
    np.testing.assert_array_equal(trimmed.inlier_mask_, values <= 96)


def test_trimmed_start_validates_its_fraction():
    X = column(np.arange(10))
    for params, name in [
        ({"start": "middle"}, "start"),
        ({"start_fraction": 1.0}, "start_fraction"),
        ({"start_fraction": 0.0}, "start_fraction"),
    ]:
        with pytest.raises(ValueError, match=re.escape(f"'{name}' parameter")):
            IQRRefiner(ColumnDetector(), **params).fit(X)


def test_trimmed_start_validates_its_neighbors():
    X = column(np.arange(10))
    for value in [0, 0.0, 1.0, -0.5]:
        with pytest.raises(ValueError, match=re.escape("'start_neighbors' parameter")):
            IQRRefiner(ColumnDetector(), start="neighbors", start_neighbors=value).fit(X)


def test_neighbour_distances_match_a_brute_force_search():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(30, 3)) * [1.0, 10.0, 100.0]
    X[5] = X[4]  # a duplicate is a neighbour at distance 0
    standardised = (X - X.mean(axis=0)) / X.std(axis=0)
    pairwise = np.linalg.norm(standardised[:, None] - standardised[None], axis=2)
    np.fill_diagonal(pairwise, np.inf)
    for n_neighbors in [1, 2, 7, 29]:
        expected = np.sort(pairwise, axis=1)[:, n_neighbors - 1]
        np.testing.assert_allclose(neighbour_distances(X, n_neighbors), expected)
    assert neighbour_distances(X, 1)[4] == neighbour_distances(X, 1)[5] == 0.0
    for bad in [0, 30]:
        with pytest.raises(ValueError, match=f"n_neighbors={bad}"):
            neighbour_distances(X, bad)
    with pytest.raises(TypeError, match="must be an int, got float 1.0"):
        neighbour_distances(X, 1.0)
    with pytest.raises(ValueError, match="2D array"):
        neighbour_distances(X[:, 0], 1)
    with pytest.raises(ValueError, match="NaN"):
        neighbour_distances(np.where(X > 2, np.nan, X), 1)


def test_neighbour_distances_ignore_constant_features():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(20, 2))
    with_constant = np.column_stack([X, np.full(20, 5.0)])
    np.testing.assert_allclose(
        neighbour_distances(with_constant, 3), neighbour_distances(X, 3)
    )


def tight_groups_among_broad_normals(seed):
    """100 broad normal samples and three tight groups of 15 anomalies."""
    rng = np.random.RandomState(seed)
    normal = rng.normal(size=(100, 2))
    centres = np.array([[6.0, 0.0], [0.0, 6.0], [-6.0, -6.0]])
    groups = [centre + 0.01 * rng.normal(size=(15, 2)) for centre in centres]
    X = np.vstack([normal, *groups])
    return X, np.arange(len(X)) >= 100


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbors_start_keeps_tight_anomaly_groups_out_of_the_core(seed):
    # To a kernel density, a tight group is the densest place of all: the
    # core from a fit on everything takes the groups, and an in-sample fence
    # never removes them. A group of 15 has to reach outside itself for its
    # 29th neighbour, so the neighbour ranking leaves it out.
    X, is_anomalous = tight_groups_among_broad_normals(seed)
    density = KernelDensity(bandwidth=0.3)
    params = {"start_fraction": 0.3, "refit": "cold"}
    trimmed = IQRRefiner(density, start="trimmed", **params).fit(X)
    neighbors = IQRRefiner(
        density, start="neighbors", start_neighbors=0.2, **params
    ).fit(X)

    assert trimmed.inlier_mask_[is_anomalous].mean() > 0.9
    assert not neighbors.inlier_mask_[is_anomalous].any()
    # The whole core, 30% of the training set, is normal and kept.
    assert neighbors.inlier_mask_.sum() >= np.ceil(0.3 * len(X))
    auroc = roc_auc_score(normal_label(is_anomalous), neighbors.score_samples(X))
    assert auroc == 1.0


def test_neighbors_start_ends_where_trimmed_does_when_scores_ignore_the_fit():
    # The concentration steps of a detector whose scores do not depend on
    # its training samples reach the lowest scores from any first core.
    rng = np.random.RandomState(0)
    X = np.column_stack([rng.permutation(100).astype(float), rng.normal(size=100)])
    trimmed = IQRRefiner(ColumnDetector(), start="trimmed").fit(X)
    for start_neighbors in [1, 0.3]:
        neighbors = IQRRefiner(
            ColumnDetector(), start="neighbors", start_neighbors=start_neighbors
        ).fit(X)
        np.testing.assert_array_equal(neighbors.inlier_mask_, trimmed.inlier_mask_)
        np.testing.assert_array_equal(
            neighbors.removed_at_iter_, trimmed.removed_at_iter_
        )


def test_start_neighbors_counts_from_the_training_set():
    # 40 samples: 0.1 is the 4th neighbour; counts beyond the last neighbour
    # mean the farthest sample.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 2))
    for start_neighbors, n_neighbors in [(0.1, 4), (0.01, 1), (3, 3), (500, 39)]:
        refiner = IQRRefiner(
            KernelDensity(), start="neighbors", start_neighbors=start_neighbors
        )
        first_core = {}

        def record(X, n_neighbors, _original=neighbour_distances):
            first_core["n_neighbors"] = n_neighbors
            return _original(X, n_neighbors)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sklearn_metarefine._rounds.neighbour_distances", record)
            refiner.fit(X)
        assert first_core["n_neighbors"] == n_neighbors


def test_held_out_scores_all_infinite_name_the_detector_and_the_way_out():
    # The error said only "scores are all infinite; the fence is undefined."
    X = np.random.RandomState(0).normal(size=(30, 2))
    narrow = KernelDensity(kernel="tophat", bandwidth=1e-3)
    with pytest.raises(ValueError, match="KernelDensity, fitted without each of 5 folds "
                       "of the 30 samples.*fence_scores='in_sample'"):
        IQRRefiner(narrow, random_state=0).fit(X)
    # Copies share their fold: 4 distinct samples make 4 folds.
    with pytest.raises(ValueError, match="without each of 4 folds of the 40 samples"):
        IQRRefiner(narrow, random_state=0).fit(np.repeat(X[:4], 10, axis=0))
    IQRRefiner(narrow, fence_scores="in_sample", contamination=0.1).fit(X)


class _NaNBeyondRange(OutlierMixin, BaseEstimator):
    """Gaussian log-density, NaN for samples 20 standard deviations or more
    out and for those below the ``nan_fraction`` quantile of the first feature."""

    def __init__(self, nan_fraction=0.0):
        self.nan_fraction = nan_fraction

    def fit(self, X, y=None):
        X = validate_data(self, X)
        self.mean_, self.scale_ = X.mean(0), X.std(0)
        self.cut_ = -np.inf
        if self.nan_fraction:
            self.cut_ = np.quantile(X[:, 0], self.nan_fraction)
        return self

    def score_samples(self, X):
        X = validate_data(self, X, reset=False)
        scores = -0.5 * (((X - self.mean_) / self.scale_) ** 2).sum(1)
        scores[scores < -200.0] = np.nan
        scores[X[:, 0] < self.cut_] = np.nan
        return scores


def _normal_and_far(seed=0):
    rng = np.random.RandomState(seed)
    return np.vstack([rng.normal(size=(95, 2)), rng.normal(15, 0.3, size=(5, 2))])


def test_samples_the_detector_cannot_score_are_flagged_not_passed():
    # A removed sample the final model scores NaN made a float contamination's
    # offset_ NaN, and predict called every sample normal.
    X = _normal_and_far()
    for contamination in (0.1, "auto"):
        refiner = IQRRefiner(
            _NaNBeyondRange(), contamination=contamination, random_state=0
        ).fit(X)
        assert np.isfinite(refiner.offset_)
        assert np.isnan(refiner.score_samples([[30.0, 30.0]])).all()
        np.testing.assert_array_equal(refiner.predict([[30.0, 30.0]]), [-1])
        if contamination == 0.1:
            assert (refiner.predict(X) == -1).sum() == 10
            assert (refiner.predict(X[95:]) == -1).all()


def test_nan_fence_scores_name_the_detector_and_the_round():
    # The error said only "scores contain NaN; the fence is undefined."
    X = _normal_and_far()
    for fence_scores in ("oof", "in_sample"):
        with pytest.raises(ValueError, match=(
                r"_NaNBeyondRange gives NaN anomaly scores to \d+ of the 100 samples "
                r"kept after round 0 \(scored by .*\): the fence is undefined")):
            IQRRefiner(_NaNBeyondRange(nan_fraction=0.5), fence_scores=fence_scores,
                       random_state=0).fit(X)


def test_lof_without_novelty_inside_a_pipeline_is_refused_with_the_fix():
    X = _normal_and_far()
    pipeline = make_pipeline(StandardScaler(), LocalOutlierFactor())
    with pytest.raises(ValueError, match=re.escape(
            "set_params(localoutlierfactor__novelty=True)")):
        IQRRefiner(pipeline).fit(X)
    pipeline.set_params(localoutlierfactor__novelty=True)
    assert IQRRefiner(pipeline, random_state=0).fit(X).predict(X[95:]).min() == -1


@pytest.mark.parametrize("start", ["trimmed", "neighbors"])
def test_a_trimmed_start_that_stops_at_once_fits_on_the_kept_rows(start):
    # The core's model is fitted on distinct rows; when the first round stops
    # the refinement, estimator_ was left fitted without the kept copies.
    from sklearn.mixture import GaussianMixture

    rng = np.random.RandomState(0)
    normal = rng.normal(size=(100, 2))
    X = np.vstack([normal, normal[:30], normal[:30], rng.normal(6, 0.5, (40, 2))])
    refiner = IQRRefiner(GaussianMixture(1, random_state=0), start=start, k=0.0,
                         min_samples=1.0, random_state=0).fit(X)
    assert refiner.n_iter_ == 1 and refiner.termination_condition_ == "min_samples"
    by_hand = GaussianMixture(1, random_state=0).fit(X[refiner.inlier_mask_])
    np.testing.assert_allclose(refiner.estimator_.means_, by_hand.means_)


class _FitsOnlyTheWholeSet(OutlierMixin, BaseEstimator):
    def fit(self, X, y=None):
        if len(X) < 40:
            raise ValueError(f"got {len(X)} rows")
        self.mean_ = np.mean(X, axis=0)
        return self

    def score_samples(self, X):
        return -np.square(X - self.mean_).sum(1)


def test_a_failed_fold_fit_counts_the_folds_that_copies_leave():
    # The message said "fold 1 of 5" where copies sharing folds made 4.
    X = np.repeat(np.random.RandomState(0).normal(size=(4, 2)), 10, axis=0)
    with pytest.raises(RuntimeError, match=re.escape(
            "Fitting _FitsOnlyTheWholeSet on fold 1 of 4 (30 of the 40 samples kept "
            "after round 0) failed: got 30 rows")):
        IQRRefiner(_FitsOnlyTheWholeSet(), random_state=0).fit(X)


@pytest.mark.parametrize("params", [
    {"start": "full", "min_samples": 0.05},
    {"start": "neighbors", "start_fraction": 0.1, "min_samples": 0.5},
    {"start": "trimmed", "start_fraction": 0.3, "min_samples": 2},
])
def test_the_size_the_few_samples_warning_advises_is_the_smallest_that_is_enough(
    params,
):
    # It was found by trying every size up to 100 times the training set's
    # (5.9 s at 64,000 samples when none is enough); now by bisection.
    from sklearn_metarefine._sizes import smallest_kept, warn_if_held_out_from_few

    refiner = IQRRefiner(**params, cv=7)
    keys = ("start", "start_fraction", "min_samples")
    kept = {key: getattr(refiner, key) for key in keys}
    for n_samples in (4, 9, 30, 61):
        if smallest_kept(n_samples, **kept) >= 7:
            continue
        with pytest.warns(UserWarning) as caught:
            warn_if_held_out_from_few(refiner, n_samples)
        scan = next((n for n in range(n_samples + 1, 100 * n_samples + 1000)
                     if smallest_kept(n, **kept) >= 7), None)
        advice = f"at least {scan} samples" if scan else "more samples (and min_samples"
        assert advice in str(caught[0].message)


@pytest.mark.parametrize("start", ["full", "neighbors"])
@pytest.mark.parametrize("fence_scores", ["oof", "in_sample"])
def test_a_dataframe_reaches_the_detector_as_a_dataframe(start, fence_scores):
    # Arrays were passed on: a Pipeline choosing its columns by name failed
    # inside scikit-learn ("columns using strings ... only for dataframes").
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer

    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(size=(200, 3)), rng.normal(6, 1, size=(20, 3))]
    names = ["width", "height", "noise"]
    frame = pd.DataFrame(X, columns=names, index=np.arange(220)[::-1] * 3 + 7)
    columns = ColumnTransformer([("size", StandardScaler(), ["width", "height"])])
    detector = make_pipeline(columns, EllipticEnvelope(random_state=0))
    params = dict(start=start, fence_scores=fence_scores, random_state=0)
    by_name = IQRRefiner(detector, **params).fit(frame)
    assert list(by_name.feature_names_in_) == ["width", "height", "noise"]
    assert not by_name.inlier_mask_[200:].any()

    by_position = ColumnTransformer([("size", StandardScaler(), [0, 1])])
    plain = make_pipeline(by_position, EllipticEnvelope(random_state=0))
    on_array = IQRRefiner(plain, **params).fit(X)
    np.testing.assert_array_equal(by_name.inlier_mask_, on_array.inlier_mask_)
    assert by_name.offset_ == on_array.offset_
    np.testing.assert_array_equal(by_name.predict(frame), on_array.predict(X))
    np.testing.assert_array_equal(
        by_name.score_samples(frame.iloc[::-1]), on_array.score_samples(X[::-1])
    )
    with pytest.raises(ValueError, match="feature names"):
        by_name.predict(frame[["height", "width", "noise"]])


def test_column_names_on_one_side_are_warned_about_once():
    # The refiner warned, then the detector it had fitted on the DataFrame.
    pd = pytest.importorskip("pandas")
    X = np.random.RandomState(0).normal(size=(100, 2))
    refiner = IQRRefiner(EllipticEnvelope(random_state=0), random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b"])
    on_array = clone(refiner).fit(X)
    refiner.fit(frame)
    for method, rows, said in [
        (refiner.predict, X[:5], "does not have valid feature names"),
        (refiner.score_samples, X[:5], "does not have valid feature names"),
        (on_array.predict, frame[:5], "has feature names"),  # the other way round
        (on_array.score_samples, frame[:5], "has feature names"),
    ]:
        with pytest.warns(UserWarning) as caught:
            method(rows)
        assert len(caught) == 1 and said in str(caught[0].message)
    # Labels that are not names (a frame's default 0, 1, ...): no names on either
    # side, and the detector gets the frame at scoring as in the fit.
    by_label = make_pipeline(
        FunctionTransformer(lambda frame: frame.loc[:, [0]]), EllipticEnvelope()
    )
    labelled = IQRRefiner(by_label, random_state=0).fit(pd.DataFrame(X))
    labelled.score_samples(pd.DataFrame(X[:5]))  # an array has no .loc


@pytest.mark.parametrize("start", ["full", "neighbors"])
@pytest.mark.parametrize("dtype", ["bool", "Int64"])
def test_a_dataframe_with_bool_or_nullable_columns_is_refined(start, dtype):
    # numpy makes an object array of such a frame, which np.unique(axis=0)
    # refused: "The axis argument to unique is not supported for dtype object".
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    X = np.c_[rng.rand(120) < 0.5, rng.randint(0, 5, 120), rng.normal(size=120)]
    frame = pd.DataFrame(X, columns=["flag", "count", "size"])
    frame[["flag", "count"]] = frame[["flag", "count"]].astype(dtype)
    params = dict(start=start, random_state=0)
    forest = IsolationForest(n_estimators=20, random_state=0)
    on_frame = IQRRefiner(forest, **params).fit(frame)
    X = frame.to_numpy(dtype=np.float64)  # what the forest makes of the frame
    on_array = IQRRefiner(forest, **params).fit(X)
    np.testing.assert_array_equal(on_frame.inlier_mask_, on_array.inlier_mask_)
    np.testing.assert_allclose(on_frame.score_samples(frame), on_array.score_samples(X))


@pytest.mark.parametrize("categorical", [False, True])
def test_text_columns_are_refused_by_name(categorical):
    # pandas' "could not convert string to float: 'x'" named neither the
    # refiner nor the column (a categorical one passed scikit-learn's check
    # as objects and failed so later).
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame["colour"] = rng.choice(["red", "blue"], 60)
    if categorical:
        frame["colour"] = frame["colour"].astype("category")
    refiner = IQRRefiner(IsolationForest(n_estimators=10), random_state=0)
    with pytest.raises(ValueError, match=r"numeric columns only.* 1 that are not: "
                       r"'colour'\. Encode them"):  # fmt: skip
        refiner.fit(frame)
    fitted = refiner.fit(frame[["a", "b"]].assign(colour=1.0))
    with pytest.raises(ValueError, match=r"1 that are not: 'colour'"):
        fitted.score_samples(frame)
    # A column the fit did not see is a names mismatch, said as such.
    fitted = refiner.fit(frame[["a", "b"]])
    with pytest.raises(ValueError, match="Feature names unseen at fit time"):
        fitted.score_samples(frame)


@pytest.mark.parametrize("owner", ["IQRRefiner", "PatchFlowDetector"])
def test_nested_parameters_of_a_default_left_none_are_refused_with_the_fix(owner):
    # scikit-learn's set_params: "'NoneType' object has no attribute
    # 'set_params'", also through GridSearchCV.
    from sklearn_metarefine import FlowDetector, MAMLFlowDetector, PatchFlowDetector

    if owner == "IQRRefiner":
        estimator, name, given = IQRRefiner(), "estimator", MAMLFlowDetector()
        nested = {"estimator__alpha": 0.0}
    else:
        estimator, name, given = PatchFlowDetector(), "flow", FlowDetector()
        nested = {"flow__max_epochs": 2}
    with pytest.raises(ValueError, match=rf"but {name}=None.* the default is {owner}"):
        clone(estimator).set_params(**nested)
    (key, value), = nested.items()
    both = clone(estimator).set_params(**{name: given}, **nested)
    assert getattr(both, name).get_params()[key.split("__")[1]] == value
    after = clone(estimator).set_params(**{name: given}).set_params(**nested)
    assert getattr(after, name).get_params()[key.split("__")[1]] == value


def test_fractions_of_the_training_set_count_as_written():
    # 0.07 * 100 is 7.000000000000001 in floats: min_samples=0.07 of 100
    # samples asked for 8, and so did a core of start_fraction=0.07.
    assert resolve_min_samples(0.07, 100) == 7
    assert core_size(0.07, 100) == 7
    assert resolve_start_neighbors(0.28, 25) == 7
    assert resolve_min_samples(np.float64(0.5), 133) == 67  # still rounded up


def test_held_out_warning_counts_no_more_than_the_training_set():
    # min_samples=10 of 4 samples: the kept set is the 4 samples, and the
    # warning about held-out scores from a handful of them must still come.
    X = np.random.RandomState(0).normal(size=(4, 2))
    with pytest.warns(UserWarning) as caught:
        IQRRefiner(EllipticEnvelope(), min_samples=10).fit(X)
    messages = [str(w.message) for w in caught]
    assert any("may hold as few as 4 of the 4 training" in m for m in messages)
    assert any(m.startswith("min_samples=10 is not below the 4") for m in messages)
