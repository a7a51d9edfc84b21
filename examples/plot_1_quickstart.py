"""
==========
Quickstart
==========

Train :class:`~sklearn_metarefine.MetaRefineDetector` on images of which 10%
are anomalous, without telling it which, then measure how well it separates
normal from anomalous test images and look at the training images it removed.

The data are scikit-learn's bundled 8 x 8 scans of handwritten digits: the
zeros are the normal images and every other digit is an anomaly.
The configuration is tiny (32-pixel inputs, a short training) so that the
example runs in seconds on a CPU; :doc:`/user_guide/reproducing` gives the
paper's.
"""

# %%
# Train on a contaminated training set
# ------------------------------------
# Copy this cell and run it: it is the whole workflow.
from sklearn.metrics import roc_auc_score

from sklearn_metarefine import MetaRefineDetector
from sklearn_metarefine.datasets import load_digits_anomaly, make_contaminated

digits = load_digits_anomaly(normal_digit=0)
data = make_contaminated(digits.images, digits.target, noise=0.1, random_state=0)

detector = MetaRefineDetector(image_size=32, n_scales=2, max_epochs=15, random_state=0)
detector.fit(data.X_train)

# score_samples is higher for more normal images, and the datasets label the
# anomalies 1: minus the score is the anomaly score roc_auc_score expects.
auroc = roc_auc_score(data.y_test, -detector.score_samples(data.X_test))
print(f"test AUROC: {auroc:.3f}")

# %%
# What the data look like
# -----------------------
# :func:`~sklearn_metarefine.datasets.make_contaminated` returns a training set
# with the requested share of anomalies and a balanced test set that shares no
# image with it. ``y_train`` is the ground truth of the contamination: the
# detector never sees it, we use it to check what the refinement removed.
print(f"training images: {len(data.y_train)}, of which anomalous: {data.y_train.sum()}")
print(f"test images: {len(data.y_test)}, of which anomalous: {data.y_test.sum()}")

# %%
# Which training images were removed?
# -----------------------------------
# Each refinement round fits the flow, scores the training images it kept,
# and removes those above the fence ``Q3 + k * IQR`` of their anomaly scores.
# ``inlier_mask_`` says which images survived; ``removed_at_iter_`` in which
# round the others were removed.
removed = ~detector.inlier_mask_
print(f"rounds: {detector.n_iter_}, stopped because: {detector.termination_condition_}")
print(f"fence of each round: {detector.thresholds_.round(1)}")
print(
    f"removed anomalous training images: {(removed & (data.y_train == 1)).sum()} "
    f"of {(data.y_train == 1).sum()}"
)
print(
    f"removed normal training images: {(removed & (data.y_train == 0)).sum()} "
    f"of {(data.y_train == 0).sum()}"
)

# %%
# Predictions follow scikit-learn's convention: +1 for normal, -1 for
# anomalous. ``decision_function`` is negative for anomalies; its zero is set
# so that 5% of normal images like the training images judged normal (the
# kept ones and the removed ones inside the outer fence), unseen by the flow,
# fall below it (``false_alarm_rate``).
import numpy as np
from sklearn.metrics import confusion_matrix

predicted_anomalous = detector.predict(data.X_test) == -1
print(confusion_matrix(data.y_test, predicted_anomalous, labels=[0, 1]))

# %%
# Scores of the test images
# -------------------------
# The anomaly score is minus ``score_samples``, the flow's negative
# log-likelihood; the detector flags images above the decision threshold.
import matplotlib.pyplot as plt

anomaly_score = -detector.score_samples(data.X_test)
bins = np.histogram_bin_edges(anomaly_score, bins=30)
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.hist(anomaly_score[data.y_test == 0], bins=bins, alpha=0.7, label="normal (zeros)")
ax.hist(anomaly_score[data.y_test == 1], bins=bins, alpha=0.7, label="anomalous")
ax.axvline(-detector.offset_, color="k", linestyle="--", label="decision threshold")
ax.set_xlabel("anomaly score (negative log-likelihood)")
ax.set_ylabel("test images")
ax.set_title(f"MetaRefineDetector, 10% contaminated training set, AUROC {auroc:.3f}")
ax.legend()
plt.show()
