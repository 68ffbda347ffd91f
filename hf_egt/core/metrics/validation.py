"""Sample sizes: the fewest samples per group and side each estimator of the registry accepts
(``minimum_samples``), and the one gate that finds the groups below a minimum (``groups_below_minimum``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from hf_egt.core.metrics.quantized import SAMPLES_PER_CLUSTER
from hf_egt.core.metrics.registry import KNN_DIVERGENCES, QUANTIZED, check_divergence


def minimum_samples(divergence: str, **estimator_kwargs) -> int:
    """The fewest samples per group and per side (real, generated) that ``divergence`` accepts.

    - k-NN estimators (KL, reverse KL, Hellinger, chi^2, PRDC): ``k + 1`` (a sample's k-th nearest *other* sample);
    - pooled k-NN classifier estimators (JS, TV, PR) and the Fréchet distance: 2;
    - quantised estimators (``quantized_*``, ``mauve``): ten samples per cluster, ``10 * num_clusters`` (20 with
      the default cluster rule, which uses at least 2 clusters).

    These are the sizes at which an estimator is *defined*; whether its value is distinguishable from noise at that
    size is what the report's ``null_floor`` and ``gap_p_value`` say.
    """
    check_divergence(divergence)
    if divergence in QUANTIZED:
        return SAMPLES_PER_CLUSTER * (estimator_kwargs.get("num_clusters") or 2)
    if divergence in KNN_DIVERGENCES:
        return int(estimator_kwargs.get("k", 5)) + 1  # k neighbours besides the point itself
    return 2  # pooled k-NN classifier (js, tv, pr) and the Fréchet distance (a covariance)


def groups_below_minimum(groups: Iterable | Mapping, minimum: int, *, cap: int | None = None) -> dict:
    """The sample-size gate: ``{group: count}`` for every group with fewer than ``minimum`` samples.

    ``groups`` is one label per sample, counted with ``collections.Counter``, or a mapping group -> count already
    made. With ``cap``, a group counts at most ``cap`` samples (the rows it will use). Groups come in the order they
    are first seen; a group that ``groups`` does not hold has no entry.
    """
    counts = Counter(groups)
    if cap is not None:
        counts = {group: min(count, cap) for group, count in counts.items()}
    return {group: count for group, count in counts.items() if count < minimum}
