"""EGTTrainer on tiny random Llama and GPT-2 models (offline, CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file

from hf_egt import EGTConfig, EGTTrainer, GroupObjective
from hf_egt.core.losses import causal_lm_token_losses, sequence_losses
from hf_egt.core.vocabulary import LEGACY_OBJECTIVE_STATE_NAMES
from hf_egt.integrations.trainer import OBJECTIVE_STATE_NAME, DataCollatorForCausalLM
from tests.conftest import accelerate_launch
from tests.trainer_utils import VOCAB, group_dataset, tiny_gpt2, tiny_llama

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
LORA_TARGETS = {
    "llama": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"],
    "gpt2": ["c_attn", "c_proj", "c_fc", "lm_head"],
}


def lora(arch: str = "llama", head: bool = True) -> LoraConfig:
    """LoRA on every linear layer (and on the LM head, which lets a tiny random model learn a new unigram fast)."""
    targets = [name for name in LORA_TARGETS[arch] if head or name != "lm_head"]
    return LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0)


def config(tmp_path, **overrides) -> EGTConfig:
    settings = dict(
        output_dir=str(tmp_path),
        objective="minmax",
        group_step_size=0.5,
        per_device_train_batch_size=8,
        optim="sgd",  # unlike Adam, SGD is not invariant to the loss scale: a mis-scaled loss changes the parameters
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
    )
    settings.update(overrides)
    return EGTConfig(**settings)


def lora_params(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def assert_same_params(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# Per-token losses.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(MODELS))
def test_token_losses_match_the_models_own_loss(arch):
    model = MODELS[arch]()
    batch = DataCollatorForCausalLM(pad_token_id=0)(group_dataset({"a": 3, "b": 2}).to_list())
    labels = batch["labels"].clone()
    labels[0, 2:4] = -100  # ignored tokens inside a sequence are excluded too
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_losses, mask = causal_lm_token_losses(logits, labels)
    means, counts = sequence_losses(token_losses, mask)
    torch.testing.assert_close((means * counts).sum() / counts.sum(), reference)
    assert counts.tolist() == (labels[:, 1:] != -100).sum(-1).tolist()


# ---------------------------------------------------------------------------------------------------------------------
# Min-max vs ERM.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minmax_lowers_the_worst_group_loss_compared_with_erm(tmp_path):
    # "a" writes tokens 2..9 and "b" tokens 10..17; the model never sees the group, so it must share its next-token
    # mass: ERM gives "b" (15% of the data) little of it, min-max raises "b"'s weight until the losses meet.
    train = group_dataset({"a": 170, "b": 30}, seed=0)
    held_out = group_dataset({"a": 30, "b": 30}, seed=1)
    results = {}
    for objective in ("erm", "minmax"):
        args = config(
            tmp_path / objective,
            objective=objective,
            group_step_size=0.2,
            per_device_train_batch_size=40,
            optim="adamw_torch",
            learning_rate=5e-2,
            max_steps=30,
            logging_steps=10,
        )
        trainer = EGTTrainer(
            model=tiny_llama(), args=args, train_dataset=train, eval_dataset=held_out, peft_config=lora()
        )
        trainer.train()
        results[objective] = trainer.evaluate()
    erm, minmax = results["erm"], results["minmax"]
    assert erm["eval_worst_group"] == "b"
    assert minmax["eval_worst_group_loss"] < erm["eval_worst_group_loss"] - 0.1
    assert minmax["eval_group_loss_gap"] < erm["eval_group_loss_gap"]


# ---------------------------------------------------------------------------------------------------------------------
# Exactness: accumulation, resume, processes.
# ---------------------------------------------------------------------------------------------------------------------


def train_run(tmp_path, arch="llama", objective="minmax", **overrides):
    train = group_dataset({"a": 20, "b": 12}, seed=0)
    trainer = EGTTrainer(
        model=MODELS[arch](),
        args=config(tmp_path, objective=objective, **overrides),
        train_dataset=train,
        peft_config=lora(arch),
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("arch,objective", [("llama", "minmax"), ("gpt2", "ema")])
def test_gradient_accumulation_gives_the_same_parameters_and_weights(tmp_path, arch, objective):
    whole = train_run(tmp_path / "8x1", arch, objective, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    split = train_run(tmp_path / "4x2", arch, objective, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert whole.state.global_step == split.state.global_step == 3
    assert_same_params(lora_params(whole), lora_params(split))
    torch.testing.assert_close(whole.group_objective.weights, split.group_objective.weights)
    assert not torch.allclose(whole.group_objective.weights, torch.full((2,), 0.5, dtype=torch.float64))  # it moved


@pytest.mark.parametrize("state_name", [OBJECTIVE_STATE_NAME, *LEGACY_OBJECTIVE_STATE_NAMES])
def test_resume_from_checkpoint_continues_exactly(tmp_path, state_name):
    """Also from a checkpoint whose objective state has the name it had before `group_objective.safetensors`."""
    straight = train_run(tmp_path / "straight", max_steps=4)
    first = train_run(tmp_path / "resumed", max_steps=2, save_strategy="steps", save_steps=2)
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    assert (checkpoint / OBJECTIVE_STATE_NAME).is_file()
    (checkpoint / OBJECTIVE_STATE_NAME).rename(checkpoint / state_name)
    saved = GroupObjective.from_file(str(checkpoint / state_name))
    torch.testing.assert_close(saved.weights, first.group_objective.weights)

    resumed = EGTTrainer(
        model=tiny_llama(),
        args=config(tmp_path / "resumed", max_steps=4),
        train_dataset=group_dataset({"a": 20, "b": 12}, seed=0),
        peft_config=lora(),
    )
    if state_name == OBJECTIVE_STATE_NAME:
        resumed.train(resume_from_checkpoint=str(checkpoint))
    else:
        with pytest.warns(FutureWarning, match=rf"{state_name}.*use 'group_objective\.safetensors'"):
            resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.group_objective.step == straight.group_objective.step == 4
    assert_same_params(lora_params(straight), lora_params(resumed))
    torch.testing.assert_close(straight.group_objective.weights, resumed.group_objective.weights)
    # the adapter loads with plain peft
    PeftModel.from_pretrained(tiny_llama(), str(checkpoint))


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    one = train_run(tmp_path / "one", per_device_train_batch_size=8)
    accelerate_launch("trainer_two_processes.py", str(tmp_path / "two"))
    params = load_file(str(tmp_path / "two" / "params.safetensors"))
    assert_same_params(lora_params(one), {name: params[name] for name in lora_params(one)})
    weights = json.loads((tmp_path / "two" / "weights.json").read_text())
    torch.testing.assert_close(one.group_objective.weights, torch.tensor(weights, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------------
# Logs and evaluation.
# ---------------------------------------------------------------------------------------------------------------------


def test_logs_group_stats_and_evaluates_per_group_against_a_reference(tmp_path):
    train = group_dataset({"a": 20, "b": 12}, seed=0)
    held_out = group_dataset({"a": 5, "b": 4}, seed=1)
    trainer = EGTTrainer(
        model=tiny_llama(), args=config(tmp_path), train_dataset=train, eval_dataset=held_out, peft_config=lora()
    )
    trainer.train()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(train_logs) == 3
    for log in train_logs:
        assert {"group_loss/a", "group_loss/b", "group_weight/a", "group_weight/b"} <= log.keys()
        assert math.isclose(log["group_weight/a"] + log["group_weight/b"], 1.0, rel_tol=1e-5)
    metrics = trainer.evaluate()

    # reference: each group's token-mean loss from the model's own loss on that group alone
    model = trainer.model.eval()
    for group in ("a", "b"):
        rows = [row for row in held_out.to_list() if row["group"] == group]
        batch = DataCollatorForCausalLM()(rows)
        with torch.no_grad():
            reference = model(**batch).loss.item()
        assert math.isclose(metrics[f"eval_group_loss/{group}"], reference, rel_tol=1e-5)
        assert math.isclose(metrics[f"eval_group_perplexity/{group}"], math.exp(reference), rel_tol=1e-5)
    losses = [metrics["eval_group_loss/a"], metrics["eval_group_loss/b"]]
    assert math.isclose(metrics["eval_group_loss_gap"], max(losses) - min(losses), rel_tol=1e-6)
    assert metrics["eval_worst_group"] == ("a" if losses[0] > losses[1] else "b")


def test_evaluation_reports_nll_per_sequence_against_a_reference(tmp_path):
    held_out = group_dataset({"a": 5, "b": 4}, seed=1)
    trainer = EGTTrainer(
        model=tiny_llama(), args=config(tmp_path), train_dataset=held_out, eval_dataset=held_out, peft_config=lora()
    )
    metrics = trainer.evaluate()
    model = trainer.model.eval()
    per_sequence = {}
    for group in ("a", "b"):  # reference: the mean over the group's rows of each row's summed NLL, one row at a time
        sums = []
        for row in (row for row in held_out.to_list() if row["group"] == group):
            batch = DataCollatorForCausalLM()([row])
            with torch.no_grad():
                sums.append(model(**batch).loss.item() * (len(row["input_ids"]) - 1))
        per_sequence[group] = sum(sums) / len(sums)
        assert math.isclose(metrics[f"eval_group_sequence_nll/{group}"], per_sequence[group], rel_tol=1e-5)
    assert math.isclose(metrics["eval_worst_group_sequence_nll"], max(per_sequence.values()), rel_tol=1e-5)
    gap = abs(per_sequence["a"] - per_sequence["b"])
    assert math.isclose(metrics["eval_group_sequence_nll_gap"], gap, rel_tol=1e-5)


@pytest.mark.parametrize("unit", ["token", "sequence"])
def test_group_loss_unit_sets_what_a_group_loss_averages(tmp_path, unit):
    train = group_dataset({"a": 5, "b": 3}, seed=2)
    trainer = EGTTrainer(
        model=tiny_llama(),
        args=config(tmp_path, objective="reweight", group_loss_unit=unit),
        train_dataset=train,
        peft_config=lora(),
    )
    batch = trainer.data_collator(train.to_list())
    model = trainer.model.train()
    loss = trainer.compute_loss(model, batch).item()
    group_means = []  # reference: each group's mean in the unit, then the plain mean over groups (reweight)
    for group in ("a", "b"):
        rows = [row for row in train.to_list() if row["group"] == group]
        with torch.no_grad():
            sums = [model(**DataCollatorForCausalLM()([r])).loss.item() * (len(r["input_ids"]) - 1) for r in rows]
        tokens = [len(r["input_ids"]) - 1 for r in rows]
        group_means.append(sum(sums) / (len(rows) if unit == "sequence" else sum(tokens)))
    assert math.isclose(loss, sum(group_means) / 2, rel_tol=1e-5)
    with pytest.raises(ValueError, match=r"`group_loss_unit` must be one of \('token', 'sequence'\), got 'byte'"):
        config(tmp_path, group_loss_unit="byte")


def test_integer_labels_explicit_group_order_and_raw_text(tmp_path):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", *[f"w{i}" for i in range(VOCAB - 2)]]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    texts = [" ".join(f"w{(i * 3 + j) % 20}" for j in range(5 + i % 4)) for i in range(16)]
    train = Dataset.from_dict({"text": texts, "group": [7 if i % 3 else 3 for i in range(16)]})
    trainer = EGTTrainer(
        model=tiny_llama(),
        args=config(tmp_path, groups=[7, 3], max_length=6, max_steps=2),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora(),
    )
    assert trainer.group_objective.groups == [7, 3]
    with pytest.warns(FutureWarning, match=r"EGTTrainer: `\.objective` is deprecated .*use `\.group_objective`"):
        assert trainer.objective is trainer.group_objective  # the old spelling, for one release
    with pytest.warns(FutureWarning, match=r"GroupCollator: `\.objective` is deprecated"):
        assert trainer.data_collator.objective is trainer.group_objective
    assert trainer.train_dataset.column_names == ["group", "input_ids", "attention_mask"]
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) == 6
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch["group"].tolist()) <= {
        0,
        1,
    }  # ids in `groups` order, the column kept through remove_unused_columns
    trainer.train()
    assert {"group_loss/7", "group_weight/3"} <= trainer.state.log_history[0].keys()


# ---------------------------------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_group_column_names_it_and_lists_the_columns(tmp_path):
    train = group_dataset({"a": 4, "b": 4}).rename_column("group", "kind")
    with pytest.raises(ValueError, match=r"no group column 'group'.*\['input_ids', 'kind'\]"):
        EGTTrainer(model=tiny_llama(), args=config(tmp_path), train_dataset=train)


def test_eval_label_unseen_at_train_time(tmp_path):
    with pytest.raises(ValueError, match=r"eval dataset has group label\(s\) \['c'\] unseen at train time"):
        EGTTrainer(
            model=tiny_llama(),
            args=config(tmp_path),
            train_dataset=group_dataset({"a": 4, "b": 4}),
            eval_dataset=group_dataset({"a": 2, "b": 2}).map(
                lambda row, i: {"group": "c" if i == 0 else row["group"]}, with_indices=True
            ),
        )


def test_declared_group_without_rows(tmp_path):
    with pytest.raises(ValueError, match=r"Group\(s\) \['c'\].*no row in the train dataset"):
        EGTTrainer(
            model=tiny_llama(),
            args=config(tmp_path, groups=["a", "b", "c"]),
            train_dataset=group_dataset({"a": 4, "b": 4}),
        )


def test_unknown_objective():
    with pytest.raises(ValueError, match="`objective` must be one of"):
        EGTConfig(output_dir="unused", objective="dro")


def test_non_finite_loss_names_the_step_and_the_group(tmp_path):
    model = tiny_llama()
    head = model.lm_head

    def poison(module, args, output):  # NaN logits for every row of group "b" (its first body token is >= 10)
        bad = (module.current_input_ids[:, 1] >= 10)[:, None, None]
        return torch.where(bad, torch.full_like(output, math.nan), output)

    head.register_forward_hook(poison)
    model.model.embed_tokens.register_forward_pre_hook(lambda module, args: setattr(head, "current_input_ids", args[0]))
    trainer = EGTTrainer(
        model=model, args=config(tmp_path), train_dataset=group_dataset({"a": 8, "b": 8}), peft_config=lora()
    )
    with pytest.raises(FloatingPointError, match=r"group\(s\) \['b'\].*training step 1"):
        trainer.train()


class WithPLE(torch.nn.Module):
    """A causal LM whose output also carries a scalar `ple` penalty (as `HyperLoRAModel` does)."""

    def __init__(self, lm, ple: float):
        super().__init__()
        self.lm, self.config, self.ple = lm, lm.config, ple

    def forward(self, input_ids=None, attention_mask=None, labels=None):
        output = self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        output["ple"] = torch.tensor(self.ple)
        return output


def test_ple_in_the_model_output_is_added_to_the_loss_and_logged(tmp_path):
    train = group_dataset({"a": 8, "b": 8})
    batch = DataCollatorForCausalLM()(train.to_list()[:6])
    batch["group"] = torch.tensor([0, 1, 0, 1, 1, 0])
    trainer = EGTTrainer(model=WithPLE(tiny_llama(), 0.75), args=config(tmp_path, max_steps=2), train_dataset=train)
    with torch.no_grad():
        with_ple = trainer.compute_loss(trainer.model.eval(), batch)
        trainer.model.ple = 0.0
        without = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(with_ple - without, torch.tensor(0.75))
    trainer.model.ple = 0.75
    trainer.train()
    assert trainer.state.log_history[0]["ple"] == 0.75


def test_evaluate_checks_the_labels_of_a_dataset_passed_to_it(tmp_path):
    trainer = EGTTrainer(model=tiny_llama(), args=config(tmp_path), train_dataset=group_dataset({"a": 4, "b": 4}))
    with pytest.raises(ValueError, match=r"test dataset has group label\(s\) \['c'\] unseen at train time"):
        trainer.evaluate(eval_dataset=group_dataset({"a": 2}).map(lambda row: {"group": "c"}), metric_key_prefix="test")
