"""The model file as bytes: a zip of a JSON manifest, safetensors and skops members.

Reading checks everything it can before anything is decoded: the file is a zip,
it holds only the members the format knows, the manifest matches the SHA-256 in
the zip comment and is strict JSON of the expected format and version, and
every other member matches the SHA-256 the manifest records. Nothing here
imports torch or unpickles.
"""

import errno
import hashlib
import json
import os
import re
import zipfile
import zlib
from pathlib import Path

from .._atomic import atomic_write
from .._utils import warn

FORMAT = "sklearn-metarefine model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.safetensors"
_SKOPS_MEMBER = re.compile(r"skops/[0-9]+\.skops")
# A manifest holds parameters and names, not data; anything near this size is
# not one of ours, and reading it whole would only cost memory.
_MAX_MANIFEST_BYTES = 64 * 2**20
# Levels of nested JSON lists and objects in a manifest: about 20 for a pipeline
# of a refined patch-level detector, 6 more per pipeline around it. Decoding
# recurses once or more per level; save refuses deeper models alike.
_MAX_MANIFEST_DEPTH = 200
_PICKLE_PROTOCOL_2_PLUS = b"\x80"
# The zip comment of a model file: this prefix, then the manifest's SHA-256.
# Files written before it have no comment; their manifest is not checked.
_MANIFEST_CHECKSUM = b"manifest sha256 "


class ModelFileError(ValueError):
    """A file that is not a readable sklearn-metarefine model; nothing in it ran."""


class ModelVersionWarning(UserWarning):
    """A model file written with other versions than the ones installed."""


def skops_member(index):
    """Name of the ``index``-th skops member of a model file."""
    return f"skops/{index}.skops"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def write_archive(path, manifest, members):
    """Write the model file at ``path`` atomically.

    ``members`` maps member names to bytes; their SHA-256 go into the manifest,
    which is written first so that a reader finds it without scanning.
    """
    manifest = {**manifest, "members": {n: _sha256(d) for n, d in members.items()}}
    if _depth(manifest) > _MAX_MANIFEST_DEPTH:  # what read_archive refuses
        raise too_deep_to_save()
    text = json.dumps(manifest, indent=1, allow_nan=False, sort_keys=False)

    def write(raw):
        with zipfile.ZipFile(raw, "w") as archive:
            # The manifest's own checksum, where no member can hold it.
            archive.comment = _MANIFEST_CHECKSUM + _sha256(text.encode()).encode()
            archive.writestr(MANIFEST, text, compress_type=zipfile.ZIP_DEFLATED)
            for name, data in members.items():
                # Float tensors barely compress; skops' JSON does.
                method = zipfile.ZIP_STORED if name == ARRAYS else zipfile.ZIP_DEFLATED
                archive.writestr(name, data, compress_type=method)

    # A new file of the umask's mode, like the reports beside it; a replaced
    # one keeps its own.
    atomic_write(Path(os.path.abspath(path)), write, mode="wb")


def _refuse_non_zip(path):
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise ModelFileError(f"{path!r} is empty: not a model file, or one cut short.")
    if head == b"PK\x03\x04":  # a zip's first member, without the zip's end
        raise ModelFileError(
            f"{path!r} starts as a zip archive but its end is missing: the file "
            "was cut short (an interrupted copy or download?) or damaged. Copy "
            "the model file again."
        )
    if head.startswith(_PICKLE_PROTOCOL_2_PLUS):
        detail = (
            "it looks like a pickle (from pickle, joblib or torch.save), which can "
            "run arbitrary code when loaded; this loader never unpickles"
        )
    else:
        detail = "it is not a zip archive"
    raise ModelFileError(
        f"{path!r} is not a sklearn-metarefine model file: {detail}. Model files "
        "are written by sklearn_metarefine.save or `metarefine fit`."
    )


def _strict_constant(name):
    raise ModelFileError(f"the manifest holds the non-standard JSON constant {name}")


def _depth(value):
    """Levels of nested lists and objects in parsed JSON (iteratively)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            pending.extend((item, depth + 1) for item in value)
    return deepest


def too_deep_to_save():
    return ValueError(
        f"The model nests estimators and values more than {_MAX_MANIFEST_DEPTH} "
        "levels deep in its manifest, more than model files allow; nest fewer "
        "pipelines or containers."
    )


def _too_deep(path):
    return ModelFileError(
        f"{path!r}: its manifest nests lists or objects more than "
        f"{_MAX_MANIFEST_DEPTH} levels deep, more than sklearn_metarefine.save "
        "writes."
    )


def _parse_manifest(text, path):
    try:
        manifest = json.loads(text, parse_constant=_strict_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path!r}: its manifest is not valid JSON ({error}).")
    except RecursionError:
        raise _too_deep(path) from None
    if _depth(manifest) > _MAX_MANIFEST_DEPTH:
        raise _too_deep(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(
            f"{path!r} is a zip archive but not a sklearn-metarefine model file "
            f"(its {MANIFEST} does not declare format {FORMAT!r})."
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path!r}: invalid format_version {version!r}.")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path!r} uses model format {version}, newer than the {FORMAT_VERSION} "
            "this sklearn-metarefine reads; upgrade sklearn-metarefine."
        )
    for key in ("members", "versions", "estimator"):
        if not isinstance(manifest.get(key), dict):
            raise ModelFileError(f"{path!r}: the manifest has no valid {key!r}.")
    return manifest


def read_archive(path):
    """The manifest and the verified members of the model file at ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"Model file {path!r} is a folder; give the model file written by "
            "sklearn_metarefine.save or `metarefine fit`."
        )
    if not os.path.isfile(path):
        if os.path.exists(path):  # a pipe or a device: reading it may hang
            raise ModelFileError(
                f"Model file {path!r} is not a regular file (a pipe, socket or "
                "device); give the model file written by sklearn_metarefine.save "
                "or `metarefine fit`."
            )
        raise FileNotFoundError(f"Model file {path!r} not found.")
    if not zipfile.is_zipfile(path):
        _refuse_non_zip(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise ModelFileError(f"{path!r} holds the same member twice.")
            unknown = [
                n
                for n in names
                if n not in (MANIFEST, ARRAYS) and not _SKOPS_MEMBER.fullmatch(n)
            ]
            if MANIFEST not in names or unknown:
                raise ModelFileError(
                    f"{path!r} is a zip archive but not a sklearn-metarefine model "
                    f"file: it holds {sorted(unknown) or 'no ' + MANIFEST}."
                )
            if archive.getinfo(MANIFEST).file_size > _MAX_MANIFEST_BYTES:
                raise ModelFileError(f"{path!r}: its manifest is implausibly large.")
            text = archive.read(MANIFEST)
            comment = archive.comment
            checked = comment.startswith(_MANIFEST_CHECKSUM)
            if checked and comment[len(_MANIFEST_CHECKSUM):] != _sha256(text).encode():
                raise ModelFileError(
                    f"{path!r}: its {MANIFEST} does not match the checksum the "
                    "file records; the file was altered or damaged after it was "
                    "saved."
                )
            manifest = _parse_manifest(text, path)
            if not checked:
                warn(
                    f"{path!r} records no checksum of its {MANIFEST} (files saved "
                    "by early development versions did not): damage to it, or an "
                    "edit, cannot be detected. Save the model again.",
                    UserWarning,
                )
            recorded = manifest["members"]
            if set(recorded) != set(names) - {MANIFEST}:  # before reading them
                raise ModelFileError(
                    f"{path!r}: its members {sorted(set(names) - {MANIFEST})} are "
                    f"not the ones its manifest lists ({sorted(recorded)}); the "
                    "file was altered after it was saved."
                )
            members = {n: archive.read(n) for n in names if n != MANIFEST}
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        zlib.error,
        NotImplementedError,  # a damaged compression method
        RuntimeError,  # a damaged flag that says "encrypted"
    ) as error:
        raise ModelFileError(f"{path!r}: damaged zip archive ({error}).") from None
    except OSError as error:
        if error.errno != errno.EINVAL:  # a failing disk, not a damaged file
            raise
        # A damaged directory offset sends zipfile to a position before the start.
        raise ModelFileError(f"{path!r}: damaged zip archive ({error}).") from None
    for name, data in members.items():
        if _sha256(data) != recorded[name]:
            raise ModelFileError(
                f"{path!r}: member {name!r} does not match the checksum in the "
                "manifest; the file was altered or damaged after it was saved."
            )
    return manifest, members


def warn_on_version_mismatch(recorded, installed, path):
    """Warn once per library whose recorded version differs from the installed one."""
    different = [
        f"{name} {recorded.get(name)} (installed: {version})"
        for name, version in installed.items()
        if recorded.get(name) is not None
        and version is not None
        # One release's builds (torch 2.14.1+cpu, +cu130) are one version.
        and str(recorded.get(name)).split("+")[0] != str(version).split("+")[0]
    ]
    if different:
        warn(
            f"Model file {path!r} was written with {', '.join(different)}. It loads, "
            "but scores can differ from those at saving time; refit, or check a few "
            "known images.",
            ModelVersionWarning,
        )


def module_refusal(where, module):
    """Why a torch module as a backbone (at ``where``) cannot be saved."""
    return (
        f"Cannot save {where}: its backbone is a torch.nn.Module "
        f"({type(module).__qualname__}). A model file holds no code, "
        "so it can only rebuild the named backbones (alexnet, resnet18, "
        "wide_resnet50_2, efficientnet_lite0); for one of those with your own "
        "weights, pass backbone=<name>, weights=<state dict file>."
    )
