"""What the package refuses, and how: the bad-input matrix.

Each row of a table below is one bad input given to a public estimator or to
``metarefine benchmark``, and what must happen: an error of a given type whose
message holds a given fragment, or, where the package converts the input
instead of refusing it, the documented conversion, which the row's test
checks. The tables are the reference of what the package refuses.
"""

import concurrent.futures
import hashlib
import json
import warnings
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import ExifTags, Image
from scipy import sparse
from sklearn.ensemble import IsolationForest

import sklearn_metarefine
from sklearn_metarefine._features._images import _image_source
from sklearn_metarefine._image_files import UnreadableImageError, read_image
from sklearn_metarefine._rounds import stop_reason
from sklearn_metarefine import (
    FlowDetector,
    IQRRefiner,
    MAMLFlowDetector,
    MetaRefineDetector,
    PatchCoreDetector,
    PatchFlowDetector,
    PretrainedFeatures,
)
from sklearn_metarefine._benchmark import BenchmarkError, resolve_config, run_benchmark
from sklearn_metarefine._benchmark._data import load_category
from sklearn_metarefine._benchmark._storage import _feature_path, claim_output

ROOT = Path(__file__).resolve().parents[1]

# --- numeric estimators ---------------------------------------------------------

TINY_FLOW = dict(n_blocks=2, hidden_size=8, max_epochs=2, device="cpu", random_state=0)
ESTIMATORS = {
    "FlowDetector": lambda: FlowDetector(**TINY_FLOW),
    "MAMLFlowDetector": lambda: MAMLFlowDetector(**TINY_FLOW),
    "IQRRefiner": lambda: IQRRefiner(
        FlowDetector(**TINY_FLOW), max_iter=2, random_state=0
    ),
    "MetaRefineDetector": lambda: MetaRefineDetector(
        backbone=None, max_iter=2, **TINY_FLOW
    ),
    # Rows of patch vectors (backbone=None): here each row is one patch.
    "PatchCoreDetector": lambda: PatchCoreDetector(backbone=None, random_state=0),
    "PatchFlowDetector": lambda: PatchFlowDetector(
        backbone=None,
        flow=FlowDetector(n_blocks=2, hidden_size=8, max_epochs=2),
        cv=3,
        device="cpu",
        random_state=0,
    ),
}
X = np.random.RandomState(0).normal(size=(30, 4))
X_TEST = np.random.RandomState(1).normal(size=(20, 4))
COLUMNS = ["a", "b", "c", "d"]


def _with(value):
    bad = X.copy()
    bad[1, 1] = value
    return bad


NUMERIC_INPUTS = {
    "NaN": lambda: _with(np.nan),
    "infinity": lambda: _with(np.inf),
    "no sample": lambda: X[:0],
    "one sample": lambda: X[:1],
    "sparse matrix": lambda: sparse.csr_matrix(X),
    "1-D array": lambda: X[:, 0],
    "3-D array": lambda: X.reshape(30, 2, 2),
    "complex numbers": lambda: X.astype(complex),
    "strings": lambda: np.full((30, 4), "a"),
    "3 of the 4 columns": lambda: X[:, :3],
    "other feature names": lambda: pd.DataFrame(X, columns=["a", "b", "c", "e"]),
}

# (input, method, error type, message fragment). A "score_samples" row scores
# the input with the estimator fitted on X (on a DataFrame of X with columns
# a..d for the feature-name row).
NUMERIC_ROWS = [
    ("NaN", "fit", ValueError, "contains NaN"),
    ("infinity", "fit", ValueError, "contains infinity"),
    ("no sample", "fit", ValueError, "0 sample"),
    ("one sample", "fit", ValueError, "1 sample|n_samples=1"),
    ("sparse matrix", "fit", TypeError, "dense data is required"),
    ("1-D array", "fit", ValueError, "Expected 2D array"),
    ("3-D array", "fit", ValueError, "dim 3"),
    ("complex numbers", "fit", ValueError, "Complex data"),
    ("strings", "fit", ValueError, "string"),
    ("NaN", "score_samples", ValueError, "contains NaN"),
    ("infinity", "score_samples", ValueError, "contains infinity"),
    ("sparse matrix", "score_samples", TypeError, "dense data is required"),
    ("3 of the 4 columns", "score_samples", ValueError, "3 features, but"),
    ("other feature names", "score_samples", ValueError, "feature names should match"),
]


@pytest.fixture(scope="module")
def fitted():
    """Each numeric estimator fitted on X, and on X as a DataFrame."""
    frame = pd.DataFrame(X, columns=COLUMNS)
    return {
        name: (make().fit(X), make().fit(frame)) for name, make in ESTIMATORS.items()
    }


@pytest.mark.parametrize(
    "data, method, error, match",
    NUMERIC_ROWS,
    ids=[f"{method}-{data}" for data, method, _, _ in NUMERIC_ROWS],
)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_numeric_estimators_refuse(estimator, data, method, error, match, fitted):
    if method == "fit":
        target = ESTIMATORS[estimator]()
    else:
        on_array, on_frame = fitted[estimator]
        target = on_frame if data == "other feature names" else on_array
    with pytest.raises(error, match=match):
        getattr(target, method)(NUMERIC_INPUTS[data]())


# Conversions: inputs that are accepted, with what the package promises.


@pytest.mark.parametrize("factor", [1e-15, 1e-300, 1e300])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_any_scale_ranks_as_the_unscaled_data(estimator, factor, fitted):
    # Standardisation is relative to each feature's magnitude: a spread of
    # 1e-15 is data, not a constant feature (it used to give every row one
    # identical score), and 1e300 does not overflow.
    expected = fitted[estimator][0].score_samples(X_TEST)
    scaled = ESTIMATORS[estimator]().fit(X * factor).score_samples(X_TEST * factor)
    assert np.unique(scaled).size == len(X_TEST)
    np.testing.assert_array_equal(np.argsort(scaled), np.argsort(expected))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_value_near_1e300_is_the_most_anomalous_never_nan(estimator, fitted):
    extreme = _with(1e300)
    if estimator == "PatchCoreDetector":
        # A memory bank holds its own training rows, the farthest ones first,
        # and scores each of them 0: the row is scored unseen instead.
        scores = fitted[estimator][0].score_samples(extreme)
    else:
        scores = ESTIMATORS[estimator]().fit(extreme).score_samples(extreme)
    assert not np.isnan(scores).any()
    assert np.argmin(scores) == 1
    assert np.isfinite(np.delete(scores, 1)).all()


@pytest.mark.parametrize("estimator", ["FlowDetector", "MAMLFlowDetector"])
def test_warm_refit_on_values_near_1e300_says_overflow(estimator, fitted):
    # The warm fit keeps the first fit's standardisation, so these values
    # reach the flow's float32 arithmetic as they are.
    flow = fitted[estimator][0]
    with pytest.raises(ValueError, match="1e\\+300 in magnitude.*overflows") as error:
        flow.set_params(warm_start=True).fit(_with(1e300))
    flow.set_params(warm_start=False)
    assert "Lower the learning rate" not in str(error.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start", ["neighbors", "trimmed"])
def test_the_rows_that_used_to_cycle_forever_end(start):
    # On these 50 rows the rounds of a trimmed start used to alternate between
    # two kept sets forever (max_iter=None). Only the first round re-admits
    # now, so the kept sets shrink after it and the refinement ends.
    rows = np.random.RandomState(4).normal(size=(50, 2))
    refiner = IQRRefiner(
        IsolationForest(), start=start, max_iter=None, random_state=0
    ).fit(rows)
    assert refiner.termination_condition_ in {"no_change", "clean_tail", "cycle"}
    assert refiner.n_iter_ == len(refiner.thresholds_) < 10


class _Alternating(BaseEstimator):
    """Scores whichever half of the rows it was not fitted on as anomalous."""

    def fit(self, X, y=None):
        self.first_half_ = bool(X[0, 0] < 0)
        return self

    def score_samples(self, X):
        in_first_half = X[:, 0] < 0
        return np.where(in_first_half == self.first_half_, 0.0, -1e6)


def test_a_refinement_that_returns_to_an_earlier_kept_set_ends_on_the_cycle(capsys):
    # The guard that makes any re-admitting refinement end: the stop rule
    # itself, and a refiner whose stop rule is fed a kept set seen before.
    kept = np.array([True, True, False, False])
    earlier = np.array([False, True, True, True])
    assert stop_reason(earlier, kept, 1, seen={earlier.tobytes()}) == "cycle"
    assert stop_reason(earlier, kept, 1, seen=set()) is None
    rows = np.linspace(-1, 1, 40)[:, None]
    refiner = IQRRefiner(
        _Alternating(), start="trimmed", start_fraction=0.5, max_iter=None,
        fence_scores="in_sample", stop="no_change", verbose=1,
    ).fit(rows)
    assert refiner.termination_condition_ in {"cycle", "no_change"}
    alone = _Alternating().fit(rows[refiner.inlier_mask_])
    np.testing.assert_array_equal(
        refiner.score_samples(rows), alone.score_samples(rows)
    )


# --- images ---------------------------------------------------------------------

RGB = np.random.RandomState(0).randint(0, 256, size=(6, 12, 10, 3), dtype=np.uint8)
GRAY = RGB[..., 0]
# Larger than any other test image, and than Image.MAX_IMAGE_PIXELS as the
# bomb row sets it: Pillow refuses images over twice the limit.
BOMB_LIMIT = 200


def _backbone():
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        for tensor in (conv.weight, conv.bias):
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return conv


def _features():
    return PretrainedFeatures(
        _backbone(), image_size=16, n_scales=1, device="cpu", random_state=0
    )


def _detector():
    return MetaRefineDetector(
        _backbone(),
        image_size=16,
        n_scales=1,
        max_iter=2,
        pca_components=2,
        **TINY_FLOW,
    )


def _save(array, path):
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Good PNGs, and one file or folder per bad case, by the case's name."""
    folder = tmp_path_factory.mktemp("images")
    good = [_save(image, folder / f"good{i}.png") for i, image in enumerate(RGB)]
    (folder / "corrupt.png").write_bytes(b"this is not a PNG")
    (folder / "truncated.png").write_bytes(good[0].read_bytes()[:60])
    (folder / "folder.png").mkdir()
    bad = {
        "missing path": folder / "nowhere.png",
        "directory": folder / "folder.png",
        "corrupt file": folder / "corrupt.png",
        "truncated file": folder / "truncated.png",
        "decompression bomb": _save(np.zeros((40, 40), np.uint8), folder / "bomb.png"),
        "float image beyond [0, 1]": _save(
            np.full((12, 10), 3.0, np.float32), folder / "float.tif"
        ),
        "32-bit integers beyond 16 bits": _save(
            np.full((12, 10), 70000, np.int32), folder / "int32.tif"
        ),
        "negative 32-bit integers": _save(
            np.full((12, 10), -1, np.int32), folder / "negative.tif"
        ),
        # Its message advised rescaling to [0, 1], which keeps the NaN.
        "float image with a NaN pixel": _save(
            np.where(np.eye(12, 10, dtype=bool), np.nan, 0.5).astype(np.float32),
            folder / "nan.tif",
        ),
    }
    return good, bad


def _pixels(value):
    images = RGB / 255.0
    images[2, 3, 4, 0] = value
    return images


IMAGE_ARRAYS = {
    "NaN pixels": lambda: _pixels(np.nan),
    "infinite pixels": lambda: _pixels(np.inf),
    "no image": lambda: [],
    "sparse matrix": lambda: sparse.csr_matrix(RGB.reshape(6, -1)),
    "4 channels": lambda: np.zeros((6, 8, 8, 4), np.uint8),
    "pixel values above 255": lambda: np.full((6, 8, 8), 300),
    "flat rows without input_shape": lambda: RGB.reshape(6, -1),
    "a single path, not a list": lambda: "image.png",
}

# (input, error type, message fragment). Files are appended to the good files,
# so each message must name the bad one (X[6]).
IMAGE_ROWS = [
    (
        "missing path",
        FileNotFoundError,
        r"X\[6\]: image file '.*nowhere.png' not found",
    ),
    ("directory", IsADirectoryError, r"X\[6\]: '.*folder.png' is a directory"),
    ("corrupt file", ValueError, r"X\[6\]: image file '.*corrupt.png': cannot read"),
    ("truncated file", ValueError, r"truncated.png': cannot read .*truncated"),
    ("decompression bomb", ValueError, r"bomb.png': cannot read .*decompression bomb"),
    ("float image beyond [0, 1]", ValueError, r"float.tif' has PIL mode 'F'"),
    ("32-bit integers beyond 16 bits", ValueError, r"int32.tif' has PIL mode 'I'"),
    ("negative 32-bit integers", ValueError, r"negative.tif' has PIL mode 'I'"),
    (
        "float image with a NaN pixel",
        ValueError,
        r"nan.tif' has PIL mode 'F' \(32-bit floats\) and 10 pixels NaN or "
        r"infinite\. Replace them",
    ),
    ("NaN pixels", ValueError, "contains NaN"),
    ("infinite pixels", ValueError, "contains infinity"),
    ("no image", ValueError, "X is empty"),
    ("sparse matrix", TypeError, "dense data is required"),
    ("4 channels", ValueError, r"4 channels in its last axis.* drop the alpha"),
    ("pixel values above 255", ValueError, r"expected integers in \[0, 255\]"),
    ("flat rows without input_shape", ValueError, "pass input_shape"),
    ("a single path, not a list", ValueError, "single image"),
]


@pytest.mark.parametrize(
    "images, fix",
    [
        (np.zeros((2, 16, 16, 2), np.uint8), r"keep the gray, e\.g\. X\[\.\.\., :1\]"),
        ([np.zeros((16, 16, 2), np.uint8)], r"e\.g\. X\[0\]\[\.\.\., :1\]"),
        ([np.zeros((16, 16, 4), np.uint8)], r"e\.g\. X\[0\]\[\.\.\., :3\]"),
        ([np.zeros((5, 16, 16), np.uint8)], r"np\.moveaxis\(X\[0\], 0, -1\)"),
    ],
)
def test_channel_messages_give_a_fix_that_applies(images, fix):
    # Gray with alpha was called channels-first, and a list's image was told
    # to move axis 1 of X, or to slice X, which is a list.
    with pytest.raises(ValueError, match=fix):
        _features().fit_transform(images)


@pytest.fixture(scope="module")
def fitted_on_images(image_files):
    good, _ = image_files
    return _features().fit(good), _detector().fit(good)


@pytest.mark.parametrize(
    "data, error, match", IMAGE_ROWS, ids=[row[0] for row in IMAGE_ROWS]
)
@pytest.mark.parametrize(
    "method",
    [
        "PretrainedFeatures.transform",
        "MetaRefineDetector.fit",
        "MetaRefineDetector.score_samples",
    ],
)
def test_image_inputs_are_refused_by_name(
    method, data, error, match, image_files, fitted_on_images, monkeypatch
):
    good, bad = image_files
    images = good + [bad[data]] if data in bad else IMAGE_ARRAYS[data]()
    if data == "decompression bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    features, detector = fitted_on_images
    target = {
        "PretrainedFeatures.transform": features.transform,
        "MetaRefineDetector.fit": _detector().fit,
        "MetaRefineDetector.score_samples": detector.score_samples,
    }[method]
    with pytest.raises(error, match=match):
        target(images)


def test_one_image_is_too_few_to_refine(fitted_on_images):
    with pytest.raises(ValueError, match="n_samples=1"):
        _detector().fit(RGB[:1])


def test_other_bit_depths_embed_like_their_8bit_images(tmp_path, fitted_on_images):
    # The same pixels as 16-bit PNGs (mode I;16), 32-bit integer TIFFs holding
    # 16-bit values (mode I) and float TIFFs in [0, 1] (mode F), on disk and in
    # memory. Tolerance: float32 rounding of the pixel values, through the CNN.
    sixteen = GRAY.astype(np.uint16) * 257
    forms = {
        "I;16": [_save(g, tmp_path / f"s{i}.png") for i, g in enumerate(sixteen)],
        "I": [
            _save(g.astype(np.int32), tmp_path / f"i{i}.tif")
            for i, g in enumerate(sixteen)
        ],
        "F": [
            _save((g / 255).astype(np.float32), tmp_path / f"f{i}.tif")
            for i, g in enumerate(GRAY)
        ],
        "F in memory": [Image.fromarray((g / 255).astype(np.float32)) for g in GRAY],
        "I in memory": [Image.fromarray(g.astype(np.int32)) for g in sixteen],
        "uint16 array": sixteen,
        "uint16 arrays": list(sixteen),
    }
    for mode in ("I;16", "I", "F"):
        with Image.open(forms[mode][0]) as image:
            assert image.mode == mode
    features = fitted_on_images[0]
    expected = features.transform(GRAY)
    black = features.transform(np.zeros_like(GRAY))
    for mode, images in forms.items():
        embedded = features.transform(images)
        np.testing.assert_allclose(embedded, expected, rtol=1e-5, atol=1e-5)
        assert not np.allclose(embedded, black, atol=1e-3), mode
    # A dark 16-bit frame (every value under 256) is still 16-bit: read as its
    # file is, not as an 8-bit image 257 times brighter.
    dark = GRAY.astype(np.uint16)
    files = [_save(g, tmp_path / f"d{i}.png") for i, g in enumerate(dark)]
    np.testing.assert_allclose(
        features.transform(dark), features.transform(files), rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(features.transform(dark), expected, atol=1e-3)
    # 8-bit values in a 32-bit PIL image made in memory: as an array they are
    # 8-bit, from a file 16-bit; it was read as a nearly black 16-bit image.
    ambiguous = [Image.fromarray(g.astype(np.int32)) for g in GRAY]
    with pytest.raises(ValueError, match=r"X\[0\] has PIL mode 'I' .* Convert it to"):
        features.transform(ambiguous)


def test_a_file_of_several_pages_is_refused_naming_it(tmp_path, fitted_on_images):
    # A multi-page TIFF was scored on its first page alone.
    pages = [Image.fromarray(image) for image in RGB[:2]]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ValueError, match=r"stack.tif.* holds 2 images \(pages"):
        fitted_on_images[0].transform([tmp_path / "stack.tif"])
    with pytest.raises(UnreadableImageError, match=r"stack.tif.* holds 2 images"):
        read_image(tmp_path / "stack.tif")


def test_files_and_arrays_the_reader_took_for_others(tmp_path, fitted_on_images):
    features = fitted_on_images[0]
    # A dark 32-bit integer TIFF (values under 256) was refused as "not
    # decoded from a file": turning it upright dropped its format.
    dark = GRAY.astype(np.int32)
    files = [_save(g, tmp_path / f"i{i}.tif") for i, g in enumerate(dark)]
    np.testing.assert_allclose(
        features.transform(files), features.transform(dark.astype(np.uint16)),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    # A big-endian uint16 array (a 16-bit TIFF's pixels) was read as 8-bit.
    big_endian = dark.astype(">u2")
    np.testing.assert_allclose(
        features.transform(big_endian), features.transform(dark.astype(np.uint16)),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    # A camera's JPEG with a preview frame (MPO) was refused as two pages.
    Image.fromarray(RGB[0]).save(
        tmp_path / "camera.jpg", format="MPO", save_all=True,
        append_images=[Image.fromarray(RGB[0][::2, ::2].copy())],
    )  # fmt: skip
    jpeg = _save(RGB[0], tmp_path / "plain.jpg")
    np.testing.assert_array_equal(
        features.transform([tmp_path / "camera.jpg"]), features.transform([jpeg])
    )
    # Pillow's premultiplied gray with alpha (La) was refused.
    la = Image.fromarray(GRAY[0]).convert("LA").convert("La")
    np.testing.assert_allclose(
        features.transform([la]), features.transform(GRAY[:1]), rtol=1e-5, atol=1e-5
    )


def test_one_gray_image_with_a_channel_axis_is_refused(fitted_on_images):
    # (H, W, 1) was read as H images one pixel wide.
    with pytest.raises(ValueError, match=r"reads as 12 gray images of 10 x 1 pixels"):
        fitted_on_images[0].transform(GRAY[0][..., None])
    # Gray images that narrow were refused with advice for one image only,
    # which led to a second refusal; the advice for them now reads them.
    narrow = GRAY[:5, :, :4]
    with pytest.raises(ValueError, match=r"that narrow, X\[\.\.\., np\.newaxis\]"):
        fitted_on_images[0].transform(narrow)
    assert fitted_on_images[0].transform(narrow[..., np.newaxis]).shape[0] == 5


def test_a_large_image_warning_names_the_file(tmp_path, fitted_on_images, monkeypatch):
    # The CLI's reader named it; the estimators' did not.
    path = _save(RGB[0], tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(Image.DecompressionBombWarning, match=r"big.png: Image size") as w:
        fitted_on_images[0].transform([path])
    assert [warning.filename for warning in w] == [__file__]  # the caller's line
    with pytest.warns(Image.DecompressionBombWarning) as w:
        read_image(path)
    assert [warning.filename for warning in w] == [__file__]
    # A filter that makes the warning an error gets the warning, not a refusal
    # of the file (which --skip-unreadable would skip).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(Image.DecompressionBombWarning, match=r"big.png: Image size"):
            read_image(path)


@pytest.mark.parametrize(
    ("input_shape", "match"),
    [((8.7, 8), r"input_shape must be .*got \(8.7, 8\)"),
     ((3, 8, 8), r"reorder each row's pixels to channels last")],
)  # fmt: skip
def test_input_shape_refuses_fractions_and_explains_channels_first(input_shape, match):
    # (8.7, 8) was truncated to (8, 8); channels-first rows were told to use
    # np.moveaxis(X, 1, -1), which does nothing for 2-D rows.
    from sklearn_metarefine import PretrainedFeatures

    rows = np.zeros((2, int(np.prod(input_shape)) or 64), dtype=np.uint8)
    features = PretrainedFeatures(_backbone(), image_size=16, n_scales=1, input_shape=input_shape)
    with pytest.raises(ValueError, match=match):
        features.fit(rows)


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_exif_orientation_turns_files_upright(tmp_path, fitted_on_images, suffix):
    # A camera stores a portrait photograph sideways with an orientation tag;
    # the detectors read it as viewers show it (they read the stored pixels).
    # Pillow's TIFF reader gives the upright size itself: turned again, the
    # maps of a TIFF file came out with height and width swapped.
    upright = RGB[0]  # 12 x 10
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned a quarter clockwise
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / f"turned{suffix}", exif=exif)
    files = [tmp_path / f"turned{suffix}"]
    features = fitted_on_images[0]
    np.testing.assert_allclose(
        features.transform(files), features.transform(upright[None]), atol=1e-5
    )
    assert _image_source(files, None).sizes() == [upright.shape[:2]]
    np.testing.assert_array_equal(read_image(files[0]), upright)


_STORED_AS = {  # how a camera stores an upright image under each EXIF orientation
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}  # fmt: skip


@pytest.mark.parametrize("orientation", sorted(_STORED_AS))
def test_every_exif_orientation_reads_upright_at_its_size(tmp_path, orientation):
    # 5 and 7 (mirrored quarter turns) swap height and width too: the maps of
    # such a file would come out at the stored size, not the image's.
    upright = RGB[0]  # 12 x 10
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = tmp_path / "stored.png"
    Image.fromarray(upright).transpose(_STORED_AS[orientation]).save(path, exif=exif)
    assert _image_source([path], None).sizes() == [upright.shape[:2]]
    np.testing.assert_array_equal(read_image(path), upright)


# --- the command line -----------------------------------------------------------

BASE = [
    "benchmark",
    "--categories",
    "3",
    "--noise",
    "0",
    "--repeats",
    "1",
    "--models",
    "iforest",
    "--image-size",
    "32",
    "--n-jobs",
    "1",
    "--no-progress",
]
BASE_CONFIG = {"features": {"image_size": 32}}
RUN_RECORD = "digit3_noise0.0000_rep0_iforest.json"


def _finished(out, *, results=True):
    """An output folder of BASE's configuration with its features cached."""
    config = resolve_config("digits", BASE_CONFIG)
    (out / "runs").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    images = load_category("digits", "digit3", None)[0]
    cache = _feature_path(images, config, out / "features")
    cache.parent.mkdir()
    np.save(cache, np.zeros((len(images), 8), np.float32))
    if results:
        (out / "results.json").write_text('{"finished": true}')
    return cache


def _read_only(out):
    """A folder this process cannot write to, or None."""
    out.mkdir()
    out.chmod(0o555)
    try:
        (out / "probe").touch()
    except PermissionError:
        return out
    # Permissions do not bind root; sysfs refuses new files to everyone.
    (out / "probe").unlink()
    probe = Path("/sys/kernel") / "metarefine-probe"
    try:
        with open(probe, "x"):
            pass
    except OSError:
        return probe.parent if probe.parent.is_dir() else None
    probe.unlink()
    return None


def _write(name, text):
    def prepare(folder, out):
        (folder / name).write_text(text)

    return prepare


def _link_to_nothing(name):
    def prepare(folder, out):
        (folder / name).symlink_to(folder / "nowhere")

    return prepare


def _truncate_cache(folder, out):
    cache = _finished(out, results=False)
    cache.write_bytes(cache.read_bytes()[:100])


def _corrupt_record(folder, out):
    _finished(out)
    (out / "runs" / RUN_RECORD).write_text('{"auroc": 0.9')


def _corrupt_config(folder, out):
    _finished(out)
    (out / "config.json").write_text("{")


# (case, arguments, preparation, exit status, fragment of stderr's last line).
# In the arguments, OUT is the output folder and DIR the case's own folder.
CLI_ROWS = [
    (
        "--repeats 0 on a finished folder",
        ["--repeats", "0", "--output", "OUT"],
        lambda folder, out: _finished(out),
        2,
        "argument --repeats: must be a positive",
    ),
    ("--n-jobs 0", ["--n-jobs", "0"], None, 2, "argument --n-jobs: must be"),
    (
        "--test-size 0",
        ["--test-size", "0"],
        None,
        2,
        r"argument --test-size: must be a count of at least 1 or a fraction in \(0, 1\), got 0$",
    ),
    ("--test-size 1.5", ["--test-size", "1.5"], None, 2, r"fraction in \(0, 1\), got 1.5$"),
    (
        "--train-size too small for a noise level",
        ["--train-size", "3", "--noise", "0", "0.1", "0.15", "--categories", "3", "4"],
        None,
        1,
        # Once per reason, with the cells it applies to.
        r"training set of digits: digit3 noise=0\.1, digit4 noise=0\.1: noise=0\.1 "
        r"rounds to no anomalous sample in a training set of 3: it would be clean\. "
        r"Use noise=0, a noise of at least 0\.1667, or a larger train_size; digit3 "
        r"noise=0\.15, digit4 noise=0\.15: noise=0\.15 rounds",
    ),
    ("--image-size 0", ["--image-size", "0"], None, 2, "argument --image-size"),
    # A negative seed was blamed on the feature settings.
    ("--seed -3", ["--seed", "-3"], None, 2, "argument --seed: must be an integer from 0"),
    ("--seed 2**32", ["--seed", "4294967296"], None, 2,
     "argument --seed: must be an integer from 0 to 4294967295, got 4294967296"),
    ("unknown model", ["--models", "forest"], None, 2, "invalid choice: 'forest'"),
    ("--noise 0.9", ["--noise", "0.9"], None, 1, "above 0.5, the largest fraction"),
    (
        "--noise -0.1",
        ["--noise", "-0.1"],
        None,
        1,
        r"-0\.1 \(--noise\) is not a fraction",
    ),
    (
        "--config holding a JSON list",
        ["--config", "DIR/list.json"],
        _write("list.json", "[1, 2]"),
        1,
        "list.json holds a JSON list",
    ),
    (
        "--config invalid JSON",
        ["--config", "DIR/bad.json"],
        _write("bad.json", '{"flow": '),
        1,
        "Cannot read .*bad.json: Expecting value",
    ),
    (
        "--config missing",
        ["--config", "DIR/nowhere.json"],
        None,
        1,
        "Cannot read .*nowhere.json: .*No such file",
    ),
    ("--config a directory", ["--config", "DIR"], None, 1, "Is a directory"),
    (
        "--config unknown key",
        ["--config", "DIR/typo.json"],
        _write("typo.json", '{"flow": {"hiden_size": 8}}'),
        1,
        r"Unknown configuration key config\['flow'\]\['hiden_size'\]",
    ),
    (
        "configured value a model refuses",
        ["--config", "DIR/zero.json", "--models", "vanilla"],
        _write("zero.json", '{"flow": {"hidden_size": 0}}'),
        1,
        "'vanilla' model is invalid: The 'hidden_size' parameter of FlowDetector",
    ),
    (
        "configured value the features refuse",
        ["--config", "DIR/zero.json"],
        _write("zero.json", '{"features": {"batch_size": 0}}'),
        1,
        "The 'batch_size' parameter of PretrainedFeatures",
    ),
    (
        "image size the scales cannot halve",
        ["--image-size", "1"],
        None,
        1,
        "image_size=1 cannot be halved 2 times",
    ),
    (
        "--output is a file",
        ["--output", "DIR/file"],
        _write("file", ""),
        1,
        r"\(--output\) is a file",
    ),
    (
        "--output below a file",
        ["--output", "DIR/file/results"],
        _write("file", ""),
        1,
        r"\(--output\) lies below the file",
    ),
    (
        "--output a link to nothing",
        ["--output", "DIR/gone"],
        _link_to_nothing("gone"),
        1,
        r"\(--output\) is a link to nothing \(.*nowhere\)",
    ),
    (
        "read-only --output",
        ["--output", "READ_ONLY"],
        None,
        1,
        "Cannot write to the output folder .* Pass a folder you can write to",
    ),
    (
        "corrupt config.json",
        ["--output", "OUT"],
        _corrupt_config,
        1,
        r"Cannot read .*config.json: Expecting",
    ),
    (
        "corrupt run record",
        ["--output", "OUT"],
        _corrupt_record,
        1,
        f"Cannot read .*{RUN_RECORD}: .*Delete the file to run that run again",
    ),
    (
        "truncated feature cache",
        ["--output", "OUT"],
        _truncate_cache,
        1,
        r"cached features .*\.npy cannot be read",
    ),
    (
        "missing dataset folder",
        ["--dataset", "mvtec", "--root", "DIR/mvtec", "--categories", "bottle"],
        None,
        1,
        "MVTec AD root folder .*mvtec does not exist",
    ),
]


def _tree(folder):
    """Every file under ``folder`` with a digest of its content."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _run_command(arguments, cwd):
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(sklearn_metarefine.__file__).parents[1]),
    }
    return subprocess.run(
        [sys.executable, "-m", "sklearn_metarefine", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Every command-line row, run in its own process, four at a time.

    Returns, per case, the completed process, the files of the case's folder
    before and after it ran, or None when no read-only folder can be made.
    """
    prepared = {}
    for case, arguments, prepare, _, _ in CLI_ROWS:
        folder = tmp_path_factory.mktemp("cli")
        out = folder / "out"
        if prepare is not None:
            prepare(folder, out)
        substitutes = {"OUT": str(out)}
        if "READ_ONLY" in arguments:
            read_only = _read_only(folder / "locked")
            if read_only is None:
                prepared[case] = None
                continue
            substitutes["READ_ONLY"] = str(read_only)
        arguments = [
            substitutes.get(a, a.replace("DIR", str(folder))) for a in arguments
        ]
        if "--output" not in arguments:
            arguments += ["--output", str(out)]
        prepared[case] = (BASE + arguments, folder, _tree(folder))
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        running = {
            case: pool.submit(_run_command, arguments, folder)
            for case, (arguments, folder, _) in (
                (c, p) for c, p in prepared.items() if p is not None
            )
        }
        results = {}
        for case, future in running.items():
            _, folder, before = prepared[case]
            results[case] = (future.result(), before, _tree(folder))
    yield results
    for path in tmp_path_factory.getbasetemp().rglob("locked"):
        path.chmod(0o755)


@pytest.mark.parametrize(
    "case, status, match",
    [(case, status, match) for case, _, _, status, match in CLI_ROWS],
    ids=[row[0] for row in CLI_ROWS],
)
def test_command_line_errors_are_one_line_and_write_nothing(
    case, status, match, cli_results
):
    if cli_results.get(case) is None:
        pytest.skip("no read-only folder can be made here")
    process, before, after = cli_results[case]
    assert "Traceback" not in process.stderr
    assert process.returncode == status, process.stderr
    lines = process.stderr.strip().splitlines()
    assert lines[-1].startswith("metarefine benchmark: error: ")
    assert re.search(match, lines[-1]), lines[-1]
    if status == 1:
        assert len(lines) == 1
    assert after == before


def test_run_benchmark_checks_its_arguments_before_writing(tmp_path):
    _finished(tmp_path)
    before = _tree(tmp_path)
    for arguments, match in [
        ({"repeats": 0}, "repeats"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"noise": [0.6]}, "above 0.5"),
        ({"config": [1, 2]}, "must be a dict"),
    ]:
        with pytest.raises(BenchmarkError, match=match):
            run_benchmark(
                categories=["digit3"], output=tmp_path, **{"noise": [0.0], **arguments}
            )
    assert _tree(tmp_path) == before


# --- claiming an output folder ---------------------------------------------------


def _claim_each(folders, config, barrier, results):
    for folder in folders:
        barrier.wait()
        try:
            claim_output(folder, config)
            results.put((folder.name, config["seed"]))
        except BenchmarkError:
            results.put((folder.name, None))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork"
)
def test_one_of_two_racing_configurations_claims_the_folder(tmp_path):
    # Two processes claim the same 100 fresh folders, each time released
    # together by a barrier, with different configurations. Claiming used to
    # be check-then-write: both won 58 of 100 races here.
    context = multiprocessing.get_context("fork")
    folders = [tmp_path / f"out{i}" for i in range(100)]
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_claim_each, args=(folders, {"seed": s}, barrier, results)
        )
        for s in (1, 2)
    ]
    for worker in workers:
        worker.start()
    winners = {}
    for _ in range(2 * len(folders)):
        name, seed = results.get(timeout=60)
        winners.setdefault(name, []).append(seed)
    for worker in workers:
        worker.join(timeout=60)

    assert sorted(winners) == sorted(folder.name for folder in folders)
    for folder in folders:
        won = [seed for seed in winners[folder.name] if seed is not None]
        assert len(won) == 1, folder
        assert json.loads((folder / "config.json").read_text()) == {"seed": won[0]}


# --- caches ----------------------------------------------------------------------


def test_docs_state_the_trust_assumption_of_memory_caches():
    # A memory= cache is a pickle store: whoever can write to it runs code in
    # the next fit. The docs must say so and never suggest a shared folder.
    texts = {
        path: path.read_text()
        for path in [
            *ROOT.glob("docs/**/*.rst"),
            *ROOT.glob("examples/*.py"),
            ROOT / "README.md",
        ]
    }
    shared = re.compile(r"""(cache|memory)\s*=\s*["'](/tmp|/scratch|/shared)""")
    assert not [path for path, text in texts.items() if shared.search(text)]
    scaling = texts[ROOT / "docs" / "user_guide" / "scaling.rst"]
    assert "pickle" in scaling and "only you can write to" in scaling
    for estimator in (PretrainedFeatures, MetaRefineDetector):
        assert "only you can write to" in " ".join(estimator.__doc__.split())


# --- properties -------------------------------------------------------------------


@st.composite
def _any_scale(draw):
    """Finite data whose columns have any magnitude from 1e-300 to 1e300."""
    n_samples = draw(st.integers(4, 16))
    n_features = draw(st.integers(2, 4))
    unit = draw(
        hnp.arrays(
            np.float64,
            (n_samples, n_features),
            elements=st.floats(-1, 1, allow_nan=False, width=32),
        )
    )
    exponents = draw(hnp.arrays(np.int64, n_features, elements=st.integers(-300, 300)))
    return unit * 10.0 ** exponents.astype(np.float64)


@pytest.mark.parametrize("estimator", ["FlowDetector", "MAMLFlowDetector"])
@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(data=_any_scale())
def test_finite_data_of_any_scale_gets_finite_deterministic_scores(estimator, data):
    scores = ESTIMATORS[estimator]().fit(data).score_samples(data)
    assert scores.dtype == np.float64 and np.isfinite(scores).all()
    again = ESTIMATORS[estimator]().fit(data).score_samples(data)
    np.testing.assert_array_equal(again, scores)


@pytest.mark.parametrize(
    "value",
    [(64, 32.5), [64.5], ("64", "32"), True, (64, 64, 3), (0, 4), (np.inf, 4), [[64], [32, 2]],
     (True, 4)],  # a bool beside an int was read as 1
)  # fmt: skip
def test_sizes_with_a_fraction_or_no_number_are_refused(value):
    # image_size=(64, 32.5) and grid_shape=(4.7, 4) were truncated to
    # (64, 32) and (4, 4). (Scalars are refused by the parameter checks.)
    from sklearn_metarefine import PatchCoreDetector, PretrainedFeatures

    images = np.zeros((2, 16, 16))
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        PretrainedFeatures(_backbone(), image_size=value, n_scales=1).fit(images)
    if value is not True:  # grid_shape takes a tuple or a list
        with pytest.raises(ValueError, match=r"grid_shape must be a \(height, width"):
            PatchCoreDetector(backbone=None, grid_shape=value).fit(np.zeros((4, 16)))


@pytest.mark.parametrize("value", [(2,), [4]])
def test_a_grid_shape_of_one_side_is_refused(value):
    # (2,) was read as (2, 2), and the message offered a plain int, which the
    # parameter checks refuse.
    from sklearn_metarefine import PatchCoreDetector

    detector = PatchCoreDetector(backbone=None, grid_shape=value)
    with pytest.raises(ValueError, match=r"a \(height, width\) pair of") as error:
        detector.fit(np.zeros((4, 16)))
    assert "positive int or" not in str(error.value)


@pytest.mark.parametrize(("image_size", "size"), [(64.0, [64, 64]), ((48, np.int64(32)), [48, 32])])
def test_whole_sizes_of_any_number_type_are_taken(image_size, size):
    from sklearn_metarefine._features._estimator import _size_pair

    assert _size_pair(image_size) == size


def test_a_contamination_falling_on_zero_likelihood_flags_those_samples():
    # offset_ was the percentile itself: -inf, and decision_function nan for
    # the zero-likelihood samples, which predict called normal.
    from sklearn.neighbors import KernelDensity

    from sklearn_metarefine import IQRRefiner

    rng = np.random.RandomState(0)
    X = np.vstack([rng.normal(size=(90, 1)), rng.normal(50, 1, size=(10, 1))])
    tophat = KernelDensity(kernel="tophat", bandwidth=1.0)
    refiner = IQRRefiner(tophat, contamination=0.1, random_state=0).fit(X)
    assert np.isfinite(refiner.offset_)
    assert refiner.predict([[50.0], [0.0]]).tolist() == [-1, 1]
    assert np.sum(refiner.predict(X) == -1) == 10


def test_patchcore_contamination_on_an_infinite_leave_one_out_score():
    # An image whose patches alone fill the bank scores inf left out; the
    # percentile gave offset_ -inf or nan, and predict flagged nothing.
    from sklearn_metarefine import PatchCoreDetector

    X = np.random.RandomState(1).normal(size=(5, 12))
    det = PatchCoreDetector(
        backbone=None, grid_shape=(2, 2), coreset_fraction=0.05, contamination=0.2,
        device="cpu", random_state=0,
    ).fit(X)  # fmt: skip
    assert np.isinf(det.train_scores_).sum() == 1
    assert np.isfinite(det.offset_)
    assert np.all(det.predict(X + 100) == -1)


@pytest.mark.parametrize(
    ("scores", "contamination", "offset"),
    [([-np.inf] * 10 + list(range(90)), 0.1, np.nextafter(0, -1)),
     ([-np.inf] * 10 + list(range(90)), 0.2, 9.8),
     (list(range(10)), 0.2, 1.8),
     ([-np.inf, 1.0, np.inf], 1.0, 1.0)],
)  # fmt: skip
def test_contamination_offset(scores, contamination, offset):
    from sklearn_metarefine._scores import contamination_offset

    assert contamination_offset(scores, contamination) == pytest.approx(offset)
    with pytest.raises(ValueError, match="contamination=0.1 sets no threshold"):
        contamination_offset([-np.inf, -np.inf], 0.1)


def test_tied_scores_at_a_float_contamination_are_flagged_when_closer():
    # The offset was the tied score itself, which predict calls normal: the
    # 15 far samples the refinement removed, which IsolationForest then
    # scores alike, were all predicted normal with contamination=0.04.
    from sklearn_metarefine._scores import contamination_offset

    scores = np.r_[np.zeros(5), np.arange(1.0, 96.0)]
    for contamination, flagged in [(0.01, 0), (0.04, 5), (0.05, 5), (0.1, 10)]:
        offset = contamination_offset(scores, contamination)
        assert np.count_nonzero(scores < offset) == flagged
    scores = np.r_[np.zeros(2), np.arange(1.0, 9.0)]  # two tied: the fewest
    for contamination, flagged in [(0.05, 0), (0.11, 2), (0.2, 2)]:
        offset = contamination_offset(scores, contamination)
        assert np.count_nonzero(scores < offset) == flagged
    rng = np.random.RandomState(0)
    X = np.vstack([rng.normal(size=(300, 3)), rng.normal(6, 1, size=(15, 3))])
    for contamination, flagged in [(0.01, 0), (0.04, 15)]:
        refiner = IQRRefiner(IsolationForest(n_estimators=50, random_state=0),
                             contamination=contamination, random_state=0).fit(X)
        assert np.count_nonzero(refiner.predict(X[300:]) == -1) == flagged
        assert np.count_nonzero(refiner.predict(X) == -1) == flagged


def test_a_patch_refit_from_images_drops_the_raw_feature_count():
    # n_features_in_ (documented "only with backbone=None") stayed from an
    # earlier fit of raw features.
    from sklearn_metarefine import PatchCoreDetector

    det = PatchCoreDetector(backbone=None, grid_shape=(2, 2), device="cpu", random_state=0)
    det.fit(np.random.RandomState(0).normal(size=(6, 12)))
    assert det.n_features_in_ == 12
    images = np.random.RandomState(1).randint(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    det.set_params(backbone=_backbone(), image_size=16, grid_shape=None).fit(images)
    assert not hasattr(det, "n_features_in_")
    assert det.score_samples(images).shape == (4,)


@pytest.mark.parametrize("name", ["PatchCoreDetector", "PatchFlowDetector"])
def test_a_patch_beyond_float32_scores_minus_inf(name):
    # PatchFlowDetector said the finite input "contains infinity" (the
    # float32 cast overflowed); PatchCoreDetector warned of the overflow.
    import sklearn_metarefine
    from sklearn_metarefine import FlowDetector

    params = {"flow": FlowDetector(n_blocks=2, hidden_size=8, max_epochs=2)}
    Detector = getattr(sklearn_metarefine, name)
    det = Detector(
        backbone=None, grid_shape=(2, 2), device="cpu", random_state=0,
        **(params if name == "PatchFlowDetector" else {}),
    ).fit(np.random.RandomState(0).normal(size=(20, 12)))  # fmt: skip
    new = np.zeros((2, 12))
    new[0, 0] = 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = det.score_samples(new)
    assert scores[0] == -np.inf and np.isfinite(scores[1])
    assert det.predict(new).tolist() == [-1, 1]


def test_a_refit_from_images_drops_the_feature_names_of_a_data_frame():
    # feature_names_in_ (documented "only with backbone=None and string column
    # names") stayed from an earlier fit of a DataFrame.
    import pandas as pd

    from sklearn_metarefine import PatchCoreDetector

    frame = pd.DataFrame(np.random.RandomState(0).normal(size=(6, 4)), columns=list("abcd"))
    det = PatchCoreDetector(backbone=None, device="cpu", random_state=0).fit(frame)
    assert list(det.feature_names_in_) == list("abcd")
    images = np.random.RandomState(1).randint(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    det.set_params(backbone=_backbone(), image_size=16).fit(images)
    assert not hasattr(det, "feature_names_in_")


@pytest.mark.parametrize("name", ["PatchCoreDetector", "PatchFlowDetector"])
def test_raw_patch_rows_far_from_zero_keep_their_variation(name):
    # Cast to float32, 1e8 + N(0, 1) became constant: test AUROC 0.55 and
    # 0.45 where the same rows without the offset gave 0.75 and 0.87.
    import sklearn_metarefine
    from sklearn_metarefine import FlowDetector

    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 12))
    new = np.r_[rng.normal(size=(20, 12)), rng.normal(size=(20, 12)) + np.r_[3, np.zeros(11)]]
    params = {"flow": FlowDetector(n_blocks=2, hidden_size=8, max_epochs=5)}
    Detector = getattr(sklearn_metarefine, name)
    scores = [
        Detector(
            backbone=None, grid_shape=(2, 2), device="cpu", random_state=0,
            **(params if name == "PatchFlowDetector" else {}),
        ).fit(X + offset).score_samples(new + offset)
        for offset in (0.0, 1e8)
    ]  # fmt: skip
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-4, atol=1e-4)


def test_a_float64_default_dtype_changes_nothing(tmp_path):
    # fit raised "mat1 and mat2 must have the same dtype" (the flows) and
    # "Input type (torch.FloatTensor) and weight type (torch.DoubleTensor)"
    # (the named backbones): nets, batches and projections were made in the
    # default dtype, and a flow's initial weights were drawn in it.
    rows = np.random.RandomState(0).normal(size=(40, 4))
    images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    features = PretrainedFeatures("efficientnet_lite0", image_size=32, n_scales=1)
    # resnet18's 384 channels go through the bank's random projection
    patches = PatchCoreDetector("resnet18", weights=None, image_size=32, device="cpu")

    def run():
        flows = [
            Detector(max_epochs=2, device="cpu", random_state=0).fit(rows)
            for Detector in (FlowDetector, MAMLFlowDetector)
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resnet18 without its weights
            patches.fit(paths)
        return (
            [flow.score_samples(rows) for flow in flows],
            features.fit_transform(images),
            features.transform(paths),
            patches.anomaly_map(paths),
        )

    expected = run()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = run()
    finally:
        torch.set_default_dtype(previous)
    for flow_scores, flow_expected in zip(got[0], expected[0]):
        np.testing.assert_allclose(flow_scores, flow_expected, rtol=1e-6)
    for array, array_expected in zip(got[1:3], expected[1:3]):
        assert array.dtype == np.float32
        np.testing.assert_allclose(array, array_expected, rtol=1e-5, atol=1e-6)
    # torchvision draws resnet18's random weights in the default dtype: other
    # numbers, the same shapes
    assert got[3].shape == expected[3].shape and np.isfinite(got[3]).all()


def test_values_below_float32_score_as_zeros_when_numpy_raises_on_underflow():
    # np.seterr(all="raise") in a user's program: a feature of 1e-40 (a
    # float32 subnormal) or 1e-310 failed with "underflow encountered in
    # cast" or "in divide" instead of scoring as the default does.
    X = np.random.RandomState(0).normal(size=(40, 4))
    tiny = np.array([[1e-40, 0.0, 0.0, 0.0], [1e-310, 0.0, 0.0, 0.0]])
    core = PatchCoreDetector(backbone=None, coreset_fraction=0.5, random_state=0)
    flow = FlowDetector(n_blocks=2, hidden_size=8, max_epochs=2, device="cpu",
                        random_state=0)
    expected = [core.fit(X).score_samples(tiny), flow.fit(X).score_samples(tiny)]
    with np.errstate(all="raise"):
        scores = [core.fit(X).score_samples(tiny), flow.fit(X).score_samples(tiny)]
        fitted_on_tiny = flow.fit(np.vstack([X, tiny])).score_samples(tiny)
    np.testing.assert_array_equal(scores[0], expected[0])
    np.testing.assert_array_equal(scores[1], expected[1])
    assert np.isfinite(fitted_on_tiny).all()
    # A feature of tiny values throughout; a trimmed start's neighbours.
    small = X.copy()
    small[:, 3] *= 1e-300
    with_tiny_row = np.vstack([X, tiny[1:]])
    detector = MetaRefineDetector(backbone=None, max_epochs=2, n_blocks=2,
                                  hidden_size=8, device="cpu", random_state=0)
    expected = [core.fit(small).score_samples(small),
                detector.fit(with_tiny_row).score_samples(with_tiny_row)]
    with np.errstate(all="raise"):
        scores = [core.fit(small).score_samples(small),
                  detector.fit(with_tiny_row).score_samples(with_tiny_row)]
    np.testing.assert_array_equal(scores[0], expected[0])
    np.testing.assert_array_equal(scores[1], expected[1])
