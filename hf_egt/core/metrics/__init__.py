"""The EGT metric core: per-group divergences between real and generated samples, and their summaries.

Pure estimators on feature arrays (numpy / torch only); the encoders that make the features live in
``hf_egt.integrations.features``. Plots import matplotlib where used.
"""

from hf_egt.core.metrics.divergences import (
    chi2_divergence,
    jensen_shannon_divergence,
    kl_divergence,
    pr_curve,
    pr_divergence,
    reverse_kl_divergence,
    squared_hellinger_distance,
    total_variation_distance,
)
from hf_egt.core.metrics.frechet import frechet_distance, frechet_distance_from_moments, gaussian_moments
from hf_egt.core.metrics.likelihood import group_likelihood, likelihood_report
from hf_egt.core.metrics.plot import plot_group_weights, plot_report, plot_runs
from hf_egt.core.metrics.prdc import prdc
from hf_egt.core.metrics.quantized import fit_codebook, histogram_divergence, histogram_mauve, quantized_pr_curve
from hf_egt.core.metrics.registry import DIVERGENCES, QUANTIZED, RECOMMENDED_TEXT_DIVERGENCE
from hf_egt.core.metrics.report import egt_report, estimate, proportion_criteria
from hf_egt.core.metrics.summary import RUN_FIELDS, GroupRun, check_runs, group_run, summarize_groups
from hf_egt.core.metrics.tables import report_table, runs_table
from hf_egt.core.metrics.validation import minimum_samples

__all__ = [
    "DIVERGENCES",
    "QUANTIZED",
    "RUN_FIELDS",
    "GroupRun",
    "RECOMMENDED_TEXT_DIVERGENCE",
    "check_runs",
    "chi2_divergence",
    "egt_report",
    "estimate",
    "fit_codebook",
    "frechet_distance",
    "frechet_distance_from_moments",
    "gaussian_moments",
    "group_likelihood",
    "group_run",
    "histogram_divergence",
    "histogram_mauve",
    "jensen_shannon_divergence",
    "kl_divergence",
    "likelihood_report",
    "minimum_samples",
    "plot_group_weights",
    "plot_report",
    "plot_runs",
    "pr_curve",
    "pr_divergence",
    "prdc",
    "proportion_criteria",
    "quantized_pr_curve",
    "report_table",
    "reverse_kl_divergence",
    "runs_table",
    "squared_hellinger_distance",
    "summarize_groups",
    "total_variation_distance",
]
