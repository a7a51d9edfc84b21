"""The noise benchmark of Aqeel et al.: AUROC of each detector against contamination.

A benchmark is a grid of runs, one per (category, noise level, repeat, model).
A run draws a contaminated training set and a balanced test set from the
category's precomputed features, fits one detector and scores the test set.
The runs go through joblib, locally or on a dask.distributed cluster; each
finished run is written to the output folder at once, so that an interrupted
benchmark resumes where it stopped. The tables and figures are computed from
those files.

Only :func:`run_one` and :func:`make_model` run in the workers; everything that
reads or writes files runs in the calling process.
"""

import copy
import csv
import hashlib
import importlib
import json
import os
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.utils import Bunch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from ._torch_utils import resolve_device
from .datasets import (
    MVTEC_AD_CATEGORIES,
    load_digits_anomaly,
    load_ksdd2,
    load_mvtec_ad,
    make_contaminated,
)

DATASETS = ("digits", "mvtec", "ksdd2")
MODELS = ("vanilla", "osr", "irp", "metarefine", "iforest", "lof")
REFINER_MODELS = ("osr", "irp", "metarefine")
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DIGIT_CATEGORIES = tuple(f"digit{digit}" for digit in range(10))

# The hyperparameters of every run. `resolve_config` turns this into the
# configuration of one dataset (its entry of "features" and everything else),
# which is what an output folder records and what overrides are applied to.
DEFAULT_CONFIG = {
    # Mixed into every draw and model seed: a different value is a different,
    # equally valid benchmark.
    "seed": 0,
    # PretrainedFeatures settings per dataset. efficientnet_lite0's weights ship
    # with a pip package, so the default runs offline; the paper's features
    # are AlexNet at 448 px with 3 scales (backbone="alexnet", image_size=448,
    # n_scales=3), which downloads torchvision's weights on first use.
    "features": {
        "digits": {
            "backbone": "efficientnet_lite0",
            "image_size": 64,
            "n_scales": 3,
            "n_views": 1,
            "batch_size": 256,
        },
        "mvtec": {
            "backbone": "efficientnet_lite0",
            "image_size": 224,
            "n_scales": 1,
            "n_views": 1,
            "batch_size": 32,
        },
        "ksdd2": {
            "backbone": "efficientnet_lite0",
            "image_size": 224,
            "n_scales": 1,
            "n_views": 1,
            "batch_size": 32,
        },
    },
    # make_contaminated's protocol parameters.
    "contamination": {"test_size": None, "train_size": None, "overlap": False},
    # Parameters of the flow shared by the four flow models; "lr" is the Adam
    # learning rate of the maximum-likelihood flows, MAML's is maml["beta"].
    # Sized for the default digits grid (1080 runs) to take minutes on a
    # two-core CPU. The paper's flow: pca_components=None, n_blocks=8,
    # hidden_size=2048, lr=2e-4, max_epochs=240.
    "flow": {
        "pca_components": 16,
        "n_blocks": 4,
        "hidden_size": 32,
        "batch_size": 96,
        "max_epochs": 10,
        "warm_epochs": None,
        "lr": 1e-3,
    },
    # MAML's parameters (the "metarefine" model only). alpha=0 turns MAML off,
    # MetaRefineDetector's default: MAML measured no gain on this benchmark
    # (benchmarks/bench_maml_ablation.py); paper_config.json turns it on.
    "maml": {"alpha": 0.0, "beta": 1e-3, "inner_steps": 1, "first_order": False},
    # IQRRefiner parameters of osr and irp, the paper's procedure (osr sets
    # max_iter=1): warm refits, fences of in-sample scores, iterate until
    # nothing changes (the paper sets no max_iter; 10 bounds the CPU time).
    "refiner": {
        "k": 1.5,
        "max_iter": 10,
        "min_samples": 0.5,
        "refit": "warm",
        "fence_scores": "in_sample",
        "stop": "no_change",
    },
    # What "metarefine" (MetaRefineDetector) does beyond the paper, its own
    # defaults: a trimmed core of a quarter of the training images, from the
    # images with the closest 10%-th neighbour, and one re-admission round;
    # fences on held-out scores; stop once a round only trims a clean tail.
    "metarefine": {
        "start": "neighbors",
        "start_fraction": 0.25,
        "start_neighbors": 0.1,
        "refit": "cold",
        "fence_scores": "oof",
        "cv": 5,
        "stop": "clean_tail",
    },
    "iforest": {"n_estimators": 100, "max_samples": "auto"},
    "lof": {"n_neighbors": 20},
}

_CONFIG_FILE = "config.json"
_RUNS_FOLDER = "runs"
_FEATURES_FOLDER = "features"
_RUN_FIELDS = (
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
    "false_alarm",
    "detection",
    "removed_good",
    "removed_bad",
    "n_iter",
    "seconds",
    "device",
    "error",
)
_TABLE1_FIELDS = (
    "model",
    "category",
    "noise",
    "auroc_mean",
    "auroc_std",
    "n_runs",
    "n_failed",
)
_TABLE2_FIELDS = (
    "model",
    "noise",
    "removed_good",
    "removed_bad",
    "train_good",
    "train_bad",
    "n_runs",
    "n_failed",
)
_TABLE3_FIELDS = (
    "model",
    "noise",
    "false_alarm_mean",
    "false_alarm_std",
    "detection_mean",
    "detection_std",
    "n_runs",
    "n_failed",
)
_DASK_MISSING = 'The dask backend needs dask and distributed: pip install "sklearn-metarefine[dask]"'


class BenchmarkError(ValueError):
    """A benchmark that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Run:
    """One cell of the benchmark grid.

    Parameters
    ----------
    category : str
        Dataset category (``"digit3"``, ``"bottle"``, ``"ksdd2"``).
    noise : float
        Fraction of anomalies in the training set.
    repeat : int
        Repeat number, counted from 0.
    model : str
        One of :data:`MODELS`.
    seed : int
        Seeds the contaminated draw and the model.
    """

    category: str
    noise: float
    repeat: int
    model: str
    seed: int

    @property
    def name(self):
        """File-name stem of the run's result."""
        return f"{self.category}_noise{self.noise:.4f}_rep{self.repeat}_{self.model}"


# ---------------------------------------------------------------------------
# Configuration and seeds
# ---------------------------------------------------------------------------


def resolve_config(dataset, overrides=None):
    """The configuration of a benchmark on one dataset.

    Parameters
    ----------
    dataset : {"digits", "mvtec", "ksdd2"}
        The dataset; selects its entry of ``DEFAULT_CONFIG["features"]``.
    overrides : dict or None, default=None
        Nested values replacing those of the resolved configuration, e.g.
        ``{"flow": {"max_epochs": 5}, "features": {"image_size": 32}}``.
        Unknown keys raise, so that a typo cannot go unnoticed.

    Returns
    -------
    config : dict
        ``DEFAULT_CONFIG`` with ``"dataset"`` set and ``"features"`` replaced by
        the dataset's feature settings, overrides applied, as JSON would read
        it back.
    """
    _check_choice("dataset", dataset, DATASETS)
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["features"] = config["features"][dataset]
    config = {"dataset": dataset, **config}
    _merge(config, overrides or {}, path="config")
    return json.loads(json.dumps(config))


def _merge(config, overrides, *, path):
    for key, value in overrides.items():
        if key not in config or key == "dataset":
            allowed = ", ".join(k for k in config if k != "dataset")
            raise BenchmarkError(
                f"Unknown configuration key {path}[{key!r}]; expected one of: "
                f"{allowed}."
            )
        if isinstance(config[key], dict):
            if not isinstance(value, dict):
                raise BenchmarkError(
                    f"{path}[{key!r}] is a section; override its entries with a "
                    f"dict, got {value!r}."
                )
            _merge(config[key], value, path=f"{path}[{key!r}]")
        else:
            config[key] = value


def derive_seed(*parts):
    """A 31-bit seed that depends only on ``parts``, in any process.

    Python's ``hash`` of a string changes between interpreter runs, so the
    parts are hashed with SHA-256 instead.

    Parameters
    ----------
    *parts : str, int or float
        What the seed depends on.

    Returns
    -------
    seed : int
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def plan_runs(config, categories, noise, repeats, models):
    """The grid of runs, in a fixed order.

    The seed of a run depends on the dataset, category and repeat, not on the
    noise level or the model: all models of a repeat see the same draws, and
    since :func:`~sklearn_metarefine.datasets.make_contaminated`'s draws are
    nested, the same test set and growing subsets of the same training
    anomalies at every noise level. Noise levels are thus compared on equal
    terms, and the spread over repeats measures the draws' effect.

    Parameters
    ----------
    config : dict
        A resolved configuration (:func:`resolve_config`).
    categories, noise, models : sequence
        The grid's axes.
    repeats : int
        Number of repeats.

    Returns
    -------
    runs : list of Run
    """
    return [
        Run(
            category,
            float(level),
            repeat,
            model,
            derive_seed(config["seed"], config["dataset"], category, repeat),
        )
        for category in categories
        for level in noise
        for repeat in range(repeats)
        for model in models
    ]


# ---------------------------------------------------------------------------
# Models and the run function (executed in the workers)
# ---------------------------------------------------------------------------


def make_model(name, *, random_state, device, config):
    """Build one of the benchmark's detectors, unfitted.

    Parameters
    ----------
    name : str
        ``"vanilla"``: :class:`~sklearn_metarefine.FlowDetector` (DifferNet).
        ``"osr"``: one-shot removal, an
        :class:`~sklearn_metarefine.IQRRefiner` around it with
        ``max_iter=1``. ``"irp"``: iterative refinement, the same refiner
        with the configured ``max_iter``. ``"metarefine"``: the paper's
        method, :class:`~sklearn_metarefine.MetaRefineDetector` on feature
        vectors (``backbone=None``). ``"iforest"``:
        :class:`~sklearn.ensemble.IsolationForest`. ``"lof"``:
        :class:`~sklearn.neighbors.LocalOutlierFactor` with
        ``novelty=True``.
    random_state : int
        Seed of the model.
    device : str
        Where the flows train, ``"auto"`` picking CUDA when available.
    config : dict
        A resolved configuration (:func:`resolve_config`).

    Returns
    -------
    model : estimator
    """
    from ._detector import MetaRefineDetector
    from ._flows import FlowDetector
    from ._refine import IQRRefiner

    flow = {
        **config["flow"],
        "n_views": config["features"]["n_views"],
        "device": device,
    }
    refiner = config["refiner"]
    if name == "vanilla":
        return FlowDetector(**flow, random_state=random_state)
    if name == "osr":
        one_shot = {**refiner, "max_iter": 1}
        return IQRRefiner(FlowDetector(**flow), **one_shot, random_state=random_state)
    if name == "irp":
        return IQRRefiner(FlowDetector(**flow), **refiner, random_state=random_state)
    if name == "metarefine":
        maml_flow = {key: value for key, value in flow.items() if key != "lr"}
        params = {**maml_flow, **config["maml"], **refiner, **config["metarefine"]}
        return MetaRefineDetector(backbone=None, **params, random_state=random_state)
    if name == "iforest":
        return IsolationForest(**config["iforest"], random_state=random_state)
    if name == "lof":
        return LocalOutlierFactor(**config["lof"], novelty=True)
    raise BenchmarkError(
        f"Unknown model {name!r}; expected one of {', '.join(MODELS)}."
    )


@contextmanager
def _single_threaded():
    """Run a block on one thread in torch and in the BLAS/OpenMP pools.

    A float reduction split over threads sums in an order that depends on the
    thread count, so a run's numbers would depend on the worker it lands on.
    torch's thread count is process-wide: it is restored afterwards.
    """
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(n_threads)


def run_one(run, X, y, split, config, device):
    """Fit one detector on one contaminated draw and evaluate it.

    Parameters
    ----------
    run : Run
        The cell of the grid.
    X : ndarray of shape (n_samples, n_features)
        Features of every sample of the category.
    y : ndarray of shape (n_samples,)
        1 for anomalous, 0 for normal samples.
    split : ndarray of shape (n_samples,) or None
        The dataset's official "train"/"test" split, if it has one.
    config : dict
        A resolved configuration (:func:`resolve_config`).
    device : str
        Where the flows train.

    Returns
    -------
    record : dict
        The run's identity, the sizes of its training and test sets, the test
        AUROC (anomaly score = minus ``score_samples``), the false-alarm rate
        (share of normal test samples) and detection rate (share of anomalous
        test samples) that the model's own ``predict`` flags, for refiners the
        numbers of good and bad training samples removed and the rounds run,
        the seconds spent fitting and scoring, and ``error``: None, or the
        exception that made the model fail (the other results are then None,
        and ``traceback`` holds its traceback).
    """
    data = make_contaminated(
        X,
        y,
        noise=run.noise,
        split=split,
        random_state=run.seed,
        **config["contamination"],
    )
    model = make_model(run.model, random_state=run.seed, device=device, config=config)
    record = {
        "dataset": config["dataset"],
        **asdict(run),
        "n_train": len(data.y_train),
        "n_train_anomalous": int(data.y_train.sum()),
        "n_test": len(data.y_test),
        "auroc": None,
        "false_alarm": None,
        "detection": None,
        "removed_good": None,
        "removed_bad": None,
        "n_iter": None,
        "seconds": None,
        "device": str(resolve_device(device)),
        "error": None,
        "traceback": None,
    }
    start = time.perf_counter()
    with _single_threaded():
        # A detector that diverges or rejects the data is a result of the
        # benchmark, recorded with its message and shown in the tables.
        try:
            model.fit(data.X_train)
            anomaly_score = -model.score_samples(data.X_test)
            record["auroc"] = float(roc_auc_score(data.y_test, anomaly_score))
            flagged = model.predict(data.X_test) == -1
            record["false_alarm"] = float(flagged[data.y_test == 0].mean())
            record["detection"] = float(flagged[data.y_test == 1].mean())
        except Exception as error:
            record["error"] = f"{type(error).__name__}: {error}"
            record["traceback"] = traceback.format_exc()
    record["seconds"] = time.perf_counter() - start
    if record["error"] is None and hasattr(model, "inlier_mask_"):
        removed = ~model.inlier_mask_
        record["removed_good"] = int(np.sum(removed & (data.y_train == 0)))
        record["removed_bad"] = int(np.sum(removed & (data.y_train == 1)))
        record["n_iter"] = int(model.n_iter_)
    return record


# ---------------------------------------------------------------------------
# Data and features (calling process)
# ---------------------------------------------------------------------------


def dataset_categories(dataset, categories=None):
    """Check or default the categories of a dataset.

    Parameters
    ----------
    dataset : {"digits", "mvtec", "ksdd2"}
    categories : sequence of str or None, default=None
        For digits, ``"digit0"``..``"digit9"`` (or just the digit); for MVTec
        AD any category folder under the root (default: the 15 official
        ones); KolektorSDD2 has the single category ``"ksdd2"``.

    Returns
    -------
    categories : list of str
    """
    if dataset == "digits":
        if categories is None:
            return list(DIGIT_CATEGORIES)
        names = [f"digit{c}" if str(c).isdigit() else str(c) for c in categories]
        for name in names:
            _check_choice("digits category", name, DIGIT_CATEGORIES)
        return names
    if dataset == "mvtec":
        return list(MVTEC_AD_CATEGORIES if categories is None else categories)
    if categories is not None and list(categories) != ["ksdd2"]:
        raise BenchmarkError(
            f"KolektorSDD2 has a single category, 'ksdd2'; got {list(categories)}."
        )
    return ["ksdd2"]


def _load_category(dataset, category, root):
    """Images (an array, or a list of files), labels and split of a category."""
    if dataset == "digits":
        digits = load_digits_anomaly(int(category.removeprefix("digit")))
        return digits.images, digits.target, None
    if root is None:
        raise BenchmarkError(
            f"The {dataset} dataset is read from disk: pass its folder as root "
            "(--root on the command line)."
        )
    data = load_mvtec_ad(root, category) if dataset == "mvtec" else load_ksdd2(root)
    return list(data.filenames), data.target, data.split


def _check_feasible(config, labelled, noise):
    """Raise, naming every impossible (category, noise) and the remedies.

    ``labelled`` maps each category to its (images, labels, split). Whether a
    draw is possible does not depend on its seed, so one draw per cell tells.
    """
    problems = []
    for category, (_, y, split) in labelled.items():
        for level in noise:
            try:
                make_contaminated(
                    np.arange(len(y)),
                    y,
                    noise=level,
                    split=split,
                    random_state=0,
                    **config["contamination"],
                )
            except ValueError as error:
                problems.append(f"- {category}, noise={level:g}: {error}")
    if problems:
        raise BenchmarkError(
            f"Cannot draw every requested contaminated training set of "
            f"{config['dataset']}:\n" + "\n".join(problems) + "\nOn the command "
            "line: --overlap draws training anomalies from the test anomalies "
            "too, --train-size N fixes a smaller training set, --test-size N "
            "reserves fewer anomalies for the test set; or leave out the noise "
            "levels that are out of reach with --noise."
        )


def _features(images, config, device, cache_folder):
    """Features of ``images``, read from or written to the cache folder."""
    from ._features import PretrainedFeatures

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
    _atomic_write(path, lambda file: np.save(file, features), mode="wb")
    return features


# ---------------------------------------------------------------------------
# The output folder (calling process)
# ---------------------------------------------------------------------------


def _atomic_write(path, write, *, mode="w"):
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


def _write_json(path, data):
    _atomic_write(path, lambda file: json.dump(data, file, indent=2, sort_keys=True))


def _claim_output(output, config):
    """Record the configuration in the output folder, or check it matches."""
    config_path = output / _CONFIG_FILE
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
    elif any((output / _RUNS_FOLDER).glob("*.json")):
        raise BenchmarkError(
            f"The output folder {output} holds results but no {_CONFIG_FILE}, so "
            "their configuration is unknown. Use another --output folder."
        )
    else:
        _write_json(config_path, config)


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


def _finished(runs_folder, run):
    path = _run_path(runs_folder, run)
    return json.loads(path.read_text()) if path.exists() else None


def _execute(pending, data, config, device, n_jobs, runs_folder, progress):
    """Run the pending runs through joblib, writing each result as it arrives."""
    jobs = (
        joblib.delayed(run_one)(run, *data[run.category], config, device)
        for run in pending
    )
    results = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs)
    for record in results:
        run = Run(**{field: record[field] for field in Run.__dataclass_fields__})
        _write_json(_run_path(runs_folder, run), record)
        progress.update()


def _check_backend(backend, scheduler):
    """Fail before any work when the backend cannot be used."""
    _check_choice("backend", backend, ("loky", "dask"))
    if backend == "loky":
        return
    if scheduler is None:
        raise BenchmarkError(
            "backend='dask' needs the address of a running dask.distributed "
            "scheduler (--scheduler tcp://HOST:8786), e.g. one started with "
            "`dask scheduler` and `dask worker tcp://HOST:8786`."
        )
    try:
        importlib.import_module("distributed")
    except ImportError as error:
        raise BenchmarkError(_DASK_MISSING) from error


@contextmanager
def _backend(backend, scheduler):
    """joblib's backend: loky here, or the dask.distributed cluster at ``scheduler``."""
    if backend == "loky":
        with joblib.parallel_config(backend="loky"):
            yield
        return
    import distributed

    try:
        client = distributed.Client(scheduler)
    except OSError as error:
        raise BenchmarkError(
            f"Cannot connect to the dask scheduler at {scheduler}: {error}"
        ) from error
    with client, joblib.parallel_config(backend="dask"):
        yield


# ---------------------------------------------------------------------------
# Tables, files and figures (calling process)
# ---------------------------------------------------------------------------


def _by(records, *fields):
    groups = {}
    for record in records:
        groups.setdefault(tuple(record[f] for f in fields), []).append(record)
    return groups


def _mean_std(values):
    # Population standard deviation (ddof=0): defined for a single repeat.
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def auroc_table(records, categories, noise, models):
    """The paper's Table 1: AUROC mean and std over repeats.

    Parameters
    ----------
    records : list of dict
        Run records (:func:`run_one`).
    categories, noise, models : sequence
        The grid's axes, in the order of the rows.

    Returns
    -------
    rows : list of dict
        One row per (model, category, noise) with ``auroc_mean``,
        ``auroc_std`` (population std over repeats), ``n_runs`` and
        ``n_failed``; then per (model, noise) a row of category ``"mean"``: the
        mean over categories, its std over repeats of the per-repeat mean over
        categories, counting the repeats in which every category succeeded.
    """
    groups = _by(records, "model", "category", "noise")
    rows = []
    for model in models:
        for category in categories:
            for level in noise:
                runs = groups.get((model, category, level), [])
                values = [r["auroc"] for r in runs if r["error"] is None]
                rows.append(_table1_row(model, category, level, values, runs))
        for level in noise:
            runs = [r for c in categories for r in groups.get((model, c, level), [])]
            per_repeat = _by([r for r in runs if r["error"] is None], "repeat")
            values = [
                float(np.mean([r["auroc"] for r in group]))
                for group in per_repeat.values()
                if len(group) == len(categories)
            ]
            rows.append(_table1_row(model, "mean", level, values, runs))
    return rows


def _table1_row(model, category, level, values, runs):
    mean, std = _mean_std(values)
    return {
        "model": model,
        "category": category,
        "noise": level,
        "auroc_mean": mean,
        "auroc_std": std,
        "n_runs": len(runs),
        "n_failed": sum(r["error"] is not None for r in runs),
    }


def removal_table(records, noise, models, repeats):
    """The paper's Table 2: good and bad training images the refiners removed.

    Parameters
    ----------
    records : list of dict
        Run records (:func:`run_one`).
    noise, models : sequence
        The grid's axes; only the refiner models are tabulated.
    repeats : int
        Number of repeats.

    Returns
    -------
    rows : list of dict
        One row per (refiner model, noise): ``removed_good`` and
        ``removed_bad``, and ``train_good`` and ``train_bad`` (the good and
        bad images in the training sets), each the total over categories
        averaged over repeats. Failed runs count in ``n_failed`` and in none
        of the totals.
    """
    groups = _by(records, "model", "noise")
    rows = []
    for model in (m for m in models if m in REFINER_MODELS):
        for level in noise:
            runs = groups.get((model, level), [])
            done = [r for r in runs if r["error"] is None]
            totals = {
                "removed_good": sum(r["removed_good"] for r in done),
                "removed_bad": sum(r["removed_bad"] for r in done),
                "train_good": sum(r["n_train"] - r["n_train_anomalous"] for r in done),
                "train_bad": sum(r["n_train_anomalous"] for r in done),
            }
            rows.append(
                {
                    "model": model,
                    "noise": level,
                    **{k: v / repeats for k, v in totals.items()},
                    "n_runs": len(runs),
                    "n_failed": len(runs) - len(done),
                }
            )
    return rows


def threshold_table(records, noise, models):
    """False alarms and detections at each model's own threshold.

    Parameters
    ----------
    records : list of dict
        Run records (:func:`run_one`).
    noise, models : sequence
        The grid's axes.

    Returns
    -------
    rows : list of dict
        One row per (model, noise): ``false_alarm_mean`` and
        ``detection_mean``, the shares of normal and of anomalous test
        samples that ``predict`` flags, as the mean over categories, with
        their std over repeats of that mean (repeats in which every category
        succeeded, as in :func:`auroc_table`).
    """
    groups = _by(records, "model", "noise")
    rows = []
    for model in models:
        for level in noise:
            runs = groups.get((model, level), [])
            done = [r for r in runs if r["error"] is None]
            n_categories = len({r["category"] for r in runs})
            row = {"model": model, "noise": level}
            for rate in ("false_alarm", "detection"):
                per_repeat = [
                    float(np.mean([r[rate] for r in group]))
                    for group in _by(done, "repeat").values()
                    if len(group) == n_categories
                ]
                row[f"{rate}_mean"], row[f"{rate}_std"] = _mean_std(per_repeat)
            rows.append({**row, "n_runs": len(runs), "n_failed": len(runs) - len(done)})
    return rows


def _percent(level):
    return f"{100 * level:g}%"


def _text_table(header, rows, *, n_labels):
    """Align columns: the first ``n_labels`` to the left, numbers to the right."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(
            str(c).ljust(w) if i < n_labels else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    )


def format_report(
    table1, table2, records, *, categories, noise, models, repeats, table3=None
):
    """The plain-text report: Tables 1 to 3, seconds per run, failed runs.

    Parameters
    ----------
    table1, table2 : list of dict
        Rows of :func:`auroc_table` and :func:`removal_table`.
    records : list of dict
        Run records.
    categories, noise, models : sequence
        The grid's axes.
    repeats : int
        Number of repeats.
    table3 : list of dict, default=None
        Rows of :func:`threshold_table`; None leaves Table 3 out.

    Returns
    -------
    report : str
    """
    cells = {(r["model"], r["category"], r["noise"]): r for r in table1}

    def cell(row):
        if row["auroc_mean"] is None:
            return "failed"
        text = f"{row['auroc_mean']:.4f}±{row['auroc_std']:.4f}"
        return text + (f" ({row['n_failed']} failed)" if row["n_failed"] else "")

    rows = [
        [category, model, *(cell(cells[model, category, level]) for level in noise)]
        for category in [*categories, "mean"]
        for model in models
    ]
    parts = [
        (
            f"Table 1. Test AUROC, mean ± std over {repeats} repeat(s); 'mean' is "
            "the mean over categories."
        ),
        _text_table(["category", "model", *map(_percent, noise)], rows, n_labels=2),
    ]
    if table2:
        rows = [
            [
                row["model"],
                _percent(row["noise"]),
                f"{row['removed_good']:g}",
                f"{row['removed_bad']:g}",
                f"{row['train_good']:g}",
                f"{row['train_bad']:g}",
            ]
            + ([str(row["n_failed"])] if any(r["n_failed"] for r in table2) else [])
            for row in table2
        ]
        header = [
            "model",
            "noise",
            "good removed",
            "bad removed",
            "good in train",
            "bad in train",
        ]
        if any(r["n_failed"] for r in table2):
            header.append("failed runs")
        parts += [
            "",
            (
                f"Table 2. Training images removed by the refiners: total over "
                f"{len(categories)} categor{'y' if len(categories) == 1 else 'ies'}, "
                f"mean over {repeats} repeat(s)."
            ),
            _text_table(header, rows, n_labels=1),
        ]
    if table3:
        parts += ["", *_threshold_text(table3, noise, models, len(categories))]
    seconds = _by(records, "model")
    parts += [
        "",
        "Seconds per run (fit and score), mean over runs: "
        + ", ".join(
            f"{m} {np.mean([r['seconds'] for r in seconds[m,]]):.2f}" for m in models
        ),
    ]
    failed = [r for r in records if r["error"] is not None]
    if failed:
        parts += ["", f"{len(failed)} run(s) failed; first ones:"]
        parts += [
            f"  {r['category']} noise={r['noise']:g} repeat={r['repeat']} "
            f"{r['model']}: {r['error'][:300]}"
            for r in failed[:5]
        ]
    return "\n".join(parts)


def _threshold_text(table3, noise, models, n_categories):
    """Table 3 as lines of text: false alarms / detections per noise level."""
    cells = {(r["model"], r["noise"]): r for r in table3}

    def cell(row):
        if row["false_alarm_mean"] is None:
            return "failed"
        return f"{row['false_alarm_mean']:.3f} / {row['detection_mean']:.3f}"

    rows = [[m, *(cell(cells[m, level]) for level in noise)] for m in models]
    return [
        (
            "Table 3. At each model's own threshold (predict): share of normal "
            "test images flagged (false alarms) / share of anomalous ones flagged "
            f"(detections), mean over {n_categories} "
            f"categor{'y' if n_categories == 1 else 'ies'} and the repeats."
        ),
        _text_table(["model", *map(_percent, noise)], rows, n_labels=1),
    ]


def _write_csv(path, fields, rows):
    def write(file):
        writer = csv.DictWriter(
            file, fieldnames=fields, lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(
            {f: ("" if row[f] is None else row[f]) for f in fields} for row in rows
        )

    _atomic_write(path, write)


def _plot(path, panels, noise, models, *, ncols):
    """AUROC against noise per model, one panel per (title, rows) in ``panels``."""
    from matplotlib.figure import Figure

    nrows = -(-len(panels) // ncols)
    figure = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    percent = np.array([100 * level for level in noise])
    # Models with equal results would hide one another: shift each a little
    # sideways, by a fraction of the smallest noise step.
    step = np.diff(np.sort(percent)).min() if len(percent) > 1 else 10.0
    shifts = (np.arange(len(models)) - (len(models) - 1) / 2) * 0.04 * step
    for ax, (title, cells) in zip(axes, panels):
        for model, shift in zip(models, shifts):
            rows = [cells[model, level] for level in noise]
            mean = [
                np.nan if r["auroc_mean"] is None else r["auroc_mean"] for r in rows
            ]
            std = [np.nan if r["auroc_std"] is None else r["auroc_std"] for r in rows]
            ax.errorbar(
                percent + shift, mean, yerr=std, marker="o", capsize=3, label=model
            )
        ax.set_title(title)
        ax.set_xlabel("training noise (%)")
        ax.set_ylabel("test AUROC")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    _atomic_write(
        path, lambda file: figure.savefig(file, format="png", dpi=100), mode="wb"
    )


def _write_outputs(
    output, config, records, table1, table2, *, categories, noise, models, table3
):
    """Write the CSV, JSON and PNG files; return their paths by name."""
    files = {
        "runs_csv": output / "runs.csv",
        "table1_csv": output / "table1_auroc.csv",
        "table2_csv": output / "table2_removed.csv",
        "table3_csv": output / "table3_threshold.csv",
        "results_json": output / "results.json",
        "figure_mean": output / "auroc_vs_noise.png",
        "figure_categories": output / "auroc_vs_noise_by_category.png",
    }
    _write_csv(files["runs_csv"], _RUN_FIELDS, records)
    _write_csv(files["table1_csv"], _TABLE1_FIELDS, table1)
    _write_csv(files["table2_csv"], _TABLE2_FIELDS, table2)
    _write_csv(files["table3_csv"], _TABLE3_FIELDS, table3)
    _write_json(
        files["results_json"],
        {
            "config": config,
            "runs": records,
            "table1": table1,
            "table2": table2,
            "table3": table3,
        },
    )
    cells = {(r["model"], r["category"], r["noise"]): r for r in table1}

    def panel(category):
        return {
            (m, level): cells[m, category, level] for m in models for level in noise
        }

    _plot(
        files["figure_mean"],
        [(f"{config['dataset']}: mean over categories", panel("mean"))],
        noise,
        models,
        ncols=1,
    )
    _plot(
        files["figure_categories"],
        [(c, panel(c)) for c in categories],
        noise,
        models,
        ncols=min(5, len(categories)),
    )
    return files


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def _check_choice(what, value, choices):
    if value not in choices:
        raise BenchmarkError(
            f"Unknown {what} {value!r}; expected one of: "
            f"{', '.join(map(str, choices))}."
        )


def run_benchmark(
    dataset="digits",
    *,
    root=None,
    categories=None,
    models=MODELS,
    noise=NOISE_LEVELS,
    repeats=3,
    config=None,
    output="metarefine_results",
    device="auto",
    n_jobs=-1,
    backend="loky",
    scheduler=None,
    progress=True,
):
    """Run the noise benchmark, resuming from the runs already in ``output``.

    For every category, noise level, repeat and model: draw a training set
    with that share of anomalies and a balanced test set from the category's
    features (:func:`~sklearn_metarefine.datasets.make_contaminated`), fit the
    model, and compute the test AUROC and, for the refiners, the good and bad
    training samples removed. Features are computed once per dataset or
    category and cached in ``output``; all models see the same features.

    Parameters
    ----------
    dataset : {"digits", "mvtec", "ksdd2"}, default="digits"
        ``"digits"``: scikit-learn's digits, each digit in turn normal and the
        others anomalous (no download). ``"mvtec"`` and ``"ksdd2"``: MVTec AD
        and KolektorSDD2 read from ``root``, with their official splits.
    root : str or path-like, default=None
        Folder of MVTec AD or KolektorSDD2.
    categories : sequence of str, default=None
        Categories to run; None runs all of the dataset's
        (:func:`dataset_categories`).
    models : sequence of str, default=MODELS
        Any of ``"vanilla"``, ``"osr"``, ``"irp"``, ``"metarefine"``,
        ``"iforest"``, ``"lof"`` (:func:`make_model`).
    noise : sequence of float, default=(0, 0.1, 0.2, 0.3, 0.4, 0.5)
        Fractions of anomalies in the training set.
    repeats : int, default=3
        Repeats of each (category, noise, model), each with its own draws.
    config : dict, default=None
        Overrides of the configuration (:func:`resolve_config`), e.g.
        ``{"flow": {"max_epochs": 5}}``.
    output : str or path-like, default="metarefine_results"
        Folder of the results. It records the configuration; a folder holding
        results of another configuration is refused.
    device : str, default="auto"
        Where the CNN and the flows run; "auto" picks CUDA when available.
    n_jobs : int, default=-1
        Runs executed in parallel (joblib's meaning; -1: all cores or all
        dask workers).
    backend : {"loky", "dask"}, default="loky"
        joblib backend. ``"dask"`` sends the runs to the dask.distributed
        cluster whose scheduler is at ``scheduler``.
    scheduler : str, default=None
        Address of the dask scheduler, e.g. ``"tcp://10.0.0.1:8786"``.
    progress : bool, default=True
        Show a progress bar over runs.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        ``runs`` (one record per run of the grid, see :func:`run_one`),
        ``table1`` (:func:`auroc_table`), ``table2`` (:func:`removal_table`),
        ``table3`` (:func:`threshold_table`),
        ``report`` (the tables as text), ``config``, ``files`` (paths of the
        files written, by name) and ``n_executed`` (runs executed by this
        call; the others were read from ``output``).

    Raises
    ------
    BenchmarkError
        If an argument is unknown, a requested noise level cannot be drawn
        from a category (the message gives the remedies), the dask backend
        is requested without a scheduler or without dask installed, or the
        output folder holds results of another configuration.

    Notes
    -----
    Every run sets torch and the BLAS libraries to one thread, and seeds its
    draw and model from :func:`derive_seed`, never from global state: a run
    gives the same numbers whichever backend, worker or ``n_jobs`` executes
    it (on the same device and library versions). torch's thread count is a
    process-wide setting, so dask workers should run one thread each.

    A run whose model raises (a flow that diverges, say) is recorded with its
    error, counted in the tables and listed in the report; like any finished
    run it is not run again on resumption: delete its file in
    ``output/runs`` to retry it.
    """
    config = resolve_config(dataset, config)
    # Duplicates would plan the same runs twice.
    categories = list(dict.fromkeys(dataset_categories(dataset, categories)))
    models = list(dict.fromkeys(models))
    for model in models:
        _check_choice("model", model, MODELS)
    noise = list(dict.fromkeys(float(level) for level in noise))
    _check_backend(backend, scheduler)
    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as error:
        raise BenchmarkError(str(error)) from error
    output = Path(output)
    runs_folder = output / _RUNS_FOLDER

    labelled = {c: _load_category(dataset, c, root) for c in categories}
    _check_feasible(config, labelled, noise)
    _claim_output(output, config)

    runs = plan_runs(config, categories, noise, repeats, models)
    stored = {run: _finished(runs_folder, run) for run in runs}
    pending = [run for run in runs if stored[run] is None]
    data = {
        category: (
            _features(images, config, device, output / _FEATURES_FOLDER),
            y,
            split,
        )
        for category, (images, y, split) in labelled.items()
        if any(run.category == category for run in pending)
    }
    with (
        _backend(backend, scheduler),
        tqdm(
            total=len(runs),
            initial=len(runs) - len(pending),
            desc="metarefine benchmark",
            unit="run",
            disable=not progress,
        ) as bar,
    ):
        _execute(pending, data, config, device, n_jobs, runs_folder, bar)

    records = [_finished(runs_folder, run) for run in runs]
    table1 = auroc_table(records, categories, noise, models)
    table2 = removal_table(records, noise, models, repeats)
    table3 = threshold_table(records, noise, models)
    files = _write_outputs(
        output,
        config,
        records,
        table1,
        table2,
        categories=categories,
        noise=noise,
        models=models,
        table3=table3,
    )
    report = format_report(
        table1,
        table2,
        records,
        categories=categories,
        noise=noise,
        models=models,
        repeats=repeats,
        table3=table3,
    )
    return Bunch(
        runs=records,
        table1=table1,
        table2=table2,
        table3=table3,
        report=report,
        config=config,
        files=files,
        n_executed=len(pending),
    )
