"""The output folder: feature cache, configuration, one file per finished run.

Every file is written atomically, so that a benchmark interrupted at any point
resumes from complete files; every file read back that is not what this module
wrote is reported with its path. All of this runs in the calling process.
"""

import contextlib
import csv
import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import joblib
import numpy as np

from .._atomic import (
    atomic_write,
    file_in_the_way,
    named,
    temporary_name,
    where_in_the_way,
)
from .._utils import file_digest
from ._config import BenchmarkError

CONFIG_FILE = "config.json"
RUNS_FOLDER = "runs"
FEATURES_FOLDER = "features"
DATASET_FILE = "dataset.json"
# The reports a benchmark writes beside its runs, by name (and the figures of
# anomaly maps, anomaly_maps_<category>.png).
REPORT_FILES = {
    "runs_csv": "runs.csv",
    "table1_csv": "table1_auroc.csv",
    "table2_csv": "table2_removed.csv",
    "table3_csv": "table3_threshold.csv",
    "results_json": "results.json",
    "figure_mean": "auroc_vs_noise.png",
    "figure_categories": "auroc_vs_noise_by_category.png",
}
# The fields of a run record (see run_one), in the order of runs.csv.
RECORD_FIELDS = (
    "dataset",
    "category",
    "noise",
    "repeat",
    "model",
    "seed",
    "n_train",
    "n_train_anomalous",
    "n_test",
    "auroc",
    "pixel_auroc",
    "aupro",
    "false_alarm",
    "detection",
    "removed_good",
    "removed_bad",
    "n_iter",
    "seconds",
    "device",
    "error",
)
# The fields the tables compute with: a number, or None (no value).
_NUMBERS = RECORD_FIELDS[RECORD_FIELDS.index("n_train") : RECORD_FIELDS.index("device")]
# Fields added after the first release of the benchmark: records written
# before them are read with None (no value), as for a model without maps.
_LATER_FIELDS = ("pixel_auroc", "aupro")
_START_OVER = "Use another --output folder, or delete this one to start over."
# Where a config.json may be a user's file, not a benchmark's record.
_NOT_YOURS = f"If {CONFIG_FILE} is a file of yours, move it. Else: "


def create_exclusively(path, text):
    """Create the file ``path`` holding ``text``, unless it exists.

    Returns whether this call created it. The text goes to a temporary file
    that is then hard-linked to ``path``: the link fails when the name exists,
    so of several processes racing to create the file exactly one does, and no
    process ever reads it half written. File systems without hard links get
    an exclusive create (``O_CREAT | O_EXCL``), as exclusive but visible
    while it is written.
    """
    temporary = temporary_name(path)
    named(path, atomic_write, temporary, lambda file: file.write(text))
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        return True
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def write_json(path, data):
    """Write ``data`` as indented JSON with sorted keys."""
    atomic_write(path, lambda file: json.dump(data, file, indent=2, sort_keys=True))


def read_json(path, *, remedy):
    """The JSON object in ``path``; a file that holds none is named, with ``remedy``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        # ValueError: invalid JSON, or bytes that are not text.
        raise BenchmarkError(f"Cannot read {path}: {error}. {remedy}") from error
    if not isinstance(data, dict):
        raise BenchmarkError(
            f"{path} holds a JSON {type(data).__name__}, not the object this "
            f"benchmark writes. {remedy}"
        )
    return data


def write_csv(path, fields, rows):
    """Write the ``fields`` of each dict of ``rows``; None is an empty cell."""

    def write(file):
        writer = csv.DictWriter(
            file, fieldnames=fields, lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(
            {f: ("" if row[f] is None else row[f]) for f in fields} for row in rows
        )

    atomic_write(path, write)


def check_output(output):
    """Raise unless ``output`` is a folder, or a path where one can be made."""
    if not str(output):  # Path("") is the current folder
        raise BenchmarkError(
            "The output folder (--output) is an empty path; pass the path of a "
            "folder, new or from an earlier run of this benchmark."
        )
    output = Path(output)
    file = file_in_the_way(output)
    if file is not None:
        where = where_in_the_way(file, output)
        raise BenchmarkError(
            f"The output folder {output} (--output) {where}; pass the path "
            "of a folder, new or from an earlier run of this benchmark."
        )


def claim_output(output, config):
    """Record the configuration in the output folder, or check it matches.

    Claiming is atomic (:func:`create_exclusively`): of several processes
    claiming one folder with different configurations, exactly one proceeds.
    """
    check_output(output)
    for name, what in ((RUNS_FOLDER, "runs"), (FEATURES_FOLDER, "cached features")):
        entry = output / name
        if entry.exists() and not entry.is_dir():  # found once config.json was written
            raise BenchmarkError(
                f"The output folder {output} holds a file {name}, where the "
                f"benchmark keeps the folder of its {what}. Move it, or use another "
                "--output folder."
            )
    config_path = output / CONFIG_FILE
    text = json.dumps(config, indent=2, sort_keys=True)
    try:
        if not config_path.exists():
            if _holds_runs(output):
                raise BenchmarkError(
                    f"The output folder {output} holds results but no "
                    f"{CONFIG_FILE}, so their configuration is unknown. Use "
                    "another --output folder."
                )
            _refuse_files_it_would_replace(output)
            output.mkdir(parents=True, exist_ok=True)
            if create_exclusively(config_path, text):
                return
    except OSError as error:
        raise BenchmarkError(
            f"Cannot write to the output folder {output} (--output): "
            f"{error.strerror or error}. Pass a folder you can write to."
        ) from error
    stored = read_json(config_path, remedy=_NOT_YOURS + _START_OVER)
    if "dataset" not in stored:
        # A file of the user's: "delete this folder" would delete it.
        raise BenchmarkError(
            f"The output folder {output} holds a {CONFIG_FILE} that no benchmark "
            "wrote (it has no 'dataset' entry), perhaps a file of yours: the "
            "benchmark records its configuration under that name. Move it, or "
            "use another --output folder."
        )
    if stored != config:
        differences = "; ".join(_differences(stored, config))
        if not _holds_runs(output):
            # Claimed by a benchmark that finished no run (stopped while the
            # features were computed, or running now): not "results".
            raise BenchmarkError(
                f"The output folder {output} was claimed by a benchmark of another "
                "configuration, which has finished no run yet. Differences "
                f"(folder -> this run): {differences}. {_NOT_YOURS}{_START_OVER}"
            )
        raise BenchmarkError(
            f"The output folder {output} holds results of another configuration; "
            "mixing them would average different experiments. Differences "
            f"(folder -> this run): {differences}. {_START_OVER}"
        )
    # Before any work: a run resumed in a read-only copy failed once its work
    # was done. (The features folder is checked where features are missing.)
    for folder in (output, output / RUNS_FOLDER):
        check_writable(folder)


def _refuse_files_it_would_replace(output):
    """Refuse a folder without a configuration that holds files under the
    names of the benchmark's reports: they are a user's, and were replaced."""
    if not output.is_dir():
        return
    names = {*REPORT_FILES.values(), DATASET_FILE}
    found = sorted(
        entry.name
        for entry in output.iterdir()
        if entry.name in names
        or (entry.name.startswith("anomaly_maps_") and entry.name.endswith(".png"))
    )
    if found:
        listed = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise BenchmarkError(
            f"The output folder {output} holds {listed} but no {CONFIG_FILE}: "
            "files of this name are the benchmark's reports, which would replace "
            "them. Move them, or use another --output folder."
        )


def _holds_runs(output):
    """Whether the output folder holds a finished run."""
    return any((output / RUNS_FOLDER).glob("*.json"))


def check_dataset_files(output, labelled, masks):
    """Record the image and mask files each category's runs read, or refuse
    an output folder whose results were computed on other files of the
    dataset folder.

    The images are recorded by count, a digest of their paths and sizes and
    one of their contents: a folder extracted in part, then in full, kept the
    same configuration, and the tables averaged runs on 12 and on 40 training
    images. The defect masks (``masks``, by category), which set
    KolektorSDD2's labels and the pixel metrics, are recorded alike under
    ``"masks"``. (Records written before the contents or the masks were
    digested are taken as they are and completed.)
    """
    path = output / DATASET_FILE
    listing = {
        category: {**_files_digest(images), "masks": _files_digest(masks[category])}
        for category, (images, _, _) in labelled.items()
    }
    stored = read_json(path, remedy=_START_OVER) if path.exists() else {}
    for record in stored.values():
        if not (isinstance(record, dict) and record.keys() in _RECORD_KEYS):
            raise BenchmarkError(
                f"{path} holds {record!r}, not the record of a category's files "
                f"this benchmark writes. {_START_OVER}"
            )
    changed = [
        c for c in listing if c in stored and _differ(stored[c], listing[c])
    ]
    if changed and _holds_runs(output):
        what = "; ".join(
            f"{c}: {_what_changed(stored[c], listing[c])}" for c in changed
        )
        raise BenchmarkError(
            f"The files of the dataset folder changed since the results in "
            f"{output} were computed ({what}): mixing them would average runs "
            f"on other images or labels. {_START_OVER}"
        )
    if {**stored, **listing} != stored:  # new, new categories, or completed
        write_json(path, {**stored, **listing})


# The keys of a category's record in dataset.json, now and before "masks"
# and "contents".
_RECORD_KEYS = (
    {"n_files", "sha256", "contents", "masks"},
    {"n_files", "sha256", "contents"},
    {"n_files", "sha256"},
)


def _differ(stored, listing):
    """Whether a stored record and a new listing describe other files
    (contents compared where the stored record has them)."""
    return any(stored[key] != listing[key] for key in stored)


def _what_changed(stored, listing):
    """Which of a category's records differ, in words, with their counts."""
    images = {key: value for key, value in stored.items() if key != "masks"}
    said = []
    if _differ(images, listing):
        said.append(_counts("image files", images, listing))
    if "masks" in stored and stored["masks"] != listing["masks"]:
        said.append(_counts("defect masks", stored["masks"], listing["masks"]))
    return " and ".join(said)


def _counts(files, stored, listing):
    then, now = stored["n_files"], listing["n_files"]
    if then != now:
        return f"{files} then {then}, now {now}"
    return f"{files} {now} then and now, with other names, sizes or contents"


def _files_digest(files):
    """How many files, a SHA-256 of their paths and sizes, in order, and one
    of their contents."""
    names, contents = hashlib.sha256(), hashlib.sha256()
    for file in files:
        line = f"{os.fspath(file)}\0{os.path.getsize(file)}\n"
        names.update(line.encode("utf-8", "surrogateescape"))
        contents.update(bytes.fromhex(file_digest(file)))
    return {
        "n_files": len(files),
        "sha256": names.hexdigest(),
        "contents": contents.hexdigest(),
    }


def check_writable(folder):
    """Refuse an existing ``folder`` of the output that cannot be written."""
    if folder.is_dir():
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise BenchmarkError(
                f"Cannot write to {folder} (--output): {error.strerror or error}. "
                "Make it writable, or pass another --output folder."
            ) from error


def _differences(old, new, path="config"):
    for key in sorted(set(old) | set(new)):
        here = f"{path}[{key!r}]"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, here)
        elif a != b:
            yield f"{here}: {a!r} -> {b!r}"


def _run_path(runs_folder, run):
    return runs_folder / f"{run.name}.json"


def write_run(runs_folder, run, record):
    """Store the record of a finished run."""
    write_json(_run_path(runs_folder, run), record)


def read_run(runs_folder, run):
    """The stored record of a run, or None if it has not finished."""
    path = _run_path(runs_folder, run)
    if not path.exists():
        return None
    remedy = "Delete the file to run that run again."
    record = read_json(path, remedy=remedy)
    record = {**dict.fromkeys(_LATER_FIELDS), **record}
    missing = [field for field in RECORD_FIELDS if field not in record]
    if missing:
        raise BenchmarkError(
            f"The run record {path} lacks {', '.join(missing)}. {remedy}"
        )
    fields, stored = asdict(run), record["noise"]
    if stored != run.noise and all(
        record[field] == value for field, value in fields.items() if field != "noise"
    ):
        # Another level that shares the file's 4 decimals: a finished run.
        raise BenchmarkError(
            f"The run record {path} holds the noise level {stored!r}, which "
            f"shares its file with the level {run.noise!r} asked for now (run "
            f"files name levels with 4 decimals). Pass --noise {stored!r} to "
            "use it, or write this level's runs to another --output folder."
        )
    if any(record[field] != value for field, value in fields.items()):
        raise BenchmarkError(
            f"The run record {path} holds the results of another run. {remedy}"
        )
    for field in _NUMBERS:
        value = record[field]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            raise BenchmarkError(
                f"The run record {path} holds {field}={value!r}, not a number; "
                f"it is not what the benchmark wrote. {remedy}"
            )
    if record["error"] is not None and not isinstance(record["error"], str):
        raise BenchmarkError(
            f"The run record {path} holds error={record['error']!r}, not a message; "
            f"it is not what the benchmark wrote. {remedy}"
        )
    return record


def feature_extractor(config, device):
    """The unfitted PretrainedFeatures of a configuration."""
    from .. import PretrainedFeatures

    settings = config["features"]
    return PretrainedFeatures(
        settings["backbone"],
        image_size=settings["image_size"],
        n_scales=settings["n_scales"],
        n_views=settings["n_views"],
        batch_size=settings["batch_size"],
        device=device,
        random_state=config["seed"],
    )


def patch_extractor(config, device):
    """The unfitted PatchFeatures of a configuration's patch models."""
    from .. import PatchFeatures

    settings = config["patch"]
    return PatchFeatures(
        settings["backbone"],
        image_size=settings["image_size"],
        batch_size=settings["batch_size"],
        device=device,
        random_state=config["seed"],
    )


def _patch_settings(config):
    """What the patch features depend on: the extractor's part of "patch"."""
    return {key: config["patch"][key] for key in ("backbone", "image_size")}


def _feature_path(images, config, cache_folder, *, patches=False):
    # Files by path and contents: an image replaced under its name (same
    # size, too) must not be given the features of the one it replaced.
    source = (
        images
        if isinstance(images, np.ndarray)
        else [(str(p), file_digest(p)) for p in images]
    )
    if patches:
        settings, prefix = _patch_settings(config), f"{config['dataset']}-patches"
    else:
        settings, prefix = config["features"], config["dataset"]
    key = joblib.hash((settings, config["seed"], source))
    return cache_folder / f"{prefix}-{key}.npy"


def check_features(image_sets, config, device, cache_folder, *, patches=False):
    """Raise, before anything is written, if the feature settings cannot work.

    Fits the extractor on one image of the first image set whose features
    are not cached yet: a backbone that cannot process the smallest scale,
    or an invalid setting, is then refused up front. ``patches`` checks the
    patch features of the patch models instead.
    """
    from .._features._backbones import WeightsDownloadError  # imports torch

    for images in image_sets:
        if not _feature_path(images, config, cache_folder, patches=patches).exists():
            # Where features are to be written, not where all are cached.
            check_writable(cache_folder)
            extractor = (patch_extractor if patches else feature_extractor)(
                config, device
            )
            try:
                extractor.fit(images[:1])
            except (TypeError, ValueError) as error:
                where = (
                    "The patch feature settings (config['patch'], set with --config)"
                    if patches
                    else "The feature settings (config['features']: --backbone, "
                    "--image-size, --n-scales, --n-views or --config)"
                )
                raise BenchmarkError(f"{where} cannot be used: {error}") from error
            except WeightsDownloadError as error:
                raise BenchmarkError(
                    f"{error} The benchmark takes no weights setting: copy the "
                    "file into the cache as in (a), or use the efficientnet_lite0 "
                    "backbone."
                ) from error
            return


def cached_features(
    images, config, device, cache_folder, *, patches=False, progress=False
):
    """Features of ``images``, read from or written to the cache folder.

    With ``patches``, the patch features of the patch models: an array of
    shape (n_images, grid_height, grid_width, n_channels), each image's grid
    of patch vectors (:class:`PatchFeatures`), float32. With ``progress``, a
    progress bar over the CNN's batches when they are computed.
    """
    path = _feature_path(images, config, cache_folder, patches=patches)
    if path.exists():
        return _read_features(path, len(images), ndim=4 if patches else 2)
    extractor = (patch_extractor if patches else feature_extractor)(config, device)
    extractor.set_params(verbose=int(progress))
    errors = (TypeError, ValueError) if patches else (ValueError,)
    try:
        features = extractor.fit(images[:1]).transform(images)
    except errors as error:
        what = "patch features" if patches else "features"
        raise BenchmarkError(
            f"Computing the {what} of {config['dataset']} failed: {error}"
        ) from error
    if patches:
        grid = (*extractor.grid_shape_, extractor.n_channels_)
        features = features.reshape(len(features), *grid)
    atomic_write(path, lambda file: np.save(file, features), mode="wb")
    return features


def _read_features(path, n_images, *, ndim=2):
    remedy = "Delete the file to compute the features again."
    try:
        # No pickles: the cache holds plain arrays, and a pickle in it would run.
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise BenchmarkError(
            f"The cached features {path} cannot be read ({error}). {remedy}"
        ) from error
    if features.ndim != ndim or len(features) != n_images:
        what = "row" if ndim == 2 else "grid of patch vectors"
        raise BenchmarkError(
            f"The cached features {path} hold an array of shape {features.shape}, "
            f"not one {what} for each of the {n_images} images. {remedy}"
        )
    # What the extractors write: float32, finite (a file written otherwise
    # is not theirs, and its width cannot be checked without the CNN).
    finite = features.dtype == np.float32 and np.isfinite(features).all()
    if not finite:
        what = "non-finite" if features.dtype == np.float32 else features.dtype
        raise BenchmarkError(
            f"The cached features {path} hold {what} values, not the finite "
            f"float32 features the benchmark writes. {remedy}"
        )
    return features
