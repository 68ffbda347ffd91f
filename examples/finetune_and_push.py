"""Fine-tune a Hub causal LM on a Hub dataset with a group objective, and push the LoRA adapter with its EGT card.

One script, the whole loop: load -> measure per group -> fine-tune (min-max by default) -> measure again -> save the
adapter -> write a model card with the per-group table and plot -> push to the Hub.

    python examples/finetune_and_push.py \
        --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct \
        --dataset your-name/biographies --text_column text --group_column gender \
        --objective minmax --max_steps 500 \
        --hub_model_id your-name/smollm2-135m-egt          # needs HF_TOKEN (or `hf auth login`)

Offline dry run (no Hub access, nothing pushed): `--model_name_or_path` a local folder or .gguf file, `--dataset
bold-gender`, and leave out `--hub_model_id`. Multi-GPU: `accelerate launch examples/finetune_and_push.py ...`.

This is the library's loop, in the few calls a user copies (`EGTTrainer.evaluate_groups`, `write_report`,
`EGTTrainer.create_model_card`, `EGTTrainer.push_to_hub`). `hf-egt train ... --push_to_hub` runs the same loop with
every check a command line needs (output folder, resume, split record, left-out groups) before the model loads.
"""

import argparse
import logging
import shlex
import sys
from pathlib import Path

from peft import LoraConfig

from hf_egt import OBJECTIVE_MODES, EGTConfig, EGTTrainer
from hf_egt.apps.data import load_grouped_dataset
from hf_egt.apps.offline import load_causal_lm
from hf_egt.integrations.evaluation import write_report
from hf_egt.integrations.hub import resolve_hub_token

logger = logging.getLogger("finetune_and_push")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="Hub id, folder or .gguf file of a causal LM.")
    parser.add_argument("--dataset", required=True, help="Hub dataset id, local json/csv/parquet, or bold-<domain>.")
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--group_column", default="group")
    parser.add_argument("--groups", nargs="+", default=None, help="Only these groups (default: all).")
    parser.add_argument(
        "--max_train_per_group", type=int, default=None, help="At most this many training rows per group."
    )
    parser.add_argument("--max_eval_per_group", type=int, default=200)
    parser.add_argument("--objective", default="minmax", choices=OBJECTIVE_MODES, help="The group objective.")
    parser.add_argument("--group_step_size", type=float, default=0.01, help="Min-max step size (eta).")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--lora_alpha", type=float, default=32)
    parser.add_argument("--lora_target_modules", nargs="+", default=["all-linear"])
    parser.add_argument("--max_steps", type=int, default=500)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", default="outputs/finetune_and_push")
    parser.add_argument("--hub_model_id", default=None, help="Push the adapter to this repo (e.g. you/model-egt).")
    parser.add_argument("--hub_token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    parser.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Fail before any model download or training: token, dataset, columns, groups.
    token = resolve_hub_token(args.hub_token) if args.hub_model_id else args.hub_token
    train, evaluation, groups = load_grouped_dataset(
        args.dataset,
        text_column=args.text_column,
        group_column=args.group_column,
        groups=args.groups,
        max_train_per_group=args.max_train_per_group,
        max_eval_per_group=args.max_eval_per_group,
        config=args.dataset_config,
        token=token,
        seed=args.seed,
    )
    model, tokenizer = load_causal_lm(args.model_name_or_path)  # a Hub id, a folder or a .gguf file

    config = EGTConfig(
        output_dir=args.output_dir,
        objective=args.objective,
        group_column=args.group_column,
        text_column=args.text_column,
        group_step_size=args.group_step_size,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        bf16=args.bf16,
        logging_steps=max(1, args.max_steps // 20),
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        hub_model_id=args.hub_model_id,
    )
    peft_config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        target_modules=args.lora_target_modules[0]
        if args.lora_target_modules == ["all-linear"]
        else args.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    trainer = EGTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    runs = {"base": trainer.evaluate_groups()}  # LoRA starts at B = 0: the base model
    trainer.train()
    runs[args.objective] = trainer.evaluate_groups()

    output_dir = Path(args.output_dir)
    trainer.save_model(str(output_dir))  # the peft adapter (save_pretrained)
    if not trainer.is_world_process_zero():
        return runs
    shown = [a if previous != "--hub_token" else "<redacted>" for previous, a in zip([None, *argv], argv)]
    command = "python examples/finetune_and_push.py " + shlex.join(shown)
    write_report(runs, output_dir, title=f"{args.model_name_or_path} on {args.dataset}", command=command)
    # The EGT card (per-group table, settings, what was held out); push_to_hub writes it, then makes one filtered
    # upload: only the card, reports and adapter go up (never checkpoints or training arguments), no file holding
    # the token.
    card = {"runs": runs, "dataset_name": args.dataset, "command": command}
    if args.hub_model_id:
        commit = trainer.push_to_hub(token=token, private=args.private, save_model_first=False, **card)
        logger.info("Pushed to %s", commit.commit_url)
    else:
        trainer.create_model_card(**card)
    logger.info("Adapter, report and card in %s", output_dir)
    return runs


if __name__ == "__main__":
    main()
