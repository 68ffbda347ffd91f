"""The robust min-max options through EGTTrainer / EGTSFTTrainer: excess loss against the base model, held-out-driven
weights, training-set group sizes, and worst-group best-model selection (API and CLI)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from hf_egt import EGTConfig, EGTTrainer
from hf_egt.integrations.trainer import DataCollatorForCausalLM
from tests.integrations.trainer.test_egt_trainer import config, lora
from tests.trainer_utils import group_dataset, tiny_llama


def test_excess_loss_reference_is_the_base_models_per_example_loss(tmp_path):
    train = group_dataset({"a": 10, "b": 5}, seed=0)
    trainer = EGTTrainer(
        model=tiny_llama(), args=config(tmp_path, group_reference="base"), train_dataset=train, peft_config=lora()
    )
    reference = trainer.train_dataset["reference_loss"]
    base = tiny_llama().eval()  # the same seeded weights, no adapter
    for row, value in zip(train.to_list(), reference):
        with torch.no_grad():
            expected = base(**DataCollatorForCausalLM()([row])).loss.item()
        assert value == pytest.approx(expected, rel=1e-5)
    trainer.train()
    assert trainer.group_objective.step == 3


def test_excess_loss_from_a_column_drives_the_first_update_by_hand(tmp_path):
    """One step with SGD at learning rate 0: the weights are softmax(eta * token-mean clip(l - ref, 0)) per group."""
    train = group_dataset({"a": 6, "b": 2}, seed=0)
    base = tiny_llama().eval()
    losses, tokens = [], []
    for row in train.to_list():
        batch = DataCollatorForCausalLM()([row])
        with torch.no_grad():
            losses.append(base(**batch).loss.item())
        tokens.append(len(row["input_ids"]) - 1)
    reference = [loss - 0.5 if row["group"] == "a" else loss + 1.0 for loss, row in zip(losses, train.to_list())]
    train = train.add_column("reference_loss", reference)
    eta = 0.7
    args = config(tmp_path, group_reference="column", group_step_size=eta, learning_rate=0.0, max_steps=1)
    trainer = EGTTrainer(model=tiny_llama(), args=args, train_dataset=train, peft_config=lora())
    trainer.train()
    # group "a" is 0.5 above its reference on every row, group "b" below (clipped to 0)
    expected = [math.exp(eta * 0.5), 1.0]
    assert trainer.group_objective.weights.tolist() == pytest.approx([e / sum(expected) for e in expected], rel=1e-5)


def test_reference_column_missing_is_named(tmp_path):
    with pytest.raises(ValueError, match="reference_loss"):
        EGTTrainer(
            model=tiny_llama(),
            args=config(tmp_path, group_reference="column"),
            train_dataset=group_dataset({"a": 4, "b": 2}),
            peft_config=lora(),
        )


def test_held_out_losses_drive_the_weights(tmp_path):
    """With `group_update_dataset`, the training losses do not move the weights; the eval split's do, every N steps."""
    eta = 0.5
    held_out = group_dataset({"a": 4, "b": 3}, seed=1)
    args = config(tmp_path, group_update_dataset="eval", group_update_steps=2, group_step_size=eta, max_steps=3)
    trainer = EGTTrainer(
        model=tiny_llama(),
        args=args,
        train_dataset=group_dataset({"a": 20, "b": 12}, seed=0),
        eval_dataset=held_out,
        peft_config=lora(),
    )
    trainer.train()
    assert trainer.group_objective.step == 1  # one update, at step 2 (not at 1 or 3)
    updates = [log for log in trainer.state.log_history if "group_update_group_loss/a" in log]
    assert [log["step"] for log in updates] == [2]
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["step"] for log in train_logs] == [1, 2, 3]  # the update's log does not replace the step's own
    assert train_logs[-1]["group_weight/a"] == pytest.approx(trainer.group_objective.weights[0].item(), rel=1e-6)
    group_losses = [updates[0]["group_update_group_loss/a"], updates[0]["group_update_group_loss/b"]]
    expected = [math.exp(eta * loss) for loss in group_losses]
    assert trainer.group_objective.weights.tolist() == pytest.approx([e / sum(expected) for e in expected], rel=1e-6)


def old_on_step_end(self, args, state, control, **kwargs):
    """The callback's update before it reused the scheduled evaluation: always a pass of its own."""
    if state.global_step % args.group_update_steps == 0:
        self.trainer.update_weights_from_eval()
    return control


@pytest.mark.parametrize("as_dict", [False, True])
def test_held_out_update_reuses_the_scheduled_evaluation(tmp_path, monkeypatch, as_dict):
    """Where the update and the scheduled evaluation meet (steps 2 and 4; step 3 has the update alone), the update
    takes the evaluation's group sums: one pass over the split instead of two, and the same weights at every step."""
    from hf_egt.integrations.trainer.egt_trainer import GroupWeightsFromEvalCallback

    held_out = group_dataset({"a": 4, "b": 3}, seed=1)
    eval_dataset = {"validation": held_out, "other": group_dataset({"a": 2, "b": 2}, seed=2)} if as_dict else held_out

    def run(folder):
        args = config(
            tmp_path / folder,
            group_update_dataset="validation" if as_dict else "eval",
            group_update_steps=1,
            eval_strategy="steps",
            eval_steps=2,
            max_steps=4,
        )
        trainer = EGTTrainer(
            model=tiny_llama(),
            args=args,
            train_dataset=group_dataset({"a": 20, "b": 12}, seed=0),
            eval_dataset=eval_dataset,
            peft_config=lora(),
        )
        passes, weights = [], []
        loop = trainer.evaluation_loop

        def counted_loop(dataloader, *args, **kwargs):
            passes.append((trainer.state.global_step, len(dataloader.dataset)))
            return loop(dataloader, *args, **kwargs)

        trainer.evaluation_loop = counted_loop
        trainer.add_callback(WeightsAtStepBegin(trainer, weights))
        trainer.train()
        return trainer, passes, weights

    class WeightsAtStepBegin(TrainerCallback):
        def __init__(self, trainer, weights):
            self.trainer, self.weights = trainer, weights

        def on_step_begin(self, args, state, control, **kwargs):
            self.weights.append(self.trainer.group_objective.weights.clone())

    new, new_passes, new_weights = run("new")
    monkeypatch.setattr(GroupWeightsFromEvalCallback, "on_step_end", old_on_step_end)
    old, old_passes, old_weights = run("old")

    assert new.group_objective.step == old.group_objective.step == 4  # one update per step, in both
    split = len(held_out)
    # the old callback passed over the split at every step, and the scheduled evaluation again at steps 2 and 4
    assert [step for step, size in old_passes if size == split].count(2) == 2
    assert [step for step, size in new_passes if size == split] == [1, 2, 3, 4]
    assert len(old_passes) - len(new_passes) == 2
    assert len(new_weights) == len(old_weights) == 4
    for new_step, old_step in zip(new_weights, old_weights):
        torch.testing.assert_close(new_step, old_step, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(new.group_objective.weights, old.group_objective.weights, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(new.group_objective.weights, torch.full((2,), 0.5, dtype=torch.float64))  # it moved


def test_group_update_dataset_must_be_an_eval_dataset(tmp_path):
    with pytest.raises(ValueError, match="validation"):
        EGTTrainer(
            model=tiny_llama(),
            args=config(tmp_path, group_update_dataset="validation"),
            train_dataset=group_dataset({"a": 4, "b": 2}),
            eval_dataset={"test": group_dataset({"a": 2, "b": 2})},
            peft_config=lora(),
        )


def test_adjustment_uses_training_set_group_sizes(tmp_path):
    trainer = EGTTrainer(
        model=tiny_llama(),
        args=config(tmp_path, group_adjustment=1.0),
        train_dataset=group_dataset({"a": 20, "b": 12}, seed=0),
        peft_config=lora(),
    )
    assert trainer.group_objective.group_sizes.tolist() == [20.0, 12.0]


def test_worst_group_perplexity_selects_the_best_model(tmp_path):
    args = config(
        tmp_path,
        learning_rate=2.0,  # large enough that the held-out worst group gets worse at some steps
        max_steps=4,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="worst_group_perplexity",
    )
    assert args.greater_is_better is False
    held_out = group_dataset({"a": 4, "b": 3}, seed=1)
    trainer = EGTTrainer(
        model=tiny_llama(),
        args=args,
        train_dataset=group_dataset({"a": 20, "b": 12}, seed=0),
        eval_dataset=held_out,
        peft_config=lora(),
    )
    trainer.train()
    evals = {log["step"]: log for log in trainer.state.log_history if "eval_worst_group_perplexity" in log}
    assert sorted(evals) == [1, 2, 3, 4]
    for log in evals.values():  # the worst group's perplexity is the largest group perplexity
        per_group = [log["eval_group_perplexity/a"], log["eval_group_perplexity/b"]]
        assert log["eval_worst_group_perplexity"] == pytest.approx(max(per_group))
    best = min(evals, key=lambda step: evals[step]["eval_worst_group_perplexity"])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best}")
    reloaded = trainer.evaluate()  # the model at the end is the best one
    assert reloaded["eval_worst_group_perplexity"] == pytest.approx(
        evals[best]["eval_worst_group_perplexity"], rel=1e-4
    )


def test_cli_parses_the_robust_options_and_worst_group_selection():
    from hf_egt.apps.train import parse_train_arguments

    argv = ["--model_name_or_path", "m", "--dataset", "d", "--output_dir", "o"]
    argv += ["--group_sampling", "stratified", "--group_loss_estimate", "last", "--group_weight_floor", "0.1"]
    argv += ["--metric_for_best_model", "eval_worst_group_perplexity", "--load_best_model_at_end", "true"]
    argv += ["--eval_strategy", "steps", "--save_strategy", "steps"]
    _, args = parse_train_arguments(argv)
    assert (args.group_sampling, args.group_loss_estimate, args.group_weight_floor) == ("stratified", "last", 0.1)
    assert args.greater_is_better is False
    with pytest.raises(SystemExit):
        parse_train_arguments([*argv, "--group_sampling", "uniform"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"group_sampling": "uniform"}, "group_sampling"),
        ({"group_loss_estimate": "mean"}, "group_loss_estimate"),
        ({"group_reference": "erm"}, "group_reference"),
        ({"group_weight_floor": 1.5}, "group_weight_floor"),
        ({"group_update_steps": 0}, "group_update_steps"),
    ],
)
def test_config_rejects_bad_robust_options(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        EGTConfig(output_dir=str(tmp_path), **overrides)


def test_sft_trainer_stratified_sampling_and_base_reference(tmp_path):
    from hf_egt import EGTSFTTrainer
    from tests.integrations.trainer.test_sft_trainer import chat_tokenizer, conversations, sft_config

    args = sft_config(tmp_path, group_sampling="stratified", group_reference="base", per_device_train_batch_size=4)
    trainer = EGTSFTTrainer(
        model=tiny_llama(),
        args=args,
        train_dataset=conversations({"a": 6, "b": 2}),
        processing_class=chat_tokenizer(),
        peft_config=lora(head=False),
    )
    reference = trainer.train_dataset["reference_loss"]
    assert len(reference) == 8 and all(math.isfinite(value) and value > 0 for value in reference)
    for batch in trainer.get_train_dataloader():
        assert sorted(batch["group"].tolist()) == [0, 0, 1, 1]
    trainer.train()
    assert trainer.group_objective.step == 2
