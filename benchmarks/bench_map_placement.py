"""Where the anomaly maps put a small defect, at several ``image_size``.

PatchCoreDetector (default backbone) fitted on 20 generated textures of
120 x 120 px, then 16 test textures, each with a bright disc of 7 px planted
at one of 16 places (10% to 70% of the height and width, away from the
bottom and right edges, which the default backbone hardly sees). Prints, per
``image_size``, the median distance in pixels between each map's maximum and
the centre of its defect.

    python benchmarks/bench_map_placement.py
"""

import numpy as np
from scipy.ndimage import gaussian_filter

from sklearn_metarefine import PatchCoreDetector

SIDE = 120
IMAGE_SIZES = (96, 100, 108, 120, 130, 150, 200, 250)


def texture(seed):
    """A grating with smooth noise, gray values in [0, 1]."""
    rng = np.random.RandomState(seed)
    rows, columns = np.mgrid[:SIDE, :SIDE]
    phase = rng.uniform(0, 6.3)
    grating = 0.15 * np.sin(2 * np.pi * (rows + columns) / 8 + phase)
    noise = 0.15 * gaussian_filter(rng.normal(size=(SIDE, SIDE)), 1)
    return np.clip(0.5 + grating + noise, 0, 1)


def rgb(gray):
    return np.repeat((gray * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def main():
    fractions = (0.1, 0.3, 0.5, 0.7)
    places = [(int(a * SIDE), int(b * SIDE)) for a in fractions for b in fractions]
    train = np.stack([rgb(texture(seed)) for seed in range(20)])
    rows, columns = np.mgrid[:SIDE, :SIDE]
    test = []
    for i, (row, column) in enumerate(places):
        gray = texture(100 + i)
        gray[(rows - row) ** 2 + (columns - column) ** 2 <= 9] = 1.0
        test.append(rgb(gray))
    test = np.stack(test)
    medians = []
    for size in IMAGE_SIZES:
        maps = PatchCoreDetector(image_size=size, random_state=0).fit(train)
        maps = maps.anomaly_map(test)
        peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
        errors = np.hypot(*(np.array(peaks) - np.array(places)).T)
        medians.append(np.median(errors))
    print(f"{SIDE} px textures, 16 planted defects: median distance (px) between "
          "a map's maximum and its defect")
    print("image_size " + " ".join(f"{size:>5}" for size in IMAGE_SIZES))
    print("median     " + " ".join(f"{value:>5.1f}" for value in medians))


if __name__ == "__main__":
    main()
