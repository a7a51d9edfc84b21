"""``metarefine fit``: fit a detector on a folder of images, report what it dropped."""

import contextlib
import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sklearn.utils._param_validation import InvalidParameterError
from tqdm.auto import tqdm

from ._atomic import (
    discard,
    errors_naming,
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
    check_images_outside,
    check_not_named_as_an_image,
    check_nothing_read_is_overwritten,
    check_replaceable,
    check_output_file,
    is_image,
    list_images,
    read_image,
)
from ._inference import check_device, quiet
from ._persistence import save
from ._pictures import contact_sheet
from ._samples import MIN_FENCE_SAMPLES
from ._utils import warn

LEVELS = ("image", "patch")
# Parameters of MetaRefineDetector that the patch level uses besides the ones it
# forwards to PatchCoreDetector (_patch._pair.BANK_PARAMS).
_PATCH_LEVEL_SHARED = ("level", "memory", "device", "verbose", "random_state")
# Thumbnails on the contact sheet; the CSV lists every file of the report.
MAX_SHEET_IMAGES = 200


@dataclass
class FitResult:
    """What ``fit_folder`` did: the files it wrote and the counts behind them.

    ``report_csv`` and ``contact_sheet`` list the training files the image
    level dropped (``.dropped.*``) or that the patch-level model labels
    anomalous (``.flagged.*``); ``n_listed`` counts them, and ``summary`` is
    the sentence the command prints about them.
    """

    model: Path
    report_csv: Path
    contact_sheet: Path
    skipped_csv: Path | None
    n_images: int
    n_listed: int
    level: str = "image"
    summary: str = ""
    skipped: list = field(default_factory=list)


# Below this many training images fit warns that the patch level's threshold
# flags many good parts (benchmarks/bench_patch_threshold.py).
_FEW_PATCH_IMAGES = 20

# The report files' kind at each level: what the listed training files are.
_REPORTS = {"image": "dropped", "patch": "flagged"}


def report_paths(model, level="image"):
    """The report files written next to ``model``: listed files' CSV, their
    contact sheet, skipped CSV (``.dropped.*`` at the image level,
    ``.flagged.*`` at the patch level).

    They are named after the model file less its ``.metarefine`` suffix, and
    after its whole name otherwise: ``line3.v1`` and ``line3.v2`` are two
    models, whose reports must not be one file.
    """
    model = Path(model)
    stem = model.with_suffix("") if model.suffix == ".metarefine" else model
    kind = _REPORTS[level]
    return (
        Path(f"{stem}.{kind}.csv"),
        Path(f"{stem}.{kind}.png"),
        Path(f"{stem}.skipped.csv"),
    )


def with_settings(options, settings):
    """The detector's parameters: the ``options`` given (name: value) and the
    ``--set`` ``settings`` (name, value pairs), with ``device="auto"`` unless
    one says otherwise. A parameter given twice is refused: the last one said
    won without a word."""
    params = dict(options)
    from_options = set(params)
    for name, value in settings:
        if name in params:
            option = f"--{name.replace('_', '-')}"
            option = "--seed" if name == "random_state" else option
            first = (
                f"{option} {params[name]}"
                if name in from_options
                else f"--set {name}={params[name]!r}"
            )
            raise InputError(
                f"{name} is given twice ({first} and --set {name}={value!r}); give "
                "it once."
            )
        params[name] = value
    params.setdefault("device", "auto")
    return params


def build_detector(level, params):
    """The MetaRefineDetector ``fit`` trains, at image or patch level."""
    from ._detector import MetaRefineDetector
    from ._patch._pair import BANK_PARAMS

    if level not in LEVELS:
        raise InputError(f"--level {level!r}: choose one of {', '.join(LEVELS)}.")
    if "level" in params:
        raise InputError(
            f"level={params['level']!r}: choose the level with --level "
            f"({' or '.join(LEVELS)}), not --set."
        )
    if "backbone" in params and params["backbone"] is None:
        raise InputError(
            "backbone=None fits feature vectors, not image files: `metarefine "
            "fit` needs a backbone (--backbone) to embed the images."
        )
    params = {**params, "level": level}
    names = MetaRefineDetector._get_param_names()
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise InputError(
            f"{', '.join(unknown)}: not a parameter of MetaRefineDetector, whose "
            f"parameters are {', '.join(names)}."
        )
    if level == "patch":
        used = {*BANK_PARAMS, *_PATCH_LEVEL_SHARED}
        unused = sorted(set(params) - used)
        if unused:
            raise InputError(
                f"{', '.join(unused)}: not used at --level patch, which takes "
                f"{', '.join(sorted(used - {'level'}))}."
            )
    detector = MetaRefineDetector(**params)
    try:
        detector._validate_params()
    except InvalidParameterError as error:
        raise InputError(str(error)) from None
    return detector


def _readable(files, skip_unreadable, progress):
    """The files that decode; the others stop the run, or are skipped with why."""
    readable, skipped = [], []
    for file in tqdm(files, desc="Checking images", unit="image", disable=not progress):
        try:
            read_image(file.path)
        except UnreadableImageError as error:
            if not skip_unreadable:
                raise
            skipped.append((file.path, str(error)))
            continue
        readable.append(file)
    return readable, skipped


def _dropped_rows(detector, paths):
    """Image level: the training files the refinement dropped, most anomalous
    first, as ``(path, anomaly score, round, label)``."""
    dropped = [i for i, kept in enumerate(detector.inlier_mask_) if not kept]
    anomaly = -detector.score_samples([paths[i] for i in dropped]) if dropped else []
    threshold = -detector.offset_
    rows = sorted(
        (
            (paths[i], float(a), int(detector.removed_at_iter_[i]))
            for i, a in zip(dropped, anomaly)
        ),
        key=lambda row: (-row[1], row[0]),
    )
    return [
        (path, score, round_, "anomalous" if score > threshold else "normal")
        for path, score, round_ in rows
    ]


def _flagged_rows(detector, paths):
    """Patch level: the training files the fitted model labels anomalous, most
    anomalous first, as ``(path, anomaly score)``.

    The bank is cleaned patch by patch and keeps every image, so what is worth
    checking is which training images still show what the model calls a
    defect. Each image is scored as if held out (the detector's
    ``train_scores_``: against the bank without its own patches, and by flows
    fitted without it), the scores the threshold was set on (a fence of them,
    or their percentile for a float contamination): scored against the whole
    bank, a training image's patches would find themselves, and a defect whose
    patches the cleaning kept would go unseen.
    """
    # Files saved before the pair of bank and flow: the bank's own.
    anomaly = getattr(detector, "train_scores_", detector.detector_.train_scores_)
    threshold = -detector.offset_
    rows = [(p, float(a)) for p, a in zip(paths, anomaly) if a > threshold]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def _axes_note(detector):
    """What the summary says when the flow models fewer axes than asked."""
    axes = detector.refiner_.estimator.pca_components
    if axes is None or axes == detector.pca_components:
        return ""
    return (
        f"; the flow models {axes} principal axes, not pca_components="
        f"{detector.pca_components}: too few images for more"
    )


def _report(detector, level, paths, csv_path, sheet_path):
    """Write the CSV and contact sheet of the listed training files; return
    their number and the sentence that sums them up."""
    threshold = -detector.offset_
    if level == "patch":
        rows = _flagged_rows(detector, paths)
        header = ["path", "anomaly_score"]
        captions = [[Path(p).name[:20], f"{s:.4g}"] for p, s in rows]
        bank = detector.detector_
        flow = getattr(detector, "flow_detector_", None)
        summary = (
            f"the bank cleaning kept {len(bank.memory_bank_)} of "
            f"{bank.n_patches_selected_} patches, "
            + ("" if flow is None else (
                f"the flow's cleaning kept {int(flow.inlier_mask_.sum())} of "
                f"{len(flow.inlier_mask_)} images, "
            ))
            + f"and the model labels {len(rows)} training images anomalous"
        )  # fmt: skip
        what = "labelled anomalous"
        legend = "anomaly score"
    else:
        rows = _dropped_rows(detector, paths)
        header = ["path", "anomaly_score", "round", "label"]
        captions = [[Path(p).name[:20], f"{s:.4g}, round {r}"] for p, s, r, _ in rows]
        summary = f"the refinement dropped {len(rows)}" + _axes_note(detector)
        what = "dropped"
        legend = "anomaly score, round"
    with open(csv_path, "x", newline="", encoding="utf-8", errors=PATH_ERRORS) as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for path, score, *rest in rows:
            writer.writerow([path, repr(score), *rest])
    shown = len(rows[:MAX_SHEET_IMAGES])
    title = (
        f"{len(rows)} of {len(paths)} training images {what}"
        + (f"; the {shown} most anomalous shown" if shown < len(rows) else "")
        + f" ({legend}; model threshold {threshold:.4g})"
    )
    contact_sheet(
        [(row[0], lines) for row, lines in zip(rows[:shown], captions)],
        sheet_path,
        title=title,
    )
    return len(rows), summary


def _check_outputs(output, level, train_folder, files):
    """Refuse outputs that would destroy a training image, or add images to
    ``train_folder`` that a later fit on it would train on."""
    option = f"--output {os.fspath(output)}"
    written = [output, *report_paths(output, level)]
    # Reports of the other level left by an earlier run are deleted.
    for other in set(_REPORTS) - {level}:
        written += report_paths(output, other)[:2]
    check_nothing_read_is_overwritten(
        option, written, {file.path: "a training image" for file in files}
    )
    check_replaceable(option, report_paths(output, level))  # the model's: above
    # Found after the fit, a folder there failed the command with the old
    # model already replaced.
    folders = [os.fspath(path) for path in written[1:] if Path(path).is_dir()]
    if folders:
        raise InputError(
            f"{option}: {', '.join(folders)}, where the reports next to the model "
            "go, is a folder; move it away or choose another --output."
        )
    sheets = [path for path in written if is_image(path)]
    check_images_outside(option, sheets, [train_folder], "a training image")


def fit_folder(
    train_folder,
    output,
    *,
    level="image",
    params=None,
    skip_unreadable=False,
    progress=True,
):
    """Fit a detector on every image under ``train_folder`` and save it.

    Writes the model file ``output`` and, next to it, a report of the training
    files worth a look, as a CSV and a contact sheet (PNG), most anomalous
    first:

    - image level, ``<name>.dropped.csv`` and ``<name>.dropped.png``: the
      training files the refinement dropped, with their anomaly score under the
      final model, the round that dropped them (0: outside the starting core
      and never let back in) and the final model's label;
    - patch level, ``<name>.flagged.csv`` and ``<name>.flagged.png``: the
      training files the fitted model labels anomalous, with their held-out
      anomaly score (``train_scores_``: the bank's cleaning keeps every
      image, so none is dropped; the flow beside it leaves some out of its
      own fit, which the summary line counts).

    With ``skip_unreadable``, ``<name>.skipped.csv`` lists the files that could
    not be read.

    Parameters
    ----------
    train_folder : path-like
        Folder searched recursively for PNG, JPEG, BMP and TIFF files.
    output : path-like
        Model file to write.
    level : {"image", "patch"}, default="image"
        Detector level: ``MetaRefineDetector(level=level)``.
    params : dict, default=None
        Parameters of :class:`MetaRefineDetector`.
    skip_unreadable : bool, default=False
        Skip files that cannot be decoded instead of stopping.
    progress : bool, default=True
        Progress on stderr.

    Returns
    -------
    result : FitResult
    """
    detector = build_detector(level, dict(params or {}))
    check_device(detector.device)
    check_output_file(output, "model.metarefine")
    files = list_images([train_folder])
    if not os.path.isdir(train_folder):  # one file would be a training set of 1
        raise InputError(
            f"TRAIN_FOLDER {os.fspath(train_folder)!r} is a file; `metarefine fit` "
            "takes the folder of the training images (subfolders included)."
        )
    _check_outputs(output, level, train_folder, files)
    check_not_named_as_an_image(output, "model.metarefine")
    print(f"Found {len(files)} images under {train_folder}", file=sys.stderr)
    files, skipped = _readable(files, skip_unreadable, progress)
    # The image level's quartiles need 4 images, a patch bank scored without
    # each image's own patches 2.
    fewest = 2 if level == "patch" else MIN_FENCE_SAMPLES
    if len(files) < fewest:
        raise InputError(
            f"Only {len(files)} readable images under {train_folder}; the "
            f"{level} level needs at least {fewest}."
        )
    if level == "patch" and len(files) < _FEW_PATCH_IMAGES:
        warn(
            f"{len(files)} training images: with so few, the patch level's "
            "threshold flags more good parts (on the generated surfaces about "
            "22% with 10 images and 13% with 20, against 5% with 90). Check "
            "it on good images you kept out of training.",
            UserWarning,
        )
    paths = [file.path for file in files]
    if "verbose" not in (params or {}):  # else what --set verbose=N says
        detector.set_params(verbose=int(progress))
    # The refinement prints one line per round; it is progress, not output.
    with contextlib.redirect_stdout(sys.stderr):
        detector.fit(paths)
    quiet(detector)
    made = []  # folders this run created, removed again if it stops
    report_csv, sheet, skipped_csv = report_paths(output, level)
    # The reports (seconds of scoring) and the model are written aside first;
    # then the old reports go, the model replaces the old one and the reports
    # take their names. A run stopped among the renames leaves a model without
    # reports, never one with another model's.
    aside = {path: temporary_name(path) for path in (report_csv, sheet, skipped_csv)}
    model_aside = temporary_name(Path(output))
    complete = False
    try:
        make_folder(Path(output).parent, made)  # may stop midway
        # A full disk names the folder, not a temporary name.
        with errors_naming(report_csv.parent):
            n_listed, summary = _report(detector, level, paths, aside[report_csv],
                                        aside[sheet])
            if skipped:
                with open(aside[skipped_csv], "x", newline="", encoding="utf-8",
                          errors=PATH_ERRORS) as file:
                    writer = csv.writer(file)
                    writer.writerow(["path", "error"])
                    writer.writerows(skipped)
        named(output, save, detector, model_aside)
        # Old reports, of either level, would describe another model.
        for other in set(_REPORTS) - {level}:
            for path in report_paths(output, other)[:2]:
                path.unlink(missing_ok=True)
        modes = {path: mode_of(path) for path in aside}  # kept when replaced
        for path in aside:
            path.unlink(missing_ok=True)
        replace(model_aside, output)
        for path, written in aside.items():
            if written.exists():
                replace(written, path, modes[path])
        complete = True
    finally:
        discard([*aside.values(), model_aside], [] if complete else made)
    return FitResult(
        model=Path(output),
        report_csv=report_csv,
        contact_sheet=sheet,
        skipped_csv=skipped_csv if skipped else None,
        n_images=len(paths),
        n_listed=n_listed,
        level=level,
        summary=summary,
        skipped=skipped,
    )
