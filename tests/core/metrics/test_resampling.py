"""``hf_egt.core.metrics.resampling`` on the difference of two means, whose sampling law is known in closed form:
intervals, null floors and the permutation p-value of the gap between groups."""

import math
import random

import numpy as np
import pytest
import torch

from hf_egt.core.metrics.resampling import gap_permutation_test, null_floor, resampled_interval

Z_975 = 1.959964  # the standard normal's 97.5 % quantile


def mean_difference(real, generated):
    return real.mean() - generated.mean()


def normal(n, seed, shift=0.0):
    return shift + torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def standard_error(real, generated):
    return math.sqrt(float(real.var()) / len(real) + float(generated.var()) / len(generated))


def test_bootstrap_interval_is_the_normal_interval_of_a_difference_of_means():
    real, generated = normal(400, 0), normal(300, 1, shift=0.2)
    value = float(mean_difference(real, generated))
    low, high = resampled_interval(
        real, generated, mean_difference, value, 4000, torch.Generator().manual_seed(2), 0.95, "bootstrap"
    )
    half_width = Z_975 * standard_error(real, generated)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.06)
    assert (high + low) / 2 == pytest.approx(value, abs=0.1 * half_width)
    # a wider level gives a wider interval; the same seed gives the same interval
    wide = resampled_interval(
        real, generated, mean_difference, value, 4000, torch.Generator().manual_seed(2), 0.99, "bootstrap"
    )
    assert wide[0] < low and wide[1] > high
    again = resampled_interval(
        real, generated, mean_difference, value, 4000, torch.Generator().manual_seed(2), 0.95, "bootstrap"
    )
    assert again == [low, high]


def test_subsampling_interval_is_the_normal_interval_of_a_difference_of_means():
    real, generated = normal(400, 0), normal(400, 1, shift=0.2)
    value = float(mean_difference(real, generated))
    low, high = resampled_interval(
        real, generated, mean_difference, value, 4000, torch.Generator().manual_seed(2), 0.95, "subsampling"
    )
    assert (high - low) / 2 == pytest.approx(Z_975 * standard_error(real, generated), rel=0.1)


def test_interval_is_the_unclipped_one_clipped_at_the_lower_bound():
    real, generated = normal(200, 0), normal(200, 1)
    free = resampled_interval(real, generated, mean_difference, 0.0, 500, torch.Generator().manual_seed(3), 0.95)
    clipped = resampled_interval(
        real, generated, mean_difference, 0.0, 500, torch.Generator().manual_seed(3), 0.95, lower_bound=0.0
    )
    assert free[0] < 0 < free[1]
    assert clipped == [max(free[0], 0.0), max(free[1], 0.0)]


def test_null_floor_compares_disjoint_halves_and_is_the_normal_quantile():
    real = normal(401, 4)
    halves = []

    def recording(first, second):
        halves.append((first, second))
        return (first.mean() - second.mean()).abs()

    floor, values = null_floor(real, recording, 3000, torch.Generator().manual_seed(5), 0.95)
    assert len(values) == 3000 and floor == pytest.approx(float(np.quantile(values, 0.95)))
    for first, second in halves[:50]:  # two halves of 200 rows (the odd row left out), no row in both
        assert len(first) == len(second) == 200
        rows = {float(x) for x in first[:, 0]} | {float(x) for x in second[:, 0]}
        assert len(rows) == 400
    # |mean(h1) - mean(h2)| of two disjoint halves of n samples: half-normal with sd 2 s / sqrt(n)
    expected = Z_975 * 2 * float(real[:400].std()) / math.sqrt(400)
    assert floor == pytest.approx(expected, rel=0.08)


def grouped(samples: dict) -> tuple[torch.Tensor, dict]:
    """Stack per-group samples into one tensor and the row indices of each group."""
    rows, start = {}, 0
    for group, values in samples.items():
        rows[group] = torch.arange(start, start + len(values))
        start += len(values)
    return torch.cat(list(samples.values())), rows


def test_identical_groups_have_p_value_one():
    """Every group's data the same: the observed gap is 0 and every permuted gap reaches it."""
    real_a, generated_a = normal(40, 6), normal(30, 7, shift=0.5)
    real, real_rows = grouped({"a": real_a, "b": real_a.clone(), "c": real_a.clone()})
    generated, generated_rows = grouped({"a": generated_a, "b": generated_a.clone(), "c": generated_a.clone()})
    gap, p_value = gap_permutation_test(
        real, real_rows, generated, generated_rows, mean_difference, 99, torch.Generator().manual_seed(8)
    )
    assert gap == 0.0 and p_value == 1.0
    # every sample alike: every permuted gap is 0 too, and a tie counts as reaching the observed gap
    real, generated = torch.zeros_like(real), torch.ones_like(generated)
    gap, p_value = gap_permutation_test(
        real, real_rows, generated, generated_rows, mean_difference, 99, torch.Generator().manual_seed(8)
    )
    assert gap == 0.0 and p_value == 1.0


def test_a_gap_no_permutation_reaches_has_the_smallest_p_value():
    real, real_rows = grouped({"a": normal(50, 9), "b": normal(60, 10)})
    generated, generated_rows = grouped({"a": normal(50, 11), "b": normal(40, 12, shift=20.0)})
    gap, p_value = gap_permutation_test(
        real, real_rows, generated, generated_rows, mean_difference, 49, torch.Generator().manual_seed(13)
    )
    a = float(mean_difference(real[real_rows["a"]], generated[generated_rows["a"]]))
    b = float(mean_difference(real[real_rows["b"]], generated[generated_rows["b"]]))
    assert gap == pytest.approx(abs(a - b)) and p_value == 1 / 50


def test_permutations_keep_group_sizes_and_p_values_are_uniform_under_the_null():
    """All groups from one distribution: labels are exchangeable, so the p-value is (discretely) uniform."""
    sizes = {"a": (30, 20), "b": (50, 45), "c": (80, 25)}
    seen_sizes, p_values = set(), []

    def recording(real, generated):
        seen_sizes.add((len(real), len(generated)))
        return mean_difference(real, generated)

    rng = random.Random(0)
    for _ in range(200):
        seeds = iter(rng.sample(range(10**6), 6))
        real, real_rows = grouped({g: normal(n, next(seeds)) for g, (n, _) in sizes.items()})
        generated, generated_rows = grouped({g: normal(m, next(seeds)) for g, (_, m) in sizes.items()})
        _, p_value = gap_permutation_test(
            real, real_rows, generated, generated_rows, recording, 99, torch.Generator().manual_seed(rng.randrange(999))
        )
        p_values.append(p_value)
    assert seen_sizes == set(sizes.values())
    assert 0.42 < np.mean(p_values) < 0.59  # uniform on {1/100, ..., 1}: mean 0.505, sd of the mean 0.02
    assert np.mean(np.asarray(p_values) <= 0.05) <= 0.1  # nominal 0.05, sd 0.015


def test_no_p_value_without_permutations_or_without_two_groups():
    real, real_rows = grouped({"a": normal(20, 14), "b": normal(20, 15)})
    generated, generated_rows = grouped({"a": normal(20, 16), "b": normal(20, 17)})
    generator = torch.Generator().manual_seed(0)
    gap, p_value = gap_permutation_test(real, real_rows, generated, generated_rows, mean_difference, 0, generator)
    assert gap > 0 and math.isnan(p_value)
    one = {"a": real_rows["a"]}, {"a": generated_rows["a"]}
    gap, p_value = gap_permutation_test(real, one[0], generated, one[1], mean_difference, 10, generator)
    assert math.isnan(gap) and math.isnan(p_value)
