"""Cost of EGTTrainer (min-max, reweight) next to a plain Trainer, and of EGTSFTTrainer next to TRL's SFTTrainer.

Same LoRA model, data, batch and steps; the runs alternate (A B A B ...) in one process and the median is reported.

- throughput: trained tokens (attention-mask sum) per second of `train()` after one warm-up step;
- peak memory: the peak during `train()` minus the memory held when it began (`benchmarks.peak_memory`: on CUDA
  `torch.cuda.max_memory_allocated`, on CPU the peak RSS reset at the start of `train()`, in a fresh subprocess per
  run).

CPU: a small Llama (4 layers, hidden 256; a step takes tens of milliseconds, so timer noise stays small). CUDA: a
randomly initialised Llama with SmolLM2-135M's shape, in bf16. ``bench_scaling`` reuses ``build`` and ``measure`` to
vary the number of groups and the sequence length.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import torch

from benchmarks.peak_memory import PeakMemory, measure_in_subprocess

MODULE = "benchmarks.bench_trainer"  # what `measure_in_subprocess` imports `measure` from

VOCAB_WORDS = 256


def model_config(cuda: bool):
    from transformers import LlamaConfig

    if cuda:  # SmolLM2-135M's shape
        return LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0,
        )  # fmt: skip
    return LlamaConfig(
        vocab_size=VOCAB_WORDS, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0,
    )  # fmt: skip


def setting(cuda: bool, quick: bool, **overrides) -> dict:
    """Batch, longest sequence, optimizer steps, rows and groups of a run (``overrides`` replace any of them)."""
    if cuda:
        cfg = {"batch": 8, "seq": 512, "steps": 6 if quick else 20, "rows": 512, "groups": 2}
    else:
        cfg = {"batch": 8, "seq": 64 if quick else 128, "steps": 4 if quick else 12, "rows": 256, "groups": 2}
    return {**cfg, **overrides}


def make_rows(cfg: dict, vocab: int) -> list[dict]:
    """Random token rows; with 2 groups one row in five is the minority, with more each group gets an equal share."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(cfg["rows"]):
        length = int(torch.randint(cfg["seq"] // 2, cfg["seq"] + 1, (1,), generator=generator))
        ids = torch.randint(2, vocab, (length,), generator=generator).tolist()
        if cfg["groups"] == 2:
            group = "minority" if i % 5 == 0 else "majority"
        else:
            group = f"group_{i % cfg['groups']}"
        rows.append({"input_ids": ids, "group": group})
    return rows


def tiny_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB_WORDS)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


class _Clock:
    """A callback timing training from the end of the first (warm-up) optimizer step and counting its tokens."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            start = None
            end = None

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    self.start = time.perf_counter()
                    self.tokens_at_start = state.num_input_tokens_seen

            def on_train_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.end = time.perf_counter()
                self.tokens = state.num_input_tokens_seen - self.tokens_at_start

        return Clock()


OBJECTIVE_OF_KIND = {"egt": "minmax", "egt_reweight": "reweight", "egt_sft": "minmax"}


def build(kind: str, cfg: dict, output_dir: str):
    """A trainer of `kind` (trainer | egt | egt_reweight | sft | egt_sft) on the same model, LoRA, data and batch."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(cuda))
    if cuda:
        model = model.to(torch.bfloat16)
    data = Dataset.from_list(make_rows(cfg, model.config.vocab_size))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    common = dict(
        output_dir=output_dir, per_device_train_batch_size=cfg["batch"], max_steps=cfg["steps"], learning_rate=1e-4,
        logging_steps=10_000, save_strategy="no", report_to=[], disable_tqdm=True, seed=0, bf16=cuda,
        use_cpu=not cuda, include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
    )  # fmt: skip
    clock = _Clock()
    if kind in ("trainer", "egt", "egt_reweight"):
        from peft import get_peft_model

        from hf_egt import EGTConfig, EGTTrainer
        from hf_egt.integrations.trainer import DataCollatorForCausalLM

        if kind == "trainer":
            trainer = Trainer(
                model=get_peft_model(model, lora), args=TrainingArguments(**common), train_dataset=data,
                data_collator=DataCollatorForCausalLM(pad_token_id=0), callbacks=[clock],
            )  # fmt: skip
        else:
            trainer = EGTTrainer(
                model=model, args=EGTConfig(objective=OBJECTIVE_OF_KIND[kind], **common), train_dataset=data,
                peft_config=lora,
                callbacks=[clock],
            )  # fmt: skip
    else:
        from trl import SFTConfig, SFTTrainer

        from hf_egt import EGTSFTConfig, EGTSFTTrainer

        sft = dict(common, max_length=None, bf16=cuda)
        tokenizer = tiny_tokenizer() if not cuda else _cuda_tokenizer()
        if kind == "sft":
            trainer = SFTTrainer(
                model=model, args=SFTConfig(**sft), train_dataset=data.remove_columns("group"),
                processing_class=tokenizer, peft_config=lora, callbacks=[clock],
            )  # fmt: skip
        else:
            trainer = EGTSFTTrainer(
                model=model, args=EGTSFTConfig(objective="minmax", **sft), train_dataset=data,
                processing_class=tokenizer, peft_config=lora, callbacks=[clock],
            )  # fmt: skip
    return trainer, clock


def _cuda_tokenizer():
    """A tokenizer with SmolLM2's vocabulary size (only its pad/eos ids matter: the data is pre-tokenized)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, 49152)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def measure(kind: str, cfg: dict) -> dict:
    """Train once; tokens/s after warm-up and peak memory growth (bytes) during `train()`."""
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, clock = build(kind, cfg, output_dir)
        memory = PeakMemory(after_step=0)  # the whole of train()
        trainer.add_callback(memory)
        trainer.train()
        return {"tokens_per_s": clock.tokens / (clock.end - clock.start), "peak_growth": memory.peak_growth}


def run(quick: bool = False) -> list[dict]:
    cuda = torch.cuda.is_available()
    cfg = setting(cuda, quick)
    repeats = 2 if quick else 3
    pairs = [
        ("Trainer", "trainer", "egt"),
        ("Trainer", "trainer", "egt_reweight"),
        ("TRL SFTTrainer", "sft", "egt_sft"),
    ]
    rows = []
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores), small Llama"
    for peer_name, peer, ours in pairs:
        results = {peer: [], ours: []}
        for repeat in range(repeats):
            for kind in (peer, ours) if repeat % 2 == 0 else (ours, peer):
                results[kind].append(measure(kind, cfg) if cuda else measure_in_subprocess(MODULE, kind, cfg))
        speed = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
        memory = {k: statistics.median(r["peak_growth"] for r in v) for k, v in results.items()}
        shape = f"batch {cfg['batch']}, seq <= {cfg['seq']}, {cfg['steps']} steps, median of {repeats} alternated runs"
        ratio = speed[ours] / speed[peer]
        name = f"{'EGTSFTTrainer' if ours == 'egt_sft' else 'EGTTrainer'}({OBJECTIVE_OF_KIND[ours]}) vs {peer_name}"
        rows.append(
            {
                "benchmark": f"{name}: tokens/s",
                "ours": speed[ours], "peer": speed[peer], "ratio": ratio, "unit": "tokens/s", "target": ">= 0.97",
                "met": ratio >= 0.97, "notes": f"{device}; {shape}",
            }
        )  # fmt: skip
        ratio = memory[ours] / memory[peer] if memory[peer] > 0 else float("nan")
        what = "torch.cuda.max_memory_allocated" if cuda else "peak RSS growth during train(), one subprocess per run"
        rows.append(
            {
                "benchmark": f"{name}: peak memory",
                "ours": memory[ours] / 2**20, "peer": memory[peer] / 2**20, "ratio": ratio, "unit": "MiB",
                "target": "<= 1.03", "met": ratio <= 1.03, "notes": f"{device}; {what}; {shape}",
            }
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
