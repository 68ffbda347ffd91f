"""Likelihood-based per-group quality of a language model: NLL per token and perplexity on each group's text."""

from __future__ import annotations

import math

import numpy as np
import torch

from hf_egt.core.metrics.summary import summarize_groups
from hf_egt.core.objective import group_means, group_sums


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
    nll = group_token_nll(nll_sums, token_counts, group_ids, len(names))

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

    overall = float(nll_sums.sum() / token_counts.sum())
    nll_summary = summarize_groups({name: float(nll[g]) for g, name in enumerate(names)})
    ppl_summary = summarize_groups({name: math.exp(float(nll[g])) for g, name in enumerate(names)})
    return {
        "nll": {**nll_summary, "overall": overall, "ci": intervals},
        "perplexity": {
            **ppl_summary,
            "overall": math.exp(overall),
            "ci": {name: [math.exp(low), math.exp(high)] for name, (low, high) in intervals.items()},
        },
        "counts": {
            name: {"examples": int((group_ids == g).sum()), "tokens": int(token_counts[group_ids == g].sum())}
            for g, name in enumerate(names)
        },
    }
