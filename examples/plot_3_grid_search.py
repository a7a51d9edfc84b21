"""
===================================================
Tuning k and alpha with GridSearchCV and few labels
===================================================

The detector trains on an unlabelled, contaminated set; to choose its
hyperparameters we need a few labelled images to score candidates on. A
:class:`~sklearn.model_selection.PredefinedSplit` expresses exactly that:
every candidate trains on the contaminated set and is scored on a small
labelled validation set.

Two details matter:

* **Labels for AUROC.** scikit-learn's ``"roc_auc"`` scorer ranks samples by
  ``decision_function`` (higher = more normal) and treats the *larger* label
  as the positive class. So the labels must be 1 for normal and -1 for
  anomalous. The datasets of this package label anomalies 1 (the MVTec
  convention): convert with ``np.where(y == 1, -1, 1)``, or the search
  maximises 1 - AUROC without a word.
* **Features once.** The CNN is the expensive step and does not depend on the
  parameters searched: ``Pipeline(memory=...)`` and
  ``PretrainedFeatures(memory=...)`` cache its output across candidates.
"""

# %%
# A contaminated training set and a small labelled validation set
# ---------------------------------------------------------------
import numpy as np
from sklearn.model_selection import train_test_split

from sklearn_metarefine.datasets import load_digits_anomaly, make_contaminated

digits = load_digits_anomaly(normal_digit=0)
data = make_contaminated(digits.images, digits.target, noise=0.2, random_state=0)
# 30 labelled images (15 normal, 15 anomalous) for validation; the rest of the
# balanced test set stays untouched until the end.
X_val, X_test, y_val, y_test = train_test_split(
    data.X_test, data.y_test, train_size=30, stratify=data.y_test, random_state=0
)

# One array for the search: the training images, then the validation images.
X = np.concatenate([data.X_train, X_val])
# Labels: 1 normal, -1 anomalous. The training part's labels are never read
# (fit ignores y), so they are simply set to 1.
y = np.concatenate([np.ones(len(data.X_train), dtype=int), np.where(y_val == 1, -1, 1)])
# -1: in every training fold, never scored; 0: the single validation fold.
test_fold = np.concatenate([np.full(len(data.X_train), -1), np.zeros(len(X_val), int)])
print(
    f"{len(data.X_train)} unlabelled training images ({data.y_train.mean():.0%} "
    f"anomalous), {len(X_val)} labelled validation images, {len(X_test)} test images"
)

# %%
# The pipeline and the search
# ---------------------------
# ``k`` is the IQR multiplier of the refinement fence; ``alpha`` the inner
# (task-adaptation) learning rate of MAML. ``refit=False``: scikit-learn
# would otherwise refit the best candidate on *all* of ``X``, validation
# anomalies included.
from tempfile import mkdtemp

from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import make_pipeline

from sklearn_metarefine import IQRRefiner, MAMLFlowDetector, PretrainedFeatures

cache = mkdtemp(prefix="metarefine-features-")
pipeline = make_pipeline(
    PretrainedFeatures("efficientnet_lite0", image_size=32, n_scales=2, memory=cache),
    IQRRefiner(
        MAMLFlowDetector(pca_components=8, n_blocks=4, hidden_size=32, max_epochs=15),
        random_state=0,
    ),
    memory=cache,
)
param_grid = {
    "iqrrefiner__k": [1.0, 1.5, 3.0],
    "iqrrefiner__estimator__alpha": [0.0, 0.01, 0.05],
}
search = GridSearchCV(
    pipeline, param_grid, scoring="roc_auc", cv=PredefinedSplit(test_fold), refit=False
)
search.fit(X, y)
print("best parameters:", search.best_params_)
print(f"validation AUROC of the best candidate: {search.best_score_:.3f}")

# %%
# Validation AUROC of every candidate
# -----------------------------------
import matplotlib.pyplot as plt

ks = param_grid["iqrrefiner__k"]
alphas = param_grid["iqrrefiner__estimator__alpha"]
scores = np.empty((len(alphas), len(ks)))
for params, score in zip(
    search.cv_results_["params"], search.cv_results_["mean_test_score"]
):
    scores[
        alphas.index(params["iqrrefiner__estimator__alpha"]),
        ks.index(params["iqrrefiner__k"]),
    ] = score

fig, ax = plt.subplots(figsize=(5, 3.8), layout="constrained")
image = ax.imshow(scores, cmap="viridis")
ax.set_xticks(range(len(ks)), [f"k={k}" for k in ks])
ax.set_yticks(range(len(alphas)), [f"alpha={a}" for a in alphas])
for (i, j), score in np.ndenumerate(scores):
    ax.text(j, i, f"{score:.3f}", ha="center", va="center", color="w")
fig.colorbar(image, label="validation AUROC")
ax.set_title("GridSearchCV on 30 labelled images")
plt.show()

# %%
# Fit the chosen configuration on the training set only
# -----------------------------------------------------
from sklearn.base import clone
from sklearn.metrics import get_scorer, roc_auc_score

best = clone(pipeline).set_params(**search.best_params_).fit(data.X_train)
# With the package's labels (1 = anomalous), the anomaly score is minus
# score_samples:
print(f"test AUROC: {roc_auc_score(y_test, -best.score_samples(X_test)):.3f}")

# %%
# The label pitfall, measured: the ``"roc_auc"`` scorer with the package's
# labels returns one minus the AUROC, a plausible-looking number.
roc_auc = get_scorer("roc_auc")
right = roc_auc(best, X_test, np.where(y_test == 1, -1, 1))
wrong = roc_auc(best, X_test, y_test)
print(f"roc_auc scorer, labels 1 normal / -1 anomalous: {right:.3f}")
print(
    f"roc_auc scorer, labels 1 anomalous / 0 normal:  {wrong:.3f}  (= 1 - {right:.3f})"
)

# %%
# Remove the feature cache.
from shutil import rmtree

rmtree(cache)
