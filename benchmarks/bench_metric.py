"""Benchmark of the EGT metric: per-group PRDC and KL against the reference implementations, FID against torchmetrics,
per-group MAUVE (the quantised path) against mauve-text.

Features: 4 groups of real and generated 512-d float32 features (5000 + 5000 per group, 20,000 x 20,000 in all);
``quick=True`` uses 4 groups of 1000 + 1000 64-d features. Timings are interleaved in one process (ours, then the
peer, group by group, after one untimed call of each); peak memory is the resident-set growth during a call, sampled
every 5 ms.

    python benchmarks/bench_metric.py [--quick]
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import sys
import threading
import time

import numpy as np
import torch

from hf_egt.core.metrics import estimate, frechet_distance, histogram_mauve, kl_divergence, prdc

K = 5


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def measure(function, *args, **kwargs):
    """(seconds, result, peak resident-set growth in MiB) of one call."""
    baseline, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, result, max(0.0, max(peak[0], _rss_mb()) - baseline)


def make_features(num_groups: int, per_group: int, dim: int, seed: int = 0):
    """Real and generated features per group; the generated ones are shifted and rescaled, more for later groups."""
    rng = np.random.default_rng(seed)
    groups = []
    for group in range(num_groups):
        center = rng.standard_normal(dim).astype(np.float32)
        real = center + rng.standard_normal((per_group, dim)).astype(np.float32)
        scale = 1.0 + 0.05 * group
        generated = center + 0.05 * group + scale * rng.standard_normal((per_group, dim)).astype(np.float32)
        groups.append((real, generated))
    return groups


def reference_prdc(real, generated):
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):
        return compute_prdc(real, generated, K)


def reference_kl(real, generated):
    """Wang-Kulkarni-Verdú k-NN KL with scikit-learn's brute-force neighbours (float64)."""
    from sklearn.neighbors import NearestNeighbors

    real, generated = real.astype(np.float64), generated.astype(np.float64)
    rho = NearestNeighbors(n_neighbors=K + 1, algorithm="brute").fit(real).kneighbors(real)[0][:, K]
    nu = NearestNeighbors(n_neighbors=K, algorithm="brute").fit(generated).kneighbors(real)[0][:, K - 1]
    n, m = len(real), len(generated)
    return real.shape[1] * np.mean(np.log(nu) - np.log(rho)) + math.log(m / (n - 1))


def reference_fid(real, generated):
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = real.shape[1]

        def forward(self, features):
            return features

    fid = FrechetInceptionDistance(feature=Identity())
    fid.update(torch.from_numpy(real).double(), real=True)
    fid.update(torch.from_numpy(generated).double(), real=False)
    return fid.compute()


def reference_mauve(real, generated):
    """mauve-text's ``compute_mauve`` with its defaults (L2, PCA 90 %, faiss k-means, n / 10 clusters, 5 restarts)."""
    import mauve

    with contextlib.redirect_stdout(io.StringIO()):
        return mauve.compute_mauve(p_features=real, q_features=generated)


def ours_mauve(real, generated):
    """Our quantised path with the same defaults (torch k-means)."""
    return estimate(real, generated, "mauve")


def _mauve_rows(groups, size: str) -> list[dict]:
    """Per-group MAUVE, end to end (each with its own k-means), and on mauve-text's own histograms (exact)."""
    ours_total = peer_total = 0.0
    end_to_end_diff = histogram_diff = 0.0
    for real, generated in groups:
        seconds, ours, _ = measure(ours_mauve, torch.from_numpy(real), torch.from_numpy(generated))
        peer_seconds, theirs, _ = measure(reference_mauve, real, generated)
        ours_total += seconds
        peer_total += peer_seconds
        end_to_end_diff = max(end_to_end_diff, abs(float(ours) - theirs.mauve))
        on_histograms = histogram_mauve(torch.as_tensor(theirs.p_hist), torch.as_tensor(theirs.q_hist))
        histogram_diff = max(histogram_diff, abs(float(on_histograms) - theirs.mauve))
    return [
        _row(
            "metric/mauve_per_group",
            ours_total,
            peer_total,
            "s",
            "equal to mauve-text on its histograms (|diff| <= 1e-6); end to end: report the difference",
            histogram_diff <= 1e-6,
            f"{size}; on mauve-text's histograms max |diff| = {histogram_diff:.1e}; end to end (each its own k-means) "
            f"max |diff| = {end_to_end_diff:.3f}",
        )
    ]


def _prdc_diff(ours, theirs) -> float:
    return max(abs(float(ours[key]) - float(theirs[key])) for key in theirs)


def _row(name, ours, peer, unit, target, met, notes):
    return {
        "benchmark": name,
        "ours": ours,
        "peer": peer,
        "ratio": peer / ours if ours else math.inf,
        "unit": unit,
        "target": target,
        "met": met,
        "notes": notes,
    }


def run(quick: bool = False) -> list[dict]:
    num_groups, per_group, dim = (4, 1000, 64) if quick else (4, 5000, 512)
    groups = make_features(num_groups, per_group, dim)
    size = f"{num_groups} groups x {per_group} real + {per_group} generated, {dim}-d"
    totals = {"prdc": [0.0, 0.0], "kl": [0.0, 0.0], "fid": [0.0, 0.0]}
    diffs = {"prdc": 0.0, "kl": 0.0, "fid": 0.0}
    memory = {"prdc": [0.0, 0.0]}
    # Warm-up, untimed: the first call of each side pays one-off costs (faulting in fresh pages for the reference's
    # N x N arrays, thread pools), which would otherwise be charged to whichever group comes first.
    reference_prdc(*groups[0])
    prdc(torch.from_numpy(groups[0][0]), torch.from_numpy(groups[0][1]), k=K)
    for real, generated in groups:
        real_t, generated_t = torch.from_numpy(real), torch.from_numpy(generated)
        seconds, ours, peak = measure(prdc, real_t, generated_t, k=K)
        peer_seconds, theirs, peer_peak = measure(reference_prdc, real, generated)
        totals["prdc"][0] += seconds
        totals["prdc"][1] += peer_seconds
        memory["prdc"] = [max(memory["prdc"][0], peak), max(memory["prdc"][1], peer_peak)]
        diffs["prdc"] = max(diffs["prdc"], _prdc_diff(ours, theirs))
        for name, function, peer_function in (
            ("kl", functools.partial(kl_divergence, adaptive=False), reference_kl),  # the reference is fixed-k
            ("fid", frechet_distance, reference_fid),
        ):
            seconds, ours, _ = measure(function, real_t, generated_t)
            peer_seconds, theirs, _ = measure(peer_function, real, generated)
            totals[name][0] += seconds
            totals[name][1] += peer_seconds
            diffs[name] = max(diffs[name], abs(float(ours) - float(theirs)))

    rows = [
        _row(
            "metric/prdc_per_group",
            *totals["prdc"],
            "s",
            ">= 10x faster than prdc.compute_prdc, max |diff| <= 1e-6",
            totals["prdc"][1] / totals["prdc"][0] >= 10 and diffs["prdc"] <= 1e-6,
            f"{size}; k={K}; max |diff| over P/R/D/C = {diffs['prdc']:.1e}",
        ),
        _row(
            "metric/prdc_per_group_peak_memory",
            *memory["prdc"],
            "MiB",
            "bounded: no N x N matrix",
            None,
            f"{size}; resident-set growth of one group's call",
        ),
        _row(
            "metric/kl_per_group",
            *totals["kl"],
            "s",
            "faster than scikit-learn brute-force k-NN, max |diff| <= 1e-6",
            totals["kl"][1] > totals["kl"][0] and diffs["kl"] <= 1e-6,
            f"{size}; Wang-Kulkarni-Verdu fixed k={K} (adaptive=False; the default adaptive variant is validated in "
            f"docs/metric.md); max |diff| = {diffs['kl']:.1e}",
        ),
        _row(
            "metric/fid_per_group",
            *totals["fid"],
            "s",
            "same value as torchmetrics FrechetInceptionDistance(feature=Identity)",
            diffs["fid"] <= 1e-6 * max(1.0, abs(float(frechet_distance(*groups[0])))),
            f"{size}; max |diff| = {diffs['fid']:.1e}",
        ),
    ]

    mauve_groups = groups if quick else [(real[:1000], generated[:1000]) for real, generated in groups]
    mauve_size = size if quick else f"{num_groups} groups x 1000 real + 1000 generated, {dim}-d"
    rows += _mauve_rows(mauve_groups, mauve_size)

    # All groups pooled (the report's `overall`): N x N for the reference, chunked for us.
    real = np.concatenate([real for real, _ in groups])
    generated = np.concatenate([generated for _, generated in groups])
    seconds, ours, peak = measure(prdc, torch.from_numpy(real), torch.from_numpy(generated), k=K)
    peer_seconds, theirs, peer_peak = measure(reference_prdc, real, generated)
    pooled = f"{len(real)} real x {len(generated)} generated, {dim}-d"
    rows.append(
        _row(
            "metric/prdc_pooled",
            seconds,
            peer_seconds,
            "s",
            ">= 10x faster than prdc.compute_prdc, max |diff| <= 1e-6",
            peer_seconds / seconds >= 10 and _prdc_diff(ours, theirs) <= 1e-6,
            f"{pooled}; max |diff| = {_prdc_diff(ours, theirs):.1e}",
        )
    )
    rows.append(
        _row("metric/prdc_pooled_peak_memory", peak, peer_peak, "MiB", "bounded: no N x N matrix", None, pooled)
    )
    if torch.cuda.is_available():
        real_t, generated_t = torch.from_numpy(groups[0][0]).cuda(), torch.from_numpy(groups[0][1]).cuda()
        prdc(real_t, generated_t, k=K)  # warm-up
        seconds, _, _ = measure(prdc, real_t, generated_t, k=K)
        rows.append(
            _row(
                "metric/prdc_one_group_cuda",
                seconds,
                totals["prdc"][1] / num_groups,
                "s",
                "GPU figure (peer: prdc on CPU)",
                None,
                f"{torch.cuda.get_device_name()}; one group of {per_group} + {per_group}, {dim}-d",
            )
        )
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
