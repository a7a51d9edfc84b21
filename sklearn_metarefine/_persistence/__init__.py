"""Model files that load without unpickling: ``save`` and ``load``.

A model file is a zip archive of

- ``manifest.json``: the format and its version, the versions of the libraries
  that wrote it, the SHA-256 of every other member, and the estimator tree
  (class names from an explicit list, parameters, fitted attributes);
- ``arrays.safetensors``: every numpy array and torch tensor;
- ``skops/<n>.skops``: estimators of other libraries (e.g. the
  ``IsolationForest`` inside an ``IQRRefiner``), in skops' format.

See :mod:`._codec` for the tree and :mod:`._archive` for the checks.
"""

import os
import sys

import numpy as np
import sklearn
from safetensors import SafetensorError
from safetensors import numpy as safetensors_numpy

from .. import __version__
from .._utils import names_a_folder, warn
from ._archive import (
    ARRAYS,
    FORMAT,
    FORMAT_VERSION,
    ModelFileError,
    ModelVersionWarning,
    read_archive,
    skops_member,
    too_deep_to_save,
    warn_on_version_mismatch,
    write_archive,
)
from ._codec import (
    Decoder,
    DeviceUnavailableError,
    Encoder,
    SchemaError,
    nested_estimators,
)

__all__ = ["ModelFileError", "ModelVersionWarning", "load", "nested_estimators", "save"]


def _versions():
    versions = {
        "sklearn-metarefine": __version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }
    for name in ("torch", "skops"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None)
    return versions


def save(estimator, path):
    """Save an estimator to a model file that :func:`load` reads without pickle.

    Parameters
    ----------
    estimator : estimator
        A detector of this package (fitted or not), a ``Pipeline`` of them, or a
        scikit-learn estimator. Torch modules are stored as state dicts:
        :class:`PretrainedFeatures` and :class:`PatchFeatures` store their
        backbone's weights (so the file loads offline), the flows their flow's
        parameters (a :class:`PatchFlowDetector`'s too); a
        :class:`PatchCoreDetector` stores its memory bank as arrays. Estimators of other libraries are stored with skops.
    path : str or path-like
        File to write, replaced atomically if it exists (keeping its
        permissions). The extension is free; the command line writes
        ``.metarefine``.

    Raises
    ------
    TypeError
        When a part of the estimator cannot be stored without code: a
        feature transformer or detector with a ``torch.nn.Module`` backbone, a
        parameter holding a function, an estimator skops cannot serialise, a
        lambda, a function defined inside another, a static or class method
        (no load could import it by name), extended-precision numbers
        (``np.longdouble`` where it is wider than float64). The message
        names the part. Also when ``estimator`` is a class, not an instance.
    ValueError
        When the estimator nests pipelines or values so deep that its manifest
        would hold more than 200 levels of lists and objects, which
        :func:`load` refuses; or when ``path`` is a symbolic link, which
        would be replaced rather than its target, or a pipe, socket or
        device.
    IsADirectoryError
        When ``path`` is a folder, or names one (empty, or ending in a
        separator, ``.`` or ``..``).
    NotADirectoryError
        When a folder of ``path`` is a file (the message names it). Missing
        folders are created, and removed again if the file cannot be written.

    Warns
    -----
    UserWarning
        When skops-serialised parts hold types outside the trusted list:
        :func:`load` then needs them in its ``trusted`` argument.

    See Also
    --------
    load : Read a model file.

    Notes
    -----
    The optimizer state and training history of the flows are not stored: a
    loaded model scores exactly as the saved one, and a warm refit after loading
    starts its optimizer afresh. Nor is a cache folder (``memory``): it belongs
    to the machine, and a model file must not choose where scoring writes;
    loaded models have ``memory=None``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from sklearn_metarefine import IQRRefiner, load, save
    >>> X = np.random.RandomState(0).normal(size=(50, 2))
    >>> refiner = IQRRefiner(IsolationForest(random_state=0), random_state=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "refiner.metarefine")
    >>> save(refiner, path)
    >>> loaded = load(path)
    >>> bool(np.array_equal(loaded.score_samples(X), refiner.score_samples(X)))
    True
    """
    if isinstance(estimator, type):
        raise TypeError(
            f"save expects an estimator, got the class {estimator.__qualname__}: "
            f"save an instance, such as {estimator.__name__}(...) after fit."
        )
    if not hasattr(estimator, "get_params"):
        raise TypeError(
            f"save expects an estimator, got a {type(estimator).__qualname__}."
        )
    path = os.fsdecode(path)  # a str, from bytes and path-likes too
    if os.path.isdir(path) or names_a_folder(path):
        # Saved as a file of the folder's name, which load then could not
        # find under the name given.
        what = "is a folder" if os.path.isdir(path) else "names a folder"
        raise IsADirectoryError(
            f"{path!r} {what}; save writes a model file: give its "
            f"path, such as {os.path.join(path, 'model.metarefine')!r}."
        )
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(
            f"{path!r} is not a regular file (a pipe, socket or device): save "
            "would replace it with a model file. Give the path of a file."
        )
    if os.path.islink(path):
        raise ValueError(
            f"{path!r} is a symbolic link (to {os.readlink(path)!r}): save "
            "replaces a file whole, and would replace the link, leaving its "
            "target as it was. Save to the target, or remove the link first."
        )
    encoder = Encoder()
    try:
        tree = encoder.estimator(estimator, type(estimator).__name__)
    except RecursionError:
        raise too_deep_to_save() from None
    members = {ARRAYS: safetensors_numpy.save(encoder.arrays)}
    for index, data in enumerate(encoder.skops):
        members[skops_member(index)] = data
    if encoder.untrusted_types:
        warn(
            f"The model holds types that load does not trust by default: "
            f"{sorted(encoder.untrusted_types)}; load it with "
            f"load(path, trusted={sorted(encoder.untrusted_types)!r}).",
            UserWarning,
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "estimator": tree,
    }
    write_archive(path, manifest, members)


def _written_by(manifest, installed):
    """What a decoding error owes to another release of the package, if any."""
    written = manifest["versions"].get("sklearn-metarefine")
    if written is None or written == installed["sklearn-metarefine"]:
        return ""
    return (
        f" The file was written by sklearn-metarefine {written}; this is "
        f"{installed['sklearn-metarefine']}: load it with that version, or fit "
        "the model again with this one."
    )


def load(path, *, device=None, trusted=()):
    """Load a model file written by :func:`save`, without unpickling anything.

    Parameters
    ----------
    path : str or path-like
        The model file.
    device : {"auto", "cpu", "cuda"}, str or None, default=None
        None keeps each component's saved ``device`` parameter (``"auto"``
        picks CUDA when there is one); any other value replaces the ``device``
        parameter of every component, and their torch modules go there.
    trusted : sequence of str, default=()
        Further types to accept in skops-serialised parts, by the names the
        error lists. Pass them only for a file whose origin you trust.

    Returns
    -------
    estimator : estimator
        The saved estimator. Its scores equal the saved one's bit for bit on
        the same device.

    Raises
    ------
    ModelFileError
        A subclass of ``ValueError``: the file is not a model file (e.g. a
        pickle, or another zip archive), names a class outside the allowed
        list, holds untrusted types, or was damaged or altered after saving
        (its manifest or members do not match the checksums saved with
        them). The checksums detect damage and edits that do not recompute
        them; they are no signature: load only files from sources you
        trust. Nothing in the file runs.
    FileNotFoundError
        No file at ``path``.
    TypeError
        ``device`` is neither None, a str nor a ``torch.device``, or
        ``trusted`` is not a list of names.
    ValueError
        The ``device`` saved with the model, or the one given, asks for CUDA
        on a machine without it; the message says to pass ``device="cpu"``.

    Warns
    -----
    ModelVersionWarning
        The file was written with another version of sklearn-metarefine,
        scikit-learn or torch than the installed ones.
    UserWarning
        The file records no checksum of its manifest (files saved by early
        development versions).

    See Also
    --------
    save : Write a model file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn.covariance import EllipticEnvelope
    >>> from sklearn_metarefine import IQRRefiner, load, save
    >>> X = np.random.RandomState(0).normal(size=(50, 2))
    >>> path = os.path.join(tempfile.mkdtemp(), "refiner.metarefine")
    >>> save(IQRRefiner(EllipticEnvelope(), random_state=0).fit(X), path)
    >>> load(path).predict([[0.0, 0.0], [8.0, 8.0]])
    array([ 1, -1])
    """
    path = os.fsdecode(path)  # a str, named as given (not as PosixPath(...))
    torch = sys.modules.get("torch")  # a torch.device implies torch imported
    if not (
        device is None
        or isinstance(device, str)
        or (torch is not None and isinstance(device, torch.device))
    ):
        raise TypeError(
            f"load's device must be None, a str such as 'cpu' or 'cuda:0', or a "
            f"torch.device; got {device!r}."
        )
    manifest, members = read_archive(path)
    try:
        arrays = safetensors_numpy.load(members.get(ARRAYS, b""))
    except SafetensorError as error:
        raise ModelFileError(f"{path!r}: damaged arrays member ({error}).") from None
    n_skops = sum(name.startswith("skops/") for name in members)
    if any(skops_member(i) not in members for i in range(n_skops)):
        raise ModelFileError(f"{path!r}: its skops members are not numbered 0..n-1.")
    decoder = Decoder(
        arrays,
        [members[skops_member(i)] for i in range(n_skops)],
        device=device,
        trusted=trusted,
    )
    tree = manifest["estimator"]
    if len(tree) != 1 or next(iter(tree)) not in ("$estimator", "$skops"):
        raise ModelFileError(f"{path!r}: its manifest holds no estimator.")
    installed = _versions()
    try:
        estimator = decoder.value(tree, "the model")
    except SchemaError as error:  # perhaps a file of another release
        raise ModelFileError(
            f"{path!r}: {error}{_written_by(manifest, installed)}"
        ) from None
    except ModelFileError as error:
        raise ModelFileError(f"{path!r}: {error}") from None
    except (TypeError, KeyError, IndexError, AttributeError) as error:
        # What the decoder's own checks did not foresee in a malformed file.
        raise ModelFileError(
            f"{path!r}: malformed model file ({type(error).__name__}: {error})."
        ) from error
    except DeviceUnavailableError as error:  # the machine's, not the file's
        raise ValueError(f"{path!r}: {error}") from None
    warn_on_version_mismatch(
        manifest["versions"],
        {
            name: installed[name]
            for name in ("sklearn-metarefine", "scikit-learn", "torch")
        },
        str(path),
    )
    return estimator
