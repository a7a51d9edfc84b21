"""Peak memory of ``neighbour_distances`` above its input and output.

Standard normal data of 20,000 samples x 768 features (the size of DifferNet's
AlexNet features for a large training set), the 10%-th neighbour as in
``IQRRefiner(start="neighbors")``. ``tracemalloc`` records numpy's allocations;
the input is allocated before tracing starts and the output (one float64 per
sample) is subtracted. Target: under 300 MB, where asking a nearest-neighbour
search for all 2,000 neighbours of every sample takes about 2.1 GB.

    python benchmarks/bench_neighbour_memory.py [--n-samples 20000] [--n-features 768]
"""

import argparse
import math
import time
import tracemalloc

import numpy as np

from sklearn_metarefine import neighbour_distances


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--n-features", type=int, default=768)
    parser.add_argument("--neighbors", type=float, default=0.1)
    args = parser.parse_args(argv)

    X = np.random.RandomState(0).normal(size=(args.n_samples, args.n_features))
    n_neighbors = math.ceil(args.neighbors * args.n_samples)
    tracemalloc.start()
    start = time.perf_counter()
    distances = neighbour_distances(X, n_neighbors)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    mb = 2**20
    above = (peak - distances.nbytes) / mb
    print(
        f"neighbour_distances on {args.n_samples} x {args.n_features}, "
        f"neighbour {n_neighbors}: {seconds:.1f} s"
    )
    print(f"input {X.nbytes / mb:.0f} MB, output {distances.nbytes / mb:.2f} MB")
    print(f"peak traced memory above input and output: {above:.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    main()
