"""Torch helpers shared by the estimators: the device and local seeding."""

import threading
from contextlib import contextmanager

import torch


def resolve_device(device):
    """Return the ``torch.device`` an estimator should run on.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}, str or torch.device
        ``"auto"`` picks CUDA when it is available and the CPU otherwise.
        Any other value is passed to :class:`torch.device`; a CUDA, MPS or
        XPU device that is not available, and any other type but the CPU
        (such as "meta"), raise instead of failing deep in torch or silently
        running elsewhere.

    Returns
    -------
    device : torch.device
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"device={device!r} is not a torch device ({error}). Use 'auto', "
            "'cpu' or 'cuda'."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this "
            "machine (torch.cuda.is_available() is False). Use device='cpu' or "
            "device='auto'."
        )
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r} was requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s), numbered from 0. Use "
            "device='cuda' (the current one) or device='auto'."
        )
    if resolved.type not in ("cpu", "cuda") and not _available(resolved.type):
        # It failed later, deep in torch ("meta" tensors hold no data).
        raise ValueError(
            f"device={device!r} is not available to this package on this machine "
            "(it runs on 'cpu', 'cuda', and 'mps' or 'xpu' where torch has them). "
            "Use device='cpu' or device='auto'."
        )
    return resolved


def _available(device_type):
    """Whether torch can compute on ``device_type`` ("mps" or "xpu") here."""
    if device_type == "mps":
        return torch.backends.mps.is_available()
    if device_type == "xpu":
        return hasattr(torch, "xpu") and torch.xpu.is_available()
    return False


# torch's generators are the process's: a seeded block holds them, so that
# seeded fits in several threads run one at a time, each drawing from its own
# seed, and leave the caller's generator as it was (interleaved, two fits drew
# from each other's seeds and one's restore undid the other's).
_GENERATORS = threading.RLock()


@contextmanager
def torch_seeded(seed, device):
    """Run a block with torch's global generators seeded, then restore them.

    Library code must not reseed the user's global torch state; ``fork_rng``
    saves and restores it around the block. One thread at a time runs such a
    block (a re-entrant lock: blocks nest).
    """
    devices = [device] if device.type == "cuda" else []
    with _GENERATORS, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def torch_training(seed, device):
    """:func:`torch_seeded` for training: gradients on, whatever the caller
    set. skorch turns them on under ``torch.no_grad()``, but nothing does
    under ``torch.inference_mode()``, where a fit failed deep in torch
    ("element 0 of tensors does not require grad")."""
    with torch_seeded(seed, device), torch.inference_mode(False), torch.enable_grad():
        yield
