"""The package's warnings point at the line of the caller's code that caused
them, through any of its own layers and scikit-learn's wrappers (a fixed
stacklevel pointed into the package or into scikit-learn when a warning was
raised through another path than the one it was counted on)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sklearn_metarefine import (
    FlowDetector,
    IQRRefiner,
    MetaRefineDetector,
    PatchCoreDetector,
)
from sklearn_metarefine._features import PatchFeatures

TINY = dict(n_blocks=2, hidden_size=8, max_epochs=2, device="cpu", random_state=0)


def _caught(fit, match):
    """The warnings matching ``match`` that ``fit()`` raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    found = [w for w in caught if match in str(w.message)]
    assert found, [str(w.message) for w in caught]
    return found


def _grids(n, seed=0):
    """Rows of 3 x 3 patch grids of 5 values, as backbone=None takes them."""
    rng = np.random.RandomState(seed)
    prototypes = rng.normal(size=(4, 5)) * 3
    cells = prototypes[rng.randint(0, 4, (n, 9))] + rng.normal(0, 0.3, (n, 9, 5))
    return cells.reshape(n, -1)


def _with_copies(X, n=3):
    return np.vstack([X, X[:n]])


PATCH = dict(backbone=None, grid_shape=(3, 3), coreset_fraction=0.5, random_state=0)


@pytest.mark.parametrize(
    "make, X",
    [
        (lambda: MetaRefineDetector(backbone=None, **TINY), "rows"),
        (lambda: PatchCoreDetector(**PATCH), "grids"),
        (lambda: MetaRefineDetector(level="patch", **PATCH), "grids"),
        (
            lambda: make_pipeline(
                FunctionTransformer(), MetaRefineDetector(backbone=None, **TINY)
            ),
            "rows",
        ),
    ],
    ids=["image level", "patch detector", "patch level", "in a Pipeline"],
)
def test_the_copies_warning_points_at_the_callers_line(make, X):
    X = _grids(30) if X == "grids" else np.random.RandomState(0).normal(size=(40, 4))
    estimator = make()
    found = _caught(lambda: estimator.fit(_with_copies(X)), "repeat other training")
    assert [w.filename for w in found] == [__file__]


def _refiner():
    # The trimmed core of MetaRefineDetector, which 12 samples leave small.
    return IQRRefiner(
        FlowDetector(**TINY), start="neighbors", start_fraction=0.25, random_state=0
    )


@pytest.mark.parametrize(
    "make",
    [
        _refiner,
        lambda: MetaRefineDetector(backbone=None, **TINY),
        lambda: make_pipeline(FunctionTransformer(), _refiner()),
    ],
    ids=["refiner", "detector", "in a Pipeline"],
)
def test_the_few_held_out_warning_points_at_the_callers_line(make):
    X = np.random.RandomState(0).normal(size=(12, 4))
    estimator = make()
    found = _caught(lambda: estimator.fit(X), "the kept set may hold")
    assert [w.filename for w in found] == [__file__]


class _Strided(torch.nn.Module):
    """One feature map at stride 2."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, stride=2, padding=1)

    def forward(self, x):
        return [self.conv(x)]


@pytest.mark.parametrize("through", ["features", "detector"])
def test_the_one_cell_warning_points_at_the_callers_line(through):
    images = np.zeros((6, 8, 8, 3), np.uint8)
    images[:, :4] = np.arange(6)[:, None, None, None] * 40
    if through == "features":
        estimator = PatchFeatures(_Strided(), image_size=2, device="cpu")
    else:
        estimator = PatchCoreDetector(
            _Strided(), image_size=2, device="cpu", random_state=0
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.fit(images)
        except ValueError:  # one cell of identical images: only the warning counts
            pass
    found = [w for w in caught if "patch grid of one cell" in str(w.message)]
    assert [w.filename for w in found] == [__file__]
