"""Loaders on tiny trees of the real layouts, and the contamination protocol."""

import math
import re
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_metarefine.datasets import (
    MVTEC_AD_CATEGORIES,
    load_digits_anomaly,
    load_ksdd2,
    load_mvtec_ad,
    make_contaminated,
)

MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
KSDD2_URL = "https://www.vicos.si/resources/kolektorsdd2/"


def _png(path, *, defect=0, mode="L"):
    """Write a 6 x 4 black PNG, with one pixel of value `defect`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, (6, 4))
    if defect:
        image.putpixel((2, 1), defect if mode == "L" else (defect, 0, 0))
    image.save(path)


# --- MVTec AD -------------------------------------------------------------

MVTEC_FILES = [
    "train/good/000.png",
    "train/good/001.png",
    "train/good/002.png",
    "test/good/000.png",
    "test/good/001.png",
    "test/crack/000.png",
    "test/crack/001.png",
    "test/scratch/000.png",
    "ground_truth/crack/000_mask.png",
    "ground_truth/crack/001_mask.png",
    "ground_truth/scratch/000_mask.png",
]


@pytest.fixture
def mvtec_root(tmp_path):
    root = tmp_path / "mvtec_ad"
    for name in MVTEC_FILES:
        _png(root / "bottle" / name, defect=255 if "mask" in name else 0)
    (root / "license.txt").write_text("not a category")
    return root


def test_load_mvtec_ad_reads_the_layout(mvtec_root):
    data = load_mvtec_ad(mvtec_root, "bottle")
    bottle = mvtec_root / "bottle"

    relative = [str(Path(name).relative_to(bottle)) for name in data.filenames]
    assert relative == [
        "train/good/000.png",
        "train/good/001.png",
        "train/good/002.png",
        "test/crack/000.png",
        "test/crack/001.png",
        "test/good/000.png",
        "test/good/001.png",
        "test/scratch/000.png",
    ]
    for name in data.filenames:
        assert type(name) is str and Path(name).is_absolute() and Path(name).is_file()
    assert data.target.tolist() == [0, 0, 0, 1, 1, 0, 0, 1]
    assert data.target.dtype == np.int64
    assert data.defect_type.tolist() == [
        "good", "good", "good", "crack", "crack", "good", "good", "scratch"
    ]
    assert data.split.tolist() == ["train"] * 3 + ["test"] * 5
    assert data.mask_filenames.tolist() == [
        None,
        None,
        None,
        str(bottle / "ground_truth/crack/000_mask.png"),
        str(bottle / "ground_truth/crack/001_mask.png"),
        None,
        None,
        str(bottle / "ground_truth/scratch/000_mask.png"),
    ]
    assert data.target_names[data.target].tolist() == [
        "good" if label == 0 else "defective" for label in data.target
    ]
    assert data.category == "bottle"
    assert MVTEC_URL in data.DESCR


@pytest.mark.parametrize(
    "split, n_images, n_defective", [("train", 3, 0), ("test", 5, 3), ("all", 8, 3)]
)
def test_load_mvtec_ad_split(mvtec_root, split, n_images, n_defective):
    data = load_mvtec_ad(mvtec_root, "bottle", split=split)
    assert len(data.filenames) == n_images
    assert data.target.sum() == n_defective
    assert set(data.split) == ({"train", "test"} if split == "all" else {split})


def test_load_mvtec_ad_expands_user_and_ignores_hidden_files(mvtec_root, monkeypatch):
    monkeypatch.setenv("HOME", str(mvtec_root.parent))
    _png(mvtec_root / "bottle/train/good/._000.png")
    data = load_mvtec_ad("~/mvtec_ad", "bottle", split="train")
    names = [Path(name).name for name in data.filenames]
    assert names == ["000.png", "001.png", "002.png"]


def test_load_mvtec_ad_train_split_needs_no_masks(mvtec_root):
    (mvtec_root / "bottle/ground_truth/crack/000_mask.png").unlink()
    assert len(load_mvtec_ad(mvtec_root, "bottle", split="train").target) == 3


def test_mvtec_ad_categories():
    assert isinstance(MVTEC_AD_CATEGORIES, tuple)
    assert len(MVTEC_AD_CATEGORIES) == len(set(MVTEC_AD_CATEGORIES)) == 15
    assert {"bottle", "metal_nut", "zipper"} <= set(MVTEC_AD_CATEGORIES)


def test_load_mvtec_ad_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="MVTec AD root folder") as error:
        load_mvtec_ad(missing, "bottle")
    assert str(missing) in str(error.value)
    assert MVTEC_URL in str(error.value)


def test_load_mvtec_ad_missing_category_lists_found(mvtec_root):
    _png(mvtec_root / "cable/train/good/000.png")
    with pytest.raises(FileNotFoundError) as error:
        load_mvtec_ad(mvtec_root, "screw")
    message = str(error.value)
    assert str(mvtec_root / "screw") in message
    assert "Folders found in" in message and "bottle, cable" in message
    assert MVTEC_URL in message


def test_load_mvtec_ad_unknown_category_lists_official_ones(mvtec_root):
    with pytest.raises(FileNotFoundError, match="The MVTec AD categories are: bottle"):
        load_mvtec_ad(mvtec_root, "Bottle")


def test_load_mvtec_ad_root_one_level_too_deep(mvtec_root):
    with pytest.raises(FileNotFoundError, match="looks like a category") as error:
        load_mvtec_ad(mvtec_root / "bottle", "bottle")
    assert f"pass its parent {mvtec_root} as root" in str(error.value)


@pytest.mark.parametrize(
    "remove, split, path",
    [
        ("train/good/*.png", "train", "train/good"),
        ("train/good/*.png", "all", "train/good"),
        ("test/*/*.png", "test", "test"),
    ],
)
def test_load_mvtec_ad_empty_split(mvtec_root, remove, split, path):
    for file in (mvtec_root / "bottle").glob(remove):
        file.unlink()
    with pytest.raises(FileNotFoundError, match="holds no PNG image") as error:
        load_mvtec_ad(mvtec_root, "bottle", split=split)
    if path == "test":  # it held one, outside the subfolders they go in
        assert "in a subfolder (test/good/, test/<defect type>/)" in str(error.value)
    assert str(mvtec_root / "bottle" / path) in str(error.value)
    assert MVTEC_URL in str(error.value)


def test_load_mvtec_ad_missing_split_folder(mvtec_root):
    (mvtec_root / "other/train/good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        load_mvtec_ad(mvtec_root, "other", split="test")
    assert str(mvtec_root / "other/test") in str(error.value)


def test_load_mvtec_ad_defect_image_without_mask(mvtec_root):
    _png(mvtec_root / "bottle/test/crack/002.png")
    with pytest.raises(FileNotFoundError, match="have no ground-truth mask") as error:
        load_mvtec_ad(mvtec_root, "bottle")
    message = str(error.value)
    assert str(mvtec_root / "bottle/ground_truth/crack/002_mask.png") in message
    assert str(mvtec_root / "bottle/test/crack/002.png") in message
    assert MVTEC_URL in message


def test_load_mvtec_ad_missing_mask_folder_lists_first_paths(mvtec_root):
    for index in range(8):
        _png(mvtec_root / f"bottle/test/hole/{index:03d}.png")
    with pytest.raises(FileNotFoundError, match="8 defective") as error:
        load_mvtec_ad(mvtec_root, "bottle")
    assert "ground_truth/hole/000_mask.png" in str(error.value)
    assert "... and 3 more" in str(error.value)


def test_load_mvtec_ad_orphan_mask(mvtec_root):
    orphan = mvtec_root / "bottle/ground_truth/scratch/007_mask.png"
    _png(orphan, defect=255)
    with pytest.raises(FileNotFoundError, match="have no test image") as error:
        load_mvtec_ad(mvtec_root, "bottle")
    assert str(orphan) in str(error.value)
    assert MVTEC_URL in str(error.value)


def test_load_mvtec_ad_pairs_masks_whatever_the_case_of_png(mvtec_root):
    # 001.PNG was listed as an image, but only 001_mask.png was looked for.
    for old in ("test/crack/001.png", "ground_truth/crack/001_mask.png"):
        path = mvtec_root / "bottle" / old
        path.rename(path.with_suffix(".PNG"))
    data = load_mvtec_ad(mvtec_root, "bottle", split="test")
    masks = dict(zip(map(Path, data.filenames), data.mask_filenames))
    image = mvtec_root / "bottle/test/crack/001.PNG"
    assert masks[image] == str(mvtec_root / "bottle/ground_truth/crack/001_mask.PNG")
    assert Path(masks[image]).is_file()


@pytest.mark.parametrize(
    "twin",
    ["test/crack/001.PNG", "ground_truth/crack/001_mask.PNG"],
    ids=["images", "masks"],
)
def test_load_mvtec_ad_refuses_names_that_differ_in_the_suffix_case(
    mvtec_root, twin
):
    # Two images got one mask; of two masks, the set's order picked one.
    _png(mvtec_root / "bottle" / twin)
    with pytest.raises(ValueError, match="differ only in the case of their suffix"):
        load_mvtec_ad(mvtec_root, "bottle")


@pytest.mark.parametrize("folder", ["train/good", "test/crack", "ground_truth/crack"])
def test_load_mvtec_ad_names_a_link_to_no_file(mvtec_root, tmp_path, folder):
    # Images behind broken links were left out without a word.
    link = mvtec_root / "bottle" / folder / "009.png"
    link.symlink_to(tmp_path / "elsewhere" / "009.png")
    with pytest.raises(FileNotFoundError, match="point to no file") as error:
        load_mvtec_ad(mvtec_root, "bottle")
    assert f"{link} -> {tmp_path / 'elsewhere' / '009.png'}" in str(error.value)


@pytest.mark.parametrize(
    "category", ["", ".", "..", "bottle/test", "/abs/bottle", "bottle\\test"]
)
def test_load_mvtec_ad_takes_a_folder_name_as_category(mvtec_root, category):
    # An absolute path was loaded with root ignored; "." and ".." left it.
    with pytest.raises(ValueError, match="name of a folder under root"):
        load_mvtec_ad(mvtec_root, category)


def test_load_mvtec_ad_rejects_unknown_split(mvtec_root):
    with pytest.raises(InvalidParameterError, match="split"):
        load_mvtec_ad(mvtec_root, "bottle", split="validation")


def test_load_mvtec_ad_refuses_a_link_to_no_defect_folder(mvtec_root):
    # A defect type behind a link to nothing (an unmounted drive) was dropped
    # with its images, without a word.
    bottle = mvtec_root / "bottle"
    (bottle / "test/dent").symlink_to(mvtec_root / "offline/dent")
    with pytest.raises(FileNotFoundError, match="point to nothing: .*test/dent -> "):
        load_mvtec_ad(mvtec_root, "bottle")
    (bottle / "test/dent").unlink()
    (bottle / "ground_truth/dent").symlink_to(mvtec_root / "offline/dent")
    with pytest.raises(FileNotFoundError, match="ground_truth/dent -> "):
        load_mvtec_ad(mvtec_root, "bottle", split="test")
    (bottle / "ground_truth/dent").unlink()
    # Any link to nothing there is refused: it does not say what it was.
    (bottle / "test/notes.txt").symlink_to(mvtec_root / "offline/notes.txt")
    with pytest.raises(FileNotFoundError, match="test/notes.txt -> "):
        load_mvtec_ad(mvtec_root, "bottle")
    assert len(load_mvtec_ad(mvtec_root, "bottle", split="train").filenames) == 3


@pytest.mark.parametrize(
    "stray",
    ["train/defect/000.png", "test/001.png", "test/crack/more/002.png",
     "test/crack/003.jpg", "ground_truth/crack/extra/000_mask.png"],
)
def test_load_mvtec_ad_warns_of_images_outside_its_layout(mvtec_root, stray):
    # Images beside the layout were left out without a word.
    _png(mvtec_root / "bottle" / stray)
    (mvtec_root / "bottle/test/good/.hidden.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="1 image file.* not loaded") as record:
        data = load_mvtec_ad(mvtec_root, "bottle")
    assert stray in str(record[0].message) and ".hidden" not in str(record[0].message)
    assert len(data.filenames) == 8
    split = "train" if stray.startswith("train") else "test"
    other = {"train": "test", "test": "train"}[split]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mvtec_ad(mvtec_root, "bottle", split=other)


@pytest.mark.parametrize("split, n_images", [("all", 8), ("test", 5)])
def test_the_stray_image_check_passes_over_links_back_up_the_tree(
    mvtec_root, split, n_images
):
    # A link to the category from inside it reported loaded files (and the
    # training images, loaded or not) as not loaded, under the link's path.
    (mvtec_root / "bottle/test/good/up").symlink_to(mvtec_root / "bottle")
    (mvtec_root / "bottle/test/good/loop").symlink_to(mvtec_root / "bottle/test")
    # Up above the dataset: the whole tree was walked (a link to / too).
    (mvtec_root / "bottle/test/good/top").symlink_to(mvtec_root.parent)
    (mvtec_root / "bottle/test/good/root").symlink_to("/")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_mvtec_ad(mvtec_root, "bottle", split=split)
    assert len(data.filenames) == n_images


def test_the_stray_image_check_looks_behind_links_to_folders_elsewhere(
    mvtec_root, tmp_path
):
    # A defect folder that is a link (a dataset assembled from several
    # drives) was not checked once links were no longer followed.
    elsewhere = tmp_path / "drive"
    _png(elsewhere / "dent/000.png")
    _png(elsewhere / "dent/001.jpg")
    _png(elsewhere / "more/002.png")
    bottle = mvtec_root / "bottle"
    (bottle / "test/dent").symlink_to(elsewhere / "dent")
    _png(bottle / "ground_truth/dent/000_mask.png", defect=255)
    (bottle / "train/good/more").symlink_to(elsewhere / "more")
    with pytest.warns(UserWarning, match="2 image file") as record:
        data = load_mvtec_ad(mvtec_root, "bottle")
    message = str(record[0].message)
    assert "dent/001.jpg" in message and "good/more/002.png" in message
    assert len(data.filenames) == 9


def test_the_stray_image_warning_points_at_the_callers_line(mvtec_root):
    _png(mvtec_root / "bottle/train/good/003.jpg")
    with pytest.warns(UserWarning, match="not loaded") as record:
        load_mvtec_ad(mvtec_root, "bottle")
    assert record[0].filename == __file__


# --- KolektorSDD2 ---------------------------------------------------------

# (split, id, value of the one marked mask pixel: 0 leaves the mask all zero)
KSDD2_IMAGES = [
    ("train", "10000", 0),
    ("train", "10001", 255),
    ("train", "10002", 1),
    ("train", "10003", 0),
    ("test", "20000", 0),
    ("test", "20001", 128),
]


@pytest.fixture
def ksdd2_root(tmp_path):
    root = tmp_path / "ksdd2"
    for split, image_id, defect in KSDD2_IMAGES:
        _png(root / split / f"{image_id}.png", mode="RGB")
        _png(root / split / f"{image_id}_GT.png", defect=defect)
    return root


def test_load_ksdd2_labels_from_masks(ksdd2_root):
    data = load_ksdd2(ksdd2_root)
    assert [Path(name).name for name in data.filenames] == [
        f"{image_id}.png" for _, image_id, _ in KSDD2_IMAGES
    ]
    assert data.target.tolist() == [int(defect > 0) for _, _, defect in KSDD2_IMAGES]
    assert data.target.dtype == np.int64
    assert data.defect_type.tolist() == [
        "defective" if defect else "good" for _, _, defect in KSDD2_IMAGES
    ]
    assert data.defect_type.dtype == object  # as documented: a longer label fits
    assert data.split.tolist() == [split for split, _, _ in KSDD2_IMAGES]
    assert data.mask_filenames.tolist() == [
        str(ksdd2_root / split / f"{image_id}_GT.png")
        for split, image_id, _ in KSDD2_IMAGES
    ]
    assert all(type(name) is str and Path(name).is_file() for name in data.filenames)
    assert KSDD2_URL in data.DESCR


def test_load_ksdd2_reads_colour_masks(ksdd2_root):
    _png(ksdd2_root / "test/20002.png", mode="RGB")
    _png(ksdd2_root / "test/20002_GT.png", defect=3, mode="RGB")
    data = load_ksdd2(ksdd2_root, split="test")
    assert data.target.tolist() == [0, 1, 1]


@pytest.mark.parametrize("split, n_images", [("train", 4), ("test", 2), ("all", 6)])
def test_load_ksdd2_split(ksdd2_root, split, n_images):
    data = load_ksdd2(str(ksdd2_root), split=split)
    assert len(data.target) == n_images
    assert set(data.split) == ({"train", "test"} if split == "all" else {split})


def test_load_ksdd2_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="KolektorSDD2 root folder") as error:
        load_ksdd2(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    assert KSDD2_URL in str(error.value)


def test_load_ksdd2_missing_split_folder(ksdd2_root):
    for file in (ksdd2_root / "test").iterdir():
        file.unlink()
    (ksdd2_root / "test").rmdir()
    assert len(load_ksdd2(ksdd2_root, split="train").target) == 4
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        load_ksdd2(ksdd2_root)
    assert str(ksdd2_root / "test") in str(error.value)
    assert KSDD2_URL in str(error.value)


def test_load_ksdd2_root_one_level_too_high(ksdd2_root):
    with pytest.raises(FileNotFoundError, match="holds train/ and test/; pass it"):
        load_ksdd2(ksdd2_root.parent)


def test_load_ksdd2_empty_split(ksdd2_root):
    for file in (ksdd2_root / "test").glob("2000?.png"):
        file.unlink()
    with pytest.raises(FileNotFoundError, match="holds no PNG image") as error:
        load_ksdd2(ksdd2_root, split="test")
    assert str(ksdd2_root / "test") in str(error.value)


def test_load_ksdd2_image_without_gt(ksdd2_root):
    missing = ksdd2_root / "train/10001_GT.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="have no _GT mask") as error:
        load_ksdd2(ksdd2_root)
    assert str(missing) in str(error.value)
    assert KSDD2_URL in str(error.value)


def test_load_ksdd2_unreadable_gt_is_named(ksdd2_root):
    # PIL's UnidentifiedImageError named neither the dataset nor the image.
    (ksdd2_root / "train/10001_GT.png").write_text("not an image")
    named = r"KolektorSDD2 mask .*10001_GT.png \(of "
    with pytest.raises(ValueError, match=named) as error:
        load_ksdd2(ksdd2_root)
    assert str(ksdd2_root / "train/10001.png") in str(error.value)
    assert KSDD2_URL in str(error.value)


def test_load_ksdd2_pairs_masks_whatever_the_case_of_png(ksdd2_root):
    path = ksdd2_root / "train/10001_GT.png"
    path.rename(path.with_suffix(".PNG"))
    data = load_ksdd2(ksdd2_root, split="train")
    assert data.mask_filenames[1] == str(path.with_suffix(".PNG"))
    assert data.target.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize(
    "mode, background, defect",
    # Black backgrounds; a white and a red defect pixel.
    [("CMYK", (0, 0, 0, 255), (0, 0, 0, 0)), ("YCbCr", (0, 128, 128), (76, 85, 255))],
)
def test_ksdd2_masks_in_other_colour_spaces_are_read_by_colour(
    tmp_path, mode, background, defect
):
    # CMYK's black is a non-zero K and its white all zeros: labels came out
    # inverted; every YCbCr mask (chroma 128) read as defective.
    from sklearn_metarefine.datasets._ksdd2 import _has_defect

    clean = Image.new(mode, (6, 4), background)
    marked = clean.copy()
    marked.putpixel((2, 1), defect)
    clean.save(tmp_path / "clean.tif")
    marked.save(tmp_path / "marked.tif")
    assert not _has_defect(tmp_path / "clean.tif", "clean")
    assert _has_defect(tmp_path / "marked.tif", "marked")


def test_load_ksdd2_does_not_count_invisible_pixels(ksdd2_root):
    # A transparent background stored as white (as editors often do) made
    # every such mask defective.
    mask = Image.new("RGBA", (6, 4), (255, 255, 255, 0))
    mask.save(ksdd2_root / "train/10000_GT.png")
    assert load_ksdd2(ksdd2_root, split="train").target.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize(
    "mode, colour, defect",
    [("L", 255, 128), ("RGB", (255, 255, 255), (0, 0, 3)), ("1", 1, None),
     ("I;16", 300, 7)],
)
def test_load_ksdd2_does_not_count_a_colour_marked_transparent(
    ksdd2_root, mode, colour, defect
):
    # A PNG without an alpha channel may mark one colour transparent (tRNS):
    # a mask all of that colour has no visible pixel, but it labelled its
    # image defective.
    mask = Image.new(mode, (6, 4), colour)
    mask.save(ksdd2_root / "train/10000_GT.png", transparency=colour)
    assert load_ksdd2(ksdd2_root, split="train").target.tolist() == [0, 1, 1, 0]
    if defect is not None:  # a pixel of another colour still counts
        mask.putpixel((2, 1), defect)
        mask.save(ksdd2_root / "train/10000_GT.png", transparency=colour)
        assert load_ksdd2(ksdd2_root, split="train").target.tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("stray", ["train/more/10002.png", "test/20002.jpg"])
def test_load_ksdd2_warns_of_images_outside_its_layout(ksdd2_root, stray):
    _png(ksdd2_root / stray)
    with pytest.warns(UserWarning, match=f"(?s)1 image file.*{stray}"):
        load_ksdd2(ksdd2_root)


def test_load_ksdd2_refuses_masks_that_differ_in_the_suffix_case(ksdd2_root):
    # 10001_GT.png marks a defect, a stray 10001_GT.PNG none: the label
    # depended on the order of a set (the hash seed).
    _png(ksdd2_root / "train/10001_GT.PNG")
    with pytest.raises(ValueError, match="10001_GT.* differ only in the case"):
        load_ksdd2(ksdd2_root)


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA"])
@pytest.mark.parametrize("defect", [None, (1, 0, 0), (0, 0, 3)])
def test_load_ksdd2_reads_masks_of_any_mode_by_their_colour(ksdd2_root, mode, defect):
    # An opaque alpha channel, or palette indices, read as defect pixels; by
    # luma instead, a dark blue or red defect pixel would round to 0.
    pixels = [(0, 0, 0)] * 24
    if defect is not None:
        pixels[9] = defect
    if mode == "P":
        mask = Image.new("P", (6, 4))
        colours = [(255, 255, 255), (0, 0, 0)] + ([defect] if defect else [])
        mask.putpalette([value for colour in colours for value in colour])
        mask.putdata([colours.index(pixel) for pixel in pixels])  # no index 0
    elif mode == "RGBA":
        mask = Image.new("RGBA", (6, 4))
        mask.putdata([(*pixel, 255) for pixel in pixels])
    else:
        mask = Image.new("LA", (6, 4))
        mask.putdata([(max(pixel), 255) for pixel in pixels])  # gray, opaque
    mask.save(ksdd2_root / "train/10000_GT.png")
    expected = [int(defect is not None), 1, 1, 0]
    assert load_ksdd2(ksdd2_root, split="train").target.tolist() == expected


@pytest.mark.parametrize(
    "mode, pixel, defective",
    [
        ("RGB", (0, 0, 1), True),  # dark blue: 0 in luma
        ("RGBA", (9, 0, 0, 0), False),  # coloured but invisible
        ("RGBA", (0, 0, 2, 255), True),
        ("LA", (1, 255), True),
        ("L", 1, True),
    ],
)
def test_benchmark_pixel_masks_agree_with_the_ksdd2_labels(
    ksdd2_root, mode, pixel, defective
):
    # The benchmark read masks by luma and ignored alpha: an image labelled
    # defective had an empty pixel mask, a good one a defect pixel.
    from sklearn_metarefine._benchmark._data import MaskFiles

    mask = Image.new(mode, (6, 4))
    mask.putpixel((2, 1), pixel)
    mask.save(ksdd2_root / "train/10000_GT.png")
    data = load_ksdd2(ksdd2_root, split="train")
    pixels = MaskFiles(data.mask_filenames, 8, images=data.filenames)[[0, 1]]
    assert data.target[0] == defective
    assert pixels[0].any() == defective
    assert pixels[1].any()  # 10001: a white defect pixel, as before


def test_load_ksdd2_orphan_gt(ksdd2_root):
    orphan = ksdd2_root / "test/20009_GT.png"
    _png(orphan)
    with pytest.raises(FileNotFoundError, match="have no image") as error:
        load_ksdd2(ksdd2_root)
    assert str(orphan) in str(error.value)
    assert KSDD2_URL in str(error.value)


# --- make_contaminated ----------------------------------------------------


def _labels(n_normal, n_anomalous, seed=0):
    y = np.array([0] * n_normal + [1] * n_anomalous)
    return np.random.RandomState(seed).permutation(y)


def _round_half_up(value):
    return math.floor(value + 0.5)


def _check_draw(data, X, y):
    """Properties every draw has, whatever the parameters."""
    train, test = data.train_indices, data.test_indices
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    np.testing.assert_array_equal(data.y_train, y[train])
    np.testing.assert_array_equal(data.y_test, y[test])
    np.testing.assert_array_equal(data.X_train, X[train])
    np.testing.assert_array_equal(data.X_test, X[test])
    assert 2 * data.y_test.sum() == len(data.y_test) > 0


@pytest.mark.parametrize("seed", range(40))
def test_make_contaminated_properties(seed):
    # A seeded sweep over dataset sizes, noise and test sizes, infeasible
    # requests included: each must either honour the protocol or raise.
    rng = np.random.RandomState(seed)
    n_normal, n_anomalous = rng.randint(2, 120), rng.randint(1, 120)
    noise = float(rng.choice([0.0, 0.05, 0.1, 0.2, 0.3, 0.5, rng.uniform(0, 0.95)]))
    if rng.rand() < 0.5:
        test_size = int(rng.randint(1, 30))
    else:
        test_size = float(rng.uniform(0.05, 0.9))
    y = _labels(n_normal, n_anomalous, seed)
    X = np.arange(2 * len(y)).reshape(-1, 2)

    if isinstance(test_size, int):
        n_test = test_size
    else:  # of the decimal written, as the noise
        n_test = math.ceil(Fraction(str(test_size)) * n_normal)
    n_train_normal = n_normal - n_test
    needed = _round_half_up(noise * n_train_normal / (1 - noise))
    feasible = n_test <= min(n_normal, n_anomalous) and n_train_normal >= 1
    feasible = feasible and needed <= n_anomalous - n_test
    feasible = feasible and (noise == 0 or needed >= 1)
    if not feasible:
        with pytest.raises(ValueError):
            make_contaminated(X, y, noise=noise, test_size=test_size, random_state=seed)
        return

    data = make_contaminated(X, y, noise=noise, test_size=test_size, random_state=seed)
    _check_draw(data, X, y)
    n_train = len(data.y_train)
    assert abs(data.y_train.mean() - noise) <= 1 / (2 * n_train) + 1e-12
    assert data.y_train.sum() == needed
    assert len(data.y_test) == 2 * n_test
    assert not set(data.train_indices) & set(data.test_indices)
    # Every normal sample is used, in one set or the other.
    assert (data.y_train == 0).sum() + (data.y_test == 0).sum() == n_normal


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.25, 0.5, 0.7])
@pytest.mark.parametrize("train_size", [10, 33, 64])
def test_make_contaminated_train_size(noise, train_size):
    y = _labels(100, 100)
    data = make_contaminated(
        np.arange(200),
        y,
        noise=noise,
        test_size=10,
        train_size=train_size,
        random_state=0,
    )
    assert len(data.y_train) == train_size
    assert data.y_train.sum() == _round_half_up(noise * train_size)
    assert abs(data.y_train.mean() - noise) <= 1 / (2 * train_size) + 1e-12


def test_a_noise_that_rounds_to_no_anomaly_is_refused():
    # 0.1 * 3 rounds to 0; 0.05 * 4 / 0.95 too: either set would be clean.
    y = _labels(40, 40)
    with pytest.raises(ValueError, match=r"noise=0.1 rounds to no anomalous sample "
                       r"in a training set of 3: it would be clean\. Use noise=0, a "
                       r"noise of at least 0\.1667"):
        make_contaminated(np.arange(80), y, noise=0.1, test_size=10, train_size=3)
    # 0.5 / 4.5 = 0.11111...: 0.1111 (rounded to nearest) still rounded to
    # no anomaly; the bound is written rounded up, so that it works as written.
    with pytest.raises(
        ValueError, match=r"training set of 4: .* at least 0\.1112, or more normal samples"
    ):
        make_contaminated(np.arange(46), _labels(6, 40), noise=0.05, test_size=2)
    data = make_contaminated(np.arange(46), _labels(6, 40), noise=0.1112, test_size=2)
    assert data.y_train.sum() == 1
    data = make_contaminated(np.arange(80), y, noise=0.17, test_size=10, train_size=3)
    assert data.y_train.sum() == 1
    # 0.5 / 80 = 0.00625 exactly: rounding up in floats wrote 0.006251.
    with pytest.raises(ValueError, match=r"at least 0\.00625, or a larger train_size"):
        make_contaminated(np.arange(130), _labels(100, 30), noise=0.001, test_size=10,
                          train_size=80)


def test_a_train_size_beyond_both_pools_is_not_offered_a_noise():
    # 18 normal and 3 anomalous samples outside the test set cannot make 40:
    # the message offered "the largest achievable noise is 0.0750", which
    # then failed for want of normal samples.
    y = _labels(20, 5)
    with pytest.raises(ValueError) as error:
        make_contaminated(np.arange(25), y, noise=0.6, train_size=40, test_size=2)
    message = str(error.value)
    assert "No noise fits train_size=40" in message
    assert "largest achievable noise" not in message
    assert "smaller noise" not in message


def test_make_contaminated_rounds_halves_up():
    # 0.2 * 70 / 0.8 = 17.5 anomalies: rounded up to 18 of 88.
    data = make_contaminated(
        np.arange(120), _labels(80, 40), noise=0.2, test_size=10, random_state=0
    )
    assert data.y_train.sum() == 18 and len(data.y_train) == 88


@pytest.mark.parametrize(
    ("noise", "n_normal_pool", "train_size", "n_anomalous"),
    [(0.2, 96, None, 22), (0.29, 100, 50, 15), (0.35, 100, 90, 32)],
)  # fmt: skip
def test_halves_that_floats_miss_still_round_up(noise, n_normal_pool, train_size, n_anomalous):
    # 0.2 * 86 / 0.8 is 21.499999999999996 in floats (21.5 exactly): 21 was drawn.
    data = make_contaminated(
        np.arange(n_normal_pool + 100), _labels(n_normal_pool, 100), noise=noise,
        test_size=10, train_size=train_size, random_state=0,
    )  # fmt: skip
    assert data.y_train.sum() == n_anomalous


def test_make_contaminated_float_test_size_rounds_up():
    y = _labels(50, 100)
    data = make_contaminated(np.arange(150), y, test_size=0.31, random_state=0)
    assert len(data.y_test) == 2 * 16


@pytest.mark.parametrize("n_normal, test_size", [(25, 0.28), (50, 0.14)])
def test_a_float_test_size_is_the_share_written(n_normal, test_size):
    # In floats 0.28 * 25 is 7.000000000000001, which rounded up to 8.
    y = _labels(n_normal, 40)
    data = make_contaminated(np.arange(len(y)), y, test_size=test_size, random_state=0)
    assert (data.y_test == 0).sum() == 7


def test_make_contaminated_default_test_size_is_a_quarter_of_normals():
    y = _labels(50, 100)
    data = make_contaminated(np.arange(150), y, noise=0.0, random_state=0)
    assert len(data.y_test) == 2 * 13
    assert len(data.y_train) == 37 and data.y_train.sum() == 0


def test_make_contaminated_overlap_shares_only_anomalies():
    y = _labels(60, 20)
    X = np.arange(80)
    # 10 test anomalies leave 10 for training, fewer than the 17 needed next to
    # 50 normal samples, so at least 7 training anomalies come from the test set.
    with pytest.raises(ValueError, match="overlap=True"):
        make_contaminated(X, y, noise=0.25, test_size=10, random_state=0)
    data = make_contaminated(
        X, y, noise=0.25, test_size=10, overlap=True, random_state=0
    )
    _check_draw(data, X, y)
    assert data.y_train.sum() == 17
    shared = set(data.train_indices) & set(data.test_indices)
    assert len(shared) >= 7
    assert all(y[index] == 1 for index in shared)


def test_make_contaminated_advice_passes_when_followed_on_large_sets():
    # 2001 / 22001 = 0.090950 was written 0.0910, which needs 2002 anomalies;
    # with no anomaly left for training, a noise of "at least 0.0164" was
    # advised; the default test_size was named as if given.
    y = np.r_[np.zeros(20000), np.ones(2001), np.zeros(5), np.ones(5)]
    split = ["train"] * 22001 + ["test"] * 10
    X = np.arange(len(y))
    with pytest.raises(ValueError, match="largest achievable noise is 0.0909"):
        make_contaminated(X, y, noise=0.3, split=split, random_state=0)
    data = make_contaminated(X, y, noise=0.0909, split=split, random_state=0)
    assert data.y_train.sum() == 2000
    # Below 0.0001 four decimals wrote 0.0000, where 5e-05 draws one anomaly.
    y_few = np.array([0] * 20000 + [1] * 2)
    with pytest.raises(ValueError, match="largest achievable noise is 5e-05\\."):
        make_contaminated(np.arange(20002), y_few, noise=0.1, test_size=1,
                          random_state=0)  # fmt: skip
    assert make_contaminated(np.arange(20002), y_few, noise=5e-05, test_size=1,
                             random_state=0).y_train.sum() == 1  # fmt: skip
    y = np.r_[np.zeros(40), np.ones(10)]
    with pytest.raises(ValueError, match=r"rounds to no anomalous sample in a "
                       r"training set of 30, and no anomaly is available for "
                       r"training \(10 in all\). Use noise=0, or a smaller test_size"):
        make_contaminated(np.arange(50), y, noise=0.01, test_size=10, random_state=0)
    y = np.r_[np.zeros(56), np.ones(13)]
    with pytest.raises(ValueError, match=r"test_size=0.25 \(the default\) asks for 14"):
        make_contaminated(np.arange(69), y, noise=0.1, random_state=0)


def test_make_contaminated_not_enough_anomalies_message():
    y = _labels(80, 40)
    with pytest.raises(ValueError) as error:
        make_contaminated(np.arange(120), y, noise=0.5, test_size=20)
    message = str(error.value)
    assert "noise=0.5 needs 60 anomalous training samples" in message
    assert "only 20 anomalies are available for training" in message
    assert "20 of them reserved for the balanced test set" in message
    # 20 anomalies next to 60 normal samples.
    assert "largest achievable noise is 0.2500" in message
    assert "overlap=True" in message and "smaller test_size" in message
    assert "train_size=40 (the largest at this noise)" in message
    # The suggested train_size does reach the requested noise.
    data = make_contaminated(np.arange(120), y, noise=0.5, test_size=20, train_size=40)
    assert data.y_train.mean() == 0.5


@pytest.mark.parametrize("seed", range(300))
def test_a_suggested_train_size_works(seed):
    # The advice named train sizes that were refused in turn (no anomaly
    # left, train_size <= 0, or more normal samples than there are).
    rng = np.random.RandomState(seed)
    n_normal, n_anomalous = rng.randint(3, 60), rng.randint(1, 30)
    noise = float(rng.choice([0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]))
    y = _labels(n_normal, n_anomalous, seed)
    kwargs = dict(noise=noise, test_size=int(rng.randint(1, n_anomalous + 1)))
    if rng.rand() < 0.5:
        kwargs["train_size"] = int(rng.randint(2, 80))
    try:
        make_contaminated(np.arange(len(y)), y, random_state=0, **kwargs)
    except ValueError as error:
        suggested = re.search(r"train_size=(\d+) \(the largest", str(error))
        if suggested:
            kwargs["train_size"] = int(suggested.group(1))
            data = make_contaminated(np.arange(len(y)), y, random_state=0, **kwargs)
            assert len(data.y_train) == kwargs["train_size"]
        assert not ("smaller noise" in str(error) and "only 0 anomalies" in str(error))


def test_make_contaminated_largest_noise_is_achievable():
    y = _labels(80, 40)
    X = np.arange(120)
    data = make_contaminated(X, y, noise=0.25, test_size=20, random_state=0)
    assert data.y_train.sum() == 20 and data.y_train.mean() == 0.25


def test_make_contaminated_is_deterministic():
    y = _labels(90, 60)
    X = np.arange(150)
    first = make_contaminated(X, y, noise=0.3, test_size=15, random_state=7)
    again = make_contaminated(X, y, noise=0.3, test_size=15, random_state=7)
    state = make_contaminated(
        X, y, noise=0.3, test_size=15, random_state=np.random.RandomState(7)
    )
    for other in (again, state):
        np.testing.assert_array_equal(first.train_indices, other.train_indices)
        np.testing.assert_array_equal(first.test_indices, other.test_indices)
    draws = {
        tuple(
            make_contaminated(
                X, y, noise=0.3, test_size=15, random_state=seed
            ).train_indices
        )
        for seed in range(5)
    }
    assert len(draws) == 5


def test_make_contaminated_draws_are_nested():
    y = _labels(90, 80)
    X = np.arange(170)
    draws = [
        make_contaminated(X, y, noise=noise, test_size=15, random_state=3)
        for noise in (0.0, 0.1, 0.3, 0.45)
    ]
    for lower, higher in zip(draws, draws[1:]):
        np.testing.assert_array_equal(lower.test_indices, higher.test_indices)
        low = set(lower.train_indices[lower.y_train == 1])
        high = set(higher.train_indices[higher.y_train == 1])
        assert low < high
    overlapping = make_contaminated(
        X, y, noise=0.5, test_size=15, overlap=True, random_state=3
    )
    np.testing.assert_array_equal(overlapping.test_indices, draws[0].test_indices)


def test_make_contaminated_on_a_list_of_paths():
    y = _labels(30, 30)
    paths = [f"/data/{index:03d}.png" for index in range(60)]
    data = make_contaminated(paths, y, noise=0.2, test_size=6, random_state=0)
    assert isinstance(data.X_train, list) and isinstance(data.X_test, list)
    assert data.X_train == [paths[index] for index in data.train_indices]
    assert data.X_test == [paths[index] for index in data.test_indices]
    assert data.y_train.mean() == 0.2


def test_make_contaminated_on_images():
    y = _labels(40, 40)
    images = np.random.RandomState(0).randint(0, 256, size=(80, 8, 8), dtype=np.uint8)
    data = make_contaminated(images, y, noise=0.1, test_size=10, random_state=0)
    assert data.X_train.shape[1:] == (8, 8) and data.X_train.dtype == np.uint8
    _check_draw(data, images, y)


def test_make_contaminated_predefined_split():
    # An MVTec-like split: 50 good training images; a test side of 10 good
    # and 30 defective images.
    y = np.array([0] * 50 + [0] * 10 + [1] * 30)
    split = np.array(["train"] * 50 + ["test"] * 40, dtype=object)
    X = np.arange(90)
    data = make_contaminated(X, y, noise=0.2, split=split, random_state=0)
    _check_draw(data, X, y)
    assert set(split[data.test_indices]) == {"test"}
    assert len(data.y_test) == 20
    train_normal = data.train_indices[data.y_train == 0]
    assert sorted(train_normal) == list(range(50))
    # 0.2 * 50 / 0.8 = 12.5 rounds to 13 of the 20 anomalies not in the test set.
    assert data.y_train.sum() == 13
    assert not set(data.train_indices) & set(data.test_indices)


def test_make_contaminated_never_trains_on_test_side_normals_left_over():
    # A KolektorSDD2-like test side, with many more good images than the
    # balanced test set takes: those left over stay out of training.
    y = np.array([0] * 40 + [0] * 30 + [1] * 20)
    split = np.array(["train"] * 40 + ["test"] * 50)
    data = make_contaminated(np.arange(90), y, noise=0.1, test_size=10,
                             split=split, random_state=0)  # fmt: skip
    assert set(split[data.train_indices[data.y_train == 0]]) == {"train"}
    assert (data.y_train == 0).sum() == 40


def test_make_contaminated_returns_each_set_in_a_random_order():
    y = np.array([0] * 80 + [1] * 40)
    data = make_contaminated(np.arange(120), y, noise=0.2, test_size=20, random_state=0)
    for labels in (data.y_train, data.y_test):
        assert 0 < labels.sum() < len(labels)
        first_anomaly = np.argmax(labels == 1)
        assert (labels[first_anomaly:] == 0).any()  # not normal ones, then anomalies


def test_make_contaminated_predefined_split_uses_training_anomalies():
    # A KolektorSDD2-like split, whose training side holds defective images too.
    y = np.array([0] * 40 + [1] * 5 + [0] * 10 + [1] * 10)
    split = np.array(["train"] * 45 + ["test"] * 20)
    data = make_contaminated(np.arange(65), y, noise=0.1, split=split, random_state=0)
    assert len(data.y_test) == 20 and set(split[data.test_indices]) == {"test"}
    assert (data.y_train == 0).sum() == 40
    assert set(data.train_indices[data.y_train == 1]) <= set(range(40, 45))
    with pytest.raises(ValueError, match="only 5 anomalies are available"):
        make_contaminated(np.arange(65), y, noise=0.2, split=split)


def test_make_contaminated_on_mvtec_bunch(mvtec_root):
    bottle = load_mvtec_ad(mvtec_root, "bottle")
    data = make_contaminated(
        bottle.filenames, bottle.target, noise=0.25, split=bottle.split, random_state=0
    )
    # 2 good and 2 defective test images; the third defective one contaminates
    # the 3 training images.
    assert sorted(data.y_test) == [0, 0, 1, 1]
    assert sorted(data.y_train) == [0, 0, 0, 1]
    assert all("/test/" in name for name in data.X_test)
    assert sum("/train/good/" in name for name in data.X_train) == 3
    with pytest.raises(ValueError, match="largest achievable noise is 0.2500"):
        make_contaminated(
            bottle.filenames, bottle.target, noise=0.4, split=bottle.split
        )


def test_make_contaminated_split_without_test_side(mvtec_root):
    bottle = load_mvtec_ad(mvtec_root, "bottle", split="train")
    with pytest.raises(ValueError, match='split="all"'):
        make_contaminated(bottle.filenames, bottle.target, split=bottle.split)


def test_make_contaminated_split_without_train_side():
    # A split of test images only (a dataset loaded with split="test") was
    # told to use a smaller test_size or noise, which fail again.
    for n_normal, kwargs in [
        (20, {}), (20, {"test_size": 1, "noise": 0.0}), (20, {"train_size": 2}),
        (3, {"test_size": 5}),  # was told test_size <= 3 first
    ]:  # fmt: skip
        y = np.array([0] * n_normal + [1] * 20)
        split = ["test"] * len(y)
        with pytest.raises(ValueError, match='no normal sample on its "train" side'):
            make_contaminated(
                np.arange(len(y)), y, split=split, random_state=0, **kwargs
            )


def test_make_contaminated_without_anomalies_is_not_told_to_load_them():
    # A category without defective images, already loaded with split="all",
    # was told to load it with split="all".
    y = np.array([0] * 16)
    split = ["train"] * 10 + ["test"] * 6
    with pytest.raises(ValueError, match="found 6 normal and 0 anomalous") as error:
        make_contaminated(np.arange(16), y, split=split, noise=0.0)
    assert "split=" not in str(error.value)


@pytest.mark.parametrize("train_size", [1, 2, 5])
def test_the_smallest_suggested_noise_works(train_size):
    # A training set of 1 was told "a noise of at least 0.5", which leaves no
    # normal sample and is refused in turn.
    X, y = np.arange(20), np.array([0] * 10 + [1] * 10)
    kwargs = dict(train_size=train_size, test_size=2, random_state=0)
    with pytest.raises(ValueError, match="rounds to no anomalous sample") as error:
        make_contaminated(X, y, noise=0.01, **kwargs)
    suggested = re.search(r"a noise of at least ([0-9.]+)", str(error.value))
    assert (suggested is None) == (train_size == 1)
    if suggested:
        data = make_contaminated(X, y, noise=float(suggested.group(1)), **kwargs)
        assert data.y_train.sum() == 1


# 5 normal and 3 anomalous samples.
SMALL_Y = [0, 0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    "X, y, kwargs, match",
    [
        (np.arange(4), [0, 1, -1, 1], {}, "y must be 1 for anomalous and 0 for normal"),
        (np.arange(8), [0, 1], {}, "inconsistent numbers of samples"),
        (np.arange(8), SMALL_Y, {"split": ["train"] * 7 + ["val"]}, 'only "train"'),
        (np.arange(8), SMALL_Y, {"split": ["train", "test"]}, "one entry per sample"),
        (np.arange(8), SMALL_Y, {"test_size": 4}, "Use test_size <= 3"),
        (np.arange(8), SMALL_Y, {"test_size": 0.99}, "Use test_size <= 3"),
        (np.arange(8), SMALL_Y, {"train_size": 4}, "needs 4 normal training samples"),
        (np.arange(8), SMALL_Y, {"test_size": 3, "noise": 0.9}, "noise=0.9 needs 18"),
        (np.arange(8), [0] * 8, {}, "found 8 normal and 0 anomalous"),
    ],
)
def test_make_contaminated_invalid_input(X, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_contaminated(X, y, **kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"noise": 1.0}, {"noise": -0.1}, {"test_size": 0}, {"test_size": 1.5}]
)
def test_make_contaminated_rejects_out_of_range_parameters(kwargs):
    with pytest.raises(InvalidParameterError):
        make_contaminated(np.arange(8), [0, 0, 0, 0, 0, 1, 1, 1], **kwargs)


# --- digits ---------------------------------------------------------------


@pytest.mark.parametrize("normal_digit", [0, 7, 9])
def test_load_digits_anomaly(normal_digit):
    data = load_digits_anomaly(normal_digit)
    digits = load_digits()

    assert data.images.shape == (1797, 8, 8) and data.images.dtype == np.uint8
    assert data.images.min() == 0 and data.images.max() == 255
    assert data.data.shape == (1797, 64) and data.data.dtype == np.float64
    assert data.data.min() == 0.0 and data.data.max() == 1.0
    np.testing.assert_array_equal(data.data, digits.data / 16)
    np.testing.assert_allclose(
        data.images.reshape(1797, 64) / 255, data.data, atol=0.5 / 255
    )
    np.testing.assert_array_equal(data.digit, digits.target)
    anomalous = (digits.target != normal_digit).astype(int)
    np.testing.assert_array_equal(data.target, anomalous)
    assert data.target.dtype == np.int64
    assert (data.target == 0).sum() == (digits.target == normal_digit).sum() > 170
    assert data.normal_digit == normal_digit
    assert data.target_names.tolist() == ["normal", "anomalous"]


def test_load_digits_anomaly_feeds_make_contaminated():
    digits = load_digits_anomaly(0)
    data = make_contaminated(digits.images, digits.target, noise=0.3, random_state=0)
    assert data.X_train.shape[1:] == (8, 8)
    assert abs(data.y_train.mean() - 0.3) <= 1 / (2 * len(data.y_train))


@pytest.mark.parametrize("normal_digit", [-1, 10, 2.5, "3"])
def test_load_digits_anomaly_rejects_other_digits(normal_digit):
    with pytest.raises(InvalidParameterError):
        load_digits_anomaly(normal_digit)
