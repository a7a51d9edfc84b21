"""run_benchmark: the benchmark's steps, from the arguments to the report."""

from pathlib import Path

from sklearn.utils import Bunch

from ..datasets._files import _absolute
from ._config import (
    ALL_MODELS,
    DEFAULT_MODELS,
    MASKED_DATASETS,
    NOISE_LEVELS,
    PATCH_MODELS,
    BenchmarkError,
    check_choice,
    check_grid,
    check_n_jobs,
    resolve_config,
)
from ._data import (
    check_categories_present,
    check_feasible,
    check_masks,
    dataset_categories,
    generate_surfaces,
    load_category,
    load_masked,
)
from ._execution import check_execution, execute
from ._maps import map_figures
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
    check_dataset_files,
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
    models=None,
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

    The patch models also score their anomaly maps against the defect masks
    (pixel AUROC and AUPRO; for MVTec AD and KolektorSDD2 the masks are
    resized, nearest neighbour, to the CNN's input size
    ``config["patch"]["image_size"]``, where the maps are scored), and a
    figure per category shows the maps of one of them over a few test
    images.

    Parameters
    ----------
    dataset : {"digits", "mvtec", "ksdd2", "surfaces"}, default="digits"
        ``"digits"``: scikit-learn's digits, each digit in turn normal and the
        others anomalous (no download). ``"mvtec"`` and ``"ksdd2"``: MVTec AD
        and KolektorSDD2 read from ``root``, with their official splits.
        ``"surfaces"``: the generated surfaces of
        :func:`~sklearn_metarefine.datasets.make_surfaces`, with defect masks
        (no download). The patch models run on the three datasets with
        masks: mvtec, ksdd2 and surfaces.
    root : str or path-like, default=None
        Folder of MVTec AD or KolektorSDD2.
    categories : sequence of str, default=None
        Categories to run; None runs all of the dataset's
        (:func:`dataset_categories`).
    models : sequence of str, default=None
        Any of ``"vanilla"``, ``"osr"``, ``"irp"``, ``"metarefine"``,
        ``"iforest"``, ``"lof"`` and, on the datasets with masks, the patch models
        ``"patchcore"``, ``"patchcore_refined"``, ``"metarefine_patch"`` and
        ``"patchflow"`` (:func:`make_model`). None runs the dataset's default
        models (``DEFAULT_MODELS``): the six image-level ones, and on the
        surfaces the four patch models, ``"metarefine"`` and ``"iforest"``.
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
        call; the others were read from ``output``). Table 1 also holds the
        pixel AUROC and AUPRO of the models with anomaly maps (None for the
        others).

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
    rooted = dataset in ("mvtec", "ksdd2")  # read from a folder
    if root is not None and not rooted:
        made = "bundled" if dataset == "digits" else "generated"
        raise BenchmarkError(
            f"The {dataset} dataset is {made}: --root names the folder of mvtec "
            "or ksdd2 only."
        )
    check_grid(noise, repeats)
    check_n_jobs(n_jobs)
    check_output(output)
    config = resolve_config(dataset, config)
    categories, models, noise = _grid_axes(dataset, categories, models, noise)
    check_execution(backend, scheduler, device)
    check_models(config, models, device)
    output = Path(output)
    runs_folder = output / RUNS_FOLDER
    cache = output / FEATURES_FOLDER

    check_categories_present(dataset, categories, root)
    # The defect masks (and pictures for the figures) of the patch models.
    if dataset == "surfaces":
        masked = {c: generate_surfaces(c, config) for c in categories}
        labelled = {c: (s.images, s.target, None) for c, s in masked.items()}
    elif rooted:  # one read of each category: images, labels and masks
        read = {c: load_masked(dataset, c, root, config) for c in categories}
        labelled = {c: (m.filenames, m.target, m.split) for c, m in read.items()}
        masked = read if any(model in PATCH_MODELS for model in models) else {}
    else:
        masked = {}
        labelled = {c: load_category(dataset, c, root) for c in categories}
    check_feasible(config, labelled, noise)
    image_sets = [images for images, _, _ in labelled.values()]
    if any(model not in PATCH_MODELS for model in models):
        check_features(image_sets, config, device, cache)
    if any(model in PATCH_MODELS for model in models):
        check_features(image_sets, config, device, cache, patches=True)
    # The dataset folder is part of what the stored results measured: results
    # of another folder must not be reused (digits and surfaces have none).
    claimed = {**config, "root": str(_absolute(root))} if rooted else config
    claim_output(output, claimed)
    runs = plan_runs(config, categories, noise, repeats, models)
    pending = [run for run in runs if read_run(runs_folder, run) is None]
    if rooted:
        # Every mask the pending runs may read, before the dataset's files are
        # recorded: one found unreadable in the runs, once repaired, made the
        # folder "results of other files".
        if any(run.model in PATCH_MODELS for run in pending):
            check_masks(masked)
        masks = {c: [f for f in read[c].masks.filenames if f is not None]
                 for c in categories}
        check_dataset_files(output, labelled, masks)
    data = _category_data(
        labelled, masked, pending, config, device, cache, progress=progress
    )
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
    table2 = removal_table(records, noise, models)
    table3 = threshold_table(records, noise, models)
    axes = {"categories": categories, "noise": noise, "models": models}
    files = write_outputs(
        output, config, records, table1, table2, **axes, table3=table3
    )
    report = format_report(
        table1, table2, records, **axes, repeats=repeats, table3=table3
    )
    files.update(
        map_figures(
            output,
            masked,
            labelled,
            runs,
            records,
            config,
            device,
            cache,
            models=models,
        )
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
    models = list(dict.fromkeys(DEFAULT_MODELS[dataset] if models is None else models))
    for model in models:
        check_choice("model", model, ALL_MODELS)
        if model in PATCH_MODELS and dataset not in MASKED_DATASETS:
            raise BenchmarkError(
                f"The patch model {model!r} runs on the datasets with defect "
                f"masks for its anomaly maps ({', '.join(MASKED_DATASETS)}); "
                f"{dataset} gets the image-level models "
                f"({', '.join(DEFAULT_MODELS[dataset])})."
            )
    # + 0.0: -0.0 is 0.0, named and printed as such.
    noise = list(dict.fromkeys(float(level) + 0.0 for level in noise))
    axes = {"categories": categories, "models": models, "noise": noise}
    for name, axis in axes.items():
        if not axis:
            raise BenchmarkError(f"No {name} to run (--{name}): name at least one.")
    named = {}
    for level in noise:  # a run file names its level with 4 decimals
        other = named.setdefault(f"{level:.4f}", level)
        if other != level:
            raise BenchmarkError(
                f"The noise levels {other!r} and {level!r} differ beyond the 4 "
                "decimals that name their run files; pass levels that differ "
                "within 4 decimals."
            )
    return categories, models, noise


def _category_data(
    labelled, masked, pending, config, device, cache_folder, *, progress=False
):
    """Labels, split and the features the pending runs need, per category.

    The pooled features when an image-level run is pending, the patch grids
    and defect masks when a patch run is; features not cached yet are
    computed with a progress bar when ``progress``.
    """
    data = {}
    for category, (images, y, split) in labelled.items():
        models = {run.model for run in pending if run.category == category}
        if not models:
            continue
        patch = bool(models & set(PATCH_MODELS))
        data[category] = {
            "y": y,
            "split": split,
            "features": (
                cached_features(images, config, device, cache_folder, progress=progress)
                if models - set(PATCH_MODELS)
                else None
            ),
            "patches": (
                cached_features(
                    images, config, device, cache_folder, patches=True, progress=progress
                )
                if patch
                else None
            ),
            "masks": masked[category].masks if patch else None,
        }
    return data
