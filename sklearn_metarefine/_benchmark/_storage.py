"""The output folder: feature cache, configuration, one file per finished run.

Every file is written atomically, so that a benchmark interrupted at any point
resumes from complete files. All of this runs in the calling process.
"""

import csv
import json
import os
import uuid

import joblib
import numpy as np

from ._config import BenchmarkError

CONFIG_FILE = "config.json"
RUNS_FOLDER = "runs"
FEATURES_FOLDER = "features"


def atomic_write(path, write, *, mode="w"):
    """Write a file through a temporary file in its folder and ``os.replace``.

    A reader, or a benchmark resumed after an interruption, sees the old file
    or the complete new one, never a partial one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "x" rather than tempfile.mkstemp, whose files
    # are private to their owner whatever the umask.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, mode.replace("w", "x")) as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path, data):
    """Write ``data`` as indented JSON with sorted keys."""
    atomic_write(path, lambda file: json.dump(data, file, indent=2, sort_keys=True))


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


def claim_output(output, config):
    """Record the configuration in the output folder, or check it matches."""
    config_path = output / CONFIG_FILE
    if config_path.exists():
        stored = json.loads(config_path.read_text())
        if stored != config:
            differences = "\n".join(_differences(stored, config))
            raise BenchmarkError(
                f"The output folder {output} holds results of another "
                f"configuration; mixing them would average different "
                f"experiments. Differences (folder -> this run):\n{differences}\n"
                "Use another --output folder, or delete this one to start over."
            )
    elif any((output / RUNS_FOLDER).glob("*.json")):
        raise BenchmarkError(
            f"The output folder {output} holds results but no {CONFIG_FILE}, so "
            "their configuration is unknown. Use another --output folder."
        )
    else:
        write_json(config_path, config)


def _differences(old, new, path="config"):
    for key in sorted(set(old) | set(new)):
        here = f"{path}[{key!r}]"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, here)
        elif a != b:
            yield f"  {here}: {a!r} -> {b!r}"


def _run_path(runs_folder, run):
    return runs_folder / f"{run.name}.json"


def write_run(runs_folder, run, record):
    """Store the record of a finished run."""
    write_json(_run_path(runs_folder, run), record)


def read_run(runs_folder, run):
    """The stored record of a run, or None if it has not finished."""
    path = _run_path(runs_folder, run)
    return json.loads(path.read_text()) if path.exists() else None


def cached_features(images, config, device, cache_folder):
    """Features of ``images``, read from or written to the cache folder."""
    from .. import PretrainedFeatures

    settings = config["features"]
    source = images if isinstance(images, np.ndarray) else [str(p) for p in images]
    key = joblib.hash((settings, config["seed"], source))
    path = cache_folder / f"{config['dataset']}-{key}.npy"
    if path.exists():
        return np.load(path)
    extractor = PretrainedFeatures(
        settings["backbone"],
        image_size=settings["image_size"],
        n_scales=settings["n_scales"],
        n_views=settings["n_views"],
        batch_size=settings["batch_size"],
        device=device,
        random_state=config["seed"],
    )
    features = extractor.fit(images[:1]).transform(images)
    atomic_write(path, lambda file: np.save(file, features), mode="wb")
    return features
