"""Memory-bank math of the patch detectors, in torch only.

Greedy k-center coreset selection, nearest-neighbour distances computed in
chunks (optionally leaving out the bank rows of the query's own image), and
anomaly maps: patch scores brought to image resolution and smoothed.
"""

import math

import torch
import torch.nn.functional as F

# Distances of one query chunk to the whole bank are materialised; this bounds
# that block (in float32 entries) so memory stays flat for any bank size.
_BLOCK_ENTRIES = 2**23
# Greedy selection keeps each block's projected points (block x dims float32)
# in the CPU's cache; every pick reads the whole block once.
_CORESET_BLOCK = 2**14


def random_projection(n_features, n_components, generator, device):
    """A Gaussian matrix ``(n_features, n_components)`` that roughly preserves
    distances (Johnson-Lindenstrauss), scaled by ``1 / sqrt(n_components)``."""
    matrix = torch.randn(n_features, n_components, generator=generator)
    return (matrix / math.sqrt(n_components)).to(device)


def _farthest_first(points, n_select):
    """Greedy k-center on ``points``: start at row 0, then repeatedly take the
    row farthest from everything taken so far. Returns row indices."""
    squared = (points * points).sum(1)
    nearest = torch.full_like(squared, math.inf)
    picks = torch.empty(n_select, dtype=torch.long, device=points.device)
    current = torch.zeros((), dtype=torch.long, device=points.device)
    for i in range(n_select):
        picks[i] = current
        # |p - c|^2 = |p|^2 + |c|^2 - 2 p.c, one matrix-vector product per pick
        distances = torch.addmv(squared + squared[current], points, points[current], alpha=-2)
        torch.minimum(nearest, distances, out=nearest)
        # a taken row never comes back, even among exact duplicates
        nearest[current] = -math.inf
        current = torch.argmax(nearest)
    return picks


def greedy_coreset(points, n_select, generator, block_size=_CORESET_BLOCK):
    """Indices of ``n_select`` rows of ``points`` chosen by greedy k-center.

    The rows are shuffled with ``generator`` and cut into blocks of at most
    ``block_size``; each block contributes its share of ``n_select`` by
    farthest-first traversal. With one block this is the classic greedy
    k-center (2-approximation of the covering radius); blocks make a pick cost
    ``block_size`` distances instead of ``len(points)``, so selection time grows
    linearly, not quadratically, with the number of patches.
    """
    n_points = len(points)
    order = torch.randperm(n_points, generator=generator).to(points.device)
    n_blocks = max(1, math.ceil(n_points / block_size))
    bounds = [round(b * n_points / n_blocks) for b in range(n_blocks + 1)]
    quotas = [
        round(bounds[b + 1] * n_select / n_points) - round(bounds[b] * n_select / n_points)
        for b in range(n_blocks)
    ]
    selected = []
    for b, quota in enumerate(quotas):
        block = order[bounds[b] : bounds[b + 1]]
        if quota > 0:
            selected.append(block[_farthest_first(points[block], quota)])
    return torch.cat(selected)


def nearest_distances(queries, bank, query_groups=None, bank_groups=None):
    """Euclidean distance of every query row to its nearest bank row.

    Parameters
    ----------
    queries : tensor of shape (n_queries, n_features), float32
    bank : tensor of shape (n_bank, n_features), float32, same device
    query_groups, bank_groups : long tensors of shape (n_queries,), (n_bank,)
        When given, a query never matches a bank row of its own group (its own
        image: leave-one-image-out). A query with no other group gets inf.

    Returns
    -------
    distances : tensor of shape (n_queries,), float64
    nearest : tensor of shape (n_queries,), long
        Index of the nearest bank row (-1 where there is none).
    """
    # Centering shrinks the norms, and with them the cancellation of the
    # |q|^2 + |b|^2 - 2 q.b form; the winner's distance is recomputed exactly.
    center = bank.mean(0)
    bank = bank - center
    bank_squared = (bank * bank).sum(1)
    chunk = max(1, _BLOCK_ENTRIES // max(1, len(bank)))
    nearest = torch.empty(len(queries), dtype=torch.long, device=bank.device)
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk] - center
        scores = torch.addmm(bank_squared, block, bank.T, alpha=-2)
        if query_groups is not None:
            same = query_groups[start : start + chunk, None] == bank_groups[None, :]
            scores.masked_fill_(same, math.inf)
        nearest[start : start + chunk] = scores.argmin(1)
    difference = queries.double() - (bank[nearest] + center).double()
    distances = difference.norm(dim=1)
    if query_groups is not None:
        alone = query_groups == bank_groups[nearest]
        distances[alone] = math.inf
        nearest[alone] = -1
    return distances, nearest


def gaussian_blur(maps, sigma):
    """Smooth ``(n, H, W)`` maps with a Gaussian of ``sigma`` pixels (reflected
    borders, kernel truncated at 4 sigma)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(4 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]
    # reflect padding needs a border narrower than the map; replicate is the fallback
    for dim, shape in ((3, (1, 1, 1, -1)), (2, (1, 1, -1, 1))):
        pad = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
        mode = "reflect" if out.shape[dim] > radius else "replicate"
        out = F.conv2d(F.pad(out, pad, mode=mode), kernel.view(shape))
    return out[:, 0]


def anomaly_maps(patch_scores, size, sigma):
    """Patch scores ``(n, h, w)`` resized bilinearly to ``size = (H, W)`` and
    smoothed with a Gaussian of ``sigma`` pixels of that size."""
    maps = patch_scores[:, None].float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return gaussian_blur(maps[:, 0], sigma)
