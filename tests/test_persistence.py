"""Model files: identical scores after a round trip; nothing runs from a bad file."""

import hashlib
import json
import os
import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sklearn_metarefine import (
    FlowDetector,
    IQRRefiner,
    MAMLFlowDetector,
    MetaRefineDetector,
    PatchCoreDetector,
    PatchFlowDetector,
    PatchFeatures,
    PretrainedFeatures,
    load,
    save,
)
from sklearn_metarefine._persistence import ModelFileError, ModelVersionWarning

TINY_FLOW = {"n_blocks": 2, "hidden_size": 8, "max_epochs": 3, "device": "cpu"}


@pytest.fixture(scope="module")
def table():
    rng = np.random.RandomState(0)
    return np.vstack([rng.normal(size=(60, 4)), rng.normal(6, 1, size=(6, 4))])


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(1).randint(0, 256, (24, 32, 32, 3), np.uint8)


@pytest.fixture(scope="module")
def image_detector(images):
    detector = MetaRefineDetector(
        image_size=32, n_scales=2, pca_components=4, random_state=0, **TINY_FLOW
    )
    return detector.fit(images)


@pytest.fixture
def model_path(tmp_path):
    return tmp_path / "model.metarefine"


class _CreatesFile:
    """Unpickling this object opens ``path`` for writing, creating the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite(path, *, manifest=None, members=None, checksum="recompute"):
    """Rewrite a model file with a changed manifest and/or members; the
    manifest's checksum (the zip comment) is recomputed, as an edit that
    knows the format would, kept as it was ("keep") or left out (None)."""
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
        comment = archive.comment
    if manifest is not None:
        contents["manifest.json"] = json.dumps(manifest).encode()
    contents.update(members or {})
    if checksum == "recompute":
        digest = hashlib.sha256(contents["manifest.json"]).hexdigest()
        comment = b"manifest sha256 " + digest.encode()
    with zipfile.ZipFile(path, "w") as archive:
        if checksum is not None:
            archive.comment = comment
        for name, data in contents.items():
            archive.writestr(name, data)


def _manifest(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("manifest.json"))


def test_image_detector_round_trip_scores_identically(
    image_detector, images, model_path
):
    save(image_detector, model_path)
    loaded = load(model_path)
    assert type(loaded) is MetaRefineDetector
    assert loaded.get_params() == image_detector.get_params()
    assert_array_equal(
        loaded.score_samples(images), image_detector.score_samples(images)
    )
    assert_array_equal(loaded.predict(images), image_detector.predict(images))
    assert loaded.offset_ == image_detector.offset_
    assert_array_equal(loaded.removed_at_iter_, image_detector.removed_at_iter_)
    # Shared objects stay shared, so the detector's shortcuts are its pipeline's.
    assert loaded.refiner_ is loaded.pipeline_[-1]
    assert loaded.inlier_mask_ is loaded.refiner_.inlier_mask_


def test_save_to_a_folder_is_refused_naming_it(table, tmp_path):
    refiner = IQRRefiner(IsolationForest(n_estimators=5, random_state=0)).fit(table)
    with pytest.raises(IsADirectoryError, match="is a folder; save writes a model"):
        save(refiner, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_save_below_a_file_names_it_and_a_failed_save_leaves_no_folder(
    table, tmp_path, monkeypatch
):
    # mkdir said "File exists" of the file; a save that failed left the
    # folders it had made.
    refiner = IQRRefiner(IsolationForest(n_estimators=5, random_state=0)).fit(table)
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError, match="afile: it is a file"):
        save(refiner, tmp_path / "afile" / "model.metarefine")
    with pytest.raises(NotADirectoryError, match=r"sub: it lies below the file "):
        save(refiner, tmp_path / "afile" / "sub" / "model.metarefine")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match=r"gone, a link to nothing \("):
        save(refiner, tmp_path / "gone" / "sub" / "model.metarefine")
    (tmp_path / "gone").unlink()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sklearn_metarefine._persistence._archive.zipfile.ZipFile",
                        full)
    with pytest.raises(OSError, match="No space left"):
        save(refiner, tmp_path / "new" / "sub" / "model.metarefine")
    # A folder that cannot be made, below one that was.
    with pytest.raises(OSError, match="too long"):
        save(refiner, tmp_path / "new" / ("x" * 300) / "model.metarefine")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile"]
    # A loop of links is an OSError like the others (resolve raised RuntimeError).
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(OSError, match="loop"):
        save(refiner, tmp_path / "loop" / "model.metarefine")


def test_save_to_a_name_of_a_folder_or_a_link_is_refused(
    table, tmp_path, monkeypatch
):
    # "models/" was written as a file named "models", which load("models/")
    # then did not find; "" wrote a temporary file above the current folder;
    # a link was replaced by the file, its target left with the old model.
    refiner = IQRRefiner(IsolationForest(n_estimators=5, random_state=0)).fit(table)
    monkeypatch.chdir(tmp_path)
    for path in ("models/", "", "models/.", "models/.."):
        # No folder "models" exists: the path names one, it is none.
        with pytest.raises(IsADirectoryError, match=f"^'{re.escape(path)}' names a "
                           "folder; save writes"):
            save(refiner, path)
    assert list(tmp_path.iterdir()) == []
    save(refiner, "v3.metarefine")
    before = (tmp_path / "v3.metarefine").read_bytes()
    os.symlink("v3.metarefine", tmp_path / "current.metarefine")
    with pytest.raises(ValueError, match="is a symbolic link .* Save to the target"):
        save(refiner, "current.metarefine")
    assert (tmp_path / "current.metarefine").is_symlink()
    assert (tmp_path / "v3.metarefine").read_bytes() == before


def test_load_names_a_device_of_another_type(table, model_path):
    # device=0 was reported as a damaged file (ModelFileError).
    save(IQRRefiner(IsolationForest(n_estimators=5, random_state=0)).fit(table),
         model_path)  # fmt: skip
    with pytest.raises(TypeError, match="load's device must be None, a str"):
        load(model_path, device=0)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_model_file_has_the_umasks_mode(table, tmp_path, umask):
    # It was written through mkstemp, private (0600) whatever the umask,
    # unlike the reports beside it; nothing but the model is left behind.
    refiner = IQRRefiner(IsolationForest(n_estimators=5, random_state=0)).fit(table)
    previous = os.umask(umask)
    try:
        save(refiner, tmp_path / "m.metarefine")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "m.metarefine").st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.metarefine"]


def test_refiner_around_isolation_forest_round_trip(table, model_path):
    refiner = IQRRefiner(IsolationForest(random_state=0), random_state=0).fit(table)
    save(refiner, model_path)
    assert any(n.startswith("skops/") for n in zipfile.ZipFile(model_path).namelist())
    loaded = load(model_path)
    assert type(loaded.estimator_) is IsolationForest
    assert_array_equal(loaded.score_samples(table), refiner.score_samples(table))
    assert_array_equal(loaded.inlier_mask_, refiner.inlier_mask_)
    assert loaded.estimator.get_params() == refiner.estimator.get_params()


@pytest.mark.parametrize(
    "metric", ["minkowski", "euclidean", "manhattan", "chebyshev"]
)
def test_refiner_around_lof_round_trip(table, model_path, metric):
    # Each metric's fitted distance object must be a trusted type.
    lof = LocalOutlierFactor(novelty=True, metric=metric)
    refiner = IQRRefiner(lof, random_state=0).fit(table)
    save(refiner, model_path)
    assert_array_equal(
        load(model_path).score_samples(table), refiner.score_samples(table)
    )


@pytest.mark.parametrize("detector_class", [FlowDetector, MAMLFlowDetector])
def test_flow_round_trip(detector_class, table, model_path):
    detector = detector_class(pca_components=3, random_state=0, **TINY_FLOW).fit(table)
    save(detector, model_path)
    loaded = load(model_path)
    assert loaded.get_params() == detector.get_params()
    assert_array_equal(loaded.score_samples(table), detector.score_samples(table))
    assert loaded.noise_variance_ == detector.noise_variance_
    assert type(loaded.noise_variance_) is type(detector.noise_variance_)


def test_refined_flow_round_trip_and_unfitted_estimators(table, model_path):
    refiner = IQRRefiner(FlowDetector(random_state=0, **TINY_FLOW), random_state=0)
    save(refiner, model_path)
    assert not hasattr(load(model_path), "estimator_")
    refiner.fit(table)
    save(refiner, model_path)
    assert_array_equal(
        load(model_path).score_samples(table), refiner.score_samples(table)
    )


def test_unusual_parameter_values_round_trip(table, model_path, tmp_path):
    features = PretrainedFeatures(
        "efficientnet_lite0",
        image_size=(32, 48),
        n_scales=1,
        memory=joblib.Memory(tmp_path / "cache", verbose=0),
        device=torch.device("cpu"),
        random_state=np.random.RandomState(3),
    )
    features.random_state.rand(5)  # a generator part way through its stream
    features.random_state.standard_normal()  # and holding a second normal draw
    save(features, model_path)
    loaded = load(model_path)
    # It goes on where the saved one would: its position and cached draw kept.
    assert_array_equal(loaded.random_state.standard_normal(3),
                       features.random_state.standard_normal(3))  # fmt: skip
    assert_array_equal(loaded.random_state.rand(3), features.random_state.rand(3))
    assert loaded.image_size == (32, 48)
    assert features.memory is not None and loaded.memory is None
    assert loaded.device == "cpu"
    assert_array_equal(
        loaded.random_state.get_state()[1], features.random_state.get_state()[1]
    )


def test_string_arrays_keep_their_dtype(table, model_path):
    # feature_names_in_ is an object array in scikit-learn; it came back as
    # fixed-width unicode, which truncates what is later stored in it.
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(table, columns=[f"feature{i}" for i in range(table.shape[1])])
    refiner = IQRRefiner(IsolationForest(n_estimators=5, random_state=0)).fit(frame)
    save(refiner, model_path)
    loaded = load(model_path)
    assert loaded.feature_names_in_.dtype == object
    assert_array_equal(loaded.feature_names_in_, refiner.feature_names_in_)


def test_set_output_round_trips(images, model_path):
    # A transformer set to give DataFrames could not be saved at all.
    pd = pytest.importorskip("pandas")
    features = PretrainedFeatures("efficientnet_lite0", image_size=32, n_scales=1)
    pipeline = make_pipeline(features).set_output(transform="pandas").fit(images[:4])
    for model in (pipeline, pipeline[0]):
        save(model, model_path)
        loaded = load(model_path)
        out, expected = loaded.transform(images[:4]), model.transform(images[:4])
        assert isinstance(out, pd.DataFrame)
        pd.testing.assert_frame_equal(out, expected)
    manifest = _manifest(model_path)
    manifest["estimator"]["$estimator"]["output_config"] = {"$dict": {"transform": "x"}}
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match="set_output recorded"):
        load(model_path)


def test_a_cache_folder_in_a_file_is_not_used(model_path, tmp_path):
    save(MetaRefineDetector(), model_path)
    manifest = _manifest(model_path)
    manifest["estimator"]["$estimator"]["params"]["memory"] = str(tmp_path / "x")
    _rewrite(model_path, manifest=manifest)
    assert load(model_path).memory is None


def test_device_argument_replaces_every_device_parameter(image_detector, model_path):
    # Every component saved with "auto": a load that replaced only the outer
    # estimator's device passed when the nested ones were saved with "cpu".
    components = [
        image_detector,
        image_detector.pipeline_[0],
        image_detector.refiner_.estimator_,
    ]
    try:
        for component in components:
            component.set_params(device="auto")
        save(image_detector, model_path)
    finally:
        for component in components:
            component.set_params(device="cpu")
    kept = load(model_path)
    assert {kept.pipeline_[0].device, kept.refiner_.estimator_.device} == {"auto"}
    loaded = load(model_path, device="cpu")
    devices = {
        loaded.device,
        loaded.pipeline_[0].device,
        loaded.refiner_.estimator_.device,
    }
    assert devices == {"cpu"}
    assert loaded.pipeline_[0].device_ == torch.device("cpu")


def test_a_module_backbone_is_refused_with_the_reason(images, model_path):
    features = PretrainedFeatures(torch.nn.Conv2d(3, 4, 3), n_scales=1, image_size=16)
    with pytest.raises(TypeError, match="backbone is a torch.nn.Module.*holds no code"):
        save(features.fit(images), model_path)
    assert not model_path.exists()
    # The detector's own parameter was refused first, as no value a model
    # file holds, without the reason or the remedy.
    detector = MetaRefineDetector(torch.nn.Conv2d(3, 4, 3), n_scales=1, image_size=16)
    with pytest.raises(TypeError, match="^Cannot save MetaRefineDetector: its backbone "
                       "is a torch.nn.Module \\(Conv2d\\).*backbone=<name>, weights="):
        save(detector, model_path)
    assert not model_path.exists()


def _double(X):
    return 2 * X


def _assert_same_patch_outputs(loaded, detector, X):
    for method in ("score_samples", "decision_function", "predict", "anomaly_map"):
        assert_array_equal(getattr(loaded, method)(X), getattr(detector, method)(X))
    assert loaded.offset_ == detector.offset_


@pytest.mark.parametrize("bank_cleaning", [None, "patches", "images"])
def test_patch_core_detector_round_trip(bank_cleaning, images, model_path):
    detector = PatchCoreDetector(
        image_size=32, bank_cleaning=bank_cleaning, device="cpu", random_state=0
    ).fit(images)
    save(detector, model_path)
    loaded = load(model_path)
    assert type(loaded) is PatchCoreDetector
    assert loaded.get_params() == detector.get_params()
    assert type(loaded.features_) is PatchFeatures
    assert loaded.device_ == loaded.features_.device_ == torch.device("cpu")
    assert tuple(loaded.grid_shape_) == tuple(detector.grid_shape_) == (4, 4)
    assert_array_equal(loaded.memory_bank_, detector.memory_bank_)
    assert_array_equal(loaded.inlier_mask_, detector.inlier_mask_)
    maps = detector.anomaly_map(images)
    assert maps.shape == (len(images), 32, 32) and np.ptp(maps) > 0
    _assert_same_patch_outputs(loaded, detector, images)


def test_patch_rows_round_trip_with_the_inverted_file_cells(model_path, monkeypatch):
    from sklearn_metarefine._patch import _detector

    # Cells on a bank small enough for a test (else searched by brute force).
    monkeypatch.setattr(_detector, "_MIN_CELLS", 2)
    rows = np.random.RandomState(2).normal(size=(40, 32))
    detector = PatchCoreDetector(
        backbone=None, grid_shape=(4, 4), coreset_fraction=1.0, random_state=0
    ).fit(rows)
    assert len(detector.cell_offsets_) > 2  # the bank is cut into cells
    save(detector, model_path)
    loaded = load(model_path)
    assert loaded.features_ is None
    assert_array_equal(loaded.cell_centers_, detector.cell_centers_)
    _assert_same_patch_outputs(loaded, detector, rows)


@pytest.mark.parametrize("image_cleaning", [False, True])
def test_patch_flow_detector_round_trip(image_cleaning, images, model_path):
    flow = FlowDetector(pca_components=4, n_blocks=2, hidden_size=8, max_epochs=2)
    detector = PatchFlowDetector(
        flow=flow, image_size=32, image_cleaning=image_cleaning, cv=3, random_state=0
    ).fit(images)
    save(detector, model_path)
    loaded = load(model_path)
    assert type(loaded) is PatchFlowDetector
    assert type(loaded.flow_) is FlowDetector
    assert type(loaded.features_) is PatchFeatures
    assert loaded.get_params()["flow"].get_params() == flow.get_params()
    assert_array_equal(loaded.inlier_mask_, detector.inlier_mask_)
    assert_array_equal(loaded.train_scores_, detector.train_scores_)
    _assert_same_patch_outputs(loaded, detector, images)


def test_patch_level_detector_round_trip_and_device_argument(images, model_path):
    detector = MetaRefineDetector(
        level="patch", image_size=32, device="auto", random_state=0
    ).fit(images)
    save(detector, model_path)
    loaded = load(model_path, device="cpu")
    assert type(loaded.detector_) is PatchCoreDetector
    assert type(loaded.flow_detector_) is PatchFlowDetector
    assert loaded.inlier_mask_ is loaded.flow_detector_.inlier_mask_
    assert_array_equal(loaded.score_centers_, detector.score_centers_)
    assert_array_equal(loaded.score_scales_, detector.score_scales_)
    patch, flow = loaded.detector_, loaded.flow_detector_
    devices = {loaded.device, patch.device, patch.features_.device, flow.device}
    assert devices | {flow.flow_.device} == {"cpu"}
    assert next(flow.flow_.net_.module_.parameters()).device == torch.device("cpu")
    assert loaded.detector_.device_ == torch.device("cpu")
    assert loaded.detector_.features_.device_ == torch.device("cpu")
    _assert_same_patch_outputs(loaded, detector, images)
    assert loaded.get_params() == detector.set_params(device="cpu").get_params()


def test_patch_level_file_of_the_bank_alone_still_scores(images, model_path):
    # Files saved before the patch level paired its bank with a flow hold the
    # bank alone, which scored, mapped and set the threshold by itself.
    detector = MetaRefineDetector(level="patch", image_size=32, random_state=0)
    detector.fit(images)
    bank = detector.detector_
    for name in ("flow_detector_", "score_centers_", "score_scales_"):
        delattr(detector, name)
    detector.inlier_mask_, detector.offset_ = bank.inlier_mask_, bank.offset_
    save(detector, model_path)
    loaded = load(model_path)
    assert not hasattr(loaded, "flow_detector_")
    _assert_same_patch_outputs(loaded, bank, images)
    scores, maps = loaded._scores_and_maps(images)
    assert_array_equal(scores, bank.score_samples(images))
    assert_array_equal(maps, bank.anomaly_map(images))


def test_patch_models_unfitted_and_with_a_module_backbone(images, model_path):
    save(MetaRefineDetector(level="patch"), model_path)
    assert not hasattr(load(model_path), "detector_")
    # an unfitted detector loads unfitted: scoring says so, not AttributeError
    save(PatchCoreDetector(device="cpu"), model_path)
    with pytest.raises(NotFittedError):
        load(model_path).score_samples(images[:1])
    save(PatchFeatures(image_size=16, device="cpu").fit(images), model_path)
    assert load(model_path).grid_shape_ == (2, 2)
    for estimator in (
        PatchFeatures(torch.nn.Conv2d(3, 4, 3), image_size=16, device="cpu"),
        PatchCoreDetector(torch.nn.Conv2d(3, 4, 3), image_size=16, device="cpu"),
    ):
        with pytest.raises(TypeError, match="backbone is a torch.nn.Module"):
            save(estimator.fit(images[:4]), model_path)


def test_untrusted_types_warn_on_saving_and_need_trust_to_load(table, model_path):
    detector = make_pipeline(
        FunctionTransformer(func=_double), IsolationForest(random_state=0)
    )
    refiner = IQRRefiner(detector, random_state=0).fit(table)
    with pytest.warns(UserWarning, match="does not trust.*_double"):
        save(refiner, model_path)
    with pytest.raises(ModelFileError, match="not trusted.*_double.*trusted="):
        load(model_path)
    loaded = load(model_path, trusted=[f"{__name__}._double"])
    assert loaded.estimator_[0].func is _double
    assert_array_equal(loaded.score_samples(table), refiner.score_samples(table))


def test_a_pickle_renamed_as_model_is_refused_and_does_not_run(tmp_path, model_path):
    target = tmp_path / "created_by_payload"
    payload = pickle.dumps(_CreatesFile(str(target)))
    # The payload is real: unpickling it creates a file.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_CreatesFile(str(proof)))).close()
    assert proof.exists()

    model_path.write_bytes(payload)
    with pytest.raises(ModelFileError, match="looks like a pickle"):
        load(model_path)
    assert not target.exists()


def test_a_torch_save_file_is_refused_and_does_not_run(tmp_path, model_path):
    target = tmp_path / "created_by_payload"
    torch.save({"model": _CreatesFile(str(target))}, model_path)
    with pytest.raises(ModelFileError, match="not a sklearn-metarefine model"):
        load(model_path)
    assert not target.exists()


def test_a_zip_of_pickles_is_refused(tmp_path, model_path):
    target = tmp_path / "created_by_payload"
    with zipfile.ZipFile(model_path, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "x"}))
        archive.writestr("model.pkl", pickle.dumps(_CreatesFile(str(target))))
    with pytest.raises(ModelFileError, match="model.pkl"):
        load(model_path)
    assert not target.exists()


@pytest.mark.parametrize("name", ["subprocess.Popen", "builtins.eval", "posix.system"])
def test_a_manifest_naming_another_class_is_refused(name, table, tmp_path, model_path):
    target = tmp_path / "created_by_payload"
    save(IQRRefiner(FlowDetector(**TINY_FLOW)), model_path)
    manifest = _manifest(model_path)
    manifest["estimator"]["$estimator"]["params"]["estimator"] = {
        "$estimator": {
            "class": name,
            "id": 1,
            "params": {"args": ["touch", str(target)]},
        }
    }
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match=f"names class '{name}'.*refusing"):
        load(model_path)
    assert not target.exists()


def test_untrusted_skops_types_are_refused_then_loaded_when_trusted(model_path, table):
    save(IQRRefiner(IsolationForest(random_state=0)).fit(table), model_path)
    import skops.io

    untrusted = skops.io.dumps(FunctionTransformer(func=os.system))
    _rewrite(model_path, members={"skops/0.skops": untrusted})
    manifest = _manifest(model_path)
    import hashlib

    manifest["members"]["skops/0.skops"] = hashlib.sha256(untrusted).hexdigest()
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match="not trusted.*system"):
        load(model_path)


def test_altered_members_and_parameters_are_refused(table, model_path):
    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    with zipfile.ZipFile(model_path) as archive:
        arrays = bytearray(archive.read("arrays.safetensors"))
    arrays[-1] ^= 0xFF
    _rewrite(model_path, members={"arrays.safetensors": bytes(arrays)})
    with pytest.raises(ModelFileError, match="checksum"):
        load(model_path)

    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    manifest = _manifest(model_path)
    manifest["estimator"]["$estimator"]["params"]["n_blocks"] = "many"
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match="n_blocks"):
        load(model_path)

    manifest["estimator"]["$estimator"]["params"]["n_blocks"] = 2
    manifest["estimator"]["$estimator"]["params"]["run"] = "rm -rf /"
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match=r"\['run'\] are not parameters") as error:
        load(model_path)
    # The file is named (it was not), and a newer release's file says so.
    assert str(error.value).startswith(repr(str(model_path)))
    assert "written by" not in str(error.value)
    manifest["versions"]["sklearn-metarefine"] = "99.0"
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match=r"written by sklearn-metarefine 99\.0"):
        load(model_path)


def test_a_manifest_nested_too_deep_is_refused(table, model_path):
    # 700 levels: a RecursionError traceback; 990: "damaged zip archive".
    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    manifest = _manifest(model_path)
    manifest["estimator"]["$estimator"]["params"]["n_blocks"] = "NESTED"
    text = json.dumps(manifest)
    for levels in (250, 700, 990, 5000):
        nested = "[" * levels + "1.5" + "]" * levels
        manifest_bytes = text.replace('"NESTED"', nested).encode()
        _rewrite(model_path, members={"manifest.json": manifest_bytes})
        with pytest.raises(ModelFileError, match="more than 200 levels deep"):
            load(model_path)


def test_save_writes_no_model_that_load_refuses_as_nested_too_deep(table, model_path):
    # 30 pipelines around a refiner nest its manifest 185 levels deep and load;
    # 34 would nest it beyond what load reads, and save says so instead.
    from sklearn.pipeline import make_pipeline

    refiner = IQRRefiner(IsolationForest(n_estimators=5, random_state=0)).fit(table)
    model = refiner
    for _ in range(30):
        model = make_pipeline(model)
    save(model, model_path)
    saved = model_path.read_bytes()
    loaded = load(model_path)
    for _ in range(30):
        loaded = loaded[-1]
    assert loaded.offset_ == refiner.offset_
    for _ in range(4):
        model = make_pipeline(model)
    with pytest.raises(ValueError, match="more than 200 levels deep"):
        save(model, model_path)
    # so deep that encoding it recursed past Python's limit: a RecursionError
    model = FlowDetector()
    for _ in range(300):
        model = make_pipeline(model)
    with pytest.raises(ValueError, match="more than 200 levels deep"):
        save(model, model_path)
    assert model_path.read_bytes() == saved  # the file is as it was


def test_members_the_manifest_does_not_list_are_refused_unread(
    table, model_path, monkeypatch
):
    # A deflated run of 2 GiB zeros (a 3 MB file) was read whole, 4.3 GB of
    # memory, before the names were compared.
    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    _rewrite(model_path, members={"skops/0.skops": bytes(2**20)})
    read = []
    original = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile,
        "read",
        lambda self, name, *a, **k: read.append(name) or original(self, name, *a, **k),
    )
    with pytest.raises(ModelFileError, match="not the ones its manifest lists"):
        load(model_path)
    assert read == ["manifest.json"]


def test_a_model_file_cut_short_or_empty_says_so(table, model_path, tmp_path):
    # Both were "not a zip archive": the wrong cause for an interrupted copy.
    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    cut, empty = tmp_path / "cut.metarefine", tmp_path / "empty.metarefine"
    data = model_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="end is missing: the file was cut short"):
        load(cut)
    with pytest.raises(ModelFileError, match="is empty"):
        load(empty)


def test_an_edited_manifest_is_refused(table, model_path):
    # The manifest's values (the threshold, offset_) had no checksum: an
    # edited one was loaded as saved, or failed later with a TypeError.
    detector = FlowDetector(**TINY_FLOW).fit(table)
    save(detector, model_path)
    manifest = _manifest(model_path)
    assert manifest["estimator"]["$estimator"]["fitted"]["offset_"] == detector.offset_
    manifest["estimator"]["$estimator"]["fitted"]["offset_"] = "abc"
    _rewrite(model_path, manifest=manifest, checksum="keep")
    with pytest.raises(ModelFileError, match="manifest.json does not match the checksum"):
        load(model_path)
    # A file written before the checksum (no zip comment) loads, saying that
    # its manifest was not checked (an edit that dropped the comment loaded
    # silently).
    save(detector, model_path)
    _rewrite(model_path, checksum=None)
    with pytest.warns(UserWarning, match="records no checksum of its manifest.json") as w:
        assert load(model_path).offset_ == detector.offset_
    assert [warning.filename for warning in w] == [__file__]  # the caller's line


def test_a_damaged_compressed_member_is_a_model_file_error(table, model_path):
    # zlib's error escaped with a traceback that named no file.
    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    with zipfile.ZipFile(model_path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
        comment = archive.comment
    with zipfile.ZipFile(model_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.comment = comment
        for name, data in contents.items():
            archive.writestr(name, data)
    with zipfile.ZipFile(model_path) as archive:
        info = archive.getinfo("arrays.safetensors")
    data = bytearray(Path(model_path).read_bytes())
    header = info.header_offset  # the local header: name and extra lengths at 26
    name_length, extra_length = np.frombuffer(data[header + 26 : header + 30], "<u2")
    start = header + 30 + int(name_length) + int(extra_length)
    data[start : start + 64] = bytes(64)  # zeros inside the deflate stream
    Path(model_path).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="damaged zip archive"):
        load(model_path)


def test_a_damaged_directory_offset_is_a_model_file_error(table, model_path):
    # zipfile seeked before the start of the file: OSError(22) with a traceback.
    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    data = bytearray(Path(model_path).read_bytes())
    end_of_directory = data.rfind(b"PK\x05\x06")
    data[end_of_directory + 17] ^= 0xFF  # the central directory's offset
    Path(model_path).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="damaged zip archive"):
        load(model_path)


def test_a_newer_format_is_refused_and_other_versions_warn(table, model_path):
    refiner = IQRRefiner(IsolationForest(random_state=0), random_state=0).fit(table)
    save(refiner, model_path)
    manifest = _manifest(model_path)
    versions = dict(manifest["versions"])
    manifest["versions"]["sklearn-metarefine"] = "0.0.1"
    _rewrite(model_path, manifest=manifest)
    with pytest.warns(ModelVersionWarning, match=r"sklearn-metarefine 0\.0\.1") as w:
        loaded = load(model_path)
    assert [warning.filename for warning in w] == [__file__]  # the caller's line
    assert_array_equal(loaded.score_samples(table), refiner.score_samples(table))

    # Another build of one release (a CPU and a CUDA wheel) is the same version.
    assert "torch" in versions
    manifest["versions"] = {**versions, "torch": versions["torch"] + "+cu130"}
    _rewrite(model_path, manifest=manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(model_path)

    manifest["format_version"] = 99
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match="format 99.*upgrade"):
        load(model_path)


def _identity(x):
    return x


def _scaler(factor):
    def scale(x):
        return x * factor

    return scale


class _Functions:
    @staticmethod
    def identity(x):
        return x

    @classmethod
    def l1(cls, a, b):
        return float(np.abs(a - b).sum())


def _l1(a, b, **kwargs):
    return float(np.abs(a - b).sum())


def test_save_refuses_what_no_load_could_import(table, model_path):
    # A lambda was saved with a warning to load it with trusted=[...<lambda>],
    # which then failed; a class (a forgotten "()") warned against the
    # package's own class; a longdouble parameter was "nested too deep".
    lam = make_pipeline(FunctionTransformer(lambda x: x), IsolationForest())
    with pytest.raises(TypeError, match=r"<lambda>.*defined at the top of a module"):
        save(IQRRefiner(lam, random_state=0).fit(table), model_path)
    with pytest.raises(TypeError, match="got the class MetaRefineDetector"):
        save(MetaRefineDetector, model_path)
    # A lambda in a dict parameter, and a class method (skops' own error).
    lof = LocalOutlierFactor(novelty=True, metric=_l1, metric_params={"f": lambda: 0})
    with pytest.raises(TypeError, match="<lambda>"):
        save(IQRRefiner(lof, random_state=0).fit(table), model_path)
    lof = LocalOutlierFactor(novelty=True, metric=_Functions.l1)
    with pytest.raises(TypeError, match=r"Functions.l1'\]"):
        save(IQRRefiner(lof, random_state=0).fit(table), model_path)
    for function in (_scaler(2.0), _Functions.identity):
        # Named in the file as module.name, where neither is.
        nested = make_pipeline(FunctionTransformer(function), IsolationForest())
        refiner = IQRRefiner(nested, random_state=0).fit(table)
        with pytest.raises(TypeError, match=r"(<locals>.scale|Functions.identity)'\]"):
            save(refiner, model_path)
    if np.dtype(np.longdouble).itemsize > 8:  # where it is no float64
        name = np.dtype(np.longdouble).name
        refiner = IQRRefiner(IsolationForest(), k=np.longdouble(1.5)).fit(table)
        with pytest.raises(TypeError, match=rf"Cannot save .*\.k: a numpy {name}"):
            save(refiner, model_path)
        refiner = IQRRefiner(IsolationForest(), k=1.5).fit(table)
        refiner.extra_ = np.ones(3, np.longdouble)
        with pytest.raises(TypeError, match=f"extra_: an array of dtype {name}"):
            save(refiner, model_path)
    assert not model_path.exists()
    # A function of a module is saved and loads once trusted.
    named = make_pipeline(FunctionTransformer(_identity), IsolationForest())
    with pytest.warns(UserWarning, match="_identity"):
        save(IQRRefiner(named, random_state=0).fit(table), model_path)
    load(model_path, trusted=[f"{__name__}._identity"])


@pytest.mark.parametrize(
    "trusted", [True, None, "pyod.models.knn.KNN", ["sklearn.tree._tree.Tree", 3]]
)
def test_trusted_that_is_no_list_of_names_is_refused(table, model_path, trusted):
    # True and None gave "'bool' object is not iterable"; a string was read
    # as its characters.
    save(IQRRefiner(IsolationForest(), random_state=0).fit(table), model_path)
    with pytest.raises(TypeError, match="trusted must be a list of type names"):
        load(model_path, trusted=trusted)


def test_the_version_hint_goes_only_with_what_another_release_explains(
    table, model_path
):
    # An untrusted type was also told to load the file with the release
    # that wrote it, which refuses it alike.
    named = make_pipeline(FunctionTransformer(_identity), IsolationForest())
    with pytest.warns(UserWarning, match="_identity"):
        save(IQRRefiner(named, random_state=0).fit(table), model_path)
    manifest = _manifest(model_path)
    manifest["versions"]["sklearn-metarefine"] = "99.0"
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match="not trusted") as error:
        load(bytes(model_path))  # a path as bytes, as os functions take
    assert "written by" not in str(error.value)
    assert str(error.value).startswith(repr(str(model_path)))


def test_a_torch_state_of_another_layout_gets_the_version_hint(table, model_path):
    # A flow whose state another release lays out otherwise lost the hint.
    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    manifest = _manifest(model_path)
    manifest["versions"]["sklearn-metarefine"] = "99.0"
    node = manifest["estimator"]["$estimator"]
    node["torch_state"]["$dict"].pop(next(iter(node["torch_state"]["$dict"])))
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match="torch state.*written by .*99.0"):
        load(model_path)


def test_special_files_are_refused_and_replaced_files_keep_their_mode(
    table, model_path, tmp_path
):
    # A pipe was "not found" to load and replaced by a file in save; a private
    # model file became readable by all when saved again.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(ModelFileError, match="not a regular file"):
        load(pipe)
    refiner = IQRRefiner(IsolationForest(), random_state=0).fit(table)
    with pytest.raises(ValueError, match="not a regular file"):
        save(refiner, pipe)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    save(refiner, model_path)
    os.chmod(model_path, 0o600)
    save(refiner, model_path)
    assert stat.S_IMODE(os.stat(model_path).st_mode) == 0o600


def test_a_model_asking_for_missing_cuda_names_the_file_and_loads_device(
    table, model_path, monkeypatch
):
    save(FlowDetector(**TINY_FLOW).fit(table), model_path)
    manifest = _manifest(model_path)
    manifest["estimator"]["$estimator"]["params"]["device"] = "cuda"
    _rewrite(model_path, manifest=manifest)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cpu'") as error:
        load(model_path)
    assert not isinstance(error.value, ModelFileError)
    assert str(model_path) in str(error.value) and "load(path" in str(error.value)
    assert load(model_path, device="cpu").device == "cpu"


def test_a_missing_file_and_a_foreign_zip_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load(tmp_path / "nothing.metarefine")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "another tool"}))
    with pytest.raises(ModelFileError, match="not a sklearn-metarefine model"):
        load(other)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_round_trip_on_the_gpu_and_to_the_cpu(images, model_path):
    detector = MetaRefineDetector(
        image_size=32, n_scales=2, pca_components=4, random_state=0,
        **{**TINY_FLOW, "device": "cuda"},
    ).fit(images)  # fmt: skip
    save(detector, model_path)
    on_gpu = load(model_path)
    assert on_gpu.pipeline_[0].device_.type == "cuda"
    assert_array_equal(on_gpu.score_samples(images), detector.score_samples(images))
    on_cpu = load(model_path, device="cpu")
    assert next(on_cpu.refiner_.estimator_.net_.module_.parameters()).is_cuda is False
    # Another device computes the CNN's float32 features with other roundings.
    # (cuDNN's TF32 convolutions: on an H200 up to 1.0e-3 relative.)
    assert_allclose(
        on_cpu.score_samples(images), detector.score_samples(images), rtol=5e-3
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_patch_level_round_trip_on_the_gpu_and_to_the_cpu(images, model_path):
    detector = MetaRefineDetector(
        level="patch", image_size=32, device="cuda", random_state=0
    ).fit(images)
    save(detector, model_path)
    on_gpu = load(model_path)
    assert on_gpu.detector_.device_.type == "cuda"
    _assert_same_patch_outputs(on_gpu, detector, images)
    on_cpu = load(model_path, device="cpu")
    assert on_cpu.detector_.device_ == torch.device("cpu")
    assert next(on_cpu.detector_.features_.backbone_.parameters()).is_cuda is False
    flow = on_cpu.flow_detector_.flow_
    assert next(flow.net_.module_.parameters()).is_cuda is False
    # Another device computes the CNN's float32 features with other roundings.
    assert_allclose(
        on_cpu.score_samples(images), detector.score_samples(images), rtol=1e-3
    )
