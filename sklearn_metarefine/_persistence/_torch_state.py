"""Torch modules in fitted estimators: stored as state dicts, rebuilt from parameters.

A model file holds no code, so a module is rebuilt the way ``fit`` built it, from
the estimator's parameters, and its tensors are loaded into it. Each hook names
the fitted attributes it stores in place of the generic encoding.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .._features._backbones import _build_backbone, _build_patch_backbone
from .._torch_utils import resolve_device, torch_seeded
from ._archive import ModelFileError, module_refusal


@dataclass(frozen=True)
class TorchHook:
    """What an estimator class stores of its torch modules, and how it rebuilds them.

    ``dump(estimator, where)`` returns a dict of JSON values and numpy arrays,
    None for an unfitted estimator, and raises ``TypeError`` for what it cannot
    store; ``restore(estimator, state, device)`` sets ``attributes`` on an
    estimator built from the saved parameters, with its modules on ``device``.
    """

    attributes: frozenset
    dump: Callable
    restore: Callable


def device_of(estimator):
    """The device an estimator's modules go to: its ``device`` parameter, resolved."""
    return resolve_device(estimator.device)


def _arrays(module):
    return {name: t.detach().cpu().numpy() for name, t in module.state_dict().items()}


def _load_arrays(module, arrays, what):
    """Load a state dict of numpy arrays; names, shapes and dtypes must match."""
    expected = module.state_dict()
    if set(arrays) != set(expected):
        raise ModelFileError(
            f"the saved tensors of the {what} are not the ones it has: missing "
            f"{sorted(set(expected) - set(arrays))[:5]}, unexpected "
            f"{sorted(set(arrays) - set(expected))[:5]}"
        )
    state = {}
    for name, array in arrays.items():
        tensor = torch.from_numpy(np.asarray(array))
        if tensor.dtype != expected[name].dtype or tensor.shape != expected[name].shape:
            raise ModelFileError(
                f"tensor {name!r} of the {what} is {tensor.dtype} "
                f"{tuple(tensor.shape)}, expected {expected[name].dtype} "
                f"{tuple(expected[name].shape)}"
            )
        state[name] = tensor
    module.load_state_dict(state, strict=True)


def _dump_flow(detector, where):
    net = getattr(detector, "net_", None)
    if net is None:
        return None
    module_kwargs = {
        name[len("module__") :]: value
        for name, value in vars(net).items()
        if name.startswith("module__")
    }
    return {
        "module_kwargs": module_kwargs,
        "batch_size": net.batch_size,
        "module_state": _arrays(net.module_),
    }


def _restore_flow(detector, state, device):
    kwargs = state["module_kwargs"]
    net = detector._build_net(
        kwargs["dim"], state["batch_size"], device, kwargs["seed"]
    )
    net.set_params(
        batch_size=state["batch_size"],
        **{f"module__{name}": value for name, value in kwargs.items()},
    )
    # Initialising draws the weights it is about to overwrite; keep the
    # user's global torch generator out of it. Outside inference mode, which
    # would make the weights tensors that a warm fit cannot train.
    with torch_seeded(0, device), torch.inference_mode(False):
        net.initialize()
        _load_arrays(net.module_, state["module_state"], "flow")
    detector.net_ = net


def flow_hook():
    """FlowDetector and MAMLFlowDetector: the skorch net ``net_``.

    The net is rebuilt from the detector's parameters and the flow's constructor
    arguments, and the flow's parameters and buffers are loaded; the optimizer's
    state and the training history are not stored, so a warm refit after loading
    starts Adam afresh.
    """
    return TorchHook(frozenset({"net_"}), _dump_flow, _restore_flow)


def _refuse_module_backbone(estimator, where):
    if isinstance(estimator.backbone, torch.nn.Module):
        raise TypeError(module_refusal(where, estimator.backbone))


def _dump_features(features, where):
    _refuse_module_backbone(features, where)
    if not hasattr(features, "backbone_"):
        return None
    return {"backbone_state": _arrays(features.backbone_)}


def _restore_backbone(build):
    def restore(features, state, device):
        cpu = torch.device("cpu")
        with torch_seeded(0, cpu):
            backbone = build(features.backbone, None, progress=False)
        _load_arrays(
            backbone, state["backbone_state"], f"{features.backbone} backbone"
        )
        features.backbone_ = backbone.eval().requires_grad_(False).to(device)
        features.device_ = device

    return restore


def features_hook():
    """PretrainedFeatures: the frozen CNN ``backbone_`` and its ``device_``.

    The weights are stored, whatever ``weights`` named (the packaged or downloaded
    ImageNet weights, a local file, a seeded random initialisation): the model
    then loads on a machine without the network, the file, or the same
    torchvision release.
    """
    return TorchHook(
        frozenset({"backbone_", "device_"}),
        _dump_features,
        _restore_backbone(_build_backbone),
    )


def patch_features_hook():
    """PatchFeatures: the frozen layers ``backbone_`` that return the two
    mid-level maps, and ``device_``; stored as for PretrainedFeatures."""
    return TorchHook(
        frozenset({"backbone_", "device_"}),
        _dump_features,
        _restore_backbone(_build_patch_backbone),
    )


def _dump_device(detector, where):
    _refuse_module_backbone(detector, where)
    return {} if hasattr(detector, "device_") else None


def _restore_device(detector, state, device):
    detector.device_ = device


def device_hook():
    """PatchCoreDetector: no module of its own (its memory bank is an array),
    but ``device_``, where its nearest-neighbour search runs, follows the
    ``device`` it is loaded with, like the modules of the other classes."""
    return TorchHook(frozenset({"device_"}), _dump_device, _restore_device)
