"""The patch level of MetaRefineDetector: a cleaned memory bank and a patch flow
scoring together.

The two see defects differently (the bank by distance to the nearest normal
patch, the flow by likelihood under a density of all normal patches), and their
scores are on unrelated scales. Each is brought to a common one by the median
and interquartile range of its held-out training-image scores, which the
anomalies in a contaminated training set move little, and the two are averaged:
per image for the image score, per patch for the anomaly map.
"""

import warnings

import numpy as np

from .._scores import contamination_offset, majority_fence
from .._utils import draw_seed, shown_as
from ._detector import PatchCoreDetector
from ._flow import PatchFlowDetector

# The start of the warning that some training images repeat others.
_COPIES_WARNING = "[0-9]+ of the [0-9]+ training images repeat"
# What the patch level of MetaRefineDetector forwards to its PatchCoreDetector,
# beyond device, memory, verbose and random_state.
BANK_PARAMS = (
    "backbone", "weights", "image_size", "input_shape", "grid_shape",
    "coreset_fraction", "k", "contamination",
)  # fmt: skip


def fit_pair(owner, X, seed):
    """Fit the patch-cleaned PatchCore bank of the MetaRefineDetector
    ``owner``'s parameters and a patch flow beside it on ``X``, and set the
    owner's ``detector_``, ``flow_detector_``, ``score_centers_``,
    ``score_scales_``, ``train_scores_`` (the paired held-out anomaly scores
    of the training images, which the threshold is set on), ``offset_`` and
    ``inlier_mask_`` (the images the flow kept; the bank keeps every image
    and drops patches)."""
    bank = build_bank(owner, seed)
    bank._training_rows_sink = embedded = []  # the CNN runs once
    try:
        with shown_as(owner):  # their messages name the owner
            owner.detector_ = bank.fit(X)
            rows = embedded[0] if embedded else X  # X: rows (backbone=None)
            with warnings.catch_warnings():  # the bank has said it of the same rows
                warnings.filterwarnings("ignore", _COPIES_WARNING)
                owner.flow_detector_ = fit_flow_beside(
                    bank, rows, k=owner.k, device=owner.device,
                    verbose=owner.verbose, seed=seed,
                )  # fmt: skip
    finally:
        del bank._training_rows_sink
    owner.score_centers_, owner.score_scales_ = robust_scales(
        bank, owner.flow_detector_
    )
    scores = owner.train_scores_ = pair_training_scores(owner)
    if owner.contamination == "auto":  # copies (equal scores) weigh as one
        owner.offset_ = -majority_fence(np.unique(scores), owner.k)
    else:
        owner.offset_ = contamination_offset(-scores, owner.contamination)
    owner.inlier_mask_ = owner.flow_detector_.inlier_mask_


def build_bank(owner, seed):
    """The unfitted patch-cleaned PatchCore bank of the MetaRefineDetector
    ``owner``'s parameters."""
    return PatchCoreDetector(
        bank_cleaning="patches",
        memory=owner.memory,
        device=owner.device,
        verbose=owner.verbose,
        random_state=seed,
        **{name: getattr(owner, name) for name in BANK_PARAMS},
    )


def fit_flow_beside(bank, rows, *, k, device, verbose, seed):
    """A :class:`PatchFlowDetector` with image cleaning fitted on the training
    ``rows`` of the fitted PatchCore ``bank`` (its embedded images, or the
    rows it was given), with its grid."""
    flow = PatchFlowDetector(
        backbone=None,
        grid_shape=bank.grid_shape_,
        image_cleaning=True,
        k=k,
        device=device,
        verbose=verbose,
        random_state=draw_seed(np.random.RandomState(seed)),
    )
    return flow.fit(rows)


def robust_scales(*detectors):
    """Median and interquartile range of each fitted detector's held-out
    training-image scores (``train_scores_``, finite ones), as two arrays.

    A detector whose training scores have no spread is scaled by 1.0.
    """
    centers, scales = [], []
    for detector in detectors:
        scores = np.asarray(detector.train_scores_, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        if scores.size == 0:
            centers.append(0.0)
            scales.append(1.0)
            continue
        q1, median, q3 = np.quantile(scores, [0.25, 0.5, 0.75])
        centers.append(float(median))
        scales.append(float(q3 - q1) if q3 > q1 else 1.0)
    return np.array(centers), np.array(scales)


def standardised(scores, centers, scales):
    """The mean over detectors of ``(score - center) / scale``; ``scores`` is a
    sequence of arrays of one shape, one per detector."""
    return sum((s - c) / w for s, c, w in zip(scores, centers, scales)) / len(scores)


def pair_training_scores(owner):
    """The paired anomaly score of every training image, held out of both
    (each image scored without its own patches by the bank, and by flows
    fitted without its fold)."""
    return standardised(
        [owner.detector_.train_scores_, owner.flow_detector_.train_scores_],
        owner.score_centers_,
        owner.score_scales_,
    )


def pair_scores(owner, X, maps=False):
    """``score_samples(X)`` of the pair (and ``anomaly_map(X)`` with ``maps``)
    of a fitted MetaRefineDetector ``owner`` at the patch level, from one
    embedding of ``X``; the bank's alone for a model file saved before the
    pair."""
    bank, flow = owner.detector_, getattr(owner, "flow_detector_", None)
    with shown_as(owner):
        if flow is None:
            return bank._scores_and_maps(X) if maps else bank.score_samples(X)
        centers, scales = owner.score_centers_, owner.score_scales_
        if bank.features_ is None:  # rows: each detector checks them itself
            if not maps:
                parts = [-bank.score_samples(X), -flow.score_samples(X)]
                return -standardised(parts, centers, scales)
            (bank_scores, bank_maps), (flow_scores, flow_maps) = (
                bank._scores_and_maps(X),
                flow._scores_and_maps(X),
            )
            scores = standardised([-bank_scores, -flow_scores], centers, scales)
            return -scores, standardised([bank_maps, flow_maps], centers, scales)
        size = bank._one_size(X) if maps else None

        def compute(patches):
            bank_patch = bank._patch_scores_of(patches)
            rows = patches.reshape(len(patches), -1)
            flow_patch = flow._patch_scores_of(
                flow._as_patches(flow._centred(rows) / flow.input_scale_)
            )
            image = standardised(
                [bank_patch.max(1), flow_patch.max(1)], centers, scales
            )
            if not maps:
                return -image
            patch = standardised([bank_patch, flow_patch], centers, scales)
            return -image, bank._maps(patch, size).astype(np.float32)

        return bank._batched(X, compute)
