"""Feature preprocessing shared by every estimator: optional L2 normalisation, then optional PCA, fitted once on the
pooled real and generated features of all groups so that every group is measured in the same space.

MAUVE (``mauve-text``) L2-normalises and keeps the principal components explaining 90 % of the variance before
k-means; ``pr-4-llm`` does the same before its k-NN precision/recall. One implementation serves both families.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Projection:
    """``x -> (normalize(x) - mean) @ components`` (each step optional); fitted by ``fit_projection``."""

    normalize: bool
    mean: torch.Tensor | None
    components: torch.Tensor | None

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        features = features.double()
        if self.normalize:
            features = torch.nn.functional.normalize(features, dim=1)
        if self.components is not None:
            features = (features - self.mean.to(features.device)) @ self.components.to(features.device)
        return features

    @property
    def dim(self) -> int | None:
        """Output dimension (``None``: unchanged)."""
        return None if self.components is None else self.components.shape[1]


def check_pca(pca) -> None:
    """``pca`` is None, a share of variance in (0, 1), or a number of components >= 1."""
    if pca is None:
        return
    if isinstance(pca, bool) or not isinstance(pca, int | float):
        raise TypeError(f"`pca` must be None, a float in (0, 1) or an int >= 1, got {pca!r}.")
    if isinstance(pca, float) and not 0 < pca < 1:
        raise ValueError(f"`pca` as a float is a share of explained variance and must lie in (0, 1), got {pca}.")
    if isinstance(pca, int) and pca < 1:
        raise ValueError(f"`pca` as an int is a number of components and must be >= 1, got {pca}.")


def fit_projection(features: torch.Tensor, pca: float | int | None = None, normalize: bool = False) -> Projection:
    """Fit the preprocessing on ``features`` (the pooled real and generated rows).

    Args:
        features: ``(N, d)`` pooled features.
        pca: ``None`` (no PCA), a float in (0, 1) (keep the fewest leading components whose explained variance
            reaches that share, MAUVE's rule with 0.9), or an int (that many components, at most ``min(N, d)``).
        normalize: L2-normalise each row first (as MAUVE and pr-4-llm do).
    """
    check_pca(pca)
    projection = Projection(normalize=normalize, mean=None, components=None)
    if pca is None:
        return projection
    data = projection(features)
    mean = data.mean(dim=0)
    _, singular_values, right = torch.linalg.svd(data - mean, full_matrices=False)
    if isinstance(pca, float):
        explained = singular_values.square().cumsum(0) / singular_values.square().sum()
        num_components = int((explained < pca).sum()) + 1
    else:
        num_components = min(pca, right.shape[0])
    return Projection(normalize=normalize, mean=mean, components=right[:num_components].T.contiguous())
