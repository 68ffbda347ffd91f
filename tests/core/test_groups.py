"""The per-group reductions (``hf_egt.core.groups``) and what reduces through them, against hand computations and
equivalent computations: per-group sums against a loop over rows and across any split of a batch into micro-batches,
the trainer's per-group metrics by hand, masked means by hand, group counts."""

from __future__ import annotations

import math

import pytest
import torch

from hf_egt.core.groups import group_means, group_sums, label_counts
from hf_egt.core.losses import masked_mean, sequence_losses
from hf_egt.core.metrics import group_likelihood, likelihood_report, summarize_groups
from hf_egt.integrations.trainer.egt_trainer import group_eval_metrics


def rows_of_groups(seed: int = 0, rows: int = 23, num_groups: int = 4):
    """Integer-valued losses and weights (sums of them are exact in float64), random group ids; group 3 left empty."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 50, (rows,), generator=generator).double()
    weights = torch.randint(0, 7, (rows,), generator=generator).double()
    ids = torch.randint(0, num_groups - 1, (rows,), generator=generator)
    return values, ids, weights, num_groups


def test_group_sums_equal_a_loop_over_rows():
    values, ids, weights, num_groups = rows_of_groups()
    sums, counts = group_sums(values, ids, num_groups, weights)
    loop_sums, loop_counts = [0.0] * num_groups, [0.0] * num_groups
    for value, group, weight in zip(values.tolist(), ids.tolist(), weights.tolist()):
        loop_sums[group] += value * weight
        loop_counts[group] += weight
    assert sums.tolist() == loop_sums and counts.tolist() == loop_counts
    assert sums[3] == 0 and counts[3] == 0  # a group absent from the batch
    unweighted_sums, row_counts = group_sums(values, ids, num_groups)
    assert row_counts.tolist() == [float(ids.tolist().count(g)) for g in range(num_groups)]
    assert unweighted_sums.tolist() == [
        sum(v for v, g in zip(values.tolist(), ids.tolist()) if g == k) for k in range(4)
    ]


@pytest.mark.parametrize("cuts", [(5,), (1, 2, 3), (7, 7, 20), (0, 23)])
def test_group_sums_do_not_depend_on_the_split_into_micro_batches(cuts):
    """An accumulation window's per-group sums are the sums of its micro-batches' sums, wherever the batch is cut."""
    values, ids, weights, num_groups = rows_of_groups(seed=1)
    whole = group_sums(values, ids, num_groups, weights)
    bounds = [0, *cuts, len(values)]
    parts = [group_sums(values[a:b], ids[a:b], num_groups, weights[a:b]) for a, b in zip(bounds, bounds[1:])]
    for total, index in zip(whole, range(2)):
        assert torch.equal(total, sum(part[index] for part in parts))
    means = group_means(*whole)
    for group in range(num_groups):
        chosen = [(v * w, w) for v, g, w in zip(values.tolist(), ids.tolist(), weights.tolist()) if g == group]
        weight = sum(w for _, w in chosen)
        expected = sum(x for x, _ in chosen) / weight if weight > 0 else 0.0
        assert means[group].item() == pytest.approx(expected, rel=1e-15)


def test_group_means_give_zero_to_an_empty_group():
    means = group_means(torch.tensor([6.0, 0.0, 5.0]), torch.tensor([3.0, 0.0, 2.0]))
    assert means.tolist() == [2.0, 0.0, 2.5]


def test_trainer_metrics_by_hand():
    """Losses 6/3, 12.5/5, 1/4; perplexities their exp; the gap and worst group of the losses, and the worst group's
    perplexity; `overall` pools every token (19.5 / 12), not the groups' mean."""
    sums, counts = (
        torch.tensor([6.0, 12.5, 1.0], dtype=torch.float64),
        torch.tensor([3.0, 5.0, 4.0], dtype=torch.float64),
    )
    metrics = group_eval_metrics(sums, counts, ["x", "y", "z"], "eval")
    losses = {"x": 2.0, "y": 2.5, "z": 0.25}
    for group, loss in losses.items():
        assert metrics[f"eval_group_loss/{group}"] == pytest.approx(loss)
        assert metrics[f"eval_group_perplexity/{group}"] == pytest.approx(math.exp(loss))
    assert metrics["eval_group_loss_gap"] == pytest.approx(2.25)
    assert metrics["eval_group_perplexity_gap"] == pytest.approx(math.exp(2.5) - math.exp(0.25))
    assert metrics["eval_worst_group"] == "y"
    assert metrics["eval_worst_group_loss"] == pytest.approx(2.5)
    assert metrics["eval_worst_group_perplexity"] == pytest.approx(math.exp(2.5))
    assert metrics["eval_overall_loss"] == pytest.approx(19.5 / 12)
    assert metrics["eval_overall_perplexity"] == pytest.approx(math.exp(19.5 / 12))


def test_trainer_metrics_skip_a_group_without_tokens_and_have_no_gap_without_any():
    metrics = group_eval_metrics(torch.tensor([6.0, 0.0, 5.0]), torch.tensor([3.0, 0.0, 1.0]), ["x", "y", "z"], "e")
    assert math.isnan(metrics["e_group_loss/y"]) and math.isnan(metrics["e_group_perplexity/y"])
    assert metrics["e_worst_group"] == "z" and metrics["e_group_loss_gap"] == pytest.approx(3.0)
    assert metrics["e_overall_loss"] == pytest.approx(11.0 / 4)
    empty = group_eval_metrics(torch.zeros(2), torch.zeros(2), ["x", "y"], "e")
    assert not any("gap" in key or "worst" in key for key in empty)
    assert math.isnan(empty["e_overall_loss"]) and math.isnan(empty["e_overall_perplexity"])


def test_group_likelihood_by_hand():
    result = group_likelihood(torch.tensor([6.0, 10.0, 0.0]), torch.tensor([3.0, 2.0, 0.0]), ["a", "b", "c"])
    nll, ppl = result["nll"], result["perplexity"]
    assert nll["per_group"]["a"] == 2.0 and nll["per_group"]["b"] == 5.0 and math.isnan(nll["per_group"]["c"])
    assert nll["gap"] == 3.0 and nll["worst_group"] == "b" and nll["best_group"] == "a"
    assert nll["overall"] == pytest.approx(16.0 / 5.0)
    assert ppl["per_group"]["b"] == pytest.approx(math.exp(5.0)) and ppl["gap"] == pytest.approx(
        math.exp(5) - math.exp(2)
    )
    assert ppl["overall"] == pytest.approx(math.exp(16.0 / 5.0))
    assert group_likelihood([1e6], [1.0], ["a"])["perplexity"]["per_group"]["a"] == math.inf  # no OverflowError
    with pytest.raises(ValueError, match="one entry per group"):
        group_likelihood([1.0, 2.0], [1.0], ["a", "b"])


def test_likelihood_report_points_are_group_likelihood_of_the_group_sums():
    nll = torch.tensor([3.0, 7.0, 2.0, 9.0, 4.0], dtype=torch.float64)
    tokens = torch.tensor([2.0, 5.0, 1.0, 6.0, 3.0], dtype=torch.float64)
    groups = ["b", "a", "b", "c", "a"]
    report = likelihood_report(nll, tokens, groups, n_bootstrap=0)
    point = group_likelihood([5.0, 11.0, 9.0], [3.0, 8.0, 6.0], ["b", "a", "c"])
    for key in ("nll", "perplexity"):
        assert {k: v for k, v in report[key].items() if k != "ci"} == point[key]


@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 3)])
def test_masked_mean_by_hand(shape):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(shape, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]])
    means, counts = masked_mean(values, mask)
    assert counts.tolist() == [3.0, 6.0, 0.0, 3.0]
    # each row: the mean of the positions its mask keeps; a row with none gets 0 (of the values' trailing shape)
    by_hand = torch.stack(
        [values[i][mask[i].bool()].mean(dim=0) if mask[i].any() else torch.zeros(shape[2:]) for i in range(4)]
    )
    torch.testing.assert_close(means, by_hand)
    torch.testing.assert_close(masked_mean(values, None)[0], values.mean(dim=1))
    assert masked_mean(values, None)[1].tolist() == [6.0] * 4


def test_sequence_losses_are_masked_means_of_the_token_losses():
    token_losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    means, counts = sequence_losses(token_losses, mask)
    assert means.tolist() == [1.5, 0.0] and counts.tolist() == [2.0, 0.0]


def test_label_counts_as_strings_in_sorted_order():
    assert label_counts(["b", "a", "b", 1, "1"]) == {"1": 2, "a": 1, "b": 2}
    assert list(label_counts(["z", "a", "m"])) == ["a", "m", "z"]
    assert label_counts([]) == {}
    labels = [3, "x", 3, None, "x", "x"]
    loop: dict[str, int] = {}
    for label in labels:
        loop[str(label)] = loop.get(str(label), 0) + 1
    assert label_counts(labels) == dict(sorted(loop.items())) and sum(label_counts(labels).values()) == len(labels)


def test_evaluate_groups_is_what_the_metric_names_say_with_a_token_pooled_overall(tmp_path):
    """`EGTTrainer.evaluate_groups` (the run the CLI, the cards and the example use) equals the summary of
    `evaluate()`'s `eval_group_perplexity/<g>` keys; its `overall` is the token-pooled `eval_overall_perplexity`, the
    exp of all groups' summed NLL over their summed tokens (not exp of Trainer's batch-mean `eval_loss`)."""
    from hf_egt import EGTTrainer
    from tests.integrations.trainer.test_egt_trainer import config, lora
    from tests.trainer_utils import group_dataset, tiny_llama

    trainer = EGTTrainer(
        model=tiny_llama(),
        args=config(tmp_path, per_device_eval_batch_size=3),
        train_dataset=group_dataset({"a": 6, "b": 4}, seed=0),
        eval_dataset=group_dataset({"a": 5, "b": 3}, seed=1),
        peft_config=lora(),
    )
    run = trainer.evaluate_groups()
    metrics = trainer.evaluate()
    prefix = "eval_group_perplexity/"
    parsed = summarize_groups({key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)})
    assert {key: run[key] for key in parsed} == parsed and list(run["per_group"]) == ["a", "b"]
    assert run["counts"] == {"a": 5, "b": 3}
    sums, tokens, _ = trainer._last_eval_group_sums
    assert run["overall"] == metrics["eval_overall_perplexity"] == math.exp(float(sums.sum() / tokens.sum()))
    assert run["overall"] != pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-9)  # batches of 3, 3 and 2 rows


def test_group_run_carries_the_fields_every_surface_reads():
    from hf_egt.core.metrics import RUN_FIELDS, check_runs, group_run

    run = group_run({"a": 3.0, "b": 5.0}, {"b": 2, "a": 7}, 3.4)
    assert set(RUN_FIELDS) <= set(run) and run["counts"] == {"a": 7, "b": 2}
    assert (run["gap"], run["worst_group"], run["best_group"], run["overall"]) == (2.0, "b", "a", 3.4)
    with pytest.raises(ValueError, match=r"`counts` must name the groups of `per_group`"):
        group_run({"a": 3.0}, {"b": 1}, 3.0)
    with pytest.raises(ValueError, match=r"Run 'old' lacks \['counts'\]"):
        check_runs({"new": run, "old": {key: value for key, value in run.items() if key != "counts"}})
