"""Grid axes and configuration of the benchmark: the defaults and their overrides."""

import copy
import json
from numbers import Integral, Real

DATASETS = ("digits", "mvtec", "ksdd2", "surfaces")
# Image-level models: one pooled feature vector per image. The default models
# of digits, mvtec and ksdd2.
MODELS = ("vanilla", "osr", "irp", "metarefine", "iforest", "lof")
# Patch-level models: a grid of patch vectors per image, and anomaly maps that
# the pixel metrics score against the defect masks. They run on the datasets
# with masks.
PATCH_MODELS = ("patchcore", "patchcore_refined", "metarefine_patch", "patchflow")
MASKED_DATASETS = ("mvtec", "ksdd2", "surfaces")
ALL_MODELS = MODELS + PATCH_MODELS
# The models of a dataset when none are named.
DEFAULT_MODELS = {
    "digits": MODELS,
    "mvtec": MODELS,
    "ksdd2": MODELS,
    "surfaces": (*PATCH_MODELS, "metarefine", "iforest"),
}
# Models that drop training images; Table 2 counts what they dropped.
# metarefine_patch's are those its flow dropped (its bank drops patches).
REFINER_MODELS = (
    "osr", "irp", "metarefine", "patchcore_refined", "metarefine_patch", "patchflow",
)  # fmt: skip
# Patch models whose inlier_mask_ keeps every training image by construction
# (PatchCore keeps every patch): their runs record no removal.
KEEPS_IMAGES = ("patchcore",)
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
# Above half, anomalies are most of the training set: an unsupervised detector
# then learns them as the normal class, and the AUROC measures the protocol,
# not the detector. The paper's results stop at half.
MAX_NOISE = 0.5


# The hyperparameters of every run. `resolve_config` turns this into the
# configuration of one dataset (its entry of "features" and everything else),
# which is what an output folder records and what overrides are applied to.
DEFAULT_CONFIG = {
    # Mixed into every draw and model seed: a different value is a different,
    # equally valid benchmark.
    "seed": 0,
    # PretrainedFeatures settings per dataset. efficientnet_lite0's weights ship
    # with a pip package, so the default runs offline; the paper's features
    # are AlexNet at 448 px with 3 scales (backbone="alexnet", image_size=448,
    # n_scales=3), which downloads torchvision's weights on first use.
    "features": {
        "digits": {
            "backbone": "efficientnet_lite0",
            "image_size": 64,
            "n_scales": 3,
            "n_views": 1,
            "batch_size": 256,
        },
        "mvtec": {
            "backbone": "efficientnet_lite0",
            "image_size": 224,
            "n_scales": 1,
            "n_views": 1,
            "batch_size": 32,
        },
        "ksdd2": {
            "backbone": "efficientnet_lite0",
            "image_size": 224,
            "n_scales": 1,
            "n_views": 1,
            "batch_size": 32,
        },
        # The generated 128 px surfaces at their own size, 3 scales (128, 64,
        # 32 px) as for digits: cheap, and the image-level models' best chance
        # at defects of 0.5-10% of the image.
        "surfaces": {
            "backbone": "efficientnet_lite0",
            "image_size": 128,
            "n_scales": 3,
            "n_views": 1,
            "batch_size": 64,
        },
    },
    # make_contaminated's protocol parameters.
    "contamination": {"test_size": None, "train_size": None, "overlap": False},
    # Parameters of the flow shared by the four flow models; "lr" is the Adam
    # learning rate of the maximum-likelihood flows, MAML's is maml["beta"].
    # Sized for the default digits grid (1080 runs) to take minutes on a
    # two-core CPU. The paper's flow: pca_components=None, n_blocks=8,
    # hidden_size=2048, lr=2e-4, max_epochs=240.
    "flow": {
        "pca_components": 16,
        "n_blocks": 4,
        "hidden_size": 32,
        "batch_size": 96,
        "max_epochs": 10,
        "warm_epochs": None,
        "lr": 1e-3,
    },
    # MAML's parameters (the "metarefine" model only). alpha=0 turns MAML off,
    # MetaRefineDetector's default: MAML measured no gain on this benchmark
    # (benchmarks/bench_maml_ablation.py); paper_config.json turns it on.
    "maml": {"alpha": 0.0, "beta": 1e-3, "inner_steps": 1, "first_order": False},
    # IQRRefiner parameters of osr and irp, the paper's procedure (osr sets
    # max_iter=1): warm refits, fences of in-sample scores, iterate until
    # nothing changes (the paper sets no max_iter; 10 bounds the CPU time).
    "refiner": {
        "k": 1.5,
        "max_iter": 10,
        "min_samples": 0.5,
        "refit": "warm",
        "fence_scores": "in_sample",
        "stop": "no_change",
    },
    # What "metarefine" (MetaRefineDetector) does beyond the paper, its own
    # defaults: a trimmed core of a quarter of the training images, from the
    # images with the closest 10%-th neighbour, and one re-admission round;
    # fences on held-out scores; stop once a round only trims a clean tail.
    "metarefine": {
        "start": "neighbors",
        "start_fraction": 0.25,
        "start_neighbors": 0.1,
        "refit": "cold",
        "fence_scores": "oof",
        "cv": 5,
        "stop": "clean_tail",
    },
    "iforest": {"n_estimators": 100, "max_samples": "auto"},
    "lof": {"n_neighbors": 20},
}

# The section only the surfaces dataset has, added by `resolve_config`.
SURFACES_CONFIG = {
    # make_surfaces, per category, seeded by "seed". Without a predefined
    # split the protocol tests on a quarter of the good images and as many
    # defective ones; the other defective images are the pool the training
    # anomalies come from, so n_anomalous = n_normal reaches 50% noise (here
    # 30 + 30 test images, 90 good training images and up to 90 defective).
    "surfaces": {"image_size": 128, "n_normal": 120, "n_anomalous": 120},
}

# The sections of the patch models, added by `resolve_config` for the datasets
# with masks (MASKED_DATASETS).
PATCH_CONFIG = {
    # The patch models' PatchFeatures (backbone, image_size: the CNN's input
    # side, batch_size), their PatchCoreDetector settings (coreset_fraction,
    # k; patchflow takes k), and sigma, the smoothing of the maps in pixels at
    # the CNN's input size. The CNN sees the 128 px images at 160 px: a
    # 20 x 20 grid of 120-value patches. Measured on clean training sets of
    # 90 images (PatchCore, 2 seeds), 160 px gave a higher pixel AUROC than
    # 128 px on every surface (0.966 against 0.956 on wood, the lowest) for
    # a fit of 2 s instead of 1 s on one core; 192 and 224 px gained a little
    # more pixel AUROC for 2 to 3 times the time.
    "patch": {
        "backbone": "efficientnet_lite0",
        "image_size": 160,
        "batch_size": 32,
        "coreset_fraction": 0.1,
        "k": 1.5,
        "sigma": 4.0,
    },
    # patchcore_refined: PatchCore that drops the training images whose
    # leave-one-image-out score is above the fence (the paper's refinement,
    # in one step, on the memory bank). metarefine_patch pairs the other
    # cleaning, "patches" (PatchCoreDetector(bank_cleaning="patches")), with
    # patchflow's detector (its default flow, image cleaning).
    "patchcore_refined": {"bank_cleaning": "images", "support": 0.25},
    # patchflow: PatchFlowDetector, a flow on the patch vectors (and their
    # position code) that drops the training images above the fence of their
    # held-out scores; "flow" holds FlowDetector parameters, None the
    # detector's default flow.
    "patchflow": {"image_cleaning": True, "cv": 5, "positional_code": 2, "flow": None},
}
# MVTec AD and KolektorSDD2 photographs are 230 to 1024 px: their CNN input is
# PatchCore's 224 px (a 28 x 28 grid), the maps and masks are scored there.
_PATCH_IMAGE_SIZE = {"mvtec": 224, "ksdd2": 224}


class BenchmarkError(ValueError):
    """A benchmark that cannot run as asked; the message says what to change."""


def check_choice(what, value, choices):
    """Raise, naming the choices, unless ``value`` is one of them."""
    if value not in choices:
        raise BenchmarkError(
            f"Unknown {what} {value!r}; expected one of: "
            f"{', '.join(map(str, choices))}."
        )


def check_grid(noise, repeats):
    """Raise unless the noise levels and the number of repeats can be run."""
    if isinstance(repeats, bool) or not isinstance(repeats, Integral) or repeats < 1:
        raise BenchmarkError(
            f"repeats (--repeats) must be a positive number of repeats, got "
            f"{repeats!r}."
        )
    for level in noise:
        if not isinstance(level, Real) or not 0 <= level < 1:
            raise BenchmarkError(
                f"noise level {level!r} (--noise) is not a fraction of the "
                f"training set; use levels in [0, {MAX_NOISE}]."
            )
        if level > MAX_NOISE:
            raise BenchmarkError(
                f"noise level {level!r} (--noise) is above {MAX_NOISE}, the "
                "largest fraction of anomalies the benchmark's protocol "
                "supports: above half, anomalies are the majority of the "
                "training set, so a detector learns them as normal and the "
                "AUROC measures the protocol, not the detector. Use levels in "
                f"[0, {MAX_NOISE}]."
            )


def check_n_jobs(n_jobs):
    """Raise unless ``n_jobs`` is one of joblib's meaningful values."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral) or n_jobs == 0:
        raise BenchmarkError(
            f"n_jobs (--n-jobs) must be a positive number of parallel runs, or "
            f"negative (-1: all cores or workers), got {n_jobs!r}."
        )


def resolve_config(dataset, overrides=None):
    """The configuration of a benchmark on one dataset.

    Parameters
    ----------
    dataset : {"digits", "mvtec", "ksdd2", "surfaces"}
        The dataset; selects its entry of ``DEFAULT_CONFIG["features"]``;
        "surfaces" also gets the section of ``SURFACES_CONFIG``, and the
        datasets with masks (``MASKED_DATASETS``) the patch models' sections
        of ``PATCH_CONFIG``.
    overrides : dict or None, default=None
        Nested values replacing those of the resolved configuration, e.g.
        ``{"flow": {"max_epochs": 5}, "features": {"image_size": 32}}``.
        Unknown keys raise, so that a typo cannot go unnoticed.

    Returns
    -------
    config : dict
        ``DEFAULT_CONFIG`` with ``"dataset"`` set and ``"features"`` replaced by
        the dataset's feature settings, overrides applied, as JSON would read
        it back.
    """
    check_choice("dataset", dataset, DATASETS)
    if overrides is not None and not isinstance(overrides, dict):
        raise BenchmarkError(
            "The configuration overrides must be a dict (a JSON object such as "
            f'{{"flow": {{"max_epochs": 5}}}}), got a {type(overrides).__name__}.'
        )
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["features"] = config["features"][dataset]
    if dataset == "surfaces":
        config.update(copy.deepcopy(SURFACES_CONFIG))
    if dataset in MASKED_DATASETS:
        config.update(copy.deepcopy(PATCH_CONFIG))
        if dataset in _PATCH_IMAGE_SIZE:
            config["patch"]["image_size"] = _PATCH_IMAGE_SIZE[dataset]
    for key in (SURFACES_CONFIG.keys() | PATCH_CONFIG.keys()) & (overrides or {}).keys():
        if key not in config:
            if key in SURFACES_CONFIG:
                owner = "the surfaces dataset (--dataset surfaces)"
            else:
                owner = f"the patch models, which run on {', '.join(MASKED_DATASETS)}"
            raise BenchmarkError(
                f"The configuration key config[{key!r}] belongs to {owner}, not "
                f"to {dataset}."
            )
    config = {"dataset": dataset, **config}
    _merge(config, overrides or {}, path="config")
    seed = config["seed"]
    integer = isinstance(seed, Integral) and not isinstance(seed, bool)
    if not (integer and 0 <= seed < 2**32):  # was blamed on the features
        raise BenchmarkError(
            f"config['seed'] (--seed) must be an integer from 0 to {2**32 - 1}, "
            f"got {seed!r}."
        )
    config["seed"] = int(seed)  # a numpy integer is no JSON
    return json.loads(json.dumps(config))


def _merge(config, overrides, *, path):
    for key, value in overrides.items():
        if key not in config or key == "dataset":
            allowed = ", ".join(k for k in config if k != "dataset")
            raise BenchmarkError(
                f"Unknown configuration key {path}[{key!r}]; expected one of: "
                f"{allowed}."
            )
        if isinstance(config[key], dict):
            if not isinstance(value, dict):
                raise BenchmarkError(
                    f"{path}[{key!r}] is a section; override its entries with a "
                    f"dict, got {value!r}."
                )
            _merge(config[key], value, path=f"{path}[{key!r}]")
        else:
            # JSON's true passes scikit-learn's integer checks as 1: a test
            # set of 2 images, one epoch, reported without a word.
            if isinstance(value, bool) and not isinstance(config[key], bool):
                raise BenchmarkError(
                    f"{path}[{key!r}] got the boolean {value!r}, but it is no "
                    f"switch (its default is {config[key]!r}): give a value of "
                    "its own kind."
                )
            config[key] = value
