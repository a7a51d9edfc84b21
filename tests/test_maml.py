"""The MAML meta-gradient against a hand computation."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from sklearn_metarefine import MAMLFlowDetector
from sklearn_metarefine._flows._modules import Flow, differnet_loss
from sklearn_metarefine._flows._nets import _MAMLFlowNet
from sklearn_metarefine._flows._maml import maml_loss, split_task


def _loss(out):
    return differnet_loss(*out)


def _hand_meta_gradients(flow, support, query, alpha):
    """MAML's meta-gradient from its definition, with an explicit Hessian.

    With L_S, L_Q the support and query losses as functions of the flattened
    parameters theta: theta' = theta - alpha * grad L_S(theta), and
    d L_Q(theta') / d theta = (I - alpha * H_S(theta)) grad L_Q(theta').
    The first-order approximation drops the Hessian term.
    """
    names = [name for name, _ in flow.named_parameters()]
    shapes = [p.shape for _, p in flow.named_parameters()]
    sizes = [p.numel() for _, p in flow.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in flow.named_parameters()])

    def unflatten(vector):
        chunks = torch.split(vector, sizes)
        return {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}

    def loss_on(data):
        return lambda vector: _loss(functional_call(flow, unflatten(vector), (data,)))

    grad_support = torch.func.grad(loss_on(support))(theta)
    hessian_support = torch.func.hessian(loss_on(support))(theta)
    adapted = theta - alpha * grad_support
    grad_query = torch.func.grad(loss_on(query))(adapted)
    identity = torch.eye(theta.numel(), dtype=theta.dtype)
    second_order = (identity - alpha * hessian_support) @ grad_query
    return unflatten(second_order), unflatten(grad_query)


def _tiny_flow(seed=0):
    torch.manual_seed(seed)
    flow = Flow(3, n_blocks=2, hidden_size=4, seed=seed).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 0.3)
    return flow


def test_maml_loss_gradient_equals_hand_computation():
    flow = _tiny_flow()
    batch = torch.randn(12, 3, dtype=torch.float64)
    support, query = split_task(batch, 0.5)
    alpha = 0.5
    expected_second, expected_first = _hand_meta_gradients(flow, support, query, alpha)

    grads = {}
    for first_order in (False, True):
        flow.zero_grad()
        maml_loss(
            flow, support, query, _loss, alpha=alpha, first_order=first_order
        ).backward()
        grads[first_order] = {n: p.grad.clone() for n, p in flow.named_parameters()}

    for name in expected_second:
        torch.testing.assert_close(grads[False][name], expected_second[name])
        torch.testing.assert_close(grads[True][name], expected_first[name])
    difference = max(
        (grads[False][n] - grads[True][n]).abs().max().item() for n in expected_first
    )
    assert difference > 1e-3


def test_split_task_covers_the_batch_with_two_non_empty_parts():
    batch = torch.arange(10.0).reshape(5, 2)
    support, query = split_task(batch, 0.5)
    assert len(support) and len(query)
    torch.testing.assert_close(torch.cat([support, query]), batch)
    support, query = split_task(batch[:2], 0.99)
    assert len(support) == len(query) == 1
    with pytest.raises(ValueError, match="at least 2 rows"):
        split_task(batch[:1], 0.5)


@pytest.mark.parametrize("first_order", [False, True])
def test_detector_train_step_leaves_the_meta_gradient(monkeypatch, first_order):
    """One skorch training step of the detector, checked against the definition."""
    seen = {}
    original = _MAMLFlowNet.train_step_single

    def recording_step(net, batch, **fit_params):
        seen["params"] = {
            n: p.detach().clone() for n, p in net.module_.named_parameters()
        }
        seen["batch"] = batch[0].detach().clone()
        step = original(net, batch, **fit_params)
        seen["grads"] = {n: p.grad.clone() for n, p in net.module_.named_parameters()}
        seen["module"] = net.module_
        return step

    monkeypatch.setattr(_MAMLFlowNet, "train_step_single", recording_step)
    X = np.random.RandomState(0).normal(size=(16, 3))
    MAMLFlowDetector(
        n_blocks=2,
        hidden_size=4,
        alpha=0.5,
        max_epochs=1,
        batch_size=16,
        first_order=first_order,
        device="cpu",
        random_state=0,
    ).fit(X)

    flow = seen["module"]
    flow.load_state_dict(seen["params"], strict=False)
    flow = flow.double()
    batch = seen["batch"].double()
    support, query = batch[:8], batch[8:]
    second, first = _hand_meta_gradients(flow, support, query, 0.5)
    expected = first if first_order else second
    for name, grad in seen["grads"].items():
        torch.testing.assert_close(grad.double(), expected[name], atol=1e-5, rtol=1e-3)
    other = second if first_order else first
    assert max((expected[n] - other[n]).abs().max().item() for n in expected) > 1e-3


def test_maml_with_batches_of_one_row_names_batch_size():
    # The error spoke of "a batch of 1" and named no parameter.
    X = np.random.RandomState(0).normal(size=(12, 3))
    detector = MAMLFlowDetector(batch_size=1, alpha=0.01, max_epochs=1, device="cpu")
    with pytest.raises(ValueError, match=r"batch_size=1\. Use batch_size >= 2, or alpha=0"):
        detector.fit(X)


def _fit_maml(X, **params):
    settings = dict(n_blocks=2, hidden_size=8, max_epochs=2, alpha=0.5, batch_size=16)
    settings.update(params)
    return MAMLFlowDetector(device="cpu", random_state=0, **settings).fit(X)


def test_maml_trains_on_fewer_rows_than_batch_size():
    # Without the batch cut to the rows, the one short batch is dropped and
    # every epoch trains on nothing (a NaN loss, the flow as initialised).
    X = np.random.RandomState(0).normal(size=(60, 4)) * [1, 1, 5, 0.2]
    det = _fit_maml(X, batch_size=96, max_epochs=3, alpha=0.01)
    assert [len(epoch["batches"]) for epoch in det.net_.history] == [1, 1, 1]
    assert np.isfinite([epoch["train_loss"] for epoch in det.net_.history]).all()


def test_maml_drops_a_last_batch_too_small_to_split():
    # 97 rows in batches of 96 leave one row, which cannot make a support and
    # a query set: it is dropped, not refused with advice about batch_size.
    X = np.random.RandomState(0).normal(size=(97, 4))
    det = _fit_maml(X, batch_size=96, max_epochs=1, alpha=0.01)
    assert len(det.net_.history[0]["batches"]) == 1


@pytest.mark.parametrize(
    "setting, values", [("inner_steps", (1, 3)), ("support_fraction", (0.25, 0.75))]
)
def test_each_maml_setting_changes_the_model(setting, values):
    X = np.random.RandomState(0).normal(size=(64, 3))
    first, second = (
        _fit_maml(X, **{setting: value}).score_samples(X[:5]) for value in values
    )
    assert np.abs(first - second).max() > 1e-4


def test_maml_tasks_are_drawn_at_random_from_sorted_rows(monkeypatch):
    # Sorted file lists give sorted rows: tasks of consecutive rows would
    # adapt to one end of the data and be judged on the next rows.
    first_batches = []
    original = _MAMLFlowNet.train_step_single

    def recording_step(net, batch, **fit_params):
        first_batches.append(batch[0][:, 0].detach().clone())
        return original(net, batch, **fit_params)

    monkeypatch.setattr(_MAMLFlowNet, "train_step_single", recording_step)
    X = np.sort(np.random.RandomState(0).normal(size=(64, 3)), axis=0)
    _fit_maml(X, max_epochs=1)
    first = first_batches[0].numpy()
    assert not np.all(np.diff(first) >= 0)
    assert first.max() - first.min() > 2.0  # from across the range, not 16 neighbours
