"""Summaries of a per-group quantity: the numbers EGT reports beside the per-group values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypedDict


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


class GroupRun(TypedDict, total=False):
    """One run's per-group result, the fields every surface (reports, model cards, the demo, `runs_table`, the
    trainer's `evaluate_groups`, `evaluate_causal_lm`) reads: built by ``group_run``.

    ``overall`` is the same quantity as a per-group value over all groups' data pooled: for perplexity,
    ``exp(sum of NLL / sum of tokens)`` over every scored token (not a mean over batches or groups).
    """

    metric: str
    per_group: dict
    counts: dict
    gap: float
    ratio: float
    worst_group: str | int
    best_group: str | int
    overall: float


RUN_FIELDS = ("per_group", "counts", "gap", "worst_group", "overall")


def group_run(
    per_group: Mapping[str | int, float],
    counts: Mapping[str | int, int],
    overall: float,
    *,
    metric: str = "perplexity",
    higher_is_worse: bool = True,
) -> GroupRun:
    """A ``GroupRun``: ``summarize_groups``' gap, ratio, worst and best group of ``per_group``, with each group's
    evaluated row count and the pooled ``overall``."""
    if set(counts) != set(per_group):
        raise ValueError(
            f"`counts` must name the groups of `per_group`: {sorted(map(str, counts))} vs "
            f"{sorted(map(str, per_group))}."
        )
    summary = summarize_groups(per_group, higher_is_worse=higher_is_worse)
    return GroupRun(
        metric=metric,
        **summary,
        counts={group: int(counts[group]) for group in per_group},
        overall=float(overall),
    )


def check_runs(runs: Mapping[str, Mapping]) -> None:
    """Every run carries the ``RUN_FIELDS``, or a ``ValueError`` naming the run and the missing fields."""
    for name, run in runs.items():
        missing = [field for field in RUN_FIELDS if field not in run]
        if missing:
            raise ValueError(
                f"Run {name!r} lacks {missing}; build each run with hf_egt.core.metrics.group_run (per-group values, "
                "counts and the pooled overall)."
            )
