"""Chunked exact k-nearest-neighbour distances.

Squared Euclidean distances are computed block by block (``chunk_size`` query rows against all reference rows, never a
full N x N matrix) with float32 matrix products, the fast path on CPUs and GPUs. Each float32 value comes with a
rigorous error bound; every decision that the bound cannot settle (which points are the k nearest, whether a distance
is below a radius) is redone in float64 on the few pairs concerned. Results are therefore those of a float64
computation, at nearly the cost of a float32 one. Up to 16 dimensions, where products are cheap but the Gram
expansion cancels badly, blocks are float64 distances computed from coordinate differences.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

FLOAT32_ROUNDOFF = 2.0**-24
FLOAT64_ROUNDOFF = 2.0**-53
EXTRA_CANDIDATES = 4
MAX_PAIR_ELEMENTS = 2**17
DIRECT_MAX_DIM = 16
SYMMETRIC_MAX_CANDIDATES = 16
ROW_SETS = 16


def default_chunk_size(num_reference: int, device: torch.device | str = "cpu") -> int:
    """Query rows per block: about 2^21 distances on CPU (the block stays in cache for the passes over it),
    2^26 on accelerators."""
    max_block_elements = 2**21 if torch.device(device).type == "cpu" else 2**26
    return max(1, max_block_elements // max(1, num_reference))


def exact_sq_distances(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Float64 squared distances ``||x[rows[i]] - y[cols[i]]||^2`` of the listed pairs.

    Chunks of ``MAX_PAIR_ELEMENTS`` coordinates, worked on in place: small buffers the allocator reuses, rather
    than fresh pages to fault in for every call.
    """
    step = max(1, MAX_PAIR_ELEMENTS // max(1, x.shape[1]))
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, rows.shape[0], step):
        stop = start + step
        differences = x[rows[start:stop]].double().sub_(y[cols[start:stop]])
        out[start:stop] = differences.square_().sum(dim=1)
    return out


def sq_distance_bound(query_sq_norms: torch.Tensor, reference_sq_norms: torch.Tensor, dim: int) -> torch.Tensor:
    """Per query row, a bound on |float32 squared distance - exact squared distance| against any reference row.

    The Gram expansion ``|x|^2 + |y|^2 - 2 x.y`` in float32 errs by at most about ``(dim + 2) u (|x|^2 + |y|^2)``
    (u = 2^-24); the factor 2 and the margin cover the rounding of the centred inputs to float32.
    """
    return 2 * (dim + 8) * FLOAT32_ROUNDOFF * (query_sq_norms.double() + reference_sq_norms.double().max())


def _fast_operands(query: torch.Tensor, reference: torch.Tensor):
    """Operands of the block products and the per-query-row error bound.

    Up to ``DIRECT_MAX_DIM`` dimensions, blocks are float64 distances from differences (``torch.cdist`` without
    matrix products; the Gram expansion would lose the small distances of dense low-dimensional data to
    cancellation). Above it, float32 copies centred on the reference mean (smaller norms, smaller errors) and
    their squared norms.
    """
    if query.shape[1] <= DIRECT_MAX_DIM:
        query64, reference64 = query.double(), reference.double()
        # cdist's root, squared again, is within a few float64 ulps of the sum of squared differences.
        scale = query64.square().sum(dim=1) + reference64.square().sum(dim=1).max()
        return query64, None, reference64, None, 16 * FLOAT64_ROUNDOFF * scale
    center = reference.mean(dim=0, dtype=torch.float64)
    if reference.dtype == torch.float32:
        # Any common centre will do: from a float32 one, each coordinate is rounded once, as in the float64 route.
        center = center.float()

    def centred(features: torch.Tensor) -> torch.Tensor:
        if features.dtype == center.dtype == torch.float32:
            return features - center
        return (features.double() - center).float()

    reference32 = centred(reference)
    reference_sq = torch.linalg.vecdot(reference32, reference32)
    if query is reference:
        query32, query_sq = reference32, reference_sq
    else:
        query32 = centred(query)
        query_sq = torch.linalg.vecdot(query32, query32)
    return query32, query_sq, reference32, reference_sq, sq_distance_bound(query_sq, reference_sq, query.shape[1])


def _rows(values: torch.Tensor | None, start: int, size: int) -> torch.Tensor | None:
    return None if values is None else values[start : start + size]


def _block_sq_distances(x: torch.Tensor, x_sq, y: torch.Tensor, y_sq, scratch: torch.Tensor | None = None):
    """Squared distances of a block: direct float64 differences (``x_sq is None``), else the float32 Gram
    expansion clamped at 0, written into ``scratch`` (a flat buffer reused across blocks: a fresh multi-megabyte
    block per call would spend a good part of the product's time faulting in new pages)."""
    if x_sq is None:
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square_()
    out = None if scratch is None else scratch[: x.shape[0] * y.shape[0]].view(x.shape[0], y.shape[0])
    block = torch.addmm(y_sq.unsqueeze(0), x, y.T, alpha=-2.0, out=out)
    return block.add_(x_sq.unsqueeze(1)).clamp_(min=0)


def _scratch(num_elements: int, like: torch.Tensor, squared_norms) -> torch.Tensor | None:
    """The flat block buffer of the Gram-expansion route (``None`` on the direct route, which does not use one)."""
    return None if squared_norms is None else torch.empty(num_elements, dtype=like.dtype, device=like.device)


def iter_sq_distance_blocks(
    query: torch.Tensor, reference: torch.Tensor, chunk_size: int | None = None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, block, bound)``: squared distances (see ``_fast_operands``) of ``query[start:start + c]`` to
    all of ``reference`` (shape ``(c, len(reference))``) and the per-row error bound of that block.

    The blocks share one buffer: a block may be modified in place, and is overwritten by the next one.
    """
    query32, query_sq, reference32, reference_sq, bound = _fast_operands(query, reference)
    chunk_size = chunk_size or default_chunk_size(reference.shape[0], reference.device)
    scratch = _scratch(min(chunk_size, query.shape[0]) * reference.shape[0], reference32, reference_sq)
    for start in range(0, query.shape[0], chunk_size):
        stop = min(start + chunk_size, query.shape[0])
        query_rows = query32[start:stop]
        block = _block_sq_distances(
            query_rows, _rows(query_sq, start, stop - start), reference32, reference_sq, scratch
        )
        yield start, block, bound[start:stop]


def _merge_topk(values: torch.Tensor, indices: torch.Tensor, start: int, new_values, new_indices) -> None:
    """Fold new candidates into the running ``num`` smallest of rows ``start:start + len(new_values)``, in place."""
    rows = slice(start, start + new_values.shape[0])
    all_values = torch.cat([values[rows], new_values], dim=1)
    all_indices = torch.cat([indices[rows], new_indices], dim=1)
    top = torch.topk(all_values, values.shape[1], dim=1, largest=False)
    values[rows] = top.values
    indices[rows] = all_indices.gather(1, top.indices)


def smallest_per_column(block: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(block.T, num, largest=False)``: the ``num`` smallest values of each column (ascending) and their
    row indices, without a top-k over the strided columns.

    Rows are split into ``ROW_SETS`` interleaved sets ``{s, s + m, s + 2m, ...}`` (m = rows // ROW_SETS); one
    contiguous pass takes each set's minimum per column. A column's ``num`` smallest values lie in the ``num`` sets
    with the smallest minima (each of those sets has a minimum at most as large as any value outside them), so only
    those sets' rows, and the few rows left over, are gathered and ranked. Among exactly equal values the returned
    rows may differ from ``topk``'s.
    """
    height, width = block.shape
    stride = height // ROW_SETS
    if stride <= 2 * num:
        top = torch.topk(block.T, num, dim=1, largest=False)
        return top.values, top.indices
    full = stride * ROW_SETS
    minima = block[:full].view(ROW_SETS, stride, width).amin(dim=0)
    sets = torch.topk(minima.T, num, dim=1, largest=False).indices
    offsets = stride * torch.arange(ROW_SETS, device=block.device)
    rows = (sets.unsqueeze(2) + offsets).flatten(1)
    if full < height:
        rows = torch.cat([rows, torch.arange(full, height, device=block.device).expand(width, -1)], dim=1)
    top = torch.topk(block.T.gather(1, rows), num, dim=1, largest=False)
    return top.values, rows.gather(1, top.indices)


def _self_candidates(features: torch.Tensor, num: int, chunk_size: int | None):
    """The ``num`` smallest float32 squared distances (ascending) of each row to the other rows of ``features``.

    The distance matrix is symmetric: only blocks on and above the diagonal are computed (half the products), each
    serving the rows of both its sides.
    """
    x32, x_sq, _, _, bound = _fast_operands(features, features)
    n = features.shape[0]
    chunk_size = chunk_size or max(1, math.isqrt(default_chunk_size(1, features.device)))
    values = torch.full((n, num), torch.inf, device=features.device)
    indices = torch.zeros((n, num), dtype=torch.long, device=features.device)
    scratch = _scratch(min(chunk_size, n) ** 2, x32, x_sq)
    for i in range(0, n, chunk_size):
        for j in range(i, n, chunk_size):
            rows_i, rows_j = x32[i : i + chunk_size], x32[j : j + chunk_size]
            block = _block_sq_distances(rows_i, _rows(x_sq, i, chunk_size), rows_j, _rows(x_sq, j, chunk_size), scratch)
            if i == j:
                block.fill_diagonal_(torch.inf)
            top = torch.topk(block, min(num, block.shape[1]), dim=1, largest=False)
            _merge_topk(values, indices, i, top.values, top.indices + j)
            if i != j:
                top_values, top_rows = smallest_per_column(block, min(num, block.shape[0]))
                _merge_topk(values, indices, j, top_values, top_rows + i)
    return values, indices, bound


def _row_block_candidates(
    query: torch.Tensor, reference: torch.Tensor, num: int, exclude_self: bool, chunk_size: int | None
):
    """The ``num`` smallest squared distances (ascending) of each query row to the reference rows, by row blocks."""
    values, indices, bounds = [], [], []
    for start, block, bound in iter_sq_distance_blocks(query, reference, chunk_size):
        if exclude_self:
            rows = torch.arange(block.shape[0], device=block.device)
            block[rows, rows + start] = torch.inf
        top = torch.topk(block, num, dim=1, largest=False)
        values.append(top.values)
        indices.append(top.indices)
        bounds.append(bound)
    return torch.cat(values), torch.cat(indices), torch.cat(bounds)


def _check_k(k: int, reference: torch.Tensor, exclude_self: bool) -> int:
    available = reference.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"`k` must be between 1 and {available} (the number of candidate neighbours), got {k}.")
    return available


def _candidates(query, reference, num, exclude_self, chunk_size):
    # Symmetric blocks halve the Gram products but merge candidates twice per block: worth it for few candidates.
    if exclude_self and num <= SYMMETRIC_MAX_CANDIDATES and query.shape[1] > DIRECT_MAX_DIM:
        return _self_candidates(query, num, chunk_size)
    return _row_block_candidates(query, reference, num, exclude_self, chunk_size)


def kth_neighbour_sq_distances(
    query: torch.Tensor,
    reference: torch.Tensor,
    k: int,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Exact (float64) squared distance from each query row to its k-th nearest reference row.

    Args:
        query: ``(n, d)`` features.
        reference: ``(m, d)`` features (with ``exclude_self``, pass the same tensor as ``query``).
        k: neighbour rank, at most ``m`` (``m - 1`` with ``exclude_self``).
        exclude_self: ``query`` is ``reference`` and row ``i`` is not its own neighbour (leave-one-out).
        chunk_size: rows per block (default: ``default_chunk_size``).

    The ``k + 4`` smallest float32 distances of a row are split into runs separated by gaps wider than twice the
    error bound; runs are ordered the same way exactly. Only the run holding the k-th value is recomputed in float64
    (usually that one value); a row whose run reaches the last candidate is recomputed in full.
    """
    available = _check_k(k, reference, exclude_self)
    num_candidates = min(k + EXTRA_CANDIDATES, available)
    fast, candidates, bound = _candidates(query, reference, num_candidates, exclude_self, chunk_size)
    fast = fast.double()
    breaks = (fast[:, 1:] - fast[:, :-1]) > 2 * bound.unsqueeze(1)
    run = torch.cat([torch.zeros_like(breaks[:, :1], dtype=torch.long), breaks.long().cumsum(dim=1)], dim=1)
    kth_run = run[:, k - 1 : k]
    in_run = run == kth_run
    before = (run < kth_run).sum(dim=1)
    rows, cols = in_run.nonzero(as_tuple=True)
    exact = torch.full_like(fast, torch.inf)
    exact[rows, cols] = exact_sq_distances(query, reference, rows, candidates[rows, cols])
    kth = exact.sort(dim=1).values.gather(1, (k - 1 - before).unsqueeze(1)).squeeze(1)
    if num_candidates < available:
        for row in in_run[:, -1].nonzero().flatten().tolist():
            kth[row] = _exact_row_kth(query, reference, row, k, exclude_self)
    return kth


def _exact_row_kth(query: torch.Tensor, reference: torch.Tensor, row: int, k: int, exclude_self: bool) -> torch.Tensor:
    """Float64 k-th smallest squared distance of one query row, from its full row of distances."""
    cols = torch.arange(reference.shape[0], device=reference.device)
    sq_dists = exact_sq_distances(query, reference, torch.full_like(cols, row), cols)
    if exclude_self:
        sq_dists[row] = torch.inf
    return sq_dists.kthvalue(k).values


def nearest_neighbour_indices(
    query: torch.Tensor,
    reference: torch.Tensor,
    k: int,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Indices ``(n, k)`` of the ``k`` nearest reference rows of each query row by float32 distance.

    Neighbours whose distances agree to float32 precision may be ranked either way; use it where the identity of
    near-tied neighbours does not matter (neighbour label counts), and ``kth_neighbour_sq_distances`` for radii.
    """
    _check_k(k, reference, exclude_self)
    return _candidates(query, reference, k, exclude_self, chunk_size)[1]


def radius_counts(
    query: torch.Tensor,
    reference: torch.Tensor,
    radius_sq: torch.Tensor,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the number of reference rows within ``sqrt(radius_sq[i])`` and the largest squared
    distance among them (``(n,)`` long and ``(n,)`` float64).

    Pass radii that are themselves neighbour distances (so every ball holds at least one row). A distance is counted
    when its block value is at most the radius plus the block's error bound: up to 16 dimensions the blocks are
    float64 and the counts exact; above, a reference row whose distance agrees with the radius to float32 precision
    counts as inside, and the largest distance carries float32 rounding (a relative 1e-7, far below any estimator's
    noise).
    """
    counts = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    largest = torch.zeros(query.shape[0], dtype=torch.float64, device=query.device)
    for start, block, bound in iter_sq_distance_blocks(query, reference, chunk_size):
        rows = torch.arange(block.shape[0], device=block.device)
        if exclude_self:
            block[rows, rows + start] = torch.inf
        limit = (radius_sq[start : start + block.shape[0]] + bound).to(block.dtype).unsqueeze(1)
        inside = block <= limit
        counts[start : start + block.shape[0]] = inside.sum(dim=1)
        masked = torch.where(inside, block, torch.zeros((), dtype=block.dtype, device=block.device))
        largest[start : start + block.shape[0]] = masked.amax(dim=1).double()
    return counts, largest
