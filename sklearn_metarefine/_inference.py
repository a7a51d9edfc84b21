"""``metarefine score``: score image files with a saved model, batch by batch.

Memory holds one batch of decoded images (and of anomaly maps) at a time; each
batch's rows are written before the next batch is read. The CSV is written
under a temporary name in its folder and renamed when complete, so a run that
stops leaves no CSV that looks finished.
"""

import contextlib
import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from ._atomic import (
    closing_named,
    discard,
    make_folder,
    mode_of,
    named,
    replace,
    temporary_name,
)
from ._image_files import (
    PATH_ERRORS,
    InputError,
    UnreadableImageError,
    check_image_file,
    check_images_outside,
    check_not_named_as_an_image,
    check_nothing_read_is_overwritten,
    check_output_file,
    check_output_folder,
    check_replaceable,
    leading_to,
    list_images,
    output_names,
    read_image,
)
from ._persistence import load, nested_estimators
from ._pictures import map_overlay

COLUMNS = ["path", "anomaly_score", "label", "threshold", "threshold_source", "error"]
# With maps: the overlay (PNG) and the map's values (.npy, float32, at the
# image's height and width) of each scored file.
MAP_COLUMNS = ["map", "map_values"]


@dataclass
class ScoreResult:
    """Counts of a ``score_files`` run and the threshold it used."""

    output: Path
    n_scored: int
    n_anomalous: int
    n_skipped: int
    threshold: float
    threshold_source: str


def quiet(estimator):
    """Set the verbosity of the estimator and of all its components to 0."""
    for component in nested_estimators(estimator):
        params = component.get_params(deep=False)
        if "verbose" in params:
            # Pipeline's verbose is a bool, the others' an int.
            component.set_params(
                verbose=False if isinstance(params["verbose"], bool) else 0
            )


def check_device(device):
    """``device`` if this machine has it, else InputError saying what to pass."""
    from ._torch_utils import resolve_device

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as error:
        raise InputError(f"--device {device}: {error}") from None
    return device


def load_model(path, device="auto"):
    """The model in file ``path``, on ``device``, silent."""
    model = load(path, device=check_device(device))
    quiet(model)
    return model


def scores_images(model):
    """Whether ``model`` takes images (rather than feature vectors) as input."""
    from ._detector import MetaRefineDetector
    from ._features import PretrainedFeatures

    if isinstance(model, MetaRefineDetector):
        return model.backbone is not None
    if isinstance(model, Pipeline):
        return isinstance(model.steps[0][1], PretrainedFeatures)
    # Patch-level detectors embed images themselves.
    return hasattr(model, "anomaly_map")


def model_threshold(model, threshold=None):
    """The anomaly-score threshold and where it comes from ("model", "--threshold").

    The model's is ``-offset_`` (a pipeline's, of its last step): an image is
    anomalous when its anomaly score (minus ``score_samples``) is above it,
    exactly when ``predict`` says -1.
    """
    name = type(model).__name__
    try:
        if isinstance(model, BaseEstimator):
            check_is_fitted(model)
    except NotFittedError:
        raise InputError(
            f"The model file holds an unfitted {name}; fit it first "
            "(`metarefine fit`, or fit before sklearn_metarefine.save)."
        ) from None
    detector = model[-1] if isinstance(model, Pipeline) else model
    if not hasattr(model, "score_samples"):
        if detector is not model:
            name = f"{name} ending in {type(detector).__name__}"
        raise InputError(
            f"The model ({name}) has no score_samples: `metarefine score` needs "
            "an outlier detector, such as MetaRefineDetector, or a pipeline "
            "ending in one."
        )
    if threshold is not None:
        if not np.isfinite(threshold):
            raise InputError(f"--threshold must be a finite number, got {threshold}.")
        return float(threshold), "--threshold"
    if not hasattr(detector, "offset_"):
        raise InputError(
            f"The model ({name}) has no threshold of its own (offset_); give "
            "one with --threshold."
        )
    offset = np.asarray(detector.offset_, dtype=np.float64)
    if offset.size != 1:  # OneClassSVM's is an array of one
        raise InputError(
            f"The model's offset_ ({type(detector).__name__}) holds {offset.size} "
            "values, not one threshold; give one with --threshold."
        )
    return float(-offset.item()), "model"


def _silent(text):
    """A ``note`` that says nothing."""


def _noting(bar):
    """A ``note`` that shows its text after the progress ``bar``: "scoring",
    the long step of a batch, at once, the others ("reading", "writing map",
    a few per file) at most every ``mininterval`` seconds, as tqdm redraws on
    updates (redrawn at every note, a log file, ``2>log``, took two copies of
    the bar per image, on one line)."""
    if bar.disable:  # a disabled bar has no mininterval
        return _silent
    shown = [-math.inf]  # when a note last redrew it

    def note(text):
        bar.set_postfix_str(text, refresh=False)
        now = time.monotonic()
        if text.startswith("scoring") or now - shown[0] >= bar.mininterval:
            shown[0] = now
            bar.refresh()

    return note


def _read_batch(files, skip_unreadable, note=_silent):
    """Decoded images of a batch, and an error message (or None) per file;
    ``note`` is told which file is read."""
    images, errors = [], []
    for number, file in enumerate(files, 1):
        note(f"reading {number}/{len(files)}")
        try:
            images.append(read_image(file.path))
            errors.append(None)
        except UnreadableImageError as error:
            if not skip_unreadable:
                raise
            errors.append(str(error))
    return images, errors


def score_files(
    model,
    inputs,
    output,
    *,
    maps=None,
    threshold=None,
    skip_unreadable=False,
    batch_size=32,
    progress=True,
):
    """Score every image named by ``inputs`` and write one CSV row per file.

    Parameters
    ----------
    model : fitted detector
        A detector that takes images (see :func:`scores_images`).
    inputs : sequence of path-like
        Image files and folders (searched recursively).
    output : path-like
        CSV to write: ``path, anomaly_score, label, threshold,
        threshold_source, error``, plus ``map, map_values`` with ``maps``
        (the files written for the image). The anomaly score
        is minus ``score_samples`` (higher = more anomalous); the label is
        ``anomalous`` above the threshold, ``normal`` otherwise, and
        ``skipped`` for an unreadable file with ``skip_unreadable`` (then
        ``error`` says why).
    maps : path-like, default=None
        Folder for the anomaly maps; needs a model with ``anomaly_map``. For
        each scored image, under its name (its path below the folder given,
        prefixed by that folder's name): a PNG of the map blended over the
        image, and the map's values as a NumPy ``.npy`` file, float32 of the
        image's ``(height, width)``, higher = more anomalous.
    threshold : float, default=None
        Anomaly-score threshold; None uses the model's (``-offset_``).
    skip_unreadable : bool, default=False
        Skip files that cannot be decoded instead of stopping.
    batch_size : int, default=32
        Images decoded and scored at once.
    progress : bool, default=True
        A progress bar on stderr.

    Returns
    -------
    result : ScoreResult
    """
    # First: a model that scores nothing is named so, not as one of vectors.
    threshold, source = model_threshold(model, threshold)
    if not scores_images(model):
        raise InputError(
            "The model scores feature vectors, not images (it was fitted with "
            "backbone=None, or is not an image pipeline)."
        )
    if maps is not None:
        check_output_folder(maps, "--maps", "the maps")
    if maps is not None and not hasattr(model, "anomaly_map"):
        raise InputError(
            "--maps needs a patch-level model (one with anomaly maps); this model "
            "scores whole images. Fit one with `metarefine fit --level patch`."
        )
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}.")
    check_output_file(output, "results.csv")
    files = list_images(inputs)
    map_names = output_names(files, ".png") if maps is not None else None
    _check_outputs(output, maps, map_names, inputs, files)
    check_not_named_as_an_image(output, "results.csv")
    if not skip_unreadable:
        # A file that does not open would stop the run only at its batch,
        # after the batches before it were scored for nothing. (One cut short
        # in its pixels still does: finding it means decoding every file.)
        checking = tqdm(files, desc="Checking", unit="image", disable=not progress)
        for file in checking:
            check_image_file(file.path)
    counts = {"scored": 0, "anomalous": 0, "skipped": 0}
    # Before any folder is made: it draws itself, and stderr may be gone.
    bar = tqdm(total=len(files), unit="image", desc="Scoring", disable=not progress)
    made = []  # folders this run created, removed again if it stops
    partial = temporary_name(Path(output))
    pending = []  # (map written aside, its name), renamed once all are scored
    complete = created = False
    try:
        make_folder(Path(output).parent, made)  # may stop midway
        handle = named(output, open, partial, "x", newline="", encoding="utf-8",
                       errors=PATH_ERRORS)
        created = True
        with closing_named(output, handle):
            writer = csv.writer(handle)
            writer.writerow(COLUMNS + (MAP_COLUMNS if maps is not None else []))
            note = _noting(bar)
            for start in range(0, len(files), batch_size):
                batch = files[start : start + batch_size]
                names = map_names[start : start + batch_size] if maps else None
                rows = _score_batch(
                    model, batch, names, maps, threshold, source, skip_unreadable,
                    pending, made, note=note,
                )
                for row in rows:
                    key = "skipped" if row[2] == "skipped" else "scored"
                    counts[key] += 1
                    counts["anomalous"] += row[2] == "anomalous"
                named(output, writer.writerows, rows)
                named(output, handle.flush)  # a full disk names the CSV
                bar.update(len(batch))
        # The maps replace earlier ones with the CSV that names them, not
        # batch by batch: an interrupted run leaves the earlier maps and CSV.
        # The earlier CSV goes first, so that a run stopped among the renames
        # leaves new maps without a CSV, never an old CSV beside new maps.
        csv_mode = mode_of(output)  # kept when the earlier CSV goes first
        if pending:
            named(output, Path(output).unlink, missing_ok=True)
        for written, path in pending:
            named(path, replace, written, path)
        named(output, replace, partial, output, csv_mode)
        complete = True
    finally:
        try:
            with contextlib.suppress(OSError):  # its last line, to a reader gone
                bar.close()
        finally:
            temporaries = [written for written, _ in pending]
            discard(temporaries + [partial] if created else temporaries,
                    [] if complete else made)
    return ScoreResult(
        output=Path(output),
        n_scored=counts["scored"],
        n_anomalous=counts["anomalous"],
        n_skipped=counts["skipped"],
        threshold=threshold,
        threshold_source=source,
    )


def _check_outputs(output, maps, map_names, inputs, files):
    """Refuse outputs that would destroy an image to score, or maps that a
    later run on the folders scored now would score as images."""
    scored = {file.path: "an image to score" for file in files}
    check_nothing_read_is_overwritten(f"--output {os.fspath(output)}", [output], scored)
    if maps is None:
        return
    overlays = [Path(maps) / name for name in map_names]
    written = overlays + [path.with_suffix(".npy") for path in overlays]
    # The CSV must not be a map, nor a folder the maps go in or below: judged
    # where the paths lead (through links).
    taken = set(leading_to(written))
    for folder in {path.parent for path in taken}:
        taken.update((folder, *folder.parents))
    if Path(output).resolve() in taken:
        raise InputError(
            f"--output {os.fspath(output)} is where --maps {os.fspath(maps)} writes "
            "a map or a folder of maps; give the CSV a path outside the maps."
        )
    check_nothing_read_is_overwritten(f"--maps {os.fspath(maps)}", written, scored)
    check_replaceable(f"--maps {os.fspath(maps)}", written)
    for overlay in overlays:
        # The overlay is opened once, to read its mark, and only if it or
        # its values file is there.
        existing = [p for p in (overlay, overlay.with_suffix(".npy")) if p.exists()]
        if existing and not _is_map(overlay):
            raise InputError(
                f"--maps {os.fspath(maps)} would write over {os.fspath(existing[0])}, "
                "which is not a map an earlier score wrote; give an empty "
                "folder, or the folder of earlier maps."
            )
    folders = [given for given in inputs if Path(given).is_dir()]
    option = f"--maps {os.fspath(maps)}"
    check_images_outside(option, written, folders, "an image to score")


# The overlays carry this text chunk: a later run may write over them, and
# over nothing else.
_MAP_SOFTWARE = "sklearn-metarefine anomaly map"


def _map_mark():
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", _MAP_SOFTWARE)
    return info


def _is_map(path):
    """Whether ``path`` is an overlay written by ``score_files``."""
    try:
        with Image.open(path) as image:
            return image.info.get("Software") == _MAP_SOFTWARE
    except Exception:
        return False


def _scores_and_maps(model, images):
    """Anomaly scores (minus ``score_samples``) and maps of ``images``.

    ``anomaly_map`` takes one size at a time, so the images are grouped by
    size; the patch detectors give both from one pass of their CNN.
    """
    anomaly = np.empty(len(images))
    maps = [None] * len(images)
    by_size = {}
    for index, image in enumerate(images):
        by_size.setdefault(np.shape(image)[:2], []).append(index)
    for indices in by_size.values():
        group = [images[i] for i in indices]
        if hasattr(model, "_scores_and_maps"):
            scores, group_maps = model._scores_and_maps(group)
        else:
            scores, group_maps = model.score_samples(group), model.anomaly_map(group)
        anomaly[indices] = -np.asarray(scores)
        for index, values in zip(indices, group_maps):
            maps[index] = values
    return anomaly, maps


def _score_batch(
    model, files, map_names, maps, threshold, source, skip_unreadable, pending, made,
    note=_silent,
):  # fmt: skip
    """The CSV rows of one batch, in the order of ``files``; its maps are
    written under temporary names, added to ``pending`` with their own, in
    folders added to ``made`` when created. ``note`` is told each step, for
    the progress bar: a batch of camera-size photos takes a minute or more."""
    images, errors = _read_batch(files, skip_unreadable, note)
    note(f"scoring {len(images)}")
    if maps is not None:
        anomaly, anomaly_maps = _scores_and_maps(model, images)
    else:
        anomaly = -model.score_samples(images) if images else np.empty(0)
    rows, scored = [], 0
    for index, (file, error) in enumerate(zip(files, errors)):
        if error is not None:
            row = [file.path, "", "skipped", repr(threshold), source, error]
            rows.append(row + (["", ""] if maps is not None else []))
            continue
        score = float(anomaly[scored])
        # As predict: a score that is no number (NaN) is not passed as normal.
        label = "normal" if score <= threshold else "anomalous"
        row = [file.path, repr(score), label, repr(threshold), source, ""]
        if maps is not None:
            note(f"writing map {scored + 1}/{len(images)}")
            overlay_path = Path(maps) / map_names[index]
            values_path = overlay_path.with_suffix(".npy")
            make_folder(overlay_path.parent, made)
            values = anomaly_maps[scored]
            overlay = map_overlay(images[scored], values, threshold)
            aside = temporary_name(overlay_path), temporary_name(values_path)
            pending += zip(aside, (overlay_path, values_path))
            named(overlay_path, overlay.save, aside[0], format="PNG",
                  pnginfo=_map_mark())
            with named(values_path, open, aside[1], "xb") as file:
                named(values_path, np.save, file, np.asarray(values, np.float32))
            row += [os.fspath(overlay_path), os.fspath(values_path)]
        rows.append(row)
        scored += 1
    note("")
    return rows


def print_summary(result, file=None):
    """One paragraph on what ``score_files`` did, on ``file`` (default: stdout)."""
    file = sys.stdout if file is None else file
    print(
        f"Scored {result.n_scored} images: {result.n_anomalous} anomalous at "
        f"threshold {result.threshold:.6g} ({result.threshold_source}).",
        file=file,
    )
    if result.n_skipped:
        print(
            f"Skipped {result.n_skipped} unreadable files (listed in the CSV).",
            file=file,
        )
    print(f"Wrote {result.output}", file=file)
