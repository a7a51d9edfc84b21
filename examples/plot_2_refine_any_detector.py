"""
=====================
Refining any detector
=====================

:class:`~sklearn_metarefine.IQRRefiner` is a meta-estimator: it wraps any
outlier detector, fits it, removes the training samples whose anomaly score
lies above the fence ``Q3 + k * IQR`` of held-out scores, and refits on the
rest until a round changes nothing or only trims the tail a clean set has. Here it refines scikit-learn's
:class:`~sklearn.ensemble.IsolationForest` and PyOD's k-nearest-neighbours
detector on CNN features of contaminated digits, and compares each with the
bare detector.

PyOD scores abnormality (its ``decision_function`` is higher for outliers)
where scikit-learn scores normality; the refiner reads both and always answers
in scikit-learn's convention: ``score_samples`` higher for more normal
samples, ``predict`` +1 / -1.
"""

# %%
# Features of a contaminated training set
# ---------------------------------------
# 20% of the training images are anomalies (digits other than 0).
# :class:`~sklearn_metarefine.PretrainedFeatures` embeds the images with a
# frozen ImageNet CNN whose weights ship with the package (no download).
import numpy as np
from pyod.models.knn import KNN
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from sklearn_metarefine import IQRRefiner, PretrainedFeatures
from sklearn_metarefine.datasets import load_digits_anomaly, make_contaminated

digits = load_digits_anomaly(normal_digit=0)
data = make_contaminated(digits.images, digits.target, noise=0.2, random_state=0)

features = PretrainedFeatures("efficientnet_lite0", image_size=32, n_scales=2)
X_train = features.fit_transform(data.X_train)
X_test = features.transform(data.X_test)
print(
    f"{X_train.shape[0]} training images, {data.y_train.sum()} of them anomalous; "
    f"{X_train.shape[1]} features each"
)

# %%
# Bare and refined detectors
# --------------------------
# The refiner clones the detector it wraps, so the bare detector and the
# refined one are fitted independently.
isolation_forest = IsolationForest(random_state=0)
knn = KNN(n_neighbors=5)
detectors = {
    "IsolationForest": isolation_forest,
    "IQRRefiner(IsolationForest)": IQRRefiner(isolation_forest, random_state=0),
    "PyOD KNN": knn,
    "IQRRefiner(PyOD KNN)": IQRRefiner(knn, random_state=0),
}


def anomaly_score(detector, X):
    """Higher for more anomalous samples, whoever made the detector."""
    if isinstance(detector, KNN):
        return detector.decision_function(X)  # PyOD: higher = more abnormal
    return -detector.score_samples(X)  # scikit-learn: higher = more normal


results = {}
for name, detector in detectors.items():
    detector.fit(X_train)
    auroc = roc_auc_score(data.y_test, anomaly_score(detector, X_test))
    if isinstance(detector, IQRRefiner):
        removed = ~detector.inlier_mask_
    else:
        removed = np.zeros(len(X_train), dtype=bool)
    bad = int((removed & (data.y_train == 1)).sum())
    good = int((removed & (data.y_train == 0)).sum())
    results[name] = auroc, bad, good
    print(
        f"{name:28s} AUROC {auroc:.3f}   removed {bad:2d} anomalous and "
        f"{good:2d} normal training images"
    )

# %%
# The refiner answers in scikit-learn's sign convention whichever detector it
# wraps: +1 for normal, -1 for anomalous.
refined_knn = detectors["IQRRefiner(PyOD KNN)"]
print("predicted:", refined_knn.predict(X_test[:12]))
print("truth:    ", 1 - 2 * data.y_test[:12])

# %%
# Compare
# -------
import matplotlib.pyplot as plt

names = list(results)
aurocs = [results[name][0] for name in names]
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
left.barh(names, aurocs, color=["tab:gray", "tab:blue"] * 2)
left.set_xlim(min(aurocs) - 0.02, 1.0)
left.invert_yaxis()
left.set_xlabel("test AUROC")
left.set_title("20% contaminated training set")

refined = [name for name in names if name.startswith("IQRRefiner")]
position = np.arange(len(refined))
right.bar(
    position - 0.2,
    [results[n][1] for n in refined],
    0.4,
    label="anomalous",
    color="tab:red",
)
right.bar(
    position + 0.2,
    [results[n][2] for n in refined],
    0.4,
    label="normal",
    color="tab:green",
)
right.axhline(
    data.y_train.sum(),
    color="tab:red",
    linestyle=":",
    label="anomalies in the training set",
)
right.set_xticks(position, ["IsolationForest", "PyOD KNN"])
right.set_ylabel("training images removed")
right.set_title("What the refiner removed")
right.legend(fontsize="small", loc="center right")
plt.show()

# %%
# When anomalies are many
# -----------------------
# The fence flags scores that are outliers *among the training scores*. Once
# anomalies make up a large share of the training set they are no longer
# outliers of it: Q3 and the IQR are computed partly on anomalies, the fence
# moves up, and nothing may be removed. Two remedies: a smaller ``k``, or a
# trimmed start, which first fits on the ``start_fraction`` of the training
# samples that score most normal and grows the kept set from there
# (``start="neighbors"`` looks for those samples from the ones with the
# closest neighbours, ``start="trimmed"`` from a fit on every sample).
noisy = make_contaminated(digits.images, digits.target, noise=0.3, random_state=0)
X_noisy = features.transform(noisy.X_train)
X_noisy_test = features.transform(noisy.X_test)
for params in [{}, {"k": 1.0}, {"start": "trimmed"}, {"start": "neighbors"}]:
    refiner = IQRRefiner(IsolationForest(), random_state=0, **params).fit(X_noisy)
    removed = ~refiner.inlier_mask_
    auroc = roc_auc_score(noisy.y_test, -refiner.score_samples(X_noisy_test))
    print(
        f"30% noise, IQRRefiner(IsolationForest(), {params}): AUROC {auroc:.3f}, "
        f"removed {(removed & (noisy.y_train == 1)).sum()} of "
        f"{noisy.y_train.sum()} anomalous and {(removed & (noisy.y_train == 0)).sum()} "
        "normal training images"
    )
