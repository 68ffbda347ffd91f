"""Peak memory and throughput of EGTTrainer's chunked per-token losses next to a plain Trainer with the same LoRA.

Model: a randomly initialised Llama with SmolLM2-135M's shape (30 layers, hidden 576, vocabulary 49,152, tied
embeddings), LoRA r 16 on every linear layer; one sequence of exactly ``seq`` tokens per step, with and without
gradient checkpointing, ``seq`` in 512 / 1024 / 2048; then the vocabulary at 128,256 (Llama 3's) for the scaling.
``Trainer`` computes the model's own loss from its full logits; ``EGTTrainer`` (ERM objective, the same loss)
computes per-token losses in chunks through the output embedding (``hf_egt.integrations.output_head``).

- peak memory of a training step: the peak during the steps after the first, minus the memory held at the end of
  the first (optimizer state, gradients and allocator pools, the same for both trainers). On CPU, in a fresh
  subprocess per run, the peak RSS is reset at that point (``/proc/self/clear_refs``, Linux >= 4.0) and read from
  ``VmHWM``, with glibc returning freed blocks above 1 MiB at once (``MALLOC_MMAP_THRESHOLD_``), so that RSS
  follows the live tensors; the lifetime peak (``ru_maxrss``) would add the same one-off costs (building the model,
  the first step) to both figures and pull their ratio towards 1. On CUDA, ``torch.cuda.max_memory_allocated``;
- throughput: tokens per second after one warm-up step. The two trainers of a cell run back to back, in alternating
  order from cell to cell, so that the ratio compares runs under the same machine load.

On CUDA the model runs in bf16 and ``Trainer(use_liger_kernel=True)`` (Liger's fused linear cross-entropy) is added
beside them when ``liger_kernel`` is installed.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch

from benchmarks.bench_trainer import _Clock
from benchmarks.peak_memory import PeakMemory, measure_in_subprocess

MODULE = "benchmarks.bench_memory"  # what `measure_in_subprocess` imports `measure` from

SMOLLM2_VOCAB = 49152
LLAMA3_VOCAB = 128256
KINDS = ("trainer", "egt")
NAMES = {"trainer": "Trainer", "egt": "EGTTrainer (chunked)", "liger": "Trainer(use_liger_kernel=True)"}


def cells(quick: bool) -> list[dict]:
    """The (seq, gradient checkpointing, vocabulary, layers, steps) settings, the vocabulary-scaling ones last."""
    layers, steps = (2, 2) if quick else (30, 2)
    seqs = (128, 256) if quick else (512, 1024, 2048)
    grid = [
        {"seq": seq, "checkpointing": checkpointing, "vocab": SMOLLM2_VOCAB, "layers": layers, "steps": steps}
        for seq in seqs
        for checkpointing in (False, True)
    ]
    scaling_seq = seqs[-1] if quick else 1024  # with checkpointing, where the logits matter most
    grid.append({"seq": scaling_seq, "checkpointing": True, "vocab": LLAMA3_VOCAB, "layers": layers, "steps": steps})
    return grid


def model_config(cell: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cell["vocab"], hidden_size=576, intermediate_size=1536, num_hidden_layers=cell["layers"],
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=4096, tie_word_embeddings=True,
        pad_token_id=0,
    )  # fmt: skip


def build(kind: str, cell: dict, output_dir: str):
    """A trainer of ``kind`` (trainer | egt | liger) on the same model, LoRA, data and batch."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments

    from hf_egt import EGTConfig, EGTTrainer
    from hf_egt.integrations.trainer import DataCollatorForCausalLM

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(cell))
    if cuda:
        model = model.to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(2, cell["vocab"], (cell["seq"],), generator=generator).tolist(), "group": g}
        for g in ("a", "b") * 8
    ]
    data = Dataset.from_list(rows)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    common = dict(
        output_dir=output_dir, per_device_train_batch_size=1, max_steps=cell["steps"], learning_rate=1e-4,
        logging_steps=10_000, save_strategy="no", report_to=[], disable_tqdm=True, seed=0, bf16=cuda,
        use_cpu=not cuda, include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
        gradient_checkpointing=cell["checkpointing"], gradient_checkpointing_kwargs={"use_reentrant": False},
    )  # fmt: skip
    clock = _Clock()
    if kind == "egt":
        args = EGTConfig(objective="erm", **common)
        trainer = EGTTrainer(model=model, args=args, train_dataset=data, peft_config=lora, callbacks=[clock])
        if not trainer._chunked_token_losses:
            raise RuntimeError("EGTTrainer fell back to the full logits: the benchmark would not measure the chunks.")
    else:
        args = TrainingArguments(**common, use_liger_kernel=kind == "liger")
        trainer = Trainer(
            model=get_peft_model(model, lora), args=args, train_dataset=data.remove_columns("group"),
            data_collator=DataCollatorForCausalLM(pad_token_id=0), callbacks=[clock],
        )  # fmt: skip
    return trainer, clock


def measure(kind: str, cell: dict) -> dict:
    """Train; tokens/s and peak memory growth (bytes) of the steps after the warm-up step."""
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, clock = build(kind, cell, output_dir)
        memory = PeakMemory(after_step=1)  # the steps after the warm-up one
        trainer.add_callback(memory)
        trainer.train()
        return {"tokens_per_s": clock.tokens / (clock.end - clock.start), "peak_growth": memory.peak_growth}


def kinds() -> tuple[str, ...]:
    if torch.cuda.is_available():
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return KINDS
        return (*KINDS, "liger")
    return KINDS


def run(quick: bool = False) -> list[dict]:
    cuda = torch.cuda.is_available()
    device = (
        torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    )
    rows = []
    for index, cell in enumerate(cells(quick)):
        order = kinds() if index % 2 == 0 else tuple(reversed(kinds()))
        results = {kind: measure(kind, cell) if cuda else measure_in_subprocess(MODULE, kind, cell) for kind in order}
        shape = (
            f"seq {cell['seq']}, batch 1, vocab {cell['vocab']:,}, {cell['layers']} layers, gradient checkpointing "
            f"{'on' if cell['checkpointing'] else 'off'}"
        )
        peer = results["trainer"]
        for kind in order:
            if kind == "trainer":
                continue
            result = results[kind]
            memory_ratio = result["peak_growth"] / peer["peak_growth"] if peer["peak_growth"] > 0 else float("nan")
            speed_ratio = result["tokens_per_s"] / peer["tokens_per_s"]
            long = cell["seq"] >= 1024 and cell["checkpointing"]
            what = "max_memory_allocated" if cuda else "peak RSS of the steps after the warm-up one, fresh subprocess"
            rows.append(
                {
                    "benchmark": f"{NAMES[kind]} vs Trainer: peak memory ({shape})",
                    "ours": result["peak_growth"] / 2**20, "peer": peer["peak_growth"] / 2**20,
                    "ratio": memory_ratio, "unit": "MiB", "target": "<= 0.6" if long else "",
                    "met": memory_ratio <= 0.6 if long else None, "notes": f"{device}; {what}",
                }
            )  # fmt: skip
            rows.append(
                {
                    "benchmark": f"{NAMES[kind]} vs Trainer: tokens/s ({shape})",
                    "ours": result["tokens_per_s"], "peer": peer["tokens_per_s"], "ratio": speed_ratio,
                    "unit": "tokens/s", "target": ">= 0.95", "met": speed_ratio >= 0.95,
                    "notes": f"{device}; {cell['steps'] - 1} timed steps, the pair run back to back",
                }
            )  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row), flush=True)
