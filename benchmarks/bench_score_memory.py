"""Peak memory of `metarefine score` does not grow with the number of files.

Fits a small MetaRefineDetector on 40 generated images and saves it, writes
200 and 2,000 generated PNG files (256 x 256 RGB, 192 KiB of pixels each:
2,000 held at once would be 375 MiB), then runs ``metarefine score`` on each
folder in its own subprocess and reads that subprocess's peak resident memory
(``ru_maxrss`` from ``os.wait4``). Prints both and their ratio; target: the
2,000-file run peaks at most 1.2 times the 200-file run.

    python benchmarks/bench_score_memory.py [--batch-size 32] [--image-side 256]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sklearn_metarefine import MetaRefineDetector, save

TARGET = 1.2


def make_image(rng, side):
    """A smooth random pattern with noise: compresses like a photo, not like noise."""
    y, x = np.mgrid[0:side, 0:side] / side
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [np.sin(6 * x + p) * np.cos(4 * y - p) for p in phase]
    pixels = (
        127.5 + 100 * np.stack(channels, axis=2) + rng.normal(0, 8, (side, side, 3))
    )
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_folder(folder, n_files, side, seed):
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    for i in range(n_files):
        Image.fromarray(make_image(rng, side)).save(folder / f"image{i:05d}.png")


def peak_rss_mib(command):
    """Run ``command``; its peak resident memory in MiB and its wall time."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {process.returncode}")
    # ru_maxrss is in KiB on Linux.
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-side", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.RandomState(0)
        train = np.stack([make_image(rng, args.image_side) for _ in range(40)])
        detector = MetaRefineDetector(
            image_size=64,
            n_scales=1,
            max_epochs=5,
            hidden_size=16,
            n_blocks=2,
            device=args.device,
            random_state=0,
        ).fit(train)
        model = tmp / "model.metarefine"
        save(detector, model)

        rows = []
        for n_files in (200, 2000):
            folder = tmp / f"files{n_files}"
            write_folder(folder, n_files, args.image_side, seed=n_files)
            command = [
                sys.executable, "-m", "sklearn_metarefine", "score", str(model),
                str(folder), "--output", str(tmp / f"scores{n_files}.csv"),
                "--batch-size", str(args.batch_size), "--device", args.device,
                "--no-progress",
            ]  # fmt: skip
            peak, wall = peak_rss_mib(command)
            with open(tmp / f"scores{n_files}.csv") as file:
                n_rows = sum(1 for _ in file) - 1
            assert n_rows == n_files, (n_rows, n_files)
            rows.append((n_files, peak, wall))

    print(
        f"metarefine score, {args.image_side}x{args.image_side} PNG files, "
        f"--batch-size {args.batch_size}, device {args.device}"
    )
    print(f"{'files':>6}  {'peak RSS (MiB)':>14}  {'wall (s)':>8}")
    for n_files, peak, wall in rows:
        print(f"{n_files:>6}  {peak:>14.1f}  {wall:>8.1f}")
    ratio = rows[1][1] / rows[0][1]
    verdict = "meets" if ratio <= TARGET else "misses"
    print(
        f"peak RSS ratio, 2000 / 200 files: {ratio:.3f} ({verdict} target <= {TARGET})"
    )


if __name__ == "__main__":
    main()
