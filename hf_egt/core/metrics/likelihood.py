"""Likelihood-based per-group quality of a language model: NLL per token and perplexity on each group's text."""

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


def group_likelihood(
    group_nll: torch.Tensor,
    group_tokens: torch.Tensor,
    groups: Sequence[str | int],
    *,
    total_nll: float | None = None,
    total_tokens: float | None = None,
) -> dict:
    """Per-group NLL per token and perplexity from each group's summed NLL and token count: the one computation
    behind ``likelihood_report``, the trainers' per-group evaluation metrics and ``hf-egt evaluate``.

    Args:
        group_nll: per group (in the order of ``groups``), the summed negative log-likelihood (nats) of its tokens.
        group_tokens: per group, its number of scored tokens; a group with none gets NaN (the summaries skip it).
        groups: the group labels.
        total_nll, total_tokens: the totals behind ``overall`` when they were summed elsewhere (default: the sums of
            ``group_nll`` and ``group_tokens``).

    Returns:
        ``{"nll": {...}, "perplexity": {...}}``, each with ``per_group`` and ``overall`` and, when a group has a
        token, ``summarize_groups``'s ``gap``, ``ratio``, ``worst_group`` and ``best_group``.
    """
    group_nll = torch.as_tensor(group_nll, dtype=torch.float64).flatten()
    group_tokens = torch.as_tensor(group_tokens, dtype=torch.float64).flatten()
    groups = list(groups)
    if not len(group_nll) == len(group_tokens) == len(groups):
        raise ValueError(
            f"`group_nll`, `group_tokens` and `groups` must have one entry per group, got lengths {len(group_nll)}, "
            f"{len(group_tokens)} and {len(groups)}."
        )
    nll = {
        group: float(total / count) if count > 0 else math.nan
        for group, total, count in zip(groups, group_nll.tolist(), group_tokens.tolist())
    }
    total_nll = float(group_nll.sum()) if total_nll is None else float(total_nll)
    total_tokens = float(group_tokens.sum()) if total_tokens is None else float(total_tokens)
    overall = total_nll / total_tokens if total_tokens > 0 else math.nan
    result = {}
    for name, per_group, whole in (
        ("nll", nll, overall),
        ("perplexity", {group: perplexity(value) for group, value in nll.items()}, perplexity(overall)),
    ):
        scored = any(not math.isnan(value) for value in per_group.values())
        summary = summarize_groups(per_group) if scored else {"per_group": per_group}
        result[name] = {**summary, "overall": whole}
    return result


def likelihood_report(
    nll_sums, token_counts, groups, n_bootstrap: int = 200, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Per-group NLL per token and perplexity of a language model on held-out text of each group.

    Args:
        nll_sums: per example, the summed negative log-likelihood (nats) of its scored tokens.
        token_counts: per example, the number of scored tokens (> 0).
        groups: per example, its group label (str or int).
        n_bootstrap: bootstrap resamples of the examples of each group for the confidence intervals (0: none).
        seed: seed of the bootstrap.
        confidence: level of the intervals.

    Returns:
        A JSON-serialisable dict: ``nll`` and ``perplexity`` (each with ``per_group``, ``gap``, ``ratio``,
        ``worst_group``, ``best_group``, ``overall``, ``ci``) and ``counts[g] = {"examples", "tokens"}``.
    """
    nll_sums = _as_vector(nll_sums, "nll_sums")
    token_counts = _as_vector(token_counts, "token_counts")
    labels = groups.tolist() if isinstance(groups, torch.Tensor | np.ndarray) else list(groups)
    if not len(nll_sums) == len(token_counts) == len(labels):
        raise ValueError(
            f"`nll_sums`, `token_counts` and `groups` must have one entry per example, got lengths {len(nll_sums)}, "
            f"{len(token_counts)} and {len(labels)}."
        )
    if (token_counts <= 0).any():
        raise ValueError("`token_counts` must be positive for every example (an example with no scored token).")
    names = list(dict.fromkeys(labels))
    group_ids = torch.tensor([names.index(label) for label in labels])

    intervals = {name: [math.nan, math.nan] for name in names}
    if n_bootstrap:
        generator = torch.Generator().manual_seed(seed)
        replicates = []
        for _ in range(n_bootstrap):
            # Resample the examples of each group with replacement (the group sizes stay fixed).
            sample = torch.cat(
                [
                    members[torch.randint(len(members), (len(members),), generator=generator)]
                    for members in (torch.nonzero(group_ids == g).flatten() for g in range(len(names)))
                ]
            )
            replicates.append(group_token_nll(nll_sums[sample], token_counts[sample], group_ids[sample], len(names)))
        tail = (1 - confidence) / 2
        bounds = torch.quantile(torch.stack(replicates), torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
        intervals = {name: [float(bounds[0, g]), float(bounds[1, g])] for g, name in enumerate(names)}

    sums, _ = group_sums(nll_sums, group_ids, len(names))
    tokens, _ = group_sums(token_counts, group_ids, len(names))
    point = group_likelihood(sums, tokens, names, total_nll=nll_sums.sum(), total_tokens=token_counts.sum())
    return {
        "nll": {**point["nll"], "ci": intervals},
        "perplexity": {
            **point["perplexity"],
            "ci": {name: [math.exp(low), math.exp(high)] for name, (low, high) in intervals.items()},
        },
        "counts": {
            name: {"examples": int((group_ids == g).sum()), "tokens": int(token_counts[group_ids == g].sum())}
            for g, name in enumerate(names)
        },
    }
