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

from hf_egt.integrations.hyper import HYPER_LORA, HyperLoRAConfig, HyperLoRAModel
from hf_egt.integrations.hyper.config import add_config_arguments, config_values, option_name
from tests.test_hyper import batch, hyper_config, tiny_llama


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
    from hf_egt.apps.cli import TRAIN_HYPER_FIELDS, train_parser
    from hf_egt.integrations.diffusion.train import HYPER_CONFIG_FIELDS

    by_name = {f.name: f for f in fields(HyperLoRAConfig)}
    actions = {action.dest: action for action in train_parser()._actions}
    for name in TRAIN_HYPER_FIELDS:
        action = actions[option_name(name)]
        assert (action.default, action.help) == (by_name[name].default, by_name[name].metadata["help"])
    assert {"ple_weight", "ple_every", "context_dim", "hidden_size", "head_rank"} <= set(TRAIN_HYPER_FIELDS) & set(
        HYPER_CONFIG_FIELDS
    )
