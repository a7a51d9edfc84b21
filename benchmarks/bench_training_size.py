"""How the patch level's boundary behaves with few training images.

For each generated surface of the default benchmark (its patch features,
models and draws) at 0% noise, 3 repeats, each patch model is fitted on 10,
20 and 40 of the training images (a random subset per repeat) and on all of
them. Printed, mean over surfaces and repeats: test AUROC, the share of good
test images flagged at the model's own boundary (false alarms) and of
defective ones (detections), and the share of the training images whose
leave-one-image-out score lies beyond the boundary, the files that
``metarefine fit --level patch`` lists in its ``.flagged.csv``.

    python benchmarks/bench_training_size.py [--repeats 3] [--n-jobs -1] [--cache DIR]
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
MODELS = ("metarefine_patch", "patchcore")
SIZES = (10, 20, 40, None)  # None: every training image


def run(patches, y, config, category, repeat, name, size):
    seed = derive_seed(config["seed"], config["dataset"], category, repeat)
    X = patches.reshape(len(patches), -1)
    draw = make_contaminated(X, y, noise=0.0, random_state=seed, **config["contamination"])
    train = np.arange(len(draw.X_train))  # as the benchmark fits: all, in order
    if size is not None:
        train = np.random.RandomState(seed).permutation(train)[:size]
    with _single_threaded():
        model = make_model(
            name,
            random_state=seed,
            device="cpu",
            config=config,
            grid_shape=patches.shape[1:3],
        )
        model.fit(draw.X_train[train])
        anomaly = -model.score_samples(draw.X_test)
    detector = getattr(model, "detector_", model)
    flagged = anomaly > -model.offset_
    good = draw.y_test == 0
    return (
        name,
        size,
        len(train),
        roc_auc_score(draw.y_test, anomaly),
        flagged[good].mean(),
        flagged[~good].mean(),
        np.mean(detector.train_scores_ > -model.offset_),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--cache", default=None, help="patch feature cache folder")
    args = parser.parse_args()
    config = resolve_config("surfaces")
    cache = Path(args.cache or tempfile.mkdtemp(prefix="bench_training_size_"))
    jobs = []
    for category in CATEGORIES:
        images, y, _ = load_category("surfaces", category, None, config)
        patches = cached_features(images, config, "cpu", cache, patches=True)
        for name in MODELS:
            for size in SIZES:
                for repeat in range(args.repeats):
                    jobs.append(
                        joblib.delayed(run)(patches, y, config, category, repeat, name, size)
                    )
    results = joblib.Parallel(n_jobs=args.n_jobs)(jobs)
    print(
        "Clean training sets of the generated surfaces; mean over "
        f"{len(CATEGORIES)} surfaces x {args.repeats} repeats"
    )
    print(
        f"{'model':<18}{'training':>9}{'AUROC':>8}{'false alarms':>14}"
        f"{'detections':>12}{'training flagged':>18}"
    )
    for name in MODELS:
        for size in SIZES:
            rows = np.array([r[2:] for r in results if r[:2] == (name, size)])
            n, auroc, alarms, detections, training = rows.mean(axis=0)
            label = f"{n:.0f}" if size else f"all ({n:.0f})"
            print(
                f"{name:<18}{label:>9}{auroc:>8.3f}{alarms:>14.3f}"
                f"{detections:>12.3f}{training:>18.3f}"
            )


if __name__ == "__main__":
    main()
