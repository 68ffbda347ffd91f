"""Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's)."""

from __future__ import annotations

import torch

from hf_egt.core.metrics.inputs import as_features, check_min_samples, check_pair


def gaussian_moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (float64) of the rows of ``features``."""
    features = features.double()
    mean = features.mean(dim=0)
    centered = features - mean
    return mean, centered.T @ centered / (features.shape[0] - 1)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance_from_moments(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> torch.Tensor:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, exact for Gaussians N(mu1, S1) and N(mu2, S2).

    ``tr (S1 S2)^(1/2)`` is computed as the sum of the square roots of the eigenvalues of the symmetric matrix
    ``S1^(1/2) S2 S1^(1/2)`` (same spectrum as S1 S2), in float64.
    """
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root1 = _sqrtm_psd(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return (mean1 - mean2).square().sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_sqrt


def frechet_distance(real, generated) -> torch.Tensor:
    """Fréchet distance between Gaussian fits of ``real`` and ``generated`` features (needs 2 samples per side).

    Biased upwards at finite sample sizes (by roughly tr(S)/n per side), more so in high dimension: compare values
    computed with equal sample sizes.
    """
    real = as_features(real, "real")
    generated = as_features(generated, "generated")
    check_pair(real, generated)
    check_min_samples(real, 2, "real", "the Fréchet distance")
    check_min_samples(generated, 2, "generated", "the Fréchet distance")
    return frechet_distance_from_moments(*gaussian_moments(real), *gaussian_moments(generated))
