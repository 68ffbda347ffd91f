"""The divergence registry: every name ``estimate`` and ``egt_report`` accept, its estimator and which way is worse,
the two families (quantised, k-NN), and the defaults and dimension limits docs/metric.md validates them at."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from hf_egt.core.metrics.divergences import (
    chi2_divergence,
    jensen_shannon_divergence,
    kl_divergence,
    pr_divergence,
    reverse_kl_divergence,
    squared_hellinger_distance,
    total_variation_distance,
)
from hf_egt.core.metrics.frechet import frechet_distance
from hf_egt.core.metrics.prdc import PRDC_KEYS, prdc
from hf_egt.core.metrics.quantized import HISTOGRAM_DIVERGENCES, quantized_estimator


def _prdc_value(real, generated, key: str, k: int = 5, chunk_size: int | None = None) -> torch.Tensor:
    return prdc(real, generated, k=k, chunk_size=chunk_size)[key]


# registry name -> name in quantized.HISTOGRAM_DIVERGENCES: the quantised family, one codebook per group
QUANTIZED = {f"quantized_{name}": name for name in HISTOGRAM_DIVERGENCES if name != "mauve"} | {"mauve": "mauve"}

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
    **{name: (quantized_estimator(histogram_name), name != "mauve") for name, histogram_name in QUANTIZED.items()},
}
# The k-NN estimators that look for a sample's k-th nearest *other* sample (density ratios and PRDC): they need
# k + 1 samples per side; the pooled classifier (js, tv, pr) and the Fréchet distance need 2.
KNN_DIVERGENCES = ("kl", "reverse_kl", "hellinger", "chi2", "precision", "recall", "density", "coverage")
# The estimator docs/metric.md supports for sentence embeddings at ~100 samples per group (384-d MiniLM): bounded,
# symmetric, exact on histograms of each group's own codebook, with a floor and a p-value.
RECOMMENDED_TEXT_DIVERGENCE = "quantized_js"
# The largest dimension at which docs/metric.md validates the k-NN and Fréchet estimators (Gaussian closed forms at
# d = 2 and 8; at d = 64 the k-NN KL is off by -61 % to +188 %, not even of the right sign). Above it they see
# features through a PCA to this many components fitted on the pair, unless `pca` / `normalize` are given: in 384-d
# the density-ratio estimators raise d * log(distance ratio) to the power (chi^2 of 1e36 on a null case, squared
# Hellinger clipped to exactly 0), while on 8 components every one keeps the null case within its floor.
KNN_VALIDATED_DIM = 8
# Estimators refused above a smaller dimension, with the reason. The k-NN chi^2 is heavy-tailed (infinite whenever Q
# has lighter tails than P) and validated in 1-d only: even projected to 8 components, two halves of the same BOLD
# group (MiniLM) read 20.7 on average (largest 168) with 4 gaps in 5 "significant" (docs/metric.md).
KNN_REFUSED_ABOVE = {
    "chi2": (
        2,
        "the k-NN chi^2 is heavy-tailed (infinite whenever the generated distribution has lighter tails than the real "
        "one) and validated in 1-d only; on a 384-d null case projected to 8 components it averaged 20.7",
    )
}


def check_divergence(name: str, argument: str = "divergence") -> None:
    """A name of ``DIVERGENCES``, or a ``ValueError`` naming ``argument`` and every valid name."""
    if name not in DIVERGENCES:
        raise ValueError(f"Unknown `{argument}` {name!r}; valid names are {sorted(DIVERGENCES)}.")
