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

The steps live in their own modules: ``_config`` (grid axes, configuration),
``_data`` (categories, images, feasible draws), ``_runs`` (the grid and one
run), ``_execution`` (joblib backends), ``_storage`` (the output folder),
``_report`` (tables, report, files, figures) and ``_main``
(:func:`run_benchmark`, which chains them).
"""

from ._config import (
    DATASETS,
    DEFAULT_CONFIG,
    MODELS,
    NOISE_LEVELS,
    REFINER_MODELS,
    BenchmarkError,
    resolve_config,
)
from ._data import DIGIT_CATEGORIES, dataset_categories, load_category
from ._main import run_benchmark
from ._report import auroc_table, format_report, removal_table
from ._runs import Run, derive_seed, evaluate, make_model, plan_runs, run_one
from ._storage import cached_features

__all__ = [
    "run_benchmark",
    "BenchmarkError",
    "DATASETS",
    "DEFAULT_CONFIG",
    "DIGIT_CATEGORIES",
    "MODELS",
    "NOISE_LEVELS",
    "REFINER_MODELS",
    "Run",
    "auroc_table",
    "cached_features",
    "dataset_categories",
    "derive_seed",
    "evaluate",
    "format_report",
    "load_category",
    "make_model",
    "plan_runs",
    "removal_table",
    "resolve_config",
    "run_one",
]
