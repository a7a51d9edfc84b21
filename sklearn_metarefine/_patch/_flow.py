"""PatchFlowDetector: a normalizing flow on patch vectors and their position."""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._features._backbones import _LITE0_NAME
from .._flows import FlowDetector
from .._rounds import held_out
from .._sizes import held_out_fit_size
from .._scores import (
    clean_tail_fraction,
    contamination_offset,
    majority_fence,
    with_clean_tail,
)
from .._utils import check_nested_default, draw_seed, restored_on_failure
from ._detector import _fence_keep
from ._grid import GRID_CONSTRAINTS, PatchGridMixin


def positional_code(grid_shape, n_frequencies):
    """Sine and cosine features of each grid cell's normalised row and column.

    Cell ``(i, j)`` of an ``(h, w)`` grid sits at ``u = (i + 0.5) / h`` and
    ``v = (j + 0.5) / w``; its code holds ``sin(pi f u)``, ``cos(pi f u)``,
    ``sin(pi f v)`` and ``cos(pi f v)`` for ``f = 1, ..., n_frequencies``.
    Columns that are constant over the grid (all of them on a grid of one
    cell) carry no position and are left out, and so are columns that
    repeat the ones before them up to a linear combination (frequencies
    beyond a small grid's resolution alias to lower ones): a flow's
    likelihood has no bound along a direction its inputs do not span.

    Returns
    -------
    code : ndarray of shape (h * w, n_code), dtype float64
        Row-major, like the cells of :class:`PatchFeatures`.
    """
    height, width = grid_shape
    rows, columns = np.meshgrid(
        (np.arange(height) + 0.5) / height,
        (np.arange(width) + 0.5) / width,
        indexing="ij",
    )
    code = np.empty((height * width, 0))
    for frequency in range(1, n_frequencies + 1):
        for coordinate in (rows.ravel(), columns.ravel()):
            angle = np.pi * frequency * coordinate
            code = np.column_stack([code, np.sin(angle), np.cos(angle)])
    # Each column in turn, kept where it adds a direction to those kept
    # (after centring: a constant column adds none).
    centred = code - code.mean(axis=0)
    tolerance = 1e-9 * np.sqrt(len(code))
    kept = []
    for column in range(code.shape[1]):
        rank = np.linalg.matrix_rank(centred[:, [*kept, column]], tol=tolerance)
        if rank > len(kept):
            kept.append(column)
    return code[:, kept]


def _default_flow():
    """A flow small enough to fit hundreds of thousands of patches on a CPU."""
    return FlowDetector(
        pca_components=16, n_blocks=4, hidden_size=64, batch_size=256, max_epochs=8
    )


class PatchFlowDetector(PatchGridMixin, OutlierMixin, BaseEstimator):
    """Local-defect detector: the likelihood of a normalizing flow per patch.

    Every image is cut into a grid of patch vectors (:class:`PatchFeatures`);
    each patch vector, extended with a sine-cosine code of its cell's
    position, is one training row of a normalizing flow
    (:class:`FlowDetector` or :class:`MAMLFlowDetector`). A patch's anomaly
    score is its negative log-likelihood under the flow; an image's score is
    its largest patch score, and :meth:`anomaly_map` shows the patch scores at
    the image's resolution. This is the flow of [1]_ and [2]_ applied to
    patches instead of pooled image vectors. With ``image_cleaning=True``,
    training images that flows fitted without them find anomalous are dropped
    before the final fit.

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
    flow : FlowDetector or MAMLFlowDetector, default=None
        The unfitted flow, cloned for every fit; its ``random_state`` and
        ``device`` are replaced by this detector's. None means
        ``FlowDetector(pca_components=16, n_blocks=4, hidden_size=64,
        batch_size=256, max_epochs=8)``.
    positional_code : int, default=2
        Number of frequencies of the position code appended to every patch
        vector (4 columns per frequency, see Notes). 0 leaves the position
        out.
    image_cleaning : bool, "images" or None, default=False
        True (or ``"images"``): training images whose held-out score lies
        above the fence ``Q3 + k * IQR`` of the held-out scores are dropped,
        and the flow is fitted on the rest. False or None keeps every image.
    cv : int, default=5
        Number of folds over the training images for the held-out scores
        (at most the number of images).
    k : float, default=1.5
        IQR multiplier of the cleaning's fence.
    sigma : float, default=4.0
        Standard deviation, in pixels of an image of ``image_size``, of the
        Gaussian that smooths the maps; it scales with the input resolution.
    batch_size : int, default=32
        Images embedded at once.
    contamination : "auto" or float in (0, 0.5], default="auto"
        "auto": :meth:`predict` flags a fraction ``false_alarm_rate`` of normal
        images the flow did not see: ``offset_`` is minus the
        ``1 - false_alarm_rate`` quantile of the held-out scores of the
        training images judged normal (see Notes). A float: the expected
        fraction of anomalies in the training set; the threshold is that
        percentile of the training images' scores by the final flow.
    false_alarm_rate : float in (0, 0.5], default=0.05
        With ``contamination="auto"``, the share of unseen normal images that
        :meth:`predict` flags. Ignored otherwise.
    memory : None, str or joblib.Memory, default=None
        Caches the patch features (see :class:`PatchFeatures`).
    device : {"auto", "cpu", "cuda"}, str or torch.device, default="auto"
        Where the CNN and the flow run.
    verbose : int, default=0
        Progress of the CNN, and a line before and after each fit of the
        flow in :meth:`fit` (one without each fold, and the final one).
    random_state : int, RandomState instance or None, default=None
        Seeds the folds and the flows (and the weights if random).

    Attributes
    ----------
    features_ : PatchFeatures or None
        The fitted feature step (None with ``backbone=None``).
    grid_shape_ : tuple of int
        ``(height, width)`` of each image's patch grid.
    code_ : ndarray of shape (n_cells, n_code)
        The position code of every cell, appended to its patch vectors.
    flow_ : FlowDetector or MAMLFlowDetector
        The flow fitted on the patches of the kept training images.
    train_scores_ : ndarray of shape (n_samples,) or None
        Held-out anomaly score of every training image (its largest patch
        negative log-likelihood under the flow fitted without its fold);
        None when neither the cleaning nor ``contamination="auto"`` needs
        them.
    inlier_mask_ : ndarray of shape (n_samples,), dtype bool
        Training images the final flow was fitted on: all of them unless
        ``image_cleaning`` is on.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    input_offset_ : ndarray of shape (n_channels,) or float
        Subtracted from every patch vector before it is scored: with
        ``backbone=None``, zeros unless a channel lies so far from zero for
        its spread that float32 would lose its variation (then every
        channel's median); 0.0 with a backbone.
    input_scale_ : float
        The centred patch vectors are divided by it: 1.0 unless, with
        ``backbone=None``, their largest magnitude is above 1e30 or below
        1e-30, which float32 would turn into infinities or zeros (then a
        power of two that brings it near 1). The flow is fitted, and its
        likelihoods taken, in these units.
    n_features_in_ : int
        Number of features seen during fit (only with ``backbone=None``).

    See Also
    --------
    PatchCoreDetector : The memory-bank patch detector, same inputs.
    FlowDetector : The flow on one vector per image.

    Notes
    -----
    :meth:`score_samples` is minus the image's largest patch negative
    log-likelihood, higher for more normal images. For AUROC with
    scikit-learn's ``"roc_auc"`` scorer label normal images 1 and anomalous
    ones -1.

    The flow models the patch vector and its position code jointly, so a
    patch that is common elsewhere in the image but not at its own cell gets a
    lower likelihood. The code of cell ``(i, j)`` of an ``(h, w)`` grid holds
    the sines and cosines of ``pi f (i + 0.5) / h`` and ``pi f (j + 0.5) / w``
    for ``f = 1, ..., positional_code``, without the columns constant over the
    grid (a grid of one cell gets no code) or repeating the ones before them
    (on a grid too small for the highest frequencies: a side of 4 cells spans
    3 independent directions, so it takes the first 3 of its 4 columns).

    A flow scores the images it was trained on higher than new normal images,
    so the cleaning and the ``"auto"`` threshold use held-out scores: the
    training images are split into ``cv`` folds and each fold is scored by a
    flow fitted on the other folds (``cv`` extra fits). The threshold uses
    these scores, computed before the cleaning: those inside the fence grown
    from their lower half (see :class:`PatchCoreDetector`), so that
    defective training images do not loosen it, and the lowest of those
    outside, as many as a clean set has beyond such a fence
    (:func:`clean_tail_fraction`).

    References
    ----------
    .. [1] M. Rudolph, B. Wandt, B. Rosenhahn, "Same Same But DifferNet:
       Semi-Supervised Defect Detection with Normalizing Flows", WACV 2021.
    .. [2] M. Aqeel, S. Sharifi, M. Cristani, F. Setti, "Meta Learning-Driven
       Iterative Refinement for Robust Anomaly Detection in Industrial
       Inspection", ECCV 2024 Workshops.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import FlowDetector, PatchFlowDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 2 * 2 * 3))
    >>> flow = FlowDetector(n_blocks=2, hidden_size=16, max_epochs=5)
    >>> det = PatchFlowDetector(backbone=None, grid_shape=(2, 2), flow=flow,
    ...                         device="cpu", random_state=0).fit(X)
    >>> det.anomaly_map(X[:2]).shape
    (2, 2, 2)
    >>> det.predict(np.r_[np.zeros(12), np.full(12, 8.0)].reshape(2, 12))
    array([ 1, -1])
    """

    # How the threshold's training scores are held out, for messages.
    _scores_training_images = (
        "scores each training image with flows fitted on the other images"
    )

    _parameter_constraints: dict = {
        **GRID_CONSTRAINTS,
        "flow": [FlowDetector, None],  # its scores are log-likelihoods
        "positional_code": [Interval(Integral, 0, None, closed="left")],
        "image_cleaning": ["boolean", StrOptions({"images"}), None],
        "cv": [Interval(Integral, 2, None, closed="left")],
        "k": [Interval(Real, 0, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="left")],
        "contamination": [
            StrOptions({"auto"}),
            Interval(Real, 0, 0.5, closed="right"),
        ],
        "false_alarm_rate": [Interval(Real, 0, 0.5, closed="right")],
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
        flow=None,
        positional_code=2,
        image_cleaning=False,
        cv=5,
        k=1.5,
        sigma=4.0,
        batch_size=32,
        contamination="auto",
        false_alarm_rate=0.05,
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
        self.flow = flow
        self.positional_code = positional_code
        self.image_cleaning = image_cleaning
        self.cv = cv
        self.k = k
        self.sigma = sigma
        self.batch_size = batch_size
        self.contamination = contamination
        self.false_alarm_rate = false_alarm_rate
        self.memory = memory
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    def set_params(self, **params):
        check_nested_default(self, params, "flow", _default_flow)
        return super().set_params(**params)

    @_fit_context(prefer_skip_nested_validation=True)
    @restored_on_failure
    def fit(self, X, y=None):
        """Embed the training images and fit the flow to their patches.

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
        rng = check_random_state(self.random_state)
        seed = draw_seed(rng)
        patches, copy_of = self._fit_patches(X, seed)
        self.code_ = positional_code(self.grid_shape_, self.positional_code)
        base = self._base_flow(seed)
        cleaning = self.image_cleaning in (True, "images")

        self.train_scores_ = None
        if cleaning or self.contamination == "auto":
            self.train_scores_ = self._held_out_scores(base, patches, draw_seed(rng))
        self.inlier_mask_ = np.ones(len(patches), dtype=bool)
        if cleaning:
            self.inlier_mask_ = _fence_keep(self.train_scores_, self.k)
        kept = patches[self.inlier_mask_]
        with self._stage(f"flow fitted on the {len(kept)} kept images"):
            self.flow_ = clone(base).fit(self._rows(kept))

        if self.contamination == "auto":
            scores = self.train_scores_
            inside = scores <= majority_fence(scores, self.k)
            tail = clean_tail_fraction(scores[inside], self.k)
            normal = with_clean_tail(scores[inside], scores[~inside], tail)
            self.offset_ = (
                -float(np.quantile(normal, 1.0 - self.false_alarm_rate))
                if normal.size
                else -np.inf
            )
        else:
            in_sample = self._patch_scores_of(patches).max(1)[copy_of]
            self.offset_ = contamination_offset(-in_sample, self.contamination)
        # Of every training image: a copy has its first copy's.
        self.inlier_mask_ = self.inlier_mask_[copy_of]
        if self.train_scores_ is not None:
            self.train_scores_ = self.train_scores_[copy_of]
        return self

    def score_samples(self, X):
        """Minus the largest patch negative log-likelihood: higher is more normal.

        Parameters
        ----------
        X : images, or array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
        """
        return self._image_scores(X)

    def anomaly_map(self, X):
        """Where each image looks anomalous: patch scores at its resolution.

        Parameters
        ----------
        X : images, or array-like of shape (n_samples, n_features_in_)
            Images of one size ``(height, width)``.

        Returns
        -------
        maps : ndarray of shape (n_samples, height, width), dtype float32
            Higher is more anomalous. The patch negative log-likelihoods are
            resized bilinearly and smoothed with a Gaussian of ``sigma``
            pixels (scaled from ``image_size`` to the input), so the largest
            value of a map is at most the image's anomaly score,
            ``-score_samples``. With ``backbone=None`` the map is the grid of
            patch scores itself.
        """
        check_is_fitted(self)
        return self._image_maps(X)

    def _base_flow(self, seed):
        """The unfitted flow every fit clones, seeded and on ``device``."""
        flow = _default_flow() if self.flow is None else clone(self.flow)
        params = flow.get_params(deep=False)
        if "random_state" in params:
            flow.set_params(random_state=seed)
        if "device" in params:
            flow.set_params(device=self.device)
        return flow

    def _rows(self, patches):
        """Flow rows ``(n_images * n_cells, n_channels + n_code)``, float64."""
        n_images, n_cells, _ = patches.shape
        code = np.broadcast_to(self.code_, (n_images, n_cells, self.code_.shape[1]))
        rows = np.concatenate([patches.astype(np.float64), code], axis=2)
        return rows.reshape(n_images * n_cells, -1)

    def _held_out_scores(self, base, patches, seed):
        """Each image's largest patch score by a flow fitted without its fold."""
        n_images, n_cells = patches.shape[:2]
        fewest = held_out_fit_size(n_images, self.cv)
        if fewest * n_cells < 2:
            raise ValueError(
                f"n_samples={n_images} images of {n_cells} patch: the held-out "
                f"scores (contamination='auto', image cleaning) fit a flow on "
                f"{fewest * n_cells} patch, and a flow needs 2. Train on at least "
                "3 images, use a grid of several cells, or set a float "
                "contamination without image cleaning."
            )

        n_folds = min(self.cv, n_images)

        def fit_and_score(fold, train, test):
            with self._stage(f"flow fitted without fold {fold} of {n_folds}"):
                flow = clone(base).fit(self._rows(patches[train]))
            nll = -flow.score_samples(self._rows(patches[test]))
            return nll.reshape(len(test), -1).max(1)

        return held_out(len(patches), self.cv, seed, fit_and_score)

    def _patch_scores_of(self, patches):
        """Negative log-likelihood of every patch, ``(n_images, n_cells)``.

        A patch beyond float32 (cast to infinity) is infinitely unlikely."""
        rows = self._rows(patches)
        finite = np.isfinite(rows).all(axis=1)
        nll = np.full(len(rows), np.inf)
        if finite.any():
            nll[finite] = -self.flow_.score_samples(rows[finite])
        return nll.reshape(len(patches), -1)
