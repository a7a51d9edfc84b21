"""Model-Agnostic Meta-Learning (Finn et al., 2017) as plain torch functions.

A task is a batch split into a support set S and a query set Q. The inner step
adapts the parameters on S, ``theta' = theta - alpha * grad L(S, theta)``; the
meta-objective is the loss of the adapted parameters on Q, ``L(Q, theta')``,
whose gradient with respect to ``theta`` the outer optimiser follows (its
learning rate is the meta learning rate beta).
"""

import torch
from torch.func import functional_call


def split_task(batch, support_fraction=0.5):
    """Split a batch into a support set (its head) and a query set (its tail).

    The batch is already in random order (the data loader shuffles), so taking
    the head keeps the split reproducible for a given batch. Both parts get at
    least one row.
    """
    n = batch.shape[0]
    if n < 2:
        raise ValueError(
            f"A MAML task needs at least 2 rows to form a support and a query "
            f"set, got a batch of {n}."
        )
    n_support = min(max(1, round(support_fraction * n)), n - 1)
    return batch[:n_support], batch[n_support:]


def adapt(module, params, support, loss_fn, *, alpha, n_steps=1, first_order=False):
    """Inner loop: ``n_steps`` gradient steps of size ``alpha`` on ``support``.

    Parameters
    ----------
    module : torch.nn.Module
        Evaluated functionally with ``params`` (its buffers are used as they are).
    params : dict of str to Tensor
        The parameters to adapt, usually ``dict(module.named_parameters())``.
    support : Tensor
    loss_fn : callable
        Maps the module's output to a scalar loss.
    alpha : float
        Inner learning rate.
    n_steps : int, default=1
    first_order : bool, default=False
        If True, the inner gradients are treated as constants, so the
        meta-gradient skips the second-order term (first-order MAML).

    Returns
    -------
    adapted : dict of str to Tensor
        Adapted parameters, still differentiable with respect to ``params``.
    """
    names = list(params)
    # The module's own parameters need no functional_call, whose parameter
    # swapping costs as much as the forward pass of a small flow.
    own = dict(module.named_parameters())
    for _ in range(n_steps):
        if params.keys() == own.keys() and all(params[n] is own[n] for n in names):
            output = module(support)
        else:
            output = functional_call(module, params, (support,))
        loss = loss_fn(output)
        grads = torch.autograd.grad(
            loss, [params[name] for name in names], create_graph=not first_order
        )
        params = {name: params[name] - alpha * g for name, g in zip(names, grads)}
    return params


def maml_loss(module, support, query, loss_fn, *, alpha, n_steps=1, first_order=False):
    """Meta-objective of one task: the query loss of the adapted parameters.

    Calling ``backward()`` on the result leaves the MAML meta-gradient in the
    ``.grad`` of ``module``'s parameters.
    """
    params = dict(module.named_parameters())
    adapted = adapt(
        module,
        params,
        support,
        loss_fn,
        alpha=alpha,
        n_steps=n_steps,
        first_order=first_order,
    )
    return loss_fn(functional_call(module, adapted, (query,)))
