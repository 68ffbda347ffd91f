"""The ``hf-egt`` command line.

    hf-egt train            fine-tune a causal LM with LoRA and a group objective (EGTTrainer), report, card, push
    hf-egt train-diffusion  the diffusion training script (hf_egt.diffusion.train), arguments forwarded
    hf-egt evaluate         per-group perplexity and EGT divergence of a model (+ adapter) on a dataset
    hf-egt demo             the offline demo: SmolLM2-135M on BOLD race, base vs ERM vs min-max

``train`` parses every ``transformers.TrainingArguments`` option (through ``EGTConfig``), and runs unchanged under
``accelerate launch -m hf_egt.cli train ...``. Bad input (unknown dataset, column or group, a model without a causal-LM
head, a push without a token) fails before any model is loaded or trained.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("hf_egt.cli")

COMMANDS = {
    "train": "fine-tune a causal LM with LoRA and a group objective (all TrainingArguments options apply)",
    "train-diffusion": "train a diffusion model with a group objective (the hf_egt.diffusion.train script)",
    "evaluate": "per-group perplexity and EGT divergence of a model (and adapter) on a dataset",
    "demo": "offline demo: SmolLM2-135M on BOLD race, base vs ERM vs min-max, with report and plot",
}
FORWARDED = ("train", "train-diffusion")
SECRET_OPTIONS = ("--hub_token", "--token")


# ----------------------------------------------------------------------------------------------------------- helpers
def check_causal_lm(model_name_or_path: str) -> None:
    """Raise a ``ValueError`` when ``model_name_or_path`` has no causal-LM head (checked on its config, no weights).

    A ``.gguf`` file is accepted as is (GGUF checkpoints of text generators are causal LMs).
    """
    if Path(model_name_or_path).suffix == ".gguf":
        return
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(model_name_or_path)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"`--model_name_or_path`: {model_name_or_path!r} is a {config.model_type!r} model, which has no causal-LM "
            "head in transformers; pass a decoder-only text generator (Llama, Qwen2, GPT-2, SmolLM2, ...)."
        )
    causal_architectures = set()
    for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_architectures.update([names] if isinstance(names, str) else names)
    architectures = config.architectures or []
    if architectures and not any(
        name in causal_architectures or name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures
    ):
        raise ValueError(
            f"`--model_name_or_path`: {model_name_or_path!r} was saved as {architectures}, without a causal-LM head "
            f"(expected e.g. {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]!r}); a new head would be random."
        )


def load_checked_causal_lm(model_name_or_path: str):
    """``hf_egt.offline.load_causal_lm`` (Hub id, folder or ``.gguf`` file) after ``check_causal_lm``."""
    from .offline import load_causal_lm

    check_causal_lm(model_name_or_path)
    return load_causal_lm(model_name_or_path)


def redacted_command(program: str, argv: Sequence[str]) -> str:
    """The command line as a shell string, with the values of secret options (``--hub_token``) replaced."""
    shown, hide_next = [], False
    for arg in argv:
        if hide_next:
            shown.append("<redacted>")
            hide_next = False
        elif arg in SECRET_OPTIONS:
            shown.append(arg)
            hide_next = True
        elif arg.split("=", 1)[0] in SECRET_OPTIONS:
            shown.append(arg.split("=", 1)[0] + "=<redacted>")
        else:
            shown.append(arg)
    return f"{program} {shlex.join(shown)}".strip()


def run_from_eval_metrics(metrics: Mapping[str, float], metric: str = "perplexity") -> dict:
    """Per-group summary (``per_group``, ``gap``, ``worst_group``, ``overall``) from ``EGTTrainer.evaluate()`` keys.

    Reads ``eval_group_<metric>/<group>``; ``overall`` is ``exp(eval_loss)`` for perplexity.
    """
    import math

    from .metrics import summarize_groups

    prefix = f"eval_group_{metric}/"
    per_group = {key[len(prefix) :]: float(value) for key, value in metrics.items() if key.startswith(prefix)}
    if not per_group:
        raise ValueError(f"The evaluation returned no `{prefix}<group>` key; got {sorted(metrics)}.")
    run = summarize_groups(per_group)
    if metric == "perplexity" and "eval_loss" in metrics:
        run["overall"] = math.exp(float(metrics["eval_loss"]))
    return run


def _write(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")


# ------------------------------------------------------------------------------------------------------------- train
@dataclass
class TrainScriptArguments:
    """Options of ``hf-egt train`` besides ``EGTConfig`` (TrainingArguments + ``group_column``, ``groups``,
    ``objective``, ``group_step_size``, ``text_column``, ``max_length``...)."""

    model_name_or_path: str = field(metadata={"help": "Hub id, local folder, or .gguf file of a causal LM."})
    dataset: str = field(
        metadata={
            "help": "bold-<domain> (offline: bold-race, bold-gender, ...), a local json/jsonl/csv/parquet "
            "file, or a Hub dataset id."
        }
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Eval split (default: test/validation if present, else held-out rows)."}
    )
    max_per_group: int | None = field(default=None, metadata={"help": "At most this many training rows per group."})
    max_eval_per_group: int | None = field(default=None, metadata={"help": "At most this many eval rows per group."})
    eval_fraction: float = field(default=0.2, metadata={"help": "Held-out share per group without an eval split."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules to adapt (default: all-linear)."}
    )
    hyper: bool = field(default=False, metadata={"help": "Generate the LoRA factors with a hypernetwork (HyperLoRA)."})
    ple_weight: float = field(default=0.0, metadata={"help": "HyperLoRA self-consumption (PLE) penalty weight."})
    eval_base: bool = field(default=True, metadata={"help": "Evaluate before training too (the base model)."})


def build_peft_config(script_args: TrainScriptArguments, model_name_or_path: str):
    """A ``peft.LoraConfig`` from the LoRA options, or a ``HyperLoRAConfig`` with ``--hyper``."""
    target_modules = script_args.lora_target_modules
    target = target_modules[0] if len(target_modules) == 1 and target_modules[0] == "all-linear" else target_modules
    if script_args.hyper:
        from .hyper import HyperLoRAConfig

        return HyperLoRAConfig(
            r=script_args.lora_r,
            lora_alpha=script_args.lora_alpha,
            target_modules=target,
            lora_dropout=script_args.lora_dropout,
            ple_weight=script_args.ple_weight,
            base_model_name_or_path=model_name_or_path,
        )
    from peft import LoraConfig

    return LoraConfig(
        r=script_args.lora_r,
        lora_alpha=script_args.lora_alpha,
        lora_dropout=script_args.lora_dropout,
        target_modules=target,
        task_type="CAUSAL_LM",
    )


def train_parser():
    from transformers import HfArgumentParser

    from .trainer import EGTConfig

    return HfArgumentParser(
        (TrainScriptArguments, EGTConfig),
        prog="hf-egt train",
        description="Fine-tune a causal LM with LoRA and a group objective (EGTTrainer); write the per-group report "
        "and a model card; push with --push_to_hub --hub_model_id.",
    )


def run_train(argv: Sequence[str]) -> dict:
    """``hf-egt train``: validate, train, evaluate per group, save adapter + report + card, optionally push."""
    from .data import load_grouped_dataset
    from .evaluation import write_report
    from .hub import build_model_card, push_folder_to_hub, resolve_hub_token
    from .trainer import EGTTrainer

    script_args, training_args = train_parser().parse_args_into_dataclasses(args=list(argv))
    push, repo_id, token = training_args.push_to_hub, training_args.hub_model_id, training_args.hub_token
    if push:
        if not repo_id:
            raise ValueError("`--push_to_hub` needs `--hub_model_id` (e.g. `--hub_model_id you/smollm2-egt`).")
        token = resolve_hub_token(token)
        # The Trainer would push checkpoints and its own card; we push once, after the card is written.
        training_args.push_to_hub = False
    train, evaluation, groups = load_grouped_dataset(
        script_args.dataset,
        text_column=training_args.text_column,
        group_column=training_args.group_column,
        groups=training_args.groups,
        max_per_group=script_args.max_per_group,
        max_eval_per_group=script_args.max_eval_per_group,
        eval_fraction=script_args.eval_fraction,
        train_split=script_args.train_split,
        eval_split=script_args.eval_split,
        config=script_args.dataset_config,
        token=token,
        seed=training_args.seed,
    )
    model, tokenizer = load_checked_causal_lm(script_args.model_name_or_path)
    trainer = EGTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=build_peft_config(script_args, script_args.model_name_or_path),
    )
    runs = {}
    if script_args.eval_base:
        runs["base"] = run_from_eval_metrics(trainer.evaluate())
    trainer.train()
    runs[training_args.objective] = run_from_eval_metrics(trainer.evaluate())
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    result = {"runs": runs, "output_dir": str(output_dir)}
    if not trainer.is_world_process_zero():
        return result
    command = redacted_command("hf-egt train", argv)
    config = {
        "model_name_or_path": script_args.model_name_or_path,
        "dataset": script_args.dataset,
        "groups": groups,
        "num_processes": trainer.accelerator.num_processes,
    }
    paths = write_report(
        runs,
        output_dir,
        title=f"hf-egt: {script_args.model_name_or_path} on {script_args.dataset}",
        config=config,
        command=command,
    )
    card = build_model_card(
        base_model=script_args.model_name_or_path,
        runs=runs,
        objective=training_args.objective,
        model_name=repo_id or output_dir.name,
        dataset=script_args.dataset,
        group_column=training_args.group_column,
        command=command,
        adapter_description="HyperLoRA (hypernetwork-generated LoRA)" if script_args.hyper else None,
    )
    card.save(output_dir / "README.md")
    result["paths"] = {key: str(path) for key, path in paths.items()}
    if push:
        commit = push_folder_to_hub(output_dir, repo_id, token=token, private=bool(training_args.hub_private_repo))
        result["commit_url"] = str(commit.commit_url)
    return result


# ---------------------------------------------------------------------------------------------------------- evaluate
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model_name_or_path", required=True, help="Hub id, local folder or .gguf file of a causal LM."
    )
    parser.add_argument("--adapter", default=None, help="A peft adapter (folder or Hub id) to apply to the model.")
    parser.add_argument("--compare_base", action="store_true", help="With --adapter: also report the base model.")
    parser.add_argument("--dataset", required=True, help="bold-<domain>, a local json/csv/parquet file, or a Hub id.")
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--split", default=None, help="Evaluate on this split (default: the eval split).")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--group_column", default="group")
    parser.add_argument("--groups", nargs="+", default=None, help="Only these groups (default: all).")
    parser.add_argument("--max_per_group", type=int, default=128, help="At most this many rows per group.")
    parser.add_argument(
        "--feature_model",
        default="minilm",
        help="Sentence encoder for the EGT divergence: 'minilm' (offline all-MiniLM-L6-v2), a Hub id or folder, "
        "or 'none' to skip generation.",
    )
    parser.add_argument(
        "--divergence",
        default="quantized_js",  # hf_egt.metrics.RECOMMENDED_TEXT_DIVERGENCE (not imported: keeps --help fast)
        help="Divergence of the EGT report, a name of hf_egt.metrics.DIVERGENCES; the default is the one "
        "docs/metric.md supports at ~100 samples per group.",
    )
    parser.add_argument(
        "--max_prompts_per_group",
        type=int,
        default=100,
        help="Prompts (sentence prefixes) per group; EGT needs hf_egt.metrics.minimum_samples(divergence) of them.",
    )
    parser.add_argument("--num_prompt_words", type=int, default=4, help="Words of each sentence kept as the prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/evaluate")


def resolve_feature_model(name: str | None) -> str | None:
    if name is None or name.lower() == "none":
        return None
    if name.lower() == "minilm":
        from .offline import minilm_path

        return str(minilm_path())
    return name


def run_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """``hf-egt evaluate``: per-group report of a model (and adapter) on a dataset."""
    from .data import load_grouped_dataset
    from .evaluation import evaluate_causal_lm, write_report

    train, evaluation, _ = load_grouped_dataset(
        args.dataset,
        text_column=args.text_column,
        group_column=args.group_column,
        groups=args.groups,
        max_eval_per_group=args.max_per_group,
        eval_split=args.split,
        config=args.dataset_config,
        seed=args.seed,
    )
    feature_model = resolve_feature_model(args.feature_model)
    model, tokenizer = load_checked_causal_lm(args.model_name_or_path)
    texts = list(evaluation[args.text_column])
    groups = [str(group) for group in evaluation[args.group_column]]
    kwargs = {
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "feature_model": feature_model,
        "num_prompt_words": args.num_prompt_words,
        "max_new_tokens": args.max_new_tokens,
        "max_prompts_per_group": args.max_prompts_per_group,
        "divergence": args.divergence,
        "seed": args.seed,
    }
    runs = {}
    if args.adapter is None or args.compare_base:
        runs["base"] = evaluate_causal_lm(model, tokenizer, texts, groups, name="base", **kwargs)
    if args.adapter is not None:
        from peft import PeftModel

        name = Path(args.adapter).name or "adapter"
        model = PeftModel.from_pretrained(model, args.adapter)
        runs[name] = evaluate_causal_lm(model, tokenizer, texts, groups, name=name, **kwargs)
    paths = write_report(
        runs,
        args.output_dir,
        title=f"hf-egt: {args.adapter or args.model_name_or_path} on {args.dataset}",
        config={key: value for key, value in vars(args).items() if key != "command"},
        command=redacted_command("hf-egt evaluate", argv),
    )
    return {"runs": runs, "paths": {key: str(path) for key, path in paths.items()}}


# -------------------------------------------------------------------------------------------------------------- demo
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="outputs/demo", help="Where the report, plot and adapters go.")
    parser.add_argument("--quick", action="store_true", help="Smaller preset (about 5 minutes on 2 CPU cores).")
    parser.add_argument("--no_egt", action="store_true", help="Skip generation and the embedding EGT divergence.")
    advanced = parser.add_argument_group("advanced (override the preset)")
    advanced.add_argument("--model_name_or_path", default=None, help="A causal LM instead of the offline SmolLM2.")
    advanced.add_argument("--feature_model", default=None, help="Sentence encoder (default: offline MiniLM).")
    advanced.add_argument("--max_steps", type=int, default=None)
    advanced.add_argument("--max_train_per_group", type=int, default=None)
    advanced.add_argument("--max_eval_per_group", type=int, default=None)
    advanced.add_argument("--max_prompts_per_group", type=int, default=None)
    advanced.add_argument("--batch_size", type=int, default=None)
    advanced.add_argument("--group_step_size", type=float, default=None)
    advanced.add_argument(
        "--minmax_objective",
        default=None,
        choices=["minmax", "ema", "worst", "reweight"],
        help="Group objective of the 'minmax' run (default: minmax, exponentiated-gradient group DRO).",
    )


def run_demo_command(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    from .demo import DEFAULT, QUICK, run_demo

    settings = QUICK if args.quick else DEFAULT
    overrides = {
        name: getattr(args, name)
        for name in (
            "max_steps",
            "max_train_per_group",
            "max_eval_per_group",
            "max_prompts_per_group",
            "batch_size",
            "group_step_size",
            "minmax_objective",
        )
        if getattr(args, name) is not None
    }
    if args.no_egt:
        overrides["egt"] = False
    settings = replace(settings, **overrides)
    loader = None
    if args.model_name_or_path is not None:
        check_causal_lm(args.model_name_or_path)
        from .offline import load_causal_lm

        def loader():
            return load_causal_lm(args.model_name_or_path)

    return run_demo(
        args.output_dir,
        args.quick,
        settings=settings,
        model_loader=loader,
        feature_model=resolve_feature_model(args.feature_model) if args.feature_model else None,
    )


# -------------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-egt",
        description="Equalized Generative Treatment for Hugging Face models: measure per-group generation quality "
        "and fix it with min-max LoRA fine-tuning.",
        epilog="Run `hf-egt COMMAND --help` for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        # train / train-diffusion have their own parsers; their arguments (and --help) are forwarded.
        sub = commands.add_parser(name, help=help_text, description=help_text, add_help=name not in FORWARDED)
        if name == "evaluate":
            add_evaluate_arguments(sub)
        elif name == "demo":
            add_demo_arguments(sub)
    return parser


def _summary(result: Mapping) -> str:
    from .evaluation import runs_table

    lines = [runs_table(result["runs"])]
    for key, path in result.get("paths", {}).items():
        lines.append(f"{key}: {path}")
    if "commit_url" in result:
        lines.append(f"pushed: {result['commit_url']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Entry point of the ``hf-egt`` console script; returns the command's result (for tests and scripts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv[:1] if argv and argv[0] in FORWARDED else argv)
    if args.command not in FORWARDED and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "train":
        result = run_train(argv[1:])
    elif args.command == "train-diffusion":
        from .diffusion.train import main as diffusion_main
        from .diffusion.train import parse_args as diffusion_parse_args

        return diffusion_main(diffusion_parse_args(argv[1:]))
    elif args.command == "evaluate":
        result = run_evaluate(args, argv[1:])
    else:
        result = run_demo_command(args)
    if result and "runs" in result:
        _write(_summary(result))
    return result


def console_main() -> None:
    """The ``hf-egt`` console script: runs ``main`` and exits 0 on success (``main``'s result is for Python callers;
    returned to ``sys.exit`` it would be printed and turned into exit status 1)."""
    main()


if __name__ == "__main__":
    console_main()
