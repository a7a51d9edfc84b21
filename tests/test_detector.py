"""MetaRefineDetector: images in, refined flow out, sklearn's AUROC the right way round."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import config_context
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.utils._param_validation import InvalidParameterError, make_constraint

from sklearn_metarefine import (
    IQRRefiner,
    MAMLFlowDetector,
    MetaRefineDetector,
    PatchCoreDetector,
    PretrainedFeatures,
)
from sklearn_metarefine._patch._pair import build_bank
from sklearn_metarefine.datasets import load_digits_anomaly, make_contaminated

TINY_FLOW = {
    "n_blocks": 2,
    "hidden_size": 16,
    "max_epochs": 10,
    "pca_components": 8,
    "device": "cpu",
}
IMAGES = {"image_size": 32, "n_scales": 2}


@pytest.fixture(scope="module")
def contaminated_digits():
    digits = load_digits_anomaly(normal_digit=0)
    return make_contaminated(
        digits.images, digits.target, noise=0.1, test_size=20, random_state=0
    )


def _removed_fraction(mask, y_train):
    removed = ~mask
    return removed[y_train == 1].mean(), removed[y_train == 0].mean()


def test_image_input_marks_planted_anomalies_and_files_match_arrays(
    contaminated_digits, tmp_path
):
    data = contaminated_digits
    det = MetaRefineDetector(random_state=0, **IMAGES, **TINY_FLOW)
    det.fit(data.X_train)
    assert det.inlier_mask_.shape == (len(data.X_train),)
    bad_removed, good_removed = _removed_fraction(det.inlier_mask_, data.y_train)
    assert bad_removed > good_removed
    scores = det.score_samples(data.X_test)
    assert scores.dtype == np.float64
    assert roc_auc_score(data.y_test, -scores) > 0.8

    # The same images as PNG files (lossless for uint8) give the same model.
    paths = []
    for i, image in enumerate(data.X_train):
        paths.append(str(tmp_path / f"train_{i}.png"))
        Image.fromarray(image).save(paths[-1])
    test_paths = []
    for i, image in enumerate(data.X_test):
        test_paths.append(str(tmp_path / f"test_{i}.png"))
        Image.fromarray(image).save(test_paths[-1])
    from_files = MetaRefineDetector(random_state=0, **IMAGES, **TINY_FLOW).fit(paths)
    np.testing.assert_array_equal(from_files.inlier_mask_, det.inlier_mask_)
    np.testing.assert_allclose(from_files.score_samples(test_paths), scores, rtol=1e-6)
    assert set(np.unique(from_files.predict(test_paths))) <= {-1, 1}


def test_pandas_output_set_globally_changes_no_score(contaminated_digits):
    # The features reached the refiner as a DataFrame: fit indexed its columns
    # with row numbers (a KeyError), and a model fitted without the setting
    # warned of feature names it was never given.
    data = contaminated_digits
    det = MetaRefineDetector(random_state=0, **IMAGES, **TINY_FLOW).fit(data.X_train)
    expected = det.score_samples(data.X_test)
    with config_context(transform_output="pandas"), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*feature names")
        np.testing.assert_array_equal(det.score_samples(data.X_test), expected)
        again = MetaRefineDetector(random_state=0, **IMAGES, **TINY_FLOW)
        again.fit(data.X_train)
        np.testing.assert_array_equal(again.score_samples(data.X_test), expected)
        # A model file written before its pipeline kept arrays.
        del again.pipeline_.steps[0][1]._sklearn_output_config
        np.testing.assert_array_equal(again.score_samples(data.X_test), expected)


def test_views_of_the_features_reach_the_flow(contaminated_digits):
    det = MetaRefineDetector(
        n_views=2, max_iter=1, random_state=0, **IMAGES, **TINY_FLOW
    )
    det.fit(contaminated_digits.X_train[:40])
    features, refiner = det.pipeline_["features"], det.pipeline_["refiner"]
    assert isinstance(features, PretrainedFeatures) and isinstance(refiner, IQRRefiner)
    assert features.n_views_ == 2
    assert refiner.estimator_.n_views == 2
    assert refiner.estimator_.n_features_per_view_ == features.n_features_per_view_


def test_attributes_mirror_the_refiner():
    rng = np.random.RandomState(0)
    X = np.vstack([rng.normal(size=(90, 5)), rng.normal(6, 1, size=(10, 5))])
    det = MetaRefineDetector(backbone=None, random_state=0, **TINY_FLOW).fit(X)
    refiner = det.refiner_
    assert det.pipeline_.steps[-1][1] is refiner
    np.testing.assert_array_equal(det.inlier_mask_, refiner.inlier_mask_)
    np.testing.assert_array_equal(det.removed_at_iter_, refiner.removed_at_iter_)
    assert det.n_iter_ == refiner.n_iter_ and det.offset_ == refiner.offset_
    assert det.inlier_mask_[90:].sum() < 10
    np.testing.assert_allclose(det.score_samples(X), refiner.score_samples(X))
    with pytest.raises(ValueError, match="5 features"):
        det.score_samples(X[:, :4])


def test_repeated_training_images_are_fitted_once():
    # 25 copies of one image among 60: they were the densest "images" there
    # are, the core held copies only, and the model flagged every new image.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(61, 5))
    copies = np.vstack([X, np.repeat(X[60:], 25, axis=0)])
    single = MetaRefineDetector(backbone=None, random_state=0, **TINY_FLOW).fit(X)
    with pytest.warns(UserWarning, match="25 of the 86 training images repeat"):
        det = MetaRefineDetector(backbone=None, random_state=0, **TINY_FLOW).fit(copies)
    assert det.offset_ == single.offset_
    new = rng.normal(size=(200, 5))
    np.testing.assert_array_equal(det.score_samples(new), single.score_samples(new))
    np.testing.assert_array_equal(det.inlier_mask_[:61], single.inlier_mask_)
    assert (det.inlier_mask_[61:] == single.inlier_mask_[60]).all()
    assert (det.removed_at_iter_[61:] == single.removed_at_iter_[60]).all()


def test_verbose_rounds_say_they_count_distinct_images(capsys):
    # The rounds printed "kept 40" of a fit whose inlier_mask_ kept 45.
    X = np.random.RandomState(0).normal(size=(40, 5))
    copies = np.vstack([X, X[:5]])
    with pytest.warns(UserWarning, match="repeat"):
        MetaRefineDetector(backbone=None, random_state=0, verbose=1,
                           **TINY_FLOW).fit(copies)  # fmt: skip
    out = capsys.readouterr().out
    assert ("MetaRefineDetector: 45 training images, 40 distinct: the rounds below "
            "count distinct images") in out
    MetaRefineDetector(backbone=None, random_state=0, verbose=1, **TINY_FLOW).fit(X)
    assert "distinct" not in capsys.readouterr().out


def test_copies_whose_cnn_features_differ_by_rounding_are_fitted_once(
    contaminated_digits, monkeypatch
):
    # The CNN's arithmetic varies with the batch an image is in (1.6e-7 of the
    # norm between batches of 32 and of 1): such copies were fitted as images
    # of their own, without a warning, though the docs said otherwise.
    X = contaminated_digits.X_train[:40]
    embed = PretrainedFeatures.fit_transform

    def rounded_apart(self, X, y=None):
        features = embed(self, X, y)
        wobble = np.random.RandomState(0).uniform(-1e-6, 1e-6, features[40:].shape)
        features[40:] *= 1 + wobble
        return features

    monkeypatch.setattr(PretrainedFeatures, "fit_transform", rounded_apart)
    det = MetaRefineDetector(random_state=0, **IMAGES, **TINY_FLOW)
    with pytest.warns(UserWarning, match="3 of the 43 training images repeat .* "
                      "to the CNN's rounding"):
        det.fit(np.concatenate([X, X[[5, 3, 5]]]))
    np.testing.assert_array_equal(det.inlier_mask_[40:], det.inlier_mask_[[5, 3, 5]])
    # Feature vectors of the user's own (backbone=None) repeat only exactly:
    # relative to the norm, rows far from zero were merged (195 of 200 at a
    # mean of 10,000).
    far = np.random.RandomState(0).normal(10_000, 1, size=(200, 2))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*repeat other training images")
        MetaRefineDetector(backbone=None, random_state=0, **TINY_FLOW).fit(far)


def test_near_copies_are_judged_against_the_first_of_their_group():
    from sklearn_metarefine._samples import near_copies

    a, b, c = [1.0, 0], [1 + 0.8e-4, 0], [1 + 1.6e-4, 0]
    for rows, distinct, copy_of in [
        ([a, b, c], [0, 2], [0, 0, 1]),  # c is not a's copy through b
        ([a, c, b], [0, 1], [0, 1, 0]),
        ([[1.0, 0], [1.001, 0], [0, 1], [0, 0], [0, 0]], [0, 1, 2, 3], [0, 1, 2, 3, 3]),
    ]:
        found = near_copies(np.array(rows))
        np.testing.assert_array_equal(found[0], distinct)
        np.testing.assert_array_equal(found[1], copy_of)
    # Norms beyond float64 (1e200 squared) and drifting rows.
    huge = np.array([[1e200, 0], [1e200 * (1 + 1e-6), 0], [0, 1e200], [1e200, 1e200]])
    np.testing.assert_array_equal(near_copies(huge)[1], [0, 0, 1, 2])
    # Rows 1e400 apart in magnitude: scaled by the largest, the small ones
    # underflowed to zero and were compared as exact copies only.
    span = np.array([[1e200, 1], [1e-200, 0], [1e-200 * (1 + 1e-6), 0], [0, 1e-200]])
    np.testing.assert_array_equal(near_copies(span)[1], [0, 1, 1, 2])
    drift = np.c_[1 + 0.9e-4 * np.arange(100), np.zeros(100)]
    assert len(near_copies(drift)[0]) == 50


@pytest.mark.parametrize("n_images", [2, 3])
def test_fewer_than_four_images_are_refused_in_the_detectors_terms(n_images):
    # They warned of fits "on 0 images", then IQRRefiner refused "samples".
    X = np.random.RandomState(0).normal(size=(n_images, 4))
    det = MetaRefineDetector(backbone=None, random_state=0, **TINY_FLOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refusal = f"at least 4 training images .* got n_samples={n_images}"
        with pytest.raises(ValueError, match=refusal):
            det.fit(X)


def test_copies_of_one_image_are_refused_naming_the_count():
    X = np.repeat(np.random.RandomState(0).normal(size=(1, 5)), 30, axis=0)
    with pytest.raises(ValueError, match="1 distinct training image.* among its 30"):
        MetaRefineDetector(backbone=None, random_state=0, **TINY_FLOW).fit(X)


def test_patch_level_refusals_name_the_detector_the_user_fitted(capsys):
    # They named PatchCoreDetector, which the user never built.
    one = np.full((1, 32, 32, 3), 9, np.uint8)
    det = MetaRefineDetector(level="patch", image_size=32, random_state=0)
    with pytest.raises(ValueError, match="^n_samples=1: MetaRefineDetector needs"):
        det.fit(one)
    with pytest.raises(ValueError, match="copies of one image: MetaRefineDetector "):
        det.fit(np.repeat(one, 3, axis=0))
    images = np.random.RandomState(0).randint(0, 256, (4, 32, 32, 3), np.uint8)
    det.set_params(verbose=1).fit(images).score_samples(images)
    out = capsys.readouterr()
    assert "MetaRefineDetector:" in out.out
    assert "PatchCoreDetector" not in out.out + out.err
    # Only within the detector's own calls: a PatchCoreDetector names itself.
    with pytest.raises(ValueError, match="^n_samples=1: PatchCoreDetector needs"):
        PatchCoreDetector(image_size=32).fit(one)


def test_anomaly_map_before_fit_is_not_fitted_error():
    # It raised AttributeError: 'MetaRefineDetector' object has no attribute
    # 'detector_'.
    det = MetaRefineDetector(level="patch", image_size=32)
    for method in (det.anomaly_map, det._scores_and_maps):
        with pytest.raises(NotFittedError, match="MetaRefineDetector instance"):
            method(np.zeros((2, 32, 32, 3), np.uint8))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("level", ["image", "patch"])
def test_flattened_images_of_another_width_name_the_detector_called(level):
    # The message named PatchFeatures or PretrainedFeatures, which the user
    # never built.
    images = np.random.RandomState(0).randint(0, 256, (12, 32, 32, 3), np.uint8)
    flat = images.reshape(12, -1)
    shape = dict(image_size=32, input_shape=(32, 32, 3))
    detectors = [MetaRefineDetector(level=level, n_scales=1, cv=3, max_iter=1,
                                    random_state=0, **shape, **TINY_FLOW)]
    if level == "patch":
        detectors.append(PatchCoreDetector(**shape))
    for det in detectors:
        det.fit(flat)
        name = type(det).__name__
        with pytest.raises(ValueError, match=f"3069 features, but {name} is expecting"):
            det.predict(flat[:, :-3])
    features = PretrainedFeatures("efficientnet_lite0", **shape, n_scales=1).fit(flat)
    with pytest.raises(ValueError, match="but PretrainedFeatures is expecting"):
        features.transform(flat[:, :-3])  # on its own, it names itself


def test_a_small_training_set_warns_once_naming_the_detector_and_its_caller():
    # The refiner's warning named IQRRefiner and "samples", pointing into the
    # package's code, to a user who never built an IQRRefiner.
    X = np.random.RandomState(0).normal(size=(12, 4))
    det = MetaRefineDetector(backbone=None, random_state=0, **TINY_FLOW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det.fit(X)
    few = [w for w in caught if "the kept set may hold" in str(w.message)]
    assert len(few) == 1, [str(w.message) for w in caught]
    message = str(few[0].message)
    assert message.startswith("MetaRefineDetector: the kept set may hold as few as 4 ")
    assert "of the 12 training images" in message
    assert "Train on at least 17 images" in message
    assert few[0].filename == __file__


@pytest.mark.parametrize("n_samples, n_axes", [(30, 4), (50, 8), (120, 16)])
def test_small_training_sets_keep_their_images_and_a_working_boundary(
    n_samples, n_axes
):
    # 30 clean images: the core holds 8, its held-out folds fit on 6, so the
    # flow models 4 axes instead of 16 (which left those fits no residual and
    # kept 8 of the 30 images).
    rng = np.random.RandomState(0)
    mixing = rng.normal(size=(40, 40)) / 6 + np.eye(40)
    X, X_new = (rng.normal(size=(n, 40)) @ mixing for n in (n_samples, 400))
    params = {**TINY_FLOW, "pca_components": 16}
    det = MetaRefineDetector(backbone=None, random_state=0, **params).fit(X)
    assert det.refiner_.estimator_.components_.shape == (n_axes, 40)
    assert det.get_params()["pca_components"] == 16
    assert det.inlier_mask_.mean() >= 0.9
    assert 0.0 < np.mean(det.predict(X_new) == -1) <= 0.1


def test_the_axes_are_sized_by_images_not_by_views():
    # two near-identical views of 30 images: the core's folds fit on 6
    # images (12 rows), which span about 6 directions, not 12
    rng = np.random.RandomState(0)
    images = rng.normal(size=(30, 20))
    X = np.hstack([images, images + 0.01 * rng.normal(size=images.shape)])
    params = {**TINY_FLOW, "pca_components": 16, "n_views": 2}
    det = MetaRefineDetector(backbone=None, random_state=0, **params).fit(X)
    assert det.refiner_.estimator_.components_.shape == (4, 20)


def test_refinement_parameters_reach_the_refiner():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 5))
    params = {"start": "trimmed", "start_fraction": 0.4, "start_neighbors": 7, "k": 2.0}
    det = MetaRefineDetector(backbone=None, random_state=0, **params, **TINY_FLOW)
    refiner = det.fit(X).refiner_
    assert {name: refiner.get_params()[name] for name in params} == params
    assert MetaRefineDetector().start == "neighbors"
    with pytest.raises(ValueError, match="'start_neighbors' parameter"):
        MetaRefineDetector(backbone=None, start_neighbors=1.5).fit(X)


def test_grid_search_roc_auc_equals_the_hand_computed_auroc():
    """sklearn's "roc_auc" scorer with y = 1 normal / -1 anomalous is our AUROC."""
    rng = np.random.RandomState(0)
    X_train = np.vstack([rng.normal(size=(90, 4)), rng.normal(4, 1, size=(10, 4))])
    X_val = np.vstack([rng.normal(size=(20, 4)), rng.normal(4, 1, size=(20, 4))])
    is_anomalous = np.r_[np.zeros(20, int), np.ones(20, int)]
    X = np.vstack([X_train, X_val])
    # The documented conversion from the datasets' labels (1 = anomalous).
    y = np.r_[np.ones(len(X_train), int), np.where(is_anomalous == 1, -1, 1)]
    cv = PredefinedSplit(np.r_[np.full(len(X_train), -1), np.zeros(len(X_val))])
    grid = {"k": [1.0, 3.0], "alpha": [0.0, 0.05], "beta": [1e-3]}
    base = MetaRefineDetector(backbone=None, random_state=0, **TINY_FLOW)
    search = GridSearchCV(base, grid, scoring="roc_auc", cv=cv).fit(X, y)

    for params, reported in zip(
        search.cv_results_["params"], search.cv_results_["split0_test_score"]
    ):
        det = clone(base).set_params(**params).fit(X_train)
        by_hand = roc_auc_score(is_anomalous, -det.score_samples(X_val))
        assert reported == pytest.approx(by_hand, abs=1e-12)
        # Far above 0.5: the scorer did not silently report 1 - AUROC.
        assert by_hand > 0.8


def _constraint_texts(constraints):
    return sorted(str(make_constraint(c)) for c in constraints)


def test_every_forwarded_parameter_has_its_components_constraint():
    facade = MetaRefineDetector._parameter_constraints
    components = [PretrainedFeatures, MAMLFlowDetector, IQRRefiner, PatchCoreDetector]
    det = MetaRefineDetector(backbone="efficientnet_lite0", random_state=0)
    forwarded = det._build_pipeline(seed=0)
    reached = set(build_bank(det, seed=0).get_params(deep=False))
    for step in forwarded.named_steps.values():
        estimators = [step, getattr(step, "estimator", None)]
        for estimator in filter(None, estimators):
            reached |= set(estimator.get_params(deep=False))
    for name in MetaRefineDetector().get_params():
        # level chooses the components; it is the detector's own parameter
        if name in ("random_state", "verbose", "level"):
            continue
        assert name in reached, f"{name} reaches no component"
        owners = [c for c in components if name in c._parameter_constraints]
        assert owners, name
        for owner in owners:
            expected = owner._parameter_constraints[name]
            if name == "backbone" and None not in expected:
                expected = [*expected, None]  # None skips the feature step
            assert _constraint_texts(facade[name]) == _constraint_texts(expected), (
                f"{name}: the detector's constraint differs from {owner.__name__}'s"
            )


@pytest.mark.parametrize(
    "params, accepted",
    [
        ({"k": -1}, False),
        ({"min_samples": 1.0}, True),
        ({"max_iter": None}, True),
        ({"device": torch.device("cpu")}, True),
    ],
)
def test_the_detector_accepts_what_its_components_accept(params, accepted):
    X = np.random.RandomState(0).normal(size=(60, 4))
    det = MetaRefineDetector(
        backbone=None,
        pca_components=None,
        n_blocks=2,
        hidden_size=8,
        max_epochs=2,
        random_state=0,
        **{"device": "cpu", **params},
    )
    if accepted:
        assert det.fit(X).score_samples(X).shape == (60,)
    else:
        with pytest.raises(InvalidParameterError, match=next(iter(params))):
            det.fit(X)


def test_a_refit_at_the_other_level_leaves_no_attribute_of_the_first():
    # pipeline_, refiner_, thresholds_... of an image-level fit stayed after a
    # patch-level refit (and detector_ the other way round), describing a
    # model that no longer scores.
    X = np.random.RandomState(0).normal(size=(30, 8))
    det = MetaRefineDetector(
        backbone=None, max_iter=1, n_blocks=2, hidden_size=8, max_epochs=2,
        grid_shape=(2, 2), device="cpu", random_state=0,
    )  # fmt: skip
    image_level = set(vars(det.fit(X)))
    patch_level = set(vars(det.set_params(level="patch").fit(X)))
    assert {"pipeline_", "refiner_", "thresholds_"} <= image_level - patch_level
    assert "detector_" in patch_level
    assert set(vars(det.set_params(level="image").fit(X))) == image_level


def test_a_float_contamination_flags_that_share_of_every_training_image():
    # With repeated images the threshold was set on the distinct ones (3 of
    # 40 training images flagged for contamination=0.1; with 0.25, 18).
    rng = np.random.RandomState(0)
    base = rng.normal(size=(30, 4))
    X = np.vstack([base, np.repeat(base[:1], 10, axis=0)])
    det = MetaRefineDetector(
        backbone=None, contamination=0.1, pca_components=None, n_blocks=2,
        hidden_size=8, max_epochs=2, max_iter=2, cv=2, device="cpu", random_state=0,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="repeat other training images"):
        det.fit(X)
    assert np.sum(det.predict(X) == -1) == 4
    np.testing.assert_array_equal(det.pipeline_.predict(X), det.predict(X))


@pytest.mark.parametrize("Estimator", ["IQRRefiner", "MetaRefineDetector"])
def test_a_failed_refit_leaves_the_fitted_model_as_it_was(Estimator):
    # validate_data had set n_features_in_ to the new data's before the fit
    # failed: the old model could score neither the old nor the new data.
    from sklearn_metarefine import FlowDetector

    rng = np.random.RandomState(0)
    X4, X5 = rng.normal(size=(40, 4)), rng.normal(size=(40, 5))
    flow = dict(n_views=2, n_blocks=2, hidden_size=8, max_epochs=2, device="cpu")
    if Estimator == "IQRRefiner":
        det = IQRRefiner(FlowDetector(**flow), max_iter=1, cv=2, random_state=0)
    else:
        det = MetaRefineDetector(backbone=None, max_iter=1, cv=2, random_state=0, **flow)
    before = det.fit(X4).score_samples(X4[:3])
    with pytest.raises(ValueError, match="not a multiple of n_views=2"):
        det.fit(X5)
    np.testing.assert_array_equal(det.score_samples(X4[:3]), before)
    # and a first fit that fails leaves it unfitted
    unfitted = clone(det)
    with pytest.raises(ValueError, match="not a multiple of n_views=2"):
        unfitted.fit(X5)
    with pytest.raises(NotFittedError):
        unfitted.score_samples(X4[:3])
