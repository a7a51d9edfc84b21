"""``metarefine fit``: fit a detector on a folder of images, report what it dropped."""

import contextlib
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sklearn.utils._param_validation import InvalidParameterError
from tqdm.auto import tqdm

from ._image_files import InputError, UnreadableImageError, list_images, read_image
from ._inference import check_device, quiet
from ._persistence import save
from ._pictures import contact_sheet

LEVELS = ("image", "patch")
# Thumbnails on the contact sheet; the CSV lists every dropped file.
MAX_SHEET_IMAGES = 200


@dataclass
class FitResult:
    """What ``fit_folder`` did: the files it wrote and the counts behind them."""

    model: Path
    dropped_csv: Path
    contact_sheet: Path
    skipped_csv: Path | None
    n_images: int
    n_dropped: int
    skipped: list = field(default_factory=list)


def report_paths(model):
    """The report files written next to ``model``: dropped CSV, sheet, skipped CSV."""
    stem = Path(model).with_suffix("")
    return (
        Path(f"{stem}.dropped.csv"),
        Path(f"{stem}.dropped.png"),
        Path(f"{stem}.skipped.csv"),
    )


def build_detector(level, params):
    """The MetaRefineDetector ``fit`` trains, at image or patch level."""
    from ._detector import MetaRefineDetector

    if level not in LEVELS:
        raise InputError(f"--level {level!r}: choose one of {', '.join(LEVELS)}.")
    names = MetaRefineDetector._get_param_names()
    if "level" in names:
        params = {**params, "level": level}
    elif level != "image":
        raise InputError(
            f"--level {level}: patch-level detection is not available in this "
            "version of sklearn-metarefine yet; use --level image."
        )
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise InputError(
            f"{', '.join(unknown)}: not a parameter of MetaRefineDetector, whose "
            f"parameters are {', '.join(names)}."
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

    Writes the model file ``output`` and, next to it, ``<name>.dropped.csv``
    (the training files the refinement dropped, most anomalous first, with
    their anomaly score under the final model and the round that dropped them;
    round 0 means outside the starting core and never let back in),
    ``<name>.dropped.png`` (their contact sheet), and with
    ``skip_unreadable``, ``<name>.skipped.csv`` when files could not be read.

    Parameters
    ----------
    train_folder : path-like
        Folder searched recursively for PNG, JPEG, BMP and TIFF files.
    output : path-like
        Model file to write.
    level : {"image", "patch"}, default="image"
        Detector level.
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
    files = list_images([train_folder])
    print(f"Found {len(files)} images under {train_folder}", file=sys.stderr)
    files, skipped = _readable(files, skip_unreadable, progress)
    if len(files) < 2:
        raise InputError(f"Only {len(files)} readable images under {train_folder}.")
    paths = [file.path for file in files]
    detector.set_params(verbose=int(progress))
    # The refinement prints one line per round; it is progress, not output.
    with contextlib.redirect_stdout(sys.stderr):
        detector.fit(paths)
    quiet(detector)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    save(detector, output)

    dropped_csv, sheet, skipped_csv = report_paths(output)
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
    with open(dropped_csv, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "anomaly_score", "round", "label"])
        for path, score, round_ in rows:
            label = "anomalous" if score > threshold else "normal"
            writer.writerow([path, repr(score), round_, label])
    shown = rows[:MAX_SHEET_IMAGES]
    title = (
        f"{len(rows)} of {len(paths)} training images dropped"
        + (f"; the {len(shown)} most anomalous shown" if len(shown) < len(rows) else "")
        + f" (anomaly score, round; model threshold {threshold:.4g})"
    )
    contact_sheet(
        [(p, [Path(p).name[:20], f"{s:.4g}, round {r}"]) for p, s, r in shown],
        sheet,
        title=title,
    )
    # A list left by an earlier run would describe other files.
    skipped_csv.unlink(missing_ok=True)
    if skipped:
        with open(skipped_csv, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "error"])
            writer.writerows(skipped)
    return FitResult(
        model=Path(output),
        dropped_csv=dropped_csv,
        contact_sheet=sheet,
        skipped_csv=skipped_csv if skipped else None,
        n_images=len(paths),
        n_dropped=len(rows),
        skipped=skipped,
    )
