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
    matrix = torch.randn(
        n_features, n_components, generator=generator, dtype=torch.float32
    )
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
        distances = torch.addmv(
            squared + squared[current], points, points[current], alpha=-2
        )
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
    # block b's share: the rounded cumulative quota, so the shares sum to n_select
    cumulative = [round(bound * n_select / n_points) for bound in bounds]
    quotas = [cumulative[b + 1] - cumulative[b] for b in range(n_blocks)]
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
    distances = torch.empty(len(queries), dtype=torch.float64, device=bank.device)
    for start in range(0, len(queries), chunk):
        rows = slice(start, start + chunk)
        block = queries[rows] - center
        scores = torch.addmm(bank_squared, block, bank.T, alpha=-2)
        if query_groups is not None:
            same = query_groups[rows, None] == bank_groups[None, :]
            scores.masked_fill_(same, math.inf)
        nearest[rows] = scores.argmin(1)
        distances[rows] = _exact(queries[rows], bank[nearest[rows]] + center)
    if query_groups is not None:
        alone = query_groups == bank_groups[nearest]
        distances[alone] = math.inf
        nearest[alone] = -1
    return distances, nearest


def support_distances(bank, bank_groups, references, reference_groups, rank):
    """How far each bank row is from the ``rank``-th closest other image.

    For every bank row, the distance to its nearest patch in each reference
    image (a ``(n_references, n_cells, n_features)`` tensor), leaving out the
    row's own image; returns the ``rank``-th smallest of these distances
    (float64), inf when fewer than ``rank`` other images are left.
    """
    n_references, n_cells, _ = references.shape
    flat = references.reshape(n_references * n_cells, -1)
    center = flat.mean(0)
    flat = flat - center
    flat_squared = (flat * flat).sum(1)
    chunk = max(1, _BLOCK_ENTRIES // len(flat))
    closest = torch.empty(len(bank), dtype=torch.long, device=bank.device)
    for start in range(0, len(bank), chunk):
        rows = bank[start : start + chunk] - center
        scores = torch.addmm(flat_squared, rows, flat.T, alpha=-2)
        per_image, where = scores.view(len(rows), n_references, n_cells).min(2)
        own = bank_groups[start : start + chunk, None] == reference_groups[None, :]
        per_image.masked_fill_(own, math.inf)
        if rank > n_references:
            closest[start : start + chunk] = -1
            continue
        image = per_image.kthvalue(rank, dim=1).indices
        patch = where.gather(1, image[:, None])[:, 0]
        closest[start : start + chunk] = image * n_cells + patch
    difference = bank.double() - (flat[closest] + center).double()
    distances = difference.norm(dim=1)
    own = bank_groups == reference_groups[closest // n_cells]
    distances[own | (closest < 0)] = math.inf
    return distances


def kmeans_cells(bank, n_cells, generator, n_iter=10):
    """Cut the bank into ``n_cells`` k-means cells for :func:`probed_distances`.

    Lloyd's iterations from ``n_cells`` random bank rows. Returns ``order`` (the
    bank rows sorted by cell), ``offsets`` (cell ``c`` is
    ``order[offsets[c]:offsets[c + 1]]``) and the cell ``centers``.
    """
    start = torch.randperm(len(bank), generator=generator)[:n_cells]
    centers = bank[start.to(bank.device)].clone()
    for _ in range(n_iter):
        cell = nearest_distances(bank, centers)[1]
        sums = torch.zeros_like(centers).index_add_(0, cell, bank)
        counts = torch.bincount(cell, minlength=n_cells)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    cell = nearest_distances(bank, centers)[1]
    offsets = torch.zeros(n_cells + 1, dtype=torch.long, device=bank.device)
    offsets[1:] = torch.cumsum(torch.bincount(cell, minlength=n_cells), 0)
    return torch.argsort(cell, stable=True), offsets, centers


def probed_distances(
    queries, bank, offsets, centers, n_probe, query_groups=None, bank_groups=None
):
    """Distance of every query to its nearest bank row within the ``n_probe``
    cells whose centers are nearest to it (an inverted-file search).

    ``bank`` is sorted by cell as :func:`kmeans_cells` describes. The result is
    a distance to a real bank row, so it is never below the exact nearest
    distance; it equals it unless the nearest row lies in an unprobed cell.
    Returns float64 distances and the indices of the rows found. With
    ``query_groups`` and ``bank_groups``, a query never matches a row of its
    own group, as in :func:`nearest_distances`; a query whose probed cells
    hold no other group's row gets inf (and index -1).
    """
    center = bank.mean(0)
    bank = bank - center
    centers = centers - center
    bank_squared = (bank * bank).sum(1)
    centers_squared = (centers * centers).sum(1)
    offsets = offsets.tolist()
    nearest = torch.empty(len(queries), dtype=torch.long, device=bank.device)
    distances = torch.empty(len(queries), dtype=torch.float64, device=bank.device)
    chunk = max(1, _BLOCK_ENTRIES // len(centers))
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk] - center
        to_centers = torch.addmm(centers_squared, block, centers.T, alpha=-2)
        probes = to_centers.topk(n_probe, dim=1, largest=False).indices.reshape(-1)
        rows = slice(start, start + chunk)
        groups = None if query_groups is None else query_groups[rows]
        nearest[rows] = _search_cells(
            block, probes, bank, bank_squared, offsets, n_probe, groups, bank_groups
        )
        distances[rows] = _exact(queries[rows], bank[nearest[rows]] + center)
    if query_groups is not None:
        missing = nearest < 0
        distances[missing] = math.inf
    return distances, nearest


def _exact(queries, nearest):
    """Distances between paired rows in float64, a chunk at a time: float64
    copies of all the queries at once took 6 times their float32 size."""
    return (queries.double() - nearest.double()).norm(dim=1)


def _search_cells(
    queries, probes, bank, bank_squared, offsets, n_probe, groups=None, bank_groups=None
):
    """Nearest bank row of each query among its probed cells (``probes`` holds
    ``n_probe`` cells per query, query-major); -1 where ``groups`` leave none
    (rows of the query's own group are skipped)."""
    # (query, cell) pairs grouped by cell: each cell is searched once, by all
    # the queries that probe it, with one small matrix product.
    by_cell = torch.argsort(probes, stable=True)
    asking = by_cell // n_probe
    bounds = torch.cumsum(torch.bincount(probes, minlength=len(offsets) - 1), 0)
    found = torch.full((len(probes),), math.inf, dtype=bank.dtype, device=bank.device)
    where = torch.zeros(len(probes), dtype=torch.long, device=bank.device)
    first = 0
    for cell, last in enumerate(bounds.tolist()):
        low, high = offsets[cell], offsets[cell + 1]
        if last > first and high > low:
            scores = torch.addmm(
                bank_squared[low:high],
                queries[asking[first:last]],
                bank[low:high].T,
                alpha=-2,
            )
            if groups is not None:
                own = groups[asking[first:last], None] == bank_groups[None, low:high]
                scores.masked_fill_(own, math.inf)
            torch.min(scores, 1, out=(found[first:last], where[first:last]))
            where[first:last] += low
        first = last
    pair = torch.empty_like(by_cell)
    pair[by_cell] = torch.arange(len(by_cell), device=bank.device)
    found, where = found[pair].view(-1, n_probe), where[pair].view(-1, n_probe)
    best = found.argmin(1, keepdim=True)
    nearest = where.gather(1, best)[:, 0]
    nearest[found.gather(1, best)[:, 0] == math.inf] = -1
    return nearest


def exact_maxima(upper, queries, bank, query_groups=None, bank_groups=None):
    """Make the largest entry of each row of ``upper`` exact.

    ``upper`` holds upper bounds of the patches' exact nearest distances
    (with ``query_groups`` and ``bank_groups``, of those to other groups' rows,
    as in :func:`nearest_distances`). The patch with the largest bound is
    searched exactly; only patches whose bound exceeds that exact value can
    hold the true maximum, and they are searched exactly too (usually none or
    a few).
    """

    def exact(rows):
        groups = None if query_groups is None else query_groups[rows]
        return nearest_distances(queries[rows], bank, groups, bank_groups)[0]

    n_images, n_cells = upper.shape
    top = upper.argmax(1) + torch.arange(n_images, device=upper.device) * n_cells
    flat = upper.reshape(-1).clone()
    flat[top] = exact(top)
    exact_top = flat[top].repeat_interleave(n_cells)
    rivals = torch.nonzero(upper.reshape(-1) > exact_top)[:, 0]
    if len(rivals):
        flat[rivals] = exact(rivals)
    return flat.view(n_images, n_cells)


def _interpolation_matrix(n_out, n_cells, first, step):
    """``(n_out, n_cells)`` weights of bilinear interpolation at coordinates
    ``first + step * o`` (cell centres at integers), clamped to the edge cells."""
    coordinate = (first + step * torch.arange(n_out, dtype=torch.float64)).clamp(
        0, n_cells - 1
    )
    low = coordinate.floor().long().clamp(max=n_cells - 1)
    high = (low + 1).clamp(max=n_cells - 1)
    weight = coordinate - low
    matrix = torch.zeros(n_out, n_cells, dtype=torch.float64)
    rows = torch.arange(n_out)
    matrix.index_put_((rows, low), 1 - weight, accumulate=True)
    matrix.index_put_((rows, high), weight, accumulate=True)
    return matrix


def _gaussian_kernel(sigma):
    """The normalised Gaussian of ``sigma`` samples, truncated at 4 sigma."""
    radius = max(1, int(math.ceil(4 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _gaussian_matrix(n, sigma):
    """``(n, n)`` Gaussian smoothing of ``sigma`` samples, borders reflected
    (without repeating the edge), kernel truncated at 4 sigma."""
    if sigma <= 0:
        return torch.eye(n, dtype=torch.float64)
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    rows = torch.arange(n)[:, None]
    columns = rows + torch.arange(-radius, radius + 1)[None]
    # reflect until inside: a period of 2 (n - 1)
    period = max(2 * (n - 1), 1)
    columns = columns % period
    columns = torch.where(columns >= n, period - columns, columns)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.index_put_(
        (rows.expand_as(columns), columns), kernel.expand_as(columns), accumulate=True
    )
    return matrix


def _smoothed(matrix, sigma):
    """``_gaussian_matrix(len(matrix), sigma) @ matrix``, each column convolved
    with the kernel: the ``(n, n)`` matrix took 512 MB for a side of 8,000
    pixels, and 1.1 s. Where the kernel is wider than the side, its borders
    reflect more than once, and the small matrix does it."""
    n = matrix.shape[0]
    if sigma <= 0:
        return matrix
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    if radius >= n:
        return _gaussian_matrix(n, sigma) @ matrix
    # Reflected once, without repeating the edge, as in the matrix.
    columns = F.pad(matrix.T[:, None, :], (radius, radius), mode="reflect")[:, 0]
    # By FFT: conv1d spent 2 GB on its 8,000 x 1,145-tap windows.
    length = columns.shape[1] + 2 * radius
    spectrum = torch.fft.rfft(columns, length) * torch.fft.rfft(kernel, length)
    full = torch.fft.irfft(spectrum, length)  # the kernel is symmetric
    return full[:, 2 * radius : 2 * radius + n].T


def anomaly_maps(patch_scores, size, sigma, input_size, cell_offset=0.5,
                 stride=None):
    """Patch scores ``(n, h, w)`` resampled bilinearly to ``size = (H, W)`` and
    smoothed with a Gaussian of ``sigma`` pixels of that size (a number, or
    one per axis).

    The images were resized from ``size`` to ``input_size`` for the CNN, whose
    grid cell ``i`` is centred on CNN-input pixel ``stride * (i - cell_offset)``;
    ``stride=None`` takes ``input_size / cells`` per axis (a grid that spans
    its input exactly). Both steps are linear and separable: one
    ``(size, cells)`` matrix per axis.
    """
    sigmas = tuple(sigma) if isinstance(sigma, (tuple, list)) else (sigma, sigma)
    axes = []
    for n_out, n_cells, n_input, sigma in zip(
        size, patch_scores.shape[-2:], input_size, sigmas
    ):
        # output pixel p -> CNN-input pixel (p + 1/2) * n_input / n_out - 1/2
        # -> cell (that pixel) / stride + cell_offset; span = n_input / stride
        span = n_cells if stride is None else n_input / stride
        step = span / n_out
        first = 0.5 * step - 0.5 * span / n_input + cell_offset
        resize = _interpolation_matrix(n_out, n_cells, first, step)
        axes.append(_smoothed(resize, sigma))
    rows, columns = (a.to(patch_scores.device, torch.float32) for a in axes)
    return torch.einsum("ij,njk,lk->nil", rows, patch_scores.float(), columns)
