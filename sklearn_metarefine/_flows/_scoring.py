"""The log-likelihood of a fitted flow detector's model, in float64."""

import copy

import numpy as np
import torch

from .._utils import standardise
from ._modules import log_prob
from ._projection import mean_over_views, project

# Rows through the net at once when scoring.
_SCORING_BATCH_ROWS = 4096


def log_likelihood(module, X, mean, scale, projection, n_views):
    """Mean log-likelihood over views, in float64, without touching the net.

    A float64 copy of the net scores: swapping its parameters for float64
    ones in place (``functional_call``) left, when two threads scored one
    detector at once, the other thread's float64 copies in the fitted net.
    """
    device = next(module.parameters()).device
    scorer = copy.deepcopy(module).double()
    per_view = X.shape[1] // n_views
    std_rows = standardise(X.reshape(-1, per_view), mean, scale)
    # Rows beyond float64 once standardised have zero likelihood; passed on,
    # inf * 0 and inf - inf would make it NaN, which predict reads as inside.
    beyond = ~np.isfinite(std_rows).all(axis=1)
    std_rows[beyond] = 0.0
    rows, outside_flow = project(std_rows, *projection)
    outside_flow = outside_flow - np.sum(np.log(scale))
    out = np.empty(len(rows), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(rows), _SCORING_BATCH_ROWS):
            batch = torch.as_tensor(
                rows[start : start + _SCORING_BATCH_ROWS], device=device
            )
            z, log_det = scorer(batch)
            out[start : start + len(batch)] = log_prob(z, log_det).cpu().numpy()
    per_row = out + outside_flow
    # NaN from a finite row: the net's arithmetic broke down far out.
    per_row[beyond | np.isnan(per_row)] = -np.inf
    return mean_over_views(per_row, n_views)
