"""scikit-learn's estimator checks on small, fast instances of every estimator."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_metarefine import (
    FlowDetector,
    IQRRefiner,
    MAMLFlowDetector,
    MetaRefineDetector,
)

SMALL_FLOW = {"n_blocks": 2, "hidden_size": 8, "max_epochs": 3, "batch_size": 64}

ESTIMATORS = [
    FlowDetector(**SMALL_FLOW),
    FlowDetector(pca_components=3, **SMALL_FLOW),
    MAMLFlowDetector(**SMALL_FLOW),
    IQRRefiner(FlowDetector(**SMALL_FLOW), max_iter=2),
    IQRRefiner(MAMLFlowDetector(**SMALL_FLOW), max_iter=2),
    MetaRefineDetector(backbone=None, max_iter=2, **SMALL_FLOW),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
