"""Resampling statistics of one estimator: bootstrap or half-sample intervals, the null floor (the estimator between
two halves of a group's own real samples) and the permutation p-value of the gap between groups.

Each takes the statistic as a function ``statistic(real, generated) -> 0-d tensor`` and a seeded ``torch.Generator``;
which estimator, and on which features, is the caller's (``egt_report``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def resampled_interval(
    real,
    generated,
    statistic: Callable,
    value: float,
    n_bootstrap: int,
    generator: torch.Generator,
    confidence: float = 0.95,
    method: str = "subsampling",
    lower_bound: float | None = None,
) -> list[float]:
    """Confidence interval of ``statistic(real, generated)`` from ``n_bootstrap`` resampled replicates.

    - ``"bootstrap"``: each side resampled with replacement at its full size (for histogram estimators, where
      repeated samples are harmless);
    - ``"subsampling"``: half of each side drawn without replacement (Politis, Romano and Wolf 1999), for k-NN
      estimators, which duplicated points break (zero distances). Half-samples drawn without replacement vary about as
      much as full-size estimates (finite-population correction 1 - b/n = 1/2 at b = n/2), so their spread is used
      as it is.

    The replicates' deviations from their own mean are placed around ``value``: the interval covers sampling
    variability, not the estimator's sample-size-dependent bias (that is what ``null_floor`` shows). A statistic that
    cannot go below ``lower_bound`` (a divergence of two histograms cannot be negative) has its interval clipped there.
    """
    replicates = []
    for _ in range(n_bootstrap):
        if method == "bootstrap":
            real_rows = torch.randint(len(real), (len(real),), generator=generator)
            generated_rows = torch.randint(len(generated), (len(generated),), generator=generator)
        else:
            real_rows = torch.randperm(len(real), generator=generator)[: max(2, len(real) // 2)]
            generated_rows = torch.randperm(len(generated), generator=generator)[: max(2, len(generated) // 2)]
        replicates.append(float(statistic(real[real_rows], generated[generated_rows])))
    deviations = np.asarray(replicates) - np.mean(replicates)
    tail = (1 - confidence) / 2
    low, high = np.quantile(deviations, [tail, 1 - tail])
    low, high = value + float(low), value + float(high)
    if lower_bound is not None:
        low, high = max(low, lower_bound), max(high, lower_bound)
    return [low, high]


def null_floor(
    real, statistic: Callable, n_null: int, generator: torch.Generator, quantile: float
) -> tuple[float, list[float]]:
    """The estimator between two disjoint random halves of one group's real samples, ``n_null`` times: the values a
    comparison of a distribution with itself reaches. Returns (the ``quantile`` of those values, the values)."""
    half = len(real) // 2
    values = []
    for _ in range(n_null):
        order = torch.randperm(len(real), generator=generator)
        values.append(float(statistic(real[order[:half]], real[order[half : 2 * half]])))
    return float(np.quantile(values, quantile)), values


def _gap(values) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return max(finite) - min(finite) if len(finite) >= 2 else math.nan


def gap_permutation_test(
    real, real_rows: dict, generated, generated_rows: dict, statistic: Callable, n_permutations: int, generator
) -> tuple[float, float]:
    """``(observed gap, p-value)`` of the gap (max - min over groups) under label permutation.

    The group labels are shuffled among the real samples and, separately, among the generated samples of the
    compared groups, each group keeping its counts: every permuted group then has the pooled quality, and the share
    of permuted gaps at least as large as the observed one (with the usual +1 in numerator and denominator) is the
    p-value of "the groups differ".
    """
    groups = list(real_rows)
    observed = _gap([float(statistic(real[real_rows[g]], generated[generated_rows[g]])) for g in groups])
    if math.isnan(observed) or n_permutations == 0:
        return observed, math.nan
    real_pool = torch.cat([real_rows[g] for g in groups])
    generated_pool = torch.cat([generated_rows[g] for g in groups])
    real_sizes = [len(real_rows[g]) for g in groups]
    generated_sizes = [len(generated_rows[g]) for g in groups]
    exceed = 0
    for _ in range(n_permutations):
        real_split = real_pool[torch.randperm(len(real_pool), generator=generator)].split(real_sizes)
        generated_split = generated_pool[torch.randperm(len(generated_pool), generator=generator)].split(
            generated_sizes
        )
        permuted = [float(statistic(real[r], generated[q])) for r, q in zip(real_split, generated_split)]
        exceed += _gap(permuted) >= observed
    return observed, (1 + exceed) / (1 + n_permutations)
