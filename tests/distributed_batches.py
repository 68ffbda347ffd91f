"""Deterministic batches shared by a distributed script and the single-process test that checks it."""

import torch


def make_batches(steps: int = 5, batch_size: int = 16, num_groups: int = 4):
    generator = torch.Generator().manual_seed(123)
    batches = []
    for _ in range(steps):
        losses = torch.rand(batch_size, generator=generator, dtype=torch.float64) * 3
        ids = torch.randint(0, num_groups - 1, (batch_size,), generator=generator)  # last group never present
        tokens = torch.randint(1, 6, (batch_size,), generator=generator).double()
        batches.append((losses, ids, tokens))
    return batches
