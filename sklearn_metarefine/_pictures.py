"""Pictures the command line writes: a contact sheet of images, anomaly-map overlays."""

import numpy as np
from PIL import Image, ImageDraw

from ._image_files import UnreadableImageError, read_image

_CAPTION_LINE = 12
_MARGIN = 4


def _as_rgb8(pixels):
    """(H, W[, C]) pixels as read by :func:`read_image` -> (H, W, 3) uint8."""
    pixels = np.asarray(pixels)
    if pixels.dtype.kind == "f":
        pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255.0)
    pixels = pixels.astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def contact_sheet(entries, path, *, title, columns=8, thumbnail=128):
    """Write a PNG grid of thumbnails, each above its caption lines.

    ``entries`` is a sequence of ``(image path, [caption lines])``; images are
    read one at a time, so memory holds the sheet and one image. An image that
    cannot be read gets an empty cell with its caption.
    """
    n_lines = max((len(lines) for _, lines in entries), default=0)
    cell_w = thumbnail + 2 * _MARGIN
    cell_h = thumbnail + 2 * _MARGIN + n_lines * _CAPTION_LINE
    rows = -(-len(entries) // columns)
    width = cell_w * max(1, min(columns, len(entries)))
    width = max(width, 6 * len(title) + 2 * _MARGIN)
    sheet = Image.new("RGB", (width, _CAPTION_LINE * 2 + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((_MARGIN, _MARGIN), title, fill="black")
    for index, (image_path, lines) in enumerate(entries):
        left = (index % columns) * cell_w + _MARGIN
        top = _CAPTION_LINE * 2 + (index // columns) * cell_h + _MARGIN
        try:
            image = Image.fromarray(_as_rgb8(read_image(image_path)))
            scale = thumbnail / max(image.size)
            size = tuple(max(1, round(side * scale)) for side in image.size)
            # Small images are enlarged pixel by pixel, large ones filtered down.
            image = image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)
            sheet.paste(image, (left, top))
        except UnreadableImageError:
            draw.rectangle(
                (left, top, left + thumbnail, top + thumbnail), outline="red"
            )
        for n, line in enumerate(lines):
            y = top + thumbnail + 2 + n * _CAPTION_LINE
            draw.text((left, y), line, fill="black")
    sheet.save(path, format="PNG")


def map_overlay(pixels, anomaly_map, threshold):
    """An image with its anomaly map blended over it, as a PIL image.

    Colours (jet) mark the threshold: values below it run from blue at the
    map's lowest value to orange just below the threshold, values at or above
    it from red at the threshold to dark red at the map's highest value. Red
    marks exactly the parts of the image where the map reaches the threshold.
    """
    from matplotlib import colormaps

    rgb = _as_rgb8(pixels)
    height, width = rgb.shape[:2]
    # Compared with the threshold in float64: a float32 map rounded values
    # just below it up to it.
    values = np.asarray(anomaly_map, dtype=np.float64)
    if values.shape != (height, width):
        values = np.asarray(
            Image.fromarray(values.astype(np.float32), mode="F").resize(
                (width, height), Image.BILINEAR
            ),
            dtype=np.float64,
        )
    threshold = float(threshold)
    # The colours span the finite values and the threshold; infinite values
    # take the ends, and a NaN pixel (no number) the colour map's "bad"
    # colour alone.
    span = values[np.isfinite(values)]
    if np.isfinite(threshold):
        span = np.append(span, threshold)
    low, high = (float(span.min()), float(span.max())) if span.size else (0.0, 0.0)
    edge = min(max(threshold, low), high)
    ends = np.clip(values, low, high)
    scaled = np.where(
        values < threshold,
        _BELOW_RED * _share(ends, low, edge),
        _RED + (1.0 - _RED) * _share(ends, edge, high),
    )
    scaled[np.isnan(values)] = np.nan
    colours = colormaps["jet"](scaled)[..., :3] * 255.0
    blended = 0.5 * rgb + 0.5 * colours
    return Image.fromarray(np.round(blended).astype(np.uint8))


# Where the jet colour map turns orange and red: a gap between them, so that
# the threshold shows as an edge on the overlay.
_BELOW_RED, _RED = 0.75, 0.875


def _share(values, low, high):
    """``values`` scaled from ``low`` (0) to ``high`` (1), clipped; 0 where
    the two are equal."""
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)
