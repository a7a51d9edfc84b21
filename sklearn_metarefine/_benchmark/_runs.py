"""The runs: the grid, the detectors, and what a worker executes for one run.

:func:`run_one` and :func:`make_model` run in the workers: nothing here reads
or writes files.
"""

import hashlib
import math
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from numbers import Real

import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from threadpoolctl import threadpool_limits

from .._torch_utils import resolve_device
from ..datasets import make_contaminated
from ._config import ALL_MODELS, KEEPS_IMAGES, PATCH_MODELS, BenchmarkError

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


def make_model(name, *, random_state, device, config, grid_shape=None):
    """Build one of the benchmark's detectors, unfitted.

    Parameters
    ----------
    name : str
        ``"vanilla"``: :class:`~sklearn_metarefine.FlowDetector` (DifferNet).
        ``"osr"``: one-shot removal, an
        :class:`~sklearn_metarefine.IQRRefiner` around it with
        ``max_iter=1``. ``"irp"``: iterative refinement, the same refiner
        with the configured ``max_iter`` (both with the ``"refiner"``
        section, the paper's procedure). ``"metarefine"``:
        :class:`~sklearn_metarefine.MetaRefineDetector` on feature vectors
        (``backbone=None``), with the ``"metarefine"`` section applied last
        (this package's defaults; ``paper_config.json`` makes it the paper's
        method). ``"iforest"``:
        :class:`~sklearn.ensemble.IsolationForest`. ``"lof"``:
        :class:`~sklearn.neighbors.LocalOutlierFactor` with
        ``novelty=True``. The patch models ``"patchcore"``,
        ``"patchcore_refined"``, ``"metarefine_patch"`` and ``"patchflow"``
        (on the datasets with masks) are described in :func:`~._patches.make_patch_model`.
    random_state : int
        Seed of the model.
    device : str
        Where the flows train, ``"auto"`` picking CUDA when available.
    config : dict
        A resolved configuration (:func:`resolve_config`).
    grid_shape : (int, int) or None, default=None
        Patch models only: the grid of patch vectors in each row of ``X``.

    Returns
    -------
    model : estimator
    """
    from .. import FlowDetector, IQRRefiner, MetaRefineDetector

    if name in PATCH_MODELS:
        from ._patches import make_patch_model

        return make_patch_model(
            name,
            random_state=random_state,
            device=device,
            config=config,
            grid_shape=grid_shape,
        )

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
        f"Unknown model {name!r}; expected one of {', '.join(ALL_MODELS)}."
    )


def check_models(config, models, device):
    """Raise, before anything runs, if a model's configured parameters are invalid."""
    sigma = config.get("patch", {}).get("sigma")
    valid = isinstance(sigma, Real) and not isinstance(sigma, bool)
    if set(models) & set(PATCH_MODELS) and not (valid and 0 <= sigma < math.inf):
        # The benchmark smooths the patch models' maps itself (pixel metrics).
        raise BenchmarkError(
            f"The configuration's patch sigma, the maps' smoothing in pixels, "
            f"must be a number >= 0; got {sigma!r}. Fix the value in the "
            "--config file."
        )
    for name in models:
        model = make_model(name, random_state=0, device=device, config=config)
        # The wrapped estimator of a refiner, the flow of patchflow.
        inner = getattr(model, "estimator", None) or getattr(model, "flow", None)
        for estimator in (model, inner):
            try:
                if estimator is not None:
                    estimator._validate_params()
            except ValueError as error:
                raise BenchmarkError(
                    f"The configuration of the {name!r} model is invalid: {error} "
                    "Fix the value in the --config file or the matching option."
                ) from error


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


def run_one(run, X, y, split, config, device, *, masks=None):
    """Fit one detector on one contaminated draw and evaluate it.

    Parameters
    ----------
    run : Run
        The cell of the grid.
    X : ndarray of shape (n_samples, n_features)
        Features of every sample of the category; for the patch models, of
        shape (n_samples, grid_height, grid_width, n_channels), every image's
        grid of patch vectors.
    y : ndarray of shape (n_samples,)
        1 for anomalous, 0 for normal samples.
    split : ndarray of shape (n_samples,) or None
        The dataset's official "train"/"test" split, if it has one.
    config : dict
        A resolved configuration (:func:`resolve_config`).
    device : str
        Where the flows train.
    masks : ndarray of shape (n_samples, height, width) or None, default=None
        The defect mask of every sample, for the pixel metrics of models with
        ``anomaly_map``.

    Returns
    -------
    record : dict
        The run's identity, the sizes of its training and test sets, the test
        AUROC (anomaly score = minus ``score_samples``), for models with
        anomaly maps when ``masks`` are given the pixel AUROC and the AUPRO
        (to a 30% false-positive rate) of the test maps (else None), the
        false-alarm rate
        (share of normal test samples) and detection rate (share of anomalous
        test samples) that the model's own ``predict`` flags, for refiners the
        numbers of good and bad training samples removed and the rounds run,
        the seconds spent fitting and scoring, and ``error``: None, or the
        exception that made the model fail (the other results are then None,
        and ``traceback`` holds its traceback).
    """
    grid_shape = None
    if run.model in PATCH_MODELS:
        grid_shape = X.shape[1:3]
        X = X.reshape(len(X), -1)
    model = make_model(
        run.model,
        random_state=run.seed,
        device=device,
        config=config,
        grid_shape=grid_shape,
    )
    return evaluate(model, run, X, y, split, config, device, masks=masks)


def evaluate(model, run, X, y, split, config, device, *, masks=None):
    """Fit a given detector on a run's contaminated draw and evaluate it.

    :func:`run_one` with any outlier detector in place of the one that
    :func:`make_model` builds for ``run.model``: the draw, the scoring and the
    record are the same.

    Parameters
    ----------
    model : estimator
        An unfitted detector with ``score_samples`` (higher is more normal).
    run : Run
        The cell of the grid; its seed seeds the draw, not the model.
    X, y, split, config
        As in :func:`run_one`, ``X`` 2-D.
    device : str
        Where the model runs, for the record.
    masks : ndarray of shape (n_samples, height, width) or None, default=None
        As in :func:`run_one`.

    Returns
    -------
    record : dict
        As in :func:`run_one`.
    """
    data = make_contaminated(
        X,
        y,
        noise=run.noise,
        split=split,
        random_state=run.seed,
        **config["contamination"],
    )
    record = {
        "dataset": config["dataset"],
        **asdict(run),
        "n_train": len(data.y_train),
        "n_train_anomalous": int(data.y_train.sum()),
        "n_test": len(data.y_test),
        "auroc": None,
        "pixel_auroc": None,
        "aupro": None,
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
            _check_finite(anomaly_score)
            record["auroc"] = float(roc_auc_score(data.y_test, anomaly_score))
            if masks is not None and hasattr(model, "anomaly_map"):
                from ._patches import pixel_scores

                record["pixel_auroc"], record["aupro"] = pixel_scores(
                    model, data.X_test, masks[data.test_indices], config
                )
            flagged = model.predict(data.X_test) == -1
            record["false_alarm"] = float(flagged[data.y_test == 0].mean())
            record["detection"] = float(flagged[data.y_test == 1].mean())
        except BenchmarkError:
            # An input file the run reads (a defect mask) is unreadable: the
            # dataset's problem, not the model's result; nothing is recorded.
            raise
        except Exception as error:
            record["error"] = f"{type(error).__name__}: {error}"
            record["traceback"] = traceback.format_exc()
    record["seconds"] = time.perf_counter() - start
    removes = hasattr(model, "inlier_mask_") and run.model not in KEEPS_IMAGES
    if record["error"] is None and removes:
        removed = ~model.inlier_mask_
        record["removed_good"] = int(np.sum(removed & (data.y_train == 0)))
        record["removed_bad"] = int(np.sum(removed & (data.y_train == 1)))
        # The patch detectors clean once, without rounds.
        record["n_iter"] = int(getattr(model, "n_iter_", 1))
    return record


def _check_finite(anomaly_score):
    """Refuse scores without a number: roc_auc_score's "Input contains NaN"
    blamed the data, where the model's scores are at fault."""
    n_nan = int(np.isnan(anomaly_score).sum())
    n_inf = int(np.isinf(anomaly_score).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"the model's score_samples gave {n_nan} NaN and {n_inf} infinite "
            f"score(s) for the {len(anomaly_score)} test images; AUROC needs "
            "finite scores."
        )
