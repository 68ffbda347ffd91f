"""HyperLoRA as a peft method: a `PeftConfig` saved by peft, registered so that `get_peft_model`,
`PeftModel.from_pretrained` and `AutoPeftModelForCausalLM` build it after `import hf_egt` (in either import order),
and its command-line options declared from the config's own fields."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from peft import PeftConfig, PeftModel, PeftModelForCausalLM, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from hf_egt.apps.arguments import add_config_arguments
from hf_egt.integrations.hyper import HYPER_LORA, HyperLoRAConfig, HyperLoRAModel
from hf_egt.integrations.hyper.config import config_values, option_name
from tests.integrations.hyper.test_model import TARGETS, batch, hyper_config, tiny_llama


def trained_like(model) -> None:
    """Move the hypernetwork's B heads off their zero initialisation, as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        for head in model.base_model.hypernetwork.generator.heads.values():
            head.out_b.weight.normal_(0, 0.1)
            head.out_b.bias.normal_(0, 0.1)


def test_config_is_a_peft_config_saved_and_dispatched_by_peft(tmp_path):
    config = hyper_config(ple_weight=0.1, task_type="CAUSAL_LM")
    assert isinstance(config, PeftConfig) and config.peft_type == HYPER_LORA
    own = [f for f in fields(HyperLoRAConfig) if f.name not in {f.name for f in fields(PeftConfig)}]
    assert own and all(f.metadata.get("help") for f in own)
    assert {f.name: f.metadata["choices"] for f in own if "choices" in f.metadata} == {
        "set_encoder_input": ["auto", "input_embeddings", "last_hidden", "unet_pooled"],
        "ple_reduction": ["mean", "sum"],
    }
    config.save_pretrained(str(tmp_path))
    assert os.listdir(tmp_path) == ["adapter_config.json"]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "HYPER_LORA"
    loaded = PeftConfig.from_pretrained(str(tmp_path))  # peft's own dispatch on peft_type
    assert type(loaded) is HyperLoRAConfig and loaded == config


def test_get_peft_model_builds_the_tuner_and_trains_the_hypernetwork():
    model = get_peft_model(tiny_llama(), hyper_config(task_type="CAUSAL_LM"))
    assert isinstance(model, PeftModelForCausalLM) and isinstance(model.base_model, HyperLoRAModel)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".hypernetwork." in name for name in trainable)
    model.train()
    data = batch(0)
    model(**data, labels=data["input_ids"]).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.base_model.hypernetwork.parameters())


def test_a_peft_model_without_task_type_refuses_to_train_past_the_hypernetwork():
    model = get_peft_model(tiny_llama(), hyper_config())  # a plain PeftModel calls the base model directly
    model.train()
    with pytest.raises(RuntimeError, match="task_type='CAUSAL_LM'"):
        model(**batch(0))


@pytest.fixture
def saved_hyper(tmp_path):
    """A HyperLoRA adapter saved by `PeftModel.save_pretrained` with its context, its base model, and the logits."""
    base_dir, hyper_dir = tmp_path / "base", tmp_path / "hyper"
    tiny_llama().save_pretrained(base_dir)
    base = LlamaForCausalLM.from_pretrained(base_dir)  # records its path, as peft writes it in the adapter config
    model = get_peft_model(base, hyper_config(task_type="CAUSAL_LM"))
    trained_like(model)
    model.eval()
    model.set_context(**batch(0))
    data = batch(1)
    with torch.no_grad():
        logits = model(**data).logits
        base_logits = tiny_llama()(**data).logits
    assert not torch.allclose(logits, base_logits, atol=1e-3), "the generated adapter should change the logits"
    model.save_pretrained(str(hyper_dir))
    save_file({"input_ids": data["input_ids"], "logits": logits}, str(tmp_path / "expected.safetensors"))
    return tmp_path


def test_peft_loads_the_hypernetwork(saved_hyper):
    """In this process (peft and hf_egt imported): `PeftModel.from_pretrained` and `AutoPeftModelForCausalLM` give
    the saved model, its context included: the logits equal the in-memory model's."""
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file

    expected = load_file(str(saved_hyper / "expected.safetensors"))
    on_base = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(saved_hyper / "base"), saved_hyper / "hyper")
    auto = AutoPeftModelForCausalLM.from_pretrained(saved_hyper / "hyper")
    for model in (on_base.eval(), auto.eval()):
        assert isinstance(model, PeftModelForCausalLM) and isinstance(model.base_model, HyperLoRAModel)
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=expected["input_ids"]).logits, expected["logits"])


LOAD = """
import sys, torch
{imports}
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
folder = sys.argv[1]
expected = load_file(folder + "/expected.safetensors")
model = AutoPeftModelForCausalLM.from_pretrained(folder + "/{adapter}").eval()
with torch.no_grad():
    torch.testing.assert_close(model(input_ids=expected["input_ids"]).logits, expected["logits"])
print(type(model.base_model).__name__)
"""


def test_import_hf_egt_before_peft_registers_the_method(saved_hyper):
    """A fresh interpreter: `import hf_egt` (which does not import peft) is all peft needs to load the adapter."""
    script = LOAD.format(imports="import hf_egt\nassert 'peft' not in sys.modules", adapter="hyper")
    result = subprocess.run([sys.executable, "-c", script, str(saved_hyper)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["HyperLoRAModel"]


def test_exported_lora_loads_with_plain_peft_without_hf_egt(saved_hyper):
    """`export_peft` writes a plain LoRA adapter: an interpreter that never imports hf_egt loads it (same logits),
    and does not know the HyperLoRA adapter (the registration is what `import hf_egt` adds)."""
    from peft import PeftModel

    hyper = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(saved_hyper / "base"), saved_hyper / "hyper")
    hyper.export_peft(str(saved_hyper / "exported"))
    script = LOAD.format(imports="", adapter="exported")
    script += "assert not any(name.startswith('hf_egt') for name in sys.modules)\n"
    script += "try:\n    AutoPeftModelForCausalLM.from_pretrained(folder + '/hyper')\nexcept KeyError as error:\n"
    script += "    print('unknown', error)\n"
    result = subprocess.run([sys.executable, "-c", script, str(saved_hyper)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["LoraModel", "unknown", "'HYPER_LORA'"]


def test_command_line_options_come_from_the_config_fields():
    parser = argparse.ArgumentParser()
    names = ("ple_weight", "context_dim", "ple_reduction", "ple_detach_real", "ple_max_new_tokens")
    add_config_arguments(parser, names)
    by_name = {f.name: f for f in fields(HyperLoRAConfig)}
    actions = {action.dest: action for action in parser._actions}
    for name in names:
        action = actions[option_name(name)]
        assert action.option_strings == [f"--{option_name(name)}"] or name == "ple_detach_real"
        assert action.default == by_name[name].default and action.help == by_name[name].metadata["help"]
    assert option_name("context_dim") == "hyper_context_dim" and option_name("ple_weight") == "ple_weight"
    args = parser.parse_args(["--hyper_context_dim", "8", "--ple_weight", "0.5", "--no-ple_detach_real"])
    assert HyperLoRAConfig(**config_values(args, names)) == HyperLoRAConfig(
        context_dim=8, ple_weight=0.5, ple_detach_real=False
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--ple_reduction", "median"])  # the config's choices
    with pytest.raises(ValueError, match="not `HyperLoRAConfig` fields"):
        add_config_arguments(argparse.ArgumentParser(), ["hyper_context_dim"])


def test_egt_trainer_checkpoints_are_peft_adapters_and_resume_exactly(tmp_path):
    """Through peft's path, EGTTrainer's checkpoints are HyperLoRA adapter folders; resuming from one reproduces the
    uninterrupted run's hypernetwork exactly."""
    from hf_egt import EGTConfig, EGTTrainer
    from tests.trainer_utils import group_dataset
    from tests.trainer_utils import tiny_llama as tiny_group_llama

    def trainer():
        args = EGTConfig(
            output_dir=str(tmp_path),
            objective="minmax",
            per_device_train_batch_size=4,
            max_steps=3,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=1,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        config = HyperLoRAConfig(r=2, target_modules=["q_proj", "v_proj"], hidden_size=16, task_type="CAUSAL_LM")
        data = group_dataset({"a": 8, "b": 4})
        return EGTTrainer(model=tiny_group_llama(), args=args, train_dataset=data, peft_config=config)

    uninterrupted = trainer()
    initial = {k: v.clone() for k, v in uninterrupted.model.base_model.hypernetwork.state_dict().items()}
    uninterrupted.train()
    saved = json.loads((tmp_path / "checkpoint-1" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "HYPER_LORA"
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    final = uninterrupted.model.base_model.hypernetwork.state_dict()
    assert any(not torch.equal(final[k], initial[k]) for k in final)
    for key, value in resumed.model.base_model.hypernetwork.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=0)


def test_train_and_train_diffusion_declare_the_config_options():
    """`hf-egt train` and the diffusion script take their HyperLoRA options from the config: one name, default and
    help for each option the two share."""
    from hf_egt.apps.train import TRAIN_HYPER_FIELDS, train_parser
    from hf_egt.integrations.diffusion.train import HYPER_CONFIG_FIELDS

    by_name = {f.name: f for f in fields(HyperLoRAConfig)}
    actions = {action.dest: action for action in train_parser()._actions}
    for name in TRAIN_HYPER_FIELDS:
        action = actions[option_name(name)]
        assert (action.default, action.help) == (by_name[name].default, by_name[name].metadata["help"])
    assert {"ple_weight", "ple_every", "context_dim", "hidden_size", "head_rank"} <= set(TRAIN_HYPER_FIELDS) & set(
        HYPER_CONFIG_FIELDS
    )


def test_match_lora_parameters_keeps_the_hypernetwork_within_the_lora_budget(tmp_path):
    """`match_lora_parameters` picks the largest `head_rank` whose hypernetwork is no larger than the plain LoRA of the
    same rank on the same modules; the choice is saved, so the adapter reloads with the same sizes."""
    from peft import LoraConfig

    from hf_egt.integrations.hyper.model import build_hypernetwork

    def trainable(model) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    sizes = dict(r=4, set_encoder_hidden=8, context_dim=4, embedding_dim=4, hidden_size=8)
    lora = trainable(get_peft_model(tiny_llama(num_layers=6), LoraConfig(r=4, target_modules=TARGETS)))
    config = hyper_config(task_type="CAUSAL_LM", match_lora_parameters=True, head_rank=512, **sizes)
    model = get_peft_model(tiny_llama(num_layers=6), config)
    hyper = model.base_model
    chosen = hyper.hyper_config.head_rank
    assert hyper.num_generated_parameters() == lora
    assert 1 < chosen < 512 and trainable(model) == hyper.num_hypernetwork_parameters() <= lora
    embed_dim = tiny_llama().config.hidden_size  # the input-embeddings set encoder's input
    larger = build_hypernetwork(hyper.slots, embed_dim, hyper.hyper_config, chosen + 1)
    assert sum(p.numel() for p in larger.parameters()) > lora  # the largest that fits
    model.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["head_rank"] == chosen
    reloaded = PeftModel.from_pretrained(tiny_llama(num_layers=6), str(tmp_path))
    assert reloaded.base_model.num_hypernetwork_parameters() == hyper.num_hypernetwork_parameters()
    with pytest.raises(ValueError, match="match_lora_parameters.*head_rank=1.*hidden_size"):
        get_peft_model(
            tiny_llama(), hyper_config(task_type="CAUSAL_LM", match_lora_parameters=True, r=1, hidden_size=512)
        )


def pad_batch(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask` of token rows (pad id 0)."""
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _hyper_trainer(tmp_path, **overrides):
    from hf_egt import EGTConfig, EGTTrainer
    from tests.trainer_utils import group_dataset
    from tests.trainer_utils import tiny_llama as tiny_group_llama

    settings = dict(
        output_dir=str(tmp_path),
        objective="erm",
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=5e-2,
        eval_strategy="steps",
        eval_steps=1,
        per_device_eval_batch_size=1,  # unfixed, each held-out row would generate its own weights
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    args = EGTConfig(**{**settings, **overrides})
    # a wide context and small layer embeddings: the generated weights depend visibly on the set
    config = HyperLoRAConfig(
        r=2, target_modules=["q_proj", "v_proj"], hidden_size=16, context_dim=32, embedding_dim=2, task_type="CAUSAL_LM"
    )
    train = group_dataset({"a": 8, "b": 4})
    trainer = EGTTrainer(
        model=tiny_group_llama(),
        args=args,
        train_dataset=train,
        eval_dataset=group_dataset({"a": 4, "b": 4}, seed=1),
        peft_config=config,
    )
    return trainer, train


def test_fixed_context_callback_evaluates_the_adapter_of_the_training_set(tmp_path):
    """With the callback, every evaluation during training measures the adapter of the training set's context (what
    is exported); without it, each evaluation batch generates its own weights from its own rows."""
    from hf_egt.integrations.hyper import FixedContextCallback, fix_context

    trainer, train = _hyper_trainer(tmp_path / "fixed")
    context_set = pad_batch(train["input_ids"])
    trainer.add_callback(FixedContextCallback(context_set))
    trainer.train()
    logged = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(logged) == 6
    fix_context(trainer.model, context_set)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(logged[-1], rel=1e-6)
    trainer.model.base_model.clear_context()  # each evaluation batch's own rows: another adapter
    assert abs(trainer.evaluate()["eval_loss"] - logged[-1]) > 5e-5  # 50x the tolerance above

    unfixed, _ = _hyper_trainer(tmp_path / "unfixed")
    unfixed.train()
    assert not bool(unfixed.model.base_model.hypernetwork.has_context)
    with pytest.raises(ValueError, match="input_ids"):
        FixedContextCallback({"pixel_values": context_set["input_ids"]})


def test_the_old_names_of_the_context_set_still_work_with_a_warning():
    """`context_batch`, `set_batch=` (one release): the context set has one name, `context_set`."""
    from hf_egt.integrations.hyper import FixedContextCallback, context_batch, tokenize_context_set

    class Tokenizer:
        def __call__(self, texts, **kwargs):
            return {"input_ids": torch.tensor([[len(text)] for text in texts])}

    with pytest.warns(FutureWarning, match=r"`context_batch` is deprecated .*use `tokenize_context_set`"):
        old = context_batch(Tokenizer(), ["ab", "c"], 8)
    assert torch.equal(old["input_ids"], tokenize_context_set(Tokenizer(), ["ab", "c"], 8)["input_ids"])
    with pytest.warns(FutureWarning, match=r"`set_batch` is deprecated .*use `context_set`"):
        callback = FixedContextCallback(set_batch=old)
    assert callback.context_set == old


def test_best_checkpoint_restores_the_context_it_was_measured_with(tmp_path):
    """`load_best_model_at_end`: the checkpoints hold the context fixed before them, so the restored model gives the
    best step's evaluation again without fixing the context anew."""
    from hf_egt.integrations.hyper import FixedContextCallback

    # "best" = highest loss, so that the restored checkpoint is an early one, not the last
    overrides = dict(
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,
    )
    trainer, train = _hyper_trainer(tmp_path, **overrides)
    context_set = pad_batch(train["input_ids"])
    trainer.add_callback(FixedContextCallback(context_set))
    trainer.train()
    logged = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    hyper = trainer.model.base_model
    assert bool(hyper.hypernetwork.has_context)
    with torch.no_grad():  # the restored context is the restored hypernetwork's encoding of the set
        torch.testing.assert_close(hyper.hypernetwork.context, hyper.encode(**context_set))
    assert max(logged) > logged[-1] + 5e-5  # the selected step is not the last: its context is not the last one
    assert trainer.evaluate()["eval_loss"] == pytest.approx(max(logged), rel=1e-6)
