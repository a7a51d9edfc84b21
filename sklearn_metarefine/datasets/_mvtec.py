"""MVTec AD: image paths, labels and mask paths read from the extracted folder."""

import os

import numpy as np
from sklearn.utils import Bunch
from sklearn.utils._param_validation import StrOptions, validate_params

from ._files import (
    _absolute,
    _defect_folders,
    _listing,
    _names,
    _paired,
    _png_files,
    _subfolders,
    is_folder_name,
    warn_of_stray_images,
)

# The folders of a category that each split reads.
_LAYOUT_FOLDERS = {
    "train": ["train"],
    "test": ["test", "ground_truth"],
    "all": ["train", "test", "ground_truth"],
}

MVTEC_AD_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)

MVTEC_AD_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"

_HOW_TO_GET = (
    "sklearn-metarefine does not download MVTec AD: download it from "
    f"{MVTEC_AD_URL}, extract it, and pass the folder that holds the category "
    "folders (bottle/, cable/, ...) as root."
)

_DESCR = f"""\
.. _mvtec_ad_dataset:

MVTec AD
--------

MVTec Anomaly Detection: 5354 high-resolution colour images of 15 industrial
object and texture categories ({", ".join(MVTEC_AD_CATEGORIES)}).
The training split holds only defect-free ("good") images; the test split holds
good images and images of over 70 defect types, each defective image with a
pixel-precise ground-truth mask.

Layout read by :func:`load_mvtec_ad`::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Labels: ``target`` is 1 for a defective image and 0 for a good one;
``defect_type`` is "good" or the name of the defect folder.

Download (not done by this package; read the license terms there):
{MVTEC_AD_URL}

References
~~~~~~~~~~
P. Bergmann, M. Fauser, D. Sattlegger, C. Steger, "MVTec AD - A Comprehensive
Real-World Dataset for Unsupervised Anomaly Detection", CVPR 2019.
"""


@validate_params(
    {
        "root": [str, os.PathLike],
        "category": [str],
        "split": [StrOptions({"train", "test", "all"})],
    },
    prefer_skip_nested_validation=True,
)
def load_mvtec_ad(root, category, *, split="all"):
    """Load the file paths and labels of one MVTec AD category.

    Nothing is downloaded and no image is decoded: the function reads the
    folder layout of the extracted dataset and checks that every defective
    test image has its mask and every mask its image.

    Parameters
    ----------
    root : str or os.PathLike
        Folder that holds the category folders (``<root>/bottle``, ...), as
        extracted from the archive downloaded from
        https://www.mvtec.com/company/research/datasets/mvtec-ad.

    category : str
        One of :data:`MVTEC_AD_CATEGORIES`, or the name of any folder under
        `root` laid out the same way.

    split : {"all", "train", "test"}, default="all"
        Which images to return. The default returns both splits, which is what
        :func:`make_contaminated` needs: it moves defective test images into
        the training set. Masks are checked only when test images are loaded.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes. The per-image
        arrays are aligned, training images first, then test images by defect
        folder and file name.

        filenames : ndarray of shape (n_images,), dtype=object
            Absolute image paths (str).
        target : ndarray of shape (n_images,), dtype=int64
            1 for a defective image, 0 for a good one.
        target_names : ndarray of shape (2,)
            ``["good", "defective"]``, indexed by `target`.
        defect_type : ndarray of shape (n_images,), dtype=object
            ``"good"`` or the defect folder name (``"broken_large"``, ...).
        mask_filenames : ndarray of shape (n_images,), dtype=object
            Path of the ground-truth mask of a defective image; None for a
            good image, whose mask is all zero.
        split : ndarray of shape (n_images,), dtype=object
            ``"train"`` or ``"test"``: the official split of each image.
        category : str
            The category loaded.
        DESCR : str
            Description of the dataset.

    Raises
    ------
    FileNotFoundError
        If `root`, the category, or the requested split is missing or holds no
        image, if a defective test image has no mask, if a mask has no
        image, if a PNG is a link to no file, or if any link directly in
        ``test/`` or ``ground_truth/`` (a defect folder's place) points to
        nothing. The message names the path and says where to get the data.
    ValueError
        If `category` is not a folder name (a path, ``"."`` or ``".."``), or
        two files of a folder differ only in the case of their suffix
        (``000.png`` and ``000.PNG``, which would share one mask).

    Warns
    -----
    UserWarning
        If image files (any common suffix) lie under the folders read but
        outside the layout, and were therefore not loaded; the message
        lists them.

    See Also
    --------
    load_ksdd2 : The same for the Kolektor Surface-Defect Dataset 2.
    make_contaminated : Build a contaminated training set and a balanced
        test set from the returned labels and splits.

    Notes
    -----
    The 15 categories hold 3629 training images and 467 good plus 1258
    defective test images in all; bottle, for instance, has 209 training
    images, 20 good and 63 defective test images.

    References
    ----------
    .. [1] P. Bergmann, M. Fauser, D. Sattlegger, C. Steger, "MVTec AD - A
       Comprehensive Real-World Dataset for Unsupervised Anomaly Detection",
       CVPR 2019.

    Examples
    --------
    With the dataset extracted under ``~/data/mvtec_ad``:

    >>> from sklearn_metarefine.datasets import load_mvtec_ad
    >>> bottle = load_mvtec_ad("~/data/mvtec_ad", "bottle")  # doctest: +SKIP
    >>> int(bottle.target.sum()), len(bottle.target)  # doctest: +SKIP
    (63, 292)

    The same call on a tiny tree of the same layout:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for image in ["train/good/000", "test/good/000", "test/crack/000",
    ...               "ground_truth/crack/000_mask"]:
    ...     path = Path(tmp.name, "bottle", image + ".png")
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     Image.new("L", (8, 8)).save(path)
    >>> bottle = load_mvtec_ad(tmp.name, "bottle")
    >>> bottle.target
    array([0, 1, 0])
    >>> bottle.defect_type
    array(['good', 'crack', 'good'], dtype=object)
    >>> bottle.split
    array(['train', 'test', 'test'], dtype=object)
    >>> [Path(mask).name if mask else None for mask in bottle.mask_filenames]
    [None, '000_mask.png', None]
    >>> tmp.cleanup()
    """
    root = _absolute(root)
    folder = _category_folder(root, category)
    samples = []
    if split in ("train", "all"):
        samples += _train_samples(folder)
    if split in ("test", "all"):
        samples += _test_samples(folder)
    filenames, target, defect_type, mask_filenames, splits = zip(*samples)
    warn_of_stray_images(
        [folder / name for name in _LAYOUT_FOLDERS[split]],
        [*filenames, *filter(None, mask_filenames)],
        "MVTec AD layout (train/good/, test/<type>/, ground_truth/<type>/)",
        folder,
    )
    return Bunch(
        filenames=np.array(filenames, dtype=object),
        target=np.array(target, dtype=np.int64),
        target_names=np.array(["good", "defective"]),
        defect_type=np.array(defect_type, dtype=object),
        mask_filenames=np.array(mask_filenames, dtype=object),
        split=np.array(splits, dtype=object),
        category=category,
        DESCR=_DESCR,
    )


def _category_folder(root, category):
    # A path (absolute, or up and down) would leave root; "." and ".." are
    # root and its parent.
    if not is_folder_name(category):
        raise ValueError(
            f"category must be the name of a folder under root, such as "
            f"'bottle', got {category!r}."
        )
    if not root.is_dir():
        raise FileNotFoundError(
            f"MVTec AD root folder {root} does not exist or is not a folder. "
            + _HOW_TO_GET
        )
    folder = root / category
    if folder.is_dir():
        return folder
    found = _subfolders(root)
    message = (
        f"MVTec AD category {category!r} not found: {folder} does not exist. "
        f"Folders found in {root}: {_names(found)}."
    )
    if (root / "train").is_dir() and (root / "test").is_dir():
        message += (
            f" {root} itself looks like a category folder; pass its parent "
            f"{root.parent} as root."
        )
    if category not in MVTEC_AD_CATEGORIES:
        message += f" The MVTec AD categories are: {', '.join(MVTEC_AD_CATEGORIES)}."
    raise FileNotFoundError(message + " " + _HOW_TO_GET)


def _train_samples(folder):
    good = folder / "train" / "good"
    images = _png_files(good) if good.is_dir() else []
    if not images:
        problem = "holds no PNG image" if good.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"No MVTec AD training images: {good} {problem}. " + _HOW_TO_GET
        )
    return [(str(image), 0, "good", None, "train") for image in images]


def _test_samples(folder):
    test = folder / "test"
    images = []
    if test.is_dir():
        for defect in _defect_folders(test):
            images += [(defect, image) for image in _png_files(test / defect)]
    if not images:
        problem = (
            "holds no PNG image in a subfolder (test/good/, test/<defect type>/)"
            if test.is_dir()
            else "does not exist"
        )
        raise FileNotFoundError(
            f"No MVTec AD test images: {test} {problem}. " + _HOW_TO_GET
        )
    masks = _matched_masks(folder, images)
    return [
        (str(image), int(defect != "good"), defect, masks.get(image), "test")
        for defect, image in images
    ]


def _matched_masks(folder, images):
    """Map each defective test image to its mask, checking both directions."""
    ground_truth = folder / "ground_truth"
    masks = {
        image: ground_truth / defect / f"{image.stem}_mask.png"
        for defect, image in images
        if defect != "good"
    }
    existing = set()
    if ground_truth.is_dir():
        for defect in _defect_folders(ground_truth):
            existing.update(_png_files(ground_truth / defect))

    masks, missing, orphans = _paired(masks, existing)
    if missing:
        raise FileNotFoundError(
            f"MVTec AD folder {folder} is incomplete: {len(missing)} defective "
            f"test image(s) have no ground-truth mask. Missing:{_listing(missing)}\n"
            "Re-extract the category from the archive. " + _HOW_TO_GET
        )
    if orphans:
        raise FileNotFoundError(
            f"MVTec AD folder {folder} is incomplete: {len(orphans)} "
            "ground-truth mask(s) have no test image (expected "
            "test/<defect>/<stem>.png for ground_truth/<defect>/<stem>_mask.png)."
            f" Masks without an image:{_listing(orphans)}\n"
            "Re-extract the category from the archive. " + _HOW_TO_GET
        )
    return {image: str(mask) for image, mask in masks.items()}
