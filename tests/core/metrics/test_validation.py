"""``hf_egt.core.metrics.validation``: the fewest samples each estimator accepts, and the one sample-size gate
(``groups_below_minimum``) behind every per-group check of the EGT report and of text EGT."""

import random

import pytest
import torch

from hf_egt.core.metrics import DIVERGENCES, egt_report, estimate, minimum_samples
from hf_egt.core.metrics.registry import KNN_DIVERGENCES
from hf_egt.core.metrics.validation import groups_below_minimum


def test_minimum_samples_per_estimator():
    assert minimum_samples("kl") == 6 and minimum_samples("kl", k=3) == 4
    assert minimum_samples("precision", k=5) == 6
    assert minimum_samples("js") == 2 and minimum_samples("frechet") == 2
    assert minimum_samples("mauve") == 20 and minimum_samples("quantized_kl", num_clusters=10) == 100
    with pytest.raises(ValueError, match="Unknown `divergence` 'nope'"):
        minimum_samples("nope")


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_every_estimator_accepts_its_minimum_and_the_knn_ones_no_fewer(name):
    generator = torch.Generator().manual_seed(0)
    minimum = minimum_samples(name)
    real = torch.randn(minimum, 2, generator=generator, dtype=torch.float64)
    generated = 0.3 + torch.randn(minimum, 2, generator=generator, dtype=torch.float64)
    assert not torch.isnan(estimate(real, generated, name))
    if name in KNN_DIVERGENCES:  # k + 1: a sample's k-th nearest other sample must exist
        with pytest.raises(ValueError, match=f"needs at least {minimum}"):
            estimate(real[1:], generated[1:], name)


def test_gate_counts_match_a_hand_count():
    # b: 3, a: 2, c: 1 (counted by hand); below 3: a and c, in the order first seen
    labels = ["b", "a", "b", "c", "a", "b"]
    assert groups_below_minimum(labels, 3) == {"a": 2, "c": 1}
    assert list(groups_below_minimum(labels, 3)) == ["a", "c"]
    assert groups_below_minimum(labels, 1) == {}
    assert groups_below_minimum([], 5) == {}
    # a cap counts at most that many rows of each group: b's 3 rows count as 2
    assert groups_below_minimum(labels, 3, cap=2) == {"b": 2, "a": 2, "c": 1}
    # counts already made give the same answer as the labels they count
    assert groups_below_minimum({"b": 3, "a": 2, "c": 1}, 3) == groups_below_minimum(labels, 3)


@pytest.mark.parametrize("seed", range(5))
def test_gate_equals_counting_each_group_with_list_count(seed):
    """The reference: the per-group ``list.count`` each check used before the gate."""
    rng = random.Random(seed)
    labels = [rng.choice(["a", "b", "c", "d", 7]) for _ in range(rng.randrange(1, 60))]
    minimum, cap = rng.randrange(1, 15), rng.choice([None, rng.randrange(1, 15)])
    reference = {}
    for group in dict.fromkeys(labels):
        count = labels.count(group) if cap is None else min(labels.count(group), cap)
        if count < minimum:
            reference[group] = count
    assert groups_below_minimum(labels, minimum, cap=cap) == reference
    assert list(groups_below_minimum(labels, minimum, cap=cap)) == list(reference)


def test_report_names_every_short_group_and_side_before_any_work():
    """The error path of ``egt_report``: each compared group below the minimum, side by side, with its count; a group
    seen on one side only is reported as missing (a warning), not as short."""
    real_groups = ["a"] * 10 + ["b"] * 4 + ["c"] * 8 + ["only_real"] * 2
    generated_groups = ["a"] * 3 + ["b"] * 5 + ["c"] * 9
    real = torch.randn(len(real_groups), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    generated = torch.randn(len(generated_groups), 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = (
        "Group 'a': `generated` has 3 sample(s); Group 'b': `real` has 4 sample(s); Group 'b': `generated` has 5 "
        "sample(s); but kl with its defaults needs at least 6 per group and side "
        "(hf_egt.core.metrics.minimum_samples). Collect at least 6 real and generated samples for each such group, "
        "merge small groups, or choose an estimator with a smaller minimum."
    )
    warns = pytest.warns(UserWarning, match="Group 'only_real' has no generated samples")
    with warns, pytest.raises(ValueError) as error:
        egt_report(real, real_groups, generated_features=generated, generated_groups=generated_groups, divergence="kl")
    assert str(error.value) == expected
    # k=2 needs 3: nothing is short any more, and the report counts what the gate counted
    with pytest.warns(UserWarning, match="Group 'only_real' has no generated samples"):
        report = egt_report(
            real,
            real_groups,
            generated_features=generated,
            generated_groups=generated_groups,
            divergence="kl",
            k=2,
            n_bootstrap=0,
            n_null=0,
            n_permutations=0,
        )
    assert report["minimum_samples"] == 3
    assert report["counts"]["b"] == {"real": real_groups.count("b"), "generated": generated_groups.count("b")}


def test_text_egt_names_short_groups_with_both_counts_before_embedding():
    from hf_egt.integrations.evaluation import embedding_egt, groups_too_small_for_egt

    real_groups = ["x"] * 3 + ["y"] * 8 + ["z"] * 2
    generated_groups = ["y"] * 4 + ["x"] * 7 + ["w"] * 1
    # no encoder is loaded: the check runs first ("no-such-encoder" would fail to load)
    with pytest.raises(ValueError) as error:
        embedding_egt(
            ["t"] * len(real_groups),
            real_groups,
            generated_texts=["t"] * len(generated_groups),
            generated_groups=generated_groups,
            feature_model="no-such-encoder",
            divergence="kl",
        )
    # x: 3 real, 7 generated; y: 8 real, 4 generated; z and w are on one side only
    assert str(error.value).startswith("Group(s) {'x': (3, 7), 'y': (8, 4)} ((real, generated) texts) have fewer ")
    # prompts: sorted by group, each capped at max_prompts_per_group
    assert groups_too_small_for_egt(real_groups, "kl", None) == (6, {"x": 3, "z": 2})
    assert groups_too_small_for_egt(real_groups, "kl", 5) == (6, {"x": 3, "y": 5, "z": 2})
