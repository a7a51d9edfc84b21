"""FlowDetector and MAMLFlowDetector: views, determinism, persistence, errors."""

import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from sklearn_metarefine import FlowDetector, MAMLFlowDetector
from sklearn_metarefine._flows._modules import log_prob
from sklearn_metarefine._flows import DivergenceError
from sklearn_metarefine._flows._nets import check_finite_scores
from sklearn_metarefine._signals import Terminated
from sklearn_metarefine._utils import standardisation

SMALL = dict(n_blocks=2, hidden_size=16, max_epochs=4, device="cpu")
DETECTORS = [FlowDetector, MAMLFlowDetector]


@pytest.fixture
def X():
    return np.random.RandomState(0).normal(size=(120, 6))


@pytest.mark.parametrize("Detector", DETECTORS)
def test_score_is_minus_mean_of_per_view_nll(Detector):
    n_views, d = 3, 4
    X = np.random.RandomState(1).normal(size=(50, n_views * d))
    det = Detector(n_views, random_state=0, **SMALL).fit(X)
    assert det.n_features_per_view_ == d
    # Views are training samples: the standardisation is over all views.
    np.testing.assert_allclose(det.mean_, X.reshape(-1, d).mean(axis=0))

    flow = det.net_.module_
    flow_double = type(flow)(d, n_blocks=2, hidden_size=16, seed=0).double()
    flow_double.load_state_dict(flow.state_dict())
    nll = np.empty((len(X), n_views))
    for v in range(n_views):
        view = (X[:, v * d : (v + 1) * d] - det.mean_) / det.scale_
        with torch.no_grad():
            z, log_det = flow_double(torch.as_tensor(view))
        nll[:, v] = -log_prob(z, log_det).numpy() + np.log(det.scale_).sum()
    np.testing.assert_allclose(det.score_samples(X), -nll.mean(axis=1), rtol=1e-10)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_same_random_state_same_scores(Detector, X):
    a = Detector(random_state=3, **SMALL).fit(X).score_samples(X)
    b = Detector(random_state=3, **SMALL).fit(X).score_samples(X)
    c = Detector(random_state=4, **SMALL).fit(X).score_samples(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_fit_does_not_reseed_the_global_torch_generator(Detector, X):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Detector(random_state=0, **SMALL).fit(X)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_pickle_and_joblib_round_trips_give_identical_scores(Detector, X, tmp_path):
    det = Detector(random_state=0, **SMALL).fit(X)
    expected = det.score_samples(X)
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(det)).score_samples(X), expected
    )
    joblib.dump(det, tmp_path / "det.joblib")
    np.testing.assert_array_equal(
        joblib.load(tmp_path / "det.joblib").score_samples(X), expected
    )


@pytest.mark.parametrize("Detector", DETECTORS)
def test_scores_are_float64_and_signs_follow_sklearn(Detector, X):
    det = Detector(random_state=0, **SMALL).fit(X)
    far = X[:5] + 25.0
    assert det.score_samples(X).dtype == np.float64
    assert det.score_samples(far).max() < det.score_samples(X).min()
    assert np.all(det.predict(far) == -1)
    np.testing.assert_allclose(
        det.decision_function(X), det.score_samples(X) - det.offset_
    )


@pytest.mark.parametrize("Detector", DETECTORS)
def test_warm_start_continues_from_the_fitted_flow(Detector, X):
    det = Detector(random_state=0, warm_epochs=2, **SMALL).fit(X)
    mean, scale, epochs = det.mean_.copy(), det.scale_.copy(), len(det.net_.history)
    before = det.score_samples(X)
    det.set_params(warm_start=True).fit(X[:60])
    assert len(det.net_.history) == epochs + 2
    np.testing.assert_array_equal(det.mean_, mean)
    np.testing.assert_array_equal(det.scale_, scale)
    # Two more epochs move the flow, but from where it was.
    after = det.score_samples(X)
    assert not np.allclose(before, after)
    assert np.corrcoef(before, after)[0, 1] > 0.9
    with pytest.raises(ValueError, match="features"):
        det.fit(X[:, :4])


@pytest.mark.parametrize("max_epochs, warm", [(4, 1), (20, 2), (35, 3)])
def test_warm_epochs_default_to_a_tenth_of_max_epochs(max_epochs, warm, X):
    # warm_epochs=None, documented max(1, max_epochs // 10), sets how long
    # each warm refit of a refinement round trains.
    det = FlowDetector(random_state=0, **{**SMALL, "max_epochs": max_epochs}).fit(X)
    epochs = len(det.net_.history)
    det.set_params(warm_start=True).fit(X[:60])
    assert len(det.net_.history) == epochs + warm


@pytest.mark.parametrize("Detector", DETECTORS)
def test_failed_warm_fit_leaves_the_flow_as_it_was(Detector, X, monkeypatch):
    det = Detector(random_state=0, warm_epochs=3, **SMALL).fit(X)
    twin = pickle.loads(pickle.dumps(det))
    before, epochs = det.score_samples(X), len(det.net_.history)
    batch_size = det.net_.batch_size
    train_step, steps = det.net_.train_step, []

    def interrupted_after_one_step(*args, **kwargs):
        # One optimiser step changes the parameters, then training stops.
        steps.append(train_step(*args, **kwargs))
        raise RuntimeError("training stopped")

    monkeypatch.setattr(det.net_, "train_step", interrupted_after_one_step)
    with pytest.raises(RuntimeError, match="training stopped"):
        det.set_params(warm_start=True).fit(X[:60])
    assert len(steps) == 1
    monkeypatch.undo()
    assert len(det.net_.history) == epochs
    assert det.net_.batch_size == batch_size
    np.testing.assert_array_equal(det.score_samples(X), before)
    # Adam's moments and step count, which a warm fit continues from, too
    state, expected = (d.net_.optimizer_.state_dict()["state"] for d in (det, twin))
    assert state.keys() == expected.keys()
    for key in state:
        for name, value in expected[key].items():
            torch.testing.assert_close(state[key][name], value, rtol=0, atol=0)
    # and it still trains warm from there, as the fit that never failed does
    det.fit(X[:60])
    assert len(det.net_.history) == epochs + 3
    twin.set_params(warm_start=True).fit(X[:60])
    np.testing.assert_array_equal(det.score_samples(X), twin.score_samples(X))


@pytest.mark.parametrize("Detector", DETECTORS)
@pytest.mark.parametrize("change", [{"n_views": 2}, {"n_blocks": 3}, {"hidden_size": 8}])
def test_a_warm_fit_refuses_a_flow_of_another_shape(Detector, X, change):
    # n_views failed with a broadcasting error; n_blocks and hidden_size were
    # ignored, get_params saying one flow and the model holding another.
    det = Detector(random_state=0, **SMALL).fit(X)
    before = det.score_samples(X)
    (name, value), = change.items()
    fitted = det.get_params()[name]
    det.set_params(warm_start=True, **change)
    with pytest.raises(ValueError, match=f"{name}={value} \\(fitted: {fitted}\\)"):
        det.fit(X)
    det.set_params(**{name: fitted})
    np.testing.assert_array_equal(det.score_samples(X), before)
    det.set_params(warm_start=False, **change).fit(X)  # a new flow, reshaped


@pytest.mark.parametrize("Detector", DETECTORS)
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated])
def test_ctrl_c_stops_the_fit(Detector, X, monkeypatch, warm, stop):
    # skorch ends training quietly on KeyboardInterrupt: the fit returned a
    # half-trained flow that passed for a finished one. SIGTERM's Terminated
    # came out as a KeyboardInterrupt (the command said "Interrupted", 130).
    from sklearn_metarefine._flows._nets import _FlowNet

    det = Detector(random_state=0, **SMALL)
    if warm:
        det.fit(X).set_params(warm_start=True)
    train_step, steps = _FlowNet.train_step, []

    def interrupted_after_one_step(self, *args, **kwargs):
        steps.append(train_step(self, *args, **kwargs))
        raise stop

    monkeypatch.setattr(_FlowNet, "train_step", interrupted_after_one_step)
    with pytest.raises(KeyboardInterrupt) as raised:
        det.fit(X)
    assert type(raised.value) is stop
    assert len(steps) == 1


@pytest.mark.parametrize("Detector", DETECTORS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_rejected(Detector, X, bad):
    X = X.copy()
    X[3, 2] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        Detector(**SMALL).fit(X)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_one_sample_is_rejected(Detector, X):
    with pytest.raises(ValueError, match="1 sample"):
        Detector(**SMALL).fit(X[:1])


@pytest.mark.parametrize("Detector", DETECTORS)
def test_wrong_width_at_scoring_is_rejected(Detector, X):
    det = Detector(random_state=0, **SMALL).fit(X)
    with pytest.raises(ValueError, match="6 features"):
        det.score_samples(X[:, :5])


def test_views_must_divide_the_features(X):
    with pytest.raises(ValueError, match="not a multiple of n_views=4"):
        FlowDetector(4, **SMALL).fit(X)
    with pytest.raises(ValueError, match="at least 2 features per view"):
        FlowDetector(6, **SMALL).fit(X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_so(X):
    det = FlowDetector(**{**SMALL, "device": "cuda"})
    with pytest.raises(ValueError, match="CUDA is not available"):
        det.fit(X)
    assert not hasattr(det, "net_")


@pytest.mark.parametrize(
    "det",
    [
        FlowDetector(lr=1e4, random_state=0, **SMALL),
        MAMLFlowDetector(alpha=1e6, random_state=0, **SMALL),
    ],
    ids=["huge-lr", "huge-alpha"],
)
def test_diverging_fit_raises_and_leaves_nothing_fitted(det, X):
    with pytest.raises(DivergenceError, match="diverged"):
        det.fit(X)
    assert not hasattr(det, "net_")
    assert not hasattr(det, "offset_")


def test_verbose_prints_the_epoch_table(X, capsys):
    FlowDetector(verbose=1, random_state=0, **SMALL).fit(X)
    out = capsys.readouterr().out
    assert "train_loss" in out and "epoch" in out


def test_maml_parameters_reach_the_net(X):
    det = MAMLFlowDetector(
        alpha=0.2, beta=3e-4, inner_steps=2, first_order=True, random_state=0, **SMALL
    ).fit(X)
    assert det.net_.alpha == 0.2
    assert det.net_.inner_steps == 2
    assert det.net_.first_order is True
    assert det.net_.optimizer_.param_groups[0]["lr"] == 3e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("Detector", DETECTORS)
def test_cuda_fit_matches_the_cpu_contract(Detector, X):
    det = Detector(**{**SMALL, "device": "cuda"}, random_state=0).fit(X)
    assert next(det.net_.module_.parameters()).is_cuda
    scores = det.score_samples(X)
    assert scores.dtype == np.float64 and np.all(np.isfinite(scores))
    assert det.score_samples(X[:5] + 25.0).max() < scores.min()
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(restored.score_samples(X), scores)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_projection_front_end_is_probabilistic_pca_for_an_untrained_flow(Detector):
    from sklearn.decomposition import PCA

    rng = np.random.RandomState(0)
    X = rng.normal(size=(80, 3)) @ rng.normal(size=(3, 10)) + 0.1 * rng.normal(
        size=(80, 10)
    )
    # A learning rate of 1e-12 leaves the flow at its initial permutation, so
    # the model is exactly probabilistic PCA of the standardised inputs.
    lr = {"lr": 1e-12} if Detector is FlowDetector else {"beta": 1e-12, "alpha": 0.0}
    det = Detector(pca_components=3, random_state=0, **lr, **SMALL).fit(X)
    # scikit-learn's PCA divides variances by n - 1, the detector by n (the
    # maximum-likelihood estimate): fitting it to data shrunk by
    # sqrt((n - 1) / n) gives it the detector's covariance.
    std = (X - det.mean_) / det.scale_
    pca = PCA(n_components=3).fit(np.sqrt((len(X) - 1) / len(X)) * std)
    expected = pca.score_samples(std) - np.log(det.scale_).sum()
    np.testing.assert_allclose(det.score_samples(X), expected, rtol=1e-6)
    assert det.components_.shape == (3, 10)
    assert det.net_.module_.dim == 3


def test_projection_keeps_at_most_the_available_axes(X):
    det = FlowDetector(pca_components=7, random_state=0, **SMALL).fit(X)
    assert det.components_.shape == (6, 6)
    det = FlowDetector(pca_components=7, random_state=0, **SMALL).fit(X[:5])
    assert det.components_.shape == (4, 6)


def test_axes_that_span_the_rows_take_the_residual_from_held_out_rows():
    # 12 rows span 11 directions: 16 axes keep them all and leave the rows no
    # residual. New rows from the same distribution must not score as far out
    # (before, a floored noise variance put them millions of nats away).
    rng = np.random.RandomState(0)
    mixing = rng.normal(size=(40, 40)) / 6 + np.eye(40)
    X, X_new = rng.normal(size=(12, 40)) @ mixing, rng.normal(size=(200, 40)) @ mixing
    det = FlowDetector(pca_components=16, random_state=0, **SMALL).fit(X)
    assert det.components_.shape == (11, 40)
    excess = np.median(det.score_samples(X)) - np.median(det.score_samples(X_new))
    assert excess < X.shape[1]  # under one nat per feature
    # with more rows than axes the residual is the rows' own, as before
    det = FlowDetector(pca_components=4, random_state=0, **SMALL).fit(X)
    std = (X - det.mean_) / det.scale_
    variances = np.linalg.svd(std, compute_uv=False) ** 2 / len(X)
    assert det.noise_variance_ == pytest.approx(variances[4:].sum() / 36)


def test_copies_of_the_rows_leave_the_projection_as_it_was():
    # 10 distinct rows, each given 20 times: the axes that span them span the
    # copies too. Counted by rows, the copies kept 16 axes with a floored
    # residual variance, and new rows scored 1e27 nats below the training ones.
    rng = np.random.RandomState(0)
    X, X_new = rng.normal(size=(10, 32)), rng.normal(size=(200, 32))
    once = FlowDetector(pca_components=16, random_state=0, **SMALL).fit(X)
    copies = FlowDetector(pca_components=16, random_state=0, **SMALL)
    copies.fit(np.repeat(X, 20, axis=0))
    assert once.components_.shape == copies.components_.shape == (9, 32)
    assert copies.noise_variance_ == pytest.approx(once.noise_variance_, rel=0.05)
    gap = np.median(copies.score_samples(X)) - np.median(copies.score_samples(X_new))
    assert gap < X.shape[1]  # under one nat per feature
    # one distinct row: two axes and the floor, no fold without rows
    same = FlowDetector(pca_components=4, random_state=0, **SMALL)
    assert same.fit(np.repeat(X[:1], 6, axis=0)).components_.shape == (2, 32)


def _fitted_attributes(det):
    return {name for name in vars(det) if name.endswith("_")}


@pytest.mark.parametrize("Detector", DETECTORS)
def test_cold_fit_with_non_finite_scores_assigns_nothing(Detector, X, monkeypatch):
    def non_finite(*args, **kwargs):
        return np.full(len(X), np.nan)

    monkeypatch.setattr(
        "sklearn_metarefine._flows._detector.log_likelihood", non_finite
    )
    det = Detector(random_state=0, **SMALL)
    with pytest.raises(DivergenceError, match="NaN or infinite"):
        det.fit(X)
    assert _fitted_attributes(det) == set()
    monkeypatch.undo()
    with pytest.raises(NotFittedError):
        det.score_samples(X)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_diverging_warm_fit_restores_the_previous_flow(Detector, X):
    det = Detector(random_state=0, warm_epochs=3, **SMALL).fit(X)
    before = {name: getattr(det, name) for name in _fitted_attributes(det)}
    scores, epochs = det.score_samples(X), len(det.net_.history)
    # The warm fit keeps the first fit's standardisation, so rows a million
    # times larger give a loss that runs away in the first step.
    # (The error said to lower the learning rate alone.)
    with pytest.raises(DivergenceError, match="diverged.*standard deviations from "
                       "the data of the first fit.*warm_start=False"):
        det.set_params(warm_start=True).fit(X * 1e6)
    assert {name: getattr(det, name) for name in _fitted_attributes(det)}.keys() == (
        before.keys()
    )
    assert det.offset_ == before["offset_"]
    assert det.net_ is before["net_"]
    assert len(det.net_.history) == epochs
    np.testing.assert_array_equal(det.score_samples(X), scores)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_warm_fit_with_non_finite_scores_restores_the_previous_flow(
    Detector, X, monkeypatch
):
    det = Detector(random_state=0, warm_epochs=2, **SMALL).fit(X)
    scores, epochs = det.score_samples(X), len(det.net_.history)
    monkeypatch.setattr(
        "sklearn_metarefine._flows._detector.log_likelihood",
        lambda *args: np.full(len(X), np.inf),
    )
    with pytest.raises(DivergenceError, match="NaN or infinite"):
        det.set_params(warm_start=True).fit(X)
    monkeypatch.undo()
    assert len(det.net_.history) == epochs
    np.testing.assert_array_equal(det.score_samples(X), scores)


def test_constant_features_are_still_recognised():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(50, 3))
    mean, scale = standardisation(np.column_stack([X, np.full(50, 0.1), np.zeros(50)]))
    np.testing.assert_allclose(scale[:3], X.std(axis=0))
    # 0.1 is not exact in binary: the computed spread is rounding, not data.
    np.testing.assert_allclose(scale[3:], [0.1, 1.0])
    np.testing.assert_allclose(mean[3:], [0.1, 0.0])


def test_non_finite_training_scores_blame_overflow_only_for_extreme_values(X):
    extreme = X.copy()
    extreme[0, 0] = 1e300
    with pytest.raises(ValueError, match="1e\\+300 in magnitude.*overflows"):
        check_finite_scores(np.array([np.nan]), extreme, "the learning rate")
    with pytest.raises(DivergenceError, match="diverged. Lower the learning rate"):
        check_finite_scores(np.array([np.nan]), X, "the learning rate")


@pytest.mark.parametrize("estimator", ["FlowDetector", "MAMLFlowDetector"])
def test_divergence_names_the_estimators_own_learning_rates(estimator):
    # MAMLFlowDetector's advice named "the learning rate", a parameter it
    # does not have (its meta learning rate is beta), and not alpha's value.
    from sklearn_metarefine import FlowDetector, MAMLFlowDetector

    X = np.random.RandomState(0).normal(size=(200, 6))
    if estimator == "FlowDetector":
        flow = FlowDetector(lr=1e6)
        advice = r"Lower the learning rate lr \(currently 1000000.0\)"
    else:
        flow = MAMLFlowDetector(alpha=1e3)
        advice = (r"Lower the meta learning rate beta \(currently 0.001\) or the inner "
                  r"learning rate alpha \(currently 1000.0\)")
    flow.set_params(max_epochs=5, n_blocks=2, hidden_size=8, random_state=0)
    with pytest.raises(DivergenceError, match=advice):
        flow.fit(X)


def test_alpha_zero_is_maximum_likelihood_on_whole_batches():
    # Without an inner step there is no support set: the split is irrelevant.
    X = np.random.RandomState(0).normal(size=(200, 4))
    params = {"alpha": 0.0, "n_blocks": 2, "hidden_size": 8, "max_epochs": 2,
              "random_state": 0, "device": "cpu"}
    a = MAMLFlowDetector(support_fraction=0.3, **params).fit(X)
    b = MAMLFlowDetector(support_fraction=0.7, **params).fit(X)
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    maml = MAMLFlowDetector(**{**params, "alpha": 0.01}).fit(X)
    assert not np.allclose(maml.score_samples(X), a.score_samples(X))


def test_an_unknown_device_is_a_value_error_naming_it(X):
    # torch's RuntimeError listed its device types, not the parameter.
    with pytest.raises(ValueError, match="device='tpu' is not a torch device"):
        FlowDetector(**{**SMALL, "device": "tpu"}).fit(X)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_a_fit_inside_inference_mode_trains_as_outside(Detector, X):
    # skorch turns gradients on under no_grad, but nothing did under
    # inference_mode: "element 0 of tensors does not require grad".
    import torch

    params = {**SMALL, "random_state": 0}
    outside = Detector(**params).fit(X).score_samples(X)
    with torch.inference_mode():
        inside = Detector(**params).fit(X)
        np.testing.assert_array_equal(inside.score_samples(X), outside)
        # and a warm fit continues there too
        inside.set_params(warm_start=True).fit(X)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


@pytest.mark.parametrize("Detector", DETECTORS)
@pytest.mark.parametrize("copy", ["deepcopy", "pickle", "model file"])
def test_a_copy_made_inside_inference_mode_trains_warm_as_one_made_outside(
    Detector, copy, X, tmp_path
):
    # The copy's parameters were inference tensors: IQRRefiner's warm refits
    # (which deep-copy the model) failed with "Inference tensors cannot be
    # saved for backward", a loaded model's warm fit with 32,774 characters of
    # "Inplace update to inference tensor".
    import copy as copying

    import torch

    from sklearn_metarefine import load, save

    fitted = Detector(**{**SMALL, "random_state": 0}).fit(X)
    path = tmp_path / "model.metarefine"
    save(fitted, path)
    duplicate = {
        "deepcopy": lambda: copying.deepcopy(fitted),
        "pickle": lambda: pickle.loads(pickle.dumps(fitted)),
        "model file": lambda: load(path),
    }[copy]
    outside = duplicate().set_params(warm_start=True).fit(X).score_samples(X)
    with torch.inference_mode():
        inside = duplicate()
    inside.set_params(warm_start=True).fit(X)
    np.testing.assert_array_equal(inside.score_samples(X), outside)


def test_a_warm_refinement_inside_inference_mode_is_the_one_outside(X):
    import torch

    from sklearn_metarefine import IQRRefiner

    def refined():
        flow = MAMLFlowDetector(**{**SMALL, "random_state": 0})
        return IQRRefiner(flow, refit="warm", random_state=0).fit(X)

    outside = refined()
    with torch.inference_mode():
        inside = refined()
    np.testing.assert_array_equal(inside.inlier_mask_, outside.inlier_mask_)
    np.testing.assert_array_equal(inside.score_samples(X), outside.score_samples(X))


def test_a_cuda_device_index_the_machine_lacks_is_refused(monkeypatch):
    # cuda:3 on a machine with one GPU passed the check.
    import torch

    from sklearn_metarefine._torch_utils import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"device='cuda:3' was requested but this "
                       r"machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("device", ["meta", "mps", "xpu"])
def test_a_device_torch_cannot_compute_on_here_is_refused_naming_it(X, device):
    # Only CUDA was checked: "meta" failed deep in torch ("Cannot copy out of
    # meta tensor"), "mps" and "xpu" with torch's build errors.
    import torch

    from sklearn_metarefine._torch_utils import _available, resolve_device

    if _available(device):  # a machine that has one takes it
        assert resolve_device(device) == torch.device(device)
        return
    with pytest.raises(ValueError, match=f"device='{device}' is not available to "
                       "this package on this machine"):
        FlowDetector(**{**SMALL, "device": device}).fit(X)


@pytest.mark.parametrize("pca_components", [None, 2])
@pytest.mark.parametrize("Detector", DETECTORS)
def test_rows_beyond_float64_once_standardised_score_minus_inf(
    Detector, pca_components
):
    # 1e306 over a training scale of 1e-3 overflowed to inf, and inf - inf in
    # the net gave NaN, which predict read as an inlier.
    X = np.random.RandomState(0).normal(size=(60, 4)) * 1e-3
    det = Detector(random_state=0, pca_components=pca_components, **SMALL).fit(X)
    far = np.array([[1e300, 0, 0, 0], [1e306, 0, 0, 0], [0, -1e307, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warning
        scores = det.score_samples(far)
    np.testing.assert_array_equal(scores, -np.inf)
    np.testing.assert_array_equal(det.predict(far), -1)
    assert np.isfinite(det.score_samples(X)).all()


@pytest.mark.parametrize("Detector", DETECTORS)
def test_a_numpy_integer_batch_size_trains(Detector, X):
    # ParameterGrid over np.array([16, 64]) gives np.int64: torch's sampler
    # refused it ("batch_size should be a positive integer value").
    det = Detector(random_state=0, **{**SMALL, "batch_size": np.int64(16)}).fit(X)
    reference = Detector(random_state=0, **{**SMALL, "batch_size": 16}).fit(X)
    np.testing.assert_array_equal(det.score_samples(X), reference.score_samples(X))
    det.set_params(warm_start=True, batch_size=np.int64(8)).fit(X)


@pytest.mark.parametrize("Detector", DETECTORS)
def test_a_warm_fit_trains_with_the_current_settings(Detector, X):
    # A warm fit kept the learning rate, weight decay and MAML settings of the
    # first fit, whatever set_params said since.
    det = Detector(random_state=0, warm_epochs=1, **SMALL).fit(X)
    optimizer = det.net_.optimizer_
    lr = "lr" if Detector is FlowDetector else "beta"
    change = {lr: 0.02, "weight_decay": 0.1}
    if Detector is MAMLFlowDetector:
        change.update(alpha=0.05, inner_steps=2, first_order=True)
    det.set_params(warm_start=True, **change).fit(X[:60])
    group = det.net_.optimizer_.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.02, 0.1)
    assert det.net_.optimizer_ is optimizer  # in place: Adam keeps its moments
    assert det.net_.get_params()["optimizer__lr"] == 0.02
    if Detector is MAMLFlowDetector:
        params = det.net_.get_params()
        assert (params["alpha"], params["inner_steps"], params["first_order"]) == (
            0.05, 2, True,
        )  # fmt: skip


@pytest.mark.parametrize("Detector", DETECTORS)
def test_a_warm_fit_with_unchanged_settings_trains_as_before(Detector, X):
    runs = []
    for _ in range(2):
        det = Detector(random_state=0, warm_epochs=2, **SMALL).fit(X)
        if runs:  # set the settings the fit already has
            det.set_params(weight_decay=det.weight_decay, verbose=det.verbose)
        runs.append(det.set_params(warm_start=True).fit(X[:60]).score_samples(X))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("Detector", DETECTORS)
def test_a_failed_warm_fit_restores_the_training_settings(Detector, X, monkeypatch):
    det = Detector(random_state=0, warm_epochs=2, **SMALL).fit(X)
    lr = det.net_.optimizer_.param_groups[0]["lr"]

    def fails(*args, **kwargs):
        raise RuntimeError("training stopped")

    monkeypatch.setattr(det.net_, "train_step", fails)
    with pytest.raises(RuntimeError, match="training stopped"):
        det.set_params(warm_start=True, weight_decay=0.3, verbose=0).fit(X[:60])
    assert det.net_.optimizer_.param_groups[0]["lr"] == lr
    assert det.net_.optimizer_.param_groups[0]["weight_decay"] == 1e-5
    assert det.net_.get_params()["optimizer__weight_decay"] == 1e-5


@pytest.mark.parametrize(
    ("fitted", "requested", "message"),
    [(None, 4, "pca_components=4 \\(fitted: None\\)"),
     (4, None, "pca_components=None \\(fitted: 4\\)"),
     (4, 3, "pca_components=3 \\(fitted: 4\\)")],
)  # fmt: skip
def test_a_warm_fit_refuses_other_principal_axes(X, fitted, requested, message):
    # The warm fit kept the fitted axes whatever pca_components said.
    det = FlowDetector(random_state=0, pca_components=fitted, **SMALL).fit(X)
    det.set_params(warm_start=True, pca_components=requested)
    with pytest.raises(ValueError, match=message):
        det.fit(X)


def test_a_warm_fit_keeps_axes_that_few_rows_limited(X):
    # 6 rows leave 5 axes of the 8 asked for: the same request continues.
    det = FlowDetector(random_state=0, pca_components=8, batch_size=6, **SMALL)
    det.fit(X[:6])
    assert len(det.components_) == 5
    det.set_params(warm_start=True).fit(X[:6])


@pytest.mark.parametrize("Detector", DETECTORS)
def test_scores_of_many_rows_do_not_depend_on_the_call(Detector, X):
    # More rows than one scoring batch of the net (4,096): a row at a batch's
    # edge must get its own score, whatever else is scored with it.
    det = Detector(random_state=0, **SMALL).fit(X)
    new = np.random.RandomState(1).normal(size=(9000, 6))
    in_pieces = np.concatenate(
        [det.score_samples(new[start : start + 1000]) for start in range(0, 9000, 1000)]
    )
    np.testing.assert_allclose(det.score_samples(new), in_pieces, rtol=1e-12)


def test_held_out_residual_variance_is_that_of_rows_outside_each_fold():
    # The residual variance of axes that span the rows: each of 5 folds of
    # rows projected on the axes of the others, the squared residual per row
    # and per discarded direction, measured from the other folds' centre.
    from sklearn_metarefine._flows._projection import fit_projection

    rng = np.random.RandomState(0)
    std = rng.normal(size=(12, 40)) @ (rng.normal(size=(40, 40)) / 6 + np.eye(40))
    std = (std - std.mean(0)) / std.std(0)
    axes, _, noise = fit_projection(std, 16)
    assert len(axes) == 11
    squared = 0.0
    for fold in range(5):
        out = np.arange(12) % 5 == fold
        centre = std[~out].mean(0)
        fold_axes = np.linalg.svd(std[~out] - centre, full_matrices=False)[2][:11]
        rows = std[out] - centre
        squared += np.sum((rows - rows @ fold_axes.T @ fold_axes) ** 2)
    assert noise == pytest.approx(squared / (12 * (40 - 11)), rel=1e-9)


def test_views_count_distinct_rows_for_the_axes():
    # 6 objects of 2 distinct views are 12 distinct rows: 11 axes span them,
    # not the 5 that counting objects would allow.
    X = np.random.RandomState(0).normal(size=(6, 2 * 20))
    det = FlowDetector(n_views=2, pca_components=16, random_state=0, **SMALL).fit(X)
    assert det.components_.shape == (11, 20)


def test_a_finite_row_whose_likelihood_breaks_down_scores_minus_inf(X):
    # Finite once standardised, but far enough out that the net's arithmetic
    # gives NaN, which predict would read as normal.
    det = FlowDetector(random_state=0, **SMALL).fit(X[:, :4])
    far = [[1.017632787270713e175, 2.8098038610437736e193,
            1.2507144377197344e306, 2.0601670193222455e281]]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert det.score_samples(far)[0] == -np.inf
        assert det.predict(far)[0] == -1


def test_the_flows_permutations_are_random_and_fixed_by_the_seed():
    from sklearn_metarefine._flows._modules import Flow

    def permutations(seed):
        flow = Flow(6, n_blocks=4, seed=seed)
        return [m.perm.tolist() for m in flow.modules() if hasattr(m, "perm")]

    first = permutations(0)
    assert len(first) == 4
    assert any(perm != list(range(6)) for perm in first)
    assert permutations(0) == first and permutations(1) != first
