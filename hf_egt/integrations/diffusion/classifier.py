"""A small digit classifier whose penultimate layer gives the features of the EGT metric.

No Inception or CLIP ships offline, so per-group divergences on digits are measured in the feature space of a
classifier trained on the same (balanced, full) data: its features separate what matters for digits.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitClassifier(nn.Module):
    """A two-layer MLP on flattened images in [-1, 1]; ``features`` is its ``feature_dim``-d hidden layer."""

    def __init__(self, image_size: int = 8, channels: int = 1, num_classes: int = 10, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * image_size * image_size, 128), nn.GELU(), nn.Linear(128, feature_dim)
        )
        self.head = nn.Sequential(nn.GELU(), nn.Linear(feature_dim, num_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def train_digit_classifier(
    images: torch.Tensor, labels: torch.Tensor, epochs: int = 60, batch_size: int = 128, lr: float = 3e-3, seed: int = 0
) -> DigitClassifier:
    """Train :class:`DigitClassifier` on images ``(n, C, H, W)`` in [-1, 1]; returns it in eval mode, frozen.

    Use ``classifier.features`` as the feature extractor of the EGT metric and ``classifier(images).argmax(-1)`` as
    an oracle labeller for an unconditional model's samples.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(images.shape[-1], images.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    return model
