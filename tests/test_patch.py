"""Patch level: PatchFeatures, the memory-bank math, PatchCoreDetector, the switch."""

import copy
import math
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.utils import estimator_checks

from sklearn_metarefine import (
    FlowDetector,
    MetaRefineDetector,
    PatchCoreDetector,
    PatchFeatures,
    PatchFlowDetector,
    iqr_fence,
)
from sklearn_metarefine._features._embedding import _IMAGENET_MEAN, _IMAGENET_STD
from sklearn_metarefine._patch._pair import robust_scales, standardised
from sklearn_metarefine._scores import majority_fence
from sklearn_metarefine._patch._bank import (
    _gaussian_matrix,
    _smoothed,
    anomaly_maps,
    exact_maxima,
    greedy_coreset,
    kmeans_cells,
    nearest_distances,
    probed_distances,
    support_distances,
)

SIZE = 96  # a 12 x 12 patch grid with the default backbone


def textures(n, seed, size=SIZE):
    """Gray grating with random phase and noise: every image the same texture."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi, 2)
        image = 0.5 + 0.2 * np.sin(2 * np.pi * xx / 8 + phase[0])
        image += 0.2 * np.sin(2 * np.pi * yy / 8 + phase[1])
        image += rng.normal(0, 0.03, image.shape)
        images.append(np.clip(image * 255, 0, 255).astype(np.uint8))
    return np.stack(images)


def plant_discs(images, seed):
    """A dark disc of radius size / 8 away from the borders; returns masks."""
    rng = np.random.RandomState(seed)
    size = images.shape[1]
    yy, xx = np.mgrid[:size, :size]
    images, masks = images.copy(), []
    for image in images:
        cy, cx = rng.uniform(0.35 * size, 0.65 * size, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 8) ** 2
        image[mask] = 20
        masks.append(mask)
    return images, np.stack(masks)


@pytest.fixture(scope="module")
def surfaces():
    train = textures(12, seed=0)
    normal_test = textures(4, seed=1)
    defective, masks = plant_discs(textures(4, seed=2), seed=3)
    return train, normal_test, defective, masks


@pytest.fixture(scope="module")
def fitted(surfaces):
    det = PatchCoreDetector(image_size=SIZE, device="cpu", random_state=0)
    return det.fit(surfaces[0])


class TwoMaps(torch.nn.Module):
    """Returns a map at stride 2 and one at stride 4, like a CNN trunk's taps."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.fine = torch.nn.Conv2d(3, 2, 3, stride=2, padding=1)
        self.coarse = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
        with torch.no_grad():
            for tensor in self.parameters():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))

    def forward(self, x):
        fine = self.fine(x)
        return [fine, self.coarse(fine)]


# --- PatchFeatures --------------------------------------------------------------
def test_patch_rows_are_pooled_aligned_and_concatenated_maps():
    images = np.random.RandomState(0).randint(0, 256, (3, 16, 16, 3), np.uint8)
    module = TwoMaps()
    features = PatchFeatures(module, image_size=16, device="cpu").fit(images)
    assert features.grid_shape_ == (8, 8) and features.n_channels_ == 5
    X = features.transform(images)
    assert X.shape == (3, 8 * 8 * 5) and X.dtype == np.float32

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        fine, coarse = module((x - mean) / std)
        pool = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        fine, coarse = pool(fine).numpy(), pool(coarse).numpy()
    # Fine cell j lies at coarse cell j / 2 (both grids start on the first
    # pixel); beyond the last coarse cell its value is kept.
    at = np.arange(8) / 2
    coarse = np.apply_along_axis(lambda v: np.interp(at, np.arange(4), v), 2, coarse)
    coarse = np.apply_along_axis(lambda v: np.interp(at, np.arange(4), v), 3, coarse)
    expected = np.concatenate([fine, coarse], 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(X.reshape(3, 8, 8, 5), expected, rtol=1e-5, atol=1e-5)
    assert list(features.get_feature_names_out()[:2]) == [
        "patchfeatures_row0_col0_ch0",
        "patchfeatures_row0_col0_ch1",
    ]


def test_patch_feature_names_follow_the_rows_of_a_grid_wider_than_high():
    images = np.random.RandomState(0).randint(0, 256, (2, 8, 16, 3), np.uint8)
    features = PatchFeatures(TwoMaps(), image_size=(8, 16), device="cpu").fit(images)
    assert features.grid_shape_ == (4, 8) and features.n_channels_ == 5
    names = features.get_feature_names_out()
    assert list(names) == [
        f"patchfeatures_row{r}_col{c}_ch{k}"
        for r in range(4) for c in range(8) for k in range(5)
    ]  # fmt: skip


@pytest.mark.parametrize(
    "backbone, grid, channels",
    [
        ("efficientnet_lite0", (28, 28), 40 + 80),
        ("resnet18", (28, 28), 128 + 256),
    ],
)
def test_named_backbones_give_the_stride_8_grid(backbone, grid, channels):
    images = np.zeros((1, 224, 224, 3), np.uint8)
    weights = "DEFAULT" if backbone == "efficientnet_lite0" else None
    features = PatchFeatures(backbone, weights=weights, device="cpu").fit(images)
    assert (features.grid_shape_, features.n_channels_) == (grid, channels)


def test_a_backbone_that_returns_vectors_is_rejected():
    class Pooled(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    with pytest.raises(TypeError, match=r"\(N, C, h, w\)"):
        PatchFeatures(Pooled(), image_size=8, device="cpu").fit(np.zeros((1, 8, 8)))


def test_a_grid_of_one_cell_is_warned_about():
    images = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.warns(UserWarning, match="patch grid of one cell"):
        features = PatchFeatures(TwoMaps(), image_size=2, device="cpu").fit(images)
    assert features.grid_shape_ == (1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = PatchFeatures(TwoMaps(), image_size=4, device="cpu").fit(images)
    assert features.grid_shape_ == (2, 2)


def test_patch_features_cache_with_memory(tmp_path):
    images = np.random.RandomState(0).randint(0, 256, (3, 16, 16, 3), np.uint8)
    features = PatchFeatures(TwoMaps(), image_size=16, memory=tmp_path, device="cpu")
    first = features.fit(images).transform(images)
    assert any(tmp_path.rglob("output.pkl"))
    np.testing.assert_array_equal(features.transform(images), first)


@pytest.mark.parametrize(
    "check",
    [
        estimator_checks.check_estimator_cloneable,
        estimator_checks.check_estimator_repr,
        estimator_checks.check_no_attributes_set_in_init,
        estimator_checks.check_estimators_unfitted,
        estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
        estimator_checks.check_mixin_order,
        estimator_checks.check_parameters_default_constructible,
        estimator_checks.check_get_params_invariance,
        estimator_checks.check_set_params,
    ],
    ids=lambda check: check.__name__,
)
def test_patch_features_sklearn_api_checks(check):
    # As for PretrainedFeatures: an image transformer rejects sklearn's tables.
    check("PatchFeatures", PatchFeatures(weights=None, device="cpu"))


# --- the memory-bank math -------------------------------------------------------
def test_nearest_distances_match_a_direct_computation():
    rng = np.random.RandomState(0)
    queries, bank = rng.normal(size=(50, 6)), rng.normal(size=(40, 6))
    query_groups, bank_groups = rng.randint(0, 4, 50), rng.randint(0, 4, 40)
    full = np.linalg.norm(queries[:, None] - bank[None], axis=2)
    distances, nearest = nearest_distances(
        torch.from_numpy(queries).float(), torch.from_numpy(bank).float()
    )
    np.testing.assert_allclose(distances.numpy(), full.min(1), rtol=1e-5)
    np.testing.assert_array_equal(nearest.numpy(), full.argmin(1))

    masked = np.where(query_groups[:, None] == bank_groups[None], np.inf, full)
    distances, _ = nearest_distances(
        torch.from_numpy(queries).float(),
        torch.from_numpy(bank).float(),
        torch.from_numpy(query_groups),
        torch.from_numpy(bank_groups),
    )
    np.testing.assert_allclose(distances.numpy(), masked.min(1), rtol=1e-5)
    alone = torch.zeros(3, dtype=torch.long)
    distances, nearest = nearest_distances(
        torch.zeros(3, 2), torch.ones(3, 2), alone, alone
    )
    assert torch.isinf(distances).all() and (nearest == -1).all()


def test_greedy_coreset_takes_isolated_points_and_never_repeats():
    rng = np.random.RandomState(0)
    points = np.vstack([rng.normal(size=(500, 3)), 50 + np.eye(3) * 10])
    points = torch.from_numpy(points).float()
    picks = greedy_coreset(points, 20, torch.Generator().manual_seed(0))
    assert len(picks) == 20 and len(set(picks.tolist())) == 20
    assert {500, 501, 502} <= set(picks.tolist())
    # Exact duplicates are never taken twice.
    picks = greedy_coreset(torch.zeros(10, 2), 10, torch.Generator().manual_seed(0))
    assert sorted(picks.tolist()) == list(range(10))


def test_blocked_coreset_covers_like_the_single_block():
    points = torch.from_numpy(np.random.RandomState(0).normal(size=(2000, 4))).float()
    radius = []
    for block_size in (2000, 250):
        picks = greedy_coreset(
            points, 200, torch.Generator().manual_seed(0), block_size=block_size
        )
        assert len(picks) == 200 and len(set(picks.tolist())) == 200
        radius.append(nearest_distances(points, points[picks])[0].max().item())
    single, blocked = radius
    assert blocked < 1.5 * single


def test_support_distance_is_the_rank_th_closest_other_image():
    rng = np.random.RandomState(0)
    grids = rng.normal(size=(5, 6, 3))
    bank, bank_images = grids[[0, 2, 4], [1, 2, 3]], np.array([0, 2, 4])
    per_image = np.linalg.norm(bank[:, None, None] - grids[None], axis=3).min(2)
    per_image[np.arange(3), bank_images] = np.inf
    for rank in (1, 2, 4):
        distances = support_distances(
            torch.from_numpy(bank).float(),
            torch.from_numpy(bank_images),
            torch.from_numpy(grids).float(),
            torch.arange(5),
            rank,
        )
        np.testing.assert_allclose(
            distances.numpy(), np.sort(per_image, 1)[:, rank - 1], rtol=1e-5
        )
    too_far = support_distances(
        torch.from_numpy(bank).float(),
        torch.from_numpy(bank_images),
        torch.from_numpy(grids).float(),
        torch.arange(5),
        5,
    )
    assert torch.isinf(too_far).all()


def _gaussian_bank_in_cells(rng):
    """A bank of 1,024 Gaussian rows sorted into 8 cells, and 300 queries."""
    bank = torch.from_numpy(rng.normal(size=(1024, 8))).float()
    queries = torch.from_numpy(rng.normal(size=(300, 8))).float()
    order, offsets, centers = kmeans_cells(bank, 8, torch.Generator().manual_seed(0))
    return bank[order], queries, offsets, centers


def test_probed_search_bounds_the_exact_one_and_exact_maxima_fix_the_top():
    bank, queries, offsets, centers = _gaussian_bank_in_cells(np.random.RandomState(0))
    exact = nearest_distances(queries, bank)[0]
    probed = probed_distances(queries, bank, offsets, centers, 2)[0]
    assert torch.all(probed >= exact - 1e-6)
    assert 0.5 < torch.isclose(probed, exact).double().mean() < 1
    everything = probed_distances(queries, bank, offsets, centers, 8)[0]
    torch.testing.assert_close(everything, exact)

    fixed = exact_maxima(probed.view(30, 10), queries, bank)
    torch.testing.assert_close(fixed.max(1).values, exact.view(30, 10).max(1).values)


def test_probed_search_leaves_out_the_querys_own_group():
    rng = np.random.RandomState(1)
    bank, queries, offsets, centers = _gaussian_bank_in_cells(rng)
    bank_groups = torch.from_numpy(rng.randint(0, 6, 1024))
    groups = torch.from_numpy(rng.randint(0, 6, 300))
    # a query whose probed cell holds only rows of its own group finds none
    bank_groups[offsets[3] : offsets[4]] = 6
    queries[0] = centers[3]
    groups[0] = 6

    exact = nearest_distances(queries, bank, groups, bank_groups)[0]
    probed, rows = probed_distances(
        queries, bank, offsets, centers, 1, groups, bank_groups
    )
    assert rows[0] == -1 and probed[0] == math.inf
    found = rows >= 0
    assert found[1:].all()
    assert not torch.any(bank_groups[rows[found]] == groups[found])
    assert torch.all(probed >= exact - 1e-6)
    everything = probed_distances(
        queries, bank, offsets, centers, 8, groups, bank_groups
    )
    torch.testing.assert_close(everything[0], exact)

    fixed = exact_maxima(probed.view(30, 10), queries, bank, groups, bank_groups)
    torch.testing.assert_close(fixed.max(1).values, exact.view(30, 10).max(1).values)


@pytest.mark.parametrize("sigma", [2.0, 4.0])
def test_maps_are_smoothed_by_a_gaussian_of_sigma_pixels(sigma):
    # One hot cell: the smoothing adds sigma^2 to the variance of its map.
    scores = torch.zeros(1, 8, 8, dtype=torch.float64)
    scores[0, 4, 3] = 1.0

    def spread(values):  # standard deviation of the map's mass along its rows
        mass, rows = values.sum(1), np.arange(values.shape[0])
        mean = (mass * rows).sum() / mass.sum()
        return np.sqrt((mass * (rows - mean) ** 2).sum() / mass.sum())

    plain, smooth = (
        anomaly_maps(scores, (128, 128), width, (64, 64), 0.75)[0].numpy()
        for width in (0.0, sigma)
    )
    added = np.sqrt(spread(smooth) ** 2 - spread(plain) ** 2)
    assert added == pytest.approx(sigma, rel=0.01)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 224, 1000])
def test_smoothing_by_fft_equals_the_gaussian_matrix(n):
    # The (n, n) matrix took 512 MB for a side of 8,000 pixels; the kernel is
    # wider than the side for the smallest n, whose borders reflect twice.
    rng = np.random.RandomState(n)
    for sigma in (0, 0.3, 1, 4, 7.5, 40):
        for cells in (1, 7, 28):
            columns = torch.from_numpy(rng.uniform(size=(n, cells)))
            dense = _gaussian_matrix(n, sigma) @ columns
            torch.testing.assert_close(_smoothed(columns, sigma), dense,
                                       rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell_offset", [0.0, 0.75])
def test_maps_put_cells_where_their_features_are_centred(cell_offset):
    scores = torch.zeros(1, 8, 8, dtype=torch.float64)
    scores[0, 4, 3] = 1.0
    # images of 128 px were resized to 64 px for the CNN: stride 8 there
    sharp = anomaly_maps(scores, (128, 128), 0, (64, 64), cell_offset)
    smooth = anomaly_maps(scores, (128, 128), 4, (64, 64), cell_offset)
    assert sharp.shape == smooth.shape == (1, 128, 128)
    on_cnn_input = 8 * (np.array([4, 3]) - cell_offset)
    centre = (on_cnn_input + 0.5) * 2 - 0.5
    for image_map in (sharp, smooth):
        peak = np.unravel_index(int(image_map[0].argmax()), (128, 128))
        assert np.all(np.abs(np.array(peak) - centre) <= 1)
    assert smooth.max() < sharp.max()
    # reflected borders keep the mass up to what crosses the border
    torch.testing.assert_close(smooth.sum(), sharp.sum(), rtol=1e-2, atol=0)


class _Blur8(torch.nn.Module):
    """Three 3x3 binomial blurs of stride 2, padded alike on both sides: the
    cell i of its stride-8 grid is centred on input pixel 8 * i exactly."""

    def __init__(self):
        super().__init__()
        kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(3, 3, 3, stride=2, padding=1, bias=False) for _ in range(3)
        )
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.zero_()
                for channel in range(3):
                    conv.weight[channel, channel] = kernel

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return x


def test_maps_of_a_module_peak_on_the_planted_defect():
    # The offset measured for efficientnet_lite0's weights (0.75 cell) put the
    # peaks of every backbone 5.5 to 7.5 px up and left of the defects at stride 8.
    train = textures(12, 0)
    base = textures(1, 5)[0]
    centres = [(24, 24), (48, 48), (40, 64), (64, 32)]
    defective = []
    for y, x in centres:
        image = base.copy()
        image[y - 3 : y + 3, x - 3 : x + 3] = 255  # centred on (y - 0.5, x - 0.5)
        defective.append(image)
    detector = PatchCoreDetector(
        _Blur8(), image_size=SIZE, coreset_fraction=0.5, random_state=0
    ).fit(train)
    maps = detector.anomaly_map(np.stack([base, *defective]))
    for (y, x), image_map in zip(centres, maps[1:]):
        peak = np.unravel_index(int((image_map - maps[0]).argmax()), image_map.shape)
        # within the 8 px stride: 0.5 px at best (the centre lies between pixels)
        assert np.all(np.abs(np.array(peak) - (y - 0.5, x - 0.5)) <= 1.5), peak


def test_the_cell_offset_is_the_backbones_with_its_weights():
    from sklearn_metarefine._patch._grid import cell_offset

    assert cell_offset("efficientnet_lite0") == 0.75  # its packaged weights
    assert cell_offset("efficientnet_lite0", None) == 0.0  # random weights
    assert cell_offset("resnet18") == cell_offset("wide_resnet50_2") == 0.0
    assert cell_offset("alexnet") == cell_offset("alexnet", None) == -0.875  # layout
    assert cell_offset(_Blur8()) == 0.0


def test_maps_of_a_named_backbone_keep_its_stride_at_any_input_size():
    # A side that is not a multiple of 8 gives ceil(side / 8) cells, 8 px
    # apart: spreading them over the side put the peaks of 250 px inputs up
    # to 6 px up and left of the defects.
    from sklearn_metarefine._patch._grid import grid_maps

    for side in (100, 250):
        cells = math.ceil(side / 8)
        for backbone, weights in (("resnet18", "DEFAULT"),
                                  ("efficientnet_lite0", "DEFAULT")):
            grids = np.zeros((1, cells, cells), np.float32)
            grids[0, cells - 1, cells // 2] = 1.0
            image_map = grid_maps(grids, (side, side), (side, side), 0, backbone,
                                  weights)[0]
            offset = 0.75 if backbone == "efficientnet_lite0" else 0.0
            centre = 8 * (np.array([cells - 1, cells // 2]) - offset)
            peak = np.unravel_index(int(image_map.argmax()), image_map.shape)
            assert np.all(np.abs(np.array(peak) - centre) <= 0.5), (side, peak)


# --- PatchCoreDetector ----------------------------------------------------------
def test_map_maximum_lies_in_the_planted_defect(surfaces, fitted):
    train, normal_test, defective, masks = surfaces
    maps = fitted.anomaly_map(defective)
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == np.float32
    for image_map, mask in zip(maps, masks):
        assert mask.ravel()[image_map.argmax()]
    scores = fitted.score_samples(np.concatenate([normal_test, defective]))
    assert scores.dtype == np.float64
    assert roc_auc_score([0] * 4 + [1] * 4, -scores) == 1.0
    np.testing.assert_array_equal(fitted.predict(defective), -1)
    # The 'auto' fence of only 12 leave-one-image-out scores is a rough one:
    # grown from the lower 6, it passes 2 of these 4 normal images (the fence
    # of all 12, which defective training images would widen, passes 3).
    assert (fitted.predict(normal_test) == 1).mean() >= 0.5


def test_maps_from_files_and_arrays_agree(surfaces, fitted, tmp_path):
    defective = surfaces[2]
    paths = []
    for i, image in enumerate(defective):
        paths.append(str(tmp_path / f"defect_{i}.png"))
        Image.fromarray(image).save(paths[-1])
    np.testing.assert_allclose(
        fitted.anomaly_map(paths), fitted.anomaly_map(defective), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        fitted.score_samples(paths), fitted.score_samples(defective), rtol=1e-6
    )
    # one embedding gives both (what `metarefine score --maps` uses)
    scores, maps = fitted._scores_and_maps(paths)
    np.testing.assert_array_equal(scores, fitted.score_samples(paths))
    np.testing.assert_array_equal(maps, fitted.anomaly_map(paths))


def test_maps_come_at_the_input_resolution(surfaces, fitted):
    wide = np.stack(
        [np.asarray(Image.fromarray(im).resize((150, 120))) for im in surfaces[2]]
    )
    maps = fitted.anomaly_map(wide)
    assert maps.shape == (4, 120, 150)
    sizes = [wide[0], wide[1][:100]]
    with pytest.raises(ValueError, match="one size"):
        fitted.anomaly_map(sizes)


@pytest.fixture
def cells_on_small_banks(monkeypatch):
    """Search cells from 2 up, one probed of up to 16: the inverted-file
    search on banks small enough for a test (a bank under 32 cells is
    otherwise searched by brute force)."""
    from sklearn_metarefine._patch import _detector

    monkeypatch.setattr(_detector, "_MIN_CELLS", 2)
    monkeypatch.setattr(_detector, "_MIN_PROBED", 1)


def test_a_bank_of_few_cells_is_searched_exactly_and_a_large_one_probes_8(
    monkeypatch,
):
    # With 2 of 28 cells probed, 12.5% of a generated surface's map values
    # were too large, by 5% on average: the benchmark's pixel metrics moved
    # in the third decimal.
    from sklearn_metarefine._patch import _bank, _detector

    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 8 * 8 * 6)).astype(np.float32)
    X_test = rng.normal(size=(10, 8 * 8 * 6)).astype(np.float32) * 1.3
    params = dict(backbone=None, grid_shape=(8, 8), random_state=0)
    small = dict(params, coreset_fraction=0.9)  # 3,456 patches: 27 cells' worth
    ivf = PatchCoreDetector(**small).fit(X)
    brute = PatchCoreDetector(algorithm="brute", **small).fit(X)
    assert len(ivf.memory_bank_) // 128 == 27 and len(ivf.cell_centers_) == 1
    np.testing.assert_array_equal(ivf.anomaly_map(X_test), brute.anomaly_map(X_test))
    # A model file saved before holds the cells of such a bank, of which the
    # search probed 2: searched exactly too.
    min_cells, min_probed = _detector._MIN_CELLS, _detector._MIN_PROBED
    monkeypatch.setattr(_detector, "_MIN_CELLS", 2)
    monkeypatch.setattr(_detector, "_MIN_PROBED", 1)
    saved_before = PatchCoreDetector(**small).fit(X)
    monkeypatch.setattr(_detector, "_MIN_CELLS", min_cells)
    assert len(saved_before.cell_centers_) == 27
    np.testing.assert_allclose(
        saved_before.anomaly_map(X_test), brute.anomaly_map(X_test), rtol=1e-6
    )
    monkeypatch.setattr(_detector, "_MIN_PROBED", min_probed)
    probes = []

    def probed(*args):
        probes.append(args[4])
        return _bank.probed_distances(*args)

    monkeypatch.setattr(_detector, "probed_distances", probed)
    X_large = rng.normal(size=(70, 8 * 8 * 6)).astype(np.float32)
    large = PatchCoreDetector(coreset_fraction=1.0, **params).fit(X_large)
    assert len(large.cell_centers_) == 4480 // 128 == 35
    probes.clear()
    large.anomaly_map(X_test)
    assert probes == [8]


def test_ivf_and_brute_force_give_the_same_image_scores(cells_on_small_banks):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 4 * 4 * 6)).astype(np.float32)
    X_test = rng.normal(size=(20, 4 * 4 * 6)) * 1.3
    params = dict(
        backbone=None, grid_shape=(4, 4), coreset_fraction=0.5, random_state=0
    )
    ivf = PatchCoreDetector(**params).fit(X)
    brute = PatchCoreDetector(algorithm="brute", **params).fit(X)
    assert len(ivf.cell_centers_) == 480 // 128 and len(brute.cell_centers_) == 1
    np.testing.assert_allclose(ivf.score_samples(X_test), brute.score_samples(X_test))
    fast, exact = ivf.anomaly_map(X_test), brute.anomaly_map(X_test)
    assert fast.shape == (20, 4, 4)
    assert np.all(fast >= exact - 1e-5)
    np.testing.assert_allclose(fast.max((1, 2)), exact.max((1, 2)), rtol=1e-6)


@pytest.mark.parametrize("bank_cleaning", [None, "images"])
def test_fit_scores_training_images_by_the_cells_as_brute_force_would(
    bank_cleaning, monkeypatch, cells_on_small_banks
):
    from sklearn_metarefine._patch import _bank, _detector

    rng = np.random.RandomState(0)
    prototypes = rng.normal(size=(12, 6)) * 3
    X = prototypes[rng.randint(0, 12, (80, 64))] + rng.normal(size=(80, 64, 6)) / 2
    X[:6, :3] += 8  # defective images, for the image cleaning
    X = X.reshape(80, -1).astype(np.float32)
    params = dict(
        backbone=None,
        grid_shape=(8, 8),
        coreset_fraction=0.5,
        bank_cleaning=bank_cleaning,
        random_state=0,
    )
    brute = PatchCoreDetector(algorithm="brute", **params).fit(X)
    searched = []

    def counted(queries, *args):
        if len(args) > 1:  # with groups: leaving images out, not k-means
            searched.append(len(queries))
        return nearest_distances(queries, *args)

    monkeypatch.setattr(_detector, "nearest_distances", counted)
    monkeypatch.setattr(_bank, "nearest_distances", counted)
    ivf = PatchCoreDetector(**params).fit(X)
    assert len(ivf.cell_centers_) > 8
    np.testing.assert_array_equal(ivf.inlier_mask_, brute.inlier_mask_)
    if bank_cleaning:
        assert not ivf.inlier_mask_[:6].any()
    np.testing.assert_allclose(ivf.train_scores_, brute.train_scores_, rtol=1e-6)
    assert ivf.offset_ == pytest.approx(brute.offset_, rel=1e-6)
    # Only each image's largest patch distance and its few rivals are
    # searched exhaustively, not the 5,120 training patches.
    assert 0 < sum(searched) < 80 * 64 / 4


def _contaminated_rows(seed, n_normal=40, n_defective=10):
    """Grids of 3 x 3 patches: normal patches near one of four prototypes;
    defective images carry one patch near a shared defect prototype."""
    rng = np.random.RandomState(seed)
    prototypes = rng.normal(size=(4, 5)) * 3
    defect = np.full(5, 6.0)

    def grids(n, defective):
        cells = prototypes[rng.randint(0, 4, (n, 9))] + rng.normal(0, 0.3, (n, 9, 5))
        if defective:
            where = rng.randint(0, 9, n)
            cells[np.arange(n), where] = defect + rng.normal(0, 0.3, (n, 5))
        return cells.reshape(n, -1)

    train = np.vstack([grids(n_normal, False), grids(n_defective, True)])
    test = np.vstack([grids(20, False), grids(20, True)])
    return train, test, np.r_[np.zeros(20), np.ones(20)]


def test_patch_cleaning_removes_a_defect_shared_by_a_fifth_of_the_images():
    train, test, is_anomalous = _contaminated_rows(0)
    params = dict(
        backbone=None, grid_shape=(3, 3), coreset_fraction=0.5, random_state=0
    )
    plain = PatchCoreDetector(**params).fit(train)
    cleaned = PatchCoreDetector(bank_cleaning="patches", **params).fit(train)

    def defect_rows(det):
        return int((np.abs(det.memory_bank_ - 6.0).max(1) < 1.5).sum())

    assert defect_rows(plain) > 0 and defect_rows(cleaned) == 0
    assert roc_auc_score(is_anomalous, -plain.score_samples(test)) < 0.8
    assert roc_auc_score(is_anomalous, -cleaned.score_samples(test)) > 0.95
    # Leave-one-image-out training scores: the defective images stand out.
    assert cleaned.train_scores_[40:].min() > np.median(cleaned.train_scores_[:40])
    assert cleaned.inlier_mask_.all()


@pytest.mark.parametrize("detector", [PatchCoreDetector, PatchFlowDetector])
def test_copies_of_training_images_are_fitted_once(detector):
    # The patch level neither merged nor reported copies: each image is
    # scored against the others' patches, and a copy matched its twin, so the
    # training scores of copies were near zero and the threshold fell (4 of
    # 40 new good images flagged instead of 2 with every image given twice).
    train = _contaminated_rows(0, n_defective=1)[0][:40]
    # Copies within float64 rounding, which the float32 bank cannot tell apart.
    X = np.vstack([train, train[:10] * (1 + 1e-13)])
    params = dict(backbone=None, grid_shape=(3, 3), random_state=0)
    if detector is PatchCoreDetector:
        params.update(bank_cleaning="patches", coreset_fraction=0.5)
    else:
        params.update(flow=FlowDetector(n_blocks=2, hidden_size=16, max_epochs=20))
    with pytest.warns(UserWarning, match="10 of the 50 training images repeat"):
        doubled = detector(**params).fit(X)
    single = detector(**params).fit(train)
    assert doubled.inlier_mask_.shape == doubled.train_scores_.shape == (50,)
    copy_of = np.r_[np.arange(40), np.arange(10)]
    np.testing.assert_allclose(doubled.train_scores_, single.train_scores_[copy_of])
    assert doubled.offset_ == pytest.approx(single.offset_)
    if detector is PatchCoreDetector:  # the rows of X the bank's patches are of
        with pytest.warns(UserWarning, match="1 of the 41 training images repeat"):
            copies = detector(**params).fit(np.vstack([train[:1], train]))
        rows = np.r_[0, np.arange(2, 41)]  # train[0] is rows 0 and 1: the first
        np.testing.assert_array_equal(copies.bank_image_, rows[single.bank_image_])


def test_image_cleaning_drops_whole_images():
    train, _, _ = _contaminated_rows(0, n_defective=4)
    # each defective image with its own defect, which no other image matches
    train[40:, :5] = np.random.RandomState(1).normal(size=(4, 5)) * 10 + 20
    det = PatchCoreDetector(
        backbone=None, grid_shape=(3, 3), bank_cleaning="images", random_state=0
    ).fit(train)
    assert not det.inlier_mask_[40:].any() and det.inlier_mask_[:40].mean() > 0.8
    assert set(det.bank_image_) <= set(np.flatnonzero(det.inlier_mask_))


def test_grid_search_over_coreset_fraction_and_k_reports_the_auroc():
    train, test, is_anomalous = _contaminated_rows(1)
    X = np.vstack([train, test])
    # sklearn's "roc_auc" takes the larger label as positive: normal = 1.
    y = np.r_[np.ones(len(train), int), np.where(is_anomalous == 1, -1, 1)]
    cv = PredefinedSplit(np.r_[np.full(len(train), -1), np.zeros(len(test))])
    base = PatchCoreDetector(
        backbone=None, grid_shape=(3, 3), bank_cleaning="patches", random_state=0
    )
    grid = {"coreset_fraction": [0.2, 0.5], "k": [1.5, 3.0]}
    search = GridSearchCV(base, grid, scoring="roc_auc", cv=cv).fit(X, y)
    for params, reported in zip(
        search.cv_results_["params"], search.cv_results_["split0_test_score"]
    ):
        det = clone(base).set_params(**params).fit(train)
        by_hand = roc_auc_score(is_anomalous, -det.score_samples(test))
        assert reported == pytest.approx(by_hand, abs=1e-12)
    assert search.best_score_ > 0.9


@pytest.mark.parametrize("seed", range(10))
def test_patch_cleaning_resists_defects_the_coreset_over_samples(seed):
    # Farthest-first selection takes outlying patches first: 14 defective of
    # 80 one-patch images (17.5%) made 4 to 6 of the 16 coreset patches over
    # these seeds, and Tukey's fence of all the support distances kept them
    # all on seven seeds, 1 or 2 of 4 on the other three.
    rng = np.random.RandomState(seed)
    X = np.vstack([rng.normal(size=(66, 4)), rng.normal(5, 1, size=(14, 4))])
    det = PatchCoreDetector(
        backbone=None, coreset_fraction=0.2, bank_cleaning="patches", random_state=seed
    ).fit(X)
    assert det.n_patches_selected_ == 16
    assert not (det.bank_image_ >= 66).any()
    assert len(det.bank_image_) >= 8
    normal, defective = rng.normal(size=(30, 4)), rng.normal(5, 1, size=(10, 4))
    assert det.score_samples(defective).max() < det.score_samples(normal).min()


def test_float_contamination_flags_that_fraction_of_images_scored_as_new():
    # Set on in-sample scores (the bank holds the training patches), the
    # threshold flagged every new normal image of a bank of all patches.
    train, _, _ = _contaminated_rows(0)
    det = PatchCoreDetector(
        backbone=None, grid_shape=(3, 3), contamination=0.2, random_state=0
    ).fit(train)
    assert (det.train_scores_ > -det.offset_).mean() == pytest.approx(0.2, abs=0.03)
    rng = np.random.RandomState(0)
    X, X_new = rng.normal(size=(60, 4)), rng.normal(size=(1000, 4))
    for coreset_fraction in (1.0, 0.5):
        det = PatchCoreDetector(
            backbone=None, coreset_fraction=coreset_fraction, contamination=0.1
        ).fit(X)
        assert 0.03 <= (det.predict(X_new) == -1).mean() <= 0.2
    det = MetaRefineDetector(
        backbone=None, level="patch", coreset_fraction=1.0, contamination=0.1
    ).fit(X)
    assert 0.03 <= (det.predict(X_new) == -1).mean() <= 0.2


def test_bad_grid_and_single_image_are_rejected(surfaces):
    with pytest.raises(ValueError, match="grid_shape=\\(4, 4\\)"):
        PatchCoreDetector(backbone=None, grid_shape=(4, 4)).fit(np.ones((5, 30)))
    with pytest.raises(ValueError, match="n_samples=1"):
        PatchCoreDetector(image_size=SIZE, device="cpu").fit(surfaces[0][:1])


# --- MetaRefineDetector(level="patch") ------------------------------------------
def test_the_patch_switch_gives_the_cleaned_patch_detector(surfaces):
    train, normal_test, defective, masks = surfaces
    det = MetaRefineDetector(level="patch", image_size=SIZE, k=2.0, device="cpu")
    det.set_params(random_state=0, coreset_fraction=0.2).fit(train)
    patch = det.detector_
    assert isinstance(patch, PatchCoreDetector)
    assert patch.bank_cleaning == "patches"
    assert (patch.k, patch.coreset_fraction, patch.image_size) == (2.0, 0.2, SIZE)
    maps = det.anomaly_map(defective)
    for image_map, mask in zip(maps, masks):
        assert mask.ravel()[image_map.argmax()]
    flow = det.flow_detector_
    assert isinstance(flow, PatchFlowDetector) and flow.image_cleaning is True
    assert (flow.k, flow.grid_shape_) == (2.0, patch.grid_shape_)
    # Each detector's score, less the median of its held-out training scores,
    # over their interquartile range; the two averaged.
    X = np.concatenate([normal_test, defective])
    rows = patch.features_.transform(X)
    parts = [-patch.score_samples(X), -flow.score_samples(rows)]
    for detector, center, scale in zip(
        (patch, flow), det.score_centers_, det.score_scales_
    ):
        q1, median, q3 = np.quantile(detector.train_scores_, [0.25, 0.5, 0.75])
        assert (center, scale) == pytest.approx((median, q3 - q1))
    expected = -sum(
        (p - c) / w for p, c, w in zip(parts, det.score_centers_, det.score_scales_)
    ) / 2
    np.testing.assert_allclose(det.score_samples(X), expected, rtol=1e-6)
    assert det.score_samples(defective).max() < det.score_samples(normal_test).min()
    np.testing.assert_array_equal(det.inlier_mask_, flow.inlier_mask_)
    train_scores = sum(
        (d.train_scores_ - c) / w
        for d, c, w in zip((patch, flow), det.score_centers_, det.score_scales_)
    ) / 2
    assert det.offset_ == pytest.approx(-majority_fence(train_scores, 2.0))
    scores, maps = det._scores_and_maps(defective)
    np.testing.assert_array_equal(scores, det.score_samples(defective))
    np.testing.assert_array_equal(maps, det.anomaly_map(defective))
    assert not hasattr(MetaRefineDetector(), "anomaly_map")
    assert not hasattr(MetaRefineDetector(), "_scores_and_maps")


def test_the_pair_is_standardised_by_finite_held_out_scores():
    # A model whose held-out scores all tie (no spread) would divide by zero,
    # and an infinite held-out score (a row beyond float32) would make the
    # median and IQR infinite or NaN.
    flat = SimpleNamespace(train_scores_=np.array([3.0, 3.0, 3.0, 3.0]))
    wide = SimpleNamespace(train_scores_=np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.inf]))
    centers, scales = robust_scales(flat, wide)
    np.testing.assert_array_equal(centers, [3.0, 2.0])
    np.testing.assert_array_equal(scales, [1.0, 2.0])
    parts = [np.array([5.0, np.inf]), np.array([2.0, 6.0])]
    scores = standardised(parts, centers, scales)
    np.testing.assert_array_equal(scores, [1.0, np.inf])


def test_the_patch_switch_on_rows_is_grid_searchable():
    train, test, is_anomalous = _contaminated_rows(2)
    X = np.vstack([train, test])
    y = np.r_[np.ones(len(train), int), np.where(is_anomalous == 1, -1, 1)]
    cv = PredefinedSplit(np.r_[np.full(len(train), -1), np.zeros(len(test))])
    base = MetaRefineDetector(backbone=None, level="patch", random_state=0)
    grid = {"coreset_fraction": [0.3, 0.6], "k": [1.0, 1.5]}
    search = GridSearchCV(base, grid, scoring="roc_auc", cv=cv).fit(X, y)
    assert search.best_score_ > 0.6
    assert search.best_estimator_.detector_.grid_shape_ == (1, 1)


@pytest.mark.cuda
def test_cuda_search_matches_cpu(cells_on_small_banks):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; torch.cuda.is_available() is False")
    train, test, _ = _contaminated_rows(0)
    params = dict(
        backbone=None, grid_shape=(3, 3), bank_cleaning="patches", random_state=0
    )
    cpu = PatchCoreDetector(device="cpu", **params).fit(train)
    gpu = PatchCoreDetector(device="cuda", **params).fit(train)
    assert gpu.device_.type == "cuda"
    np.testing.assert_allclose(
        gpu.score_samples(test), cpu.score_samples(test), rtol=1e-4
    )
    np.testing.assert_allclose(
        gpu.anomaly_map(test), cpu.anomaly_map(test), rtol=1e-4, atol=1e-5
    )
    # A bank with search cells: the training images scored without their own
    # patches by the cells.
    params["coreset_fraction"] = 1.0
    cpu = PatchCoreDetector(device="cpu", **params).fit(train)
    gpu = PatchCoreDetector(device="cuda", **params).fit(train)
    assert len(gpu.cell_centers_) > 1
    np.testing.assert_allclose(gpu.train_scores_, cpu.train_scores_, rtol=1e-4)

    images = textures(6, seed=0)
    defective, masks = plant_discs(textures(2, seed=2), seed=3)
    image_params = dict(image_size=SIZE, random_state=0)
    cpu = PatchCoreDetector(device="cpu", **image_params).fit(images)
    gpu = PatchCoreDetector(device="cuda", **image_params).fit(images)
    np.testing.assert_allclose(
        gpu.anomaly_map(defective), cpu.anomaly_map(defective), rtol=1e-3, atol=1e-3
    )


@pytest.mark.parametrize("n_defective", [15, 30])
def test_auto_threshold_holds_when_a_quarter_to_half_of_the_images_are_defective(
    n_defective,
):
    # Each defective image with its own defect, so the patch cleaning drops
    # them all and their leave-one-image-out scores stand out; at 27% and 43%
    # of the training set, Q3 of all the scores lies among them, and the fence
    # of all the scores misses defective images.
    train, test, is_anomalous = _contaminated_rows(0, n_defective=n_defective)
    rng = np.random.RandomState(1)
    train[40:, :5] = rng.normal(size=(n_defective, 5)) * 10 + 20
    test[20:, :5] = rng.normal(size=(20, 5)) * 10 + 20
    det = PatchCoreDetector(
        backbone=None, grid_shape=(3, 3), bank_cleaning="patches", random_state=0
    ).fit(train)
    assert det.offset_ == -majority_fence(det.train_scores_, det.k)
    flagged = det.predict(test) == -1
    assert flagged[is_anomalous == 1].all()
    beyond_old_fence = -det.score_samples(test) > iqr_fence(det.train_scores_)
    assert not beyond_old_fence[is_anomalous == 1].all()
    assert flagged[is_anomalous == 0].mean() <= 0.1


def test_majority_fence_grows_from_the_lower_half():
    rng = np.random.RandomState(0)
    # On a clean set it flags a little more than the fence of all the scores
    # (4.8% of exponential scores, 0.4% of Gaussian ones).
    exponential, gaussian = rng.exponential(size=10_000), rng.normal(size=10_000)
    assert 0.04 < (exponential > majority_fence(exponential)).mean() < 0.09
    assert (gaussian > majority_fence(gaussian)).mean() < 0.02
    for share in (0.3, 0.45):
        n_bad = int(share * 10_000)
        normal, bad = rng.normal(size=10_000 - n_bad), rng.normal(10, 1, n_bad)
        scores = np.r_[normal, bad, np.inf]
        fence = majority_fence(scores)
        assert 2.0 < fence < 5.0  # between the normal scores and the anomalies
        assert iqr_fence(scores) > 5.0  # the fence of all lies among the anomalies
    # A small clean set: the fences of its lower scores are tight, and a
    # gap between two of them would stop the growth early; a score inside
    # the fence of the kept scores and itself still joins. Skewed scores
    # (Gumbel, like the largest of many distances), 200 sets of 20: 1.7
    # more flagged than by the fence of all, on average (2.8 when the growth
    # stopped at the first score outside the fence of those below).
    excess = []
    for _ in range(200):
        scores = rng.gumbel(size=20)
        excess.append(
            np.sum(scores > majority_fence(scores)) - np.sum(scores > iqr_fence(scores))
        )
    assert np.mean(excess) < 2.0
    assert majority_fence([np.inf, np.inf]) == np.inf
    assert majority_fence([1.0]) == 1.0


def test_maps_of_a_transposed_image_are_the_transposed_maps():
    # The smoothing took the height's resize ratio for both axes: a peak was
    # 8 px wide one way and 21 px the other.
    from sklearn_metarefine._patch._grid import grid_maps

    grid = torch.zeros(1, 4, 4)
    grid[0, 1, 1] = 1.0
    lite0 = "efficientnet_lite0"  # its cells are offset alike on both axes
    wide = grid_maps(grid, (32, 128), (32, 32), 4.0, lite0)[0]
    tall = grid_maps(grid.transpose(1, 2), (128, 32), (32, 32), 4.0, lite0)[0]
    np.testing.assert_allclose(wide, tall.T, atol=1e-6)


@pytest.mark.parametrize("bank_cleaning", ["patches", "images", None])
def test_verbose_says_what_each_longer_step_of_fit_does(capsys, bank_cleaning):
    # Coreset, cleaning and leave-one-image-out scoring ran silent at any verbose
    # (20 s after the CNN's progress bar for 160 images of 128 px).
    X = np.random.RandomState(0).normal(size=(12, 4 * 4 * 3))
    params = dict(backbone=None, grid_shape=(4, 4), bank_cleaning=bank_cleaning,
                  device="cpu", random_state=0)
    PatchCoreDetector(**params).fit(X)
    assert capsys.readouterr().out == ""
    detector = PatchCoreDetector(**params, verbose=1).fit(X)
    lines = [re.sub(r" [0-9.]+ s$", "", line) for line in
             capsys.readouterr().out.splitlines()]
    stages = ["coreset of 192 patches"]
    if bank_cleaning == "images":
        n_kept = 16 * detector.inlier_mask_.sum()
        stages += ["12 images scored without their own patches",
                   f"coreset of the {n_kept} kept patches"]
    elif bank_cleaning == "patches":
        stages.append(f"support of the {detector.n_patches_selected_} bank patches")
    stages.append("12 images scored without their own patches")
    assert lines == [
        f"PatchCoreDetector: {stage}{end}"
        for stage in stages
        for end in ("...", ": done in")
    ]


@pytest.mark.parametrize("detector", [PatchCoreDetector, PatchFlowDetector])
def test_copies_of_one_training_image_are_refused(detector):
    # Copies left nothing to compare: the training image itself sat on the
    # threshold, flagged or not by the rounding of the batch it was in.
    row = np.random.RandomState(0).normal(size=(1, 4 * 4 * 3))
    params = dict(backbone=None, grid_shape=(4, 4), device="cpu", random_state=0)
    reason = {  # each its own (the flow's said the memory bank's)
        PatchCoreDetector: "against the patches of the others",
        PatchFlowDetector: "with flows fitted on the other images",
    }[detector]
    with pytest.raises(ValueError, match=f"The 10 training images are copies of one"
                       f" image: {detector.__name__} scores each training image "
                       f"{reason}, its threshold with them"):
        detector(**params).fit(np.repeat(row, 10, axis=0))
    varied = np.repeat(row, 10, axis=0)
    varied[0] += 1e-3
    detector(**params).fit(varied)
    # A channel far larger than the others hides none of their variation.
    distinct = np.random.RandomState(1).normal(size=(10, 16, 3))
    distinct[:, :, 0] = 1e6
    detector(**params).fit(distinct.reshape(10, -1))


@pytest.mark.parametrize("detector", [PatchCoreDetector, PatchFlowDetector])
def test_scores_and_maps_take_batch_size_images_at_a_time(surfaces, detector, tmp_path):
    # The patches of every image were held at once (2.6 MB an image at 224 px),
    # whatever batch_size said: 10,000 files needed about 26 GB.
    train, normal_test, defective, _ = surfaces
    fitted = detector(image_size=SIZE, batch_size=3, contamination=0.1, device="cpu",
                      random_state=0).fit(train)
    whole = copy.deepcopy(fitted).set_params(batch_size=100)  # the CNN's batches stay
    images = np.concatenate([normal_test, defective])
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    seen = []
    patches = type(fitted)._patches

    def counted(self, X, **quiet):
        seen.append(len(X))
        return patches(self, X, **quiet)

    for X in (images, paths):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(fitted), "_patches", counted)
            results = [fitted.score_samples(X), fitted.anomaly_map(X),
                       *fitted._scores_and_maps(X)]
        assert seen == [3, 3, 2] * 3
        seen.clear()
        expected = [whole.score_samples(X), whole.anomaly_map(X)]
        for result, wanted in zip(results, expected * 2):
            np.testing.assert_array_equal(result, wanted)
    with pytest.raises(ValueError, match="needs images of one size"):
        fitted.anomaly_map([*images[:4], images[4][:-8]])
    # One image without its batch axis is refused whole, not cut into rows.
    for one in (images[0], np.repeat(images[0][..., None], 3, axis=2)):
        with pytest.raises(ValueError, match=re.escape(f"shape {one.shape}")):
            fitted.score_samples(one)


def test_verbose_scoring_in_batches_shows_one_progress_bar(surfaces, capsys):
    train, normal_test, defective, _ = surfaces
    fitted = PatchCoreDetector(image_size=SIZE, batch_size=3, verbose=1, device="cpu",
                               random_state=0).fit(train)
    capsys.readouterr()
    fitted.score_samples(np.concatenate([normal_test, defective]))  # 3 batches
    shown = capsys.readouterr().err
    assert "PatchCoreDetector" in shown and "3/3" in shown
    assert "PatchFeatures" not in shown  # a bar of its own for each batch


@pytest.mark.parametrize("scale", [1.0, 1e-35, 1e35])
def test_raw_rows_are_scored_in_the_documented_units(scale):
    # The scores, maps and bank of raw rows beyond float32's safe range are in
    # units of input_scale_, as documented (they had read as the input's).
    X = np.random.RandomState(0).normal(size=(20, 4)) * scale
    det = PatchCoreDetector(backbone=None, coreset_fraction=1.0, random_state=0)
    det.fit(X)
    assert (det.input_scale_ == 1.0) == (scale == 1.0)
    query = X[:1] * 0.5
    nearest = np.linalg.norm(X - query, axis=1).min()
    np.testing.assert_allclose(-det.score_samples(query) * det.input_scale_, nearest,
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(det.anomaly_map(query).max() * det.input_scale_,
                               nearest, rtol=1e-5)  # fmt: skip
    bank = det.memory_bank_ * det.input_scale_ + det.input_offset_
    np.testing.assert_allclose(np.sort(bank, axis=0), np.sort(X, axis=0), rtol=1e-5)


@pytest.mark.parametrize("method", ["score_samples", "anomaly_map"])
def test_raw_rows_in_batches_are_checked_once(method):
    # Each batch of batch_size images repeated the names warning (4 for 100).
    pd = pytest.importorskip("pandas")
    X = np.random.RandomState(0).normal(size=(100, 36))
    frame = pd.DataFrame(X, columns=[f"c{i}" for i in range(36)])
    det = PatchCoreDetector(
        backbone=None, grid_shape=(3, 3), coreset_fraction=0.5, batch_size=32,
        random_state=0,
    ).fit(frame)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched = getattr(det, method)(X)
    assert [str(w.message)[:40] for w in caught] == [
        "X does not have valid feature names, but"
    ]
    whole = getattr(det.set_params(batch_size=100), method)(frame)
    np.testing.assert_array_equal(batched, whole)


def test_maps_of_a_large_image_file_warn_once_and_keep_a_warning_an_error(
    tmp_path, monkeypatch
):
    # The maps read each file's size with a bare Image.open: Pillow's warning
    # came twice (once without the file's name), and a filter that made it an
    # error turned it into a refusal of the file (a ValueError).
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (4, 12, 12, 3), np.uint8)
    det = PatchCoreDetector(TwoMaps(), image_size=8, device="cpu", random_state=0)
    det.fit(images)
    path = tmp_path / "big.png"
    Image.fromarray(images[0]).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det.anomaly_map([str(path)])
    bomb = Image.DecompressionBombWarning
    bombs = [w for w in caught if issubclass(w.category, bomb)]
    assert [str(w.message).startswith(f"{path}: ") for w in bombs] == [True]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(Image.DecompressionBombWarning):
            det.anomaly_map([str(path)])
