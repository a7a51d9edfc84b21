"""PatchFlowDetector: the position code, maps, cleaning, threshold and parameters."""

import re

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_metarefine import FlowDetector, MAMLFlowDetector, PatchFlowDetector
from sklearn_metarefine._flows import DivergenceError
from sklearn_metarefine._patch._flow import positional_code
from sklearn_metarefine._scores import iqr_fence, majority_fence
from test_patch import SIZE, plant_discs, textures

SMALL_FLOW = {"n_blocks": 2, "hidden_size": 16, "max_epochs": 10, "batch_size": 64}


def grids(n, seed, defect=None, size=(4, 4), n_channels=3):
    """Rows of ``size`` grids of patch vectors near one of two prototypes;
    with ``defect`` each image gets that vector in one random cell, returned."""
    rng = np.random.RandomState(seed)
    prototypes = np.array([[1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])[:, :n_channels]
    n_cells = size[0] * size[1]
    cells = prototypes[rng.randint(0, 2, (n, n_cells))]
    cells = cells + rng.normal(0, 0.1, cells.shape)
    where = rng.randint(0, n_cells, n)
    if defect is not None:
        cells[np.arange(n), where] = defect + rng.normal(0, 0.1, (n, n_channels))
    return cells.reshape(n, -1), where


def small(**params):
    """A detector on 4 x 4 grids of rows with a small, seeded flow."""
    defaults = dict(
        backbone=None,
        grid_shape=(4, 4),
        flow=FlowDetector(**SMALL_FLOW),
        device="cpu",
        random_state=0,
    )
    return PatchFlowDetector(**{**defaults, **params})


@pytest.fixture(scope="module")
def surfaces():
    train = textures(12, seed=0)
    normal_test = textures(4, seed=1)
    defective, masks = plant_discs(textures(4, seed=2), seed=3)
    return train, normal_test, defective, masks


@pytest.fixture(scope="module")
def fitted(surfaces):
    # a float contamination needs no held-out fits: one flow is fitted
    det = PatchFlowDetector(
        image_size=SIZE, contamination=0.1, device="cpu", random_state=0
    )
    return det.fit(surfaces[0])


def test_position_code_tells_every_cell_apart_and_drops_constant_columns():
    code = positional_code((3, 5), 2)
    assert code.shape[0] == 15 and code.dtype == np.float64
    assert len(np.unique(code.round(9), axis=0)) == 15
    assert np.all(np.ptp(code, axis=0) > 0)
    np.testing.assert_allclose(code[0, :2], [np.sin(np.pi / 6), np.cos(np.pi / 6)])
    assert positional_code((3, 5), 0).shape == (15, 0)
    # one cell: no position to code
    assert positional_code((1, 1), 3).shape == (1, 0)
    # one row: only the column coordinate varies
    assert positional_code((1, 4), 1).shape == (4, 2)


def test_rows_hold_the_patch_vectors_then_their_cell_code():
    X, _ = grids(5, seed=0)
    det = small(contamination=0.1).fit(X)
    patches = det._as_patches(X)
    rows = det._rows(patches)
    # 4 x 4 cells: 3 directions per side, of the 8 columns of 2 frequencies.
    assert rows.shape == (5 * 16, 3 + det.code_.shape[1]) and det.code_.shape[1] == 6
    np.testing.assert_array_equal(rows[:, :3], X.reshape(-1, 3).astype(np.float32))
    np.testing.assert_array_equal(rows[16:32, 3:], det.code_)


def test_patch_scores_are_the_flow_nll_and_the_image_score_their_maximum():
    X, _ = grids(30, seed=0)
    det = small(contamination=0.1).fit(X)
    X_test, _ = grids(3, seed=1)
    nll = -det.flow_.score_samples(det._rows(det._as_patches(X_test)))
    maps = det.anomaly_map(X_test)
    assert maps.shape == (3, 4, 4) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.reshape(3, -1), nll.reshape(3, -1), rtol=1e-5)
    scores = det.score_samples(X_test)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, -nll.reshape(3, -1).max(1))


def test_the_map_of_a_grid_peaks_at_the_defective_cell():
    X, _ = grids(40, seed=0)
    det = small().fit(X)
    defective, where = grids(10, seed=1, defect=np.array([3.0, -3.0, 3.0]))
    maps = det.anomaly_map(defective)
    np.testing.assert_array_equal(maps.reshape(10, -1).argmax(1), where)
    np.testing.assert_array_equal(det.predict(defective), -1)
    normal, _ = grids(40, seed=2)
    # "auto": a false-alarm rate of 5% on unseen normal images
    assert (det.predict(normal) == -1).mean() <= 0.2


def test_map_maximum_lies_in_the_planted_defect(surfaces, fitted):
    train, normal_test, defective, masks = surfaces
    maps = fitted.anomaly_map(defective)
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == np.float32
    for image_map, mask in zip(maps, masks):
        assert mask.ravel()[image_map.argmax()]
    normal_peaks = fitted.anomaly_map(normal_test).max((1, 2))
    assert maps.max((1, 2)).min() > np.median(normal_peaks)
    # smoothing only averages patch scores: a map stays below the image score
    assert np.all(maps.max((1, 2)) <= -fitted.score_samples(defective) + 1e-3)


def test_maps_from_files_and_arrays_agree(surfaces, fitted, tmp_path):
    defective = surfaces[2]
    paths = []
    for i, image in enumerate(defective):
        paths.append(str(tmp_path / f"defect_{i}.png"))
        Image.fromarray(image).save(paths[-1])
    np.testing.assert_allclose(
        fitted.anomaly_map(paths), fitted.anomaly_map(defective), rtol=1e-5, atol=1e-3
    )
    np.testing.assert_allclose(
        fitted.score_samples(paths), fitted.score_samples(defective), rtol=1e-6
    )
    # one embedding gives both (what `metarefine score --maps` uses)
    scores, maps = fitted._scores_and_maps(paths)
    np.testing.assert_array_equal(scores, fitted.score_samples(paths))
    np.testing.assert_array_equal(maps, fitted.anomaly_map(paths))


def test_image_cleaning_drops_most_defective_training_images():
    normal, _ = grids(40, seed=0)
    defective, _ = grids(6, seed=1, defect=np.array([3.0, -3.0, 3.0]))
    X = np.vstack([normal, defective])
    det = small(image_cleaning=True).fit(X)
    assert det.inlier_mask_[40:].sum() <= 1
    assert det.inlier_mask_[:40].mean() >= 0.85
    assert det.train_scores_[40:].min() > np.median(det.train_scores_[:40])
    plain = small().fit(X)
    assert plain.inlier_mask_.all()
    # the flow fitted without them finds the defects less likely
    assert det.score_samples(defective).mean() < plain.score_samples(defective).mean()


def gaussian_rows(n, seed, n_defective=0, shift=8.0):
    """Rows of 2 x 2 grids of 3 values; the first ``n_defective`` shifted."""
    X = np.random.RandomState(seed).normal(size=(n, 12))
    X[:n_defective, :3] += shift
    return X


def row_flow(**params):
    flow = FlowDetector(n_blocks=2, hidden_size=8, max_epochs=5)
    return small(grid_shape=(2, 2), flow=flow, **params)


def test_auto_threshold_holds_when_a_third_of_the_images_are_defective():
    # The normal scores of the boundary lie inside the fence grown from the
    # lower half (majority_fence): the fence of all the held-out scores lies
    # among 20 defective images of 60 and flagged no defective image.
    det = row_flow().fit(gaussian_rows(60, 0, n_defective=20))
    defective = gaussian_rows(200, 1, n_defective=200)
    assert (det.predict(defective) == -1).mean() >= 0.95
    assert (det.predict(gaussian_rows(400, 2)) == -1).mean() <= 0.1


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_auto_threshold_flags_false_alarm_rate_of_clean_held_out_scores(rate):
    det = row_flow(false_alarm_rate=rate).fit(gaussian_rows(80, 0))
    assert np.mean(det.train_scores_ > -det.offset_) == pytest.approx(rate, abs=0.03)


def test_auto_threshold_counts_a_clean_tail_beyond_the_fence():
    # A quantile of the scores inside the fence alone lies too low: the
    # lowest scores beyond it, as many as a clean tail has there, count too.
    det = row_flow().fit(gaussian_rows(60, 0, n_defective=6))
    scores = det.train_scores_
    inside = scores <= majority_fence(scores, det.k)
    assert not inside.all()
    assert -det.offset_ > np.quantile(scores[inside], 1 - det.false_alarm_rate)


@pytest.mark.parametrize("k", [1.5, 3.0])
def test_image_cleaning_drops_the_images_beyond_the_fence_of_its_k(k):
    det = row_flow(image_cleaning=True, k=k).fit(gaussian_rows(60, 0, 6, shift=3.0))
    scores = det.train_scores_
    np.testing.assert_array_equal(det.inlier_mask_, scores <= iqr_fence(scores, k))
    between = (scores > iqr_fence(scores, k)) & (scores <= iqr_fence(scores, 2 * k))
    assert between.any()  # so that a fence of another k drops other images


def test_float_contamination_flags_that_fraction_of_the_training_images():
    X, _ = grids(40, seed=0)
    det = small(contamination=0.2).fit(X)
    assert det.train_scores_ is None
    assert (det.predict(X) == -1).mean() == pytest.approx(0.2, abs=0.03)


def test_the_flow_is_cloned_seeded_and_placed_on_the_device():
    X, _ = grids(12, seed=0)
    flow = MAMLFlowDetector(**SMALL_FLOW)
    det = small(flow=flow, contamination=0.1, random_state=3).fit(X)
    assert isinstance(det.flow_, MAMLFlowDetector) and not hasattr(flow, "net_")
    assert det.flow_.device == "cpu" and isinstance(det.flow_.random_state, int)
    again = clone(det).fit(X)
    np.testing.assert_array_equal(det.score_samples(X), again.score_samples(X))
    default = small(flow=None, contamination=0.1).fit(X)
    assert default.flow_.pca_components == 16 and default.flow_.n_blocks == 4


def test_bad_parameters_and_inputs_are_rejected(surfaces):
    X, _ = grids(6, seed=0)
    with pytest.raises(ValueError, match="grid_shape=\\(5, 5\\)"):
        PatchFlowDetector(backbone=None, grid_shape=(5, 5)).fit(X)
    with pytest.raises(InvalidParameterError, match="image_cleaning"):
        PatchFlowDetector(backbone=None, image_cleaning="patches").fit(X)
    with pytest.raises(InvalidParameterError, match="positional_code"):
        PatchFlowDetector(backbone=None, positional_code=-1).fit(X)
    with pytest.raises(InvalidParameterError, match="flow"):
        PatchFlowDetector(backbone=None, flow="flow").fit(X)
    with pytest.raises(ValueError, match="n_samples=1"):
        PatchFlowDetector(image_size=SIZE, device="cpu").fit(surfaces[0][:1])


def test_a_failed_refit_leaves_the_fitted_detector_as_it_was():
    # Patch grid, position code and feature step were set before the flows
    # were fitted: after a diverging refit on another grid the detector mixed
    # the new grid with the old flow, and scored without an error.
    X = np.random.RandomState(0).normal(size=(30, 12))
    flow = FlowDetector(n_blocks=2, hidden_size=8, max_epochs=2)
    det = PatchFlowDetector(
        backbone=None, grid_shape=(2, 2), flow=flow, device="cpu", random_state=0
    ).fit(X)
    before, scores = dict(vars(det)), det.score_samples(X[:3])
    det.set_params(grid_shape=(1, 4), flow=clone(flow).set_params(lr=1e6))
    with pytest.raises(DivergenceError):
        det.fit(X)
    assert det.grid_shape_ == (2, 2) and vars(det).keys() == before.keys()
    np.testing.assert_array_equal(det.score_samples(X[:3]), scores)
    fresh = PatchFlowDetector(
        backbone=None, flow=clone(flow).set_params(lr=1e6), device="cpu"
    )
    with pytest.raises(DivergenceError):
        fresh.fit(X)
    with pytest.raises(NotFittedError):
        fresh.predict(X[:3])


def test_two_one_patch_images_ask_for_more_before_the_held_out_fits():
    # The inner fold's flow refused its one row: "Found array with 1
    # sample(s) ... required by FlowDetector", naming neither the images nor
    # the way out.
    X = np.random.RandomState(0).normal(size=(2, 6))
    flow = FlowDetector(n_blocks=2, hidden_size=8, max_epochs=2)
    detector = PatchFlowDetector(backbone=None, flow=flow, device="cpu", random_state=0)
    with pytest.raises(ValueError, match="n_samples=2 images of 1 patch.*at least 3 images"):
        detector.fit(X)
    detector.set_params(contamination=0.1).fit(X)  # no held-out fits


def test_verbose_says_when_each_flow_is_fitted(capsys):
    # The held-out fits took seconds to minutes with no output at any verbose.
    X, _ = grids(10, seed=0)
    small(verbose=0).fit(X)
    assert capsys.readouterr().out == ""
    small(verbose=1).fit(X)
    lines = [re.sub(r" [0-9.]+ s$", "", line) for line in
             capsys.readouterr().out.splitlines()]
    stages = [f"flow fitted without fold {fold} of 5" for fold in range(1, 6)]
    stages.append("flow fitted on the 10 kept images")
    assert lines == [
        f"PatchFlowDetector: {stage}{end}"
        for stage in stages
        for end in ("...", ": done in")
    ]


def test_a_flow_that_is_not_a_flow_is_refused():
    # Any detector with score_samples was taken, its scores read as
    # log-likelihoods; an IQRRefiner as the flow ran for minutes on 30 rows.
    from sklearn.ensemble import IsolationForest

    X = np.random.RandomState(0).normal(size=(30, 12))
    detector = PatchFlowDetector(backbone=None, grid_shape=(2, 2), flow=IsolationForest())
    with pytest.raises(InvalidParameterError, match="'flow' parameter .*FlowDetector' or None"):
        detector.fit(X)


@pytest.mark.parametrize("grid_shape", [(2, 2), (3, 3), (4, 4), (4, 8), (1, 5)])
def test_the_position_code_spans_as_many_directions_as_it_has_columns(grid_shape):
    # Frequencies beyond a small grid's resolution alias to lower ones: on a
    # 4 x 4 grid the default code had 8 columns spanning 6 directions, and a
    # flow without PCA flagged 10% to 41% of new normal images at a 5% aim.
    code = positional_code(grid_shape, 2)
    centred = code - code.mean(axis=0)
    assert code.shape[1] > 0
    assert np.linalg.matrix_rank(centred) == code.shape[1]


def test_the_position_code_of_a_large_grid_keeps_every_frequency():
    code = positional_code((16, 16), 2)
    u = np.repeat((np.arange(16) + 0.5) / 16, 16)  # the row of each cell
    assert code.shape == (256, 8)
    np.testing.assert_allclose(code[:, 0], np.sin(np.pi * u))
    np.testing.assert_allclose(code[:, 5], np.cos(2 * np.pi * u))
