"""The datasets: their categories, images and labels, and the draws they allow."""

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.utils import Bunch
from sklearn.utils._param_validation import InvalidParameterError

from ..datasets import (
    MVTEC_AD_CATEGORIES,
    SURFACE_CATEGORIES,
    load_digits_anomaly,
    load_ksdd2,
    load_mvtec_ad,
    make_contaminated,
    make_surfaces,
)
from ..datasets._contamination import _exact
from ..datasets._files import defect_pixels, is_folder_name
from ._config import BenchmarkError, check_choice, resolve_config

DIGIT_CATEGORIES = tuple(f"digit{digit}" for digit in range(10))


def dataset_categories(dataset, categories=None):
    """Check or default the categories of a dataset.

    Parameters
    ----------
    dataset : {"digits", "mvtec", "ksdd2", "surfaces"}
    categories : sequence of str or None, default=None
        For digits, ``"digit0"``..``"digit9"`` (or just the digit); for MVTec
        AD any category folder under the root (default: the 15 official
        ones); KolektorSDD2 has the single category ``"ksdd2"``; the
        generated surfaces have :data:`~sklearn_metarefine.datasets.SURFACE_CATEGORIES`.

    Returns
    -------
    categories : list of str
    """
    if dataset == "digits":
        if categories is None:
            return list(DIGIT_CATEGORIES)
        names = [f"digit{c}" if str(c).isdigit() else str(c) for c in categories]
        for name in names:
            check_choice("digits category", name, DIGIT_CATEGORIES)
        return names
    if dataset == "mvtec":
        given = MVTEC_AD_CATEGORIES if categories is None else categories
        names = [str(name) for name in given]
        for name in names:
            # A category names a folder under the root and its runs' files.
            if not is_folder_name(name):
                raise BenchmarkError(
                    f"The MVTec AD category {name!r} is not a folder name; pass "
                    "the name of a category folder under --root, e.g. 'bottle'."
                )
        return names
    if dataset == "surfaces":
        names = list(SURFACE_CATEGORIES if categories is None else categories)
        for name in names:
            check_choice("surfaces category", name, SURFACE_CATEGORIES)
        return names
    if categories is not None and list(categories) != ["ksdd2"]:
        raise BenchmarkError(
            f"KolektorSDD2 has a single category, 'ksdd2'; got {list(categories)}."
        )
    return ["ksdd2"]


def check_categories_present(dataset, categories, root):
    """Name every MVTec AD category folder missing under ``root`` when more
    than one is: the loader names the first (with advice for it), and a
    partial download took one run of the command per missing category."""
    if dataset != "mvtec" or root is None or not Path(root).expanduser().is_dir():
        return
    folder = Path(root).expanduser()
    missing = [name for name in categories if not (folder / name).is_dir()]
    if len(missing) > 1:
        raise BenchmarkError(
            f"{len(missing)} of the {len(categories)} MVTec AD categories have no "
            f"folder under {folder}: {', '.join(missing)}. Extract them there, or "
            "pass --categories with the ones present."
        )


def load_category(dataset, category, root, config=None):
    """Images (an array, or a list of files), labels and split of a category.

    ``config`` (a resolved configuration) sets how the surfaces are
    generated; None takes the defaults.
    """
    if dataset == "digits":
        digits = load_digits_anomaly(int(category.removeprefix("digit")))
        return digits.images, digits.target, None
    if dataset == "surfaces":
        surfaces = generate_surfaces(category, config or resolve_config(dataset))
        return surfaces.images, surfaces.target, None
    data = _read_dataset(dataset, category, root)
    return list(data.filenames), data.target, data.split


def _read_dataset(dataset, category, root):
    """The loader's Bunch of a category of MVTec AD or KolektorSDD2."""
    if root is None:
        raise BenchmarkError(
            f"The {dataset} dataset is read from disk: pass its folder as root "
            "(--root on the command line)."
        )
    try:
        if dataset == "mvtec":
            return load_mvtec_ad(root, category)
        return load_ksdd2(root)
    except ValueError as error:  # a file of the dataset, named in the message
        raise BenchmarkError(str(error)) from None


def load_masked(dataset, category, root, config):
    """A category of MVTec AD or KolektorSDD2 with its defect masks: the
    patch models' maps are scored against them, and ``dataset.json`` records
    them.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``filenames``, ``target`` and ``split`` as :func:`load_category`
        gives them; ``defect_type``; ``masks`` (``MaskFiles``) and
        ``images`` (``PictureFiles``), read when indexed, at the patch
        models' input size ``config["patch"]["image_size"]``, where their maps
        are scored.
    """
    data = _read_dataset(dataset, category, root)
    size = config["patch"]["image_size"]
    defect_type = (
        data.defect_type
        if dataset == "mvtec"
        else np.where(data.target == 1, "defective", "good")
    )
    return Bunch(
        filenames=list(data.filenames),
        target=data.target,
        split=data.split,
        defect_type=np.asarray(defect_type),
        masks=MaskFiles(data.mask_filenames, size, images=data.filenames),
        images=PictureFiles(data.filenames, size),
    )


class _Files:
    """Square arrays read from files when indexed: ``stack[indices]``, each
    by ``_read(i)`` of the file at position ``i``."""

    def __init__(self, filenames, size):
        self.filenames = list(filenames)
        self.size = size

    def __len__(self):
        return len(self.filenames)

    def __getitem__(self, indices):
        indices = np.atleast_1d(indices)
        if not len(indices):
            return np.zeros((0, *self.shape[1:]), dtype=self._dtype)
        return np.stack([self._read(i) for i in indices])

    def _open(self, path, what):
        try:
            with Image.open(path) as image:
                image.load()
                return image.copy()
        except Exception as error:  # PIL raises several types for one cause
            raise BenchmarkError(f"Cannot read the {what} {path}: {error}") from None


class MaskFiles(_Files):
    """Defect masks, each resized to ``size`` x ``size`` (nearest neighbour);
    an image without a mask file (a good MVTec AD image) has an empty one.

    A mask must have its image's proportions (``images``, read up to their
    header): one of another shape is not the mask of that image, and
    resized it scored the maps against the wrong pixels without a word.
    """

    _dtype = bool

    def __init__(self, filenames, size, images):
        super().__init__(filenames, size)
        self.images = list(images)

    @property
    def shape(self):
        return (len(self), self.size, self.size)

    def check(self):
        """Read every mask file: one that cannot be read, or is not its
        image's, is refused by name."""
        for i, path in enumerate(self.filenames):
            if path is not None:
                self._read(i)

    def _read(self, i):
        path = self.filenames[i]
        if path is None:
            return np.zeros((self.size, self.size), dtype=bool)
        mask = self._open(path, "defect mask")
        self._check_proportions(mask.size, i)
        # The loaders' rule, so that pixels agree with the image's label.
        pixels = Image.fromarray(defect_pixels(mask).astype(np.uint8) * 255)
        return np.asarray(pixels.resize((self.size, self.size), Image.NEAREST)) > 0

    def _check_proportions(self, mask_size, i):
        from .._features._images import _upright_size  # imports torch

        width, height = mask_size
        path, image_path = self.filenames[i], self.images[i]
        try:
            with Image.open(image_path) as image:  # its header only
                image_height, image_width = _upright_size(image)  # as the CNN sees it
        except Exception as error:  # PIL raises several types for one cause
            raise BenchmarkError(
                f"Cannot read the image {image_path}: {error}"
            ) from None
        # Within a pixel of the image's proportions, at the larger size.
        if abs(width * image_height - height * image_width) > max(
            width, height, image_width, image_height
        ):
            raise BenchmarkError(
                f"The defect mask {path} is {width} x {height} px and its image "
                f"{image_path} {image_width} x {image_height} px: not the same "
                "proportions, so not the mask of that image. Pair each image with "
                "its own mask."
            )


class PictureFiles(_Files):
    """Images as 8-bit RGB, each resized to ``size`` x ``size``, for figures."""

    _dtype = np.uint8

    @property
    def shape(self):
        return (len(self), self.size, self.size, 3)

    def _read(self, i):
        from .._image_files import read_image  # imports torch
        from .._pictures import _as_rgb8

        # Read as the features are (turned upright by the EXIF orientation,
        # 16 bits scaled), so that the maps lie on the picture they were
        # computed from.
        try:
            pixels = read_image(self.filenames[i])
        except Exception as error:  # UnreadableImageError, naming the file
            raise BenchmarkError(str(error)) from None
        image = Image.fromarray(_as_rgb8(pixels))
        return np.asarray(image.resize((self.size, self.size), Image.BILINEAR))


def generate_surfaces(category, config):
    """The images, labels and defect masks of one generated surface.

    Parameters
    ----------
    category : str
        One of :data:`~sklearn_metarefine.datasets.SURFACE_CATEGORIES`.
    config : dict
        A resolved configuration of the surfaces dataset: its ``"surfaces"``
        section sets the sizes, its ``"seed"`` the draw.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        What :func:`~sklearn_metarefine.datasets.make_surfaces` returns.
    """
    settings = config["surfaces"]
    try:
        return make_surfaces(
            category,
            n_normal=settings["n_normal"],
            n_anomalous=settings["n_anomalous"],
            image_size=settings["image_size"],
            random_state=config["seed"],
        )
    except (TypeError, ValueError) as error:
        raise BenchmarkError(
            f"The surfaces settings (config['surfaces'] = {settings}) cannot "
            f"generate {category!r}: {error}"
        ) from error


def check_masks(masked):
    """Read every defect mask of ``masked`` (category: data with ``masks``)
    before any file is written: one that fails was found in the runs only,
    after the dataset's files, it among them, were recorded, and once repaired
    the output folder was refused as holding results of other files."""
    for data in masked.values():
        data.masks.check()


# Where each dataset keeps the normal and the anomalous images of its test split.
_TEST_FOLDERS = {
    "mvtec": "MVTec AD keeps them in CATEGORY/test/good (normal) and the other "
    "folders of CATEGORY/test (defective)",
    "ksdd2": "KolektorSDD2's test images are normal where their _GT mask is empty, "
    "defective where it is not",
}


def _one_sided_test_split(dataset, category, y, split):
    """What a test split without normal or without anomalous images lacks, or
    None: the general remedies (--overlap, the sizes) cannot help it."""
    if split is None:
        return None
    test = np.asarray(split) == "test"
    n_normal, n_anomalous = int(np.sum(test & (y == 0))), int(np.sum(test & (y == 1)))
    if n_normal and n_anomalous:
        return None
    where = _TEST_FOLDERS.get(dataset, "")
    return (
        f"The test split of {dataset} category {category!r} holds {n_normal} normal "
        f"and {n_anomalous} anomalous images; the benchmark's test sets need both"
        + (f" ({where.replace('CATEGORY', category)})." if where else ".")
    )


def check_feasible(config, labelled, noise):
    """Raise, naming every impossible (category, noise) and the remedies.

    ``labelled`` maps each category to its (images, labels, split). Whether a
    draw is possible does not depend on its seed, so one draw per cell tells.
    """
    refusals, one_sided = [], set()
    for category, (_, y, split) in labelled.items():
        lacks = _one_sided_test_split(config["dataset"], category, y, split)
        if lacks:
            refusals.append(lacks)
            one_sided.add(category)
    labelled = {c: data for c, data in labelled.items() if c not in one_sided}
    problems = {}  # reason: the cells it applies to
    for category, (_, y, split) in labelled.items():
        for level in noise:
            try:
                make_contaminated(
                    np.arange(len(y)),
                    y,
                    noise=level,
                    split=split,
                    random_state=0,
                    **config["contamination"],
                )
            except InvalidParameterError as error:  # a setting, not the data
                raise BenchmarkError(
                    "The contamination settings (config['contamination'] = "
                    f"{config['contamination']}: --overlap, --train-size, "
                    f"--test-size or --config) cannot be used: {error}"
                ) from None
            except ValueError as error:
                reason = str(error).rstrip(".")
                problems.setdefault(reason, []).append(f"{category} noise={level:g}")
    if problems:
        # One message per reason: a setting out of range fails every cell alike.
        listed = [f"{', '.join(cells)}: {reason}" for reason, cells in problems.items()]
        # The train_size a reason offers holds at its noise level; --train-size
        # is one for every level and category, and may have to be smaller.
        sizes = [_largest_train_size(config, y, split, noise)
                 for _, y, split in labelled.values()]
        reach = ""
        if len(noise) > 1 or len(sizes) > 1:
            if None not in sizes:
                reach = (f" The largest --train-size that reaches every requested "
                         f"noise level and category: {min(sizes)}.")
            elif all(_largest_train_size(config, y, split, [level]) is not None
                     for _, y, split in labelled.values() for level in noise):
                # Each level has sizes of its own, offered above; none is
                # common to all.
                reach = (" No one --train-size reaches every requested noise "
                         "level and category together (a low level needs a "
                         "training set large enough to hold one anomaly, a "
                         "high one small enough for the anomalies there are).")
        refusals.append(
            f"Cannot draw every requested contaminated training set of "
            f"{config['dataset']}: " + "; ".join(listed) + f".{reach} On the "
            "command line: --overlap draws training anomalies from the test "
            "anomalies too, --train-size N fixes a smaller training set, "
            "--test-size N reserves fewer anomalies for the test set; or leave "
            "out the noise levels that are out of reach with --noise."
        )
    if refusals:
        raise BenchmarkError(" ".join(refusals))


def _draws(config, y, split, noise, train_size):
    """Whether a training set of ``train_size`` is drawn at every level."""
    settings = {**config["contamination"], "train_size": train_size}
    try:
        for level in noise:
            make_contaminated(np.arange(len(y)), y, noise=level, split=split,
                              random_state=0, **settings)  # fmt: skip
    except ValueError:
        return False
    return True


# How many sizes above the smallest that keeps an anomaly at every level the
# search tries for the first that is drawn at every level.
_SMALL_SIZES = 64


def _largest_train_size(config, y, split, noise):
    """The largest ``train_size`` drawn at every level of ``noise``, or None.

    Sizes too small for a level to keep an anomaly fail, as do sizes too large
    for the pools: the search starts above the first and bisects for the
    second."""
    positive = [_exact(level) for level in noise if level > 0]  # as it counts
    # round half up of level * size keeps an anomaly from size >= 0.5 / level;
    # a few sizes above, a normal sample beside it.
    low = max([1, *(math.ceil(Fraction(1, 2) / level) for level in positive)])
    high = len(y)
    low = next((size for size in range(low, min(low + _SMALL_SIZES, high + 1))
                if _draws(config, y, split, noise, size)), None)
    if low is None:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if _draws(config, y, split, noise, middle):
            low = middle
        else:
            high = middle - 1
    return low
