"""The normalizing flow of DifferNet as plain torch modules.

A stack of blocks, each a fixed random permutation of the coordinates followed
by a GLOW-style affine coupling (Kingma and Dhariwal, 2018) whose log-scales go
through the soft clamp ``clamp * 0.636 * atan(s / clamp)`` of DifferNet
(Rudolph et al., 2021). The coupling layer is written here rather than taken
from FrEIA: it is a few dozen lines, it keeps the dependency list short, and
every parameter is an ordinary ``nn.Parameter`` of a plain module, so
:func:`torch.func.functional_call` (used by MAML) and a float64 copy of the
parameters (used for scoring) need no adapters.
"""

import math

import torch
from torch import nn

_ATAN_SCALE = 0.636
_LOG_2PI = math.log(2.0 * math.pi)


def soft_clamp(s, clamp):
    """Bound log-scales smoothly to ``(-0.99903 * clamp, 0.99903 * clamp)``."""
    return clamp * _ATAN_SCALE * torch.atan(s / clamp)


def _subnet(n_in, n_out, hidden_size, n_hidden_layers):
    """Fully connected subnet whose last layer starts at zero, in float32 (as
    the rows it is trained on) whatever ``torch.set_default_dtype`` says.

    A zero last layer makes every coupling the identity at initialisation, so
    an untrained flow is a standard Gaussian rather than a random map whose
    log-determinant can overflow.
    """
    layers = []
    width = n_in
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden_size, dtype=torch.float32), nn.ReLU()]
        width = hidden_size
    last = nn.Linear(width, n_out, dtype=torch.float32)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class AffineCoupling(nn.Module):
    """GLOW affine coupling: each half is scaled and shifted given the other.

    ``y1 = x1 * exp(c(s2(x2))) + t2(x2)`` then
    ``y2 = x2 * exp(c(s1(y1))) + t1(y1)``, with ``c`` the soft clamp.
    """

    def __init__(self, dim, hidden_size, n_hidden_layers, clamp):
        super().__init__()
        self.split = dim // 2
        self.clamp = clamp
        n1, n2 = self.split, dim - self.split
        self.net1 = _subnet(n1, 2 * n2, hidden_size, n_hidden_layers)
        self.net2 = _subnet(n2, 2 * n1, hidden_size, n_hidden_layers)

    def _scale_shift(self, net, condition):
        s, t = net(condition).chunk(2, dim=-1)
        return soft_clamp(s, self.clamp), t

    def forward(self, x):
        x1, x2 = x[..., : self.split], x[..., self.split :]
        s, t = self._scale_shift(self.net2, x2)
        y1 = x1 * torch.exp(s) + t
        s1, t1 = self._scale_shift(self.net1, y1)
        y2 = x2 * torch.exp(s1) + t1
        log_det = s.sum(dim=-1) + s1.sum(dim=-1)
        return torch.cat([y1, y2], dim=-1), log_det

    def inverse(self, y):
        y1, y2 = y[..., : self.split], y[..., self.split :]
        s1, t1 = self._scale_shift(self.net1, y1)
        x2 = (y2 - t1) * torch.exp(-s1)
        s, t = self._scale_shift(self.net2, x2)
        x1 = (y1 - t) * torch.exp(-s)
        return torch.cat([x1, x2], dim=-1)


class Permutation(nn.Module):
    """A fixed permutation of the coordinates (volume preserving)."""

    def __init__(self, dim, generator):
        super().__init__()
        perm = torch.randperm(dim, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x):
        return x[..., self.perm]

    def inverse(self, y):
        return y[..., self.inverse_perm]


class Flow(nn.Module):
    """DifferNet's flow: ``n_blocks`` of [permutation, affine coupling].

    Parameters
    ----------
    dim : int
        Dimension of the inputs (at least 2).
    n_blocks : int, default=8
    hidden_size : int, default=64
        Width of the coupling subnets (DifferNet: 2048).
    n_hidden_layers : int, default=1
        Hidden layers per subnet.
    clamp : float, default=3.0
        Bound of the soft clamp on the log-scales.
    seed : int, default=0
        Seed of the permutations, so that a flow is rebuilt identically.

    ``forward(x)`` returns ``(z, log_det)`` with ``log_det`` the log absolute
    determinant of the Jacobian of ``x -> z``, one value per row.
    """

    def __init__(
        self, dim, n_blocks=8, hidden_size=64, n_hidden_layers=1, clamp=3.0, seed=0
    ):
        super().__init__()
        if dim < 2:
            raise ValueError(f"A coupling flow needs at least 2 dimensions, got {dim}.")
        self.dim = dim
        generator = torch.Generator().manual_seed(seed)
        layers = []
        for _ in range(n_blocks):
            layers.append(Permutation(dim, generator))
            layers.append(AffineCoupling(dim, hidden_size, n_hidden_layers, clamp))
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        log_det = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            if isinstance(layer, AffineCoupling):
                x, layer_log_det = layer(x)
                log_det = log_det + layer_log_det
            else:
                x = layer(x)
        return x, log_det

    def inverse(self, z):
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


def differnet_loss(z, log_det):
    """DifferNet's training loss ``mean(0.5 * ||z||^2 - log|det J|) / dim``.

    It is the negative log-likelihood per dimension without the constant
    ``0.5 * log(2 pi)``; dividing by the dimension keeps learning rates
    comparable across feature sizes.
    """
    return torch.mean(0.5 * torch.sum(z**2, dim=-1) - log_det) / z.shape[-1]


def log_prob(z, log_det):
    """Exact log-density of the inputs of a flow with a standard normal base."""
    dim = z.shape[-1]
    return -0.5 * torch.sum(z**2, dim=-1) - 0.5 * dim * _LOG_2PI + log_det
