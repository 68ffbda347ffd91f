"""How each cost grows: with the number of groups (2 -> 64), the number of samples and the sequence length.

- trainer: EGTTrainer(min-max) vs a plain Trainer, tokens/s, as the groups in the data go from 2 to 64 and the
  sequence length from 64 to 512 (same small Llama and LoRA as ``bench_trainer``; alternated runs, median);
- metric vs samples: ``hf_egt.core.metrics.prdc`` vs ``prdc.compute_prdc`` on one group of n real + n generated 512-d
  features, n from 1,000 to 10,000;
- metric vs groups: ``egt_report(divergence="kl")`` (per-group and pooled k-NN KL) vs a loop calling the reference
  KL (scikit-learn brute-force neighbours) on each group and on the pool, at a fixed total of samples.

The group objective alone vs the number of groups is ``bench_objective``.

    python benchmarks/bench_scaling.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.bench_metric import make_features, reference_kl, reference_prdc
from benchmarks.bench_trainer import measure, setting
from hf_egt.core.metrics import egt_report, prdc


def _seconds(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def _row(benchmark, ours, peer, ratio, unit, notes, target="informational", met=None) -> dict:
    return {
        "benchmark": benchmark,
        "ours": ours,
        "peer": peer,
        "ratio": ratio,
        "unit": unit,
        "target": target,
        "met": met,
        "notes": notes,
    }


def trainer_rows(quick: bool) -> list[dict]:
    points = [(2, 64), (8, 64), (64, 64)] if quick else [(2, 64), (2, 256), (2, 512), (8, 128), (64, 128)]
    repeats = 2 if quick else 3
    rows = []
    for groups, seq in points:
        cfg = setting(False, quick, groups=groups, seq=seq, steps=4 if quick else 8)
        speeds = {"trainer": [], "egt": []}
        for repeat in range(repeats):
            for kind in ("trainer", "egt") if repeat % 2 == 0 else ("egt", "trainer"):
                speeds[kind].append(measure(kind, cfg)["tokens_per_s"])
        ours, peer = statistics.median(speeds["egt"]), statistics.median(speeds["trainer"])
        rows.append(
            _row(
                f"scaling/trainer: {groups} groups, seq <= {seq}",
                ours,
                peer,
                ours / peer,
                "tokens/s",
                f"EGTTrainer(minmax) vs Trainer; batch {cfg['batch']}, {cfg['steps']} steps, median of {repeats}",
                ">= 0.97",
                ours / peer >= 0.97,
            )
        )
    return rows


def metric_sample_rows(quick: bool) -> list[dict]:
    sizes, dim = ((500, 1000, 2000), 64) if quick else ((1000, 2000, 5000, 10000), 512)
    rows = []
    for size in sizes:
        ((real, generated),) = make_features(1, size, dim)
        real_t, generated_t = torch.from_numpy(real), torch.from_numpy(generated)
        prdc(real_t, generated_t)  # warm-up
        ours = _seconds(prdc, real_t, generated_t)
        peer = _seconds(reference_prdc, real, generated)
        rows.append(
            _row(f"scaling/prdc: {size} + {size} samples", ours, peer, peer / ours, "s", f"one group, {dim}-d, k=5")
        )
    return rows


def _reference_kl_per_group_and_pooled(groups: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    values = [reference_kl(real, generated) for real, generated in groups]
    return [*values, reference_kl(np.concatenate([r for r, _ in groups]), np.concatenate([g for _, g in groups]))]


def metric_group_rows(quick: bool) -> list[dict]:
    total, dim = (2048, 32) if quick else (8192, 128)
    rows = []
    for num_groups in (2, 8, 32, 64):
        groups = make_features(num_groups, total // num_groups, dim)
        real = np.concatenate([r for r, _ in groups])
        generated = np.concatenate([g for _, g in groups])
        labels = np.repeat(np.arange(num_groups), total // num_groups)

        # The reference is the fixed-k estimator, with no floors or permutation test: compare like with like.
        ours_s = _seconds(
            egt_report,
            real,
            labels,
            generated,
            labels,
            divergence="kl",
            n_bootstrap=0,
            n_null=0,
            n_permutations=0,
            adaptive=False,
        )
        peer_s = _seconds(_reference_kl_per_group_and_pooled, groups)
        rows.append(
            _row(
                f"scaling/egt_report kl: {num_groups} groups",
                ours_s,
                peer_s,
                peer_s / ours_s,
                "s",
                f"{total} real + {total} generated in all, {dim}-d; per group and pooled; peer: scikit-learn k-NN",
            )
        )
    return rows


def run(quick: bool = False) -> list[dict]:
    return trainer_rows(quick) + metric_sample_rows(quick) + metric_group_rows(quick)


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
