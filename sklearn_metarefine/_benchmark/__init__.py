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

On the generated surfaces, patch models also run, on cached grids of patch
features, and their anomaly maps are scored against the defect masks.

The steps live in their own modules: ``_config`` (grid axes, configuration),
``_data`` (categories, images, feasible draws), ``_runs`` (the grid and one
run), ``_patches`` (the patch models, their maps and pixel metrics),
``_execution`` (joblib backends), ``_storage`` (the output folder),
``_report`` (tables, report, files, figures), ``_maps`` (the anomaly-map
figures) and ``_main`` (:func:`run_benchmark`, which chains them).
"""

from .._lazy import lazy_attributes

# Name -> the module that defines it. Names are imported on first use (PEP 562)
# so that the command line can check its arguments without importing torch.
_SOURCES = {
    "ALL_MODELS": "._config",
    "DATASETS": "._config",
    "DEFAULT_CONFIG": "._config",
    "DEFAULT_MODELS": "._config",
    "MODELS": "._config",
    "PATCH_MODELS": "._config",
    "SURFACES_CONFIG": "._config",
    "PATCH_CONFIG": "._config",
    "MASKED_DATASETS": "._config",
    "NOISE_LEVELS": "._config",
    "REFINER_MODELS": "._config",
    "BenchmarkError": "._config",
    "resolve_config": "._config",
    "DIGIT_CATEGORIES": "._data",
    "dataset_categories": "._data",
    "generate_surfaces": "._data",
    "load_masked": "._data",
    "load_category": "._data",
    "run_benchmark": "._main",
    "auroc_table": "._report",
    "format_report": "._report",
    "removal_table": "._report",
    "threshold_table": "._report",
    "Run": "._runs",
    "derive_seed": "._runs",
    "evaluate": "._runs",
    "make_model": "._runs",
    "plan_runs": "._runs",
    "run_one": "._runs",
    "cached_features": "._storage",
}

__all__ = list(_SOURCES)

__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES)
