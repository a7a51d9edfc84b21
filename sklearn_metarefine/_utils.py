"""Numeric helpers shared by the estimators (numpy only: no torch here)."""

import numpy as np

_MAX_SEED = np.iinfo(np.int32).max


def standardisation(X):
    """Per-feature mean and scale; constant features get scale 1."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    return mean, scale


def draw_seed(random_state):
    """Draw one integer seed from a ``RandomState`` for torch."""
    return int(random_state.randint(_MAX_SEED))
