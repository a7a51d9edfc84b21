"""File helpers shared by the dataset loaders: paths, listings and mask pairing."""

import os
from pathlib import Path

# Masks and images are matched by name; showing every mismatch of a badly
# extracted dataset would bury the first one, which is enough to act on.
_MAX_LISTED = 5


def _absolute(root):
    # Absolute paths keep the returned file names valid in worker processes
    # started from another directory; symlinks are left as the user made them.
    return Path(os.path.abspath(os.path.expanduser(root)))


def _png_files(folder):
    # Archives extracted on macOS leave hidden "._name.png" companions that
    # are not images.
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and path.suffix.lower() == ".png"
        and not path.name.startswith(".")
    )


def _subfolders(folder):
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.is_dir() and not path.name.startswith(".")
    )


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
