"""Speed and memory of PretrainedFeatures.

Speed: images per second of ``PretrainedFeatures.transform`` on in-memory uint8
arrays, against the bare backbone forward on the same images already resized,
normalised and cut into scales (the CNN's work alone); then from PNG files, with
the decoding time reported on its own.

Memory: peak resident-memory growth (above the process's size once the backbone
is loaded) and tracemalloc peak while embedding N files at a large
``image_size``, for a big and a small N, each in a fresh subprocess. A ratio
near 1 means memory is bounded by the batch, not by the dataset; only the
(N, d) float32 output grows with N.

Run from the repository root::

    python benchmarks/bench_features.py
    python benchmarks/bench_features.py --n-images 256 --memory-files 10000 1000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

import numpy as np
import torch
from PIL import Image

from sklearn_metarefine import PretrainedFeatures


def smooth_images(n, size, seed):
    """Random low-frequency RGB images: photo-like, and cheap to store as PNG."""
    rng = np.random.RandomState(seed)
    coarse = torch.from_numpy(rng.rand(n, 3, 8, 8).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_pngs(images, folder, n_files):
    paths = []
    for i in range(n_files):
        path = os.path.join(folder, f"{i:05d}.png")
        Image.fromarray(images[i % len(images)]).save(path, compress_level=1)
        paths.append(path)
    return paths


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def preprocessed_batches(features, images):
    """What the CNN receives inside transform, prepared ahead of the clock."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    sizes = [tuple(s) for s in features.scale_sizes_.tolist()]

    def resize(x, size):
        return torch.nn.functional.interpolate(
            x, size=size, mode="bilinear", antialias=True
        )

    batches = []
    for start in range(0, len(images), features.batch_size):
        x = torch.from_numpy(images[start : start + features.batch_size])
        x = resize(x.permute(0, 3, 1, 2).float() / 255, sizes[0])
        x = ((x - mean) / std).repeat(features.n_views_, 1, 1, 1)
        # The layout PretrainedFeatures hands its backbone, for a like-for-like race.
        x = x.contiguous(memory_format=features._memory_format())
        batches.append([resize(x, size) for size in sizes])
    device = features.device_
    return [[t.to(device) for t in scales] for scales in batches]


def bare_forward(backbone, batches):
    with torch.inference_mode():
        for scales in batches:
            for x in scales:
                backbone(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_all(paths):
    for path in paths:
        with Image.open(path) as image:
            np.asarray(image.convert("RGB"))


def speed(args):
    images = smooth_images(args.n_images, args.input_size, seed=0)
    features = PretrainedFeatures(
        args.backbone,
        weights=None if args.random_weights else "DEFAULT",
        image_size=args.image_size,
        n_scales=args.n_scales,
        n_views=args.n_views,
        batch_size=args.batch_size,
        device=args.device,
        random_state=0,
    ).fit(images[:1])
    batches = preprocessed_batches(features, images)
    features.transform(images[: args.batch_size])
    bare_forward(features.backbone_, batches[:1])

    with tempfile.TemporaryDirectory() as folder:
        paths = write_pngs(images, folder, len(images))
        runs = {
            "bare": lambda: bare_forward(features.backbone_, batches),
            "arrays": lambda: features.transform(images),
            "files": lambda: features.transform(paths),
            "decode": lambda: decode_all(paths),
        }
        # Interleaved rounds, best of each: load from other processes hits all alike.
        rounds = [
            {key: timed(run) for key, run in runs.items()} for _ in range(args.repeats)
        ]
        t_bare, t_arrays, t_files, t_decode = (
            min(r[k] for r in rounds) for k in runs
        )

    n = len(images)
    print(
        f"== speed: {args.backbone} ({'random' if args.random_weights else 'ImageNet'} "
        f"weights), {n} images {args.input_size}px -> image_size={args.image_size}, "
        f"n_scales={args.n_scales}, n_views={args.n_views}, "
        f"batch_size={args.batch_size}, device={features.device_}, "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"{'':34s}{'images/s':>10s}{'time / bare':>14s}")
    for label, seconds in (
        ("bare backbone forward", t_bare),
        ("PretrainedFeatures, uint8 array", t_arrays),
        ("PretrainedFeatures, PNG files", t_files),
        ("  of which PNG decoding alone", t_decode),
    ):
        print(f"{label:34s}{n / seconds:10.1f}{seconds / t_bare:14.3f}")
    print(
        f"overhead on arrays: {100 * (t_arrays / t_bare - 1):+.1f}% (target <= +15%); "
        f"files minus decoding: {100 * ((t_files - t_decode) / t_bare - 1):+.1f}%"
    )


def current_rss():
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Sample the resident set size in a thread while a block runs."""

    def __enter__(self):
        self.start = current_rss()
        self.peak = self.start
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, current_rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, current_rss())


def memory_backbone(name):
    if name == "patchify":
        # One 8x8, stride-8 convolution: the CNN costs little, so the run measures
        # the data path (decoding, resizing, batching), where memory could leak.
        torch.manual_seed(0)
        return torch.nn.Conv2d(3, 64, kernel_size=8, stride=8)
    return name


def memory_child(args):
    """Embed the first N files of the folder; print one JSON line."""
    paths = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder))
    paths = paths[: args.child]
    features = PretrainedFeatures(
        memory_backbone(args.memory_backbone),
        weights=None,
        image_size=args.memory_image_size,
        n_scales=args.memory_n_scales,
        batch_size=args.batch_size,
        device=args.device,
        random_state=0,
    ).fit(paths[:1])
    tracemalloc.start()
    start = time.perf_counter()
    with PeakRSS() as rss:
        X = features.transform(paths)
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "n": len(paths),
                "seconds": seconds,
                "rss_growth": rss.peak - rss.start,
                "traced_peak": traced_peak,
                "output": X.nbytes,
            }
        )
    )


def memory(args):
    big, small = args.memory_files
    print(
        f"\n== memory: {big} vs {small} PNG files ({args.memory_file_size}px) "
        f"embedded at image_size={args.memory_image_size}, "
        f"n_scales={args.memory_n_scales}, batch_size={args.batch_size}, "
        f"backbone={args.memory_backbone} (random weights), each run in a fresh "
        "subprocess"
    )
    images = smooth_images(64, args.memory_file_size, seed=1)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(images, folder, max(big, small))
        for n in (big, small):
            command = [sys.executable, __file__, "--child", str(n), "--folder", folder]
            command += sys.argv[1:]
            output = subprocess.run(command, check=True, capture_output=True, text=True)
            results[n] = json.loads(output.stdout.strip().splitlines()[-1])
    mb = 2.0**20
    print(
        f"{'files':>7s}{'seconds':>9s}{'peak RSS growth MB':>20s}"
        f"{'tracemalloc peak MB':>21s}{'of which output MB':>20s}"
    )
    for n in (big, small):
        r = results[n]
        print(
            f"{n:7d}{r['seconds']:9.1f}{r['rss_growth'] / mb:20.1f}"
            f"{r['traced_peak'] / mb:21.2f}{r['output'] / mb:20.2f}"
        )
    ratio = results[big]["rss_growth"] / max(results[small]["rss_growth"], 1)
    print(f"peak RSS growth ratio {big}/{small} files: {ratio:.2f} (target <= 1.2)")
    working = [
        max(results[n]["traced_peak"] - results[n]["output"], 1) for n in (big, small)
    ]
    print(
        f"tracemalloc peak without the (n, d) output, ratio {big}/{small}: "
        f"{working[0] / working[1]:.2f}"
    )
    held = big * 3 * args.memory_image_size**2 * 4 / mb
    print(
        f"(holding all {big} images at {args.memory_image_size}px as float32 would "
        f"take {held:.0f} MB)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-scales", type=int, default=3)
    parser.add_argument("--n-views", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-files", type=int, nargs=2, default=[2000, 200])
    parser.add_argument("--memory-file-size", type=int, default=128)
    parser.add_argument("--memory-image-size", type=int, default=448)
    parser.add_argument("--memory-n-scales", type=int, default=1)
    parser.add_argument(
        "--memory-backbone",
        default="patchify",
        help="'patchify' (one strided conv) or a backbone name, e.g. alexnet",
    )
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        memory_child(args)
        return
    if not args.skip_speed:
        speed(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
