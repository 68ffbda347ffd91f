"""HyperLoRA on a real pretrained LM (SmolLM2-135M-Instruct from the offline GGUF): one training step, then the
exported peft adapter reloaded with plain peft must reproduce the hypernetwork model's logits.

    python examples/hyper_smollm2_check.py
"""

from __future__ import annotations

import tempfile
import time

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from hf_egt.apps.offline import load_smollm2
from hf_egt.integrations.hyper import HyperLoRAConfig, HyperLoRAModel


def main() -> None:
    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = model.config
    hyper = HyperLoRAModel(model, HyperLoRAConfig(r=8, target_modules=["q_proj", "v_proj"]))
    print(
        f"hypernetwork {hyper.num_hypernetwork_parameters():,} parameters, emits {hyper.num_generated_parameters():,}"
    )

    batch = tokenizer(
        ["She was an American actress.", "He was a British actor and director."], return_tensors="pt", padding=True
    )
    hyper.train()
    output = hyper(**batch, labels=batch["input_ids"])
    output.loss.backward()
    torch.optim.AdamW([p for p in hyper.parameters() if p.requires_grad], lr=1e-3).step()
    print(f"one training step, loss {output.loss.item():.3f}")

    hyper.eval()
    hyper.set_context(**batch)
    with torch.no_grad():
        ours = hyper(**batch).logits
    base = AutoModelForCausalLM.from_config(config)
    base.load_state_dict(state)
    with torch.no_grad():
        base_logits = base.eval()(**batch).logits
    with tempfile.TemporaryDirectory() as directory:
        hyper.export_peft(directory)
        reloaded = PeftModel.from_pretrained(base, directory).eval()
        with torch.no_grad():
            theirs = reloaded(**batch).logits
    print(f"adapter vs base: max |Δlogit| {(ours - base_logits).abs().max().item():.2e}")
    print(f"plain peft reload vs HyperLoRAModel: max |Δlogit| {(ours - theirs).abs().max().item():.2e}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
