"""What the patch detectors share: images (or rows) to patch grids, grids to maps."""

import contextlib
import copy
import os
import time

import numpy as np
import torch
from sklearn.utils._param_validation import HasMethods
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from .._features import PatchFeatures
from .._features._images import _image_source, one_image_with_channels
from .._samples import distinct_training_images
from .._utils import forget, is_whole, shown_as, shown_name
from ._bank import anomaly_maps

# Where a grid cell's features are centred: cell i on CNN-input pixel
# stride * (i - offset). The finest map of every named backbone has stride 8
# whatever the input's size (for lite0 and the ResNets a side that is not a
# multiple of 8 gives ceil(side / 8) cells, which overhang the input; AlexNet
# has fewer: its cells are not side / cells apart either). Size-keeping
# convolutions padded alike on both sides centre cell i on pixel 8 * i
# (offset 0: torchvision's ResNets).
# efficientnet_lite0's packaged weights look up and left of that: 0.75 is the
# offset that centres the maps' peaks on planted defects (median error under
# 1.5 px at 96 and 224 px; the centroid of its cells' input gradients lies
# 0.45 to 0.72 cells up and left). AlexNet's unpadded first convolution and
# pooling centre cell i on pixel 8 * i + 7: offset -7/8. lite0's offset is its
# packaged weights': with random weights (None) its cells sit where the
# layers' geometry puts them (gradient centroids: 0.0 to 0.2 cell). A module
# a user gives is taken to span its input with its grid (stride: input size
# over cells), with offset 0, unless its geometry is known.
_CELL_OFFSETS = {"efficientnet_lite0": 0.75, "alexnet": -0.875}
_CELL_STRIDE = 8


def cell_offset(backbone, weights="DEFAULT"):
    """The offset of :data:`_CELL_OFFSETS` for ``backbone`` (a name or a
    module) with ``weights``: 0 where none was measured, and for
    efficientnet_lite0 with random weights (``None``), whose offset is its
    packaged weights'."""
    if not isinstance(backbone, str):
        return 0.0
    if backbone == "efficientnet_lite0" and weights is None:
        return 0.0
    return _CELL_OFFSETS.get(backbone, 0.0)


def cell_stride(backbone):
    """The input pixels between two cells of ``backbone``'s grid: 8 for the
    named backbones, None (the input's size over the cells) for a module."""
    return _CELL_STRIDE if isinstance(backbone, str) else None

# Constraints of the parameters that describe the input and its embedding.
GRID_CONSTRAINTS = {
    "backbone": [*PatchFeatures._parameter_constraints["backbone"], None],
    "weights": PatchFeatures._parameter_constraints["weights"],
    "image_size": PatchFeatures._parameter_constraints["image_size"],
    "input_shape": PatchFeatures._parameter_constraints["input_shape"],
    "grid_shape": [tuple, list, None],
    "batch_size": PatchFeatures._parameter_constraints["batch_size"],
    "memory": [None, str, os.PathLike, HasMethods(["cache"])],
}


# Rows of patch vectors whose largest magnitude lies outside this range are
# divided by a power of two before the float32 arithmetic of the patch
# detectors, which would turn them into infinities or zeros.
_FLOAT32_SAFE = (1e-30, 1e30)


# float32 keeps about 7 significant digits: a channel whose values lie
# further from zero than this many times their spread loses its variation.
_FLOAT32_OFFSET = 1e3
# Patch vectors that set the offset, at most (evenly spaced).
_OFFSET_SAMPLE = 10_000


def _float32_offset(patches):
    """Per-channel medians of ``patches`` ``(n, n_cells, n_channels)``, or
    zeros, subtracted before the float32 arithmetic of the patch detectors.

    Zeros unless a channel's median lies far from zero for its spread
    (1e8 + N(0, 1) became constant in float32). One offset per channel, the
    same in every cell, keeps the distances between patches of any cells.
    """
    rows = patches.reshape(-1, patches.shape[-1])
    # Any centre near the data keeps the variation: a sample of rows will do.
    rows = rows[:: -(-len(rows) // _OFFSET_SAMPLE)].astype(np.float64)
    with np.errstate(under="ignore"):  # squares of tiny values: 0
        spread, median = rows.std(axis=0), np.median(rows, axis=0)
    if not np.any((spread > 0) & (np.abs(median) > _FLOAT32_OFFSET * spread)):
        return np.zeros(rows.shape[1])
    return median


def _float32_scale(X):
    """1.0, or the power of two that brings ``X``'s largest magnitude near 1."""
    largest = float(np.max(np.abs(X)))
    if largest == 0.0 or _FLOAT32_SAFE[0] <= largest <= _FLOAT32_SAFE[1]:
        return 1.0
    return float(np.ldexp(1.0, np.frexp(largest)[1]))


def grid_maps(grids, size, input_size, sigma, backbone, weights="DEFAULT"):
    """Grids of patch scores ``(n, h, w)`` as maps of images of ``size``.

    The images, of ``size = (height, width)``, were resized to ``input_size``
    for ``backbone`` with ``weights``. The maps are resized bilinearly, with
    each cell placed where its features are centred (:func:`cell_offset`), and
    smoothed with a Gaussian of ``sigma`` pixels of ``input_size``, scaled to
    ``size``.

    Returns
    -------
    maps : ndarray of shape (n, height, width), dtype float32
    """
    # Per axis: an image resized to a square is stretched unequally.
    sigma = tuple(sigma * out / seen for out, seen in zip(size, input_size))
    maps = anomaly_maps(
        torch.as_tensor(grids),
        tuple(size),
        sigma,
        tuple(input_size),
        cell_offset(backbone, weights),
        cell_stride(backbone),
    )
    return maps.numpy()


class PatchGridMixin:
    """Patch grids of the input of a patch detector, and maps of patch scores.

    The detector has the parameters of ``GRID_CONSTRAINTS`` plus ``sigma``,
    ``device`` and ``verbose``; ``_fit_patches`` sets ``features_``,
    ``grid_shape_``, ``input_offset_`` and ``input_scale_`` (patch vectors
    are scored as ``(patch - input_offset_) / input_scale_``: 0 and 1.0
    unless float32 would lose their variation, or their magnitude would
    overflow or vanish in it). It gives both detectors ``decision_function`` and
    ``predict`` from their ``score_samples`` and ``offset_``.
    """

    def decision_function(self, X):
        """Score shifted by ``offset_``: negative for anomalies.

        Parameters
        ----------
        X : images, or array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Label each image +1 (normal) or -1 (anomalous).

        Parameters
        ----------
        X : images, or array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)

    @property
    def _shown_name(self):
        """The name in messages and progress: the class's, or within
        :func:`shown_as` that of the estimator using this one."""
        return shown_name(self)

    @contextlib.contextmanager
    def _stage(self, what):
        """When ``verbose``, a line before and after a long step of ``fit``."""
        if not self.verbose:
            yield
            return
        name, start = self._shown_name, time.perf_counter()
        print(f"{name}: {what}...", flush=True)
        yield
        seconds = time.perf_counter() - start
        print(f"{name}: {what}: done in {seconds:.1f} s", flush=True)

    def _fit_patches(self, X, seed):
        """Patch vectors ``(n_distinct, n_cells, n_channels)`` of the distinct
        training images, and for each training image the position of its
        first copy among them (a warning says how many repeat). Refuses copies
        of one image.

        Copies are fitted once: each training image is scored against the
        patches of the others, and a copy matched its twin, so its training
        score was near zero and the threshold fell.
        """
        patches, rows = self._training_patches(X, seed)
        # Every value the same in all images, up to float32 rounding, which
        # the CNN's batches vary by (1e-6).
        high, low = patches.max(axis=0), patches.min(axis=0)
        if np.all(high - low <= 1e-5 * np.maximum(high, -low)):
            raise ValueError(
                f"The {len(patches)} training images are copies of one image: "
                f"{self._shown_name} {self._scores_training_images}, its "
                "threshold with them, and copies leave nothing to compare (the "
                "image itself then sat on the threshold). Train on several "
                "images of good parts."
            )
        # Raw rows (centred, in float64) within float32's resolution, which
        # the bank keeps: it cannot tell them apart, and a copy would match
        # its twin.
        rtol = None if self.backbone is not None else float(np.finfo(np.float32).eps)
        distinct, copy_of = distinct_training_images(
            rows, True, minimum=2, rtol=rtol
        )
        return patches[distinct], copy_of

    def _training_patches(self, X, seed):
        """The training patches, and the rows copies are judged on: the
        CNN's features, or the input rows centred as the bank's are, in
        float64 (in float32 patches, rows far smaller than the largest round
        alike)."""
        if self.backbone is None:
            self.features_ = None
            X = validate_data(
                self, X, dtype=[np.float64, np.float32], ensure_min_samples=2
            )
            self.grid_shape_ = self._check_grid(X.shape[1])
            self.input_offset_ = _float32_offset(self._as_cells(X))
            X = self._centred(X)
            self.input_scale_ = _float32_scale(X)
            return self._as_patches(X / self.input_scale_), X
        self.input_offset_, self.input_scale_ = 0.0, 1.0
        # Of an earlier fit with backbone=None.
        forget(self, "n_features_in_", "feature_names_in_")
        self.features_ = PatchFeatures(
            self.backbone,
            weights=self.weights,
            image_size=self.image_size,
            input_shape=self.input_shape,
            batch_size=self.batch_size,
            memory=self.memory,
            device=self.device,
            verbose=self.verbose,
            random_state=seed,
        )
        with shown_as(self):  # its messages name this detector
            rows = self.features_.fit_transform(X)
        # A detector fitted beside this one reuses the embedding (_pair.py).
        getattr(self, "_training_rows_sink", []).append(rows)
        if len(rows) < 2:
            raise ValueError(
                f"n_samples={len(rows)}: {self._shown_name} needs at least 2 "
                "training images."
            )
        self.grid_shape_ = self.features_.grid_shape_
        return self._as_patches(rows), rows

    def _patches(self, X, quiet=False, checked=False):
        """Patch vectors ``(n_images, n_cells, n_channels)`` of new images;
        ``quiet``: without the CNN's progress bar (one part of several);
        ``checked``: raw rows that ``_checked_rows`` gave."""
        check_is_fitted(self)
        if self.features_ is None:
            rows = X if checked else self._checked_rows(X)
            rows = self._centred(rows) / self.input_scale_
        else:
            features = self.features_
            if quiet and features.verbose:
                features = copy.copy(features)  # shares the backbone
                features.verbose = 0
            with shown_as(self):
                rows = features.transform(X)
        return self._as_patches(rows)

    def _as_cells(self, rows):
        """Rows ``(n, n_features)`` as ``(n, n_cells, n_channels)``, unconverted."""
        return rows.reshape(len(rows), self.grid_shape_[0] * self.grid_shape_[1], -1)

    def _centred(self, rows):
        """Rows less ``input_offset_`` in every cell (a copy only if it is not 0)."""
        # Model files saved before input_offset_ existed centred nothing.
        offset = getattr(self, "input_offset_", 0.0)
        if not np.any(offset):
            return rows
        return (self._as_cells(rows) - offset).reshape(len(rows), -1)

    def _as_patches(self, rows):
        n_cells = self.grid_shape_[0] * self.grid_shape_[1]
        # Beyond float32: infinitely far; below its smallest values: 0.
        with np.errstate(over="ignore", under="ignore"):
            patches = np.require(rows, np.float32, ["C", "W"])
        return patches.reshape(len(rows), n_cells, -1)

    def _check_grid(self, n_features):
        if self.grid_shape is None:
            return (1, 1)
        if len(self.grid_shape) != 2 or not all(
            is_whole(side) and side >= 1 for side in self.grid_shape
        ):
            raise ValueError(
                "grid_shape must be a (height, width) pair of positive ints, or "
                f"None; got {self.grid_shape!r}."
            )
        grid = tuple(int(side) for side in self.grid_shape)
        if n_features % (grid[0] * grid[1]):
            raise ValueError(
                f"grid_shape={self.grid_shape!r} does not divide the {n_features} "
                "features of a row into (height, width) patches of equal length."
            )
        return grid

    def _image_scores(self, X):
        """``score_samples(X)``, ``batch_size`` images at a time."""
        return self._batched(X, lambda patches: -self._patch_scores_of(patches).max(1))

    def _image_maps(self, X):
        """``anomaly_map(X)``, ``batch_size`` images at a time."""
        size = self._one_size(X)
        return self._batched(
            X, lambda patches: self._maps(self._patch_scores_of(patches), size)
        )

    def _scores_and_maps(self, X):
        """``score_samples(X)`` and ``anomaly_map(X)`` from one embedding of ``X``."""
        size = self._one_size(X)

        def scores_and_maps(patches):
            patch_scores = self._patch_scores_of(patches)
            return -patch_scores.max(1), self._maps(patch_scores, size)

        return self._batched(X, scores_and_maps)

    def _batched(self, X, compute):
        """``compute`` of the patches of ``X``, an array or a tuple of arrays
        along the images, run on ``batch_size`` images at a time (the patches
        of all of them at once took about 2.6 MB an image at 224 px, whatever
        ``batch_size`` said), with one progress bar when ``verbose``."""
        n_images = self._image_count(X)
        if n_images is None or n_images <= self.batch_size:
            return compute(self._patches(X))
        # Raw rows checked once: a batch each repeated the checks' warnings.
        check_is_fitted(self)
        checked = self.features_ is None
        if checked:
            X = self._checked_rows(X)
        step = self.batch_size
        starts = tqdm(
            range(0, n_images, step),
            desc=self._shown_name,
            unit="batch",
            disable=not self.verbose,
        )
        parts = [
            compute(self._patches(X[at : at + step], quiet=True, checked=checked))
            for at in starts
        ]
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(column) for column in zip(*parts))
        return np.concatenate(parts)

    def _checked_rows(self, X):
        return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)

    def _image_count(self, X):
        """How many images ``X`` holds along its first axis; None where that is
        not sure (one image, refused whole with a message of its shape)."""
        if isinstance(X, (list, tuple)):
            return len(X)
        if not isinstance(X, np.ndarray) or X.ndim > 4:
            return None
        if X.ndim == 1:
            return len(X) if X.dtype.kind in "OUS" else None  # file paths
        if X.ndim == 2:  # rows; or one gray image without input_shape
            images = getattr(self, "features_", None) is not None
            return None if images and self.input_shape is None else len(X)
        return None if X.ndim == 3 and one_image_with_channels(X.shape) else len(X)

    def _one_size(self, X):
        """The ``(height, width)`` of every image of ``X``, refusing several
        (file headers only); None for rows (``backbone=None``)."""
        check_is_fitted(self)
        if self.features_ is None:
            return None
        sizes = set(_image_source(X, self.input_shape).sizes())
        if len(sizes) > 1:
            raise ValueError(
                f"anomaly_map needs images of one size; X holds sizes {sorted(sizes)} "
                "(height, width). Pass the images of each size separately."
            )
        return sizes.pop()

    def _maps(self, patch_scores, size):
        """Patch scores ``(n_images, n_cells)`` of images of ``size`` as maps at
        that resolution.

        Resized bilinearly and smoothed with a Gaussian of ``sigma`` pixels
        (scaled from ``image_size`` to the input); with ``backbone=None`` the
        grid of patch scores itself, in float32.
        """
        scores = torch.from_numpy(patch_scores.reshape(-1, *self.grid_shape_))
        if self.features_ is None:
            return scores.float().numpy()
        features = self.features_
        return grid_maps(
            scores,
            size,
            features.image_size_,
            self.sigma,
            features.backbone,
            features.weights,
        )
