"""Files written whole or not at all."""

import contextlib
import os
import re
import uuid


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


def atomic_write(path, write, *, mode="w"):
    """Write a file through a temporary file in its folder and ``os.replace``.

    A reader, or a benchmark resumed after an interruption, sees the old file
    or the complete new one, never a partial one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    created = False
    try:
        # Name the file the caller writes, not a temporary one.
        file = named(path, open, temporary, mode.replace("w", "x"))
        created = True
        with errors_naming(path):  # a full disk, a file too large
            with file:
                write(file)
            os.replace(temporary, path)
    except BaseException:
        # Remove only what this call created, and never let a failure to
        # remove it replace the error that matters.
        if created:
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise
