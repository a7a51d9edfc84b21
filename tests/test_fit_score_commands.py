"""`metarefine fit` and `metarefine score` on generated image folders."""

import contextlib
import csv
import functools
import io
import math
import os
import re
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from sklearn_metarefine import MetaRefineDetector, PatchFeatures, load
from sklearn_metarefine.__main__ import main
from sklearn_metarefine._image_files import (
    ImageFile,
    InputError,
    UnreadableImageError,
    list_images,
    output_names,
    read_image,
)
from sklearn_metarefine._inference import (
    COLUMNS,
    MAP_COLUMNS,
    _score_batch,
    score_files,
)
from sklearn_metarefine._training import report_paths
from sklearn_metarefine.datasets import make_surfaces

TINY = (
    "--image-size 32 --n-scales 1 --max-epochs 3 --device cpu --seed 0 "
    "--set hidden_size=8 --set n_blocks=2 --set pca_components=4"
).split()
SURFACE_SIZE = 96  # a 12 x 12 patch grid


def _image(rng, defect):
    pixels = 100 + rng.randint(0, 30, (40, 48, 3))
    if defect:
        pixels[10:30, 12:32] = 255
    return pixels.astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """train/ (a subfolder, PNG and JPEG, 3 defective, a corrupt file, a text
    file) and new/ (2 good, 2 defective, a corrupt file)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    (root / "train" / "line2").mkdir(parents=True)
    # 40 training images: with about 20 the default refinement's held-out
    # fences (5 folds of a core of a quarter of them) are too noisy to drop
    # the defective ones.
    for i in range(40):
        folder = root / "train" / ("line2" if i % 4 == 0 else "")
        suffix = ".jpg" if i % 5 == 0 else ".png"
        Image.fromarray(_image(rng, defect=i >= 37)).save(
            folder / f"part{i:02d}{suffix}"
        )
    (root / "train" / "line2" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "train" / "notes.txt").write_text("not an image")
    (root / "new").mkdir()
    for i in range(4):
        Image.fromarray(_image(rng, defect=i >= 2)).save(root / "new" / f"new{i}.bmp")
    (root / "new" / "truncated.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def fitted(folders):
    """The model fitted by the command, skipping the corrupt training file."""
    model = folders / "models" / "line.metarefine"
    status = main(
        [
            "fit",
            str(folders / "train"),
            "--output",
            str(model),
            "--skip-unreadable",
            "--no-progress",
            *TINY,
        ]
    )
    assert status == 0
    return model


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_listing_is_recursive_sorted_and_filtered(folders):
    files = list_images([folders / "train"])
    names = [f.name for f in files]
    assert names == sorted(names)
    assert len(files) == 41  # 40 images and the corrupt PNG; not the text file
    assert "train/line2/part00.jpg" in names and "train/notes.txt" not in names
    with pytest.raises(InputError, match="no such file or folder"):
        list_images([folders / "missing"])


def test_listing_skips_hidden_files_follows_links_and_names_each_file_once(
    folders, tmp_path
):
    new = folders / "new"
    root = tmp_path / "root"
    (root / ".hidden").mkdir(parents=True)
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / ".hidden" / "b.png").write_bytes((new / "new0.bmp").read_bytes())
    (root / "c.png").write_bytes((new / "new1.bmp").read_bytes())
    (root / "linked").symlink_to(new, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "gone.png").symlink_to(tmp_path / "missing.png")
    files = list_images([root, root / "c.png", new / "new0.bmp"])
    names = [f.name for f in files]
    assert names == [
        "root/c.png", "root/gone.png", "root/linked/new0.bmp", "root/linked/new1.bmp",
        "root/linked/new2.bmp", "root/linked/new3.bmp", "root/linked/truncated.png",
    ]  # fmt: skip
    with pytest.raises(UnreadableImageError, match="gone.png"):
        read_image(files[1].path)


def test_listing_finds_image_suffixes_in_any_case(folders, tmp_path):
    # A camera's IMG_0001.JPG is an image as much as a part.png is.
    image = (folders / "new" / "new0.bmp").read_bytes()
    for name in ("IMG_0001.JPG", "b.PNG", "c.Tiff", "d.BMP", "e.TXT"):
        (tmp_path / name).write_bytes(image)
    names = [Path(file.path).name for file in list_images([tmp_path])]
    assert names == ["IMG_0001.JPG", "b.PNG", "c.Tiff", "d.BMP"]


def test_output_names_are_unique(folders):
    files = list_images([folders / "new"]) + list_images([folders / "new" / "new0.bmp"])
    names = output_names(files, ".png")
    assert len(set(names)) == len(names)
    assert names[0] == "new/new0.png" and names[-1] == "new0.png"
    # a.png keeps its name, whatever is listed before it
    files = [ImageFile(f"d/a.{s}", f"a.{s}") for s in ("TIFF", "jpg", "png")]
    assert output_names(files, ".png") == ["a-2.png", "a-3.png", "a.png"]
    # Many files of one name (cam*/a.png given one by one) number on from the
    # last, not from 2 each time (4.9 s for 8,000); the .png files first.
    files = [ImageFile(f"cam{i}/a.png", "a.png") for i in range(5)]
    files[2:2] = [ImageFile("a-3.jpg", "a-3.jpg"), ImageFile("b/a.jpg", "a.jpg")]
    assert output_names(files, ".png") == [
        "a.png", "a-2.png", "a-3-2.png", "a-6.png", "a-3.png", "a-4.png", "a-5.png"]


def test_report_names_keep_every_part_of_the_model_name_but_its_suffix():
    # line3.v1 and line3.v2 both wrote line3.dropped.*, and a patch-level
    # fit of line3.v3 deleted them as reports of its own earlier run.
    names = {
        model: [p.name for p in report_paths(model, level)]
        for model, level in [
            ("line3.metarefine", "image"), ("line3.v1", "image"), ("line3.v2", "patch")
        ]
    }  # fmt: skip
    assert names == {
        "line3.metarefine": ["line3.dropped.csv", "line3.dropped.png", "line3.skipped.csv"],
        "line3.v1": ["line3.v1.dropped.csv", "line3.v1.dropped.png", "line3.v1.skipped.csv"],
        "line3.v2": ["line3.v2.flagged.csv", "line3.v2.flagged.png", "line3.v2.skipped.csv"],
    }  # fmt: skip


def test_fit_says_when_the_flow_models_fewer_axes_than_asked(
    folders, capsys, tmp_path
):
    # 40 images: a core of 10, held-out folds of 8, so at most 6 axes
    assert TINY[-2:] == ["--set", "pca_components=4"]
    options = TINY[:-2]
    status = main(
        [
            "fit",
            str(folders / "train"),
            "--output",
            str(tmp_path / "m.metarefine"),
            "--skip-unreadable",
            "--no-progress",
            *options,
            "--set",
            "pca_components=8",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "the flow models 6 principal axes, not pca_components=8" in out
    assert load(tmp_path / "m.metarefine").refiner_.estimator_.components_.shape[0] == 6


def test_fit_prints_warnings_as_one_line_each(capsys, tmp_path):
    rng = np.random.RandomState(0)
    (tmp_path / "few").mkdir()
    for i in range(8):
        Image.fromarray(_image(rng, defect=False)).save(tmp_path / "few" / f"{i}.png")
    model = tmp_path / "few.metarefine"
    status = main(["fit", str(tmp_path / "few"), "--output", str(model), *TINY])
    assert status == 0 and model.exists()
    err = capsys.readouterr().err
    assert (
        "metarefine fit: warning: MetaRefineDetector: the kept set may hold as "
        "few as 4 of the 8 training images"
    ) in err
    assert "UserWarning" not in err and "return fit_method" not in err


@pytest.mark.parametrize("level, fewest", [("image", 4), ("patch", 2)])
def test_fit_on_too_few_images_says_how_many_the_level_needs(
    level, fewest, capsys, tmp_path
):
    rng = np.random.RandomState(0)
    (tmp_path / "few").mkdir()
    for i in range(fewest - 1):
        Image.fromarray(_image(rng, defect=False)).save(tmp_path / "few" / f"{i}.png")
    argv = ["fit", str(tmp_path / "few"), "--output", str(tmp_path / "m"), *TINY]
    status = main(argv if level == "image" else [*argv[:4], "--level", "patch"])
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"metarefine fit: error: Only {fewest - 1} readable images under "
        f"{tmp_path / 'few'}; the {level} level needs at least {fewest}."
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "X holds 1 distinct training image(s) among its 6"),
        (["--n-scales", "9"], "image_size=32 cannot be halved 8 times"),
    ],
)
def test_fit_refusals_of_the_detector_are_one_line(extra, message, capsys, tmp_path):
    # A ValueError of the detector (a training set of copies of one image, a
    # setting it cannot use) printed a traceback.
    image = _image(np.random.RandomState(0), defect=False)
    (tmp_path / "same").mkdir()
    for i in range(6):
        Image.fromarray(image).save(tmp_path / "same" / f"{i}.png")
    model = tmp_path / "m.metarefine"
    argv = ["fit", str(tmp_path / "same"), "--output", str(model), *TINY, *extra]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("metarefine fit: error: ") and message in error
    assert not model.exists()


def test_fit_on_a_file_is_told_to_give_a_folder(folders, capsys, tmp_path):
    # One image was counted as "1 images" and told the level needs 4.
    image = folders / "train" / "part01.png"
    model = tmp_path / "m.metarefine"
    assert main(["fit", str(image), "--output", str(model), *TINY]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "part01.png' is a file" in error and "folder of the training" in error
    assert not model.exists()


def test_fit_takes_the_weights_its_message_offers(folders, capsys, tmp_path):
    # A state dict that is not there is told "weights takes 'DEFAULT', None
    # (random) or the path of a state dict"; --weights None was then read as
    # a file named None, and refused again.
    model = tmp_path / "m.metarefine"
    argv = ["fit", str(folders / "train"), "--output", str(model), *TINY,
            "--skip-unreadable", "--no-progress"]  # fmt: skip
    assert main([*argv, "--weights", str(tmp_path / "none.pth")]) == 1
    assert "None (random)" in capsys.readouterr().err
    assert main([*argv, "--weights", "None"]) == 0
    assert load(model).weights is None


def test_a_private_model_and_its_reports_stay_private(fitted, tmp_path):
    # fit wrote the new model aside and moved it over the old one, whose mode
    # it dropped (0600 became 0644).
    import stat

    model = tmp_path / "m.metarefine"
    argv = ["fit", str(fitted.parents[1] / "train"), "--output", str(model), *TINY,
            "--skip-unreadable", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    reports = [path for path in report_paths(model) if path.exists()]
    assert len(reports) == 3
    for path in [model, *reports]:
        os.chmod(path, 0o600)
    assert main(argv) == 0
    for path in [model, *reports]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_fit_stops_at_an_unreadable_file_and_names_it(folders, capsys, tmp_path):
    model = tmp_path / "m.metarefine"
    status = main(["fit", str(folders / "train"), "--output", str(model), *TINY])
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("metarefine fit: error: cannot read image file")
    assert "corrupt.png" in error and "Traceback" not in error
    assert not model.exists()


def test_fit_writes_model_and_report_of_dropped_files(folders, fitted):
    model = load(fitted)
    assert isinstance(model, MetaRefineDetector)
    dropped_csv = fitted.with_name("line.dropped.csv")
    rows = _rows(dropped_csv)
    assert list(rows[0]) == ["path", "anomaly_score", "round", "label"]
    training = [
        f.path for f in list_images([folders / "train"]) if "corrupt" not in f.path
    ]
    dropped = [p for p, kept in zip(training, model.inlier_mask_) if not kept]
    assert sorted(row["path"] for row in rows) == sorted(dropped)
    scores = [float(row["anomaly_score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert_allclose(
        scores, -model.score_samples([row["path"] for row in rows]), rtol=1e-5
    )
    rounds = {row["path"]: int(row["round"]) for row in rows}
    for path, removed_at in zip(training, model.removed_at_iter_):
        assert rounds.get(path, -1) == removed_at

    sheet = Image.open(fitted.with_name("line.dropped.png"))
    n_rows = math.ceil(len(rows) / 8)
    assert sheet.height == 24 + n_rows * (128 + 8 + 2 * 12)
    skipped = _rows(fitted.with_name("line.skipped.csv"))
    assert [row["path"] for row in skipped] == [
        str(folders / "train/line2/corrupt.png")
    ]
    assert "cannot read image file" in skipped[0]["error"]


@pytest.mark.parametrize("stage", ["csv", "contact_sheet", "save"])
def test_an_interrupted_fit_leaves_the_old_model_with_its_reports(
    folders, fitted, tmp_path, monkeypatch, stage
):
    # The model was saved first, then its reports written over seconds of
    # scoring: Ctrl-C there left a new model beside a half-written CSV or the
    # contact sheet of the model before.
    for path in fitted.parent.glob("line.*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    model = tmp_path / fitted.name
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert len(before) == 4  # model, dropped CSV and sheet, skipped CSV

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    target = {"csv": "csv.writer", "contact_sheet": "contact_sheet", "save": "save"}
    monkeypatch.setattr(f"sklearn_metarefine._training.{target[stage]}", interrupt)
    command = ["fit", str(folders / "train"), "--output", str(model), "--no-progress",
               "--skip-unreadable", *TINY, "--seed", "1"]  # the last --seed counts
    assert main(command) == 130
    after = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert after == before

    monkeypatch.undo()
    assert main(command) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(before)
    assert model.read_bytes() != before[model.name]


@pytest.mark.parametrize("stopped_at", [1, 2])
def test_a_fit_stopped_among_its_renames_leaves_no_old_reports_beside_the_new_model(
    folders, fitted, tmp_path, monkeypatch, stopped_at
):
    # The model replaced the old one, then the reports theirs: stopped in
    # between, the new model stood beside the dropped list of the old one.
    for path in fitted.parent.glob("line.*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    model = tmp_path / fitted.name
    old_model = model.read_bytes()
    for name in ("line.flagged.csv", "line.flagged.png"):  # of a patch-level fit
        (tmp_path / name).write_text("of the model before")
    replace, calls = os.replace, []

    def stopped(source, target):  # os.replace of every module: os is one
        if not Path(target).name.startswith("."):  # not a temporary file
            calls.append(target)
            if len(calls) == stopped_at:  # the model, or the first report after it
                raise KeyboardInterrupt
        return replace(source, target)

    monkeypatch.setattr("sklearn_metarefine._training.os.replace", stopped)
    command = ["fit", str(folders / "train"), "--output", str(model), "--no-progress",
               "--skip-unreadable", *TINY, "--seed", "1"]
    assert main(command) == 130
    # A model without reports, the old one or the new one (as the guide says).
    assert Path(calls[0]) == model
    assert (model.read_bytes() == old_model) == (stopped_at == 1)
    assert sorted(path.name for path in tmp_path.iterdir()) == [model.name]


def test_write_errors_name_the_file_written_not_a_temporary_one(tmp_path, monkeypatch):
    # "[Errno 28] No space left on device" named no file.
    from sklearn_metarefine._atomic import atomic_write

    def full(file):
        raise OSError(28, "No space left on device")

    target = tmp_path / "model.metarefine"
    with pytest.raises(OSError, match="No space left") as error:
        atomic_write(target, full)
    assert error.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_write_errors_leave_other_files_errors_as_they_are(tmp_path):
    # A message without an errno (an image that vanished, read again for the
    # reports) came out "[Errno None] None: '<report folder>'".
    from sklearn_metarefine._atomic import named, temporary_name

    target = tmp_path / "line.dropped.csv"

    def fail(error):
        raise error

    gone = FileNotFoundError("X[0]: image file 'a.png' not found.")
    with pytest.raises(FileNotFoundError) as error:
        named(target, fail, gone)
    assert error.value is gone
    assert str(error.value) == "X[0]: image file 'a.png' not found."
    read = PermissionError(13, "Permission denied", str(tmp_path / "a.png"))
    with pytest.raises(PermissionError) as error:
        named(target, fail, read)
    assert error.value is read
    written = OSError(28, "No space left on device", str(temporary_name(target)))
    with pytest.raises(OSError) as error:
        named(target, fail, written)
    assert error.value.filename == str(target) and error.value.__cause__ is written


def test_messages_a_stderr_cannot_encode_are_escaped_not_lost(
    folders, fitted, tmp_path, monkeypatch
):
    # Writes to stderr that fail are ignored; a name its encoding lacks was
    # one of them, and the one line saying what was wrong disappeared.
    import io

    stderr = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr("sys.stderr", stderr)
    model = tmp_path / "modèle.metarefine"
    assert main(["score", str(model), str(folders / "new"), "--output",
                 str(tmp_path / "o.csv")]) == 1
    stderr.flush()
    assert "mod\\xe8le.metarefine' not found" in stderr.buffer.getvalue().decode()
    # The summary on stdout, once the CSV was written, failed alike (status 1).
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr("sys.stdout", stdout)
    output = tmp_path / "résultats.csv"
    assert main(["score", str(fitted), str(folders / "new"), "--output", str(output),
                 "--skip-unreadable", "--no-progress"]) == 0
    stdout.flush()
    assert "r\\xe9sultats.csv" in stdout.buffer.getvalue().decode()


def test_a_reader_of_stderr_that_leaves_stops_score_without_leftovers(
    folders, fitted, tmp_path, monkeypatch
):
    # "2>&1 | head": the progress bar's last line, on closing, met the closed
    # pipe before the cleanup, and the CSV written aside was left behind.
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stderr", Gone())
    output = tmp_path / "out" / "s.csv"
    with pytest.raises(BrokenPipeError):
        main(["score", str(fitted), str(folders / "new"), "--output", str(output),
              "--skip-unreadable", "--batch-size", "1"])
    assert not output.exists() and list(tmp_path.rglob("*")) == []


def test_commands_run_in_threads_leave_stderr_as_it_was(monkeypatch):
    # Two overlapping main() calls left the process's stderr wrapped.
    import sys
    import threading

    import sklearn_metarefine.__main__ as command

    first_in, second_in, first_out = (threading.Event() for _ in range(3))

    def run(argv):
        if argv == ["first"]:
            first_in.set()
            second_in.wait(10)
        else:
            second_in.set()
            first_out.wait(10)
        return 0

    monkeypatch.setattr(command, "_main", run)
    stderr = sys.stderr
    first = threading.Thread(target=lambda: (command.main(["first"]), first_out.set()))
    second = threading.Thread(target=command.main, args=(["second"],))
    first.start()
    first_in.wait(10)
    second.start()
    first.join(10)
    second.join(10)
    assert sys.stderr is stderr


def test_a_failed_fit_removes_the_folders_it_made(
    folders, fitted, tmp_path, monkeypatch
):
    # A full disk while the model was written left the folders made for it.
    def full(*args, **kwargs):
        raise OSError(27, "File too large")

    monkeypatch.setattr("sklearn_metarefine._training.save", full)
    output = tmp_path / "new" / "sub" / "model.metarefine"
    assert main(["fit", str(folders / "train"), "--output", str(output),
                 "--skip-unreadable", "--no-progress", *TINY]) == 1
    assert list(tmp_path.iterdir()) == []
    # Nor when a folder below them cannot be made (fit and score alike).
    monkeypatch.undo()
    output = tmp_path / "new" / ("x" * 300) / "model.metarefine"
    assert main(["fit", str(folders / "train"), "--output", str(output),
                 "--skip-unreadable", "--no-progress", *TINY]) == 1
    assert list(tmp_path.iterdir()) == []
    assert main(["score", str(fitted), str(folders / "new"), "--skip-unreadable",
                 "--output", str(output.with_name("s.csv")), "--no-progress"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_fit_names_a_training_image_gone_before_its_report(
    folders, tmp_path, monkeypatch, capsys
):
    from sklearn_metarefine import MetaRefineDetector

    train = tmp_path / "train"
    shutil.copytree(folders / "train", train)
    fit = MetaRefineDetector.fit

    def fit_then_vanish(self, X, y=None):
        fit(self, X, y)
        (train / "part39.png").unlink()  # moved away by another process
        return self

    monkeypatch.setattr(MetaRefineDetector, "fit", fit_then_vanish)
    command = ["fit", str(train), "--output", str(tmp_path / "m" / "line.metarefine"),
               "--skip-unreadable", "--no-progress", *TINY]  # fmt: skip
    assert main(command) == 1
    err = capsys.readouterr().err
    assert f"image file '{train / 'part39.png'}' not found" in err
    assert "Errno None" not in err and not (tmp_path / "m" / "line.metarefine").exists()


def test_fit_takes_verbose_from_set(folders, capsys, tmp_path):
    # It was overwritten by --progress / --no-progress (1 / 0), silently.
    model = tmp_path / "verbose.metarefine"
    command = ["fit", str(folders / "train"), "--output", str(model),
               "--skip-unreadable", *TINY, "--no-progress"]
    assert main([*command, "--set", "verbose=2"]) == 0
    assert "train_loss" in capsys.readouterr().err  # the flow's epochs
    assert load(model).verbose == 0  # the model file stays quiet
    assert main(command) == 0
    assert "train_loss" not in capsys.readouterr().err


def test_score_stops_at_an_unreadable_file_and_leaves_no_csv(folders, fitted, capsys):
    output = folders / "stopped.csv"
    status = main(
        [
            "score",
            str(fitted),
            str(folders / "new"),
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "truncated.png" in error and error.startswith("metarefine score: error:")
    assert not output.exists() and not list(folders.glob(".stopped.csv.*"))


def test_score_checks_every_file_opens_before_scoring_any(
    folders, fitted, capsys, monkeypatch
):
    import sklearn_metarefine._inference as inference

    read = []
    monkeypatch.setattr(
        inference, "read_image", lambda path: read.append(path) or read_image(path)
    )
    command = ["score", str(fitted), str(folders / "new"), "--output",
               str(folders / "checked.csv"), "--batch-size", "1", "--no-progress"]
    assert main(command) == 1
    assert "truncated.png" in capsys.readouterr().err  # the last file of new/
    assert read == []
    assert main([*command, "--skip-unreadable"]) == 0
    assert len(read) == 5


def test_a_file_cut_short_in_its_pixels_opens_but_does_not_read(tmp_path):
    from sklearn_metarefine._image_files import check_image_file

    path = tmp_path / "cut.png"
    Image.fromarray(_image(np.random.RandomState(0), defect=False)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    check_image_file(path)  # the header is whole
    with pytest.raises(UnreadableImageError, match="cut.png"):
        read_image(path)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UnreadableImageError, match="text.png"):
        check_image_file(tmp_path / "text.png")


def test_score_writes_a_row_per_file(folders, fitted, capsys):
    output = folders / "results.csv"
    inputs = [str(folders / "new"), str(folders / "train" / "part01.png")]
    status = main(
        [
            "score",
            str(fitted),
            *inputs,
            "--output",
            str(output),
            "--skip-unreadable",
            "--batch-size",
            "2",
            "--no-progress",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "Skipped 1 unreadable" in out
    rows = _rows(output)
    assert list(rows[0]) == COLUMNS
    expected = [f.path for f in list_images(inputs)]
    assert [row["path"] for row in rows] == expected

    skipped = [row for row in rows if row["label"] == "skipped"]
    assert [row["path"] for row in skipped] == [str(folders / "new" / "truncated.png")]
    assert skipped[0]["anomaly_score"] == "" and "cannot read" in skipped[0]["error"]

    model = load(fitted)
    scored = [row for row in rows if row["label"] != "skipped"]
    paths = [row["path"] for row in scored]
    scores = np.array([float(row["anomaly_score"]) for row in scored])
    # The CNN computes in float32, and its last bits depend on the batch
    # an image is in: the command's batches are not these.
    assert_allclose(scores, -model.score_samples(paths), rtol=1e-5)
    labels = np.array([row["label"] for row in scored])
    assert_allclose(float(scored[0]["threshold"]), -model.offset_)
    assert {row["threshold_source"] for row in rows} == {"model"}
    predicted = np.where(model.predict(paths) == -1, "anomalous", "normal")
    np.testing.assert_array_equal(labels, predicted)
    n_anomalous = int(np.sum(labels == "anomalous"))  # the skipped file is not
    assert f"Scored {len(scored)} images: {n_anomalous} anomalous at" in out


def test_a_score_at_the_threshold_is_labelled_normal(folders, fitted, tmp_path):
    # As predict keeps a score at the boundary inside, the CSV's label does.
    files = [str(folders / "new" / f"new{i}.bmp") for i in range(4)]
    argv = ["score", str(fitted), *files, "--no-progress", "--output"]
    assert main([*argv, str(tmp_path / "first.csv")]) == 0
    scores = [row["anomaly_score"] for row in _rows(tmp_path / "first.csv")]
    for tied in scores:
        assert main([*argv, str(tmp_path / "again.csv"), "--threshold", tied]) == 0
        rows = _rows(tmp_path / "again.csv")
        assert [row["anomaly_score"] for row in rows] == scores  # the same batch
        labels = [row["label"] for row in rows]
        assert labels == [
            "normal" if float(s) <= float(tied) else "anomalous" for s in scores
        ]


def test_score_threshold_option_overrides_the_models(folders, fitted):
    output = folders / "overridden.csv"
    threshold = -1e300
    status = main(
        [
            "score",
            str(fitted),
            str(folders / "new" / "new0.bmp"),
            str(folders / "new" / "new3.bmp"),
            "--output",
            str(output),
            f"--threshold={threshold!r}",
            "--no-progress",
        ]
    )
    assert status == 0
    rows = _rows(output)
    assert {row["label"] for row in rows} == {"anomalous"}
    assert {row["threshold_source"] for row in rows} == {"--threshold"}
    assert {float(row["threshold"]) for row in rows} == {threshold}


@pytest.mark.parametrize(
    "last, extra, message",
    [
        # OneClassSVM's offset_ is an array of one: a TypeError traceback
        ("ocsvm", [], None),
        # no score_samples: an AttributeError traceback after reading the images
        ("scaler", ["--threshold", "1"], "has no score_samples"),
    ],
)
def test_pipelines_that_save_accepts_are_scored_or_refused_in_one_line(
    folders, tmp_path, capsys, last, extra, message
):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    from sklearn_metarefine import PretrainedFeatures, save

    files = [folders / "new" / f"new{i}.bmp" for i in range(4)]
    features = PretrainedFeatures("efficientnet_lite0", image_size=32, n_scales=1)
    steps = [features, StandardScaler(), *([OneClassSVM()] if last == "ocsvm" else [])]
    model = make_pipeline(*steps).fit([str(f) for f in files])
    path = tmp_path / "pipeline.metarefine"
    save(model, path)
    output = tmp_path / "scores.csv"
    argv = ["score", str(path), *map(str, files), "--output", str(output)]
    status = main([*argv, "--no-progress", *extra])
    err = capsys.readouterr().err
    if message is None:
        assert status == 0, err
        rows = _rows(output)
        expected = np.where(model.predict([str(f) for f in files]) == 1,
                            "normal", "anomalous")  # fmt: skip
        assert [row["label"] for row in rows] == list(expected)
    else:
        assert status == 1 and not output.exists()
        assert message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("fitted_first", [False, True])
def test_a_model_file_of_a_transformer_is_told_it_scores_nothing(
    folders, tmp_path, capsys, fitted_first
):
    # It was told that it scores feature vectors, not images.
    from sklearn_metarefine import PretrainedFeatures, save

    files = [str(folders / "new" / f"new{i}.bmp") for i in range(4)]
    features = PretrainedFeatures("efficientnet_lite0", image_size=32, n_scales=1)
    save(features.fit(files) if fitted_first else features, tmp_path / "f.metarefine")
    argv = ["score", str(tmp_path / "f.metarefine"), *files, "--output",
            str(tmp_path / "s.csv"), "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    expected = "has no score_samples" if fitted_first else "unfitted PretrainedFeatures"
    assert expected in err and "feature vectors" not in err


def test_outputs_that_cannot_be_written_are_refused_before_any_work(
    folders, fitted, capsys, tmp_path, monkeypatch
):
    def no_work(*args, **kwargs):
        raise AssertionError("the command started its work")

    monkeypatch.setattr("sklearn_metarefine._training.list_images", no_work)
    monkeypatch.setattr("sklearn_metarefine._inference.list_images", no_work)
    (tmp_path / "a_file").write_text("")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # a link to nothing
    new = str(folders / "new")
    cases = [
        (["fit", new, "--output", str(tmp_path)], "is a folder; give the path"),
        # A folder not made yet, named by a last "." (it failed after the fit;
        # then it was called "later", which is no folder, as "a folder").
        (["fit", new, "--output", f"{tmp_path / 'later'}/."],
         f"--output '{tmp_path / 'later'}/.' names a folder; give"),
        (["score", str(fitted), new, "--output", f"{tmp_path / 'later'}/."],
         f"--output '{tmp_path / 'later'}/.' names a folder; give"),
        (["fit", new, "--output", ""], "--output '' names a folder; give"),
        (["fit", new, "--output", str(tmp_path / "a_file" / "m")], "lies below the file"),
        (["score", str(fitted), new, "--output", str(tmp_path)], "is a folder"),
        (
            ["score", str(fitted), new, "--output", "x.csv", "--maps", str(tmp_path / "a_file")],
            "is a file; give a folder for the maps",
        ),
        # Found after the first batch was scored, as a bare errno message.
        (
            ["score", str(fitted), new, "--output", "x.csv", "--maps",
             str(tmp_path / "a_file" / "maps")],
            f"--maps {tmp_path / 'a_file' / 'maps'} lies below the file",
        ),
        # Below a link to nothing, these failed at the write, after the work.
        (["fit", new, "--output", str(tmp_path / "gone" / "m")],
         f"lies below {tmp_path / 'gone'}, a link to nothing ({tmp_path / 'nowhere'})"),
        (
            ["score", str(fitted), new, "--output", "x.csv", "--maps",
             str(tmp_path / "gone")],
            f"--maps {tmp_path / 'gone'} is a link to nothing ({tmp_path / 'nowhere'})"
            "; give a folder for the maps",
        ),
        (
            ["score", str(fitted), new, "--output", "x.csv", "--maps",
             str(tmp_path / "gone" / "maps")],
            f"lies below {tmp_path / 'gone'}, a link to nothing",
        ),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"metarefine {argv[0]}: error: --") and message in error


@pytest.mark.parametrize("threshold", ["nan", "inf", "1e400", "-1e999"])
def test_a_threshold_beyond_the_numbers_is_refused_as_written(
    folders, fitted, capsys, threshold
):
    # 1e400 was refused as "got inf".
    argv = ["score", str(fitted), str(folders / "new"), "--output", "x.csv"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, f"--threshold={threshold}"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"--threshold: must be a finite number, got {threshold}")


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--threshold", "abc", "expected a number, got 'abc'"),
        ("--seed", "abc", "expected an integer, got 'abc'"),
        ("--seed", "1.5", "expected an integer, got '1.5'"),
        ("--n-jobs", "x", "expected an integer, got 'x'"),
        ("--set", "=5", "expected NAME=VALUE, got '=5'"),  # it named no parameter
        ("--set", "k", "expected NAME=VALUE, got 'k'"),
    ],
)
def test_a_malformed_number_is_refused_in_words(
    folders, fitted, capsys, option, value, expected
):
    # argparse named the parsing function: "invalid _seed value: 'abc'".
    new = str(folders / "new")
    argv = {
        "--seed": ["fit", new, "--output", "m.metarefine"],
        "--set": ["fit", new, "--output", "m.metarefine"],
        "--n-jobs": ["benchmark"],
    }.get(option, ["score", str(fitted), new, "--output", "x.csv"])
    with pytest.raises(SystemExit) as stop:
        main([*argv, option, value])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"{option}: {expected}")


def test_a_folder_where_a_report_goes_is_refused_before_the_model_is_replaced(
    folders, capsys, tmp_path, monkeypatch
):
    # The fit ran, replaced the model file, then failed writing the report.
    def no_fit(*args, **kwargs):
        raise AssertionError("the command fitted")

    monkeypatch.setattr(MetaRefineDetector, "fit", no_fit)
    model = tmp_path / "m.metarefine"
    model.write_bytes(b"the previous model")
    (tmp_path / "m.dropped.csv").mkdir()
    argv = ["fit", str(folders / "train"), "--output", str(model), "--no-progress"]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "m.dropped.csv, where the reports next to the model go, is a folder" in error
    assert model.read_bytes() == b"the previous model"


def test_an_output_folder_that_refuses_files_is_found_before_any_work(
    folders, fitted, capsys, tmp_path, monkeypatch
):
    # A read-only (or immutable) folder was found when the model was saved,
    # after the training, with a message naming a temporary file.
    def no_work(*args, **kwargs):
        raise AssertionError("the command started its work")

    def refused(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", dir)

    monkeypatch.setattr("sklearn_metarefine._training.list_images", no_work)
    monkeypatch.setattr("sklearn_metarefine._inference.list_images", no_work)
    monkeypatch.setattr("sklearn_metarefine._image_files.tempfile.TemporaryFile", refused)
    new = str(folders / "new")
    for argv in (
        ["fit", new, "--output", str(tmp_path / "sub" / "m.metarefine")],
        ["score", str(fitted), new, "--output", str(tmp_path / "r.csv")],
    ):
        assert main(argv) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error == (
            f"metarefine {argv[0]}: error: --output {argv[-1]} cannot be written: "
            f"{tmp_path} refuses new files (Permission denied)."
        )
    assert not (tmp_path / "sub").exists()


def test_links_pipes_and_dash_are_refused_as_outputs(
    folders, fitted, capsys, tmp_path, monkeypatch
):
    # The output was renamed over them: a link to a model became a model of
    # its own, a pipe or /dev/stdout a regular file (as root), and "-" a file.
    def no_work(*args, **kwargs):
        raise AssertionError("the command started its work")

    monkeypatch.setattr(MetaRefineDetector, "fit", no_work)
    monkeypatch.setattr("sklearn_metarefine._inference._score_batch", no_work)
    target = tmp_path / "v1.metarefine"
    target.write_bytes(b"the deployed model")
    link = tmp_path / "current.metarefine"
    link.symlink_to(target)
    pipe = tmp_path / "results.csv"
    os.mkfifo(pipe)
    report = tmp_path / "fresh" / "m.dropped.csv"  # beside the model
    report.parent.mkdir()
    report.symlink_to(target)
    new = str(folders / "new")
    for argv, said in [
        (["fit", new, "--output", str(link)], "a symbolic link"),
        (["fit", new, "--output", str(report.parent / "m.metarefine")],
         "m.dropped.csv, a symbolic link"),
        (["score", str(fitted), new, "--output", str(pipe)], "not a regular file"),
        (["score", str(fitted), new, "--output", "-"], "cannot go to standard output"),
    ]:
        assert main(argv) == 1
        error = capsys.readouterr().err
        assert said in error and "Traceback" not in error
    assert link.is_symlink() and target.read_bytes() == b"the deployed model"
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert not Path("-").exists()


def test_score_keeps_a_file_named_like_its_csv_with_part(folders, fitted, tmp_path):
    # The CSV was written through the fixed name <output>.part: a user's file
    # of that name was deleted, and two runs to one output truncated each
    # other's.
    output = tmp_path / "r.csv"
    notes = tmp_path / "r.csv.part"
    notes.write_text("my notes")
    argv = ["score", str(fitted), str(folders / "new"), "--output", str(output),
            "--no-progress", "--skip-unreadable"]
    assert main(argv) == 0
    assert notes.read_text() == "my notes" and output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.csv", "r.csv.part"]


def test_a_parameter_given_twice_is_refused(folders, capsys, monkeypatch):
    # --set silently won over the option (and the last --set over the first):
    # --image-size 64 --set image_size=32 fitted at 32 px.
    seen = []

    def fit_folder(folder, output, *, params, **kwargs):
        seen.append(params)
        raise InputError("stop here")

    monkeypatch.setattr("sklearn_metarefine._training.fit_folder", fit_folder)
    fit = ["fit", str(folders / "train"), "--output", "m.metarefine"]
    for extra, said in [
        (["--image-size", "64", "--set", "image_size=32"],
         "image_size is given twice (--image-size 64 and --set image_size=32)"),
        (["--set", "k=2", "--set", "k=3"], "k is given twice (--set k=2 and --set k=3)"),
        (["--seed", "1", "--set", "random_state=2"], "(--seed 1 and"),
        (["--device", "auto", "--set", "device=cuda"], "(--device auto and"),
    ]:  # fmt: skip
        assert main(fit + extra) == 1
        assert said in capsys.readouterr().err
    assert not seen
    assert main(fit + ["--set", "device=cpu", "--set", "k=2"]) == 1
    assert "stop here" in capsys.readouterr().err
    assert seen[-1]["device"] == "cpu" and seen[-1]["k"] == 2
    assert main(fit) == 1 and seen[-1]["device"] == "auto"


def test_small_slips_get_messages_that_say_what_is_wrong(
    folders, fitted, capsys, tmp_path, monkeypatch
):
    new = folders / "new"
    # A folder given as the model was "not found".
    argv = ["score", str(folders / "models"), str(new), "--output", str(tmp_path / "r.csv")]
    assert main(argv) == 1
    assert "is a folder; give the model file" in capsys.readouterr().err
    # An --output named like an image: a later run on its folder reads it.
    for argv in (
        ["fit", str(new), "--output", str(tmp_path / "model.png"), *TINY],
        ["score", str(fitted), str(new), "--output", str(tmp_path / "results.png")],
    ):
        assert main(argv) == 1
        assert "has the suffix of an image file" in capsys.readouterr().err
        assert not (tmp_path / "model.png").exists()
    # Pillow's warning of a very large image named no file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the images: 1920 pixels
    with pytest.warns(Image.DecompressionBombWarning, match=r"new0\.bmp: Image size"):
        read_image(new / "new0.bmp")


def test_the_pixel_limit_of_a_run_can_be_raised(
    folders, fitted, capsys, tmp_path, monkeypatch
):
    # Pillow refuses images over twice its limit; line-scan images are larger,
    # and the command line had no way to read them.
    new = str(folders / "new" / "new0.bmp")  # 1920 pixels
    argv = ["score", str(fitted), new, "--output", str(tmp_path / "r.csv")]
    assert main([*argv, "--max-image-pixels", "900", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "new0.bmp" in err and "exceeds limit of 1800 pixels" in err
    assert "pass --max-image-pixels to metarefine fit and score" in err

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert main([*argv, "--max-image-pixels", "2000", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert Image.MAX_IMAGE_PIXELS == 500  # for this run only


def test_patch_level_fit_on_few_images_warns_of_its_threshold(folders, capsys, tmp_path):
    model = tmp_path / "m.metarefine"
    argv = ["fit", str(folders / "new"), "--output", str(model), "--level", "patch"]
    assert main([*argv, "--image-size", "32", "--skip-unreadable", "--no-progress"]) == 0
    assert "warning: 4 training images: with so few, the patch level" in (
        capsys.readouterr().err
    )


class _NoWork:
    """A patch-level model that fails the test if the command scores with it."""

    offset_ = -1.0

    def anomaly_map(self, X):
        raise AssertionError("the command started its work")

    score_samples = anomaly_map


def test_outputs_over_the_inputs_are_refused_before_any_work(
    folders, fitted, capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(MetaRefineDetector, "fit", _NoWork.anomaly_map)
    train, new = folders / "train", folders / "new"
    image = train / "line2" / "part04.png"
    before = {path: path.read_bytes() for path in (image, fitted, new / "new0.bmp")}
    link, hard_link = tmp_path / "link.png", tmp_path / "hard.png"
    link.symlink_to(image)
    hard_link.hardlink_to(image)
    cases = [
        # The model, or a report written beside it, over a training image.
        (["fit", str(train), "--output", str(image)], f"over {image}, a training image"),
        (["fit", str(train), "--output", str(link)], f"link (to {image})"),
        (["fit", str(train), "--output", str(hard_link)], f"over {image}, a training image"),
        # A contact sheet in the training folder: the next fit would train on it.
        (
            ["fit", str(train), "--output", str(train / "sub" / "m.metarefine")],
            f"would write images into {train}, which is searched for images: "
            f"a later run on it would take {train / 'sub' / 'm.dropped.png'} for "
            "a training image",
        ),
        (["score", str(fitted), str(new), "--output", str(new / "new0.bmp")],
         f"over {new / 'new0.bmp'}, an image to score"),
        (["score", str(fitted), str(new), "--output", str(fitted)],
         f"over {fitted}, the model file"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main([*argv, "--no-progress"]) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"metarefine {argv[0]}: error: --output ")
        assert message in error
    assert {path: path.read_bytes() for path in before} == before
    assert not (train / "sub").exists()

    # Maps over a scored image, and maps inside a scored folder.
    for maps, message in [
        (new.parent, f"--maps {new.parent} would write over {new / 'truncated.png'}"),
        (new / "maps", f"--maps {new / 'maps'} would write images into {new}"),
    ]:
        with pytest.raises(InputError, match="^" + re.escape(message)):
            score_files(_NoWork(), [new], tmp_path / "r.csv", maps=maps)
    assert not (new / "maps").exists() and not (tmp_path / "r.csv").exists()


def test_file_names_that_are_not_utf8_are_written_as_their_bytes(
    folders, fitted, tmp_path, capsys
):
    # A Latin-1 name (b"teil_\xe4.png") stopped score with "surrogates not
    # allowed" when it wrote the CSV.
    name, empty = os.fsdecode(b"teil_\xe4.png"), os.fsdecode(b"leer_\xe4.png")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes((folders / "new" / "new0.bmp").read_bytes())
    (tmp_path / "in" / empty).write_bytes(b"")
    output = tmp_path / "out.csv"
    argv = ["score", str(fitted), str(tmp_path / "in"), "--output", str(output)]
    assert main([*argv, "--skip-unreadable", "--no-progress"]) == 0
    written = output.read_bytes()
    assert os.fsencode(tmp_path / "in" / name) in written
    assert os.fsencode(tmp_path / "in" / empty) in written
    assert main(argv + ["--no-progress"]) == 1
    assert "leer_" in capsys.readouterr().err.strip().splitlines()[-1]


def test_score_makes_the_folder_of_its_output(folders, fitted, tmp_path):
    output = tmp_path / "new" / "folder" / "results.csv"
    argv = ["score", str(fitted), str(folders / "new" / "new0.bmp"), "--output"]
    assert main([*argv, str(output), "--no-progress"]) == 0
    assert [row["path"] for row in _rows(output)] == [str(folders / "new" / "new0.bmp")]


def test_maps_need_a_patch_level_model(folders, fitted, capsys):
    status = main(
        [
            "score",
            str(fitted),
            str(folders / "new" / "new0.bmp"),
            "--output",
            str(folders / "x.csv"),
            "--maps",
            str(folders / "maps"),
            "--no-progress",
        ]
    )
    assert status == 1
    assert "--maps needs a patch-level model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    """Metal surfaces at 96 px with planted holes: train/ (18 good, 2 with a
    hole, a subfolder, a corrupt file) and new/ (2 good, 2 with a hole, a
    smaller crop of a good one, a corrupt file), and the masks of the new
    images by file name."""
    data = make_surfaces(
        "metal", n_normal=22, n_anomalous=4, image_size=SURFACE_SIZE,
        defect_types="hole", random_state=0,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("surfaces")
    (root / "train" / "shift2").mkdir(parents=True)
    train = [*range(18), 22, 23]
    for n, i in enumerate(train):
        folder = root / "train" / ("shift2" if n % 3 == 0 else "")
        Image.fromarray(data.images[i]).save(folder / f"plate{n:02d}.png")
    (root / "train" / "shift2" / "corrupt.png").write_bytes(b"\x89PNG broken")
    (root / "new").mkdir()
    masks = {}
    for n, i in enumerate([18, 19, 24, 25]):
        path = root / "new" / f"plate{n}.png"
        Image.fromarray(data.images[i]).save(path)
        masks[str(path)] = data.masks[i]
    crop = data.images[20][:80, :64]
    Image.fromarray(crop).save(root / "new" / "plate4.png")
    masks[str(root / "new" / "plate4.png")] = np.zeros(crop.shape[:2], bool)
    (root / "new" / "truncated.png").write_bytes(b"")
    return root, masks


def test_patch_level_fit_then_score_writes_maps(surfaces, capsys, monkeypatch):
    root, masks = surfaces
    model_path = root / "models" / "plates.metarefine"
    embedded = []
    transform = PatchFeatures.transform

    def counting_transform(self, X):
        embedded.append(len(X))
        return transform(self, X)

    monkeypatch.setattr(PatchFeatures, "transform", counting_transform)
    status = main(
        [
            "fit", str(root / "train"), "--output", str(model_path),
            "--level", "patch", "--image-size", str(SURFACE_SIZE),
            "--device", "cpu", "--seed", "0", "--skip-unreadable", "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    # The CNN embeds the 20 readable training images once: the report of
    # flagged images reuses the scores the fit computed.
    assert embedded == [20]
    out = capsys.readouterr().out
    assert "Fitted on 20 images; the bank cleaning kept" in out
    flow = load(model_path).flow_detector_
    kept = f"the flow's cleaning kept {flow.inlier_mask_.sum()} of 20 images, and"
    assert kept in out
    model = load(model_path)
    assert isinstance(model, MetaRefineDetector) and model.level == "patch"
    assert model.detector_.bank_cleaning == "patches"
    assert model.detector_.features_.image_size_ == (SURFACE_SIZE, SURFACE_SIZE)

    training = [f.path for f in list_images([root / "train"])]
    training.remove(str(root / "train" / "shift2" / "corrupt.png"))
    skipped = _rows(model_path.with_name("plates.skipped.csv"))
    assert [row["path"] for row in skipped] == [
        str(root / "train" / "shift2" / "corrupt.png")
    ]
    flagged = _rows(model_path.with_name("plates.flagged.csv"))
    assert not model_path.with_name("plates.dropped.csv").exists()
    # Scored as if held out (against the bank without their own patches, by
    # flows fitted without them), the scores the threshold comes from: against
    # the whole bank, their patches find themselves.
    anomaly = model.train_scores_
    assert anomaly.shape == (20,) and not np.array_equal(
        anomaly, model.detector_.train_scores_
    )
    expected = sorted(
        (p for p, a in zip(training, anomaly) if a > -model.offset_),
        key=lambda p: -anomaly[training.index(p)],
    )
    assert [row["path"] for row in flagged] == expected
    # The most anomalous is a training image with a hole (plate18, plate19).
    # From 20 training images of 64 px, the fence grown from the lower half
    # of their scores is a rough one: the report lists what the model would
    # say of them were they new.
    holes = {str(root / "train" / p) for p in ("shift2/plate18.png", "plate19.png")}
    assert flagged and flagged[0]["path"] in holes
    assert model_path.with_name("plates.flagged.png").exists()

    embedded.clear()
    output, maps = root / "results.csv", root / "maps"
    status = main(
        [
            "score", str(model_path), str(root / "new"), "--output", str(output),
            "--maps", str(maps), "--skip-unreadable", "--batch-size", "3",
            "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    assert "Skipped 1 unreadable" in capsys.readouterr().out
    # The CNN embeds each readable image once, for its score and its map
    # (batches of 3; the second holds two sizes, embedded apart).
    assert embedded == [3, 1, 1]
    monkeypatch.undo()
    rows = _rows(output)
    assert list(rows[0]) == COLUMNS + MAP_COLUMNS
    assert [row["path"] for row in rows] == [
        f.path for f in list_images([root / "new"])
    ]
    (skipped,) = [row for row in rows if row["label"] == "skipped"]
    assert skipped["path"].endswith("truncated.png") and skipped["map"] == ""
    scored = [row for row in rows if row["label"] != "skipped"]
    assert len(scored) == 5
    assert sorted(p.name for p in (maps / "new").iterdir()) == sorted(
        f"plate{n}{suffix}" for n in range(5) for suffix in (".npy", ".png")
    )
    paths = [row["path"] for row in scored]
    assert_allclose(
        [float(row["anomaly_score"]) for row in scored],
        -model.score_samples(paths),
        rtol=1e-5,
    )
    defective = 0
    for row in scored:
        # One map per image at its size, also in a batch of two sizes.
        mask = masks[row["path"]]
        values = np.load(row["map_values"])
        assert values.shape == mask.shape and values.dtype == np.float32
        assert Image.open(row["map"]).size == mask.shape[::-1]
        if not mask.any():
            continue
        defective += 1
        # The map peaks on the hole: within one grid cell (8 px) of its mask.
        peak = np.unravel_index(values.argmax(), values.shape)
        assert ndimage.distance_transform_edt(~mask)[peak] <= 8
        assert row["label"] == "anomalous"
    assert defective == 2

    # A second run writes over the maps of the first, and over nothing else:
    # a photo where a map would go stops it before any work.
    argv = ["score", str(model_path), str(root / "new" / "plate0.png"), "--no-progress"]
    assert main([*argv, "--output", str(root / "again.csv"), "--maps", str(maps)]) == 0
    # A private CSV stays private (it was removed before the maps were moved
    # in, and its mode with it).
    os.chmod(root / "again.csv", 0o600)
    assert main([*argv, "--output", str(root / "again.csv"), "--maps", str(maps)]) == 0
    assert os.stat(root / "again.csv").st_mode & 0o777 == 0o600
    capsys.readouterr()
    photo = root / "photos" / "plate0.png"
    photo.parent.mkdir()
    photo.write_bytes((root / "new" / "plate1.png").read_bytes())
    before = photo.read_bytes()
    status = main([*argv, "--output", str(root / "x.csv"), "--maps", str(root / "photos")])
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"would write over {photo}, which is not a map" in error
    assert photo.read_bytes() == before and not (root / "x.csv").exists()


def _scored_with_maps(surfaces, tmp_path):
    """A patch-level model of the plates, and its score command with maps,
    run once: the model, the command, its CSV and its maps folder."""
    root, _ = surfaces
    model = tmp_path / "plates.metarefine"
    assert main(["fit", str(root / "train"), "--output", str(model), "--level", "patch",
                 "--image-size", str(SURFACE_SIZE), "--device", "cpu", "--seed", "0",
                 "--skip-unreadable", "--no-progress"]) == 0
    output, maps = tmp_path / "results.csv", tmp_path / "maps"
    command = ["score", str(model), str(root / "new"), "--output", str(output),
               "--maps", str(maps), "--skip-unreadable", "--batch-size", "2",
               "--no-progress"]
    assert main(command) == 0
    return model, command, output, maps


def test_an_interrupted_score_leaves_the_earlier_maps_and_csv(
    surfaces, tmp_path, monkeypatch
):
    # Maps were written batch by batch: Ctrl-C in the second batch left the
    # earlier CSV naming maps redrawn for another threshold.
    root, _ = surfaces
    model, command, output, maps = _scored_with_maps(surfaces, tmp_path)

    def files():
        found = [output, *maps.rglob("*")]
        return {path: path.read_bytes() for path in found if path.is_file()}

    before = files()
    assert len(before) == 1 + 2 * 5
    batches = []
    score_batch = _score_batch

    def interrupted(*args, **kwargs):
        batches.append(args)
        if len(batches) == 2:
            raise KeyboardInterrupt
        return score_batch(*args, **kwargs)

    monkeypatch.setattr("sklearn_metarefine._inference._score_batch", interrupted)
    assert main([*command, "--threshold", "1e9"]) == 130
    assert files() == before
    # Nor does it leave the folders it made: it left empty ones for the maps.
    fresh, own = tmp_path / "fresh", tmp_path / "own"
    own.mkdir()
    batches.clear()
    elsewhere = ["score", str(model), str(root / "new"), "--output",
                 str(fresh / "csv" / "results.csv"), "--maps", str(own / "maps"),
                 "--skip-unreadable", "--batch-size", "2", "--no-progress"]
    assert main(elsewhere) == 130
    assert not fresh.exists() and list(own.iterdir()) == []
    # A folder named through one that is missing is no folder it made.
    batches.clear()
    through = ["score", str(model), str(root / "new"), "--output",
               str(fresh / ".." / "own" / "results.csv"), "--skip-unreadable",
               "--batch-size", "2", "--no-progress"]
    assert main(through) == 130
    assert own.is_dir() and not fresh.exists()

    monkeypatch.undo()
    assert main([*command, "--threshold", "1e9"]) == 0
    after = files()
    assert sorted(after) == sorted(before) and after != before


def test_a_terminated_score_cleans_up_as_an_interrupted_one(
    surfaces, tmp_path, monkeypatch
):
    # SIGTERM (kill, timeout, a cancelled CI job) left hundreds of temporary
    # map files, which later runs never removed; Ctrl-C removed them.
    model, command, output, maps = _scored_with_maps(surfaces, tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    batches = []
    score_batch = _score_batch

    def terminated(*args, **kwargs):
        batches.append(args)
        if len(batches) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return score_batch(*args, **kwargs)

    def unhandled(signum, frame):  # instead of ending the test session
        raise RuntimeError("SIGTERM reached the handler outside the command")

    monkeypatch.setattr("sklearn_metarefine._inference._score_batch", terminated)
    handler = signal.signal(signal.SIGTERM, unhandled)
    try:
        status = main([*command, "--threshold", "1e9"])
        assert signal.getsignal(signal.SIGTERM) is unhandled
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert status == 143 and len(batches) == 2
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before


def test_a_reader_of_the_summary_that_leaves_is_no_error(folders, fitted, tmp_path):
    # "metarefine score ... | head -1": the summary, printed after every file
    # was written, met a closed pipe, and the command said "error: [Errno 32]
    # Broken pipe" with status 1.
    import subprocess
    import sys

    output = tmp_path / "scores.csv"
    argv = [sys.executable, "-m", "sklearn_metarefine", "score", str(fitted),
            str(folders / "new"), "--output", str(output), "--skip-unreadable",
            "--no-progress"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader leaves before the summary
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0, err
    assert "error" not in err and len(_rows(output)) == 5
    # A reader of stderr that leaves before the work is done is an error: the
    # command did not finish (it was caught as the summary's, and exit 0).
    output.unlink()
    with_progress = [arg for arg in argv if arg != "--no-progress"]  # on stderr
    process = subprocess.Popen(with_progress, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    process.stderr.close()
    process.stdout.read()
    assert process.wait(timeout=300) != 0 and not output.exists()


@pytest.mark.parametrize("command", ["fit", "score"])
def test_a_stop_while_the_commands_import_torch_is_a_stop(
    folders, tmp_path, monkeypatch, capsys, command
):
    # A SIGTERM in the seconds torch takes to import gave a traceback and
    # status 1: the imports sat outside the command's handling of a stop.
    import sys

    from sklearn_metarefine._signals import Terminated

    class Stopping:
        def find_spec(self, name, path=None, target=None):
            if name == "sklearn_metarefine._image_files":
                raise Terminated()
            return None

    monkeypatch.delitem(sys.modules, "sklearn_metarefine._image_files")
    monkeypatch.setattr(sys, "meta_path", [Stopping(), *sys.meta_path])
    argv = {
        "fit": ["fit", str(folders / "train"), "--output", str(tmp_path / "m")],
        "score": ["score", str(tmp_path / "m"), str(folders / "new"),
                  "--output", str(tmp_path / "s.csv")],
    }[command]  # fmt: skip
    assert main(argv) == 143
    assert capsys.readouterr().err.strip() == "Terminated."
    assert list(tmp_path.iterdir()) == []


def test_a_csv_where_a_map_goes_is_refused_before_any_work(
    surfaces, tmp_path, capsys, monkeypatch
):
    # The CSV replaced a map's values (exit 0, the row naming the CSV as its
    # map), or took the maps folder's name and failed after all the scoring.
    model, command, _, maps = _scored_with_maps(surfaces, tmp_path)
    values = next(maps.rglob("*.npy"))

    def no_work(*args, **kwargs):
        raise AssertionError("the command started scoring")

    monkeypatch.setattr("sklearn_metarefine._inference._score_batch", no_work)
    fresh = tmp_path / "fresh.csv"
    other = tmp_path / "other"  # whose subfolder new/ the maps would make
    alias = tmp_path / "alias"  # the maps folder by another path
    alias.symlink_to(maps)
    cases = [
        (values, maps),
        (fresh, fresh),
        (other / "new", other),
        (alias / values.relative_to(maps), maps),
        (other, other / "maps"),  # a folder the maps' folder is made in
    ]
    for output, folder in cases:
        argv = list(command)
        argv[argv.index("--output") + 1] = str(output)
        argv[argv.index("--maps") + 1] = str(folder)
        capsys.readouterr()
        assert main(argv) == 1
        error = capsys.readouterr().err
        assert "writes a map or a folder of maps" in error and "Traceback" not in error
    assert np.load(values).dtype == np.float32
    assert not fresh.exists() and not other.exists()


def test_maps_that_would_land_in_a_folder_scored_are_refused(surfaces, tmp_path, capsys):
    # Only the maps folder itself was checked: --maps given as a parent of the
    # folder scored wrote the maps among its images.
    root, _ = surfaces
    model, _, _, _ = _scored_with_maps(surfaces, tmp_path)
    scored = tmp_path / "sub"
    scored.mkdir()
    for path in sorted((root / "new").glob("*.png"))[:2]:
        Image.open(path).convert("RGB").save(scored / f"{path.stem}.jpg")
    argv = ["score", str(model), str(scored), "--output", str(tmp_path / "r.csv"),
            "--maps", str(tmp_path), "--no-progress"]  # maps go to sub/<name>.png
    capsys.readouterr()
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert f"would write images into {scored}" in error
    assert sorted(path.suffix for path in scored.iterdir()) == [".jpg", ".jpg"]


def test_a_score_stopped_among_its_renames_leaves_no_old_csv_beside_new_maps(
    surfaces, tmp_path, monkeypatch
):
    model, command, output, maps = _scored_with_maps(surfaces, tmp_path)
    replace = os.replace

    def stopped(source, target):
        if Path(target) == output:
            raise KeyboardInterrupt
        return replace(source, target)

    monkeypatch.setattr("sklearn_metarefine._inference.os.replace", stopped)
    before = {path: path.read_bytes() for path in maps.rglob("*.npy")}
    assert main([*command, "--threshold", "1e9"]) == 130
    assert not output.exists()  # the old CSV named maps of another threshold
    assert {path: path.read_bytes() for path in maps.rglob("*.npy")}.keys() == before.keys()
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_second_interruption_during_the_cleanup_leaves_no_temporary_file(
    surfaces, tmp_path, monkeypatch
):
    # The cleanup removed the maps written aside one by one; a second Ctrl-C
    # there left the rest, whose unique names no later run removes.
    _, command, output, maps = _scored_with_maps(surfaces, tmp_path)
    score_batch, unlink = _score_batch, Path.unlink
    batches, interrupted = [], []

    def stopped_batch(*args, **kwargs):
        batches.append(args)
        if len(batches) == 3:
            raise KeyboardInterrupt
        return score_batch(*args, **kwargs)

    def stopped_unlink(path, *args, **kwargs):
        if not interrupted:  # the second Ctrl-C, at the first removal
            interrupted.append(path)
            raise KeyboardInterrupt
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr("sklearn_metarefine._inference._score_batch", stopped_batch)
    monkeypatch.setattr(Path, "unlink", stopped_unlink)
    assert main([*command, "--threshold", "1e9"]) == 130
    assert interrupted and not list(tmp_path.rglob(".*.tmp"))


def test_closing_a_file_names_it_and_keeps_the_error_that_led_there(tmp_path):
    # A full disk met when the CSV was closed (its last buffer flushed) said
    # "[Errno 27] File too large" of no file, and replaced the named error of
    # a map written before.
    from sklearn_metarefine._atomic import closing_named

    class Full:
        def close(self):
            raise OSError(28, "No space left on device")

    csv_path = tmp_path / "results.csv"
    with pytest.raises(OSError, match=re.escape(f"device: '{csv_path}'")):
        with closing_named(csv_path, Full()):
            pass
    with pytest.raises(OSError, match="map.png"):
        with closing_named(csv_path, Full()):
            raise OSError(28, "No space left on device", "map.png")


def test_a_failing_or_closed_stderr_does_not_stop_the_work(
    folders, fitted, tmp_path, monkeypatch, capsys
):
    # Progress on a full disk (2>/dev/full) or a closed stderr (2>&-) stopped
    # the command at its first line, nothing written; a closed stdout failed
    # with a traceback after the CSV was written.
    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            raise OSError(28, "No space left on device")

    closed = io.StringIO()  # closed under Python: writes raise ValueError
    closed.close()
    args = [str(fitted), str(folders / "new"), "--skip-unreadable"]
    for stderr in (Full(), None, closed):
        output = tmp_path / f"{type(stderr).__name__}.csv"
        monkeypatch.setattr("sys.stderr", stderr)
        assert main(["score", *args, "--output", str(output)]) == 0
        assert len(_rows(output)) == 5
        # and a failure's message, which goes nowhere, still ends in status 1
        missing = str(tmp_path / "missing")
        assert main(["fit", missing, "--output", str(tmp_path / "m.metarefine")]) == 1
    monkeypatch.undo()
    monkeypatch.setattr("sys.stdout", None)
    assert main(["score", *args, "--output", str(tmp_path / "s.csv")]) == 0


def test_a_full_disk_while_scoring_names_the_csv(surfaces, tmp_path, monkeypatch, capsys):
    _, command, output, _ = _scored_with_maps(surfaces, tmp_path)
    old = output.read_bytes()

    class Full:
        def __init__(self, handle):
            pass

        def writerow(self, row):
            pass

        def writerows(self, rows):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("sklearn_metarefine._inference.csv.writer", Full)
    capsys.readouterr()
    assert main(command) == 1
    error = capsys.readouterr().err
    assert f"No space left on device: '{output}'" in error
    assert output.read_bytes() == old and not list(tmp_path.rglob("*.tmp"))


def test_a_map_path_that_is_a_link_is_refused(surfaces, tmp_path, capsys):
    # The map was written aside and renamed over the link, not through it.
    _, command, _, maps = _scored_with_maps(surfaces, tmp_path)
    overlay = next(maps.rglob("*.png"))
    kept = tmp_path / "kept.png"
    overlay.rename(kept)
    overlay.symlink_to(kept)
    capsys.readouterr()
    assert main(command) == 1
    assert f"would replace {overlay}, a symbolic link" in capsys.readouterr().err
    assert overlay.is_symlink()


def test_patch_level_report_with_a_float_contamination(surfaces, tmp_path):
    # A float contamination sets the threshold on the held-out training
    # scores, which the report lists, as with "auto".
    root, _ = surfaces
    model_path = tmp_path / "plates.metarefine"
    status = main(
        [
            "fit", str(root / "train"), "--output", str(model_path),
            "--level", "patch", "--image-size", str(SURFACE_SIZE),
            "--device", "cpu", "--seed", "0", "--skip-unreadable", "--no-progress",
            "--set", "contamination=0.2",
        ]
    )  # fmt: skip
    assert status == 0
    model = load(model_path)
    training = [f.path for f in list_images([root / "train"])]
    training.remove(str(root / "train" / "shift2" / "corrupt.png"))
    held_out = model.train_scores_
    expected = [p for p, a in zip(training, held_out) if a > -model.offset_]
    flagged = _rows(model_path.with_name("plates.flagged.csv"))
    assert sorted(row["path"] for row in flagged) == sorted(expected)
    assert len(expected) == 4  # 20% of the 20 readable training images


def test_patch_level_refuses_options_it_does_not_use(folders, capsys, tmp_path):
    status = main(
        [
            "fit", str(folders / "new"), "--output", str(tmp_path / "m"),
            "--level", "patch", "--max-epochs", "3", "--set", "hidden_size=8",
        ]
    )  # fmt: skip
    assert status == 1
    err = capsys.readouterr().err
    assert "hidden_size, max_epochs: not used at --level patch" in err
    assert "coreset_fraction" in err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("spelling", ["null", "None"])
def test_fit_refuses_no_backbone_before_reading_the_images(
    folders, capsys, tmp_path, spelling
):
    # It read the images, then said "could not convert string to float".
    # "None", as the docs write Python's parameters, was the text 'None'.
    argv = ["fit", str(folders / "train"), "--output", str(tmp_path / "m.metarefine"),
            "--set", f"backbone={spelling}"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Found" not in err
    assert "backbone=None fits feature vectors, not image files" in err


def test_unknown_detector_parameter_is_refused(folders, capsys, tmp_path):
    status = main(
        ["fit", str(folders / "new"), "--output", str(tmp_path / "m"), "--set", "kk=3"]
    )
    assert status == 1
    assert "kk: not a parameter of MetaRefineDetector" in capsys.readouterr().err


class _BrightnessMaps:
    """A stand-in patch-level model: the map is each pixel's brightness."""

    offset_ = -0.75

    def anomaly_map(self, images):
        return np.stack([np.asarray(i, dtype=float).mean(axis=2) / 255 for i in images])

    def score_samples(self, images):
        return -self.anomaly_map(images).max(axis=(1, 2))


def test_the_progress_bar_says_what_a_batch_is_doing(
    folders, tmp_path, capsys, monkeypatch
):
    # It moved once a batch was done: a batch of 32 camera-size photos sat
    # at 0% for over a minute.
    files = [folders / "new" / f"new{i}.bmp" for i in range(4)]
    output, maps = tmp_path / "maps.csv", tmp_path / "maps"
    bars = functools.partial(tqdm, mininterval=0)  # every note shown
    monkeypatch.setattr("sklearn_metarefine._inference.tqdm", bars)
    score_files(_BrightnessMaps(), files, output, maps=maps, batch_size=3)
    err = capsys.readouterr().err
    steps = ["reading 1/3", "reading 3/3", "scoring 3", "writing map 1/3",
             "writing map 3/3", "reading 1/1", "scoring 1", "writing map 1/1"]
    assert all(step in err for step in steps)
    assert [err.index(step) for step in steps] == sorted(
        err.index(step) for step in steps
    )


def test_the_notes_redraw_the_bar_at_most_every_mininterval(
    folders, tmp_path, capsys, monkeypatch
):
    # Each note redrew the bar: a log file (2>log) took two copies of it per
    # image, all on one line.
    files = [folders / "new" / f"new{i}.bmp" for i in range(4)]
    bars = functools.partial(tqdm, mininterval=3600)
    monkeypatch.setattr("sklearn_metarefine._inference.tqdm", bars)
    score_files(_BrightnessMaps(), files, tmp_path / "m.csv", maps=tmp_path / "m",
                batch_size=3)
    err = capsys.readouterr().err
    # "scoring", a batch's long step, is shown at once; the others, a few per
    # file, once a mininterval (never again here after the first).
    assert err.count("reading 1/3") == 1 and "scoring 3" in err and "scoring 1" in err
    assert not any(step in err for step in ("reading 3/3", "writing map 1/3",
                                            "reading 1/1"))


def test_maps_are_written_as_overlays_at_the_image_size(folders, tmp_path):
    output, maps = tmp_path / "maps.csv", tmp_path / "maps"
    files = [folders / "new" / f"new{i}.bmp" for i in range(4)]
    result = score_files(_BrightnessMaps(), files, output, maps=maps, progress=False)
    assert result.n_anomalous == 2  # the two with a white square
    rows = _rows(output)
    assert list(rows[0]) == COLUMNS + MAP_COLUMNS
    for row in rows:
        overlay = Image.open(row["map"])
        assert overlay.size == (48, 40) and overlay.mode == "RGB"
        pixels = np.asarray(overlay)
        # Red marks pixels at or above the threshold: only the white square.
        red = pixels[..., 0].astype(int) - pixels[..., 2] > 50
        assert red[20, 20] == (row["label"] == "anomalous")
        assert not red[2, 2]


def test_a_map_of_another_size_is_resized_to_the_image():
    from sklearn_metarefine._pictures import map_overlay

    pixels = np.full((40, 48), 120, np.uint8)
    small_map = np.zeros((10, 12))
    small_map[:5, :6] = 1.0
    overlay = np.asarray(map_overlay(pixels, small_map, threshold=0.5))
    assert overlay.shape == (40, 48, 3)
    red = overlay[..., 0].astype(int) - overlay[..., 2] > 50
    assert red[5, 5] and not red[35, 40]


@pytest.mark.parametrize("offset", [0.0, 4.0])
def test_overlays_are_red_exactly_where_the_map_reaches_the_threshold(offset):
    # The colours ran from the map's own lowest value: a map above the
    # threshold everywhere came out blue, and a value at the threshold of a
    # map reaching 10 cyan.
    from sklearn_metarefine._pictures import map_overlay

    values = np.linspace(0.0, 10.0, 48 * 40).reshape(40, 48) + offset
    overlay = np.asarray(map_overlay(np.zeros((40, 48), np.uint8), values, 3.0))
    colour = 2 * overlay.astype(int)  # blended half and half over black
    red = (colour[..., 0] > 120) & (colour[..., 1] < 60) & (colour[..., 2] < 60)
    np.testing.assert_array_equal(red, values >= 3.0)
    # A pixel without a number leaves the others their colours.
    values[20, 20] = np.nan  # neither the lowest nor the highest value
    again = np.asarray(map_overlay(np.zeros((40, 48), np.uint8), values, 3.0))
    others = np.isfinite(values)
    np.testing.assert_array_equal(again[others], overlay[others])


def test_overlays_draw_no_number_black_infinities_at_the_ends_and_compare_exactly():
    # A NaN pixel of a map below the threshold came out red (and a map of
    # NaN all red), +inf black, a threshold of -inf a black map, and a value
    # just below the threshold red (the map was rounded to float32 first).
    from sklearn_metarefine._pictures import map_overlay

    def colours(values, threshold):
        black = np.zeros((1, len(values)), np.uint8)
        overlay = map_overlay(black, np.array([values], dtype=np.float64), threshold)
        return 2 * np.asarray(overlay).astype(int)[0]

    def is_red(colour):
        return colour[0] > 120 and colour[1] < 60 and colour[2] < 60

    for values in ([0.0, 1.0, np.nan, 2.0], [0.0, 1.0, np.nan, 5.0], [np.nan] * 4):
        assert colours(values, 3.0)[2].tolist() == [0, 0, 0]
    inf = colours([0.0, 1.0, np.inf, -np.inf], 0.5)
    assert is_red(inf[1]) and is_red(inf[2]) and not is_red(inf[3]) and inf[3].any()
    assert all(is_red(colour) for colour in colours([0.0, 1.0, 2.0], -np.inf))
    threshold = 27.51390248162283
    near = colours([threshold - 1e-7, threshold, 20.0], threshold)
    assert not is_red(near[0]) and is_red(near[1])


def test_score_refuses_a_pickle_as_model_in_one_line(folders, capsys, tmp_path):
    model = tmp_path / "model.pkl"
    model.write_bytes(b"\x80\x04\x95" + bytes(20))
    output = tmp_path / "out.csv"
    status = main(["score", str(model), str(folders / "new"), "--output", str(output)])
    assert status == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("metarefine score: error:") and "pickle" in line
    assert not output.exists()


def test_score_takes_an_image_pipeline_and_names_an_unfitted_model(
    folders, capsys, tmp_path
):
    # Both failed with AttributeError tracebacks (no offset_).
    from sklearn.pipeline import make_pipeline

    from sklearn_metarefine import FlowDetector, IQRRefiner, PretrainedFeatures, save

    features = PretrainedFeatures(
        "efficientnet_lite0", image_size=32, n_scales=1, device="cpu", random_state=0
    )
    flow = FlowDetector(n_blocks=2, hidden_size=8, max_epochs=2, device="cpu")
    pipeline = make_pipeline(features, IQRRefiner(flow, random_state=0, max_iter=1))
    train = [f.path for f in list_images([folders / "train"]) if "corrupt" not in f.path]
    save(pipeline.fit(train), tmp_path / "pipe.metarefine")
    output = tmp_path / "pipe.csv"
    argv = ["score", str(tmp_path / "pipe.metarefine"), str(folders / "new"),
            "--output", str(output), "--skip-unreadable", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rows = [row for row in _rows(output) if row["anomaly_score"]]
    labels = pipeline.predict([row["path"] for row in rows])
    assert [row["label"] for row in rows] == [
        "anomalous" if label == -1 else "normal" for label in labels
    ]
    assert float(rows[0]["threshold"]) == -pipeline[-1].offset_

    save(MetaRefineDetector(image_size=32), tmp_path / "unfitted.metarefine")
    argv[1] = str(tmp_path / "unfitted.metarefine")
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("holds an unfitted MetaRefineDetector; fit it first "
                          "(`metarefine fit`, or fit before sklearn_metarefine.save).")


def test_an_image_scored_nan_is_labelled_anomalous_as_predict_flags_it(folders):
    # The label rule "score > threshold" called a NaN score normal, where
    # IQRRefiner.predict flags it.
    class Scores:
        def score_samples(self, images):
            return np.array([np.nan, -0.5])[: len(images)]

    files = list_images([folders / "new"])[:2]
    rows = _score_batch(Scores(), files, None, None, 1.0, "model", False, [], [])
    assert [row[2] for row in rows] == ["anomalous", "normal"]


def test_the_level_set_with_set_is_refused_for_the_level_option():
    # --set level=patch would have been dropped for --level's default, image.
    from sklearn_metarefine._training import build_detector

    said = r"level='patch': choose the level with --level"
    with pytest.raises(InputError, match=said):
        build_detector("image", {"level": "patch"})


def test_maps_keep_their_images_names_sizes_and_folder(surfaces, tmp_path, monkeypatch):
    # An unreadable file listed first shifted no map onto the next image's
    # name; images of one height and two widths are mapped apart; a folder
    # given as "." prefixes its maps by its own name.
    root, _ = surfaces
    model, *_ = _scored_with_maps(surfaces, tmp_path)
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "a_truncated.png").write_bytes(b"")
    plate = np.asarray(Image.open(root / "new" / "plate0.png"))
    Image.fromarray(plate).save(folder / "b_square.png")
    Image.fromarray(plate[:, :80]).save(folder / "c_narrow.png")
    monkeypatch.chdir(folder)
    output, maps = tmp_path / "batch.csv", tmp_path / "batch_maps"
    command = ["score", str(model), ".", "--output", str(output), "--maps", str(maps),
               "--skip-unreadable", "--no-progress"]  # fmt: skip
    assert main(command) == 0
    rows = {Path(row["path"]).name: row for row in _rows(output)}
    assert rows["a_truncated.png"]["label"] == "skipped"
    assert rows["a_truncated.png"]["map"] == ""
    for name, width in (("b_square.png", SURFACE_SIZE), ("c_narrow.png", 80)):
        assert Path(rows[name]["map"]) == maps / "batch" / name
        values = maps / "batch" / f"{Path(name).stem}.npy"
        assert Path(rows[name]["map_values"]) == values
        assert np.load(rows[name]["map_values"]).shape == (SURFACE_SIZE, width)
    written = sorted(p.name for p in maps.rglob("*.png"))
    assert written == ["b_square.png", "c_narrow.png"]


def test_no_progress_silences_the_components_of_a_saved_pipeline(
    folders, tmp_path, capsys
):
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import make_pipeline

    from sklearn_metarefine import PretrainedFeatures, save

    train = [f.path for f in list_images([folders / "train"])]
    train = [path for path in train if "corrupt" not in path]
    features = PretrainedFeatures(
        "efficientnet_lite0", image_size=32, n_scales=1, device="cpu", verbose=1
    )
    pipeline = make_pipeline(features, IsolationForest(random_state=0))
    with contextlib.redirect_stderr(io.StringIO()):
        pipeline.fit(train[:10])
    save(pipeline, tmp_path / "p.metarefine")
    capsys.readouterr()
    command = ["score", str(tmp_path / "p.metarefine"), str(folders / "new"),
               "--output", str(tmp_path / "p.csv"), "--skip-unreadable",
               "--no-progress"]  # fmt: skip
    assert main(command) == 0
    assert capsys.readouterr().err == ""
