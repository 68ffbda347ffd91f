"""HyperLoRAModel trains inside `transformers.Trainer` (and `hf_egt.EGTTrainer` when available)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import PeftModelForCausalLM
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_egt.integrations.hyper import HyperLoRAConfig, HyperLoRAModel


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def pattern_dataset(size: int = 32, length: int = 12) -> list[dict[str, torch.Tensor]]:
    """Counting sequences (t, t+1, t+2, ...): learnable in a few steps, so the loss must drop."""
    rows = []
    for index in range(size):
        input_ids = (torch.arange(length) + index) % 64
        rows.append(
            {"input_ids": input_ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": input_ids}
        )
    return rows


@torch.no_grad()
def mean_loss(model: HyperLoRAModel, rows: list[dict[str, torch.Tensor]]) -> float:
    model.train()  # the batch is the set, as in training; no dropout in this config
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    return model(**batch).loss.item()


def arguments(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=15,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=5,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def test_training_a_few_steps_in_transformers_trainer_lowers_the_loss(tmp_path):
    model = HyperLoRAModel(tiny_llama(), HyperLoRAConfig(r=4, target_modules=["q_proj", "v_proj"], hidden_size=32))
    rows = [{**row, "unused": 0} for row in pattern_dataset()]  # Trainer must drop `unused` and keep `input_ids`
    before = mean_loss(model, pattern_dataset())
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=rows)
    trainer._set_signature_columns_if_needed()
    assert {"input_ids", "attention_mask", "labels", "context_set"} <= set(trainer._signature_columns)
    assert "unused" not in trainer._signature_columns
    trainer.train()
    after = mean_loss(model, pattern_dataset())
    assert after < before - 0.1
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" not in name:
            torch.testing.assert_close(tensor, base_before[name], msg=f"frozen base changed: {name}")
    # Trainer checkpoints hold only the hypernetwork; they load back into a fresh HyperLoRAModel.
    trainer.save_model(str(tmp_path / "final"))
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert set(saved) == set(model.state_dict())
    fresh = HyperLoRAModel(tiny_llama(), model.hyper_config)
    fresh.load_state_dict(saved)
    assert mean_loss(fresh, pattern_dataset()) == pytest.approx(after, abs=1e-5)


def test_training_with_ple_inside_egt_trainer_lowers_the_loss(tmp_path):
    from hf_egt import EGTConfig, EGTTrainer

    rows = [{**row, "group": "even" if index % 4 else "odd"} for index, row in enumerate(pattern_dataset())]
    config = HyperLoRAConfig(
        r=4,
        target_modules=["q_proj", "v_proj"],
        hidden_size=32,
        ple_weight=0.1,
        ple_every=2,
        ple_max_new_tokens=4,
        task_type="CAUSAL_LM",
    )
    args = EGTConfig(
        objective="minmax",
        **{
            k: v
            for k, v in vars(arguments(tmp_path)).items()
            if k in {"output_dir", "per_device_train_batch_size", "max_steps", "learning_rate", "logging_steps"}
        },
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = EGTTrainer(model=tiny_llama(), args=args, train_dataset=rows, peft_config=config)
    model = trainer.model  # peft's normal path: get_peft_model -> PeftModelForCausalLM over the HyperLoRA tuner
    assert isinstance(model, PeftModelForCausalLM) and isinstance(model.base_model, HyperLoRAModel)
    before = mean_loss(model, pattern_dataset())
    trainer.train()
    after = mean_loss(model, pattern_dataset())
    assert after < before - 0.1
    logged = [entry["ple"] for entry in trainer.state.log_history if "ple" in entry]
    assert logged and all(value >= 0 for value in logged)
    assert any(value > 0 for value in logged)
    # evaluation runs through compute_loss although HyperLoRAModel's class signature names no `labels`
    metrics = trainer.evaluate(eval_dataset=rows)
    for group in ("even", "odd"):
        assert math.isfinite(metrics[f"eval_group_perplexity/{group}"])
