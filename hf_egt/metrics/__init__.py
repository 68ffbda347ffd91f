"""The EGT metric core: per-group divergences between real and generated samples, and their summaries.

Features, plots and the report import their optional dependencies (transformers, matplotlib) where used.
"""

from .divergences import (
    chi2_divergence,
    jensen_shannon_divergence,
    kl_divergence,
    pr_curve,
    pr_divergence,
    reverse_kl_divergence,
    squared_hellinger_distance,
    total_variation_distance,
)
from .features import embed_images, embed_texts, load_text_encoder
from .frechet import frechet_distance, frechet_distance_from_moments, gaussian_moments
from .likelihood import likelihood_report
from .plot import plot_report
from .prdc import prdc
from .quantized import fit_codebook, histogram_divergence, histogram_mauve, quantized_pr_curve
from .report import (
    DIVERGENCES,
    QUANTIZED,
    RECOMMENDED_TEXT_DIVERGENCE,
    egt_report,
    estimate,
    proportion_criteria,
    report_table,
)
from .summary import summarize_groups
from .validation import minimum_samples

__all__ = [
    "DIVERGENCES",
    "QUANTIZED",
    "RECOMMENDED_TEXT_DIVERGENCE",
    "chi2_divergence",
    "egt_report",
    "embed_images",
    "embed_texts",
    "estimate",
    "fit_codebook",
    "frechet_distance",
    "frechet_distance_from_moments",
    "gaussian_moments",
    "histogram_divergence",
    "histogram_mauve",
    "jensen_shannon_divergence",
    "kl_divergence",
    "likelihood_report",
    "load_text_encoder",
    "minimum_samples",
    "plot_report",
    "pr_curve",
    "pr_divergence",
    "prdc",
    "proportion_criteria",
    "quantized_pr_curve",
    "report_table",
    "reverse_kl_divergence",
    "squared_hellinger_distance",
    "summarize_groups",
    "total_variation_distance",
]
