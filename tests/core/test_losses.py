"""Chunked per-token losses (hf_egt.core.losses.chunked_head_token_losses, hf_egt.integrations.output_head): the same
values and gradients as the full logits, through models, wrappers and the trainers, and a logged fallback where they
cannot be."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from hf_egt import EGTTrainer
from hf_egt.core.losses import causal_lm_token_losses, chunked_head_token_losses
from hf_egt.integrations.output_head import (
    TOKEN_LOSS_LABELS,
    UnsupportedHeadError,
    add_token_loss_forward,
    check_token_loss_forward,
    logit_transform,
    output_head,
)
from hf_egt.integrations.trainer import DataCollatorForCausalLM
from tests.conftest import accelerate_launch
from tests.integrations.trainer.test_egt_trainer import assert_same_params, config, lora, lora_params
from tests.trainer_utils import VOCAB, group_dataset, tiny_gpt2, tiny_llama

TOLERANCE = dict(rtol=1e-6, atol=1e-6)  # float32
EXACT = dict(rtol=1e-10, atol=1e-12)  # float64


def full_path_losses(hidden, weight, bias, labels, logit_scale=1.0, softcap=None):
    """The reference: full logits, the model's transform (as Cohere / Gemma 2 write it), ``causal_lm_token_losses``."""
    logits = F.linear(hidden, weight, bias).float() * logit_scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return causal_lm_token_losses(logits, labels)


# ---------------------------------------------------------------------------------------------------------------------
# The tensor function.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk_size,logit_scale,softcap,with_bias,trained_head",
    [
        (4, 1.0, None, False, False),  # frozen head: gradients precomputed in the forward
        (4, 1.0, None, False, True),  # trained head: recomputed in the backward
        (1, 0.7, 5.0, True, True),  # scale, soft-capping and a bias, one token per chunk
        (1000, 1.0, 3.0, False, False),  # one chunk holds every token
    ],
)
def test_values_and_gradients_equal_the_full_logits(chunk_size, logit_scale, softcap, with_bias, trained_head):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator).requires_grad_(trained_head)
    bias = torch.randn(50, generator=generator).requires_grad_(trained_head) if with_bias else None
    labels = torch.randint(50, (3, 9), generator=generator)
    labels[0, 2:5] = -100  # ignored tokens inside a sequence
    labels[2] = -100  # a sequence with no counted token
    upstream = torch.randn(3, 9, generator=generator)  # per-token weights, as the group objective applies them
    leaves = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]

    expected, expected_mask = full_path_losses(hidden, weight, bias, labels, logit_scale, softcap)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves)
    got, mask = chunked_head_token_losses(
        hidden, weight, labels, bias, chunk_size=chunk_size, logit_scale=logit_scale, softcap=softcap
    )
    grads = torch.autograd.grad((got * upstream).sum(), leaves)

    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(got, expected, **TOLERANCE)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


def test_stats_are_the_entropy_and_top1_hits_of_the_full_logits():
    generator = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(2, 7, 8, generator=generator), torch.randn(20, 8, generator=generator)
    labels = torch.randint(20, (2, 7), generator=generator)
    labels[1, :3] = -100
    _, mask, entropy, is_top1 = chunked_head_token_losses(hidden, weight, labels, chunk_size=3, with_stats=True)
    logits = (hidden @ weight.T)[mask]
    targets = F.pad(labels, (0, 1), value=-100)[..., 1:][mask]
    log_probs = logits.log_softmax(-1)
    torch.testing.assert_close(entropy[mask], -(log_probs.exp() * log_probs).sum(-1))
    assert torch.equal(is_top1[mask], logits.argmax(-1) == targets)
    assert not entropy[~mask].any() and not is_top1[~mask].any()


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="`chunk_size` must be a positive number of tokens, got 0"):
        chunked_head_token_losses(
            torch.zeros(1, 2, 4), torch.zeros(5, 4), torch.zeros(1, 2, dtype=torch.long), chunk_size=0
        )


# ---------------------------------------------------------------------------------------------------------------------
# Through the models' own forward.
# ---------------------------------------------------------------------------------------------------------------------


def tiny_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=2.0,  # small, so that the soft-capping changes the logits a lot
        pad_token_id=0,
    )
    return Gemma2ForCausalLM(config)


def tiny_cohere():
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(0)
    config = CohereConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        logit_scale=0.3,
        pad_token_id=0,
    )
    return CohereForCausalLM(config)


MODELS = {
    "llama": tiny_llama,
    "llama-tied": lambda: tiny_llama(tie_word_embeddings=True),
    "gpt2-tied": tiny_gpt2,
    "gemma2-softcap": tiny_gemma2,
    "cohere-scale": tiny_cohere,
}
HEAD_LORA = {"gpt2-tied": ["c_attn", "lm_head"]}


def make_batch(seed: int = 0):
    batch = DataCollatorForCausalLM(pad_token_id=0)(group_dataset({"a": 3, "b": 2}, seed=seed).to_list())
    batch["labels"][0, 2:4] = -100
    return batch


def losses_and_grads(model, batch, chunked: bool):
    """Per-token losses of the batch and the gradients of a weighted sum of them w.r.t. the trainable parameters.

    The models run in float64: both paths compute the same function, so they agree to float64 rounding (float32
    rounding, amplified through the layers, reaches a few 1e-6 on single gradient entries; the head itself is checked
    in float32 above).
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if chunked:
        outputs = model(**inputs, **{TOKEN_LOSS_LABELS: batch["labels"]})
        token_losses, mask = outputs["token_losses"], outputs["label_mask"]
    else:
        token_losses, mask = causal_lm_token_losses(model(**inputs).logits, batch["labels"])
    upstream = torch.linspace(0.5, 2.0, token_losses.numel(), dtype=token_losses.dtype).view_as(token_losses)
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((token_losses * upstream).sum(), parameters)
    return token_losses.detach(), mask, grads


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("adapter", ["full", "lora-frozen-head", "lora-head"])
def test_model_forward_equals_the_full_logits(arch, adapter):
    model = MODELS[arch]()
    if adapter != "full":
        targets = HEAD_LORA.get(arch, ["q_proj", "v_proj", "lm_head"])
        targets = targets if adapter == "lora-head" else targets[:-1]
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
        with torch.no_grad():  # B away from zero, so that the adapters (the head's included) change the output
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.3)
    model.double().train()
    assert add_token_loss_forward(model, chunk_size=5) is None
    batch = make_batch()
    expected, expected_mask, expected_grads = losses_and_grads(model, batch, chunked=False)
    got, mask, grads = losses_and_grads(model, batch, chunked=True)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(got, expected, **EXACT)
    assert len(grads) == len(expected_grads) > 0
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **EXACT)


def test_logit_transform_is_read_from_the_config():
    assert logit_transform(tiny_gemma2().config) == (1.0, 2.0)
    assert logit_transform(tiny_cohere().config) == (0.3, None)
    assert logit_transform(tiny_llama().config) == (1.0, None)


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch()
    reference = get_peft_model(tiny_llama(), lora()).double()
    expected = losses_and_grads(reference, batch, chunked=False)
    model = get_peft_model(tiny_llama(), lora()).double()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert add_token_loss_forward(model) is None
    got = losses_and_grads(model, batch, chunked=True)
    torch.testing.assert_close(got[0], expected[0], **EXACT)
    for grad, expected_grad in zip(got[2], expected[2]):
        torch.testing.assert_close(grad, expected_grad, **EXACT)


def test_hypernetwork_functional_call_reaches_the_generated_head_factors():
    from hf_egt.integrations.hyper import HyperLoRAConfig, HyperLoRAModel

    config = HyperLoRAConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], set_encoder_hidden=32, context_dim=16, hidden_size=32
    )
    model = HyperLoRAModel(tiny_llama(), config)  # float32: its set embedder works in float32
    with torch.no_grad():
        for head in model.hypernetwork.generator.heads.values():
            head.out_b.weight.normal_(0, 0.1)
    model.train()
    assert add_token_loss_forward(model) is None
    batch = make_batch()
    expected = losses_and_grads(model, batch, chunked=False)
    got = losses_and_grads(model, batch, chunked=True)
    torch.testing.assert_close(got[0], expected[0], **TOLERANCE)
    assert len(got[2]) == len(list(model.hypernetwork.parameters()))
    for grad, expected_grad in zip(got[2], expected[2]):
        assert expected_grad.norm() > 0
        assert (grad - expected_grad).norm() <= 1e-5 * expected_grad.norm()  # float32 rounding, not a missing path


def test_a_deep_copy_runs_its_own_weights():
    model = tiny_llama()
    add_token_loss_forward(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.lm_head.weight.mul_(2.0)
        clone.model.norm.weight.mul_(3.0)
    batch = make_batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        plain = causal_lm_token_losses(clone(**inputs).logits, batch["labels"])[0]
        chunked = clone(**inputs, **{TOKEN_LOSS_LABELS: batch["labels"]})["token_losses"]
        original = causal_lm_token_losses(model(**inputs).logits, batch["labels"])[0]
    torch.testing.assert_close(chunked, plain, **TOLERANCE)
    assert not torch.allclose(plain, original)


# ---------------------------------------------------------------------------------------------------------------------
# Fallbacks.
# ---------------------------------------------------------------------------------------------------------------------


class DoubledLogits(type(tiny_llama())):
    """A Llama whose forward doubles its logits: a transform the chunked path does not know of."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        outputs["logits"] = outputs["logits"] * 2
        return outputs


def test_the_first_batch_check_catches_a_forward_that_does_more():
    plain = tiny_llama()
    model = DoubledLogits(plain.config)
    model.load_state_dict(plain.state_dict())
    assert add_token_loss_forward(model) is None  # the structure looks separable...
    batch = make_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reason = check_token_loss_forward(model, inputs, batch["labels"])
    assert reason is not None and "differ from the full-logits ones" in reason  # ...but the values disagree
    assert add_token_loss_forward(plain) is None
    assert check_token_loss_forward(plain, inputs, batch["labels"]) is None


def test_unsupported_heads_name_the_reason():
    class NoHead(torch.nn.Module):
        def forward(self, input_ids=None):
            return input_ids

    assert "has no output embedding" in add_token_loss_forward(NoHead())
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["lm_head"], lora_dropout=0.1)).train()
    with pytest.raises(UnsupportedHeadError, match="dropout 0.1"):
        output_head(model.get_base_model())
    hooked = tiny_llama()
    hooked.lm_head.register_forward_hook(lambda module, args, output: output)
    assert "forward hooks" in add_token_loss_forward(hooked)


def test_a_per_call_fallback_uses_the_logits_and_logs_why(caplog):
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.5))
    assert add_token_loss_forward(model.eval()) is None  # no dropout in eval mode: chunked
    batch = make_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.manual_seed(0)
    expected = causal_lm_token_losses(model.train()(**inputs).logits, batch["labels"])[0]
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="hf_egt.integrations.output_head"):
        got = model(**inputs, **{TOKEN_LOSS_LABELS: batch["labels"]})["token_losses"]
    assert "Per-token losses from the full logits: the LoRA'd output embedding has dropout 0.5" in caplog.text
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------------------------------
# In the trainer: the chunked path trains the same parameters as the full logits, for any split of the batch.
# ---------------------------------------------------------------------------------------------------------------------


def train(tmp_path, model=None, **overrides):
    trainer = EGTTrainer(
        model=model if model is not None else tiny_llama(),
        args=config(tmp_path, **overrides),
        train_dataset=group_dataset({"a": 20, "b": 12}, seed=0),
        eval_dataset=group_dataset({"a": 5, "b": 4}, seed=1),
        peft_config=lora(),
    )
    trainer.train()
    return trainer


def test_trainer_chunked_equals_full_logits_and_accumulation(tmp_path):
    full = train(tmp_path / "full", chunked_token_losses=False)
    whole = train(tmp_path / "8x1", per_device_train_batch_size=8, token_loss_chunk_size=7)
    split = train(tmp_path / "4x2", per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert not full._chunked_token_losses and whole._chunked_token_losses and split._chunked_token_losses
    assert_same_params(lora_params(full), lora_params(whole))
    assert_same_params(lora_params(whole), lora_params(split))
    torch.testing.assert_close(whole.group_objective.weights, split.group_objective.weights)
    torch.testing.assert_close(full.group_objective.weights, whole.group_objective.weights)
    full_eval, chunked_eval = full.evaluate(), whole.evaluate()
    for group in ("a", "b"):
        key = f"eval_group_loss/{group}"
        assert full_eval[key] == pytest.approx(chunked_eval[key], rel=1e-5)


def test_trainer_falls_back_and_logs_why(tmp_path, caplog):
    plain = tiny_llama()
    model = DoubledLogits(plain.config)
    model.load_state_dict(plain.state_dict())
    with caplog.at_level(logging.WARNING, logger="hf_egt.integrations.trainer"):
        trainer = train(tmp_path / "doubled", model=model, max_steps=1)
    assert not trainer._chunked_token_losses
    assert "differ from the full-logits ones" in caplog.text


def test_bad_chunk_size_in_the_config(tmp_path):
    with pytest.raises(ValueError, match="`token_loss_chunk_size` must be a positive number of tokens, got 0"):
        config(tmp_path, token_loss_chunk_size=0)


def test_sequence_nll_chunked_equals_full_logits():
    from tests.trainer_utils import tiny_bpe_llama

    texts = ["the cat sat on the mat", "a dog", "the bird flew over the house and away", "x"]
    model, tokenizer = tiny_bpe_llama(texts * 3, 280)
    from hf_egt.integrations.evaluation import sequence_nll

    full = sequence_nll(model, tokenizer, texts, batch_size=3, chunk_size=None)
    chunked = sequence_nll(model, tokenizer, texts, batch_size=3, chunk_size=4)
    torch.testing.assert_close(chunked, full, **TOLERANCE)


@pytest.mark.slow
def test_two_processes_chunked_with_checkpointing_equal_one_process_full_logits(tmp_path):
    one = train(tmp_path / "one", chunked_token_losses=False)
    accelerate_launch("chunked_two_processes.py", str(tmp_path / "two"))
    params = load_file(str(tmp_path / "two" / "params.safetensors"))
    assert_same_params(lora_params(one), {name: params[name] for name in lora_params(one)})
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["chunked"] is True
    torch.testing.assert_close(one.group_objective.weights, torch.tensor(result["weights"], dtype=torch.float64))
