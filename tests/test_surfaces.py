"""make_surfaces: labels, exact masks, determinism, variation and validation."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_metarefine.datasets import SURFACE_CATEGORIES, make_surfaces
from sklearn_metarefine.datasets._surfaces import SURFACE_DEFECTS

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def draw(category, n_normal, n_anomalous, *, size=32, seed=0, **params):
    return make_surfaces(
        category,
        n_normal=n_normal,
        n_anomalous=n_anomalous,
        image_size=size,
        random_state=seed,
        **params,
    )


@pytest.fixture(scope="module", params=SURFACE_CATEGORIES)
def surfaces(request):
    """Every defect type of a category twice, and three good images, at 64 px."""
    category = request.param
    n_types = len(SURFACE_DEFECTS[category])
    return make_surfaces(
        category,
        n_normal=3,
        n_anomalous=2 * n_types,
        image_size=64,
        return_defect_free=True,
        random_state=0,
    )


def test_arrays_labels_and_metadata(surfaces):
    n = len(surfaces.target)
    assert surfaces.images.shape == (n, 64, 64, 3)
    assert surfaces.images.dtype == np.uint8
    assert surfaces.masks.shape == (n, 64, 64)
    assert surfaces.masks.dtype == bool
    assert surfaces.defect_free.shape == surfaces.images.shape
    types = SURFACE_DEFECTS[surfaces.category]
    np.testing.assert_array_equal(surfaces.target, [0] * 3 + [1] * (2 * len(types)))
    assert list(surfaces.defect_type) == ["good"] * 3 + list(types) * 2
    assert list(surfaces.target_names) == ["good", "defective"]
    np.testing.assert_allclose(surfaces.defect_area, surfaces.masks.mean(axis=(1, 2)))
    assert surfaces.category in SURFACE_CATEGORIES
    assert "Generated industrial surfaces" in surfaces.DESCR


def test_good_images_have_empty_masks_and_defects_do_not(surfaces):
    good = surfaces.target == 0
    assert not surfaces.masks[good].any()
    assert surfaces.masks[~good].any(axis=(1, 2)).all()
    np.testing.assert_array_equal(surfaces.images[good], surfaces.defect_free[good])


def test_pixels_outside_the_mask_are_those_of_the_defect_free_image(surfaces):
    images, clean, masks = surfaces.images, surfaces.defect_free, surfaces.masks
    for image, reference, mask, defect in zip(
        images, clean, masks, surfaces.defect_type
    ):
        np.testing.assert_array_equal(image[~mask], reference[~mask], err_msg=defect)
        if defect != "good":
            changed = (image != reference).any(axis=-1)
            # The mask is where the defect was painted; a soft edge or a thread
            # passing under may leave some of it unchanged, not most of it.
            assert changed[mask].mean() > 0.3, defect


def test_every_defect_is_one_region(surfaces):
    """AUPRO weighs every region equally: a defect must not crumble into specks."""
    for mask, defect in zip(surfaces.masks, surfaces.defect_type):
        if defect != "good":
            _, n_regions = ndimage.label(mask, structure=EIGHT_NEIGHBOURS)
            assert n_regions == 1, defect


@pytest.mark.parametrize("category", SURFACE_CATEGORIES)
def test_every_defect_is_one_region_over_many_draws(category):
    # Cracks and scratches may leave the image and come back; blobs may fray.
    data = make_surfaces(
        category, n_normal=0, n_anomalous=60, image_size=48, random_state=11
    )
    for mask, defect in zip(data.masks, data.defect_type):
        _, n_regions = ndimage.label(mask, structure=EIGHT_NEIGHBOURS)
        assert n_regions == 1, defect


def test_defect_free_images_are_the_images_generated_without_it():
    with_reference = make_surfaces(
        "tile", n_normal=1, n_anomalous=3, image_size=48,
        return_defect_free=True, random_state=5,
    )
    without = make_surfaces(
        "tile", n_normal=1, n_anomalous=3, image_size=48, random_state=5
    )
    np.testing.assert_array_equal(with_reference.images, without.images)
    assert "defect_free" not in without


def test_defect_areas_span_about_one_to_ten_percent():
    areas = np.concatenate(
        [
            make_surfaces(
                category, n_normal=0, n_anomalous=20, image_size=64, random_state=1
            ).defect_area
            for category in SURFACE_CATEGORIES
        ]
    )
    assert areas.min() > 0.003 and areas.max() < 0.15
    assert np.mean(areas < 0.02) > 0.2 and np.mean(areas > 0.05) > 0.05


def test_low_and_high_contrast_defects_are_both_drawn():
    data = make_surfaces(
        "metal", n_normal=0, n_anomalous=40, image_size=64,
        defect_types="stain", return_defect_free=True, random_state=0,
    )
    # The mean change inside the mask, relative to the surface's brightness.
    change = np.array(
        [
            np.abs(image[mask].astype(float) - clean[mask]).mean() / clean[mask].mean()
            for image, clean, mask in zip(data.images, data.defect_free, data.masks)
        ]
    )
    assert change.max() > 1.4 * change.min()


def test_same_seed_same_images_other_seed_other_images():
    first = draw("fabric", 2, 2, size=48, seed=3)
    again = draw("fabric", 2, 2, size=48, seed=3)
    other = draw("fabric", 2, 2, size=48, seed=4)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.masks, again.masks)
    assert not np.array_equal(first.images, other.images)


def test_global_numpy_seed_changes_nothing():
    np.random.seed(0)
    first = draw("stone", 1, 1, seed=7)
    np.random.seed(1)
    second = draw("stone", 1, 1, seed=7)
    np.testing.assert_array_equal(first.images, second.images)


def test_a_smaller_request_is_a_prefix_of_a_larger_one():
    small = draw("wood", 2, 3, seed=0)
    large = draw("wood", 5, 7, seed=0)
    np.testing.assert_array_equal(small.images[:2], large.images[:2])
    np.testing.assert_array_equal(small.images[2:], large.images[5:8])
    np.testing.assert_array_equal(small.masks[2:], large.masks[5:8])


def test_random_state_instance_is_used_and_advanced():
    rng = np.random.RandomState(0)
    first = draw("metal", 1, 0, seed=rng)
    second = draw("metal", 1, 0, seed=rng)
    assert not np.array_equal(first.images, second.images)
    replay = make_surfaces(
        "metal", n_normal=1, n_anomalous=0, image_size=32,
        random_state=np.random.RandomState(0),
    )
    np.testing.assert_array_equal(first.images, replay.images)


@pytest.mark.parametrize("category", SURFACE_CATEGORIES)
def test_good_images_vary_like_a_texture(category):
    """Two good images are different pieces of the same surface, not one picture."""
    data = draw(category, 6, 0, size=64)
    images = data.images.astype(float)
    differences = [np.abs(images[0] - image).mean() for image in images[1:]]
    assert min(differences) > 3.0
    # ...and the same surface: colour statistics agree far better than the pixels.
    colours = images.mean(axis=(1, 2))
    assert np.abs(colours - colours.mean(axis=0)).max() < 0.25 * colours.mean()


def test_defective_images_are_other_pieces_of_the_surface(surfaces):
    """A defective image is not a good one of the same index with a defect on
    it: its defect-free version differs from every good image."""
    good = surfaces.images[surfaces.target == 0].astype(float)
    for clean in surfaces.defect_free[surfaces.target == 1].astype(float):
        assert min(np.abs(image - clean).mean() for image in good) > 3.0


def test_images_are_sized_as_asked():
    data = draw("tile", 1, 1, size=96)
    assert data.images.shape == (2, 96, 96, 3)
    assert data.masks.shape == (2, 96, 96)


def test_defect_types_selects_and_cycles():
    data = make_surfaces(
        "wood", n_normal=0, n_anomalous=5, image_size=32,
        defect_types=["hole", "crack"], random_state=0,
    )
    assert list(data.defect_type) == ["hole", "crack", "hole", "crack", "hole"]
    only = make_surfaces(
        "fabric", n_normal=0, n_anomalous=2, image_size=32,
        defect_types="missing_thread", random_state=0,
    )
    assert set(only.defect_type) == {"missing_thread"}
    # an array of names gave numpy's str_ in defect_type
    named = make_surfaces(
        "wood", n_normal=0, n_anomalous=2, image_size=32,
        defect_types=np.array(["hole", "crack"]), random_state=0,
    )
    assert [type(name) for name in named.defect_type] == [str, str]


def test_a_defect_the_category_lacks_is_named_in_the_error():
    with pytest.raises(ValueError, match="'missing_thread'.*'metal'.*scratch"):
        make_surfaces("metal", defect_types=["scratch", "missing_thread"])
    with pytest.raises(ValueError, match=r"defect_types=\[\].*\(none named\)"):
        make_surfaces("metal", defect_types=[])
    # A repeat skewed the cycle that makes every type equally represented.
    with pytest.raises(ValueError, match=r"\(named twice: \['scratch'\]\)"):
        make_surfaces("metal", defect_types=["scratch", "scratch", "stain"])


@pytest.mark.parametrize("given", [np.array("hole"), np.array([["hole"]])])
def test_defect_types_as_an_array_of_any_shape(given):
    # array-like passed the parameter check, then iterating a 0-d array or
    # hashing rows of a 2-D one raised a bare TypeError.
    data = make_surfaces("wood", n_normal=0, n_anomalous=2, image_size=32,
                         defect_types=given, random_state=0)  # fmt: skip
    assert data.defect_type.tolist() == ["hole", "hole"]


def test_an_unordered_set_of_defect_types_is_refused():
    # The draws followed the set's order, which changes with the hash seed:
    # the same random_state gave other images from one run to the next.
    named = r"a set \(\[\"'crack'\", \"'hole'\"\]\).*a list"
    with pytest.raises(TypeError, match=named):
        make_surfaces("wood", n_anomalous=2, defect_types={"hole", "crack"})
    with pytest.raises(TypeError, match="a frozenset"):  # not sortable: named still
        make_surfaces("wood", n_anomalous=2, defect_types=frozenset({"hole", 1}))
    # A dict keeps its order: its keys are the types, as a list's items.
    data = make_surfaces(
        "wood", n_normal=0, n_anomalous=2, image_size=32,
        defect_types={"hole": 1, "crack": 2}, random_state=0,
    )  # fmt: skip
    assert list(data.defect_type) == ["hole", "crack"]


def test_no_image_requested_is_an_error():
    with pytest.raises(ValueError, match="at least one image"):
        make_surfaces("metal", n_normal=0, n_anomalous=0)


@pytest.mark.parametrize(
    "params",
    [
        {"category": "carpet"},
        {"n_normal": -1},
        {"n_anomalous": 1.5},
        {"image_size": 16},
        {"random_state": "zero"},
        {"return_defect_free": "yes"},
    ],
)
def test_invalid_parameters_are_rejected(params):
    with pytest.raises(InvalidParameterError):
        make_surfaces(**params)


def _fabric(seed, size=128):
    from sklearn_metarefine.datasets._textures import _grid, fabric

    return fabric(np.random.default_rng(seed), _grid(size))


def test_pixel_centres_sit_half_a_pixel_in():
    from sklearn_metarefine.datasets._textures import REFERENCE_SIZE, _grid

    grid = _grid(4)
    np.testing.assert_allclose(grid.x[0], (np.arange(4) + 0.5) * REFERENCE_SIZE / 4)
    np.testing.assert_allclose(grid.y[:, 0], grid.x[0])


def test_warp_and_weft_threads_run_across_each_other():
    # Each layer is dark in the gaps between its own threads, bright on their
    # crowns: the warp across u, the weft across v.
    extras = _fabric(0).extras
    for layer, coordinate in (("warp", "u"), ("weft", "v")):
        fraction = extras[coordinate] % 1
        gap = extras[layer][(fraction < 0.05) | (fraction > 0.95)].mean()
        crown = extras[layer][np.abs(fraction - 0.5) < 0.05].mean()
        assert gap < 0.5 * crown, layer


def test_missing_and_coloured_threads_are_one_or_two_threads_of_the_weave():
    from sklearn_metarefine.datasets._defects import _thread_band, color_thread

    counts, sides = set(), set()
    for seed in range(40):
        surface = _fabric(seed)
        u, v = surface.extras["u"], surface.extras["v"]
        warp, band = _thread_band(np.random.default_rng(seed), surface, 0.02)
        counts.add(len(np.unique(np.floor(u if warp else v)[band])))
        # A thread of another colour (the same band, from the same seed) shows
        # where it passes over the other one.
        _, target = color_thread(np.random.default_rng(seed), surface, 0.02)
        changed = band & np.any(target != surface.reflectance, axis=-1)
        warp_on_top = (np.floor(u) + np.floor(v)) % 2 == 0  # as the fabric draws it
        assert changed.any()
        assert np.all(warp_on_top[changed] == warp)
        sides.add(warp)
    assert counts == {1, 2} and sides == {True, False}
