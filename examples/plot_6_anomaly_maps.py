"""
====================================================
Where is the defect? Anomaly maps at the patch level
====================================================

A scratch or a small stain covers a percent or two of an image: pooled into one
vector per image it barely moves the image's score. At the patch level, every
image is a grid of patch vectors and a test patch is scored by its distance to
the nearest training patch and by its likelihood under a flow of the training
patches, so a local defect stands out, and the patch scores form an anomaly map
that shows where it is.

This example trains ``MetaRefineDetector(level="patch")`` on generated brushed
metal in which a fifth of the "good" training images are in fact defective,
then draws its maps over test images with the outline of each true defect.
"""

# %%
# A contaminated training set of generated surfaces
# -------------------------------------------------
# ``make_surfaces`` draws every image as a new piece of the surface, with a
# pixel mask of its defect. ``make_contaminated`` mixes 20% defective images
# into the training set and keeps a balanced test set apart.
import numpy as np

from sklearn_metarefine import MetaRefineDetector, aupro, pixel_auroc, plot_anomaly_maps
from sklearn_metarefine.datasets import make_contaminated, make_surfaces

surfaces = make_surfaces(
    "metal", n_normal=120, n_anomalous=60, image_size=64, random_state=0
)
data = make_contaminated(surfaces.images, surfaces.target, noise=0.2, random_state=0)
test_masks = surfaces.masks[data.test_indices]
print(
    f"{len(data.y_train)} training images, {data.y_train.sum()} of them defective; "
    f"{len(data.y_test)} test images, {data.y_test.sum()} defective"
)

# %%
# Fit the patch-level detector
# ----------------------------
# The memory bank keeps a 10% coreset of the training patches, from which the
# patches that too few other training images show (a defect's) are then dropped.
# Beside it a flow over the patches drops the training images above the fence
# of their held-out scores; each model's scores are standardised by the median
# and IQR of its held-out training scores, and the two are averaged.
detector = MetaRefineDetector(level="patch", image_size=64, random_state=0)
detector.fit(data.X_train)

# %%
# Scores, decisions and maps
# --------------------------
# ``predict`` uses the model's own threshold; report what a quality engineer
# sees: the share of good test parts it rejects, and of defective ones.
from sklearn.metrics import roc_auc_score

flagged = detector.predict(data.X_test) == -1
maps = detector.anomaly_map(data.X_test)
print(f"image AUROC {roc_auc_score(data.y_test, -detector.score_samples(data.X_test)):.3f}")
print(f"pixel AUROC {pixel_auroc(test_masks, maps):.3f}, AUPRO {aupro(test_masks, maps):.3f}")
print(
    f"flags {flagged[data.y_test == 0].mean():.1%} of the good test images and "
    f"{flagged[data.y_test == 1].mean():.1%} of the defective ones"
)

# %%
# The maps over the images
# ------------------------
# Four defective test images and four good ones, every map on one colour scale:
# the true defect is outlined, and a good image's map stays cool.
defective = np.flatnonzero(data.y_test == 1)[:4]
good = np.flatnonzero(data.y_test == 0)[:4]
shown = np.concatenate([defective, good])
titles = [
    f"{'defective' if data.y_test[i] else 'good'}: "
    f"{'flagged' if flagged[i] else 'passed'}"
    for i in shown
]
plot_anomaly_maps(data.X_test[shown], maps[shown], test_masks[shown], titles=titles)
