"""PatchCoreDetector's fit: scoring the training images without their own patches.

To set its threshold, ``fit`` scores every training image with the memory
bank less that image's patches. For N training images this compares about N
times as many patches with a bank that also grows with N, so by brute force
the step grows with the square of N. With ``algorithm="ivf"`` (the default)
it searches the bank's cells as scoring does, and makes each image's largest
patch distance exact, so the training scores (and the threshold, and the
images that ``bank_cleaning="images"`` drops) are those of brute force.

For N = 100, 200 and 400 crops of scikit-image's brick texture at 224 px
(efficientnet_lite0 patches: a 28 x 28 grid of 120 values per image, a 10%
coreset): the time of the fit and of its leave-one-image-out step as ``fit``
runs it, then of the same step by brute force on the same bank, side by
side, and the largest difference between the two sets of training scores.
Features are embedded once for the largest N and reused.

    python benchmarks/bench_patch_fit.py [--sizes 100 200 400] [--device cuda]
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from sklearn_metarefine import PatchCoreDetector

from bench_patch import brick_crops  # run as a script, benchmarks/ is on the path


def timed(function, device):
    start = time.perf_counter()
    result = function()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def leave_one_image_out(detector, rows, cells):
    """The fit's step on the fitted bank, searched by ``cells``."""
    patches = detector._as_patches(rows)
    flat = torch.from_numpy(patches.reshape(-1, patches.shape[2])).to(detector.device_)
    images = torch.arange(len(patches), device=flat.device)
    images = images.repeat_interleave(patches.shape[1])
    bank = torch.from_numpy(detector.memory_bank_).to(flat.device)
    bank_images = torch.from_numpy(detector.bank_image_).to(flat.device)
    return detector._leave_one_image_out(flat, images, bank, bank_images, cells)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    crops = brick_crops(max(args.sizes), seed=0)
    params = dict(coreset_fraction=0.1, device=args.device, random_state=0)
    features = PatchCoreDetector(**params).fit(crops[:8]).features_
    rows, seconds = timed(lambda: features.transform(crops), args.device)
    threads = torch.get_num_threads()
    print(f"embedding {len(crops)} images: {seconds:.1f} s ({threads} threads)")

    header = ("images", "bank", "cells", "fit s", "ivf s", "brute s", "ratio")
    header += ("max diff",)
    widths = (6, 7, 5, 7, 7, 8, 6, 9)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths)))
    for n in args.sizes:
        detector = PatchCoreDetector(backbone=None, grid_shape=(28, 28), **params)
        _, fit = timed(lambda: detector.fit(rows[:n]), args.device)
        fast, ivf = timed(
            lambda: leave_one_image_out(detector, rows[:n], detector._stored_cells()),
            args.device,
        )
        exact, brute = timed(
            lambda: leave_one_image_out(detector, rows[:n], (None,)), args.device
        )
        assert np.array_equal(fast, detector.train_scores_)
        difference = np.abs(fast - exact).max()
        cells = len(detector.cell_centers_)
        print(
            f"{n:>6} {len(detector.memory_bank_):>7} {cells:>5} {fit:>7.1f} "
            f"{ivf:>7.2f} {brute:>8.2f} {brute / ivf:>6.1f} {difference:>9.1e}"
        )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
