"""Defects of :func:`make_surfaces`, painted onto a surface's reflectance.

A defect is a shape and an appearance: an opacity map ``alpha`` in [0, 1] that is
exactly 0 outside the defect, and the reflectance ``target`` the surface takes
where ``alpha`` is 1. The defective reflectance is
``reflectance + contrast * alpha * (target - reflectance)``, so pixels outside
the defect keep their value bit for bit and the ground-truth mask is
``alpha > 0``. Lengths are in reference pixels (see ``_textures``).
"""

import numpy as np
from scipy import ndimage

from ._textures import LUMA, REFERENCE_SIZE, noise, smoothstep

# Defect area, as a fraction of the image, drawn log-uniformly in these ranges.
# Thin defects are long rather than wide: their area stays near 1%.
AREA_RANGES = {
    "scratch": (0.006, 0.02),
    "crack": (0.006, 0.02),
    "hole": (0.01, 0.05),
    "stain": (0.02, 0.10),
    "color": (0.02, 0.10),
    "missing_thread": (0.02, 0.06),
}


def _log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def draw_area(rng, defect):
    """A defect area, as a fraction of the image, for the defect type."""
    return _log_uniform(rng, *AREA_RANGES[defect])


# --- shapes --------------------------------------------------------------------


def _blob(rng, grid, area, *, softness, roughness):
    """Opacity of an irregular ellipse of about ``area`` of the image."""
    pixels = area * REFERENCE_SIZE**2
    aspect = rng.uniform(0.5, 1.0)
    a = np.sqrt(pixels / (np.pi * aspect))
    b = a * aspect
    margin = min(0.8 * a, REFERENCE_SIZE / 2 - 8)
    cx, cy = rng.uniform(margin, REFERENCE_SIZE - margin, size=2)
    theta = rng.uniform(0, np.pi)
    dx, dy = grid.x - cx, grid.y - cy
    along = dx * np.cos(theta) + dy * np.sin(theta)
    across = -dx * np.sin(theta) + dy * np.cos(theta)
    radius = np.sqrt((along / a) ** 2 + (across / b) ** 2)
    radius = radius + roughness * noise(rng, grid, max(1.0, 0.3 * b))
    # A rough edge can leave specks apart from the blob.
    return _largest_region(1 - smoothstep(1 - softness, 1.0, radius))


def _largest_region(alpha):
    """``alpha`` zeroed outside its largest 8-connected region.

    A defect is one region: AUPRO weighs every region the same.
    """
    labels, n_regions = ndimage.label(alpha > 0, structure=np.ones((3, 3)))
    if n_regions > 1:
        largest = 1 + np.argmax(np.bincount(labels.ravel())[1:])
        alpha = np.where(labels == largest, alpha, 0.0)
    return alpha


def _stroke(grid, points, width):
    """Opacity of a line of ``width`` reference px along the polyline ``points``."""
    points = np.asarray(points, dtype=float)
    # Sample the polyline at a quarter image pixel so that it rasterises unbroken.
    step = 0.25 / grid.scale
    segments = []
    for start, stop in zip(points[:-1], points[1:]):
        n = max(int(np.ceil(np.hypot(*(stop - start)) / step)), 1)
        fractions = np.linspace(0, 1, n, endpoint=False)[:, None]
        segments.append(start + fractions * (stop - start))
    dense = np.concatenate(segments + [points[-1:]]) * grid.scale
    ix, iy = np.floor(dense[:, 0]).astype(int), np.floor(dense[:, 1]).astype(int)
    inside = (ix >= 0) & (ix < grid.size) & (iy >= 0) & (iy < grid.size)
    line = np.zeros((grid.size, grid.size), dtype=bool)
    line[iy[inside], ix[inside]] = True
    if not line.any():
        return np.zeros(line.shape)
    distance = ndimage.distance_transform_edt(~line)
    half = 0.5 * width * grid.scale
    return 1 - smoothstep(half - 0.5, half + 0.5, distance)


def _stroke_length(area, width):
    return float(np.clip(area * REFERENCE_SIZE**2 / width, 25.0, 115.0))


def _inner_point(rng, margin=16.0):
    return rng.uniform(margin, REFERENCE_SIZE - margin, size=2)


def _arc(rng, length):
    """A gently curved line of ``length`` through a point inside the image."""
    centre = _inner_point(rng)
    theta = rng.uniform(0, np.pi)
    direction = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-length / 2, length / 2, 32)
    bend = rng.uniform(-1, 1) * 0.004
    return centre + t[:, None] * direction + (bend * t**2)[:, None] * normal


def _random_walk(rng, start, theta, length, wiggle=0.35):
    """A jagged path: unit steps whose direction wanders around ``theta``."""
    n = max(int(length), 2)
    heading = theta + np.cumsum(rng.normal(0, wiggle, n))
    # Pull the heading back towards theta so the crack runs somewhere.
    heading = theta + (heading - theta) * np.exp(-np.arange(n) / 12.0)
    heading += rng.normal(0, wiggle, n)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1)
    return start + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])


# --- defects -------------------------------------------------------------------


def _discoloured(rng, reflectance, strength=0.5):
    """Reflectance of another hue (by ``strength``), a little lighter or darker."""
    direction = rng.normal(size=3)
    direction -= LUMA * (direction @ LUMA) / (LUMA @ LUMA)
    direction /= np.linalg.norm(direction)
    tint = (1 + strength * direction) * rng.uniform(0.85, 1.15)
    return np.clip(reflectance * tint, 0, 1)


def scratch(rng, surface, area):
    """A thin, gently curved groove, mostly light (finish and grain cut through).

    The groove is filled with powder or dirt, which hides most of the texture.
    """
    width = rng.uniform(1.2, 2.5)
    alpha = _stroke(surface.grid, _arc(rng, _stroke_length(area, width)), width)
    reflectance = surface.reflectance
    if rng.uniform() < 0.75:
        target = 0.3 * reflectance + 0.6
    else:
        target = 0.4 * reflectance
    return alpha, target


def crack(rng, surface, area):
    """A dark, jagged fissure with one side branch."""
    width = rng.uniform(1.0, 2.0)
    length = _stroke_length(area, width)
    theta = rng.uniform(0, 2 * np.pi)
    start = _inner_point(rng, 28.0) - 0.4 * length * np.array(
        [np.cos(theta), np.sin(theta)]
    )
    trunk = _random_walk(rng, start, theta, 0.75 * length)
    fork = trunk[len(trunk) // 2]
    branch = _random_walk(rng, fork, theta + rng.choice([-1, 1]) * 0.8, 0.25 * length)
    alpha = np.maximum(
        _stroke(surface.grid, trunk, width), _stroke(surface.grid, branch, width * 0.8)
    )
    # Where the crack leaves the image and comes back, keep one piece.
    alpha = _largest_region(alpha)
    return alpha, 0.2 * surface.reflectance


def _shifted(image, dy, dx):
    """``image`` moved by whole pixels, zero where nothing moved in."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def hole(rng, surface, area):
    """A hole or pit with ragged edges: a dark inside, its far wall catching light."""
    grid = surface.grid
    alpha = _blob(rng, grid, area, softness=0.15, roughness=0.25)
    light = rng.uniform(0, 2 * np.pi)
    wall = 1.5 * grid.scale
    dy, dx = int(round(wall * np.sin(light))), int(round(wall * np.cos(light)))
    lit = np.clip(alpha - _shifted(alpha, dy, dx), 0, 1)[..., None]
    dark = 0.06 * (1 + 0.3 * noise(rng, grid, 1.5))[..., None]
    bright = 0.7 * surface.reflectance + 0.25
    return alpha, np.clip(dark * (1 - lit) + bright * lit, 0, 1)


_STAIN_TINTS = np.array(
    [
        [0.58, 0.42, 0.26],  # coffee, rust
        [0.46, 0.46, 0.51],  # oil
        [0.55, 0.64, 0.45],  # mould
    ]
)


def stain(rng, surface, area):
    """A blot of liquid that soaked in: darker, tinted, with a tide line.

    The liquid fills the surface's pores and evens out its fine texture, and
    what it carried gathers at its edge as it dries: both tell a stain apart
    from a shadow.
    """
    grid = surface.grid
    shape = _blob(rng, grid, area, softness=0.25, roughness=0.2)
    rim = shape * (1 - shape) * 4
    alpha = np.clip(0.85 * shape + 0.4 * rim, 0, 1)
    tint = _STAIN_TINTS[rng.integers(len(_STAIN_TINTS))]
    blotches = (1 - 0.08 * noise(rng, grid, 3.0))[..., None]
    reflectance = surface.reflectance
    local_mean = ndimage.gaussian_filter(reflectance, (2.0 * grid.scale,) * 2 + (0,))
    soaked = local_mean + 0.6 * (reflectance - local_mean)
    tide_line = (1 - 0.25 * rim)[..., None]
    return alpha, np.clip(soaked * tint * blotches * tide_line, 0, 1)


def color(rng, surface, area):
    """A discoloured patch: the texture kept, its colour changed."""
    alpha = _blob(rng, surface.grid, area, softness=0.3, roughness=0.15)
    return alpha, _discoloured(rng, surface.reflectance)


def _thread_band(rng, surface, area):
    """Warp (or weft) threads of the fabric over a stretch of ``area``."""
    extras = surface.extras
    warp = rng.uniform() < 0.5
    across, along = (extras["u"], extras["v"]) if warp else (extras["v"], extras["u"])
    n_threads = int(rng.integers(1, 3))
    # u and v count threads; the thread period is about 7 reference px.
    n_along = np.clip(area * REFERENCE_SIZE**2 / (7.0 * n_threads), 15.0, 100.0) / 7.0
    low, high = across.min(), across.max()
    centre = np.floor(low + (high - low) * rng.uniform(0.2, 0.8))
    low, high = along.min() + 1, along.max() - 1 - n_along
    start = low + max(high - low, 0.0) * rng.uniform()
    band = (
        (np.floor(across) >= centre)
        & (np.floor(across) < centre + n_threads)
        & (along >= start)
        & (along < start + n_along)
    )
    return warp, band


def missing_thread(rng, surface, area):
    """One or two threads missing: a darker gap that the crossing threads span."""
    warp, band = _thread_band(rng, surface, area)
    extras = surface.extras
    other, other_colour = (
        (extras["weft"], extras["weft_colour"])
        if warp
        else (extras["warp"], extras["warp_colour"])
    )
    # The crossing threads float loose over the gap, lower and in shadow.
    target = (0.1 + 0.55 * other)[..., None] * other_colour
    return band.astype(float), np.clip(target, 0, 1)


def color_thread(rng, surface, area):
    """Threads of another colour, seen where they pass over the crossing threads.

    The mask is the whole stretch of thread, one region, as an inspector would
    outline it; where the thread passes under, its pixels keep their value.
    """
    warp, band = _thread_band(rng, surface, area)
    extras = surface.extras
    on_top = (np.floor(extras["u"]) + np.floor(extras["v"])) % 2 == (0 if warp else 1)
    target = np.where(
        on_top[..., None],
        _discoloured(rng, surface.reflectance),
        surface.reflectance,
    )
    return band.astype(float), target


DEFECTS = {
    "scratch": scratch,
    "crack": crack,
    "hole": hole,
    "stain": stain,
    "color": color,
    "missing_thread": missing_thread,
}

# Defects that follow the weave on fabric instead of their generic shape.
FABRIC_DEFECTS = {"color": color_thread}


def paint(rng, surface, defect, area, contrast):
    """The defective reflectance and its mask (``alpha > 0``).

    Outside the mask the returned reflectance is the input's, bit for bit.
    """
    render = (FABRIC_DEFECTS if "warp" in surface.extras else {}).get(
        defect, DEFECTS[defect]
    )
    alpha, target = render(rng, surface, area)
    mask = alpha > 0
    reflectance = surface.reflectance
    changed = reflectance + (contrast * alpha)[..., None] * (target - reflectance)
    return np.where(mask[..., None], changed, reflectance), mask
