"""
=====================================
Which training images were removed?
=====================================

The paper's Table 2 counts the good and bad training images the refinement
removed. Counting hides *which* ones: this example shows them. A detector is
trained on zeros contaminated with 20% other digits; every training image it
removed is drawn with a red frame when it was an anomaly (a right removal) and
a green frame when it was a normal zero (a wrong one). The anomalies it kept
follow.
"""

# %%
# Train on a contaminated set
# ---------------------------
from sklearn_metarefine import MetaRefineDetector
from sklearn_metarefine.datasets import load_digits_anomaly, make_contaminated

digits = load_digits_anomaly(normal_digit=0)
data = make_contaminated(digits.images, digits.target, noise=0.2, random_state=1)
detector = MetaRefineDetector(image_size=32, n_scales=2, max_epochs=15, random_state=0)
detector.fit(data.X_train)

removed = ~detector.inlier_mask_
bad = data.y_train == 1
print(
    f"removed {(removed & bad).sum()} of {bad.sum()} anomalous and "
    f"{(removed & ~bad).sum()} of {(~bad).sum()} normal training images "
    f"in {detector.n_iter_} round(s)"
)

# %%
# The removed images
# ------------------
# ``removed_at_iter_`` gives the round in which each image was removed, and
# ``make_contaminated``'s ``train_indices`` its position in the dataset, hence
# the digit it shows. The most anomalous images (by the final model's score)
# come first.
import matplotlib.pyplot as plt
import numpy as np

anomaly_score = -detector.score_samples(data.X_train)
shown_digit = digits.digit[data.train_indices]


def show_grid(indices, title, n_columns=10, max_rows=4):
    """Draw training images in a grid, framed red (anomalous) or green (normal)."""
    indices = indices[: n_columns * max_rows]
    n_rows = max(1, -(-len(indices) // n_columns))
    fig, axes = plt.subplots(
        n_rows,
        n_columns,
        figsize=(n_columns * 0.95, n_rows * 1.15 + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, i in zip(axes.ravel(), indices):
        color = "tab:red" if bad[i] else "tab:green"
        ax.imshow(data.X_train[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(3)
        label = "bad" if bad[i] else "good"
        ax.set_title(f"{label} ({shown_digit[i]})", fontsize=8, color=color)
    fig.suptitle(title)
    plt.show()


order = np.argsort(-anomaly_score)
removed_first = order[removed[order]]
show_grid(
    removed_first,
    f"Removed by the refinement: {removed.sum()} images "
    f"(red: anomalies, green: normal zeros)",
)

# %%
# Anomalies the refinement kept
# -----------------------------
# These stay in the final training set: the flow learns them as normal.
kept_bad = order[(~removed & bad)[order]]
if len(kept_bad):
    show_grid(kept_bad, f"Anomalies kept in the training set: {len(kept_bad)}")
else:
    print("Every anomaly was removed.")

# %%
# Removals per round
# ------------------
# Round 0 stands for the images left out of the trimmed core that the
# detector's default ``start="neighbors"`` begins from and that its first
# round did not re-admit; the other rounds are the fence's removals.
rounds = np.unique(detector.removed_at_iter_[removed])
fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
ax.bar(
    np.arange(len(rounds)) - 0.2,
    [np.sum((detector.removed_at_iter_ == r) & bad) for r in rounds],
    0.4,
    color="tab:red",
    label="anomalous",
)
ax.bar(
    np.arange(len(rounds)) + 0.2,
    [np.sum((detector.removed_at_iter_ == r) & ~bad) for r in rounds],
    0.4,
    color="tab:green",
    label="normal",
)
ax.set_xticks(np.arange(len(rounds)), [str(r) for r in rounds])
ax.set_xlabel("refinement round")
ax.set_ylabel("training images removed")
ax.legend()
plt.show()
