"""HyperLoRAModel: export through plain peft, context dependence, parameter scaling, PLE, UNet, persistence."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_egt.integrations.hyper import (
    HyperLoRAConfig,
    HyperLoRAModel,
    context_sensitivity,
    is_constant_hypernetwork,
    ple_penalty,
)

TARGETS = ["q_proj", "v_proj", "down_proj"]


def tiny_llama(num_layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def hyper_config(**overrides) -> HyperLoRAConfig:
    values = dict(r=4, lora_alpha=8, target_modules=TARGETS, set_encoder_hidden=32, context_dim=16, hidden_size=32)
    values.update(overrides)
    return HyperLoRAConfig(**values)


def make_hyper(seed: int = 0, num_layers: int = 2, **overrides) -> HyperLoRAModel:
    model = HyperLoRAModel(tiny_llama(num_layers, seed), hyper_config(**overrides))
    # Move B away from its zero initialisation, as training would, so the adapter changes the logits.
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for head in model.hypernetwork.generator.heads.values():
            head.out_b.weight.normal_(0, 0.1)
            head.out_b.bias.normal_(0, 0.1)
    return model.eval()


def batch(seed: int, size: int = 4, length: int = 10, low: int = 0, high: int = 128) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(low, high, (size, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def test_export_reproduces_logits_through_plain_peft(tmp_path):
    from peft import PeftModel

    model = make_hyper()
    model.set_context(**batch(0))
    data = batch(1)
    with torch.no_grad():
        ours = model(**data).logits
        base_logits = tiny_llama()(**data).logits
    model.export_peft(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = reloaded(**data).logits
    assert not torch.allclose(ours, base_logits, atol=1e-3), "the generated adapter should change the logits"
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_generate_lora_weights_uses_peft_state_dict_names():
    from peft import get_peft_model_state_dict

    model = make_hyper()
    model.set_context(**batch(0))
    weights = model.generate_lora_weights()
    reference = get_peft_model_state_dict(model.peft_model)
    assert set(weights) == set(reference)
    for name, tensor in weights.items():
        torch.testing.assert_close(reference[name], tensor)


def test_different_sets_give_different_weights_and_detector_flags_constant():
    model = make_hyper()
    sets = [batch(0, high=40), batch(1, low=40, high=80), batch(2, low=80)]
    first = model.generate_factors(model.encode(**sets[0]))
    second = model.generate_factors(model.encode(**sets[1]))
    assert any(not torch.allclose(first[name], second[name]) for name in first)
    sensitivity = model.context_sensitivity(sets)
    assert sensitivity > 1e-6
    assert not is_constant_hypernetwork([first, second])

    # A hypernetwork whose set encoder ignores its input: the context is h2's output bias.
    with torch.no_grad():
        model.hypernetwork.set_encoder.h2[-1].weight.zero_()
    assert model.context_sensitivity(sets) < 1e-12  # zero up to float rounding
    constant = [model.generate_factors(model.encode(**data)) for data in sets]
    assert is_constant_hypernetwork(constant)


def test_context_sensitivity_closed_form():
    # Two sets, weights (1, 0) and (-1, 0): mean 0, spread 1, mean squared norm 1.
    assert context_sensitivity([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])]) == pytest.approx(1.0)
    assert context_sensitivity([torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0])]) == 0
    with pytest.raises(ValueError, match="at least 2"):
        context_sensitivity([torch.zeros(2)])


def test_parameter_count_barely_grows_with_depth():
    shallow = HyperLoRAModel(tiny_llama(2), hyper_config())
    deep = HyperLoRAModel(tiny_llama(8), hyper_config())
    assert deep.num_generated_parameters() == 4 * shallow.num_generated_parameters()
    assert deep.num_hypernetwork_parameters() < 1.5 * shallow.num_hypernetwork_parameters()
    # exactly one embedding vector per extra layer
    extra = deep.num_hypernetwork_parameters() - shallow.num_hypernetwork_parameters()
    assert extra == 6 * shallow.hyper_config.embedding_dim


def test_ple_is_exactly_zero_when_synthetic_equals_real():
    model = HyperLoRAModel(
        tiny_llama(), hyper_config(ple_weight=0.1), ple_sampler=lambda peft, args, kwargs: (args, kwargs)
    )
    model.train()
    data = batch(0)
    output = model(**data, labels=data["input_ids"])
    assert output["ple"].item() == 0.0
    factors = model.generate_factors(model.encode(**data))
    assert ple_penalty(factors, factors, reduction="sum").item() == 0.0


def test_ple_gradient_flows_only_through_synthetic_side_by_default():
    real = torch.tensor([1.0, 2.0], requires_grad=True)
    synthetic = torch.tensor([0.0, 0.0], requires_grad=True)
    ple_penalty({"w": synthetic}, {"w": real}, reduction="sum").backward()
    assert real.grad is None
    torch.testing.assert_close(synthetic.grad, torch.tensor([-2.0, -4.0]))
    real.grad = synthetic.grad = None
    ple_penalty({"w": synthetic}, {"w": real}, reduction="mean", detach_real=False).backward()
    torch.testing.assert_close(real.grad, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="reduction"):
        ple_penalty(synthetic, real, reduction="max")


def test_ple_with_sampled_continuations_reaches_the_hypernetwork_and_resamples_every_n():
    from hf_egt.integrations.hyper.sampling import CausalLMSampler

    calls = []
    sampler = CausalLMSampler(prompt_length=3, max_new_tokens=5)

    def counting_sampler(peft_model, args, kwargs):
        calls.append(1)
        return sampler(peft_model, args, kwargs)

    model = make_hyper(ple_weight=0.1, ple_every=3)
    model.ple_sampler = counting_sampler
    model.train()
    for step in range(5):
        output = model(**batch(step), labels=batch(step)["input_ids"])
        assert output["ple"].item() > 0
        output["ple"].backward()
    assert len(calls) == 2  # steps 0 and 3
    grads = [p.grad for p in model.hypernetwork.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad for p in model.peft_model.parameters())


def test_save_and_load_roundtrip(tmp_path):
    model = make_hyper()
    model.set_context(**batch(0))
    data = batch(1)
    with torch.no_grad():
        expected = model(**data).logits
    model.save_pretrained(tmp_path)
    loaded = HyperLoRAModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert loaded.hyper_config == model.hyper_config
    with torch.no_grad():
        torch.testing.assert_close(loaded(**data).logits, expected)
    assert set(model.state_dict()) == {f"hypernetwork.{k}" for k in model.hypernetwork.state_dict()}


def test_lazy_top_level_exports():
    import hf_egt

    assert hf_egt.HyperLoRAModel is HyperLoRAModel
    assert hf_egt.HyperLoRAConfig is HyperLoRAConfig


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="ple_reduction"):
        HyperLoRAConfig(ple_reduction="median")
    with pytest.raises(ValueError, match="set_encoder_input"):
        HyperLoRAConfig(set_encoder_input="clip")
    model = HyperLoRAModel(tiny_llama(), hyper_config())
    with pytest.raises(ValueError, match="set_context"):
        model.generate_lora_weights()
    with pytest.raises(ValueError, match="context"):
        model.set_context(context=torch.zeros(3))


def test_last_hidden_embedder_matches_base_model_hidden_state():
    model = HyperLoRAModel(tiny_llama(), hyper_config(set_encoder_input="last_hidden"))
    data = batch(0)
    data["attention_mask"][:, 6:] = 0
    with torch.no_grad():
        hidden = tiny_llama()(**data, output_hidden_states=True).hidden_states[-1]
    expected = hidden[:, :6].mean(dim=1)
    torch.testing.assert_close(model.embed(**data), expected, atol=1e-5, rtol=1e-5)


def test_unet2d_forward_and_ple_with_diffusion_sampler():
    from diffusers import DDPMScheduler, UNet2DModel

    from hf_egt.integrations.hyper.sampling import DiffusionSampler

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    config = HyperLoRAConfig(
        r=2,
        target_modules=["to_q", "to_v", "conv1"],
        set_encoder_hidden=16,
        context_dim=8,
        hidden_size=16,
        ple_weight=0.1,
    )
    sampler = DiffusionSampler(DDPMScheduler(num_train_timesteps=10), num_inference_steps=2)
    model = HyperLoRAModel(unet, config, ple_sampler=sampler).train()
    assert {slot.group.split("__")[0] for slot in model.slots} == {"to_q", "to_v", "conv1"}
    clean = torch.randn(4, 1, 8, 8)
    noisy = clean + torch.randn_like(clean)
    timesteps = torch.randint(0, 10, (4,))
    output = model(noisy, timesteps, context_set={"sample": clean})
    assert output.sample.shape == clean.shape
    with torch.no_grad(), pytest.warns(FutureWarning, match=r"`set_inputs` is deprecated .*use `context_set`"):
        old = model.eval()(noisy, timesteps, set_inputs={"sample": clean})  # the old keyword, for one release
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(old.sample, model.eval()(noisy, timesteps, context_set={"sample": clean}).sample)
    model.train()
    loss = output.sample.pow(2).mean() + output["ple"]
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.hypernetwork.parameters())
    # A UNet with ple_weight > 0 and no sampler is refused with the argument's name.
    with pytest.raises(ValueError, match="ple_sampler"):
        HyperLoRAModel(
            UNet2DModel(
                sample_size=8,
                in_channels=1,
                out_channels=1,
                block_out_channels=(8, 16),
                layers_per_block=1,
                norm_num_groups=4,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            ),
            config,
        )
