"""Anomaly maps drawn over their images, with the ground-truth outlines."""

import os
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params

# matplotlib is imported in the function: pyplot takes a second to import, which
# every `import sklearn_metarefine` would otherwise pay.


def _as_images(images):
    """(H, W, C) arrays read as the detectors read them: files upright (EXIF),
    16-bit files and PIL images as 16-bit, pixel ranges checked."""
    from ._features._images import _read_item  # imports torch

    if isinstance(images, np.ndarray) and images.ndim in (3, 4):
        images = list(images)
    read = []
    for index, image in enumerate(images):
        try:
            read.append(_read_item(image, index))
        except ValueError as error:  # the detectors' messages name their X
            message = str(error)
            if not message.startswith(f"X[{index}]"):
                raise
            raise ValueError(f"images{message[1:]}") from None
    return read


def _displayable(image):
    """An ``(H, W, C)`` image's pixels in [0, 1], scaled by the detectors' own
    rule; one channel as grey ``(H, W)``."""
    from ._features._images import _to_unit_tensor

    pixels = _to_unit_tensor(image[None], "cpu")[0]  # (3, H, W)
    if image.shape[-1] == 1:
        return pixels[0].numpy()
    return pixels.permute(1, 2, 0).numpy()


@validate_params(
    {
        "images": ["array-like"],
        "maps": ["array-like"],
        "masks": ["array-like", None],
        "path": [str, os.PathLike, None],
        "titles": ["array-like", None],
        "n_cols": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "cmap": [str],
        "vmin": [Real, None],
        "vmax": [Real, None],
        "dpi": [Interval(Integral, 1, None, closed="left")],
    },
    prefer_skip_nested_validation=True,
)
def plot_anomaly_maps(
    images,
    maps,
    masks=None,
    *,
    path=None,
    titles=None,
    n_cols=4,
    alpha=0.5,
    cmap="jet",
    vmin=None,
    vmax=None,
    dpi=100,
):
    """Draw anomaly maps over their images in a grid, with the defects outlined.

    One panel per image: the image, its anomaly map on top in a colour map
    with transparency `alpha`, and, when `masks` are given, the outline of
    the ground-truth defect in white. All maps share one colour scale, so a
    normal image whose map stays cool looks normal.

    Parameters
    ----------
    images : array-like of shape (n_images, H, W) or (n_images, H, W, 3), \
            or list of arrays, PIL images or file paths
        The images, read as the detectors read them: 8-bit integers (0-255),
        uint16 arrays and 16-bit files or PIL images as 16-bit, floats in
        [0, 1]; image files turned upright by their EXIF orientation, as
        :meth:`~PatchCoreDetector.anomaly_map` reads them.

    maps : array-like of shape (n_images, h, w) or list of 2-D arrays
        Anomaly maps, higher = more anomalous, as ``anomaly_map`` returns
        them (a list, one map per image, for images of several sizes). A map
        of another size than its image is stretched over it.

    masks : array-like of shape (n_images, h', w'), list of 2-D arrays or \
None, default=None
        Ground-truth masks (True or non-zero on the defect), outlined over the
        image; stretched like the maps. Empty masks draw nothing.

    path : str, path-like or None, default=None
        Write the figure to this file (PNG, or any format matplotlib infers
        from the extension). With a path the figure is not registered with
        pyplot, so drawing many figures in a loop leaks nothing; without one
        it is created through pyplot, so that notebooks and galleries show it.

    titles : list of str or None, default=None
        One title per panel, for example each image's score.

    n_cols : int, default=4
        Panels per row.

    alpha : float in [0, 1], default=0.5
        Opacity of the maps: 0 shows only the images.

    cmap : str, default="jet"
        A matplotlib colour map name.

    vmin, vmax : float or None, default=None
        The map values at the ends of the colour scale; None takes the
        smallest and largest value over all maps.

    dpi : int, default=100
        Resolution of the written file, in dots per inch.

    Returns
    -------
    figure : matplotlib.figure.Figure
        The figure, with one axes per panel and a colour bar.

    Raises
    ------
    ValueError
        If `images`, `maps`, `masks` or `titles` differ in length, a map
        holds NaN or infinity, `maps` or `masks` is neither a stack nor a
        list of 2-D arrays, there are no maps, or `vmin` is above `vmax`.

    See Also
    --------
    pixel_auroc, aupro : Measure how well the maps find the defects.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import plot_anomaly_maps
    >>> images = np.full((2, 32, 32, 3), 128, dtype=np.uint8)
    >>> masks = np.zeros((2, 32, 32), dtype=bool)
    >>> masks[1, 10:20, 10:20] = True
    >>> maps = masks.astype(float)
    >>> figure = plot_anomaly_maps(images, maps, masks, titles=["good", "defect"])
    >>> len(figure.axes)  # two panels and the colour bar
    3
    """
    images = _as_images(images)
    if not len(maps):
        raise ValueError(
            "maps must have shape (n_images, height, width) with at least one "
            f"image; got {np.shape(maps)}."
        )
    maps = _panels(maps, "maps", np.float64)
    if not all(np.isfinite(image_map).all() for image_map in maps):
        raise ValueError("maps hold NaN or infinite values; nothing to draw.")
    if masks is not None:
        masks = [mask != 0 for mask in _panels(masks, "masks", None)]
    lengths = {"images": len(images), "maps": len(maps)}
    if masks is not None:
        lengths["masks"] = len(masks)
    if titles is not None:
        lengths["titles"] = len(titles)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"One entry per panel is needed; got the lengths {lengths}.")
    vmin = min(image_map.min() for image_map in maps) if vmin is None else vmin
    vmax = max(image_map.max() for image_map in maps) if vmax is None else vmax
    if vmin > vmax:
        raise ValueError(f"vmin={vmin} is above vmax={vmax}.")

    n_rows = -(-len(images) // n_cols)
    n_cols = min(n_cols, len(images))
    figure = _new_figure(path, (2.4 * n_cols + 0.6, 2.4 * n_rows))
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i >= len(images):
            continue
        image = _displayable(images[i])
        height, width = image.shape[:2]
        # Stretch maps and masks of another resolution over the image.
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=extent)
        shown = ax.imshow(
            maps[i], cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax, extent=extent
        )
        if masks is not None and masks[i].any():
            mask_height, mask_width = masks[i].shape
            x = (np.arange(mask_width) + 0.5) * (width / mask_width) - 0.5
            y = (np.arange(mask_height) + 0.5) * (height / mask_height) - 0.5
            outline = masks[i].astype(float)
            ax.contour(x, y, outline, levels=[0.5], colors="white", linewidths=1.0)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    figure.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="anomaly")
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


def _panels(values, name, dtype):
    """``values`` as a list of 2-D arrays: a stack ``(n_images, height,
    width)``, or a sequence of 2-D arrays of several sizes (as
    ``anomaly_map`` gives them for images of several sizes)."""
    if not hasattr(values, "shape"):
        arrays = [np.asarray(value, dtype=dtype) for value in values]
        if len({array.shape for array in arrays}) > 1:
            for i, array in enumerate(arrays):
                if array.ndim != 2:
                    raise ValueError(
                        f"{name} must have shape (n_images, height, width), or be "
                        f"a list of 2-D arrays; {name}[{i}] has shape {array.shape}."
                    )
            return arrays
    stack = np.asarray(values, dtype=dtype)
    if stack.ndim != 3:
        raise ValueError(
            f"{name} must have shape (n_images, height, width), or be a list of "
            f"2-D arrays; got {stack.shape}."
        )
    return list(stack)


def _new_figure(path, size):
    if path is None:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=size)
    from matplotlib.figure import Figure

    return Figure(figsize=size)
