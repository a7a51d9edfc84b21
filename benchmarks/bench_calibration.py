"""Which held-out scores the 'auto' boundary of the default MetaRefineDetector
is calibrated on, and what that does to its false alarms and detections.

For each digit of the default benchmark (its features, flows and draws) at 0%
and 30% noise, 3 repeats, the default ``metarefine`` model is fitted once;
its boundary, the 95% quantile (``false_alarm_rate=0.05``) of held-out
anomaly scores of training images, is then set from three pools:

- "kept": the kept images' out-of-fold scores only;
- "default": those, the removed images inside the outer fence
  ``Q3 + 2k * IQR`` (scored by the final model, which did not see them) and the
  lowest removed ones beyond it, as many as a clean set has there: what
  ``contamination="auto"`` does (``_rounds.calibration_scores``);
- "all removed": the kept images' scores and every removed image's. Right
  only when the training set is clean (then every removed image is normal).

Printed: the share of normal test images flagged (false alarms) and of
anomalous ones (detections), mean over the 10 digits and 3 repeats; then the
share of the training set removed beyond the outer fence, and the share the
default pool counts among them.

    python benchmarks/bench_calibration.py [--repeats 3] [--n-jobs -1] [--cache DIR]
"""

import argparse
import tempfile
from pathlib import Path

import joblib
import numpy as np

from sklearn_metarefine import _refine
from sklearn_metarefine._benchmark import (
    cached_features,
    derive_seed,
    load_category,
    make_model,
    resolve_config,
)
from sklearn_metarefine._benchmark._runs import _single_threaded
from sklearn_metarefine._rounds import calibration_scores
from sklearn_metarefine._scores import anomaly_score, iqr_fence
from sklearn_metarefine.datasets import make_contaminated

NOISE = (0.0, 0.3)
POOLS = ("kept", "default", "all removed")


def _recording_offset(offset):
    """``decision_offset`` (which ``IQRRefiner.fit`` calls) that also keeps the
    held-out scores it is given on the refiner (with ``fence_scores="oof"``,
    the last fence's out-of-fold scores)."""

    def wrapper(refiner, estimator, base, X, kept, scores, fold_seed):
        refiner.held_out_scores_ = scores
        return offset(refiner, estimator, base, X, kept, scores, fold_seed)

    wrapper.records = True
    return wrapper


def pools(model, X_train):
    """The three calibration pools of a fitted ``metarefine`` model, and the
    removed images' scores by its final model."""
    refiner = model.refiner_
    if refiner.fence_scores != "oof":
        raise SystemExit("this script reads the out-of-fold fence scores")
    held_out = refiner.held_out_scores_
    removed = X_train[~refiner.inlier_mask_]
    features = model._features(removed) if len(removed) else removed
    removed_scores = (
        anomaly_score(refiner.estimator_, features) if len(removed) else np.empty(0)
    )
    calibration = {
        "kept": held_out,
        "default": calibration_scores(removed_scores, held_out, refiner.k),
        "all removed": np.r_[held_out, removed_scores],
    }
    return calibration, removed_scores


def run(X, y, split, config, category, noise, repeat):
    seed = derive_seed(config["seed"], config["dataset"], category, repeat)
    draw = make_contaminated(
        X, y, noise=noise, split=split, random_state=seed, **config["contamination"]
    )
    if not getattr(_refine.decision_offset, "records", False):
        _refine.decision_offset = _recording_offset(_refine.decision_offset)
    with _single_threaded():
        model = make_model("metarefine", random_state=seed, device="cpu", config=config)
        model.fit(draw.X_train)
        anomaly = -model.score_samples(draw.X_test)
        calibration, removed = pools(model, draw.X_train)
    held_out = model.refiner_.held_out_scores_
    outer = iqr_fence(held_out, 2 * model.refiner_.k)
    beyond = np.sum(removed > outer)
    admitted = calibration["default"].size - held_out.size - np.sum(removed <= outer)
    tail = (beyond / len(draw.X_train), admitted / len(draw.X_train))
    normal = draw.y_test == 0
    rates = {}
    for name, scores in calibration.items():
        flagged = anomaly > np.quantile(scores, 1.0 - model.refiner_.false_alarm_rate)
        rates[name] = (flagged[normal].mean(), flagged[~normal].mean())
    return noise, rates, tail


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--cache", default=None, help="feature cache folder")
    args = parser.parse_args()
    config = resolve_config("digits")
    cache = args.cache or tempfile.mkdtemp(prefix="bench_calibration_")
    jobs = []
    for digit in range(10):
        category = f"digit{digit}"
        images, y, split = load_category("digits", category, None, config)
        X = cached_features(images, config, "cpu", Path(cache))
        for noise in NOISE:
            for repeat in range(args.repeats):
                jobs.append(
                    joblib.delayed(run)(X, y, split, config, category, noise, repeat)
                )
    results = joblib.Parallel(n_jobs=args.n_jobs)(jobs)
    print(
        "False alarms / detections of the default MetaRefineDetector's boundary"
        f" (aimed at 5% false alarms), mean over 10 digits x {args.repeats} repeats"
    )
    print(f"{'calibration pool':<14}" + "".join(f"{f'{n:.0%} noise':>18}" for n in NOISE))
    for name in POOLS:
        cells = []
        for level in NOISE:
            rates = np.array([r[name] for noise, r, _ in results if noise == level])
            cells.append(f"{rates[:, 0].mean():.3f} / {rates[:, 1].mean():.3f}")
        print(f"{name:<14}" + "".join(f"{c:>18}" for c in cells))
    for level in NOISE:
        tails = np.array([t for noise, _, t in results if noise == level])
        print(
            f"{level:.0%} noise: removed training images beyond the outer fence "
            f"{tails[:, 0].mean():.1%} of the training set, of which the default "
            f"pool counts {tails[:, 1].mean():.1%}"
        )


if __name__ == "__main__":
    main()
