"""PatchCoreDetector: a memory bank of training patches, scored by nearest neighbour."""

import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from .._features._backbones import _LITE0_NAME
from .._scores import contamination_offset, iqr_fence, majority_fence
from .._torch_utils import resolve_device
from .._utils import draw_seed, restored_on_failure
from ._bank import (
    exact_maxima,
    greedy_coreset,
    kmeans_cells,
    nearest_distances,
    probed_distances,
    random_projection,
    support_distances,
)
from ._grid import GRID_CONSTRAINTS, PatchGridMixin

# Bank patches compared with at most this many training images when cleaning.
_MAX_REFERENCES = 32
# The inverted-file search cuts the bank into cells of about this many patches
# and probes this fraction of the cells for every query patch, and at least
# _MIN_PROBED of them. Chosen with benchmarks/bench_patch.py (brick crops,
# 224 px, 10% coreset of 200 images, 122 cells, 8 probed): 98.9% of the patch
# distances exact, the others 0.08% too large on average, at a third of the
# brute-force time. Fewer probed cells missed more: with 2 of 28 cells, 12.5% of
# a generated wood surface's patch distances were too large, by 5% on average.
# A bank of fewer than 4 * _MIN_PROBED cells is searched by brute force, which
# costs little more than probing a quarter of it, and is exact.
_CELL_SIZE = 128
_PROBED_FRACTION = 1 / 16
_MIN_PROBED = 8
_MIN_CELLS = 4 * _MIN_PROBED


def _searched_by_cells(n_bank):
    """Whether a bank of ``n_bank`` patches is cut into search cells."""
    return n_bank // _CELL_SIZE >= max(2, _MIN_CELLS)


def _fence_keep(scores, k, fence=iqr_fence):
    """Mask of the finite ``scores`` at or below ``fence(scores, k)``: Tukey's
    fence ``Q3 + k * IQR``, or :func:`majority_fence`, of the finite ones."""
    finite = np.isfinite(scores)
    if not finite.any():
        return np.ones_like(finite)
    return finite & (scores <= fence(scores[finite], k))


class PatchCoreDetector(PatchGridMixin, OutlierMixin, BaseEstimator):
    """Local-defect detector: nearest-neighbour distances to a bank of patches.

    Every training image is cut into a grid of patch vectors
    (:class:`PatchFeatures`); a greedy k-center coreset of all training patches
    forms the memory bank. A test patch's anomaly score is its distance to the
    nearest bank patch; an image's score is its largest patch score, and
    :meth:`anomaly_map` shows the patch scores at the image's resolution. This
    is PatchCore [1]_. With ``bank_cleaning="patches"`` the bank is first
    cleaned of patches that no other training image resembles, which makes the
    detector robust to defective images in its training set.

    Parameters
    ----------
    backbone : {"efficientnet_lite0", "resnet18", "wide_resnet50_2", "alexnet"}, \
            torch.nn.Module or None, default="efficientnet_lite0"
        The CNN of :class:`PatchFeatures`. None skips the CNN: each row of ``X``
        is then one image's grid of patch vectors (see ``grid_shape``).
    weights : "DEFAULT", None or path-like, default="DEFAULT"
        Weights of the backbone, see :class:`PatchFeatures`.
    image_size : int or (int, int), default=224
        Side every image is resized to; the grid has about ``image_size / 8``
        cells a side.
    input_shape : tuple of int, default=None
        Shape of one image when ``X`` holds flattened images.
    grid_shape : (int, int) or None, default=None
        With ``backbone=None``: the ``(height, width)`` of the patch grid in each
        row of ``X``, as :class:`PatchFeatures` lays it out (row-major, channels
        last). None treats each row as a single patch. Ignored with a backbone.
    coreset_fraction : float in (0, 1], default=0.1
        Fraction of the training patches kept in the memory bank.
    projection_dim : int or None, default=128
        Patch vectors longer than this are randomly projected to this many
        dimensions for the coreset selection only (the bank keeps the full
        vectors). None selects on the full vectors.
    bank_cleaning : {"patches", "images"} or None, default=None
        How to clean a contaminated training set. ``"patches"``: every bank
        patch is compared with the patches of up to 32 other training images;
        its distance to the ``support``-quantile closest of these images is its
        support distance, and bank patches above the fence ``Q3 + k * IQR`` of
        the support distances, grown from their lower half as the ``"auto"``
        threshold is (see Notes), are dropped: the coreset takes outlying
        patches first, so defect patches make up a larger share of the bank
        than of the training images. ``"images"``: training images whose
        leave-one-image-out score lies above the fence are dropped and the bank
        is selected again from the rest. None keeps every patch (PatchCore).
        See Notes.
    support : float in (0, 1), default=0.25
        With ``bank_cleaning="patches"``: the fraction of the other training
        images in which a normal patch is expected to find a close match. A
        defect shared by fewer images is cleaned; one shared by more is taken
        for normal.
    k : float, default=1.5
        IQR multiplier of the fences (the cleaning and ``contamination="auto"``).
    algorithm : {"ivf", "brute"}, default="ivf"
        Nearest-neighbour search, at prediction and for the training images'
        leave-one-image-out scores of :meth:`fit`. ``"brute"`` compares every
        patch with every bank patch. ``"ivf"`` does too on a bank of fewer than
        4,096 patches; a larger bank it cuts into k-means cells of about 128
        patches, and compares a patch with the patches of the sixteenth of the
        cells nearest to it, and at least 8 cells. Each image's largest patch
        distance is then made exact, so :meth:`score_samples`,
        :meth:`decision_function`, :meth:`predict` and the fitted threshold and
        cleaning agree with ``"brute"``, and only the other values of
        :meth:`anomaly_map` may be larger than the exact ones: on banks of
        4,320 to 14,400 patches of generated wood and stone surfaces, 0.4% to
        8.2% of them, by 2% to 3% on average and at most 1.22 times, which
        moved pixel AUROC by at most 0.0004 and AUPRO by at most 0.002; on a
        bank of 15,680 patches of brick crops, 1.1%, by 0.08% on average. Use
        ``"brute"`` for exact maps.
    sigma : float, default=4.0
        Standard deviation, in pixels of an image of ``image_size``, of the
        Gaussian that smooths the maps; it scales with the input resolution.
    batch_size : int, default=32
        Images embedded at once.
    contamination : "auto" or float in (0, 0.5], default="auto"
        "auto": an image is anomalous when its score exceeds the fence
        ``Q3 + k * IQR`` of the training images' leave-one-image-out scores
        (their scores by a bank without their own patches, as a new image is
        scored by a bank without its patches), grown from their lower half so that the
        defective training images do not widen it: see Notes. A float: the
        expected fraction of anomalies in the training set; the threshold is
        that percentile of the training images' leave-one-image-out scores
        (``train_scores_``), as :class:`~sklearn.neighbors.LocalOutlierFactor`
        sets its threshold on scores of training samples that leave each one
        out. (The training images themselves, whose patches the bank holds,
        score lower: :meth:`predict` flags fewer of them.) With a coreset,
        these scores run higher than a new normal image's: the coreset keeps
        the patches far from the others, and leaving an image's out uncovers
        exactly its rarest parts. On Gaussian patches (150 training images,
        a 2 x 2 grid), ``contamination=0.1`` flagged 4.6% of new normal
        images with ``coreset_fraction=0.1`` and 9.95% with 1.0.
    memory : None, str or joblib.Memory, default=None
        Caches the patch features (see :class:`PatchFeatures`), so that a grid
        search runs the CNN once per image set.
    device : {"auto", "cpu", "cuda"}, str or torch.device, default="auto"
        Where the CNN and the nearest-neighbour search run.
    verbose : int, default=0
        Progress of the CNN, and a line before and after each longer step
        of :meth:`fit` (the coreset, the bank cleaning, the scores without
        each image, the search cells).
    random_state : int, RandomState instance or None, default=None
        Seeds the coreset's shuffle and projection (and the weights if random).

    Attributes
    ----------
    features_ : PatchFeatures or None
        The fitted feature step (None with ``backbone=None``).
    grid_shape_ : tuple of int
        ``(height, width)`` of each image's patch grid.
    memory_bank_ : ndarray of shape (n_bank, n_channels), dtype float32
        The bank's patch vectors, sorted by cell (with ``backbone=None``,
        as ``(patch - input_offset_) / input_scale_``).
    bank_image_ : ndarray of shape (n_bank,), dtype int
        Training image each bank patch comes from.
    cell_centers_ : ndarray of shape (n_cells, n_channels), dtype float32
        Centres of the k-means cells of the bank (one cell with
        ``algorithm="brute"`` or a bank under 4,096 patches).
    cell_offsets_ : ndarray of shape (n_cells + 1,), dtype int
        Cell ``c`` is ``memory_bank_[cell_offsets_[c]:cell_offsets_[c + 1]]``.
    n_patches_selected_ : int
        Size of the coreset before cleaning.
    train_scores_ : ndarray of shape (n_samples,), dtype float64
        Leave-one-image-out anomaly score of every training image: its largest
        patch distance to the bank without its own patches (inf when the bank
        holds only its patches).
    inlier_mask_ : ndarray of shape (n_samples,), dtype bool
        Training images that kept patches in the bank's selection: all of them
        unless ``bank_cleaning="images"``.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    device_ : torch.device
        Where the search runs.
    input_offset_ : ndarray of shape (n_channels,) or float
        Subtracted from every patch vector before it is scored: with
        ``backbone=None``, zeros unless a channel lies so far from zero for
        its spread that float32 would lose its variation (then every
        channel's median); 0.0 with a backbone.
    input_scale_ : float
        The centred patch vectors are divided by it: 1.0 unless, with
        ``backbone=None``, their largest magnitude is above 1e30 or below
        1e-30, which float32 would turn into infinities or zeros (then a
        power of two that brings it near 1). The scores, ``offset_`` and the
        maps are distances in these units.
    n_features_in_ : int
        Number of features seen during fit (only with ``backbone=None``).

    See Also
    --------
    PatchFeatures : The patch embedding alone.
    MetaRefineDetector : ``level="patch"`` gives this detector with its bank
        cleaned.

    Notes
    -----
    :meth:`score_samples` is minus the image's anomaly score, higher for more
    normal images. For AUROC with scikit-learn's ``"roc_auc"`` scorer label
    normal images 1 and anomalous ones -1.

    A memory bank matches every training patch to itself, so the scores that
    judge training images here leave the image's own bank patches out. The
    coreset is selected by farthest-first traversal within random blocks of
    16,384 patches (exact greedy k-center below that size), so that selection
    time grows linearly with the training set.

    The ``"auto"`` threshold: Tukey's fence of all the training images'
    scores lies among the defective ones once they are a quarter of the set
    or more, and then flags none of them. The fence here starts from the
    lower half of the scores (normal when at least half the training images
    are) and is recomputed on the scores inside it until it settles. On a
    clean training set it usually settles a little below the fence of all
    the scores, where they thin out, and flags a few more normal images: on
    200 draws each of exponential, Gaussian and Gumbel scores, 2.7 more in
    100 on average, 1.2 more in 12.

    Why clean patches rather than images: a defective training image is
    mostly normal, and its few defect patches are what harms the bank (they
    match the same defects at test time). The support distance asks whether a
    patch looks like something a quarter of the other images also show, so
    defects shared by a few images are cleaned too. On crops of scikit-image's
    brick texture with planted dark discs, scratches and stains (100 training
    images at 224 px, 2 repeats, ``benchmarks/bench_patch.py --quality``) the
    test AUROC at 0/10/30/50% defective training images was
    1.000/1.000/0.999/0.995 without cleaning, 1.000/1.000/0.999/0.997
    dropping images and 1.000/1.000/1.000/1.000 cleaning patches (0.998 at
    50% with Tukey's fence of all the support distances). (With
    border patches averaged over their inside cells only, see
    :class:`PatchFeatures`, it was 0.997/0.938/0.841/0.810,
    0.996/0.939/0.855/0.816 and 0.997/0.983/0.956/0.893: noisy border
    patches set the normal images' scores, and a defect that half matches
    the bank then falls below them.) The generated surfaces' benchmark,
    ``metarefine benchmark --dataset surfaces``, compares the cleanings on
    harder textures.

    References
    ----------
    .. [1] K. Roth, L. Pemula, J. Zepeda, B. Schölkopf, T. Brox and P. Gehler,
       "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import PatchCoreDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 4))
    >>> det = PatchCoreDetector(backbone=None, coreset_fraction=0.5, random_state=0)
    >>> det.fit(X).predict([[0.0, 0.0, 0.0, 0.0], [6.0, 6.0, 6.0, 6.0]])
    array([ 1, -1])
    """

    # How the threshold's training scores are held out, for messages.
    _scores_training_images = (
        "scores each training image against the patches of the others"
    )

    _parameter_constraints: dict = {
        **GRID_CONSTRAINTS,
        "coreset_fraction": [Interval(Real, 0, 1, closed="right")],
        "projection_dim": [Interval(Integral, 1, None, closed="left"), None],
        "bank_cleaning": [StrOptions({"patches", "images"}), None],
        "support": [Interval(Real, 0, 1, closed="neither")],
        "k": [Interval(Real, 0, None, closed="left")],
        "algorithm": [StrOptions({"ivf", "brute"})],
        "sigma": [Interval(Real, 0, None, closed="left")],
        "contamination": [
            StrOptions({"auto"}),
            Interval(Real, 0, 0.5, closed="right"),
        ],
        "device": [str, torch.device],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        backbone=_LITE0_NAME,
        *,
        weights="DEFAULT",
        image_size=224,
        input_shape=None,
        grid_shape=None,
        coreset_fraction=0.1,
        projection_dim=128,
        bank_cleaning=None,
        support=0.25,
        k=1.5,
        algorithm="ivf",
        sigma=4.0,
        batch_size=32,
        contamination="auto",
        memory=None,
        device="auto",
        verbose=0,
        random_state=None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.input_shape = input_shape
        self.grid_shape = grid_shape
        self.coreset_fraction = coreset_fraction
        self.projection_dim = projection_dim
        self.bank_cleaning = bank_cleaning
        self.support = support
        self.k = k
        self.algorithm = algorithm
        self.sigma = sigma
        self.batch_size = batch_size
        self.contamination = contamination
        self.memory = memory
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    @restored_on_failure
    def fit(self, X, y=None):
        """Embed the training images and build the memory bank.

        Parameters
        ----------
        X : images (array-like, list of files or PIL images), or array-like of \
shape (n_samples, n_features) when ``backbone=None``
            Training images, possibly contaminated with anomalies.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted detector.
        """
        seed = draw_seed(check_random_state(self.random_state))
        self.device_ = resolve_device(self.device)
        patches, copy_of = self._fit_patches(X, seed)
        n_images, n_cells, n_channels = patches.shape
        generator = torch.Generator().manual_seed(seed)
        flat = torch.from_numpy(patches.reshape(-1, n_channels)).to(self.device_)
        images = torch.arange(n_images, device=self.device_)
        images = images.repeat_interleave(n_cells)

        with self._stage(f"coreset of {len(flat)} patches"):
            bank = self._select(flat, generator)
        self.n_patches_selected_ = len(bank)
        self.inlier_mask_ = np.ones(n_images, dtype=bool)
        if self.bank_cleaning == "images":
            # Search cells of their own, so that the generator draws the
            # final bank's cells as without them.
            order, *cells = self._cells(flat[bank], torch.Generator().manual_seed(seed))
            in_cells = bank[order]
            loo = self._leave_one_image_out(
                flat, images, flat[in_cells], images[in_cells], cells
            )
            self.inlier_mask_ = _fence_keep(loo, self.k)
            kept = torch.from_numpy(self.inlier_mask_).to(self.device_)[images]
            with self._stage(f"coreset of the {int(kept.sum())} kept patches"):
                bank = torch.nonzero(kept)[:, 0][self._select(flat[kept], generator)]
        elif self.bank_cleaning == "patches":
            with self._stage(f"support of the {len(bank)} bank patches"):
                support = self._support(flat, images, bank, n_images, generator)
            keep = _fence_keep(support, self.k, fence=majority_fence)
            bank = bank[torch.from_numpy(keep).to(bank.device)]
        self._store_bank(flat[bank], images[bank], generator)
        scores = self._leave_one_image_out(
            flat,
            images,
            torch.from_numpy(self.memory_bank_).to(self.device_),
            torch.from_numpy(self.bank_image_).to(self.device_),
            self._stored_cells(),
        )
        # Of every training image: a copy has its first copy's, and the bank
        # names rows of X.
        self.train_scores_ = scores[copy_of]
        self.inlier_mask_ = self.inlier_mask_[copy_of]
        self.bank_image_ = np.unique(copy_of, return_index=True)[1][self.bank_image_]
        if self.contamination == "auto":
            self.offset_ = -majority_fence(scores, self.k)  # copies weigh as one
        else:
            # In-sample, the bank matches the training patches to themselves.
            held_out = -self.train_scores_
            self.offset_ = contamination_offset(held_out, self.contamination)
        return self

    def score_samples(self, X):
        """Minus the largest patch distance: higher for more normal images.

        Parameters
        ----------
        X : images, or array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
        """
        return self._image_scores(X)

    def anomaly_map(self, X):
        """Where each image looks anomalous: patch distances at its resolution.

        Parameters
        ----------
        X : images, or array-like of shape (n_samples, n_features_in_)
            Images of one size ``(height, width)``.

        Returns
        -------
        maps : ndarray of shape (n_samples, height, width), dtype float32
            Higher is more anomalous; the largest value of a map is close to the
            image's anomaly score, ``-score_samples``. The patch distances are
            resized bilinearly and smoothed with a Gaussian of ``sigma``
            pixels (scaled from ``image_size`` to the input). With
            ``backbone=None`` the map is the grid of patch distances itself.
        """
        return self._image_maps(X)

    def _select(self, patches, generator):
        """Indices of the coreset of ``patches``."""
        n_select = max(1, math.ceil(self.coreset_fraction * len(patches)))
        if n_select >= len(patches):
            return torch.arange(len(patches), device=patches.device)
        points = patches
        if self.projection_dim is not None and patches.shape[1] > self.projection_dim:
            matrix = random_projection(
                patches.shape[1], self.projection_dim, generator, patches.device
            )
            points = patches @ matrix
        return greedy_coreset(points, n_select, generator)

    def _support(self, flat, images, bank, n_images, generator):
        """Each bank patch's distance to its ``support``-quantile closest other
        training image (among at most ``_MAX_REFERENCES`` of them)."""
        n_references = min(n_images, _MAX_REFERENCES)
        references = torch.randperm(n_images, generator=generator)[:n_references]
        references = references.sort().values.to(flat.device)
        rank = max(1, math.ceil(self.support * (n_references - 1)))
        grids = flat.reshape(n_images, -1, flat.shape[1])
        distances = support_distances(
            flat[bank], images[bank], grids[references], references, rank
        )
        return distances.cpu().numpy()

    def _cells(self, bank, generator):
        """``(order, offsets, centers)`` of the bank's cells for the
        inverted-file search, or ``(order, None)`` for a brute-force search."""
        n_cells = len(bank) // _CELL_SIZE
        if self.algorithm == "ivf" and _searched_by_cells(len(bank)):
            with self._stage(f"{n_cells} search cells of the {len(bank)} bank patches"):
                return kmeans_cells(bank, n_cells, generator)
        return torch.arange(len(bank), device=bank.device), None

    def _store_bank(self, bank, bank_images, generator):
        """Keep the bank, sorted into the cells of the inverted-file search."""
        order, *cells = self._cells(bank, generator)
        bank, bank_images = bank[order], bank_images[order]
        if cells[0] is not None:
            self.cell_offsets_ = cells[0].cpu().numpy()
            self.cell_centers_ = cells[1].cpu().numpy()
        else:
            self.cell_offsets_ = np.array([0, len(bank)])
            self.cell_centers_ = bank.mean(0, keepdim=True).cpu().numpy()
        self.memory_bank_ = bank.cpu().numpy()
        self.bank_image_ = bank_images.cpu().numpy()

    def _stored_cells(self):
        """``(offsets, centers)`` of the stored bank's cells, or ``(None,)``
        for a brute-force search: one cell, or a bank that :meth:`_cells`
        no longer cuts (a model file saved with cells of a smaller bank)."""
        if len(self.cell_centers_) == 1 or not _searched_by_cells(
            len(self.memory_bank_)
        ):
            return (None,)
        offsets = torch.from_numpy(self.cell_offsets_).to(self.device_)
        return offsets, torch.from_numpy(self.cell_centers_).to(self.device_)

    def _leave_one_image_out(self, flat, images, bank, bank_images, cells):
        """Each training image's score by the bank without its own patches.

        ``bank`` is sorted by the ``cells`` (:meth:`_cells` without the
        order); the largest patch distance of each image is exact either way.
        """
        n_images = int(images[-1]) + 1
        with self._stage(f"{n_images} images scored without their own patches"):
            distances = self._search(
                flat.view(n_images, -1, flat.shape[1]), bank, cells, images, bank_images
            )
        return distances.max(1)

    def _patch_scores_of(self, patches):
        """Per-patch distances ``(n_images, n_cells)`` to the memory bank.

        Every image's largest patch distance is exact. When the bank has cells
        (``algorithm="ivf"``), the other patches are searched in their nearest
        cells only: a distance to a real bank patch, never below the exact one.
        """
        bank = torch.from_numpy(self.memory_bank_).to(self.device_)
        with torch.inference_mode():
            patches = torch.from_numpy(patches).to(self.device_)
            return self._search(patches, bank, self._stored_cells())

    def _search(self, patches, bank, cells, groups=None, bank_groups=None):
        """Distances ``(n_images, n_cells)`` of the ``(n_images, n_cells,
        n_channels)`` patches to their nearest bank patch (of another group
        where ``groups`` are given), exact or by the ``cells``."""
        n_images, n_cells, n_channels = patches.shape
        queries = patches.reshape(-1, n_channels)
        if cells[0] is None:
            distances = nearest_distances(queries, bank, groups, bank_groups)[0]
            return distances.cpu().numpy().reshape(n_images, n_cells)
        offsets, centers = cells
        n_probe = min(
            len(centers), max(_MIN_PROBED, math.ceil(_PROBED_FRACTION * len(centers)))
        )
        distances = probed_distances(
            queries, bank, offsets, centers, n_probe, groups, bank_groups
        )[0]
        distances = exact_maxima(
            distances.view(n_images, n_cells), queries, bank, groups, bank_groups
        )
        return distances.cpu().numpy()
