"""File helpers shared by the dataset loaders: paths, listings and mask pairing."""

import os
from pathlib import Path

import numpy as np

from .._utils import warn

# Masks and images are matched by name; showing every mismatch of a badly
# extracted dataset would bury the first one, which is enough to act on.
_MAX_LISTED = 5

# Suffixes of the image files a stray-file check reports (the loaders read PNG).
_IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}


def _absolute(root):
    # Absolute paths keep the returned file names valid in worker processes
    # started from another directory; symlinks are left as the user made them.
    return Path(os.path.abspath(os.path.expanduser(root)))


def _png_files(folder):
    """The PNG files of ``folder``, sorted.

    Refuses a link to no file (it was dropped without a word) and two names
    that differ only in the suffix's case (``000.png`` and ``000.PNG``): a
    mask is named after its image with ``.png``, so the two would share one
    mask, or two masks one image, which one decided by the listing's order.
    """
    # Archives extracted on macOS leave hidden "._name.png" companions that
    # are not images.
    found = [
        path
        for path in folder.iterdir()
        if path.suffix.lower() == ".png" and not path.name.startswith(".")
    ]
    _refuse_broken_links(found, folder, "PNG link(s)", "no file")
    files = sorted(path for path in found if path.is_file())
    by_name = {}
    for path in files:
        twin = by_name.setdefault(path.with_suffix(".png"), path)
        if twin != path:
            raise ValueError(
                f"{twin} and {path} differ only in the case of their suffix: "
                "images and masks are paired by name with .png, so one of them "
                "would be paired with the other's file. Remove or rename one."
            )
    return files


def is_folder_name(name):
    """Whether ``name`` names one folder: not empty, ``"."`` or ``".."``, and
    without a path separator of any system (``/`` or ``\\``)."""
    return name not in ("", ".", "..") and not any(sep in name for sep in "/\\")


def _subfolders(folder):
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.is_dir() and not path.name.startswith(".")
    )


def _refuse_broken_links(paths, folder, links, target):
    """Refuse the ``paths`` (of ``folder``) that are links to nothing, named
    with their targets: what they stood for would be dropped without a word.
    ``links`` and ``target`` word the message ("PNG link(s)", "no file")."""
    broken = sorted(path for path in paths if path.is_symlink() and not path.exists())
    if broken:
        shown = [f"{link} -> {os.readlink(link)}" for link in broken[:_MAX_LISTED]]
        raise FileNotFoundError(
            f"{len(broken)} {links} in {folder} point to {target}: "
            f"{', '.join(shown)}. Restore their targets or remove the links."
        )


def _defect_folders(folder):
    """The subfolders of ``folder``, refusing any link to nothing in it: a
    folder of one defect type behind such a link was dropped without a word
    (and a link to nothing does not say whether it was a folder)."""
    visible = [path for path in folder.iterdir() if not path.name.startswith(".")]
    _refuse_broken_links(visible, folder, "link(s)", "nothing")
    return _subfolders(folder)


def warn_of_stray_images(folders, loaded, layout, within):
    """Warn about the image files under ``folders`` that were not loaded.

    A loader reads only its layout (``layout`` says which); an image saved
    beside it (another suffix, a subfolder, another folder name) would be
    left out without a word. Hidden files and folders are not reported.
    Links to folders are followed, but not those that lead back into
    ``within`` (the dataset's folder, walked or loaded by its own paths) or
    up to a folder that holds it.
    """
    loaded = {os.path.realpath(path) for path in loaded}
    within = os.path.realpath(within)
    stray, seen = [], set()
    for top in folders:
        for here, subfolders, files in os.walk(top, followlinks=True):
            real = os.path.realpath(here)
            if real in seen:  # a loop outside the dataset
                subfolders.clear()
                continue
            seen.add(real)
            subfolders[:] = [
                name
                for name in subfolders
                if not name.startswith(".")
                and not _leads_back(os.path.join(here, name), within)
            ]
            stray += [
                Path(here, name)
                for name in files
                if not name.startswith(".")
                and Path(name).suffix.lower() in _IMAGE_SUFFIXES
                and os.path.realpath(Path(here, name)) not in loaded
            ]
    if stray:
        warn(
            f"{len(stray)} image file(s) outside the {layout} were not loaded:"
            f"{_listing(sorted(stray))}\nMove them into the layout (as PNG files) "
            "to load them, or elsewhere to silence this warning."
        )


def _is_within(path, folder):
    """Whether real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _leads_back(folder, within):
    """Whether ``folder`` is a link into the dataset folder ``within`` (walked
    by its own paths) or up to a folder holding it (``/`` too)."""
    if not os.path.islink(folder):
        return False
    target = os.path.realpath(folder)
    return _is_within(target, within) or _is_within(within, target)


def _names(names):
    return ", ".join(names) if names else "none"


def _listing(paths):
    paths = [str(path) for path in paths]
    shown = "\n  ".join(paths[:_MAX_LISTED])
    more = len(paths) - _MAX_LISTED
    return "\n  " + shown + (f"\n  ... and {more} more" if more > 0 else "")


def _paired(masks, existing):
    """Pair images with their masks, checking both ways.

    ``masks`` maps each image to the mask it needs, named with ``.png``;
    ``existing`` holds the mask files found, whose suffix may be in any case
    (``.PNG``), as the images' may. Returns the masks found for the images,
    the needed masks that are absent, each as ``"<mask> (mask of <image>)"``,
    and the sorted masks no image needs.
    """
    by_name = {path.with_suffix(".png"): path for path in existing}
    found = {image: by_name[mask] for image, mask in masks.items() if mask in by_name}
    missing = [
        f"{mask} (mask of {image})"
        for image, mask in masks.items()
        if mask not in by_name
    ]
    needed = set(masks.values())
    orphans = sorted(path for name, path in by_name.items() if name not in needed)
    return found, missing, orphans


def defect_pixels(mask):
    """The defect pixels of a mask image, as a boolean array of its size.

    A visible pixel of any non-zero colour channel is a defect: luma would
    round dark ones to 0, and alpha, palette indices and the channels of
    other colour spaces (CMYK's K of black) are not colours. A colour a PNG
    marks transparent (its tRNS key, ``mask.info["transparency"]``) is
    invisible in 1-bit, 8-bit and 16-bit gray, 8-bit RGB and palette masks
    (not in 2- and 4-bit gray or 16-bit RGB ones, whose key Pillow gives at
    the file's depth and their pixels at another). The KolektorSDD2 loader's
    labels and the benchmark's pixel masks both read masks through this, so
    that a KolektorSDD2 image is labelled defective exactly when its mask has
    a defect pixel (MVTec AD labels by folder).
    """
    bands = mask.getbands()
    key = mask.info.get("transparency")
    if mask.mode == "P" or "A" in bands or (
        key is not None and mask.mode in ("1", "L", "RGB")
    ):
        pixels = np.asarray(mask.convert("RGBA"))
        return pixels[..., :3].any(axis=-1) & (pixels[..., 3] > 0)
    if len(bands) > 1:
        return np.asarray(mask.convert("RGB")).any(axis=-1)
    pixels = np.asarray(mask)
    if isinstance(key, int):  # 16-bit gray, which RGBA would not keep
        return (pixels != 0) & (pixels != key)
    return pixels != 0
