"""PatchFlowDetector against PatchCoreDetector on generated surfaces.

On ``make_surfaces`` (a few categories; a clean training set of good images,
or one with defective images planted by ``--noise``; a test set balanced
good/defective), both detectors embed the images with efficientnet_lite0 at
``--image-size`` px and are fitted on the same training set. Prints per
category the image AUROC (``image_auroc``), the pixel AUROC of the maps
(``pixel_auroc``) and the fit time of each detector.

    python benchmarks/bench_patch_flow.py [--categories tile fabric wood]
        [--n-train 40] [--n-test 20] [--image-size 96] [--noise 0.0] [--seed 0]
        [--cleaning]
"""

import argparse
import time

import numpy as np

from sklearn_metarefine import (
    PatchCoreDetector,
    PatchFlowDetector,
    image_auroc,
    pixel_auroc,
)
from sklearn_metarefine.datasets import make_surfaces


def split(category, n_train, n_test, noise, image_size, seed):
    """Training images (a fraction ``noise`` defective) and a balanced test set."""
    n_bad_train = round(noise * n_train)
    n_bad = n_bad_train + n_test // 2
    data = make_surfaces(
        category,
        n_normal=n_train - n_bad_train + n_test // 2,
        n_anomalous=n_bad,
        image_size=image_size,
        random_state=seed,
    )
    good = np.flatnonzero(data.target == 0)
    bad = np.flatnonzero(data.target == 1)
    train = np.r_[good[: n_train - n_bad_train], bad[:n_bad_train]]
    test = np.r_[good[n_train - n_bad_train :], bad[n_bad_train:]]
    return data.images[train], data.images[test], data.target[test], data.masks[test]


def models(image_size, seed, cleaning):
    common = dict(image_size=image_size, device="cpu", random_state=seed)
    flow_cleaning = {"image_cleaning": True} if cleaning else {}
    core_cleaning = {"bank_cleaning": "patches"} if cleaning else {}
    return {
        "PatchFlowDetector": PatchFlowDetector(**common, **flow_cleaning),
        "PatchCoreDetector": PatchCoreDetector(**common, **core_cleaning),
    }


def main(args):
    # The counts drawn: round(noise * n_train) defective, n_test // 2 a class.
    n_bad_train = round(args.noise * args.n_train)
    print(
        f"{args.n_train} training images ({n_bad_train} defective), "
        f"{2 * (args.n_test // 2)} test images, {args.image_size} px, seed {args.seed}"
        + (", cleaning on" if args.cleaning else "")
    )
    print(
        f"{'category':10s} {'model':18s} {'image AUROC':>11s} "
        f"{'pixel AUROC':>11s} {'fit s':>6s}"
    )
    for category in args.categories:
        train, test, y, masks = split(
            category, args.n_train, args.n_test, args.noise, args.image_size, args.seed
        )
        for name, model in models(args.image_size, args.seed, args.cleaning).items():
            start = time.perf_counter()
            model.fit(train)
            fit_time = time.perf_counter() - start
            image = image_auroc(model, test, y)
            pixel = pixel_auroc(masks, model.anomaly_map(test))
            print(
                f"{category:10s} {name:18s} {image:11.3f} {pixel:11.3f} "
                f"{fit_time:6.1f}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["tile", "fabric", "wood"])
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cleaning", action="store_true")
    main(parser.parse_args())
