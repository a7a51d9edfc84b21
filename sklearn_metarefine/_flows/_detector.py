"""Normalizing-flow outlier detectors with a scikit-learn face.

The estimators are plain ``OutlierMixin, BaseEstimator`` classes with flat
hyperparameters; ``fit`` builds a skorch ``NeuralNet`` (stored as ``net_``) that
does the training (see :mod:`._nets`).
"""

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch.callbacks import ProgressBar

from .._scores import contamination_offset, iqr_fence
from .._torch_utils import resolve_device, torch_training
from .._utils import draw_seed, restored_on_failure, standardisation, standardise
from ._modules import Flow
from ._nets import (
    DivergenceError,
    FlowNLLLoss,
    _FlowNet,
    _MAMLFlowNet,
    _undoable_warm_fit,
    check_finite_scores,
    check_same_flow,
    continue_with,
    far_from,
    training_rows,
)
from ._projection import fit_projection, project
from ._scoring import log_likelihood


class FlowDetector(OutlierMixin, BaseEstimator):
    """Outlier detector scoring samples by the likelihood of a normalizing flow.

    The flow is DifferNet's: ``n_blocks`` blocks of a fixed random permutation
    and a GLOW affine coupling with soft-clamped log-scales, trained by maximum
    likelihood on standardised inputs. This is the paper's "Vanilla" model.

    Parameters
    ----------
    n_views : int, default=1
        Number of views per object. ``X`` of shape ``(n, n_views * d)`` holds
        the views of each object side by side (view-major); training treats
        each view as a sample and :meth:`score_samples` averages the
        log-likelihood over an object's views.
    pca_components : int or None, default=None
        If set, the flow models the whitened coordinates of the standardised
        inputs along their ``pca_components`` leading principal axes (at most
        the number of features per view, and of distinct training rows minus
        one; at least 2), and the remaining directions are modelled as
        isotropic Gaussian noise (probabilistic PCA). Its variance is that of
        the training rows in those directions or, when the axes span the rows
        (no more distinct rows than axes plus one), that of held-out rows:
        five folds of them, each projected on the axes fitted to the others
        (copies of a row in its fold). The likelihood stays a
        density over the whole input. Use it when a view has many more
        features than there are training samples: a flow on hundreds of
        dimensions fitted to a few hundred samples memorises them. None
        models every feature. Under :class:`~sklearn_metarefine.IQRRefiner`,
        whose held-out scores come from fits on part of the training set,
        keep it at least two below the rows of its smallest fit: a fit that
        leaves its rows little residual scores new rows on another scale than
        the final model does (:class:`~sklearn_metarefine.MetaRefineDetector`
        sizes it so itself).
    n_blocks : int, default=8
        Permutation + coupling blocks.
    hidden_size : int, default=64
        Width of the coupling subnets. DifferNet uses 2048.
    n_hidden_layers : int, default=1
        Hidden layers per coupling subnet.
    clamp : float, default=3.0
        Bound of the soft clamp ``clamp * 0.636 * atan(s / clamp)``.
    lr : float, default=1e-3
        Adam learning rate. DifferNet uses 2e-4.
    weight_decay : float, default=1e-5
    batch_size : int, default=96
    max_epochs : int, default=30
        Epochs of a fresh fit. The paper trains 240.
    warm_epochs : int or None, default=None
        Epochs of a warm-started fit (``warm_start=True`` on a fitted
        detector). None means ``max(1, max_epochs // 10)``: after the
        removal of a few training samples the flow starts close to its
        optimum.
    contamination : "auto" or float, default="auto"
        Sets ``offset_``. A float is the expected fraction of outliers in
        the training set: the offset is that percentile of the training
        scores. "auto" uses Tukey's fence ``Q3 + 1.5 * IQR`` of the training
        anomaly scores. These are in-sample scores, lower than a new normal
        sample's, and the more so the fewer the training rows against the
        features: on 200-dimensional Gaussian data, with
        ``pca_components=16`` and the other settings' defaults, the fence
        flagged 79%, 44% and 13% of new samples after fits on 120, 200 and
        400 rows (at most 1% of the training rows); with the default
        ``pca_components=None``, all of them.
        :class:`~sklearn_metarefine.IQRRefiner` and
        :class:`~sklearn_metarefine.MetaRefineDetector` set theirs on
        held-out scores.
    warm_start : bool, default=False
        When True and the detector is fitted, ``fit`` continues training the
        current flow for ``warm_epochs`` epochs instead of starting afresh,
        with the current training settings (learning rate, weight decay,
        MAML's, ``verbose``) and the fitted input standardisation and
        principal axes. A changed shape of the flow (``n_views``,
        ``n_blocks``, ``hidden_size``, ``n_hidden_layers``, ``clamp``) is
        refused, and so is a ``pca_components`` of None, or of fewer axes,
        where other axes were fitted; a larger one keeps the fitted axes
        (it cannot be told from axes that few training rows limited).
    device : {"auto", "cpu", "cuda"}, str or torch.device, default="auto"
        Where the flow is trained and evaluated; "auto" picks CUDA when it
        is available.
    random_state : int, RandomState instance or None, default=None
        Seeds the permutations, the initialisation and the batch order.
    verbose : int, default=0
        0 is silent, 1 prints skorch's table of epochs, 2 also shows a
        progress bar over batches.

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The fitted skorch net; ``net_.module_`` is the flow.
    mean_ : ndarray of shape (n_features_per_view_,)
        Per-feature mean used to standardise the inputs.
    scale_ : ndarray of shape (n_features_per_view_,)
        Per-feature standard deviation used to standardise the inputs; a
        feature constant in training gets its magnitude (1 if all zeros).
    components_ : ndarray of shape (pca_components, n_features_per_view_) or None
        Principal axes of the standardised inputs (None without
        ``pca_components``).
    explained_variance_ : ndarray of shape (pca_components,) or None
        Variance along each principal axis.
    noise_variance_ : float or None
        Variance of the residual noise in the discarded directions.
    n_features_per_view_ : int
        Dimension of one view.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    MAMLFlowDetector : The same flow trained with MAML.
    IQRRefiner : Iterative removal of training outliers around any detector.

    Notes
    -----
    :meth:`score_samples` is the log-density of the input in the original
    feature space (the standardisation's Jacobian included), computed in
    float64. Training runs in float32.

    References
    ----------
    .. [1] M. Rudolph, B. Wandt, B. Rosenhahn, "Same Same But DifferNet:
       Semi-Supervised Defect Detection with Normalizing Flows", WACV 2021.
    .. [2] M. Aqeel, S. Sharifi, M. Cristani, F. Setti, "Meta Learning-Driven
       Iterative Refinement for Robust Anomaly Detection in Industrial
       Inspection", ECCV 2024 Workshops.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import FlowDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(200, 4))
    >>> det = FlowDetector(n_blocks=2, hidden_size=16, max_epochs=5,
    ...                    random_state=0).fit(X)
    >>> det.predict([[0.0, 0.0, 0.0, 0.0], [8.0, 8.0, 8.0, 8.0]])
    array([ 1, -1])
    """

    _parameter_constraints = {
        "n_views": [Interval(numbers.Integral, 1, None, closed="left")],
        "pca_components": [Interval(numbers.Integral, 2, None, closed="left"), None],
        "n_blocks": [Interval(numbers.Integral, 1, None, closed="left")],
        "hidden_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_hidden_layers": [Interval(numbers.Integral, 0, None, closed="left")],
        "clamp": [Interval(numbers.Real, 0, None, closed="neither")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "warm_epochs": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "contamination": [
            StrOptions({"auto"}),
            Interval(numbers.Real, 0, 0.5, closed="right"),
        ],
        "warm_start": ["boolean"],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    _net_class = _FlowNet
    # warm_start continues training the current flow, so IQRRefiner can refit
    # it warm (scikit-learn's warm_start means other things elsewhere).
    _warm_start_continues = True

    def __init__(
        self,
        n_views=1,
        *,
        pca_components=None,
        n_blocks=8,
        hidden_size=64,
        n_hidden_layers=1,
        clamp=3.0,
        lr=1e-3,
        weight_decay=1e-5,
        batch_size=96,
        max_epochs=30,
        warm_epochs=None,
        contamination="auto",
        warm_start=False,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.n_views = n_views
        self.pca_components = pca_components
        self.n_blocks = n_blocks
        self.hidden_size = hidden_size
        self.n_hidden_layers = n_hidden_layers
        self.clamp = clamp
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.warm_epochs = warm_epochs
        self.contamination = contamination
        self.warm_start = warm_start
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    @restored_on_failure
    def fit(self, X, y=None):
        """Fit the flow to the rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_views * n_features_per_view)
            Training data, assumed mostly normal.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted detector.
        """
        # A failed fit leaves the detector as it was (restored_on_failure);
        # a warm fit also undoes the training of the net it continues.
        return self._fit(X, self.warm_start and hasattr(self, "net_"))

    def _fit(self, X, warm):
        X = validate_data(
            self, X, dtype=np.float64, ensure_min_samples=2, reset=not warm
        )
        rows = self._views_as_rows(X)
        device = resolve_device(self.device)
        seed = draw_seed(check_random_state(self.random_state))
        if warm:
            check_same_flow(self)
            net, mean, scale, projection = (
                self.net_,
                self.mean_,
                self.scale_,
                self._projection(),
            )
        else:
            mean, scale = standardisation(rows)
            projection = (
                (None, None, None)
                if self.pca_components is None
                else fit_projection(
                    standardise(rows, mean, scale), self.pca_components, self.n_views
                )
            )
            dim = rows.shape[1] if projection[0] is None else len(projection[0])
            net = self._build_net(dim, len(rows), device, seed)
        coords, _ = project(standardise(rows, mean, scale), *projection)
        train_rows = training_rows(coords, X)

        if warm:
            # Train the fitted net in place, able to undo it if training fails.
            # (A deep copy of a skorch net goes through pickle and can cost
            # more than the few warm epochs it protects.)
            restore = _undoable_warm_fit(net)
            try:
                self._train_warm(net, train_rows, seed, device)
                scores = log_likelihood(
                    net.module_, X, mean, scale, projection, self.n_views
                )
                check_finite_scores(scores, X, net.rates())
            except DivergenceError as error:
                restore()
                far = far_from(standardise(rows, mean, scale))
                raise DivergenceError(f"{error} {far}".rstrip()) from None
            except BaseException:
                restore()
                raise
        else:
            with torch_training(seed, device):
                net.fit(train_rows)
            scores = log_likelihood(
                net.module_, X, mean, scale, projection, self.n_views
            )
            check_finite_scores(scores, X, net.rates())

        self.net_, self.mean_, self.scale_ = net, mean, scale
        (self.components_, self.explained_variance_, self.noise_variance_) = projection
        self.n_features_per_view_ = rows.shape[1]
        if self.contamination == "auto":
            self.offset_ = -iqr_fence(-scores, k=1.5)
        else:
            self.offset_ = contamination_offset(scores, self.contamination)
        return self

    def _train_warm(self, net, train_rows, seed, device):
        # Settings changed by set_params since the fit apply to the epochs
        # that continue it (the optimiser's in place: Adam keeps its moments).
        continue_with(net, {**self._net_kwargs(), "verbose": int(self.verbose > 0)})
        # The refit set can be smaller than the first one; a batch larger
        # than it would be dropped whole by MAML's drop_last.
        net.set_params(batch_size=int(min(self.batch_size, len(train_rows))))
        with torch_training(seed, device):
            net.partial_fit(train_rows, epochs=self._warm_epochs())

    def score_samples(self, X):
        """Log-likelihood of each sample, averaged over its views.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
            Higher means more normal.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._score(X)

    def decision_function(self, X):
        """Score shifted by ``offset_``: negative for outliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Label each sample +1 (inlier) or -1 (outlier).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def _views_as_rows(self, X):
        n_features = X.shape[1]
        if n_features % self.n_views:
            raise ValueError(
                f"X has {n_features} features, which is not a multiple of "
                f"n_views={self.n_views}: each row must hold n_views views of "
                "equal width side by side."
            )
        per_view = n_features // self.n_views
        if per_view < 2:
            raise ValueError(
                f"Each view has {per_view} feature(s); a coupling flow needs at "
                "least 2 features per view."
            )
        return X.reshape(-1, per_view)

    def _warm_epochs(self):
        if self.warm_epochs is not None:
            return self.warm_epochs
        return max(1, self.max_epochs // 10)

    def _net_kwargs(self):
        return {
            "optimizer__lr": self.lr,
            "optimizer__weight_decay": self.weight_decay,
        }

    def _build_net(self, dim, n_rows, device, seed):
        callbacks = [ProgressBar()] if self.verbose >= 2 else []
        return self._net_class(
            module=Flow,
            module__dim=dim,
            module__n_blocks=self.n_blocks,
            module__hidden_size=self.hidden_size,
            module__n_hidden_layers=self.n_hidden_layers,
            module__clamp=self.clamp,
            module__seed=seed,
            criterion=FlowNLLLoss,
            optimizer=torch.optim.Adam,
            batch_size=int(min(self.batch_size, n_rows)),  # numpy ints: torch refuses
            max_epochs=self.max_epochs,
            train_split=None,
            iterator_train__shuffle=True,
            callbacks=callbacks,
            device=str(device),
            verbose=int(self.verbose > 0),
            **self._net_kwargs(),
        )

    def _score(self, X):
        return log_likelihood(
            self.net_.module_,
            X,
            self.mean_,
            self.scale_,
            self._projection(),
            self.n_views,
        )

    def _projection(self):
        return self.components_, self.explained_variance_, self.noise_variance_


class MAMLFlowDetector(FlowDetector):
    """Normalizing-flow outlier detector trained with MAML.

    The flow of :class:`FlowDetector`, trained with Model-Agnostic
    Meta-Learning: each batch is a task, split into a support set S and a
    query set Q; the inner step adapts the parameters on S,
    ``theta' = theta - alpha * grad L(S, theta)`` (eq. 1 of [2]_), and the
    outer step moves ``theta`` along ``grad L(Q, theta')`` with Adam at learning
    rate ``beta`` (eq. 2). The meta-learned parameters are an initialisation
    that adapts in a few epochs, which makes warm refits (``warm_start``) after
    the removal of training outliers cheap.

    Parameters
    ----------
    n_views : int, default=1
        Number of views per object, see :class:`FlowDetector`.
    alpha : float, default=0.01
        Inner (task-adaptation) learning rate of the plain gradient step.
        ``alpha=0`` turns MAML off: each batch is then one maximum-likelihood
        step on all its rows (as in :class:`FlowDetector` with ``lr=beta``,
        except that an incomplete last batch is dropped).
    beta : float, default=1e-3
        Meta learning rate: Adam's learning rate for the outer update.
    inner_steps : int, default=1
        Inner gradient steps per task.
    first_order : bool, default=False
        Use first-order MAML (do not differentiate through the inner step):
        cheaper in time and memory for big flows.
    support_fraction : float, default=0.5
        Fraction of each task's batch used as the support set; the rest is
        the query set.
    pca_components, n_blocks, hidden_size, n_hidden_layers, clamp, weight_decay, \
batch_size, max_epochs, warm_epochs, contamination, warm_start, device, random_state, \
verbose
        As in :class:`FlowDetector`.

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The fitted skorch net; ``net_.module_`` is the flow.
    mean_ : ndarray of shape (n_features_per_view_,)
        Per-feature mean used to standardise the inputs.
    scale_ : ndarray of shape (n_features_per_view_,)
        Per-feature standard deviation used to standardise the inputs; a
        feature constant in training gets its magnitude (1 if all zeros).
    components_ : ndarray of shape (pca_components, n_features_per_view_) or None
        Principal axes of the standardised inputs (None without
        ``pca_components``).
    explained_variance_ : ndarray of shape (pca_components,) or None
        Variance along each principal axis.
    noise_variance_ : float or None
        Variance of the residual noise in the discarded directions.
    n_features_per_view_ : int
        Dimension of one view.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    FlowDetector : The same flow trained by plain maximum likelihood.
    MetaRefineDetector : Features, this detector and iterative refinement.

    References
    ----------
    .. [1] C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for
       Fast Adaptation of Deep Networks", ICML 2017.
    .. [2] M. Aqeel, S. Sharifi, M. Cristani, F. Setti, "Meta Learning-Driven
       Iterative Refinement for Robust Anomaly Detection in Industrial
       Inspection", ECCV 2024 Workshops.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_metarefine import MAMLFlowDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(200, 4))
    >>> det = MAMLFlowDetector(n_blocks=2, hidden_size=16, max_epochs=5,
    ...                        random_state=0).fit(X)
    >>> det.predict([[0.0, 0.0, 0.0, 0.0], [8.0, 8.0, 8.0, 8.0]])
    array([ 1, -1])
    """

    _parameter_constraints = {
        **{
            name: constraint
            for name, constraint in FlowDetector._parameter_constraints.items()
            if name != "lr"
        },
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "beta": [Interval(numbers.Real, 0, None, closed="neither")],
        "inner_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "first_order": ["boolean"],
        "support_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
    }

    _net_class = _MAMLFlowNet

    def __init__(
        self,
        n_views=1,
        *,
        alpha=0.01,
        beta=1e-3,
        inner_steps=1,
        first_order=False,
        support_fraction=0.5,
        pca_components=None,
        n_blocks=8,
        hidden_size=64,
        n_hidden_layers=1,
        clamp=3.0,
        weight_decay=1e-5,
        batch_size=96,
        max_epochs=30,
        warm_epochs=None,
        contamination="auto",
        warm_start=False,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.n_views = n_views
        self.alpha = alpha
        self.beta = beta
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.support_fraction = support_fraction
        self.pca_components = pca_components
        self.n_blocks = n_blocks
        self.hidden_size = hidden_size
        self.n_hidden_layers = n_hidden_layers
        self.clamp = clamp
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.warm_epochs = warm_epochs
        self.contamination = contamination
        self.warm_start = warm_start
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _net_kwargs(self):
        return {
            "optimizer__lr": self.beta,
            "optimizer__weight_decay": self.weight_decay,
            "alpha": self.alpha,
            "inner_steps": self.inner_steps,
            "first_order": self.first_order,
            "support_fraction": self.support_fraction,
            "iterator_train__drop_last": True,
        }
