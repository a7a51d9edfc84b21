"""The patch models of the benchmark: detectors, maps, pixel metrics.

The patch models take each image's grid of patch vectors, computed once per
category and cached (:func:`~._storage.cached_features`), as one row of
``X``; their ``anomaly_map`` then returns the grid of patch distances, which
:func:`image_maps` brings to the images' resolution exactly as the detectors
do from images.
"""

import numpy as np

from .. import (
    FlowDetector,
    MetaRefineDetector,
    PatchCoreDetector,
    PatchFlowDetector,
    aupro,
    pixel_auroc,
)
from .._patch._grid import grid_maps
from ._config import PATCH_MODELS, BenchmarkError


def make_patch_model(name, *, random_state, device, config, grid_shape=None):
    """Build one of the patch models, unfitted, for rows of patch grids.

    Parameters
    ----------
    name : {"patchcore", "patchcore_refined", "metarefine_patch", "patchflow"}
        ``"patchcore"``: :class:`~sklearn_metarefine.PatchCoreDetector`
        without cleaning (PatchCore). ``"patchcore_refined"``: the same with
        the ``"patchcore_refined"`` section (by default
        ``bank_cleaning="images"``). ``"metarefine_patch"``:
        :class:`~sklearn_metarefine.MetaRefineDetector` with
        ``level="patch"``, the one switch. ``"patchflow"``:
        :class:`~sklearn_metarefine.PatchFlowDetector` with the
        ``"patchflow"`` section (by default ``image_cleaning=True``).
        Each gets ``coreset_fraction`` (not patchflow) and ``k`` from the
        ``"patch"`` section.
    random_state : int
        Seed of the model.
    device : str
        Where the nearest-neighbour search runs.
    config : dict
        A resolved configuration of the surfaces dataset.
    grid_shape : (int, int) or None, default=None
        The patch grid of each row of ``X``.

    Returns
    -------
    model : estimator
    """
    patch = config["patch"]
    shared = {
        "backbone": None,
        "grid_shape": grid_shape,
        "k": patch["k"],
        "device": device,
        "random_state": random_state,
    }
    if name == "patchflow":
        settings = dict(config["patchflow"])
        flow = settings.pop("flow")
        try:
            flow = None if flow is None else FlowDetector(**flow)
        except TypeError as error:
            raise BenchmarkError(
                f"config['patchflow']['flow'] must be None or FlowDetector "
                f"parameters; got {flow!r}: {error}"
            ) from error
        return PatchFlowDetector(**shared, flow=flow, **settings)
    shared["coreset_fraction"] = patch["coreset_fraction"]
    if name == "patchcore":
        return PatchCoreDetector(**shared)
    if name == "patchcore_refined":
        return PatchCoreDetector(**shared, **config["patchcore_refined"])
    if name == "metarefine_patch":
        return MetaRefineDetector(level="patch", **shared)
    raise BenchmarkError(
        f"Unknown patch model {name!r}; expected one of {', '.join(PATCH_MODELS)}."
    )


def image_maps(model, X, image_shape, config):
    """Anomaly maps of rows of patch grids at the images' resolution.

    The model's grid of patch scores, resized and smoothed as the patch
    detectors' ``anomaly_map`` does for images of ``image_shape`` that the CNN
    saw at ``config["patch"]["image_size"]``.

    Returns
    -------
    maps : ndarray of shape (n_images, height, width), dtype float32
    """
    grids = np.asarray(model.anomaly_map(X), dtype=np.float32)
    size = config["patch"]["image_size"]
    patch = config["patch"]
    return grid_maps(
        grids, image_shape, (size, size), patch["sigma"], patch["backbone"]
    )


def pixel_scores(model, X_test, masks_test, config):
    """Pixel AUROC and AUPRO (to 30% false positives) of a model's maps."""
    maps = image_maps(model, X_test, masks_test.shape[1:], config)
    return float(pixel_auroc(masks_test, maps)), float(aupro(masks_test, maps))
