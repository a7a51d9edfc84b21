"""Pixel AUROC, AUPRO against a from-the-definition reference, the image scorer."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.ensemble import IsolationForest
from sklearn.metrics import get_scorer, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_metarefine import aupro, image_auroc, pixel_auroc


def reference_aupro(masks, maps, max_fpr):
    """AUPRO by its definition: one threshold at a time, one region at a time."""
    masks = np.asarray(masks, dtype=bool)
    regions = []
    for mask, anomaly_map in zip(masks, maps):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [anomaly_map[labels == k] for k in range(1, n + 1)]
    normal = maps[~masks]
    points = [(0.0, 0.0)]
    for threshold in np.sort(np.unique(maps))[::-1]:
        fpr = np.mean(normal >= threshold)
        pro = np.mean([np.mean(region >= threshold) for region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def random_case(seed, n_images=3, size=12, levels=None):
    rng = np.random.RandomState(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    for i in range(1, n_images):
        for _ in range(rng.randint(1, 3)):
            y, x = rng.randint(0, size - 3, size=2)
            h, w = rng.randint(1, 5, size=2)
            masks[i, y : y + h, x : x + w] = True
    maps = rng.rand(n_images, size, size) + 0.7 * masks
    if levels:  # coarse values: many ties
        maps = np.round(maps * levels) / levels
    return masks, maps


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("levels", [None, 4])
def test_aupro_matches_the_definition(seed, max_fpr, levels):
    masks, maps = random_case(seed, levels=levels)
    expected = reference_aupro(masks, maps, max_fpr)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


def test_aupro_of_a_perfect_map_is_one_and_of_a_reversed_map_zero():
    masks, _ = random_case(0)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0)


def test_aupro_of_a_constant_map_is_half_of_max_fpr_normalised():
    """One threshold takes every pixel at once: the curve is the diagonal."""
    masks, _ = random_case(1)
    assert aupro(masks, np.zeros(masks.shape)) == pytest.approx(0.15)
    assert aupro(masks, np.ones(masks.shape), max_fpr=0.1) == pytest.approx(0.05)


def test_aupro_of_a_random_map_is_near_half_of_max_fpr():
    """Unrelated scores find each region's pixels as often as normal pixels."""
    rng = np.random.RandomState(0)
    masks = np.zeros((4, 64, 64), dtype=bool)
    masks[1, 10:30, 10:20] = True
    masks[2, 40:42, 5:60] = True
    masks[3, 50:60, 50:60] = True
    assert aupro(masks, rng.rand(*masks.shape)) == pytest.approx(0.15, abs=0.01)


def test_aupro_by_hand_on_four_pixels():
    # Sorted by score: defect (.9), normal (.5), defect (.1), normal (0).
    # Curve: (0, 0) (0, .5) (.5, .5) (.5, 1) (1, 1).
    masks = np.array([[[1, 1, 0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.1, 0.5, 0.0]]])
    assert aupro(masks, maps) == pytest.approx(0.5)
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.75)


def test_aupro_of_the_mask_shifted():
    """A square of side 8 found 2 px to the right: overlap 6/8, 16 false pixels."""
    masks = np.zeros((1, 32, 32), dtype=bool)
    masks[0, 12:20, 12:20] = True
    maps = np.zeros((1, 32, 32))
    maps[0, 12:20, 14:22] = 1.0
    overlap, fpr = 6 / 8, 16 / (32 * 32 - 64)
    # From (0, 0) to (fpr, overlap), then straight towards (1, 1) up to 0.3.
    at_max = overlap + (1 - overlap) * (0.3 - fpr) / (1 - fpr)
    expected = (fpr * overlap / 2 + (0.3 - fpr) * (overlap + at_max) / 2) / 0.3
    assert aupro(masks, maps) == pytest.approx(expected)


def test_aupro_weighs_regions_equally_pixel_auroc_weighs_pixels():
    masks = np.zeros((1, 16, 16), dtype=bool)
    masks[0, 0:2, 0:2] = True  # 4 px
    masks[0, 8:14, 6:16] = True  # 60 px
    found_large_only = np.zeros((1, 16, 16))
    found_large_only[0, 8:14, 6:16] = 1.0
    # Regions: half found at once, then the diagonal: (0, 0) (0, .5) (1, 1).
    assert aupro(masks, found_large_only) == pytest.approx((0.15 + 0.0225) / 0.3)
    # Pixels: 60 of 64 defect pixels above every normal one, 4 tied with them.
    assert pixel_auroc(masks, found_large_only) == pytest.approx(60 / 64 + 4 / 64 / 2)


def test_regions_are_eight_connected_within_an_image_and_never_across():
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, :2, :2] = True  # a 2 x 2 block
    masks[0, 2, 2] = True  # touching it by a corner only
    found = np.zeros((1, 4, 4))
    found[0, 2, 2] = 1.0
    # One region of 5 px, one of them found: (0, 0) (0, .2) (1, 1).
    assert aupro(masks, found) == pytest.approx((0.2 * 0.3 + 0.8 * 0.09 / 2) / 0.3)

    two_images = np.zeros((2, 4, 4), dtype=bool)
    two_images[0, 0, 0] = True
    two_images[1, 0, 0] = two_images[1, 0, 1] = two_images[1, 1, 0] = True
    found = np.zeros((2, 4, 4))
    found[0, 0, 0] = 1.0
    # Two regions, one fully found: (0, 0) (0, .5) (1, 1).
    assert aupro(two_images, found) == pytest.approx((0.5 * 0.3 + 0.5 * 0.09 / 2) / 0.3)


def test_masks_as_png_values_or_a_single_image_give_the_same_result():
    masks, maps = random_case(2)
    expected = aupro(masks, maps)
    assert aupro(masks.astype(np.uint8) * 255, maps) == pytest.approx(expected)
    assert aupro(masks.astype(float), maps) == pytest.approx(expected)
    assert aupro(masks[1], maps[1]) == pytest.approx(aupro(masks[1:2], maps[1:2]))
    assert pixel_auroc(masks.astype(np.uint8) * 255, maps) == pytest.approx(
        pixel_auroc(masks, maps)
    )


def test_pixel_auroc_is_roc_auc_over_all_pixels():
    masks, maps = random_case(3, levels=5)
    assert pixel_auroc(masks, maps) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel())
    )


@pytest.mark.parametrize("metric", [pixel_auroc, aupro])
def test_metrics_reject_bad_inputs_with_a_clear_message(metric):
    masks, maps = random_case(4)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 12, 12\).*\(3, 12, 11\)"):
        metric(masks, maps[..., :11])
    with pytest.raises(ValueError, match="no anomalous pixel"):
        metric(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="no normal pixel"):
        metric(np.ones_like(masks), maps)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        metric(masks, bad)
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        metric(masks, bad)
    with pytest.raises(ValueError, match="swap masks and maps"):
        metric(maps, masks)
    # -1/+1 labels: every pixel non-zero, refused as "no normal pixel"
    with pytest.raises(ValueError, match=r"Labels in \{-1, 1\}\? Give normal pixels 0"):
        metric(np.where(masks, 1, -1), maps)
    with pytest.raises(ValueError, match="n_images, height, width"):
        metric(masks[0, 0], maps[0, 0])
    # maps of (width, height): as many pixels, but not the masks' pixels
    wide, tall = masks[:, :, :8], maps[:, :, :8].transpose(0, 2, 1)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 12, 8\).*\(3, 8, 12\)"):
        metric(wide, tall)
    # float masks of 0 and 1 with one other value among them
    soft = masks.astype(float)
    soft[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"only 0 and 1; got values such as \[0.5\]"):
        metric(soft, maps)


@pytest.mark.parametrize("max_fpr", [0, -0.1, 1.5])
def test_aupro_rejects_a_max_fpr_outside_0_1(max_fpr):
    masks, maps = random_case(5)
    with pytest.raises(InvalidParameterError, match="max_fpr"):
        aupro(masks, maps, max_fpr=max_fpr)


@pytest.fixture
def separable():
    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(size=(60, 2)), rng.normal(5, 1, size=(30, 2))]
    y = np.r_[np.zeros(60, dtype=int), np.ones(30, dtype=int)]
    return X, y


def test_image_auroc_ranks_anomalies_with_the_package_labels(separable):
    X, y = separable
    detector = IsolationForest(random_state=0).fit(X[y == 0])
    expected = roc_auc_score(y, -detector.score_samples(X))
    assert image_auroc(detector, X, y) == pytest.approx(expected)
    assert image_auroc(detector, X, y) > 0.95
    # sklearn's "roc_auc" scorer with these labels silently returns 1 - AUROC.
    assert get_scorer("roc_auc")(detector, X, y) == pytest.approx(1 - expected)


def test_image_auroc_refuses_outlier_labels(separable):
    X, y = separable
    detector = IsolationForest(random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"\(y == -1\)"):
        image_auroc(detector, X, np.where(y == 1, -1, 1))
    with pytest.raises(ValueError, match="both present"):
        image_auroc(detector, X, np.zeros_like(y))


def test_image_auroc_as_the_scoring_of_a_grid_search(separable):
    X, y = separable

    def search(scoring):
        return GridSearchCV(
            IsolationForest(random_state=0),
            {"n_estimators": [5, 50]},
            scoring=scoring,
            cv=StratifiedKFold(3, shuffle=True, random_state=0),
        ).fit(X, y)

    ours, sklearns = search(image_auroc), search("roc_auc")
    # Training folds hold a third of anomalies here, hence well below 1.
    assert ours.best_score_ > 0.7
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"], 1 - sklearns.cv_results_["mean_test_score"]
    )
