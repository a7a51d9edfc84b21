"""Seconds per epoch of MAML training relative to plain maximum likelihood.

Fits FlowDetector, MAMLFlowDetector (second order) and MAMLFlowDetector
(first order) side by side on the same 768-dimensional data (the size of
DifferNet's AlexNet features) with 8 coupling blocks, and prints each one's
median seconds per epoch divided by FlowDetector's.

Targets: second order <= 3.0x, first order <= 1.5x.

    python benchmarks/bench_maml.py [--hidden-size 64 512] [--device auto]
"""

import argparse
import platform

import numpy as np
import torch
from sklearn.base import clone

from sklearn_metarefine import FlowDetector, MAMLFlowDetector
from sklearn_metarefine._torch_utils import resolve_device


def epoch_durations(detector, X):
    detector.fit(X)
    # The first epoch pays for allocation and warm-up.
    return [row["dur"] for row in detector.net_.history[1:]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=960)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--n-blocks", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument(
        "--repeats", type=int, default=3, help="fits of each model, taking turns"
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.epochs < 2:  # the first epoch is left out of the timings
        parser.error(f"--epochs must be at least 2, got {args.epochs}")

    device = resolve_device(args.device)
    X = np.random.RandomState(0).normal(size=(args.n_samples, args.dim))
    print(
        f"{args.n_samples} samples x {args.dim} dims, {args.n_blocks} blocks, "
        f"batch {args.batch_size}, {args.repeats} x {args.epochs} epochs "
        "(median of each fit's epochs 2..), "
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
        f"torch threads {torch.get_num_threads()}"
    )
    header = f"{'hidden':>6} {'model':<26} {'s/epoch':>9} {'ratio':>7} {'target':>7}"
    print(header)
    print("-" * len(header))
    common = dict(
        n_blocks=args.n_blocks,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        random_state=0,
    )
    for hidden in args.hidden_size:
        runs = [
            ("FlowDetector", FlowDetector(hidden_size=hidden, **common), None),
            (
                "MAMLFlowDetector 2nd order",
                MAMLFlowDetector(hidden_size=hidden, **common),
                3.0,
            ),
            (
                "MAMLFlowDetector 1st order",
                MAMLFlowDetector(hidden_size=hidden, first_order=True, **common),
                1.5,
            ),
        ]
        # The three fits take turns, so that a slow spell of a shared machine
        # lands on all of them rather than on one.
        durations = {name: [] for name, _, _ in runs}
        for _ in range(args.repeats):
            for name, detector, _ in runs:
                durations[name].extend(epoch_durations(clone(detector), X))
        base = None
        for name, _, target in runs:
            seconds = float(np.median(durations[name]))
            base = base or seconds
            target_text = "" if target is None else f"<={target:.1f}"
            print(
                f"{hidden:>6} {name:<26} {seconds:>9.3f} {seconds / base:>6.2f}x "
                f"{target_text:>7}"
            )


if __name__ == "__main__":
    main()
