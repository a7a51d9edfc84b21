"""Image files for the command line: finding them, reading them, naming outputs."""

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ._atomic import file_in_the_way, where_in_the_way
from ._features._images import check_file_header, decode_file
from ._utils import names_a_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# File names are bytes on POSIX; Python decodes those that are not UTF-8 with
# surrogates. Written with this handler, a CSV or a message gives back the
# name's own bytes instead of failing on them.
PATH_ERRORS = "surrogateescape"


class InputError(Exception):
    """A problem with the command's input that its message fully explains."""


def check_output_file(output, example):
    """Say why the file ``output`` (``--output``) cannot be written, before any
    long work; ``example`` is a file name to suggest when it is a folder."""
    written = os.fspath(output)  # as typed: Path("out/.") reads as "out"
    output = Path(output)
    if names_a_folder(written):  # "out/.": it failed after the work
        raise InputError(
            f"--output {written!r} names a folder; give the path of the file to "
            f"write, such as {output / example}."
        )
    if output.is_dir():
        raise InputError(
            f"--output {written} is a folder; give the path of the file to write, "
            f"such as {output / example}."
        )
    check_replaceable("--output", [output])
    if os.fspath(output) == "-":
        raise InputError(
            "--output - would be a file named '-': the output cannot go to "
            "standard output. Give the path of a file."
        )
    _check_room(output, "--output")


def check_output_folder(folder, option, contents):
    """Say why the folder ``folder`` (of ``option``, for ``contents``) cannot
    take new files, before any long work."""
    folder = Path(folder)
    if file_in_the_way(folder) == folder:  # a file, or a link to nothing
        where = where_in_the_way(folder, folder)
        raise InputError(f"{option} {folder} {where}; give a folder for {contents}.")
    _check_room(folder, option)


def _check_room(path, option):
    """Refuse ``path`` below a file, or where the nearest existing folder
    refuses new files: found after the work, the work would be lost."""
    blocking = file_in_the_way(path.parent)
    if blocking is not None:
        raise InputError(f"{option} {path} {where_in_the_way(blocking, path)}.")
    absolute = path.absolute()
    folder = next(p for p in (absolute, *absolute.parents) if p.is_dir())
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(
            f"{option} {path} cannot be written: {folder} refuses new files "
            f"({error.strerror or error})."
        ) from None


def check_replaceable(option, written):
    """Refuse, before any work, ``written`` paths (of ``option``) that are a
    symbolic link, a device, a pipe or a socket.

    Every file is written whole to a temporary file, then renamed over its
    path: that replaces such an entry instead of writing through it (a link
    to the deployed model became a model of its own, ``/dev/stdout`` a
    regular file as root).
    """
    for path in map(Path, written):
        if path.is_symlink():
            raise InputError(
                f"{option} would replace {path}, a symbolic link (to "
                f"{os.readlink(path)}), with the file written instead of writing "
                f"through it. Give the path of the file itself, {path.resolve()}, "
                "or remove the link."
            )
        if path.exists() and not path.is_file() and not path.is_dir():
            raise InputError(
                f"{option} would replace {path}, which is not a regular file (a "
                "device, pipe or socket), with the file written. Give the path of "
                "a file."
            )


def check_not_named_as_an_image(output, example):
    """Refuse an ``--output`` (a model or a CSV) named like an image file: a
    later run on its folder would try to read it as one."""
    output = Path(output)
    if is_image(output):
        raise InputError(
            f"--output {output} has the suffix of an image file, which a later "
            f"run on its folder would try to read; give a name such as "
            f"{output.with_name(example)}."
        )


def check_nothing_read_is_overwritten(option, written, read):
    """Refuse, before any work, to write or delete a file the command reads.

    ``written`` are the paths the command will write (or delete) for
    ``option``; ``read`` maps paths it reads to what they are ("a training
    image"). Files are compared by identity (device and inode), so another
    path to a file, a symbolic or a hard link, is that file; a written path
    that does not exist yet overwrites nothing.
    """
    read = {_identity(path): (path, what) for path, what in read.items()}
    read.pop(None, None)  # a file listed for reading that has gone
    for path in written:
        source, what = read.get(_identity(path), (None, None))
        if source is not None:
            raise InputError(
                f"{option} would write over {os.fspath(source)}, {what}; "
                "give a path outside the command's inputs."
            )


def _identity(path):
    """The (device, inode) of the file at ``path``, or None if there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def leading_to(paths):
    """Where each of ``paths`` leads through links, its folder resolved once
    (maps: thousands of files in a few folders)."""
    paths = [Path(path) for path in paths]
    folders = {parent: parent.resolve() for parent in {path.parent for path in paths}}
    return [folders[path.parent] / path.name for path in paths]


def check_images_outside(option, written, folders, later):
    """Refuse, before any work, to write image files into a folder the command
    searches: a later run on that folder would take them for ``later``."""
    leads_to = leading_to(written)
    for folder in folders:
        root = Path(folder).resolve()
        for path, target in zip(written, leads_to):
            if target.is_relative_to(root):
                raise InputError(
                    f"{option} would write images into {os.fspath(folder)}, "
                    f"which is searched for images: a later run on it would "
                    f"take {os.fspath(path)} for {later}. Give a path outside "
                    f"{os.fspath(folder)}."
                )


class UnreadableImageError(InputError):
    """An image file that cannot be decoded."""


@dataclass(frozen=True)
class ImageFile:
    """An image file found from the command line.

    ``path`` is the file as the program opens it; ``name`` is its path relative
    to the folder it was found in, prefixed by that folder's name (its own name
    for a file given directly), and names the files written for it.
    """

    path: str
    name: str


def is_image(path):
    """Whether a folder search lists ``path``: it has an image suffix."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(inputs):
    """Every image named by ``inputs``: files as given, folders recursively.

    Inside a folder, the files with an image suffix (PNG, JPEG, BMP, TIFF, in
    any case) are listed by relative path, so the order does not depend on the
    file system. Hidden files and folders (names starting with ``.``, such as
    the ``._name.png`` files macOS leaves on shared drives) are passed over;
    linked folders are searched, each folder once; a link to a missing file
    is listed, so that reading it says so. A file given directly is taken
    whatever its suffix. A file named twice (also through a link) is listed
    once, where it is first named.
    """
    found, seen = [], set()
    for given in inputs:
        path = Path(given)
        if path.is_file():
            files = [ImageFile(os.fspath(path), path.name)]
        elif path.is_dir():
            prefix = Path(path.resolve().name)
            files = [
                ImageFile(os.fspath(path / relative), (prefix / relative).as_posix())
                for relative in _folder_images(path)
            ]
        else:
            raise InputError(f"{os.fspath(given)!r}: no such file or folder.")
        for file in files:
            key = os.path.realpath(file.path)
            if key not in seen:
                seen.add(key)
                found.append(file)
    if not found:
        raise InputError(
            f"No image files ({', '.join(IMAGE_SUFFIXES)}) in "
            f"{', '.join(repr(os.fspath(g)) for g in inputs)}."
        )
    return found


def _folder_images(folder):
    """Relative paths of the image files below ``folder``, sorted."""
    found, visited = [], set()
    for top, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in visited:  # a link back up, or a second link to one folder
            folders[:] = []
            continue
        visited.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in names:
            file = Path(top) / name
            if name.startswith(".") or not is_image(file):
                continue
            if file.is_file() or (file.is_symlink() and not file.exists()):
                found.append(file.relative_to(folder))
    return sorted(found, key=lambda relative: relative.as_posix())


def read_image(path):
    """The pixels of an image file as the detectors read them.

    Raises UnreadableImageError, naming the file, when it cannot be decoded.
    Pillow's warnings of opening it (of a very large image) name it too.
    """
    where = f"image file {os.fspath(path)!r}"
    with _unreadable(where):
        return decode_file(path, where)


def check_image_file(path):
    """Raise UnreadableImageError, naming the file, when ``path`` is not an image
    that ``read_image`` would take, as far as its header shows: a file cut
    short in its pixel data passes here and fails in ``read_image``."""
    where = f"image file {os.fspath(path)!r}"
    with _unreadable(where):  # its warnings are read_image's to give
        check_file_header(path, where)


@contextmanager
def _unreadable(where):
    """Any error of reading the image file ``where`` as UnreadableImageError."""
    try:
        yield
    except Warning:  # a warning a filter made an error stays one
        raise
    except Exception as error:
        # PIL signals undecodable files with several types (OSError,
        # SyntaxError, ValueError, DecompressionBombError); all mean the same
        # here.
        from PIL import Image

        hint = ""
        if isinstance(error, Image.DecompressionBombError):
            hint = (
                " To read larger images, raise PIL.Image.MAX_IMAGE_PIXELS, "
                "or pass --max-image-pixels to metarefine fit and score."
            )
        raise UnreadableImageError(f"cannot read {where}: {error}{hint}") from None


def output_names(files, suffix):
    """One output file name per image: its name with ``suffix``, made unique.

    Two images that differ only by their suffix (``a.png``, ``a.jpg``) get
    ``a.png`` and ``a-2.png``, the one named ``a.png`` keeping its name; the
    CSV says which is whose.
    """
    used, names = set(), [None] * len(files)
    last = {}  # the suffix number a stem got last: the ones below it are taken
    # A file that has the name itself (a.png for ".png") gets it first,
    # whatever is listed before it: a.png's map is never a.jpg's.
    order = sorted(
        range(len(files)), key=lambda i: Path(files[i].name).suffix != suffix
    )
    for index in order:
        stem = str(Path(files[index].name).with_suffix(""))
        n = last.get(stem, 1)
        name = stem + suffix if n == 1 else f"{stem}-{n}{suffix}"
        while name in used:
            n += 1
            name = f"{stem}-{n}{suffix}"
        used.add(name)
        last[stem] = n
        names[index] = name
    return names
