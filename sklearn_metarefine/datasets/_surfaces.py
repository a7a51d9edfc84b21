"""Generated industrial surfaces with pixel-precise defect masks."""

from numbers import Integral

import numpy as np
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from ._defects import draw_area, paint
from ._textures import TEXTURES, _grid, rotated

SURFACE_CATEGORIES = ("fabric", "metal", "stone", "tile", "wood")

# The defects each surface can show, in the order anomalous images cycle through.
SURFACE_DEFECTS = {
    "fabric": ("hole", "stain", "missing_thread", "color"),
    "metal": ("scratch", "hole", "stain", "color"),
    "stone": ("scratch", "crack", "hole", "stain"),
    "tile": ("crack", "hole", "stain", "color"),
    "wood": ("scratch", "crack", "hole", "stain", "color"),
}

# Share of defects drawn at low contrast, and the two contrast ranges: a
# low-contrast defect moves the reflectance only part of the way to its look.
_LOW_CONTRAST_SHARE = 1 / 3
_LOW_CONTRAST = (0.5, 0.7)
_HIGH_CONTRAST = (0.8, 1.0)

# Sensor noise (standard deviation, on the [0, 1] scale) and lighting changes.
_SENSOR_NOISE = 0.012
_GAIN_SPREAD = 0.06
_MAX_GRADIENT = 0.10

_DESCR = f"""\
.. _surfaces_dataset:

Generated industrial surfaces
-----------------------------

Procedural images of five surfaces, each with its own defects:

========  =============================================================
category  defect types
========  =============================================================
fabric    hole, stain, missing_thread, color (threads of another hue)
metal     scratch, hole, stain, color (discolouration)
stone     scratch, crack, hole, stain
tile      crack, hole, stain, color
wood      scratch, crack, hole, stain, color
========  =============================================================

Every image is a new piece of the surface: the texture's phase, orientation
(a few degrees) and fine structure change, as do the lighting (overall gain
within {_GAIN_SPREAD:.0%}, a linear gradient of up to {_MAX_GRADIENT:.0%} across
the image) and the sensor noise (standard deviation
{_SENSOR_NOISE * 255:.0f} grey levels). A defect covers about 1% (thin
scratches and cracks, small holes) to 12% (stains, discoloured patches) of
the image (0.7% to 12.6% over 300 defects at each of 64, 128 and 224 px); a
third of the defects are drawn at low contrast, where they move the surface
only {_LOW_CONTRAST[0]:.0%} to {_LOW_CONTRAST[1]:.0%} of the way towards
their full appearance (the others {_HIGH_CONTRAST[0]:.0%} to
{_HIGH_CONTRAST[1]:.0%}).

The ground-truth mask of a defect is exactly the set of pixels it was painted
on: every pixel outside the mask equals the defect-free image generated with
the same seed (``return_defect_free=True`` returns it). Some pixels inside
a mask may keep their value: at the soft edge of a faint stain after rounding
to 8 bits, or where a discoloured thread passes under the crossing threads.

Labels: ``target`` is 1 for a defective image and 0 for a good one, as in
:func:`load_mvtec_ad`; ``defect_type`` is "good" or the defect's name.
"""


def _base_seed(random_state):
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _image_rng(base, category, kind, index, stream):
    """The generator of one image's texture (stream 0) or defect (stream 1).

    Seeding each image on its own makes the i-th image independent of how many
    images are generated: a smaller request returns a prefix of a larger one.
    """
    category_index = SURFACE_CATEGORIES.index(category)
    sequence = np.random.SeedSequence([base, category_index, kind, index, stream])
    return np.random.default_rng(sequence)


def _lighting(rng, grid):
    """Overall gain times a linear gradient of random direction, per pixel."""
    gain = 1 + rng.uniform(-_GAIN_SPREAD, _GAIN_SPREAD)
    along, _ = rotated(grid, rng.uniform(0, 2 * np.pi))
    slope = rng.uniform(0, _MAX_GRADIENT) / grid.x.max()
    return gain * (1 + slope * along)


def _photograph(reflectance, lighting, sensor):
    image = reflectance * lighting[..., None] + sensor
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _draw_contrast(rng):
    low, high = _LOW_CONTRAST if rng.uniform() < _LOW_CONTRAST_SHARE else _HIGH_CONTRAST
    return rng.uniform(low, high)


def _surface_image(category, grid, texture_rng, defect_rng=None, defect=None):
    """One image, its mask, and the image without the defect."""
    surface = TEXTURES[category](texture_rng, grid)
    # Lighting and noise are drawn before the defect, from the texture's
    # generator, so that the defect changes nothing outside its mask.
    lighting = _lighting(texture_rng, grid)
    sensor = texture_rng.normal(0, _SENSOR_NOISE, surface.reflectance.shape)
    clean = _photograph(surface.reflectance, lighting, sensor)
    if defect is None:
        return clean, np.zeros(clean.shape[:2], dtype=bool), clean
    area, contrast = draw_area(defect_rng, defect), _draw_contrast(defect_rng)
    reflectance, mask = paint(defect_rng, surface, defect, area, contrast)
    image = _photograph(reflectance, lighting, sensor)
    return np.where(mask[..., None], image, clean), mask, clean


def _check_defect_types(category, defect_types):
    available = SURFACE_DEFECTS[category]
    if defect_types is None:
        return available
    if isinstance(defect_types, str):
        defect_types = [defect_types]
    elif isinstance(defect_types, np.ndarray):  # of any shape, as array-like
        defect_types = defect_types.ravel().tolist()
    if isinstance(defect_types, (set, frozenset)):
        # Its order, which the draws follow, changes with the hash seed.
        raise TypeError(
            f"defect_types must be a str or a list of str, got a "
            f"{type(defect_types).__name__} ({sorted(map(repr, defect_types))}), "
            "whose order changes between runs: pass a list."
        )
    # names, not numpy's str_ (an array of names gave np.str_ in defect_type)
    defect_types = [str(n) if isinstance(n, str) else n for n in defect_types]
    unknown = [name for name in defect_types if name not in available]
    repeated = sorted({name for name in defect_types if defect_types.count(name) > 1})
    if unknown or repeated or not defect_types:
        problem = (
            f"unknown: {unknown}"
            if unknown
            else f"named twice: {repeated}" if repeated else "none named"
        )
        raise ValueError(
            f"defect_types={defect_types!r}: category {category!r} has the defect "
            f"types {list(available)}; pick one or more of them, each once "
            f"({problem})."
        )
    return tuple(defect_types)


@validate_params(
    {
        "category": [StrOptions(set(SURFACE_CATEGORIES))],
        "n_normal": [Interval(Integral, 0, None, closed="left")],
        "n_anomalous": [Interval(Integral, 0, None, closed="left")],
        "image_size": [Interval(Integral, 32, None, closed="left")],
        "defect_types": [str, "array-like", None],
        "return_defect_free": ["boolean"],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_surfaces(
    category="fabric",
    *,
    n_normal=100,
    n_anomalous=50,
    image_size=128,
    defect_types=None,
    return_defect_free=False,
    random_state=None,
):
    """Generate images of an industrial surface, some defective, with pixel masks.

    Each image shows a new piece of a procedural surface (woven fabric, brushed
    metal, granular stone, ceramic tiles or wood) under slightly different
    lighting, so that a detector has to learn the texture and its natural
    variation rather than one picture. Defective images carry one defect
    (a scratch, crack, hole, stain, missing thread or discolouration) of about
    1% to 12% of the image, a third of them at low contrast, and a mask of
    exactly the pixels the defect changed. Deterministic, offline and fast
    (150 to 200 images of 128 px per second were measured on one core of a
    busy 2-core machine): for tests, examples and benchmarks.

    Read more in the :ref:`User Guide <surfaces>`.

    Parameters
    ----------
    category : {"fabric", "metal", "stone", "tile", "wood"}, default="fabric"
        The surface, one of :data:`SURFACE_CATEGORIES`.

    n_normal : int, default=100
        Number of defect-free images.

    n_anomalous : int, default=50
        Number of defective images. They cycle through `defect_types` in
        order, so every type is equally represented.

    image_size : int, default=128
        Side of the square images in pixels, at least 32. The surface's
        structures are sized relative to the image: a larger size shows the
        same patch of surface at a higher resolution.

    defect_types : str, list of str or None, default=None
        Which of the category's defect types to draw (see the table in the
        Notes). None draws all of them.

    return_defect_free : bool, default=False
        Also return, for every image, the same image without its defect.

    random_state : int, RandomState instance or None, default=None
        Determines everything drawn. Pass an int for the same images on every
        call; the i-th normal (or anomalous) image does not depend on how
        many images are requested.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes, normal images
        first, then anomalous ones.

        images : ndarray of shape (n_images, image_size, image_size, 3), \
                dtype=uint8
            RGB images.
        target : ndarray of shape (n_images,), dtype=int64
            1 for a defective image, 0 for a good one.
        target_names : ndarray of shape (2,)
            ``["good", "defective"]``, indexed by `target`.
        masks : ndarray of shape (n_images, image_size, image_size), dtype=bool
            True on the pixels of the defect; all False for a good image.
        defect_type : ndarray of shape (n_images,), dtype=object
            ``"good"`` or the defect's name.
        defect_area : ndarray of shape (n_images,), dtype=float64
            Fraction of the image inside the mask (0 for a good image).
        defect_free : ndarray of the shape of `images`, dtype=uint8
            The images without their defects; only with
            ``return_defect_free=True``.
        category : str
            The surface generated.
        DESCR : str
            Description of the dataset.

    Raises
    ------
    ValueError
        If `defect_types` names a defect the category does not have, names
        one twice or none, or if no image is requested.

    See Also
    --------
    make_contaminated : Draw a contaminated training set and a balanced
        test set from the returned labels.
    load_mvtec_ad : Real photographs of surfaces and objects, with masks.

    Notes
    -----
    ======== ==========================================================
    category defect types
    ======== ==========================================================
    fabric   hole, stain, missing_thread, color (threads of another hue)
    metal    scratch, hole, stain, color
    stone    scratch, crack, hole, stain
    tile     crack, hole, stain, color
    wood     scratch, crack, hole, stain, color
    ======== ==========================================================

    The defect is painted on the surface's reflectance before lighting and
    sensor noise, as a real defect is photographed with its surroundings;
    the lighting and noise of a defective image are those of its defect-free
    version.

    Examples
    --------
    >>> from sklearn_metarefine.datasets import make_surfaces
    >>> data = make_surfaces("wood", n_normal=4, n_anomalous=5, random_state=0)
    >>> data.images.shape, data.images.dtype
    ((9, 128, 128, 3), dtype('uint8'))
    >>> data.target
    array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    >>> data.defect_type[4:]
    array(['scratch', 'crack', 'hole', 'stain', 'color'], dtype=object)
    >>> bool(data.masks[:4].any()), bool(data.masks[4:].any(axis=(1, 2)).all())
    (False, True)
    """
    if n_normal + n_anomalous == 0:
        raise ValueError(
            "make_surfaces needs at least one image: n_normal=0 and n_anomalous=0."
        )
    types = _check_defect_types(category, defect_types)
    base = _base_seed(random_state)
    grid = _grid(image_size)
    kinds = [(0, i, None) for i in range(n_normal)]
    kinds += [(1, i, types[i % len(types)]) for i in range(n_anomalous)]
    images, masks, defect_free = [], [], []
    for kind, index, defect in kinds:
        texture_rng = _image_rng(base, category, kind, index, 0)
        defect_rng = _image_rng(base, category, kind, index, 1) if defect else None
        image, mask, clean = _surface_image(
            category, grid, texture_rng, defect_rng, defect
        )
        images.append(image)
        masks.append(mask)
        defect_free.append(clean)
    masks = np.stack(masks)
    data = Bunch(
        images=np.stack(images),
        target=np.array([kind for kind, _, _ in kinds], dtype=np.int64),
        target_names=np.array(["good", "defective"]),
        masks=masks,
        defect_type=np.array([d or "good" for _, _, d in kinds], dtype=object),
        defect_area=masks.mean(axis=(1, 2)),
        category=category,
        DESCR=_DESCR,
    )
    if return_defect_free:
        data.defect_free = np.stack(defect_free)
    return data
