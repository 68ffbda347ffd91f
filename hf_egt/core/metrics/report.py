"""The EGT report: one divergence per group between real and generated features, its spread, and the older
proportion-based criteria (EGO, MGO) beside it.

It composes the registry's estimators (``estimate``), the input and sample-size checks, and the statistics of
``resampling``; ``tables`` writes the report as markdown."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence

import torch

from hf_egt.core.metrics.inputs import as_features, check_group_labels, check_not_empty, check_pair
from hf_egt.core.metrics.projection import fit_projection
from hf_egt.core.metrics.quantized import (
    default_num_clusters,
    histogram_divergence,
    quantized_labels,
    split_quantized_kwargs,
)
from hf_egt.core.metrics.registry import (
    DIVERGENCES,
    KNN_REFUSED_ABOVE,
    KNN_VALIDATED_DIM,
    QUANTIZED,
    RECOMMENDED_TEXT_DIVERGENCE,
    check_divergence,
)
from hf_egt.core.metrics.resampling import gap_permutation_test, null_floor, resampled_interval
from hf_egt.core.metrics.summary import summarize_groups
from hf_egt.core.metrics.validation import groups_below_minimum, minimum_samples

logger = logging.getLogger(__name__)

# the estimator keywords that `estimate` turns into a projection of the pair before a non-quantised estimator
PREPROCESSING_KWARGS = ("pca", "normalize")


def default_preprocessing(divergence: str, dim: int, estimator_kwargs: dict) -> dict:
    """The projection ``estimate`` applies before a non-quantised estimator: the caller's ``pca`` / ``normalize``,
    else PCA to ``KNN_VALIDATED_DIM`` components above that dimension, else none (``{}``)."""
    if divergence in QUANTIZED:
        return {}
    given = {key: estimator_kwargs[key] for key in PREPROCESSING_KWARGS if key in estimator_kwargs}
    if given or dim <= KNN_VALIDATED_DIM:
        return given
    return {"pca": KNN_VALIDATED_DIM}


def estimate(real, generated, divergence: str = "kl", **estimator_kwargs) -> torch.Tensor:
    """One divergence (a name of ``DIVERGENCES``) between two feature sets, as a 0-d tensor.

    For the k-NN and Fréchet estimators, ``pca`` and ``normalize`` (see ``hf_egt.core.metrics.projection``) preprocess
    both sets with a projection fitted on the pair; above ``KNN_VALIDATED_DIM`` features, without them, a PCA to
    ``KNN_VALIDATED_DIM`` components is fitted on the pair (``default_preprocessing``), and an explicit projection
    that leaves more dimensions is computed with a warning that the estimator is not validated there. The quantised
    estimators take ``pca`` and ``normalize`` as codebook settings.
    """
    check_divergence(divergence)
    if divergence not in QUANTIZED:
        real, generated = as_features(real, "real"), as_features(generated, "generated")
        check_pair(real, generated)
        preprocessing = default_preprocessing(divergence, real.shape[1], estimator_kwargs)
        estimator_kwargs = {key: value for key, value in estimator_kwargs.items() if key not in PREPROCESSING_KWARGS}
        if preprocessing:
            projection = fit_projection(torch.cat([real.double(), generated.double()]), **preprocessing)
            real, generated = projection(real), projection(generated)
        if divergence in KNN_REFUSED_ABOVE and real.shape[1] > KNN_REFUSED_ABOVE[divergence][0]:
            limit, reason = KNN_REFUSED_ABOVE[divergence]
            raise ValueError(
                f"`divergence`={divergence!r} is refused on {real.shape[1]}-d features (after any projection): "
                f"{reason}. Use 'quantized_{divergence}' (exact on each group's histograms), or pass `pca={limit}` "
                f"to measure it on {limit} principal components."
            )
        if real.shape[1] > KNN_VALIDATED_DIM:
            warnings.warn(
                f"{divergence} on {real.shape[1]}-d features: the k-NN and Fréchet estimators are validated up to "
                f"{KNN_VALIDATED_DIM} dimensions (docs/metric.md) and can be far off above (a null case may read as a "
                f"large divergence); leave `pca` unset for a PCA to {KNN_VALIDATED_DIM} components, or use a "
                "quantised divergence.",
                stacklevel=2,
            )
    return DIVERGENCES[divergence][0](real, generated, **estimator_kwargs)


def _indices_by_group(labels: Sequence) -> dict:
    by_group: dict = {}
    for index, label in enumerate(labels):
        by_group.setdefault(label, []).append(index)
    return {group: torch.tensor(indices) for group, indices in by_group.items()}


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


DEFAULT_RESAMPLES = {"quantized": (200, 200), "knn": (20, 100)}  # (n_bootstrap, n_permutations)


def pair_statistic(divergence: str, estimator_kwargs: dict) -> Callable[..., torch.Tensor]:
    """``statistic(real, generated)``: ``estimate`` of ``divergence`` on one pair of feature sets, every fitted step
    (projection, codebook) fitted on that pair alone. The one statistic behind a report's per-group values, floors,
    permutation p-value and overall value."""

    def statistic(real, generated) -> torch.Tensor:
        return estimate(real, generated, divergence, **estimator_kwargs)

    return statistic


def _label_statistic(divergence: str, num_clusters: int, histogram_kwargs: dict) -> Callable[..., torch.Tensor]:
    """``statistic(real labels, generated labels)``: the exact histogram divergence of two sets of cluster labels
    (the bootstrap of a quantised value resamples labels, conditionally on the group's codebook)."""
    name = QUANTIZED[divergence]

    def statistic(real_labels, generated_labels) -> torch.Tensor:
        real_counts = torch.bincount(real_labels, minlength=num_clusters)
        generated_counts = torch.bincount(generated_labels, minlength=num_clusters)
        return histogram_divergence(name, real_counts, generated_counts, **histogram_kwargs)

    return statistic


def _check_group_sizes(divergence: str, counts: dict, estimator_kwargs: dict) -> int:
    """Raise before any work if a compared group has fewer samples than ``minimum_samples``; return that minimum."""
    minimum = minimum_samples(divergence, **estimator_kwargs)
    compared = [group for group, count in counts.items() if count["real"] and count["generated"]]
    below = {
        side: groups_below_minimum({group: counts[group][side] for group in compared}, minimum)
        for side in ("real", "generated")
    }
    short = [
        f"Group {group!r}: `{side}` has {below[side][group]} sample(s)"
        for group in compared
        for side in ("real", "generated")
        if group in below[side]
    ]
    if short:
        raise ValueError(
            f"{'; '.join(short)}; but {divergence} with "
            f"{ {k: v for k, v in estimator_kwargs.items() if k != 'chunk_size'} or 'its defaults' } needs at least "
            f"{minimum} per group and side (hf_egt.core.metrics.minimum_samples). Collect at least {minimum} "
            "real and generated samples for each such group, merge small groups, or choose an estimator with a "
            "smaller minimum."
        )
    return minimum


def egt_report(
    real_features,
    real_groups,
    *,
    generated_features,
    generated_groups,
    divergence: str = RECOMMENDED_TEXT_DIVERGENCE,
    n_bootstrap: int | None = None,
    seed: int = 0,
    confidence: float = 0.95,
    device: str | torch.device | None = None,
    n_null: int = 20,
    n_permutations: int | None = None,
    **estimator_kwargs,
) -> dict:
    """Per-group divergence between real and generated samples (EGT), with intervals, each group's noise floor,
    the gap, its permutation p-value, the ratio and the worst group.

    The generated side is keyword-only: ``egt_report(real, real_groups, generated_features=...,
    generated_groups=...)``. The `evaluate` module takes them the other way round (``predictions`` = generated,
    ``references`` = real), so a positional call could silently swap the two sides of every divergence.

    Args:
        real_features: ``(n, d)`` features of real samples (tensor, array or list of vectors).
        real_groups: ``n`` group labels (str or int) of the real samples.
        generated_features: ``(m, d)`` features of generated samples; ``m`` may differ from ``n``.
        generated_groups: ``m`` group labels of the generated samples.
        divergence: a name of ``DIVERGENCES`` (default ``RECOMMENDED_TEXT_DIVERGENCE``, as the `evaluate` module and
            ``hf-egt evaluate``). k-NN family: "kl", "reverse_kl", "js", "tv", "hellinger"
            (squared), "chi2", "pr" (with ``pr_lambda``), "frechet", "precision", "recall", "density",
            "coverage". Quantised family (exact on histograms over a k-means codebook of each group's own pooled
            samples, one cluster count for all groups):
            "quantized_kl", "quantized_reverse_kl", "quantized_js", "quantized_tv", "quantized_hellinger",
            "quantized_chi2", "quantized_pr", "mauve" (higher is better).
        n_bootstrap: resampling replicates per group for the intervals (0: none, NaN bounds). Default: 200
            bootstrap replicates for the quantised family, 20 half-samples for the others.
        seed: seed of the codebooks and of all resampling.
        confidence: level of the intervals, and quantile of the null values that makes the floor.
        device: where to compute (default: where the features are).
        n_null: random half-splits of each group's real samples for its ``null_floor`` (0: none).
        n_permutations: label permutations for ``gap_p_value`` (0: none). Default: 1000 for the quantised family,
            100 for the others.
        **estimator_kwargs: passed to the estimator (``k``, ``n_neighbors``, ``pr_lambda``, ``adaptive``,
            ``chunk_size``; ``pca`` and ``normalize`` for a projection fitted on each group's pair; ``num_clusters``
            (default: MAUVE's rule on the smallest compared group, the same for every group), ``smoothing``,
            ``kmeans_n_init``, ``kmeans_max_iter``, ``mauve_scaling`` for the quantised family).

    Every group with both sides is checked against ``minimum_samples`` before any computation.

    A group's value is ``estimate(real_g, generated_g, divergence, ...)``: every fitted step (projection, codebook)
    is fitted on that group's own real and generated samples, so where the other groups lie changes nothing. Its
    null floor and the permutation p-value refit them on every half-split and permuted group (the same statistic);
    the bootstrap intervals of the quantised family resample cluster labels on the group's codebook.

    Returns:
        A JSON-serialisable dict: ``divergence``, ``higher_is_worse``, ``per_group`` (NaN for a group seen on one
        side only), ``gap``, ``gap_p_value``, ``gap_significant`` (p-value below ``1 - confidence``), ``ratio``,
        ``worst_group``, ``best_group``, ``overall`` (all groups pooled), ``counts[g] = {"real": n_g,
        "generated": m_g}``, ``ci[g] = [low, high]``, ``null_floor[g]``, ``within_floor[g]`` (the value is no
        worse than two halves of the group's own data), ``missing[g]`` (the side a group lacks),
        ``num_clusters`` (quantised family), ``projection`` (the ``pca`` / ``normalize`` fitted on each pair before
        a non-quantised estimator, ``KNN_VALIDATED_DIM``), ``generated_share``, ``data_share``, ``ego_gap``,
        ``mgo_gap``, ``estimator_kwargs``, ``minimum_samples``.
    """
    check_divergence(divergence)
    family = "quantized" if divergence in QUANTIZED else "knn"
    n_bootstrap = DEFAULT_RESAMPLES[family][0] if n_bootstrap is None else n_bootstrap
    n_permutations = DEFAULT_RESAMPLES[family][1] if n_permutations is None else n_permutations
    for name, count in (("n_bootstrap", n_bootstrap), ("n_null", n_null), ("n_permutations", n_permutations)):
        if count < 0:
            raise ValueError(f"`{name}` must be >= 0, got {count}.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence}.")
    higher_is_worse = DIVERGENCES[divergence][1]
    check_not_empty(real_features, "real_features")
    check_not_empty(generated_features, "generated_features")
    real = as_features(real_features, "real_features")
    generated = as_features(generated_features, "generated_features")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(
            f"`real_features` and `generated_features` have different dimensions: {real.shape[1]} vs "
            f"{generated.shape[1]}; both must come from the same feature extractor."
        )
    if device is not None:
        real, generated = real.to(device), generated.to(device)
    real_by_group = _indices_by_group(check_group_labels(real_groups, "real_groups", real.shape[0], "real_features"))
    generated_by_group = _indices_by_group(
        check_group_labels(generated_groups, "generated_groups", generated.shape[0], "generated_features")
    )
    groups = list(dict.fromkeys([*real_by_group, *generated_by_group]))
    empty = torch.empty(0, dtype=torch.long)
    counts = {
        group: {"real": len(real_by_group.get(group, empty)), "generated": len(generated_by_group.get(group, empty))}
        for group in groups
    }
    missing = {
        group: "real" if count["real"] == 0 else "generated"
        for group, count in counts.items()
        if count["real"] == 0 or count["generated"] == 0
    }
    for group, side in missing.items():
        warnings.warn(f"Group {group!r} has no {side} samples; its {divergence} is reported as NaN.", stacklevel=2)
    if len(missing) == len(groups):
        raise ValueError(
            f"No group has both real and generated samples: `real_groups` has {sorted(map(str, real_by_group))}, "
            f"`generated_groups` has {sorted(map(str, generated_by_group))}."
        )
    minimum = _check_group_sizes(divergence, counts, estimator_kwargs)
    compared = [group for group in groups if group not in missing]
    settings = dict(estimator_kwargs)
    num_clusters = None
    if family == "quantized":
        # One resolution for every group: MAUVE's rule on the smallest compared side (or the caller's count), so that
        # every group is measured by the same estimator, each on a codebook of its own pooled samples.
        smallest = min(min(counts[group].values()) for group in compared)
        num_clusters = settings.get("num_clusters") or default_num_clusters(smallest)
        settings.update(num_clusters=num_clusters, seed=seed)
        codebook_kwargs, histogram_kwargs = split_quantized_kwargs(settings)
        codebook_kwargs.pop("chunk_size", None)
        label_statistic = _label_statistic(divergence, num_clusters, histogram_kwargs)
    statistic = pair_statistic(divergence, settings)
    method = "bootstrap" if family == "quantized" else "subsampling"
    real_rows = {group: real_by_group[group].to(real.device) for group in compared}
    generated_rows = {group: generated_by_group[group].to(generated.device) for group in compared}

    per_group, ci, floor, within = {}, {}, {}, {}
    generator = torch.Generator().manual_seed(seed)
    # Halves must be valid inputs: k-NN estimators need their minimum; a quantised estimator needs as many pooled
    # samples as clusters, and halves below the minimum only make the floor larger (more conservative).
    floor_minimum = max(2, math.ceil(num_clusters / 2)) if family == "quantized" else minimum
    floor_quantile = confidence if higher_is_worse else 1 - confidence
    for group in groups:
        per_group[group], ci[group], floor[group], within[group] = math.nan, [math.nan, math.nan], math.nan, None
        if group in missing:
            continue
        group_real, group_generated = real[real_rows[group]], generated[generated_rows[group]]
        try:
            if family == "quantized":  # the value of `statistic`, keeping the labels for the bootstrap
                samples = quantized_labels(group_real, group_generated, **codebook_kwargs)[:2]
                per_group[group] = float(label_statistic(*samples))
            else:
                samples = (group_real, group_generated)
                per_group[group] = float(statistic(*samples))
        except ValueError as error:
            raise ValueError(f"Group {group!r}: {error}") from error
        if n_bootstrap:
            try:
                ci[group] = resampled_interval(
                    *samples,
                    label_statistic if family == "quantized" else statistic,
                    per_group[group],
                    n_bootstrap,
                    generator,
                    confidence,
                    method,
                    lower_bound=0.0 if family == "quantized" else None,  # histogram divergences and MAUVE are >= 0
                )
            except ValueError as error:
                warnings.warn(
                    f"Group {group!r}: no confidence interval, half-samples are too small: {error}", stacklevel=2
                )
        if n_null:
            if len(group_real) // 2 < floor_minimum:
                warnings.warn(
                    f"Group {group!r}: no null floor, halves of its {len(group_real)} real samples are below the "
                    f"{floor_minimum} that {divergence} needs; collect at least {2 * floor_minimum} real samples.",
                    stacklevel=2,
                )
            else:
                floor[group], _ = null_floor(group_real, statistic, n_null, generator, floor_quantile)
                value = per_group[group]
                within[group] = bool(value <= floor[group] if higher_is_worse else value >= floor[group])
        logger.info("%s of group %r: %.4f (null floor %.4f)", divergence, group, per_group[group], floor[group])

    _, p_value = gap_permutation_test(real, real_rows, generated, generated_rows, statistic, n_permutations, generator)
    summary = summarize_groups(per_group, higher_is_worse=higher_is_worse)
    return {
        "divergence": divergence,
        "higher_is_worse": higher_is_worse,
        "per_group": summary["per_group"],
        "gap": summary["gap"],
        "gap_p_value": p_value,
        "gap_significant": None if math.isnan(p_value) else bool(p_value < 1 - confidence),
        "ratio": summary["ratio"],
        "worst_group": summary["worst_group"],
        "best_group": summary["best_group"],
        "overall": float(statistic(real, generated)),
        "counts": counts,
        "ci": ci,
        "null_floor": floor,
        "within_floor": within,
        "missing": missing,
        **proportion_criteria(
            {group: counts[group]["real"] for group in groups}, {group: counts[group]["generated"] for group in groups}
        ),
        "n_bootstrap": n_bootstrap,
        "interval_method": method,
        "n_null": n_null,
        "n_permutations": n_permutations,
        "confidence": confidence,
        "num_clusters": num_clusters,
        # the projection fitted on each pair before a non-quantised estimator (None: the features as given)
        "projection": default_preprocessing(divergence, real.shape[1], estimator_kwargs) or None,
        "minimum_samples": minimum,
        "estimator_kwargs": {key: value for key, value in estimator_kwargs.items() if key != "chunk_size"},
    }
