"""The image level's boundary on small clean training sets, with the flow's
axes sized to the smallest fit of the refinement and with 16 axes in every fit.

``MetaRefineDetector`` models at most ``pca_components`` principal axes (16)
and, on small training sets, at most two fewer than the training images of
the smallest fit of its refinement (a fold of the trimmed core's held-out
scores): 4 axes with 30 training images, 8 with 50. With 16 axes in every fit,
the folds of a small core leave the flow no residual beyond its axes (or a
residual measured in one or two directions), their held-out scores are on
another scale than the final flow's, and the boundary set from them flags
all or none of the new images.

Each generated surface of the default benchmark (its image features, the
``metarefine`` model and draws), or with ``--dataset digits`` each digit, at
0% noise (``--noise`` sets another), 3 repeats; the model is fitted on 20, 30
and 50 of the training images (a random subset per repeat) and on all of
them. Mean over categories and repeats: test AUROC, the share of good test
images flagged at the model's own boundary (false alarms; the default aims at
5%) and of defective ones (detections), the shares of the good and of the
defective training images kept, and how many runs flag no test image at all
or every one.

    python benchmarks/bench_small_training.py [--dataset surfaces|digits] [--noise 0.0]
        [--repeats 3] [--n-jobs -1] [--cache DIR]
"""

import argparse
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

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

CATEGORIES = {
    "surfaces": ("fabric", "metal", "stone", "tile", "wood"),
    "digits": tuple(f"digit{d}" for d in range(10)),
}
SIZES = (20, 30, 50, None)  # None: every training image
VARIANTS = ("sized axes (default)", "16 axes in every fit")


def run(X, y, config, category, repeat, size, variant, noise):
    seed = derive_seed(config["seed"], config["dataset"], category, repeat)
    draw = make_contaminated(X, y, noise=noise, random_state=seed, **config["contamination"])
    train = np.arange(len(draw.X_train))
    if size is not None:
        train = np.random.RandomState(seed).permutation(train)[:size]
    model = make_model("metarefine", random_state=seed, device="cpu", config=config)
    # Without the sizing, every fit models pca_components axes (as long as
    # its rows allow): the smallest fit is taken to be the whole training set.
    unsized = mock.patch(
        "sklearn_metarefine._detector.smallest_fit", lambda n, **_: n + 2
    )
    with _single_threaded(), unsized if variant == VARIANTS[1] else nullcontext():
        model.fit(draw.X_train[train])
    anomaly = -model.score_samples(draw.X_test)
    flagged = anomaly > -model.offset_
    good = draw.y_test == 0
    return (
        (size, variant),
        len(train),
        roc_auc_score(draw.y_test, anomaly),
        flagged[good].mean(),
        flagged[~good].mean(),
        model.inlier_mask_[draw.y_train[train] == 0].mean(),
        model.inlier_mask_[draw.y_train[train] == 1].mean() if noise else np.nan,
        float(not flagged.any() or flagged.all()),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(CATEGORIES), default="surfaces")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--noise", type=float, default=0.0, help="share of defective training images"
    )
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--cache", default=None, help="feature cache folder")
    args = parser.parse_args()
    config = resolve_config(args.dataset)
    categories = CATEGORIES[args.dataset]
    cache = Path(args.cache or tempfile.mkdtemp(prefix="bench_small_training_"))
    jobs = []
    for category in categories:
        images, y, _ = load_category(args.dataset, category, None, config)
        X = cached_features(images, config, "cpu", cache)
        for repeat in range(args.repeats):
            for size in SIZES:
                for variant in VARIANTS:
                    jobs.append(
                        joblib.delayed(run)(
                            X, y, config, category, repeat, size, variant, args.noise
                        )
                    )
    results = joblib.Parallel(n_jobs=args.n_jobs)(jobs)

    print(
        f"Training sets of {args.dataset} with {args.noise:.0%} noise, image level "
        "(metarefine); "
        f"mean over {len(categories)} categories x {args.repeats} repeats"
    )
    print(
        f"{'axes':<22}{'training':>9}{'AUROC':>8}{'false alarms':>14}"
        f"{'detections':>12}{'good kept':>11}{'bad kept':>10}{'none/all flagged':>18}"
    )
    for variant in VARIANTS:
        for size in SIZES:
            rows = np.array([r[1:] for r in results if r[0] == (size, variant)])
            # a small draw may hold no defective image: its share kept is NaN
            # (all of them at 0% noise, where the mean is NaN without a warning)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                means = np.nanmean(rows, axis=0)
            n, auroc, alarms, detections, good, bad, degenerate = means
            label = f"{n:.0f}" if size else f"all ({n:.0f})"
            print(
                f"{variant:<22}{label:>9}{auroc:>8.3f}{alarms:>14.3f}"
                f"{detections:>12.3f}{good:>11.3f}{bad:>10.3f}"
                f"{f'{degenerate * len(rows):.0f} of {len(rows)}':>18}"
            )


if __name__ == "__main__":
    main()
