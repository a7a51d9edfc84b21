"""KolektorSDD2: image paths, labels and mask paths read from the extracted folder."""

import os

import numpy as np
from PIL import Image
from sklearn.utils import Bunch
from sklearn.utils._param_validation import StrOptions, validate_params

from ._files import (
    _absolute,
    _listing,
    _names,
    _paired,
    _png_files,
    _subfolders,
    defect_pixels,
    warn_of_stray_images,
)

KSDD2_URL = "https://www.vicos.si/resources/kolektorsdd2/"

_HOW_TO_GET = (
    "sklearn-metarefine does not download KolektorSDD2: download it from "
    f"{KSDD2_URL}, extract it, and pass the folder that holds train/ and test/ "
    "as root."
)

_GT_SUFFIX = "_GT"

_DESCR = f"""\
.. _ksdd2_dataset:

Kolektor Surface-Defect Dataset 2 (KolektorSDD2)
------------------------------------------------

Colour images (about 230 x 630 pixels) of electrical commutator surfaces
from a production line: 2085 good and 246 defective training images, 894
good and 110 defective test images. Every image comes with a ground-truth
mask of its defects; a good image's mask is all zero.

Layout read by :func:`load_ksdd2`::

    <root>/train/<id>.png   <root>/train/<id>_GT.png
    <root>/test/<id>.png    <root>/test/<id>_GT.png

Labels: ``target`` is 1 when the image's mask has any non-zero pixel and 0
otherwise; ``defect_type`` is "defective" or "good".

Download (not done by this package; read the license terms there):
{KSDD2_URL}

References
~~~~~~~~~~
J. Bozic, D. Tabernik, D. Skocaj, "Mixed supervision for surface-defect
detection: from weakly to fully supervised learning", Computers in Industry
129, 2021.
"""


@validate_params(
    {
        "root": [str, os.PathLike],
        "split": [StrOptions({"train", "test", "all"})],
    },
    prefer_skip_nested_validation=True,
)
def load_ksdd2(root, *, split="all"):
    """Load the file paths and labels of the Kolektor Surface-Defect Dataset 2.

    Nothing is downloaded. Each image is paired with its ``_GT`` mask, and the
    label is read from the mask: an image is defective when its mask has any
    non-zero pixel (a visible pixel with any non-zero colour channel: alpha
    channels and palette indices do not count). Only the masks are decoded,
    not the images.

    Parameters
    ----------
    root : str or os.PathLike
        Folder that holds ``train/`` and ``test/``, as extracted from the
        archive downloaded from https://www.vicos.si/resources/kolektorsdd2/.

    split : {"all", "train", "test"}, default="all"
        Which images to return. The default returns both splits, which is what
        :func:`make_contaminated` needs to draw a balanced test set from the
        test split and the contamination from the defective images.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes. The per-image
        arrays are aligned, training images first, each split sorted by file
        name.

        filenames : ndarray of shape (n_images,), dtype=object
            Absolute image paths (str).
        target : ndarray of shape (n_images,), dtype=int64
            1 for a defective image, 0 for a good one.
        target_names : ndarray of shape (2,)
            ``["good", "defective"]``, indexed by `target`.
        defect_type : ndarray of shape (n_images,), dtype=object
            ``"good"`` or ``"defective"`` (KolektorSDD2 names no defect type).
        mask_filenames : ndarray of shape (n_images,), dtype=object
            Path of each image's ``_GT`` mask. Unlike MVTec AD, good images
            have a mask file too; it is all zero.
        split : ndarray of shape (n_images,), dtype=object
            ``"train"`` or ``"test"``: the official split of each image.
        DESCR : str
            Description of the dataset.

    Raises
    ------
    FileNotFoundError
        If `root` or a requested split folder is missing or holds no image, if
        an image has no ``_GT`` mask, if a mask has no image, or if a PNG is
        a link to no file. The message names the path and says where to get
        the data.
    ValueError
        If a mask cannot be read (not an image, or cut short), naming it, or
        two files differ only in the case of their suffix (``1_GT.png`` and
        ``1_GT.PNG``).

    Warns
    -----
    UserWarning
        If image files (any common suffix) lie under the folders read but
        outside the layout, and were therefore not loaded; the message
        lists them.

    See Also
    --------
    load_mvtec_ad : The same for one MVTec AD category.
    make_contaminated : Build a contaminated training set and a balanced
        test set from the returned labels and splits.

    References
    ----------
    .. [1] J. Bozic, D. Tabernik, D. Skocaj, "Mixed supervision for
       surface-defect detection: from weakly to fully supervised learning",
       Computers in Industry 129, 2021.

    Examples
    --------
    With the dataset extracted under ``~/data/ksdd2``:

    >>> from sklearn_metarefine.datasets import load_ksdd2
    >>> ksdd2 = load_ksdd2("~/data/ksdd2")  # doctest: +SKIP
    >>> int(ksdd2.target.sum()), len(ksdd2.target)  # doctest: +SKIP
    (356, 3335)

    The same call on a tiny tree of the same layout, with one defective image:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for split, image_id, defect in [("train", "10000", 0), ("train", "10001", 255),
    ...                                 ("test", "20000", 0)]:
    ...     folder = Path(tmp.name, split)
    ...     folder.mkdir(exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(folder / f"{image_id}.png")
    ...     mask = Image.new("L", (8, 8))
    ...     mask.putpixel((3, 4), defect)
    ...     mask.save(folder / f"{image_id}_GT.png")
    >>> ksdd2 = load_ksdd2(tmp.name)
    >>> ksdd2.target
    array([0, 1, 0])
    >>> ksdd2.split
    array(['train', 'train', 'test'], dtype=object)
    >>> [Path(name).name for name in ksdd2.filenames]
    ['10000.png', '10001.png', '20000.png']
    >>> tmp.cleanup()
    """
    root = _absolute(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"KolektorSDD2 root folder {root} does not exist or is not a folder. "
            + _HOW_TO_GET
        )
    splits = ["train", "test"] if split == "all" else [split]
    samples = [sample for name in splits for sample in _split_samples(root, name)]
    filenames, target, mask_filenames, sample_splits = zip(*samples)
    warn_of_stray_images(
        [root / name for name in splits],
        [*filenames, *mask_filenames],
        "KolektorSDD2 layout (train/ and test/: <id>.png, <id>_GT.png)",
        root,
    )
    target = np.array(target, dtype=np.int64)
    return Bunch(
        filenames=np.array(filenames, dtype=object),
        target=target,
        target_names=np.array(["good", "defective"]),
        defect_type=np.where(target == 1, "defective", "good").astype(object),
        mask_filenames=np.array(mask_filenames, dtype=object),
        split=np.array(sample_splits, dtype=object),
        DESCR=_DESCR,
    )


def _split_samples(root, split):
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"KolektorSDD2 {split} folder {folder} does not exist. "
            f"Folders found in {root}: {_names(_subfolders(root))}."
            + _nested_root_hint(root)
            + " "
            + _HOW_TO_GET
        )
    files = _png_files(folder)
    masks = {path for path in files if path.stem.endswith(_GT_SUFFIX)}
    images = [path for path in files if path not in masks]
    if not images:
        raise FileNotFoundError(
            f"No KolektorSDD2 {split} images: {folder} holds no PNG image "
            f"other than {_GT_SUFFIX} masks. " + _HOW_TO_GET
        )
    pairs = {image: folder / f"{image.stem}{_GT_SUFFIX}.png" for image in images}

    pairs, missing, orphans = _paired(pairs, masks)
    if missing:
        raise FileNotFoundError(
            f"KolektorSDD2 {split} folder {folder} is incomplete: {len(missing)} "
            f"image(s) have no {_GT_SUFFIX} mask. Missing:{_listing(missing)}\n"
            "Re-extract the dataset from the archive. " + _HOW_TO_GET
        )
    if orphans:
        raise FileNotFoundError(
            f"KolektorSDD2 {split} folder {folder} is incomplete: {len(orphans)} "
            f"mask(s) have no image (expected <id>.png next to "
            f"<id>{_GT_SUFFIX}.png). Masks without an image:{_listing(orphans)}\n"
            "Re-extract the dataset from the archive. " + _HOW_TO_GET
        )
    return [
        (str(image), int(_has_defect(mask, image)), str(mask), split)
        for image, mask in pairs.items()
    ]


def _has_defect(mask_path, image):
    try:
        with Image.open(mask_path) as mask:
            return bool(defect_pixels(mask).any())
    except Exception as error:  # not an image, truncated, unreadable
        raise ValueError(
            f"KolektorSDD2 mask {mask_path} (of {image}) cannot be read: {error}. "
            "Re-extract the dataset from the archive. " + _HOW_TO_GET
        ) from error


def _nested_root_hint(root):
    # The archive unpacks into a folder of its own, so a root one level too
    # high is the most likely mistake.
    nested = [
        name
        for name in _subfolders(root)
        if (root / name / "train").is_dir() and (root / name / "test").is_dir()
    ]
    if not nested:
        return ""
    return f" {root / nested[0]} holds train/ and test/; pass it as root."
