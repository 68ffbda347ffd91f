"""The EGT report: one divergence per group between real and generated features, its spread, and the older
proportion-based criteria (EGO, MGO) beside it."""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .divergences import (
    chi2_divergence,
    jensen_shannon_divergence,
    kl_divergence,
    pr_divergence,
    reverse_kl_divergence,
    squared_hellinger_distance,
    total_variation_distance,
)
from .frechet import frechet_distance
from .prdc import PRDC_KEYS, prdc
from .summary import summarize_groups
from .validation import as_features

logger = logging.getLogger(__name__)


def _prdc_value(real, generated, key: str, k: int = 5, chunk_size: int | None = None) -> torch.Tensor:
    return prdc(real, generated, k=k, chunk_size=chunk_size)[key]


# name -> (estimator(real, generated, **kwargs) -> 0-d tensor, higher_is_worse)
DIVERGENCES: dict[str, tuple[Callable[..., torch.Tensor], bool]] = {
    "kl": (kl_divergence, True),
    "reverse_kl": (reverse_kl_divergence, True),
    "js": (jensen_shannon_divergence, True),
    "tv": (total_variation_distance, True),
    "hellinger": (squared_hellinger_distance, True),
    "chi2": (chi2_divergence, True),
    "pr": (pr_divergence, True),
    "frechet": (frechet_distance, True),
    **{key: (functools.partial(_prdc_value, key=key), False) for key in PRDC_KEYS},
}


def estimate(real, generated, divergence: str = "kl", **estimator_kwargs) -> torch.Tensor:
    """One divergence (a name of ``DIVERGENCES``) between two feature sets, as a 0-d tensor."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown `divergence` {divergence!r}; valid names are {sorted(DIVERGENCES)}.")
    return DIVERGENCES[divergence][0](real, generated, **estimator_kwargs)


def _group_labels(groups, num_rows: int, name: str, features_name: str) -> list:
    """Group labels as a list of str or int (JSON keys), one per feature row."""
    if isinstance(groups, torch.Tensor | np.ndarray):
        groups = groups.tolist()
    groups = [group.item() if isinstance(group, np.generic) else group for group in groups]
    if len(groups) != num_rows:
        raise ValueError(
            f"`{name}` has {len(groups)} labels but `{features_name}` has {num_rows} rows; give one group per row."
        )
    return groups


def _indices_by_group(labels: Sequence) -> dict:
    by_group: dict = {}
    for index, label in enumerate(labels):
        by_group.setdefault(label, []).append(index)
    return {group: torch.tensor(indices) for group, indices in by_group.items()}


def subsampling_interval(
    real: torch.Tensor,
    generated: torch.Tensor,
    statistic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    value: float,
    n_bootstrap: int,
    generator: torch.Generator,
    confidence: float = 0.95,
) -> list[float]:
    """Confidence interval of ``statistic`` by half-sample subsampling (Politis, Romano and Wolf 1999).

    The usual bootstrap resamples with replacement and its duplicated points break every k-NN estimator (zero
    distances). Instead each replicate draws half of each side without replacement; the spread of the replicates
    around their mean, shrunk by sqrt(1/2) to the full sample size, is placed around ``value``. Centring on the
    replicates' mean keeps the estimator's sample-size-dependent bias out of the interval: it covers sampling
    variability, not the estimator's bias.
    """
    replicates = []
    for _ in range(n_bootstrap):
        real_half = torch.randperm(real.shape[0], generator=generator)[: max(2, real.shape[0] // 2)]
        generated_half = torch.randperm(generated.shape[0], generator=generator)[: max(2, generated.shape[0] // 2)]
        replicates.append(float(statistic(real[real_half], generated[generated_half])))
    deviations = (np.asarray(replicates) - np.mean(replicates)) * math.sqrt(0.5)
    tail = (1 - confidence) / 2
    low, high = np.quantile(deviations, [tail, 1 - tail])
    return [value + float(low), value + float(high)]


def proportion_criteria(real_counts: dict, generated_counts: dict) -> dict:
    """Generated and data share of each group, and the EGO / MGO gaps.

    EGO (equal generation probability) asks ``Q(A=a) = 1/|A|``; MGO (matching the data) asks ``Q(A=a) = P(A=a)``.
    Each gap is the largest absolute deviation over groups (0 when the criterion holds exactly).
    """
    groups = list(real_counts)
    total_real, total_generated = sum(real_counts.values()), sum(generated_counts.values())
    data_share = {group: real_counts[group] / total_real if total_real else math.nan for group in groups}
    generated_share = {
        group: generated_counts[group] / total_generated if total_generated else math.nan for group in groups
    }
    uniform = 1 / len(groups)
    return {
        "generated_share": generated_share,
        "data_share": data_share,
        "ego_gap": max(abs(share - uniform) for share in generated_share.values()),
        "mgo_gap": max(abs(generated_share[group] - data_share[group]) for group in groups),
    }


def egt_report(
    real_features,
    real_groups,
    generated_features,
    generated_groups,
    divergence: str = "kl",
    n_bootstrap: int = 20,
    seed: int = 0,
    confidence: float = 0.95,
    device: str | torch.device | None = None,
    **estimator_kwargs,
) -> dict:
    """Per-group divergence between real and generated samples (EGT), with its gap, ratio and worst group.

    Args:
        real_features: ``(n, d)`` features of real samples (tensor, array or list of vectors).
        real_groups: ``n`` group labels (str or int) of the real samples.
        generated_features: ``(m, d)`` features of generated samples; ``m`` may differ from ``n``.
        generated_groups: ``m`` group labels of the generated samples.
        divergence: a name of ``DIVERGENCES``: "kl", "reverse_kl", "js", "tv", "hellinger" (squared), "chi2",
            "pr" (with ``pr_lambda``), "frechet", "precision", "recall", "density", "coverage".
        n_bootstrap: subsampling replicates per group for the confidence intervals (0: no intervals, NaN bounds).
        seed: seed of the subsampling.
        confidence: level of the intervals.
        device: where to compute (default: where the features are).
        **estimator_kwargs: passed to the estimator (``k``, ``n_neighbors``, ``pr_lambda``, ``chunk_size``).

    Returns:
        A JSON-serialisable dict: ``divergence``, ``higher_is_worse``, ``per_group`` (NaN for a group seen on one
        side only), ``gap``, ``ratio``, ``worst_group``, ``best_group``, ``overall`` (all groups pooled),
        ``counts[g] = {"real": n_g, "generated": m_g}``, ``ci[g] = [low, high]``, ``missing[g]`` (the side a group
        lacks), ``generated_share``, ``data_share``, ``ego_gap``, ``mgo_gap``, ``estimator_kwargs``.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown `divergence` {divergence!r}; valid names are {sorted(DIVERGENCES)}.")
    if n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be >= 0, got {n_bootstrap}.")
    estimator, higher_is_worse = DIVERGENCES[divergence]
    statistic = functools.partial(estimator, **estimator_kwargs)
    real = as_features(real_features, "real_features")
    generated = as_features(generated_features, "generated_features")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(
            f"`real_features` and `generated_features` have different dimensions: {real.shape[1]} vs "
            f"{generated.shape[1]}; both must come from the same feature extractor."
        )
    if device is not None:
        real, generated = real.to(device), generated.to(device)
    real_by_group = _indices_by_group(_group_labels(real_groups, real.shape[0], "real_groups", "real_features"))
    generated_by_group = _indices_by_group(
        _group_labels(generated_groups, generated.shape[0], "generated_groups", "generated_features")
    )
    groups = list(dict.fromkeys([*real_by_group, *generated_by_group]))

    per_group, ci, counts, missing = {}, {}, {}, {}
    generator = torch.Generator().manual_seed(seed)
    for group in groups:
        real_idx = real_by_group.get(group, torch.empty(0, dtype=torch.long))
        generated_idx = generated_by_group.get(group, torch.empty(0, dtype=torch.long))
        counts[group] = {"real": len(real_idx), "generated": len(generated_idx)}
        if len(real_idx) == 0 or len(generated_idx) == 0:
            missing[group] = "real" if len(real_idx) == 0 else "generated"
            warnings.warn(
                f"Group {group!r} has no {missing[group]} samples; its {divergence} is reported as NaN.",
                stacklevel=2,
            )
            per_group[group], ci[group] = math.nan, [math.nan, math.nan]
            continue
        group_real, group_generated = real[real_idx.to(real.device)], generated[generated_idx.to(generated.device)]
        try:
            per_group[group] = float(statistic(group_real, group_generated))
        except ValueError as error:
            raise ValueError(f"Group {group!r}: {error}") from error
        ci[group] = [math.nan, math.nan]
        if n_bootstrap:
            try:
                ci[group] = subsampling_interval(
                    group_real, group_generated, statistic, per_group[group], n_bootstrap, generator, confidence
                )
            except ValueError as error:
                warnings.warn(
                    f"Group {group!r}: no confidence interval, half-samples are too small: {error}", stacklevel=2
                )
        logger.info("%s of group %r: %.4f", divergence, group, per_group[group])

    if len(missing) == len(groups):
        raise ValueError(
            f"No group has both real and generated samples: `real_groups` has {sorted(map(str, real_by_group))}, "
            f"`generated_groups` has {sorted(map(str, generated_by_group))}."
        )
    summary = summarize_groups(per_group, higher_is_worse=higher_is_worse)
    return {
        "divergence": divergence,
        "higher_is_worse": higher_is_worse,
        "per_group": summary["per_group"],
        "gap": summary["gap"],
        "ratio": summary["ratio"],
        "worst_group": summary["worst_group"],
        "best_group": summary["best_group"],
        "overall": float(statistic(real, generated)),
        "counts": counts,
        "ci": ci,
        "missing": missing,
        **proportion_criteria(
            {group: counts[group]["real"] for group in groups}, {group: counts[group]["generated"] for group in groups}
        ),
        "n_bootstrap": n_bootstrap,
        "confidence": confidence,
        "estimator_kwargs": {key: value for key, value in estimator_kwargs.items() if key != "chunk_size"},
    }
