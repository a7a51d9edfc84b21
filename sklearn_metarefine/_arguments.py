"""Types of the command line's arguments: each refuses a bad value in words
that name it (argparse would name the function)."""

import argparse
import json
import math


def size(text):
    """A positive int count, or a fraction in (0, 1), as make_contaminated's
    test_size takes."""
    try:
        value = int(text)
    except ValueError:
        value = number(text, float)
    if not (value >= 1 if isinstance(value, int) else 0 < value < 1):
        raise argparse.ArgumentTypeError(
            f"must be a count of at least 1 or a fraction in (0, 1), got {text}"
        )
    return value


def number(text, kind):
    """``kind(text)``, refused in words: argparse would name the function."""
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None


def positive_int(text):
    value = number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def seed(text):
    """A seed scikit-learn and numpy take: an int in [0, 2**32 - 1]."""
    value = number(text, int)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to {2**32 - 1}, got {value}"
        )
    return value


def finite(text):
    """A finite float, refused as written (1e400 is no "inf")."""
    value = number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def nonzero_int(text):
    value = number(text, int)
    if value == 0:
        raise argparse.ArgumentTypeError(
            "must be a positive number of parallel runs, or -1 for all cores, got 0"
        )
    return value


_PYTHON_CONSTANTS = {"None": None, "True": True, "False": False}


def setting(text):
    """NAME=VALUE of --set; VALUE is read as JSON when it is JSON, as Python's
    None, True or False when it is one of these words, else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if value in _PYTHON_CONSTANTS:
        return name, _PYTHON_CONSTANTS[value]
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value
