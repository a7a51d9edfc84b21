"""run_benchmark: the benchmark's steps, from the arguments to the report."""

from pathlib import Path

from sklearn.utils import Bunch

from ._config import (
    MODELS,
    NOISE_LEVELS,
    check_choice,
    check_grid,
    check_n_jobs,
    resolve_config,
)
from ._data import check_feasible, dataset_categories, load_category
from ._execution import check_execution, execute
from ._report import (
    auroc_table,
    format_report,
    removal_table,
    threshold_table,
    write_outputs,
)
from ._runs import check_models, plan_runs
from ._storage import (
    FEATURES_FOLDER,
    RUNS_FOLDER,
    cached_features,
    check_features,
    check_output,
    claim_output,
    read_run,
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
        If an argument is unknown or out of range (a noise level outside
        [0, 0.5], ``repeats`` below 1, ``n_jobs=0``, a configured value a
        model or the features refuse), a requested noise level cannot be
        drawn from a category (the message gives the remedies), the dask
        backend is requested without a scheduler or without dask installed,
        the output folder cannot be written or holds results of another
        configuration, or a file in it (the configuration, a run record, a
        cached feature array) is not what the benchmark wrote. All arguments
        are checked before anything is written.

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
    # Every argument is checked before the first file is written.
    check_grid(noise, repeats)
    check_n_jobs(n_jobs)
    check_output(output)
    config = resolve_config(dataset, config)
    categories, models, noise = _grid_axes(dataset, categories, models, noise)
    check_execution(backend, scheduler, device)
    check_models(config, models, device)
    output = Path(output)
    runs_folder = output / RUNS_FOLDER

    labelled = {c: load_category(dataset, c, root) for c in categories}
    check_feasible(config, labelled, noise)
    image_sets = [images for images, _, _ in labelled.values()]
    check_features(image_sets, config, device, output / FEATURES_FOLDER)
    claim_output(output, config)

    runs = plan_runs(config, categories, noise, repeats, models)
    pending = [run for run in runs if read_run(runs_folder, run) is None]
    data = _category_data(labelled, pending, config, device, output / FEATURES_FOLDER)
    execute(
        pending,
        data,
        config,
        device,
        runs_folder,
        n_runs=len(runs),
        n_jobs=n_jobs,
        backend=backend,
        scheduler=scheduler,
        progress=progress,
    )

    records = [read_run(runs_folder, run) for run in runs]
    table1 = auroc_table(records, categories, noise, models)
    table2 = removal_table(records, noise, models, repeats)
    table3 = threshold_table(records, noise, models)
    axes = {"categories": categories, "noise": noise, "models": models}
    files = write_outputs(
        output, config, records, table1, table2, **axes, table3=table3
    )
    report = format_report(
        table1, table2, records, **axes, repeats=repeats, table3=table3
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


def _grid_axes(dataset, categories, models, noise):
    """The grid's checked axes, without duplicates (they would plan runs twice)."""
    categories = list(dict.fromkeys(dataset_categories(dataset, categories)))
    models = list(dict.fromkeys(models))
    for model in models:
        check_choice("model", model, MODELS)
    noise = list(dict.fromkeys(float(level) for level in noise))
    return categories, models, noise


def _category_data(labelled, pending, config, device, cache_folder):
    """Features, labels and split of each category that has pending runs."""
    return {
        category: (cached_features(images, config, device, cache_folder), y, split)
        for category, (images, y, split) in labelled.items()
        if any(run.category == category for run in pending)
    }
