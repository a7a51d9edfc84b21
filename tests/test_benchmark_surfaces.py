"""The benchmark on the generated surfaces: patch models, pixel metrics, maps."""

import contextlib
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from sklearn_metarefine import PatchCoreDetector, PatchFeatures
from sklearn_metarefine.__main__ import main
from sklearn_metarefine._benchmark import (
    BenchmarkError,
    load_category,
    load_masked,
    make_model,
    resolve_config,
    run_benchmark,
)
from sklearn_metarefine._benchmark import _maps
from sklearn_metarefine._benchmark._patches import image_maps
from sklearn_metarefine._benchmark._runs import Run
from sklearn_metarefine._benchmark._storage import read_run, write_json
from sklearn_metarefine.datasets import make_surfaces

# 32 px surfaces, seen at 32 px by both CNNs (a 4 x 4 patch grid), 16 good and
# 16 defective images: a run takes a fraction of a second.
TINY = {
    "surfaces": {"image_size": 32, "n_normal": 16, "n_anomalous": 16},
    "patch": {"image_size": 32, "coreset_fraction": 0.5},
    "features": {"image_size": 32, "n_scales": 1},
    "flow": {"n_blocks": 2, "hidden_size": 8, "max_epochs": 2},
    "refiner": {"max_iter": 3},
    "iforest": {"n_estimators": 10},
    "patchflow": {
        "cv": 2,
        "flow": {"n_blocks": 2, "hidden_size": 8, "max_epochs": 2, "batch_size": 64},
    },
}
PATCH = ("patchcore", "patchcore_refined", "metarefine_patch", "patchflow")
IMAGE = ("metarefine", "iforest")
PIXEL_COLUMNS = ("pixel_auroc_mean", "pixel_auroc_std", "aupro_mean", "aupro_std")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_csv(path):
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def surfaces_run(tmp_path_factory):
    """The default models of the surfaces on one category, two noise levels."""
    folder = tmp_path_factory.mktemp("surfaces")
    config_file = folder / "tiny.json"
    config_file.write_text(json.dumps(TINY))
    output = folder / "results"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(
            [
                "benchmark",
                "--dataset",
                "surfaces",
                "--categories",
                "wood",
                "--noise",
                "0",
                "0.25",
                "--repeats",
                "1",
                "--config",
                str(config_file),
                "--output",
                str(output),
                "--n-jobs",
                "1",
                "--no-progress",
            ]
        )
    assert status == 0
    return output, stdout.getvalue()


def test_surfaces_tables_have_pixel_metrics_of_the_patch_models_only(surfaces_run):
    output, printed = surfaces_run
    fields, runs = _read_csv(output / "runs.csv")
    assert {"pixel_auroc", "aupro"} <= set(fields)
    assert sorted({r["model"] for r in runs}) == sorted(PATCH + IMAGE)
    assert len(runs) == 2 * len(PATCH + IMAGE)
    for run in runs:
        assert run["error"] == ""
        assert 0.0 <= float(run["auroc"]) <= 1.0
        if run["model"] in PATCH:
            assert 0.0 <= float(run["pixel_auroc"]) <= 1.0
            assert 0.0 <= float(run["aupro"]) <= 1.0
        else:
            assert run["pixel_auroc"] == run["aupro"] == ""
        # Only the models that drop training images record removals.
        drops = run["model"] in (
            "patchcore_refined", "patchflow", "metarefine", "metarefine_patch"
        )
        assert (run["removed_good"] != "") == drops

    fields, table1 = _read_csv(output / "table1_auroc.csv")
    assert set(PIXEL_COLUMNS) <= set(fields)
    assert len(table1) == len(PATCH + IMAGE) * (1 + 1) * 2
    for row in table1:
        if row["model"] in PATCH:
            for column in PIXEL_COLUMNS:
                assert 0.0 <= float(row[column]) <= 1.0
        else:
            assert all(row[column] == "" for column in PIXEL_COLUMNS)
    results = json.loads((output / "results.json").read_text())
    assert results["config"]["dataset"] == "surfaces"
    # The category row of a single repeat holds that run's values.
    run = next(
        r
        for r in results["runs"]
        if (r["model"], r["noise"]) == ("metarefine_patch", 0.25)
    )
    row = next(
        r
        for r in results["table1"]
        if (r["model"], r["category"], r["noise"])
        == ("metarefine_patch", "wood", 0.25)
    )
    assert (row["pixel_auroc_mean"], row["aupro_mean"]) == (
        run["pixel_auroc"],
        run["aupro"],
    )

    _, table2 = _read_csv(output / "table2_removed.csv")
    assert [r["model"] for r in table2] == [
        m
        for m in ("patchcore_refined", "metarefine_patch", "patchflow", "metarefine")
        for _ in "01"
    ]
    _, table3 = _read_csv(output / "table3_threshold.csv")
    assert [r["model"] for r in table3] == [m for m in PATCH + IMAGE for _ in "01"]
    for row in table3:
        assert 0.0 <= float(row["false_alarm_mean"]) <= 1.0
        assert 0.0 <= float(row["detection_mean"]) <= 1.0

    before, pixel_text = printed.split("Table 4.")
    pixel_text, aupro_text = pixel_text.split("Table 5.")
    assert "Table 3." in before and "false alarms" in before
    for model in PATCH:
        assert model in pixel_text and model in aupro_text
    for model in IMAGE:
        assert f" {model} " not in pixel_text.split("\n", 1)[1]
    assert "30% false-positive rate" in aupro_text
    assert "anomaly_maps_wood.png" in printed


def test_surfaces_benchmark_draws_the_one_switch_models_maps(surfaces_run):
    output, _ = surfaces_run
    path = output / "anomaly_maps_wood.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    # Patch grids and pooled vectors are cached once per image set.
    assert len(list((output / "features").glob("surfaces-patches-*.npy"))) == 1
    assert len(list((output / "features").glob("surfaces-*.npy"))) == 2


def test_a_failed_patch_run_leaves_the_report_and_skips_its_figure(
    tmp_path, capsys, monkeypatch
):
    # Refitting the failed run for the figure raised again, outside any error
    # handling: a traceback, no report, and the same on every rerun.
    refits = []
    monkeypatch.setattr(_maps, "make_patch_model", lambda *a, **k: refits.append(a))
    config = {**TINY, "patchflow": {**TINY["patchflow"], "flow": {"lr": 1e8}}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    argv = [
        "benchmark", "--dataset", "surfaces", "--categories", "wood",
        "--models", "patchflow", "--noise", "0", "--repeats", "1",
        "--config", str(tmp_path / "c.json"), "--output", str(tmp_path / "out"),
        "--n-jobs", "1", "--no-progress",
    ]  # fmt: skip
    for _ in range(2):  # the first run, then the resumed one
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert "Table 1." in out and "failed" in out
        assert "anomaly-map figure of wood was not drawn: its run" in err
        lines = err.splitlines()
        assert all(line.startswith("metarefine benchmark: ") for line in lines)
        assert not (tmp_path / "out" / "anomaly_maps_wood.png").exists()
    assert not refits  # a failed run is not fitted again for its figure


def test_a_figure_that_cannot_be_drawn_is_skipped_with_a_warning(
    tmp_path, monkeypatch
):
    def fail(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(_maps, "draw_anomaly_maps", fail)
    with pytest.warns(UserWarning, match="wood was not drawn.*No space left"):
        result = run_benchmark(
            "surfaces", categories=["wood"], models=["patchcore"], noise=[0.0],
            repeats=1, config=TINY, output=tmp_path / "o", n_jobs=1, progress=False,
        )  # fmt: skip
    assert result.runs[0]["error"] is None and "Table 1." in result.report
    assert "maps_wood" not in result.files


def test_maps_from_cached_patch_grids_are_the_detectors_own_maps():
    # The benchmark fits on patch grids and resizes their maps itself; the
    # maps must be those of the detector fitted on the images.
    config = resolve_config("surfaces", TINY)
    data = make_surfaces("stone", n_normal=10, n_anomalous=3, image_size=48, random_state=0)
    train, test = data.images[:8], data.images[8:]
    on_images = PatchCoreDetector(
        image_size=32, coreset_fraction=0.5, device="cpu", random_state=0
    ).fit(train)
    features = PatchFeatures(image_size=32, device="cpu").fit(train)
    on_rows = make_model(
        "patchcore",
        random_state=0,
        device="cpu",
        config=config,
        grid_shape=features.grid_shape_,
    ).fit(features.transform(train))
    rows = features.transform(test)
    np.testing.assert_allclose(
        on_rows.score_samples(rows), on_images.score_samples(test), rtol=1e-6
    )
    np.testing.assert_allclose(
        image_maps(on_rows, rows, (48, 48), config),
        on_images.anomaly_map(test),
        rtol=1e-5,
        atol=1e-5,
    )


def test_patch_models_and_their_settings():
    config = resolve_config("surfaces", {"patch": {"k": 2.5}})
    models = {
        name: make_model(
            name, random_state=3, device="cpu", config=config, grid_shape=(4, 4)
        )
        for name in PATCH
    }
    assert models["patchcore"].bank_cleaning is None
    assert models["patchcore_refined"].bank_cleaning == "images"
    assert models["patchflow"].image_cleaning is True
    assert models["patchflow"].flow is None
    tiny = resolve_config("surfaces", TINY)
    flow = make_model("patchflow", random_state=0, device="cpu", config=tiny).flow
    assert (type(flow).__name__, flow.n_blocks, flow.max_epochs) == ("FlowDetector", 2, 2)
    switch = models["metarefine_patch"]
    assert (type(switch).__name__, switch.level) == ("MetaRefineDetector", "patch")
    for model in models.values():
        assert (model.backbone, model.grid_shape, model.k) == (None, (4, 4), 2.5)
        assert model.random_state == 3
    assert "surfaces" not in resolve_config("digits")
    with pytest.raises(BenchmarkError, match="patch models, which run on mvtec"):
        resolve_config("digits", {"patch": {"k": 2.5}})
    # MVTec AD and KolektorSDD2 have masks: their patch models see 224 px.
    for dataset in ("mvtec", "ksdd2"):
        patch = resolve_config(dataset)["patch"]
        assert patch == {**resolve_config("surfaces")["patch"], "image_size": 224}
        assert "surfaces" not in resolve_config(dataset)


def test_patch_models_run_on_the_datasets_with_masks_only(tmp_path):
    with pytest.raises(BenchmarkError, match="datasets with defect masks .*mvtec, ksdd2"):
        run_benchmark(models=["patchcore"], output=tmp_path, progress=False)
    with pytest.raises(BenchmarkError, match="concrete"):
        run_benchmark(
            "surfaces", categories=["concrete"], output=tmp_path, progress=False
        )
    # Refused before anything is written: a bad flow of patchflow, a bad fold count.
    for config, message in (
        ({"patchflow": {"flow": {"n_blokcs": 2}}}, "n_blokcs"),
        ({"patchflow": {"cv": 1}}, "'cv' parameter of PatchFlowDetector"),
    ):
        with pytest.raises(BenchmarkError, match=message):
            run_benchmark("surfaces", config=config, output=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_run_records_without_pixel_metrics_are_read_as_blank(tmp_path):
    # Records written before the pixel metrics existed still resume.
    run = Run("digit3", 0.0, 0, "lof", 7)
    record = {
        "dataset": "digits",
        "category": "digit3",
        "noise": 0.0,
        "repeat": 0,
        "model": "lof",
        "seed": 7,
        **dict.fromkeys(("n_train", "n_train_anomalous", "n_test"), 10),
        **dict.fromkeys(("auroc", "false_alarm", "detection", "seconds"), 0.5),
        **dict.fromkeys(("removed_good", "removed_bad", "n_iter", "error"), None),
        "device": "cpu",
    }
    write_json(tmp_path / f"{run.name}.json", record)
    stored = read_run(tmp_path, run)
    assert stored["pixel_auroc"] is None and stored["aupro"] is None
    assert stored["auroc"] == 0.5
    # A value of another type (an edited file) is named, not met by numpy's
    # TypeError while the report is computed.
    write_json(tmp_path / f"{run.name}.json", {**record, "auroc": "0.97"})
    with pytest.raises(BenchmarkError, match=r"auroc='0.97', not a number"):
        read_run(tmp_path, run)
    write_json(tmp_path / f"{run.name}.json", {**record, "error": 1})
    with pytest.raises(BenchmarkError, match=r"error=1, not a message"):
        read_run(tmp_path, run)


def _photographs(root, dataset):
    """An MVTec AD or KolektorSDD2 folder of 64 px metal plates with holes:
    20 good training images, 8 good and 8 defective test images, and masks
    saved at twice the images' size (the loaders do not read image sizes)."""
    data = make_surfaces(
        "metal", n_normal=28, n_anomalous=8, image_size=64,
        defect_types="hole", random_state=0,
    )  # fmt: skip
    good, bad = np.flatnonzero(data.target == 0), np.flatnonzero(data.target == 1)
    files = [("train", i, n) for n, i in enumerate(good[:20])]
    files += [("test", i, n) for n, i in enumerate([*good[20:], *bad])]
    for split, i, n in files:
        mask = np.kron(data.masks[i], np.ones((2, 2), bool)).astype(np.uint8) * 255
        if dataset == "mvtec":
            kind = "good" if data.target[i] == 0 else "hole"
            image_path = root / "plate" / split / kind / f"{n:03d}.png"
            mask_path = root / "plate" / "ground_truth" / kind / f"{n:03d}_mask.png"
        else:
            image_path = root / split / f"{split}{n:03d}.png"
            mask_path = root / split / f"{split}{n:03d}_GT.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i]).save(image_path)
        if dataset == "ksdd2" or data.target[i] == 1:
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
    return data


@pytest.mark.parametrize("dataset", ["mvtec", "ksdd2"])
def test_patch_models_score_their_maps_against_the_masks_of_photographs(
    dataset, tmp_path
):
    root = tmp_path / dataset
    data = _photographs(root, dataset)
    categories = ["plate"] if dataset == "mvtec" else None
    config = {**TINY, "patch": {"image_size": 64, "coreset_fraction": 0.5}}
    del config["surfaces"]
    masked = load_masked(dataset, (categories or ["ksdd2"])[0], root, resolve_config(dataset, config))
    # The masks as the loader pairs them, read at the CNN's 64 px: the plates'.
    holes = masked.target == 1
    assert holes.sum() == 8 and masked.masks.shape == (36, 64, 64)
    assert not masked.masks[np.flatnonzero(~holes)].any()
    expected = {data.images[i].tobytes(): data.masks[i] for i in range(len(data.target))}
    for index in np.flatnonzero(holes):
        picture = np.asarray(Image.open(masked.filenames[index]))
        np.testing.assert_array_equal(masked.masks[index][0], expected[picture.tobytes()])
        np.testing.assert_array_equal(masked.images[index][0], picture)

    result = run_benchmark(
        dataset, root=root, categories=categories, models=["patchcore", "metarefine"],
        noise=[0.0], repeats=1, config=config, output=tmp_path / "out",
        n_jobs=1, progress=False,
    )  # fmt: skip
    runs = {r["model"]: r for r in result.runs}
    assert all(r["error"] is None for r in runs.values())
    # The maps find the holes: pixel metrics where the maps meet the right
    # masks; a pairing off by one image would score about 0.5.
    assert runs["patchcore"]["pixel_auroc"] > 0.9 and runs["patchcore"]["aupro"] > 0.6
    assert runs["metarefine"]["pixel_auroc"] is None
    assert "Table 4. Pixel AUROC" in result.report
    figure = tmp_path / "out" / f"anomaly_maps_{(categories or ['ksdd2'])[0]}.png"
    assert result.files[f"maps_{figure.stem.removeprefix('anomaly_maps_')}"] == figure
    assert figure.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_pictures_of_the_map_figures_are_upright_as_the_features(tmp_path, suffix):
    # The figures drew the stored pixels of a file with an EXIF orientation,
    # sideways under maps computed from the upright image.
    from sklearn_metarefine._benchmark._data import PictureFiles

    stored = np.zeros((4, 8), dtype=np.uint8)
    stored[:, 4:] = 255  # dark left half, bright right half
    exif = Image.Exif()
    exif[0x0112] = 6  # turn a quarter clockwise to view: left comes on top
    path = tmp_path / f"turned{suffix}"
    Image.fromarray(stored).save(path, exif=exif)
    (picture,) = PictureFiles([path], 8)[0]  # a stack of one
    assert picture.shape == (8, 8, 3)
    assert picture[:3].max() < 60 and picture[-3:].min() > 200


def test_pictures_of_16_bit_images_keep_their_shades(tmp_path):
    # Converted to RGB by Pillow, 16-bit values were clipped at 255: white.
    from sklearn_metarefine._benchmark._data import PictureFiles

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).save(path)
    np.testing.assert_array_equal(PictureFiles([path], 4)[0], 128)  # stack of one


def test_an_unreadable_mask_stops_the_run_without_recording_a_failure(tmp_path):
    # It was recorded as the model's failure, and stayed one after the mask
    # was repaired ("Executed 0 of 1 runs").
    root = tmp_path / "mvtec"
    _photographs(root, "mvtec")
    mask = root / "plate" / "ground_truth" / "hole" / "008_mask.png"
    original = mask.read_bytes()
    mask.write_text("not an image")
    config = {**TINY, "patch": {"image_size": 64, "coreset_fraction": 0.5}}
    del config["surfaces"]
    grid = dict(
        categories=["plate"], models=["iforest", "patchcore"], noise=[0.0], repeats=1,
        config=config, output=tmp_path / "out", n_jobs=1, progress=False,
    )  # fmt: skip
    # Found before the dataset's files are recorded or any run is stored: found
    # in the runs, after them, the repaired mask made the folder "results of
    # other files".
    with pytest.raises(BenchmarkError, match="Cannot read the defect mask .*008"):
        run_benchmark("mvtec", root=root, **grid)
    out = tmp_path / "out"
    assert not (out / "dataset.json").exists() and not list(out.rglob("*/*.json"))
    mask.write_bytes(original)
    result = run_benchmark("mvtec", root=root, **grid)
    assert result.n_executed == 2 and [r["error"] for r in result.runs] == [None] * 2


def test_an_unreadable_ksdd2_mask_is_a_one_line_error(tmp_path, capsys):
    # load_ksdd2 reads every mask to label its image; its ValueError reached
    # the command as a traceback of 49 lines.
    root = tmp_path / "ksdd2"
    _photographs(root, "ksdd2")
    (root / "train" / "train003_GT.png").write_text("not an image")
    command = ["benchmark", "--dataset", "ksdd2", "--root", str(root), "--models",
               "lof", "--noise", "0", "--repeats", "1", "--n-jobs", "1",
               "--output", str(tmp_path / "out"), "--no-progress"]
    assert main(command) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert re.search(r"error: KolektorSDD2 mask .*train003_GT.png .* cannot be read",
                     error)


def test_a_mask_of_other_proportions_than_its_image_is_refused(tmp_path):
    # It was resized to the maps' grid, and the pixel metrics scored the maps
    # against the wrong pixels without a word.
    root = tmp_path / "mvtec"
    _photographs(root, "mvtec")  # masks at twice the images' size: accepted
    mask = root / "plate" / "ground_truth" / "hole" / "008_mask.png"
    Image.new("L", (128, 64)).save(mask)
    config = {key: TINY[key] for key in ("features", "patch")}
    with pytest.raises(BenchmarkError, match=r"008_mask.png is 128 x 64 px and its "
                       r"image .*008.png 64 x 64 px: not the same proportions"):
        run_benchmark(
            "mvtec", root=root, categories=["plate"], models=["patchcore"],
            noise=[0.0], repeats=1, config=config, output=tmp_path / "out",
            n_jobs=1, progress=False,
        )  # fmt: skip


def _plate_benchmark(tmp_path):
    """An MVTec AD folder of plates and a benchmark grid over it, run once
    with 1 repeat: the folder and the grid's arguments."""
    root = tmp_path / "mvtec"
    _photographs(root, "mvtec")
    config = {key: TINY[key] for key in ("features", "flow", "refiner")}
    grid = dict(
        categories=["plate"], models=["iforest"], noise=[0.0], config=config,
        output=tmp_path / "out", n_jobs=1, progress=False,
    )  # fmt: skip
    run_benchmark("mvtec", root=root, repeats=1, **grid)
    return root, grid


def test_results_of_other_files_of_the_dataset_folder_are_refused(tmp_path):
    # Only the folder's path was recorded: a folder extracted in part, then
    # in full, gave a table averaging runs on 20 and on 21 training images.
    root, grid = _plate_benchmark(tmp_path)
    added = root / "plate" / "train" / "good" / "020.png"
    added.write_bytes((root / "plate" / "train" / "good" / "000.png").read_bytes())
    changed = r"\(plate: image files then 36, now 37\)"
    with pytest.raises(BenchmarkError, match=changed):
        run_benchmark("mvtec", root=root, repeats=2, **grid)
    added.unlink()
    assert run_benchmark("mvtec", root=root, repeats=2, **grid).n_executed == 1


def test_an_image_replaced_by_one_of_the_same_size_is_noticed(tmp_path):
    # Paths and sizes were digested, and the feature cache keyed on paths: an
    # image replaced under its name by one of the same size kept its results
    # and its cached features.
    from sklearn_metarefine._benchmark._storage import _feature_path

    root, grid = _plate_benchmark(tmp_path)
    train = sorted((root / "plate" / "train" / "good").iterdir())
    by_size = sorted(train, key=lambda file: file.stat().st_size)
    smaller, replaced = by_size[0], by_size[-1]
    size = replaced.stat().st_size
    images = load_category("mvtec", "plate", root)[0]
    resolved = resolve_config("mvtec", grid["config"])
    cached = _feature_path(images, resolved, tmp_path / "features")
    # Another picture, padded after its end to the same number of bytes.
    data = smaller.read_bytes()
    replaced.write_bytes(data + bytes(size - len(data)))
    assert replaced.stat().st_size == size
    assert _feature_path(images, resolved, tmp_path / "features") != cached
    refused = (r"\(plate: image files 36 then and now, with other names, sizes "
               r"or contents\)")
    with pytest.raises(BenchmarkError, match=refused):
        run_benchmark("mvtec", root=root, repeats=2, **grid)


def test_results_on_other_defect_masks_are_refused(tmp_path):
    # Only the images were digested: masks redrawn between runs (KolektorSDD2's
    # labels, the pixel metrics of both datasets) gave tables averaging runs
    # on the old masks and on the new ones.
    root, grid = _plate_benchmark(tmp_path)
    mask = next((root / "plate" / "ground_truth").rglob("*_mask.png"))
    pixels = np.asarray(Image.open(mask)).copy()
    pixels[:8, :8] = 255 - pixels[:8, :8]
    Image.fromarray(pixels).save(mask)
    refused = (r"files of the dataset folder changed .*\(plate: defect masks 8 then "
               r"and now, with other names, sizes or contents\)")
    with pytest.raises(BenchmarkError, match=refused):
        run_benchmark("mvtec", root=root, repeats=2, **grid)


def test_every_missing_mvtec_category_is_named_at_once(tmp_path, capsys):
    # Only the first missing category was named: a partial download took one
    # run of the command per missing category to find out.
    root = tmp_path / "mvtec"
    _photographs(root, "mvtec")
    command = ["benchmark", "--dataset", "mvtec", "--root", str(root),
               "--categories", "plate", "bottle", "zipper", "--models", "lof",
               "--noise", "0", "--repeats", "1", "--output", str(tmp_path / "out"),
               "--no-progress"]  # fmt: skip
    assert main(command) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert "2 of the 3 MVTec AD categories have no folder" in error
    assert "bottle, zipper" in error
    assert not (tmp_path / "out").exists()


def test_a_dataset_record_without_contents_is_taken_and_completed(tmp_path):
    # Output folders of earlier versions recorded paths and sizes only.
    from sklearn_metarefine._benchmark._storage import check_dataset_files

    output = tmp_path / "out"
    (output / "runs").mkdir(parents=True)
    (output / "runs" / "a.json").write_text("{}")
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    labelled, masks = {"plate": ([image], None, None)}, {"plate": []}
    check_dataset_files(output, labelled, masks)
    record = json.loads((output / "dataset.json").read_text())
    keys = {"n_files", "sha256", "contents", "masks"}
    assert set(record["plate"]) == keys
    del record["plate"]["contents"], record["plate"]["masks"]
    (output / "dataset.json").write_text(json.dumps(record))
    check_dataset_files(output, labelled, masks)
    completed = json.loads((output / "dataset.json").read_text())
    assert set(completed["plate"]) == keys
    image.write_bytes(b"y")
    with pytest.raises(BenchmarkError, match="sizes or contents"):
        check_dataset_files(output, labelled, masks)


@pytest.mark.parametrize("sigma", [-1, "abc", None, float("nan")])
def test_a_bad_patch_sigma_is_refused_before_any_run(sigma, tmp_path):
    # -1 ran as 0; "abc" failed every run, then the command in a traceback.
    config = {**TINY, "patch": {**TINY["patch"], "sigma": sigma}}
    refused = f"patch sigma.*got {re.escape(repr(sigma))}"
    with pytest.raises(BenchmarkError, match=refused):
        run_benchmark(
            "surfaces", categories=["wood"], models=["patchcore"], noise=[0.0],
            repeats=1, config=config, output=tmp_path / "o", progress=False,
        )  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_the_map_figure_shows_the_highest_noise_and_marks_what_predict_flags(
    tmp_path, monkeypatch
):
    drawn, panels = [], []
    draw, plot = _maps.draw_anomaly_maps, _maps.plot_anomaly_maps

    def drawing(path, model, patches, surfaces, test_indices, config, title=None):
        drawn.append((model, patches, surfaces, test_indices, title))
        return draw(path, model, patches, surfaces, test_indices, config, title=title)

    def plotting(*args, titles, **kwargs):
        panels.append(titles)
        return plot(*args, titles=titles, **kwargs)

    monkeypatch.setattr(_maps, "draw_anomaly_maps", drawing)
    monkeypatch.setattr(_maps, "plot_anomaly_maps", plotting)
    run_benchmark(
        "surfaces", categories=["wood"], models=["patchcore"], noise=[0.25, 0.0],
        repeats=1, config=TINY, output=tmp_path / "o", n_jobs=1, progress=False,
    )  # fmt: skip
    [(model, patches, surfaces, test_indices, title)] = drawn
    assert "25% defective training images" in title
    target = surfaces.target[test_indices]
    good, defective = test_indices[target == 0][:2], test_indices[target == 1][:6]
    shown = np.concatenate([good, defective])
    flagged = model.predict(patches[shown].reshape(len(shown), -1)) == -1
    [titles] = panels
    assert len(titles) == len(shown) >= 3
    assert [t.endswith(" (flagged)") for t in titles] == flagged.tolist()


def test_a_patch_sigma_of_zero_is_no_smoothing_and_accepted(tmp_path):
    config = {**TINY, "patch": {**TINY["patch"], "sigma": 0}}
    result = run_benchmark(
        "surfaces", categories=["wood"], models=["patchcore"], noise=[0.0],
        repeats=1, config=config, output=tmp_path / "o", n_jobs=1, progress=False,
    )  # fmt: skip
    assert result.runs[0]["error"] is None


def test_the_seed_draws_the_generated_surfaces():
    from sklearn_metarefine._benchmark._data import generate_surfaces

    small = {"surfaces": {"image_size": 32, "n_normal": 4, "n_anomalous": 2}}
    first, again, other = (
        generate_surfaces("metal", resolve_config("surfaces", {**small, "seed": seed}))
        for seed in (0, 0, 1)
    )
    np.testing.assert_array_equal(first.images, again.images)
    assert not np.array_equal(first.images, other.images)
