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

from .knn import exact_sq_distances, iter_sq_distance_blocks, kth_neighbour_sq_distances
from .validation import as_features, check_min_samples, check_pair

PRDC_KEYS = ("precision", "recall", "density", "coverage")
RELATIVE_MARGIN = 1e-6


def knn_radii(features: torch.Tensor, k: int, chunk_size: int | None = None) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row, rounded like ``prdc`` (float64 squared, float32 root)."""
    sq_dists = kth_neighbour_sq_distances(features, features, k, exclude_self=True, chunk_size=chunk_size)
    return sq_dists.float().sqrt()


def _split_comparison(block: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """Entries surely below ``low`` and the (few) entries between ``low`` and ``high`` that need an exact check."""
    surely_below = block < low
    unsure = (block < high) ^ surely_below
    if not unsure.any():
        empty = torch.empty(0, dtype=torch.long, device=block.device)
        return surely_below, (empty, empty)
    return surely_below, unsure.nonzero(as_tuple=True)


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
        stop = start + block.shape[0]
        # d(real_i, generated_j) < radius(real_i): precision, density and coverage.
        margin = bound + RELATIVE_MARGIN * real_threshold[start:stop]
        low = (real_threshold[start:stop] - margin).to(block.dtype).unsqueeze(1)
        high = (real_threshold[start:stop] + margin).to(block.dtype).unsqueeze(1)
        inside, (rows, cols) = _split_comparison(block, low, high)
        exact = exact_sq_distances(real, generated, rows + start, cols).float().sqrt()
        exact_inside = exact < real_radius[rows + start]
        balls_containing += inside.float().sum(dim=0).long()
        balls_containing.index_add_(0, cols, exact_inside.long())
        covered[start:stop] |= inside.any(dim=1)
        covered[rows[exact_inside] + start] = True
        # d(real_i, generated_j) < radius(generated_j): recall.
        margin = bound.max() + RELATIVE_MARGIN * generated_threshold
        low = (generated_threshold - margin).to(block.dtype).unsqueeze(0)
        high = (generated_threshold + margin).to(block.dtype).unsqueeze(0)
        inside, (rows, cols) = _split_comparison(block, low, high)
        exact = exact_sq_distances(real, generated, rows + start, cols).float().sqrt()
        exact_inside = exact < generated_radius[cols]
        recalled[start:stop] |= inside.any(dim=1)
        recalled[rows[exact_inside] + start] = True

    return {
        "precision": (balls_containing > 0).double().mean(),
        "recall": recalled.double().mean(),
        "density": balls_containing.double().sum() / (k * generated.shape[0]),
        "coverage": covered.double().mean(),
    }
