"""Figures of the patch models: one model's anomaly maps on test images.

The model of one run is fitted again, on the same draw with the same seed, in
the calling process, and its maps drawn over a few test images per category.
"""

import os

import numpy as np

from .. import plot_anomaly_maps
from .._utils import warn
from ..datasets import make_contaminated
from ._patches import image_maps, make_patch_model
from ._runs import _single_threaded
from ._storage import atomic_write, cached_features

# The models the anomaly-map figures show, the first one in the grid.
_FIGURE_MODELS = ("metarefine_patch", "patchcore_refined", "patchcore", "patchflow")
# Test images per figure: the first good ones and the first defective ones of
# the test set (a random order).
_N_GOOD, _N_DEFECTIVE = 2, 6


def map_figures(
    output, masked, labelled, runs, records, config, device, cache_folder, *, models
):
    """Write, per category, a figure of a patch model's maps on test images.

    The model is the first of ``metarefine_patch``, ``patchcore_refined``,
    ``patchcore`` and ``patchflow`` in ``models``; the run shown is its
    repeat 0 at the grid's highest noise level, fitted again here on the
    same draw with the same seed. A category whose run failed, or whose
    figure cannot be drawn, gets no figure and a one-line warning: the
    figures are extra, the tables stand.

    Parameters
    ----------
    output : path
        The output folder; the figures are ``anomaly_maps_<category>.png``.
    masked : dict
        Of each category, its ``images`` (an array, or ``PictureFiles``),
        ``masks``, ``target`` and ``defect_type``; empty when no patch model
        runs (no figure).
    labelled : dict
        Of each category, the (images, labels, split) its runs draw from.
    runs : list of Run
        The grid.
    records : list of dict
        The record of each run of ``runs``, in the same order.
    config : dict
        A resolved configuration.
    device : str
        Where the model runs.
    cache_folder : path
        The feature cache.
    models : sequence of str
        The grid's models.

    Returns
    -------
    files : dict
        The path of each figure, by the name ``"maps_<category>"``.
    """
    name = next((m for m in _FIGURE_MODELS if m in models), None)
    if name is None or not masked:
        return {}
    files = {}
    context = {"config": config, "device": device, "cache": cache_folder}
    for category, shown in masked.items():
        candidates = [
            (planned, record)
            for planned, record in zip(runs, records)
            if (planned.category, planned.model, planned.repeat) == (category, name, 0)
        ]
        run, record = max(candidates, key=lambda pair: pair[0].noise)
        if record["error"] is not None:
            # Fitting it again would fail again: its error is in the report.
            warn(
                f"The anomaly-map figure of {category} was not drawn: its run "
                f"({name}, noise {run.noise:g}, repeat 0) failed.",
                UserWarning,
            )
            continue
        try:
            path = _map_figure(output, category, name, run, shown, labelled, **context)
        except Exception as error:  # a figure is extra: the tables stand
            warn(
                f"The anomaly-map figure of {category} was not drawn: fitting "
                f"{name} again or drawing its maps failed ({type(error).__name__}: "
                f"{error}).",
                UserWarning,
            )
            continue
        files[f"maps_{category}"] = path
    return files


def _map_figure(output, category, name, run, shown, labelled, *, config, device, cache):
    """Fit ``run``'s model again on its draw and draw its maps; the figure's path."""
    images, target, split = labelled[category]
    patches = cached_features(images, config, device, cache, patches=True)
    draw = make_contaminated(
        np.arange(len(target)),
        target,
        noise=run.noise,
        split=split,
        random_state=run.seed,
        **config["contamination"],
    )
    model = make_patch_model(
        name,
        random_state=run.seed,
        device=device,
        config=config,
        grid_shape=patches.shape[1:3],
    )
    path = output / f"anomaly_maps_{category}.png"
    with _single_threaded():
        model.fit(patches[draw.train_indices].reshape(len(draw.train_indices), -1))
        title = (
            f"{category}: {name}, {100 * run.noise:g}% defective training images "
            f"(repeat 0); anomaly score (flagged: above the model's threshold)"
        )
        draw_anomaly_maps(
            path, model, patches, shown, draw.test_indices, config, title=title
        )
    return path


def draw_anomaly_maps(
    path, model, patches, surfaces, test_indices, config, *, title=None
):
    """Draw a fitted patch model's maps over a few test images of a surface.

    Parameters
    ----------
    path : path
        The PNG file to write.
    model : estimator
        A fitted patch model.
    patches : ndarray of shape (n_images, grid_height, grid_width, n_channels)
        The patch features of every image of the surface.
    surfaces : Bunch
        The category's ``images``, ``masks``, ``target`` and
        ``defect_type``: a generated surface, or ``load_masked``'s.
    test_indices : ndarray
        The test set of the model's draw, in its order.
    config : dict
        A resolved configuration of the surfaces dataset.
    title : str or None, default=None
        The figure's title.
    """
    good = test_indices[surfaces.target[test_indices] == 0][:_N_GOOD]
    defective = test_indices[surfaces.target[test_indices] == 1][:_N_DEFECTIVE]
    shown = np.concatenate([good, defective])
    rows = patches[shown].reshape(len(shown), -1)
    maps = image_maps(model, rows, surfaces.images.shape[1:3], config)
    scores = -model.score_samples(rows)
    flagged = model.predict(rows) == -1
    titles = [
        f"{surfaces.defect_type[i]} {score:.2f}{' (flagged)' if flag else ''}"
        for i, score, flag in zip(shown, scores, flagged)
    ]
    # With a path, plot_anomaly_maps draws outside pyplot (nothing leaks in a
    # loop) and writes the figure; that first copy goes nowhere, and the
    # figure, with its title, is written atomically like every output file.
    figure = plot_anomaly_maps(
        surfaces.images[shown],
        maps,
        surfaces.masks[shown],
        titles=titles,
        n_cols=len(shown),
        path=os.devnull,
    )
    if title is not None:
        figure.suptitle(title)
    atomic_write(
        path,
        lambda file: figure.savefig(file, format="png", dpi=100, bbox_inches="tight"),
        mode="wb",
    )
