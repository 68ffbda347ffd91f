"""The quantised estimators (exact on histograms), MAUVE against mauve-text, the noise floor, the gap p-value and the
small-sample checks of the EGT report."""

import importlib
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from benchmarks.separated_groups import CENTRES, SIZES, groups_data
from hf_egt.core.metrics import (
    QUANTIZED,
    egt_report,
    estimate,
    histogram_divergence,
    quantized_pr_curve,
)
from hf_egt.core.metrics import quantized as quantized_module
from hf_egt.core.metrics.knn import radius_counts
from hf_egt.core.metrics.projection import fit_projection
from hf_egt.core.metrics.quantized import fit_codebook, histogram_mauve, kmeans

P_COUNTS = torch.tensor([5.0, 3.0, 2.0, 0.0], dtype=torch.float64)
Q_COUNTS = torch.tensor([2.0, 2.0, 4.0, 2.0], dtype=torch.float64)


def test_histogram_divergences_are_exact_on_discrete_distributions():
    p, q = P_COUNTS / P_COUNTS.sum(), Q_COUNTS / Q_COUNTS.sum()
    nonzero = p > 0
    expected = {
        "kl": float((p[nonzero] * (p[nonzero] / q[nonzero]).log()).sum()),
        "tv": 0.5 * float((p - q).abs().sum()),
        "js": float(jensenshannon(p.numpy(), q.numpy())) ** 2,
        "hellinger": 1 - float((p * q).sqrt().sum()),
        "chi2": float(((p - q) ** 2 / q).sum()),
        "pr": 0.5 - float(torch.minimum(0.5 * p, q).sum()),
    }
    for name, value in expected.items():
        got = histogram_divergence(name, P_COUNTS, Q_COUNTS, smoothing=0.0, pr_lambda=0.5)
        assert float(got) == pytest.approx(value, abs=1e-12), name
    assert math.isinf(float(histogram_divergence("reverse_kl", P_COUNTS, Q_COUNTS, smoothing=0.0)))
    # Krichevsky-Trofimov smoothing: half a count in every bin before normalising.
    smoothed_p, smoothed_q = (P_COUNTS + 0.5) / (P_COUNTS + 0.5).sum(), (Q_COUNTS + 0.5) / (Q_COUNTS + 0.5).sum()
    reverse = float((smoothed_q * (smoothed_q / smoothed_p).log()).sum())
    assert float(histogram_divergence("reverse_kl", P_COUNTS, Q_COUNTS)) == pytest.approx(reverse, abs=1e-12)
    assert float(histogram_divergence("mauve", P_COUNTS, P_COUNTS)) == pytest.approx(1.0, abs=1e-12)


def atoms_dataset(p_probs, q_probs, n=2000, seed=0):
    """Samples on 3 far-apart atoms in 2-d (with tiny jitter): k-means with 3 clusters recovers the atoms."""
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    real_labels = torch.multinomial(torch.tensor(p_probs), n, replacement=True, generator=generator)
    generated_labels = torch.multinomial(torch.tensor(q_probs), n, replacement=True, generator=generator)
    jitter = 1e-3 * torch.randn(2 * n, 2, generator=generator, dtype=torch.float64)
    return atoms[real_labels] + jitter[:n], atoms[generated_labels] + jitter[n:], real_labels, generated_labels


def test_quantised_estimators_equal_the_divergence_of_the_empirical_histograms():
    real, generated, real_labels, generated_labels = atoms_dataset([0.5, 0.3, 0.2], [0.2, 0.3, 0.5])
    p = torch.bincount(real_labels, minlength=3).double()
    q = torch.bincount(generated_labels, minlength=3).double()
    settings = {"num_clusters": 3, "pca": None, "normalize": False}
    for name, histogram_name in QUANTIZED.items():
        expected = float(histogram_divergence(histogram_name, p, q))
        assert float(estimate(real, generated, name, **settings)) == pytest.approx(expected, abs=1e-12), name
    curve = quantized_pr_curve(real, generated, num_angles=5, **settings)
    alpha = torch.minimum(curve["lambdas"].unsqueeze(1) * (p / p.sum()), q / q.sum()).sum(dim=1)
    assert torch.allclose(curve["precision"], alpha)


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    real, generated, real_labels, generated_labels = atoms_dataset([0.4, 0.3, 0.3], [0.3, 0.3, 0.4], n=300)
    points = torch.cat([real, generated])
    truth = torch.cat([real_labels, generated_labels])
    centroids, inertia = kmeans(points, 3, n_init=2, seed=1)
    assigned = torch.cdist(points, centroids).argmin(dim=1)
    # The partition is the atoms' (up to relabelling): each cluster holds a single atom.
    assert all(len(set(truth[assigned == c].tolist())) == 1 for c in range(3))
    again, _ = kmeans(points, 3, n_init=2, seed=1)
    assert torch.equal(centroids, again)
    assert inertia == pytest.approx(float((points - centroids[assigned]).square().sum()))


def test_pca_keeps_the_components_of_sklearn_for_the_explained_variance_share():
    from sklearn.decomposition import PCA

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 6, generator=generator, dtype=torch.float64) * torch.tensor([5, 3, 2, 1, 0.5, 0.1])
    projection = fit_projection(features, pca=0.9, normalize=True)
    normalised = torch.nn.functional.normalize(features, dim=1).numpy()
    reference = PCA().fit(normalised)
    kept = int(np.argmax(np.cumsum(reference.explained_variance_ratio_) >= 0.9)) + 1
    assert projection.dim == kept
    ours = projection(features).numpy()
    theirs = reference.transform(normalised)[:, :kept]
    assert np.allclose(np.abs(ours), np.abs(theirs), atol=1e-8)  # equal up to the sign of each component


def test_mauve_equals_mauve_text_on_its_own_histograms():
    mauve = pytest.importorskip("mauve")
    from sklearn.metrics import auc

    mauve_module = importlib.import_module("mauve.compute_mauve")

    rng = np.random.default_rng(0)
    p_features = rng.standard_normal((300, 16))
    q_features = rng.standard_normal((250, 16)) + 0.3
    out = mauve.compute_mauve(p_features=p_features, q_features=q_features, verbose=False, kmeans_num_redo=1)
    ours = histogram_mauve(torch.as_tensor(out.p_hist), torch.as_tensor(out.q_hist))
    assert float(ours) == pytest.approx(out.mauve, abs=1e-6)
    # On arbitrary histograms too, through mauve-text's own divergence curve and area.
    for seed in range(3):
        p, q = np.random.default_rng(seed).dirichlet(np.ones(12), size=2)
        p[3] = 0.0
        p /= p.sum()
        x, y = mauve_module.get_divergence_curve_for_multinomials(p, q, np.linspace(1e-6, 1 - 1e-6, 25), 5).T
        i, j = np.argsort(x), np.argsort(y)
        reference = 0.5 * (auc(x[i], y[i]) + auc(y[j], x[j]))
        assert float(histogram_mauve(torch.as_tensor(p), torch.as_tensor(q))) == pytest.approx(reference, abs=1e-6)


def two_groups(shift_b: float, n=240, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = {"a": torch.zeros(dim, dtype=torch.float64), "b": torch.full((dim,), 0.7, dtype=torch.float64)}
    real, generated, real_groups, generated_groups = [], [], [], []
    for group, centre in centres.items():
        real.append(centre + torch.randn(n, dim, generator=generator, dtype=torch.float64))
        shift = shift_b if group == "b" else 0.0
        generated.append(centre + shift + torch.randn(n, dim, generator=generator, dtype=torch.float64))
        real_groups += [group] * n
        generated_groups += [group] * n
    return torch.cat(real), real_groups, torch.cat(generated), generated_groups


@pytest.mark.parametrize("divergence", ["quantized_js", "mauve"])
def test_null_case_sits_within_the_floor_and_its_gap_is_not_significant(divergence):
    real, real_groups, generated, generated_groups = two_groups(shift_b=0.0)
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence=divergence,
        n_permutations=60,
    )
    assert report["within_floor"] == {"a": True, "b": True}
    assert report["gap_p_value"] > 0.05 and report["gap_significant"] is False
    assert report["num_clusters"] == 24  # MAUVE's n / 10 on the smallest group's side
    for group, (low, high) in report["ci"].items():
        assert low <= report["per_group"][group] <= high


def test_quantised_intervals_stay_within_the_range_of_a_divergence():
    """At the demo's size (24 per group) the plug-in value sits near 0 below its replicates' mean; the interval
    around it is clipped at 0, where a divergence of two histograms ends, and still holds the value."""
    real, real_groups, generated, generated_groups = two_groups(shift_b=0.0, n=24)
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="quantized_js",
        n_null=0,
        n_permutations=0,
    )
    for group, (low, high) in report["ci"].items():
        assert 0.0 <= low <= report["per_group"][group] <= high


@pytest.mark.parametrize("divergence", ["quantized_js", "mauve", "quantized_pr", "kl"])
def test_a_real_shift_is_detected_and_significant(divergence):
    real, real_groups, generated, generated_groups = two_groups(shift_b=0.6)
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence=divergence,
        n_permutations=100,
        n_bootstrap=20,
    )
    assert report["worst_group"] == "b"
    assert report["within_floor"]["b"] is False
    assert report["gap_p_value"] < 0.05 and report["gap_significant"] is True


def test_permuted_groups_share_the_pooled_quality():
    """The p-value counts permutations whose gap reaches the observed one: with identical groups it is not small,
    and its resolution is 1 / (1 + n_permutations)."""
    real, real_groups, generated, generated_groups = two_groups(shift_b=3.0)
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="quantized_tv",
        n_permutations=49,
    )
    assert report["gap_p_value"] == pytest.approx(1 / 50)


def test_small_groups_are_rejected_before_any_work(monkeypatch):
    real, real_groups, generated, generated_groups = two_groups(shift_b=0.0, n=60)
    generated_groups = generated_groups[:-15] + ["tiny"] * 15

    def no_work(*args, **kwargs):
        raise AssertionError("the codebook was fitted before the sample sizes were checked")

    monkeypatch.setattr(quantized_module, "pooled_codebook", no_work)
    real_groups = real_groups[:-15] + ["tiny"] * 15
    with pytest.raises(ValueError, match=r"Group 'tiny': `real` has 15 sample\(s\).*needs at least 20"):
        egt_report(
            real, real_groups, generated_features=generated, generated_groups=generated_groups, divergence="mauve"
        )
    with pytest.raises(ValueError, match=r"at least 60 per group"):
        egt_report(
            real,
            real_groups,
            generated_features=generated,
            generated_groups=generated_groups,
            divergence="quantized_js",
            num_clusters=6,
        )


@pytest.mark.parametrize("dim", [3, 20])
def test_radius_counts_match_brute_force(dim):
    generator = torch.Generator().manual_seed(dim)
    query = torch.randn(150, dim, generator=generator, dtype=torch.float64)
    reference = torch.randn(130, dim, generator=generator, dtype=torch.float64)
    sq = torch.cdist(query, reference).square()
    radius_sq = sq.sort(dim=1).values[:, 6]  # a neighbour distance: the 7th nearest
    counts, largest = radius_counts(query, reference, radius_sq, chunk_size=40)
    assert torch.equal(counts, torch.full_like(counts, 7))
    assert torch.allclose(largest, radius_sq, rtol=1e-6)
    self_sq = torch.cdist(query, query).square().fill_diagonal_(torch.inf)
    radius_sq = self_sq.sort(dim=1).values[:, 4]
    counts, largest = radius_counts(query, query, radius_sq, exclude_self=True, chunk_size=40)
    assert torch.equal(counts, torch.full_like(counts, 5))
    assert torch.allclose(largest, radius_sq, rtol=1e-6)


def test_each_group_is_measured_on_a_codebook_of_its_own_pooled_samples():
    real, real_groups, generated, generated_groups = two_groups(shift_b=0.3)
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="quantized_tv",
        n_null=0,
        n_permutations=0,
    )
    for group, rows in (("a", slice(0, 240)), ("b", slice(240, 480))):
        pooled = torch.cat([real[rows], generated[rows]])
        codebook = fit_codebook(pooled, report["num_clusters"], seed=0)
        p = torch.bincount(codebook.assign(real[rows]), minlength=codebook.num_clusters)
        q = torch.bincount(codebook.assign(generated[rows]), minlength=codebook.num_clusters)
        assert report["per_group"][group] == pytest.approx(float(histogram_divergence("tv", p, q)), abs=1e-12)
        alone = estimate(real[rows], generated[rows], "quantized_tv", num_clusters=report["num_clusters"], seed=0)
        assert report["per_group"][group] == float(alone)


@pytest.mark.parametrize("divergence", ["quantized_js", "mauve"])
def test_a_shifted_group_is_found_when_the_groups_lie_far_apart(divergence):
    """A codebook shared by all groups spent its 5 clusters on separating the groups (b scored 0.000, p = 0.73);
    with a codebook per group the separated layout gives the overlapping layout's values exactly."""
    reports = {}
    for layout in CENTRES:
        real, real_groups, generated, generated_groups = groups_data(layout)
        reports[layout] = egt_report(
            real,
            real_groups,
            generated_features=generated,
            generated_groups=generated_groups,
            divergence=divergence,
            n_bootstrap=0,
            n_null=5,
            n_permutations=100,
        )
    for report in reports.values():
        assert report["worst_group"] == "b"
        assert report["gap_p_value"] < 0.01 and report["within_floor"]["b"] is False
    for group in SIZES:  # PCA centres each group's pooled samples: a translation changes nothing
        separated, overlapping = reports["separated"]["per_group"][group], reports["overlapping"]["per_group"][group]
        assert separated == pytest.approx(overlapping, abs=1e-9)


@pytest.mark.parametrize("divergence", ["quantized_js", "mauve", "kl", "js"])
def test_a_group_value_ignores_where_the_other_groups_lie(divergence):
    real, real_groups, generated, generated_groups = groups_data("overlapping")
    settings = dict(divergence=divergence, n_bootstrap=0, n_null=0, n_permutations=0)
    before = egt_report(real, real_groups, generated_features=generated, generated_groups=generated_groups, **settings)
    far = torch.tensor([group == "c" for group in real_groups])
    far_generated = torch.tensor([group == "c" for group in generated_groups])
    moved = egt_report(
        real + 50.0 * far.unsqueeze(1),
        real_groups,
        generated_features=generated - 80.0 * far_generated.unsqueeze(1),
        generated_groups=generated_groups,
        **settings,
    )
    for group in ("a", "b"):
        assert moved["per_group"][group] == before["per_group"][group]


def test_markdown_table_and_plot_mark_floors_and_a_non_significant_gap(tmp_path):
    from hf_egt.core.metrics import plot_report, report_table

    real, real_groups, generated, generated_groups = two_groups(shift_b=0.0)
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="quantized_js",
        n_permutations=50,
    )
    table = report_table(report)
    assert "| a | 240 | 240 |" in table and "| b | 240 | 240 |" in table
    assert table.count("**yes** (noise)") == 2 and "**not significant**" in table
    assert f"{report['null_floor']['a']:.3f}" in table
    assert plot_report(report, tmp_path / "egt.png").stat().st_size > 0


def test_text_egt_checks_prompt_counts_before_any_model_work():
    from hf_egt.integrations.evaluation import embedding_egt, evaluate_causal_lm

    texts, groups = ["some words here"] * 30, ["a"] * 25 + ["b"] * 5
    # No model at all: the check must fail before the model, the tokenizer or the encoder is touched.
    with pytest.raises(ValueError, match=r"\{'b': 5\} have fewer prompts than the 'quantized_js' estimator needs \(20"):
        evaluate_causal_lm(None, None, texts, groups, feature_model="no-such-encoder")
    with pytest.raises(ValueError, match=r"\{'a': 10, 'b': 5\} have fewer prompts than the 'mauve'"):
        evaluate_causal_lm(None, None, texts, groups, feature_model="x", max_prompts_per_group=10, divergence="mauve")
    with pytest.raises(ValueError, match=r"\{'b': \(5, 5\)\} \(\(real, generated\) texts\)"):
        embedding_egt(texts, groups, generated_texts=texts, generated_groups=groups, feature_model="no-such-encoder")


def test_quantised_floor_is_computed_for_groups_below_twice_the_minimum():
    real, real_groups, generated, generated_groups = two_groups(shift_b=0.0, n=30)
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="quantized_js",
        n_permutations=0,
    )
    assert all(math.isfinite(report["null_floor"][group]) for group in ("a", "b"))  # halves of 15 < 20
    with pytest.warns(UserWarning, match="no null floor, halves of its 11 real samples are below the 6"):
        few = egt_report(
            real[:41],
            real_groups[:41],
            generated_features=generated,
            generated_groups=generated_groups,
            divergence="kl",
            n_permutations=0,
        )
    assert math.isnan(few["null_floor"]["b"]) and few["within_floor"]["b"] is None
