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
    nothing changes; warm refits for the flow, cold for IsolationForest, whose
    warm start adds trees) and with the two trimmed starts (start="trimmed" or
    "neighbors", start_fraction=0.25, refit="cold", IQRRefiner's held-out
    fences and clean-tail stop).

    Part (b) runs on the noise benchmark's code (``metarefine benchmark``):
    its digits features (its ``digits`` configuration at ``--image-size``),
    its grid of runs (``plan_runs``, seeded 0, 1, ... by repeat), its
    IsolationForest and FlowDetector (``make_model``'s ``iforest`` and
    ``vanilla``, with this script's flow) and its run (``evaluate``: the
    contaminated draw, the fit on one thread, the test AUROC and the removal
    counts); the means are the "mean" rows of its Table 1. What this script
    adds are the refiners around IsolationForest and the trimmed starts,
    which are not among the benchmark's models.

    python benchmarks/bench_refine.py [--seeds 3] [--digits 0 1 ... 9]
"""

import argparse
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone

from sklearn_metarefine import IQRRefiner, MAMLFlowDetector
from sklearn_metarefine._benchmark import (
    auroc_table,
    cached_features,
    evaluate,
    load_category,
    make_model,
    plan_runs,
    resolve_config,
)
from sklearn_metarefine.datasets import make_contaminated

# The paper's refinement: fences of in-sample scores, iterate until no change.
PAPER = {"fence_scores": "in_sample", "stop": "no_change"}


def flow_config(args):
    """The flow settings given on the command line."""
    return {
        "pca_components": args.pca_components,
        "n_blocks": args.n_blocks,
        "hidden_size": args.hidden_size,
        "max_epochs": args.max_epochs,
    }


def flow_params(args):
    return {**flow_config(args), "device": "cpu"}


def digits_data(categories, config):
    """Features, labels and split of each digit category, as the benchmark has them.

    The categories share their images: through the benchmark's feature cache
    (a temporary folder here) their features are computed once.
    """
    data = {}
    with tempfile.TemporaryDirectory() as cache:
        for category in categories:
            images, y, split = load_category("digits", category, None)
            features = cached_features(images, config, "auto", Path(cache))
            data[category] = (features, y, split)
    return data


def timed_fit(estimator, X):
    start = time.perf_counter()
    estimator.fit(X)
    return time.perf_counter() - start


def refit_cost(X, y, args):
    """Part (a): the refiner's total fit time relative to one flow fit."""
    data = make_contaminated(X, y, noise=0.2, random_state=0)
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


def quality_models(config):
    """Part (b)'s detectors, unseeded, and the (bare, refined) pairs to compare.

    The bare detectors are the benchmark's ``iforest`` and ``vanilla``; each
    refiner wraps one with the benchmark's refiner settings and a start.
    """
    # refit="auto": warm for the flows, as in the paper, cold for
    # IsolationForest, whose warm_start adds trees (refused with "warm").
    trimmed = {"start": "trimmed", "start_fraction": 0.25, "refit": "cold",
               "fence_scores": "oof", "stop": "clean_tail"}
    starts = {
        "": {"refit": "auto"},
        ", trimmed": trimmed,
        ", neighbors": {**trimmed, "start": "neighbors"},
    }
    models, pairs = {}, []
    for name, benchmark_name in (
        ("IsolationForest", "iforest"),
        ("FlowDetector", "vanilla"),
    ):
        bare = make_model(
            benchmark_name, random_state=None, device="cpu", config=config
        )
        models[name] = bare
        for suffix, start in starts.items():
            refined = f"IQRRefiner({name}{suffix})"
            models[refined] = IQRRefiner(bare, **{**config["refiner"], **start})
            pairs.append((name, refined))
    return models, pairs


def quality_records(data, config, models, args):
    """Part (b)'s runs, through the benchmark's grid and run function."""
    categories = [f"digit{digit}" for digit in args.digits]
    # Seeds 0, 1, ... by repeat, as in the user guide's measurements, rather than
    # plan_runs' derived seeds; either way the models of a repeat share it.
    runs = [
        replace(run, seed=run.repeat)
        for run in plan_runs(config, categories, args.noise, args.seeds, list(models))
    ]
    return [
        evaluate(
            clone(models[run.model]).set_params(random_state=run.seed),
            run,
            *data[run.category],
            config,
            "cpu",
        )
        for run in runs
    ]


def quality(data, config, args):
    """Part (b): AUROC and removals, bare vs refined, over digits x noise x seeds."""
    models, pairs = quality_models(config)
    names = list(models)
    records = quality_records(data, config, models, args)
    categories = [f"digit{digit}" for digit in args.digits]
    auroc = {
        (row["model"], row["noise"]): row["auroc_mean"]
        for row in auroc_table(records, categories, args.noise, names)
        if row["category"] == "mean"
    }
    removed = defaultdict(lambda: np.zeros(4, dtype=int))
    for r in records:
        if r["removed_good"] is not None:
            n_good = r["n_train"] - r["n_train_anomalous"]
            removed[r["model"], r["noise"]] += [
                r["removed_good"],
                n_good,
                r["removed_bad"],
                r["n_train_anomalous"],
            ]

    n_runs = len(args.digits) * args.seeds
    print(f"(b) mean AUROC over {len(args.digits)} digits x {args.seeds} seeds")
    header = f"{'model':<40}" + "".join(f"{f'noise {n:g}':>11}" for n in args.noise)
    print(header)
    print("-" * len(header))
    for name in names:
        cells = "".join(
            f"{'failed':>11}" if auroc[name, n] is None else f"{auroc[name, n]:>11.4f}"
            for n in args.noise
        )
        print(f"{name:<40}{cells}")
    for bare, refined in pairs:
        met = all(
            None not in (auroc[bare, n], auroc[refined, n])
            and auroc[refined, n] >= auroc[bare, n]
            for n in args.noise
            if n >= 0.1
        )
        print(
            f"target {refined} >= {bare} at every noise >= 0.1: {'met' if met else 'NOT met'}"
        )
    failed = [r for r in records if r["error"] is not None]
    if failed:
        print(f"{len(failed)} run(s) failed, left out of the means; the first:")
        print(failed[0]["traceback"])
    print()
    print(
        f"Training images removed, summed over {n_runs} runs (good / bad, of planted)"
    )
    header = f"{'model':<40}" + "".join(f"{f'noise {n:g}':>22}" for n in args.noise)
    print(header)
    print("-" * len(header))
    for name in names:
        if (name, args.noise[0]) not in removed:
            continue
        cells = "".join(
            f"{'{}/{} {}/{}'.format(*removed[name, n]):>22}" for n in args.noise
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
    config = resolve_config(
        "digits",
        {"features": {"image_size": args.image_size}, "flow": flow_config(args)},
    )
    categories = dict.fromkeys(["digit0", *(f"digit{d}" for d in args.digits)])
    data = digits_data(categories, config)
    X, y, _ = data["digit0"]
    print(
        f"features: {config['features']['backbone']} at {args.image_size} px, "
        f"{X.shape[1]} dims; flows: {flow_params(args)}; torch threads 1"
    )
    print()
    refit_cost(X, y, args)
    if not args.skip_quality:
        quality(data, config, args)


if __name__ == "__main__":
    main()
