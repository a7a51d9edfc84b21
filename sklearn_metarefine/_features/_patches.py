"""PatchFeatures: one grid of local feature vectors per image."""


import numpy as np
from sklearn.base import _fit_context
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

from .._utils import restored_on_failure, warn
from ._backbones import _LITE0_NAME, _build_patch_backbone
from ._embedding import _embed_patches, _PatchPlan
from ._estimator import PretrainedFeatures, _BackboneTransformer, _size_pair
from ._images import _image_source


class PatchFeatures(_BackboneTransformer):
    """Embed images as grids of local patch vectors from a frozen pretrained CNN.

    Two mid-level maps of the CNN, at strides 8 and 16, are each averaged over
    3x3 neighbourhoods (zero padding counted at the borders, as in PatchCore's
    code), the deeper one is resized bilinearly to the finer grid,
    and the two are concatenated along the channels: every cell of the grid is
    one patch vector describing a neighbourhood of the image (the features of
    PatchCore [1]_). The output keeps one row per image, the flattened grid, so
    that it caches and pipelines like any other feature table.

    Parameters
    ----------
    backbone : {"efficientnet_lite0", "resnet18", "wide_resnet50_2", "alexnet"} \
            or torch.nn.Module, default="efficientnet_lite0"
        The CNN and the maps that make a patch:

        - ``"efficientnet_lite0"``: timm's ``blocks[2]`` (stride 8, 40 channels)
          and ``blocks[3]`` (stride 16, 80 channels): 120 per patch.
        - ``"resnet18"``: ``layer2`` and ``layer3``, 128 + 256 channels.
        - ``"wide_resnet50_2"``: ``layer2`` and ``layer3``, 512 + 1024 channels
          (PatchCore's choice).
        - ``"alexnet"``: the ReLUs after ``conv2`` and ``conv5``, 192 + 256.
        - a ``torch.nn.Module`` (a copy of it): it receives ImageNet-normalised
          ``(N, 3, h, w)`` batches and returns a map ``(N, C, h', w')`` or a list
          of maps; the finest map sets the grid.

    weights : "DEFAULT", None or path-like, default="DEFAULT"
        As for :class:`PretrainedFeatures`: ``"DEFAULT"`` loads ImageNet weights
        (shipped with the package for ``"efficientnet_lite0"``), ``None`` keeps a
        random initialisation seeded by ``random_state``, a path loads a state
        dict.

    image_size : int or (int, int), default=224
        Side (or ``(height, width)``) every image is resized to. The grid is about
        ``image_size / 8`` cells a side for the named backbones.

    input_shape : tuple of int, default=None
        ``(height, width)`` or ``(height, width, channels)`` of the images when
        ``X`` is a 2-D array of flattened images; ignored otherwise.

    batch_size : int, default=32
        Number of images read and embedded at once.

    memory : None, str, path-like or object with the joblib.Memory interface, \
            default=None
        Where to cache the output of ``transform`` (see
        :class:`PretrainedFeatures`).

    device : str or torch.device, default="auto"
        Where the CNN runs: ``"auto"`` picks CUDA when available, else the CPU.

    verbose : int, default=0
        Show a progress bar over batches when positive.

    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation (``weights=None``).

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The frozen layers in eval mode, on ``device_``; they return the maps.

    device_ : torch.device
        Device the CNN runs on.

    image_size_ : tuple of int
        ``(height, width)`` every image is resized to.

    grid_shape_ : tuple of int
        ``(height, width)`` of the patch grid of every image.

    n_channels_ : int
        Length of one patch vector.

    n_features_out_ : int
        Output width: ``grid_shape_[0] * grid_shape_[1] * n_channels_``.

    See Also
    --------
    PretrainedFeatures : One globally pooled vector per image.
    PatchCoreDetector : The nearest-neighbour patch detector on these features.

    Notes
    -----
    Row ``i`` of the output is image ``i``'s ``(height, width, channels)`` grid in
    row-major order: ``X.reshape(n, *grid_shape_, n_channels_)`` recovers the
    grids and ``X.reshape(-1, n_channels_)`` lists every patch. ``transform``
    returns float32. Inputs are those of :class:`PretrainedFeatures`; files are
    read one batch at a time.

    Counting the zero padding pulls the border cells towards zero. Averaging
    only the cells a border has leaves border patches noisier than the others,
    and the noisiest patch sets a normal image's score in a nearest-neighbour
    detector: on the generated surfaces it cost :class:`PatchCoreDetector`
    0.07 to 0.23 image AUROC on stone and wood, and under contamination on
    brick crops up to 0.19 (see :class:`PatchCoreDetector`).

    References
    ----------
    .. [1] K. Roth, L. Pemula, J. Zepeda, B. Schölkopf, T. Brox and P. Gehler,
       "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import PatchFeatures
    >>> images = np.random.RandomState(0).randint(0, 256, (2, 32, 32, 3), np.uint8)
    >>> features = PatchFeatures(image_size=64).fit(images)
    >>> X = features.transform(images)
    >>> X.shape, features.grid_shape_, features.n_channels_
    ((2, 7680), (8, 8), 120)
    """

    # The shared parameters accept what PretrainedFeatures accepts.
    _parameter_constraints: dict = {
        name: PretrainedFeatures._parameter_constraints[name]
        for name in (
            "backbone",
            "weights",
            "image_size",
            "input_shape",
            "batch_size",
            "memory",
            "device",
            "verbose",
            "random_state",
        )
    }

    def __init__(
        self,
        backbone=_LITE0_NAME,
        *,
        weights="DEFAULT",
        image_size=224,
        input_shape=None,
        batch_size=32,
        memory=None,
        device="auto",
        verbose=0,
        random_state=None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.input_shape = input_shape
        self.batch_size = batch_size
        self.memory = memory
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    @restored_on_failure
    def fit(self, X, y=None):
        """Check ``X`` and load the frozen backbone; no image is embedded.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C), or list
            Images, or a list of image file paths, PIL images or arrays.

        y : None
            Ignored.

        Returns
        -------
        self : object
            Fitted transformer.
        """
        _image_source(X, self.input_shape)
        self._record_columns(X)
        size = tuple(_size_pair(self.image_size))
        rng = check_random_state(self.random_state)
        self._load_backbone(_build_patch_backbone, rng)
        row, grid = self._probe(_embed_patches, size, f"image_size={self.image_size!r}")
        if grid == (1, 1):
            warn(
                f"image_size={self.image_size!r} gives a patch grid of one cell: "
                "each image is a single patch, its anomaly map a single value, "
                "and no defect is located. Use a larger image_size (the named "
                "backbones take about 8 px a cell).",
                UserWarning,
            )
        self.image_size_ = size
        self.grid_shape_ = grid
        self.n_channels_ = int(row.shape[1]) // (grid[0] * grid[1])
        self.n_features_out_ = int(row.shape[1])
        return self

    def transform(self, X):
        """Embed images as patch grids.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C), or list
            Images, or a list of image file paths, PIL images or arrays.

        Returns
        -------
        X_new : ndarray of shape (n, n_features_out_), dtype float32
            One row per image: its grid of patch vectors, row-major.
        """
        check_is_fitted(self)
        self._check_columns(X)
        return self._embed(X, _PatchPlan(self.image_size_))

    def get_feature_names_out(self, input_features=None):
        """Names of the output features: ``patchfeatures_row{r}_col{c}_ch{k}``.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Checked against ``feature_names_in_`` and ``n_features_in_`` when
            the transformer was fitted on a 2-D table or array of flattened
            images; the output names do not depend on it.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        _check_feature_names_in(self, input_features, generate_names=False)
        height, width = self.grid_shape_
        return np.array(
            [
                f"patchfeatures_row{r}_col{c}_ch{k}"
                for r in range(height)
                for c in range(width)
                for k in range(self.n_channels_)
            ],
            dtype=object,
        )
