"""HyperLoRA vs plain LoRA: training step time on one tiny Llama, and parameter counts as the model grows.

Step time is forward + backward + optimizer step, the two models measured alternately in one process. Parameter
counts are analytic (models built on the meta device): the hypernetwork, the LoRA parameters it emits, and a
torchhyper-style hypernetwork with one dense `Linear(hidden, numel)` head per emitted tensor — for the LoRA factors,
and for every weight of the model (what torchhyper itself emits).

Diffusion rows: one optimizer step of `hf_egt.integrations.diffusion.train` (`draw_window_inputs` + `accumulate_window`
+ AdamW) with `--hyper` vs the plain LoRA on the digits UNet of `examples/hyper_diffusion_autophagy.py`, and its counts.
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_egt.integrations.hyper import HyperLoRAConfig, HyperLoRAModel

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama_config(num_layers: int = 4) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=num_layers,
        num_attention_heads=8,
        num_key_value_heads=4,
    )


def smollm2_135m_config() -> LlamaConfig:
    """SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M config.json), written out: no download."""
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )


def _hyper_config(**overrides) -> HyperLoRAConfig:
    return HyperLoRAConfig(**{"r": 8, "lora_alpha": 16, "target_modules": TARGETS, **overrides})


def parameter_counts(config: LlamaConfig, hyper: HyperLoRAConfig) -> dict[str, int]:
    """Counts for one architecture, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        base = LlamaForCausalLM(config)
        base_count = sum(p.numel() for p in base.parameters())
        model = HyperLoRAModel(base, hyper)
    emitted = [tuple(s.a_shape) for s in model.slots] + [tuple(s.b_shape) for s in model.slots]
    emitted_numels = [torch.Size(shape).numel() for shape in emitted]
    width = hyper.hidden_size
    weight_numels = [p.numel() for name, p in model.get_base_model().named_parameters() if "lora_" not in name]
    return {
        "model": base_count,
        "lora": sum(emitted_numels),
        "ours": model.num_hypernetwork_parameters(),
        "dense_lora_heads": sum((width + 1) * numel for numel in emitted_numels),
        "dense_model_heads": sum((width + 1) * numel for numel in weight_numels),
    }


def _batch(vocab: int, batch_size: int, length: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch_size, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}


def _step_function(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        output = model(**batch)
        loss = output.loss + output["ple"] if "ple" in output else output.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _seconds(step, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def step_times(quick: bool) -> list[dict]:
    from peft import LoraConfig, get_peft_model

    config = tiny_llama_config()
    batch_size, length = (4, 64) if quick else (8, 128)
    repeats, rounds = (3, 3) if quick else (5, 5)
    batch = _batch(config.vocab_size, batch_size, length)

    torch.manual_seed(0)
    lora = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    variants = {
        "input_embeddings": _hyper_config(),
        "last_hidden": _hyper_config(set_encoder_input="last_hidden"),
        "input_embeddings + PLE λ=0.1 resampled every 8 steps": _hyper_config(
            ple_weight=0.1, ple_every=8, ple_max_new_tokens=16
        ),
    }
    if quick:
        variants.pop("input_embeddings + PLE λ=0.1 resampled every 8 steps")
    steps = {"lora": _step_function(lora, batch)}
    for name, hyper in variants.items():
        torch.manual_seed(0)
        steps[name] = _step_function(HyperLoRAModel(LlamaForCausalLM(config), hyper), batch)
    for step in steps.values():  # warm-up
        step()
    times = {name: [] for name in steps}
    for _ in range(rounds):  # interleaved
        for name, step in steps.items():
            if "PLE" in name:
                times[name].append(_seconds(step, 8))  # one full resampling period
            else:
                times[name].append(_seconds(step, repeats))
    lora_s = min(times["lora"])
    rows = []
    for name in variants:
        ours_s = min(times[name])
        default = name == "input_embeddings"
        rows.append(
            {
                "benchmark": f"train step, tiny Llama 4×256, batch {batch_size}×{length}, set encoder {name}",
                "ours": ours_s * 1e3,
                "peer": lora_s * 1e3,
                "ratio": ours_s / lora_s,
                "unit": "ms (peer: peft LoRA r=8)",
                "target": "≤ 1.15×" if default else "informational",
                "met": (ours_s / lora_s <= 1.15) if default else None,
                "notes": "fwd+bwd+AdamW, all 7 linear types, best of interleaved rounds",
            }
        )
    return rows


def count_rows() -> list[dict]:
    rows = []
    hyper = _hyper_config()
    architectures = [(f"tiny Llama, {n} layers", tiny_llama_config(n)) for n in (2, 8, 32)]
    architectures.append(("SmolLM2-135M config (30 layers)", smollm2_135m_config()))
    for label, config in architectures:
        counts = parameter_counts(config, hyper)
        shallow = parameter_counts(config.__class__(**{**config.to_dict(), "num_hidden_layers": 2}), hyper)
        growth = counts["ours"] / shallow["ours"]
        rows.append(
            {
                "benchmark": f"hypernetwork params vs emitted LoRA, {label}",
                "ours": counts["ours"],
                "peer": counts["lora"],
                "ratio": counts["ours"] / counts["lora"],
                "unit": "parameters (peer: LoRA r=8 it emits)",
                "target": "informational",
                "met": None,
                "notes": f"{growth:.3f}× the same architecture's 2-layer hypernetwork; model {counts['model']:,}",
            }
        )
        rows.append(
            {
                "benchmark": f"hypernetwork params vs torchhyper-style dense heads, {label}",
                "ours": counts["ours"],
                "peer": counts["dense_lora_heads"],
                "ratio": counts["ours"] / counts["dense_lora_heads"],
                "unit": "parameters (peer: one dense head per LoRA tensor)",
                "target": "< 1.5× growth 2→8 layers" if "8 layers" in label else "informational",
                "met": (growth < 1.5) if "8 layers" in label else None,
                "notes": f"dense heads emitting every model weight: {counts['dense_model_heads']:.3g} "
                f"({counts['dense_model_heads'] / counts['model']:.0f}× the model)",
            }
        )
    return rows


def diffusion_rows(quick: bool) -> list[dict]:
    """`--hyper` vs plain LoRA (r=8, attention + convolutions) training steps on the class-conditional digits UNet
    (channels 16/32 at 8×8, 177 k parameters), batch 64, minmax over 10 classes and 4 noise buckets."""
    import argparse
    import statistics

    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel

    from hf_egt.integrations.diffusion.buckets import NoiseLevelGroupObjective
    from hf_egt.integrations.diffusion.lora import add_unet_lora, lora_parameters, unet_lora_config
    from hf_egt.integrations.diffusion.models import DiffusionComponents
    from hf_egt.integrations.diffusion.train import (
        accumulate_window,
        build_hyper_model,
        draw_window_inputs,
        window_generator,
    )

    def unet():
        torch.manual_seed(0)
        return UNet2DModel(
            sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, attention_head_dim=16, num_class_embeds=10,
        ).requires_grad_(False)  # fmt: skip

    accelerator = Accelerator(cpu=True)
    generator = torch.Generator().manual_seed(0)
    window = [
        {
            "pixel_values": torch.rand(64, 1, 8, 8, generator=generator).mul(2).sub(1),
            "group_ids": torch.randint(0, 10, (64,), generator=generator),
        }
    ]
    hyper_args = argparse.Namespace(
        hyper_unet_pool_size=4, hyper_set_encoder_hidden=128, hyper_hidden_size=128, hyper_context_dim=64,
        hyper_head_rank=32, ple_weight=0.0, ple_every=1, ple_inference_steps=10, model_name_or_path=None,
    )  # fmt: skip
    models, steps = {}, {}
    for name in ("lora", "hyper"):
        components = DiffusionComponents("unet2d", unet(), DDPMScheduler(num_train_timesteps=1000))
        config = unet_lora_config(8, lora_conv=True)
        if name == "hyper":
            model = build_hyper_model(components, config, hyper_args)
        else:
            model = add_unet_lora(components.unet, config)
        optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-4)
        objective = NoiseLevelGroupObjective(4, num_groups=10, objective="minmax", group_step_size=0.5)
        models[name] = model

        def step(index, components=components, model=model, optimizer=optimizer, objective=objective, name=name):
            inputs = draw_window_inputs(components, window, 4, window_generator(0, index, 0), torch.float32)
            accumulate_window(accelerator, components, model, objective, window, inputs, hyper=name == "hyper")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            objective.end_window()

        steps[name] = step
    rounds, warmup = (10, 2) if quick else (30, 5)
    times = {name: [] for name in steps}
    for index in range(warmup + rounds):
        for name in list(steps)[index % 2 :] + list(steps)[: index % 2]:  # alternate who goes first
            start = time.perf_counter()
            steps[name](index)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    ours_s, lora_s = statistics.median(times["hyper"]), statistics.median(times["lora"])
    hyper = models["hyper"]
    lora_count = sum(p.numel() for p in lora_parameters(models["lora"]))
    base_count = sum(p.numel() for n, p in hyper.get_base_model().named_parameters() if "lora_" not in n)
    return [
        {
            "benchmark": "diffusion train step, digits UNet 16/32 at 8×8, batch 64, --hyper vs LoRA",
            "ours": ours_s * 1e3,
            "peer": lora_s * 1e3,
            "ratio": ours_s / lora_s,
            "unit": "ms (peer: peft LoRA r=8 attn+conv)",
            "target": "informational",
            "met": None,
            "notes": f"minmax, 4 noise buckets, no PLE; median of {rounds} interleaved steps",
        },
        {
            "benchmark": "hypernetwork params vs emitted LoRA, digits UNet 16/32",
            "ours": hyper.num_hypernetwork_parameters(),
            "peer": lora_count,
            "ratio": hyper.num_hypernetwork_parameters() / lora_count,
            "unit": "parameters (peer: LoRA r=8 it emits)",
            "target": "informational",
            "met": None,
            "notes": f"UNet {base_count:,} parameters; {len(hyper.hypernetwork.generator.groups)} module-type heads "
            f"for {len(hyper.slots)} layers",
        },
    ]


def run(quick: bool = False) -> list[dict]:
    return count_rows() + step_times(quick) + diffusion_rows(quick)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    for row in run(parser.parse_args().quick):
        print(row)
