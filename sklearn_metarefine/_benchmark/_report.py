"""The results: Tables 1 to 5, the text report, the CSV and JSON files, the figures."""

import numpy as np

from ._config import REFINER_MODELS
from ._storage import RECORD_FIELDS, REPORT_FILES, atomic_write, write_csv, write_json

_TABLE1_FIELDS = (
    "model",
    "category",
    "noise",
    "auroc_mean",
    "auroc_std",
    "pixel_auroc_mean",
    "pixel_auroc_std",
    "aupro_mean",
    "aupro_std",
    "n_runs",
    "n_failed",
)
# Table 1's metrics: the image AUROC of every model, and the pixel metrics of
# the models with anomaly maps (None in the records of the others).
_METRICS = ("auroc", "pixel_auroc", "aupro")
_TABLE2_FIELDS = (
    "model",
    "noise",
    "removed_good",
    "removed_bad",
    "train_good",
    "train_bad",
    "n_runs",
    "n_failed",
)
_TABLE3_FIELDS = (
    "model",
    "noise",
    "false_alarm_mean",
    "false_alarm_std",
    "detection_mean",
    "detection_std",
    "n_runs",
    "n_failed",
)


def _by(records, *fields):
    groups = {}
    for record in records:
        groups.setdefault(tuple(record[f] for f in fields), []).append(record)
    return groups


def _mean_std(values):
    # Population standard deviation (ddof=0): defined for a single repeat.
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def auroc_table(records, categories, noise, models):
    """The paper's Table 1: AUROC mean and std over repeats, and pixel metrics.

    Parameters
    ----------
    records : list of dict
        Run records (:func:`run_one`).
    categories, noise, models : sequence
        The grid's axes, in the order of the rows.

    Returns
    -------
    rows : list of dict
        One row per (model, category, noise) with ``auroc_mean``,
        ``auroc_std`` (population std over repeats), ``n_runs`` and
        ``n_failed``; then per (model, noise) a row of category ``"mean"``: the
        mean over categories, its std over repeats of the per-repeat mean over
        categories, counting the repeats in which every category succeeded.
        ``pixel_auroc_mean``, ``pixel_auroc_std``, ``aupro_mean`` and
        ``aupro_std`` are the same for the pixel metrics, None for models
        without anomaly maps.
    """
    groups = _by(records, "model", "category", "noise")
    rows = []
    for model in models:
        for category in categories:
            for level in noise:
                runs = groups.get((model, category, level), [])
                done = [r for r in runs if r["error"] is None]
                values = {m: [r[m] for r in done if r[m] is not None] for m in _METRICS}
                rows.append(_table1_row(model, category, level, values, runs))
        for level in noise:
            runs = [r for c in categories for r in groups.get((model, c, level), [])]
            per_repeat = _by([r for r in runs if r["error"] is None], "repeat")
            values = {
                metric: [
                    float(np.mean([r[metric] for r in group]))
                    for group in per_repeat.values()
                    if len(group) == len(categories)
                    and all(r[metric] is not None for r in group)
                ]
                for metric in _METRICS
            }
            rows.append(_table1_row(model, "mean", level, values, runs))
    return rows


def _table1_row(model, category, level, values, runs):
    row = {"model": model, "category": category, "noise": level}
    for metric in _METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(values[metric])
    return {
        **row,
        "n_runs": len(runs),
        "n_failed": sum(r["error"] is not None for r in runs),
    }


def removal_table(records, noise, models):
    """The paper's Table 2: good and bad training images the refiners removed.

    Parameters
    ----------
    records : list of dict
        Run records (:func:`run_one`).
    noise, models : sequence
        The grid's axes; only the refiner models are tabulated.

    Returns
    -------
    rows : list of dict
        One row per (refiner model, noise): ``removed_good`` and
        ``removed_bad``, and ``train_good`` and ``train_bad`` (the good and
        bad images in the training sets), each the total over categories
        averaged over the repeats in which every category's run succeeded (as
        Table 1's means are), None when none did. Failed runs count in
        ``n_failed``.
    """
    groups = _by(records, "model", "noise")
    rows = []
    for model in (m for m in models if m in REFINER_MODELS):
        for level in noise:
            runs = groups.get((model, level), [])
            n_categories = len({r["category"] for r in runs})
            per_repeat = _by([r for r in runs if r["error"] is None], "repeat")
            complete = [g for g in per_repeat.values() if len(g) == n_categories]
            done = [r for group in complete for r in group]
            totals = {
                "removed_good": sum(r["removed_good"] for r in done),
                "removed_bad": sum(r["removed_bad"] for r in done),
                "train_good": sum(r["n_train"] - r["n_train_anomalous"] for r in done),
                "train_bad": sum(r["n_train_anomalous"] for r in done),
            }
            means = {
                key: total / len(complete) if complete else None
                for key, total in totals.items()
            }
            rows.append(
                {
                    "model": model,
                    "noise": level,
                    **means,
                    "n_runs": len(runs),
                    "n_failed": sum(r["error"] is not None for r in runs),
                }
            )
    return rows


def threshold_table(records, noise, models):
    """False alarms and detections at each model's own threshold.

    Parameters
    ----------
    records : list of dict
        Run records (:func:`run_one`).
    noise, models : sequence
        The grid's axes.

    Returns
    -------
    rows : list of dict
        One row per (model, noise): ``false_alarm_mean`` and
        ``detection_mean``, the shares of normal and of anomalous test
        samples that ``predict`` flags, as the mean over categories, with
        their std over repeats of that mean (repeats in which every category
        succeeded, as in :func:`auroc_table`).
    """
    groups = _by(records, "model", "noise")
    rows = []
    for model in models:
        for level in noise:
            runs = groups.get((model, level), [])
            done = [r for r in runs if r["error"] is None]
            n_categories = len({r["category"] for r in runs})
            row = {"model": model, "noise": level}
            for rate in ("false_alarm", "detection"):
                per_repeat = [
                    float(np.mean([r[rate] for r in group]))
                    for group in _by(done, "repeat").values()
                    if len(group) == n_categories
                ]
                row[f"{rate}_mean"], row[f"{rate}_std"] = _mean_std(per_repeat)
            rows.append({**row, "n_runs": len(runs), "n_failed": len(runs) - len(done)})
    return rows


def _percent(level):
    return f"{100 * level:g}%"


def _text_table(header, rows, *, n_labels):
    """Align columns: the first ``n_labels`` to the left, numbers to the right."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(
            str(c).ljust(w) if i < n_labels else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    )


def format_report(
    table1, table2, records, *, categories, noise, models, repeats, table3=None
):
    """The plain-text report: Tables 1 to 5, seconds per run, failed runs.

    Tables 4 and 5 (pixel AUROC and AUPRO) list the models with anomaly maps,
    when the grid has any.

    Parameters
    ----------
    table1, table2 : list of dict
        Rows of :func:`auroc_table` and :func:`removal_table`.
    records : list of dict
        Run records.
    categories, noise, models : sequence
        The grid's axes.
    repeats : int
        Number of repeats.
    table3 : list of dict, default=None
        Rows of :func:`threshold_table`; None leaves Table 3 out.

    Returns
    -------
    report : str
    """
    parts = [
        (
            f"Table 1. Test AUROC, mean ± std over {repeats} repeat(s); 'mean' is "
            "the mean over categories."
        ),
        _metric_text(table1, "auroc", categories, noise, models),
    ]
    if table2:
        rows = [
            [row["model"], _percent(row["noise"])]
            + [
                "failed" if row[key] is None else f"{row[key]:g}"
                for key in ("removed_good", "removed_bad", "train_good", "train_bad")
            ]
            + ([str(row["n_failed"])] if any(r["n_failed"] for r in table2) else [])
            for row in table2
        ]
        header = [
            "model",
            "noise",
            "good removed",
            "bad removed",
            "good in train",
            "bad in train",
        ]
        if any(r["n_failed"] for r in table2):
            header.append("failed runs")
        parts += [
            "",
            (
                f"Table 2. Training images removed by the refiners: total over "
                f"{len(categories)} categor{'y' if len(categories) == 1 else 'ies'}, "
                f"mean over {repeats} repeat(s)."
            ),
            _text_table(header, rows, n_labels=1),
        ]
    if table3:
        parts += ["", *_threshold_text(table3, noise, models, len(categories))]
    has_maps = {r["model"] for r in table1 if r["pixel_auroc_mean"] is not None}
    mapped = [m for m in models if m in has_maps]
    if mapped:
        unmapped = [m for m in models if m not in mapped]
        note = (
            f" The models without anomaly maps ({', '.join(unmapped)}) have none."
            if unmapped
            else ""
        )
        parts += [
            "",
            (
                f"Table 4. Pixel AUROC of the test anomaly maps, mean ± std over "
                f"{repeats} repeat(s).{note}"
            ),
            _metric_text(table1, "pixel_auroc", categories, noise, mapped),
            "",
            (
                "Table 5. AUPRO of the test anomaly maps (area under the "
                "per-region-overlap curve to a 30% false-positive rate, divided "
                f"by 0.3), mean ± std over {repeats} repeat(s)."
            ),
            _metric_text(table1, "aupro", categories, noise, mapped),
        ]
    seconds = _by(records, "model")
    parts += [
        "",
        "Seconds per run (fit and score), mean over runs: "
        + ", ".join(
            f"{m} {np.mean([r['seconds'] for r in seconds[m,]]):.2f}" for m in models
        ),
    ]
    failed = [r for r in records if r["error"] is not None]
    if failed:
        parts += ["", f"{len(failed)} run(s) failed; first ones:"]
        parts += [
            f"  {r['category']} noise={r['noise']:g} repeat={r['repeat']} "
            f"{r['model']}: {r['error'][:300]}"
            for r in failed[:5]
        ]
    return "\n".join(parts)


def _metric_text(table1, metric, categories, noise, models):
    """One metric of Table 1 as text: a row per (category, model), a column
    per noise level."""
    cells = {(r["model"], r["category"], r["noise"]): r for r in table1}

    def cell(row):
        if row[f"{metric}_mean"] is None:
            return "failed"
        text = f"{row[f'{metric}_mean']:.4f}±{row[f'{metric}_std']:.4f}"
        return text + (f" ({row['n_failed']} failed)" if row["n_failed"] else "")

    rows = [
        [category, model, *(cell(cells[model, category, level]) for level in noise)]
        for category in [*categories, "mean"]
        for model in models
    ]
    return _text_table(["category", "model", *map(_percent, noise)], rows, n_labels=2)


def _threshold_text(table3, noise, models, n_categories):
    """Table 3 as lines of text: false alarms / detections per noise level."""
    cells = {(r["model"], r["noise"]): r for r in table3}

    def cell(row):
        if row["false_alarm_mean"] is None:
            return "failed"
        text = f"{row['false_alarm_mean']:.3f} / {row['detection_mean']:.3f}"
        return text + (f" ({row['n_failed']} failed)" if row["n_failed"] else "")

    rows = [[m, *(cell(cells[m, level]) for level in noise)] for m in models]
    return [
        (
            "Table 3. At each model's own threshold (predict): share of normal "
            "test images flagged (false alarms) / share of anomalous ones flagged "
            f"(detections), mean over {n_categories} "
            f"categor{'y' if n_categories == 1 else 'ies'} and the repeats."
        ),
        _text_table(["model", *map(_percent, noise)], rows, n_labels=1),
    ]


def _plot(path, panels, noise, models, *, ncols):
    """AUROC against noise per model, one panel per (title, rows) in ``panels``."""
    from matplotlib.figure import Figure

    nrows = -(-len(panels) // ncols)
    figure = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    noise = sorted(noise)  # lines drawn from low noise to high, as given or not
    percent = np.array([100 * level for level in noise])
    # Models with equal results would hide one another: shift each a little
    # sideways, by a fraction of the smallest noise step.
    step = np.diff(np.sort(percent)).min() if len(percent) > 1 else 10.0
    shifts = (np.arange(len(models)) - (len(models) - 1) / 2) * 0.04 * step
    for ax, (title, cells) in zip(axes, panels):
        for model, shift in zip(models, shifts):
            rows = [cells[model, level] for level in noise]
            mean = [
                np.nan if r["auroc_mean"] is None else r["auroc_mean"] for r in rows
            ]
            std = [np.nan if r["auroc_std"] is None else r["auroc_std"] for r in rows]
            ax.errorbar(
                percent + shift, mean, yerr=std, marker="o", capsize=3, label=model
            )
        ax.set_title(title)
        ax.set_xlabel("training noise (%)")
        ax.set_ylabel("test AUROC")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    atomic_write(
        path, lambda file: figure.savefig(file, format="png", dpi=100), mode="wb"
    )


def write_outputs(
    output, config, records, table1, table2, *, categories, noise, models, table3
):
    """Write the CSV, JSON and PNG files; return their paths by name."""
    files = {key: output / name for key, name in REPORT_FILES.items()}
    write_csv(files["runs_csv"], RECORD_FIELDS, records)
    write_csv(files["table1_csv"], _TABLE1_FIELDS, table1)
    write_csv(files["table2_csv"], _TABLE2_FIELDS, table2)
    write_csv(files["table3_csv"], _TABLE3_FIELDS, table3)
    write_json(
        files["results_json"],
        {
            "config": config,
            "runs": records,
            "table1": table1,
            "table2": table2,
            "table3": table3,
        },
    )
    cells = {(r["model"], r["category"], r["noise"]): r for r in table1}

    def panel(category):
        return {
            (m, level): cells[m, category, level] for m in models for level in noise
        }

    _plot(
        files["figure_mean"],
        [(f"{config['dataset']}: mean over categories", panel("mean"))],
        noise,
        models,
        ncols=1,
    )
    _plot(
        files["figure_categories"],
        [(c, panel(c)) for c in categories],
        noise,
        models,
        ncols=min(5, len(categories)),
    )
    return files
