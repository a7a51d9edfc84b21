"""Helpers shared by the estimators (numpy and the standard library: no torch
here)."""

import contextlib
import contextvars
import functools
import hashlib
import importlib.util
import numbers
import os
import sys
import warnings

import numpy as np

_MAX_SEED = np.iinfo(np.int32).max

# The code a warning passes through on its way to the caller's line: this
# package's, scikit-learn's wrappers of its methods (the output and fit
# context decorators, Pipeline), joblib's caching and contextlib's.
_LAYERS = tuple(
    os.path.dirname(os.path.abspath(origin)) + os.sep
    for origin in (
        __file__,
        importlib.util.find_spec("sklearn").origin,
        importlib.util.find_spec("joblib").origin,
    )
)


def _in_layers(filename):
    return filename == contextlib.__file__ or os.path.abspath(filename).startswith(
        _LAYERS
    )


def check_nested_default(estimator, params, name, default):
    """Refuse ``set_params`` of ``name__*`` while ``estimator``'s ``name`` is
    None, standing for the estimator ``default()`` builds when fitting:
    scikit-learn's ``set_params`` failed with an ``AttributeError`` on None
    that named neither."""
    nested = [key for key in params if key.startswith(f"{name}__")]
    if nested and params.get(name, getattr(estimator, name)) is None:
        owner = type(estimator).__name__
        raise ValueError(
            f"{owner}.set_params got {nested[0]}, but {name}=None, whose "
            "default is built when fitting, has no parameters to set. Give "
            f"the {name} itself to set them on: the default is "
            f"{owner}({name}={default()!r})."
        )


# The categories of this package's warnings that ``silenced`` drops, in the
# thread (the context) that set them.
_SILENCED = contextvars.ContextVar("silenced", default=())


# The estimator that messages and progress name, where another one fits and
# scores a component for its user (MetaRefineDetector at the patch level).
_SHOWN_AS = contextvars.ContextVar("shown_as", default=None)


@contextlib.contextmanager
def shown_as(estimator):
    """Within it, components name ``estimator``'s class in their messages, not
    theirs; inside another ``shown_as``, the outer estimator's stays."""
    token = _SHOWN_AS.set(_SHOWN_AS.get() or type(estimator).__name__)
    try:
        yield
    finally:
        _SHOWN_AS.reset(token)


def shown_name(estimator):
    """The class name ``estimator``'s messages give: its own, or within
    :func:`shown_as` that of the estimator using it."""
    return _SHOWN_AS.get() or type(estimator).__name__


@contextlib.contextmanager
def silenced(category):
    """Drop this package's warnings of ``category`` (given through ``warn``)
    inside, in this thread only: ``warnings.catch_warnings`` changes the
    filters of every thread."""
    token = _SILENCED.set(_SILENCED.get() + (category,))
    try:
        yield
    finally:
        _SILENCED.reset(token)


@contextlib.contextmanager
def surrogates_escaped(*streams):
    """Text ``streams`` writing the bytes of names that are not UTF-8 (held
    as surrogate escapes) inside, with their own error handlers again on
    leaving."""
    handlers = [(s, s.errors) for s in streams if hasattr(s, "reconfigure")]
    for stream, _ in handlers:
        stream.reconfigure(errors="surrogateescape")
    try:
        yield
    finally:
        for stream, errors in handlers:
            stream.reconfigure(errors=errors)


def warn(message, category=UserWarning):
    """``warnings.warn`` pointing at the caller's line that led to it: the
    first frame outside this package, scikit-learn, joblib and contextlib, by
    whichever path the warning is raised (a fixed ``stacklevel`` points into
    the package when a method is reached through another)."""
    if issubclass(category, _SILENCED.get()):
        return
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and _in_layers(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def names_a_folder(path):
    """Whether ``path`` as written names a folder: empty, or ending in a
    separator, ``.`` or ``..`` (``Path("out/.")`` reads as ``out``, and a file
    written there took the folder's name)."""
    return os.path.basename(os.fspath(path)) in ("", ".", "..")


def is_whole(value):
    """Whether ``value`` is a whole number: an int, or a float such as 64.0;
    not a bool, a string, a fraction or a non-finite number."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and bool(np.isfinite(value))
        and float(value).is_integer()
    )


def int_pair(value, name):
    """``value``, an int or a (height, width) pair of them, as ``[height, width]``.

    Whole floats such as ``64.0`` pass; a fraction, a string, a bool, a
    non-finite or non-positive number or a third entry is refused, naming
    ``name``: truncating ``64.5`` to 64 would change what was asked for.
    """
    if isinstance(value, str):
        entries = [value]
    else:  # as objects: a numeric array would turn (True, 4) into (1, 4)
        entries = list(np.ravel(np.array(value, dtype=object)))
    if len(entries) == 1:
        entries *= 2
    if len(entries) != 2 or not all(is_whole(e) and e >= 1 for e in entries):
        raise ValueError(
            f"{name} must be a positive int or a (height, width) pair of them; "
            f"got {value!r}."
        )
    return [int(entry) for entry in entries]


def standardisation(X):
    """Per-feature mean and scale, the same relative to any scale of ``X``.

    The statistics are computed on each feature divided by its largest
    magnitude, so that neither tiny (1e-300) nor huge (1e300) values
    underflow or overflow, and ``X * c`` gives the mean and scale of ``X``
    times ``c``. A feature is constant when its spread is within float64
    rounding of its magnitude (the mean of ``n`` values is exact to about
    ``n`` units in the last place, the bound of scikit-learn's
    ``StandardScaler``); it gets its magnitude as scale (1 if it is all
    zeros), so that its standardised values stay near zero.
    """
    X = np.asarray(X, dtype=np.float64)
    magnitude = np.abs(X).max(axis=0)
    magnitude[magnitude == 0] = 1.0
    with np.errstate(under="ignore"):  # a value far below its feature's: 0
        relative = X / magnitude
        spread = relative.std(axis=0)
        constant = spread <= X.shape[0] * np.finfo(np.float64).eps
        scale = np.where(constant, 1.0, spread) * magnitude
        return relative.mean(axis=0) * magnitude, scale


def standardise(X, mean, scale):
    """``(X - mean) / scale``, without overflow where ``X`` and ``mean`` are huge.

    Dividing first keeps both terms near the size of the standardised values,
    where ``X - mean`` overflows for values near the float64 limit of opposite
    signs.
    """
    with np.errstate(over="ignore", under="ignore"):
        return X / scale - mean / scale


def forget(estimator, *names):
    """Delete the fitted attributes ``names`` that ``estimator`` holds: those
    a fit with other settings left, which the new fit does not set."""
    for name in names:
        vars(estimator).pop(name, None)


def draw_seed(random_state):
    """Draw one integer seed from a ``RandomState`` for torch."""
    return int(random_state.randint(_MAX_SEED))


def restored_on_failure(fit):
    """Decorate ``fit`` so that a fit that raises leaves the estimator as it
    was: fitted before (a refit's attributes would mix two fits) or not.

    The fit also runs with numpy's underflows ignored, numpy's default: a
    value below the floating-point range becomes 0 even where the caller set
    ``np.seterr(all="raise")`` (tiny features failed with "underflow
    encountered in ...")."""

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        before = dict(self.__dict__)
        try:
            with np.errstate(under="ignore"):
                return fit(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    return wrapper


def file_digest(path):
    """SHA-256 of a file's bytes, hex; computed once per path and file status
    in a process. What caches of features of image files are keyed on: an
    image replaced under its name is another input."""
    stat = os.stat(path)
    # The status change time too: a copy that keeps the modification time
    # (cp -p, tar) changes it, and it cannot be set back.
    status = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return _content_digest(os.fspath(path), status)


# Bounded: a long-running scorer meets every version of every file it reads.
@functools.lru_cache(maxsize=100_000)
def _content_digest(path, status):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
