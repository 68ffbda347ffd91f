"""Summaries of a per-group quantity: the numbers EGT reports beside the per-group values."""

from __future__ import annotations

import math
from collections.abc import Mapping


def summarize_groups(per_group: Mapping[str | int, float], higher_is_worse: bool = True) -> dict:
    """Gap (max - min), ratio (max / min), worst and best group of a per-group value (NaN values are skipped).

    Args:
        per_group: value of each group (a divergence, a loss, a perplexity...).
        higher_is_worse: whether a larger value means worse treatment (True for divergences, losses, perplexities).
    """
    finite = {group: float(value) for group, value in per_group.items() if not math.isnan(float(value))}
    if not finite:
        raise ValueError("`per_group` has no finite value to summarize.")
    highest = max(finite, key=finite.get)
    lowest = min(finite, key=finite.get)
    high, low = finite[highest], finite[lowest]
    return {
        "per_group": {group: float(value) for group, value in per_group.items()},
        "gap": high - low,
        "ratio": high / low if low > 0 else math.inf,
        "worst_group": highest if higher_is_worse else lowest,
        "best_group": lowest if higher_is_worse else highest,
    }
