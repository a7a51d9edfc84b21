"""How hard are the generated surfaces? Image-level vs ad hoc patch-level scores.

On ``make_surfaces`` (every category; clean training set of good images; test
set balanced good/defective), with efficientnet_lite0 ImageNet features:

- pooled vectors (``PretrainedFeatures(backbone="efficientnet_lite0",
  image_size=128)``, the package's image-level features) scored by
  IsolationForest and by the mean distance to the 5 nearest training vectors;
- an ad hoc patch score, computed here without the package's patch models:
  the trunk's stage-3 (stride 8) and stage-4 (stride 16) maps at 224 px, each
  3x3-averaged, the second upsampled onto the first's 28 x 28 grid, 120
  dimensions per patch; a test patch scores its distance to the nearest
  training patch; the image scores its largest patch; the map is the patch
  scores upsampled to the image and smoothed (sigma 4 px at 224 px).

Prints image AUROC per category and model, pixel AUROC and AUPRO of the
patch maps, and the patch score's image AUROC per defect type (each type's
images against all good test images). The pooled models should be far from
perfect on small defects; the patch score near the issue's target (image
AUROC >= 0.98, pixel AUROC >= 0.95).

    python benchmarks/bench_surfaces.py [--n-train 100] [--n-test 40] [--seeds 0 1 2]
        [--categories fabric wood] [--overlay DIR]
"""

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from sklearn_metarefine import PretrainedFeatures, aupro, pixel_auroc, plot_anomaly_maps
from sklearn_metarefine._features._backbones import _build_backbone
from sklearn_metarefine.datasets import SURFACE_CATEGORIES, make_surfaces

PATCH_SIZE = 224
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def patch_embeddings(trunk, images, batch_size=32):
    """(n, 120, 28, 28) stage-3 + stage-4 patch features of uint8 images."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
            x = F.interpolate(x.float() / 255, size=PATCH_SIZE, mode="bilinear")
            x = (x - MEAN) / STD
            for layer in trunk[:5]:  # stem, bn, blocks 0-2: stride 8
                x = layer(x)
            fine = x
            coarse = trunk[5](x)  # block 3: stride 16
            fine = F.avg_pool2d(fine, 3, stride=1, padding=1)
            coarse = F.avg_pool2d(coarse, 3, stride=1, padding=1)
            coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear")
            out.append(torch.cat([fine, coarse], dim=1))
    return torch.cat(out)


def nearest_distances(queries, bank, chunk=4096):
    """Distance from each query row to its nearest bank row."""
    bank_sq = (bank**2).sum(1)
    result = []
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        d2 = (q**2).sum(1, keepdim=True) + bank_sq - 2 * q @ bank.T
        result.append(d2.min(1).values.clamp_min(0).sqrt())
    return torch.cat(result)


def patch_scores(trunk, train, test, image_size):
    """Image scores and anomaly maps of the nearest-training-patch score."""
    train_patches = patch_embeddings(trunk, train)
    test_patches = patch_embeddings(trunk, test)
    n, c, h, w = test_patches.shape
    bank = train_patches.permute(0, 2, 3, 1).reshape(-1, c)
    queries = test_patches.permute(0, 2, 3, 1).reshape(-1, c)
    grid = nearest_distances(queries, bank).reshape(n, 1, h, w)
    maps = F.interpolate(grid, size=image_size, mode="bilinear").numpy()[:, 0]
    sigma = 4 * image_size / PATCH_SIZE
    maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in maps])
    return grid.amax(dim=(1, 2, 3)).numpy(), maps


def pooled_scores(train, test):
    features = PretrainedFeatures(
        backbone="efficientnet_lite0", image_size=128, random_state=0
    ).fit(train)
    f_train, f_test = features.transform(train), features.transform(test)
    forest = IsolationForest(random_state=0).fit(f_train)
    knn = NearestNeighbors(n_neighbors=5).fit(f_train)
    return {
        "pooled IForest": -forest.score_samples(f_test),
        "pooled 5-NN": knn.kneighbors(f_test)[0].mean(1),
    }


def run(category, seed, trunk, args):
    data = make_surfaces(
        category,
        n_normal=args.n_train + args.n_test,
        n_anomalous=args.n_test,
        image_size=args.image_size,
        random_state=seed,
    )
    train = data.images[: args.n_train]
    test = data.images[args.n_train :]
    y = data.target[args.n_train :]
    masks = data.masks[args.n_train :]
    types = data.defect_type[args.n_train :]
    scores = pooled_scores(train, test)
    start = time.perf_counter()
    scores["patch NN"], maps = patch_scores(trunk, train, test, args.image_size)
    patch_seconds = time.perf_counter() - start
    row = {name: roc_auc_score(y, s) for name, s in scores.items()}
    row["patch pixel AUROC"] = pixel_auroc(masks, maps)
    row["patch AUPRO"] = aupro(masks, maps)
    by_type = {}
    for defect in np.unique(types[y == 1]):
        keep = (y == 0) | (types == defect)
        by_type[defect] = roc_auc_score(y[keep], scores["patch NN"][keep])
    if args.overlay:
        pick = np.r_[0, 1, np.flatnonzero(y == 1)[:10]]
        plot_anomaly_maps(
            test[pick],
            maps[pick],
            masks[pick],
            titles=[f"{types[i]} {scores['patch NN'][i]:.2f}" for i in pick],
            n_cols=6,
            path=f"{args.overlay}/{category}_{seed}.png",
        )
    return row, by_type, patch_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=list(SURFACE_CATEGORIES))
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=40, help="per class")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--overlay", default=None, help="folder for overlay PNGs")
    args = parser.parse_args(argv)

    trunk = _build_backbone("efficientnet_lite0", "DEFAULT", progress=False).eval()
    rows = defaultdict(lambda: defaultdict(list))
    types = defaultdict(lambda: defaultdict(list))
    for category in args.categories:
        for seed in args.seeds:
            row, by_type, seconds = run(category, seed, trunk, args)
            print(f"{category} seed {seed}: patch scoring {seconds:.1f} s", flush=True)
            for name, value in row.items():
                rows[category][name].append(value)
            for defect, value in by_type.items():
                types[category][defect].append(value)

    names = list(rows[args.categories[0]])
    print(
        f"\nImage AUROC (and the patch maps' pixel metrics), {args.n_train} good "
        f"training images, {args.n_test}+{args.n_test} test images, "
        f"{args.image_size} px, mean over seeds {args.seeds} (min in brackets)"
    )
    header = f"{'category':<10}" + "".join(f"{name:>22}" for name in names)
    print(header)
    print("-" * len(header))
    for category in args.categories:
        cells = [
            f"{np.mean(values):.3f} ({np.min(values):.3f})"
            for values in rows[category].values()
        ]
        print(f"{category:<10}" + "".join(f"{cell:>22}" for cell in cells))

    print("\nPatch NN image AUROC per defect type (that type vs all good test images)")
    for category in args.categories:
        cells = "  ".join(
            f"{defect} {np.mean(values):.3f}"
            for defect, values in types[category].items()
        )
        print(f"{category:<10}{cells}")


if __name__ == "__main__":
    main()
