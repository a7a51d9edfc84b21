"""Files written whole or not at all."""

import contextlib
import os
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


def naming(error, path):
    """``error``, an ``OSError``, naming ``path`` (not a temporary file)."""
    return type(error)(error.errno, error.strerror, os.fspath(path))


def named(path, call, *args, **kwargs):
    """``call(*args, **kwargs)``, its ``OSError`` naming ``path``: a full disk
    or a file too large said nothing of which file."""
    try:
        return call(*args, **kwargs)
    except OSError as error:
        raise naming(error, path) from error


def atomic_write(path, write, *, mode="w"):
    """Write a file through a temporary file in its folder and ``os.replace``.

    A reader, or a benchmark resumed after an interruption, sees the old file
    or the complete new one, never a partial one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    created = False
    try:
        try:
            file = open(temporary, mode.replace("w", "x"))
        except OSError as error:
            # Name the file the caller writes, not a temporary one.
            raise naming(error, path) from error
        created = True
        try:
            with file:
                write(file)
            os.replace(temporary, path)
        except OSError as error:  # a full disk, a file too large: name it
            raise naming(error, path) from error
    except BaseException:
        # Remove only what this call created, and never let a failure to
        # remove it replace the error that matters.
        if created:
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise
