"""Estimators of hf_egt.core.metrics against closed forms, numerical integration and the reference `prdc` package."""

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from scipy import integrate, linalg, stats

from hf_egt.core.metrics import (
    chi2_divergence,
    frechet_distance,
    frechet_distance_from_moments,
    jensen_shannon_divergence,
    kl_divergence,
    pr_curve,
    pr_divergence,
    prdc,
    reverse_kl_divergence,
    squared_hellinger_distance,
    total_variation_distance,
)
from hf_egt.core.metrics.knn import kth_neighbour_sq_distances, nearest_neighbour_indices, smallest_per_column


def gaussian_pair(dim: int, seed: int = 0):
    """N(0, I) against N(m, S) with a mean shift and unequal variances (0.7 .. 1.5)."""
    mean = torch.full((dim,), 0.5 / math.sqrt(dim), dtype=torch.float64)
    cov = torch.diag(torch.linspace(0.7, 1.5, dim, dtype=torch.float64))
    return torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64), mean, cov


def sample(mean, cov, n, generator):
    return mean + torch.randn(n, len(mean), generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(cov).T


def gaussian_kl(mean0, cov0, mean1, cov1):
    inverse = torch.linalg.inv(cov1)
    delta = mean1 - mean0
    return 0.5 * float(
        torch.trace(inverse @ cov0) + delta @ inverse @ delta - len(mean0) + torch.logdet(cov1) - torch.logdet(cov0)
    )


def gaussian_squared_hellinger(mean0, cov0, mean1, cov1):
    average = (cov0 + cov1) / 2
    delta = mean1 - mean0
    log_bc = (
        0.25 * torch.logdet(cov0)
        + 0.25 * torch.logdet(cov1)
        - 0.5 * torch.logdet(average)
        - delta @ torch.linalg.solve(average, delta) / 8
    )
    return 1 - math.exp(float(log_bc))


def within(estimate, truth, relative=0.2, absolute=0.06):
    return abs(float(estimate) - truth) <= max(absolute, relative * abs(truth))


@pytest.fixture(scope="module", params=[2, 8])
def gaussians_5000(request):
    dim = request.param
    generator = torch.Generator().manual_seed(dim)
    mean0, cov0, mean1, cov1 = gaussian_pair(dim)
    real, generated = sample(mean0, cov0, 5000, generator), sample(mean1, cov1, 5000, generator)
    return (mean0, cov0, mean1, cov1), real, generated


def test_kl_matches_closed_form(gaussians_5000):
    moments, real, generated = gaussians_5000
    truth = gaussian_kl(*moments)
    estimate = kl_divergence(real, generated)
    assert within(estimate, truth), (float(estimate), truth)


def test_squared_hellinger_matches_closed_form(gaussians_5000):
    moments, real, generated = gaussians_5000
    truth = gaussian_squared_hellinger(*moments)
    estimate = squared_hellinger_distance(real, generated)
    assert within(estimate, truth), (float(estimate), truth)


def test_reverse_kl_is_kl_with_sides_swapped_and_matches_closed_form():
    generator = torch.Generator().manual_seed(1)
    mean0, cov0, mean1, cov1 = gaussian_pair(3)
    real, generated = sample(mean0, cov0, 3000, generator), sample(mean1, cov1, 2000, generator)
    assert float(reverse_kl_divergence(real, generated)) == pytest.approx(float(kl_divergence(generated, real)))
    assert within(reverse_kl_divergence(real, generated), gaussian_kl(mean1, cov1, mean0, cov0))


def test_kl_is_near_zero_for_equal_distributions_and_grows_with_the_shift():
    generator = torch.Generator().manual_seed(2)
    real = torch.randn(2000, 3, generator=generator, dtype=torch.float64)
    same = torch.randn(2000, 3, generator=generator, dtype=torch.float64)
    assert abs(float(kl_divergence(real, same))) < 0.05
    shifts = [float(kl_divergence(real, same + shift)) for shift in (0.5, 1.0, 2.0)]
    assert shifts == sorted(shifts)


# 1-D: P = N(0, 1), Q = N(1, 1.3^2); truths by numerical integration.
P_1D, Q_1D = stats.norm(0, 1), stats.norm(1, 1.3)


def quad(function):
    return integrate.quad(function, -20, 20, limit=400, points=[0.0, 1.0])[0]


@pytest.fixture(scope="module")
def samples_1d():
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(5000, 1, generator=generator, dtype=torch.float64)
    generated = 1 + 1.3 * torch.randn(4000, 1, generator=generator, dtype=torch.float64)
    return real, generated


def test_total_variation_1d_matches_integration(samples_1d):
    truth = 0.5 * quad(lambda t: abs(P_1D.pdf(t) - Q_1D.pdf(t)))
    assert float(total_variation_distance(*samples_1d)) == pytest.approx(truth, abs=0.03)


def test_jensen_shannon_1d_matches_integration(samples_1d):
    def integrand(t):
        p, q = P_1D.pdf(t), Q_1D.pdf(t)
        mixture = (p + q) / 2
        return 0.5 * (p * math.log(p / mixture) if p > 0 else 0) + 0.5 * (q * math.log(q / mixture) if q > 0 else 0)

    assert float(jensen_shannon_divergence(*samples_1d)) == pytest.approx(quad(integrand), abs=0.02)


def test_pr_divergence_and_curve_1d_match_integration(samples_1d):
    curve = pr_curve(*samples_1d, num_angles=5)
    for lam, precision, recall in zip(*(curve[key].tolist() for key in ("lambdas", "precision", "recall"))):
        alpha = quad(lambda t, lam=lam: min(lam * P_1D.pdf(t), Q_1D.pdf(t)))
        assert precision == pytest.approx(alpha, abs=0.03)
        assert recall == pytest.approx(alpha / lam, abs=0.03 / min(lam, 1))
    assert float(pr_divergence(*samples_1d, pr_lambda=2.0)) == pytest.approx(
        1 - quad(lambda t: min(2 * P_1D.pdf(t), Q_1D.pdf(t))), abs=0.03
    )


def test_chi2_1d_matches_integration(samples_1d):
    truth = quad(lambda t: P_1D.pdf(t) ** 2 / Q_1D.pdf(t)) - 1
    assert within(chi2_divergence(*samples_1d), truth, relative=0.15, absolute=0.0)


def test_pr_curve_is_consistent_with_pr_divergence_and_tv():
    generator = torch.Generator().manual_seed(8)
    samples_1d = torch.randn(1500, 2, generator=generator), 0.5 + torch.randn(1000, 2, generator=generator)
    curve = pr_curve(*samples_1d, num_angles=3)  # angles pi/8, pi/4, 3 pi/8: the middle one is lambda = 1
    assert float(curve["lambdas"][1]) == pytest.approx(1.0)
    assert float(curve["recall"][1]) == pytest.approx(float(curve["precision"][1]))
    tv = float(total_variation_distance(*samples_1d))
    assert float(pr_divergence(*samples_1d, pr_lambda=1.0)) == pytest.approx(tv)
    assert 1 - float(curve["precision"][1]) == pytest.approx(tv)
    lam = float(curve["lambdas"][0])
    assert min(lam, 1) - float(curve["precision"][0]) == pytest.approx(float(pr_divergence(*samples_1d, pr_lambda=lam)))
    assert bool((curve["precision"] <= 1).all() and (curve["recall"] <= 1).all())


def test_frechet_distance_is_exact_on_gaussian_moments():
    generator = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 6, generator=generator, dtype=torch.float64), torch.randn(6, 6, generator=generator)
    cov1, cov2 = a @ a.T + 0.1 * torch.eye(6), b.double() @ b.double().T + 0.1 * torch.eye(6)
    mean1, mean2 = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    root = linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
    truth = float(((mean1 - mean2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2)) - 2 * np.trace(root)
    assert float(frechet_distance_from_moments(mean1, cov1, mean2, cov2)) == pytest.approx(truth, rel=1e-9)
    # Commuting (diagonal) covariances: sum of (sqrt(a_i) - sqrt(b_i))^2.
    d1, d2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    exact = float(((d1.sqrt() - d2.sqrt()) ** 2).sum() + 3.0)
    distance = frechet_distance_from_moments(torch.zeros(3), torch.diag(d1), torch.ones(3), torch.diag(d2))
    assert float(distance) == pytest.approx(exact, rel=1e-12)


def test_frechet_distance_of_samples_uses_their_moments():
    generator = torch.Generator().manual_seed(5)
    real = torch.randn(500, 4, generator=generator, dtype=torch.float64)
    generated = 2 * torch.randn(300, 4, generator=generator, dtype=torch.float64) + 1
    expected = frechet_distance_from_moments(
        real.mean(0),
        torch.from_numpy(np.cov(real.numpy().T)),
        generated.mean(0),
        torch.from_numpy(np.cov(generated.numpy().T)),
    )
    assert float(frechet_distance(real, generated)) == pytest.approx(float(expected), rel=1e-10)


def reference_prdc(real, generated, k):
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the sample counts
        return compute_prdc(real, generated, k)


@pytest.mark.parametrize(
    ("num_real", "num_generated", "dim", "integer"),
    [(800, 600, 16, False), (700, 700, 64, False), (500, 450, 3, True), (600, 520, 24, True)],
)
def test_prdc_equals_reference_package(num_real, num_generated, dim, integer):
    rng = np.random.default_rng(dim)
    real = rng.standard_normal((num_real, dim)).astype(np.float32)
    generated = (1.1 * rng.standard_normal((num_generated, dim)) + 0.2).astype(np.float32)
    if integer:  # a lattice: many exactly tied distances
        real, generated = np.round(3 * real).astype(np.float32), np.round(3 * generated).astype(np.float32)
    expected = reference_prdc(real, generated, 5)
    ours = prdc(torch.from_numpy(real), torch.from_numpy(generated), k=5, chunk_size=97)
    for key, value in expected.items():
        assert float(ours[key]) == pytest.approx(float(value), abs=1e-6), key


@pytest.mark.parametrize("exclude_self", [True, False])
def test_kth_neighbour_distances_are_exact_even_with_ties(exclude_self):
    generator = torch.Generator().manual_seed(6)
    query = torch.round(2 * torch.randn(300, 4, generator=generator))  # lattice points: ties everywhere
    reference = query if exclude_self else torch.round(2 * torch.randn(250, 4, generator=generator))
    full = (query.double()[:, None] - reference.double()[None]).square().sum(dim=-1)
    if exclude_self:
        full.fill_diagonal_(math.inf)
    for k in (1, 3, 7):
        expected = full.kthvalue(k, dim=1).values
        ours = kth_neighbour_sq_distances(query, reference, k, exclude_self=exclude_self, chunk_size=64)
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_neighbour_indices_match_brute_force_on_distinct_distances():
    generator = torch.Generator().manual_seed(7)
    points = torch.randn(257, 5, generator=generator, dtype=torch.float64)
    full = torch.cdist(points, points).fill_diagonal_(math.inf)
    expected = full.topk(6, dim=1, largest=False).indices
    ours = nearest_neighbour_indices(points, points, 6, exclude_self=True, chunk_size=50)
    assert torch.equal(ours.sort(dim=1).values, expected.sort(dim=1).values)


@pytest.mark.parametrize(
    ("estimator", "kwargs"),
    [
        (kl_divergence, {}),
        (squared_hellinger_distance, {}),
        (prdc, {}),
        (total_variation_distance, {}),
        (frechet_distance, {}),
    ],
)
def test_bad_inputs_raise_clear_errors(estimator, kwargs):
    good = torch.randn(50, 3)
    with pytest.raises(ValueError, match="different dimensions"):
        estimator(good, torch.randn(50, 4), **kwargs)
    bad = good.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="`generated`.*NaN"):
        estimator(good, bad, **kwargs)
    with pytest.raises(ValueError, match="`real` has 1 sample"):
        estimator(good[:1], good, **kwargs)


def test_knn_estimators_reject_duplicates_and_too_few_samples():
    real = torch.randn(40, 2)
    with pytest.raises(ValueError, match="duplicates"):
        kl_divergence(torch.cat([real] * 7), torch.randn(40, 2))
    with pytest.raises(ValueError, match="needs at least 6"):
        kl_divergence(real[:5], torch.randn(40, 2))
    with pytest.raises(ValueError, match="k.*must exceed"):
        chi2_divergence(real, torch.randn(40, 2), k=1)


@pytest.mark.parametrize(("height", "width", "num"), [(1448, 300, 9), (517, 64, 3), (40, 40, 9)])
@pytest.mark.parametrize("ties", [False, True])
def test_smallest_per_column_equals_topk(height, width, num, ties):
    generator = torch.Generator().manual_seed(height + num)
    block = torch.randn(height, width, generator=generator)
    if ties:
        block = torch.round(2 * block)
    values, rows = smallest_per_column(block, num)
    expected = torch.topk(block.T, num, dim=1, largest=False).values
    torch.testing.assert_close(values, expected, rtol=0, atol=0)
    torch.testing.assert_close(block.T.gather(1, rows), values, rtol=0, atol=0)
    assert all(len(set(column)) == num for column in rows.tolist())  # distinct rows, no double counting


@pytest.mark.parametrize("dim", [3, 24])
def test_prdc_points_exactly_on_ball_boundaries_match_reference(dim):
    """Real points at exactly a ball's radius (strictly outside, as in `prdc`): decided exactly, both routes."""
    generated = np.zeros((12, dim), dtype=np.float32)
    generated[:, 0] = 2 * np.arange(12)  # k=1 radius of every generated ball: 2
    real = generated + np.float32(2) * np.eye(dim, dtype=np.float32)[1]  # each at distance exactly 2 from one
    real[::3, 1] = 1  # and every third one strictly inside
    expected = reference_prdc(real, generated, 1)
    ours = prdc(torch.from_numpy(real), torch.from_numpy(generated), k=1, chunk_size=5)
    for key, value in expected.items():
        assert float(ours[key]) == pytest.approx(float(value), abs=1e-6), key
