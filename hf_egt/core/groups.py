"""Per-group reductions shared by the training objective, the trainers and the metric estimators: tensor in, tensor out.

They live apart from ``hf_egt.core.objective`` so that a measurement (``hf_egt.core.metrics``) reduces per group
without depending on the training objective.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch


def group_sums(
    values: torch.Tensor, group_ids: torch.Tensor, num_groups: int, example_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group weighted sums of ``values`` and per-group total weights (counts when unweighted).

    Returns two float tensors of shape ``(num_groups,)``; a group absent from the batch gets 0 in both.
    """
    weights = torch.ones_like(values) if example_weights is None else example_weights.to(values.dtype)
    sums = values.new_zeros(num_groups).index_add(0, group_ids, values * weights)
    counts = values.new_zeros(num_groups).index_add(0, group_ids, weights)
    return sums, counts


def group_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-group means ``sums / counts``, with 0 for groups of zero count."""
    return torch.where(counts > 0, sums / counts.clamp_min(torch.finfo(sums.dtype).tiny), torch.zeros_like(sums))


def label_counts(labels: Iterable) -> dict[str, int]:
    """How many times each group label occurs, keyed by the label as a string, in sorted order (the counts that
    reports, cards and data checks show)."""
    return dict(sorted(Counter(str(label) for label in labels).items()))
