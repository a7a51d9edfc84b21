"""The benchmark command: files and tables, resuming, backends, datasets, errors."""

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sklearn_metarefine.__main__ import _parser, main
from sklearn_metarefine._benchmark import (
    MODELS,
    BenchmarkError,
    _execution,
    derive_seed,
    make_model,
    resolve_config,
    run_benchmark,
)
from sklearn_metarefine._benchmark._report import (
    auroc_table,
    removal_table,
    threshold_table,
)

# Small enough that a run takes a fraction of a second on a laptop CPU.
TINY = {
    "flow": {"n_blocks": 2, "hidden_size": 8},
    "refiner": {"max_iter": 3},
    "iforest": {"n_estimators": 10},
    "lof": {"n_neighbors": 5},
}
TINY_FLAGS = ["--image-size", "32", "--max-epochs", "2"]
TINY_CONFIG = {
    **TINY,
    "features": {"image_size": 32},
    "flow": {**TINY["flow"], "max_epochs": 2},
}
GRID = {"categories": ["digit3", "digit8"], "noise": [0.0, 0.2], "repeats": 1}
GRID_FLAGS = ["--categories", "3", "8", "--noise", "0", "0.2", "--repeats", "1"]
N_RUNS = 2 * 2 * 1 * len(MODELS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _read_csv(path):
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One benchmark through the command line, on two loky workers.

    Its features are the only ones computed on digits in this module; other
    tests copy them into their output folders (the cache is keyed by the
    feature settings, so they are reused).
    """
    folder = tmp_path_factory.mktemp("reference")
    config_file = folder / "tiny.json"
    config_file.write_text(json.dumps(TINY))
    output = folder / "results"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(
            [
                "benchmark",
                *GRID_FLAGS,
                *TINY_FLAGS,
                "--config",
                str(config_file),
                "--output",
                str(output),
                "--n-jobs",
                "2",
                "--no-progress",
            ]
        )
    assert status == 0
    return output, stdout.getvalue()


@pytest.fixture
def with_features(reference, tmp_path):
    """A fresh output folder holding the reference's cached features."""
    output = tmp_path / "results"
    shutil.copytree(reference[0] / "features", output / "features")
    return output


def test_command_writes_tables_files_and_figures(reference):
    output, printed = reference
    config = json.loads((output / "config.json").read_text())
    assert config == resolve_config("digits", TINY_CONFIG)

    fields, runs = _read_csv(output / "runs.csv")
    assert fields[:5] == ["dataset", "category", "noise", "repeat", "model"]
    assert {"auroc", "removed_good", "removed_bad", "seed", "error"} <= set(fields)
    assert {"false_alarm", "detection"} <= set(fields)
    assert len(runs) == N_RUNS
    assert {(r["category"], float(r["noise"]), r["model"]) for r in runs} == {
        (c, n, m) for c in GRID["categories"] for n in GRID["noise"] for m in MODELS
    }
    for run in runs:
        assert run["error"] == ""
        assert 0.0 <= float(run["auroc"]) <= 1.0
        assert 0.0 <= float(run["false_alarm"]) <= 1.0
        assert 0.0 <= float(run["detection"]) <= 1.0
        refiner = run["model"] in ("osr", "irp", "metarefine")
        assert (run["removed_good"] != "") == refiner
        if refiner:
            assert 0 <= int(run["removed_bad"]) <= int(run["n_train_anomalous"])
    assert len(list((output / "runs").glob("*.json"))) == N_RUNS

    fields, table1 = _read_csv(output / "table1_auroc.csv")
    assert fields == [
        "model",
        "category",
        "noise",
        "auroc_mean",
        "auroc_std",
        "pixel_auroc_mean",
        "pixel_auroc_std",
        "aupro_mean",
        "aupro_std",
        "n_runs",
        "n_failed",
    ]
    assert len(table1) == len(MODELS) * (2 + 1) * 2
    # No model here has anomaly maps: the pixel metrics are blank, not zero.
    for name in ("pixel_auroc_mean", "pixel_auroc_std", "aupro_mean", "aupro_std"):
        assert {row[name] for row in table1} == {""}
    assert {run["pixel_auroc"] for run in runs} == {run["aupro"] for run in runs} == {""}
    fields, table2 = _read_csv(output / "table2_removed.csv")
    assert fields == [
        "model",
        "noise",
        "removed_good",
        "removed_bad",
        "train_good",
        "train_bad",
        "n_runs",
        "n_failed",
    ]
    assert [r["model"] for r in table2] == [
        "osr",
        "osr",
        "irp",
        "irp",
        "metarefine",
        "metarefine",
    ]

    fields, table3 = _read_csv(output / "table3_threshold.csv")
    assert fields == [
        "model",
        "noise",
        "false_alarm_mean",
        "false_alarm_std",
        "detection_mean",
        "detection_std",
        "n_runs",
        "n_failed",
    ]
    assert [(r["model"], float(r["noise"])) for r in table3] == [
        (m, n) for m in MODELS for n in GRID["noise"]
    ]

    results = json.loads((output / "results.json").read_text())
    assert results["config"] == config
    # Table 3 is the mean over categories of the runs' rates.
    lof_clean = [
        r for r in results["runs"] if r["model"] == "lof" and r["noise"] == 0.0
    ]
    row = next(r for r in results["table3"] if r["model"] == "lof" and r["noise"] == 0.0)
    assert row["false_alarm_mean"] == pytest.approx(
        np.mean([r["false_alarm"] for r in lof_clean])
    )
    assert len(results["runs"]) == N_RUNS
    assert results["table1"][0].keys() >= {"auroc_mean", "auroc_std"}
    # Table 2 totals over the two categories.
    osr_noisy = [
        r for r in results["runs"] if r["model"] == "osr" and r["noise"] == 0.2
    ]
    assert results["table2"][1]["train_bad"] == sum(
        r["n_train_anomalous"] for r in osr_noisy
    )
    # The "mean" row of Table 1 is the mean over categories.
    vanilla = {
        (r["category"], r["noise"]): r["auroc"]
        for r in results["runs"]
        if r["model"] == "vanilla"
    }
    mean_row = next(
        r
        for r in results["table1"]
        if r["model"] == "vanilla" and r["category"] == "mean" and r["noise"] == 0.0
    )
    assert mean_row["auroc_mean"] == pytest.approx(
        (vanilla["digit3", 0.0] + vanilla["digit8", 0.0]) / 2
    )

    for name in ("auroc_vs_noise.png", "auroc_vs_noise_by_category.png"):
        path = output / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()

    assert "Table 4." not in printed and "anomaly_maps" not in printed
    table1_text, table2_text = printed.split("Table 2.")
    table2_text, table3_text = table2_text.split("Table 3.")
    for model in MODELS:
        assert model in table3_text
    assert "false alarms" in table3_text
    for model in MODELS:
        assert model in table1_text
    for model in ("osr", "irp", "metarefine"):
        assert model in table2_text
    for label in ("0%", "20%", "digit3", "digit8", "mean"):
        assert label in table1_text
    assert "20%" in table2_text
    assert f"Executed {N_RUNS} of {N_RUNS} runs" in printed


def test_all_models_of_a_draw_share_its_split(reference):
    runs = json.loads((reference[0] / "results.json").read_text())["runs"]
    for category in GRID["categories"]:
        for noise in GRID["noise"]:
            cell = [r for r in runs if (r["category"], r["noise"]) == (category, noise)]
            assert (
                len(
                    {
                        (r["seed"], r["n_train"], r["n_train_anomalous"], r["n_test"])
                        for r in cell
                    }
                )
                == 1
            )
    seed = derive_seed(0, "digits", "digit3", 0)
    assert {r["seed"] for r in runs if r["category"] == "digit3"} == {seed}
    assert seed != derive_seed(0, "digits", "digit3", 1)


def test_interrupted_benchmark_resumes_with_only_the_missing_runs(
    reference, with_features, monkeypatch, capsys
):
    # Patched where _execution looks it up; n_jobs=1 keeps the runs in this process.
    run_one = _execution.run_one
    executed = []

    def interrupted_after_two(run, *args):
        if len(executed) == 2:
            raise KeyboardInterrupt
        executed.append(run)
        return run_one(run, *args)

    monkeypatch.setattr(_execution, "run_one", interrupted_after_two)
    status = main(
        [
            "benchmark",
            *GRID_FLAGS,
            *TINY_FLAGS,
            "--output",
            str(with_features),
            "--n-jobs",
            "1",
            "--no-progress",
        ]
        + _config_flags(with_features)
    )
    assert status == 130
    assert "resume" in capsys.readouterr().err
    assert len(list((with_features / "runs").glob("*.json"))) == 2
    assert not list((with_features / "runs").glob(".*"))

    first = list(executed)
    executed.clear()
    monkeypatch.setattr(
        _execution,
        "run_one",
        lambda run, *args: (executed.append(run), run_one(run, *args))[1],
    )
    result = run_benchmark(
        config=TINY_CONFIG, output=with_features, n_jobs=1, progress=False, **GRID
    )
    assert result.n_executed == N_RUNS - 2
    assert len(executed) == N_RUNS - 2 and not set(executed) & set(first)

    reference_runs = json.loads((reference[0] / "results.json").read_text())["runs"]
    # Sequential here, two loky workers in the reference: the same numbers.
    assert _without_timing(result.runs) == _without_timing(reference_runs)


def _config_flags(folder):
    path = folder.parent / "tiny.json"
    path.write_text(json.dumps(TINY))
    return ["--config", str(path)]


def test_dask_backend_gives_the_same_numbers(reference, with_features):
    distributed = pytest.importorskip("distributed")
    # One single-threaded worker in this process: torch's thread count and
    # random generators are process-wide, so threads must not share them.
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=":0",
    ) as cluster:
        result = run_benchmark(
            config=TINY_CONFIG,
            output=with_features,
            backend="dask",
            scheduler=cluster.scheduler_address,
            progress=False,
            **GRID,
        )
    assert result.n_executed == N_RUNS
    reference_runs = json.loads((reference[0] / "results.json").read_text())["runs"]
    assert _without_timing(result.runs) == _without_timing(reference_runs)


def test_dask_backend_needs_a_scheduler_and_dask(with_features, monkeypatch):
    with pytest.raises(BenchmarkError, match="scheduler"):
        run_benchmark(
            config=TINY_CONFIG,
            output=with_features,
            backend="dask",
            models=["lof"],
            progress=False,
            **GRID,
        )
    # A scheduler without backend="dask" was ignored: every run was local.
    with pytest.raises(BenchmarkError, match=r"A scheduler \(tcp://127.0.0.1:1\) "
                       "is used by backend='dask' only; add --backend dask"):
        run_benchmark(config=TINY_CONFIG, output=with_features, models=["lof"],
                      scheduler="tcp://127.0.0.1:1", progress=False, **GRID)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(
        BenchmarkError, match=r'pip install "sklearn-metarefine\[dask\]"'
    ):
        run_benchmark(
            config=TINY_CONFIG,
            output=with_features,
            backend="dask",
            scheduler="tcp://127.0.0.1:1",
            models=["lof"],
            progress=False,
            **GRID,
        )


def test_a_users_config_or_a_file_where_a_folder_goes_is_refused_first(tmp_path):
    # A user's config.json was called "a benchmark of another configuration",
    # with advice to delete the folder; a file "runs" or "features" was found
    # only after config.json and the features were written.
    output = tmp_path / "project"
    output.mkdir()
    (output / "config.json").write_text('{"flow": {"max_epochs": 2}}')
    with pytest.raises(BenchmarkError, match="holds a config.json that no benchmark "
                       "wrote .*Move it, or use another --output folder"):
        run_benchmark(config=TINY_CONFIG, output=output, models=["lof"],
                      progress=False, **GRID)  # fmt: skip
    (output / "config.json").unlink()
    for name in ("runs", "features"):
        (output / name).write_text("mine")
        with pytest.raises(BenchmarkError, match=f"holds a file {name}, where the "
                           "benchmark keeps the folder"):
            run_benchmark(config=TINY_CONFIG, output=output, models=["lof"],
                          progress=False, **GRID)  # fmt: skip
        assert sorted(p.name for p in output.iterdir()) == [name]
        (output / name).unlink()


@pytest.mark.parametrize("name", ["runs.csv", "results.json", "anomaly_maps_a.png"])
def test_a_users_files_under_the_reports_names_are_not_replaced(tmp_path, name):
    # A folder without config.json was claimed, and the user's runs.csv and
    # results.json replaced by the benchmark's without a word.
    output = tmp_path / "project"
    output.mkdir()
    (output / name).write_text("my own notes")
    (output / "features").mkdir()  # a cache copied in is no report
    with pytest.raises(BenchmarkError, match=f"holds {name} but no config.json: "
                       "files of this name are the benchmark's reports"):
        run_benchmark(config=TINY_CONFIG, output=output, models=["lof"],
                      progress=False, **GRID)  # fmt: skip
    assert (output / name).read_text() == "my own notes"
    assert sorted(p.name for p in output.iterdir()) == sorted(["features", name])


def test_output_of_another_config_is_refused(reference, capsys):
    output = reference[0]
    before = (output / "config.json").read_text()
    with pytest.raises(BenchmarkError, match=r"(?s)another configuration.*max_epochs"):
        run_benchmark(
            config={**TINY_CONFIG, "flow": {"max_epochs": 3}},
            output=output,
            progress=False,
            **GRID,
        )
    status = main(["benchmark", *GRID_FLAGS, "--output", str(output), "--no-progress"])
    assert status == 1
    error = capsys.readouterr().err
    assert "another configuration" in error and "image_size" in error
    assert (output / "config.json").read_text() == before


def test_results_without_config_are_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digit3_noise0.0000_rep0_lof.json").write_text("{}")
    with pytest.raises(BenchmarkError, match="no config.json"):
        run_benchmark(config=TINY_CONFIG, output=tmp_path, progress=False, **GRID)


def test_a_folder_claimed_without_results_says_so(tmp_path):
    # A benchmark stopped while computing features left a config.json and no
    # run: another configuration was told the folder "holds results".
    claim = {**resolve_config("digits"), "seed": 1}  # a benchmark's record
    (tmp_path / "config.json").write_text(json.dumps(claim))
    with pytest.raises(BenchmarkError, match="has finished no run yet") as error:
        run_benchmark(config=TINY_CONFIG, output=tmp_path, progress=False, **GRID)
    assert "holds results" not in str(error.value)


def test_models_subset_then_more_models_in_the_same_folder(with_features, capsys):
    status = main(
        [
            "benchmark",
            *GRID_FLAGS,
            *TINY_FLAGS,
            "--models",
            "lof",
            "iforest",
            "--output",
            str(with_features),
            "--n-jobs",
            "1",
            "--no-progress",
        ]
        + _config_flags(with_features)
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "lof" in printed and "iforest" in printed
    assert "vanilla" not in printed and "Table 2." not in printed
    _, runs = _read_csv(with_features / "runs.csv")
    assert {r["model"] for r in runs} == {"lof", "iforest"} and len(runs) == 8

    result = run_benchmark(
        config=TINY_CONFIG,
        output=with_features,
        n_jobs=1,
        models=["vanilla", "lof"],
        progress=False,
        **GRID,
    )
    assert result.n_executed == 4
    assert {r["model"] for r in result.runs} == {"vanilla", "lof"}
    assert "Table 2." not in result.report


# --- MVTec AD and KolektorSDD2 on tiny trees of their layouts ---------------


def _png(path, rng, *, mask=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask is None:
        Image.fromarray(rng.randint(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    else:
        pixels = np.zeros((24, 24), dtype=np.uint8)
        pixels[5:9, 5:9] = 255 * mask
        Image.fromarray(pixels).save(path)


@pytest.fixture
def mvtec_root(tmp_path):
    """Two categories: 12 good training images; 5 good, 8 defective test images."""
    rng = np.random.RandomState(0)
    root = tmp_path / "mvtec_ad"
    for category in ("bottle", "zipper"):
        folder = root / category
        for i in range(12):
            _png(folder / "train" / "good" / f"{i:03d}.png", rng)
        for i in range(5):
            _png(folder / "test" / "good" / f"{i:03d}.png", rng)
        for defect in ("crack", "scratch"):
            for i in range(4):
                _png(folder / "test" / defect / f"{i:03d}.png", rng)
                _png(
                    folder / "ground_truth" / defect / f"{i:03d}_mask.png", rng, mask=1
                )
    return root


def test_mvtec_noise_beyond_the_anomalies_is_refused_then_reached_with_overlap(
    mvtec_root, tmp_path, capsys
):
    # 8 defective test images, 5 kept for the balanced test set: 3 can contaminate
    # 12 good training images, i.e. noise 0.2 but not 0.3.
    command = [
        "benchmark",
        "--dataset",
        "mvtec",
        "--root",
        str(mvtec_root),
        "--categories",
        "bottle",
        "zipper",
        "--noise",
        "0",
        "0.3",
        "--repeats",
        "1",
        *TINY_FLAGS,
        "--models",
        "vanilla",
        "osr",
        "lof",
        "--output",
        str(tmp_path / "out"),
        "--n-jobs",
        "1",
        "--no-progress",
    ]
    assert main(command + _config_flags(tmp_path / "out")) == 1
    error = capsys.readouterr().err
    assert "bottle noise=0.3, zipper noise=0.3: noise=0.3 needs" in error
    assert "--overlap" in error and "--train-size" in error
    assert not (tmp_path / "out" / "runs").exists()

    assert main(command + ["--overlap"] + _config_flags(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "bottle" in printed and "zipper" in printed and "30%" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["dataset"] == "mvtec"
    assert results["config"]["contamination"]["overlap"] is True
    noisy = [r for r in results["runs"] if r["noise"] == 0.3]
    assert {r["n_train_anomalous"] for r in noisy} == {5}
    assert {r["n_test"] for r in results["runs"]} == {10}
    assert all(r["error"] is None for r in results["runs"])
    assert len(list((tmp_path / "out" / "features").glob("mvtec-*.npy"))) == 2


@pytest.fixture
def ksdd2_root(tmp_path):
    """12 good and 4 defective training images; 5 and 5 test images."""
    rng = np.random.RandomState(1)
    root = tmp_path / "ksdd2"
    for split, n_good, n_defective in (("train", 12, 4), ("test", 5, 5)):
        for i in range(n_good + n_defective):
            image_id = f"{split}{i:03d}"
            _png(root / split / f"{image_id}.png", rng)
            _png(root / split / f"{image_id}_GT.png", rng, mask=int(i >= n_good))
    return root


def test_ksdd2_benchmark_uses_the_official_split(ksdd2_root, tmp_path):
    result = run_benchmark(
        "ksdd2",
        root=ksdd2_root,
        models=["metarefine", "iforest"],
        noise=[0.0, 0.2],
        repeats=2,
        config=TINY_CONFIG,
        output=tmp_path / "out",
        n_jobs=1,
        progress=False,
    )
    assert len(result.runs) == 2 * 2 * 2
    assert {r["category"] for r in result.runs} == {"ksdd2"}
    # The test set balances the 5 good test images with 5 defective ones, the
    # 4 defective training images contaminate the training set.
    assert {r["n_test"] for r in result.runs} == {10}
    assert {
        (r["noise"], r["n_train"], r["n_train_anomalous"]) for r in result.runs
    } == {(0.0, 12, 0), (0.2, 15, 3)}
    assert [(r["model"], r["noise"]) for r in result.table2] == [
        ("metarefine", 0.0),
        ("metarefine", 0.2),
    ]
    assert "ksdd2" in result.report


def test_table2_averages_the_repeats_whose_runs_all_succeeded():
    # Totals of the successful runs were divided by every repeat: 137 good
    # training images per set read as 45.7 when two repeats of three failed.
    def record(category, repeat, error=None):
        return {
            "model": "irp", "noise": 0.2, "category": category, "repeat": repeat,
            "error": error, "removed_good": 2 + repeat, "removed_bad": 10,
            "n_train": 150, "n_train_anomalous": 13,
        }  # fmt: skip

    records = [record(c, r) for c in ("a", "b") for r in range(3)]
    records[4]["error"] = "DivergenceError: nan"  # category b, repeat 1
    (row,) = removal_table(records, [0.2], ["irp"])
    assert row["train_good"] == 2 * 137 and row["train_bad"] == 2 * 13
    assert row["removed_good"] == ((2 + 2) + (4 + 4)) / 2  # repeats 0 and 2
    assert row["n_failed"] == 1
    for failed in records:
        failed["error"] = "DivergenceError: nan"
    (row,) = removal_table(records, [0.2], ["irp"])
    assert row["train_good"] is None and row["n_failed"] == 6


def test_table3_averages_the_repeats_whose_runs_all_succeeded():
    # A repeat with a failed category would mix its other categories' rates
    # into the mean over repeats of the mean over categories.
    def record(category, repeat, false_alarm, error=None):
        return {
            "model": "flow", "noise": 0.1, "category": category, "repeat": repeat,
            "error": error, "false_alarm": false_alarm, "detection": 0.5,
        }  # fmt: skip

    records = [record("a", 0, 0.1), record("b", 0, 0.3), record("a", 1, 0.5),
               record("b", 1, None, error="DivergenceError: nan")]  # fmt: skip
    (row,) = threshold_table(records, [0.1], ["flow"])
    assert row["false_alarm_mean"] == pytest.approx(0.2)  # repeat 0 alone
    assert row["false_alarm_std"] == 0.0 and row["n_failed"] == 1


def test_tables_give_the_population_std_over_repeats():
    # ddof=0, as documented: defined for one repeat, and 0.05 for 0.9 and 0.8.
    records = [
        {"model": "flow", "category": "0", "noise": 0.1, "repeat": r, "error": None,
         "auroc": a, "pixel_auroc": None, "aupro": None,
         "false_alarm": a - 0.7, "detection": 1.0}
        for r, a in enumerate([0.9, 0.8])
    ]  # fmt: skip
    for row in auroc_table(records, ["0"], [0.1], ["flow"]):  # the digit and mean
        assert row["auroc_std"] == pytest.approx(0.05)
    (row,) = threshold_table(records, [0.1], ["flow"])
    assert row["false_alarm_std"] == pytest.approx(0.05)
    for row in auroc_table(records[:1], ["0"], [0.1], ["flow"]):
        assert row["auroc_std"] == 0.0


def test_results_of_another_dataset_folder_are_not_reused(ksdd2_root, tmp_path):
    # The output folder recorded no dataset folder: a run on another one said
    # "Executed 0 of 2 runs" and printed the first folder's results as its own.
    grid = dict(models=["iforest"], noise=[0.0], repeats=1, config=TINY_CONFIG)
    run = dict(output=tmp_path / "out", n_jobs=1, progress=False)
    first = run_benchmark("ksdd2", root=ksdd2_root, **grid, **run)
    other = tmp_path / "other"
    shutil.copytree(ksdd2_root, other)
    refused = r"another configuration.*config\['root'\]"
    with pytest.raises(BenchmarkError, match=refused):
        run_benchmark("ksdd2", root=other, **grid, **run)
    again = run_benchmark("ksdd2", root=ksdd2_root, **grid, **run)
    assert again.n_executed == 0 and again.runs == first.runs


def test_ksdd2_and_mvtec_need_a_root(tmp_path):
    with pytest.raises(BenchmarkError, match="root"):
        run_benchmark("ksdd2", output=tmp_path, progress=False)


# --- Configuration and command line ------------------------------------------


def test_resolve_config_applies_overrides_and_rejects_unknown_keys():
    config = resolve_config(
        "mvtec", {"flow": {"max_epochs": 7}, "features": {"backbone": "alexnet"}}
    )
    assert config["dataset"] == "mvtec"
    assert config["flow"]["max_epochs"] == 7
    assert config["features"]["backbone"] == "alexnet"
    assert config["features"]["image_size"] == 224
    assert resolve_config("digits")["features"]["image_size"] == 64
    with pytest.raises(BenchmarkError, match="hidden_sise"):
        resolve_config("digits", {"flow": {"hidden_sise": 8}})
    with pytest.raises(BenchmarkError, match="expected one of"):
        resolve_config("digits", {"flows": {}})
    # true passed scikit-learn's integer checks as 1: a test set of 2 images.
    for section, key in (("contamination", "test_size"), ("flow", "max_epochs"),
                         ("refiner", "min_samples")):
        with pytest.raises(BenchmarkError, match=rf"\['{key}'\] got the boolean"):
            resolve_config("digits", {section: {key: True}})
    assert resolve_config("digits", {"maml": {"first_order": True}})["maml"][
        "first_order"] is True
    # an override changes that call's configuration, not the defaults of the next
    default = resolve_config("surfaces")
    for section in ("surfaces", "patch", "flow"):
        key = next(iter(default[section]))
        changed = resolve_config("surfaces", {section: {key: 7}})
        assert changed[section][key] == 7 != default[section][key]
    assert resolve_config("surfaces") == default
    # the dataset is the call's, not a key of the file
    said = r"Unknown configuration key config\['dataset'\]"
    with pytest.raises(BenchmarkError, match=said):
        resolve_config("digits", {"dataset": "mvtec"})
    said = r"config\['surfaces'\] belongs to the surfaces"
    with pytest.raises(BenchmarkError, match=said):
        resolve_config("digits", {"surfaces": {}})
    with pytest.raises(BenchmarkError, match=r"config\['patch'\] belongs to the patch"):
        resolve_config("digits", {"patch": {}})
    assert resolve_config("digits", {"seed": 2**32 - 1})["seed"] == 2**32 - 1
    said = "integer from 0 to 4294967295, got 4294967296"
    with pytest.raises(BenchmarkError, match=said):
        resolve_config("digits", {"seed": 2**32})


def test_options_take_precedence_over_the_config_file(tmp_path):
    # As --config's help says: --image-size 32 over the file's 64.
    from sklearn_metarefine.__main__ import _overrides

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"features": {"image_size": 64, "n_scales": 2},
                                "flow": {"max_epochs": 50}}))  # fmt: skip
    argv = ["benchmark", "--config", str(path), "--image-size", "32",
            "--max-epochs", "2"]  # fmt: skip
    args = _parser().parse_args(argv)
    config = _overrides(args)
    assert config["features"] == {"image_size": 32, "n_scales": 2}
    assert config["flow"] == {"max_epochs": 2}


def test_make_model_builds_the_papers_four_models_and_two_baselines():
    config = resolve_config("digits")
    models = {
        name: make_model(name, random_state=3, device="cpu", config=config)
        for name in MODELS
    }
    assert type(models["vanilla"]).__name__ == "FlowDetector"
    assert models["osr"].max_iter == 1
    assert type(models["osr"].estimator).__name__ == "FlowDetector"
    assert models["irp"].max_iter == config["refiner"]["max_iter"]
    assert type(models["metarefine"]).__name__ == "MetaRefineDetector"
    assert models["metarefine"].backbone is None
    assert models["metarefine"].beta == config["maml"]["beta"]
    # The four flow models share the flow's configuration; metarefine applies
    # its own section on top of it.
    for name in ("vanilla", "metarefine"):
        assert models[name].n_blocks == config["flow"]["n_blocks"]
    assert models["vanilla"].pca_components == config["flow"]["pca_components"]
    for key, value in config["metarefine"].items():
        assert getattr(models["metarefine"], key) == value
    assert models["irp"].start == "full"
    assert models["irp"].estimator.max_epochs == config["flow"]["max_epochs"]
    assert models["lof"].novelty is True
    for name in ("vanilla", "osr", "irp", "metarefine", "iforest"):
        assert models[name].random_state == 3


PAPER_CONFIG = Path(__file__).parents[1] / "docs" / "_static" / "paper_config.json"

# The paper's models (Aqeel et al., ECCV 2024 workshops, on DifferNet): AlexNet
# features at 448 px, 3 scales, rotated views; a flow of 8 coupling blocks with
# 2048 hidden units on every feature (no PCA), Adam at 2e-4, batch 96, 240
# epochs; the refinement starts from every image, refits warm, fences
# in-sample scores with Tukey's k = 1.5 and iterates until nothing changes.
PAPER_FLOW = {
    "pca_components": None,
    "n_blocks": 8,
    "hidden_size": 2048,
    "batch_size": 96,
    "max_epochs": 240,
    "n_views": 4,
}
PAPER_REFINEMENT = {
    "start": "full",
    "refit": "warm",
    "fence_scores": "in_sample",
    "stop": "no_change",
    "k": 1.5,
}


@pytest.mark.parametrize("dataset", ["digits", "mvtec", "ksdd2"])
def test_paper_config_gives_the_papers_four_models(dataset):
    config = resolve_config(dataset, json.loads(PAPER_CONFIG.read_text()))
    assert config["features"] == {
        **config["features"],
        "backbone": "alexnet",
        "image_size": 448,
        "n_scales": 3,
        "n_views": 4,
    }
    models = {
        name: make_model(name, random_state=0, device="cpu", config=config)
        for name in ("vanilla", "osr", "irp", "metarefine")
    }
    flows = {
        "vanilla": models["vanilla"],
        "osr": models["osr"].estimator,
        "irp": models["irp"].estimator,
        "metarefine": models["metarefine"],
    }
    for name, flow in flows.items():
        params = flow.get_params()
        assert {key: params[key] for key in PAPER_FLOW} == PAPER_FLOW, name
    for name in ("vanilla", "osr", "irp"):
        assert flows[name].lr == 2e-4
    metarefine = models["metarefine"]
    assert metarefine.beta == 2e-4 and metarefine.alpha > 0  # MAML on
    for name in ("osr", "irp", "metarefine"):
        params = models[name].get_params()
        assert {key: params[key] for key in PAPER_REFINEMENT} == PAPER_REFINEMENT
    assert models["osr"].max_iter == 1
    assert models["irp"].max_iter is None and metarefine.max_iter is None


def test_unknown_model_and_category_are_refused(tmp_path):
    with pytest.raises(BenchmarkError, match="model 'svm'"):
        run_benchmark(models=["svm"], output=tmp_path, progress=False)
    with pytest.raises(BenchmarkError, match="digit12"):
        run_benchmark(categories=["12"], output=tmp_path, progress=False)


def test_noise_levels_that_share_a_run_file_are_refused(tmp_path):
    # 0.3 and 0.30001 both wrote runs/..._noise0.3000_...: the second run
    # overwrote the first, then was reported as "the results of another run".
    with pytest.raises(BenchmarkError, match="0.3 and 0.30001 differ beyond"):
        run_benchmark(noise=[0.3, 0.30001], output=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    # -0 is 0: one level, named and printed as 0%.
    result = run_benchmark(
        categories=["3"], models=["lof"], noise=[-0.0, 0.0], repeats=1,
        config=TINY_CONFIG, output=tmp_path / "z", n_jobs=1, progress=False,
    )  # fmt: skip
    assert [r["noise"] for r in result.runs] == [0.0]
    assert [p.name for p in (tmp_path / "z" / "runs").glob("*.json")] == [
        "digit3_noise0.0000_rep0_lof.json"
    ]
    assert "-0%" not in result.report
    # Levels of two calls: the finished run was "the results of another run",
    # and the advice to delete it threw it away.
    params = dict(categories=["3"], models=["lof"], repeats=1, config=TINY_CONFIG,
                  output=tmp_path / "y", n_jobs=1, progress=False)  # fmt: skip
    run_benchmark(noise=[0.1], **params)
    record = tmp_path / "y" / "runs" / "digit3_noise0.1000_rep0_lof.json"
    kept = record.read_bytes()
    with pytest.raises(BenchmarkError, match=r"holds the noise level 0\.1, which "
                       r"shares its file with the level 0\.10001.*--noise 0\.1 to"):
        run_benchmark(noise=[0.10001], **params)
    assert record.read_bytes() == kept


@pytest.mark.parametrize("category", ["/data/mvtec/bottle", "bottle/", "..", "a\\b"])
def test_mvtec_categories_must_be_folder_names(category, tmp_path):
    # An absolute path wrote its run files outside the output folder; "bottle/"
    # ran as another category than "bottle".
    with pytest.raises(BenchmarkError, match="is not a folder name"):
        run_benchmark(
            "mvtec", root=tmp_path, categories=[category], output=tmp_path / "o",
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_an_empty_output_path_is_refused(tmp_path, monkeypatch, capsys):
    # Path("") is ".": every output file went into the current folder.
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--output", "", "--no-progress"]) == 1
    assert "(--output) is an empty path" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_help():
    # Both commands at once: each subprocess spends seconds importing torch.
    commands = [
        [sys.executable, "-m", "sklearn_metarefine", "--help"],
        [str(Path(sys.executable).parent / "metarefine"), "benchmark", "--help"],
    ]
    # Installing the package (as the README says) installs the console script.
    assert Path(commands[1][0]).exists()
    processes = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    (top, top_error), (bench, bench_error) = [
        p.communicate(timeout=120) for p in processes
    ]
    assert [p.returncode for p in processes] == [0, 0], top_error + bench_error
    assert "benchmark" in top
    for option in (
        "--noise",
        "--models",
        "--backend",
        "--scheduler",
        "--overlap",
        "--train-size",
        "--output",
        "--n-jobs",
        "--repeats",
        "--device",
    ):
        assert option in bench


@pytest.mark.parametrize("option", ["--image-size", "--n-scales"])
@pytest.mark.parametrize("dataset", ["digits", "mvtec", "ksdd2", "surfaces"])
def test_help_states_each_datasets_feature_default(option, dataset):
    # --n-scales said "3 for digits, 1 otherwise"; the surfaces resolve to 3.
    (commands,) = [a for a in _parser()._actions if a.dest == "command"]
    (action,) = [
        a for a in commands.choices["benchmark"]._actions if option in a.option_strings
    ]
    clauses = action.help.split("(default: ")[1].rstrip(")").split(", ")
    stated = {}  # dataset (or "otherwise") -> the default the help gives it
    for clause in clauses:
        value, _, names = clause.partition(" ")
        for name in names.removeprefix("for ").split(" and "):
            stated[name] = int(value)
    key = option.removeprefix("--").replace("-", "_")
    expected = resolve_config(dataset)["features"][key]
    assert stated.get(dataset, stated["otherwise"]) == expected


def test_command_without_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "benchmark" in capsys.readouterr().out


def test_a_file_that_cannot_be_written_is_named_not_its_temporary(
    tmp_path, monkeypatch
):
    # A folder refusing new files made the error name ".table1.csv.<hex>.tmp".
    from sklearn_metarefine import _atomic
    from sklearn_metarefine._benchmark import _storage

    target = tmp_path / "table1.csv"
    refused = tmp_path / "missing" / ".table1.csv.1234.tmp"
    monkeypatch.setattr(_atomic, "temporary_name", lambda path: refused)

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    for write in (lambda: _atomic.atomic_write(target, lambda file: file.write("x")),
                  lambda: _storage.create_exclusively(target, "x")):
        with pytest.raises(OSError) as error:
            write()
        assert error.value.filename == str(target)
        assert ".tmp" not in str(error.value) and str(target) in str(error.value)
        assert not target.exists()
        monkeypatch.setattr(_storage, "atomic_write", refuse)


def test_a_long_file_name_is_written_through_a_temporary_name_that_fits(tmp_path):
    # The temporary name, 38 bytes longer, went past the 255 a name may have:
    # reports and maps of long names failed, and fit lost its model.
    from sklearn_metarefine import _atomic

    for name in ("x" * 250 + ".csv", "\u00e4" * 125 + ".csv"):
        target = tmp_path / name
        _atomic.atomic_write(target, lambda file: file.write("x"))
        assert target.read_text() == "x"
        assert len(os.fsencode(_atomic.temporary_name(target).name)) <= 255


def _counted(train_good, test_good, test_bad, train_bad=0):
    """(images, labels, split) of a dataset with these numbers of images."""
    y = np.repeat([0, 1, 0, 1], [train_good, train_bad, test_good, test_bad])
    split = np.repeat(["train", "test"], [train_good + train_bad, test_good + test_bad])
    return np.arange(len(y)), y, split.astype(object)


def test_the_documented_mvtec_and_ksdd2_commands_are_within_reach():
    # The examples of --help and of the guide asked for noise levels that
    # bottle's 63 defective images and KolektorSDD2's full training set cannot
    # give, and the command refused them.
    from sklearn_metarefine.__main__ import _BENCHMARK_EPILOG
    from sklearn_metarefine._benchmark._config import NOISE_LEVELS
    from sklearn_metarefine._benchmark._data import check_feasible

    root = Path(__file__).parents[1]
    guide = (root / "docs/user_guide/reproducing.rst").read_text()
    mvtec_options = "--categories bottle cable --overlap --noise 0 0.1 0.2"
    assert mvtec_options in _BENCHMARK_EPILOG
    assert guide.count(mvtec_options) == 2  # the paper's configuration's too
    readme = " ".join((root / "README.md").read_text().split())
    assert f"--dataset mvtec --root DIR {mvtec_options} --models" in readme
    scaling = (root / "docs/user_guide/scaling.rst").read_text()
    assert f"--root /shared/mvtec_ad \\\n       {mvtec_options}" in scaling
    assert "--dataset ksdd2 --root ~/data/ksdd2 --train-size 400" in _BENCHMARK_EPILOG
    assert "--dataset ksdd2 --root ~/data/ksdd2 \\\n        --train-size 400" in guide
    # The official counts: good training, good test and defective test images.
    mvtec = {"bottle": _counted(209, 20, 63), "cable": _counted(224, 58, 92)}
    ksdd2 = {"ksdd2": _counted(2085, 894, 110, train_bad=246)}

    def check(dataset, labelled, noise, **contamination):
        config = resolve_config(dataset, {"contamination": contamination})
        check_feasible(config, labelled, noise)

    check("mvtec", mvtec, [0.0, 0.1, 0.2], overlap=True)
    check("ksdd2", ksdd2, NOISE_LEVELS, train_size=400)
    with pytest.raises(BenchmarkError, match="bottle noise=0.3"):
        check("mvtec", mvtec, NOISE_LEVELS, overlap=True)
    with pytest.raises(BenchmarkError, match="ksdd2 noise=0.2"):
        check("ksdd2", ksdd2, NOISE_LEVELS)


def test_the_train_size_advised_reaches_every_level_requested():
    # "train_size=28 (the largest at this noise)" held at 50% only: followed,
    # it failed at 0%, which needs 28 normal training images of 20.
    from sklearn_metarefine._benchmark._data import check_feasible

    # --train-size is one for all: fabric's 20 bounds wood's 28. Sizes too
    # small to keep an anomaly fail too (7 of 60 good images and 23 defective,
    # 20 in the test set: only 5 and 6 reach 10% to 50%).
    two = {"fabric": _counted(20, 5, 19), "wood": _counted(30, 5, 19)}
    narrow = {"cat": _counted(60, 20, 23)}
    levels = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    for labelled, noise, size in ((two, [0.0, 0.5], 20), (narrow, levels, 6)):
        config = resolve_config("mvtec")
        with pytest.raises(BenchmarkError, match=r"\(the largest at this noise\).* The "
                           r"largest --train-size that reaches every requested noise "
                           rf"level and category: {size}\."):
            check_feasible(config, labelled, noise)
        sized = resolve_config("mvtec", {"contamination": {"train_size": size}})
        check_feasible(sized, labelled, noise)
        bigger = resolve_config("mvtec", {"contamination": {"train_size": size + 1}})
        with pytest.raises(BenchmarkError):
            check_feasible(bigger, labelled, noise)


def test_a_test_split_without_normal_or_defective_images_is_named():
    # A category without test/good got advice for the Python API and
    # command-line remedies that could not help.
    from sklearn_metarefine._benchmark._data import check_feasible

    cases = (((20, 0, 8), "0 normal and 8"), ((20, 6, 0), "6 normal and 0"))
    for counts, found in cases:
        with pytest.raises(BenchmarkError, match=f"category 'bottle' holds {found} "
                           r"anomalous images; .* bottle/test/good \(normal\)"):
            check_feasible(resolve_config("mvtec"), {"bottle": _counted(*counts)}, [0])
    with pytest.raises(BenchmarkError, match="where their _GT mask is empty"):
        check_feasible(resolve_config("ksdd2"), {"ksdd2": _counted(20, 0, 8)}, [0])
    # Every problem in one message: with another category's, neither was lost.
    labelled = {"bottle": _counted(20, 5, 2), "cable": _counted(20, 6, 0),
                "grid": _counted(20, 0, 3)}
    with pytest.raises(BenchmarkError) as error:
        check_feasible(resolve_config("mvtec"), labelled, [0, 0.4])
    for name in ("cable", "grid"):
        assert f"category '{name}' holds" in str(error.value)
    assert "bottle noise=0.4" in str(error.value)


def test_no_one_train_size_for_every_level_is_said():
    # 0.05 needs 10 training images to round to one anomaly, 0.4 allows at
    # most 8: the per-level sizes were offered alone, and each failed at the
    # other levels when followed.
    from sklearn_metarefine._benchmark._data import check_feasible

    labelled = {"bottle": _counted(12, 5, 8)}
    noise = [0.05, 0.3, 0.4]
    with pytest.raises(BenchmarkError, match="No one --train-size reaches every "
                       "requested noise level and category together"):
        check_feasible(resolve_config("mvtec"), labelled, noise)
    for size in range(1, 13):
        sized = resolve_config("mvtec", {"contamination": {"train_size": size}})
        with pytest.raises(BenchmarkError):
            check_feasible(sized, labelled, noise)
    # A category no size can draw from (one defective image, kept for the
    # test set) is no conflict between levels: the sentence is not said.
    labelled = {"a": _counted(40, 10, 30), "b": _counted(40, 10, 1)}
    with pytest.raises(BenchmarkError, match="b noise=0.3") as refused:
        check_feasible(resolve_config("mvtec"), labelled, [0.3])
    assert "No one --train-size" not in str(refused.value)


def _unwritable(name, error, monkeypatch):
    """Make the output's writability probe fail in the folders called ``name``
    (permissions do not bind root, who runs these tests)."""
    from sklearn_metarefine._benchmark import _storage

    temporary_file = _storage.tempfile.TemporaryFile

    def probe(*args, dir, **kwargs):
        if Path(dir).name == name:
            raise error
        return temporary_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(_storage.tempfile, "TemporaryFile", probe)


def test_a_resumed_output_folder_that_cannot_be_written_is_refused_first(
    tmp_path, monkeypatch
):
    # A read-only copy of a finished folder ran its missing work, then failed
    # with a bare "[Errno 13] Permission denied" when writing the results.
    from sklearn_metarefine._benchmark import _storage

    config = resolve_config("digits", TINY_CONFIG)
    output = tmp_path / "out"
    _storage.claim_output(output, config)
    (output / "runs").mkdir()
    _unwritable("runs", PermissionError(13, "Permission denied"), monkeypatch)
    with pytest.raises(BenchmarkError, match=r"Cannot write to .*runs \(--output\): "
                       "Permission denied"):
        _storage.claim_output(output, config)
    monkeypatch.undo()
    _storage.claim_output(output, config)


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"noise": []}, r"No noise to run \(--noise\)"),  # a KeyError after the claim
        ({"categories": []}, r"No categories to run"),  # a ZeroDivisionError, later
        ({"models": []}, r"No models to run"),
        ({"root": "data"}, "The digits dataset is bundled: --root names"),  # ignored
    ],
)
def test_empty_axes_and_a_root_for_digits_are_refused_before_any_file(
    grid, message, tmp_path
):
    with pytest.raises(BenchmarkError, match=message):
        run_benchmark(config=TINY_CONFIG, output=tmp_path / "out", progress=False,
                      **{**GRID, **grid})
    assert not (tmp_path / "out").exists()


def test_an_unreachable_dask_scheduler_is_refused_before_any_file(tmp_path):
    # It was found after the folder was claimed and every feature computed.
    pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(BenchmarkError, match="Cannot connect to the dask"):
            run_benchmark(config=TINY_CONFIG, output=tmp_path / "out",
                          backend="dask", scheduler="tcp://127.0.0.1:1",
                          models=["lof"], progress=False, **GRID)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        # A type error got the advice for noise levels out of reach.
        ({"contamination": {"overlap": "yes"}}, r"The contamination settings .*"
         r"cannot be used: The 'overlap' parameter"),
        # A bad seed was blamed on the feature settings, the first to use it.
        ({"seed": -5}, r"config\['seed'\] \(--seed\) must be an integer .* got -5"),
        ({"seed": "abc"}, r"config\['seed'\] .* got 'abc'"),
    ],
)
def test_a_bad_setting_is_named_with_its_own_remedy(config, message, tmp_path):
    with pytest.raises(BenchmarkError, match=message):
        run_benchmark(config={**TINY_CONFIG, **config}, output=tmp_path / "out",
                      progress=False, **GRID)
    assert not (tmp_path / "out").exists()


def test_offline_weights_are_explained_in_the_benchmarks_terms(tmp_path, monkeypatch):
    # The remedies named weights=..., a setting the benchmark does not take.
    import urllib.error

    from torchvision.models._api import WeightsEnum

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    config = {**TINY_CONFIG, "features": {"backbone": "alexnet", "image_size": 64}}
    with pytest.raises(BenchmarkError, match="(?s)Could not download.*alexnet.*"
                       "The benchmark takes no weights setting"):
        run_benchmark(config=config, output=tmp_path / "out", progress=False, **GRID)
    assert not (tmp_path / "out").exists()


def test_a_read_only_features_folder_is_refused_only_where_features_are_missing(
    tmp_path, monkeypatch
):
    grid = dict(config=TINY_CONFIG, output=tmp_path / "out", categories=["digit3"],
                models=["lof"], noise=[0.0], progress=False)
    run_benchmark(repeats=1, **grid)
    _unwritable("features", OSError(30, "Read-only file system"), monkeypatch)
    assert run_benchmark(repeats=2, **grid).n_executed == 1  # every feature cached
    for cached in (tmp_path / "out" / "features").iterdir():
        cached.unlink()
    with pytest.raises(BenchmarkError, match=r"Cannot write to .*features"):
        run_benchmark(repeats=3, **grid)


@pytest.mark.parametrize("record", [{"digit3": 5}, {"digit3": {"sha256": "x"}}])
def test_a_malformed_dataset_record_is_named(record, tmp_path):
    # A TypeError or KeyError reached the command as a traceback.
    from sklearn_metarefine._benchmark._storage import check_dataset_files

    output = tmp_path / "out"
    (output / "runs").mkdir(parents=True)
    (output / "runs" / "a.json").write_text("{}")
    (output / "dataset.json").write_text(json.dumps(record))
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    with pytest.raises(BenchmarkError, match="not the record of a category's files"):
        check_dataset_files(output, {"digit3": ([image], None, None)},
                            {"digit3": []})


def test_numpy_seeds_and_malformed_scheduler_addresses(tmp_path):
    # A numpy integer seed failed the configuration's JSON copy (TypeError); a
    # malformed address gave distributed's ValueError as a traceback, and its
    # half-made client held the interpreter's exit for a minute.
    assert resolve_config("digits", {"seed": np.int64(5)})["seed"] == 5
    pytest.importorskip("distributed")
    for address, said in [("justahost", "missing port"), ("x://h:1", "scheme 'x'")]:
        with pytest.raises(BenchmarkError, match=f"Cannot connect .*{said}"):
            run_benchmark(config=TINY_CONFIG, output=tmp_path / "out", backend="dask",
                          scheduler=address, progress=False, **GRID)


def test_a_section_that_is_no_object_is_refused_in_one_line_with_an_option(
    tmp_path, capsys
):
    # --max-epochs merged into {"flow": 5}: a TypeError traceback.
    config = tmp_path / "bad.json"
    config.write_text('{"flow": 5}')
    argv = ["benchmark", "--config", str(config), "--max-epochs", "1", "--models",
            "lof", *GRID_FLAGS, "--output", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert "config['flow'] is a section; override its entries with a dict" in error


def test_table3_text_marks_cells_with_failed_runs():
    # Table 1 said "(1 failed)"; Table 3 printed the mean of the runs left as if
    # it were every repeat's.
    from sklearn_metarefine._benchmark._report import _threshold_text

    row = {"model": "iforest", "noise": 0.3, "false_alarm_mean": 0.087,
           "detection_mean": 0.352, "n_failed": 1}
    _, table = _threshold_text([row], [0.3], ["iforest"], 2)
    assert "0.087 / 0.352 (1 failed)" in table


def test_scores_without_a_number_are_blamed_on_the_model(tmp_path):
    # roc_auc_score said "Input contains NaN", which blamed the data.
    from sklearn.base import BaseEstimator, OutlierMixin

    from sklearn_metarefine._benchmark._runs import Run, evaluate

    class NaNScores(OutlierMixin, BaseEstimator):
        def fit(self, X, y=None):
            return self

        def score_samples(self, X):
            return np.where(np.arange(len(X)) % 2, np.nan, 1.0)

    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(80, 4)), np.r_[np.zeros(60, int), np.ones(20, int)]
    config = resolve_config("digits", TINY_CONFIG)
    record = evaluate(NaNScores(), Run("a", 0.0, 0, "nan", 0), X, y, None, config, "cpu")
    assert record["auroc"] is None
    assert "score_samples gave" in record["error"] and "NaN" in record["error"]


def test_auroc_figures_draw_the_noise_levels_in_increasing_order(tmp_path, monkeypatch):
    # Levels given as 30% 0% 10% were joined in that order: a line from 0% to
    # 30% passing by the 10% point.
    from matplotlib.axes import Axes

    from sklearn_metarefine._benchmark._report import _plot

    drawn = []
    errorbar = Axes.errorbar

    def recorded(self, x, y, *args, **kwargs):
        drawn.append((np.asarray(x), list(y), kwargs.get("yerr"), self.get_xlabel()))
        return errorbar(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", recorded)
    noise = [0.3, 0.0, 0.1]
    cells = {
        ("lof", level): {"auroc_mean": 1 - level, "auroc_std": level / 10}
        for level in noise
    }
    _plot(tmp_path / "figure.png", [("all", cells)], noise, ["lof"], ncols=1)
    ((x, y, yerr, _),) = drawn
    assert np.all(np.diff(x) > 0) and y == [1.0, 0.9, 0.7]
    # In percent, as the axis is labelled, with the std over repeats as bars.
    np.testing.assert_allclose(x, [0.0, 10.0, 30.0])
    np.testing.assert_allclose(yerr, [0.0, 0.01, 0.03])


def test_a_category_named_twice_is_run_once():
    # "3" and "digit3" name one digit: listed twice, its runs were planned,
    # run and counted twice.
    from sklearn_metarefine._benchmark._main import _grid_axes

    categories, *_ = _grid_axes("digits", ["3", "digit3", "3"], ["lof"], [0.0])
    assert categories == ["digit3"]


def test_cached_features_of_another_kind_are_refused(tmp_path):
    # A float64 or integer file of the right length was returned as features.
    from sklearn_metarefine._benchmark._storage import _read_features

    path = tmp_path / "features.npy"
    for array, match in [
        (np.zeros((5, 8)), "float64 values, not the finite float32"),
        (np.zeros((5, 8), np.int64), "int64 values"),
        (np.full((5, 8), np.nan, np.float32), "non-finite values"),
        (np.full((5, 8), "a"), "<U1 values"),  # np.isfinite raised TypeError
    ]:
        np.save(path, array)
        with pytest.raises(BenchmarkError, match=f"{path}.*{match}.*Delete the file"):
            _read_features(path, 5)
    np.save(path, np.ones((5, 8), np.float32))
    assert _read_features(path, 5).shape == (5, 8)


@pytest.mark.parametrize("bad, said", [(np.nan, "1 NaN and 0 infinite"),
                                       (-np.inf, "0 NaN and 1 infinite")])  # fmt: skip
def test_a_run_whose_scores_are_not_numbers_blames_the_model(bad, said):
    # roc_auc_score's "Input contains infinity" blamed the data.
    from sklearn.base import BaseEstimator, OutlierMixin

    from sklearn_metarefine._benchmark._runs import Run, evaluate

    class OneBadScore(OutlierMixin, BaseEstimator):
        def fit(self, X, y=None):
            self.offset_ = -1.0
            return self

        def score_samples(self, X):
            scores = -np.abs(X[:, 0])
            scores[0] = bad
            return scores

    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(300, 4)), np.repeat([0, 1], [200, 100])
    run = Run("digit0", 0.0, 0, "custom", 0)
    record = evaluate(OneBadScore(), run, X, y, None, resolve_config("digits"), "cpu")
    message = f"ValueError: the model's score_samples gave {said}"
    assert record["error"].startswith(message)
    assert record["auroc"] is None
