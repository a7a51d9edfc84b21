"""IQRRefiner: the cost of warm refits and the quality gained on digits.

(a) Total fit time of ``IQRRefiner(MAMLFlowDetector())`` with warm refits,
    and with cold refits, divided by one ``MAMLFlowDetector`` fit, on the same
    data (target for warm: <= 1.5x).
(b) On scikit-learn's digits (each digit in turn normal, the other digits the
    anomalies; ``noise`` = anomalous fraction of the training set; test set
    balanced and disjoint from training), mean AUROC over digits and seeds of
    IsolationForest vs IQRRefiner(IsolationForest) and FlowDetector vs
    IQRRefiner(FlowDetector), with the good and bad training images each
    refiner removed (the paper's Table 2). Target: each refined model >= its
    bare model at every noise level >= 0.1. Each refiner runs three times:
    with the paper's procedure (start="full", in-sample fences, stop when
    nothing changes) and with the two trimmed starts (start="trimmed" or
    "neighbors", start_fraction=0.25, refit="cold", IQRRefiner's held-out
    fences and clean-tail stop).

    python benchmarks/bench_refine.py [--seeds 3] [--digits 0 1 ... 9]
"""

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from sklearn_metarefine import (
    FlowDetector,
    IQRRefiner,
    MAMLFlowDetector,
    PretrainedFeatures,
)
from sklearn_metarefine.datasets import load_digits_anomaly, make_contaminated


# The paper's refinement: fences of in-sample scores, iterate until no change.
PAPER = {"fence_scores": "in_sample", "stop": "no_change"}


def flow_params(args):
    return {
        "pca_components": args.pca_components,
        "n_blocks": args.n_blocks,
        "hidden_size": args.hidden_size,
        "max_epochs": args.max_epochs,
        "device": "cpu",
    }


def timed_fit(estimator, X):
    start = time.perf_counter()
    estimator.fit(X)
    return time.perf_counter() - start


def refit_cost(features, digits, args):
    """Part (a): the refiner's total fit time relative to one flow fit."""
    y = (digits != 0).astype(int)
    data = make_contaminated(features, y, noise=0.2, random_state=0)
    flow = MAMLFlowDetector(random_state=0, **flow_params(args))
    single = min(
        timed_fit(clone(flow), data.X_train) for _ in range(args.timing_repeats)
    )
    print(
        f"(a) refit cost, digit 0 normal, noise 0.2, {len(data.X_train)} training rows"
    )
    print(f"{'model':<44} {'fits':>4} {'seconds':>8} {'ratio':>6}")
    print(f"{'MAMLFlowDetector':<44} {1:>4} {single:>8.2f} {1.0:>5.2f}x")
    for refit in ("warm", "cold"):
        refiner = IQRRefiner(flow, refit=refit, random_state=0, **PAPER)
        seconds = min(
            timed_fit(clone(refiner), data.X_train) for _ in range(args.timing_repeats)
        )
        refiner.fit(data.X_train)
        name = f"IQRRefiner(MAMLFlowDetector), {refit} refits"
        print(
            f"{name:<44} {refiner.n_iter_:>4} {seconds:>8.2f} {seconds / single:>5.2f}x"
        )
    print()


def quality(features, digits, args):
    """Part (b): AUROC and removals, bare vs refined, over digits x noise x seeds."""
    trimmed = {"start": "trimmed", "start_fraction": 0.25, "refit": "cold"}
    neighbors = {**trimmed, "start": "neighbors"}
    models = {
        "IsolationForest": IsolationForest(random_state=0),
        "IQRRefiner(IsolationForest)": IQRRefiner(
            IsolationForest(random_state=0), **PAPER
        ),
        "IQRRefiner(IsolationForest, trimmed)": IQRRefiner(
            IsolationForest(random_state=0), **trimmed
        ),
        "IQRRefiner(IsolationForest, neighbors)": IQRRefiner(
            IsolationForest(random_state=0), **neighbors
        ),
        "FlowDetector": FlowDetector(**flow_params(args)),
        "IQRRefiner(FlowDetector)": IQRRefiner(
            FlowDetector(**flow_params(args)), **PAPER
        ),
        "IQRRefiner(FlowDetector, trimmed)": IQRRefiner(
            FlowDetector(**flow_params(args)), **trimmed
        ),
        "IQRRefiner(FlowDetector, neighbors)": IQRRefiner(
            FlowDetector(**flow_params(args)), **neighbors
        ),
    }
    pairs = [
        ("IsolationForest", "IQRRefiner(IsolationForest)"),
        ("IsolationForest", "IQRRefiner(IsolationForest, trimmed)"),
        ("IsolationForest", "IQRRefiner(IsolationForest, neighbors)"),
        ("FlowDetector", "IQRRefiner(FlowDetector)"),
        ("FlowDetector", "IQRRefiner(FlowDetector, trimmed)"),
        ("FlowDetector", "IQRRefiner(FlowDetector, neighbors)"),
    ]
    auroc = defaultdict(list)
    removed = defaultdict(lambda: np.zeros(2, dtype=int))
    planted = defaultdict(lambda: np.zeros(2, dtype=int))
    for digit in args.digits:
        y = (digits != digit).astype(int)
        for noise in args.noise:
            for seed in range(args.seeds):
                data = make_contaminated(features, y, noise=noise, random_state=seed)
                for name, model in models.items():
                    model = clone(model).set_params(random_state=seed)
                    model.fit(data.X_train)
                    scores = -model.score_samples(data.X_test)
                    auroc[name, noise].append(roc_auc_score(data.y_test, scores))
                    if hasattr(model, "inlier_mask_"):
                        out = ~model.inlier_mask_
                        removed[name, noise] += [
                            np.sum(out & (data.y_train == 0)),
                            np.sum(out & (data.y_train == 1)),
                        ]
                        planted[name, noise] += [
                            np.sum(data.y_train == 0),
                            np.sum(data.y_train == 1),
                        ]

    n_runs = len(args.digits) * args.seeds
    print(f"(b) mean AUROC over {len(args.digits)} digits x {args.seeds} seeds")
    header = f"{'model':<40}" + "".join(f"{f'noise {n:g}':>11}" for n in args.noise)
    print(header)
    print("-" * len(header))
    for name in models:
        cells = "".join(f"{np.mean(auroc[name, n]):>11.4f}" for n in args.noise)
        print(f"{name:<40}{cells}")
    for bare, refined in pairs:
        met = all(
            np.mean(auroc[refined, n]) >= np.mean(auroc[bare, n])
            for n in args.noise
            if n >= 0.1
        )
        print(
            f"target {refined} >= {bare} at every noise >= 0.1: {'met' if met else 'NOT met'}"
        )
    print()
    print(
        f"Training images removed, summed over {n_runs} runs (good / bad, of planted)"
    )
    header = f"{'model':<40}" + "".join(f"{f'noise {n:g}':>22}" for n in args.noise)
    print(header)
    print("-" * len(header))
    for name in models:
        if (name, args.noise[0]) not in removed:
            continue
        cells = "".join(
            f"{f'{removed[name, n][0]}/{planted[name, n][0]} {removed[name, n][1]}/{planted[name, n][1]}':>22}"
            for n in args.noise
        )
        print(f"{name:<40}{cells}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    parser.add_argument(
        "--noise", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.4, 0.5]
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--pca-components", type=int, default=16)
    parser.add_argument("--n-blocks", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    digits_data = load_digits_anomaly()
    features = PretrainedFeatures(
        "efficientnet_lite0", image_size=args.image_size, random_state=0
    ).fit_transform(digits_data.images)
    print(
        f"features: efficientnet_lite0 at {args.image_size} px, {features.shape[1]} dims; "
        f"flows: {flow_params(args)}; torch threads 1"
    )
    print()
    refit_cost(features, digits_data.digit, args)
    if not args.skip_quality:
        quality(features, digits_data.digit, args)


if __name__ == "__main__":
    main()
