"""HyperLoRA vs plain LoRA: training step time on one tiny Llama, and parameter counts as the model grows.

Step time is forward + backward + optimizer step, the two models measured alternately in one process. Parameter
counts are analytic (models built on the meta device): the hypernetwork, the LoRA parameters it emits, and a
torchhyper-style hypernetwork with one dense `Linear(hidden, numel)` head per emitted tensor — for the LoRA factors,
and for every weight of the model (what torchhyper itself emits).
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_egt.hyper import HyperLoRAConfig, HyperLoRAModel

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


def run(quick: bool = False) -> list[dict]:
    return count_rows() + step_times(quick)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    for row in run(parser.parse_args().quick):
        print(row)
