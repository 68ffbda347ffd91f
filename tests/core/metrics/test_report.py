"""The EGT report, the likelihood report and the plot."""

import json
import math

import pytest
import torch

from hf_egt.core.metrics import (
    DIVERGENCES,
    egt_report,
    estimate,
    group_likelihood,
    group_run,
    kl_divergence,
    likelihood_report,
    plot_report,
    prdc,
    total_variation_distance,
)


def make_groups(seed=0, dim=3):
    """Group "a" generated well (small shift), "b" shifted more (worse); different real/generated counts."""
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(300 + 200, dim, generator=generator, dtype=torch.float64)
    real_groups = ["a"] * 300 + ["b"] * 200
    generated = torch.cat(
        [
            0.4 + torch.randn(250, dim, generator=generator, dtype=torch.float64),
            1.0 + torch.randn(150, dim, generator=generator, dtype=torch.float64),
        ]
    )
    generated_groups = ["a"] * 250 + ["b"] * 150
    return real, real_groups, generated, generated_groups


def test_report_values_are_the_estimator_on_each_group_and_summaries_are_consistent():
    real, real_groups, generated, generated_groups = make_groups()
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="kl",
        n_bootstrap=0,
    )
    assert report["per_group"]["a"] == pytest.approx(float(kl_divergence(real[:300], generated[:250])))
    assert report["per_group"]["b"] == pytest.approx(float(kl_divergence(real[300:], generated[250:])))
    assert report["overall"] == pytest.approx(float(kl_divergence(real, generated)))
    values = report["per_group"]
    assert report["worst_group"] == "b" and report["best_group"] == "a"
    assert report["gap"] == pytest.approx(values["b"] - values["a"])
    assert report["ratio"] == pytest.approx(values["b"] / values["a"])
    assert report["counts"] == {"a": {"real": 300, "generated": 250}, "b": {"real": 200, "generated": 150}}
    assert report["missing"] == {}


def test_proportion_criteria():
    real, real_groups, generated, generated_groups = make_groups()
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="tv",
        n_bootstrap=0,
    )
    assert report["generated_share"] == pytest.approx({"a": 250 / 400, "b": 150 / 400})
    assert report["data_share"] == pytest.approx({"a": 0.6, "b": 0.4})
    assert report["ego_gap"] == pytest.approx(250 / 400 - 0.5)
    assert report["mgo_gap"] == pytest.approx(abs(250 / 400 - 0.6))


def test_precision_like_metrics_are_higher_is_better():
    real, real_groups, generated, generated_groups = make_groups()
    report = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="precision",
        n_bootstrap=0,
    )
    assert report["higher_is_worse"] is False
    assert report["per_group"]["a"] == pytest.approx(float(prdc(real[:300], generated[:250])["precision"]))
    assert report["worst_group"] == "b"  # the shifted group has the lower precision


def test_every_divergence_name_runs_and_report_is_json_serialisable():
    real, real_groups, generated, generated_groups = make_groups(dim=2)
    for name in DIVERGENCES:
        kwargs = {"pr_lambda": 0.5} if name == "pr" else {}
        report = egt_report(
            real,
            real_groups,
            generated_features=generated,
            generated_groups=generated_groups,
            divergence=name,
            n_bootstrap=0,
            n_permutations=0,
            n_null=0,
            **kwargs,
        )
        decoded = json.loads(json.dumps(report))
        assert decoded["divergence"] == name and set(decoded["per_group"]) == {"a", "b"}
        assert math.isfinite(report["overall"])
    assert report["estimator_kwargs"] == {}
    pr = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="pr",
        n_bootstrap=0,
        pr_lambda=1.0,
    )
    assert pr["per_group"]["a"] == pytest.approx(float(total_variation_distance(real[:300], generated[:250])))
    assert pr["estimator_kwargs"] == {"pr_lambda": 1.0}


def test_confidence_intervals_are_seeded_and_bracket_the_value():
    real, real_groups, generated, generated_groups = make_groups()

    def report(seed: int) -> dict:
        return egt_report(
            real,
            real_groups,
            generated_features=generated,
            generated_groups=generated_groups,
            divergence="tv",
            n_bootstrap=10,
            seed=seed,
        )

    first, second, other = report(3), report(3), report(4)
    assert first["ci"] == second["ci"] and first["ci"] != other["ci"]
    for group, (low, high) in first["ci"].items():
        assert low <= first["per_group"][group] <= high
        assert high - low > 0
    few = ["a"] * 300 + ["b"] * 191 + ["few"] * 9  # 9 samples: enough for k=5, not their halves
    with pytest.warns(UserWarning, match="Group 'few': no confidence interval"):
        report = egt_report(
            real,
            few,
            generated_features=generated,
            generated_groups=generated_groups[:-9] + ["few"] * 9,
            divergence="kl",
            n_bootstrap=2,
        )
    assert math.isfinite(report["per_group"]["few"]) and all(math.isnan(bound) for bound in report["ci"]["few"])


def test_group_on_one_side_only_is_reported_not_dropped():
    real, real_groups, generated, generated_groups = make_groups()
    real_groups = real_groups[:-20] + ["only_real"] * 20
    with pytest.warns(UserWarning, match="only_real"):
        report = egt_report(
            real,
            real_groups,
            generated_features=generated,
            generated_groups=generated_groups,
            divergence="kl",
            n_bootstrap=0,
        )
    assert math.isnan(report["per_group"]["only_real"])
    assert report["missing"] == {"only_real": "generated"}
    assert report["counts"]["only_real"] == {"real": 20, "generated": 0}
    assert report["worst_group"] in {"a", "b"}
    assert report["generated_share"]["only_real"] == 0.0
    assert report["ego_gap"] == pytest.approx(max(abs(250 / 400 - 1 / 3), abs(150 / 400 - 1 / 3), 1 / 3))


def test_bad_inputs_raise_errors_that_name_the_problem():
    real, real_groups, generated, generated_groups = make_groups()
    small_groups = ["a"] * 300 + ["b"] * 197 + ["tiny"] * 3
    with pytest.raises(ValueError, match=r"Group 'tiny'.*`real` has 3 sample\(s\).*at least 6"):
        egt_report(
            real,
            small_groups,
            generated_features=generated,
            generated_groups=generated_groups[:-3] + ["tiny"] * 3,
            divergence="kl",
            n_bootstrap=0,
        )
    bad = generated.clone()
    bad[7, 0] = math.nan
    with pytest.raises(ValueError, match="`generated_features` has 1 row"):
        egt_report(real, real_groups, generated_features=bad, generated_groups=generated_groups)
    with pytest.raises(ValueError, match="different dimensions: 3 vs 2"):
        egt_report(real, real_groups, generated_features=generated[:, :2], generated_groups=generated_groups)
    with pytest.raises(ValueError, match="`real_groups` has 499 labels"):
        egt_report(real, real_groups[:-1], generated_features=generated, generated_groups=generated_groups)
    with pytest.raises(ValueError, match="Unknown `divergence` 'wasserstein'"):
        egt_report(
            real, real_groups, generated_features=generated, generated_groups=generated_groups, divergence="wasserstein"
        )
    with pytest.raises(ValueError, match="Unknown `divergence`"):
        estimate(real, generated, divergence="nope")
    with pytest.raises(ValueError, match="No group has both"), pytest.warns(UserWarning):
        egt_report(real, real_groups, generated_features=generated, generated_groups=["c"] * len(generated_groups))


def test_likelihood_report_matches_token_weighted_means():
    nll_sums = torch.tensor([10.0, 20.0, 6.0, 30.0, 3.0])
    token_counts = torch.tensor([5, 10, 2, 10, 1])
    groups = ["x", "x", "y", "y", "y"]
    report = likelihood_report(nll_sums, token_counts, groups, n_bootstrap=50)
    assert report["nll"]["per_group"] == pytest.approx({"x": 30 / 15, "y": 39 / 13})
    assert report["perplexity"]["per_group"]["y"] == pytest.approx(math.exp(3.0))
    assert report["nll"]["overall"] == pytest.approx(69 / 28)
    assert report["nll"]["worst_group"] == "y" and report["nll"]["gap"] == pytest.approx(1.0)
    assert report["counts"] == {"x": {"examples": 2, "tokens": 15}, "y": {"examples": 3, "tokens": 13}}
    low, high = report["nll"]["ci"]["x"]
    assert low <= 2.0 <= high
    json.dumps(report)
    with pytest.raises(ValueError, match="one entry per example"):
        likelihood_report(nll_sums, token_counts[:4], groups)
    with pytest.raises(ValueError, match="`token_counts` must be positive"):
        likelihood_report(nll_sums, torch.tensor([5, 0, 2, 10, 1]), groups)


def test_likelihood_report_per_sequence_and_per_byte_units_match_hand_computations():
    nll_sums = torch.tensor([10.0, 20.0, 6.0, 30.0, 3.0])
    token_counts = torch.tensor([5, 10, 2, 10, 1])
    byte_counts = torch.tensor([20, 50, 4, 30, 2])
    groups = ["x", "x", "y", "y", "y"]
    report = likelihood_report(nll_sums, token_counts, groups, n_bootstrap=200, byte_counts=byte_counts)
    # nats per text: the mean of the texts' summed NLL; bits per byte: summed NLL / (bytes * ln 2)
    assert report["sequence_nll"]["per_group"] == pytest.approx({"x": 30 / 2, "y": 39 / 3})
    assert report["sequence_nll"]["overall"] == pytest.approx(69 / 5)
    assert report["sequence_nll"]["worst_group"] == "x"  # per token y is worse: the units can disagree
    assert report["nll"]["worst_group"] == "y"
    assert report["bits_per_byte"]["per_group"] == pytest.approx(
        {"x": 30 / 70 / math.log(2), "y": 39 / 36 / math.log(2)}
    )
    assert report["counts"]["y"] == {"examples": 3, "tokens": 13, "bytes": 36}
    for unit, value in (("sequence_nll", 15.0), ("bits_per_byte", 30 / 70 / math.log(2))):
        low, high = report[unit]["ci"]["x"]
        assert low <= value <= high and low < high
    assert "bits_per_byte" not in likelihood_report(nll_sums, token_counts, groups, n_bootstrap=0)
    with pytest.raises(ValueError, match="one entry per example"):
        likelihood_report(nll_sums, token_counts, groups, byte_counts=byte_counts[:3])


def test_group_likelihood_units_from_group_sums():
    likelihood = group_likelihood(
        torch.tensor([30.0, 39.0]), torch.tensor([15, 13]), ["x", "y"], group_sequences=[2, 3], group_bytes=[60, 36]
    )
    assert likelihood["sequence_nll"]["per_group"] == pytest.approx({"x": 15.0, "y": 13.0})
    assert likelihood["sequence_nll"]["gap"] == pytest.approx(2.0)
    assert likelihood["bits_per_byte"]["overall"] == pytest.approx(69 / 96 / math.log(2))
    with pytest.raises(ValueError, match="`group_sequences` must have one entry per group"):
        group_likelihood(torch.tensor([1.0, 2.0]), torch.tensor([1, 2]), ["x", "y"], group_sequences=[1])


def test_plot_report_writes_a_png(tmp_path):
    real, real_groups, generated, generated_groups = make_groups()
    with pytest.warns(UserWarning):
        report = egt_report(
            real,
            real_groups,
            generated_features=generated,
            generated_groups=generated_groups[:-5] + ["new"] * 5,
            divergence="frechet",
            n_bootstrap=3,
        )
    path = plot_report(report, tmp_path / "egt.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_figure_titles_fit_inside_the_figure(tmp_path, monkeypatch):
    """report.png (`write_report`, the default and a long title) and the EGT figure (`plot_report`): every title's
    drawn box lies inside the figure, none cut at an edge."""
    import matplotlib.figure

    from hf_egt.integrations.evaluation import write_report

    extents = []
    savefig = matplotlib.figure.Figure.savefig

    def recording_savefig(self, *args, **kwargs):
        savefig(self, *args, **kwargs)
        renderer = self.canvas.get_renderer()
        extents.extend((axes.title.get_window_extent(renderer), self.bbox) for axes in self.axes)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    runs = {
        "base": group_run({"a": 10.0, "b": 12.0}, {"a": 3, "b": 3}, 11.0),
        "minmax": group_run({"a": 9.0, "b": 9.5}, {"a": 3, "b": 3}, 9.2),
    }
    write_report(runs, tmp_path / "default", title="hf-egt: /a/long/path/to/a/model on /a/long/path/to/data.jsonl")
    real, real_groups, generated, generated_groups = make_groups()
    report = egt_report(
        real, real_groups, generated_features=generated, generated_groups=generated_groups, n_bootstrap=3
    )
    plot_report(report, tmp_path / "egt.png", title="EGT of a model with a rather long name " * 3)
    assert len(extents) == 2
    for title, figure in extents:
        assert title.width > 0
        assert figure.x0 <= title.x0 and title.x1 <= figure.x1 and figure.y0 <= title.y0 and title.y1 <= figure.y1


def embedding_like_null(dim: int = 384, n: int = 50, seed: int = 0):
    """Three groups of unit-norm 384-d features with a 16-d structure (as sentence embeddings); real and generated
    are two disjoint draws of each group's distribution (a null case)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, dim, generator=generator, dtype=torch.float64)
    real, generated, groups = [], [], []
    for index in range(3):
        centre = torch.randn(16, generator=generator, dtype=torch.float64)
        rows = (centre + torch.randn(2 * n, 16, generator=generator, dtype=torch.float64)) @ basis
        rows = torch.nn.functional.normalize(rows + 2.0 * torch.randn(2 * n, dim, generator=generator), dim=1)
        real.append(rows[:n])
        generated.append(rows[n:])
        groups += [f"g{index}"] * n
    return torch.cat(real), groups, torch.cat(generated), groups


def test_every_divergence_on_a_384_d_null_case_is_finite_and_within_its_floor():
    """In 384-d the density-ratio k-NN estimators raised d * log(distance ratio) to the power (chi^2 of 1e36 on a
    null case, squared Hellinger exactly 0); above KNN_VALIDATED_DIM they now see a PCA of the pair, and the k-NN
    chi^2, still far off on 8 components of real embeddings, is refused with its reason. PRDC scores are
    checked for range only: their floors come from halves, where precision and coverage run high (larger k-NN
    balls), so a null value falls below its floor now and then (1 group-check in 36 on seeds 0-2)."""
    from hf_egt.core.metrics.prdc import PRDC_KEYS
    from hf_egt.core.metrics.registry import KNN_VALIDATED_DIM, QUANTIZED

    real, groups, generated, _ = embedding_like_null(n=100)
    with pytest.raises(ValueError, match=r"Group 'g0': `divergence`='chi2' is refused on 8-d features .*heavy-tailed"):
        egt_report(real, groups, generated_features=generated, generated_groups=groups, divergence="chi2")
    for name in (name for name in DIVERGENCES if name != "chi2"):
        report = egt_report(
            real, groups, generated_features=generated, generated_groups=groups, divergence=name, n_permutations=0
        )
        assert all(math.isfinite(value) for value in report["per_group"].values()), name
        assert report["projection"] == (None if name in QUANTIZED else {"pca": KNN_VALIDATED_DIM})
        if name in PRDC_KEYS:
            assert all(0 <= value <= (2 if name == "density" else 1) for value in report["per_group"].values())
        else:
            assert all(report["within_floor"].values()), (name, report["per_group"], report["null_floor"])


def test_high_dimensional_knn_estimates_see_a_pca_of_the_pair_unless_told_otherwise():
    from hf_egt.core.metrics.projection import fit_projection

    real, _, generated, _ = embedding_like_null(n=40)
    real, generated = real[:40], generated[:40]
    projection = fit_projection(torch.cat([real, generated]), pca=8)
    expected = kl_divergence(projection(real), projection(generated))
    assert float(estimate(real, generated, "kl")) == float(expected)
    assert float(estimate(real[:, :8], generated[:, :8], "kl")) == float(kl_divergence(real[:, :8], generated[:, :8]))
    with pytest.warns(UserWarning, match=r"kl on 384-d features: .* validated up to 8 dimensions"):
        estimate(real, generated, "kl", pca=None)


def test_missing_group_labels_and_empty_inputs_are_refused_naming_the_argument():
    real, real_groups, generated, generated_groups = make_groups()
    with pytest.raises(ValueError, match=r"`real_groups` has 1 missing label\(s\) \(None or NaN\) at row\(s\) 5"):
        egt_report(
            real,
            real_groups[:5] + [None] + real_groups[6:],
            generated_features=generated,
            generated_groups=generated_groups,
        )
    with pytest.raises(ValueError, match="`generated_features` is empty"):
        egt_report(real, real_groups, generated_features=[], generated_groups=[])
    with pytest.raises(ValueError, match="`real_features` is empty"):
        egt_report([], [], generated_features=generated, generated_groups=generated_groups)
