"""The patch level's boundary on clean training sets: with few training
images, and why ``patchflow`` flags more good surfaces than it aims at.

Each generated surface of the default benchmark (its patch features, models
and draws) at 0% noise, 3 repeats. Two tables:

1. ``metarefine_patch`` and ``patchcore`` fitted on 10, 20 and 40 of the
   training images (a random subset per repeat) and on all of them, in the
   benchmark's order. Mean over surfaces and repeats: test AUROC, the share
   of good test images flagged at the model's own boundary (false alarms) and
   of defective ones (detections), and the share of the training images whose
   held-out score (``train_scores_``) lies beyond the boundary, the files that
   ``metarefine fit --level patch`` lists in its ``.flagged.csv``.
2. ``patchflow`` (``PatchFlowDetector``), whose boundary is the 95% quantile
   (``false_alarm_rate=0.05``) of the training images' held-out scores inside
   a fence grown from their lower half, and the lowest beyond it, as many as
   a clean set has there. Per surface, mean over the repeats: good test
   images flagged at that boundary ("model") and at the 95% quantile of every
   training image's held-out score ("all held-out", right on these clean
   sets); then, in scores (negative log-likelihoods of the worst patch), the
   median of the good test images scored by the final flow minus the median
   of the held-out scores, given by the five flows fitted without them: its
   mean over the repeats and its range.

    python benchmarks/bench_patch_threshold.py [--repeats 3] [--n-jobs -1] [--cache DIR]
        [--tables 1 2]
"""

import argparse
import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.metrics import roc_auc_score

from sklearn_metarefine._benchmark import (
    cached_features,
    derive_seed,
    load_category,
    make_model,
    resolve_config,
)
from sklearn_metarefine._benchmark._runs import _single_threaded
from sklearn_metarefine.datasets import make_contaminated

CATEGORIES = ("fabric", "metal", "stone", "tile", "wood")
SIZE_MODELS = ("metarefine_patch", "patchcore")
SIZES = (10, 20, 40, None)  # None: every training image


def fit_clean(patches, y, config, category, repeat, name, size=None):
    """A patch model fitted on ``size`` training images of a clean draw."""
    seed = derive_seed(config["seed"], config["dataset"], category, repeat)
    X = patches.reshape(len(patches), -1)
    draw = make_contaminated(X, y, noise=0.0, random_state=seed, **config["contamination"])
    train = np.arange(len(draw.X_train))  # as the benchmark fits: all, in order
    if size is not None:
        train = np.random.RandomState(seed).permutation(train)[:size]
    with _single_threaded():
        model = make_model(
            name, random_state=seed, device="cpu", config=config,
            grid_shape=patches.shape[1:3],
        )  # fmt: skip
        model.fit(draw.X_train[train])
        anomaly = -model.score_samples(draw.X_test)
    return model, len(train), anomaly, draw.y_test


def training_size_run(patches, y, config, category, repeat, name, size):
    model, n_train, anomaly, y_test = fit_clean(
        patches, y, config, category, repeat, name, size
    )
    flagged = anomaly > -model.offset_
    good = y_test == 0
    return (
        (name, size),
        n_train,
        roc_auc_score(y_test, anomaly),
        flagged[good].mean(),
        flagged[~good].mean(),
        np.mean(model.train_scores_ > -model.offset_),
    )


def patchflow_run(patches, y, config, category, repeat):
    model, _, anomaly, y_test = fit_clean(
        patches, y, config, category, repeat, "patchflow"
    )
    anomaly = anomaly[y_test == 0]
    held_out = model.train_scores_
    everything = np.quantile(held_out, 1.0 - model.false_alarm_rate)
    return (
        category,
        np.mean(anomaly > -model.offset_),
        np.mean(anomaly > everything),
        np.median(anomaly) - np.median(held_out),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--cache", default=None, help="patch feature cache folder")
    parser.add_argument(
        "--tables", type=int, nargs="+", choices=(1, 2), default=[1, 2],
        help="which tables to compute and print",
    )  # fmt: skip
    args = parser.parse_args()
    config = resolve_config("surfaces")
    cache = Path(args.cache or tempfile.mkdtemp(prefix="bench_patch_threshold_"))
    sizes, flows = [], []
    for category in CATEGORIES:
        images, y, _ = load_category("surfaces", category, None, config)
        patches = cached_features(images, config, "cpu", cache, patches=True)
        common = (patches, y, config, category)
        for repeat in range(args.repeats):
            if 2 in args.tables:
                flows.append(joblib.delayed(patchflow_run)(*common, repeat))
            for name in SIZE_MODELS if 1 in args.tables else ():
                for size in SIZES:
                    sizes.append(
                        joblib.delayed(training_size_run)(*common, repeat, name, size)
                    )
    results = joblib.Parallel(n_jobs=args.n_jobs)(sizes + flows)
    size_results, flow_results = results[: len(sizes)], results[len(sizes) :]
    if 1 in args.tables:
        _print_sizes(size_results, args.repeats)
    if 2 in args.tables:
        _print_flows(flow_results, args.repeats)


def _print_sizes(size_results, repeats):
    print(
        "1. Clean training sets of the generated surfaces; mean over "
        f"{len(CATEGORIES)} surfaces x {repeats} repeats"
    )
    print(
        f"{'model':<18}{'training':>9}{'AUROC':>8}{'false alarms':>14}"
        f"{'detections':>12}{'training flagged':>18}"
    )
    for name in SIZE_MODELS:
        for size in SIZES:
            rows = np.array([r[1:] for r in size_results if r[0] == (name, size)])
            n, auroc, alarms, detections, training = rows.mean(axis=0)
            label = f"{n:.0f}" if size else f"all ({n:.0f})"
            print(
                f"{name:<18}{label:>9}{auroc:>8.3f}{alarms:>14.3f}"
                f"{detections:>12.3f}{training:>18.3f}"
            )


def _print_flows(flow_results, repeats):
    print(
        "\n2. patchflow on clean training sets (aimed at 5% false alarms): good "
        f"test images flagged, mean over {repeats} repeats; median test "
        "score minus median held-out training score"
    )
    print(f"{'surface':<8}{'model':>8}{'all held-out':>14}{'shift mean':>12}{'range':>18}")
    rows = [(c, [r[1:] for r in flow_results if r[0] == c]) for c in CATEGORIES]
    rows.append(("mean", [r[1:] for r in flow_results]))
    for name, runs in rows:
        model, everything, shift = np.array(runs).T
        print(
            f"{name:<8}{model.mean():>8.3f}{everything.mean():>14.3f}"
            f"{shift.mean():>12.1f}{f'{shift.min():.1f} to {shift.max():.1f}':>18}"
        )


if __name__ == "__main__":
    main()
