"""Files written whole or not at all."""

import contextlib
import errno
import os
import re
import stat
import uuid
from pathlib import Path


# Of a name's bytes, what a temporary name keeps: with its 18 more it stays
# within the 255 bytes most file systems allow for a name.
_KEPT_BYTES = 200


def temporary_name(path):
    # A unique name opened with "x" rather than tempfile.mkstemp, whose files
    # are private to their owner whatever the umask.
    name = path.name
    while len(os.fsencode(name)) > _KEPT_BYTES:
        name = name[:-1]
    return path.with_name(f".{name}.{uuid.uuid4().hex[:12]}.tmp")


# What temporary_name makes of a name.
_TEMPORARY = re.compile(r"\..*\.[0-9a-f]+\.tmp", re.DOTALL)


def naming(error, path):
    """``error``, an ``OSError`` of writing ``path``, naming ``path`` where it
    named a temporary file or none (a full disk names no file); returned as it
    is where it names another file (an image being read) or has no ``errno``
    (a message of its own, such as an unreadable image's)."""
    filename = error.filename
    if error.errno is None or (
        filename is not None
        and not _TEMPORARY.fullmatch(os.path.basename(os.fsdecode(filename)))
    ):
        return error
    return type(error)(error.errno, error.strerror, os.fspath(path))


@contextlib.contextmanager
def errors_naming(path):
    """The block's ``OSError`` as :func:`naming` makes it, chained to the
    original where it was renamed."""
    try:
        yield
    except OSError as error:
        renamed = naming(error, path)
        if renamed is error:
            raise
        raise renamed from error


def named(path, call, *args, **kwargs):
    """``call(*args, **kwargs)``, its ``OSError`` naming ``path``: a full disk
    or a file too large said nothing of which file."""
    with errors_naming(path):
        return call(*args, **kwargs)


@contextlib.contextmanager
def closing_named(path, handle):
    """``with handle``, where a failure to close it (a full disk, flushing)
    names ``path`` and never replaces an error the block raised."""
    try:
        yield handle
    except BaseException:
        with contextlib.suppress(OSError):
            handle.close()
        raise
    with errors_naming(path):
        handle.close()


def remove_all(paths):
    """Unlink each of ``paths`` that exists, finishing even when interrupted:
    a second Ctrl-C in the cleanup of an interrupted run left the rest of its
    temporary files, whose unique names no later run removes. An interruption
    is raised again once every path was tried; a failure to remove one is not
    an error (the error that matters is the one that led here)."""
    interrupted = None
    for path in paths:
        for _ in range(2):  # once more if interrupted before the unlink
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            except KeyboardInterrupt as interruption:
                interrupted = interrupted or interruption
                continue
            break
    if interrupted is not None:
        raise interrupted


def file_in_the_way(path):
    """The entry that keeps ``path`` from being made a folder: the nearest of
    ``path`` and its parents that exists, if it is no folder, or a link to
    nothing nearer (``mkdir`` cannot go through it); else None."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
        if candidate.is_symlink():
            return candidate
    return None


def where_in_the_way(entry, path):
    """How the ``entry`` from :func:`file_in_the_way` blocks ``path``, as the
    end of a sentence about ``path``: "is a file", "lies below the file ..."."""
    if entry.is_symlink() and not entry.exists():
        what = f"a link to nothing ({os.readlink(entry)})"
        return f"is {what}" if entry == path else f"lies below {entry}, {what}"
    return "is a file" if entry == path else f"lies below the file {entry}"


def discard(temporaries, made):
    """Remove the ``temporaries`` (:func:`remove_all`), then the folders of
    ``made`` left empty (:func:`remove_empty`), the latter even if the
    former is interrupted."""
    try:
        remove_all(temporaries)
    finally:
        remove_empty(made)


def make_folder(folder, made):
    """Create ``folder`` and its missing parents, listing them in ``made``
    (outermost first), so that :func:`remove_empty` can remove them if the
    work that needed them stops. A file among them is named: ``mkdir`` said
    only "File exists"."""
    folder = Path(folder)
    if folder.is_dir():
        return
    file = file_in_the_way(folder)
    if file is not None:
        where = where_in_the_way(file, folder)
        raise NotADirectoryError(f"Cannot create the folder {folder}: it {where}.")
    # Judged by where they lead: in "new/../old", "old" exists though "new"
    # does not (and the path works once "new" is made).
    try:
        leads_to = {path.resolve() for path in (folder, *folder.parents)}
    except RuntimeError:  # a loop of symbolic links (Python 3.11's resolve)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(folder)) from None
    missing = [path for path in leads_to if not path.exists()]
    made += sorted(missing, key=lambda path: len(path.parts))  # before: mkdir
    named(folder, folder.mkdir, parents=True, exist_ok=True)  # may stop midway


def remove_empty(made):
    """Remove the folders of ``made`` left empty, the deepest first."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): keep what is in it
            pass


def mode_of(path):
    """The permission bits of the file at ``path``; None if there is none."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def replace(temporary, path, mode=None):
    """``os.replace``, giving ``temporary`` the permissions of the file it
    replaces (or ``mode``, those of one removed before): a file the user made
    private stays private."""
    mode = mode_of(path) if mode is None else mode
    if mode is not None:
        os.chmod(temporary, mode)
    os.replace(temporary, path)


def atomic_write(path, write, *, mode="w"):
    """Write a file through a temporary file in its folder and ``os.replace``.

    A reader, or a benchmark resumed after an interruption, sees the old file
    or the complete new one, never a partial one; folders it created for the
    file are removed again if it fails.
    """
    made = []
    temporary = temporary_name(path)
    created = done = False
    try:
        make_folder(path.parent, made)
        # Name the file the caller writes, not a temporary one.
        file = named(path, open, temporary, mode.replace("w", "x"))
        created = True
        with errors_naming(path):  # a full disk, a file too large
            with file:
                write(file)
            replace(temporary, path)
        done = True
    finally:
        # Remove only what this call created, and never let a failure to
        # remove it replace the error that matters.
        if not done:
            discard([temporary] if created else [], made)
