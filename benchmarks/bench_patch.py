"""PatchCoreDetector: the cost of scoring with maps, of the coreset, and cleaning.

(a) Nearest-neighbour scoring with anomaly maps vs patch feature extraction,
    per test image at 224 px, with a 10% coreset of 200 training images
    (efficientnet_lite0 patches: a 28 x 28 grid of 120 values per image;
    crops of scikit-image's brick texture).
    Target: scoring with maps <= 0.5 x extraction. Both are timed side by side
    in one run, with torch's default number of threads and with one thread,
    each the median of ``--repeats`` runs, for the inverted-file search (the
    default) and brute force.
(b) Coreset selection (greedy k-center, 10%) time and peak memory for 200 and
    2,000 training images. 200: the real patches of (a). 2,000: Gaussian
    patch rows of the real shape (1,568,000 x 120 float32; the selection's
    cost does not depend on the values). Each run in a fresh process; peak
    memory = its peak resident size during the selection minus its size
    before, on top of the patch rows themselves (Linux only).
(c) With ``--quality``: test AUROC of plain PatchCore, dropping images and
    cleaning patches, with 0-50% of the training images defective: crops of
    scikit-image's brick texture with planted dark discs, scratches and
    stains (the generated surfaces are measured by ``metarefine benchmark
    --dataset surfaces``).

With ``--device cuda``, (a) fits and scores on the GPU (one row instead of
the two thread counts; each timing waits for the GPU to finish); (b) and (c)
run on the CPU either way.

    python benchmarks/bench_patch.py [--repeats 3] [--quality] [--device cuda]
"""

import argparse
import multiprocessing
import tempfile
import time

import numpy as np
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from sklearn_metarefine import PatchCoreDetector
from sklearn_metarefine._patch._bank import anomaly_maps, greedy_coreset

SIZE = 224
WIDTHS = (8, 11, 8, 6, 9, 6)


def brick_crops(n, seed):
    """Crops of scikit-image's brick texture (512 x 512), half of them mirrored."""
    from skimage.data import brick

    texture, rng = brick(), np.random.RandomState(seed)
    crops = np.empty((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        y, x = rng.randint(0, texture.shape[0] - SIZE, 2)
        crop = texture[y : y + SIZE, x : x + SIZE]
        crops[i] = crop[:, ::-1] if rng.rand() < 0.5 else crop
    return crops


def median_time(function, repeats, device="cpu"):
    """Median wall time of ``function``, waiting for the GPU's queued work."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def scoring_with_maps(detector, rows):
    """What anomaly_map does after the features: patch distances, then maps."""
    patches = detector._as_patches(rows)
    scores = detector._patch_scores_of(patches)
    scores = torch.from_numpy(scores.reshape(-1, *detector.grid_shape_))
    size = detector.features_.image_size_
    return anomaly_maps(scores, (SIZE, SIZE), detector.sigma, size)


def part_a(args, cache):
    train, test = brick_crops(200, seed=0), brick_crops(args.n_test, seed=1)
    device = args.device
    params = dict(coreset_fraction=0.1, memory=cache, device=device, random_state=0)
    start = time.perf_counter()
    ivf = PatchCoreDetector(**params).fit(train)
    elapsed = time.perf_counter() - start
    print(f"fit on 200 images (extraction, coreset, cells): {elapsed:.1f} s")
    brute = PatchCoreDetector(algorithm="brute", **params).fit(train)  # cached rows
    print(
        f"bank: {len(ivf.memory_bank_)} patches of {ivf.memory_bank_.shape[1]} values, "
        f"{len(ivf.cell_centers_)} cells; grid {ivf.grid_shape_}"
    )
    rows = ivf.features_.transform(test)
    exact = brute._patch_scores_of(brute._as_patches(rows))
    fast = ivf._patch_scores_of(ivf._as_patches(rows))
    equal = np.isclose(fast, exact, rtol=1e-6).mean()
    print(
        f"ivf vs brute patch distances: {equal:.4f} equal, mean excess "
        f"{np.mean(fast / exact - 1):.2e}, image scores max |diff| "
        f"{np.abs(fast.max(1) - exact.max(1)).max():.1e}"
    )

    # a feature step without the cache, so that every run embeds the images
    features = clone(ivf.features_).set_params(memory=None).fit(test[:1])
    default_threads = torch.get_num_threads()
    print(
        f"\n(a) per test image, {args.n_test} images at {SIZE} px, "
        f"median of {args.repeats}"
    )
    header = ("threads", "extract ms", "ivf ms", "ratio", "brute ms", "ratio")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, WIDTHS)))
    on_gpu = torch.device(device).type == "cuda"
    for threads in (device,) if on_gpu else (default_threads, 1):
        if not on_gpu:
            torch.set_num_threads(threads)
        extract = median_time(lambda: features.transform(test), args.repeats, device)
        fast = median_time(lambda: scoring_with_maps(ivf, rows), args.repeats, device)
        slow = median_time(lambda: scoring_with_maps(brute, rows), args.repeats, device)
        per = 1000 / args.n_test
        print(
            f"{threads:>8} {extract * per:>11.1f} {fast * per:>8.1f} "
            f"{fast / extract:>6.2f} {slow * per:>9.1f} {slow / extract:>6.2f}"
        )
    torch.set_num_threads(default_threads)
    return ivf.features_.transform(train)


def _memory_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _select(rows_path, n_images, fraction, queue):
    """Child process: time one coreset selection and its peak memory (Linux:
    the resident-size high-water mark, reset just before the selection)."""
    if rows_path is None:
        rng = np.random.default_rng(0)
        patches = rng.standard_normal((n_images * 784, 120), dtype=np.float32)
    else:
        patches = np.load(rows_path).reshape(-1, 120)
    points = torch.from_numpy(patches)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size
    before = _memory_kib("VmRSS")
    start = time.perf_counter()
    picks = greedy_coreset(
        points, int(np.ceil(fraction * len(points))), torch.Generator().manual_seed(0)
    )
    elapsed = time.perf_counter() - start
    peak = _memory_kib("VmHWM")
    extra = (peak - before) / 1024
    queue.put((len(points), len(picks), elapsed, extra, patches.nbytes))


def part_b(train_rows, cache):
    path = f"{cache}/train_rows.npy"
    np.save(path, train_rows)
    context = multiprocessing.get_context("spawn")
    print("\n(b) coreset selection, 10%, each in a fresh process")
    header = ("images", "patches", "picked", "seconds", "peak MiB", "rows MiB")
    widths = (7, 10, 8, 8, 9, 9)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths)), " data")
    for n_images, source in ((200, path), (2000, None)):
        queue = context.Queue()
        child = context.Process(target=_select, args=(source, n_images, 0.1, queue))
        child.start()
        n_points, n_picks, elapsed, peak, nbytes = queue.get()
        child.join()
        kind = "real patches" if source else "Gaussian rows, real shape"
        print(
            f"{n_images:>7} {n_points:>10} {n_picks:>8} {elapsed:>8.1f} {peak:>9.0f} "
            f"{nbytes / 2**20:>9.0f}  {kind}"
        )


def part_c(args, cache):
    from scipy import ndimage
    from skimage.data import brick

    texture = brick().astype(float)
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]

    def crop():
        y, x = rng.randint(0, texture.shape[0] - SIZE, 2)
        image = texture[y : y + SIZE, x : x + SIZE]
        return image[:, ::-1] if rng.rand() < 0.5 else image

    def defective(kind):
        image, (cy, cx) = crop().copy(), rng.uniform(0.2 * SIZE, 0.8 * SIZE, 2)
        if kind == 0:  # dark disc
            radius = rng.uniform(0.06, 0.15) * SIZE
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
            image[disc] *= rng.uniform(0.2, 0.6)
        elif kind == 1:  # scratch
            angle, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.6) * SIZE
            along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
            across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
            line = (np.abs(across) < rng.uniform(1.5, 3)) & (np.abs(along) < length / 2)
            image[line] += rng.choice([-1, 1]) * rng.uniform(60, 100)
        else:  # bright stain
            blob = np.zeros((SIZE, SIZE))
            blob[int(cy), int(cx)] = 1
            blob = ndimage.gaussian_filter(blob, rng.uniform(0.04, 0.08) * SIZE)
            image += blob / blob.max() * rng.uniform(50, 90)
        return np.clip(image, 0, 255)

    normal = np.stack([crop() for _ in range(140)]).astype(np.uint8)
    anomalous = np.stack([defective(i % 3) for i in range(90)]).astype(np.uint8)
    from sklearn_metarefine import PatchFeatures

    features = PatchFeatures(memory=cache, device="cpu").fit(normal[:1])
    normal_rows = features.transform(normal)
    anomalous_rows = features.transform(anomalous)
    test = np.vstack([normal_rows[100:], anomalous_rows[50:]])
    is_anomalous = np.r_[np.zeros(40), np.ones(40)]
    cleanings = {
        "none (PatchCore)": None,
        "drop images": "images",
        "clean patches": "patches",
    }
    noises = (0.0, 0.1, 0.3, 0.5)
    print(
        "\n(c) test AUROC, brick crops, 100 training images, "
        f"{args.quality_repeats} repeats"
    )
    print(f"{'bank_cleaning':>18} " + " ".join(f"{noise:>6.0%}" for noise in noises))
    for name, cleaning in cleanings.items():
        means = []
        for noise in noises:
            aurocs = []
            for seed in range(args.quality_repeats):
                pick = np.random.RandomState(seed)
                n_bad = int(round(noise * 100))
                train = np.vstack(
                    [
                        normal_rows[pick.choice(100, 100 - n_bad, replace=False)],
                        anomalous_rows[pick.choice(50, n_bad, replace=False)],
                    ]
                )
                detector = PatchCoreDetector(
                    backbone=None,
                    grid_shape=features.grid_shape_,
                    bank_cleaning=cleaning,
                    device="cpu",
                    random_state=seed,
                ).fit(train)
                scores = detector.score_samples(test)
                aurocs.append(roc_auc_score(is_anomalous, -scores))
            means.append(np.mean(aurocs))
        print(f"{name:>18} " + " ".join(f"{m:>6.3f}" for m in means))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--quality-repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (part a)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        train_rows = part_a(args, cache)
        part_b(train_rows, cache)
        if args.quality:
            part_c(args, cache)


if __name__ == "__main__":
    main()
