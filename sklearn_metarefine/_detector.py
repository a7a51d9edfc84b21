"""MetaRefineDetector: pretrained features, a MAML flow and IQR refinement,
or, at the patch level, a memory bank of patches cleaned of defects."""

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from ._features import PretrainedFeatures
from ._flows import MAMLFlowDetector
from ._patch import PatchCoreDetector
from ._patch._pair import fit_pair, pair_scores
from ._refine import IQRRefiner
from ._sizes import FewHeldOutWarning, smallest_fit, warn_if_held_out_from_few
from ._samples import distinct_training_images
from ._scores import contamination_offset
from ._utils import draw_seed, forget, restored_on_failure, shown_as, silenced

# What the detector forwards to each component, beyond n_views, device,
# verbose and random_state, which every component gets in its own way.
_FEATURE_PARAMS = ("weights", "image_size", "n_scales", "input_shape")
_FLOW_PARAMS = (
    "alpha", "beta", "inner_steps", "first_order", "pca_components", "n_blocks",
    "hidden_size", "max_epochs", "warm_epochs", "batch_size",
)  # fmt: skip
# What sets the fewest training images a fit of the refinement sees.
_SMALLEST_FIT = (
    "start", "start_fraction", "min_samples", "cv", "fence_scores", "contamination",
)  # fmt: skip
_REFINER_PARAMS = (
    "k", "max_iter", "min_samples", "start", "start_fraction", "start_neighbors",
    "refit", "fence_scores", "cv", "stop", "contamination", "false_alarm_rate",
)  # fmt: skip
# The fitted attributes of one level, which a fit at the other deletes.
_FITTED = {
    "image": (
        "detector_", "flow_detector_", "score_centers_", "score_scales_",
        "train_scores_",
    ),
    "patch": (
        "pipeline_", "refiner_", "removed_at_iter_", "thresholds_",
        "termination_condition_",
    ),
}  # fmt: skip


def _forwarded_constraints():
    """Each forwarded parameter's constraint, taken from the component it reaches.

    The components are the one source of truth: the detector accepts exactly
    what they accept (and ``backbone=None``, which skips the feature step).
    """
    features = PretrainedFeatures._parameter_constraints
    flow = MAMLFlowDetector._parameter_constraints
    refiner = IQRRefiner._parameter_constraints
    patch = PatchCoreDetector._parameter_constraints
    return {
        "coreset_fraction": patch["coreset_fraction"],
        "grid_shape": patch["grid_shape"],
        "backbone": [*features["backbone"], None],
        "memory": features["memory"],
        "n_views": flow["n_views"],
        "device": flow["device"],
        **{name: features[name] for name in _FEATURE_PARAMS},
        **{name: flow[name] for name in _FLOW_PARAMS},
        **{name: refiner[name] for name in _REFINER_PARAMS},
    }


class MetaRefineDetector(OutlierMixin, BaseEstimator):
    """Anomaly detector robust to defective images in its training set.

    The method of Aqeel et al. [1]_ as one estimator, with this package's
    additions to its refinement: images are embedded by a frozen pretrained
    CNN at several scales (:class:`PretrainedFeatures`), a normalizing flow
    (:class:`MAMLFlowDetector`) scores them by likelihood, and
    :class:`IQRRefiner` drops the training images whose anomaly score lies
    above the fence ``Q3 + k * IQR`` and refits on the rest. By default the
    refinement starts from a trimmed core of the training images, fences
    held-out scores, and sets the decision boundary for a 5% false-alarm rate
    on normal images the flow did not see, like the training images it judges
    normal; the paper's own procedure is reachable by parameters (see Notes).

    With ``level="patch"`` it is the robust detector of local defects
    instead, with :meth:`anomaly_map`: a :class:`PatchCoreDetector` whose
    memory bank of training patches is cleaned, patch by patch, of what too
    few training images show (``bank_cleaning="patches"``), paired with a
    :class:`PatchFlowDetector` that drops the training images above the fence
    of its held-out scores. Each one's scores are standardised by the median
    and IQR of its held-out training scores, and the two are averaged.

    Parameters
    ----------
    backbone : str, torch.nn.Module or None, default="efficientnet_lite0"
        The CNN of :class:`PretrainedFeatures` (of :class:`PatchFeatures` at
        the patch level). The default has ImageNet weights that ship with the
        package and need no network. None skips the CNN: ``X`` is then a 2-D
        array of feature vectors (at the patch level, each row one image's
        grid of patch vectors, see ``grid_shape``).
    level : {"image", "patch"}, default="image"
        ``"image"``: one pooled vector per image, the meta-learned flow and
        the refinement of training images (the paper). ``"patch"``: the
        cleaned patch memory bank and a patch flow, for defects that cover a
        small part of the image; it uses ``backbone``, ``weights``, ``image_size``,
        ``input_shape``, ``grid_shape``, ``coreset_fraction``, ``k``,
        ``contamination``, ``memory``, ``device``, ``random_state`` and
        ``verbose``, and ignores the other parameters.
    weights : "DEFAULT", None or path-like, default="DEFAULT"
        Weights of the backbone, see :class:`PretrainedFeatures`.
    image_size : int or (int, int), default=224
        Side (or ``(height, width)``) every image is resized to before the
        first scale. The paper uses 448.
    n_scales : int, default=3
        Resolutions the CNN sees, each half the previous one.
    n_views : int, default=1
        Views (rotations) per image; the flow averages its negative
        log-likelihood over them. The paper uses several.
    input_shape : tuple of int, default=None
        Shape of one image when ``X`` holds flattened images.
    k : float, default=1.5
        IQR multiplier of the refinement fence.
    max_iter : int or None, default=10
        Most refinement rounds; None iterates until a round changes nothing.
    min_samples : int or float, default=0.5
        Fewest training images the refinement may remove down to (a count,
        or a fraction of the training set). With a trimmed start (the
        default) the core it grows from may be smaller, and then a round is
        not applied where it would shrink the kept set below both this and
        its current size (200 Gaussian rows in 4 dimensions: 77 kept).
    start : {"neighbors", "trimmed", "full"}, default="neighbors"
        ``"neighbors"`` and ``"trimmed"`` first find a core of the
        ``start_fraction`` most normal-looking training images and grow the
        training set from it with the fence; ``"neighbors"`` starts the search
        for the core from the images with the closest ``start_neighbors``-th
        neighbour, ``"trimmed"`` from a flow fitted on every image. ``"full"``
        is the paper's procedure, which starts from every image. See Notes.
    start_fraction : float, default=0.25
        Size of the trimmed core, as a fraction of the training set: half of
        the smallest share of normal images the default is meant for (50%),
        so that the core stays normal at that contamination.
    start_neighbors : int or float, default=0.1
        The neighbour that ranks the images for the first core of
        ``start="neighbors"``, as a count or a fraction of the training set.
    refit : {"cold", "warm", "auto"}, default="cold"
        How the flow is refitted after each round: from scratch, or warm from
        the current (meta-learned) parameters as in the paper. ``"auto"`` is
        warm here (the flow continues its fit), as in :class:`IQRRefiner`.
    fence_scores : {"oof", "in_sample"}, default="oof"
        Score the training images for the fence with flows that did not see
        them (``cv`` folds), or, as the paper, with the flow fitted on them.
    cv : int, default=5
        Folds of the held-out scores.
    stop : {"clean_tail", "no_change"}, default="clean_tail"
        Also stop before a round that only trims the tail a clean training
        set has beyond the fence (see :class:`IQRRefiner`), or only when a
        round removes nothing, as the paper.
    alpha : float, default=0.0
        MAML inner learning rate. 0 turns MAML off: the flow is trained by
        maximum likelihood, with Adam at learning rate ``beta``. The default,
        because MAML measured no gain on the bundled digits benchmark (see
        :doc:`/user_guide/method`); the paper's meta-learning needs
        ``alpha > 0`` (e.g. 0.01).
    beta : float, default=1e-3
        MAML meta learning rate (Adam's learning rate for the outer update).
    inner_steps : int, default=1
        MAML inner gradient steps per task.
    first_order : bool, default=False
        First-order MAML.
    pca_components : int or None, default=16
        Principal axes the flow models (see :class:`FlowDetector`); None lets
        the flow model every feature, as in the paper, which needs far more
        training images than features. On small training sets the flow models
        fewer axes: at most two fewer than the training images of the
        smallest fit of the refinement (a fold of the trimmed core's held-out
        scores), so that the residual beyond the axes is measured in every
        fit. With the other defaults, 16 axes from about 90 training images
        on, 8 with 50, 4 with 30.
    n_blocks : int, default=4
        Coupling blocks of the flow (the paper: 8).
    hidden_size : int, default=32
        Width of the coupling subnets (the paper: 2048).
    max_epochs : int, default=20
        Epochs of each fit (the paper: 240).
    warm_epochs : int or None, default=None
        Epochs of each warm refit after a removal.
    batch_size : int, default=96
        Rows per MAML task (the paper: 96).
    grid_shape : (int, int) or None, default=None
        Patch level with ``backbone=None`` only: the ``(height, width)`` of
        the grid of patch vectors in each row of ``X``, as
        :class:`PatchFeatures` lays it out (see :class:`PatchCoreDetector`).
        None treats each row as one patch.
    coreset_fraction : float, default=0.1
        Fraction of the training patches kept in the memory bank (patch level
        only).
    contamination : "auto" or float, default="auto"
        "auto" sets the decision boundary so that :meth:`predict` flags a
        fraction ``false_alarm_rate`` of normal images that the flow did not
        see, like the training images judged normal (the quantile of the
        held-out scores of the kept images and of the removed ones inside the
        outer fence, see :class:`IQRRefiner`); a float is scikit-learn's
        meaning, the fraction of the training images to flag. At the patch
        level "auto" is the fence of the training images' held-out scores
        (``train_scores_``), grown from their lower half, and a float the
        fraction of those scores above the threshold.
    false_alarm_rate : float, default=0.05
        The false-alarm rate that ``contamination="auto"`` aims at (image
        level only: the patch level's boundary is a fence, see above).
    memory : None, str or joblib.Memory, default=None
        Caches the CNN features of the images (keyed on their pixels or
        files' contents), so that a grid search over the detector's
        parameters runs the CNN once per fold. The cache is joblib's store of
        pickles, and loading a pickle can run any code: use a folder only you
        can write to, never a shared or world-writable one.
    device : {"auto", "cpu", "cuda"}, str or torch.device, default="auto"
        Where the CNN and the flow run.
    random_state : int, RandomState instance or None, default=None
        Seeds the flow and the refinement.
    verbose : int, default=0
        Progress of the CNN, refinement rounds and flow epochs, or patch steps.

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        The fitted ``[features,] refiner`` pipeline (image level).
    refiner_ : IQRRefiner
        Its last step (image level).
    detector_ : PatchCoreDetector
        The fitted memory bank (patch level).
    flow_detector_ : PatchFlowDetector
        The fitted patch flow, on the bank's patches (patch level).
    score_centers_, score_scales_ : ndarray of shape (2,)
        Median and IQR of the held-out training scores of the bank and the
        flow, which standardise their scores (patch level).
    train_scores_ : ndarray of shape (n_samples,)
        Standardised anomaly score of each training image, held out of both
        (patch level): the scores the threshold is set on.
    inlier_mask_ : ndarray of shape (n_samples,), dtype bool
        Training images kept by the refinement (at the patch level, those the
        flow kept; the bank cleans patches, not images).
    removed_at_iter_ : ndarray of shape (n_samples,), dtype int
        Round in which each training image was dropped, -1 if kept, 0 if
        outside the trimmed core and never re-admitted (image level).
    thresholds_ : ndarray of shape (n_iter_,)
        Fence of each round (image level).
    n_iter_ : int
        Refinement rounds run (1 at the patch level, which cleans once).
    termination_condition_ : str
        Why the refinement stopped (image level).
    offset_ : float
        ``decision_function = score_samples - offset_``.
    n_features_in_ : int
        Number of features seen during fit (only with ``backbone=None``).
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit (only with ``backbone=None`` and
        string column names).

    See Also
    --------
    IQRRefiner : The refinement around any outlier detector.
    MAMLFlowDetector : The meta-learned flow alone.
    PretrainedFeatures : The CNN embedding alone.
    PatchCoreDetector : The patch memory bank of ``level="patch"``.
    PatchFlowDetector : Its patch flow.

    Notes
    -----
    :meth:`score_samples` is higher for more normal images. For AUROC with
    scikit-learn's ``"roc_auc"`` scorer, which treats the larger label as
    positive and scores with :meth:`decision_function`, label normal images 1
    and anomalous ones -1 (or 0). The datasets of this package label anomalous
    images 1: convert with ``np.where(y == 1, -1, 1)``.

    Why a trimmed start: the fence ``Q3 + k * IQR`` of a training set with
    more than about a quarter of anomalies has its third quartile among the
    anomalies and cannot reach them; the paper's procedure then removes next
    to nothing. The core (a quarter of the images) comes from the images with
    the closest ``start_neighbors``-th neighbour, which a tight group of
    fewer similar anomalies cannot have, refined by concentration steps; the
    first round re-admits the images outside it that the core's flow puts
    inside the fence of held-out scores, and later rounds only remove. On a
    clean training set the images least like the core stay out (about a
    quarter of them on the digits benchmark), and so does a mode of the
    normal class that has no image in the core. Of 200 samples of a 4-D
    Gaussian (``backbone=None``) it kept 59 to 77 and flagged 42% to 58% of
    new ones (``start="full"``: 5%): the core is the middle of the
    distribution, and a flow fitted on it scores the rest like outliers; use
    ``start="full"`` for a set known to be nearly clean. Cold refits keep the
    flow's projection from being frozen on the contaminated set. Why held-out
    scores: a flow scores the images it was fitted on as more normal than
    images it has not seen, so in-sample scores re-admit nothing and give a
    boundary that unseen normal images cross (see :class:`IQRRefiner`).

    Training images that repeat others (CNN features within 1e-4 of their
    norm, as rounding varies with the batch; exactly with ``backbone=None``)
    are fitted once, with a warning: a core of copies of one image would fit
    a flow of that image alone. A repeat shares its first copy's decision in
    ``inlier_mask_`` and ``removed_at_iter_``.

    The paper's procedure: ``start="full", refit="warm",
    fence_scores="in_sample", stop="no_change", max_iter=None`` and MAML with
    ``alpha=0.01`` (the default here is 0). The paper's
    configuration adds ``backbone="alexnet", image_size=448, n_views=4,
    pca_components=None, n_blocks=8, hidden_size=2048, max_epochs=240`` and
    its 2e-4 learning rate as ``beta``; it needs a GPU. The benchmark's
    ``docs/_static/paper_config.json`` sets exactly these.

    References
    ----------
    .. [1] M. Aqeel, S. Sharifi, M. Cristani, F. Setti, "Meta Learning-Driven
       Iterative Refinement for Robust Anomaly Detection in Industrial
       Inspection", ECCV 2024 Workshops.
    .. [2] M. Rudolph, B. Wandt, B. Rosenhahn, "Same Same But DifferNet:
       Semi-Supervised Defect Detection with Normalizing Flows", WACV 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import MetaRefineDetector
    >>> rng = np.random.RandomState(0)
    >>> X = np.vstack([rng.normal(size=(95, 4)), rng.normal(8, 1, size=(5, 4))])
    >>> det = MetaRefineDetector(backbone=None, pca_components=None, n_blocks=2,
    ...                          hidden_size=16, max_epochs=5, random_state=0)
    >>> det.fit(X).inlier_mask_[-5:]
    array([False, False, False, False, False])
    >>> det.predict([[0.0, 0.0, 0.0, 0.0], [8.0, 8.0, 8.0, 8.0]])
    array([ 1, -1])
    """

    _parameter_constraints = {
        **_forwarded_constraints(),
        "level": [StrOptions({"image", "patch"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        level="image",
        weights="DEFAULT",
        image_size=224,
        n_scales=3,
        n_views=1,
        input_shape=None,
        k=1.5,
        max_iter=10,
        min_samples=0.5,
        start="neighbors",
        start_fraction=0.25,
        start_neighbors=0.1,
        refit="cold",
        fence_scores="oof",
        cv=5,
        stop="clean_tail",
        alpha=0.0,
        beta=1e-3,
        inner_steps=1,
        first_order=False,
        pca_components=16,
        n_blocks=4,
        hidden_size=32,
        max_epochs=20,
        warm_epochs=None,
        batch_size=96,
        grid_shape=None,
        coreset_fraction=0.1,
        contamination="auto",
        false_alarm_rate=0.05,
        memory=None,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.level = level
        self.weights = weights
        self.image_size = image_size
        self.n_scales = n_scales
        self.n_views = n_views
        self.input_shape = input_shape
        self.k = k
        self.max_iter = max_iter
        self.min_samples = min_samples
        self.start = start
        self.start_fraction = start_fraction
        self.start_neighbors = start_neighbors
        self.refit = refit
        self.fence_scores = fence_scores
        self.cv = cv
        self.stop = stop
        self.alpha = alpha
        self.beta = beta
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.pca_components = pca_components
        self.n_blocks = n_blocks
        self.hidden_size = hidden_size
        self.max_epochs = max_epochs
        self.warm_epochs = warm_epochs
        self.batch_size = batch_size
        self.grid_shape = grid_shape
        self.coreset_fraction = coreset_fraction
        self.contamination = contamination
        self.false_alarm_rate = false_alarm_rate
        self.memory = memory
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=False)
    @restored_on_failure
    def fit(self, X, y=None):
        """Embed the training images, fit the flow and refine the training set.

        Parameters
        ----------
        X : array-like of images, list of image files or PIL images, or \
array-like of shape (n_samples, n_features) when ``backbone=None``
            Training images, possibly contaminated with anomalies.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted detector.
        """
        if self.backbone is None:
            X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        seed = draw_seed(check_random_state(self.random_state))
        if self.level == "patch":
            fit_pair(self, X, seed)
            self.n_iter_ = 1  # the bank's patches, and the flow's images, cleaned once
            return self._forget_other_fits()
        pipeline = self._build_pipeline(seed)
        features = X
        for _, step in pipeline.steps[:-1]:
            features = step.fit_transform(features)
        near = self.backbone is not None  # the CNN's rounding varies by batch
        distinct, copy_of = distinct_training_images(features, near)
        refiner = pipeline.steps[-1][1]
        self._size_flow(refiner.estimator, len(distinct))
        name, n = type(self).__name__, len(distinct)
        if self.verbose and n < len(features):  # what the rounds' counts count
            print(f"{name}: {len(features)} training images, {n} distinct: the "
                  "rounds below count distinct images")
        warn_if_held_out_from_few(refiner, n, name=name, unit="images")
        with silenced(FewHeldOutWarning):  # the refiner's would say it of samples
            refiner.fit(features[distinct])
        self.pipeline_, self.refiner_ = pipeline, refiner
        self.inlier_mask_ = refiner.inlier_mask_
        self.removed_at_iter_ = refiner.removed_at_iter_
        self.offset_ = refiner.offset_
        if len(distinct) < len(features):
            self.inlier_mask_ = self.inlier_mask_[copy_of]
            self.removed_at_iter_ = self.removed_at_iter_[copy_of]
            if self.contamination != "auto":  # a fraction of every training image
                scores = refiner.score_samples(features)
                offset = contamination_offset(scores, self.contamination)
                self.offset_ = refiner.offset_ = offset  # pipeline_ predicts alike
        for attribute in ("thresholds_", "n_iter_", "termination_condition_"):
            setattr(self, attribute, getattr(refiner, attribute))
        return self._forget_other_fits()

    def _forget_other_fits(self):
        """Delete what a fit at the other level, or of raw features, left."""
        forget(self, *_FITTED[self.level])
        if self.backbone is not None:
            forget(self, "n_features_in_", "feature_names_in_")
        return self

    def score_samples(self, X):
        """Minus the anomaly score: higher for more normal images.

        Parameters
        ----------
        X : images or array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
        """
        features = self._features(X)
        if self.level == "patch":
            return pair_scores(self, features)
        return self.pipeline_[-1].score_samples(features)

    def decision_function(self, X):
        """Score shifted by ``offset_``: negative for anomalies.

        Parameters
        ----------
        X : images or array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Label each image +1 (normal) or -1 (anomalous).

        Parameters
        ----------
        X : images or array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)

    @available_if(lambda self: self.level == "patch")
    def anomaly_map(self, X):
        """Where each image looks anomalous (only with ``level="patch"``).

        Parameters
        ----------
        X : images of one size (height, width), or array-like of shape \
(n_samples, n_features_in_)

        Returns
        -------
        maps : ndarray of shape (n_samples, height, width), dtype float32
            Higher is more anomalous: per patch, the mean of the bank's
            distance and the flow's negative log-likelihood, each
            standardised as the image scores are, brought to the image's
            resolution and smoothed as :meth:`PatchCoreDetector.anomaly_map`
            does (with ``backbone=None``, the grid itself).
        """
        return self._scores_and_maps(X)[1]

    @available_if(lambda self: self.level == "patch")
    def _scores_and_maps(self, X):
        """``score_samples(X)`` and ``anomaly_map(X)`` from one embedding of ``X``."""
        with shown_as(self):
            features = self._features(X)  # checks that it is fitted first
        return pair_scores(self, features, maps=True)

    def _features(self, X):
        check_is_fitted(self)
        if self.backbone is None:
            return validate_data(self, X, dtype=np.float64, reset=False)
        if self.level == "patch":
            return X
        with shown_as(self):  # a pandas output too
            return np.asarray(self.pipeline_[:-1].transform(X))

    def _size_flow(self, flow, n_samples):
        """Fewer principal axes for a refinement of few training images."""
        if self.pca_components is not None:
            # A fit with no more images than axes plus one measures no
            # residual of its own, and its held-out scores land on another
            # scale than the final model's: the smallest fit keeps two images
            # to spare. Images, not rows: the views of an image are alike.
            images = smallest_fit(
                n_samples, **{name: getattr(self, name) for name in _SMALLEST_FIT}
            )
            flow.set_params(pca_components=max(2, min(self.pca_components, images - 2)))

    def _build_pipeline(self, seed):
        flow = MAMLFlowDetector(
            self.n_views,
            device=self.device,
            verbose=max(0, self.verbose - 1),
            **{name: getattr(self, name) for name in _FLOW_PARAMS},
        )
        refiner = IQRRefiner(
            flow,
            random_state=seed,
            verbose=self.verbose,
            **{name: getattr(self, name) for name in _REFINER_PARAMS},
        )
        steps = [("refiner", refiner)]
        if self.backbone is not None:
            features = PretrainedFeatures(
                self.backbone,
                n_views=self.n_views,
                device=self.device,
                memory=self.memory,
                verbose=self.verbose,
                random_state=seed,
                **{name: getattr(self, name) for name in _FEATURE_PARAMS},
            )
            steps.insert(0, ("features", features))
        # Arrays between its steps, whatever transform_output is set to. No
        # Pipeline memory: scikit-learn's keys image files on their paths.
        return Pipeline(steps).set_output(transform="default")
