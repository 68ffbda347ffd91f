"""Likelihood-based per-group quality of a language model: NLL per token and perplexity on each group's text, and the
units that stay comparable across groups whose texts tokenize differently (languages): NLL per sequence (nats per
text; for parallel texts, the same content in every group) and bits per UTF-8 byte."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from hf_egt.core.groups import group_means, group_sums
from hf_egt.core.metrics.summary import summarize_groups


def _as_vector(values, name: str) -> torch.Tensor:
    vector = torch.as_tensor(np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values))
    vector = vector.double().flatten()
    if not torch.isfinite(vector).all():
        raise ValueError(f"`{name}` has NaN or infinite entries; all entries must be finite.")
    return vector


def group_token_nll(nll_sums: torch.Tensor, token_counts: torch.Tensor, group_ids: torch.Tensor, num_groups: int):
    """Per-group NLL per token: sum of the group's NLL sums over the sum of its token counts (a token-weighted mean,
    as a perplexity evaluation computes it)."""
    nll, _ = group_sums(nll_sums, group_ids, num_groups)
    tokens, _ = group_sums(token_counts, group_ids, num_groups)
    return group_means(nll, tokens)


def perplexity(nll_per_token: float) -> float:
    """``exp(nll_per_token)``, ``inf`` beyond float range (not an ``OverflowError``)."""
    try:
        return math.exp(nll_per_token)  # NaN stays NaN
    except OverflowError:
        return math.inf


def _ratios(numerators: list[float], denominators: list[float], groups: list, scale: float = 1.0) -> dict:
    """``{group: scale * numerator / denominator}`` (NaN where the denominator is 0)."""
    return {
        group: scale * float(top / bottom) if bottom > 0 else math.nan
        for group, top, bottom in zip(groups, numerators, denominators)
    }


def _per_group_vector(values, groups: list, name: str) -> torch.Tensor:
    vector = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(vector) != len(groups):
        raise ValueError(f"`{name}` must have one entry per group ({len(groups)}), got {len(vector)}.")
    return vector


def group_likelihood(
    group_nll: torch.Tensor,
    group_tokens: torch.Tensor,
    groups: Sequence[str | int],
    *,
    total_nll: float | None = None,
    total_tokens: float | None = None,
    group_sequences: torch.Tensor | None = None,
    group_bytes: torch.Tensor | None = None,
) -> dict:
    """Per-group NLL per token and perplexity from each group's summed NLL and token count: the one computation
    behind ``likelihood_report``, the trainers' per-group evaluation metrics and ``hf-egt evaluate``.

    Args:
        group_nll: per group (in the order of ``groups``), the summed negative log-likelihood (nats) of its tokens.
        group_tokens: per group, its number of scored tokens; a group with none gets NaN (the summaries skip it).
        groups: the group labels.
        total_nll, total_tokens: the totals behind ``overall`` when they were summed elsewhere (default: the sums of
            ``group_nll`` and ``group_tokens``).
        group_sequences: per group, its number of scored texts: adds ``sequence_nll`` (nats per text).
        group_bytes: per group, the UTF-8 bytes of its scored tokens: adds ``bits_per_byte``
            (``group_nll / (group_bytes * ln 2)``).

    Returns:
        ``{"nll": {...}, "perplexity": {...}}`` (and ``"sequence_nll"``, ``"bits_per_byte"`` when their counts are
        given), each with ``per_group`` and ``overall`` and, when a group has a token, ``summarize_groups``'s ``gap``,
        ``ratio``, ``worst_group`` and ``best_group``.
    """
    groups = list(groups)
    group_nll = _per_group_vector(group_nll, groups, "group_nll")
    group_tokens = _per_group_vector(group_tokens, groups, "group_tokens")
    nll = _ratios(group_nll.tolist(), group_tokens.tolist(), groups)
    total_nll = float(group_nll.sum()) if total_nll is None else float(total_nll)
    total_tokens = float(group_tokens.sum()) if total_tokens is None else float(total_tokens)
    overall = total_nll / total_tokens if total_tokens > 0 else math.nan
    units = [
        ("nll", nll, overall),
        ("perplexity", {group: perplexity(value) for group, value in nll.items()}, perplexity(overall)),
    ]
    # The other units pool the same groups' sums: their overall is over the groups given (``total_*`` are per token).
    extra_units = (
        ("sequence_nll", group_sequences, "group_sequences", 1.0),
        ("bits_per_byte", group_bytes, "group_bytes", 1 / math.log(2)),
    )
    for name, counts, argument, scale in extra_units:
        if counts is not None:
            counts = _per_group_vector(counts, groups, argument)
            whole = scale * float(group_nll.sum() / counts.sum()) if counts.sum() > 0 else math.nan
            units.append((name, _ratios(group_nll.tolist(), counts.tolist(), groups, scale), whole))
    result = {}
    for name, per_group, whole in units:
        scored = any(not math.isnan(value) for value in per_group.values())
        summary = summarize_groups(per_group) if scored else {"per_group": per_group}
        result[name] = {**summary, "overall": whole}
    return result


def likelihood_report(
    nll_sums,
    token_counts,
    groups,
    n_bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    byte_counts=None,
) -> dict:
    """Per-group NLL per token, perplexity and NLL per text of a language model on held-out text of each group.

    Args:
        nll_sums: per example, the summed negative log-likelihood (nats) of its scored tokens.
        token_counts: per example, the number of scored tokens (> 0).
        groups: per example, its group label (str or int).
        n_bootstrap: bootstrap resamples of the examples of each group for the confidence intervals (0: none).
        seed: seed of the bootstrap.
        confidence: level of the intervals.
        byte_counts: per example, the UTF-8 bytes of its scored tokens: adds ``bits_per_byte``.

    Returns:
        A JSON-serialisable dict: ``nll``, ``perplexity``, ``sequence_nll`` (nats per example) and, with
        ``byte_counts``, ``bits_per_byte``, each with ``per_group``, ``gap``, ``ratio``, ``worst_group``,
        ``best_group``, ``overall``, ``ci``; and ``counts[g] = {"examples", "tokens"}`` (and ``"bytes"``).
    """
    nll_sums = _as_vector(nll_sums, "nll_sums")
    token_counts = _as_vector(token_counts, "token_counts")
    labels = groups.tolist() if isinstance(groups, torch.Tensor | np.ndarray) else list(groups)
    byte_counts = None if byte_counts is None else _as_vector(byte_counts, "byte_counts")
    lengths = [len(nll_sums), len(token_counts), len(labels)] + ([] if byte_counts is None else [len(byte_counts)])
    if len(set(lengths)) != 1:
        raise ValueError(
            "`nll_sums`, `token_counts`, `groups` (and `byte_counts`) must have one entry per example, got lengths "
            f"{lengths}."
        )
    if (token_counts <= 0).any():
        raise ValueError("`token_counts` must be positive for every example (an example with no scored token).")
    names = list(dict.fromkeys(labels))
    group_ids = torch.tensor([names.index(label) for label in labels])
    ones = torch.ones_like(nll_sums)
    # unit -> per-example denominators and scale of ``scale * sum(nll) / sum(denominators)``
    units = {"nll": (token_counts, 1.0), "sequence_nll": (ones, 1.0)}
    if byte_counts is not None:
        units["bits_per_byte"] = (byte_counts, 1 / math.log(2))

    intervals = {unit: {name: [math.nan, math.nan] for name in names} for unit in units}
    if n_bootstrap:
        generator = torch.Generator().manual_seed(seed)
        replicates: dict[str, list[torch.Tensor]] = {unit: [] for unit in units}
        for _ in range(n_bootstrap):
            # Resample the examples of each group with replacement (the group sizes stay fixed).
            sample = torch.cat(
                [
                    members[torch.randint(len(members), (len(members),), generator=generator)]
                    for members in (torch.nonzero(group_ids == g).flatten() for g in range(len(names)))
                ]
            )
            for unit, (denominators, scale) in units.items():
                values = group_token_nll(nll_sums[sample], denominators[sample], group_ids[sample], len(names))
                replicates[unit].append(scale * values)
        tail = (1 - confidence) / 2
        quantiles = torch.tensor([tail, 1 - tail], dtype=torch.float64)
        for unit, values in replicates.items():
            bounds = torch.quantile(torch.stack(values), quantiles, dim=0)
            intervals[unit] = {name: [float(bounds[0, g]), float(bounds[1, g])] for g, name in enumerate(names)}

    sums, _ = group_sums(nll_sums, group_ids, len(names))
    tokens, _ = group_sums(token_counts, group_ids, len(names))
    examples, _ = group_sums(ones, group_ids, len(names))
    group_bytes = None if byte_counts is None else group_sums(byte_counts, group_ids, len(names))[0]
    point = group_likelihood(
        sums,
        tokens,
        names,
        total_nll=nll_sums.sum(),
        total_tokens=token_counts.sum(),
        group_sequences=examples,
        group_bytes=group_bytes,
    )
    report = {unit: {**point[unit], "ci": intervals[unit]} for unit in units}
    report["perplexity"] = {
        **point["perplexity"],
        "ci": {name: [math.exp(low), math.exp(high)] for name, (low, high) in intervals["nll"].items()},
    }
    report["counts"] = {
        name: {"examples": int((group_ids == g).sum()), "tokens": int(token_counts[group_ids == g].sum())}
        | ({} if byte_counts is None else {"bytes": int(byte_counts[group_ids == g].sum())})
        for g, name in enumerate(names)
    }
    return report
