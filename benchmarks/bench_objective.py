"""Cost of the group objective vs a plain mean, as the number of groups and the batch grow.

The objective's work is O(batch + groups) (index_add, a log-softmax over groups), so its overhead next to a model's
forward pass is negligible; these rows show how it scales from 2 to 64 groups.
"""

from __future__ import annotations

import time

import torch

from hf_egt import GroupObjective


def _time(function, repeats: int) -> float:
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def run(quick: bool = False) -> list[dict]:
    rows = []
    batch_sizes = (256,) if quick else (256, 8192)
    repeats = 50 if quick else 200
    for batch_size in batch_sizes:
        for num_groups in (2, 8, 64):
            generator = torch.Generator().manual_seed(0)
            losses = torch.rand(batch_size, generator=generator, requires_grad=True)
            ids = torch.randint(0, num_groups, (batch_size,), generator=generator)
            objective = GroupObjective(num_groups=num_groups, objective="minmax", group_step_size=0.01)

            def ours(objective=objective, losses=losses, ids=ids):
                objective(losses, ids).loss.backward()

            def plain(losses=losses):
                losses.mean().backward()

            # interleave: alternate the two measurements three times and keep each one's best
            ours_times, plain_times = [], []
            for _ in range(3):
                ours_times.append(_time(ours, repeats))
                plain_times.append(_time(plain, repeats))
            ours_s, plain_s = min(ours_times), min(plain_times)
            rows.append(
                {
                    "benchmark": f"minmax objective step, batch {batch_size}, {num_groups} groups",
                    "ours": ours_s * 1e6,
                    "peer": plain_s * 1e6,
                    "ratio": ours_s / plain_s,
                    "unit": "µs (peer: mean)",
                    "target": "absolute overhead ≪ a forward pass",
                    "met": None,
                    "notes": f"overhead {1e6 * (ours_s - plain_s):.0f} µs per step",
                }
            )
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
