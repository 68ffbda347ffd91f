"""k-NN precision, recall, density and coverage (Kynkäänniemi et al. 2019; Naeem et al. 2020).

Same definitions, and same float32 rounding of distances, as the reference ``prdc`` package (``compute_prdc``):
the radius of a sample is the distance to its k-th nearest neighbour in its own set (itself excluded);

- precision: share of generated samples inside at least one real ball;
- recall: share of real samples inside at least one generated ball;
- density: number of real balls containing a generated sample, averaged over generated samples, divided by k;
- coverage: share of real samples whose ball contains at least one generated sample.

Distances are computed in blocks (never an N x M matrix) and ties that float32 cannot settle are re-checked in
float64, so the counts are those of ``compute_prdc`` on the same data.
"""

from __future__ import annotations

import torch

from hf_egt.core.metrics.inputs import as_features, check_min_samples, check_pair
from hf_egt.core.metrics.knn import ROW_SETS, exact_sq_distances, iter_sq_distance_blocks, kth_neighbour_sq_distances

PRDC_KEYS = ("precision", "recall", "density", "coverage")
RELATIVE_MARGIN = 1e-6


def knn_radii(features: torch.Tensor, k: int, chunk_size: int | None = None) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row, rounded like ``prdc`` (float64 squared, float32 root)."""
    sq_dists = kth_neighbour_sq_distances(features, features, k, exclude_self=True, chunk_size=chunk_size)
    return sq_dists.float().sqrt()


def _candidate_entries(excess: torch.Tensor, limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the entries of ``excess`` that are at most ``limit``, expected to be few.

    Rows are split into ``ROW_SETS`` interleaved sets ``{g, g + s, g + 2s, ...}`` (s = rows // ROW_SETS, plus the
    leftover rows one by one); a column-wise minimum over each set reads the block once, contiguously, and only the
    (set, column) pairs whose minimum is at most ``limit`` are looked at again. A comparison and ``nonzero`` over the
    whole block would cost several times more.
    """
    height = excess.shape[0]
    stride = height // ROW_SETS
    if stride == 0:
        return (excess <= limit).nonzero(as_tuple=True)
    full = stride * ROW_SETS
    minima = excess[:full].view(ROW_SETS, stride, -1).amin(dim=0)
    sets, cols = (minima <= limit).nonzero(as_tuple=True)
    rows = (sets.unsqueeze(1) + stride * torch.arange(ROW_SETS, device=excess.device)).flatten()
    cols = cols.repeat_interleave(ROW_SETS)
    keep = excess[rows, cols] <= limit
    rows, cols = rows[keep], cols[keep]
    if full < height:
        leftover_rows, leftover_cols = (excess[full:] <= limit).nonzero(as_tuple=True)
        rows, cols = torch.cat([rows, leftover_rows + full]), torch.cat([cols, leftover_cols])
    return rows, cols


def _exactly_inside(real, generated, rows, cols, radius: torch.Tensor) -> torch.Tensor:
    """``d(real[rows], generated[cols]) < radius`` with float64 distances rounded to float32, as ``prdc`` does."""
    return exact_sq_distances(real, generated, rows, cols).float().sqrt() < radius


def prdc(real, generated, k: int = 5, chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Precision, recall, density and coverage of ``generated`` with respect to ``real`` (k-NN balls).

    Args:
        real: ``(n, d)`` features of real samples.
        generated: ``(m, d)`` features of generated samples.
        k: neighbour rank that sets each ball's radius (5 in Naeem et al.).
        chunk_size: rows per distance block.

    Returns:
        ``{"precision", "recall", "density", "coverage"}`` as 0-d float64 tensors. Precision, recall and coverage
        lie in [0, 1]; density is unbounded (1 when both sets come from the same distribution, on average).
    """
    real = as_features(real, "real")
    generated = as_features(generated, "generated")
    check_pair(real, generated)
    check_min_samples(real, k + 1, "real", f"PRDC with k={k}")
    check_min_samples(generated, k + 1, "generated", f"PRDC with k={k}")
    real_radius = knn_radii(real, k, chunk_size)
    generated_radius = knn_radii(generated, k, chunk_size)
    real_threshold = real_radius.double().square()
    generated_threshold = generated_radius.double().square()

    balls_containing = torch.zeros(generated.shape[0], dtype=torch.long, device=real.device)
    covered = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    recalled = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for start, block, bound in iter_sq_distance_blocks(real, generated, chunk_size):
        rows = slice(start, start + block.shape[0])
        # Precision, density, coverage: pairs with d(real_i, generated_j) < radius(real_i); few, found sparsely.
        # Entries within ``margin`` of the threshold are settled exactly (float32 error bound plus radius rounding).
        margin = bound + RELATIVE_MARGIN * real_threshold[rows]
        excess = block - real_threshold[rows].to(block.dtype).unsqueeze(1)
        pair_rows, pair_cols = _candidate_entries(excess, float(margin.max()))
        pair_excess = excess[pair_rows, pair_cols].double()
        inside = pair_excess < -margin[pair_rows]
        unsure = ~inside & (pair_excess <= margin[pair_rows])
        inside[unsure] = _exactly_inside(
            real, generated, pair_rows[unsure] + start, pair_cols[unsure], real_radius[pair_rows[unsure] + start]
        )
        balls_containing += torch.bincount(pair_cols[inside], minlength=generated.shape[0])
        covered[pair_rows[inside] + start] = True
        # Recall: real_i lies in some generated ball, i.e. min_j (d_ij - radius(generated_j)^2) < 0.
        margin = float(bound.max() + RELATIVE_MARGIN * generated_threshold.max())
        excess = block.sub_(generated_threshold.to(block.dtype).unsqueeze(0))
        nearest_excess = excess.amin(dim=1).double()
        recalled[rows] |= nearest_excess < -margin
        for row in ((nearest_excess >= -margin) & (nearest_excess <= margin)).nonzero().flatten().tolist():
            cols = (excess[row] <= margin).nonzero().flatten()
            rows_of_pairs = torch.full_like(cols, start + row)
            recalled[start + row] |= bool(
                _exactly_inside(real, generated, rows_of_pairs, cols, generated_radius[cols]).any()
            )

    return {
        "precision": (balls_containing > 0).double().mean(),
        "recall": recalled.double().mean(),
        "density": balls_containing.double().sum() / (k * generated.shape[0]),
        "coverage": covered.double().mean(),
    }
