"""Command line of sklearn-metarefine: ``metarefine benchmark``, ``fit``, ``score``.

Also reachable as ``python -m sklearn_metarefine``. This module parses
arguments; the work is done in ``_benchmark``, ``_training`` and ``_inference``.
"""

import argparse
import contextlib
import os
import sys
import warnings

# The light modules only: the arguments are checked before torch is imported.
from ._benchmark._config import (
    ALL_MODELS,
    DATASETS,
    NOISE_LEVELS,
    BenchmarkError,
    check_grid,
    check_n_jobs,
    resolve_config,
)
from ._arguments import finite, nonzero_int, positive_int, seed, setting, size
from ._benchmark._storage import check_output, read_json
from ._signals import stop_status, stopped, terminated_as_interrupt
from ._streams import Escaping, Unfailing
from ._utils import surrogates_escaped

_BACKBONES = ("efficientnet_lite0", "alexnet", "resnet18", "wide_resnet50_2")

_BENCHMARK_EPILOG = """\
examples:
  metarefine benchmark                                   # digits, all models, ~minutes on a CPU
  metarefine benchmark --models vanilla metarefine --noise 0 0.3 --repeats 1
  metarefine benchmark --dataset mvtec --root ~/data/mvtec_ad --categories bottle cable --overlap --noise 0 0.1 0.2
  metarefine benchmark --dataset ksdd2 --root ~/data/ksdd2 --train-size 400 --device cuda
  metarefine benchmark --dataset surfaces --noise 0 0.1 0.3 0.5   # patch models, pixel metrics
  metarefine benchmark --backend dask --scheduler tcp://10.0.0.1:8786

The output folder keeps one file per finished run: rerunning the same command
after an interruption runs only the missing ones. It also records the
configuration and refuses results of another one.
"""


def _parser():
    parser = argparse.ArgumentParser(
        prog="metarefine",
        description="Robust image anomaly detection from contaminated training sets.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser(
        "benchmark",
        help="the paper's noise benchmark: AUROC of each model against noise",
        description=(
            "Run the noise benchmark of Aqeel et al. (ECCV 2024 workshops): for\n"
            "each category, noise level, repeat and model, fit on a contaminated\n"
            "training set and report the test AUROC (Table 1, Figures 4 and 5)\n"
            "and the good and bad training images the refiners removed (Table 2).\n"
            "The patch models' anomaly maps are also scored against the defect\n"
            "masks (pixel AUROC, AUPRO: Tables 4 and 5)."
        ),
        epilog=_BENCHMARK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = bench.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="digits: each digit in turn is normal (offline); "
        "mvtec, ksdd2: read from --root; surfaces: generated surfaces with "
        "defect masks, for the patch models (offline) (default: %(default)s)",
    )
    data.add_argument("--root", help="folder of MVTec AD or KolektorSDD2")
    data.add_argument(
        "--categories",
        nargs="+",
        metavar="NAME",
        help="categories to run (digits: 0..9; surfaces: fabric metal stone "
        "tile wood; default: all)",
    )
    data.add_argument(
        "--noise",
        nargs="+",
        type=float,
        default=list(NOISE_LEVELS),
        metavar="FRACTION",
        help="fractions of anomalies in the training set (default: %(default)s)",
    )
    data.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        metavar="N",
        help="repeats per cell (default: %(default)s)",
    )
    data.add_argument(
        "--overlap",
        action="store_true",
        default=None,
        help="draw training anomalies from the test anomalies too, "
        "for datasets with too few anomalies for high noise",
    )
    data.add_argument(
        "--train-size",
        type=positive_int,
        metavar="N",
        help="fixed training-set size (reaches high noise with few anomalies)",
    )
    data.add_argument(
        "--test-size",
        type=size,
        metavar="N",
        help="normal (and anomalous) test samples: a count, or a "
        "fraction of the eligible normal samples",
    )

    model = bench.add_argument_group("models and features")
    model.add_argument(
        "--models",
        nargs="+",
        choices=ALL_MODELS,
        metavar="MODEL",
        help=f"models to compare, among {', '.join(ALL_MODELS)}; the last four "
        "are patch models, for the datasets with masks: surfaces, mvtec and "
        "ksdd2 (default: the image-level "
        "models; on surfaces the patch models, metarefine and iforest)",
    )
    model.add_argument(
        "--backbone",
        choices=_BACKBONES,
        help="feature CNN of the image-level models (default: "
        "efficientnet_lite0, offline; the paper's is alexnet at --image-size 448 "
        "--n-scales 3); the patch models' is set in --config's patch section",
    )
    model.add_argument(
        "--image-size",
        type=positive_int,
        metavar="PX",
        help="image side fed to the CNN of the image-level models (default: 64 "
        "for digits, 128 for surfaces, 224 otherwise)",
    )
    model.add_argument(
        "--n-scales",
        type=positive_int,
        metavar="N",
        help="CNN input scales of the image-level models (default: 3 for "
        "digits and surfaces, 1 otherwise)",
    )
    model.add_argument(
        "--n-views",
        type=positive_int,
        metavar="N",
        help="rotated views per image, image-level models (default: 1)",
    )
    model.add_argument(
        "--max-epochs",
        type=positive_int,
        metavar="N",
        help="training epochs of the image-level flows (patchflow's: "
        "--config's patchflow section)",
    )
    model.add_argument(
        "--seed", type=seed, metavar="N", help="base seed of every draw and model"
    )
    model.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of configuration overrides, e.g. "
        '{"flow": {"hidden_size": 64}, "refiner": {"k": 3.0}}; '
        "the options above take precedence",
    )

    run = bench.add_argument_group("execution and output")
    run.add_argument(
        "--output",
        default="metarefine_results",
        metavar="DIR",
        help="results folder, reused to resume (default: %(default)s)",
    )
    run.add_argument(
        "--device", default="auto", help="auto, cpu or cuda (default: %(default)s)"
    )
    run.add_argument(
        "--n-jobs",
        type=nonzero_int,
        default=-1,
        metavar="N",
        help="runs in parallel, -1 for all cores or workers (default: %(default)s)",
    )
    run.add_argument(
        "--backend",
        choices=("loky", "dask"),
        default="loky",
        help="joblib backend (default: %(default)s); dask needs "
        '--scheduler and pip install "sklearn-metarefine[dask]"',
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running dask.distributed scheduler",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_fit_parser(commands)
    _add_score_parser(commands)
    return parser


_FIT_EPILOG = """\
examples:
  metarefine fit images/good --output line3.metarefine
  metarefine fit images/good --output line3.metarefine --backbone alexnet --image-size 448 --k 3
  metarefine fit images/good --output line3.metarefine --set hidden_size=64
  metarefine fit images/good --output line3.metarefine --level patch

Besides MODEL, writes MODEL's name with .dropped.csv (the training files the
refinement dropped, with their anomaly score and round) and .dropped.png (a
contact sheet of them); with --level patch, whose memory bank is cleaned patch
by patch and keeps every image, .flagged.csv and .flagged.png instead (the
training files the fitted model labels anomalous, each scored as if held out:
without its own patches in the bank, by flows fitted without it); and
.skipped.csv with --skip-unreadable.
"""


def _add_pixel_limit(command):
    command.add_argument(
        "--max-image-pixels",
        type=positive_int,
        metavar="N",
        help="Pillow's decompression-bomb limit for this run: images over N "
        "pixels give a warning, over 2 N are refused (default: Pillow's, "
        "89,478,485); for line-scan or stitched images",
    )


def _add_fit_parser(commands):
    fit = commands.add_parser(
        "fit",
        help="fit a detector on a folder of (mostly) good images and save it",
        description="Fit a MetaRefineDetector on every PNG, JPEG, BMP and TIFF "
        "file under TRAIN_FOLDER (recursively) and save it to MODEL.",
        epilog=_FIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("train_folder", metavar="TRAIN_FOLDER")
    fit.add_argument("--output", required=True, metavar="MODEL", help="model file")
    fit.add_argument(
        "--level",
        choices=("image", "patch"),
        default="image",
        help="image: refine the training images (the paper's method); patch: "
        "a memory bank of patches cleaned of defects, with anomaly maps "
        "(default: %(default)s)",
    )
    options = fit.add_argument_group("detector options (default: the detector's)")
    options.add_argument("--backbone", choices=_BACKBONES)
    options.add_argument(
        "--weights",
        metavar="FILE",
        help="backbone state dict file, DEFAULT (ImageNet) or None (random; a "
        "file named None: ./None)",
    )
    options.add_argument("--image-size", type=int, metavar="PX")
    options.add_argument("--n-scales", type=int, metavar="N")
    options.add_argument("--n-views", type=int, metavar="N")
    options.add_argument("--k", type=float, help="IQR multiplier of the fence")
    options.add_argument("--max-iter", type=int, metavar="N", help="refinement rounds")
    options.add_argument("--max-epochs", type=int, metavar="N")
    options.add_argument("--start", choices=("neighbors", "trimmed", "full"))
    options.add_argument("--seed", type=seed, metavar="N", dest="random_state")
    options.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other MetaRefineDetector parameter (repeatable); VALUE is "
        "read as JSON (null, true, 0.5, [1, 2]) or as None, True or False, "
        "else as text",
    )
    # None until given, so that --set device=... is refused only after it.
    fit.add_argument("--device", help="auto, cpu or cuda (default: auto)")
    _add_pixel_limit(fit)
    fit.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="skip image files that cannot be decoded (default: stop)",
    )
    fit.add_argument("--no-progress", action="store_true", help="no progress")


def _add_score_parser(commands):
    score = commands.add_parser(
        "score",
        help="score image files with a saved model, one CSV row per file",
        description="Score every image file given, and every PNG, JPEG, BMP and "
        "TIFF file under the folders given (recursively), with MODEL. The CSV "
        "has path, anomaly_score (higher = more anomalous), label (anomalous "
        "above the threshold), threshold, threshold_source and error.",
    )
    score.add_argument("model", metavar="MODEL")
    score.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS")
    score.add_argument("--output", required=True, metavar="CSV", help="results file")
    score.add_argument(
        "--maps",
        metavar="FOLDER",
        help="patch-level models: write, for each scored image, its anomaly map "
        "blended over it (PNG) and the map's values (.npy, float32, the "
        "image's height x width), and add map and map_values columns",
    )
    score.add_argument(
        "--threshold",
        type=finite,
        metavar="T",
        help="anomaly-score threshold (default: the model's); a negative one "
        "written with an exponent needs '=': --threshold=-1e3",
    )
    score.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="list unreadable files in the CSV instead of stopping",
    )
    score.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="images read and scored at once (default: %(default)s)",
    )
    score.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_pixel_limit(score)
    score.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args):
    """Configuration overrides from --config and the individual options."""
    config = {}
    if args.config:
        config = read_json(
            args.config,
            remedy="--config takes a JSON object of overrides, e.g. "
            '{"flow": {"max_epochs": 5}}.',
        )
    sections = {
        "features": {
            "backbone": args.backbone,
            "image_size": args.image_size,
            "n_scales": args.n_scales,
            "n_views": args.n_views,
        },
        "contamination": {
            "overlap": args.overlap,
            "train_size": args.train_size,
            "test_size": args.test_size,
        },
        "flow": {"max_epochs": args.max_epochs},
    }
    for section, values in sections.items():
        given = {key: value for key, value in values.items() if value is not None}
        if given and isinstance(config.get(section, {}), dict):  # else refused later
            config[section] = {**config.get(section, {}), **given}
    if args.seed is not None:
        config["seed"] = args.seed
    return config


def _benchmark(args):
    # Checked again by run_benchmark; here before its imports (torch) take seconds.
    check_grid(args.noise, args.repeats)
    check_n_jobs(args.n_jobs)
    check_output(args.output)
    config = _overrides(args)
    resolve_config(args.dataset, config)
    from ._benchmark import run_benchmark

    result = run_benchmark(
        args.dataset,
        root=args.root,
        categories=args.categories,
        models=args.models,
        noise=args.noise,
        repeats=args.repeats,
        config=config,
        output=args.output,
        device=args.device,
        n_jobs=args.n_jobs,
        backend=args.backend,
        scheduler=args.scheduler,
        progress=not args.no_progress,
    )
    with _summary():
        print(result.report)
        print()
        print(f"Executed {result.n_executed} of {len(result.runs)} runs; files "
              "written:")
        for path in result.files.values():
            print(f"  {path}")


def _fit(args):
    from ._training import fit_folder, with_settings

    names = ("backbone", "weights", "image_size", "n_scales", "n_views", "k",
             "max_iter", "max_epochs", "start", "random_state", "device")
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if given.get("weights") == "None":  # the word the weights' messages offer
        given["weights"] = None
    params = with_settings(given, args.set)
    result = fit_folder(
        args.train_folder,
        args.output,
        level=args.level,
        params=params,
        skip_unreadable=args.skip_unreadable,
        progress=not args.no_progress,
    )
    written = [result.model, result.report_csv, result.contact_sheet]
    with _summary():
        print(f"Fitted on {result.n_images} images; {result.summary}. Files written:")
        for path in written + ([result.skipped_csv] if result.skipped else []):
            print(f"  {path}")


def _score(args):
    from ._image_files import check_nothing_read_is_overwritten
    from ._inference import load_model, print_summary, score_files

    check_nothing_read_is_overwritten(
        f"--output {args.output}", [args.output], {args.model: "the model file"}
    )
    result = score_files(
        load_model(args.model, device=args.device),
        args.inputs,
        args.output,
        maps=args.maps,
        threshold=args.threshold,
        skip_unreadable=args.skip_unreadable,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    with _summary():
        print_summary(result)


@contextlib.contextmanager
def _warnings_as_lines(command):
    """Show each warning as one line on stderr, naming the command."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"metarefine {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        yield


@contextlib.contextmanager
def _summary():
    """Around the summary on stdout, the last thing a command does, once every
    file is written: a reader that left (``| head``) is no error there."""
    try:
        if sys.stdout is None:  # closed (>&-): print writes nothing
            yield
            return
        with contextlib.redirect_stdout(Escaping(sys.stdout)):
            yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's final flush would fail again: a process's own stdout goes
        # to the null device (not one put in its place, such as a capture).
        if sys.stdout is not None and sys.stdout is sys.__stdout__:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            finally:
                os.close(devnull)


def _run_file_command(args):
    """Run fit or score; a problem with the input is one line on stderr, status 1."""
    try:  # a stop while torch is imported (seconds) is a stop as later
        from ._image_files import InputError
        from ._persistence import ModelFileError

        from PIL import Image
    except KeyboardInterrupt as stop:
        print(f"\n{stopped(stop)}.", file=sys.stderr)
        return stop_status(stop)

    command = {"fit": _fit, "score": _score}[args.command]
    limit = Image.MAX_IMAGE_PIXELS
    try:
        if args.max_image_pixels is not None:
            Image.MAX_IMAGE_PIXELS = args.max_image_pixels
        with _warnings_as_lines(args.command):
            command(args)
    except (InputError, ModelFileError, OSError, ValueError) as error:
        # OSError: a file or folder the command reads or writes; its message
        # names it (a missing folder, a read-only output, a full disk).
        # ValueError: a setting or a training set the detector refuses; its
        # message names the value.
        print(f"metarefine {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        print(f"\n{stopped(stop)}.", file=sys.stderr)
        return stop_status(stop)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return 0


def main(argv=None):
    """Run the command line.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments after the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 when the command cannot run as asked (one line on
        stderr says why and what to do), 2 for a command-line usage error,
        130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM).
    """
    # Messages name files, whose names may not be UTF-8: their own bytes are
    # printed (as _image_files.PATH_ERRORS writes them to CSV files).
    with surrogates_escaped(sys.stdout, sys.stderr):
        if isinstance(sys.stderr, Unfailing):  # a main() running in a thread
            return _main(argv)
        with contextlib.redirect_stderr(Unfailing(sys.stderr)):
            return _main(argv)


def _main(argv):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    with terminated_as_interrupt():
        if args.command in ("fit", "score"):
            return _run_file_command(args)
        try:
            with _warnings_as_lines(args.command):
                _benchmark(args)
        except (BenchmarkError, OSError) as error:
            # OSError: a file or folder the benchmark reads or writes (its
            # message names it), e.g. a dataset folder missing or a full disk.
            print(f"metarefine {args.command}: error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as stop:
            print(
                f"\n{stopped(stop)}. Finished runs are kept in {args.output}; run "
                "the same command again to resume.",
                file=sys.stderr,
            )
            return stop_status(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
