"""Does MAML earn its place in MetaRefineDetector? An ablation on the digits benchmark.

Runs the "metarefine" model of ``metarefine benchmark`` (MetaRefineDetector
with its defaults, on the default digits features, 10 digits x 6 noise levels
x 3 repeats) with MAML (``alpha=0.01``, second order), with
``alpha=0`` (no inner step: maximum-likelihood training) and with
``first_order=True``, and prints the mean test AUROC per noise level and the
mean seconds per run (fit, refinement and scoring).

Criterion: MAML stays in the default only if it is at least 0.5 AUROC points
better than alpha=0 at every noise level from 30%, or at least twice as fast
at equal AUROC.

    python benchmarks/bench_maml_ablation.py [--repeats 3] [--output DIR]
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from sklearn_metarefine._benchmark import NOISE_LEVELS, run_benchmark

# Name -> (output subfolder, MAML parameters).
VARIANTS = {
    "MAML alpha=0.01, second order": ("maml", {"alpha": 0.01, "first_order": False}),
    "alpha=0 (no MAML)": ("alpha0", {"alpha": 0.0, "first_order": False}),
    "MAML alpha=0.01, first order": ("first_order", {"alpha": 0.01, "first_order": True}),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--output", default=None, help="folder of the runs (kept)")
    args = parser.parse_args(argv)

    root = Path(args.output or tempfile.mkdtemp(prefix="maml_ablation_"))
    rows, features = {}, None
    for name, (folder, maml) in VARIANTS.items():
        output = root / folder
        if features is not None and not (output / "features").exists():
            shutil.copytree(features, output / "features")
        result = run_benchmark(
            "digits",
            models=["metarefine"],
            repeats=args.repeats,
            config={"maml": maml},
            output=output,
            n_jobs=args.n_jobs,
            device="cpu",
            progress=False,
        )
        features = output / "features"
        means = {
            r["noise"]: r["auroc_mean"]
            for r in result.table1
            if r["category"] == "mean"
        }
        seconds = np.mean([r["seconds"] for r in result.runs])
        rows[name] = ([means[level] for level in NOISE_LEVELS], seconds)

    width = max(map(len, rows))
    print(
        f"metarefine on digits, test AUROC (mean over 10 digits and "
        f"{args.repeats} repeats) and seconds per run"
    )
    levels = "".join(f"{100 * level:>8.0f}%" for level in NOISE_LEVELS)
    print(f"{'variant':<{width}}{levels}  s/run")
    for name, (aurocs, seconds) in rows.items():
        cells = "".join(f"{a:>9.4f}" for a in aurocs)
        print(f"{name:<{width}}{cells}  {seconds:5.2f}")
    maml, plain = rows[list(VARIANTS)[0]], rows[list(VARIANTS)[1]]
    gain = [m - p for m, p, level in zip(maml[0], plain[0], NOISE_LEVELS) if level >= 0.3]
    print(
        f"MAML minus alpha=0 at noise >= 30%: {', '.join(f'{100 * g:+.2f}' for g in gain)} "
        f"points; time ratio alpha=0 / MAML: {plain[1] / maml[1]:.2f}"
    )


if __name__ == "__main__":
    main()
