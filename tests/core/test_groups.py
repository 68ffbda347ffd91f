"""The one implementation of each shared reduction against the copies it replaced (written out here as references)
and hand computations: per-group perplexity, masked means, group counts."""

from __future__ import annotations

import math

import pytest
import torch

from hf_egt.core.groups import label_counts
from hf_egt.core.losses import masked_mean, sequence_losses
from hf_egt.core.metrics import group_likelihood, likelihood_report, summarize_groups
from hf_egt.integrations.trainer.egt_trainer import group_eval_metrics


def old_trainer_metrics(sums, counts, groups, prefix):
    """`group_eval_metrics` as the trainer computed it before it used `group_likelihood`."""
    losses = {g: (s / c).item() if c > 0 else math.nan for g, s, c in zip(groups, sums, counts)}
    perplexities = {g: math.exp(min(loss, 700.0)) if not math.isnan(loss) else math.nan for g, loss in losses.items()}
    metrics = {f"{prefix}_group_loss/{g}": loss for g, loss in losses.items()}
    metrics.update({f"{prefix}_group_perplexity/{g}": ppl for g, ppl in perplexities.items()})
    if any(not math.isnan(loss) for loss in losses.values()):
        loss_summary = summarize_groups(losses)
        metrics[f"{prefix}_group_loss_gap"] = loss_summary["gap"]
        metrics[f"{prefix}_group_perplexity_gap"] = summarize_groups(perplexities)["gap"]
        metrics[f"{prefix}_worst_group_loss"] = losses[loss_summary["worst_group"]]
        metrics[f"{prefix}_worst_group_perplexity"] = perplexities[loss_summary["worst_group"]]
        metrics[f"{prefix}_worst_group"] = loss_summary["worst_group"]
    return metrics


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize(
    ("sums", "counts"),
    [([6.0, 12.5, 1.0], [3.0, 5.0, 4.0]), ([6.0, 0.0, 2.0], [3.0, 0.0, 1.0]), ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])],
)
def test_trainer_metrics_equal_the_old_formula(sums, counts):
    sums, counts = torch.tensor(sums, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)
    groups = ["x", "y", "z"]
    new, old = group_eval_metrics(sums, counts, groups, "eval"), old_trainer_metrics(sums, counts, groups, "eval")
    assert list(new) == [*old, "eval_overall_loss", "eval_overall_perplexity"]
    assert all(same(new[key], old[key]) for key in old), (new, old)
    pooled = float(sums.sum() / counts.sum()) if counts.sum() > 0 else math.nan
    assert same(new["eval_overall_loss"], pooled) and same(new["eval_overall_perplexity"], math.exp(pooled))


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
def test_masked_mean_equals_the_copies_it_replaced(shape):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(shape, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]])
    means, counts = masked_mean(values, mask)
    assert counts.tolist() == [3.0, 6.0, 0.0, 3.0]
    expanded = mask.unsqueeze(-1) if len(shape) == 3 else mask
    # features.mean_pool (sentence-transformers' pooling) and hyper/encoders.masked_mean, as they were
    reference = (values * expanded).sum(dim=1) / expanded.sum(dim=1).clamp(min=1e-9)
    torch.testing.assert_close(means, reference, rtol=0, atol=0)
    by_hand = torch.stack(
        [values[i][mask[i].bool()].mean(dim=0) if mask[i].any() else values[i, 0] * 0 for i in range(4)]
    )
    torch.testing.assert_close(means, by_hand)
    torch.testing.assert_close(masked_mean(values, None)[0], values.mean(dim=1))


def test_sequence_losses_are_masked_means_of_the_token_losses():
    token_losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    means, counts = sequence_losses(token_losses, mask)
    assert means.tolist() == [1.5, 0.0] and counts.tolist() == [2.0, 0.0]


def test_label_counts_as_strings_in_sorted_order():
    assert label_counts(["b", "a", "b", 1, "1"]) == {"1": 2, "a": 1, "b": 2}
    assert list(label_counts(["z", "a", "m"])) == ["a", "m", "z"]
    assert label_counts([]) == {}


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
