"""Defect-free surface textures of :func:`make_surfaces`, as reflectance images.

Every texture is a function of a pixel grid and a random generator that returns a
:class:`_Surface`: an (H, W, 3) reflectance in [0, 1] before lighting and sensor
noise, plus the geometry a defect needs to follow the texture (a missing thread
runs along the weave). Lengths are in reference pixels, the pixels of a 128-px
image, so that another ``image_size`` shows the same patch of surface at another
resolution. numpy only; random fields are filtered in the Fourier domain, which
costs one FFT whatever their correlation length or orientation.
"""

import functools
from dataclasses import dataclass, field

import numpy as np

# Lengths below are in pixels of an image of this side.
REFERENCE_SIZE = 128

# Luminance weights (ITU-R BT.601), to change a colour's hue but not its brightness.
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class _Grid:
    """Pixel centres of a square image, in reference pixels, and its frequencies."""

    size: int
    x: np.ndarray
    y: np.ndarray
    fx: np.ndarray
    fy: np.ndarray

    @property
    def scale(self):
        """Image pixels per reference pixel."""
        return self.size / REFERENCE_SIZE


@functools.lru_cache(maxsize=8)
def _grid(size):
    coords = (np.arange(size) + 0.5) * (REFERENCE_SIZE / size)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    # Frequencies in cycles per reference pixel, on the rfft2 layout.
    fy = np.fft.fftfreq(size, d=REFERENCE_SIZE / size)[:, None]
    fx = np.fft.rfftfreq(size, d=REFERENCE_SIZE / size)[None, :]
    for array in (x, y, fx, fy):
        array.flags.writeable = False
    return _Grid(size, x, y, fx, fy)


@dataclass
class _Surface:
    """A reflectance image and what its defects need to know about it."""

    reflectance: np.ndarray
    grid: _Grid
    # Angle (radians) of the dominant direction of the texture: grain, brushing.
    angle: float = 0.0
    extras: dict = field(default_factory=dict)


def noise(rng, grid, sigma, sigma_across=None, angle=0.0, highpass=None):
    """Gaussian random field of unit variance, smooth over ``sigma`` reference px.

    With ``sigma_across`` the field is anisotropic: correlated over ``sigma``
    along the direction ``angle`` (radians from the x axis) and over
    ``sigma_across`` across it, like brushing marks or wood fibres. The field is
    periodic over the image. With ``highpass`` the variations slower than
    ``highpass`` reference px are removed: grains of one size, no clusters.
    """
    sigma_across = sigma if sigma_across is None else sigma_across
    along = grid.fx * np.cos(angle) + grid.fy * np.sin(angle)
    across = -grid.fx * np.sin(angle) + grid.fy * np.cos(angle)
    gain = np.exp(
        -2 * np.pi**2 * ((sigma * along) ** 2 + (sigma_across * across) ** 2)
    )
    if highpass is not None:
        gain = gain * (1 - np.exp(-2 * np.pi**2 * highpass**2 * (along**2 + across**2)))
    white = rng.standard_normal((grid.size, grid.size))
    field_ = np.fft.irfft2(np.fft.rfft2(white) * gain, s=white.shape)
    std = field_.std()
    return field_ / std if std > 0 else field_


def rotated(grid, angle):
    """Coordinates along and across the direction ``angle``, about the centre."""
    x = grid.x - REFERENCE_SIZE / 2
    y = grid.y - REFERENCE_SIZE / 2
    c, s = np.cos(angle), np.sin(angle)
    return x * c + y * s, -x * s + y * c


def smoothstep(edge0, edge1, value):
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic between (any order)."""
    t = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def jittered_colour(rng, colour, spread=0.03):
    """A colour with each channel scaled by about ``1 +- spread``."""
    return np.clip(np.asarray(colour) * rng.normal(1.0, spread, size=3), 0, 1)


# --- woven fabric -------------------------------------------------------------


def _thread_profile(frac):
    """Brightness across a thread: bright on its crown, dark in the gap."""
    return np.sqrt(np.sin(np.pi * frac))


def _weave_layer(across, along, gain):
    """Brightness of the threads of one direction where they lie on top."""
    # A thread dips where it passes under a crossing thread.
    return _thread_profile(across) * (0.78 + 0.22 * np.sin(np.pi * along)) * gain


def fabric(rng, grid):
    """Plain-weave cloth: warp and weft threads passing over and under each other.

    Between images: the weave's phase, a rotation of up to 2 degrees (cloth
    runs aligned with the camera), a 2% change of the thread period, the yarn
    colour, and per-thread thickness and fibre noise.
    """
    angle = np.deg2rad(rng.uniform(-2, 2))
    period = 7.0 * rng.uniform(0.98, 1.02)
    along, across = rotated(grid, angle)
    u = along / period + rng.uniform(0, 2)
    v = across / period + rng.uniform(0, 2)
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    # Yarn thickness varies from thread to thread.
    warp_gain = rng.normal(1.0, 0.05, 64)[iu % 64]
    weft_gain = rng.normal(1.0, 0.05, 64)[iv % 64]
    warp = _weave_layer(fu, fv, warp_gain)
    weft = _weave_layer(fv, fu, weft_gain)
    warp_on_top = (iu + iv) % 2 == 0
    fibres_warp = noise(rng, grid, 6.0, 0.5, angle + np.pi / 2)
    fibres_weft = noise(rng, grid, 6.0, 0.5, angle)
    warp = warp * (1 + 0.06 * fibres_warp)
    weft = weft * (1 + 0.06 * fibres_weft)
    warp_colour = jittered_colour(rng, (0.62, 0.50, 0.36))
    weft_colour = jittered_colour(rng, (0.70, 0.60, 0.46))
    brightness = np.where(warp_on_top, warp, weft)
    colour = np.where(warp_on_top[..., None], warp_colour, weft_colour)
    reflectance = (0.2 + 0.8 * brightness)[..., None] * colour
    extras = dict(
        u=u, v=v, warp=warp, weft=weft, warp_colour=warp_colour, weft_colour=weft_colour
    )
    return _Surface(np.clip(reflectance, 0, 1), grid, angle, extras)


# --- wood ----------------------------------------------------------------------


def wood(rng, grid):
    """Flat-sawn wood: growth rings bent by the trunk's irregularity, and fibres.

    Between images: the rings' position, spacing (9 to 12 px) and bending, a
    rotation of up to 5 degrees, the colour of the wood, and the fibres.
    """
    angle = np.deg2rad(rng.uniform(-5, 5))
    along, across = rotated(grid, angle)
    bend = 7.0 * noise(rng, grid, 24.0, 14.0, angle) + 1.5 * noise(
        rng, grid, 10.0, 4.0, angle
    )
    rings = (across + bend) / rng.uniform(9.0, 12.0) + rng.uniform(0, 1)
    # Latewood: a narrow dark band in each ring, sharper on one side.
    phase = rings - np.floor(rings)
    latewood = smoothstep(0.55, 0.85, phase) * (1 - smoothstep(0.88, 1.0, phase))
    fibres = noise(rng, grid, 18.0, 0.6, angle)
    pores = noise(rng, grid, 2.5, 0.8, angle)
    light = jittered_colour(rng, (0.80, 0.60, 0.40))
    dark = jittered_colour(rng, (0.55, 0.35, 0.20))
    tone = np.clip(latewood * (0.85 + 0.15 * pores), 0, 1)[..., None]
    reflectance = (light * (1 - tone) + dark * tone) * (
        1 + 0.05 * fibres + 0.015 * pores
    )[..., None]
    return _Surface(np.clip(reflectance, 0, 1), grid, angle)


# --- brushed metal ---------------------------------------------------------------


def metal(rng, grid):
    """Brushed steel: fine streaks along the brushing direction, a broad highlight.

    Between images: the streaks, a rotation of up to 3 degrees, the grey level,
    and the position and width of the specular highlight band.
    """
    angle = np.deg2rad(rng.uniform(-3, 3))
    _, across = rotated(grid, angle)
    streaks = 0.05 * noise(rng, grid, 40.0, 0.5, angle) + 0.03 * noise(
        rng, grid, 14.0, 1.5, angle
    )
    grain = 0.01 * noise(rng, grid, 0.5)
    centre, width = rng.uniform(-40, 40), rng.uniform(25, 45)
    highlight = 0.12 * np.exp(-0.5 * ((across - centre) / width) ** 2)
    grey = jittered_colour(rng, (0.56, 0.58, 0.61), 0.02)
    brightness = 1 + streaks + grain + highlight
    return _Surface(np.clip(brightness[..., None] * grey, 0, 1), grid, angle)


# --- ceramic tiles -------------------------------------------------------------


def tile(rng, grid):
    """Glazed ceramic tiles in a grid, with grout lines and bevelled edges.

    Between images: the grid's position, a rotation of up to 1.5 degrees, a 4%
    change of the tile size, each tile's shade, and the glaze's mottling.
    """
    angle = np.deg2rad(rng.uniform(-1.5, 1.5))
    size = 32.0 * rng.uniform(0.96, 1.04)
    half_grout = 1.3
    along, across = rotated(grid, angle)
    u = along / size + rng.uniform(0, 1)
    v = across / size + rng.uniform(0, 1)
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    # Distance (px) to the nearest tile edge.
    edge = size * np.minimum.reduce([u - iu, 1 - (u - iu), v - iv, 1 - (v - iv)])
    grout = 1 - smoothstep(half_grout - 0.5, half_grout + 0.5, edge)
    bevel = 1 - 0.12 * np.exp(-(np.maximum(edge - half_grout, 0)) / 1.5)
    shade = rng.normal(1.0, 0.025, (16, 16))[iu % 16, iv % 16]
    glaze = (
        1
        + 0.025 * noise(rng, grid, 6.0)
        + 0.015 * noise(rng, grid, 0.8)
    )
    tile_colour = jittered_colour(rng, (0.82, 0.78, 0.70), 0.02)
    grout_colour = jittered_colour(rng, (0.42, 0.41, 0.40), 0.02)
    grout_texture = 1 + 0.08 * noise(rng, grid, 0.7)
    on_tile = (shade * bevel * glaze)[..., None] * tile_colour
    on_grout = grout_texture[..., None] * grout_colour
    g = grout[..., None]
    reflectance = on_tile * (1 - g) + on_grout * g
    return _Surface(np.clip(reflectance, 0, 1), grid, angle, dict(grout=grout))


# --- granular stone ---------------------------------------------------------------


def stone(rng, grid):
    """Grey granite: a grey matrix with darker and lighter mineral grains.

    Isotropic; between images every grain is new, as is the slow mottling of
    the matrix. The grains differ from the matrix by about a third of its
    brightness, as in grey granites (not the black-and-white ones).
    """
    mottle = noise(rng, grid, 12.0)
    matrix = jittered_colour(rng, (0.56, 0.54, 0.52), 0.02)[None, None, :] * (
        1 + 0.05 * mottle + 0.04 * noise(rng, grid, 0.7)
    )[..., None]
    dark = smoothstep(1.2, 1.5, noise(rng, grid, 2.4, highpass=6.0))[..., None]
    light = smoothstep(0.9, 1.2, noise(rng, grid, 2.0, highpass=6.0))[..., None]
    reflectance = matrix * (1 - light) + np.array([0.76, 0.73, 0.70]) * light
    reflectance = reflectance * (1 - dark) + np.array([0.30, 0.28, 0.27]) * dark
    return _Surface(np.clip(reflectance, 0, 1), grid)


TEXTURES = {
    "fabric": fabric,
    "metal": metal,
    "stone": stone,
    "tile": tile,
    "wood": wood,
}
