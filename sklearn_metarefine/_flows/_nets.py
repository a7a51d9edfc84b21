"""skorch nets that train a flow: maximum likelihood, or one MAML task per batch.

Maximum-likelihood training is skorch's own train step; MAML replaces the
train step and nothing else. Both refuse to go on once the loss has run away.
"""

import copy

import numpy as np
import torch
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_tensor
from torch import nn

from ._maml import maml_loss, split_task
from ._modules import differnet_loss

# On standardised inputs the untrained flow (the identity) has a loss of about
# 0.5 per dimension; a training loss this large only comes from an optimisation
# that has run away, even while it is still finite.
_DIVERGED_LOSS = 1e4

# Squares of larger values overflow float64: a log-likelihood that is not
# finite on such data is an overflow, not a failed optimisation.
_EXTREME = 1e150


class DivergenceError(FloatingPointError):
    """Raised when a flow's training loss stops being finite."""


def overflow_message(X):
    """Why data with extreme values cannot be fitted, and what to do instead."""
    return (
        f"X holds values as large as {np.abs(X).max():.3g} in magnitude: the "
        "flow's arithmetic overflows on them (float32 training, float64 "
        "scoring). This is not a learning-rate problem; rescale or transform "
        "the features (e.g. np.log1p of their magnitude), or drop the samples "
        "with extreme values."
    )


def training_rows(coords, X):
    """The flow's float32 training rows, refusing what float32 cannot hold."""
    with np.errstate(over="ignore", under="ignore"):
        rows = coords.astype(np.float32)
    if not np.isfinite(rows).all():
        raise ValueError(overflow_message(X))
    return rows


def check_finite_scores(scores, X, rates):
    """Raise unless the training data's log-likelihoods are all finite;
    ``rates`` names the learning rates to lower (:meth:`_FlowNet.rates`)."""
    if np.all(np.isfinite(scores)):
        return
    if np.abs(X).max() > _EXTREME:
        raise ValueError(overflow_message(X))
    raise DivergenceError(
        "The fitted flow gives NaN or infinite log-likelihoods on its "
        f"training data: the optimisation diverged. Lower {rates}."
    )


class FlowNLLLoss(nn.Module):
    """skorch criterion: DifferNet's loss of the flow output; targets are ignored."""

    def forward(self, y_pred, y_true=None):
        return differnet_loss(*y_pred)


class _TrainingInterrupted(BaseException):
    """Ctrl-C during training, carried past skorch, which would swallow it
    (``args[0]``: the interrupt, re-raised as it was)."""


class _FlowNet(NeuralNet):
    """skorch net for unsupervised flow training that refuses to diverge.

    skorch ends training quietly on Ctrl-C and returns the half-trained net;
    a detector fitted on it would pass for a finished one. Here the interrupt
    stops the fit.
    """

    def __setstate__(self, state):
        # A copy or an unpickling inside torch.inference_mode() would make the
        # module's parameters inference tensors, which no later fit can train
        # (IQRRefiner deep-copies a model before refitting it warm).
        with torch.inference_mode(False):
            super().__setstate__(state)

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt as interrupt:
            raise _TrainingInterrupted(interrupt) from None

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        try:
            return super().partial_fit(X, y, classes, **fit_params)
        except _TrainingInterrupted as carried:
            raise carried.args[0] from None

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if training:
            self._check_not_diverged(loss)
        return loss

    def rates(self):
        """The detector's learning rates, named as its parameters."""
        return f"the learning rate lr (currently {self._lr()!r})"

    def _lr(self):
        return self.optimizer_.param_groups[0]["lr"]

    def _check_not_diverged(self, loss):
        if not torch.isfinite(loss) or loss.item() > _DIVERGED_LOSS:
            epoch = len(self.history)
            raise DivergenceError(
                f"The flow's training loss became {loss.item():.4g} in "
                f"epoch {epoch}: the optimisation diverged. Lower {self.rates()}, "
                "or standardise features with extreme values."
            )


class _MAMLFlowNet(_FlowNet):
    """skorch net whose train step is one MAML task per batch.

    The optimiser step skorch performs after ``train_step_single`` is the outer
    (meta) update, so ``lr`` here is the meta learning rate beta.
    """

    def __init__(
        self,
        *args,
        alpha=0.01,
        inner_steps=1,
        first_order=False,
        support_fraction=0.5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.support_fraction = support_fraction

    def rates(self):
        return (
            f"the meta learning rate beta (currently {self._lr()!r}) or "
            f"the inner learning rate alpha (currently {self.alpha!r})"
        )

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, _ = unpack_data(batch)
        rows = to_tensor(Xi, self.device)
        if self.alpha == 0:
            # The inner step would change nothing: the meta-objective is then
            # the loss of the whole batch, i.e. maximum likelihood, without
            # setting half of the batch aside as a support set.
            loss = self.criterion_(self.module_(rows))
            self._check_not_diverged(loss)
            loss.backward()
            return {"loss": loss, "y_pred": None}
        if rows.shape[0] < 2:  # only batch_size=1: MAML drops a short last batch
            raise ValueError(
                f"MAML (alpha={self.alpha}) splits each batch into a support and a "
                f"query set, which needs at least 2 rows; got batch_size="
                f"{self.batch_size}. Use batch_size >= 2, or alpha=0."
            )
        support, query = split_task(rows, self.support_fraction)
        loss = maml_loss(
            self.module_,
            support,
            query,
            self.criterion_,
            alpha=self.alpha,
            n_steps=self.inner_steps,
            first_order=self.first_order,
        )
        self._check_not_diverged(loss)
        loss.backward()
        return {"loss": loss, "y_pred": None}


def _undoable_warm_fit(net):
    """Record what continued training changes in ``net``; return its undo.

    The module's parameters and buffers, the optimizer's state (Adam's
    moments), the epoch history and the settings a warm fit sets
    (:func:`continue_with`, the batch size).
    """
    module = {name: t.detach().clone() for name, t in net.module_.state_dict().items()}
    optimizer = copy.deepcopy(net.optimizer_.state_dict())
    history = copy.deepcopy(net.history)
    settings = {
        name: getattr(net, name) for name in _CONTINUED_SETTINGS if hasattr(net, name)
    }

    def restore():
        net.module_.load_state_dict(module)
        net.optimizer_.load_state_dict(optimizer)
        net.history = history
        continue_with(net, settings)

    return restore


# The net's settings a warm fit may change: the training settings of the
# detectors (their _net_kwargs), the batch size and the verbosity.
_CONTINUED_SETTINGS = (
    "optimizer__lr",
    "optimizer__weight_decay",
    "alpha",
    "inner_steps",
    "first_order",
    "support_fraction",
    "iterator_train__drop_last",
    "batch_size",
    "verbose",
)


def continue_with(net, settings):
    """Set those of ``settings`` that differ from a fitted ``net``'s.

    The optimiser's settings change in its parameter groups, keeping its
    state (skorch's virtual parameters), and on the net, so that its
    ``get_params`` says what it trains with. Settings equal to the net's
    are left alone: a warm fit with unchanged settings trains exactly as
    before.
    """
    changed = {
        name: value
        for name, value in settings.items()
        if getattr(net, name, None) != value
    }
    if changed:
        net.set_params(**changed)
        optimizer = {
            name: value
            for name, value in changed.items()
            if name.startswith("optimizer__")
        }
        vars(net).update(optimizer)


# Standardised values beyond this are far from the data a flow was fitted on
# (a Gaussian reaches 10 once in 1e23 draws).
_FAR = 100.0


def far_from(std_rows):
    """Why a warm fit may diverge whatever the learning rate: its rows,
    standardised as the first fit's, lie far from them; "" if they do not."""
    largest = float(np.max(np.abs(std_rows), initial=0.0))
    if largest <= _FAR:
        return ""
    return (
        f"The rows lie up to {largest:.3g} standard deviations from the data of "
        "the first fit, whose standardisation a warm fit keeps: fit them with "
        "warm_start=False."
    )


def check_same_flow(detector):
    """Refuse a warm fit after set_params changed the flow's shape: the
    fitted flow cannot become another one by training."""
    fitted = {
        "n_views": detector.n_features_in_ // detector.n_features_per_view_,
        **{
            name: getattr(detector.net_, f"module__{name}")
            for name in ("n_blocks", "hidden_size", "n_hidden_layers", "clamp")
        },
    }
    # The fitted principal axes: fewer than pca_components may come from few
    # training rows, so only a request for none, for some where none were
    # fitted, or for fewer than were fitted is known to have changed.
    axes = None if detector.components_ is None else len(detector.components_)
    requested = detector.pca_components
    if (requested is None) != (axes is None) or (
        axes is not None
        and axes > max(2, min(requested, detector.n_features_per_view_))
    ):
        fitted["pca_components"] = axes
    changed = [
        f"{name}={getattr(detector, name)!r} (fitted: {value!r})"
        for name, value in fitted.items()
        if getattr(detector, name) != value
    ]
    if changed:
        raise ValueError(
            f"warm_start=True continues the fitted flow, but {', '.join(changed)} "
            "changed since it was fitted. Fit with warm_start=False for a new flow."
        )
