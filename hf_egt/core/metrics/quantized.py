"""Quantised estimators: every divergence computed exactly on histograms over a k-means codebook of the pair.

The real and generated features of one comparison (one group, in ``egt_report``) are pooled, reduced by PCA to 90 %
explained variance and clustered by seeded k-means (``fit_codebook``), as MAUVE does (MAUVE also L2-normalises each
row: ``normalize=True``; see ``fit_codebook`` for why it is off by default). Each sample
becomes a cluster label, each side a histogram over the same bins, and each divergence is computed *exactly* on the
two empirical histograms (``histogram_divergence``). What is estimated is the divergence between the quantised
distributions, which is at most the divergence between the continuous ones (data processing inequality); in
exchange the estimate is bounded, cheap to resample and usable at a few hundred samples in any dimension.

- One codebook per comparison: a group's value is a function of that group's real and generated samples (and the
  settings) only. A codebook shared by all groups spends its few clusters separating the groups from each other when
  they lie apart in feature space (different languages, domains) and can no longer see a shift *within* a group.
- Cluster count: ``max(2, round(n / 10))`` with ``n`` the smallest per-side sample count of the comparison (MAUVE's
  rule: about ten samples per bin on the smaller side). ``egt_report`` applies it to the smallest compared group
  and uses that one count for every group: the same resolution, hence the same estimator, for all groups.
- Smoothing: KL, reverse KL and chi^2 are infinite as soon as a bin is empty on one side; their histograms get
  ``smoothing`` (default 0.5, the Krichevsky-Trofimov estimator, as MAUVE* does) added to every bin count before
  normalising. TV, JS, squared Hellinger, the PR divergence, the PR curve and MAUVE are finite on raw histograms and
  use them unsmoothed (MAUVE's own convention).
- MAUVE: the area under the divergence frontier ``(exp(-c KL(Q || R_w)), exp(-c KL(P || R_w)))`` for
  ``R_w = w P + (1 - w) Q`` on ``mauve-text``'s grid of 25 weights in ``[1e-6, 1 - 1e-6]`` plus its two extreme
  points, with ``c = 5`` (mauve-text's defaults); identical to ``mauve.compute_mauve`` given the same histograms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hf_egt.core.metrics.inputs import as_features, check_min_samples, check_pair
from hf_egt.core.metrics.projection import Projection, fit_projection

SAMPLES_PER_CLUSTER = 10
DEFAULT_SMOOTHING = 0.5
MAUVE_SCALING = 5.0
MAUVE_NUM_WEIGHTS = 25


def default_num_clusters(min_samples: int) -> int:
    """MAUVE's rule: about ten samples per cluster on the smallest side compared, at least 2 clusters."""
    return max(2, round(min_samples / SAMPLES_PER_CLUSTER))


@dataclass
class Codebook:
    """A fitted preprocessing and k-means centroids; ``assign`` maps features to cluster labels."""

    projection: Projection
    centroids: torch.Tensor

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """Index of the nearest centroid of each row (``(N,)`` long)."""
        return nearest_centroid(self.projection(features), self.centroids)


def sq_distances_to_centroids(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` squared distances by the Gram expansion in float64 (one matrix product: k-means' cost); relative
    error ~1e-16 of the squared norms, far below any distance between distinct centroids that matters here."""
    points, centroids = points.double(), centroids.to(points.device).double()
    products = torch.addmm(centroids.square().sum(dim=1).unsqueeze(0), points, centroids.T, alpha=-2.0)
    return products.add_(points.square().sum(dim=1, keepdim=True)).clamp_(min=0)


def nearest_centroid(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each point."""
    return sq_distances_to_centroids(points, centroids).argmin(dim=1)


def _kmeans_plus_plus(points: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): each new centre drawn with probability ~ D(x)^2.

    Squared distances to each new centre come from one matrix-vector product on the squared norms (the sequential
    part of k-means' cost), clamped at 0 against round-off.
    """
    sq_norms = points.square().sum(dim=1)

    def sq_distances_to(index: int) -> torch.Tensor:
        return (sq_norms + sq_norms[index] - 2 * (points @ points[index])).clamp_(min=0)

    chosen = [int(torch.randint(points.shape[0], (1,), generator=generator))]
    sq_dist = sq_distances_to(chosen[0])
    for _ in range(1, num_clusters):
        total = float(sq_dist.sum())
        if total == 0:  # fewer distinct points than clusters: the remaining centres duplicate existing ones
            index = int(torch.randint(points.shape[0], (1,), generator=generator))
        else:
            index = int(torch.multinomial(sq_dist.cpu() / total, 1, generator=generator))
        chosen.append(index)
        sq_dist = torch.minimum(sq_dist, sq_distances_to(index))
    return points[torch.tensor(chosen, device=points.device)].clone()


def kmeans(
    points: torch.Tensor, num_clusters: int, n_init: int = 5, max_iter: int = 500, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """Seeded Lloyd k-means with k-means++ seeding, ``n_init`` restarts (the lowest inertia kept).

    Returns ``(centroids, inertia)``. An empty cluster is re-seeded at the point farthest from its centre.
    """
    if not 1 <= num_clusters <= points.shape[0]:
        raise ValueError(f"`num_clusters` must be between 1 and {points.shape[0]} (the samples), got {num_clusters}.")
    generator = torch.Generator().manual_seed(seed)
    best, best_inertia = None, math.inf
    for _ in range(n_init):
        centroids = _kmeans_plus_plus(points, num_clusters, generator)
        labels = None
        for _ in range(max_iter):
            sq_distances = sq_distances_to_centroids(points, centroids)
            new_labels = sq_distances.argmin(dim=1)
            if labels is not None and torch.equal(new_labels, labels):
                break
            labels = new_labels
            counts = torch.bincount(labels, minlength=num_clusters)
            sums = torch.zeros_like(centroids).index_add_(0, labels, points)
            centroids = sums / counts.clamp(min=1).unsqueeze(1).to(points.dtype)
            for empty in (counts == 0).nonzero().flatten().tolist():
                farthest = int(sq_distances.gather(1, labels.unsqueeze(1)).squeeze(1).argmax())
                centroids[empty] = points[farthest]
        inertia = float(sq_distances_to_centroids(points, centroids).amin(dim=1).sum())
        if inertia < best_inertia:
            best, best_inertia = centroids, inertia
    return best, best_inertia


def fit_codebook(
    features: torch.Tensor,
    num_clusters: int,
    pca: float | int | None = 0.9,
    normalize: bool = False,
    kmeans_n_init: int = 5,
    kmeans_max_iter: int = 500,
    seed: int = 0,
) -> Codebook:
    """Fit the preprocessing and k-means on the pooled ``features``: PCA to 90 % explained variance and 5 k-means
    restarts as MAUVE; no L2 normalisation by default (``normalize=True`` is MAUVE's full recipe). Normalising each
    row discards its norm, so a shift along a group's own direction (a group centred at +2 generated at +3) becomes
    invisible; text features come L2-normalised from their encoder instead (``embedding_egt``, as MiniLM's
    sentence-transformers pipeline does), where normalising again changes nothing."""
    projection = fit_projection(features, pca=pca, normalize=normalize)
    centroids, _ = kmeans(projection(features), num_clusters, kmeans_n_init, kmeans_max_iter, seed)
    return Codebook(projection=projection, centroids=centroids)


def histogram(labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Bin counts (float64) of cluster labels."""
    return torch.bincount(labels, minlength=num_clusters).double()


def _normalised(counts: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    counts = counts.double() + smoothing
    return counts / counts.sum(dim=-1, keepdim=True)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Sum p log(p / q) over the last axis (0 log 0 = 0; inf where p > 0 = q)."""
    return torch.xlogy(p, p).sum(-1) - torch.xlogy(p, q).sum(-1)


def histogram_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) = sum p log(p / q)."""
    return _kl(p, q)


def histogram_reverse_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(Q || P)."""
    return _kl(q, p)


def histogram_total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """TV = sum |p - q| / 2."""
    return 0.5 * (p - q).abs().sum(-1)


def histogram_jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JS = KL(P || M) / 2 + KL(Q || M) / 2 with M = (P + Q) / 2."""
    mixture = (p + q) / 2
    return 0.5 * _kl(p, mixture) + 0.5 * _kl(q, mixture)


def histogram_squared_hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """H^2 = 1 - sum sqrt(p q), clipped at 0 against round-off."""
    return (1 - (p * q).sqrt().sum(-1)).clamp(min=0.0)


def histogram_chi2(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Pearson chi^2(P || Q) = sum (p - q)^2 / q."""
    return ((p - q).square() / q).sum(-1)


def histogram_pr_alpha(p: torch.Tensor, q: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """alpha_lambda(P, Q) = sum min(lambda p, q), one value per lambda (Simon et al. 2019)."""
    return torch.minimum(lambdas.unsqueeze(-1) * p.unsqueeze(-2), q.unsqueeze(-2)).sum(-1)


def histogram_pr_divergence(p: torch.Tensor, q: torch.Tensor, pr_lambda: float = 1.0) -> torch.Tensor:
    """Precision-recall divergence D_lambda = min(lambda, 1) - alpha_lambda (Vérine et al. 2023)."""
    if not pr_lambda > 0:
        raise ValueError(f"`pr_lambda` must be positive, got {pr_lambda}.")
    lambdas = torch.tensor([pr_lambda], dtype=p.dtype, device=p.device)
    return min(pr_lambda, 1.0) - histogram_pr_alpha(p, q, lambdas)[..., 0]


def histogram_pr_curve(p: torch.Tensor, q: torch.Tensor, num_angles: int = 201) -> dict[str, torch.Tensor]:
    """PR curve: ``precision = alpha_lambda``, ``recall = alpha_lambda / lambda``, ``lambda = tan(theta)`` on a
    regular grid of (0, pi/2), ends excluded (the grid of ``hf_egt.core.metrics.pr_curve``)."""
    if num_angles < 1:
        raise ValueError(f"`num_angles` must be at least 1, got {num_angles}.")
    angles = torch.linspace(0, math.pi / 2, num_angles + 2, dtype=p.dtype, device=p.device)[1:-1]
    lambdas = torch.tan(angles)
    precision = histogram_pr_alpha(p, q, lambdas)
    return {"lambdas": lambdas, "precision": precision, "recall": precision / lambdas}


def mauve_divergence_curve(
    p: torch.Tensor, q: torch.Tensor, scaling: float = MAUVE_SCALING, num_weights: int = MAUVE_NUM_WEIGHTS
) -> torch.Tensor:
    """mauve-text's divergence frontier: ``(num_weights + 2, 2)`` points ``(exp(-c KL(Q||R)), exp(-c KL(P||R)))``."""
    weights = torch.linspace(1e-6, 1 - 1e-6, num_weights, dtype=torch.float64, device=p.device).unsqueeze(1)
    mixtures = weights * p.unsqueeze(0) + (1 - weights) * q.unsqueeze(0)
    inner = torch.stack([_kl(q.unsqueeze(0), mixtures), _kl(p.unsqueeze(0), mixtures)], dim=1)
    ends = torch.tensor([[0.0, math.inf]], dtype=torch.float64, device=p.device)
    return torch.exp(-scaling * torch.cat([ends, inner, ends.flip(1)]))


def histogram_mauve(
    p: torch.Tensor, q: torch.Tensor, scaling: float = MAUVE_SCALING, num_weights: int = MAUVE_NUM_WEIGHTS
) -> torch.Tensor:
    """MAUVE: area under the divergence frontier, averaged over both axes as mauve-text does; in (0, 1], 1 when
    P = Q (higher is better).

    Along the frontier (mixture weight rising) x falls and y rises, so the trapezoids follow the curve's own order:
    the same as mauve-text's sort by x and by y wherever coordinates are distinct; where they tie (P = Q: all inner
    points at (1, 1)) the curve order gives the frontier's true area, 1, whatever order a sort leaves ties in.
    """
    x, y = mauve_divergence_curve(p, q, scaling, num_weights).T
    return 0.5 * (torch.trapezoid(y.flip(0), x.flip(0)) + torch.trapezoid(x, y))


# name -> (function of two probability vectors, needs smoothing)
HISTOGRAM_DIVERGENCES: dict[str, tuple[Callable[..., torch.Tensor], bool]] = {
    "kl": (histogram_kl, True),
    "reverse_kl": (histogram_reverse_kl, True),
    "js": (histogram_jensen_shannon, False),
    "tv": (histogram_total_variation, False),
    "hellinger": (histogram_squared_hellinger, False),
    "chi2": (histogram_chi2, True),
    "pr": (histogram_pr_divergence, False),
    "mauve": (histogram_mauve, False),
}


def histogram_divergence(
    name: str,
    real_counts: torch.Tensor,
    generated_counts: torch.Tensor,
    smoothing: float = DEFAULT_SMOOTHING,
    pr_lambda: float = 1.0,
    mauve_scaling: float = MAUVE_SCALING,
) -> torch.Tensor:
    """A divergence of ``HISTOGRAM_DIVERGENCES`` between two bin-count vectors (``(..., K)``: batched rows allowed),
    with ``smoothing`` added to each bin of the KL, reverse KL and chi^2 histograms (see the module docstring)."""
    if name not in HISTOGRAM_DIVERGENCES:
        raise ValueError(f"Unknown histogram divergence {name!r}; valid names are {sorted(HISTOGRAM_DIVERGENCES)}.")
    if smoothing < 0:
        raise ValueError(f"`smoothing` must be >= 0, got {smoothing}.")
    function, smoothed = HISTOGRAM_DIVERGENCES[name]
    p = _normalised(real_counts, smoothing if smoothed else 0.0)
    q = _normalised(generated_counts, smoothing if smoothed else 0.0)
    if name == "pr":
        return function(p, q, pr_lambda)
    if name == "mauve":
        if p.ndim > 1:
            return torch.stack([function(row_p, row_q, mauve_scaling) for row_p, row_q in zip(p, q)])
        return function(p, q, mauve_scaling)
    return function(p, q)


CODEBOOK_KWARGS = ("num_clusters", "pca", "normalize", "kmeans_n_init", "kmeans_max_iter", "seed")
HISTOGRAM_KWARGS = ("smoothing", "pr_lambda", "mauve_scaling")


def split_quantized_kwargs(estimator_kwargs: dict) -> tuple[dict, dict]:
    """``(codebook kwargs, histogram kwargs)``, or a ``TypeError`` naming an argument neither takes."""
    unknown = sorted(set(estimator_kwargs) - set(CODEBOOK_KWARGS) - set(HISTOGRAM_KWARGS) - {"chunk_size"})
    if unknown:
        raise TypeError(
            f"Unknown argument(s) {unknown} for a quantised estimator; valid ones are "
            f"{sorted(CODEBOOK_KWARGS + HISTOGRAM_KWARGS)}."
        )
    codebook = {key: estimator_kwargs[key] for key in CODEBOOK_KWARGS if key in estimator_kwargs}
    histogram_kwargs = {key: estimator_kwargs[key] for key in HISTOGRAM_KWARGS if key in estimator_kwargs}
    return codebook, histogram_kwargs


def pooled_codebook(pooled: torch.Tensor, min_samples: int, num_clusters: int | None = None, **codebook_kwargs):
    """The codebook of ``pooled`` features with ``num_clusters`` (default ``default_num_clusters(min_samples)``)."""
    num_clusters = num_clusters or default_num_clusters(min_samples)
    return fit_codebook(pooled, num_clusters, **codebook_kwargs)


def quantized_labels(real, generated, **codebook_kwargs) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(real labels, generated labels, number of clusters)`` over a codebook fitted on the pair's pooled features
    (see the module docstring)."""
    real, generated = as_features(real, "real"), as_features(generated, "generated")
    check_pair(real, generated)
    check_min_samples(real, 2, "real", "a quantised estimator")
    check_min_samples(generated, 2, "generated", "a quantised estimator")
    codebook = pooled_codebook(
        torch.cat([real.double(), generated.double()]), min(real.shape[0], generated.shape[0]), **codebook_kwargs
    )
    return codebook.assign(real), codebook.assign(generated), codebook.num_clusters


def quantized_histograms(real, generated, **codebook_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin counts of ``real`` and ``generated`` over a codebook fitted on the pair (see the module docstring)."""
    real_labels, generated_labels, num_clusters = quantized_labels(real, generated, **codebook_kwargs)
    return histogram(real_labels, num_clusters), histogram(generated_labels, num_clusters)


def quantized_estimator(name: str) -> Callable[..., torch.Tensor]:
    """``estimator(real, generated, **kwargs)`` of the quantised ``name`` on one pair (codebook fitted on the pair,
    as for each group of ``egt_report``)."""

    def estimator(real, generated, **kwargs) -> torch.Tensor:
        codebook_kwargs, histogram_kwargs = split_quantized_kwargs(kwargs)
        real_counts, generated_counts = quantized_histograms(real, generated, **codebook_kwargs)
        return histogram_divergence(name, real_counts, generated_counts, **histogram_kwargs)

    estimator.__name__ = f"quantized_{name}"
    estimator.__doc__ = f"Quantised {name} (``hf_egt.core.metrics.quantized``) between two feature sets."
    return estimator


def quantized_pr_curve(real, generated, num_angles: int = 201, **codebook_kwargs) -> dict[str, torch.Tensor]:
    """The PR curve (``histogram_pr_curve``) of the quantised pair."""
    real_counts, generated_counts = quantized_histograms(real, generated, **codebook_kwargs)
    return histogram_pr_curve(_normalised(real_counts), _normalised(generated_counts), num_angles)
